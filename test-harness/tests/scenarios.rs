//! Differential scenario tests: every hazard runs twice, without the shim (to show the
//! corruption on this kernel) and with `libsplicecow.so` preloaded (must be byte-exact).
//!
//! Nothing is built here: the library is taken from `$SPLICECOW_LIB`, else
//! `target/release/libsplicecow.so`, else `target/debug/libsplicecow.so`; run
//! `cargo build --release` first. The scenario tables are written to
//! `target/scenario-table*.md` and to stderr.
//!
//! Real programs: checked by hand with `strace -f -e trace=splice` (pv 1.6.20, uutils
//! coreutils 0.0.17 on Debian): `pv -q FILE | ...` calls `splice(file, NULL, 1, NULL,
//! 131072, SPLICE_F_MORE)` straight into its stdout pipe, and `coreutils cat FILE | ...`
//! calls `splice(file, NULL, own_pipe_w, ..)` then `splice(own_pipe_r, NULL, 1, ..)`, so
//! up to two pipes' worth of file pages are in flight at once.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use splicecow_registry::env as names;
use splicecow_test_harness::{
    all_values, compare, domain_stats, find_program, inode, library_path, pipe, queued_in_pipes_of,
    run_piped, run_with_timeout, strip_shim_env, target_dir, value_name, wait_for_fionread,
    wait_with_timeout, Api, Family, Mutation, Mutator, Protection, ScenarioReport, TempDomain,
    TempFile, XfsMount, DEFAULT_SPLICE_LEN,
};

/// How long one scenario process may take.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(30);
/// Parallel scenario runners (each is mostly waiting on child processes).
const WORKERS: usize = 4;
/// Size of the file real programs copy.
const REAL_FILE_LEN: usize = 4 << 20;

/// The preloadable library, or a failure that says how to build it.
fn lib() -> PathBuf {
    library_path().unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the `scenario` binary once and parses its report.
fn scenario(
    api: Api,
    mutation: Mutation,
    mutator: Mutator,
    size: usize,
    prot: &Protection,
) -> Result<ScenarioReport, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scenario"));
    cmd.arg("--api")
        .arg(value_name(&api))
        .arg("--mutation")
        .arg(value_name(&mutation))
        .arg("--mutator")
        .arg(value_name(&mutator))
        .arg("--size")
        .arg(size.to_string());
    prot.apply(&mut cmd);
    let out = run_with_timeout(&mut cmd, SCENARIO_TIMEOUT).map_err(|e| e.to_string())?;
    if out.status.map(|s| s.success()) != Some(true) {
        return Err(out.describe());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", out.describe()))
}

/// Describes an unprotected result for the table.
fn describe_unprotected(r: &ScenarioReport) -> String {
    if r.unsupported {
        "unsupported here".into()
    } else if r.exact() {
        "not reproduced on this kernel".into()
    } else {
        describe_corruption(r)
    }
}

fn describe_corruption(r: &ScenarioReport) -> String {
    format!(
        "corrupted: {} bad bytes from {}, {}/{} received",
        r.mismatched_bytes,
        r.first_mismatch.map_or("-".into(), |o| o.to_string()),
        r.received,
        r.spliced
    )
}

/// One row of a scenario table.
struct Row {
    name: String,
    unprotected: String,
    protected: String,
    failure: Option<String>,
}

/// Runs one scenario unprotected and protected.
fn differential(api: Api, mutation: Mutation, mutator: Mutator, lib: &Path) -> Row {
    let name = format!(
        "{} / {} / {}",
        value_name(&api),
        value_name(&mutation),
        value_name(&mutator)
    );
    let size = DEFAULT_SPLICE_LEN;
    let unprotected = scenario(api, mutation, mutator, size, &Protection::Unprotected);
    let domain = TempDomain::new();
    let protected = scenario(api, mutation, mutator, size, &domain.protection(lib));
    let mut failure = None;
    let unprotected = match unprotected {
        Ok(r) => describe_unprotected(&r),
        Err(e) => {
            failure = Some(format!("{name}: unprotected run failed: {e}"));
            "error".into()
        }
    };
    let protected = match protected {
        Ok(r) if r.unsupported => "unsupported here".into(),
        Ok(r) if r.exact() => "exact".into(),
        Ok(r) => {
            failure = Some(format!("{name}: protected run not exact: {r:?}"));
            describe_corruption(&r).to_uppercase()
        }
        Err(e) => {
            failure = Some(format!("{name}: protected run failed: {e}"));
            "ERROR".into()
        }
    };
    Row {
        name,
        unprotected,
        protected,
        failure,
    }
}

/// Runs every api x mutation x mutator differentially on a small thread pool, writes the
/// table to `target/<table>.md` and stderr, and fails listing every inexact scenario.
fn run_matrix(mutations: &[Mutation], table: &str) {
    let lib = lib();
    let mut cases = Vec::new();
    for &mutation in mutations {
        for api in all_values::<Api>() {
            for mutator in all_values::<Mutator>() {
                cases.push((api, mutation, mutator));
            }
        }
    }
    let next = AtomicUsize::new(0);
    let rows: Mutex<Vec<(usize, Row)>> = Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(api, mutation, mutator)) = cases.get(i) else {
                    break;
                };
                let row = differential(api, mutation, mutator, &lib);
                rows.lock().unwrap().push((i, row));
            });
        }
    });
    let mut rows = rows.into_inner().unwrap();
    rows.sort_by_key(|(i, _)| *i);
    let rows: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();
    report_table(table, &rows);
    let failures: Vec<&String> = rows.iter().filter_map(|r| r.failure.as_ref()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        rows.len(),
        failures
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Writes a table to `target/<name>.md` and stderr.
fn report_table(name: &str, rows: &[Row]) {
    let mut md =
        String::from("| scenario (api / mutation / mutator) | unprotected | protected |\n");
    md.push_str("| --- | --- | --- |\n");
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            r.name, r.unprotected, r.protected
        ));
    }
    let path = target_dir().join(format!("{name}.md"));
    if let Err(e) = std::fs::write(&path, &md) {
        eprintln!("cannot write {}: {e}", path.display());
    }
    eprintln!("{name} ({}):\n{md}", path.display());
}

