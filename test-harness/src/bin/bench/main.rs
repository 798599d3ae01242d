//! `bench`: splicecow's benchmarks, run side by side in one go.
//!
//! ```text
//! bench [--quick] [--json PATH]
//! ```
//!
//! Its sections, each printed as a table with its goal next to the numbers:
//!
//! 1. throughput file → pipe → unshimmed reading process (raw splice, raw non-blocking
//!    splice + poll, splicecow protect, splicecow copy mode, a pread/write loop) at
//!    64 KiB, 256 KiB and 1 MiB pipes;
//! 2. hook cost of 64-byte `pwrite`s to an unrelated file (no shim, idle registry,
//!    1000 live segments on other files, a domain aged by 10,000 pipelines, 100 other
//!    domains of the user alive with nothing live, and with a live segment in one of
//!    them), and (2b) of `dup` + `close` of fds that are no tracked pipe;
//! 3. conflict cost: a `pwrite` that hits an in-flight segment (settle included) against
//!    the same `pwrite` with nothing in flight, for a 64 KiB and a 1 MiB pipe;
//! 4. scale: 1000 pipes × 64 segments live, cost of a mutation lookup and a splice record;
//! 5. start cost: `splicecow run -- true` against `true`;
//! 6. per-call cost: same-thread splice + read at 4 KiB and 64 KiB, 2 and 4 threads, a
//!    `pwrite` while a pipeline streams, detect mode with and without stacks;
//! 7. strict mode: a static program's trapped `pwrite`, a dynamic one under `--strict`.
//!
//! The shim acts on the process it is preloaded into, so every measured variant runs in
//! a child: this binary re-executed as `bench worker <kind> ...`, with or without
//! `LD_PRELOAD`, printing one JSON line that the parent parses. Variants alternate
//! (ABCD ABCD ...) and the tables show medians, because a 2-core machine is noisy.
//! Missed goals are reported, never an error: the exit status is non-zero only when a
//! measurement could not be made.

mod calls;
mod close;
mod conflict;
mod hook;
mod scale;
mod start;
mod strict;
mod throughput;
mod worker;

use calls::*;
use close::*;
use conflict::*;
use hook::*;
use scale::*;
use start::*;
use strict::*;
use throughput::*;
use worker::*;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use splicecow_registry::env::{self as names, Mode};
use splicecow_test_harness::sys::{os_err, read_exact_fd, write_all_fd, Res};
use splicecow_test_harness::{
    find_program, library_path, pipe, run_with_timeout, strip_shim_env, target_dir, TempDomain,
};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const GIB: f64 = (1u64 << 30) as f64;

/// Environment variable that hands the `splicecow` CLI path to workers.
const CLI_ENV: &str = "BENCH_SPLICECOW_CLI";

/// Environment variable that pins a worker to one CPU (throughput runs: the writer on
/// CPU 0, the reader on CPU 1, so every run has the same placement).
const CPU_ENV: &str = "BENCH_CPU";

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Benchmarks splicecow side by side (throughput, hook cost, conflict cost, scale, \
             start cost) and prints tables with their goals"
)]
struct Cli {
    /// Small sizes and few repetitions (< 60 s).
    #[arg(long)]
    quick: bool,
    /// Also write machine-readable results to PATH.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Do not pin the throughput writer/reader to CPUs 0/1.
    #[arg(long)]
    no_pin: bool,
    /// Run only these sections (comma-separated: throughput, hook, close, calls,
    /// conflict, scale, start, strict), e.g. when profiling.
    #[arg(long, value_name = "LIST")]
    only: Option<String>,
    #[command(subcommand)]
    worker: Option<Internal>,
}

