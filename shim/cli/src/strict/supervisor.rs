//! The supervisor's loop: one notification at a time, answered as soon as it is handled.
//! A mutation is checked (settled or reported) and then let run (`CONTINUE`); a file→pipe
//! `splice`/`sendfile` is run here, recorded, and answered with its result; a transfer
//! that would block goes to a thread of its own, so the loop never waits for a pipe.

use super::target::{self, notif, GetFd};
use splicecow_core::supervised::{self as sv, Fd, Kind, Span, Spliced};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (Linux 6.6; not in Debian 12's headers).
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// What the supervisor knows of a calling thread.
struct Caller {
    /// Its process id.
    tgid: i32,
    /// A pidfd for it.
    pidfd: OwnedFd,
    /// Its process has the preload loaded (it protects itself).
    preloaded: bool,
    /// Where a preloaded Go program's executable is mapped: calls made from there (Go's
    /// own system calls) bypass the preload, so they are served.
    go_text: Vec<(u64, u64)>,
}

impl Caller {
    /// Its preload's hooks saw the call made from `ip` (so they protect it).
    fn hooked(&self, ip: u64) -> bool {
        self.preloaded && !self.go_text.iter().any(|&(a, b)| (a..b).contains(&ip))
    }
}

/// Most threads remembered before the memory is dropped (dead ones are not noticed).
const MAX_CALLERS: usize = 4096;

/// The supervisor's state.
struct Supervisor {
    listener: Arc<OwnedFd>,
    callers: HashMap<i32, Caller>,
}

/// Serves notifications from `listener` until it fails (every filtered process is gone
/// and the kernel says so, or the fd is broken).
pub fn serve(listener: OwnedFd) {
    // The caller and the supervisor hand the CPU to each other (Linux 6.6; older kernels
    // refuse the flag and keep the ordinary wakeups).
    let sync_wake_up: u64 = SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP;
    // SAFETY: the ioctl reads the u64.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
            &sync_wake_up,
        )
    };
    let mut s = Supervisor {
        listener: Arc::new(listener),
        callers: HashMap::new(),
    };
    loop {
        spin_for_next(s.fd());
        let Some(n) = notif::recv(s.fd()) else { break };
        s.handle(&n);
    }
}

/// How long the supervisor polls for the next notification before it sleeps in
/// `SECCOMP_IOCTL_NOTIF_RECV` (see the README, "Strict mode", for what it costs).
const SPIN: Duration = Duration::from_micros(50);

