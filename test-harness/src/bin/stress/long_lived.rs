//! `stress --profile long-lived`: one domain used for hours, compressed into minutes.
//!
//! One shimmed worker process runs `--workers` threads that create pipes all the time,
//! splice file ranges into them (themselves, or from a short-lived child process that
//! exits with the bytes still in the pipe), sometimes overwrite the spliced range while
//! the bytes are in flight, then close the ends (`close`, `dup2` over them,
//! `close_range`), reading the pipe and checking every byte first or closing it unread.
//! Other changes of the files come in between. The parent (unshimmed) reads the domain's
//! counters while it runs and fails when a table came near full, a file→pipe call found
//! no room (`copy_fallbacks_registry_full`), any byte differed, or when, after the
//! workers stopped and one more mutating call let a sweep run, segments stayed live.

use super::*;
use splicecow_test_harness::{counter, domain_stats};
use std::os::fd::IntoRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, RwLock};

/// A table more than this full (in percent) counts as near full.
const NEAR_FULL_PERCENT: u64 = 90;
/// Percent of pipe rounds whose bytes a child process splices.
const CHILD_PERCENT: usize = 3;
/// Percent of rounds that overwrite part of the range while it is in the pipe.
const CONFLICT_PERCENT: usize = 20;
/// Percent of operations that change a file with no pipe round.
const MUTATION_PERCENT: usize = 5;
/// How often the parent reads the domain's counters.
const STATS_EVERY: Duration = Duration::from_millis(200);
/// How long the parent waits for the sweep to retire every segment after the run.
const SWEEP_WAIT: Duration = Duration::from_secs(5);

/// Options of `stress long-lived-worker` (internal).
#[derive(Parser, Debug)]
pub(crate) struct LongLivedArgs {
    /// The run directory (data files `f<k>`).
    #[arg(long)]
    dir: PathBuf,
    /// How long the threads run.
    #[arg(long)]
    secs: f64,
    /// Worker threads.
    #[arg(long)]
    threads: usize,
    /// Data files.
    #[arg(long)]
    files: usize,
    /// Seed of every random choice.
    #[arg(long)]
    seed: u64,
}

/// Options of `stress long-lived-child` (internal): splice once into stdout and exit.
#[derive(Parser, Debug)]
pub(crate) struct ChildArgs {
    /// The file spliced from.
    #[arg(long)]
    file: PathBuf,
    /// Where the range starts.
    #[arg(long)]
    off: usize,
    /// The range's length.
    #[arg(long)]
    len: usize,
}

/// What the worker did, printed as one JSON line.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub(crate) struct LongLivedCounts {
    /// Pipe rounds and file changes.
    ops: u64,
    /// Pipes created.
    pipes: u64,
    /// Rounds whose bytes a child process spliced.
    children: u64,
    /// Overwrites of a range with bytes in flight.
    conflicts: u64,
    /// Changes of a file with no pipe round.
    mutations: u64,
    /// Pipes closed with their bytes unread.
    closed_unread: u64,
    /// Bytes read back and checked.
    bytes_verified: u64,
    /// Rounds whose bytes differed from what the file held at the splice.
    mismatches: u64,
    /// Calls that failed.
    errors: u64,
}

/// The worker's shared state.
struct Shared {
    files: Vec<OwnedFd>,
    paths: Vec<PathBuf>,
    size: Vec<usize>,
    /// Splicers hold a file's lock shared from `pread` to the end of the splice, so the
    /// bytes read are the bytes spliced; changes hold it exclusively.
    locks: Vec<RwLock<()>>,
    counts: Mutex<LongLivedCounts>,
    stop: AtomicBool,
    exe: PathBuf,
}

impl Shared {
    fn count(&self, f: impl FnOnce(&mut LongLivedCounts)) {
        if let Ok(mut c) = self.counts.lock() {
            f(&mut c);
        }
    }

    fn error(&self, what: impl FnOnce() -> String) {
        let mut first = false;
        self.count(|c| {
            c.errors += 1;
            first = c.errors <= 5;
        });
        if first {
            eprintln!("long-lived worker: {}", what());
        }
    }

    /// Overwrites up to 4 KiB of file `k` at a random offset inside `[lo, hi)`.
    fn overwrite(&self, rng: &mut Rng, k: usize, lo: usize, hi: usize) {
        let at = lo + rng.below(hi.saturating_sub(lo).max(1));
        let len = rng.range(1, 4096).min(self.size[k] - at).max(1);
        let mut junk = vec![0u8; len];
        rng.fill(&mut junk);
        let _w = self.locks[k].write();
        if let Err(e) = pwrite_all(self.files[k].as_raw_fd(), &junk, at as u64) {
            self.error(|| format!("pwrite f{k} at {at}: {e}"));
        }
    }

