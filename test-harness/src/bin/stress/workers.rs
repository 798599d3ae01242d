//! The quiet victim (a domain of its own), the mutator thread and the worker and
//! probe entry points.

use super::*;

/// Length of each of the quiet victim's files: the victim splices from and mutates the
/// first half; [`protection_check`] splices a range of the second half.
pub(crate) const QUIET_FILE_LEN: usize = 1 << 20;

/// The quiet victim: alone in its domain, it first checks that the domain still protects
/// a splice of each of its files ([`protection_check`]: the previous incarnation may have
/// been killed inside a registry update), then makes the registry update its pause point
/// `point` sits in again and again ([`torn_update_attempt`]), on the file of that point
/// (a count torn one too high by one point must not hide one torn one too low by
/// another). The main domain cannot show a torn count: it always has other segments
/// live, so a count one short never reaches zero there.
pub(crate) fn quiet_victim_main(ctx: &mut Ctx, point: &str) {
    for k in ctx.own.clone() {
        protection_check(ctx, k);
    }
    let at = PAUSE_POINTS.iter().position(|&p| p == point).unwrap_or(0);
    let k = ctx.own.start + at;
    while !ctx.st.stopping() {
        ctx.slot.heartbeat();
        torn_update_attempt(ctx, k, point);
        std::thread::sleep(Duration::from_micros(ctx.rng.range(500, 2000) as u64));
    }
}

/// One splice of file `k` into a fresh pipe nobody reads, then the call that pauses at
/// `point`, made with the slot busy (the parent's aimed kill waits for that, so the kill
/// lands in this call's pause, not in the first splice's):
///
/// - `record`: a second, non-contiguous splice into the pipe (a new segment);
/// - `commit`: a splice at the end of the file (it moves nothing: the intent is dropped);
/// - `retire`: the pipe is read empty, then a hole is punched into the spliced range (the
///   exact prune retires the consumed segment);
/// - `holder`: a second splice through a duplicate of the pipe's descriptor (the holder
///   list is rewritten);
/// - `settle`: a `pwrite` into the spliced range (the pipe is settled);
/// - `call`: as `record`, paused with the lock free before the kernel call.
///
/// Unless killed, the victim then reads the pipe empty and punches a hole over the range
/// (the exact prune retires its segments while the pipe is still reachable: a dead pipe
/// costs a scan of `/proc/*/fd` once found, and a full registry would take the copy
/// path, where nothing tears).
pub(crate) fn torn_update_attempt(ctx: &mut Ctx, k: usize, point: &str) {
    let Ok((r, w)) = splicecow_test_harness::pipe() else {
        return;
    };
    let fd = ctx.data[k].as_raw_fd();
    let off = ctx.rng.below(QUIET_FILE_LEN / 4);
    let len = ctx.rng.range(4096, 16384);
    if splice_range(fd, off, w.as_raw_fd(), len) == 0 {
        ctx.fail(C_ERRORS, || {
            format!("quiet victim: splice of f{k} at {off} moved nothing")
        });
        return;
    }
    let second = off + len + ctx.rng.range(1, 4096);
    let alias = w.try_clone();
    let mut junk = vec![0u8; len];
    ctx.rng.fill(&mut junk);
    if point == "retire" {
        let _ = read_up_to(r.as_raw_fd(), len);
    }
    let op = match point {
        "retire" => mutation_code(Mutation::PunchHole),
        "settle" => mutation_code(Mutation::Pwrite),
        _ => Op::Splice as u64,
    };
    ctx.slot.begin_code(op);
    let done = match point {
        "record" | "call" => splice_range(fd, second, w.as_raw_fd(), len) > 0,
        "commit" => splice_range(fd, QUIET_FILE_LEN, w.as_raw_fd(), len) == 0,
        "holder" => alias.is_ok_and(|a| splice_range(fd, second, a.as_raw_fd(), len) > 0),
        "retire" => punch_hole(fd, off, len),
        _ => pwrite_all(fd, &junk, off as u64).is_ok(),
    };
    ctx.slot.end();
    if !done {
        let e = io::Error::last_os_error();
        ctx.fail(C_ERRORS, || {
            format!("quiet victim: the call paused at {point} failed: {e}")
        });
    }
    retire_by_hole(fd, r.as_raw_fd(), off, second + len - off);
}

