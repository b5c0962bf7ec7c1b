//! Probes: single accesses and instructions that may take a program check.
//! Each marks its instruction in the exception table, so a fault returns
//! `Err(ProgramCheck)` with the code, ILC and TEID instead of ending the run.

use core::arch::asm;

use super::extable;
use crate::arch::pgm::ProgramCheck;
use crate::ex_table_entry;

/// Load a doubleword from `addr` (current address space).
pub(crate) fn load_u64(addr: u64) -> Result<u64, ProgramCheck> {
    let v: u64;
    let (r0, r1): (u64, u64);
    // SAFETY: a load has no effect besides its result; if the address is
    // invalid the program check resumes at label 3 via the exception table.
    unsafe {
        asm!(
            "2: lg {v},0({a})",
            "3:",
            ex_table_entry!("2b", "3b", "3b"),
            a = in(reg_addr) addr,
            v = inout(reg) 0u64 => v,
            inout("r0") 0u64 => r0,
            inout("r1") 0u64 => r1,
            options(nostack, readonly),
        );
    }
    extable::decode(r0, r1).map(|()| v)
}

/// Load a byte from `addr`.
pub(crate) fn load_u8(addr: u64) -> Result<u8, ProgramCheck> {
    let v: u64;
    let (r0, r1): (u64, u64);
    // SAFETY: as `load_u64`.
    unsafe {
        asm!(
            "2: llgc {v},0({a})",
            "3:",
            ex_table_entry!("2b", "3b", "3b"),
            a = in(reg_addr) addr,
            v = inout(reg) 0u64 => v,
            inout("r0") 0u64 => r0,
            inout("r1") 0u64 => r1,
            options(nostack, readonly),
        );
    }
    extable::decode(r0, r1).map(|()| v as u8)
}

/// Store a doubleword to `addr`.
///
/// # Safety
/// If the store succeeds it writes 8 bytes at `addr`: the caller guarantees
/// nothing else owns that memory.
pub unsafe fn store_u64(addr: u64, val: u64) -> Result<(), ProgramCheck> {
    let (r0, r1): (u64, u64);
    // SAFETY: the caller owns the target; a fault resumes at label 3.
    unsafe {
        asm!(
            "2: stg {v},0({a})",
            "3:",
            ex_table_entry!("2b", "3b", "3b"),
            a = in(reg_addr) addr,
            v = in(reg) val,
            inout("r0") 0u64 => r0,
            inout("r1") 0u64 => r1,
            options(nostack),
        );
    }
    extable::decode(r0, r1)
}

/// Execute an invalid opcode (0x0000): operation exception.
pub fn invalid_opcode() -> Result<(), ProgramCheck> {
    let (r0, r1): (u64, u64);
    // SAFETY: the operation exception suppresses the instruction and resumes
    // at label 3; nothing else is touched.
    unsafe {
        asm!(
            "2: .short 0x0000",
            "3:",
            ex_table_entry!("2b", "3b", "3b"),
            inout("r0") 0u64 => r0,
            inout("r1") 0u64 => r1,
            options(nostack, nomem),
        );
    }
    extable::decode(r0, r1)
}

/// CSG on an address that is not doubleword aligned: specification
/// exception (the operand must be aligned).
pub fn misaligned_csg() -> Result<(), ProgramCheck> {
    let mut buf = [0u64; 2];
    let addr = buf.as_mut_ptr() as u64 + 4;
    let (r0, r1): (u64, u64);
    // SAFETY: the target is a local buffer; the misaligned operand is
    // recognised before any access, so nothing is written, and the program
    // check resumes at label 3.
    unsafe {
        asm!(
            "2: csg {o},{n},0({a})",
            "3:",
            ex_table_entry!("2b", "3b", "3b"),
            a = in(reg_addr) addr,
            o = inout(reg) 0u64 => _,
            n = in(reg) 1u64,
            inout("r0") 0u64 => r0,
            inout("r1") 0u64 => r1,
            options(nostack),
        );
    }
    core::hint::black_box(&buf);
    extable::decode(r0, r1)
}

/// Switch to problem state and execute PTLB, a privileged instruction:
/// privileged-operation exception. The fixup returns in supervisor state
/// (the program-check handler clears the problem-state bit when it resumes
/// at a fixup).
pub fn privileged_in_problem_state() -> Result<(), ProgramCheck> {
    let mut psw = crate::arch::psw::Psw::default();
    let (r0, r1): (u64, u64);
    // SAFETY: the PSW loaded differs from the current one only in the
    // problem-state bit and resumes at label 2; PTLB there cannot execute in
    // problem state, so the program check comes back to label 3 in
    // supervisor state via the exception table. No memory but `psw` is
    // written.
    unsafe {
        asm!(
            "epsw {h},{l}",
            "llgfr {l},{l}",
            "sllg {h},{h},32",
            "ogr {h},{l}",
            "oihh {h},1",
            "stg {h},0({p})",
            "larl {l},2f",
            "stg {l},8({p})",
            "lpswe 0({p})",
            "2: ptlb",
            "3:",
            ex_table_entry!("2b", "3b", "3b"),
            h = out(reg_addr) _,
            l = out(reg_addr) _,
            p = in(reg_addr) &mut psw,
            inout("r0") 0u64 => r0,
            inout("r1") 0u64 => r1,
            options(nostack),
        );
    }
    extable::decode(r0, r1)
}
