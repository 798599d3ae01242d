//! Differential tests: one user, one protection. A change to a file by any preloaded
//! process of the user settles every domain's in-flight splices of that file (or, where
//! the splicing domain runs in detect mode, reports them), not only the changer's own
//! domain's.
//!
//! Before the user index, a domain protected only against mutations made inside it:
//! `splicecow run -- sh -c 'pv -q f | (sleep 1.2; cat > out)'` while another preloaded
//! process of the same user, in the default domain, `pwrite`s `f` left `out` corrupted.
//!
//! Every scenario has the same shape. A *splicer* moves the 64 KiB of a pattern file into
//! a pipe whose read end only this test (an unshimmed reader) holds, then waits for its
//! stdin to close. The test waits until the pipe holds the 64 KiB and, protected, until
//! `splicecow stats --domain D --json` of the splicer's domain shows `live_segments > 0`
//! (events are ordered by polling, never by sleeps alone). A *mutator* in another domain
//! then changes the spliced range (`os.pwrite` of 16 `B`s at 100 from Python, or a C
//! `ftruncate` to 100 bytes) and exits; only then does the test read the pipe. Each
//! scenario runs unshimmed first (the reader should see the change; if it does not, the
//! test says it could not reproduce the corruption and goes on) and then with
//! `libsplicecow.so` preloaded, where the bytes must be exactly the spliced ones and the
//! splicer's domain must count the settle. Domains are named after the test process
//! ([`TempDomain`]) or are fresh `splicecow run` domains, never the real `default`, since
//! tests run concurrently.
//!
//! The scenarios: a `splicecow run` splicer (`pv`) and a mutator in a named domain; two
//! `run` domains; a named domain and a fresh one; detect and protect domains mixed (a
//! detect-mode mutator still settles a protect domain's splice; a detect-mode splice is
//! reported, not settled, on the line the *mutator* writes, naming both domains); a
//! domain whose registry is deleted while its splicer runs, and an idle domain whose
//! registry holds garbage, next to a live domain that must stay protected; and 100
//! domains alive at once. The helpers are a small C program compiled with gcc at test
//! time and a Python one-liner.

use std::ffi::{OsStr, OsString};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use splicecow_registry::env as names;
use splicecow_test_harness::{
    cli_path, compare, compile_c, counter, domain_stats, find_program, library_path, pattern, pipe,
    python3, run_domain_of, strip_shim_env, wait_for_fionread, wait_for_stats, Comparison,
    Protection, RunOutput, ScratchDir, TempDomain, TempFile,
};

/// Bytes every splicer moves: one default-sized pipe, the whole file.
const LEN: usize = 64 * 1024;
/// How long one process may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// How long the test polls for an event (bytes in a pipe, a registry, a live segment).
const EVENT: Duration = Duration::from_secs(15);
/// Where the `pwrite` mutators write their 16 `B`s.
const PWRITE_AT: usize = 100;
/// The length the `ftruncate` mutator cuts the file to.
const TRUNCATE_TO: usize = 100;

/// The preloadable library, or a failure that says how to build it.
fn lib() -> PathBuf {
    library_path().unwrap_or_else(|e| panic!("{e}"))
}

/// The `splicecow` CLI (beside the library, so that a library built elsewhere is driven
/// by the CLI of the same layout).
fn cli() -> PathBuf {
    cli_path().unwrap_or_else(|e| panic!("{e}"))
}

/// The helper program; `argv[1]` is the mode. Exit status 2 on any unexpected failure.
///
/// - `splice FILE LEN`: `splice`s LEN bytes of FILE (from offset 0, `off_in` given) into
///   stdout, says `spliced LEN` on stderr, then waits until stdin is closed and closes
///   stdout.
/// - `hold FILE LEN`: makes a pipe of its own, splices LEN bytes of FILE into it, prints
///   `ready FD` (the read end's fd) on stdout, then waits until stdin is closed and closes
///   both ends.
/// - `idle`: prints `ready`, then waits until stdin is closed.
/// - `wait`: waits until stdin is closed, then closes stdout.
///
/// The explicit `close`s let the library retire the segments of a pipe that was read
/// meanwhile (its close hook prunes through the closing fd), so that a finished test
/// leaves no entry for its domain in the user index: an exit closes without any hook.
/// - `pwrite FILE OFF`: `pwrite`s 16 `B`s at OFF, prints `ok`.
/// - `ftruncate FILE LEN`: `ftruncate`s FILE to LEN bytes, prints `ok`.
const HELPER_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(2); }

static void wait_for_eof(void) {
    char buf[256];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EINTR)) return;
    }
}

