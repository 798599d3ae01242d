//! Producers: splice, tee and sendfile file bytes into channels, logging each move.

use super::*;

/// A producer's end of one channel generation.
pub(crate) struct Chan {
    pub(crate) id: usize,
    pub(crate) gen: Option<u64>,
    pub(crate) fd: Option<OwnedFd>,
    /// The pause victim's second descriptor of the same pipe (see [`Chan::alternate`]).
    pub(crate) alias: Option<OwnedFd>,
    pub(crate) log: Option<File>,
    pub(crate) seq: u64,
    /// Meta word of the next INTENT.
    pub(crate) meta: u32,
}

impl Chan {
    pub(crate) fn new(id: usize) -> Chan {
        Chan {
            id,
            gen: None,
            fd: None,
            alias: None,
            log: None,
            seq: 0,
            meta: 0,
        }
    }
    pub(crate) fn close(&mut self) {
        self.fd = None;
        self.alias = None;
        self.log = None;
    }
    /// Swaps the descriptor transfers use with its duplicate (made on first use): the
    /// pipe's holder then changes at every transfer, so each one rewrites the registry's
    /// holder list.
    pub(crate) fn alternate(&mut self) {
        let Some(fd) = self.fd.as_mut() else {
            return;
        };
        if self.alias.is_none() {
            self.alias = fd.try_clone().ok();
        }
        if let Some(alias) = self.alias.as_mut() {
            std::mem::swap(fd, alias);
        }
    }
    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1)
    }
    pub(crate) fn free(&self) -> usize {
        let fd = self.raw();
        pipe_capacity(fd).saturating_sub(fionread(fd))
    }
    /// Logs the DONE record of the open INTENT: `n` of its bytes are in the pipe.
    pub(crate) fn confirm(&mut self, ctx: &Ctx, n: usize) {
        self.log(REC_DONE, n as u64, &[]);
        self.seq += 1;
        ctx.st.add(C_BYTES_SENT, n as u64);
    }
    pub(crate) fn log(&mut self, kind: u32, aux: u64, payload: &[u8]) {
        let meta = std::mem::take(&mut self.meta);
        let rec = encode(kind, self.seq, aux, meta, payload);
        if let Some(log) = &mut self.log {
            // One write(2) per record on an O_APPEND file.
            let _ = log.write_all(&rec);
        }
    }
}

