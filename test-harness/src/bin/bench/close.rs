//! The cost of `close` with and without the shim.

use super::*;

pub(crate) fn section_close(ctx: &Ctx, plan: &Plan) -> Res<Value> {
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
