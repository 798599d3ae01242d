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

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
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

/// A setup error: reported on stderr, exit status 2.
type Res<T> = Result<T, String>;

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// The calling thread's `errno`.
fn errno() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Sets the calling thread's `errno`.
fn set_errno(v: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = v };
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

fn cpath(path: &Path) -> Res<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())
}

/// Opens `path` with `flags` (std, close-on-exec).
fn open_with(path: &Path, write: bool, read: bool) -> Res<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(read)
        .write(write)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| format!("open {}: {e}", path.display()))
}

/// Opens `path` with `open` `flags` (plus `O_CLOEXEC`).
fn open_flags(path: &Path, flags: c_int) -> Res<OwnedFd> {
    let p = cpath(path)?;
    // SAFETY: p is a NUL-terminated path; no mode is needed without O_CREAT.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os_err(&format!("open {}", path.display())));
    }
    // SAFETY: open succeeded: the fd is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

/// Waits until `fd` has `events`.
fn wait_fd(fd: RawFd, events: libc::c_short) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, -1) };
}

/// Writes all of `buf` to `fd` (plain `write`: hooked like any program's).
fn write_all(fd: RawFd, buf: &[u8]) -> Res<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: buf[done..] is valid for reads.
        let r = unsafe { libc::write(fd, buf[done..].as_ptr().cast(), buf.len() - done) };
        if r < 0 && errno() == libc::EAGAIN {
            wait_fd(fd, libc::POLLOUT);
        } else if r <= 0 {
            return Err(os_err("write"));
        } else {
            done += r as usize;
        }
    }
    Ok(())
}

/// Fills an empty default-sized pipe completely (64 KiB of `F`s).
fn fill(w: RawFd) -> Res<()> {
    write_all(w, &[b'F'; 65536])
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
    let file = TempFile::with_pattern("fidelity-prime", 4096).map_err(|e| e.to_string())?;
    let fd = open_with(file.path(), false, true)?;
    let (r, w) = pipe_with(0)?;
    splice_exact(fd.as_raw_fd(), 0, w.as_raw_fd(), 4096)?;
    std::mem::forget((r, w, fd));
    let _ = std::fs::remove_file(file.path());
    std::mem::forget(file);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// battery
// ---------------------------------------------------------------------------------------

/// State of the errno battery: the main file (`F`, 64 KiB, read-write), a side file
/// (`G`), a read-only fd of `F`, the odd sources of the splice cases, and every pipe made
/// along the way (kept open so that fd numbers and pipe states stay comparable between
/// runs).
struct Battery {
    f: RawFd,
    g: RawFd,
    f_rdonly: RawFd,
    /// `F` opened with `O_PATH`.
    f_opath: RawFd,
    /// A read-only pattern file of [`BIG_LEN`] bytes, never mutated.
    big: RawFd,
    /// The same file opened with `O_DIRECT`.
    big_direct: RawFd,
    /// An empty file.
    empty: RawFd,
    /// `/proc/self/maps`: a regular file the kernel cannot splice from.
    maps: RawFd,
    /// A read-only page holding offset 0: the kernel reads it, then fails to write the
    /// advanced offset back (`EFAULT` after the bytes moved).
    ro_off: *mut loff_t,
    f_path: CString,
    dir_path: CString,
    link_path: CString,
    files: Vec<TempFile>,
    /// The empty directory the `EISDIR` cases use (removed on drop).
    dir: Option<PathBuf>,
    fds: Vec<OwnedFd>,
    /// Whether each case first leaves 4 KiB of `F` in flight in a fresh pipe.
    case_splices: bool,
    out: io::StdoutLock<'static>,
}

impl Drop for Battery {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Battery {
    fn new(case_splices: bool) -> Res<Battery> {
        let fmain = TempFile::with_pattern("fidelity-f", FLEN).map_err(|e| e.to_string())?;
        let gside = TempFile::with_pattern("fidelity-g", FLEN).map_err(|e| e.to_string())?;
        let dir = temp_path("fidelity-dir");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let link = temp_path("fidelity-link");
        std::os::unix::fs::symlink(fmain.path(), &link).map_err(|e| e.to_string())?;
        let bigfile = TempFile::with_pattern("fidelity-big", BIG_LEN).map_err(|e| e.to_string())?;
        let emptyfile = TempFile::with_pattern("fidelity-empty", 0).map_err(|e| e.to_string())?;
        let f = open_with(fmain.path(), true, true)?;
        let g = open_with(gside.path(), true, true)?;
        let f_rdonly = open_with(fmain.path(), false, true)?;
        let f_opath = open_flags(fmain.path(), libc::O_PATH)?;
        let big = open_with(bigfile.path(), false, true)?;
        let big_direct = open_flags(bigfile.path(), libc::O_RDONLY | libc::O_DIRECT)?;
        let empty = open_with(emptyfile.path(), false, true)?;
        let maps = open_with(Path::new("/proc/self/maps"), false, true)?;
        // SAFETY: a fresh anonymous mapping of our own (zero-filled), never unmapped.
        let ro_off = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ro_off == libc::MAP_FAILED {
            return Err(os_err("mmap"));
        }
        let mut b = Battery {
            f: f.as_raw_fd(),
            g: g.as_raw_fd(),
            f_rdonly: f_rdonly.as_raw_fd(),
            f_opath: f_opath.as_raw_fd(),
            big: big.as_raw_fd(),
            big_direct: big_direct.as_raw_fd(),
            empty: empty.as_raw_fd(),
            maps: maps.as_raw_fd(),
            ro_off: ro_off.cast(),
            f_path: cpath(fmain.path())?,
            dir_path: cpath(&dir)?,
            link_path: cpath(&link)?,
            files: vec![fmain, gside, TempFile::adopt(link), bigfile, emptyfile],
            dir: None,
            fds: vec![f, g, f_rdonly, f_opath, big, big_direct, empty, maps],
            case_splices,
            out: io::stdout().lock(),
        };
        b.dir = Some(dir);
        Ok(b)
    }

    /// A fresh pipe (kept open until the end); returns raw (read, write) fds.
    fn pipe(&mut self, flags: c_int) -> Res<(RawFd, RawFd)> {
        let (r, w) = pipe_with(flags)?;
        let fds = (r.as_raw_fd(), w.as_raw_fd());
        self.fds.push(r);
        self.fds.push(w);
        Ok(fds)
    }

    /// A fresh pipe holding 4 KiB spliced from `F` (a tracked pipe under the shim).
    fn loaded_pipe(&mut self, flags: c_int) -> Res<(RawFd, RawFd)> {
        let (r, w) = self.pipe(flags)?;
        splice_exact(self.f, 0, w, 4096)?;
        Ok((r, w))
    }

    /// A fresh pipe whose read end is closed (writing into it is `EPIPE`); its write end.
    fn pipe_without_readers(&mut self) -> Res<RawFd> {
        let (r, w) = self.pipe(0)?;
        self.close(r);
        Ok(w)
    }

    /// A fresh pipe holding `len` written bytes (so its next buffer starts a new page).
    fn written_pipe(&mut self, len: usize) -> Res<(RawFd, RawFd)> {
        let (r, w) = self.pipe(0)?;
        write_all(w, &vec![b'w'; len])?;
        Ok((r, w))
    }

    /// Closes `fd` (one end of a pipe made by [`Battery::pipe`]).
    fn close(&mut self, fd: RawFd) {
        self.fds.retain(|owned| owned.as_raw_fd() != fd);
    }

    /// A fresh, completely full pipe.
    fn full_pipe(&mut self, flags: c_int) -> Res<(RawFd, RawFd)> {
        let (r, w) = self.pipe(flags)?;
        fill(w)?;
        Ok((r, w))
    }

    /// Puts `F` back to its original 64 KiB content (after truncating cases).
    fn restore(&mut self) -> Res<()> {
        let data = pattern(FLEN);
        // SAFETY: data is valid for FLEN bytes.
        if unsafe { libc::pwrite(self.f, data.as_ptr().cast(), FLEN, 0) } != FLEN as isize {
            return Err(os_err("restore pwrite"));
        }
        // SAFETY: plain fd call.
        unsafe { libc::ftruncate(self.f, FLEN as off_t) };
        Ok(())
    }

    /// Runs one case: leaves 4 KiB of `F` in flight in a fresh pipe (unless told not
    /// to), clears `errno`, calls, and prints `name ret errno off=<F offset> size=<F
    /// size>`. The name is printed first: a call still running after [`CASE_TIMEOUT_S`]
    /// ends the process (`SIGALRM`), and the unfinished last line names it.
    fn case(&mut self, name: &str, call: impl FnOnce() -> i64) -> Res<()> {
        if self.case_splices {
            self.loaded_pipe(0)?;
        }
        write!(self.out, "{name} ")
            .and_then(|()| self.out.flush())
            .map_err(|e| e.to_string())?;
        set_errno(0);
        // SAFETY: alarm takes no pointer.
        unsafe { libc::alarm(CASE_TIMEOUT_S) };
        let ret = call();
        let e = errno();
        // SAFETY: as above; cancels the alarm.
        unsafe { libc::alarm(0) };
        // SAFETY: plain fd calls; st is a valid stat buffer.
        let (off, size) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(self.f, &mut st);
            (cursor(self.f), st.st_size)
        };
        writeln!(self.out, "{ret} {e} off={off} size={size}").map_err(|e| e.to_string())
    }

    /// Prints `name.what value` (pipe levels, offsets written back by the kernel).
    fn state(&mut self, name: &str, what: &str, value: impl std::fmt::Display) -> Res<()> {
        writeln!(self.out, "{name}.{what} {value}").map_err(|e| e.to_string())
    }

    /// Sets `F`'s offset.
    fn seek(&self, off: usize) {
        seek(self.f, off);
    }
}

/// A file→pipe call of the battery: `splice` with these flags, or `sendfile(64)`.
#[derive(Clone, Copy)]
enum FileToPipeFn {
    Splice(c_uint),
    Sendfile(SendfileFn),
}

impl FileToPipeFn {
    /// Moves up to `len` bytes of `from` at `*off` (null: at the fd's offset) into `to`.
    ///
    /// # Safety
    ///
    /// `off` is null, points at a `loff_t` the call may read and write, or deliberately
    /// at memory the kernel refuses (`EFAULT`), never at memory of this process that a
    /// write would corrupt.
    unsafe fn call(self, from: RawFd, off: *mut loff_t, to: RawFd, len: usize) -> isize {
        // SAFETY: the caller vouches for off; fds are plain numbers.
        unsafe {
            match self {
                FileToPipeFn::Splice(flags) => libc::splice(from, off, to, NULL_OFF, len, flags),
                FileToPipeFn::Sendfile(sf) => sf(to, from, off, len),
            }
        }
    }
}

/// A row of a table of file→pipe cases: name, source, `off_in` (`None`: the source's own
/// offset), destination (`None`: a fresh pipe), length.
type TransferRow<'a> = (&'a str, RawFd, Option<loff_t>, Option<RawFd>, usize);

impl Battery {
    /// Runs every row of `rows` through `via` ([`Battery::transfer`] or, into a fresh
    /// pipe, [`Battery::transfer_fresh`]), as `prefix.name`.
    fn transfers(&mut self, prefix: &str, via: FileToPipeFn, rows: &[TransferRow]) -> Res<()> {
        for &(case, from, off_in, into, len) in rows {
            let name = format!("{prefix}.{case}");
            match into {
                Some(to) => self.transfer(&name, via, from, off_in, to, len)?,
                None => self.transfer_fresh(&name, via, from, off_in, len)?,
            }
        }
        Ok(())
    }

