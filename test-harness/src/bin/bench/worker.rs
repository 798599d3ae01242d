//! The measured processes: `bench worker KIND ...`, each printing one JSON line.

use super::*;

pub(crate) fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> Res<T> {
    args.get(i)
        .ok_or_else(|| format!("missing argument {name}"))?
        .parse()
        .map_err(|_| format!("bad argument {name}: {:?}", args[i]).into())
}

/// Dispatches `bench worker <kind> ...`; returns the JSON line to print (if any).
pub(crate) fn worker_main(args: &[String]) -> Res<Option<Value>> {
    if let Some(cpu) = std::env::var(CPU_ENV).ok().and_then(|c| c.parse().ok()) {
        pin_to_cpu(cpu)?;
    }
    let kind = args.first().map(String::as_str).unwrap_or("");
    match kind {
        "reader" => worker_reader(arg(args, 1, "bufsize")?).map(Some),
        "writer" => {
            let how: String = arg(args, 1, "how")?;
            let path: String = arg(args, 2, "file")?;
            let (chunk, passes) = (arg(args, 3, "chunk")?, arg(args, 4, "passes")?);
            worker_writer(&how, Path::new(&path), chunk, passes).map(|()| None)
        }
        "hook" => {
            let dir: String = arg(args, 3, "dir")?;
            let aged = arg(args, 4, "aged").unwrap_or(0);
            worker_hook(
                arg(args, 1, "ops")?,
                arg(args, 2, "busy")?,
                aged,
                Path::new(&dir),
            )
            .map(Some)
        }
        "close" => worker_close(arg(args, 1, "ops")?, arg(args, 2, "busy")?).map(Some),
        "calls" => {
            let how: String = arg(args, 1, "how")?;
            let dir: String = arg(args, 5, "dir")?;
            worker_calls(
                &how,
                arg(args, 2, "chunk")?,
                arg(args, 3, "iters")?,
                arg(args, 4, "threads")?,
                Path::new(&dir),
            )
            .map(Some)
        }
        "streamer" => {
            let file: String = arg(args, 1, "file")?;
            worker_streamer(Path::new(&file)).map(|()| None)
        }
        "peer" => {
            let dir: String = arg(args, 2, "dir")?;
            worker_peer(arg(args, 1, "live")?, Path::new(&dir)).map(|()| None)
        }
        "conflict" => {
            let dir: String = arg(args, 3, "dir")?;
            worker_conflict(
                arg(args, 1, "pipe_bytes")?,
                arg(args, 2, "iters")?,
                Path::new(&dir),
            )
            .map(Some)
        }
        "scale" => {
            let dir: String = arg(args, 4, "dir")?;
            worker_scale(
                arg(args, 1, "pipes")?,
                arg(args, 2, "segments")?,
                arg(args, 3, "iters")?,
                Path::new(&dir),
            )
            .map(Some)
        }
        other => Err(format!("unknown worker kind {other:?}").into()),
    }
}

/// Reads stdin (a pipe) with `read` until EOF and discards the bytes. Times from the
/// end of the first read, so the writer's start-up is not counted.
pub(crate) fn worker_reader(bufsize: usize) -> Res<Value> {
    let mut buf = vec![0u8; bufsize];
    let mut total = 0u64;
    let mut timed = 0u64;
    let mut start = None;
    loop {
        let r = read_fd(0, &mut buf);
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(os_err("read"));
        }
        if r == 0 {
            break;
        }
        total += r as u64;
        match start {
            None => start = Some(Instant::now()),
            Some(_) => timed += r as u64,
        }
    }
    let secs = start.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
    Ok(json!({ "bytes": total, "timed_bytes": timed, "secs": secs }))
}

/// Moves the whole file `passes` times to stdout (a pipe): `splice` (`how` = splice) or
/// `pread` + `write` (`how` = readwrite), `chunk` bytes per call.
pub(crate) fn worker_writer(how: &str, path: &Path, chunk: usize, passes: usize) -> Res<()> {
    let f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len() as i64;
    let fd = f.as_raw_fd();
    let mut buf = vec![0u8; if how == "readwrite" { chunk } else { 0 }];
    for _ in 0..passes {
        write_file_once(how, &f, fd, len, chunk, &mut buf)?;
    }
    Ok(())
}