/// The measured processes (internal).
#[derive(Subcommand, Debug)]
enum Internal {
    /// A measured process: `worker KIND ARGS...` (see `worker_main`).
    #[command(hide = true)]
    Worker {
        /// The kind and its positional arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Some(Internal::Worker { args }) = &cli.worker {
        match worker_main(args) {
            Ok(Some(v)) => println!("{v}"),
            Ok(None) => {}
            Err(e) => {
                eprintln!("bench worker {}: {e}", args.join(" "));
                std::process::exit(1);
            }
        }
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = parent_main(&cli, &args) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// Small statistics and syscall helpers
// ---------------------------------------------------------------------------------------

/// The `p`-th percentile (0..=100, nearest rank) of `v`; 0 for an empty slice.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The median of `v` (mean of the two middle values for an even count).
fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// `F_SETPIPE_SZ`; returns the capacity the kernel granted.
fn set_pipe_size(fd: RawFd, size: usize) -> Res<usize> {
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours.
    let r = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size as libc::c_int) };
    if r < 0 {
        return Err(os_err(&format!("F_SETPIPE_SZ {size}")));
    }
    Ok(r as usize)
}

/// One `splice(fd_in, &off, fd_out, NULL, len, flags)` through the (possibly hooked) libc.
fn splice_at(fd_in: RawFd, off: &mut i64, fd_out: RawFd, len: usize, flags: u32) -> isize {
    // SAFETY: `off` is a valid loff_t we own; the kernel validates the fds.
    unsafe {
        libc::splice(
            fd_in,
            off as *mut i64,
            fd_out,
            std::ptr::null_mut(),
            len,
            flags,
        )
    }
}

/// One `pwrite` through the (possibly hooked) libc.
fn pwrite(fd: RawFd, buf: &[u8], off: i64) -> isize {
    // SAFETY: buf is valid for buf.len() bytes.
    unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off) }
}

/// One `read` through libc.
fn read_fd(fd: RawFd, buf: &mut [u8]) -> isize {
    // SAFETY: buf is valid and writable for buf.len() bytes.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

/// Raises `RLIMIT_NOFILE` to at least `want` (up to the hard limit); returns the new
/// soft limit.
fn raise_nofile(want: u64) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: rl is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    if rl.rlim_cur < want {
        rl.rlim_cur = want.min(rl.rlim_max);
        // SAFETY: rl is a valid rlimit; only the soft limit changes.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
    }
    rl.rlim_cur
}

/// Pins the calling process to `cpu` (`sched_setaffinity`).
fn pin_to_cpu(cpu: usize) -> Res<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit inside `set` (cpu is checked against its size).
    unsafe { libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size we pass.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(os_err(&format!("sched_setaffinity({cpu})")));
    }
    Ok(())
}

/// Byte `i` of every benchmark file (never zero, varies within and across pages).
fn fill_byte(i: usize) -> u8 {
    ((i * 7 + i / 4096) % 251) as u8 + 1
}

/// Creates `path` with `len` bytes of [`fill_byte`] content.
fn create_data_file(path: &Path, len: usize) -> Res<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    let chunk: Vec<u8> = (0..MIB.min(len.max(1))).map(fill_byte).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n])
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        left -= n;
    }
    Ok(f)
}

/// Runs `splicecow stats --json` for the worker's domain (if any) and returns its
/// `live_segments`, or -1 when unknown.
fn live_segments_now() -> i64 {
    let (Some(cli), Ok(domain)) = (std::env::var_os(CLI_ENV), std::env::var(names::DOMAIN)) else {
        return -1;
    };
    let mut cmd = Command::new(cli);
    strip_shim_env(&mut cmd);
    cmd.args(["stats", "--json", "--domain", &domain]);
    let Ok(out) = run_with_timeout(&mut cmd, Duration::from_secs(10)) else {
        return -1;
    };
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["live_segments"].as_i64())
        .unwrap_or(-1)
}

// ---------------------------------------------------------------------------------------
// Parent: orchestration and report
// ---------------------------------------------------------------------------------------

/// How a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shim {
    /// No `LD_PRELOAD`.
    Off,
    /// `LD_PRELOAD` with `SPLICECOW_MODE=protect`.
    Protect,
    /// `LD_PRELOAD` with `SPLICECOW_MODE=copy`.
    Copy,
    /// `LD_PRELOAD` with `SPLICECOW_MODE=detect` (call stacks kept, the default).
    Detect,
    /// `LD_PRELOAD` with `SPLICECOW_MODE=detect` and `SPLICECOW_STACKS=0`.
    DetectNoStacks,
}

