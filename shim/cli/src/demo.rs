//! `splicecow demo`: the splice hazard, side by side without and with splicecow.
//!
//! Each case runs in a fresh process (`splicecow demo-case CASE`), so that the
//! protected run is a process with the library preloaded from its start.

use crate::library_path;
use clap::ValueEnum;
use splicecow_registry::env::{self as names, Mode};
use splicecow_registry::pattern::pattern;
use splicecow_registry::Registry;
use std::ffi::CString;
use std::io::{Error, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bytes spliced into the pipe in every case.
const SPLICED: usize = 64 * 1024;
/// Size of the file the cases splice from.
const FILE_SIZE: usize = 256 * 1024;
/// `statfs` magic of tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A reproducer case: how the bytes get into the pipe and how the file then changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Case {
    /// splice, then pwrite 16 bytes at offset 100.
    Pwrite,
    /// splice, then punch a hole over 0..65536.
    PunchHole,
    /// splice, then ftruncate to 30000 bytes.
    Ftruncate,
    /// sendfile into the pipe, then pwrite 16 bytes at offset 100.
    Sendfile,
    /// splice, then another process pwrites 16 bytes at offset 100.
    CrossProcessPwrite,
    /// splice, then another process punches a hole over 0..65536.
    CrossProcessPunchHole,
}

impl Case {
    /// The case's name on the command line.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// What a case read back from the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes that differ from what the file held when spliced.
    pub mismatched: u64,
    /// Offset of the first differing byte.
    pub first_mismatch: Option<u64>,
}

/// A directory for scratch files on a real filesystem: `/var/tmp` when it is writable
/// and not tmpfs, else the temporary directory.
pub fn scratch_dir() -> PathBuf {
    let var_tmp = Path::new("/var/tmp");
    let c = CString::new(var_tmp.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: statfs writes only to `st`; access reads a NUL-terminated path.
    let usable = unsafe {
        let mut st = std::mem::zeroed::<libc::statfs>();
        libc::statfs(c.as_ptr(), &mut st) == 0
            && st.f_type as i64 != TMPFS_MAGIC
            && libc::access(c.as_ptr(), libc::W_OK) == 0
    };
    if usable {
        var_tmp.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Removes the scratch file when the case ends, however it ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Converts a `-1` return into the errno, with what failed.
fn check(r: isize, what: &str) -> Result<usize, String> {
    if r < 0 {
        Err(format!("{what}: {}", Error::last_os_error()))
    } else {
        Ok(r as usize)
    }
}

/// The mutation of `case`, done by this process. Only async-signal-safe calls: it also
/// runs in a forked child.
fn mutate(case: Case, fd: i32) -> isize {
    const BS: [u8; 16] = [b'B'; 16];
    // SAFETY: fd is open; BS outlives the call.
    unsafe {
        match case {
            Case::Pwrite | Case::Sendfile | Case::CrossProcessPwrite => {
                libc::pwrite(fd, BS.as_ptr().cast(), BS.len(), 100)
            }
            Case::PunchHole | Case::CrossProcessPunchHole => libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                SPLICED as libc::off_t,
            ) as isize,
            Case::Ftruncate => libc::ftruncate(fd, 30_000) as isize,
        }
    }
}

/// Runs `case` in this process: write the file, move 64 KiB into a pipe, change the
/// file, read the pipe and compare.
pub fn run_case(case: Case) -> Result<Outcome, String> {
    let content = pattern(FILE_SIZE);
    let path = scratch_dir().join(format!(
        "splicecow-demo-{}-{}.dat",
        std::process::id(),
        case.name()
    ));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let _scratch = Scratch(path);
    file.write_all(&content)
        .map_err(|e| format!("writing: {e}"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);

    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) } as isize, "pipe")?;
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: plain fcntl on our pipe; failing only leaves the default 64 KiB.
    unsafe { libc::fcntl(wr, libc::F_SETPIPE_SZ, 2 * SPLICED as libc::c_int) };

    let result = (|| {
        let mut moved = 0;
        while moved < SPLICED {
            let mut off = moved as libc::loff_t;
            let want = SPLICED - moved;
            // SAFETY: valid fds and a valid offset pointer; the kernel moves at most
            // `want` bytes (the pipe has room for all of them).
            let n = unsafe {
                if case == Case::Sendfile {
                    libc::sendfile(wr, fd, &mut off, want)
                } else {
                    libc::splice(fd, &mut off, wr, std::ptr::null_mut(), want, 0)
                }
            };
            match check(n, "splice")? {
                0 => break,
                n => moved += n,
            }
        }

        if matches!(case, Case::CrossProcessPwrite | Case::CrossProcessPunchHole) {
            // SAFETY: this process is single-threaded; the child only makes
            // async-signal-safe calls (the mutation, _exit).
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let code = if mutate(case, fd) < 0 { 1 } else { 0 };
                // SAFETY: leaves the child without running the parent's destructors.
                unsafe { libc::_exit(code) };
            }
            check(pid as isize, "fork")?;
            let mut st = 0;
            // SAFETY: waits for our own child.
            let waited = unsafe { libc::waitpid(pid, &mut st, 0) };
            check(waited as isize, "waitpid")?;
            if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
                return Err("the mutating child process failed".to_string());
            }
        } else {
            check(mutate(case, fd), "mutation")?;
        }

        let mut got = vec![0u8; moved];
        let mut read = 0;
        while read < moved {
            // SAFETY: reads into the unfilled tail of `got`.
            let n = unsafe { libc::read(rd, got[read..].as_mut_ptr().cast(), moved - read) };
            match check(n, "reading the pipe")? {
                0 => break,
                n => read += n,
            }
        }
        got.truncate(read);
        let mut mismatched = (moved - read) as u64;
        let mut first_mismatch = (read < moved).then_some(read as u64);
        for (i, (a, b)) in got.iter().zip(&content).enumerate() {
            if a != b {
                mismatched += 1;
                first_mismatch = Some(first_mismatch.map_or(i as u64, |f| f.min(i as u64)));
            }
        }
        Ok(Outcome {
            mismatched,
            first_mismatch,
        })
    })();
    // SAFETY: closing the two pipe fds we own.
    unsafe {
        libc::close(rd);
        libc::close(wr);
    }
    result
}

