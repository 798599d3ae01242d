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

use crate::doctor::resolve;
use splicecow_core::supervised::{self as sv, Program};
use splicecow_registry::env::{self as names, Mode};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
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
/// script is judged by its interpreter). The library's exec hooks ask the same
/// classifier ([`sv::classify`]).
pub fn coverage(program: &OsStr) -> Coverage {
    coverage_at_depth(program, 0)
}

fn coverage_at_depth(program: &OsStr, depth: u32) -> Coverage {
    let Some(path) = resolve(program) else {
        return Coverage::Unknown("not found".into());
    };
    let Ok(c_path) = CString::new(path.into_os_string().into_vec()) else {
        return Coverage::Unknown("a path with a NUL byte".into());
    };
    match sv::classify(&c_path) {
        Program::Static => Coverage::Static,
        Program::Go => Coverage::Go,
        Program::Dynamic => Coverage::Dynamic,
        Program::Setuid => Coverage::Setuid,
        // The kernel follows at most four interpreters.
        Program::Script { interpreter, .. } if depth < 4 => {
            coverage_at_depth(OsStr::from_bytes(interpreter.bytes()), depth + 1)
        }
        Program::Script { .. } => Coverage::Unknown("too many script interpreters".into()),
        Program::NotElf => Coverage::Unknown("not an ELF executable".into()),
        Program::Unreadable(e) => Coverage::Unknown(format!(
            "cannot read it: {}",
            std::io::Error::from_raw_os_error(e)
        )),
    }
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

/// Retires what filtered processes left live in the domain (see [`sv::sweep`]): call
/// once every process of the run is gone, and only after [`arrange`] returned true.
pub fn sweep() {
    sv::sweep();
}

/// The filtered-exec entry: `splicecow __filtered-exec PATH ARGV...` puts itself under
/// the filter, hands the listener to the domain's supervisor (named in
/// `SPLICECOW_SUPERVISOR`) and execs PATH with ARGV. The library's exec hooks exec it in
/// place of a static or Go program (`main` reads it before the subcommands).
pub const FILTERED_EXEC: &str = "__filtered-exec";

/// Starts the supervisor of a `--strict` domain: a listening socket that filtered
/// programs hand their filter's listener to (each served by a thread of its own), and the
/// variables that tell the domain's exec hooks to use it. When `filter_cmd`, `cmd` itself
/// starts under the filter. Prints one `splicecow:` line and leaves `cmd` alone when the
/// supervisor cannot be set up; if installing the filter fails in a program, the
/// supervisor prints the line and the program runs without it. True when the supervisor
/// runs (it has joined the domain).
pub fn arrange(cmd: &mut Command, program: &OsStr, domain: Domain, filter_cmd: bool) -> bool {
    let shown = program.to_string_lossy().into_owned();
    let unavailable = |e: &dyn std::fmt::Display| {
        eprintln!("splicecow: strict mode: {e}; {shown} runs without it");
        false
    };
    if let Err(e) = sv::join(&domain.name, domain.mode, domain.report.as_deref()) {
        return unavailable(&e);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return unavailable(&format!("cannot find splicecow's own program: {e}")),
    };
    let pid = std::process::id();
    let address = Address::of(pid);
    let socket = match address.listen() {
        Ok(s) => s,
        Err(e) => return unavailable(&format!("cannot listen for filters: {e}")),
    };
    std::thread::Builder::new()
        .name("splicecow-strict-accept".into())
        .spawn(move || accept_listeners(socket))
        .expect("the supervisor's accepting thread starts");
    let mut supervisor = OsString::from(format!("{pid}:"));
    supervisor.push(exe.as_os_str());
    cmd.env(names::STRICT, "1")
        .env(names::SUPERVISOR, supervisor);
    if !filter_cmd {
        return true;
    }
    let prog = filter::program();
    let no_supervisor = format!(
        "splicecow: strict mode's supervisor is unreachable; {shown} runs without the filter\n"
    );
    let name = program.as_encoded_bytes().to_vec();
    // SAFETY: the closure runs in the forked child before exec and makes only system
    // calls (socket, connect, prctl, seccomp, sendmsg, close, write), which are
    // async-signal-safe; everything it reads was built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if !install(&prog, &address, &name) {
                libc::write(2, no_supervisor.as_ptr().cast(), no_supervisor.len());
            }
            Ok(())
        });
    }
    true
}

/// The abstract unix socket a supervisor listens on for filters' listeners.
struct Address {
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl Address {
    /// The address of the supervisor with process id `pid` (`@splicecow-supervisor-PID`).
    fn of(pid: u32) -> Address {
        // SAFETY: sockaddr_un is plain data.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let name = format!("splicecow-supervisor-{pid}");
        // The first byte stays 0: an abstract name, gone with the socket.
        for (slot, b) in addr.sun_path[1..].iter_mut().zip(name.bytes()) {
            *slot = b as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
        Address {
            addr,
            len: len as libc::socklen_t,
        }
    }

    fn socket() -> RawFd {
        // SAFETY: plain system call.
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) }
    }

