//! Pipe helpers: pending bytes, waiting like a blocking call would, finding a process
//! that holds a pipe and reopening it through `/proc`.

use splicecow_registry::{sys, FileKey};

/// Bytes waiting in the pipe (`FIONREAD`), or `None` when `fd` is no pipe.
pub fn pending(fd: i32) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd,
            libc::FIONREAD,
            &mut n as *mut libc::c_int,
        )
    };
    (r == 0).then_some(n.max(0) as u64)
}

/// The pipe's capacity in bytes (`F_GETPIPE_SZ`), 64 KiB if unknown.
pub fn capacity(fd: i32) -> usize {
    // SAFETY: F_GETPIPE_SZ takes no pointer.
    let r = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETPIPE_SZ) };
    if r > 0 {
        r as usize
    } else {
        65536
    }
}

/// How a wait for readiness ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// The fd is ready (or in error: the retried call reports it).
    Ready,
    /// A signal handler ran and the interrupted call would not restart: return `EINTR`.
    Interrupted,
}

/// While waiting, signals whose handler has `SA_RESTART` are held back for at most this
/// long before being let in (see [`wait`]).
const RESTART_SIGNAL_LATENCY_NS: i64 = 5_000_000;

/// Waits until `fd` has `events`, as the blocking call being emulated would.
///
/// A blocking `splice` interrupted by a signal returns `EINTR` unless that signal's
/// handler has `SA_RESTART`, in which case the kernel restarts it. `poll` always
/// returns `EINTR`, and which signal interrupted it cannot be told afterwards. So the
/// wait runs in `ppoll` with every signal whose handler has `SA_RESTART` blocked: only
/// the others can interrupt it (→ [`Wait::Interrupted`], the caller returns `EINTR`).
/// The held-back ones are let in every 5 ms — `ppoll` restores the mask when it times
/// out and their handlers run then — and the wait goes on, as a restart would.
pub fn wait(fd: i32, events: libc::c_short) -> Wait {
    let restarting = restarting_signals();
    let mut current: u64 = 0;
    // SAFETY: reads this thread's signal mask into `current` (8 bytes: the kernel sigset).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            0usize,
            &mut current as *mut u64,
            8usize,
        )
    };
    let mask = current | restarting;
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: RESTART_SIGNAL_LATENCY_NS,
    };
    let timeout_ptr = if restarting == 0 {
        std::ptr::null()
    } else {
        &timeout as *const libc::timespec
    };
    loop {
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a valid (or null) timeout and an 8-byte sigset.
        let r = unsafe {
            libc::syscall(
                libc::SYS_ppoll,
                &mut p as *mut libc::pollfd,
                1usize,
                timeout_ptr,
                &mask as *const u64,
                8usize,
            )
        };
        match r {
            0 => continue,
            r if r > 0 => return Wait::Ready,
            _ if sys::errno() == libc::EINTR => return Wait::Interrupted,
            _ => return Wait::Ready,
        }
    }
}

/// The kernel's `struct sigaction` for `rt_sigaction`.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// The set (bit `sig - 1`) of signals whose installed handler has `SA_RESTART`.
fn restarting_signals() -> u64 {
    (1..=64).fold(0u64, |set, sig| {
        let mut old = KernelSigaction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        // SAFETY: querying only (no new action); `old` is a valid kernel sigaction.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                0usize,
                &mut old as *mut KernelSigaction,
                8usize,
            )
        };
        let handled = r == 0 && old.handler != libc::SIG_DFL && old.handler != libc::SIG_IGN;
        if handled && old.flags & libc::SA_RESTART as u64 != 0 {
            set | 1 << (sig - 1)
        } else {
            set
        }
    })
}

/// Opens pipe `key` through `/proc/<pid>/fd/<fd>` (read-write, non-blocking), checking
/// that the fd still is that pipe.
pub fn open_via(pid: i32, fd: i32, key: FileKey) -> Option<i32> {
    reopen(pid, fd, key, libc::O_RDWR | libc::O_NONBLOCK).ok()
}

/// Opens `/proc/<pid>/fd/<fd>` with `flags` (plus `O_CLOEXEC`) if it still is pipe `key`;
/// the error is the open's errno (`ENXIO`: write-only open of a pipe without readers).
pub fn reopen(pid: i32, fd: i32, key: FileKey, flags: i32) -> Result<i32, i32> {
    if pid <= 0 || fd < 0 {
        return Err(libc::EBADF);
    }
    let mut buf = [0u8; 48];
    let path = proc_fd_path(&mut buf, pid, fd);
    let new = sys::open(path, flags | libc::O_CLOEXEC, 0)?;
    // Same inode number *and* still a pipe: a deleted FIFO's inode number can be reused by
    // a regular file, which a settle must never read and write back.
    match sys::fstat(new) {
        Ok(st)
            if st.st_dev == key.dev
                && st.st_ino == key.ino
                && st.st_mode & libc::S_IFMT == libc::S_IFIFO =>
        {
            Ok(new)
        }
        _ => {
            sys::close(new);
            Err(libc::ESTALE)
        }
    }
}

