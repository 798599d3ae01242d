//! `mmap`, `mmap64`, `munmap`, `mremap`, `mprotect`: tracked file mappings.
//!
//! Shared writable mappings: stores through them cannot be seen, so creating one (or
//! adding `PROT_WRITE` to a shared file mapping) first counts it in the registry — from
//! then on splices from that file take the copy path — and then settles the in-flight
//! segments (and snapshots private mappings) of the mapped range. Unmapping or dropping
//! `PROT_WRITE` uncounts it; counts of a process that dies are reclaimed.
//!
//! Private mappings, with private snapshots on (`SPLICECOW_PRIVATE_SNAPSHOTS=1`): counted
//! as snapshot mappings, so that mutators make this process copy the affected pages
//! first (see `snapshot`).

use crate::fdkind::FdKind;
use crate::maps::{LocalMap, LOCAL_MAPS};
use crate::mutation::{self, Kind, Mutation};
use crate::real::hooks;
use crate::{runtime, snapshot};
use libc::{c_int, c_void, off_t, size_t};
use splicecow_registry::sys;

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

/// Adds `delta` to this process's registry count for mapping `m` (by its kind).
pub fn count(m: LocalMap, delta: i32) {
    let Some(reg) = runtime::get().tracking() else {
        return;
    };
    let pid = sys::getpid();
    let (lo, hi) = m.file_range();
    let _ = if m.private {
        reg.lock().add_private_map(m.key, pid, delta, lo, hi)
    } else if m.shared_writable() {
        reg.lock().add_shared_writable_map(m.key, pid, delta)
    } else {
        Ok(())
    };
}

/// What kind of tracked mapping an `mmap` call makes, if any.
fn tracked_kind(flags: c_int, fd: c_int) -> Option<bool> {
    if fd < 0 || flags & libc::MAP_ANONYMOUS != 0 {
        return None;
    }
    let rt = runtime::get();
    rt.tracking()?;
    match flags & libc::MAP_TYPE {
        libc::MAP_SHARED | libc::MAP_SHARED_VALIDATE => Some(false),
        libc::MAP_PRIVATE if rt.private_snapshots => Some(true),
        _ => None,
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
    let tracked = tracked_kind(flags, fd).and_then(|private| {
        crate::guard::keep_errno(|| match FdKind::of_fd(fd) {
            FdKind::Regular(key) => Some((private, key)),
            _ => None,
        })
    });
    let Some((private, key)) = tracked else {
        // SAFETY: the caller's arguments.
        return unsafe { real(addr, len, prot, flags, fd, offset) };
    };
    // Counted before it exists, so no splice of the file slips through meanwhile.
    let planned = LocalMap {
        start: 0,
        end: len,
        key,
        file_off: offset as u64,
        prot,
        private,
    };
    crate::guard::keep_errno(|| {
        count(planned, 1);
        if planned.shared_writable() {
            mutation::before(Mutation::at(fd, offset, len as u64, Kind::SharedMapping));
        }
    });
    // SAFETY: the caller's arguments.
    let p = unsafe { real(addr, len, prot, flags, fd, offset) };
    crate::guard::keep_errno(|| {
        if p == libc::MAP_FAILED {
            count(planned, -1);
            return;
        }
        let start = p as usize;
        let placed = LocalMap {
            start,
            end: start + len,
            ..planned
        };
        LOCAL_MAPS.insert(placed);
        if private {
            snapshot::started_private_mapping(placed);
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
    // Gaining write access is counted (and settled) before the call, losing it after.
    let gains = |b: &LocalMap, a: &LocalMap| !b.shared_writable() && a.shared_writable();
    if prot & libc::PROT_WRITE != 0 {
        crate::guard::keep_errno(|| {
            let mut gained = [LocalMap::default(); 8];
            let mut n = 0;
            LOCAL_MAPS.set_prot(start, end, prot, count, |before, after| {
                if gains(&before, &after) {
                    count(after, 1);
                    if n < gained.len() {
                        gained[n] = after;
                        n += 1;
                    }
                }
            });
            // Outside the table's lock: settling may snapshot this process's mappings.
            gained[..n].iter().for_each(|m| settle_mapped(*m));
        });
    }
    // SAFETY: the caller's arguments.
    let r = unsafe { real(addr, len, prot) };
    if r == 0 && prot & libc::PROT_WRITE == 0 {
        crate::guard::keep_errno(|| {
            LOCAL_MAPS.set_prot(start, end, prot, count, |before, after| {
                if before.shared_writable() && !after.shared_writable() {
                    count(before, -1);
                }
            })
        });
    }
    r
}

/// Settles the in-flight segments (and snapshots private mappings) of the file range a
/// shared mapping covers.
fn settle_mapped(m: LocalMap) {
    if let Some(reg) = mutation::active_registry() {
        let (lo, hi) = m.file_range();
        mutation::check_file(
            reg,
            m.key,
            Mutation::at(-1, lo as i64, hi - lo, Kind::SharedMapping),
        );
    }
}

/// After `fork`: the child holds the parent's mappings too; count them for it.
pub fn register_child_maps() {
    LOCAL_MAPS.for_each(|m| count(m, 1));
    snapshot::after_fork_in_child();
}