static void splice_into(const char *path, int out, long long len) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("open");
    loff_t off = 0;
    while (off < len) {
        ssize_t r = splice(fd, &off, out, NULL, (size_t)(len - off), 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) die("splice");
    }
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *mode = argv[1];
    if (strcmp(mode, "wait") == 0) { wait_for_eof(); close(1); return 0; }
    if (strcmp(mode, "idle") == 0) {
        printf("ready\n");
        fflush(stdout);
        wait_for_eof();
        return 0;
    }
    if (argc < 4) return 2;
    const char *path = argv[2];
    long long n = atoll(argv[3]);
    if (strcmp(mode, "splice") == 0) {
        splice_into(path, 1, n);
        dprintf(2, "spliced %lld\n", n);
        wait_for_eof();
        close(1);
        return 0;
    }
    if (strcmp(mode, "hold") == 0) {
        int p[2];
        if (pipe(p)) die("pipe");
        splice_into(path, p[1], n);
        printf("ready %d\n", p[0]);
        fflush(stdout);
        wait_for_eof();
        close(p[1]);
        close(p[0]);
        return 0;
    }
    int fd = open(path, O_RDWR);
    if (fd < 0) die("open");
    if (strcmp(mode, "pwrite") == 0) {
        if (pwrite(fd, "BBBBBBBBBBBBBBBB", 16, (off_t)n) != 16) die("pwrite");
    } else if (strcmp(mode, "ftruncate") == 0) {
        if (ftruncate(fd, (off_t)n)) die("ftruncate");
    } else {
        return 2;
    }
    printf("ok\n");
    return 0;
}
"#;

/// The compiled [`HELPER_C`].
fn helper() -> PathBuf {
    static PROGRAM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| compile_c("cross-domain-helper", HELPER_C))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The Python mutator: `os.pwrite` of 16 `B`s at [`PWRITE_AT`] of `argv[1]`.
const PYTHON_PWRITE: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
assert os.pwrite(fd, b"B" * 16, 100) == 16
os.close(fd)
"#;

/// Where a process runs.
#[derive(Debug, Clone)]
enum Place {
    /// No `LD_PRELOAD`, no `SPLICECOW_*`: the unprotected half of a differential run.
    Unshimmed,
    /// Preloaded by hand in a named domain with `SPLICECOW_MODE=mode`.
    Named { domain: String, mode: &'static str },
    /// Under `splicecow run --mode MODE -- ...`: a fresh `run-<pid>-<nanos>` domain.
    Run { mode: &'static str },
}

impl Place {
    /// Preloaded in `d`, protect mode.
    fn named(d: &TempDomain) -> Place {
        Place::Named {
            domain: d.name().to_string(),
            mode: "protect",
        }
    }

    /// Preloaded in `d`, detect mode.
    fn detect(d: &TempDomain) -> Place {
        Place::Named {
            domain: d.name().to_string(),
            mode: "detect",
        }
    }

    /// A fresh `splicecow run` domain in protect mode.
    fn run() -> Place {
        Place::Run { mode: "protect" }
    }

    fn label(&self) -> String {
        match self {
            Place::Unshimmed => "unprotected".into(),
            Place::Named { domain, mode } => format!("{mode} domain {domain}"),
            Place::Run { mode } => format!("splicecow run --mode {mode}"),
        }
    }

    /// `program args` run here; `report` becomes `SPLICECOW_REPORT` (`run --report`).
    fn command(&self, program: &Path, args: &[OsString], report: Option<&Path>) -> Command {
        match self {
            Place::Unshimmed => {
                let mut cmd = Command::new(program);
                strip_shim_env(&mut cmd).args(args);
                cmd
            }
            Place::Named { domain, mode } => {
                let mut cmd = Command::new(program);
                Protection::Protected {
                    lib: lib(),
                    domain: domain.clone(),
                }
                .apply(&mut cmd)
                .env(names::MODE, mode)
                .args(args);
                if let Some(r) = report {
                    cmd.env(names::REPORT, r);
                }
                cmd
            }
            Place::Run { mode } => {
                let mut cmd = Command::new(cli());
                strip_shim_env(&mut cmd)
                    .env(names::LIB, lib())
                    .args(["run", "--mode", mode]);
                if let Some(r) = report {
                    cmd.arg("--report").arg(r);
                }
                cmd.arg("--").arg(program).args(args);
                cmd
            }
        }
    }
}

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_owned()
}

/// What moves the file into the splicer's pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    /// `helper splice FILE 65536`.
    Helper,
    /// `sh -c 'pv -q FILE && exec helper wait'` (the helper when `pv` is missing).
    Pv,
}

/// The mutation the mutator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Python `os.pwrite` of 16 `B`s at [`PWRITE_AT`].
    PythonPwrite,
    /// C `pwrite` of 16 `B`s at [`PWRITE_AT`].
    CPwrite,
    /// C `ftruncate` to [`TRUNCATE_TO`] bytes.
    CFtruncate,
}

impl Change {
    fn label(self) -> &'static str {
        match self {
            Change::PythonPwrite => "python os.pwrite",
            Change::CPwrite => "C pwrite",
            Change::CFtruncate => "C ftruncate",
        }
    }
}

/// Runs the mutator `how` on `file` in `place` to its end; it must succeed.
fn change(place: &Place, how: Change, file: &Path, report: Option<&Path>) -> RunOutput {
    let mut cmd = match how {
        Change::PythonPwrite => {
            place.command(&python3(), &[os("-c"), os(PYTHON_PWRITE), os(file)], report)
        }
        Change::CPwrite => place.command(
            &helper(),
            &[os("pwrite"), os(file), os(PWRITE_AT.to_string())],
            report,
        ),
        Change::CFtruncate => place.command(
            &helper(),
            &[os("ftruncate"), os(file), os(TRUNCATE_TO.to_string())],
            report,
        ),
    };
    let out = run_group(&mut cmd, TIMEOUT).expect("spawn the mutator");
    assert!(
        out.status.is_some(),
        "HANG: the mutator ({}, {}) did not finish within {TIMEOUT:?}: {}",
        how.label(),
        place.label(),
        out.describe()
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "the mutator ({}, {}) failed: {}",
        how.label(),
        place.label(),
        out.describe()
    );
    out
}

