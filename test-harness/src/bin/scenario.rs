//! `scenario`: reproduces one splice hazard and reports, as one JSON line, whether the
//! bytes an unshimmed consumer read from the pipe match what was spliced.
//!
//! Steps: write a 256 KiB pattern file, open it `O_RDWR`, move `--size` bytes of it into
//! a pipe with `--api`, apply `--mutation` (in this process or in a re-executed copy of
//! this binary, `--mutator other`), then start `cat` (no `LD_PRELOAD`, no `SPLICECOW_*`)
//! on the pipe's read end and compare what it printed with the original bytes.
//! The consumer starts only after the mutation, so it reads whatever the pipe holds then.
//!
//! Exit status: 0 whatever the comparison says (the caller judges), 2 on setup errors.
//! With `--do-mutation KIND --file PATH` it only applies one mutation (0 done,
//! 3 unsupported, 2 error); `--handshake` makes it prepare, print `ready`, and wait for a
//! line on stdin before mutating.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use clap::Parser;
use splicecow_test_harness::mutation::{apply, Applied, Edit, Target};
use splicecow_test_harness::sys::{check, os_err, Res};
use splicecow_test_harness::{
    compare, ensure_pipe_capacity, pattern, pipe, run_with_stdin, side_path, strip_shim_env,
    temp_path, value_name, write_pattern_file, Api, Mutation, Mutator, ScenarioReport,
    DEFAULT_SPLICE_LEN, FILE_LEN,
};

/// How long the consumer may take.
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    about = "Reproduce one splice hazard and report whether the consumer got the spliced bytes"
)]
struct Args {
    /// How bytes move from the file into the consumer's pipe.
    #[arg(long, value_enum, required_unless_present = "do_mutation")]
    api: Option<Api>,
    /// What changes the file after the splice.
    #[arg(long, value_enum, required_unless_present = "do_mutation")]
    mutation: Option<Mutation>,
    /// Which process applies the mutation.
    #[arg(long, value_enum, default_value = "same")]
    mutator: Mutator,
    /// The file to create and splice from (default: a fresh file under /var/tmp).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Bytes to splice (the mutations' ranges are sized by it too).
    #[arg(long, default_value_t = DEFAULT_SPLICE_LEN)]
    size: usize,
    /// Internal: only apply this mutation to --file and exit.
    #[arg(long, value_enum, hide = true)]
    do_mutation: Option<Mutation>,
    /// Internal: with --do-mutation, prepare, print "ready", wait for a stdin line.
    #[arg(long, hide = true, requires = "do_mutation")]
    handshake: bool,
}

fn open_rdwr(path: &Path) -> Res<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| format!("open {}: {e}", path.display()).into())
}

/// Moves up to `len` bytes with `step` (returns bytes moved, 0 at EOF) until done.
fn move_all(len: usize, what: &str, mut step: impl FnMut(usize) -> isize) -> Res<usize> {
    let mut moved = 0;
    while moved < len {
        let n = step(len - moved);
        if n < 0 {
            return Err(os_err(what));
        }
        if n == 0 {
            break;
        }
        moved += n as usize;
    }
    Ok(moved)
}

/// Splices `len` bytes of `file` into pipe `dst` (write end); returns the bytes moved.
fn splice_file(file: RawFd, dst: RawFd, len: usize) -> Res<usize> {
    // SAFETY: lseek on an open fd.
    check(unsafe { libc::lseek(file, 0, libc::SEEK_SET) }, "lseek")?;
    move_all(len, "splice", |n| {
        // SAFETY: valid fds, null offsets (use file position / pipe).
        unsafe { libc::splice(file, std::ptr::null_mut(), dst, std::ptr::null_mut(), n, 0) }
    })
}

/// Moves `len` bytes of `file` into the pipe whose write end is `dst` with `api`.
fn feed_pipe(api: Api, file: RawFd, dst: RawFd, len: usize) -> Res<usize> {
    let null = std::ptr::null_mut();
    match api {
        Api::Splice => splice_file(file, dst, len),
        Api::SpliceOffset => {
            let mut off: libc::loff_t = 0;
            move_all(len, "splice(off_in)", |n| {
                // SAFETY: valid fds; off is a live loff_t the kernel advances.
                unsafe { libc::splice(file, &mut off, dst, null, n, 0) }
            })
        }
        Api::Sendfile => {
            let mut off: libc::off_t = 0;
            move_all(len, "sendfile", |n| {
                // SAFETY: valid fds; off is a live off_t the kernel advances.
                unsafe { libc::sendfile(dst, file, &mut off, n) }
            })
        }
        Api::Sendfile64 => {
            // SAFETY: lseek on an open fd.
            check(unsafe { libc::lseek(file, 0, libc::SEEK_SET) }, "lseek")?;
            move_all(len, "sendfile64", |n| {
                // SAFETY: valid fds; a null offset uses (and advances) the file position.
                unsafe { libc::sendfile64(dst, file, null, n) }
            })
        }
        Api::Tee | Api::SplicePipe => {
            let (ar, aw) = pipe().map_err(|e| format!("pipe: {e}"))?;
            ensure_pipe_capacity(&aw, len).map_err(|e| format!("F_SETPIPE_SZ: {e}"))?;
            let got = splice_file(file, aw.as_raw_fd(), len)?;
            let (a, what) = (
                ar.as_raw_fd(),
                if api == Api::Tee {
                    "tee"
                } else {
                    "splice pipe"
                },
            );
            let moved = move_all(got, what, |n| {
                // SAFETY: a and dst are open pipe ends; null offsets as pipes require.
                unsafe {
                    if api == Api::Tee {
                        libc::tee(a, dst, n, 0)
                    } else {
                        libc::splice(a, null, dst, null, n, 0)
                    }
                }
            })?;
            if api == Api::Tee {
                // Drain A: only the teed copy in P keeps the page references now.
                drop(aw);
                let mut sink = Vec::new();
                std::fs::File::from(ar)
                    .read_to_end(&mut sink)
                    .map_err(|e| format!("drain tee source: {e}"))?;
            }
            Ok(moved)
        }
    }
}

