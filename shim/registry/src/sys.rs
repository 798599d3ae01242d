//! Raw system calls. The registry is linked into the `LD_PRELOAD` library, whose exported
//! `open`, `write`, `mmap`... would catch libc calls made from here, so every call goes
//! through `syscall(2)` directly.

use libc::{c_int, c_long};

/// The calling thread's `errno` after a failed raw call.
pub fn errno() -> c_int {
    // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(value: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value }
}

/// Converts a raw syscall result (-1 + errno) to `Result`.
pub fn check(ret: c_long) -> Result<c_long, c_int> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// `openat(AT_FDCWD, path, flags, mode)`; `path` must be NUL-terminated.
pub fn open(path: &[u8], flags: c_int, mode: u32) -> Result<c_int, c_int> {
    debug_assert_eq!(path.last(), Some(&0));
    // SAFETY: path is a NUL-terminated buffer that outlives the call.
    check(unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), flags, mode) })
        .map(|fd| fd as c_int)
}

/// `close(fd)`, errors ignored.
pub fn close(fd: c_int) {
    // SAFETY: closing an fd we own has no memory effects.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// `fstat(fd)`.
pub fn fstat(fd: c_int) -> Result<libc::stat, c_int> {
    // SAFETY: stat is plain old data; the kernel fills it on success.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: &mut st is a valid, writable stat buffer.
    check(unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) })?;
    Ok(st)
}

/// `newfstatat(dirfd, path, flags)`.
///
/// # Safety
/// `path` must be null, NUL-terminated, or a pointer the kernel rejects with `EFAULT`.
pub unsafe fn fstatat(
    dirfd: c_int,
    path: *const libc::c_char,
    flags: c_int,
) -> Result<libc::stat, c_int> {
    // SAFETY: as in `fstat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the caller passes a NUL-terminated path (or one the kernel rejects with EFAULT).
    check(unsafe {
        libc::syscall(
            libc::SYS_newfstatat,
            dirfd,
            path,
            &mut st as *mut libc::stat,
            flags,
        )
    })?;
    Ok(st)
}

/// `ftruncate(fd, len)`.
pub fn ftruncate(fd: c_int, len: u64) -> Result<(), c_int> {
    // SAFETY: no memory is passed.
    check(unsafe { libc::syscall(libc::SYS_ftruncate, fd, len) }).map(drop)
}

/// `mmap(NULL, len, PROT_READ|PROT_WRITE, flags, fd, 0)`.
pub fn mmap_rw(len: usize, flags: c_int, fd: c_int) -> Result<*mut u8, c_int> {
    // SAFETY: a fresh mapping chosen by the kernel aliases no Rust object.
    let p = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            0usize,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0usize,
        )
    };
    if (p as isize) < 0 && (p as isize) > -4096 {
        Err(-(p as isize) as c_int)
    } else if p == -1 {
        Err(errno())
    } else {
        Ok(p as *mut u8)
    }
}

/// `munmap(addr, len)`.
///
/// # Safety
/// Nothing may reference `addr..addr+len` afterwards.
pub unsafe fn munmap(addr: *mut u8, len: usize) {
    // SAFETY: callers only unmap mappings they created and no longer reference.
    unsafe { libc::syscall(libc::SYS_munmap, addr, len) };
}

/// Thread id of the caller.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Process id of the caller (the kernel's, so correct right after `fork`/`vfork`).
pub fn getpid() -> i32 {
    // SAFETY: getpid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_getpid) as i32 }
}

/// True when process `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::syscall(libc::SYS_kill, pid, 0) };
    (r == 0 || errno() == libc::EPERM) && !is_zombie(pid)
}

/// True when thread `tid` of process `pid` exists and its process is not a zombie (a
/// killed process keeps its main thread as a zombie until its parent reaps it; a lock
/// it held must not wait for that).
pub fn thread_alive(pid: i32, tid: i32) -> bool {
    if pid <= 0 || tid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) };
    (r == 0 || errno() == libc::EPERM) && !is_zombie(pid)
}

/// True when `/proc/<pid>/stat` shows state `Z` (zombie) or `X` (dead).
fn is_zombie(pid: i32) -> bool {
    let path = format!("/proc/{pid}/stat\0");
    let Ok(fd) = open(path.as_bytes(), libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return false;
    };
    let mut buf = [0u8; 512];
    // SAFETY: reads into our own buffer.
    let n = unsafe { libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) };
    close(fd);
    let stat = buf.get(..n.max(0) as usize).unwrap_or_default();
    // "pid (comm) S ...": the state follows the last ')'.
    stat.iter()
        .rposition(|&b| b == b')')
        .and_then(|i| stat.get(i + 2))
        .is_some_and(|&state| state == b'Z' || state == b'X')
}

/// `CLOCK_REALTIME` in nanoseconds.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime goes through the vDSO and writes only `ts`.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps `ns` nanoseconds (EINTR shortens it).
pub fn sleep_ns(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: ts is valid; no remainder is requested.
    unsafe { libc::syscall(libc::SYS_nanosleep, &ts as *const libc::timespec, 0usize) };
}
