//! Section 7: strict mode's cost. A statically linked program's 64-byte `pwrite` loop
//! (the strict-mode test helper, built with `gcc -static`) run bare, under plain
//! `splicecow run` (where the preload cannot reach it) and under `run --strict` (every
//! call a round trip to the supervisor); and a dynamically linked program (this
//! benchmark's own hook worker) under `run` and `run --strict`, which must not differ.
//! Then the same helper's 1 MiB `pwrite`s, and its splice + read loop (a file into a
//! 1 MiB pipe, 1 MiB at a time, each splice run by the supervisor), bare and strict.

use super::*;

/// The strict-mode test helper's source, beside the CLI's tests.
const HELPER_SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shim/cli/tests/strict/prog.c"
);

/// Builds the helper with `gcc -static`; `Err` says why it cannot be built here.
fn static_helper() -> Res<PathBuf> {
    let out = target_dir().join("test-programs").join("bench-strict-prog");
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new("."))).map_err(|e| e.to_string())?;
    let mut gcc = Command::new("gcc");
    strip_shim_env(&mut gcc)
        .args(["-static", "-pthread", "-O2", "-o"])
        .arg(&out)
        .arg(HELPER_SOURCE);
    let built =
        run_with_timeout(&mut gcc, Duration::from_secs(120)).map_err(|e| format!("gcc: {e}"))?;
    if !built.status.is_some_and(|s| s.success()) {
        return Err(format!("gcc -static failed: {}", built.describe()).into());
    }
    Ok(out)
}

