//! The vocabulary hooks use to describe a call about to change a file: which file, which
//! bytes, which kind of call. Built by the hooks, consumed by `mutation` and `report`.

use crate::state::usermem::user_offset;
use std::ffi::c_char;

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

impl Mutation {
    /// The bytes a copy of `len` bytes writes into `fd` at `*off` or, for a null `off`,
    /// at its offset (`copy_file_range`, `splice` into a file).
    pub fn copy_destination(fd: i32, off: *const i64, len: usize, kind: Kind) -> Mutation {
        match user_offset(off) {
            Some(at) => Mutation::at(fd, at as i64, len as u64, kind),
            None => Mutation::cursor(fd, len as u64, kind),
        }
    }
}
