//! Private mappings as true snapshots (`SPLICECOW_PRIVATE_SNAPSHOTS=1`).
//!
//! A page of a `MAP_PRIVATE` file mapping that its process has not written still shows
//! the page cache, so later changes to the file show through. Before a mutation goes
//! ahead, every registered private mapping of the affected file range gets private
//! copies of just the affected pages:
//!
//! - writes, punch/zero range, shared-mapping stores: `MADV_POPULATE_WRITE` breaks
//!   sharing page by page (a write fault without a write; `mprotect` around it when the
//!   mapping is read-only). The kernel's copies survive `pwrite` and hole punching.
//! - truncation, collapse/insert range: those zap even copied private pages, so the
//!   affected pages are copied into a memfd that is mapped over them (`MAP_FIXED`,
//!   `MAP_PRIVATE`): same bytes, same protection, no longer backed by the file.
//!
//! The owner's own mutations snapshot directly. A mutator in another process asks the
//! owner through its mailbox in the registry; a helper thread in the owner, woken by a
//! futex, does the work and acknowledges. After the timeout (1 s, or
//! `SPLICECOW_SNAPSHOT_TIMEOUT_MS`) the mutation goes ahead and `snapshot_timeouts`
//! counts it.

use crate::ops::maps::{count, LocalMap, LOCAL_MAPS};
use crate::ops::settle;
use crate::state::runtime;
use splicecow_registry::bounded::{at_mut, prefix};
use splicecow_registry::{lock, sys, FileKey, Mailbox, Registry};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// `MADV_POPULATE_WRITE` (Linux 5.14).
const MADV_POPULATE_WRITE: i32 = 23;
/// Most private mappings snapshotted per request (more are rare).
const MAX_PER_REQUEST: usize = 32;
/// Most owner processes asked per mutation.
const MAX_OWNERS: usize = 16;

static HELPER_STARTED: AtomicBool = AtomicBool::new(false);

/// A mutation about to change file bytes `[off, end)`; `truncates` when it truncates or
/// shifts data (pages must then be replaced, not just copied).
#[derive(Debug, Clone, Copy)]
pub struct Change {
    /// The file.
    pub key: FileKey,
    /// First byte changed.
    pub off: u64,
    /// One past the last (`u64::MAX`: to the end).
    pub end: u64,
    /// Truncation, collapse or insert range.
    pub truncates: bool,
}

/// Called after a private mapping was made: starts the helper thread; if the file has a
/// shared writable mapping somewhere, stores through it would show at once, so the whole
/// mapping is snapshotted now.
pub fn started_private_mapping(m: LocalMap) {
    let Some(reg) = runtime::get().tracking() else {
        return;
    };
    start_helper(reg);
    if settle::lock(reg).has_shared_writable_map(m.key) {
        let (lo, hi) = m.file_range();
        snapshot_own(Change {
            key: m.key,
            off: lo,
            end: hi,
            truncates: false,
        });
    }
}

/// Snapshots every registered private mapping (in any process of the domain) that a
/// change overlaps. Must be called without the table lock held.
pub fn before_change(reg: &Registry, c: Change) {
    let mut owners = [0i32; MAX_OWNERS];
    let mut n = 0;
    settle::lock(reg).for_each_private_owner(c.key, c.off, c.end, |pid| {
        if n < MAX_OWNERS && !prefix(&owners, n).contains(&pid) {
            *at_mut(&mut owners, n) = pid;
            n += 1;
        }
    });
    let me = sys::getpid();
    for &pid in prefix(&owners, n) {
        if pid == me {
            snapshot_own(c);
        } else {
            ask_owner(reg, pid, c);
        }
    }
}

/// Snapshots this process's own private mappings affected by `c`.
fn snapshot_own(c: Change) {
    let mut maps = [LocalMap::default(); MAX_PER_REQUEST];
    let n = LOCAL_MAPS.private_of(c.key, c.off, c.end, &mut maps);
    let page = page_size();
    for m in prefix(&maps, n) {
        let (lo, hi) = m.file_range();
        let from = c.off.max(lo);
        let to = c.end.min(hi);
        let start = (m.start + (from - lo) as usize) / page * page;
        let end = (m.start + (to - lo) as usize).div_ceil(page) * page;
        let (start, end) = (start.max(m.start), end.min(m.end));
        if start >= end {
            continue;
        }
        if c.truncates {
            replace_with_copy(start, end, m.prot);
            LOCAL_MAPS.remove(start, end, count);
        } else {
            populate_private(start, end, m.prot);
        }
        if let Some(reg) = runtime::get().registry.as_ref() {
            reg.header()
                .counters
                .snapshots
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// Raw `mprotect` (the hooked one must not see the shim's own changes).
fn raw_mprotect(start: usize, len: usize, prot: i32) {
    // SAFETY: changes protection of this process's own mapping, restored by the caller.
    unsafe { libc::syscall(libc::SYS_mprotect, start, len, prot) };
}

/// Breaks page-cache sharing of `[start, end)` with write faults that write nothing.
fn populate_private(start: usize, end: usize, prot: i32) {
    let len = end - start;
    let writable = prot & libc::PROT_WRITE != 0;
    if !writable {
        raw_mprotect(start, len, prot | libc::PROT_READ | libc::PROT_WRITE);
    }
    // SAFETY: MADV_POPULATE_WRITE only faults pages in (copy on write for a private
    // mapping); the contents do not change.
    unsafe { libc::syscall(libc::SYS_madvise, start, len, MADV_POPULATE_WRITE) };
    if !writable {
        raw_mprotect(start, len, prot);
    }
}

/// Replaces `[start, end)` by a private mapping of a memfd holding the same bytes.
fn replace_with_copy(start: usize, end: usize, prot: i32) {
    let len = end - start;
    // SAFETY: the name is a static NUL-terminated string.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_memfd_create,
            c"splicecow-snapshot".as_ptr(),
            libc::MFD_CLOEXEC,
        )
    } as i32;
    if fd < 0 {
        return;
    }
    let readable = prot & libc::PROT_READ != 0;
    if !readable {
        raw_mprotect(start, len, prot | libc::PROT_READ);
    }
    let mut done = 0usize;
    if sys::ftruncate(fd, len as u64).is_ok() {
        while done < len {
            // SAFETY: reads this process's own mapping (EFAULT past the file's end: the
            // rest of the memfd stays zero) into the memfd.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_pwrite64,
                    fd,
                    start + done,
                    len - done,
                    done as i64,
                )
            };
            if r <= 0 {
                break;
            }
            done += r as usize;
        }
        // SAFETY: MAP_FIXED over this process's own mapping of the same range: the pages
        // are swapped atomically for ones with the same bytes and protection.
        unsafe {
            libc::syscall(
                libc::SYS_mmap,
                start,
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                fd,
                0usize,
            )
        };
    } else if !readable {
        raw_mprotect(start, len, prot);
    }
    sys::close(fd);
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout_ns: Option<u64>) {
    let ts = timeout_ns.map(|ns| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: a shared futex wait on a word of the registry mapping, which stays mapped.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            0usize,
            0u32,
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: wakes waiters on a word of the registry mapping.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0usize,
            0usize,
            0u32,
        )
    };
}

