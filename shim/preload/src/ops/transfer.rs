//! The splice side: moving bytes into pipes while keeping the registry exact.
//!
//! Every call that puts bytes into a pipe the registry may know runs with the table lock
//! held and without blocking (`SPLICE_F_NONBLOCK` / `RWF_NOWAIT`), so a settle never
//! interleaves with it; a blocking caller then waits for room with `poll`, outside the
//! lock, and tries again — exactly the blocking behaviour of the real call.

use crate::fdkind::{current_offset, status_flags};
use crate::guard::keep_errno;
use crate::pipe::{self, Wait};
use crate::runtime::{self, Mode};
use crate::settle::settle;
use splicecow_registry::layout::Counters;
use splicecow_registry::{sys, FileKey, Full, Guard, Registry};
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

/// Copies `dst.len()` bytes from the caller's memory at `src` without trusting the
/// pointer: false (nothing copied) where the kernel would answer `EFAULT`.
pub fn copy_from_user(src: *const u8, dst: &mut [u8]) -> bool {
    if dst.is_empty() {
        return true;
    }
    let local = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: dst.len(),
    };
    let remote = libc::iovec {
        iov_base: src as *mut libc::c_void,
        iov_len: dst.len(),
    };
    // SAFETY: the kernel checks `src` and copies into our own buffer `dst`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            sys::getpid(),
            &local as *const libc::iovec,
            1usize,
            &remote as *const libc::iovec,
            1usize,
            0usize,
        )
    };
    r == dst.len() as i64
}

/// Reads the caller's `loff_t` at `p` (null, unreadable or negative → `None`).
pub fn user_offset(p: *const i64) -> Option<u64> {
    let mut v = [0u8; 8];
    if p.is_null() || !copy_from_user(p.cast(), &mut v) {
        return None;
    }
    let v = i64::from_ne_bytes(v);
    (v >= 0).then_some(v as u64)
}

/// A file→pipe transfer (`splice`, `sendfile`) by a shimmed process: recorded as an
/// in-flight segment in protect/detect mode, copied in copy mode or when it cannot be
/// recorded. Returns what the real call would: bytes moved, or -1 with `errno`.
pub fn file_to_pipe(
    fd_in: i32,
    off_in: *mut i64,
    fd_out: i32,
    file: FileKey,
    pipe_key: FileKey,
    len: usize,
    flags: u32,
) -> isize {
    let rt = runtime::get();
    let blocking =
        || flags & libc::SPLICE_F_NONBLOCK == 0 && status_flags(fd_out) & libc::O_NONBLOCK == 0;
    let waits = [(fd_out, libc::POLLOUT)];
    let splice_nonblocking = || {
        let nb = flags | libc::SPLICE_F_NONBLOCK;
        raw_splice(fd_in, off_in, fd_out, std::ptr::null_mut(), len, nb)
    };
    let Some(reg) = rt.tracking() else {
        let copy = rt.mode == Mode::Copy;
        return blocking_loop(blocking, &waits, || {
            if copy {
                copy_into_pipe(fd_in, off_in, fd_out, len)
            } else {
                splice_nonblocking()
            }
        });
    };
    let counters = &reg.header().counters;
    blocking_loop(blocking, &waits, || {
        let mut t = reg.lock();
        let slot = match t.pipe_slot(pipe_key, true) {
            Ok(Some(slot)) => slot,
            _ => {
                let c = &counters.copy_fallbacks_registry_full;
                return fallback_copy(reg, c, fd_in, off_in, fd_out, len);
            }
        };
        // A pipe never holds more than its capacity: older stream bytes were consumed.
        // (Cheap: F_GETPIPE_SZ takes no lock; FIONREAD would wait for a running reader.)
        let cap = pipe::capacity(fd_out) as u64;
        let bytes_in = t.pipe(slot).bytes_in;
        t.retire_before(slot, bytes_in.saturating_sub(cap));
        let off = if off_in.is_null() {
            current_offset(fd_in)
        } else {
            user_offset(off_in)
        };
        let pid = sys::getpid();
        let shared_mapping = off.is_some() && t.has_shared_writable_map(file);
        let recorded = match off {
            Some(off) if !shared_mapping => {
                let intent = (len as u64).min(cap).min(u64::MAX - off);
                let mut pushed = t.push_segment(slot, file, off, intent, pid);
                if pushed == Err(Full::Segments) {
                    // Ring full of small splices: prune exactly, then try again.
                    if let Some(pending) = pipe::pending(fd_out) {
                        t.prune(slot, pending);
                    }
                    pushed = t.push_segment(slot, file, off, intent, pid);
                }
                pushed.is_ok()
            }
            Some(_) => false,
            // The kernel will refuse the call (bad offset pointer or fd): nothing moves.
            None => true,
        };
        let r = if recorded {
            splice_nonblocking()
        } else {
            count_fallback(
                counters,
                if shared_mapping {
                    &counters.copy_fallbacks_shared_mapping
                } else {
                    &counters.copy_fallbacks_registry_full
                },
            );
            copy_into_pipe(fd_in, off_in, fd_out, len)
        };
        let errno = sys::errno();
        t.commit(slot, r.max(0) as u64);
        if r > 0 {
            t.add_holder(slot, pid, fd_out);
            counters.splices.fetch_add(1, Ordering::Relaxed);
            let kind = if recorded {
                &counters.bytes_zero_copy
            } else {
                &counters.bytes_copy_path
            };
            kind.fetch_add(r as u64, Ordering::Relaxed);
        }
        sys::set_errno(errno);
        r
    })
}

