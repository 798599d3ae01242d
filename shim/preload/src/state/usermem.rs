//! Reading the caller's memory without trusting its pointers: where the kernel would
//! answer `EFAULT`, these give `None`/false instead of crashing the host program.
//!
//! The caller's offset (`loff_t *` of `splice`, `off_t *` of `sendfile`) is read and
//! written on every call. The first time a thread passes a pointer it is checked with a
//! system call each way; once it proved readable and writable it is used directly until
//! the process's memory map changes (any `munmap`, `mremap` or `mprotect` the shim sees).
//! Loops pass the same pointer every time, so they pay nothing after the first call. A
//! pointer into memory that libc itself unmapped meanwhile (a freed large allocation)
//! is a use after free in the program, where the kernel's `EFAULT` is not promised either.

use splicecow_registry::sys;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bumped by every change of this process's memory map the shim sees.
static MAP_CHANGES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The offset pointer this thread last proved readable and writable, and the value
    /// of [`MAP_CHANGES`] then.
    static PROVEN_OFFSET: Cell<(usize, u64)> = const { Cell::new((0, 0)) };
}

/// Notes that mappings of this process may have gone or lost write access.
pub fn memory_map_changes() {
    MAP_CHANGES.fetch_add(1, Ordering::AcqRel);
}

/// True when `p` is this thread's proven offset pointer and nothing was unmapped since.
fn proven(p: *const i64) -> bool {
    !p.is_null()
        && PROVEN_OFFSET
            .try_with(Cell::get)
            .is_ok_and(|cell| cell == (p as usize, MAP_CHANGES.load(Ordering::Acquire)))
}

/// Remembers `p` as proven readable and writable (the map-change count read before the
/// check, so a change during it is not missed).
fn prove(p: *const i64, changes_before: u64) {
    let _ = PROVEN_OFFSET.try_with(|cell| cell.set((p as usize, changes_before)));
}

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

/// Reads the caller's `loff_t` at `p` (null, unreadable or negative → `None`).
pub fn user_offset(p: *const i64) -> Option<u64> {
    user_offset_raw(p).and_then(|v| u64::try_from(v).ok())
}

/// Stores `value` in the caller's `loff_t` at `p`; false where the kernel would fault.
pub fn set_user_offset(p: *mut i64, value: i64) -> bool {
    if proven(p) {
        // SAFETY: `p` proved readable and writable (8 bytes) on this thread and no mapping
        // changed since; unaligned like the kernel's own access.
        unsafe { p.write_unaligned(value) };
        return true;
    }
    let changes = MAP_CHANGES.load(Ordering::Acquire);
    let ok = copy_to_user(&value.to_ne_bytes(), p.cast());
    if ok && copy_from_user(p.cast(), &mut [0u8; 8]) {
        prove(p, changes);
    }
    ok
}

/// Reads the caller's `loff_t` at `p` whatever its sign (`None`: null or unreadable).
pub fn user_offset_raw(p: *const i64) -> Option<i64> {
    if proven(p) {
        // SAFETY: as in `set_user_offset`.
        return Some(unsafe { p.read_unaligned() });
    }
    let mut v = [0u8; 8];
    (!p.is_null() && copy_from_user(p.cast(), &mut v)).then(|| i64::from_ne_bytes(v))
}
