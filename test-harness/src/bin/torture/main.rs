//! `torture`: small protected programs for `tests/torture.rs`, each one case of
//! splicing and mutating under signals, stops, forks, threads or spawned children
//! (`torture CASE --help` lists a case's options).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use splicecow_registry::env as names;
use splicecow_test_harness::pattern_byte;
use splicecow_test_harness::rng::Rng;
use splicecow_test_harness::sys::{
    errno, file_size, flock_fd, open_raw, pread_up_to, read_up_to, set_errno, splice_range,
};

extern "C" {
    static environ: *const *mut libc::c_char;
}

/// One `pwrite` of all of `buf` at `off`: what it returned (a short count is a failure
/// the cases report, so it is not retried).
fn pwrite_once(fd: RawFd, buf: &[u8], off: usize) -> isize {
    // SAFETY: buf is a valid buffer.
    unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off as libc::off_t) }
}

/// Splice-then-mutate rounds on `path` by one thread or process: each round splices a
/// random range into a private pipe (under `lock`), lets others mutate, mutates itself,
/// then reads the pipe and compares. Returns the number of mismatching rounds.
fn splice_mutate_rounds(
    path: &Path,
    lockp: &Path,
    rounds: usize,
    seed: u64,
    pause_us: u64,
) -> usize {
    let fd = open_raw(path, libc::O_RDWR).expect("data file");
    let lk = open_raw(lockp, libc::O_RDWR | libc::O_CREAT).expect("lock file");
    let (r, w) = splicecow_test_harness::pipe().expect("pipe");
    let mut rng = Rng(seed);
    let mut bad = 0;
    for round in 0..rounds {
        flock_fd(lk.as_raw_fd(), libc::LOCK_EX);
        let size = file_size(fd.as_raw_fd()).max(1);
        let off = rng.below(size);
        let len = rng.range(1, 65536).min(size - off).max(1);
        let expected = pread_up_to(fd.as_raw_fd(), off, len);
        let moved = splice_range(fd.as_raw_fd(), off, w.as_raw_fd(), expected.len());
        flock_fd(lk.as_raw_fd(), libc::LOCK_UN);
        if pause_us > 0 {
            std::thread::sleep(Duration::from_micros(rng.range(0, pause_us as usize) as u64));
        }
        // Our own conflicting mutation.
        flock_fd(lk.as_raw_fd(), libc::LOCK_EX);
        let mut junk = vec![0u8; rng.range(1, 4096)];
        rng.fill(&mut junk);
        let at = off + rng.below(len);
        if pwrite_once(fd.as_raw_fd(), &junk, at) != junk.len() as isize {
            eprintln!("round {round}: pwrite returned a wrong count");
            bad += 1;
        }
        flock_fd(lk.as_raw_fd(), libc::LOCK_UN);
        let got = read_up_to(r.as_raw_fd(), moved);
        if got[..] != expected[..moved] {
            let first = got.iter().zip(&expected).position(|(a, b)| a != b);
            eprintln!(
                "MISMATCH pid {} round {round}: {moved} bytes spliced from {off}, first difference at {first:?}",
                std::process::id()
            );
            bad += 1;
        }
    }
    bad
}

/// The cases.
#[derive(Parser, Debug)]
#[command(name = "torture")]
enum Torture {
    /// SIGALRM at a high rate whose handler `write`s into a file with live segments,
    /// while the main thread splices and pwrites: no deadlock, exact data and counts.
    Sigalrm {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
    },
    /// Splice/mutate rounds (the SIGSTOP/SIGCONT target, or a plain participant).
    Rounds {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        rounds: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 200)]
        pause_us: u64,
    },
    /// Random pwrites under the file lock for `secs` seconds.
    Mutate {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        secs: f64,
    },
    /// fork, then parent and child both run splice/mutate rounds on the same file.
    Fork {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 300)]
        rounds: usize,
    },
    /// Threads splicing and mutating one file at once (each checks its own pipe).
    Threads {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 16)]
        threads: usize,
        #[arg(long, default_value_t = 200)]
        rounds: usize,
    },
    /// Starts `torture child` with `posix_spawn` and waits for it (the vfork+exec
    /// case is a small C program built by the test).
    Spawn {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        domain: String,
    },
    /// The spawned child: checks its environment and splices once (counted in stats).
    Child {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        domain: String,
    },
}

