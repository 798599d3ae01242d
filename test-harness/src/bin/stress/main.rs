//! `stress`: an fsx-style, model-checked random exerciser for splicecow, with fault
//! injection.
//!
//! # Layout
//!
//! The parent (`stress [OPTIONS]`, never preloaded itself) creates a run directory under
//! `/var/tmp` holding `--files` shared data files (`f<k>`, a known pattern), after them
//! the relay worker's file and the quiet victim's files (one per pause point), a *model*
//! of each (`m<k>`: the content the file must have), one lock file per data file
//! (`l<k>`), a side file (source of `copy_file_range`) and a *status page* (`status`, a
//! small shared-memory table of atomic words: stop flag, kill counters, channel
//! generations, counters and one progress slot per worker thread). It then re-executes
//! itself as `stress worker ...` with the shim preloaded, in three fresh domains: the
//! *main* domain, where everything below happens unless said otherwise, the *relay*
//! domain and the *quiet* domain.
//!
//! - **producers** (the first with 2 threads): each thread owns two *channels* (FIFOs or
//!   anonymous pipes) and a private staging pipe. Under the data file's `flock` it reads
//!   the bytes it is about to move (`pread`: the file's content at that moment, which no
//!   one can change while the lock is held), appends an INTENT record with those exact
//!   bytes to the channel's log, moves them (`splice` with/without offset, `sendfile`,
//!   `splice` into the staging pipe then `tee` + pipe→pipe `splice`, or a `write`/`writev`
//!   header), and appends a DONE record with the count the call returned. It also
//!   mutates files and, now and then, starts a child (below).
//! - **consumers** (threads, one channel each): read the channel (`read`, or `splice` into
//!   a private sink file) and compare every byte with the records of the channel's log.
//! - **mutators** (the first with 2 threads): under the file lock, apply a random
//!   mutation (pwrite, write, pwritev, punch hole, zero range, collapse/insert range,
//!   ftruncate down and back up, truncate by path, open `O_TRUNC` + rewrite, a store
//!   through a `MAP_SHARED` mapping, `copy_file_range`) to the data file and the same
//!   change, by plain `pread`/`pwrite`/`ftruncate`, to its model; the model is compared
//!   with the file regularly and at every splice. They start children too.
//! - **children** ([`spawn_child`], about 1 % of a producer's or mutator's operations,
//!   interleaved with the thread's own splices and mutations), the way CPython's
//!   `subprocess` and shells start them: `vfork` whose child `dup2`s, `close`s and
//!   `execve`s `/bin/true`; `vfork` whose child `write`s into an error pipe and `_exit`s;
//!   `vfork` whose `execve` fails and which reports the errno through the pipe;
//!   `vfork` whose child `pwrite`s into a data file (a modelled mutation, made on the
//!   parent's memory) before `execve`; `clone(CLONE_VM | CLONE_VFORK)` + `execve`;
//!   `posix_spawn` with file actions. The child's exit status and error-pipe bytes are
//!   checked. A child runs on its parent thread's memory, thread-local storage included:
//!   if it leaves the thread's shim state wrong (an "inside the shim" flag set by an
//!   `execve` hook that never returned), the thread's later hooks call straight through,
//!   and its next splices and mutations make the consumers or the model see changed
//!   bytes.
//! - **relay** (one worker in the relay domain, [`relay_main`]): a feeder thread and two
//!   relay threads, one forwarding with a blocking pipe→pipe `splice`, one with a
//!   blocking `tee` plus a `read` that drains the source. Each round ([`relay_round`])
//!   first rewrites the domain's only file (`O_TRUNC`), which leaves nothing live in the
//!   domain, starts the relay's call on an empty source pipe and waits until the relay
//!   thread sleeps in it, only then splices a range of the file into the source (logged
//!   like any producer's transfer), and once the bytes are past the relay overwrites part
//!   of that range. The relay forwards straight into a channel, or into a private pipe
//!   whose bytes the feeder splices into the channel only after the overwrite (so the
//!   consumer cannot read them first). The channel's consumer verifies the relayed bytes
//!   like any others. The relay domain has a domain of its own because the main one is
//!   never idle: a relay there never starts its call with nothing live.
//! - **victim** (only with `--faults`; a producer of the main domain with a test pause,
//!   [`ProducerStyle::victim`]): its incarnations take the points of
//!   `SPLICECOW_TEST_PAUSE=POINT:US` in turn (`record`, `commit`, `retire`, `holder`:
//!   inside a registry update; `settle`: between drain and refill), each pausing with the
//!   registry lock held; `call`: a recorded splice paused with the lock free and its
//!   pipe marked as in the call, before the kernel call. Every transfer goes through the other of two descriptors of its
//!   channel (a new holder each time), a quarter start at the end of the file (the intent
//!   is dropped at commit), and 30 % of its operations are mutations (settles).
//! - **quiet victim** (only with `--faults`; alone in the quiet domain,
//!   [`quiet_victim_main`]): pauses at the same points in turn, in calls built to reach
//!   them ([`torn_update_attempt`]), and each incarnation starts by checking, for each of
//!   its files, that a later process of the domain is still protected
//!   ([`protection_check`]: splice, retire what the killed incarnations left recorded,
//!   overwrite, read back). In the main domain a count torn one too low cannot show:
//!   other segments are always live there, so it never reaches zero.
//!
//! So the contract is checked exactly: each byte a consumer reads must be the byte the
//! file held when the producer's splice returned, although mutations run right after it.
//!
//! # Faults
//!
//! With `--faults` the parent SIGKILLs random workers of `--kill-roles` (`--kill-rate`
//! per second) and restarts them. A worker's death ends the *generation* of each of its
//! channels: the surviving side finishes it (a consumer verifies everything delivered up
//! to EOF) and both sides move on to a fresh FIFO. The kills of both victims are aimed:
//! the parent waits until the victim's slot shows it inside an operation, stops it and
//! reads `/proc/<pid>/task/*/syscall`: the shim's pause is the only `SYS_nanosleep` in
//! the process (Rust and glibc use `clock_nanosleep`), and the requested time, read from
//! `/proc/<pid>/mem`, tells it from the shim's short waits for the lock. Such a kill
//! leaves the registry lock held, in the middle of an update or a settle, and is counted
//! per pause point; a probe process then measures how long the next registry operation
//! of the main domain takes (lock takeover). Later operations must stay protected: the
//! consumers, the model and the quiet victim's checks go on.
//!
//! The settle journal leaves a documented window: a settler killed after a `read` of the
//! drain returned but before it stored the count loses those bytes, one killed after a
//! write-back `write` returned but before it stored its progress has that chunk written
//! twice by whoever finishes the settle (a SIGKILL that arrives during the system call
//! takes effect right after it, so the window is as long as the call). Consumers
//! recognise both: the stream continues correctly after a gap (or ends early), or after
//! repeating up to 1 MiB it had delivered already, and a process that mutates files of
//! the channel's domain was killed after those bytes were spliced (each domain with
//! channels has its own kill counter). They are counted as *settle-window losses* and
//! *repeats*, never as mismatches; anything else is a mismatch. Bytes a relay held when
//! it was killed are never confirmed in the log (the feeder logs DONE once they are in
//! the channel), so they are no loss either.
//!
//! # Watchdog
//!
//! Every thread publishes the operation it is in; a thread inside one operation, or a
//! run without any progress, for `--hang-secs` is a hang: the parent prints each
//! worker's last operation, `/proc/<pid>/task/*/{wchan,syscall,stack}` and the
//! registries' counters, kills everything and fails.
//!
//! # Not exercised here
//!
//! Readers and relays outside the shim (every consumer and relay is a shimmed worker),
//! stdio and `FICLONE` mutations, `MAP_PRIVATE` snapshots (`--private-snapshots`),
//! detect and copy modes, and pipes grown beyond 1 MiB (settled without the journal):
//! the scenario, fidelity, snapshot and CLI tests cover those. What splicecow does not
//! protect at all (sockets, io_uring, raw system calls) is out of scope.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod children;
mod consumer;
mod log;
mod long_lived;
mod model;
mod parent;
mod producer;
mod relay;
mod report;
mod run;
mod status;
mod workers;

