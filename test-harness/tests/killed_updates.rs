//! Differential fault-injection tests: a process SIGKILLed in the middle of a registry
//! update, while it holds the table lock, does not cost later processes their protection.
//!
//! The shim's test pauses (`SPLICECOW_TEST_PAUSE=point:microseconds`) make a process
//! sleep, holding the lock, at a named point inside an update: `record` (a segment is in
//! the pipe's ring, the counts do not have it yet), `commit` (a kernel call's result
//! trimmed the ring, the counts do not know yet), `retire` (the ring let consumed
//! segments go, the counts still have them) and `holder` (halfway through rewriting a
//! pipe's holder list). Each test kills a victim there (found sleeping in `nanosleep`),
//! then runs later processes whose splice/mutation conflicts must still be settled
//! exactly, and finally checks that the domain's counts are right again: once every
//! pipe has been settled or consumed, `live_segments` is 0. The next lock holder takes
//! the lock over (`lock_takeovers`) and repairs what the tables derive (`table_repairs`).
//!
//! Without the shim the same steps run with nothing paused or killed (the victim just
//! finishes); the readers then get the mutated bytes on this kernel (if not, the test
//! says so and goes on). The test's own pipes are handed to the helper processes as
//! `/proc/<test pid>/fd/<n>`, so the bytes outlive them; every helper is a small Python
//! program (`HELPER_PY`).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use splicecow_registry::env as names;
use splicecow_test_harness::{
    compare, counter, domain_stats, ensure_pipe_capacity, library_path, pattern, pipe, python3,
    run_with_timeout, wait_for_pause, wait_with_timeout, Protection, TempDomain, TempFile,
};

/// How long any one helper may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// How long a victim is told to sleep at its pause: far longer than the test waits.
const PAUSE_US: u64 = 30_000_000;
/// How long the test waits for a victim to reach its pause.
const PAUSE_WAIT: Duration = Duration::from_secs(10);
/// Bytes each splice moves.
const LEN: usize = 64 * 1024;

/// The preloadable library, or a failure that says how to build it.
fn lib() -> PathBuf {
    library_path().unwrap_or_else(|e| panic!("{e}"))
}

/// `splice FILE PIPE OFF LEN`: splices LEN bytes of FILE from OFF into PIPE (a path),
/// prints the bytes moved. `splice-at-eof FILE`: one splice at FILE's end into a pipe
/// of its own (moves nothing). `consume-then-pwrite FILE`: splices 64 KiB of FILE into
/// a pipe of its own, reads them all back, then `pwrite`s 16 `B`s at 100. `pwrite FILE
/// OFF`: writes 16 `B`s at OFF.
const HELPER_PY: &str = r#"
import os, sys
cmd, path = sys.argv[1], sys.argv[2]
if cmd == "splice":
    f = os.open(path, os.O_RDONLY)
    p = os.open(sys.argv[3], os.O_WRONLY)
    off, n, done = int(sys.argv[4]), int(sys.argv[5]), 0
    while done < n:
        k = os.splice(f, p, n - done, offset_src=off + done)
        if k <= 0:
            break
        done += k
    print(done)
elif cmd == "splice-at-eof":
    f = os.open(path, os.O_RDONLY)
    r, w = os.pipe()
    print(os.splice(f, w, 4096, offset_src=os.fstat(f).st_size))
elif cmd == "consume-then-pwrite":
    f = os.open(path, os.O_RDWR)
    r, w = os.pipe()
    done = 0
    while done < 65536:
        done += os.splice(f, w, 65536 - done, offset_src=done)
    while done > 0:
        done -= len(os.read(r, done))
    os.pwrite(f, b"B" * 16, 100)
    print(0)
elif cmd == "pwrite":
    f = os.open(path, os.O_RDWR)
    print(os.pwrite(f, b"B" * 16, int(sys.argv[3])))
else:
    sys.exit("unknown command " + cmd)
"#;

/// A child that is killed if the test leaves early (a failed assertion).
struct Victim(Child);

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One run of a scenario: the protection every helper gets.
struct Run<'a> {
    prot: &'a Protection,
}

