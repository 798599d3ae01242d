//! Installing splicecow like the tools it sits beside, tested with real processes:
//! `scripts/install` into a temporary prefix (and staged under a DESTDIR), and the Debian
//! package built by `scripts/deb` (installed with apt and removed again, as root only).
//!
//! The library comes from `$SPLICECOW_LIB` or beside the CLI binary under test; the tests
//! that need it say so and skip when it is missing (`cargo build --release` first, as
//! `scripts/test` does).

mod common;

use common::{clean, ok, run, text, Scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_splicecow");

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The library under test, or `None` (with a message) when it has not been built.
fn library() -> Option<PathBuf> {
    let lib = std::env::var_os("SPLICECOW_LIB")
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(BIN).with_file_name("libsplicecow.so"));
    if lib.is_file() {
        Some(lib)
    } else {
        eprintln!(
            "skipped: {} does not exist (run `cargo build --release` first, or set SPLICECOW_LIB)",
            lib.display()
        );
        None
    }
}

/// A directory holding the CLI under test and the library, for `scripts/install --from`.
fn build_dir(scratch: &Scratch, lib: &Path) -> PathBuf {
    let from = scratch.0.join("from");
    std::fs::create_dir_all(&from).unwrap();
    std::fs::copy(BIN, from.join("splicecow")).unwrap();
    std::fs::copy(lib, from.join("libsplicecow.so")).unwrap();
    from
}

fn install_script(args: &[&str]) -> Output {
    run(clean("bash", &[])
        .arg(repo().join("scripts/install"))
        .args(args))
}

