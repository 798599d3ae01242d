//! Fidelity tests (issue 2's last test bullet, issue 4's "Bad input"): a program must
//! not be able to tell the shim is loaded, except by the corrected data.
//!
//! Every case runs the `fidelity` binary without the shim and with it (a fresh domain)
//! and compares: return values and `errno` of every hooked function, blocking, `EINTR`
//! and `SA_RESTART` behaviour, settle edge cases (exited splicer, packet mode,
//! non-blocking pipe, 1 MiB pipe, pipe→pipe chain, writes after splices), the registry
//! counters, and bad environments. The library is taken from `$SPLICECOW_LIB`, else
//! `target/release` (see `library_path`); run `cargo build --release` first.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use splicecow_test_harness::{
    domain_stats, library_path, parallel, pattern, run_piped, run_with_timeout, strip_shim_env,
    Protection, SettleReport, TempDomain,
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

/// Runs `cmd`; its stdout when it exited 0, else a description of what happened.
fn stdout_of(mut cmd: Command) -> Result<String, String> {
    let out = run_with_timeout(&mut cmd, TIMEOUT).map_err(|e| e.to_string())?;
    if out.status.map(|s| s.success()) != Some(true) {
        return Err(out.describe());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `fidelity args` unprotected and protected (fresh domain) at the same time.
fn both(args: &[&str]) -> (Result<String, String>, Result<String, String>) {
    let domain = TempDomain::new();
    let prot = domain.protection(&lib());
    thread::scope(|s| {
        let u = s.spawn(|| stdout_of(fidelity(args, &Protection::Unprotected)));
        let p = stdout_of(fidelity(args, &prot));
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

#[test]
fn errno_battery_is_identical_with_the_shim() {
    let (u, p) = both(&["battery"]);
    let u = u.unwrap_or_else(|e| panic!("unprotected battery failed: {e}"));
    let p = p.unwrap_or_else(|e| panic!("protected battery failed: {e}"));
    // The battery itself must test what it claims (kernel answers on this system).
    for want in [
        "splice.bad_fd_in -1 9 ",
        "splice.bad_flags -1 22 ",
        "splice.eof_off_in 0 0 ",
        "splice.efault_off_in -1 14 ",
        "splice.off_out_on_pipe -1 29 ",
        "splice.full_nonblock_flag -1 11 ",
        "splice.full_onb_pipe -1 11 ",
        "tee.empty_nonblock -1 11 ",
        "writev.efault_iov -1 14 ",
        "pwrite.negative_offset -1 22 ",
        "pwrite.pipe -1 29 ",
        "fallocate.bad_mode -1 95 ",
        "truncate.null_path -1 14 ",
        "open.null_path -1 14 ",
        "write.tracked_pipe_ok 16 0 ",
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
    if ul.len() != pl.len() {
        diffs.push(format!(
            "{} lines without the shim, {} with",
            ul.len(),
            pl.len()
        ));
    }
    assert_none(
        "return value/errno/state differs with the shim (`fidelity battery`; \
         `name ret errno off=<file offset> size=<file size>`)",
        &diffs,
    );
}

/// The line a blocking case must print without the shim.
fn expected_block_line(op: &str, case: &str) -> String {
    match case {
        "eintr" => format!("{op} {case} ret=-1 errno=4 waited=true data_ok=true"),
        _ => format!("{op} {case} ret=4096 errno=0 waited=true data_ok=true"),
    }
}

/// Runs one blocking case both ways; failure messages.
fn block_case(op: &str, case: &str) -> Vec<String> {
    let (u, p) = both(&["block", "--op", op, "--case", case]);
    let mut f = Vec::new();
    let want = expected_block_line(op, case);
    match &u {
        Ok(u) if u.starts_with(&want) => {}
        other => f.push(format!(
            "{op}/{case} without shim: want {want:?}, got {other:?}"
        )),
    }
    if p != u {
        f.push(format!(
            "{op}/{case}: with the shim {p:?}, without {u:?} (repro: LD_PRELOAD=<lib> \
             SPLICECOW_DOMAIN=x target/release/fidelity block --op {op} --case {case})"
        ));
    }
    f
}

#[test]
fn blocking_eintr_and_restart_are_identical_with_the_shim() {
    let ops = ["splice", "sendfile", "tee", "pipe-splice"];
    let cases = [
        "drain",
        "eintr",
        "restart",
        "restart-other-handler",
        "restart-sole-handler",
    ];
    let jobs: Vec<(&str, &str)> = ops
        .iter()
        .flat_map(|op| cases.iter().map(move |c| (*op, *c)))
        .collect();
    let failures = parallel(&jobs, 4, |(op, case)| block_case(op, case));
    assert_none("blocking behaviour differs with the shim", &failures);
}

/// Runs `fidelity settle --case case [extra]` under `prot` and parses its report.
fn settle(case: &str, extra: &[&str], prot: &Protection) -> Result<SettleReport, String> {
    let mut args = vec!["settle", "--case", case];
    args.extend_from_slice(extra);
    let out = stdout_of(fidelity(&args, prot))?;
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
        producer.env("SPLICECOW_MODE", mode);
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
        &[("SPLICECOW_MODE", "garbage")],
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
