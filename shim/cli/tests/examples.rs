//! The examples in `examples/` stay true to the CLI and the Debian layout: the systemd
//! drop-in preloads the library where the package installs it and passes
//! `systemd-analyze verify` (where systemd's tools are installed), and the GitHub Actions
//! job runs detect mode with options `splicecow run` has.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_splicecow");

fn example(rel: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text)
}

#[test]
fn the_systemd_drop_in_preloads_the_packaged_library_and_verifies() {
    let (path, text) = example("systemd/splicecow.conf");
    let lib = format!(
        "/usr/lib/{}-linux-gnu/splicecow/libsplicecow.so",
        std::env::consts::ARCH
    );
    assert!(
        text.lines()
            .any(|l| l == format!("Environment=LD_PRELOAD={lib}")),
        "the drop-in does not preload {lib}"
    );
    assert!(text.contains("Environment=SPLICECOW_DOMAIN=%N"));

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped systemd-analyze verify: systemd's tools are not installed");
        return;
    }
    // A unit of its own with the drop-in, verified offline.
    let dir = std::env::temp_dir().join(format!("splicecow-examples-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("splicecow-example.service.d")).unwrap();
    std::fs::write(
        dir.join("splicecow-example.service"),
        "[Unit]\nDescription=splicecow example\n[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    std::fs::copy(
        &path,
        dir.join("splicecow-example.service.d/splicecow.conf"),
    )
    .unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "splicecow-example.service"])
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.trim().is_empty(), "{err}");
}

#[test]
fn the_github_actions_job_uses_options_run_has_and_keeps_the_report() {
    let (_, text) = example("github-actions/splice-conflicts.yml");
    let help = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for option in ["--mode", "--fail-on-conflict", "--report"] {
        assert!(text.contains(option) && help.contains(option), "{option}");
    }
    assert!(text.contains("splicecow run --mode detect --fail-on-conflict"));
    assert!(text.contains("uses: actions/upload-artifact@v4"));
    assert!(text.contains("path: splicecow-report.jsonl"));
    assert!(text.contains("if: always()"));
    // The SARIF step names a subcommand and option that exist.
    let help = Command::new(BIN)
        .args(["symbolize", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--output"));
    assert!(text.contains("splicecow symbolize splicecow-report.jsonl --output splicecow.sarif"));
    assert!(text.contains("uses: github/codeql-action/upload-sarif@v3"));
    assert!(text.contains("security-events: write"));
}
