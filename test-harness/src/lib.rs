//! Shared helpers for splicecow's differential scenario tests.
//!
//! The `scenario` binary and the integration tests under `tests/` use this module for
//! everything they have in common: the position-dependent file content, temporary
//! files and domains, spawning commands with or without the shim preloaded, pipes, and
//! comparing what a consumer read with what was spliced.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use splicecow_registry::env as names;

pub mod mutation;
pub mod rng;
pub mod sys;

pub use mutation::{Family, Mutation, Mutator};

/// Size of the file every scenario splices from: 256 KiB.
pub const FILE_LEN: usize = 256 * 1024;

/// Default number of bytes a scenario splices: one default-sized pipe (64 KiB).
pub const DEFAULT_SPLICE_LEN: usize = 64 * 1024;

pub use splicecow_registry::pattern::{pattern, pattern_byte};

/// Creates (or replaces) `path` holding the first `len` bytes of the pattern.
///
/// The file is written with plain `write`s so that its pages sit in the page cache, as
/// they do for a file a program has just produced.
pub fn write_pattern_file(path: &Path, len: usize) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(&pattern(len))?;
    f.flush()
}

/// A unique path under `/var/tmp` (a real disk file system, unlike a `tmpfs` `/tmp`).
pub fn temp_path(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    PathBuf::from(format!(
        "/var/tmp/splicecow-{tag}-{}-{n}-{nanos}",
        std::process::id()
    ))
}

/// A file removed (with its `.src` companion, see [`side_path`]) when dropped.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// A fresh pattern file of `len` bytes under `/var/tmp`.
    pub fn with_pattern(tag: &str, len: usize) -> io::Result<TempFile> {
        let path = temp_path(tag);
        write_pattern_file(&path, len)?;
        Ok(TempFile { path })
    }

    /// Takes ownership of an existing path: it is removed on drop.
    pub fn adopt(path: PathBuf) -> TempFile {
        TempFile { path }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(side_path(&self.path));
    }
}

/// The companion file next to `path` that "copy into the file" mutations copy from.
pub fn side_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".src");
    PathBuf::from(s)
}

/// Outcome of comparing what a consumer read with what it should have read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    /// Positions that differ, counting every missing or extra byte as one.
    pub mismatched_bytes: usize,
    /// First differing position, if any.
    pub first_mismatch: Option<usize>,
}

/// Compares `got` with `expected` byte by byte.
pub fn compare(expected: &[u8], got: &[u8]) -> Comparison {
    let common = expected.len().min(got.len());
    let mut mismatched = 0;
    let mut first = None;
    for (i, (a, b)) in expected[..common].iter().zip(&got[..common]).enumerate() {
        if a != b {
            mismatched += 1;
            first.get_or_insert(i);
        }
    }
    if expected.len() != got.len() {
        mismatched += expected.len().abs_diff(got.len());
        first.get_or_insert(common);
    }
    Comparison {
        mismatched_bytes: mismatched,
        first_mismatch: first,
    }
}

/// The JSON line the `scenario` binary prints on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// Splice API used (`splice`, `sendfile`, `tee`, ...).
    pub api: String,
    /// Mutation kind applied after the splice.
    pub mutation: String,
    /// `same` or `other`: which process applied the mutation.
    pub mutator: String,
    /// Bytes the splice API moved into the pipe.
    pub spliced: usize,
    /// Bytes the unshimmed consumer read from the pipe.
    pub received: usize,
    /// Bytes that differ from the original file content (see [`compare`]).
    pub mismatched_bytes: usize,
    /// First differing offset, if any.
    pub first_mismatch: Option<usize>,
    /// The mutation is not supported here (e.g. `FICLONE` on ext4): nothing was tested.
    pub unsupported: bool,
}

impl ScenarioReport {
    /// True when the consumer got exactly the spliced bytes as the file held them.
    pub fn exact(&self) -> bool {
        self.mismatched_bytes == 0 && self.received == self.spliced
    }
}

