//! One run: the run directory, the workers' lifetime, the final checks.

use super::*;

pub(crate) fn setup_dir(args: &RunArgs, seed: u64) -> io::Result<PathBuf> {
    let dir = temp_path("stress");
    std::fs::create_dir_all(&dir)?;
    for k in 0..args.files + EXTRA_FILES {
        let len = if k >= first_quiet_file(args.files) {
            QUIET_FILE_LEN
        } else {
            args.file_size
        };
        let content: Vec<u8> = (0..len).map(|i| initial_byte(k, i)).collect();
        std::fs::write(data_path(&dir, k), &content)?;
        std::fs::write(model_path(&dir, k), &content)?;
        File::create(lock_path(&dir, k))?;
    }
    let mut rng = Rng(seed ^ 0x5eed);
    let mut side = vec![0u8; SIDE_LEN];
    rng.fill(&mut side);
    std::fs::write(dir.join("side"), &side)?;
    Ok(dir)
}

pub(crate) fn run(args: RunArgs) -> ExitCode {
    let lib = match args.lib.clone().map(Ok).unwrap_or_else(library_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("stress: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = lib.with_file_name("splicecow");
    if args.files == 0 || args.files + EXTRA_FILES > MAX_FILES {
        eprintln!("stress: --files must be 1..={}", MAX_FILES - EXTRA_FILES);
        return ExitCode::from(2);
    }
    let faults = args.faults || args.kill_rate.is_some();
    let kill_rate = args.kill_rate.unwrap_or(20.0);
    let duration = args
        .duration
        .or(if args.ops.is_some() { None } else { Some(30.0) });
    let seed = args
        .seed
        .unwrap_or_else(|| monotonic_ns() ^ (std::process::id() as u64) << 40);
    let dir = match setup_dir(&args, seed) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("stress: setup: {e}");
            return ExitCode::from(2);
        }
    };
    let st = Status::map(&dir.join("status"), true).expect("status page");
    let workers = plan(args.workers, faults, !args.no_relays);
    for w in workers.iter().filter(|w| w.role == Role::Relay) {
        for &c in &w.chans {
            st.w(W_RELAYED + c).store(1, Ordering::SeqCst);
        }
    }
    let threads: usize = workers.iter().map(|w| w.threads).sum();
    eprintln!(
        "stress: seed {seed}; {} workers ({} threads), {} files of {} bytes, faults {}; dir {}",
        workers.len(),
        threads,
        args.files,
        args.file_size,
        if faults {
            format!("on ({kill_rate}/s)")
        } else {
            "off".into()
        },
        dir.display()
    );
    let mut p = Parent {
        args: args.clone(),
        dir: dir.clone(),
        lib,
        cli,
        domain: TempDomain::new(),
        relay_domain: TempDomain::new(),
        quiet_domain: TempDomain::new(),
        st,
        seed,
        rng: Rng(seed),
        workers,
        crashes: 0,
        kills: [0; 6],
        paused_kills: [0; PAUSE_POINTS.len()],
        quiet_paused_kills: [0; PAUSE_POINTS.len()],
        takeover_probes: 0,
        max_takeover_ns: 0,
        hangs: 0,
    };
    for i in 0..p.workers.len() {
        if let Err(e) = p.spawn(i) {
            eprintln!("stress: spawn: {e}");
            p.kill_all();
            return ExitCode::from(2);
        }
    }
    let start = Instant::now();
    let hang = Duration::from_secs_f64(args.hang_secs);
    let mut last_progress = (p.progress(), Instant::now());
    let mut next_kill = Instant::now() + Duration::from_millis(500);
    let mut next_report = Instant::now() + Duration::from_secs(10);
    let all_workers: Vec<usize> = (0..p.workers.len()).collect();
    // Main loop: faults, restarts, watchdog.
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let elapsed = start.elapsed().as_secs_f64();
        if duration.is_some_and(|d| elapsed >= d) || args.ops.is_some_and(|n| p.ops() >= n) {
            break;
        }
        p.reap(true);
        if faults && Instant::now() >= next_kill {
            let gap = -(1.0 - p.rng.next() as f64 / u64::MAX as f64).ln() / kill_rate;
            next_kill = Instant::now() + Duration::from_secs_f64(gap.min(2.0));
            let kind = p.rng.below(args.kill_roles.len());
            let want = ROLES
                .into_iter()
                .find(|r| r.name() == args.kill_roles[kind])
                .unwrap_or(Role::Victim);
            let cands: Vec<usize> = all_workers
                .iter()
                .copied()
                .filter(|&i| p.workers[i].role == want && p.workers[i].child.is_some())
                .collect();
            if !cands.is_empty() {
                let i = cands[p.rng.below(cands.len())];
                if want.is_victim() {
                    p.aimed_kill(i);
                } else {
                    p.kill(i);
                }
            }
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            eprintln!(
                "stress: {:.0}s: {} ops, {} verified bytes, {} kills, {} mismatches, {} losses",
                elapsed,
                p.ops(),
                p.st.count(C_BYTES_VERIFIED),
                p.kills.iter().sum::<u64>(),
                p.st.count(C_MISMATCHES),
                p.st.count(C_LOSSES)
            );
        }
        // Watchdog.
        let now_progress = p.progress();
        if now_progress != last_progress.0 {
            last_progress = (now_progress, Instant::now());
        }
        let stuck = p
            .workers
            .iter()
            .filter(|w| w.child.is_some())
            .find_map(|w| {
                (w.slot_base..w.slot_base + w.threads).find(|&s| {
                    let t = p.st.slot(s, S_OP_START).load(Ordering::Relaxed);
                    t != 0 && monotonic_ns().saturating_sub(t) > hang.as_nanos() as u64
                })
            });
        if let Some(s) = stuck {
            p.dump(&format!(
                "thread slot {s} is inside one operation for more than {:?}",
                hang
            ));
            p.hangs += 1;
            break;
        }
        if last_progress.1.elapsed() > hang {
            p.dump(&format!("no progress for {hang:?}"));
            p.hangs += 1;
            break;
        }
    }
    // Stop: producers and mutators finish, consumers drain to EOF.
    let run_secs = start.elapsed().as_secs_f64();
    p.st.w(W_STOP).store(1, Ordering::SeqCst);
    let deadline = Instant::now() + hang.max(Duration::from_secs(20));
    if p.hangs == 0 {
        loop {
            if p.reap(false) == 0 {
                break;
            }
            if Instant::now() > deadline {
                p.dump("workers did not finish after the stop request");
                p.hangs += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    p.kill_all();
    p.reap(false);
    // The run's registry counters: both domains' together.
    let stats =
        [&p.domain, &p.relay_domain, &p.quiet_domain].map(|d| p.stats(d).unwrap_or_default());
    let sv = |k: &str| -> u64 {
        stats
            .iter()
            .filter_map(|s| s.get(k).and_then(|v| v.as_u64()))
            .sum()
    };
    let st = &p.st;
    let ops = p.ops();
    let spliced = sv("bytes_zero_copy") + sv("bytes_copy_path");
    let report = Report {
        seed,
        seconds: run_secs,
        workers: p.workers.len(),
        threads,
        ops,
        ops_per_sec: ops as f64 / run_secs,
        splice_ops: st.count(C_SPLICE_OPS),
        mutation_ops: st.count(C_MUT_OPS),
        consume_ops: st.count(C_CONSUME_OPS),
        tees: st.count(C_TEES),
        pipe_to_pipe: st.count(C_PIPE2PIPE),
        sendfiles: st.count(C_SENDFILES),
        headers: st.count(C_HEADERS),
        bytes_verified: st.count(C_BYTES_VERIFIED),
        generations_checked: st.count(C_GENS),
        settles: sv("settles"),
        settles_per_sec: sv("settles") as f64 / run_secs,
        bytes_spliced: spliced,
        bytes_copied: sv("bytes_copied"),
        copied_per_spliced: sv("bytes_copied") as f64 / spliced.max(1) as f64,
        copy_fallbacks: sv("copy_fallbacks"),
        copy_fallbacks_registry_full: sv("copy_fallbacks_registry_full"),
        copy_fallbacks_shared_mapping: sv("copy_fallbacks_shared_mapping"),
        unreachable_pipes: sv("unreachable_pipes"),
        children: SPAWN_KINDS
            .iter()
            .enumerate()
            .map(|(i, &(_, _, name))| (name, st.count(C_SPAWNS + i)))
            .collect(),
        relay_rounds_splice: st.count(C_RELAY_ROUNDS + RelayKind::Splice as usize),
        relay_rounds_tee: st.count(C_RELAY_ROUNDS + RelayKind::Tee as usize),
        relay_rounds_buffered: st.count(C_RELAY_BUFFERED),
        relay_rounds_waited: st.count(C_RELAY_WAITED),
        relay_bytes: st.count(C_RELAY_BYTES),
        relay_bytes_verified: st.count(C_RELAY_VERIFIED),
        relay_mismatches: st.count(C_RELAY_MISMATCHES),
        faults,
        kills: p.kills.iter().sum(),
        kills_producer: p.kills[0],
        kills_consumer: p.kills[1],
        kills_mutator: p.kills[2],
        kills_victim: p.kills[3],
        kills_relay: p.kills[4],
        kills_quiet_victim: p.kills[5],
        kills_paused_at: PAUSE_POINTS.into_iter().zip(p.paused_kills).collect(),
        kills_paused: p.paused_kills.iter().sum(),
        quiet_kills_paused_at: PAUSE_POINTS.into_iter().zip(p.quiet_paused_kills).collect(),
        quiet_checks: st.count(C_QUIET_CHECKS),
        quiet_check_failures: st.count(C_QUIET_CHECK_FAILURES),
        lock_takeovers: sv("lock_takeovers"),
        table_repairs: sv("table_repairs"),
        takeover_probes: p.takeover_probes,
        max_lock_takeover_ms: p.max_takeover_ns as f64 / 1e6,
        mismatches: st.count(C_MISMATCHES),
        mismatch_bytes: st.count(C_MISMATCH_BYTES),
        settle_window_losses: st.count(C_LOSSES),
        settle_window_loss_bytes: st.count(C_LOSS_BYTES),
        settle_window_repeats: st.count(C_REPEATS),
        settle_window_repeat_bytes: st.count(C_REPEAT_BYTES),
        file_mismatches: st.count(C_FILE_MISMATCHES),
        model_resyncs: st.count(C_RESYNCS),
        errors: st.count(C_ERRORS),
        crashes: p.crashes,
        hangs: p.hangs,
        passed: false,
    };
    let passed = report.mismatches == 0
        && report.file_mismatches == 0
        && report.errors == 0
        && report.crashes == 0
        && report.hangs == 0
        && report.max_lock_takeover_ms < 1000.0
        && report.bytes_verified > 0;
    let report = Report { passed, ..report };
    print_report(&report);
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("stress: kept {}", dir.display());
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        eprintln!("stress: FAILED (reproduce the random choices with --seed {seed})");
        ExitCode::from(1)
    }
}