use children::*;
use consumer::*;
use log::*;
use long_lived::*;
use model::*;
use parent::*;
use producer::*;
use relay::*;
use report::*;
use run::*;
use status::*;
use workers::*;

use clap::Parser;
use clap::ValueEnum;
use serde::Serialize;
use splicecow_test_harness::mutation::{apply, Applied, Edit, Target};
use splicecow_test_harness::rng::Rng;
use splicecow_test_harness::sys::{
    cpath, errno, file_size, monotonic_ns, open_raw, pread_up_to, pwrite_all, read_up_to,
    splice_range,
};
use splicecow_test_harness::{
    library_path, pattern_byte, run_with_timeout, temp_path, value_name, Mutation, TempDomain,
};

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

/// Options of a stress run (the parent).
#[derive(Parser, Debug, Clone)]
#[command(
    about = "fsx-style model-checked random stress for splicecow, with SIGKILL fault injection",
    after_help = "Examples:\n  stress --duration 30 --faults\n  stress --ops 1000000 --faults   \
                  # the long profile (scripts/stress)\n  stress --seed 1234 --duration 10   \
                  # reproduce a run's random choices"
)]
struct RunArgs {
    /// What the run exercises: the model-checked workload with fault injection, or one
    /// long-lived domain whose pipes are created and closed all the time (`--workers`:
    /// its threads; `--duration`, `--files`, `--file-size`, `--seed` apply).
    #[arg(long, value_enum, default_value = "model")]
    profile: Profile,
    /// Stop after this many seconds (default 30 unless --ops is given).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many producer + mutator operations.
    #[arg(long)]
    ops: Option<u64>,
    /// Worker processes (at least 8 are started).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Seed of every random choice (printed; default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Inject faults: SIGKILL random workers and restart them.
    #[arg(long)]
    faults: bool,
    /// Kills per second with faults (implies --faults).
    #[arg(long)]
    kill_rate: Option<f64>,
    /// Roles the faults pick their victims from.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "producer,consumer,mutator,victim,relay,quiet-victim"
    )]
    kill_roles: Vec<String>,
    /// Shared data files.
    #[arg(long, default_value_t = 4)]
    files: usize,
    /// Initial size of each data file in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    file_size: usize,
    /// Seconds without progress (or inside one operation) that count as a hang.
    #[arg(long, default_value_t = 20.0)]
    hang_secs: f64,
    /// The victim's test pause (`SPLICECOW_TEST_PAUSE=POINT:US`), in microseconds.
    #[arg(long, alias = "settle-pause-us", default_value_t = 2000)]
    pause_us: u64,
    /// The pause points each victim's incarnations take in turn.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = PAUSE_POINTS,
        default_value = "record,commit,retire,holder,settle,call"
    )]
    pause_points: Vec<String>,
    /// libsplicecow.so (default: $SPLICECOW_LIB, else target/release, else target/debug).
    #[arg(long)]
    lib: Option<PathBuf>,
    /// Print the report as one JSON line on stdout (the text report goes to stderr).
    #[arg(long)]
    json: bool,
    /// Keep the run directory.
    #[arg(long)]
    keep: bool,
    /// Skip `write`/`writev` headers into pipes (to isolate other failures).
    #[arg(long)]
    no_headers: bool,
    /// No child processes from producers and mutators (vfork, clone, posix_spawn).
    #[arg(long)]
    no_spawns: bool,
    /// No relay worker (blocking pipe->pipe splice and tee in a domain of their own).
    #[arg(long)]
    no_relays: bool,
    /// Channel pipes: named FIFOs, anonymous pipes (reopened by the producer through
    /// `/proc/<consumer>/fd/<n>`), or a random choice per generation.
    #[arg(long, value_parser = ["mixed", "fifo", "anon"], default_value = "mixed")]
    pipes: String,
}