/// Whether a command runs with the shim preloaded.
#[derive(Debug, Clone)]
pub enum Protection {
    /// No `LD_PRELOAD`, no `SPLICECOW_*` variables.
    Unprotected,
    /// `LD_PRELOAD=lib` and `SPLICECOW_DOMAIN=domain`; other `SPLICECOW_*` removed.
    Protected {
        /// Path of `libsplicecow.so`.
        lib: PathBuf,
        /// Domain name (see [`TempDomain`]).
        domain: String,
    },
}

impl Protection {
    /// `"unprotected"` or `"protected"`.
    pub fn label(&self) -> &'static str {
        match self {
            Protection::Unprotected => "unprotected",
            Protection::Protected { .. } => "protected",
        }
    }

    /// Sets `cmd`'s environment for this protection: the inherited `LD_PRELOAD` and
    /// `SPLICECOW_*` variables are always removed first.
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        strip_shim_env(cmd);
        if let Protection::Protected { lib, domain } = self {
            cmd.env("LD_PRELOAD", lib).env(names::DOMAIN, domain);
        }
        cmd
    }
}

/// Removes `LD_PRELOAD` and every `SPLICECOW_*` variable from `cmd`'s environment.
pub fn strip_shim_env(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("LD_PRELOAD");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(names::PREFIX) {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// A unique splicecow domain whose registry is removed from `/dev/shm` on drop.
#[derive(Debug)]
pub struct TempDomain {
    name: String,
}

impl TempDomain {
    /// A fresh domain named `test-<pid>-<n>`.
    pub fn new() -> TempDomain {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        TempDomain {
            name: format!("test-{}-{n}", std::process::id()),
        }
    }

    /// The domain's name (the value of `SPLICECOW_DOMAIN`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the domain's registry: `/dev/shm/splicecow-<uid>-<domain>`.
    pub fn shm_path(&self) -> PathBuf {
        registry_file(&self.name)
    }

    /// A [`Protection::Protected`] for this domain with library `lib`.
    pub fn protection(&self, lib: &Path) -> Protection {
        Protection::Protected {
            lib: lib.to_path_buf(),
            domain: self.name.clone(),
        }
    }
}

impl Default for TempDomain {
    fn default() -> Self {
        TempDomain::new()
    }
}

impl Drop for TempDomain {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.shm_path());
    }
}

/// The workspace's `target` directory (`CARGO_TARGET_DIR` if set at run time).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// Locates `libsplicecow.so`: `$SPLICECOW_LIB`, else `target/release`, else
/// `target/debug`. The error says how to build it.
pub fn library_path() -> Result<PathBuf, String> {
    if let Some(lib) = std::env::var_os(names::LIB) {
        let lib = PathBuf::from(lib);
        return if lib.is_file() {
            Ok(lib)
        } else {
            Err(format!("{}={} does not exist", names::LIB, lib.display()))
        };
    }
    let target = target_dir();
    for profile in ["release", "debug"] {
        let lib = target.join(profile).join("libsplicecow.so");
        if lib.is_file() {
            return lib.canonicalize().map_err(|e| e.to_string());
        }
    }
    Err(format!(
        "libsplicecow.so not found under {}/{{release,debug}}: run `cargo build --release` \
         first (or set SPLICECOW_LIB)",
        target.display()
    ))
}

/// What a command run by [`run_with_timeout`] produced.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status, `None` if it was killed for running too long.
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl RunOutput {
    /// A one-line description for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "status {:?}, stdout {:?}, stderr {:?}",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }
}

