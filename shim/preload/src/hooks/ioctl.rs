//! `ioctl`: the clone and dedupe requests write into their destination file; every other
//! request goes straight through after one comparison.

use crate::hooks::hooks;
use crate::ops::{clones, mutation};
use crate::state::usermem::copy_from_user;
use libc::{c_int, c_ulong, c_void};

hooks! {
    /// `ioctl(2)`; the optional third argument is read as a pointer, as the clone and
    /// dedupe requests define it (x86-64 passes it in the same register either way).
    fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int => with ioctl_impl;
}

unsafe fn ioctl_impl(
    real: unsafe extern "C" fn(c_int, c_ulong, *mut c_void) -> c_int,
    fd: c_int,
    request: c_ulong,
    arg: *mut c_void,
) -> c_int {
    // The request is an `unsigned int` in the kernel: higher bits are ignored.
    let request32 = request as u32;
    if clones::is_clone_request(request32) {
        crate::state::guard::keep_errno(|| {
            let read = |addr: usize, buf: &mut [u8]| copy_from_user(addr as *const u8, buf);
            clones::destinations(fd, request32, arg as usize, read, mutation::before);
        });
    }
    // SAFETY: the caller's arguments.
    unsafe { real(fd, request, arg) }
}
