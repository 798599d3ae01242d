//! `snapshot`: `MAP_PRIVATE` file mappings as true snapshots
//! (`SPLICECOW_PRIVATE_SNAPSHOTS=1`). `tests/snapshots.rs` runs every subcommand without
//! the shim, with the shim but without the option, and with the option, and compares.
//!
//! - `diff --mutation M.. --mutator same|other`: maps a fresh 256 KiB pattern file
//!   `MAP_PRIVATE`, reads every page, mutates the file (in this process, or in this
//!   binary re-executed as `mutate` with the same environment while this process waits
//!   for it), then checks the mapping in a forked reader child; one JSON [`Check`].
//! - `threads`: 4 threads read and compare the mapping without pause while another
//!   process pwrites 50 times and truncates; one JSON [`ThreadsReport`].
//! - `hold --file F`: maps `F` private, prints `ready`, then serves stdin lines: `check`
//!   prints a JSON [`Check`] of the mapping, EOF exits.
//! - `huge`: a 1 GiB sparse file mapped private, 64 KiB of it read, then small pwrites
//!   from another process; one JSON [`HugeReport`] with the RSS before and after.
//! - `fork-race`: forks children that exit at once while the helper thread snapshots
//!   for another process's pwrites; one JSON line (`forks`, `hung`).
//! - `mutate --file F --mutation M..`: the mutator; one JSON [`MutateReport`].
//!
//! Exit status: 0 when the subcommand ran (the caller judges the output), 2 on setup
//! errors (message on stderr).

use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde::Serialize;
use splicecow_test_harness::mutation::{apply, Applied, Edit, Target};
use splicecow_test_harness::sys::{check, open_raw, page_size, pwrite_all};
use splicecow_test_harness::{
    pattern, pattern_byte, pipe, value_name, wait_with_timeout, Mutation, Mutator, TempFile,
    FILE_LEN,
};

/// Bytes a `pwrite`-like mutation writes.
const SMALL: usize = 16;
/// Offset of `pwrite`-like mutations (unless `--at`).
const AT: u64 = 100;
/// Range punch/zero mutations cover: `0..64 KiB`.
const HOLE_LEN: usize = 64 * 1024;
/// Offset of the owner's own store in `--own-write`.
const OWN_AT: usize = 5000;
/// How long a `fork-race` child, which only `_exit`s, may take.
const FORK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a mutator child may take.
const CHILD_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Parser, Debug)]
#[command(about = "MAP_PRIVATE mappings as snapshots: differential cases")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Maps a pattern file private, mutates it, checks the mapping; prints a JSON `Check`.
    Diff {
        /// Mutations applied in order (repeatable).
        #[arg(long, value_enum, required = true)]
        mutation: Vec<Mutation>,
        /// Which process mutates.
        #[arg(long, value_enum, default_value = "other")]
        mutator: Mutator,
        /// Offset of `pwrite`/`write`/`mmap-shared-store`.
        #[arg(long, default_value_t = AT)]
        at: u64,
        /// Map `PROT_READ|PROT_WRITE` and store `Z` at offset 5000 before the mutation.
        #[arg(long)]
        own_write: bool,
        /// Do not read the mapping before the mutation (no page is faulted in).
        #[arg(long)]
        untouched: bool,
    },
    /// Reader threads compare the mapping while another process mutates; prints JSON.
    Threads {
        /// Reader threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// `pwrite`s of the mutator (then it truncates).
        #[arg(long, default_value_t = 50)]
        pwrites: usize,
    },
    /// Maps `--file` private and serves `check` requests on stdin until EOF.
    Hold {
        #[arg(long)]
        file: PathBuf,
    },
    /// A huge sparse file mapped private; RSS around small pwrites; prints JSON.
    Huge {
        /// Size of the file and the mapping, in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: usize,
        /// Bytes read (faulted in) at the start of the mapping, in KiB.
        #[arg(long, default_value_t = 64)]
        touch_kib: usize,
        /// The mutation made from another process after the RSS is measured.
        #[arg(long, value_enum, default_value = "pwrite")]
        mutation: Mutation,
    },
    /// Forks children that exit at once while another process mutates; prints JSON.
    ForkRace {
        #[arg(long, default_value_t = 300)]
        forks: usize,
        #[arg(long, default_value_t = 300)]
        pwrites: usize,
        /// Also map and unmap the file (private) in a loop in another thread.
        #[arg(long)]
        mapper_thread: bool,
    },
    /// Applies mutations to `--file`; prints a JSON `MutateReport`.
    Mutate {
        #[arg(long)]
        file: PathBuf,
        /// Mutations applied in order after the `--pwrites` (repeatable).
        #[arg(long, value_enum)]
        mutation: Vec<Mutation>,
        /// Offset of `pwrite`/`write`/`mmap-shared-store`.
        #[arg(long, default_value_t = AT)]
        at: u64,
        /// First, this many 16-byte pwrites spread over the first 256 KiB, 1 ms apart.
        #[arg(long, default_value_t = 0)]
        pwrites: usize,
        /// The file's length (content rewritten by `open-trunc`/`fopen-w`).
        #[arg(long, default_value_t = FILE_LEN)]
        len: usize,
    },
}

