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
use splicecow_test_harness::XfsMount;
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
    data_file_in(&std::env::temp_dir(), name)
}

/// [`data_file`] under `base`.
fn data_file_in(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(format!("splicecow-strict-{}-{name}", std::process::id()));
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

/// Runs the static splicer (then its mutator child) with stdout a pipe, and reads the
/// pipe only once every process is gone: what a late reader gets.
fn late_read(under: Under, prog: &Path, file: &Path, mutation: &str) -> Vec<u8> {
    let (status, got) = late_read_status(under, prog, file, mutation);
    assert!(status.success(), "{under:?} {mutation}: {status}");
    got
}

/// [`late_read`], with the splicer's exit status (the mutator's, when that failed).
fn late_read_status(
    under: Under,
    prog: &Path,
    file: &Path,
    mutation: &str,
) -> (std::process::ExitStatus, Vec<u8>) {
    let domain = TestDomain::new("strict-late-read");
    let mut cmd = under.command(&domain, prog);
    cmd.arg("splice")
        .arg(file)
        .arg(LEN.to_string())
        .arg(prog)
        .arg(mutation)
        .arg(file);
    read_late(cmd)
}

/// Runs `cmd` with stdout a pipe that is read only once every process is gone: what a
/// late reader gets. Fails the test if the run takes over a minute (a hang).
fn read_late(mut cmd: Command) -> (std::process::ExitStatus, Vec<u8>) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{cmd:?}: still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut got = Vec::new();
    out.read_to_end(&mut got).unwrap();
    (status, got)
}

impl Under {
    /// A command that runs `prog` this way (its arguments still to be added).
    fn command(self, domain: &TestDomain, prog: &Path) -> Command {
        match self {
            Under::Nothing => Command::new(prog),
            Under::Run => {
                let mut c = splicecow();
                c.args(domain.run_args(&["--"])).arg(prog);
                c
            }
            Under::Strict => {
                let mut c = splicecow();
                c.args(domain.run_args(&["--strict", "--"])).arg(prog);
                c
            }
        }
    }
}

/// How many bytes of `got` differ from [`original`] (a missing or extra byte counts).
fn changed_bytes(got: &[u8]) -> usize {
    differing(got, &original())
}

#[test]
fn static_splicer_and_mutator_are_protected_only_in_strict_mode() {
    let Some(prog) = prog() else { return };
    for mutation in ["pwrite", "write", "ftruncate", "truncate", "punch"] {
        for under in [Under::Nothing, Under::Run, Under::Strict] {
            let file = data_file(&format!("{mutation}-{under:?}"));
            let got = late_read(under, prog, &file, mutation);
            check(mutation, under, changed_bytes(&got));
        }
    }
}

/// Stores through a shared file mapping: one made writable by `mprotect` after the
/// splice (settled by the `mprotect`), and one made writable *before* the splice (counted
/// when it is made, so the splice takes the copy path), both corrupt a late reader's
/// bytes except under `run --strict`.
#[test]
fn static_shared_mappings_are_protected_only_in_strict_mode() {
    let Some(prog) = prog() else { return };
    for under in [Under::Nothing, Under::Run, Under::Strict] {
        let file = data_file(&format!("mprotect-{under:?}"));
        let after = changed_bytes(&late_read(under, prog, &file, "mprotect"));
        let file = data_file(&format!("map-splice-{under:?}"));
        let domain = TestDomain::new("strict-map-splice");
        let mut cmd = under.command(&domain, prog);
        cmd.arg("map-splice").arg(&file).arg(LEN.to_string());
        let (status, got) = read_late(cmd);
        assert!(status.success(), "map-splice under {under:?}: {status}");
        let before = changed_bytes(&got);
        eprintln!(
            "under {under:?}: mprotect after the splice: {after} bytes differ; \
             mapping made before it: {before}"
        );
        if under == Under::Strict {
            assert_eq!((after, before), (0, 0), "strict mode must be exact");
        } else {
            assert!(after > 0 && before > 0, "{under:?}: the hazard must show");
        }
    }
}

