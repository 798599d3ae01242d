//! `splicecow`: run programs with `libsplicecow.so` preloaded, inspect a domain's
//! registry, check a machine and a program, and demonstrate the splice hazard.
//!
//! Subcommands live in their own modules: [`run`], [`stats`] (and [`domains`] for
//! `stats --all`), [`doctor`], [`demo`];
//! [`location`] finds the library. This file holds the command-line definition and what
//! they share.

mod demo;
mod doctor;
mod domains;
mod location;
mod run;
mod stats;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;

/// Exit status of `run --fail-on-conflict` when CMD succeeded but conflicts were seen
/// (sysexits' EX_DATAERR).
pub const EXIT_CONFLICTS: i32 = 66;

/// Command-line interface of `splicecow`.
#[derive(Parser)]
#[command(
    name = "splicecow",
    version,
    about = "Make splice(2) from files safe: bytes in a pipe stay as they were when spliced",
    after_help = "Example:\n  splicecow run -- pv /var/log/big.log | gzip > big.gz\n  splicecow demo\n\n\
Exit status: that of the subcommand (see `splicecow help SUBCOMMAND`); 2 for a usage error."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command (and everything it starts) with splicecow in a fresh domain.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Print the counters of a domain's registry, or of every domain.
    #[command(after_help = STATS_HELP)]
    Stats(StatsArgs),
    /// Check that this machine, and optionally a program, can be protected.
    #[command(after_help = DOCTOR_HELP)]
    Doctor(DoctorArgs),
    /// Show the splice hazard side by side, without and with splicecow.
    #[command(after_help = DEMO_HELP)]
    Demo,
    /// Run one reproducer case in this process and print one JSON line (used by `demo`).
    #[command(hide = true)]
    DemoCase {
        /// The case to run.
        case: demo::Case,
    },
}

const RUN_HELP: &str = "\
Examples:
  splicecow run -- pv access.log | nc collector 9000
  splicecow run --mode detect --fail-on-conflict -- python3 -m pytest
  splicecow run --stats --domain backup -- tar -cf - /srv | zstd > srv.tar.zst

CMD runs with LD_PRELOAD extended by libsplicecow.so (found beside this binary, under
the prefix it is installed in, or at $SPLICECOW_LIB) and SPLICECOW_DOMAIN, SPLICECOW_MODE (and SPLICECOW_REPORT) set.
The domain's registry is created before CMD starts and removed once the last
process started from CMD is gone (splicecow waits for orphaned descendants too),
unless --domain named a registry that already existed. SIGINT, SIGTERM and SIGHUP
are forwarded to CMD (a terminal's signals reach CMD directly and are not sent twice).
A signal that arrives after CMD has exited makes splicecow wait 1 s more for the
remaining descendants, then exit and leave the registry to them.
In detect mode without --report, conflict reports are collected in a temporary file
and copied to stderr at exit. --fail-on-conflict fails the run when the report file
has a line or the registry's `conflicts` counter is non-zero (it counts every
mutating call that hit an in-flight segment, and protect mode increments it too, for
conflicts it settled); the summary counts report lines (one per conflict) when there
are any, else that counter.

Exit status:
  CMD's exit status, or 128+N when CMD was killed by signal N
  66   with --fail-on-conflict: CMD exited 0 but splice/mutation conflicts were seen
       (a failing CMD's own status wins)
  126  CMD could not be executed (e.g. permission denied)
  127  CMD was not found
  2    usage error";

const STATS_HELP: &str = "\
Examples:
  splicecow stats                       # the default domain (or $SPLICECOW_DOMAIN)
  splicecow stats --domain backup --json
  splicecow stats --watch 2
  splicecow stats --all --remove-stale  # every domain; remove the registries of dead runs

The domain is --domain, else $SPLICECOW_DOMAIN, else \"default\".

With --all: every registry of this user in /dev/shm with its main counters, how many
processes map it now (/proc/*/maps) and its state: in use; idle (a named domain nobody
uses now, kept); stale (nobody uses it and nobody will: a splicecow run or demo that is
over, a corrupt registry or one of another layout version; unchanged for a minute);
refused (not a regular 0600 file of this user). --remove-stale removes the stale ones.

Exit status:
  0  the counters were printed (--all: also when there is no registry)
  1  no registry exists for the domain (nothing has run in it) or it cannot be read;
     --all: /dev/shm cannot be read or a stale registry could not be removed
  2  usage error";

const DOCTOR_HELP: &str = "\
Examples:
  splicecow doctor
  splicecow doctor pv

Each check prints one line starting with ✓ or ✗ and the reason. The library line
says which library `run` would preload and how it was found: named by $SPLICECOW_LIB,
beside this binary in the build tree, or under the prefix it is installed in.
With PROGRAM (a path, or a name looked up in PATH) it also checks whether splicecow can see that
program's calls: dynamically linked, not setuid/setgid, not Go, no io_uring.

Exit status:
  0  every check passed
  1  at least one check failed
  2  usage error";

const DEMO_HELP: &str = "\
Example:
  splicecow demo

Each case writes a file, splices 64 KiB of it into a pipe, changes the file (in the
same or in another process) and then reads the pipe back. Every case runs once
without splicecow and once with it preloaded in a fresh domain.

Exit status:
  0  every protected run read back exactly the bytes that were spliced
  1  some protected run was corrupted (or failed)
  2  libsplicecow.so was not found";

/// What the preload library does, as `SPLICECOW_MODE` tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Settle pipes before a conflicting mutation (copy on conflict).
    Protect,
    /// Do not settle; report each conflict as a JSON line.
    Detect,
    /// Never put page-cache pages in a pipe: always copy.
    Copy,
    /// Load but do nothing.
    Off,
}

impl Mode {
    /// The value of `SPLICECOW_MODE` for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Protect => "protect",
            Mode::Detect => "detect",
            Mode::Copy => "copy",
            Mode::Off => "off",
        }
    }
}

/// Arguments of `splicecow run`.
#[derive(Args)]
pub struct RunArgs {
    /// What the library does in CMD's processes.
    #[arg(long, value_enum, default_value_t = Mode::Protect)]
    pub mode: Mode,
    /// Join (or create) this domain instead of a fresh `run-<pid>-<nanos>` one.
    #[arg(long, value_name = "NAME", value_parser = parse_domain)]
    pub domain: Option<String>,
    /// Print the registry's counters to stderr when CMD's processes are gone.
    #[arg(long)]
    pub stats: bool,
    /// Append detect-mode conflict reports (JSON lines) to PATH.
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Exit with status 66 when conflicts were seen (meant for --mode detect).
    #[arg(long)]
    pub fail_on_conflict: bool,
    /// Make MAP_PRIVATE file mappings true snapshots (SPLICECOW_PRIVATE_SNAPSHOTS=1).
    #[arg(long)]
    pub private_snapshots: bool,
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

/// Where `libsplicecow.so` is: `$SPLICECOW_LIB` if set (made absolute), else found by
/// this executable's location ([`location::find`]: beside it in the build tree, or under
/// the prefix it is installed in).
pub fn library_path() -> PathBuf {
    location::find().path
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Stats(args) if args.all => domains::main(args),
        Command::Stats(args) => stats::main(args),
        Command::Doctor(args) => doctor::main(args),
        Command::Demo => demo::main(),
        Command::DemoCase { case } => demo::case_main(case),
    };
    std::process::exit(code);
}
