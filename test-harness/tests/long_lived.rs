//! Tests of a long-lived domain: the registry forgets what has left its pipes, so a domain
//! that has seen thousands of pipes and processes is as cheap, and as protective, as a
//! fresh one, and `splicecow stats` shows what is really in flight.
//!
//! - Ten thousand short-lived processes (a C driver forks and execs a tiny C child four
//!   at a time; each splices 4 KiB of a cached file into a fresh pipe, reads it back and
//!   exits), then one process that fills, drains and closes 100,000 pipes: not one copy
//!   fallback, and afterwards nothing in flight (`live_segments`, `pipes_in_use`,
//!   `files_in_use` 0). The registry holds 2048 pipe records; the library used to keep a
//!   record for every pipe it ever saw, so once they were used up every splice copied.
//! - The same with real splicers, `pv -q f | cat` and uutils `cat f | cat`, a thousand
//!   pipelines each in one named domain standing in for the default one.
//! - A pipe whose splicer exits before the (unshimmed) reader reads: a `pwrite` of the
//!   spliced range after the splicer exited is still settled (differential), and once
//!   the reader has read and closed the pipe, one later mutating call retires the
//!   records. A reader SIGKILLed with bytes still in the pipe: the records are retired
//!   once the pipe is gone, and later splices are protected as before (differential).
//! - A holder that closes a drained pipe, through `close`, `close_range`, `closefrom`,
//!   `dup2` or `dup3` over it, `fclose` of an `fdopen`ed stream, `pclose` of a `popen`ed
//!   pipe, or `exec` of a close-on-exec fd, retires its record at once, without a sweep
//!   (`retired_stale` grows, `sweeps` does not); a new pipe that gets the same fd number
//!   is tracked like any other (splice, `pwrite`, read: differential).
//! - `shared_writable_maps` after the mapping process was SIGKILLed, and `live_segments`/
//!   `pipes_in_use` after a splicer whose bytes were read was SIGKILLed, are 0 again
//!   after one later mutating call. 1100 processes that each exit with a shared writable
//!   mapping still in place (as most programs do) must not use up the registry's 1024
//!   mapping records: a later mapping of another file must still make a splice of that
//!   file copy (differential: a store through the mapping otherwise reaches the reader).
//! - The copy path (`SPLICECOW_MODE=copy`) refuses what the kernel refuses, with the same
//!   errno: a splice or sendfile into a pipe's read end (from an empty file, a file with
//!   data, `/proc/self/maps`: the last two used to hang), from an `O_PATH` or write-only
//!   fd.
//!
//! "One later mutating call" is a shimmed `pwrite` into an unrelated file, made after the
//! sweep interval (20 ms) has passed: the sweep runs from the mutation side, so it is
//! what finds records whose processes and pipes are gone. Everything runs as real
//! processes on the real kernel with the built library preloaded in a fresh domain; the
//! helpers are one small C program compiled with gcc at test time (`HELPER_C`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use splicecow_registry::env as names;
use splicecow_test_harness::{
    compare, compile_c, counter, domain_stats, library_path, parallel, pattern, pipe,
    run_with_timeout, strip_shim_env, wait_with_timeout, KillOnDrop, Lines, Protection, ScratchDir,
    TempDomain, TempFile,
};

/// How long one helper process (or one line from it) may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// How long the ten thousand short-lived processes may take together.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(120);
/// More than the library's least time between two sweeps (20 ms).
const SWEEP_WAIT: Duration = Duration::from_millis(30);
/// Bytes a differential scenario splices (one default pipe).
const LEN: usize = 64 * 1024;
/// Where uutils `cat` lives on Debian/Ubuntu (`apt-get install rust-coreutils`).
const UUTILS_CAT: &str = "/usr/lib/cargo/bin/coreutils/cat";

/// The helper program, one mode per argv[1] (see the comment above each function).
/// Everything it says goes out with a raw `write`: stdio output passes through the
/// shim's mutation path, which may sweep, and some tests count sweeps.
const HELPER_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
#define SMALL 4096
#define LEN 65536
static char orig[LEN], got[2 * LEN];

static void die(const char *what) {
    char msg[256];
    int n = snprintf(msg, sizeof msg, "long-lived helper: %s: %s\n", what, strerror(errno));
    if (write(2, msg, (size_t)n) < 0) _exit(2);
    exit(2);
}

/* One line on stdout with a raw write: stdio output passes through the shim's mutation
 * path, which may sweep, and the tests count sweeps. */
static void say(const char *fmt, ...) {
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (write(1, line, (size_t)n) != n) die("write stdout");
}

/* Waits for one line on stdin (raw reads: nothing is buffered across an exec). */
static void await_go(void) {
    char c;
    for (;;) {
        ssize_t r = read(0, &c, 1);
        if (r <= 0) { errno = EPIPE; die("stdin closed before go"); }
        if (c == '\n') return;
    }
}

/* Reads one line from fd; 0 at the end of the stream first. */
static int read_line(int fd) {
    char c;
    for (;;) {
        if (read(fd, &c, 1) <= 0) return 0;
        if (c == '\n') return 1;
    }
}

static void wait_eof(int fd) {
    char buf[256];
    while (read(fd, buf, sizeof buf) > 0) {}
}

static int open_or_die(const char *path, int flags) {
    int fd = open(path, flags);
    if (fd < 0) die(path);
    return fd;
}

static void splice_exact(int fd, off64_t off, int w, size_t len) {
    size_t n = 0;
    while (n < len) {
        off64_t o = off + (off64_t)n;
        ssize_t r = splice(fd, &o, w, NULL, len - n, 0);
        if (r <= 0) die("splice");
        n += (size_t)r;
    }
}

