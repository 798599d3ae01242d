//! The `mmap` family's operations: which mappings are tracked, and keeping the registry's
//! count of them exact as they are made, moved, reprotected and unmapped.
//!
//! Shared writable mappings: stores through them cannot be seen, so making one (or
//! adding `PROT_WRITE` to a shared file mapping) first counts it in the registry (from
//! then on splices from that file take the copy path) and then settles the in-flight
//! segments (and snapshots private mappings) of the mapped range. Unmapping or dropping
//! `PROT_WRITE` uncounts it; counts of a process that dies are reclaimed.
//!
//! Private mappings, with private snapshots on (`SPLICECOW_PRIVATE_SNAPSHOTS=1`): counted
//! as snapshot mappings, so that mutators make this process copy the affected pages
//! first (see `snapshot`).

use crate::ops::intent::{Kind, Mutation};
use crate::ops::maps::{count, LocalMap, LOCAL_MAPS};
use crate::ops::{mutation, snapshot};
use crate::state::fd::FdKind;
use crate::state::fdcache;
use crate::state::runtime;
use libc::c_void;

/// The tracked mapping an `mmap(len, prot, flags, fd, offset)` call is about to make,
/// if it makes one (placed at address 0 until it exists).
pub fn plan(len: usize, prot: i32, flags: i32, fd: i32, offset: i64) -> Option<LocalMap> {
    if fd < 0 || flags & libc::MAP_ANONYMOUS != 0 {
        return None;
    }
    let rt = runtime::get();
    rt.tracking()?;
    let private = match flags & libc::MAP_TYPE {
        libc::MAP_SHARED | libc::MAP_SHARED_VALIDATE => false,
        libc::MAP_PRIVATE if rt.private_snapshots => true,
        _ => return None,
    };
    let FdKind::Regular(key) = fdcache::kind(fd) else {
        return None;
    };
    Some(LocalMap {
        start: 0,
        end: len,
        key,
        file_off: offset as u64,
        prot,
        private,
    })
}

/// Before the mapping exists: counted, so no splice of the file slips through meanwhile;
/// a shared writable one settles what its range holds in flight.
pub fn before_map(planned: LocalMap, fd: i32) {
    count(planned, 1);
    if planned.shared_writable() {
        let (lo, hi) = planned.file_range();
        mutation::before(Mutation::at(fd, lo as i64, hi - lo, Kind::SharedMapping));
    }
}

/// After `mmap` returned `p` for `planned`.
pub fn after_map(planned: LocalMap, p: *mut c_void) {
    if p == libc::MAP_FAILED {
        count(planned, -1);
        return;
    }
    let start = p as usize;
    let placed = LocalMap {
        start,
        end: start + (planned.end - planned.start),
        ..planned
    };
    LOCAL_MAPS.insert(placed);
    if placed.private {
        snapshot::started_private_mapping(placed);
    }
}

/// True when this process tracks any mapping (else `munmap`, `mremap` and `mprotect`
/// have nothing to keep exact).
pub fn any_tracked() -> bool {
    !LOCAL_MAPS.is_empty()
}

/// After a successful `munmap(addr, len)`.
pub fn after_unmap(addr: usize, len: usize) {
    LOCAL_MAPS.remove(addr, addr.saturating_add(len), count);
}

/// After a successful `mremap` moved `old` to `new` with `new_len` bytes.
pub fn after_remap(old: usize, new: usize, new_len: usize) {
    LOCAL_MAPS.moved(old, new, new_len);
}

/// Before `mprotect(start..end, prot)`: gaining write access is counted (and settled)
/// before the call.
pub fn before_protect(start: usize, end: usize, prot: i32) {
    if prot & libc::PROT_WRITE == 0 {
        return;
    }
    let mut gained = [LocalMap::default(); 8];
    let mut n = 0;
    LOCAL_MAPS.set_prot(start, end, prot, count, |before, after| {
        if !before.shared_writable() && after.shared_writable() {
            count(after, 1);
            if let Some(cell) = gained.get_mut(n) {
                *cell = after;
                n += 1;
            }
        }
    });
    // Outside the table's lock: settling may snapshot this process's mappings.
    for m in gained.iter().take(n) {
        settle_mapped(*m);
    }
}

/// After a successful `mprotect(start..end, prot)`: losing write access is uncounted.
pub fn after_protect(start: usize, end: usize, prot: i32) {
    if prot & libc::PROT_WRITE != 0 {
        return;
    }
    LOCAL_MAPS.set_prot(start, end, prot, count, |before, after| {
        if before.shared_writable() && !after.shared_writable() {
            count(before, -1);
        }
    });
}

/// A shared file mapping `m` of a process whose address map is not kept here (strict
/// mode's supervisor serving a filtered process) gains write access: counted (under this
/// process, which outlives every process it serves: see the README, "Strict mode"), then
/// its file range settled, as [`before_protect`] does for a mapping of this process.
pub fn before_untracked_write_access(m: LocalMap) {
    count(m, 1);
    settle_mapped(m);
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
