//! Fault injection: make the N-th page allocation fail (command line
//! `fail.alloc=N`, or `fail_alloc_nth` from tests), to prove every
//! allocation point unwinds cleanly. One shot: after the failure, allocations
//! succeed again.
//!
//! Linux: mm/fail_page_alloc.c (fail_page_alloc's `times`/`interval`, reduced to one shot).
//!
//! The command-line countdown applies to the whole run: while it is
//! pending, tests that arm their own failures must not run
//! (`cmdline_pending`; the `fault_injection` suite and
//! `gmap.protect_range_failure_changes_nothing` then `# SKIP`), and
//! `fail_alloc_nth`/`fail_alloc_off` refuse to overwrite it. At the end of
//! the run `cmdline_report` says whether it fired, or how many allocations
//! the run made instead.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Allocations left before the one that fails (0: off).
static COUNTDOWN: AtomicU64 = AtomicU64::new(0);
/// Failures injected since boot.
static INJECTED: AtomicU64 = AtomicU64::new(0);
/// N of `fail.alloc=N` (0: not given).
static CMDLINE_N: AtomicU64 = AtomicU64::new(0);
/// Whether the countdown running now is the command line's.
static CMDLINE_OWNS: AtomicBool = AtomicBool::new(false);
/// Whether the command-line failure has fired.
static CMDLINE_FIRED: AtomicBool = AtomicBool::new(false);

/// Make the `n`-th page allocation from now on fail (n >= 1; 0 turns
/// injection off). For tests: it panics if the command line's countdown is
/// pending, since overwriting it would silently cancel `fail.alloc=N`
/// (a test checks `cmdline_pending` first and skips).
pub fn fail_alloc_nth(n: u64) {
    assert!(
        !cmdline_pending(),
        "fail_alloc_nth({n}) while fail.alloc from the command line is pending: the test must skip (fail::cmdline_pending)"
    );
    COUNTDOWN.store(n, Ordering::SeqCst);
}

/// Disarm a test's failure (the command line's, if pending, stays).
pub fn fail_alloc_off() {
    if !cmdline_pending() {
        COUNTDOWN.store(0, Ordering::SeqCst);
    }
}

/// `fail.alloc=N` from the command line: the N-th page allocation from
/// now on fails, whatever runs in between.
pub fn fail_alloc_cmdline(n: u64) {
    CMDLINE_N.store(n, Ordering::SeqCst);
    CMDLINE_FIRED.store(false, Ordering::SeqCst);
    CMDLINE_OWNS.store(n != 0, Ordering::SeqCst);
    COUNTDOWN.store(n, Ordering::SeqCst);
}

/// Whether the armed failure is still waiting (the code under test made
/// fewer allocations than n).
pub fn pending() -> bool {
    COUNTDOWN.load(Ordering::SeqCst) != 0
}

/// Whether `fail.alloc=N` from the command line is armed and has not
/// fired yet: a test that injects its own failures cannot run now.
pub fn cmdline_pending() -> bool {
    CMDLINE_OWNS.load(Ordering::SeqCst) && !CMDLINE_FIRED.load(Ordering::SeqCst)
}

/// Page allocations made since `fail.alloc=N` was armed, while it is still
/// pending (counted by the countdown, so only on the slow path).
pub fn cmdline_allocations() -> Option<u64> {
    if !cmdline_pending() {
        return None;
    }
    Some(CMDLINE_N.load(Ordering::SeqCst) - COUNTDOWN.load(Ordering::SeqCst))
}

/// Whether the command line's failure has fired.
pub fn cmdline_fired() -> bool {
    CMDLINE_FIRED.load(Ordering::SeqCst)
}

/// What became of `fail.alloc=N`: None if it was not given, else
/// (N, Ok(()) if it fired, Err(allocations made) if the run made fewer
/// than N).
pub fn cmdline_report() -> Option<(u64, Result<(), u64>)> {
    let n = CMDLINE_N.load(Ordering::SeqCst);
    if n == 0 {
        return None;
    }
    if cmdline_fired() {
        return Some((n, Ok(())));
    }
    Some((n, Err(n - COUNTDOWN.load(Ordering::SeqCst))))
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
                    if CMDLINE_OWNS.load(Ordering::SeqCst) {
                        cmdline_fires();
                    }
                    return true;
                }
                return false;
            }
            Err(v) => cur = v,
        }
    }
    false
}

/// The command line's failure fires now: say so, with the call chain of
/// the allocation (x.py symbolizes it), once per run.
#[cold]
#[inline(never)]
fn cmdline_fires() {
    CMDLINE_FIRED.store(true, Ordering::SeqCst);
    CMDLINE_OWNS.store(false, Ordering::SeqCst);
    crate::pr_info!(
        "mm: fault injection: fail.alloc={}: this page allocation fails",
        CMDLINE_N.load(Ordering::SeqCst)
    );
    #[cfg(target_arch = "s390x")]
    crate::panic::backtrace_here();
}
