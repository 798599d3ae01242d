//! The fd-closing and fd-duplicating calls: `close`, `close_range`, `closefrom`, `dup`,
//! `dup2`, `dup3`, `fcntl(F_DUPFD*)`, `pclose`, and libc's other calls that close or
//! replace fds the program holds (`closedir`, `endmntent`, `daemon`,
//! `login_tty`). A close of an fd that may hold a tracked pipe lets `ops::lifetime` retire
//! what has left that pipe; every other fd costs one bit test, before even the re-entrancy
//! flag. Every number closed or replaced is forgotten by the fd identity cache, which also
//! turns itself off when `unshare(CLONE_FILES)` gives a thread its own fd table.

use crate::hooks::hooks;
use crate::ops::lifetime;
use crate::state::fdcache;
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
    /// `closedir(3)`: closes the directory's fd.
    fn closedir(dir: *mut libc::DIR) -> c_int => with closedir_impl;
    /// `endmntent(3)`: closes the mount table's stream.
    fn endmntent(stream: *mut FILE) -> c_int => with endmntent_impl;
    /// `daemon(3)`: puts `/dev/null` over fds 0, 1 and 2 (unless asked not to).
    fn daemon(nochdir: c_int, noclose: c_int) -> c_int => with daemon_impl;
    /// `login_tty(3)`: puts the terminal `fd` over fds 0, 1 and 2 and closes `fd`.
    fn login_tty(fd: c_int) -> c_int => with login_tty_impl;
    /// `unshare(2)`: with `CLONE_FILES` the calling thread gets an fd table of its own.
    fn unshare(flags: c_int) -> c_int => with unshare_impl;
    /// `_Fork(3)`: a fork that runs no fork handlers; the child forgets the cached ids.
    fn _Fork() -> libc::pid_t => with fork_without_handlers_impl;
}

unsafe fn closedir_impl(
    real: unsafe extern "C" fn(*mut libc::DIR) -> c_int,
    dir: *mut libc::DIR,
) -> c_int {
    if dir.is_null() {
        // SAFETY: the caller's argument.
        return unsafe { real(dir) };
    }
    // SAFETY: closedir requires a stream from opendir; dirfd only reads its fd.
    let fd = unsafe { libc::dirfd(dir) };
    // SAFETY: the caller's argument.
    fdcache::replacing(fd, || unsafe { real(dir) })
}

unsafe fn endmntent_impl(
    real: unsafe extern "C" fn(*mut FILE) -> c_int,
    stream: *mut FILE,
) -> c_int {
    if stream.is_null() {
        // SAFETY: the caller's argument.
        return unsafe { real(stream) };
    }
    // SAFETY: endmntent requires a stream from setmntent; fileno only reads its fd.
    let fd = unsafe { libc::fileno(stream) };
    // SAFETY: the caller's argument.
    fdcache::replacing(fd, || unsafe { real(stream) })
}

unsafe fn daemon_impl(
    real: unsafe extern "C" fn(c_int, c_int) -> c_int,
    nochdir: c_int,
    noclose: c_int,
) -> c_int {
    // SAFETY: the caller's arguments (the child returns here, with the parent's cache).
    fdcache::replacing_range(0, 2, || unsafe { real(nochdir, noclose) })
}

unsafe fn login_tty_impl(real: unsafe extern "C" fn(c_int) -> c_int, fd: c_int) -> c_int {
    fdcache::forget(fd);
    // SAFETY: the caller's argument.
    let r = fdcache::replacing_range(0, 2, || unsafe { real(fd) });
    fdcache::forget(fd);
    r
}

unsafe fn unshare_impl(real: unsafe extern "C" fn(c_int) -> c_int, flags: c_int) -> c_int {
    if flags & libc::CLONE_FILES != 0 {
        fdcache::turn_off();
    }
    // SAFETY: the caller's argument.
    unsafe { real(flags) }
}

unsafe fn fork_without_handlers_impl(real: unsafe extern "C" fn() -> libc::pid_t) -> libc::pid_t {
    // SAFETY: no arguments.
    let r = unsafe { real() };
    if r == 0 {
        splicecow_registry::sys::forget_ids();
    }
    r
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
    fdcache::replacing(fd, || unsafe { real(fd) })
}

unsafe fn close_range_impl(
    real: unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int,
    first: c_uint,
    last: c_uint,
    flags: c_int,
) -> c_int {
    if flags & libc::CLOSE_RANGE_CLOEXEC as c_int != 0 || first > last {
        // SAFETY: the caller's arguments.
        return unsafe { real(first, last, flags) };
    }
    lifetime::before_close_range(first, last);
    // SAFETY: the caller's arguments.
    fdcache::replacing_range(first, last, || unsafe { real(first, last, flags) })
}

unsafe fn closefrom_impl(real: unsafe extern "C" fn(c_int), lowfd: c_int) {
    // glibc closes from fd 0 on for a negative `lowfd`.
    let first = c_uint::try_from(lowfd).unwrap_or(0);
    lifetime::before_close_range(first, c_uint::MAX);
    // SAFETY: the caller's argument.
    fdcache::replacing_range(first, c_uint::MAX, || unsafe { real(lowfd) })
}

unsafe fn dup_impl(real: unsafe extern "C" fn(c_int) -> c_int, old: c_int) -> c_int {
    // SAFETY: the caller's argument.
    let r = unsafe { real(old) };
    fdcache::Created::forget_created(&r);
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
    let r = fdcache::replacing(new, || unsafe { real(old, new) });
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
    let r = fdcache::replacing(new, || unsafe { real(old, new, flags) });
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
    if dup {
        fdcache::Created::forget_created(&r);
    }
    if r >= 0 && dup && (lifetime::hinted(fd) || lifetime::hinted(r)) {
        inside(|| lifetime::after_dup(fd, r));
    }
    r
}

unsafe fn pclose_impl(real: unsafe extern "C" fn(*mut FILE) -> c_int, stream: *mut FILE) -> c_int {
    if !stream.is_null() {
        // SAFETY: pclose requires a stream from popen; fileno only reads its fd.
        let fd = unsafe { libc::fileno(stream) };
        lifetime::before_close(fd);
        // SAFETY: the caller's argument.
        return fdcache::replacing(fd, || unsafe { real(stream) });
    }
    // SAFETY: the caller's argument.
    unsafe { real(stream) }
}