/// Polls `listener` (without sleeping) until a notification waits or [`SPIN`] has
/// passed: a program that makes trapped calls back to back finds the supervisor awake,
/// instead of waiting for its thread to be woken and scheduled each time.
fn spin_for_next(listener: RawFd) {
    let start = std::time::Instant::now();
    while start.elapsed() < SPIN {
        let mut p = libc::pollfd {
            fd: listener,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd of ours; a zero timeout never sleeps.
        if unsafe { libc::poll(&mut p, 1, 0) } != 0 {
            return;
        }
        std::hint::spin_loop();
    }
}

/// A notification's call, in the terms the handlers use.
struct Call {
    id: u64,
    tid: i32,
    nr: i64,
    args: [u64; 6],
}

impl Supervisor {
    fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Call `c` of process `pid`, to be answered by a job (perhaps from another thread).
    fn pending(&self, c: &Call, pid: i32) -> Pending {
        Pending {
            listener: Arc::clone(&self.listener),
            id: c.id,
            tid: c.tid,
            pid,
        }
    }

    fn handle(&mut self, n: &libc::seccomp_notif) {
        let c = Call {
            id: n.id,
            tid: n.pid as i32,
            nr: i64::from(n.data.nr),
            args: n.data.args,
        };
        if c.nr == libc::SYS_execve || c.nr == libc::SYS_execveat {
            // After the exec the process may have the preload or not.
            self.forget(c.tid);
            return notif::proceed(self.fd(), c.id);
        }
        let transfer = c.nr == libc::SYS_splice
            || c.nr == libc::SYS_sendfile
            || (c.nr == libc::SYS_tee && sv::anything_live());
        // A shared writable mapping is counted even when nothing is live yet: later
        // splices of its file must take the copy path.
        let mapping = matches!(
            c.nr,
            libc::SYS_mmap | libc::SYS_mprotect | libc::SYS_pkey_mprotect
        );
        if !transfer && !mapping && !sv::anything_live() {
            return notif::proceed(self.fd(), c.id);
        }
        let Some((tgid, hooked)) = self.caller(c.tid, n.data.instruction_pointer) else {
            return notif::proceed(self.fd(), c.id);
        };
        if hooked {
            // Its own hooks protect it (and would wait for us if we acted too).
            return notif::proceed(self.fd(), c.id);
        }
        if transfer && self.transfer(&c, tgid) {
            return;
        }
        if (c.nr == libc::SYS_write || c.nr == libc::SYS_writev) && self.write(&c, tgid) {
            return;
        }
        self.mutation(&c, tgid);
        notif::proceed(self.fd(), c.id);
    }

    /// The caller's process id and whether it has the preload, learned once per thread.
    fn caller(&mut self, tid: i32, ip: u64) -> Option<(i32, bool)> {
        if let Some(c) = self.callers.get(&tid) {
            // A remembered thread that died may have left its number to a new one: the
            // pidfd tells (the caller is alive, it is waiting for us).
            // SAFETY: plain system call; signal 0 only checks.
            let alive =
                unsafe { libc::syscall(libc::SYS_pidfd_send_signal, c.pidfd.as_raw_fd(), 0, 0, 0) }
                    == 0;
            if alive {
                return Some((c.tgid, c.hooked(ip)));
            }
            self.callers.remove(&tid);
        }
        if self.callers.len() >= MAX_CALLERS {
            self.callers.clear();
        }
        let tgid = target::tgid(tid)?;
        let pidfd = target::pidfd(tid, tgid)?;
        // Another thread of its process already told (an exec forgets them all).
        let known = self.callers.values().find(|o| o.tgid == tgid);
        let (preloaded, go_text) = match known {
            Some(o) => (o.preloaded, o.go_text.clone()),
            None => {
                let preloaded = target::preloaded(tid);
                let go_text = if preloaded {
                    target::go_text(tid)
                } else {
                    Vec::new()
                };
                (preloaded, go_text)
            }
        };
        let c = Caller {
            tgid,
            pidfd,
            preloaded,
            go_text,
        };
        let hooked = c.hooked(ip);
        self.callers.insert(tid, c);
        Some((tgid, hooked))
    }

    /// Forgets thread `tid` and every thread of its process.
    fn forget(&mut self, tid: i32) {
        if let Some(c) = self.callers.remove(&tid) {
            self.callers.retain(|_, o| o.tgid != c.tgid);
        }
        self.callers.retain(|_, o| o.tgid != tid);
    }

    /// A duplicate of the caller's fd `fd`.
    fn dup(&mut self, c: &Call, fd: u64) -> Option<(OwnedFd, Fd)> {
        let caller = self.callers.get(&c.tid)?;
        match target::getfd(caller.pidfd.as_raw_fd(), fd) {
            Ok(local) => {
                let f = Fd {
                    local: local.as_raw_fd(),
                    theirs: fd as i32,
                };
                Some((local, f))
            }
            Err(GetFd::NoSuchFd) => None,
            Err(GetFd::Gone) => {
                self.callers.remove(&c.tid);
                None
            }
        }
    }

    /// Checks a mutating call before it runs.
    fn mutation(&mut self, c: &Call, pid: i32) {
        let a = c.args;
        let fd_change = |change, range| Some((a[0], change, range));
        let what = match c.nr {
            libc::SYS_pwrite64 => fd_change(Kind::Pwrite, Span::At(a[3] as i64, a[2])),
            libc::SYS_pwritev => fd_change(Kind::Pwritev, Span::From(a[3] as i64)),
            libc::SYS_pwritev2 => {
                if a[5] & libc::RWF_APPEND as u64 != 0 {
                    None
                } else if a[3] as i64 == -1 {
                    fd_change(Kind::Pwritev, Span::FromCursor)
                } else {
                    fd_change(Kind::Pwritev, Span::From(a[3] as i64))
                }
            }
            libc::SYS_ftruncate => fd_change(Kind::Ftruncate, Span::From(a[1] as i64)),
            libc::SYS_fallocate => {
                let (mode, off, len) = (a[1] as i32, a[2] as i64, a[3]);
                if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
                    fd_change(Kind::PunchHole, Span::At(off, len))
                } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
                    fd_change(Kind::ZeroRange, Span::At(off, len))
                } else if mode & libc::FALLOC_FL_COLLAPSE_RANGE != 0 {
                    fd_change(Kind::CollapseRange, Span::From(off))
                } else if mode & libc::FALLOC_FL_INSERT_RANGE != 0 {
                    fd_change(Kind::InsertRange, Span::From(off))
                } else {
                    None
                }
            }
            libc::SYS_copy_file_range => {
                let range = match a[3] {
                    0 => Some(Span::Cursor(a[4])),
                    p => target::read_u64(c.tid, p).map(|off| Span::At(off as i64, a[4])),
                };
                range.map(|r| (a[2], Kind::CopyFileRange, r))
            }
            libc::SYS_sendfile => Some((a[0], Kind::SendfileInto, Span::Cursor(a[3]))),
            libc::SYS_splice => {
                let range = match a[3] {
                    0 => Some(Span::Cursor(a[4])),
                    p => target::read_u64(c.tid, p).map(|off| Span::At(off as i64, a[4])),
                };
                range.map(|r| (a[2], Kind::SpliceInto, r))
            }
            libc::SYS_mmap => {
                if let Some((_local, f)) = self.dup(c, a[4]) {
                    let (len, prot, flags) = (a[1] as usize, a[2] as i32, a[3] as i32);
                    sv::before_map(pid, f, len, prot, flags, a[5] as i64);
                }
                return;
            }
            libc::SYS_mprotect | libc::SYS_pkey_mprotect => {
                for m in target::shared_file_mappings(c.tid, a[0], a[1]) {
                    sv::before_write_access(pid, m.dev, m.ino, m.file_lo, m.file_hi);
                }
                return;
            }
            libc::SYS_ioctl => return self.clone_request(c, pid),
            libc::SYS_truncate => {
                return self.path_mutation(c, pid, libc::AT_FDCWD as u64, a[0], 0, a[1] as i64);
            }
            libc::SYS_open => {
                return self.path_mutation(c, pid, libc::AT_FDCWD as u64, a[0], a[1], 0)
            }
            libc::SYS_creat => {
                let flags = (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64;
                return self.path_mutation(c, pid, libc::AT_FDCWD as u64, a[0], flags, 0);
            }
            libc::SYS_openat => return self.path_mutation(c, pid, a[0], a[1], a[2], 0),
            libc::SYS_openat2 => {
                // struct open_how { u64 flags; u64 mode; u64 resolve; }
                if let Some(flags) = target::read_u64(c.tid, a[2]) {
                    self.path_mutation(c, pid, a[0], a[1], flags, 0);
                }
                return;
            }
            _ => None,
        };
        let Some((fd, change, range)) = what else {
            return;
        };
        // What was read from the caller's memory is only good while the call waits.
        if !notif::valid(self.fd(), c.id) {
            return;
        }
        if let Some((_local, f)) = self.dup(c, fd) {
            sv::before_change(pid, f, change, range);
        }
    }

    /// An `ioctl` clone or dedupe request: every destination range is settled.
    fn clone_request(&mut self, c: &Call, pid: i32) {
        let (fd, request, arg) = (c.args[0] as i32, c.args[1] as u32, c.args[2]);
        if !sv::is_clone_request(request) {
            return;
        }
        let read = |addr: u64, buf: &mut [u8]| target::read_mem(c.tid, addr, buf);
        let changes = sv::clone_destinations(fd, request, arg, read);
        // What was read from the caller's memory is only good while the call waits.
        if changes.is_empty() || !notif::valid(self.fd(), c.id) {
            return;
        }
        for change in changes {
            if let Some((_local, f)) = self.dup(c, change.fd() as u64) {
                sv::before_fd_change(pid, f, change);
            }
        }
    }

    /// A `write` or `writev`: a regular file's range is settled (then the call runs
    /// itself); into a pipe the registry tracks, the bytes are copied from the caller
    /// and written here under the lock, as the hooks' `write` does, and the call is
    /// answered (true).
    fn write(&mut self, c: &Call, pid: i32) -> bool {
        let a = c.args;
        let (change, len) = if c.nr == libc::SYS_write {
            (Kind::Write, Some(a[2]))
        } else {
            (Kind::Writev, self.iov_len(c, a[1], a[2]))
        };
        let Some((local, f)) = self.dup(c, a[0]) else {
            return false;
        };
        if !sv::before_write(pid, f, len.unwrap_or(u64::MAX), change) {
            return false;
        }
        let Some(data) = self.written_bytes(c) else {
            // Unreadable or too large: the kernel writes what it can by itself.
            return false;
        };
        if !notif::valid(self.fd(), c.id) {
            return true;
        }
        let job = PipeWriteJob {
            call: self.pending(c, pid),
            pipe: f,
            _keep: local,
            data,
            done: 0,
        };
        job.run()
    }

    /// The bytes the caller's `write`/`writev` would write, copied from its memory
    /// (`None`: unreadable, or more than [`MAX_PIPE_WRITE`]).
    fn written_bytes(&self, c: &Call) -> Option<Vec<u8>> {
        let a = c.args;
        let pieces: Vec<(u64, u64)> = if c.nr == libc::SYS_write {
            vec![(a[1], a[2])]
        } else {
            if a[2] > 1024 {
                return None;
            }
            let mut raw = vec![0u8; a[2] as usize * 16];
            if !target::read_mem(c.tid, a[1], &mut raw) {
                return None;
            }
            raw.chunks(16)
                .map(|e| {
                    let word = |r: std::ops::Range<usize>| {
                        u64::from_ne_bytes(e[r].try_into().unwrap_or([0; 8]))
                    };
                    (word(0..8), word(8..16))
                })
                .collect()
        };
        let total = pieces.iter().try_fold(0u64, |t, p| t.checked_add(p.1))?;
        if total > MAX_PIPE_WRITE {
            return None;
        }
        let mut data = vec![0u8; total as usize];
        let mut at = 0usize;
        for (base, len) in pieces {
            let piece = data.get_mut(at..at + len as usize)?;
            if !target::read_mem(c.tid, base, piece) {
                return None;
            }
            at += len as usize;
        }
        Some(data)
    }

    /// The total length of the caller's `iovec` array at `iov` (`cnt` entries).
    fn iov_len(&self, c: &Call, iov: u64, cnt: u64) -> Option<u64> {
        if cnt > 1024 {
            return None;
        }
        let mut buf = vec![0u8; cnt as usize * 16];
        if !target::read_mem(c.tid, iov, &mut buf) {
            return None;
        }
        Some(
            buf.chunks(16)
                .map(|e| u64::from_ne_bytes(e[8..16].try_into().unwrap_or([0; 8])))
                .fold(0u64, u64::saturating_add),
        )
    }

    /// A call that changes the file at a path (`truncate`, an open with `O_TRUNC`; the
    /// filter already tested the flag where it could). The path is read from the
    /// caller's memory; see the README ("Strict mode") for the race this leaves.
    fn path_mutation(&mut self, c: &Call, pid: i32, dirfd: u64, path: u64, flags: u64, off: i64) {
        let flags = flags as i32;
        let (change, off) = if c.nr == libc::SYS_truncate {
            (Kind::Truncate, off)
        } else if flags & libc::O_TRUNC != 0 {
            (Kind::OpenTruncate, 0)
        } else {
            return;
        };
        let Some(p) = target::read_path(c.tid, path) else {
            return;
        };
        if !notif::valid(self.fd(), c.id) {
            return;
        }
        let follow = flags & libc::O_NOFOLLOW == 0;
        let dir = if p.as_bytes().first() == Some(&b'/') {
            None
        } else if dirfd as i32 == libc::AT_FDCWD {
            std::fs::File::open(format!("/proc/{}/cwd", c.tid))
                .ok()
                .map(OwnedFd::from)
        } else {
            let Some((local, _)) = self.dup(c, dirfd) else {
                return;
            };
            Some(local)
        };
        let dirfd = dir.as_ref().map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
        sv::before_path_change(pid, dirfd, &p, follow, change, Span::From(off));
    }

    /// A `splice` or `sendfile` from a regular file into a pipe, or a `tee` or `splice`
    /// from a pipe into a pipe, run here. Returns false when the call is something else
    /// (then a mutation or nothing, and it runs itself).
    fn transfer(&mut self, c: &Call, pid: i32) -> bool {
        let a = c.args;
        // splice(in, off_in, out, off_out, len, flags); sendfile(out, in, off, count);
        // tee(in, out, len, flags).
        let (fd_in, off_ptr, fd_out, len, flags) = match c.nr {
            libc::SYS_splice => {
                if a[3] != 0 || a[5] as u32 & !SPLICE_F_ALL != 0 {
                    return false;
                }
                (a[0], a[1], a[2], a[4], a[5] as u32)
            }
            libc::SYS_tee => {
                if a[3] as u32 & !SPLICE_F_ALL != 0 {
                    return false;
                }
                (a[0], 0, a[1], a[2], a[3] as u32)
            }
            _ => (a[1], a[2], a[0], a[3], 0),
        };
        let Some((from_local, from)) = self.dup(c, fd_in) else {
            return false;
        };
        let Some((to_local, to)) = self.dup(c, fd_out) else {
            return false;
        };
        let from_pipe = sv::is_pipe(from);
        let between_pipes = from_pipe && sv::is_pipe(to);
        let tee = c.nr == libc::SYS_tee;
        let pipe_call = c.nr != libc::SYS_sendfile && between_pipes && off_ptr == 0;
        if (tee || from_pipe) && !pipe_call {
            // Refused by the kernel (EINVAL, ESPIPE), or a pipe into a file: runs itself.
            return false;
        }
        let mut off = None;
        if off_ptr != 0 {
            match target::read_u64(c.tid, off_ptr) {
                Some(o) => off = Some(o as i64),
                None => {
                    // The kernel refuses an unreadable offset before it moves anything.
                    notif::fail(self.fd(), c.id, libc::EFAULT);
                    return true;
                }
            }
        }
        if !notif::valid(self.fd(), c.id) {
            return true;
        }
        let job = Transfer {
            call: self.pending(c, pid),
            from,
            to,
            _keep: [from_local, to_local],
            between_pipes: between_pipes.then_some(tee),
            off_ptr,
            off,
            len: len as usize,
            flags,
        };
        match job.attempt() {
            Attempt::Done => true,
            Attempt::Elsewhere => false,
            Attempt::WouldBlock => {
                // A blocking caller waits for room: in a thread of its own.
                let call = job.call.clone();
                call.finish_in_thread("splicecow-transfer", move || job.wait_and_finish());
                true
            }
        }
    }
}

