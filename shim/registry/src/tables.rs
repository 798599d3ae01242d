//! Operations on the file and pipe tables. Everything here runs with the table lock held
//! (see [`crate::Registry::lock`]) and treats the shared bytes as untrusted: indices are
//! bounds-checked, so a corrupt registry gives wrong answers, never a crash.

use crate::layout::*;
use crate::pause::{self, Point};
use std::sync::atomic::Ordering;

/// Exclusive view of the tables while the lock is held.
pub struct Tables<'a> {
    pub(crate) layout: &'a mut Layout,
}

/// Why a segment could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// No free file record.
    Files,
    /// No free pipe record.
    Pipes,
    /// The pipe's segment ring is full even after merging.
    Segments,
}

/// A segment as returned by lookups, with the keys resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Pipe slot that holds it.
    pub pipe_slot: usize,
    /// Index in the pipe's ring order (0 = oldest).
    pub index: usize,
    /// The segment itself.
    pub segment: Segment,
}

fn overlaps(a_off: u64, a_len: u64, b_off: u64, b_end: u64) -> bool {
    a_len > 0 && a_off < b_end && b_off < a_off.saturating_add(a_len)
}

impl Tables<'_> {
    /// Finds the slot of `key` in the file table; creates it when `create`.
    pub fn file_slot(&mut self, key: FileKey, create: bool) -> Result<Option<usize>, Full> {
        let h = &self.layout.header;
        let files = &mut self.layout.files;
        let found = probe(key, MAX_FILES, |i| {
            (
                files[i].key,
                files[i].live_segments == 0
                    && files[i].shared_writable_maps == 0
                    && files[i].private_maps == 0,
            )
        });
        match found {
            Probe::Found(i) => Ok(Some(i)),
            _ if !create => Ok(None),
            Probe::Free(i) => {
                if files[i].key.is_empty() {
                    h.files_in_use.fetch_add(1, Ordering::Relaxed);
                }
                files[i] = FileRecord {
                    key,
                    ..Default::default()
                };
                Ok(Some(i))
            }
            Probe::Full => Err(Full::Files),
        }
    }

    /// Finds the slot of pipe `key`; creates it when `create`.
    pub fn pipe_slot(&mut self, key: FileKey, create: bool) -> Result<Option<usize>, Full> {
        let h = &self.layout.header;
        let pipes = &mut self.layout.pipes;
        let found = probe(key, MAX_PIPES, |i| (pipes[i].key, pipes[i].count == 0));
        match found {
            Probe::Found(i) => Ok(Some(i)),
            _ if !create => Ok(None),
            Probe::Free(i) => {
                if pipes[i].key.is_empty() {
                    h.pipes_in_use.fetch_add(1, Ordering::Relaxed);
                }
                let p = &mut pipes[i];
                p.key = key;
                p.bytes_in = 0;
                p.head = 0;
                p.count = 0;
                p.holders = Default::default();
                Ok(Some(i))
            }
            Probe::Full => Err(Full::Pipes),
        }
    }

    /// The settle journal.
    pub fn journal(&mut self) -> &mut SettleJournal {
        &mut self.layout.journal
    }

    /// The domain's counters.
    pub fn counters(&self) -> &Counters {
        &self.layout.header.counters
    }

    /// The record of pipe slot `slot`.
    pub fn pipe(&self, slot: usize) -> &PipeRecord {
        &self.layout.pipes[slot % MAX_PIPES]
    }

    /// The record of file slot `slot`.
    pub fn file(&self, slot: usize) -> &FileRecord {
        &self.layout.files[slot % MAX_FILES]
    }

    /// Remembers that `pid` holds the pipe as `fd` (most recent first).
    pub fn add_holder(&mut self, slot: usize, pid: i32, fd: i32) {
        let holders = &mut self.layout.pipes[slot % MAX_PIPES].holders;
        let new = Holder { pid, fd };
        if holders[0] == new {
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
            unsafe { std::ptr::write_volatile(&mut holders[i], h) };
            if i == 0 {
                pause::at(Point::Holder);
            }
        }
    }

    /// Segments of pipe `slot`, oldest first.
    pub fn segments(&self, slot: usize) -> impl Iterator<Item = Segment> + '_ {
        let p = self.pipe(slot);
        let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
        (0..count).map(move |i| p.segments[(p.head as usize + i) % SEGMENTS_PER_PIPE])
    }

    /// Appends a segment of `len` bytes of file `file` at `file_off` to pipe `slot`, at the
    /// pipe's current end of stream, merging with the newest segment when contiguous.
    /// This is the intent recorded before the kernel call; [`Tables::commit`] then trims
    /// it to what the call really moved and advances the stream end.
    pub fn push_segment(
        &mut self,
        slot: usize,
        file: FileKey,
        file_off: u64,
        len: u64,
        splicer_pid: i32,
    ) -> Result<(), Full> {
        let stream_pos = self.pipe(slot).bytes_in;
        self.push_at(slot, file, file_off, len, stream_pos, splicer_pid)
    }

    fn push_at(
        &mut self,
        slot: usize,
        file: FileKey,
        file_off: u64,
        len: u64,
        stream_pos: u64,
        splicer_pid: i32,
    ) -> Result<(), Full> {
        if len == 0 {
            return Ok(());
        }
        let fslot = self.file_slot(file, true)?.ok_or(Full::Files)?;
        let now = crate::sys::realtime_ns();
        let p = &mut self.layout.pipes[slot % MAX_PIPES];
        let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
        if count > 0 {
            let last = &mut p.segments[(p.head as usize + count - 1) % SEGMENTS_PER_PIPE];
            if last.file_slot as usize == fslot
                && last.splicer_pid == splicer_pid
                && last.file_off.wrapping_add(last.len) == file_off
                && last.stream_pos.wrapping_add(last.len) == stream_pos
                && last.reported == 0
            {
                last.len += len;
                let f = &mut self.layout.files[fslot];
                f.seg_hi = f.seg_hi.max(file_off.saturating_add(len));
                return Ok(());
            }
        }
        if count >= SEGMENTS_PER_PIPE {
            return Err(Full::Segments);
        }
        p.segments[(p.head as usize + count) % SEGMENTS_PER_PIPE] = Segment {
            file_slot: fslot as u32,
            splicer_pid,
            file_off,
            len,
            stream_pos,
            created_ns: now,
            reported: 0,
            reserved: 0,
        };
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        p.count = count as u32 + 1;
        pause::at(Point::Record);
        self.update_busy(slot);
        let f = &mut self.layout.files[fslot];
        let end = file_off.saturating_add(len);
        (f.seg_lo, f.seg_hi) = if f.live_segments == 0 {
            (file_off, end)
        } else {
            (f.seg_lo.min(file_off), f.seg_hi.max(end))
        };
        f.live_segments += 1;
        self.layout
            .header
            .live_segments
            .fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// After a kernel call moved `moved` bytes into pipe `slot` (whose intent segments were
    /// pushed before the call): trims the intent to what really happened and advances the
    /// stream end. Also serves writes of bytes that carry no segment (`write` to a pipe).
    pub fn commit(&mut self, slot: usize, moved: u64) {
        let end = self.pipe(slot).bytes_in.wrapping_add(moved);
        self.truncate_stream(slot, end);
        self.layout.pipes[slot % MAX_PIPES].bytes_in = end;
    }

    /// Drops or trims segments that lie at or beyond stream position `end`.
    fn truncate_stream(&mut self, slot: usize, end: u64) {
        loop {
            let p = &mut self.layout.pipes[slot % MAX_PIPES];
            let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
            if count == 0 {
                self.update_busy(slot);
                return;
            }
            let last = &mut p.segments[(p.head as usize + count - 1) % SEGMENTS_PER_PIPE];
            if last.stream_pos >= end {
                let fslot = last.file_slot as usize;
                p.count = count as u32 - 1;
                pause::at(Point::Commit);
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
    pub fn prune(&mut self, slot: usize, pending: u64) {
        let p = &self.layout.pipes[slot % MAX_PIPES];
        if pending == 0 {
            self.retire_all(slot);
            return;
        }
        let consumed = p.bytes_in.saturating_sub(pending);
        self.retire_before(slot, consumed);
    }

    /// Retires every segment before stream position `pos`, trimming one that straddles it.
    pub fn retire_before(&mut self, slot: usize, pos: u64) {
        loop {
            let p = &mut self.layout.pipes[slot % MAX_PIPES];
            let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
            if count == 0 {
                self.update_busy(slot);
                return;
            }
            let first = &mut p.segments[p.head as usize % SEGMENTS_PER_PIPE];
            let end = first.stream_pos.saturating_add(first.len);
            if end <= pos {
                let fslot = first.file_slot as usize;
                p.head = ((p.head as usize + 1) % SEGMENTS_PER_PIPE) as u32;
                p.count = count as u32 - 1;
                pause::at(Point::Retire);
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
    pub fn retire_all(&mut self, slot: usize) {
        let p = &mut self.layout.pipes[slot % MAX_PIPES];
        let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
        let head = p.head as usize;
        p.head = 0;
        p.count = 0;
        if count > 0 {
            pause::at(Point::Retire);
        }
        for i in 0..count {
            let fslot = self.layout.pipes[slot % MAX_PIPES].segments
                [(head + i) % SEGMENTS_PER_PIPE]
                .file_slot;
            self.release_file_ref(fslot as usize);
        }
        self.update_busy(slot);
    }

    /// Keeps pipe `slot`'s membership in the busy list in line with its segment count.
    fn update_busy(&mut self, slot: usize) {
        let slot = slot % MAX_PIPES;
        let l = &mut *self.layout;
        let n = (l.header.busy_pipes.load(Ordering::Relaxed) as usize).min(MAX_PIPES);
        let pos = l.pipes[slot].busy_pos as usize;
        let member = pos < n && l.busy[pos] as usize == slot;
        let busy = l.pipes[slot].count > 0;
        if busy && !member && n < MAX_PIPES {
            l.busy[n] = slot as u32;
            l.pipes[slot].busy_pos = n as u32;
            l.header.busy_pipes.store(n as u32 + 1, Ordering::Relaxed);
        } else if !busy && member {
            let last = l.busy[n - 1] as usize % MAX_PIPES;
            l.busy[pos] = last as u32;
            l.pipes[last].busy_pos = pos as u32;
            l.header.busy_pipes.store(n as u32 - 1, Ordering::Relaxed);
        }
    }

    fn release_file_ref(&mut self, fslot: usize) {
        let f = &mut self.layout.files[fslot % MAX_FILES];
        f.live_segments = f.live_segments.saturating_sub(1);
        let live = &self.layout.header.live_segments;
        let _ = live.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
            Some(v.saturating_sub(1))
        });
    }

    /// Copies the segments covering stream range `[from, from + n)` of pipe `src` to the
    /// end of pipe `dst` (for `tee` and pipe→pipe `splice`), as pushed intents: the caller
    /// then calls [`Tables::commit`] on `dst` with the bytes really moved.
    pub fn carry(&mut self, src: usize, from: u64, n: u64, dst: usize) -> Result<(), Full> {
        let to = from.saturating_add(n);
        let base = self.pipe(dst).bytes_in;
        let mut copy = [Segment::default(); SEGMENTS_PER_PIPE];
        let mut count = 0;
        for s in self.segments(src) {
            copy[count] = s;
            count += 1;
        }
        for s in &copy[..count] {
            let lo = s.stream_pos.max(from);
            let hi = s.stream_pos.saturating_add(s.len).min(to);
            if lo >= hi {
                continue;
            }
            let key = self.file(s.file_slot as usize).key;
            let file_off = s.file_off + (lo - s.stream_pos);
            self.push_at(
                dst,
                key,
                file_off,
                hi - lo,
                base + (lo - from),
                s.splicer_pid,
            )?;
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
        let Some(fslot) = find(file, MAX_FILES, |i| self.layout.files[i].key) else {
            return;
        };
        let f = &self.layout.files[fslot];
        if f.live_segments == 0 || !overlaps(f.seg_lo, f.seg_hi.saturating_sub(f.seg_lo), off, end)
        {
            return;
        }
        for &pipe_slot in self.busy_slots() {
            let pipe_slot = pipe_slot as usize % MAX_PIPES;
            let p = &self.layout.pipes[pipe_slot];
            let count = (p.count as usize).min(SEGMENTS_PER_PIPE);
            for index in 0..count {
                let s = p.segments[(p.head as usize + index) % SEGMENTS_PER_PIPE];
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
    pub fn pipe_overlaps(&self, slot: usize, file: FileKey, off: u64, end: u64) -> bool {
        let Some(fslot) = find(file, MAX_FILES, |i| self.layout.files[i].key) else {
            return false;
        };
        self.segments(slot)
            .any(|s| s.file_slot as usize == fslot && overlaps(s.file_off, s.len, off, end))
    }

    /// Marks a segment (found by [`Tables::overlapping`]) as reported; false if it already was.
    pub fn mark_reported(&mut self, info: &SegmentInfo) -> bool {
        let p = &mut self.layout.pipes[info.pipe_slot % MAX_PIPES];
        let s = &mut p.segments[(p.head as usize + info.index) % SEGMENTS_PER_PIPE];
        if s.reported != 0 {
            return false;
        }
        s.reported = 1;
        true
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
        let Some(fslot) = self.file_slot(file, delta > 0)? else {
            return Ok(());
        };
        let maps = &mut self.layout.maps;
        let found = maps
            .iter()
            .position(|m| m.pid == pid && m.kind == kind && m.file_slot as usize == fslot);
        let i = match found {
            Some(i) => i,
            None if delta > 0 => maps.iter().position(|m| m.pid == 0).ok_or(Full::Files)?,
            None => return Ok(()),
        };
        let old = if found.is_some() {
            maps[i]
        } else {
            MapRecord {
                lo: u64::MAX,
                ..MapRecord::default()
            }
        };
        let count = old.count.saturating_add_signed(delta);
        maps[i] = if count == 0 {
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
        let f = &mut self.layout.files[fslot % MAX_FILES];
        let h = &self.layout.header;
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
        let m = self.layout.maps[i];
        self.layout.maps[i] = MapRecord::default();
        self.adjust_file_maps(m.kind, m.file_slot as usize, -(m.count as i64));
    }

    /// True when `file` has a live shared writable mapping in the domain; records of
    /// processes that died are reclaimed on the way.
    pub fn has_shared_writable_map(&mut self, file: FileKey) -> bool {
        let Some(fslot) = find(file, MAX_FILES, |i| self.layout.files[i].key) else {
            return false;
        };
        if self.layout.files[fslot].shared_writable_maps == 0 {
            return false;
        }
        for i in 0..MAX_MAPS {
            let m = self.layout.maps[i];
            if m.pid != 0 && m.file_slot as usize == fslot && !crate::sys::process_alive(m.pid) {
                self.drop_map_record(i);
            }
        }
        self.layout.files[fslot].shared_writable_maps > 0
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
        let Some(fslot) = find(file, MAX_FILES, |i| self.layout.files[i].key) else {
            return;
        };
        if self.layout.files[fslot].private_maps == 0 {
            return;
        }
        for i in 0..MAX_MAPS {
            let m = self.layout.maps[i];
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

    /// Drops every mapping record and the mailbox of `pid` (its mappings are gone: `exec`).
    pub fn drop_maps(&mut self, pid: i32) {
        for i in 0..MAX_MAPS {
            if self.layout.maps[i].pid == pid && pid != 0 {
                self.drop_map_record(i);
            }
        }
        for mb in self.layout.mailboxes.iter() {
            if mb.owner_pid.load(Ordering::Relaxed) == pid as u32 {
                mb.owner_pid.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Pipe slots that have live segments.
    pub fn busy_pipes(&self) -> impl Iterator<Item = usize> + '_ {
        self.busy_slots().iter().map(|&s| s as usize % MAX_PIPES)
    }

    fn busy_slots(&self) -> &[u32] {
        let n = self.layout.header.busy_pipes.load(Ordering::Relaxed) as usize;
        &self.layout.busy[..n.min(MAX_PIPES)]
    }

    /// Claims a snapshot mailbox for `pid` (its own if it has one, else a free one or
    /// one of a dead process); returns its index.
    pub fn claim_mailbox(&mut self, pid: i32) -> Option<usize> {
        let boxes = &self.layout.mailboxes;
        let i = boxes
            .iter()
            .position(|m| m.owner_pid.load(Ordering::Relaxed) == pid as u32)
            .or_else(|| {
                boxes.iter().position(|m| {
                    let owner = m.owner_pid.load(Ordering::Relaxed) as i32;
                    owner == 0 || !crate::sys::process_alive(owner)
                })
            })?;
        let mb = &boxes[i];
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
    /// live segment count and range, its mapping counts, the domain-wide live counts, the
    /// busy list and the records in use. Run by whoever takes the lock over from a holder
    /// that died, which may have stopped anywhere inside an update; also drops what no
    /// valid update leaves behind (a ring longer than its capacity, a segment or mapping
    /// record of a file slot out of range or empty). Returns true when anything changed.
    pub fn repair(&mut self) -> bool {
        let before = self.derived_digest();
        let l = &mut *self.layout;
        for rec in l.files.iter_mut() {
            rec.live_segments = 0;
            rec.shared_writable_maps = 0;
            rec.private_maps = 0;
        }
        let (mut live, mut busy, mut pipes_in_use) = (0u64, 0usize, 0u32);
        let mut dropped = false;
        for slot in 0..MAX_PIPES {
            let p = &mut l.pipes[slot];
            if p.key.is_empty() {
                continue;
            }
            pipes_in_use += 1;
            if p.count as usize > SEGMENTS_PER_PIPE || p.head as usize >= SEGMENTS_PER_PIPE {
                (p.count, p.head) = (0, 0);
                dropped = true;
            }
            // Keep the valid segments, in order, from the head on.
            let mut kept = 0usize;
            for i in 0..p.count as usize {
                let s = p.segments[(p.head as usize + i) % SEGMENTS_PER_PIPE];
                let f = s.file_slot as usize;
                if f >= MAX_FILES || l.files[f].key.is_empty() || s.len == 0 {
                    dropped = true;
                    continue;
                }
                p.segments[(p.head as usize + kept) % SEGMENTS_PER_PIPE] = s;
                kept += 1;
                let rec = &mut l.files[f];
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
                l.busy[busy] = slot as u32;
                p.busy_pos = busy as u32;
                busy += 1;
            }
        }
        let (mut shared, mut private) = (0u64, 0u64);
        for m in l.maps.iter_mut() {
            if m.pid == 0 {
                continue;
            }
            let f = m.file_slot as usize;
            if f >= MAX_FILES || l.files[f].key.is_empty() || m.count == 0 {
                *m = MapRecord::default();
                dropped = true;
                continue;
            }
            let rec = &mut l.files[f];
            if m.kind == MAP_PRIVATE_SNAPSHOT {
                rec.private_maps += m.count;
                private += u64::from(m.count);
            } else {
                rec.shared_writable_maps += m.count;
                shared += u64::from(m.count);
            }
        }
        let files_in_use = l.files.iter().filter(|f| !f.key.is_empty()).count() as u32;
        let h = &l.header;
        h.live_segments.store(live, Ordering::SeqCst);
        h.shared_writable_maps.store(shared, Ordering::SeqCst);
        h.private_maps.store(private, Ordering::SeqCst);
        h.busy_pipes.store(busy as u32, Ordering::Relaxed);
        h.pipes_in_use.store(pipes_in_use, Ordering::Relaxed);
        h.files_in_use.store(files_in_use, Ordering::Relaxed);
        dropped || self.derived_digest() != before
    }

    /// A digest of the counts [`Tables::repair`] recomputes (not the files' segment
    /// ranges: between repairs they only ever grow, so a recomputed one is narrower).
    fn derived_digest(&self) -> u64 {
        let l = &*self.layout;
        let mut d = 0xcbf2_9ce4_8422_2325u64;
        let mut mix = |v: u64| d = (d ^ v).wrapping_mul(0x0100_0000_01b3);
        for f in l.files.iter().filter(|f| !f.key.is_empty()) {
            mix(u64::from(f.live_segments));
            mix(u64::from(f.shared_writable_maps));
            mix(u64::from(f.private_maps));
        }
        let h = &l.header;
        mix(h.live_segments.load(Ordering::Relaxed));
        mix(h.shared_writable_maps.load(Ordering::Relaxed));
        mix(h.private_maps.load(Ordering::Relaxed));
        mix(u64::from(h.pipes_in_use.load(Ordering::Relaxed)));
        mix(u64::from(h.files_in_use.load(Ordering::Relaxed)));
        let mut busy: u64 = 0;
        for &s in self.busy_slots() {
            busy = busy.wrapping_add(u64::from(s).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        }
        mix(busy);
        d
    }
}
