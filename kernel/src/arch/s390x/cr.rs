//! Control registers.

use core::arch::asm;

/// CR0 bits zdat uses (IBM bit n of the doubleword = 1 << (63 - n)).
pub mod cr0 {
    /// Secondary-space control: SACF/MVCP/MVCS may use the secondary space.
    pub const SECONDARY_SPACE: u64 = 1 << (63 - 37);
    /// External-interruption subclass masks.
    pub const EMERGENCY_SIGNAL: u64 = 1 << (63 - 49);
    pub const EXTERNAL_CALL: u64 = 1 << (63 - 50);
    pub const CLOCK_COMPARATOR: u64 = 1 << (63 - 52);
    pub const CPU_TIMER: u64 = 1 << (63 - 53);
    pub const SERVICE_SIGNAL: u64 = 1 << (63 - 54);
}

/// Read control register `CR`.
pub fn stctg<const CR: u8>() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: STCTG stores one doubleword into `v`, a valid local.
    unsafe {
        asm!("stctg {cr},{cr},0({p})", cr = const CR, p = in(reg_addr) &mut v,
             options(nostack, preserves_flags));
    }
    v
}

/// Load control register `CR`.
///
/// # Safety
/// The value must be valid for that register: a wrong ASCE, subclass mask or
/// DAT control changes how every following instruction is translated and
/// which interruptions arrive.
pub unsafe fn lctlg<const CR: u8>(v: u64) {
    let lc = crate::arch::lowcore::LCTL_COUNT;
    // SAFETY: LCTL_COUNT is this CPU's software slot in its lowcore, only
    // written here, with interruptions disabled (kernel code always runs so).
    unsafe { super::insn::lowcore_write_u64(lc, super::insn::lowcore_read_u64(lc) + 1) };
    // SAFETY: the caller vouches for the value; LCTLG reads one doubleword.
    unsafe {
        asm!("lctlg {cr},{cr},0({p})", cr = const CR, p = in(reg_addr) &v,
             options(nostack, preserves_flags));
    }
}

/// Set bits in CR0.
///
/// # Safety
/// As `lctlg`: enabling an interruption subclass must only happen when its
/// handler is ready.
pub unsafe fn cr0_set(bits: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { lctlg::<0>(stctg::<0>() | bits) }
}

/// Clear bits in CR0.
///
/// # Safety
/// As `lctlg`.
pub unsafe fn cr0_clear(bits: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { lctlg::<0>(stctg::<0>() & !bits) }
}

/// LCTLGs this CPU made through `lctlg` since it started. QEMU purges its
/// whole TLB on every one (PLATFORM.md), so a test that wants a warm TLB
/// checks this did not move inside its window.
pub fn lctl_count() -> u64 {
    super::insn::lowcore_read_u64(crate::arch::lowcore::LCTL_COUNT)
}

/// The kernel's home ASCE once DAT is on (0 before): what a guest exit
/// loads back into CR1. Set by `dat::enable_dat_home`, so arch code needs
/// nothing from the page-table code to find it.
static KERNEL_ASCE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

pub fn kernel_asce() -> u64 {
    KERNEL_ASCE.load(core::sync::atomic::Ordering::Relaxed)
}

pub(super) fn set_kernel_asce(asce: u64) {
    KERNEL_ASCE.store(asce, core::sync::atomic::Ordering::Relaxed);
}
