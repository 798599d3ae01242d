//! Strict mode's entry points: the operations the hooks run, called by the supervisor
//! (`splicecow run --strict`, in the CLI) on behalf of a process under its seccomp
//! filter, whose system calls it is told about before they run.
//!
//! The supervisor works on duplicates of the filtered process's fds (`pidfd_getfd`):
//! a duplicate shares the open file description, so the file offset and status flags the
//! operations read (`lseek`, `F_GETFL`) are the process's own. While an operation runs,
//! the calling thread acts for that process (`state::subject`): the registry names it as
//! splicer and holder, with its own fd numbers, and detect reports name it.
//!
//! Like `hooks`, this is an entry floor: it builds intents and calls one operation.

use crate::ops::intent::{Mutation, Target};
use crate::ops::maps::LocalMap;
use crate::ops::{clones, mappings, mutation, transfer};
use crate::state::fd::FdKind;
use crate::state::subject::{self, Subject};
use crate::state::{fdcache, guard::Inside, runtime};
use splicecow_registry::{sys, FileKey};
use std::ffi::CStr;

pub use crate::ops::intent::{Kind, Span};
pub use crate::state::program::{classify, Program};
pub use splicecow_registry::env::Mode;

/// Makes this process the supervisor of `domain` (whose registry exists), in `mode`,
/// with detect reports appended to `report_path` (else stderr). Call once, before any
/// other function here. The fd identity cache is turned off: this process has no close
/// hooks, so a number it learned could name another file later.
pub fn join(domain: &str, mode: Mode, report_path: Option<&[u8]>) -> Result<(), String> {
    fdcache::turn_off();
    // The registry asks for this process's and thread's ids several times per served
    // call; a cache makes them free (kept right across `fork` by its handler).
    sys::cache_ids();
    let report = report_path.map(|p| [p, b"\0"].concat());
    runtime::init_explicit(domain, mode, report)?;
    if let Some(reg) = &runtime::get().registry {
        // What changes in other domains do with this domain's segments.
        reg.claim_mode(mode);
    }
    Ok(())
}

/// Sweeps the domain now: records of pipes that no process holds any more are retired.
/// A filtered process's close is not seen, so the last segments it spliced stay live
/// until a sweep; `splicecow run` calls this once CMD and its descendants are gone,
/// before it decides whether its registry still holds bytes in flight.
pub fn sweep() {
    if let Some(reg) = &runtime::get().registry {
        crate::ops::sweep::now(reg);
    }
}

/// False when no mutation can conflict now (nothing live in any domain of the user):
/// the supervisor then lets a call go ahead without looking at it.
pub fn anything_live() -> bool {
    mutation::active_registry().is_some()
}

/// An fd of the filtered process.
#[derive(Debug, Clone, Copy)]
pub struct Fd {
    /// The supervisor's duplicate.
    pub local: i32,
    /// The number in the filtered process.
    pub theirs: i32,
}

/// Runs `f` inside the shim, acting for process `pid` with the fds `fds`.
fn serving<T>(pid: i32, fds: [Fd; 2], f: impl FnOnce() -> T) -> T {
    let s = Subject {
        pid,
        fds: fds.map(|fd| (fd.local, fd.theirs)),
    };
    let _inside = Inside::enter();
    subject::acting_for(s, f)
}

/// Before process `pid` changes the file open as `fd`: settles (protect) or reports
/// (detect) what the change overlaps, exactly as the hooks do.
pub fn before_change(pid: i32, fd: Fd, change: Kind, range: Span) {
    let m = Mutation {
        target: Target::Fd(fd.local),
        span: range,
        kind: change,
    };
    serving(pid, [fd, fd], || mutation::before(m));
}

/// A change a call is about to make to the file of one of the caller's fds, described as
/// the hooks describe it; the fd is the caller's number ([`FdChange::fd`]).
#[derive(Debug, Clone, Copy)]
pub struct FdChange(Mutation);

impl FdChange {
    /// The caller's fd whose file changes.
    pub fn fd(&self) -> i32 {
        match self.0.target {
            Target::Fd(fd) => fd,
            _ => -1,
        }
    }
}

