//! `fidelity`: checks that a program cannot tell `libsplicecow.so` is loaded, except by
//! the corrected data (docs/design.md, The contract), and that settles keep every byte in place in the
//! pipes that are hard to settle. Every subcommand is run twice by
//! `tests/fidelity.rs`, without and with the shim, and the outputs are compared.
//!
//! - `battery`: calls every hooked function with bad fds, invalid flags, bad pointers,
//!   negative offsets, huge lengths, EOF and non-blocking pipes; one `name ret errno
//!   off=.. size=..` line per call (`off`/`size`: the main file's offset and size after
//!   the call), and `name.what value` lines for what the call left behind (pipe levels,
//!   offsets written back, a digest of the bytes a fresh pipe got). Before each call a
//!   4 KiB splice of the main file is left in a pipe, and a splice of another file stays
//!   in flight all along, so the shim's slow paths run. The file→pipe cases (odd
//!   sources, offsets and pipes) run for `splice`, `sendfile` and `sendfile64` alike;
//!   the fd cases close, duplicate and `fcntl` the ends of tracked pipes. A call that
//!   does not return within 5 s ends the process (`SIGALRM`); its name is the unfinished
//!   last line.
//! - `block --op OP --case CASE`: blocking splice/sendfile/tee (also from the file's end
//!   and of 0 bytes, which wait for room too), drained late, interrupted by `SIGALRM`
//!   with or without `SA_RESTART`; one line.
//! - `hold-pipe-table`: fills the domain's pipe table with one-byte splices into pipes
//!   it keeps open, says `ready`, and holds them until stdin closes: then every
//!   file→pipe call into a new pipe of that domain takes the copy path.
//! - `settle --case CASE`: splices into an awkward pipe, mutates the file from another
//!   process, and lets an unshimmed reader (this binary's `reader`) read; one JSON
//!   [`SettleReport`].
//! - `pump --len N`: splices N bytes of a fresh pattern file into stdout.
//!
//! Exit status: 0 when the subcommand ran (the caller judges the output), 2 on setup
//! errors (message on stderr).

mod battery;
mod block;
mod fds;
mod opens;
mod other_paths;
mod settle;
mod transfer;
mod writes;

use battery::*;
use block::*;
use fds::*;
use opens::*;
use other_paths::*;
use settle::*;
use transfer::*;
use writes::*;

use splicecow_test_harness::sys::{
    cpath, errno, open_raw, os_err, set_errno, wait_fd, write_all_fd, Error, Res,
};
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use libc::{c_char, c_int, c_uint, c_void, loff_t, off_t, size_t, ssize_t, FILE};
use splicecow_test_harness::{
    compare, counter, domain_stats, ensure_pipe_capacity, fionread, pattern, run_with_stdin,
    strip_shim_env, temp_path, value_name, SettleReport, TempFile,
};

