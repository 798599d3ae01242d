//! C stdio output. glibc's streams write through an internal `write` that no
//! `LD_PRELOAD` hook sees, so every public function through which stream output may
//! reach the kernel first settles the stream's file from its current offset on (the
//! bytes a flush writes land there; `O_APPEND` and read-only streams never conflict).
//! `fflush(NULL)` and process exit cover every open file (see `ops::streams`). The variadic `fprintf`, `printf` and `dprintf`
//! are defined in `stdio_variadic.c` and call [`splicecow_before_stream`] and
//! [`splicecow_before_fd`].

use crate::hooks::{hooks, variadic_hook};
use crate::ops::streams::{self, stream};
use crate::state::fdcache;
use libc::{c_char, c_int, c_void, size_t, FILE};

/// `stdout`, for the functions that write to it implicitly.
fn stdout() -> *mut FILE {
    extern "C" {
        static mut stdout: *mut FILE;
    }
    // SAFETY: glibc's `stdout` is initialised before any user code runs.
    unsafe { stdout }
}

hooks! {
    /// `fwrite(3)`.
    fn fwrite(ptr: *const c_void, size: size_t, n: size_t, s: *mut FILE) -> size_t => before stream(s);
    /// `fwrite_unlocked`.
    fn fwrite_unlocked(ptr: *const c_void, size: size_t, n: size_t, s: *mut FILE) -> size_t => before stream(s);
    /// `fputs(3)`.
    fn fputs(text: *const c_char, s: *mut FILE) -> c_int => before stream(s);
    /// `fputs_unlocked`.
    fn fputs_unlocked(text: *const c_char, s: *mut FILE) -> c_int => before stream(s);
    /// `fputc(3)`.
    fn fputc(c: c_int, s: *mut FILE) -> c_int => before stream(s);
    /// `fputc_unlocked`.
    fn fputc_unlocked(c: c_int, s: *mut FILE) -> c_int => before stream(s);
    /// `putc(3)`.
    fn putc(c: c_int, s: *mut FILE) -> c_int => before stream(s);
    /// `putc_unlocked`.
    fn putc_unlocked(c: c_int, s: *mut FILE) -> c_int => before stream(s);
    /// `_IO_putc` (what older headers' `putc` calls).
    fn _IO_putc(c: c_int, s: *mut FILE) -> c_int => before stream(s);
    /// `__overflow`: what the inline `putc_unlocked` calls when the buffer is full.
    fn __overflow(s: *mut FILE, c: c_int) -> c_int => before stream(s);
    /// `vfprintf(3)`.
    fn vfprintf(s: *mut FILE, format: *const c_char, ap: *mut c_void) -> c_int => before stream(s);
    /// `vprintf(3)`.
    fn vprintf(format: *const c_char, ap: *mut c_void) -> c_int => before stream(stdout());
    /// `puts(3)`.
    fn puts(text: *const c_char) -> c_int => before stream(stdout());
    /// `putchar(3)`.
    fn putchar(c: c_int) -> c_int => before stream(stdout());
    /// `fflush(3)`; null flushes every stream.
    fn fflush(s: *mut FILE) -> c_int => with flush_impl;
    /// `fflush_unlocked`.
    fn fflush_unlocked(s: *mut FILE) -> c_int => with flush_impl;
    /// `fclose(3)`: flushes, and closes the stream's fd.
    fn fclose(s: *mut FILE) -> c_int => with fclose_impl;
    /// `fseek(3)`: flushes pending output.
    fn fseek(s: *mut FILE, offset: libc::c_long, whence: c_int) -> c_int => before stream(s);
    /// `fseeko(3)`.
    fn fseeko(s: *mut FILE, offset: libc::off_t, whence: c_int) -> c_int => before stream(s);
    /// `fseeko64`.
    fn fseeko64(s: *mut FILE, offset: libc::off_t, whence: c_int) -> c_int => before stream(s);
    /// `fsetpos(3)`.
    fn fsetpos(s: *mut FILE, pos: *const libc::fpos_t) -> c_int => before stream(s);
    /// `fsetpos64`.
    fn fsetpos64(s: *mut FILE, pos: *const libc::fpos_t) -> c_int => before stream(s);
    /// `rewind(3)`.
    fn rewind(s: *mut FILE) -> () => before stream(s);
}

unsafe fn flush_impl(real: unsafe extern "C" fn(*mut FILE) -> c_int, s: *mut FILE) -> c_int {
    crate::state::guard::keep_errno(|| streams::before_flush(s));
    // SAFETY: the caller's argument.
    unsafe { real(s) }
}

unsafe fn fclose_impl(real: unsafe extern "C" fn(*mut FILE) -> c_int, s: *mut FILE) -> c_int {
    crate::state::guard::keep_errno(|| streams::before_close(s));
    if s.is_null() {
        // SAFETY: the caller's argument.
        return unsafe { real(s) };
    }
    // SAFETY: fclose requires a valid stream; fileno only reads its fd.
    let fd = unsafe { libc::fileno(s) };
    // SAFETY: the caller's argument.
    fdcache::replacing(fd, || unsafe { real(s) })
}

/// Called by the C variadic wrappers before they format into stream `s`.
#[no_mangle]
pub extern "C" fn splicecow_before_stream(s: *mut FILE) {
    if let Some(_inside) = crate::state::guard::Inside::enter() {
        crate::state::guard::keep_errno(|| streams::before_output(s));
    }
}

/// Called by the C `dprintf` wrapper before it writes to `fd` at its offset.
#[no_mangle]
pub extern "C" fn splicecow_before_fd(fd: c_int) {
    if let Some(_inside) = crate::state::guard::Inside::enter() {
        crate::state::guard::keep_errno(|| streams::before_fd_output(fd));
    }
}

variadic_hook! {
    /// `fprintf(3)`.
    fprintf => splicecow_fprintf;
    /// `printf(3)`.
    printf => splicecow_printf;
    /// `dprintf(3)`.
    dprintf => splicecow_dprintf;
}
