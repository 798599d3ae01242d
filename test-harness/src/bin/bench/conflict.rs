//! Section 3: the cost of a `pwrite` that hits an in-flight segment.

use super::*;

pub(crate) fn section_conflict(ctx: &Ctx, plan: &Plan) -> Res<Value> {
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