/// What a reader found in a private mapping.
#[derive(Debug, Clone, Serialize)]
struct Check {
    /// `exact`, `changed` or `sigbus` (the reader was killed by `SIGBUS`).
    result: String,
    /// Bytes that differ from the expected content (up to the `SIGBUS`).
    mismatched_bytes: u64,
    /// First differing offset.
    first_mismatch: Option<u64>,
    /// With `--own-write`: the `Z` the owner stored is still there.
    z_kept: Option<bool>,
}

/// What the `threads` subcommand saw.
#[derive(Debug, Clone, Serialize)]
struct ThreadsReport {
    /// Full passes over the mapping, per thread.
    passes: Vec<u64>,
    /// Passes (all threads) after the mutator had exited.
    passes_after_mutator: u64,
    /// Passes in which a thread saw a byte differ from the original.
    changed_passes: u64,
    /// A reader was killed by `SIGBUS` (always false: the handler prints its own line).
    sigbus: bool,
    /// The mutator's report.
    mutator: serde_json::Value,
}

/// What the `huge` subcommand measured (kB, from `/proc/self/status`).
#[derive(Debug, Clone, Serialize)]
struct HugeReport {
    /// Size of the mapping in kB.
    mapping_kb: u64,
    /// `VmRSS`, `RssAnon`, `RssFile`, `RssShmem` after reading `--touch-kib`, and the
    /// system's `Shmem`.
    before: [u64; 5],
    /// The same after a 16-byte mutation inside the read range.
    after_touched: [u64; 5],
    /// The same after a further 16-byte mutation 512 MiB in (never read).
    after_untouched: [u64; 5],
    /// The first `--touch-kib` and the 16 bytes at the second mutation, checked.
    check: Check,
    /// Mutator reports.
    mutators: Vec<serde_json::Value>,
}

