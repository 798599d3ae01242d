//! Fidelity tests (docs/design.md, The contract: Invisible; bad input): a program must
//! not be able to tell the shim is loaded, except by the corrected data.
//!
//! Every case runs the `fidelity` binary without the shim and with it (a fresh domain)
//! and compares: return values and `errno` of every hooked function, blocking, `EINTR`
//! and `SA_RESTART` behaviour, settle edge cases (exited splicer, packet mode,
//! non-blocking pipe, 1 MiB pipe, pipe→pipe chain, writes after splices), the registry
//! counters, and bad environments. The battery and the blocking file→pipe cases also
//! run through the copy path: in copy mode, and in protect mode with the domain's pipe
//! table held full by a helper process (`copy_fallbacks_registry_full` must grow). The
//! library is taken from `$SPLICECOW_LIB`, else `target/release` (see `library_path`);
//! run `cargo build --release` first.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use splicecow_registry::env::{self as names, Mode};
use splicecow_test_harness::{
    domain_stats, library_path, parallel, pattern, run_piped, run_with_timeout, strip_shim_env,
    wait_with_timeout, Protection, SettleReport, TempDomain,
};

/// How long one `fidelity` run may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes the counters test pumps through a pipe.
const PUMP_LEN: usize = 8 << 20;

/// The preloadable library, or a failure that says how to build it.
fn lib() -> PathBuf {
    library_path().unwrap_or_else(|e| panic!("{e}"))
}

/// A `fidelity` command with `args`, under `prot`.
fn fidelity(args: &[&str], prot: &Protection) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fidelity"));
    cmd.args(args);
    prot.apply(&mut cmd);
    cmd
}

/// Runs `cmd`: what it printed on stdout, and unless it exited 0 its exit status (`None`:
/// killed after [`TIMEOUT`]) and stderr.
fn run_printed(mut cmd: Command) -> (String, Option<String>) {
    match run_with_timeout(&mut cmd, TIMEOUT) {
        Err(e) => (String::new(), Some(e.to_string())),
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let ok = out.status.map(|s| s.success()) == Some(true);
            let failure = (!ok).then(|| {
                let stderr = String::from_utf8_lossy(&out.stderr);
                format!("status {:?}, stderr {stderr:?}", out.status)
            });
            (stdout, failure)
        }
    }
}

/// Runs `cmd`; its stdout when it exited 0, else a description of what happened.
fn stdout_of(cmd: Command) -> Result<String, String> {
    match run_printed(cmd) {
        (stdout, None) => Ok(stdout),
        (stdout, Some(failure)) => Err(format!("{failure}, stdout {stdout:?}")),
    }
}

/// How the shimmed run of a differential case is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shimmed {
    /// Protect mode in a fresh domain.
    Protect,
    /// `SPLICECOW_MODE=copy`: every file→pipe `splice`/`sendfile` takes the copy path.
    CopyMode,
    /// Protect mode in a domain whose pipe table a helper process keeps full
    /// ([`PipeTableHolder`]): every file→pipe call into a new pipe takes the copy path.
    PipeTableFull,
}

/// `fidelity hold-pipe-table` in a domain: every slot of the domain's pipe table holds
/// a one-byte splice into a pipe this process keeps open, until it is dropped.
struct PipeTableHolder {
    child: Child,
    /// `copy_fallbacks_registry_full` once the table was full.
    fallbacks_when_full: u64,
}

impl PipeTableHolder {
    /// Starts the helper in `domain` and waits for its `ready` line.
    fn start(domain: &TempDomain) -> Result<PipeTableHolder, String> {
        let mut cmd = fidelity(&["hold-pipe-table"], &domain.protection(&lib()));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut holder = PipeTableHolder {
            child,
            fallbacks_when_full: 0,
        };
        match rx.recv_timeout(TIMEOUT) {
            Ok(line) if line.starts_with("ready ") => {}
            other => return Err(format!("hold-pipe-table did not get ready: {other:?}")),
        }
        let stats = domain_stats(domain.name())?;
        holder.fallbacks_when_full = counter(&stats, "copy_fallbacks_registry_full");
        Ok(holder)
    }
}

