//! The battery's state (files, pipes, what every call printed) and its run: one family
//! of hooked calls after the other.

use super::*;

/// State of the errno battery: the main file (`F`, 64 KiB, read-write), a side file
/// (`G`), a read-only fd of `F`, the odd sources of the splice cases, and every pipe made
/// along the way (kept open so that fd numbers and pipe states stay comparable between
/// runs).
pub(crate) struct Battery {
    pub(crate) f: RawFd,
    pub(crate) g: RawFd,
    pub(crate) f_rdonly: RawFd,
    /// `F` opened with `O_PATH`.
    pub(crate) f_opath: RawFd,
    /// A read-only pattern file of [`BIG_LEN`] bytes, never mutated.
    pub(crate) big: RawFd,
    /// The same file opened with `O_DIRECT`.
    pub(crate) big_direct: RawFd,
    /// An empty file.
    pub(crate) empty: RawFd,
    /// `/proc/self/maps`: a regular file the kernel cannot splice from.
    pub(crate) maps: RawFd,
    /// A read-only page holding offset 0: the kernel reads it, then fails to write the
    /// advanced offset back (`EFAULT` after the bytes moved).
    pub(crate) ro_off: *mut loff_t,
    pub(crate) f_path: CString,
    pub(crate) dir_path: CString,
    pub(crate) link_path: CString,
    pub(crate) files: Vec<TempFile>,
    /// The empty directory the `EISDIR` cases use (removed on drop).
    pub(crate) dir: Option<PathBuf>,
    pub(crate) fds: Vec<OwnedFd>,
    /// Whether each case first leaves 4 KiB of `F` in flight in a fresh pipe.
    pub(crate) case_splices: bool,
    pub(crate) out: io::StdoutLock<'static>,
}

impl Drop for Battery {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Battery {
    pub(crate) fn new(case_splices: bool) -> Res<Battery> {
        let fmain =
            TempFile::with_pattern("fidelity-f", FLEN).map_err(|e| Error::from(e.to_string()))?;
        let gside =
            TempFile::with_pattern("fidelity-g", FLEN).map_err(|e| Error::from(e.to_string()))?;
        let dir = temp_path("fidelity-dir");
        std::fs::create_dir(&dir).map_err(|e| Error::from(e.to_string()))?;
        let link = temp_path("fidelity-link");
        std::os::unix::fs::symlink(fmain.path(), &link).map_err(|e| Error::from(e.to_string()))?;
        let bigfile = TempFile::with_pattern("fidelity-big", BIG_LEN)
            .map_err(|e| Error::from(e.to_string()))?;
        let emptyfile =
            TempFile::with_pattern("fidelity-empty", 0).map_err(|e| Error::from(e.to_string()))?;
        let f = open_with(fmain.path(), true, true)?;
        let g = open_with(gside.path(), true, true)?;
        let f_rdonly = open_with(fmain.path(), false, true)?;
        let f_opath = open_raw(fmain.path(), libc::O_PATH)?;
        let big = open_with(bigfile.path(), false, true)?;
        let big_direct = open_raw(bigfile.path(), libc::O_RDONLY | libc::O_DIRECT)?;
        let empty = open_with(emptyfile.path(), false, true)?;
        let maps = open_with(Path::new("/proc/self/maps"), false, true)?;
        // SAFETY: a fresh anonymous mapping of our own (zero-filled), never unmapped.
        let ro_off = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ro_off == libc::MAP_FAILED {
            return Err(os_err("mmap"));
        }
        let mut b = Battery {
            f: f.as_raw_fd(),
            g: g.as_raw_fd(),
            f_rdonly: f_rdonly.as_raw_fd(),
            f_opath: f_opath.as_raw_fd(),
            big: big.as_raw_fd(),
            big_direct: big_direct.as_raw_fd(),
            empty: empty.as_raw_fd(),
            maps: maps.as_raw_fd(),
            ro_off: ro_off.cast(),
            f_path: cpath(fmain.path())?,
            dir_path: cpath(&dir)?,
            link_path: cpath(&link)?,
            files: vec![fmain, gside, TempFile::adopt(link), bigfile, emptyfile],
            dir: None,
            fds: vec![f, g, f_rdonly, f_opath, big, big_direct, empty, maps],
            case_splices,
            out: io::stdout().lock(),
        };
        b.dir = Some(dir);
        Ok(b)
    }

