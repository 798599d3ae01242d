//! `libsplicecow.so`: an `LD_PRELOAD` shim that makes `splice(2)` (and `sendfile`, `tee`)
//! from a file into a pipe behave as if it had copied, while staying zero-copy when
//! nobody changes the file before the pipe's reader consumes the bytes.
//!
//! Splices are recorded as in-flight segments in the domain's shared registry
//! ([`splicecow_registry`]); a call about to change a file first *settles* every pipe
//! holding an overlapping segment (drains it and writes the bytes back, so they leave
//! the page cache). Layout: `hooks/` (the exported symbols, one file per family),
//! `mutation` (lookup + settle/report), `transfer` (the splice side), `settle`, `pipe`,
//! `report` (detect mode), `maps` (this process's tracked file mappings), `snapshot`
//! (private mappings as snapshots), `runtime` (mode, domain, registry), `real`/`guard`
//! (symbol resolution, re-entrancy).

mod fdkind;
mod guard;
mod hooks;
mod maps;
mod mutation;
mod pipe;
mod real;
mod report;
mod runtime;
mod settle;
mod snapshot;
mod transfer;

/// Raw syscall helpers shared with the registry (errno access).
use splicecow_registry::sys as registry_sys;
