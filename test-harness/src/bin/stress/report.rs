//! The final figures of a run and how they are printed.

use super::*;

/// The final figures of a run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) seed: u64,
    pub(crate) seconds: f64,
    pub(crate) workers: usize,
    pub(crate) threads: usize,
    pub(crate) ops: u64,
    pub(crate) ops_per_sec: f64,
    pub(crate) splice_ops: u64,
    pub(crate) mutation_ops: u64,
    pub(crate) consume_ops: u64,
    pub(crate) tees: u64,
    pub(crate) pipe_to_pipe: u64,
    pub(crate) sendfiles: u64,
    pub(crate) headers: u64,
    pub(crate) bytes_verified: u64,
    pub(crate) generations_checked: u64,
    pub(crate) settles: u64,
    pub(crate) settles_per_sec: f64,
    pub(crate) bytes_spliced: u64,
    pub(crate) bytes_copied: u64,
    pub(crate) copied_per_spliced: f64,
    pub(crate) copy_fallbacks: u64,
    pub(crate) copy_fallbacks_registry_full: u64,
    pub(crate) copy_fallbacks_shared_mapping: u64,
    pub(crate) unreachable_pipes: u64,
    /// Children started by producers and mutators, by kind ([`SPAWN_KINDS`]).
    pub(crate) children: BTreeMap<&'static str, u64>,
    pub(crate) relay_rounds_splice: u64,
    pub(crate) relay_rounds_tee: u64,
    /// Relay rounds whose relay forwarded into a private pipe first.
    pub(crate) relay_rounds_buffered: u64,
    /// Relay rounds whose relay was seen asleep in its call before the bytes came.
    pub(crate) relay_rounds_waited: u64,
    pub(crate) relay_bytes: u64,
    pub(crate) relay_bytes_verified: u64,
    pub(crate) relay_mismatches: u64,
    pub(crate) faults: bool,
    pub(crate) kills: u64,
    pub(crate) kills_producer: u64,
    pub(crate) kills_consumer: u64,
    pub(crate) kills_mutator: u64,
    pub(crate) kills_victim: u64,
    pub(crate) kills_relay: u64,
    pub(crate) kills_quiet_victim: u64,
    /// Kills of the (main domain's) victim while it slept in its pause, by pause point.
    pub(crate) kills_paused_at: BTreeMap<&'static str, u64>,
    pub(crate) kills_paused: u64,
    /// Kills of the quiet victim while it slept in its pause, by pause point.
    pub(crate) quiet_kills_paused_at: BTreeMap<&'static str, u64>,
    /// Protection checks of quiet-victim incarnations, and how many failed.
    pub(crate) quiet_checks: u64,
    pub(crate) quiet_check_failures: u64,
    pub(crate) lock_takeovers: u64,
    pub(crate) table_repairs: u64,
    pub(crate) takeover_probes: u64,
    pub(crate) max_lock_takeover_ms: f64,
    pub(crate) mismatches: u64,
    pub(crate) mismatch_bytes: u64,
    pub(crate) settle_window_losses: u64,
    pub(crate) settle_window_loss_bytes: u64,
    pub(crate) settle_window_repeats: u64,
    pub(crate) settle_window_repeat_bytes: u64,
    pub(crate) file_mismatches: u64,
    pub(crate) model_resyncs: u64,
    pub(crate) errors: u64,
    pub(crate) crashes: u64,
    pub(crate) hangs: u64,
    pub(crate) passed: bool,
}

pub(crate) fn print_report(r: &Report) {
    eprintln!("stress report (seed {}):", r.seed);
    eprintln!(
        "  duration          {:.1} s, {} workers, {} threads",
        r.seconds, r.workers, r.threads
    );
    eprintln!("  ops               {} ({:.0}/s): {} transfers ({} sendfile, {} tee, {} pipe->pipe, {} headers), {} mutations", r.ops, r.ops_per_sec, r.splice_ops, r.sendfiles, r.tees, r.pipe_to_pipe, r.headers, r.mutation_ops);
    eprintln!(
        "  consumed          {} reads, {} bytes verified, {} pipe generations",
        r.consume_ops, r.bytes_verified, r.generations_checked
    );
    eprintln!(
        "  settles           {} ({:.0}/s)",
        r.settles, r.settles_per_sec
    );
    eprintln!(
        "  bytes copied      {} of {} spliced ({:.4})",
        r.bytes_copied, r.bytes_spliced, r.copied_per_spliced
    );
    eprintln!(
        "  copy fallbacks    {} (registry full {}, shared writable mapping {}), unreachable pipes {}",
        r.copy_fallbacks,
        r.copy_fallbacks_registry_full,
        r.copy_fallbacks_shared_mapping,
        r.unreachable_pipes
    );
    let list = |m: &BTreeMap<&str, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "  children          {} ({})",
        r.children.values().sum::<u64>(),
        list(&r.children)
    );
    eprintln!(
        "  relays            {} splice + {} tee rounds ({} through a private pipe first, {} with the relay seen waiting); {} bytes relayed, {} verified, {} mismatches there",
        r.relay_rounds_splice,
        r.relay_rounds_tee,
        r.relay_rounds_buffered,
        r.relay_rounds_waited,
        r.relay_bytes,
        r.relay_bytes_verified,
        r.relay_mismatches
    );
    if r.faults {
        eprintln!("  kills             {} (producer {}, consumer {}, mutator {}, relay {}, victim {}, quiet victim {})", r.kills, r.kills_producer, r.kills_consumer, r.kills_mutator, r.kills_relay, r.kills_victim, r.kills_quiet_victim);
        eprintln!(
            "  paused kills      victim {} ({}); quiet victim {} ({})",
            r.kills_paused,
            list(&r.kills_paused_at),
            r.quiet_kills_paused_at.values().sum::<u64>(),
            list(&r.quiet_kills_paused_at)
        );
        eprintln!(
            "  quiet checks      {} after restarts, {} failed",
            r.quiet_checks, r.quiet_check_failures
        );
        eprintln!(
            "  lock takeovers    {}, table repairs {}; max wait after a kill {:.1} ms over {} probes",
            r.lock_takeovers, r.table_repairs, r.max_lock_takeover_ms, r.takeover_probes
        );
    }
    eprintln!(
        "  mismatches        {} ({} bytes)",
        r.mismatches, r.mismatch_bytes
    );
    eprintln!(
        "  settle-window losses {} ({} bytes), repeats {} ({} bytes)",
        r.settle_window_losses,
        r.settle_window_loss_bytes,
        r.settle_window_repeats,
        r.settle_window_repeat_bytes
    );
    eprintln!(
        "  file mismatches   {}, model resyncs {}, errors {}, crashes {}, hangs {}",
        r.file_mismatches, r.model_resyncs, r.errors, r.crashes, r.hangs
    );
    eprintln!(
        "  result            {}",
        if r.passed { "PASS" } else { "FAIL" }
    );
}
