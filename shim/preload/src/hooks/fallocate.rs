//! `fallocate`, `fallocate64`: punching, zeroing, collapsing and inserting change data;
//! plain allocation (and so `posix_fallocate`) does not and never conflicts.

use crate::hooks::hooks;
use crate::ops::intent::{Kind, Mutation};
use libc::{c_int, off_t};

hooks! {
    /// `fallocate(2)`.
    fn fallocate(fd: c_int, mode: c_int, offset: off_t, len: off_t) -> c_int => before fallocate_mutation(fd, mode, offset, len);
    /// `fallocate64`.
    fn fallocate64(fd: c_int, mode: c_int, offset: off_t, len: off_t) -> c_int => before fallocate_mutation(fd, mode, offset, len);
}

/// The bytes a `fallocate` mode changes: the range for punch/zero, everything from the
/// offset on for collapse/insert (they shift the rest of the file), nothing otherwise.
fn fallocate_mutation(fd: c_int, mode: c_int, offset: off_t, len: off_t) -> Mutation {
    let len = len.max(0) as u64;
    if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
        Mutation::at(fd, offset, len, Kind::PunchHole)
    } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
        Mutation::at(fd, offset, len, Kind::ZeroRange)
    } else if mode & libc::FALLOC_FL_COLLAPSE_RANGE != 0 {
        Mutation::from(fd, offset, Kind::CollapseRange)
    } else if mode & libc::FALLOC_FL_INSERT_RANGE != 0 {
        Mutation::from(fd, offset, Kind::InsertRange)
    } else {
        Mutation::at(fd, offset, 0, Kind::ZeroRange)
    }
}
