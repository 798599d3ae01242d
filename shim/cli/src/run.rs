//! `splicecow run`: run a command in a fresh domain with the library preloaded, forward
//! signals, wait for the last process of the domain and clean up.

use crate::{library_path, stats, symbolize, Mode, RunArgs, EXIT_CONFLICTS};
use splicecow_registry::{env as names, registry_path, Capacity, Registry};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Signals `run` forwards to CMD.
const FORWARDED: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
/// How long `run` still waits for descendants after a signal once CMD is gone.
const GRACE: Duration = Duration::from_secs(1);

/// Runs `splicecow run`; returns the exit status.
pub fn main(args: RunArgs) -> i32 {
    let lib = library_path();
    let program = args.command[0].clone();
    let mut mode = args.mode;

    // The domain and its registry, created before CMD starts.
    let given = args.domain.is_some();
    let domain = args.domain.clone().unwrap_or_else(fresh_domain);
    let existed = given
        && Path::new(&registry_path(&domain))
            .symlink_metadata()
            .is_ok();
    let sized = || match args.registry_pipes {
        Some(n) => Capacity::for_pipes(n),
        None => {
            let (capacity, warning) = Capacity::from_env();
            if let Some(w) = warning {
                eprintln!("splicecow: {w}");
            }
            capacity
        }
    };
    let registry = match Registry::open_or_create_with(&domain, sized) {
        Ok(r) => {
            if let Some(n) = args.registry_pipes.filter(|&n| n != r.capacity().pipes) {
                eprintln!(
                    "splicecow: domain {domain} exists with {} pipe records; \
                     --registry-pipes {n} does not resize it",
                    r.capacity().pipes
                );
            }
            Some(r)
        }
        Err(e) => {
            eprintln!(
                "splicecow: cannot set up the registry of domain {domain}: {e}; running {} in copy mode",
                program.to_string_lossy()
            );
            mode = Mode::Copy;
            None
        }
    };
    let created = registry.is_some() && !existed;

    // Where detect-mode reports go; a temporary file we own if nobody named one, or if
    // the report is to be SARIF (the library writes JSON lines; SARIF is written at exit).
    let mut temp_report = None;
    let named = args
        .report
        .clone()
        .or_else(|| {
            std::env::var_os(names::REPORT)
                .filter(|r| !r.is_empty())
                .map(PathBuf::from)
        })
        .map(|p| std::path::absolute(&p).unwrap_or(p));
    let sarif = named
        .clone()
        .filter(|p| p.extension().is_some_and(|e| e == "sarif"));
    let report: Option<PathBuf> = match named.filter(|_| sarif.is_none()) {
        Some(p) => Some(p),
        None if mode == Mode::Detect || sarif.is_some() => match create_temp_report() {
            Ok(p) => {
                temp_report = Some(p.clone());
                Some(p)
            }
            Err(e) => {
                eprintln!("splicecow: cannot create a report file ({e}); reports go to stderr");
                None
            }
        },
        None => None,
    };

    let mut cmd = Command::new(&program);
    cmd.args(&args.command[1..])
        .env(
            "LD_PRELOAD",
            ld_preload(std::env::var_os("LD_PRELOAD"), &lib),
        )
        .env(names::DOMAIN, &domain)
        .env(names::MODE, mode.name());
    if let Some(r) = &report {
        cmd.env(names::REPORT, r);
    }
    if args.private_snapshots {
        cmd.env(names::PRIVATE_SNAPSHOTS, "1");
    }

    let sigs = signal_set();
    // SAFETY: plain system calls on valid arguments. Becoming a subreaper makes orphaned
    // descendants our children so that we see when the last one is gone; blocking the
    // signals (before CMD exists) lets us receive them with sigtimedwait, race-free.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::pthread_sigmask(libc::SIG_BLOCK, &sigs, std::ptr::null_mut());
    }
    // SAFETY: the closure runs in the forked child before exec and only calls
    // pthread_sigmask, which is async-signal-safe; it gives CMD a clean signal mask.
    unsafe {
        cmd.pre_exec(move || {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &sigs, std::ptr::null_mut());
            Ok(())
        });
    }

    let supervising = strict_wanted(args.strict)
        && mode != Mode::Off
        && strict(&mut cmd, &program, &domain, mode, report.as_deref());

    let spawned = cmd.spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            eprintln!("splicecow: cannot run {}: {e}", program.to_string_lossy());
            cleanup(created, &domain, temp_report.as_deref());
            return if e.kind() == ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let child_pid = child.id() as libc::pid_t;
    let (status, all_gone) = wait_all(child_pid, &sigs);

    // Reports, counters, the conflict summary: all before the registry goes away. The
    // report's stacks are resolved (and its repeated pairs of call sites merged) here,
    // outside the programs that wrote it.
    let lines = report
        .as_deref()
        .filter(|p| p.is_file())
        .and_then(|p| symbolize::read_symbolized(p).ok())
        .unwrap_or_default();
    if let Some(out) = sarif.as_deref() {
        if let Err(e) = symbolize::write_report(out, &lines) {
            eprintln!("splicecow: cannot write {}: {e}", out.display());
        }
    }
    if let (Some(p), false) = (&report, lines.is_empty()) {
        if temp_report.is_none() {
            if let Err(e) = symbolize::write_report(p, &lines) {
                eprintln!("splicecow: cannot write {}: {e}", p.display());
            }
        } else if sarif.is_none() {
            for v in &lines {
                eprintln!("{v}");
            }
        }
        for v in &lines {
            eprint!("{}", symbolize::sanitizer_text(v));
        }
    }
    let counters = registry.as_ref().map(|r| r.stats());
    if args.stats {
        match &counters {
            Some(s) => eprint!("{}", stats::human(&domain, s)),
            None => eprintln!("splicecow: no counters (the domain had no registry)"),
        }
    }
    if let Some(n) = counters.map(|s| s.env_cleared).filter(|&n| n > 0) {
        eprintln!(
            "splicecow: {n} exec(s) in this domain dropped LD_PRELOAD/SPLICECOW_* from the \
             environment: those programs ran without splicecow, outside the domain"
        );
    }
    let mut code = status;
    if args.fail_on_conflict {
        let summary = summarize(&lines);
        let calls = counters.map_or(0, |s| s.conflicts);
        if calls > 0 || summary.lines > 0 {
            eprintln!("{}", conflict_headline(summary.lines, calls));
            for ((path, kind), n) in &summary.by_path_kind {
                eprintln!("splicecow:   {path}: {kind} x{n}");
            }
            match (&sarif, &report, &temp_report) {
                (Some(p), _, _) | (None, Some(p), None) => {
                    eprintln!("splicecow: details in {}", p.display())
                }
                _ => {}
            }
            if code == 0 {
                code = EXIT_CONFLICTS;
            }
        }
    }
    drop(registry);
    if all_gone && supervising {
        // What filtered processes spliced last is still recorded: their closes are not
        // seen. The sweep retires what no process holds any more.
        crate::strict::sweep();
    }
    if all_gone {
        cleanup(created, &domain, temp_report.as_deref());
    } else {
        eprintln!(
            "splicecow: descendants of {} are still running; leaving the registry of domain {domain}",
            program.to_string_lossy()
        );
        if let Some(p) = &temp_report {
            let _ = std::fs::remove_file(p);
        }
    }
    code
}

