//! The man pages and shell completions the CLI generates from its own clap definition,
//! tested with the real tools: `man -l` renders every page without a warning, and bash
//! loads the completion script and completes subcommands, options and values with it
//! (zsh and fish load theirs where they are installed).

mod common;

use common::{clean, ok, run, text, Scratch};
use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_splicecow");

/// The pages `generate-docs` writes.
const PAGES: usize = 8;

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

#[test]
fn every_generated_man_page_renders_without_warnings() {
    let scratch = Scratch::new("docstest", "man");
    let out = ok(
        "generate-docs",
        run(&mut clean(
            BIN,
            &["generate-docs", "--out-dir", scratch.0.to_str().unwrap()],
        )),
    );
    let pages: Vec<&str> = out
        .lines()
        .filter(|l| l.ends_with(".1") || l.ends_with(".7"))
        .collect();
    assert_eq!(pages.len(), PAGES, "{out}");
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!("skipped rendering: `man` is not installed (apt-get install man-db)");
        return;
    }
    for page in pages {
        let (warnings, rendered) = render_man(Path::new(page)).unwrap();
        assert_eq!(warnings, "", "man -l {page} warned");
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "ENVIRONMENT", "SEE ALSO"] {
            if section == "ENVIRONMENT" && page.ends_with("completions.1") {
                continue;
            }
            assert!(rendered.contains(section), "{page} has no {section}");
        }
        if page.ends_with("/splicecow.1") {
            for v in [
                "SPLICECOW_DOMAIN",
                "SPLICECOW_MODE",
                "SPLICECOW_REPORT",
                "SPLICECOW_LIB",
                "SPLICECOW_PRIVATE_SNAPSHOTS",
                "SPLICECOW_SNAPSHOT_TIMEOUT_MS",
                "SPLICECOW_TEST_PAUSE",
            ] {
                assert!(rendered.contains(v), "splicecow(1) lacks {v}");
            }
            assert!(rendered.contains("EXIT STATUS") && rendered.contains("EXAMPLES"));
        }
        if page.ends_with("libsplicecow.7") {
            for s in [
                "WHAT IS PROTECTED",
                "WHAT IS NOT PROTECTED",
                "MODES",
                "DOMAINS",
            ] {
                assert!(rendered.contains(s), "libsplicecow(7) has no {s}");
            }
        }
    }
}

/// What bash completes for the words `line` (the last one being completed).
fn bash_complete(script: &Path, line: &[&str]) -> String {
    let words: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}' || exit 9; complete -p splicecow >/dev/null || exit 8; \
         COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
         _splicecow splicecow '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.join(" "),
        line.len() - 1,
        line.join(" "),
        line[line.len() - 1],
        line[line.len().saturating_sub(2)],
    );
    ok(
        "bash completion",
        run(&mut clean(
            "bash",
            &["--norc", "--noprofile", "-c", &program],
        )),
    )
}

#[test]
fn completions_load_in_bash_and_complete_subcommands_and_options() {
    let scratch = Scratch::new("docstest", "completions");
    let script = scratch.0.join("splicecow.bash");
    let o = run(&mut clean(BIN, &["completions", "bash"]));
    std::fs::write(&script, ok("completions bash", o)).unwrap();
    let subcommands = bash_complete(&script, &["splicecow", ""]);
    for s in ["run", "stats", "doctor", "demo", "symbolize", "completions"] {
        assert!(
            subcommands.lines().any(|l| l == s),
            "{s} not offered: {subcommands}"
        );
    }
    assert!(
        !subcommands.contains("demo-case") && !subcommands.contains("generate-docs"),
        "hidden subcommands offered: {subcommands}"
    );
    assert_eq!(
        bash_complete(&script, &["splicecow", "sta"]).trim(),
        "stats"
    );
    assert_eq!(
        bash_complete(&script, &["splicecow", "stats", "--remove"]).trim(),
        "--remove-stale"
    );
    let shells = bash_complete(&script, &["splicecow", "completions", ""]);
    for s in ["bash", "zsh", "fish"] {
        assert!(shells.lines().any(|l| l == s), "{s} not offered: {shells}");
    }
    // zsh and fish: generated and, where the shell is installed, loaded.
    for (shell, check) in [
        (
            "zsh",
            "autoload -U compinit && compinit -u && source \"$0\"",
        ),
        ("fish", "source $argv[1]"),
    ] {
        let o = run(&mut clean(BIN, &["completions", shell]));
        let body = ok(shell, o);
        assert!(body.contains("splicecow"), "{shell}: {body}");
        let file = scratch.0.join(format!("completion.{shell}"));
        std::fs::write(&file, &body).unwrap();
        let file_s = file.to_str().unwrap();
        let args: Vec<&str> = if shell == "zsh" {
            vec!["-f", "-c", check, file_s]
        } else {
            vec!["--no-config", "-c", check, file_s]
        };
        match Command::new(shell)
            .args(&args)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => assert!(o.status.success(), "{shell}: {}", text(&o.stderr)),
            Err(_) => {
                eprintln!("{shell} is not installed: its completions are generated, not loaded")
            }
        }
    }
}
