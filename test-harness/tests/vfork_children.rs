//! Differential tests: a shimmed thread stays protected after it started a child that
//! ran on its memory (`vfork`, `posix_spawn`, `clone(CLONE_VM | CLONE_VFORK)`).
//!
//! A `vfork` child runs on the parent's memory, thread-local storage included, until it
//! calls `execve` or `_exit`. When the child's `execve` went through the shim's hook,
//! the hook's "inside the shim" flag was set in that shared memory and never cleared
//! (a successful `execve` does not return), so every later hook of the parent thread
//! called straight through: its splices went unrecorded (`splices: 0`) and a `pwrite`
//! into the spliced range reached the pipe's reader.
//!
//! Every scenario ends like this: splice 64 KiB of a file into a pipe, `pwrite` 16 `B`s
//! into the spliced range, then read the pipe. It runs once without the shim (the reader
//! gets the 16 new bytes on this kernel; if not, the test says so and goes on) and once
//! with `libsplicecow.so` preloaded in a fresh domain, where the bytes must be exactly
//! the ones spliced and the domain must have recorded the splices. The scenarios are a
//! Python program whose `subprocess.run` uses `vfork` and a C program (compiled with gcc
//! at test time) with one mode per way of starting a child.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use splicecow_test_harness::{
    compile_c, counter, domain_stats, library_path, python3, run_with_timeout, Protection,
    ScratchDir, TempDomain, TempFile,
};

/// How long one scenario process may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The preloadable library, or a failure that says how to build it.
fn lib() -> PathBuf {
    library_path().unwrap_or_else(|e| panic!("{e}"))
}

/// Starts children in one of several ways (argv[1]), then splices and mutates in the
/// parent; prints `received N mismatched M` (bytes the pipe's reader got, and how many
/// of them differ from what was spliced). Exit status 2 on any unexpected failure.
///
/// - `vfork-exec FILE`: `vfork` + `execve("/bin/true")`.
/// - `posix-spawn FILE`: `posix_spawn("/bin/true")`.
/// - `clone-vfork FILE LOG`: `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)` of a function that
///   `write`s a line to the regular file LOG, then `execve`s `/bin/true`.
/// - `vfork-children FILE`: the parent splices the first 32 KiB into its pipe; a `vfork`
///   child `dup2`s the pipe's write end to fd 9, `write`s 16 bytes through it, `close`s
///   both and `_exit`s; a second one `dup2`s it onto stdout, `write`s 16 bytes, `close`s
///   the original and `execve`s `/bin/true`. The parent then `write`s 16 bytes through
///   its own (still open) fd, splices the next 32 KiB, `pwrite`s at 100 and at 40000 and
///   reads everything back: the spliced bytes and the three writes, in order.
const CHILDREN_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
#define LEN 65536
#define HALF (LEN / 2)
static char orig[LEN], expected[2 * LEN], got[2 * LEN];
static char *true_argv[] = {"/bin/true", NULL};

static void die(const char *what) { perror(what); exit(2); }

static void wait_ok(pid_t pid) {
    int st;
    if (pid < 0) die("start child");
    if (waitpid(pid, &st, 0) != pid) die("waitpid");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { fprintf(stderr, "child status %d\n", st); exit(2); }
}

static void splice_all(int fd, loff_t off, int w, size_t len) {
    size_t n = 0;
    while (n < len) {
        loff_t o = off + (loff_t)n;
        ssize_t r = splice(fd, &o, w, NULL, len - n, 0);
        if (r <= 0) die("splice");
        n += (size_t)r;
    }
}

static size_t read_all(int r, char *buf, size_t cap) {
    size_t n = 0;
    for (;;) {
        ssize_t k = read(r, buf + n, cap - n);
        if (k < 0) die("read");
        if (k == 0 || (n += (size_t)k) == cap) return n;
    }
}

static void report(const char *want, size_t want_len, const char *have, size_t have_len) {
    size_t bad = 0, common = want_len < have_len ? want_len : have_len;
    for (size_t i = 0; i < common; i++) bad += want[i] != have[i];
    bad += (want_len > have_len ? want_len - have_len : have_len - want_len);
    printf("received %zu mismatched %zu\n", have_len, bad);
}

static int open_file(const char *path) {
    int fd = open(path, O_RDWR);
    if (fd < 0) die("open");
    if (pread(fd, orig, LEN, 0) != LEN) die("pread");
    return fd;
}