fn drain_in_thread<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child` at most `timeout`; kills it (and returns `None`) when it is late.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `cmd` with stdin closed and stdout/stderr captured; kills it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<RunOutput> {
    run_with_stdin(cmd, Stdio::null(), timeout)
}

/// Runs `cmd` with the given stdin and stdout/stderr captured; kills it after `timeout`.
pub fn run_with_stdin(cmd: &mut Command, stdin: Stdio, timeout: Duration) -> io::Result<RunOutput> {
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = drain_in_thread(child.stdout.take());
    let err = drain_in_thread(child.stderr.take());
    let status = wait_with_timeout(&mut child, timeout)?;
    Ok(RunOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A pipe `(read end, write end)`, both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Bytes waiting in a pipe (`ioctl(FIONREAD)`).
pub fn fionread(fd: &impl AsRawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the valid pointer &mut n.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Makes a pipe hold at least `len` bytes (`F_SETPIPE_SZ`); a no-op up to 64 KiB.
pub fn ensure_pipe_capacity(fd: &impl AsRawFd, len: usize) -> io::Result<()> {
    if len <= DEFAULT_SPLICE_LEN {
        return Ok(());
    }
    let size = len.next_power_of_two() as libc::c_int;
    // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory of ours.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` has at least `want` bytes queued or `timeout` passes; returns the
/// last `FIONREAD` seen.
pub fn wait_for_fionread(fd: &impl AsRawFd, want: usize, timeout: Duration) -> io::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = fionread(fd)?;
        if n >= want || Instant::now() >= deadline {
            return Ok(n);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Finds a program: `name` if it is a path, else the first match on `$PATH`.
pub fn find_program(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let name = Path::new(name.as_ref());
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// How the scenario moves file bytes into the pipe the consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// `splice(file, NULL, pipe, NULL, ..)` after `lseek(file, 0)`.
    Splice,
    /// `splice(file, &off, pipe, NULL, ..)` with an explicit input offset.
    SpliceOffset,
    /// `sendfile(pipe, file, &off, ..)`.
    Sendfile,
    /// `sendfile64(pipe, file, NULL, ..)` after `lseek(file, 0)`.
    Sendfile64,
    /// `splice` file -> pipe A, `tee` A -> P, A drained; the consumer reads P.
    Tee,
    /// `splice` file -> pipe A, `splice` A -> P (what uutils `cat` does).
    SplicePipe,
}

/// The command-line name of a [`clap::ValueEnum`] value (`punch-hole`, `splice-pipe`...).
pub fn value_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// All values of a [`clap::ValueEnum`].
pub fn all_values<T: clap::ValueEnum + Clone>() -> Vec<T> {
    T::value_variants().to_vec()
}

/// Inode number of an open fd (`fstat`), e.g. to tell pipes apart.
pub fn inode(fd: &impl AsRawFd) -> io::Result<u64> {
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid, writable stat buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_ino)
}

/// Bytes queued in the pipes process `pid` holds open, except pipe inode `exclude`.
///
/// Each pipe is opened through `/proc/<pid>/fd/<n>` (read-only, non-blocking, never
/// read from) and asked `FIONREAD`. Used to count bytes a program such as uutils `cat`
/// has spliced into its own intermediate pipe.
pub fn queued_in_pipes_of(pid: u32, exclude: u64) -> io::Result<usize> {
    let mut seen = Vec::new();
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let Some(ino) = target
            .strip_prefix("pipe:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if ino == exclude || seen.contains(&ino) {
            continue;
        }
        seen.push(ino);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(entry.path())?;
        total += fionread(&f)?;
    }
    Ok(total)
}

/// Locates the `splicecow` CLI: `$SPLICECOW_CLI`, else next to the library
/// [`library_path`] found, else `target/release/splicecow`.
pub fn cli_path() -> Result<PathBuf, String> {
    if let Some(cli) = std::env::var_os("SPLICECOW_CLI") {
        return Ok(PathBuf::from(cli));
    }
    let beside = library_path()?.with_file_name("splicecow");
    if beside.is_file() {
        return Ok(beside);
    }
    let cli = target_dir().join("release").join("splicecow");
    if cli.is_file() {
        Ok(cli)
    } else {
        Err(format!(
            "splicecow not found next to the library or at {}: run `cargo build --release`",
            cli.display()
        ))
    }
}

