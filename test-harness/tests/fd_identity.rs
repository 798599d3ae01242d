//! Differential tests of the fd identity cache: an fd number the shim has learned to
//! name one file, then closed or replaced in one of the ways a program can, and reused
//! for the file whose bytes are in flight in a pipe. The shim must see the new meaning
//! (the write is a conflict and is settled), never answer from what it learned before.
//!
//! Every scenario: splice 64 KiB of file B into a pipe (nobody reads yet), make fd N name
//! file A and write to it (the shim learns "N is A"), close or replace N in the way under
//! test, make N name B, `pwrite` 16 `B`s into B's spliced range through N, read the pipe.
//! The closes include raw `close`/`close_range` system calls, which no hook sees: there the
//! call that reuses the number (`open`, `fopen`, `pipe`) must make the shim forget it. In
//! the pipe case the learned number named a pipe, and B is spliced into the new pipe on
//! the same numbers, which is then read.
//! Without the shim the reader gets the 16 new bytes (if this kernel does not show it,
//! the test says so); with it, exactly the spliced bytes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use splicecow_test_harness::{
    compile_c, domain_stats, library_path, run_with_timeout, Protection, ScratchDir, TempDomain,
    TempFile,
};

/// How long one scenario process may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// `fd-identity MODE B A`: prints `received N mismatched M`; exit status 2 on any
/// unexpected failure, 3 when fd N could not be made to name B again.
const PROGRAM_C: &str = r#"
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define LEN 65536
static char orig[LEN], got[2 * LEN];
static const char *path_b, *path_a;
static int src;

static void die(const char *what) { perror(what); exit(2); }

/* The shim learns what fd `fd` names: a hooked write through it while something is live. */
static void teach(int fd) { (void)pwrite(fd, "a", 1, 0); }

/* Opens B until it gets number `want` (lower free numbers are filled, then freed). */
static int open_b_as(int want) {
    int extra[16], n_extra = 0, fd;
    while ((fd = open(path_b, O_RDWR)) >= 0 && fd < want && n_extra < 16) extra[n_extra++] = fd;
    if (fd < 0) die("open B");
    if (fd != want) { fprintf(stderr, "fd %d, wanted %d\n", fd, want); exit(3); }
    while (n_extra > 0) close(extra[--n_extra]);
    return fd;
}

static int open_a(void) {
    int fd = open(path_a, O_RDWR);
    if (fd < 0) die("open A");
    teach(fd);
    return fd;
}

static void mutate(int fd) {
    if (pwrite(fd, "BBBBBBBBBBBBBBBB", 16, 100) != 16) die("pwrite B");
}

static void *unshared_thread(void *arg) {
    int n = *(int *)arg;
    if (unshare(CLONE_FILES)) die("unshare");
    close(n);
    mutate(open_b_as(n));
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *mode = argv[1];
    path_b = argv[2];
    path_a = argv[3];
    setvbuf(stdout, NULL, _IONBF, 0);
    src = open(path_b, O_RDONLY);
    if (src < 0 || pread(src, orig, LEN, 0) != LEN) die("read B");
    int p[2];
    if (pipe(p) || fcntl(p[1], F_SETPIPE_SZ, 4 * LEN) < 0) die("pipe");
    int rd = p[0];
    for (loff_t off = 0; off < LEN;) {
        ssize_t r = splice(src, &off, p[1], NULL, LEN - off, 0);
        if (r <= 0) die("splice");
    }
    if (!strcmp(mode, "close")) {
        int n = open_a();
        close(n);
        mutate(open_b_as(n));
    } else if (!strcmp(mode, "close_range")) {
        int n = open_a();
        if (close_range(n, n, 0)) die("close_range");
        mutate(open_b_as(n));
    } else if (!strcmp(mode, "closefrom")) {
        int n = open_a();
        closefrom(n);
        mutate(open_b_as(n));
    } else if (!strcmp(mode, "dup2")) {
        int n = open_a(), b = open(path_b, O_RDWR);
        if (dup2(b, n) != n) die("dup2");
        mutate(n);
    } else if (!strcmp(mode, "dup3")) {
        int n = open_a(), b = open(path_b, O_RDWR);
        if (dup3(b, n, O_CLOEXEC) != n) die("dup3");
        mutate(n);
    } else if (!strcmp(mode, "fclose")) {
        FILE *f = fopen(path_a, "r+");
        if (!f) die("fopen");
        int n = fileno(f);
        teach(n);
        fclose(f);
        mutate(open_b_as(n));
    } else if (!strcmp(mode, "freopen")) {
        FILE *f = fopen(path_a, "r+");
        if (!f) die("fopen");
        teach(fileno(f));
        if (!freopen(path_b, "r+", f)) die("freopen");
        mutate(fileno(f));
    } else if (!strcmp(mode, "closedir")) {
        DIR *d = opendir("/");
        if (!d) die("opendir");
        int n = dirfd(d);
        teach(n);
        closedir(d);
        mutate(open_b_as(n));
    } else if (!strcmp(mode, "pclose")) {
        FILE *f = popen("cat >/dev/null", "w");
        if (!f) die("popen");
        int n = fileno(f);
        if (write(n, "x", 1) != 1) die("write popen");
        pclose(f);
        mutate(open_b_as(n));
    } else if (!strcmp(mode, "raw-close-open")) {
        int n = open_a();
        syscall(SYS_close, n);
        mutate(open_b_as(n));
    } else if (!strcmp(mode, "raw-close-fopen")) {
        int n = open_a();
        syscall(SYS_close_range, n, n, 0);
        FILE *f = fopen(path_b, "r+");
        if (!f || fileno(f) != n) die("fopen B");
        mutate(fileno(f));
    } else if (!strcmp(mode, "raw-close-pipe")) {
        int q[2];
        char x;
        if (pipe(q) || write(q[1], "x", 1) != 1 || read(q[0], &x, 1) != 1) die("pipe q");
        syscall(SYS_close, q[0]);
        syscall(SYS_close, q[1]);
        int q2[2];
        if (pipe(q2) || q2[0] != q[0] || q2[1] != q[1]) die("pipe q2");
        for (loff_t off = 0; off < LEN;) {
            ssize_t r = splice(src, &off, q2[1], NULL, LEN - off, 0);
            if (r <= 0) die("splice q2");
        }
        mutate(open(path_b, O_RDWR));
        close(q2[1]);
        rd = q2[0];
    } else if (!strcmp(mode, "unshare")) {
        int n = open_a();
        pthread_t t;
        if (pthread_create(&t, NULL, unshared_thread, &n)) die("pthread_create");
        pthread_join(t, NULL);
    } else if (!strcmp(mode, "vfork-dup2")) {
        int n = open_a(), b = open(path_b, O_RDWR);
        pid_t c = vfork();
        if (c == 0) {
            if (dup2(b, n) != n) _exit(4);
            if (pwrite(n, "BBBBBBBBBBBBBBBB", 16, 100) != 16) _exit(5);
            _exit(0);
        }
        int st;
        if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st)) die("child");
    } else {
        return 2;
    }
    close(p[1]);
    size_t n = 0;
    for (ssize_t k; (k = read(rd, got + n, sizeof got - n)) > 0;) n += (size_t)k;
    size_t bad = n > LEN ? n - LEN : LEN - n;
    for (size_t i = 0; i < n && i < LEN; i++) bad += got[i] != orig[i];
    printf("received %zu mismatched %zu\n", n, bad);
    return 0;
}
"#;

