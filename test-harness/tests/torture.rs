//! Torture tests: a 30 s random stress run with SIGKILL fault injection, and
//! the signal, fork, spawn, exec, thread and early-constructor cases.
//!
//! Every protected program here is the `torture` binary (one subcommand a case) or a
//! tiny C program compiled with `gcc` at test time, run with `libsplicecow.so`
//! preloaded in a fresh domain. The library comes from `$SPLICECOW_LIB`, else
//! `target/release`, else `target/debug`: run `cargo build --release` first. The whole
//! file takes about 60 s on two cores. The long profile is `scripts/stress --ops 1000000
//! --faults`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use splicecow_test_harness::{
    domain_stats, library_path, run_with_timeout, temp_path, wait_with_timeout, RunOutput,
    TempDomain, TempFile,
};

const STRESS: &str = env!("CARGO_BIN_EXE_stress");
const TORTURE: &str = env!("CARGO_BIN_EXE_torture");

/// The preloadable library, or a failure that says how to build it.
fn lib() -> PathBuf {
    library_path().unwrap_or_else(|e| panic!("{e}"))
}

/// `torture ARGS...`, protected in `domain`.
fn torture(domain: &TempDomain, args: &[&str]) -> Command {
    let mut cmd = Command::new(TORTURE);
    cmd.args(args);
    domain.protection(&lib()).apply(&mut cmd);
    cmd
}

fn run(cmd: &mut Command, secs: u64) -> RunOutput {
    let out = run_with_timeout(cmd, Duration::from_secs(secs)).expect("spawn");
    assert!(
        out.status.is_some(),
        "HANG: {cmd:?} did not finish within {secs} s: {}",
        out.describe()
    );
    out
}

fn assert_ok(what: &str, out: &RunOutput) {
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{what} failed: {}",
        out.describe()
    );
}

/// A 1 MiB pattern file removed on drop (with its `.lock` companion).
struct DataFile(TempFile);

impl DataFile {
    fn new(tag: &str) -> DataFile {
        DataFile(TempFile::with_pattern(tag, 1 << 20).expect("data file"))
    }
    fn path(&self) -> &str {
        self.0.path().to_str().expect("utf-8 temp path")
    }
}

impl Drop for DataFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("{}.lock", self.path()));
    }
}

/// Compiles `source` (C) with gcc into `out`; `shared` builds a shared library.
fn gcc(source: &str, out: &Path, shared: bool) {
    let src = out.with_extension("c");
    std::fs::write(&src, source).expect("write C source");
    let mut cmd = Command::new("gcc");
    if shared {
        cmd.args(["-shared", "-fPIC"]);
    }
    let status = cmd
        .arg("-O1")
        .arg("-o")
        .arg(out)
        .arg(&src)
        .status()
        .expect("gcc is needed by this test");
    assert!(status.success(), "gcc failed on {}", src.display());
    let _ = std::fs::remove_file(src);
}

/// A scratch directory under /var/tmp, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = temp_path(tag);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The JSON report `stress --json` printed as its last stdout line.
fn json_report(out: &RunOutput) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {}", out.describe()))
}

#[test]
fn stress_30s_with_faults() {
    let out = run(
        Command::new(STRESS)
            .args([
                "--duration",
                "30",
                "--faults",
                "--json",
                "--hang-secs",
                "15",
            ])
            .arg("--lib")
            .arg(lib()),
        120,
    );
    let report = json_report(&out);
    let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let context = format!(
        "seed {} (reproduce: target/release/stress --duration 30 --faults --seed {}); report {report}\n{}",
        n("seed"),
        n("seed"),
        tail.join("\n")
    );
    assert_eq!(n("hangs"), 0, "stress hung: {context}");
    assert_eq!(n("crashes"), 0, "a worker crashed: {context}");
    assert_eq!(
        n("mismatches"),
        0,
        "pipe bytes differ from the model: {context}"
    );
    assert_eq!(
        n("file_mismatches"),
        0,
        "file content differs from the model: {context}"
    );
    assert_eq!(n("errors"), 0, "a call returned a wrong value: {context}");
    assert!(n("kills") > 0, "no fault was injected: {context}");
    assert!(n("bytes_verified") > 0, "nothing was verified: {context}");
    // The workers aimed at particular holes ran: children started on the threads' own
    // memory, relays that waited before their bytes came, kills inside paused registry
    // updates, and the quiet victim's checks after them.
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let children: u64 = report["children"]
        .as_object()
        .map_or(0, |kinds| kinds.values().map(count).sum());
    assert!(children > 0, "no child was started: {context}");
    for key in [
        "relay_rounds_waited",
        "relay_bytes_verified",
        "kills_paused",
        "quiet_checks",
    ] {
        assert!(count(&report[key]) > 0, "{key} is 0: {context}");
    }
    let takeover = report["max_lock_takeover_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(
        takeover < 1000.0,
        "lock takeover took {takeover} ms: {context}"
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "stress failed: {context}"
    );
}