/// Mutation kinds of one family.
fn mutations_of(family: Family) -> Vec<Mutation> {
    all_values::<Mutation>()
        .into_iter()
        .filter(|m| m.family() == family)
        .collect()
}

/// Every splice API x every write/fallocate/truncate/truncating-open mutation x mutator
/// in the same and in another process.
#[test]
fn file_call_matrix() {
    run_matrix(&mutations_of(Family::FileCall), "scenario-table");
}

/// Shared mappings, copies into the file, clone ioctls, stdio.
#[test]
fn other_path_matrix() {
    run_matrix(
        &mutations_of(Family::OtherPath),
        "scenario-table-other-paths",
    );
}

/// No mutation: 1 MiB through every API and a protected `cat` is exact.
#[test]
fn no_mutation_is_exact() {
    let lib = lib();
    for api in all_values::<Api>() {
        for prot in [Protection::Unprotected, TempDomain::new().protection(&lib)] {
            let r = scenario(api, Mutation::None, Mutator::Same, 1 << 20, &prot)
                .unwrap_or_else(|e| panic!("{api:?} {}: {e}", prot.label()));
            assert!(r.exact(), "{api:?} {}: {r:?}", prot.label());
            assert_eq!(r.spliced, 1 << 20, "{api:?} {}", prot.label());
        }
    }
}

/// What a real program delivered through a pipe mutated mid-flight.
#[derive(Debug)]
struct RealRun {
    /// Bytes spliced before the mutation (in our pipe and the program's own pipes).
    in_flight: usize,
    /// Bytes read from the pipe in total.
    received: usize,
    /// Mismatches in the in-flight prefix.
    prefix_mismatched: usize,
}

impl RealRun {
    fn exact(&self, mutation: Mutation) -> bool {
        let tail_ok = match mutation {
            // After a truncation inside the in-flight bytes, nothing more can come.
            Mutation::Ftruncate => self.received == self.in_flight,
            _ => self.received <= REAL_FILE_LEN,
        };
        self.prefix_mismatched == 0 && self.received >= self.in_flight && tail_ok
    }
}