/// `splicecow:` lines in a process's stderr.
fn splicecow_lines(out: &RunOutput) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("splicecow:"))
        .map(str::to_string)
        .collect()
}

/// Everything a child writes to one pipe, collected by a thread of its own; taking it
/// waits a bounded time, so a grandchild that keeps the pipe open cannot hang the test.
struct Drained(std::sync::mpsc::Receiver<Vec<u8>>);

impl Drained {
    fn new<R: io::Read + Send + 'static>(r: Option<R>) -> Drained {
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        Drained(rx)
    }

    /// What was written, once the pipe's last writer is gone (empty after `timeout`).
    fn take(&self, timeout: Duration) -> Vec<u8> {
        self.0.recv_timeout(timeout).unwrap_or_default()
    }
}

/// Kills the process group `pgid` (a child started with `process_group(0)` and all it
/// started, `splicecow run`'s descendants included).
fn kill_group(pgid: u32) {
    // SAFETY: kill has no memory arguments; a negative pid names the process group.
    unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
}

/// Waits for `child` (the leader of a process group of its own) at most `timeout`; when
/// it is late, kills its whole group while the leader is not reaped yet (so the group id
/// is still its own), reaps it and returns `None`.
fn wait_group(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(2)),
            _ => {
                kill_group(child.id());
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Runs `cmd` in a process group of its own with stdin closed and stdout/stderr
/// captured; when it is not done within `timeout`, the whole group is killed (status
/// `None`).
fn run_group(cmd: &mut Command, timeout: Duration) -> io::Result<RunOutput> {
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (out, err) = (
        Drained::new(child.stdout.take()),
        Drained::new(child.stderr.take()),
    );
    let status = wait_group(&mut child, timeout);
    Ok(RunOutput {
        status,
        stdout: out.take(Duration::from_secs(5)),
        stderr: err.take(Duration::from_secs(5)),
    })
}

/// Makes `fd` non-blocking.
fn set_nonblocking(fd: &impl AsRawFd) {
    // SAFETY: F_GETFL/F_SETFL on an open fd touch no memory of ours.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Reads the pipe `fd` (made non-blocking) until EOF, or until `want` bytes when given;
/// an error when neither came within `timeout`. A read error (after a truncation the
/// kernel may refuse a page) ends the bytes.
fn read_pipe(fd: &impl AsRawFd, want: Option<usize>, timeout: Duration) -> Result<Vec<u8>, String> {
    set_nonblocking(fd);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if want.is_some_and(|w| out.len() >= w) {
            return Ok(out);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the pipe gave {} bytes and no {} within {timeout:?}",
                out.len(),
                if want.is_some() { "more" } else { "EOF" }
            ));
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the timeout is bounded.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 500) as i32) };
        let room = want.map_or(buf.len(), |w| (w - out.len()).min(buf.len()));
        // SAFETY: buf is valid for writes of `room <= buf.len()` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), room) };
        match n {
            0 => return Ok(out),
            n if n > 0 => out.extend_from_slice(&buf[..n as usize]),
            _ => {
                let e = io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    eprintln!("reading the pipe after {} bytes: {e}", out.len());
                    return Ok(out);
                }
            }
        }
    }
}

/// A splicer: a process (or a `splicecow run` tree) that moved [`LEN`] bytes of a file
/// into a pipe whose read end only the test holds, and waits for its stdin to close.
/// Dropped early (a failed assertion), it is killed and its stdin closed, so nothing
/// stays behind.
struct Splicer {
    child: Child,
    stdin: Option<ChildStdin>,
    reader: OwnedFd,
    stderr: Drained,
    /// The domain it splices in (`None`: unshimmed).
    domain: Option<String>,
    place: Place,
    /// Reaped: its pid (and process group id) may belong to someone else now.
    reaped: bool,
}

/// What a finished splicer left.
struct Finished {
    /// What the test read from the pipe after the splicer exited.
    got: Vec<u8>,
    /// `got` against the pattern.
    cmp: Comparison,
}

impl Splicer {
    /// Starts `program` on `file` in `place` and waits until its bytes are in the pipe
    /// and, shimmed, its domain shows the live segment.
    fn start(place: &Place, program: Program, file: &Path) -> Splicer {
        let (reader, writer) = pipe().expect("pipe");
        let helper = helper();
        let pv = find_program("pv");
        if program == Program::Pv && pv.is_none() {
            eprintln!("pv is not installed: the helper splices instead");
        }
        let mut cmd = match (program, pv) {
            (Program::Pv, Some(pv)) => place.command(
                Path::new("/bin/sh"),
                &[
                    os("-c"),
                    os("\"$1\" -q \"$2\" && exec \"$3\" wait"),
                    os("sh"),
                    os(pv),
                    os(file),
                    os(&helper),
                ],
                None,
            ),
            _ => place.command(
                &helper,
                &[os("splice"), os(file), os(LEN.to_string())],
                None,
            ),
        };
        cmd.process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the splicer");
        // The Command holds the pipe's write end: only the splicer may keep it open.
        drop(cmd);
        let stdin = child.stdin.take();
        let stderr = Drained::new(child.stderr.take());
        let mut s = Splicer {
            child,
            stdin,
            reader,
            stderr,
            domain: None,
            place: place.clone(),
            reaped: false,
        };
        s.domain = match place {
            Place::Unshimmed => None,
            Place::Named { domain, .. } => Some(domain.clone()),
            Place::Run { .. } => Some(
                run_domain_of(s.child.id(), EVENT)
                    .unwrap_or_else(|| panic!("splicecow run made no registry within {EVENT:?}")),
            ),
        };
        let queued = wait_for_fionread(&s.reader, LEN, EVENT).expect("FIONREAD");
        assert_eq!(
            queued,
            LEN,
            "the splicer ({}) put {queued} bytes into its pipe within {EVENT:?}",
            place.label()
        );
        if let Some(domain) = &s.domain {
            if let Err(e) = wait_for_stats(domain, EVENT, |st| {
                counter(st, "live_segments").unwrap_or(0) > 0
            }) {
                panic!(
                    "the splicer's domain never showed its live segment (the splice was not \
                     recorded): {e}"
                );
            }
        }
        s
    }