/// Most bytes of one `write` into a tracked pipe copied from a filtered process; a
/// larger write runs itself, unserialised with settles (see the README).
const MAX_PIPE_WRITE: u64 = 16 << 20;

/// A `write`/`writev` into a tracked pipe served for a filtered process.
struct PipeWriteJob {
    call: Pending,
    pipe: Fd,
    /// The duplicate `pipe` names.
    _keep: OwnedFd,
    /// The caller's bytes, and how many of them are in the pipe.
    data: Vec<u8>,
    done: usize,
}

impl PipeWriteJob {
    /// Writes what fits now; a blocking caller's rest is written by a thread of its own
    /// as room comes. False when the call must run itself (no reader).
    fn run(mut self) -> bool {
        match self.attempt() {
            Some(true) => true,
            Some(false) => {
                let call = self.call.clone();
                call.finish_in_thread("splicecow-pipe-write", move || self.wait_and_finish());
                true
            }
            None => false,
        }
    }

    /// One non-blocking try: `Some(true)` answered, `Some(false)` a blocking caller must
    /// wait for room, `None` the call runs itself.
    fn attempt(&mut self) -> Option<bool> {
        let rest = self.data.get(self.done..).unwrap_or_default();
        match sv::write_into_tracked_pipe(self.call.pid, self.pipe, rest) {
            sv::PipeWrite::Direct if self.done == 0 => None,
            sv::PipeWrite::Direct => {
                // The reader left after a part went in: what a blocking write returns.
                self.call.answer(self.done as i64);
                Some(true)
            }
            sv::PipeWrite::Wrote(n) => {
                self.done += n;
                if self.done >= self.data.len() || !self.blocking() {
                    self.call.answer(self.done as i64);
                    return Some(true);
                }
                Some(false)
            }
            sv::PipeWrite::Failed(libc::EAGAIN) if self.blocking() => Some(false),
            sv::PipeWrite::Failed(_) if self.done > 0 => {
                self.call.answer(self.done as i64);
                Some(true)
            }
            sv::PipeWrite::Failed(e) => {
                self.call.fail(e);
                Some(true)
            }
        }
    }