/// Runs `program FILE` (a 4 MiB pattern file) with stdout into a pipe nobody reads,
/// waits until the pipe is full, mutates the file from another process, then reads.
///
/// Range mutations cover the first 64 KiB: punching the whole 4 MiB would drop whole
/// folios from the page cache, which leaves the pipe's references intact (no corruption
/// to show); a range ending inside a large folio zeroes it in place.
fn real_program(program: &[&str], mutation: Mutation, prot: &Protection) -> RealRun {
    let file = TempFile::with_pattern("real", REAL_FILE_LEN).expect("create file");
    let (r, w) = pipe().expect("pipe");
    let our_pipe = inode(&r).expect("fstat pipe");
    let mut child = {
        let mut cmd = Command::new(program[0]);
        cmd.args(&program[1..])
            .arg(file.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .stderr(Stdio::inherit());
        prot.apply(&mut cmd);
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn {program:?}: {e}"))
    };
    let full =
        wait_for_fionread(&r, DEFAULT_SPLICE_LEN, Duration::from_secs(10)).expect("FIONREAD");
    assert_eq!(
        full, DEFAULT_SPLICE_LEN,
        "{program:?} did not fill the pipe"
    );
    // Let the program also fill its own pipes (uutils cat) and block: the count must stay
    // the same over several samples.
    let mut in_flight = 0;
    let mut stable = 0;
    for _ in 0..100 {
        thread::sleep(Duration::from_millis(20));
        let now = full + queued_in_pipes_of(child.id(), our_pipe).unwrap_or(0);
        stable = if now == in_flight { stable + 1 } else { 0 };
        in_flight = now;
        if stable >= 5 {
            break;
        }
    }

    let mut mutator = Command::new(env!("CARGO_BIN_EXE_scenario"));
    mutator
        .arg("--do-mutation")
        .arg(value_name(&mutation))
        .arg("--file")
        .arg(file.path())
        .arg("--size")
        .arg(DEFAULT_SPLICE_LEN.to_string());
    prot.apply(&mut mutator);
    let out = run_with_timeout(&mut mutator, SCENARIO_TIMEOUT).expect("run mutator");
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(0),
        "mutator: {}",
        out.describe()
    );

    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        File::from(r).read_to_end(&mut got).map(|_| got)
    });
    let status = wait_with_timeout(&mut child, SCENARIO_TIMEOUT).expect("wait program");
    assert!(status.is_some(), "{program:?} hung ({})", prot.label());
    let got = reader.join().unwrap().expect("read pipe");
    let original = splicecow_test_harness::pattern(REAL_FILE_LEN);
    let prefix = in_flight.min(got.len());
    let cmp = compare(&original[..prefix], &got[..prefix]);
    RealRun {
        in_flight,
        received: got.len(),
        prefix_mismatched: cmp.mismatched_bytes,
    }
}

/// Runs a real program unprotected (reported) and protected (must be exact).
fn real_differential(program: &[&str], mutation: Mutation) {
    let lib = lib();
    if find_program(program[0]).is_none() {
        panic!(
            "{} not found: install it (`apt-get install pv rust-coreutils`)",
            program[0]
        );
    }
    let unprotected = real_program(program, mutation, &Protection::Unprotected);
    let domain = TempDomain::new();
    let protected = real_program(program, mutation, &domain.protection(&lib));
    eprintln!(
        "{program:?} + {}: unprotected {} {unprotected:?}; protected {protected:?}",
        value_name(&mutation),
        if unprotected.exact(mutation) {
            "not reproduced on this kernel"
        } else {
            "corrupted"
        }
    );
    assert!(
        protected.exact(mutation),
        "{program:?} + {}: protected run not exact: {protected:?}",
        value_name(&mutation)
    );
}

#[test]
fn pv_punch_hole() {
    real_differential(&["pv", "-q"], Mutation::PunchHole);
}

#[test]
fn pv_truncate() {
    real_differential(&["pv", "-q"], Mutation::Ftruncate);
}

#[test]
fn uutils_cat_punch_hole() {
    real_differential(&["coreutils", "cat"], Mutation::PunchHole);
}

