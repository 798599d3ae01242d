//! `settle`, `hold-pipe-table`, `reader` and `pump`: settles of awkward pipes.

use super::*;
use splicecow_registry::env as names;

/// A settle case ready for the mutation: the pipe the reader will read, the bytes it
/// must deliver, and every other fd to close before the reader starts.
pub(crate) struct Staged {
    pub(crate) read_end: OwnedFd,
    pub(crate) expected: Vec<u8>,
    pub(crate) others: Vec<OwnedFd>,
}

/// Stages `case` on the pattern file `path` (`len` bytes).
pub(crate) fn stage(case: SettleCase, path: &Path, len: usize) -> Res<Staged> {
    let fd = open_with(path, false, true)?;
    let f = fd.as_raw_fd();
    let data = pattern(len);
    let mut expected = Vec::new();
    let mut others = vec![fd];
    let flags = match case {
        SettleCase::Packet => libc::O_DIRECT,
        SettleCase::Nonblock => libc::O_NONBLOCK,
        _ => 0,
    };
    let (r, w) = pipe_with(flags)?;
    let wfd = w.as_raw_fd();
    let splice = |off: usize, n: usize, expected: &mut Vec<u8>| {
        expected.extend_from_slice(&data[off..off + n]);
        splice_exact(f, off, wfd, n)
    };
    let put = |bytes: &[u8], expected: &mut Vec<u8>| {
        expected.extend_from_slice(bytes);
        write_all_fd(wfd, bytes)
    };
    match case {
        SettleCase::Plain => splice(0, 48 * 1024, &mut expected)?,
        SettleCase::Exited => {
            let mut child =
                Command::new(std::env::current_exe().map_err(|e| Error::from(e.to_string()))?);
            child
                .args(["splice-out", "--len", "65536", "--file"])
                .arg(path)
                .stdout(Stdio::from(w));
            let st = child.status().map_err(|e| Error::from(e.to_string()))?;
            if !st.success() {
                return Err(format!("splice-out: {st}").into());
            }
            expected.extend_from_slice(&data[..65536]);
            return Ok(Staged {
                read_end: r,
                expected,
                others,
            });
        }
        SettleCase::Packet => {
            splice(0, 4096, &mut expected)?;
            put(b"packet-one", &mut expected)?;
            splice(8192, 8192, &mut expected)?;
            put(&[b'p'; 100], &mut expected)?;
            splice(20000, 4096, &mut expected)?;
            put(b"last", &mut expected)?;
        }
        SettleCase::Nonblock => {
            splice(0, 32768, &mut expected)?;
            put(&[b'n'; 1000], &mut expected)?;
            splice(40000, 16384, &mut expected)?;
        }
        SettleCase::Bigpipe => {
            ensure_pipe_capacity(&w, len).map_err(|e| Error::from(e.to_string()))?;
            splice(0, len, &mut expected)?;
        }
        SettleCase::Chain => {
            let (br, bw) = pipe_with(0)?;
            splice(0, 65536, &mut expected)?;
            // Move all of A into B, then leave another 16 KiB of the file in A.
            let mut moved = 0;
            while moved < 65536 {
                // SAFETY: both fds are open pipes; no offsets.
                let n = unsafe {
                    libc::splice(
                        r.as_raw_fd(),
                        NULL_OFF,
                        bw.as_raw_fd(),
                        NULL_OFF,
                        65536 - moved,
                        0,
                    )
                };
                if n <= 0 {
                    return Err(os_err("splice A -> B"));
                }
                moved += n as usize;
            }
            splice_exact(f, 65536, wfd, 16384)?;
            others.extend([r, w, bw]);
            return Ok(Staged {
                read_end: br,
                expected,
                others,
            });
        }
        SettleCase::Header => {
            splice(0, 16384, &mut expected)?;
            put(b"HEADER: 37 bytes written after splice", &mut expected)?;
            splice(16384, 16384, &mut expected)?;
            put(b"trailer-end", &mut expected)?;
        }
    }
    others.push(w);
    Ok(Staged {
        read_end: r,
        expected,
        others,
    })
}

/// pwrites 16 `B`s at offset 100 of every 4 KiB block of `path`.
pub(crate) fn mutate(path: &Path) -> Res<()> {
    let fd = open_with(path, true, true)?;
    let len = std::fs::metadata(path)
        .map_err(|e| Error::from(e.to_string()))?
        .len() as usize;
    for block in (0..len).step_by(4096) {
        let bs = [b'B'; 16];
        // SAFETY: bs is valid for 16 bytes.
        if unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                bs.as_ptr().cast(),
                16,
                (block + 100) as off_t,
            )
        } != 16
        {
            return Err(os_err("pwrite"));
        }
    }
    Ok(())
}

