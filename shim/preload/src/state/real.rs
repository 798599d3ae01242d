//! Resolution of the real (next) definitions of hooked symbols, once, on first use.

use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

/// A lazily resolved `dlsym(RTLD_NEXT, name)`.
pub struct Symbol {
    name: &'static str,
    addr: AtomicPtr<c_void>,
}

impl Symbol {
    /// A symbol named `name`, which must end with a NUL byte.
    pub const fn new(name: &'static str) -> Symbol {
        Symbol {
            name,
            addr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The next definition's address, or null when no later object defines it.
    pub fn get(&self) -> *mut c_void {
        let p = self.addr.load(Ordering::Relaxed);
        if !p.is_null() {
            return p;
        }
        // SAFETY: name is a static NUL-terminated string; dlsym is thread-safe.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr().cast()) };
        self.addr.store(p, Ordering::Relaxed);
        p
    }
}

/// What a hook returns when the real function does not exist (errno is `ENOSYS`).
pub trait Failure {
    /// The function's error value.
    fn failure() -> Self;
}

impl Failure for i32 {
    fn failure() -> Self {
        -1
    }
}

impl Failure for isize {
    fn failure() -> Self {
        -1
    }
}

impl Failure for usize {
    fn failure() -> Self {
        0
    }
}

impl Failure for () {
    fn failure() -> Self {}
}

impl<T> Failure for *mut T {
    fn failure() -> Self {
        std::ptr::null_mut()
    }
}