/// Everything the parent needs to start workers.
struct Ctx {
    exe: PathBuf,
    lib: PathBuf,
    cli: Option<PathBuf>,
    dir: PathBuf,
    /// Pin throughput writer and reader to CPUs 0 and 1 (`--no-pin` turns it off).
    pin: bool,
}

impl Ctx {
    /// A worker command with `shim` applied; the domain (if any) must outlive the run.
    fn command(&self, shim: Shim, domain: Option<&TempDomain>, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.exe);
        strip_shim_env(&mut cmd);
        cmd.arg("worker").args(args);
        if let Some(cli) = &self.cli {
            cmd.env(CLI_ENV, cli);
        }
        if shim != Shim::Off {
            let d = domain.expect("shimmed worker needs a domain");
            let mode = match shim {
                Shim::Copy => Mode::Copy,
                Shim::Detect | Shim::DetectNoStacks => Mode::Detect,
                Shim::Off | Shim::Protect => Mode::Protect,
            };
            cmd.env("LD_PRELOAD", &self.lib)
                .env(names::DOMAIN, d.name())
                .env(names::MODE, mode.name());
            if shim == Shim::DetectNoStacks {
                cmd.env(names::STACKS, "0");
            }
        }
        cmd
    }

    /// Runs one worker to completion and parses its JSON line.
    fn run(&self, shim: Shim, args: &[String]) -> Res<Value> {
        let domain = (shim != Shim::Off).then(TempDomain::new);
        let mut cmd = self.command(shim, domain.as_ref(), args);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(600))
            .map_err(|e| format!("spawn worker: {e}"))?;
        if !out.status.is_some_and(|s| s.success()) {
            return Err(format!("worker {args:?} ({shim:?}) failed: {}", out.describe()).into());
        }
        parse_line(&out.stdout)
            .ok_or_else(|| format!("worker {args:?}: no result: {}", out.describe()).into())
    }
}

/// Processes of other domains of the user, each preloaded in a domain of its own and
/// sleeping (`bench worker peer`), alive while a hook row is measured. Closing their
/// stdin ends them; their registries go with their [`TempDomain`]s.
struct Peers {
    procs: Vec<(std::process::Child, TempDomain)>,
}

impl Peers {
    /// Starts `idle` peers with nothing live and `live` peers with a live segment each;
    /// returns once every one said it is ready.
    fn start(ctx: &Ctx, idle: usize, live: usize) -> Res<Peers> {
        let mut peers = Peers { procs: Vec::new() };
        for i in 0..idle + live {
            let domain = TempDomain::new();
            let mut cmd = ctx.command(
                Shim::Protect,
                Some(&domain),
                &[
                    "peer".into(),
                    (i >= idle).to_string(),
                    ctx.dir.display().to_string(),
                ],
            );
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("spawn peer: {e}"))?;
            let stdout = child.stdout.take();
            peers.procs.push((child, domain));
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
            }
            if line.trim() != "ready" {
                return Err(format!("peer {i} did not start: {line:?}").into());
            }
        }
        Ok(peers)
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for (child, _) in self.procs.iter_mut() {
            drop(child.stdin.take());
        }
        for (child, _) in self.procs.iter_mut() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn parse_line(out: &[u8]) -> Option<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
}

/// Sizes and repetition counts of one run.
struct Plan {
    file_len: usize,
    thr_reps: usize,
    /// Times each throughput run moves the file (longer runs are less noisy).
    thr_passes: usize,
    hook_ops: usize,
    hook_reps: usize,
    conflict_runs: usize,
    conflict_iters: usize,
    scale_pipes: usize,
    scale_segs: usize,
    scale_iters: usize,
    scale_reps: usize,
    start_runs: usize,
    /// Bytes each thread moves per run of the per-call section.
    calls_bytes: usize,
    /// Repetitions of the per-call section.
    calls_reps: usize,
    /// Sections to run (`--only`); all when `None`.
    only: Option<String>,
}

