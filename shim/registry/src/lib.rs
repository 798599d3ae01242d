//! splicecow's registry: a shared-memory table of in-flight spliced ranges, sized when
//! it is created (see [`Capacity`]).
//!
//! One registry serves one *domain* (the processes that protect each other). It lives in
//! `/dev/shm/splicecow-<uid>-<domain>`, mode 0600, and is refused when it belongs to
//! another user, is not a regular file, has another layout version, or a size other
//! than the capacities in its header make.
//! This crate knows nothing of hooks: the preload library, the CLI and the test harness
//! all read and write it through the API below.

#![deny(clippy::indexing_slicing)]

pub mod bounded;
pub mod env;
pub mod index;
pub mod journal;
pub mod layout;
pub mod lock;
pub mod pattern;
pub mod pause;
mod shm;
pub mod stacks;
pub mod sys;
pub mod tables;

pub use journal::{InterruptedSettle, SettleState};
pub use layout::{Capacity, FileKey, Segment, LAYOUT_VERSION, MAGIC};
pub use tables::{FileSlot, Full, Intent, PipeSlot, SegmentInfo, Tables};

pub use layout::Mailbox;
use layout::{FileRecord, Header, MapRecord, Region, Regions, MAX_MAILBOXES};
use std::fmt;
use std::sync::atomic::{fence, AtomicU32, Ordering};

/// The domain joined by processes that have no `SPLICECOW_DOMAIN`.
pub const DEFAULT_DOMAIN: &str = "default";
/// Longest accepted domain name.
pub const MAX_DOMAIN_LEN: usize = 64;

/// Why a registry could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The domain name is empty, too long or has characters other than `[A-Za-z0-9._-]`.
    InvalidDomain,
    /// No registry exists for the domain (only from [`Registry::open_existing`]).
    Missing,
    /// A system call failed: which one and its errno.
    Sys(&'static str, i32),
    /// The file is not a regular file owned by us with mode 0600.
    NotOurs,
    /// The file has the wrong size, magic or capacities: not a splicecow registry of this
    /// layout.
    Foreign,
    /// A splicecow registry of another layout version.
    Version(u32),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::InvalidDomain => write!(
                f,
                "invalid domain name (1-{MAX_DOMAIN_LEN} characters of A-Z a-z 0-9 . _ -)"
            ),
            OpenError::Missing => write!(f, "no registry exists for this domain"),
            OpenError::Sys(what, e) => {
                write!(
                    f,
                    "{what} failed: {}",
                    std::io::Error::from_raw_os_error(*e)
                )
            }
            OpenError::NotOurs => {
                write!(
                    f,
                    "registry file is not a regular 0600 file owned by this user"
                )
            }
            OpenError::Foreign => write!(f, "registry file is corrupt or not a splicecow registry"),
            OpenError::Version(v) => write!(
                f,
                "registry has layout version {v}, this splicecow uses {LAYOUT_VERSION}"
            ),
        }
    }
}

/// True when `domain` is an acceptable domain name.
pub fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= MAX_DOMAIN_LEN
        && !domain.starts_with('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Path of the registry file of `domain` for the effective user (no NUL).
pub fn registry_path(domain: &str) -> String {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::syscall(libc::SYS_geteuid) };
    format!("/dev/shm/splicecow-{uid}-{domain}")
}

/// A mapped registry. Cheap to share between threads: all mutation goes through the lock.
pub struct Registry {
    /// Keeps the file mapped as long as the registry lives.
    _mapping: shm::Mapping,
    base: *mut u8,
    /// Where the tables lie, from the capacities in the header (validated on open).
    regions: Regions,
    /// The domain's name.
    domain: String,
    /// The user index this domain's tables keep up to date, once joined.
    index: std::sync::OnceLock<&'static index::Index>,
    /// Whether the test pauses apply (set for the process's own domain only: a sweep or a
    /// conflict check in another domain never pauses).
    test_pauses: std::sync::atomic::AtomicBool,
}

/// The registry as a kind of shared file.
const REGISTRY: shm::Kind = shm::Kind {
    min_size: std::mem::size_of::<Header>(),
    max_size: Capacity::LARGEST.regions().size,
    magic: MAGIC,
    version: LAYOUT_VERSION,
    steps: [
        "creating the registry",
        "opening the registry",
        "sizing the registry",
        "mapping the registry",
        "inspecting the registry",
    ],
};

