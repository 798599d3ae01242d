//! Differential tests: a blocking pipe→pipe relay (`splice` or `tee`) that starts while
//! nothing is in flight in its domain and waits for data still carries the registry's
//! records of the bytes it moves.
//!
//! The relay's first call blocks on an empty source pipe. Only then does another process
//! of the domain splice a file into that source pipe; the relay wakes up and moves (or
//! tees) the page-cache bytes into its destination pipe; a third process `pwrite`s into
//! the spliced range; only after that does the final reader (`cat`) start. Without the
//! shim the reader gets the 16 new bytes (if this kernel does not show it, the test says
//! so and goes on); with the shim the bytes must be exactly the ones spliced. The relay
//! used to look at the domain's live count once, before it blocked: nothing was live, so
//! it never carried the segments and the `pwrite` found nothing to settle.
//!
//! Relays: Python's `os.splice(0, 1, n)` loop, a C `tee` loop (compiled with gcc at test
//! time; Python has no `os.tee`), and uutils `cat` in the middle of a shell pipeline
//! (`splicer | coreutils cat | (sleep; cat > out)`, everything in one domain).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use splicecow_test_harness::{
    compare, compile_c, library_path, pattern, pipe, python3, run_with_timeout, strip_shim_env,
    wait_for_syscall, wait_with_timeout, Protection, ScratchDir, TempDomain, TempFile,
};

/// Bytes spliced from the file.
const LEN: usize = 64 * 1024;
/// When the splicer starts, after the relay.
const SPLICER_AT: Duration = Duration::from_millis(300);
/// When the `pwrite` runs.
const PWRITE_AT: Duration = Duration::from_millis(600);
/// System calls a relay waiting for its source blocks in: the kernel's blocking `splice`
/// or `tee` unshimmed; shimmed, the shim waits for readiness between non-blocking tries
/// (`ppoll` today; the other waits are accepted too).
const RELAY_WAITS: &[libc::c_long] = &[
    libc::SYS_splice,
    libc::SYS_tee,
    libc::SYS_ppoll,
    libc::SYS_poll,
    libc::SYS_pselect6,
    libc::SYS_select,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
];
/// How long any one process may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Where uutils `cat` lives on Debian/Ubuntu (`apt-get install rust-coreutils`).
const UUTILS_CAT: &str = "/usr/lib/cargo/bin/coreutils/cat";

/// The preloadable library, or a failure that says how to build it.
fn lib() -> PathBuf {
    library_path().unwrap_or_else(|e| panic!("{e}"))
}

/// Relays stdin (a pipe) to stdout (a pipe) with blocking `os.splice` until EOF.
const SPLICE_RELAY_PY: &str = r#"
import os
while os.splice(0, 1, 1 << 20):
    pass
"#;

/// Relays stdin to stdout with blocking `tee`, consuming what it teed with `read`.
const TEE_RELAY_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
static char buf[1 << 16];
int main(void) {
    for (;;) {
        ssize_t n = tee(0, 1, 1 << 20, 0);
        if (n < 0) { perror("tee"); return 2; }
        if (n == 0) return 0;
        while (n > 0) {
            ssize_t r = read(0, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf);
            if (r <= 0) { perror("read"); return 2; }
            n -= r;
        }
    }
}
"#;

/// Sleeps argv[2] seconds, then splices the first 64 KiB of argv[1] into stdout.
const SPLICER_PY: &str = r#"
import os, sys, time
time.sleep(float(sys.argv[2]))
fd = os.open(sys.argv[1], os.O_RDONLY)
n = 0
while n < 65536:
    k = os.splice(fd, 1, 65536 - n, offset_src=n)
    if k <= 0:
        sys.exit("short splice")
    n += k
"#;

/// Writes 16 `B`s at offset 100 of argv[1].
const PWRITE_PY: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
assert os.pwrite(fd, b"B" * 16, 100) == 16
"#;

/// The compiled `TEE_RELAY_C`.
fn tee_relay() -> PathBuf {
    static PROGRAM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| compile_c("tee-relay", TEE_RELAY_C))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn python(script: &str) -> Command {
    let mut cmd = Command::new(python3());
    cmd.arg("-c").arg(script);
    cmd
}

/// Waits for `child`; fails on a hang or a failure.
fn finish(what: &str, child: &mut Child) {
    let status = wait_with_timeout(child, TIMEOUT).expect("wait");
    assert!(
        status.is_some(),
        "HANG: {what} did not finish within {TIMEOUT:?}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "{what} failed: {status:?}"
    );
}

/// Sleeps until `at` after `start`.
fn sleep_until(start: Instant, at: Duration) {
    if let Some(left) = at.checked_sub(start.elapsed()) {
        thread::sleep(left);
    }
}

