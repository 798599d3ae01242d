//! `stress`: an fsx-style, model-checked random exerciser for splicecow, with fault
//! injection (issue 4).
//!
//! # Layout
//!
//! The parent (`stress [OPTIONS]`, never preloaded itself) creates a run directory under
//! `/var/tmp` holding `--files` data files (`f<k>`, a known pattern), a *model* of each
//! (`m<k>`: the content the file must have), one lock file per data file (`l<k>`), a
//! side file (source of `copy_file_range`) and a *status page* (`status`, a small
//! shared-memory table of atomic words: stop flag, kill counter, channel generations,
//! counters and one progress slot per worker thread). It then re-executes itself as
//! `stress worker ...` with the shim preloaded (one fresh domain for the whole run):
//!
//! - **producers** (the first with 2 threads): each thread owns two *channels* (FIFOs)
//!   and a private staging pipe. Under the data file's `flock` it reads the bytes it is
//!   about to move (`pread`: the file's content at that moment, which no one can change
//!   while the lock is held), appends an INTENT record with those exact bytes to the
//!   channel's log, moves them (`splice` with/without offset, `sendfile`, `splice` into
//!   the staging pipe then `tee` + pipe→pipe `splice`, or a `write`/`writev` header), and
//!   appends a DONE record with the count the call returned. It also mutates files.
//! - **consumers** (threads, one channel each): read the FIFO (`read`, or `splice` into a
//!   private sink file) and compare every byte with the records of the channel's log.
//! - **mutators** (the first with 2 threads): under the file lock, apply a random
//!   mutation (pwrite, write, pwritev, punch hole, zero range, collapse/insert range,
//!   ftruncate down and back up, truncate by path, open `O_TRUNC` + rewrite, a store
//!   through a `MAP_SHARED` mapping, `copy_file_range`) to the data file and the same
//!   change, by plain `pread`/`pwrite`/`ftruncate`, to its model; the model is compared
//!   with the file regularly and at every splice.
//!
//! So the contract is checked exactly: each byte a consumer reads must be the byte the
//! file held when the producer's splice returned, although mutations run right after it.
//!
//! # Faults
//!
//! With `--faults` the parent SIGKILLs random workers (`--kill-rate` per second) and
//! restarts them. A worker's death ends the *generation* of each of its channels: the
//! surviving side finishes it (a consumer verifies everything delivered up to EOF) and
//! both sides move on to a fresh FIFO. One extra mutator (the *victim*) runs with
//! `SPLICECOW_TEST_PAUSE=settle:2000`: a quarter of the kills are aimed at it
//! while it sleeps inside a settle (found by stopping it and reading
//! `/proc/<pid>/task/*/syscall`: the shim is the only code that uses `SYS_nanosleep`),
//! which also kills it while it holds the registry lock; a probe process then measures
//! how long the next registry operation takes (lock takeover).
//!
//! A settle killed between drain and refill loses the drained bytes (the documented
//! window). Consumers recognise it: the stream continues correctly after a gap (or ends
//! early), and a process that mutates files was killed after those bytes were spliced.
//! Such gaps are counted as *settle-window losses*, never as mismatches; anything else
//! is a mismatch.
//!
//! # Watchdog
//!
//! Every thread publishes the operation it is in; a thread inside one operation, or a
//! run without any progress, for `--hang-secs` is a hang: the parent prints each
//! worker's last operation, `/proc/<pid>/task/*/{wchan,syscall,stack}` and the
//! registry's counters, kills everything and fails.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use splicecow_test_harness::{library_path, pattern_byte, run_with_timeout, temp_path, TempDomain};

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

/// Options of a stress run (the parent).
#[derive(Parser, Debug, Clone)]
#[command(
    about = "fsx-style model-checked random stress for splicecow, with SIGKILL fault injection",
    after_help = "Examples:\n  stress --duration 30 --faults\n  stress --ops 1000000 --faults   \
                  # the long profile (scripts/stress)\n  stress --seed 1234 --duration 10   \
                  # reproduce a run's random choices"
)]
struct RunArgs {
    /// Stop after this many seconds (default 30 unless --ops is given).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many producer + mutator operations.
    #[arg(long)]
    ops: Option<u64>,
    /// Worker processes (at least 8 are started).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Seed of every random choice (printed; default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Inject faults: SIGKILL random workers and restart them.
    #[arg(long)]
    faults: bool,
    /// Kills per second with faults (implies --faults).
    #[arg(long)]
    kill_rate: Option<f64>,
    /// Roles the faults pick their victims from.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "producer,consumer,mutator,victim"
    )]
    kill_roles: Vec<String>,
    /// Shared data files.
    #[arg(long, default_value_t = 4)]
    files: usize,
    /// Initial size of each data file in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    file_size: usize,
    /// Seconds without progress (or inside one operation) that count as a hang.
    #[arg(long, default_value_t = 20.0)]
    hang_secs: f64,
    /// The settle pause of the victim mutator (SPLICECOW_TEST_PAUSE=settle:US).
    #[arg(long, default_value_t = 2000)]
    settle_pause_us: u64,
    /// libsplicecow.so (default: $SPLICECOW_LIB, else target/release, else target/debug).
    #[arg(long)]
    lib: Option<PathBuf>,
    /// Print the report as one JSON line on stdout (the text report goes to stderr).
    #[arg(long)]
    json: bool,
    /// Keep the run directory.
    #[arg(long)]
    keep: bool,
    /// Skip `write`/`writev` headers into pipes (to isolate other failures).
    #[arg(long)]
    no_headers: bool,
    /// Channel pipes: named FIFOs, anonymous pipes (reopened by the producer through
    /// `/proc/<consumer>/fd/<n>`), or a random choice per generation.
    #[arg(long, value_parser = ["mixed", "fifo", "anon"], default_value = "mixed")]
    pipes: String,
}

/// Options of `stress worker` (internal).
#[derive(Parser, Debug)]
struct WorkerArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    role: String,
    #[arg(long)]
    threads: usize,
    #[arg(long)]
    slot_base: usize,
    #[arg(long, value_delimiter = ',')]
    chans: Vec<usize>,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    files: usize,
    #[arg(long)]
    max_size: usize,
    #[arg(long)]
    no_headers: bool,
    #[arg(long, default_value = "mixed")]
    pipes: String,
}

/// Options of `stress probe` (internal): time one registry operation after a kill.
#[derive(Parser, Debug)]
struct ProbeArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    kill_ns: u64,
}

// ---------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------

/// SplitMix64: small, seedable, good enough for choosing operations.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n == 0`).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn gettid() -> u64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u64 }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Opens `path` with raw `open(2)` flags.
fn open_raw(path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = cpath(path);
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open succeeded: fd is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn file_size(fd: RawFd) -> usize {
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid, writable stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return 0;
    }
    st.st_size as usize
}

/// Fills a buffer of `len` bytes with `read_at(dst, len_left, offset_so_far)` calls
/// (retrying `EINTR`) until it is full or a call returns 0 or an error.
fn fill(len: usize, mut read_at: impl FnMut(*mut libc::c_void, usize, usize) -> isize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        // SAFETY: buf[got..] is writable and `len - got` bytes long.
        let r = read_at(unsafe { buf.as_mut_ptr().add(got) }.cast(), len - got, got);
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r <= 0 {
            break;
        }
        got += r as usize;
    }
    buf.truncate(got);
    buf
}

/// `pread` until `len` bytes or end of file.
fn pread_full(fd: RawFd, off: usize, len: usize) -> Vec<u8> {
    // SAFETY: `fill` passes a writable buffer of the given length.
    fill(len, |dst, n, got| unsafe {
        libc::pread(fd, dst, n, (off + got) as libc::off_t)
    })
}

fn mkfifo(path: &Path) {
    let c = cpath(path);
    // SAFETY: c is a valid path; an existing FIFO (EEXIST) is fine.
    unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
}

fn fionread(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a valid pointer.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return 0;
    }
    n.max(0) as usize
}

fn pipe_capacity(fd: RawFd) -> usize {
    // SAFETY: F_GETPIPE_SZ takes no argument.
    let r = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if r > 0 {
        r as usize
    } else {
        65536
    }
}

// ---------------------------------------------------------------------------------------
// The status page shared by the parent and every worker
// ---------------------------------------------------------------------------------------

/// Word: non-zero once the parent asks everyone to finish.
const W_STOP: usize = 0;
/// Word: SIGKILLs the parent sent (or is about to send) to processes that mutate files.
const W_KILLS: usize = 1;
/// Words: current generation of each channel.
const W_GEN: usize = 8;
/// Most channels.
const MAX_CHANS: usize = 64;
/// Words: per data file, `slot + 1` of a thread inside a mutation (0: consistent).
const W_DIRTY: usize = W_GEN + MAX_CHANS;
/// Most data files.
const MAX_FILES: usize = 16;
/// Words: counters (see `C_*`).
const W_CNT: usize = W_DIRTY + MAX_FILES;
/// Words: thread slots, `SLOT_WORDS` each.
const W_SLOTS: usize = 128;
const SLOT_WORDS: usize = 8;
const MAX_SLOTS: usize = 96;
/// Words: per channel, the consumer's offer of its current generation: `[generation + 1,
/// kind (1 FIFO, 2 anonymous pipe), pid, fd of the write end]`.
const W_OFFER: usize = W_SLOTS + MAX_SLOTS * SLOT_WORDS;
const OFFER_WORDS: usize = 4;
const PAGE_WORDS: usize = W_OFFER + MAX_CHANS * OFFER_WORDS;

// Counters.
const C_SPLICE_OPS: usize = 0;
const C_MUT_OPS: usize = 1;
const C_CONSUME_OPS: usize = 2;
const C_BYTES_SENT: usize = 3;
const C_BYTES_VERIFIED: usize = 4;
const C_MISMATCHES: usize = 5;
const C_MISMATCH_BYTES: usize = 6;
const C_LOSSES: usize = 7;
const C_LOSS_BYTES: usize = 8;
const C_FILE_MISMATCHES: usize = 9;
const C_RESYNCS: usize = 10;
const C_ERRORS: usize = 11;
const C_TEES: usize = 12;
const C_PIPE2PIPE: usize = 13;
const C_HEADERS: usize = 14;
const C_GENS: usize = 15;
const C_SENDFILES: usize = 16;
const C_SPLICE_READS: usize = 17;

// Slot words.
const S_PID: usize = 0;
const S_TID: usize = 1;
const S_OP: usize = 2;
const S_OP_START: usize = 3;
const S_PROGRESS: usize = 4;
const S_FILE: usize = 5;

/// What a thread is doing (slot word `S_OP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum Op {
    Idle = 0,
    FileLock,
    Splice,
    SpliceCursor,
    Sendfile,
    SendfileCursor,
    Tee,
    PipeToPipe,
    Header,
    Pwrite,
    Write,
    Pwritev,
    PunchHole,
    ZeroRange,
    Collapse,
    Insert,
    TruncDownUp,
    TruncatePath,
    OpenTrunc,
    MmapStore,
    CopyFileRange,
    ModelCheck,
    OpenFifo,
    ConsumeRead,
    ConsumeSplice,
}

const OP_NAMES: [&str; 25] = [
    "idle",
    "flock",
    "splice(off)",
    "splice(cursor)",
    "sendfile(off)",
    "sendfile(cursor)",
    "tee",
    "splice(pipe->pipe)",
    "write(header)",
    "pwrite",
    "write",
    "pwritev",
    "punch-hole",
    "zero-range",
    "collapse-range",
    "insert-range",
    "ftruncate-down-up",
    "truncate(path)",
    "open(O_TRUNC)+rewrite",
    "mmap-store",
    "copy_file_range",
    "model-check",
    "open-fifo",
    "read(pipe)",
    "splice(pipe->file)",
];

fn op_name(code: u64) -> &'static str {
    OP_NAMES.get(code as usize).copied().unwrap_or("?")
}

/// The mapped status page.
struct Status {
    words: *const AtomicU64,
}

// SAFETY: the page is a fixed array of atomics mapped for the process's whole life.
unsafe impl Sync for Status {}
// SAFETY: see Sync.
unsafe impl Send for Status {}

impl Status {
    fn map(path: &Path, create: bool) -> io::Result<Status> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        let len = PAGE_WORDS * 8;
        if create {
            f.set_len(len as u64)?;
        }
        // SAFETY: mapping a file we opened read-write; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Status { words: p.cast() })
    }
    fn w(&self, i: usize) -> &AtomicU64 {
        assert!(i < PAGE_WORDS);
        // SAFETY: i is inside the mapping, which holds PAGE_WORDS aligned u64 words and
        // stays mapped until exit; AtomicU64 has u64's layout.
        unsafe { &*self.words.add(i) }
    }
    fn get(&self, i: usize) -> u64 {
        self.w(i).load(Ordering::SeqCst)
    }
    fn cnt(&self, c: usize) -> &AtomicU64 {
        self.w(W_CNT + c)
    }
    fn add(&self, c: usize, v: u64) {
        self.cnt(c).fetch_add(v, Ordering::Relaxed);
    }
    fn count(&self, c: usize) -> u64 {
        self.cnt(c).load(Ordering::Relaxed)
    }
    fn stopping(&self) -> bool {
        self.get(W_STOP) != 0
    }
    fn gen(&self, chan: usize) -> u64 {
        self.get(W_GEN + chan)
    }
    fn slot(&self, s: usize, word: usize) -> &AtomicU64 {
        self.w(W_SLOTS + s * SLOT_WORDS + word)
    }
}