/// Reads pipe `r` empty, then punches a hole over `[off, off + len)` of `fd`, which
/// retires the pipe's segments of that range.
pub(crate) fn retire_by_hole(fd: RawFd, r: RawFd, off: usize, len: usize) {
    let _ = read_up_to(r, fionread(r));
    punch_hole(fd, off, len);
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)` of `[off, off + len)`; whether it succeeded.
pub(crate) fn punch_hole(fd: RawFd, off: usize, len: usize) -> bool {
    let edit = Ctx::ranged(Mutation::PunchHole, off, len);
    apply(&mut Target::fd(fd), &edit).is_ok_and(|a| a == Applied::Done(0))
}

/// The check each quiet-victim incarnation starts with, as a later process of a domain
/// whose previous victim may have been killed inside a registry update: splice a range
/// of the file's second half into a pipe, punch a hole over the whole first half (which
/// retires everything the killed incarnations left recorded there: the domain's derived
/// counts must still cover the new splice), overwrite part of the spliced range, and read
/// the pipe: it must hold the bytes as they were spliced.
pub(crate) fn protection_check(ctx: &mut Ctx, k: usize) {
    let Ok((r, w)) = splicecow_test_harness::pipe() else {
        return;
    };
    let fd = ctx.data[k].as_raw_fd();
    let half = QUIET_FILE_LEN / 2;
    let off = half + ctx.rng.below(half - 65536);
    let len = ctx.rng.range(4096, 65536);
    let expected = pread_up_to(fd, off, len);
    // Not marked busy in the slot: the parent aims its kills at the attempts only.
    ctx.slot.heartbeat();
    let moved = splice_range(fd, off, w.as_raw_fd(), len);
    let punched = punch_hole(fd, 0, half);
    let at = off + ctx.rng.below(moved.max(1));
    let mut junk = vec![0u8; ctx.rng.range(1, (off + moved - at).max(1))];
    ctx.rng.fill(&mut junk);
    let written = pwrite_all(fd, &junk, at as u64).is_ok();
    if !punched || !written || moved == 0 {
        ctx.fail(C_ERRORS, || {
            format!("quiet victim check: punch {punched}, pwrite {written}, moved {moved}")
        });
    }
    let got = read_up_to(r.as_raw_fd(), moved);
    retire_by_hole(fd, r.as_raw_fd(), off, moved);
    ctx.st.add(C_QUIET_CHECKS, 1);
    if got[..] != expected[..moved.min(expected.len())] {
        let bad = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
        ctx.st.add(C_QUIET_CHECK_FAILURES, 1);
        ctx.st.add(C_MISMATCH_BYTES, bad as u64);
        ctx.fail(C_MISMATCHES, || {
            format!(
                "MISMATCH in the quiet domain (a later process after a kill of its victim): {bad} of {moved} bytes spliced from f{k} at {off} differ after a pwrite at {at}"
            )
        });
    }
}

// ---------------------------------------------------------------------------------------
// Worker: mutator
// ---------------------------------------------------------------------------------------

pub(crate) fn mutator_thread(ctx: &mut Ctx, spawns: bool) {
    let mut spawner = spawns.then(Spawner::new).flatten();
    while !ctx.st.stopping() {
        match spawner.as_mut() {
            Some(sp) if ctx.rng.chance(1) => spawn_child(ctx, sp),
            _ => ctx.mutate(),
        }
    }
}

pub(crate) fn worker_main(args: WorkerArgs) -> ExitCode {
    let st = match Status::map(&args.dir.join("status"), false) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stress worker: status page: {e}");
            return ExitCode::from(2);
        }
    };
    let st = &st;
    let args = &args;
    if args.role == "relay" {
        relay_main(st, args);
        return ExitCode::SUCCESS;
    }
    std::thread::scope(|s| {
        for t in 0..args.threads {
            s.spawn(move || {
                let slot = args.slot_base + t;
                let Some(mut ctx) = worker_ctx(st, args, t) else {
                    return;
                };
                let style = ProducerStyle {
                    headers: !args.no_headers,
                    spawns: !args.no_spawns,
                    victim: false,
                };
                match args.role.as_str() {
                    "producer" => {
                        producer_thread(&mut ctx, [args.chans[2 * t], args.chans[2 * t + 1]], style)
                    }
                    "victim" => producer_thread(
                        &mut ctx,
                        [args.chans[0], args.chans[1]],
                        ProducerStyle {
                            spawns: false,
                            victim: true,
                            ..style
                        },
                    ),
                    "consumer" => consumer_thread(&mut ctx, args.chans[t]),
                    "quiet-victim" => {
                        quiet_victim_main(&mut ctx, args.pause_point.as_deref().unwrap_or("record"))
                    }
                    _ => mutator_thread(&mut ctx, style.spawns),
                }
                st.slot(slot, S_OP)
                    .store(Op::Idle as u64, Ordering::Relaxed);
            });
        }
    });
    ExitCode::SUCCESS
}

/// The context of thread `t` of a worker (`None`, counted as an error, when its files
/// cannot be opened).
pub(crate) fn worker_ctx<'a>(st: &'a Status, args: &WorkerArgs, t: usize) -> Option<Ctx<'a>> {
    let name = format!("{}#{t}", args.role);
    match Ctx::new(
        st,
        args.slot_base + t,
        &args.dir,
        args.seed.wrapping_add(t as u64),
        args.files,
        args.max_size,
        name,
    ) {
        Ok(mut c) => {
            c.pipes = args.pipes.clone();
            c.own = args.own_first..args.own_first + args.own_count;
            Some(c)
        }
        Err(e) => {
            eprintln!("stress worker {}: setup: {e}", args.role);
            st.add(C_ERRORS, 1);
            None
        }
    }
}

/// `stress probe`: one registry operation (a file→pipe splice), timed from the kill.
pub(crate) fn probe_main(args: ProbeArgs) -> ExitCode {
    let f = match File::open(args.dir.join("side")) {
        Ok(f) => f,
        Err(_) => return ExitCode::from(2),
    };
    let (r, w) = splicecow_test_harness::pipe().expect("pipe");
    let mut off: libc::loff_t = 0;
    // SAFETY: off is our local.
    let n = unsafe {
        libc::splice(
            f.as_raw_fd(),
            &mut off,
            w.as_raw_fd(),
            std::ptr::null_mut(),
            4096,
            0,
        )
    };
    let waited = monotonic_ns().saturating_sub(args.kill_ns);
    drop((r, w));
    println!("{} {}", n, waited);
    ExitCode::SUCCESS
}
