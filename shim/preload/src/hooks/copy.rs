//! Copies into a file: `copy_file_range` changes the destination range.
//! (`sendfile` and `splice` into files are handled with their families in `splice.rs`.)

use crate::hooks::hooks;
use crate::ops::intent::{Kind, Mutation};
use libc::{c_int, c_uint, loff_t, size_t, ssize_t};

hooks! {
    /// `copy_file_range(2)`: `len` bytes at `*off_out` (or the current offset) of `fd_out`.
    fn copy_file_range(fd_in: c_int, off_in: *mut loff_t, fd_out: c_int, off_out: *mut loff_t, len: size_t, flags: c_uint) -> ssize_t
        => before Mutation::copy_destination(fd_out, off_out, len, Kind::CopyFileRange);
}