/// What a mutator did.
#[derive(Debug, Clone, Serialize)]
struct MutateReport {
    /// Wall time of all the mutations, in milliseconds.
    elapsed_ms: f64,
    /// Mutations that failed, with their errors.
    errors: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Diff {
            mutation,
            mutator,
            at,
            own_write,
            untouched,
        } => diff(&mutation, mutator, at, own_write, untouched),
        Cmd::Threads { threads, pwrites } => threads_case(threads, pwrites),
        Cmd::Hold { file } => hold(&file),
        Cmd::Huge {
            size_mib,
            touch_kib,
            mutation,
        } => huge(size_mib, touch_kib, mutation),
        Cmd::ForkRace {
            forks,
            pwrites,
            mapper_thread,
        } => fork_race(forks, pwrites, mapper_thread),
        Cmd::Mutate {
            file,
            mutation,
            at,
            pwrites,
            len,
        } => {
            let rep = mutate(&file, &mutation, at, pwrites, len);
            print_json(&rep)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapshot: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_json(v: &impl Serialize) -> io::Result<()> {
    let line = serde_json::to_string(v).map_err(io::Error::other)?;
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Content other than the pattern at every byte (`255 - pattern`, and the pattern stays
/// below 251).
fn other_content(len: usize) -> Vec<u8> {
    (0..len).map(|i| 255 - pattern_byte(i)).collect()
}

/// Applies one mutation to `path` (a fresh descriptor each time): writes and stores of
/// 16 `B`s at `at`, holes and zeroed ranges over the first 64 KiB, a truncating open
/// followed by other content (`len` bytes); the rest as [`Edit::standard`] places them.
fn apply_at(path: &Path, m: Mutation, at: u64, len: usize) -> io::Result<()> {
    let mut edit = Edit::standard(m, HOLE_LEN);
    if m.writes_at_offset() {
        edit.off = at;
    } else if edit.data.is_empty() {
        edit.data = other_content(len);
    }
    let mut target = Target::new(path, None)?.prepare(m, path)?;
    match apply(&mut target, &edit)? {
        Applied::Done(_) => Ok(()),
        Applied::Unsupported => Err(io::Error::other(format!(
            "{}: not supported here",
            value_name(&m)
        ))),
    }
}

/// The `mutate` subcommand: `pwrites` spread pwrites, then `muts` in order.
fn mutate(path: &Path, muts: &[Mutation], at: u64, pwrites: usize, len: usize) -> MutateReport {
    let t0 = Instant::now();
    let mut errors = Vec::new();
    for i in 0..pwrites {
        let off = (i as u64 * 4999) % (FILE_LEN - SMALL) as u64;
        if let Err(e) = apply_at(path, Mutation::Pwrite, off, len) {
            errors.push(format!("pwrite {off}: {e}"));
        }
        thread::sleep(Duration::from_millis(1));
    }
    for &m in muts {
        if let Err(e) = apply_at(path, m, at, len) {
            errors.push(format!("{}: {e}", value_name(&m)));
        }
    }
    MutateReport {
        elapsed_ms: t0.elapsed().as_secs_f64() * 1000.0,
        errors,
    }
}

/// Runs this binary's `mutate` with the inherited environment; returns its JSON report.
fn run_mutator(
    path: &Path,
    muts: &[Mutation],
    at: u64,
    pwrites: usize,
) -> io::Result<serde_json::Value> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("mutate").arg("--file").arg(path);
    for m in muts {
        cmd.arg("--mutation").arg(value_name(m));
    }
    cmd.args(["--at", &at.to_string(), "--pwrites", &pwrites.to_string()]);
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().map(io::BufReader::new);
    let status = wait_with_timeout(&mut child, CHILD_TIMEOUT)?;
    if status.map(|s| s.success()) != Some(true) {
        return Err(io::Error::other(format!("mutator: {status:?}")));
    }
    let mut line = String::new();
    if let Some(out) = out.as_mut() {
        out.read_line(&mut line)?;
    }
    serde_json::from_str(&line).map_err(|e| io::Error::other(format!("mutator: {e}: {line:?}")))
}

/// A private file mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is only read through volatile reads (and written by the owner's
// main thread before any reader thread starts); the pointer stays valid until drop.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `path` `MAP_PRIVATE` (writable when `writable`).
    fn private(path: &Path, len: usize, writable: bool) -> io::Result<Mapping> {
        let fd = open_raw(path, libc::O_RDONLY)?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh private mapping of our fd; the fd may be closed afterwards.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    /// Byte `i` (volatile: every call reads the mapping).
    fn get(&self, i: usize) -> u8 {
        assert!(i < self.len);
        // SAFETY: i is inside the mapping, which stays mapped while self lives.
        unsafe { std::ptr::read_volatile(self.ptr.add(i)) }
    }

    /// Reads one byte of every page of `[0, len)` (faults them in).
    fn touch(&self, len: usize) -> u64 {
        (0..len.min(self.len))
            .step_by(page_size())
            .map(|i| self.get(i) as u64)
            .sum()
    }

    /// Checks `ranges` against `expected` in a forked child, so that a `SIGBUS` only
    /// kills the child.
    fn check(
        &self,
        ranges: &[(usize, usize)],
        expected: impl Fn(usize) -> u8,
    ) -> io::Result<Check> {
        let (r, w) = pipe()?;
        // SAFETY: the child only reads memory, writes to a pipe and `_exit`s.
        let pid = unsafe { libc::fork() };
        check(pid as i64, "fork")?;
        if pid == 0 {
            let mut mismatched = 0u64;
            let mut first = u64::MAX;
            for &(lo, hi) in ranges {
                for i in lo..hi {
                    if self.get(i) != expected(i) {
                        mismatched += 1;
                        first = first.min(i as u64);
                    }
                }
            }
            let mut buf = [0u8; 16];
            buf[..8].copy_from_slice(&mismatched.to_ne_bytes());
            buf[8..].copy_from_slice(&first.to_ne_bytes());
            // SAFETY: buf is valid; _exit skips every handler of the copied process.
            unsafe {
                libc::write(w.as_raw_fd(), buf.as_ptr().cast(), buf.len());
                libc::_exit(0);
            }
        }
        drop(w);
        let status = wait_child(pid, CHILD_TIMEOUT)?;
        let mut buf = [0u8; 16];
        // SAFETY: buf is valid for 16 bytes.
        let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if libc::WIFSIGNALED(status) {
            if libc::WTERMSIG(status) == libc::SIGBUS {
                return Ok(Check {
                    result: "sigbus".into(),
                    mismatched_bytes: 0,
                    first_mismatch: None,
                    z_kept: None,
                });
            }
            return Err(io::Error::other(format!(
                "reader killed by signal {}",
                libc::WTERMSIG(status)
            )));
        }
        if n != 16 {
            return Err(io::Error::other(format!(
                "reader: status {status}, read {n}"
            )));
        }
        let mismatched = u64::from_ne_bytes(buf[..8].try_into().unwrap_or_default());
        let first = u64::from_ne_bytes(buf[8..].try_into().unwrap_or_default());
        Ok(Check {
            result: if mismatched == 0 { "exact" } else { "changed" }.into(),
            mismatched_bytes: mismatched,
            first_mismatch: (first != u64::MAX).then_some(first),
            z_kept: None,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps our own mapping once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Waits for child `pid` at most `timeout`; kills it and fails when it is late (a child
/// stuck in the shim's `fork` handler must not outlive the test).
fn wait_child(pid: libc::pid_t, timeout: Duration) -> io::Result<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        check(r as i64, "waitpid")?;
        if r == pid {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(io::Error::other(format!(
                "forked child {pid} hung for {timeout:?} (killed)"
            )));
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// The `fork-race` subcommand: forks `forks` children that `_exit` at once while another
/// process pwrites the mapped file `pwrites` times (the helper thread snapshots all the
/// while), and, with `mapper`, a thread maps and unmaps the file; every child must be
/// gone within [`FORK_TIMEOUT`].
fn fork_race(forks: usize, pwrites: usize, mapper: bool) -> io::Result<()> {
    let file = TempFile::with_pattern("snapfork", FILE_LEN)?;
    let map = Mapping::private(file.path(), FILE_LEN, false)?;
    map.touch(FILE_LEN);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("mutate").arg("--file").arg(file.path());
    cmd.args(["--pwrites", &pwrites.to_string()]);
    let mut mutator = cmd.stdout(std::process::Stdio::null()).spawn()?;
    let stop = AtomicBool::new(false);
    let (done, hung) = thread::scope(|s| {
        if mapper {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    drop(Mapping::private(file.path(), FILE_LEN, false));
                }
            });
        }
        let r = fork_loop(forks);
        stop.store(true, Ordering::Relaxed);
        r
    })?;
    let _ = wait_with_timeout(&mut mutator, CHILD_TIMEOUT);
    drop(map);
    print_json(&serde_json::json!({ "forks": done, "hung": hung }))
}

/// Forks `forks` children that `_exit` at once, one after the other; stops at the first
/// that hangs. Returns the children that exited and the hang, if any.
fn fork_loop(forks: usize) -> io::Result<(usize, Vec<String>)> {
    let mut done = 0usize;
    let mut hung = Vec::new();
    while done < forks {
        // SAFETY: the child calls only _exit.
        let pid = unsafe { libc::fork() };
        check(pid as i64, "fork")?;
        if pid == 0 {
            // SAFETY: leaves the copied process at once.
            unsafe { libc::_exit(0) };
        }
        if let Err(e) = wait_child(pid, FORK_TIMEOUT) {
            hung.push(e.to_string());
            break;
        }
        done += 1;
    }
    Ok((done, hung))
}

/// The owner's expected content: the pattern, with `Z` at 5000 when `own_write`.
fn expected_byte(i: usize, own_write: bool) -> u8 {
    if own_write && i == OWN_AT {
        b'Z'
    } else {
        pattern_byte(i)
    }
}

fn diff(
    muts: &[Mutation],
    mutator: Mutator,
    at: u64,
    own_write: bool,
    untouched: bool,
) -> io::Result<()> {
    let file = TempFile::with_pattern("snap", FILE_LEN)?;
    let map = Mapping::private(file.path(), FILE_LEN, own_write)?;
    if !untouched {
        map.touch(FILE_LEN);
    }
    if own_write {
        // SAFETY: the mapping is writable (own_write) and OWN_AT is inside it.
        unsafe { std::ptr::write_volatile(map.ptr.add(OWN_AT), b'Z') };
    }
    match mutator {
        Mutator::Same => {
            let rep = mutate(file.path(), muts, at, 0, FILE_LEN);
            if !rep.errors.is_empty() {
                return Err(io::Error::other(rep.errors.join("; ")));
            }
        }
        Mutator::Other => {
            let rep = run_mutator(file.path(), muts, at, 0)?;
            if rep["errors"].as_array().is_some_and(|e| !e.is_empty()) {
                return Err(io::Error::other(format!("mutator: {rep}")));
            }
        }
    }
    let mut check = map.check(&[(0, FILE_LEN)], |i| expected_byte(i, own_write))?;
    if own_write && check.result != "sigbus" {
        check.z_kept = Some(map.get(OWN_AT) == b'Z');
    }
    print_json(&check)
}

/// Passes in which a reader thread saw a change.
static CHANGED_PASSES: AtomicU64 = AtomicU64::new(0);

/// `SIGBUS` in the `threads` owner: prints `{"sigbus":true,"changed_passes":N}` and exits
/// (only async-signal-safe calls).
extern "C" fn on_sigbus(_: libc::c_int) {
    let mut buf = *b"{\"sigbus\":true,\"changed_passes\":00000000000000000000}\n";
    let mut n = CHANGED_PASSES.load(Ordering::Relaxed);
    let end = buf.len() - 3;
    for k in 0..20 {
        buf[end - k] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // SAFETY: write and _exit are async-signal-safe; buf is valid.
    unsafe {
        libc::write(1, buf.as_ptr().cast(), buf.len());
        libc::_exit(0);
    }
}

fn threads_case(threads: usize, pwrites: usize) -> io::Result<()> {
    let file = TempFile::with_pattern("snapthr", FILE_LEN)?;
    let map = Mapping::private(file.path(), FILE_LEN, false)?;
    map.touch(FILE_LEN);
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
    let expected = pattern(FILE_LEN);
    let stop = AtomicBool::new(false);
    let mutator_done = AtomicBool::new(false);
    let after = AtomicU64::new(0);
    let (passes, mutator) = thread::scope(|s| {
        let readers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut passes = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let done = mutator_done.load(Ordering::Acquire);
                        let changed = (0..FILE_LEN).any(|i| map.get(i) != expected[i]);
                        if changed {
                            CHANGED_PASSES.fetch_add(1, Ordering::Relaxed);
                        }
                        passes += 1;
                        if done {
                            after.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    passes
                })
            })
            .collect();
        let mutator = run_mutator(file.path(), &[Mutation::Ftruncate], AT, pwrites);
        mutator_done.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(5);
        while after.load(Ordering::Relaxed) < 2 * threads as u64 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        let passes: Vec<u64> = readers.into_iter().map(|h| h.join().unwrap_or(0)).collect();
        (passes, mutator)
    });
    print_json(&ThreadsReport {
        passes,
        passes_after_mutator: after.load(Ordering::Relaxed),
        changed_passes: CHANGED_PASSES.load(Ordering::Relaxed),
        sigbus: false,
        mutator: mutator?,
    })
}

fn hold(path: &Path) -> io::Result<()> {
    let len = std::fs::metadata(path)?.len() as usize;
    let map = Mapping::private(path, len, false)?;
    map.touch(len);
    {
        let mut out = io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
    }
    for line in io::stdin().lock().lines() {
        if line?.trim() == "check" {
            print_json(&map.check(&[(0, len)], pattern_byte)?)?;
        }
    }
    Ok(())
}

/// `VmRSS`, `RssAnon`, `RssFile`, `RssShmem` of this process and the system's `Shmem`
/// (memfd copies count there before they are read), in kB.
fn rss() -> io::Result<[u64; 5]> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let mut v = [0u64; 5];
    for line in status.lines().chain(meminfo.lines()) {
        let Some((k, rest)) = line.split_once(':') else {
            continue;
        };
        let idx = match k {
            "VmRSS" => 0,
            "RssAnon" => 1,
            "RssFile" => 2,
            "RssShmem" => 3,
            "Shmem" => 4,
            _ => continue,
        };
        v[idx] = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
    }
    Ok(v)
}

fn huge(size_mib: usize, touch_kib: usize, mutation: Mutation) -> io::Result<()> {
    let size = size_mib << 20;
    let touch = (touch_kib << 10).min(size);
    let far = (size / 2) as u64;
    let file = TempFile::adopt(splicecow_test_harness::temp_path("snaphuge"));
    {
        let fd = open_raw(file.path(), libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC)?;
        pwrite_all(fd.as_raw_fd(), &pattern(touch), 0)?;
        check(
            // SAFETY: ftruncate touches no memory of ours.
            unsafe { libc::ftruncate(fd.as_raw_fd(), size as i64) } as i64,
            "ftruncate",
        )?;
    }
    let map = Mapping::private(file.path(), size, false)?;
    map.touch(touch);
    let before = rss()?;
    let m1 = run_mutator(file.path(), &[mutation], AT, 0)?;
    let after_touched = rss()?;
    let m2 = run_mutator(file.path(), &[Mutation::Pwrite], far, 0)?;
    let after_untouched = rss()?;
    let far = far as usize;
    let check = map.check(&[(0, touch), (far, far + SMALL)], |i| {
        if i < touch {
            pattern_byte(i)
        } else {
            0
        }
    })?;
    print_json(&HugeReport {
        mapping_kb: (size >> 10) as u64,
        before,
        after_touched,
        after_untouched,
        check,
        mutators: vec![m1, m2],
    })
}
