//! The splice side: moving bytes into pipes while keeping the registry exact.
//!
//! Every call that puts bytes into a pipe the registry may know runs without blocking
//! (`SPLICE_F_NONBLOCK` / `RWF_NOWAIT`) and either with the table lock held or, for a
//! recorded file→pipe splice, with its pipe marked as in the caller's call (the lock is
//! free meanwhile, so splicers of other pipes go on), so a settle never interleaves with
//! it; a blocking caller then waits for room with `poll`, outside the lock, and tries
//! again — exactly the blocking behaviour of the real call.

use crate::ops::intent::{Kind, Mutation};
use crate::ops::settle::{self, Action, Conflicts, Scope};
use crate::ops::{lifetime, mutation, sweep};
use crate::state::fd::{cannot_change, current_offset, status_flags, FdKind};
use crate::state::fdcache;
use crate::state::guard::keep_errno;
use crate::state::pipe::{self, Wait};
use crate::state::runtime::{self, Mode};
use crate::state::subject;
use crate::state::usermem::{set_user_offset, user_offset, user_offset_raw};
use splicecow_registry::layout::{Counters, SEGMENTS_PER_PIPE};
use splicecow_registry::pause::Point;
use splicecow_registry::{lock, sys, FileKey, Full, Guard, Intent, PipeSlot, Registry, Tables};
use std::sync::atomic::{AtomicU64, Ordering};

/// Runs `attempt` (one non-blocking try) until it does not fail with `EAGAIN`, waiting
/// for each of `waits` in turn between tries when the caller asked for blocking
/// (`blocking` is only asked after an `EAGAIN`: it may cost a syscall).
pub fn blocking_loop(
    blocking: impl Fn() -> bool,
    waits: &[(i32, libc::c_short)],
    mut attempt: impl FnMut() -> isize,
) -> isize {
    let caller_errno = sys::errno();
    loop {
        let r = attempt();
        if r >= 0 {
            // A success leaves errno as the caller had it (EAGAIN/EINTR of tries is ours).
            sys::set_errno(caller_errno);
            return r;
        }
        if sys::errno() != libc::EAGAIN || !keep_errno(&blocking) {
            return r;
        }
        for &(fd, events) in waits {
            if pipe::wait(fd, events) == Wait::Interrupted {
                sys::set_errno(libc::EINTR);
                return -1;
            }
        }
    }
}

/// Raw `splice(2)`.
fn raw_splice(
    fd_in: i32,
    off_in: *mut i64,
    fd_out: i32,
    off_out: *mut i64,
    len: usize,
    flags: u32,
) -> isize {
    // SAFETY: pointers are the caller's; the kernel validates them (EFAULT).
    unsafe { libc::syscall(libc::SYS_splice, fd_in, off_in, fd_out, off_out, len, flags) as isize }
}

/// The kernel's `splice` of `x` with `flags`, through a local copy of `*off_in`: the
/// kernel may move bytes and then fail to write a read-only offset back (`EFAULT`), which
/// would leave bytes in the pipe that no segment covers. Here the offset is written back
/// afterwards, and an `EFAULT` then still reports what moved to the registry.
fn splice_with_offset(x: FileToPipe, flags: u32) -> Moved {
    let mut off = match user_offset_raw(x.off_in) {
        Some(off) if !x.off_in.is_null() => off,
        // No offset, or an unreadable one (the kernel refuses that the same way).
        _ => {
            let r = raw_splice(
                x.fd_in,
                x.off_in,
                x.fd_out,
                std::ptr::null_mut(),
                x.len,
                flags,
            );
            return Moved::Returned(r);
        }
    };
    let r = raw_splice(
        x.fd_in,
        &mut off,
        x.fd_out,
        std::ptr::null_mut(),
        x.len,
        flags,
    );
    if r > 0 && !set_user_offset(x.off_in, off) {
        // The bytes moved; the caller learns it as the kernel would tell it: EFAULT.
        return Moved::ButFaulted(r);
    }
    Moved::Returned(r)
}

