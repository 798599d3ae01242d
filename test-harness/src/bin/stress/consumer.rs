//! Consumers: read channels and check every byte against the logged expectation
//! (losses and repeats explained by kills are told apart from mismatches).

use super::*;

/// What a consumer knows a channel generation must deliver.
pub(crate) struct Expect {
    /// Absolute stream position of `exp[0]`.
    pub(crate) base: u64,
    /// Expected bytes from `base` on: confirmed records, then the open record's intent.
    pub(crate) exp: Vec<u8>,
    /// Length of the confirmed part of `exp`.
    pub(crate) firm: usize,
    /// An INTENT without its DONE yet: its start in `exp`.
    pub(crate) open: Option<usize>,
    /// (absolute start, kill counter when spliced) of each record.
    pub(crate) recs: VecDeque<(u64, u64, u32, u64)>,
    /// Absolute position of the next byte to arrive.
    pub(crate) cursor: u64,
    /// No gap starts before this position (the start, or where the last gap ended).
    pub(crate) floor: u64,
}

impl Expect {
    pub(crate) fn apply(&mut self, r: Rec) -> Result<(), String> {
        match r.kind {
            REC_INTENT => {
                if self.open.is_some() {
                    return Err(format!("INTENT {} while a record is open", r.seq));
                }
                self.open = Some(self.exp.len());
                self.recs
                    .push_back((self.base + self.exp.len() as u64, r.aux, r.meta, r.seq));
                self.exp.extend_from_slice(&r.payload);
            }
            REC_DONE => {
                let Some(start) = self.open.take() else {
                    return Err(format!("DONE {} without INTENT", r.seq));
                };
                let n = r.aux as usize;
                if start + n > self.exp.len() {
                    return Err(format!(
                        "DONE {} claims {n} bytes, more than its intent",
                        r.seq
                    ));
                }
                self.exp.truncate(start + n);
                self.firm = self.exp.len();
            }
            _ => {}
        }
        Ok(())
    }
    pub(crate) fn idx(&self, abs: u64) -> usize {
        (abs - self.base) as usize
    }
    /// Kill counter of the record holding absolute position `abs`.
    pub(crate) fn kills_at(&self, abs: u64) -> u64 {
        self.recs
            .iter()
            .rev()
            .find(|r| r.0 <= abs)
            .map(|r| r.1)
            .unwrap_or(0)
    }
    /// Explains the bytes `rest` received at stream position `at` (where they differ from
    /// the expected stream) as a settle-window loss.
    ///
    /// A settle drains everything the pipe holds, and nothing enters the pipe while it
    /// runs (the registry lock): after a gap `[g, g + d)` the stream resumes at the start
    /// `s = g + d` of a record. The gap may begin before `at`: the bytes verified from `g`
    /// to `at` were really those from `s` on, and passed because they are equal (zeros
    /// of holes, the file pattern), so the first differing byte can lie well past `g`.
    /// So: `rest` must be the expected stream at `at + d` (`d <= MAX_GAP`), the expected
    /// stream must repeat with period `d` from `g` to `at + d`, and the first lost byte
    /// must have been spliced before a process that mutates files was killed.
    pub(crate) fn find_loss(&self, at: u64, rest: &[u8], kills_now: u64) -> Loss {
        let exp = &self.exp;
        let i = self.idx(at);
        let lo = self
            .idx(self.floor.max(self.base))
            .max(i.saturating_sub(2 * MAX_GAP));
        let end = exp.len().min(i + MAX_GAP + rest.len());
        if rest.is_empty() || i + 1 >= end {
            return Loss::No;
        }
        // Shifts d at which `rest` is the expected stream.
        let shifts = occurrences(rest, &exp[i + 1..end]);
        if shifts.is_empty() {
            return Loss::No;
        }
        // How far back from `i` exp[x] == exp[x + d] holds, for every d: the common
        // suffix of exp[lo..i] and exp[lo..i + d], from a Z-function over both reversed.
        let hi = exp.len().min(i + MAX_GAP + 1);
        let back: Vec<u16> = exp[lo..i].iter().rev().map(|&b| b as u16).collect();
        let n = back.len();
        let mut c = back;
        c.push(256);
        c.extend(exp[lo..hi].iter().rev().map(|&b| b as u16));
        let z = z_function(&c);
        let starts: Vec<usize> = self
            .recs
            .iter()
            .filter_map(|r| r.0.checked_sub(self.base).map(|v| v as usize))
            .collect();
        let mut found: Option<(usize, usize)> = None;
        for d in shifts.into_iter().map(|q| q + 1) {
            let run = z[n + 1 + (hi - i - d)] as usize;
            // The earliest record start s in [i - run + d, i + d].
            let k = starts.partition_point(|&s| s < i - run + d);
            let Some(&s) = starts.get(k).filter(|&&s| s <= i + d) else {
                continue;
            };
            let g = s - d;
            if kills_now <= self.kills_at(self.base + g as u64) {
                continue;
            }
            match found {
                None => found = Some((d, g)),
                Some((d, g)) => return Loss::Ambiguous(d as u64, self.base + g as u64),
            }
        }
        match found {
            None => Loss::No,
            Some((d, g)) => Loss::Gap(d as u64, self.base + g as u64),
        }
    }

