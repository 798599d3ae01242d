//! The `exec` and `posix_spawn` families. The domain follows a new program through its
//! inherited environment (`LD_PRELOAD`, `SPLICECOW_*`). A program that drops them
//! (`clearenv`, `env -i`, an explicit `envp`) starts its child unprotected and outside
//! the domain: these hooks notice it and count it (`env_cleared`, which `splicecow run`
//! reports at exit). The environment itself is passed on untouched (the host program
//! must not be able to tell the shim is there). The variadic `execl`, `execle` and
//! `execlp` are C bodies (`exec_variadic.c`) that call the hooks below.

use crate::real::{hooks, variadic_hook, Symbol};
use crate::runtime::{self, Mode};
use libc::{c_char, c_int, pid_t};
use std::ffi::CStr;
use std::sync::atomic::Ordering;

type Argv = *const *const c_char;
type ExecveFn = unsafe extern "C" fn(*const c_char, Argv, Argv) -> c_int;
type SpawnFn = unsafe extern "C" fn(
    *mut pid_t,
    *const c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    Argv,
    Argv,
) -> c_int;

extern "C" {
    static environ: Argv;
}

hooks! {
    /// `execve(2)`.
    fn execve(path: *const c_char, argv: Argv, envp: Argv) -> c_int => with exec_with_env;
    /// `execvpe(3)`.
    fn execvpe(file: *const c_char, argv: Argv, envp: Argv) -> c_int => with exec_with_env;
    /// `execv(3)`: `execve` with `environ`.
    fn execv(path: *const c_char, argv: Argv) -> c_int => with execv_impl;
    /// `execvp(3)`: `execvpe` with `environ`.
    fn execvp(file: *const c_char, argv: Argv) -> c_int => with execvp_impl;
    /// `fexecve(3)`.
    fn fexecve(fd: c_int, argv: Argv, envp: Argv) -> c_int => with fexecve_impl;
    /// `posix_spawn(3)`.
    fn posix_spawn(pid: *mut pid_t, path: *const c_char, actions: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: Argv, envp: Argv) -> c_int => with spawn_with_env;
    /// `posix_spawnp(3)`.
    fn posix_spawnp(pid: *mut pid_t, file: *const c_char, actions: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: Argv, envp: Argv) -> c_int => with spawn_with_env;
}

unsafe fn exec_with_env(real: ExecveFn, path: *const c_char, argv: Argv, envp: Argv) -> c_int {
    // SAFETY: exec requires a valid, null-terminated envp; we pass it (or a copy) on.
    unsafe { with_domain_env(envp, |env| real(path, argv, env)) }
}

unsafe fn fexecve_impl(
    real: unsafe extern "C" fn(c_int, Argv, Argv) -> c_int,
    fd: c_int,
    argv: Argv,
    envp: Argv,
) -> c_int {
    // SAFETY: as in `exec_with_env`.
    unsafe { with_domain_env(envp, |env| real(fd, argv, env)) }
}

unsafe fn execv_impl(
    _real: unsafe extern "C" fn(*const c_char, Argv) -> c_int,
    path: *const c_char,
    argv: Argv,
) -> c_int {
    static EXECVE: Symbol = Symbol::new("execve\0");
    // SAFETY: `environ` is the process environment; EXECVE is libc's execve.
    unsafe { via(&EXECVE, path, argv, environ) }
}

unsafe fn execvp_impl(
    _real: unsafe extern "C" fn(*const c_char, Argv) -> c_int,
    file: *const c_char,
    argv: Argv,
) -> c_int {
    static EXECVPE: Symbol = Symbol::new("execvpe\0");
    // SAFETY: as in `execv_impl`.
    unsafe { via(&EXECVPE, file, argv, environ) }
}

/// Calls the next definition of an `execve`-shaped function with the domain's env.
unsafe fn via(sym: &Symbol, path: *const c_char, argv: Argv, envp: Argv) -> c_int {
    let addr = sym.get();
    if addr.is_null() {
        crate::registry_sys::set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `addr` is libc's definition of a function with the ExecveFn signature.
    let real: ExecveFn = unsafe { std::mem::transmute::<*mut std::ffi::c_void, ExecveFn>(addr) };
    // SAFETY: as in `exec_with_env`.
    unsafe { exec_with_env(real, path, argv, envp) }
}

unsafe fn spawn_with_env(
    real: SpawnFn,
    pid: *mut pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    // SAFETY: as in `exec_with_env`.
    unsafe { with_domain_env(envp, |env| real(pid, path, actions, attr, argv, env)) }
}

/// Counts an exec whose `envp` lost `LD_PRELOAD` (with this library) or one of the
/// `SPLICECOW_*` variables this process started with, then runs `f` with `envp` as given.
///
/// # Safety
/// `envp` is null or a valid null-terminated array of C strings.
unsafe fn with_domain_env<T>(envp: Argv, f: impl FnOnce(Argv) -> T) -> T {
    let rt = runtime::get();
    if rt.mode != Mode::Off && !rt.exec_env.is_empty() {
        // SAFETY: the caller's envp, as the exec call itself requires it.
        let entries: Vec<&CStr> = unsafe { env_entries(envp) };
        let lost = rt.exec_env.iter().any(|wanted| {
            let name_len = wanted
                .iter()
                .position(|&b| b == b'=')
                .map_or(wanted.len(), |i| i + 1);
            let name = &wanted[..name_len];
            let found = entries.iter().find(|e| e.to_bytes().starts_with(name));
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

/// The entries of a null-terminated `envp` (none for null).
///
/// # Safety
/// As for [`with_domain_env`].
unsafe fn env_entries<'a>(envp: Argv) -> Vec<&'a CStr> {
    let mut out = Vec::new();
    if envp.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        // SAFETY: envp is null-terminated; we stop at the terminator.
        let p = unsafe { *envp.add(i) };
        if p.is_null() {
            return out;
        }
        // SAFETY: each entry is a NUL-terminated string.
        out.push(unsafe { CStr::from_ptr(p) });
        i += 1;
    }
}

/// True when an `LD_PRELOAD=...` entry names the library (space or colon separated).
fn contains_library(entry: &[u8], library: &[u8]) -> bool {
    let value = &entry[entry.iter().position(|&b| b == b'=').map_or(0, |i| i + 1)..];
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

variadic_hook! {
    /// `execl(3)`.
    execl => splicecow_execl;
    /// `execle(3)`.
    execle => splicecow_execle;
    /// `execlp(3)`.
    execlp => splicecow_execlp;
}