/// Handler state of the SIGALRM case (async-signal-safe: atomics and raw fds only).
static SIG_FD: AtomicU64 = AtomicU64::new(0);
static SIG_WRITES: AtomicU64 = AtomicU64::new(0);
static SIG_BAD: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_alarm(_: libc::c_int) {
    let saved = errno();
    let fd = SIG_FD.load(Ordering::Relaxed) as RawFd;
    let rec = *b"0123456789abcdef";
    // SAFETY: write(2) is async-signal-safe; rec lives on our stack.
    let r = unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
    if r == rec.len() as isize {
        SIG_WRITES.fetch_add(1, Ordering::Relaxed);
    } else {
        SIG_BAD.fetch_add(1, Ordering::Relaxed);
    }
    set_errno(saved);
}

fn torture_sigalrm(dir: &Path, secs: f64) -> i32 {
    let data = dir.join("sig-data");
    let hpath = dir.join("sig-handler");
    std::fs::write(
        &data,
        (0..1 << 20)
            .map(|i| pattern_byte(i + 1_000_003))
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    std::fs::write(&hpath, vec![b'.'; 1 << 20]).unwrap();
    let fd = open_raw(&data, libc::O_RDWR).unwrap();
    let hfd = open_raw(&hpath, libc::O_RDWR).unwrap();
    let hread = open_raw(&hpath, libc::O_RDONLY).unwrap();
    SIG_FD.store(hfd.as_raw_fd() as u64, Ordering::Relaxed);
    let (r, w) = splicecow_test_harness::pipe().unwrap();
    let (qr, qw) = splicecow_test_harness::pipe().unwrap();
    // SAFETY: installing a plain handler (SA_RESTART) and a 100 µs interval timer.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_alarm as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
        let it = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 100,
            },
            it_value: libc::timeval {
                tv_sec: 0,
                tv_usec: 100,
            },
        };
        libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut());
    }
    let mut rng = Rng(7);
    let mut bad = 0;
    let mut rounds = 0;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        rounds += 1;
        // Keep the handler's file in flight too, so its writes conflict.
        let hpos = (SIG_WRITES.load(Ordering::Relaxed) as usize * 16) % (1 << 20);
        let hq = splice_range(hread.as_raw_fd(), hpos, qw.as_raw_fd(), 32768);
        let off = rng.below(1 << 19);
        let len = rng.range(1, 65536);
        let expected = pread_up_to(fd.as_raw_fd(), off, len);
        let moved = splice_range(fd.as_raw_fd(), off, w.as_raw_fd(), len);
        let mut junk = vec![0u8; rng.range(1, 8192)];
        rng.fill(&mut junk);
        let at = off + rng.below(len);
        let ret = pwrite_once(fd.as_raw_fd(), &junk, at);
        if ret != junk.len() as isize {
            eprintln!("pwrite returned {ret}, expected {}", junk.len());
            bad += 1;
        }
        let got = read_up_to(r.as_raw_fd(), moved);
        if got[..] != expected[..moved] {
            eprintln!("MISMATCH in round {rounds}: {moved} bytes spliced from {off}");
            bad += 1;
        }
        let _ = read_up_to(qr.as_raw_fd(), hq);
    }
    // SAFETY: disarm the timer.
    unsafe {
        let it: libc::itimerval = std::mem::zeroed();
        libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut());
    }
    let writes = SIG_WRITES.load(Ordering::Relaxed);
    let sig_bad = SIG_BAD.load(Ordering::Relaxed);
    // The handler's writes went to consecutive offsets from 0.
    let content = pread_up_to(hfd.as_raw_fd(), 0, writes as usize * 16);
    let layout_ok = content.chunks(16).all(|c| c == b"0123456789abcdef");
    println!("rounds {rounds} handler_writes {writes} handler_bad {sig_bad} bad {bad} layout_ok {layout_ok}");
    i32::from(bad > 0 || sig_bad > 0 || !layout_ok || writes == 0)
}

