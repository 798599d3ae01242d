//! `splicecow stats`: the counters of a domain's registry, as text or JSON.

use crate::StatsArgs;
use splicecow_registry::{OpenError, Registry, Stats, DEFAULT_DOMAIN};
use std::time::Duration;

/// The counters and fill levels of `s`, named as the fields of [`Stats`].
pub fn fields(s: &Stats) -> [(&'static str, u64); 27] {
    [
        ("splices", s.splices),
        ("bytes_zero_copy", s.bytes_zero_copy),
        ("settles", s.settles),
        ("bytes_copied", s.bytes_copied),
        ("copy_fallbacks", s.copy_fallbacks),
        (
            "copy_fallbacks_registry_full",
            s.copy_fallbacks_registry_full,
        ),
        (
            "copy_fallbacks_shared_mapping",
            s.copy_fallbacks_shared_mapping,
        ),
        ("bytes_copy_path", s.bytes_copy_path),
        ("unreachable_pipes", s.unreachable_pipes),
        ("conflicts", s.conflicts),
        ("env_cleared", s.env_cleared),
        ("lock_takeovers", s.lock_takeovers),
        ("table_repairs", s.table_repairs),
        ("live_segments", s.live_segments),
        ("shared_writable_maps", s.shared_writable_maps),
        ("private_maps", s.private_maps),
        ("snapshots", s.snapshots),
        ("snapshot_timeouts", s.snapshot_timeouts),
        ("pipes_in_use", s.pipes_in_use),
        ("files_in_use", s.files_in_use),
        ("retired_stale", s.retired_stale),
        ("sweeps", s.sweeps),
        ("pipe_capacity", s.pipe_capacity),
        ("file_capacity", s.file_capacity),
        ("map_capacity", s.map_capacity),
        ("busy_pipes", s.busy_pipes),
        ("kernel_copies_on_splice", s.kernel_copies_on_splice),
    ]
}

/// Fraction of the pipe table holding live segments now.
pub fn registry_fill(s: &Stats) -> f64 {
    if s.pipe_capacity == 0 {
        0.0
    } else {
        s.busy_pipes as f64 / s.pipe_capacity as f64
    }
}

/// `name: value` lines, the domain first and the fill last.
pub fn human(domain: &str, s: &Stats) -> String {
    let mut out = format!("domain: {domain}\n");
    for (name, value) in fields(s) {
        out.push_str(&format!("{name}: {value}\n"));
    }
    out.push_str(&format!("registry_fill: {:.4}\n", registry_fill(s)));
    out
}

/// One JSON object: the [`Stats`] fields plus `domain` and `registry_fill`.
pub fn json(domain: &str, s: &Stats) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert("domain".into(), domain.into());
    for (name, value) in fields(s) {
        map.insert(name.into(), value.into());
    }
    map.insert("registry_fill".into(), registry_fill(s).into());
    serde_json::Value::Object(map)
}

/// The one-line message for a registry that cannot be opened.
pub fn open_error_message(domain: &str, e: &OpenError) -> String {
    match e {
        OpenError::Missing => {
            format!("splicecow: no registry for domain {domain} (nothing has run in it)")
        }
        e => format!("splicecow: cannot open the registry of domain {domain}: {e}"),
    }
}

/// Runs `splicecow stats`; returns the exit status.
pub fn main(args: StatsArgs) -> i32 {
    let domain = args
        .domain
        .or_else(|| {
            std::env::var(splicecow_registry::env::DOMAIN)
                .ok()
                .filter(|d| !d.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_DOMAIN.to_string());
    let period = match args.watch {
        Some(secs) if !(secs.is_finite() && secs > 0.0) => {
            eprintln!("splicecow: --watch needs a positive number of seconds");
            return 2;
        }
        w => w.map(Duration::from_secs_f64),
    };
    let mut first = true;
    loop {
        // Reopened each time: a `run` that ends removes its registry.
        let stats = match Registry::open_existing(&domain) {
            Ok(reg) => reg.stats(),
            Err(OpenError::Missing) if !first => {
                println!("splicecow: the registry of domain {domain} is gone");
                return 0;
            }
            Err(e) => {
                eprintln!("{}", open_error_message(&domain, &e));
                return 1;
            }
        };
        if args.json {
            println!("{}", json(&domain, &stats));
        } else {
            if !first {
                println!();
            }
            print!("{}", human(&domain, &stats));
        }
        first = false;
        match period {
            Some(p) => std::thread::sleep(p),
            None => return 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_field_and_the_fill() {
        let s = Stats {
            busy_pipes: 1,
            pipe_capacity: 4,
            splices: 7,
            ..Stats::default()
        };
        let v = json("d", &s);
        assert_eq!(v["domain"], "d");
        assert_eq!(v["splices"], 7);
        assert_eq!(v["registry_fill"], 0.25);
        assert_eq!(v.as_object().unwrap().len(), fields(&s).len() + 2);
        assert!(human("d", &s).contains("\nsplices: 7\n"));
    }
}