/// The compiled [`PROGRAM_C`].
fn program() -> PathBuf {
    static PROGRAM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| compile_c("fd-identity", PROGRAM_C))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `mode` under `prot` on fresh files; returns `(received, mismatched)`.
fn run(mode: &str, prot: &Protection) -> (u64, u64) {
    let b = TempFile::with_pattern("fd-identity-b", 256 << 10).expect("file B");
    let scratch = ScratchDir::new("fd-identity").expect("scratch");
    let a = scratch.join("a");
    std::fs::write(&a, b"some other file").expect("file A");
    let mut cmd = Command::new(program());
    cmd.arg(mode).arg(b.path()).arg(&a);
    prot.apply(&mut cmd);
    let out = run_with_timeout(&mut cmd, TIMEOUT).expect("spawn");
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{mode} ({}): {}",
        prot.label(),
        out.describe()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["received", n, "mismatched", bad] => (n.parse().unwrap(), bad.parse().unwrap()),
        _ => panic!("{mode}: no outcome: {}", out.describe()),
    }
}

/// One way of closing or replacing a learned fd number, without and with the shim.
fn reused_number_is_seen(mode: &str) {
    let lib = library_path().unwrap_or_else(|e| panic!("{e}"));
    let unprotected = run(mode, &Protection::Unprotected);
    let domain = TempDomain::new();
    let protected = run(mode, &domain.protection(&lib));
    let stats = domain_stats(domain.name()).expect("stats");
    eprintln!(
        "{mode}: unprotected {unprotected:?}{}, protected {protected:?}",
        if unprotected.1 == 0 {
            " (could not reproduce the corruption on this kernel)"
        } else {
            ""
        }
    );
    assert_eq!(
        protected,
        (65536, 0),
        "{mode}: the write through the reused number reached the reader: {stats}"
    );
}

#[test]
fn close_then_reuse() {
    reused_number_is_seen("close");
}

#[test]
fn close_range_then_reuse() {
    reused_number_is_seen("close_range");
}

#[test]
fn closefrom_then_reuse() {
    reused_number_is_seen("closefrom");
}

#[test]
fn dup2_over_a_learned_number() {
    reused_number_is_seen("dup2");
}

#[test]
fn dup3_over_a_learned_number() {
    reused_number_is_seen("dup3");
}

#[test]
fn fclose_then_reuse() {
    reused_number_is_seen("fclose");
}

#[test]
fn freopen_onto_the_spliced_file() {
    reused_number_is_seen("freopen");
}

#[test]
fn closedir_then_reuse() {
    reused_number_is_seen("closedir");
}

#[test]
fn pclose_then_reuse() {
    reused_number_is_seen("pclose");
}

#[test]
fn raw_close_then_open_reuses_the_number() {
    reused_number_is_seen("raw-close-open");
}

#[test]
fn raw_close_range_then_fopen_reuses_the_number() {
    reused_number_is_seen("raw-close-fopen");
}

#[test]
fn raw_close_of_a_learned_pipe_then_pipe_reuses_the_numbers() {
    reused_number_is_seen("raw-close-pipe");
}

#[test]
fn a_thread_with_its_own_fd_table() {
    reused_number_is_seen("unshare");
}

#[test]
fn a_vfork_child_that_dup2s_over_a_learned_number() {
    reused_number_is_seen("vfork-dup2");
}
