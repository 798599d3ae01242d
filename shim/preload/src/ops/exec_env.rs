//! The domain across `exec`: it follows through the inherited environment
//! (`LD_PRELOAD`, `SPLICECOW_*`). A program that drops them (`clearenv`, `env -i`, an
//! explicit `envp`) starts its child unprotected and outside the domain: the exec hooks
//! notice it here and count it (`env_cleared`, which `splicecow run` reports at exit).
//! The environment itself is passed on untouched (the host program must not be able to
//! tell the shim is there).

use crate::state::runtime::{self, Mode};
use libc::c_char;
use std::ffi::CStr;
use std::sync::atomic::Ordering;

/// A null-terminated array of C strings (`argv`, `envp`).
pub type Argv = *const *const c_char;

/// Counts an exec whose `envp` lost `LD_PRELOAD` (with this library) or one of the
/// `SPLICECOW_*` variables this process started with, then runs `f` with `envp` as given.
///
/// # Safety
/// `envp` is null or a valid null-terminated array of C strings.
pub unsafe fn with_domain_env<T>(envp: Argv, f: impl FnOnce(Argv) -> T) -> T {
    let rt = runtime::get();
    if rt.mode != Mode::Off && !rt.exec_env.is_empty() {
        let lost = rt.exec_env.iter().any(|wanted| {
            let name = match wanted.iter().position(|&b| b == b'=') {
                Some(i) => wanted.split_at(i + 1).0,
                None => wanted.as_slice(),
            };
            // SAFETY: the caller's envp, as the exec call itself requires it.
            let found = unsafe { c_strings(envp) }.find(|e| e.to_bytes().starts_with(name));
            match found {
                Some(e) if name == b"LD_PRELOAD=" => {
                    !contains_library(e.to_bytes(), &rt.library_path)
                }
                Some(_) => false,
                None => true,
            }
        });
        if let (true, Some(reg)) = (lost, rt.registry.as_ref()) {
            reg.header()
                .counters
                .env_cleared
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    f(envp)
}

/// The strings of a null-terminated array of C strings (`argv`, `envp`; none for null),
/// in order, without allocating (an exec hook may run in a `vfork` child).
///
/// # Safety
/// `list` is null or a valid null-terminated array of C strings, which outlive the
/// iterator.
pub unsafe fn c_strings<'a>(list: Argv) -> impl Iterator<Item = &'a CStr> {
    let mut i = 0;
    std::iter::from_fn(move || {
        if list.is_null() {
            return None;
        }
        // SAFETY: the caller's null-terminated array; we stop at the terminator.
        let p = unsafe { *list.add(i) };
        if p.is_null() {
            return None;
        }
        i += 1;
        // SAFETY: each entry is a NUL-terminated string.
        Some(unsafe { CStr::from_ptr(p) })
    })
}

/// True when an `LD_PRELOAD=...` entry names the library (space or colon separated).
fn contains_library(entry: &[u8], library: &[u8]) -> bool {
    let value = match entry.iter().position(|&b| b == b'=') {
        Some(i) => entry.split_at(i + 1).1,
        None => entry,
    };
    value
        .split(|&b| b == b' ' || b == b':')
        .any(|item| item == library)
}

#[cfg(test)]
mod tests {
    #[test]
    fn library_is_found_in_preload_lists() {
        let lib = b"/x/libsplicecow.so";
        assert!(super::contains_library(
            b"LD_PRELOAD=/a.so /x/libsplicecow.so",
            lib
        ));
        assert!(super::contains_library(
            b"LD_PRELOAD=/x/libsplicecow.so:/b.so",
            lib
        ));
        assert!(!super::contains_library(b"LD_PRELOAD=/a.so", lib));
    }
}
