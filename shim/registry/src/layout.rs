//! The fixed, `repr(C)` layout of a registry segment in shared memory.
//!
//! Every process of a domain maps the same bytes, so nothing here holds a pointer:
//! records refer to each other by index, and every index read from shared memory is
//! bounds-checked before use (a corrupt or hostile file must not make us crash).

use std::mem::size_of;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// First eight bytes of an initialised registry: "SPLCCOW\x01".
pub const MAGIC: u64 = u64::from_le_bytes(*b"SPLCCOW\x01");
/// Bumped whenever the layout below changes; a registry of another version is refused.
pub const LAYOUT_VERSION: u32 = 8;
/// In-flight segments one pipe can track; adjacent ones are merged. Fixed: a pipe
/// record is one `repr(C)` struct.
pub const SEGMENTS_PER_PIPE: usize = 64;
/// Processes remembered as holding an fd to a pipe (tried first when settling).
pub const HOLDERS_PER_PIPE: usize = 4;
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
    /// Index of the spliced file's record in [`Regions::files`].
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
    /// Detect mode: the call stack of the splice that recorded it, a ticket from
    /// [`crate::tables::Tables::intern_stack`] (0: none).
    pub stack: u32,
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
    /// Index of this pipe in [`Regions::busy`] while it has live segments.
    pub busy_pos: u32,
    /// Keeps the size a multiple of 8.
    pub reserved: u32,
    /// Lock owner id (`pid << 32 | tid`) of the thread whose kernel call is putting
    /// bytes into this pipe while the table lock is free (0: none). Set and cleared
    /// under the lock; while it is set nobody else changes the record or the pipe.
    pub call_owner: u64,
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
    /// Index of the file's record in [`Regions::files`].
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

/// Return addresses one [`StackRecord`] keeps (the innermost first).
pub const STACK_FRAMES: usize = 30;
/// Call stacks the stack table holds (distinct stacks; equal ones share a record).
pub const STACK_RECORDS: usize = 4096;
/// Code modules (executables, shared objects) the module table can name.
pub const MODULE_RECORDS: usize = 512;
/// Bytes of a module's path a [`ModuleRecord`] keeps (longer paths are not recorded).
pub const MODULE_PATH_BYTES: usize = 496;
/// Bits of a [`StackRecord`] frame that hold the offset in its module.
pub const FRAME_OFFSET_BITS: u32 = 48;

/// One call stack, interned by content in the stack table: a frame is
/// `(module + 1) << FRAME_OFFSET_BITS | offset`, the module being an index of the module
/// table and the offset the code address minus the module's load bias (its ELF virtual
/// address, the same in every process that loads it); module 0 means the frame is a raw
/// address whose module was not known.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackRecord {
    /// Hash of `depth` and `frames` (0: free record).
    pub hash: u64,
    /// Frames in use.
    pub depth: u32,
    /// Keeps the size a multiple of 8.
    pub reserved: u32,
    /// The frames, innermost first.
    pub frames: [u64; STACK_FRAMES],
}

impl Default for StackRecord {
    fn default() -> StackRecord {
        StackRecord {
            hash: 0,
            depth: 0,
            reserved: 0,
            frames: [0; STACK_FRAMES],
        }
    }
}

/// [`ModuleRecord::state`]: free.
pub const MODULE_FREE: u32 = 0;
/// [`ModuleRecord::state`]: being written by the process that claimed it.
pub const MODULE_WRITING: u32 = 1;
/// [`ModuleRecord::state`]: `path` is complete and never changes again.
pub const MODULE_READY: u32 = 2;

/// The path of a code module that frames of [`StackRecord`]s refer to. Claimed and
/// filled lock-free (a compare-and-swap on `state`), never freed while the registry lives.
#[repr(C)]
pub struct ModuleRecord {
    /// [`MODULE_FREE`], [`MODULE_WRITING`] or [`MODULE_READY`].
    pub state: AtomicU32,
    /// Bytes of `path` in use.
    pub len: u32,
    /// Hash of the path (see [`crate::stacks::path_hash`]).
    pub hash: u64,
    /// The path, as the dynamic loader names the module (the executable's is absolute).
    pub path: [u8; MODULE_PATH_BYTES],
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
    /// The file's size as computed by the creator ([`Regions::size`]).
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
    /// Number of entries of [`Regions::busy`].
    pub busy_pipes: AtomicU32,
    /// Where in the busy list the next sweep starts (sweeps are bounded).
    pub sweep_cursor: AtomicU32,
    /// The domain's mode (`1 +` its place in `env::Mode::ALL`; 0: not recorded yet).
    pub mode: AtomicU32,
    /// Pipe records ([`Capacity::pipes`]), fixed at creation.
    pub capacity_pipes: u32,
    /// File records ([`Capacity::files`]), fixed at creation.
    pub capacity_files: u32,
    /// Mapping records ([`Capacity::maps`]), fixed at creation.
    pub capacity_maps: u32,
    /// Non-zero when the kernel was found to copy on splice (see
    /// [`crate::sys::kernel_copies_on_splice`]): splices then need no protection, and the
    /// library stands down. Written by the creator before the magic.
    pub kernel_copies: AtomicU32,
    /// Counters shown by `splicecow stats`.
    pub counters: Counters,
}