/// The long-lived profile for 25 s: one domain whose pipes are created and closed all
/// the time (some filled by children that exit, some closed unread, through `close`,
/// `dup2` and `close_range`), with mutations of the spliced files: the tables never come
/// near full, no file->pipe call finds the registry full, no byte differs, and once the
/// workers stopped a sweep leaves no segment live.
#[test]
fn long_lived_profile_25s_tables_never_fill() {
    let out = run(
        Command::new(STRESS)
            .args([
                "--profile",
                "long-lived",
                "--duration",
                "25",
                "--workers",
                "4",
                "--json",
            ])
            .arg("--lib")
            .arg(lib()),
        120,
    );
    let report = json_report(&out);
    let context = format!(
        "report {report} (reproduce: target/release/stress --profile long-lived --duration 25 \
         --workers 4 --seed {}): {}",
        report["seed"],
        out.describe()
    );
    assert_eq!(report["passed"], true, "{context}");
    assert_eq!(report["copy_fallbacks_registry_full"], 0, "{context}");
    assert_eq!(report["live_segments_after_sweep"], 0, "{context}");
    assert_eq!(report["counts"]["mismatches"], 0, "{context}");
    assert!(
        report["counts"]["pipes"].as_u64() > Some(10_000),
        "too few pipes: {context}"
    );
    assert!(out.status.is_some_and(|s| s.success()), "{context}");
}

#[test]
fn write_from_sigalrm_handler_inside_hooks() {
    let domain = TempDomain::new();
    let dir = Scratch::new("torture-sig");
    let dir_s = dir.0.to_str().unwrap();
    let out = run(
        &mut torture(&domain, &["sigalrm", "--dir", dir_s, "--secs", "3"]),
        60,
    );
    let stats = domain_stats(domain.name()).unwrap_or_default();
    assert_ok(
        &format!(
            "SIGALRM handler writes (100 µs timer) while the main thread splices and pwrites \
             (stats {stats}); reproduce: LD_PRELOAD=target/release/libsplicecow.so \
             SPLICECOW_DOMAIN=x target/release/torture sigalrm --dir DIR --secs 3"
        ),
        &out,
    );
}

