//! The supervisor's system helpers: passing the listener, the user-notification ioctls,
//! and reaching into a filtered process (its fds through a pidfd, its memory through
//! `process_vm_readv`/`writev`).

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `PIDFD_THREAD` (Linux 6.9): a pidfd for one thread, which may not lead its process.
const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

/// Longest program name a message carries.
const NAME_MAX: usize = 4096;

/// Sends `fd` over the unix socket `sock` (`SCM_RIGHTS`), with `program`'s name for the
/// supervisor's messages. Async-signal-safe (no allocation): it runs in a child before
/// exec.
pub fn send_fd(sock: RawFd, fd: RawFd, program: &[u8]) {
    send(sock, 0, Some(fd), program);
}

/// Sends why there is no listener (`errno`, never 0) with `program`'s name, as
/// [`send_fd`] does.
pub fn send_errno(sock: RawFd, errno: i32, program: &[u8]) {
    send(sock, errno.max(1), None, program);
}

/// One message: 4 bytes of `errno` (0: the listener is attached), then the name.
fn send(sock: RawFd, errno: i32, fd: Option<RawFd>, program: &[u8]) {
    let head = errno.to_ne_bytes();
    let name = program.get(..program.len().min(NAME_MAX)).unwrap_or(&[]);
    let mut iov = [
        libc::iovec {
            iov_base: head.as_ptr().cast_mut().cast(),
            iov_len: 4,
        },
        libc::iovec {
            iov_base: name.as_ptr().cast_mut().cast(),
            iov_len: name.len(),
        },
    ];
    // Room for one cmsghdr with one int, 8-aligned.
    let mut space = [0u64; 4];
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = 2;
    if let Some(fd) = fd {
        msg.msg_control = space.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: the control buffer holds one header with 4 bytes of data (checked size).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        }
    }
    // SAFETY: msg describes our buffers.
    unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
}

/// Receives what [`send_fd`] or [`send_errno`] sent: the listener or the `errno`, and the
/// program's name; `Err` when the other end is gone without a word.
pub fn recv_fd(sock: RawFd) -> Result<(Result<OwnedFd, i32>, String), String> {
    let mut buf = vec![0u8; 4 + NAME_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut space = [0u64; 4];
    // SAFETY: plain data; the pointers set below outlive the recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&space);
    let n = loop {
        // SAFETY: msg describes our buffers.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break n;
        }
    };
    if n < 4 {
        return Err("the program never reached exec".into());
    }
    let name = String::from_utf8_lossy(&buf[4..n as usize]).into_owned();
    // SAFETY: recvmsg filled msg; the macros walk its control buffer.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if !c.is_null() && (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS
        {
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
            return Ok((Ok(OwnedFd::from_raw_fd(fd)), name));
        }
    }
    let errno = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    Ok((Err(errno.max(1)), name))
}

/// A pidfd for thread `tid` (its own fd table, should it have one), or for the process
/// it leads on kernels without `PIDFD_THREAD`.
pub fn pidfd(tid: i32, tgid: i32) -> Option<OwnedFd> {
    let open = |pid: i32, flags: libc::c_uint| {
        // SAFETY: plain system call.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) } as i32;
        // SAFETY: a new fd that nothing else owns.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    };
    open(tid, PIDFD_THREAD).or_else(|| open(tgid, 0))
}

/// Error of a [`getfd`].
pub enum GetFd {
    /// The process has no such fd (the call fails by itself).
    NoSuchFd,
    /// The process the pidfd names is gone.
    Gone,
}

/// A duplicate of fd `fd` of the process `pidfd` names (shares its open file description).
pub fn getfd(pidfd: RawFd, fd: u64) -> Result<OwnedFd, GetFd> {
    let Ok(fd) = i32::try_from(fd as i64) else {
        return Err(GetFd::NoSuchFd);
    };
    // SAFETY: plain system call.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) } as i32;
    if r >= 0 {
        // SAFETY: a new fd that nothing else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(r) });
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ESRCH) => Err(GetFd::Gone),
        _ => Err(GetFd::NoSuchFd),
    }
}