/// How many records of each runtime-sized table a registry has: chosen by the process
/// that creates the registry, stored in its [`Header`], and used by every process that
/// maps it (a joiner never resizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Pipe records: pipes with live segments at once (and the busy list's length).
    pub pipes: u32,
    /// File records: files with live segments or tracked mappings at once.
    pub files: u32,
    /// Per-process mapping records.
    pub maps: u32,
}

/// Fewest pipe records a registry can be created with.
pub const MIN_PIPES: u32 = 16;
/// Most pipe records a registry can be created with (about 3.4 GB of sparse file).
pub const MAX_PIPES: u32 = 1 << 20;
/// Pipe records of a registry whose creator was not told otherwise.
pub const DEFAULT_PIPES: u32 = 2048;
/// Fewest mapping records (a small registry still serves a few mapping processes).
const MIN_MAPS: u32 = 64;

impl Capacity {
    /// The sizes of a registry whose creator was not told otherwise: 2048 pipes, 4096
    /// files, 1024 mapping records.
    pub const DEFAULT: Capacity = Capacity::for_pipes(DEFAULT_PIPES);
    /// The largest registry that can be created.
    pub const LARGEST: Capacity = Capacity::for_pipes(MAX_PIPES);

    /// `pipes` pipe records (clamped to [`MIN_PIPES`]`..=`[`MAX_PIPES`]), twice as many
    /// file records, and half as many mapping records (at least 64).
    pub const fn for_pipes(pipes: u32) -> Capacity {
        let pipes = if pipes < MIN_PIPES {
            MIN_PIPES
        } else if pipes > MAX_PIPES {
            MAX_PIPES
        } else {
            pipes
        };
        let maps = pipes / 2;
        Capacity {
            pipes,
            files: 2 * pipes,
            maps: if maps < MIN_MAPS { MIN_MAPS } else { maps },
        }
    }

    /// Pipe records as given in `SPLICECOW_REGISTRY_PIPES` (surrounding blanks ignored):
    /// a whole number from [`MIN_PIPES`] to [`MAX_PIPES`]; else what is wrong with it.
    pub fn parse_pipes(value: &str) -> Result<u32, String> {
        match value.trim().parse::<u64>() {
            Ok(n) if (u64::from(MIN_PIPES)..=u64::from(MAX_PIPES)).contains(&n) => Ok(n as u32),
            _ => Err(format!(
                "{value:?} is not a whole number from {MIN_PIPES} to {MAX_PIPES}"
            )),
        }
    }

    /// The capacity a creator uses: from `value` (the `SPLICECOW_REGISTRY_PIPES` it was
    /// given, if any), else [`Capacity::DEFAULT`]. A bad value gives the default and the
    /// one-line warning to print (without the `splicecow: ` prefix).
    pub fn from_setting(value: Option<&str>) -> (Capacity, Option<String>) {
        match value
            .filter(|v| !v.trim().is_empty())
            .map(Capacity::parse_pipes)
        {
            None => (Capacity::DEFAULT, None),
            Some(Ok(n)) => (Capacity::for_pipes(n), None),
            Some(Err(e)) => (
                Capacity::DEFAULT,
                Some(format!(
                    "{}={e}; using {DEFAULT_PIPES}",
                    crate::env::REGISTRY_PIPES
                )),
            ),
        }
    }

    /// [`Capacity::from_setting`] with this process's `SPLICECOW_REGISTRY_PIPES`.
    pub fn from_env() -> (Capacity, Option<String>) {
        let value = std::env::var_os(crate::env::REGISTRY_PIPES);
        Capacity::from_setting(
            value
                .as_deref()
                .map(|v| v.to_str().unwrap_or("(not UTF-8)")),
        )
    }