impl Drop for PipeTableHolder {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if !matches!(wait_with_timeout(&mut self.child, TIMEOUT), Ok(Some(_))) {
            let _ = self.child.kill();
        }
    }
}

/// The shimmed side of differential runs: a domain (with its pipe table held full for
/// [`Shimmed::PipeTableFull`]) and how `fidelity` runs in it.
struct ShimSide {
    shimmed: Shimmed,
    /// Dropped (the helper ends) before the domain's registry is removed.
    holder: Option<PipeTableHolder>,
    domain: TempDomain,
}

impl ShimSide {
    fn new(shimmed: Shimmed) -> ShimSide {
        let domain = TempDomain::new();
        let holder = (shimmed == Shimmed::PipeTableFull).then(|| {
            PipeTableHolder::start(&domain).unwrap_or_else(|e| panic!("pipe table holder: {e}"))
        });
        ShimSide {
            shimmed,
            holder,
            domain,
        }
    }

    /// `fidelity args` on this side.
    fn fidelity(&self, args: &[&str]) -> Command {
        let mut cmd = fidelity(args, &self.domain.protection(&lib()));
        if self.shimmed == Shimmed::CopyMode {
            cmd.env(names::MODE, Mode::Copy.name());
        }
        cmd
    }

    /// How to run `fidelity args` on this side by hand.
    fn repro(&self, args: &[&str]) -> String {
        let shimmed = "LD_PRELOAD=<lib> SPLICECOW_DOMAIN=x";
        let run = format!("{shimmed} target/release/fidelity {}", args.join(" "));
        match self.shimmed {
            Shimmed::Protect => run,
            Shimmed::CopyMode => format!("SPLICECOW_MODE=copy {run}"),
            Shimmed::PipeTableFull => format!(
                "sleep 600 | {shimmed} target/release/fidelity hold-pipe-table & \
                 (after its `ready` line) {run}"
            ),
        }
    }

    /// Failures when this side's runs cannot be shown to have taken the copy path.
    fn copy_path_unproven(&self) -> Vec<String> {
        match self.shimmed {
            Shimmed::Protect => Vec::new(),
            Shimmed::CopyMode => {
                // Mutated while its bytes sit in the pipe, without a settle: exact only
                // if the pipe holds private copies.
                let r =
                    settle_report(self.fidelity(&["settle", "--case", "plain", "--same-process"]));
                let s = domain_stats(self.domain.name()).unwrap_or_else(|e| panic!("{e}"));
                match r {
                    Ok(r) if r.exact() && counter(&s, "settles") == 0 => Vec::new(),
                    other => vec![format!(
                        "copy mode: a mutated `settle --case plain --same-process` must be \
                         exact without a settle: {other:?}, {s}"
                    )],
                }
            }
            Shimmed::PipeTableFull => {
                let before = self.holder.as_ref().map_or(0, |h| h.fallbacks_when_full);
                let s = domain_stats(self.domain.name()).unwrap_or_else(|e| panic!("{e}"));
                let after = counter(&s, "copy_fallbacks_registry_full");
                let full = counter(&s, "pipes_in_use") == counter(&s, "pipe_capacity");
                if after > before && full {
                    Vec::new()
                } else {
                    vec![format!(
                        "pipe table full: copy_fallbacks_registry_full went from {before} to \
                         {after}, pipe table full at the end: {full} ({s})"
                    )]
                }
            }
        }
    }
}

/// Runs `fidelity args` unprotected and on `side` at the same time: (stdout,
/// failure) of each.
fn both(args: &[&str], side: &ShimSide) -> ((String, Option<String>), (String, Option<String>)) {
    thread::scope(|s| {
        let u = s.spawn(|| run_printed(fidelity(args, &Protection::Unprotected)));
        let p = run_printed(side.fidelity(args));
        (u.join().expect("unprotected runner"), p)
    })
}

