//! Test pauses: named points inside registry updates and settles where a process can be
//! told to sleep (`SPLICECOW_TEST_PAUSE=point:microseconds[,point:microseconds...]`), so
//! a fault-injection test can SIGKILL it exactly there. Unset, each point costs one
//! relaxed load. The sleep is a raw `nanosleep` of the configured length (the shim's
//! 20 µs lock waits use `nanosleep` too): a test finds a paused process by its
//! `/proc/<pid>/task/*/syscall` and the requested time. A registry pauses only once the
//! process allowed it for its own domain (`Registry::allow_test_pauses`).

use std::sync::atomic::{AtomicU64, Ordering};

/// A place where a test can pause a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Recording a segment: after the pipe's ring took it, before the file record and the
    /// domain's live count did.
    Record,
    /// Committing a kernel call's result: after the ring dropped an unused intent, before
    /// the counters followed.
    Commit,
    /// Retiring consumed segments: after the ring let them go, before the counters did.
    Retire,
    /// Remembering a pipe holder: halfway through rewriting the holder list.
    Holder,
    /// Settling a pipe: between draining it and writing the bytes back.
    Settle,
    /// A recorded file→pipe splice: its intent and its pipe's in-call mark are set, the
    /// lock is free, the kernel call has not run yet.
    Call,
}

const POINTS: [(Point, &str); 6] = [
    (Point::Record, "record"),
    (Point::Commit, "commit"),
    (Point::Retire, "retire"),
    (Point::Holder, "holder"),
    (Point::Settle, "settle"),
    (Point::Call, "call"),
];

static PAUSE_US: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

impl Point {
    /// The point's name in `SPLICECOW_TEST_PAUSE`.
    pub fn name(self) -> &'static str {
        crate::bounded::at(&POINTS, self as usize).1
    }
}

/// Sets the pauses from a `SPLICECOW_TEST_PAUSE` value; returns the first item it could
/// not understand (the others still apply).
pub fn configure(spec: &str) -> Result<(), String> {
    let mut bad = None;
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let parsed = item.split_once(':').and_then(|(name, us)| {
            let point = POINTS.iter().find(|(_, n)| *n == name.trim())?.0;
            Some((point, us.trim().parse::<u64>().ok()?))
        });
        match parsed {
            Some((point, us)) => {
                crate::bounded::at(&PAUSE_US, point as usize).store(us, Ordering::Relaxed)
            }
            None => {
                bad.get_or_insert_with(|| item.to_string());
            }
        }
    }
    bad.map_or(Ok(()), Err)
}

/// Sleeps for the pause configured at `point`, if any.
pub fn at(point: Point) {
    let us = crate::bounded::at(&PAUSE_US, point as usize).load(Ordering::Relaxed);
    if us > 0 {
        crate::sys::sleep_ns(us.saturating_mul(1000));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_items_are_named() {
        for (p, n) in POINTS {
            assert_eq!(p.name(), n);
        }
        assert_eq!(
            configure("record:0, bogus:5,commit:x"),
            Err("bogus:5".to_string())
        );
        assert_eq!(configure("retire:0"), Ok(()));
    }
}
