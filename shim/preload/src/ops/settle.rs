//! Settling a pipe: move its pending bytes out of the page cache by draining them and
//! writing the same bytes back, in order, so the pipe then holds private copies.

use crate::pipe;
use splicecow_registry::layout::{
    Counters, JOURNAL_BYTES, JOURNAL_CHUNKS, MAX_PIPES, SETTLE_DRAINING, SETTLE_IDLE,
    SETTLE_PRIVATE, SETTLE_REFILLING,
};
use splicecow_registry::{sys, Tables};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

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
        None => retire_unreachable(t, slot, counters),
    }
}

/// Retires pipe `slot`, which no process holds any more: nobody can read its bytes.
pub fn retire_unreachable(t: &mut Tables, slot: usize, counters: &Counters) {
    counters.unreachable_pipes.fetch_add(1, Ordering::Relaxed);
    t.retire_all(slot);
}

/// [`settle`] through `fd`, already open on the pipe (read-write, non-blocking).
///
/// The drained bytes and the progress of the write-back live in the registry's settle
/// journal, so that if this process dies in between, whoever takes the table lock over
/// finishes the settle ([`finish_interrupted`]) and no byte is lost. A pipe larger than
/// the journal's 1 MiB (only root can grow one that far) is drained into a private
/// buffer instead, without that safety net.
pub fn settle_open(t: &mut Tables, slot: usize, fd: i32, counters: &Counters) {
    let cap = pipe::capacity(fd);
    let buf = if cap > JOURNAL_BYTES {
        private_buffer(cap)
    } else {
        None
    };
    let j = t.journal();
    record(&mut j.pipe_slot, slot as u32);
    record(&mut j.n_chunks, 0);
    record(&mut j.done_chunks, 0);
    record(&mut j.total, 0);
    record(&mut j.done_in_chunk, 0);
    // The state last: a journal that says "draining" always has reset counters.
    let state = if buf.is_some() {
        SETTLE_PRIVATE
    } else {
        SETTLE_DRAINING
    };
    record(&mut j.state, state);
    let (buf, cap) = match buf {
        Some(b) => (b, cap),
        None => (j.bytes.as_mut_ptr(), JOURNAL_BYTES),
    };
    let copied = drain_and_refill(t, slot, fd, buf, cap);
    finish(t, slot, copied, counters);
}

/// Counts a finished settle and retires the pipe's segments (its bytes are private now).
fn finish(t: &mut Tables, slot: usize, copied: u64, counters: &Counters) {
    record(&mut t.journal().state, SETTLE_IDLE);
    counters.settles.fetch_add(1, Ordering::Relaxed);
    counters.bytes_copied.fetch_add(copied, Ordering::Relaxed);
    t.retire_all(slot);
}

/// Finishes a settle whose settler died holding the table lock (registered with the
/// registry as its interrupted-settle handler; runs right after the takeover).
pub fn finish_interrupted(t: &mut Tables) {
    let slot = t.journal().pipe_slot as usize % MAX_PIPES;
    let counters: *const Counters = t.counters();
    // SAFETY: the counters are atomics in the registry mapping, alive while `t` is.
    let counters = unsafe { &*counters };
    let state = t.journal().state;
    let fd = if state == SETTLE_DRAINING || state == SETTLE_REFILLING {
        open_pipe(t, slot)
    } else {
        None
    };
    match fd {
        Some(fd) => {
            let buf = t.journal().bytes.as_mut_ptr();
            let copied = drain_and_refill(t, slot, fd, buf, JOURNAL_BYTES);
            finish(t, slot, copied, counters);
            sys::close(fd);
        }
        None => {
            // Nobody holds the pipe any more (nobody can read those bytes), or they
            // were in the dead settler's private buffer.
            record(&mut t.journal().state, SETTLE_IDLE);
            retire_unreachable(t, slot, counters);
        }
    }
}

