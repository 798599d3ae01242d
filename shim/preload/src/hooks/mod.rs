//! The exported hooks, one file per syscall family: the top floor. Each hook is
//! declared with [`hooks!`] and stays thin: it classifies the call, builds an intent,
//! calls an operation of `crate::ops` and calls through to libc. Nothing below imports
//! from here.

mod copy;
mod creates;
mod exec;
mod fallocate;
mod fds;
mod ioctl;
mod mmap;
mod open;
mod splice;
mod stdio;
mod truncate;
mod vfork;
mod write;

/// Defines exported hooks. Each hook resolves its real symbol once, goes straight to it
/// when the shim is re-entered (a nested call from inside the shim, or a signal handler
/// that interrupted a hook on this thread), and otherwise runs the given body:
///
/// - `=> before EXPR;`: evaluate `EXPR` (a [`crate::ops::intent::Mutation`]) with `errno`
///   preserved, let the registry settle what it overlaps, then call the real function;
/// - `=> with PATH;`: call `PATH(real, args...)`, which does the whole job;
/// - `=> unguarded PATH;`: the same without entering the shim first: for hooks whose
///   fast path is cheaper than the re-entrancy flag (`PATH` enters it when it must);
/// - `=> creates ();`: call the real function, then let the fd identity cache forget the
///   fd the call returned (an `int`, or the fd of a returned `FILE *`/`DIR *`);
/// - `=> before_creating EXPR;`: `before`, then the same as `creates`.
macro_rules! hooks {
    ($( $(#[$m:meta])* fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty => $how:ident $body:expr; )*) => {$(
        $(#[$m])*
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            type Real = unsafe extern "C" fn($($ty),*) -> $ret;
            static REAL: $crate::state::real::Symbol =
                $crate::state::real::Symbol::new(concat!(stringify!($name), "\0"));
            let addr = REAL.get();
            if addr.is_null() {
                splicecow_registry::sys::set_errno(libc::ENOSYS);
                return <$ret as $crate::state::real::Failure>::failure();
            }
            // SAFETY: `addr` is the next definition of this very C symbol, whose
            // signature the declaration above repeats from the libc headers.
            let real: Real = unsafe { std::mem::transmute::<*mut std::ffi::c_void, Real>(addr) };
            hooks!(@body $how $body, real, $($arg),*)
        }
    )*};
    (@body before $mutation:expr, $real:ident, $($arg:ident),*) => {{
        // Fast path first (one load when nothing is live), then the re-entrancy flag.
        if $crate::ops::mutation::may_conflict() {
            if let Some(_inside) = $crate::state::guard::Inside::enter() {
                $crate::state::guard::keep_errno(|| $crate::ops::mutation::before($mutation));
            }
        }
        // SAFETY: same arguments the caller gave us, to the real function.
        unsafe { $real($($arg),*) }
    }};
    (@body creates $unused:expr, $real:ident, $($arg:ident),*) => {{
        // SAFETY: same arguments the caller gave us, to the real function.
        let r = unsafe { $real($($arg),*) };
        $crate::state::fdcache::Created::forget_created(&r);
        r
    }};
    (@body before_creating $mutation:expr, $real:ident, $($arg:ident),*) => {{
        let r = hooks!(@body before $mutation, $real, $($arg),*);
        $crate::state::fdcache::Created::forget_created(&r);
        r
    }};
    (@body unguarded $imp:expr, $real:ident, $($arg:ident),*) => {{
        // SAFETY: the implementation receives exactly the caller's arguments.
        unsafe { $imp($real, $($arg),*) }
    }};
    (@body with $imp:expr, $real:ident, $($arg:ident),*) => {{
        let Some(_inside) = $crate::state::guard::Inside::enter() else {
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
