//! The registry's table lock: an owner-id word in shared memory that survives the death
//! of its holder (a waiter that finds the owner thread gone takes the lock over).

use crate::sys;
use crossbeam_utils::Backoff;
use std::sync::atomic::{AtomicU64, Ordering};

/// How long a waiter spins/sleeps between liveness checks of the owner.
const LIVENESS_CHECK_NS: u64 = 2_000_000;

/// Identifies the calling thread as a lock owner: `pid << 32 | tid`.
pub fn owner_id() -> u64 {
    ((sys::getpid() as u32 as u64) << 32) | sys::gettid() as u32 as u64
}

/// True when the thread that `owner` (an [`owner_id`]) names is still alive.
pub fn owner_alive(owner: u64) -> bool {
    sys::thread_alive((owner >> 32) as i32, owner as u32 as i32)
}

/// Acquires `word`; returns true when the lock was taken over from a dead owner.
pub fn acquire(word: &AtomicU64) -> bool {
    let me = owner_id();
    let backoff = Backoff::new();
    let mut next_check = 0u64;
    loop {
        let cur = word.load(Ordering::Relaxed);
        if cur == 0 {
            if word
                .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return false;
            }
            continue;
        }
        if backoff.is_completed() {
            let now = sys::monotonic_ns();
            if next_check == 0 {
                next_check = now + LIVENESS_CHECK_NS;
            } else if now >= next_check {
                next_check = now + LIVENESS_CHECK_NS;
                let (pid, tid) = ((cur >> 32) as i32, cur as u32 as i32);
                if (cur == me || !sys::thread_alive(pid, tid))
                    && word
                        .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                {
                    return true;
                }
            }
            sys::sleep_ns(20_000);
        } else {
            backoff.snooze();
        }
    }
}

/// Releases `word` (held by the caller).
pub fn release(word: &AtomicU64) {
    word.store(0, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_of_dead_owner_is_taken_over() {
        // A pid far above pid_max never exists.
        let word = AtomicU64::new((0x3fff_fff0u64 << 32) | 0x3fff_fff0);
        let start = std::time::Instant::now();
        assert!(acquire(&word));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(word.load(Ordering::Relaxed), owner_id());
        release(&word);
        assert!(!acquire(&word));
        release(&word);
    }

    #[test]
    fn lock_of_an_unreaped_zombie_is_taken_over() {
        // SAFETY: the child only exits; the parent reaps it below.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: leaving the forked child at once.
            unsafe { libc::_exit(0) };
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let word = AtomicU64::new(((child as u32 as u64) << 32) | child as u32 as u64);
        let start = std::time::Instant::now();
        assert!(acquire(&word), "the zombie's lock is taken over");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        release(&word);
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    }
}
