//! The settle: the one place that reaches a pipe holding in-flight segments, prunes it
//! exactly, and then settles it (moves its pending bytes out of the page cache by
//! draining them and writing the same bytes back, in order), reports it (detect mode) or
//! retires it (nobody holds it any more). Also the domain's lock as the operations take
//! it: whoever takes it over from a settler that died finishes that settle first.

use crate::state::fd::status_flags;
use crate::state::pipe;
use splicecow_registry::layout::{JOURNAL_BYTES, SEGMENTS_PER_PIPE};
use splicecow_registry::{lock, sys, FileKey, Guard, InterruptedSettle, PipeSlot, Registry};
use splicecow_registry::{Segment, SettleState, Tables};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Which of a pipe's segments matter.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// Those of `file` overlapping bytes `[off, end)` (a mutation's range).
    Overlapping {
        /// The file about to change.
        file: FileKey,
        /// First byte that changes.
        off: u64,
        /// One past the last (`u64::MAX`: to the end).
        end: u64,
    },
    /// All of them (the pipe's bytes must become private whatever they are).
    Whole,
}

/// What to do with a pipe whose pending bytes still hold segments in scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Make its bytes private (protect mode).
    Settle,
    /// Report the segments, leave the bytes (detect mode).
    Report,
}

/// What [`handle`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No process holds the pipe any more: nobody can read its bytes; retired.
    Unreachable,
    /// A reader already consumed every byte in scope: nothing to do.
    Consumed,
    /// The pipe was settled; `bytes` were copied.
    Settled {
        /// Bytes drained and written back.
        bytes: u64,
    },
    /// Segments in scope were reported; `new` of them for the first time.
    Reported {
        /// Segments reported now (others had been reported before).
        new: usize,
    },
    /// Another thread's kernel call is putting bytes into the pipe: nothing was done;
    /// let go of the lock ([`let_call_finish`]) and handle the pipe again.
    InAnotherCall,
}

impl Outcome {
    /// True when the pipe held bytes in scope (a real conflict).
    pub fn conflicted(self) -> bool {
        matches!(self, Outcome::Settled { .. } | Outcome::Reported { .. })
    }
}

/// A segment detect mode reports, kept until the lock is released.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conflict {
    /// The segment as recorded.
    pub segment: Segment,
    /// Inode of the pipe holding it.
    pub pipe_ino: u64,
}

/// Most conflicts collected under one lock hold: one pipe's worth (the caller reports
/// them after each pipe that had any).
pub const MAX_CONFLICTS: usize = SEGMENTS_PER_PIPE;

/// Conflicts collected under the lock, reported after it is released (formatting
/// allocates and reads `/proc`).
pub struct Conflicts {
    items: [Conflict; MAX_CONFLICTS],
    n: usize,
}

impl Default for Conflicts {
    fn default() -> Conflicts {
        Conflicts {
            items: [Conflict::default(); MAX_CONFLICTS],
            n: 0,
        }
    }
}

impl Conflicts {
    /// The collected conflicts.
    pub fn as_slice(&self) -> &[Conflict] {
        self.items.get(..self.n).unwrap_or_default()
    }

    /// Forgets them (after they were reported).
    pub fn clear(&mut self) {
        self.n = 0;
    }

    fn push(&mut self, c: Conflict) -> bool {
        let Some(slot) = self.items.get_mut(self.n) else {
            return false;
        };
        *slot = c;
        self.n += 1;
        true
    }
}

/// True when pipe `slot` is in the kernel call of another live thread (a file→pipe splice
/// runs with the lock free, see `transfer::file_to_pipe`): its record and its bytes must
/// be left alone until that call ends, so the caller lets go of the lock and comes back.
/// The marker of a thread that died in its call is cleared here; its intent stays as
/// recorded before the call (it covers every byte the call could have moved).
pub fn in_another_call(t: &mut Tables, slot: PipeSlot) -> bool {
    let Some(owner) = t.call_owner(slot) else {
        return false;
    };
    if owner != lock::owner_id() && lock::owner_alive(owner) {
        return true;
    }
    t.set_call_owner(slot, 0);
    false
}

/// Lets another thread's kernel call on a pipe finish (called with the lock released).
pub fn let_call_finish() {
    // SAFETY: sched_yield takes no arguments.
    unsafe { libc::syscall(libc::SYS_sched_yield) };
}

/// Takes the lock once none of the pipes `keys` name is in another thread's kernel call
/// (work on their records or bytes must not interleave with that call).
pub fn lock_quiet<'r>(reg: &'r Registry, keys: &[FileKey]) -> Guard<'r> {
    loop {
        let mut t = lock(reg);
        let busy = keys
            .iter()
            .any(|&k| t.find_pipe(k).is_some_and(|s| in_another_call(&mut t, s)));
        if !busy {
            return t;
        }
        drop(t);
        let_call_finish();
    }
}

