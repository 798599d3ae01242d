//! A worker thread's shared context: files, locks, the model of every file, and the
//! random mutations mirrored into the model.

use super::*;

/// Per-thread handles on the shared files.
pub(crate) struct Ctx<'a> {
    pub(crate) st: &'a Status,
    pub(crate) slot: Slot<'a>,
    pub(crate) dir: PathBuf,
    pub(crate) rng: Rng,
    pub(crate) data: Vec<OwnedFd>,
    pub(crate) model: Vec<File>,
    pub(crate) locks: Vec<OwnedFd>,
    pub(crate) side: Vec<u8>,
    pub(crate) side_fd: OwnedFd,
    pub(crate) max_size: usize,
    pub(crate) name: String,
    pub(crate) prints: usize,
    /// Consumers: `fifo`, `anon` or `mixed` (see `--pipes`).
    pub(crate) pipes: String,
    /// The data files this thread splices from and mutates.
    pub(crate) own: std::ops::Range<usize>,
    /// Percent of transfers that start at the end of the file (they move nothing).
    pub(crate) end_of_file_percent: usize,
    /// The kill counter of the domain whose pipes this thread writes or reads
    /// (`W_KILLS` or `W_KILLS_RELAY`).
    pub(crate) kills_word: usize,
}

/// Holds a data file's `flock` (released on drop, or by the kernel when we die).
pub(crate) struct FileLock {
    pub(crate) fd: RawFd,
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: fd is the lock file, open for the thread's lifetime.
        unsafe { libc::flock(self.fd, libc::LOCK_UN) };
    }
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        st: &'a Status,
        slot: usize,
        dir: &Path,
        seed: u64,
        files: usize,
        max_size: usize,
        name: String,
    ) -> io::Result<Ctx<'a>> {
        let mut data = Vec::new();
        let mut model = Vec::new();
        let mut locks = Vec::new();
        for k in 0..files {
            data.push(open_raw(&data_path(dir, k), libc::O_RDWR)?);
            model.push(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(model_path(dir, k))?,
            );
            locks.push(open_raw(&lock_path(dir, k), libc::O_RDWR | libc::O_CREAT)?);
        }
        let side_fd = open_raw(&dir.join("side"), libc::O_RDONLY)?;
        let side = pread_up_to(side_fd.as_raw_fd(), 0, SIDE_LEN);
        Ok(Ctx {
            st,
            slot: Slot::claim(st, slot),
            dir: dir.to_path_buf(),
            rng: Rng(seed ^ (slot as u64).wrapping_mul(0x1234_5678_9abc_def1)),
            data,
            model,
            locks,
            side,
            side_fd,
            max_size,
            name,
            prints: 0,
            pipes: String::new(),
            own: 0..files,
            end_of_file_percent: 3,
            kills_word: W_KILLS,
        })
    }

    /// Kills so far of processes that mutate files of this thread's domain.
    pub(crate) fn kills(&self) -> u64 {
        self.st.get(self.kills_word)
    }

    /// Reports a failure on stderr (the first few per thread) and counts it.
    pub(crate) fn fail(&mut self, counter: usize, msg: impl FnOnce() -> String) {
        self.st.add(counter, 1);
        if self.prints < 8 {
            self.prints += 1;
            eprintln!(
                "stress[{} pid {}]: {}",
                self.name,
                std::process::id(),
                msg()
            );
        }
    }

    /// Takes file `k`'s lock; repairs the model if a mutator died inside a mutation.
    pub(crate) fn lock(&mut self, k: usize) -> FileLock {
        self.slot.begin(Op::FileLock);
        self.st
            .slot(self.slot.idx, S_FILE)
            .store(k as u64, Ordering::Relaxed);
        let fd = self.locks[k].as_raw_fd();
        // SAFETY: fd is our lock file; EINTR is retried.
        while unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 && errno() == libc::EINTR {}
        let guard = FileLock { fd };
        if self.st.get(W_DIRTY + k) != 0 {
            // The previous holder died between mutating the file and its model: the
            // file is the truth (kernel calls are atomic enough); copy it to the model.
            let size = file_size(self.data[k].as_raw_fd());
            let content = pread_up_to(self.data[k].as_raw_fd(), 0, size);
            let m = &self.model[k];
            let _ = m.set_len(content.len() as u64);
            let _ = m.write_all_at(&content, 0);
            self.st.add(C_RESYNCS, 1);
            self.st.w(W_DIRTY + k).store(0, Ordering::SeqCst);
        }
        self.slot.end();
        guard
    }

    pub(crate) fn model_read(&self, k: usize, off: usize, len: usize) -> Vec<u8> {
        pread_up_to(self.model[k].as_raw_fd(), off, len)
    }

    /// Compares file `k`'s bytes `got` at `off` with its model.
    pub(crate) fn check_model(&mut self, k: usize, off: usize, got: &[u8]) {
        let want = self.model_read(k, off, got.len());
        if want != got {
            let first = want
                .iter()
                .zip(got)
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(got.len()));
            let (wl, gl) = (want.len(), got.len());
            self.fail(C_FILE_MISMATCHES, || {
                format!("FILE MISMATCH file f{k} range {off}+{gl}: model has {wl} bytes, first difference at +{first}")
            });
        }
    }

    /// Compares the whole of file `k` with its model (lock held).
    pub(crate) fn check_whole(&mut self, k: usize) {
        self.slot.begin(Op::ModelCheck);
        let size = file_size(self.data[k].as_raw_fd());
        let msize = self.model[k]
            .metadata()
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        if size != msize {
            self.fail(C_FILE_MISMATCHES, || {
                format!("FILE MISMATCH file f{k}: size {size}, model {msize}")
            });
        } else {
            let got = pread_up_to(self.data[k].as_raw_fd(), 0, size);
            self.check_model(k, 0, &got);
        }
        self.slot.end();
    }

    pub(crate) fn expect_ret(&mut self, what: &str, k: usize, ret: isize, want: isize) {
        if ret != want {
            let e = io::Error::last_os_error();
            self.fail(C_ERRORS, || {
                format!("{what} on f{k} returned {ret} (expected {want}): {e}")
            });
        }
    }

    pub(crate) fn model_write(&self, k: usize, off: usize, bytes: &[u8]) {
        let _ = self.model[k].write_all_at(bytes, off as u64);
    }
    pub(crate) fn model_zero(&self, k: usize, off: usize, len: usize) {
        self.model_write(k, off, &vec![0u8; len]);
    }
    pub(crate) fn model_set_len(&self, k: usize, len: usize) {
        let _ = self.model[k].set_len(len as u64);
    }

    /// A file this thread splices from and mutates (one of `own`).
    pub(crate) fn pick_file(&mut self) -> usize {
        self.own.start + self.rng.below(self.own.len())
    }

    /// Runs `change` (given the file's fd and size) on file `k` under the file's lock,
    /// with the file marked dirty until the model has followed; counts one mutation.
    pub(crate) fn mutation(&mut self, k: usize, change: impl FnOnce(&mut Self, RawFd, usize)) {
        let _lock = self.lock(k);
        let fd = self.data[k].as_raw_fd();
        let size = file_size(fd);
        let st = self.st;
        let dirty = st.w(W_DIRTY + k);
        dirty.store(self.slot.idx as u64 + 1, Ordering::SeqCst);
        change(self, fd, size);
        dirty.store(0, Ordering::SeqCst);
        self.slot.end();
        st.add(C_MUT_OPS, 1);
        if self.rng.chance(3) {
            self.check_whole(k);
        }
    }

    /// One random mutation of a random file, mirrored into the model.
    pub(crate) fn mutate(&mut self) {
        let k = self.pick_file();
        self.mutation(k, |c, fd, size| c.random_change(k, fd, size));
    }

    /// `pwrite` of `len` random bytes at `off` into file `k` (lock held), and the same
    /// into the model.
    pub(crate) fn pwrite_random(
        &mut self,
        k: usize,
        fd: RawFd,
        size: usize,
        off: usize,
        len: usize,
    ) {
        let mut buf = vec![0u8; len];
        self.rng.fill(&mut buf);
        self.slot.begin(Op::Pwrite);
        // SAFETY: buf holds len bytes.
        let r = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), len, off as libc::off_t) };
        self.expect_ret("pwrite", k, r, len as isize);
        self.model_write(k, off, &buf);
        if off > size {
            self.model_zero(k, size, off - size);
        }
    }

    /// `open(O_TRUNC)` of file `k` (lock held), then `len` bytes of fresh content written
    /// in chunks; the model follows.
    pub(crate) fn rewrite_truncated(&mut self, k: usize, len: usize) {
        let salt = self.rng.next() as usize;
        let content: Vec<u8> = (0..len).map(|i| pattern_byte(i + salt % 100_000)).collect();
        self.slot.begin(Op::OpenTrunc);
        match open_raw(&data_path(&self.dir, k), libc::O_WRONLY | libc::O_TRUNC) {
            Ok(w) => {
                self.model_set_len(k, 0);
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(self.rng.range(4096, 262144));
                    // SAFETY: content[done..done+n] is readable.
                    let r =
                        unsafe { libc::write(w.as_raw_fd(), content.as_ptr().add(done).cast(), n) };
                    self.expect_ret("write(after O_TRUNC)", k, r, n as isize);
                    if r <= 0 {
                        break;
                    }
                    done += r as usize;
                }
                self.model_write(k, 0, &content[..done]);
            }
            Err(e) => self.fail(C_ERRORS, || format!("open(O_TRUNC) f{k}: {e}")),
        }
    }

    /// One random change of file `k` (lock held, `size` bytes long), mirrored into the
    /// model.
    pub(crate) fn random_change(&mut self, k: usize, fd: RawFd, size: usize) {
        let max = self.max_size;
        let pick = self.rng.below(100);
        let off = self.rng.below(size + 1);
        let small = self.rng.range(1, 16384);
        match pick {
            0..=14 => {
                let len = small.min(max.saturating_sub(off)).max(1);
                self.pwrite_random(k, fd, size, off, len);
            }
            15..=24 => {
                let len = small.min(max.saturating_sub(off)).max(1);
                let mut buf = vec![0u8; len];
                self.rng.fill(&mut buf);
                self.slot.begin(Op::Write);
                // SAFETY: plain lseek + write of our buffer.
                let r = unsafe {
                    libc::lseek(fd, off as libc::off_t, libc::SEEK_SET);
                    libc::write(fd, buf.as_ptr().cast(), len)
                };
                self.expect_ret("write", k, r, len as isize);
                self.model_write(k, off, &buf);
            }
            25..=32 => {
                let len = small.min(max.saturating_sub(off)).max(2);
                let mut buf = vec![0u8; len];
                self.rng.fill(&mut buf);
                let cut = self.rng.range(1, len - 1);
                let iov = [
                    libc::iovec {
                        iov_base: buf.as_mut_ptr().cast(),
                        iov_len: cut,
                    },
                    libc::iovec {
                        iov_base: buf[cut..].as_mut_ptr().cast(),
                        iov_len: len - cut,
                    },
                ];
                self.slot.begin(Op::Pwritev);
                // SAFETY: both iovecs point into buf.
                let r = unsafe { libc::pwritev(fd, iov.as_ptr(), 2, off as libc::off_t) };
                self.expect_ret("pwritev", k, r, len as isize);
                self.model_write(k, off, &buf);
            }
            33..=42 if size > 0 => {
                let off = off.min(size - 1);
                let len = self.rng.range(1, 131072).min(size - off);
                let zero = pick >= 38;
                self.slot
                    .begin(if zero { Op::ZeroRange } else { Op::PunchHole });
                let mode = if zero {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                };
                // SAFETY: fallocate on our fd.
                let r =
                    unsafe { libc::fallocate(fd, mode, off as libc::off_t, len as libc::off_t) };
                self.expect_ret(
                    if zero {
                        "fallocate(ZERO_RANGE)"
                    } else {
                        "fallocate(PUNCH_HOLE)"
                    },
                    k,
                    r as isize,
                    0,
                );
                self.model_zero(k, off, len);
            }
            43..=49 if size > 3 * 4096 => {
                let blocks = size / 4096;
                let at = self.rng.below(blocks - 1) * 4096;
                let nblk = self.rng.range(1, 16).min((size - at - 1) / 4096).max(1);
                let len = nblk * 4096;
                if at + len < size {
                    self.slot.begin(Op::Collapse);
                    // SAFETY: fallocate on our fd.
                    let r = unsafe {
                        libc::fallocate(
                            fd,
                            libc::FALLOC_FL_COLLAPSE_RANGE,
                            at as libc::off_t,
                            len as libc::off_t,
                        )
                    };
                    self.expect_ret("fallocate(COLLAPSE_RANGE)", k, r as isize, 0);
                    let tail = self.model_read(k, at + len, size - at - len);
                    self.model_write(k, at, &tail);
                    self.model_set_len(k, size - len);
                }
            }
            50..=56 if size > 4096 => {
                let at = self.rng.below(size / 4096) * 4096;
                let len = self.rng.range(1, 16) * 4096;
                if size + len <= max {
                    self.slot.begin(Op::Insert);
                    // SAFETY: fallocate on our fd.
                    let r = unsafe {
                        libc::fallocate(
                            fd,
                            libc::FALLOC_FL_INSERT_RANGE,
                            at as libc::off_t,
                            len as libc::off_t,
                        )
                    };
                    self.expect_ret("fallocate(INSERT_RANGE)", k, r as isize, 0);
                    let tail = self.model_read(k, at, size - at);
                    self.model_write(k, at + len, &tail);
                    self.model_zero(k, at, len);
                }
            }
            57..=64 => {
                let down = self.rng.below(size + 1);
                let up = self.rng.range(down, size.max(down));
                self.slot.begin(Op::TruncDownUp);
                // SAFETY: ftruncate on our fd.
                let r = unsafe { libc::ftruncate(fd, down as libc::off_t) };
                self.expect_ret("ftruncate(down)", k, r as isize, 0);
                self.model_set_len(k, down);
                // SAFETY: as above.
                let r = unsafe { libc::ftruncate(fd, up as libc::off_t) };
                self.expect_ret("ftruncate(up)", k, r as isize, 0);
                self.model_set_len(k, up);
            }
            65..=70 => {
                let to = self.rng.range(size / 2, (size + 65536).min(max));
                self.slot.begin(Op::TruncatePath);
                let c = cpath(&data_path(&self.dir, k)).expect("path without NUL");
                // SAFETY: c is a valid path.
                let r = unsafe { libc::truncate(c.as_ptr(), to as libc::off_t) };
                self.expect_ret("truncate", k, r as isize, 0);
                self.model_set_len(k, to);
            }
            71..=74 => {
                let len = self.rng.range(65536, max / 2);
                self.rewrite_truncated(k, len);
            }
            75..=84 if size > 0 => {
                let off = off.min(size - 1);
                let len = small.min(size - off);
                let mut buf = vec![0u8; len];
                self.rng.fill(&mut buf);
                self.slot.begin(Op::MmapStore);
                // SAFETY: a fresh shared mapping of our file, checked below.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        size,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        fd,
                        0,
                    )
                };
                if p == libc::MAP_FAILED {
                    let e = io::Error::last_os_error();
                    self.fail(C_ERRORS, || format!("mmap(MAP_SHARED) f{k}: {e}"));
                } else {
                    // SAFETY: [off, off+len) lies inside the size-byte mapping (and the
                    // file, which cannot shrink: we hold its lock).
                    unsafe {
                        std::ptr::copy_nonoverlapping(buf.as_ptr(), p.cast::<u8>().add(off), len);
                        libc::munmap(p, size);
                    }
                    self.model_write(k, off, &buf);
                }
            }
            _ => {
                let soff = self.rng.below(SIDE_LEN);
                let len = small
                    .min(SIDE_LEN - soff)
                    .min(max.saturating_sub(off))
                    .max(1);
                let (mut so, mut o) = (soff as i64, off as i64);
                self.slot.begin(Op::CopyFileRange);
                // SAFETY: both offsets point to our locals.
                let r = unsafe {
                    libc::copy_file_range(self.side_fd.as_raw_fd(), &mut so, fd, &mut o, len, 0)
                };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    self.fail(C_ERRORS, || format!("copy_file_range into f{k}: {e}"));
                } else {
                    let r = r as usize;
                    let bytes = self.side[soff..soff + r].to_vec();
                    if off > size {
                        self.model_zero(k, size, off - size);
                    }
                    self.model_write(k, off, &bytes);
                }
            }
        }
    }
}
