//! Detect mode's call stacks: the stack table (splice stacks interned by content, under
//! the table lock) and the module table (paths of the code modules their frames name,
//! claimed lock-free). The registry only stores them: capturing and resolving stacks is
//! the preload library's and the CLI's business.

use crate::bounded::at;
use crate::layout::*;
use crate::tables::Tables;
use crate::Registry;
use std::sync::atomic::{AtomicU32, Ordering};

/// How far the stack table probes before it evicts the record at the home slot.
const STACK_PROBE: usize = 16;

/// FNV-1a of `bytes`, never 0 (0 marks a free record).
fn fnv(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// Hash of a module path, as kept in [`ModuleRecord::hash`].
pub fn path_hash(path: &[u8]) -> u64 {
    fnv(path.iter().copied())
}

/// Hash of a stack's frames, as kept in [`StackRecord::hash`].
pub fn stack_hash(frames: &[u64]) -> u64 {
    fnv(frames.iter().flat_map(|f| f.to_le_bytes()))
}

/// The ticket of record `index` holding a stack of hash `hash`: the index (plus one) in
/// the low 16 bits, the hash's top 16 bits above, so that a ticket whose record was
/// since given to another stack is almost always told apart.
fn ticket(index: usize, hash: u64) -> u32 {
    ((hash >> 48) as u32) << 16 | (index as u32 + 1)
}

impl Tables<'_> {
    /// The ticket of a stack with these frames (at most [`STACK_FRAMES`], innermost
    /// first): the record already holding them, else a free one, else (the table's
    /// neighbourhood is full) the record at the stack's home slot, whose old stack is
    /// then lost. 0 for an empty stack. Stacks are never freed: the table holds the
    /// domain's distinct splice call stacks, which are few.
    pub fn intern_stack(&mut self, frames: &[u64]) -> u32 {
        let frames = frames.get(..frames.len().min(STACK_FRAMES)).unwrap_or(&[]);
        if frames.is_empty() {
            return 0;
        }
        let hash = stack_hash(frames);
        let len = self.stacks.len();
        let home = (hash % len as u64) as usize;
        let same = |r: &StackRecord| {
            r.hash == hash && r.depth as usize == frames.len() && r.frames.starts_with(frames)
        };
        let found = (0..STACK_PROBE)
            .map(|k| (home + k) % len)
            .find(|&i| same(self.stacks.at(i)) || self.stacks.at(i).hash == 0);
        let index = found.unwrap_or(home);
        if !same(self.stacks.at(index)) {
            let mut record = StackRecord {
                hash,
                depth: frames.len() as u32,
                ..StackRecord::default()
            };
            for (slot, f) in record.frames.iter_mut().zip(frames) {
                *slot = *f;
            }
            *self.stacks.at_mut(index) = record;
        }
        ticket(index, hash)
    }

    /// The frames of the stack `ticket` names, if its record still holds it.
    pub fn stack(&self, ticket: u32) -> Option<Vec<u64>> {
        let index = (ticket & 0xffff).checked_sub(1)? as usize;
        if index >= self.stacks.len() {
            return None;
        }
        let r = self.stacks.at(index);
        (r.hash != 0 && (r.hash >> 48) as u32 == ticket >> 16).then(|| {
            let depth = (r.depth as usize).min(STACK_FRAMES);
            (0..depth).map(|i| *at(&r.frames, i)).collect()
        })
    }
}

impl Registry {
    /// Module record `i % MODULE_RECORDS`.
    fn module(&self, i: usize) -> *mut ModuleRecord {
        let m = self.regions.modules;
        // SAFETY: the module region of this mapping holds `m.len` records, 8-aligned; the
        // index is reduced modulo that length.
        unsafe {
            self.base
                .add(m.offset + (i % m.len.max(1)) * m.record)
                .cast()
        }
    }

    /// The state word of module record `i`.
    fn module_state(&self, i: usize) -> &AtomicU32 {
        // SAFETY: `state` is an atomic at the start of a record of the mapping, which
        // lives as long as `self`; only atomics are accessed through this reference.
        unsafe { &*std::ptr::addr_of!((*self.module(i)).state) }
    }

