//! Fault injection: make the N-th page allocation fail (command line
//! `fail.alloc=N`, or `fail_alloc_nth` from tests), to prove every
//! allocation point unwinds cleanly. One shot: after the failure, allocations
//! succeed again.
//!
//! Linux: mm/fail_page_alloc.c (fail_page_alloc's `times`/`interval`, reduced to one shot).

use core::sync::atomic::{AtomicU64, Ordering};

/// Allocations left before the one that fails (0: off).
static COUNTDOWN: AtomicU64 = AtomicU64::new(0);
/// Failures injected since boot.
static INJECTED: AtomicU64 = AtomicU64::new(0);

/// Make the `n`-th page allocation from now on fail (n >= 1; 0 turns
/// injection off).
pub fn fail_alloc_nth(n: u64) {
    COUNTDOWN.store(n, Ordering::SeqCst);
}

pub fn fail_alloc_off() {
    COUNTDOWN.store(0, Ordering::SeqCst);
}

/// Whether the armed failure is still waiting (the code under test made
/// fewer allocations than n).
pub fn pending() -> bool {
    COUNTDOWN.load(Ordering::SeqCst) != 0
}

pub fn injected() -> u64 {
    INJECTED.load(Ordering::Relaxed)
}

/// Whether a failure is armed: the allocator's fast paths test this one
/// word and leave everything else to `should_fail` on the slow path.
#[inline(always)]
pub fn armed() -> bool {
    COUNTDOWN.load(Ordering::Relaxed) != 0
}

/// Called by every page allocation (the slow path; the fast path only runs
/// while nothing is armed): true if this one must fail.
pub fn should_fail() -> bool {
    let mut cur = COUNTDOWN.load(Ordering::Relaxed);
    while cur != 0 {
        match COUNTDOWN.compare_exchange_weak(cur, cur - 1, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => {
                if cur == 1 {
                    INJECTED.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                return false;
            }
            Err(v) => cur = v,
        }
    }
    false
}