/// Fails with every message in `failures`, one per line.
fn assert_none(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs the battery unprotected and on `side`: every line that differs, a shimmed run
/// that failed (its unfinished last line names the case that crashed, or blocked past
/// the battery's per-case alarm), and a copy path that cannot be shown to have run.
fn battery_differences(side: &ShimSide) -> Vec<String> {
    // With the pipe table full, the splice each case leaves in flight could not be
    // recorded (the holder keeps segments live), and each would cost a sweep.
    let args: &[&str] = match side.shimmed {
        Shimmed::PipeTableFull => &["battery", "--without-case-splices"],
        Shimmed::Protect | Shimmed::CopyMode => &["battery"],
    };
    let ((u, u_failure), (p, p_failure)) = both(args, side);
    if let Some(e) = u_failure {
        panic!("unprotected battery failed: {e}");
    }
    // The battery itself must test what it claims (kernel answers on this system).
    for want in [
        "splice.bad_fd_in -1 9 ",
        "splice.bad_flags -1 22 ",
        "splice.eof_off_in 0 0 ",
        "splice.efault_off_in -1 14 ",
        "splice.off_out_on_pipe -1 29 ",
        "splice.full_nonblock_flag -1 11 ",
        "splice.full_onb_pipe -1 11 ",
        "splice.empty_file_into_read_end -1 9 ",
        "splice.o_path -1 9 ",
        "splice.proc_maps -1 22 ",
        "splice.unaligned_offset 65436 0 ",
        "splice.eof_into_full_onb_pipe -1 11 ",
        "splice.read_only_offset -1 14 ",
        "sendfile.zero_len_into_full_onb_pipe -1 11 ",
        "sendfile.offset_beyond_max_file_size -1 75 ",
        "tee.empty_nonblock -1 11 ",
        "writev.efault_iov -1 14 ",
        "pwrite.negative_offset -1 22 ",
        "pwrite.pipe -1 29 ",
        "fallocate.bad_mode -1 95 ",
        "truncate.null_path -1 14 ",
        "open.null_path -1 14 ",
        "write.tracked_pipe_ok 16 0 ",
        "close_range.first_above_last -1 22 ",
        "dup3.onto_itself -1 22 ",
        "fcntl.bad_cmd -1 22 ",
        "fcntl64.setpipe_sz_below_content -1 16 ",
        "pclose.exit_3 768 0 ",
        "fclose.stream_on_closed_fd -1 9 ",
    ] {
        assert!(u.contains(want), "unprotected battery lacks {want:?}:\n{u}");
    }
    let (ul, pl): (Vec<&str>, Vec<&str>) = (u.lines().collect(), p.lines().collect());
    let mut diffs: Vec<String> = ul
        .iter()
        .zip(&pl)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("  without shim: {a}\n  with shim:    {b}"))
        .collect();
    if let Some(e) = p_failure {
        diffs.push(format!(
            "with the shim the battery ended after {} of {} lines, in the case its last line \
             names ({:?}): {e}",
            pl.len(),
            ul.len(),
            pl.last().unwrap_or(&"")
        ));
    } else if ul.len() != pl.len() {
        diffs.push(format!(
            "{} lines without the shim, {} with",
            ul.len(),
            pl.len()
        ));
    }
    if !diffs.is_empty() {
        diffs.push(format!("repro: {}", side.repro(args)));
    }
    diffs.extend(side.copy_path_unproven());
    diffs
}

/// What the battery's lines mean, for failure messages.
const BATTERY_LINES: &str = "`fidelity battery`; `name ret errno off=<file offset> \
                             size=<file size>`, `name.what value`";

#[test]
fn errno_battery_is_identical_with_the_shim() {
    let diffs = battery_differences(&ShimSide::new(Shimmed::Protect));
    assert_none(
        &format!("return value/errno/state differs with the shim ({BATTERY_LINES})"),
        &diffs,
    );
}

