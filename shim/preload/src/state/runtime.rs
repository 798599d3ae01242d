//! Per-process state: mode, domain and the mapped registry, read from the environment
//! once (in the library constructor, or on the first hook call if another library's
//! constructor calls a hook before ours ran). Initialising never takes the table lock.

pub use splicecow_registry::env::Mode;
use splicecow_registry::{env as names, Capacity, Registry, DEFAULT_DOMAIN};
use std::sync::OnceLock;

/// The process's view of its domain.
pub struct Runtime {
    /// Effective mode (protect/detect fall back to copy/off without a registry).
    pub mode: Mode,
    /// The domain's registry, when it could be opened.
    pub registry: Option<Registry>,
    /// Domain name (for reports).
    pub domain: String,
    /// `SPLICECOW_REPORT`, NUL-terminated, for detect mode.
    pub report_path: Option<Vec<u8>>,
    /// `NAME=value` of `LD_PRELOAD` and every `SPLICECOW_*` variable at start: an `exec`
    /// whose environment lacks one of them leaves the domain (and is counted).
    pub exec_env: Vec<Vec<u8>>,
    /// This library's path, as the dynamic loader opened it.
    pub library_path: Vec<u8>,
    /// `SPLICECOW_PRIVATE_SNAPSHOTS=1`: register `MAP_PRIVATE` file mappings as snapshots.
    pub private_snapshots: bool,
    /// How long a mutator waits for another process to snapshot its private pages
    /// (`SPLICECOW_SNAPSHOT_TIMEOUT_MS`, default 1000).
    pub snapshot_timeout_ms: u64,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime, initialised on first use.
pub fn get() -> &'static Runtime {
    RUNTIME.get_or_init(init)
}

/// The runtime if it is initialised (never starts the initialisation).
pub fn try_get() -> Option<&'static Runtime> {
    RUNTIME.get()
}

/// Sets the runtime explicitly instead of from the environment: the strict-mode
/// supervisor acts in `domain` (whose registry exists) with `mode`, reporting to
/// `report_path` (NUL-terminated) or stderr. Fails when the runtime was already set up or
/// the registry cannot be opened.
pub fn init_explicit(domain: &str, mode: Mode, report_path: Option<Vec<u8>>) -> Result<(), String> {
    let registry = Registry::open_existing(domain)
        .map_err(|e| format!("registry of domain {domain:?}: {e}"))?;
    let rt = Runtime {
        mode,
        registry: Some(registry),
        domain: domain.to_string(),
        report_path,
        exec_env: Vec::new(),
        library_path: Vec::new(),
        private_snapshots: false,
        snapshot_timeout_ms: 1000,
    };
    RUNTIME
        .set(rt)
        .map_err(|_| "the runtime is already set up".to_string())
}

/// Writes one line to stderr with a raw syscall (no stdio, no hooks).
pub fn warn(msg: &str) {
    let line = format!("splicecow: {msg}\n");
    // SAFETY: the buffer outlives the call.
    unsafe { libc::syscall(libc::SYS_write, 2, line.as_ptr(), line.len()) };
}

fn env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// The path of this shared object (from `dladdr` on one of its functions).
fn library_path() -> Vec<u8> {
    // SAFETY: Dl_info is plain data; dladdr fills it for an address inside a loaded object.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `get` is a function of this library; dladdr only reads its address.
    let ok = unsafe { libc::dladdr(get as *const libc::c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return Vec::new();
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the dynamic loader.
    unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }
        .to_bytes()
        .to_vec()
}

fn init() -> Runtime {
    let mut mode = match env(names::MODE).as_deref().map(str::trim) {
        None | Some("") => Mode::Protect,
        Some(name) => Mode::parse(name).unwrap_or_else(|| {
            warn(&format!(
                "{}={name:?} is not one of protect, detect, copy, off; using protect",
                names::MODE
            ));
            Mode::Protect
        }),
    };
    let domain = match env(names::DOMAIN) {
        None => DEFAULT_DOMAIN.to_string(),
        Some(d) if d.is_empty() => DEFAULT_DOMAIN.to_string(),
        Some(d) => d,
    };
    let report_path = env(names::REPORT).filter(|p| !p.is_empty()).map(|p| {
        let mut v = p.into_bytes();
        v.push(0);
        v
    });
    if let Some(spec) = env(names::TEST_PAUSE) {
        if let Err(item) = splicecow_registry::pause::configure(&spec) {
            warn(&format!(
                "{}: {item:?} is not POINT:MICROSECONDS (points: record, commit, retire, \
                 holder, settle); ignored",
                names::TEST_PAUSE
            ));
        }
    }
    let registry = if mode == Mode::Off {
        None
    } else {
        // Only the domain's first process sizes its registry (and warns of a bad size).
        let sized = || {
            let (capacity, warning) = Capacity::from_env();
            if let Some(w) = warning {
                warn(&w);
            }
            capacity
        };
        match Registry::open_or_create_with(&domain, sized) {
            Ok(r) => {
                // The test pauses stop this process in its own domain's updates only.
                r.allow_test_pauses();
                Some(r)
            }
            Err(e) => {
                let fallback = if mode == Mode::Detect {
                    Mode::Off
                } else {
                    Mode::Copy
                };
                warn(&format!(
                    "registry of domain {domain:?}: {e}; running in {} mode",
                    if fallback == Mode::Off { "off" } else { "copy" }
                ));
                mode = fallback;
                None
            }
        }
    };
    let library_path = library_path();
    let exec_env = std::env::vars_os()
        .filter_map(|(k, v)| {
            let (k, v) = (k.into_encoded_bytes(), v.into_encoded_bytes());
            let ours = !library_path.is_empty()
                && v.windows(library_path.len())
                    .any(|w| w == library_path.as_slice());
            let keep = k.starts_with(names::PREFIX.as_bytes()) || (k == b"LD_PRELOAD" && ours);
            keep.then(|| [k, b"=".to_vec(), v].concat())
        })
        .collect();
    let private_snapshots = match env(names::PRIVATE_SNAPSHOTS).as_deref().map(str::trim) {
        None | Some("") | Some("0") => false,
        Some("1") => true,
        Some(other) => {
            warn(&format!(
                "{}={other:?} is not 0 or 1; using 0",
                names::PRIVATE_SNAPSHOTS
            ));
            false
        }
    };
    let snapshot_timeout_ms = env(names::SNAPSHOT_TIMEOUT_MS)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1000);
    Runtime {
        mode,
        registry,
        domain,
        report_path,
        exec_env,
        library_path,
        private_snapshots,
        snapshot_timeout_ms,
    }
}

impl Runtime {
    /// The registry when the mode tracks splices (protect or detect) and the kernel
    /// does not already copy on splice (then there is nothing to protect).
    pub fn tracking(&self) -> Option<&Registry> {
        match self.mode {
            Mode::Protect | Mode::Detect => self
                .registry
                .as_ref()
                .filter(|r| !r.kernel_copies_on_splice()),
            Mode::Copy | Mode::Off => None,
        }
    }
}
