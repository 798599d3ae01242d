//! End-to-end tests of the `splicecow` binary: real processes, outputs parsed.
//!
//! None of these needs a working `libsplicecow.so`: the protected side of the demo is
//! tested with the library by the test harness.

use splicecow_registry::{registry_path, Registry};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_splicecow");

/// `splicecow ARGS` with no splicecow variables inherited from the test's environment.
fn splicecow(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).env_remove("LD_PRELOAD");
    for (k, _) in std::env::vars() {
        if k.starts_with("SPLICECOW_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn output(args: &[&str]) -> Output {
    splicecow(args).output().expect("splicecow runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A domain name no other test uses.
fn domain(name: &str) -> String {
    format!("clitest-{}-{name}", std::process::id())
}

/// A path for a scratch file no other test uses.
fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("splicecow-clitest-{}-{name}", std::process::id()))
}

fn wait_for(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn run_exits_with_the_commands_status() {
    let o = output(&["run", "--", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let o = output(&["run", "true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn run_reports_a_signal_as_128_plus_n() {
    let o = output(&["run", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.code(), Some(128 + 9), "{}", stderr(&o));
}

#[test]
fn run_of_a_missing_or_unexecutable_command_fails_like_a_shell() {
    let o = output(&["run", "--", "splicecow-no-such-command-here"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(
        stderr(&o).contains("splicecow: cannot run splicecow-no-such-command-here:"),
        "{}",
        stderr(&o)
    );
    let file = scratch("not-executable");
    std::fs::write(&file, "data").unwrap();
    let o = output(&["run", "--", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
}

#[test]
fn run_passes_domain_mode_and_preload() {
    let o = output(&[
        "run",
        "--mode",
        "copy",
        "--",
        "sh",
        "-c",
        "echo \"$SPLICECOW_DOMAIN|$SPLICECOW_MODE|$LD_PRELOAD\"",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let fields: Vec<&str> = out.trim().split('|').collect();
    let lib = Path::new(BIN).parent().unwrap().join("libsplicecow.so");
    assert!(fields[0].starts_with("run-"), "{out}");
    assert_eq!(fields[1], "copy");
    assert!(
        fields[2].split([':', ' ']).any(|e| Path::new(e) == lib),
        "{out}"
    );
}

#[test]
fn run_keeps_an_existing_preload_and_honours_splicecow_lib() {
    let o = splicecow(&["run", "--", "sh", "-c", "echo \"$LD_PRELOAD\""])
        .env("LD_PRELOAD", "/nonexistent/other.so")
        .env("SPLICECOW_LIB", "/nonexistent/libsplicecow.so")
        .output()
        .unwrap();
    assert_eq!(
        stdout(&o).trim(),
        "/nonexistent/other.so:/nonexistent/libsplicecow.so"
    );
}

#[test]
fn run_removes_the_registry_it_created() {
    let d = domain("removed");
    let reg = registry_path(&d);
    let o = output(&["run", "--domain", &d, "--", "test", "-f", &reg]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "registry missing during run: {}",
        stderr(&o)
    );
    assert!(!Path::new(&reg).exists(), "registry left behind");
}

#[test]
fn run_leaves_a_pre_existing_registry_alone() {
    let d = domain("kept");
    let reg = Registry::open_or_create(&d).unwrap();
    let o = output(&["run", "--domain", &d, "--", "true"]);
    assert!(o.status.success());
    let still_there = Path::new(&registry_path(&d)).exists();
    drop(reg);
    Registry::unlink(&d).unwrap();
    assert!(still_there, "run removed a registry it did not create");
}

#[test]
fn run_waits_for_orphaned_descendants_before_removing_the_registry() {
    let d = domain("orphans");
    let reg = registry_path(&d);
    let mark = scratch("orphan-mark");
    let _ = std::fs::remove_file(&mark);
    let script = format!(
        "(sleep 1; test -f {reg} && echo present > {m}) & exit 4",
        m = mark.display()
    );
    let start = Instant::now();
    let status = splicecow(&["run", "--domain", &d, "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let elapsed = start.elapsed();
    let seen = std::fs::read_to_string(&mark);
    let _ = std::fs::remove_file(&mark);
    assert_eq!(status.code(), Some(4));
    assert!(
        elapsed >= Duration::from_millis(900),
        "run returned after {elapsed:?}"
    );
    assert_eq!(
        seen.unwrap().trim(),
        "present",
        "registry gone before the orphan"
    );
    assert!(!Path::new(&reg).exists(), "registry left behind");
}

#[test]
fn run_forwards_sigterm_to_the_command() {
    let ready = scratch("term-ready");
    let _ = std::fs::remove_file(&ready);
    let script = format!(
        "trap 'exit 42' TERM; touch {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut child = splicecow(&["run", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&ready, Duration::from_secs(10));
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let _ = std::fs::remove_file(&ready);
    assert_eq!(status.code(), Some(42), "the trap did not run");
}

#[test]
fn stats_json_inside_a_run_reads_the_runs_domain() {
    let o = output(&["run", "--", BIN, "stats", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(v["domain"].as_str().unwrap().starts_with("run-"), "{v}");
    for field in [
        "splices",
        "bytes_zero_copy",
        "settles",
        "bytes_copied",
        "copy_fallbacks",
        "bytes_copy_path",
        "unreachable_pipes",
        "conflicts",
        "lock_takeovers",
        "live_segments",
        "shared_writable_maps",
        "pipes_in_use",
        "files_in_use",
        "pipe_capacity",
        "file_capacity",
        "map_capacity",
        "busy_pipes",
        "kernel_copies_on_splice",
    ] {
        assert!(v[field].is_u64(), "{field} missing in {v}");
    }
    // This kernel hands pipes page-cache pages (the scenario tests show the hazard).
    assert_eq!(v["kernel_copies_on_splice"], 0, "{v}");
    assert!(v["pipe_capacity"].as_u64().unwrap() > 0);
    assert!(v["registry_fill"].is_f64(), "{v}");
}

#[test]
fn stats_prints_name_value_lines_and_run_stats_prints_them_at_exit() {
    let d = domain("stats");
    let reg = Registry::open_or_create(&d).unwrap();
    let o = output(&["stats", "--domain", &d]);
    drop(reg);
    Registry::unlink(&d).unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("domain: {d}\n")), "{out}");
    assert!(out.contains("\nsplices: 0\n"), "{out}");
    assert!(out.contains("\nregistry_fill: "), "{out}");

    let o = output(&["run", "--stats", "--", "true"]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("\nbytes_copied: "), "{}", stderr(&o));
}

/// The `splicecow:` lines of `o`'s stderr.
fn splicecow_lines(o: &Output) -> Vec<String> {
    let err = stderr(o);
    err.lines()
        .filter(|l| l.starts_with("splicecow:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn run_sizes_the_registry_it_creates() {
    let o = output(&["run", "--registry-pipes", "32", "--stats", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    for line in [
        "\npipe_capacity: 32\n",
        "\nfile_capacity: 64\n",
        "\nmap_capacity: 64\n",
    ] {
        assert!(err.contains(line), "{line:?} missing: {err}");
    }
    let mut cmd = splicecow(&["run", "--stats", "--", "true"]);
    let o = cmd.env("SPLICECOW_REGISTRY_PIPES", "100").output().unwrap();
    assert!(
        stderr(&o).contains("\npipe_capacity: 100\n"),
        "{}",
        stderr(&o)
    );
    // Out of range on the command line: a usage error.
    let o = output(&["run", "--registry-pipes", "15", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A domain that exists keeps its size.
    let d = domain("sized");
    let reg = Registry::open_or_create(&d).unwrap();
    let o = output(&[
        "run",
        "--domain",
        &d,
        "--registry-pipes",
        "64",
        "--stats",
        "--",
        "true",
    ]);
    drop(reg);
    Registry::unlink(&d).unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("\npipe_capacity: 2048\n"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        splicecow_lines(&o),
        [format!(
            "splicecow: domain {d} exists with 2048 pipe records; --registry-pipes 64 does not resize it"
        )]
    );
}

#[test]
fn a_bad_registry_size_gives_one_line_and_the_default() {
    for bad in ["banana", "0", "-5", "99999999999", "1048577"] {
        let mut cmd = splicecow(&["run", "--stats", "--", "sh", "-c", "echo ran"]);
        let o = cmd.env("SPLICECOW_REGISTRY_PIPES", bad).output().unwrap();
        assert!(o.status.success(), "{bad}: {}", stderr(&o));
        assert_eq!(stdout(&o), "ran\n", "{bad}");
        assert_eq!(
            splicecow_lines(&o),
            [format!(
                "splicecow: SPLICECOW_REGISTRY_PIPES={bad:?} is not a whole number from 16 \
                 to 1048576; using 2048"
            )],
            "{bad}: {}",
            stderr(&o)
        );
        assert!(stderr(&o).contains("\npipe_capacity: 2048\n"), "{bad}");
    }
    let mut cmd = splicecow(&["doctor"]);
    let o = cmd.env("SPLICECOW_REGISTRY_PIPES", "0").output().unwrap();
    assert!(
        stdout(&o).contains("✗ SPLICECOW_REGISTRY_PIPES=\"0\" is not a whole number"),
        "{}",
        stdout(&o)
    );
    let o = output(&["doctor"]);
    assert!(
        stdout(&o).contains(
            "✓ a new domain's registry holds 2048 pipes (64 segments each), 4096 files and \
             1024 mapping records: 9074944 bytes of sparse /dev/shm"
        ),
        "{}",
        stdout(&o)
    );
}

#[test]
fn stats_watch_repeats() {
    let d = domain("watch");
    let reg = Registry::open_or_create(&d).unwrap();
    let mut child = splicecow(&["stats", "--domain", &d, "--json", "--watch", "0.05"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["domain"], d.as_str());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(reg);
    Registry::unlink(&d).unwrap();
}

#[test]
fn stats_of_a_missing_domain_fails() {
    let d = domain("never-ran");
    let o = output(&["stats", "--domain", &d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!(
            "no registry for domain {d} (nothing has run in it)"
        )),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_invalid_domain_is_a_usage_error() {
    let o = output(&["run", "--domain", "a/b", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
}

/// A command that appends one conflict report, as the library would in detect mode.
const FAKE_CONFLICT: &str = r#"echo '{"kind":"punch_hole","path":"/data/q.log","offset":0,"len":4096}' >> "$SPLICECOW_REPORT""#;

#[test]
fn fail_on_conflict_exits_66_with_a_summary() {
    let o = output(&[
        "run",
        "--mode",
        "detect",
        "--fail-on-conflict",
        "--",
        "sh",
        "-c",
        FAKE_CONFLICT,
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(66), "{err}");
    assert!(
        err.contains("splicecow: 1 splice/mutation conflict(s) detected"),
        "{err}"
    );
    assert!(err.contains("/data/q.log: punch_hole x1"), "{err}");
    assert!(
        err.contains(r#""kind":"punch_hole""#),
        "report not copied: {err}"
    );

    // The command's own failure wins.
    let failing = format!("{FAKE_CONFLICT}; exit 5");
    let o = output(&[
        "run",
        "--mode",
        "detect",
        "--fail-on-conflict",
        "--",
        "sh",
        "-c",
        &failing,
    ]);
    assert_eq!(o.status.code(), Some(5));

    // No conflict: success.
    let o = output(&[
        "run",
        "--mode",
        "detect",
        "--fail-on-conflict",
        "--",
        "true",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn an_explicit_report_file_is_used_and_kept() {
    let report = scratch("report.jsonl");
    let _ = std::fs::remove_file(&report);
    let o = output(&[
        "run",
        "--mode",
        "detect",
        "--fail-on-conflict",
        "--report",
        report.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        FAKE_CONFLICT,
    ]);
    let kept = std::fs::read_to_string(&report);
    let _ = std::fs::remove_file(&report);
    assert_eq!(o.status.code(), Some(66));
    assert!(stderr(&o).contains(&format!("details in {}", report.display())));
    assert!(kept.unwrap().contains("/data/q.log"));
}

#[test]
fn doctor_sees_the_hazard_and_the_machine() {
    let o = output(&["doctor", "sh"]);
    let out = stdout(&o);
    for line in out.lines() {
        assert!(line.starts_with("✓ ") || line.starts_with("✗ "), "{line}");
    }
    assert!(
        out.contains("✓ kernel shows the splice hazard (splicecow is useful here)"),
        "{out}"
    );
    assert!(out.contains("✓ /dev/shm is writable"), "{out}");
    assert!(
        out.contains("✓ a pipe can be reopened through /proc"),
        "{out}"
    );
    assert!(out.contains("✓ dynamically linked"), "{out}");
    let all_ok = !out.contains("✗ ");
    assert_eq!(
        o.status.success(),
        all_ok,
        "exit status disagrees with {out}"
    );
}

#[test]
fn doctor_flags_a_static_binary() {
    let ldconfig = Path::new("/sbin/ldconfig");
    if !ldconfig.exists() {
        eprintln!("skipped: no /sbin/ldconfig");
        return;
    }
    let o = output(&["doctor", "/sbin/ldconfig"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("✗ statically linked"), "{}", stdout(&o));
}

#[test]
fn doctor_of_a_missing_program_fails() {
    let o = output(&["doctor", "splicecow-no-such-program"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("✗ splicecow-no-such-program: not found"));
}

#[test]
fn every_unprotected_demo_case_shows_the_corruption() {
    for case in [
        "pwrite",
        "punch-hole",
        "ftruncate",
        "sendfile",
        "cross-process-pwrite",
        "cross-process-punch-hole",
    ] {
        let o = output(&["demo-case", case]);
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(v["case"], case);
        assert!(v["mismatched_bytes"].as_u64().unwrap() > 0, "{case}: {v}");
        assert!(v["first_mismatch"].is_u64(), "{case}: {v}");
    }
}

#[test]
fn demo_without_the_library_exits_2() {
    let o = splicecow(&["demo"])
        .env("SPLICECOW_LIB", "/nonexistent/libsplicecow.so")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

#[test]
fn every_help_has_an_example_and_exit_codes() {
    for sub in [
        &[][..],
        &["run"],
        &["stats"],
        &["doctor"],
        &["demo"],
        &["completions"],
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let o = output(&args);
        assert!(o.status.success(), "{args:?}");
        let out = stdout(&o);
        assert!(out.contains("Example"), "{args:?}: {out}");
        assert!(out.contains("Exit status"), "{args:?}: {out}");
    }
}
