//! This process's tracked file mappings (address ranges): shared ones, so that `munmap`,
//! `mremap` and `mprotect` keep the registry's count of shared *writable* mappings exact,
//! and private ones kept as snapshots. The registry only knows "process P has N mappings
//! of this kind of file F"; the address ranges stay here.

use crate::ops::settle;
use crate::state::guard::Inside;
use crate::state::runtime;
use crossbeam_utils::Backoff;
use splicecow_registry::bounded::{at, at_mut};
use splicecow_registry::{sys, FileKey};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Most mappings tracked per process; a mapping that finds no slot stays counted in the
/// registry until the process exits (conservative).
pub const MAX_LOCAL_MAPS: usize = 256;

/// One tracked file mapping of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalMap {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// The mapped file.
    pub key: FileKey,
    /// File offset of `start`.
    pub file_off: u64,
    /// Current protection (`PROT_*`).
    pub prot: i32,
    /// A `MAP_PRIVATE` mapping kept as a snapshot (else `MAP_SHARED`).
    pub private: bool,
}

impl LocalMap {
    /// Counted in the registry as a shared writable mapping.
    pub fn shared_writable(&self) -> bool {
        !self.private && self.prot & libc::PROT_WRITE != 0
    }

    /// File bytes `[lo, hi)` this mapping shows.
    pub fn file_range(&self) -> (u64, u64) {
        (
            self.file_off,
            self.file_off + (self.end - self.start) as u64,
        )
    }
}

struct Table {
    maps: [Option<LocalMap>; MAX_LOCAL_MAPS],
}

impl Table {
    fn free_slot(&mut self) -> Option<&mut Option<LocalMap>> {
        self.maps.iter_mut().find(|s| s.is_none())
    }

    /// Splits the mapping containing `addr` (strictly inside) in two; `counted(piece)` is
    /// told about the new piece. Without a free slot nothing is split.
    fn split_at(&mut self, addr: usize, counted: &mut impl FnMut(LocalMap, i32)) -> bool {
        let Some(i) = self
            .maps
            .iter()
            .position(|m| m.is_some_and(|m| m.start < addr && addr < m.end))
        else {
            return true;
        };
        let Some(m) = *at(&self.maps, i) else {
            return true;
        };
        let right = LocalMap {
            start: addr,
            file_off: m.file_off + (addr - m.start) as u64,
            ..m
        };
        let Some(slot) = self.free_slot() else {
            return false;
        };
        *slot = Some(right);
        *at_mut(&mut self.maps, i) = Some(LocalMap { end: addr, ..m });
        counted(right, 1);
        true
    }
}

/// The process-wide table behind a spin lock (held for a few loads and stores only).
pub struct LocalMaps {
    locked: AtomicBool,
    len: AtomicUsize,
    table: UnsafeCell<Table>,
}

// SAFETY: `table` is only accessed while `locked` is held (see `with`).
unsafe impl Sync for LocalMaps {}

/// This process's table.
pub static LOCAL_MAPS: LocalMaps = LocalMaps::new();

impl LocalMaps {
    const fn new() -> LocalMaps {
        LocalMaps {
            locked: AtomicBool::new(false),
            len: AtomicUsize::new(0),
            table: UnsafeCell::new(Table {
                maps: [None; MAX_LOCAL_MAPS],
            }),
        }
    }

    /// True when nothing is tracked (the fast path of munmap/mremap/mprotect).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }

    fn acquire(&self) {
        let backoff = Backoff::new();
        while self.locked.swap(true, Ordering::Acquire) {
            backoff.snooze();
        }
    }

    /// `fork` prepare handler: hold the table so no other thread is inside it when the
    /// process is copied (the child would inherit a lock nobody releases).
    pub fn hold_for_fork(&self) {
        self.acquire();
    }

    /// `fork` parent and child handlers: release what [`LocalMaps::hold_for_fork`] took.
    pub fn release_after_fork(&self) {
        self.locked.store(false, Ordering::Release);
    }

    fn with<T>(&self, f: impl FnOnce(&mut Table) -> T) -> T {
        self.acquire();
        // SAFETY: we hold `locked`, so this is the only reference to the table.
        let table = unsafe { &mut *self.table.get() };
        let r = f(table);
        self.len
            .store(table.maps.iter().flatten().count(), Ordering::Relaxed);
        self.locked.store(false, Ordering::Release);
        r
    }

    /// Adds a mapping; false when the table is full.
    pub fn insert(&self, m: LocalMap) -> bool {
        self.with(|t| t.free_slot().map(|slot| *slot = Some(m)).is_some())
    }

    /// Forgets `[start, end)`. `counted(piece, delta)` gets every registry change: -1
    /// per mapping removed, +1 per mapping split off.
    pub fn remove(&self, start: usize, end: usize, mut counted: impl FnMut(LocalMap, i32)) {
        self.with(|t| {
            // A split that finds no slot leaves the whole mapping tracked (conservative).
            if !(t.split_at(start, &mut counted) && t.split_at(end, &mut counted)) {
                return;
            }
            for slot in t.maps.iter_mut() {
                if let Some(m) = *slot {
                    if start <= m.start && m.end <= end {
                        *slot = None;
                        counted(m, -1);
                    }
                }
            }
        })
    }

    /// Moves the mapping that starts at `old` to `new` with `new_len` bytes (`mremap`).
    pub fn moved(&self, old: usize, new: usize, new_len: usize) {
        self.with(|t| {
            for m in t.maps.iter_mut().flatten() {
                if m.start == old {
                    m.start = new;
                    m.end = new + new_len;
                }
            }
        })
    }

