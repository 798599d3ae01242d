//! `ftruncate`, `truncate` and their 64-bit names: they change `[len, ∞)`.

use crate::hooks::hooks;
use crate::ops::intent::{Kind, Mutation};
use libc::{c_char, c_int, off_t, AT_FDCWD};

hooks! {
    /// `ftruncate(2)`.
    fn ftruncate(fd: c_int, length: off_t) -> c_int => before Mutation::from(fd, length, Kind::Ftruncate);
    /// `ftruncate64`.
    fn ftruncate64(fd: c_int, length: off_t) -> c_int => before Mutation::from(fd, length, Kind::Ftruncate);
    /// `truncate(2)`.
    fn truncate(path: *const c_char, length: off_t) -> c_int => before Mutation::path_from(AT_FDCWD, path, length, Kind::Truncate);
    /// `truncate64`.
    fn truncate64(path: *const c_char, length: off_t) -> c_int => before Mutation::path_from(AT_FDCWD, path, length, Kind::Truncate);
}
