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
