//! Per-call cost in the shapes programs splice: one thread splices a cached file into
//! its own pipe and reads the bytes back (uutils and GNU `cat`, Python `os.splice`
//! loops), at 4 KiB and 64 KiB, in 1, 2 and 4 threads each with its own file and pipe;
//! and a 64-byte `pwrite` to an unrelated file while another process of the domain
//! streams. Raw is measured twice, with the blocking call and with the non-blocking
//! splice + `poll` loop the shim itself runs; ratios are against the faster of the two.

use super::*;

/// One row of the splice + read table: `(label, chunk, threads, goal)`, where the goal
/// is a limit on shim time / raw time (one thread) or a floor on shim / raw throughput.
const SHAPES: [(&str, usize, usize, Goal); 4] = [
    ("1 thread, 4 KiB", 4 * KIB, 1, Goal::TimeAtMost(1.25)),
    ("1 thread, 64 KiB", 64 * KIB, 1, Goal::TimeAtMost(1.10)),
    (
        "2 threads, 64 KiB",
        64 * KIB,
        2,
        Goal::ThroughputAtLeast(0.90),
    ),
    (
        "4 threads, 64 KiB",
        64 * KIB,
        4,
        Goal::ThroughputAtLeast(0.90),
    ),
];

/// What a shape must show.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// Shim time per iteration over the best raw time.
    TimeAtMost(f64),
    /// Shim throughput over the best raw throughput.
    ThroughputAtLeast(f64),
}

/// The three ways a shape runs, in the order they alternate.
const WAYS: [(&str, Shim, &str); 3] = [
    ("raw", Shim::Off, "block"),
    ("raw nonblock+poll", Shim::Off, "nonblock"),
    ("shim", Shim::Protect, "block"),
];

pub(crate) fn section_calls(ctx: &Ctx, plan: &Plan) -> Res<Value> {
    let bytes = plan.calls_bytes;
    println!(
        "\n6. Per-call cost: splice a cached file into the thread's own pipe, read it back \
         ({} MiB per thread per run, {} reps)",
        bytes / MIB,
        plan.calls_reps
    );
    let files: Vec<PathBuf> = (0..4).map(|i| ctx.dir.join(format!("calls-{i}"))).collect();
    for f in &files {
        create_data_file(f, 16 * MIB)?;
    }
    let dir = ctx.dir.display().to_string();
    println!(
        "   {:<20} {:>11} {:>11} {:>11} {:>12}   goal",
        "shape", "raw ns/it", "nonblk ns/it", "shim ns/it", "shim/best"
    );
    let mut rows = Vec::new();
    for (label, chunk, threads, goal) in SHAPES {
        let iters = bytes / chunk;
        let mut ns = [Vec::new(), Vec::new(), Vec::new()];
        for rep in 0..plan.calls_reps {
            for k in 0..WAYS.len() {
                let wi = (k + rep) % WAYS.len();
                let (_, shim, how) = WAYS[wi];
                let args = [
                    "calls".into(),
                    how.into(),
                    chunk.to_string(),
                    iters.to_string(),
                    threads.to_string(),
                    dir.clone(),
                ];
                ns[wi].push(ctx.run(shim, &args)?["ns_per_iter"].as_f64().unwrap_or(0.0));
            }
        }
        // Per repetition: shim over the faster raw way of that repetition.
        let ratios: Vec<f64> = (0..plan.calls_reps)
            .map(|r| ns[2][r] / ns[0][r].min(ns[1][r]))
            .collect();
        let time_ratio = median(&ratios);
        let (shown, met, goal_text) = match goal {
            Goal::TimeAtMost(l) => (
                format!("{time_ratio:.2}x time"),
                time_ratio <= l,
                format!("<= {l:.2}x time"),
            ),
            Goal::ThroughputAtLeast(l) => (
                format!("{:.2}x thr", 1.0 / time_ratio),
                1.0 / time_ratio >= l,
                format!(">= {l:.2}x throughput"),
            ),
        };
        println!(
            "   {:<20} {:>11.0} {:>11.0} {:>11.0} {:>12}   {goal_text}  {}",
            label,
            median(&ns[0]),
            median(&ns[1]),
            median(&ns[2]),
            shown,
            verdict(met)
        );
        rows.push(json!({
            "shape": label, "chunk": chunk, "threads": threads,
            "raw_ns": median(&ns[0]), "raw_nonblock_ns": median(&ns[1]),
            "shim_ns": median(&ns[2]), "shim_over_best_raw_time": time_ratio,
            "goal_met": met,
        }));
    }
    rows.push(small_writes_while_streaming(ctx, plan, &files[0])?);
    rows.push(detect_stacks(ctx, plan, &dir)?);
    Ok(Value::Array(rows))
}