/// What a kernel transfer into a pipe did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moved {
    /// The call's own return value (bytes moved, or -1 with `errno`).
    Returned(isize),
    /// These bytes moved, then writing the caller's offset back faulted: the call fails
    /// with `EFAULT` although the pipe holds the bytes.
    ButFaulted(isize),
}

impl Moved {
    /// Bytes that went into the pipe.
    fn bytes(self) -> u64 {
        match self {
            Moved::Returned(r) | Moved::ButFaulted(r) => r.max(0) as u64,
        }
    }

    /// What the hooked call returns (setting `errno` for a fault).
    fn result(self) -> isize {
        match self {
            Moved::Returned(r) => r,
            Moved::ButFaulted(_) => {
                sys::set_errno(libc::EFAULT);
                -1
            }
        }
    }
}

/// A file→pipe transfer (`splice`, `sendfile`) as the caller asked for it.
#[derive(Debug, Clone, Copy)]
pub struct FileToPipe {
    /// The file's fd.
    pub fd_in: i32,
    /// The caller's offset pointer (null: the fd's offset).
    pub off_in: *mut i64,
    /// The pipe's write end.
    pub fd_out: i32,
    /// The file's identity.
    pub file: FileKey,
    /// The pipe's identity.
    pub pipe: FileKey,
    /// Most bytes to move.
    pub len: usize,
    /// The caller's `SPLICE_F_*` flags.
    pub flags: u32,
}

/// How one try of a file→pipe transfer moves its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Zero-copy, its intent recorded.
    Recorded,
    /// Zero-copy without a record: the kernel will refuse the call (bad offset pointer or
    /// fd), so nothing moves.
    Refused,
    /// The copy path: the file has a shared writable mapping.
    SharedMapping,
    /// The copy path: no room in the registry.
    Full,
}

/// A file→pipe transfer by a shimmed process: recorded as an in-flight segment in
/// protect/detect mode, copied in copy mode or when it cannot be recorded. Returns what
/// the real call would: bytes moved, or -1 with `errno`.
pub fn file_to_pipe(x: FileToPipe) -> isize {
    let rt = runtime::get();
    let blocking =
        || x.flags & libc::SPLICE_F_NONBLOCK == 0 && status_flags(x.fd_out) & libc::O_NONBLOCK == 0;
    let waits = [(x.fd_out, libc::POLLOUT)];
    let splice_nonblocking = || splice_with_offset(x, x.flags | libc::SPLICE_F_NONBLOCK);
    // A source whose bytes cannot change needs no record (learned once per fd).
    let reg = rt
        .tracking()
        .filter(|_| !fdcache::unchangeable(x.fd_in, cannot_change));
    let Some(reg) = reg else {
        let copy = rt.mode == Mode::Copy;
        return blocking_loop(blocking, &waits, || {
            if copy {
                copy_into_pipe(x).result()
            } else {
                splice_nonblocking().result()
            }
        });
    };
    let counters: &'static Counters = &reg.header().counters;
    blocking_loop(blocking, &waits, || {
        let mut t = settle::lock_quiet(reg, &[x.pipe]);
        let mut placed = place(&mut t, x);
        if placed.1 == Route::Full {
            // A table full of records nobody needs any more is reclaimed first.
            drop(t);
            let swept = sweep::for_room(reg);
            t = settle::lock_quiet(reg, &[x.pipe]);
            if swept {
                placed = place(&mut t, x);
            }
        }
        let (slot, route) = placed;
        let moved = match (route, slot) {
            (Route::Recorded, Some(slot)) => {
                // The intent is recorded: the kernel call runs with the lock free, so
                // splicers of other pipes go on meanwhile. The pipe is marked as in this
                // thread's call; nobody else touches its record or its bytes until the
                // mark is gone (`settle::in_another_call`).
                t.set_call_owner(slot, lock::owner_id());
                drop(t);
                reg.pause(Point::Call);
                let moved = splice_nonblocking();
                t = settle::lock(reg);
                t.set_call_owner(slot, 0);
                moved
            }
            (Route::Recorded | Route::Refused, _) => splice_nonblocking(),
            (Route::SharedMapping | Route::Full, _) => {
                count_fallback(
                    counters,
                    if route == Route::Full {
                        &counters.copy_fallbacks_registry_full
                    } else {
                        &counters.copy_fallbacks_shared_mapping
                    },
                );
                copy_into_pipe(x)
            }
        };
        let errno = sys::errno();
        let bytes = moved.bytes();
        if let Some(slot) = slot {
            t.commit(slot, bytes);
            if bytes > 0 {
                t.add_holder(slot, subject::pid(), subject::fd(x.fd_out));
                lifetime::noticed(x.fd_out);
                trim_to_capacity(&mut t, slot, x.fd_out, bytes, false);
            }
        }
        if bytes > 0 {
            counters.splices.fetch_add(1, Ordering::Relaxed);
            let kind = match route {
                Route::SharedMapping | Route::Full => &counters.bytes_copy_path,
                Route::Recorded | Route::Refused => &counters.bytes_zero_copy,
            };
            kind.fetch_add(bytes, Ordering::Relaxed);
        }
        sys::set_errno(errno);
        moved.result()
    })
}