    /// One file→pipe case through `via`: up to `len` bytes of `from` into `to`, with the
    /// offset pointer at a local holding `off_in` (`None`: a null pointer, the fd's own
    /// offset), which is printed after the call as the kernel left it.
    fn transfer(
        &mut self,
        name: &str,
        via: FileToPipeFn,
        from: RawFd,
        off_in: Option<loff_t>,
        to: RawFd,
        len: usize,
    ) -> Res<()> {
        let mut off = off_in.unwrap_or(0);
        let p: *mut loff_t = if off_in.is_some() { &mut off } else { NULL_OFF };
        // SAFETY: p is null or points at a live local.
        self.case(name, || unsafe { via.call(from, p, to, len) } as i64)?;
        if off_in.is_some() {
            self.state(name, "off_in", off)?;
        }
        Ok(())
    }

    /// [`Battery::transfer`] into a fresh pipe, whose level and content (read right
    /// away, before any case mutates a file) are printed after the case.
    fn transfer_fresh(
        &mut self,
        name: &str,
        via: FileToPipeFn,
        from: RawFd,
        off_in: Option<loff_t>,
        len: usize,
    ) -> Res<()> {
        let (r, w) = self.pipe(0)?;
        self.transfer(name, via, from, off_in, w, len)?;
        let level = queued(r);
        self.state(name, "queued", level)?;
        let mut got = vec![0u8; level];
        let mut done = 0;
        while done < level {
            // SAFETY: got[done..] is valid for writes; the pipe holds that many bytes.
            let n = unsafe { libc::read(r, got[done..].as_mut_ptr().cast(), level - done) };
            if n <= 0 {
                return Err(os_err("read back"));
            }
            done += n as usize;
        }
        self.state(name, "bytes_fnv", format!("{:016x}", fnv(FNV_START, &got)))
    }
}

/// Sets `fd`'s offset.
fn seek(fd: RawFd, off: usize) {
    // SAFETY: plain fd call.
    unsafe { libc::lseek(fd, off as off_t, libc::SEEK_SET) };
}

/// `fd`'s offset (-1 when it has none).
fn cursor(fd: RawFd) -> i64 {
    // SAFETY: plain fd call.
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

type SpliceFn =
    unsafe extern "C" fn(c_int, *mut loff_t, c_int, *mut loff_t, size_t, c_uint) -> ssize_t;
type SendfileFn = unsafe extern "C" fn(c_int, c_int, *mut off_t, size_t) -> ssize_t;
type PwriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t;
type PwritevFn = unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off_t) -> ssize_t;
type Pwritev2Fn = unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off_t, c_int) -> ssize_t;
type FallocateFn = unsafe extern "C" fn(c_int, c_int, off_t, off_t) -> c_int;
type FtruncateFn = unsafe extern "C" fn(c_int, off_t) -> c_int;
type TruncateFn = unsafe extern "C" fn(*const c_char, off_t) -> c_int;
type OpenFn = unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
type CreatFn = unsafe extern "C" fn(*const c_char, libc::mode_t) -> c_int;
type FopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;
type FreopenFn = unsafe extern "C" fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE;

/// `FIDEDUPERANGE`: `_IOWR(0x94, 54, struct file_dedupe_range)` (not in the libc crate).
const FIDEDUPERANGE: libc::c_ulong = 0xC018_9436;
const NULL_OFF: *mut loff_t = std::ptr::null_mut();
const NB: c_uint = libc::SPLICE_F_NONBLOCK;

/// `splice` and `tee`.
fn battery_splice(b: &mut Battery) -> Res<()> {
    battery_splice_errors(b)?;
    battery_splice_flags(b)?;
    battery_file_to_pipe(b, "splice", FileToPipeFn::Splice(0))?;
    battery_tee(b)
}

/// `splice` with bad fds, flags, offsets and lengths, and pipe→pipe / pipe→file.
fn battery_splice_errors(b: &mut Battery) -> Res<()> {
    let (f, g) = (b.f, b.g);
    let sp: SpliceFn = libc::splice;
    let (pr, pw) = b.pipe(0)?;
    let (lr, lw) = b.loaded_pipe(0)?;
    let (_, fw) = b.full_pipe(0)?;
    let (_, nfw) = b.full_pipe(libc::O_NONBLOCK)?;
    let f_wronly = open_with(Path::new(b.f_path.to_str().unwrap_or("")), true, false)?;
    let fwo = f_wronly.as_raw_fd();
    b.fds.push(f_wronly);
    let flen = FLEN as loff_t;
    // SAFETY: (all calls below) fds are open or deliberately invalid; offset pointers
    // point at live locals or are deliberately invalid (the kernel answers EFAULT).
    unsafe {
        let mut o: loff_t = 0;
        b.case("splice.bad_fd_in", || {
            sp(-1, NULL_OFF, pw, NULL_OFF, 4096, 0) as i64
        })?;
        b.case("splice.closed_fd_in", || {
            sp(CLOSED, NULL_OFF, pw, NULL_OFF, 4096, 0) as i64
        })?;
        b.case("splice.bad_fd_out", || {
            sp(f, &mut o, -1, NULL_OFF, 4096, 0) as i64
        })?;
        b.case("splice.closed_fd_out", || {
            sp(f, &mut o, CLOSED, NULL_OFF, 4096, 0) as i64
        })?;
        b.seek(0);
        b.case("splice.bad_flags", || {
            sp(f, NULL_OFF, pw, NULL_OFF, 4096, 0xffff_0000) as i64
        })?;
        b.state("splice.bad_flags", "queued", queued(pr))?;
        let mut eof = flen;
        b.case("splice.eof_off_in", || {
            sp(f, &mut eof, pw, NULL_OFF, 4096, 0) as i64
        })?;
        b.state("splice.eof_off_in", "off_in", eof)?;
        b.seek(FLEN);
        b.case("splice.eof_cursor", || {
            sp(f, NULL_OFF, pw, NULL_OFF, 4096, 0) as i64
        })?;
        b.seek(0);
        b.case("splice.efault_off_in", || {
            sp(f, bad(), pw, NULL_OFF, 4096, 0) as i64
        })?;
        b.case("splice.off_out_on_pipe", || {
            let mut oo: loff_t = 0;
            sp(f, &mut o, pw, &mut oo, 4096, 0) as i64
        })?;
        b.case("splice.efault_off_out_on_pipe", || {
            sp(f, &mut o, pw, bad(), 4096, 0) as i64
        })?;
        let mut neg: loff_t = -1;
        b.case("splice.negative_off_in", || {
            sp(f, &mut neg, pw, NULL_OFF, 4096, 0) as i64
        })?;
        b.case("splice.zero_len", || {
            sp(f, &mut o, pw, NULL_OFF, 0, 0) as i64
        })?;
        b.state("splice.zero_len", "queued", queued(pr))?;
        let (hr, hw) = b.pipe(0)?;
        let mut h: loff_t = 1000;
        b.case("splice.huge_len", || {
            sp(f, &mut h, hw, NULL_OFF, usize::MAX, 0) as i64
        })?;
        b.state("splice.huge_len", "queued", queued(hr))?;
        b.state("splice.huge_len", "off_in", h)?;
        let (gr, gw) = b.pipe(0)?;
        b.case("splice.large_len", || {
            sp(f, &mut h, gw, NULL_OFF, 1 << 30, 0) as i64
        })?;
        b.state("splice.large_len", "queued", queued(gr))?;
        let (cr, cw) = b.pipe(0)?;
        b.seek(100);
        b.case("splice.cursor", || {
            sp(f, NULL_OFF, cw, NULL_OFF, 1000, 0) as i64
        })?;
        b.state("splice.cursor", "queued", queued(cr))?;
        b.case("splice.file_to_file", || {
            let mut o2: loff_t = 0;
            sp(f, &mut o, g, &mut o2, 16, 0) as i64
        })?;
        b.case("splice.same_pipe", || {
            sp(lr, NULL_OFF, lw, NULL_OFF, 16, 0) as i64
        })?;
        b.case("splice.into_read_end", || {
            sp(f, &mut o, pr, NULL_OFF, 16, 0) as i64
        })?;
        b.case("splice.from_wronly", || {
            sp(fwo, &mut o, pw, NULL_OFF, 16, 0) as i64
        })?;
        b.case("splice.full_nonblock_flag", || {
            sp(f, &mut o, fw, NULL_OFF, 4096, NB) as i64
        })?;
        b.case("splice.full_onb_pipe", || {
            sp(f, &mut o, nfw, NULL_OFF, 4096, 0) as i64
        })?;
        b.state("splice.full_onb_pipe", "off_in", o)?;
        b.case("splice.pipe_to_file_negative_off", || {
            let mut n: loff_t = -1;
            sp(lr, NULL_OFF, g, &mut n, 16, 0) as i64
        })?;
        b.case("splice.pipe_to_file_efault_off", || {
            sp(lr, NULL_OFF, g, bad(), 16, 0) as i64
        })?;
        b.state("splice.pipe_to_file_efault_off", "queued", queued(lr))?;
        b.case("splice.empty_pipe_to_file_nonblock", || {
            let mut x: loff_t = 0;
            sp(pr, NULL_OFF, g, &mut x, 16, NB) as i64
        })?;
        let (_, p2w) = b.pipe(0)?;
        b.case("splice.pipe_to_pipe_bad_flags", || {
            sp(lr, NULL_OFF, p2w, NULL_OFF, 16, 0xffff_0000) as i64
        })?;
        b.case("splice.pipe_to_pipe_empty_nonblock", || {
            sp(pr, NULL_OFF, p2w, NULL_OFF, 16, NB) as i64
        })?;
        b.case("splice.pipe_to_pipe_full_nonblock", || {
            sp(lr, NULL_OFF, fw, NULL_OFF, 16, NB) as i64
        })?;
        b.case("splice.pipe_to_pipe_efault_off_in", || {
            sp(lr, bad(), p2w, NULL_OFF, 16, 0) as i64
        })?;
        b.case("splice.pipe_to_pipe_ok", || {
            sp(lr, NULL_OFF, p2w, NULL_OFF, 1000, 0) as i64
        })?;
        b.state("splice.pipe_to_pipe_ok", "queued", queued(lr))?;
        b.case("splice.pipe_to_file_ok", || {
            let mut x: loff_t = 100;
            sp(lr, NULL_OFF, f, &mut x, 16, 0) as i64
        })?;
    }
    Ok(())
}

/// file→pipe `splice` with valid and invalid flags.
fn battery_splice_flags(b: &mut Battery) -> Res<()> {
    let (f, flen) = (b.f, FLEN as loff_t);
    let (pr, _) = b.pipe(0)?;
    let (_, fw) = b.full_pipe(0)?;
    let valid = libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE | libc::SPLICE_F_GIFT | NB;
    let splice = FileToPipeFn::Splice;
    b.transfers(
        "splice",
        splice(valid),
        &[
            ("valid_flags", f, Some(0), None, 4096),
            ("valid_flags_cursor", f, None, None, 4096),
        ],
    )?;
    b.transfers(
        "splice",
        splice(0xffff_0000),
        &[
            ("bad_flags_off_in", f, Some(0), None, 16),
            ("bad_flags_zero_len", f, Some(0), None, 0),
            ("bad_flags_into_read_end", f, Some(0), Some(pr), 16),
        ],
    )?;
    b.transfers(
        "splice",
        splice(NB),
        &[("eof_full_nonblock_flag", f, Some(flen), Some(fw), 4096)],
    )
}

