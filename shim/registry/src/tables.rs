//! Operations on the file and pipe tables. Everything here runs with the table lock held
//! (see [`crate::Registry::lock`]) and treats the shared bytes as untrusted: indices are
//! bounds-checked, so a corrupt registry gives wrong answers, never a crash.

use crate::bounded::{at, at_mut, prefix, Table};
use crate::index::Index;
use crate::layout::*;
use crate::pause::{self, Point};
use std::sync::atomic::Ordering;

/// Exclusive view of the tables while the lock is held: every part of the registry but
/// the header, which holds only atomics (and fields fixed at creation) and stays shared.
pub struct Tables<'a> {
    pub(crate) header: &'a Header,
    pub(crate) files: Table<'a, FileRecord>,
    pub(crate) maps: Table<'a, MapRecord>,
    pub(crate) mailboxes: &'a [Mailbox; MAX_MAILBOXES],
    pub(crate) busy: Table<'a, u32>,
    pub(crate) pipes: Table<'a, PipeRecord>,
    pub(crate) journal: &'a mut SettleJournal,
    pub(crate) stacks: Table<'a, StackRecord>,
    /// The user index and this domain's name in it, when the registry joined one.
    pub(crate) index: Option<(&'a Index, &'a str)>,
    /// Whether the test pauses apply to this registry (the process's own domain only).
    pub(crate) pauses: bool,
}

impl<'a> Tables<'a> {
    /// Splits a mapped registry into the shared header and the tables, without ever
    /// making a unique reference to the header (other threads and processes read it
    /// meanwhile).
    ///
    /// # Safety
    /// `base` points to a live mapping of `regions.size` bytes laid out as `regions` says,
    /// every capacity in `regions` is at least 1 ([`Capacity::is_valid`]), and the caller
    /// holds the table lock for `'a`: nobody else touches the tables meanwhile.
    pub(crate) unsafe fn of(
        base: *mut u8,
        regions: &Regions,
        index: Option<(&'a Index, &'a str)>,
        pauses: bool,
    ) -> Tables<'a> {
        // SAFETY: the regions are disjoint parts of the mapping, 8-aligned, each holding
        // `len >= 1` records (all-zero bytes are valid for every record type); the header
        // is only ever shared, the rest is exclusive to the lock holder (see above).
        unsafe {
            let part = |r: Region| base.add(r.offset);
            Tables {
                header: &*(base as *const Header),
                files: Table::from_raw(part(regions.files).cast(), regions.files.len),
                maps: Table::from_raw(part(regions.maps).cast(), regions.maps.len),
                mailboxes: &*(part(regions.mailboxes) as *const [Mailbox; MAX_MAILBOXES]),
                busy: Table::from_raw(part(regions.busy).cast(), regions.busy.len),
                pipes: Table::from_raw(part(regions.pipes).cast(), regions.pipes.len),
                journal: &mut *(part(regions.journal) as *mut SettleJournal),
                stacks: Table::from_raw(part(regions.stacks).cast(), regions.stacks.len),
                index,
                pauses,
            }
        }
    }

    /// Sleeps at test pause `point` when this registry is the process's own domain's and
    /// `SPLICECOW_TEST_PAUSE` names the point (see [`crate::pause`]).
    pub fn pause(&self, point: Point) {
        if self.pauses {
            pause::at(point);
        }
    }

    /// The domain's counters (not tied to this view: usable while the tables change).
    pub fn counters(&self) -> &'a Counters {
        &self.header.counters
    }
}

/// A record of the pipe table, as found or inserted by [`Tables::find_pipe`] and
/// [`Tables::pipe_or_insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeSlot(u32);

/// A record of the file table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSlot(u32);

impl PipeSlot {
    /// The slot with index `i` (every access takes it modulo the table's length: a slot
    /// read from a corrupt registry is a wrong record, never out of bounds).
    pub fn new(i: usize) -> PipeSlot {
        PipeSlot(i as u32)
    }

    /// The slot's index in the pipe table.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl FileSlot {
    fn new(i: usize) -> FileSlot {
        FileSlot(i as u32)
    }

    /// The slot's index in the file table.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Which table had no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// No free file record.
    Files,
    /// No free pipe record.
    Pipes,
    /// The pipe's segment ring is full even after merging.
    Segments,
    /// No free mapping record.
    Maps,
}

