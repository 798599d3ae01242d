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

use std::ffi::CString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use clap::Parser;
use splicecow_test_harness::{
    compare, ensure_pipe_capacity, pattern, pipe, run_with_stdin, side_path, strip_shim_env,
    temp_path, value_name, write_pattern_file, Api, Mutation, Mutator, ScenarioReport,
    DEFAULT_SPLICE_LEN, FILE_LEN,
};

/// Where in-range writes land and how many bytes they write.
const WRITE_OFF: usize = 100;
const WRITE_LEN: usize = 16;
/// Length truncating mutations cut the file to (inside the first 64 KiB).
const TRUNC_LEN: libc::off_t = 30000;
/// Length of collapse/insert ranges (one block).
const BLOCK: libc::off_t = 4096;
/// Where collapse/insert ranges start: block-aligned but inside the first 64 KiB, so the
/// page-cache truncation they do starts in the middle of a (large) folio. At offset 0
/// whole folios are just dropped from the cache and the pipe keeps the old bytes.
const SHIFT_OFF: libc::off_t = 32768;
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

/// A setup error: reported on stderr, exit status 2.
type Res<T> = Result<T, String>;

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// Checks a libc return value: negative means failure (errno is set).
fn check(ret: impl Into<i64>, what: &str) -> Res<i64> {
    let ret = ret.into();
    if ret < 0 {
        Err(os_err(what))
    } else {
        Ok(ret)
    }
}

fn cpath(path: &Path) -> Res<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())
}

fn open_rdwr(path: &Path) -> Res<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| format!("open {}: {e}", path.display()))
}

/// Whether a mutation happened or is not supported on this system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Done,
    Unsupported,
}

/// A mutation ready to be applied: files opened, mappings made.
struct Prepared {
    kind: Mutation,
    path: PathBuf,
    cpath: CString,
    /// The file's fd: the spliced one (same process) or one opened here.
    fd: RawFd,
    _owned_fd: Option<OwnedFd>,
    /// Companion file with `B`s, for copy-into mutations.
    src: Option<OwnedFd>,
    /// An early `MAP_SHARED` writable mapping (address, length).
    map: Option<(*mut libc::c_void, usize)>,
    size: usize,
}

/// A buffer of `B`s as long as every in-range write.
static BS: [u8; WRITE_LEN] = [b'B'; WRITE_LEN];

impl Prepared {
    /// Prepares `kind` on `path`; `fd` is the spliced fd when mutating in-process.
    fn new(kind: Mutation, path: &Path, fd: Option<RawFd>, size: usize) -> Res<Prepared> {
        let (fd, owned) = match fd {
            Some(fd) => (fd, None),
            None => {
                let owned = open_rdwr(path)?;
                (owned.as_raw_fd(), Some(owned))
            }
        };
        let src = match kind {
            Mutation::CopyFileRange | Mutation::SendfileInto | Mutation::Ficlone => {
                let side = side_path(path);
                std::fs::write(&side, [b'B'; BLOCK as usize])
                    .map_err(|e| format!("write {}: {e}", side.display()))?;
                let f = std::fs::File::open(&side).map_err(|e| e.to_string())?;
                Some(OwnedFd::from(f))
            }
            _ => None,
        };
        let mut prepared = Prepared {
            kind,
            path: path.to_path_buf(),
            cpath: cpath(path)?,
            fd,
            _owned_fd: owned,
            src,
            map: None,
            size,
        };
        if kind == Mutation::MmapEarlyStore {
            prepared.map = Some(map_shared(fd)?);
        }
        Ok(prepared)
    }