/// Finds or makes the pipe's record and records the intent of `x` in it.
fn place(t: &mut Tables<'static>, x: FileToPipe) -> (Option<PipeSlot>, Route) {
    match t.pipe_or_insert(x.pipe) {
        Ok(slot) => (Some(slot), record(t, slot, x)),
        Err(_) => (None, Route::Full),
    }
}

/// `sendfile` into a pipe, served as the equivalent non-blocking splice ([`file_to_pipe`])
/// once `sendfile`'s own checks passed, in its order: an offset it cannot read or write
/// back (`EFAULT`, which the kernel reports even after any other error), an input not
/// open for reading (`EBADF`), a negative offset or a count too large (`EINVAL`); then the
/// real call with a count of 0, which moves nothing and answers every other check
/// exactly (the output's mode, an offset past the largest file, a full pipe, a pipe
/// without readers), waiting for room as the real call would.
pub fn sendfile_to_pipe(x: FileToPipe, real: impl Fn(usize) -> isize) -> isize {
    let off = (!x.off_in.is_null()).then(|| user_offset_raw(x.off_in));
    // The kernel writes the offset back whatever happened: a read-only one is EFAULT.
    let unwritable = off.flatten().is_some_and(|o| !set_user_offset(x.off_in, o));
    let fail = |errno| {
        sys::set_errno(if unwritable { libc::EFAULT } else { errno });
        -1
    };
    if off == Some(None) {
        return fail(libc::EFAULT);
    }
    if !open_for(x.fd_in, libc::O_WRONLY) {
        return fail(libc::EBADF);
    }
    let past_end = |o: i64| o < 0 || o.checked_add(x.len as i64).is_none();
    if off.flatten().is_some_and(past_end) || x.len > isize::MAX as usize {
        return fail(libc::EINVAL);
    }
    if unwritable {
        // The bytes move (or the call fails), and the offset then faults.
        if x.len > 0 {
            let _ = file_to_pipe(x);
        }
        return fail(libc::EFAULT);
    }
    let probe = real(0);
    if probe < 0 || x.len == 0 {
        return probe;
    }
    file_to_pipe(x)
}

/// Every this many stream bytes a pipe record is trimmed to the pipe's capacity.
const TRIM_EVERY: u64 = 1 << 20;