/// The file→pipe cases of every call of the family (`splice`, `sendfile`, `sendfile64`,
/// as `name` through `via`): odd sources (empty, `O_PATH`, `O_DIRECT`, `/proc`), odd
/// offsets and lengths, pipes full, partly full, grown, in packet mode or without
/// readers, offsets the kernel cannot write back. What the copy path must answer like
/// the kernel: `tests/fidelity.rs` also runs the battery in copy mode and with the
/// registry's pipe table full.
fn battery_file_to_pipe(b: &mut Battery, name: &str, via: FileToPipeFn) -> Res<()> {
    let (f, big, empty, opath, maps, direct) =
        (b.f, b.big, b.empty, b.f_opath, b.maps, b.big_direct);
    let (flen, blen, beyond) = (FLEN as loff_t, BIG_LEN as loff_t, BEYOND_MAX_FILE_SIZE);
    let (pr, pw) = b.pipe(0)?;
    let (_, nfw) = b.full_pipe(libc::O_NONBLOCK)?;
    let nrw = b.pipe_without_readers()?;
    let pw_opath = open_flags(Path::new(&format!("/proc/self/fd/{pw}")), libc::O_PATH)?;
    let pwo = pw_opath.as_raw_fd();
    b.fds.push(pw_opath);
    let version = open_with(Path::new("/proc/version"), false, true)?;
    let ver = version.as_raw_fd();
    b.fds.push(version);
    let (ar, aw) = b.written_pipe(16)?;
    let (ur, uw) = b.written_pipe(16)?;
    let (gr, gw) = b.pipe(0)?;
    // Half the file: the pipe fills before the file ends.
    ensure_pipe_capacity(&gw, BIG_LEN / 2).map_err(|e| e.to_string())?;
    // One row a line (rustfmt would spread the longer ones over seven).
    #[rustfmt::skip]
    let rows: [TransferRow; 33] = [
        ("empty_file", empty, Some(0), None, 4096),
        ("empty_file_cursor", empty, None, None, 4096),
        ("empty_file_into_read_end", empty, None, Some(pr), 4096),
        ("empty_file_into_o_path_pipe", empty, None, Some(pwo), 4096),
        ("into_o_path_pipe", f, Some(0), Some(pwo), 4096),
        ("o_path", opath, Some(0), None, 4096),
        ("o_path_cursor", opath, None, None, 4096),
        ("proc_maps", maps, Some(0), None, 16),
        ("proc_maps_cursor", maps, None, None, 16),
        ("proc_maps_into_read_end", maps, None, Some(pr), 16),
        ("proc_maps_no_readers", maps, None, Some(nrw), 16),
        ("proc_version", ver, Some(0), None, 16),
        ("o_direct_aligned", direct, Some(0), None, 4096),
        ("o_direct_unaligned_len", direct, Some(0), None, 100),
        ("o_direct_unaligned_offset", direct, Some(100), None, 4096),
        ("unaligned_offset", big, Some(100), None, 1 << 20),
        ("len_over_max_rw_count", big, Some(0), None, 1 << 40),
        ("across_eof", big, Some(blen - 100), None, 4096),
        ("aligned_into_partly_full_pipe", big, Some(0), Some(aw), 1 << 20),
        ("unaligned_into_partly_full_pipe", big, Some(100), Some(uw), 1 << 20),
        ("unaligned_into_grown_pipe", big, Some(100), Some(gw), 1 << 20),
        ("zero_len_into_read_end", f, Some(0), Some(pr), 0),
        ("zero_len_into_full_onb_pipe", f, Some(0), Some(nfw), 0),
        ("zero_len_no_readers", f, Some(0), Some(nrw), 0),
        ("eof_into_full_onb_pipe", f, Some(flen), Some(nfw), 4096),
        ("huge_len_into_full_onb_pipe", f, Some(0), Some(nfw), usize::MAX),
        ("huge_len_into_read_end", f, Some(0), Some(pr), usize::MAX),
        ("negative_offset_into_full_onb_pipe", f, Some(-1), Some(nfw), 16),
        ("negative_offset_into_read_end", f, Some(-1), Some(pr), 16),
        ("no_readers", f, Some(0), Some(nrw), 4096),
        ("eof_no_readers", f, Some(flen), Some(nrw), 4096),
        ("offset_near_max", big, Some(i64::MAX - 10), None, 4096),
        ("offset_beyond_max_file_size", big, Some(beyond), None, 16),
    ];
    b.transfers(name, via, &rows)?;
    let n = |case: &str| format!("{name}.{case}");
    for (case, r) in [
        ("aligned_into_partly_full_pipe", ar),
        ("unaligned_into_partly_full_pipe", ur),
        ("unaligned_into_grown_pipe", gr),
    ] {
        b.state(&n(case), "queued", queued(r))?;
    }
    seek(big, 100);
    b.transfer_fresh(&n("unaligned_cursor"), via, big, None, 1 << 20)?;
    b.state(&n("unaligned_cursor"), "cursor", cursor(big))?;
    // Packet mode: what one read (larger than the pipe) returns at a time.
    let (kr, kw) = b.pipe(libc::O_DIRECT)?;
    b.transfer(&n("into_packet_pipe"), via, big, Some(100), kw, 10000)?;
    write_all(kw, b"packet")?;
    b.transfer(&n("into_packet_pipe_again"), via, big, Some(0), kw, 4096)?;
    b.state(&n("into_packet_pipe"), "reads", read_sizes(kr)?)?;
    // Offset pointers the kernel cannot read, or reads and cannot write back (EFAULT
    // after the bytes moved).
    let (rr, rw) = b.pipe(0)?;
    let ro_off = b.ro_off;
    let pointer_cases: [(&str, *mut loff_t, RawFd, usize); 4] = [
        ("zero_len_efault_offset", bad(), rw, 0),
        ("read_only_offset_into_read_end", ro_off, pr, 16),
        ("read_only_offset_zero_len", ro_off, rw, 0),
        ("read_only_offset", ro_off, rw, 4096),
    ];
    for (case, off, to, len) in pointer_cases {
        // SAFETY: off is deliberately unreadable, or points into a read-only page of
        // ours: nothing of this process can be written through it.
        b.case(&n(case), || unsafe { via.call(big, off, to, len) } as i64)?;
    }
    b.state(&n("read_only_offset"), "queued", queued(rr))?;
    Ok(())
}

/// `tee`.
fn battery_tee(b: &mut Battery) -> Res<()> {
    let f = b.f;
    let (_, fw) = b.full_pipe(0)?;
    // SAFETY: (all calls below) fds are open or deliberately invalid.
    unsafe {
        let (er, ew) = b.pipe(0)?;
        let (tr, tw) = b.loaded_pipe(0)?;
        let (dr, dw) = b.pipe(0)?;
        let (nr, nw) = b.pipe(0)?;
        b.close(nw); // a pipe without writers
        b.case("tee.bad_fd_in", || libc::tee(-1, dw, 4096, 0) as i64)?;
        b.case("tee.closed_fd_out", || {
            libc::tee(tr, CLOSED, 4096, 0) as i64
        })?;
        b.case("tee.bad_flags", || {
            libc::tee(tr, dw, 4096, 0xffff_0000) as i64
        })?;
        b.case("tee.empty_nonblock", || libc::tee(er, dw, 4096, NB) as i64)?;
        b.case("tee.no_writers", || libc::tee(nr, dw, 4096, NB) as i64)?;
        b.case("tee.from_file", || libc::tee(f, dw, 4096, 0) as i64)?;
        b.case("tee.same_pipe", || libc::tee(tr, tw, 4096, 0) as i64)?;
        b.case("tee.full_nonblock", || libc::tee(tr, fw, 4096, NB) as i64)?;
        b.case("tee.zero_len", || libc::tee(tr, dw, 0, 0) as i64)?;
        b.case("tee.huge_len", || libc::tee(tr, dw, usize::MAX, 0) as i64)?;
        b.state("tee.huge_len", "queued_src", queued(tr))?;
        b.state("tee.huge_len", "queued_dst", queued(dr))?;
        let _ = ew;
    }
    Ok(())
}

/// `sendfile` and `sendfile64`.
fn battery_sendfile(b: &mut Battery) -> Res<()> {
    let (f, g) = (b.f, b.g);
    let fns: [(&str, SendfileFn); 2] = [
        ("sendfile", libc::sendfile),
        ("sendfile64", libc::sendfile64),
    ];
    for (name, sf) in fns {
        let (pr, pw) = b.pipe(0)?;
        let (_, nfw) = b.full_pipe(libc::O_NONBLOCK)?;
        let (lr, _) = b.loaded_pipe(0)?;
        let n = |case: &str| format!("{name}.{case}");
        // SAFETY: (all calls below) fds are open or deliberately invalid; offset
        // pointers point at live locals or are deliberately invalid.
        unsafe {
            let mut o: off_t = 0;
            b.case(&n("bad_fd_in"), || sf(pw, -1, &mut o, 4096) as i64)?;
            b.case(&n("closed_fd_out"), || sf(CLOSED, f, &mut o, 4096) as i64)?;
            b.case(&n("efault_offset"), || sf(pw, f, bad(), 4096) as i64)?;
            b.case(&n("negative_offset"), || {
                let mut x: off_t = -1;
                sf(pw, f, &mut x, 4096) as i64
            })?;
            b.case(&n("eof"), || {
                let mut x = FLEN as off_t;
                sf(pw, f, &mut x, 4096) as i64
            })?;
            b.case(&n("zero_count"), || sf(pw, f, &mut o, 0) as i64)?;
            b.case(&n("full_onb_pipe"), || sf(nfw, f, &mut o, 4096) as i64)?;
            b.case(&n("into_read_end"), || sf(pr, f, &mut o, 4096) as i64)?;
            b.case(&n("from_pipe"), || {
                sf(pw, lr, std::ptr::null_mut(), 16) as i64
            })?;
            b.state(&n("from_pipe"), "queued", queued(lr))?;
            let mut x: off_t = 500;
            b.case(&n("ok_offset"), || sf(pw, f, &mut x, 3000) as i64)?;
            b.state(&n("ok_offset"), "offset", x)?;
            b.state(&n("ok_offset"), "queued", queued(pr))?;
            b.seek(700);
            b.case(&n("ok_cursor"), || {
                sf(pw, f, std::ptr::null_mut(), 1000) as i64
            })?;
            let (hr, hw) = b.pipe(0)?;
            b.case(&n("huge_count"), || sf(hw, f, &mut o, usize::MAX) as i64)?;
            b.state(&n("huge_count"), "queued", queued(hr))?;
            let (gr, gw) = b.pipe(0)?;
            b.case(&n("large_count"), || sf(gw, f, &mut o, 1 << 30) as i64)?;
            b.state(&n("large_count"), "queued", queued(gr))?;
            b.case(&n("file_to_file"), || {
                let mut x: off_t = 0;
                libc::lseek(f, 200, libc::SEEK_SET);
                sf(f, g, &mut x, 16) as i64
            })?;
        }
        battery_file_to_pipe(b, name, FileToPipeFn::Sendfile(sf))?;
    }
    Ok(())
}