static void read_exact(int r, char *buf, size_t len) {
    size_t n = 0;
    while (n < len) {
        ssize_t k = read(r, buf + n, len - n);
        if (k <= 0) die("read");
        n += (size_t)k;
    }
}

static size_t read_to_end(int r, char *buf, size_t cap) {
    size_t n = 0;
    for (;;) {
        ssize_t k = read(r, buf + n, cap - n);
        if (k < 0) die("read");
        if (k == 0 || (n += (size_t)k) == cap) return n;
    }
}

static void pwrite_bs(int fd, off_t off) {
    if (pwrite(fd, "BBBBBBBBBBBBBBBB", 16, off) != 16) die("pwrite");
}

/* child FILE: splices 4 KiB of FILE into a fresh pipe, reads them back, exits. */
static int child(const char *file) {
    char want[SMALL], have[SMALL];
    int fd = open_or_die(file, O_RDONLY), p[2];
    if (pread(fd, want, SMALL, 0) != SMALL) die("pread");
    if (pipe(p)) die("pipe");
    splice_exact(fd, 0, p[1], SMALL);
    read_exact(p[0], have, SMALL);
    return memcmp(want, have, SMALL) ? 3 : 0;
}

/* driver N PAR PROG ARGS...: runs PROG N times, PAR at once; all must exit 0. */
static int driver(long n, long par, char **argv) {
    long started = 0, running = 0, failed = 0;
    while (started < n || running > 0) {
        while (running < par && started < n) {
            pid_t c = fork();
            if (c < 0) die("fork");
            if (c == 0) { execve(argv[0], argv, environ); _exit(127); }
            started++;
            running++;
        }
        int st;
        if (wait(&st) < 0) die("wait");
        running--;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            if (failed++ == 0) say("first failed child: status %d\n", st);
        }
    }
    say("children %ld failed %ld\n", started, failed);
    return failed ? 1 : 0;
}

/* pipes FILE N: N times: a fresh pipe, 4 KiB spliced in, read back, both ends closed
 * (alternately write end first and read end first). */
static int pipes(const char *file, long n) {
    char want[SMALL], have[SMALL];
    int fd = open_or_die(file, O_RDONLY);
    if (pread(fd, want, SMALL, 0) != SMALL) die("pread");
    long bad = 0;
    for (long i = 0; i < n; i++) {
        int p[2];
        if (pipe(p)) die("pipe");
        splice_exact(fd, 0, p[1], SMALL);
        read_exact(p[0], have, SMALL);
        bad += memcmp(want, have, SMALL) != 0;
        if (close(p[i & 1])) die("close");
        if (close(p[!(i & 1)])) die("close");
    }
    say("pipes %ld mismatched %ld\n", n, bad);
    return bad ? 1 : 0;
}

/* The rest of close-path once the holder closed its pipe through fd W: a new pipe gets
 * the number W, 64 KiB of FILE are spliced into it, FILE is pwritten at 100 and the
 * pipe read back. */
static int reuse(int fd, int w) {
    int q[2];
    if (pipe(q)) die("pipe");
    int r = fcntl(q[0], F_DUPFD, 200);
    if (r < 0) die("F_DUPFD");
    close(q[0]);
    if (q[1] != w) {
        if (dup2(q[1], w) != w) die("dup2 into place");
        close(q[1]);
    }
    splice_exact(fd, 0, w, LEN);
    pwrite_bs(fd, 100);
    close(w);
    size_t n = read_to_end(r, got, sizeof got), bad = n > LEN ? n - LEN : LEN - n;
    for (size_t i = 0; i < n && i < LEN; i++) bad += got[i] != orig[i];
    say("received %zu mismatched %zu\n", n, bad);
    return 0;
}

static int open_file(const char *file) {
    int fd = open_or_die(file, O_RDWR);
    if (pread(fd, orig, LEN, 0) != LEN) die("pread");
    return fd;
}

/* close-path PATH FILE PRIME: splices 4 KiB of FILE into a pipe, says "spliced W"
 * (W: the fd it spliced into) and waits for a line; a reader drains the pipe (this
 * process, or the popen'ed `cat` for pclose) and the pipe is closed through PATH; says
 * "closed" and waits for a line; then `reuse`. Between the two lines nothing but the
 * close may sweep: fclose flushes through the mutation path, which sweeps when one is
 * due, so for fclose PRIME is pwritten first (the test waits out the sweep interval
 * before its go: that pwrite runs the sweep, and the fclose microseconds later finds
 * none due). */
