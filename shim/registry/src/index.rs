//! The user index: which of a user's domains have live segments of which file, so that a
//! change by any process of the user settles (or reports) every domain's in-flight
//! segments of that file, not only its own domain's. One per user, in `/dev/shm` like a
//! registry, at a name no domain can have.
//!
//! Entries are hints that must never miss: a domain's tables add (file, domain) before
//! the file's first live segment becomes visible, and remove it after the last one
//! retired. A holder killed in between leaves an entry too many, which costs a later
//! mutator one look into that domain (and is then removed); never one too few. Readers
//! are lock-free; writers take the index's own lock, always as the innermost lock (a
//! domain's lock may be held, never the other way round), so no cycle can form.

use crate::bounded::{at, at_mut};
use crate::layout::FileKey;
use crate::shm;
use crate::{lock, OpenError, MAX_DOMAIN_LEN};
use std::sync::atomic::{AtomicU64, Ordering};

/// First eight bytes of an initialised index: "SPLCIDX\x01".
pub const INDEX_MAGIC: u64 = u64::from_le_bytes(*b"SPLCIDX\x01");
/// Bumped whenever the index layout changes.
pub const INDEX_VERSION: u32 = 1;
/// (file, domain) pairs the index holds at once.
pub const MAX_ENTRIES: usize = 4096;
/// How far a lookup probes.
const MAX_PROBE: usize = 128;

/// The index's first bytes.
#[repr(C)]
pub struct IndexHeader {
    /// [`INDEX_MAGIC`], published last by the creator.
    pub magic: AtomicU64,
    /// [`INDEX_VERSION`].
    pub layout_version: u32,
    /// `size_of::<IndexLayout>()` as computed by the creator.
    pub layout_size: u32,
    /// The index lock: `pid << 32 | tid` of the holder, 0 when free.
    pub lock: AtomicU64,
    /// Entries live now: the mutation hooks' cross-domain fast path reads only this.
    pub live_entries: AtomicU64,
    /// Additions refused because the index was full.
    pub full: AtomicU64,
}

/// One (file, domain) pair.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IndexEntry {
    /// The file.
    pub key: FileKey,
    /// The domain's name (`domain_len` bytes).
    pub domain: [u8; MAX_DOMAIN_LEN],
    /// Length of the name.
    pub domain_len: u8,
    /// 1 while the domain has live segments of the file (0: a reusable tombstone).
    pub live: u8,
    /// Keeps the size a multiple of 8.
    pub reserved: [u8; 6],
}

/// The whole index file.
#[repr(C)]
pub struct IndexLayout {
    /// Lock, fast-path word, counters.
    pub header: IndexHeader,
    /// Open addressing by [`FileKey::home`]: a file's entries follow each other.
    pub entries: [IndexEntry; MAX_ENTRIES],
}

/// Size in bytes of the index file.
pub const INDEX_SIZE: usize = std::mem::size_of::<IndexLayout>();

const INDEX: shm::Kind = shm::Kind {
    min_size: INDEX_SIZE,
    max_size: INDEX_SIZE,
    magic: INDEX_MAGIC,
    version: INDEX_VERSION,
    steps: [
        "creating the user index",
        "opening the user index",
        "sizing the user index",
        "mapping the user index",
        "inspecting the user index",
    ],
};

/// Path of the effective user's index (no NUL); `.` starts no domain name.
pub fn index_path() -> String {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::syscall(libc::SYS_geteuid) };
    format!("/dev/shm/splicecow-{uid}-.index")
}

/// Keeps probe chains short: with nothing live, every entry becomes empty again; else
/// the tombstone at `i` and those before it become empty when the slot after them is
/// (no chain runs through them then).
fn clear_tombstones(entries: &mut [IndexEntry; MAX_ENTRIES], h: &IndexHeader, i: usize) {
    if h.live_entries.load(Ordering::SeqCst) == 0 {
        for e in entries.iter_mut() {
            e.key = FileKey::default();
        }
        return;
    }
    if !at(entries, i + 1).key.is_empty() {
        return;
    }
    let mut j = i;
    for _ in 0..MAX_ENTRIES {
        let e = at_mut(entries, j);
        if e.live != 0 || e.key.is_empty() {
            return;
        }
        e.key = FileKey::default();
        j = j.wrapping_add(MAX_ENTRIES - 1);
    }
}

/// A mapped user index.
pub struct Index {
    _mapping: shm::Mapping,
    base: *mut IndexLayout,
}

// SAFETY: the mapping is process-wide; writers hold the cross-process index lock and
// readers copy entries with volatile reads.
unsafe impl Send for Index {}
// SAFETY: as above.
unsafe impl Sync for Index {}

impl IndexEntry {
    fn names(&self, domain: &str) -> bool {
        let len = (self.domain_len as usize).min(MAX_DOMAIN_LEN);
        self.domain.get(..len) == Some(domain.as_bytes())
    }

    /// The domain's name, when it is one.
    pub fn domain(&self) -> Option<&str> {
        let len = (self.domain_len as usize).min(MAX_DOMAIN_LEN);
        std::str::from_utf8(self.domain.get(..len)?).ok()
    }
}

impl Index {
    /// Opens the effective user's index, creating it if needed.
    pub fn open_or_create() -> Result<Index, OpenError> {
        Self::open(true)
    }

    /// Opens the effective user's index only if it exists.
    pub fn open_existing() -> Result<Index, OpenError> {
        Self::open(false)
    }

