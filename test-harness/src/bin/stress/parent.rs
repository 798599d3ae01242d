//! The parent: worker roles, the plan of workers, starting and killing them, and the
//! watchdog that finds hangs.

use super::*;
use splicecow_registry::env as names;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Producer,
    Consumer,
    Mutator,
    Victim,
    Relay,
    QuietVictim,
}

/// Every role, in the order of `Parent::kills`.
pub(crate) const ROLES: [Role; 6] = [
    Role::Producer,
    Role::Consumer,
    Role::Mutator,
    Role::Victim,
    Role::Relay,
    Role::QuietVictim,
];

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
            Role::Mutator => "mutator",
            Role::Victim => "victim",
            Role::Relay => "relay",
            Role::QuietVictim => "quiet-victim",
        }
    }
    /// Whether the role runs with a test pause and takes aimed kills.
    pub(crate) fn is_victim(self) -> bool {
        matches!(self, Role::Victim | Role::QuietVictim)
    }
}

/// The victim's test pause points (`SPLICECOW_TEST_PAUSE`), each inside one kind of
/// registry update (or the settle) and holding the registry lock, except `call` (a
/// recorded splice's pipe marked as in its kernel call, the lock free).
pub(crate) const PAUSE_POINTS: [&str; 6] =
    ["record", "commit", "retire", "holder", "settle", "call"];

pub(crate) struct Worker {
    pub(crate) role: Role,
    pub(crate) threads: usize,
    pub(crate) slot_base: usize,
    pub(crate) chans: Vec<usize>,
    pub(crate) child: Option<Child>,
    pub(crate) pid: u32,
    pub(crate) restarts: u64,
    pub(crate) killed: bool,
    /// The victim's current pause point (an index into [`PAUSE_POINTS`]).
    pub(crate) pause_point: Option<usize>,
}

/// The roles of a run with `n` workers (the relay worker comes on top).
pub(crate) fn plan(n: usize, faults: bool, relays: bool) -> Vec<Worker> {
    let n = n.max(8);
    let producers = (n * 3 / 8).max(3);
    let consumers = (n / 4).max(2);
    let mutators = n.saturating_sub(producers + consumers).max(2);
    let mut out = Vec::new();
    let mut slot = 0;
    let mut chan = 0;
    let mk = |role: Role, threads: usize, chans: Vec<usize>, slot: &mut usize| {
        let w = Worker {
            role,
            threads,
            slot_base: *slot,
            chans,
            child: None,
            pid: 0,
            restarts: 0,
            killed: false,
            pause_point: None,
        };
        *slot += threads;
        w
    };
    for p in 0..producers {
        let threads = if p == 0 { 2 } else { 1 };
        let chans: Vec<usize> = (chan..chan + 2 * threads).collect();
        chan += 2 * threads;
        out.push(mk(Role::Producer, threads, chans, &mut slot));
    }
    // The victim (a producer) and the relay worker own two channels each.
    let mut two_chans = || {
        chan += 2;
        vec![chan - 2, chan - 1]
    };
    let victim_chans = faults.then(&mut two_chans);
    let relay_chans = relays.then(&mut two_chans);
    let total = chan;
    let per = total.div_ceil(consumers);
    let mut next = 0;
    for _ in 0..consumers {
        let chans: Vec<usize> = (next..(next + per).min(total)).collect();
        next += chans.len();
        if !chans.is_empty() {
            out.push(mk(Role::Consumer, chans.len(), chans, &mut slot));
        }
    }
    for m in 0..mutators - usize::from(faults) {
        let threads = if m == 0 { 2 } else { 1 };
        out.push(mk(Role::Mutator, threads, Vec::new(), &mut slot));
    }
    if let Some(chans) = victim_chans {
        out.push(mk(Role::Victim, 1, chans, &mut slot));
        out.push(mk(Role::QuietVictim, 1, Vec::new(), &mut slot));
    }
    if let Some(chans) = relay_chans {
        // The feeder and one relay thread per RelayKind.
        out.push(mk(Role::Relay, 3, chans, &mut slot));
    }
    assert!(chan <= MAX_CHANS && slot <= MAX_SLOTS, "too many workers");
    out
}