/// Reads `buf.len()` bytes at `addr` of process `pid`; false if any is unreadable.
pub fn read_mem(pid: i32, addr: u64, buf: &mut [u8]) -> bool {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: local describes our buffer; the kernel checks the remote range.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    n == buf.len() as isize
}

/// Writes `buf` at `addr` of process `pid`; false if it could not be written whole.
pub fn write_mem(pid: i32, addr: u64, buf: &[u8]) -> bool {
    let local = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: local describes our buffer; the kernel checks the remote range.
    let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    n == buf.len() as isize
}

/// The 8-byte integer at `addr` of process `pid`.
pub fn read_u64(pid: i32, addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    read_mem(pid, addr, &mut b).then(|| u64::from_ne_bytes(b))
}

/// The NUL-terminated string at `addr` of process `pid` (at most `PATH_MAX` bytes), read
/// a page piece at a time so that an unmapped page after the string does not matter.
pub fn read_path(pid: i32, addr: u64) -> Option<CString> {
    const PAGE: u64 = 4096;
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < libc::PATH_MAX as usize {
        let piece = (PAGE - at % PAGE) as usize;
        let mut buf = vec![0u8; piece];
        if !read_mem(pid, at, &mut buf) {
            return None;
        }
        if let Some(end) = buf.iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..end]);
            return CString::new(out).ok();
        }
        out.extend_from_slice(&buf);
        at += piece as u64;
    }
    None
}

/// The process (thread group) id of thread `tid`, from `/proc/<tid>/status`.
pub fn tgid(tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// True when `libsplicecow.so` is mapped in thread `tid`'s process.
pub fn preloaded(tid: i32) -> bool {
    std::fs::read(format!("/proc/{tid}/maps"))
        .is_ok_and(|m| m.windows(16).any(|w| w == b"/libsplicecow.so"))
}

/// What thread `tid` has pending and does not block, from `/proc/<tid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pending {
    /// Signals sent to the thread itself.
    pub thread: u64,
    /// Signals sent to its process (any thread not blocking one may take it).
    pub process: u64,
    /// The threads of its process.
    pub threads: u32,
}

/// See [`Pending`]; all empty when the thread is gone.
pub fn pending(tid: i32) -> Pending {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return Pending::default();
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let mask = |name: &str| {
        field(name)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(0)
    };
    let blocked = mask("SigBlk:");
    Pending {
        thread: mask("SigPnd:") & !blocked,
        process: mask("ShdPnd:") & !blocked,
        threads: field("Threads:").and_then(|v| v.parse().ok()).unwrap_or(1),
    }
}