/// True when the run is strict: `--strict`, or `SPLICECOW_STRICT=1` in its environment
/// (another value than 0 or 1 prints one line and counts as 0).
fn strict_wanted(flag: bool) -> bool {
    if flag {
        return true;
    }
    match std::env::var_os(names::STRICT) {
        None => false,
        Some(v) if v == "1" => true,
        Some(v) if v == "0" || v.is_empty() => false,
        Some(v) => {
            eprintln!(
                "splicecow: {}={}: not 0 or 1; strict mode is off",
                names::STRICT,
                v.to_string_lossy()
            );
            false
        }
    }
}

/// Strict mode: starts the domain's supervisor (see `strict`), with a statically linked
/// or Go CMD under the filter from its start; a dynamically linked CMD keeps the preload
/// alone, and the static programs it or its descendants exec get the filter through the
/// library's exec hooks. Says in one line why not when it cannot. True when the
/// supervisor runs.
fn strict(
    cmd: &mut Command,
    program: &OsStr,
    domain: &str,
    mode: Mode,
    report: Option<&Path>,
) -> bool {
    use crate::strict::Coverage;
    let shown = program.to_string_lossy();
    if !crate::strict::kernel_supports() {
        eprintln!(
            "splicecow: this kernel has no seccomp user notification: {shown} and its \
             children run without strict mode's filter"
        );
        return false;
    }
    let coverage = crate::strict::coverage(program);
    if coverage == Coverage::Setuid {
        eprintln!(
            "splicecow: {shown} is setuid/setgid: strict mode leaves it out \
             (no_new_privs would run it without its privileges)"
        );
    }
    let report = report.map(|p| p.as_os_str().as_encoded_bytes().to_vec());
    let domain = crate::strict::Domain {
        name: domain.to_string(),
        mode,
        report,
    };
    crate::strict::arrange(cmd, program, domain, coverage.filtered())
}