/// Tries to open the channel's current generation for writing (never blocks): the
/// FIFO, or the consumer's anonymous pipe through `/proc/<pid>/fd/<n>`, as it offers.
pub(crate) fn producer_open(ctx: &mut Ctx, ch: &mut Chan) {
    let g = ctx.st.gen(ch.id);
    if ch.gen.is_some_and(|old| old >= g) {
        return;
    }
    let offer = |i: usize| ctx.st.get(W_OFFER + ch.id * OFFER_WORDS + i);
    if offer(0) != g + 1 {
        return;
    }
    let (kind, pid, wfd) = (offer(1), offer(2), offer(3));
    if offer(0) != g + 1 {
        return;
    }
    let path = if kind == 2 {
        PathBuf::from(format!("/proc/{pid}/fd/{wfd}"))
    } else {
        fifo_path(&ctx.dir, ch.id, g)
    };
    let Ok(fd) = open_raw(&path, libc::O_WRONLY | libc::O_NONBLOCK) else {
        return; // ENXIO: no reader yet; ENOENT: the consumer gave up
    };
    let raw = fd.as_raw_fd();
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is writable; fcntl on our own fd.
    unsafe {
        if libc::fstat(raw, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return;
        }
        let fl = libc::fcntl(raw, libc::F_GETFL);
        libc::fcntl(raw, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        let sizes = [65536, 65536, 262144, 1 << 20];
        libc::fcntl(raw, libc::F_SETPIPE_SZ, sizes[ctx.rng.below(4)]);
    }
    let Ok(log) = OpenOptions::new()
        .append(true)
        .create(true)
        .open(log_path(&ctx.dir, ch.id, g))
    else {
        return;
    };
    ch.fd = Some(fd);
    ch.log = Some(log);
    ch.gen = Some(g);
    ch.seq = 0;
    ch.log(REC_START, 0, &[]);
}

/// The meta word of an INTENT record (see [`Rec::meta`]).
pub(crate) fn meta(op: Op, k: usize, off: usize) -> u32 {
    ((op as u32 & 0xf) << 28) | ((k as u32 & 0xf) << 24) | (off as u32 & 0xff_ffff)
}

/// Handles the result of a call that put bytes into channel `ch`: logs DONE, checks
/// the count, closes the channel on `EPIPE` (its consumer died).
pub(crate) fn finish(ctx: &mut Ctx, ch: &mut Chan, what: &str, r: isize, max: usize) -> usize {
    let e = errno();
    let n = r.max(0) as usize;
    ch.confirm(ctx, n);
    check_transfer(ctx, ch, what, r, e, max)
}

/// Checks the result `r` (with `errno` `e`) of a call that put bytes toward channel `ch`:
/// an error is counted (`EPIPE`, its consumer died, closes the channel), and so is a
/// count above `max`. Returns the count.
pub(crate) fn check_transfer(
    ctx: &mut Ctx,
    ch: &mut Chan,
    what: &str,
    r: isize,
    e: i32,
    max: usize,
) -> usize {
    let n = r.max(0) as usize;
    if r < 0 {
        if e == libc::EPIPE {
            ch.close();
        } else if e != libc::EINTR {
            let err = io::Error::from_raw_os_error(e);
            ctx.fail(C_ERRORS, || {
                format!("{what} into channel {} failed: {err}", ch.id)
            });
        }
    } else if n > max {
        ctx.fail(C_ERRORS, || {
            format!(
                "{what} into channel {} returned {n} > {max} requested",
                ch.id
            )
        });
    }
    n
}

/// How a producer thread behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProducerStyle {
    /// `write`/`writev` headers between the transfers.
    pub(crate) headers: bool,
    /// Children started now and then (see [`spawn_child`]).
    pub(crate) spawns: bool,
    /// The pause victim: every transfer goes through the other of two descriptors of its
    /// channel (so it rewrites the pipe's holder list), a quarter of them start at the end
    /// of the file (so the intent is dropped at commit), more of its operations are
    /// mutations (settles), and it rests between operations (each pause holds the
    /// registry lock for everyone).
    pub(crate) victim: bool,
}

pub(crate) fn producer_thread(ctx: &mut Ctx, chans: [usize; 2], style: ProducerStyle) {
    let mut chans = chans.map(Chan::new);
    let (s_r, s_w) = splicecow_test_harness::pipe().expect("staging pipe");
    let (s_r, s_w) = (s_r.as_raw_fd(), s_w.as_raw_fd());
    let mut spawner = style.spawns.then(Spawner::new).flatten();
    let mutate_percent = if style.victim {
        ctx.end_of_file_percent = 25;
        30
    } else {
        12
    };
    while !ctx.st.stopping() {
        for ch in chans.iter_mut() {
            if ch.fd.is_none() {
                ctx.slot.begin(Op::OpenFifo);
                producer_open(ctx, ch);
                ctx.slot.end();
            }
        }
        if style.victim {
            // A rest outside the shim (thread::sleep is clock_nanosleep, not the
            // SYS_nanosleep of the shim's pauses).
            std::thread::sleep(Duration::from_micros(ctx.rng.range(2000, 6000) as u64));
            chans.iter_mut().for_each(Chan::alternate);
        }
        let open: Vec<usize> = (0..2).filter(|&i| chans[i].fd.is_some()).collect();
        let pick = ctx.rng.below(100);
        if pick < mutate_percent {
            ctx.mutate();
            continue;
        }
        if let Some(sp) = spawner.as_mut().filter(|_| pick == mutate_percent) {
            spawn_child(ctx, sp);
            continue;
        }
        if open.is_empty() {
            ctx.slot.heartbeat();
            sleep_ms(2);
            continue;
        }
        let ci = open[ctx.rng.below(open.len())];
        if pick < 20 && style.headers {
            header(ctx, &mut chans[ci]);
        } else if pick < 70 {
            direct(ctx, &mut chans[ci]);
        } else if pick < 85 && open.len() == 2 {
            let (a, b) = chans.split_at_mut(1);
            staged(ctx, &mut a[0], Some(&mut b[0]), s_r, s_w);
        } else {
            staged(ctx, &mut chans[ci], None, s_r, s_w);
        }
    }
}

