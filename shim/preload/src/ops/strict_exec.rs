//! Strict mode across `exec`: in a `splicecow run --strict` domain (`SPLICECOW_STRICT=1`
//! in the new program's environment, the supervisor named in `SPLICECOW_SUPERVISOR`), an
//! exec of a program the preload cannot serve (statically linked, Go, or a script such a
//! program interprets) becomes an exec of splicecow's filtered-exec entry
//! (`splicecow __filtered-exec PATH ARGV...`), which puts itself under the seccomp
//! filter, hands the listener to the supervisor, and then execs PATH with ARGV and the
//! same environment. Programs the preload serves exec as they are.

use crate::ops::exec_env::{c_strings, Argv};
use crate::state::program::{classify, find_in_path, CPath, Program};
use crate::state::runtime;
use libc::c_char;
use splicecow_registry::env as names;
use std::ffi::CStr;

/// Most arguments passed through the filtered-exec entry (more: the exec runs as it is,
/// unfiltered, and says so).
pub const MAX_ARGS: usize = 4096;

/// The filtered-exec entry's first argument (the CLI's `FILTERED_EXEC`).
const ENTRY: &CStr = c"__filtered-exec";

/// The exec to make instead of the caller's: the filtered-exec entry and its arguments.
pub struct Redirect {
    exe: CPath,
    target: CPath,
    argv: [*const c_char; MAX_ARGS + 4],
}

impl Default for Redirect {
    fn default() -> Self {
        Redirect {
            exe: CPath::default(),
            target: CPath::default(),
            argv: [std::ptr::null(); MAX_ARGS + 4],
        }
    }
}

impl Redirect {
    /// The program to exec.
    pub fn path(&self) -> *const c_char {
        self.exe.as_cstr().as_ptr()
    }

    /// Its argument vector.
    pub fn argv(&self) -> Argv {
        self.argv.as_ptr()
    }
}

/// Fills `out` and returns true when the exec of `path` (looked up in `PATH` when
/// `search` and it has no `/`, as `execvp` and `posix_spawnp` do) with environment
/// `envp` must go through the filtered-exec entry.
///
/// # Safety
/// `path`, `argv` and `envp` are what the exec call itself requires: a C string and
/// null-terminated arrays of C strings (`argv` and `envp` may be null).
pub unsafe fn redirect(
    path: *const c_char,
    argv: Argv,
    envp: Argv,
    search: bool,
    out: &mut Redirect,
) -> bool {
    // SAFETY: the caller's envp, as the exec call requires it.
    let strict = unsafe { env_value(envp, names::STRICT) };
    match strict {
        None | Some(b"0") | Some(b"") => return false,
        Some(b"1") => {}
        Some(other) => {
            let shown = String::from_utf8_lossy(other);
            runtime::warn(&format!(
                "{}={shown}: not 0 or 1; strict mode is off for this exec",
                names::STRICT
            ));
            return false;
        }
    }
    if path.is_null() {
        return false;
    }
    // SAFETY: exec requires path to be a C string.
    let name = unsafe { CStr::from_ptr(path) }.to_bytes();
    let found = if search && !name.contains(&b'/') {
        find_in_path(name, search_path().unwrap_or(b"/bin:/usr/bin"))
    } else {
        CPath::join(&[name])
    };
    let Some(target) = found else {
        return false;
    };
    if !needs_filter(&target) {
        return false;
    }
    // SAFETY: as above.
    // Its value is `PID:EXE`: the supervisor's process and the filtered-exec entry's program.
    let exe = unsafe { env_value(envp, names::SUPERVISOR) }
        .and_then(|v| {
            v.iter()
                .position(|&b| b == b':')
                .and_then(|i| v.get(i + 1..))
        })
        .and_then(|exe| CPath::join(&[exe]));
    let shown = String::from_utf8_lossy(target.bytes()).into_owned();
    let Some(exe) = exe else {
        runtime::warn(&format!(
            "{}=1 but no supervisor ({} unset; start the domain with `splicecow run \
             --strict`): {shown} runs without strict mode's filter",
            names::STRICT,
            names::SUPERVISOR
        ));
        return false;
    };
    // SAFETY: a NUL-terminated path of ours. A program the caller may not execute fails
    // its own exec, with the kernel's errno.
    if unsafe { libc::syscall(libc::SYS_access, target.as_cstr().as_ptr(), libc::X_OK) } != 0 {
        return false;
    }
    out.exe = exe;
    out.target = target;
    out.argv[0] = out.exe.as_cstr().as_ptr();
    out.argv[1] = ENTRY.as_ptr();
    out.argv[2] = out.target.as_cstr().as_ptr();
    let mut n = 3;
    // SAFETY: exec requires argv to be null or a null-terminated array of C strings.
    for arg in unsafe { c_strings(argv) } {
        if n == MAX_ARGS + 3 {
            runtime::warn(&format!(
                "more than {MAX_ARGS} arguments: {shown} runs without strict mode's filter"
            ));
            return false;
        }
        if let Some(slot) = out.argv.get_mut(n) {
            *slot = arg.as_ptr();
        }
        n += 1;
    }
    if let Some(slot) = out.argv.get_mut(n) {
        *slot = std::ptr::null();
    }
    true
}

/// True when `path` is a program strict mode's filter must cover: statically linked, Go,
/// or a script whose interpreter is (followed as deep as the kernel follows them).
fn needs_filter(path: &CPath) -> bool {
    let mut program = classify(path.as_cstr());
    for _ in 0..4 {
        match program {
            Program::Static | Program::Go => return true,
            Program::Script {
                interpreter,
                via_env,
            } => {
                let next = if via_env {
                    find_in_path(interpreter.bytes(), search_path().unwrap_or(b""))
                } else {
                    Some(interpreter)
                };
                let Some(next) = next else { return false };
                program = classify(next.as_cstr());
            }
            _ => return false,
        }
    }
    false
}

/// This process's `PATH`, which `execvp` and `posix_spawnp` search (read without
/// allocating: an exec hook may run in a `vfork` child).
fn search_path() -> Option<&'static [u8]> {
    // SAFETY: getenv returns null or a C string that lives as long as the environment
    // is not changed; the exec hook uses it before returning.
    let p = unsafe { libc::getenv(c"PATH".as_ptr()) };
    // SAFETY: non-null: a C string, as above.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// The value of `name` in `envp` (the first entry, as `getenv` finds it).
///
/// # Safety
/// `envp` is null or a null-terminated array of C strings.
unsafe fn env_value<'a>(envp: Argv, name: &str) -> Option<&'a [u8]> {
    // SAFETY: as the caller promises.
    unsafe { c_strings(envp) }.find_map(|entry| {
        entry
            .to_bytes()
            .strip_prefix(name.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
    })
}
