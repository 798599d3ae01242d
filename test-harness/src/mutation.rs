//! The one vocabulary of file mutations: every way the harness changes a file
//! ([`Mutation`]), where and with what bytes one change acts ([`Edit`]), and the one
//! [`apply`] the scenario, snapshot and stress programs make each change with.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::sys::{check, cpath, os_err, page_size, write_all_fd, Error, Res};

/// Which process applies the mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mutator {
    /// The splicing process itself (fd-based mutations use the spliced fd).
    Same,
    /// A separate process (the scenario binary re-executed with `--do-mutation`).
    Other,
}

/// A way of changing the file after its bytes were spliced. The offsets and lengths
/// below are [`Edit::standard`]'s, each overlapping the spliced range `0..size`; an
/// [`Edit`] can place any kind elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mutation {
    /// No mutation: the control run.
    None,
    /// `pwrite` 16 `B`s at offset 100.
    Pwrite,
    /// `pwrite64` 16 `B`s at offset 100.
    Pwrite64,
    /// `lseek(100)` then `write` 16 `B`s.
    Write,
    /// `lseek(100)` then `writev` of two 8-byte buffers.
    Writev,
    /// `pwritev` of two 8-byte buffers at offset 100.
    Pwritev,
    /// `pwritev64` at offset 100.
    Pwritev64,
    /// `pwritev2` (flags 0) at offset 100.
    Pwritev2,
    /// `pwritev64v2` (flags 0) at offset 100.
    Pwritev64v2,
    /// `fallocate(PUNCH_HOLE|KEEP_SIZE, 0, size)`.
    PunchHole,
    /// `fallocate64(PUNCH_HOLE|KEEP_SIZE, 0, size)`.
    PunchHole64,
    /// `fallocate(ZERO_RANGE, 0, size)`.
    ZeroRange,
    /// `fallocate(COLLAPSE_RANGE, 32768, 4096)` (at offset 0 nothing shows: whole folios
    /// are dropped from the page cache, not zeroed).
    CollapseRange,
    /// `fallocate(INSERT_RANGE, 32768, 4096)` (see `collapse-range`).
    InsertRange,
    /// `ftruncate(fd, 30000)`.
    Ftruncate,
    /// `ftruncate64(fd, 30000)`.
    Ftruncate64,
    /// `ftruncate(fd, 0)`.
    Ftruncate0,
    /// `truncate(path, 30000)`.
    Truncate,
    /// `truncate64(path, 30000)`.
    Truncate64,
    /// `open(path, O_WRONLY|O_TRUNC)`.
    OpenTrunc,
    /// `open64(path, O_WRONLY|O_TRUNC)`.
    Open64Trunc,
    /// `openat(AT_FDCWD, path, O_WRONLY|O_TRUNC)`.
    OpenatTrunc,
    /// `openat64(AT_FDCWD, path, O_WRONLY|O_TRUNC)`.
    Openat64Trunc,
    /// `creat(path)`.
    Creat,
    /// `creat64(path)`.
    Creat64,
    /// `fopen(path, "w")` then `fclose`.
    FopenW,
    /// `fopen64(path, "w")` then `fclose`.
    Fopen64W,
    /// `freopen(path, "w", stream)` then `fclose`.
    FreopenW,
    /// `freopen64(path, "w", stream)` then `fclose`.
    Freopen64W,
    /// `mmap(MAP_SHARED, PROT_WRITE)` after the splice, store 16 `B`s at 100.
    MmapSharedStore,
    /// A `MAP_SHARED` writable mapping made *before* the splice, stored to after.
    MmapEarlyStore,
    /// `copy_file_range` of 16 bytes from another file to offset 100.
    CopyFileRange,
    /// `sendfile` of 16 bytes from another file to offset 100 (via `lseek`).
    SendfileInto,
    /// `splice` of 16 bytes from a fresh pipe to `off_out` 100.
    SpliceInto,
    /// `ioctl(FICLONE)` from another file (unsupported on ext4).
    Ficlone,
    /// `fopen(path, "r+")`, `fseek(100)`, `fwrite` 16 `B`s, `fclose`.
    StdioFwrite,
    /// Like `stdio-fwrite` with `fputs`.
    StdioFputs,
    /// Like `stdio-fwrite` with `fprintf`.
    StdioFprintf,
}

