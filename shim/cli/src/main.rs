//! `splicecow`: run programs with `libsplicecow.so` preloaded, inspect a domain's
//! registry, check a machine and a program, and demonstrate the splice hazard.
//!
//! Subcommands live in their own modules: [`run`], [`stats`] (and [`domains`] for
//! `stats --all`), [`doctor`], [`demo`], [`symbolize`]; [`generate`] writes the man pages and shell
//! completions from the definitions here and the texts in [`manual`]; [`location`] finds
//! the library. This file holds the command-line definition and what they share.

mod demo;
mod doctor;
mod domains;
mod generate;
mod location;
mod manual;
mod run;
mod stats;
mod strict;
mod symbolize;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

/// Exit status of `run --fail-on-conflict` when CMD succeeded but conflicts were seen
/// (sysexits' EX_DATAERR).
pub const EXIT_CONFLICTS: i32 = 66;

/// The one-line summaries of the commands (the man pages' NAME lines).
const ABOUT: &str =
    "Make splice(2) from files safe: bytes in a pipe stay as they were when spliced";
const RUN_ABOUT: &str = "Run a command (and everything it starts) with splicecow in a fresh domain";
const STATS_ABOUT: &str = "Print the counters of a domain's registry, or of every domain";
const DOCTOR_ABOUT: &str = "Check that this machine, and optionally a program, can be protected";
const DEMO_ABOUT: &str = "Show the splice hazard side by side, without and with splicecow";
const SYMBOLIZE_ABOUT: &str =
    "Resolve the call stacks of a detect-mode report, print it like a sanitizer, write SARIF";
const COMPLETIONS_ABOUT: &str = "Print a shell completion script (bash, zsh, fish, ...)";

/// Command-line interface of `splicecow`.
#[derive(Parser)]
#[command(
    name = "splicecow",
    version,
    about = ABOUT,
    long_about = manual::TOP.long_about(ABOUT),
    after_help = manual::TOP.after_help()
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(
        about = RUN_ABOUT,
        long_about = manual::RUN.long_about(RUN_ABOUT),
        after_help = manual::RUN.after_help()
    )]
    Run(RunArgs),
    #[command(
        about = STATS_ABOUT,
        long_about = manual::STATS.long_about(STATS_ABOUT),
        after_help = manual::STATS.after_help()
    )]
    Stats(StatsArgs),
    #[command(
        about = DOCTOR_ABOUT,
        long_about = manual::DOCTOR.long_about(DOCTOR_ABOUT),
        after_help = manual::DOCTOR.after_help()
    )]
    Doctor(DoctorArgs),
    #[command(
        about = DEMO_ABOUT,
        long_about = manual::DEMO.long_about(DEMO_ABOUT),
        after_help = manual::DEMO.after_help()
    )]
    Demo,
    #[command(
        about = SYMBOLIZE_ABOUT,
        long_about = manual::SYMBOLIZE.long_about(SYMBOLIZE_ABOUT),
        after_help = manual::SYMBOLIZE.after_help()
    )]
    Symbolize(SymbolizeArgs),
    #[command(
        about = COMPLETIONS_ABOUT,
        long_about = manual::COMPLETIONS.long_about(COMPLETIONS_ABOUT),
        after_help = manual::COMPLETIONS.after_help()
    )]
    Completions {
        /// The shell to print the script for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run one reproducer case in this process and print one JSON line (used by `demo`).
    #[command(hide = true)]
    DemoCase {
        /// The case to run.
        case: demo::Case,
    },
    /// Write the man pages and shell completions (used by scripts/install and the
    /// Debian package build).
    #[command(hide = true)]
    GenerateDocs(generate::GenerateArgs),
}

pub use splicecow_registry::env::Mode;

/// `--mode`'s values: the library's modes, each with its summary for `--help` and the
/// manual.
fn mode_parser() -> impl TypedValueParser<Value = Mode> {
    let values = Mode::ALL.map(|m| clap::builder::PossibleValue::new(m.name()).help(m.summary()));
    clap::builder::PossibleValuesParser::new(values)
        .try_map(|name: String| Mode::parse(&name).ok_or("not a mode"))
}