/// True for the `ioctl` requests that write into a destination file (the clone and
/// dedupe requests; the filter sends these to the supervisor).
pub fn is_clone_request(request: u32) -> bool {
    clones::is_clone_request(request)
}

/// The destinations of `ioctl(fd, request, arg)` by a filtered process, read by the
/// hooks' own parser through `read(addr, buf)` (false: unreadable), which reads the
/// process's memory.
pub fn clone_destinations(
    fd: i32,
    request: u32,
    arg: u64,
    read: impl Fn(u64, &mut [u8]) -> bool,
) -> Vec<FdChange> {
    let mut out = Vec::new();
    let read = |addr: usize, buf: &mut [u8]| read(addr as u64, buf);
    clones::destinations(fd, request, arg as usize, read, |m| out.push(FdChange(m)));
    out
}

/// Before process `pid` makes `change` to the file of its fd `fd.theirs` (our duplicate
/// `fd.local`): as [`before_change`].
pub fn before_fd_change(pid: i32, fd: Fd, change: FdChange) {
    let m = Mutation {
        target: Target::Fd(fd.local),
        ..change.0
    };
    serving(pid, [fd, fd], || mutation::before(m));
}

/// Before process `pid` changes the file at `path` (relative to the supervisor's `dirfd`,
/// which names the directory the process's call resolves it from): as
/// [`before_change`]. `follow`: a final symlink is followed.
pub fn before_path_change(
    pid: i32,
    dirfd: i32,
    path: &CStr,
    follow: bool,
    change: Kind,
    range: Span,
) {
    let m = Mutation {
        target: Target::Path {
            dirfd,
            path: path.as_ptr(),
            follow,
        },
        span: range,
        kind: change,
    };
    let none = Fd {
        local: -1,
        theirs: -1,
    };
    serving(pid, [none, none], || mutation::before(m));
}

/// Before process `pid` calls `mmap(_, len, prot, flags, fd, offset)`: a shared
/// writable mapping of a regular file is counted, so that splices of the file take the
/// copy path from now on, and the range it maps is settled, as the `mmap` hook does. The
/// count is this process's (the supervisor sees no `munmap`): it lasts until the run ends.
pub fn before_map(pid: i32, fd: Fd, len: usize, prot: i32, flags: i32, offset: i64) {
    serving(pid, [fd, fd], || {
        if let Some(planned) = mappings::plan(len, prot, flags, fd.local, offset) {
            mappings::before_map(planned, fd.local);
        }
    });
}

/// Before process `pid` gives write access to its shared mapping of the file with
/// device `dev` and inode `ino` that shows file bytes `[lo, hi)` (`mprotect`): counted
/// and settled as [`before_map`] does.
pub fn before_write_access(pid: i32, dev: u64, ino: u64, lo: u64, hi: u64) {
    let m = LocalMap {
        start: 0,
        end: hi.saturating_sub(lo) as usize,
        key: FileKey { dev, ino },
        file_off: lo,
        prot: libc::PROT_READ | libc::PROT_WRITE,
        private: false,
    };
    let none = Fd {
        local: -1,
        theirs: -1,
    };
    serving(pid, [none, none], || {
        mappings::before_untracked_write_access(m)
    });
}

/// What [`file_to_pipe`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spliced {
    /// Not the transfer asked for (a regular file into a pipe, a pipe into a pipe): the
    /// call is not one to record.
    Elsewhere,
    /// Bytes moved (the call's result).
    Moved(usize),
    /// The call failed with this `errno` (`EAGAIN`: the pipe is full; wait and retry if
    /// the process asked for blocking).
    Failed(i32),
}

