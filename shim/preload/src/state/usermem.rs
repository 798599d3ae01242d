//! Reading the caller's memory without trusting its pointers: where the kernel would
//! answer `EFAULT`, these give `None`/false instead of crashing the host program.

use splicecow_registry::sys;

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

/// Copies `src` into the caller's memory at `dst` without trusting the pointer: false
/// (nothing written) where the kernel would answer `EFAULT` (unmapped, read-only).
pub fn copy_to_user(src: &[u8], dst: *mut u8) -> bool {
    if src.is_empty() {
        return true;
    }
    let local = libc::iovec {
        iov_base: src.as_ptr() as *mut libc::c_void,
        iov_len: src.len(),
    };
    let remote = libc::iovec {
        iov_base: dst.cast(),
        iov_len: src.len(),
    };
    // SAFETY: the kernel checks `dst` and copies from our own buffer `src`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_process_vm_writev,
            sys::getpid(),
            &local as *const libc::iovec,
            1usize,
            &remote as *const libc::iovec,
            1usize,
            0usize,
        )
    };
    r == src.len() as i64
}

/// Stores `value` in the caller's `loff_t` at `p`; false where the kernel would fault.
pub fn set_user_offset(p: *mut i64, value: i64) -> bool {
    copy_to_user(&value.to_ne_bytes(), p.cast())
}

/// Reads the caller's `loff_t` at `p` whatever its sign (`None`: null or unreadable).
pub fn user_offset_raw(p: *const i64) -> Option<i64> {
    let mut v = [0u8; 8];
    (!p.is_null() && copy_from_user(p.cast(), &mut v)).then(|| i64::from_ne_bytes(v))
}