/// A thread's view of its slot.
struct Slot<'a> {
    st: &'a Status,
    idx: usize,
}

impl Slot<'_> {
    fn begin(&self, op: Op) {
        self.st
            .slot(self.idx, S_OP)
            .store(op as u64, Ordering::Relaxed);
        self.st
            .slot(self.idx, S_OP_START)
            .store(monotonic_ns(), Ordering::Relaxed);
    }
    fn end(&self) {
        self.st
            .slot(self.idx, S_OP_START)
            .store(0, Ordering::Relaxed);
        self.st
            .slot(self.idx, S_PROGRESS)
            .fetch_add(1, Ordering::Relaxed);
    }
    fn heartbeat(&self) {
        self.st
            .slot(self.idx, S_PROGRESS)
            .fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// Paths of the run directory
// ---------------------------------------------------------------------------------------

fn data_path(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("f{k}"))
}
fn model_path(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("m{k}"))
}
fn lock_path(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("l{k}"))
}
fn fifo_path(dir: &Path, c: usize, g: u64) -> PathBuf {
    dir.join(format!("c{c}.g{g}.fifo"))
}
fn log_path(dir: &Path, c: usize, g: u64) -> PathBuf {
    dir.join(format!("c{c}.g{g}.log"))
}
const SIDE_LEN: usize = 65536;

/// Initial content of data file `k`: the harness pattern, shifted per file.
fn initial_byte(k: usize, i: usize) -> u8 {
    pattern_byte(i + k * 1_000_003)
}

// ---------------------------------------------------------------------------------------
// Channel logs
// ---------------------------------------------------------------------------------------

const REC_MAGIC: u32 = 0x5343_4f57;
const REC_START: u32 = 1;
const REC_INTENT: u32 = 2;
const REC_DONE: u32 = 3;
const REC_HDR: usize = 32;

fn encode(kind: u32, seq: u64, aux: u64, meta: u32, payload: &[u8]) -> Vec<u8> {
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
struct Rec {
    kind: u32,
    seq: u64,
    aux: u64,
    /// INTENT: `op << 28 | file << 24 | file offset` (for failure reports).
    meta: u32,
    payload: Vec<u8>,
}

/// Reads a channel log as it grows.
struct LogReader {
    file: File,
    buf: Vec<u8>,
    at: usize,
    /// File offset of `buf[0]`.
    base: u64,
}

impl LogReader {
    /// Parses every complete record appended since the last call.
    fn poll(&mut self) -> io::Result<Vec<Rec>> {
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

// ---------------------------------------------------------------------------------------
// Worker: shared per-thread context (files, locks, model, mutations)
// ---------------------------------------------------------------------------------------

/// Per-thread handles on the shared files.
struct Ctx<'a> {
    st: &'a Status,
    slot: Slot<'a>,
    dir: PathBuf,
    rng: Rng,
    data: Vec<OwnedFd>,
    model: Vec<File>,
    locks: Vec<OwnedFd>,
    side: Vec<u8>,
    side_fd: OwnedFd,
    max_size: usize,
    name: String,
    prints: usize,
    /// Consumers: `fifo`, `anon` or `mixed` (see `--pipes`).
    pipes: String,
}

/// Holds a data file's `flock` (released on drop, or by the kernel when we die).
struct FileLock {
    fd: RawFd,
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: fd is the lock file, open for the thread's lifetime.
        unsafe { libc::flock(self.fd, libc::LOCK_UN) };
    }
}

impl<'a> Ctx<'a> {
    fn new(
        st: &'a Status,
        slot: usize,
        dir: &Path,
        seed: u64,
        files: usize,
        max_size: usize,
        name: String,
    ) -> io::Result<Ctx<'a>> {
        let mut data = Vec::new();
        let mut model = Vec::new();
        let mut locks = Vec::new();
        for k in 0..files {
            data.push(open_raw(&data_path(dir, k), libc::O_RDWR)?);
            model.push(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(model_path(dir, k))?,
            );
            locks.push(open_raw(&lock_path(dir, k), libc::O_RDWR | libc::O_CREAT)?);
        }
        let side_fd = open_raw(&dir.join("side"), libc::O_RDONLY)?;
        let side = pread_full(side_fd.as_raw_fd(), 0, SIDE_LEN);
        st.slot(slot, S_PID)
            .store(std::process::id() as u64, Ordering::Relaxed);
        st.slot(slot, S_TID).store(gettid(), Ordering::Relaxed);
        st.slot(slot, S_OP_START).store(0, Ordering::Relaxed);
        Ok(Ctx {
            st,
            slot: Slot { st, idx: slot },
            dir: dir.to_path_buf(),
            rng: Rng(seed ^ (slot as u64).wrapping_mul(0x1234_5678_9abc_def1)),
            data,
            model,
            locks,
            side,
            side_fd,
            max_size,
            name,
            prints: 0,
            pipes: String::new(),
        })
    }

    /// Reports a failure on stderr (the first few per thread) and counts it.
    fn fail(&mut self, counter: usize, msg: impl FnOnce() -> String) {
        self.st.add(counter, 1);
        if self.prints < 8 {
            self.prints += 1;
            eprintln!(
                "stress[{} pid {}]: {}",
                self.name,
                std::process::id(),
                msg()
            );
        }
    }

    /// Takes file `k`'s lock; repairs the model if a mutator died inside a mutation.
    fn lock(&mut self, k: usize) -> FileLock {
        self.slot.begin(Op::FileLock);
        self.st
            .slot(self.slot.idx, S_FILE)
            .store(k as u64, Ordering::Relaxed);
        let fd = self.locks[k].as_raw_fd();
        // SAFETY: fd is our lock file; EINTR is retried.
        while unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 && errno() == libc::EINTR {}
        let guard = FileLock { fd };
        if self.st.get(W_DIRTY + k) != 0 {
            // The previous holder died between mutating the file and its model: the
            // file is the truth (kernel calls are atomic enough); copy it to the model.
            let size = file_size(self.data[k].as_raw_fd());
            let content = pread_full(self.data[k].as_raw_fd(), 0, size);
            let m = &self.model[k];
            let _ = m.set_len(content.len() as u64);
            let _ = m.write_all_at(&content, 0);
            self.st.add(C_RESYNCS, 1);
            self.st.w(W_DIRTY + k).store(0, Ordering::SeqCst);
        }
        self.slot.end();
        guard
    }

    fn model_read(&self, k: usize, off: usize, len: usize) -> Vec<u8> {
        pread_full(self.model[k].as_raw_fd(), off, len)
    }

    /// Compares file `k`'s bytes `got` at `off` with its model.
    fn check_model(&mut self, k: usize, off: usize, got: &[u8]) {
        let want = self.model_read(k, off, got.len());
        if want != got {
            let first = want
                .iter()
                .zip(got)
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(got.len()));
            let (wl, gl) = (want.len(), got.len());
            self.fail(C_FILE_MISMATCHES, || {
                format!("FILE MISMATCH file f{k} range {off}+{gl}: model has {wl} bytes, first difference at +{first}")
            });
        }
    }

    /// Compares the whole of file `k` with its model (lock held).
    fn check_whole(&mut self, k: usize) {
        self.slot.begin(Op::ModelCheck);
        let size = file_size(self.data[k].as_raw_fd());
        let msize = self.model[k]
            .metadata()
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        if size != msize {
            self.fail(C_FILE_MISMATCHES, || {
                format!("FILE MISMATCH file f{k}: size {size}, model {msize}")
            });
        } else {
            let got = pread_full(self.data[k].as_raw_fd(), 0, size);
            self.check_model(k, 0, &got);
        }
        self.slot.end();
    }

    fn expect_ret(&mut self, what: &str, k: usize, ret: isize, want: isize) {
        if ret != want {
            let e = io::Error::last_os_error();
            self.fail(C_ERRORS, || {
                format!("{what} on f{k} returned {ret} (expected {want}): {e}")
            });
        }
    }

    fn model_write(&self, k: usize, off: usize, bytes: &[u8]) {
        let _ = self.model[k].write_all_at(bytes, off as u64);
    }
    fn model_zero(&self, k: usize, off: usize, len: usize) {
        self.model_write(k, off, &vec![0u8; len]);
    }
    fn model_set_len(&self, k: usize, len: usize) {
        let _ = self.model[k].set_len(len as u64);
    }

    /// One random mutation of a random file, mirrored into the model.
    fn mutate(&mut self) {
        let k = self.rng.below(self.data.len());
        let _lock = self.lock(k);
        let fd = self.data[k].as_raw_fd();
        let size = file_size(fd);
        let max = self.max_size;
        let dirty = self.st.w(W_DIRTY + k);
        dirty.store(self.slot.idx as u64 + 1, Ordering::SeqCst);
        let pick = self.rng.below(100);
        let off = self.rng.below(size + 1);
        let small = self.rng.range(1, 16384);
        match pick {
            0..=14 => {
                let len = small.min(max.saturating_sub(off)).max(1);
                let mut buf = vec![0u8; len];
                self.rng.fill(&mut buf);
                self.slot.begin(Op::Pwrite);
                // SAFETY: buf holds len bytes.
                let r = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), len, off as libc::off_t) };
                self.expect_ret("pwrite", k, r, len as isize);
                self.model_write(k, off, &buf);
                if off > size {
                    self.model_zero(k, size, off - size);
                }
            }
            15..=24 => {
                let len = small.min(max.saturating_sub(off)).max(1);
                let mut buf = vec![0u8; len];
                self.rng.fill(&mut buf);
                self.slot.begin(Op::Write);
                // SAFETY: plain lseek + write of our buffer.
                let r = unsafe {
                    libc::lseek(fd, off as libc::off_t, libc::SEEK_SET);
                    libc::write(fd, buf.as_ptr().cast(), len)
                };
                self.expect_ret("write", k, r, len as isize);
                self.model_write(k, off, &buf);
            }
            25..=32 => {
                let len = small.min(max.saturating_sub(off)).max(2);
                let mut buf = vec![0u8; len];
                self.rng.fill(&mut buf);
                let cut = self.rng.range(1, len - 1);
                let iov = [
                    libc::iovec {
                        iov_base: buf.as_mut_ptr().cast(),
                        iov_len: cut,
                    },
                    // SAFETY: cut < len, the second iovec stays inside buf.
                    libc::iovec {
                        iov_base: unsafe { buf.as_mut_ptr().add(cut) }.cast(),
                        iov_len: len - cut,
                    },
                ];
                self.slot.begin(Op::Pwritev);
                // SAFETY: both iovecs point into buf.
                let r = unsafe { libc::pwritev(fd, iov.as_ptr(), 2, off as libc::off_t) };
                self.expect_ret("pwritev", k, r, len as isize);
                self.model_write(k, off, &buf);
            }
            33..=42 if size > 0 => {
                let off = off.min(size - 1);
                let len = self.rng.range(1, 131072).min(size - off);
                let zero = pick >= 38;
                self.slot
                    .begin(if zero { Op::ZeroRange } else { Op::PunchHole });
                let mode = if zero {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                };
                // SAFETY: fallocate on our fd.
                let r =
                    unsafe { libc::fallocate(fd, mode, off as libc::off_t, len as libc::off_t) };
                self.expect_ret(
                    if zero {
                        "fallocate(ZERO_RANGE)"
                    } else {
                        "fallocate(PUNCH_HOLE)"
                    },
                    k,
                    r as isize,
                    0,
                );
                self.model_zero(k, off, len);
            }
            43..=49 if size > 3 * 4096 => {
                let blocks = size / 4096;
                let at = self.rng.below(blocks - 1) * 4096;
                let nblk = self.rng.range(1, 16).min((size - at - 1) / 4096).max(1);
                let len = nblk * 4096;
                if at + len < size {
                    self.slot.begin(Op::Collapse);
                    // SAFETY: fallocate on our fd.
                    let r = unsafe {
                        libc::fallocate(
                            fd,
                            libc::FALLOC_FL_COLLAPSE_RANGE,
                            at as libc::off_t,
                            len as libc::off_t,
                        )
                    };
                    self.expect_ret("fallocate(COLLAPSE_RANGE)", k, r as isize, 0);
                    let tail = self.model_read(k, at + len, size - at - len);
                    self.model_write(k, at, &tail);
                    self.model_set_len(k, size - len);
                }
            }
            50..=56 if size > 4096 => {
                let at = self.rng.below(size / 4096) * 4096;
                let len = self.rng.range(1, 16) * 4096;
                if size + len <= max {
                    self.slot.begin(Op::Insert);
                    // SAFETY: fallocate on our fd.
                    let r = unsafe {
                        libc::fallocate(
                            fd,
                            libc::FALLOC_FL_INSERT_RANGE,
                            at as libc::off_t,
                            len as libc::off_t,
                        )
                    };
                    self.expect_ret("fallocate(INSERT_RANGE)", k, r as isize, 0);
                    let tail = self.model_read(k, at, size - at);
                    self.model_write(k, at + len, &tail);
                    self.model_zero(k, at, len);
                }
            }
            57..=64 => {
                let down = self.rng.below(size + 1);
                let up = self.rng.range(down, size.max(down));
                self.slot.begin(Op::TruncDownUp);
                // SAFETY: ftruncate on our fd.
                let r = unsafe { libc::ftruncate(fd, down as libc::off_t) };
                self.expect_ret("ftruncate(down)", k, r as isize, 0);
                self.model_set_len(k, down);
                // SAFETY: as above.
                let r = unsafe { libc::ftruncate(fd, up as libc::off_t) };
                self.expect_ret("ftruncate(up)", k, r as isize, 0);
                self.model_set_len(k, up);
            }
            65..=70 => {
                let to = self.rng.range(size / 2, (size + 65536).min(max));
                self.slot.begin(Op::TruncatePath);
                let c = cpath(&data_path(&self.dir, k));
                // SAFETY: c is a valid path.
                let r = unsafe { libc::truncate(c.as_ptr(), to as libc::off_t) };
                self.expect_ret("truncate", k, r as isize, 0);
                self.model_set_len(k, to);
            }
            71..=74 => {
                let len = self.rng.range(65536, max / 2);
                let salt = self.rng.next() as usize;
                let content: Vec<u8> = (0..len).map(|i| pattern_byte(i + salt % 100_000)).collect();
                self.slot.begin(Op::OpenTrunc);
                match open_raw(&data_path(&self.dir, k), libc::O_WRONLY | libc::O_TRUNC) {
                    Ok(w) => {
                        self.model_set_len(k, 0);
                        let mut done = 0;
                        while done < len {
                            let n = (len - done).min(self.rng.range(4096, 262144));
                            // SAFETY: content[done..done+n] is readable.
                            let r = unsafe {
                                libc::write(w.as_raw_fd(), content.as_ptr().add(done).cast(), n)
                            };
                            self.expect_ret("write(after O_TRUNC)", k, r, n as isize);
                            if r <= 0 {
                                break;
                            }
                            done += r as usize;
                        }
                        self.model_write(k, 0, &content[..done]);
                    }
                    Err(e) => self.fail(C_ERRORS, || format!("open(O_TRUNC) f{k}: {e}")),
                }
            }
            75..=84 if size > 0 => {
                let off = off.min(size - 1);
                let len = small.min(size - off);
                let mut buf = vec![0u8; len];
                self.rng.fill(&mut buf);
                self.slot.begin(Op::MmapStore);
                // SAFETY: a fresh shared mapping of our file, checked below.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        size,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        fd,
                        0,
                    )
                };
                if p == libc::MAP_FAILED {
                    let e = io::Error::last_os_error();
                    self.fail(C_ERRORS, || format!("mmap(MAP_SHARED) f{k}: {e}"));
                } else {
                    // SAFETY: [off, off+len) lies inside the size-byte mapping (and the
                    // file, which cannot shrink: we hold its lock).
                    unsafe {
                        std::ptr::copy_nonoverlapping(buf.as_ptr(), p.cast::<u8>().add(off), len);
                        libc::munmap(p, size);
                    }
                    self.model_write(k, off, &buf);
                }
            }
            _ => {
                let soff = self.rng.below(SIDE_LEN);
                let len = small
                    .min(SIDE_LEN - soff)
                    .min(max.saturating_sub(off))
                    .max(1);
                let (mut so, mut o) = (soff as i64, off as i64);
                self.slot.begin(Op::CopyFileRange);
                // SAFETY: both offsets point to our locals.
                let r = unsafe {
                    libc::copy_file_range(self.side_fd.as_raw_fd(), &mut so, fd, &mut o, len, 0)
                };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    self.fail(C_ERRORS, || format!("copy_file_range into f{k}: {e}"));
                } else {
                    let r = r as usize;
                    let bytes = self.side[soff..soff + r].to_vec();
                    if off > size {
                        self.model_zero(k, size, off - size);
                    }
                    self.model_write(k, off, &bytes);
                }
            }
        }
        dirty.store(0, Ordering::SeqCst);
        self.slot.end();
        self.st.add(C_MUT_OPS, 1);
        if self.rng.chance(3) {
            self.check_whole(k);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Worker: producer
// ---------------------------------------------------------------------------------------

/// A producer's end of one channel generation.
struct Chan {
    id: usize,
    gen: Option<u64>,
    fd: Option<OwnedFd>,
    log: Option<File>,
    seq: u64,
    /// Meta word of the next INTENT.
    meta: u32,
}

impl Chan {
    fn close(&mut self) {
        self.fd = None;
        self.log = None;
    }
    fn raw(&self) -> RawFd {
        self.fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1)
    }
    fn free(&self) -> usize {
        let fd = self.raw();
        pipe_capacity(fd).saturating_sub(fionread(fd))
    }
    fn log(&mut self, kind: u32, aux: u64, payload: &[u8]) {
        let meta = std::mem::take(&mut self.meta);
        let rec = encode(kind, self.seq, aux, meta, payload);
        if let Some(log) = &mut self.log {
            // One write(2) per record on an O_APPEND file.
            let _ = log.write_all(&rec);
        }
    }
}

