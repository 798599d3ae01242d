//! Section 2: the hook cost of small `pwrite`s to an unrelated file.

use super::*;

pub(crate) fn section_hook(ctx: &Ctx, plan: &Plan) -> Res<Value> {
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