/// The creator of a new registry: chooses its capacity (only now that the file is known
/// to be new) and records it in the header.
struct Creator<F: FnOnce() -> Capacity> {
    choose: Option<F>,
    chosen: Capacity,
}

impl<F: FnOnce() -> Capacity> shm::Create for Creator<F> {
    fn size(&mut self) -> usize {
        if let Some(choose) = self.choose.take() {
            let c = choose();
            self.chosen = if c.is_valid() { c } else { Capacity::DEFAULT };
        }
        self.chosen.regions().size
    }

    unsafe fn fill(&self, base: *mut u8) {
        let h = base as *mut Header;
        let c = self.chosen;
        // SAFETY: the caller gives a new mapping of the chosen size, which starts with the
        // header; nobody reads these plain fields before the magic is published.
        unsafe {
            std::ptr::addr_of_mut!((*h).capacity_pipes).write(c.pipes);
            std::ptr::addr_of_mut!((*h).capacity_files).write(c.files);
            std::ptr::addr_of_mut!((*h).capacity_maps).write(c.maps);
            let copies = u32::from(sys::kernel_copies_on_splice());
            std::ptr::addr_of_mut!((*h).kernel_copies).write(AtomicU32::new(copies));
        }
    }
}

// SAFETY: the mapping is process-wide and never unmapped while a Registry exists; mutable
// access only happens through `Guard`, which holds the cross-process lock.
unsafe impl Send for Registry {}
// SAFETY: as above.
unsafe impl Sync for Registry {}

/// Holds the table lock; gives exclusive access to the tables until dropped.
pub struct Guard<'a> {
    registry: &'a Registry,
    tables: Tables<'a>,
}

impl<'a> std::ops::Deref for Guard<'a> {
    type Target = Tables<'a>;
    fn deref(&self) -> &Tables<'a> {
        &self.tables
    }
}

impl<'a> std::ops::DerefMut for Guard<'a> {
    fn deref_mut(&mut self) -> &mut Tables<'a> {
        &mut self.tables
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        lock::release(&self.registry.header().lock);
    }
}

/// A snapshot of the counters and fill levels, for `splicecow stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// File→pipe splices recorded.
    pub splices: u64,
    /// Bytes put into pipes as page-cache references.
    pub bytes_zero_copy: u64,
    /// Pipes drained and refilled.
    pub settles: u64,
    /// Bytes copied by settles.
    pub bytes_copied: u64,
    /// Splices that fell back to the copy path in protect mode.
    pub copy_fallbacks: u64,
    /// Of those: the registry was full.
    pub copy_fallbacks_registry_full: u64,
    /// Of those: the file had a shared writable mapping.
    pub copy_fallbacks_shared_mapping: u64,
    /// Lock takeovers that repaired tables torn by the dead holder.
    pub table_repairs: u64,
    /// Segments retired because their bytes had left the pipe or the pipe was gone.
    pub retired_stale: u64,
    /// Sweeps for stale records run.
    pub sweeps: u64,
    /// Bytes that went through the copy path.
    pub bytes_copy_path: u64,
    /// `exec`s whose environment had lost `LD_PRELOAD`/`SPLICECOW_*` (child unprotected).
    pub env_cleared: u64,
    /// Pipes no process could be found to hold.
    pub unreachable_pipes: u64,
    /// Mutations that overlapped in-flight segments.
    pub conflicts: u64,
    /// Locks taken over from dead holders.
    pub lock_takeovers: u64,
    /// Segments live now.
    pub live_segments: u64,
    /// Live shared writable mappings.
    pub shared_writable_maps: u64,
    /// Live registered private (snapshot) mappings.
    pub private_maps: u64,
    /// Private mapping ranges snapshotted before mutations.
    pub snapshots: u64,
    /// Snapshot requests that timed out.
    pub snapshot_timeouts: u64,
    /// Pipe records holding segments now (capacity [`Stats::pipe_capacity`]); a record
    /// whose segments are all retired is free for any pipe.
    pub pipes_in_use: u64,
    /// File records with live segments or mappings now (capacity [`Stats::file_capacity`]).
    pub files_in_use: u64,
    /// Pipe records in the table (chosen when the registry was created).
    pub pipe_capacity: u64,
    /// File records in the table (same).
    pub file_capacity: u64,
    /// Mapping records in the table (same).
    pub map_capacity: u64,
    /// Pipes that hold live segments now.
    pub busy_pipes: u64,
    /// 1 when the kernel was found to copy on splice when the registry was created
    /// (the library then stands down), else 0.
    pub kernel_copies_on_splice: u64,
}

