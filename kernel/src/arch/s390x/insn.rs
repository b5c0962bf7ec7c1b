//! Single instructions that change CPU state: waits, service calls, stop.

use core::arch::asm;

use crate::arch::psw::{mask, Psw};

/// SERVC: start an SCLP command. Returns the condition code (0 initiated,
/// 2 busy, 3 not operational).
///
/// # Safety
/// `sccb` must be the real address of an SCCB that stays valid and is not
/// touched until the service-signal interruption reports completion.
pub unsafe fn servc(command: u32, sccb: u64) -> u32 {
    let cc: u32;
    // SAFETY: the caller provides a valid SCCB; SERVC only sets the cc.
    unsafe {
        asm!(
            ".insn rre,0xb2200000,{cmd},{sccb}",
            "ipm {cc}",
            "srl {cc},28",
            cmd = in(reg) command as u64,
            sccb = in(reg) sccb,
            cc = out(reg) cc,
            options(nostack),
        );
    }
    cc
}

/// The current PSW mask (EPSW).
pub fn psw_mask() -> u64 {
    let hi: u64;
    let lo: u64;
    // SAFETY: EPSW only reads the PSW into two registers. Both are `reg_addr`
    // because r0 as the second operand means "not stored".
    unsafe {
        asm!("epsw {hi},{lo}", hi = out(reg_addr) hi, lo = out(reg_addr) lo,
             options(nomem, nostack, preserves_flags));
    }
    ((hi & 0xffff_ffff) << 32) | (lo & 0xffff_ffff)
}

/// Continue at the next instruction under PSW mask `mask` (LPSWE to a
/// label right after it).
///
/// # Safety
/// The new mask must keep every address the kernel uses valid (DAT and
/// address-space bits), and with a wait bit an interruption must be able to
/// end the wait.
pub unsafe fn continue_with_mask(mask: u64) {
    let mut psw = Psw::new(mask, 0);
    // SAFETY: forwarded to the caller. Memory may change meanwhile (handlers
    // run during a wait), so no `nomem`.
    unsafe {
        asm!(
            "larl {t},2f",
            "stg {t},8({p})",
            "lpswe 0({p})",
            "2:",
            t = out(reg) _,
            p = in(reg_addr) &mut psw,
            options(nostack),
        );
    }
}

/// Wait with the interruption classes in `enable` (`mask::EXT`, `mask::IO`)
/// open until one arrives. The interrupt exit path turns the wait PSW back
/// into the caller's mask (`interrupt::finish_wait`), so this returns after
/// exactly one interruption was handled, with interruptions disabled again.
pub fn enabled_wait(enable: u64) {
    // SAFETY: the PSW differs from the current one only in the wait bit and
    // interruption masks; the handler clears them again before it returns.
    unsafe { continue_with_mask(psw_mask() | enable | mask::WAIT) };
}

/// Load a disabled-wait PSW: the CPU stops for good. With `-no-reboot
/// -action panic=exit-failure` QEMU exits 0 for address 0xfff and 1 for any
/// other address.
pub fn disabled_wait(addr: u64) -> ! {
    let psw = Psw::disabled_wait(addr);
    // SAFETY: a disabled wait never resumes; the PSW is a valid local.
    unsafe {
        asm!("lpswe 0({p})", p = in(reg_addr) &psw, options(noreturn, nostack));
    }
}

/// STAP: this CPU's address.
pub fn stap() -> u16 {
    let mut v: u16 = 0;
    // SAFETY: STAP stores one halfword into `v`.
    unsafe {
        asm!("stap 0({p})", p = in(reg_addr) &mut v, options(nostack));
    }
    v
}

/// Read a doubleword of the lowcore (real address below 8 KiB).
pub(crate) fn lowcore_read_u64(off: usize) -> u64 {
    debug_assert!(off < 0x2000 && off.is_multiple_of(8));
    // SAFETY: the lowcore is always mapped (prefix area, identity/real);
    // reading it has no side effect.
    unsafe { core::ptr::read_volatile(off as *const u64) }
}

/// Write a doubleword of the lowcore.
///
/// # Safety
/// The slot must be one zdat owns (a software slot or a new PSW it means to
/// replace); architected fields written by the CPU must not be clobbered
/// while an interruption is being handled.
pub unsafe fn lowcore_write_u64(off: usize, v: u64) {
    debug_assert!(off < 0x2000 && off.is_multiple_of(8));
    // SAFETY: forwarded to the caller.
    unsafe { core::ptr::write_volatile(off as *mut u64, v) }
}