/// Detect mode's splice side with and without call stacks (`SPLICECOW_STACKS=0`), next
/// to protect mode, in the shape where a splice's own cost weighs most: one thread,
/// 4 KiB splices read back at once.
fn detect_stacks(ctx: &Ctx, plan: &Plan, dir: &str) -> Res<Value> {
    const MODES: [Shim; 3] = [Shim::Protect, Shim::DetectNoStacks, Shim::Detect];
    let chunk = 4 * KIB;
    let iters = plan.calls_bytes / chunk;
    let mut ns = [Vec::new(), Vec::new(), Vec::new()];
    for rep in 0..plan.calls_reps {
        for k in 0..MODES.len() {
            let mi = (k + rep) % MODES.len();
            let args = [
                "calls".into(),
                "block".into(),
                chunk.to_string(),
                iters.to_string(),
                "1".into(),
                dir.to_string(),
            ];
            ns[mi].push(
                ctx.run(MODES[mi], &args)?["ns_per_iter"]
                    .as_f64()
                    .unwrap_or(0.0),
            );
        }
    }
    let ratios: Vec<f64> = (0..plan.calls_reps).map(|r| ns[2][r] / ns[1][r]).collect();
    let ratio = median(&ratios);
    let [protect, plain, stacks] = [median(&ns[0]), median(&ns[1]), median(&ns[2])];
    println!(
        "   detect mode, 1 thread, 4 KiB: protect {protect:.0} ns/it, detect without stacks \
         {plain:.0}, with stacks {stacks:.0} ({:+.0} ns per splice, {ratio:.2}x)",
        stacks - plain
    );
    Ok(json!({
        "shape": "detect stacks, 1 thread, 4 KiB", "protect_ns": protect,
        "detect_no_stacks_ns": plain, "detect_stacks_ns": stacks,
        "stacks_over_no_stacks_time": ratio,
    }))
}

/// The 64-byte `pwrite` of the hook section, while a process of the same domain splices
/// 64 KiB pieces of another file into its own pipe and reads them back without pause.
fn small_writes_while_streaming(ctx: &Ctx, plan: &Plan, file: &Path) -> Res<Value> {
    let mut ns = [Vec::new(), Vec::new()];
    let hook_args = |dir: &Path| {
        [
            "hook".to_string(),
            plan.hook_ops.to_string(),
            "0".into(),
            dir.display().to_string(),
        ]
    };
    for rep in 0..plan.hook_reps {
        for k in 0..2 {
            let shimmed = (k + rep) % 2 == 1;
            let domain = TempDomain::new();
            let shim = if shimmed { Shim::Protect } else { Shim::Off };
            let mut streamer = ctx
                .command(
                    shim,
                    Some(&domain),
                    &["streamer".into(), file.display().to_string()],
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("spawn streamer: {e}"))?;
            let mut line = String::new();
            if let Some(out) = streamer.stdout.take() {
                let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
            }
            let mut cmd = ctx.command(shim, Some(&domain), &hook_args(&ctx.dir));
            let out = run_with_timeout(&mut cmd, Duration::from_secs(600));
            drop(streamer.stdin.take());
            let _ = streamer.wait();
            let out = out.map_err(|e| format!("spawn hook worker: {e}"))?;
            let v = parse_line(&out.stdout)
                .ok_or_else(|| format!("hook worker: no result: {}", out.describe()))?;
            ns[usize::from(shimmed)].push(v["ns_per_op"].as_f64().unwrap_or(0.0));
        }
    }
    let ratios: Vec<f64> = ns[1].iter().zip(&ns[0]).map(|(s, r)| s / r).collect();
    let ratio = median(&ratios);
    println!(
        "   64-byte pwrite, unrelated file, a pipeline streaming in the domain: \
         {:.0} ns raw, {:.0} ns shim, {ratio:.2}x   <= 1.25x  {}",
        median(&ns[0]),
        median(&ns[1]),
        verdict(ratio <= 1.25)
    );
    Ok(json!({
        "shape": "pwrite while streaming", "raw_ns": median(&ns[0]),
        "shim_ns": median(&ns[1]), "ratio": ratio, "goal_met": ratio <= 1.25,
    }))
}