/// Every file below `dir`, relative to it, sorted.
fn files_below(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

const MAN_PAGES: [&str; 8] = [
    "share/man/man1/splicecow.1",
    "share/man/man1/splicecow-run.1",
    "share/man/man1/splicecow-stats.1",
    "share/man/man1/splicecow-doctor.1",
    "share/man/man1/splicecow-demo.1",
    "share/man/man1/splicecow-symbolize.1",
    "share/man/man1/splicecow-completions.1",
    "share/man/man7/libsplicecow.7",
];

/// `man -l PAGE`'s stderr (warnings) and stdout, or `None` when `man` is missing.
fn render_man(page: &Path) -> Option<(String, String)> {
    let o = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("LC_ALL", "C.UTF-8")
        .env("MANWIDTH", "80")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    Some((text(&o.stderr), text(&o.stdout)))
}

/// A protected splice + pwrite in one process, run by `cli run`: the case's JSON line
/// and the run's counters.
fn protected_case(cli: &Path) -> (serde_json::Value, String) {
    let cli_s = cli.to_str().unwrap();
    let o = run(&mut clean(
        cli,
        &["run", "--stats", "--", cli_s, "demo-case", "pwrite"],
    ));
    let out = ok("splicecow run -- splicecow demo-case pwrite", o.clone());
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    (v, text(&o.stderr))
}

/// The value of counter `name` in `name: value` lines.
fn counter(lines: &str, name: &str) -> u64 {
    lines
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {lines}"))
}

#[test]
fn an_install_into_a_prefix_runs_from_there_and_uninstalls_to_nothing() {
    let Some(lib) = library() else { return };
    let scratch = Scratch::new("installtest", "prefix");
    let from = build_dir(&scratch, &lib);
    let prefix = scratch.0.join("usr-local");
    let prefix_s = prefix.to_str().unwrap();
    ok(
        "scripts/install",
        install_script(&["--prefix", prefix_s, "--from", from.to_str().unwrap()]),
    );

    let mut expected: Vec<String> = vec![
        "bin/splicecow".into(),
        "lib/splicecow/installed-files".into(),
        "lib/splicecow/libsplicecow.so".into(),
        "share/bash-completion/completions/splicecow".into(),
        "share/fish/vendor_completions.d/splicecow.fish".into(),
        "share/zsh/site-functions/_splicecow".into(),
    ];
    expected.extend(MAN_PAGES.iter().map(|s| s.to_string()));
    expected.sort();
    assert_eq!(files_below(&prefix), expected);

    // The installed CLI finds the installed library by its own location.
    let cli = prefix.join("bin/splicecow");
    let installed_lib = prefix.join("lib/splicecow/libsplicecow.so");
    let doctor = text(&run(&mut clean(&cli, &["doctor"])).stdout);
    assert!(
        doctor.contains(&format!(
            "✓ library found at {} (installed layout under {prefix_s}",
            installed_lib.display()
        )),
        "{doctor}"
    );
    assert!(!doctor.contains("✗ "), "{doctor}");
    let preload = ok(
        "run echo",
        run(&mut clean(
            &cli,
            &["run", "--", "sh", "-c", "echo \"$LD_PRELOAD\""],
        )),
    );
    assert_eq!(preload.trim(), installed_lib.to_str().unwrap());

    let (case, counters) = protected_case(&cli);
    assert_eq!(case["mismatched_bytes"], 0, "{case}");
    assert!(counter(&counters, "settles") >= 1, "{counters}");

    let demo = ok("demo", run(&mut clean(&cli, &["demo"])));
    assert!(
        demo.contains("With splicecow every reader got exactly the bytes that were spliced."),
        "{demo}"
    );

    // The installed man pages carry the installed library's path and render cleanly.
    let lib_page = std::fs::read_to_string(prefix.join("share/man/man7/libsplicecow.7"))
        .unwrap()
        .replace("\\:", "");
    assert!(
        lib_page.contains(&installed_lib.display().to_string().replace('-', "\\-")),
        "libsplicecow(7) does not name the installed library"
    );
    for page in MAN_PAGES {
        if let Some((warnings, out)) = render_man(&prefix.join(page)) {
            assert_eq!(warnings, "", "{page}");
            assert!(out.contains("EXAMPLES") || page.ends_with(".7"), "{page}");
        }
    }

    ok(
        "scripts/install --uninstall",
        install_script(&["--uninstall", "--prefix", prefix_s]),
    );
    assert!(!prefix.exists(), "left behind: {:?}", files_below(&prefix));
    // Nothing else was touched: the scratch directory holds the build copies only.
    assert_eq!(
        files_below(&scratch.0),
        ["from/libsplicecow.so", "from/splicecow"]
    );
}

#[test]
fn a_staged_usr_install_uses_the_triplet_directory_and_uninstalls_exactly() {
    let Some(lib) = library() else { return };
    let scratch = Scratch::new("installtest", "destdir");
    let from = build_dir(&scratch, &lib);
    let stage = scratch.0.join("stage");
    std::fs::create_dir_all(stage.join("usr/share/man/man1")).unwrap();
    // A file that is not splicecow's, in a directory the install shares.
    std::fs::write(stage.join("usr/share/man/man1/other.1"), ".TH OTHER 1\n").unwrap();
    let stage_s = stage.to_str().unwrap();
    let out = ok(
        "scripts/install --prefix /usr --destdir",
        install_script(&[
            "--prefix",
            "/usr",
            "--destdir",
            stage_s,
            "--from",
            from.to_str().unwrap(),
        ]),
    );
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    let lib_dir = stage.join("usr/lib").join(&triplet).join("splicecow");
    assert!(lib_dir.join("libsplicecow.so").is_file(), "{out}");
    assert!(stage
        .join("usr/share/zsh/vendor-completions/_splicecow")
        .is_file());
    // The manifest names the installed paths, not the staging ones.
    let manifest = std::fs::read_to_string(lib_dir.join("installed-files")).unwrap();
    assert!(manifest.contains(" /usr/bin/splicecow\n"), "{manifest}");
    assert!(!manifest.contains(stage_s), "{manifest}");
    // Run from the stage, the CLI finds the staged library beside its own prefix.
    let doctor = text(&run(&mut clean(stage.join("usr/bin/splicecow"), &["doctor"])).stdout);
    assert!(
        doctor.contains(&format!(
            "library found at {}",
            lib_dir.join("libsplicecow.so").display()
        )),
        "{doctor}"
    );

    ok(
        "scripts/install --uninstall --destdir",
        install_script(&["--uninstall", "--prefix", "/usr", "--destdir", stage_s]),
    );
    assert_eq!(files_below(&stage), ["usr/share/man/man1/other.1"]);
    assert!(!stage.join("usr/bin").exists());
    assert!(!stage.join("usr/lib").exists());
}

#[test]
fn uninstall_without_an_install_fails_and_removes_nothing() {
    let scratch = Scratch::new("installtest", "nothing");
    std::fs::create_dir_all(scratch.0.join("bin")).unwrap();
    std::fs::write(scratch.0.join("bin/splicecow"), "not ours").unwrap();
    let o = install_script(&["--uninstall", "--prefix", scratch.0.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("nothing to uninstall"),
        "{}",
        text(&o.stderr)
    );
    assert!(scratch.0.join("bin/splicecow").exists());
    let o = install_script(&["--prefix", "relative/dir"]);
    assert_eq!(o.status.code(), Some(1));
}

/// Removes the Debian package again, however the test ends.
struct InstalledPackage;

impl Drop for InstalledPackage {
    fn drop(&mut self) {
        let _ = Command::new("apt-get")
            .args(["remove", "-y", "splicecow"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output();
    }
}

/// Why the Debian package test cannot run here, if it cannot.
fn debian_test_blocker() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (installing a package needs root; CI runs as root)".into());
    }
    for tool in ["apt-get", "dpkg", "dpkg-shlibdeps"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Some(format!("{tool} is missing"));
        }
    }
    if Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        return Some(
            "cargo-deb is not installed (`cargo install cargo-deb --locked`; .ci/run does)".into(),
        );
    }
    let release = repo().join("target/release");
    let bin_dir = Path::new(BIN).parent().unwrap();
    if bin_dir.canonicalize().ok() != release.canonicalize().ok() {
        return Some(format!(
            "scripts/deb packs target/release, but the CLI under test is in {} \
             (run `cargo test --release`)",
            bin_dir.display()
        ));
    }
    if !release.join("libsplicecow.so").is_file() {
        return Some("target/release/libsplicecow.so is missing (cargo build --release)".into());
    }
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "splicecow"])
        .output()
        .map(|o| text(&o.stdout))
        .unwrap_or_default();
    if status.contains("installed") {
        return Some(format!(
            "a splicecow package is installed on this machine ({status}); not touching it"
        ));
    }
    None
}

