//! Issue 7: `MAP_PRIVATE` file mappings as true snapshots (`SPLICECOW_PRIVATE_SNAPSHOTS=1`).
//!
//! Differential: every case runs the `snapshot` binary without the shim (the private
//! mapping shows the change, or the reader dies of `SIGBUS` after a truncation) and with
//! the shim and the option (the mapping reads exactly the original bytes). Also: the
//! mutator in the same and in another (exec'd) process, a multi-threaded owner, the
//! owner's own writes, an owner that exits, RSS with a huge mapping, the timeout path,
//! and the shim without the option (no different from no shim). The library is taken
//! from `$SPLICECOW_LIB`, else `target/release` (see `library_path`), the CLI from
//! `$SPLICECOW_CLI`, else next to it; run `cargo build --release` first.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use splicecow_registry::env as names;
use splicecow_test_harness::{
    domain_stats, library_path, parallel, run_with_timeout, wait_with_timeout, Protection,
    TempDomain, TempFile, FILE_LEN,
};

/// How long one `snapshot` run may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Most the owner's RSS may grow by for a 16-byte change of a huge mapping (kB): a few
/// pages, or one large folio.
const RSS_SLACK_KB: u64 = 256;

/// The preloadable library, or a failure that says how to build it.
fn lib() -> PathBuf {
    library_path().unwrap_or_else(|e| panic!("{e}"))
}

/// How a `snapshot` command runs.
#[derive(Clone, Copy)]
enum Env<'a> {
    /// No shim.
    Unshimmed,
    /// The shim in `domain`, without `SPLICECOW_PRIVATE_SNAPSHOTS`.
    ShimOff(&'a TempDomain),
    /// The shim in `domain` with `SPLICECOW_PRIVATE_SNAPSHOTS=1`.
    Snapshots(&'a TempDomain),
}

/// A `snapshot` command with `args`, under `env`.
fn snapshot(args: &[&str], env: Env) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapshot"));
    cmd.args(args);
    match env {
        Env::Unshimmed => Protection::Unprotected.apply(&mut cmd),
        Env::ShimOff(d) => d.protection(&lib()).apply(&mut cmd),
        Env::Snapshots(d) => d
            .protection(&lib())
            .apply(&mut cmd)
            .env(names::PRIVATE_SNAPSHOTS, "1"),
    };
    cmd
}

/// Runs `cmd`; its JSON stdout line when it exited 0, else what happened.
fn json_of(mut cmd: Command) -> Result<Value, String> {
    let out = run_with_timeout(&mut cmd, TIMEOUT).map_err(|e| e.to_string())?;
    if out.status.map(|s| s.success()) != Some(true) {
        return Err(out.describe());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("{e}: {}", out.describe()))
}

/// Counter `key` of `domain`: a failure when `splicecow stats` does not print it.
fn stat(domain: &TempDomain, key: &str) -> Result<u64, String> {
    let s = domain_stats(domain.name())?;
    s[key]
        .as_u64()
        .ok_or_else(|| format!("`splicecow stats --json` has no `{key}`: {s}"))
}

