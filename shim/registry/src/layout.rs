//! The fixed, `repr(C)` layout of a registry segment in shared memory.
//!
//! Every process of a domain maps the same bytes, so nothing here holds a pointer:
//! records refer to each other by index, and every index read from shared memory is
//! bounds-checked before use (a corrupt or hostile file must not make us crash).

use std::sync::atomic::{AtomicU32, AtomicU64};

/// First eight bytes of an initialised registry: "SPLCCOW\x01".
pub const MAGIC: u64 = u64::from_le_bytes(*b"SPLCCOW\x01");
/// Bumped whenever the layout below changes; a registry of another version is refused.
pub const LAYOUT_VERSION: u32 = 4;
/// File records (files with in-flight segments or shared writable mappings).
pub const MAX_FILES: usize = 4096;
/// Pipe records (pipes that may hold page-cache pages of a domain's splices).
pub const MAX_PIPES: usize = 2048;
/// In-flight segments one pipe can track; adjacent ones are merged.
pub const SEGMENTS_PER_PIPE: usize = 64;
/// Processes remembered as holding an fd to a pipe (tried first when settling).
pub const HOLDERS_PER_PIPE: usize = 4;
/// Records of (process, file) shared writable mappings, reclaimed when the process dies.
pub const MAX_MAPS: usize = 1024;
/// How far open addressing probes before a table counts as full.
pub const MAX_PROBE: usize = 64;

/// Identity of an inode: `st_dev` and `st_ino`. All zeroes marks an empty slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// `st_dev` of the inode.
    pub dev: u64,
    /// `st_ino` of the inode.
    pub ino: u64,
}

impl FileKey {
    /// True for the all-zero key that marks a never-used slot.
    pub fn is_empty(&self) -> bool {
        self.dev == 0 && self.ino == 0
    }

    /// Home slot of this key in a table of `n` slots.
    pub fn home(&self, n: usize) -> usize {
        let h = self.ino.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
            ^ self.dev.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        (h % n as u64) as usize
    }
}

/// Bytes of one file that a splice put into a pipe and that no reader has consumed yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Index of the spliced file's record in [`Layout::files`].
    pub file_slot: u32,
    /// Process that spliced the bytes.
    pub splicer_pid: i32,
    /// Offset of the first byte in the file.
    pub file_off: u64,
    /// Number of bytes.
    pub len: u64,
    /// Position of the first byte in the pipe's stream (see [`PipeRecord::bytes_in`]).
    pub stream_pos: u64,
    /// `CLOCK_REALTIME` nanoseconds when the splice was recorded.
    pub created_ns: u64,
    /// Non-zero once detect mode reported a conflict with this segment.
    pub reported: u32,
    /// Keeps the size a multiple of 8.
    pub reserved: u32,
}

/// A process known to hold an fd to a pipe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    /// Holder's pid (0 = unused).
    pub pid: i32,
    /// The fd number in that process.
    pub fd: i32,
}

/// One pipe and its in-flight segments, kept in stream order as a ring.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PipeRecord {
    /// The pipe's inode (pipefs dev and ino).
    pub key: FileKey,
    /// Stream position after the last byte a shimmed process put into the pipe.
    pub bytes_in: u64,
    /// Ring index of the oldest segment.
    pub head: u32,
    /// Number of live segments in the ring.
    pub count: u32,
    /// Index of this pipe in [`Layout::busy`] while it has live segments.
    pub busy_pos: u32,
    /// Keeps the size a multiple of 8.
    pub reserved: u32,
    /// Processes that held an fd to this pipe when they spliced into it.
    pub holders: [Holder; HOLDERS_PER_PIPE],
    /// The ring of segments.
    pub segments: [Segment; SEGMENTS_PER_PIPE],
}

/// A file with in-flight segments or live mappings the registry tracks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileRecord {
    /// The file's inode.
    pub key: FileKey,
    /// Segments (in any pipe) that hold bytes of this file.
    pub live_segments: u32,
    /// Live `MAP_SHARED` + `PROT_WRITE` mappings of this file in the domain.
    pub shared_writable_maps: u32,
    /// Live registered `MAP_PRIVATE` mappings (private snapshots) of this file.
    pub private_maps: u32,
    /// Keeps the size a multiple of 8.
    pub reserved: u32,
    /// Lowest file offset of a live segment (valid while `live_segments > 0`).
    pub seg_lo: u64,
    /// One past the highest file offset of a live segment (same).
    pub seg_hi: u64,
}

/// [`MapRecord::kind`] of shared writable mappings.
pub const MAP_SHARED_WRITABLE: u32 = 0;
/// [`MapRecord::kind`] of private mappings kept as snapshots.
pub const MAP_PRIVATE_SNAPSHOT: u32 = 1;

