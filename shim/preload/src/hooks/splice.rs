//! `splice`, `tee`, `sendfile`, `sendfile64`: bytes moved into pipes are recorded,
//! bytes moved into regular files are mutations of those files.

use crate::hooks::hooks;
use crate::ops::intent::{Kind, Mutation};
use crate::ops::mutation;
use crate::ops::transfer::{self, FileToPipe};
use crate::state::fd::FdKind;
use crate::state::fdcache;
use crate::state::runtime::{self, Mode};
use libc::{c_int, c_uint, loff_t, off_t, size_t, ssize_t};

type SpliceFn =
    unsafe extern "C" fn(c_int, *mut loff_t, c_int, *mut loff_t, size_t, c_uint) -> ssize_t;
type TeeFn = unsafe extern "C" fn(c_int, c_int, size_t, c_uint) -> ssize_t;
type SendfileFn = unsafe extern "C" fn(c_int, c_int, *mut off_t, size_t) -> ssize_t;

hooks! {
    /// `splice(2)`: file→pipe recorded, pipe→pipe carries segments, pipe→file mutates.
    fn splice(fd_in: c_int, off_in: *mut loff_t, fd_out: c_int, off_out: *mut loff_t, len: size_t, flags: c_uint) -> ssize_t
        => with splice_impl;
    /// `tee(2)`: the destination pipe gets the source's segments.
    fn tee(fd_in: c_int, fd_out: c_int, len: size_t, flags: c_uint) -> ssize_t => with tee_impl;
    /// `sendfile(2)`: file→pipe recorded like splice, file→file mutates the destination.
    fn sendfile(out_fd: c_int, in_fd: c_int, offset: *mut off_t, count: size_t) -> ssize_t => with sendfile_impl;
    /// `sendfile64`: the same call with a 64-bit offset (identical on 64-bit targets).
    fn sendfile64(out_fd: c_int, in_fd: c_int, offset: *mut off_t, count: size_t) -> ssize_t => with sendfile_impl;
}

/// Kinds of both ends, or `None` when the shim is off.
fn ends(fd_in: c_int, fd_out: c_int) -> Option<(FdKind, FdKind)> {
    (runtime::get().mode != Mode::Off).then(|| (fdcache::kind(fd_in), fdcache::kind(fd_out)))
}

unsafe fn splice_impl(
    real: SpliceFn,
    fd_in: c_int,
    off_in: *mut loff_t,
    fd_out: c_int,
    off_out: *mut loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    match ends(fd_in, fd_out) {
        Some((FdKind::Regular(file), FdKind::Pipe(pipe))) if off_out.is_null() => {
            transfer::file_to_pipe(FileToPipe {
                fd_in,
                off_in,
                fd_out,
                file,
                pipe,
                len,
                flags,
            })
        }
        Some((FdKind::Pipe(src), FdKind::Pipe(dst))) if off_in.is_null() && off_out.is_null() => {
            transfer::pipe_to_pipe(fd_in, fd_out, src, dst, len, flags, |fl| {
                // SAFETY: the caller's arguments with only the flags changed.
                unsafe { real(fd_in, off_in, fd_out, off_out, len, fl) }
            })
        }
        Some((FdKind::Pipe(_), FdKind::Regular(_))) => {
            let m = Mutation::copy_destination(fd_out, off_out, len, Kind::SpliceInto);
            crate::state::guard::keep_errno(|| mutation::before(m));
            // SAFETY: the caller's arguments.
            unsafe { real(fd_in, off_in, fd_out, off_out, len, flags) }
        }
        // SAFETY: the caller's arguments.
        _ => unsafe { real(fd_in, off_in, fd_out, off_out, len, flags) },
    }
}

unsafe fn tee_impl(
    real: TeeFn,
    fd_in: c_int,
    fd_out: c_int,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    match ends(fd_in, fd_out) {
        Some((FdKind::Pipe(src), FdKind::Pipe(dst))) => {
            transfer::pipe_to_pipe(fd_in, fd_out, src, dst, len, flags, |fl| {
                // SAFETY: the caller's arguments with only the flags changed.
                unsafe { real(fd_in, fd_out, len, fl) }
            })
        }
        // SAFETY: the caller's arguments.
        _ => unsafe { real(fd_in, fd_out, len, flags) },
    }
}

unsafe fn sendfile_impl(
    real: SendfileFn,
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut off_t,
    count: size_t,
) -> ssize_t {
    match ends(in_fd, out_fd) {
        // sendfile into a pipe is a file→pipe splice with the pipe's own O_NONBLOCK.
        Some((FdKind::Regular(file), FdKind::Pipe(pipe))) => {
            let x = FileToPipe {
                fd_in: in_fd,
                off_in: offset,
                fd_out: out_fd,
                file,
                pipe,
                len: count,
                flags: 0,
            };
            // SAFETY: the caller's arguments.
            transfer::sendfile_to_pipe(x, |n| unsafe { real(out_fd, in_fd, offset, n) })
        }
        Some((_, FdKind::Regular(_))) => {
            crate::state::guard::keep_errno(|| {
                mutation::before(Mutation::cursor(out_fd, count as u64, Kind::SendfileInto))
            });
            // SAFETY: the caller's arguments.
            unsafe { real(out_fd, in_fd, offset, count) }
        }
        // SAFETY: the caller's arguments.
        _ => unsafe { real(out_fd, in_fd, offset, count) },
    }
}