/// Tries to open the channel's current generation for writing (never blocks): the
/// FIFO, or the consumer's anonymous pipe through `/proc/<pid>/fd/<n>`, as it offers.
fn producer_open(ctx: &mut Ctx, ch: &mut Chan) {
    let g = ctx.st.gen(ch.id);
    if ch.gen.is_some_and(|old| old >= g) {
        return;
    }
    let offer = |i: usize| ctx.st.get(W_OFFER + ch.id * OFFER_WORDS + i);
    if offer(0) != g + 1 {
        return;
    }
    let (kind, pid, wfd) = (offer(1), offer(2), offer(3));
    if offer(0) != g + 1 {
        return;
    }
    let path = if kind == 2 {
        PathBuf::from(format!("/proc/{pid}/fd/{wfd}"))
    } else {
        fifo_path(&ctx.dir, ch.id, g)
    };
    let Ok(fd) = open_raw(&path, libc::O_WRONLY | libc::O_NONBLOCK) else {
        return; // ENXIO: no reader yet; ENOENT: the consumer gave up
    };
    let raw = fd.as_raw_fd();
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is writable; fcntl on our own fd.
    unsafe {
        if libc::fstat(raw, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return;
        }
        let fl = libc::fcntl(raw, libc::F_GETFL);
        libc::fcntl(raw, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        let sizes = [65536, 65536, 262144, 1 << 20];
        libc::fcntl(raw, libc::F_SETPIPE_SZ, sizes[ctx.rng.below(4)]);
    }
    let Ok(log) = OpenOptions::new()
        .append(true)
        .create(true)
        .open(log_path(&ctx.dir, ch.id, g))
    else {
        return;
    };
    ch.fd = Some(fd);
    ch.log = Some(log);
    ch.gen = Some(g);
    ch.seq = 0;
    ch.log(REC_START, 0, &[]);
}

/// The meta word of an INTENT record (see [`Rec::meta`]).
fn meta(op: Op, k: usize, off: usize) -> u32 {
    ((op as u32 & 0xf) << 28) | ((k as u32 & 0xf) << 24) | (off as u32 & 0xff_ffff)
}

/// Handles the result of a call that put bytes into channel `ch`: logs DONE, checks
/// the count, closes the channel on `EPIPE` (its consumer died).
fn finish(ctx: &mut Ctx, ch: &mut Chan, what: &str, r: isize, max: usize) -> usize {
    let e = errno();
    let n = r.max(0) as usize;
    ch.log(REC_DONE, n as u64, &[]);
    ch.seq += 1;
    if r < 0 {
        if e == libc::EPIPE {
            ch.close();
        } else if e != libc::EINTR {
            let err = io::Error::from_raw_os_error(e);
            ctx.fail(C_ERRORS, || {
                format!("{what} into channel {} failed: {err}", ch.id)
            });
        }
    } else if n > max {
        ctx.fail(C_ERRORS, || {
            format!(
                "{what} into channel {} returned {n} > {max} requested",
                ch.id
            )
        });
    }
    ctx.st.add(C_BYTES_SENT, n as u64);
    n
}

fn producer_thread(ctx: &mut Ctx, chans: [usize; 2], headers: bool) {
    let mut chans = chans.map(|id| Chan {
        id,
        gen: None,
        fd: None,
        log: None,
        seq: 0,
        meta: 0,
    });
    let (s_r, s_w) = splicecow_test_harness::pipe().expect("staging pipe");
    let (s_r, s_w) = (s_r.as_raw_fd(), s_w.as_raw_fd());
    while !ctx.st.stopping() {
        for ch in chans.iter_mut() {
            if ch.fd.is_none() {
                ctx.slot.begin(Op::OpenFifo);
                producer_open(ctx, ch);
                ctx.slot.end();
            }
        }
        let open: Vec<usize> = (0..2).filter(|&i| chans[i].fd.is_some()).collect();
        let pick = ctx.rng.below(100);
        if pick < 12 {
            ctx.mutate();
            continue;
        }
        if open.is_empty() {
            ctx.slot.heartbeat();
            sleep_ms(2);
            continue;
        }
        let ci = open[ctx.rng.below(open.len())];
        if pick < 20 && headers {
            header(ctx, &mut chans[ci]);
        } else if pick < 70 {
            direct(ctx, &mut chans[ci]);
        } else if pick < 85 && open.len() == 2 {
            let (a, b) = chans.split_at_mut(1);
            staged(ctx, &mut a[0], Some(&mut b[0]), s_r, s_w);
        } else {
            staged(ctx, &mut chans[ci], None, s_r, s_w);
        }
    }
}

/// A `write`/`writev` of a short header into the channel.
fn header(ctx: &mut Ctx, ch: &mut Chan) {
    let text = format!(
        "HDR c{} g{:?} s{} r{:x}\n",
        ch.id,
        ch.gen,
        ch.seq,
        ctx.rng.next()
    );
    let bytes = text.as_bytes();
    ch.log(REC_INTENT, ctx.st.get(W_KILLS), bytes);
    ctx.slot.begin(Op::Header);
    let r = if ctx.rng.chance(50) {
        // SAFETY: bytes is a valid buffer.
        unsafe { libc::write(ch.raw(), bytes.as_ptr().cast(), bytes.len()) }
    } else {
        let cut = bytes.len() / 2;
        let iov = [
            libc::iovec {
                iov_base: bytes.as_ptr() as *mut _,
                iov_len: cut,
            },
            // SAFETY: cut < len.
            libc::iovec {
                iov_base: unsafe { bytes.as_ptr().add(cut) } as *mut _,
                iov_len: bytes.len() - cut,
            },
        ];
        // SAFETY: both iovecs point into bytes.
        unsafe { libc::writev(ch.raw(), iov.as_ptr(), 2) }
    };
    ctx.slot.end();
    finish(ctx, ch, "write(header)", r, bytes.len());
    ctx.st.add(C_HEADERS, 1);
    ctx.st.add(C_SPLICE_OPS, 1);
}

/// Picks a file and a range for a transfer of at most `room` bytes; returns the lock,
/// the file, the offset and the bytes the file holds there (what must arrive).
fn pick_range(ctx: &mut Ctx, room: usize) -> (FileLock, usize, usize, Vec<u8>) {
    let k = ctx.rng.below(ctx.data.len());
    let lock = ctx.lock(k);
    let fd = ctx.data[k].as_raw_fd();
    let size = file_size(fd);
    let off = if ctx.rng.chance(3) {
        size
    } else {
        ctx.rng.below(size.max(1))
    };
    let len = ctx.rng.range(1, room.clamp(1, 65536));
    let expected = pread_full(fd, off, len);
    ctx.check_model(k, off, &expected);
    (lock, k, off, expected)
}

/// A file→pipe `splice` or `sendfile`, with or without an offset pointer.
fn direct(ctx: &mut Ctx, ch: &mut Chan) {
    let room = ch.free();
    if room == 0 {
        ctx.slot.heartbeat();
        std::thread::yield_now();
        return;
    }
    let (_lock, k, off, expected) = pick_range(ctx, room);
    let fd = ctx.data[k].as_raw_fd();
    let len = expected.len().max(1);
    let how = ctx.rng.below(4);
    let op = [
        Op::Splice,
        Op::SpliceCursor,
        Op::Sendfile,
        Op::SendfileCursor,
    ][how];
    ch.meta = meta(op, k, off);
    ch.log(REC_INTENT, ctx.st.get(W_KILLS), &expected);
    let mut o = off as libc::loff_t;
    ctx.slot.begin(op);
    let null = std::ptr::null_mut();
    // SAFETY: offsets point to our local; the kernel checks the fds.
    let r = unsafe {
        match how {
            0 => libc::splice(fd, &mut o, ch.raw(), null, len, 0),
            1 => {
                libc::lseek(fd, off as libc::off_t, libc::SEEK_SET);
                libc::splice(fd, null, ch.raw(), null, len, 0)
            }
            2 => libc::sendfile(ch.raw(), fd, &mut o, len),
            _ => {
                libc::lseek(fd, off as libc::off_t, libc::SEEK_SET);
                libc::sendfile64(ch.raw(), fd, null, len)
            }
        }
    };
    ctx.slot.end();
    let n = finish(ctx, ch, OP_NAMES[op as usize], r, expected.len());
    if r >= 0 {
        // SAFETY: lseek on our fd.
        let pos = if how.is_multiple_of(2) {
            o as i64
        } else {
            unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
        };
        if pos != (off + n) as i64 {
            ctx.fail(C_ERRORS, || {
                format!(
                    "{}: offset {pos} after moving {n} bytes from {off}",
                    OP_NAMES[op as usize]
                )
            });
        }
    }
    ctx.st
        .add(if how >= 2 { C_SENDFILES } else { C_SPLICE_OPS }, 1);
    if how >= 2 {
        ctx.st.add(C_SPLICE_OPS, 1);
    }
}

/// File → private staging pipe, then `tee` into `b` (if any) and pipe→pipe `splice`
/// into `a`. The staging pipe is empty before and after.
fn staged(ctx: &mut Ctx, a: &mut Chan, b: Option<&mut Chan>, s_r: RawFd, s_w: RawFd) {
    let room = a
        .free()
        .min(b.as_ref().map(|b| b.free()).unwrap_or(usize::MAX));
    if room == 0 {
        ctx.slot.heartbeat();
        std::thread::yield_now();
        return;
    }
    let (_lock, k, off, expected) = pick_range(ctx, room);
    let fd = ctx.data[k].as_raw_fd();
    let mut o = off as libc::loff_t;
    ctx.slot.begin(Op::Splice);
    // SAFETY: o is our local; s_w is our staging pipe.
    let n = unsafe {
        libc::splice(
            fd,
            &mut o,
            s_w,
            std::ptr::null_mut(),
            expected.len().max(1),
            0,
        )
    };
    ctx.slot.end();
    if n < 0 {
        let e = io::Error::last_os_error();
        ctx.fail(C_ERRORS, || format!("splice(file->staging) failed: {e}"));
        return;
    }
    let n = n as usize;
    if n > expected.len() {
        ctx.fail(C_ERRORS, || {
            format!("splice(file->staging) returned {n} > {}", expected.len())
        });
    }
    let staged = &expected[..n.min(expected.len())];
    if let Some(b) = b {
        b.meta = meta(Op::Tee, k, off);
        b.log(REC_INTENT, ctx.st.get(W_KILLS), staged);
        ctx.slot.begin(Op::Tee);
        // SAFETY: plain tee between two pipes.
        let r = unsafe { libc::tee(s_r, b.raw(), n, 0) };
        ctx.slot.end();
        finish(ctx, b, "tee", r, n);
        ctx.st.add(C_TEES, 1);
    }
    // One record per call: a settle may come between two calls.
    let mut moved = 0;
    while moved < n && a.fd.is_some() {
        a.meta = meta(Op::PipeToPipe, k, off + moved);
        a.log(REC_INTENT, ctx.st.get(W_KILLS), &staged[moved..]);
        ctx.slot.begin(Op::PipeToPipe);
        // SAFETY: plain splice between two pipes.
        let r = unsafe {
            libc::splice(
                s_r,
                std::ptr::null_mut(),
                a.raw(),
                std::ptr::null_mut(),
                n - moved,
                0,
            )
        };
        ctx.slot.end();
        finish(ctx, a, "splice(pipe->pipe)", r, n - moved);
        if r <= 0 {
            break;
        }
        moved += r as usize;
    }
    // Whatever could not be moved (consumer gone) is dropped from the staging pipe.
    let mut sink = vec![0u8; 65536];
    while fionread(s_r) > 0 {
        // SAFETY: sink is writable.
        if unsafe { libc::read(s_r, sink.as_mut_ptr().cast(), sink.len()) } <= 0 {
            break;
        }
    }
    ctx.st.add(C_PIPE2PIPE, 1);
    ctx.st.add(C_SPLICE_OPS, 1);
}

// ---------------------------------------------------------------------------------------
// Worker: consumer
// ---------------------------------------------------------------------------------------

/// What a consumer knows a channel generation must deliver.
struct Expect {
    /// Absolute stream position of `exp[0]`.
    base: u64,
    /// Expected bytes from `base` on: confirmed records, then the open record's intent.
    exp: Vec<u8>,
    /// Length of the confirmed part of `exp`.
    firm: usize,
    /// An INTENT without its DONE yet: its start in `exp`.
    open: Option<usize>,
    /// (absolute start, kill counter when spliced) of each record.
    recs: VecDeque<(u64, u64, u32, u64)>,
    /// Absolute position of the next byte to arrive.
    cursor: u64,
    /// No gap starts before this position (the start, or where the last gap ended).
    floor: u64,
}

impl Expect {
    fn apply(&mut self, r: Rec) -> Result<(), String> {
        match r.kind {
            REC_INTENT => {
                if self.open.is_some() {
                    return Err(format!("INTENT {} while a record is open", r.seq));
                }
                self.open = Some(self.exp.len());
                self.recs
                    .push_back((self.base + self.exp.len() as u64, r.aux, r.meta, r.seq));
                self.exp.extend_from_slice(&r.payload);
            }
            REC_DONE => {
                let Some(start) = self.open.take() else {
                    return Err(format!("DONE {} without INTENT", r.seq));
                };
                let n = r.aux as usize;
                if start + n > self.exp.len() {
                    return Err(format!(
                        "DONE {} claims {n} bytes, more than its intent",
                        r.seq
                    ));
                }
                self.exp.truncate(start + n);
                self.firm = self.exp.len();
            }
            _ => {}
        }
        Ok(())
    }
    fn idx(&self, abs: u64) -> usize {
        (abs - self.base) as usize
    }
    /// Kill counter of the record holding absolute position `abs`.
    fn kills_at(&self, abs: u64) -> u64 {
        self.recs
            .iter()
            .rev()
            .find(|r| r.0 <= abs)
            .map(|r| r.1)
            .unwrap_or(0)
    }
    /// Explains the bytes `rest` received at stream position `at` (where they differ from
    /// the expected stream) as a settle-window loss.
    ///
    /// A settle drains everything the pipe holds, and nothing enters the pipe while it
    /// runs (the registry lock): after a gap `[g, g + d)` the stream resumes at the start
    /// `s = g + d` of a record. The gap may begin before `at`: the bytes verified from `g`
    /// to `at` were really those from `s` on, and passed because they are equal (zeros
    /// of holes, the file pattern), so the first differing byte can lie well past `g`.
    /// So: `rest` must be the expected stream at `at + d` (`d <= MAX_GAP`), the expected
    /// stream must repeat with period `d` from `g` to `at + d`, and the first lost byte
    /// must have been spliced before a process that mutates files was killed.
    fn find_loss(&self, at: u64, rest: &[u8], kills_now: u64) -> Loss {
        let exp = &self.exp;
        let i = self.idx(at);
        let lo = self
            .idx(self.floor.max(self.base))
            .max(i.saturating_sub(2 * MAX_GAP));
        let end = exp.len().min(i + MAX_GAP + rest.len());
        if rest.is_empty() || i + 1 >= end {
            return Loss::No;
        }
        // Shifts d at which `rest` is the expected stream.
        let shifts = occurrences(rest, &exp[i + 1..end]);
        if shifts.is_empty() {
            return Loss::No;
        }
        // How far back from `i` exp[x] == exp[x + d] holds, for every d: the common
        // suffix of exp[lo..i] and exp[lo..i + d], from a Z-function over both reversed.
        let hi = exp.len().min(i + MAX_GAP + 1);
        let back: Vec<u16> = exp[lo..i].iter().rev().map(|&b| b as u16).collect();
        let n = back.len();
        let mut c = back;
        c.push(256);
        c.extend(exp[lo..hi].iter().rev().map(|&b| b as u16));
        let z = z_function(&c);
        let starts: Vec<usize> = self
            .recs
            .iter()
            .filter_map(|r| r.0.checked_sub(self.base).map(|v| v as usize))
            .collect();
        let mut found: Option<(usize, usize)> = None;
        for d in shifts.into_iter().map(|q| q + 1) {
            let run = z[n + 1 + (hi - i - d)] as usize;
            // The earliest record start s in [i - run + d, i + d].
            let k = starts.partition_point(|&s| s < i - run + d);
            let Some(&s) = starts.get(k).filter(|&&s| s <= i + d) else {
                continue;
            };
            let g = s - d;
            if kills_now <= self.kills_at(self.base + g as u64) {
                continue;
            }
            match found {
                None => found = Some((d, g)),
                Some((d, g)) => return Loss::Ambiguous(d as u64, self.base + g as u64),
            }
        }
        match found {
            None => Loss::No,
            Some((d, g)) => Loss::Gap(d as u64, self.base + g as u64),
        }
    }

    /// Drops what was already verified.
    fn compact(&mut self) {
        let done = self.idx(self.cursor).min(self.firm);
        if done > (4 << 20) && self.open.is_none() {
            self.exp.drain(..done);
            self.firm -= done;
            self.base += done as u64;
            while self.recs.len() > 1 && self.recs[1].0 <= self.base {
                self.recs.pop_front();
            }
        }
    }
}

/// What [`Expect::find_loss`] makes of a difference.
enum Loss {
    /// No settle-window loss explains it.
    No,
    /// A loss of `.0` bytes starting at stream position `.1`.
    Gap(u64, u64),
    /// Losses of different lengths explain it (periodic or zero bytes): more bytes tell;
    /// the shortest is the one given.
    Ambiguous(u64, u64),
}

/// KMP failure function of `pat`.
fn failure(pat: &[u8]) -> Vec<u32> {
    let mut fail = vec![0u32; pat.len()];
    let mut k = 0usize;
    for q in 1..pat.len() {
        while k > 0 && pat[q] != pat[k] {
            k = fail[k - 1] as usize;
        }
        if pat[q] == pat[k] {
            k += 1;
        }
        fail[q] = k as u32;
    }
    fail
}

/// Z-function: `z[k]` is the length of the common prefix of `v` and `v[k..]`.
fn z_function(v: &[u16]) -> Vec<u32> {
    let n = v.len();
    let mut z = vec![0u32; n];
    let (mut l, mut r) = (0usize, 0usize);
    for k in 1..n {
        let mut len = if k < r {
            (z[k - l] as usize).min(r - k)
        } else {
            0
        };
        while k + len < n && v[len] == v[k + len] {
            len += 1;
        }
        z[k] = len as u32;
        if k + len > r {
            (l, r) = (k, k + len);
        }
    }
    z
}

/// Every start at which `pat` occurs in `text`, overlapping ones included (KMP: linear).
fn occurrences(pat: &[u8], text: &[u8]) -> Vec<usize> {
    let m = pat.len();
    let fail = failure(pat);
    let mut out = Vec::new();
    let mut k = 0;
    for (q, &b) in text.iter().enumerate() {
        while k > 0 && b != pat[k] {
            k = fail[k - 1] as usize;
        }
        if b == pat[k] {
            k += 1;
        }
        if k == m {
            out.push(q + 1 - m);
            k = fail[k - 1] as usize;
        }
    }
    out
}

/// Most bytes a settle can drain at once (largest pipe) plus slack.
const MAX_GAP: usize = (1 << 20) + 65536;

struct Consumer<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
    chan: usize,
    gen: u64,
    log: LogReader,
    e: Expect,
}