/// A pipe never holds more than its capacity, so stream bytes older than that were
/// consumed: retires them from pipe `slot` (written through `fd`). The kernel is asked
/// for the capacity (`F_GETPIPE_SZ`, no lock in the kernel) only when `force` (the ring
/// is filling up) or when the last `moved` bytes crossed a [`TRIM_EVERY`] boundary of the
/// stream: once per MiB, not on every call. Segments kept a little longer only cost an
/// exact check at a conflict; a capacity remembered across calls could be one that
/// another process has grown since.
fn trim_to_capacity(t: &mut Tables<'static>, slot: PipeSlot, fd: i32, moved: u64, force: bool) {
    let bytes_in = t.pipe(slot).bytes_in;
    let crossed = bytes_in / TRIM_EVERY != bytes_in.saturating_sub(moved) / TRIM_EVERY;
    if force || crossed {
        t.retire_before(slot, bytes_in.saturating_sub(pipe::capacity(fd) as u64));
    }
}

/// Records the intent of `x` in pipe `slot` (under the lock), or says why it cannot be.
fn record(t: &mut Tables<'static>, slot: PipeSlot, x: FileToPipe) -> Route {
    let filling = t.pipe(slot).count as usize >= SEGMENTS_PER_PIPE * 3 / 4;
    trim_to_capacity(t, slot, x.fd_out, 0, filling);
    let off = if x.off_in.is_null() {
        current_offset(x.fd_in)
    } else {
        user_offset(x.off_in)
    };
    let Some(off) = off else {
        return Route::Refused;
    };
    if t.has_shared_writable_map(x.file) {
        return Route::SharedMapping;
    }
    let intent = Intent {
        file: x.file,
        file_off: off,
        len: (x.len as u64).min(u64::MAX - off),
        splicer_pid: subject::pid(),
        stack: crate::ops::stacks::splice_stack(t),
    };
    let mut pushed = t.push_segment(slot, intent);
    if pushed == Err(Full::Segments) {
        // Ring full of small splices: prune exactly, then try again.
        if let Some(pending) = pipe::pending(x.fd_out) {
            t.prune(slot, pending);
        }
        pushed = t.push_segment(slot, intent);
    }
    match pushed {
        Ok(()) => Route::Recorded,
        Err(_) => Route::Full,
    }
}

/// Counts a splice served by the copy path in protect or detect mode, in all and under
/// its cause (one of `c`'s `copy_fallbacks_*` counters).
fn count_fallback(c: &Counters, cause: &AtomicU64) {
    c.copy_fallbacks.fetch_add(1, Ordering::Relaxed);
    cause.fetch_add(1, Ordering::Relaxed);
}