    /// One pipe round: create a pipe, splice a range into it (here or from a child),
    /// maybe overwrite the range, close the write end one of three ways, then read and
    /// check the bytes, or close the pipe unread.
    fn round(&self, rng: &mut Rng) {
        let k = rng.below(self.files.len());
        let fd = self.files[k].as_raw_fd();
        let len = rng.range(1, 65536);
        let off = rng.below(self.size[k] - len);
        let (r, w) = match splicecow_test_harness::pipe() {
            Ok(p) => p,
            Err(e) => return self.error(|| format!("pipe: {e}")),
        };
        self.count(|c| c.pipes += 1);
        let by_child = rng.chance(CHILD_PERCENT);
        let (expected, moved) = {
            let _r = self.locks[k].read();
            let expected = pread_up_to(fd, off, len);
            let moved = if by_child {
                self.child_splice(k, off, len, &w)
            } else {
                splice_range(fd, off, w.as_raw_fd(), len)
            };
            (expected, moved)
        };
        if by_child {
            self.count(|c| c.children += 1);
        }
        if moved == 0 {
            return self.error(|| format!("splice f{k} at {off}: nothing moved"));
        }
        if rng.chance(CONFLICT_PERCENT) {
            self.overwrite(rng, k, off, off + moved);
            self.count(|c| c.conflicts += 1);
        }
        close_write_end(rng, w);
        if rng.chance(25) {
            drop(r);
            self.count(|c| c.closed_unread += 1);
            return;
        }
        let got = read_up_to(r.as_raw_fd(), moved);
        close_fd_somehow(rng, r);
        if got[..] != expected[..moved.min(expected.len())] {
            let bad = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
            eprintln!(
                "MISMATCH: {bad} of {moved} bytes spliced from f{k} at {off} differ \
                 (received {} bytes{})",
                got.len(),
                if by_child { ", spliced by a child" } else { "" }
            );
            self.count(|c| c.mismatches += 1);
        } else {
            self.count(|c| c.bytes_verified += moved as u64);
        }
    }

    /// Starts `stress long-lived-child` (same environment: shimmed, same domain) with
    /// `w` as its stdout; it splices the range and exits. Returns the bytes it moved.
    fn child_splice(&self, k: usize, off: usize, len: usize, w: &OwnedFd) -> usize {
        let stdout = match w.try_clone() {
            Ok(fd) => Stdio::from(fd),
            Err(e) => {
                self.error(|| format!("dup for the child: {e}"));
                return 0;
            }
        };
        let status = Command::new(&self.exe)
            .arg("long-lived-child")
            .arg("--file")
            .arg(&self.paths[k])
            .args(["--off", &off.to_string(), "--len", &len.to_string()])
            .stdin(Stdio::null())
            .stdout(stdout)
            .status();
        match status {
            Ok(s) if s.success() => fionread(w.as_raw_fd()),
            other => {
                self.error(|| format!("child splice of f{k}: {other:?}"));
                0
            }
        }
    }
}

/// Closes `fd` by one of the ways a holder goes away: `close`, `dup2` of another fd
/// over it (then `close`), or `close_range`.
fn close_fd_somehow(rng: &mut Rng, fd: OwnedFd) {
    let raw = fd.into_raw_fd();
    match rng.below(3) {
        0 => {
            // SAFETY: raw is ours (taken from the OwnedFd) and closed once.
            unsafe { libc::close(raw) };
        }
        1 => {
            // SAFETY: dup2 of stdin over our own fd raw replaces (closes) its pipe end;
            // the copy of stdin it leaves is closed once.
            unsafe {
                if libc::dup2(0, raw) >= 0 {
                    libc::close(raw);
                }
            }
        }
        _ => {
            // SAFETY: close_range of exactly our own fd raw.
            unsafe { libc::syscall(libc::SYS_close_range, raw as u32, raw as u32, 0u32) };
        }
    }
}

/// Closes the write end `w`, sometimes through a duplicate first (the original replaced
/// by `dup2`, the duplicate closed later), as holders that pass an end on do.
fn close_write_end(rng: &mut Rng, w: OwnedFd) {
    if rng.chance(30) {
        if let Ok(dup) = w.try_clone() {
            close_fd_somehow(rng, w);
            close_fd_somehow(rng, dup);
            return;
        }
    }
    close_fd_somehow(rng, w);
}

