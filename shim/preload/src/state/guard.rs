//! The thread-local "inside the shim" flag, errno preservation, and the snapshot of a
//! thread's shim state that a `vfork` parent gets back (see `hooks/vfork.rs`).

use splicecow_registry::sys;
use std::cell::Cell;

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Proof that this thread entered the shim; leaving happens on drop.
pub struct Inside(());

impl Inside {
    /// Enters the shim, or `None` when this thread is already inside it (nested call or
    /// a signal handler that interrupted a hook): such calls must go straight through.
    pub fn enter() -> Option<Inside> {
        // Lazily built: an `Inside` made and dropped for a nested call would clear the
        // flag of the call it is nested in.
        #[allow(clippy::unnecessary_lazy_evaluations)]
        INSIDE
            .try_with(|inside| (!inside.replace(true)).then(|| Inside(())))
            .ok()
            .flatten()
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|inside| inside.set(false));
    }
}

/// The calling thread's shim state, packed in a word that a `vfork` trampoline keeps in
/// a register (the child runs on the parent's stack and memory, so it cannot be kept
/// there): the "inside the shim" flag (bit 0) and the "vfork child" flag (bit 1).
pub fn save_thread_state() -> u64 {
    let inside = INSIDE.try_with(Cell::get).unwrap_or(false);
    let child = sys::on_borrowed_memory();
    u64::from(inside) | u64::from(child) << 1
}

/// Puts back what [`save_thread_state`] saved, whatever a `vfork` child that ran on this
/// thread's memory changed (an `execve` hook that succeeded in the child never cleared
/// the flag it set).
pub fn restore_thread_state(saved: u64) {
    let _ = INSIDE.try_with(|inside| inside.set(saved & 1 != 0));
    sys::set_on_borrowed_memory(saved & 2 != 0);
}

/// Marks this thread's memory as borrowed by a `vfork` child (or a `clone` child with
/// `CLONE_VM`), until its parent restores its state: the child has its own pid and may
/// have its own fd table, so cached ids and per-process fd knowledge of the parent must
/// not follow what the child does.
pub fn vfork_child_starts() {
    sys::set_on_borrowed_memory(true);
}

/// True in a `vfork` child (running on its parent's memory).
pub fn in_vfork_child() -> bool {
    sys::on_borrowed_memory()
}

/// Runs `f` and restores `errno` afterwards, so the shim's own calls never leak an errno.
pub fn keep_errno<T>(f: impl FnOnce() -> T) -> T {
    let saved = splicecow_registry::sys::errno();
    let r = f();
    splicecow_registry::sys::set_errno(saved);
    r
}

#[cfg(test)]
mod tests {
    use super::{restore_thread_state, save_thread_state, Inside};

    #[test]
    fn a_saved_state_comes_back_whatever_happened_since() {
        let saved = save_thread_state();
        let inside = Inside::enter().expect("entry");
        std::mem::forget(inside);
        assert!(
            Inside::enter().is_none(),
            "left inside, as an exec'd vfork child leaves it"
        );
        restore_thread_state(saved);
        assert!(Inside::enter().is_some(), "free again once restored");
    }

    #[test]
    fn a_nested_enter_leaves_the_outer_one_inside() {
        let outer = Inside::enter().expect("first entry");
        assert!(Inside::enter().is_none(), "nested entry is refused");
        assert!(
            Inside::enter().is_none(),
            "and still refused after a refused one"
        );
        drop(outer);
        assert!(
            Inside::enter().is_some(),
            "free again after the outer one left"
        );
    }
}
