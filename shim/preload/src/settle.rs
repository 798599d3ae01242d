//! Settling a pipe: move its pending bytes out of the page cache by draining them and
//! writing the same bytes back, in order, so the pipe then holds private copies.

use crate::pipe;
use splicecow_registry::layout::Counters;
use splicecow_registry::{sys, Tables};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Most packet boundaries a settle keeps apart; further packets are written back merged.
const MAX_CHUNKS: usize = 1024;

/// Settles pipe `slot` and retires its segments. Runs with the table lock held, which
/// also serialises use of this process's drain buffer.
pub fn settle(t: &mut Tables, slot: usize, counters: &Counters) {
    let rec = t.pipe(slot);
    let key = rec.key;
    let holders = rec.holders;
    let fd = holders
        .iter()
        .find_map(|h| pipe::open_via(h.pid, h.fd, key))
        .or_else(|| pipe::open_by_scan(key));
    match fd {
        Some(fd) => {
            let copied = drain_and_refill(fd);
            sys::close(fd);
            counters.settles.fetch_add(1, Ordering::Relaxed);
            counters.bytes_copied.fetch_add(copied, Ordering::Relaxed);
        }
        None => {
            counters.unreachable_pipes.fetch_add(1, Ordering::Relaxed);
        }
    }
    t.retire_all(slot);
}

/// Reads everything pending from `fd` (non-blocking, read-write) and writes it back.
/// Returns the number of bytes moved. Packet-mode pipes keep their boundaries: a short
/// read with more bytes pending means a packet ended there.
fn drain_and_refill(fd: i32) -> u64 {
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
    if n_chunks > 1 {
        // Packets: make each write-back a packet too.
        let fl = crate::fdkind::status_flags(fd);
        // SAFETY: F_SETFL on our own private open file description.
        unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFL, fl | libc::O_DIRECT) };
    }
    let mut at = 0usize;
    for &len in &chunks[..n_chunks] {
        // SAFETY: [at, at + len) lies inside the bytes just read into buf.
        write_all(fd, unsafe { buf.add(at) }, len as usize);
        at += len as usize;
    }
    total as u64
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