impl Plan {
    /// Whether section `name` runs.
    fn wants(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|list| list.split(',').any(|s| s.trim() == name))
    }
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                file_len: 128 * MIB,
                thr_reps: 3,
                thr_passes: 4,
                hook_ops: 200_000,
                hook_reps: 3,
                conflict_runs: 1,
                conflict_iters: 60,
                scale_pipes: 1000,
                scale_segs: 64,
                scale_iters: 300,
                scale_reps: 1,
                start_runs: 20,
                calls_bytes: 256 * MIB,
                calls_reps: 3,
                only: None,
            }
        } else {
            Plan {
                file_len: 512 * MIB,
                thr_reps: 7,
                thr_passes: 4,
                hook_ops: 1_000_000,
                hook_reps: 5,
                conflict_runs: 4,
                conflict_iters: 50,
                scale_pipes: 1000,
                scale_segs: 64,
                scale_iters: 2000,
                scale_reps: 3,
                start_runs: 50,
                calls_bytes: 1024 * MIB,
                calls_reps: 5,
                only: None,
            }
        }
    }
}

/// Goal verdict text.
fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn parent_main(cli: &Cli, args: &[String]) -> Res<()> {
    let (quick, pin, json_path) = (cli.quick, !cli.no_pin, cli.json.clone());
    let only = cli.only.clone();
    let mut plan = Plan::new(quick);
    plan.only = only;
    let lib = library_path()?;
    let cli = ["release", "debug"]
        .iter()
        .map(|p| target_dir().join(p).join("splicecow"))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok());
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = PathBuf::from(format!("/var/tmp/splicecow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let ctx = Ctx {
        exe,
        lib,
        cli,
        dir: dir.clone(),
        pin: pin && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
    };
    let result = run_all(&ctx, &plan, args);
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if let Some(p) = json_path {
        std::fs::write(
            &p,
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        )
        .map_err(|e| format!("write {}: {e}", p.display()))?;
        println!("\nJSON results written to {}", p.display());
    }
    Ok(())
}

fn command_output(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn run_all(ctx: &Ctx, plan: &Plan, args: &[String]) -> Res<Value> {
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let command = format!(
        "{} {}",
        std::env::var("BENCH_COMMAND").unwrap_or_else(|_| "bench".into()),
        args[1..].join(" ")
    )
    .trim()
    .to_string();
    println!("splicecow benchmarks");
    println!("  date:    {date}");
    println!("  kernel:  {kernel}");
    println!("  nproc:   {nproc}");
    println!("  cpu:     {cpu}");
    println!("  command: {command}");
    println!("  library: {}", ctx.lib.display());
    println!("  (medians of alternating repetitions; ratios are medians of per-repetition ratios)");
    let t0 = Instant::now();
    type Section = fn(&Ctx, &Plan) -> Res<Value>;
    let mut sections: [(&str, Section, Value); 8] = [
        ("throughput", section_throughput, Value::Null),
        ("hook", section_hook, Value::Null),
        ("close", section_close, Value::Null),
        ("calls", section_calls, Value::Null),
        ("conflict", section_conflict, Value::Null),
        ("scale", section_scale, Value::Null),
        ("start", section_start, Value::Null),
        ("strict", section_strict, Value::Null),
    ];
    for (name, run, out) in sections.iter_mut() {
        if plan.wants(name) {
            *out = run(ctx, plan)?;
        }
    }
    let [throughput, hook, close, calls, conflict, scale, start, strict] =
        sections.map(|(_, _, v)| v);
    println!("\ntotal time {:.1} s", t0.elapsed().as_secs_f64());
    Ok(json!({
        "date": date, "kernel": kernel, "nproc": nproc, "cpu": cpu, "command": command,
        "quick": plan.file_len < 512 * MIB,
        "throughput": throughput, "hook": hook, "close": close, "calls": calls,
        "conflict": conflict,
        "scale": scale, "start": start, "strict": strict,
    }))
}
