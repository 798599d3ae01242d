//! Truncating opens: `open`/`openat`/`creat` (and their 64-bit and fortified names) with
//! `O_TRUNC`, and `fopen`/`freopen` with a "w" mode, change the whole file.
//!
//! `open` and `openat` are variadic in C; on x86-64 the optional `mode` arrives in the
//! register a fixed third/fourth parameter reads, and is only used when the flags need it
//! (as libc does), so declaring it as a plain parameter is sound there.

use crate::hooks::hooks;
use crate::ops::intent::{Kind, Mutation, Span, Target};
use crate::ops::mutation;
use crate::state::fdcache;
use crate::state::guard::keep_errno;
use libc::{c_char, c_int, mode_t, AT_FDCWD, FILE};

hooks! {
    /// `open(2)`.
    fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int => before_creating open_mutation(AT_FDCWD, path, flags);
    /// `open64`.
    fn open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int => before_creating open_mutation(AT_FDCWD, path, flags);
    /// `__open_2` (fortified `open` without mode).
    fn __open_2(path: *const c_char, flags: c_int) -> c_int => before_creating open_mutation(AT_FDCWD, path, flags);
    /// `__open64_2`.
    fn __open64_2(path: *const c_char, flags: c_int) -> c_int => before_creating open_mutation(AT_FDCWD, path, flags);
    /// `openat(2)`.
    fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int => before_creating open_mutation(dirfd, path, flags);
    /// `openat64`.
    fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int => before_creating open_mutation(dirfd, path, flags);
    /// `__openat_2`.
    fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int => before_creating open_mutation(dirfd, path, flags);
    /// `__openat64_2`.
    fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int => before_creating open_mutation(dirfd, path, flags);
    /// `creat(2)`: `O_CREAT|O_WRONLY|O_TRUNC`.
    fn creat(path: *const c_char, mode: mode_t) -> c_int => before_creating open_mutation(AT_FDCWD, path, libc::O_TRUNC);
    /// `creat64`.
    fn creat64(path: *const c_char, mode: mode_t) -> c_int => before_creating open_mutation(AT_FDCWD, path, libc::O_TRUNC);
    /// `fopen(3)`.
    fn fopen(path: *const c_char, mode: *const c_char) -> *mut FILE => before_creating fopen_mutation(path, mode, std::ptr::null_mut());
    /// `fopen64`.
    fn fopen64(path: *const c_char, mode: *const c_char) -> *mut FILE => before_creating fopen_mutation(path, mode, std::ptr::null_mut());
    /// `freopen(3)`; a null path reopens the stream's own file. The stream's fd number
    /// then names the new file.
    fn freopen(path: *const c_char, mode: *const c_char, stream: *mut FILE) -> *mut FILE => with freopen_impl;
    /// `freopen64`.
    fn freopen64(path: *const c_char, mode: *const c_char, stream: *mut FILE) -> *mut FILE => with freopen_impl;
}

type FreopenFn = unsafe extern "C" fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE;

unsafe fn freopen_impl(
    real: FreopenFn,
    path: *const c_char,
    mode: *const c_char,
    stream: *mut FILE,
) -> *mut FILE {
    if mutation::may_conflict() {
        keep_errno(|| mutation::before(fopen_mutation(path, mode, stream)));
    }
    if stream.is_null() {
        // SAFETY: the caller's arguments.
        return unsafe { real(path, mode, stream) };
    }
    // SAFETY: freopen requires a valid stream; fileno only reads its fd.
    let fd = unsafe { libc::fileno(stream) };
    // SAFETY: the caller's arguments.
    let r = fdcache::replacing(fd, || unsafe { real(path, mode, stream) });
    if !r.is_null() {
        // SAFETY: freopen returned the stream, open again.
        fdcache::forget(unsafe { libc::fileno(r) });
    }
    r
}

/// An open with `O_TRUNC` truncates the file at `path` to 0 (Linux truncates even with
/// `O_RDONLY`); `O_NOFOLLOW` opens do not follow a final symlink.
fn open_mutation(dirfd: c_int, path: *const c_char, flags: c_int) -> Mutation {
    let follow = flags & libc::O_NOFOLLOW == 0;
    let span = if flags & libc::O_TRUNC != 0 {
        Span::From(0)
    } else {
        Span::At(0, 0)
    };
    Mutation {
        target: Target::Path {
            dirfd,
            path,
            follow,
        },
        span,
        kind: Kind::OpenTruncate,
    }
}

/// `fopen`/`freopen` modes starting with 'w' truncate.
fn fopen_mutation(path: *const c_char, mode: *const c_char, stream: *mut FILE) -> Mutation {
    let mut first = [0u8; 1];
    let truncates = !mode.is_null()
        && crate::state::usermem::copy_from_user(mode.cast(), &mut first)
        && first[0] == b'w';
    let span = if truncates {
        Span::From(0)
    } else {
        Span::At(0, 0)
    };
    let target = if path.is_null() && !stream.is_null() {
        // SAFETY: freopen requires a valid stream; fileno only reads its fd.
        Target::Fd(unsafe { libc::fileno(stream) })
    } else {
        Target::Path {
            dirfd: AT_FDCWD,
            path,
            follow: true,
        }
    };
    Mutation {
        target,
        span,
        kind: Kind::FopenTruncate,
    }
}