/* Splice 64 KiB, pwrite 16 B's into the spliced range, read the pipe. */
static void splice_then_pwrite(int fd) {
    int p[2];
    if (pipe(p)) die("pipe");
    splice_all(fd, 0, p[1], LEN);
    if (pwrite(fd, "BBBBBBBBBBBBBBBB", 16, 100) != 16) die("pwrite");
    close(p[1]);
    report(orig, LEN, got, read_all(p[0], got, sizeof got));
}

static int clone_child(void *arg) {
    int log = *(int *)arg;
    if (write(log, "clone child ran\n", 16) != 16) _exit(3);
    execve("/bin/true", true_argv, environ);
    _exit(127);
}

static void vfork_children(int fd) {
    static const char one[] = "child one wrote!", two[] = "child two wrote!",
                      parent[] = "parent wrote it!";
    int p[2];
    if (pipe(p)) die("pipe");
    if (fcntl(p[1], F_SETPIPE_SZ, 4 * LEN) < 0) die("F_SETPIPE_SZ");
    splice_all(fd, 0, p[1], HALF);
    pid_t c = vfork();
    if (c == 0) {
        if (dup2(p[1], 9) != 9) _exit(3);
        if (write(9, one, 16) != 16) _exit(4);
        close(9);
        close(p[1]);
        _exit(0);
    }
    wait_ok(c);
    c = vfork();
    if (c == 0) {
        if (dup2(p[1], 1) != 1) _exit(3);
        if (write(1, two, 16) != 16) _exit(4);
        close(p[1]);
        execve("/bin/true", true_argv, environ);
        _exit(127);
    }
    wait_ok(c);
    if (write(p[1], parent, 16) != 16) die("parent write");
    splice_all(fd, HALF, p[1], HALF);
    if (pwrite(fd, "BBBBBBBBBBBBBBBB", 16, 100) != 16) die("pwrite 100");
    if (pwrite(fd, "BBBBBBBBBBBBBBBB", 16, HALF + 7232) != 16) die("pwrite 40000");
    close(p[1]);
    size_t n = 0;
    memcpy(expected + n, orig, HALF); n += HALF;
    memcpy(expected + n, one, 16); n += 16;
    memcpy(expected + n, two, 16); n += 16;
    memcpy(expected + n, parent, 16); n += 16;
    memcpy(expected + n, orig + HALF, HALF); n += HALF;
    report(expected, n, got, read_all(p[0], got, sizeof got));
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    int fd = open_file(argv[2]);
    if (strcmp(argv[1], "vfork-exec") == 0) {
        pid_t c = vfork();
        if (c == 0) { execve("/bin/true", true_argv, environ); _exit(127); }
        wait_ok(c);
        splice_then_pwrite(fd);
    } else if (strcmp(argv[1], "posix-spawn") == 0) {
        pid_t c;
        if (posix_spawn(&c, "/bin/true", NULL, NULL, true_argv, environ) != 0) die("posix_spawn");
        wait_ok(c);
        splice_then_pwrite(fd);
    } else if (strcmp(argv[1], "clone-vfork") == 0 && argc > 3) {
        int log = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (log < 0) die("open log");
        size_t size = 1 << 20;
        char *stack = malloc(size);
        if (!stack) die("malloc");
        pid_t c = clone(clone_child, stack + size, CLONE_VM | CLONE_VFORK | SIGCHLD, &log);
        wait_ok(c);
        free(stack);
        splice_then_pwrite(fd);
    } else if (strcmp(argv[1], "vfork-children") == 0) {
        vfork_children(fd);
    } else {
        return 2;
    }
    return 0;
}
"#;

/// The compiled `CHILDREN_C`.
fn children_program() -> PathBuf {
    static PROGRAM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| compile_c("vfork-children", CHILDREN_C))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Splices after `subprocess.run` (CPython starts the child with `vfork` + `execve`),
/// then pwrites and reads; prints `received N mismatched M`.
const PYTHON_SUBPROCESS: &str = r#"
import os, subprocess, sys
p = sys.argv[1]
fd = os.open(p, os.O_RDWR)
orig = os.pread(fd, 65536, 0)
subprocess.run(["true"], check=True)
r, w = os.pipe()
n = 0
while n < 65536:
    n += os.splice(fd, w, 65536 - n, offset_src=n)
os.pwrite(fd, b"B" * 16, 100)
os.close(w)
got = b""
while True:
    chunk = os.read(r, 1 << 20)
    if not chunk:
        break
    got += chunk
bad = sum(1 for a, b in zip(orig, got) if a != b) + abs(len(orig) - len(got))
print("received", len(got), "mismatched", bad)
"#;