/// The workloads of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Profile {
    /// fsx-style model-checked random stress with optional fault injection.
    Model,
    /// One domain, pipes created and closed all the time; the tables must never fill.
    LongLived,
}

/// Options of `stress worker` (internal).
#[derive(Parser, Debug)]
struct WorkerArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    role: String,
    #[arg(long)]
    threads: usize,
    #[arg(long)]
    slot_base: usize,
    #[arg(long, value_delimiter = ',')]
    chans: Vec<usize>,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    files: usize,
    #[arg(long)]
    max_size: usize,
    #[arg(long)]
    no_headers: bool,
    #[arg(long)]
    no_spawns: bool,
    #[arg(long, default_value = "mixed")]
    pipes: String,
    /// The data files this worker splices from and mutates: `first..first + count`.
    #[arg(long)]
    own_first: usize,
    #[arg(long)]
    own_count: usize,
    /// A victim's test pause point (see `SPLICECOW_TEST_PAUSE`).
    #[arg(long)]
    pause_point: Option<String>,
}

/// Options of `stress probe` (internal): time one registry operation after a kill.
#[derive(Parser, Debug)]
struct ProbeArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    kill_ns: u64,
}

// ---------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------

fn gettid() -> u64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u64 }
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn mkfifo(path: &Path) {
    let c = cpath(path).expect("path without NUL");
    // SAFETY: c is a valid path; an existing FIFO (EEXIST) is fine.
    unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
}

fn fionread(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a valid pointer.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return 0;
    }
    n.max(0) as usize
}

fn pipe_capacity(fd: RawFd) -> usize {
    // SAFETY: F_GETPIPE_SZ takes no argument.
    let r = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if r > 0 {
        r as usize
    } else {
        65536
    }
}