impl Run<'_> {
    fn protected(&self) -> bool {
        matches!(self.prot, Protection::Protected { .. })
    }

    fn helper(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(python3());
        self.prot
            .apply(&mut cmd)
            .arg("-c")
            .arg(HELPER_PY)
            .args(args);
        cmd
    }

    /// Runs the helper to completion; returns what it printed.
    fn step(&self, args: &[String]) -> String {
        let out = run_with_timeout(&mut self.helper(args), TIMEOUT).expect("spawn helper");
        assert!(
            out.status.is_some_and(|s| s.success()),
            "helper {args:?} ({}): {}",
            self.prot.label(),
            out.describe()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs the helper as the victim: protected, it is told to pause at `point`, and is
    /// SIGKILLed as soon as it sleeps there; unprotected it simply runs to the end.
    /// Returns whether it was killed at the pause.
    fn victim(&self, point: &str, args: &[String]) -> bool {
        let mut cmd = self.helper(args);
        cmd.env(names::TEST_PAUSE, format!("{point}:{PAUSE_US}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut victim = Victim(cmd.spawn().expect("spawn victim"));
        let paused = wait_for_pause(&mut victim.0, PAUSE_WAIT).expect("watch victim");
        if paused {
            victim.0.kill().expect("SIGKILL the victim");
        }
        let status = wait_with_timeout(&mut victim.0, TIMEOUT).expect("wait victim");
        assert!(status.is_some(), "HANG: victim {args:?}");
        if !paused {
            assert!(
                status.is_some_and(|s| s.success()),
                "victim {args:?} ({}) failed: {status:?}",
                self.prot.label()
            );
        }
        if self.protected() {
            assert!(
                paused,
                "the victim {args:?} never slept at the test pause {point:?} (does the \
                 library know SPLICECOW_TEST_PAUSE?)"
            );
        }
        paused
    }
}

/// A pipe the test holds; helpers write to it through `/proc/<pid>/fd/<n>`.
struct TestPipe {
    r: OwnedFd,
    w: Option<OwnedFd>,
}

impl TestPipe {
    fn new() -> TestPipe {
        let (r, w) = pipe().expect("pipe");
        // Room for two splices: unprotected, the victim's splice also lands.
        ensure_pipe_capacity(&w, 4 * LEN).expect("F_SETPIPE_SZ");
        TestPipe { r, w: Some(w) }
    }

    fn path(&self) -> String {
        let w = self.w.as_ref().expect("write end open");
        format!("/proc/{}/fd/{}", std::process::id(), w.as_raw_fd())
    }

    /// Closes the write end and reads everything.
    fn read_all(mut self) -> Vec<u8> {
        drop(self.w.take());
        let mut got = Vec::new();
        File::from(self.r).read_to_end(&mut got).expect("read pipe");
        got
    }
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// Mismatched bytes of `got` against `times` copies of the first 64 KiB of the pattern.
fn mismatched(got: &[u8], times: usize) -> usize {
    compare(&pattern(LEN).repeat(times), got).mismatched_bytes
}

/// What one run of a scenario found: mismatched bytes per pipe read.
type Mismatches = Vec<(&'static str, usize)>;

/// Runs `scenario` without and with the shim. Protected, every pipe must read back
/// exactly, the lock must have been taken over, `live_segments` must be 0 at the end
/// and, when `repairs` is set, the takeover must have repaired the tables.
fn differential(what: &str, repairs: bool, scenario: impl Fn(&Run) -> Mismatches) {
    differential_with(
        what,
        Expect {
            takeover: true,
            repairs,
        },
        scenario,
    );
}

/// What the protected run of a scenario must show besides exact bytes.
struct Expect {
    /// The victim died holding the table lock: it was taken over.
    takeover: bool,
    /// The takeover repaired torn tables.
    repairs: bool,
}

/// [`differential`] for a victim killed at any point, with or without the lock.
fn differential_with(what: &str, expect: Expect, scenario: impl Fn(&Run) -> Mismatches) {
    let repairs = expect.repairs;
    let lib = lib();
    let unprotected = scenario(&Run {
        prot: &Protection::Unprotected,
    });
    let domain = TempDomain::new();
    let protected = scenario(&Run {
        prot: &domain.protection(&lib),
    });
    let stats = domain_stats(domain.name()).expect("stats");
    let reproduced = unprotected.iter().any(|(_, bad)| *bad > 0);
    eprintln!(
        "{what}: unprotected mismatched bytes {unprotected:?}{}; protected {protected:?}; \
         stats {stats}",
        if reproduced {
            ""
        } else {
            " (could not reproduce the corruption on this kernel)"
        }
    );
    let bad: Vec<_> = protected.iter().filter(|(_, bad)| *bad > 0).collect();
    assert!(
        bad.is_empty(),
        "{what}: protected readers got bytes that differ from what was spliced {bad:?} \
         (stats {stats})"
    );
    let takeovers = counter(&stats, "lock_takeovers").unwrap_or(0);
    assert!(
        takeovers >= 1 || !expect.takeover,
        "{what}: the lock of the killed process was not taken over: {stats}"
    );
    assert_eq!(
        counter(&stats, "live_segments"),
        Some(0),
        "{what}: live_segments after every pipe was settled or consumed: {stats}"
    );
    if repairs {
        let repaired = counter(&stats, "table_repairs").unwrap_or(0);
        assert!(
            repaired >= 1,
            "{what}: the takeover did not repair the torn tables: {stats}"
        );
    }
}

/// The victim splices 64 KiB of F into pipe A and is killed at `point`; then G is spliced
/// into pipe B, F into A again, and both files are overwritten at 100 by later processes.
/// Returns the mismatched bytes of each pipe's reader.
fn victim_splice_then_two_conflicts(run: &Run, point: &str) -> Mismatches {
    let f = TempFile::with_pattern(&format!("killed-{point}-f"), 256 << 10).expect("file");
    let g = TempFile::with_pattern(&format!("killed-{point}-g"), 256 << 10).expect("file");
    let (fp, gp) = (
        f.path().display().to_string(),
        g.path().display().to_string(),
    );
    let (a, b) = (TestPipe::new(), TestPipe::new());
    let killed = run.victim(point, &[s("splice"), fp.clone(), a.path(), s(0), s(LEN)]);
    run.step(&[s("splice"), gp.clone(), b.path(), s(0), s(LEN)]);
    run.step(&[s("splice"), fp.clone(), a.path(), s(0), s(LEN)]);
    run.step(&[s("pwrite"), fp, s(100)]);
    run.step(&[s("pwrite"), gp, s(100)]);
    // The killed victim's splice never reached the kernel.
    let a_copies = if killed { 1 } else { 2 };
    vec![
        ("pipe A (F)", mismatched(&a.read_all(), a_copies)),
        ("pipe B (G)", mismatched(&b.read_all(), 1)),
    ]
}

/// Killed at `record`: the victim's segment of F is in pipe A's ring but in no count.
/// Later, B splices G into pipe B and C splices F into pipe A: the counts say 2 live
/// segments, the rings hold 3. The `pwrite` of F settles pipe A and retires all three
/// of its segments, which without a repair drops the domain's live count to 0 although
/// G's segment is still in pipe B: the `pwrite` of G then took the fast path (nothing
/// live) and pipe B's reader got the new bytes.
#[test]
fn killed_while_recording_a_segment() {
    differential("killed at record", true, |run| {
        victim_splice_then_two_conflicts(run, "record")
    });
}

/// Killed at `call`: the victim recorded its splice of F into pipe A (the intent, and
/// A marked as in its kernel call) and let go of the lock, then died before the kernel
/// call. Later splices of G into B and of F into A must not wait for the dead thread's
/// call (without clearing a dead caller's mark, the splice into A waits forever), and
/// both `pwrite`s must be settled exactly.
#[test]
fn killed_while_in_a_kernel_call() {
    let expect = Expect {
        takeover: false,
        repairs: false,
    };
    differential_with("killed in a call", expect, |run| {
        victim_splice_then_two_conflicts(run, "call")
    });
}

/// Killed at `commit`: the victim's splice at the end of F moved nothing, the ring
/// dropped its intent, the counts still have it. An over-count cannot make a reader
/// get a wrong byte (it only sends every later mutation down the slow path), so this
/// checks that B's conflict is still settled and that `live_segments` is 0 again once
/// everything was settled (without a repair it stays 1 for good).
#[test]
fn killed_while_committing_a_splice() {
    differential("killed at commit", true, |run| {
        let f = TempFile::with_pattern("killed-commit-f", 256 << 10).expect("file");
        let g = TempFile::with_pattern("killed-commit-g", 256 << 10).expect("file");
        let gp = g.path().display().to_string();
        let b = TestPipe::new();
        run.victim(
            "commit",
            &[s("splice-at-eof"), f.path().display().to_string()],
        );
        run.step(&[s("splice"), gp.clone(), b.path(), s(0), s(LEN)]);
        run.step(&[s("pwrite"), gp, s(100)]);
        vec![("pipe B (G)", mismatched(&b.read_all(), 1))]
    });
}

/// Killed at `retire`: the victim consumed its own pipe and its `pwrite` retires the
/// segment; the ring let it go, the counts still have it. As for `commit`, an
/// over-count cannot cost a byte: checked are B's settled conflict and `live_segments`
/// back at 0 (without a repair it stays 1 for good).
#[test]
fn killed_while_retiring_segments() {
    differential("killed at retire", true, |run| {
        let f = TempFile::with_pattern("killed-retire-f", 256 << 10).expect("file");
        let g = TempFile::with_pattern("killed-retire-g", 256 << 10).expect("file");
        let gp = g.path().display().to_string();
        let b = TestPipe::new();
        run.victim(
            "retire",
            &[s("consume-then-pwrite"), f.path().display().to_string()],
        );
        run.step(&[s("splice"), gp.clone(), b.path(), s(0), s(LEN)]);
        run.step(&[s("pwrite"), gp, s(100)]);
        vec![("pipe B (G)", mismatched(&b.read_all(), 1))]
    });
}

/// Killed at `holder`: X spliced the first half of F into pipe A, the victim spliced
/// the second half and died rewriting A's holder list (its splice and the counts are
/// complete; X's entry is lost), or died earlier, rewriting the list when a sweep of its
/// own found A's holder by scanning `/proc` (then its splice never ran). A settle then
/// finds the pipe by scanning `/proc`, so no byte can be lost today either: this guards
/// that a torn holder list never costs a settle, and that the counts are right
/// afterwards. (The holder list is nothing the repair derives, so `table_repairs` is not
/// asked for.)
#[test]
fn killed_while_rewriting_a_holder_list() {
    differential("killed at holder", false, |run| {
        let f = TempFile::with_pattern("killed-holder-f", 256 << 10).expect("file");
        let g = TempFile::with_pattern("killed-holder-g", 256 << 10).expect("file");
        let (fp, gp) = (
            f.path().display().to_string(),
            g.path().display().to_string(),
        );
        let (a, b) = (TestPipe::new(), TestPipe::new());
        let half = LEN / 2;
        run.step(&[s("splice"), fp.clone(), a.path(), s(0), s(half)]);
        run.victim(
            "holder",
            &[s("splice"), fp.clone(), a.path(), s(half), s(half)],
        );
        run.step(&[s("splice"), gp.clone(), b.path(), s(0), s(LEN)]);
        run.step(&[s("pwrite"), fp, s(100)]);
        run.step(&[s("pwrite"), gp, s(100)]);
        // The first half, and the second unless the victim died before its splice.
        let got = a.read_all();
        let whole = got.len() == half || got.len() == LEN;
        vec![
            (
                "pipe A (F)",
                compare(pattern(LEN).get(..got.len()).unwrap_or_default(), &got).mismatched_bytes
                    + usize::from(!whole) * LEN,
            ),
            ("pipe B (G)", mismatched(&b.read_all(), 1)),
        ]
    });
}
