//! The run directory's paths and the channel logs (START, INTENT and DONE records).

use super::*;

pub(crate) fn data_path(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("f{k}"))
}
pub(crate) fn model_path(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("m{k}"))
}
pub(crate) fn lock_path(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("l{k}"))
}
pub(crate) fn fifo_path(dir: &Path, c: usize, g: u64) -> PathBuf {
    dir.join(format!("c{c}.g{g}.fifo"))
}
pub(crate) fn log_path(dir: &Path, c: usize, g: u64) -> PathBuf {
    dir.join(format!("c{c}.g{g}.log"))
}
pub(crate) const SIDE_LEN: usize = 65536;
/// Data files after the `--files` shared ones: the relay worker's, then the quiet
/// victim's, one per pause point (each of the two is alone in a domain of its own).
pub(crate) const EXTRA_FILES: usize = 1 + PAUSE_POINTS.len();
pub(crate) fn relay_file(files: usize) -> usize {
    files
}
pub(crate) fn first_quiet_file(files: usize) -> usize {
    files + 1
}

/// Initial content of data file `k`: the harness pattern, shifted per file.
pub(crate) fn initial_byte(k: usize, i: usize) -> u8 {
    pattern_byte(i + k * 1_000_003)
}

// ---------------------------------------------------------------------------------------
// Channel logs
// ---------------------------------------------------------------------------------------

pub(crate) const REC_MAGIC: u32 = 0x5343_4f57;
pub(crate) const REC_START: u32 = 1;
pub(crate) const REC_INTENT: u32 = 2;
pub(crate) const REC_DONE: u32 = 3;
pub(crate) const REC_HDR: usize = 32;

pub(crate) fn encode(kind: u32, seq: u64, aux: u64, meta: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(REC_HDR + payload.len());
    v.extend_from_slice(&REC_MAGIC.to_le_bytes());
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&aux.to_le_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(&meta.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// One parsed log record.
pub(crate) struct Rec {
    pub(crate) kind: u32,
    pub(crate) seq: u64,
    pub(crate) aux: u64,
    /// INTENT: `op << 28 | file << 24 | file offset` (for failure reports).
    pub(crate) meta: u32,
    pub(crate) payload: Vec<u8>,
}

/// Reads a channel log as it grows.
pub(crate) struct LogReader {
    pub(crate) file: File,
    pub(crate) buf: Vec<u8>,
    pub(crate) at: usize,
    /// File offset of `buf[0]`.
    pub(crate) base: u64,
}

impl LogReader {
    /// Parses every complete record appended since the last call.
    pub(crate) fn poll(&mut self) -> io::Result<Vec<Rec>> {
        let mut chunk = [0u8; 65536];
        loop {
            let n = self.file.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let mut out = Vec::new();
        loop {
            let b = &self.buf[self.at..];
            if b.len() < REC_HDR {
                break;
            }
            let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
            let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
            if u32_at(0) != REC_MAGIC {
                return Err(io::Error::other("corrupt channel log"));
            }
            let len = u32_at(24) as usize;
            if b.len() < REC_HDR + len {
                break;
            }
            out.push(Rec {
                kind: u32_at(4),
                seq: u64_at(8),
                aux: u64_at(16),
                meta: u32_at(28),
                payload: b[REC_HDR..REC_HDR + len].to_vec(),
            });
            self.at += REC_HDR + len;
        }
        if self.at > (1 << 20) {
            self.buf.drain(..self.at);
            self.base += self.at as u64;
            self.at = 0;
            // Logs hold copies of every byte sent: give back the disk space of what
            // was parsed already.
            // SAFETY: fallocate on our own fd; the offsets are plain integers.
            unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    (self.base & !4095) as libc::off_t,
                )
            };
        }
        Ok(out)
    }
}
