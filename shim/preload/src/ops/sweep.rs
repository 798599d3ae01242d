//! The sweep: finds records whose bytes have left their pipe, or whose pipe is gone
//! (every holder exited or was killed), and retires them, so that a domain that lives
//! for days stays as cheap as a fresh one. Bounded and amortised: it runs at most every
//! [`SWEEP_INTERVAL_NS`] from the mutation side's busy path (so after the last pipeline
//! of a domain is done, the first mutating call pays for one sweep and later ones take
//! the idle fast path again), and when a table has no room for a splice.
//!
//! A sweep runs in rounds of [`PIPES_PER_SWEEP`] busy pipes until it has looked at every
//! one. Under the lock, each is reached through a recorded holder and pruned exactly
//! (`FIONREAD`). Pipes no recorded holder reaches are looked for in one pass over
//! `/proc/*/fd`, without the lock; then, under the lock again, each is pruned through the
//! holder found, or retired when none holds it. A
//! record that took new bytes in between (a new pipe with a reused inode number) is
//! left alone.

use crate::ops::lifetime::prune_counted;
use crate::ops::{peers, settle};
use crate::state::pipe;
use splicecow_registry::bounded::{at, at_mut};
use splicecow_registry::{sys, FileKey, PipeSlot, Registry};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Least time between two sweeps started from the mutation side.
pub const SWEEP_INTERVAL_NS: u64 = 20_000_000;
/// Least time between two sweeps started because a table was full (a table truly full of
/// live records would otherwise make every splice pay for a sweep of all of them).
const FULL_SWEEP_INTERVAL_NS: u64 = 50_000_000;
/// Busy pipes one round of a sweep looks at (with one `/proc` pass for those no
/// recorded holder reaches).
pub const PIPES_PER_SWEEP: usize = 256;

/// Sweeps if the last sweep is [`SWEEP_INTERVAL_NS`] old.
pub fn maybe(reg: &Registry) {
    run_if_due(reg, SWEEP_INTERVAL_NS);
}

/// Sweeps now, however recent the last sweep.
pub fn now(reg: &Registry) {
    run(reg);
}

/// Sweeps because a table had no room, unless one just ran; true when it ran.
pub fn for_room(reg: &Registry) -> bool {
    run_if_due(reg, FULL_SWEEP_INTERVAL_NS)
}

fn run_if_due(reg: &Registry, interval: u64) -> bool {
    run_if_due_as(reg, interval, true)
}

/// Sweeps `reg`'s domain, another domain of the user, from a sweep of ours: without
/// looking at the user index again.
pub fn peer_if_due(reg: &Registry) {
    run_if_due_as(reg, SWEEP_INTERVAL_NS, false);
}

fn run_if_due_as(reg: &Registry, interval: u64, with_index: bool) -> bool {
    let last = &reg.header().last_sweep_ns;
    let now = sys::monotonic_ns();
    let then = last.load(Ordering::Relaxed);
    if now.saturating_sub(then) < interval
        || last
            .compare_exchange(then, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return false;
    }
    run(reg);
    if with_index {
        // After our own sweep (its scratch is free again): entries of the user index
        // that no longer hold, sweeping the other domains they name on the way.
        clean_index(reg);
    }
    true
}

/// Walks the whole user index once and removes every entry that no longer holds: the
/// domain is gone, or has no live segment of the file any more once swept (entries left
/// by a holder killed between its last retire and the removal, by a domain removed while
/// its segments were recorded, or by a domain whose processes all died). Run after each
/// sweep, so that stale entries cannot keep every process of the user off the idle
/// fast path.
pub fn clean_index(own: &Registry) {
    let Some(index) = own.index().filter(|i| i.any_live()) else {
        return;
    };
    index.for_each_live(|key, domain| {
        if domain == own.domain() {
            settle::lock(own).unpublish_if_dead(key);
            return;
        }
        let reached = peers::with(domain, index, |peer| {
            // Its records may be stale too (its processes are gone, nobody sweeps it).
            peer_if_due(peer);
            settle::lock(peer).unpublish_if_dead(key);
        });
        if reached == peers::Reached::Gone {
            index.remove(key, domain);
        }
    });
}

/// A pipe no recorded holder reaches, as it was when the sweep saw it.
#[derive(Debug, Clone, Copy, Default)]
struct Unreached {
    slot: Option<PipeSlot>,
    key: FileKey,
    bytes_in: u64,
}

/// One round's working memory, kept out of the stack of the thread that happens to
/// sweep (hooks run on stacks of any size).
struct Scratch {
    unreached: [Unreached; PIPES_PER_SWEEP],
    keys: [FileKey; PIPES_PER_SWEEP],
    found: [Option<(i32, i32)>; PIPES_PER_SWEEP],
}

/// [`Scratch`] with its owner flag: only the thread that set `busy` touches `scratch`.
struct ScratchCell {
    busy: AtomicBool,
    scratch: UnsafeCell<Scratch>,
}

// SAFETY: `scratch` is only accessed by the thread that won `busy` (see `run`).
unsafe impl Sync for ScratchCell {}

