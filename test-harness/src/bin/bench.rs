//! `bench`: splicecow's benchmarks, run side by side in one go.
//!
//! ```text
//! bench [--quick] [--json PATH]
//! ```
//!
//! Five sections, each printed as a table with its goal next to the numbers:
//!
//! 1. throughput file → pipe → unshimmed reading process (raw splice, splicecow protect,
//!    splicecow copy mode, a pread/write loop) at 64 KiB, 256 KiB and 1 MiB pipes;
//! 2. hook cost of 64-byte `pwrite`s to an unrelated file (no shim, idle registry,
//!    1000 live segments on other files, 100 other domains of the user alive with
//!    nothing live, and with a live segment in one of them);
//! 3. conflict cost: a `pwrite` that hits an in-flight segment (settle included) against
//!    the same `pwrite` with nothing in flight, for a 64 KiB and a 1 MiB pipe;
//! 4. scale: 1000 pipes × 64 segments live, cost of a mutation lookup and a splice record;
//! 5. start cost: `splicecow run -- true` against `true`.
//!
//! The shim acts on the process it is preloaded into, so every measured variant runs in
//! a child: this binary re-executed as `bench worker <kind> ...`, with or without
//! `LD_PRELOAD`, printing one JSON line that the parent parses. Variants alternate
//! (ABCD ABCD ...) and the tables show medians, because a 2-core machine is noisy.
//! Missed goals are reported, never an error: the exit status is non-zero only when a
//! measurement could not be made.

use serde_json::{json, Value};
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

/// Errors are messages; the parent prints them and exits 1.
type R<T> = Result<T, String>;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const GIB: f64 = (1u64 << 30) as f64;

/// Environment variable that hands the `splicecow` CLI path to workers.
const CLI_ENV: &str = "BENCH_SPLICECOW_CLI";