#[test]
fn the_debian_package_installs_protects_and_removes_cleanly() {
    if let Some(why) = debian_test_blocker() {
        eprintln!("skipped the Debian package test: {why}");
        return;
    }
    let start = std::time::Instant::now();
    let built = ok(
        "scripts/deb --no-build",
        run(clean("bash", &[])
            .arg(repo().join("scripts/deb"))
            .arg("--no-build")
            .current_dir(repo())),
    );
    let deb = built
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .map(|l| repo().join(l.trim()))
        .unwrap_or_else(|| panic!("no .deb named in {built}"));
    let built_in = start.elapsed();

    let guard = InstalledPackage;
    ok(
        "apt-get install ./splicecow_*.deb",
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .arg(&deb)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())),
    );
    let listed = ok(
        "dpkg -L splicecow",
        run(Command::new("dpkg").args(["-L", "splicecow"])),
    );
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    let lib = format!("/usr/lib/{triplet}/splicecow/libsplicecow.so");
    for path in [
        "/usr/bin/splicecow",
        lib.as_str(),
        "/usr/share/man/man1/splicecow.1.gz",
        "/usr/share/man/man1/splicecow-run.1.gz",
        "/usr/share/man/man7/libsplicecow.7.gz",
        "/usr/share/bash-completion/completions/splicecow",
        "/usr/share/zsh/vendor-completions/_splicecow",
        "/usr/share/fish/vendor_completions.d/splicecow.fish",
    ] {
        assert!(
            listed.lines().any(|l| l == path),
            "{path} not in the package"
        );
        assert!(Path::new(path).is_file(), "{path} not installed");
    }

    let cli = Path::new("/usr/bin/splicecow");
    let doctor = text(&run(clean(cli, &["doctor"]).current_dir("/")).stdout);
    assert!(
        doctor.contains(&format!(
            "✓ library found at {lib} (installed layout under /usr, found from /usr/bin/splicecow)"
        )),
        "{doctor}"
    );
    assert!(!doctor.contains("✗ "), "{doctor}");
    let (case, counters) = protected_case(cli);
    assert_eq!(case["mismatched_bytes"], 0, "{case}");
    assert!(counter(&counters, "settles") >= 1, "{counters}");
    protected_pv_pipeline(cli);
    if let Some((warnings, out)) = render_man(Path::new("/usr/share/man/man7/libsplicecow.7.gz")) {
        assert_eq!(warnings, "");
        assert!(out.contains("WHAT IS NOT PROTECTED"));
    }

    drop(guard);
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "splicecow"])
        .output()
        .unwrap();
    // No conffiles, so nothing keeps a "config-files" entry: the package is gone.
    let status = text(&status.stdout);
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "after apt-get remove: {status}"
    );
    for path in listed.lines().map(Path::new) {
        if path.is_dir() {
            // Only directories other packages own (or fill) may stay.
            let owned = Command::new("dpkg")
                .arg("-S")
                .arg(path)
                .output()
                .is_ok_and(|o| o.status.success());
            let empty = std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none());
            assert!(owned || !empty, "{} left behind", path.display());
        } else {
            assert!(!path.exists(), "{} left behind", path.display());
        }
    }
    eprintln!(
        "Debian package test: built in {:.1} s, installed, checked and removed in {:.1} s",
        built_in.as_secs_f64(),
        (start.elapsed() - built_in).as_secs_f64()
    );
}

/// `pv FILE | (sleep; cat)` while another process of the domain truncates FILE: the
/// reader gets what was spliced. Skipped without pv.
fn protected_pv_pipeline(cli: &Path) {
    if Command::new("pv").arg("--version").output().is_err() {
        eprintln!("skipped the pv pipeline: pv is not installed");
        return;
    }
    let scratch = Scratch::new("installtest", "pv");
    let data = scratch.0.join("data");
    let out = scratch.0.join("out");
    let original: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&data, &original).unwrap();
    let script = format!(
        "pv -q '{d}' | {{ sleep 0.6; cat > '{o}'; }} & sleep 0.3; truncate -s 30000 '{d}'; wait",
        d = data.display(),
        o = out.display()
    );
    let o = run(&mut clean(
        cli,
        &["run", "--stats", "--", "sh", "-c", &script],
    ));
    let counters = text(&o.stderr);
    assert!(o.status.success(), "{counters}");
    let got = std::fs::read(&out).unwrap();
    assert!(got == original, "the reader got other bytes: {counters}");
    assert!(counter(&counters, "settles") >= 1, "{counters}");
}