/// When thread `tid`'s process runs a Go program, the address ranges where its executable
/// is mapped executable: Go makes its system calls from there, past any preload (empty
/// for any other program).
pub fn go_text(tid: i32) -> Vec<(u64, u64)> {
    let Ok(exe) = std::fs::read_link(format!("/proc/{tid}/exe")) else {
        return Vec::new();
    };
    let Ok(path) = std::ffi::CString::new(format!("/proc/{tid}/exe")) else {
        return Vec::new();
    };
    use splicecow_core::supervised::{classify, Program};
    if !matches!(classify(&path), Program::Go) {
        return Vec::new();
    }
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{tid}/maps")) else {
        return Vec::new();
    };
    let exe = exe.to_string_lossy();
    maps.lines()
        .filter_map(|l| {
            // start-end perms offset dev inode path
            let mut f = l.splitn(6, ' ');
            let (range, perms) = (f.next()?, f.next()?);
            let path = f.nth(3)?.trim_start();
            if path != exe || !perms.contains('x') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

/// The part of a shared file mapping that a range of addresses covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFileMapping {
    /// The file's device (as `st_dev`) and inode.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
    /// The file bytes `[file_lo, file_hi)` the covered part shows.
    pub file_lo: u64,
    /// See `file_lo`.
    pub file_hi: u64,
}

/// The shared file mappings of thread `tid`'s process that addresses `[addr, addr+len)`
/// (rounded out to pages, as `mprotect` does) overlap, from `/proc/<tid>/maps`.
pub fn shared_file_mappings(tid: i32, addr: u64, len: u64) -> Vec<SharedFileMapping> {
    const PAGE: u64 = 4096;
    let start = addr & !(PAGE - 1);
    let end = addr.saturating_add(len).saturating_add(PAGE - 1) & !(PAGE - 1);
    let Ok(maps) = std::fs::read(format!("/proc/{tid}/maps")) else {
        return Vec::new();
    };
    maps.split(|&b| b == b'\n')
        .filter_map(|line| {
            // start-end perms offset major:minor inode [path]
            let text = std::str::from_utf8(line.get(..line.len().min(256))?).ok()?;
            let mut words = text.split_ascii_whitespace();
            let (lo, hi) = words.next()?.split_once('-')?;
            let (lo, hi) = (
                u64::from_str_radix(lo, 16).ok()?,
                u64::from_str_radix(hi, 16).ok()?,
            );
            let shared = words.next()?.as_bytes().get(3) == Some(&b's');
            let off = u64::from_str_radix(words.next()?, 16).ok()?;
            let (dev, ino) = crate::domains::maps_line_file(line)?;
            let (from, to) = (lo.max(start), hi.min(end));
            (shared && from < to).then_some(SharedFileMapping {
                dev,
                ino,
                file_lo: off + (from - lo),
                file_hi: off + (to - lo),
            })
        })
        .collect()
}

/// The user-notification ioctls (`linux/seccomp.h`; `libc` has the numbers).
pub mod notif {
    use std::os::fd::RawFd;

    /// `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: let the call run as it is.
    const FLAG_CONTINUE: u32 = 1;

    /// Waits for the next notification; `None` when no process uses the filter any more
    /// (the kernel reports `POLLHUP` then, Linux 5.9+) or the listener failed for good.
    pub fn recv(listener: RawFd) -> Option<libc::seccomp_notif> {
        loop {
            let mut p = libc::pollfd {
                fd: listener,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd of ours.
            let r = unsafe { libc::poll(&mut p, 1, -1) };
            if r < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return None;
            }
            if p.revents & libc::POLLIN == 0
                && p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
            {
                return None;
            }
            // SAFETY: the kernel wants a zeroed struct and fills it.
            let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: n is the struct the ioctl fills.
            let r = unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) };
            if r == 0 {
                return Some(n);
            }
            match std::io::Error::last_os_error().raw_os_error() {
                // Interrupted, or the caller died or was interrupted before we took it.
                Some(libc::EINTR) | Some(libc::ENOENT) => continue,
                _ => return None,
            }
        }
    }

    /// True while notification `id` is still waiting for its answer (the caller was
    /// neither killed nor interrupted): checked after reading the caller's memory.
    pub fn valid(listener: RawFd, id: u64) -> bool {
        // SAFETY: the ioctl reads the u64.
        unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0 }
    }

    fn send(listener: RawFd, id: u64, val: i64, error: i32, flags: u32) {
        let resp = libc::seccomp_notif_resp {
            id,
            val,
            error,
            flags,
        };
        // SAFETY: the ioctl reads the struct. ENOENT (the caller is gone) needs nothing.
        unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) };
    }

    /// Lets the call run.
    pub fn proceed(listener: RawFd, id: u64) {
        send(listener, id, 0, 0, FLAG_CONTINUE);
    }

    /// Answers the call with `val` (it does not run).
    pub fn answer(listener: RawFd, id: u64, val: i64) {
        send(listener, id, val, 0, 0);
    }

    /// Fails the call with `errno` (it does not run).
    pub fn fail(listener: RawFd, id: u64, errno: i32) {
        send(listener, id, 0, -errno, 0);
    }
}