/// The counters of `domain` as `splicecow stats --domain D --json` prints them.
pub fn domain_stats(domain: &str) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new(cli_path()?);
    strip_shim_env(&mut cmd).args(["stats", "--json", "--domain", domain]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    if out.status.map(|s| s.success()) != Some(true) {
        return Err(format!(
            "splicecow stats --domain {domain}: {}",
            out.describe()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", out.describe()))
}

/// Runs `producer | consumer`: the producer's stdout is the consumer's stdin, both
/// stderrs and the consumer's stdout are captured; both are killed after `timeout`.
/// Returns `(producer, consumer)`; the producer's `stdout` is empty.
pub fn run_piped(
    producer: &mut Command,
    consumer: &mut Command,
    timeout: Duration,
) -> io::Result<(RunOutput, RunOutput)> {
    let mut cons = consumer
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let link = cons.stdin.take().map_or_else(Stdio::null, Stdio::from);
    // The producer's Command keeps no copy of `link` after spawn, so the consumer sees
    // EOF once the producer exits.
    let prod = producer
        .stdin(Stdio::null())
        .stdout(link)
        .stderr(Stdio::piped())
        .spawn();
    let mut prod = match prod {
        Ok(p) => p,
        Err(e) => {
            let _ = cons.kill();
            let _ = cons.wait();
            return Err(e);
        }
    };
    producer.stdout(Stdio::null());
    let prod_err = drain_in_thread(prod.stderr.take());
    let out = drain_in_thread(cons.stdout.take());
    let err = drain_in_thread(cons.stderr.take());
    let prod_status = wait_with_timeout(&mut prod, timeout)?;
    let status = wait_with_timeout(&mut cons, timeout)?;
    Ok((
        RunOutput {
            status: prod_status,
            stdout: Vec::new(),
            stderr: prod_err.join().unwrap_or_default(),
        },
        RunOutput {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        },
    ))
}

/// The JSON line `fidelity settle` prints: what an unshimmed reader got from the pipe
/// of one settle edge case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleReport {
    /// The edge case (`exited`, `packet`, ...).
    pub case: String,
    /// Whether the file was mutated after the splices.
    pub mutated: bool,
    /// Bytes the reader should get, in order.
    pub expected: usize,
    /// Bytes the reader got.
    pub received: usize,
    /// See [`compare`].
    pub mismatched_bytes: usize,
    /// See [`compare`].
    pub first_mismatch: Option<usize>,
    /// Sizes of the reader's successive `read`s (1 MiB buffer): packets in packet mode.
    pub reads: Vec<usize>,
    /// `FIONREAD` of the pipe the reader reads, just before the mutation.
    pub pending_at_mutation: usize,
}

impl SettleReport {
    /// True when the reader got exactly the expected bytes.
    pub fn exact(&self) -> bool {
        self.mismatched_bytes == 0 && self.received == self.expected
    }
}

/// Runs `jobs` on `workers` threads, collecting their failure messages.
pub fn parallel<T: Sync>(
    jobs: &[T],
    workers: usize,
    run: impl Fn(&T) -> Vec<String> + Sync,
) -> Vec<String> {
    let next = std::sync::Mutex::new(0usize);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let Some(job) = jobs.get(i) else { break };
                let f = run(job);
                failures.lock().unwrap().extend(f);
            });
        }
    });
    failures.into_inner().unwrap()
}

