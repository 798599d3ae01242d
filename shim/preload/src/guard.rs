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

/// Runs `f` and restores `errno` afterwards, so the shim's own calls never leak an errno.
pub fn keep_errno<T>(f: impl FnOnce() -> T) -> T {
    let saved = crate::registry_sys::errno();
    let r = f();
    crate::registry_sys::set_errno(saved);
    r
}

#[cfg(test)]
mod tests {
    use super::Inside;

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