impl Consumer<'_, '_> {
    fn refresh(&mut self) -> Result<(), String> {
        for r in self.log.poll().map_err(|e| e.to_string())? {
            self.e.apply(r)?;
        }
        Ok(())
    }

    /// Makes `exp` reach absolute position `abs` (inclusive), waiting for the producer's
    /// records; false when they never come.
    fn reach(&mut self, abs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Err(e) = self.refresh() {
                let (c, g) = (self.chan, self.gen);
                self.ctx.fail(C_MISMATCHES, || {
                    format!("channel {c} gen {g}: bad log: {e}")
                });
                return false;
            }
            if self.e.idx(abs) < self.e.exp.len() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            sleep_ms(1);
        }
    }

    /// Checks `got`, the next bytes read from the pipe; returns how many were consumed
    /// (fewer when a difference needs more bytes to be judged and `eof` is false).
    fn verify(&mut self, got: &[u8], eof: bool) -> usize {
        let mut refreshed = false;
        let mut j = 0;
        while j < got.len() {
            // Bytes past the confirmed records are checked against the open INTENT only
            // once the log has been read after `got` was: a DONE written before these
            // bytes entered the pipe is then known (and may cut the intent short).
            if !refreshed && self.e.idx(self.e.cursor) >= self.e.firm {
                refreshed = true;
                let _ = self.refresh();
            }
            if !self.reach(self.e.cursor) {
                let (c, g, at, n) = (self.chan, self.gen, self.e.cursor, got.len() - j);
                self.ctx.st.add(C_MISMATCH_BYTES, n as u64);
                self.ctx.fail(C_MISMATCHES, || {
                    format!("MISMATCH channel {c} gen {g}: {n} bytes at stream position {at} that no producer sent")
                });
                self.e.cursor += n as u64;
                return got.len();
            }
            let i = self.e.idx(self.e.cursor);
            let n = (self.e.exp.len() - i).min(got.len() - j);
            let diff = self.e.exp[i..i + n]
                .iter()
                .zip(&got[j..j + n])
                .position(|(a, b)| a != b);
            match diff {
                None => {
                    self.e.cursor += n as u64;
                    j += n;
                    self.ctx.st.add(C_BYTES_VERIFIED, n as u64);
                }
                Some(d) => {
                    self.e.cursor += d as u64;
                    j += d;
                    self.ctx.st.add(C_BYTES_VERIFIED, d as u64);
                    match self.mismatch(got, j, eof) {
                        Some(next) => j = next,
                        None => return j,
                    }
                }
            }
        }
        self.e.compact();
        got.len()
    }

    /// A byte differs at `got[j]`: either a settle-window loss (the next bytes of `got`
    /// match the expected stream after a gap, and a mutating process was killed after
    /// the missing bytes were spliced: the cursor skips the gap and `j` is returned) or
    /// a mismatch (the rest of `got` is counted and consumed).
    fn mismatch(&mut self, got: &[u8], j: usize, eof: bool) -> Option<usize> {
        if got.len() - j < 4096 && !eof {
            return None; // judge with more bytes
        }
        let _ = self.refresh();
        let rest = &got[j..];
        let i = self.e.idx(self.e.cursor);
        let kills_now = self.ctx.st.get(W_KILLS);
        let at = self.e.cursor;
        let loss = self.e.find_loss(at, rest, kills_now);
        if matches!(loss, Loss::Ambiguous(..)) && !eof && rest.len() < 2 * MAX_GAP {
            return None; // judge with more bytes
        }
        if let Loss::Gap(gap, from) | Loss::Ambiguous(gap, from) = loss {
            self.ctx.st.add(C_LOSSES, 1);
            self.ctx.st.add(C_LOSS_BYTES, gap);
            let (c, g) = (self.chan, self.gen);
            eprintln!(
                "stress: settle-window loss on channel {c} gen {g}: {gap} bytes missing at stream position {from}"
            );
            self.e.cursor = at + gap;
            self.e.floor = self.e.cursor;
            return Some(j);
        }
        // A real mismatch: count the differing bytes of this chunk position by position.
        let m = rest.len().min(self.e.exp.len() - i);
        let bad = self.e.exp[i..i + m]
            .iter()
            .zip(&rest[..m])
            .filter(|(a, b)| a != b)
            .count()
            + (rest.len() - m);
        self.ctx.st.add(C_MISMATCH_BYTES, bad as u64);
        let (c, g) = (self.chan, self.gen);
        let want = self.e.exp[i..(i + 16).min(self.e.exp.len())].to_vec();
        let have = rest[..rest.len().min(16)].to_vec();
        let rec = self.e.recs.iter().rev().find(|r| r.0 <= at).copied();
        let detail = match rec {
            Some((start, kills_then, meta, seq)) => {
                let (op, k, off) = (
                    (meta >> 28) as usize,
                    ((meta >> 24) & 0xf) as usize,
                    (meta & 0xff_ffff) as usize,
                );
                let pos = (at - start) as usize;
                let now = pread_full(self.ctx.data[k].as_raw_fd(), off + pos, have.len());
                format!(
                    "record {seq} ({} of f{k} at {off}, byte {pos} of it; kills then {kills_then}); the file holds {} there now",
                    OP_NAMES.get(op).copied().unwrap_or("?"),
                    if now == have { "the bytes received" } else { "other bytes" }
                )
            }
            None => "no record".to_string(),
        };
        // Where else in the expected stream do these bytes appear (a shift tells a
        // loss or a duplication from corrupted content)?
        let key = &rest[..rest.len().min(256)];
        let shift = (0..self.e.exp.len().saturating_sub(key.len()))
            .filter(|&x| self.e.exp[x..x + key.len()] == *key)
            .map(|x| x as i64 - i as i64)
            .min_by_key(|d| d.abs());
        let detail = format!(
            "{detail}; the received bytes appear in the expected stream at shift {shift:?}"
        );
        self.ctx.fail(C_MISMATCHES, || {
            format!(
                "MISMATCH channel {c} gen {g} at stream position {at}: {bad} of {} bytes differ; expected {want:02x?}, got {have:02x?}; kills so far {kills_now}; {detail}",
                rest.len()
            )
        });
        self.e.cursor += rest.len() as u64;
        Some(got.len())
    }

    /// End of stream: everything confirmed must have arrived.
    fn at_eof(&mut self) {
        let _ = self.refresh();
        let firm = self.e.base + self.e.firm as u64;
        if self.e.cursor < firm {
            let missing = firm - self.e.cursor;
            let (c, g, at) = (self.chan, self.gen, self.e.cursor);
            if self.ctx.st.get(W_KILLS) > self.e.kills_at(at) && missing as usize <= MAX_GAP {
                self.ctx.st.add(C_LOSSES, 1);
                self.ctx.st.add(C_LOSS_BYTES, missing);
                eprintln!("stress: settle-window loss on channel {c} gen {g}: last {missing} bytes missing at EOF");
            } else {
                self.ctx.st.add(C_MISMATCH_BYTES, missing);
                self.ctx.fail(C_MISMATCHES, || {
                    format!("MISMATCH channel {c} gen {g}: EOF at {at}, {missing} sent bytes never arrived")
                });
            }
        }
        self.ctx.st.add(C_GENS, 1);
    }
}