/// A `write`/`writev` of a short header into the channel.
pub(crate) fn header(ctx: &mut Ctx, ch: &mut Chan) {
    let text = format!(
        "HDR c{} g{:?} s{} r{:x}\n",
        ch.id,
        ch.gen,
        ch.seq,
        ctx.rng.next()
    );
    let bytes = text.as_bytes();
    ch.log(REC_INTENT, ctx.kills(), bytes);
    ctx.slot.begin(Op::Header);
    let r = if ctx.rng.chance(50) {
        // SAFETY: bytes is a valid buffer.
        unsafe { libc::write(ch.raw(), bytes.as_ptr().cast(), bytes.len()) }
    } else {
        let cut = bytes.len() / 2;
        let iov = [
            libc::iovec {
                iov_base: bytes.as_ptr() as *mut _,
                iov_len: cut,
            },
            libc::iovec {
                iov_base: bytes[cut..].as_ptr() as *mut _,
                iov_len: bytes.len() - cut,
            },
        ];
        // SAFETY: both iovecs point into bytes.
        unsafe { libc::writev(ch.raw(), iov.as_ptr(), 2) }
    };
    ctx.slot.end();
    finish(ctx, ch, "write(header)", r, bytes.len());
    ctx.st.add(C_HEADERS, 1);
    ctx.st.add(C_SPLICE_OPS, 1);
}

/// Picks a file and a range for a transfer of at most `room` bytes; returns the lock,
/// the file, the offset and the bytes the file holds there (what must arrive).
pub(crate) fn pick_range(ctx: &mut Ctx, room: usize) -> (FileLock, usize, usize, Vec<u8>) {
    let k = ctx.pick_file();
    let lock = ctx.lock(k);
    let fd = ctx.data[k].as_raw_fd();
    let size = file_size(fd);
    let off = if ctx.rng.chance(ctx.end_of_file_percent) {
        size
    } else {
        ctx.rng.below(size.max(1))
    };
    let len = ctx.rng.range(1, room.clamp(1, 65536));
    let expected = pread_up_to(fd, off, len);
    ctx.check_model(k, off, &expected);
    (lock, k, off, expected)
}

/// A file→pipe `splice` or `sendfile`, with or without an offset pointer.
pub(crate) fn direct(ctx: &mut Ctx, ch: &mut Chan) {
    let room = ch.free();
    if room == 0 {
        ctx.slot.heartbeat();
        std::thread::yield_now();
        return;
    }
    let (_lock, k, off, expected) = pick_range(ctx, room);
    let fd = ctx.data[k].as_raw_fd();
    let len = expected.len().max(1);
    let how = ctx.rng.below(4);
    let op = [
        Op::Splice,
        Op::SpliceCursor,
        Op::Sendfile,
        Op::SendfileCursor,
    ][how];
    ch.meta = meta(op, k, off);
    ch.log(REC_INTENT, ctx.kills(), &expected);
    let mut o = off as libc::loff_t;
    ctx.slot.begin(op);
    let null = std::ptr::null_mut();
    // SAFETY: offsets point to our local; the kernel checks the fds.
    let r = unsafe {
        match how {
            0 => libc::splice(fd, &mut o, ch.raw(), null, len, 0),
            1 => {
                libc::lseek(fd, off as libc::off_t, libc::SEEK_SET);
                libc::splice(fd, null, ch.raw(), null, len, 0)
            }
            2 => libc::sendfile(ch.raw(), fd, &mut o, len),
            _ => {
                libc::lseek(fd, off as libc::off_t, libc::SEEK_SET);
                libc::sendfile64(ch.raw(), fd, null, len)
            }
        }
    };
    ctx.slot.end();
    let n = finish(ctx, ch, OP_NAMES[op as usize], r, expected.len());
    if r >= 0 {
        let pos = if how.is_multiple_of(2) {
            o as i64
        } else {
            // SAFETY: lseek on our fd.
            unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
        };
        if pos != (off + n) as i64 {
            ctx.fail(C_ERRORS, || {
                format!(
                    "{}: offset {pos} after moving {n} bytes from {off}",
                    OP_NAMES[op as usize]
                )
            });
        }
    }
    ctx.st
        .add(if how >= 2 { C_SENDFILES } else { C_SPLICE_OPS }, 1);
    if how >= 2 {
        ctx.st.add(C_SPLICE_OPS, 1);
    }
}

