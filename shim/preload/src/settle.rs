//! Settling a pipe: move its pending bytes out of the page cache by draining them and
//! writing the same bytes back, in order, so the pipe then holds private copies.

use crate::pipe;
use splicecow_registry::layout::Counters;
use splicecow_registry::{sys, Tables};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Most packet boundaries a settle keeps apart; further packets are written back merged.
const MAX_CHUNKS: usize = 1024;

/// Opens pipe `slot` through a recorded holder, else a scan of `/proc/*/fd`.
pub fn open_pipe(t: &Tables, slot: usize) -> Option<i32> {
    let rec = t.pipe(slot);
    let key = rec.key;
    let holders = rec.holders;
    holders
        .iter()
        .find_map(|h| pipe::open_via(h.pid, h.fd, key))
        .or_else(|| pipe::open_by_scan(key))
}

/// Settles pipe `slot` and retires its segments. Runs with the table lock held, which
/// also serialises use of this process's drain buffer.
pub fn settle(t: &mut Tables, slot: usize, counters: &Counters) {
    match open_pipe(t, slot) {
        Some(fd) => {
            settle_open(t, slot, fd, counters);
            sys::close(fd);
        }
        None => {
            counters.unreachable_pipes.fetch_add(1, Ordering::Relaxed);
            t.retire_all(slot);
        }
    }
}

/// [`settle`] through `fd`, already open on the pipe (read-write, non-blocking).
pub fn settle_open(t: &mut Tables, slot: usize, fd: i32, counters: &Counters) {
    let copied = drain_and_refill(fd, |total, at, len| {
        // Which bytes of a packet-mode chunk were spliced (never packets themselves):
        // the stream positions of the drained bytes end at the pipe's `bytes_in`.
        let base = t.pipe(slot).bytes_in.saturating_sub(total as u64);
        let (lo, hi) = (base + at as u64, base + (at + len) as u64);
        let spliced_end = t
            .segments(slot)
            .filter(|s| s.stream_pos < hi && lo < s.stream_pos.saturating_add(s.len))
            .map(|s| s.stream_pos.saturating_add(s.len).min(hi))
            .max()
            .unwrap_or(lo);
        (spliced_end - lo) as usize
    });
    counters.settles.fetch_add(1, Ordering::Relaxed);
    counters.bytes_copied.fetch_add(copied, Ordering::Relaxed);
    t.retire_all(slot);
}

/// Reads everything pending from `fd` (non-blocking, read-write) and writes it back.
/// Returns the number of bytes moved.
///
/// Packet-mode pipes keep their boundaries. A read stops at the end of a packet, so a
/// short read with more bytes pending marks one; each chunk read is then some
/// non-packet (spliced) bytes followed by one packet. `spliced_prefix(total, at, len)`
/// tells how many leading bytes of the chunk at `at` (of `total` drained) were spliced;
/// they are written back without `O_DIRECT`, the rest as one packet.
fn drain_and_refill(fd: i32, spliced_prefix: impl Fn(usize, usize, usize) -> usize) -> u64 {
    let cap = pipe::capacity(fd);
    let Some(buf) = drain_buffer(cap) else {
        return 0;
    };
    let mut chunks = [0u32; MAX_CHUNKS];
    let mut n_chunks = 0;
    let mut total = 0usize;
    while total < cap {
        // SAFETY: buf has `cap` writable bytes; we read into its unused tail.
        let r = unsafe { libc::syscall(libc::SYS_read, fd, buf.add(total), cap - total) };
        if r <= 0 {
            break;
        }
        total += r as usize;
        if n_chunks < MAX_CHUNKS {
            chunks[n_chunks] = r as u32;
            n_chunks += 1;
        } else {
            chunks[MAX_CHUNKS - 1] += r as u32;
        }
    }
    pause_for_tests();
    let packets = n_chunks > 1;
    let flags = crate::fdkind::status_flags(fd);
    let mut at = 0usize;
    for &len in &chunks[..n_chunks] {
        let len = len as usize;
        let plain = if packets {
            spliced_prefix(total, at, len).min(len)
        } else {
            len
        };
        // SAFETY: [at, at + len) lies inside the bytes just read into buf.
        let p = unsafe { buf.add(at) };
        if plain > 0 {
            set_direct(fd, flags, false);
            write_all(fd, p, plain);
        }
        if plain < len {
            set_direct(fd, flags, true);
            // SAFETY: as above.
            write_all(fd, unsafe { p.add(plain) }, len - plain);
        }
        at += len;
    }
    total as u64
}

/// Turns packet mode (`O_DIRECT`) of our own descriptor on or off.
fn set_direct(fd: i32, flags: i32, on: bool) {
    let fl = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: F_SETFL on our own private open file description.
    unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFL, fl) };
}

/// Writes `len` bytes at `p` to the non-blocking pipe `fd`, waiting for room if another
/// writer filled the pipe meanwhile. Never gives up: giving up would lose bytes.
fn write_all(fd: i32, p: *const u8, len: usize) {
    let mut done = 0;
    while done < len {
        // SAFETY: p[done..len] is readable (see caller).
        let r = unsafe { libc::syscall(libc::SYS_write, fd, p.add(done), len - done) };
        if r > 0 {
            done += r as usize;
        } else if r < 0 && sys::errno() == libc::EAGAIN {
            pipe::wait(fd, libc::POLLOUT);
        } else if !(r < 0 && sys::errno() == libc::EINTR) {
            return;
        }
    }
}

/// This process's drain buffer, at least `cap` bytes (grown on demand, never freed).
fn drain_buffer(cap: usize) -> Option<*mut u8> {
    static BUF: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
    static LEN: AtomicUsize = AtomicUsize::new(0);
    let have = LEN.load(Ordering::Relaxed);
    if have >= cap {
        return Some(BUF.load(Ordering::Relaxed));
    }
    let p = sys::mmap_rw(cap, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1).ok()?;
    let old = BUF.swap(p, Ordering::Relaxed);
    if !old.is_null() {
        // SAFETY: the old buffer is only used under the table lock, which we hold.
        unsafe { sys::munmap(old, have) };
    }
    LEN.store(cap, Ordering::Relaxed);
    Some(p)
}

/// Sleeps for the test-only settle pause (see [`crate::runtime::Runtime::settle_pause_us`]).
fn pause_for_tests() {
    let us = crate::runtime::get().settle_pause_us;
    if us > 0 {
        sys::sleep_ns(us * 1000);
    }
}