/// `fidelity settle`.
pub(crate) fn settle(case: SettleCase, mutated: bool, same_process: bool) -> Res<()> {
    let len = if case == SettleCase::Bigpipe {
        1 << 20
    } else {
        256 * 1024
    };
    let file =
        TempFile::with_pattern("fidelity-settle", len).map_err(|e| Error::from(e.to_string()))?;
    let staged = stage(case, file.path(), len)?;
    let pending = queued(staged.read_end.as_raw_fd());
    if mutated {
        if same_process {
            mutate(file.path())?;
        } else {
            let mut child =
                Command::new(std::env::current_exe().map_err(|e| Error::from(e.to_string()))?);
            let st = child
                .args(["mutate", "--file"])
                .arg(file.path())
                .status()
                .map_err(|e| Error::from(e.to_string()))?;
            if !st.success() {
                return Err(format!("mutate: {st}").into());
            }
        }
    }
    drop(staged.others);
    let mut reader = Command::new(std::env::current_exe().map_err(|e| Error::from(e.to_string()))?);
    strip_shim_env(reader.arg("reader"));
    let out = run_with_stdin(&mut reader, Stdio::from(staged.read_end), READER_TIMEOUT)
        .map_err(|e| Error::from(e.to_string()))?;
    if out.status.map(|s| s.success()) != Some(true) {
        return Err(format!("reader: {}", out.describe()).into());
    }
    // The sizes are the reader's last stderr line. (Since the shim restores a cleared
    // `LD_PRELOAD` on exec, the reader may be shimmed after all and warn first.)
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reads = stderr
        .lines()
        .last()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e| Error::from(format!("reader sizes {s:?}: {e}")))
        })
        .collect::<Res<Vec<usize>>>()?;
    let c = compare(&staged.expected, &out.stdout);
    let report = SettleReport {
        case: value_name(&case),
        mutated,
        expected: staged.expected.len(),
        received: out.stdout.len(),
        mismatched_bytes: c.mismatched_bytes,
        first_mismatch: c.first_mismatch,
        reads,
        pending_at_mutation: pending,
    };
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| Error::from(e.to_string()))?
    );
    Ok(())
}

/// `fidelity hold-pipe-table`.
pub(crate) fn hold_pipe_table() -> Res<()> {
    let domain = std::env::var(names::DOMAIN).map_err(|_| "SPLICECOW_DOMAIN is not set")?;
    let file =
        TempFile::with_pattern("fidelity-hold", 4096).map_err(|e| Error::from(e.to_string()))?;
    let fd = open_with(file.path(), false, true)?;
    let mut pipes = Vec::new();
    loop {
        let stats = domain_stats(&domain)?;
        let count = |name| counter(&stats, name).ok_or(format!("no {name} in {stats}"));
        let (capacity, in_use) = (count("pipe_capacity")?, count("pipes_in_use")?);
        // Both ends of every pipe.
        raise_fd_limit(2 * HOLD_MAX_FILL * capacity + 64)?;
        if in_use >= capacity {
            break;
        }
        if pipes.len() as u64 >= HOLD_MAX_FILL * capacity {
            return Err(format!(
                "{} pipes spliced into, the pipe table is still not full: {stats}",
                pipes.len()
            )
            .into());
        }
        // A new pipe lands in a free slot only if its hash is within a probe distance
        // of one: the last slots take a few rounds.
        for _ in 0..(capacity - in_use).max(32) {
            let (r, w) = pipe_with(0)?;
            // One page per pipe, so that thousands of them stay within the user's
            // pipe-buffer allowance (pipe-user-pages-soft) and other pipes keep 64 KiB.
            // SAFETY: plain fd call.
            unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
            splice_exact(fd.as_raw_fd(), 0, w.as_raw_fd(), 1)?;
            pipes.push((r, w));
        }
    }
    println!("ready {}", pipes.len());
    io::stdout()
        .flush()
        .map_err(|e| Error::from(e.to_string()))?;
    let mut rest = Vec::new();
    io::stdin()
        .read_to_end(&mut rest)
        .map_err(|e| Error::from(e.to_string()))?;
    Ok(())
}

/// `fidelity reader`.
pub(crate) fn reader() -> Res<()> {
    let mut buf = vec![0u8; READ_BUF];
    let mut sizes = Vec::new();
    let mut out = io::stdout().lock();
    loop {
        // SAFETY: buf is valid for READ_BUF bytes.
        let r = unsafe { libc::read(0, buf.as_mut_ptr().cast(), READ_BUF) };
        if r < 0 && errno() == libc::EAGAIN {
            wait_fd(0, libc::POLLIN);
            continue;
        }
        if r < 0 {
            return Err(os_err("read"));
        }
        if r == 0 {
            break;
        }
        sizes.push((r as usize).to_string());
        out.write_all(&buf[..r as usize])
            .map_err(|e| Error::from(e.to_string()))?;
    }
    out.flush().map_err(|e| Error::from(e.to_string()))?;
    eprintln!("{}", sizes.join(","));
    Ok(())
}

/// `fidelity pump` and `fidelity splice-out`: splice `len` bytes of `path` into fd 1.
pub(crate) fn splice_to_stdout(path: &Path, len: usize) -> Res<()> {
    let fd = open_with(path, false, true)?;
    splice_exact(fd.as_raw_fd(), 0, 1, len)
}

pub(crate) fn pump(len: usize) -> Res<()> {
    let file =
        TempFile::with_pattern("fidelity-pump", len).map_err(|e| Error::from(e.to_string()))?;
    splice_to_stdout(file.path(), len)
}
