//! What kind of program a file is, as far as strict mode cares: statically linked (no
//! `PT_INTERP`), a Go program (a `Go` build-id note: Go makes its system calls itself,
//! even when linked dynamically), dynamically linked, setuid/setgid, or a `#!` script.
//! Read from the first page of the file and its note segments, with raw system calls and
//! no allocation, so that an `exec` hook can ask before every exec.

use splicecow_registry::sys;
use std::ffi::CStr;

/// The longest path (with its NUL) a [`CPath`] holds.
pub const PATH_MAX: usize = libc::PATH_MAX as usize;

/// A NUL-terminated path in a fixed buffer.
pub struct CPath {
    buf: [u8; PATH_MAX],
    len: usize,
}

impl Default for CPath {
    fn default() -> Self {
        CPath {
            buf: [0; PATH_MAX],
            len: 0,
        }
    }
}

impl CPath {
    /// The concatenation of `parts`; `None` when it is too long or holds a NUL.
    pub fn join(parts: &[&[u8]]) -> Option<CPath> {
        let mut p = CPath::default();
        for part in parts {
            let end = p.len + part.len();
            if end >= PATH_MAX || part.contains(&0) {
                return None;
            }
            p.buf.get_mut(p.len..end)?.copy_from_slice(part);
            p.len = end;
        }
        Some(p)
    }

    /// The path without its NUL.
    pub fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// The path as a C string.
    pub fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_until_nul(self.buf.get(..=self.len).unwrap_or(b"\0")).unwrap_or_default()
    }
}

/// What a file is.
// Returned by value once per exec and never stored; boxing the path would allocate in an
// exec hook, which may run in a `vfork` child.
#[allow(clippy::large_enum_variant)]
pub enum Program {
    /// An ELF executable without an interpreter (static, static-pie).
    Static,
    /// An ELF executable with a Go build-id note.
    Go,
    /// An ELF executable with an interpreter (the dynamic linker).
    Dynamic,
    /// setuid or setgid.
    Setuid,
    /// A `#!` script: its interpreter, and whether it is named through `env` (then it is a
    /// name to look up in `PATH`).
    Script {
        /// The interpreter's path, or the name `env` looks up.
        interpreter: CPath,
        /// True for `#!/usr/bin/env NAME`.
        via_env: bool,
    },
    /// Readable, but neither an ELF executable nor a script.
    NotElf,
    /// Cannot be opened or read (the `errno`).
    Unreadable(i32),
}

/// How much of the file is read at once.
const PAGE: usize = 4096;

/// What `path` is.
pub fn classify(path: &CStr) -> Program {
    let fd = match sys::open(
        path.to_bytes_with_nul(),
        libc::O_RDONLY | libc::O_CLOEXEC,
        0,
    ) {
        Ok(fd) => fd,
        Err(e) => return Program::Unreadable(e),
    };
    let r = classify_fd(fd);
    sys::close(fd);
    r
}

fn classify_fd(fd: i32) -> Program {
    match sys::fstat(fd) {
        Ok(st) if st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0 => return Program::Setuid,
        Ok(_) => {}
        Err(e) => return Program::Unreadable(e),
    }
    let mut head = [0u8; PAGE];
    let n = match pread(fd, &mut head, 0) {
        Ok(n) => n,
        Err(e) => return Program::Unreadable(e),
    };
    let head = head.get(..n).unwrap_or(&[]);
    if let Some(rest) = head.strip_prefix(b"#!") {
        return script(rest);
    }
    let Some(elf) = Elf::parse(head) else {
        return Program::NotElf;
    };
    let mut dynamic = false;
    for i in 0..elf.phnum {
        let Some(ph) = elf.phdr(head, i) else {
            return Program::NotElf;
        };
        match ph.kind {
            PT_INTERP => dynamic = true,
            PT_NOTE if has_go_note(fd, head, &ph) => return Program::Go,
            _ => {}
        }
    }
    if dynamic {
        Program::Dynamic
    } else {
        Program::Static
    }
}

