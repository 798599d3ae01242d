//! C stdio output: what a stream's buffered bytes may change when they reach the kernel
//! (glibc writes them through an internal `write` no hook sees), and the exit flush.

use crate::ops::intent::{Kind, Mutation, Span, Target};
use crate::ops::{lifetime, mutation};
use crate::state::guard::{keep_errno, Inside};
use libc::FILE;

/// The mutation output to stream `s` may cause: its file from the current offset on.
pub fn stream(s: *mut FILE) -> Mutation {
    Mutation {
        target: Target::Stream(s),
        span: Span::FromCursor,
        kind: Kind::Stdio,
    }
}

/// Before output to stream `s` may reach the kernel.
pub fn before_output(s: *mut FILE) {
    mutation::before(stream(s));
}

/// Before a formatted write to `fd` at its offset (`dprintf`).
pub fn before_fd_output(fd: i32) {
    mutation::before(Mutation {
        target: Target::Fd(fd),
        span: Span::FromCursor,
        kind: Kind::Stdio,
    });
}

/// Before `fclose` of stream `s`: its output is flushed and its fd closed.
pub fn before_close(s: *mut FILE) {
    if mutation::may_conflict() {
        before_output(s);
    }
    if !s.is_null() {
        // SAFETY: fclose requires a valid stream; fileno only reads its fd.
        lifetime::before_close(unsafe { libc::fileno(s) });
    }
}

/// Before `fflush` of stream `s`, or of all streams for null.
pub fn before_flush(s: *mut FILE) {
    if s.is_null() {
        before_all_open_files();
    } else {
        before_output(s);
    }
}

/// Settles, for every open fd of this process on a tracked regular file, everything
/// from its offset on: buffered stdio output of any stream may be written there next
/// (`fflush(NULL)`, exit). Allocates; never reached from a signal-safe function.
pub fn before_all_open_files() {
    if mutation::active_registry().is_none() {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    for fd in fds {
        before_fd_output(fd);
    }
}

/// Registers the exit flush handler. Called once, from the library constructor.
pub fn install() {
    // SAFETY: registering a plain extern "C" handler; this library is never unloaded.
    unsafe { libc::atexit(before_exit_flush) };
}

/// The `atexit` handler: runs after the program's own handlers and before glibc flushes
/// every stream, so that final flush cannot change spliced bytes.
extern "C" fn before_exit_flush() {
    if let Some(_inside) = Inside::enter() {
        keep_errno(before_all_open_files);
    }
}