pub(crate) fn section_strict(ctx: &Ctx, plan: &Plan) -> Res<Value> {
    let ops = plan.hook_ops / 5;
    println!(
        "\n7. Strict mode: 64-byte pwrite, {} ops x {} reps (static: the strict-mode test \
         helper; dynamic: the hook worker)",
        ops, plan.hook_reps
    );
    let Some(cli) = &ctx.cli else {
        println!("   not run: no splicecow binary found next to this one");
        return Ok(Value::Null);
    };
    let prog = match static_helper() {
        Ok(p) => p,
        Err(e) => {
            println!("   not run: {e}");
            return Ok(Value::Null);
        }
    };
    let file = ctx.dir.join("strict-pwrite");
    create_data_file(&file, 4 * KIB)?;
    let (prog, file, exe) = (
        prog.display().to_string(),
        file.display().to_string(),
        ctx.exe.display().to_string(),
    );
    let dir = ctx.dir.display().to_string();
    let static_loop = vec![prog, "pwrite-loop".into(), file, ops.to_string()];
    let dynamic_loop = vec![
        exe,
        "worker".into(),
        "hook".into(),
        ops.to_string(),
        "0".into(),
        dir,
    ];
    let under = |flags: &[&str], inner: &[String]| -> Vec<String> {
        let mut v = vec![cli.display().to_string(), "run".into()];
        v.extend(flags.iter().map(|f| f.to_string()));
        v.push("--".into());
        v.extend(inner.iter().cloned());
        v
    };
    let variants: [(&str, Vec<String>); 5] = [
        ("static, bare", static_loop.clone()),
        ("static, splicecow run", under(&[], &static_loop)),
        ("static, run --strict", under(&["--strict"], &static_loop)),
        ("dynamic, splicecow run", under(&[], &dynamic_loop)),
        ("dynamic, run --strict", under(&["--strict"], &dynamic_loop)),
    ];
    let ns = measure(&variants, plan.hook_reps)?;
    println!("   {:<24} {:>9}   vs", "variant", "ns/op");
    let mut rows = Vec::new();
    for (vi, (name, _)) in variants.iter().enumerate() {
        let median_ns = median(&ns[vi]);
        let note = match vi {
            2 => {
                let extra = median_ns - median(&ns[0]);
                format!(
                    "+{:.0} ns over bare   <= +5000 ns  {}",
                    extra,
                    verdict(extra <= 5000.0)
                )
            }
            4 => {
                let ratios: Vec<f64> = ns[4].iter().zip(&ns[3]).map(|(s, r)| s / r).collect();
                let ratio = median(&ratios);
                format!(
                    "{ratio:.3}x of plain run   1.0x  {}",
                    verdict(ratio <= 1.05)
                )
            }
            _ => String::new(),
        };
        println!("   {:<24} {:>9.0}   {}", name, median_ns, note);
        rows.push(json!({ "variant": name, "ns_per_op": median_ns, "samples_ns": ns[vi] }));
    }

    // Large calls: a trapped 1 MiB pwrite, and the splicer's throughput.
    let big = ctx.dir.join("strict-big");
    create_data_file(&big, 64 * MIB)?;
    let big = big.display().to_string();
    let prog = &static_loop[0];
    let write_loop = vec![prog.clone(), "write-loop".into(), big.clone(), "500".into()];
    let splice_loop = vec![prog.clone(), "splice-loop".into(), big, "4".into()];
    let variants: [(&str, Vec<String>); 4] = [
        ("1 MiB pwrite, bare", write_loop.clone()),
        ("1 MiB pwrite, --strict", under(&["--strict"], &write_loop)),
        ("splice+read, bare", splice_loop.clone()),
        ("splice+read, --strict", under(&["--strict"], &splice_loop)),
    ];
    let big_ns = measure(&variants, plan.hook_reps)?;
    println!("   large calls: 500 x 1 MiB pwrite; 4 x 64 MiB spliced into a 1 MiB pipe and read");
    println!("   {:<24} {:>9}   vs", "variant", "ns/op");
    for (vi, (name, _)) in variants.iter().enumerate() {
        let median_ns = median(&big_ns[vi]);
        let note = match vi {
            1 => {
                let extra = median_ns - median(&big_ns[0]);
                let ratio = median(&big_ns[0]) / median_ns;
                format!("+{extra:.0} ns over bare ({ratio:.3}x of bare speed)")
            }
            2 => format!("{:.0} MB/s (ns per MiB)", MIB as f64 / median_ns * 1e3),
            3 => {
                let ratios: Vec<f64> = big_ns[2]
                    .iter()
                    .zip(&big_ns[3])
                    .map(|(raw, s)| raw / s)
                    .collect();
                let ratio = median(&ratios);
                format!(
                    "{:.0} MB/s, {ratio:.3}x of bare   >= 0.9x  {}",
                    MIB as f64 / median_ns * 1e3,
                    verdict(ratio >= 0.9)
                )
            }
            _ => String::new(),
        };
        println!("   {:<24} {:>9.0}   {}", name, median_ns, note);
        rows.push(json!({ "variant": name, "ns_per_op": median_ns, "samples_ns": big_ns[vi] }));
    }
    Ok(Value::Array(rows))
}

/// Runs each variant (a command line printing its ns per op last) `reps` times,
/// interleaved; the samples of each.
fn measure(variants: &[(&str, Vec<String>)], reps: usize) -> Res<Vec<Vec<f64>>> {
    let mut ns = vec![Vec::new(); variants.len()];
    for rep in 0..reps {
        for k in 0..variants.len() {
            let vi = (k + rep) % variants.len();
            let argv = &variants[vi].1;
            let mut cmd = Command::new(&argv[0]);
            strip_shim_env(&mut cmd).args(&argv[1..]);
            let out = run_with_timeout(&mut cmd, Duration::from_secs(600))
                .map_err(|e| format!("spawn {}: {e}", variants[vi].0))?;
            if !out.status.is_some_and(|s| s.success()) {
                return Err(format!("{} failed: {}", variants[vi].0, out.describe()).into());
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let value = parse_line(&out.stdout)
                .and_then(|v| v["ns_per_op"].as_f64().or_else(|| v.as_f64()))
                .or_else(|| text.trim().lines().last()?.trim().parse().ok())
                .ok_or_else(|| format!("{}: no result: {}", variants[vi].0, out.describe()))?;
            ns[vi].push(value);
        }
    }
    Ok(ns)
}
