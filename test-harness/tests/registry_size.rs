//! The registry's size is chosen by the process that creates it: a domain created with
//! `SPLICECOW_REGISTRY_PIPES=32` holds 32 pipes with live segments at once, and the 33rd
//! concurrently held pipe takes the copy path (counted in `copy_fallbacks_registry_full`)
//! with its bytes exact; a default domain holds them all zero-copy. A bad value prints
//! one `splicecow:` line from the creator only, and the default is used.
//!
//! A Python process under the preloaded library splices 4 KiB of a file into each of 40
//! pipes it keeps open and unread, overwrites the whole file, then reads every pipe: the
//! zero-copy pipes are settled before the overwrite, the overflow ones were copied, so
//! every pipe holds the file as it was.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use splicecow_test_harness::{
    counter, domain_stats, library_path, python3, run_with_timeout, TempDomain, TempFile,
};

/// How long any one process may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Pipes held at once.
const PIPES: usize = 40;
/// Bytes spliced into each pipe.
const CHUNK: usize = 4096;

/// argv[1]: the file, argv[2]: the number of pipes. Splices chunk i of the file into
/// pipe i, overwrites the file, reads every pipe and prints how many bytes differ from
/// the file as it was.
const HOLDER_PY: &str = r#"
import os, sys
path, n, chunk = sys.argv[1], int(sys.argv[2]), 4096
with open(path, "rb") as f:
    original = f.read(n * chunk)
fd = os.open(path, os.O_RDWR)
pipes = [os.pipe() for _ in range(n)]
for i, (r, w) in enumerate(pipes):
    if os.splice(fd, w, chunk, offset_src=i * chunk) != chunk:
        sys.exit("short splice")
os.pwrite(fd, b"B" * (n * chunk), 0)
bad = 0
for i, (r, w) in enumerate(pipes):
    got = os.read(r, chunk)
    want = original[i * chunk:(i + 1) * chunk]
    bad += sum(a != b for a, b in zip(got, want)) + abs(len(got) - len(want))
print(bad)
"#;

/// The preloadable library, or a failure that says how to build it.
fn lib() -> PathBuf {
    library_path().unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the holder in a fresh domain created with `SPLICECOW_REGISTRY_PIPES=size` (unset
/// for `None`); returns the mismatched bytes and the domain's counters.
fn hold_pipes(size: Option<&str>) -> (usize, serde_json::Value) {
    let file = TempFile::with_pattern("registry-size", PIPES * CHUNK).expect("file");
    let domain = TempDomain::new();
    let mut cmd = Command::new(python3());
    domain.protection(&lib()).apply(&mut cmd);
    if let Some(size) = size {
        cmd.env("SPLICECOW_REGISTRY_PIPES", size);
    }
    cmd.arg("-c")
        .arg(HOLDER_PY)
        .arg(file.path())
        .arg(PIPES.to_string());
    let out = run_with_timeout(&mut cmd, TIMEOUT).expect("holder");
    assert!(
        out.status.is_some_and(|s| s.success()),
        "holder: {}",
        out.describe()
    );
    let bad = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("holder's output: {}", out.describe()));
    (bad, domain_stats(domain.name()).expect("stats"))
}

#[test]
fn the_33rd_pipe_of_a_32_pipe_domain_takes_the_copy_path() {
    let (bad, stats) = hold_pipes(Some("32"));
    eprintln!("32-pipe domain, {PIPES} pipes held: {bad} bad bytes; {stats}");
    assert_eq!(bad, 0, "every pipe holds the file as it was: {stats}");
    assert_eq!(counter(&stats, "pipe_capacity"), Some(32), "{stats}");
    assert_eq!(counter(&stats, "file_capacity"), Some(64), "{stats}");
    assert_eq!(
        counter(&stats, "copy_fallbacks_registry_full"),
        Some((PIPES - 32) as u64),
        "pipes 33 to {PIPES} find no record: {stats}"
    );
    let zero_copy = counter(&stats, "bytes_zero_copy");
    assert_eq!(zero_copy, Some((32 * CHUNK) as u64), "{stats}");
    let copied = counter(&stats, "bytes_copy_path");
    assert_eq!(copied, Some(((PIPES - 32) * CHUNK) as u64), "{stats}");

    let (bad, stats) = hold_pipes(None);
    eprintln!("default domain, {PIPES} pipes held: {bad} bad bytes; {stats}");
    assert_eq!(bad, 0, "{stats}");
    assert_eq!(counter(&stats, "pipe_capacity"), Some(2048), "{stats}");
    assert_eq!(
        counter(&stats, "copy_fallbacks_registry_full"),
        Some(0),
        "{stats}"
    );
    let zero_copy = counter(&stats, "bytes_zero_copy");
    assert_eq!(zero_copy, Some((PIPES * CHUNK) as u64), "{stats}");
}

#[test]
fn a_bad_size_warns_once_from_the_creator_and_the_default_is_used() {
    let domain = TempDomain::new();
    let mut cmd = Command::new(python3());
    domain.protection(&lib()).apply(&mut cmd);
    // The creator and two joiners all see the bad value; only the creator reads it.
    cmd.env("SPLICECOW_REGISTRY_PIPES", "lots").arg("-c").arg(
        "import subprocess, sys\n\
             for _ in range(2):\n    subprocess.run([sys.executable, '-c', 'pass'], check=True)\n\
             print('done')",
    );
    let out = run_with_timeout(&mut cmd, TIMEOUT).expect("python");
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{}",
        out.describe()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "splicecow: SPLICECOW_REGISTRY_PIPES=\"lots\" is not a whole number from 16 to \
             1048576; using 2048"
        ],
        "{stderr}"
    );
    let stats = domain_stats(domain.name()).expect("stats");
    assert_eq!(counter(&stats, "pipe_capacity"), Some(2048), "{stats}");
}
