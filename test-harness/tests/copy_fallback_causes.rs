//! Differential test: a splice from a file that another process of the domain has
//! mapped `MAP_SHARED` + `PROT_WRITE` takes the copy path, and the domain counts it under
//! its cause, `copy_fallbacks_shared_mapping` (not `copy_fallbacks_registry_full`).
//!
//! A Python mapper maps the file and waits; a second process splices 64 KiB of the file
//! into the test's pipe; then the mapper stores 16 `B`s through its mapping (a change no
//! hook can see before it happens) and the test reads the pipe. Without the shim the
//! reader gets the stored bytes (if this kernel does not show it, the test says so and
//! goes on); with the shim the splice copied, so the bytes are exactly the original ones.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use splicecow_test_harness::{
    compare, counter, domain_stats, library_path, pattern, pipe, python3, run_with_timeout,
    wait_with_timeout, Protection, TempDomain, TempFile,
};

/// How long any one process may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes spliced.
const LEN: usize = 64 * 1024;

/// Maps the first 64 KiB of argv[1] shared and writable, says `mapped`, stores 16 `B`s
/// at offset 100 after a line on stdin, says `stored`, and exits at stdin's end.
const MAPPER_PY: &str = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 65536, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
print("mapped", flush=True)
sys.stdin.readline()
m[100:116] = b"B" * 16
print("stored", flush=True)
sys.stdin.read()
"#;

/// Splices the first 64 KiB of argv[1] into the pipe at path argv[2].
const SPLICER_PY: &str = r#"
import os, sys
f = os.open(sys.argv[1], os.O_RDONLY)
p = os.open(sys.argv[2], os.O_WRONLY)
n = 0
while n < 65536:
    k = os.splice(f, p, 65536 - n, offset_src=n)
    if k <= 0:
        sys.exit("short splice")
    n += k
"#;

/// The preloadable library, or a failure that says how to build it.
fn lib() -> PathBuf {
    library_path().unwrap_or_else(|e| panic!("{e}"))
}

/// The mapper, killed if the test leaves early.
struct Mapper(Child);

impl Drop for Mapper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads one line the mapper printed; fails if it is not `want`.
fn expect_line(lines: &mut impl BufRead, want: &str) {
    let mut line = String::new();
    lines.read_line(&mut line).expect("read mapper");
    assert_eq!(line.trim(), want, "mapper said {line:?}");
}

/// Runs the scenario under `prot`; returns the mismatched bytes the reader got.
fn mapped_then_spliced(prot: &Protection) -> usize {
    let file = TempFile::with_pattern("shared-map", 256 << 10).expect("file");
    let mut cmd = Command::new(python3());
    prot.apply(&mut cmd)
        .arg("-c")
        .arg(MAPPER_PY)
        .arg(file.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut mapper = Mapper(cmd.spawn().expect("spawn mapper"));
    let mut to_mapper = mapper.0.stdin.take().expect("mapper stdin");
    let mut from_mapper = BufReader::new(mapper.0.stdout.take().expect("mapper stdout"));
    expect_line(&mut from_mapper, "mapped");

    let (r, w) = pipe().expect("pipe");
    let via_proc = format!("/proc/{}/fd/{}", std::process::id(), w.as_raw_fd());
    let mut splicer = Command::new(python3());
    prot.apply(&mut splicer)
        .arg("-c")
        .arg(SPLICER_PY)
        .arg(file.path())
        .arg(&via_proc);
    let out = run_with_timeout(&mut splicer, TIMEOUT).expect("splicer");
    assert!(
        out.status.is_some_and(|s| s.success()),
        "splicer ({}): {}",
        prot.label(),
        out.describe()
    );

    writeln!(to_mapper, "store").expect("tell mapper");
    expect_line(&mut from_mapper, "stored");
    drop(to_mapper);
    let status = wait_with_timeout(&mut mapper.0, TIMEOUT).expect("wait mapper");
    assert!(
        status.is_some_and(|s| s.success()),
        "mapper ({}): {status:?}",
        prot.label()
    );

    drop(w);
    let mut got = Vec::new();
    File::from(r).read_to_end(&mut got).expect("read pipe");
    compare(&pattern(LEN), &got).mismatched_bytes
}

#[test]
fn splice_of_a_file_with_a_shared_writable_mapping_counts_as_shared_mapping_fallback() {
    let lib = lib();
    let unprotected = mapped_then_spliced(&Protection::Unprotected);
    let domain = TempDomain::new();
    let protected = mapped_then_spliced(&domain.protection(&lib));
    let stats = domain_stats(domain.name()).expect("stats");
    eprintln!(
        "shared writable mapping, then splice, then a store: unprotected {unprotected} \
         mismatched bytes{}; protected {protected}; stats {stats}",
        if unprotected == 0 {
            " (could not reproduce the corruption on this kernel)"
        } else {
            ""
        }
    );
    assert_eq!(protected, 0, "protected reader's mismatched bytes: {stats}");
    let shared = counter(&stats, "copy_fallbacks_shared_mapping");
    let full = counter(&stats, "copy_fallbacks_registry_full");
    let all = counter(&stats, "copy_fallbacks");
    assert!(
        shared.is_some_and(|n| n >= 1),
        "copy_fallbacks_shared_mapping: {stats}"
    );
    assert_eq!(full, Some(0), "copy_fallbacks_registry_full: {stats}");
    assert_eq!(
        all, shared,
        "copy_fallbacks is the sum of its causes: {stats}"
    );
}