static int close_path(const char *path, const char *file, const char *prime, char *self) {
    int fd = open_file(file);
    int devnull = open_or_die("/dev/null", O_WRONLY);
    int r = -1, w;
    FILE *stream = NULL;
    if (strcmp(path, "pclose") == 0) {
        /* The reader runs without the shim: only this process may sweep. */
        char *preload = getenv("LD_PRELOAD");
        preload = preload ? strdup(preload) : NULL;
        unsetenv("LD_PRELOAD");
        stream = popen("exec cat > /dev/null", "w");
        if (!stream) die("popen");
        if (preload) setenv("LD_PRELOAD", preload, 1);
        w = fileno(stream);
    } else {
        int p[2];
        if (pipe2(p, strcmp(path, "exec") == 0 ? O_CLOEXEC : 0)) die("pipe2");
        r = p[0];
        w = p[1];
        if (strcmp(path, "fclose") == 0 && !(stream = fdopen(w, "w"))) die("fdopen");
    }
    splice_exact(fd, 0, w, SMALL);
    say("spliced %d\n", w);
    await_go();
    if (strcmp(path, "fclose") == 0) {
        int p = open_or_die(prime, O_RDWR);
        pwrite_bs(p, 0);
        close(p);
    }
    if (r >= 0) {
        read_exact(r, got, SMALL);
    } else {
        for (int i = 0;; i++) {
            int pending = -1;
            if (ioctl(w, FIONREAD, &pending)) die("FIONREAD");
            if (pending == 0) break;
            if (i == 5000) { errno = ETIMEDOUT; die("popen reader"); }
            usleep(1000);
        }
    }
    if (strcmp(path, "close") == 0) {
        if (close(w)) die("close");
    } else if (strcmp(path, "close_range") == 0) {
        if (close_range((unsigned)w, (unsigned)w, 0)) die("close_range");
    } else if (strcmp(path, "closefrom") == 0) {
        closefrom(w);
    } else if (strcmp(path, "dup2") == 0) {
        if (dup2(devnull, w) != w) die("dup2");
    } else if (strcmp(path, "dup3") == 0) {
        if (dup3(devnull, w, 0) != w) die("dup3");
    } else if (strcmp(path, "fclose") == 0) {
        if (fclose(stream)) die("fclose");
    } else if (strcmp(path, "pclose") == 0) {
        if (pclose(stream) != 0) die("pclose");
    } else if (strcmp(path, "exec") == 0) {
        char wbuf[16];
        snprintf(wbuf, sizeof wbuf, "%d", w);
        char *argv[] = {self, "after-exec", (char *)file, wbuf, NULL};
        execve("/proc/self/exe", argv, environ);
        die("execve");
    } else {
        errno = EINVAL;
        die(path);
    }
    say("closed\n");
    await_go();
    return reuse(fd, w);
}

/* copy-errno CASE EMPTY DATA: one transfer the kernel refuses; prints its result. */
static int copy_errno(const char *what, const char *empty, const char *data) {
    int p[2];
    if (pipe(p)) die("pipe");
    ssize_t r;
    errno = 0;
    if (strcmp(what, "splice-empty-into-read-end") == 0) {
        r = splice(open_or_die(empty, O_RDONLY), NULL, p[0], NULL, SMALL, 0);
    } else if (strcmp(what, "sendfile-empty-into-read-end") == 0) {
        r = sendfile(p[0], open_or_die(empty, O_RDONLY), NULL, SMALL);
    } else if (strcmp(what, "splice-data-into-read-end") == 0) {
        r = splice(open_or_die(data, O_RDONLY), NULL, p[0], NULL, SMALL, 0);
    } else if (strcmp(what, "splice-o-path") == 0) {
        r = splice(open_or_die(data, O_PATH), NULL, p[1], NULL, SMALL, 0);
    } else if (strcmp(what, "sendfile-o-path") == 0) {
        r = sendfile(p[1], open_or_die(data, O_PATH), NULL, SMALL);
    } else if (strcmp(what, "splice-write-only-file") == 0) {
        r = splice(open_or_die(data, O_WRONLY), NULL, p[1], NULL, SMALL, 0);
    } else if (strcmp(what, "splice-proc-maps-into-read-end") == 0) {
        r = splice(open_or_die("/proc/self/maps", O_RDONLY), NULL, p[0], NULL, SMALL, 0);
    } else if (strcmp(what, "sendfile-proc-maps-into-read-end") == 0) {
        r = sendfile(p[0], open_or_die("/proc/self/maps", O_RDONLY), NULL, SMALL);
    } else {
        errno = EINVAL;
        die(what);
    }
    int e = errno;
    say("ret %zd errno %s\n", r, r < 0 ? strerrorname_np(e) : "-");
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "child") == 0 && argc == 3) return child(argv[2]);
    if (strcmp(mode, "driver") == 0 && argc > 4) return driver(atol(argv[2]), atol(argv[3]), argv + 4);
    if (strcmp(mode, "pipes") == 0 && argc == 4) return pipes(argv[2], atol(argv[3]));
    if (strcmp(mode, "pwrite") == 0 && argc == 4) {
        int fd = open_or_die(argv[2], O_RDWR);
        pwrite_bs(fd, atol(argv[3]));
        return 0;
    }
    if (strcmp(mode, "splice-out") == 0 && argc == 4) {
        splice_exact(open_or_die(argv[2], O_RDONLY), 0, 1, (size_t)atol(argv[3]));
        return 0;
    }
    if (strcmp(mode, "splice-hold") == 0 && argc == 5) {
        int w = open_or_die(argv[3], O_WRONLY);
        splice_exact(open_or_die(argv[2], O_RDONLY), 0, w, (size_t)atol(argv[4]));
        say("spliced\n");
        wait_eof(0);
        return 0;
    }
    if (strcmp(mode, "map") == 0 && argc == 3) {
        /* map FILE: maps 64 KiB of FILE shared and writable, says "mapped"; after a line
         * on stdin stores 16 B's at 100 through the mapping and says "stored"; exits at
         * the end of stdin, the mapping still in place. */
        int fd = open_or_die(argv[2], O_RDWR);
        char *m = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) die("mmap");
        say("mapped\n");
        if (read_line(0)) {
            memcpy(m + 100, "BBBBBBBBBBBBBBBB", 16);
            say("stored\n");
            wait_eof(0);
        }
        return 0;
    }
    if (strcmp(mode, "close-path") == 0 && argc == 5) return close_path(argv[2], argv[3], argv[4], argv[0]);
    if (strcmp(mode, "after-exec") == 0 && argc == 4) {
        /* Nothing before "closed" that could sweep (an open may). */
        say("closed\n");
        await_go();
        return reuse(open_file(argv[2]), atoi(argv[3]));
    }
    if (strcmp(mode, "copy-errno") == 0 && argc == 5) return copy_errno(argv[2], argv[3], argv[4]);
    errno = EINVAL;
    die("usage");
}
"#;

/// The preloadable library, or a failure that says how to build it.
fn lib() -> PathBuf {
    library_path().unwrap_or_else(|e| panic!("{e}"))
}

