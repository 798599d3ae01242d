//! `splicecow doctor`: can this machine, and a given program, be protected?

use crate::demo::{self, Case};
use crate::location;
use crate::DoctorArgs;
use splicecow_registry::layout::SEGMENTS_PER_PIPE;
use splicecow_registry::{env, Capacity};
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// One check's result: passed or not, and the line's text (with the reason).
struct Check {
    ok: bool,
    text: String,
}

fn pass(text: impl Into<String>) -> Check {
    Check {
        ok: true,
        text: text.into(),
    }
}

fn fail(text: impl Into<String>) -> Check {
    Check {
        ok: false,
        text: text.into(),
    }
}

/// Runs `splicecow doctor`; returns the exit status.
pub fn main(args: DoctorArgs) -> i32 {
    let mut checks = vec![
        hazard(),
        kernel_copy(),
        dev_shm(),
        registry_size(),
        proc_fd_reopen(),
        library(),
    ];
    if let Some(p) = &args.program {
        checks.extend(program(p));
    }
    for c in &checks {
        println!("{} {}", if c.ok { "✓" } else { "✗" }, c.text);
    }
    if checks.iter().all(|c| c.ok) {
        0
    } else {
        1
    }
}

/// (a) The reproducer: splice, pwrite, read the pipe, in a process without splicecow.
fn hazard() -> Check {
    match demo::run_case_process(Case::Pwrite, None) {
        Ok(o) if o.mismatched > 0 => pass(format!(
            "kernel shows the splice hazard (splicecow is useful here): a pwrite after splice changed {} bytes in the pipe",
            o.mismatched
        )),
        Ok(_) => fail(format!(
            "could not reproduce the splice hazard in {}: the pipe kept the spliced bytes",
            demo::scratch_dir().display()
        )),
        Err(e) => fail(format!("could not run the hazard reproducer: {e}")),
    }
}

/// (a') Whether this kernel already copies on splice (then the library stands down).
fn kernel_copy() -> Check {
    if splicecow_registry::sys::kernel_copies_on_splice() {
        pass("this kernel copies on splice: new domains stand down (kernel_copies_on_splice: 1)")
    } else {
        pass("this kernel hands pipes page-cache pages on splice: splicecow protects them")
    }
}

/// (b) The registries live in /dev/shm.
fn dev_shm() -> Check {
    let path = format!("/dev/shm/splicecow-doctor-{}", std::process::id());
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|_| std::fs::remove_file(&path));
    match r {
        Ok(()) => pass("/dev/shm is writable (registries live there)"),
        Err(e) => fail(format!(
            "/dev/shm is not writable: {e} (splicecow run falls back to copy mode)"
        )),
    }
}

/// (b') What a registry created from this environment holds and costs (a bad
/// `SPLICECOW_REGISTRY_PIPES` fails the check: new domains would get the default).
fn registry_size() -> Check {
    let (c, warning) = Capacity::from_env();
    let text = format!(
        "a new domain's registry holds {} pipes ({SEGMENTS_PER_PIPE} segments each), {} \
         files and {} mapping records: {} bytes of sparse /dev/shm (set {})",
        c.pipes,
        c.files,
        c.maps,
        c.regions().size,
        env::REGISTRY_PIPES
    );
    match warning {
        None => pass(text),
        Some(w) => fail(format!("{w}: {text}")),
    }
}

/// (c) Settle reopens another process's pipe through `/proc/<pid>/fd/<n>`.
fn proc_fd_reopen() -> Check {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return fail(format!("pipe failed: {}", std::io::Error::last_os_error()));
    }
    let path = CString::new(format!("/proc/self/fd/{}", fds[0])).expect("no NUL");
    // SAFETY: open of a NUL-terminated path; fstat writes into zeroed stat buffers;
    // every fd opened here is closed before returning.
    let result = unsafe {
        let fd = libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        );
        let r = if fd < 0 {
            Err(std::io::Error::last_os_error().to_string())
        } else {
            let mut a = std::mem::zeroed::<libc::stat>();
            let mut b = std::mem::zeroed::<libc::stat>();
            let same = libc::fstat(fds[0], &mut a) == 0
                && libc::fstat(fd, &mut b) == 0
                && (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino);
            libc::close(fd);
            if same {
                Ok(())
            } else {
                Err("it gave another inode".to_string())
            }
        };
        libc::close(fds[0]);
        libc::close(fds[1]);
        r
    };
    match result {
        Ok(()) => pass("a pipe can be reopened through /proc/<pid>/fd (settle can reach pipes)"),
        Err(e) => fail(format!(
            "reopening a pipe through /proc/self/fd failed: {e} (settle cannot reach other processes' pipes)"
        )),
    }
}

/// (d) The library `run` would preload, and the layout it was found in.
fn library() -> Check {
    let lib = location::find();
    if lib.found {
        pass(format!(
            "library found at {} ({})",
            lib.path.display(),
            lib.describe_origin()
        ))
    } else {
        let searched: Vec<String> = lib
            .searched
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        fail(format!(
            "library not found at {} (build it with `cargo build --release`, install it with \
             scripts/install or the Debian package, or set SPLICECOW_LIB)",
            searched.join(", ")
        ))
    }
}

