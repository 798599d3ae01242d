//! End-to-end tests of detect mode, `--fail-on-conflict`, `run --stats` and `stats` with
//! the real `libsplicecow.so` and a real Python unittest suite
//! (`examples/detect-pytest/test_splice.py`) that splices files into pipes with
//! `os.splice`.
//!
//! The library is the one next to the `splicecow` binary under test, so run
//! `cargo build --release && cargo test --release -p splicecow-cli`: `cargo test` alone
//! does not build the preload cdylib.
//!
//! The suite's tests print one line each, which these tests parse:
//! `splice-example: test=NAME pid=PID path=PATH corrupted=N`.
//! `test_buggy_ftruncate` splices 64 KiB, truncates the file to 30000 bytes and then
//! reads the pipe; `test_buggy_pwrite` splices 64 KiB, pwrites 16 bytes at 4096 twice
//! and then reads the pipe; `test_clean_read_then_change` reads the pipe first.

use serde_json::Value;
use splicecow_registry::{registry_path, Registry};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_splicecow");

/// The size `test_splice.py` splices per test.
const SPLICED: u64 = 65536;

/// The library next to the binary under test; fails the test when it was not built.
fn lib() -> PathBuf {
    let lib = Path::new(BIN).parent().unwrap().join("libsplicecow.so");
    assert!(
        lib.is_file(),
        "{} is missing: run `cargo build --release` first (cargo test does not build \
         the preload library), then `cargo test --release -p splicecow-cli`",
        lib.display()
    );
    lib
}

/// The example suite.
fn suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/detect-pytest/test_splice.py")
}