/// `write` and `writev`, into files and into tracked pipes.
fn battery_write(b: &mut Battery) -> Res<()> {
    let (f, fro) = (b.f, b.f_rdonly);
    let data = [b'W'; 65536];
    let buf = data.as_ptr().cast::<c_void>();
    let iov = |base: *const c_void, len: usize| libc::iovec {
        iov_base: base as *mut c_void,
        iov_len: len,
    };
    let two = [iov(buf, 8), iov(buf, 8)];
    let bad_base = [iov(bad(), 16)];
    let overflow = [iov(buf, isize::MAX as usize), iov(buf, isize::MAX as usize)];
    let many: Vec<libc::iovec> = (0..65).map(|_| iov(buf, 1)).collect();
    let too_many: Vec<libc::iovec> = (0..1025).map(|_| iov(buf, 1)).collect();
    let ew = b.pipe_without_readers()?;
    let (tr, tw) = b.loaded_pipe(libc::O_NONBLOCK)?;
    // SAFETY: (all calls below) buffers and iovecs are live locals, or pointers are
    // deliberately invalid (EFAULT); fds are open or deliberately invalid.
    unsafe {
        b.seek(200);
        b.case("write.bad_fd", || libc::write(-1, buf, 16) as i64)?;
        b.case("write.closed_fd", || libc::write(CLOSED, buf, 16) as i64)?;
        b.case("write.efault", || libc::write(f, bad(), 16) as i64)?;
        b.case("write.efault_huge_len", || {
            libc::write(f, bad(), usize::MAX) as i64
        })?;
        b.case("write.rdonly", || libc::write(fro, buf, 16) as i64)?;
        b.case("write.zero_len", || libc::write(f, bad(), 0) as i64)?;
        b.case("write.ok", || libc::write(f, buf, 16) as i64)?;
        b.case("write.epipe", || libc::write(ew, buf, 16) as i64)?;
        b.case("write.tracked_pipe_efault", || {
            libc::write(tw, bad(), 16) as i64
        })?;
        b.case("write.tracked_pipe_ok", || libc::write(tw, buf, 16) as i64)?;
        b.case("write.tracked_pipe_partial", || {
            libc::write(tw, buf, 65536) as i64
        })?;
        b.case("write.tracked_pipe_full", || {
            libc::write(tw, buf, 16) as i64
        })?;
        b.state("write.tracked_pipe_full", "queued", queued(tr))?;

        let (tr, tw) = b.loaded_pipe(libc::O_NONBLOCK)?;
        b.seek(300);
        b.case("writev.bad_fd", || libc::writev(-1, two.as_ptr(), 2) as i64)?;
        b.case("writev.efault_iov", || libc::writev(f, bad(), 1) as i64)?;
        b.case("writev.efault_base", || {
            libc::writev(f, bad_base.as_ptr(), 1) as i64
        })?;
        b.case("writev.negative_count", || {
            libc::writev(f, two.as_ptr(), -1) as i64
        })?;
        b.case("writev.too_many", || {
            libc::writev(f, too_many.as_ptr(), 1025) as i64
        })?;
        b.case("writev.zero_count", || libc::writev(f, bad(), 0) as i64)?;
        b.case("writev.overflow", || {
            libc::writev(f, overflow.as_ptr(), 2) as i64
        })?;
        b.case("writev.rdonly", || {
            libc::writev(fro, two.as_ptr(), 2) as i64
        })?;
        b.case("writev.ok", || libc::writev(f, two.as_ptr(), 2) as i64)?;
        b.case("writev.epipe", || libc::writev(ew, two.as_ptr(), 2) as i64)?;
        b.case("writev.tracked_pipe_efault_iov", || {
            libc::writev(tw, bad(), 1) as i64
        })?;
        b.case("writev.tracked_pipe_efault_base", || {
            libc::writev(tw, bad_base.as_ptr(), 1) as i64
        })?;
        b.case("writev.tracked_pipe_negative_count", || {
            libc::writev(tw, two.as_ptr(), -1) as i64
        })?;
        b.case("writev.tracked_pipe_65_iovs", || {
            libc::writev(tw, many.as_ptr(), 65) as i64
        })?;
        b.case("writev.tracked_pipe_ok", || {
            libc::writev(tw, two.as_ptr(), 2) as i64
        })?;
        let big = [iov(buf, 40000), iov(buf, 40000)];
        b.case("writev.tracked_pipe_partial", || {
            libc::writev(tw, big.as_ptr(), 2) as i64
        })?;
        b.case("writev.tracked_pipe_full", || {
            libc::writev(tw, two.as_ptr(), 2) as i64
        })?;
        b.state("writev.tracked_pipe_full", "queued", queued(tr))?;
    }
    Ok(())
}

/// `pwrite*`, `pwritev*`.
fn battery_pwrite(b: &mut Battery) -> Res<()> {
    let (f, fro) = (b.f, b.f_rdonly);
    let data = [b'P'; 64];
    let buf = data.as_ptr().cast::<c_void>();
    let two = [
        libc::iovec {
            iov_base: buf as *mut c_void,
            iov_len: 8,
        },
        libc::iovec {
            iov_base: buf as *mut c_void,
            iov_len: 8,
        },
    ];
    let iv = two.as_ptr();
    let (_, pw) = b.loaded_pipe(0)?;
    let huge = i64::MAX - 8;
    let pwrites: [(&str, PwriteFn); 2] = [("pwrite", libc::pwrite), ("pwrite64", libc::pwrite64)];
    let pwritevs: [(&str, PwritevFn); 2] =
        [("pwritev", libc::pwritev), ("pwritev64", libc::pwritev64)];
    let pwritev2s: [(&str, Pwritev2Fn); 2] = [
        ("pwritev2", libc::pwritev2),
        ("pwritev64v2", libc::pwritev64v2),
    ];
    // SAFETY: (all calls below) buffers and iovecs are live locals or deliberately
    // invalid pointers; fds are open or deliberately invalid.
    unsafe {
        for (name, w) in pwrites {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("bad_fd"), || w(-1, buf, 16, 0) as i64)?;
            b.case(&n("negative_offset"), || w(f, buf, 16, -1) as i64)?;
            b.case(&n("pipe"), || w(pw, buf, 16, 0) as i64)?;
            b.case(&n("efault"), || w(f, bad(), 16, 100) as i64)?;
            b.case(&n("efault_huge_len"), || {
                w(f, bad(), usize::MAX, 100) as i64
            })?;
            b.case(&n("rdonly"), || w(fro, buf, 16, 100) as i64)?;
            b.case(&n("huge_offset"), || w(f, buf, 16, huge) as i64)?;
            b.case(&n("zero_len"), || w(f, buf, 0, 100) as i64)?;
            b.case(&n("ok"), || w(f, buf, 16, 100) as i64)?;
        }
        for (name, w) in pwritevs {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("bad_fd"), || w(-1, iv, 2, 0) as i64)?;
            b.case(&n("negative_offset"), || w(f, iv, 2, -1) as i64)?;
            b.case(&n("pipe"), || w(pw, iv, 2, 0) as i64)?;
            b.case(&n("efault_iov"), || w(f, bad(), 1, 100) as i64)?;
            b.case(&n("negative_count"), || w(f, iv, -1, 100) as i64)?;
            b.case(&n("huge_offset"), || w(f, iv, 2, huge) as i64)?;
            b.case(&n("ok"), || w(f, iv, 2, 100) as i64)?;
        }
        for (name, w) in pwritev2s {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("bad_fd"), || w(-1, iv, 2, 0, 0) as i64)?;
            b.case(&n("bad_flags"), || w(f, iv, 2, 100, 0x7fff_0000) as i64)?;
            b.case(&n("offset_minus_2"), || w(f, iv, 2, -2, 0) as i64)?;
            b.case(&n("pipe_offset_0"), || w(pw, iv, 2, 0, 0) as i64)?;
            b.case(&n("efault_iov"), || w(f, bad(), 1, 100, 0) as i64)?;
            b.case(&n("nowait"), || w(f, iv, 2, 100, libc::RWF_NOWAIT) as i64)?;
            b.case(&n("ok"), || w(f, iv, 2, 100, 0) as i64)?;
            b.seek(400);
            b.case(&n("cursor"), || w(f, iv, 2, -1, 0) as i64)?;
            b.case(&n("pipe_cursor"), || w(pw, iv, 2, -1, 0) as i64)?;
        }
    }
    Ok(())
}

/// `fallocate*`, `ftruncate*`, `truncate*`.
fn battery_sizes(b: &mut Battery) -> Res<()> {
    let (f, fro) = (b.f, b.f_rdonly);
    let (_, pw) = b.pipe(0)?;
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    let punch = libc::FALLOC_FL_PUNCH_HOLE | keep;
    let falls: [(&str, FallocateFn); 2] = [
        ("fallocate", libc::fallocate),
        ("fallocate64", libc::fallocate64),
    ];
    let ftruncs: [(&str, FtruncateFn); 2] = [
        ("ftruncate", libc::ftruncate),
        ("ftruncate64", libc::ftruncate64),
    ];
    let truncs: [(&str, TruncateFn); 2] = [
        ("truncate", libc::truncate),
        ("truncate64", libc::truncate64),
    ];
    let missing = c"/var/tmp/splicecow-fidelity-missing/none";
    let empty = c"";
    let long = CString::new(vec![b'a'; 5000]).map_err(|e| e.to_string())?;
    let (fp, dp) = (b.f_path.as_ptr(), b.dir_path.as_ptr());
    // SAFETY: (all calls below) fds are open or deliberately invalid; paths are live
    // NUL-terminated strings or deliberately null/invalid (EFAULT).
    unsafe {
        for (name, fa) in falls {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("bad_mode"), || fa(f, 0x4000, 0, 4096).into())?;
            b.case(&n("punch_without_keep_size"), || {
                fa(f, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096).into()
            })?;
            b.case(&n("negative_offset"), || fa(f, punch, -1, 4096).into())?;
            b.case(&n("zero_len"), || fa(f, punch, 0, 0).into())?;
            b.case(&n("bad_fd"), || fa(-1, punch, 0, 4096).into())?;
            b.case(&n("closed_fd"), || fa(CLOSED, punch, 0, 4096).into())?;
            b.case(&n("pipe"), || fa(pw, punch, 0, 4096).into())?;
            b.case(&n("rdonly"), || fa(fro, punch, 0, 4096).into())?;
            b.case(&n("overflow"), || {
                fa(f, punch, i64::MAX - 4096, 8192).into()
            })?;
            b.case(&n("huge_len"), || fa(f, punch, 4096, i64::MAX).into())?;
            b.case(&n("collapse_unaligned"), || {
                fa(f, libc::FALLOC_FL_COLLAPSE_RANGE, 100, 4096).into()
            })?;
            b.case(&n("allocate_ok"), || fa(f, 0, 0, 4096).into())?;
            b.case(&n("punch_ok"), || fa(f, punch, 40960, 4096).into())?;
        }
        b.restore()?;
        for (name, ft) in ftruncs {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("negative"), || ft(f, -1).into())?;
            b.case(&n("bad_fd"), || ft(-1, 0).into())?;
            b.case(&n("pipe"), || ft(pw, 0).into())?;
            b.case(&n("rdonly"), || ft(fro, 0).into())?;
            b.case(&n("huge"), || ft(f, i64::MAX).into())?;
            b.case(&n("same_size"), || ft(f, FLEN as off_t).into())?;
            b.case(&n("shrink"), || ft(f, 60000).into())?;
            b.restore()?;
        }
        for (name, t) in truncs {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("null_path"), || t(std::ptr::null(), 0).into())?;
            b.case(&n("bad_path"), || t(bad(), 0).into())?;
            b.case(&n("missing"), || t(missing.as_ptr(), 0).into())?;
            b.case(&n("empty_path"), || t(empty.as_ptr(), 0).into())?;
            b.case(&n("too_long"), || t(long.as_ptr(), 0).into())?;
            b.case(&n("negative"), || t(fp, -1).into())?;
            b.case(&n("directory"), || t(dp, 0).into())?;
            b.case(&n("huge"), || t(fp, i64::MAX).into())?;
            b.case(&n("shrink"), || t(fp, 50000).into())?;
            b.restore()?;
        }
    }
    Ok(())
}