/// A mutator process started before the splice (`--do-mutation ... --handshake`).
struct OtherMutator {
    child: std::process::Child,
}

impl OtherMutator {
    /// Starts this binary as a mutator (same environment) and waits until it is ready.
    fn start(kind: Mutation, path: &Path, size: usize) -> Res<OtherMutator> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .arg("--do-mutation")
            .arg(value_name(&kind))
            .arg("--file")
            .arg(path)
            .arg("--size")
            .arg(size.to_string())
            .arg("--handshake")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn mutator: {e}"))?;
        let mut line = String::new();
        let out = child.stdout.as_mut().ok_or("mutator stdout")?;
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| format!("mutator handshake: {e}"))?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("mutator did not get ready (said {line:?})").into());
        }
        Ok(OtherMutator { child })
    }

    /// Tells the mutator to go and waits for it.
    fn run(mut self) -> Res<Applied> {
        let mut stdin = self.child.stdin.take().ok_or("mutator stdin")?;
        stdin
            .write_all(b"go\n")
            .map_err(|e| format!("mutator go: {e}"))?;
        drop(stdin);
        let status = self
            .child
            .wait()
            .map_err(|e| format!("wait mutator: {e}"))?;
        match status.code() {
            Some(0) => Ok(Applied::Done(0)),
            Some(3) => Ok(Applied::Unsupported),
            _ => Err(format!("mutator failed: {status}").into()),
        }
    }
}

/// `--do-mutation`: apply one mutation (optionally after a handshake) and exit.
fn do_mutation(kind: Mutation, path: &Path, size: usize, handshake: bool) -> Res<Applied> {
    let mut target = Target::new(path, None)?.prepare(kind, path)?;
    if handshake {
        let mut out = io::stdout().lock();
        writeln!(out, "ready")
            .and_then(|_| out.flush())
            .map_err(|e| format!("handshake: {e}"))?;
        let mut line = String::new();
        io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    apply(&mut target, &Edit::standard(kind, size))
}

/// Reads the pipe's content with an unshimmed `cat` (it starts only now).
fn consume(read_end: OwnedFd) -> Res<Vec<u8>> {
    let mut cmd = Command::new("cat");
    strip_shim_env(&mut cmd);
    let out = run_with_stdin(&mut cmd, Stdio::from(read_end), CONSUMER_TIMEOUT)
        .map_err(|e| format!("spawn cat: {e}"))?;
    match out.status {
        Some(s) if s.success() => Ok(out.stdout),
        _ => Err(format!("consumer cat failed: {}", out.describe()).into()),
    }
}

/// The scenario proper.
fn run_scenario(
    api: Api,
    mutation: Mutation,
    mutator: Mutator,
    path: &Path,
    size: usize,
) -> Res<ScenarioReport> {
    write_pattern_file(path, FILE_LEN.max(size))
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    let file = open_rdwr(path)?;
    let (pr, pw) = pipe().map_err(|e| format!("pipe: {e}"))?;
    ensure_pipe_capacity(&pw, size).map_err(|e| format!("F_SETPIPE_SZ: {e}"))?;

    enum Pending {
        Same(Target),
        Other(OtherMutator),
    }
    let pending = match mutator {
        Mutator::Same => {
            Pending::Same(Target::new(path, Some(file.as_raw_fd()))?.prepare(mutation, path)?)
        }
        Mutator::Other => Pending::Other(OtherMutator::start(mutation, path, size)?),
    };

    let spliced = feed_pipe(api, file.as_raw_fd(), pw.as_raw_fd(), size)?;
    let applied = match pending {
        Pending::Same(mut t) => apply(&mut t, &Edit::standard(mutation, size))?,
        Pending::Other(m) => m.run()?,
    };
    drop(pw);
    let got = consume(pr)?;
    drop(file);
    let _ = std::fs::remove_file(side_path(path));

    let cmp = compare(&pattern(spliced), &got);
    Ok(ScenarioReport {
        api: value_name(&api),
        mutation: value_name(&mutation),
        mutator: value_name(&mutator),
        spliced,
        received: got.len(),
        mismatched_bytes: cmp.mismatched_bytes,
        first_mismatch: cmp.first_mismatch,
        unsupported: applied == Applied::Unsupported,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(kind) = args.do_mutation {
        let Some(path) = args.file else {
            eprintln!("scenario: --do-mutation needs --file");
            return ExitCode::from(2);
        };
        return match do_mutation(kind, &path, args.size, args.handshake) {
            Ok(Applied::Done(_)) => ExitCode::SUCCESS,
            Ok(Applied::Unsupported) => ExitCode::from(3),
            Err(e) => {
                eprintln!("scenario --do-mutation: {e}");
                ExitCode::from(2)
            }
        };
    }
    let (Some(api), Some(mutation)) = (args.api, args.mutation) else {
        eprintln!("scenario: --api and --mutation are required");
        return ExitCode::from(2);
    };
    let (path, remove) = match args.file {
        Some(p) => (p, false),
        None => (temp_path("scenario"), true),
    };
    let result = run_scenario(api, mutation, args.mutator, &path, args.size);
    if remove {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(side_path(&path));
    }
    match result {
        Ok(report) => match serde_json::to_string(&report) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("scenario: {e}");
                ExitCode::from(2)
            }
        },
        Err(e) => {
            eprintln!("scenario: {e}");
            ExitCode::from(2)
        }
    }
}