/// One pass of [`worker_writer`].
pub(crate) fn write_file_once(
    how: &str,
    f: &File,
    fd: RawFd,
    len: i64,
    chunk: usize,
    buf: &mut [u8],
) -> Res<()> {
    let mut off = 0i64;
    match how {
        "splice" => {
            while off < len {
                let r = splice_at(fd, &mut off, 1, chunk, 0);
                if r < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(os_err("splice"));
                }
                if r == 0 {
                    return Err(format!("splice returned 0 at offset {off}").into());
                }
            }
        }
        "splice-nonblock" => {
            while off < len {
                let r = splice_at(fd, &mut off, 1, chunk, libc::SPLICE_F_NONBLOCK);
                if r < 0 {
                    match std::io::Error::last_os_error().raw_os_error() {
                        Some(libc::EAGAIN) => {
                            splicecow_test_harness::sys::wait_fd(1, libc::POLLOUT)
                        }
                        Some(libc::EINTR) => {}
                        _ => return Err(os_err("splice")),
                    }
                    continue;
                }
                if r == 0 {
                    return Err(format!("splice returned 0 at offset {off}").into());
                }
            }
        }
        "readwrite" => {
            while off < len {
                let n = f
                    .read_at(buf, off as u64)
                    .map_err(|e| format!("pread: {e}"))?;
                if n == 0 {
                    return Err(format!("pread returned 0 at offset {off}").into());
                }
                write_all_fd(1, &buf[..n])?;
                off += n as i64;
            }
        }
        other => return Err(format!("unknown writer {other:?}").into()),
    }
    Ok(())
}

/// Pipes (read end, write end) and files that keep segments live.
pub(crate) type Busy = (Vec<(OwnedFd, OwnedFd)>, Vec<File>);

/// Creates `pipes` pipes holding `segs` non-contiguous 4 KiB splices each from 10
/// files in `dir` (never read): live segments on files other than the measured one.
/// Returns the pipes and files, which must stay open.
pub(crate) fn make_busy(dir: &Path, pipes: usize, segs: usize) -> Res<Busy> {
    let files: Vec<File> = (0..10)
        .map(|i| create_data_file(&dir.join(format!("busy-{i}")), segs * 8 * KIB))
        .collect::<Res<_>>()?;
    let mut held = Vec::with_capacity(pipes);
    for p in 0..pipes {
        let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        let src = files[p % files.len()].as_raw_fd();
        for s in 0..segs {
            let mut off = (s * 8 * KIB) as i64;
            if splice_at(
                src,
                &mut off,
                w.as_raw_fd(),
                4 * KIB,
                libc::SPLICE_F_NONBLOCK,
            ) != (4 * KIB) as isize
            {
                return Err(os_err("busy splice"));
            }
        }
        held.push((r, w));
    }
    Ok((held, files))
}