/// Counts a splice served by the copy path in protect or detect mode, in all and under
/// its cause (one of `c`'s `copy_fallbacks_*` counters).
fn count_fallback(c: &Counters, cause: &AtomicU64) {
    c.copy_fallbacks.fetch_add(1, Ordering::Relaxed);
    cause.fetch_add(1, Ordering::Relaxed);
}

/// The copy path when a splice cannot be recorded: counted (in all and under its
/// `cause`), never an error for the caller.
fn fallback_copy(
    reg: &Registry,
    cause: &AtomicU64,
    fd_in: i32,
    off_in: *mut i64,
    fd_out: i32,
    len: usize,
) -> isize {
    let c = &reg.header().counters;
    count_fallback(c, cause);
    let r = copy_into_pipe(fd_in, off_in, fd_out, len);
    if r > 0 {
        c.bytes_copy_path.fetch_add(r as u64, Ordering::Relaxed);
    }
    r
}

/// The copy path: reads up to `len` bytes of the file into fresh private pages and
/// gifts-free `vmsplice`s them into the pipe (non-blocking), advancing the file offset
/// (or `*off_in`) by what the pipe took. The pipe never sees a page-cache page.
pub fn copy_into_pipe(fd_in: i32, off_in: *mut i64, fd_out: i32, len: usize) -> isize {
    let start = if off_in.is_null() {
        current_offset(fd_in)
    } else {
        user_offset(off_in)
    };
    let Some(start) = start else {
        // Let the kernel produce the errno the real call would give.
        return raw_splice(
            fd_in,
            off_in,
            fd_out,
            std::ptr::null_mut(),
            0,
            libc::SPLICE_F_NONBLOCK,
        );
    };
    let n = len.min(pipe::capacity(fd_out));
    if n == 0 {
        return 0;
    }
    let Ok(buf) = sys::mmap_rw(n, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1) else {
        sys::set_errno(libc::ENOMEM);
        return -1;
    };
    // SAFETY: buf has n writable bytes.
    let got = unsafe { libc::syscall(libc::SYS_pread64, fd_in, buf, n, start as i64) } as isize;
    let r = if got <= 0 {
        got
    } else {
        let iov = libc::iovec {
            iov_base: buf.cast(),
            iov_len: got as usize,
        };
        // SAFETY: one iovec over our private buffer; the pipe keeps its own references to
        // the pages, which nobody writes again: we unmap them right after.
        unsafe {
            libc::syscall(
                libc::SYS_vmsplice,
                fd_out,
                &iov as *const libc::iovec,
                1,
                libc::SPLICE_F_NONBLOCK,
            ) as isize
        }
    };
    let errno = sys::errno();
    // SAFETY: our own buffer; the pipe holds page references, not the mapping.
    unsafe { sys::munmap(buf, n) };
    if r > 0 {
        let new = start as i64 + r as i64;
        if off_in.is_null() {
            // SAFETY: lseek takes no pointer.
            unsafe { libc::syscall(libc::SYS_lseek, fd_in, new, libc::SEEK_SET) };
        } else {
            // SAFETY: read_user_offset just proved off_in readable; it is the caller's
            // loff_t, which the real splice would update the same way.
            unsafe { *off_in = new };
        }
    }
    sys::set_errno(errno);
    r
}

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
        let mut t = reg.lock();
        if reg.live_segments() == 0 {
            return call(nb);
        }
        let src_slot = t.pipe_slot(src, false).ok().flatten();
        let src_pending = pipe::pending(fd_in).unwrap_or(0);
        let mut from = 0;
        let carrying = match src_slot {
            Some(s) => {
                t.prune(s, src_pending);
                from = t.pipe(s).bytes_in.saturating_sub(src_pending);
                t.pipe(s).count > 0
            }
            None => false,
        };
        let dst_slot = t.pipe_slot(dst, carrying).ok().flatten();
        if let (Some(s), Some(d)) = (src_slot.filter(|_| carrying), dst_slot) {
            if t.carry(s, from, len as u64, d).is_err() {
                // No room to follow the bytes: make the source's bytes private instead.
                settle(&mut t, s, &reg.header().counters);
            }
        } else if let (Some(s), None) = (src_slot.filter(|_| carrying), dst_slot) {
            settle(&mut t, s, &reg.header().counters);
        }
        let r = call(nb);
        let errno = sys::errno();
        if let Some(d) = dst_slot {
            t.commit(d, r.max(0) as u64);
            if r > 0 {
                t.add_holder(d, sys::getpid(), fd_out);
            }
        }
        sys::set_errno(errno);
        r
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
    let flags = status_flags(fd);
    let writer = pipe::reopen(sys::getpid(), fd, key, libc::O_WRONLY | libc::O_NONBLOCK).ok()?;
    if flags & libc::O_DIRECT != 0 {
        // Packet mode cannot be asked for at open; F_SETFL on our own description can.
        let own = status_flags(writer) | libc::O_DIRECT;
        // SAFETY: F_SETFL on the private description just opened.
        unsafe { libc::syscall(libc::SYS_fcntl, writer, libc::F_SETFL, own) };
    }

    let blocking = flags & libc::O_NONBLOCK == 0;
    let want: usize = iov.iter().map(|v| v.iov_len).sum();
    let mut done = 0usize;
    let mut first = 0usize;
    let result = loop {
        let r = blocking_loop(
            || blocking,
            &[(fd, libc::POLLOUT)],
            || {
                let mut t: Guard = reg.lock();
                // SAFETY: iov[first..] are the caller's iovecs (adjusted below); the kernel
                // checks the buffers they point to.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_writev,
                        writer,
                        iov[first..].as_ptr(),
                        iov.len() - first,
                    ) as isize
                };
                let errno = sys::errno();
                if let Ok(Some(slot)) = t.pipe_slot(key, false) {
                    t.commit(slot, r.max(0) as u64);
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
        while skip > 0 && first < iov.len() {
            let take = skip.min(iov[first].iov_len);
            iov[first].iov_base = (iov[first].iov_base as usize + take) as *mut libc::c_void;
            iov[first].iov_len -= take;
            skip -= take;
            if iov[first].iov_len == 0 {
                first += 1;
            }
        }
    };
    keep_errno(|| sys::close(writer));
    Some(result)
}
