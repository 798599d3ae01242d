//! The mutation side: before a call changes a file, settle (protect) or report (detect)
//! every in-flight segment its byte range overlaps.

use crate::ops::intent::{Mutation, Span, Target};
use crate::ops::settle::{self, Action, Conflicts, Scope};
use crate::ops::{peers, report, snapshot, sweep};
use crate::state::fd::{current_offset, status_flags, FdKind};
use crate::state::fdcache;
use crate::state::runtime::{self, Mode};
use splicecow_registry::{sys, FileKey, PipeSlot, Registry};
use std::sync::atomic::Ordering;

/// Most pipes settled per lookup round (more are found by the next round).
const PIPES_PER_ROUND: usize = 16;
/// Most pipes one mutation looks at (far more than a domain normally has in flight
/// for one file range).
const MAX_HANDLED: usize = 256;

/// True when something in `reg`'s domain, or in another domain of the user, may
/// conflict with a change.
fn anything_live(reg: &Registry) -> bool {
    reg.has_live_references() || reg.index().is_some_and(|i| i.any_live())
}

/// The registry when mutations must be checked: a tracking mode and something live in
/// this domain or another domain of the user.
pub fn active_registry() -> Option<&'static Registry> {
    let reg = runtime::get().tracking()?;
    anything_live(reg).then_some(reg)
}

/// The mutation hooks' fast path: false only when the runtime is ready and nothing in
/// any domain of the user can conflict (no live segment, no private snapshot mapping:
/// two loads of this domain's header, one of the user index's). Never initialises the
/// runtime, so it is safe however early it is called.
pub fn may_conflict() -> bool {
    runtime::try_get().is_none_or(|rt| rt.tracking().is_some_and(anything_live))
}

/// Settles or reports what `m` overlaps. The fast path is one atomic load.
pub fn before(m: Mutation) {
    let Some(reg) = active_registry() else {
        return;
    };
    // Something is live: perhaps only what has long left its pipes.
    sweep::maybe(reg);
    if !anything_live(reg) {
        return;
    }
    let kind = match m.target {
        Target::Fd(fd) => fdcache::kind(fd),
        // SAFETY: output functions require a valid stream; fileno only reads its fd.
        Target::Stream(stream) => fdcache::kind(unsafe { libc::fileno(stream) }),
        Target::Path {
            dirfd,
            path,
            follow,
        } => {
            let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
            // SAFETY: `path` is the hooked call's own path argument, which the real call
            // hands to the kernel the same way (an invalid one gives EFAULT here too).
            match unsafe { sys::fstatat(dirfd, path, flags) } {
                Ok(st) => FdKind::of_stat(&st),
                Err(_) => return,
            }
        }
    };
    if let FdKind::Regular(key) = kind {
        check_file(reg, key, m);
    }
}

/// The part of [`before`] after the file is known: this domain first, then every other
/// domain of the user that the user index names for `key`.
pub fn check_file(reg: &Registry, key: FileKey, m: Mutation) {
    let elsewhere = || {
        let mut any = false;
        if let Some(index) = reg.index().filter(|i| i.any_live()) {
            index.domains_of(key, reg.domain(), |_| any = true);
        }
        any
    };
    // The span may cost system calls (a cursor's offset): only for a file that is tracked.
    if !reg.file_may_be_tracked(key) && !elsewhere() {
        return;
    }
    let Some((off, end)) = resolve_span(m) else {
        return;
    };
    let own = action_of(runtime::get().mode);
    check_domain(reg, key, m, (off, end), own);
    let Some(index) = reg.index().filter(|i| i.any_live()) else {
        return;
    };
    // Lock-free walk of the index; each domain's own lock is taken (and released) while
    // the walk goes on, so no lock is held across domains.
    index.domains_of(key, reg.domain(), |domain| {
        match peers::with(domain, index, |peer| {
            if peer.file_may_be_tracked(key) {
                let action = action_of(peer.mode().unwrap_or(Mode::Protect));
                check_domain(peer, key, m, (off, end), action);
            } else {
                // The index names this domain for the file, which it no longer tracks.
                settle::lock(peer).unpublish_if_dead(key);
            }
        }) {
            peers::Reached::Yes | peers::Reached::NotNow => {}
            // A domain whose registry is gone or unusable has nothing to protect.
            peers::Reached::Gone => index.remove(key, domain),
        }
    });
}

