//! `splicecow run --strict` with real statically linked programs (`tests/strict/prog.c`,
//! built here with `gcc -static -pthread`) and Go programs (`tests/strict/goprog`, built
//! here with `go build`, linked statically and dynamically): a splicer whose child, a
//! mutator, changes the file while an unshimmed reader has not read yet is corrupted
//! without splicecow and under plain `run` (the preload cannot load into a static
//! program, and Go's own system calls bypass it), and exact under `run --strict`; so are
//! 100 children splicing and mutating at once and 8 threads mutating at once; the trapped
//! calls, also when a signal interrupts them, answer as without strict mode; a
//! supervisor killed while a call waits for it fails that call instead of hanging.

mod common;

use common::TestDomain;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_splicecow");
const LEN: usize = 65536;

/// The static helper, built once; `None` (with the reason printed) when this machine
/// cannot link statically or has no seccomp user notification: the tests then skip.
fn prog() -> Option<&'static Path> {
    static PROG: OnceLock<Option<PathBuf>> = OnceLock::new();
    PROG.get_or_init(|| {
        let actions = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail");
        if !actions.is_ok_and(|a| a.split_whitespace().any(|w| w == "user_notif")) {
            eprintln!("skipped: this kernel has no seccomp user notification");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("splicecow-strict-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let out = dir.join("prog");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/strict/prog.c");
        let built = Command::new("gcc")
            .args(["-static", "-pthread", "-O2", "-w", "-o"])
            .arg(&out)
            .arg(&src)
            .status();
        if !built.is_ok_and(|s| s.success()) {
            eprintln!("skipped: gcc -static failed (libc6-dev provides libc.a)");
            return None;
        }
        Some(out)
    })
    .as_deref()
}

/// A fresh 64 KiB file of bytes that are never 'X' or 0, in a directory of its own.
fn data_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("splicecow-strict-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data");
    std::fs::write(&path, original()).unwrap();
    path
}

fn original() -> Vec<u8> {
    (0..LEN).map(|i| b'a' + (i % 23) as u8).collect()
}

/// `splicecow` with the test's own splicecow variables removed (SPLICECOW_LIB kept).
fn splicecow() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("LD_PRELOAD");
    for (k, _) in std::env::vars() {
        if k.starts_with("SPLICECOW_") && k != "SPLICECOW_LIB" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// How the splicer runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Under {
    Nothing,
    Run,
    Strict,
}

/// The Go helper, linked statically (`dynamic` false: no cgo) or dynamically (with cgo,
/// so that the preload loads into it), built once; `None` (with the reason printed) when
/// there is no Go toolchain or no seccomp user notification: the tests then skip.
fn goprog(dynamic: bool) -> Option<&'static Path> {
    static GO: [OnceLock<Option<PathBuf>>; 2] = [OnceLock::new(), OnceLock::new()];
    GO[usize::from(dynamic)]
        .get_or_init(|| {
            prog()?;
            let dir =
                std::env::temp_dir().join(format!("splicecow-strict-go-{}", std::process::id()));
            std::fs::create_dir_all(&dir).ok()?;
            let out = dir.join(if dynamic {
                "goprog-dynamic"
            } else {
                "goprog-static"
            });
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/strict/goprog");
            // No modules, nothing fetched; the caches in a directory of the test's own.
            let started = Instant::now();
            let built = Command::new("go")
                .args(["build", "-tags", if dynamic { "dynamic" } else { "" }, "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(&src)
                .env("GO111MODULE", "off")
                .env("GOFLAGS", "")
                .env("GOCACHE", dir.join("cache"))
                .env("GOPATH", dir.join("gopath"))
                .env("CGO_ENABLED", if dynamic { "1" } else { "0" })
                .env_remove("LD_PRELOAD")
                .output();
            match built {
                Err(e) => {
                    eprintln!("skipped: no Go toolchain (go: {e}; Debian: golang-go)");
                    None
                }
                Ok(o) if !o.status.success() => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    eprintln!("skipped: go build failed: {err}");
                    None
                }
                Ok(_) => {
                    eprintln!("go build (dynamic: {dynamic}): {:?}", started.elapsed());
                    Some(out)
                }
            }
        })
        .as_deref()
}

/// `argv` (a program and its arguments) bare, under plain `run` or under `run --strict`.
fn command(under: Under, domain: &TestDomain, argv: &[OsString]) -> Command {
    let mut cmd = match under {
        Under::Nothing => Command::new(&argv[0]),
        Under::Run => {
            let mut c = splicecow();
            c.args(domain.run_args(&["--"])).arg(&argv[0]);
            c
        }
        Under::Strict => {
            let mut c = splicecow();
            c.args(domain.run_args(&["--strict", "--"])).arg(&argv[0]);
            c
        }
    };
    cmd.args(&argv[1..]).env_remove("LD_PRELOAD");
    cmd
}