/// Which way a mutation reaches the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// No change at all.
    Nothing,
    /// A call on the file itself: write, fallocate, truncate, a truncating open.
    FileCall,
    /// Another path: shared mappings, copies into the file, clone ioctls, stdio.
    OtherPath,
}

impl Mutation {
    /// The way this mutation reaches the file.
    pub fn family(self) -> Family {
        use Mutation::*;
        match self {
            None => Family::Nothing,
            MmapSharedStore | MmapEarlyStore | CopyFileRange | SendfileInto | SpliceInto
            | Ficlone | StdioFwrite | StdioFputs | StdioFprintf => Family::OtherPath,
            _ => Family::FileCall,
        }
    }
}

/// Where [`Edit::standard`] writes: 16 bytes at offset 100.
pub const WRITE_OFF: u64 = 100;
/// How many bytes [`Edit::standard`] writes.
pub const WRITE_LEN: usize = 16;
/// The length [`Edit::standard`] truncates to.
pub const TRUNC_LEN: u64 = 30000;
/// Where [`Edit::standard`]'s collapse and insert act (one block at 32 KiB: at offset 0
/// nothing would show, whole folios are dropped from the page cache, not zeroed).
pub const SHIFT_OFF: u64 = 32768;
/// The block collapse and insert move by.
pub const BLOCK: u64 = 4096;

/// One change: a [`Mutation`] kind and where and with what it acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The kind of change.
    pub kind: Mutation,
    /// Where writes, stores and copies land; where `fallocate` ranges start.
    pub off: u64,
    /// The `fallocate` range's length, the length truncations leave, or how many
    /// bytes copies move.
    pub len: u64,
    /// The bytes writes and stores put at `off`; after a truncating open, create or
    /// `fopen("w")`, the file's new content (none: the file is left empty).
    pub data: Vec<u8>,
    /// Where copies read the source file (see [`Target::source`]).
    pub src_off: u64,
}

impl Edit {
    /// `kind` where the scenarios apply it on a file spliced over `0..size`: writes and
    /// stores of 16 `B`s at offset 100, holes and zeroed ranges over `0..size`, a block
    /// collapsed or inserted at 32 KiB, truncation to 30000 bytes (`ftruncate0`: 0),
    /// 16 bytes copied from the source's start to offset 100.
    pub fn standard(kind: Mutation, size: usize) -> Edit {
        use Mutation::*;
        let (off, len) = match kind {
            PunchHole | PunchHole64 | ZeroRange => (0, size as u64),
            CollapseRange | InsertRange => (SHIFT_OFF, BLOCK),
            Ftruncate | Ftruncate64 | Truncate | Truncate64 => (0, TRUNC_LEN),
            Ftruncate0 => (0, 0),
            CopyFileRange | SendfileInto | SpliceInto => (WRITE_OFF, WRITE_LEN as u64),
            _ if kind.writes_at_offset() => (WRITE_OFF, 0),
            _ => (0, 0),
        };
        let data = match kind {
            OpenTrunc | Open64Trunc | OpenatTrunc | Openat64Trunc | Creat | Creat64 | FopenW
            | Fopen64W | FreopenW | Freopen64W => Vec::new(),
            _ => vec![b'B'; WRITE_LEN],
        };
        Edit {
            kind,
            off,
            len,
            data,
            src_off: 0,
        }
    }
}

impl Mutation {
    /// Whether the kind puts bytes at [`Edit::off`]: writes, stores, copies.
    pub fn writes_at_offset(self) -> bool {
        use Mutation::*;
        matches!(
            self,
            Pwrite
                | Pwrite64
                | Write
                | Writev
                | Pwritev
                | Pwritev64
                | Pwritev2
                | Pwritev64v2
                | MmapSharedStore
                | MmapEarlyStore
                | CopyFileRange
                | SendfileInto
                | SpliceInto
                | StdioFwrite
                | StdioFputs
                | StdioFprintf
        )
    }
}

