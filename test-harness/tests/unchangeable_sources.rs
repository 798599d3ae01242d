//! Sources whose bytes cannot change while a pipe holds them need no record: splices of
//! them take no lock and leave nothing in the registry. Each case splices 64 KiB into a
//! pipe under the shim, tries to change the source (the kernel refuses: that is what
//! makes it unchangeable, so the unprotected run cannot show corruption either), reads
//! the pipe, and checks the bytes and that the domain recorded nothing; the same
//! program on an ordinary memfd is the control that is recorded (so a skip that did
//! nothing, or one that skipped too much, fails).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use splicecow_test_harness::{
    compile_c, counter, domain_stats, library_path, run_with_timeout, ScratchDir, TempDomain,
};

/// `unchangeable MODE [FILE]`: prints `received N mismatched M refused R`, or `skip WHY`.
const PROGRAM_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define LEN 65536
static char orig[LEN], got[2 * LEN];

static void die(const char *what) { perror(what); exit(2); }

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *mode = argv[1];
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 0; i < LEN; i++) orig[i] = (char)(i * 7 + 3);
    int fd;
    if (!strcmp(mode, "sealed") || !strcmp(mode, "unsealed")) {
        fd = memfd_create("unchangeable", MFD_ALLOW_SEALING);
        if (fd < 0 || pwrite(fd, orig, LEN, 0) != LEN) die("memfd");
        if (!strcmp(mode, "sealed") && fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK))
            die("F_ADD_SEALS");
    } else if (!strcmp(mode, "immutable") && argc > 2) {
        fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || pwrite(fd, orig, LEN, 0) != LEN) die("file");
        int flags = 0;
        if (ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0) {
            flags |= FS_IMMUTABLE_FL;
            if (ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0) goto ready;
        }
        printf("skip cannot set the immutable flag here: %s\n", strerror(errno));
        return 0;
    } else {
        return 2;
    }
ready:;
    int p[2];
    if (pipe(p) || fcntl(p[1], F_SETPIPE_SZ, 4 * LEN) < 0) die("pipe");
    for (loff_t off = 0; off < LEN;) {
        ssize_t r = splice(fd, &off, p[1], NULL, LEN - off, 0);
        if (r <= 0) die("splice");
    }
    int refused = pwrite(fd, "BBBBBBBBBBBBBBBB", 16, 100) < 0;
    close(p[1]);
    size_t n = 0;
    for (ssize_t k; (k = read(p[0], got + n, sizeof got - n)) > 0;) n += (size_t)k;
    size_t bad = n > LEN ? n - LEN : LEN - n;
    for (size_t i = 0; i < n && i < LEN; i++) bad += got[i] != orig[i];
    if (!strcmp(mode, "immutable")) {
        int flags = 0;
        ioctl(fd, FS_IOC_GETFLAGS, &flags);
        flags &= ~FS_IMMUTABLE_FL;
        ioctl(fd, FS_IOC_SETFLAGS, &flags);
    }
    printf("received %zu mismatched %zu refused %d\n", n, bad, refused);
    return 0;
}
"#;

/// The compiled [`PROGRAM_C`].
fn program() -> PathBuf {
    static PROGRAM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| compile_c("unchangeable", PROGRAM_C))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `mode` (with `extra` arguments) under the shim in a fresh domain: the program's
/// output words and the domain's `splices` counter.
fn run(mode: &str, extra: &[PathBuf]) -> (String, u64) {
    let lib = library_path().unwrap_or_else(|e| panic!("{e}"));
    let domain = TempDomain::new();
    let mut cmd = Command::new(program());
    cmd.arg(mode).args(extra);
    domain.protection(&lib).apply(&mut cmd);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20)).expect("spawn");
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{mode}: {}",
        out.describe()
    );
    let stats = domain_stats(domain.name()).expect("stats");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (text, counter(&stats, "splices").unwrap_or(0))
}

/// The bytes arrive exact, the change was refused, and `recorded` says whether the
/// domain must have recorded the splice.
fn check(mode: &str, extra: &[PathBuf], recorded: bool) {
    let (text, splices) = run(mode, extra);
    if let Some(why) = text.strip_prefix("skip ") {
        eprintln!("{mode}: not run: {why}");
        return;
    }
    let refused = !recorded;
    assert_eq!(
        text,
        format!("received 65536 mismatched 0 refused {}", i32::from(refused)),
        "{mode}"
    );
    if recorded {
        assert!(splices > 0, "{mode}: an ordinary memfd must be recorded");
    } else {
        assert_eq!(
            splices, 0,
            "{mode}: nothing to record for an unchangeable source"
        );
    }
}

#[test]
fn a_sealed_memfd_is_spliced_without_a_record() {
    check("sealed", &[], false);
}

#[test]
fn an_unsealed_memfd_is_recorded_and_settled() {
    check("unsealed", &[], true);
}

#[test]
fn an_immutable_file_is_spliced_without_a_record() {
    let scratch = ScratchDir::new("unchangeable").expect("scratch");
    check("immutable", &[scratch.join("frozen")], false);
}