#[test]
fn uutils_cat_truncate() {
    real_differential(&["coreutils", "cat"], Mutation::Ftruncate);
}

/// Splices 64 KiB with `os.splice`, mutates (argv[2]: pwrite or truncate), reads the pipe
/// and prints `spliced received mismatched`.
const PY_SPLICE: &str = r#"
import os, sys
path, how = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
orig = os.pread(fd, 65536, 0)
r, w = os.pipe()
n = 0
while n < len(orig):
    k = os.splice(fd, w, len(orig) - n)
    if k == 0:
        break
    n += k
if how == "pwrite":
    os.pwrite(fd, b"B" * 16, 100)
else:
    os.truncate(fd, 30000)
os.close(w)
got = b""
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    got += chunk
bad = sum(1 for a, b in zip(orig[:n], got) if a != b) + abs(n - len(got))
print(n, len(got), bad)
"#;

/// Runs the Python `os.splice` program; returns (spliced, received, mismatched).
fn python_splice(how: &str, prot: &Protection) -> (usize, usize, usize) {
    let file = TempFile::with_pattern("py", splicecow_test_harness::FILE_LEN).expect("file");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(PY_SPLICE).arg(file.path()).arg(how);
    prot.apply(&mut cmd);
    let out = run_with_timeout(&mut cmd, SCENARIO_TIMEOUT).expect("run python3");
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(0),
        "python3 ({}): {}",
        prot.label(),
        out.describe()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<usize> = text
        .split_whitespace()
        .map(|t| t.parse().expect("number"))
        .collect();
    assert_eq!(v.len(), 3, "python3 said {text:?}");
    (v[0], v[1], v[2])
}

