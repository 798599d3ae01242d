//! The mutation side: before a call changes a file, settle (protect) or report (detect)
//! every in-flight segment its byte range overlaps.

use crate::fdkind::{current_offset, status_flags, FdKind};
use crate::runtime::{self, Mode};
use crate::{pipe, report, settle, snapshot};
use splicecow_registry::{sys, FileKey, Registry};
use std::ffi::c_char;
use std::sync::atomic::Ordering;

/// Most pipes settled per lookup round (more are found by the next round).
const PIPES_PER_ROUND: usize = 16;
/// Most pipes one mutation looks at (far more than a domain normally has in flight
/// for one file range).
const MAX_HANDLED: usize = 256;

/// How a mutation names its file.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// An open fd.
    Fd(i32),
    /// A path relative to `dirfd` (`AT_FDCWD` for plain paths); `follow` symlinks or not.
    Path {
        dirfd: i32,
        path: *const c_char,
        follow: bool,
    },
    /// A stdio stream (its fd is looked up only when something is live).
    Stream(*mut libc::FILE),
}

/// The byte range a mutation touches.
#[derive(Debug, Clone, Copy)]
pub enum Span {
    /// `len` bytes at `off`.
    At(i64, u64),
    /// `len` bytes at the fd's current offset, nothing when the fd is `O_APPEND`.
    Cursor(u64),
    /// Everything from `off` on (truncation, collapse/insert range).
    From(i64),
    /// Everything from the fd's current offset on (buffered stdio output); nothing when
    /// the fd is `O_APPEND` or read-only.
    FromCursor,
}

/// What kind of call mutates (named in detect-mode reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Write,
    Writev,
    Pwrite,
    Pwritev,
    PunchHole,
    ZeroRange,
    CollapseRange,
    InsertRange,
    Ftruncate,
    Truncate,
    OpenTruncate,
    FopenTruncate,
    CopyFileRange,
    SendfileInto,
    SpliceInto,
    SharedMapping,
    Clone,
    Dedupe,
    Stdio,
}

impl Kind {
    /// True for mutations that truncate or shift file data (private snapshots must then
    /// replace pages, not just copy them).
    pub fn truncates(self) -> bool {
        matches!(
            self,
            Kind::Ftruncate
                | Kind::Truncate
                | Kind::OpenTruncate
                | Kind::FopenTruncate
                | Kind::CollapseRange
                | Kind::InsertRange
        )
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Write => "write",
            Kind::Writev => "writev",
            Kind::Pwrite => "pwrite",
            Kind::Pwritev => "pwritev",
            Kind::PunchHole => "punch_hole",
            Kind::ZeroRange => "zero_range",
            Kind::CollapseRange => "collapse_range",
            Kind::InsertRange => "insert_range",
            Kind::Ftruncate => "ftruncate",
            Kind::Truncate => "truncate",
            Kind::OpenTruncate => "open_trunc",
            Kind::FopenTruncate => "fopen_trunc",
            Kind::CopyFileRange => "copy_file_range",
            Kind::SendfileInto => "sendfile_into",
            Kind::SpliceInto => "splice_into",
            Kind::SharedMapping => "shared_mapping",
            Kind::Clone => "clone",
            Kind::Dedupe => "dedupe",
            Kind::Stdio => "stdio",
        }
    }
}

/// A call about to change a file.
#[derive(Debug, Clone, Copy)]
pub struct Mutation {
    /// The file.
    pub target: Target,
    /// The bytes it touches.
    pub span: Span,
    /// The call.
    pub kind: Kind,
}

impl Mutation {
    /// `len` bytes at `off` of `fd`.
    pub fn at(fd: i32, off: i64, len: u64, kind: Kind) -> Mutation {
        Mutation {
            target: Target::Fd(fd),
            span: Span::At(off, len),
            kind,
        }
    }

    /// `len` bytes at the current offset of `fd`.
    pub fn cursor(fd: i32, len: u64, kind: Kind) -> Mutation {
        Mutation {
            target: Target::Fd(fd),
            span: Span::Cursor(len),
            kind,
        }
    }

    /// Everything from `off` on in `fd`.
    pub fn from(fd: i32, off: i64, kind: Kind) -> Mutation {
        Mutation {
            target: Target::Fd(fd),
            span: Span::From(off),
            kind,
        }
    }

    /// Everything from `off` on in the file at `path`.
    pub fn path_from(dirfd: i32, path: *const c_char, off: i64, kind: Kind) -> Mutation {
        Mutation {
            target: Target::Path {
                dirfd,
                path,
                follow: true,
            },
            span: Span::From(off),
            kind,
        }
    }
}

/// The registry when mutations must be checked: a tracking mode and live segments.
pub fn active_registry() -> Option<&'static Registry> {
    let reg = runtime::get().tracking()?;
    reg.has_live_references().then_some(reg)
}

/// The mutation hooks' fast path: false only when the runtime is ready and nothing in
/// the domain can conflict (no live segment, no private snapshot mapping). Never
/// initialises the runtime, so it is safe however early it is called.
pub fn may_conflict() -> bool {
    runtime::try_get().is_none_or(|rt| rt.tracking().is_some_and(|r| r.has_live_references()))
}