/// Size of the battery's main file and of most settle files.
const FLEN: usize = 64 * 1024;
/// A file descriptor number that is never open in these programs (the battery holds
/// about a thousand fds, under the [`FD_LIMIT`] it runs with).
const CLOSED: RawFd = 3000;
/// Where the fd cases put the duplicates they close again: above every fd the lowest-free
/// rule hands out in the battery, below [`CLOSED`].
const HIGH_FD: RawFd = 2000;
/// The soft `RLIMIT_NOFILE` the battery raises itself to.
const FD_LIMIT: libc::rlim_t = 4096;
/// Seconds a battery call may take: `SIGALRM` (default action) ends a call that blocks
/// where the kernel's would not, and the last line printed names it.
const CASE_TIMEOUT_S: c_uint = 5;
/// Size of the battery's read-only file for long and unaligned splices.
const BIG_LEN: usize = 256 * 1024;
/// An offset past ext4's largest file size (16 TiB) and below `i64::MAX`.
const BEYOND_MAX_FILE_SIZE: i64 = 1 << 50;
/// Most pipes `hold-pipe-table` makes, in multiples of the table's capacity.
const HOLD_MAX_FILL: u64 = 4;
/// Bytes a blocking case splices.
const BLOCK_LEN: usize = 4096;
/// When the helper thread unblocks a blocked call, and the least time the call must
/// have waited.
const UNBLOCK_AFTER: Duration = Duration::from_millis(300);
const MIN_WAIT: Duration = Duration::from_millis(250);
/// Buffer of the unshimmed reader: larger than any pipe, so each read of a packet-mode
/// pipe returns exactly one packet.
const READ_BUF: usize = 2 << 20;
/// How long the reader may take.
const READER_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Parser, Debug)]
#[command(about = "Return values, errno, blocking and settle edge cases, with or without the shim")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Calls every hooked function with bad arguments; prints `name ret errno off size`.
    Battery {
        /// Leave no 4 KiB splice in a fresh pipe before each case (with the domain's
        /// pipe table full, it could not be recorded, and it would cost a sweep).
        #[arg(long)]
        without_case_splices: bool,
    },
    /// One blocking-behaviour case; prints `op case ret errno waited data`.
    Block {
        #[arg(long, value_enum)]
        op: BlockOp,
        #[arg(long, value_enum)]
        case: BlockCase,
    },
    /// One settle edge case; prints a JSON `SettleReport`.
    Settle {
        #[arg(long, value_enum)]
        case: SettleCase,
        /// Control run: no mutation.
        #[arg(long)]
        no_mutation: bool,
        /// Mutate in this process instead of a child (one shimmed process in all).
        #[arg(long)]
        same_process: bool,
    },
    /// Splices `--len` bytes of a fresh pattern file into stdout (a pipe).
    Pump {
        #[arg(long)]
        len: usize,
    },
    /// Internal: splices `--len` bytes of `--file` into stdout (a pipe) and exits.
    SpliceOut {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        len: usize,
    },
    /// Internal: pwrites 16 `B`s at offset 100 of every 4 KiB block of `--file`.
    Mutate {
        #[arg(long)]
        file: PathBuf,
    },
    /// Internal: splices one byte into fresh pipes until `splicecow stats` says the
    /// domain's pipe table is full, prints `ready <pipes>`, and keeps every pipe open
    /// (so every record stays live) until stdin closes.
    HoldPipeTable,
    /// Internal, started without `LD_PRELOAD` (the shim may restore it on exec): copies stdin to stdout with 2 MiB reads (waiting with `poll`
    /// on a non-blocking stdin) and prints the read sizes, comma-separated, on stderr.
    Reader,
}

/// The call a blocking case makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BlockOp {
    /// `splice` file → full pipe.
    Splice,
    /// `sendfile` file → full pipe.
    Sendfile,
    /// `tee` from an empty pipe.
    Tee,
    /// `splice` from an empty pipe into another pipe.
    PipeSplice,
    /// `splice` from the file's end into a full pipe: waits for room, then 0.
    SpliceAtEof,
    /// `sendfile` of 0 bytes into a full pipe: waits for room, then 0.
    SendfileZeroCount,
}

/// How a blocked call gets unblocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BlockCase {
    /// A helper thread makes room (or data) after 300 ms.
    Drain,
    /// `SIGALRM` (handler without `SA_RESTART`) after 300 ms: `EINTR`.
    Eintr,
    /// `SIGALRM` with `SA_RESTART` after 150 ms, room after 300 ms: completes.
    Restart,
    /// Like `restart`, with an unrelated `SIGUSR1` handler without `SA_RESTART` installed.
    RestartOtherHandler,
    /// Like `restart`, with Rust's own `SIGSEGV`/`SIGBUS` handlers (installed without
    /// `SA_RESTART`) reset first: `SIGALRM`'s is the only handler in the process.
    RestartSoleHandler,
}

/// The settle edge cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SettleCase {
    /// 48 KiB spliced into a pipe this process holds (the counters case).
    Plain,
    /// The splicer (a child) has exited; only this process holds the read end.
    Exited,
    /// Packet-mode pipe (`O_DIRECT`): splices and written packets interleaved.
    Packet,
    /// `O_NONBLOCK` on both ends; the reader waits with `poll`.
    Nonblock,
    /// A 1 MiB pipe full of spliced bytes.
    Bigpipe,
    /// file → pipe A → pipe B (what uutils `cat` does); the reader reads B.
    Chain,
    /// `write`s into the pipe right after the splices (header, trailer).
    Header,
}