fn consumer_thread(ctx: &mut Ctx, chan: usize) {
    let mut last_done: Option<u64> = None;
    let sink_path = ctx.dir.join(format!("sink{}", ctx.slot.idx));
    let sink = open_raw(&sink_path, libc::O_RDWR | libc::O_CREAT).expect("sink file");
    let mut buf = vec![0u8; 1 << 20];
    'gens: while !ctx.st.stopping() || last_done.is_none() {
        let g = ctx.st.gen(chan);
        if last_done.is_some_and(|d| d >= g) {
            if ctx.st.stopping() {
                break;
            }
            ctx.slot.heartbeat();
            sleep_ms(2);
            continue;
        }
        let fifo = fifo_path(&ctx.dir, chan, g);
        let logp = log_path(&ctx.dir, chan, g);
        let anon = match ctx.pipes.as_str() {
            "fifo" => false,
            "anon" => true,
            _ => ctx.rng.chance(50),
        };
        // The read end (non-blocking), and for an anonymous pipe our write end, which
        // the producer reopens through /proc and we close once it has.
        let (fd, mut offered_w) = if anon {
            let (r, w) = splicecow_test_harness::pipe().expect("pipe");
            // SAFETY: fcntl on our own fd.
            unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            (r, Some(w))
        } else {
            mkfifo(&fifo);
            match open_raw(&fifo, libc::O_RDONLY | libc::O_NONBLOCK) {
                Ok(fd) => (fd, None),
                Err(e) => {
                    ctx.fail(C_ERRORS, || format!("open fifo {}: {e}", fifo.display()));
                    sleep_ms(10);
                    continue;
                }
            }
        };
        let offer = |i: usize| ctx.st.w(W_OFFER + chan * OFFER_WORDS + i);
        offer(1).store(if anon { 2 } else { 1 }, Ordering::SeqCst);
        offer(2).store(std::process::id() as u64, Ordering::SeqCst);
        let wfd = offered_w
            .as_ref()
            .map(|w| w.as_raw_fd() as u64)
            .unwrap_or(0);
        offer(3).store(wfd, Ordering::SeqCst);
        offer(0).store(g + 1, Ordering::SeqCst);
        // Wait for the producer's START record.
        let log = loop {
            if ctx.st.gen(chan) != g || ctx.st.stopping() {
                let _ = std::fs::remove_file(&fifo);
                last_done = Some(g);
                continue 'gens;
            }
            if let Ok(f) = OpenOptions::new().read(true).write(true).open(&logp) {
                if f.metadata()
                    .map(|m| m.len() as usize >= REC_HDR)
                    .unwrap_or(false)
                {
                    break f;
                }
            }
            ctx.slot.heartbeat();
            sleep_ms(2);
        };
        offered_w = None;
        drop(offered_w);
        let mut c = Consumer {
            ctx: &mut *ctx,
            chan,
            gen: g,
            log: LogReader {
                file: log,
                buf: Vec::new(),
                at: 0,
                base: 0,
            },
            e: Expect {
                base: 0,
                exp: Vec::new(),
                firm: 0,
                open: None,
                recs: VecDeque::new(),
                cursor: 0,
                floor: 0,
            },
        };
        let raw = fd.as_raw_fd();
        // Bytes read but not judged yet (a difference is judged on 4 KiB or at EOF).
        let mut carry: Vec<u8> = Vec::new();
        // Diagnostic: STRESS_BIG_READS=1 makes every read ask for 1 MiB (a read shorter
        // than a packet-mode buffer drops the rest of the packet).
        let big_reads = std::env::var_os("STRESS_BIG_READS").is_some();
        loop {
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 50) };
            let use_splice = c.ctx.rng.chance(30);
            let want = if big_reads {
                buf.len()
            } else {
                c.ctx.rng.range(1, buf.len())
            };
            let r = if use_splice {
                c.ctx.slot.begin(Op::ConsumeSplice);
                let mut so: libc::loff_t = 0;
                // SAFETY: so is our local; sink is our private file.
                let r = unsafe {
                    libc::splice(
                        raw,
                        std::ptr::null_mut(),
                        sink.as_raw_fd(),
                        &mut so,
                        want,
                        libc::SPLICE_F_NONBLOCK,
                    )
                };
                if r > 0 {
                    let got = pread_full(sink.as_raw_fd(), 0, r as usize);
                    buf[..got.len()].copy_from_slice(&got);
                    if got.len() != r as usize {
                        c.ctx.fail(C_ERRORS, || {
                            format!("sink holds {} of {r} spliced bytes", got.len())
                        });
                    }
                    c.ctx.st.add(C_SPLICE_READS, 1);
                }
                r
            } else {
                c.ctx.slot.begin(Op::ConsumeRead);
                // SAFETY: buf has `want` writable bytes.
                unsafe { libc::read(raw, buf.as_mut_ptr().cast(), want) }
            };
            c.ctx.slot.end();
            if r > 0 {
                c.ctx.st.add(C_CONSUME_OPS, 1);
                let got = &buf[..r as usize];
                if carry.is_empty() {
                    let used = c.verify(got, false);
                    carry.extend_from_slice(&got[used..]);
                } else {
                    carry.extend_from_slice(got);
                    let used = c.verify(&carry, false);
                    carry.drain(..used);
                }
            } else if r == 0 {
                c.verify(&carry, true);
                carry.clear();
                c.at_eof();
                break;
            } else if errno() != libc::EAGAIN && errno() != libc::EINTR {
                let e = io::Error::last_os_error();
                c.ctx
                    .fail(C_ERRORS, || format!("consuming channel {chan}: {e}"));
                break;
            }
        }
        drop(fd);
        let _ = std::fs::remove_file(&fifo);
        let _ = std::fs::remove_file(&logp);
        last_done = Some(g);
    }
}

// ---------------------------------------------------------------------------------------
// Worker: mutator
// ---------------------------------------------------------------------------------------

fn mutator_thread(ctx: &mut Ctx, victim: bool) {
    while !ctx.st.stopping() {
        ctx.mutate();
        if victim {
            // The victim's settles pause with the registry lock held: keep it from
            // stalling everyone (thread::sleep uses clock_nanosleep, not SYS_nanosleep).
            std::thread::sleep(Duration::from_micros(ctx.rng.range(500, 3000) as u64));
        }
    }
}

fn worker_main(args: WorkerArgs) -> ExitCode {
    let st = match Status::map(&args.dir.join("status"), false) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stress worker: status page: {e}");
            return ExitCode::from(2);
        }
    };
    let st = &st;
    let args = &args;
    std::thread::scope(|s| {
        for t in 0..args.threads {
            s.spawn(move || {
                let slot = args.slot_base + t;
                let name = format!("{}#{t}", args.role);
                let mut ctx = match Ctx::new(
                    st,
                    slot,
                    &args.dir,
                    args.seed.wrapping_add(t as u64),
                    args.files,
                    args.max_size,
                    name,
                ) {
                    Ok(mut c) => {
                        c.pipes = args.pipes.clone();
                        c
                    }
                    Err(e) => {
                        eprintln!("stress worker {}: setup: {e}", args.role);
                        st.add(C_ERRORS, 1);
                        return;
                    }
                };
                match args.role.as_str() {
                    "producer" => producer_thread(
                        &mut ctx,
                        [args.chans[2 * t], args.chans[2 * t + 1]],
                        !args.no_headers,
                    ),
                    "consumer" => consumer_thread(&mut ctx, args.chans[t]),
                    "victim" => mutator_thread(&mut ctx, true),
                    _ => mutator_thread(&mut ctx, false),
                }
                ctx.slot
                    .st
                    .slot(slot, S_OP)
                    .store(Op::Idle as u64, Ordering::Relaxed);
            });
        }
    });
    ExitCode::SUCCESS
}