/// The copy path: reads up to `x.len` bytes of the file into fresh private pages and
/// gift-free `vmsplice`s them into the pipe (non-blocking), advancing the file offset
/// (or `*off_in`) by what the pipe took. The pipe never sees a page-cache page. It answers
/// as the kernel's splice would: its checks in the kernel's order, one pipe buffer per
/// page piece (so an unaligned start fills the pipe as a splice does), and at the end of
/// the file the kernel's own answer for the pipe (0, `EAGAIN` when full, `EPIPE` without
/// readers), got by splicing from an empty file.
fn copy_into_pipe(x: FileToPipe) -> Moved {
    let fail = |errno| {
        sys::set_errno(errno);
        Moved::Returned(-1)
    };
    if x.len == 0 {
        return Moved::Returned(0);
    }
    if x.flags & !SPLICE_F_ALL != 0 {
        return fail(libc::EINVAL);
    }
    if !open_for(x.fd_in, libc::O_WRONLY) || !open_for(x.fd_out, libc::O_RDONLY) {
        return fail(libc::EBADF);
    }
    if x.len > isize::MAX as usize {
        return fail(libc::EINVAL);
    }
    let start = if x.off_in.is_null() {
        current_offset(x.fd_in)
    } else {
        user_offset(x.off_in)
    };
    let Some(start) = start else {
        // An unreadable or negative offset, or an fd without one: the kernel refuses the
        // call the same way (EFAULT, EINVAL, ESPIPE) before it moves anything.
        let nb = x.flags | libc::SPLICE_F_NONBLOCK;
        let r = raw_splice(x.fd_in, x.off_in, x.fd_out, std::ptr::null_mut(), x.len, nb);
        return Moved::Returned(r);
    };
    const PAGE: usize = 4096;
    let lead = start as usize % PAGE;
    let n = x.len.min(pipe::capacity(x.fd_out));
    let Ok(buf) = sys::mmap_rw(n + lead, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1) else {
        return fail(libc::ENOMEM);
    };
    // SAFETY: buf has n + lead writable bytes; the file's bytes land at the same offset in
    // their page as in the file's.
    let data = unsafe { buf.add(lead) };
    // SAFETY: `data` has n writable bytes.
    let got = unsafe { libc::syscall(libc::SYS_pread64, x.fd_in, data, n, start as i64) } as isize;
    let r = match got {
        0 => at_end_of_file(x.fd_out, x.flags),
        got if got < 0 => got,
        // A file that reports no size yet has bytes (/proc, /sys) may refuse splice.
        // (The pipe is checked first: no readers, or full, is the kernel's answer then.)
        _ if file_size(x.fd_in) == Some(0) && !spliceable(x.fd_in, start) => {
            match at_end_of_file(x.fd_out, x.flags) {
                r if r < 0 => r,
                _ => {
                    sys::set_errno(libc::EINVAL);
                    -1
                }
            }
        }
        got => {
            let iov = libc::iovec {
                iov_base: data.cast(),
                iov_len: got as usize,
            };
            // SAFETY: one iovec over our private buffer; the pipe keeps its own references
            // to the pages, which nobody writes again: we unmap them right after.
            unsafe {
                libc::syscall(
                    libc::SYS_vmsplice,
                    x.fd_out,
                    &iov as *const libc::iovec,
                    1,
                    libc::SPLICE_F_NONBLOCK,
                ) as isize
            }
        }
    };
    let errno = sys::errno();
    // SAFETY: our own buffer; the pipe holds page references, not the mapping.
    unsafe { sys::munmap(buf, n + lead) };
    sys::set_errno(errno);
    if r <= 0 {
        return Moved::Returned(r);
    }
    let new = start as i64 + r as i64;
    if x.off_in.is_null() {
        // SAFETY: lseek takes no pointer.
        unsafe { libc::syscall(libc::SYS_lseek, x.fd_in, new, libc::SEEK_SET) };
    } else if !set_user_offset(x.off_in, new) {
        return Moved::ButFaulted(r);
    }
    Moved::Returned(r)
}

/// What the kernel's splice answers at the end of the file for pipe `fd_out` (it checks
/// the pipe before reading: 0, or `EAGAIN` when full, `EPIPE` and `SIGPIPE` without
/// readers): a splice of one byte from an empty file.
fn at_end_of_file(fd_out: i32, flags: u32) -> isize {
    // SAFETY: memfd_create reads the NUL-terminated name.
    let empty = unsafe {
        libc::syscall(
            libc::SYS_memfd_create,
            c"splicecow-eof".as_ptr(),
            libc::MFD_CLOEXEC,
        )
    } as i32;
    if empty < 0 {
        return 0;
    }
    let r = raw_splice(
        empty,
        std::ptr::null_mut(),
        fd_out,
        std::ptr::null_mut(),
        1,
        flags | libc::SPLICE_F_NONBLOCK,
    );
    keep_errno(|| sys::close(empty));
    r
}

/// True when `fd` is open for the kernel's use, not `O_PATH` and not opened with the
/// access mode `refused` (`O_WRONLY` for an input, `O_RDONLY` for an output): what a
/// transfer answers with `EBADF` before anything else. A bad fd gives 0 flags here and
/// is refused by the call that follows.
fn open_for(fd: i32, refused: i32) -> bool {
    let fl = status_flags(fd);
    fl & libc::O_PATH == 0 && fl & libc::O_ACCMODE != refused
}

/// The size `fstat` reports for `fd`.
fn file_size(fd: i32) -> Option<u64> {
    sys::fstat(fd).ok().map(|st| st.st_size as u64)
}

