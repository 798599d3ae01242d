//! The sweep: finds records whose bytes have left their pipe, or whose pipe is gone
//! (every holder exited or was killed), and retires them, so that a domain that lives
//! for days stays as cheap as a fresh one. Bounded and amortised: it runs at most every
//! [`SWEEP_INTERVAL_NS`] from the mutation side's busy path (so after the last pipeline
//! of a domain is done, the first mutating call pays for one sweep and later ones take
//! the idle fast path again), and when a table has no room for a splice.
//!
//! Under the lock, each busy pipe (at most [`PIPES_PER_SWEEP`]) is reached through a
//! recorded holder and pruned exactly (`FIONREAD`). Pipes no recorded holder reaches are
//! looked for in one pass over `/proc/*/fd`, without the lock; then, under the lock
//! again, each is pruned through the holder found, or retired when none holds it. A
//! record that took new bytes in between (a new pipe with a reused inode number) is
//! left alone.

use crate::ops::lifetime::prune_counted;
use crate::ops::settle;
use crate::state::pipe;
use splicecow_registry::bounded::{at, at_mut};
use splicecow_registry::{sys, FileKey, PipeSlot, Registry};
use std::sync::atomic::Ordering;

/// Least time between two sweeps started from the mutation side.
pub const SWEEP_INTERVAL_NS: u64 = 20_000_000;
/// Least time between two sweeps started because a table was full.
const FULL_SWEEP_INTERVAL_NS: u64 = 1_000_000;
/// Most busy pipes one sweep looks at (the next sweep goes on from there).
pub const PIPES_PER_SWEEP: usize = 256;
/// Most pipes one sweep looks for in `/proc`.
const MAX_SCANNED: usize = 64;

/// Sweeps if the last sweep is [`SWEEP_INTERVAL_NS`] old.
pub fn maybe(reg: &Registry) {
    run_if_due(reg, SWEEP_INTERVAL_NS);
}

/// Sweeps because a table had no room, unless one just ran; true when it ran.
pub fn for_room(reg: &Registry) -> bool {
    run_if_due(reg, FULL_SWEEP_INTERVAL_NS)
}

fn run_if_due(reg: &Registry, interval: u64) -> bool {
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
    true
}

/// A pipe no recorded holder reaches, as it was when the sweep saw it.
#[derive(Debug, Clone, Copy, Default)]
struct Unreached {
    slot: Option<PipeSlot>,
    key: FileKey,
    bytes_in: u64,
}

/// One sweep.
fn run(reg: &Registry) {
    reg.header().counters.sweeps.fetch_add(1, Ordering::Relaxed);
    let mut unreached = [Unreached::default(); MAX_SCANNED];
    let mut n_unreached = 0;
    {
        let mut t = settle::lock(reg);
        let h = reg.header();
        let busy = h.busy_pipes.load(Ordering::Relaxed) as usize;
        let start = h.sweep_cursor.load(Ordering::Relaxed) as usize;
        let mut slots = [None; PIPES_PER_SWEEP];
        let first = start % busy.max(1);
        let rotated = t.busy_pipes().skip(first).chain(t.busy_pipes().take(first));
        for (cell, slot) in slots.iter_mut().zip(rotated) {
            *cell = Some(slot);
        }
        h.sweep_cursor.store(
            (first + PIPES_PER_SWEEP.min(busy)) as u32,
            Ordering::Relaxed,
        );
        for slot in slots.iter().flatten().copied() {
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
                None if n_unreached < MAX_SCANNED => {
                    *at_mut(&mut unreached, n_unreached) = Unreached {
                        slot: Some(slot),
                        key,
                        bytes_in,
                    };
                    n_unreached += 1;
                }
                None => {}
            }
        }
    }
    if n_unreached == 0 {
        return;
    }
    let mut keys = [FileKey::default(); MAX_SCANNED];
    for (k, u) in keys.iter_mut().zip(unreached.iter()) {
        *k = u.key;
    }
    let mut found = [None; MAX_SCANNED];
    pipe::find_holders(keys.get(..n_unreached).unwrap_or_default(), &mut found);
    let mut t = settle::lock(reg);
    for i in 0..n_unreached {
        let u = *at(&unreached, i);
        let Some(slot) = u.slot else { continue };
        let rec = t.pipe(slot);
        if rec.key != u.key || rec.bytes_in != u.bytes_in || rec.count == 0 {
            continue;
        }
        match *at(&found, i) {
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
                    .fetch_add(u64::from(rec.count), Ordering::Relaxed);
                t.retire_all(slot);
            }
        }
    }
}