    /// The caller's pipe is blocking (the duplicate shares its status flags).
    fn blocking(&self) -> bool {
        !nonblocking(self.pipe)
    }

    /// Waits for room and writes on, for as long as the caller waits (its death
    /// withdraws the notification: bytes already written stay in the pipe). A signal
    /// ends it as it ends the kernel's pipe write: with the count written, if any.
    fn wait_and_finish(mut self) {
        loop {
            match self.call.ready(self.pipe, libc::POLLOUT) {
                Waited::Ready => {}
                Waited::Gone => return,
                Waited::Signal if self.done > 0 => return self.call.answer(self.done as i64),
                Waited::Signal => return self.call.fail(ERESTARTSYS),
            }
            match self.attempt() {
                Some(false) => continue,
                Some(true) => return,
                None => return self.call.proceed(),
            }
        }
    }
}

/// Every `SPLICE_F_*` flag (move, nonblock, more, gift).
const SPLICE_F_ALL: u32 = 0x0f;

/// How often a waiting transfer checks that its caller still waits and has no signal.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// `ERESTARTSYS`, the kernel's own answer of a wait that a signal interrupts: the kernel
/// turns it into `EINTR` or a restart, as the signal's handler asks (the caller has a
/// signal pending whenever it is sent).
const ERESTARTSYS: i32 = 512;