    fn src_fd(&self) -> RawFd {
        self.src.as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    /// Applies the mutation.
    fn apply(&mut self) -> Res<Applied> {
        use Mutation::*;
        let fd = self.fd;
        let p = self.cpath.as_ptr();
        let off = WRITE_OFF as libc::off_t;
        let buf = BS.as_ptr().cast::<libc::c_void>();
        let half = WRITE_LEN / 2;
        let iov = [
            libc::iovec {
                iov_base: BS.as_ptr() as *mut libc::c_void,
                iov_len: half,
            },
            libc::iovec {
                iov_base: BS[half..].as_ptr() as *mut libc::c_void,
                iov_len: half,
            },
        ];
        let range = self.size as libc::off_t;
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let name = value_name(&self.kind);
        // SAFETY: (whole match) every call gets a valid open fd (or -1, which fails
        // cleanly), NUL-terminated paths that outlive the call, and buffers/iovecs that
        // point into the static `BS` with lengths inside it; returned FILE*s and
        // mappings are checked before use and released exactly once.
        let ret: i64 = unsafe {
            match self.kind {
                None => 0,
                Pwrite => libc::pwrite(fd, buf, WRITE_LEN, off) as i64,
                Pwrite64 => libc::pwrite64(fd, buf, WRITE_LEN, off) as i64,
                Write => {
                    check(libc::lseek(fd, off, libc::SEEK_SET), "lseek")?;
                    libc::write(fd, buf, WRITE_LEN) as i64
                }
                Writev => {
                    check(libc::lseek(fd, off, libc::SEEK_SET), "lseek")?;
                    libc::writev(fd, iov.as_ptr(), 2) as i64
                }
                Pwritev => libc::pwritev(fd, iov.as_ptr(), 2, off) as i64,
                Pwritev64 => libc::pwritev64(fd, iov.as_ptr(), 2, off) as i64,
                Pwritev2 => libc::pwritev2(fd, iov.as_ptr(), 2, off, 0) as i64,
                Pwritev64v2 => libc::pwritev64v2(fd, iov.as_ptr(), 2, off, 0) as i64,
                PunchHole => libc::fallocate(fd, punch, 0, range).into(),
                PunchHole64 => libc::fallocate64(fd, punch, 0, range).into(),
                ZeroRange => libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, 0, range).into(),
                CollapseRange => {
                    libc::fallocate(fd, libc::FALLOC_FL_COLLAPSE_RANGE, SHIFT_OFF, BLOCK).into()
                }
                InsertRange => {
                    libc::fallocate(fd, libc::FALLOC_FL_INSERT_RANGE, SHIFT_OFF, BLOCK).into()
                }
                Ftruncate => libc::ftruncate(fd, TRUNC_LEN).into(),
                Ftruncate64 => libc::ftruncate64(fd, TRUNC_LEN).into(),
                Ftruncate0 => libc::ftruncate(fd, 0).into(),
                Truncate => libc::truncate(p, TRUNC_LEN).into(),
                Truncate64 => libc::truncate64(p, TRUNC_LEN).into(),
                OpenTrunc => close_fd(libc::open(p, libc::O_WRONLY | libc::O_TRUNC)),
                Open64Trunc => close_fd(libc::open64(p, libc::O_WRONLY | libc::O_TRUNC)),
                OpenatTrunc => close_fd(libc::openat(
                    libc::AT_FDCWD,
                    p,
                    libc::O_WRONLY | libc::O_TRUNC,
                )),
                Openat64Trunc => close_fd(libc::openat64(
                    libc::AT_FDCWD,
                    p,
                    libc::O_WRONLY | libc::O_TRUNC,
                )),
                Creat => close_fd(libc::creat(p, 0o644)),
                Creat64 => close_fd(libc::creat64(p, 0o644)),
                FopenW => close_file(libc::fopen(p, c"w".as_ptr())),
                Fopen64W => close_file(libc::fopen64(p, c"w".as_ptr())),
                FreopenW | Freopen64W => {
                    let stream = libc::fopen(c"/dev/null".as_ptr(), c"r".as_ptr());
                    if stream.is_null() {
                        return Err(os_err("fopen /dev/null"));
                    }
                    let re = if self.kind == FreopenW {
                        libc::freopen(p, c"w".as_ptr(), stream)
                    } else {
                        libc::freopen64(p, c"w".as_ptr(), stream)
                    };
                    close_file(re)
                }
                MmapSharedStore => {
                    let (addr, len) = map_shared(fd)?;
                    store_and_unmap(addr, len)
                }
                MmapEarlyStore => {
                    let (addr, len) = self.map.take().ok_or("mapping not prepared")?;
                    store_and_unmap(addr, len)
                }
                CopyFileRange => {
                    let mut off_in: libc::loff_t = 0;
                    let mut off_out: libc::loff_t = off;
                    libc::copy_file_range(
                        self.src_fd(),
                        &mut off_in,
                        fd,
                        &mut off_out,
                        WRITE_LEN,
                        0,
                    ) as i64
                }
                SendfileInto => {
                    check(libc::lseek(fd, off, libc::SEEK_SET), "lseek")?;
                    let mut off_in: libc::off_t = 0;
                    libc::sendfile(fd, self.src_fd(), &mut off_in, WRITE_LEN) as i64
                }
                SpliceInto => {
                    let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
                    check(
                        libc::write(w.as_raw_fd(), buf, WRITE_LEN) as i64,
                        "write pipe",
                    )?;
                    let mut off_out: libc::loff_t = off;
                    libc::splice(
                        r.as_raw_fd(),
                        std::ptr::null_mut(),
                        fd,
                        &mut off_out,
                        WRITE_LEN,
                        0,
                    ) as i64
                }
                Ficlone => libc::ioctl(fd, libc::FICLONE, self.src_fd()).into(),
                StdioFwrite | StdioFputs | StdioFprintf => {
                    let f = libc::fopen(p, c"r+".as_ptr());
                    if f.is_null() {
                        return Err(os_err("fopen r+"));
                    }
                    if libc::fseek(f, WRITE_OFF as libc::c_long, libc::SEEK_SET) != 0 {
                        return Err(os_err("fseek"));
                    }
                    let r = match self.kind {
                        StdioFwrite => libc::fwrite(buf, 1, WRITE_LEN, f) as i64 - 1,
                        StdioFputs => libc::fputs(c"BBBBBBBBBBBBBBBB".as_ptr(), f).into(),
                        _ => libc::fprintf(f, c"%s".as_ptr(), c"BBBBBBBBBBBBBBBB".as_ptr()).into(),
                    };
                    check(r, "stdio write")?;
                    close_file(f)
                }
            }
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            let unsupported = matches!(
                err.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EXDEV | libc::ENOTTY | libc::ENOSYS)
            ) || (self.kind == Ficlone
                && err.raw_os_error() == Some(libc::EINVAL));
            if unsupported {
                return Ok(Applied::Unsupported);
            }
            return Err(format!("{name} on {}: {err}", self.path.display()));
        }
        Ok(Applied::Done)
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some((addr, len)) = self.map.take() {
            // SAFETY: (addr, len) is a mapping made by map_shared and not yet unmapped.
            unsafe { libc::munmap(addr, len) };
        }
    }
}