/// Runs `argv` with stdout a pipe and reads the pipe only once every process is gone:
/// what a late reader gets. Fails the test if the run takes over a minute (a hang).
fn late_read_argv(under: Under, argv: &[OsString]) -> Vec<u8> {
    let domain = TestDomain::new("strict-late-read");
    let mut child = command(under, &domain, argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{under:?} {argv:?}: still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{under:?} {argv:?}: {status}");
    let mut got = Vec::new();
    out.read_to_end(&mut got).unwrap();
    got
}

/// Runs the static splicer (then its mutator child) as [`late_read_argv`] does.
fn late_read(under: Under, prog: &Path, file: &Path, mutation: &str) -> Vec<u8> {
    let argv: Vec<OsString> = vec![
        prog.into(),
        "splice".into(),
        file.into(),
        LEN.to_string().into(),
        prog.into(),
        mutation.into(),
        file.into(),
    ];
    late_read_argv(under, &argv)
}

/// How many bytes of `got` differ from `want` (a length difference counts too).
fn differing(got: &[u8], want: &[u8]) -> usize {
    got.iter().zip(want).filter(|(a, b)| a != b).count() + want.len().abs_diff(got.len())
}

/// Asserts that `changed` bytes differ as they must: none under `run --strict`, some
/// otherwise (the hazard shows, or the test could not have failed).
fn check(what: &str, under: Under, changed: usize) {
    eprintln!("{what} under {under:?}: {changed} bytes differ");
    if under == Under::Strict {
        assert_eq!(changed, 0, "{what}: strict mode must be exact");
    } else {
        assert!(changed > 0, "{what} under {under:?}: the hazard must show");
    }
}

#[test]
fn static_splicer_and_mutator_are_protected_only_in_strict_mode() {
    let Some(prog) = prog() else { return };
    for mutation in ["pwrite", "write", "ftruncate", "truncate", "punch"] {
        for under in [Under::Nothing, Under::Run, Under::Strict] {
            let file = data_file(&format!("{mutation}-{under:?}"));
            let got = late_read(under, prog, &file, mutation);
            check(mutation, under, differing(&got, &original()));
        }
    }
}

#[test]
fn go_splicer_and_mutator_are_protected_only_in_strict_mode() {
    for dynamic in [false, true] {
        let Some(go) = goprog(dynamic) else { return };
        for mutation in ["writeat", "write", "truncate", "ftruncate", "punch"] {
            for under in [Under::Nothing, Under::Run, Under::Strict] {
                let file = data_file(&format!("go-{dynamic}-{mutation}-{under:?}"));
                let argv: Vec<OsString> = vec![
                    go.into(),
                    "splice".into(),
                    file.as_os_str().into(),
                    LEN.to_string().into(),
                    go.into(),
                    mutation.into(),
                    file.as_os_str().into(),
                ];
                let got = late_read_argv(under, &argv);
                let what = format!("Go (dynamic: {dynamic}) {mutation}");
                check(&what, under, differing(&got, &original()));
            }
        }
    }
}

#[test]
fn a_hundred_children_splicing_and_mutating_at_once_are_exact() {
    let Some(prog) = prog() else { return };
    // The parent's splice of the whole file, then each child's 640 bytes, in order.
    let mut want = original();
    want.extend_from_slice(&original()[..100 * 640]);
    for under in [Under::Nothing, Under::Strict] {
        let file = data_file(&format!("forks-{under:?}"));
        let argv: Vec<OsString> = vec![
            prog.into(),
            "forks".into(),
            file.as_os_str().into(),
            "100".into(),
        ];
        let got = late_read_argv(under, &argv);
        check("100 children", under, differing(&got, &want));
    }
}

#[test]
fn eight_threads_mutating_at_once_are_exact() {
    let Some(prog) = prog() else { return };
    for under in [Under::Nothing, Under::Strict] {
        let file = data_file(&format!("threads-{under:?}"));
        let argv: Vec<OsString> = vec![prog.into(), "threads".into(), file.as_os_str().into()];
        let got = late_read_argv(under, &argv);
        check("8 threads", under, differing(&got, &original()));
    }
}

#[test]
fn strict_mode_reports_static_programs_in_detect_mode() {
    let Some(prog) = prog() else { return };
    let file = data_file("detect");
    let report = file.with_file_name("report.jsonl");
    let domain = TestDomain::new("strict-detect");
    // The pipe is read only after the run (a late reader), so the pwrite conflicts.
    let mut child = splicecow()
        .args(domain.run_args(&["--strict", "--mode", "detect", "--report"]))
        .arg(&report)
        .arg("--")
        .arg(prog)
        .arg("splice")
        .arg(&file)
        .arg(LEN.to_string())
        .arg(prog)
        .arg("pwrite")
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    assert!(child.wait().unwrap().success());
    drop(out);
    let text = std::fs::read_to_string(&report).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"kind\":\"pwrite\""), "{text}");
    assert!(
        text.contains(&format!("\"exe\":\"{}\"", prog.display())),
        "{text}"
    );
    assert!(text.contains("\"offset\":4096,\"len\":16"), "{text}");
}