/// `stress long-lived-worker`: the shimmed process of the profile.
pub(crate) fn long_lived_worker(args: LongLivedArgs) -> ExitCode {
    let mut files = Vec::new();
    let mut paths = Vec::new();
    let mut size = Vec::new();
    for k in 0..args.files {
        let path = data_path(&args.dir, k);
        match open_raw(&path, libc::O_RDWR) {
            Ok(fd) => {
                size.push(file_size(fd.as_raw_fd()));
                files.push(fd);
            }
            Err(e) => {
                eprintln!("long-lived worker: {e}");
                return ExitCode::from(2);
            }
        }
        paths.push(path);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("long-lived worker: current_exe: {e}");
            return ExitCode::from(2);
        }
    };
    let shared = Shared {
        locks: files.iter().map(|_| RwLock::new(())).collect(),
        files,
        paths,
        size,
        counts: Mutex::new(LongLivedCounts::default()),
        stop: AtomicBool::new(false),
        exe,
    };
    let deadline = Instant::now() + Duration::from_secs_f64(args.secs);
    std::thread::scope(|s| {
        for t in 0..args.threads.max(1) {
            let shared = &shared;
            let mut rng = Rng(args.seed ^ (t as u64 + 1).wrapping_mul(0x9e37_79b9));
            s.spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if rng.chance(MUTATION_PERCENT) {
                        let k = rng.below(shared.files.len());
                        shared.overwrite(&mut rng, k, 0, shared.size[k]);
                        shared.count(|c| c.mutations += 1);
                    } else {
                        shared.round(&mut rng);
                    }
                    shared.count(|c| c.ops += 1);
                }
            });
        }
    });
    let counts = shared.counts.into_inner().unwrap_or_default();
    println!("{}", serde_json::to_string(&counts).unwrap_or_default());
    ExitCode::SUCCESS
}

/// `stress long-lived-child`: splices the range into stdout and exits, the bytes left
/// in the pipe.
pub(crate) fn long_lived_child(args: ChildArgs) -> ExitCode {
    let Ok(fd) = open_raw(&args.file, libc::O_RDONLY) else {
        return ExitCode::from(2);
    };
    let moved = splice_range(fd.as_raw_fd(), args.off, 1, args.len);
    ExitCode::from(u8::from(moved == 0))
}

/// `stress long-lived-poke --file F`: one `pwrite` (a mutating call: it lets a due sweep
/// run in the domain).
pub(crate) fn long_lived_poke(file: &Path) -> ExitCode {
    match open_raw(file, libc::O_WRONLY | libc::O_CREAT) {
        Ok(fd) if pwrite_all(fd.as_raw_fd(), b"p", 0).is_ok() => ExitCode::SUCCESS,
        _ => ExitCode::from(2),
    }
}

/// The highest table use the parent saw.
#[derive(Debug, Default, Clone, Copy)]
struct Peak {
    pipes: u64,
    files: u64,
    registry_full: u64,
    polls: u64,
}

impl Peak {
    fn see(&mut self, stats: &serde_json::Value) {
        self.pipes = self.pipes.max(counter(stats, "pipes_in_use").unwrap_or(0));
        self.files = self.files.max(counter(stats, "files_in_use").unwrap_or(0));
        self.registry_full = self
            .registry_full
            .max(counter(stats, "copy_fallbacks_registry_full").unwrap_or(0));
        self.polls += 1;
    }
}

/// Runs this binary's `args` shimmed in `domain`.
fn shimmed(lib: &Path, domain: &TempDomain, args: &[&std::ffi::OsStr]) -> io::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(args);
    domain.protection(lib).apply(&mut cmd);
    Ok(cmd)
}

/// The parent of `stress --profile long-lived`.
pub(crate) fn run_long_lived(args: &RunArgs) -> ExitCode {
    match long_lived(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("stress --profile long-lived: {e}");
            ExitCode::from(2)
        }
    }
}