/// Whether a mutation happened, and what its call returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The call returned this (bytes moved for writes and copies, else 0).
    Done(i64),
    /// Not supported on this system or file system (`EOPNOTSUPP`, `EXDEV`, ...).
    Unsupported,
}

/// The file a mutation changes: its path and descriptor, a source file for the copying
/// kinds, and a writable shared mapping made ahead (`mmap-early-store`).
#[derive(Debug)]
pub struct Target {
    path: CString,
    fd: RawFd,
    _owned: Option<OwnedFd>,
    src: Option<OwnedFd>,
    src_fd: RawFd,
    map: Option<(*mut libc::c_void, usize)>,
}

impl Target {
    /// `path`, changed through `fd` (the caller's, kept open while this lives), or
    /// through a descriptor opened here read-write when `fd` is `None`.
    pub fn new(path: &Path, fd: Option<RawFd>) -> Res<Target> {
        let (fd, owned) = match fd {
            Some(fd) => (fd, None),
            None => {
                let owned = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map(OwnedFd::from)
                    .map_err(|e| format!("open {}: {e}", path.display()))?;
                (owned.as_raw_fd(), Some(owned))
            }
        };
        Ok(Target {
            path: cpath(path)?,
            fd,
            _owned: owned,
            src: None,
            src_fd: -1,
            map: None,
        })
    }

    /// The file open at `fd` (the caller's, kept open while this lives), known by no
    /// path: only the kinds that act through the descriptor apply.
    pub fn fd(fd: RawFd) -> Target {
        Target {
            path: CString::default(),
            fd,
            _owned: None,
            src: None,
            src_fd: -1,
            map: None,
        }
    }

    /// Everything `kind` needs made before the splice, as the scenarios make it: a side
    /// file of one block of `B`s ([`crate::side_path`]) to copy from, the early shared
    /// mapping of the first block.
    pub fn prepare(mut self, kind: Mutation, path: &Path) -> Res<Target> {
        if matches!(
            kind,
            Mutation::CopyFileRange | Mutation::SendfileInto | Mutation::Ficlone
        ) {
            let side = crate::side_path(path);
            std::fs::write(&side, [b'B'; BLOCK as usize])
                .map_err(|e| format!("write {}: {e}", side.display()))?;
            let f = std::fs::File::open(&side)?;
            self.src = Some(OwnedFd::from(f));
            self.src_fd = self.src.as_ref().map_or(-1, |s| s.as_raw_fd());
        }
        if kind == Mutation::MmapEarlyStore {
            self.map = Some(map_shared(self.fd, 0, BLOCK as usize)?);
        }
        Ok(self)
    }

    /// Copies read `fd` (the caller's, kept open while this lives).
    pub fn source(mut self, fd: RawFd) -> Target {
        self.src_fd = fd;
        self
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some((addr, len)) = self.map.take() {
            // SAFETY: (addr, len) is a mapping made by map_shared and not yet unmapped.
            unsafe { libc::munmap(addr, len) };
        }
    }
}