/// Takes the domain's table lock; when the previous holder died inside a settle, finishes
/// that settle first (no drained byte is lost, and the pipe's other writers wait).
pub fn lock(reg: &Registry) -> Guard<'_> {
    let (mut t, interrupted) = reg.lock();
    if let Some(i) = interrupted {
        finish_interrupted(&mut t, i);
    }
    t
}

/// Reaches pipe `slot`, prunes what its readers consumed, and applies `action` when
/// segments in `scope` remain; a pipe nobody holds is retired. Detect-mode conflicts go
/// to `found`, which must be empty (it holds one pipe's worth).
pub fn handle(
    t: &mut Tables,
    slot: PipeSlot,
    scope: Scope,
    action: Action,
    found: &mut Conflicts,
) -> Outcome {
    if in_another_call(t, slot) {
        return Outcome::InAnotherCall;
    }
    let Some(fd) = open_pipe(t, slot) else {
        retire_unreachable(t, slot);
        return Outcome::Unreachable;
    };
    if let Some(pending) = pipe::pending(fd) {
        t.prune(slot, pending);
    }
    let in_scope = match scope {
        Scope::Overlapping { file, off, end } => t.pipe_overlaps(slot, file, off, end),
        Scope::Whole => t.pipe(slot).count > 0,
    };
    let outcome = match (in_scope, action) {
        (false, _) => Outcome::Consumed,
        (true, Action::Settle) => Outcome::Settled {
            bytes: settle_open(t, slot, fd),
        },
        (true, Action::Report) => Outcome::Reported {
            new: mark_reported(t, slot, scope, found),
        },
    };
    sys::close(fd);
    outcome
}

/// Marks the unreported segments of `slot` in `scope` reported, collecting them.
fn mark_reported(t: &mut Tables, slot: PipeSlot, scope: Scope, found: &mut Conflicts) -> usize {
    let Scope::Overlapping { file, off, end } = scope else {
        return 0;
    };
    let pipe_ino = t.pipe(slot).key.ino;
    let mut new = 0;
    t.report_overlapping(slot, file, off, end, |segment| {
        if found.push(Conflict { segment, pipe_ino }) {
            new += 1;
        }
    });
    new
}

/// Opens pipe `slot` through a recorded holder, else a scan of `/proc/*/fd`.
fn open_pipe(t: &Tables, slot: PipeSlot) -> Option<i32> {
    let rec = t.pipe(slot);
    let key = rec.key;
    let holders = rec.holders;
    holders
        .iter()
        .find_map(|h| pipe::open_via(h.pid, h.fd, key))
        .or_else(|| pipe::open_by_scan(key))
}

/// Retires pipe `slot`, which no process holds any more: nobody can read its bytes.
fn retire_unreachable(t: &mut Tables, slot: PipeSlot) {
    t.counters()
        .unreachable_pipes
        .fetch_add(1, Ordering::Relaxed);
    t.retire_all(slot);
}

/// Settles pipe `slot` through `fd`, already open on it (read-write, non-blocking), and
/// retires its segments; returns the bytes copied.
///
/// The drained bytes and the progress of the write-back live in the registry's settle
/// journal, so that if this process dies in between, whoever takes the table lock over
/// finishes the settle ([`finish_interrupted`]) and no byte is lost. A pipe larger than
/// the journal's 1 MiB (only root can grow one that far) is drained into a private
/// buffer instead, without that safety net.
fn settle_open(t: &mut Tables, slot: PipeSlot, fd: i32) -> u64 {
    let cap = pipe::capacity(fd);
    let private = if cap > JOURNAL_BYTES {
        private_buffer(cap)
    } else {
        None
    };
    t.journal().begin(slot, private.is_some());
    let (buf, cap) = match private {
        Some(b) => (b, cap),
        None => (t.journal().bytes.as_mut_ptr(), JOURNAL_BYTES),
    };
    let copied = drain_and_refill(t, slot, fd, buf, cap);
    finish(t, slot, copied);
    copied
}

/// Counts a finished settle and retires the pipe's segments (its bytes are private now).
fn finish(t: &mut Tables, slot: PipeSlot, copied: u64) {
    t.journal().finish();
    let c = t.counters();
    c.settles.fetch_add(1, Ordering::Relaxed);
    c.bytes_copied.fetch_add(copied, Ordering::Relaxed);
    t.retire_all(slot);
}

/// Finishes a settle whose settler died holding the table lock.
fn finish_interrupted(t: &mut Tables, i: InterruptedSettle) {
    let fd = match i.state {
        SettleState::Draining | SettleState::Refilling => open_pipe(t, i.pipe),
        SettleState::Private | SettleState::Idle => None,
    };
    match fd {
        Some(fd) => {
            let buf = t.journal().bytes.as_mut_ptr();
            let copied = drain_and_refill(t, i.pipe, fd, buf, JOURNAL_BYTES);
            finish(t, i.pipe, copied);
            sys::close(fd);
        }
        None => {
            // Nobody holds the pipe any more (nobody can read those bytes), or they
            // were in the dead settler's private buffer.
            t.journal().finish();
            retire_unreachable(t, i.pipe);
        }
    }
}

