//! `block`: blocking splice/sendfile/tee, drained late or interrupted by `SIGALRM`.

use super::*;

pub(crate) static SIGNALS: AtomicUsize = AtomicUsize::new(0);

pub(crate) extern "C" fn on_signal(_: c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// Installs [`on_signal`] for `sig` with `flags`.
pub(crate) fn install(sig: c_int, flags: c_int) -> Res<()> {
    // SAFETY: an all-zero sigaction is valid; we fill handler, flags and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(c_int) as usize;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(os_err("sigaction"));
        }
    }
    Ok(())
}

/// Arms a one-shot `ITIMER_REAL` (`SIGALRM`) after `after`.
pub(crate) fn alarm_after(after: Duration) -> Res<()> {
    let tv = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: after.as_secs() as libc::time_t,
            tv_usec: after.subsec_micros() as libc::suseconds_t,
        },
    };
    // SAFETY: tv is a valid itimerval; the old value is not asked for.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &tv, std::ptr::null_mut()) } != 0 {
        return Err(os_err("setitimer"));
    }
    Ok(())
}

/// Blocks every signal in the calling (helper) thread, so `SIGALRM` goes to the
/// thread making the blocking call.
pub(crate) fn block_all_signals() {
    // SAFETY: set is a valid sigset_t filled by sigfillset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// `fidelity block`.
pub(crate) fn block(op: BlockOp, case: BlockCase) -> Res<()> {
    prime()?;
    let file =
        TempFile::with_pattern("fidelity-block", FLEN).map_err(|e| Error::from(e.to_string()))?;
    let fd = open_with(file.path(), false, true)?;
    let f = fd.as_raw_fd();
    let (src_r, src_w) = pipe_with(0)?;
    let (dst_r, dst_w) = pipe_with(0)?;
    let file_op = !matches!(op, BlockOp::Tee | BlockOp::PipeSplice);
    if file_op {
        fill(dst_w.as_raw_fd())?;
    }
    match case {
        BlockCase::Drain => {}
        BlockCase::Eintr => install(libc::SIGALRM, 0)?,
        BlockCase::Restart | BlockCase::RestartOtherHandler | BlockCase::RestartSoleHandler => {
            install(libc::SIGALRM, libc::SA_RESTART)?;
            if case == BlockCase::RestartOtherHandler {
                install(libc::SIGUSR1, 0)?;
            }
            if case == BlockCase::RestartSoleHandler {
                // SAFETY: restores the default action; no handler pointer involved.
                unsafe {
                    libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                    libc::signal(libc::SIGBUS, libc::SIG_DFL);
                }
            }
        }
    }
    // Before the alarm and the helper start: a call they unblock has waited at least
    // their delay, however late this thread gets to the call on a loaded machine.
    let t0 = Instant::now();
    if case != BlockCase::Drain {
        let at = if case == BlockCase::Eintr {
            UNBLOCK_AFTER
        } else {
            UNBLOCK_AFTER / 2
        };
        alarm_after(at)?;
    }
    // The helper: after UNBLOCK_AFTER, make room in (or put data into) the pipe.
    let (dr, sw) = (dst_r.as_raw_fd(), src_w.as_raw_fd());
    let unblock = (case != BlockCase::Eintr).then(|| {
        thread::spawn(move || {
            block_all_signals();
            thread::sleep(UNBLOCK_AFTER);
            if file_op {
                let mut buf = vec![0u8; 65536];
                // SAFETY: buf is valid for 65536 bytes.
                unsafe { libc::read(dr, buf.as_mut_ptr().cast(), buf.len()) };
            } else {
                let _ = write_all_fd(sw, &pattern(BLOCK_LEN));
            }
        })
    });
    let (sr, dw) = (src_r.as_raw_fd(), dst_w.as_raw_fd());
    let mut off: loff_t = 0;
    set_errno(0);
    // SAFETY: fds are open; off is a live local.
    let ret = unsafe {
        match op {
            BlockOp::Splice => libc::splice(f, &mut off, dw, NULL_OFF, BLOCK_LEN, 0),
            BlockOp::Sendfile => libc::sendfile(dw, f, &mut off, BLOCK_LEN),
            BlockOp::Tee => libc::tee(sr, dw, BLOCK_LEN, 0),
            BlockOp::PipeSplice => libc::splice(sr, NULL_OFF, dw, NULL_OFF, BLOCK_LEN, 0),
            BlockOp::SpliceAtEof => {
                off = FLEN as loff_t;
                libc::splice(f, &mut off, dw, NULL_OFF, BLOCK_LEN, 0)
            }
            BlockOp::SendfileZeroCount => libc::sendfile(dw, f, &mut off, 0),
        }
    };
    let e = errno();
    let waited = t0.elapsed() >= MIN_WAIT;
    if let Some(h) = unblock {
        h.join().map_err(|_| "helper thread panicked")?;
    }
    // What the destination holds now must be the file/pipe bytes, after any filler.
    let mut got = vec![0u8; 2 * 65536];
    let q = queued(dr);
    let n = if q > 0 {
        // SAFETY: got is valid for its length; the pipe has q bytes, so read won't block.
        unsafe { libc::read(dr, got.as_mut_ptr().cast(), got.len()) }
    } else {
        0
    };
    let got = &got[..n.max(0) as usize];
    let data_ok = got.ends_with(&pattern(BLOCK_LEN)) || ret <= 0;
    println!(
        "{} {} ret={ret} errno={e} waited={waited} data_ok={data_ok} queued={q} signals={}",
        value_name(&op),
        value_name(&case),
        SIGNALS.load(Ordering::Relaxed)
    );
    Ok(())
}