/// Settles or reports what `m` overlaps. The fast path is one atomic load.
pub fn before(m: Mutation) {
    let Some(reg) = active_registry() else {
        return;
    };
    let st = match m.target {
        Target::Fd(fd) => sys::fstat(fd),
        Target::Stream(stream) => {
            // SAFETY: output functions require a valid stream; fileno only reads its fd.
            sys::fstat(unsafe { libc::fileno(stream) })
        }
        Target::Path {
            dirfd,
            path,
            follow,
        } => {
            let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
            // SAFETY: `path` is the hooked call's own path argument, which the real call
            // hands to the kernel the same way (an invalid one gives EFAULT here too).
            unsafe { sys::fstatat(dirfd, path, flags) }
        }
    };
    let Ok(st) = st else { return };
    if let FdKind::Regular(key) = FdKind::of_stat(&st) {
        check_file(reg, key, m);
    }
}

/// The part of [`before`] after the file is known.
pub fn check_file(reg: &Registry, key: FileKey, m: Mutation) {
    if !reg.file_may_be_tracked(key) {
        return;
    }
    let Some((off, end)) = resolve_span(m) else {
        return;
    };
    if check_pipes(reg, key, m, off, end) {
        reg.header()
            .counters
            .conflicts
            .fetch_add(1, Ordering::Relaxed);
    }
    if reg.header().private_maps.load(Ordering::Relaxed) > 0 {
        let truncates = m.kind.truncates();
        snapshot::before_change(
            reg,
            snapshot::Change {
                key,
                off,
                end,
                truncates,
            },
        );
    }
}

/// Settles (protect) or reports (detect) every pipe with a segment of `key` overlapping
/// `[off, end)`. Each candidate pipe is first pruned exactly (`FIONREAD` through a
/// reopened fd): bytes a reader already consumed are no conflict. A pipe nobody holds
/// any more is retired. Returns whether a real conflict was found.
fn check_pipes(reg: &Registry, key: FileKey, m: Mutation, off: u64, end: u64) -> bool {
    let detect = runtime::get().mode == Mode::Detect;
    let counters = &reg.header().counters;
    let mut t = reg.lock();
    let mut conflicted = false;
    // Pipes already handled this call (detect mode leaves their segments in place).
    let mut handled = [usize::MAX; MAX_HANDLED];
    let mut n_handled = 0;
    loop {
        let mut slots = [0usize; PIPES_PER_ROUND];
        let mut n = 0;
        t.for_each_overlapping(key, off, end, |info| {
            let slot = info.pipe_slot;
            if !slots[..n].contains(&slot) && !handled[..n_handled].contains(&slot) {
                slots[n] = slot;
                n += 1;
            }
            n < PIPES_PER_ROUND
        });
        if n == 0 || n_handled == MAX_HANDLED {
            return conflicted;
        }
        for &slot in &slots[..n] {
            if n_handled < MAX_HANDLED {
                handled[n_handled] = slot;
                n_handled += 1;
            }
            let Some(fd) = settle::open_pipe(&t, slot) else {
                settle::retire_unreachable(&mut t, slot, counters);
                continue;
            };
            if let Some(pending) = pipe::pending(fd) {
                t.prune(slot, pending);
            }
            if t.pipe_overlaps(slot, key, off, end) {
                conflicted = true;
                if detect {
                    report::pipe_conflicts(&mut t, slot, key, m, off, end);
                } else {
                    settle::settle_open(&mut t, slot, fd, counters);
                }
            }
            sys::close(fd);
        }
    }
}

/// Turns a span into `[off, end)`; `None` when nothing can conflict.
fn resolve_span(m: Mutation) -> Option<(u64, u64)> {
    let clamp = |off: i64| off.max(0) as u64;
    match m.span {
        Span::At(off, len) => Some((clamp(off), clamp(off).saturating_add(len))),
        Span::From(off) => Some((clamp(off), u64::MAX)),
        Span::Cursor(len) => {
            let fd = target_fd(m.target)?;
            if status_flags(fd) & libc::O_APPEND != 0 {
                return None;
            }
            let off = current_offset(fd)?;
            Some((off, off.saturating_add(len)))
        }
        Span::FromCursor => {
            let fd = target_fd(m.target)?;
            let fl = status_flags(fd);
            if fl & libc::O_APPEND != 0 || fl & libc::O_ACCMODE == libc::O_RDONLY {
                return None;
            }
            Some((current_offset(fd)?, u64::MAX))
        }
    }
}

/// The fd of an fd or stream target.
fn target_fd(t: Target) -> Option<i32> {
    match t {
        Target::Fd(fd) => Some(fd),
        // SAFETY: output functions require a valid stream; fileno only reads its fd.
        Target::Stream(stream) => Some(unsafe { libc::fileno(stream) }),
        Target::Path { .. } => None,
    }
}

/// Settles, for every open fd of this process on a tracked regular file, everything
/// from its offset on: buffered stdio output of any stream may be written there next
/// (`fflush(NULL)`, exit). Allocates; never reached from a signal-safe function.
pub fn before_all_open_files() {
    if active_registry().is_none() {
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
        before(Mutation {
            target: Target::Fd(fd),
            span: Span::FromCursor,
            kind: Kind::Stdio,
        });
    }
}