pub(crate) struct Parent {
    pub(crate) args: RunArgs,
    pub(crate) dir: PathBuf,
    pub(crate) lib: PathBuf,
    pub(crate) cli: PathBuf,
    pub(crate) domain: TempDomain,
    /// The relay worker's domain (see [`relay_main`]).
    pub(crate) relay_domain: TempDomain,
    pub(crate) st: Status,
    pub(crate) seed: u64,
    pub(crate) rng: Rng,
    pub(crate) workers: Vec<Worker>,
    pub(crate) crashes: u64,
    /// The quiet victim's domain (see [`quiet_victim_main`]).
    pub(crate) quiet_domain: TempDomain,
    /// Kills by role (in the order of [`ROLES`]).
    pub(crate) kills: [u64; 6],
    /// Kills of each victim while it slept in its pause, by point ([`PAUSE_POINTS`]).
    pub(crate) paused_kills: [u64; PAUSE_POINTS.len()],
    pub(crate) quiet_paused_kills: [u64; PAUSE_POINTS.len()],
    pub(crate) takeover_probes: u64,
    pub(crate) max_takeover_ns: u64,
    pub(crate) hangs: u64,
}

impl Parent {
    pub(crate) fn spawn(&mut self, i: usize) -> io::Result<()> {
        let exe = std::env::current_exe()?;
        let w = &self.workers[i];
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--role")
            .arg(w.role.name())
            .arg("--threads")
            .arg(w.threads.to_string())
            .arg("--slot-base")
            .arg(w.slot_base.to_string())
            .arg("--seed")
            .arg(
                self.seed
                    .wrapping_add((i as u64) << 32)
                    .wrapping_add(w.restarts * 7919)
                    .to_string(),
            )
            .arg("--files")
            .arg((self.args.files + EXTRA_FILES).to_string())
            .arg("--max-size")
            .arg((self.args.file_size * 2).to_string());
        let (own_first, own_count) = match w.role {
            Role::Relay => (relay_file(self.args.files), 1),
            Role::QuietVictim => (first_quiet_file(self.args.files), PAUSE_POINTS.len()),
            _ => (0, self.args.files),
        };
        cmd.arg("--own-first")
            .arg(own_first.to_string())
            .arg("--own-count")
            .arg(own_count.to_string());
        if self.args.no_headers {
            cmd.arg("--no-headers");
        }
        if self.args.no_spawns {
            cmd.arg("--no-spawns");
        }
        cmd.arg("--pipes").arg(&self.args.pipes);
        if !w.chans.is_empty() {
            let list: Vec<String> = w.chans.iter().map(|c| c.to_string()).collect();
            cmd.arg("--chans").arg(list.join(","));
        }
        let domain = match w.role {
            Role::Relay => &self.relay_domain,
            Role::QuietVictim => &self.quiet_domain,
            _ => &self.domain,
        };
        domain.protection(&self.lib).apply(&mut cmd);
        // Each victim's incarnations take the pause points in turn.
        let pause_point = w.role.is_victim().then(|| {
            let name = &self.args.pause_points[w.restarts as usize % self.args.pause_points.len()];
            PAUSE_POINTS.iter().position(|p| p == name).unwrap_or(0)
        });
        if let Some(point) = pause_point {
            cmd.env(
                names::TEST_PAUSE,
                format!("{}:{}", PAUSE_POINTS[point], self.args.pause_us),
            );
            cmd.arg("--pause-point").arg(PAUSE_POINTS[point]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn()?;
        let w = &mut self.workers[i];
        w.pid = child.id();
        w.child = Some(child);
        w.killed = false;
        w.pause_point = pause_point;
        Ok(())
    }

    pub(crate) fn progress(&self) -> u64 {
        (0..MAX_SLOTS)
            .map(|s| self.st.slot(s, S_PROGRESS).load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn ops(&self) -> u64 {
        self.st.count(C_SPLICE_OPS) + self.st.count(C_MUT_OPS)
    }

    /// Reaps dead workers; restarts them unless stopping. Returns how many are alive.
    pub(crate) fn reap(&mut self, restart: bool) -> usize {
        let mut alive = 0;
        for i in 0..self.workers.len() {
            let Some(child) = self.workers[i].child.as_mut() else {
                continue;
            };
            match child.try_wait() {
                Ok(None) => alive += 1,
                Ok(Some(status)) => {
                    let w = &mut self.workers[i];
                    w.child = None;
                    let clean = status.success() && self.st.stopping();
                    if !w.killed && !clean {
                        self.crashes += 1;
                        eprintln!(
                            "stress: CRASH: {} worker pid {} ended with {status} without being killed (seed {})",
                            w.role.name(), w.pid, self.seed
                        );
                    }
                    // The dead worker's channels end their generation.
                    for &c in &w.chans {
                        self.st.w(W_GEN + c).fetch_add(1, Ordering::SeqCst);
                    }
                    for s in w.slot_base..w.slot_base + w.threads {
                        self.st.slot(s, S_OP_START).store(0, Ordering::Relaxed);
                    }
                    if restart && !self.st.stopping() {
                        self.workers[i].restarts += 1;
                        if let Err(e) = self.spawn(i) {
                            eprintln!("stress: cannot restart worker: {e}");
                            self.crashes += 1;
                        } else {
                            alive += 1;
                        }
                    }
                }
                Err(_) => {}
            }
        }
        alive
    }

    pub(crate) fn kill(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if w.child.is_none() || w.killed {
            return;
        }
        // The quiet victim has no channels: its kills explain no loss.
        let kills_word = match w.role {
            Role::Consumer | Role::QuietVictim => None,
            Role::Relay => Some(W_KILLS_RELAY),
            _ => Some(W_KILLS),
        };
        if let Some(word) = kills_word {
            self.st.w(word).fetch_add(1, Ordering::SeqCst);
        }
        w.killed = true;
        // SAFETY: signalling our own child (not yet reaped, so the pid is still ours).
        unsafe { libc::kill(w.pid as i32, libc::SIGKILL) };
        let idx = ROLES.iter().position(|&r| r == w.role).unwrap_or(0);
        self.kills[idx] += 1;
    }

    /// Tries to kill the victim while it sleeps in its pause (registry lock held, in the
    /// middle of a registry update or a settle).
    pub(crate) fn aimed_kill(&mut self, i: usize) {
        let pid = self.workers[i].pid as i32;
        let slot = self.workers[i].slot_base;
        let pause_ns = self.args.pause_us * 1000;
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline && self.workers[i].child.is_some() {
            let busy = self.st.slot(slot, S_OP_START).load(Ordering::Relaxed) != 0;
            if busy {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                let in_pause = wait_stopped(pid) && in_shim_pause(pid, pause_ns);
                if in_pause {
                    self.kill(i);
                    let t = monotonic_ns();
                    if let Some(point) = self.workers[i].pause_point {
                        if self.workers[i].role == Role::QuietVictim {
                            self.quiet_paused_kills[point] += 1;
                        } else {
                            self.paused_kills[point] += 1;
                        }
                    }
                    self.probe_takeover(t);
                    return;
                }
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        self.kill(i);
    }

    /// Runs a protected probe that times its first registry operation since `kill_ns`.
    pub(crate) fn probe_takeover(&mut self, kill_ns: u64) {
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(_) => return,
        };
        let mut cmd = Command::new(exe);
        cmd.arg("probe")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--kill-ns")
            .arg(kill_ns.to_string());
        self.domain.protection(&self.lib).apply(&mut cmd);
        match run_with_timeout(&mut cmd, Duration::from_secs(10)) {
            Ok(out) if out.status.is_some_and(|s| s.success()) => {
                let text = String::from_utf8_lossy(&out.stdout);
                if let Some(ns) = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    self.takeover_probes += 1;
                    self.max_takeover_ns = self.max_takeover_ns.max(ns);
                }
            }
            Ok(out) => {
                self.hangs += u64::from(out.status.is_none());
                eprintln!("stress: lock-takeover probe failed: {}", out.describe());
                self.max_takeover_ns = self.max_takeover_ns.max(10_000_000_000);
            }
            Err(e) => eprintln!("stress: probe: {e}"),
        }
    }

    /// The registry counters of `domain` (`splicecow stats --json`).
    pub(crate) fn stats(&self, domain: &TempDomain) -> Option<serde_json::Value> {
        let out = Command::new(&self.cli)
            .args(["stats", "--json", "--domain", domain.name()])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Prints who waits for what.
    pub(crate) fn dump(&self, why: &str) {
        eprintln!("stress: HANG: {why} (seed {})", self.seed);
        for w in &self.workers {
            if w.child.is_none() {
                continue;
            }
            eprintln!(
                "  {} pid {} (restarts {})",
                w.role.name(),
                w.pid,
                w.restarts
            );
            for s in w.slot_base..w.slot_base + w.threads {
                let op = self.st.slot(s, S_OP).load(Ordering::Relaxed);
                let start = self.st.slot(s, S_OP_START).load(Ordering::Relaxed);
                let secs = if start == 0 {
                    0.0
                } else {
                    (monotonic_ns().saturating_sub(start)) as f64 / 1e9
                };
                eprintln!(
                    "    thread slot {s} tid {}: last op {} ({}), file f{}, progress {}",
                    self.st.slot(s, S_TID).load(Ordering::Relaxed),
                    op_name(op),
                    if start == 0 {
                        "finished".to_string()
                    } else {
                        format!("running for {secs:.1}s")
                    },
                    self.st.slot(s, S_FILE).load(Ordering::Relaxed),
                    self.st.slot(s, S_PROGRESS).load(Ordering::Relaxed)
                );
            }
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", w.pid)) {
                for t in tasks.flatten() {
                    let p = t.path();
                    let rd = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
                    eprintln!(
                        "    task {}: wchan {} syscall {}",
                        t.file_name().to_string_lossy(),
                        rd("wchan"),
                        rd("syscall").trim()
                    );
                    for line in rd("stack").lines().take(12) {
                        eprintln!("      {line}");
                    }
                }
            }
        }
        for (what, domain) in [
            ("registry", &self.domain),
            ("relay registry", &self.relay_domain),
            ("quiet registry", &self.quiet_domain),
        ] {
            match self.stats(domain) {
                Some(v) => eprintln!("  {what}: {v}"),
                None => eprintln!("  {what}: (unreadable)"),
            }
        }
    }

    pub(crate) fn kill_all(&mut self) {
        for w in &mut self.workers {
            if let Some(c) = w.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            w.child = None;
        }
    }
}

/// The state letter of a process or task from its `stat` file (`None`: gone).
pub(crate) fn proc_state(stat_path: &str) -> Option<char> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    s.rsplit(')')
        .next()?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Waits (briefly) until `pid` is in the stopped state.
pub(crate) fn wait_stopped(pid: i32) -> bool {
    let path = format!("/proc/{pid}/stat");
    for _ in 0..200 {
        match proc_state(&path) {
            Some('T' | 't') => return true,
            None => return false,
            _ => std::thread::sleep(Duration::from_micros(50)),
        }
    }
    false
}

/// Whether a thread of the stopped process `pid` sleeps in the shim's test pause of
/// `pause_ns` (its waits for the registry lock are shorter); where the request cannot be
/// read, any `SYS_nanosleep` counts.
pub(crate) fn in_shim_pause(pid: i32, pause_ns: u64) -> bool {
    splicecow_test_harness::in_nanosleep_for(pid as u32, |ns| ns.is_none_or(|ns| ns == pause_ns))
}
