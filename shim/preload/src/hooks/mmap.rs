//! `mmap`, `mmap64`, `munmap`, `mremap`, `mprotect`: shared writable file mappings.
//!
//! Stores through such a mapping cannot be seen, so: creating one (or adding
//! `PROT_WRITE` to a shared file mapping) first counts it in the registry — from then on
//! splices from that file take the copy path — and then settles the in-flight segments
//! of the mapped range. Unmapping or dropping `PROT_WRITE` uncounts it; the counts of a
//! process that dies are reclaimed by the registry.

use crate::fdkind::FdKind;
use crate::maps::{LocalMap, LOCAL_MAPS};
use crate::mutation::{self, Kind, Mutation};
use crate::real::hooks;
use crate::runtime;
use libc::{c_int, c_void, off_t, size_t};
use splicecow_registry::{sys, FileKey};

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

/// Adds `delta` to this process's count of writable shared mappings of `key`.
fn count(key: FileKey, delta: i32) {
    if let Some(reg) = runtime::get().tracking() {
        let _ = reg
            .lock()
            .add_shared_writable_map(key, sys::getpid(), delta);
    }
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
    let shared = flags & libc::MAP_ANONYMOUS == 0 && flags & libc::MAP_TYPE == libc::MAP_SHARED
        || flags & libc::MAP_TYPE == libc::MAP_SHARED_VALIDATE;
    let file = if shared && fd >= 0 && runtime::get().tracking().is_some() {
        crate::guard::keep_errno(|| match FdKind::of_fd(fd) {
            FdKind::Regular(key) => Some(key),
            _ => None,
        })
    } else {
        None
    };
    let Some(key) = file else {
        // SAFETY: the caller's arguments.
        return unsafe { real(addr, len, prot, flags, fd, offset) };
    };
    let writable = prot & libc::PROT_WRITE != 0;
    if writable {
        crate::guard::keep_errno(|| {
            count(key, 1);
            mutation::before(Mutation::at(fd, offset, len as u64, Kind::SharedMapping));
        });
    }
    // SAFETY: the caller's arguments.
    let p = unsafe { real(addr, len, prot, flags, fd, offset) };
    crate::guard::keep_errno(|| {
        if p == libc::MAP_FAILED {
            if writable {
                count(key, -1);
            }
        } else {
            let start = p as usize;
            LOCAL_MAPS.insert(LocalMap {
                start,
                end: start + len,
                key,
                file_off: offset as u64,
                writable,
            });
        }
    });
    p
}

unsafe fn munmap_impl(
    real: unsafe extern "C" fn(*mut c_void, size_t) -> c_int,
    addr: *mut c_void,
    len: size_t,
) -> c_int {
    // SAFETY: the caller's arguments.
    let r = unsafe { real(addr, len) };
    if r == 0 && !LOCAL_MAPS.is_empty() {
        let start = addr as usize;
        crate::guard::keep_errno(|| LOCAL_MAPS.remove(start, start.saturating_add(len), count));
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
    // SAFETY: the caller's arguments.
    let p = unsafe { real(old, old_len, new_len, flags, new_addr) };
    if p != libc::MAP_FAILED && !LOCAL_MAPS.is_empty() {
        LOCAL_MAPS.moved(old as usize, p as usize, new_len);
    }
    p
}

unsafe fn mprotect_impl(
    real: unsafe extern "C" fn(*mut c_void, size_t, c_int) -> c_int,
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
) -> c_int {
    if LOCAL_MAPS.is_empty() {
        // SAFETY: the caller's arguments.
        return unsafe { real(addr, len, prot) };
    }
    let (start, end) = (addr as usize, (addr as usize).saturating_add(len));
    if prot & libc::PROT_WRITE != 0 {
        crate::guard::keep_errno(|| {
            LOCAL_MAPS.set_writable(start, end, true, |m, _| {
                count(m.key, 1);
                settle_mapped(m);
            })
        });
    }
    // SAFETY: the caller's arguments.
    let r = unsafe { real(addr, len, prot) };
    if r == 0 && prot & libc::PROT_WRITE == 0 {
        crate::guard::keep_errno(|| {
            LOCAL_MAPS.set_writable(start, end, false, |m, _| count(m.key, -1))
        });
    }
    r
}

/// Settles the in-flight segments of the file range a mapping covers.
fn settle_mapped(m: LocalMap) {
    if let Some(reg) = mutation::active_registry() {
        let len = (m.end - m.start) as u64;
        let probe = Mutation::at(-1, m.file_off as i64, len, Kind::SharedMapping);
        mutation::check_file(reg, m.key, probe);
    }
}

/// After `fork`: the child holds the parent's mappings too; count them for it.
pub fn register_child_maps() {
    LOCAL_MAPS.for_each_writable(|key| count(key, 1));
}
