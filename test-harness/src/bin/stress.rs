//! `stress`: an fsx-style, model-checked random exerciser for splicecow, with fault
//! injection.
//!
//! # Layout
//!
//! The parent (`stress [OPTIONS]`, never preloaded itself) creates a run directory under
//! `/var/tmp` holding `--files` shared data files (`f<k>`, a known pattern), after them
//! the relay worker's file and the quiet victim's files (one per pause point), a *model*
//! of each (`m<k>`: the content the file must have), one lock file per data file
//! (`l<k>`), a side file (source of `copy_file_range`) and a *status page* (`status`, a
//! small shared-memory table of atomic words: stop flag, kill counters, channel
//! generations, counters and one progress slot per worker thread). It then re-executes
//! itself as `stress worker ...` with the shim preloaded, in three fresh domains: the
//! *main* domain, where everything below happens unless said otherwise, the *relay*
//! domain and the *quiet* domain.
//!
//! - **producers** (the first with 2 threads): each thread owns two *channels* (FIFOs or
//!   anonymous pipes) and a private staging pipe. Under the data file's `flock` it reads
//!   the bytes it is about to move (`pread`: the file's content at that moment, which no
//!   one can change while the lock is held), appends an INTENT record with those exact
//!   bytes to the channel's log, moves them (`splice` with/without offset, `sendfile`,
//!   `splice` into the staging pipe then `tee` + pipe→pipe `splice`, or a `write`/`writev`
//!   header), and appends a DONE record with the count the call returned. It also
//!   mutates files and, now and then, starts a child (below).
//! - **consumers** (threads, one channel each): read the channel (`read`, or `splice` into
//!   a private sink file) and compare every byte with the records of the channel's log.
//! - **mutators** (the first with 2 threads): under the file lock, apply a random
//!   mutation (pwrite, write, pwritev, punch hole, zero range, collapse/insert range,
//!   ftruncate down and back up, truncate by path, open `O_TRUNC` + rewrite, a store
//!   through a `MAP_SHARED` mapping, `copy_file_range`) to the data file and the same
//!   change, by plain `pread`/`pwrite`/`ftruncate`, to its model; the model is compared
//!   with the file regularly and at every splice. They start children too.
//! - **children** ([`spawn_child`], about 1 % of a producer's or mutator's operations,
//!   interleaved with the thread's own splices and mutations), the way CPython's
//!   `subprocess` and shells start them: `vfork` whose child `dup2`s, `close`s and
//!   `execve`s `/bin/true`; `vfork` whose child `write`s into an error pipe and `_exit`s;
//!   `vfork` whose `execve` fails and which reports the errno through the pipe;
//!   `vfork` whose child `pwrite`s into a data file (a modelled mutation, made on the
//!   parent's memory) before `execve`; `clone(CLONE_VM | CLONE_VFORK)` + `execve`;
//!   `posix_spawn` with file actions. The child's exit status and error-pipe bytes are
//!   checked. A child runs on its parent thread's memory, thread-local storage included:
//!   if it leaves the thread's shim state wrong (an "inside the shim" flag set by an
//!   `execve` hook that never returned), the thread's later hooks call straight through,
//!   and its next splices and mutations make the consumers or the model see changed
//!   bytes.
//! - **relay** (one worker in the relay domain, [`relay_main`]): a feeder thread and two
//!   relay threads, one forwarding with a blocking pipe→pipe `splice`, one with a
//!   blocking `tee` plus a `read` that drains the source. Each round ([`relay_round`])
//!   first rewrites the domain's only file (`O_TRUNC`), which leaves nothing live in the
//!   domain, starts the relay's call on an empty source pipe and waits until the relay
//!   thread sleeps in it, only then splices a range of the file into the source (logged
//!   like any producer's transfer), and once the bytes are past the relay overwrites part
//!   of that range. The relay forwards straight into a channel, or into a private pipe
//!   whose bytes the feeder splices into the channel only after the overwrite (so the
//!   consumer cannot read them first). The channel's consumer verifies the relayed bytes
//!   like any others. The relay domain has a domain of its own because the main one is
//!   never idle: a relay there never starts its call with nothing live.
//! - **victim** (only with `--faults`; a producer of the main domain with a test pause,
//!   [`ProducerStyle::victim`]): its incarnations take the points of
//!   `SPLICECOW_TEST_PAUSE=POINT:US` in turn (`record`, `commit`, `retire`, `holder`:
//!   inside a registry update; `settle`: between drain and refill), each pausing with the
//!   registry lock held. Every transfer goes through the other of two descriptors of its
//!   channel (a new holder each time), a quarter start at the end of the file (the intent
//!   is dropped at commit), and 30 % of its operations are mutations (settles).
//! - **quiet victim** (only with `--faults`; alone in the quiet domain,
//!   [`quiet_victim_main`]): pauses at the same points in turn, in calls built to reach
//!   them ([`torn_update_attempt`]), and each incarnation starts by checking, for each of
//!   its files, that a later process of the domain is still protected
//!   ([`protection_check`]: splice, retire what the killed incarnations left recorded,
//!   overwrite, read back). In the main domain a count torn one too low cannot show:
//!   other segments are always live there, so it never reaches zero.
//!
//! So the contract is checked exactly: each byte a consumer reads must be the byte the
//! file held when the producer's splice returned, although mutations run right after it.
//!
//! # Faults
//!
//! With `--faults` the parent SIGKILLs random workers of `--kill-roles` (`--kill-rate`
//! per second) and restarts them. A worker's death ends the *generation* of each of its
//! channels: the surviving side finishes it (a consumer verifies everything delivered up
//! to EOF) and both sides move on to a fresh FIFO. The kills of both victims are aimed:
//! the parent waits until the victim's slot shows it inside an operation, stops it and
//! reads `/proc/<pid>/task/*/syscall`: the shim's pause is the only `SYS_nanosleep` in
//! the process (Rust and glibc use `clock_nanosleep`), and the requested time, read from
//! `/proc/<pid>/mem`, tells it from the shim's short waits for the lock. Such a kill
//! leaves the registry lock held, in the middle of an update or a settle, and is counted
//! per pause point; a probe process then measures how long the next registry operation
//! of the main domain takes (lock takeover). Later operations must stay protected: the
//! consumers, the model and the quiet victim's checks go on.
//!
//! The settle journal leaves a documented window: a settler killed after a `read` of the
//! drain returned but before it stored the count loses those bytes, one killed after a
//! write-back `write` returned but before it stored its progress has that chunk written
//! twice by whoever finishes the settle (a SIGKILL that arrives during the system call
//! takes effect right after it, so the window is as long as the call). Consumers
//! recognise both: the stream continues correctly after a gap (or ends early), or after
//! repeating up to 1 MiB it had delivered already, and a process that mutates files of
//! the channel's domain was killed after those bytes were spliced (each domain with
//! channels has its own kill counter). They are counted as *settle-window losses* and
//! *repeats*, never as mismatches; anything else is a mismatch. Bytes a relay held when
//! it was killed are never confirmed in the log (the feeder logs DONE once they are in
//! the channel), so they are no loss either.
//!
//! # Watchdog
//!
//! Every thread publishes the operation it is in; a thread inside one operation, or a
//! run without any progress, for `--hang-secs` is a hang: the parent prints each
//! worker's last operation, `/proc/<pid>/task/*/{wchan,syscall,stack}` and the
//! registries' counters, kills everything and fails.
//!
//! # Not exercised here
//!
//! Readers and relays outside the shim (every consumer and relay is a shimmed worker),
//! stdio and `FICLONE` mutations, `MAP_PRIVATE` snapshots (`--private-snapshots`),
//! detect and copy modes, and pipes grown beyond 1 MiB (settled without the journal):
//! the scenario, fidelity, snapshot and CLI tests cover those. What splicecow does not
//! protect at all (sockets, io_uring, raw system calls) is out of scope.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
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
        default_value = "producer,consumer,mutator,victim,relay,quiet-victim"
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
    /// The victim's test pause (`SPLICECOW_TEST_PAUSE=POINT:US`), in microseconds.
    #[arg(long, alias = "settle-pause-us", default_value_t = 2000)]
    pause_us: u64,
    /// The pause points each victim's incarnations take in turn.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = PAUSE_POINTS,
        default_value = "record,commit,retire,holder,settle"
    )]
    pause_points: Vec<String>,
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
    /// No child processes from producers and mutators (vfork, clone, posix_spawn).
    #[arg(long)]
    no_spawns: bool,
    /// No relay worker (blocking pipe->pipe splice and tee in a domain of their own).
    #[arg(long)]
    no_relays: bool,
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
    #[arg(long)]
    no_spawns: bool,
    #[arg(long, default_value = "mixed")]
    pipes: String,
    /// The data files this worker splices from and mutates: `first..first + count`.
    #[arg(long)]
    own_first: usize,
    #[arg(long)]
    own_count: usize,
    /// A victim's test pause point (see `SPLICECOW_TEST_PAUSE`).
    #[arg(long)]
    pause_point: Option<String>,
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
/// Word: SIGKILLs the parent sent (or is about to send) to processes that mutate files
/// of the main domain.
const W_KILLS: usize = 1;
/// Word: the same for the relay domain (only its own processes settle its pipes).
const W_KILLS_RELAY: usize = 2;
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
/// Words: per channel, non-zero when its bytes pass through a relay (set by the parent).
const W_RELAYED: usize = W_OFFER + MAX_CHANS * OFFER_WORDS;
const PAGE_WORDS: usize = W_RELAYED + MAX_CHANS;

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
/// Children started, by [`SpawnKind`] (`C_SPAWNS + kind`).
const C_SPAWNS: usize = 18;
/// Mismatches on channels whose bytes pass through a relay (also in `C_MISMATCHES`).
const C_RELAY_MISMATCHES: usize = 24;
/// Relay rounds by [`RelayKind`] (`C_RELAY_ROUNDS + kind`).
const C_RELAY_ROUNDS: usize = 25;
/// Relay rounds whose relay forwarded into a private pipe first (see [`relay_round`]).
const C_RELAY_BUFFERED: usize = 27;
/// Relay rounds whose relay was seen asleep in its call before the producer's splice.
const C_RELAY_WAITED: usize = 28;
const C_RELAY_BYTES: usize = 29;
const C_RELAY_VERIFIED: usize = 30;
/// Protection checks by quiet-victim incarnations (see [`protection_check`]).
const C_QUIET_CHECKS: usize = 31;
/// Of those: checks whose pipe showed a later change (also in `C_MISMATCHES`).
const C_QUIET_CHECK_FAILURES: usize = 32;
/// Settle-window repeats (see [`Expect::find_repeat`]) and their bytes.
const C_REPEATS: usize = 33;
const C_REPEAT_BYTES: usize = 34;
const _: () = assert!(
    W_CNT + C_REPEAT_BYTES < W_SLOTS,
    "counters overlap the slots"
);

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
    Spawn,
    RelaySplice,
    RelayTee,
    RelayForward,
}

