//! This process's shared file mappings (address ranges), so that `munmap`, `mremap` and
//! `mprotect` keep the registry's per-process count of shared *writable* mappings exact.
//! The registry only knows "process P has N writable shared mappings of file F"; the
//! address ranges stay here.

use crossbeam_utils::Backoff;
use splicecow_registry::FileKey;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Most shared file mappings tracked per process; beyond this, a mapping stays counted
/// as writable until the process exits (conservative: its file's splices copy).
pub const MAX_LOCAL_MAPS: usize = 256;

/// One shared file mapping of this process.
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
    /// Mapped with `PROT_WRITE` (counted in the registry).
    pub writable: bool,
}

struct Table {
    maps: [Option<LocalMap>; MAX_LOCAL_MAPS],
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
pub static LOCAL_MAPS: LocalMaps = LocalMaps {
    locked: AtomicBool::new(false),
    len: AtomicUsize::new(0),
    table: UnsafeCell::new(Table {
        maps: [None; MAX_LOCAL_MAPS],
    }),
};

impl LocalMaps {
    /// True when no shared file mapping is tracked (the fast path of munmap/mprotect).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }

    fn with<T>(&self, f: impl FnOnce(&mut Table) -> T) -> T {
        let backoff = Backoff::new();
        while self.locked.swap(true, Ordering::Acquire) {
            backoff.snooze();
        }
        // SAFETY: we hold `locked`, so this is the only reference to the table.
        let r = f(unsafe { &mut *self.table.get() });
        // SAFETY: as above; recount while still holding the lock.
        let n = unsafe { &*self.table.get() }.maps.iter().flatten().count();
        self.len.store(n, Ordering::Relaxed);
        self.locked.store(false, Ordering::Release);
        r
    }

    /// Adds a mapping; false when the table is full.
    pub fn insert(&self, m: LocalMap) -> bool {
        self.with(|t| match t.maps.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(m);
                true
            }
            None => false,
        })
    }

    /// Forgets `[start, end)`; `change(file, delta)` gets the registry changes (-1 per
    /// writable mapping removed, +1 per writable mapping split in two).
    pub fn remove(&self, start: usize, end: usize, mut change: impl FnMut(FileKey, i32)) {
        self.with(|t| {
            for i in 0..MAX_LOCAL_MAPS {
                let Some(m) = t.maps[i] else { continue };
                if m.end <= start || end <= m.start {
                    continue;
                }
                let left = (m.start < start).then_some(LocalMap { end: start, ..m });
                let right = (end < m.end).then(|| LocalMap {
                    start: end,
                    file_off: m.file_off + (end - m.start) as u64,
                    ..m
                });
                let pieces = [left, right];
                let kept = pieces.iter().flatten().count() as i32;
                t.maps[i] = None;
                let mut placed = 0;
                for p in pieces.into_iter().flatten() {
                    if let Some(slot) = t.maps.iter_mut().find(|s| s.is_none()) {
                        *slot = Some(p);
                        placed += 1;
                    }
                }
                if m.writable {
                    // Pieces that found no slot stay counted (conservative).
                    let delta = placed - 1 + (kept - placed);
                    if delta != 0 {
                        change(m.key, delta);
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

    /// Marks mappings in `[start, end)` writable or not; `change(map, delta)` gets each
    /// mapping whose count changed (+1: became writable, settle its range; -1: no longer).
    pub fn set_writable(
        &self,
        start: usize,
        end: usize,
        writable: bool,
        mut change: impl FnMut(LocalMap, i32),
    ) {
        self.with(|t| {
            for m in t.maps.iter_mut().flatten() {
                let overlaps = m.start < end && start < m.end;
                let inside = start <= m.start && m.end <= end;
                // Gaining write access on any part counts the whole mapping; losing it
                // only when all of it is covered (otherwise stay conservative).
                if (writable && overlaps && !m.writable) || (!writable && inside && m.writable) {
                    m.writable = writable;
                    change(*m, if writable { 1 } else { -1 });
                }
            }
        })
    }

    /// Calls `each` with the file of every writable mapping (a forked child's registration).
    pub fn for_each_writable(&self, mut each: impl FnMut(FileKey)) {
        self.with(|t| {
            t.maps
                .iter()
                .flatten()
                .filter(|m| m.writable)
                .for_each(|m| each(m.key))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmapping_the_middle_splits_and_counts() {
        let maps = LocalMaps {
            locked: AtomicBool::new(false),
            len: AtomicUsize::new(0),
            table: UnsafeCell::new(Table {
                maps: [None; MAX_LOCAL_MAPS],
            }),
        };
        let key = FileKey { dev: 1, ino: 2 };
        maps.insert(LocalMap {
            start: 0x1000,
            end: 0x5000,
            key,
            file_off: 0,
            writable: true,
        });
        let mut changes = Vec::new();
        maps.remove(0x2000, 0x3000, |k, d| changes.push((k, d)));
        assert_eq!(changes, vec![(key, 1)], "one mapping became two");
        changes.clear();
        maps.remove(0x1000, 0x2000, |k, d| changes.push((k, d)));
        maps.remove(0x3000, 0x5000, |k, d| changes.push((k, d)));
        assert_eq!(changes, vec![(key, -1), (key, -1)]);
        assert!(maps.is_empty());
    }
}
