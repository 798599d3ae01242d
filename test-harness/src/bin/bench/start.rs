//! Section 5: the start cost of `splicecow run -- true`.

use super::*;

pub(crate) fn section_start(ctx: &Ctx, plan: &Plan) -> Res<Value> {
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
                    .env(names::DOMAIN, domain.name());
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let t = Instant::now();
            let st = cmd.status().map_err(|e| format!("spawn: {e}"))?;
            times[which].push(t.elapsed().as_secs_f64() * 1000.0);
            if !st.success() {
                return Err(format!("start run {:?} failed: {st}", names[which]).into());
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
