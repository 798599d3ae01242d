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

/// Defines exported hooks. Each hook resolves its real symbol once, goes straight to it
/// when the shim is re-entered (a nested call from inside the shim, or a signal handler
/// that interrupted a hook on this thread), and otherwise runs the given body:
///
/// - `=> before EXPR;`: evaluate `EXPR` (a [`crate::mutation::Mutation`]) with `errno`
///   preserved, let the registry settle what it overlaps, then call the real function;
/// - `=> with PATH;`: call `PATH(real, args...)`, which does the whole job.
macro_rules! hooks {
    ($( $(#[$m:meta])* fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty => $how:ident $body:expr; )*) => {$(
        $(#[$m])*
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            type Real = unsafe extern "C" fn($($ty),*) -> $ret;
            static REAL: $crate::real::Symbol =
                $crate::real::Symbol::new(concat!(stringify!($name), "\0"));
            let addr = REAL.get();
            if addr.is_null() {
                $crate::registry_sys::set_errno(libc::ENOSYS);
                return <$ret as $crate::real::Failure>::failure();
            }
            // SAFETY: `addr` is the next definition of this very C symbol, whose
            // signature the declaration above repeats from the libc headers.
            let real: Real = unsafe { std::mem::transmute::<*mut std::ffi::c_void, Real>(addr) };
            hooks!(@body $how $body, real, $($arg),*)
        }
    )*};
    (@body before $mutation:expr, $real:ident, $($arg:ident),*) => {{
        // Fast path first (one load when nothing is live), then the re-entrancy flag.
        if $crate::mutation::may_conflict() {
            if let Some(_inside) = $crate::guard::Inside::enter() {
                $crate::guard::keep_errno(|| $crate::mutation::before($mutation));
            }
        }
        // SAFETY: same arguments the caller gave us, to the real function.
        unsafe { $real($($arg),*) }
    }};
    (@body with $imp:expr, $real:ident, $($arg:ident),*) => {{
        let Some(_inside) = $crate::guard::Inside::enter() else {
            // SAFETY: same arguments the caller gave us, to the real function.
            return unsafe { $real($($arg),*) };
        };
        // SAFETY: the implementation receives exactly the caller's arguments.
        unsafe { $imp($real, $($arg),*) }
    }};
}

/// Defines an exported variadic function as a bare jump to its C body, which receives
/// the caller's registers and stack untouched (so `...` arrives intact).
macro_rules! variadic_hook {
    ($($(#[$m:meta])* $name:ident => $body:ident;)*) => {$(
        extern "C" {
            fn $body();
        }
        $(#[$m])*
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!("jmp {}", sym $body)
        }
    )*};
}

pub(crate) use hooks;
pub(crate) use variadic_hook;