/// `bench worker calls HOW CHUNK ITERS THREADS DIR`: thread `i` of THREADS splices CHUNK
/// bytes of `DIR/calls-<i>` into its own pipe ITERS times, reading them back each time;
/// HOW is `block` (the plain call) or `nonblock` (`SPLICE_F_NONBLOCK`, `poll` on
/// `EAGAIN`). Prints the wall time per iteration.
pub(crate) fn worker_calls(
    how: &str,
    chunk: usize,
    iters: usize,
    threads: usize,
    dir: &Path,
) -> Res<Value> {
    let nonblock = how == "nonblock";
    let files: Vec<File> = (0..threads)
        .map(|i| File::open(dir.join(format!("calls-{i}"))).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    std::thread::scope(|s| -> Res<()> {
        let handles: Vec<_> = files
            .iter()
            .map(|f| s.spawn(move || splice_and_read(f, chunk, iters, nonblock)))
            .collect();
        for h in handles {
            h.join().map_err(|_| "thread panicked")??;
        }
        Ok(())
    })?;
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    Ok(json!({ "ns_per_iter": ns }))
}

/// A file spliced piece by piece into a pipe of its own and read back, from offset 0
/// again once the file's end is near.
struct SpliceLoop<'f> {
    file: &'f File,
    size: i64,
    off: i64,
    pipe: (OwnedFd, OwnedFd),
    buf: Vec<u8>,
    flags: u32,
}

impl<'f> SpliceLoop<'f> {
    /// `chunk`-byte pieces of `file`, with `SPLICE_F_NONBLOCK` (and `poll` on `EAGAIN`)
    /// when `nonblock`.
    fn new(file: &'f File, chunk: usize, nonblock: bool) -> Res<SpliceLoop<'f>> {
        Ok(SpliceLoop {
            file,
            size: file.metadata().map_err(|e| e.to_string())?.len() as i64,
            off: 0,
            pipe: pipe().map_err(|e| format!("pipe: {e}"))?,
            buf: vec![0u8; chunk],
            flags: if nonblock { libc::SPLICE_F_NONBLOCK } else { 0 },
        })
    }

    /// Splices the next piece into the pipe and reads it back.
    fn step(&mut self) -> Res<()> {
        let chunk = self.buf.len();
        if self.off + chunk as i64 > self.size {
            self.off = 0;
        }
        let (fd, w) = (self.file.as_raw_fd(), self.pipe.1.as_raw_fd());
        let n = loop {
            let n = splice_at(fd, &mut self.off, w, chunk, self.flags);
            let again = std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
            if n >= 0 || self.flags == 0 || !again {
                break n;
            }
            splicecow_test_harness::sys::wait_fd(w, libc::POLLOUT);
        };
        if n <= 0 {
            return Err(os_err("splice"));
        }
        read_exact_fd(self.pipe.0.as_raw_fd(), &mut self.buf[..n as usize])
    }
}

/// One thread of [`worker_calls`].
fn splice_and_read(f: &File, chunk: usize, iters: usize, nonblock: bool) -> Res<()> {
    let mut pieces = SpliceLoop::new(f, chunk, nonblock)?;
    for _ in 0..iters {
        pieces.step()?;
    }
    Ok(())
}

/// `bench worker streamer FILE`: splices 64 KiB pieces of FILE into its own pipe and
/// reads them back until stdin is closed; prints `ready` after the first piece.
pub(crate) fn worker_streamer(path: &Path) -> Res<()> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut pieces = SpliceLoop::new(&file, 64 * KIB, false)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while !matches!(std::io::stdin().read(&mut b), Ok(0) | Err(_)) {}
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let mut first = true;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        pieces.step()?;
        if first {
            println!("ready");
            std::io::stdout().flush().map_err(|e| e.to_string())?;
            first = false;
        }
    }
    let _ = watcher.join();
    Ok(())
}