    /// A fresh pipe (kept open until the end); returns raw (read, write) fds.
    pub(crate) fn pipe(&mut self, flags: c_int) -> Res<(RawFd, RawFd)> {
        let (r, w) = pipe_with(flags)?;
        let fds = (r.as_raw_fd(), w.as_raw_fd());
        self.fds.push(r);
        self.fds.push(w);
        Ok(fds)
    }

    /// A fresh pipe holding 4 KiB spliced from `F` (a tracked pipe under the shim).
    pub(crate) fn loaded_pipe(&mut self, flags: c_int) -> Res<(RawFd, RawFd)> {
        let (r, w) = self.pipe(flags)?;
        splice_exact(self.f, 0, w, 4096)?;
        Ok((r, w))
    }

    /// A fresh pipe whose read end is closed (writing into it is `EPIPE`); its write end.
    pub(crate) fn pipe_without_readers(&mut self) -> Res<RawFd> {
        let (r, w) = self.pipe(0)?;
        self.close(r);
        Ok(w)
    }

    /// A fresh pipe holding `len` written bytes (so its next buffer starts a new page).
    pub(crate) fn written_pipe(&mut self, len: usize) -> Res<(RawFd, RawFd)> {
        let (r, w) = self.pipe(0)?;
        write_all_fd(w, &vec![b'w'; len])?;
        Ok((r, w))
    }

    /// Closes `fd` (one end of a pipe made by [`Battery::pipe`]).
    pub(crate) fn close(&mut self, fd: RawFd) {
        self.fds.retain(|owned| owned.as_raw_fd() != fd);
    }

    /// A fresh, completely full pipe.
    pub(crate) fn full_pipe(&mut self, flags: c_int) -> Res<(RawFd, RawFd)> {
        let (r, w) = self.pipe(flags)?;
        fill(w)?;
        Ok((r, w))
    }

    /// Puts `F` back to its original 64 KiB content (after truncating cases).
    pub(crate) fn restore(&mut self) -> Res<()> {
        let data = pattern(FLEN);
        // SAFETY: data is valid for FLEN bytes.
        if unsafe { libc::pwrite(self.f, data.as_ptr().cast(), FLEN, 0) } != FLEN as isize {
            return Err(os_err("restore pwrite"));
        }
        // SAFETY: plain fd call.
        unsafe { libc::ftruncate(self.f, FLEN as off_t) };
        Ok(())
    }

    /// Runs one case: leaves 4 KiB of `F` in flight in a fresh pipe (unless told not
    /// to), clears `errno`, calls, and prints `name ret errno off=<F offset> size=<F
    /// size>`. The name is printed first: a call still running after [`CASE_TIMEOUT_S`]
    /// ends the process (`SIGALRM`), and the unfinished last line names it.
    pub(crate) fn case(&mut self, name: &str, call: impl FnOnce() -> i64) -> Res<()> {
        if self.case_splices {
            self.loaded_pipe(0)?;
        }
        write!(self.out, "{name} ")
            .and_then(|()| self.out.flush())
            .map_err(|e| Error::from(e.to_string()))?;
        set_errno(0);
        // SAFETY: alarm takes no pointer.
        unsafe { libc::alarm(CASE_TIMEOUT_S) };
        let ret = call();
        let e = errno();
        // SAFETY: as above; cancels the alarm.
        unsafe { libc::alarm(0) };
        // SAFETY: plain fd calls; st is a valid stat buffer.
        let (off, size) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(self.f, &mut st);
            (cursor(self.f), st.st_size)
        };
        writeln!(self.out, "{ret} {e} off={off} size={size}")
            .map_err(|e| Error::from(e.to_string()))
    }