/// Bytes a static program spliced into a pipe of its own and then moved on into the
/// late reader's pipe with `tee` or a pipe→pipe `splice` are settled when a mutator
/// changes the file: under `run --strict` only.
#[test]
fn static_tee_and_pipe_to_pipe_splice_are_protected_only_in_strict_mode() {
    let Some(prog) = prog() else { return };
    for how in ["tee", "splice"] {
        for under in [Under::Nothing, Under::Run, Under::Strict] {
            let file = data_file(&format!("via-{how}-{under:?}"));
            let domain = TestDomain::new("strict-via");
            let mut cmd = under.command(&domain, prog);
            cmd.args(["via", how])
                .arg(&file)
                .arg(LEN.to_string())
                .arg(prog)
                .arg("pwrite")
                .arg(&file);
            let (status, got) = read_late(cmd);
            assert!(status.success(), "{how} under {under:?}: {status}");
            check(how, under, changed_bytes(&got));
        }
    }
}

/// A `write` into a pipe holding a static program's spliced bytes goes in between them
/// (under `run --strict` written by the supervisor under the registry lock): the late
/// reader gets the bytes in order, exact under `run --strict` only.
#[test]
fn a_static_write_between_splices_keeps_its_place_in_strict_mode() {
    let Some(prog) = prog() else { return };
    let mut expected = original()[..32768].to_vec();
    expected.extend_from_slice(&[b'M'; 16]);
    expected.extend_from_slice(&original()[32768..61440]);
    for under in [Under::Nothing, Under::Run, Under::Strict] {
        let file = data_file(&format!("marked-{under:?}"));
        let domain = TestDomain::new("strict-marked");
        let mut cmd = under.command(&domain, prog);
        cmd.arg("marked")
            .arg(&file)
            .arg(prog)
            .arg("pwrite")
            .arg(&file);
        let (status, got) = read_late(cmd);
        assert!(status.success(), "under {under:?}: {status}");
        check("marked", under, differing(&got, &expected));
    }
}