/// Arguments of `splicecow run`.
#[derive(Args)]
pub struct RunArgs {
    /// What the library does in CMD's processes.
    #[arg(long, value_parser = mode_parser(), default_value = "protect")]
    pub mode: Mode,
    /// Join (or create) this domain instead of a fresh `run-<pid>-<nanos>` one.
    #[arg(long, value_name = "NAME", value_parser = parse_domain)]
    pub domain: Option<String>,
    /// Print the registry's counters to stderr when CMD's processes are gone.
    #[arg(long)]
    pub stats: bool,
    /// Append detect-mode conflict reports (JSON lines) to PATH, symbolized at exit
    /// (SARIF 2.1.0 when PATH ends in .sarif).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Exit with status 66 when conflicts were seen (meant for --mode detect).
    #[arg(long)]
    pub fail_on_conflict: bool,
    /// Make MAP_PRIVATE file mappings true snapshots (SPLICECOW_PRIVATE_SNAPSHOTS=1).
    #[arg(long)]
    pub private_snapshots: bool,
    /// Pipe records of the registry if this run creates it (files: twice as many;
    /// default $SPLICECOW_REGISTRY_PIPES, else 2048).
    #[arg(long, value_name = "N", value_parser = parse_registry_pipes)]
    pub registry_pipes: Option<u32>,
    /// Run statically linked and Go programs of the domain (CMD, and those its
    /// descendants exec) under a seccomp filter whose notifications splicecow answers, so
    /// that the calls the preload cannot see are protected too (sets no_new_privs for
    /// them: setuid programs are left out). Same as SPLICECOW_STRICT=1.
    #[arg(long)]
    pub strict: bool,
    /// The command to run and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// Arguments of `splicecow stats`.
#[derive(Args)]
pub struct StatsArgs {
    /// The domain to inspect (default: $SPLICECOW_DOMAIN, else "default").
    #[arg(long, value_name = "NAME", value_parser = parse_domain)]
    pub domain: Option<String>,
    /// Print one JSON object instead of `name: value` lines (--all: one per domain).
    #[arg(long)]
    pub json: bool,
    /// Print again every SECS seconds (default 1) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
    pub watch: Option<f64>,
    /// List every domain of this user: main counters, processes using it, state.
    #[arg(long, conflicts_with_all = ["domain", "watch"])]
    pub all: bool,
    /// With --all: remove the registries of stale domains (see below).
    #[arg(long, requires = "all")]
    pub remove_stale: bool,
}

/// Arguments of `splicecow symbolize`.
#[derive(Args)]
pub struct SymbolizeArgs {
    /// The detect-mode report (JSON lines, as the library or `splicecow run` wrote it).
    pub report: PathBuf,
    /// Write the symbolized report to PATH (SARIF 2.1.0 when it ends in .sarif) instead
    /// of printing JSON lines on stdout.
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// Arguments of `splicecow doctor`.
#[derive(Args)]
pub struct DoctorArgs {
    /// A program to check (a path, or a name looked up in PATH).
    pub program: Option<OsString>,
}

fn parse_domain(s: &str) -> Result<String, String> {
    if splicecow_registry::valid_domain(s) {
        Ok(s.to_string())
    } else {
        Err("a domain is 1-64 characters of A-Z a-z 0-9 . _ - and does not start with '.'".into())
    }
}

fn parse_registry_pipes(s: &str) -> Result<u32, String> {
    splicecow_registry::Capacity::parse_pipes(s)
}

/// Where `libsplicecow.so` is: `$SPLICECOW_LIB` if set (made absolute), else found by
/// this executable's location ([`location::find`]: beside it in the build tree, or under
/// the prefix it is installed in).
pub fn library_path() -> PathBuf {
    location::find().path
}

fn main() {
    // The filtered-exec entry is not a subcommand: its arguments are another program's,
    // passed on untouched (the library's exec hooks exec it, never a user).
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == strict::FILTERED_EXEC) {
        std::process::exit(strict::filtered_exec(args.collect()));
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Stats(args) if args.all => domains::main(args),
        Command::Stats(args) => stats::main(args),
        Command::Doctor(args) => doctor::main(args),
        Command::Demo => demo::main(),
        Command::Symbolize(args) => symbolize::main(args),
        Command::Completions { shell } => generate::completions_main(shell),
        Command::DemoCase { case } => demo::case_main(case),
        Command::GenerateDocs(args) => generate::main(args),
    };
    std::process::exit(code);
}
