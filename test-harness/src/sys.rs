//! The system-call helpers the harness's programs share, with the one error type they
//! report: paths as C strings, raw `open`, `errno`, reading and writing whole buffers
//! through plain (hooked) libc calls.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What went wrong, as one line for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

/// A harness result: [`Error`] on failure.
pub type Res<T> = Result<T, Error>;

impl Error {
    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Error {
        Error(s.to_string())
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error(e.to_string())
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::other(e.0)
    }
}

/// `what: <the calling thread's errno as text>`.
pub fn os_err(what: &str) -> Error {
    Error(format!("{what}: {}", io::Error::last_os_error()))
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Sets the calling thread's `errno`.
pub fn set_errno(v: i32) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = v };
}

/// Checks a libc return value: negative means failure (`errno` is set).
pub fn check(ret: impl Into<i64>, what: &str) -> Res<i64> {
    let ret = ret.into();
    if ret < 0 {
        Err(os_err(what))
    } else {
        Ok(ret)
    }
}

/// `path` as a NUL-terminated C string.
pub fn cpath(path: &Path) -> Res<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| Error(format!("{}: {e}", path.display())))
}

/// Opens `path` with raw `open(2)` `flags` (plus `O_CLOEXEC`; mode 0600 with `O_CREAT`).
pub fn open_raw(path: &Path, flags: i32) -> Res<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: c is a NUL-terminated path; the mode argument is read only with O_CREAT.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(os_err(&format!("open {}", path.display())));
    }
    // SAFETY: open succeeded, so fd is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Fills a buffer of `len` bytes with `read_at(dst, len_left, offset_so_far)` calls
/// (retrying `EINTR`) until it is full or a call returns 0 or an error.
pub fn fill(
    len: usize,
    mut read_at: impl FnMut(*mut libc::c_void, usize, usize) -> isize,
) -> Vec<u8> {
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

/// Up to `len` bytes `read` from `fd`: fewer at end of file or on an error.
pub fn read_up_to(fd: RawFd, len: usize) -> Vec<u8> {
    // SAFETY: `fill` passes a writable buffer of the given length.
    fill(len, |dst, n, _| unsafe { libc::read(fd, dst, n) })
}

/// Up to `len` bytes `pread` from `fd` at `off`: fewer at end of file or on an error.
pub fn pread_up_to(fd: RawFd, off: usize, len: usize) -> Vec<u8> {
    // SAFETY: `fill` passes a writable buffer of the given length.
    fill(len, |dst, n, got| unsafe {
        libc::pread(fd, dst, n, (off + got) as libc::off_t)
    })
}

/// Reads exactly `buf.len()` bytes from `fd` (`EINTR` retried); an early end of file is
/// an error.
pub fn read_exact_fd(fd: RawFd, buf: &mut [u8]) -> Res<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: rest is valid and writable for rest.len() bytes.
        let r = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r < 0 {
            return Err(os_err("read"));
        }
        if r == 0 {
            return Err(Error(format!(
                "early EOF after {done} of {} bytes",
                buf.len()
            )));
        }
        done += r as usize;
    }
    Ok(())
}

/// Writes all of `buf` to `fd` at `off` with `pwrite` (`EINTR` retried).
pub fn pwrite_all(fd: RawFd, buf: &[u8], off: u64) -> Res<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        // SAFETY: rest is valid for rest.len() bytes.
        let r = unsafe {
            libc::pwrite(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                (off + done as u64) as libc::off_t,
            )
        };
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r <= 0 {
            return Err(os_err("pwrite"));
        }
        done += r as usize;
    }
    Ok(())
}

/// Writes all of `buf` to `fd` with `write` (`EINTR` retried; `EAGAIN` waits for
/// `POLLOUT`).
pub fn write_all_fd(fd: RawFd, buf: &[u8]) -> Res<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        // SAFETY: rest is valid for rest.len() bytes.
        let r = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r < 0 && errno() == libc::EAGAIN {
            wait_fd(fd, libc::POLLOUT);
            continue;
        }
        if r <= 0 {
            return Err(os_err("write"));
        }
        done += r as usize;
    }
    Ok(())
}

/// Waits (`poll`, no timeout) until `fd` has `events`.
pub fn wait_fd(fd: RawFd, events: libc::c_short) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, -1) };
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The system's page size (4096 if `sysconf` does not say).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// The size of the file open at `fd` (0 if `fstat` fails).
pub fn file_size(fd: RawFd) -> usize {
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid, writable stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return 0;
    }
    st.st_size as usize
}

/// `flock(fd, op)`, `EINTR` retried.
pub fn flock_fd(fd: RawFd, op: i32) {
    // SAFETY: flock touches no memory of ours.
    while unsafe { libc::flock(fd, op) } != 0 && errno() == libc::EINTR {}
}

/// One `splice` of up to `len` bytes of `fd` at `off` into pipe `w` (the pipe may take
/// fewer: it is never waited on, since its reader is the caller); returns what moved.
pub fn splice_range(fd: RawFd, off: usize, w: RawFd, len: usize) -> usize {
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
