//! `fidelity`: checks that a program cannot tell `libsplicecow.so` is loaded, except by
//! the corrected data (DESIGN §2.5), and that settles keep every byte in place in the
//! pipes that are hard to settle. Every subcommand is run twice by
//! `tests/fidelity.rs`, without and with the shim, and the outputs are compared.
//!
//! - `battery`: calls every hooked function with bad fds, invalid flags, bad pointers,
//!   negative offsets, huge lengths, EOF and non-blocking pipes; one `name ret errno
//!   off=.. size=..` line per call (`off`/`size`: the main file's offset and size after
//!   the call). Before each call a 4 KiB splice of the main file is left in a pipe, and a
//!   splice of another file stays in flight all along, so the shim's slow paths run.
//! - `block --op OP --case CASE`: blocking splice/sendfile/tee, drained late,
//!   interrupted by `SIGALRM` with or without `SA_RESTART`; one line.
//! - `settle --case CASE`: splices into an awkward pipe, mutates the file from another
//!   process, and lets an unshimmed reader (this binary's `reader`) read; one JSON
//!   [`SettleReport`].
//! - `pump --len N`: splices N bytes of a fresh pattern file into stdout.
//!
//! Exit status: 0 when the subcommand ran (the caller judges the output), 2 on setup
//! errors (message on stderr).

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use libc::{c_char, c_int, c_uint, c_void, loff_t, off_t, size_t, ssize_t, FILE};
use splicecow_test_harness::{
    compare, ensure_pipe_capacity, fionread, pattern, run_with_stdin, strip_shim_env, temp_path,
    value_name, SettleReport, TempFile,
};

/// Size of the battery's main file and of most settle files.
const FLEN: usize = 64 * 1024;
/// A file descriptor number that is never open in these programs.
const CLOSED: RawFd = 1000;
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
    Battery,
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

/// The settle edge cases (issue 2 "Settle").
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
/// (`G`), a read-only fd of `F`, and every pipe made along the way (kept open so that
/// fd numbers and pipe states stay comparable between runs).
struct Battery {
    f: RawFd,
    g: RawFd,
    f_rdonly: RawFd,
    f_path: CString,
    dir_path: CString,
    link_path: CString,
    files: Vec<TempFile>,
    /// The empty directory the `EISDIR` cases use (removed on drop).
    dir: Option<PathBuf>,
    fds: Vec<OwnedFd>,
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
    fn new() -> Res<Battery> {
        let fmain = TempFile::with_pattern("fidelity-f", FLEN).map_err(|e| e.to_string())?;
        let gside = TempFile::with_pattern("fidelity-g", FLEN).map_err(|e| e.to_string())?;
        let dir = temp_path("fidelity-dir");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let link = temp_path("fidelity-link");
        std::os::unix::fs::symlink(fmain.path(), &link).map_err(|e| e.to_string())?;
        let f = open_with(fmain.path(), true, true)?;
        let g = open_with(gside.path(), true, true)?;
        let f_rdonly = open_with(fmain.path(), false, true)?;
        let mut b = Battery {
            f: f.as_raw_fd(),
            g: g.as_raw_fd(),
            f_rdonly: f_rdonly.as_raw_fd(),
            f_path: cpath(fmain.path())?,
            dir_path: cpath(&dir)?,
            link_path: cpath(&link)?,
            files: vec![fmain, gside, TempFile::adopt(link)],
            dir: None,
            fds: vec![f, g, f_rdonly],
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

    /// Runs one case: leaves 4 KiB of `F` in flight in a fresh pipe, clears `errno`,
    /// calls, and prints `name ret errno off=<F offset> size=<F size>`.
    fn case(&mut self, name: &str, call: impl FnOnce() -> i64) -> Res<()> {
        self.loaded_pipe(0)?;
        set_errno(0);
        let ret = call();
        let e = errno();
        // SAFETY: plain fd calls; st is a valid stat buffer.
        let (off, size) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(self.f, &mut st);
            (libc::lseek(self.f, 0, libc::SEEK_CUR), st.st_size)
        };
        writeln!(self.out, "{name} {ret} {e} off={off} size={size}").map_err(|e| e.to_string())
    }

    /// Prints `name.what value` (pipe levels, offsets written back by the kernel).
    fn state(&mut self, name: &str, what: &str, value: impl std::fmt::Display) -> Res<()> {
        writeln!(self.out, "{name}.{what} {value}").map_err(|e| e.to_string())
    }

    /// Sets `F`'s offset.
    fn seek(&self, off: usize) {
        // SAFETY: plain fd call.
        unsafe { libc::lseek(self.f, off as off_t, libc::SEEK_SET) };
    }
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

        // tee
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
    let (er, ew) = b.pipe(0)?;
    b.close(er); // a pipe without readers: EPIPE
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

/// `fidelity battery`.
fn battery() -> Res<()> {
    prime()?;
    // SAFETY: querying fd CLOSED only.
    if unsafe { libc::fcntl(CLOSED, libc::F_GETFD) } != -1 {
        return Err(format!("fd {CLOSED} is open"));
    }
    let mut b = Battery::new()?;
    battery_splice(&mut b)?;
    battery_sendfile(&mut b)?;
    battery_write(&mut b)?;
    battery_pwrite(&mut b)?;
    battery_sizes(&mut b)?;
    battery_open(&mut b)?;
    battery_issue3(&mut b)?;
    let content = std::fs::read(b.files[0].path()).map_err(|e| e.to_string())?;
    let sum = content.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3)
    });
    b.state("final", "file_fnv", format!("{sum:016x}"))?;
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
    let file_op = matches!(op, BlockOp::Splice | BlockOp::Sendfile);
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
    let t0 = Instant::now();
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
        Cmd::Battery => battery(),
        Cmd::Block { op, case } => block(op, case),
        Cmd::Settle {
            case,
            no_mutation,
            same_process,
        } => settle(case, !no_mutation, same_process),
        Cmd::Pump { len } => pump(len),
        Cmd::SpliceOut { file, len } => splice_to_stdout(&file, len),
        Cmd::Mutate { file } => mutate(&file),
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