    /// Explains the bytes `rest` received at stream position `at` (where they differ from
    /// the expected stream) as a settle-window repeat: a settler killed between writing a
    /// chunk back and storing its progress leaves the chunk to be written again by whoever
    /// finishes the settle, so the stream repeats `d` bytes, then goes on. `rest` must be
    /// the expected stream at `at - d` (`d <= MAX_GAP`; the repeat may have begun before
    /// `at`, where the repeated bytes happened to equal the expected ones), and a process
    /// that mutates files must have been killed after the repeated bytes were spliced.
    pub(crate) fn find_repeat(&self, at: u64, rest: &[u8], kills_now: u64) -> Loss {
        let i = self.idx(at);
        let lo = i
            .saturating_sub(MAX_GAP)
            .max(self.idx(self.floor.max(self.base)));
        let end = (i + rest.len()).saturating_sub(1).min(self.exp.len());
        if rest.is_empty() || lo + rest.len() > end {
            return Loss::No;
        }
        // The latest start first: the shortest repeat.
        let mut found = occurrences(rest, &self.exp[lo..end])
            .into_iter()
            .rev()
            .map(|q| self.base + (lo + q) as u64)
            .filter(|&from| kills_now > self.kills_at(from));
        match (found.next(), found.next()) {
            (None, _) => Loss::No,
            (Some(from), None) => Loss::Gap(at - from, from),
            (Some(from), Some(_)) => Loss::Ambiguous(at - from, from),
        }
    }

    /// Drops what was verified, but for the last `2 * MAX_GAP` bytes (where a loss or a
    /// repeat found later may have begun).
    pub(crate) fn compact(&mut self) {
        let done = self
            .idx(self.cursor)
            .min(self.firm)
            .saturating_sub(2 * MAX_GAP);
        if done > (4 << 20) && self.open.is_none() {
            self.exp.drain(..done);
            self.firm -= done;
            self.base += done as u64;
            while self.recs.len() > 1 && self.recs[1].0 <= self.base {
                self.recs.pop_front();
            }
        }
    }
}

/// What [`Expect::find_loss`] or [`Expect::find_repeat`] makes of a difference.
pub(crate) enum Loss {
    /// No settle-window loss (or repeat) explains it.
    No,
    /// A loss (or repeat) of `.0` bytes from stream position `.1` on.
    Gap(u64, u64),
    /// Losses (or repeats) of different lengths explain it (periodic or zero bytes): more
    /// bytes tell; the shortest is the one given.
    Ambiguous(u64, u64),
}

/// KMP failure function of `pat`.
pub(crate) fn failure(pat: &[u8]) -> Vec<u32> {
    let mut fail = vec![0u32; pat.len()];
    let mut k = 0usize;
    for q in 1..pat.len() {
        while k > 0 && pat[q] != pat[k] {
            k = fail[k - 1] as usize;
        }
        if pat[q] == pat[k] {
            k += 1;
        }
        fail[q] = k as u32;
    }
    fail
}