/// The first line of the `--fail-on-conflict` summary. `reported` is the number of
/// report lines (one per conflict: a segment is reported once however often it is hit),
/// `calls` the registry's `conflicts` counter (every mutating call that overlapped an
/// in-flight segment, also in protect mode). The report is the better count when it has
/// lines; the counter stands in when it has none (protect mode, or no report file).
pub fn conflict_headline(reported: u64, calls: u64) -> String {
    if reported == 0 {
        format!("splicecow: {calls} splice/mutation conflict(s) detected")
    } else if calls > reported {
        format!(
            "splicecow: {reported} splice/mutation conflict(s) detected \
             ({calls} conflicting mutation calls)"
        )
    } else {
        format!("splicecow: {reported} splice/mutation conflict(s) detected")
    }
}

/// A new domain name: `run-<pid>-<nanoseconds since the epoch>`.
fn fresh_domain() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("run-{}-{nanos}", std::process::id())
}

/// `existing` with `lib` appended unless it is already one of its entries (entries are
/// separated by colons or spaces, as ld.so reads them).
pub fn ld_preload(existing: Option<OsString>, lib: &Path) -> OsString {
    let lib = lib.as_os_str();
    let Some(existing) = existing.filter(|e| !e.to_string_lossy().trim().is_empty()) else {
        return lib.to_os_string();
    };
    let present = existing
        .as_encoded_bytes()
        .split(|b| *b == b':' || *b == b' ')
        .any(|entry| entry == lib.as_encoded_bytes());
    if present {
        return existing;
    }
    let mut out = existing;
    out.push(OsStr::new(":"));
    out.push(lib);
    out
}

/// The set of forwarded signals plus SIGCHLD.
fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset only gets valid signal numbers.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for s in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

/// Shell-style exit status of a wait status.
fn exit_code(status: i32) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// Reaps every child that has exited. Returns true when no child is left (ECHILD).
fn reap(child_pid: libc::pid_t, status: &mut Option<i32>) -> bool {
    loop {
        let mut st = 0;
        // SAFETY: waitpid writes only to `st`.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if r == child_pid {
            *status = Some(exit_code(st));
        } else if r == 0 {
            return false;
        } else if r < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return true,
                _ => return false,
            }
        }
    }
}

/// Waits for CMD, forwarding signals to it, then for every orphaned descendant.
/// Returns CMD's exit status and whether every descendant is gone.
fn wait_all(child_pid: libc::pid_t, sigs: &libc::sigset_t) -> (i32, bool) {
    let mut status = None;
    let mut deadline: Option<Instant> = None;
    loop {
        if reap(child_pid, &mut status) {
            return (status.unwrap_or(0), true);
        }
        if let (Some(code), Some(d)) = (status, deadline) {
            if Instant::now() >= d {
                return (code, false);
            }
        }
        let timeout = libc::timespec {
            tv_sec: if deadline.is_some() { 0 } else { 1 },
            tv_nsec: if deadline.is_some() { 10_000_000 } else { 0 },
        };
        // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
        let mut info = unsafe { std::mem::zeroed::<libc::siginfo_t>() };
        // SAFETY: info is written by the kernel; the set and timeout are valid.
        let sig = unsafe { libc::sigtimedwait(sigs, &mut info, &timeout) };
        if !FORWARDED.contains(&sig) {
            continue; // SIGCHLD, timeout or EINTR: reap again
        }
        if status.is_none() {
            forward(sig, &info, child_pid);
        } else if deadline.is_none() {
            // CMD is gone and we are asked to stop: give the rest a moment.
            deadline = Some(Instant::now() + GRACE);
        }
    }
}

/// Sends `sig` to CMD unless CMD got it already: a terminal signals the whole
/// foreground process group, which CMD shares with us unless it left it.
fn forward(sig: i32, info: &libc::siginfo_t, child_pid: libc::pid_t) {
    // SAFETY: getpgid/getpgrp/kill are plain system calls; a stale pid only fails.
    unsafe {
        let from_terminal = info.si_code == libc::SI_KERNEL;
        if from_terminal && libc::getpgid(child_pid) == libc::getpgrp() {
            return;
        }
        libc::kill(child_pid, sig);
    }
}