/// Process `pid` has `count` live mappings of one kind of file `file_slot`, covering at
/// most file bytes `[lo, hi)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapRecord {
    /// Mapping process (0 = free record).
    pub pid: i32,
    /// Number of its mappings.
    pub count: u32,
    /// Index of the file's record in [`Layout::files`].
    pub file_slot: u32,
    /// [`MAP_SHARED_WRITABLE`] or [`MAP_PRIVATE_SNAPSHOT`].
    pub kind: u32,
    /// Lowest file offset mapped.
    pub lo: u64,
    /// One past the highest file offset mapped.
    pub hi: u64,
}

/// Where a mutator asks a mapping owner to snapshot its private pages (one per owner
/// process; the owner's helper thread waits on `request_seq` with a futex).
#[repr(C)]
#[derive(Default)]
pub struct Mailbox {
    /// Owner process (0 = free).
    pub owner_pid: AtomicU32,
    /// Bumped by a requester after filling the request; the owner's futex word.
    pub request_seq: AtomicU32,
    /// Set to `request_seq` by the owner when done; the requester's futex word.
    pub done_seq: AtomicU32,
    /// Non-zero when the mutation truncates or shifts (pages must be replaced).
    pub truncates: AtomicU32,
    /// Serialises requesters: `pid << 32 | tid` of the current one (robust, like the table lock).
    pub requester: AtomicU64,
    /// The file (dev).
    pub dev: AtomicU64,
    /// The file (ino).
    pub ino: AtomicU64,
    /// First file byte the mutation changes.
    pub off: AtomicU64,
    /// One past the last (`u64::MAX`: to the end).
    pub end: AtomicU64,
}

/// Mailboxes (processes with registered private mappings).
pub const MAX_MAILBOXES: usize = 256;

/// Bytes the settle journal holds: every pipe up to the default `pipe-max-size` (1 MiB).
pub const JOURNAL_BYTES: usize = 1 << 20;
/// Packet boundaries the settle journal keeps.
pub const JOURNAL_CHUNKS: usize = 1024;
/// [`SettleJournal::state`]: no settle in progress.
pub const SETTLE_IDLE: u32 = 0;
/// [`SettleJournal::state`]: the pipe is being read into the journal.
pub const SETTLE_DRAINING: u32 = 1;
/// [`SettleJournal::state`]: the journal's bytes are being written back.
pub const SETTLE_REFILLING: u32 = 2;
/// [`SettleJournal::state`]: a settle of a pipe larger than the journal, whose bytes are
/// in the settler's private buffer (lost if it dies).
pub const SETTLE_PRIVATE: u32 = 3;

/// The settle in progress, kept in shared memory so that whoever takes the table lock
/// over from a settler that died can finish it: no drained byte is lost.
#[repr(C)]
pub struct SettleJournal {
    /// [`SETTLE_IDLE`], [`SETTLE_DRAINING`], [`SETTLE_REFILLING`] or [`SETTLE_PRIVATE`].
    pub state: u32,
    /// The pipe being settled.
    pub pipe_slot: u32,
    /// Chunks read so far (a chunk ends at a packet boundary).
    pub n_chunks: u32,
    /// Chunks completely written back.
    pub done_chunks: u32,
    /// Bytes read so far.
    pub total: u64,
    /// Bytes of chunk `done_chunks` already written back.
    pub done_in_chunk: u64,
    /// Length of each chunk.
    pub chunk_len: [u32; JOURNAL_CHUNKS],
    /// Leading bytes of each chunk that were spliced (written back without `O_DIRECT`).
    pub chunk_plain: [u32; JOURNAL_CHUNKS],
    /// The drained bytes.
    pub bytes: [u8; JOURNAL_BYTES],
}

/// Domain-wide counters, updated with relaxed atomics, read by `splicecow stats`.
#[repr(C)]
#[derive(Default)]
pub struct Counters {
    /// File→pipe splices (and sendfiles) recorded.
    pub splices: AtomicU64,
    /// Bytes that went into pipes as page-cache references.
    pub bytes_zero_copy: AtomicU64,
    /// Pipes drained and refilled because a mutation overlapped them.
    pub settles: AtomicU64,
    /// Bytes copied out of the page cache by settles.
    pub bytes_copied: AtomicU64,
    /// Splices served by the copy path although the mode was protect (all causes).
    pub copy_fallbacks: AtomicU64,
    /// Of those: the registry had no room (file, pipe or segment records).
    pub copy_fallbacks_registry_full: AtomicU64,
    /// Of those: the file had a shared writable mapping (stores through it cannot be
    /// seen before they happen).
    pub copy_fallbacks_shared_mapping: AtomicU64,
    /// Pipes with in-flight segments that no process could be found to hold.
    pub unreachable_pipes: AtomicU64,
    /// Mutations that overlapped an in-flight segment.
    pub conflicts: AtomicU64,
    /// Bytes that went into pipes through the copy path.
    pub bytes_copy_path: AtomicU64,
    /// `exec`s whose environment had lost `LD_PRELOAD`/`SPLICECOW_*` (child unprotected).
    pub env_cleared: AtomicU64,
    /// Private mapping ranges snapshotted before a mutation.
    pub snapshots: AtomicU64,
    /// Snapshot requests that timed out (the mutation went ahead unprotected).
    pub snapshot_timeouts: AtomicU64,
    /// Lock takeovers that found the tables torn by the dead holder and repaired them.
    pub table_repairs: AtomicU64,
    /// Segments retired because their bytes had left the pipe or the pipe was gone,
    /// found when a holder closed its end or by a sweep.
    pub retired_stale: AtomicU64,
    /// Sweeps for stale records run.
    pub sweeps: AtomicU64,
}