/// `prog MODE FILE`'s output bare or under `run --strict`.
fn answers(prog: &Path, mode: &str, strict: bool) -> String {
    let file = data_file(&format!("{mode}-{strict}"));
    let domain = TestDomain::new("strict-fidelity");
    let under = if strict {
        Under::Strict
    } else {
        Under::Nothing
    };
    let argv: Vec<OsString> = vec![prog.into(), mode.into(), file.into()];
    let mut child = command(under, &domain, &argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The output is small (it fits in the pipe): read it once the run is over.
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{mode} (strict: {strict}): still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        status.success(),
        "{mode} (strict: {strict}): {status}\n{out}"
    );
    out
}

#[test]
fn trapped_calls_answer_as_without_strict_mode() {
    let Some(prog) = prog() else { return };
    let (plain, strict) = (
        answers(prog, "fidelity", false),
        answers(prog, "fidelity", true),
    );
    let lines = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with("io_uring_setup"))
            .map(String::from)
            .collect()
    };
    assert!(lines(&plain).len() > 30, "{plain}");
    assert_eq!(lines(&plain), lines(&strict));
    assert!(strict.contains("io_uring_setup -1 38"), "{strict}");
}

#[test]
fn interrupted_calls_answer_as_without_strict_mode() {
    let Some(prog) = prog() else { return };
    // A timer signal interrupts blocking splices (waiting in the supervisor's transfer
    // thread), sendfiles and pipe writes, with and without SA_RESTART.
    let plain = answers(prog, "signals", false);
    let strict = answers(prog, "signals", true);
    assert!(plain.contains("splice_off_intr -1 4"), "{plain}");
    assert!(plain.contains("splice_off_restart 16 0"), "{plain}");
    assert!(plain.contains("write_partial_intr 4096 0"), "{plain}");
    assert!(plain.contains("splice_threaded_intr -1 4"), "{plain}");
    assert_eq!(plain.lines().count(), 35, "{plain}");
    assert_eq!(plain, strict);
}

#[test]
fn a_signal_storm_neither_repeats_nor_fails_trapped_calls() {
    let Some(prog) = prog() else { return };
    // A SA_RESTART signal every 37 us lands in most round trips to the supervisor: a
    // splice it has run must not run again when the call restarts (its bytes twice in
    // the pipe, the offset moved twice), nor any call fail.
    let plain = answers(prog, "storm", false);
    let strict = answers(prog, "storm", true);
    assert!(plain.contains("storm_bytes_twice 0 0"), "{plain}");
    assert!(plain.contains("storm_signals 1 0"), "{plain}");
    assert_eq!(plain, strict);
}

#[test]
fn a_killed_supervisor_fails_the_waiting_call() {
    let Some(prog) = prog() else { return };
    let file = data_file("pending");
    let dir = file.parent().unwrap().to_path_buf();
    let domain = TestDomain::new("strict-pending");
    let mut run = splicecow()
        .args(domain.run_args(&["--strict", "--"]))
        .arg(prog)
        .arg("pending")
        .arg(&dir)
        .spawn()
        .unwrap();
    let wait_for = |what: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !what() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(&|| dir.join("waiting").exists());
    // The splice is waiting for room, in the supervisor's hands.
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("result")
    }));
    run.kill().unwrap();
    run.wait().unwrap();
    let result = || {
        std::fs::read_dir(&dir).unwrap().find_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.starts_with("result").then_some(name)
        })
    };
    wait_for(&|| result().is_some());
    assert_eq!(
        result().unwrap(),
        "result--1-38",
        "the splice fails with ENOSYS"
    );
}

#[test]
fn doctor_says_strict_mode_covers_a_static_program() {
    let Some(prog) = prog() else { return };
    let out = splicecow().arg("doctor").arg(prog).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("strict mode (`splicecow run --strict`) covers it: statically linked"),
        "{text}"
    );
}