/// True when the kernel splices from `fd` at `off` (pseudo-files without `splice_read`
/// refuse with `EINVAL`): one byte into a pipe of our own, thrown away.
fn spliceable(fd: i32, off: u64) -> bool {
    let mut ends = [0i32; 2];
    // SAFETY: pipe2 writes two fds into `ends`.
    let made = unsafe {
        libc::syscall(
            libc::SYS_pipe2,
            ends.as_mut_ptr(),
            libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if made != 0 {
        return true;
    }
    let mut at = off as i64;
    let r = raw_splice(
        fd,
        &mut at,
        ends[1],
        std::ptr::null_mut(),
        1,
        libc::SPLICE_F_NONBLOCK,
    );
    let refused = r < 0 && sys::errno() == libc::EINVAL;
    keep_errno(|| ends.iter().for_each(|&e| sys::close(e)));
    !refused
}

/// Every flag `splice(2)` knows.
const SPLICE_F_ALL: u32 =
    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MORE | libc::SPLICE_F_GIFT;

/// A pipe→pipe transfer (`splice` or `tee`) by a shimmed process: the destination gets
/// the source's segments for the bytes that move. `call(flags)` does one kernel call.
pub fn pipe_to_pipe(
    fd_in: i32,
    fd_out: i32,
    src: FileKey,
    dst: FileKey,
    len: usize,
    flags: u32,
    call: impl Fn(u32) -> isize,
) -> isize {
    let blocking = || {
        flags & libc::SPLICE_F_NONBLOCK == 0
            && (status_flags(fd_in) | status_flags(fd_out)) & libc::O_NONBLOCK == 0
    };
    let waits = [(fd_in, libc::POLLIN), (fd_out, libc::POLLOUT)];
    let nb = flags | libc::SPLICE_F_NONBLOCK;
    let Some(reg) = runtime::get().tracking() else {
        return blocking_loop(blocking, &waits, || call(nb));
    };
    // Whether the source carries segments is decided under the lock, on every try: a
    // blocking caller waits outside it, and a splice into the source may land meanwhile.
    blocking_loop(blocking, &waits, || {
        let mut t = settle::lock_quiet(reg, &[src, dst]);
        if reg.live_segments() == 0 {
            return call(nb);
        }
        let src_slot = t.find_pipe(src);
        let src_pending = pipe::pending(fd_in).unwrap_or(0);
        let carrying = src_slot.filter(|&s| {
            t.prune(s, src_pending);
            t.pipe(s).count > 0
        });
        let dst_slot = match carrying {
            Some(_) => t.pipe_or_insert(dst).ok(),
            None => t.find_pipe(dst),
        };
        if let Some(s) = carrying {
            lifetime::noticed(fd_in);
            let from = t.pipe(s).bytes_in.saturating_sub(src_pending);
            let carried = dst_slot.is_some_and(|d| t.carry(s, from, len as u64, d).is_ok());
            if !carried {
                // No room to follow the bytes: make the source's bytes private instead.
                settle::handle(
                    &mut t,
                    s,
                    Scope::Whole,
                    Action::Settle,
                    &mut Conflicts::default(),
                );
            }
        }
        let r = call(nb);
        let errno = sys::errno();
        if let Some(d) = dst_slot {
            t.commit(d, r.max(0) as u64);
            if r > 0 {
                t.add_holder(d, subject::pid(), subject::fd(fd_out));
                lifetime::noticed(fd_out);
            }
        }
        sys::set_errno(errno);
        r
    })
}

/// Where a `write`/`writev` goes, once the mutation side is done.
pub enum WriteRoute {
    /// Straight to the real call.
    Direct,
    /// Into a pipe the registry tracks: through [`write_into_pipe`].
    TrackedPipe(&'static Registry, FileKey),
}

/// Settles what a write of `len` bytes at `fd`'s offset overlaps (a regular file), and
/// routes writes into tracked pipes (protect mode) through [`write_into_pipe`].
pub fn route_write(fd: i32, len: u64, kind: Kind) -> WriteRoute {
    keep_errno(|| {
        let Some(reg) = mutation::active_registry() else {
            return WriteRoute::Direct;
        };
        match fdcache::kind(fd) {
            FdKind::Regular(key) => {
                mutation::check_file(reg, key, Mutation::cursor(fd, len, kind));
                WriteRoute::Direct
            }
            FdKind::Pipe(key)
                if runtime::get().mode == Mode::Protect
                    && settle::lock(reg).find_pipe(key).is_some() =>
            {
                WriteRoute::TrackedPipe(reg, key)
            }
            FdKind::Pipe(_) | FdKind::Other => WriteRoute::Direct,
        }
    })
}

/// `write`/`writev` into a pipe the registry tracks: under the lock, and without
/// blocking, so a settle of that pipe never reorders these bytes. The non-blocking
/// writes go through a private `O_NONBLOCK` (and, for packet mode, `O_DIRECT`) reopening
/// of the pipe (`RWF_NOWAIT` is refused once a pipe holds spliced pages). `None` when the
/// pipe has no reader: the caller then calls through and gets `EPIPE`/`SIGPIPE` as usual.
pub fn write_into_pipe(
    reg: &Registry,
    fd: i32,
    key: FileKey,
    iov: &mut [libc::iovec],
) -> Option<isize> {
    let blocking = status_flags(fd) & libc::O_NONBLOCK == 0;
    write_into_pipe_waiting(reg, fd, key, iov, blocking)
}

/// [`write_into_pipe`], waiting for room only when `blocking` (else one non-blocking
/// try: strict mode's supervisor, which must not wait in its loop, waits itself).
pub fn write_into_pipe_waiting(
    reg: &Registry,
    fd: i32,
    key: FileKey,
    iov: &mut [libc::iovec],
    blocking: bool,
) -> Option<isize> {
    let flags = status_flags(fd);
    let writer = pipe::reopen(sys::getpid(), fd, key, libc::O_WRONLY | libc::O_NONBLOCK).ok()?;
    if flags & libc::O_DIRECT != 0 {
        // Packet mode cannot be asked for at open; F_SETFL on our own description can.
        let own = status_flags(writer) | libc::O_DIRECT;
        // SAFETY: F_SETFL on the private description just opened.
        unsafe { libc::syscall(libc::SYS_fcntl, writer, libc::F_SETFL, own) };
    }

    let want: usize = iov.iter().map(|v| v.iov_len).sum();
    let mut done = 0usize;
    let mut first = 0usize;
    let result = loop {
        let r = blocking_loop(
            || blocking,
            &[(fd, libc::POLLOUT)],
            || {
                let mut t: Guard = settle::lock_quiet(reg, &[key]);
                let rest = iov.get(first..).unwrap_or_default();
                // SAFETY: `rest` are the caller's iovecs (adjusted below); the kernel
                // checks the buffers they point to.
                let r = unsafe {
                    libc::syscall(libc::SYS_writev, writer, rest.as_ptr(), rest.len()) as isize
                };
                let errno = sys::errno();
                if let Some(slot) = t.find_pipe(key) {
                    t.commit(slot, r.max(0) as u64);
                    lifetime::noticed(fd);
                }
                sys::set_errno(errno);
                r
            },
        );
        if r < 0 {
            break if done > 0 { done as isize } else { r };
        }
        done += r as usize;
        if done >= want || !blocking {
            break done as isize;
        }
        // Skip what was written and go on, as a blocking write would.
        let mut skip = r as usize;
        while let (true, Some(v)) = (skip > 0, iov.get_mut(first)) {
            let take = skip.min(v.iov_len);
            v.iov_base = (v.iov_base as usize + take) as *mut libc::c_void;
            v.iov_len -= take;
            skip -= take;
            if v.iov_len == 0 {
                first += 1;
            }
        }
    };
    keep_errno(|| sys::close(writer));
    Some(result)
}
