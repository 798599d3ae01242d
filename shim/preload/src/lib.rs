//! `libsplicecow.so`: an `LD_PRELOAD` shim that makes `splice(2)` (and `sendfile`, `tee`)
//! from a file into a pipe behave as if it had copied, while staying zero-copy when
//! nobody changes the file before the pipe's reader consumes the bytes.
//!
//! Splices are recorded as in-flight segments in the domain's shared registry
//! ([`splicecow_registry`]); a call about to change a file first *settles* every pipe
//! holding an overlapping segment (drains it and writes the bytes back, so they leave
//! the page cache). The code reads as floors, each importing only from those below it
//! (docs/design.md, "Layers"):
//!
//! - `hooks`: the exported symbols (classify, build an intent, call an op, call through);
//! - `ops`: the logic (the splice side, mutations, the settle, reports, mappings,
//!   stdio streams, the exec environment);
//! - `state`: per-process state and system helpers (runtime, re-entrancy guard,
//!   symbol resolution, fds, caller memory, pipes);
//! - the registry crate.
//!
//! Beside `hooks`, [`supervised`] is the other entry floor: the same operations called by
//! strict mode's supervisor (`splicecow run --strict`) on behalf of a filtered process.
//! The `hooks` feature (on by default) builds the exported symbols and the constructor;
//! `shim/core` (`splicecow-core`) compiles these sources without it, as an rlib the CLI
//! links, so the CLI's binary exports no hook.

#![deny(clippy::indexing_slicing)]
// Without the hooks most operations have no caller: the supervisor uses a few.
#![cfg_attr(not(feature = "hooks"), allow(dead_code, unused_imports))]

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!(
    "libsplicecow supports Linux on x86-64 only: the variadic hooks are naked jumps, the \
     vfork trampoline is x86-64 assembly, and fixed-arity open and an 8-byte kernel sigset \
     are assumed"
);

#[cfg(feature = "hooks")]
mod hooks;
mod ops;
mod state;
pub mod supervised;

/// Runs at library load (before `main`): builds the runtime, so the first hook call finds
/// it ready, and lets the operations that own per-process state install their `fork` and
/// `exit` handlers.
#[cfg(feature = "hooks")]
extern "C" fn constructor() {
    if let Some(_inside) = state::guard::Inside::enter() {
        // First: the id cache's fork handler must run before the others, which ask for ids.
        splicecow_registry::sys::cache_ids();
        if state::runtime::get().registry.is_some() {
            ops::maps::install();
            ops::snapshot::install();
            ops::streams::install();
            ops::lifetime::install();
            ops::peers::install();
            ops::sweep::install();
            ops::stacks::install();
        }
    }
}

#[cfg(feature = "hooks")]
#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;