#[test]
fn errno_battery_is_identical_in_copy_mode() {
    let diffs = battery_differences(&ShimSide::new(Shimmed::CopyMode));
    assert_none(
        &format!("return value/errno/state differs in copy mode ({BATTERY_LINES})"),
        &diffs,
    );
}

#[test]
fn errno_battery_is_identical_with_the_pipe_table_full() {
    let diffs = battery_differences(&ShimSide::new(Shimmed::PipeTableFull));
    assert_none(
        &format!(
            "return value/errno/state differs with the registry's pipe table full \
             ({BATTERY_LINES})"
        ),
        &diffs,
    );
}

/// The line a blocking case must print without the shim.
fn expected_block_line(op: &str, case: &str) -> String {
    let moved = match op {
        "splice-at-eof" | "sendfile-zero-count" => 0,
        _ => 4096,
    };
    match case {
        "eintr" => format!("{op} {case} ret=-1 errno=4 waited=true data_ok=true"),
        _ => format!("{op} {case} ret={moved} errno=0 waited=true data_ok=true"),
    }
}

/// The ways a blocked call gets unblocked.
const BLOCK_CASES: [&str; 5] = [
    "drain",
    "eintr",
    "restart",
    "restart-other-handler",
    "restart-sole-handler",
];

/// The blocking calls from a file into a full pipe (the copy path's).
const FILE_TO_PIPE_BLOCK_OPS: [&str; 4] =
    ["splice", "sendfile", "splice-at-eof", "sendfile-zero-count"];

/// Runs one blocking case both ways; failure messages.
fn block_case(side: &ShimSide, op: &str, case: &str) -> Vec<String> {
    let args = ["block", "--op", op, "--case", case];
    let ((u, u_failure), p) = both(&args, side);
    let mut f = Vec::new();
    let want = expected_block_line(op, case);
    if u_failure.is_some() || !u.starts_with(&want) {
        f.push(format!(
            "{op}/{case} without shim: want {want:?}, got {u:?} ({u_failure:?})"
        ));
    }
    if p != (u.clone(), None) {
        f.push(format!(
            "{op}/{case} ({:?}): with the shim {p:?}, without {u:?} (repro: {})",
            side.shimmed,
            side.repro(&args)
        ));
    }
    f
}

/// Runs every case of `ops` on `side`, four at a time.
fn block_failures(side: &ShimSide, ops: &[&str]) -> Vec<String> {
    let jobs: Vec<(&str, &str)> = ops
        .iter()
        .flat_map(|op| BLOCK_CASES.iter().map(move |c| (*op, *c)))
        .collect();
    parallel(&jobs, 4, |(op, case)| block_case(side, op, case))
}

#[test]
fn blocking_eintr_and_restart_are_identical_with_the_shim() {
    let mut ops = vec!["tee", "pipe-splice"];
    ops.extend(FILE_TO_PIPE_BLOCK_OPS);
    let failures = block_failures(&ShimSide::new(Shimmed::Protect), &ops);
    assert_none("blocking behaviour differs with the shim", &failures);
}

#[test]
fn blocking_file_to_pipe_is_identical_through_the_copy_path() {
    let mut failures = Vec::new();
    for shimmed in [Shimmed::CopyMode, Shimmed::PipeTableFull] {
        let side = ShimSide::new(shimmed);
        failures.extend(block_failures(&side, &FILE_TO_PIPE_BLOCK_OPS));
        failures.extend(side.copy_path_unproven());
    }
    assert_none(
        "blocking behaviour differs through the copy path",
        &failures,
    );
}

/// Runs `fidelity settle --case case [extra]` under `prot` and parses its report.
fn settle(case: &str, extra: &[&str], prot: &Protection) -> Result<SettleReport, String> {
    let mut args = vec!["settle", "--case", case];
    args.extend_from_slice(extra);
    settle_report(fidelity(&args, prot))
}