    /// The splicer's pid (`splicecow run`'s own when it runs under `run`).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the [`LEN`] spliced bytes from the pipe (the splicer may be waiting for
    /// room: `pv` exits only once it has seen the end of its file), closes the splicer's
    /// stdin, waits for it to exit (it must succeed), then reads what else the pipe
    /// holds until EOF (nothing, when no byte was duplicated).
    fn finish(mut self) -> Finished {
        let mut got = read_pipe(&self.reader, Some(LEN), EVENT).unwrap_or_else(|e| panic!("{e}"));
        drop(self.stdin.take());
        let status = wait_group(&mut self.child, TIMEOUT);
        self.reaped = true;
        let stderr =
            String::from_utf8_lossy(&self.stderr.take(Duration::from_secs(5))).into_owned();
        assert!(
            status.is_some(),
            "HANG: the splicer ({}) did not exit within {TIMEOUT:?} after its stdin closed; \
             stderr {stderr:?}",
            self.place.label()
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "the splicer ({}) failed: {status:?}, stderr {stderr:?}",
            self.place.label()
        );
        got.extend(read_pipe(&self.reader, None, EVENT).unwrap_or_else(|e| panic!("{e}")));
        let cmp = compare(&pattern(LEN), &got);
        Finished { got, cmp }
    }
}

impl Drop for Splicer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if !self.reaped {
            // A failed assertion: all of its process group (the leader is not reaped, so
            // the group id is still ours).
            kill_group(self.child.id());
            let _ = self.child.wait();
        }
    }
}

/// One run of a scenario: what the reader got, the splicer's domain and its counters
/// right after the change, and what the mutator printed.
struct Ran {
    finished: Finished,
    splicer_domain: Option<String>,
    splicer_pid: u32,
    stats: Option<serde_json::Value>,
    mutator: RunOutput,
}

/// Splices a fresh pattern file in `splicer`, changes it from `mutator`, reads the pipe.
fn run_scenario(
    splicer: &Place,
    program: Program,
    mutator: &Place,
    how: Change,
    report: Option<&Path>,
) -> Ran {
    let file = TempFile::with_pattern("xdomain", LEN).expect("pattern file");
    let s = Splicer::start(splicer, program, file.path());
    let out = change(mutator, how, file.path(), report);
    let stats = s
        .domain
        .as_deref()
        .map(|d| domain_stats(d).unwrap_or_else(|e| panic!("{e}")));
    let (splicer_domain, splicer_pid) = (s.domain.clone(), s.pid());
    Ran {
        finished: s.finish(),
        splicer_domain,
        splicer_pid,
        stats,
        mutator: out,
    }
}

/// Says what the unprotected run showed.
fn note_unprotected(what: &str, how: Change, r: &Ran) {
    note_comparison(what, how, r.finished.cmp);
}

/// Says what an unprotected reader got (`c`: against the spliced bytes).
fn note_comparison(what: &str, how: Change, c: Comparison) {
    if c.mismatched_bytes == 0 {
        eprintln!(
            "{what}: unprotected, could not reproduce the corruption on this kernel (the reader \
             got the original bytes after the {})",
            how.label()
        );
    } else {
        eprintln!(
            "{what}: unprotected, the reader got {} changed bytes (first at {:?}): the {} showed \
             through",
            c.mismatched_bytes,
            c.first_mismatch,
            how.label()
        );
    }
}

/// The protected run got exactly the spliced bytes, the splicer's domain (not the
/// mutator's) counted a conflict and a settle, and the mutator printed at most
/// `lines_allowed` `splicecow:` lines (a settle itself prints nothing).
fn assert_settled(what: &str, r: &Ran, lines_allowed: usize) {
    let stats = r.stats.clone().unwrap_or_default();
    let c = r.finished.cmp;
    assert!(
        c.mismatched_bytes == 0 && r.finished.got.len() == LEN,
        "{what}: protected, the reader got {} bytes, {} of them changed (first at {:?}): the \
         change in the other domain was not settled in the splicer's domain {:?}: {stats}",
        r.finished.got.len(),
        c.mismatched_bytes,
        c.first_mismatch,
        r.splicer_domain
    );
    let (settles, conflicts) = (
        counter(&stats, "settles").unwrap_or(0),
        counter(&stats, "conflicts").unwrap_or(0),
    );
    assert!(
        settles >= 1 && conflicts >= 1,
        "{what}: the splicer's domain counted {settles} settles and {conflicts} conflicts: \
         {stats}"
    );
    let lines = splicecow_lines(&r.mutator);
    assert!(
        lines.len() <= lines_allowed,
        "{what}: the mutator printed {lines:?} (at most {lines_allowed} splicecow: lines \
         allowed)"
    );
}

