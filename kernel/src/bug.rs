//! BUG reports: a failure the kernel finds in itself where no caller can be
//! told (a refused free in a Drop or an undo path, a table mmu_gather
//! refuses). Each prints a `BUG: <subsystem>: ...` line and is counted; the
//! ktest runner samples the count around every suite (as a leak counter),
//! so an unexpected report fails the suite that caused it. Tests that
//! provoke one on purpose announce it first (`expect_reports`): it is then
//! printed with a note and not counted.
//!
//! Linux: WARN/BUG reporting (include/asm-generic/bug.h), counted instead of halting.

use core::sync::atomic::{AtomicU64, Ordering};

static REPORTS: AtomicU64 = AtomicU64::new(0);
static EXPECTED: AtomicU64 = AtomicU64::new(0);

/// Report a bug of `subsystem` (`dat`, `gmap`, ...).
pub fn report(subsystem: &str, what: core::fmt::Arguments<'_>) {
    let expected = EXPECTED
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let note = if expected {
        " (expected by a test)"
    } else {
        ""
    };
    crate::pr_info!("BUG: {}: {}{}", subsystem, what, note);
    if !expected {
        REPORTS.fetch_add(1, Ordering::SeqCst);
    }
}

/// Unexpected reports since boot.
pub fn nr_reports() -> u64 {
    REPORTS.load(Ordering::SeqCst)
}

/// Tests: the next `n` reports are provoked on purpose. Returns how many
/// were still expected before. The allowance is global, not per CPU: a
/// report on any CPU uses it up, so tests that provoke reports run while
/// the other CPUs are idle.
pub fn expect_reports(n: u64) -> u64 {
    EXPECTED.swap(n, Ordering::SeqCst)
}