/// The registry's first bytes.
#[repr(C)]
pub struct Header {
    /// [`MAGIC`], written last by the creator (publication of an initialised registry).
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// `size_of::<Layout>()` as computed by the creator.
    pub layout_size: u32,
    /// The table lock: `pid << 32 | tid` of the holder, 0 when free.
    pub lock: AtomicU64,
    /// Live segments in the whole domain: the mutation hooks' fast path reads only this.
    pub live_segments: AtomicU64,
    /// Live shared writable mappings in the whole domain.
    pub shared_writable_maps: AtomicU64,
    /// Live registered private mappings in the whole domain (the fast path reads this too).
    pub private_maps: AtomicU64,
    /// Locks taken over from a dead holder.
    pub lock_takeovers: AtomicU64,
    /// `CLOCK_MONOTONIC` nanoseconds when the last sweep for stale records started.
    pub last_sweep_ns: AtomicU64,
    /// Number of entries of [`Layout::busy`].
    pub busy_pipes: AtomicU32,
    /// Where in the busy list the next sweep starts (sweeps are bounded).
    pub sweep_cursor: AtomicU32,
    /// The domain's mode (`1 +` its place in `env::Mode::ALL`; 0: not recorded yet).
    pub mode: AtomicU32,
    /// Keeps the size a multiple of 8.
    pub reserved: u32,
    /// Counters shown by `splicecow stats`.
    pub counters: Counters,
}

/// The whole shared-memory segment.
#[repr(C)]
pub struct Layout {
    /// Header with lock, fast-path word and counters.
    pub header: Header,
    /// File table (open addressing by [`FileKey::home`]).
    pub files: [FileRecord; MAX_FILES],
    /// Tracked mappings per process, file and kind.
    pub maps: [MapRecord; MAX_MAPS],
    /// Snapshot request mailboxes.
    pub mailboxes: [Mailbox; MAX_MAILBOXES],
    /// Slots of the pipes that have live segments (the first `busy_pipes` entries), so
    /// lookups never walk the whole pipe table.
    pub busy: [u32; MAX_PIPES],
    /// Pipe table (open addressing by [`FileKey::home`]).
    pub pipes: [PipeRecord; MAX_PIPES],
    /// The settle in progress.
    pub journal: SettleJournal,
}

/// Size in bytes of the shared-memory file.
pub const LAYOUT_SIZE: usize = std::mem::size_of::<Layout>();

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, size_of};

    /// Pins the layout: changing any of these needs a [`LAYOUT_VERSION`] bump.
    #[test]
    fn layout_is_pinned() {
        assert_eq!(size_of::<FileKey>(), 16);
        assert_eq!(size_of::<Segment>(), 48);
        assert_eq!(size_of::<Holder>(), 8);
        assert_eq!(
            size_of::<PipeRecord>(),
            16 + 8 + 16 + 32 + 48 * SEGMENTS_PER_PIPE
        );
        assert_eq!(size_of::<FileRecord>(), 48);
        assert_eq!(size_of::<MapRecord>(), 32);
        assert_eq!(size_of::<Mailbox>(), 56);
        assert_eq!(size_of::<Counters>(), 128);
        assert_eq!(
            size_of::<SettleJournal>(),
            32 + 8 * JOURNAL_CHUNKS + JOURNAL_BYTES
        );
        assert_eq!(size_of::<Header>(), 80 + 128);
        assert_eq!(align_of::<Layout>(), 8);
        assert_eq!(
            LAYOUT_SIZE,
            size_of::<Header>()
                + 48 * MAX_FILES
                + 32 * MAX_MAPS
                + 56 * MAX_MAILBOXES
                + 4 * MAX_PIPES
                + size_of::<PipeRecord>() * MAX_PIPES
                + size_of::<SettleJournal>()
        );
    }
}