/// Looks `name` up like a shell: a name with a slash is a path, else searched in PATH.
pub(crate) fn resolve(name: &OsStr) -> Option<PathBuf> {
    if name.as_bytes().contains(&b'/') {
        let p = PathBuf::from(name);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What the ELF program headers say about linking.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Linking {
    /// Has `PT_INTERP`: ld.so loads it and honours `LD_PRELOAD`.
    Dynamic(String),
    /// No interpreter (static, or static-pie).
    Static,
}

/// Reads the program headers of an ELF image; `None` if it is not a valid ELF file.
pub(crate) fn elf_linking(data: &[u8]) -> Option<Linking> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return None;
    }
    let is64 = data[4] == 2;
    let little = data[5] == 1;
    let rd = |off: usize, size: usize| -> Option<u64> {
        let b = data.get(off..off + size)?;
        let mut v = 0u64;
        for i in 0..size {
            let byte = if little { b[size - 1 - i] } else { b[i] };
            v = (v << 8) | byte as u64;
        }
        Some(v)
    };
    let (phoff, phentsize, phnum) = if is64 {
        (rd(0x20, 8)?, rd(0x36, 2)?, rd(0x38, 2)?)
    } else {
        (rd(0x1c, 4)?, rd(0x2a, 2)?, rd(0x2c, 2)?)
    };
    for i in 0..phnum {
        let ph = (phoff + i * phentsize) as usize;
        if rd(ph, 4)? == 3 {
            // PT_INTERP: p_offset and p_filesz name the interpreter's path.
            let (off, size) = if is64 {
                (rd(ph + 8, 8)?, rd(ph + 32, 8)?)
            } else {
                (rd(ph + 4, 4)?, rd(ph + 16, 4)?)
            };
            let raw = data.get(off as usize..(off + size) as usize)?;
            let interp = String::from_utf8_lossy(raw)
                .trim_end_matches('\0')
                .to_string();
            return Some(Linking::Dynamic(interp));
        }
    }
    Some(Linking::Static)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// (e) Can splicecow see PROGRAM's calls?
fn program(name: &OsStr) -> Vec<Check> {
    let shown = name.to_string_lossy();
    let Some(path) = resolve(name) else {
        return vec![fail(format!(
            "{shown}: not found (not a path and not in PATH)"
        ))];
    };
    let shown = path.display().to_string();
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) => return vec![fail(format!("{shown}: cannot read it: {e}"))],
    };
    let mut checks = Vec::new();
    // A script: check the interpreter that runs it instead.
    if let Some(rest) = data.strip_prefix(b"#!") {
        let line = rest.split(|b| *b == b'\n').next().unwrap_or(b"");
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let mut interp = words.next();
        // `#!/usr/bin/env [-S] NAME`: the program that matters is NAME.
        if interp.is_some_and(|i| i.ends_with("/env")) {
            interp = words.find(|w| !w.starts_with('-')).or(interp);
        }
        let Some(interp) = interp.map(OsString::from) else {
            return vec![fail(format!("{shown}: a script without an interpreter"))];
        };
        checks.push(pass(format!(
            "{shown} is a script run by {}; checking that",
            interp.to_string_lossy()
        )));
        checks.extend(program(&interp));
        return checks;
    }
    let Some(linking) = elf_linking(&data) else {
        return vec![fail(format!("{shown} is not an ELF executable"))];
    };
    checks.push(pass(format!("{shown} is an ELF executable")));
    checks.push(match linking {
        Linking::Dynamic(interp) => pass(format!("dynamically linked (interpreter {interp})")),
        Linking::Static => fail("statically linked: LD_PRELOAD cannot load splicecow into it"),
    });
    let mode = std::fs::metadata(&path).map_or(0, |m| m.permissions().mode());
    checks.push(if mode & 0o6000 != 0 {
        let which = if mode & 0o4000 != 0 {
            "setuid"
        } else {
            "setgid"
        };
        fail(format!(
            "{which}: the dynamic loader ignores LD_PRELOAD for it (unless run by its owner)"
        ))
    } else {
        pass("not setuid/setgid")
    });
    checks.push(
        if contains(&data, b".go.buildinfo") || contains(&data, b"\xff Go buildinf:") {
            fail(
                "a Go program: Go's runtime makes system calls directly, splicecow cannot see them",
            )
        } else {
            pass("not a Go program")
        },
    );
    checks.push(if contains(&data, b"io_uring") {
        fail(
            "uses io_uring (liburing or io_uring_setup): I/O submitted that way bypasses splicecow",
        )
    } else {
        pass("no sign of io_uring")
    });
    checks.push(strict_mode(&path));
    checks
}

/// (f) What `run --strict` would do with the program.
fn strict_mode(path: &std::path::Path) -> Check {
    use crate::strict::Coverage;
    let kernel = if crate::strict::kernel_supports() {
        ""
    } else {
        " (but this kernel has no seccomp user notification: it would run unprotected)"
    };
    match crate::strict::coverage(path.as_os_str()) {
        Coverage::Static => pass(format!(
            "strict mode (`splicecow run --strict`) covers it: statically linked, it runs \
             under the seccomp filter{kernel}"
        )),
        Coverage::Go => pass(format!(
            "strict mode (`splicecow run --strict`) covers it: a Go program, it runs under \
             the seccomp filter{kernel}"
        )),
        Coverage::Dynamic => pass(
            "strict mode adds nothing for it: dynamically linked, the preload covers it \
             (its raw system calls, if any, stay unseen)",
        ),
        Coverage::Setuid => fail(
            "strict mode leaves it out: setuid/setgid, and no_new_privs would run it without \
             its privileges",
        ),
        Coverage::Unknown(why) => fail(format!("strict mode cannot judge it: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_headers_are_read() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(matches!(elf_linking(&me), Some(Linking::Dynamic(_))));
        assert_eq!(elf_linking(b"#!/bin/sh\n"), None);
    }
}
