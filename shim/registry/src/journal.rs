//! The settle journal's protocol: a settle drains a pipe into the journal (in shared
//! memory) and writes the bytes back from it, recording every step, so that whoever takes
//! the table lock over from a settler that died finishes the settle and loses no byte.
//!
//! States: `Idle` -> `Draining` (reading the pipe into the journal) -> `Refilling`
//! (writing the bytes back) -> `Idle`; or `Idle` -> `Private` -> `Idle` for a pipe larger
//! than the journal, drained into the settler's own memory (lost if it dies). Every field
//! is stored volatile and fenced before the next system call: the finisher must see
//! exactly how far the dead settler got (the compiler may otherwise keep a value in a
//! register across the blocking waits of a write-back).

use crate::layout::{SettleJournal, JOURNAL_CHUNKS, SETTLE_DRAINING, SETTLE_IDLE};
use crate::layout::{SETTLE_PRIVATE, SETTLE_REFILLING};
use crate::tables::PipeSlot;
use std::sync::atomic::{compiler_fence, Ordering};

/// Where a settle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleState {
    /// No settle in progress.
    Idle,
    /// The pipe is being read into the journal.
    Draining,
    /// The journal's bytes are being written back.
    Refilling,
    /// A pipe larger than the journal is being settled through private memory.
    Private,
}

impl SettleState {
    fn raw(self) -> u32 {
        match self {
            SettleState::Idle => SETTLE_IDLE,
            SettleState::Draining => SETTLE_DRAINING,
            SettleState::Refilling => SETTLE_REFILLING,
            SettleState::Private => SETTLE_PRIVATE,
        }
    }
}

/// A settle whose settler died holding the lock: the lock's new holder must finish it
/// (see `Registry::lock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptedSettle {
    /// The pipe being settled.
    pub pipe: PipeSlot,
    /// How far the settle got: `Draining` or `Refilling` can be finished from the
    /// journal; `Private` bytes died with the settler.
    pub state: SettleState,
}

/// One chunk of drained bytes (a chunk ends at a packet boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Bytes in the chunk.
    pub len: usize,
    /// Leading bytes that were spliced (written back without `O_DIRECT`).
    pub plain: usize,
}

/// Stores `value` in `field` so that it is in shared memory before the next system call.
fn record<T: Copy>(field: &mut T, value: T) {
    // SAFETY: `field` is a valid, exclusive reference.
    unsafe { std::ptr::write_volatile(field, value) };
    compiler_fence(Ordering::SeqCst);
}

impl SettleJournal {
    /// The state (an unknown value from a corrupt registry counts as `Private`: nothing
    /// in the journal is trusted, the pipe is retired).
    pub fn state(&self) -> SettleState {
        match self.state {
            SETTLE_IDLE => SettleState::Idle,
            SETTLE_DRAINING => SettleState::Draining,
            SETTLE_REFILLING => SettleState::Refilling,
            _ => SettleState::Private,
        }
    }

    /// The settle in progress, if any.
    pub fn interrupted(&self) -> Option<InterruptedSettle> {
        let state = self.state();
        (state != SettleState::Idle).then(|| InterruptedSettle {
            pipe: PipeSlot::new(self.pipe_slot as usize),
            state,
        })
    }

    /// Starts a settle of `pipe` (`Idle` -> `Draining`, or `Private` when its bytes go to
    /// private memory): progress reset first, the state last.
    pub fn begin(&mut self, pipe: PipeSlot, private: bool) {
        debug_assert_eq!(self.state(), SettleState::Idle);
        record(&mut self.pipe_slot, pipe.index() as u32);
        record(&mut self.n_chunks, 0);
        record(&mut self.done_chunks, 0);
        record(&mut self.total, 0);
        record(&mut self.done_in_chunk, 0);
        let state = if private {
            SettleState::Private
        } else {
            SettleState::Draining
        };
        record(&mut self.state, state.raw());
    }

    /// Bytes drained so far.
    pub fn drained(&self) -> usize {
        self.total as usize
    }

    /// Records a read of `n` more bytes (one chunk; the last chunk grows once all are used).
    pub fn add_drained(&mut self, n: usize) {
        let i = (self.n_chunks as usize).min(JOURNAL_CHUNKS);
        if let Some(len) = self.chunk_len.get_mut(i) {
            record(len, n as u32);
            record(&mut self.n_chunks, i as u32 + 1);
        } else if let Some(last) = self.chunk_len.last_mut() {
            record(last, *last + n as u32);
        }
        let total = self.total + n as u64;
        record(&mut self.total, total);
    }

    /// Number of chunks drained.
    pub fn chunks(&self) -> usize {
        (self.n_chunks as usize).min(JOURNAL_CHUNKS)
    }

    /// Chunk `i` (empty past the last).
    pub fn chunk(&self, i: usize) -> Chunk {
        let len = self.chunk_len.get(i).map_or(0, |&l| l as usize);
        let plain = self.chunk_plain.get(i).map_or(0, |&p| p as usize);
        Chunk {
            len,
            plain: plain.min(len),
        }
    }

    /// Records how many leading bytes of chunk `i` were spliced.
    pub fn set_plain(&mut self, i: usize, plain: usize) {
        if let Some(p) = self.chunk_plain.get_mut(i) {
            record(p, plain as u32);
        }
    }

    /// Drained everything: `Draining` -> `Refilling` (a `Private` settle stays `Private`).
    pub fn start_refill(&mut self) {
        if self.state() == SettleState::Draining {
            record(&mut self.state, SettleState::Refilling.raw());
        }
    }

    /// The first chunk not completely written back, and how much of it was.
    pub fn refill_progress(&self) -> (usize, usize) {
        let n = self.chunks();
        (
            (self.done_chunks as usize).min(n),
            self.done_in_chunk as usize,
        )
    }

    /// Records that `done` bytes of the current chunk are written back.
    pub fn wrote_in_chunk(&mut self, done: usize) {
        record(&mut self.done_in_chunk, done as u64);
    }

    /// Records that chunk `i` is completely written back.
    pub fn wrote_chunk(&mut self, i: usize) {
        record(&mut self.done_chunks, i as u32 + 1);
        record(&mut self.done_in_chunk, 0);
    }

    /// Ends the settle: back to `Idle`.
    pub fn finish(&mut self) {
        record(&mut self.state, SettleState::Idle.raw());
    }
}