/// The interpreter named on a `#!` line (after the `#!`).
fn script(rest: &[u8]) -> Program {
    let line = rest.split(|&b| b == b'\n').next().unwrap_or(b"");
    let mut words = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return Program::NotElf;
    };
    let (name, via_env) = if first.ends_with(b"/env") {
        match words.find(|w| !w.starts_with(b"-")) {
            Some(w) => (w, true),
            None => (first, false),
        }
    } else {
        (first, false)
    };
    match CPath::join(&[name]) {
        Some(interpreter) => Program::Script {
            interpreter,
            via_env,
        },
        None => Program::NotElf,
    }
}

const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
/// `NT_GO_BUILDID`, the type of the note Go's linker writes (name `Go`).
const NT_GO_BUILDID: u32 = 4;

/// The fields of a 64-bit little-endian ELF header that locate its program headers.
struct Elf {
    phoff: usize,
    phentsize: usize,
    phnum: usize,
}

/// A program header's type and file extent.
struct Phdr {
    kind: u32,
    offset: u64,
    size: u64,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl Elf {
    /// The header of a 64-bit little-endian executable or shared object (x86-64 is the
    /// only target); `None` for anything else.
    fn parse(head: &[u8]) -> Option<Elf> {
        if head.get(..4)? != b"\x7fELF" || head.get(4..6)? != [2, 1] {
            return None;
        }
        let elf = Elf {
            phoff: usize::try_from(u64_at(head, 0x20)?).ok()?,
            phentsize: usize::from(u16_at(head, 0x36)?),
            phnum: usize::from(u16_at(head, 0x38)?),
        };
        (elf.phentsize >= 56).then_some(elf)
    }

    /// Program header `i`, if it lies in the first page (where every linker puts them).
    fn phdr(&self, head: &[u8], i: usize) -> Option<Phdr> {
        let at = self.phoff.checked_add(i.checked_mul(self.phentsize)?)?;
        Some(Phdr {
            kind: u32_at(head, at)?,
            offset: u64_at(head, at + 8)?,
            size: u64_at(head, at + 32)?,
        })
    }
}

/// True when the note segment `ph` holds a `Go` build-id note.
fn has_go_note(fd: i32, head: &[u8], ph: &Phdr) -> bool {
    let mut far = [0u8; 1024];
    let size = usize::try_from(ph.size)
        .unwrap_or(usize::MAX)
        .min(far.len());
    let start = usize::try_from(ph.offset).unwrap_or(usize::MAX);
    let notes = match head.get(start..start.saturating_add(size)) {
        Some(n) => n,
        None => match pread(fd, far.get_mut(..size).unwrap_or(&mut []), ph.offset) {
            Ok(n) => far.get(..n).unwrap_or(&[]),
            Err(_) => return false,
        },
    };
    // Each note: namesz, descsz, type, then the name and the description, each padded
    // to 4 bytes.
    let mut at = 0usize;
    while let (Some(namesz), Some(descsz), Some(kind)) = (
        u32_at(notes, at),
        u32_at(notes, at + 4),
        u32_at(notes, at + 8),
    ) {
        let name_at = at + 12;
        let pad = |n: u32| (n as usize).div_ceil(4) * 4;
        // The name is "Go" and one or more NULs (Go's linker pads it to 4 bytes).
        let name = notes.get(name_at..name_at + namesz as usize);
        let go = name.is_some_and(|n| {
            n.strip_prefix(b"Go")
                .is_some_and(|z| z.iter().all(|&b| b == 0))
        });
        if kind == NT_GO_BUILDID && go {
            return true;
        }
        at = name_at + pad(namesz) + pad(descsz);
    }
    false
}

/// `pread(fd, buf, off)`, retried on `EINTR`.
fn pread(fd: i32, buf: &mut [u8], off: u64) -> Result<usize, i32> {
    loop {
        // SAFETY: buf is ours and writable for its length.
        let r = unsafe { libc::syscall(libc::SYS_pread64, fd, buf.as_mut_ptr(), buf.len(), off) };
        match sys::check(r) {
            Ok(n) => return Ok(n as usize),
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Looks `name` up in the colon-separated `search` path as `execvp` does: the first
/// directory where it exists and is executable (an empty entry is the current
/// directory). `None` when no directory has it.
pub fn find_in_path(name: &[u8], search: &[u8]) -> Option<CPath> {
    search.split(|&b| b == b':').find_map(|dir| {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let p = CPath::join(&[dir, b"/", name])?;
        // SAFETY: a NUL-terminated path of ours.
        let ok = unsafe { libc::syscall(libc::SYS_access, p.as_cstr().as_ptr(), libc::X_OK) } == 0;
        ok.then_some(p)
    })
}

#[cfg(test)]
// Test images are built at fixed offsets; a wrong one should panic.
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// A minimal 64-bit little-endian ELF image with the given program headers
    /// (type, offset, size) and `tail` from offset 0x200.
    fn image(phdrs: &[(u32, u64, u64)], tail: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (i, (kind, off, size)) in phdrs.iter().enumerate() {
            let at = 64 + 56 * i;
            b[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            b[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
        }
        b.extend_from_slice(tail);
        b
    }

    /// A note: name, type, 8 bytes of description.
    fn note(name: &[u8], kind: u32) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&8u32.to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend_from_slice(&[7; 8]);
        n
    }

    fn classify_bytes(data: &[u8]) -> Program {
        let dir = std::env::temp_dir().join(format!("splicecow-program-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("p{n}"));
        std::fs::write(&path, data).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let r = classify(&c);
        let _ = std::fs::remove_file(&path);
        r
    }

    #[test]
    fn tells_static_dynamic_and_go_apart() {
        let gnu = note(b"GNU\0", 3);
        let go4 = note(b"Go\0\0", NT_GO_BUILDID);
        let go3 = note(b"Go\0", NT_GO_BUILDID);
        let interp = (PT_INTERP, 0x300, 28);
        let at = |n: &[u8]| (PT_NOTE, 0x200, n.len() as u64);
        let cases: [(Vec<u8>, &str); 6] = [
            (image(&[at(&gnu)], &gnu), "static"),
            (image(&[interp, at(&gnu)], &gnu), "dynamic"),
            (image(&[at(&go4)], &go4), "go"),
            (image(&[interp, at(&go4)], &go4), "go"),
            (
                image(
                    &[at(&[gnu.clone(), go3.clone()].concat())],
                    &[gnu.clone(), go3].concat(),
                ),
                "go",
            ),
            (
                image(&[interp, at(&note(b"Go\0\0", 1))], &note(b"Go\0\0", 1)),
                "dynamic",
            ),
        ];
        for (i, (data, want)) in cases.iter().enumerate() {
            let got = match classify_bytes(data) {
                Program::Static => "static",
                Program::Dynamic => "dynamic",
                Program::Go => "go",
                _ => "other",
            };
            assert_eq!(got, *want, "case {i}");
        }
    }

    #[test]
    fn reads_script_lines_and_refuses_other_files() {
        let interp = |data: &[u8]| match classify_bytes(data) {
            Program::Script {
                interpreter,
                via_env,
            } => Some((
                String::from_utf8(interpreter.bytes().to_vec()).unwrap(),
                via_env,
            )),
            _ => None,
        };
        assert_eq!(
            interp(b"#!/bin/sh -e\necho"),
            Some(("/bin/sh".into(), false))
        );
        assert_eq!(
            interp(b"#! /usr/bin/env -S python3 -u\n"),
            Some(("python3".into(), true))
        );
        assert_eq!(
            interp(b"#!/usr/bin/env\n"),
            Some(("/usr/bin/env".into(), false))
        );
        assert!(matches!(classify_bytes(b"#!\n"), Program::NotElf));
        assert!(matches!(classify_bytes(b"hello"), Program::NotElf));
        assert!(matches!(
            classify_bytes(b"\x7fELF\x01\x01"),
            Program::NotElf
        ));
        let missing = std::ffi::CString::new("/nonexistent/splicecow-program").unwrap();
        assert!(matches!(
            classify(&missing),
            Program::Unreadable(libc::ENOENT)
        ));
    }
}