    /// Prints `name.what value` (pipe levels, offsets written back by the kernel).
    pub(crate) fn state(
        &mut self,
        name: &str,
        what: &str,
        value: impl std::fmt::Display,
    ) -> Res<()> {
        writeln!(self.out, "{name}.{what} {value}").map_err(|e| Error::from(e.to_string()))
    }

    /// Sets `F`'s offset.
    pub(crate) fn seek(&self, off: usize) {
        seek(self.f, off);
    }
}

/// A file→pipe call of the battery: `splice` with these flags, or `sendfile(64)`.
#[derive(Clone, Copy)]
pub(crate) enum FileToPipeFn {
    Splice(c_uint),
    Sendfile(SendfileFn),
}

impl FileToPipeFn {
    /// Moves up to `len` bytes of `from` at `*off` (null: at the fd's offset) into `to`.
    ///
    /// # Safety
    ///
    /// `off` is null, points at a `loff_t` the call may read and write, or deliberately
    /// at memory the kernel refuses (`EFAULT`), never at memory of this process that a
    /// write would corrupt.
    pub(crate) unsafe fn call(self, from: RawFd, off: *mut loff_t, to: RawFd, len: usize) -> isize {
        // SAFETY: the caller vouches for off; fds are plain numbers.
        unsafe {
            match self {
                FileToPipeFn::Splice(flags) => libc::splice(from, off, to, NULL_OFF, len, flags),
                FileToPipeFn::Sendfile(sf) => sf(to, from, off, len),
            }
        }
    }
}

/// A row of a table of file→pipe cases: name, source, `off_in` (`None`: the source's own
/// offset), destination (`None`: a fresh pipe), length.
pub(crate) type TransferRow<'a> = (&'a str, RawFd, Option<loff_t>, Option<RawFd>, usize);

impl Battery {
    /// Runs every row of `rows` through `via` ([`Battery::transfer`] or, into a fresh
    /// pipe, [`Battery::transfer_fresh`]), as `prefix.name`.
    pub(crate) fn transfers(
        &mut self,
        prefix: &str,
        via: FileToPipeFn,
        rows: &[TransferRow],
    ) -> Res<()> {
        for &(case, from, off_in, into, len) in rows {
            let name = format!("{prefix}.{case}");
            match into {
                Some(to) => self.transfer(&name, via, from, off_in, to, len)?,
                None => self.transfer_fresh(&name, via, from, off_in, len)?,
            }
        }
        Ok(())
    }

    /// One file→pipe case through `via`: up to `len` bytes of `from` into `to`, with the
    /// offset pointer at a local holding `off_in` (`None`: a null pointer, the fd's own
    /// offset), which is printed after the call as the kernel left it.
    pub(crate) fn transfer(
        &mut self,
        name: &str,
        via: FileToPipeFn,
        from: RawFd,
        off_in: Option<loff_t>,
        to: RawFd,
        len: usize,
    ) -> Res<()> {
        let mut off = off_in.unwrap_or(0);
        let p: *mut loff_t = if off_in.is_some() { &mut off } else { NULL_OFF };
        // SAFETY: p is null or points at a live local.
        self.case(name, || unsafe { via.call(from, p, to, len) } as i64)?;
        if off_in.is_some() {
            self.state(name, "off_in", off)?;
        }
        Ok(())
    }

    /// [`Battery::transfer`] into a fresh pipe, whose level and content (read right
    /// away, before any case mutates a file) are printed after the case.
    pub(crate) fn transfer_fresh(
        &mut self,
        name: &str,
        via: FileToPipeFn,
        from: RawFd,
        off_in: Option<loff_t>,
        len: usize,
    ) -> Res<()> {
        let (r, w) = self.pipe(0)?;
        self.transfer(name, via, from, off_in, w, len)?;
        let level = queued(r);
        self.state(name, "queued", level)?;
        let mut got = vec![0u8; level];
        let mut done = 0;
        while done < level {
            // SAFETY: got[done..] is valid for writes; the pipe holds that many bytes.
            let n = unsafe { libc::read(r, got[done..].as_mut_ptr().cast(), level - done) };
            if n <= 0 {
                return Err(os_err("read back"));
            }
            done += n as usize;
        }
        self.state(name, "bytes_fnv", format!("{:016x}", fnv(FNV_START, &got)))
    }
}