/// The unprotected run, then the protected one, which must be settled exactly.
fn differential(what: &str, program: Program, splicer: &Place, mutator: &Place, how: Change) {
    let t = Instant::now();
    let unprotected = run_scenario(&Place::Unshimmed, program, &Place::Unshimmed, how, None);
    note_unprotected(what, how, &unprotected);
    let protected = run_scenario(splicer, program, mutator, how, None);
    assert_settled(what, &protected, 0);
    eprintln!(
        "{what}: protected ({} splices, {} changes): exact, settled in {:?}; {:?}",
        splicer.label(),
        mutator.label(),
        protected.splicer_domain,
        t.elapsed()
    );
}

#[test]
fn python_pwrite_from_a_named_domain_is_settled_in_a_run_domains_pv_pipeline() {
    let m = TempDomain::new();
    differential(
        "pv under splicecow run, python pwrite from a named domain",
        Program::Pv,
        &Place::run(),
        &Place::named(&m),
        Change::PythonPwrite,
    );
}

#[test]
fn c_ftruncate_from_a_named_domain_is_settled_in_a_run_domains_pv_pipeline() {
    let m = TempDomain::new();
    differential(
        "pv under splicecow run, C ftruncate from a named domain",
        Program::Pv,
        &Place::run(),
        &Place::named(&m),
        Change::CFtruncate,
    );
}

#[test]
fn two_run_domains_protect_each_other() {
    differential(
        "splice under one splicecow run, python pwrite under another",
        Program::Helper,
        &Place::run(),
        &Place::run(),
        Change::PythonPwrite,
    );
}

#[test]
fn a_fresh_run_domains_change_is_settled_in_a_named_domain() {
    let s = TempDomain::new();
    differential(
        "splice in a named domain, python pwrite under splicecow run",
        Program::Helper,
        &Place::named(&s),
        &Place::run(),
        Change::PythonPwrite,
    );
}

/// The lines of the report file at `path` (none when it does not exist).
fn report_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_detect_domains_change_settles_a_protect_domains_splice() {
    let what = "splice in a protect domain, python pwrite from a detect domain";
    let (s, m) = (TempDomain::new(), TempDomain::new());
    let scratch = ScratchDir::new("xdomain-report").expect("scratch dir");
    let report = scratch.join("report.jsonl");
    let unprotected = run_scenario(
        &Place::Unshimmed,
        Program::Helper,
        &Place::Unshimmed,
        Change::PythonPwrite,
        None,
    );
    note_unprotected(what, Change::PythonPwrite, &unprotected);
    let protected = run_scenario(
        &Place::named(&s),
        Program::Helper,
        &Place::detect(&m),
        Change::PythonPwrite,
        Some(&report),
    );
    assert_settled(what, &protected, 0);
    let lines = report_lines(&report);
    assert!(
        lines.is_empty(),
        "{what}: a settled segment of a protect domain is no detect-mode conflict, yet the \
         mutator reported {lines:?}"
    );
    let mstats = domain_stats(m.name()).expect("mutator's stats");
    assert_eq!(
        counter(&mstats, "conflicts"),
        Some(0),
        "{what}: the conflict belongs to the splicer's domain, not the mutator's: {mstats}"
    );
}

/// The one report line in `lines` (a JSON object), checked against what happened.
fn check_report_line(what: &str, lines: &[String], mutator: &str, ran: &Ran, file: &str) {
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        objects.len(),
        1,
        "{what}: expected one report line (one conflicting segment), got {lines:?}"
    );
    let r = &objects[0];
    let splicer = ran.splicer_domain.as_deref().unwrap_or_default();
    assert_eq!(
        r["domain"], mutator,
        "{what}: \"domain\" is the mutator's: {r}"
    );
    assert_eq!(
        r["segment"]["domain"], splicer,
        "{what}: \"segment\".\"domain\" is the splicer's: {r}"
    );
    assert_eq!(r["kind"], "pwrite", "{what}: {r}");
    assert_eq!(r["offset"], PWRITE_AT, "{what}: {r}");
    assert_eq!(r["len"], 16, "{what}: {r}");
    assert_eq!(r["segment"]["offset"], 0, "{what}: {r}");
    assert_eq!(r["segment"]["len"], LEN, "{what}: {r}");
    assert_eq!(r["segment"]["splicer_pid"], ran.splicer_pid, "{what}: {r}");
    let path = r["path"].as_str().unwrap_or_default();
    assert!(
        path.ends_with(file),
        "{what}: \"path\" {path:?} is not the changed file ({file}): {r}"
    );
}

