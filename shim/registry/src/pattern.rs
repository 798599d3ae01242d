//! The test data pattern: the position-dependent content the CLI's demo and the test
//! harness splice, so that a byte moved, duplicated, zeroed or taken from another page
//! shows as a mismatch.

/// Byte `i` of the pattern: `(i*7 + i/4096) % 251`.
///
/// 251 is prime and does not divide 4096, so every page holds a different sequence.
pub fn pattern_byte(i: usize) -> u8 {
    ((i * 7 + i / 4096) % 251) as u8
}

/// The first `len` bytes of the pattern (see [`pattern_byte`]).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(pattern_byte).collect()
}