    /// Gives the mappings in `[start, end)` protection `prot`. `changed(before, after)`
    /// is told about each mapping piece whose protection changed; `counted` as in
    /// [`LocalMaps::remove`] about pieces split off.
    pub fn set_prot(
        &self,
        start: usize,
        end: usize,
        prot: i32,
        mut counted: impl FnMut(LocalMap, i32),
        mut changed: impl FnMut(LocalMap, LocalMap),
    ) {
        self.with(|t| {
            let exact = t.split_at(start, &mut counted) && t.split_at(end, &mut counted);
            for m in t.maps.iter_mut().flatten() {
                let inside = start <= m.start && m.end <= end;
                let overlaps = m.start < end && start < m.end;
                // Unsplit (table full): gaining write access counts the whole mapping,
                // losing it only when all of it is covered.
                let applies = inside || (!exact && overlaps && prot & libc::PROT_WRITE != 0);
                if applies && m.prot != prot {
                    let before = *m;
                    m.prot = prot;
                    changed(before, *m);
                }
            }
        })
    }

    /// Copies the private mappings of `key` overlapping file bytes `[off, end)` into
    /// `out`; returns how many (at most `out.len()`).
    pub fn private_of(&self, key: FileKey, off: u64, end: u64, out: &mut [LocalMap]) -> usize {
        self.with(|t| {
            let wanted = t.maps.iter().flatten().filter(|m| {
                let (lo, hi) = m.file_range();
                m.private && m.key == key && lo < end && off < hi
            });
            let mut n = 0;
            for (slot, m) in out.iter_mut().zip(wanted) {
                *slot = *m;
                n += 1;
            }
            n
        })
    }

    /// Calls `each` with every tracked mapping (a forked child's registration).
    pub fn for_each(&self, mut each: impl FnMut(LocalMap)) {
        self.with(|t| t.maps.iter().flatten().for_each(|m| each(*m)))
    }
}

/// Adds `delta` to this process's registry count for mapping `m` (by its kind).
pub fn count(m: LocalMap, delta: i32) {
    let Some(reg) = runtime::get().tracking() else {
        return;
    };
    let pid = sys::getpid();
    let (lo, hi) = m.file_range();
    let _ = if m.private {
        settle::lock(reg).add_private_map(m.key, pid, delta, lo, hi)
    } else if m.shared_writable() {
        settle::lock(reg).add_shared_writable_map(m.key, pid, delta)
    } else {
        Ok(())
    };
}

/// Called once, from the library constructor: forgets what this pid registered before an
/// `exec` (mappings do not survive it; nothing to look at, and no table pages to touch,
/// when no mapping is tracked) and registers the `fork` handlers of the mapping table.
pub fn install() {
    if let Some(reg) = runtime::get().tracking() {
        let h = reg.header();
        let tracked =
            h.shared_writable_maps.load(Ordering::Relaxed) + h.private_maps.load(Ordering::Relaxed);
        if tracked > 0 {
            settle::lock(reg).drop_maps(sys::getpid());
        }
    }
    // SAFETY: registering plain extern "C" handlers; this library is never unloaded.
    unsafe {
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork_in_parent),
            Some(after_fork_in_child),
        )
    };
}

/// `fork` prepare handler: no other thread may be inside the mapping table.
extern "C" fn before_fork() {
    LOCAL_MAPS.hold_for_fork();
}

/// `fork` parent handler.
extern "C" fn after_fork_in_parent() {
    LOCAL_MAPS.release_after_fork();
}

/// `fork` child handler: the child inherits the parent's tracked mappings; count them.
extern "C" fn after_fork_in_child() {
    LOCAL_MAPS.release_after_fork();
    if let Some(_inside) = Inside::enter() {
        LOCAL_MAPS.for_each(|m| count(m, 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: FileKey = FileKey { dev: 1, ino: 2 };

    fn map(start: usize, end: usize, prot: i32) -> LocalMap {
        LocalMap {
            start,
            end,
            key: KEY,
            file_off: 0,
            prot,
            private: false,
        }
    }

    #[test]
    fn unmapping_the_middle_splits_and_counts() {
        let maps = LocalMaps::new();
        maps.insert(map(0x1000, 0x5000, libc::PROT_WRITE));
        let mut changes = Vec::new();
        maps.remove(0x2000, 0x3000, |m, d| changes.push((m.start, d)));
        assert_eq!(changes, vec![(0x2000, 1), (0x3000, 1), (0x2000, -1)]);
        changes.clear();
        maps.remove(0x1000, 0x2000, |m, d| changes.push((m.start, d)));
        maps.remove(0x3000, 0x5000, |m, d| changes.push((m.start, d)));
        assert_eq!(changes, vec![(0x1000, -1), (0x3000, -1)]);
        assert!(maps.is_empty());
    }

    #[test]
    fn protection_changes_apply_to_the_covered_part_only() {
        let maps = LocalMaps::new();
        maps.insert(map(0x1000, 0x4000, libc::PROT_READ));
        let mut changed = Vec::new();
        maps.set_prot(
            0x2000,
            0x3000,
            libc::PROT_READ | libc::PROT_WRITE,
            |_, _| {},
            |b, a| changed.push((b.start, a.prot)),
        );
        assert_eq!(changed, vec![(0x2000, libc::PROT_READ | libc::PROT_WRITE)]);
        let mut pieces = Vec::new();
        maps.for_each(|m| pieces.push((m.start, m.end, m.file_off)));
        pieces.sort();
        assert_eq!(
            pieces,
            vec![
                (0x1000, 0x2000, 0),
                (0x2000, 0x3000, 0x1000),
                (0x3000, 0x4000, 0x2000)
            ]
        );
    }
}
