//! Which fds of this process may refer to a pipe with in-flight segments: set when the
//! process splices, tees or writes into a tracked pipe (or inherits such an fd across
//! `exec`), copied by `dup*`, cleared on close. The close-family hooks look at this one
//! bit and go straight through for every other fd. Only a hint: a missing bit costs a
//! later sweep some work, never a byte (retiring segments is never needed for safety);
//! a stale bit costs one `fstat`.
//!
//! A `vfork` child shares this memory with its parent but has its own fd table: its
//! hooks leave the hints alone (see `guard::in_vfork_child`).

use crate::state::guard;
use splicecow_registry::bounded::at;
use std::sync::atomic::{AtomicU64, Ordering};

/// fds at or above this are never hinted (their closes go straight through).
pub const MAX_HINTED_FD: usize = 1 << 16;

static BITS: [AtomicU64; MAX_HINTED_FD / 64] = [const { AtomicU64::new(0) }; MAX_HINTED_FD / 64];

fn word_and_bit(fd: i32) -> Option<(&'static AtomicU64, u64)> {
    let fd = usize::try_from(fd).ok().filter(|&fd| fd < MAX_HINTED_FD)?;
    Some((at(&BITS, fd / 64), 1 << (fd % 64)))
}

/// True when `fd` may refer to a tracked pipe.
pub fn is_set(fd: i32) -> bool {
    word_and_bit(fd).is_some_and(|(w, bit)| w.load(Ordering::Relaxed) & bit != 0)
}

/// Notes that `fd` may refer to a tracked pipe.
pub fn set(fd: i32) {
    if let (Some((w, bit)), false) = (word_and_bit(fd), guard::in_vfork_child()) {
        if w.load(Ordering::Relaxed) & bit == 0 {
            w.fetch_or(bit, Ordering::Relaxed);
        }
    }
}

/// Forgets `fd` (closed, or now something else).
pub fn clear(fd: i32) {
    if let (Some((w, bit)), false) = (word_and_bit(fd), guard::in_vfork_child()) {
        w.fetch_and(!bit, Ordering::Relaxed);
    }
}

/// `new` is now a duplicate of `old`: it gets `old`'s hint.
pub fn copy(old: i32, new: i32) {
    if is_set(old) {
        set(new);
    } else {
        clear(new);
    }
}

/// Calls `each(fd)` for every hinted fd in `[first, last]`.
pub fn for_each_in(first: u32, last: u32, mut each: impl FnMut(i32)) {
    let last = (last as usize).min(MAX_HINTED_FD - 1);
    let mut fd = first as usize;
    while fd <= last {
        let word = at(&BITS, fd / 64).load(Ordering::Relaxed);
        if word == 0 {
            fd = (fd / 64 + 1) * 64;
            continue;
        }
        if word & (1 << (fd % 64)) != 0 {
            each(fd as i32);
        }
        fd += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_set_copied_cleared_and_listed() {
        set(70);
        set(3);
        copy(70, 200);
        copy(5, 3);
        let mut seen = Vec::new();
        for_each_in(0, 1000, |fd| seen.push(fd));
        assert_eq!(seen, vec![70, 200]);
        clear(70);
        clear(200);
        assert!(!is_set(70) && !is_set(200) && !is_set(-1) && !is_set(1 << 20));
        set(1 << 20);
        assert!(!is_set(1 << 20), "fds past the bitmap are never hinted");
    }
}
