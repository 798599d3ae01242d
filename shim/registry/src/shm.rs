//! The shared-memory files of splicecow (a domain's registry, a user's index): one
//! handshake for all of them. A file lives in `/dev/shm`, mode 0600; its creator makes it
//! with `O_EXCL`, sizes it, fills its preamble and publishes the magic last; an opener
//! refuses a file that is not a regular file of this user without group/other access,
//! has a size out of the kind's range or other than its preamble says, another magic or
//! layout version, and waits a little for a creator that is still between `O_EXCL` and
//! publishing. What the size must be beyond that (a registry's depends on the capacities
//! in its header) the kind's user checks.

use crate::{sys, OpenError};
use std::sync::atomic::{AtomicU64, Ordering};

/// How long an opener waits for a concurrent creator to publish the file.
const PUBLISH_WAIT_NS: u64 = 1_000_000_000;

/// The first bytes of every shared file.
#[repr(C)]
pub struct Preamble {
    /// The kind's magic, written last by the creator (publication).
    pub magic: AtomicU64,
    /// The kind's layout version.
    pub layout_version: u32,
    /// The layout's size as computed by the creator.
    pub layout_size: u32,
}

/// What a kind of shared file is, and how its errors are worded.
pub struct Kind {
    /// The smallest size in bytes a file of the kind can have.
    pub min_size: usize,
    /// The largest (at most `u32::MAX`: the preamble stores the size in 32 bits).
    pub max_size: usize,
    /// Its magic.
    pub magic: u64,
    /// Its layout version.
    pub version: u32,
    /// Error wording: creating, opening, sizing, mapping, inspecting it.
    pub steps: [&'static str; 5],
}

/// A mapped shared file (unmapped on drop).
pub struct Mapping {
    base: *mut u8,
    size: usize,
}

// SAFETY: the mapping is process-wide; concurrent access is governed by its users.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: this Mapping owns the mapping; nothing borrowed from it outlives it.
        unsafe { sys::munmap(self.base, self.size) };
    }
}

/// What the creator of a new file decides and writes.
pub trait Create {
    /// The new file's size, within the kind's range (called once: the file is new).
    fn size(&mut self) -> usize;

    /// Fills what the kind keeps beyond the preamble in the new file, before the magic
    /// is published.
    ///
    /// # Safety
    /// `base` is a new, zero-filled mapping of [`Create::size`] bytes (clamped to the
    /// kind's range) that nobody else reads yet.
    unsafe fn fill(&self, base: *mut u8);
}

/// A creator of files of one fixed size that need nothing but the preamble.
pub struct Fixed(pub usize);

impl Create for Fixed {
    fn size(&mut self) -> usize {
        self.0
    }

    unsafe fn fill(&self, _base: *mut u8) {}
}

impl Mapping {
    /// The mapping's size in bytes (the file's).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The mapping's first byte.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    fn preamble(&self) -> &Preamble {
        // SAFETY: every kind's layout starts with a `Preamble`; the mapping is live.
        unsafe { &*(self.base as *const Preamble) }
    }
}

/// Opens the shared file at `path` (NUL-terminated) of `kind`, creating it with `create`
/// when given and the file does not exist.
pub fn open(
    path: &[u8],
    kind: &Kind,
    create: Option<&mut dyn Create>,
) -> Result<Mapping, OpenError> {
    let [creating, opening, ..] = kind.steps;
    let base_flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if let Some(create) = create {
        match sys::open(path, base_flags | libc::O_CREAT | libc::O_EXCL, 0o600) {
            Ok(fd) => {
                let r = initialise(fd, kind, create);
                sys::close(fd);
                return r;
            }
            Err(libc::EEXIST) => {}
            Err(e) => return Err(OpenError::Sys(creating, e)),
        }
    }
    let fd = match sys::open(path, base_flags, 0) {
        Ok(fd) => fd,
        Err(libc::ENOENT) => return Err(OpenError::Missing),
        Err(libc::ELOOP) => return Err(OpenError::NotOurs),
        Err(e) => return Err(OpenError::Sys(opening, e)),
    };
    let r = attach(fd, kind);
    sys::close(fd);
    r
}

/// Creator's half of the handshake: size, map, fill the preamble and what `create` adds,
/// publish the magic.
fn initialise(fd: i32, kind: &Kind, create: &mut dyn Create) -> Result<Mapping, OpenError> {
    let [_, _, sizing, mapping, _] = kind.steps;
    let size = create.size().clamp(kind.min_size, kind.max_size);
    sys::ftruncate(fd, size as u64).map_err(|e| OpenError::Sys(sizing, e))?;
    let base = sys::mmap_rw(size, libc::MAP_SHARED, fd).map_err(|e| OpenError::Sys(mapping, e))?;
    let m = Mapping { base, size };
    // SAFETY: the file is new (O_EXCL) and zero-filled; nobody reads these plain fields
    // before the magic is published with Release below.
    unsafe {
        let p = base as *mut Preamble;
        (*p).layout_version = kind.version;
        (*p).layout_size = size as u32;
    }
    // SAFETY: as above; the mapping is `size` bytes.
    unsafe { create.fill(base) };
    m.preamble().magic.store(kind.magic, Ordering::Release);
    Ok(m)
}

/// Opener's half: check owner, mode and size, map, wait for the magic, check version.
fn attach(fd: i32, kind: &Kind) -> Result<Mapping, OpenError> {
    let [_, _, _, mapping, inspecting] = kind.steps;
    let deadline = sys::monotonic_ns() + PUBLISH_WAIT_NS;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::syscall(libc::SYS_geteuid) } as u32;
    let size = loop {
        let st = sys::fstat(fd).map_err(|e| OpenError::Sys(inspecting, e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || st.st_uid != euid
            || st.st_mode & 0o077 != 0
        {
            return Err(OpenError::NotOurs);
        }
        let size = st.st_size as usize;
        if (kind.min_size..=kind.max_size).contains(&size) {
            break size;
        }
        // Size 0: a creator between O_EXCL and ftruncate. Wait for it, unless the file
        // is old (its creator died there): then refuse at once.
        let age_ns = sys::realtime_ns()
            .saturating_sub(st.st_ctime as u64 * 1_000_000_000 + st.st_ctime_nsec as u64);
        if st.st_size != 0 || age_ns > PUBLISH_WAIT_NS || sys::monotonic_ns() > deadline {
            return Err(OpenError::Foreign);
        }
        sys::sleep_ns(1_000_000);
    };
    let base = sys::mmap_rw(size, libc::MAP_SHARED, fd).map_err(|e| OpenError::Sys(mapping, e))?;
    let m = Mapping { base, size };
    loop {
        let magic = m.preamble().magic.load(Ordering::Acquire);
        if magic == kind.magic {
            break;
        }
        if magic != 0 || sys::monotonic_ns() > deadline {
            return Err(OpenError::Foreign);
        }
        sys::sleep_ns(1_000_000);
    }
    let p = m.preamble();
    if p.layout_version != kind.version {
        return Err(OpenError::Version(p.layout_version));
    }
    if p.layout_size as usize != size {
        return Err(OpenError::Foreign);
    }
    Ok(m)
}
