//! Man pages and shell completions, generated from the CLI's own clap definition and the
//! texts in [`crate::manual`]: `splicecow completions SHELL` for users, and the hidden
//! `splicecow generate-docs --out-dir DIR` that `scripts/install` and `scripts/deb` run
//! on the freshly built binary (nothing generated is committed).
//!
//! `generate-docs` writes:
//!
//! ```text
//! DIR/man1/splicecow.1  DIR/man1/splicecow-SUBCOMMAND.1 (one per visible subcommand)
//! DIR/man7/libsplicecow.7
//! DIR/completions/splicecow.bash  DIR/completions/_splicecow  DIR/completions/splicecow.fish
//! ```

use crate::location::{multiarch_triplet, LIBRARY_NAME};
use crate::manual::{self, Page};
use crate::Cli;
use clap::{Args, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;
use roff::Roff;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Arguments of `splicecow generate-docs`.
#[derive(Args)]
pub struct GenerateArgs {
    /// Directory to write `man1/`, `man7/` and `completions/` into (created if needed).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// The library's installed path, as the pages name it (default: the Debian layout).
    #[arg(long, value_name = "PATH")]
    pub library: Option<String>,
}

/// The version every page names.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The library's path in the Debian package.
fn debian_library_path() -> String {
    format!("/usr/lib/{}/splicecow/{LIBRARY_NAME}", multiarch_triplet())
}

/// The texts for a visible subcommand, by name.
fn page_of(name: &str) -> Option<&'static Page> {
    Some(match name {
        "run" => &manual::RUN,
        "stats" => &manual::STATS,
        "doctor" => &manual::DOCTOR,
        "demo" => &manual::DEMO,
        "symbolize" => &manual::SYMBOLIZE,
        "completions" => &manual::COMPLETIONS,
        _ => return None,
    })
}

/// The CLI's definition, built (subcommands know their display and bin names), without
/// clap's `help` subcommand.
fn built_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The visible subcommands, in definition order.
fn visible_subcommands(cmd: &clap::Command) -> Vec<clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect()
}

/// One command's man page: clap_mangen's NAME, SYNOPSIS, DESCRIPTION, OPTIONS (and
/// SUBCOMMANDS), then ENVIRONMENT, EXIT STATUS, EXAMPLES, FILES, SEE ALSO, VERSION.
fn command_page(
    cmd: &clap::Command,
    page: &Page,
    see_also: &[String],
    files: Option<&str>,
) -> std::io::Result<Vec<u8>> {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let man = Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section("1")
        .source(format!("splicecow {VERSION}"))
        .manual("splicecow manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    out.extend_from_slice(manual::LAYOUT_REQUESTS.as_bytes());
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    let mut extra = Roff::new();
    manual::page_sections(&mut extra, page);
    if let Some(library) = files {
        manual::files_section(&mut extra, library);
    }
    let refs: Vec<&str> = see_also.iter().map(String::as_str).collect();
    manual::see_also(&mut extra, &refs);
    extra.control("SH", ["VERSION"]);
    extra.text([roff::roman(format!("splicecow {VERSION}"))]);
    // Roff::to_roff leaves out the preamble render_title already wrote.
    out.extend_from_slice(manual::finish(extra.to_roff()).as_bytes());
    Ok(out)
}

/// Every man page: (relative path, contents).
pub fn man_pages(library: &str) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let cmd = built_command();
    let subs = visible_subcommands(&cmd);
    let sub_refs: Vec<String> = subs
        .iter()
        .map(|s| format!("splicecow-{}(1)", s.get_name()))
        .collect();
    let mut pages = Vec::new();

    let mut top_refs = sub_refs.clone();
    top_refs.extend(
        ["libsplicecow(7)", "splice(2)", "sendfile(2)", "tee(2)"]
            .iter()
            .map(|s| s.to_string()),
    );
    pages.push((
        PathBuf::from("man1/splicecow.1"),
        command_page(&cmd, &manual::TOP, &top_refs, Some(library))?,
    ));
    for sub in &subs {
        let Some(page) = page_of(sub.get_name()) else {
            return Err(std::io::Error::other(format!(
                "no manual text for subcommand {}",
                sub.get_name()
            )));
        };
        let mut refs = vec!["splicecow(1)".to_string()];
        refs.extend(
            sub_refs
                .iter()
                .filter(|r| **r != format!("splicecow-{}(1)", sub.get_name()))
                .cloned(),
        );
        refs.push("libsplicecow(7)".to_string());
        pages.push((
            PathBuf::from(format!("man1/splicecow-{}.1", sub.get_name())),
            command_page(sub, page, &refs, None)?,
        ));
    }
    pages.push((
        PathBuf::from("man7/libsplicecow.7"),
        manual::library_page(VERSION, library).into_bytes(),
    ));
    Ok(pages)
}

