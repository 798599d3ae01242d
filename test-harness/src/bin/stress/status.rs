//! The status page shared by the parent and every worker: stop flag, kill counters,
//! channel generations, counters and one progress slot per thread, with what each
//! thread is doing.

use super::*;

/// Word: non-zero once the parent asks everyone to finish.
pub(crate) const W_STOP: usize = 0;
/// Word: SIGKILLs the parent sent (or is about to send) to processes that mutate files
/// of the main domain.
pub(crate) const W_KILLS: usize = 1;
/// Word: the same for the relay domain (only its own processes settle its pipes).
pub(crate) const W_KILLS_RELAY: usize = 2;
/// Words: current generation of each channel.
pub(crate) const W_GEN: usize = 8;
/// Most channels.
pub(crate) const MAX_CHANS: usize = 64;
/// Words: per data file, `slot + 1` of a thread inside a mutation (0: consistent).
pub(crate) const W_DIRTY: usize = W_GEN + MAX_CHANS;
/// Most data files.
pub(crate) const MAX_FILES: usize = 16;
/// Words: counters (see `C_*`).
pub(crate) const W_CNT: usize = W_DIRTY + MAX_FILES;
/// Words: thread slots, `SLOT_WORDS` each.
pub(crate) const W_SLOTS: usize = 128;
pub(crate) const SLOT_WORDS: usize = 8;
pub(crate) const MAX_SLOTS: usize = 96;
/// Words: per channel, the consumer's offer of its current generation: `[generation + 1,
/// kind (1 FIFO, 2 anonymous pipe), pid, fd of the write end]`.
pub(crate) const W_OFFER: usize = W_SLOTS + MAX_SLOTS * SLOT_WORDS;
pub(crate) const OFFER_WORDS: usize = 4;
/// Words: per channel, non-zero when its bytes pass through a relay (set by the parent).
pub(crate) const W_RELAYED: usize = W_OFFER + MAX_CHANS * OFFER_WORDS;
pub(crate) const PAGE_WORDS: usize = W_RELAYED + MAX_CHANS;

// Counters.
pub(crate) const C_SPLICE_OPS: usize = 0;
pub(crate) const C_MUT_OPS: usize = 1;
pub(crate) const C_CONSUME_OPS: usize = 2;
pub(crate) const C_BYTES_SENT: usize = 3;
pub(crate) const C_BYTES_VERIFIED: usize = 4;
pub(crate) const C_MISMATCHES: usize = 5;
pub(crate) const C_MISMATCH_BYTES: usize = 6;
pub(crate) const C_LOSSES: usize = 7;
pub(crate) const C_LOSS_BYTES: usize = 8;
pub(crate) const C_FILE_MISMATCHES: usize = 9;
pub(crate) const C_RESYNCS: usize = 10;
pub(crate) const C_ERRORS: usize = 11;
pub(crate) const C_TEES: usize = 12;
pub(crate) const C_PIPE2PIPE: usize = 13;
pub(crate) const C_HEADERS: usize = 14;
pub(crate) const C_GENS: usize = 15;
pub(crate) const C_SENDFILES: usize = 16;
pub(crate) const C_SPLICE_READS: usize = 17;
/// Children started, by [`SpawnKind`] (`C_SPAWNS + kind`).
pub(crate) const C_SPAWNS: usize = 18;
/// Mismatches on channels whose bytes pass through a relay (also in `C_MISMATCHES`).
pub(crate) const C_RELAY_MISMATCHES: usize = 24;
/// Relay rounds by [`RelayKind`] (`C_RELAY_ROUNDS + kind`).
pub(crate) const C_RELAY_ROUNDS: usize = 25;
/// Relay rounds whose relay forwarded into a private pipe first (see [`relay_round`]).
pub(crate) const C_RELAY_BUFFERED: usize = 27;
/// Relay rounds whose relay was seen asleep in its call before the producer's splice.
pub(crate) const C_RELAY_WAITED: usize = 28;
pub(crate) const C_RELAY_BYTES: usize = 29;
pub(crate) const C_RELAY_VERIFIED: usize = 30;
/// Protection checks by quiet-victim incarnations (see [`protection_check`]).
pub(crate) const C_QUIET_CHECKS: usize = 31;
/// Of those: checks whose pipe showed a later change (also in `C_MISMATCHES`).
pub(crate) const C_QUIET_CHECK_FAILURES: usize = 32;
/// Settle-window repeats (see [`Expect::find_repeat`]) and their bytes.
pub(crate) const C_REPEATS: usize = 33;
pub(crate) const C_REPEAT_BYTES: usize = 34;
const _: () = assert!(
    W_CNT + C_REPEAT_BYTES < W_SLOTS,
    "counters overlap the slots"
);

// Slot words.
pub(crate) const S_PID: usize = 0;
pub(crate) const S_TID: usize = 1;
pub(crate) const S_OP: usize = 2;
pub(crate) const S_OP_START: usize = 3;
pub(crate) const S_PROGRESS: usize = 4;
pub(crate) const S_FILE: usize = 5;

