//! Exception table, as Linux's extable: an instruction marked with an entry
//! may take a program check; the handler then resumes at the entry's fixup
//! with the interruption code, ILC and TEID in r0/r1 instead of crashing.
//!
//! Entries are (instruction, instruction end, fixup). Both ends are recorded
//! because the old PSW points at the instruction for nullifying exceptions
//! (translation) and past it for suppressing ones (protection, operation).

use crate::arch::pgm::ProgramCheck;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExEntry {
    pub insn: u64,
    pub end: u64,
    pub fixup: u64,
}

const _: () = assert!(core::mem::size_of::<ExEntry>() == 24);

/// r0 value the handler leaves at the fixup: this flag, the ILC in bits
/// 16-23 and the interruption code in bits 0-15. A probe that did not fault
/// leaves r0 at 0.
pub const FAULTED: u64 = 1 << 32;

/// Emit an exception-table entry from inside an `asm!` template.
#[macro_export]
macro_rules! ex_table_entry {
    ($insn:literal, $end:literal, $fixup:literal) => {
        concat!(
            ".pushsection __ex_table,\"a\"\n",
            ".balign 8\n",
            ".quad ",
            $insn,
            ", ",
            $end,
            ", ",
            $fixup,
            "\n",
            ".popsection\n"
        )
    };
}

extern "C" {
    static __start___ex_table: ExEntry;
    static __stop___ex_table: ExEntry;
}

fn entries() -> &'static [ExEntry] {
    // SAFETY: the linker script brackets the __ex_table section with these
    // symbols; it holds only ExEntry records (24 bytes, 8-aligned), written
    // by `ex_table_entry!`, and is read-only at run time.
    unsafe {
        let start = core::ptr::addr_of!(__start___ex_table);
        let stop = core::ptr::addr_of!(__stop___ex_table);
        let n = (stop as usize - start as usize) / core::mem::size_of::<ExEntry>();
        core::slice::from_raw_parts(start, n)
    }
}

/// The fixup for a program check whose old PSW points at `addr`.
pub fn search(addr: u64) -> Option<u64> {
    entries()
        .iter()
        .find(|e| e.insn == addr || e.end == addr)
        .map(|e| e.fixup)
}

pub fn count() -> usize {
    entries().len()
}

/// Decode the r0/r1 pair a probe returns.
pub fn decode(r0: u64, r1: u64) -> Result<(), ProgramCheck> {
    if r0 & FAULTED == 0 {
        return Ok(());
    }
    Err(ProgramCheck {
        code: r0 as u16,
        ilc: (r0 >> 16) as u8,
        teid: r1,
    })
}

pub fn encode(pc: &ProgramCheck) -> (u64, u64) {
    (FAULTED | ((pc.ilc as u64) << 16) | pc.code as u64, pc.teid)
}
