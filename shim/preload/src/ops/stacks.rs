//! Detect mode's call stacks: the splice side interns its caller's stack in the registry
//! with the segment it records, the mutation side captures its own when it reports.
//!
//! Capture walks the stack with libgcc's `_Unwind_Backtrace` (DWARF call frame
//! information from `.eh_frame`, which x86-64 code has whether or not it keeps frame
//! pointers, and which also steps through signal frames). With glibc 2.35 or later and
//! libgcc 12 or later the unwinder finds each frame's tables with `_dl_find_object`,
//! which takes no lock and allocates nothing; the walk is bounded ([`MAX_WALK`]
//! frames), and the unwinder's one-time setup is done at library load
//! ([`install`]). Each return address is named by its module through
//! `_dl_find_object` too (the link map gives the path and the load bias), so frames are
//! kept as module + offset that any process can resolve. Nothing here runs outside
//! detect mode.

use crate::state::runtime::{self, Mode};
use splicecow_registry::layout::{FRAME_OFFSET_BITS, STACK_FRAMES};
use splicecow_registry::{Registry, Tables};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use std::sync::OnceLock;

/// Frames the unwinder is asked for at most (the shim's own frames included).
const MAX_WALK: usize = STACK_FRAMES + 16;

/// `struct dl_find_object` of glibc 2.35 (`<dlfcn.h>`).
#[repr(C)]
struct DlFindObject {
    flags: u64,
    map_start: *mut c_void,
    map_end: *mut c_void,
    link_map: *const LinkMap,
    eh_frame: *mut c_void,
    reserved: [u64; 7],
}

/// The public head of glibc's `struct link_map` (`<link.h>`).
#[repr(C)]
struct LinkMap {
    /// Load bias: the module's addresses minus its ELF virtual addresses.
    addr: usize,
    /// Path of the module ("" for the main program).
    name: *const c_char,
}

type FindObject = unsafe extern "C" fn(*mut c_void, *mut DlFindObject) -> c_int;
type Trace = extern "C" fn(*mut c_void, *mut c_void) -> c_int;

#[link(name = "gcc_s")]
extern "C" {
    fn _Unwind_Backtrace(trace: Trace, arg: *mut c_void) -> c_int;
    fn _Unwind_GetIPInfo(context: *mut c_void, ip_before_insn: *mut c_int) -> usize;
}

/// `_URC_NO_REASON`: go on walking.
const URC_NO_REASON: c_int = 0;
/// `_URC_NORMAL_STOP`: enough frames.
const URC_NORMAL_STOP: c_int = 4;

/// `_dl_find_object`, looked up once at load (absent before glibc 2.35: frames are then
/// kept as raw addresses).
static FIND_OBJECT: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
/// This library's mapping, `[start, end)`: its frames are left out of every stack.
static OWN: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// The main program's path (its link map names it ""), read at load.
static EXE: OnceLock<Vec<u8>> = OnceLock::new();
/// Set at load in detect mode unless `SPLICECOW_STACKS=0`: splices keep their stacks.
static SPLICE_STACKS: AtomicBool = AtomicBool::new(false);

/// Stacks are wanted (`SPLICECOW_STACKS` is not `0`).
fn wanted() -> bool {
    static WANTED: OnceLock<bool> = OnceLock::new();
    *WANTED.get_or_init(|| {
        std::env::var_os(splicecow_registry::env::STACKS)
            .is_none_or(|v| v.as_encoded_bytes().trim_ascii() != b"0")
    })
}

/// Called from the library constructor: in detect mode (unless `SPLICECOW_STACKS=0`),
/// looks up `_dl_find_object`, notes this library's range and the executable's path,
/// and walks one stack so that the unwinder's one-time setup is done before any hook
/// needs it; from then on splices keep their stacks.
pub fn install() {
    if runtime::get().mode == Mode::Detect && wanted() {
        set_up();
        SPLICE_STACKS.store(true, Ordering::Release);
    }
}

/// What [`install`] does, once per process (also on the first report of a process
/// outside detect mode that hit a detect domain's segment).
fn set_up() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(look_up);
}