/// Closes an fd returned by an opening call; passes a failure (-1) through.
fn close_fd(fd: libc::c_int) -> i64 {
    if fd < 0 {
        return -1;
    }
    // SAFETY: fd was just opened by us and is closed exactly once.
    unsafe { libc::close(fd) }.into()
}

/// Closes a stream returned by `fopen`/`freopen`; a null stream is a failure (-1).
fn close_file(f: *mut libc::FILE) -> i64 {
    if f.is_null() {
        return -1;
    }
    // SAFETY: f is a live stream opened by us and is closed exactly once.
    unsafe { libc::fclose(f) }.into()
}

/// Maps the first page of `fd` `MAP_SHARED` and writable.
fn map_shared(fd: RawFd) -> Res<(*mut libc::c_void, usize)> {
    let len = BLOCK as usize;
    // SAFETY: a fresh mapping chosen by the kernel; fd is an open regular file at
    // least one page long.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(os_err("mmap"));
    }
    Ok((addr, len))
}

/// Stores 16 `B`s at offset 100 of a mapping, then unmaps it.
///
/// # Safety
/// `(addr, len)` must be a live writable mapping of at least one page, not used again.
unsafe fn store_and_unmap(addr: *mut libc::c_void, len: usize) -> i64 {
    // SAFETY: the caller guarantees the mapping is live, writable and one page long,
    // so bytes 100..116 are inside it.
    unsafe {
        std::ptr::copy_nonoverlapping(BS.as_ptr(), addr.cast::<u8>().add(WRITE_OFF), WRITE_LEN);
        libc::munmap(addr, len).into()
    }
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
            return Err(format!("mutator did not get ready (said {line:?})"));
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
            Some(0) => Ok(Applied::Done),
            Some(3) => Ok(Applied::Unsupported),
            _ => Err(format!("mutator failed: {status}")),
        }
    }
}

/// `--do-mutation`: apply one mutation (optionally after a handshake) and exit.
fn do_mutation(kind: Mutation, path: &Path, size: usize, handshake: bool) -> Res<Applied> {
    let mut prepared = Prepared::new(kind, path, None, size)?;
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
    prepared.apply()
}

/// Reads the pipe's content with an unshimmed `cat` (it starts only now).
fn consume(read_end: OwnedFd) -> Res<Vec<u8>> {
    let mut cmd = Command::new("cat");
    strip_shim_env(&mut cmd);
    let out = run_with_stdin(&mut cmd, Stdio::from(read_end), CONSUMER_TIMEOUT)
        .map_err(|e| format!("spawn cat: {e}"))?;
    match out.status {
        Some(s) if s.success() => Ok(out.stdout),
        _ => Err(format!("consumer cat failed: {}", out.describe())),
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
        Same(Prepared),
        Other(OtherMutator),
    }
    let pending = match mutator {
        Mutator::Same => {
            Pending::Same(Prepared::new(mutation, path, Some(file.as_raw_fd()), size)?)
        }
        Mutator::Other => Pending::Other(OtherMutator::start(mutation, path, size)?),
    };

    let spliced = feed_pipe(api, file.as_raw_fd(), pw.as_raw_fd(), size)?;
    let applied = match pending {
        Pending::Same(mut p) => p.apply()?,
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
            Ok(Applied::Done) => ExitCode::SUCCESS,
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
