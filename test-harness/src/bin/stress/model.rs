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

    /// Applies `edit` to file `k` (open at `fd`, lock held) with the harness's one
    /// [`apply`], publishing the mutation as this thread's operation; returns what the
    /// call returned, or `None` (counted as an error) when it failed or returned other
    /// than `want` (`None`: any count).
    pub(crate) fn change(
        &mut self,
        k: usize,
        fd: RawFd,
        edit: &Edit,
        want: Option<i64>,
    ) -> Option<i64> {
        self.slot.begin_mutation(edit.kind);
        let side = self.side_fd.as_raw_fd();
        let res = Target::new(&data_path(&self.dir, k), Some(fd))
            .and_then(|t| apply(&mut t.source(side), edit));
        let what = value_name(&edit.kind);
        match res {
            Ok(Applied::Done(r)) if want.is_none_or(|w| w == r) => Some(r),
            Ok(Applied::Done(r)) => {
                let e = io::Error::last_os_error();
                self.fail(C_ERRORS, || {
                    format!("{what} on f{k} returned {r} (expected {want:?}): {e}")
                });
                None
            }
            Ok(Applied::Unsupported) => {
                self.fail(C_ERRORS, || format!("{what} on f{k}: not supported"));
                None
            }
            Err(e) => {
                self.fail(C_ERRORS, || format!("f{k}: {e}"));
                None
            }
        }
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
        let edit = self.random_write(Mutation::Pwrite, off, len);
        self.change(k, fd, &edit, Some(len as i64));
        self.model_write(k, off, &edit.data);
        if off > size {
            self.model_zero(k, size, off - size);
        }
    }

    /// `kind` putting `len` random bytes at `off`.
    pub(crate) fn random_write(&mut self, kind: Mutation, off: usize, len: usize) -> Edit {
        let mut data = vec![0u8; len];
        self.rng.fill(&mut data);
        Edit {
            kind,
            off: off as u64,
            len: 0,
            data,
            src_off: 0,
        }
    }

    /// `kind` acting on `len` bytes at `off` (ranges, truncations, copies).
    pub(crate) fn ranged(kind: Mutation, off: usize, len: usize) -> Edit {
        Edit {
            kind,
            off: off as u64,
            len: len as u64,
            data: Vec::new(),
            src_off: 0,
        }
    }

    /// `open(O_TRUNC)` of file `k` (lock held), then `len` bytes of fresh content
    /// written; the model follows.
    pub(crate) fn rewrite_truncated(&mut self, k: usize, len: usize) {
        let salt = self.rng.next() as usize;
        let content: Vec<u8> = (0..len).map(|i| pattern_byte(i + salt % 100_000)).collect();
        let fd = self.data[k].as_raw_fd();
        let edit = Edit {
            data: content,
            ..Ctx::ranged(Mutation::OpenTrunc, 0, 0)
        };
        if self.change(k, fd, &edit, Some(0)).is_some() {
            self.model_set_len(k, 0);
            self.model_write(k, 0, &edit.data);
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
            15..=32 => {
                let (kind, least) = if pick <= 24 {
                    (Mutation::Write, 1)
                } else {
                    (Mutation::Pwritev, 2)
                };
                let len = small.min(max.saturating_sub(off)).max(least);
                let edit = self.random_write(kind, off, len);
                self.change(k, fd, &edit, Some(len as i64));
                self.model_write(k, off, &edit.data);
            }
            33..=42 if size > 0 => {
                let off = off.min(size - 1);
                let len = self.rng.range(1, 131072).min(size - off);
                let kind = if pick >= 38 {
                    Mutation::ZeroRange
                } else {
                    Mutation::PunchHole
                };
                self.change(k, fd, &Ctx::ranged(kind, off, len), Some(0));
                self.model_zero(k, off, len);
            }
            43..=49 if size > 3 * 4096 => {
                let blocks = size / 4096;
                let at = self.rng.below(blocks - 1) * 4096;
                let nblk = self.rng.range(1, 16).min((size - at - 1) / 4096).max(1);
                let len = nblk * 4096;
                if at + len < size {
                    self.change(
                        k,
                        fd,
                        &Ctx::ranged(Mutation::CollapseRange, at, len),
                        Some(0),
                    );
                    let tail = self.model_read(k, at + len, size - at - len);
                    self.model_write(k, at, &tail);
                    self.model_set_len(k, size - len);
                }
            }
            50..=56 if size > 4096 => {
                let at = self.rng.below(size / 4096) * 4096;
                let len = self.rng.range(1, 16) * 4096;
                if size + len <= max {
                    self.change(k, fd, &Ctx::ranged(Mutation::InsertRange, at, len), Some(0));
                    let tail = self.model_read(k, at, size - at);
                    self.model_write(k, at + len, &tail);
                    self.model_zero(k, at, len);
                }
            }
            57..=64 => {
                let down = self.rng.below(size + 1);
                let up = self.rng.range(down, size.max(down));
                for to in [down, up] {
                    self.change(k, fd, &Ctx::ranged(Mutation::Ftruncate, 0, to), Some(0));
                    self.model_set_len(k, to);
                }
            }
            65..=70 => {
                let to = self.rng.range(size / 2, (size + 65536).min(max));
                self.change(k, fd, &Ctx::ranged(Mutation::Truncate, 0, to), Some(0));
                self.model_set_len(k, to);
            }
            71..=74 => {
                let len = self.rng.range(65536, max / 2);
                self.rewrite_truncated(k, len);
            }
            75..=84 if size > 0 => {
                let off = off.min(size - 1);
                let len = small.min(size - off);
                let edit = self.random_write(Mutation::MmapSharedStore, off, len);
                if self.change(k, fd, &edit, Some(0)).is_some() {
                    self.model_write(k, off, &edit.data);
                }
            }
            _ => {
                let soff = self.rng.below(SIDE_LEN);
                let len = small
                    .min(SIDE_LEN - soff)
                    .min(max.saturating_sub(off))
                    .max(1);
                let edit = Edit {
                    src_off: soff as u64,
                    ..Ctx::ranged(Mutation::CopyFileRange, off, len)
                };
                if let Some(r) = self.change(k, fd, &edit, None) {
                    let bytes = self.side[soff..soff + r as usize].to_vec();
                    if off > size {
                        self.model_zero(k, size, off - size);
                    }
                    self.model_write(k, off, &bytes);
                }
            }
        }
    }
}