    /// The index of `path` in the module table, claiming a free record for it when it
    /// has none (lock-free, no allocation: usable where hooks run). `None` when the
    /// path is empty or longer than [`MODULE_PATH_BYTES`], or the table is full.
    pub fn intern_module(&self, path: &[u8]) -> Option<u32> {
        if path.is_empty() || path.len() > MODULE_PATH_BYTES {
            return None;
        }
        let hash = path_hash(path);
        let home = (hash % MODULE_RECORDS as u64) as usize;
        for k in 0..MODULE_RECORDS {
            let i = (home + k) % MODULE_RECORDS;
            let state = self.module_state(i);
            loop {
                match state.load(Ordering::Acquire) {
                    MODULE_READY if self.module_is(i, hash, path) => return Some(i as u32),
                    MODULE_FREE => {
                        if state
                            .compare_exchange(
                                MODULE_FREE,
                                MODULE_WRITING,
                                Ordering::Acquire,
                                Ordering::Relaxed,
                            )
                            .is_err()
                        {
                            continue; // someone else claimed it: look again
                        }
                        let r = self.module(i);
                        // SAFETY: the record is ours alone while it is WRITING (claimed
                        // above); nobody reads its plain fields before READY.
                        unsafe {
                            std::ptr::addr_of_mut!((*r).len).write_volatile(path.len() as u32);
                            std::ptr::addr_of_mut!((*r).hash).write_volatile(hash);
                            let dst = std::ptr::addr_of_mut!((*r).path).cast::<u8>();
                            std::ptr::copy_nonoverlapping(path.as_ptr(), dst, path.len());
                        }
                        state.store(MODULE_READY, Ordering::Release);
                        return Some(i as u32);
                    }
                    // Another path, or one being written (maybe ours: a duplicate record
                    // is harmless).
                    _ => break,
                }
            }
        }
        None
    }

    /// True when ready module record `i` holds `path` of hash `hash`.
    fn module_is(&self, i: usize, hash: u64, path: &[u8]) -> bool {
        self.module_path_of(i)
            .is_some_and(|(h, p)| h == hash && p == path)
    }

    /// The hash and path of module record `i` once it is ready.
    fn module_path_of(&self, i: usize) -> Option<(u64, &[u8])> {
        if self.module_state(i).load(Ordering::Acquire) != MODULE_READY {
            return None;
        }
        let r = self.module(i);
        // SAFETY: a READY record's plain fields were written before the Release store
        // and never change again; the length is clamped to the path array.
        unsafe {
            let len =
                (std::ptr::addr_of!((*r).len).read_volatile() as usize).min(MODULE_PATH_BYTES);
            let hash = std::ptr::addr_of!((*r).hash).read_volatile();
            let path = std::slice::from_raw_parts(std::ptr::addr_of!((*r).path).cast::<u8>(), len);
            Some((hash, path))
        }
    }

    /// The path of module `index` (from [`Registry::intern_module`]), once recorded.
    pub fn module_path(&self, index: u32) -> Option<&[u8]> {
        self.module_path_of(index as usize).map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use crate::layout::{FRAME_OFFSET_BITS, STACK_FRAMES};
    use crate::{Capacity, Registry};

    fn domain(name: &str) -> String {
        format!("unit-stacks-{}-{name}", std::process::id())
    }

    #[test]
    fn stacks_are_interned_and_tickets_checked() {
        let d = domain("intern");
        let reg = Registry::open_or_create_with(&d, || Capacity::for_pipes(16)).unwrap();
        let a = [
            1u64 << FRAME_OFFSET_BITS | 0x1234,
            2 << FRAME_OFFSET_BITS | 0x99,
        ];
        let b = [3u64; STACK_FRAMES + 5];
        let (ta, ta2, tb, empty) = {
            let (mut t, _) = reg.lock();
            (
                t.intern_stack(&a),
                t.intern_stack(&a),
                t.intern_stack(&b),
                t.intern_stack(&[]),
            )
        };
        assert_eq!(ta, ta2, "equal stacks share a record");
        assert_ne!(ta, tb);
        assert_eq!(empty, 0);
        let (t, _) = reg.lock();
        assert_eq!(t.stack(ta).as_deref(), Some(&a[..]));
        assert_eq!(t.stack(tb).map(|s| s.len()), Some(STACK_FRAMES));
        assert_eq!(t.stack(0), None);
        assert_eq!(t.stack(ta ^ 0x1_0000), None, "a stale ticket is refused");
        assert_eq!(t.stack(0xffff), None, "out of range");
        drop(t);
        drop(reg);
        Registry::unlink(&d).unwrap();
    }

    #[test]
    fn modules_are_interned_once() {
        let d = domain("modules");
        let reg = Registry::open_or_create_with(&d, || Capacity::for_pipes(16)).unwrap();
        let a = reg.intern_module(b"/usr/bin/prog").unwrap();
        let b = reg
            .intern_module(b"/lib/x86_64-linux-gnu/libc.so.6")
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(reg.intern_module(b"/usr/bin/prog"), Some(a));
        assert_eq!(reg.module_path(a), Some(&b"/usr/bin/prog"[..]));
        assert_eq!(reg.intern_module(b""), None);
        assert_eq!(reg.intern_module(&[b'x'; 497]), None);
        let other = Registry::open_existing(&d).unwrap();
        assert_eq!(
            other.module_path(b),
            Some(&b"/lib/x86_64-linux-gnu/libc.so.6"[..])
        );
        drop((reg, other));
        Registry::unlink(&d).unwrap();
    }
}