/// Z-function: `z[k]` is the length of the common prefix of `v` and `v[k..]`.
pub(crate) fn z_function(v: &[u16]) -> Vec<u32> {
    let n = v.len();
    let mut z = vec![0u32; n];
    let (mut l, mut r) = (0usize, 0usize);
    for k in 1..n {
        let mut len = if k < r {
            (z[k - l] as usize).min(r - k)
        } else {
            0
        };
        while k + len < n && v[len] == v[k + len] {
            len += 1;
        }
        z[k] = len as u32;
        if k + len > r {
            (l, r) = (k, k + len);
        }
    }
    z
}

/// Every start at which `pat` occurs in `text`, overlapping ones included (KMP: linear).
pub(crate) fn occurrences(pat: &[u8], text: &[u8]) -> Vec<usize> {
    let m = pat.len();
    let fail = failure(pat);
    let mut out = Vec::new();
    let mut k = 0;
    for (q, &b) in text.iter().enumerate() {
        while k > 0 && b != pat[k] {
            k = fail[k - 1] as usize;
        }
        if b == pat[k] {
            k += 1;
        }
        if k == m {
            out.push(q + 1 - m);
            k = fail[k - 1] as usize;
        }
    }
    out
}

/// Most bytes a settle can drain at once (largest pipe) plus slack.
pub(crate) const MAX_GAP: usize = (1 << 20) + 65536;

pub(crate) struct Consumer<'c, 'a> {
    pub(crate) ctx: &'c mut Ctx<'a>,
    pub(crate) chan: usize,
    pub(crate) gen: u64,
    pub(crate) log: LogReader,
    pub(crate) e: Expect,
    /// The channel's bytes pass through a relay.
    pub(crate) relayed: bool,
}

impl Consumer<'_, '_> {
    pub(crate) fn verified(&self, n: usize) {
        self.ctx.st.add(C_BYTES_VERIFIED, n as u64);
        if self.relayed {
            self.ctx.st.add(C_RELAY_VERIFIED, n as u64);
        }
    }

    /// Counts and reports a mismatch (`msg` says where).
    pub(crate) fn mismatch_found(&mut self, msg: impl FnOnce() -> String) {
        let relayed = self.relayed;
        if relayed {
            self.ctx.st.add(C_RELAY_MISMATCHES, 1);
        }
        self.ctx.fail(C_MISMATCHES, || {
            let msg = msg();
            if relayed {
                format!("{msg} (relay channel)")
            } else {
                msg
            }
        });
    }

    pub(crate) fn refresh(&mut self) -> Result<(), String> {
        for r in self.log.poll().map_err(|e| e.to_string())? {
            self.e.apply(r)?;
        }
        Ok(())
    }