/// Asks process `pid` to snapshot its mappings for `c` and waits for it (bounded).
fn ask_owner(reg: &Registry, pid: i32, c: Change) {
    let Some(mb) = reg.find_mailbox(pid) else {
        return;
    };
    let timeout_ns = runtime::get().snapshot_timeout_ms * 1_000_000;
    let deadline = sys::monotonic_ns() + timeout_ns;
    lock::acquire(&mb.requester);
    mb.dev.store(c.key.dev, Ordering::Relaxed);
    mb.ino.store(c.key.ino, Ordering::Relaxed);
    mb.off.store(c.off, Ordering::Relaxed);
    mb.end.store(c.end, Ordering::Relaxed);
    mb.truncates.store(c.truncates as u32, Ordering::Relaxed);
    let seq = mb
        .request_seq
        .fetch_add(1, Ordering::Release)
        .wrapping_add(1);
    futex_wake(&mb.request_seq);
    let acknowledged = loop {
        let done = mb.done_seq.load(Ordering::Acquire);
        if done == seq {
            break true;
        }
        let now = sys::monotonic_ns();
        if now >= deadline
            || mb.owner_pid.load(Ordering::Relaxed) != pid as u32
            || !sys::process_alive(pid)
        {
            break false;
        }
        futex_wait(&mb.done_seq, done, Some((deadline - now).min(100_000_000)));
    };
    lock::release(&mb.requester);
    if !acknowledged && sys::process_alive(pid) {
        reg.header()
            .counters
            .snapshot_timeouts
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts this process's helper thread (once) with a mailbox in the registry.
fn start_helper(reg: &'static Registry) {
    if HELPER_STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let pid = sys::getpid();
    let Some(index) = settle::lock(reg).claim_mailbox(pid) else {
        runtime::warn("no free snapshot mailbox in the registry; private mappings of this process are not protected from other processes");
        return;
    };
    let mb = reg.mailbox(index);
    let spawned = std::thread::Builder::new()
        .name("splicecow-snap".into())
        .spawn(move || serve(mb));
    if spawned.is_err() {
        HELPER_STARTED.store(false, Ordering::Release);
    }
}

/// The helper thread: waits for requests in `mb`, snapshots, acknowledges.
fn serve(mb: &'static Mailbox) {
    // Everything this thread calls goes straight to libc.
    let _inside = crate::state::guard::Inside::enter();
    let mut seen = mb.done_seq.load(Ordering::Acquire);
    loop {
        let req = mb.request_seq.load(Ordering::Acquire);
        if req == seen {
            futex_wait(&mb.request_seq, seen, None);
            continue;
        }
        let c = Change {
            key: FileKey {
                dev: mb.dev.load(Ordering::Relaxed),
                ino: mb.ino.load(Ordering::Relaxed),
            },
            off: mb.off.load(Ordering::Relaxed),
            end: mb.end.load(Ordering::Relaxed),
            truncates: mb.truncates.load(Ordering::Relaxed) != 0,
        };
        snapshot_own(c);
        mb.done_seq.store(req, Ordering::Release);
        futex_wake(&mb.done_seq);
        seen = req;
    }
}

/// Registers the `fork` child handler (threads do not survive fork: the child needs a
/// helper of its own). Called once, from the library constructor.
pub fn install() {
    // SAFETY: registering a plain extern "C" handler; this library is never unloaded.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
}

/// `fork` child: start a helper of the child's own if it inherited private mappings.
extern "C" fn after_fork_in_child() {
    let Some(_inside) = crate::state::guard::Inside::enter() else {
        return;
    };
    HELPER_STARTED.store(false, Ordering::Release);
    let mut any = false;
    LOCAL_MAPS.for_each(|m| any |= m.private);
    if let (true, Some(reg)) = (any, runtime::get().tracking()) {
        start_helper(reg);
    }
}