/// What a thread is doing (slot word `S_OP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub(crate) enum Op {
    Idle = 0,
    FileLock,
    Splice,
    SpliceCursor,
    Sendfile,
    SendfileCursor,
    Tee,
    PipeToPipe,
    Header,
    ModelCheck,
    OpenFifo,
    ConsumeRead,
    ConsumeSplice,
    Spawn,
    RelaySplice,
    RelayTee,
    RelayForward,
}

pub(crate) const OP_NAMES: [&str; 17] = [
    "idle",
    "flock",
    "splice(off)",
    "splice(cursor)",
    "sendfile(off)",
    "sendfile(cursor)",
    "tee",
    "splice(pipe->pipe)",
    "write(header)",
    "model-check",
    "open-fifo",
    "read(pipe)",
    "splice(pipe->file)",
    "spawn-child",
    "relay splice(pipe->pipe)",
    "relay tee+drain",
    "splice(relay buffer->channel)",
];

/// The status code of a thread inside mutation `m`: after every [`Op`]'s.
pub(crate) fn mutation_code(m: Mutation) -> u64 {
    OP_NAMES.len() as u64 + m as u64
}

/// The name of status code `code`: an [`Op`]'s, or a mutation's (its command-line name).
pub(crate) fn op_name(code: u64) -> String {
    match OP_NAMES.get(code as usize) {
        Some(name) => name.to_string(),
        None => (code as usize)
            .checked_sub(OP_NAMES.len())
            .and_then(|i| Mutation::value_variants().get(i))
            .map_or_else(|| "?".to_string(), value_name),
    }
}

/// The mapped status page.
pub(crate) struct Status {
    pub(crate) words: *const AtomicU64,
}

// SAFETY: the page is a fixed array of atomics mapped for the process's whole life.
unsafe impl Sync for Status {}
// SAFETY: see Sync.
unsafe impl Send for Status {}

impl Status {
    pub(crate) fn map(path: &Path, create: bool) -> io::Result<Status> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        let len = PAGE_WORDS * 8;
        if create {
            f.set_len(len as u64)?;
        }
        // SAFETY: mapping a file we opened read-write; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Status { words: p.cast() })
    }
    pub(crate) fn w(&self, i: usize) -> &AtomicU64 {
        assert!(i < PAGE_WORDS);
        // SAFETY: i is inside the mapping, which holds PAGE_WORDS aligned u64 words and
        // stays mapped until exit; AtomicU64 has u64's layout.
        unsafe { &*self.words.add(i) }
    }
    pub(crate) fn get(&self, i: usize) -> u64 {
        self.w(i).load(Ordering::SeqCst)
    }
    pub(crate) fn cnt(&self, c: usize) -> &AtomicU64 {
        self.w(W_CNT + c)
    }
    pub(crate) fn add(&self, c: usize, v: u64) {
        self.cnt(c).fetch_add(v, Ordering::Relaxed);
    }
    pub(crate) fn count(&self, c: usize) -> u64 {
        self.cnt(c).load(Ordering::Relaxed)
    }
    pub(crate) fn stopping(&self) -> bool {
        self.get(W_STOP) != 0
    }
    pub(crate) fn gen(&self, chan: usize) -> u64 {
        self.get(W_GEN + chan)
    }
    pub(crate) fn slot(&self, s: usize, word: usize) -> &AtomicU64 {
        self.w(W_SLOTS + s * SLOT_WORDS + word)
    }
}

/// A thread's view of its slot.
pub(crate) struct Slot<'a> {
    pub(crate) st: &'a Status,
    pub(crate) idx: usize,
}

impl<'a> Slot<'a> {
    /// Takes slot `idx` for the calling thread.
    pub(crate) fn claim(st: &'a Status, idx: usize) -> Slot<'a> {
        st.slot(idx, S_PID)
            .store(std::process::id() as u64, Ordering::Relaxed);
        st.slot(idx, S_TID).store(gettid(), Ordering::Relaxed);
        st.slot(idx, S_OP_START).store(0, Ordering::Relaxed);
        Slot { st, idx }
    }
    pub(crate) fn begin(&self, op: Op) {
        self.begin_code(op as u64);
    }
    /// Publishes that this thread is inside mutation `m`.
    pub(crate) fn begin_mutation(&self, m: Mutation) {
        self.begin_code(mutation_code(m));
    }
    /// Publishes status code `code` (see [`op_name`]) and when it began.
    pub(crate) fn begin_code(&self, code: u64) {
        self.st.slot(self.idx, S_OP).store(code, Ordering::Relaxed);
        self.st
            .slot(self.idx, S_OP_START)
            .store(monotonic_ns(), Ordering::Relaxed);
    }
    pub(crate) fn end(&self) {
        self.st
            .slot(self.idx, S_OP_START)
            .store(0, Ordering::Relaxed);
        self.st
            .slot(self.idx, S_PROGRESS)
            .fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn heartbeat(&self) {
        self.st
            .slot(self.idx, S_PROGRESS)
            .fetch_add(1, Ordering::Relaxed);
    }
}