    /// True when every table has at least one record and no more than
    /// [`Capacity::LARGEST`] has: what a joiner accepts from a header.
    pub fn is_valid(self) -> bool {
        let most = Capacity::LARGEST;
        (MIN_PIPES..=most.pipes).contains(&self.pipes)
            && (1..=most.files).contains(&self.files)
            && (1..=most.maps).contains(&self.maps)
    }

    /// Where each part of a registry of this capacity lies.
    pub const fn regions(self) -> Regions {
        let files = Region::after(size_of::<Header>(), self.files, size_of::<FileRecord>());
        let maps = Region::after(files.end(), self.maps, size_of::<MapRecord>());
        let mailboxes = Region::after(maps.end(), MAX_MAILBOXES as u32, size_of::<Mailbox>());
        let busy = Region::after(mailboxes.end(), self.pipes, size_of::<u32>());
        let pipes = Region::after(busy.end(), self.pipes, size_of::<PipeRecord>());
        let journal = Region::after(pipes.end(), 1, size_of::<SettleJournal>());
        let stacks = Region::after(
            journal.end(),
            STACK_RECORDS as u32,
            size_of::<StackRecord>(),
        );
        let modules = Region::after(
            stacks.end(),
            MODULE_RECORDS as u32,
            size_of::<ModuleRecord>(),
        );
        Regions {
            capacity: self,
            files,
            maps,
            mailboxes,
            busy,
            pipes,
            journal,
            stacks,
            modules,
            size: modules.end(),
        }
    }
}

/// One table of a registry: `len` records of `record` bytes from byte `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First byte, from the start of the file (a multiple of 8).
    pub offset: usize,
    /// Number of records.
    pub len: usize,
    /// Bytes per record.
    pub record: usize,
}

impl Region {
    /// `len` records of `record` bytes, from the first multiple of 8 at or after `start`.
    const fn after(start: usize, len: u32, record: usize) -> Region {
        Region {
            offset: start.next_multiple_of(8),
            len: len as usize,
            record,
        }
    }

    /// One past the region's last byte.
    pub const fn end(self) -> usize {
        self.offset + self.len * self.record
    }
}

/// Where the header's tables lie in a registry file of one [`Capacity`]: the header
/// first, then the file table, the mapping records, the snapshot mailboxes, the busy
/// list, the pipe table, the settle journal, the stack table and the module table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regions {
    /// The capacity the regions are computed from.
    pub capacity: Capacity,
    /// File table (open addressing by [`FileKey::home`]) of [`FileRecord`]s.
    pub files: Region,
    /// Tracked mappings per process, file and kind ([`MapRecord`]s).
    pub maps: Region,
    /// Snapshot request mailboxes ([`MAX_MAILBOXES`] [`Mailbox`]es).
    pub mailboxes: Region,
    /// Slots (`u32`) of the pipes that have live segments (the first
    /// [`Header::busy_pipes`] entries), so lookups never walk the whole pipe table.
    pub busy: Region,
    /// Pipe table (open addressing by [`FileKey::home`]) of [`PipeRecord`]s.
    pub pipes: Region,
    /// The settle in progress (one [`SettleJournal`]).
    pub journal: Region,
    /// Detect mode's call stacks of splices ([`STACK_RECORDS`] [`StackRecord`]s, open
    /// addressing by hash).
    pub stacks: Region,
    /// The code modules those stacks name ([`MODULE_RECORDS`] [`ModuleRecord`]s, open
    /// addressing by path hash).
    pub modules: Region,
    /// Size in bytes of the whole file.
    pub size: usize,
}

