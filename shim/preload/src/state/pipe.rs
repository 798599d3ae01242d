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

/// Formats `/proc/<pid>/fd/<fd>\0` into `buf` without allocating (signal handlers reach this).
fn proc_fd_path(buf: &mut [u8; 48], pid: i32, fd: i32) -> &[u8] {
    fn put(buf: &mut [u8], at: &mut usize, s: &[u8]) {
        if let Some(dst) = buf.get_mut(*at..*at + s.len()) {
            dst.copy_from_slice(s);
            *at += s.len();
        }
    }
    fn put_num(buf: &mut [u8], at: &mut usize, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            i -= 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        put(buf, at, digits.get(i..).unwrap_or_default());
    }
    let mut at = 0;
    put(buf, &mut at, b"/proc/");
    put_num(buf, &mut at, pid as u32);
    put(buf, &mut at, b"/fd/");
    put_num(buf, &mut at, fd as u32);
    put(buf, &mut at, b"\0");
    buf.get(..at).unwrap_or_default()
}

/// Scans `/proc/*/fd` for any process holding pipe (or FIFO) `key` and opens it.
/// Slow (looks at every process's fd table); used only when no recorded holder is left.
pub fn open_by_scan(key: FileKey) -> Option<i32> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for f in fds.flatten() {
            // stat follows the link to the object: same for anonymous pipes and FIFOs.
            let is_it = std::fs::metadata(f.path())
                .is_ok_and(|m| m.file_type().is_fifo() && m.dev() == key.dev && m.ino() == key.ino);
            let fd = f.file_name().to_str().and_then(|s| s.parse::<i32>().ok());
            if let (true, Some(fd)) = (is_it, fd) {
                if let Some(opened) = open_via(pid, fd, key) {
                    return Some(opened);
                }
            }
        }
    }
    None
}
