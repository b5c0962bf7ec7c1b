//! Timestamps for log lines: microseconds since boot from the TOD clock.

use core::sync::atomic::{AtomicU64, Ordering};

static BOOT_TOD: AtomicU64 = AtomicU64::new(0);

/// Remember the TOD value that counts as time 0.
pub fn init() {
    BOOT_TOD.store(now_tod(), Ordering::Relaxed);
}

#[cfg(target_arch = "s390x")]
fn now_tod() -> u64 {
    crate::arch::s390x::tod::stck()
}

#[cfg(not(target_arch = "s390x"))]
fn now_tod() -> u64 {
    0
}

/// TOD units since `init` (the kernel's first steps).
pub fn uptime_tod() -> u64 {
    now_tod().wrapping_sub(BOOT_TOD.load(Ordering::Relaxed))
}

/// Microseconds since `init` (TOD bit 51 is one microsecond).
pub fn uptime_us() -> u64 {
    now_tod().wrapping_sub(BOOT_TOD.load(Ordering::Relaxed)) >> 12
}