/// The CLI's definition without its hidden subcommands (clap_complete would offer them).
fn completion_command() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("splicecow")
        .version(VERSION)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// The completion script for `shell`.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = completion_command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "splicecow", &mut out);
    out
}

/// The file name each shell's completion script is installed under (bash: renamed to
/// `splicecow` when installed).
fn completion_file(shell: Shell) -> &'static str {
    match shell {
        Shell::Bash => "splicecow.bash",
        Shell::Zsh => "_splicecow",
        Shell::Fish => "splicecow.fish",
        Shell::Elvish => "splicecow.elv",
        _ => "splicecow.ps1",
    }
}

fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, data)
}

/// Writes every man page and the bash, zsh and fish completions below `out`; returns
/// the paths written.
pub fn write_all(out: &Path, library: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (rel, data) in man_pages(library)? {
        let path = out.join(rel);
        write_file(&path, &data)?;
        written.push(path);
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = out.join("completions").join(completion_file(shell));
        write_file(&path, &completion_script(shell))?;
        written.push(path);
    }
    Ok(written)
}

/// Runs `splicecow generate-docs`; returns the exit status.
pub fn main(args: GenerateArgs) -> i32 {
    let library = args.library.unwrap_or_else(debian_library_path);
    match write_all(&args.out_dir, &library) {
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
            0
        }
        Err(e) => {
            eprintln!(
                "splicecow: cannot write the man pages and completions into {}: {e}",
                args.out_dir.display()
            );
            1
        }
    }
}

/// Runs `splicecow completions SHELL`; returns the exit status.
pub fn completions_main(shell: Shell) -> i32 {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(&completion_script(shell))
        .and_then(|()| stdout.flush())
    {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("splicecow: cannot write the completion script: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_subcommand_has_a_page_with_the_usual_sections() {
        let pages = man_pages("/usr/lib/x/libsplicecow.so").unwrap();
        let names: Vec<String> = pages.iter().map(|(p, _)| p.display().to_string()).collect();
        for want in [
            "man1/splicecow.1",
            "man1/splicecow-run.1",
            "man1/splicecow-stats.1",
            "man1/splicecow-doctor.1",
            "man1/splicecow-demo.1",
            "man1/splicecow-symbolize.1",
            "man1/splicecow-completions.1",
            "man7/libsplicecow.7",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(!names
            .iter()
            .any(|n| n.contains("demo-case") || n.contains("generate")));
        for (path, data) in &pages {
            let text = String::from_utf8(data.clone()).unwrap();
            for section in [
                ".SH NAME",
                ".SH SYNOPSIS",
                ".SH DESCRIPTION",
                "\"SEE ALSO\"",
            ] {
                assert!(text.contains(section), "{}: {section}", path.display());
            }
            if path.starts_with("man1") {
                for section in [".SH \"EXIT STATUS\"", ".SH EXAMPLES", ".SH OPTIONS"] {
                    assert!(text.contains(section), "{}: {section}", path.display());
                }
            }
        }
        let top = String::from_utf8(pages[0].1.clone()).unwrap();
        for v in manual::ENVIRONMENT {
            assert!(top.contains(v.name), "splicecow(1) lacks {}", v.name);
        }
        // The path is there, with line break points after its slashes.
        assert!(
            top.contains("/\\:usr/\\:lib/\\:x/\\:libsplicecow.so"),
            "{top}"
        );
    }

    #[test]
    fn completions_name_the_subcommands_but_not_the_hidden_ones() {
        let bash = String::from_utf8(completion_script(Shell::Bash)).unwrap();
        assert!(bash.contains("stats") && bash.contains("completions"));
        assert!(bash.contains("--remove-stale"));
        assert!(
            !bash.contains("generate-docs"),
            "hidden subcommand completed"
        );
    }
}
