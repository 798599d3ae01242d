//! `mmap`, `mmap64`, `munmap`, `mremap`, `mprotect`: tracked file mappings (see
//! `ops::mappings` for what is tracked and why); every change to the memory map also
//! voids the caller pointers the shim proved usable (see `state::usermem`).

use crate::hooks::hooks;
use crate::ops::mappings;
use crate::state::guard::keep_errno;
use crate::state::usermem;
use libc::{c_int, c_void, off_t, size_t};

type MmapFn = unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void;

hooks! {
    /// `mmap(2)`.
    fn mmap(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, offset: off_t) -> *mut c_void => with mmap_impl;
    /// `mmap64`.
    fn mmap64(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, offset: off_t) -> *mut c_void => with mmap_impl;
    /// `munmap(2)`.
    fn munmap(addr: *mut c_void, len: size_t) -> c_int => with munmap_impl;
    /// `mremap(2)`; the optional fifth argument (new address) is passed on as given.
    fn mremap(old: *mut c_void, old_len: size_t, new_len: size_t, flags: c_int, new_addr: *mut c_void) -> *mut c_void => with mremap_impl;
    /// `mprotect(2)`.
    fn mprotect(addr: *mut c_void, len: size_t, prot: c_int) -> c_int => with mprotect_impl;
}

unsafe fn mmap_impl(
    real: MmapFn,
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> *mut c_void {
    if flags & libc::MAP_FIXED != 0 {
        // What was mapped at `addr` is replaced.
        usermem::memory_map_changes();
    }
    let Some(planned) = keep_errno(|| mappings::plan(len, prot, flags, fd, offset)) else {
        // SAFETY: the caller's arguments.
        return unsafe { real(addr, len, prot, flags, fd, offset) };
    };
    keep_errno(|| mappings::before_map(planned, fd));
    // SAFETY: the caller's arguments.
    let p = unsafe { real(addr, len, prot, flags, fd, offset) };
    keep_errno(|| mappings::after_map(planned, p));
    p
}

unsafe fn munmap_impl(
    real: unsafe extern "C" fn(*mut c_void, size_t) -> c_int,
    addr: *mut c_void,
    len: size_t,
) -> c_int {
    usermem::memory_map_changes();
    // SAFETY: the caller's arguments.
    let r = unsafe { real(addr, len) };
    if r == 0 && mappings::any_tracked() {
        keep_errno(|| mappings::after_unmap(addr as usize, len));
    }
    r
}

unsafe fn mremap_impl(
    real: unsafe extern "C" fn(*mut c_void, size_t, size_t, c_int, *mut c_void) -> *mut c_void,
    old: *mut c_void,
    old_len: size_t,
    new_len: size_t,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    usermem::memory_map_changes();
    // SAFETY: the caller's arguments.
    let p = unsafe { real(old, old_len, new_len, flags, new_addr) };
    if p != libc::MAP_FAILED && mappings::any_tracked() {
        keep_errno(|| mappings::after_remap(old as usize, p as usize, new_len));
    }
    p
}

unsafe fn mprotect_impl(
    real: unsafe extern "C" fn(*mut c_void, size_t, c_int) -> c_int,
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
) -> c_int {
    usermem::memory_map_changes();
    if !mappings::any_tracked() {
        // SAFETY: the caller's arguments.
        return unsafe { real(addr, len, prot) };
    }
    let (start, end) = (addr as usize, (addr as usize).saturating_add(len));
    keep_errno(|| mappings::before_protect(start, end, prot));
    // SAFETY: the caller's arguments.
    let r = unsafe { real(addr, len, prot) };
    if r == 0 {
        keep_errno(|| mappings::after_protect(start, end, prot));
    }
    r
}