/// Environment variable that pins a worker to one CPU (throughput runs: the writer on
/// CPU 0, the reader on CPU 1, so every run has the same placement).
const CPU_ENV: &str = "BENCH_CPU";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        match worker_main(&args[2..]) {
            Ok(Some(v)) => println!("{v}"),
            Ok(None) => {}
            Err(e) => {
                eprintln!("bench worker {}: {e}", args[2..].join(" "));
                std::process::exit(1);
            }
        }
        return;
    }
    if let Err(e) = parent_main(&args) {
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

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// `F_SETPIPE_SZ`; returns the capacity the kernel granted.
fn set_pipe_size(fd: RawFd, size: usize) -> R<usize> {
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

/// Writes all of `buf` to `fd` with `write`.
fn write_all_fd(fd: RawFd, mut buf: &[u8]) -> R<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for buf.len() bytes.
        let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(os_err("write"));
        }
        buf = &buf[r as usize..];
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes from `fd`.
fn read_exact_fd(fd: RawFd, buf: &mut [u8]) -> R<()> {
    let mut done = 0;
    while done < buf.len() {
        let r = read_fd(fd, &mut buf[done..]);
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(os_err("read"));
        }
        if r == 0 {
            return Err(format!("early EOF after {done} of {} bytes", buf.len()));
        }
        done += r as usize;
    }
    Ok(())
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
fn pin_to_cpu(cpu: usize) -> R<()> {
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
fn create_data_file(path: &Path, len: usize) -> R<File> {
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
    let (Some(cli), Ok(domain)) = (std::env::var_os(CLI_ENV), std::env::var("SPLICECOW_DOMAIN"))
    else {
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
// Workers: the measured processes
// ---------------------------------------------------------------------------------------

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> R<T> {
    args.get(i)
        .ok_or_else(|| format!("missing argument {name}"))?
        .parse()
        .map_err(|_| format!("bad argument {name}: {:?}", args[i]))
}

/// Dispatches `bench worker <kind> ...`; returns the JSON line to print (if any).
fn worker_main(args: &[String]) -> R<Option<Value>> {
    if let Some(cpu) = std::env::var(CPU_ENV).ok().and_then(|c| c.parse().ok()) {
        pin_to_cpu(cpu)?;
    }
    let kind = args.first().map(String::as_str).unwrap_or("");
    match kind {
        "reader" => worker_reader(arg(args, 1, "bufsize")?).map(Some),
        "writer" => {
            let how: String = arg(args, 1, "how")?;
            let path: String = arg(args, 2, "file")?;
            let (chunk, passes) = (arg(args, 3, "chunk")?, arg(args, 4, "passes")?);
            worker_writer(&how, Path::new(&path), chunk, passes).map(|()| None)
        }
        "hook" => {
            let dir: String = arg(args, 3, "dir")?;
            let aged = arg(args, 4, "aged").unwrap_or(0);
            worker_hook(
                arg(args, 1, "ops")?,
                arg(args, 2, "busy")?,
                aged,
                Path::new(&dir),
            )
            .map(Some)
        }
        "close" => worker_close(arg(args, 1, "ops")?, arg(args, 2, "busy")?).map(Some),
        "peer" => {
            let dir: String = arg(args, 2, "dir")?;
            worker_peer(arg(args, 1, "live")?, Path::new(&dir)).map(|()| None)
        }
        "conflict" => {
            let dir: String = arg(args, 3, "dir")?;
            worker_conflict(
                arg(args, 1, "pipe_bytes")?,
                arg(args, 2, "iters")?,
                Path::new(&dir),
            )
            .map(Some)
        }
        "scale" => {
            let dir: String = arg(args, 4, "dir")?;
            worker_scale(
                arg(args, 1, "pipes")?,
                arg(args, 2, "segments")?,
                arg(args, 3, "iters")?,
                Path::new(&dir),
            )
            .map(Some)
        }
        other => Err(format!("unknown worker kind {other:?}")),
    }
}

/// Reads stdin (a pipe) with `read` until EOF and discards the bytes. Times from the
/// end of the first read, so the writer's start-up is not counted.
fn worker_reader(bufsize: usize) -> R<Value> {
    let mut buf = vec![0u8; bufsize];
    let mut total = 0u64;
    let mut timed = 0u64;
    let mut start = None;
    loop {
        let r = read_fd(0, &mut buf);
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(os_err("read"));
        }
        if r == 0 {
            break;
        }
        total += r as u64;
        match start {
            None => start = Some(Instant::now()),
            Some(_) => timed += r as u64,
        }
    }
    let secs = start.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
    Ok(json!({ "bytes": total, "timed_bytes": timed, "secs": secs }))
}

/// Moves the whole file `passes` times to stdout (a pipe): `splice` (`how` = splice) or
/// `pread` + `write` (`how` = readwrite), `chunk` bytes per call.
fn worker_writer(how: &str, path: &Path, chunk: usize, passes: usize) -> R<()> {
    let f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len() as i64;
    let fd = f.as_raw_fd();
    let mut buf = vec![0u8; if how == "readwrite" { chunk } else { 0 }];
    for _ in 0..passes {
        write_file_once(how, &f, fd, len, chunk, &mut buf)?;
    }
    Ok(())
}

/// One pass of [`worker_writer`].
fn write_file_once(
    how: &str,
    f: &File,
    fd: RawFd,
    len: i64,
    chunk: usize,
    buf: &mut [u8],
) -> R<()> {
    let mut off = 0i64;
    match how {
        "splice" => {
            while off < len {
                let r = splice_at(fd, &mut off, 1, chunk, 0);
                if r < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(os_err("splice"));
                }
                if r == 0 {
                    return Err(format!("splice returned 0 at offset {off}"));
                }
            }
        }
        "readwrite" => {
            while off < len {
                let n = f
                    .read_at(buf, off as u64)
                    .map_err(|e| format!("pread: {e}"))?;
                if n == 0 {
                    return Err(format!("pread returned 0 at offset {off}"));
                }
                write_all_fd(1, &buf[..n])?;
                off += n as i64;
            }
        }
        other => return Err(format!("unknown writer {other:?}")),
    }
    Ok(())
}

/// Pipes (read end, write end) and files that keep segments live.
type Busy = (Vec<(OwnedFd, OwnedFd)>, Vec<File>);

/// Creates `pipes` pipes holding `segs` non-contiguous 4 KiB splices each from 10
/// files in `dir` (never read): live segments on files other than the measured one.
/// Returns the pipes and files, which must stay open.
fn make_busy(dir: &Path, pipes: usize, segs: usize) -> R<Busy> {
    let files: Vec<File> = (0..10)
        .map(|i| create_data_file(&dir.join(format!("busy-{i}")), segs * 8 * KIB))
        .collect::<R<_>>()?;
    let mut held = Vec::with_capacity(pipes);
    for p in 0..pipes {
        let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        let src = files[p % files.len()].as_raw_fd();
        for s in 0..segs {
            let mut off = (s * 8 * KIB) as i64;
            if splice_at(
                src,
                &mut off,
                w.as_raw_fd(),
                4 * KIB,
                libc::SPLICE_F_NONBLOCK,
            ) != (4 * KIB) as isize
            {
                return Err(os_err("busy splice"));
            }
        }
        held.push((r, w));
    }
    Ok((held, files))
}

/// Reads everything `pipes` hold (read ends made non-blocking), so that closing them
/// lets the library retire their segments. A worker whose domain goes away with
/// segments still recorded would leave their files in the user index, and every later
/// process of the user (the next rows' workers too) would take the busy path.
fn drain_held(pipes: &[(OwnedFd, OwnedFd)]) {
    let mut buf = vec![0u8; 64 * KIB];
    for (r, _) in pipes {
        // SAFETY: F_GETFL/F_SETFL on an open fd touch no memory of ours.
        unsafe {
            let flags = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(r.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        while read_fd(r.as_raw_fd(), &mut buf) > 0 {}
    }
}

/// Ages the domain by `n` finished pipelines the way a day-old domain saw them: 100
/// short-lived children, each splicing 4 KiB into `n / 100` pipes of its own and exiting
/// without reading them (the pipes die with it, their records stay until a sweep).
fn age_domain(dir: &Path, n: usize) -> R<()> {
    let file = create_data_file(&dir.join(format!("aged-{}", std::process::id())), 64 * KIB)?;
    let per_child = n.div_ceil(100);
    for _ in 0..n.div_ceil(per_child.max(1)) {
        // SAFETY: the child only makes pipes, splices and exits; no locks are shared.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            for _ in 0..per_child {
                let mut fds = [0; 2];
                // SAFETY: fds has room for the two ends.
                unsafe { libc::pipe(fds.as_mut_ptr()) };
                let mut off = 0i64;
                splice_at(file.as_raw_fd(), &mut off, fds[1], 4 * KIB, 0);
            }
            // SAFETY: leaving the forked child at once.
            unsafe { libc::_exit(0) };
        }
        let mut st = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
    Ok(())
}

/// 64-byte `pwrite`s at offset 0 of a small file: `busy` live segments (in pipes of
/// 10 segments each) on other files first (or a domain aged by `aged` finished
/// pipelines), then `ops` timed calls after a warm-up.
fn worker_hook(ops: usize, busy: usize, aged: usize, dir: &Path) -> R<Value> {
    raise_nofile(4096);
    let target = create_data_file(&dir.join(format!("hook-{}", std::process::id())), 4 * KIB)?;
    let busy_pipes = if busy > 0 {
        Some(make_busy(dir, busy.div_ceil(10), 10)?)
    } else {
        None
    };
    if aged > 0 {
        age_domain(dir, aged)?;
    }
    let live_before = live_segments_now();
    let live = live_segments_now();
    let fd = target.as_raw_fd();
    let buf = [b'h'; 64];
    for _ in 0..ops.min(20_000) {
        pwrite(fd, &buf, 0);
    }
    let t = Instant::now();
    for _ in 0..ops {
        if pwrite(fd, &buf, 0) != 64 {
            return Err(os_err("pwrite"));
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / ops as f64;
    if let Some((held, _)) = &busy_pipes {
        drain_held(held);
    }
    Ok(json!({ "ns_per_op": ns, "live_segments": live, "live_before": live_before }))
}

/// Another domain's process for the hook rows: with `live`, 4 KiB of a file of its own
/// spliced into a pipe it holds (a live segment in its domain); prints `ready`, then
/// sleeps until stdin is closed, and reads its pipe before closing it (see
/// [`drain_held`]).
fn worker_peer(live: bool, dir: &Path) -> R<()> {
    let held = if live {
        let file = create_data_file(&dir.join(format!("peer-{}", std::process::id())), 64 * KIB)?;
        let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        let mut off = 0i64;
        if splice_at(
            file.as_raw_fd(),
            &mut off,
            w.as_raw_fd(),
            4 * KIB,
            libc::SPLICE_F_NONBLOCK,
        ) != (4 * KIB) as isize
        {
            return Err(os_err("peer splice"));
        }
        Some((file, [(r, w)]))
    } else {
        None
    };
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    while !matches!(std::io::stdin().read(&mut buf), Ok(0) | Err(_)) {}
    if let Some((_, pipes)) = &held {
        drain_held(pipes);
    }
    Ok(())
}

/// `close` of fds that are not tracked pipes (`dup` of stdin, then `close`): `ops`
/// timed pairs, with `busy` live segments in the domain (pipes this process holds).
fn worker_close(ops: usize, busy: usize) -> R<Value> {
    raise_nofile(4096);
    let dir = std::env::temp_dir();
    let busy_pipes = if busy > 0 {
        Some(make_busy(&dir, busy.div_ceil(10), 10)?)
    } else {
        None
    };
    let live = live_segments_now();
    let t = Instant::now();
    for _ in 0..ops {
        // SAFETY: dup of an open fd and close of the fd it returned.
        let fd = unsafe { libc::dup(0) };
        // SAFETY: as above.
        if fd < 0 || unsafe { libc::close(fd) } != 0 {
            return Err(os_err("dup/close"));
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / ops as f64;
    if let Some((held, _)) = &busy_pipes {
        drain_held(held);
    }
    Ok(json!({ "ns_per_op": ns, "live_segments": live }))
}

/// Conflict latency. Each iteration: a 16-byte `pwrite` at offset 100 with nothing in
/// flight (timed), the pipe filled by `splice` from the file, the same `pwrite` (timed:
/// it must settle the pipe), a `memcpy` of the pipe's bytes (timed), then the pipe
/// drained and checked: it must hold the bytes from before the conflicting `pwrite`.
fn worker_conflict(pipe_bytes: usize, iters: usize, dir: &Path) -> R<Value> {
    let path = dir.join(format!("conflict-{}", std::process::id()));
    let f = create_data_file(&path, pipe_bytes.max(MIB) * 2)?;
    let fd = f.as_raw_fd();
    let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let cap = set_pipe_size(w.as_raw_fd(), pipe_bytes)?;
    let mut drained = vec![0u8; cap];
    let src: Vec<u8> = (0..cap).map(fill_byte).collect();
    let mut dst = vec![0u8; cap];
    let (mut plain, mut conflict, mut memcpy) = (Vec::new(), Vec::new(), Vec::new());
    let mut stale_ok = 0usize;
    let mut first = 0.0;
    for i in 0..iters {
        let letter = [if i % 2 == 0 { b'A' } else { b'B' }; 16];
        let other = [if i % 2 == 0 { b'C' } else { b'D' }; 16];

        let t = Instant::now();
        let n = pwrite(fd, &other, 100);
        plain.push(t.elapsed().as_nanos() as f64);
        if n != 16 {
            return Err(os_err("plain pwrite"));
        }

        let mut off = 0i64;
        let mut filled = 0usize;
        while filled < cap {
            let n = splice_at(
                fd,
                &mut off,
                w.as_raw_fd(),
                cap - filled,
                libc::SPLICE_F_NONBLOCK,
            );
            if n <= 0 {
                break;
            }
            filled += n as usize;
        }
        if filled == 0 {
            return Err(os_err("fill splice"));
        }

        let t = Instant::now();
        let n = pwrite(fd, &letter, 100);
        let ns = t.elapsed().as_nanos() as f64;
        // The first conflict of a fresh domain also pays one-time costs (first touch
        // of the registry's pages): reported apart, not mixed into the percentiles.
        if i == 0 {
            first = ns;
        } else {
            conflict.push(ns);
        }
        if n != 16 {
            return Err(os_err("conflicting pwrite"));
        }

        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        memcpy.push(t.elapsed().as_nanos() as f64);

        read_exact_fd(r.as_raw_fd(), &mut drained[..filled])?;
        if drained[100..116] == other {
            stale_ok += 1;
        }
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(json!({
        "pipe_bytes": cap,
        "plain_ns": plain,
        "conflict_ns": conflict,
        "memcpy_ns": memcpy,
        "snapshot_kept": stale_ok,
        "first_conflict_ns": first,
        "iters": iters,
    }))
}

/// Scale: `pipes` pipes × `segs` live 1-byte segments (offsets 1 KiB apart, so nothing
/// merges) from 10 files; then timed 16-byte `pwrite`s at 10 MiB of a file with live
/// segments (a lookup that finds nothing) and timed 4 KiB splices into one more pipe
/// (a record; the pipe is drained untimed between them).
fn worker_scale(pipes: usize, segs: usize, iters: usize, dir: &Path) -> R<Value> {
    let limit = raise_nofile((pipes * 2 + 64) as u64) as usize;
    let pipes = pipes.min(limit.saturating_sub(64) / 2);
    let files: Vec<File> = (0..10)
        .map(|i| {
            let f = create_data_file(&dir.join(format!("scale-{}-{i}", std::process::id())), MIB)?;
            f.set_len(11 * MIB as u64).map_err(|e| e.to_string())?;
            Ok(f)
        })
        .collect::<R<_>>()?;
    let mut held = Vec::with_capacity(pipes);
    let pipe_size = (segs * 4 * KIB).next_power_of_two().max(64 * KIB);
    let mut short = 0usize;
    for p in 0..pipes {
        let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        set_pipe_size(w.as_raw_fd(), pipe_size)?;
        let src = files[p % files.len()].as_raw_fd();
        for s in 0..segs {
            let mut off = (s * KIB) as i64;
            if splice_at(src, &mut off, w.as_raw_fd(), 1, libc::SPLICE_F_NONBLOCK) != 1 {
                short += 1;
            }
        }
        held.push((r, w));
    }
    let live = live_segments_now();

    let target = files[0].as_raw_fd();
    let buf = [b's'; 16];
    let far = (10 * MIB) as i64;
    let mut lookup = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let n = pwrite(target, &buf, far);
        lookup.push(t.elapsed().as_nanos() as f64);
        if n != 16 {
            return Err(os_err("lookup pwrite"));
        }
    }

    let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let src = files[5].as_raw_fd();
    let mut record = Vec::with_capacity(iters);
    let mut sink = vec![0u8; 4 * KIB];
    for _ in 0..iters {
        let mut off = 0i64;
        let t = Instant::now();
        let n = splice_at(src, &mut off, w.as_raw_fd(), 4 * KIB, 0);
        record.push(t.elapsed().as_nanos() as f64);
        if n != (4 * KIB) as isize {
            return Err(os_err("record splice"));
        }
        read_exact_fd(r.as_raw_fd(), &mut sink)?;
    }
    drain_held(&held);
    drop(held);
    drop(files);
    for i in 0..10 {
        let _ = std::fs::remove_file(dir.join(format!("scale-{}-{i}", std::process::id())));
    }
    Ok(json!({
        "pipes": pipes,
        "segments_per_pipe": segs,
        "short_splices": short,
        "live_segments": live,
        "lookup_ns": median(&lookup),
        "lookup_p99_ns": percentile(&lookup, 99.0),
        "record_ns": median(&record),
        "record_p99_ns": percentile(&record, 99.0),
    }))
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
            cmd.env("LD_PRELOAD", &self.lib)
                .env("SPLICECOW_DOMAIN", d.name())
                .env(
                    "SPLICECOW_MODE",
                    if shim == Shim::Copy {
                        "copy"
                    } else {
                        "protect"
                    },
                );
        }
        cmd
    }

    /// Runs one worker to completion and parses its JSON line.
    fn run(&self, shim: Shim, args: &[String]) -> R<Value> {
        let domain = (shim != Shim::Off).then(TempDomain::new);
        let mut cmd = self.command(shim, domain.as_ref(), args);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(600))
            .map_err(|e| format!("spawn worker: {e}"))?;
        if !out.status.is_some_and(|s| s.success()) {
            return Err(format!(
                "worker {args:?} ({shim:?}) failed: {}",
                out.describe()
            ));
        }
        parse_line(&out.stdout)
            .ok_or_else(|| format!("worker {args:?}: no result: {}", out.describe()))
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
    fn start(ctx: &Ctx, idle: usize, live: usize) -> R<Peers> {
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
                return Err(format!("peer {i} did not start: {line:?}"));
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

fn parent_main(args: &[String]) -> R<()> {
    let mut quick = false;
    let mut json_path: Option<PathBuf> = None;
    let mut only: Option<String> = None;
    let mut pin = true;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--no-pin" => pin = false,
            "--json" => json_path = Some(PathBuf::from(it.next().ok_or("--json needs a PATH")?)),
            "--only" => only = Some(it.next().ok_or("--only needs a list")?.clone()),
            "-h" | "--help" => {
                println!(
                    "usage: bench [--quick] [--json PATH]\n\n\
                     Benchmarks splicecow side by side (throughput, hook cost, conflict cost,\n\
                     scale, start cost) and prints tables with their goals.\n\
                     --quick      small sizes and few repetitions (< 60 s)\n\
                     --json PATH  also write machine-readable results to PATH\n\
                     --no-pin     do not pin the throughput writer/reader to CPUs 0/1\n\
                     --only LIST  run only these sections (comma-separated: throughput,\n\
                     \x20            hook, conflict, scale, start), e.g. when profiling"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
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

fn run_all(ctx: &Ctx, plan: &Plan, args: &[String]) -> R<Value> {
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
    type Section = fn(&Ctx, &Plan) -> R<Value>;
    let mut sections: [(&str, Section, Value); 6] = [
        ("throughput", section_throughput, Value::Null),
        ("hook", section_hook, Value::Null),
        ("close", section_close, Value::Null),
        ("conflict", section_conflict, Value::Null),
        ("scale", section_scale, Value::Null),
        ("start", section_start, Value::Null),
    ];
    for (name, run, out) in sections.iter_mut() {
        if plan.wants(name) {
            *out = run(ctx, plan)?;
        }
    }
    let [throughput, hook, close, conflict, scale, start] = sections.map(|(_, _, v)| v);
    println!("\ntotal time {:.1} s", t0.elapsed().as_secs_f64());
    Ok(json!({
        "date": date, "kernel": kernel, "nproc": nproc, "cpu": cpu, "command": command,
        "quick": plan.file_len < 512 * MIB,
        "throughput": throughput, "hook": hook, "close": close, "conflict": conflict,
        "scale": scale, "start": start,
    }))
}

/// The cached test file: created once under /var/tmp, reused when its size is right,
/// read once to warm the page cache.
fn bench_file(len: usize) -> R<PathBuf> {
    let path = PathBuf::from(format!("/var/tmp/splicecow-bench-{}M", len / MIB));
    if std::fs::metadata(&path).ok().map(|m| m.len()) != Some(len as u64) {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let f = create_data_file(&tmp, len)?;
        f.sync_all().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("rename: {e}"))?;
    }
    let mut f = File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut buf = vec![0u8; 4 * MIB];
    while f.read(&mut buf).map_err(|e| e.to_string())? > 0 {}
    Ok(path)
}

/// One throughput run: a writer variant into a pipe of `pipe_size`, an unshimmed reader.
fn throughput_once(ctx: &Ctx, variant: &str, file: &Path, pipe_size: usize, plan: &Plan) -> R<f64> {
    let len = plan.file_len * plan.thr_passes;
    let (shim, how) = match variant {
        "raw splice" => (Shim::Off, "splice"),
        "protect" => (Shim::Protect, "splice"),
        "copy mode" => (Shim::Copy, "splice"),
        _ => (Shim::Off, "readwrite"),
    };
    let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let cap = set_pipe_size(w.as_raw_fd(), pipe_size)?;
    let domain = (shim != Shim::Off).then(TempDomain::new);
    let mut reader = {
        let mut cmd = ctx.command(Shim::Off, None, &["reader".into(), cap.to_string()]);
        if ctx.pin {
            cmd.env(CPU_ENV, "1");
        }
        cmd.stdin(Stdio::from(r))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd.spawn().map_err(|e| format!("spawn reader: {e}"))?
    };
    let writer = {
        let args = [
            "writer".to_string(),
            how.to_string(),
            file.display().to_string(),
            cap.to_string(),
            plan.thr_passes.to_string(),
        ];
        let mut cmd = ctx.command(shim, domain.as_ref(), &args);
        if ctx.pin {
            cmd.env(CPU_ENV, "0");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .stderr(Stdio::piped());
        cmd.spawn()
    };
    let writer = match writer {
        Ok(w) => w,
        Err(e) => {
            let _ = reader.kill();
            let _ = reader.wait();
            return Err(format!("spawn writer: {e}"));
        }
    };
    let wout = writer
        .wait_with_output()
        .map_err(|e| format!("wait writer: {e}"))?;
    let mut rout = Vec::new();
    if let Some(mut so) = reader.stdout.take() {
        so.read_to_end(&mut rout).map_err(|e| e.to_string())?;
    }
    let rstatus = reader.wait().map_err(|e| format!("wait reader: {e}"))?;
    if !wout.status.success() {
        return Err(format!(
            "{variant} writer failed ({}): {}",
            wout.status,
            String::from_utf8_lossy(&wout.stderr)
        ));
    }
    if !wout.stderr.is_empty() {
        return Err(format!(
            "{variant} writer wrote to stderr: {}",
            String::from_utf8_lossy(&wout.stderr)
        ));
    }
    let v = parse_line(&rout)
        .filter(|_| rstatus.success())
        .ok_or_else(|| format!("reader failed: {rstatus}"))?;
    let bytes = v["bytes"].as_u64().unwrap_or(0);
    if bytes != len as u64 {
        return Err(format!(
            "{variant}: reader got {bytes} bytes, expected {len}"
        ));
    }
    let secs = v["secs"].as_f64().unwrap_or(0.0);
    let timed = v["timed_bytes"].as_u64().unwrap_or(0) as f64;
    if secs <= 0.0 {
        return Err(format!("{variant}: no time measured"));
    }
    Ok(timed / secs / GIB)
}

fn section_throughput(ctx: &Ctx, plan: &Plan) -> R<Value> {
    const VARIANTS: [&str; 4] = ["raw splice", "protect", "copy mode", "pread/write"];
    const SIZES: [usize; 3] = [64 * KIB, 256 * KIB, MIB];
    println!(
        "\n1. Throughput: file -> pipe -> unshimmed reader (read()), {} MiB cached file \
         sent {} times per run, {} reps",
        plan.file_len / MIB,
        plan.thr_passes,
        plan.thr_reps
    );
    let file = bench_file(plan.file_len)?;
    // gib[size][variant][rep]
    let mut gib = vec![vec![Vec::new(); VARIANTS.len()]; SIZES.len()];
    for rep in 0..plan.thr_reps {
        for (si, &size) in SIZES.iter().enumerate() {
            for k in 0..VARIANTS.len() {
                // Rotate the starting variant per repetition: no variant is always first.
                let vi = (k + rep) % VARIANTS.len();
                let g = throughput_once(ctx, VARIANTS[vi], &file, size, plan)?;
                gib[si][vi].push(g);
            }
        }
    }
    println!(
        "   {:<8} {:<12} {:>8} {:>9}   goal",
        "pipe", "variant", "GiB/s", "x raw"
    );
    let mut rows = Vec::new();
    for (si, &size) in SIZES.iter().enumerate() {
        for (vi, name) in VARIANTS.iter().enumerate() {
            let ratios: Vec<f64> = gib[si][vi]
                .iter()
                .zip(&gib[si][0])
                .map(|(v, raw)| v / raw)
                .collect();
            let ratio = median(&ratios);
            let goal = if vi == 1 && size >= 256 * KIB {
                format!(">= 0.95x  {}", verdict(ratio >= 0.95))
            } else {
                String::new()
            };
            println!(
                "   {:<8} {:<12} {:>8.2} {:>8.3}x   {}",
                format!("{} KiB", size / KIB),
                name,
                median(&gib[si][vi]),
                ratio,
                goal
            );
            rows.push(json!({
                "pipe_bytes": size, "variant": name, "gib_s": median(&gib[si][vi]),
                "ratio_to_raw": ratio, "samples_gib_s": gib[si][vi],
                "goal_met": (vi == 1 && size >= 256 * KIB).then_some(ratio >= 0.95),
            }));
        }
    }
    Ok(Value::Array(rows))
}

fn section_hook(ctx: &Ctx, plan: &Plan) -> R<Value> {
    println!(
        "\n2. Hook cost: 64-byte pwrite at offset 0 of an unrelated file, {} ops x {} reps",
        plan.hook_ops, plan.hook_reps
    );
    // (name, shim, live segments of its own, aged by pipelines, other domains alive with
    // nothing live, other domains alive with a live segment each)
    let variants: [(&str, Shim, usize, usize, usize, usize); 6] = [
        ("no shim", Shim::Off, 0, 0, 0, 0),
        ("shim, idle registry", Shim::Protect, 0, 0, 0, 0),
        ("shim, 1000 live segs", Shim::Protect, 1000, 0, 0, 0),
        ("shim, after 10k pipelines", Shim::Protect, 0, 10_000, 0, 0),
        ("shim, 100 other domains alive", Shim::Protect, 0, 0, 100, 0),
        ("shim, live seg, other domain", Shim::Protect, 0, 0, 99, 1),
    ];
    let mut ns = vec![Vec::new(); variants.len()];
    let mut live = vec![-1i64; variants.len()];
    for rep in 0..plan.hook_reps {
        for k in 0..variants.len() {
            let vi = (k + rep) % variants.len();
            let (_, shim, busy, aged, idle_peers, live_peers) = variants[vi];
            let peers = Peers::start(ctx, idle_peers, live_peers)?;
            let v = ctx.run(
                shim,
                &[
                    "hook".into(),
                    plan.hook_ops.to_string(),
                    busy.to_string(),
                    ctx.dir.display().to_string(),
                    aged.to_string(),
                ],
            )?;
            drop(peers);
            ns[vi].push(v["ns_per_op"].as_f64().unwrap_or(0.0));
            live[vi] = v["live_segments"].as_i64().unwrap_or(-1);
        }
    }
    println!(
        "   {:<32} {:>8} {:>9} {:>6}   goal",
        "variant", "ns/op", "x none", "live"
    );
    let mut rows = Vec::new();
    for (vi, (name, ..)) in variants.iter().enumerate() {
        let ratios: Vec<f64> = ns[vi].iter().zip(&ns[0]).map(|(v, b)| v / b).collect();
        let ratio = median(&ratios);
        let limit = [
            None,
            Some(1.05),
            Some(1.25),
            Some(1.05),
            Some(1.05),
            Some(1.25),
        ][vi];
        let goal = limit
            .map(|l| format!("<= {l:.2}x  {}", verdict(ratio <= l)))
            .unwrap_or_default();
        let live_s = if vi == 0 {
            "-".to_string()
        } else {
            live[vi].to_string()
        };
        println!(
            "   {:<32} {:>8.1} {:>8.3}x {:>6}   {}",
            name,
            median(&ns[vi]),
            ratio,
            live_s,
            goal
        );
        rows.push(json!({
            "variant": name, "ns_per_op": median(&ns[vi]), "ratio_to_none": ratio,
            "samples_ns": ns[vi], "live_segments": live[vi],
            "goal_met": limit.map(|l| ratio <= l),
        }));
    }
    Ok(Value::Array(rows))
}

fn section_close(ctx: &Ctx, plan: &Plan) -> R<Value> {
    println!(
        "\n2b. Close cost: dup + close of an fd that is no tracked pipe, {} pairs x {} reps",
        plan.hook_ops, plan.hook_reps
    );
    let variants: [(&str, Shim, usize); 3] = [
        ("no shim", Shim::Off, 0),
        ("shim, idle registry", Shim::Protect, 0),
        ("shim, 1000 live segs", Shim::Protect, 1000),
    ];
    let mut ns = vec![Vec::new(); variants.len()];
    for rep in 0..plan.hook_reps {
        for k in 0..variants.len() {
            let vi = (k + rep) % variants.len();
            let (_, shim, busy) = variants[vi];
            let args = ["close".into(), plan.hook_ops.to_string(), busy.to_string()];
            let v = ctx.run(shim, &args)?;
            ns[vi].push(v["ns_per_op"].as_f64().unwrap_or(0.0));
        }
    }
    println!("   {:<22} {:>8} {:>9}   goal", "variant", "ns/op", "x none");
    let mut rows = Vec::new();
    for (vi, (name, _, _)) in variants.iter().enumerate() {
        let ratios: Vec<f64> = ns[vi].iter().zip(&ns[0]).map(|(v, b)| v / b).collect();
        let ratio = median(&ratios);
        let limit = (vi > 0).then_some(1.02);
        let goal = limit
            .map(|l| format!("<= {l:.2}x  {}", verdict(ratio <= l)))
            .unwrap_or_default();
        println!(
            "   {:<22} {:>8.1} {:>8.3}x   {}",
            name,
            median(&ns[vi]),
            ratio,
            goal
        );
        rows.push(json!({
            "variant": name, "ns_per_op": median(&ns[vi]), "ratio_to_none": ratio,
            "samples_ns": ns[vi], "goal_met": limit.map(|l| ratio <= l),
        }));
    }
    Ok(Value::Array(rows))
}

fn section_conflict(ctx: &Ctx, plan: &Plan) -> R<Value> {
    const SIZES: [usize; 2] = [64 * KIB, MIB];
    println!(
        "\n3. Conflict cost: 16-byte pwrite at offset 100 of a file whose bytes fill a pipe \
         (settle included), {} iterations per size",
        plan.conflict_runs * plan.conflict_iters
    );
    let mut pooled: Vec<[Vec<f64>; 3]> = vec![Default::default(), Default::default()];
    let mut kept = [0u64; 2];
    let mut first: [Vec<f64>; 2] = Default::default();
    let mut iters = [0u64; 2];
    for run in 0..plan.conflict_runs {
        for k in 0..SIZES.len() {
            let si = (k + run) % SIZES.len();
            let v = ctx.run(
                Shim::Protect,
                &[
                    "conflict".into(),
                    SIZES[si].to_string(),
                    plan.conflict_iters.to_string(),
                    ctx.dir.display().to_string(),
                ],
            )?;
            for (j, key) in ["plain_ns", "conflict_ns", "memcpy_ns"].iter().enumerate() {
                let samples = v[key].as_array().ok_or("conflict worker: no samples")?;
                pooled[si][j].extend(samples.iter().filter_map(Value::as_f64));
            }
            kept[si] += v["snapshot_kept"].as_u64().unwrap_or(0);
            first[si].extend(v["first_conflict_ns"].as_f64());
            iters[si] += v["iters"].as_u64().unwrap_or(0);
        }
    }
    println!(
        "   goal: conflict p50 <= plain p50 + 2 x memcpy p50 + 50 us (p99 checked the same way \
         with p99s); the first conflict of each fresh domain is shown apart (cold)"
    );
    println!(
        "   {:<7} {:>17} {:>19} {:>9} {:>10} {:>13} {:>10} {:>9}",
        "pipe",
        "plain p50/p99",
        "conflict p50/p99",
        "memcpy",
        "limit",
        "goal p50/p99",
        "cold 1st",
        "kept"
    );
    let mut rows = Vec::new();
    for (si, &size) in SIZES.iter().enumerate() {
        let [plain, conflict, memcpy] = &pooled[si];
        let us = |v: f64| v / 1000.0;
        let (p50, p99) = (percentile(plain, 50.0), percentile(plain, 99.0));
        let (c50, c99) = (percentile(conflict, 50.0), percentile(conflict, 99.0));
        let m = percentile(memcpy, 50.0);
        let limit = p50 + 2.0 * m + 50_000.0;
        let limit99 = p99 + 2.0 * percentile(memcpy, 99.0) + 50_000.0;
        let cold = median(&first[si]);
        println!(
            "   {:<7} {:>17} {:>19} {:>6.1} us {:>7.1} us {:>13} {:>7.0} us {:>9}",
            if size >= MIB {
                "1 MiB".to_string()
            } else {
                format!("{} KiB", size / KIB)
            },
            format!("{:.1}/{:.1} us", us(p50), us(p99)),
            format!("{:.1}/{:.1} us", us(c50), us(c99)),
            us(m),
            us(limit),
            format!("{}/{}", verdict(c50 <= limit), verdict(c99 <= limit99)),
            us(cold),
            format!("{}/{}", kept[si], iters[si]),
        );
        rows.push(json!({
            "pipe_bytes": size, "plain_p50_ns": p50, "plain_p99_ns": p99,
            "conflict_p50_ns": c50, "conflict_p99_ns": c99, "memcpy_p50_ns": m,
            "limit_ns": limit, "goal_met": c50 <= limit, "p99_limit_ns": limit99,
            "p99_goal_met": c99 <= limit99, "first_conflict_ns": first[si],
            "snapshot_kept": kept[si], "iters": iters[si],
        }));
    }
    println!("   (kept: drained pipes that held the pre-pwrite bytes, i.e. protection worked)");
    Ok(Value::Array(rows))
}

fn section_scale(ctx: &Ctx, plan: &Plan) -> R<Value> {
    println!(
        "\n4. Scale: {} pipes x {} live 1-byte segments (10 files), {} ops x {} reps",
        plan.scale_pipes, plan.scale_segs, plan.scale_iters, plan.scale_reps
    );
    let variants = [("no shim", Shim::Off), ("protect", Shim::Protect)];
    let mut res: Vec<Vec<Value>> = vec![Vec::new(), Vec::new()];
    for rep in 0..plan.scale_reps {
        for k in 0..variants.len() {
            let vi = (k + rep) % variants.len();
            let v = ctx.run(
                variants[vi].1,
                &[
                    "scale".into(),
                    plan.scale_pipes.to_string(),
                    plan.scale_segs.to_string(),
                    plan.scale_iters.to_string(),
                    ctx.dir.display().to_string(),
                ],
            )?;
            res[vi].push(v);
        }
    }
    let med = |vi: usize, key: &str| -> f64 {
        median(
            &res[vi]
                .iter()
                .filter_map(|v| v[key].as_f64())
                .collect::<Vec<_>>(),
        )
    };
    let last = |vi: usize, key: &str| res[vi].last().map_or(-1, |v| v[key].as_i64().unwrap_or(-1));
    println!(
        "   {:<9} {:>12} {:>12} {:>12} {:>12} {:>8} {:>7}",
        "variant", "lookup p50", "lookup p99", "record p50", "record p99", "live", "short"
    );
    let mut rows = Vec::new();
    for (vi, (name, _)) in variants.iter().enumerate() {
        println!(
            "   {:<9} {:>9.2} us {:>9.2} us {:>9.2} us {:>9.2} us {:>8} {:>7}",
            name,
            med(vi, "lookup_ns") / 1000.0,
            med(vi, "lookup_p99_ns") / 1000.0,
            med(vi, "record_ns") / 1000.0,
            med(vi, "record_p99_ns") / 1000.0,
            if vi == 0 {
                "-".to_string()
            } else {
                last(vi, "live_segments").to_string()
            },
            last(vi, "short_splices"),
        );
        rows.push(json!({
            "variant": name, "lookup_us": med(vi, "lookup_ns") / 1000.0,
            "lookup_p99_us": med(vi, "lookup_p99_ns") / 1000.0,
            "record_us": med(vi, "record_ns") / 1000.0,
            "record_p99_us": med(vi, "record_p99_ns") / 1000.0,
            "live_segments": last(vi, "live_segments"), "runs": res[vi],
        }));
    }
    println!(
        "   shim adds: lookup {:+.2} us/op, record {:+.2} us/op (no numeric goal; reported)",
        (med(1, "lookup_ns") - med(0, "lookup_ns")) / 1000.0,
        (med(1, "record_ns") - med(0, "record_ns")) / 1000.0
    );
    Ok(Value::Array(rows))
}

fn section_start(ctx: &Ctx, plan: &Plan) -> R<Value> {
    let truth = find_program("true").ok_or("`true` not found on PATH")?;
    let run_ok = ctx.cli.as_ref().is_some_and(|cli| {
        let mut c = Command::new(cli);
        strip_shim_env(&mut c);
        c.args(["run", "--"])
            .arg(&truth)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let label = if run_ok {
        "splicecow run -- true"
    } else {
        "env LD_PRELOAD=libsplicecow.so true"
    };
    println!(
        "\n5. Start cost: `{label}` vs `true`, {} alternating runs",
        plan.start_runs
    );
    // 0: true; 1: true with LD_PRELOAD (protect, fresh domain); 2: the goal's command.
    let names = ["true", "LD_PRELOAD=libsplicecow.so true", label];
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..plan.start_runs {
        for k in 0..names.len() {
            let which = (k + i) % names.len();
            let domain = TempDomain::new();
            let mut cmd = if which == 2 && run_ok {
                let mut c = Command::new(ctx.cli.as_ref().expect("checked"));
                c.args(["run", "--"]).arg(&truth);
                c
            } else {
                Command::new(&truth)
            };
            strip_shim_env(&mut cmd);
            if which == 1 || (which == 2 && !run_ok) {
                cmd.env("LD_PRELOAD", &ctx.lib)
                    .env("SPLICECOW_DOMAIN", domain.name());
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let t = Instant::now();
            let st = cmd.status().map_err(|e| format!("spawn: {e}"))?;
            times[which].push(t.elapsed().as_secs_f64() * 1000.0);
            if !st.success() {
                return Err(format!("start run {:?} failed: {st}", names[which]));
            }
        }
    }
    let base = median(&times[0]);
    println!("   {:<40} {:>8} {:>9}   goal", "command", "ms p50", "delta");
    let mut rows = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let m = median(&times[i]);
        let goal = if i == 2 {
            format!("<= +1 ms  {}", verdict(m - base <= 1.0))
        } else {
            String::new()
        };
        println!("   {:<40} {:>8.3} {:>+8.3}   {}", name, m, m - base, goal);
        rows.push(json!({
            "command": name, "ms": m, "delta_ms": m - base,
            "goal_met": (i == 2).then_some(m - base <= 1.0), "samples_ms": times[i],
        }));
    }
    Ok(Value::Array(rows))
}