/// Closes an fd a case opened (not printed).
fn close_ret(fd: c_int) -> i64 {
    if fd >= 0 {
        // SAFETY: the fd was just opened by the case and is owned by nobody else.
        unsafe { libc::close(fd) };
    }
    fd.into()
}

/// Closes a stream a case opened and maps it with [`ptr_ret`].
fn fclose_ret(stream: *mut FILE) -> i64 {
    if !stream.is_null() {
        // SAFETY: the stream was just opened by the case and is used nowhere else.
        unsafe { libc::fclose(stream) };
    }
    ptr_ret(stream)
}

/// `open*`, `openat*`, `creat*`, `fopen*`, `freopen*`.
fn battery_open(b: &mut Battery) -> Res<()> {
    let (fp, dp, lp) = (b.f_path.as_ptr(), b.dir_path.as_ptr(), b.link_path.as_ptr());
    let f = b.f;
    let missing = c"/var/tmp/splicecow-fidelity-missing/none";
    let rel = c"splicecow-fidelity-relative";
    let wt = libc::O_WRONLY | libc::O_TRUNC;
    let opens: [(&str, OpenFn); 2] = [("open", libc::open), ("open64", libc::open64)];
    let openats: [(&str, OpenatFn); 2] = [("openat", libc::openat), ("openat64", libc::openat64)];
    let creats: [(&str, CreatFn); 2] = [("creat", libc::creat), ("creat64", libc::creat64)];
    let fopens: [(&str, FopenFn); 2] = [("fopen", libc::fopen), ("fopen64", libc::fopen64)];
    let freopens: [(&str, FreopenFn); 2] =
        [("freopen", libc::freopen), ("freopen64", libc::freopen64)];
    let (w, r, z) = (c"w".as_ptr(), c"r".as_ptr(), c"z".as_ptr());
    // SAFETY: (all calls below) paths and modes are live NUL-terminated strings or
    // deliberately null/invalid (EFAULT); returned fds and streams are closed once.
    unsafe {
        for (name, o) in opens {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("null_path"), || close_ret(o(std::ptr::null(), wt)))?;
            b.case(&n("bad_path"), || close_ret(o(bad(), wt)))?;
            b.case(&n("missing"), || close_ret(o(missing.as_ptr(), wt)))?;
            b.case(&n("creat_missing_dir"), || {
                close_ret(o(missing.as_ptr(), libc::O_CREAT | wt, 0o600))
            })?;
            b.case(&n("trunc_directory"), || close_ret(o(dp, wt)))?;
            b.case(&n("creat_directory_flag"), || {
                close_ret(o(fp, libc::O_CREAT | libc::O_DIRECTORY, 0o600))
            })?;
            b.case(&n("excl_exists"), || {
                close_ret(o(fp, libc::O_CREAT | libc::O_EXCL | wt, 0o600))
            })?;
            b.case(&n("nofollow_symlink"), || {
                close_ret(o(lp, libc::O_NOFOLLOW | wt))
            })?;
            b.case(&n("read_ok"), || close_ret(o(fp, libc::O_RDONLY)))?;
            b.case(&n("trunc_ok"), || close_ret(o(fp, wt)))?;
            b.restore()?;
        }
        for (name, o) in openats {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("null_path"), || {
                close_ret(o(libc::AT_FDCWD, std::ptr::null(), wt))
            })?;
            b.case(&n("bad_dirfd_relative"), || {
                close_ret(o(CLOSED, rel.as_ptr(), wt))
            })?;
            b.case(&n("file_dirfd_relative"), || {
                close_ret(o(f, rel.as_ptr(), wt))
            })?;
            b.case(&n("missing"), || {
                close_ret(o(libc::AT_FDCWD, missing.as_ptr(), wt))
            })?;
            b.case(&n("trunc_directory"), || {
                close_ret(o(libc::AT_FDCWD, dp, wt))
            })?;
            b.case(&n("bad_flags"), || {
                close_ret(o(
                    libc::AT_FDCWD,
                    fp,
                    libc::O_CREAT | libc::O_DIRECTORY,
                    0o600,
                ))
            })?;
            b.case(&n("bad_dirfd_absolute_trunc_ok"), || {
                close_ret(o(CLOSED, fp, wt))
            })?;
            b.restore()?;
            b.case(&n("trunc_rdonly_ok"), || {
                close_ret(o(libc::AT_FDCWD, fp, libc::O_RDONLY | libc::O_TRUNC))
            })?;
            b.restore()?;
        }
        for (name, c) in creats {
            let n = |x: &str| format!("{name}.{x}");
            b.case(&n("null_path"), || close_ret(c(std::ptr::null(), 0o600)))?;
            b.case(&n("missing_dir"), || close_ret(c(missing.as_ptr(), 0o600)))?;
            b.case(&n("directory"), || close_ret(c(dp, 0o600)))?;
            b.case(&n("ok"), || close_ret(c(fp, 0o600)))?;
            b.restore()?;
        }
        for (name, fo) in fopens {
            let n = |x: &str| format!("{name}.{x}");
            b.case(&n("null_path"), || fclose_ret(fo(std::ptr::null(), r)))?;
            b.case(&n("bad_mode"), || fclose_ret(fo(fp, z)))?;
            b.case(&n("missing"), || fclose_ret(fo(missing.as_ptr(), r)))?;
            b.case(&n("directory_w"), || fclose_ret(fo(dp, w)))?;
            b.case(&n("read_ok"), || fclose_ret(fo(fp, r)))?;
            b.case(&n("write_ok"), || fclose_ret(fo(fp, w)))?;
            b.restore()?;
        }
        for (name, fr) in freopens {
            let n = |x: &str| format!("{name}.{x}");
            let stream = || libc::fopen(fp, r);
            b.case(&n("missing"), || {
                fclose_ret(fr(missing.as_ptr(), r, stream()))
            })?;
            b.case(&n("bad_mode"), || fclose_ret(fr(fp, z, stream())))?;
            b.case(&n("directory_w"), || fclose_ret(fr(dp, w, stream())))?;
            b.case(&n("null_path_w"), || {
                fclose_ret(fr(std::ptr::null(), w, stream()))
            })?;
            b.restore()?;
            b.case(&n("write_ok"), || fclose_ret(fr(fp, w, stream())))?;
            b.restore()?;
        }
    }
    Ok(())
}

/// Issue 3's hooks: mappings, `copy_file_range`, `ioctl`, stdio output.
fn battery_issue3(b: &mut Battery) -> Res<()> {
    let (f, g, fro) = (b.f, b.g, b.f_rdonly);
    let (pr, pw) = b.loaded_pipe(0)?;
    let (fp, r, rp) = (b.f_path.as_ptr(), c"r".as_ptr(), c"r+".as_ptr());
    let (rw, sh, pv) = (
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        libc::MAP_PRIVATE,
    );
    let null = std::ptr::null_mut::<c_void>();
    let mmap_unmap = |len: usize, prot, flags, fd, off| {
        // SAFETY: a fresh mapping (or MAP_FAILED) of our own, unmapped right away.
        unsafe {
            let p = libc::mmap(null, len, prot, flags, fd, off);
            if p != libc::MAP_FAILED {
                libc::munmap(p, len);
            }
            map_ret(p)
        }
    };
    let data = [b'S'; 16];
    // SAFETY: (all calls below) fds are open or deliberately invalid; addresses are our
    // own mappings or deliberately unmapped/unaligned; buffers are live locals; streams
    // are opened by the case and closed once.
    unsafe {
        b.case("mmap.bad_fd", || {
            mmap_unmap(4096, libc::PROT_READ, pv, -1, 0)
        })?;
        b.case("mmap.closed_fd", || {
            mmap_unmap(4096, libc::PROT_READ, sh, CLOSED, 0)
        })?;
        b.case("mmap.zero_len", || mmap_unmap(0, libc::PROT_READ, sh, f, 0))?;
        b.case("mmap.no_type", || {
            mmap_unmap(4096, libc::PROT_READ, 0, f, 0)
        })?;
        b.case("mmap.unaligned_offset", || {
            mmap_unmap(4096, libc::PROT_READ, sh, f, 100)
        })?;
        b.case("mmap.shared_write_rdonly_fd", || {
            mmap_unmap(4096, rw, sh, fro, 0)
        })?;
        b.case("mmap.pipe", || mmap_unmap(4096, libc::PROT_READ, sh, pr, 0))?;
        b.case("mmap.huge_len", || {
            mmap_unmap(usize::MAX - 4095, libc::PROT_READ, pv, f, 0)
        })?;
        b.case("mmap.shared_write_ok", || mmap_unmap(FLEN, rw, sh, f, 0))?;
        b.case("mmap.private_ok", || mmap_unmap(FLEN, rw, pv, f, 0))?;
        b.case("munmap.unaligned", || libc::munmap(bad(), 4096).into())?;
        b.case("munmap.zero_len", || {
            libc::munmap(0x10000 as *mut c_void, 0).into()
        })?;
        b.case("munmap.unmapped", || {
            libc::munmap(0x10000 as *mut c_void, 4096).into()
        })?;
        b.case("mprotect.unaligned", || {
            libc::mprotect(bad(), 4096, libc::PROT_READ).into()
        })?;
        b.case("mprotect.unmapped", || {
            libc::mprotect(0x10000 as *mut c_void, 4096, libc::PROT_READ).into()
        })?;
        let ro = libc::mmap(null, FLEN, libc::PROT_READ, sh, fro, 0);
        let rdw = libc::mmap(null, FLEN, libc::PROT_READ, sh, f, 0);
        if ro == libc::MAP_FAILED || rdw == libc::MAP_FAILED {
            return Err(os_err("mmap"));
        }
        b.case("mprotect.write_rdonly_shared", || {
            libc::mprotect(ro, FLEN, rw).into()
        })?;
        b.case("mprotect.bad_prot", || {
            libc::mprotect(rdw, FLEN, 0x0100_0000).into()
        })?;
        b.case("mprotect.write_ok", || libc::mprotect(rdw, FLEN, rw).into())?;
        b.case("mremap.unmapped", || {
            map_ret(libc::mremap(0x10000 as *mut c_void, 4096, 8192, 0))
        })?;
        b.case("mremap.bad_flags", || {
            map_ret(libc::mremap(rdw, FLEN, FLEN, 0x7000_0000))
        })?;
        b.case("mremap.shrink_ok", || {
            map_ret(libc::mremap(rdw, FLEN, 8192, 0))
        })?;
        b.case("munmap.ok", || libc::munmap(rdw, 8192).into())?;
        b.case("munmap.ok_rdonly", || libc::munmap(ro, FLEN).into())?;

        let cfr = |fin, oin: *mut loff_t, fout, oout: *mut loff_t, len, fl| {
            libc::copy_file_range(fin, oin, fout, oout, len, fl) as i64
        };
        let (mut a, mut c): (loff_t, loff_t) = (0, 100);
        b.case("copy_file_range.bad_fd", || {
            cfr(-1, &mut a, f, &mut c, 16, 0)
        })?;
        b.case("copy_file_range.closed_fd_out", || {
            cfr(g, &mut a, CLOSED, &mut c, 16, 0)
        })?;
        b.case("copy_file_range.bad_flags", || {
            cfr(g, &mut a, f, &mut c, 16, 1)
        })?;
        b.case("copy_file_range.pipe_in", || {
            cfr(pr, NULL_OFF, f, &mut c, 16, 0)
        })?;
        b.case("copy_file_range.pipe_out", || {
            cfr(g, &mut a, pw, NULL_OFF, 16, 0)
        })?;
        b.case("copy_file_range.negative_off", || {
            let mut n: loff_t = -1;
            cfr(g, &mut a, f, &mut n, 16, 0)
        })?;
        b.case("copy_file_range.efault_off_in", || {
            cfr(g, bad(), f, &mut c, 16, 0)
        })?;
        b.case("copy_file_range.rdonly_out", || {
            cfr(g, &mut a, fro, &mut c, 16, 0)
        })?;
        b.case("copy_file_range.same_file_overlap", || {
            let (mut x, mut y): (loff_t, loff_t) = (0, 100);
            cfr(f, &mut x, f, &mut y, 4096, 0)
        })?;
        b.case("copy_file_range.zero_len", || {
            cfr(g, &mut a, f, &mut c, 0, 0)
        })?;
        b.case("copy_file_range.ok", || cfr(g, &mut a, f, &mut c, 16, 0))?;
        b.state("copy_file_range.ok", "offsets", format!("{a},{c}"))?;
        b.case("copy_file_range.huge_len", || {
            let (mut x, mut y): (loff_t, loff_t) = (FLEN as loff_t - 100, 0);
            cfr(g, &mut x, f, &mut y, usize::MAX, 0)
        })?;

        let mut n: c_int = -1;
        b.case("ioctl.ficlone_pipe_dest", || {
            libc::ioctl(pw, libc::FICLONE, g).into()
        })?;
        b.case("ioctl.ficlone_pipe_src", || {
            libc::ioctl(f, libc::FICLONE, pr).into()
        })?;
        b.case("ioctl.ficlone_bad_src", || {
            libc::ioctl(f, libc::FICLONE, -1).into()
        })?;
        b.case("ioctl.fionread_pipe", || {
            libc::ioctl(pr, libc::FIONREAD, &mut n).into()
        })?;
        b.state("ioctl.fionread_pipe", "value", n)?;
        b.case("ioctl.fionread_efault", || {
            libc::ioctl(pr, libc::FIONREAD, bad::<c_int>()).into()
        })?;
        b.case("ioctl.bad_fd", || {
            libc::ioctl(-1, libc::FIONREAD, &mut n).into()
        })?;
        b.case("ioctl.unknown_request", || {
            libc::ioctl(f, 0x7fff_1234, &mut n).into()
        })?;
        b.case("ioctl.fideduperange_efault", || {
            libc::ioctl(f, FIDEDUPERANGE, bad::<c_void>()).into()
        })?;

        let at = |mode| {
            let s = libc::fopen(fp, mode);
            if !s.is_null() {
                libc::fseek(s, 100, libc::SEEK_SET);
            }
            s
        };
        let buf = data.as_ptr().cast::<c_void>();
        let s = at(rp);
        b.case("fwrite.ok", || libc::fwrite(buf, 1, 16, s) as i64)?;
        b.case("fputs.ok", || libc::fputs(c"SSSS".as_ptr(), s).into())?;
        b.case("fwrite.zero", || libc::fwrite(buf, 1, 0, s) as i64)?;
        b.case("fflush.ok", || libc::fflush(s).into())?;
        b.case("fclose.ok", || libc::fclose(s).into())?;
        let s = at(r);
        b.case("fwrite.rdonly_stream", || {
            libc::fwrite(buf, 1, 16, s) as i64
        })?;
        b.case("fputs.rdonly_stream", || {
            libc::fputs(c"SSSS".as_ptr(), s).into()
        })?;
        b.case("fflush.rdonly_stream", || libc::fflush(s).into())?;
        b.case("fclose.rdonly_stream", || libc::fclose(s).into())?;
        b.case("fflush.null", || libc::fflush(std::ptr::null_mut()).into())?;
    }
    Ok(())
}