/// True when the duplicate `fd` has `O_NONBLOCK` (it shares the caller's status flags),
/// or its flags cannot be read.
fn nonblocking(fd: Fd) -> bool {
    // SAFETY: F_GETFL on our duplicate.
    let fl = unsafe { libc::fcntl(fd.local, libc::F_GETFL) };
    fl < 0 || fl & libc::O_NONBLOCK != 0
}

/// How a wait for a pipe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// The pipe is ready.
    Ready,
    /// The notification no longer waits (the caller died).
    Gone,
    /// The caller has a signal to take: the kernel's pipe wait would end now.
    Signal,
}

/// A notification waiting for its answer while a thread of the supervisor works on it:
/// its listener, its id, and the calling thread and process.
#[derive(Clone)]
struct Pending {
    listener: Arc<OwnedFd>,
    id: u64,
    tid: i32,
    pid: i32,
}

impl Pending {
    /// Answers the call with `val` (it does not run).
    fn answer(&self, val: i64) {
        notif::answer(self.listener.as_raw_fd(), self.id, val);
    }

    /// Lets the call run itself.
    fn proceed(&self) {
        notif::proceed(self.listener.as_raw_fd(), self.id);
    }

    /// Fails the call with `errno`, and, for `EPIPE`, raises `SIGPIPE` in the calling
    /// thread as the kernel's pipe write does (right after the answer: raised while the
    /// call still waits, it would withdraw the notification, and a restarting handler
    /// would bring the call back for ever).
    fn fail(&self, errno: i32) {
        notif::fail(self.listener.as_raw_fd(), self.id, errno);
        if errno == libc::EPIPE {
            // SAFETY: plain system call; a thread that is gone makes it fail harmlessly.
            unsafe { libc::syscall(libc::SYS_tgkill, self.pid, self.tid, libc::SIGPIPE) };
        }
    }

