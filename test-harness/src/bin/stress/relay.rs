//! The relay worker (a domain of its own): moves channel bytes pipe to pipe.

use super::*;

/// How a relay thread forwards bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayKind {
    /// A blocking pipe→pipe `splice`.
    Splice,
    /// A blocking `tee`, then a `read` that drains what was teed from the source.
    Tee,
}

impl RelayKind {
    pub(crate) fn op(self) -> Op {
        match self {
            RelayKind::Splice => Op::RelaySplice,
            RelayKind::Tee => Op::RelayTee,
        }
    }
}

/// One blocking call of a relay thread: up to `len` bytes from pipe `src` into `dst`.
pub(crate) struct RelayJob {
    pub(crate) src: RawFd,
    pub(crate) dst: RawFd,
    pub(crate) len: usize,
}

/// The feeder's handle on a relay thread.
pub(crate) struct Relay {
    pub(crate) kind: RelayKind,
    /// The relay thread's status slot.
    pub(crate) slot: usize,
    pub(crate) jobs: mpsc::Sender<RelayJob>,
    pub(crate) results: mpsc::Receiver<io::Result<usize>>,
}

impl Relay {
    pub(crate) fn start(&self, job: RelayJob) {
        let _ = self.jobs.send(job);
    }
    /// The result of the job started last.
    pub(crate) fn result(&self) -> io::Result<usize> {
        self.results
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("relay thread gone")))
    }
    /// Waits (at most 20 ms) until the relay thread sleeps inside its call; false when it
    /// was not seen asleep.
    pub(crate) fn wait_asleep(&self, st: &Status) -> bool {
        let deadline = Instant::now() + Duration::from_millis(20);
        while Instant::now() < deadline {
            if st.slot(self.slot, S_OP_START).load(Ordering::Relaxed) != 0 {
                let tid = st.slot(self.slot, S_TID).load(Ordering::Relaxed);
                if proc_state(&format!("/proc/self/task/{tid}/stat")) == Some('S') {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        false
    }
}

/// A relay thread: one blocking call per job, as a relay process that waits for its
/// input would make it.
pub(crate) fn relay_thread(
    slot: Slot,
    kind: RelayKind,
    jobs: mpsc::Receiver<RelayJob>,
    results: mpsc::Sender<io::Result<usize>>,
) {
    for job in jobs {
        slot.begin(kind.op());
        let null = std::ptr::null_mut();
        let r = loop {
            // SAFETY: plain splice/tee between two pipes the feeder keeps open.
            let r = unsafe {
                match kind {
                    RelayKind::Splice => libc::splice(job.src, null, job.dst, null, job.len, 0),
                    RelayKind::Tee => libc::tee(job.src, job.dst, job.len, 0),
                }
            };
            if r < 0 && errno() == libc::EINTR {
                continue;
            }
            break r;
        };
        let result = if r < 0 {
            Err(io::Error::last_os_error())
        } else if kind == RelayKind::Tee && read_up_to(job.src, r as usize).len() != r as usize {
            Err(io::Error::other("drained fewer bytes than were teed"))
        } else {
            Ok(r as usize)
        };
        slot.end();
        if results.send(result).is_err() {
            break;
        }
    }
}

/// The `relay` worker: a feeder thread and one relay thread per [`RelayKind`], alone in
/// a domain of their own (so that the domain has nothing live whenever the feeder says
/// so; the main domain never rests).
pub(crate) fn relay_main(st: &Status, args: &WorkerArgs) {
    std::thread::scope(|s| {
        let relays = [RelayKind::Splice, RelayKind::Tee]
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                let (jobs, job_rx) = mpsc::channel();
                let (result_tx, results) = mpsc::channel();
                let slot = args.slot_base + 1 + i;
                s.spawn(move || relay_thread(Slot::claim(st, slot), kind, job_rx, result_tx));
                Relay {
                    kind,
                    slot,
                    jobs,
                    results,
                }
            })
            .collect::<Vec<Relay>>();
        if let Some(mut ctx) = worker_ctx(st, args, 0) {
            ctx.kills_word = W_KILLS_RELAY;
            relay_feeder(&mut ctx, [args.chans[0], args.chans[1]], &relays);
        }
        // Dropping the job senders ends the relay threads.
        drop(relays);
    });
}

/// The relay worker's producer: relay rounds (see [`relay_round`]) on channel `i` through
/// `relays[i]`, and now and then a plain mutation of its file.
pub(crate) fn relay_feeder(ctx: &mut Ctx, chans: [usize; 2], relays: &[Relay]) {
    let mut chans = chans.map(Chan::new);
    let (src_r, src_w) = splicecow_test_harness::pipe().expect("relay source pipe");
    let (buf_r, buf_w) = splicecow_test_harness::pipe().expect("relay buffer pipe");
    let src = (src_r.as_raw_fd(), src_w.as_raw_fd());
    let buf = (buf_r.as_raw_fd(), buf_w.as_raw_fd());
    while !ctx.st.stopping() {
        for ch in chans.iter_mut() {
            if ch.fd.is_none() {
                ctx.slot.begin(Op::OpenFifo);
                producer_open(ctx, ch);
                ctx.slot.end();
            }
        }
        let open: Vec<usize> = (0..2).filter(|&i| chans[i].fd.is_some()).collect();
        if open.is_empty() {
            ctx.slot.heartbeat();
            sleep_ms(2);
            continue;
        }
        if ctx.rng.chance(10) {
            ctx.mutate();
            continue;
        }
        let i = open[ctx.rng.below(open.len())];
        let buffered = ctx.rng.chance(50).then_some(buf);
        relay_round(ctx, &mut chans[i], &relays[i], src, buffered);
        std::thread::sleep(Duration::from_micros(ctx.rng.range(200, 1500) as u64));
    }
}