    /// Makes `exp` reach absolute position `abs` (inclusive), waiting for the producer's
    /// records; false when they never come.
    pub(crate) fn reach(&mut self, abs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Err(e) = self.refresh() {
                let (c, g) = (self.chan, self.gen);
                self.mismatch_found(|| format!("channel {c} gen {g}: bad log: {e}"));
                return false;
            }
            if self.e.idx(abs) < self.e.exp.len() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            sleep_ms(1);
        }
    }

    /// Checks `got`, the next bytes read from the pipe; returns how many were consumed
    /// (fewer when a difference needs more bytes to be judged and `eof` is false).
    pub(crate) fn verify(&mut self, got: &[u8], eof: bool) -> usize {
        let mut refreshed = false;
        let mut j = 0;
        while j < got.len() {
            // Bytes past the confirmed records are checked against the open INTENT only
            // once the log has been read after `got` was: a DONE written before these
            // bytes entered the pipe is then known (and may cut the intent short).
            if !refreshed && self.e.idx(self.e.cursor) >= self.e.firm {
                refreshed = true;
                let _ = self.refresh();
            }
            if !self.reach(self.e.cursor) {
                // More bytes than were sent: the end of the stream may repeat.
                let repeat = self
                    .e
                    .find_repeat(self.e.cursor, &got[j..], self.ctx.kills());
                if self.take_repeat(repeat) {
                    continue;
                }
                let (c, g, at, n) = (self.chan, self.gen, self.e.cursor, got.len() - j);
                self.ctx.st.add(C_MISMATCH_BYTES, n as u64);
                self.mismatch_found(|| {
                    format!("MISMATCH channel {c} gen {g}: {n} bytes at stream position {at} that no producer sent")
                });
                self.e.cursor += n as u64;
                return got.len();
            }
            let i = self.e.idx(self.e.cursor);
            let n = (self.e.exp.len() - i).min(got.len() - j);
            let diff = self.e.exp[i..i + n]
                .iter()
                .zip(&got[j..j + n])
                .position(|(a, b)| a != b);
            match diff {
                None => {
                    self.e.cursor += n as u64;
                    j += n;
                    self.verified(n);
                }
                Some(d) => {
                    self.e.cursor += d as u64;
                    j += d;
                    self.verified(d);
                    match self.mismatch(got, j, eof) {
                        Some(next) => j = next,
                        None => return j,
                    }
                }
            }
        }
        self.e.compact();
        got.len()
    }

    /// A byte differs at `got[j]`: either a settle-window loss (the next bytes of `got`
    /// match the expected stream after a gap, and a mutating process was killed after
    /// the missing bytes were spliced: the cursor skips the gap and `j` is returned) or
    /// a mismatch (the rest of `got` is counted and consumed).
    pub(crate) fn mismatch(&mut self, got: &[u8], j: usize, eof: bool) -> Option<usize> {
        if got.len() - j < 4096 && !eof {
            return None; // judge with more bytes
        }
        let _ = self.refresh();
        let rest = &got[j..];
        let i = self.e.idx(self.e.cursor);
        let kills_now = self.ctx.kills();
        let at = self.e.cursor;
        let loss = self.e.find_loss(at, rest, kills_now);
        let judge_now = eof || rest.len() >= 2 * MAX_GAP;
        if matches!(loss, Loss::Ambiguous(..)) && !judge_now {
            return None; // judge with more bytes
        }
        if matches!(loss, Loss::No) {
            let repeat = self.e.find_repeat(at, rest, kills_now);
            if matches!(repeat, Loss::Ambiguous(..)) && !judge_now {
                return None; // judge with more bytes
            }
            if self.take_repeat(repeat) {
                return Some(j);
            }
        }
        if let Loss::Gap(gap, from) | Loss::Ambiguous(gap, from) = loss {
            self.ctx.st.add(C_LOSSES, 1);
            self.ctx.st.add(C_LOSS_BYTES, gap);
            let (c, g) = (self.chan, self.gen);
            eprintln!(
                "stress: settle-window loss on channel {c} gen {g}: {gap} bytes missing at stream position {from}"
            );
            self.e.cursor = at + gap;
            self.e.floor = self.e.cursor;
            return Some(j);
        }
        // A real mismatch: count the differing bytes of this chunk position by position.
        let m = rest.len().min(self.e.exp.len() - i);
        let bad = self.e.exp[i..i + m]
            .iter()
            .zip(&rest[..m])
            .filter(|(a, b)| a != b)
            .count()
            + (rest.len() - m);
        self.ctx.st.add(C_MISMATCH_BYTES, bad as u64);
        let (c, g) = (self.chan, self.gen);
        let want = self.e.exp[i..(i + 16).min(self.e.exp.len())].to_vec();
        let have = rest[..rest.len().min(16)].to_vec();
        let rec = self.e.recs.iter().rev().find(|r| r.0 <= at).copied();
        let detail = match rec {
            Some((start, kills_then, meta, seq)) => {
                let (op, k, off) = (
                    (meta >> 28) as usize,
                    ((meta >> 24) & 0xf) as usize,
                    (meta & 0xff_ffff) as usize,
                );
                let pos = (at - start) as usize;
                let now = pread_up_to(self.ctx.data[k].as_raw_fd(), off + pos, have.len());
                format!(
                    "record {seq} ({} of f{k} at {off}, byte {pos} of it; kills then {kills_then}); the file holds {} there now",
                    OP_NAMES.get(op).copied().unwrap_or("?"),
                    if now == have { "the bytes received" } else { "other bytes" }
                )
            }
            None => "no record".to_string(),
        };
        // Where else in the expected stream do these bytes appear (a shift tells a
        // loss or a duplication from corrupted content)?
        let key = &rest[..rest.len().min(256)];
        let shift = (0..self.e.exp.len().saturating_sub(key.len()))
            .filter(|&x| self.e.exp[x..x + key.len()] == *key)
            .map(|x| x as i64 - i as i64)
            .min_by_key(|d| d.abs());
        let detail = format!(
            "{detail}; the received bytes appear in the expected stream at shift {shift:?}"
        );
        self.mismatch_found(|| {
            format!(
                "MISMATCH channel {c} gen {g} at stream position {at}: {bad} of {} bytes differ; expected {want:02x?}, got {have:02x?}; kills so far {kills_now}; {detail}",
                rest.len()
            )
        });
        self.e.cursor += rest.len() as u64;
        Some(got.len())
    }

    /// When [`Expect::find_repeat`] found a settle-window repeat at the cursor (`repeat`),
    /// counts it and moves the cursor back to where the repeated bytes began: they are
    /// verified again.
    pub(crate) fn take_repeat(&mut self, repeat: Loss) -> bool {
        let at = self.e.cursor;
        let (Loss::Gap(len, from) | Loss::Ambiguous(len, from)) = repeat else {
            return false;
        };
        self.ctx.st.add(C_REPEATS, 1);
        self.ctx.st.add(C_REPEAT_BYTES, len);
        let (c, g) = (self.chan, self.gen);
        eprintln!(
            "stress: settle-window repeat on channel {c} gen {g}: {len} bytes from stream position {from} again at {at}"
        );
        self.e.cursor = from;
        self.e.floor = from;
        true
    }

    /// End of stream: everything confirmed must have arrived.
    pub(crate) fn at_eof(&mut self) {
        let _ = self.refresh();
        let firm = self.e.base + self.e.firm as u64;
        if self.e.cursor < firm {
            let missing = firm - self.e.cursor;
            let (c, g, at) = (self.chan, self.gen, self.e.cursor);
            if self.ctx.kills() > self.e.kills_at(at) && missing as usize <= MAX_GAP {
                self.ctx.st.add(C_LOSSES, 1);
                self.ctx.st.add(C_LOSS_BYTES, missing);
                eprintln!("stress: settle-window loss on channel {c} gen {g}: last {missing} bytes missing at EOF");
            } else {
                self.ctx.st.add(C_MISMATCH_BYTES, missing);
                self.mismatch_found(|| {
                    format!("MISMATCH channel {c} gen {g}: EOF at {at}, {missing} sent bytes never arrived")
                });
            }
        }
        self.ctx.st.add(C_GENS, 1);
    }
}

