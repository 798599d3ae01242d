//! The fd identity cache: what each fd number of this process names (a regular file or
//! a pipe and its inode, or something else), learned with one `fstat` the first time a
//! hook asks and then answered from memory, so the splice side and the busy mutation
//! check cost no system call.
//!
//! Why it is never wrong: an fd number only changes what it names when it is closed or
//! replaced and then given out again. Every call through which a program closes or
//! replaces fds is hooked and forgets the number before and after the real call (`close`,
//! `close_range`, `closefrom`, `dup2`/`dup3` over it, and libc's own closes of what the
//! program holds: `fclose`, `freopen`, `pclose`, `closedir`, `endmntent`, `daemon`,
//! `login_tty`); and every call through which a program gets a new fd is hooked and
//! forgets the number it returns (`open*`, `creat`, `fopen`, `tmpfile`, `mkstemp*`,
//! `opendir`, `popen`, `pipe`, `pipe2`, `socket`, `socketpair`, `accept*`, `dup`,
//! `fcntl(F_DUPFD*)`, `memfd_create`, `eventfd`, `timerfd_create`, `signalfd`,
//! `epoll_create*`, `inotify_init*`, `fanotify_init`, `pidfd_open`, `open_by_handle_at`,
//! `posix_openpt`, `getpt`, `shm_open`, and the `SCM_RIGHTS` fds of `recvmsg`/`recvmmsg`).
//! So a close the shim cannot see (a raw `close` system call) leaves a stale entry only
//! until the number is given out again through libc. A child on this process's memory
//! (`vfork`, `clone(CLONE_VM)`) has its own fd table: it neither reads nor fills the
//! cache. `unshare(CLONE_FILES)` gives one thread its own table: the cache is then off
//! for good. What stays outside: a number closed *and* given out again without libc
//! (raw system calls or io_uring for both, a program whose fd handling bypasses libc the
//! way its writes then do too), and a program that uses an fd in one thread while another
//! thread closes it (already a race in the program: its own call may reach whatever the
//! number names next).
//!
//! Each entry is a generation counter plus the identity tagged with the generation it
//! was learned in: forgetting bumps the generation (one atomic add, safe in a signal
//! handler), and an identity whose tag is not the current generation is not used.

use crate::state::fd::FdKind;
use splicecow_registry::bounded::at;
use splicecow_registry::{sys, FileKey};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// fds at or above this are not cached (asked of the kernel every time).
pub const MAX_CACHED_FD: usize = 1 << 14;

/// Bits of the generation kept in an entry's tag.
const TAG_MASK: u32 = 0x00FF_FFFF;

/// Kind codes in an entry's low byte (0: nothing learned).
const KIND_OTHER: u64 = 1;
const KIND_PIPE: u64 = 2;
const KIND_REGULAR: u64 = 3;
/// A regular file learned to be one whose bytes cannot change (see `unchangeable`).
const FLAG_UNCHANGEABLE: u64 = 1 << 4;
/// A regular file whose changeability has been looked at.
const FLAG_CHANGE_KNOWN: u64 = 1 << 5;

/// One fd number's entry.
struct Entry {
    /// Bumped every time the number may have changed meaning.
    generation: AtomicU32,
    /// `st_dev` (high 32 bits), tag (bits 8..32), flags and kind (low byte).
    meta: AtomicU64,
    /// `st_ino`.
    ino: AtomicU64,
}

static ENTRIES: [Entry; MAX_CACHED_FD] = [const {
    Entry {
        generation: AtomicU32::new(0),
        meta: AtomicU64::new(0),
        ino: AtomicU64::new(0),
    }
}; MAX_CACHED_FD];

/// Set for good once a thread of this process got its own fd table.
static OFF: AtomicBool = AtomicBool::new(false);

fn entry(fd: i32) -> Option<&'static Entry> {
    let i = usize::try_from(fd).ok().filter(|&i| i < MAX_CACHED_FD)?;
    Some(at(&ENTRIES, i))
}

/// True when this thread may use the cache.
fn usable() -> bool {
    !OFF.load(Ordering::Relaxed) && !sys::on_borrowed_memory()
}

fn kind_of(meta: u64, ino: u64) -> FdKind {
    let key = FileKey {
        dev: meta >> 32,
        ino,
    };
    match meta & 0xF {
        KIND_PIPE => FdKind::Pipe(key),
        KIND_REGULAR => FdKind::Regular(key),
        _ => FdKind::Other,
    }
}

/// The current, still valid identity in `e`: `(meta, ino)`.
fn lookup(e: &Entry) -> Option<(u64, u64)> {
    let meta = e.meta.load(Ordering::Acquire);
    let generation = e.generation.load(Ordering::Acquire);
    if meta & 0xF == 0 || (meta >> 8) as u32 & TAG_MASK != generation & TAG_MASK {
        return None;
    }
    let ino = e.ino.load(Ordering::Acquire);
    (e.meta.load(Ordering::Acquire) == meta).then_some((meta, ino))
}

