//! SIGNAL PROCESSOR and the secondary CPUs' first instructions.

use core::arch::{asm, global_asm};

use crate::arch::lowcore;

pub mod order {
    pub const SENSE: u8 = 0x01;
    pub const EXTERNAL_CALL: u8 = 0x02;
    pub const EMERGENCY_SIGNAL: u8 = 0x03;
    pub const STOP: u8 = 0x05;
    pub const RESTART: u8 = 0x06;
    pub const SET_PREFIX: u8 = 0x0d;
}

/// SIGP status bit: the CPU is stopped.
pub const STATUS_STOPPED: u64 = 0x40;

/// One SIGP: (condition code, status word when cc is 1).
///
/// # Safety
/// Orders change the target CPU's state (prefix, stop, restart): the caller
/// must have prepared what the CPU will find.
pub unsafe fn sigp(cpu: u16, ord: u8, param: u64) -> (u32, u64) {
    let cc: u32;
    let status: u64;
    // SAFETY: forwarded to the caller. r0 receives the status, r1 holds the
    // parameter; the order code is the second-operand address.
    unsafe {
        asm!(
            "sigp %r0,{cpu},0({ord})",
            "ipm {cc}",
            "srl {cc},28",
            cpu = in(reg) cpu as u64,
            ord = in(reg_addr) ord as u64,
            cc = out(reg) cc,
            inout("r0") 0u64 => status,
            in("r1") param,
            options(nostack),
        );
    }
    (cc, status)
}

/// SIGP, retried while the target is busy (cc 2): with multi-threaded TCG
/// two CPUs signalling at once see busy, and a lost STOP would leave QEMU
/// running for ever.
///
/// # Safety
/// As `sigp`.
pub unsafe fn sigp_retry(cpu: u16, ord: u8, param: u64) -> (u32, u64) {
    loop {
        // SAFETY: forwarded to the caller.
        let r = unsafe { sigp(cpu, ord, param) };
        if r.0 != 2 {
            return r;
        }
        core::hint::spin_loop();
    }
}

// A secondary CPU starts here (restart new PSW, DAT off, its own prefix):
// load the control registers the boot CPU left in its lowcore, take its
// stack, switch to DAT on in home-space mode and call zdat_secondary_main.
global_asm!(
    ".section .text.smp,\"ax\"",
    ".globl zdat_secondary_entry",
    ".balign 8",
    "zdat_secondary_entry:",
    "    lctlg 0,15,{crs}",
    "    lg %r15,{stack}",
    "    lpswe {psw}",
    ".globl zdat_secondary_dat",
    "zdat_secondary_dat:",
    "    xc 0(8,%r15),0(%r15)",
    "    lg %r2,{cpunr}",
    "    brasl %r14,zdat_secondary_main",
    "    .short 0x0000",
    crs = const lowcore::CR_SAVE,
    stack = const lowcore::SECONDARY_STACK,
    psw = const lowcore::SECONDARY_PSW,
    cpunr = const lowcore::CPU_NR,
);

extern "C" {
    fn zdat_secondary_entry();
    fn zdat_secondary_dat();
}

pub fn secondary_entry() -> u64 {
    zdat_secondary_entry as *const () as usize as u64
}

pub fn secondary_dat() -> u64 {
    zdat_secondary_dat as *const () as usize as u64
}