/// The compiled `HELPER_C`.
fn helper() -> PathBuf {
    static PROGRAM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| compile_c("long-lived-helper", HELPER_C))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The helper with `args` under `prot`.
fn helper_cmd(prot: &Protection, args: &[&str]) -> Command {
    let mut cmd = Command::new(helper());
    prot.apply(&mut cmd).args(args);
    cmd
}

/// Spawns `cmd` and drops it: a `Command` keeps the fds given as its stdio open in this
/// process until it is dropped, and a pipe end kept open here would keep its reader from
/// ever seeing the end of the stream (or keep a pipe alive that should be gone).
fn spawn(mut cmd: Command) -> std::io::Result<std::process::Child> {
    cmd.spawn()
}

/// Runs the helper to completion under `prot`; returns what it printed.
fn run_helper(prot: &Protection, args: &[&str], timeout: Duration) -> String {
    let out = run_with_timeout(&mut helper_cmd(prot, args), timeout).expect("spawn helper");
    assert!(
        out.status.is_some(),
        "HANG: helper {args:?} ({}) did not finish within {timeout:?}: {}",
        prot.label(),
        out.describe()
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "helper {args:?} ({}) failed: {}",
        prot.label(),
        out.describe()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs the helper under `prot` with `stdout` as its stdout (a pipe's write end) to
/// completion.
fn run_helper_into(prot: &Protection, args: &[&str], stdout: OwnedFd) {
    let mut child = helper_cmd(prot, args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn helper");
    let status = wait_with_timeout(&mut child, TIMEOUT).expect("wait helper");
    assert!(status.is_some(), "HANG: helper {args:?} ({})", prot.label());
    assert!(
        status.is_some_and(|s| s.success()),
        "helper {args:?} ({}) failed: {status:?}",
        prot.label()
    );
}

/// A string argument.
fn arg(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The domain's counters.
fn stats(domain: &TempDomain) -> serde_json::Value {
    domain_stats(domain.name()).unwrap_or_else(|e| panic!("{e}"))
}

/// Counter `name` (0 when the library does not have it).
fn n(stats: &serde_json::Value, name: &str) -> u64 {
    counter(stats, name).unwrap_or(0)
}

/// Starts `helper ARGS` under `prot` with its stdin and stdout piped to the test (its
/// stderr shown), and the reader of its lines.
fn spawn_helper(prot: &Protection, args: &[&str]) -> (KillOnDrop, Lines) {
    let mut child = KillOnDrop(
        helper_cmd(prot, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn helper {args:?}: {e}")),
    );
    let lines = Lines::new(child.0.stdout.take().expect("stdout"));
    (child, lines)
}

/// A later mutating call in `domain`: once the sweep interval has passed, a shimmed
/// `pwrite` of 16 bytes into an unrelated file, repeated while something is in flight.
fn later_mutating_call(prot: &Protection, domain: &TempDomain) {
    // One call is enough on a quiet machine; a host busy with other tests' thousands of
    // processes may leave the first sweep short (said on stderr, at most 5 calls).
    let unrelated = TempFile::with_pattern("long-lived-unrelated", 4096).expect("file");
    for calls in 1..=5 {
        thread::sleep(SWEEP_WAIT);
        run_helper(prot, &["pwrite", arg(unrelated.path()), "0"], TIMEOUT);
        let s = stats(domain);
        if n(&s, "live_segments") == 0 && n(&s, "pipes_in_use") == 0 {
            if calls > 1 {
                eprintln!("(nothing in flight after {calls} later mutating calls)");
            }
            return;
        }
    }
}

/// Fails unless the domain has nothing in flight: no live segment, no pipe or file
/// record in use, no shared writable mapping.
fn assert_nothing_in_flight(what: &str, s: &serde_json::Value) {
    for name in [
        "live_segments",
        "pipes_in_use",
        "files_in_use",
        "busy_pipes",
        "shared_writable_maps",
    ] {
        assert_eq!(
            counter(s, name),
            Some(0),
            "{what}: {name} should be 0 with nothing in flight: {s}"
        );
    }
}

/// Fails unless every splice of the domain was recorded zero-copy.
fn assert_no_copy_fallback(what: &str, s: &serde_json::Value) {
    for name in [
        "copy_fallbacks",
        "copy_fallbacks_registry_full",
        "bytes_copy_path",
    ] {
        assert_eq!(counter(s, name), Some(0), "{what}: {name}: {s}");
    }
}

/// The reader's verdict on the first `LEN` bytes of the pattern: mismatched bytes.
fn mismatched(got: &[u8]) -> usize {
    compare(&pattern(LEN), got).mismatched_bytes
}

/// Reads a pipe's read end to its end.
fn read_all(r: OwnedFd) -> Vec<u8> {
    let mut got = Vec::new();
    File::from(r).read_to_end(&mut got).expect("read pipe");
    got
}

/// What a differential scenario's unprotected run showed, for the log.
fn unprotected_note(bad: usize) -> &'static str {
    if bad == 0 {
        " (could not reproduce the corruption on this kernel)"
    } else {
        " (corrupted)"
    }
}

#[test]
fn ten_thousand_short_lived_splicers_leave_nothing_behind() {
    const CHILDREN: u64 = 10_000;
    let lib = lib();
    let domain = TempDomain::new();
    let prot = domain.protection(&lib);
    let file = TempFile::with_pattern("long-lived-short", 64 << 10).expect("file");
    let helper = helper();
    let start = Instant::now();
    let children = CHILDREN.to_string();
    let said = run_helper(
        &prot,
        &[
            "driver",
            &children,
            "4",
            arg(&helper),
            "child",
            arg(file.path()),
        ],
        DRIVER_TIMEOUT,
    );
    let took = start.elapsed();
    assert_eq!(said, format!("children {CHILDREN} failed 0"), "the driver");
    let right_after = stats(&domain);
    later_mutating_call(&prot, &domain);
    let s = stats(&domain);
    eprintln!(
        "{CHILDREN} short-lived splicers took {took:?}; right after: live_segments {} \
         pipes_in_use {} sweeps {}; after one later pwrite: {s}",
        n(&right_after, "live_segments"),
        n(&right_after, "pipes_in_use"),
        n(&right_after, "sweeps"),
    );
    assert_no_copy_fallback("10,000 short-lived splicers", &s);
    assert_eq!(
        n(&s, "splices"),
        CHILDREN,
        "every child's splice was counted: {s}"
    );
    assert_eq!(n(&s, "bytes_zero_copy"), CHILDREN * 4096, "{s}");
    assert_nothing_in_flight("10,000 short-lived splicers and one later pwrite", &s);
}

#[test]
fn one_process_through_a_hundred_thousand_pipes_leaves_nothing_behind() {
    const PIPES: u64 = 100_000;
    let lib = lib();
    let domain = TempDomain::new();
    let prot = domain.protection(&lib);
    let file = TempFile::with_pattern("long-lived-pipes", 64 << 10).expect("file");
    let start = Instant::now();
    let pipes = PIPES.to_string();
    let said = run_helper(&prot, &["pipes", arg(file.path()), &pipes], DRIVER_TIMEOUT);
    let took = start.elapsed();
    assert_eq!(
        said,
        format!("pipes {PIPES} mismatched 0"),
        "the pipes process"
    );
    // Every close retired its pipe's record: no later call is needed.
    let s = stats(&domain);
    eprintln!("{PIPES} pipes filled, drained and closed in {took:?}: {s}");
    assert_no_copy_fallback("100,000 pipes", &s);
    assert_eq!(n(&s, "splices"), PIPES, "{s}");
    assert_nothing_in_flight("100,000 pipes, each closed after it was drained", &s);
    assert!(
        n(&s, "retired_stale") >= PIPES,
        "each close of a drained pipe retires its segment (retired_stale): {s}"
    );
}

/// One `producer FILE | cat > /dev/null` pipeline: the producer runs under `prot`, the
/// reader is the system's `cat` without the shim.
fn pipeline(prot: &Protection, producer: &[&str]) -> Vec<String> {
    let (r, w) = pipe().expect("pipe");
    let mut reader = Command::new("cat");
    strip_shim_env(&mut reader)
        .stdin(r)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut reader = match spawn(reader) {
        Ok(c) => KillOnDrop(c),
        Err(e) => return vec![format!("spawn cat: {e}")],
    };
    let mut cmd = Command::new(producer[0]);
    prot.apply(&mut cmd)
        .args(&producer[1..])
        .stdin(Stdio::null())
        .stdout(w)
        .stderr(Stdio::inherit());
    let mut failures = Vec::new();
    match spawn(cmd) {
        Ok(c) => match wait_with_timeout(&mut KillOnDrop(c).0, TIMEOUT) {
            Ok(Some(s)) if s.success() => {}
            other => failures.push(format!("{producer:?}: {other:?}")),
        },
        Err(e) => failures.push(format!("spawn {producer:?}: {e}")),
    }
    match wait_with_timeout(&mut reader.0, TIMEOUT) {
        Ok(Some(s)) if s.success() => {}
        other => failures.push(format!("cat after {producer:?}: {other:?}")),
    }
    failures
}

#[test]
fn a_thousand_pv_and_a_thousand_uutils_cat_pipelines_leave_nothing_behind() {
    // 1,000 of each, two pipelines at a time: about 6 s on 2 cores alone, 9 s beside the
    // rest of this file.
    const RUNS: usize = 1000;
    let lib = lib();
    for program in ["pv", UUTILS_CAT] {
        assert!(
            splicecow_test_harness::find_program(program).is_some(),
            "{program} not found: install it (`apt-get install pv rust-coreutils`)"
        );
    }
    // A named domain standing in for the default one (which other tests may use).
    let domain = TempDomain::new();
    let prot = domain.protection(&lib);
    let file = TempFile::with_pattern("long-lived-pipelines", LEN).expect("file");
    let path = arg(file.path()).to_string();
    let jobs: Vec<Vec<&str>> = (0..2 * RUNS)
        .map(|i| {
            if i % 2 == 0 {
                vec!["pv", "-q", &path]
            } else {
                vec![UUTILS_CAT, &path]
            }
        })
        .collect();
    let start = Instant::now();
    let failures = parallel(&jobs, 2, |producer| pipeline(&prot, producer));
    let took = start.elapsed();
    assert!(failures.is_empty(), "pipelines failed: {failures:?}");
    let right_after = stats(&domain);
    later_mutating_call(&prot, &domain);
    let s = stats(&domain);
    eprintln!(
        "{RUNS} `pv -q f | cat` and {RUNS} `uutils-cat f | cat` took {took:?}; right after: \
         live_segments {} pipes_in_use {}; after one later pwrite: {s}",
        n(&right_after, "live_segments"),
        n(&right_after, "pipes_in_use"),
    );
    assert_no_copy_fallback("pv and uutils cat pipelines", &s);
    assert!(
        n(&s, "splices") >= 2 * RUNS as u64,
        "pv and uutils cat splice (at least one counted splice per pipeline): {s}"
    );
    assert!(
        n(&s, "bytes_zero_copy") >= (2 * RUNS * LEN) as u64,
        "every pipeline's bytes went zero-copy: {s}"
    );
    assert_nothing_in_flight("pv and uutils cat pipelines and one later pwrite", &s);
}

/// A shimmed process splices 64 KiB of a file into a pipe and exits; a shimmed `pwrite`
/// then changes the spliced range; only then does the (unshimmed) test read the pipe.
/// Returns the mismatched bytes it got.
fn splicer_exits_then_pwrite(prot: &Protection) -> usize {
    let file = TempFile::with_pattern("long-lived-exited", 256 << 10).expect("file");
    let (r, w) = pipe().expect("pipe");
    run_helper_into(prot, &["splice-out", arg(file.path()), "65536"], w);
    run_helper(prot, &["pwrite", arg(file.path()), "100"], TIMEOUT);
    mismatched(&read_all(r))
}

#[test]
fn splicer_exits_before_the_reader_reads() {
    let lib = lib();
    let unprotected = splicer_exits_then_pwrite(&Protection::Unprotected);
    let domain = TempDomain::new();
    let prot = domain.protection(&lib);
    let protected = splicer_exits_then_pwrite(&prot);
    let after_settle = stats(&domain);
    eprintln!(
        "splicer exited, then pwrite, then read: unprotected {unprotected} bad bytes{}; \
         protected {protected}; stats {after_settle}",
        unprotected_note(unprotected)
    );
    assert_eq!(
        protected, 0,
        "protected: bytes lost after the splicer exited: {after_settle}"
    );
    assert!(n(&after_settle, "settles") >= 1, "{after_settle}");

    // No mutation this time: the reader reads everything and closes the pipe; the
    // records must go once the pipe is gone.
    let file = TempFile::with_pattern("long-lived-exited", 256 << 10).expect("file");
    let (r, w) = pipe().expect("pipe");
    run_helper_into(&prot, &["splice-out", arg(file.path()), "65536"], w);
    let pending = stats(&domain);
    assert_eq!(
        n(&pending, "live_segments"),
        1,
        "the unread bytes must stay tracked after their splicer exited: {pending}"
    );
    let got = read_all(r);
    assert_eq!(mismatched(&got), 0, "unmutated bytes");
    later_mutating_call(&prot, &domain);
    let s = stats(&domain);
    eprintln!("pipe read and closed after its splicer exited, one later pwrite: {s}");
    assert_nothing_in_flight("the pipe is gone and one later pwrite ran", &s);
    assert!(
        n(&s, "retired_stale") > n(&pending, "retired_stale"),
        "retired_stale counts the retired records: {s}"
    );
}

#[test]
fn reader_killed_with_bytes_still_in_the_pipe() {
    let lib = lib();
    let domain = TempDomain::new();
    let prot = domain.protection(&lib);
    let file = TempFile::with_pattern("long-lived-killed-reader", 256 << 10).expect("file");
    let (r, w) = pipe().expect("pipe");
    // A reader that never reads: it only holds the pipe.
    let mut sleeper = Command::new("sleep");
    strip_shim_env(&mut sleeper)
        .arg("60")
        .stdin(r)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut reader = KillOnDrop(spawn(sleeper).expect("spawn sleep"));
    run_helper_into(&prot, &["splice-out", arg(file.path()), "65536"], w);
    let pending = stats(&domain);
    assert_eq!(
        n(&pending, "live_segments"),
        1,
        "the bytes wait in the pipe: {pending}"
    );
    reader.kill().expect("SIGKILL the reader");
    later_mutating_call(&prot, &domain);
    let s = stats(&domain);
    eprintln!("reader SIGKILLed with 64 KiB in its pipe, one later pwrite: {s}");
    assert_nothing_in_flight(
        "the killed reader's pipe is gone and one later pwrite ran",
        &s,
    );
    assert!(
        n(&s, "unreachable_pipes") > n(&pending, "unreachable_pipes"),
        "the pipe nobody holds was retired as unreachable: {s}"
    );

    // Later splices of the domain are protected as before.
    let unprotected = splicer_exits_then_pwrite(&Protection::Unprotected);
    let protected = splicer_exits_then_pwrite(&prot);
    let s = stats(&domain);
    eprintln!(
        "afterwards, splice + exit + pwrite + read: unprotected {unprotected} bad bytes{}; \
         protected {protected}; stats {s}",
        unprotected_note(unprotected)
    );
    assert_eq!(protected, 0, "protected, after the killed reader: {s}");
}

/// Every way the close-path helper closes its pipe.
const CLOSE_PATHS: &[&str] = &[
    "close",
    "close_range",
    "closefrom",
    "dup2",
    "dup3",
    "fclose",
    "pclose",
    "exec",
];

/// What one close-path run found.
enum CloseOutcome {
    /// The reuse part's `(received, mismatched)`, and what was wrong with the close
    /// (protected runs only).
    Checked((u64, u64), Vec<String>),
    /// The fclose run was preempted long enough for a second sweep to come due, which
    /// may have retired the record instead of the fclose: try again.
    SweptMeanwhile(String),
}

/// One run of `close-path PATH` under `prot`; with `domain` (protected), the registry is
/// checked right after the close.
fn close_path_run(path: &str, prot: &Protection, domain: Option<&TempDomain>) -> CloseOutcome {
    let file = TempFile::with_pattern("long-lived-close", 256 << 10).expect("file");
    let prime = TempFile::with_pattern("long-lived-prime", 4096).expect("file");
    let (mut child, lines) = spawn_helper(
        prot,
        &["close-path", path, arg(file.path()), arg(prime.path())],
    );
    let mut stdin = child.0.stdin.take().expect("stdin");
    let expect = |prefix: &str| {
        let line = lines.next_line(TIMEOUT).unwrap_or_default();
        assert!(
            line.starts_with(prefix),
            "close-path {path} ({}): expected {prefix:?}, got {line:?} (HANG or failure)",
            prot.label()
        );
        line
    };
    expect("spliced ");
    let before = domain.map(stats);
    if let Some(s) = &before {
        assert_eq!(
            n(s, "live_segments"),
            1,
            "{path}: the splice was recorded: {s}"
        );
    }
    if path == "fclose" {
        // The priming pwrite must find a sweep due (see `close_path` in HELPER_C).
        thread::sleep(SWEEP_WAIT);
    }
    stdin.write_all(b"go\n").expect("go");
    expect("closed");
    let mut problems = Vec::new();
    let mut swept_meanwhile = None;
    if let (Some(before), Some(domain)) = (&before, domain) {
        let s = stats(domain);
        eprintln!("close-path {path}: before the close {before}; right after {s}");
        // Nothing but the close runs between the two lines, and no close sweeps. The
        // fclose run's priming pwrite may run one sweep (the pipe is not drained yet);
        // a second one means the run was preempted for the whole sweep interval between
        // that pwrite and the fclose, which may then have swept: inconclusive.
        let sweeps = n(&s, "sweeps") - n(before, "sweeps");
        let allowed = u64::from(path == "fclose");
        if path == "fclose" && sweeps > allowed && n(&s, "live_segments") == 0 {
            swept_meanwhile = Some(format!("{sweeps} sweeps ran: {s}"));
        } else {
            if n(&s, "live_segments") != 0 || n(&s, "pipes_in_use") != 0 {
                problems.push(format!(
                    "{path} of a drained pipe left its record in flight (live_segments {}, \
                     pipes_in_use {}): {s}",
                    n(&s, "live_segments"),
                    n(&s, "pipes_in_use")
                ));
            }
            if n(&s, "retired_stale") <= n(before, "retired_stale") {
                problems.push(format!("{path}: retired_stale did not grow: {s}"));
            }
            if sweeps > allowed {
                problems.push(format!(
                    "{path}: {sweeps} sweeps ran: the close itself must retire the record: {s}"
                ));
            }
        }
    }
    stdin.write_all(b"go\n").expect("go");
    let line = expect("received ");
    let status = wait_with_timeout(&mut child.0, TIMEOUT).expect("wait");
    assert!(
        status.is_some_and(|s| s.success()),
        "close-path {path} ({}): {status:?}",
        prot.label()
    );
    if let Some(why) = swept_meanwhile {
        return CloseOutcome::SweptMeanwhile(why);
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["received", got, "mismatched", bad] => CloseOutcome::Checked(
            (
                got.parse().expect("received"),
                bad.parse().expect("mismatched"),
            ),
            problems,
        ),
        _ => panic!("close-path {path}: {line:?}"),
    }
}

#[test]
fn closing_a_drained_pipe_retires_its_record_at_once_through_every_close_path() {
    let lib = lib();
    let mut failures = Vec::new();
    for &path in CLOSE_PATHS {
        let unprotected = match close_path_run(path, &Protection::Unprotected, None) {
            CloseOutcome::Checked((_, bad), _) => bad,
            CloseOutcome::SweptMeanwhile(_) => unreachable!("nothing is checked unprotected"),
        };
        let mut retries = Vec::new();
        let (protected, problems) = loop {
            let domain = TempDomain::new();
            match close_path_run(path, &domain.protection(&lib), Some(&domain)) {
                CloseOutcome::Checked(outcome, problems) => break (outcome, problems),
                CloseOutcome::SweptMeanwhile(why) if retries.len() < 4 => retries.push(why),
                CloseOutcome::SweptMeanwhile(why) => {
                    panic!("{path}: every run was preempted past the sweep interval: {why}")
                }
            }
        };
        eprintln!(
            "{path}, then a new pipe on the same fd number, splice + pwrite + read: unprotected \
             {unprotected} bad bytes{}; protected (received, mismatched) {protected:?}{}",
            unprotected_note(unprotected as usize),
            if retries.is_empty() {
                String::new()
            } else {
                format!(" (retried: {retries:?})")
            }
        );
        failures.extend(problems);
        if protected != (LEN as u64, 0) {
            failures.push(format!(
                "{path}: the pipe on the reused fd number was not settled exactly: \
                 (received, mismatched) {protected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn dead_mapper_leaves_no_shared_writable_map() {
    let lib = lib();
    let domain = TempDomain::new();
    let prot = domain.protection(&lib);
    let file = TempFile::with_pattern("long-lived-mapper", 256 << 10).expect("file");
    let (mut mapper, lines) = spawn_helper(&prot, &["map", arg(file.path())]);
    assert_eq!(
        lines.next_line(TIMEOUT).as_deref(),
        Some("mapped"),
        "the mapper"
    );
    let mapped = stats(&domain);
    assert_eq!(
        n(&mapped, "shared_writable_maps"),
        1,
        "the mapping was counted: {mapped}"
    );
    mapper.kill().expect("SIGKILL the mapper");
    thread::sleep(SWEEP_WAIT);
    run_helper(&prot, &["pwrite", arg(file.path()), "100"], TIMEOUT);
    let s = stats(&domain);
    eprintln!("mapper SIGKILLed, then a pwrite of its file: {s}");
    assert_eq!(
        counter(&s, "shared_writable_maps"),
        Some(0),
        "the mapping died with its process: {s}"
    );
    assert_nothing_in_flight("the mapper is dead and one later pwrite ran", &s);
}

/// A process maps 64 KiB of a file shared and writable; another splices them into a
/// pipe and exits; the first stores 16 `B`s at 100 through its mapping (no hook sees a
/// store); only then does the test read the pipe. Returns the mismatched bytes.
fn mapped_then_spliced_then_stored(prot: &Protection) -> usize {
    let file = TempFile::with_pattern("long-lived-mapped", 256 << 10).expect("file");
    let (mut mapper, lines) = spawn_helper(prot, &["map", arg(file.path())]);
    let mut stdin = mapper.0.stdin.take().expect("stdin");
    assert_eq!(
        lines.next_line(TIMEOUT).as_deref(),
        Some("mapped"),
        "the mapper"
    );
    let (r, w) = pipe().expect("pipe");
    run_helper_into(prot, &["splice-out", arg(file.path()), "65536"], w);
    stdin.write_all(b"store\n").expect("tell the mapper");
    assert_eq!(
        lines.next_line(TIMEOUT).as_deref(),
        Some("stored"),
        "the mapper"
    );
    mismatched(&read_all(r))
}

#[test]
fn mappings_of_processes_that_exited_do_not_use_up_the_mapping_records() {
    // More processes than the registry has mapping records (1024).
    const MAPPERS: u64 = 1100;
    let lib = lib();
    let unprotected = mapped_then_spliced_then_stored(&Protection::Unprotected);
    let domain = TempDomain::new();
    let prot = domain.protection(&lib);
    let fresh = mapped_then_spliced_then_stored(&prot);
    // Each maps one file shared and writable and exits without unmapping it, as most
    // programs do.
    let file = TempFile::with_pattern("long-lived-mappers", 256 << 10).expect("file");
    let helper = helper();
    let mappers = MAPPERS.to_string();
    let start = Instant::now();
    let said = run_helper(
        &prot,
        &[
            "driver",
            &mappers,
            "2",
            arg(&helper),
            "map",
            arg(file.path()),
        ],
        DRIVER_TIMEOUT,
    );
    // The mappers say "mapped" on the same stdout; the driver speaks last.
    assert_eq!(
        said.lines().last(),
        Some(format!("children {MAPPERS} failed 0").as_str()),
        "the driver"
    );
    let took = start.elapsed();
    later_mutating_call(&prot, &domain);
    let exited = stats(&domain);
    let aged = mapped_then_spliced_then_stored(&prot);
    let s = stats(&domain);
    eprintln!(
        "shared writable mapping, splice, store, read: unprotected {unprotected} bad bytes{}; \
         protected in a fresh domain {fresh}; after {MAPPERS} mappers exited ({took:?}) \
         {aged}; stats after the mappers exited {exited}; at the end {s}",
        unprotected_note(unprotected)
    );
    assert_eq!(fresh, 0, "protected, fresh domain: the splice must copy");
    assert_eq!(
        aged, 0,
        "protected, after {MAPPERS} processes exited with a shared writable mapping: the new \
         mapping must still make the splice copy (copy_fallbacks_shared_mapping); stats {s}"
    );
}

#[test]
fn dead_splicer_whose_bytes_were_read_leaves_nothing_in_flight() {
    let lib = lib();
    let domain = TempDomain::new();
    let prot = domain.protection(&lib);
    let file = TempFile::with_pattern("long-lived-dead-splicer", 256 << 10).expect("file");
    // The test holds both ends: the pipe outlives the splicer.
    let (r, w) = pipe().expect("pipe");
    let target = format!("/proc/{}/fd/{}", std::process::id(), w.as_raw_fd());
    let (mut splicer, lines) =
        spawn_helper(&prot, &["splice-hold", arg(file.path()), &target, "65536"]);
    assert_eq!(
        lines.next_line(TIMEOUT).as_deref(),
        Some("spliced"),
        "the splicer"
    );
    let mut got = vec![0u8; LEN];
    File::from(r.try_clone().expect("dup"))
        .read_exact(&mut got)
        .expect("read the pipe");
    assert_eq!(mismatched(&got), 0, "unmutated bytes");
    let consumed = stats(&domain);
    splicer.kill().expect("SIGKILL the splicer");
    later_mutating_call(&prot, &domain);
    let s = stats(&domain);
    eprintln!(
        "splicer SIGKILLed after its 64 KiB were read (pipe still open): before {consumed}; \
         after one later pwrite {s}"
    );
    assert_nothing_in_flight(
        "the splicer is dead, its bytes read, one later pwrite ran",
        &s,
    );
    drop((r, w));
}

/// The transfers the kernel refuses, one per `copy-errno` case.
const REFUSED: &[&str] = &[
    "splice-empty-into-read-end",
    "sendfile-empty-into-read-end",
    "splice-data-into-read-end",
    "splice-o-path",
    "sendfile-o-path",
    "splice-write-only-file",
    "splice-proc-maps-into-read-end",
    "sendfile-proc-maps-into-read-end",
];

/// What `copy-errno CASE` printed under `prot` (with `mode` as `SPLICECOW_MODE`).
fn refused(case: &str, prot: &Protection, mode: Option<&str>, files: (&Path, &Path)) -> String {
    let mut cmd = helper_cmd(prot, &["copy-errno", case, arg(files.0), arg(files.1)]);
    if let Some(mode) = mode {
        cmd.env(names::MODE, mode);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(5)).expect("spawn helper");
    match out.status {
        None => "HANG (killed after 5 s)".to_string(),
        Some(s) if s.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Some(_) => format!("failed: {}", out.describe()),
    }
}

#[test]
fn the_copy_path_refuses_what_the_kernel_refuses() {
    let lib = lib();
    let domain = TempDomain::new();
    let prot = domain.protection(&lib);
    let scratch = ScratchDir::new("long-lived-refused").expect("scratch dir");
    let empty = scratch.join("empty");
    File::create(&empty).expect("empty file");
    let data = TempFile::with_pattern("long-lived-refused", LEN).expect("file");
    let files = (empty.as_path(), data.path());
    let mut failures = Vec::new();
    for &case in REFUSED {
        let kernel = refused(case, &Protection::Unprotected, None, files);
        for mode in ["copy", "protect"] {
            let shim = refused(case, &prot, Some(mode), files);
            eprintln!("{case}: kernel {kernel:?}, {mode} mode {shim:?}");
            if shim != kernel {
                failures.push(format!("{case}: kernel {kernel:?}, {mode} mode {shim:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "differs from the kernel: {failures:#?}"
    );
}