/// Runs `cmd` (a `fidelity settle`) and parses its report.
fn settle_report(cmd: Command) -> Result<SettleReport, String> {
    let out = stdout_of(cmd)?;
    serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out:?}"))
}

/// One settle edge case: control (no mutation), unprotected and protected mutated.
fn settle_case(case: &str) -> Vec<String> {
    let domain = TempDomain::new();
    let prot = domain.protection(&lib());
    let control = settle(case, &["--no-mutation"], &Protection::Unprotected);
    let unprotected = settle(case, &[], &Protection::Unprotected);
    let protected = settle(case, &[], &prot);
    let mut f = Vec::new();
    let control = match control {
        Ok(c) if c.exact() => c,
        other => {
            return vec![format!(
                "{case}: control run (no mutation) not exact: {other:?}"
            )]
        }
    };
    match unprotected {
        Ok(r) if r.exact() => {
            eprintln!("settle {case}: corruption not reproduced without the shim")
        }
        Ok(r) => eprintln!(
            "settle {case}: without the shim {} bad bytes from {:?}",
            r.mismatched_bytes, r.first_mismatch
        ),
        Err(e) => f.push(format!("{case}: unprotected run failed: {e}")),
    }
    match protected {
        Ok(r) if r.exact() && r.reads == control.reads => {
            eprintln!("settle {case}: exact with the shim, reads {:?}", r.reads)
        }
        Ok(r) => f.push(format!(
            "{case}: with the shim not exact or boundaries moved: got {r:?}, control {control:?} \
             (repro: LD_PRELOAD=<lib> SPLICECOW_DOMAIN=x target/release/fidelity settle --case {case})"
        )),
        Err(e) => f.push(format!(
            "{case}: protected run failed: {e} (repro: LD_PRELOAD=<lib> SPLICECOW_DOMAIN=x \
             target/release/fidelity settle --case {case})"
        )),
    }
    f
}

#[test]
fn settle_edge_cases_are_byte_exact() {
    let cases = ["exited", "packet", "nonblock", "bigpipe", "chain", "header"];
    let failures = parallel(&cases, 3, |case| settle_case(case));
    assert_none("settle edge cases", &failures);
}