/// Runs the detect-domain splice once with the mutator's report at `report` (else on
/// its stderr) and checks the bytes (the change shows, as unprotected), the counters
/// and the report line.
fn detect_splice_is_reported(what: &str, unprotected: &[u8], report: Option<&Path>) {
    let (s, m) = (TempDomain::new(), TempDomain::new());
    // The file's name is needed for the report's "path": run the steps by hand.
    let file = TempFile::with_pattern("xdomain-detect", LEN).expect("pattern file");
    let splicer = Splicer::start(&Place::detect(&s), Program::Helper, file.path());
    let out = change(&Place::named(&m), Change::PythonPwrite, file.path(), report);
    let stats = domain_stats(s.name()).expect("splicer's stats");
    let splicer_pid = splicer.pid();
    let ran = Ran {
        finished: splicer.finish(),
        splicer_domain: Some(s.name().to_string()),
        splicer_pid,
        stats: Some(stats.clone()),
        mutator: out,
    };
    assert_eq!(
        ran.finished.got,
        unprotected,
        "{what}: a detect domain's bytes are reported, not settled: the reader must see what \
         an unprotected reader sees ({} of {} bytes differ from it)",
        compare(unprotected, &ran.finished.got).mismatched_bytes,
        LEN
    );
    assert_eq!(
        counter(&stats, "settles"),
        Some(0),
        "{what}: a detect domain settles nothing: {stats}"
    );
    assert!(
        counter(&stats, "conflicts").unwrap_or(0) >= 1,
        "{what}: the detect domain counted no conflict (the change in the protect domain did \
         not look into it): {stats}"
    );
    let mstats = domain_stats(m.name()).expect("mutator's stats");
    assert_eq!(
        counter(&mstats, "conflicts"),
        Some(0),
        "{what}: the conflict belongs to the splicer's domain, not the mutator's: {mstats}"
    );
    let file_name = file.path().to_string_lossy().into_owned();
    let lines = match report {
        Some(path) => {
            let stderr = splicecow_lines(&ran.mutator);
            assert!(
                stderr.is_empty() && !String::from_utf8_lossy(&ran.mutator.stderr).contains('{'),
                "{what}: with SPLICECOW_REPORT the mutator's stderr stays quiet: {}",
                ran.mutator.describe()
            );
            report_lines(path)
        }
        None => String::from_utf8_lossy(&ran.mutator.stderr)
            .lines()
            .map(str::to_string)
            .collect(),
    };
    check_report_line(what, &lines, m.name(), &ran, &file_name);
    eprintln!("{what}: reported, not settled: {}", lines.join(" "));
}

#[test]
fn a_protect_domains_change_is_reported_not_settled_in_a_detect_domain() {
    let what = "splice in a detect domain, python pwrite from a protect domain";
    let t = Instant::now();
    let unprotected = run_scenario(
        &Place::Unshimmed,
        Program::Helper,
        &Place::Unshimmed,
        Change::PythonPwrite,
        None,
    );
    note_unprotected(what, Change::PythonPwrite, &unprotected);
    let scratch = ScratchDir::new("xdomain-report").expect("scratch dir");
    let report = scratch.join("report.jsonl");
    detect_splice_is_reported(
        &format!("{what} (SPLICECOW_REPORT)"),
        &unprotected.finished.got,
        Some(&report),
    );
    detect_splice_is_reported(
        &format!("{what} (report on stderr)"),
        &unprotected.finished.got,
        None,
    );
    eprintln!("{what}: {:?}", t.elapsed());
}

/// Two domains splice the same file; one domain's registry is unlinked while its splicer
/// runs (the splicer keeps its mapping, but nobody can find the registry by name any
/// more). A change from a third domain must skip that domain without a fuss and still
/// settle the live domain's splice.
#[test]
fn a_deleted_registry_is_skipped_and_the_live_domain_stays_protected() {
    let what = "registry of one splicing domain deleted, python pwrite from a third domain";
    let t = Instant::now();
    let file = TempFile::with_pattern("xdomain-deleted", LEN).expect("pattern file");
    {
        let gone = Splicer::start(&Place::Unshimmed, Program::Helper, file.path());
        let live = Splicer::start(&Place::Unshimmed, Program::Helper, file.path());
        change(&Place::Unshimmed, Change::PythonPwrite, file.path(), None);
        let (_, live) = (gone.finish(), live.finish());
        note_comparison(what, Change::PythonPwrite, live.cmp);
    }
    let file = TempFile::with_pattern("xdomain-deleted", LEN).expect("pattern file");
    let (d, l, m) = (TempDomain::new(), TempDomain::new(), TempDomain::new());
    let gone = Splicer::start(&Place::named(&d), Program::Helper, file.path());
    let live = Splicer::start(&Place::named(&l), Program::Helper, file.path());
    std::fs::remove_file(d.shm_path()).expect("unlink the registry");
    let out = change(&Place::named(&m), Change::PythonPwrite, file.path(), None);
    let stats = domain_stats(l.name()).expect("live domain's stats");
    let (gone, live_pid) = (gone.finish(), live.pid());
    let ran = Ran {
        finished: live.finish(),
        splicer_domain: Some(l.name().to_string()),
        splicer_pid: live_pid,
        stats: Some(stats),
        mutator: out,
    };
    assert_settled(what, &ran, 1);
    eprintln!(
        "{what}: the live domain's reader got exact bytes; the deleted domain's reader got {} \
         changed bytes (its registry cannot be found by name, so nobody settles it); {:?}",
        gone.cmp.mismatched_bytes,
        t.elapsed()
    );
}

