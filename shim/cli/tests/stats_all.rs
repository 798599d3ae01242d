//! `splicecow stats --all`: every domain of this user, who uses it, which are stale, and
//! `--remove-stale`, with real registries and processes.
//!
//! `--remove-stale` removes every stale registry of this user, not only the ones made
//! here: stale means nobody can use it any more (a one-shot domain whose run is over, a
//! corrupt registry or one of another layout version, unchanged for a minute), so that is
//! what the command is for.

use splicecow_registry::{registry_path, Registry};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

const BIN: &str = env!("CARGO_BIN_EXE_splicecow");

fn splicecow(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).env_remove("LD_PRELOAD");
    for (k, _) in std::env::vars() {
        if k.starts_with("SPLICECOW_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().unwrap()
}

/// The `--json` line of `domain` in `stats --all --json` output.
fn entry(out: &Output, domain: &str) -> Option<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON lines"))
        .find(|v| v["domain"] == domain)
}

/// A pid that no process has now (a child that has been reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Makes the registry of `domain` look unchanged for two minutes.
fn age(domain: &str) {
    let past = SystemTime::now() - Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(registry_path(domain))
        .unwrap()
        .set_modified(past)
        .unwrap();
}

/// Removes the registries of these domains, however the test ends.
struct Domains(Vec<String>);

impl Drop for Domains {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_file(registry_path(d));
        }
    }
}

#[test]
fn all_domains_are_listed_with_their_users_and_stale_ones_are_removed() {
    let me = std::process::id();
    let named = format!("clitest-{me}-named");
    let over = format!("run-{}-{me}1", dead_pid());
    let fresh = format!("run-{}-{me}2", dead_pid());
    let corrupt = format!("clitest-{me}-corrupt");
    let _cleanup = Domains(vec![
        named.clone(),
        over.clone(),
        fresh.clone(),
        corrupt.clone(),
    ]);
    let held = Registry::open_or_create(&named).unwrap();
    drop(Registry::open_or_create(&over).unwrap());
    drop(Registry::open_or_create(&fresh).unwrap());
    age(&over);
    // A corrupt registry of a named domain, left for two minutes: stale too.
    std::fs::write(registry_path(&corrupt), b"not a registry").unwrap();
    std::fs::set_permissions(
        registry_path(&corrupt),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    age(&corrupt);

    let out = splicecow(&["stats", "--all", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = entry(&out, &named).expect("the named domain is listed");
    assert_eq!(e["state"], "in_use", "{e}");
    assert!(
        e["processes"].as_array().unwrap().contains(&me.into()),
        "this test maps the registry: {e}"
    );
    assert!(e["splices"].is_u64() && e["live_segments"].is_u64(), "{e}");
    let e = entry(&out, &over).expect("the finished run is listed");
    assert_eq!(e["state"], "stale", "{e}");
    assert_eq!(e["stale_because"], "its run is over", "{e}");
    let e = entry(&out, &fresh).expect("the fresh run is listed");
    assert_eq!(
        e["state"], "idle",
        "a registry changed a moment ago is not stale: {e}"
    );
    let e = entry(&out, &corrupt).expect("the corrupt registry is listed");
    assert_eq!(e["state"], "stale", "{e}");
    assert!(e["error"].as_str().unwrap().contains("corrupt"), "{e}");

    // The table: a header and one aligned line per domain.
    let table = splicecow(&["stats", "--all"]);
    let text = String::from_utf8_lossy(&table.stdout).into_owned();
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("domain") && header.contains("state") && header.contains("processes"),
        "{text}"
    );
    let line = text.lines().find(|l| l.starts_with(&named)).unwrap();
    assert!(line.contains("in use"), "{line}");
    let line = text.lines().find(|l| l.starts_with(&over)).unwrap();
    assert!(line.contains("stale"), "{line}");
    assert!(
        String::from_utf8_lossy(&table.stderr).contains("--remove-stale` removes it"),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );

    let out = splicecow(&["stats", "--all", "--remove-stale", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(entry(&out, &over).unwrap()["removed"], true);
    assert_eq!(entry(&out, &corrupt).unwrap()["removed"], true);
    assert_eq!(entry(&out, &named).unwrap()["removed"], false);
    assert!(!Path::new(&registry_path(&over)).exists());
    assert!(!Path::new(&registry_path(&corrupt)).exists());
    assert!(Path::new(&registry_path(&named)).exists(), "in use: kept");
    assert!(Path::new(&registry_path(&fresh)).exists(), "idle: kept");

    drop(held);
}

#[test]
fn a_running_domain_is_in_use_by_its_processes() {
    // Inside a run, the run's own domain is listed as used by the run and its command.
    let script =
        format!("{BIN} stats --all --json | grep \"\\\"domain\\\":\\\"$SPLICECOW_DOMAIN\\\"\"");
    let out = splicecow(&["run", "--", "sh", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["state"], "in_use", "{v}");
    // `splicecow run` itself and the shell (preloaded) map it; `stats` does not count itself.
    assert!(v["processes"].as_array().unwrap().len() >= 2, "{v}");
}

#[test]
fn remove_stale_needs_all_and_all_excludes_a_domain() {
    assert_eq!(
        splicecow(&["stats", "--remove-stale"]).status.code(),
        Some(2)
    );
    assert_eq!(
        splicecow(&["stats", "--all", "--domain", "x"])
            .status
            .code(),
        Some(2)
    );
}
