//! The TOD clock, clock comparator and CPU timer. Bit 51 of the TOD clock
//! ticks once a microsecond, so `tod >> 12` is microseconds.

use core::arch::asm;

use super::facility;

/// STCK: the TOD clock (unique, monotonic).
pub fn stck() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: STCK stores one doubleword into `v`.
    unsafe {
        asm!("stck 0({p})", p = in(reg_addr) &mut v, options(nostack));
    }
    v
}

/// STCKF: the TOD clock without the uniqueness interlock (facility 25).
/// Returns `None` where the facility is absent.
pub fn stckf() -> Option<u64> {
    if !facility::has_facility(facility::STCKF) {
        return None;
    }
    let mut v: u64 = 0;
    // SAFETY: STCKF stores one doubleword into `v`; the facility is installed.
    unsafe {
        asm!("stckf 0({p})", p = in(reg_addr) &mut v, options(nostack));
    }
    Some(v)
}

/// Set the clock comparator.
pub fn sckc(v: u64) {
    // SAFETY: SCKC reads one doubleword; an interruption only follows if the
    // caller enabled the clock-comparator subclass in CR0.
    unsafe {
        asm!("sckc 0({p})", p = in(reg_addr) &v, options(nostack));
    }
}

/// Set the CPU timer.
pub fn spt(v: u64) {
    // SAFETY: SPT reads one doubleword; interruptions only with CR0 enabled.
    unsafe {
        asm!("spt 0({p})", p = in(reg_addr) &v, options(nostack));
    }
}

/// Store the CPU timer.
pub fn stpt() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: STPT stores one doubleword into `v`.
    unsafe {
        asm!("stpt 0({p})", p = in(reg_addr) &mut v, options(nostack));
    }
    v
}

pub const TOD_PER_USEC: u64 = 1 << 12;

pub const fn usecs_to_tod(us: u64) -> u64 {
    us << 12
}