/// Fills `path` from byte `from` to its end with pseudo-random bytes (xorshift, seeded).
fn write_garbage(path: &Path, from: u64) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(from))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut left = len.saturating_sub(from) as usize;
    let mut chunk = vec![0u8; 1 << 20];
    while left > 0 {
        for word in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n])?;
        left -= n;
    }
    f.sync_data()
}

/// An idle domain still named in the user index for the file (its splicer was killed with
/// the segment live, its pipe is gone) gets garbage written into its registry from byte
/// `from` on; then a live domain splices the same file and a third domain changes it.
fn corrupt_idle_registry_then_change(what: &str, from: u64) {
    let t = Instant::now();
    let unprotected = run_scenario(
        &Place::Unshimmed,
        Program::Helper,
        &Place::Unshimmed,
        Change::PythonPwrite,
        None,
    );
    note_unprotected(what, Change::PythonPwrite, &unprotected);
    let file = TempFile::with_pattern("xdomain-corrupt", LEN).expect("pattern file");
    let (c, l, m) = (TempDomain::new(), TempDomain::new(), TempDomain::new());
    {
        let mut idle = Splicer::start(&Place::named(&c), Program::Helper, file.path());
        kill_group(idle.child.id());
        let _ = idle.child.wait();
        idle.reaped = true;
        // Dropping it closes the test's read end: the pipe is gone.
    }
    write_garbage(&c.shm_path(), from).expect("write garbage into the idle registry");
    let live = Splicer::start(&Place::named(&l), Program::Helper, file.path());
    let out = change(&Place::named(&m), Change::PythonPwrite, file.path(), None);
    let stats = domain_stats(l.name()).expect("live domain's stats");
    let live_pid = live.pid();
    let ran = Ran {
        finished: live.finish(),
        splicer_domain: Some(l.name().to_string()),
        splicer_pid: live_pid,
        stats: Some(stats),
        mutator: out,
    };
    let lines = splicecow_lines(&ran.mutator);
    if !lines.is_empty() {
        eprintln!("{what}: the mutator said {lines:?}");
    }
    assert!(
        String::from_utf8_lossy(&ran.mutator.stderr)
            .lines()
            .all(|l| l.starts_with("splicecow:")),
        "{what}: the mutator printed more than splicecow: lines: {}",
        ran.mutator.describe()
    );
    assert_settled(what, &ran, 1);
    // A second change from the same domain: the garbage registry was dropped or is
    // harmless; it still works and still leaves nothing to settle.
    let again = change(&Place::named(&m), Change::CPwrite, file.path(), None);
    assert!(
        splicecow_lines(&again).len() <= 1,
        "{what}: the second mutator: {}",
        again.describe()
    );
    // A registry that opens but does not know the file keeps its entry in the user index
    // (only a registry that cannot be opened is dropped): remove it, then one more change
    // drops the entry, so that the test leaves nothing behind for the user's other
    // processes.
    let _ = std::fs::remove_file(c.shm_path());
    change(&Place::named(&m), Change::CPwrite, file.path(), None);
    eprintln!(
        "{what}: the live domain stayed protected; {:?}",
        t.elapsed()
    );
}

#[test]
fn a_garbage_registry_of_an_idle_domain_is_skipped_and_the_live_domain_stays_protected() {
    corrupt_idle_registry_then_change(
        "garbage over the whole registry of an idle domain named in the index",
        0,
    );
}

#[test]
fn a_registry_with_garbage_tables_is_skipped_and_the_live_domain_stays_protected() {
    // The first 16 bytes (magic, layout version and size) kept: the registry opens, and
    // everything it says (lock word, counters, tables, journal) is garbage.
    corrupt_idle_registry_then_change(
        "garbage after the preamble of an idle domain's registry named in the index",
        16,
    );
}

/// A process sleeping in a domain of its own: `helper idle`, or `helper hold FILE` with a
/// live splice of FILE into a pipe it holds. Killed when dropped.
struct Sleeper {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The read end of its pipe (`hold`).
    pipe_fd: Option<u32>,
    domain: TempDomain,
    file: Option<TempFile>,
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if wait_group(&mut self.child, Duration::from_secs(5)).is_none() {
            eprintln!("sleeper {} had to be killed", self.child.id());
        }
    }
}

/// The first line `out` writes, within `timeout`.
fn first_line(out: &ChildStdout, timeout: Duration) -> Option<String> {
    set_nonblocking(out);
    let bytes = read_pipe_line(out, timeout)?;
    Some(String::from_utf8_lossy(&bytes).trim().to_string())
}

fn read_pipe_line(fd: &impl AsRawFd, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let mut buf = [0u8; 64];
    while !line.contains(&b'\n') {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the timeout is bounded.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 500) as i32) };
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return None,
            n if n > 0 => line.extend_from_slice(&buf[..n as usize]),
            _ => {}
        }
    }
    Some(line)
}