/// Fails with every message in `failures`.
fn assert_none(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// One differential case: `diff` arguments and what the reader gets without the shim.
struct Case {
    args: Vec<&'static str>,
    unshimmed: &'static str,
}

/// Every mutation kind, with the mutator in the same and in another process.
fn cases() -> Vec<Case> {
    let kinds: [(&[&str], &str); 13] = [
        (&["--mutation", "pwrite"], "changed"),
        (&["--mutation", "write"], "changed"),
        (&["--mutation", "punch-hole"], "changed"),
        (&["--mutation", "zero-range"], "changed"),
        (&["--mutation", "collapse-range"], "sigbus"),
        (&["--mutation", "insert-range"], "changed"),
        (&["--mutation", "ftruncate"], "sigbus"),
        (&["--mutation", "truncate"], "sigbus"),
        (&["--mutation", "open-trunc"], "changed"),
        (&["--mutation", "fopen-w"], "changed"),
        (&["--mutation", "mmap-shared-store"], "changed"),
        (&["--mutation", "pwrite", "--untouched"], "changed"),
        (&["--mutation", "ftruncate", "--untouched"], "sigbus"),
    ];
    let mut v = Vec::new();
    for (args, unshimmed) in kinds {
        for who in ["same", "other"] {
            let mut a = vec!["diff", "--mutator", who];
            a.extend_from_slice(args);
            v.push(Case { args: a, unshimmed });
        }
    }
    v
}

/// Checks one case without the shim and with the option.
fn differential(c: &Case) -> Vec<String> {
    let name = c.args.join(" ");
    let mut f = Vec::new();
    match json_of(snapshot(&c.args, Env::Unshimmed)) {
        Ok(v) if v["result"] == c.unshimmed => {}
        Ok(v) => f.push(format!(
            "{name}: unshimmed: expected {}, got {v}",
            c.unshimmed
        )),
        Err(e) => f.push(format!("{name}: unshimmed: {e}")),
    }
    let domain = TempDomain::new();
    match json_of(snapshot(&c.args, Env::Snapshots(&domain))) {
        Ok(v) if v["result"] == "exact" => {}
        Ok(v) => f.push(format!("{name}: with snapshots: not a snapshot: {v}")),
        Err(e) => f.push(format!("{name}: with snapshots: {e}")),
    }
    match (
        stat(&domain, "snapshots"),
        stat(&domain, "snapshot_timeouts"),
    ) {
        (Ok(s), Ok(0)) if s >= 1 => {}
        (s, t) => f.push(format!("{name}: snapshots {s:?}, snapshot_timeouts {t:?}")),
    }
    f
}

/// Case 1: pwrite, write, punch, zero, collapse, insert, ftruncate, truncate, O_TRUNC
/// rewrite, fopen "w" rewrite and shared-mapping stores, same and other process.
#[test]
fn private_mapping_is_a_snapshot() {
    lib();
    assert_none(parallel(&cases(), 4, differential));
}

/// Case 7: with the shim but without the option, the mapping shows exactly what it
/// shows without the shim, and no private mapping is registered.
#[test]
fn option_off_is_like_no_shim() {
    lib();
    assert_none(parallel(&cases(), 4, |c| {
        let name = c.args.join(" ");
        let domain = TempDomain::new();
        let u = json_of(snapshot(&c.args, Env::Unshimmed));
        let o = json_of(snapshot(&c.args, Env::ShimOff(&domain)));
        let mut f = Vec::new();
        if u != o {
            f.push(format!(
                "{name}: unshimmed {u:?}, shim without option {o:?}"
            ));
        }
        // The domain exists when the shim touched the registry at all.
        if domain.shm_path().exists() {
            match (stat(&domain, "private_maps"), stat(&domain, "snapshots")) {
                (Ok(0), Ok(0)) => {}
                (p, s) => f.push(format!("{name}: private_maps {p:?}, snapshots {s:?}")),
            }
        }
        f
    }));
}

/// Case 2: four threads read and compare the mapping without pause while another
/// process pwrites 50 times and truncates: with the option no thread sees a change.
#[test]
fn multithreaded_owner_never_sees_a_change() {
    lib();
    let u = json_of(snapshot(&["threads"], Env::Unshimmed)).unwrap();
    assert!(
        u["changed_passes"].as_u64() > Some(0) || u["sigbus"] == true,
        "unshimmed readers saw nothing: {u}"
    );
    let domain = TempDomain::new();
    let p = json_of(snapshot(&["threads"], Env::Snapshots(&domain))).unwrap();
    assert_eq!(p["sigbus"], false, "{p}");
    assert_eq!(p["changed_passes"], 0, "a reader saw a change: {p}");
    assert_eq!(p["mutator"]["errors"], Value::Array(vec![]), "{p}");
    let passes = p["passes"].as_array().cloned().unwrap_or_default();
    assert_eq!(passes.len(), 4, "{p}");
    assert!(passes.iter().all(|n| n.as_u64() > Some(0)), "{p}");
    assert!(p["passes_after_mutator"].as_u64() > Some(0), "{p}");
    assert_eq!(stat(&domain, "snapshot_timeouts"), Ok(0));
    assert!(stat(&domain, "snapshots").unwrap() >= 1);
}

/// Case 3: the owner's `Z` at 5000 survives another process's pwrite there and a
/// truncation; every other byte is the original.
#[test]
fn owner_writes_are_kept() {
    lib();
    for who in ["other", "same"] {
        let args = [
            "diff",
            "--own-write",
            "--mutator",
            who,
            "--at",
            "5000",
            "--mutation",
            "pwrite",
            "--mutation",
            "ftruncate",
        ];
        let u = json_of(snapshot(&args, Env::Unshimmed)).unwrap();
        assert_eq!(u["result"], "sigbus", "{who}: unshimmed: {u}");
        let domain = TempDomain::new();
        let p = json_of(snapshot(&args, Env::Snapshots(&domain))).unwrap();
        assert_eq!(p["result"], "exact", "{who}: {p}");
        assert_eq!(p["z_kept"], true, "{who}: {p}");
        assert_eq!(stat(&domain, "snapshot_timeouts"), Ok(0), "{who}");
    }
}

/// A `snapshot hold` owner process; continued and killed on drop.
struct Owner {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Owner {
    /// Starts `hold --file path` with the option and waits for its `ready`.
    fn start(path: &std::path::Path, domain: &TempDomain) -> Owner {
        let mut cmd = snapshot(&["hold", "--file"], Env::Snapshots(domain));
        cmd.arg(path);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn hold");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut owner = Owner {
            child,
            stdin,
            stdout,
        };
        assert_eq!(owner.line().trim(), "ready");
        owner
    }

    /// The next line the owner prints.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read owner");
        line
    }

    /// Sends `sig` to the owner.
    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory effects; the pid is our unreaped child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The owner's JSON check of its mapping.
    fn check(&mut self) -> Value {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "check")
            .and_then(|_| stdin.flush())
            .expect("send check");
        let line = self.line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Closes stdin (the owner exits) and waits; true when it exited 0 in time.
    fn finish(&mut self) -> bool {
        self.stdin = None;
        let st = wait_with_timeout(&mut self.child, Duration::from_secs(10));
        matches!(st, Ok(Some(s)) if s.success())
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mutate --file path --mutation pwrite` with the option (plus `extra_env`);
/// returns its report and the wall time of the whole process.
fn mutate(
    path: &std::path::Path,
    domain: &TempDomain,
    extra_env: &[(&str, &str)],
) -> (Value, Duration) {
    let mut cmd = snapshot(
        &["mutate", "--mutation", "pwrite", "--file"],
        Env::Snapshots(domain),
    );
    cmd.arg(path);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    let v = json_of(cmd).unwrap();
    (v, t0.elapsed())
}

/// Case 4: the owner exits (normally, or killed): a later mutator neither waits nor
/// counts a timeout, and the registry ends with no private mapping.
#[test]
fn owner_exit_releases_the_mapping() {
    lib();
    for how in ["exit", "sigkill"] {
        let file = TempFile::with_pattern("snapexit", FILE_LEN).unwrap();
        let domain = TempDomain::new();
        let mut owner = Owner::start(file.path(), &domain);
        assert!(stat(&domain, "private_maps").unwrap() >= 1, "{how}");
        if how == "exit" {
            assert!(owner.finish(), "owner did not exit cleanly");
            // A clean exit unmaps (no fork child holds the mapping here).
            assert_eq!(stat(&domain, "private_maps"), Ok(0), "after a clean exit");
        } else {
            owner.signal(libc::SIGKILL);
            let _ = owner.child.wait();
        }
        let (rep, took) = mutate(file.path(), &domain, &[]);
        assert!(
            rep["elapsed_ms"].as_f64() < Some(200.0) && took < Duration::from_secs(5),
            "{how}: the mutator waited: {rep}, {took:?}"
        );
        assert_eq!(stat(&domain, "snapshot_timeouts"), Ok(0), "{how}");
        assert_eq!(stat(&domain, "private_maps"), Ok(0), "{how}: not reclaimed");
    }
}

/// Case 5: a 1 GiB sparse file mapped private, 64 KiB read, 16-byte pwrites from
/// another process: the owner's RSS grows by a few pages, not by the mapping.
#[test]
fn huge_mapping_copies_only_affected_pages() {
    lib();
    let u = json_of(snapshot(&["huge"], Env::Unshimmed)).unwrap();
    assert_eq!(u["check"]["result"], "changed", "{u}");
    let domain = TempDomain::new();
    let p = json_of(snapshot(&["huge"], Env::Snapshots(&domain))).unwrap();
    eprintln!("huge mapping, kB [VmRSS, RssAnon, RssFile, RssShmem, system Shmem]: {p}");
    assert_eq!(p["check"]["result"], "exact", "{p}");
    let rss = |k: &str| p[k][0].as_u64().unwrap_or(u64::MAX);
    let before = rss("before");
    assert!(before < 64 * 1024, "{p}");
    for k in ["after_touched", "after_untouched"] {
        assert!(
            rss(k) <= before + RSS_SLACK_KB,
            "{k}: RSS {} kB, before {before} kB: {p}",
            rss(k)
        );
    }
    assert_eq!(stat(&domain, "snapshot_timeouts"), Ok(0));
    assert!(stat(&domain, "snapshots").unwrap() >= 2);
}

/// Case 6: the owner is stopped: a mutator with a 200 ms timeout goes ahead after about
/// 200 ms and counts a timeout; the continued owner then sees the change.
#[test]
fn stopped_owner_times_out() {
    lib();
    let file = TempFile::with_pattern("snapstop", FILE_LEN).unwrap();
    let domain = TempDomain::new();
    let mut owner = Owner::start(file.path(), &domain);
    owner.signal(libc::SIGSTOP);
    let (rep, took) = mutate(file.path(), &domain, &[(names::SNAPSHOT_TIMEOUT_MS, "200")]);
    let ms = rep["elapsed_ms"].as_f64().unwrap_or(-1.0);
    assert!((150.0..2000.0).contains(&ms), "waited {ms} ms: {rep}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(stat(&domain, "snapshot_timeouts").unwrap() >= 1);
    owner.signal(libc::SIGCONT);
    let check = owner.check();
    assert_eq!(check["result"], "changed", "the change went ahead: {check}");
    assert_eq!(check["first_mismatch"], 100, "{check}");
    assert!(owner.finish(), "owner did not exit cleanly");
}

/// `fork` while another thread of the owner holds the shim's local mapping table (its
/// `mmap`/`munmap` hooks, or the snapshot helper thread): the child must not hang in the
/// shim's `fork` child handler (found by the timeout test: the continued owner's helper
/// was still snapshotting when `hold` forked its reader).
#[test]
fn fork_while_the_mapping_table_is_busy() {
    lib();
    let domain = TempDomain::new();
    let args = [
        "fork-race",
        "--forks",
        "1500",
        "--pwrites",
        "1500",
        "--mapper-thread",
    ];
    let v = json_of(snapshot(&args, Env::Snapshots(&domain))).unwrap();
    assert_eq!(v["hung"], Value::Array(vec![]), "{v}");
    assert_eq!(v["forks"], 1500, "{v}");
}
