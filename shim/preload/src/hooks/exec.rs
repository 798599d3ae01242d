//! The `exec` and `posix_spawn` families: each passes its environment through
//! `ops::exec_env`, which counts a child that leaves the domain. The variadic `execl`,
//! `execle` and `execlp` are C bodies (`exec_variadic.c`) that call the hooks below.

use crate::hooks::{hooks, variadic_hook};
use crate::ops::exec_env::{with_domain_env, Argv};
use crate::ops::lifetime;
use crate::state::real::Symbol;
use libc::{c_char, c_int, pid_t};

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
    lifetime::before_exec();
    // SAFETY: exec requires a valid, null-terminated envp; we pass it (or a copy) on.
    unsafe { with_domain_env(envp, |env| real(path, argv, env)) }
}

unsafe fn fexecve_impl(
    real: unsafe extern "C" fn(c_int, Argv, Argv) -> c_int,
    fd: c_int,
    argv: Argv,
    envp: Argv,
) -> c_int {
    lifetime::before_exec();
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
        splicecow_registry::sys::set_errno(libc::ENOSYS);
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

variadic_hook! {
    /// `execl(3)`.
    execl => splicecow_execl;
    /// `execle(3)`.
    execle => splicecow_execle;
    /// `execlp(3)`.
    execlp => splicecow_execlp;
}
