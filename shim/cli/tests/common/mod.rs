//! Helpers the CLI's tests share: commands that inherit nothing of splicecow from the
//! test, their output, scratch directories, and domains that do not outlive a test.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// `program ARGS` with no splicecow variables and no preload inherited from the test.
pub fn clean(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).env_remove("LD_PRELOAD");
    for (k, _) in std::env::vars() {
        if k.starts_with(splicecow_registry::env::PREFIX) {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs `cmd` to completion.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the command runs")
}

/// Bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(what: &str, o: Output) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// A fresh scratch directory `splicecow-<suite>-<pid>-<name>`, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Makes it (empty).
    pub fn new(suite: &str, name: &str) -> Scratch {
        let d =
            std::env::temp_dir().join(format!("splicecow-{suite}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A domain of its own for one `splicecow run` of a test (`run --domain NAME`), whose
/// registry is removed when dropped: a run whose bytes are still in flight in a pipe
/// outside the domain keeps its registry at exit (by design), and a test's must not
/// stay behind in `/dev/shm` (its live segments would keep every later process of the
/// user on the busy path until a sweep).
pub struct TestDomain(String);

impl TestDomain {
    /// A fresh name `test-cli-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TestDomain {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TestDomain(format!("test-cli-{tag}-{}-{n}", std::process::id()))
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// `run --domain NAME` followed by `rest`.
    pub fn run_args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["run", "--domain", self.0.as_str()];
        v.extend_from_slice(rest);
        v
    }
}

impl Drop for TestDomain {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(splicecow_registry::registry_path(&self.0));
    }
}