    /// Runs `finish` in a thread named `name`; without a thread, the caller gets what a
    /// non-blocking call would (`EAGAIN`).
    fn finish_in_thread(&self, name: &str, finish: impl FnOnce() + Send + 'static) {
        let spawned = std::thread::Builder::new().name(name.into()).spawn(finish);
        if spawned.is_err() {
            notif::fail(self.listener.as_raw_fd(), self.id, libc::EAGAIN);
        }
    }

    /// Waits until `fd` is ready for `events`, checking every [`WAIT_SLICE`] that the
    /// notification still waits for its answer and that the calling thread has no signal
    /// to take (the filter's wait is killable only: the supervisor ends it).
    fn ready(&self, fd: Fd, events: libc::c_short) -> Waited {
        let mut before = 0;
        loop {
            // The kernel wakes one thread for a signal to the process: in a process of
            // several, the signal is taken as this thread's when no other took it for a
            // whole slice (an answer of ERESTARTSYS to a thread the kernel did not wake
            // would reach the program as errno 512).
            let p = target::pending(self.tid);
            if p.thread != 0 || (p.process != 0 && (p.threads == 1 || p.process & before != 0)) {
                return Waited::Signal;
            }
            before = p.process;
            let mut p = libc::pollfd {
                fd: fd.local,
                events,
                revents: 0,
            };
            // SAFETY: one pollfd of ours.
            let n = unsafe { libc::poll(&mut p, 1, WAIT_SLICE.as_millis() as i32) };
            if !notif::valid(self.listener.as_raw_fd(), self.id) {
                return Waited::Gone;
            }
            if n > 0 {
                return Waited::Ready;
            }
        }
    }
}