impl Registry {
    /// Opens the registry of `domain`, creating it (mode 0600, `O_EXCL`) of
    /// [`Capacity::DEFAULT`] if needed.
    pub fn open_or_create(domain: &str) -> Result<Registry, OpenError> {
        Self::open_or_create_with(domain, || Capacity::DEFAULT)
    }

    /// Opens the registry of `domain`, creating it if needed with the capacity `choose`
    /// gives (an invalid one: [`Capacity::DEFAULT`]). `choose` runs only when this call
    /// creates the file: a registry that exists keeps the capacity it was created with.
    pub fn open_or_create_with(
        domain: &str,
        choose: impl FnOnce() -> Capacity,
    ) -> Result<Registry, OpenError> {
        let mut creator = Creator {
            choose: Some(choose),
            chosen: Capacity::DEFAULT,
        };
        Self::open(domain, Some(&mut creator))
    }

    /// Opens the registry of `domain` only if it exists.
    pub fn open_existing(domain: &str) -> Result<Registry, OpenError> {
        Self::open(domain, None)
    }

    fn open(domain: &str, create: Option<&mut dyn shm::Create>) -> Result<Registry, OpenError> {
        if !valid_domain(domain) {
            return Err(OpenError::InvalidDomain);
        }
        let mut path = registry_path(domain).into_bytes();
        path.push(0);
        let mapping = shm::open(&path, &REGISTRY, create)?;
        let base = mapping.base();
        // SAFETY: the mapping holds at least a header (the kind's smallest size) whose
        // capacities were written before the magic was published (and seen).
        let h = unsafe { &*(base as *const Header) };
        let capacity = Capacity {
            pipes: h.capacity_pipes,
            files: h.capacity_files,
            maps: h.capacity_maps,
        };
        let regions = capacity.regions();
        if !capacity.is_valid() || regions.size != mapping.size() {
            return Err(OpenError::Foreign);
        }
        Ok(Registry {
            _mapping: mapping,
            base,
            regions,
            domain: domain.to_string(),
            index: std::sync::OnceLock::new(),
            test_pauses: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Removes the registry file of `domain` (mappings stay valid until unmapped).
    pub fn unlink(domain: &str) -> Result<(), OpenError> {
        if !valid_domain(domain) {
            return Err(OpenError::InvalidDomain);
        }
        let mut path = registry_path(domain).into_bytes();
        path.push(0);
        // SAFETY: path is NUL-terminated.
        let r = unsafe { libc::syscall(libc::SYS_unlink, path.as_ptr()) };
        match sys::check(r) {
            Ok(_) | Err(libc::ENOENT) => Ok(()),
            Err(e) => Err(OpenError::Sys("removing the registry", e)),
        }
    }

    /// The domain's name.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// From now on this domain's tables tell `index` which files have live segments
    /// here (what is live already is added at once).
    pub fn join_index(&self, index: &'static index::Index) {
        if self.index.set(index).is_ok() {
            let (t, _) = self.lock();
            t.publish_live_files();
        }
    }

    /// The mode the domain's first process ran in (what a change in another domain does
    /// with this domain's segments: settle them, or report them in detect mode).
    pub fn mode(&self) -> Option<env::Mode> {
        match self.header().mode.load(Ordering::Relaxed) {
            0 => None,
            code => env::Mode::ALL.get(code as usize - 1).copied(),
        }
    }

    /// Records `mode` as the domain's mode unless one is recorded already.
    pub fn claim_mode(&self, mode: env::Mode) {
        let code = env::Mode::ALL
            .iter()
            .position(|&m| m == mode)
            .map_or(0, |i| i + 1);
        let _ = self.header().mode.compare_exchange(
            0,
            code as u32,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The user index this registry keeps up to date, if it joined one.
    pub fn index(&self) -> Option<&'static index::Index> {
        self.index.get().copied()
    }

    /// How many pipe, file and mapping records the registry has (fixed when it was
    /// created).
    pub fn capacity(&self) -> Capacity {
        self.regions.capacity
    }

    /// Size in bytes of the registry file (sparse: only the pages touched use memory).
    pub fn size(&self) -> usize {
        self.regions.size
    }

    /// The header: atomics readable without the lock.
    pub fn header(&self) -> &Header {
        // SAFETY: base points to a live mapping that starts with the header; the header
        // holds only atomics and fields written before publication.
        unsafe { &*(self.base as *const Header) }
    }

    /// A copy of record `i % region.len` of `region`, read without the lock: a volatile
    /// read of plain integers that another process may be writing, so a torn value only
    /// makes one lock-free answer conservatively wrong (the locked path is then taken).
    fn snapshot<T: Copy>(&self, region: Region, i: usize) -> T {
        debug_assert_eq!(region.record, std::mem::size_of::<T>());
        let at = region.offset + (i % region.len.max(1)) * std::mem::size_of::<T>();
        // SAFETY: `region` is one of the validated regions of this mapping, holding records
        // of type T (all of whose bit patterns are valid), 8-aligned; `at` is inside it.
        unsafe { std::ptr::read_volatile(self.base.add(at) as *const T) }
    }

    /// The snapshot mailboxes.
    fn mailboxes(&self) -> &[Mailbox; MAX_MAILBOXES] {
        // SAFETY: the mailbox region of this mapping holds MAX_MAILBOXES mailboxes, which
        // hold only atomics.
        unsafe {
            &*(self.base.add(self.regions.mailboxes.offset) as *const [Mailbox; MAX_MAILBOXES])
        }
    }

    /// Lets the test pauses (`SPLICECOW_TEST_PAUSE`) apply to this registry: call it for
    /// the process's own domain only.
    pub fn allow_test_pauses(&self) {
        self.test_pauses.store(true, Ordering::Relaxed);
    }

    /// Sleeps at test pause `point` when [`Registry::allow_test_pauses`] was called.
    pub fn pause(&self, point: pause::Point) {
        if self.test_pauses.load(Ordering::Relaxed) {
            pause::at(point);
        }
    }

    /// Takes the table lock (taking it over from a dead holder if needed).
    /// A holder that died may have stopped anywhere inside an update: the taker first
    /// repairs what the tables derive ([`Tables::repair`]). When the dead holder was a
    /// settler, its settle comes back with the guard: the caller must finish it before
    /// anything else (other writers of that pipe wait on the lock meanwhile).
    pub fn lock(&self) -> (Guard<'_>, Option<InterruptedSettle>) {
        let taken_over = lock::acquire(&self.header().lock);
        let mut guard = Guard {
            registry: self,
            // SAFETY: the cross-process lock is held until the Guard drops, so no other
            // thread of any process accesses the tables meanwhile.
            tables: unsafe {
                Tables::of(
                    self.base,
                    &self.regions,
                    self.index().map(|i| (i, self.domain.as_str())),
                    self.test_pauses.load(Ordering::Relaxed),
                )
            },
        };
        if taken_over {
            let h = self.header();
            h.lock_takeovers.fetch_add(1, Ordering::Relaxed);
            if guard.repair() {
                h.counters.table_repairs.fetch_add(1, Ordering::Relaxed);
            }
            guard.publish_live_files();
        }
        let interrupted = guard.journal().interrupted();
        (guard, interrupted)
    }

    /// Lock-free check whether `file` may have in-flight segments or shared writable
    /// mappings. A false answer races only with calls that are concurrent anyway.
    pub fn file_may_be_tracked(&self, file: FileKey) -> bool {
        fence(Ordering::Acquire);
        let files = self.regions.files;
        let home = file.home(files.len);
        for k in 0..layout::MAX_PROBE {
            let rec: FileRecord = self.snapshot(files, home + k);
            if rec.key == file {
                return rec.live_segments > 0
                    || rec.shared_writable_maps > 0
                    || rec.private_maps > 0;
            }
            if rec.key.is_empty() {
                return false;
            }
        }
        true
    }

    /// Mailbox number `index` (from [`Tables::claim_mailbox`]).
    pub fn mailbox(&self, index: usize) -> &Mailbox {
        bounded::at(self.mailboxes(), index)
    }

    /// The mailbox owned by `pid`, if any (lock-free: owners are published atomically).
    pub fn find_mailbox(&self, pid: i32) -> Option<&Mailbox> {
        self.mailboxes()
            .iter()
            .find(|m| m.owner_pid.load(Ordering::Relaxed) == pid as u32)
    }

    /// Live segments in the domain.
    pub fn live_segments(&self) -> u64 {
        self.header().live_segments.load(Ordering::SeqCst)
    }

    /// True when a mutation may have something to protect: live segments or registered
    /// private mappings (the mutation hooks' fast path: two loads of one cache line).
    pub fn has_live_references(&self) -> bool {
        let h = self.header();
        h.live_segments.load(Ordering::SeqCst) > 0 || h.private_maps.load(Ordering::SeqCst) > 0
    }

    /// File records with live segments or mappings now (a lock-free scan: a record
    /// changing meanwhile may be counted either way).
    fn files_in_use(&self) -> u64 {
        let files = self.regions.files;
        (0..files.len)
            .filter(|&i| {
                let f: FileRecord = self.snapshot(files, i);
                !f.key.is_empty()
                    && (f.live_segments > 0 || f.shared_writable_maps > 0 || f.private_maps > 0)
            })
            .count() as u64
    }

    /// Mappings of `kind` held by processes that are alive (a lock-free scan: records of
    /// processes that died stay until a sweep or a splice of their file reclaims them).
    fn live_maps(&self, kind: u32) -> u64 {
        let maps = self.regions.maps;
        (0..maps.len)
            .map(|i| self.snapshot::<MapRecord>(maps, i))
            .filter(|m| m.pid != 0 && m.kind == kind && sys::process_alive(m.pid))
            .map(|m| u64::from(m.count))
            .sum()
    }

    /// Counters and fill levels.
    /// True when the creator found that this kernel copies on splice: nothing needs
    /// protecting (see [`sys::kernel_copies_on_splice`]).
    pub fn kernel_copies_on_splice(&self) -> bool {
        self.header().kernel_copies.load(Ordering::Relaxed) != 0
    }

    /// Counters, fill levels and capacities now.
    pub fn stats(&self) -> Stats {
        let h = self.header();
        let c = &h.counters;
        let busy = h.busy_pipes.load(Ordering::Relaxed) as u64;
        let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            splices: r(&c.splices),
            bytes_zero_copy: r(&c.bytes_zero_copy),
            settles: r(&c.settles),
            bytes_copied: r(&c.bytes_copied),
            copy_fallbacks: r(&c.copy_fallbacks),
            copy_fallbacks_registry_full: r(&c.copy_fallbacks_registry_full),
            copy_fallbacks_shared_mapping: r(&c.copy_fallbacks_shared_mapping),
            table_repairs: r(&c.table_repairs),
            bytes_copy_path: r(&c.bytes_copy_path),
            env_cleared: r(&c.env_cleared),
            unreachable_pipes: r(&c.unreachable_pipes),
            conflicts: r(&c.conflicts),
            lock_takeovers: r(&h.lock_takeovers),
            live_segments: r(&h.live_segments),
            shared_writable_maps: self.live_maps(layout::MAP_SHARED_WRITABLE),
            private_maps: self.live_maps(layout::MAP_PRIVATE_SNAPSHOT),
            snapshots: r(&c.snapshots),
            snapshot_timeouts: r(&c.snapshot_timeouts),
            pipes_in_use: busy,
            files_in_use: self.files_in_use(),
            retired_stale: r(&c.retired_stale),
            sweeps: r(&c.sweeps),
            pipe_capacity: u64::from(self.regions.capacity.pipes),
            file_capacity: u64::from(self.regions.capacity.files),
            map_capacity: u64::from(self.regions.capacity.maps),
            kernel_copies_on_splice: u64::from(self.kernel_copies_on_splice()),
            busy_pipes: busy,
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn key(ino: u64) -> FileKey {
        FileKey { dev: 7, ino }
    }

    fn intent(file: FileKey, file_off: u64, len: u64) -> Intent {
        Intent {
            file,
            file_off,
            len,
            splicer_pid: 1,
            stack: 0,
        }
    }

    fn fresh(name: &str) -> Registry {
        let domain = format!("unit-{}-{name}", std::process::id());
        let _ = Registry::unlink(&domain);
        let r = Registry::open_or_create(&domain).unwrap();
        Registry::unlink(&domain).unwrap();
        r
    }

    #[test]
    fn domain_names_are_checked() {
        assert!(valid_domain("run-123.a_b"));
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_domain(bad), "{bad:?}");
            assert_eq!(
                Registry::open_or_create(bad).err(),
                Some(OpenError::InvalidDomain)
            );
        }
    }

    #[test]
    fn segments_are_recorded_merged_pruned_and_carried() {
        let reg = fresh("segments");
        let (pipe_a, pipe_b, file) = (key(1), key(2), key(3));
        let (mut t, _) = reg.lock();
        let a = t.pipe_or_insert(pipe_a).unwrap();
        t.push_segment(a, intent(file, 0, 100)).unwrap();
        t.commit(a, 60); // the kernel moved only 60 bytes
        t.push_segment(a, intent(file, 60, 40)).unwrap();
        t.commit(a, 40);
        assert_eq!(t.segments(a).count(), 1, "contiguous splices merge");
        assert_eq!(t.segments(a).next().unwrap().len, 100);
        assert_eq!(reg.live_segments(), 1);
        assert!(reg.file_may_be_tracked(file));

        let mut hits = 0;
        t.for_each_overlapping(file, 99, 200, |_| {
            hits += 1;
            true
        });
        assert_eq!(hits, 1);
        t.for_each_overlapping(file, 100, 200, |_| panic!("no overlap expected"));

        // A reader consumed 30 bytes: 70 pending.
        t.prune(a, 70);
        let s = t.segments(a).next().unwrap();
        assert_eq!((s.file_off, s.len, s.stream_pos), (30, 70, 30));

        // Carry 20 bytes from the head of a into b (a pipe→pipe splice).
        let b = t.pipe_or_insert(pipe_b).unwrap();
        t.carry(a, 30, 20, b).unwrap();
        t.commit(b, 20);
        let s = t.segments(b).next().unwrap();
        assert_eq!((s.file_off, s.len, s.stream_pos), (30, 20, 0));
        assert_eq!(reg.live_segments(), 2);

        t.prune(a, 0);
        t.retire_all(b);
        assert_eq!(reg.live_segments(), 0);
        drop(t);
        assert!(!reg.file_may_be_tracked(file));
    }

    #[test]
    fn repair_recomputes_what_a_dead_holder_left_torn() {
        let reg = fresh("repair");
        let (mut t, _) = reg.lock();
        let p = t.pipe_or_insert(key(1)).unwrap();
        t.push_segment(p, intent(key(3), 0, 100)).unwrap();
        t.commit(p, 100);
        let q = t.pipe_or_insert(key(2)).unwrap();
        t.push_segment(q, intent(key(4), 4096, 10)).unwrap();
        t.commit(q, 10);
        assert!(!t.repair(), "consistent tables are left as they are");
        // A holder killed after the ring took a segment, before the counters did.
        t.header.live_segments.store(1, Ordering::SeqCst);
        t.header.busy_pipes.store(1, Ordering::Relaxed);
        let f = t.find_file(key(3)).unwrap();
        t.files[f.index()].live_segments = 0;
        // And a ring count no update can leave.
        t.pipes[q.index()].count = 1000;
        assert!(t.repair());
        assert_eq!(
            reg.live_segments(),
            1,
            "the torn ring is dropped, the other kept"
        );
        assert_eq!(t.busy_pipes().collect::<Vec<_>>(), vec![p]);
        let mut hits = 0;
        t.for_each_overlapping(key(3), 50, 60, |_| {
            hits += 1;
            true
        });
        assert_eq!(hits, 1, "the file's segment is found again");
        drop(t);
        assert!(reg.file_may_be_tracked(key(3)));
        assert!(!reg.file_may_be_tracked(key(4)));
    }

    #[test]
    fn a_full_ring_is_reported_not_overrun() {
        let reg = fresh("full");
        let (mut t, _) = reg.lock();
        let p = t.pipe_or_insert(key(1)).unwrap();
        for i in 0..layout::SEGMENTS_PER_PIPE as u64 {
            t.push_segment(p, intent(key(2), i * 10, 5)).unwrap();
            t.commit(p, 5);
        }
        assert_eq!(
            t.push_segment(p, intent(key(2), 10_000, 5)),
            Err(Full::Segments)
        );
    }

    #[test]
    fn a_small_registry_is_full_at_its_capacity_and_joiners_keep_it() {
        let domain = format!("unit-{}-small", std::process::id());
        let _ = Registry::unlink(&domain);
        let reg = Registry::open_or_create_with(&domain, || Capacity::for_pipes(32)).unwrap();
        assert_eq!(reg.capacity(), Capacity::for_pipes(32));
        assert_eq!(reg.size(), Capacity::for_pipes(32).regions().size);
        let asked = std::cell::Cell::new(false);
        let joiner = Registry::open_or_create_with(&domain, || {
            asked.set(true);
            Capacity::LARGEST
        })
        .unwrap();
        Registry::unlink(&domain).unwrap();
        assert!(!asked.get(), "a joiner does not choose a capacity");
        assert_eq!(joiner.capacity(), reg.capacity());
        let (mut t, _) = reg.lock();
        for ino in 1..=32 {
            let p = t.pipe_or_insert(key(1000 + ino)).unwrap();
            t.push_segment(p, intent(key(ino), 0, 10)).unwrap();
            t.commit(p, 10);
        }
        assert_eq!(t.pipe_or_insert(key(2000)), Err(Full::Pipes));
        assert_eq!(t.busy_pipes().count(), 32);
        assert!(!t.repair(), "a full small table is consistent");
        drop(t);
        let s = joiner.stats();
        assert_eq!(
            (s.pipe_capacity, s.file_capacity, s.map_capacity),
            (32, 64, 64)
        );
        assert_eq!((s.pipes_in_use, s.files_in_use), (32, 32));
        assert!(joiner.file_may_be_tracked(key(32)));
    }

    #[test]
    fn a_header_that_does_not_match_the_file_size_is_refused() {
        use std::os::unix::fs::FileExt;
        let domain = format!("unit-{}-capacities", std::process::id());
        let path = registry_path(&domain);
        let _ = std::fs::remove_file(&path);
        drop(Registry::open_or_create_with(&domain, || Capacity::for_pipes(64)).unwrap());
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let at = |field: usize, v: u32| f.write_all_at(&v.to_ne_bytes(), field as u64).unwrap();
        let pipes = std::mem::offset_of!(Header, capacity_pipes);
        let files = std::mem::offset_of!(Header, capacity_files);
        // More tables than the file holds, fewer, none, and absurdly many: all refused,
        // none read out of bounds.
        for (field, value) in [
            (pipes, 4096),
            (pipes, 65),
            (files, 1 << 30),
            (files, 1),
            (pipes, 0),
            (pipes, u32::MAX),
        ] {
            at(field, value);
            assert_eq!(
                Registry::open_existing(&domain).err(),
                Some(OpenError::Foreign),
                "field at {field} = {value}"
            );
            at(pipes, 64);
            at(files, 128);
        }
        assert_eq!(
            Registry::open_existing(&domain).unwrap().capacity(),
            Capacity::for_pipes(64)
        );
        // A file grown past what the header says is refused too.
        f.set_len(Capacity::for_pipes(64).regions().size as u64 + 4096)
            .unwrap();
        assert_eq!(
            Registry::open_existing(&domain).err(),
            Some(OpenError::Foreign)
        );
        drop(f);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn foreign_files_are_refused() {
        let domain = format!("unit-{}-foreign", std::process::id());
        let path = registry_path(&domain);
        std::fs::write(&path, b"not a registry").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            Registry::open_or_create(&domain).err(),
            Some(OpenError::Foreign)
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            Registry::open_or_create(&domain).err(),
            Some(OpenError::NotOurs)
        );
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert_eq!(
            Registry::open_or_create(&domain).err(),
            Some(OpenError::NotOurs)
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn other_versions_truncated_files_and_other_owners_are_refused() {
        use std::os::unix::fs::FileExt;
        let domain = format!("unit-{}-versions", std::process::id());
        let path = registry_path(&domain);
        let _ = std::fs::remove_file(&path);
        drop(Registry::open_or_create(&domain).unwrap());
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // layout_version sits right after the 8-byte magic.
        f.write_all_at(&99u32.to_ne_bytes(), 8).unwrap();
        assert_eq!(
            Registry::open_existing(&domain).err(),
            Some(OpenError::Version(99))
        );
        f.set_len(100).unwrap();
        assert_eq!(
            Registry::open_existing(&domain).err(),
            Some(OpenError::Foreign)
        );
        // An empty file left by a creator that died before sizing it: refused at once
        // once it is older than the publication wait.
        f.set_len(0).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let start = std::time::Instant::now();
        let r = Registry::open_existing(&domain);
        assert!(matches!(r, Err(OpenError::Foreign)), "{:?}", r.err());
        assert!(start.elapsed() < std::time::Duration::from_millis(500));
        drop(f);
        std::fs::remove_file(&path).unwrap();
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            drop(Registry::open_or_create(&domain).unwrap());
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
            assert_eq!(
                Registry::open_existing(&domain).err(),
                Some(OpenError::NotOurs)
            );
            std::fs::remove_file(&path).unwrap();
        }
    }
}