/// `stress probe`: one registry operation (a file→pipe splice), timed from the kill.
fn probe_main(args: ProbeArgs) -> ExitCode {
    let f = match File::open(args.dir.join("side")) {
        Ok(f) => f,
        Err(_) => return ExitCode::from(2),
    };
    let (r, w) = splicecow_test_harness::pipe().expect("pipe");
    let mut off: libc::loff_t = 0;
    // SAFETY: off is our local.
    let n = unsafe {
        libc::splice(
            f.as_raw_fd(),
            &mut off,
            w.as_raw_fd(),
            std::ptr::null_mut(),
            4096,
            0,
        )
    };
    let waited = monotonic_ns().saturating_sub(args.kill_ns);
    drop((r, w));
    println!("{} {}", n, waited);
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------
// Parent
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Producer,
    Consumer,
    Mutator,
    Victim,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
            Role::Mutator => "mutator",
            Role::Victim => "victim",
        }
    }
    /// Whether the role changes files (its death can interrupt a settle).
    fn mutates(self) -> bool {
        self != Role::Consumer
    }
}

struct Worker {
    role: Role,
    threads: usize,
    slot_base: usize,
    chans: Vec<usize>,
    child: Option<Child>,
    pid: u32,
    restarts: u64,
    killed: bool,
}

/// The roles of a run with `n` workers.
fn plan(n: usize, faults: bool) -> Vec<Worker> {
    let n = n.max(8);
    let producers = (n * 3 / 8).max(3);
    let consumers = (n / 4).max(2);
    let mutators = n.saturating_sub(producers + consumers).max(2);
    let mut out = Vec::new();
    let mut slot = 0;
    let mut chan = 0;
    let mk = |role: Role, threads: usize, chans: Vec<usize>, slot: &mut usize| {
        let w = Worker {
            role,
            threads,
            slot_base: *slot,
            chans,
            child: None,
            pid: 0,
            restarts: 0,
            killed: false,
        };
        *slot += threads;
        w
    };
    for p in 0..producers {
        let threads = if p == 0 { 2 } else { 1 };
        let chans: Vec<usize> = (chan..chan + 2 * threads).collect();
        chan += 2 * threads;
        out.push(mk(Role::Producer, threads, chans, &mut slot));
    }
    let total = chan;
    let per = total.div_ceil(consumers);
    let mut next = 0;
    for _ in 0..consumers {
        let chans: Vec<usize> = (next..(next + per).min(total)).collect();
        next += chans.len();
        if !chans.is_empty() {
            out.push(mk(Role::Consumer, chans.len(), chans, &mut slot));
        }
    }
    for m in 0..mutators {
        let role = if faults && m == mutators - 1 {
            Role::Victim
        } else {
            Role::Mutator
        };
        let threads = if m == 0 { 2 } else { 1 };
        out.push(mk(role, threads, Vec::new(), &mut slot));
    }
    assert!(chan <= MAX_CHANS && slot <= MAX_SLOTS, "too many workers");
    out
}

struct Parent {
    args: RunArgs,
    dir: PathBuf,
    lib: PathBuf,
    cli: PathBuf,
    domain: TempDomain,
    st: Status,
    seed: u64,
    rng: Rng,
    workers: Vec<Worker>,
    crashes: u64,
    kills: [u64; 4],
    aimed_hits: u64,
    takeover_probes: u64,
    max_takeover_ns: u64,
    hangs: u64,
}

impl Parent {
    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let exe = std::env::current_exe()?;
        let w = &self.workers[i];
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--role")
            .arg(w.role.name())
            .arg("--threads")
            .arg(w.threads.to_string())
            .arg("--slot-base")
            .arg(w.slot_base.to_string())
            .arg("--seed")
            .arg(
                self.seed
                    .wrapping_add((i as u64) << 32)
                    .wrapping_add(w.restarts * 7919)
                    .to_string(),
            )
            .arg("--files")
            .arg(self.args.files.to_string())
            .arg("--max-size")
            .arg((self.args.file_size * 2).to_string());
        if self.args.no_headers {
            cmd.arg("--no-headers");
        }
        cmd.arg("--pipes").arg(&self.args.pipes);
        if !w.chans.is_empty() {
            let list: Vec<String> = w.chans.iter().map(|c| c.to_string()).collect();
            cmd.arg("--chans").arg(list.join(","));
        }
        self.domain.protection(&self.lib).apply(&mut cmd);
        if w.role == Role::Victim {
            cmd.env(
                "SPLICECOW_TEST_PAUSE",
                format!("settle:{}", self.args.settle_pause_us),
            );
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn()?;
        let w = &mut self.workers[i];
        w.pid = child.id();
        w.child = Some(child);
        w.killed = false;
        Ok(())
    }

    fn progress(&self) -> u64 {
        (0..MAX_SLOTS)
            .map(|s| self.st.slot(s, S_PROGRESS).load(Ordering::Relaxed))
            .sum()
    }

    fn ops(&self) -> u64 {
        self.st.count(C_SPLICE_OPS) + self.st.count(C_MUT_OPS)
    }

    /// Reaps dead workers; restarts them unless stopping. Returns how many are alive.
    fn reap(&mut self, restart: bool) -> usize {
        let mut alive = 0;
        for i in 0..self.workers.len() {
            let Some(child) = self.workers[i].child.as_mut() else {
                continue;
            };
            match child.try_wait() {
                Ok(None) => alive += 1,
                Ok(Some(status)) => {
                    let w = &mut self.workers[i];
                    w.child = None;
                    let clean = status.success() && self.st.stopping();
                    if !w.killed && !clean {
                        self.crashes += 1;
                        eprintln!(
                            "stress: CRASH: {} worker pid {} ended with {status} without being killed (seed {})",
                            w.role.name(), w.pid, self.seed
                        );
                    }
                    // The dead worker's channels end their generation.
                    for &c in &w.chans {
                        self.st.w(W_GEN + c).fetch_add(1, Ordering::SeqCst);
                    }
                    for s in w.slot_base..w.slot_base + w.threads {
                        self.st.slot(s, S_OP_START).store(0, Ordering::Relaxed);
                    }
                    if restart && !self.st.stopping() {
                        self.workers[i].restarts += 1;
                        if let Err(e) = self.spawn(i) {
                            eprintln!("stress: cannot restart worker: {e}");
                            self.crashes += 1;
                        } else {
                            alive += 1;
                        }
                    }
                }
                Err(_) => {}
            }
        }
        alive
    }

    fn kill(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if w.child.is_none() || w.killed {
            return;
        }
        if w.role.mutates() {
            self.st.w(W_KILLS).fetch_add(1, Ordering::SeqCst);
        }
        w.killed = true;
        // SAFETY: signalling our own child (not yet reaped, so the pid is still ours).
        unsafe { libc::kill(w.pid as i32, libc::SIGKILL) };
        let idx = match w.role {
            Role::Producer => 0,
            Role::Consumer => 1,
            Role::Mutator => 2,
            Role::Victim => 3,
        };
        self.kills[idx] += 1;
    }

    /// Tries to kill the victim while it sleeps in a settle (registry lock held).
    fn aimed_kill(&mut self, i: usize) {
        let pid = self.workers[i].pid as i32;
        let slot = self.workers[i].slot_base;
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline && self.workers[i].child.is_some() {
            let op = self.st.slot(slot, S_OP).load(Ordering::Relaxed);
            let busy = self.st.slot(slot, S_OP_START).load(Ordering::Relaxed) != 0;
            if busy && (Op::Pwrite as u64..=Op::CopyFileRange as u64).contains(&op) {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                let in_pause = wait_stopped(pid) && in_shim_sleep(pid);
                if in_pause {
                    self.kill(i);
                    let t = monotonic_ns();
                    self.aimed_hits += 1;
                    self.probe_takeover(t);
                    return;
                }
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        self.kill(i);
    }

    /// Runs a protected probe that times its first registry operation since `kill_ns`.
    fn probe_takeover(&mut self, kill_ns: u64) {
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(_) => return,
        };
        let mut cmd = Command::new(exe);
        cmd.arg("probe")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--kill-ns")
            .arg(kill_ns.to_string());
        self.domain.protection(&self.lib).apply(&mut cmd);
        match run_with_timeout(&mut cmd, Duration::from_secs(10)) {
            Ok(out) if out.status.is_some_and(|s| s.success()) => {
                let text = String::from_utf8_lossy(&out.stdout);
                if let Some(ns) = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    self.takeover_probes += 1;
                    self.max_takeover_ns = self.max_takeover_ns.max(ns);
                }
            }
            Ok(out) => {
                self.hangs += u64::from(out.status.is_none());
                eprintln!("stress: lock-takeover probe failed: {}", out.describe());
                self.max_takeover_ns = self.max_takeover_ns.max(10_000_000_000);
            }
            Err(e) => eprintln!("stress: probe: {e}"),
        }
    }

    fn stats(&self) -> Option<serde_json::Value> {
        let out = Command::new(&self.cli)
            .args(["stats", "--json", "--domain", self.domain.name()])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Prints who waits for what.
    fn dump(&self, why: &str) {
        eprintln!("stress: HANG: {why} (seed {})", self.seed);
        for w in &self.workers {
            if w.child.is_none() {
                continue;
            }
            eprintln!(
                "  {} pid {} (restarts {})",
                w.role.name(),
                w.pid,
                w.restarts
            );
            for s in w.slot_base..w.slot_base + w.threads {
                let op = self.st.slot(s, S_OP).load(Ordering::Relaxed);
                let start = self.st.slot(s, S_OP_START).load(Ordering::Relaxed);
                let secs = if start == 0 {
                    0.0
                } else {
                    (monotonic_ns().saturating_sub(start)) as f64 / 1e9
                };
                eprintln!(
                    "    thread slot {s} tid {}: last op {} ({}), file f{}, progress {}",
                    self.st.slot(s, S_TID).load(Ordering::Relaxed),
                    op_name(op),
                    if start == 0 {
                        "finished".to_string()
                    } else {
                        format!("running for {secs:.1}s")
                    },
                    self.st.slot(s, S_FILE).load(Ordering::Relaxed),
                    self.st.slot(s, S_PROGRESS).load(Ordering::Relaxed)
                );
            }
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", w.pid)) {
                for t in tasks.flatten() {
                    let p = t.path();
                    let rd = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
                    eprintln!(
                        "    task {}: wchan {} syscall {}",
                        t.file_name().to_string_lossy(),
                        rd("wchan"),
                        rd("syscall").trim()
                    );
                    for line in rd("stack").lines().take(12) {
                        eprintln!("      {line}");
                    }
                }
            }
        }
        match self.stats() {
            Some(v) => eprintln!("  registry: {v}"),
            None => eprintln!("  registry: (unreadable)"),
        }
    }

    fn kill_all(&mut self) {
        for w in &mut self.workers {
            if let Some(c) = w.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            w.child = None;
        }
    }
}

/// Waits (briefly) until `pid` is in the stopped state.
fn wait_stopped(pid: i32) -> bool {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some(state) = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
            {
                if state == "T" || state == "t" {
                    return true;
                }
            }
        } else {
            return false;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    false
}

/// Whether a thread of `pid` is inside `SYS_nanosleep`: only the shim uses it (the
/// settle pause, and short waits for the registry lock); Rust and glibc sleep with
/// `clock_nanosleep`.
fn in_shim_sleep(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("syscall"))
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<i64>().ok())
            })
            == Some(libc::SYS_nanosleep)
    })
}

/// The final figures of a run.
#[derive(Debug, Serialize)]
struct Report {
    seed: u64,
    seconds: f64,
    workers: usize,
    threads: usize,
    ops: u64,
    ops_per_sec: f64,
    splice_ops: u64,
    mutation_ops: u64,
    consume_ops: u64,
    tees: u64,
    pipe_to_pipe: u64,
    sendfiles: u64,
    headers: u64,
    bytes_verified: u64,
    generations_checked: u64,
    settles: u64,
    settles_per_sec: f64,
    bytes_spliced: u64,
    bytes_copied: u64,
    copied_per_spliced: f64,
    copy_fallbacks: u64,
    unreachable_pipes: u64,
    faults: bool,
    kills: u64,
    kills_producer: u64,
    kills_consumer: u64,
    kills_mutator: u64,
    kills_victim: u64,
    kills_in_settle: u64,
    lock_takeovers: u64,
    takeover_probes: u64,
    max_lock_takeover_ms: f64,
    mismatches: u64,
    mismatch_bytes: u64,
    settle_window_losses: u64,
    settle_window_loss_bytes: u64,
    file_mismatches: u64,
    model_resyncs: u64,
    errors: u64,
    crashes: u64,
    hangs: u64,
    passed: bool,
}

fn setup_dir(args: &RunArgs, seed: u64) -> io::Result<PathBuf> {
    let dir = temp_path("stress");
    std::fs::create_dir_all(&dir)?;
    for k in 0..args.files {
        let content: Vec<u8> = (0..args.file_size).map(|i| initial_byte(k, i)).collect();
        std::fs::write(data_path(&dir, k), &content)?;
        std::fs::write(model_path(&dir, k), &content)?;
        File::create(lock_path(&dir, k))?;
    }
    let mut rng = Rng(seed ^ 0x5eed);
    let mut side = vec![0u8; SIDE_LEN];
    rng.fill(&mut side);
    std::fs::write(dir.join("side"), &side)?;
    Ok(dir)
}

