//! The thread-local "inside the shim" flag, and errno preservation.

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
        INSIDE
            .try_with(|inside| (!inside.replace(true)).then_some(Inside(())))
            .ok()
            .flatten()
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|inside| inside.set(false));
    }
}

/// Runs `f` and restores `errno` afterwards, so the shim's own calls never leak an errno.
pub fn keep_errno<T>(f: impl FnOnce() -> T) -> T {
    let saved = crate::registry_sys::errno();
    let r = f();
    crate::registry_sys::set_errno(saved);
    r
}