/// `FIDEDUPERANGE` into a spliced file (same bytes, new pages: the kernel zeroes the
/// range in a large folio it cannot split, and the pipe shows the zeros) is settled under
/// `run --strict` only.
#[test]
fn a_static_dedupe_is_settled_only_in_strict_mode() {
    let Some(prog) = prog() else { return };
    let xfs = match XfsMount::new() {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: no XFS image to dedupe on: {why}");
            return;
        }
    };
    for under in [Under::Nothing, Under::Run, Under::Strict] {
        let file = data_file_in(&xfs.dir, &format!("dedupe-{under:?}"));
        let (status, got) = late_read_status(under, prog, &file, "dedupe");
        if status.code() == Some(6) {
            eprintln!("skipped: FIDEDUPERANGE unsupported on the XFS image");
            return;
        }
        assert!(status.success(), "{under:?}: {status}");
        let changed = changed_bytes(&got);
        eprintln!("dedupe under {under:?}: {changed} bytes differ");
        if under == Under::Strict {
            assert_eq!(changed, 0, "dedupe: strict mode must be exact");
        } else if changed == 0 {
            // The page cache kept small folios: the hazard cannot show on this kernel.
            eprintln!("skipped: dedupe did not change spliced bytes under {under:?} here");
            return;
        }
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

#[test]
fn trapped_calls_answer_as_without_strict_mode() {
    let Some(prog) = prog() else { return };
    let run = |strict: bool| {
        let file = data_file(&format!("fidelity-{strict}"));
        let domain = TestDomain::new("strict-fidelity");
        let mut cmd = if strict {
            let mut c = splicecow();
            c.args(domain.run_args(&["--strict", "--"])).arg(prog);
            c
        } else {
            Command::new(prog)
        };
        let out = cmd.arg("fidelity").arg(&file).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let (plain, strict) = (run(false), run(true));
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

/// How a dynamically linked parent starts the static splicer: each gets the splicer's
/// path and then its arguments (the PATH-searching ones exec it by its name, `prog`).
const LAUNCHERS: [(&str, &[&str]); 4] = [
    ("sh exec (execve)", &["sh", "-c", "exec \"$0\" \"$@\""]),
    (
        "python subprocess (vfork, execve)",
        &[
            "python3",
            "-c",
            "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)",
        ],
    ),
    (
        "python posix_spawnp (PATH search)",
        &[
            "python3",
            "-c",
            "import os, sys; p = os.posix_spawnp('prog', ['prog'] + sys.argv[2:], os.environ); \
             sys.exit(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]))",
        ],
    ),
    (
        "python execvp (PATH search)",
        &[
            "python3",
            "-c",
            "import os, sys; os.execvp('prog', ['prog'] + sys.argv[2:])",
        ],
    ),
];

/// The static splicer (and its static mutator child) started by a dynamically linked
/// `launcher` under `run` or `run --strict`; the pipe is read once every process is gone.
fn late_read_launched(strict: bool, launcher: &[&str], prog: &Path, file: &Path) -> Vec<u8> {
    let opts: &[&str] = if strict { &["--strict", "--"] } else { &["--"] };
    late_read_run(opts, None, launcher, prog, file)
}

/// [`late_read_launched`] with `run`'s options and one variable of its environment.
fn late_read_run(
    opts: &[&str],
    env: Option<(&str, &str)>,
    launcher: &[&str],
    prog: &Path,
    file: &Path,
) -> Vec<u8> {
    let domain = TestDomain::new("strict-exec");
    let dir = prog.parent().unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = splicecow();
    cmd.args(domain.run_args(opts))
        .args(launcher)
        .arg(prog)
        .arg("splice")
        .arg(file)
        .arg(LEN.to_string())
        .arg(prog)
        .arg("pwrite")
        .arg(file)
        .env("PATH", path)
        .envs(env);
    let (status, got) = read_late(cmd);
    assert!(status.success(), "{launcher:?} {opts:?}: {status}");
    got
}

#[test]
fn static_programs_a_dynamic_parent_execs_get_the_filter() {
    let Some(prog) = prog() else { return };
    for (what, launcher) in LAUNCHERS {
        for strict in [false, true] {
            let file = data_file(&format!("exec-{}-{strict}", what.len()));
            let got = late_read_launched(strict, launcher, prog, &file);
            let under = if strict { Under::Strict } else { Under::Run };
            check(what, under, changed_bytes(&got));
        }
    }
}

#[test]
fn the_strict_variable_turns_strict_mode_on_and_bad_values_off() {
    let Some(prog) = prog() else { return };
    let sh = LAUNCHERS[0].1;
    let file = data_file("strict-variable-1");
    let got = late_read_run(&["--"], Some(("SPLICECOW_STRICT", "1")), sh, prog, &file);
    assert_eq!(changed_bytes(&got), 0, "SPLICECOW_STRICT=1 is --strict");
    let file = data_file("strict-variable-0");
    let got = late_read_run(&["--"], Some(("SPLICECOW_STRICT", "0")), sh, prog, &file);
    assert!(
        changed_bytes(&got) > 0,
        "SPLICECOW_STRICT=0 is off: the hazard must show"
    );

    let out = splicecow()
        .args(["run", "--", "true"])
        .env("SPLICECOW_STRICT", "yes")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        err.trim(),
        "splicecow: SPLICECOW_STRICT=yes: not 0 or 1; strict mode is off"
    );
}

#[test]
fn a_strict_exec_without_a_supervisor_says_so_and_runs() {
    let Some(prog) = prog() else { return };
    let Some(lib) = std::env::var_os("SPLICECOW_LIB") else {
        eprintln!("skipped: SPLICECOW_LIB is not set");
        return;
    };
    let file = data_file("no-supervisor");
    let domain = TestDomain::new("strict-no-supervisor");
    let out = Command::new("sh")
        .args(["-c", "exec \"$0\" \"$@\""])
        .arg(prog)
        .arg("pwrite")
        .arg(&file)
        .env("LD_PRELOAD", lib)
        .env("SPLICECOW_DOMAIN", domain.name())
        .env("SPLICECOW_STRICT", "1")
        .env_remove("SPLICECOW_SUPERVISOR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("splicecow: SPLICECOW_STRICT=1 but no supervisor"),
        "{err}"
    );
    let data = std::fs::read(&file).unwrap();
    assert_eq!(&data[4096..4112], b"XXXXXXXXXXXXXXXX", "the program ran");
}

#[test]
fn the_supervisor_lets_go_of_each_filter_once_its_programs_are_gone() {
    let Some(prog) = prog() else { return };
    let file = data_file("many-filters");
    let domain = TestDomain::new("strict-many-filters");
    // Twenty static programs, one after the other, each with a filter of its own; then
    // the run's threads are counted (main, the accepting thread, and any still serving).
    let script = "sup=${SPLICECOW_SUPERVISOR%%:*}; i=0; while [ $i -lt 20 ]; do \
                  \"$0\" pwrite \"$1\" || exit 9; i=$((i+1)); done; ls /proc/$sup/task | wc -l";
    let out = splicecow()
        .args(domain.run_args(&["--strict", "--", "sh", "-c", script]))
        .arg(prog)
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let threads: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        threads <= 3,
        "{threads} threads left in the supervisor after 20 filters"
    );
}

#[test]
fn a_splice_into_a_pipe_without_reader_raises_sigpipe_as_without_strict_mode() {
    use std::os::unix::process::ExitStatusExt;
    let Some(prog) = prog() else { return };
    for ignore in [false, true] {
        let run = |strict: bool| {
            let file = data_file(&format!("epipe-{ignore}-{strict}"));
            let domain = TestDomain::new("strict-epipe");
            let mut cmd = if strict {
                let mut c = splicecow();
                c.args(domain.run_args(&["--strict", "--"])).arg(prog);
                c
            } else {
                Command::new(prog)
            };
            cmd.arg("epipe").arg(&file);
            if ignore {
                cmd.arg("ignore");
            }
            let out = cmd.output().unwrap();
            // `run` exits with 128 + N for a command killed by signal N.
            let status = out
                .status
                .signal()
                .map_or(out.status.code().unwrap_or(-1), |s| 128 + s);
            (status, String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let (bare, strict) = (run(false), run(true));
        eprintln!("ignore={ignore}: bare {bare:?}, strict {strict:?}");
        assert_eq!(bare, strict, "ignore={ignore}");
        if ignore {
            assert_eq!(bare.1, "splice -1 32\ntee -1 32\nwrite -1 32\n");
        } else {
            assert_eq!(bare, (128 + libc::SIGPIPE, String::new()));
        }
    }
}

#[test]
fn a_static_writer_keeps_its_order_while_another_process_settles_its_pipe() {
    let Some(prog) = prog() else { return };
    const ROUNDS: usize = 10000;
    let file = data_file("interleave");
    let domain = TestDomain::new("strict-interleave");
    // A preloaded mutator in the domain writes the file's own bytes back over and over:
    // the content never changes, but every write settles the pipe the static program
    // splices into, while that program writes markers into the same pipe.
    // (Without the supervisor's serialised pipe writes, the first marker out of place
    // came within the first 400 KB here.)
    let mutator = "import os, random, sys\n\
                   f = os.open(sys.argv[1], os.O_RDWR); data = os.pread(f, 65536, 0)\n\
                   open(sys.argv[1] + '.ready', 'w').close()\n\
                   while not os.path.exists(sys.argv[1] + '.stop'):\n    \
                   o = random.randrange(0, 61440); os.pwrite(f, data[o:o + 16], o)\n";
    let script = "python3 -c \"$3\" \"$1\" & m=$!; \
                  while [ ! -e \"$1.ready\" ]; do sleep 0.01; done; \
                  \"$0\" interleave \"$1\" \"$2\"; s=$?; touch \"$1.stop\"; wait $m; exit $s";
    let mut child = splicecow()
        .args(domain.run_args(&["--strict", "--", "sh", "-c", script]))
        .arg(prog)
        .arg(&file)
        .arg(ROUNDS.to_string())
        .arg(mutator)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut got).unwrap();
    assert!(child.wait().unwrap().success());
    let orig = original();
    let mut want = Vec::new();
    for i in 0..ROUNDS {
        want.extend_from_slice(&orig[(i % 15) * 4096..][..4096]);
        want.extend_from_slice(format!("M{i:07}").as_bytes());
    }
    let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(got.len(), want.len(), "first difference at {first_bad:?}");
    assert_eq!(first_bad, None, "the markers must stay between their pages");
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

/// `argv` (a program and its arguments) run as `under` says.
fn command(under: Under, domain: &TestDomain, argv: &[OsString]) -> Command {
    let mut cmd = under.command(domain, Path::new(&argv[0]));
    cmd.args(&argv[1..]).env_remove("LD_PRELOAD");
    cmd
}

/// [`read_late`] of `argv` run as `under` says, which must succeed.
fn late_read_argv(under: Under, argv: &[OsString]) -> Vec<u8> {
    let domain = TestDomain::new("strict-late-read");
    let (status, got) = read_late(command(under, &domain, argv));
    assert!(status.success(), "{under:?} {argv:?}: {status}");
    got
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
    // The output is small (it fits in the pipe): read it once the run is over.
    let (status, out) = read_late(command(under, &domain, &argv));
    let out = String::from_utf8(out).unwrap();
    assert!(
        status.success(),
        "{mode} (strict: {strict}): {status}\n{out}"
    );
    out
}

#[test]
fn interrupted_calls_answer_as_without_strict_mode() {
    let Some(prog) = prog() else { return };
    // A timer signal interrupts blocking splices (waiting in the supervisor's transfer
    // thread), sendfiles and pipe writes (into a pipe holding spliced bytes: waiting in
    // the supervisor's pipe-write thread), with and without SA_RESTART.
    let plain = answers(prog, "signals", false);
    let strict = answers(prog, "signals", true);
    assert!(plain.contains("splice_off_intr -1 4"), "{plain}");
    assert!(plain.contains("splice_off_restart 16 0"), "{plain}");
    assert!(plain.contains("write_partial_intr 4096 0"), "{plain}");
    assert!(plain.contains("splice_threaded_intr -1 4"), "{plain}");
    assert!(plain.contains("write_tracked_full_intr -1 4"), "{plain}");
    assert!(
        plain.contains("write_tracked_partial_intr 4096 0"),
        "{plain}"
    );
    assert_eq!(plain.lines().count(), 43, "{plain}");
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
fn a_run_whose_static_splicer_read_its_own_pipe_removes_its_registry() {
    let Some(prog) = prog() else { return };
    let file = data_file("registry-left");
    let domain = TestDomain::new("strict-registry-left");
    // The splicer reads back what it spliced from a pipe of its own, then exits: nothing
    // is in flight, though its last segment stays recorded (its close is not seen).
    let out = splicecow()
        .args(domain.run_args(&["--strict", "--"]))
        .arg(prog)
        .arg("splice-loop")
        .arg(&file)
        .arg("4")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let path = splicecow_registry::registry_path(domain.name());
    assert!(!Path::new(&path).exists(), "{path} is left behind");
}