/// A counter from `splicecow stats --json`.
fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// Pumps `PUMP_LEN` bytes through a pipe into an unshimmed `cat` under `prot` (with
/// `SPLICECOW_MODE=mode` if given); checks the bytes; returns the domain's counters.
fn pump(domain: &TempDomain, mode: Option<&str>) -> serde_json::Value {
    let len = PUMP_LEN.to_string();
    let mut producer = fidelity(&["pump", "--len", &len], &domain.protection(&lib()));
    if let Some(mode) = mode {
        producer.env(names::MODE, mode);
    }
    let mut cat = Command::new("cat");
    strip_shim_env(&mut cat);
    let (p, c) = run_piped(&mut producer, &mut cat, TIMEOUT).expect("spawn pump | cat");
    assert_eq!(
        p.status.map(|s| s.success()),
        Some(true),
        "pump: {}",
        p.describe()
    );
    assert!(
        p.stderr.is_empty(),
        "pump printed on stderr: {}",
        p.describe()
    );
    assert!(
        c.stdout == pattern(PUMP_LEN),
        "cat got {} bytes, not the {PUMP_LEN} pattern bytes",
        c.stdout.len()
    );
    domain_stats(domain.name()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn counters_show_zero_copy_without_mutation() {
    let domain = TempDomain::new();
    let s = pump(&domain, None);
    assert!(counter(&s, "splices") > 0, "{s}");
    assert_eq!(counter(&s, "bytes_zero_copy"), PUMP_LEN as u64, "{s}");
    for zero in ["bytes_copied", "settles", "copy_fallbacks"] {
        assert_eq!(counter(&s, zero), 0, "{zero}: {s}");
    }
}

#[test]
fn copy_mode_is_exact_and_keeps_nothing_zero_copy() {
    let domain = TempDomain::new();
    let s = pump(&domain, Some("copy"));
    assert_eq!(counter(&s, "bytes_zero_copy"), 0, "{s}");
    assert_eq!(counter(&s, "settles"), 0, "{s}");
}

#[test]
fn one_conflict_settles_once_and_copies_what_was_pending() {
    let domain = TempDomain::new();
    let r = settle("plain", &[], &domain.protection(&lib())).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.exact(), "{r:?}");
    let s = domain_stats(domain.name()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(counter(&s, "settles"), 1, "{s}");
    assert_eq!(
        counter(&s, "bytes_copied"),
        r.pending_at_mutation as u64,
        "{s} {r:?}"
    );
    assert_eq!(counter(&s, "copy_fallbacks"), 0, "{s}");
}

/// Deterministic-enough noise for a corrupt registry file.
fn noise(len: usize) -> Vec<u8> {
    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Makes a real registry for `domain` (by running a protected program in it).
fn make_registry(domain: &TempDomain) -> u64 {
    let out = stdout_of(fidelity(
        &["settle", "--case", "plain"],
        &domain.protection(&lib()),
    ));
    out.unwrap_or_else(|e| panic!("{e}"));
    std::fs::metadata(domain.shm_path())
        .expect("registry created")
        .len()
}

/// Runs one shimmed process (`settle --case plain --same-process`) in `domain` with
/// `env`; it must work, be exact, and print exactly one `splicecow:` line on stderr.
fn one_warning(what: &str, domain: &str, env: &[(&str, &str)]) -> Option<String> {
    let prot = Protection::Protected {
        lib: lib(),
        domain: domain.to_string(),
    };
    let mut cmd = fidelity(&["settle", "--case", "plain", "--same-process"], &prot);
    cmd.envs(env.iter().copied());
    let out = match run_with_timeout(&mut cmd, TIMEOUT) {
        Ok(out) => out,
        Err(e) => return Some(format!("{what}: {e}")),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let report: Option<SettleReport> = serde_json::from_slice(&out.stdout).ok();
    let ok = out.status.map(|s| s.success()) == Some(true)
        && lines.len() == 1
        && lines[0].starts_with("splicecow:")
        && report.as_ref().is_some_and(SettleReport::exact);
    (!ok).then(|| {
        format!(
            "{what}: want one `splicecow:` line and exact output, got {}",
            out.describe()
        )
    })
}

#[test]
fn bad_environment_gives_one_line_and_exact_output() {
    let mut failures = Vec::new();
    let d = TempDomain::new();
    failures.extend(one_warning(
        "SPLICECOW_MODE=garbage",
        d.name(),
        &[(names::MODE, "garbage")],
    ));
    failures.extend(one_warning("SPLICECOW_DOMAIN=../x", "../x", &[]));
    failures.extend(one_warning("200-char domain", &"d".repeat(200), &[]));

    // A planted corrupt registry: random bytes, mode 0600, small and of the real size.
    let real = TempDomain::new();
    let size = make_registry(&real) as usize;
    for (what, len) in [
        ("corrupt registry (4 KiB)", 4096),
        ("corrupt registry (full size)", size),
    ] {
        let d = TempDomain::new();
        plant(&d.shm_path(), &noise(len), 0o600);
        failures.extend(one_warning(what, d.name(), &[]));
    }
    // A real registry made readable by others: refused.
    let open = TempDomain::new();
    make_registry(&open);
    std::fs::set_permissions(open.shm_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    failures.extend(one_warning("registry mode 0644", open.name(), &[]));
    // A symlink to a real registry: refused.
    let link = TempDomain::new();
    std::os::unix::fs::symlink(real.shm_path(), link.shm_path()).unwrap();
    failures.extend(one_warning("registry is a symlink", link.name(), &[]));
    assert_none("bad environments", &failures);
}

/// Writes `data` to `path` with `mode` (replacing what was there).
fn plant(path: &Path, data: &[u8], mode: u32) {
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