fn run(args: RunArgs) -> ExitCode {
    let lib = match args.lib.clone().map(Ok).unwrap_or_else(library_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("stress: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = lib.with_file_name("splicecow");
    if args.files == 0 || args.files > MAX_FILES {
        eprintln!("stress: --files must be 1..={MAX_FILES}");
        return ExitCode::from(2);
    }
    let faults = args.faults || args.kill_rate.is_some();
    let kill_rate = args.kill_rate.unwrap_or(20.0);
    let duration = args
        .duration
        .or(if args.ops.is_some() { None } else { Some(30.0) });
    let seed = args
        .seed
        .unwrap_or_else(|| monotonic_ns() ^ (std::process::id() as u64) << 40);
    let dir = match setup_dir(&args, seed) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("stress: setup: {e}");
            return ExitCode::from(2);
        }
    };
    let st = Status::map(&dir.join("status"), true).expect("status page");
    let workers = plan(args.workers, faults);
    let threads: usize = workers.iter().map(|w| w.threads).sum();
    eprintln!(
        "stress: seed {seed}; {} workers ({} threads), {} files of {} bytes, faults {}; dir {}",
        workers.len(),
        threads,
        args.files,
        args.file_size,
        if faults {
            format!("on ({kill_rate}/s)")
        } else {
            "off".into()
        },
        dir.display()
    );
    let mut p = Parent {
        args: args.clone(),
        dir: dir.clone(),
        lib,
        cli,
        domain: TempDomain::new(),
        st,
        seed,
        rng: Rng(seed),
        workers,
        crashes: 0,
        kills: [0; 4],
        aimed_hits: 0,
        takeover_probes: 0,
        max_takeover_ns: 0,
        hangs: 0,
    };
    for i in 0..p.workers.len() {
        if let Err(e) = p.spawn(i) {
            eprintln!("stress: spawn: {e}");
            p.kill_all();
            return ExitCode::from(2);
        }
    }
    let start = Instant::now();
    let hang = Duration::from_secs_f64(args.hang_secs);
    let mut last_progress = (p.progress(), Instant::now());
    let mut next_kill = Instant::now() + Duration::from_millis(500);
    let mut next_report = Instant::now() + Duration::from_secs(10);
    let all_workers: Vec<usize> = (0..p.workers.len()).collect();
    // Main loop: faults, restarts, watchdog.
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let elapsed = start.elapsed().as_secs_f64();
        if duration.is_some_and(|d| elapsed >= d) || args.ops.is_some_and(|n| p.ops() >= n) {
            break;
        }
        p.reap(true);
        if faults && Instant::now() >= next_kill {
            let gap = -(1.0 - p.rng.next() as f64 / u64::MAX as f64).ln() / kill_rate;
            next_kill = Instant::now() + Duration::from_secs_f64(gap.min(2.0));
            let kind = p.rng.below(args.kill_roles.len());
            let want = match args.kill_roles[kind].as_str() {
                "producer" => Role::Producer,
                "consumer" => Role::Consumer,
                "mutator" => Role::Mutator,
                _ => Role::Victim,
            };
            let cands: Vec<usize> = all_workers
                .iter()
                .copied()
                .filter(|&i| p.workers[i].role == want && p.workers[i].child.is_some())
                .collect();
            if !cands.is_empty() {
                let i = cands[p.rng.below(cands.len())];
                if want == Role::Victim {
                    p.aimed_kill(i);
                } else {
                    p.kill(i);
                }
            }
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            eprintln!(
                "stress: {:.0}s: {} ops, {} verified bytes, {} kills, {} mismatches, {} losses",
                elapsed,
                p.ops(),
                p.st.count(C_BYTES_VERIFIED),
                p.kills.iter().sum::<u64>(),
                p.st.count(C_MISMATCHES),
                p.st.count(C_LOSSES)
            );
        }
        // Watchdog.
        let now_progress = p.progress();
        if now_progress != last_progress.0 {
            last_progress = (now_progress, Instant::now());
        }
        let stuck = p
            .workers
            .iter()
            .filter(|w| w.child.is_some())
            .find_map(|w| {
                (w.slot_base..w.slot_base + w.threads).find(|&s| {
                    let t = p.st.slot(s, S_OP_START).load(Ordering::Relaxed);
                    t != 0 && monotonic_ns().saturating_sub(t) > hang.as_nanos() as u64
                })
            });
        if let Some(s) = stuck {
            p.dump(&format!(
                "thread slot {s} is inside one operation for more than {:?}",
                hang
            ));
            p.hangs += 1;
            break;
        }
        if last_progress.1.elapsed() > hang {
            p.dump(&format!("no progress for {hang:?}"));
            p.hangs += 1;
            break;
        }
    }
    // Stop: producers and mutators finish, consumers drain to EOF.
    let run_secs = start.elapsed().as_secs_f64();
    p.st.w(W_STOP).store(1, Ordering::SeqCst);
    let deadline = Instant::now() + hang.max(Duration::from_secs(20));
    if p.hangs == 0 {
        loop {
            if p.reap(false) == 0 {
                break;
            }
            if Instant::now() > deadline {
                p.dump("workers did not finish after the stop request");
                p.hangs += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    p.kill_all();
    p.reap(false);
    let stats = p.stats().unwrap_or(serde_json::Value::Null);
    let sv = |k: &str| stats.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let st = &p.st;
    let ops = p.ops();
    let spliced = sv("bytes_zero_copy") + sv("bytes_copy_path");
    let report = Report {
        seed,
        seconds: run_secs,
        workers: p.workers.len(),
        threads,
        ops,
        ops_per_sec: ops as f64 / run_secs,
        splice_ops: st.count(C_SPLICE_OPS),
        mutation_ops: st.count(C_MUT_OPS),
        consume_ops: st.count(C_CONSUME_OPS),
        tees: st.count(C_TEES),
        pipe_to_pipe: st.count(C_PIPE2PIPE),
        sendfiles: st.count(C_SENDFILES),
        headers: st.count(C_HEADERS),
        bytes_verified: st.count(C_BYTES_VERIFIED),
        generations_checked: st.count(C_GENS),
        settles: sv("settles"),
        settles_per_sec: sv("settles") as f64 / run_secs,
        bytes_spliced: spliced,
        bytes_copied: sv("bytes_copied"),
        copied_per_spliced: sv("bytes_copied") as f64 / spliced.max(1) as f64,
        copy_fallbacks: sv("copy_fallbacks"),
        unreachable_pipes: sv("unreachable_pipes"),
        faults,
        kills: p.kills.iter().sum(),
        kills_producer: p.kills[0],
        kills_consumer: p.kills[1],
        kills_mutator: p.kills[2],
        kills_victim: p.kills[3],
        kills_in_settle: p.aimed_hits,
        lock_takeovers: sv("lock_takeovers"),
        takeover_probes: p.takeover_probes,
        max_lock_takeover_ms: p.max_takeover_ns as f64 / 1e6,
        mismatches: st.count(C_MISMATCHES),
        mismatch_bytes: st.count(C_MISMATCH_BYTES),
        settle_window_losses: st.count(C_LOSSES),
        settle_window_loss_bytes: st.count(C_LOSS_BYTES),
        file_mismatches: st.count(C_FILE_MISMATCHES),
        model_resyncs: st.count(C_RESYNCS),
        errors: st.count(C_ERRORS),
        crashes: p.crashes,
        hangs: p.hangs,
        passed: false,
    };
    let passed = report.mismatches == 0
        && report.file_mismatches == 0
        && report.errors == 0
        && report.crashes == 0
        && report.hangs == 0
        && report.max_lock_takeover_ms < 1000.0
        && report.bytes_verified > 0;
    let report = Report { passed, ..report };
    print_report(&report);
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("stress: kept {}", dir.display());
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        eprintln!("stress: FAILED (reproduce the random choices with --seed {seed})");
        ExitCode::from(1)
    }
}

fn print_report(r: &Report) {
    eprintln!("stress report (seed {}):", r.seed);
    eprintln!(
        "  duration          {:.1} s, {} workers, {} threads",
        r.seconds, r.workers, r.threads
    );
    eprintln!("  ops               {} ({:.0}/s): {} transfers ({} sendfile, {} tee, {} pipe->pipe, {} headers), {} mutations", r.ops, r.ops_per_sec, r.splice_ops, r.sendfiles, r.tees, r.pipe_to_pipe, r.headers, r.mutation_ops);
    eprintln!(
        "  consumed          {} reads, {} bytes verified, {} pipe generations",
        r.consume_ops, r.bytes_verified, r.generations_checked
    );
    eprintln!(
        "  settles           {} ({:.0}/s)",
        r.settles, r.settles_per_sec
    );
    eprintln!(
        "  bytes copied      {} of {} spliced ({:.4})",
        r.bytes_copied, r.bytes_spliced, r.copied_per_spliced
    );
    eprintln!(
        "  copy fallbacks    {}, unreachable pipes {}",
        r.copy_fallbacks, r.unreachable_pipes
    );
    if r.faults {
        eprintln!("  kills             {} (producer {}, consumer {}, mutator {}, settle victim {} of which {} inside a settle)", r.kills, r.kills_producer, r.kills_consumer, r.kills_mutator, r.kills_victim, r.kills_in_settle);
        eprintln!(
            "  lock takeovers    {}; max wait after a kill {:.1} ms over {} probes",
            r.lock_takeovers, r.max_lock_takeover_ms, r.takeover_probes
        );
    }
    eprintln!(
        "  mismatches        {} ({} bytes)",
        r.mismatches, r.mismatch_bytes
    );
    eprintln!(
        "  settle-window losses {} ({} bytes)",
        r.settle_window_losses, r.settle_window_loss_bytes
    );
    eprintln!(
        "  file mismatches   {}, model resyncs {}, errors {}, crashes {}, hangs {}",
        r.file_mismatches, r.model_resyncs, r.errors, r.crashes, r.hangs
    );
    eprintln!(
        "  result            {}",
        if r.passed { "PASS" } else { "FAIL" }
    );
}

fn main() -> ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("worker") => {
            argv.remove(1);
            worker_main(WorkerArgs::parse_from(argv))
        }
        Some("probe") => {
            argv.remove(1);
            probe_main(ProbeArgs::parse_from(argv))
        }
        Some("torture") => {
            argv.remove(1);
            torture_main(Torture::parse_from(argv))
        }
        _ => run(RunArgs::parse()),
    }
}

// ---------------------------------------------------------------------------------------
// `stress torture CASE ...`: small protected programs for tests/torture.rs
// ---------------------------------------------------------------------------------------

/// One `splice` of up to `len` bytes of `fd` at `off` into pipe `w` (the pipe may take
/// fewer: it is never waited on, since its reader is the caller); returns what moved.
fn splice_range(fd: RawFd, off: usize, w: RawFd, len: usize) -> usize {
    let mut o = off as libc::loff_t;
    loop {
        // SAFETY: o is our local.
        let r = unsafe { libc::splice(fd, &mut o, w, std::ptr::null_mut(), len, 0) };
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        return r.max(0) as usize;
    }
}

/// Reads exactly `len` bytes (or until EOF) from `fd`.
fn read_exact_fd(fd: RawFd, len: usize) -> Vec<u8> {
    // SAFETY: `fill` passes a writable buffer of the given length.
    fill(len, |dst, n, _| unsafe { libc::read(fd, dst, n) })
}

fn pwrite_all(fd: RawFd, buf: &[u8], off: usize) -> isize {
    // SAFETY: buf is a valid buffer.
    unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off as libc::off_t) }
}

fn flock_fd(fd: RawFd, op: i32) {
    // SAFETY: flock on our own fd; EINTR retried.
    while unsafe { libc::flock(fd, op) } != 0 && errno() == libc::EINTR {}
}

/// Splice-then-mutate rounds on `path` by one thread or process: each round splices a
/// random range into a private pipe (under `lock`), lets others mutate, mutates itself,
/// then reads the pipe and compares. Returns the number of mismatching rounds.
fn splice_mutate_rounds(
    path: &Path,
    lockp: &Path,
    rounds: usize,
    seed: u64,
    pause_us: u64,
) -> usize {
    let fd = open_raw(path, libc::O_RDWR).expect("data file");
    let lk = open_raw(lockp, libc::O_RDWR | libc::O_CREAT).expect("lock file");
    let (r, w) = splicecow_test_harness::pipe().expect("pipe");
    let mut rng = Rng(seed);
    let mut bad = 0;
    for round in 0..rounds {
        flock_fd(lk.as_raw_fd(), libc::LOCK_EX);
        let size = file_size(fd.as_raw_fd()).max(1);
        let off = rng.below(size);
        let len = rng.range(1, 65536).min(size - off).max(1);
        let expected = pread_full(fd.as_raw_fd(), off, len);
        let moved = splice_range(fd.as_raw_fd(), off, w.as_raw_fd(), expected.len());
        flock_fd(lk.as_raw_fd(), libc::LOCK_UN);
        if pause_us > 0 {
            std::thread::sleep(Duration::from_micros(rng.range(0, pause_us as usize) as u64));
        }
        // Our own conflicting mutation.
        flock_fd(lk.as_raw_fd(), libc::LOCK_EX);
        let mut junk = vec![0u8; rng.range(1, 4096)];
        rng.fill(&mut junk);
        let at = off + rng.below(len);
        if pwrite_all(fd.as_raw_fd(), &junk, at) != junk.len() as isize {
            eprintln!("round {round}: pwrite returned a wrong count");
            bad += 1;
        }
        flock_fd(lk.as_raw_fd(), libc::LOCK_UN);
        let got = read_exact_fd(r.as_raw_fd(), moved);
        if got[..] != expected[..moved] {
            let first = got.iter().zip(&expected).position(|(a, b)| a != b);
            eprintln!(
                "MISMATCH pid {} round {round}: {moved} bytes spliced from {off}, first difference at {first:?}",
                std::process::id()
            );
            bad += 1;
        }
    }
    bad
}

