//! Records follow the pipe's life. When a process closes its end of a pipe that holds
//! segments (`close`, `close_range`, `closefrom`, `dup2`/`dup3` over it, `fclose`/`pclose`
//! of a stream on it, `exec` of a close-on-exec fd), the pipe is still open in front of
//! it: one `FIONREAD` tells exactly which bytes have left, and those segments retire
//! (all of them when the pipe is empty, which frees the record for any pipe). Bytes
//! still pending stay tracked: a reader that has not read yet must still get them.
//! Pipes whose holders died are found by the sweep (`ops::sweep`).
//!
//! Which fds to look at comes from `state::fdhints`: every other close goes straight
//! through after one bit test.

use crate::ops::settle;
use crate::state::fd::FdKind;
use crate::state::fdcache;
use crate::state::guard::keep_errno;
use crate::state::{fdhints, pipe, runtime};
use splicecow_registry::{sys, PipeSlot, Tables};
use std::sync::atomic::Ordering;

/// `fd` now refers to a pipe this process put tracked bytes into (or took them from).
pub fn noticed(fd: i32) {
    fdhints::set(fd);
}

/// True when `fd` may refer to a pipe this process put tracked bytes into: only then
/// does closing or duplicating it have anything to tell the registry.
pub fn hinted(fd: i32) -> bool {
    fdhints::is_set(fd)
}

/// Before `fd` is closed (or replaced by `dup2`/`dup3`): retires what has left the pipe
/// and forgets this process as a holder through `fd`.
pub fn before_close(fd: i32) {
    if !fdhints::is_set(fd) {
        return;
    }
    keep_errno(|| {
        fdhints::clear(fd);
        let Some(reg) = runtime::get().tracking() else {
            return;
        };
        let FdKind::Pipe(key) = fdcache::kind(fd) else {
            return;
        };
        let mut t = settle::lock(reg);
        // A pipe in another thread's kernel call is left to the sweep.
        let slot = t
            .find_pipe(key)
            .filter(|&s| !settle::in_another_call(&mut t, s));
        if let Some(slot) = slot {
            if let Some(pending) = pipe::pending(fd) {
                prune_counted(&mut t, slot, pending);
            }
            t.remove_holder(slot, sys::getpid(), fd);
        }
    });
}

/// Before `close_range(first, last, flags)` / `closefrom(first)`.
pub fn before_close_range(first: u32, last: u32) {
    let mut fds = [0i32; 64];
    let mut n = 0;
    // Collected first: `before_close` clears the bits being walked.
    fdhints::for_each_in(first, last, |fd| {
        if let Some(cell) = fds.get_mut(n) {
            *cell = fd;
            n += 1;
        }
    });
    for &fd in fds.iter().take(n) {
        before_close(fd);
    }
}

/// After `new` became a duplicate of `old` (`dup`, `dup2`, `dup3`, `F_DUPFD*`).
pub fn after_dup(old: i32, new: i32) {
    fdhints::copy(old, new);
}

/// Before an `exec`: the close-on-exec fds among the hinted ones close with it.
pub fn before_exec() {
    let mut fds = [0i32; 64];
    let mut n = 0;
    fdhints::for_each_in(0, u32::MAX, |fd| {
        // SAFETY: F_GETFD takes no pointer.
        let flags = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) };
        if flags >= 0 && flags & i64::from(libc::FD_CLOEXEC) != 0 {
            if let Some(cell) = fds.get_mut(n) {
                *cell = fd;
                n += 1;
            }
        }
    });
    for &fd in fds.iter().take(n) {
        before_close(fd);
    }
}

/// At the start of a program (after `exec`): the fds this pid was recorded to hold are
/// still open (those without close-on-exec); hint them again.
pub fn install() {
    let Some(reg) = runtime::get().tracking() else {
        return;
    };
    if reg.live_segments() == 0 {
        return;
    }
    let pid = sys::getpid();
    settle::lock(reg).for_each_held_by(pid, fdhints::set);
}

/// Prunes pipe `slot` to its `pending` bytes, counting the segments that retire.
pub fn prune_counted(t: &mut Tables, slot: PipeSlot, pending: u64) {
    let before = t.pipe(slot).count;
    t.prune(slot, pending);
    let retired = before.saturating_sub(t.pipe(slot).count);
    if retired > 0 {
        t.counters()
            .retired_stale
            .fetch_add(u64::from(retired), Ordering::Relaxed);
    }
}