/// What `fd` names: from the cache, or one `fstat` (then remembered).
pub fn kind(fd: i32) -> FdKind {
    let Some(e) = entry(fd).filter(|_| usable()) else {
        return FdKind::of_fd(fd);
    };
    if let Some((meta, ino)) = lookup(e) {
        return kind_of(meta, ino);
    }
    let generation = e.generation.load(Ordering::Acquire);
    let Ok(st) = sys::fstat(fd) else {
        // A bad fd is not remembered: the number may be opened next.
        return FdKind::Other;
    };
    let kind = FdKind::of_stat(&st);
    let (code, key) = match kind {
        FdKind::Pipe(k) => (KIND_PIPE, k),
        FdKind::Regular(k) => (KIND_REGULAR, k),
        FdKind::Other => (KIND_OTHER, FileKey::default()),
    };
    // A device number the tag cannot hold next to is answered but not remembered.
    if key.dev <= u64::from(u32::MAX) && e.generation.load(Ordering::Acquire) == generation {
        e.ino.store(key.ino, Ordering::Release);
        let tag = u64::from(generation & TAG_MASK) << 8;
        e.meta.store(key.dev << 32 | tag | code, Ordering::Release);
    }
    kind
}

/// True when the regular file behind `fd` is one whose bytes cannot change while a pipe
/// holds them: asked once per fd (`probe`, a few system calls) and remembered.
pub fn unchangeable(fd: i32, probe: impl FnOnce(i32) -> bool) -> bool {
    let Some(e) = entry(fd).filter(|_| usable()) else {
        return probe(fd);
    };
    let Some((meta, _)) = lookup(e) else {
        return probe(fd);
    };
    if meta & FLAG_CHANGE_KNOWN != 0 {
        return meta & FLAG_UNCHANGEABLE != 0;
    }
    let answer = probe(fd);
    let flags = FLAG_CHANGE_KNOWN | if answer { FLAG_UNCHANGEABLE } else { 0 };
    // Only if the entry is still the one looked at (same tag, nothing forgotten since).
    let _ = e
        .meta
        .compare_exchange(meta, meta | flags, Ordering::AcqRel, Ordering::Relaxed);
    answer
}

/// Forgets `fd`: it is being closed or replaced (call before and after the real call).
pub fn forget(fd: i32) {
    if let Some(e) = entry(fd) {
        e.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Forgets every fd in `[first, last]`.
pub fn forget_range(first: u32, last: u32) {
    let last = (last as usize).min(MAX_CACHED_FD - 1);
    for fd in first as usize..=last {
        at(&ENTRIES, fd).generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Runs `call`, which closes or replaces fd `fd`, forgetting the number before (a lookup
/// racing the call) and after (one made meanwhile).
pub fn replacing<T>(fd: i32, call: impl FnOnce() -> T) -> T {
    forget(fd);
    let r = call();
    forget(fd);
    r
}

/// [`replacing`] for every fd in `[first, last]`.
pub fn replacing_range<T>(first: u32, last: u32, call: impl FnOnce() -> T) -> T {
    forget_range(first, last);
    let r = call();
    forget_range(first, last);
    r
}

/// What an fd-creating call returns: the new fd it names is forgotten (see the module
/// documentation: the number may have been closed behind the shim's back).
pub trait Created {
    /// Forgets the fd this result names, if any.
    fn forget_created(&self);
}

impl Created for libc::c_int {
    fn forget_created(&self) {
        if *self >= 0 {
            forget(*self);
        }
    }
}

impl Created for *mut libc::FILE {
    fn forget_created(&self) {
        if !self.is_null() {
            // SAFETY: a stream the real call just returned; fileno only reads its fd.
            forget(unsafe { libc::fileno(*self) });
        }
    }
}

impl Created for *mut libc::DIR {
    fn forget_created(&self) {
        if !self.is_null() {
            // SAFETY: a directory stream the real call just returned; dirfd reads its fd.
            forget(unsafe { libc::dirfd(*self) });
        }
    }
}

/// Turns the cache off for good: a thread of this process now has an fd table of its own.
pub fn turn_off() {
    OFF.store(true, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_forgotten_number_is_asked_again() {
        let f = std::fs::File::open("/proc/self/exe").expect("open");
        let fd = f.as_raw_fd();
        let first = kind(fd);
        assert!(matches!(first, FdKind::Regular(_)));
        assert_eq!(kind(fd), first, "answered from the cache");
        forget(fd);
        drop(f);
        let (r, w) = {
            let mut p = [0; 2];
            // SAFETY: pipe writes two fds into `p`.
            assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
            (p[0], p[1])
        };
        let reused = if r == fd { r } else { w };
        if reused == fd {
            assert!(matches!(kind(fd), FdKind::Pipe(_)), "the new meaning");
        }
        sys::close(r);
        sys::close(w);
    }

    #[test]
    fn bad_fds_are_not_remembered() {
        assert_eq!(kind(MAX_CACHED_FD as i32 - 1), FdKind::Other);
        assert_eq!(kind(-1), FdKind::Other);
    }
}