    fn open(create: bool) -> Result<Index, OpenError> {
        let mut path = index_path().into_bytes();
        path.push(0);
        let mut fixed = shm::Fixed(INDEX_SIZE);
        let create = create.then_some(&mut fixed as &mut dyn shm::Create);
        let mapping = shm::open(&path, &INDEX, create)?;
        let base = mapping.base() as *mut IndexLayout;
        Ok(Index {
            _mapping: mapping,
            base,
        })
    }

    fn header(&self) -> &IndexHeader {
        // SAFETY: base points to a live mapping of a whole IndexLayout; the header holds
        // atomics and fields fixed before publication.
        unsafe { &(*self.base).header }
    }

    /// Entry `i`, copied with a volatile read (another process may be writing it: a torn
    /// copy only makes one lookup conservatively wrong).
    fn entry(&self, i: usize) -> IndexEntry {
        // SAFETY: `at` keeps the index in bounds; the mapping is live.
        unsafe { std::ptr::read_volatile(at(&(*self.base).entries, i)) }
    }

    /// Only the file of entry `i` (the probes of a lookup need no more than that).
    fn key_at(&self, i: usize) -> FileKey {
        // SAFETY: as in `entry`; the key is read in place, not the whole entry.
        unsafe { std::ptr::read_volatile(&at(&(*self.base).entries, i).key) }
    }

    /// True when any domain of this user has a live segment of any file.
    pub fn any_live(&self) -> bool {
        self.header().live_entries.load(Ordering::SeqCst) > 0
    }

    /// Calls `each(domain)` for every domain but `except` that has (or may have) live
    /// segments of `key`. Lock-free.
    pub fn domains_of(&self, key: FileKey, except: &str, mut each: impl FnMut(&str)) {
        let home = key.home(MAX_ENTRIES);
        for k in 0..MAX_PROBE {
            let found = self.key_at(home + k);
            if found.is_empty() {
                return;
            }
            if found != key {
                continue;
            }
            let e = self.entry(home + k);
            if e.key == key && e.live != 0 && !e.names(except) {
                if let Some(d) = e.domain() {
                    each(d);
                }
            }
        }
    }

    /// Calls `each(file, domain)` for every live entry. Lock-free.
    pub fn for_each_live(&self, mut each: impl FnMut(FileKey, &str)) {
        for i in 0..MAX_ENTRIES {
            let e = self.entry(i);
            if e.live != 0 {
                if let Some(d) = e.domain() {
                    each(e.key, d);
                }
            }
        }
    }

    /// Removes every entry of `domain` (its registry is being removed).
    pub fn remove_domain(&self, domain: &str) {
        self.locked(|entries, h| {
            for e in entries
                .iter_mut()
                .filter(|e| e.live != 0 && e.names(domain))
            {
                e.live = 0;
                let _ = h
                    .live_entries
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                        Some(v.saturating_sub(1))
                    });
            }
        });
    }

    /// Runs `f` on the entries with the index lock held; a lock taken over from a dead
    /// holder first recounts `live_entries`.
    fn locked<T>(&self, f: impl FnOnce(&mut [IndexEntry; MAX_ENTRIES], &IndexHeader) -> T) -> T {
        let h = self.header();
        let taken_over = lock::acquire(&h.lock);
        // SAFETY: the index lock is held: no other writer touches the entries.
        let entries = unsafe { &mut (*self.base).entries };
        if taken_over {
            let live = entries.iter().filter(|e| e.live != 0).count() as u64;
            h.live_entries.store(live, Ordering::SeqCst);
        }
        let r = f(entries, h);
        lock::release(&h.lock);
        r
    }

    /// Notes that `domain` now has live segments of `key` (before they become visible).
    pub fn add(&self, key: FileKey, domain: &str) {
        if domain.len() > MAX_DOMAIN_LEN || key.is_empty() {
            return;
        }
        self.locked(|entries, h| {
            let home = key.home(MAX_ENTRIES);
            let mut free = None;
            for k in 0..MAX_PROBE {
                let e = at_mut(entries, home + k);
                if e.key == key && e.names(domain) {
                    if e.live == 0 {
                        e.live = 1;
                        h.live_entries.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                if e.live == 0 && free.is_none() {
                    free = Some(home + k);
                }
                if e.key.is_empty() {
                    break;
                }
            }
            let Some(i) = free else {
                h.full.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut name = [0u8; MAX_DOMAIN_LEN];
            if let Some(dst) = name.get_mut(..domain.len()) {
                dst.copy_from_slice(domain.as_bytes());
            }
            *at_mut(entries, i) = IndexEntry {
                key,
                domain: name,
                domain_len: domain.len() as u8,
                live: 1,
                reserved: [0; 6],
            };
            h.live_entries.fetch_add(1, Ordering::SeqCst);
        });
    }

    /// Notes that `domain` has no live segment of `key` any more.
    pub fn remove(&self, key: FileKey, domain: &str) {
        self.locked(|entries, h| {
            let home = key.home(MAX_ENTRIES);
            for k in 0..MAX_PROBE {
                let e = at_mut(entries, home + k);
                if e.key.is_empty() {
                    return;
                }
                if e.key == key && e.live != 0 && e.names(domain) {
                    e.live = 0;
                    let _ = h
                        .live_entries
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                            Some(v.saturating_sub(1))
                        });
                    clear_tombstones(entries, h, home + k);
                    return;
                }
            }
        });
    }

    /// Additions refused because the index was full.
    pub fn full_count(&self) -> u64 {
        self.header().full.load(Ordering::Relaxed)
    }
}
