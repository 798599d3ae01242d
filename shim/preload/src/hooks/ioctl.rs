//! `ioctl`: the clone and dedupe requests write into their destination file; every other
//! request goes straight through after one comparison.

use crate::hooks::hooks;
use crate::ops::intent::{Kind, Mutation};
use crate::ops::mutation;
use crate::state::usermem::copy_from_user;
use libc::{c_int, c_ulong, c_void};

/// `FICLONE` = `_IOW(0x94, 9, int)`.
const FICLONE: c_ulong = 0x4004_9409;
/// `FICLONERANGE` = `_IOW(0x94, 13, struct file_clone_range)`.
const FICLONERANGE: c_ulong = 0x4020_940d;
/// `FIDEDUPERANGE` = `_IOWR(0x94, 54, struct file_dedupe_range)`.
const FIDEDUPERANGE: c_ulong = 0xc018_9436;
/// Most destinations of one dedupe request that are looked at (more are rare).
const MAX_DEDUPE_DESTS: usize = 64;

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
    if matches!(request, FICLONE | FICLONERANGE | FIDEDUPERANGE) {
        crate::state::guard::keep_errno(|| clone_mutations(fd, request, arg));
    }
    // SAFETY: the caller's arguments.
    unsafe { real(fd, request, arg) }
}

/// Reads `N` little-endian u64 words at `p` from the caller's memory.
fn words<const N: usize>(p: *const u8) -> Option<[u64; N]> {
    let mut raw = [0u8; 64];
    if !copy_from_user(p, raw.get_mut(..N * 8)?) {
        return None;
    }
    let mut out = [0u64; N];
    for (w, bytes) in out.iter_mut().zip(raw.chunks_exact(8)) {
        *w = u64::from_ne_bytes(bytes.try_into().ok()?);
    }
    Some(out)
}

fn clone_mutations(fd: c_int, request: c_ulong, arg: *mut c_void) {
    let to_end_if_zero = |len: u64| if len == 0 { u64::MAX } else { len };
    match request {
        FICLONE => mutation::before(Mutation::from(fd, 0, Kind::Clone)),
        FICLONERANGE => {
            // struct file_clone_range { s64 src_fd; u64 src_offset, src_length, dest_offset; }
            if let Some([_, _, len, dest]) = words::<4>(arg.cast()) {
                mutation::before(Mutation::at(
                    fd,
                    dest as i64,
                    to_end_if_zero(len),
                    Kind::Clone,
                ));
            }
        }
        _ => {
            // struct file_dedupe_range { u64 src_offset, src_length; u16 dest_count; ... ;
            //   struct file_dedupe_range_info { s64 dest_fd; u64 dest_offset, bytes; s32, u32 } info[]; }
            let Some([_, len, counts]) = words::<3>(arg.cast()) else {
                return;
            };
            let dests = ((counts & 0xffff) as usize).min(MAX_DEDUPE_DESTS);
            for i in 0..dests {
                let info = (arg as usize + 24 + i * 32) as *const u8;
                if let Some([dest_fd, dest_off]) = words::<2>(info) {
                    mutation::before(Mutation::at(
                        dest_fd as c_int,
                        dest_off as i64,
                        len,
                        Kind::Dedupe,
                    ));
                }
            }
        }
    }
}