fn main() -> ExitCode {
    let t = Torture::parse();
    let code = match t {
        Torture::Sigalrm { dir, secs } => torture_sigalrm(&dir, secs),
        Torture::Rounds {
            file,
            rounds,
            seed,
            pause_us,
        } => {
            let lockp = side_lock(&file);
            let bad = splice_mutate_rounds(&file, &lockp, rounds, seed, pause_us);
            println!("rounds {rounds} bad {bad}");
            i32::from(bad > 0)
        }
        Torture::Mutate { file, secs } => {
            let lk = open_raw(&side_lock(&file), libc::O_RDWR | libc::O_CREAT).unwrap();
            let fd = open_raw(&file, libc::O_RDWR).unwrap();
            let mut rng = Rng(99);
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                flock_fd(lk.as_raw_fd(), libc::LOCK_EX);
                let size = file_size(fd.as_raw_fd()).max(1);
                let mut junk = vec![0u8; rng.range(1, 8192)];
                rng.fill(&mut junk);
                let r = pwrite_once(fd.as_raw_fd(), &junk, rng.below(size));
                flock_fd(lk.as_raw_fd(), libc::LOCK_UN);
                if r != junk.len() as isize {
                    eprintln!("pwrite returned {r}");
                    return ExitCode::from(1);
                }
                n += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
            println!("mutations {n}");
            0
        }
        Torture::Fork { file, rounds } => {
            let lockp = side_lock(&file);
            // SAFETY: fork in a single-threaded process; the child only runs Rust code
            // that this process could run too, then exits.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                eprintln!("fork: {}", io::Error::last_os_error());
                return ExitCode::from(2);
            }
            let seed = if pid == 0 { 2 } else { 3 };
            let bad = splice_mutate_rounds(&file, &lockp, rounds, seed, 300);
            if pid == 0 {
                // SAFETY: leave the child without running the parent's exit handlers twice.
                unsafe { libc::_exit(i32::from(bad > 0)) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            let child_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            println!("parent_bad {bad} child_ok {child_ok}");
            i32::from(bad > 0 || !child_ok)
        }
        Torture::Threads {
            file,
            threads,
            rounds,
        } => {
            let lockp = side_lock(&file);
            let bad: usize = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|t| {
                        let (file, lockp) = (&file, &lockp);
                        s.spawn(move || {
                            splice_mutate_rounds(file, lockp, rounds, 100 + t as u64, 200)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap_or(1)).sum()
            });
            println!("threads {threads} rounds {rounds} bad {bad}");
            i32::from(bad > 0)
        }
        Torture::Spawn { file, domain } => torture_spawn(&file, &domain),
        Torture::Child { file, domain } => {
            let env_domain = std::env::var(names::DOMAIN).unwrap_or_default();
            let preload = std::env::var("LD_PRELOAD").unwrap_or_default();
            let f = open_raw(&file, libc::O_RDONLY).unwrap();
            let (_r, w) = splicecow_test_harness::pipe().unwrap();
            let moved = splice_range(f.as_raw_fd(), 0, w.as_raw_fd(), 4096);
            println!("domain {env_domain} preload {preload} moved {moved}");
            i32::from(env_domain != domain || !preload.contains("libsplicecow") || moved != 4096)
        }
    };
    ExitCode::from(code as u8)
}

/// The lock file the torture cases use for `file`.
fn side_lock(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn torture_spawn(file: &Path, domain: &str) -> i32 {
    let exe = std::env::current_exe().unwrap();
    let args: Vec<CString> = [
        exe.as_os_str().as_bytes(),
        b"child",
        b"--file",
        file.as_os_str().as_bytes(),
        b"--domain",
        domain.as_bytes(),
    ]
    .iter()
    .map(|a| CString::new(*a).unwrap())
    .collect();
    let mut argv: Vec<*mut libc::c_char> = args.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv.push(std::ptr::null_mut());
    let pid = {
        let mut pid: libc::pid_t = 0;
        // SAFETY: argv and environ are NUL-terminated arrays of C strings.
        let r = unsafe {
            libc::posix_spawn(
                &mut pid,
                argv[0],
                std::ptr::null(),
                std::ptr::null(),
                argv.as_ptr(),
                environ,
            )
        };
        if r != 0 {
            eprintln!("posix_spawn: {}", io::Error::from_raw_os_error(r));
            return 2;
        }
        pid
    };
    if pid < 0 {
        eprintln!("posix_spawn: {}", io::Error::last_os_error());
        return 2;
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    i32::from(!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0))
}