type FcntlFn = unsafe extern "C" fn(c_int, c_int, ...) -> c_int;

extern "C" {
    /// glibc's `closefrom(3)` (not in the libc crate).
    fn closefrom(lowfd: c_int);
    /// glibc's `fcntl64`, the same call as `fcntl` on 64-bit targets (not in the libc
    /// crate).
    fn fcntl64(fd: c_int, cmd: c_int, ...) -> c_int;
}

/// Puts duplicates of `fds` at [`HIGH_FD`], [`HIGH_FD`] + 1, ... (setup, not a case),
/// which must be free.
fn dup_high(fds: &[RawFd]) -> Res<()> {
    for (fd, to) in fds.iter().zip(HIGH_FD..) {
        // SAFETY: plain fd calls.
        unsafe {
            if libc::fcntl(to, libc::F_GETFD) != -1 {
                return Err(format!("fd {to} is open"));
            }
            if libc::dup2(*fd, to) != to {
                return Err(os_err("dup2"));
            }
        }
    }
    Ok(())
}

/// `F_GETFD` of each of `fds`, comma-separated (-1: closed).
fn fd_flags(fds: &[RawFd]) -> String {
    let flags: Vec<String> = fds
        .iter()
        // SAFETY: plain fd call.
        .map(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) }.to_string())
        .collect();
    flags.join(",")
}