fn look_up() {
    // SAFETY: dlsym with a NUL-terminated name; a null result is handled.
    let find = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) };
    FIND_OBJECT.store(find, Ordering::Release);
    if let Some(o) = find_object(install as *const () as usize) {
        OWN[0].store(o.map_start as usize, Ordering::Relaxed);
        OWN[1].store(o.map_end as usize, Ordering::Relaxed);
    }
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        let _ = EXE.set(exe.into_os_string().into_encoded_bytes());
    }
    let _ = capture();
}

/// `_dl_find_object(pc)`, when the C library has it and `pc` is in a loaded module.
fn find_object(pc: usize) -> Option<DlFindObject> {
    let f = FIND_OBJECT.load(Ordering::Acquire);
    if f.is_null() {
        return None;
    }
    // SAFETY: `f` is glibc's `_dl_find_object`, whose signature `FindObject` repeats.
    let f: FindObject = unsafe { std::mem::transmute::<*mut c_void, FindObject>(f) };
    // SAFETY: plain data; all zeroes is a valid value.
    let mut out: DlFindObject = unsafe { std::mem::zeroed() };
    // SAFETY: `out` is writable; the function only reads the address.
    let found = unsafe { f(pc as *mut c_void, &mut out) } == 0;
    (found && !out.link_map.is_null()).then_some(out)
}

/// Code addresses of a call stack, innermost first, the shim's own frames left out.
#[derive(Clone, Copy)]
pub struct Pcs {
    pcs: [usize; STACK_FRAMES],
    n: usize,
}

impl Pcs {
    /// The addresses.
    pub fn as_slice(&self) -> &[usize] {
        self.pcs.get(..self.n).unwrap_or(&[])
    }
}

/// Where the walk writes.
struct Walk {
    out: Pcs,
    seen: usize,
}