/// Runs the relay `relay` (its stdin and stdout are pipes) under `prot`, with the
/// splicer and the `pwrite` as described in the module doc; returns the mismatched
/// bytes of what an unshimmed `cat` read from the relay's output after the `pwrite`.
fn relay_run(relay: &dyn Fn() -> Command, prot: &Protection) -> usize {
    let file = TempFile::with_pattern("relay", 256 << 10).expect("file");
    let scratch = ScratchDir::new("relay").expect("scratch dir");
    let out = scratch.join("out");
    let (src_r, src_w) = pipe().expect("pipe");
    let (dst_r, dst_w) = pipe().expect("pipe");
    let start = Instant::now();
    let mut relay_cmd = relay();
    prot.apply(&mut relay_cmd)
        .stdin(Stdio::from(src_r))
        .stdout(Stdio::from(dst_w))
        .stderr(Stdio::inherit());
    let mut relay = relay_cmd.spawn().expect("spawn relay");
    drop(relay_cmd);
    // The relay must be blocked, waiting for data, before anything is spliced.
    let blocked = wait_for_syscall(&mut relay, RELAY_WAITS, TIMEOUT).expect("watch relay");
    assert!(
        blocked,
        "the relay ({}) never blocked waiting for its source",
        prot.label()
    );
    sleep_until(start, SPLICER_AT);
    let mut splicer_cmd = python(SPLICER_PY);
    prot.apply(&mut splicer_cmd)
        .arg(file.path())
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::from(src_w))
        .stderr(Stdio::inherit());
    let mut splicer = splicer_cmd.spawn().expect("spawn splicer");
    drop(splicer_cmd);
    finish("splicer", &mut splicer);
    sleep_until(start, PWRITE_AT);
    let mut pwrite = python(PWRITE_PY);
    prot.apply(&mut pwrite).arg(file.path());
    let done = run_with_timeout(&mut pwrite, TIMEOUT).expect("pwrite");
    assert!(
        done.status.is_some_and(|s| s.success()),
        "pwrite: {}",
        done.describe()
    );
    // The final reader starts only now, after the pwrite, unshimmed.
    let mut reader = Command::new("cat");
    strip_shim_env(&mut reader)
        .stdin(Stdio::from(dst_r))
        .stdout(File::create(&out).expect("out file"))
        .stderr(Stdio::inherit());
    let mut reader_child = reader.spawn().expect("spawn cat");
    drop(reader);
    finish("relay", &mut relay);
    finish("cat > out", &mut reader_child);
    let got = std::fs::read(&out).expect("read out");
    compare(&pattern(LEN), &got).mismatched_bytes
}

/// Runs `run(prot)` without and with the shim; the protected run must be exact.
fn differential(what: &str, run: impl Fn(&Protection) -> usize) {
    let lib = lib();
    let unprotected = run(&Protection::Unprotected);
    let domain = TempDomain::new();
    let protected = run(&domain.protection(&lib));
    let stats = splicecow_test_harness::domain_stats(domain.name()).unwrap_or_default();
    eprintln!(
        "{what}: unprotected {unprotected} mismatched bytes{}; protected {protected}; stats {stats}",
        if unprotected == 0 {
            " (could not reproduce the corruption on this kernel)"
        } else {
            ""
        }
    );
    assert_eq!(
        protected, 0,
        "{what}: the final reader got {protected} bytes that differ from what was spliced \
         (stats {stats})"
    );
}

#[test]
fn blocking_splice_relay_started_before_any_splice_carries_the_segments() {
    differential("blocking os.splice pipe->pipe relay", |prot| {
        relay_run(&|| python(SPLICE_RELAY_PY), prot)
    });
}

#[test]
fn blocking_tee_relay_started_before_any_splice_carries_the_segments() {
    let program = tee_relay();
    differential("blocking tee relay", |prot| {
        relay_run(&|| Command::new(&program), prot)
    });
}

/// The shell pipeline `splicer | coreutils cat | (sleep 1.5; cat > out)` with a
/// `pwrite` at 0.9 s, all under `prot`; returns the mismatched bytes of `out`.
fn pipeline_run(prot: &Protection, scratch: &Path) -> usize {
    let file = TempFile::with_pattern("relay-pipeline", 256 << 10).expect("file");
    let out = scratch.join("out");
    let splicer = scratch.join("splicer.py");
    let pwrite = scratch.join("pwrite.py");
    std::fs::write(&splicer, SPLICER_PY).expect("write splicer");
    std::fs::write(&pwrite, PWRITE_PY).expect("write pwrite");
    let mut sh = Command::new("sh");
    prot.apply(&mut sh)
        .arg("-c")
        .arg(
            r#""$1" "$2" "$4" 0.3 | "$5" | (sleep 1.5; exec cat > "$6") &
sleep 0.9
"$1" "$3" "$4" || exit 1
wait $! || exit 1"#,
        )
        .arg("sh")
        .arg(python3())
        .arg(&splicer)
        .arg(&pwrite)
        .arg(file.path())
        .arg(UUTILS_CAT)
        .arg(&out);
    let done = run_with_timeout(&mut sh, TIMEOUT).expect("sh");
    assert!(
        done.status.is_some_and(|s| s.success()),
        "pipeline ({}): {}",
        prot.label(),
        done.describe()
    );
    let got = std::fs::read(&out).expect("read out");
    compare(&pattern(LEN), &got).mismatched_bytes
}

#[test]
fn uutils_cat_in_a_pipeline_started_before_the_splicer_carries_the_segments() {
    assert!(
        Path::new(UUTILS_CAT).exists(),
        "{UUTILS_CAT} not found: install it (`apt-get install rust-coreutils`)"
    );
    differential(
        "sh -c 'splicer | coreutils cat | (sleep 1.5; cat > out)' with a pwrite at 0.9 s",
        |prot| {
            let scratch = ScratchDir::new("relay-pipeline").expect("scratch dir");
            pipeline_run(prot, scratch.path())
        },
    );
}