/// What a splice is about to put into a pipe: recorded before the kernel call, trimmed
/// to what really moved by [`Tables::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intent {
    /// The spliced file.
    pub file: FileKey,
    /// Offset of the first byte in the file.
    pub file_off: u64,
    /// Most bytes the call can move.
    pub len: u64,
    /// The splicing process.
    pub splicer_pid: i32,
    /// Detect mode: the splice's call stack ([`Tables::intern_stack`]; 0: none).
    pub stack: u32,
}

/// A segment as returned by lookups, with the keys resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Pipe that holds it.
    pub pipe_slot: PipeSlot,
    /// Index in the pipe's ring order (0 = oldest).
    pub index: usize,
    /// The segment itself.
    pub segment: Segment,
}

fn overlaps(a_off: u64, a_len: u64, b_off: u64, b_end: u64) -> bool {
    a_len > 0 && a_off < b_end && b_off < a_off.saturating_add(a_len)
}

impl Tables<'_> {
    /// The record of `key` in the file table, if it has one.
    pub fn find_file(&self, key: FileKey) -> Option<FileSlot> {
        find(key, self.files.len(), |i| self.files.at(i).key).map(FileSlot::new)
    }

    /// The record of `key` in the file table, made if it has none.
    pub fn file_or_insert(&mut self, key: FileKey) -> Result<FileSlot, Full> {
        let files = &mut self.files;
        let found = probe(key, files.len(), |i| {
            (
                files.at(i).key,
                files.at(i).live_segments == 0
                    && files.at(i).shared_writable_maps == 0
                    && files.at(i).private_maps == 0,
            )
        });
        match found {
            Probe::Found(i) => Ok(FileSlot::new(i)),
            Probe::Free(i) => {
                *files.at_mut(i) = FileRecord {
                    key,
                    ..Default::default()
                };
                Ok(FileSlot::new(i))
            }
            Probe::Full => Err(Full::Files),
        }
    }

    /// The record of pipe `key`, if it has one.
    pub fn find_pipe(&self, key: FileKey) -> Option<PipeSlot> {
        find(key, self.pipes.len(), |i| self.pipes.at(i).key).map(PipeSlot::new)
    }

    /// The record of pipe `key`, made (empty) if it has none.
    pub fn pipe_or_insert(&mut self, key: FileKey) -> Result<PipeSlot, Full> {
        let pipes = &mut self.pipes;
        // A record is free when it holds no segment and no live thread is in a kernel
        // call on it.
        let found = probe(key, pipes.len(), |i| {
            let p = pipes.at(i);
            let free =
                p.count == 0 && (p.call_owner == 0 || !crate::lock::owner_alive(p.call_owner));
            (p.key, free)
        });
        match found {
            Probe::Found(i) => Ok(PipeSlot::new(i)),
            Probe::Free(i) => {
                let p = pipes.at_mut(i);
                p.key = key;
                p.bytes_in = 0;
                p.head = 0;
                p.count = 0;
                p.call_owner = 0;
                p.holders = Default::default();
                Ok(PipeSlot::new(i))
            }
            Probe::Full => Err(Full::Pipes),
        }
    }

    /// The thread (lock owner id) whose kernel call is putting bytes into pipe `slot`
    /// while the lock is free, if any (see [`PipeRecord::call_owner`]).
    pub fn call_owner(&self, slot: PipeSlot) -> Option<u64> {
        Some(self.pipe(slot).call_owner).filter(|&o| o != 0)
    }

    /// Marks pipe `slot` as being written by `owner`'s kernel call (0: the call ended).
    pub fn set_call_owner(&mut self, slot: PipeSlot, owner: u64) {
        self.pipes.at_mut(slot.index()).call_owner = owner;
    }

    /// The settle journal.
    pub fn journal(&mut self) -> &mut SettleJournal {
        self.journal
    }

    /// The record of pipe `slot`.
    pub fn pipe(&self, slot: PipeSlot) -> &PipeRecord {
        self.pipes.at(slot.index())
    }

    /// The record of file `slot`.
    pub fn file(&self, slot: FileSlot) -> &FileRecord {
        self.files.at(slot.index())
    }

    /// Remembers that `pid` holds the pipe as `fd` (most recent first).
    pub fn add_holder(&mut self, slot: PipeSlot, pid: i32, fd: i32) {
        let pauses = self.pauses;
        let holders = &mut self.pipes.at_mut(slot.index()).holders;
        let new = Holder { pid, fd };
        if *at(holders, 0) == new {
            return;
        }
        let mut kept = [Holder::default(); HOLDERS_PER_PIPE];
        kept[0] = new;
        let others = holders.iter().filter(|h| **h != new && h.pid != 0);
        for (slot, h) in kept[1..].iter_mut().zip(others) {
            *slot = *h;
        }
        // One entry at a time, as a torn update would leave them.
        for (i, h) in kept.into_iter().enumerate() {
            // SAFETY: `i` < HOLDERS_PER_PIPE; a volatile store so the list is in shared
            // memory, as written so far, when the test pause below is reached.
            unsafe { std::ptr::write_volatile(at_mut(holders, i), h) };
            if i == 0 && pauses {
                pause::at(Point::Holder);
            }
        }
    }

    /// Forgets that `pid` holds the pipe as `fd` (it closed it).
    pub fn remove_holder(&mut self, slot: PipeSlot, pid: i32, fd: i32) {
        let holders = &mut self.pipes.at_mut(slot.index()).holders;
        let gone = Holder { pid, fd };
        let mut kept = [Holder::default(); HOLDERS_PER_PIPE];
        for (cell, h) in kept.iter_mut().zip(holders.iter().filter(|h| **h != gone)) {
            *cell = *h;
        }
        *holders = kept;
    }

    /// Calls `each(fd)` for every pipe with live segments that `pid` is recorded to hold.
    pub fn for_each_held_by(&self, pid: i32, mut each: impl FnMut(i32)) {
        for slot in self.busy_pipes() {
            for h in self.pipe(slot).holders.iter().filter(|h| h.pid == pid) {
                each(h.fd);
            }
        }
    }

    /// Segments of pipe `slot`, oldest first.
    pub fn segments(&self, slot: PipeSlot) -> impl Iterator<Item = Segment> + '_ {
        let p = self.pipe(slot);
        let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
        (0..count).map(move |i| *at(&p.segments, p.head as usize + i))
    }

    /// Appends a segment of `len` bytes of file `file` at `file_off` to pipe `slot`, at the
    /// pipe's current end of stream, merging with the newest segment when contiguous.
    /// This is the intent recorded before the kernel call; [`Tables::commit`] then trims
    /// it to what the call really moved and advances the stream end.
    pub fn push_segment(&mut self, slot: PipeSlot, intent: Intent) -> Result<(), Full> {
        let stream_pos = self.pipe(slot).bytes_in;
        self.push_at(slot, intent, stream_pos)
    }

    fn push_at(&mut self, slot: PipeSlot, intent: Intent, stream_pos: u64) -> Result<(), Full> {
        let Intent {
            file,
            file_off,
            len,
            splicer_pid,
            stack,
        } = intent;
        if len == 0 {
            return Ok(());
        }
        let fslot = self.file_or_insert(file)?.index();
        let now = crate::sys::realtime_ns();
        let p = self.pipes.at_mut(slot.index());
        let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
        if count > 0 {
            let last = at_mut(&mut p.segments, p.head as usize + count - 1);
            if last.file_slot as usize == fslot
                && last.splicer_pid == splicer_pid
                && last.file_off.wrapping_add(last.len) == file_off
                && last.stream_pos.wrapping_add(last.len) == stream_pos
                && last.reported == 0
            {
                last.len += len;
                let f = self.files.at_mut(fslot);
                f.seg_hi = f.seg_hi.max(file_off.saturating_add(len));
                return Ok(());
            }
        }
        if count >= SEGMENTS_PER_PIPE {
            return Err(Full::Segments);
        }
        *at_mut(&mut p.segments, p.head as usize + count) = Segment {
            file_slot: fslot as u32,
            splicer_pid,
            file_off,
            len,
            stream_pos,
            created_ns: now,
            reported: 0,
            stack,
        };
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        p.count = count as u32 + 1;
        self.pause(Point::Record);
        self.update_busy(slot);
        if self.files.at(fslot).live_segments == 0 {
            // Known to the user's other domains before any of them can see it.
            if let Some((index, domain)) = self.index {
                index.add(file, domain);
            }
        }
        let f = self.files.at_mut(fslot);
        let end = file_off.saturating_add(len);
        (f.seg_lo, f.seg_hi) = if f.live_segments == 0 {
            (file_off, end)
        } else {
            (f.seg_lo.min(file_off), f.seg_hi.max(end))
        };
        f.live_segments += 1;
        self.header.live_segments.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// After a kernel call moved `moved` bytes into pipe `slot` (whose intent segments were
    /// pushed before the call): trims the intent to what really happened and advances the
    /// stream end. Also serves writes of bytes that carry no segment (`write` to a pipe).
    pub fn commit(&mut self, slot: PipeSlot, moved: u64) {
        let end = self.pipe(slot).bytes_in.wrapping_add(moved);
        self.truncate_stream(slot, end);
        self.pipes.at_mut(slot.index()).bytes_in = end;
    }

    /// Drops or trims segments that lie at or beyond stream position `end`.
    fn truncate_stream(&mut self, slot: PipeSlot, end: u64) {
        loop {
            let p = self.pipes.at_mut(slot.index());
            let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
            if count == 0 {
                self.update_busy(slot);
                return;
            }
            let last = at_mut(&mut p.segments, p.head as usize + count - 1);
            if last.stream_pos >= end {
                let fslot = last.file_slot as usize;
                p.count = count as u32 - 1;
                self.pause(Point::Commit);
                self.release_file_ref(fslot);
            } else {
                last.len = last.len.min(end - last.stream_pos);
                self.update_busy(slot);
                return;
            }
        }
    }

    /// Retires segments already consumed: the pipe holds `pending` bytes (`FIONREAD`),
    /// so everything before `bytes_in - pending` was read. With writers the shim does not
    /// know, `pending` is larger and this keeps more than needed, never less.
    pub fn prune(&mut self, slot: PipeSlot, pending: u64) {
        let p = self.pipes.at(slot.index());
        if pending == 0 {
            self.retire_all(slot);
            return;
        }
        let consumed = p.bytes_in.saturating_sub(pending);
        self.retire_before(slot, consumed);
    }

    /// Retires every segment before stream position `pos`, trimming one that straddles it.
    pub fn retire_before(&mut self, slot: PipeSlot, pos: u64) {
        loop {
            let p = self.pipes.at_mut(slot.index());
            let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
            if count == 0 {
                self.update_busy(slot);
                return;
            }
            let first = at_mut(&mut p.segments, p.head as usize);
            let end = first.stream_pos.saturating_add(first.len);
            if end <= pos {
                let fslot = first.file_slot as usize;
                p.head = ((p.head as usize + 1) % SEGMENTS_PER_PIPE) as u32;
                p.count = count as u32 - 1;
                self.pause(Point::Retire);
                self.release_file_ref(fslot);
            } else {
                if first.stream_pos < pos {
                    let cut = pos - first.stream_pos;
                    first.stream_pos = pos;
                    first.file_off = first.file_off.wrapping_add(cut);
                    first.len -= cut;
                }
                self.update_busy(slot);
                return;
            }
        }
    }

    /// Retires every segment of pipe `slot` (its bytes no longer live in the page cache).
    pub fn retire_all(&mut self, slot: PipeSlot) {
        let p = self.pipes.at_mut(slot.index());
        let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
        let head = p.head as usize;
        p.head = 0;
        p.count = 0;
        if count > 0 {
            self.pause(Point::Retire);
        }
        for i in 0..count {
            let fslot = at(&self.pipes.at(slot.index()).segments, head + i).file_slot;
            self.release_file_ref(fslot as usize);
        }
        self.update_busy(slot);
    }

    /// Keeps pipe `slot`'s membership in the busy list in line with its segment count.
    fn update_busy(&mut self, slot: PipeSlot) {
        let cap = self.pipes.len();
        let slot = slot.index() % cap;
        let n = (self.header.busy_pipes.load(Ordering::Relaxed) as usize).min(cap);
        let pos = self.pipes.at(slot).busy_pos as usize;
        let member = pos < n && *self.busy.at(pos) as usize == slot;
        let busy = self.pipes.at(slot).count > 0;
        if busy && !member && n < cap {
            *self.busy.at_mut(n) = slot as u32;
            self.pipes.at_mut(slot).busy_pos = n as u32;
            self.header
                .busy_pipes
                .store(n as u32 + 1, Ordering::Relaxed);
        } else if !busy && member {
            let last = *self.busy.at(n - 1) as usize % cap;
            *self.busy.at_mut(pos) = last as u32;
            self.pipes.at_mut(last).busy_pos = pos as u32;
            self.header
                .busy_pipes
                .store(n as u32 - 1, Ordering::Relaxed);
        }
    }

    fn release_file_ref(&mut self, fslot: usize) {
        let f = self.files.at_mut(fslot);
        f.live_segments = f.live_segments.saturating_sub(1);
        let (gone, key) = (f.live_segments == 0, f.key);
        let live = &self.header.live_segments;
        let _ = live.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
            Some(v.saturating_sub(1))
        });
        if let (true, Some((index, domain))) = (gone, self.index) {
            index.remove(key, domain);
        }
    }

    /// Tells the user index about every file with live segments here (after joining it,
    /// and after a repair: adding what is there already is harmless).
    pub fn publish_live_files(&self) {
        let Some((index, domain)) = self.index else {
            return;
        };
        for f in self
            .files
            .iter()
            .filter(|f| !f.key.is_empty() && f.live_segments > 0)
        {
            index.add(f.key, domain);
        }
    }

    /// Forgets, in the user index, that this domain has segments of `key` when it has none
    /// (an entry left by a holder killed between its last retire and the removal).
    pub fn unpublish_if_dead(&self, key: FileKey) {
        let Some((index, domain)) = self.index else {
            return;
        };
        let live = self
            .find_file(key)
            .is_some_and(|f| self.files.at(f.index()).live_segments > 0);
        if !live {
            index.remove(key, domain);
        }
    }

    /// Copies the segments covering stream range `[from, from + n)` of pipe `src` to the
    /// end of pipe `dst` (for `tee` and pipe→pipe `splice`), as pushed intents: the caller
    /// then calls [`Tables::commit`] on `dst` with the bytes really moved.
    pub fn carry(&mut self, src: PipeSlot, from: u64, n: u64, dst: PipeSlot) -> Result<(), Full> {
        let to = from.saturating_add(n);
        let base = self.pipe(dst).bytes_in;
        let mut copy = [Segment::default(); SEGMENTS_PER_PIPE];
        let mut count = 0;
        for s in self.segments(src) {
            *at_mut(&mut copy, count) = s;
            count += 1;
        }
        for s in prefix(&copy, count) {
            let lo = s.stream_pos.max(from);
            let hi = s.stream_pos.saturating_add(s.len).min(to);
            if lo >= hi {
                continue;
            }
            let key = self.files.at(s.file_slot as usize).key;
            let intent = Intent {
                file: key,
                file_off: s.file_off + (lo - s.stream_pos),
                len: hi - lo,
                splicer_pid: s.splicer_pid,
                stack: s.stack,
            };
            self.push_at(dst, intent, base + (lo - from))?;
        }
        Ok(())
    }

    /// Calls `each` for every segment of file `file` that overlaps bytes `[off, end)`, in
    /// every pipe; stops early when `each` returns false.
    pub fn for_each_overlapping(
        &self,
        file: FileKey,
        off: u64,
        end: u64,
        mut each: impl FnMut(SegmentInfo) -> bool,
    ) {
        let Some(fslot) = self.find_file(file).map(FileSlot::index) else {
            return;
        };
        let f = self.files.at(fslot);
        if f.live_segments == 0 || !overlaps(f.seg_lo, f.seg_hi.saturating_sub(f.seg_lo), off, end)
        {
            return;
        }
        for &pipe_slot in self.busy_slots() {
            let pipe_slot = PipeSlot::new(pipe_slot as usize);
            let p = self.pipes.at(pipe_slot.index());
            let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
            for index in 0..count {
                let s = *at(&p.segments, p.head as usize + index);
                if s.file_slot as usize == fslot
                    && overlaps(s.file_off, s.len, off, end)
                    && !each(SegmentInfo {
                        pipe_slot,
                        index,
                        segment: s,
                    })
                {
                    return;
                }
            }
        }
    }

    /// True when pipe `slot` has a segment of `file` overlapping bytes `[off, end)`.
    pub fn pipe_overlaps(&self, slot: PipeSlot, file: FileKey, off: u64, end: u64) -> bool {
        let Some(fslot) = self.find_file(file).map(FileSlot::index) else {
            return false;
        };
        self.segments(slot)
            .any(|s| s.file_slot as usize == fslot && overlaps(s.file_off, s.len, off, end))
    }

    /// Marks every not yet reported segment of `file` in pipe `slot` that overlaps bytes
    /// `[off, end)` as reported, and calls `each` with it.
    pub fn report_overlapping(
        &mut self,
        slot: PipeSlot,
        file: FileKey,
        off: u64,
        end: u64,
        mut each: impl FnMut(Segment),
    ) {
        let Some(fslot) = self.find_file(file).map(FileSlot::index) else {
            return;
        };
        let p = self.pipes.at_mut(slot.index());
        let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
        for i in 0..count {
            let s = at_mut(&mut p.segments, p.head as usize + i);
            if s.reported == 0
                && s.file_slot as usize == fslot
                && overlaps(s.file_off, s.len, off, end)
            {
                s.reported = 1;
                each(*s);
            }
        }
    }

    /// Adds `delta` to the shared writable mappings process `pid` has of `file`.
    pub fn add_shared_writable_map(
        &mut self,
        file: FileKey,
        pid: i32,
        delta: i32,
    ) -> Result<(), Full> {
        self.add_map(MAP_SHARED_WRITABLE, file, pid, delta, 0, 0)
    }

    /// Adds `delta` to the private snapshot mappings process `pid` has of `file`, which
    /// now cover at least file bytes `[lo, hi)`.
    pub fn add_private_map(
        &mut self,
        file: FileKey,
        pid: i32,
        delta: i32,
        lo: u64,
        hi: u64,
    ) -> Result<(), Full> {
        self.add_map(MAP_PRIVATE_SNAPSHOT, file, pid, delta, lo, hi)
    }

    fn add_map(
        &mut self,
        kind: u32,
        file: FileKey,
        pid: i32,
        delta: i32,
        lo: u64,
        hi: u64,
    ) -> Result<(), Full> {
        let fslot = if delta > 0 {
            self.file_or_insert(file)?
        } else {
            match self.find_file(file) {
                Some(f) => f,
                None => return Ok(()),
            }
        }
        .index();
        let found = self
            .maps
            .iter()
            .position(|m| m.pid == pid && m.kind == kind && m.file_slot as usize == fslot);
        let free = |maps: &[MapRecord]| maps.iter().position(|m| m.pid == 0);
        let i = match found {
            Some(i) => i,
            None if delta > 0 => match free(&self.maps) {
                Some(i) => i,
                None => {
                    // Full: records of processes that died are free.
                    self.reclaim_dead_maps();
                    free(&self.maps).ok_or(Full::Maps)?
                }
            },
            None => return Ok(()),
        };
        let maps = &mut self.maps;
        let old = if found.is_some() {
            *maps.at(i)
        } else {
            MapRecord {
                lo: u64::MAX,
                ..MapRecord::default()
            }
        };
        let count = old.count.saturating_add_signed(delta);
        *maps.at_mut(i) = if count == 0 {
            MapRecord::default()
        } else {
            let (lo, hi) = if delta > 0 {
                (old.lo.min(lo), old.hi.max(hi))
            } else {
                (old.lo, old.hi)
            };
            MapRecord {
                pid,
                count,
                file_slot: fslot as u32,
                kind,
                lo,
                hi,
            }
        };
        self.adjust_file_maps(kind, fslot, count as i64 - old.count as i64);
        Ok(())
    }

    fn adjust_file_maps(&mut self, kind: u32, fslot: usize, diff: i64) {
        let f = self.files.at_mut(fslot);
        let h = &self.header;
        let (field, total) = if kind == MAP_PRIVATE_SNAPSHOT {
            (&mut f.private_maps, &h.private_maps)
        } else {
            (&mut f.shared_writable_maps, &h.shared_writable_maps)
        };
        *field = (*field as i64 + diff).max(0) as u32;
        let _ = total.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
            Some(v.saturating_add_signed(diff))
        });
    }

    /// Frees map record `i` (its process died or exec'd).
    fn drop_map_record(&mut self, i: usize) {
        let m = *self.maps.at(i);
        *self.maps.at_mut(i) = MapRecord::default();
        self.adjust_file_maps(m.kind, m.file_slot as usize, -(m.count as i64));
    }

    /// True when `file` has a live shared writable mapping in the domain; records of
    /// processes that died are reclaimed on the way.
    pub fn has_shared_writable_map(&mut self, file: FileKey) -> bool {
        let Some(fslot) = self.find_file(file).map(FileSlot::index) else {
            return false;
        };
        if self.files.at(fslot).shared_writable_maps == 0 {
            return false;
        }
        for i in 0..self.maps.len() {
            let m = *self.maps.at(i);
            if m.pid != 0 && m.file_slot as usize == fslot && !crate::sys::process_alive(m.pid) {
                self.drop_map_record(i);
            }
        }
        self.files.at(fslot).shared_writable_maps > 0
    }

    /// Calls `each(pid)` for every live process with a private snapshot mapping of
    /// `file` overlapping `[off, end)`; records of dead processes are reclaimed.
    pub fn for_each_private_owner(
        &mut self,
        file: FileKey,
        off: u64,
        end: u64,
        mut each: impl FnMut(i32),
    ) {
        let Some(fslot) = self.find_file(file).map(FileSlot::index) else {
            return;
        };
        if self.files.at(fslot).private_maps == 0 {
            return;
        }
        for i in 0..self.maps.len() {
            let m = *self.maps.at(i);
            if m.pid == 0 || m.kind != MAP_PRIVATE_SNAPSHOT || m.file_slot as usize != fslot {
                continue;
            }
            if !crate::sys::process_alive(m.pid) {
                self.drop_map_record(i);
            } else if overlaps(m.lo, m.hi.saturating_sub(m.lo), off, end) {
                each(m.pid);
            }
        }
    }

    /// Frees the mapping records of processes that died (their mappings died with them);
    /// returns how many.
    pub fn reclaim_dead_maps(&mut self) -> usize {
        let mut freed = 0;
        for i in 0..self.maps.len() {
            let m = *self.maps.at(i);
            if m.pid != 0 && !crate::sys::process_alive(m.pid) {
                self.drop_map_record(i);
                freed += 1;
            }
        }
        freed
    }

    /// Drops every mapping record and the mailbox of `pid` (its mappings are gone: `exec`).
    pub fn drop_maps(&mut self, pid: i32) {
        for i in 0..self.maps.len() {
            if self.maps.at(i).pid == pid && pid != 0 {
                self.drop_map_record(i);
            }
        }
        for mb in self.mailboxes.iter() {
            if mb.owner_pid.load(Ordering::Relaxed) == pid as u32 {
                mb.owner_pid.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Pipe slots that have live segments.
    pub fn busy_pipes(&self) -> impl Iterator<Item = PipeSlot> + '_ {
        self.busy_slots().iter().map(|&s| PipeSlot::new(s as usize))
    }

    fn busy_slots(&self) -> &[u32] {
        let n = self.header.busy_pipes.load(Ordering::Relaxed) as usize;
        self.busy.prefix(n)
    }

    /// Claims a snapshot mailbox for `pid` (its own if it has one, else a free one or
    /// one of a dead process); returns its index.
    pub fn claim_mailbox(&mut self, pid: i32) -> Option<usize> {
        let boxes = &self.mailboxes;
        let i = boxes
            .iter()
            .position(|m| m.owner_pid.load(Ordering::Relaxed) == pid as u32)
            .or_else(|| {
                boxes.iter().position(|m| {
                    let owner = m.owner_pid.load(Ordering::Relaxed) as i32;
                    owner == 0 || !crate::sys::process_alive(owner)
                })
            })?;
        let mb = at(boxes, i);
        mb.owner_pid.store(pid as u32, Ordering::Relaxed);
        mb.requester.store(0, Ordering::Relaxed);
        mb.done_seq
            .store(mb.request_seq.load(Ordering::Relaxed), Ordering::Relaxed);
        Some(i)
    }
}

enum Probe {
    Found(usize),
    Free(usize),
    Full,
}

/// Open-addressing probe: `slot(i)` gives the key in slot `i` and whether it may be reused.
fn probe(key: FileKey, n: usize, mut slot: impl FnMut(usize) -> (FileKey, bool)) -> Probe {
    let home = key.home(n);
    let mut reusable = None;
    for k in 0..MAX_PROBE {
        let i = (home + k) % n;
        let (k_i, free) = slot(i);
        if k_i == key {
            return Probe::Found(i);
        }
        if k_i.is_empty() {
            return Probe::Free(reusable.unwrap_or(i));
        }
        if free && reusable.is_none() {
            reusable = Some(i);
        }
    }
    reusable.map_or(Probe::Full, Probe::Free)
}

/// Read-only probe for `key`.
fn find(key: FileKey, n: usize, slot: impl Fn(usize) -> FileKey) -> Option<usize> {
    match probe(key, n, |i| (slot(i), false)) {
        Probe::Found(i) => Some(i),
        _ => None,
    }
}

impl Tables<'_> {
    /// Recomputes everything derived from the pipe rings and mapping records: each file's
    /// live segment count and range, its mapping counts, the domain-wide live counts and
    /// the busy list. Run by whoever takes the lock over from a holder
    /// that died, which may have stopped anywhere inside an update; also drops what no
    /// valid update leaves behind (a ring longer than its capacity, a segment or mapping
    /// record of a file slot out of range or empty). Returns true when anything changed.
    pub fn repair(&mut self) -> bool {
        let before = self.derived_digest();
        for rec in self.files.iter_mut() {
            rec.live_segments = 0;
            rec.shared_writable_maps = 0;
            rec.private_maps = 0;
        }
        let (mut live, mut busy) = (0u64, 0usize);
        let mut dropped = false;
        for slot in 0..self.pipes.len() {
            let p = self.pipes.at_mut(slot);
            if p.key.is_empty() {
                continue;
            }
            if p.count as usize > SEGMENTS_PER_PIPE || p.head as usize >= SEGMENTS_PER_PIPE {
                (p.count, p.head) = (0, 0);
                dropped = true;
            }
            // Keep the valid segments, in order, from the head on.
            let mut kept = 0usize;
            for i in 0..p.count as usize {
                let s = *at(&p.segments, p.head as usize + i);
                let f = s.file_slot as usize;
                if f >= self.files.len() || self.files.at(f).key.is_empty() || s.len == 0 {
                    dropped = true;
                    continue;
                }
                *at_mut(&mut p.segments, p.head as usize + kept) = s;
                kept += 1;
                let rec = self.files.at_mut(f);
                let end = s.file_off.saturating_add(s.len);
                (rec.seg_lo, rec.seg_hi) = if rec.live_segments == 0 {
                    (s.file_off, end)
                } else {
                    (rec.seg_lo.min(s.file_off), rec.seg_hi.max(end))
                };
                rec.live_segments += 1;
            }
            p.count = kept as u32;
            live += kept as u64;
            if kept > 0 {
                *self.busy.at_mut(busy) = slot as u32;
                p.busy_pos = busy as u32;
                busy += 1;
            }
        }
        let (mut shared, mut private) = (0u64, 0u64);
        for m in self.maps.iter_mut() {
            if m.pid == 0 {
                continue;
            }
            let f = m.file_slot as usize;
            if f >= self.files.len() || self.files.at(f).key.is_empty() || m.count == 0 {
                *m = MapRecord::default();
                dropped = true;
                continue;
            }
            let rec = self.files.at_mut(f);
            if m.kind == MAP_PRIVATE_SNAPSHOT {
                rec.private_maps += m.count;
                private += u64::from(m.count);
            } else {
                rec.shared_writable_maps += m.count;
                shared += u64::from(m.count);
            }
        }
        let h = &self.header;
        h.live_segments.store(live, Ordering::SeqCst);
        h.shared_writable_maps.store(shared, Ordering::SeqCst);
        h.private_maps.store(private, Ordering::SeqCst);
        h.busy_pipes.store(busy as u32, Ordering::Relaxed);
        dropped || self.derived_digest() != before
    }

    /// A digest of the counts [`Tables::repair`] recomputes (not the files' segment
    /// ranges: between repairs they only ever grow, so a recomputed one is narrower).
    fn derived_digest(&self) -> u64 {
        let mut d = 0xcbf2_9ce4_8422_2325u64;
        let mut mix = |v: u64| d = (d ^ v).wrapping_mul(0x0100_0000_01b3);
        for f in self.files.iter().filter(|f| !f.key.is_empty()) {
            mix(u64::from(f.live_segments));
            mix(u64::from(f.shared_writable_maps));
            mix(u64::from(f.private_maps));
        }
        let h = &self.header;
        mix(h.live_segments.load(Ordering::Relaxed));
        mix(h.shared_writable_maps.load(Ordering::Relaxed));
        mix(h.private_maps.load(Ordering::Relaxed));
        let mut busy: u64 = 0;
        for &s in self.busy_slots() {
            busy = busy.wrapping_add(u64::from(s).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        }
        mix(busy);
        d
    }
}