extern "C" fn step(context: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Walk` that `capture` passed, alive for the whole walk.
    let walk = unsafe { &mut *arg.cast::<Walk>() };
    walk.seen += 1;
    let mut before: c_int = 0;
    // SAFETY: `context` is the unwinder's, valid during this callback.
    let ip = unsafe { _Unwind_GetIPInfo(context, &mut before) };
    // A return address points after the call: step back into it (a signal frame's
    // address is the interrupted instruction itself).
    let pc = if before != 0 {
        ip
    } else {
        ip.saturating_sub(1)
    };
    let own = OWN[0].load(Ordering::Relaxed)..OWN[1].load(Ordering::Relaxed);
    if ip != 0 && !(walk.out.n == 0 && own.contains(&pc)) {
        if let Some(slot) = walk.out.pcs.get_mut(walk.out.n) {
            *slot = pc;
            walk.out.n += 1;
        }
    }
    if walk.out.n >= STACK_FRAMES || walk.seen >= MAX_WALK {
        URC_NORMAL_STOP
    } else {
        URC_NO_REASON
    }
}

/// The calling thread's stack (bounded, no allocation, no lock with glibc 2.35+).
pub fn capture() -> Pcs {
    let mut walk = Walk {
        out: Pcs {
            pcs: [0; STACK_FRAMES],
            n: 0,
        },
        seen: 0,
    };
    // SAFETY: `step` only writes into `walk`, which outlives the call.
    unsafe { _Unwind_Backtrace(step, std::ptr::addr_of_mut!(walk).cast()) };
    walk.out
}

/// A code address as its module's path (bytes owned by the dynamic loader or by
/// [`EXE`]) and its offset from the module's load bias (its ELF virtual address).
fn module_of(pc: usize) -> Option<(&'static [u8], usize)> {
    let o = find_object(pc)?;
    // SAFETY: a link map returned by `_dl_find_object` lives while its module is loaded,
    // which it is while one of its addresses is on a stack; `name` is NUL-terminated.
    let (bias, name) = unsafe { ((*o.link_map).addr, (*o.link_map).name) };
    let path: &'static [u8] = if name.is_null() {
        &[]
    } else {
        // SAFETY: as above.
        unsafe { CStr::from_ptr(name) }.to_bytes()
    };
    let path = if path.is_empty() {
        EXE.get().map(Vec::as_slice)?
    } else {
        path
    };
    Some((path, pc.wrapping_sub(bias)))
}

/// Modules of this process already in the domain's module table: `(link map, load
/// bias, index + 1)`, filled on first use of each module.
static KNOWN: [[AtomicUsize; 3]; 64] = [const { [const { AtomicUsize::new(0) }; 3] }; 64];
/// Next entry of [`KNOWN`] to fill (round robin).
static NEXT_KNOWN: AtomicU32 = AtomicU32::new(0);

/// The module-table index of the module of `pc` in `reg`, and the offset.
fn frame_of(reg: &Registry, pc: usize) -> u64 {
    let raw = pc as u64 & ((1 << FRAME_OFFSET_BITS) - 1);
    let Some(o) = find_object(pc) else {
        return raw;
    };
    // SAFETY: see `module_of`.
    let bias = unsafe { (*o.link_map).addr };
    let key = o.link_map as usize;
    let offset = pc.wrapping_sub(bias) as u64;
    if offset >> FRAME_OFFSET_BITS != 0 {
        return raw;
    }
    let known = KNOWN
        .iter()
        .find(|k| k[0].load(Ordering::Acquire) == key && k[1].load(Ordering::Relaxed) == bias);
    let cached = known.map(|k| (k[2].load(Ordering::Relaxed), k[0].load(Ordering::Acquire)));
    let index = match cached {
        // Checked again after the read: an entry being refilled meanwhile is a miss.
        Some((i, again)) if i > 0 && again == key => i - 1,
        _ => {
            let Some(i) = module_of(pc).and_then(|(path, _)| reg.intern_module(path)) else {
                return raw;
            };
            let next = NEXT_KNOWN.fetch_add(1, Ordering::Relaxed) as usize;
            let k = splicecow_registry::bounded::at(&KNOWN, next);
            k[0].store(0, Ordering::Release);
            k[1].store(bias, Ordering::Relaxed);
            k[2].store(i as usize + 1, Ordering::Relaxed);
            k[0].store(key, Ordering::Release);
            i as usize
        }
    };
    (index as u64 + 1) << FRAME_OFFSET_BITS | offset
}

/// Detect mode: the ticket of the calling splice's stack, interned in `t` (the tables
/// of this process's domain, whose module table names the frames' modules); 0 in every
/// other mode and with `SPLICECOW_STACKS=0` (one atomic load).
pub fn splice_stack(t: &mut Tables) -> u32 {
    if !SPLICE_STACKS.load(Ordering::Acquire) {
        return 0;
    }
    let Some(reg) = runtime::get().registry.as_ref() else {
        return 0;
    };
    let pcs = capture();
    let mut frames = [0u64; STACK_FRAMES];
    let mut n = 0;
    for (slot, &pc) in frames.iter_mut().zip(pcs.as_slice()) {
        *slot = frame_of(reg, pc);
        n += 1;
    }
    t.intern_stack(frames.get(..n).unwrap_or(&[]))
}

/// One resolved frame for a report: the module's path and the offset, or the raw address
/// when its module is unknown.
pub enum Frame {
    /// Offset `1` in module at path `0`.
    InModule(String, u64),
    /// An address of a module that was not known.
    Raw(u64),
}

/// The frames of the calling thread's stack, for a report (off the lock: allocates);
/// none with `SPLICECOW_STACKS=0`.
pub fn own_frames() -> Vec<Frame> {
    if !wanted() {
        return Vec::new();
    }
    set_up();
    capture()
        .as_slice()
        .iter()
        .map(|&pc| match module_of(pc) {
            Some((path, off)) => {
                Frame::InModule(String::from_utf8_lossy(path).into_owned(), off as u64)
            }
            None => Frame::Raw(pc as u64),
        })
        .collect()
}

/// The frames of a stack interned in `reg` (`frames` as [`Tables::stack`] gives them).
pub fn interned_frames(reg: &Registry, frames: &[u64]) -> Vec<Frame> {
    let mask = (1u64 << FRAME_OFFSET_BITS) - 1;
    frames
        .iter()
        .map(|&f| {
            let module = (f >> FRAME_OFFSET_BITS) as u32;
            match module.checked_sub(1).and_then(|m| reg.module_path(m)) {
                Some(path) => Frame::InModule(String::from_utf8_lossy(path).into_owned(), f & mask),
                None => Frame::Raw(f & mask),
            }
        })
        .collect()
}