/// The options of an internal subcommand: the command line without its name.
fn internal<A: Parser>(mut argv: Vec<std::ffi::OsString>) -> A {
    argv.remove(1);
    A::parse_from(argv)
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("worker") => worker_main(internal(argv)),
        Some("probe") => probe_main(internal(argv)),
        Some("long-lived-worker") => long_lived_worker(internal(argv)),
        Some("long-lived-child") => long_lived_child(internal(argv)),
        Some("long-lived-poke") => match argv.get(3) {
            Some(file) if argv.get(2).is_some_and(|a| a == "--file") => {
                long_lived_poke(Path::new(file))
            }
            _ => ExitCode::from(2),
        },
        _ => {
            let args = RunArgs::parse();
            match args.profile {
                Profile::Model => run(args),
                Profile::LongLived => run_long_lived(&args),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(exp: Vec<u8>, recs: &[(u64, u64)]) -> Expect {
        Expect {
            base: 0,
            firm: exp.len(),
            exp,
            open: None,
            recs: recs.iter().map(|&(s, k)| (s, k, 0, 0)).collect(),
            cursor: 0,
            floor: 0,
        }
    }

    #[test]
    fn spawn_weights_are_percentages_and_names_are_unique() {
        assert_eq!(SPAWN_KINDS.iter().map(|k| k.1).sum::<usize>(), 100);
        let names: std::collections::BTreeSet<&str> = SPAWN_KINDS.iter().map(|k| k.2).collect();
        assert_eq!(names.len(), SPAWN_KINDS.len());
    }

    #[test]
    fn search_helpers() {
        assert_eq!(occurrences(b"aa", b"aaab"), vec![0, 1]);
        assert_eq!(z_function(&[1, 1, 2, 1, 1]), vec![0, 1, 0, 2, 1]);
    }

    /// The lost bytes begin with the same bytes as the record the stream resumes at:
    /// the first differing byte lies inside the gap.
    #[test]
    fn loss_whose_start_matches_the_resumed_record() {
        let mut exp = Vec::new();
        exp.extend((0..5000u32).map(|i| (i * 7 % 251) as u8 | 1)); // record 0 (kills 0)
        exp.extend([0u8; 300]); // record 1 (kills 0), lost
        exp.extend((0..200u32).map(|i| (i % 13) as u8 | 1)); // record 1 continued
        let resume = exp.len() as u64;
        exp.extend([0u8; 100]); // record 2 (kills 1) starts with zeros
        exp.extend((0..8000u32).map(|i| (i * 3 % 241) as u8 | 1));
        let e = expect(exp.clone(), &[(0, 0), (5000, 0), (resume, 1)]);
        // Received: record 0, then record 2 (its 100 zeros pass as record 1's).
        let at = 5100u64;
        let rest = &exp[(resume + 100) as usize..];
        match e.find_loss(at, rest, 1) {
            Loss::Gap(d, from) => assert_eq!((d, from), (500, 5000)),
            _ => panic!("not recognised as a loss"),
        }
        // No kill after the lost bytes were spliced: a mismatch.
        assert!(matches!(e.find_loss(at, rest, 0), Loss::No));
    }

    /// A chunk written back twice (a settler killed before it stored its progress): the
    /// stream repeats it, then goes on.
    #[test]
    fn repeat_of_a_chunk_written_back_twice() {
        let mut exp = vec![0u8; 20000];
        Rng(5).fill(&mut exp);
        let e = expect(exp.clone(), &[(0, 0), (8000, 0), (15000, 1)]);
        // Received: the first 12000 bytes, then from 9000 on again.
        assert_ne!(exp[9000], exp[12000]);
        let rest = &exp[9000..];
        match e.find_repeat(12000, rest, 1) {
            Loss::Gap(d, from) => assert_eq!((d, from), (3000, 9000)),
            _ => panic!("not recognised as a repeat"),
        }
        // No kill after the repeated bytes were spliced: a mismatch.
        assert!(matches!(e.find_repeat(12000, rest, 0), Loss::No));
        // Bytes that are nowhere earlier in the stream are no repeat.
        let mut other = vec![0u8; 4096];
        Rng(6).fill(&mut other);
        assert!(matches!(e.find_repeat(12000, &other, 1), Loss::No));
    }

    /// A run of equal bytes longer than the gap: the stream resumes at a record that
    /// starts before the first differing byte.
    #[test]
    fn loss_inside_a_long_run_of_zeros() {
        let mut exp: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8 | 1).collect();
        exp.extend([0u8; 1000]); // record 1 [5000, 5400) (kills 0, lost), record 2 (kills 1)
        exp.extend((0..8000u32).map(|i| (i * 3 % 241) as u8 | 1));
        let e = expect(exp.clone(), &[(0, 0), (5000, 0), (5400, 1)]);
        let at = 5600u64;
        let rest = &exp[6000..];
        match e.find_loss(at, rest, 1) {
            Loss::Gap(d, from) => assert_eq!((d, from), (400, 5000)),
            _ => panic!("not recognised as a loss"),
        }
    }
}