/// `close`, `close_range`, `closefrom`, `dup`, `dup2`, `dup3`, `fcntl`/`fcntl64`,
/// `pclose`, `fclose`: bad and closed fds, bad flags and commands, and the ends of
/// tracked pipes (under the shim, closing one retires what has left its pipe, and a
/// duplicate inherits its hint). The fds a case closes or replaces are duplicates at
/// [`HIGH_FD`] and up, so no other fd ever takes their numbers.
fn battery_fds(b: &mut Battery) -> Res<()> {
    let (f, fro, opath, fp) = (b.f, b.f_rdonly, b.f_opath, b.f_path.as_ptr());
    let (r, w) = b.loaded_pipe(0)?;
    let (r2, w2) = b.loaded_pipe(0)?;
    let (h0, h1, h2) = (HIGH_FD, HIGH_FD + 1, HIGH_FD + 2);
    let (uh0, uh1, uh2) = (h0 as c_uint, h1 as c_uint, h2 as c_uint);
    let cloexec = libc::CLOSE_RANGE_CLOEXEC as c_int;
    let unshare = libc::CLOSE_RANGE_UNSHARE as c_int;
    let fcntls: [(&str, FcntlFn); 2] = [("fcntl", libc::fcntl), ("fcntl64", fcntl64)];
    // SAFETY: (all calls below) fds are open, deliberately invalid, or duplicates the
    // case owns; pointers are live locals or deliberately invalid (EFAULT); streams are
    // opened by the case and closed once.
    unsafe {
        b.case("close.bad_fd", || libc::close(-1).into())?;
        b.case("close.closed_fd", || libc::close(CLOSED).into())?;
        b.case("close.huge_fd", || libc::close(c_int::MAX).into())?;
        dup_high(&[w])?;
        b.case("close.tracked_write_end", || libc::close(h0).into())?;
        b.case("close.tracked_write_end_again", || libc::close(h0).into())?;
        dup_high(&[r])?;
        b.case("close.tracked_read_end", || libc::close(h0).into())?;
        b.state("close.tracked_read_end", "queued", queued(r))?;
        // A pipe closed end by end: its only writer, then its reader with bytes in it.
        let (lr, lw) = pipe_with(0)?;
        splice_exact(f, 0, lw.as_raw_fd(), 4096)?;
        let (lr, lw) = (lr.into_raw_fd(), lw.into_raw_fd());
        b.case("close.last_write_end", || libc::close(lw).into())?;
        b.state("close.last_write_end", "queued", queued(lr))?;
        b.case("close.last_read_end_with_bytes", || libc::close(lr).into())?;

        b.case("close_range.first_above_last", || {
            libc::close_range(uh1, uh0, 0).into()
        })?;
        b.case("close_range.first_above_last_cloexec", || {
            libc::close_range(uh1, uh0, cloexec).into()
        })?;
        b.case("close_range.bad_flags", || {
            libc::close_range(uh0, uh2, 0x100).into()
        })?;
        dup_high(&[w, r, w2])?;
        b.case("close_range.cloexec_tracked", || {
            libc::close_range(uh0, uh2, cloexec).into()
        })?;
        b.state(
            "close_range.cloexec_tracked",
            "fd_flags",
            fd_flags(&[h0, h1, h2]),
        )?;
        b.case("close_range.unshare_cloexec_tracked", || {
            libc::close_range(uh0, uh2, cloexec | unshare).into()
        })?;
        b.case("close_range.unshare_tracked", || {
            libc::close_range(uh2, uh2, unshare).into()
        })?;
        b.state(
            "close_range.unshare_tracked",
            "fd_flags",
            fd_flags(&[h0, h1, h2]),
        )?;
        b.case("close_range.tracked", || {
            libc::close_range(uh0, uh1, 0).into()
        })?;
        b.state("close_range.tracked", "fd_flags", fd_flags(&[h0, h1, h2]))?;
        b.state("close_range.tracked", "queued", queued(r))?;
        b.case("close_range.nothing_open", || {
            libc::close_range(uh0, uh0 + 100, 0).into()
        })?;
        b.case("close_range.max_fd", || {
            libc::close_range(c_uint::MAX, c_uint::MAX, 0).into()
        })?;

        dup_high(&[w, r])?;
        b.case("closefrom.tracked", || {
            closefrom(h0);
            0
        })?;
        b.state("closefrom.tracked", "fd_flags", fd_flags(&[h0, h1]))?;
        b.case("closefrom.nothing_open", || {
            closefrom(h0);
            0
        })?;

        b.case("dup.bad_fd", || libc::dup(-1).into())?;
        b.case("dup.closed_fd", || libc::dup(CLOSED).into())?;
        b.case("dup.tracked_write_end", || close_ret(libc::dup(w)))?;
        b.case("dup.tracked_read_end", || close_ret(libc::dup(r)))?;
        b.case("dup.o_path", || close_ret(libc::dup(opath)))?;

        dup_high(&[w])?;
        b.case("dup2.closed_onto_tracked", || libc::dup2(CLOSED, h0).into())?;
        b.state("dup2.closed_onto_tracked", "fd_flags", fd_flags(&[h0]))?;
        b.case("dup2.tracked_onto_itself", || libc::dup2(h0, h0).into())?;
        b.case("dup2.closed_onto_itself", || {
            libc::dup2(CLOSED, CLOSED).into()
        })?;
        b.case("dup2.negative_new", || libc::dup2(w, -1).into())?;
        b.case("dup2.new_above_limit", || libc::dup2(w, c_int::MAX).into())?;
        b.case("dup2.tracked_over_tracked", || libc::dup2(w2, h0).into())?;
        b.state("dup2.tracked_over_tracked", "queued", queued(r))?;
        b.state("dup2.tracked_over_tracked", "queued2", queued(r2))?;
        b.case("dup2.tracked_onto_free_fd", || libc::dup2(r, h1).into())?;
        b.case("dup3.bad_flags_onto_tracked", || {
            libc::dup3(w, h0, 0x1234).into()
        })?;
        b.state("dup3.bad_flags_onto_tracked", "fd_flags", fd_flags(&[h0]))?;
        b.case("dup3.onto_itself", || libc::dup3(w, w, 0).into())?;
        b.case("dup3.onto_itself_cloexec", || {
            libc::dup3(w, w, libc::O_CLOEXEC).into()
        })?;
        b.case("dup3.closed_onto_tracked", || {
            libc::dup3(CLOSED, h0, 0).into()
        })?;
        b.case("dup3.negative_new", || libc::dup3(w, -1, 0).into())?;
        b.case("dup3.tracked_over_tracked", || libc::dup3(w, h1, 0).into())?;
        b.state("dup3.tracked_over_tracked", "fd_flags", fd_flags(&[h1]))?;
        b.case("dup3.cloexec_tracked_over_tracked", || {
            libc::dup3(w2, h0, libc::O_CLOEXEC).into()
        })?;
        b.state(
            "dup3.cloexec_tracked_over_tracked",
            "fd_flags",
            fd_flags(&[h0]),
        )?;
        libc::close_range(uh0, uh1, 0);

        for (name, fc) in fcntls {
            let n = |c: &str| format!("{name}.{c}");
            let (pr, pw) = b.loaded_pipe(0)?; // its flags and size change
            let (_, bw) = b.loaded_pipe(0)?;
            write_all(bw, b"two buffers")?;
            let arg = |v: i64| v as libc::c_ulong;
            b.case(&n("bad_fd"), || fc(-1, libc::F_GETFL).into())?;
            b.case(&n("closed_fd"), || fc(CLOSED, libc::F_GETFD).into())?;
            b.case(&n("bad_cmd"), || fc(w, 0x7fff_1234, arg(0)).into())?;
            b.case(&n("dupfd"), || {
                close_ret(fc(w, libc::F_DUPFD, arg(h0.into())))
            })?;
            let mut flags = 0;
            b.case(&n("dupfd_cloexec"), || {
                let fd = fc(w, libc::F_DUPFD_CLOEXEC, arg(h0.into()));
                flags = libc::fcntl(fd, libc::F_GETFD);
                close_ret(fd)
            })?;
            b.state(&n("dupfd_cloexec"), "fd_flags", flags)?;
            b.case(&n("dupfd_negative"), || {
                fc(w, libc::F_DUPFD, arg(-1)).into()
            })?;
            b.case(&n("dupfd_above_limit"), || {
                fc(w, libc::F_DUPFD, arg(1 << 30)).into()
            })?;
            b.case(&n("dupfd_closed"), || {
                fc(CLOSED, libc::F_DUPFD, arg(0)).into()
            })?;
            b.case(&n("getfd_tracked"), || fc(w, libc::F_GETFD).into())?;
            dup_high(&[w])?;
            b.case(&n("setfd_tracked"), || {
                fc(h0, libc::F_SETFD, arg(libc::FD_CLOEXEC.into())).into()
            })?;
            libc::close(h0);
            b.case(&n("getfl_tracked"), || fc(w, libc::F_GETFL).into())?;
            b.case(&n("setfl_nonblock_tracked"), || {
                fc(pw, libc::F_SETFL, arg(libc::O_NONBLOCK.into())).into()
            })?;
            b.case(&n("setfl_packet_mode_tracked"), || {
                fc(
                    pw,
                    libc::F_SETFL,
                    arg((libc::O_NONBLOCK | libc::O_DIRECT).into()),
                )
                .into()
            })?;
            b.state(
                &n("setfl_packet_mode_tracked"),
                "flags",
                fc(pw, libc::F_GETFL),
            )?;
            b.case(&n("getpipe_sz_tracked"), || {
                fc(w, libc::F_GETPIPE_SZ).into()
            })?;
            b.case(&n("getpipe_sz_file"), || fc(f, libc::F_GETPIPE_SZ).into())?;
            b.case(&n("setpipe_sz_below_content"), || {
                fc(bw, libc::F_SETPIPE_SZ, arg(4096)).into()
            })?;
            b.case(&n("setpipe_sz_invalid"), || {
                fc(pw, libc::F_SETPIPE_SZ, arg((1 << 31) + 1)).into()
            })?;
            b.case(&n("setpipe_sz_grow_tracked"), || {
                fc(pw, libc::F_SETPIPE_SZ, arg(1 << 17)).into()
            })?;
            b.case(&n("setpipe_sz_shrink_tracked"), || {
                fc(pw, libc::F_SETPIPE_SZ, arg(4096)).into()
            })?;
            b.state(&n("setpipe_sz_shrink_tracked"), "queued", queued(pr))?;
            b.case(&n("getlk_efault"), || {
                fc(f, libc::F_GETLK, bad::<c_void>()).into()
            })?;
            let mut lk: libc::flock = std::mem::zeroed();
            lk.l_type = libc::F_WRLCK as libc::c_short;
            lk.l_whence = libc::SEEK_SET as libc::c_short;
            b.case(&n("getlk"), || {
                fc(f, libc::F_GETLK, &mut lk as *mut libc::flock).into()
            })?;
            b.state(&n("getlk"), "l_type", lk.l_type)?;
            lk.l_type = libc::F_WRLCK as libc::c_short;
            b.case(&n("setlk_read_only_fd"), || {
                fc(fro, libc::F_SETLK, &lk as *const libc::flock).into()
            })?;
        }

        // `popen` streams: the shell's exit status; a pipe spliced into, then closed.
        let popen_pclose = |cmd: &std::ffi::CStr, mode: &std::ffi::CStr, splice: bool| {
            let s = libc::popen(cmd.as_ptr(), mode.as_ptr());
            if s.is_null() {
                return -2;
            }
            if splice && splice_exact(f, 0, libc::fileno(s), 4096).is_err() {
                return -3;
            }
            i64::from(libc::pclose(s))
        };
        b.case("pclose.exit_0", || popen_pclose(c"exit 0", c"r", false))?;
        b.case("pclose.exit_3", || popen_pclose(c"exit 3", c"r", false))?;
        b.case("pclose.tracked_pipe", || {
            popen_pclose(c"cat >/dev/null", c"w", true)
        })?;
        b.case("pclose.fopen_stream", || {
            let s = libc::fopen(fp, c"r".as_ptr());
            if s.is_null() {
                return -2;
            }
            libc::pclose(s).into()
        })?;

        // Streams on duplicates of tracked write ends.
        let stream = |fd: RawFd| -> Res<*mut FILE> {
            dup_high(&[fd])?;
            let s = libc::fdopen(h0, c"w".as_ptr());
            if s.is_null() {
                return Err(os_err("fdopen"));
            }
            Ok(s)
        };
        let data = [b'S'; 16];
        let s = stream(w)?;
        b.case("fclose.tracked_pipe_stream", || {
            libc::fwrite(data.as_ptr().cast(), 1, 16, s);
            libc::fclose(s).into()
        })?;
        b.state("fclose.tracked_pipe_stream", "queued", queued(r))?;
        let s = stream(w)?;
        b.case("fclose.stream_on_closed_fd", || {
            libc::close(h0);
            libc::fclose(s).into()
        })?;
        let (nr, nw) = b.loaded_pipe(0)?;
        b.close(nr);
        let s = stream(nw)?;
        b.case("fclose.unflushed_no_readers", || {
            libc::fwrite(data.as_ptr().cast(), 1, 16, s);
            libc::fclose(s).into()
        })?;
    }
    Ok(())
}

/// FNV-1a of `bytes`, continuing from `h`.
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &c| (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3))
}

/// FNV-1a offset basis.
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Raises the soft `RLIMIT_NOFILE` to `want` fds (at most the hard limit).
fn raise_fd_limit(want: libc::rlim_t) -> Res<()> {
    // SAFETY: lim is a valid rlimit for getrlimit to fill and setrlimit to read.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(os_err("getrlimit"));
        }
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(os_err("setrlimit"));
            }
        }
    }
    Ok(())
}

/// `fidelity battery`.
fn battery(case_splices: bool) -> Res<()> {
    // About a thousand fds, and duplicates at HIGH_FD.
    raise_fd_limit(FD_LIMIT)?;
    prime()?;
    // SAFETY: querying fd CLOSED only.
    if unsafe { libc::fcntl(CLOSED, libc::F_GETFD) } != -1 {
        return Err(format!("fd {CLOSED} is open"));
    }
    let mut b = Battery::new(case_splices)?;
    battery_splice(&mut b)?;
    battery_sendfile(&mut b)?;
    battery_write(&mut b)?;
    battery_pwrite(&mut b)?;
    battery_sizes(&mut b)?;
    battery_open(&mut b)?;
    battery_issue3(&mut b)?;
    battery_fds(&mut b)?;
    let content = std::fs::read(b.files[0].path()).map_err(|e| e.to_string())?;
    b.state(
        "final",
        "file_fnv",
        format!("{:016x}", fnv(FNV_START, &content)),
    )?;
    let total: usize = b.fds.iter().map(|fd| queued(fd.as_raw_fd())).sum();
    b.state("final", "queued_in_all_pipes", total)
}

// ---------------------------------------------------------------------------------------
// block
// ---------------------------------------------------------------------------------------

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// Installs [`on_signal`] for `sig` with `flags`.
fn install(sig: c_int, flags: c_int) -> Res<()> {
    // SAFETY: an all-zero sigaction is valid; we fill handler, flags and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(c_int) as usize;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(os_err("sigaction"));
        }
    }
    Ok(())
}

/// Arms a one-shot `ITIMER_REAL` (`SIGALRM`) after `after`.
fn alarm_after(after: Duration) -> Res<()> {
    let tv = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: after.as_secs() as libc::time_t,
            tv_usec: after.subsec_micros() as libc::suseconds_t,
        },
    };
    // SAFETY: tv is a valid itimerval; the old value is not asked for.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &tv, std::ptr::null_mut()) } != 0 {
        return Err(os_err("setitimer"));
    }
    Ok(())
}