/// Formats `/proc/<pid>/fd/<fd>\0` (or `/proc/<pid>/fd\0` for a negative `fd`) into
/// `buf` without allocating (signal handlers reach this).
fn proc_fd_path(buf: &mut [u8; 48], pid: i32, fd: i32) -> &[u8] {
    let mut at = 0;
    let mut put = |s: &[u8]| {
        if let Some(dst) = buf.get_mut(at..at + s.len()) {
            dst.copy_from_slice(s);
            at += s.len();
        }
    };
    let mut digits = [0u8; 12];
    put(b"/proc/");
    put(decimal(&mut digits, pid as u32)
        .split_last()
        .map_or(&[], |(_, d)| d));
    if fd < 0 {
        put(b"/fd\0");
    } else {
        put(b"/fd/");
        put(decimal(&mut digits, fd as u32));
    }
    buf.get(..at).unwrap_or_default()
}

/// Scans `/proc/*/fd` for any process holding pipe (or FIFO) `key` and opens it.
/// Slow (looks at every process's fd table); used only when no recorded holder is left.
pub fn open_by_scan(key: FileKey) -> Option<i32> {
    let mut opened = None;
    scan_fds(|pid, fd, found| {
        if found == key {
            opened = open_via(pid, fd, key);
        }
        opened.is_none()
    });
    opened
}

/// For each of `keys`, a process and fd that hold that pipe, if any process does
/// (`found[i]` for `keys[i]`): one pass over every process's fd table.
pub fn find_holders(keys: &[FileKey], found: &mut [Option<(i32, i32)>]) {
    let mut missing = keys.len().min(found.len());
    scan_fds(|pid, fd, key| {
        for (k, slot) in keys.iter().zip(found.iter_mut()) {
            if *k == key && slot.is_none() {
                *slot = Some((pid, fd));
                missing -= 1;
            }
        }
        missing > 0
    });
}

/// Calls `each(pid, fd, key)` for every fd of every process that is a pipe or FIFO, until
/// it returns false. Allocation-free (raw `getdents64` into stack buffers): the hooks
/// that reach it may run in a signal handler.
fn scan_fds(mut each: impl FnMut(i32, i32, FileKey) -> bool) {
    let Ok(procs) = sys::open(
        b"/proc\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    ) else {
        return;
    };
    let mut go_on = true;
    for_each_number(procs, |pid| {
        let mut buf = [0u8; 48];
        let path = proc_fd_path(&mut buf, pid, -1);
        if let Ok(fds) = sys::open(
            path,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
        ) {
            for_each_number(fds, |fd| {
                let mut name = [0u8; 12];
                let name = decimal(&mut name, fd as u32);
                // SAFETY: `name` is NUL-terminated; fstatat follows the fd's link to the
                // object it refers to.
                let st = unsafe { sys::fstatat(fds, name.as_ptr().cast(), 0) };
                if let Ok(st) = st {
                    if st.st_mode & libc::S_IFMT == libc::S_IFIFO {
                        let key = FileKey {
                            dev: st.st_dev,
                            ino: st.st_ino,
                        };
                        go_on = each(pid, fd, key);
                    }
                }
                go_on
            });
            sys::close(fds);
        }
        go_on
    });
    sys::close(procs);
}

/// Calls `each(n)` for every entry of directory `dir` whose name is a decimal number,
/// until it returns false.
fn for_each_number(dir: i32, mut each: impl FnMut(i32) -> bool) {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes of dirents into `buf`.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            return;
        }
        let mut at = 0usize;
        // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name[].
        while let Some(&[lo, hi]) = buf.get(at + 16..at + 18).filter(|_| at < n as usize) {
            let reclen = u16::from_ne_bytes([lo, hi]) as usize;
            let name = buf.get(at + 19..at + reclen).unwrap_or_default();
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            let number = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok());
            if let Some(number) = number {
                if !each(number) {
                    return;
                }
            }
            if reclen == 0 {
                return;
            }
            at += reclen;
        }
    }
}

/// Writes `n` in decimal, NUL-terminated, into `buf`; returns the digits and the NUL.
fn decimal(buf: &mut [u8; 12], mut n: u32) -> &[u8] {
    let mut i = buf.len() - 1;
    if let Some(last) = buf.last_mut() {
        *last = 0;
    }
    loop {
        i -= 1;
        if let Some(d) = buf.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or_default()
}