#[test]
fn python_os_splice() {
    let lib = lib();
    let mut failures = Vec::new();
    for how in ["pwrite", "truncate"] {
        let (n, got, bad) = python_splice(how, &Protection::Unprotected);
        let domain = TempDomain::new();
        let protected = python_splice(how, &domain.protection(&lib));
        eprintln!(
            "python os.splice + {how}: unprotected spliced {n} received {got} mismatched {bad} \
             ({}); protected (spliced, received, mismatched) = {protected:?}",
            if bad == 0 && got == n {
                "not reproduced on this kernel"
            } else {
                "corrupted"
            }
        );
        let (n, got, bad) = protected;
        if (got, bad) != (n, 0) {
            failures.push(format!("{how}: {protected:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "python os.splice protected runs not exact (spliced, received, mismatched): {failures:?}"
    );
}

/// Issue 2: pruning keeps a long transfer zero-copy. `pv` sends a 64 MiB file 160 times
/// (10 GiB) into an unshimmed `cat`; the registry must never run out of room (no
/// copy-path fallback), every byte must go zero-copy and none be copied.
#[test]
fn pv_ten_gib_never_falls_back() {
    const FILE_LEN: usize = 64 << 20;
    const TIMES: usize = 160;
    let lib = lib();
    let file = TempFile::with_pattern("pv-10g", FILE_LEN).expect("test file");
    let domain = TempDomain::new();
    let mut pv = Command::new("pv");
    domain.protection(&lib).apply(&mut pv).arg("-q");
    for _ in 0..TIMES {
        pv.arg(file.path());
    }
    let mut count = Command::new("wc");
    strip_shim_env(&mut count).arg("-c");
    let (producer, consumer) =
        run_piped(&mut pv, &mut count, Duration::from_secs(120)).expect("pv | wc -c");
    let received: u64 = String::from_utf8_lossy(&consumer.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let stats = domain_stats(domain.name()).expect("stats");
    let total = (FILE_LEN * TIMES) as u64;
    eprintln!("pv 10 GiB: {}; stats {stats}", producer.describe());
    assert_eq!(received, total, "bytes received");
    assert_eq!(stats["copy_fallbacks"], 0, "copy-path fallbacks");
    assert_eq!(stats["bytes_zero_copy"], total, "bytes kept zero-copy");
    assert_eq!(stats["bytes_copied"], 0, "bytes copied");
}

/// Runs `python3 -c SCRIPT ARGS` under `protection` and waits for it.
fn python(
    protection: &Protection,
    script: &str,
    args: &[String],
    extra_env: &[(&str, &str)],
) -> std::process::Child {
    let mut cmd = Command::new("python3");
    protection.apply(&mut cmd).arg("-c").arg(script).args(args);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("python3")
}

/// Splices 64 KiB of `file` into the test's pipe (opened through /proc), then a mutator
/// whose settle sleeps between drain and refill is SIGKILLed inside that pause, then a
/// third process touches the registry. Returns (bytes read, mismatched bytes).
fn settler_killed_mid_settle(protection: &Protection, file: &Path) -> (usize, usize) {
    const SPLICE: &str = "import os,sys; f=os.open(sys.argv[1],os.O_RDONLY); \
        p=os.open(sys.argv[2],os.O_WRONLY); n=0\n\
        while n<65536: n+=os.splice(f,p,65536-n)";
    const PWRITE: &str = "import os,sys; f=os.open(sys.argv[1],os.O_RDWR); \
        os.pwrite(f,b'B'*16,int(sys.argv[2]))";
    let (r, w) = pipe().expect("pipe");
    let via_proc = format!("/proc/{}/fd/{}", std::process::id(), w.as_raw_fd());
    let path = file.display().to_string();
    let status = python(protection, SPLICE, &[path.clone(), via_proc], &[])
        .wait()
        .unwrap();
    assert!(status.success(), "splicer failed");
    // The mutator drains the pipe and is killed while it holds the bytes.
    let mut victim = python(
        protection,
        PWRITE,
        &[path.clone(), "100".into()],
        &[(names::TEST_PAUSE, "settle:3000000")],
    );
    // Unprotected, nothing pauses: the victim just finishes.
    let paused = splicecow_test_harness::wait_for_pause(&mut victim, Duration::from_secs(10))
        .expect("watch the victim");
    assert!(
        paused || matches!(protection, Protection::Unprotected),
        "the mutator never reached its pause in the settle"
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
    // Anyone taking the registry lock next finishes the interrupted settle.
    let status = python(protection, PWRITE, &[path, "200000".into()], &[])
        .wait()
        .unwrap();
    assert!(status.success(), "second mutator failed");
    drop(w);
    let mut got = Vec::new();
    File::from(r).read_to_end(&mut got).unwrap();
    let expected = splicecow_test_harness::pattern(65536);
    let bad = compare(&expected, &got).mismatched_bytes;
    (got.len(), bad)
}

/// Issue 4: a settler SIGKILLed between drain and refill loses nothing: the drained
/// bytes are in the registry's journal and the next lock holder writes them back.
#[test]
fn a_settler_killed_between_drain_and_refill_loses_nothing() {
    let lib = lib();
    let file = TempFile::with_pattern("journal", 256 << 10).expect("file");
    let unprotected = settler_killed_mid_settle(&Protection::Unprotected, file.path());
    let file = TempFile::with_pattern("journal", 256 << 10).expect("file");
    let domain = TempDomain::new();
    let protected = settler_killed_mid_settle(&domain.protection(&lib), file.path());
    let stats = domain_stats(domain.name()).expect("stats");
    eprintln!(
        "killed settler: unprotected (read, bad) {unprotected:?}; protected {protected:?}; {stats}"
    );
    assert_eq!(
        protected,
        (65536, 0),
        "protected: bytes read and mismatched"
    );
    assert!(
        stats["lock_takeovers"].as_u64() >= Some(1),
        "the lock was taken over: {stats}"
    );
    assert!(
        stats["settles"].as_u64() >= Some(1),
        "the settle was finished: {stats}"
    );
}

/// Issue 3: `ioctl(FICLONE)` into a spliced file, on XFS with reflink (ext4 answers
/// EOPNOTSUPP, so the matrix above can only report "unsupported" for it).
#[test]
fn ficlone_on_xfs_is_settled() {
    let lib = lib();
    let xfs = match XfsMount::new() {
        Ok(m) => m,
        Err(why) => {
            eprintln!("FICLONE differential not run: cannot mount an XFS image here: {why}");
            return;
        }
    };
    let run = |mutator: &str, prot: &Protection, n: usize| -> ScenarioReport {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_scenario"));
        cmd.args([
            "--api",
            "splice",
            "--mutation",
            "ficlone",
            "--mutator",
            mutator,
            "--file",
        ])
        .arg(xfs.dir.join(format!("clone-{mutator}-{n}")));
        prot.apply(&mut cmd);
        let out = run_with_timeout(&mut cmd, SCENARIO_TIMEOUT).expect("scenario");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
    };
    for mutator in ["same", "other"] {
        let unprotected = run(mutator, &Protection::Unprotected, 0);
        let domain = TempDomain::new();
        let protected = run(mutator, &domain.protection(&lib), 1);
        eprintln!("FICLONE on XFS, mutator {mutator}: unprotected {unprotected:?}; protected {protected:?}");
        assert!(
            !protected.unsupported,
            "FICLONE unsupported on the XFS image"
        );
        if unprotected.exact() {
            eprintln!("FICLONE, mutator {mutator}: corruption not reproduced on this kernel");
        }
        assert!(
            protected.exact(),
            "FICLONE, mutator {mutator}: protected run not exact: {protected:?}"
        );
    }
}

/// A C program that writes 16 'B's at offset 100 of argv[1] through a stdio stream and
/// leaves without `fflush`/`fclose`: the bytes reach the file in glibc's exit flush.
const EXIT_FLUSH_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "r+");
    if (!f || fseek(f, 100, SEEK_SET) != 0) return 2;
    if (fwrite("BBBBBBBBBBBBBBBB", 1, 16, f) != 16) return 2;
    exit(0);
}
"#;

/// Splices 64 KiB of `file` into the test's pipe, then runs `flusher` on it (both under
/// `protection`); returns (bytes read, mismatched bytes).
fn stdio_exit_flush(protection: &Protection, file: &Path, flusher: &Path) -> (usize, usize) {
    const SPLICE: &str = "import os,sys; f=os.open(sys.argv[1],os.O_RDONLY); \
        p=os.open(sys.argv[2],os.O_WRONLY); n=0\n\
        while n<65536: n+=os.splice(f,p,65536-n)";
    let (r, w) = pipe().expect("pipe");
    let via_proc = format!("/proc/{}/fd/{}", std::process::id(), w.as_raw_fd());
    let path = file.display().to_string();
    assert!(python(protection, SPLICE, &[path, via_proc], &[])
        .wait()
        .unwrap()
        .success());
    let mut cmd = Command::new(flusher);
    protection.apply(&mut cmd).arg(file);
    assert_eq!(cmd.status().unwrap().code(), Some(0), "flusher failed");
    drop(w);
    let mut got = Vec::new();
    File::from(r).read_to_end(&mut got).unwrap();
    let bad = compare(&splicecow_test_harness::pattern(65536), &got).mismatched_bytes;
    (got.len(), bad)
}

/// Issue 3: stdio output that reaches the kernel only in the exit flush is settled.
#[test]
fn stdio_exit_flush_is_settled() {
    let lib = lib();
    let flusher = target_dir().join("exit-flush");
    let source = target_dir().join("exit-flush.c");
    std::fs::write(&source, EXIT_FLUSH_C).unwrap();
    let ok = Command::new("gcc")
        .arg("-O2")
        .arg("-o")
        .arg(&flusher)
        .arg(&source)
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "gcc is needed by this test");
    let file = TempFile::with_pattern("exit-flush", 256 << 10).expect("file");
    let unprotected = stdio_exit_flush(&Protection::Unprotected, file.path(), &flusher);
    let file = TempFile::with_pattern("exit-flush", 256 << 10).expect("file");
    let domain = TempDomain::new();
    let protected = stdio_exit_flush(&domain.protection(&lib), file.path(), &flusher);
    eprintln!("stdio exit flush: unprotected (read, bad) {unprotected:?}; protected {protected:?}");
    if unprotected.1 == 0 {
        eprintln!("stdio exit flush: corruption not reproduced on this kernel");
    }
    assert_eq!(
        protected,
        (65536, 0),
        "protected: bytes read and mismatched"
    );
}