/// Applies `edit` to `target`: the one way the harness mutates a file.
///
/// A call the system does not support answers [`Applied::Unsupported`]; any other
/// failure is an error naming the mutation and the file.
pub fn apply(target: &mut Target, edit: &Edit) -> Res<Applied> {
    use Mutation::*;
    let fd = target.fd;
    let p = target.path.as_ptr();
    let off = edit.off as libc::off_t;
    let len = edit.len as libc::off_t;
    let data = &edit.data;
    let buf = data.as_ptr().cast::<libc::c_void>();
    let half = data.len() / 2;
    let iov = [
        libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: half,
        },
        libc::iovec {
            iov_base: data[half..].as_ptr() as *mut libc::c_void,
            iov_len: data.len() - half,
        },
    ];
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let src = target.src_fd;
    // SAFETY: (whole match) every call gets a valid open fd (or -1, which fails
    // cleanly), NUL-terminated paths that outlive the call, and buffers/iovecs that
    // point into `edit.data` with lengths inside it; returned FILE*s and mappings are
    // checked before use and released exactly once.
    let ret: i64 = unsafe {
        match edit.kind {
            None => 0,
            Pwrite => libc::pwrite(fd, buf, data.len(), off) as i64,
            Pwrite64 => libc::pwrite64(fd, buf, data.len(), off) as i64,
            Write => {
                check(libc::lseek(fd, off, libc::SEEK_SET), "lseek")?;
                libc::write(fd, buf, data.len()) as i64
            }
            Writev => {
                check(libc::lseek(fd, off, libc::SEEK_SET), "lseek")?;
                libc::writev(fd, iov.as_ptr(), 2) as i64
            }
            Pwritev => libc::pwritev(fd, iov.as_ptr(), 2, off) as i64,
            Pwritev64 => libc::pwritev64(fd, iov.as_ptr(), 2, off) as i64,
            Pwritev2 => libc::pwritev2(fd, iov.as_ptr(), 2, off, 0) as i64,
            Pwritev64v2 => libc::pwritev64v2(fd, iov.as_ptr(), 2, off, 0) as i64,
            PunchHole => libc::fallocate(fd, punch, off, len).into(),
            PunchHole64 => libc::fallocate64(fd, punch, off, len).into(),
            ZeroRange => libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, off, len).into(),
            CollapseRange => libc::fallocate(fd, libc::FALLOC_FL_COLLAPSE_RANGE, off, len).into(),
            InsertRange => libc::fallocate(fd, libc::FALLOC_FL_INSERT_RANGE, off, len).into(),
            Ftruncate | Ftruncate0 => libc::ftruncate(fd, len).into(),
            Ftruncate64 => libc::ftruncate64(fd, len).into(),
            Truncate => libc::truncate(p, len).into(),
            Truncate64 => libc::truncate64(p, len).into(),
            OpenTrunc => rewrite_fd(libc::open(p, libc::O_WRONLY | libc::O_TRUNC), data)?,
            Open64Trunc => rewrite_fd(libc::open64(p, libc::O_WRONLY | libc::O_TRUNC), data)?,
            OpenatTrunc => rewrite_fd(
                libc::openat(libc::AT_FDCWD, p, libc::O_WRONLY | libc::O_TRUNC),
                data,
            )?,
            Openat64Trunc => rewrite_fd(
                libc::openat64(libc::AT_FDCWD, p, libc::O_WRONLY | libc::O_TRUNC),
                data,
            )?,
            Creat => rewrite_fd(libc::creat(p, 0o644), data)?,
            Creat64 => rewrite_fd(libc::creat64(p, 0o644), data)?,
            FopenW => rewrite_stream(libc::fopen(p, c"w".as_ptr()), data)?,
            Fopen64W => rewrite_stream(libc::fopen64(p, c"w".as_ptr()), data)?,
            FreopenW | Freopen64W => {
                let stream = libc::fopen(c"/dev/null".as_ptr(), c"r".as_ptr());
                if stream.is_null() {
                    return Err(os_err("fopen /dev/null"));
                }
                let re = if edit.kind == FreopenW {
                    libc::freopen(p, c"w".as_ptr(), stream)
                } else {
                    libc::freopen64(p, c"w".as_ptr(), stream)
                };
                rewrite_stream(re, data)?
            }
            MmapSharedStore => {
                let base = edit.off / page_size() as u64 * page_size() as u64;
                let span = (edit.off - base) as usize + data.len();
                let (addr, maplen) = map_shared(fd, base, span)?;
                store_and_unmap(addr, maplen, (edit.off - base) as usize, data)
            }
            MmapEarlyStore => {
                let (addr, maplen) = target.map.take().ok_or("mapping not prepared")?;
                if edit.off as usize + data.len() > maplen {
                    libc::munmap(addr, maplen);
                    return Err("store beyond the early mapping".into());
                }
                store_and_unmap(addr, maplen, edit.off as usize, data)
            }
            CopyFileRange => {
                let mut off_in = edit.src_off as libc::loff_t;
                let mut off_out: libc::loff_t = off;
                libc::copy_file_range(src, &mut off_in, fd, &mut off_out, len as usize, 0) as i64
            }
            SendfileInto => {
                check(libc::lseek(fd, off, libc::SEEK_SET), "lseek")?;
                let mut off_in = edit.src_off as libc::off_t;
                libc::sendfile(fd, src, &mut off_in, len as usize) as i64
            }
            SpliceInto => {
                let (r, w) = crate::pipe().map_err(|e| format!("pipe: {e}"))?;
                check(
                    libc::write(w.as_raw_fd(), buf, data.len()) as i64,
                    "write pipe",
                )?;
                let mut off_out: libc::loff_t = off;
                libc::splice(
                    r.as_raw_fd(),
                    std::ptr::null_mut(),
                    fd,
                    &mut off_out,
                    data.len(),
                    0,
                ) as i64
            }
            Ficlone => libc::ioctl(fd, libc::FICLONE, src).into(),
            StdioFwrite | StdioFputs | StdioFprintf => {
                let text = CString::new(data.clone()).map_err(|e| e.to_string())?;
                let f = libc::fopen(p, c"r+".as_ptr());
                if f.is_null() {
                    return Err(os_err("fopen r+"));
                }
                if libc::fseek(f, edit.off as libc::c_long, libc::SEEK_SET) != 0 {
                    return Err(os_err("fseek"));
                }
                let r = match edit.kind {
                    StdioFwrite => libc::fwrite(buf, 1, data.len(), f) as i64 - 1,
                    StdioFputs => libc::fputs(text.as_ptr(), f).into(),
                    _ => libc::fprintf(f, c"%s".as_ptr(), text.as_ptr()).into(),
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
        ) || (edit.kind == Ficlone && err.raw_os_error() == Some(libc::EINVAL));
        if unsupported {
            return Ok(Applied::Unsupported);
        }
        return Err(Error::from(format!(
            "{} on {}: {err}",
            crate::value_name(&edit.kind),
            path_text(&target.path)
        )));
    }
    Ok(Applied::Done(ret))
}