/// A transfer into a pipe served for a filtered process: from a regular file, or from
/// another pipe.
struct Transfer {
    call: Pending,
    /// The file or pipe the bytes come from.
    from: Fd,
    /// The pipe they go into.
    to: Fd,
    /// The duplicates `from` and `to` name, open for the transfer's life.
    _keep: [OwnedFd; 2],
    /// The caller's offset pointer (0: none) and the offset read from it.
    off_ptr: u64,
    off: Option<i64>,
    len: usize,
    flags: u32,
    /// From a pipe: `Some(true)` for a `tee`, `Some(false)` for a `splice`.
    between_pipes: Option<bool>,
}

/// What one try of a [`Transfer`] did.
enum Attempt {
    /// Answered.
    Done,
    /// Not the transfer it seemed (the fds changed meanwhile): the call runs itself.
    Elsewhere,
    /// The pipe is full (or the source pipe empty) and the caller asked for blocking:
    /// nothing moved, not answered.
    WouldBlock,
}

impl Transfer {
    fn attempt(&self) -> Attempt {
        let mut off = self.off;
        let (from, to, len, flags) = (self.from, self.to, self.len, self.flags);
        let r = match self.between_pipes {
            Some(tee) => sv::pipe_to_pipe(self.call.pid, from, to, len, flags, tee),
            None => sv::file_to_pipe(self.call.pid, from, to, off.as_mut(), len, flags),
        };
        match r {
            Spliced::Elsewhere => Attempt::Elsewhere,
            Spliced::Failed(libc::EAGAIN) if self.blocking() => Attempt::WouldBlock,
            Spliced::Failed(e) => {
                self.call.fail(e);
                Attempt::Done
            }
            Spliced::Moved(n) => {
                let written = match off {
                    Some(o) if self.off_ptr != 0 => {
                        target::write_mem(self.call.tid, self.off_ptr, &o.to_ne_bytes())
                    }
                    _ => true,
                };
                if written {
                    self.call.answer(n as i64);
                } else {
                    // The bytes moved, then the offset could not be stored: the kernel
                    // says EFAULT then too.
                    self.call.fail(libc::EFAULT);
                }
                Attempt::Done
            }
        }
    }

    /// The caller asked for a blocking call: no `SPLICE_F_NONBLOCK`, no `O_NONBLOCK` on
    /// the pipes (the duplicates share their status flags), as the hooks decide it.
    fn blocking(&self) -> bool {
        let source_pipe = self.between_pipes.is_some() && nonblocking(self.from);
        self.flags & libc::SPLICE_F_NONBLOCK == 0 && !nonblocking(self.to) && !source_pipe
    }

    /// Waits for bytes in the source pipe (from a pipe) and room in the destination, then
    /// tries again, for as long as the caller waits (its death withdraws the notification;
    /// a signal for it ends the wait as the kernel's pipe wait ends: `ERESTARTSYS`, nothing
    /// moved).
    fn wait_and_finish(self) {
        loop {
            let mut waited = Waited::Ready;
            if self.between_pipes.is_some() {
                waited = self.call.ready(self.from, libc::POLLIN);
            }
            if waited == Waited::Ready {
                waited = self.call.ready(self.to, libc::POLLOUT);
            }
            match waited {
                Waited::Ready => {}
                Waited::Gone => return,
                Waited::Signal => return self.call.fail(ERESTARTSYS),
            }
            match self.attempt() {
                Attempt::WouldBlock => continue,
                Attempt::Done => return,
                Attempt::Elsewhere => return self.call.proceed(),
            }
        }
    }
}