static SCRATCH: ScratchCell = ScratchCell {
    busy: AtomicBool::new(false),
    scratch: UnsafeCell::new(Scratch {
        unreached: [Unreached {
            slot: None,
            key: FileKey { dev: 0, ino: 0 },
            bytes_in: 0,
        }; PIPES_PER_SWEEP],
        keys: [FileKey { dev: 0, ino: 0 }; PIPES_PER_SWEEP],
        found: [None; PIPES_PER_SWEEP],
    }),
};

/// Registers the `fork` child handler: a sweep that another thread of the parent was
/// running does not run on in the child, whose scratch is free. Called once, from the
/// library constructor.
pub fn install() {
    // SAFETY: registering a plain extern "C" handler; this library is never unloaded.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
}

extern "C" fn after_fork_in_child() {
    SCRATCH.busy.store(false, Ordering::Release);
}

/// One sweep: rounds until every busy pipe was looked at once.
fn run(reg: &Registry) {
    if SCRATCH.busy.swap(true, Ordering::Acquire) {
        return;
    }
    // SAFETY: this thread won `busy`: nobody else uses the scratch until it is released
    // below (a signal handler on this thread that sweeps finds `busy` set and returns).
    let scratch = unsafe { &mut *SCRATCH.scratch.get() };
    reg.header().counters.sweeps.fetch_add(1, Ordering::Relaxed);
    // Mapping records of processes that died (a killed mapper cannot drop its own).
    settle::lock(reg).reclaim_dead_maps();
    let busy = reg.header().busy_pipes.load(Ordering::Relaxed) as usize;
    // At most as many rounds as a full pipe table of this registry needs.
    let max_rounds = (reg.capacity().pipes as usize).div_ceil(PIPES_PER_SWEEP);
    let mut looked = 0;
    for _ in 0..max_rounds {
        looked += round(reg, scratch);
        if looked >= busy {
            break;
        }
    }
    SCRATCH.busy.store(false, Ordering::Release);
}

/// One round over at most [`PIPES_PER_SWEEP`] busy pipes; returns how many it looked at.
fn round(reg: &Registry, scratch: &mut Scratch) -> usize {
    let mut n_unreached = 0;
    let looked;
    {
        let mut t = settle::lock(reg);
        let h = reg.header();
        let busy = h.busy_pipes.load(Ordering::Relaxed) as usize;
        let mut slots = [None; PIPES_PER_SWEEP];
        let first = h.sweep_cursor.load(Ordering::Relaxed) as usize % busy.max(1);
        let rotated = t.busy_pipes().skip(first).chain(t.busy_pipes().take(first));
        for (cell, slot) in slots.iter_mut().zip(rotated) {
            *cell = Some(slot);
        }
        looked = PIPES_PER_SWEEP.min(busy);
        h.sweep_cursor
            .store((first + looked) as u32, Ordering::Relaxed);
        for slot in slots.iter().flatten().copied() {
            if settle::in_another_call(&mut t, slot) {
                // Bytes are going in right now: alive, looked at by a later round.
                continue;
            }
            let rec = t.pipe(slot);
            let (key, holders, bytes_in) = (rec.key, rec.holders, rec.bytes_in);
            match holders
                .iter()
                .find_map(|h| pipe::open_via(h.pid, h.fd, key))
            {
                Some(fd) => {
                    if let Some(pending) = pipe::pending(fd) {
                        prune_counted(&mut t, slot, pending);
                    }
                    sys::close(fd);
                }
                None => {
                    *at_mut(&mut scratch.unreached, n_unreached) = Unreached {
                        slot: Some(slot),
                        key,
                        bytes_in,
                    };
                    *at_mut(&mut scratch.keys, n_unreached) = key;
                    *at_mut(&mut scratch.found, n_unreached) = None;
                    n_unreached += 1;
                }
            }
        }
    }
    if n_unreached == 0 {
        return looked;
    }
    pipe::find_holders(
        scratch.keys.get(..n_unreached).unwrap_or_default(),
        &mut scratch.found,
    );
    let mut t = settle::lock(reg);
    for i in 0..n_unreached {
        let u = *at(&scratch.unreached, i);
        let Some(slot) = u.slot else { continue };
        let (key, bytes_in, count) = {
            let rec = t.pipe(slot);
            (rec.key, rec.bytes_in, rec.count)
        };
        let changed = key != u.key || bytes_in != u.bytes_in || count == 0;
        if changed || settle::in_another_call(&mut t, slot) {
            continue;
        }
        match *at(&scratch.found, i) {
            Some((pid, fd)) => {
                t.add_holder(slot, pid, fd);
                if let Some(opened) = pipe::open_via(pid, fd, u.key) {
                    if let Some(pending) = pipe::pending(opened) {
                        prune_counted(&mut t, slot, pending);
                    }
                    sys::close(opened);
                }
            }
            None => {
                let c = t.counters();
                c.unreachable_pipes.fetch_add(1, Ordering::Relaxed);
                c.retired_stale
                    .fetch_add(u64::from(count), Ordering::Relaxed);
                t.retire_all(slot);
            }
        }
    }
    looked
}