fn long_lived(args: &RunArgs) -> io::Result<bool> {
    let lib = args
        .lib
        .clone()
        .map(Ok)
        .unwrap_or_else(library_path)
        .map_err(io::Error::other)?;
    let secs = args.duration.unwrap_or(30.0);
    let seed = args
        .seed
        .unwrap_or_else(|| monotonic_ns() ^ u64::from(std::process::id()));
    let dir = temp_path("stress-long-lived");
    std::fs::create_dir_all(&dir)?;
    for k in 0..args.files {
        let len = args.file_size.max(1 << 17);
        let content: Vec<u8> = (0..len).map(|i| initial_byte(k, i)).collect();
        std::fs::write(data_path(&dir, k), &content)?;
    }
    let scratch = dir.join("scratch");
    let domain = TempDomain::new();
    eprintln!(
        "stress --profile long-lived: seed {seed}, {secs} s, {} threads, {} files, domain {}, \
         dir {}",
        args.workers,
        args.files,
        domain.name(),
        dir.display()
    );
    let t0 = Instant::now();
    let mut worker = shimmed(
        &lib,
        &domain,
        &[
            "long-lived-worker".as_ref(),
            "--dir".as_ref(),
            dir.as_os_str(),
            "--secs".as_ref(),
            secs.to_string().as_ref(),
            "--threads".as_ref(),
            args.workers.to_string().as_ref(),
            "--files".as_ref(),
            args.files.to_string().as_ref(),
            "--seed".as_ref(),
            seed.to_string().as_ref(),
        ],
    )?
    .stdout(Stdio::piped())
    .spawn()?;
    let out = worker.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut out) = out {
            let _ = out.read_to_string(&mut s);
        }
        s
    });
    let mut peak = Peak::default();
    let hang_at = Duration::from_secs_f64(secs + args.hang_secs.max(30.0));
    let status = loop {
        if let Some(status) = worker.try_wait()? {
            break Some(status);
        }
        if t0.elapsed() > hang_at {
            let _ = worker.kill();
            let _ = worker.wait();
            break None;
        }
        if let Ok(stats) = domain_stats(domain.name()) {
            peak.see(&stats);
        }
        std::thread::sleep(STATS_EVERY);
    };
    let line = reader.join().unwrap_or_default();
    let counts: LongLivedCounts = serde_json::from_str(line.trim()).unwrap_or_default();
    let ran = t0.elapsed().as_secs_f64();

    // Idle, then one mutating call at a time until a sweep has retired everything.
    let mut live = u64::MAX;
    let mut last = serde_json::Value::Null;
    let sweep_deadline = Instant::now() + SWEEP_WAIT;
    while Instant::now() < sweep_deadline {
        std::thread::sleep(Duration::from_millis(100));
        let mut poke = shimmed(
            &lib,
            &domain,
            &[
                "long-lived-poke".as_ref(),
                "--file".as_ref(),
                scratch.as_os_str(),
            ],
        )?;
        run_with_timeout(&mut poke, Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(stats) = domain_stats(domain.name()) {
            peak.see(&stats);
            live = counter(&stats, "live_segments").unwrap_or(u64::MAX);
            last = stats;
            if live == 0 {
                break;
            }
        }
    }

    // The domain's own table sizes (chosen when its registry was created).
    let capacity = |name| counter(&last, name).map_or(usize::MAX, |c| c as usize);
    let (max_pipes, max_files) = (capacity("pipe_capacity"), capacity("file_capacity"));
    let near = |used: u64, cap: usize| used * 100 > cap as u64 * NEAR_FULL_PERCENT;
    let mut failures = Vec::new();
    if status.is_none() {
        failures.push(format!(
            "HANG: the worker did not finish within {hang_at:?}"
        ));
    } else if status.is_some_and(|s| !s.success()) {
        failures.push(format!("the worker failed: {status:?}"));
    }
    if counts.ops == 0 || counts.children == 0 {
        failures.push(format!("too little ran: {counts:?}"));
    }
    if counts.mismatches > 0 {
        failures.push(format!("{} rounds with differing bytes", counts.mismatches));
    }
    if counts.errors > 0 {
        failures.push(format!("{} failed calls", counts.errors));
    }
    if peak.registry_full > 0 {
        failures.push(format!(
            "{} file->pipe calls found the registry full (copy_fallbacks_registry_full)",
            peak.registry_full
        ));
    }
    if near(peak.pipes, max_pipes) {
        failures.push(format!(
            "the pipe table came near full: {} of {max_pipes}",
            peak.pipes
        ));
    }
    if near(peak.files, max_files) {
        failures.push(format!(
            "the file table came near full: {} of {max_files}",
            peak.files
        ));
    }
    if live != 0 {
        failures.push(format!(
            "{live} segments still live after the run and a sweep: {last}"
        ));
    }
    let summary = format!(
        "long-lived: {ran:.1} s, ops {}, pipes created {}, children {}, conflicts {}, \
         mutations {}, closed unread {}, bytes verified {}, max pipes_in_use {}/{max_pipes}, \
         max files_in_use {}/{max_files}, copy fallbacks (registry full) {}, \
         mismatches {}, errors {}, live_segments after sweep {}, stats polls {}",
        counts.ops,
        counts.pipes,
        counts.children,
        counts.conflicts,
        counts.mutations,
        counts.closed_unread,
        counts.bytes_verified,
        peak.pipes,
        peak.files,
        peak.registry_full,
        counts.mismatches,
        counts.errors,
        if live == u64::MAX {
            "?".to_string()
        } else {
            live.to_string()
        },
        peak.polls,
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "seconds": ran, "seed": seed, "counts": counts,
                "max_pipes_in_use": peak.pipes, "max_files_in_use": peak.files,
                "copy_fallbacks_registry_full": peak.registry_full,
                "live_segments_after_sweep": live, "passed": failures.is_empty(),
            })
        );
    }
    eprintln!("{summary}");
    for f in &failures {
        eprintln!("stress --profile long-lived: FAILED: {f}");
    }
    if args.keep {
        eprintln!("stress: kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(failures.is_empty())
}
