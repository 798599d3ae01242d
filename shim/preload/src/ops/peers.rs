//! The user's other domains: one user, one protection. A change by any process of the
//! user settles (or, where that domain runs in detect mode, reports) the in-flight
//! segments of the file in every domain of the user that has some, found through the
//! user index without scanning the domains. Their registries are opened on first use
//! (never created: a domain exists while its processes do) and kept mapped.

use crate::state::runtime;
use crossbeam_utils::Backoff;
use splicecow_registry::index::Index;
use splicecow_registry::{OpenError, Registry, MAX_DOMAIN_LEN};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Other domains kept mapped at once (beyond them, a registry is opened for one use).
const MAX_PEERS: usize = 16;

static INDEX: OnceLock<Option<Index>> = OnceLock::new();

/// The user index, opened (or created) once.
pub fn index() -> Option<&'static Index> {
    INDEX
        .get_or_init(|| match Index::open_or_create() {
            Ok(i) => Some(i),
            Err(e) => {
                runtime::warn(&format!(
                    "user index: {e}; changes are checked against this domain only"
                ));
                None
            }
        })
        .as_ref()
}

/// Called once, from the library constructor: this domain joins the user index (what it
/// has live is published at once) and records its mode for the other domains.
pub fn install() {
    let rt = runtime::get();
    if let (Some(reg), Some(index)) = (rt.tracking(), index()) {
        reg.claim_mode(rt.mode);
        reg.join_index(index);
    }
}

type Name = ([u8; MAX_DOMAIN_LEN], usize);

/// The registries opened so far, by domain name.
struct Peers {
    locked: AtomicBool,
    slots: UnsafeCell<[Option<(Name, &'static Registry)>; MAX_PEERS]>,
}

// SAFETY: `slots` is only accessed while `locked` is held (see `cached`).
unsafe impl Sync for Peers {}

static PEERS: Peers = Peers {
    locked: AtomicBool::new(false),
    slots: UnsafeCell::new([None; MAX_PEERS]),
};

fn name_of(domain: &str) -> Option<Name> {
    let mut name = [0u8; MAX_DOMAIN_LEN];
    name.get_mut(..domain.len())?
        .copy_from_slice(domain.as_bytes());
    Some((name, domain.len()))
}

/// The cached registry of `name`, or caches `opened` (when there is room).
fn cached(name: Name, opened: Option<&'static Registry>) -> Option<&'static Registry> {
    let backoff = Backoff::new();
    while PEERS.locked.swap(true, Ordering::Acquire) {
        backoff.snooze();
    }
    // SAFETY: we hold `locked`: this is the only reference to the slots.
    let slots = unsafe { &mut *PEERS.slots.get() };
    let found = slots
        .iter()
        .flatten()
        .find(|(n, _)| *n == name)
        .map(|&(_, r)| r);
    let r = match (found, opened) {
        (Some(r), _) => Some(r),
        (None, Some(r)) => slots
            .iter_mut()
            .find(|s| s.is_none())
            .map(|s| s.insert((name, r)).1),
        (None, None) => None,
    };
    PEERS.locked.store(false, Ordering::Release);
    r
}

/// Whether [`with`] reached a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Its registry was opened and `f` ran.
    Yes,
    /// Its registry is missing, corrupt, of another layout or not ours: the domain has
    /// nothing to protect.
    Gone,
    /// It could not be opened now (out of fds or memory): try again next time.
    NotNow,
}

/// Runs `f` with the registry of the user's domain `domain`.
pub fn with(domain: &str, index: &'static Index, f: impl FnOnce(&Registry)) -> Reached {
    let Some(name) = name_of(domain) else {
        return Reached::Gone;
    };
    if let Some(reg) = cached(name, None) {
        f(reg);
        return Reached::Yes;
    }
    let reg = match Registry::open_existing(domain) {
        Ok(reg) => reg,
        Err(OpenError::Sys(..)) => return Reached::NotNow,
        Err(_) => return Reached::Gone,
    };
    reg.join_index(index);
    let reg: &'static Registry = Box::leak(Box::new(reg));
    let kept = cached(name, Some(reg));
    f(kept.unwrap_or(reg));
    if !kept.is_some_and(|k| std::ptr::eq(k, reg)) {
        // SAFETY: `reg` was leaked above and is not cached (no room, or another thread
        // cached the same domain first): nothing else refers to it.
        drop(unsafe { Box::from_raw(reg as *const Registry as *mut Registry) });
    }
    Reached::Yes
}
