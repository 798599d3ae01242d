//! What an fd refers to, as far as the shim cares.

use splicecow_registry::{sys, FileKey};

/// The kind of object behind an fd or path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A regular file and its inode.
    Regular(FileKey),
    /// A pipe (or FIFO) and its inode.
    Pipe(FileKey),
    /// Anything else, or a bad fd.
    Other,
}

impl FdKind {
    /// Classifies an fstat result.
    pub fn of_stat(st: &libc::stat) -> FdKind {
        let key = FileKey {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => FdKind::Regular(key),
            libc::S_IFIFO => FdKind::Pipe(key),
            _ => FdKind::Other,
        }
    }

    /// Classifies `fd` (one `fstat`).
    pub fn of_fd(fd: i32) -> FdKind {
        sys::fstat(fd).map_or(FdKind::Other, |st| FdKind::of_stat(&st))
    }
}

/// File status flags of `fd` (`F_GETFL`), 0 on error.
pub fn status_flags(fd: i32) -> i32 {
    // SAFETY: F_GETFL takes no pointer.
    let r = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) };
    if r < 0 {
        0
    } else {
        r as i32
    }
}

/// Current file offset of `fd`, if it has one.
pub fn current_offset(fd: i32) -> Option<u64> {
    // SAFETY: lseek takes no pointer.
    let r = unsafe { libc::syscall(libc::SYS_lseek, fd, 0i64, libc::SEEK_CUR) };
    (r >= 0).then_some(r as u64)
}