/// What a conflict in a domain of `mode` does with the segment.
fn action_of(mode: Mode) -> Action {
    if mode == Mode::Detect {
        Action::Report
    } else {
        Action::Settle
    }
}

/// Settles or reports, in the domain of `reg`, what `m` changes of `key` in `[off, end)`.
fn check_domain(reg: &Registry, key: FileKey, m: Mutation, (off, end): (u64, u64), action: Action) {
    if !reg.file_may_be_tracked(key) {
        return;
    }
    if check_pipes(reg, key, m, off, end, action) {
        reg.header()
            .counters
            .conflicts
            .fetch_add(1, Ordering::Relaxed);
    }
    if reg.header().private_maps.load(Ordering::Relaxed) > 0 {
        let truncates = m.kind.truncates();
        snapshot::before_change(
            reg,
            snapshot::Change {
                key,
                off,
                end,
                truncates,
            },
        );
    }
}

/// Settles (protect) or reports (detect) every pipe with a segment of `key` overlapping
/// `[off, end)` (see [`settle::handle`]: consumed bytes are no conflict, a pipe nobody
/// holds is retired). Reports are written after the lock is released. Returns whether a
/// real conflict was found.
fn check_pipes(
    reg: &Registry,
    key: FileKey,
    m: Mutation,
    off: u64,
    end: u64,
    action: Action,
) -> bool {
    let scope = Scope::Overlapping {
        file: key,
        off,
        end,
    };
    let mut found = Conflicts::default();
    let mut conflicted = false;
    // Pipes already handled this call (detect mode leaves their segments in place).
    let mut handled = [None; MAX_HANDLED];
    let mut n_handled = 0;
    let mut t = settle::lock(reg);
    loop {
        let mut slots: [Option<PipeSlot>; PIPES_PER_ROUND] = [None; PIPES_PER_ROUND];
        let mut n = 0;
        t.for_each_overlapping(key, off, end, |info| {
            let slot = Some(info.pipe_slot);
            if !slots.contains(&slot) && !handled.contains(&slot) {
                if let Some(cell) = slots.get_mut(n) {
                    *cell = slot;
                    n += 1;
                }
            }
            n < PIPES_PER_ROUND
        });
        if n == 0 || n_handled == MAX_HANDLED {
            break;
        }
        for slot in slots.iter().flatten().copied() {
            let outcome = settle::handle(&mut t, slot, scope, action, &mut found);
            if outcome == settle::Outcome::InAnotherCall {
                // Bytes are going into that pipe right now: found again next round.
                drop(t);
                settle::let_call_finish();
                t = settle::lock(reg);
                continue;
            }
            if let Some(cell) = handled.get_mut(n_handled) {
                *cell = Some(slot);
                n_handled += 1;
            }
            conflicted |= outcome.conflicted();
            if !found.as_slice().is_empty() {
                drop(t);
                report::emit_all(m, off, end, reg.domain(), found.as_slice());
                found.clear();
                t = settle::lock(reg);
            }
        }
    }
    // An entry in the user index for a file this domain no longer has live: left by a
    // holder killed between its last retire and the removal.
    t.unpublish_if_dead(key);
    conflicted
}

/// Turns a span into `[off, end)`; `None` when nothing can conflict.
fn resolve_span(m: Mutation) -> Option<(u64, u64)> {
    let clamp = |off: i64| off.max(0) as u64;
    match m.span {
        Span::At(off, len) => Some((clamp(off), clamp(off).saturating_add(len))),
        Span::From(off) => Some((clamp(off), u64::MAX)),
        Span::Cursor(len) => {
            let fd = target_fd(m.target)?;
            if status_flags(fd) & libc::O_APPEND != 0 {
                return None;
            }
            let off = current_offset(fd)?;
            Some((off, off.saturating_add(len)))
        }
        Span::FromCursor => {
            let fd = target_fd(m.target)?;
            let fl = status_flags(fd);
            if fl & libc::O_APPEND != 0 || fl & libc::O_ACCMODE == libc::O_RDONLY {
                return None;
            }
            Some((current_offset(fd)?, u64::MAX))
        }
    }
}

/// The fd of an fd or stream target.
fn target_fd(t: Target) -> Option<i32> {
    match t {
        Target::Fd(fd) => Some(fd),
        // SAFETY: output functions require a valid stream; fileno only reads its fd.
        Target::Stream(stream) => Some(unsafe { libc::fileno(stream) }),
        Target::Path { .. } => None,
    }
}