/// `splicecow demo-case CASE`: one JSON line on stdout; exit 0, or 1 on failure.
pub fn case_main(case: Case) -> i32 {
    match run_case(case) {
        Ok(o) => {
            let line = serde_json::json!({
                "case": case.name(),
                "mismatched_bytes": o.mismatched,
                "first_mismatch": o.first_mismatch,
            });
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("splicecow: demo case {}: {e}", case.name());
            1
        }
    }
}

/// Runs `case` in a fresh `splicecow demo-case` process: without splicecow when
/// `protect` is `None`, else with the library preloaded in the given domain.
pub fn run_case_process(case: Case, protect: Option<(&Path, &str)>) -> Result<Outcome, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("demo-case")
        .arg(case.name())
        .env_remove("LD_PRELOAD");
    for (k, _) in std::env::vars_os() {
        if k.as_bytes().starts_with(names::PREFIX.as_bytes()) {
            cmd.env_remove(k);
        }
    }
    if let Some((lib, domain)) = protect {
        cmd.env("LD_PRELOAD", lib)
            .env(names::DOMAIN, domain)
            .env(names::MODE, Mode::Protect.name());
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run demo-case: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let parsed = serde_json::from_str::<serde_json::Value>(line).ok();
    match parsed.filter(|_| out.status.success()) {
        Some(v) => Ok(Outcome {
            mismatched: v["mismatched_bytes"].as_u64().unwrap_or(0),
            first_mismatch: v["first_mismatch"].as_u64(),
        }),
        None => {
            let err = String::from_utf8_lossy(&out.stderr);
            let reason = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            Err(format!("{} {}", out.status, reason.trim()))
        }
    }
}

fn cell(r: &Result<Outcome, String>) -> String {
    match r {
        Ok(o) if o.mismatched == 0 => "exact".to_string(),
        Ok(o) => format!("corrupted ({} bytes differ)", o.mismatched),
        Err(e) => format!("failed: {e}"),
    }
}

/// Runs `splicecow demo`; returns the exit status.
pub fn main() -> i32 {
    let lib = library_path();
    if !lib.is_file() {
        eprintln!(
            "splicecow: the library {} does not exist (build it with `cargo build --release`, or set SPLICECOW_LIB)",
            lib.display()
        );
        return 2;
    }
    let domain = format!("demo-{}", std::process::id());
    let created = Registry::open_or_create(&domain).is_ok();

    let header = ["case", "without splicecow", "with splicecow"];
    let mut rows = Vec::new();
    let mut all_exact = true;
    for case in Case::value_variants() {
        let bare = run_case_process(*case, None);
        let protected = run_case_process(*case, Some((&lib, &domain)));
        all_exact &= matches!(protected, Ok(o) if o.mismatched == 0);
        rows.push([case.name(), cell(&bare), cell(&protected)]);
    }
    if created {
        let _ = Registry::unlink(&domain);
    }

    println!("Splice 64 KiB of a file into a pipe, change the file, then read the pipe:\n");
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 3]| {
        format!(
            "{:w0$} | {:w1$} | {}",
            cells[0],
            cells[1],
            cells[2],
            w0 = widths[0],
            w1 = widths[1]
        )
    };
    println!("{}", line(header));
    println!(
        "{}-|-{}-|-{}",
        "-".repeat(widths[0]),
        "-".repeat(widths[1]),
        "-".repeat(widths[2])
    );
    for row in &rows {
        println!("{}", line([&row[0], &row[1], &row[2]]));
    }
    println!();
    if all_exact {
        println!("With splicecow every reader got exactly the bytes that were spliced.");
        0
    } else {
        println!("Some protected run did not read back the spliced bytes exactly.");
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_distinguishes_pages() {
        let p = pattern(FILE_SIZE);
        assert_ne!(p[0..4096], p[4096..8192]);
        assert_eq!(p[1], 7);
    }
}