const OP_NAMES: [&str; 29] = [
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
    "spawn-child",
    "relay splice(pipe->pipe)",
    "relay tee+drain",
    "splice(relay buffer->channel)",
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

impl<'a> Slot<'a> {
    /// Takes slot `idx` for the calling thread.
    fn claim(st: &'a Status, idx: usize) -> Slot<'a> {
        st.slot(idx, S_PID)
            .store(std::process::id() as u64, Ordering::Relaxed);
        st.slot(idx, S_TID).store(gettid(), Ordering::Relaxed);
        st.slot(idx, S_OP_START).store(0, Ordering::Relaxed);
        Slot { st, idx }
    }
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
/// Data files after the `--files` shared ones: the relay worker's, then the quiet
/// victim's, one per pause point (each of the two is alone in a domain of its own).
const EXTRA_FILES: usize = 1 + PAUSE_POINTS.len();
fn relay_file(files: usize) -> usize {
    files
}
fn first_quiet_file(files: usize) -> usize {
    files + 1
}

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
    /// The data files this thread splices from and mutates.
    own: std::ops::Range<usize>,
    /// Percent of transfers that start at the end of the file (they move nothing).
    end_of_file_percent: usize,
    /// The kill counter of the domain whose pipes this thread writes or reads
    /// (`W_KILLS` or `W_KILLS_RELAY`).
    kills_word: usize,
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
        Ok(Ctx {
            st,
            slot: Slot::claim(st, slot),
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
            own: 0..files,
            end_of_file_percent: 3,
            kills_word: W_KILLS,
        })
    }

    /// Kills so far of processes that mutate files of this thread's domain.
    fn kills(&self) -> u64 {
        self.st.get(self.kills_word)
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

    /// A file this thread splices from and mutates (one of `own`).
    fn pick_file(&mut self) -> usize {
        self.own.start + self.rng.below(self.own.len())
    }

    /// Runs `change` (given the file's fd and size) on file `k` under the file's lock,
    /// with the file marked dirty until the model has followed; counts one mutation.
    fn mutation(&mut self, k: usize, change: impl FnOnce(&mut Self, RawFd, usize)) {
        let _lock = self.lock(k);
        let fd = self.data[k].as_raw_fd();
        let size = file_size(fd);
        let st = self.st;
        let dirty = st.w(W_DIRTY + k);
        dirty.store(self.slot.idx as u64 + 1, Ordering::SeqCst);
        change(self, fd, size);
        dirty.store(0, Ordering::SeqCst);
        self.slot.end();
        st.add(C_MUT_OPS, 1);
        if self.rng.chance(3) {
            self.check_whole(k);
        }
    }

    /// One random mutation of a random file, mirrored into the model.
    fn mutate(&mut self) {
        let k = self.pick_file();
        self.mutation(k, |c, fd, size| c.random_change(k, fd, size));
    }

    /// `pwrite` of `len` random bytes at `off` into file `k` (lock held), and the same
    /// into the model.
    fn pwrite_random(&mut self, k: usize, fd: RawFd, size: usize, off: usize, len: usize) {
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

    /// `open(O_TRUNC)` of file `k` (lock held), then `len` bytes of fresh content written
    /// in chunks; the model follows.
    fn rewrite_truncated(&mut self, k: usize, len: usize) {
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
                    let r =
                        unsafe { libc::write(w.as_raw_fd(), content.as_ptr().add(done).cast(), n) };
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

    /// One random change of file `k` (lock held, `size` bytes long), mirrored into the
    /// model.
    fn random_change(&mut self, k: usize, fd: RawFd, size: usize) {
        let max = self.max_size;
        let pick = self.rng.below(100);
        let off = self.rng.below(size + 1);
        let small = self.rng.range(1, 16384);
        match pick {
            0..=14 => {
                let len = small.min(max.saturating_sub(off)).max(1);
                self.pwrite_random(k, fd, size, off, len);
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
                    libc::iovec {
                        iov_base: buf[cut..].as_mut_ptr().cast(),
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
                self.rewrite_truncated(k, len);
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
    /// The pause victim's second descriptor of the same pipe (see [`Chan::alternate`]).
    alias: Option<OwnedFd>,
    log: Option<File>,
    seq: u64,
    /// Meta word of the next INTENT.
    meta: u32,
}

impl Chan {
    fn new(id: usize) -> Chan {
        Chan {
            id,
            gen: None,
            fd: None,
            alias: None,
            log: None,
            seq: 0,
            meta: 0,
        }
    }
    fn close(&mut self) {
        self.fd = None;
        self.alias = None;
        self.log = None;
    }
    /// Swaps the descriptor transfers use with its duplicate (made on first use): the
    /// pipe's holder then changes at every transfer, so each one rewrites the registry's
    /// holder list.
    fn alternate(&mut self) {
        let Some(fd) = self.fd.as_mut() else {
            return;
        };
        if self.alias.is_none() {
            self.alias = fd.try_clone().ok();
        }
        if let Some(alias) = self.alias.as_mut() {
            std::mem::swap(fd, alias);
        }
    }
    fn raw(&self) -> RawFd {
        self.fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1)
    }
    fn free(&self) -> usize {
        let fd = self.raw();
        pipe_capacity(fd).saturating_sub(fionread(fd))
    }
    /// Logs the DONE record of the open INTENT: `n` of its bytes are in the pipe.
    fn confirm(&mut self, ctx: &Ctx, n: usize) {
        self.log(REC_DONE, n as u64, &[]);
        self.seq += 1;
        ctx.st.add(C_BYTES_SENT, n as u64);
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
    ch.confirm(ctx, n);
    check_transfer(ctx, ch, what, r, e, max)
}

/// Checks the result `r` (with `errno` `e`) of a call that put bytes toward channel `ch`:
/// an error is counted (`EPIPE`, its consumer died, closes the channel), and so is a
/// count above `max`. Returns the count.
fn check_transfer(ctx: &mut Ctx, ch: &mut Chan, what: &str, r: isize, e: i32, max: usize) -> usize {
    let n = r.max(0) as usize;
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
    n
}

/// How a producer thread behaves.
#[derive(Debug, Clone, Copy)]
struct ProducerStyle {
    /// `write`/`writev` headers between the transfers.
    headers: bool,
    /// Children started now and then (see [`spawn_child`]).
    spawns: bool,
    /// The pause victim: every transfer goes through the other of two descriptors of its
    /// channel (so it rewrites the pipe's holder list), a quarter of them start at the end
    /// of the file (so the intent is dropped at commit), more of its operations are
    /// mutations (settles), and it rests between operations (each pause holds the
    /// registry lock for everyone).
    victim: bool,
}

fn producer_thread(ctx: &mut Ctx, chans: [usize; 2], style: ProducerStyle) {
    let mut chans = chans.map(Chan::new);
    let (s_r, s_w) = splicecow_test_harness::pipe().expect("staging pipe");
    let (s_r, s_w) = (s_r.as_raw_fd(), s_w.as_raw_fd());
    let mut spawner = style.spawns.then(Spawner::new).flatten();
    let mutate_percent = if style.victim {
        ctx.end_of_file_percent = 25;
        30
    } else {
        12
    };
    while !ctx.st.stopping() {
        for ch in chans.iter_mut() {
            if ch.fd.is_none() {
                ctx.slot.begin(Op::OpenFifo);
                producer_open(ctx, ch);
                ctx.slot.end();
            }
        }
        if style.victim {
            // A rest outside the shim (thread::sleep is clock_nanosleep, not the
            // SYS_nanosleep of the shim's pauses).
            std::thread::sleep(Duration::from_micros(ctx.rng.range(2000, 6000) as u64));
            chans.iter_mut().for_each(Chan::alternate);
        }
        let open: Vec<usize> = (0..2).filter(|&i| chans[i].fd.is_some()).collect();
        let pick = ctx.rng.below(100);
        if pick < mutate_percent {
            ctx.mutate();
            continue;
        }
        if let Some(sp) = spawner.as_mut().filter(|_| pick == mutate_percent) {
            spawn_child(ctx, sp);
            continue;
        }
        if open.is_empty() {
            ctx.slot.heartbeat();
            sleep_ms(2);
            continue;
        }
        let ci = open[ctx.rng.below(open.len())];
        if pick < 20 && style.headers {
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
    ch.log(REC_INTENT, ctx.kills(), bytes);
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
            libc::iovec {
                iov_base: bytes[cut..].as_ptr() as *mut _,
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
    let k = ctx.pick_file();
    let lock = ctx.lock(k);
    let fd = ctx.data[k].as_raw_fd();
    let size = file_size(fd);
    let off = if ctx.rng.chance(ctx.end_of_file_percent) {
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
    ch.log(REC_INTENT, ctx.kills(), &expected);
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
        let pos = if how.is_multiple_of(2) {
            o as i64
        } else {
            // SAFETY: lseek on our fd.
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
        b.log(REC_INTENT, ctx.kills(), staged);
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
        a.log(REC_INTENT, ctx.kills(), &staged[moved..]);
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

    /// Explains the bytes `rest` received at stream position `at` (where they differ from
    /// the expected stream) as a settle-window repeat: a settler killed between writing a
    /// chunk back and storing its progress leaves the chunk to be written again by whoever
    /// finishes the settle, so the stream repeats `d` bytes, then goes on. `rest` must be
    /// the expected stream at `at - d` (`d <= MAX_GAP`; the repeat may have begun before
    /// `at`, where the repeated bytes happened to equal the expected ones), and a process
    /// that mutates files must have been killed after the repeated bytes were spliced.
    fn find_repeat(&self, at: u64, rest: &[u8], kills_now: u64) -> Loss {
        let i = self.idx(at);
        let lo = i
            .saturating_sub(MAX_GAP)
            .max(self.idx(self.floor.max(self.base)));
        let end = (i + rest.len()).saturating_sub(1).min(self.exp.len());
        if rest.is_empty() || lo + rest.len() > end {
            return Loss::No;
        }
        // The latest start first: the shortest repeat.
        let mut found = occurrences(rest, &self.exp[lo..end])
            .into_iter()
            .rev()
            .map(|q| self.base + (lo + q) as u64)
            .filter(|&from| kills_now > self.kills_at(from));
        match (found.next(), found.next()) {
            (None, _) => Loss::No,
            (Some(from), None) => Loss::Gap(at - from, from),
            (Some(from), Some(_)) => Loss::Ambiguous(at - from, from),
        }
    }

    /// Drops what was verified, but for the last `2 * MAX_GAP` bytes (where a loss or a
    /// repeat found later may have begun).
    fn compact(&mut self) {
        let done = self
            .idx(self.cursor)
            .min(self.firm)
            .saturating_sub(2 * MAX_GAP);
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

/// What [`Expect::find_loss`] or [`Expect::find_repeat`] makes of a difference.
enum Loss {
    /// No settle-window loss (or repeat) explains it.
    No,
    /// A loss (or repeat) of `.0` bytes from stream position `.1` on.
    Gap(u64, u64),
    /// Losses (or repeats) of different lengths explain it (periodic or zero bytes): more
    /// bytes tell; the shortest is the one given.
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
    /// The channel's bytes pass through a relay.
    relayed: bool,
}

impl Consumer<'_, '_> {
    fn verified(&self, n: usize) {
        self.ctx.st.add(C_BYTES_VERIFIED, n as u64);
        if self.relayed {
            self.ctx.st.add(C_RELAY_VERIFIED, n as u64);
        }
    }

    /// Counts and reports a mismatch (`msg` says where).
    fn mismatch_found(&mut self, msg: impl FnOnce() -> String) {
        let relayed = self.relayed;
        if relayed {
            self.ctx.st.add(C_RELAY_MISMATCHES, 1);
        }
        self.ctx.fail(C_MISMATCHES, || {
            let msg = msg();
            if relayed {
                format!("{msg} (relay channel)")
            } else {
                msg
            }
        });
    }

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
                self.mismatch_found(|| format!("channel {c} gen {g}: bad log: {e}"));
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
                // More bytes than were sent: the end of the stream may repeat.
                let repeat = self
                    .e
                    .find_repeat(self.e.cursor, &got[j..], self.ctx.kills());
                if self.take_repeat(repeat) {
                    continue;
                }
                let (c, g, at, n) = (self.chan, self.gen, self.e.cursor, got.len() - j);
                self.ctx.st.add(C_MISMATCH_BYTES, n as u64);
                self.mismatch_found(|| {
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
                    self.verified(n);
                }
                Some(d) => {
                    self.e.cursor += d as u64;
                    j += d;
                    self.verified(d);
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
        let kills_now = self.ctx.kills();
        let at = self.e.cursor;
        let loss = self.e.find_loss(at, rest, kills_now);
        let judge_now = eof || rest.len() >= 2 * MAX_GAP;
        if matches!(loss, Loss::Ambiguous(..)) && !judge_now {
            return None; // judge with more bytes
        }
        if matches!(loss, Loss::No) {
            let repeat = self.e.find_repeat(at, rest, kills_now);
            if matches!(repeat, Loss::Ambiguous(..)) && !judge_now {
                return None; // judge with more bytes
            }
            if self.take_repeat(repeat) {
                return Some(j);
            }
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
        self.mismatch_found(|| {
            format!(
                "MISMATCH channel {c} gen {g} at stream position {at}: {bad} of {} bytes differ; expected {want:02x?}, got {have:02x?}; kills so far {kills_now}; {detail}",
                rest.len()
            )
        });
        self.e.cursor += rest.len() as u64;
        Some(got.len())
    }

    /// When [`Expect::find_repeat`] found a settle-window repeat at the cursor (`repeat`),
    /// counts it and moves the cursor back to where the repeated bytes began: they are
    /// verified again.
    fn take_repeat(&mut self, repeat: Loss) -> bool {
        let at = self.e.cursor;
        let (Loss::Gap(len, from) | Loss::Ambiguous(len, from)) = repeat else {
            return false;
        };
        self.ctx.st.add(C_REPEATS, 1);
        self.ctx.st.add(C_REPEAT_BYTES, len);
        let (c, g) = (self.chan, self.gen);
        eprintln!(
            "stress: settle-window repeat on channel {c} gen {g}: {len} bytes from stream position {from} again at {at}"
        );
        self.e.cursor = from;
        self.e.floor = from;
        true
    }

    /// End of stream: everything confirmed must have arrived.
    fn at_eof(&mut self) {
        let _ = self.refresh();
        let firm = self.e.base + self.e.firm as u64;
        if self.e.cursor < firm {
            let missing = firm - self.e.cursor;
            let (c, g, at) = (self.chan, self.gen, self.e.cursor);
            if self.ctx.kills() > self.e.kills_at(at) && missing as usize <= MAX_GAP {
                self.ctx.st.add(C_LOSSES, 1);
                self.ctx.st.add(C_LOSS_BYTES, missing);
                eprintln!("stress: settle-window loss on channel {c} gen {g}: last {missing} bytes missing at EOF");
            } else {
                self.ctx.st.add(C_MISMATCH_BYTES, missing);
                self.mismatch_found(|| {
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
        let relayed = ctx.st.get(W_RELAYED + chan) != 0;
        ctx.kills_word = if relayed { W_KILLS_RELAY } else { W_KILLS };
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
            relayed,
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
// Worker: children, started the way CPython's subprocess, shells and others start them
// ---------------------------------------------------------------------------------------

/// How [`spawn_child`] starts a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpawnKind {
    /// `vfork`; the child `dup2`s, `close`s and `execve`s a short program (CPython's
    /// `_posixsubprocess`).
    VforkExec,
    /// `vfork`; the child `dup2`s, `close`s, `write`s a note into the error pipe and
    /// `_exit`s without exec.
    VforkExit,
    /// `vfork`; the child's `execve` of a missing program fails, so it writes the errno
    /// into the error pipe and `_exit`s (how CPython reports a failed exec).
    VforkExecFails,
    /// `vfork`; the child `pwrite`s into a data file (the parent holds the file's lock and
    /// models the change), then `execve`s.
    VforkPwriteExec,
    /// `clone(CLONE_VM | CLONE_VFORK)` with a stack of its own, then as `VforkExec`.
    CloneVforkExec,
    /// `posix_spawn` with `dup2`/`close` file actions.
    PosixSpawn,
}

/// Every kind with its weight (percent) and its name in the report.
const SPAWN_KINDS: [(SpawnKind, usize, &str); 6] = [
    (SpawnKind::VforkExec, 30, "vfork_exec"),
    (SpawnKind::VforkExit, 15, "vfork_exit"),
    (SpawnKind::VforkExecFails, 15, "vfork_exec_fails"),
    (SpawnKind::VforkPwriteExec, 15, "vfork_pwrite_exec"),
    (SpawnKind::CloneVforkExec, 10, "clone_vm_vfork_exec"),
    (SpawnKind::PosixSpawn, 15, "posix_spawn"),
];

/// What a `VforkExit` child writes into the error pipe.
const CHILD_NOTE: &[u8] = b"vfork child done";

extern "C" {
    static environ: *const *mut libc::c_char;
    fn vfork() -> libc::pid_t;
}

/// What a `vfork`-like child does, prepared by the parent: the child runs on the parent's
/// memory and must not allocate, so everything it needs is ready before it starts.
struct ChildPlan {
    /// Becomes the child's stdout.
    stdout: RawFd,
    /// Closed in the child (the parent's end of the error pipe).
    close: RawFd,
    /// The error pipe's write end (close-on-exec).
    err: RawFd,
    /// `execve(path, argv, envp)`; a null `path`: `_exit` without exec.
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// First a `pwrite` of `change_len` bytes at `change` to `change_at` of `change_fd`
    /// (-1: none).
    change_fd: RawFd,
    change: *const u8,
    change_len: usize,
    change_at: libc::off_t,
}

/// The body of a `vfork` or `clone(CLONE_VM)` child; never returns.
///
/// # Safety
/// `plan` points to a plan whose pointers are valid until the child exec'd or exited
/// (the parent is suspended until then).
unsafe extern "C" fn child_main(plan: *const ChildPlan) -> ! {
    // SAFETY: see the function's contract.
    let p = unsafe { &*plan };
    // SAFETY: plain system calls on the plan's descriptors and buffers; nothing here
    // allocates or touches a lock the parent might hold.
    unsafe {
        libc::dup2(p.stdout, 1);
        libc::close(p.close);
        if p.change_fd >= 0
            && libc::pwrite(p.change_fd, p.change.cast(), p.change_len, p.change_at)
                != p.change_len as isize
        {
            libc::_exit(3);
        }
        if p.path.is_null() {
            libc::write(p.err, CHILD_NOTE.as_ptr().cast(), CHILD_NOTE.len());
            libc::_exit(0);
        }
        libc::execve(p.path, p.argv, p.envp);
        let e = (*libc::__errno_location()).to_le_bytes();
        let report = [b'E', e[0], e[1], e[2], e[3]];
        libc::write(p.err, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// `vfork()`, then [`child_main`]`(plan)` in the child; in the parent, once the child
/// exec'd or exited, the child's pid (or -1).
///
/// Assembly, because `vfork` returns twice on one stack: the child must write nothing at
/// or above the caller's stack pointer, which compiled code might (it cannot know that
/// the call returns twice). Here the plan waits in `rbx`, which the system call keeps,
/// and the child only calls `child_main`, whose frame lies below.
///
/// # Safety
/// As for [`child_main`].
#[unsafe(naked)]
unsafe extern "C" fn vfork_then_child(plan: *const ChildPlan) -> libc::pid_t {
    core::arch::naked_asm!(
        // Entry: rsp = 8 (mod 16); the push aligns it for the calls below.
        "push rbx",
        "mov rbx, rdi",
        "call {vfork}",
        "test eax, eax",
        "jnz 2f",
        "mov rdi, rbx",
        "call {child}",
        "ud2",
        "2:",
        "pop rbx",
        "ret",
        vfork = sym vfork,
        child = sym child_main,
    )
}

/// `clone`'s entry for a `CloneVforkExec` child.
extern "C" fn clone_child(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `spawn_child` passes a plan that outlives the child's use of it.
    unsafe { child_main(plan.cast()) }
}

/// A thread's means to start children (made once per thread).
struct Spawner {
    devnull: OwnedFd,
    /// The short program the children exec.
    program: CString,
    /// A program that does not exist.
    missing: CString,
    /// The stack of `clone(CLONE_VM)` children (zero pages until used).
    clone_stack: Vec<u8>,
}

impl Spawner {
    /// `None` when there is no `true` program to exec.
    fn new() -> Option<Spawner> {
        let program = ["/bin/true", "/usr/bin/true"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        Some(Spawner {
            devnull: open_raw(Path::new("/dev/null"), libc::O_WRONLY).ok()?,
            program: CString::new(program).ok()?,
            missing: CString::new("/nonexistent/splicecow-stress-child").ok()?,
            clone_stack: vec![0u8; 1 << 20],
        })
    }

    /// Starts a child of `kind` as `plan` says; its pid, or -1 (errno set).
    fn start(&mut self, kind: SpawnKind, plan: &ChildPlan) -> libc::pid_t {
        match kind {
            SpawnKind::CloneVforkExec => {
                let top = self.clone_stack.as_mut_ptr_range().end as usize & !15;
                // SAFETY: the child runs on its own stack (ours, 1 MiB, 16-aligned top)
                // and this thread waits until it exec'd; the plan outlives that.
                unsafe {
                    libc::clone(
                        clone_child,
                        top as *mut libc::c_void,
                        libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                        plan as *const ChildPlan as *mut libc::c_void,
                    )
                }
            }
            SpawnKind::PosixSpawn => {
                let mut pid = 0;
                // SAFETY: file actions built and destroyed here; argv and envp are the
                // plan's NUL-terminated arrays.
                let r = unsafe {
                    let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
                    libc::posix_spawn_file_actions_init(&mut fa);
                    libc::posix_spawn_file_actions_adddup2(&mut fa, plan.stdout, 1);
                    libc::posix_spawn_file_actions_addclose(&mut fa, plan.close);
                    let r = libc::posix_spawn(
                        &mut pid,
                        plan.path,
                        &fa,
                        std::ptr::null(),
                        plan.argv as *const *mut libc::c_char,
                        plan.envp as *const *mut libc::c_char,
                    );
                    libc::posix_spawn_file_actions_destroy(&mut fa);
                    r
                };
                if r != 0 {
                    // SAFETY: errno of this thread.
                    unsafe { *libc::__errno_location() = r };
                    return -1;
                }
                pid
            }
            // SAFETY: the plan stays valid until the child exec'd or exited, which is
            // when vfork returns here.
            _ => unsafe { vfork_then_child(plan) },
        }
    }
}

/// Waits for child `pid`; its exit code, or 128 + the signal that killed it.
fn reap_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child; EINTR retried.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if errno() != libc::EINTR {
            return -1;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// Starts one child of a random kind (the thread's own splices and mutations go on
/// around it) and checks how it ended: exit status and what it wrote into its error
/// pipe. A thread whose shim state the child left wrong stops being protected, which the
/// model notices at its next transfers and mutations.
fn spawn_child(ctx: &mut Ctx, sp: &mut Spawner) {
    let mut pick = ctx.rng.below(100);
    let (idx, &(kind, _, name)) = SPAWN_KINDS
        .iter()
        .enumerate()
        .find(|(_, &(_, weight, _))| {
            let hit = pick < weight;
            pick = pick.saturating_sub(weight);
            hit
        })
        .unwrap_or((0, &SPAWN_KINDS[0]));
    let Ok((err_r, err_w)) = splicecow_test_harness::pipe() else {
        ctx.fail(C_ERRORS, || "pipe for a child's errors".to_string());
        return;
    };
    let path = match kind {
        SpawnKind::VforkExit => std::ptr::null(),
        SpawnKind::VforkExecFails => sp.missing.as_ptr(),
        _ => sp.program.as_ptr(),
    };
    let argv = [sp.program.as_ptr(), std::ptr::null()];
    let mut plan = ChildPlan {
        stdout: sp.devnull.as_raw_fd(),
        close: err_r.as_raw_fd(),
        err: err_w.as_raw_fd(),
        path,
        argv: argv.as_ptr(),
        // SAFETY: reading the process's environment pointer.
        envp: unsafe { environ } as *const *const libc::c_char,
        change_fd: -1,
        change: std::ptr::null(),
        change_len: 0,
        change_at: 0,
    };
    // Starts the child and waits for it: its exit code (-1: it could not be started).
    let mut start = |c: &mut Ctx, plan: &ChildPlan| {
        c.slot.begin(Op::Spawn);
        let pid = sp.start(kind, plan);
        let exit = if pid < 0 {
            let e = io::Error::last_os_error();
            c.fail(C_ERRORS, || format!("{name}: {e}"));
            -1
        } else {
            reap_child(pid)
        };
        c.slot.end();
        exit
    };
    let mut exit = -1;
    if kind == SpawnKind::VforkPwriteExec {
        let k = ctx.pick_file();
        ctx.mutation(k, |c, fd, size| {
            let off = c.rng.below(size + 1);
            let len = c
                .rng
                .range(1, 16384)
                .min(c.max_size.saturating_sub(off))
                .max(1);
            let mut buf = vec![0u8; len];
            c.rng.fill(&mut buf);
            (plan.change_fd, plan.change, plan.change_len) = (fd, buf.as_ptr(), len);
            plan.change_at = off as libc::off_t;
            exit = start(c, &plan);
            if exit == 0 {
                c.model_write(k, off, &buf);
                if off > size {
                    c.model_zero(k, size, off - size);
                }
            }
        });
    } else {
        exit = start(ctx, &plan);
    }
    drop(err_w);
    // The child is gone: what it wrote is in the pipe (any other thread's child that
    // inherited our write end exits or execs soon; EOF is not needed).
    // SAFETY: fcntl on our own fd.
    unsafe { libc::fcntl(err_r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let note = read_exact_fd(err_r.as_raw_fd(), 64);
    let mut failed = [b'E', 0, 0, 0, 0];
    failed[1..].copy_from_slice(&libc::ENOENT.to_le_bytes());
    let (want_exit, want_note): (i32, &[u8]) = match kind {
        SpawnKind::VforkExit => (0, CHILD_NOTE),
        SpawnKind::VforkExecFails => (127, &failed),
        _ => (0, &[]),
    };
    if exit != want_exit || note != want_note {
        let note = String::from_utf8_lossy(&note).into_owned();
        ctx.fail(C_ERRORS, || {
            format!("{name} child ended with {exit} (expected {want_exit}), wrote {note:?}")
        });
    }
    ctx.st.add(C_SPAWNS + idx, 1);
}

// ---------------------------------------------------------------------------------------
// Worker: relay (a domain of its own)
// ---------------------------------------------------------------------------------------

/// How a relay thread forwards bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayKind {
    /// A blocking pipe→pipe `splice`.
    Splice,
    /// A blocking `tee`, then a `read` that drains what was teed from the source.
    Tee,
}

impl RelayKind {
    fn op(self) -> Op {
        match self {
            RelayKind::Splice => Op::RelaySplice,
            RelayKind::Tee => Op::RelayTee,
        }
    }
}

/// One blocking call of a relay thread: up to `len` bytes from pipe `src` into `dst`.
struct RelayJob {
    src: RawFd,
    dst: RawFd,
    len: usize,
}

/// The feeder's handle on a relay thread.
struct Relay {
    kind: RelayKind,
    /// The relay thread's status slot.
    slot: usize,
    jobs: mpsc::Sender<RelayJob>,
    results: mpsc::Receiver<io::Result<usize>>,
}

impl Relay {
    fn start(&self, job: RelayJob) {
        let _ = self.jobs.send(job);
    }
    /// The result of the job started last.
    fn result(&self) -> io::Result<usize> {
        self.results
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("relay thread gone")))
    }
    /// Waits (at most 20 ms) until the relay thread sleeps inside its call; false when it
    /// was not seen asleep.
    fn wait_asleep(&self, st: &Status) -> bool {
        let deadline = Instant::now() + Duration::from_millis(20);
        while Instant::now() < deadline {
            if st.slot(self.slot, S_OP_START).load(Ordering::Relaxed) != 0 {
                let tid = st.slot(self.slot, S_TID).load(Ordering::Relaxed);
                if proc_state(&format!("/proc/self/task/{tid}/stat")) == Some('S') {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        false
    }
}

/// A relay thread: one blocking call per job, as a relay process that waits for its
/// input would make it.
fn relay_thread(
    slot: Slot,
    kind: RelayKind,
    jobs: mpsc::Receiver<RelayJob>,
    results: mpsc::Sender<io::Result<usize>>,
) {
    for job in jobs {
        slot.begin(kind.op());
        let null = std::ptr::null_mut();
        let r = loop {
            // SAFETY: plain splice/tee between two pipes the feeder keeps open.
            let r = unsafe {
                match kind {
                    RelayKind::Splice => libc::splice(job.src, null, job.dst, null, job.len, 0),
                    RelayKind::Tee => libc::tee(job.src, job.dst, job.len, 0),
                }
            };
            if r < 0 && errno() == libc::EINTR {
                continue;
            }
            break r;
        };
        let result = if r < 0 {
            Err(io::Error::last_os_error())
        } else if kind == RelayKind::Tee && read_exact_fd(job.src, r as usize).len() != r as usize {
            Err(io::Error::other("drained fewer bytes than were teed"))
        } else {
            Ok(r as usize)
        };
        slot.end();
        if results.send(result).is_err() {
            break;
        }
    }
}

/// The `relay` worker: a feeder thread and one relay thread per [`RelayKind`], alone in
/// a domain of their own (so that the domain has nothing live whenever the feeder says
/// so; the main domain never rests).
fn relay_main(st: &Status, args: &WorkerArgs) {
    std::thread::scope(|s| {
        let relays = [RelayKind::Splice, RelayKind::Tee]
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                let (jobs, job_rx) = mpsc::channel();
                let (result_tx, results) = mpsc::channel();
                let slot = args.slot_base + 1 + i;
                s.spawn(move || relay_thread(Slot::claim(st, slot), kind, job_rx, result_tx));
                Relay {
                    kind,
                    slot,
                    jobs,
                    results,
                }
            })
            .collect::<Vec<Relay>>();
        if let Some(mut ctx) = worker_ctx(st, args, 0) {
            ctx.kills_word = W_KILLS_RELAY;
            relay_feeder(&mut ctx, [args.chans[0], args.chans[1]], &relays);
        }
        // Dropping the job senders ends the relay threads.
        drop(relays);
    });
}

/// The relay worker's producer: relay rounds (see [`relay_round`]) on channel `i` through
/// `relays[i]`, and now and then a plain mutation of its file.
fn relay_feeder(ctx: &mut Ctx, chans: [usize; 2], relays: &[Relay]) {
    let mut chans = chans.map(Chan::new);
    let (src_r, src_w) = splicecow_test_harness::pipe().expect("relay source pipe");
    let (buf_r, buf_w) = splicecow_test_harness::pipe().expect("relay buffer pipe");
    let src = (src_r.as_raw_fd(), src_w.as_raw_fd());
    let buf = (buf_r.as_raw_fd(), buf_w.as_raw_fd());
    while !ctx.st.stopping() {
        for ch in chans.iter_mut() {
            if ch.fd.is_none() {
                ctx.slot.begin(Op::OpenFifo);
                producer_open(ctx, ch);
                ctx.slot.end();
            }
        }
        let open: Vec<usize> = (0..2).filter(|&i| chans[i].fd.is_some()).collect();
        if open.is_empty() {
            ctx.slot.heartbeat();
            sleep_ms(2);
            continue;
        }
        if ctx.rng.chance(10) {
            ctx.mutate();
            continue;
        }
        let i = open[ctx.rng.below(open.len())];
        let buffered = ctx.rng.chance(50).then_some(buf);
        relay_round(ctx, &mut chans[i], &relays[i], src, buffered);
        std::thread::sleep(Duration::from_micros(ctx.rng.range(200, 1500) as u64));
    }
}

/// One relay round:
///
/// 1. rewrite the domain's only file from scratch (`open(O_TRUNC)`), which settles or
///    retires every segment of the domain: nothing is live any more;
/// 2. start the relay's blocking call from the empty source pipe `src` into the channel,
///    or into the private pipe `buffer` when given, and wait until it sleeps in it;
/// 3. splice a range of the file into `src` (logged like every producer's transfer): the
///    relay, already waiting, moves the page-cache bytes on;
/// 4. once they are all past the relay, overwrite part of that range of the file;
/// 5. with `buffer`, splice its bytes into the channel only now.
///
/// The consumer must read the bytes as they were at step 3 (the relay's destination has
/// to be settled at step 4). With `buffer` nobody can read them before step 4; without
/// it the consumer races with the overwrite.
fn relay_round(
    ctx: &mut Ctx,
    ch: &mut Chan,
    relay: &Relay,
    (src_r, src_w): (RawFd, RawFd),
    buffer: Option<(RawFd, RawFd)>,
) {
    let k = ctx.own.start;
    let len = ctx.rng.range(65536, 262144);
    ctx.mutation(k, |c, _, _| c.rewrite_truncated(k, len));
    let dst = buffer.map_or(ch.raw(), |(_, w)| w);
    relay.start(RelayJob {
        src: src_r,
        dst,
        len: 65536,
    });
    if relay.wait_asleep(ctx.st) {
        ctx.st.add(C_RELAY_WAITED, 1);
    }
    let (lock, k, off, expected) = pick_range(ctx, 65536);
    ch.meta = meta(Op::Splice, k, off);
    ch.log(REC_INTENT, ctx.kills(), &expected);
    let mut o = off as libc::loff_t;
    ctx.slot.begin(Op::Splice);
    // SAFETY: o is our local; src_w is the relay's private source pipe (empty).
    let r = unsafe {
        libc::splice(
            ctx.data[k].as_raw_fd(),
            &mut o,
            src_w,
            std::ptr::null_mut(),
            expected.len().max(1),
            0,
        )
    };
    ctx.slot.end();
    // The record is confirmed once its bytes are in the channel: what the relay held
    // when it died never arrives, and is no loss.
    let mut n = check_transfer(ctx, ch, "splice(file->relay)", r, errno(), expected.len());
    ctx.st.add(C_SPLICE_OPS, 1);
    drop(lock);
    if n == 0 {
        // Nothing moved (end of file): one logged byte wakes the relay.
        ch.confirm(ctx, 0);
        let wake = b"w";
        ch.log(REC_INTENT, ctx.kills(), wake);
        // SAFETY: one byte into our private pipe.
        let r = unsafe { libc::write(src_w, wake.as_ptr().cast(), 1) };
        n = check_transfer(ctx, ch, "write(relay wake-up)", r, errno(), 1);
    }
    let mut moved = 0;
    let mut result = relay.result();
    loop {
        match result {
            Ok(r) if r > 0 => moved += r,
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                ch.close();
                break;
            }
            Err(e) => {
                let kind = relay.kind;
                ctx.fail(C_ERRORS, || format!("relay {kind:?} into channel: {e}"));
                break;
            }
        }
        if moved >= n {
            break;
        }
        relay.start(RelayJob {
            src: src_r,
            dst,
            len: n - moved,
        });
        result = relay.result();
    }
    let mut delivered = if buffer.is_some() { 0 } else { moved };
    if moved == n {
        // The change the relayed bytes must not show.
        let at = off + ctx.rng.below(n);
        let len = ctx.rng.range(1, n.min(16384));
        ctx.mutation(k, |c, fd, size| c.pwrite_random(k, fd, size, at, len));
        if let Some((buf_r, _)) = buffer {
            delivered = forward(ctx, ch, buf_r, n);
        }
    }
    ch.confirm(ctx, delivered);
    // Whatever could not be moved on (the consumer went away) is dropped.
    for fd in [Some(src_r), buffer.map(|(r, _)| r)].into_iter().flatten() {
        let _ = read_exact_fd(fd, fionread(fd));
    }
    ctx.st.add(C_RELAY_ROUNDS + relay.kind as usize, 1);
    ctx.st.add(C_RELAY_BUFFERED, u64::from(buffer.is_some()));
    ctx.st.add(C_RELAY_BYTES, moved as u64);
}

/// Splices the `n` bytes of the relay's private pipe `from` into channel `ch`; returns
/// how many went in.
fn forward(ctx: &mut Ctx, ch: &mut Chan, from: RawFd, n: usize) -> usize {
    let mut done = 0;
    while done < n && ch.fd.is_some() {
        ctx.slot.begin(Op::RelayForward);
        // SAFETY: plain splice between two pipes.
        let r = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                ch.raw(),
                std::ptr::null_mut(),
                n - done,
                0,
            )
        };
        ctx.slot.end();
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r <= 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPIPE) {
                ch.close();
            } else {
                ctx.fail(C_ERRORS, || format!("splice(relay buffer->channel): {e}"));
            }
            return done;
        }
        done += r as usize;
    }
    done
}

// ---------------------------------------------------------------------------------------
// Worker: quiet victim (a domain of its own)
// ---------------------------------------------------------------------------------------

/// Length of each of the quiet victim's files: the victim splices from and mutates the
/// first half; [`protection_check`] splices a range of the second half.
const QUIET_FILE_LEN: usize = 1 << 20;

/// The quiet victim: alone in its domain, it first checks that the domain still protects
/// a splice of each of its files ([`protection_check`]: the previous incarnation may have
/// been killed inside a registry update), then makes the registry update its pause point
/// `point` sits in again and again ([`torn_update_attempt`]), on the file of that point
/// (a count torn one too high by one point must not hide one torn one too low by
/// another). The main domain cannot show a torn count: it always has other segments
/// live, so a count one short never reaches zero there.
fn quiet_victim_main(ctx: &mut Ctx, point: &str) {
    for k in ctx.own.clone() {
        protection_check(ctx, k);
    }
    let at = PAUSE_POINTS.iter().position(|&p| p == point).unwrap_or(0);
    let k = ctx.own.start + at;
    while !ctx.st.stopping() {
        ctx.slot.heartbeat();
        torn_update_attempt(ctx, k, point);
        std::thread::sleep(Duration::from_micros(ctx.rng.range(500, 2000) as u64));
    }
}

/// One splice of file `k` into a fresh pipe nobody reads, then the call that pauses at
/// `point`, made with the slot busy (the parent's aimed kill waits for that, so the kill
/// lands in this call's pause, not in the first splice's):
///
/// - `record`: a second, non-contiguous splice into the pipe (a new segment);
/// - `commit`: a splice at the end of the file (it moves nothing: the intent is dropped);
/// - `retire`: the pipe is read empty, then a hole is punched into the spliced range (the
///   exact prune retires the consumed segment);
/// - `holder`: a second splice through a duplicate of the pipe's descriptor (the holder
///   list is rewritten);
/// - `settle`: a `pwrite` into the spliced range (the pipe is settled).
///
/// Unless killed, the victim then reads the pipe empty and punches a hole over the range
/// (the exact prune retires its segments while the pipe is still reachable: a dead pipe
/// costs a scan of `/proc/*/fd` once found, and a full registry would take the copy
/// path, where nothing tears).
fn torn_update_attempt(ctx: &mut Ctx, k: usize, point: &str) {
    let Ok((r, w)) = splicecow_test_harness::pipe() else {
        return;
    };
    let fd = ctx.data[k].as_raw_fd();
    let off = ctx.rng.below(QUIET_FILE_LEN / 4);
    let len = ctx.rng.range(4096, 16384);
    if splice_range(fd, off, w.as_raw_fd(), len) == 0 {
        ctx.fail(C_ERRORS, || {
            format!("quiet victim: splice of f{k} at {off} moved nothing")
        });
        return;
    }
    let second = off + len + ctx.rng.range(1, 4096);
    let alias = w.try_clone();
    let mut junk = vec![0u8; len];
    ctx.rng.fill(&mut junk);
    if point == "retire" {
        let _ = read_exact_fd(r.as_raw_fd(), len);
    }
    let op = match point {
        "retire" => Op::PunchHole,
        "settle" => Op::Pwrite,
        _ => Op::Splice,
    };
    ctx.slot.begin(op);
    let done = match point {
        "record" => splice_range(fd, second, w.as_raw_fd(), len) > 0,
        "commit" => splice_range(fd, QUIET_FILE_LEN, w.as_raw_fd(), len) == 0,
        "holder" => alias.is_ok_and(|a| splice_range(fd, second, a.as_raw_fd(), len) > 0),
        "retire" => punch_hole(fd, off, len),
        _ => pwrite_all(fd, &junk, off) == len as isize,
    };
    ctx.slot.end();
    if !done {
        let e = io::Error::last_os_error();
        ctx.fail(C_ERRORS, || {
            format!("quiet victim: the call paused at {point} failed: {e}")
        });
    }
    retire_by_hole(fd, r.as_raw_fd(), off, second + len - off);
}

/// Reads pipe `r` empty, then punches a hole over `[off, off + len)` of `fd`, which
/// retires the pipe's segments of that range.
fn retire_by_hole(fd: RawFd, r: RawFd, off: usize, len: usize) {
    let _ = read_exact_fd(r, fionread(r));
    punch_hole(fd, off, len);
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)` of `[off, off + len)`; whether it succeeded.
fn punch_hole(fd: RawFd, off: usize, len: usize) -> bool {
    // SAFETY: fallocate on our fd; plain integer arguments.
    let r = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    r == 0
}

/// The check each quiet-victim incarnation starts with, as a later process of a domain
/// whose previous victim may have been killed inside a registry update: splice a range
/// of the file's second half into a pipe, punch a hole over the whole first half (which
/// retires everything the killed incarnations left recorded there: the domain's derived
/// counts must still cover the new splice), overwrite part of the spliced range, and read
/// the pipe: it must hold the bytes as they were spliced.
fn protection_check(ctx: &mut Ctx, k: usize) {
    let Ok((r, w)) = splicecow_test_harness::pipe() else {
        return;
    };
    let fd = ctx.data[k].as_raw_fd();
    let half = QUIET_FILE_LEN / 2;
    let off = half + ctx.rng.below(half - 65536);
    let len = ctx.rng.range(4096, 65536);
    let expected = pread_full(fd, off, len);
    // Not marked busy in the slot: the parent aims its kills at the attempts only.
    ctx.slot.heartbeat();
    let moved = splice_range(fd, off, w.as_raw_fd(), len);
    let punched = punch_hole(fd, 0, half);
    let at = off + ctx.rng.below(moved.max(1));
    let mut junk = vec![0u8; ctx.rng.range(1, (off + moved - at).max(1))];
    ctx.rng.fill(&mut junk);
    let written = pwrite_all(fd, &junk, at) == junk.len() as isize;
    if !punched || !written || moved == 0 {
        ctx.fail(C_ERRORS, || {
            format!("quiet victim check: punch {punched}, pwrite {written}, moved {moved}")
        });
    }
    let got = read_exact_fd(r.as_raw_fd(), moved);
    retire_by_hole(fd, r.as_raw_fd(), off, moved);
    ctx.st.add(C_QUIET_CHECKS, 1);
    if got[..] != expected[..moved.min(expected.len())] {
        let bad = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
        ctx.st.add(C_QUIET_CHECK_FAILURES, 1);
        ctx.st.add(C_MISMATCH_BYTES, bad as u64);
        ctx.fail(C_MISMATCHES, || {
            format!(
                "MISMATCH in the quiet domain (a later process after a kill of its victim): {bad} of {moved} bytes spliced from f{k} at {off} differ after a pwrite at {at}"
            )
        });
    }
}

// ---------------------------------------------------------------------------------------
// Worker: mutator
// ---------------------------------------------------------------------------------------

fn mutator_thread(ctx: &mut Ctx, spawns: bool) {
    let mut spawner = spawns.then(Spawner::new).flatten();
    while !ctx.st.stopping() {
        match spawner.as_mut() {
            Some(sp) if ctx.rng.chance(1) => spawn_child(ctx, sp),
            _ => ctx.mutate(),
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
    if args.role == "relay" {
        relay_main(st, args);
        return ExitCode::SUCCESS;
    }
    std::thread::scope(|s| {
        for t in 0..args.threads {
            s.spawn(move || {
                let slot = args.slot_base + t;
                let Some(mut ctx) = worker_ctx(st, args, t) else {
                    return;
                };
                let style = ProducerStyle {
                    headers: !args.no_headers,
                    spawns: !args.no_spawns,
                    victim: false,
                };
                match args.role.as_str() {
                    "producer" => {
                        producer_thread(&mut ctx, [args.chans[2 * t], args.chans[2 * t + 1]], style)
                    }
                    "victim" => producer_thread(
                        &mut ctx,
                        [args.chans[0], args.chans[1]],
                        ProducerStyle {
                            spawns: false,
                            victim: true,
                            ..style
                        },
                    ),
                    "consumer" => consumer_thread(&mut ctx, args.chans[t]),
                    "quiet-victim" => {
                        quiet_victim_main(&mut ctx, args.pause_point.as_deref().unwrap_or("record"))
                    }
                    _ => mutator_thread(&mut ctx, style.spawns),
                }
                st.slot(slot, S_OP)
                    .store(Op::Idle as u64, Ordering::Relaxed);
            });
        }
    });
    ExitCode::SUCCESS
}

/// The context of thread `t` of a worker (`None`, counted as an error, when its files
/// cannot be opened).
fn worker_ctx<'a>(st: &'a Status, args: &WorkerArgs, t: usize) -> Option<Ctx<'a>> {
    let name = format!("{}#{t}", args.role);
    match Ctx::new(
        st,
        args.slot_base + t,
        &args.dir,
        args.seed.wrapping_add(t as u64),
        args.files,
        args.max_size,
        name,
    ) {
        Ok(mut c) => {
            c.pipes = args.pipes.clone();
            c.own = args.own_first..args.own_first + args.own_count;
            Some(c)
        }
        Err(e) => {
            eprintln!("stress worker {}: setup: {e}", args.role);
            st.add(C_ERRORS, 1);
            None
        }
    }
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
    Relay,
    QuietVictim,
}

/// Every role, in the order of `Parent::kills`.
const ROLES: [Role; 6] = [
    Role::Producer,
    Role::Consumer,
    Role::Mutator,
    Role::Victim,
    Role::Relay,
    Role::QuietVictim,
];

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
            Role::Mutator => "mutator",
            Role::Victim => "victim",
            Role::Relay => "relay",
            Role::QuietVictim => "quiet-victim",
        }
    }
    /// Whether the role runs with a test pause and takes aimed kills.
    fn is_victim(self) -> bool {
        matches!(self, Role::Victim | Role::QuietVictim)
    }
}

/// The victim's test pause points (`SPLICECOW_TEST_PAUSE`), each inside one kind of
/// registry update (or the settle) and holding the registry lock.
const PAUSE_POINTS: [&str; 5] = ["record", "commit", "retire", "holder", "settle"];

struct Worker {
    role: Role,
    threads: usize,
    slot_base: usize,
    chans: Vec<usize>,
    child: Option<Child>,
    pid: u32,
    restarts: u64,
    killed: bool,
    /// The victim's current pause point (an index into [`PAUSE_POINTS`]).
    pause_point: Option<usize>,
}

/// The roles of a run with `n` workers (the relay worker comes on top).
fn plan(n: usize, faults: bool, relays: bool) -> Vec<Worker> {
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
            pause_point: None,
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
    // The victim (a producer) and the relay worker own two channels each.
    let mut two_chans = || {
        chan += 2;
        vec![chan - 2, chan - 1]
    };
    let victim_chans = faults.then(&mut two_chans);
    let relay_chans = relays.then(&mut two_chans);
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
    for m in 0..mutators - usize::from(faults) {
        let threads = if m == 0 { 2 } else { 1 };
        out.push(mk(Role::Mutator, threads, Vec::new(), &mut slot));
    }
    if let Some(chans) = victim_chans {
        out.push(mk(Role::Victim, 1, chans, &mut slot));
        out.push(mk(Role::QuietVictim, 1, Vec::new(), &mut slot));
    }
    if let Some(chans) = relay_chans {
        // The feeder and one relay thread per RelayKind.
        out.push(mk(Role::Relay, 3, chans, &mut slot));
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
    /// The relay worker's domain (see [`relay_main`]).
    relay_domain: TempDomain,
    st: Status,
    seed: u64,
    rng: Rng,
    workers: Vec<Worker>,
    crashes: u64,
    /// The quiet victim's domain (see [`quiet_victim_main`]).
    quiet_domain: TempDomain,
    /// Kills by role (in the order of [`ROLES`]).
    kills: [u64; 6],
    /// Kills of each victim while it slept in its pause, by point ([`PAUSE_POINTS`]).
    paused_kills: [u64; 5],
    quiet_paused_kills: [u64; 5],
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
            .arg((self.args.files + EXTRA_FILES).to_string())
            .arg("--max-size")
            .arg((self.args.file_size * 2).to_string());
        let (own_first, own_count) = match w.role {
            Role::Relay => (relay_file(self.args.files), 1),
            Role::QuietVictim => (first_quiet_file(self.args.files), PAUSE_POINTS.len()),
            _ => (0, self.args.files),
        };
        cmd.arg("--own-first")
            .arg(own_first.to_string())
            .arg("--own-count")
            .arg(own_count.to_string());
        if self.args.no_headers {
            cmd.arg("--no-headers");
        }
        if self.args.no_spawns {
            cmd.arg("--no-spawns");
        }
        cmd.arg("--pipes").arg(&self.args.pipes);
        if !w.chans.is_empty() {
            let list: Vec<String> = w.chans.iter().map(|c| c.to_string()).collect();
            cmd.arg("--chans").arg(list.join(","));
        }
        let domain = match w.role {
            Role::Relay => &self.relay_domain,
            Role::QuietVictim => &self.quiet_domain,
            _ => &self.domain,
        };
        domain.protection(&self.lib).apply(&mut cmd);
        // Each victim's incarnations take the pause points in turn.
        let pause_point = w.role.is_victim().then(|| {
            let name = &self.args.pause_points[w.restarts as usize % self.args.pause_points.len()];
            PAUSE_POINTS.iter().position(|p| p == name).unwrap_or(0)
        });
        if let Some(point) = pause_point {
            cmd.env(
                "SPLICECOW_TEST_PAUSE",
                format!("{}:{}", PAUSE_POINTS[point], self.args.pause_us),
            );
            cmd.arg("--pause-point").arg(PAUSE_POINTS[point]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn()?;
        let w = &mut self.workers[i];
        w.pid = child.id();
        w.child = Some(child);
        w.killed = false;
        w.pause_point = pause_point;
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
        // The quiet victim has no channels: its kills explain no loss.
        let kills_word = match w.role {
            Role::Consumer | Role::QuietVictim => None,
            Role::Relay => Some(W_KILLS_RELAY),
            _ => Some(W_KILLS),
        };
        if let Some(word) = kills_word {
            self.st.w(word).fetch_add(1, Ordering::SeqCst);
        }
        w.killed = true;
        // SAFETY: signalling our own child (not yet reaped, so the pid is still ours).
        unsafe { libc::kill(w.pid as i32, libc::SIGKILL) };
        let idx = ROLES.iter().position(|&r| r == w.role).unwrap_or(0);
        self.kills[idx] += 1;
    }

    /// Tries to kill the victim while it sleeps in its pause (registry lock held, in the
    /// middle of a registry update or a settle).
    fn aimed_kill(&mut self, i: usize) {
        let pid = self.workers[i].pid as i32;
        let slot = self.workers[i].slot_base;
        let pause_ns = self.args.pause_us * 1000;
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline && self.workers[i].child.is_some() {
            let busy = self.st.slot(slot, S_OP_START).load(Ordering::Relaxed) != 0;
            if busy {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                let in_pause = wait_stopped(pid) && in_shim_pause(pid, pause_ns);
                if in_pause {
                    self.kill(i);
                    let t = monotonic_ns();
                    if let Some(point) = self.workers[i].pause_point {
                        if self.workers[i].role == Role::QuietVictim {
                            self.quiet_paused_kills[point] += 1;
                        } else {
                            self.paused_kills[point] += 1;
                        }
                    }
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

    /// The registry counters of `domain` (`splicecow stats --json`).
    fn stats(&self, domain: &TempDomain) -> Option<serde_json::Value> {
        let out = Command::new(&self.cli)
            .args(["stats", "--json", "--domain", domain.name()])
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
        for (what, domain) in [
            ("registry", &self.domain),
            ("relay registry", &self.relay_domain),
            ("quiet registry", &self.quiet_domain),
        ] {
            match self.stats(domain) {
                Some(v) => eprintln!("  {what}: {v}"),
                None => eprintln!("  {what}: (unreadable)"),
            }
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

/// The state letter of a process or task from its `stat` file (`None`: gone).
fn proc_state(stat_path: &str) -> Option<char> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    s.rsplit(')')
        .next()?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Waits (briefly) until `pid` is in the stopped state.
fn wait_stopped(pid: i32) -> bool {
    let path = format!("/proc/{pid}/stat");
    for _ in 0..200 {
        match proc_state(&path) {
            Some('T' | 't') => return true,
            None => return false,
            _ => std::thread::sleep(Duration::from_micros(50)),
        }
    }
    false
}

/// Whether a thread of the stopped process `pid` sleeps in the shim's test pause:
/// `SYS_nanosleep`, which only the shim uses (Rust and glibc sleep with
/// `clock_nanosleep`), for `pause_ns` (the shim's waits for the registry lock are
/// shorter). The requested time is read from the process's memory; where that cannot be
/// read, any `SYS_nanosleep` counts.
fn in_shim_pause(pid: i32, pause_ns: u64) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mem = File::open(format!("/proc/{pid}/mem")).ok();
    tasks.flatten().any(|t| {
        let Ok(call) = std::fs::read_to_string(t.path().join("syscall")) else {
            return false;
        };
        let mut fields = call.split_whitespace();
        if fields.next().and_then(|n| n.parse::<i64>().ok()) != Some(libc::SYS_nanosleep) {
            return false;
        }
        let request = fields
            .next()
            .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
        let mut ts = [0u8; 16];
        match (&mem, request) {
            (Some(mem), Some(at)) if mem.read_exact_at(&mut ts, at).is_ok() => {
                let secs = u64::from_le_bytes(ts[..8].try_into().unwrap_or_default());
                let nanos = u64::from_le_bytes(ts[8..].try_into().unwrap_or_default());
                secs.saturating_mul(1_000_000_000).saturating_add(nanos) == pause_ns
            }
            _ => true,
        }
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
    copy_fallbacks_registry_full: u64,
    copy_fallbacks_shared_mapping: u64,
    unreachable_pipes: u64,
    /// Children started by producers and mutators, by kind ([`SPAWN_KINDS`]).
    children: BTreeMap<&'static str, u64>,
    relay_rounds_splice: u64,
    relay_rounds_tee: u64,
    /// Relay rounds whose relay forwarded into a private pipe first.
    relay_rounds_buffered: u64,
    /// Relay rounds whose relay was seen asleep in its call before the bytes came.
    relay_rounds_waited: u64,
    relay_bytes: u64,
    relay_bytes_verified: u64,
    relay_mismatches: u64,
    faults: bool,
    kills: u64,
    kills_producer: u64,
    kills_consumer: u64,
    kills_mutator: u64,
    kills_victim: u64,
    kills_relay: u64,
    kills_quiet_victim: u64,
    /// Kills of the (main domain's) victim while it slept in its pause, by pause point.
    kills_paused_at: BTreeMap<&'static str, u64>,
    kills_paused: u64,
    /// Kills of the quiet victim while it slept in its pause, by pause point.
    quiet_kills_paused_at: BTreeMap<&'static str, u64>,
    /// Protection checks of quiet-victim incarnations, and how many failed.
    quiet_checks: u64,
    quiet_check_failures: u64,
    lock_takeovers: u64,
    table_repairs: u64,
    takeover_probes: u64,
    max_lock_takeover_ms: f64,
    mismatches: u64,
    mismatch_bytes: u64,
    settle_window_losses: u64,
    settle_window_loss_bytes: u64,
    settle_window_repeats: u64,
    settle_window_repeat_bytes: u64,
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
    for k in 0..args.files + EXTRA_FILES {
        let len = if k >= first_quiet_file(args.files) {
            QUIET_FILE_LEN
        } else {
            args.file_size
        };
        let content: Vec<u8> = (0..len).map(|i| initial_byte(k, i)).collect();
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
    if args.files == 0 || args.files + EXTRA_FILES > MAX_FILES {
        eprintln!("stress: --files must be 1..={}", MAX_FILES - EXTRA_FILES);
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
    let workers = plan(args.workers, faults, !args.no_relays);
    for w in workers.iter().filter(|w| w.role == Role::Relay) {
        for &c in &w.chans {
            st.w(W_RELAYED + c).store(1, Ordering::SeqCst);
        }
    }
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
        relay_domain: TempDomain::new(),
        quiet_domain: TempDomain::new(),
        st,
        seed,
        rng: Rng(seed),
        workers,
        crashes: 0,
        kills: [0; 6],
        paused_kills: [0; 5],
        quiet_paused_kills: [0; 5],
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
            let want = ROLES
                .into_iter()
                .find(|r| r.name() == args.kill_roles[kind])
                .unwrap_or(Role::Victim);
            let cands: Vec<usize> = all_workers
                .iter()
                .copied()
                .filter(|&i| p.workers[i].role == want && p.workers[i].child.is_some())
                .collect();
            if !cands.is_empty() {
                let i = cands[p.rng.below(cands.len())];
                if want.is_victim() {
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
    // The run's registry counters: both domains' together.
    let stats =
        [&p.domain, &p.relay_domain, &p.quiet_domain].map(|d| p.stats(d).unwrap_or_default());
    let sv = |k: &str| -> u64 {
        stats
            .iter()
            .filter_map(|s| s.get(k).and_then(|v| v.as_u64()))
            .sum()
    };
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
        copy_fallbacks_registry_full: sv("copy_fallbacks_registry_full"),
        copy_fallbacks_shared_mapping: sv("copy_fallbacks_shared_mapping"),
        unreachable_pipes: sv("unreachable_pipes"),
        children: SPAWN_KINDS
            .iter()
            .enumerate()
            .map(|(i, &(_, _, name))| (name, st.count(C_SPAWNS + i)))
            .collect(),
        relay_rounds_splice: st.count(C_RELAY_ROUNDS + RelayKind::Splice as usize),
        relay_rounds_tee: st.count(C_RELAY_ROUNDS + RelayKind::Tee as usize),
        relay_rounds_buffered: st.count(C_RELAY_BUFFERED),
        relay_rounds_waited: st.count(C_RELAY_WAITED),
        relay_bytes: st.count(C_RELAY_BYTES),
        relay_bytes_verified: st.count(C_RELAY_VERIFIED),
        relay_mismatches: st.count(C_RELAY_MISMATCHES),
        faults,
        kills: p.kills.iter().sum(),
        kills_producer: p.kills[0],
        kills_consumer: p.kills[1],
        kills_mutator: p.kills[2],
        kills_victim: p.kills[3],
        kills_relay: p.kills[4],
        kills_quiet_victim: p.kills[5],
        kills_paused_at: PAUSE_POINTS.into_iter().zip(p.paused_kills).collect(),
        kills_paused: p.paused_kills.iter().sum(),
        quiet_kills_paused_at: PAUSE_POINTS.into_iter().zip(p.quiet_paused_kills).collect(),
        quiet_checks: st.count(C_QUIET_CHECKS),
        quiet_check_failures: st.count(C_QUIET_CHECK_FAILURES),
        lock_takeovers: sv("lock_takeovers"),
        table_repairs: sv("table_repairs"),
        takeover_probes: p.takeover_probes,
        max_lock_takeover_ms: p.max_takeover_ns as f64 / 1e6,
        mismatches: st.count(C_MISMATCHES),
        mismatch_bytes: st.count(C_MISMATCH_BYTES),
        settle_window_losses: st.count(C_LOSSES),
        settle_window_loss_bytes: st.count(C_LOSS_BYTES),
        settle_window_repeats: st.count(C_REPEATS),
        settle_window_repeat_bytes: st.count(C_REPEAT_BYTES),
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
        "  copy fallbacks    {} (registry full {}, shared writable mapping {}), unreachable pipes {}",
        r.copy_fallbacks,
        r.copy_fallbacks_registry_full,
        r.copy_fallbacks_shared_mapping,
        r.unreachable_pipes
    );
    let list = |m: &BTreeMap<&str, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "  children          {} ({})",
        r.children.values().sum::<u64>(),
        list(&r.children)
    );
    eprintln!(
        "  relays            {} splice + {} tee rounds ({} through a private pipe first, {} with the relay seen waiting); {} bytes relayed, {} verified, {} mismatches there",
        r.relay_rounds_splice,
        r.relay_rounds_tee,
        r.relay_rounds_buffered,
        r.relay_rounds_waited,
        r.relay_bytes,
        r.relay_bytes_verified,
        r.relay_mismatches
    );
    if r.faults {
        eprintln!("  kills             {} (producer {}, consumer {}, mutator {}, relay {}, victim {}, quiet victim {})", r.kills, r.kills_producer, r.kills_consumer, r.kills_mutator, r.kills_relay, r.kills_victim, r.kills_quiet_victim);
        eprintln!(
            "  paused kills      victim {} ({}); quiet victim {} ({})",
            r.kills_paused,
            list(&r.kills_paused_at),
            r.quiet_kills_paused_at.values().sum::<u64>(),
            list(&r.quiet_kills_paused_at)
        );
        eprintln!(
            "  quiet checks      {} after restarts, {} failed",
            r.quiet_checks, r.quiet_check_failures
        );
        eprintln!(
            "  lock takeovers    {}, table repairs {}; max wait after a kill {:.1} ms over {} probes",
            r.lock_takeovers, r.table_repairs, r.max_lock_takeover_ms, r.takeover_probes
        );
    }
    eprintln!(
        "  mismatches        {} ({} bytes)",
        r.mismatches, r.mismatch_bytes
    );
    eprintln!(
        "  settle-window losses {} ({} bytes), repeats {} ({} bytes)",
        r.settle_window_losses,
        r.settle_window_loss_bytes,
        r.settle_window_repeats,
        r.settle_window_repeat_bytes
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
    fn spawn_weights_are_percentages_and_names_are_unique() {
        assert_eq!(SPAWN_KINDS.iter().map(|k| k.1).sum::<usize>(), 100);
        let names: std::collections::BTreeSet<&str> = SPAWN_KINDS.iter().map(|k| k.2).collect();
        assert_eq!(names.len(), SPAWN_KINDS.len());
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

    /// A chunk written back twice (a settler killed before it stored its progress): the
    /// stream repeats it, then goes on.
    #[test]
    fn repeat_of_a_chunk_written_back_twice() {
        let mut exp = vec![0u8; 20000];
        Rng(5).fill(&mut exp);
        let e = expect(exp.clone(), &[(0, 0), (8000, 0), (15000, 1)]);
        // Received: the first 12000 bytes, then from 9000 on again.
        assert_ne!(exp[9000], exp[12000]);
        let rest = &exp[9000..];
        match e.find_repeat(12000, rest, 1) {
            Loss::Gap(d, from) => assert_eq!((d, from), (3000, 9000)),
            _ => panic!("not recognised as a repeat"),
        }
        // No kill after the repeated bytes were spliced: a mismatch.
        assert!(matches!(e.find_repeat(12000, rest, 0), Loss::No));
        // Bytes that are nowhere earlier in the stream are no repeat.
        let mut other = vec![0u8; 4096];
        Rng(6).fill(&mut other);
        assert!(matches!(e.find_repeat(12000, &other, 1), Loss::No));
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
