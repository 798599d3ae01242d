//! `splicecow run --strict`: programs the preload cannot serve (statically linked, Go)
//! run under a seccomp filter whose user notifications this process answers: it is their
//! supervisor (see the README, "Strict mode").
//!
//! CMD gets the filter when its ELF image has no interpreter (static, static-pie) or is a
//! Go program (Go makes its system calls itself, even when linked dynamically); its
//! children inherit it across `fork` and `exec`. A dynamically linked CMD keeps the
//! preload alone and pays nothing new.

mod filter;
mod supervisor;
mod target;

use crate::doctor::{elf_linking, resolve, Linking};
use splicecow_registry::env::Mode;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// `SECCOMP_FILTER_FLAG_NEW_LISTENER` (Linux 5.0).
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
/// `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (Linux 5.19): once the supervisor has taken a
/// notification, only a fatal signal ends the caller's wait. Without it any handled
/// signal withdraws the call mid-answer: a `pwrite` to a regular file fails with `EINTR`
/// (never so without the filter), and an emulated splice that already moved bytes runs
/// again when the call restarts.
const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_ulong = 1 << 5;

/// What strict mode would do with a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// Statically linked: the preload cannot load into it; the filter covers it.
    Static,
    /// A Go program: raw system calls; the filter covers it.
    Go,
    /// Dynamically linked: the preload covers it, no filter.
    Dynamic,
    /// setuid/setgid: left out (`no_new_privs` would run it without its privileges).
    Setuid,
    /// Not found, unreadable, or not an ELF image (a script: its interpreter decides).
    Unknown(String),
}

impl Coverage {
    /// True when CMD gets the filter.
    pub fn filtered(&self) -> bool {
        matches!(self, Coverage::Static | Coverage::Go)
    }
}

/// How strict mode would treat `program` (a path or a name looked up in PATH; a `#!`
/// script is judged by its interpreter).
pub fn coverage(program: &OsStr) -> Coverage {
    let Some(path) = resolve(program) else {
        return Coverage::Unknown("not found".into());
    };
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) => return Coverage::Unknown(format!("cannot read it: {e}")),
    };
    if let Some(rest) = data.strip_prefix(b"#!") {
        let line = rest.split(|b| *b == b'\n').next().unwrap_or(b"");
        let line = String::from_utf8_lossy(line).into_owned();
        let mut words = line.split_whitespace();
        let mut interp = words.next();
        if interp.is_some_and(|i| i.ends_with("/env")) {
            interp = words.find(|w| !w.starts_with('-')).or(interp);
        }
        return match interp {
            Some(i) => coverage(OsStr::new(i)),
            None => Coverage::Unknown("a script without an interpreter".into()),
        };
    }
    let mode = std::fs::metadata(&path).map_or(0, |m| m.permissions().mode());
    if mode & 0o6000 != 0 {
        return Coverage::Setuid;
    }
    let is_go = is_go(&data);
    match elf_linking(&data) {
        None => Coverage::Unknown("not an ELF executable".into()),
        Some(_) if is_go => Coverage::Go,
        Some(Linking::Static) => Coverage::Static,
        Some(Linking::Dynamic(_)) => Coverage::Dynamic,
    }
}

/// True when the ELF image `data` is a Go program (it has Go's build information).
pub(crate) fn is_go(data: &[u8]) -> bool {
    data.windows(14).any(|w| w == b"\xff Go buildinf:")
}

/// True when this kernel offers user notification (`/proc/sys/kernel/seccomp/actions_avail`).
pub fn kernel_supports() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
        .is_ok_and(|s| s.split_whitespace().any(|a| a == "user_notif"))
}

/// Where the supervisor acts.
pub struct Domain {
    /// The domain name.
    pub name: String,
    /// Its mode (protect or detect settle or report; copy copies the emulated splices).
    pub mode: Mode,
    /// The detect report file, if any.
    pub report: Option<Vec<u8>>,
}

/// Arranges for `cmd` to start under the filter and starts the supervisor thread, which
/// takes the filter's listener from the child. Returns the child's end of the socket
/// that carries it: drop it once `cmd` is spawned. Prints one `splicecow:` line and
/// leaves `cmd` alone when the supervisor cannot be set up; if installing the filter
/// fails in the child, the supervisor prints the line and CMD runs without it.
pub fn arrange(cmd: &mut Command, program: &OsStr, domain: Domain) -> Option<OwnedFd> {
    if let Err(e) =
        splicecow_core::supervised::join(&domain.name, domain.mode, domain.report.as_deref())
    {
        let shown = program.to_string_lossy();
        eprintln!("splicecow: strict mode: {e}; {shown} runs without it");
        return None;
    }
    let mut pair = [0; 2];
    // SAFETY: socketpair fills the two-element array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    };
    if r != 0 {
        eprintln!(
            "splicecow: strict mode: socketpair: {}; {} runs without it",
            std::io::Error::last_os_error(),
            program.to_string_lossy()
        );
        return None;
    }
    // SAFETY: socketpair returned two fds that nothing else owns.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    let prog = filter::program();
    let child_end = theirs.as_raw_fd();
    let shown = program.to_string_lossy().into_owned();
    std::thread::Builder::new()
        .name("splicecow-supervisor".into())
        .spawn(move || {
            let listener = receive_listener(&ours);
            match listener {
                Ok(fd) => supervisor::serve(fd),
                Err(e) => eprintln!(
                    "splicecow: strict mode unavailable ({e}); {shown} runs without its filter"
                ),
            }
        })
        .expect("the supervisor thread starts");
    // SAFETY: the closure runs in the forked child before exec and makes only system
    // calls (prctl, seccomp, sendmsg, close), which are async-signal-safe; the filter
    // program was built before the fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            install_in_child(&prog, child_end);
            Ok(())
        });
    }
    Some(theirs)
}

/// In the child before exec: `no_new_privs`, the filter with a new listener, the listener
/// sent to the parent over `sock` (or the `errno` of what failed, in 4 bytes).
fn install_in_child(prog: &[libc::sock_filter], sock: RawFd) {
    let send_errno = |e: i32| {
        let bytes = e.to_ne_bytes();
        // SAFETY: writing 4 bytes of a local array.
        unsafe { libc::send(sock, bytes.as_ptr().cast(), 4, libc::MSG_NOSIGNAL) };
    };
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        send_errno(errno());
        return;
    }
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    let install = |flags: libc::c_ulong| {
        // SAFETY: fprog points at the filter, which outlives the call.
        unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &fprog as *const libc::sock_fprog,
            ) as i32
        }
    };
    let mut fd = install(SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV);
    if fd < 0 && errno() == libc::EINVAL {
        // Before Linux 5.19: signals may interrupt a trapped call (see the README).
        fd = install(SECCOMP_FILTER_FLAG_NEW_LISTENER);
    }
    if fd < 0 {
        send_errno(errno());
        return;
    }
    target::send_fd(sock, fd);
    // SAFETY: the listener is ours; the parent has its own copy now. Kept here, it would
    // keep notifications waiting for an answer after the supervisor is gone.
    unsafe { libc::close(fd) };
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Waits for the child's message: the listener, or why there is none (a child that died
/// before sending: end of file, once `run` dropped its copy of the child's end).
fn receive_listener(ours: &OwnedFd) -> Result<OwnedFd, String> {
    match target::recv_fd(ours.as_raw_fd()) {
        Ok(Ok(fd)) => Ok(fd),
        Ok(Err(e)) => Err(format!(
            "seccomp user notification: {}",
            std::io::Error::from_raw_os_error(e)
        )),
        Err(e) => Err(e),
    }
}