/// A C path for messages.
fn path_text(p: &CStr) -> String {
    p.to_string_lossy().into_owned()
}

/// Writes `data` to an fd returned by an opening call, then closes it; passes a failed
/// open (-1) through.
fn rewrite_fd(fd: libc::c_int, data: &[u8]) -> Res<i64> {
    if fd < 0 {
        return Ok(-1);
    }
    let written = write_all_fd(fd, data);
    // SAFETY: fd was just opened by us and is closed exactly once.
    let closed = i64::from(unsafe { libc::close(fd) });
    written?;
    Ok(closed)
}

/// Writes `data` to a stream returned by `fopen`/`freopen`, then closes it; a null
/// stream is a failure (-1).
fn rewrite_stream(f: *mut libc::FILE, data: &[u8]) -> Res<i64> {
    if f.is_null() {
        return Ok(-1);
    }
    // SAFETY: data is valid for its length; f is a live stream opened by us.
    let n = unsafe { libc::fwrite(data.as_ptr().cast(), 1, data.len(), f) };
    let closed = close_file(f);
    if n != data.len() {
        return Err(format!("fwrite {n} of {} bytes", data.len()).into());
    }
    Ok(closed)
}

/// Closes a stream returned by `fopen`/`freopen`; a null stream is a failure (-1).
fn close_file(f: *mut libc::FILE) -> i64 {
    if f.is_null() {
        return -1;
    }
    // SAFETY: f is a live stream opened by us and is closed exactly once.
    unsafe { libc::fclose(f) }.into()
}

/// Maps `len` bytes of `fd` from `off` (a page boundary) `MAP_SHARED` and writable.
fn map_shared(fd: RawFd, off: u64, len: usize) -> Res<(*mut libc::c_void, usize)> {
    // SAFETY: a fresh mapping chosen by the kernel; the kernel checks fd and offset.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            off as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(os_err("mmap"));
    }
    Ok((addr, len))
}

/// Stores `data` at byte `at` of a mapping, then unmaps it.
///
/// # Safety
/// `(addr, len)` must be a live writable mapping of file pages, not used again, with
/// `at + data.len() <= len`.
unsafe fn store_and_unmap(addr: *mut libc::c_void, len: usize, at: usize, data: &[u8]) -> i64 {
    // SAFETY: the caller guarantees the mapping is live and writable and that the
    // stored bytes lie inside it.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), addr.cast::<u8>().add(at), data.len());
        libc::munmap(addr, len).into()
    }
}
