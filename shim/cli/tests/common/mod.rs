//! Helpers the CLI's tests share: commands that inherit nothing of splicecow from the
//! test, their output, and scratch directories.

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