/// A pointer no process maps: the kernel answers `EFAULT` for it.
fn bad<T>() -> *mut T {
    8 as *mut T
}

/// Maps a pointer result to 1 (non-null) or 0 (null) for printing.
fn ptr_ret<T>(p: *mut T) -> i64 {
    i64::from(!p.is_null())
}

/// Maps an `mmap`/`mremap` result to 1 (a mapping) or -1 (`MAP_FAILED`).
fn map_ret(p: *mut c_void) -> i64 {
    if p == libc::MAP_FAILED {
        -1
    } else {
        1
    }
}

/// Opens `path` with `flags` (std, close-on-exec).
fn open_with(path: &Path, write: bool, read: bool) -> Res<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(read)
        .write(write)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| Error::from(format!("open {}: {e}", path.display())))
}

/// A pipe with `pipe2` `flags` (plus `O_CLOEXEC`): (read end, write end).
fn pipe_with(flags: c_int) -> Res<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), flags | libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe2"));
    }
    // SAFETY: pipe2 succeeded: both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Splices exactly `len` bytes of `file` from offset `off` into the pipe `out`, waiting
/// (`poll`) when a non-blocking pipe is full.
fn splice_exact(file: RawFd, off: usize, out: RawFd, len: usize) -> Res<()> {
    let mut pos = off as loff_t;
    let end = (off + len) as loff_t;
    while pos < end {
        let want = (end - pos) as usize;
        // SAFETY: pos is a valid loff_t the kernel updates; no output offset.
        let r = unsafe { libc::splice(file, &mut pos, out, std::ptr::null_mut(), want, 0) };
        if r < 0 && errno() == libc::EAGAIN {
            wait_fd(out, libc::POLLOUT);
        } else if r <= 0 {
            return Err(os_err("splice file -> pipe"));
        }
    }
    Ok(())
}

/// Fills an empty default-sized pipe completely (64 KiB of `F`s).
fn fill(w: RawFd) -> Res<()> {
    write_all_fd(w, &[b'F'; 65536])
}

/// Bytes queued in `fd` (0 when it is no pipe).
fn queued(fd: RawFd) -> usize {
    // SAFETY: fd stays open for the call; a borrowed fd is only read.
    fionread(&unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).unwrap_or(0)
}

/// Reads the pipe `r` empty with reads larger than any pipe, without blocking: the size
/// of each read, comma-separated.
fn read_sizes(r: RawFd) -> Res<String> {
    let mut buf = vec![0u8; READ_BUF];
    let mut sizes = Vec::new();
    while queued(r) > 0 {
        // SAFETY: buf is valid for its length; the pipe holds bytes, so read won't block.
        let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return Err(os_err("read"));
        }
        sizes.push(n.to_string());
    }
    Ok(sizes.join(","))
}

/// Keeps a splice of `len` bytes of a fresh, never mutated file in flight for the
/// whole process (so the domain always has a live segment: no fast path). The pipe
/// and the file are leaked on purpose.
fn prime() -> Res<()> {
    let file =
        TempFile::with_pattern("fidelity-prime", 4096).map_err(|e| Error::from(e.to_string()))?;
    let fd = open_with(file.path(), false, true)?;
    let (r, w) = pipe_with(0)?;
    splice_exact(fd.as_raw_fd(), 0, w.as_raw_fd(), 4096)?;
    std::mem::forget((r, w, fd));
    let _ = std::fs::remove_file(file.path());
    std::mem::forget(file);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Battery {
            without_case_splices,
        } => battery(!without_case_splices),
        Cmd::Block { op, case } => block(op, case),
        Cmd::Settle {
            case,
            no_mutation,
            same_process,
        } => settle(case, !no_mutation, same_process),
        Cmd::Pump { len } => pump(len),
        Cmd::SpliceOut { file, len } => splice_to_stdout(&file, len),
        Cmd::Mutate { file } => mutate(&file),
        Cmd::HoldPipeTable => hold_pipe_table(),
        Cmd::Reader => reader(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fidelity: {e}");
            let _ = io::stderr().flush();
            ExitCode::from(2)
        }
    }
}
