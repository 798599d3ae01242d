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

/// True when the bytes of the regular file behind `fd` cannot change while a pipe holds
/// them, so a splice of it needs no record: a memfd sealed against writes and shrinking
/// (`F_SEAL_WRITE` + `F_SEAL_SHRINK`; `F_SEAL_FUTURE_WRITE` does not count, as writable
/// mappings made before it still write), a file of a read-only filesystem type
/// (squashfs, erofs, iso9660, cramfs), or an immutable file (`FS_IMMUTABLE_FL`). A file
/// on a read-only *mount* does not count: the same file may be written through another,
/// writable mount of its filesystem (a read-only bind mount). A few system calls; the fd
/// identity cache asks once per fd. Not covered: the immutable flag cleared (by root)
/// while spliced bytes are still in a pipe.
pub fn cannot_change(fd: i32) -> bool {
    crate::state::guard::keep_errno(|| source_is_frozen(fd))
}

/// [`cannot_change`] without keeping `errno`.
fn source_is_frozen(fd: i32) -> bool {
    const SEALED: i32 = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK;
    const READ_ONLY_TYPES: [i64; 5] = [
        0x7371_7368, // squashfs
        0xE0F5_E1E2, // erofs
        0x9660,      // iso9660
        0x28CD_3D45, // cramfs
        0x453D_CD28, // cramfs, other byte order
    ];
    const FS_IMMUTABLE_FL: libc::c_long = 0x10;
    // SAFETY: F_GET_SEALS takes no pointer.
    let seals = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GET_SEALS) };
    if seals >= 0 && seals as i32 & SEALED == SEALED {
        return true;
    }
    // SAFETY: an all-zero statfs is a valid value; fstatfs fills it.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fs` is a valid, writable statfs.
    if unsafe { libc::syscall(libc::SYS_fstatfs, fd, &mut fs as *mut libc::statfs) } == 0
        && READ_ONLY_TYPES.contains(&(fs.f_type as i64))
    {
        return true;
    }
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long into `flags`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd,
            libc::FS_IOC_GETFLAGS,
            &mut flags as *mut libc::c_long,
        )
    };
    r == 0 && flags & FS_IMMUTABLE_FL != 0
}
