//! Whom the calling thread acts for. In a preloaded process: always itself. In strict
//! mode's supervisor (`splicecow run --strict`), a thread serving a filtered process's
//! call acts for that process: the registry then names it as the splicer and holder
//! (with its own fd numbers, not the supervisor's duplicates), and reports name it as the
//! mutating process. The lock owner stays the thread that really holds the lock.

use splicecow_registry::sys;
use std::cell::Cell;

/// A process served by another one.
#[derive(Debug, Clone, Copy)]
pub struct Subject {
    /// Its process id.
    pub pid: i32,
    /// (duplicate in this process, number in the subject) for the fds of the call.
    pub fds: [(i32, i32); 2],
}

thread_local! {
    static SUBJECT: Cell<Option<Subject>> = const { Cell::new(None) };
}

/// Runs `f` acting for `subject`.
pub fn acting_for<T>(subject: Subject, f: impl FnOnce() -> T) -> T {
    let before = SUBJECT.with(|s| s.replace(Some(subject)));
    let r = f();
    SUBJECT.with(|s| s.set(before));
    r
}

fn current() -> Option<Subject> {
    SUBJECT.try_with(Cell::get).ok().flatten()
}

/// The process the calling thread acts for.
pub fn pid() -> i32 {
    current().map_or_else(sys::getpid, |s| s.pid)
}

/// The number of this process's fd `fd` in the process the calling thread acts for.
pub fn fd(fd: i32) -> i32 {
    current()
        .and_then(|s| {
            s.fds
                .iter()
                .find(|&&(local, _)| local == fd)
                .map(|&(_, theirs)| theirs)
        })
        .unwrap_or(fd)
}

/// `/proc/<pid>/exe` of the process the calling thread acts for.
pub fn exe_link() -> String {
    match current() {
        Some(s) => format!("/proc/{}/exe", s.pid),
        None => "/proc/self/exe".to_string(),
    }
}
