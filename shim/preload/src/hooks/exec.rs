//! The `exec` and `posix_spawn` families: each passes its environment through
//! `ops::exec_env`, which counts a child that leaves the domain, and asks
//! `ops::strict_exec` whether the new program must start under strict mode's filter
//! (then the call execs the filtered-exec entry instead). The variadic `execl`, `execle`
//! and `execlp` are C bodies (`exec_variadic.c`) that call the hooks below.

use crate::hooks::{hooks, variadic_hook};
use crate::ops::exec_env::{with_domain_env, Argv};
use crate::ops::lifetime;
use crate::ops::strict_exec::{self, Redirect};
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
    fn execve(path: *const c_char, argv: Argv, envp: Argv) -> c_int => with exec_at_path;
    /// `execvpe(3)`.
    fn execvpe(file: *const c_char, argv: Argv, envp: Argv) -> c_int => with exec_searching;
    /// `execv(3)`: `execve` with `environ`.
    fn execv(path: *const c_char, argv: Argv) -> c_int => with execv_impl;
    /// `execvp(3)`: `execvpe` with `environ`.
    fn execvp(file: *const c_char, argv: Argv) -> c_int => with execvp_impl;
    /// `fexecve(3)`.
    fn fexecve(fd: c_int, argv: Argv, envp: Argv) -> c_int => with fexecve_impl;
    /// `posix_spawn(3)`.
    fn posix_spawn(pid: *mut pid_t, path: *const c_char, actions: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: Argv, envp: Argv) -> c_int => with spawn_at_path;
    /// `posix_spawnp(3)`.
    fn posix_spawnp(pid: *mut pid_t, file: *const c_char, actions: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: Argv, envp: Argv) -> c_int => with spawn_searching;
}

unsafe fn exec_at_path(real: ExecveFn, path: *const c_char, argv: Argv, envp: Argv) -> c_int {
    // SAFETY: the caller's arguments, as `execve` requires them.
    unsafe { exec(real, path, argv, envp, false) }
}

unsafe fn exec_searching(real: ExecveFn, file: *const c_char, argv: Argv, envp: Argv) -> c_int {
    // SAFETY: the caller's arguments, as `execvpe` requires them.
    unsafe { exec(real, file, argv, envp, true) }
}

/// Calls `real`, an `execve`-shaped function that looks `path` up in `PATH` when
/// `search`, for the new program (or for the filtered-exec entry that starts it).
unsafe fn exec(real: ExecveFn, path: *const c_char, argv: Argv, envp: Argv, search: bool) -> c_int {
    lifetime::before_exec();
    let mut redirect = Redirect::default();
    // SAFETY: exec requires a C string path and null-terminated argv and envp.
    let (path, argv) = if unsafe { strict_exec::redirect(path, argv, envp, search, &mut redirect) }
    {
        (redirect.path(), redirect.argv())
    } else {
        (path, argv)
    };
    // SAFETY: as above; the redirect's strings live until the call returns.
    unsafe { with_domain_env(envp, |env| real(path, argv, env)) }
}

unsafe fn fexecve_impl(
    real: unsafe extern "C" fn(c_int, Argv, Argv) -> c_int,
    fd: c_int,
    argv: Argv,
    envp: Argv,
) -> c_int {
    lifetime::before_exec();
    // SAFETY: as in `exec`. (Not redirected for strict mode: the fd may be close-on-exec,
    // and the filtered-exec entry execs a path.)
    unsafe { with_domain_env(envp, |env| real(fd, argv, env)) }
}

unsafe fn execv_impl(
    _real: unsafe extern "C" fn(*const c_char, Argv) -> c_int,
    path: *const c_char,
    argv: Argv,
) -> c_int {
    static EXECVE: Symbol = Symbol::new("execve\0");
    // SAFETY: `environ` is the process environment; EXECVE is libc's execve.
    unsafe { via(&EXECVE, path, argv, environ, false) }
}

unsafe fn execvp_impl(
    _real: unsafe extern "C" fn(*const c_char, Argv) -> c_int,
    file: *const c_char,
    argv: Argv,
) -> c_int {
    static EXECVPE: Symbol = Symbol::new("execvpe\0");
    // SAFETY: as in `execv_impl`.
    unsafe { via(&EXECVPE, file, argv, environ, true) }
}

/// Calls the next definition of an `execve`-shaped function with the domain's env.
unsafe fn via(sym: &Symbol, path: *const c_char, argv: Argv, envp: Argv, search: bool) -> c_int {
    let addr = sym.get();
    if addr.is_null() {
        splicecow_registry::sys::set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `addr` is libc's definition of a function with the ExecveFn signature.
    let real: ExecveFn = unsafe { std::mem::transmute::<*mut std::ffi::c_void, ExecveFn>(addr) };
    // SAFETY: as in `exec`.
    unsafe { exec(real, path, argv, envp, search) }
}

unsafe fn spawn_at_path(
    real: SpawnFn,
    pid: *mut pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    // SAFETY: the caller's arguments, as `posix_spawn` requires them.
    unsafe {
        spawn(
            real,
            Spawn {
                pid,
                path,
                actions,
                attr,
                argv,
                envp,
            },
            false,
        )
    }
}

unsafe fn spawn_searching(
    real: SpawnFn,
    pid: *mut pid_t,
    file: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    // SAFETY: the caller's arguments, as `posix_spawnp` requires them.
    unsafe {
        spawn(
            real,
            Spawn {
                pid,
                path: file,
                actions,
                attr,
                argv,
                envp,
            },
            true,
        )
    }
}

/// The arguments of a `posix_spawn` call.
struct Spawn {
    pid: *mut pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
}

/// Calls `real`, a `posix_spawn`-shaped function that looks the path up in `PATH` when
/// `search`, for the new program (or for the filtered-exec entry that starts it).
unsafe fn spawn(real: SpawnFn, s: Spawn, search: bool) -> c_int {
    let mut redirect = Redirect::default();
    // SAFETY: posix_spawn requires a C string path and null-terminated argv and envp.
    let (path, argv) =
        if unsafe { strict_exec::redirect(s.path, s.argv, s.envp, search, &mut redirect) } {
            (redirect.path(), redirect.argv())
        } else {
            (s.path, s.argv)
        };
    // SAFETY: as above; the redirect's strings live until the call returns.
    unsafe {
        with_domain_env(s.envp, |env| {
            real(s.pid, path, s.actions, s.attr, argv, env)
        })
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
