//! The fd-closing and fd-duplicating calls: `close`, `close_range`, `closefrom`, `dup`,
//! `dup2`, `dup3`, `fcntl(F_DUPFD*)`, `pclose`. A close of an fd that may hold a tracked
//! pipe lets `ops::lifetime` retire what has left that pipe; every other fd costs one bit
//! test, before even the re-entrancy flag.

use crate::hooks::hooks;
use crate::ops::lifetime;
use crate::state::guard::Inside;
use libc::{c_int, c_uint, c_ulong, FILE};

hooks! {
    /// `close(2)`.
    fn close(fd: c_int) -> c_int => unguarded close_impl;
    /// `close_range(2)`: `CLOSE_RANGE_CLOEXEC` only marks, the others close.
    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int => with close_range_impl;
    /// `closefrom(3)`.
    fn closefrom(lowfd: c_int) -> () => with closefrom_impl;
    /// `dup(2)`.
    fn dup(old: c_int) -> c_int => unguarded dup_impl;
    /// `dup2(2)`: closes `new` first when it is open and not `old`.
    fn dup2(old: c_int, new: c_int) -> c_int => unguarded dup2_impl;
    /// `dup3(2)`.
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int => unguarded dup3_impl;
    /// `fcntl(2)`; the optional third argument is passed on as the register it came in.
    fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int => unguarded fcntl_impl;
    /// `fcntl64`, glibc's other name for the same call.
    fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int => unguarded fcntl_impl;
    /// `pclose(3)`: closes the stream's pipe.
    fn pclose(stream: *mut FILE) -> c_int => with pclose_impl;
}

/// Runs `f` inside the shim, unless this thread already is (then the call is the shim's
/// own, or a signal handler's inside a hook, and goes straight through).
fn inside(f: impl FnOnce()) {
    if let Some(_inside) = Inside::enter() {
        f();
    }
}

unsafe fn close_impl(real: unsafe extern "C" fn(c_int) -> c_int, fd: c_int) -> c_int {
    if lifetime::hinted(fd) {
        inside(|| lifetime::before_close(fd));
    }
    // SAFETY: the caller's argument.
    unsafe { real(fd) }
}

unsafe fn close_range_impl(
    real: unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int,
    first: c_uint,
    last: c_uint,
    flags: c_int,
) -> c_int {
    if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 && first <= last {
        lifetime::before_close_range(first, last);
    }
    // SAFETY: the caller's arguments.
    unsafe { real(first, last, flags) }
}

unsafe fn closefrom_impl(real: unsafe extern "C" fn(c_int), lowfd: c_int) {
    // glibc closes from fd 0 on for a negative `lowfd`.
    lifetime::before_close_range(c_uint::try_from(lowfd).unwrap_or(0), c_uint::MAX);
    // SAFETY: the caller's argument.
    unsafe { real(lowfd) }
}

unsafe fn dup_impl(real: unsafe extern "C" fn(c_int) -> c_int, old: c_int) -> c_int {
    // SAFETY: the caller's argument.
    let r = unsafe { real(old) };
    if r >= 0 && lifetime::hinted(old) {
        inside(|| lifetime::after_dup(old, r));
    }
    r
}

unsafe fn dup2_impl(
    real: unsafe extern "C" fn(c_int, c_int) -> c_int,
    old: c_int,
    new: c_int,
) -> c_int {
    let hinted = lifetime::hinted(old) || lifetime::hinted(new);
    if hinted && old != new {
        inside(|| lifetime::before_close(new));
    }
    // SAFETY: the caller's arguments.
    let r = unsafe { real(old, new) };
    if r >= 0 && hinted {
        inside(|| lifetime::after_dup(old, r));
    }
    r
}

unsafe fn dup3_impl(
    real: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int,
    old: c_int,
    new: c_int,
    flags: c_int,
) -> c_int {
    let hinted = lifetime::hinted(old) || lifetime::hinted(new);
    if hinted && old != new {
        inside(|| lifetime::before_close(new));
    }
    // SAFETY: the caller's arguments.
    let r = unsafe { real(old, new, flags) };
    if r >= 0 && hinted {
        inside(|| lifetime::after_dup(old, r));
    }
    r
}

unsafe fn fcntl_impl(
    real: unsafe extern "C" fn(c_int, c_int, c_ulong) -> c_int,
    fd: c_int,
    cmd: c_int,
    arg: c_ulong,
) -> c_int {
    // SAFETY: the caller's arguments, the third as the register it came in.
    let r = unsafe { real(fd, cmd, arg) };
    let dup = cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC;
    if r >= 0 && dup && (lifetime::hinted(fd) || lifetime::hinted(r)) {
        inside(|| lifetime::after_dup(fd, r));
    }
    r
}

unsafe fn pclose_impl(real: unsafe extern "C" fn(*mut FILE) -> c_int, stream: *mut FILE) -> c_int {
    if !stream.is_null() {
        // SAFETY: pclose requires a stream from popen; fileno only reads its fd.
        lifetime::before_close(unsafe { libc::fileno(stream) });
    }
    // SAFETY: the caller's argument.
    unsafe { real(stream) }
}