/// One relay round:
///
/// 1. rewrite the domain's only file from scratch (`open(O_TRUNC)`), which settles or
///    retires every segment of the domain: nothing is live any more;
/// 2. start the relay's blocking call from the empty source pipe `src` into the channel,
///    or into the private pipe `buffer` when given, and wait until it sleeps in it;
/// 3. splice a range of the file into `src` (logged like every producer's transfer): the
///    relay, already waiting, moves the page-cache bytes on;
/// 4. once they are all past the relay, overwrite part of that range of the file;
/// 5. with `buffer`, splice its bytes into the channel only now.
///
/// The consumer must read the bytes as they were at step 3 (the relay's destination has
/// to be settled at step 4). With `buffer` nobody can read them before step 4; without
/// it the consumer races with the overwrite.
pub(crate) fn relay_round(
    ctx: &mut Ctx,
    ch: &mut Chan,
    relay: &Relay,
    (src_r, src_w): (RawFd, RawFd),
    buffer: Option<(RawFd, RawFd)>,
) {
    let k = ctx.own.start;
    let len = ctx.rng.range(65536, 262144);
    ctx.mutation(k, |c, _, _| c.rewrite_truncated(k, len));
    let dst = buffer.map_or(ch.raw(), |(_, w)| w);
    relay.start(RelayJob {
        src: src_r,
        dst,
        len: 65536,
    });
    if relay.wait_asleep(ctx.st) {
        ctx.st.add(C_RELAY_WAITED, 1);
    }
    let (lock, k, off, expected) = pick_range(ctx, 65536);
    ch.meta = meta(Op::Splice, k, off);
    ch.log(REC_INTENT, ctx.kills(), &expected);
    let mut o = off as libc::loff_t;
    ctx.slot.begin(Op::Splice);
    // SAFETY: o is our local; src_w is the relay's private source pipe (empty).
    let r = unsafe {
        libc::splice(
            ctx.data[k].as_raw_fd(),
            &mut o,
            src_w,
            std::ptr::null_mut(),
            expected.len().max(1),
            0,
        )
    };
    ctx.slot.end();
    // The record is confirmed once its bytes are in the channel: what the relay held
    // when it died never arrives, and is no loss.
    let mut n = check_transfer(ctx, ch, "splice(file->relay)", r, errno(), expected.len());
    ctx.st.add(C_SPLICE_OPS, 1);
    drop(lock);
    if n == 0 {
        // Nothing moved (end of file): one logged byte wakes the relay.
        ch.confirm(ctx, 0);
        let wake = b"w";
        ch.log(REC_INTENT, ctx.kills(), wake);
        // SAFETY: one byte into our private pipe.
        let r = unsafe { libc::write(src_w, wake.as_ptr().cast(), 1) };
        n = check_transfer(ctx, ch, "write(relay wake-up)", r, errno(), 1);
    }
    let mut moved = 0;
    let mut result = relay.result();
    loop {
        match result {
            Ok(r) if r > 0 => moved += r,
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                ch.close();
                break;
            }
            Err(e) => {
                let kind = relay.kind;
                ctx.fail(C_ERRORS, || format!("relay {kind:?} into channel: {e}"));
                break;
            }
        }
        if moved >= n {
            break;
        }
        relay.start(RelayJob {
            src: src_r,
            dst,
            len: n - moved,
        });
        result = relay.result();
    }
    let mut delivered = if buffer.is_some() { 0 } else { moved };
    if moved == n {
        // The change the relayed bytes must not show.
        let at = off + ctx.rng.below(n);
        let len = ctx.rng.range(1, n.min(16384));
        ctx.mutation(k, |c, fd, size| c.pwrite_random(k, fd, size, at, len));
        if let Some((buf_r, _)) = buffer {
            delivered = forward(ctx, ch, buf_r, n);
        }
    }
    ch.confirm(ctx, delivered);
    // Whatever could not be moved on (the consumer went away) is dropped.
    for fd in [Some(src_r), buffer.map(|(r, _)| r)].into_iter().flatten() {
        let _ = read_up_to(fd, fionread(fd));
    }
    ctx.st.add(C_RELAY_ROUNDS + relay.kind as usize, 1);
    ctx.st.add(C_RELAY_BUFFERED, u64::from(buffer.is_some()));
    ctx.st.add(C_RELAY_BYTES, moved as u64);
}

/// Splices the `n` bytes of the relay's private pipe `from` into channel `ch`; returns
/// how many went in.
pub(crate) fn forward(ctx: &mut Ctx, ch: &mut Chan, from: RawFd, n: usize) -> usize {
    let mut done = 0;
    while done < n && ch.fd.is_some() {
        ctx.slot.begin(Op::RelayForward);
        // SAFETY: plain splice between two pipes.
        let r = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                ch.raw(),
                std::ptr::null_mut(),
                n - done,
                0,
            )
        };
        ctx.slot.end();
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r <= 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPIPE) {
                ch.close();
            } else {
                ctx.fail(C_ERRORS, || format!("splice(relay buffer->channel): {e}"));
            }
            return done;
        }
        done += r as usize;
    }
    done
}