/// Sets `fd`'s offset.
pub(crate) fn seek(fd: RawFd, off: usize) {
    // SAFETY: plain fd call.
    unsafe { libc::lseek(fd, off as off_t, libc::SEEK_SET) };
}

/// `fd`'s offset (-1 when it has none).
pub(crate) fn cursor(fd: RawFd) -> i64 {
    // SAFETY: plain fd call.
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

pub(crate) type SpliceFn =
    unsafe extern "C" fn(c_int, *mut loff_t, c_int, *mut loff_t, size_t, c_uint) -> ssize_t;
pub(crate) type SendfileFn = unsafe extern "C" fn(c_int, c_int, *mut off_t, size_t) -> ssize_t;
pub(crate) type PwriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t;
pub(crate) type PwritevFn =
    unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off_t) -> ssize_t;
pub(crate) type Pwritev2Fn =
    unsafe extern "C" fn(c_int, *const libc::iovec, c_int, off_t, c_int) -> ssize_t;
pub(crate) type FallocateFn = unsafe extern "C" fn(c_int, c_int, off_t, off_t) -> c_int;
pub(crate) type FtruncateFn = unsafe extern "C" fn(c_int, off_t) -> c_int;
pub(crate) type TruncateFn = unsafe extern "C" fn(*const c_char, off_t) -> c_int;
pub(crate) type OpenFn = unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
pub(crate) type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
pub(crate) type CreatFn = unsafe extern "C" fn(*const c_char, libc::mode_t) -> c_int;
pub(crate) type FopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;
pub(crate) type FreopenFn =
    unsafe extern "C" fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE;

/// `FIDEDUPERANGE`: `_IOWR(0x94, 54, struct file_dedupe_range)` (not in the libc crate).
pub(crate) const FIDEDUPERANGE: libc::c_ulong = 0xC018_9436;
pub(crate) const NULL_OFF: *mut loff_t = std::ptr::null_mut();
pub(crate) const NB: c_uint = libc::SPLICE_F_NONBLOCK;

/// FNV-1a of `bytes`, continuing from `h`.
pub(crate) fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &c| (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3))
}

/// FNV-1a offset basis.
pub(crate) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Raises the soft `RLIMIT_NOFILE` to `want` fds (at most the hard limit).
pub(crate) fn raise_fd_limit(want: libc::rlim_t) -> Res<()> {
    // SAFETY: lim is a valid rlimit for getrlimit to fill and setrlimit to read.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(os_err("getrlimit"));
        }
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(os_err("setrlimit"));
            }
        }
    }
    Ok(())
}

/// `fidelity battery`.
pub(crate) fn battery(case_splices: bool) -> Res<()> {
    // About a thousand fds, and duplicates at HIGH_FD.
    raise_fd_limit(FD_LIMIT)?;
    prime()?;
    // SAFETY: querying fd CLOSED only.
    if unsafe { libc::fcntl(CLOSED, libc::F_GETFD) } != -1 {
        return Err(format!("fd {CLOSED} is open").into());
    }
    let mut b = Battery::new(case_splices)?;
    battery_splice(&mut b)?;
    battery_sendfile(&mut b)?;
    battery_write(&mut b)?;
    battery_pwrite(&mut b)?;
    battery_sizes(&mut b)?;
    battery_open(&mut b)?;
    battery_other_paths(&mut b)?;
    battery_fds(&mut b)?;
    let content = std::fs::read(b.files[0].path()).map_err(|e| Error::from(e.to_string()))?;
    b.state(
        "final",
        "file_fnv",
        format!("{:016x}", fnv(FNV_START, &content)),
    )?;
    let total: usize = b.fds.iter().map(|fd| queued(fd.as_raw_fd())).sum();
    b.state("final", "queued_in_all_pipes", total)
}