/// A scratch directory under `/var/tmp`, removed with everything in it on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// A fresh, empty directory (see [`temp_path`]).
    pub fn new(tag: &str) -> io::Result<ScratchDir> {
        let path = temp_path(tag);
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Compiles the C program `source` with `gcc -O1` into `target/test-programs/<name>` and
/// returns its path. The binary is built under a unique name and renamed into place, so
/// test processes that compile the same program at once never run a half-written one.
pub fn compile_c(name: &str, source: &str) -> Result<PathBuf, String> {
    let dir = target_dir().join("test-programs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let unique = format!("{name}-{}-{:?}", std::process::id(), thread::current().id())
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "");
    let src = dir.join(format!("{unique}.c"));
    let tmp = dir.join(&unique);
    let out = dir.join(name);
    std::fs::write(&src, source).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut gcc = Command::new("gcc");
    strip_shim_env(&mut gcc)
        .args(["-O1", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&src);
    let result = run_with_timeout(&mut gcc, Duration::from_secs(60));
    let _ = std::fs::remove_file(&src);
    let built = result.map_err(|e| format!("gcc is needed by this test: {e}"))?;
    if built.status.map(|s| s.success()) != Some(true) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("gcc failed on {name}: {}", built.describe()));
    }
    std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// The Python 3 interpreter itself (`sys.executable` of `python3` on `$PATH`), so that
/// a launcher script in front of it (a pyenv shim is a bash script) neither runs under
/// the shim nor stands between a test and the pid it signals. `python3` if unknown.
pub fn python3() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let mut cmd = Command::new("python3");
            strip_shim_env(&mut cmd).args(["-c", "import sys; print(sys.executable)"]);
            run_with_timeout(&mut cmd, Duration::from_secs(30))
                .ok()
                .filter(|out| out.status.map(|s| s.success()) == Some(true))
                .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from("python3"))
        })
        .clone()
}

/// True when a thread of process `pid` is blocked in one of the system calls `numbers`
/// (its `/proc/<pid>/task/<tid>/syscall` starts with the number).
pub fn in_syscall(pid: u32, numbers: &[libc::c_long]) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("syscall")).is_ok_and(|s| {
            let first = s.split_whitespace().next().unwrap_or_default();
            first
                .parse::<libc::c_long>()
                .is_ok_and(|n| numbers.contains(&n))
        })
    })
}

/// True when a thread of process `pid` sleeps in the raw `nanosleep` system call for a
/// time `pause` accepts (nanoseconds; `None` when the request cannot be read from the
/// process's memory). The shim's test pauses (`SPLICECOW_TEST_PAUSE`) sleep there, and
/// so do its waits for a busy registry lock (20 µs at a time): only the requested time
/// tells them apart.
pub fn in_nanosleep_for(pid: u32, pause: impl Fn(Option<u64>) -> bool) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok();
    tasks.flatten().any(|t| {
        let Ok(call) = std::fs::read_to_string(t.path().join("syscall")) else {
            return false;
        };
        let mut fields = call.split_whitespace();
        if fields.next().and_then(|n| n.parse::<libc::c_long>().ok()) != Some(libc::SYS_nanosleep) {
            return false;
        }
        let request = fields
            .next()
            .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
        let mut ts = [0u8; 16];
        let requested = match (&mem, request) {
            (Some(mem), Some(at)) if mem.read_exact_at(&mut ts, at).is_ok() => {
                let (secs, nanos) = ts.split_at(8);
                let secs = u64::from_le_bytes(secs.try_into().unwrap_or_default());
                let nanos = u64::from_le_bytes(nanos.try_into().unwrap_or_default());
                Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
            }
            _ => None,
        };
        pause(requested)
    })
}

