//! `write`, `writev` and the positional writes: mutations of regular files. `write` and
//! `writev` into a pipe that holds spliced bytes go through the pipe's lock, so that a
//! settle cannot reorder them.

use crate::hooks::hooks;
use crate::ops::intent::{Kind, Mutation};
use crate::ops::transfer::{self, WriteRoute};
use crate::state::usermem::copy_from_user;
use libc::{c_int, c_void, iovec, off_t, size_t, ssize_t};

/// Most iovecs `writev` into a tracked pipe copies to go on after a partial write;
/// longer vectors call through (they are rare and still ordered by the kernel).
const MAX_PIPE_IOV: usize = 64;

hooks! {
    /// `write(2)` at the current offset (`O_APPEND`: never a conflict).
    fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t => with write_impl;
    /// `writev(2)` at the current offset.
    fn writev(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t => with writev_impl;
    /// `pwrite(2)`.
    fn pwrite(fd: c_int, buf: *const c_void, count: size_t, offset: off_t) -> ssize_t
        => before Mutation::at(fd, offset, count as u64, Kind::Pwrite);
    /// `pwrite64`.
    fn pwrite64(fd: c_int, buf: *const c_void, count: size_t, offset: off_t) -> ssize_t
        => before Mutation::at(fd, offset, count as u64, Kind::Pwrite);
    /// `pwritev(2)`: the vector is not read (it may be invalid); everything from the offset on counts.
    fn pwritev(fd: c_int, iov: *const iovec, iovcnt: c_int, offset: off_t) -> ssize_t
        => before Mutation::from(fd, offset, Kind::Pwritev);
    /// `pwritev64`.
    fn pwritev64(fd: c_int, iov: *const iovec, iovcnt: c_int, offset: off_t) -> ssize_t
        => before Mutation::from(fd, offset, Kind::Pwritev);
    /// `pwritev2(2)`: offset -1 means the current offset; `RWF_APPEND` never conflicts.
    fn pwritev2(fd: c_int, iov: *const iovec, iovcnt: c_int, offset: off_t, flags: c_int) -> ssize_t
        => before pwritev2_mutation(fd, offset, flags);
    /// `pwritev64v2`.
    fn pwritev64v2(fd: c_int, iov: *const iovec, iovcnt: c_int, offset: off_t, flags: c_int) -> ssize_t
        => before pwritev2_mutation(fd, offset, flags);
}

fn pwritev2_mutation(fd: c_int, offset: off_t, flags: c_int) -> Mutation {
    if flags & libc::RWF_APPEND != 0 {
        Mutation::at(fd, 0, 0, Kind::Pwritev)
    } else if offset == -1 {
        Mutation::cursor(fd, u64::MAX, Kind::Pwritev)
    } else {
        Mutation::from(fd, offset, Kind::Pwritev)
    }
}

unsafe fn write_impl(
    real: unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t,
    fd: c_int,
    buf: *const c_void,
    count: size_t,
) -> ssize_t {
    match transfer::route_write(fd, count as u64, Kind::Write) {
        WriteRoute::TrackedPipe(reg, key) => {
            let mut iov = [iovec {
                iov_base: buf as *mut c_void,
                iov_len: count,
            }];
            transfer::write_into_pipe(reg, fd, key, &mut iov)
                // SAFETY: the caller's arguments (no reader: the kernel's EPIPE/SIGPIPE).
                .unwrap_or_else(|| unsafe { real(fd, buf, count) })
        }
        // SAFETY: the caller's arguments.
        WriteRoute::Direct => unsafe { real(fd, buf, count) },
    }
}

unsafe fn writev_impl(
    real: unsafe extern "C" fn(c_int, *const iovec, c_int) -> ssize_t,
    fd: c_int,
    iov: *const iovec,
    iovcnt: c_int,
) -> ssize_t {
    match transfer::route_write(fd, u64::MAX, Kind::Writev) {
        WriteRoute::TrackedPipe(reg, key)
            if !iov.is_null() && (0..=MAX_PIPE_IOV as c_int).contains(&iovcnt) =>
        {
            let mut copy = [iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_PIPE_IOV];
            let n = iovcnt as usize;
            // SAFETY: iovec is plain old data; viewing our own array as bytes is sound.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(
                    copy.as_mut_ptr().cast::<u8>(),
                    n * std::mem::size_of::<iovec>(),
                )
            };
            if let (true, Some(vector)) = (copy_from_user(iov.cast(), bytes), copy.get_mut(..n)) {
                transfer::write_into_pipe(reg, fd, key, vector)
                    // SAFETY: the caller's arguments.
                    .unwrap_or_else(|| unsafe { real(fd, iov, iovcnt) })
            } else {
                // SAFETY: the caller's arguments; the kernel reports EFAULT.
                unsafe { real(fd, iov, iovcnt) }
            }
        }
        // SAFETY: the caller's arguments.
        _ => unsafe { real(fd, iov, iovcnt) },
    }
}