pub(crate) fn consumer_thread(ctx: &mut Ctx, chan: usize) {
    let mut last_done: Option<u64> = None;
    let sink_path = ctx.dir.join(format!("sink{}", ctx.slot.idx));
    let sink = open_raw(&sink_path, libc::O_RDWR | libc::O_CREAT).expect("sink file");
    let mut buf = vec![0u8; 1 << 20];
    'gens: while !ctx.st.stopping() || last_done.is_none() {
        let g = ctx.st.gen(chan);
        if last_done.is_some_and(|d| d >= g) {
            if ctx.st.stopping() {
                break;
            }
            ctx.slot.heartbeat();
            sleep_ms(2);
            continue;
        }
        let fifo = fifo_path(&ctx.dir, chan, g);
        let logp = log_path(&ctx.dir, chan, g);
        let anon = match ctx.pipes.as_str() {
            "fifo" => false,
            "anon" => true,
            _ => ctx.rng.chance(50),
        };
        // The read end (non-blocking), and for an anonymous pipe our write end, which
        // the producer reopens through /proc and we close once it has.
        let (fd, mut offered_w) = if anon {
            let (r, w) = splicecow_test_harness::pipe().expect("pipe");
            // SAFETY: fcntl on our own fd.
            unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            (r, Some(w))
        } else {
            mkfifo(&fifo);
            match open_raw(&fifo, libc::O_RDONLY | libc::O_NONBLOCK) {
                Ok(fd) => (fd, None),
                Err(e) => {
                    ctx.fail(C_ERRORS, || format!("open fifo {}: {e}", fifo.display()));
                    sleep_ms(10);
                    continue;
                }
            }
        };
        let offer = |i: usize| ctx.st.w(W_OFFER + chan * OFFER_WORDS + i);
        offer(1).store(if anon { 2 } else { 1 }, Ordering::SeqCst);
        offer(2).store(std::process::id() as u64, Ordering::SeqCst);
        let wfd = offered_w
            .as_ref()
            .map(|w| w.as_raw_fd() as u64)
            .unwrap_or(0);
        offer(3).store(wfd, Ordering::SeqCst);
        offer(0).store(g + 1, Ordering::SeqCst);
        // Wait for the producer's START record.
        let log = loop {
            if ctx.st.gen(chan) != g || ctx.st.stopping() {
                let _ = std::fs::remove_file(&fifo);
                last_done = Some(g);
                continue 'gens;
            }
            if let Ok(f) = OpenOptions::new().read(true).write(true).open(&logp) {
                if f.metadata()
                    .map(|m| m.len() as usize >= REC_HDR)
                    .unwrap_or(false)
                {
                    break f;
                }
            }
            ctx.slot.heartbeat();
            sleep_ms(2);
        };
        offered_w = None;
        drop(offered_w);
        let relayed = ctx.st.get(W_RELAYED + chan) != 0;
        ctx.kills_word = if relayed { W_KILLS_RELAY } else { W_KILLS };
        let mut c = Consumer {
            ctx: &mut *ctx,
            chan,
            gen: g,
            log: LogReader {
                file: log,
                buf: Vec::new(),
                at: 0,
                base: 0,
            },
            e: Expect {
                base: 0,
                exp: Vec::new(),
                firm: 0,
                open: None,
                recs: VecDeque::new(),
                cursor: 0,
                floor: 0,
            },
            relayed,
        };
        let raw = fd.as_raw_fd();
        // Bytes read but not judged yet (a difference is judged on 4 KiB or at EOF).
        let mut carry: Vec<u8> = Vec::new();
        // Diagnostic: STRESS_BIG_READS=1 makes every read ask for 1 MiB (a read shorter
        // than a packet-mode buffer drops the rest of the packet).
        let big_reads = std::env::var_os("STRESS_BIG_READS").is_some();
        loop {
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 50) };
            let use_splice = c.ctx.rng.chance(30);
            let want = if big_reads {
                buf.len()
            } else {
                c.ctx.rng.range(1, buf.len())
            };
            let r = if use_splice {
                c.ctx.slot.begin(Op::ConsumeSplice);
                let mut so: libc::loff_t = 0;
                // SAFETY: so is our local; sink is our private file.
                let r = unsafe {
                    libc::splice(
                        raw,
                        std::ptr::null_mut(),
                        sink.as_raw_fd(),
                        &mut so,
                        want,
                        libc::SPLICE_F_NONBLOCK,
                    )
                };
                if r > 0 {
                    let got = pread_up_to(sink.as_raw_fd(), 0, r as usize);
                    buf[..got.len()].copy_from_slice(&got);
                    if got.len() != r as usize {
                        c.ctx.fail(C_ERRORS, || {
                            format!("sink holds {} of {r} spliced bytes", got.len())
                        });
                    }
                    c.ctx.st.add(C_SPLICE_READS, 1);
                }
                r
            } else {
                c.ctx.slot.begin(Op::ConsumeRead);
                // SAFETY: buf has `want` writable bytes.
                unsafe { libc::read(raw, buf.as_mut_ptr().cast(), want) }
            };
            c.ctx.slot.end();
            if r > 0 {
                c.ctx.st.add(C_CONSUME_OPS, 1);
                let got = &buf[..r as usize];
                if carry.is_empty() {
                    let used = c.verify(got, false);
                    carry.extend_from_slice(&got[used..]);
                } else {
                    carry.extend_from_slice(got);
                    let used = c.verify(&carry, false);
                    carry.drain(..used);
                }
            } else if r == 0 {
                c.verify(&carry, true);
                carry.clear();
                c.at_eof();
                break;
            } else if errno() != libc::EAGAIN && errno() != libc::EINTR {
                let e = io::Error::last_os_error();
                c.ctx
                    .fail(C_ERRORS, || format!("consuming channel {chan}: {e}"));
                break;
            }
        }
        drop(fd);
        let _ = std::fs::remove_file(&fifo);
        let _ = std::fs::remove_file(&logp);
        last_done = Some(g);
    }
}