/// Waits until a thread of `child` is blocked in one of the system calls `numbers`;
/// false when it exited or `timeout` passed first.
pub fn wait_for_syscall(
    child: &mut Child,
    numbers: &[libc::c_long],
    timeout: Duration,
) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        if in_syscall(child.id(), numbers) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until `child` sits in a test pause of a second or more ([`in_nanosleep_for`]:
/// a wait for the registry lock is no pause); false when it exited or `timeout` passed
/// first.
pub fn wait_for_pause(child: &mut Child, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        if in_nanosleep_for(child.id(), |ns| ns.is_none_or(|ns| ns >= 1_000_000_000)) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Counter `name` of a [`domain_stats`] answer (`None` when the library lacks it).
pub fn counter(stats: &serde_json::Value, name: &str) -> Option<u64> {
    stats.get(name).and_then(serde_json::Value::as_u64)
}

/// A child process that is killed (`SIGKILL`) and reaped when dropped, so a test that
/// fails half-way leaves nothing running.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Kills the child now (`SIGKILL`; nothing happens if it already exited) and reaps it.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        let _ = self.0.kill();
        self.0.wait()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines a child writes (its stdout, say), read by a thread of their own so that
/// waiting for the next one can time out: a test never hangs on a child that stopped
/// talking.
#[derive(Debug)]
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
}

impl Lines {
    /// Starts reading `r` line by line.
    pub fn new<R: Read + Send + 'static>(r: R) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in io::BufRead::lines(io::BufReader::new(r)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// The next line without its newline; `None` at the end of the stream or when
    /// `timeout` passed first.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }
}

/// Path of the registry of `domain` for this user: `/dev/shm/splicecow-<uid>-<domain>`
/// (what [`TempDomain::shm_path`] is for a domain the test did not name itself).
pub fn registry_file(domain: &str) -> PathBuf {
    PathBuf::from(splicecow_registry::registry_path(domain))
}

/// The fresh domain (`run-<pid>-<nanos>`) of the `splicecow run` process `run_pid`, found
/// in `/dev/shm` (where `splicecow stats --all` finds it too) once its registry exists;
/// `None` when none appeared within `timeout`.
pub fn run_domain_of(run_pid: u32, timeout: Duration) -> Option<String> {
    let prefix = registry_file(&format!("run-{run_pid}-"))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let deadline = Instant::now() + timeout;
    loop {
        let found = std::fs::read_dir("/dev/shm").ok().and_then(|dir| {
            dir.flatten().find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let nanos = name.strip_prefix(&prefix)?;
                (!nanos.is_empty() && nanos.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| format!("run-{run_pid}-{nanos}"))
            })
        });
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Polls [`domain_stats`] of `domain` until `ready` holds for its answer; the last answer
/// (or why there was none) as the error when `timeout` passed first.
pub fn wait_for_stats(
    domain: &str,
    timeout: Duration,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = domain_stats(domain);
        if let Ok(stats) = &last {
            if ready(stats) {
                return last;
            }
        }
        if Instant::now() >= deadline {
            return Err(match last {
                Ok(stats) => format!("domain {domain} after {timeout:?}: {stats}"),
                Err(e) => format!("domain {domain} after {timeout:?}: {e}"),
            });
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A loop-mounted XFS image with reflink and dedupe (ext4 and tmpfs have neither), for
/// the clone and dedupe ioctls; unmounted and removed on drop.
pub struct XfsMount {
    /// Where it is mounted.
    pub dir: PathBuf,
    image: PathBuf,
}

impl XfsMount {
    /// Makes and mounts one; the error says why this machine cannot (not root, no
    /// `mkfs.xfs`, no loop devices).
    pub fn new() -> Result<XfsMount, String> {
        let base = temp_path("xfs");
        let (image, dir) = (base.with_extension("img"), base.with_extension("mnt"));
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = run_with_timeout(cmd, Duration::from_secs(60)).map_err(|e| e.to_string())?;
            match out.status {
                Some(s) if s.success() => Ok(()),
                _ => Err(out.describe()),
            }
        };
        File::create(&image)
            .and_then(|f| f.set_len(320 << 20))
            .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mounted = run(Command::new("mkfs.xfs")
            .args(["-q", "-f", "-m", "reflink=1"])
            .arg(&image))
        .and_then(|_| {
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&dir))
        });
        match mounted {
            Ok(()) => Ok(XfsMount { dir, image }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                let _ = std::fs::remove_file(&image);
                Err(e)
            }
        }
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::remove_file(&self.image);
    }
}
