//! Installed facilities: STFLE once at boot, then `has_facility(n)`.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Facility bits (STFLE numbering, as QEMU's cpu_features_def.h.inc).
pub const DAT_ENHANCEMENT: u32 = 3;
pub const IDTE_SEGMENT: u32 = 4;
pub const IDTE_REGION: u32 = 5;
pub const STFLE: u32 = 7;
pub const EDAT1: u32 = 8;
pub const STCKF: u32 = 25;
pub const LOCAL_TLB_CLEARING: u32 = 51;
pub const EDAT2: u32 = 78;
pub const IEP: u32 = 130;
/// Side-effect-access and ESOP-2.
pub const ESOP2: u32 = 131;

const WORDS: usize = 4;

static LIST: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];
static DETECTED: AtomicBool = AtomicBool::new(false);
/// ESOP-1 is not an STFLE bit: SCLP Read SCP Info reports it (byte 85).
static ESOP1: AtomicBool = AtomicBool::new(false);

/// Run STFLE and remember the list. Called once by boot before anything
/// asks `has_facility`.
pub fn detect() {
    let mut buf = [0u64; WORDS];
    // SAFETY: STFLE stores at most r0+1 = WORDS doublewords into `buf` and
    // sets r0 to the number the machine has minus one.
    unsafe {
        asm!("stfle 0({p})", p = in(reg_addr) buf.as_mut_ptr(),
             inout("r0") (WORDS - 1) as u64 => _, options(nostack));
    }
    for (slot, v) in LIST.iter().zip(buf) {
        slot.store(v, Ordering::Relaxed);
    }
    DETECTED.store(true, Ordering::Release);
}

pub fn set_esop1(present: bool) {
    ESOP1.store(present, Ordering::Relaxed);
}

pub fn has_esop1() -> bool {
    ESOP1.load(Ordering::Relaxed)
}

/// Whether facility `nr` is installed (false before `detect` ran).
pub fn has_facility(nr: u32) -> bool {
    let word = (nr / 64) as usize;
    if word >= WORDS || !DETECTED.load(Ordering::Acquire) {
        return false;
    }
    LIST[word].load(Ordering::Relaxed) & (1u64 << (63 - nr % 64)) != 0
}

/// The DAT-relevant facilities, named for the boot log.
pub const DAT_FACILITIES: [(u32, &str); 8] = [
    (DAT_ENHANCEMENT, "DAT-enh"),
    (IDTE_SEGMENT, "IDTE-seg"),
    (EDAT1, "EDAT-1"),
    (EDAT2, "EDAT-2"),
    (IEP, "IEP"),
    (ESOP2, "ESOP-2"),
    (LOCAL_TLB_CLEARING, "local-TLB-clearing"),
    (STCKF, "STCKF"),
];