    /// A socket bound to the address and listening.
    fn listen(&self) -> std::io::Result<OwnedFd> {
        let fd = Self::socket();
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: addr is a valid sockaddr_un of `len` bytes.
        let bound = unsafe {
            libc::bind(
                fd,
                (&self.addr as *const libc::sockaddr_un).cast(),
                self.len,
            ) == 0
                && libc::listen(fd, 64) == 0
        };
        if bound {
            Ok(sock)
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// A socket connected to the address, or -1. Async-signal-safe.
    fn connect(&self) -> RawFd {
        let fd = Self::socket();
        if fd < 0 {
            return -1;
        }
        let addr = (&self.addr as *const libc::sockaddr_un).cast();
        // SAFETY: addr is a valid sockaddr_un of `len` bytes.
        if unsafe { libc::connect(fd, addr, self.len) } != 0 {
            // SAFETY: our own fd.
            unsafe { libc::close(fd) };
            return -1;
        }
        fd
    }
}

/// Accepts filtered programs' connections for as long as the run lives; each hands over
/// its filter's listener (served by a thread of its own) or says why it has none.
fn accept_listeners(socket: OwnedFd) {
    loop {
        // SAFETY: plain system call; the peer's address is not wanted.
        let fd = unsafe {
            libc::accept4(
                socket.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR | libc::ECONNABORTED | libc::EMFILE | libc::ENFILE) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
                _ => return,
            }
        }
        // SAFETY: a new fd that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        if !same_user(&conn) {
            continue;
        }
        let _ = std::thread::Builder::new()
            .name("splicecow-supervisor".into())
            .spawn(move || match target::recv_fd(conn.as_raw_fd()) {
                Ok((Ok(listener), _)) => supervisor::serve(listener),
                Ok((Err(e), program)) => eprintln!(
                    "splicecow: strict mode unavailable (seccomp user notification: {}); \
                     {program} runs without its filter",
                    std::io::Error::from_raw_os_error(e)
                ),
                Err(_) => {}
            });
    }
}

/// True when the process at the other end of `conn` runs as this process's user (an
/// abstract socket has no permissions of its own).
fn same_user(conn: &OwnedFd) -> bool {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len describe a buffer of the size SO_PEERCRED fills.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: plain system call.
    r == 0 && cred.uid == unsafe { libc::geteuid() }
}

/// Puts the calling process under the filter and hands the listener to the supervisor
/// at `address` (or the `errno` of what failed), naming `program` for its messages.
/// False when the supervisor cannot be reached (then nothing is installed).
/// Async-signal-safe (no allocation): it runs in a forked child before exec.
fn install(prog: &[libc::sock_filter], address: &Address, program: &[u8]) -> bool {
    let sock = address.connect();
    if sock < 0 {
        return false;
    }
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        target::send_errno(sock, errno(), program);
    } else {
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
        let mut fd =
            install(SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV);
        if fd < 0 && errno() == libc::EINVAL {
            // Before Linux 5.19: signals may interrupt a trapped call (see the README).
            fd = install(SECCOMP_FILTER_FLAG_NEW_LISTENER);
        }
        if fd < 0 {
            target::send_errno(sock, errno(), program);
        } else {
            target::send_fd(sock, fd, program);
            // SAFETY: the listener is ours; the supervisor has its own copy now. Kept
            // here, it would keep notifications waiting after the supervisor is gone.
            unsafe { libc::close(fd) };
        }
    }
    // SAFETY: our own fd.
    unsafe { libc::close(sock) };
    true
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `splicecow __filtered-exec PATH ARGV...` (see [`FILTERED_EXEC`]): installs the filter
/// for the supervisor named in `SPLICECOW_SUPERVISOR`, then execs PATH. Returns only when
/// the exec fails (126 or 127, as a shell would).
pub fn filtered_exec(args: Vec<OsString>) -> i32 {
    let mut args = args.into_iter();
    let Some(path) = args.next() else {
        eprintln!("splicecow: {FILTERED_EXEC} needs a program");
        return 2;
    };
    let shown = path.to_string_lossy().into_owned();
    let supervisor = std::env::var_os(names::SUPERVISOR)
        .and_then(|v| v.to_str()?.split(':').next()?.parse::<u32>().ok());
    let installed = match supervisor {
        Some(pid) => install(&filter::program(), &Address::of(pid), path.as_bytes()),
        None => false,
    };
    if !installed {
        eprintln!(
            "splicecow: strict mode's supervisor is unreachable ({} = {:?}); {shown} runs \
             without the filter",
            names::SUPERVISOR,
            std::env::var_os(names::SUPERVISOR).unwrap_or_default()
        );
    }
    let c = |s: OsString| CString::new(s.into_vec()).ok();
    let (Some(c_path), Some(argv)) = (c(path), args.map(c).collect::<Option<Vec<_>>>()) else {
        eprintln!("splicecow: {shown}: an argument with a NUL byte");
        return 2;
    };
    let mut argv: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    extern "C" {
        static environ: *const *const libc::c_char;
    }
    // SAFETY: a C string path and null-terminated argv; `environ` is this process's
    // environment, which the caller's exec gave us. The raw system call, not libc's
    // execve: the library's exec hook would send this exec back here.
    unsafe { libc::syscall(libc::SYS_execve, c_path.as_ptr(), argv.as_ptr(), environ) };
    let e = std::io::Error::last_os_error();
    eprintln!("splicecow: cannot run {shown}: {e}");
    if e.raw_os_error() == Some(libc::ENOENT) {
        127
    } else {
        126
    }
}