/// Reads everything `pipes` hold (read ends made non-blocking), so that closing them
/// lets the library retire their segments. A worker whose domain goes away with
/// segments still recorded would leave their files in the user index, and every later
/// process of the user (the next rows' workers too) would take the busy path.
pub(crate) fn drain_held(pipes: &[(OwnedFd, OwnedFd)]) {
    let mut buf = vec![0u8; 64 * KIB];
    for (r, _) in pipes {
        // SAFETY: F_GETFL/F_SETFL on an open fd touch no memory of ours.
        unsafe {
            let flags = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(r.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        while read_fd(r.as_raw_fd(), &mut buf) > 0 {}
    }
}

/// Ages the domain by `n` finished pipelines the way a day-old domain saw them: 100
/// short-lived children, each splicing 4 KiB into `n / 100` pipes of its own and exiting
/// without reading them (the pipes die with it, their records stay until a sweep).
pub(crate) fn age_domain(dir: &Path, n: usize) -> Res<()> {
    let file = create_data_file(&dir.join(format!("aged-{}", std::process::id())), 64 * KIB)?;
    let per_child = n.div_ceil(100);
    for _ in 0..n.div_ceil(per_child.max(1)) {
        // SAFETY: the child only makes pipes, splices and exits; no locks are shared.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            for _ in 0..per_child {
                let mut fds = [0; 2];
                // SAFETY: fds has room for the two ends.
                unsafe { libc::pipe(fds.as_mut_ptr()) };
                let mut off = 0i64;
                splice_at(file.as_raw_fd(), &mut off, fds[1], 4 * KIB, 0);
            }
            // SAFETY: leaving the forked child at once.
            unsafe { libc::_exit(0) };
        }
        let mut st = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
    Ok(())
}

/// 64-byte `pwrite`s at offset 0 of a small file: `busy` live segments (in pipes of
/// 10 segments each) on other files first (or a domain aged by `aged` finished
/// pipelines), then `ops` timed calls after a warm-up.
pub(crate) fn worker_hook(ops: usize, busy: usize, aged: usize, dir: &Path) -> Res<Value> {
    raise_nofile(4096);
    let target = create_data_file(&dir.join(format!("hook-{}", std::process::id())), 4 * KIB)?;
    let busy_pipes = if busy > 0 {
        Some(make_busy(dir, busy.div_ceil(10), 10)?)
    } else {
        None
    };
    if aged > 0 {
        age_domain(dir, aged)?;
    }
    let live_before = live_segments_now();
    let live = live_segments_now();
    let fd = target.as_raw_fd();
    let buf = [b'h'; 64];
    for _ in 0..ops.min(20_000) {
        pwrite(fd, &buf, 0);
    }
    let t = Instant::now();
    for _ in 0..ops {
        if pwrite(fd, &buf, 0) != 64 {
            return Err(os_err("pwrite"));
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / ops as f64;
    if let Some((held, _)) = &busy_pipes {
        drain_held(held);
    }
    Ok(json!({ "ns_per_op": ns, "live_segments": live, "live_before": live_before }))
}

/// Another domain's process for the hook rows: with `live`, 4 KiB of a file of its own
/// spliced into a pipe it holds (a live segment in its domain); prints `ready`, then
/// sleeps until stdin is closed, and reads its pipe before closing it (see
/// [`drain_held`]).
pub(crate) fn worker_peer(live: bool, dir: &Path) -> Res<()> {
    let held = if live {
        let file = create_data_file(&dir.join(format!("peer-{}", std::process::id())), 64 * KIB)?;
        let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        let mut off = 0i64;
        if splice_at(
            file.as_raw_fd(),
            &mut off,
            w.as_raw_fd(),
            4 * KIB,
            libc::SPLICE_F_NONBLOCK,
        ) != (4 * KIB) as isize
        {
            return Err(os_err("peer splice"));
        }
        Some((file, [(r, w)]))
    } else {
        None
    };
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    while !matches!(std::io::stdin().read(&mut buf), Ok(0) | Err(_)) {}
    if let Some((_, pipes)) = &held {
        drain_held(pipes);
    }
    Ok(())
}

/// `close` of fds that are not tracked pipes (`dup` of stdin, then `close`): `ops`
/// timed pairs, with `busy` live segments in the domain (pipes this process holds).
pub(crate) fn worker_close(ops: usize, busy: usize) -> Res<Value> {
    raise_nofile(4096);
    let dir = std::env::temp_dir();
    let busy_pipes = if busy > 0 {
        Some(make_busy(&dir, busy.div_ceil(10), 10)?)
    } else {
        None
    };
    let live = live_segments_now();
    let t = Instant::now();
    for _ in 0..ops {
        // SAFETY: dup of an open fd and close of the fd it returned.
        let fd = unsafe { libc::dup(0) };
        // SAFETY: as above.
        if fd < 0 || unsafe { libc::close(fd) } != 0 {
            return Err(os_err("dup/close"));
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / ops as f64;
    if let Some((held, _)) = &busy_pipes {
        drain_held(held);
    }
    Ok(json!({ "ns_per_op": ns, "live_segments": live }))
}

/// Conflict latency. Each iteration: a 16-byte `pwrite` at offset 100 with nothing in
/// flight (timed), the pipe filled by `splice` from the file, the same `pwrite` (timed:
/// it must settle the pipe), a `memcpy` of the pipe's bytes (timed), then the pipe
/// drained and checked: it must hold the bytes from before the conflicting `pwrite`.
pub(crate) fn worker_conflict(pipe_bytes: usize, iters: usize, dir: &Path) -> Res<Value> {
    let path = dir.join(format!("conflict-{}", std::process::id()));
    let f = create_data_file(&path, pipe_bytes.max(MIB) * 2)?;
    let fd = f.as_raw_fd();
    let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let cap = set_pipe_size(w.as_raw_fd(), pipe_bytes)?;
    let mut drained = vec![0u8; cap];
    let src: Vec<u8> = (0..cap).map(fill_byte).collect();
    let mut dst = vec![0u8; cap];
    let (mut plain, mut conflict, mut memcpy) = (Vec::new(), Vec::new(), Vec::new());
    let mut stale_ok = 0usize;
    let mut first = 0.0;
    for i in 0..iters {
        let letter = [if i % 2 == 0 { b'A' } else { b'B' }; 16];
        let other = [if i % 2 == 0 { b'C' } else { b'D' }; 16];

        let t = Instant::now();
        let n = pwrite(fd, &other, 100);
        plain.push(t.elapsed().as_nanos() as f64);
        if n != 16 {
            return Err(os_err("plain pwrite"));
        }

        let mut off = 0i64;
        let mut filled = 0usize;
        while filled < cap {
            let n = splice_at(
                fd,
                &mut off,
                w.as_raw_fd(),
                cap - filled,
                libc::SPLICE_F_NONBLOCK,
            );
            if n <= 0 {
                break;
            }
            filled += n as usize;
        }
        if filled == 0 {
            return Err(os_err("fill splice"));
        }

        let t = Instant::now();
        let n = pwrite(fd, &letter, 100);
        let ns = t.elapsed().as_nanos() as f64;
        // The first conflict of a fresh domain also pays one-time costs (first touch
        // of the registry's pages): reported apart, not mixed into the percentiles.
        if i == 0 {
            first = ns;
        } else {
            conflict.push(ns);
        }
        if n != 16 {
            return Err(os_err("conflicting pwrite"));
        }

        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        memcpy.push(t.elapsed().as_nanos() as f64);

        read_exact_fd(r.as_raw_fd(), &mut drained[..filled])?;
        if drained[100..116] == other {
            stale_ok += 1;
        }
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(json!({
        "pipe_bytes": cap,
        "plain_ns": plain,
        "conflict_ns": conflict,
        "memcpy_ns": memcpy,
        "snapshot_kept": stale_ok,
        "first_conflict_ns": first,
        "iters": iters,
    }))
}

/// Scale: `pipes` pipes × `segs` live 1-byte segments (offsets 1 KiB apart, so nothing
/// merges) from 10 files; then timed 16-byte `pwrite`s at 10 MiB of a file with live
/// segments (a lookup that finds nothing) and timed 4 KiB splices into one more pipe
/// (a record; the pipe is drained untimed between them).
pub(crate) fn worker_scale(pipes: usize, segs: usize, iters: usize, dir: &Path) -> Res<Value> {
    let limit = raise_nofile((pipes * 2 + 64) as u64) as usize;
    let pipes = pipes.min(limit.saturating_sub(64) / 2);
    let files: Vec<File> = (0..10)
        .map(|i| {
            let f = create_data_file(&dir.join(format!("scale-{}-{i}", std::process::id())), MIB)?;
            f.set_len(11 * MIB as u64).map_err(|e| e.to_string())?;
            Ok(f)
        })
        .collect::<Res<_>>()?;
    let mut held = Vec::with_capacity(pipes);
    let pipe_size = (segs * 4 * KIB).next_power_of_two().max(64 * KIB);
    let mut short = 0usize;
    for p in 0..pipes {
        let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        set_pipe_size(w.as_raw_fd(), pipe_size)?;
        let src = files[p % files.len()].as_raw_fd();
        for s in 0..segs {
            let mut off = (s * KIB) as i64;
            if splice_at(src, &mut off, w.as_raw_fd(), 1, libc::SPLICE_F_NONBLOCK) != 1 {
                short += 1;
            }
        }
        held.push((r, w));
    }
    let live = live_segments_now();

    let target = files[0].as_raw_fd();
    let buf = [b's'; 16];
    let far = (10 * MIB) as i64;
    let mut lookup = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let n = pwrite(target, &buf, far);
        lookup.push(t.elapsed().as_nanos() as f64);
        if n != 16 {
            return Err(os_err("lookup pwrite"));
        }
    }

    let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let src = files[5].as_raw_fd();
    let mut record = Vec::with_capacity(iters);
    let mut sink = vec![0u8; 4 * KIB];
    for _ in 0..iters {
        let mut off = 0i64;
        let t = Instant::now();
        let n = splice_at(src, &mut off, w.as_raw_fd(), 4 * KIB, 0);
        record.push(t.elapsed().as_nanos() as f64);
        if n != (4 * KIB) as isize {
            return Err(os_err("record splice"));
        }
        read_exact_fd(r.as_raw_fd(), &mut sink)?;
    }
    drain_held(&held);
    drop(held);
    drop(files);
    for i in 0..10 {
        let _ = std::fs::remove_file(dir.join(format!("scale-{}-{i}", std::process::id())));
    }
    Ok(json!({
        "pipes": pipes,
        "segments_per_pipe": segs,
        "short_splices": short,
        "live_segments": live,
        "lookup_ns": median(&lookup),
        "lookup_p99_ns": percentile(&lookup, 99.0),
        "record_ns": median(&record),
        "record_p99_ns": percentile(&record, 99.0),
    }))
}

// ---------------------------------------------------------------------------------------