/// File → private staging pipe, then `tee` into `b` (if any) and pipe→pipe `splice`
/// into `a`. The staging pipe is empty before and after.
pub(crate) fn staged(ctx: &mut Ctx, a: &mut Chan, b: Option<&mut Chan>, s_r: RawFd, s_w: RawFd) {
    let room = a
        .free()
        .min(b.as_ref().map(|b| b.free()).unwrap_or(usize::MAX));
    if room == 0 {
        ctx.slot.heartbeat();
        std::thread::yield_now();
        return;
    }
    let (_lock, k, off, expected) = pick_range(ctx, room);
    let fd = ctx.data[k].as_raw_fd();
    let mut o = off as libc::loff_t;
    ctx.slot.begin(Op::Splice);
    // SAFETY: o is our local; s_w is our staging pipe.
    let n = unsafe {
        libc::splice(
            fd,
            &mut o,
            s_w,
            std::ptr::null_mut(),
            expected.len().max(1),
            0,
        )
    };
    ctx.slot.end();
    if n < 0 {
        let e = io::Error::last_os_error();
        ctx.fail(C_ERRORS, || format!("splice(file->staging) failed: {e}"));
        return;
    }
    let n = n as usize;
    if n > expected.len() {
        ctx.fail(C_ERRORS, || {
            format!("splice(file->staging) returned {n} > {}", expected.len())
        });
    }
    let staged = &expected[..n.min(expected.len())];
    if let Some(b) = b {
        b.meta = meta(Op::Tee, k, off);
        b.log(REC_INTENT, ctx.kills(), staged);
        ctx.slot.begin(Op::Tee);
        // SAFETY: plain tee between two pipes.
        let r = unsafe { libc::tee(s_r, b.raw(), n, 0) };
        ctx.slot.end();
        finish(ctx, b, "tee", r, n);
        ctx.st.add(C_TEES, 1);
    }
    // One record per call: a settle may come between two calls.
    let mut moved = 0;
    while moved < n && a.fd.is_some() {
        a.meta = meta(Op::PipeToPipe, k, off + moved);
        a.log(REC_INTENT, ctx.kills(), &staged[moved..]);
        ctx.slot.begin(Op::PipeToPipe);
        // SAFETY: plain splice between two pipes.
        let r = unsafe {
            libc::splice(
                s_r,
                std::ptr::null_mut(),
                a.raw(),
                std::ptr::null_mut(),
                n - moved,
                0,
            )
        };
        ctx.slot.end();
        finish(ctx, a, "splice(pipe->pipe)", r, n - moved);
        if r <= 0 {
            break;
        }
        moved += r as usize;
    }
    // Whatever could not be moved (consumer gone) is dropped from the staging pipe.
    let mut sink = vec![0u8; 65536];
    while fionread(s_r) > 0 {
        // SAFETY: sink is writable.
        if unsafe { libc::read(s_r, sink.as_mut_ptr().cast(), sink.len()) } <= 0 {
            break;
        }
    }
    ctx.st.add(C_PIPE2PIPE, 1);
    ctx.st.add(C_SPLICE_OPS, 1);
}