/// What one run printed: `(received, mismatched)`.
fn parse_outcome(stdout: &[u8]) -> Option<(u64, u64)> {
    let text = String::from_utf8_lossy(stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["received", n, "mismatched", bad] => Some((n.parse().ok()?, bad.parse().ok()?)),
        _ => None,
    }
}

/// Runs `cmd` under `prot` and returns `(received, mismatched)`.
fn run_once(what: &str, mut cmd: Command, prot: &Protection) -> (u64, u64) {
    prot.apply(&mut cmd);
    let out = run_with_timeout(&mut cmd, TIMEOUT).expect("spawn");
    assert!(
        out.status.is_some(),
        "HANG: {what} ({}) did not finish within {TIMEOUT:?}: {}",
        prot.label(),
        out.describe()
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{what} ({}) failed: {}",
        prot.label(),
        out.describe()
    );
    parse_outcome(&out.stdout)
        .unwrap_or_else(|| panic!("{what} ({}): no outcome: {}", prot.label(), out.describe()))
}

/// Runs the scenario `make()` builds without and with the shim. Unprotected, the reader
/// should see the mutation (`corrupting` bad bytes); protected, it must get exactly the
/// `expected_len` bytes spliced and written, and the domain must have recorded at least
/// `min_splices` splices.
fn differential(
    what: &str,
    expected_len: u64,
    min_splices: u64,
    make: impl Fn(&TempFile) -> Command,
) {
    let lib = lib();
    let file = TempFile::with_pattern("vfork", 256 << 10).expect("file");
    let unprotected = run_once(what, make(&file), &Protection::Unprotected);
    let file = TempFile::with_pattern("vfork", 256 << 10).expect("file");
    let domain = TempDomain::new();
    let protected = run_once(what, make(&file), &domain.protection(&lib));
    let stats = domain_stats(domain.name()).expect("stats");
    eprintln!(
        "{what}: unprotected (received, mismatched) {unprotected:?}{}; protected {protected:?}; \
         stats {stats}",
        if unprotected.1 == 0 {
            " (could not reproduce the corruption on this kernel)"
        } else {
            ""
        }
    );
    assert_eq!(
        protected,
        (expected_len, 0),
        "{what}: protected run, (received, mismatched) bytes; stats {stats}"
    );
    let splices = counter(&stats, "splices").unwrap_or(0);
    assert!(
        splices >= min_splices,
        "{what}: the domain recorded {splices} splices, expected at least {min_splices} \
         (the parent's hooks called straight through): {stats}"
    );
}

/// The C program in `mode` on `file` (plus `extra` arguments).
fn children(mode: &str, file: &TempFile, extra: &[PathBuf]) -> Command {
    let mut cmd = Command::new(children_program());
    cmd.arg(mode).arg(file.path()).args(extra);
    cmd
}

#[test]
fn python_subprocess_then_splice_and_pwrite_is_settled() {
    differential(
        "python subprocess.run, then splice + pwrite",
        65536,
        1,
        |file| {
            let mut cmd = Command::new(python3());
            cmd.arg("-c").arg(PYTHON_SUBPROCESS).arg(file.path());
            cmd
        },
    );
}

#[test]
fn vfork_execve_then_splice_and_pwrite_is_settled() {
    differential("vfork + execve, then splice + pwrite", 65536, 1, |file| {
        children("vfork-exec", file, &[])
    });
}

#[test]
fn vfork_children_that_dup2_close_write_then_exit_or_exec_leave_the_parent_protected() {
    // 64 KiB spliced in two halves plus three 16-byte writes; two recorded splices.
    differential(
        "vfork children (dup2, write, close, _exit / execve), then the parent writes, \
         splices and pwrites",
        65536 + 48,
        2,
        |file| children("vfork-children", file, &[]),
    );
}

#[test]
fn posix_spawn_then_splice_and_pwrite_is_settled() {
    differential("posix_spawn, then splice + pwrite", 65536, 1, |file| {
        children("posix-spawn", file, &[])
    });
}

#[test]
fn clone_vm_vfork_child_that_writes_and_execs_leaves_the_parent_protected() {
    let scratch = ScratchDir::new("clone-vfork").expect("scratch dir");
    let log = scratch.join("child.log");
    differential(
        "clone(CLONE_VM|CLONE_VFORK) child that writes a file and execs, then splice + pwrite",
        65536,
        1,
        |file| children("clone-vfork", file, std::slice::from_ref(&log)),
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(logged, "clone child ran\n", "the clone child's write");
}
