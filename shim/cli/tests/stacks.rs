//! Detect mode's call stacks end to end: a C program whose `produce()` splices a file
//! into a pipe and whose `corrupt()` then pwrites the file, run under `splicecow run
//! --mode detect` with the real library, built with debug information (functions and
//! `file:line`), without it (symbol + offset) and stripped (module + offset); the same
//! splice and write from signal handlers and from a forked child; SARIF output; and
//! `splicecow symbolize` of a report written by the library alone.
//!
//! Needs `cargo build --release` first (the library beside the binary) and gcc.

mod common;

use common::{clean, text, Scratch, TestDomain};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_splicecow");

/// The program. `MODE` (argv[2]): `plain` (splice, then pwrite), `signal` (the splice
/// runs in a SIGUSR1 handler, the pwrite in a SIGUSR2 handler), `fork` (the pwrite runs
/// in a forked child), `hold` (splice, say `ready`, wait for the end of stdin, read the
/// pipe), `write` (only the pwrite, into the existing file). The lines named in the tests are marked `LINE:NAME`.
const PROGRAM: &str = r#"#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int fd, pipefd[2];

__attribute__((noinline)) void produce(void) {
    loff_t off = 0;
    ssize_t n = splice(fd, &off, pipefd[1], NULL, 65536, 0); /* LINE:splice */
    if (n != 65536) { perror("splice"); exit(1); }
}

__attribute__((noinline)) void corrupt(void) {
    char x[16];
    memset(x, 'X', sizeof x);
    if (pwrite(fd, x, sizeof x, 4096) != sizeof x) { perror("pwrite"); exit(1); } /* LINE:pwrite */
}

__attribute__((noinline)) void on_usr1(int sig) { (void)sig; produce(); }
__attribute__((noinline)) void on_usr2(int sig) { (void)sig; corrupt(); }

int main(int argc, char **argv) {
    const char *mode = argv[2];
    if (!strcmp(mode, "write")) {
        fd = open(argv[1], O_RDWR);
        corrupt();
        return 0;
    }
    fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    static char buf[65536];
    memset(buf, 'a', sizeof buf);
    if (fd < 0 || write(fd, buf, sizeof buf) != sizeof buf || pipe(pipefd)) return 1;
    fcntl(pipefd[1], F_SETPIPE_SZ, 1 << 20);
    if (!strcmp(mode, "signal")) {
        signal(SIGUSR1, on_usr1);
        signal(SIGUSR2, on_usr2);
        raise(SIGUSR1);
        raise(SIGUSR2);
    } else if (!strcmp(mode, "hold")) {
        produce();
        printf("ready\n");
        fflush(stdout);
        char c;
        while (read(0, &c, 1) > 0) {}
    } else if (!strcmp(mode, "fork")) {
        produce();
        pid_t child = fork();
        if (child == 0) { corrupt(); _exit(0); }
        int st;
        waitpid(child, &st, 0);
    } else {
        produce();
        corrupt();
    }
    if (read(pipefd[0], buf, sizeof buf) != sizeof buf) return 1;
    unlink(argv[1]);
    return 0;
}
"#;

/// The source line of the marker `LINE:name` in the C program.
fn line_of(name: &str) -> u64 {
    line_in(PROGRAM, name)
}

/// The line of the marker `LINE:name` in `source`.
fn line_in(source: &str, name: &str) -> u64 {
    let marker = format!("LINE:{name}");
    source
        .lines()
        .position(|l| l.contains(&marker))
        .map(|i| i as u64 + 1)
        .unwrap()
}