/// Cases of `stress torture`.
#[derive(Parser, Debug)]
enum Torture {
    /// SIGALRM at a high rate whose handler `write`s into a file with live segments,
    /// while the main thread splices and pwrites: no deadlock, exact data and counts.
    Sigalrm {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
    },
    /// Splice/mutate rounds (the SIGSTOP/SIGCONT target, or a plain participant).
    Rounds {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        rounds: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 200)]
        pause_us: u64,
    },
    /// Random pwrites under the file lock for `secs` seconds.
    Mutate {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        secs: f64,
    },
    /// fork, then parent and child both run splice/mutate rounds on the same file.
    Fork {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 300)]
        rounds: usize,
    },
    /// Threads splicing and mutating one file at once (each checks its own pipe).
    Threads {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 16)]
        threads: usize,
        #[arg(long, default_value_t = 200)]
        rounds: usize,
    },
    /// Starts `stress torture child` with `posix_spawn` and waits for it (the vfork+exec
    /// case is a small C program built by the test).
    Spawn {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        domain: String,
    },
    /// The spawned child: checks its environment and splices once (counted in stats).
    Child {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        domain: String,
    },
}

/// Handler state of the SIGALRM case (async-signal-safe: atomics and raw fds only).
static SIG_FD: AtomicU64 = AtomicU64::new(0);
static SIG_WRITES: AtomicU64 = AtomicU64::new(0);
static SIG_BAD: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_alarm(_: libc::c_int) {
    let saved = errno();
    let fd = SIG_FD.load(Ordering::Relaxed) as RawFd;
    let rec = *b"0123456789abcdef";
    // SAFETY: write(2) is async-signal-safe; rec lives on our stack.
    let r = unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
    if r == rec.len() as isize {
        SIG_WRITES.fetch_add(1, Ordering::Relaxed);
    } else {
        SIG_BAD.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: restoring errno for the interrupted code.
    unsafe { *libc::__errno_location() = saved };
}

fn torture_sigalrm(dir: &Path, secs: f64) -> i32 {
    let data = dir.join("sig-data");
    let hpath = dir.join("sig-handler");
    std::fs::write(
        &data,
        (0..1 << 20)
            .map(|i| initial_byte(1, i))
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    std::fs::write(&hpath, vec![b'.'; 1 << 20]).unwrap();
    let fd = open_raw(&data, libc::O_RDWR).unwrap();
    let hfd = open_raw(&hpath, libc::O_RDWR).unwrap();
    let hread = open_raw(&hpath, libc::O_RDONLY).unwrap();
    SIG_FD.store(hfd.as_raw_fd() as u64, Ordering::Relaxed);
    let (r, w) = splicecow_test_harness::pipe().unwrap();
    let (qr, qw) = splicecow_test_harness::pipe().unwrap();
    // SAFETY: installing a plain handler (SA_RESTART) and a 100 µs interval timer.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_alarm as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
        let it = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 100,
            },
            it_value: libc::timeval {
                tv_sec: 0,
                tv_usec: 100,
            },
        };
        libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut());
    }
    let mut rng = Rng(7);
    let mut bad = 0;
    let mut rounds = 0;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        rounds += 1;
        // Keep the handler's file in flight too, so its writes conflict.
        let hpos = (SIG_WRITES.load(Ordering::Relaxed) as usize * 16) % (1 << 20);
        let hq = splice_range(hread.as_raw_fd(), hpos, qw.as_raw_fd(), 32768);
        let off = rng.below(1 << 19);
        let len = rng.range(1, 65536);
        let expected = pread_full(fd.as_raw_fd(), off, len);
        let moved = splice_range(fd.as_raw_fd(), off, w.as_raw_fd(), len);
        let mut junk = vec![0u8; rng.range(1, 8192)];
        rng.fill(&mut junk);
        let at = off + rng.below(len);
        let ret = pwrite_all(fd.as_raw_fd(), &junk, at);
        if ret != junk.len() as isize {
            eprintln!("pwrite returned {ret}, expected {}", junk.len());
            bad += 1;
        }
        let got = read_exact_fd(r.as_raw_fd(), moved);
        if got[..] != expected[..moved] {
            eprintln!("MISMATCH in round {rounds}: {moved} bytes spliced from {off}");
            bad += 1;
        }
        let _ = read_exact_fd(qr.as_raw_fd(), hq);
    }
    // SAFETY: disarm the timer.
    unsafe {
        let it: libc::itimerval = std::mem::zeroed();
        libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut());
    }
    let writes = SIG_WRITES.load(Ordering::Relaxed);
    let sig_bad = SIG_BAD.load(Ordering::Relaxed);
    // The handler's writes went to consecutive offsets from 0.
    let content = pread_full(hfd.as_raw_fd(), 0, writes as usize * 16);
    let layout_ok = content.chunks(16).all(|c| c == b"0123456789abcdef");
    println!("rounds {rounds} handler_writes {writes} handler_bad {sig_bad} bad {bad} layout_ok {layout_ok}");
    i32::from(bad > 0 || sig_bad > 0 || !layout_ok || writes == 0)
}

fn torture_main(t: Torture) -> ExitCode {
    let code = match t {
        Torture::Sigalrm { dir, secs } => torture_sigalrm(&dir, secs),
        Torture::Rounds {
            file,
            rounds,
            seed,
            pause_us,
        } => {
            let lockp = side_lock(&file);
            let bad = splice_mutate_rounds(&file, &lockp, rounds, seed, pause_us);
            println!("rounds {rounds} bad {bad}");
            i32::from(bad > 0)
        }
        Torture::Mutate { file, secs } => {
            let lk = open_raw(&side_lock(&file), libc::O_RDWR | libc::O_CREAT).unwrap();
            let fd = open_raw(&file, libc::O_RDWR).unwrap();
            let mut rng = Rng(99);
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                flock_fd(lk.as_raw_fd(), libc::LOCK_EX);
                let size = file_size(fd.as_raw_fd()).max(1);
                let mut junk = vec![0u8; rng.range(1, 8192)];
                rng.fill(&mut junk);
                let r = pwrite_all(fd.as_raw_fd(), &junk, rng.below(size));
                flock_fd(lk.as_raw_fd(), libc::LOCK_UN);
                if r != junk.len() as isize {
                    eprintln!("pwrite returned {r}");
                    return ExitCode::from(1);
                }
                n += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
            println!("mutations {n}");
            0
        }
        Torture::Fork { file, rounds } => {
            let lockp = side_lock(&file);
            // SAFETY: fork in a single-threaded process; the child only runs Rust code
            // that this process could run too, then exits.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                eprintln!("fork: {}", io::Error::last_os_error());
                return ExitCode::from(2);
            }
            let seed = if pid == 0 { 2 } else { 3 };
            let bad = splice_mutate_rounds(&file, &lockp, rounds, seed, 300);
            if pid == 0 {
                // SAFETY: leave the child without running the parent's exit handlers twice.
                unsafe { libc::_exit(i32::from(bad > 0)) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            let child_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            println!("parent_bad {bad} child_ok {child_ok}");
            i32::from(bad > 0 || !child_ok)
        }
        Torture::Threads {
            file,
            threads,
            rounds,
        } => {
            let lockp = side_lock(&file);
            let bad: usize = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|t| {
                        let (file, lockp) = (&file, &lockp);
                        s.spawn(move || {
                            splice_mutate_rounds(file, lockp, rounds, 100 + t as u64, 200)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap_or(1)).sum()
            });
            println!("threads {threads} rounds {rounds} bad {bad}");
            i32::from(bad > 0)
        }
        Torture::Spawn { file, domain } => torture_spawn(&file, &domain),
        Torture::Child { file, domain } => {
            let env_domain = std::env::var("SPLICECOW_DOMAIN").unwrap_or_default();
            let preload = std::env::var("LD_PRELOAD").unwrap_or_default();
            let f = open_raw(&file, libc::O_RDONLY).unwrap();
            let (_r, w) = splicecow_test_harness::pipe().unwrap();
            let moved = splice_range(f.as_raw_fd(), 0, w.as_raw_fd(), 4096);
            println!("domain {env_domain} preload {preload} moved {moved}");
            i32::from(env_domain != domain || !preload.contains("libsplicecow") || moved != 4096)
        }
    };
    ExitCode::from(code as u8)
}

/// The lock file the torture cases use for `file`.
fn side_lock(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn torture_spawn(file: &Path, domain: &str) -> i32 {
    let exe = std::env::current_exe().unwrap();
    let args: Vec<CString> = [
        exe.as_os_str().as_bytes(),
        b"torture",
        b"child",
        b"--file",
        file.as_os_str().as_bytes(),
        b"--domain",
        domain.as_bytes(),
    ]
    .iter()
    .map(|a| CString::new(*a).unwrap())
    .collect();
    let mut argv: Vec<*mut libc::c_char> = args.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv.push(std::ptr::null_mut());
    extern "C" {
        static environ: *const *mut libc::c_char;
    }
    let pid = {
        let mut pid: libc::pid_t = 0;
        // SAFETY: argv and environ are NUL-terminated arrays of C strings.
        let r = unsafe {
            libc::posix_spawn(
                &mut pid,
                argv[0],
                std::ptr::null(),
                std::ptr::null(),
                argv.as_ptr(),
                environ,
            )
        };
        if r != 0 {
            eprintln!("posix_spawn: {}", io::Error::from_raw_os_error(r));
            return 2;
        }
        pid
    };
    if pid < 0 {
        eprintln!("posix_spawn: {}", io::Error::last_os_error());
        return 2;
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    i32::from(!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(exp: Vec<u8>, recs: &[(u64, u64)]) -> Expect {
        Expect {
            base: 0,
            firm: exp.len(),
            exp,
            open: None,
            recs: recs.iter().map(|&(s, k)| (s, k, 0, 0)).collect(),
            cursor: 0,
            floor: 0,
        }
    }

    #[test]
    fn search_helpers() {
        assert_eq!(occurrences(b"aa", b"aaab"), vec![0, 1]);
        assert_eq!(z_function(&[1, 1, 2, 1, 1]), vec![0, 1, 0, 2, 1]);
    }

    /// The lost bytes begin with the same bytes as the record the stream resumes at:
    /// the first differing byte lies inside the gap.
    #[test]
    fn loss_whose_start_matches_the_resumed_record() {
        let mut exp = Vec::new();
        exp.extend((0..5000u32).map(|i| (i * 7 % 251) as u8 | 1)); // record 0 (kills 0)
        exp.extend([0u8; 300]); // record 1 (kills 0), lost
        exp.extend((0..200u32).map(|i| (i % 13) as u8 | 1)); // record 1 continued
        let resume = exp.len() as u64;
        exp.extend([0u8; 100]); // record 2 (kills 1) starts with zeros
        exp.extend((0..8000u32).map(|i| (i * 3 % 241) as u8 | 1));
        let e = expect(exp.clone(), &[(0, 0), (5000, 0), (resume, 1)]);
        // Received: record 0, then record 2 (its 100 zeros pass as record 1's).
        let at = 5100u64;
        let rest = &exp[(resume + 100) as usize..];
        match e.find_loss(at, rest, 1) {
            Loss::Gap(d, from) => assert_eq!((d, from), (500, 5000)),
            _ => panic!("not recognised as a loss"),
        }
        // No kill after the lost bytes were spliced: a mismatch.
        assert!(matches!(e.find_loss(at, rest, 0), Loss::No));
    }

    /// A run of equal bytes longer than the gap: the stream resumes at a record that
    /// starts before the first differing byte.
    #[test]
    fn loss_inside_a_long_run_of_zeros() {
        let mut exp: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8 | 1).collect();
        exp.extend([0u8; 1000]); // record 1 [5000, 5400) (kills 0, lost), record 2 (kills 1)
        exp.extend((0..8000u32).map(|i| (i * 3 % 241) as u8 | 1));
        let e = expect(exp.clone(), &[(0, 0), (5000, 0), (5400, 1)]);
        let at = 5600u64;
        let rest = &exp[6000..];
        match e.find_loss(at, rest, 1) {
            Loss::Gap(d, from) => assert_eq!((d, from), (400, 5000)),
            _ => panic!("not recognised as a loss"),
        }
    }
}