/// Removes what `run` created: the registry (if ours) and the temporary report. A
/// registry that still records bytes in flight (a pipe its splicer left to a reader
/// outside the domain) stays, so that the user's other processes still settle them;
/// `splicecow stats --all --remove-stale` removes it later. A removed domain leaves the
/// user index too.
fn cleanup(created: bool, domain: &str, temp_report: Option<&Path>) {
    if created {
        let in_flight = Registry::open_existing(domain).is_ok_and(|r| r.live_segments() > 0);
        if !in_flight {
            if let Err(e) = Registry::unlink(domain) {
                eprintln!("splicecow: cannot remove the registry of domain {domain}: {e}");
            }
            if let Ok(index) = splicecow_registry::index::Index::open_existing() {
                index.remove_domain(domain);
            }
        }
    }
    if let Some(p) = temp_report {
        let _ = std::fs::remove_file(p);
    }
}

/// Creates an empty private report file in the temporary directory.
fn create_temp_report() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    for n in 0.. {
        let name = if n == 0 {
            format!("splicecow-report-{pid}.jsonl")
        } else {
            format!("splicecow-report-{pid}-{n}.jsonl")
        };
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => return Ok(path),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && n < 100 => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!()
}

/// What a report says: how many lines, and how many conflicts per (path, mutation kind).
#[derive(Debug, Default)]
pub struct ReportSummary {
    /// Conflict reports (lines that are JSON objects; a merged line counts once).
    pub lines: u64,
    /// Counts per file path and mutation kind.
    pub by_path_kind: BTreeMap<(String, String), u64>,
}

/// Sums up report lines leniently: missing fields are tolerated; a line merged from
/// several conflicts (`count`) counts that many under its path and kind.
pub fn summarize(lines: &[serde_json::Value]) -> ReportSummary {
    let mut summary = ReportSummary::default();
    for v in lines {
        let text = |k: &str| v[k].as_str().unwrap_or("?").to_string();
        summary.lines += 1;
        *summary
            .by_path_kind
            .entry((text("path"), text("kind")))
            .or_default() += v["count"].as_u64().unwrap_or(1);
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ld_preload_is_appended_once() {
        let lib = Path::new("/x/libsplicecow.so");
        assert_eq!(ld_preload(None, lib), "/x/libsplicecow.so");
        assert_eq!(ld_preload(Some(" ".into()), lib), "/x/libsplicecow.so");
        assert_eq!(
            ld_preload(Some("/a.so".into()), lib),
            "/a.so:/x/libsplicecow.so"
        );
        assert_eq!(
            ld_preload(Some("/a.so /x/libsplicecow.so".into()), lib),
            "/a.so /x/libsplicecow.so"
        );
    }

    #[test]
    fn the_headline_counts_report_lines_first() {
        assert_eq!(
            conflict_headline(0, 3),
            "splicecow: 3 splice/mutation conflict(s) detected"
        );
        assert_eq!(
            conflict_headline(2, 2),
            "splicecow: 2 splice/mutation conflict(s) detected"
        );
        assert_eq!(
            conflict_headline(1, 0),
            "splicecow: 1 splice/mutation conflict(s) detected"
        );
        assert_eq!(
            conflict_headline(2, 3),
            "splicecow: 2 splice/mutation conflict(s) detected (3 conflicting mutation calls)"
        );
    }

    #[test]
    fn reports_are_summarized_leniently() {
        let path =
            std::env::temp_dir().join(format!("splicecow-unit-{}.jsonl", std::process::id()));
        std::fs::write(
            &path,
            concat!(
                r#"{"kind":"pwrite","path":"/a","offset":1,"len":2,"segment":{}}"#,
                "\nnot json\n",
                r#"{"kind":"pwrite","path":"/a"}"#,
                "\n",
                r#"{"kind":"ftruncate","len":null}"#,
                "\n"
            ),
        )
        .unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let s = summarize(&symbolize::parse_report(std::io::BufReader::new(file)));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(s.lines, 3);
        assert_eq!(s.by_path_kind[&("/a".into(), "pwrite".into())], 2);
        assert_eq!(s.by_path_kind[&("?".into(), "ftruncate".into())], 1);
    }
}