/// Blocks every signal in the calling (helper) thread, so `SIGALRM` goes to the
/// thread making the blocking call.
fn block_all_signals() {
    // SAFETY: set is a valid sigset_t filled by sigfillset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// `fidelity block`.
fn block(op: BlockOp, case: BlockCase) -> Res<()> {
    prime()?;
    let file = TempFile::with_pattern("fidelity-block", FLEN).map_err(|e| e.to_string())?;
    let fd = open_with(file.path(), false, true)?;
    let f = fd.as_raw_fd();
    let (src_r, src_w) = pipe_with(0)?;
    let (dst_r, dst_w) = pipe_with(0)?;
    let file_op = !matches!(op, BlockOp::Tee | BlockOp::PipeSplice);
    if file_op {
        fill(dst_w.as_raw_fd())?;
    }
    match case {
        BlockCase::Drain => {}
        BlockCase::Eintr => install(libc::SIGALRM, 0)?,
        BlockCase::Restart | BlockCase::RestartOtherHandler | BlockCase::RestartSoleHandler => {
            install(libc::SIGALRM, libc::SA_RESTART)?;
            if case == BlockCase::RestartOtherHandler {
                install(libc::SIGUSR1, 0)?;
            }
            if case == BlockCase::RestartSoleHandler {
                // SAFETY: restores the default action; no handler pointer involved.
                unsafe {
                    libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                    libc::signal(libc::SIGBUS, libc::SIG_DFL);
                }
            }
        }
    }
    // Before the alarm and the helper start: a call they unblock has waited at least
    // their delay, however late this thread gets to the call on a loaded machine.
    let t0 = Instant::now();
    if case != BlockCase::Drain {
        let at = if case == BlockCase::Eintr {
            UNBLOCK_AFTER
        } else {
            UNBLOCK_AFTER / 2
        };
        alarm_after(at)?;
    }
    // The helper: after UNBLOCK_AFTER, make room in (or put data into) the pipe.
    let (dr, sw) = (dst_r.as_raw_fd(), src_w.as_raw_fd());
    let unblock = (case != BlockCase::Eintr).then(|| {
        thread::spawn(move || {
            block_all_signals();
            thread::sleep(UNBLOCK_AFTER);
            if file_op {
                let mut buf = vec![0u8; 65536];
                // SAFETY: buf is valid for 65536 bytes.
                unsafe { libc::read(dr, buf.as_mut_ptr().cast(), buf.len()) };
            } else {
                let _ = write_all(sw, &pattern(BLOCK_LEN));
            }
        })
    });
    let (sr, dw) = (src_r.as_raw_fd(), dst_w.as_raw_fd());
    let mut off: loff_t = 0;
    set_errno(0);
    // SAFETY: fds are open; off is a live local.
    let ret = unsafe {
        match op {
            BlockOp::Splice => libc::splice(f, &mut off, dw, NULL_OFF, BLOCK_LEN, 0),
            BlockOp::Sendfile => libc::sendfile(dw, f, &mut off, BLOCK_LEN),
            BlockOp::Tee => libc::tee(sr, dw, BLOCK_LEN, 0),
            BlockOp::PipeSplice => libc::splice(sr, NULL_OFF, dw, NULL_OFF, BLOCK_LEN, 0),
            BlockOp::SpliceAtEof => {
                off = FLEN as loff_t;
                libc::splice(f, &mut off, dw, NULL_OFF, BLOCK_LEN, 0)
            }
            BlockOp::SendfileZeroCount => libc::sendfile(dw, f, &mut off, 0),
        }
    };
    let e = errno();
    let waited = t0.elapsed() >= MIN_WAIT;
    if let Some(h) = unblock {
        h.join().map_err(|_| "helper thread panicked")?;
    }
    // What the destination holds now must be the file/pipe bytes, after any filler.
    let mut got = vec![0u8; 2 * 65536];
    let q = queued(dr);
    let n = if q > 0 {
        // SAFETY: got is valid for its length; the pipe has q bytes, so read won't block.
        unsafe { libc::read(dr, got.as_mut_ptr().cast(), got.len()) }
    } else {
        0
    };
    let got = &got[..n.max(0) as usize];
    let data_ok = got.ends_with(&pattern(BLOCK_LEN)) || ret <= 0;
    println!(
        "{} {} ret={ret} errno={e} waited={waited} data_ok={data_ok} queued={q} signals={}",
        value_name(&op),
        value_name(&case),
        SIGNALS.load(Ordering::Relaxed)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// settle
// ---------------------------------------------------------------------------------------

/// A settle case ready for the mutation: the pipe the reader will read, the bytes it
/// must deliver, and every other fd to close before the reader starts.
struct Staged {
    read_end: OwnedFd,
    expected: Vec<u8>,
    others: Vec<OwnedFd>,
}

/// Stages `case` on the pattern file `path` (`len` bytes).
fn stage(case: SettleCase, path: &Path, len: usize) -> Res<Staged> {
    let fd = open_with(path, false, true)?;
    let f = fd.as_raw_fd();
    let data = pattern(len);
    let mut expected = Vec::new();
    let mut others = vec![fd];
    let flags = match case {
        SettleCase::Packet => libc::O_DIRECT,
        SettleCase::Nonblock => libc::O_NONBLOCK,
        _ => 0,
    };
    let (r, w) = pipe_with(flags)?;
    let wfd = w.as_raw_fd();
    let splice = |off: usize, n: usize, expected: &mut Vec<u8>| {
        expected.extend_from_slice(&data[off..off + n]);
        splice_exact(f, off, wfd, n)
    };
    let put = |bytes: &[u8], expected: &mut Vec<u8>| {
        expected.extend_from_slice(bytes);
        write_all(wfd, bytes)
    };
    match case {
        SettleCase::Plain => splice(0, 48 * 1024, &mut expected)?,
        SettleCase::Exited => {
            let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
            child
                .args(["splice-out", "--len", "65536", "--file"])
                .arg(path)
                .stdout(Stdio::from(w));
            let st = child.status().map_err(|e| e.to_string())?;
            if !st.success() {
                return Err(format!("splice-out: {st}"));
            }
            expected.extend_from_slice(&data[..65536]);
            return Ok(Staged {
                read_end: r,
                expected,
                others,
            });
        }
        SettleCase::Packet => {
            splice(0, 4096, &mut expected)?;
            put(b"packet-one", &mut expected)?;
            splice(8192, 8192, &mut expected)?;
            put(&[b'p'; 100], &mut expected)?;
            splice(20000, 4096, &mut expected)?;
            put(b"last", &mut expected)?;
        }
        SettleCase::Nonblock => {
            splice(0, 32768, &mut expected)?;
            put(&[b'n'; 1000], &mut expected)?;
            splice(40000, 16384, &mut expected)?;
        }
        SettleCase::Bigpipe => {
            ensure_pipe_capacity(&w, len).map_err(|e| e.to_string())?;
            splice(0, len, &mut expected)?;
        }
        SettleCase::Chain => {
            let (br, bw) = pipe_with(0)?;
            splice(0, 65536, &mut expected)?;
            // Move all of A into B, then leave another 16 KiB of the file in A.
            let mut moved = 0;
            while moved < 65536 {
                // SAFETY: both fds are open pipes; no offsets.
                let n = unsafe {
                    libc::splice(
                        r.as_raw_fd(),
                        NULL_OFF,
                        bw.as_raw_fd(),
                        NULL_OFF,
                        65536 - moved,
                        0,
                    )
                };
                if n <= 0 {
                    return Err(os_err("splice A -> B"));
                }
                moved += n as usize;
            }
            splice_exact(f, 65536, wfd, 16384)?;
            others.extend([r, w, bw]);
            return Ok(Staged {
                read_end: br,
                expected,
                others,
            });
        }
        SettleCase::Header => {
            splice(0, 16384, &mut expected)?;
            put(b"HEADER: 37 bytes written after splice", &mut expected)?;
            splice(16384, 16384, &mut expected)?;
            put(b"trailer-end", &mut expected)?;
        }
    }
    others.push(w);
    Ok(Staged {
        read_end: r,
        expected,
        others,
    })
}

/// pwrites 16 `B`s at offset 100 of every 4 KiB block of `path`.
fn mutate(path: &Path) -> Res<()> {
    let fd = open_with(path, true, true)?;
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len() as usize;
    for block in (0..len).step_by(4096) {
        let bs = [b'B'; 16];
        // SAFETY: bs is valid for 16 bytes.
        if unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                bs.as_ptr().cast(),
                16,
                (block + 100) as off_t,
            )
        } != 16
        {
            return Err(os_err("pwrite"));
        }
    }
    Ok(())
}

/// `fidelity settle`.
fn settle(case: SettleCase, mutated: bool, same_process: bool) -> Res<()> {
    let len = if case == SettleCase::Bigpipe {
        1 << 20
    } else {
        256 * 1024
    };
    let file = TempFile::with_pattern("fidelity-settle", len).map_err(|e| e.to_string())?;
    let staged = stage(case, file.path(), len)?;
    let pending = queued(staged.read_end.as_raw_fd());
    if mutated {
        if same_process {
            mutate(file.path())?;
        } else {
            let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
            let st = child
                .args(["mutate", "--file"])
                .arg(file.path())
                .status()
                .map_err(|e| e.to_string())?;
            if !st.success() {
                return Err(format!("mutate: {st}"));
            }
        }
    }
    drop(staged.others);
    let mut reader = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    strip_shim_env(reader.arg("reader"));
    let out = run_with_stdin(&mut reader, Stdio::from(staged.read_end), READER_TIMEOUT)
        .map_err(|e| e.to_string())?;
    if out.status.map(|s| s.success()) != Some(true) {
        return Err(format!("reader: {}", out.describe()));
    }
    // The sizes are the reader's last stderr line. (Since the shim restores a cleared
    // `LD_PRELOAD` on exec, the reader may be shimmed after all and warn first.)
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reads = stderr
        .lines()
        .last()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| format!("reader sizes {s:?}: {e}")))
        .collect::<Res<Vec<usize>>>()?;
    let c = compare(&staged.expected, &out.stdout);
    let report = SettleReport {
        case: value_name(&case),
        mutated,
        expected: staged.expected.len(),
        received: out.stdout.len(),
        mismatched_bytes: c.mismatched_bytes,
        first_mismatch: c.first_mismatch,
        reads,
        pending_at_mutation: pending,
    };
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// `fidelity hold-pipe-table`.
fn hold_pipe_table() -> Res<()> {
    let domain = std::env::var("SPLICECOW_DOMAIN").map_err(|_| "SPLICECOW_DOMAIN is not set")?;
    let file = TempFile::with_pattern("fidelity-hold", 4096).map_err(|e| e.to_string())?;
    let fd = open_with(file.path(), false, true)?;
    let mut pipes = Vec::new();
    loop {
        let stats = domain_stats(&domain)?;
        let count = |name| counter(&stats, name).ok_or(format!("no {name} in {stats}"));
        let (capacity, in_use) = (count("pipe_capacity")?, count("pipes_in_use")?);
        // Both ends of every pipe.
        raise_fd_limit(2 * HOLD_MAX_FILL * capacity + 64)?;
        if in_use >= capacity {
            break;
        }
        if pipes.len() as u64 >= HOLD_MAX_FILL * capacity {
            return Err(format!(
                "{} pipes spliced into, the pipe table is still not full: {stats}",
                pipes.len()
            ));
        }
        // A new pipe lands in a free slot only if its hash is within a probe distance
        // of one: the last slots take a few rounds.
        for _ in 0..(capacity - in_use).max(32) {
            let (r, w) = pipe_with(0)?;
            // One page per pipe, so that thousands of them stay within the user's
            // pipe-buffer allowance (pipe-user-pages-soft) and other pipes keep 64 KiB.
            // SAFETY: plain fd call.
            unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
            splice_exact(fd.as_raw_fd(), 0, w.as_raw_fd(), 1)?;
            pipes.push((r, w));
        }
    }
    println!("ready {}", pipes.len());
    io::stdout().flush().map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    io::stdin()
        .read_to_end(&mut rest)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// `fidelity reader`.
fn reader() -> Res<()> {
    let mut buf = vec![0u8; READ_BUF];
    let mut sizes = Vec::new();
    let mut out = io::stdout().lock();
    loop {
        // SAFETY: buf is valid for READ_BUF bytes.
        let r = unsafe { libc::read(0, buf.as_mut_ptr().cast(), READ_BUF) };
        if r < 0 && errno() == libc::EAGAIN {
            wait_fd(0, libc::POLLIN);
            continue;
        }
        if r < 0 {
            return Err(os_err("read"));
        }
        if r == 0 {
            break;
        }
        sizes.push((r as usize).to_string());
        out.write_all(&buf[..r as usize])
            .map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    eprintln!("{}", sizes.join(","));
    Ok(())
}

/// `fidelity pump` and `fidelity splice-out`: splice `len` bytes of `path` into fd 1.
fn splice_to_stdout(path: &Path, len: usize) -> Res<()> {
    let fd = open_with(path, false, true)?;
    splice_exact(fd.as_raw_fd(), 0, 1, len)
}

fn pump(len: usize) -> Res<()> {
    let file = TempFile::with_pattern("fidelity-pump", len).map_err(|e| e.to_string())?;
    splice_to_stdout(file.path(), len)
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