/// A `splice` (or `sendfile`) of up to `len` bytes of `file` into `pipe` by process
/// `pid`, run here without blocking (`SPLICE_F_NONBLOCK` added to `flags`) and recorded
/// as the hooks record it. `off` is the process's offset (`*off_in`, already read from
/// its memory; the caller writes it back), `None` for the file's own offset.
pub fn file_to_pipe(
    pid: i32,
    file: Fd,
    pipe: Fd,
    off: Option<&mut i64>,
    len: usize,
    flags: u32,
) -> Spliced {
    let (FdKind::Regular(fkey), FdKind::Pipe(pkey)) =
        (fdcache::kind(file.local), fdcache::kind(pipe.local))
    else {
        return Spliced::Elsewhere;
    };
    let off_in = off.map_or(std::ptr::null_mut(), |o| o as *mut i64);
    let x = transfer::FileToPipe {
        fd_in: file.local,
        off_in,
        fd_out: pipe.local,
        file: fkey,
        pipe: pkey,
        len,
        flags: flags | libc::SPLICE_F_NONBLOCK,
    };
    serving(pid, [file, pipe], || {
        let r = transfer::file_to_pipe(x);
        if r >= 0 {
            Spliced::Moved(r as usize)
        } else {
            Spliced::Failed(sys::errno())
        }
    })
}

/// True when `fd` is a pipe (or FIFO).
pub fn is_pipe(fd: Fd) -> bool {
    matches!(fdcache::kind(fd.local), FdKind::Pipe(_))
}

/// A `tee` (or a `splice` without offsets) of up to `len` bytes from pipe `src` into
/// pipe `dst` by process `pid`, run here without blocking (`SPLICE_F_NONBLOCK` added to
/// `flags`): the destination gets the source's segments for the bytes that move, as the
/// hooks' pipe→pipe path gives them.
pub fn pipe_to_pipe(pid: i32, src: Fd, dst: Fd, len: usize, flags: u32, tee: bool) -> Spliced {
    let (FdKind::Pipe(src_key), FdKind::Pipe(dst_key)) =
        (fdcache::kind(src.local), fdcache::kind(dst.local))
    else {
        return Spliced::Elsewhere;
    };
    let call = |fl: u32| -> isize {
        let null = std::ptr::null_mut::<i64>();
        // SAFETY: plain system calls on our duplicates; no pointer but the null offsets.
        unsafe {
            if tee {
                libc::syscall(libc::SYS_tee, src.local, dst.local, len, fl) as isize
            } else {
                libc::syscall(libc::SYS_splice, src.local, null, dst.local, null, len, fl) as isize
            }
        }
    };
    let nb = flags | libc::SPLICE_F_NONBLOCK;
    serving(pid, [src, dst], || {
        let r = transfer::pipe_to_pipe(src.local, dst.local, src_key, dst_key, len, nb, call);
        if r >= 0 {
            Spliced::Moved(r as usize)
        } else {
            Spliced::Failed(sys::errno())
        }
    })
}

/// Before process `pid` writes `len` bytes (`u64::MAX`: unknown) at the offset of its fd
/// `fd` (`write`, `writev`): a regular file's range is settled, as the hooks do. True
/// when `fd` is a pipe the registry tracks (protect mode): the bytes must then go in
/// through [`write_into_tracked_pipe`], so that no settle of the pipe reorders them.
pub fn before_write(pid: i32, fd: Fd, len: u64, change: Kind) -> bool {
    let route = serving(pid, [fd, fd], || {
        transfer::route_write(fd.local, len, change)
    });
    matches!(route, transfer::WriteRoute::TrackedPipe(..))
}

/// What [`write_into_tracked_pipe`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeWrite {
    /// The pipe has no reader (or is no longer tracked): the call runs itself (the
    /// kernel's `EPIPE` and `SIGPIPE`).
    Direct,
    /// Bytes written.
    Wrote(usize),
    /// The write failed with this `errno` (`EAGAIN`: the pipe is full).
    Failed(i32),
}

/// One non-blocking `write` of `data` (the bytes process `pid` writes, copied from its
/// memory) into its pipe `fd`, under the lock as the hooks' `write` does it.
pub fn write_into_tracked_pipe(pid: i32, fd: Fd, data: &[u8]) -> PipeWrite {
    let (Some(reg), FdKind::Pipe(key)) = (mutation::active_registry(), fdcache::kind(fd.local))
    else {
        return PipeWrite::Direct;
    };
    let mut iov = [libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    }];
    serving(pid, [fd, fd], || {
        match transfer::write_into_pipe_waiting(reg, fd.local, key, &mut iov, false) {
            None => PipeWrite::Direct,
            Some(r) if r >= 0 => PipeWrite::Wrote(r as usize),
            Some(_) => PipeWrite::Failed(sys::errno()),
        }
    })
}
