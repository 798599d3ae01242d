//! Section 1: throughput file → pipe → an unshimmed reader.

use super::*;

/// The cached test file: created once under /var/tmp, reused when its size is right,
/// read once to warm the page cache.
pub(crate) fn bench_file(len: usize) -> Res<PathBuf> {
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
pub(crate) fn throughput_once(
    ctx: &Ctx,
    variant: &str,
    file: &Path,
    pipe_size: usize,
    plan: &Plan,
) -> Res<f64> {
    let len = plan.file_len * plan.thr_passes;
    let (shim, how) = match variant {
        "raw splice" => (Shim::Off, "splice"),
        "raw nonblock" => (Shim::Off, "splice-nonblock"),
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
            return Err(format!("spawn writer: {e}").into());
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
        )
        .into());
    }
    if !wout.stderr.is_empty() {
        return Err(format!(
            "{variant} writer wrote to stderr: {}",
            String::from_utf8_lossy(&wout.stderr)
        )
        .into());
    }
    let v = parse_line(&rout)
        .filter(|_| rstatus.success())
        .ok_or_else(|| format!("reader failed: {rstatus}"))?;
    let bytes = v["bytes"].as_u64().unwrap_or(0);
    if bytes != len as u64 {
        return Err(format!("{variant}: reader got {bytes} bytes, expected {len}").into());
    }
    let secs = v["secs"].as_f64().unwrap_or(0.0);
    let timed = v["timed_bytes"].as_u64().unwrap_or(0) as f64;
    if secs <= 0.0 {
        return Err(format!("{variant}: no time measured").into());
    }
    Ok(timed / secs / GIB)
}

pub(crate) fn section_throughput(ctx: &Ctx, plan: &Plan) -> Res<Value> {
    const VARIANTS: [&str; 5] = [
        "raw splice",
        "raw nonblock",
        "protect",
        "copy mode",
        "pread/write",
    ];
    /// The shim's variant, which the goal is about.
    const PROTECT: usize = 2;
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
        "   {:<8} {:<12} {:>8} {:>10}   goal   (x best raw: against the faster of raw splice and \
         raw non-blocking splice + poll, per repetition)",
        "pipe", "variant", "GiB/s", "x best raw"
    );
    let mut rows = Vec::new();
    for (si, &size) in SIZES.iter().enumerate() {
        for (vi, name) in VARIANTS.iter().enumerate() {
            let ratios: Vec<f64> = gib[si][vi]
                .iter()
                .zip(gib[si][0].iter().zip(&gib[si][1]))
                .map(|(v, (raw, nonblock))| v / raw.max(*nonblock))
                .collect();
            let ratio = median(&ratios);
            let goal = if vi == PROTECT && size >= 256 * KIB {
                format!(">= 0.95x  {}", verdict(ratio >= 0.95))
            } else {
                String::new()
            };
            println!(
                "   {:<8} {:<12} {:>8.2} {:>9.3}x   {}",
                format!("{} KiB", size / KIB),
                name,
                median(&gib[si][vi]),
                ratio,
                goal
            );
            rows.push(json!({
                "pipe_bytes": size, "variant": name, "gib_s": median(&gib[si][vi]),
                "ratio_to_best_raw": ratio, "samples_gib_s": gib[si][vi],
                "goal_met": (vi == PROTECT && size >= 256 * KIB).then_some(ratio >= 0.95),
            }));
        }
    }
    Ok(Value::Array(rows))
}
