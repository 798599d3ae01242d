//! The clone and dedupe `ioctl`s: the destination ranges a request writes, read from its
//! argument (through whatever reads the caller's memory: the hook's own, or strict mode's
//! supervisor reading a filtered process).

use crate::ops::intent::{Kind, Mutation};

/// `FICLONE` = `_IOW(0x94, 9, int)`.
pub const FICLONE: u32 = 0x4004_9409;
/// `FICLONERANGE` = `_IOW(0x94, 13, struct file_clone_range)`.
pub const FICLONERANGE: u32 = 0x4020_940d;
/// `FIDEDUPERANGE` = `_IOWR(0x94, 54, struct file_dedupe_range)`.
pub const FIDEDUPERANGE: u32 = 0xc018_9436;
/// Most destinations of one dedupe request that are looked at (more are rare).
pub const MAX_DEDUPE_DESTS: usize = 64;

/// True for the requests whose destinations [`destinations`] knows.
pub fn is_clone_request(request: u32) -> bool {
    matches!(request, FICLONE | FICLONERANGE | FIDEDUPERANGE)
}

/// Reads `N` native-endian u64 words at `addr` through `read` (false: unreadable).
fn words<const N: usize>(
    addr: usize,
    read: &impl Fn(usize, &mut [u8]) -> bool,
) -> Option<[u64; N]> {
    let mut raw = [0u8; 64];
    if !read(addr, raw.get_mut(..N * 8)?) {
        return None;
    }
    let mut out = [0u64; N];
    for (w, bytes) in out.iter_mut().zip(raw.chunks_exact(8)) {
        *w = u64::from_ne_bytes(bytes.try_into().ok()?);
    }
    Some(out)
}

/// Calls `each` with the mutation of every destination of `ioctl(fd, request, arg)`, its
/// target the fd number the caller named; `read(addr, buf)` reads the caller's memory.
/// An unreadable argument gives nothing (the kernel answers `EFAULT` before it changes
/// anything).
pub fn destinations(
    fd: i32,
    request: u32,
    arg: usize,
    read: impl Fn(usize, &mut [u8]) -> bool,
    mut each: impl FnMut(Mutation),
) {
    let to_end_if_zero = |len: u64| if len == 0 { u64::MAX } else { len };
    match request {
        FICLONE => each(Mutation::from(fd, 0, Kind::Clone)),
        FICLONERANGE => {
            // struct file_clone_range { s64 src_fd; u64 src_offset, src_length, dest_offset; }
            if let Some([_, _, len, dest]) = words::<4>(arg, &read) {
                each(Mutation::at(
                    fd,
                    dest as i64,
                    to_end_if_zero(len),
                    Kind::Clone,
                ));
            }
        }
        FIDEDUPERANGE => {
            // struct file_dedupe_range { u64 src_offset, src_length; u16 dest_count; ... ;
            //   struct file_dedupe_range_info { s64 dest_fd; u64 dest_offset, bytes; s32, u32 } info[]; }
            let Some([_, len, counts]) = words::<3>(arg, &read) else {
                return;
            };
            let dests = ((counts & 0xffff) as usize).min(MAX_DEDUPE_DESTS);
            for i in 0..dests {
                let info = arg.wrapping_add(24 + i * 32);
                if let Some([dest_fd, dest_off]) = words::<2>(info, &read) {
                    each(Mutation::at(
                        dest_fd as i32,
                        dest_off as i64,
                        len,
                        Kind::Dedupe,
                    ));
                }
            }
        }
        _ => {}
    }
}
