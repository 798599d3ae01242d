//! Raw system calls. The registry is linked into the `LD_PRELOAD` library, whose exported
//! `open`, `write`, `mmap`... would catch libc calls made from here, so every call goes
//! through `syscall(2)` directly.

use libc::{c_int, c_long};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

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

/// Set once [`cache_ids`] installed the fork handler that keeps the cached ids right.
static IDS_CACHED: AtomicBool = AtomicBool::new(false);
/// The process id, once asked for (0: not known yet).
static PID: AtomicI32 = AtomicI32::new(0);

thread_local! {
    /// The calling thread's id, once asked for (0: not known yet).
    static TID: Cell<i32> = const { Cell::new(0) };
    /// True while this thread's memory is borrowed by a child (`vfork`, `clone` with
    /// `CLONE_VM`): the child is another process on the same memory, so cached ids
    /// would be the parent's.
    static ON_BORROWED_MEMORY: Cell<bool> = const { Cell::new(false) };
}

/// From now on [`getpid`] and [`gettid`] answer from a cache (no system call), kept right
/// across `fork` by a handler installed here (it must run before any other fork handler
/// that asks for ids: call this first). Threads learn their own id on first use; a child
/// on borrowed memory is marked with [`set_on_borrowed_memory`]; a child made behind
/// libc's back (a raw `fork`/`clone` system call) would see its parent's ids.
pub fn cache_ids() {
    extern "C" fn forget_in_child() {
        forget_ids();
    }
    if !IDS_CACHED.swap(true, Ordering::SeqCst) {
        // SAFETY: registers a plain function; it only stores to atomics and TLS.
        unsafe { libc::pthread_atfork(None, None, Some(forget_in_child)) };
    }
}

/// Forgets the cached ids: the calling thread is the only thread of a new process.
pub fn forget_ids() {
    PID.store(0, Ordering::Relaxed);
    let _ = TID.try_with(|t| t.set(0));
}

/// Marks (or unmarks) the calling thread as running on memory a child borrowed: ids are
/// then asked of the kernel on every call.
pub fn set_on_borrowed_memory(borrowed: bool) {
    let _ = ON_BORROWED_MEMORY.try_with(|b| b.set(borrowed));
}

/// True while [`set_on_borrowed_memory`] marked the calling thread.
pub fn on_borrowed_memory() -> bool {
    ON_BORROWED_MEMORY.try_with(Cell::get).unwrap_or(true)
}

/// True when cached ids may be used on this thread.
fn ids_cacheable() -> bool {
    IDS_CACHED.load(Ordering::Relaxed) && !on_borrowed_memory()
}

/// The kernel's thread id of the caller.
fn kernel_tid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The kernel's process id of the caller.
fn kernel_pid() -> i32 {
    // SAFETY: getpid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_getpid) as i32 }
}

/// Thread id of the caller (cached once [`cache_ids`] ran).
pub fn gettid() -> i32 {
    if !ids_cacheable() {
        return kernel_tid();
    }
    TID.try_with(|t| match t.get() {
        0 => {
            let tid = kernel_tid();
            t.set(tid);
            tid
        }
        tid => tid,
    })
    .unwrap_or_else(|_| kernel_tid())
}

/// Process id of the caller (cached once [`cache_ids`] ran; right after `fork`, `vfork`
/// and `clone` children made through libc).
pub fn getpid() -> i32 {
    if !ids_cacheable() {
        return kernel_pid();
    }
    match PID.load(Ordering::Relaxed) {
        0 => {
            let pid = kernel_pid();
            PID.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
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

/// True when this kernel copies the bytes a file→pipe `splice` moves, instead of
/// handing the pipe references to the page cache (a change proposed upstream): one page
/// of a fresh memfd is spliced into a fresh pipe, the memfd is then overwritten, and the
/// pipe's reader gets the old byte only if the kernel copied. Any failure answers false
/// (protect as usual).
pub fn kernel_copies_on_splice() -> bool {
    const PAGE: usize = 4096;
    // SAFETY: memfd_create reads the NUL-terminated name.
    let m = unsafe {
        libc::syscall(
            libc::SYS_memfd_create,
            c"splicecow-probe".as_ptr(),
            libc::MFD_CLOEXEC,
        )
    };
    if m < 0 {
        return false;
    }
    let m = m as c_int;
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    if unsafe { libc::syscall(libc::SYS_pipe2, fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        close(m);
        return false;
    }
    let old = [b'o'; PAGE];
    let mut got = [0u8; PAGE];
    let mut off: i64 = 0;
    // SAFETY: our own buffers and fds; the offset pointer is our local.
    let copied = unsafe {
        libc::syscall(libc::SYS_pwrite64, m, old.as_ptr(), PAGE, 0) == PAGE as c_long
            && libc::syscall(
                libc::SYS_splice,
                m,
                &mut off as *mut i64,
                fds[1],
                0usize,
                PAGE,
                libc::SPLICE_F_NONBLOCK,
            ) == PAGE as c_long
            && libc::syscall(libc::SYS_pwrite64, m, [b'n'; 1].as_ptr(), 1usize, 0) == 1
            && libc::syscall(libc::SYS_read, fds[0], got.as_mut_ptr(), PAGE) == PAGE as c_long
            && got[0] == b'o'
    };
    close(m);
    close(fds[0]);
    close(fds[1]);
    copied
}
