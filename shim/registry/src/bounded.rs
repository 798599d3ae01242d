//! Checked access to the registry's fixed-size tables: every index read from shared
//! memory is reduced modulo the table's length, so a corrupt or hostile registry file
//! gives a wrong record, never a panic (a panic would abort the host program).

/// Element `i % N` of `table`.
pub fn at<T, const N: usize>(table: &[T; N], i: usize) -> &T {
    const { assert!(N > 0) };
    #[allow(clippy::indexing_slicing)]
    // `i % N < N` and `N > 0`: always in bounds.
    &table[i % N]
}

/// Element `i % N` of `table`, mutable.
pub fn at_mut<T, const N: usize>(table: &mut [T; N], i: usize) -> &mut T {
    const { assert!(N > 0) };
    #[allow(clippy::indexing_slicing)]
    // `i % N < N` and `N > 0`: always in bounds.
    &mut table[i % N]
}

/// The first `n` elements of `table` (all of them when `n` is larger).
pub fn prefix<T, const N: usize>(table: &[T; N], n: usize) -> &[T] {
    table.get(..n.min(N)).unwrap_or_default()
}
