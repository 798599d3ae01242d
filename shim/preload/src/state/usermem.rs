//! Reading the caller's memory without trusting its pointers: where the kernel would
//! answer `EFAULT`, these give `None`/false instead of crashing the host program.

use splicecow_registry::sys;

/// Moves `len` bytes between our buffer at `local` and the caller's memory at `remote`
/// with `process_vm_readv`/`process_vm_writev` (`syscall`): the kernel checks `remote`,
/// so a bad pointer is a failed call, never a fault. True when all bytes moved.
fn across(syscall: libc::c_long, local: *mut u8, remote: *mut u8, len: usize) -> bool {
    if len == 0 {
        return true;
    }
    let local = libc::iovec {
        iov_base: local.cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: remote.cast(),
        iov_len: len,
    };
    // SAFETY: `local` is our own buffer of `len` bytes; the kernel checks `remote`.
    let r = unsafe {
        libc::syscall(
            syscall,
            sys::getpid(),
            &local as *const libc::iovec,
            1usize,
            &remote as *const libc::iovec,
            1usize,
            0usize,
        )
    };
    r == len as i64
}

/// Copies `dst.len()` bytes from the caller's memory at `src` without trusting the
/// pointer: false (nothing copied) where the kernel would answer `EFAULT`.
pub fn copy_from_user(src: *const u8, dst: &mut [u8]) -> bool {
    across(
        libc::SYS_process_vm_readv,
        dst.as_mut_ptr(),
        src as *mut u8,
        dst.len(),
    )
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
    // The kernel only reads our side of a write: `src` is never written through.
    across(
        libc::SYS_process_vm_writev,
        src.as_ptr() as *mut u8,
        dst,
        src.len(),
    )
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