/// `splicecow ARGS` with no splicecow or preload variables inherited from the test's
/// environment, and Python told not to write `__pycache__` into the example directory.
fn splicecow(args: &[&str]) -> Command {
    lib();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("LD_PRELOAD")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    for (k, _) in std::env::vars() {
        if k.starts_with("SPLICECOW_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `splicecow RUN_ARGS -- python3 test_splice.py -k SELECT`: the output and the pid of
/// the `splicecow` process.
fn run_suite(run_args: &[&str], select: &str) -> (Output, u32) {
    let suite = suite();
    let mut args = vec!["run"];
    args.extend_from_slice(run_args);
    args.extend_from_slice(&["--", "python3", suite.to_str().unwrap(), "-k", select]);
    let child = splicecow(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("splicecow runs");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("\nOK\n") || err.ends_with("\nOK"),
        "the unittest suite itself must pass (is python3 installed?): {err}"
    );
    (out, pid)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch path no other test uses.
fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "splicecow-detecttest-{}-{name}",
        std::process::id()
    ))
}

/// What one test of the suite printed.
#[derive(Debug)]
struct Seen {
    pid: u64,
    path: String,
    corrupted: u64,
}

/// The `splice-example:` lines of the suite's stdout, by test name.
fn seen(out: &str) -> BTreeMap<String, Seen> {
    let mut map = BTreeMap::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("splice-example: ") else {
            continue;
        };
        let field = |name: &str| {
            rest.split(' ')
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        map.insert(
            field("test"),
            Seen {
                pid: field("pid").parse().unwrap(),
                path: field("path"),
                corrupted: field("corrupted").parse().unwrap(),
            },
        );
    }
    map
}

/// The JSON lines of a report (every line must parse).
fn report_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// The JSON objects among the lines of `text` (stderr mixes them with other output).
fn json_objects(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// `splicecow: NAME: VALUE` counters of `run --stats`/`stats`, by name.
fn counters(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch of an RFC 3339 timestamp (`YYYY-MM-DDTHH:MM:SS[.frac]` and
/// `Z` or `±HH:MM`); `None` when `s` is not one.
fn rfc3339_secs(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (h, mi, sec) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        zone if zone.len() == 6 && matches!(zone.as_bytes()[0], b'+' | b'-') => {
            if zone.as_bytes()[3] != b':' {
                return None;
            }
            let (zh, zm) = (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?);
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            sign * (zh * 3600 + zm * 60)
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

/// Checks every documented field of one report line and returns it.
fn check_schema<'a>(v: &'a Value, domain_prefix: &str, run_pid: u32) -> &'a Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let time = v["time"].as_str().unwrap_or_else(|| panic!("time: {v}"));
    let t = rfc3339_secs(time).unwrap_or_else(|| panic!("time is not RFC 3339: {v}"));
    assert!((now - 600..=now + 5).contains(&t), "time is not now: {v}");
    let domain = v["domain"]
        .as_str()
        .unwrap_or_else(|| panic!("domain: {v}"));
    assert!(domain.starts_with(domain_prefix), "domain: {v}");
    let pid = v["pid"].as_u64().unwrap_or_else(|| panic!("pid: {v}"));
    assert_ne!(pid, u64::from(run_pid), "pid is splicecow run's: {v}");
    for exe in [&v["exe"], &v["segment"]["splicer_exe"]] {
        let name = Path::new(exe.as_str().unwrap_or_else(|| panic!("exe: {v}")))
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(name.starts_with("python3"), "exe is not python3: {v}");
        assert!(Path::new(exe.as_str().unwrap()).is_absolute(), "{v}");
    }
    assert!(v["kind"].is_string(), "kind: {v}");
    assert!(
        v["path"].as_str().is_some_and(|p| p.starts_with('/')),
        "{v}"
    );
    assert!(v["offset"].is_u64(), "offset: {v}");
    assert!(v["len"].is_u64() || v["len"].is_null(), "len: {v}");
    let seg = &v["segment"];
    for field in ["offset", "len", "pipe_ino", "splicer_pid", "age_ms"] {
        assert!(seg[field].is_u64(), "segment.{field}: {v}");
    }
    assert!(seg["pipe_ino"].as_u64().unwrap() > 0, "{v}");
    assert!(seg["age_ms"].as_u64().unwrap() < 60_000, "{v}");
    for stack in [&v["stack"], &seg["stack"]] {
        let frames = stack.as_array().unwrap_or_else(|| panic!("stack: {v}"));
        assert!(!frames.is_empty(), "empty stack: {v}");
        for f in frames {
            let in_module = f["module"].is_string() && f["offset"].is_string();
            assert!(in_module || f["pc"].is_string(), "frame {f}: {v}");
        }
    }
    let known: Vec<&str> = vec![
        "time", "domain", "pid", "exe", "kind", "path", "offset", "len", "stack", "segment",
        "count",
    ];
    for key in v.as_object().unwrap().keys() {
        assert!(known.contains(&key.as_str()), "unknown field {key}: {v}");
    }
    v
}

/// Deletes a domain's registry when dropped (also when the test fails).
struct KeptDomain(String);

impl Drop for KeptDomain {
    fn drop(&mut self) {
        let _ = Registry::unlink(&self.0);
    }
}

#[test]
fn rfc3339_checker_accepts_and_rejects() {
    assert_eq!(rfc3339_secs("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        rfc3339_secs("1970-01-02T00:00:01.5+01:00"),
        Some(86_401 - 3600)
    );
    assert_eq!(
        rfc3339_secs("2026-11-26T00:17:20.226Z"),
        Some(1_795_652_240)
    );
    assert_eq!(rfc3339_secs("2026-11-26 00:17:20Z"), None);
    assert_eq!(rfc3339_secs("2026-11-26T00:17:20"), None);
    assert_eq!(rfc3339_secs("2026-13-26T00:17:20Z"), None);
}

#[test]
fn detect_reports_each_conflict_once_with_the_documented_schema() {
    let report = scratch("schema.jsonl");
    let _ = std::fs::remove_file(&report);
    let (o, run_pid) = run_suite(
        &["--mode", "detect", "--report", report.to_str().unwrap()],
        "buggy",
    );
    let text = std::fs::read_to_string(&report);
    let _ = std::fs::remove_file(&report);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = text.expect("the report file exists");
    let seen = seen(&stdout(&o));

    // Detect mode does not protect: the wrong order reads changed bytes.
    let ftruncate = &seen["test_buggy_ftruncate"];
    let pwrite = &seen["test_buggy_pwrite"];
    assert!(ftruncate.corrupted > 0, "{seen:?}");
    assert!(pwrite.corrupted > 0, "{seen:?}");

    // One line per conflict: the second pwrite hits the already reported segment.
    let lines = report_lines(&text);
    assert_eq!(lines.len(), 2, "{text}");
    for v in &lines {
        check_schema(v, "run-", run_pid);
    }
    let by_kind = |kind: &str| -> &Value {
        let hits: Vec<&Value> = lines.iter().filter(|v| v["kind"] == kind).collect();
        assert_eq!(hits.len(), 1, "{kind}: {text}");
        hits[0]
    };
    for (v, who, off, len) in [
        (by_kind("ftruncate"), ftruncate, 30000, Value::Null),
        (by_kind("pwrite"), pwrite, 4096, Value::from(16)),
    ] {
        assert_eq!(v["path"], who.path.as_str(), "{v}");
        assert_eq!(v["pid"], who.pid, "{v}");
        assert_eq!(v["segment"]["splicer_pid"], who.pid, "{v}");
        assert_eq!(v["exe"], v["segment"]["splicer_exe"], "{v}");
        assert_eq!(v["offset"], off, "{v}");
        assert_eq!(v["len"], len, "{v}");
        assert_eq!(v["segment"]["offset"], 0, "{v}");
        assert_eq!(v["segment"]["len"], SPLICED, "{v}");
    }
    // The stacks resolve to the interpreter's C functions (by name where the interpreter
    // has debug information or a symbol table for them).
    for (kind, mutation, splice) in [
        ("ftruncate", "os_ftruncate", "os_splice"),
        ("pwrite", "os_pwrite", "os_splice"),
    ] {
        let v = by_kind(kind);
        for (stack, name) in [(&v["stack"], mutation), (&v["segment"]["stack"], splice)] {
            let frames = stack.as_array().unwrap();
            assert!(
                frames
                    .iter()
                    .any(|f| f["module"].as_str().is_some_and(|m| m.contains("python"))),
                "no frame in the interpreter: {v}"
            );
            let named: Vec<&str> = frames
                .iter()
                .filter_map(|f| f["function"].as_str().or(f["symbol"].as_str()))
                .collect();
            assert!(
                named.is_empty() || named.iter().any(|n| n.starts_with(name)),
                "{name} missing: {v}"
            );
        }
    }
    assert_eq!(lines[0]["domain"], lines[1]["domain"]);
    assert_ne!(
        lines[0]["segment"]["pipe_ino"], lines[1]["segment"]["pipe_ino"],
        "each test has its own pipe: {text}"
    );
}

#[test]
fn protect_mode_keeps_the_bytes_and_counts_the_settles() {
    let (o, _) = run_suite(&["--stats"], "buggy");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let seen = seen(&stdout(&o));
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (test, s) in &seen {
        assert_eq!(s.corrupted, 0, "{test} read corrupted bytes under protect");
    }
    let c = counters(&stderr(&o));
    assert!(c["settles"] >= 1, "{c:?}");
    assert!(c["bytes_copied"] > 0, "{c:?}");
    assert!(c["splices"] >= 2, "{c:?}");
    assert!(c["bytes_zero_copy"] >= 2 * SPLICED, "{c:?}");
    assert!(
        json_objects(&stderr(&o)).is_empty(),
        "protect mode reported"
    );
}

#[test]
fn correct_code_is_not_settled_in_protect_mode() {
    let (o, _) = run_suite(&["--stats"], "clean");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        seen(&stdout(&o))["test_clean_read_then_change"].corrupted,
        0
    );
    let c = counters(&stderr(&o));
    assert!(c["bytes_zero_copy"] > 0, "{c:?}");
    assert_eq!(
        (c["settles"], c["bytes_copied"]),
        (0, 0),
        "the pipe was read before the file changed: nothing to settle: {c:?}"
    );
}

#[test]
fn correct_code_is_not_reported_in_detect_mode() {
    let (o, _) = run_suite(&["--mode", "detect", "--fail-on-conflict"], "clean");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(!err.contains("conflict(s) detected"), "{err}");
    assert!(json_objects(&err).is_empty(), "{err}");
}

#[test]
fn fail_on_conflict_exits_66_and_names_the_file_and_the_kind() {
    // `python3 -m unittest discover` this time; reports go to stderr without --report.
    let dir = suite().parent().unwrap().to_path_buf();
    let o = splicecow(&[
        "run",
        "--mode",
        "detect",
        "--fail-on-conflict",
        "--",
        "python3",
        "-m",
        "unittest",
        "discover",
        "-s",
        dir.to_str().unwrap(),
        "-k",
        "buggy",
    ])
    .output()
    .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(66), "{err}");
    assert!(err.contains("\nOK\n"), "the suite itself passes: {err}");
    let seen = seen(&stdout(&o));
    let reports = json_objects(&err);
    assert_eq!(reports.len(), 2, "reports are copied to stderr: {err}");
    assert!(
        err.contains("\nsplicecow: 2 splice/mutation conflict(s) detected"),
        "one conflict per report line: {err}"
    );
    for (test, kind) in [
        ("test_buggy_ftruncate", "ftruncate"),
        ("test_buggy_pwrite", "pwrite"),
    ] {
        let path = &seen[test].path;
        assert!(
            err.contains(&format!("splicecow:   {path}: {kind} x1")),
            "summary does not name {path} / {kind}: {err}"
        );
        assert!(
            reports
                .iter()
                .any(|v| v["kind"] == kind && v["path"] == path.as_str()),
            "{err}"
        );
    }
}

#[test]
fn detect_mode_without_fail_on_conflict_exits_with_the_suites_status() {
    let (o, _) = run_suite(&["--mode", "detect"], "buggy");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(json_objects(&err).len(), 2, "{err}");
    assert!(!err.contains("conflict(s) detected"), "{err}");
}

#[test]
fn stats_of_a_kept_domain_shows_what_happened_and_watch_repeats() {
    let d = format!("detecttest-{}-kept", std::process::id());
    let _cleanup = KeptDomain(d.clone());
    // Create the domain with a preloaded process, so that `run` neither creates nor
    // removes it.
    let status = Command::new("true")
        .env("SPLICECOW_DOMAIN", &d)
        .env("LD_PRELOAD", lib())
        .env_remove("SPLICECOW_MODE")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        Path::new(&registry_path(&d)).exists(),
        "a preloaded process did not create its domain's registry"
    );

    let stats = || {
        let o = splicecow(&["stats", "--domain", &d, "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(v["domain"], d.as_str());
        v
    };
    let before = stats();
    assert_eq!(before["splices"], 0, "{before}");

    let (o, _) = run_suite(&["--domain", &d], "buggy");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        Path::new(&registry_path(&d)).exists(),
        "run removed a domain it did not create"
    );
    let after = stats();
    let n = |k: &str| after[k].as_u64().unwrap_or_else(|| panic!("{k}: {after}"));
    assert!(n("splices") >= 2, "{after}");
    assert!(n("bytes_zero_copy") >= 2 * SPLICED, "{after}");
    assert!(n("settles") >= 2, "two buggy tests, two settles: {after}");
    assert!(n("bytes_copied") > 0, "{after}");
    assert!(n("bytes_copied") <= 2 * SPLICED, "{after}");
    assert!(n("conflicts") >= 2, "{after}");
    assert_eq!(n("unreachable_pipes"), 0, "{after}");
    assert_eq!(n("copy_fallbacks"), 0, "{after}");

    // A detect-mode run in the named domain reports that domain.
    let report = scratch("kept.jsonl");
    let _ = std::fs::remove_file(&report);
    let (o, run_pid) = run_suite(
        &[
            "--domain",
            &d,
            "--mode",
            "detect",
            "--report",
            report.to_str().unwrap(),
        ],
        "buggy_pwrite",
    );
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = std::fs::remove_file(&report);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = report_lines(&text);
    assert_eq!(lines.len(), 1, "{text}");
    check_schema(&lines[0], &d, run_pid);
    assert_eq!(lines[0]["domain"], d.as_str(), "{text}");
    assert!(stats()["splices"].as_u64().unwrap() > n("splices"));

    // --watch 1 prints at least twice within 2.5 s.
    let mut child = splicecow(&["stats", "--domain", &d, "--watch", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut blocks = 0;
    let header = format!("domain: {d}");
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line == header => blocks += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        blocks >= 2,
        "stats --watch 1 printed {blocks} time(s) in 2.5 s"
    );
}

/// Issue 4: a program that drops the environment for a child (`env -i`) starts that
/// child outside the domain; `run` says so at exit. A plain child is not reported.
#[test]
fn a_cleared_environment_is_reported_by_run() {
    let out = splicecow(&["run", "--", "env", "-i", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 exec(s) in this domain dropped LD_PRELOAD/SPLICECOW_*"),
        "stderr: {}",
        stderr(&out)
    );
    let out = splicecow(&["run", "--", "sh", "-c", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !stderr(&out).contains("dropped"),
        "stderr: {}",
        stderr(&out)
    );
}