/// Builds the program in `dir` with `flags`, stripped when asked.
fn build(dir: &Path, name: &str, flags: &[&str], strip: bool) -> PathBuf {
    let src = dir.join("conflict.c");
    std::fs::write(&src, PROGRAM).unwrap();
    let exe = dir.join(name);
    let o = clean("gcc", flags)
        .args(["-O1", "-Wall", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("gcc is needed by this test");
    assert!(o.status.success(), "gcc: {}", text(&o.stderr));
    if strip {
        let o = clean("strip", &[]).arg(&exe).output().expect("strip");
        assert!(o.status.success(), "strip: {}", text(&o.stderr));
    }
    exe
}

/// Runs `cmd`, failing the test if it has not finished within 60 s (a deadlock).
fn finish(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "no exit within 60 s: deadlock? {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `splicecow run --mode detect --report REPORT -- EXE DATA MODE`: stderr and the report.
fn detect(dir: &Path, exe: &Path, mode: &str, report: &str) -> (String, String) {
    detect_with(dir, exe, mode, report, &[])
}

/// [`detect`] with more environment variables.
fn detect_with(
    dir: &Path,
    exe: &Path,
    mode: &str,
    report: &str,
    env: &[(&str, &str)],
) -> (String, String) {
    let report = dir.join(report);
    let domain = TestDomain::new("stacks");
    let mut cmd = clean(BIN, &domain.run_args(&["--mode", "detect", "--report"]));
    cmd.envs(env.iter().copied());
    cmd.arg(&report)
        .arg("--")
        .arg(exe)
        .arg(dir.join("data"))
        .arg(mode);
    let o = finish(cmd);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{}: {err}", o.status);
    (err, std::fs::read_to_string(&report).unwrap_or_default())
}

fn lines(report: &str) -> Vec<Value> {
    report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The one conflict of a report.
fn only(report: &str) -> Value {
    let l = lines(report);
    assert_eq!(l.len(), 1, "{report}");
    l.into_iter().next().unwrap()
}

/// The frames of a stack.
fn frames(stack: &Value) -> &[Value] {
    stack.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The first frame naming `function`.
fn frame<'a>(stack: &'a Value, function: &str) -> Option<&'a Value> {
    frames(stack).iter().find(|f| f["function"] == function)
}

#[test]
fn with_debug_information_both_stacks_name_functions_and_lines() {
    let s = Scratch::new("stackstest", "debug");
    let exe = build(&s.0, "conflict-g", &["-g"], false);
    let (err, report) = detect(&s.0, &exe, "plain", "report.jsonl");
    let v = only(&report);
    assert_eq!(v["count"], 1, "{v}");
    let mutation = frame(&v["stack"], "corrupt").unwrap_or_else(|| panic!("{v}"));
    assert!(
        mutation["file"].as_str().unwrap().ends_with("conflict.c"),
        "{v}"
    );
    assert_eq!(mutation["line"], line_of("pwrite"), "{v}");
    assert_eq!(
        frames(&v["stack"])[0]["function"],
        "corrupt",
        "the hooks are left out: {v}"
    );
    let splice = frame(&v["segment"]["stack"], "produce").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(splice["line"], line_of("splice"), "{v}");
    assert!(frame(&v["segment"]["stack"], "main").is_some(), "{v}");
    let file = mutation["file"].as_str().unwrap();
    for needle in [
        "WARNING: splicecow: splice-then-pwrite on ".to_string(),
        format!("#0 corrupt {file}:{}", line_of("pwrite")),
        format!("#0 produce {file}:{}", line_of("splice")),
        format!(
            "SUMMARY: splicecow: splice-then-pwrite at {file}:{} in corrupt",
            line_of("pwrite")
        ),
    ] {
        assert!(err.contains(&needle), "{needle:?} missing: {err}");
    }
}

#[test]
fn without_debug_information_frames_are_symbols_and_stripped_they_are_offsets() {
    let s = Scratch::new("stackstest", "nodebug");
    let exe = build(&s.0, "conflict", &[], false);
    let (err, report) = detect(&s.0, &exe, "plain", "report.jsonl");
    let v = only(&report);
    let top = &frames(&v["stack"])[0];
    assert!(
        top["symbol"].as_str().unwrap().starts_with("corrupt+0x"),
        "{v}"
    );
    assert!(top.get("line").is_none(), "{v}");
    let splice_top = &frames(&v["segment"]["stack"])[0];
    assert!(
        splice_top["symbol"]
            .as_str()
            .unwrap()
            .starts_with("produce+0x"),
        "{v}"
    );
    assert!(
        err.contains("SUMMARY: splicecow: splice-then-pwrite at corrupt+0x"),
        "{err}"
    );

    let exe = build(&s.0, "conflict-stripped", &[], true);
    let (err, report) = detect(&s.0, &exe, "plain", "stripped.jsonl");
    let v = only(&report);
    for stack in [&v["stack"], &v["segment"]["stack"]] {
        let top = &frames(stack)[0];
        assert_eq!(top["module"], exe.to_str().unwrap(), "{v}");
        assert!(top["offset"].as_str().unwrap().starts_with("0x"), "{v}");
        assert!(
            top.get("symbol").is_none() && top.get("function").is_none(),
            "{v}"
        );
    }
    let needle = format!(
        "SUMMARY: splicecow: splice-then-pwrite at ({}+0x",
        exe.display()
    );
    assert!(err.contains(&needle), "{needle} missing: {err}");
}

#[test]
fn stacks_are_captured_in_signal_handlers_and_forked_children() {
    let s = Scratch::new("stackstest", "signals");
    let exe = build(&s.0, "conflict-g", &["-g"], false);
    let (_, report) = detect(&s.0, &exe, "signal", "signal.jsonl");
    let v = only(&report);
    // Both walks step through the signal frame into the code the signal interrupted.
    for (stack, handler, inner) in [
        (&v["stack"], "on_usr2", "corrupt"),
        (&v["segment"]["stack"], "on_usr1", "produce"),
    ] {
        for f in [inner, handler, "main"] {
            assert!(frame(stack, f).is_some(), "{f} missing: {v}");
        }
    }

    let (_, report) = detect(&s.0, &exe, "fork", "fork.jsonl");
    let v = only(&report);
    assert_ne!(
        v["pid"], v["segment"]["splicer_pid"],
        "the child wrote: {v}"
    );
    assert!(frame(&v["stack"], "corrupt").is_some(), "{v}");
    assert!(frame(&v["segment"]["stack"], "produce").is_some(), "{v}");
}

/// The same conflict in Rust: `produce` splices (libc's `splice`, which std does not
/// wrap), `corrupt` writes through std (`FileExt::write_all_at`, which calls `pwrite64`).
const RUST_PROGRAM: &str = r#"
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

extern "C" {
    fn splice(fd_in: i32, off_in: *mut i64, fd_out: i32, off_out: *mut i64, len: usize, flags: u32) -> isize;
    fn pipe(fds: *mut i32) -> i32;
}

#[inline(never)]
fn produce(file: &File, pipe_w: i32) {
    let mut off = 0i64;
    let n = unsafe { splice(file.as_raw_fd(), &mut off, pipe_w, std::ptr::null_mut(), 65536, 0) }; // LINE:splice
    assert_eq!(n, 65536);
}

#[inline(never)]
fn corrupt(file: &File) {
    file.write_all_at(&[b'X'; 16], 4096).unwrap(); // LINE:pwrite
}

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    file.write_all_at(&vec![b'a'; 65536], 0).unwrap();
    let mut fds = [0i32; 2];
    assert_eq!(unsafe { pipe(fds.as_mut_ptr()) }, 0);
    produce(&file, fds[1]);
    corrupt(&file);
    let mut reader = unsafe { File::from_raw_fd(fds[0]) };
    let mut back = vec![0u8; 65536];
    reader.read_exact(&mut back).unwrap();
    std::fs::remove_file(&path).unwrap();
}
"#;

#[test]
fn a_rust_program_through_std_names_its_functions_and_lines() {
    let s = Scratch::new("stackstest", "rust");
    let src = s.0.join("conflict.rs");
    std::fs::write(&src, RUST_PROGRAM).unwrap();
    let exe = s.0.join("conflict-rs");
    let o = clean(
        "rustc",
        &["--edition", "2021", "-C", "opt-level=2", "-g", "-o"],
    )
    .arg(&exe)
    .arg(&src)
    .output()
    .expect("rustc runs");
    assert!(o.status.success(), "rustc: {}", text(&o.stderr));
    let report = s.0.join("report.jsonl");
    let domain = TestDomain::new("stacks-rust");
    let mut cmd = clean(BIN, &domain.run_args(&["--mode", "detect", "--report"]));
    cmd.arg(&report).arg("--").arg(&exe).arg(s.0.join("data"));
    let o = finish(cmd);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v = only(&std::fs::read_to_string(&report).unwrap());
    let line = |name: &str| line_in(RUST_PROGRAM, name);
    for (stack, function, at) in [
        (&v["stack"], "conflict::corrupt", line("pwrite")),
        (&v["segment"]["stack"], "conflict::produce", line("splice")),
    ] {
        let f = frame(stack, function).unwrap_or_else(|| panic!("{function} missing: {v}"));
        assert!(f["file"].as_str().unwrap().ends_with("conflict.rs"), "{v}");
        assert_eq!(f["line"], at, "{v}");
    }
    // The frames between the program and the hook are std's.
    assert!(
        frames(&v["stack"]).iter().any(|f| f["function"]
            .as_str()
            .is_some_and(|n| n.starts_with("std::"))),
        "{v}"
    );
    let summary = format!(
        "SUMMARY: splicecow: splice-then-pwrite at {}:{} in conflict::corrupt",
        src.display(),
        line("pwrite")
    );
    assert!(err.contains(&summary), "{summary} missing: {err}");
}

#[test]
fn stacks_can_be_turned_off() {
    let s = Scratch::new("stackstest", "off");
    let exe = build(&s.0, "conflict-g", &["-g"], false);
    let (err, report) = detect_with(
        &s.0,
        &exe,
        "plain",
        "report.jsonl",
        &[("SPLICECOW_STACKS", "0")],
    );
    let v = only(&report);
    assert_eq!(v["stack"], serde_json::json!([]), "{v}");
    assert_eq!(v["segment"]["stack"], serde_json::json!([]), "{v}");
    assert!(err.contains("(no stack recorded)"), "{err}");
}

#[test]
fn a_protect_domains_write_into_a_detect_domains_splice_gets_both_stacks() {
    let s = Scratch::new("stackstest", "cross");
    let exe = build(&s.0, "conflict-g", &["-g"], false);
    let lib = Path::new(BIN).parent().unwrap().join("libsplicecow.so");
    let (detecting, protecting) = (
        format!("stackstest-{}-detect", std::process::id()),
        format!("stackstest-{}-protect", std::process::id()),
    );
    let report = s.0.join("cross.jsonl");
    let data = s.0.join("data");
    let preloaded = |mode: &str, domain: &str, what: &str| {
        let mut c = clean(&exe, &[]);
        c.arg(&data)
            .arg(what)
            .env("LD_PRELOAD", &lib)
            .env("SPLICECOW_MODE", mode)
            .env("SPLICECOW_DOMAIN", domain)
            .env("SPLICECOW_REPORT", &report);
        c
    };
    let mut holder = preloaded("detect", &detecting, "hold")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready, "ready\n");
    let writer = finish(preloaded("protect", &protecting, "write"));
    drop(holder.stdin.take());
    let held = holder.wait().unwrap();
    for d in [&detecting, &protecting] {
        let _ = splicecow_registry::Registry::unlink(d);
    }
    assert!(
        writer.status.success() && held.success(),
        "{}",
        text(&writer.stderr)
    );
    let o = finish({
        let mut c = clean(BIN, &["symbolize"]);
        c.arg(&report);
        c
    });
    let v = only(&text(&o.stdout));
    assert_eq!(v["domain"], protecting.as_str(), "{v}");
    assert_eq!(v["segment"]["domain"], detecting.as_str(), "{v}");
    assert_eq!(frames(&v["stack"])[0]["function"], "corrupt", "{v}");
    assert_eq!(
        frames(&v["segment"]["stack"])[0]["function"],
        "produce",
        "{v}"
    );
}

#[test]
fn a_sarif_report_has_one_result_located_at_the_mutation() {
    let s = Scratch::new("stackstest", "sarif");
    let exe = build(&s.0, "conflict-g", &["-g"], false);
    let (_, report) = detect(&s.0, &exe, "plain", "report.sarif");
    let log: Value = serde_json::from_str(&report).unwrap_or_else(|e| panic!("{e}: {report}"));
    assert_eq!(log["version"], "2.1.0");
    let results = log["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{log}");
    let loc = &results[0]["locations"][0]["physicalLocation"];
    assert!(
        loc["artifactLocation"]["uri"]
            .as_str()
            .unwrap()
            .ends_with("/conflict.c"),
        "{log}"
    );
    assert_eq!(loc["region"]["startLine"], line_of("pwrite"), "{log}");
    assert_eq!(results[0]["stacks"].as_array().unwrap().len(), 2, "{log}");
}

#[test]
fn symbolize_resolves_a_report_the_library_wrote_and_merges_repeats() {
    let s = Scratch::new("stackstest", "symbolize");
    let exe = build(&s.0, "conflict-g", &["-g"], false);
    let lib = Path::new(BIN).parent().unwrap().join("libsplicecow.so");
    let domain = format!("stackstest-{}", std::process::id());
    let raw = s.0.join("raw.jsonl");
    // Twice, preloaded by hand: two raw lines from the same pair of call sites.
    for _ in 0..2 {
        let mut cmd = clean(&exe, &[]);
        cmd.arg(s.0.join("data"))
            .arg("plain")
            .env("LD_PRELOAD", &lib)
            .env("SPLICECOW_MODE", "detect")
            .env("SPLICECOW_DOMAIN", &domain)
            .env("SPLICECOW_REPORT", &raw);
        let o = finish(cmd);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let _ = splicecow_registry::Registry::unlink(&domain);
    let raw_text = std::fs::read_to_string(&raw).unwrap();
    let raw_lines = lines(&raw_text);
    assert_eq!(raw_lines.len(), 2, "{raw_text}");
    assert!(
        raw_lines[0]["stack"][0].get("function").is_none(),
        "raw: {raw_text}"
    );
    let o = finish({
        let mut c = clean(BIN, &["symbolize"]);
        c.arg(&raw);
        c
    });
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = only(&text(&o.stdout));
    assert_eq!(v["count"], 2, "{v}");
    assert_eq!(frames(&v["stack"])[0]["function"], "corrupt", "{v}");
    assert!(text(&o.stderr).contains("(2 times)"), "{}", text(&o.stderr));
}