/// Size in bytes of a registry of [`Capacity::DEFAULT`].
pub const DEFAULT_SIZE: usize = Capacity::DEFAULT.regions().size;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::align_of;

    /// Pins the layout: changing any of these needs a [`LAYOUT_VERSION`] bump.
    #[test]
    fn layout_is_pinned() {
        assert_eq!(size_of::<FileKey>(), 16);
        assert_eq!(size_of::<Segment>(), 48);
        assert_eq!(size_of::<Holder>(), 8);
        assert_eq!(
            size_of::<PipeRecord>(),
            16 + 8 + 16 + 8 + 32 + 48 * SEGMENTS_PER_PIPE
        );
        assert_eq!(size_of::<FileRecord>(), 48);
        assert_eq!(size_of::<MapRecord>(), 32);
        assert_eq!(size_of::<Mailbox>(), 56);
        assert_eq!(size_of::<Counters>(), 128);
        assert_eq!(
            size_of::<SettleJournal>(),
            32 + 8 * JOURNAL_CHUNKS + JOURNAL_BYTES
        );
        assert_eq!(size_of::<Header>(), 96 + 128);
        assert_eq!(size_of::<StackRecord>(), 16 + 8 * STACK_FRAMES);
        assert_eq!(size_of::<StackRecord>(), 256);
        assert_eq!(size_of::<ModuleRecord>(), 512);
        for align in [
            align_of::<Header>(),
            align_of::<FileRecord>(),
            align_of::<MapRecord>(),
            align_of::<Mailbox>(),
            align_of::<PipeRecord>(),
            align_of::<SettleJournal>(),
            align_of::<StackRecord>(),
            align_of::<ModuleRecord>(),
        ] {
            assert!(align <= 8, "regions are 8-aligned");
        }
    }

    /// The regions follow each other, 8-aligned, without overlap, and the default
    /// registry is the size the README and the design document give.
    #[test]
    fn regions_are_laid_out_in_order() {
        let r = Capacity::DEFAULT.regions();
        assert_eq!(
            Capacity::DEFAULT,
            Capacity {
                pipes: 2048,
                files: 4096,
                maps: 1024
            }
        );
        assert_eq!(r.files.offset, size_of::<Header>());
        assert_eq!(r.maps.offset, r.files.offset + 4096 * 48);
        assert_eq!(r.mailboxes.offset, r.maps.offset + 1024 * 32);
        assert_eq!(r.busy.offset, r.mailboxes.offset + MAX_MAILBOXES * 56);
        assert_eq!(r.pipes.offset, r.busy.offset + 2048 * 4);
        assert_eq!(r.journal.offset, r.pipes.offset + 2048 * 3152);
        assert_eq!(
            r.stacks.offset,
            r.journal.offset + size_of::<SettleJournal>()
        );
        assert_eq!(r.modules.offset, r.stacks.offset + STACK_RECORDS * 256);
        assert_eq!(r.size, r.modules.offset + MODULE_RECORDS * 512);
        assert_eq!(DEFAULT_SIZE, 9_074_944);
        // An odd pipe count leaves the busy list unaligned: the pipe table is padded.
        let odd = Capacity::for_pipes(17).regions();
        assert_eq!(odd.busy.end() % 8, 4);
        assert_eq!(odd.pipes.offset, odd.busy.end() + 4);
        for c in [
            Capacity::for_pipes(17),
            Capacity::DEFAULT,
            Capacity::LARGEST,
        ] {
            let r = c.regions();
            let parts = [
                r.files,
                r.maps,
                r.mailboxes,
                r.busy,
                r.pipes,
                r.journal,
                r.stacks,
                r.modules,
            ];
            for pair in parts.windows(2) {
                let [a, b] = pair else { unreachable!() };
                assert!(a.end() <= b.offset && b.offset % 8 == 0, "{c:?}");
            }
        }
        // The header's `layout_size` is a u32: the largest registry must fit.
        assert!(Capacity::LARGEST.regions().size <= u32::MAX as usize);
    }

    #[test]
    fn capacities_are_derived_clamped_and_parsed() {
        assert_eq!(
            Capacity::for_pipes(32),
            Capacity {
                pipes: 32,
                files: 64,
                maps: 64
            }
        );
        assert_eq!(Capacity::for_pipes(1).pipes, MIN_PIPES);
        assert_eq!(Capacity::for_pipes(u32::MAX).pipes, MAX_PIPES);
        assert!(Capacity::LARGEST.is_valid() && Capacity::for_pipes(0).is_valid());
        assert!(!Capacity {
            maps: 0,
            ..Capacity::DEFAULT
        }
        .is_valid());
        assert!(!Capacity {
            pipes: MAX_PIPES + 1,
            ..Capacity::DEFAULT
        }
        .is_valid());
        assert_eq!(Capacity::parse_pipes(" 32\n"), Ok(32));
        for bad in [
            "0",
            "15",
            "1048577",
            "-1",
            "lots",
            "3.5",
            "99999999999999999999",
        ] {
            assert!(Capacity::parse_pipes(bad).is_err(), "{bad}");
        }
        assert_eq!(Capacity::from_setting(None), (Capacity::DEFAULT, None));
        assert_eq!(Capacity::from_setting(Some("")), (Capacity::DEFAULT, None));
        assert_eq!(
            Capacity::from_setting(Some("64")),
            (Capacity::for_pipes(64), None)
        );
        let (c, warning) = Capacity::from_setting(Some("0"));
        assert_eq!(c, Capacity::DEFAULT);
        assert_eq!(
            warning.as_deref(),
            Some("SPLICECOW_REGISTRY_PIPES=\"0\" is not a whole number from 16 to 1048576; using 2048")
        );
    }
}