#[test]
fn sigstop_sigcont_of_a_splicer_while_another_process_mutates() {
    let domain = TempDomain::new();
    let file = DataFile::new("torture-stop");
    let mut mutator = torture(&domain, &["mutate", "--file", file.path(), "--secs", "6"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mutator");
    let mut splicer = torture(
        &domain,
        &[
            "rounds",
            "--file",
            file.path(),
            "--rounds",
            "300",
            "--pause-us",
            "2000",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("spawn splicer");
    let pid = splicer.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stops = 0;
    let status = loop {
        if let Some(st) = splicer.try_wait().expect("wait") {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = splicer.kill();
            break None;
        }
        // SAFETY: signalling our own, not yet reaped, child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        thread::sleep(Duration::from_millis(5));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        stops += 1;
        thread::sleep(Duration::from_millis(10));
    };
    let mstatus = wait_with_timeout(&mut mutator, Duration::from_secs(30)).expect("wait");
    assert!(
        status.is_some(),
        "HANG: the stopped/continued splicer never finished"
    );
    assert!(
        status.unwrap().success(),
        "splicer saw wrong bytes after {stops} SIGSTOP/SIGCONT ({status:?})"
    );
    assert!(
        mstatus.is_some_and(|s| s.success()),
        "mutator failed: {mstatus:?}"
    );
    assert!(stops > 10, "the splicer was stopped only {stops} times");
}

#[test]
fn fork_parent_and_child_both_splice_and_mutate() {
    let domain = TempDomain::new();
    let file = DataFile::new("torture-fork");
    let out = run(
        &mut torture(&domain, &["fork", "--file", file.path(), "--rounds", "400"]),
        60,
    );
    assert_ok("fork: parent and child splice/mutate the same file", &out);
}

#[test]
fn sixteen_threads_splice_and_mutate_at_once() {
    let domain = TempDomain::new();
    let file = DataFile::new("torture-threads");
    let out = run(
        &mut torture(
            &domain,
            &[
                "threads",
                "--file",
                file.path(),
                "--threads",
                "16",
                "--rounds",
                "300",
            ],
        ),
        60,
    );
    assert_ok("16 threads splicing and mutating one file", &out);
}

/// The spawned child reports its environment and splices once: the domain's `splices`
/// counter proves it ran in the parent's domain.
fn assert_child_in_domain(what: &str, domain: &TempDomain, out: &RunOutput) {
    assert_ok(what, out);
    let stats = domain_stats(domain.name()).expect("stats");
    assert!(
        stats["splices"].as_u64().unwrap_or(0) >= 1,
        "{what}: the child's splice is not in the domain's counters: {stats}"
    );
}

#[test]
fn posix_spawn_child_keeps_the_domain() {
    let domain = TempDomain::new();
    let file = DataFile::new("torture-spawn");
    let out = run(
        &mut torture(
            &domain,
            &["spawn", "--file", file.path(), "--domain", domain.name()],
        ),
        30,
    );
    assert_child_in_domain("posix_spawn of a protected child", &domain, &out);
}

#[test]
fn vfork_exec_child_keeps_the_domain() {
    let domain = TempDomain::new();
    let file = DataFile::new("torture-vfork");
    let dir = Scratch::new("torture-vfork-bin");
    let prog = dir.0.join("vforker");
    gcc(
        r#"
#include <unistd.h>
#include <sys/wait.h>
int main(int argc, char **argv) {
    (void)argc;
    pid_t p = vfork();
    if (p == 0) { execv(argv[1], argv + 1); _exit(127); }
    int st;
    if (p < 0 || waitpid(p, &st, 0) < 0) return 2;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 3;
}
"#,
        &prog,
        false,
    );
    let mut cmd = Command::new(&prog);
    cmd.args([
        TORTURE,
        "child",
        "--file",
        file.path(),
        "--domain",
        domain.name(),
    ]);
    domain.protection(&lib()).apply(&mut cmd);
    let out = run(&mut cmd, 30);
    assert_child_in_domain("vfork+exec of a protected child", &domain, &out);
}

#[test]
fn exec_of_a_program_that_clears_its_environment_runs() {
    let domain = TempDomain::new();
    let mut cmd = Command::new("env");
    cmd.args(["-i", "/bin/sh", "-c", "echo cleared"]);
    domain.protection(&lib()).apply(&mut cmd);
    let out = run(&mut cmd, 30);
    assert_ok("env -i /bin/sh -c 'echo cleared'", &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cleared\n",
        "{}",
        out.describe()
    );
}

#[test]
fn hooks_called_from_another_librarys_constructor() {
    let domain = TempDomain::new();
    let file = DataFile::new("torture-ctor");
    let dir = Scratch::new("torture-ctor-lib");
    let ctor = dir.0.join("libctor.so");
    // Exit codes 90..97 tell which step failed; 97: the pipe saw the pwrite.
    gcc(
        r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((constructor)) static void early(void) {
    const char *path = getenv("CTOR_FILE");
    if (!path) return;
    static char orig[4096], got[4096];
    int fd = open(path, O_RDWR);
    if (fd < 0) _exit(90);
    if (pread(fd, orig, sizeof orig, 0) != (ssize_t)sizeof orig) _exit(91);
    int p[2];
    if (pipe(p)) _exit(92);
    loff_t off = 0;
    if (splice(fd, &off, p[1], NULL, sizeof orig, 0) != (ssize_t)sizeof orig) _exit(93);
    if (write(2, "", 0) != 0) _exit(94);
    if (pwrite(fd, "BBBBBBBBBBBBBBBB", 16, 100) != 16) _exit(95);
    size_t n = 0;
    while (n < sizeof got) {
        ssize_t r = read(p[0], got + n, sizeof got - n);
        if (r <= 0) _exit(96);
        n += (size_t)r;
    }
    if (memcmp(orig, got, sizeof got) != 0) _exit(97);
    close(p[0]); close(p[1]); close(fd);
}
"#,
        &ctor,
        true,
    );
    let mut cmd = Command::new("/bin/echo");
    cmd.arg("ran");
    domain.protection(&lib()).apply(&mut cmd);
    cmd.env(
        "LD_PRELOAD",
        format!("{} {}", ctor.display(), lib().display()),
    )
    .env("CTOR_FILE", file.path());
    let out = run(&mut cmd, 30);
    assert_ok(
        "a constructor (preloaded before libsplicecow.so) that splices, writes and pwrites",
        &out,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ran\n",
        "{}",
        out.describe()
    );
}
