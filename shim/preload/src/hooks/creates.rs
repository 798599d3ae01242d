//! The fd-creating calls: the fd identity cache forgets every number they return. A
//! number the program closed behind the shim's back (a raw `close` system call, which
//! no hook sees) may still be in the cache; the call that gives the number a new
//! meaning is one of these (or `open`, `fopen`, `dup*`, `fcntl(F_DUPFD*)`, hooked with
//! their own families), so the stale entry is gone before the program can use it.

use crate::hooks::hooks;
use crate::state::fdcache;
use libc::{c_char, c_int, c_uint, c_void, mode_t, ssize_t, DIR, FILE};

hooks! {
    /// `socket(2)`.
    fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int => creates ();
    /// `accept(2)`.
    fn accept(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int => creates ();
    /// `accept4(2)`.
    fn accept4(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t, flags: c_int) -> c_int => creates ();
    /// `memfd_create(2)`.
    fn memfd_create(name: *const c_char, flags: c_uint) -> c_int => creates ();
    /// `eventfd(2)`.
    fn eventfd(initval: c_uint, flags: c_int) -> c_int => creates ();
    /// `timerfd_create(2)`.
    fn timerfd_create(clock: c_int, flags: c_int) -> c_int => creates ();
    /// `signalfd(2)` (a new fd when `fd` is -1).
    fn signalfd(fd: c_int, mask: *const libc::sigset_t, flags: c_int) -> c_int => creates ();
    /// `epoll_create(2)`.
    fn epoll_create(size: c_int) -> c_int => creates ();
    /// `epoll_create1(2)`.
    fn epoll_create1(flags: c_int) -> c_int => creates ();
    /// `inotify_init(2)`.
    fn inotify_init() -> c_int => creates ();
    /// `inotify_init1(2)`.
    fn inotify_init1(flags: c_int) -> c_int => creates ();
    /// `fanotify_init(2)`.
    fn fanotify_init(flags: c_uint, event_flags: c_uint) -> c_int => creates ();
    /// `pidfd_open(2)`.
    fn pidfd_open(pid: libc::pid_t, flags: c_uint) -> c_int => creates ();
    /// `open_by_handle_at(2)`.
    fn open_by_handle_at(mount_fd: c_int, handle: *mut c_void, flags: c_int) -> c_int => creates ();
    /// `posix_openpt(3)`.
    fn posix_openpt(flags: c_int) -> c_int => creates ();
    /// `getpt(3)`.
    fn getpt() -> c_int => creates ();
    /// `shm_open(3)`.
    fn shm_open(name: *const c_char, flags: c_int, mode: mode_t) -> c_int => creates ();
    /// `mkstemp(3)`.
    fn mkstemp(template: *mut c_char) -> c_int => creates ();
    /// `mkstemp64`.
    fn mkstemp64(template: *mut c_char) -> c_int => creates ();
    /// `mkostemp(3)`.
    fn mkostemp(template: *mut c_char, flags: c_int) -> c_int => creates ();
    /// `mkostemp64`.
    fn mkostemp64(template: *mut c_char, flags: c_int) -> c_int => creates ();
    /// `mkstemps(3)`.
    fn mkstemps(template: *mut c_char, suffix: c_int) -> c_int => creates ();
    /// `mkstemps64`.
    fn mkstemps64(template: *mut c_char, suffix: c_int) -> c_int => creates ();
    /// `mkostemps(3)`.
    fn mkostemps(template: *mut c_char, suffix: c_int, flags: c_int) -> c_int => creates ();
    /// `mkostemps64`.
    fn mkostemps64(template: *mut c_char, suffix: c_int, flags: c_int) -> c_int => creates ();
    /// `tmpfile(3)`.
    fn tmpfile() -> *mut FILE => creates ();
    /// `tmpfile64`.
    fn tmpfile64() -> *mut FILE => creates ();
    /// `popen(3)`.
    fn popen(command: *const c_char, mode: *const c_char) -> *mut FILE => creates ();
    /// `opendir(3)`.
    fn opendir(name: *const c_char) -> *mut DIR => creates ();
    /// `pipe(2)`.
    fn pipe(fds: *mut c_int) -> c_int => unguarded pipe_impl;
    /// `pipe2(2)`.
    fn pipe2(fds: *mut c_int, flags: c_int) -> c_int => unguarded pipe2_impl;
    /// `socketpair(2)`.
    fn socketpair(domain: c_int, kind: c_int, protocol: c_int, fds: *mut c_int) -> c_int => unguarded socketpair_impl;
    /// `recvmsg(2)`: fds passed with `SCM_RIGHTS` are new fds of this process.
    fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t => unguarded recvmsg_impl;
    /// `recvmmsg(2)`.
    fn recvmmsg(fd: c_int, msgs: *mut libc::mmsghdr, n: c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int => unguarded recvmmsg_impl;
}

/// Forgets the two fds a successful `pipe`/`pipe2`/`socketpair` wrote to `fds`.
///
/// # Safety
/// `fds` is the caller's array, which the real call just filled (`r == 0`).
unsafe fn forget_pair(r: c_int, fds: *mut c_int) -> c_int {
    if r == 0 && !fds.is_null() {
        // SAFETY: on success the real call wrote two ints there.
        let (a, b) = unsafe { (*fds, *fds.add(1)) };
        fdcache::forget(a);
        fdcache::forget(b);
    }
    r
}

unsafe fn pipe_impl(real: unsafe extern "C" fn(*mut c_int) -> c_int, fds: *mut c_int) -> c_int {
    // SAFETY: the caller's argument; `forget_pair` reads what the call wrote.
    unsafe { forget_pair(real(fds), fds) }
}

unsafe fn pipe2_impl(
    real: unsafe extern "C" fn(*mut c_int, c_int) -> c_int,
    fds: *mut c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: as in `pipe_impl`.
    unsafe { forget_pair(real(fds, flags), fds) }
}

unsafe fn socketpair_impl(
    real: unsafe extern "C" fn(c_int, c_int, c_int, *mut c_int) -> c_int,
    domain: c_int,
    kind: c_int,
    protocol: c_int,
    fds: *mut c_int,
) -> c_int {
    // SAFETY: as in `pipe_impl`.
    unsafe { forget_pair(real(domain, kind, protocol, fds), fds) }
}

/// Forgets every fd an `SCM_RIGHTS` control message of `msg` carries.
///
/// # Safety
/// `msg` is a message header the real call just filled successfully.
unsafe fn forget_passed(msg: *const libc::msghdr) {
    if msg.is_null() {
        return;
    }
    // SAFETY: the kernel wrote `msg_control`/`msg_controllen`; the CMSG macros walk only
    // within `msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const c_int;
                let bytes = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..bytes / std::mem::size_of::<c_int>() {
                    fdcache::forget(data.add(i).read_unaligned());
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
}

unsafe fn recvmsg_impl(
    real: unsafe extern "C" fn(c_int, *mut libc::msghdr, c_int) -> ssize_t,
    fd: c_int,
    msg: *mut libc::msghdr,
    flags: c_int,
) -> ssize_t {
    // SAFETY: the caller's arguments.
    let r = unsafe { real(fd, msg, flags) };
    if r >= 0 {
        // SAFETY: the call succeeded, so `msg` is a filled message header.
        unsafe { forget_passed(msg) };
    }
    r
}

unsafe fn recvmmsg_impl(
    real: unsafe extern "C" fn(
        c_int,
        *mut libc::mmsghdr,
        c_uint,
        c_int,
        *mut libc::timespec,
    ) -> c_int,
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    n: c_uint,
    flags: c_int,
    timeout: *mut libc::timespec,
) -> c_int {
    // SAFETY: the caller's arguments.
    let r = unsafe { real(fd, msgs, n, flags, timeout) };
    for i in 0..usize::try_from(r).unwrap_or(0) {
        // SAFETY: the first `r` entries were filled by the call.
        unsafe { forget_passed(&(*msgs.add(i)).msg_hdr) };
    }
    r
}