/// Drains pipe `fd` (pipe `slot` in the registry) into `buf` (`cap` bytes) and writes
/// the bytes back, recording every step in the journal and resuming from wherever an
/// earlier, interrupted run stopped. Returns the bytes moved.
///
/// Packet-mode pipes keep their boundaries. A read stops at the end of a packet, so a
/// short read with more bytes pending marks one; each chunk read is then some
/// non-packet (spliced) bytes followed by one packet. The chunk's leading bytes that the
/// registry knows were spliced are written back without `O_DIRECT`, the rest as one
/// packet.
fn drain_and_refill(t: &mut Tables, slot: PipeSlot, fd: i32, buf: *mut u8, cap: usize) -> u64 {
    let state = t.journal().state();
    if state != SettleState::Refilling {
        let mut total = t.journal().drained().min(cap);
        while total < cap {
            // SAFETY: buf has `cap` writable bytes; we read into its unused tail.
            let r = unsafe { libc::syscall(libc::SYS_read, fd, buf.add(total), cap - total) };
            if r <= 0 {
                break;
            }
            t.journal().add_drained(r as usize);
            total += r as usize;
        }
        t.pause(splicecow_registry::pause::Point::Settle);
        let n = t.journal().chunks();
        let base = t.pipe(slot).bytes_in.saturating_sub(total as u64);
        let mut at = 0u64;
        for i in 0..n {
            let len = t.journal().chunk(i).len as u64;
            let plain = if n > 1 {
                spliced_prefix(t, slot, base + at, len)
            } else {
                len
            };
            t.journal().set_plain(i, plain as usize);
            at += len;
        }
        t.journal().start_refill();
    }
    let flags = status_flags(fd);
    let j = t.journal();
    let n = j.chunks();
    let (first, _) = j.refill_progress();
    let mut at: usize = (0..first).map(|i| j.chunk(i).len).sum();
    for i in first..n {
        let chunk = j.chunk(i);
        for (end, direct) in [(chunk.plain, false), (chunk.len, true)] {
            let (_, done) = j.refill_progress();
            if done < end {
                set_direct(fd, flags, direct);
                // SAFETY: [at, at + len) lies inside the bytes drained into buf.
                write_all(fd, unsafe { buf.add(at) }, done, end, |d| {
                    j.wrote_in_chunk(d)
                });
            }
        }
        j.wrote_chunk(i);
        at += chunk.len;
    }
    j.drained() as u64
}

/// How many of the `len` drained bytes at stream position `lo` of pipe `slot` were
/// spliced (the registry's segments say which).
fn spliced_prefix(t: &Tables, slot: PipeSlot, lo: u64, len: u64) -> u64 {
    let hi = lo + len;
    let end = t
        .segments(slot)
        .filter(|s| s.stream_pos < hi && lo < s.stream_pos.saturating_add(s.len))
        .map(|s| s.stream_pos.saturating_add(s.len).min(hi))
        .max()
        .unwrap_or(lo);
    end - lo
}

/// Turns packet mode (`O_DIRECT`) of our own descriptor on or off.
fn set_direct(fd: i32, flags: i32, on: bool) {
    let fl = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: F_SETFL on our own private open file description.
    unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFL, fl) };
}

/// Writes bytes `[done, to)` of the chunk at `p` to the non-blocking pipe `fd`, waiting
/// for room if another writer filled the pipe meanwhile, and tells `progress` after every
/// write (a settle finished by someone else resumes there). Never gives up: giving up
/// would lose bytes.
fn write_all(fd: i32, p: *const u8, mut done: usize, to: usize, mut progress: impl FnMut(usize)) {
    while done < to {
        // SAFETY: p[done..to] is readable (see caller).
        let r = unsafe { libc::syscall(libc::SYS_write, fd, p.add(done), to - done) };
        if r > 0 {
            done += r as usize;
            progress(done);
        } else if r < 0 && sys::errno() == libc::EAGAIN {
            pipe::wait(fd, libc::POLLOUT);
        } else if !(r < 0 && sys::errno() == libc::EINTR) {
            return;
        }
    }
}

/// This process's buffer for pipes larger than the journal, at least `cap` bytes (grown
/// on demand, never freed).
fn private_buffer(cap: usize) -> Option<*mut u8> {
    static BUF: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
    static LEN: AtomicUsize = AtomicUsize::new(0);
    let have = LEN.load(Ordering::Relaxed);
    if have >= cap {
        return Some(BUF.load(Ordering::Relaxed));
    }
    let p = sys::mmap_rw(cap, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1).ok()?;
    let old = BUF.swap(p, Ordering::Relaxed);
    if !old.is_null() {
        // SAFETY: the old buffer is only used under the table lock, which we hold.
        unsafe { sys::munmap(old, have) };
    }
    LEN.store(cap, Ordering::Relaxed);
    Some(p)
}