/// Drains pipe `fd` (pipe `slot` in the registry) into `buf` (`cap` bytes) and writes
/// the bytes back, recording every step in the journal and resuming from wherever an
/// earlier, interrupted run stopped. Returns the bytes moved.
///
/// Packet-mode pipes keep their boundaries. A read stops at the end of a packet, so a
/// short read with more bytes pending marks one; each chunk read is then some
/// non-packet (spliced) bytes followed by one packet. The chunk's leading bytes that the
/// registry knows were spliced are written back without `O_DIRECT`, the rest as one
/// packet.
fn drain_and_refill(t: &mut Tables, slot: usize, fd: i32, buf: *mut u8, cap: usize) -> u64 {
    let resumable = t.journal().state != SETTLE_PRIVATE;
    if t.journal().state != SETTLE_REFILLING {
        let j = t.journal();
        let mut total = (j.total as usize).min(cap);
        while total < cap {
            // SAFETY: buf has `cap` writable bytes; we read into its unused tail.
            let r = unsafe { libc::syscall(libc::SYS_read, fd, buf.add(total), cap - total) };
            if r <= 0 {
                break;
            }
            let n = (j.n_chunks as usize).min(JOURNAL_CHUNKS);
            if n < JOURNAL_CHUNKS {
                record(&mut j.chunk_len[n], r as u32);
                record(&mut j.n_chunks, n as u32 + 1);
            } else {
                let merged = j.chunk_len[JOURNAL_CHUNKS - 1] + r as u32;
                record(&mut j.chunk_len[JOURNAL_CHUNKS - 1], merged);
            }
            total += r as usize;
            record(&mut j.total, total as u64);
        }
        splicecow_registry::pause::at(splicecow_registry::pause::Point::Settle);
        let n = (t.journal().n_chunks as usize).min(JOURNAL_CHUNKS);
        let base = t.pipe(slot).bytes_in.saturating_sub(total as u64);
        let mut at = 0u64;
        for i in 0..n {
            let len = t.journal().chunk_len[i] as u64;
            let plain = if n > 1 {
                spliced_prefix(t, slot, base + at, len)
            } else {
                len
            };
            record(&mut t.journal().chunk_plain[i], plain as u32);
            at += len;
        }
        if resumable {
            record(&mut t.journal().state, SETTLE_REFILLING);
        }
    }
    let flags = crate::fdkind::status_flags(fd);
    let j = t.journal();
    let n = (j.n_chunks as usize).min(JOURNAL_CHUNKS);
    let first = (j.done_chunks as usize).min(n);
    let mut at: usize = j.chunk_len[..first].iter().map(|&l| l as usize).sum();
    for i in first..n {
        let len = j.chunk_len[i] as usize;
        let plain = (j.chunk_plain[i] as usize).min(len);
        for (end, direct) in [(plain, false), (len, true)] {
            if (j.done_in_chunk as usize) < end {
                set_direct(fd, flags, direct);
                // SAFETY: [at, at + len) lies inside the bytes drained into buf.
                write_all(fd, unsafe { buf.add(at) }, end, &mut j.done_in_chunk);
            }
        }
        record(&mut j.done_chunks, i as u32 + 1);
        record(&mut j.done_in_chunk, 0);
        at += len;
    }
    j.total
}

/// How many of the `len` drained bytes at stream position `lo` of pipe `slot` were
/// spliced (the registry's segments say which).
fn spliced_prefix(t: &Tables, slot: usize, lo: u64, len: u64) -> u64 {
    let hi = lo + len;
    let end = t
        .segments(slot)
        .filter(|s| s.stream_pos < hi && lo < s.stream_pos.saturating_add(s.len))
        .map(|s| s.stream_pos.saturating_add(s.len).min(hi))
        .max()
        .unwrap_or(lo);
    end - lo
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

/// Writes bytes `[*done, to)` of the chunk at `p` to the non-blocking pipe `fd`,
/// waiting for room if another writer filled the pipe meanwhile, and advances `*done`
/// after every write (a settle finished by someone else resumes there). Never gives
/// up: giving up would lose bytes.
fn write_all(fd: i32, p: *const u8, to: usize, done: &mut u64) {
    while (*done as usize) < to {
        let at = *done as usize;
        // SAFETY: p[at..to] is readable (see caller).
        let r = unsafe { libc::syscall(libc::SYS_write, fd, p.add(at), to - at) };
        if r > 0 {
            record(done, *done + r as u64);
        } else if r < 0 && sys::errno() == libc::EAGAIN {
            pipe::wait(fd, libc::POLLOUT);
        } else if !(r < 0 && sys::errno() == libc::EINTR) {
            return;
        }
    }
}

/// This process's buffer for pipes larger than the journal, at least `cap` bytes (grown
/// on demand, never freed).
fn private_buffer(cap: usize) -> Option<*mut u8> {
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

/// Stores one field of the settle journal so that it is in shared memory before the
/// next system call: whoever finishes a settle this process could not must see exactly
/// how far it got (the compiler may otherwise keep the value in a register across the
/// blocking waits of a write-back).
fn record<T: Copy>(field: &mut T, value: T) {
    // SAFETY: `field` is a valid, exclusive reference.
    unsafe { std::ptr::write_volatile(field, value) };
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}