/// Starts a sleeper in `place` (`hold` when `file` is given, else `idle`).
fn sleeper(protected: bool, file: Option<TempFile>) -> Sleeper {
    let domain = TempDomain::new();
    let place = if protected {
        Place::named(&domain)
    } else {
        Place::Unshimmed
    };
    let args = match &file {
        Some(f) => vec![os("hold"), os(f.path()), os(LEN.to_string())],
        None => vec![os("idle")],
    };
    let mut cmd = place.command(&helper(), &args, None);
    cmd.process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn a sleeper");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let mut s = Sleeper {
        child,
        stdin,
        pipe_fd: None,
        domain,
        file,
    };
    let line = stdout
        .as_ref()
        .and_then(|o| first_line(o, EVENT))
        .unwrap_or_else(|| panic!("sleeper {} never said it was ready", s.child.id()));
    s.pipe_fd = line.strip_prefix("ready ").and_then(|n| n.parse().ok());
    assert!(
        line == "ready" || s.pipe_fd.is_some(),
        "sleeper {}: {line:?}",
        s.child.id()
    );
    s
}

/// The [`LEN`] bytes in a `hold` sleeper's pipe, read by the test (unshimmed) through
/// `/proc/<pid>/fd/<n>`.
fn read_held_pipe(s: &Sleeper) -> Vec<u8> {
    let fd = s.pipe_fd.expect("a hold sleeper");
    let path = format!("/proc/{}/fd/{fd}", s.child.id());
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    read_pipe(&pipe, Some(LEN), EVENT).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn with_100_domains_alive_changes_work_and_a_spliced_file_is_settled_exactly() {
    let what = "100 domains alive, half with a live splice";
    let t = Instant::now();
    let scratch = ScratchDir::new("xdomain-many").expect("scratch dir");
    let new_file = |tag: &str| {
        let path = scratch.join(tag);
        splicecow_test_harness::write_pattern_file(&path, LEN).expect("pattern file");
        TempFile::adopt(path)
    };
    {
        // Unprotected: one holder, one pwrite, the pipe read afterwards.
        let holder = sleeper(false, Some(new_file("unprotected")));
        change(
            &Place::Unshimmed,
            Change::CPwrite,
            holder.file.as_ref().map(TempFile::path).expect("file"),
            None,
        );
        let got = read_held_pipe(&holder);
        let c = compare(&pattern(LEN), &got);
        eprintln!(
            "{what}: unprotected, {}",
            if c.mismatched_bytes == 0 {
                "could not reproduce the corruption on this kernel".to_string()
            } else {
                format!("the reader got {} changed bytes", c.mismatched_bytes)
            }
        );
    }
    let mut sleepers = Vec::with_capacity(100);
    for i in 0..100 {
        let file = (i % 2 == 0).then(|| new_file(&format!("held-{i}")));
        sleepers.push(sleeper(true, file));
    }
    let started = t.elapsed();
    let m = TempDomain::new();
    let unrelated = new_file("unrelated");

    // A change to a file nobody spliced: it works, in bounded time.
    let t1 = Instant::now();
    change(&Place::named(&m), Change::CPwrite, unrelated.path(), None);
    let unrelated_took = t1.elapsed();
    let bytes = std::fs::read(unrelated.path()).expect("read the unrelated file");
    assert_eq!(
        &bytes[PWRITE_AT..PWRITE_AT + 16],
        b"BBBBBBBBBBBBBBBB",
        "{what}: the pwrite to the unrelated file"
    );

    // A change to one of the spliced files: settled exactly, in its domain only.
    const TARGET: usize = 42;
    const OTHER: usize = 58;
    let (target, other) = (&sleepers[TARGET], &sleepers[OTHER]);
    let t2 = Instant::now();
    let out = change(
        &Place::named(&m),
        Change::PythonPwrite,
        target.file.as_ref().map(TempFile::path).expect("file"),
        None,
    );
    let spliced_took = t2.elapsed();
    let stats = domain_stats(target.domain.name()).expect("stats");
    let got = read_held_pipe(target);
    let c = compare(&pattern(LEN), &got);
    assert!(
        c.mismatched_bytes == 0,
        "{what}: protected, the reader of domain {} got {} changed bytes (first at {:?}): the \
         pwrite from domain {} was not settled there: {stats}",
        target.domain.name(),
        c.mismatched_bytes,
        c.first_mismatch,
        m.name()
    );
    assert!(
        counter(&stats, "settles").unwrap_or(0) >= 1,
        "{what}: {stats}"
    );
    assert!(
        splicecow_lines(&out).is_empty(),
        "{what}: the mutator: {}",
        out.describe()
    );
    let ostats = domain_stats(other.domain.name()).expect("stats");
    assert_eq!(
        (
            counter(&ostats, "settles"),
            counter(&ostats, "live_segments")
        ),
        (Some(0), Some(1)),
        "{what}: a domain whose file nobody changed keeps its splice zero-copy: {ostats}"
    );
    assert_eq!(
        compare(&pattern(LEN), &read_held_pipe(other)).mismatched_bytes,
        0,
        "{what}: the untouched domain's pipe"
    );
    for (i, s) in sleepers.iter_mut().enumerate() {
        assert!(
            s.child.try_wait().ok().flatten().is_none(),
            "{what}: sleeper {} exited early",
            s.child.id()
        );
        // Read what is left, so that the sleeper's closes retire its segments and its
        // domain leaves the user index with it (see HELPER_C).
        if s.pipe_fd.is_some() && i != TARGET && i != OTHER {
            read_held_pipe(s);
        }
    }
    eprintln!(
        "{what}: 100 sleepers started in {started:?}; pwrite to an unrelated file {unrelated_took:?}, \
         to a spliced file {spliced_took:?} (settled exactly); total {:?}",
        t.elapsed()
    );
}
