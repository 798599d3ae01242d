//! Section 4: mutation lookups and splice records with many live segments.

use super::*;

pub(crate) fn section_scale(ctx: &Ctx, plan: &Plan) -> Res<Value> {
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
