//! DAT instructions: invalidation (IPTE, IDTE, CSPG, PTLB), turning DAT on,
//! and accesses through the secondary space (CR7) for tests and gmaps.

use core::arch::asm;

use super::extable;
use crate::arch::pgm::ProgramCheck;
use crate::ex_table_entry;

/// Where an IPTE or IDTE purges the TLB entries formed through the entry
/// it invalidates (Linux's IPTE_GLOBAL / IPTE_LOCAL, IDTE_GLOBAL /
/// IDTE_LOCAL: the local-clearing control, bit 3 of M4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clearing {
    /// On every CPU of the configuration (QEMU: a rendezvous of all vCPUs).
    Global,
    /// In this CPU's TLB only. Needs the local-TLB-clearing facility (51):
    /// without it the control is ignored and the clearing is global.
    Local,
}

/// IPTE: set the invalid bit of the PTE for `va` in the page table at
/// `pto` and purge TLB entries formed through it, on every CPU or (local
/// clearing) on this one.
///
/// # Safety
/// `pto` must be the real address of a page table (2 KiB aligned) that
/// stays allocated during the instruction.
pub unsafe fn ipte(pto: u64, va: u64, clearing: Clearing) {
    // SAFETY: forwarded to the caller; IPTE only writes the I bit. R3 = 0:
    // one entry, no range.
    unsafe {
        match clearing {
            Clearing::Local => asm!(".insn rrf,0xb2210000,{pto},{va},%r0,1",
                pto = in(reg_addr) pto, va = in(reg_addr) va, options(nostack)),
            Clearing::Global => asm!(".insn rre,0xb2210000,{pto},{va}",
                pto = in(reg_addr) pto, va = in(reg_addr) va, options(nostack)),
        }
    }
}

/// IDTE (invalidation-and-clearing): set the invalid bit of the region or
/// segment entry for `va` in the table designated by `designation` (table
/// origin | designation type) and purge TLB entries formed through it, on
/// every CPU or (local clearing) on this one.
///
/// # Safety
/// The designated table must be allocated and of the type given.
pub unsafe fn idte(designation: u64, va: u64, clearing: Clearing) {
    // Bits 44-63 of the second operand must be zero: one entry, and the
    // invalidation (not clearing-by-ASCE) form.
    let r2 = va & !0xf_ffff;
    // SAFETY: forwarded to the caller; IDTE only writes the I bit. R3 = 0:
    // no additional ASCE to clear.
    unsafe {
        match clearing {
            Clearing::Local => asm!(".insn rrf,0xb98e0000,{d},{a},%r0,1",
                d = in(reg_addr) designation, a = in(reg_addr) r2, options(nostack)),
            Clearing::Global => asm!(".insn rre,0xb98e0000,{d},{a}",
                d = in(reg_addr) designation, a = in(reg_addr) r2, options(nostack)),
        }
    }
}

/// IDTE clearing-by-ASCE: purge every TLB entry formed through `asce` on
/// every CPU (Linux __tlb_flush_idte).
pub fn idte_clear_asce(asce: u64) {
    // Bit 52 of the second operand selects the clearing-by-ASCE form.
    let r2: u64 = 0x800;
    // SAFETY: purging TLB entries only costs later translations a walk.
    unsafe {
        asm!(".insn rre,0xb98e0000,{d},{a}", d = in(reg_addr) asce, a = in(reg_addr) r2,
             options(nostack));
    }
}

/// IDTE clearing-by-ASCE with the local-clearing control: purge every
/// entry this CPU's TLB formed through `asce`, and nothing on other CPUs
/// (Linux `__tlb_flush_idte` with IDTE_LOCAL).
pub fn idte_clear_asce_local(asce: u64) {
    let r2: u64 = 0x800;
    // SAFETY: purging TLB entries only costs later translations a walk.
    unsafe {
        asm!(".insn rrf,0xb98e0000,{d},{a},%r0,1", d = in(reg_addr) asce, a = in(reg_addr) r2,
             options(nostack));
    }
}

/// CSPG: compare-and-swap the doubleword at `entry` (old → new) and purge
/// all TLBs. Returns whether the swap happened.
///
/// # Safety
/// `entry` must be a doubleword of a table the caller owns.
pub unsafe fn cspg(entry: *mut u64, old: u64, new: u64) -> bool {
    let cc: u32;
    // SAFETY: forwarded to the caller. r2/r3 are the even/odd pair CSPG
    // needs; bit 63 of the address operand asks for the purge.
    unsafe {
        asm!(
            ".insn rre,0xb98a0000,%r2,{a}",
            "ipm {cc}",
            "srl {cc},28",
            a = in(reg_addr) entry as u64 | 1,
            cc = out(reg) cc,
            inout("r2") old => _,
            in("r3") new,
            options(nostack),
        );
    }
    cc == 0
}

/// CSP with the purge bit on a word of its own (compare 0, store 0): purge
/// the TLBs of every CPU in the configuration (Linux __tlb_flush_global).
/// CSP is part of every z/Architecture machine, so this is the purge that
/// needs no facility.
pub fn tlb_flush_global() {
    let mut word: u32 = 0;
    // SAFETY: CSP compares bits 32-63 of r2 (0) with `word` (0, on our
    // stack), stores bits 32-63 of r3 (0) there, and purges because bit 63
    // of the address operand is set: it changes nothing but the TLBs.
    unsafe {
        asm!(
            ".insn rre,0xb2500000,%r2,{a}",
            a = in(reg_addr) core::ptr::from_mut(&mut word) as u64 | 1,
            inout("r2") 0u64 => _,
            in("r3") 0u64,
            options(nostack),
        );
    }
}

/// PTLB: purge this CPU's TLB.
pub fn ptlb() {
    // SAFETY: purging the TLB only costs later translations a table walk.
    unsafe { asm!(".insn s,0xb20d0000,0", options(nostack)) };
}

/// Load CR7 (the secondary ASCE).
///
/// # Safety
/// The ASCE must designate valid tables for as long as it is loaded and
/// secondary-space accesses are made.
pub unsafe fn set_secondary_asce(asce: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { super::cr::lctlg::<7>(asce) };
}

pub fn secondary_asce() -> u64 {
    super::cr::stctg::<7>()
}

/// Turn DAT on in home-space mode: CR13 (home) and CR1 (primary, where
/// instructions come from in secondary mode) get `asce`, and the running
/// PSW and every new PSW get the DAT and home-space bits.
///
/// # Safety
/// `asce` must map all memory the kernel uses (code, data, stacks, lowcore)
/// at its real address.
pub unsafe fn enable_dat_home(asce: u64) {
    use crate::arch::lowcore;
    use crate::arch::psw::mask;
    super::cr::set_kernel_asce(asce);
    // SAFETY: the caller guarantees an identity mapping of the kernel, so
    // every address stays valid across the switch.
    unsafe {
        super::cr::lctlg::<13>(asce);
        super::cr::lctlg::<1>(asce);
        super::cr::lctlg::<7>(asce);
        super::cr::cr0_set(super::cr::cr0::SECONDARY_SPACE);
        for off in lowcore::NEW_PSW {
            let m = super::insn::lowcore_read_u64(off);
            super::insn::lowcore_write_u64(off, m | mask::DAT | mask::ASC_HOME);
        }
        super::insn::continue_with_mask(super::insn::psw_mask() | mask::DAT | mask::ASC_HOME);
    }
}

/// Load a doubleword from `va` in the secondary space (CR7).
pub(crate) fn secondary_load_u64(va: u64) -> Result<u64, ProgramCheck> {
    let v: u64;
    let (r0, r1): (u64, u64);
    // SAFETY: SACF to secondary mode for exactly one load and back to home
    // mode; instructions keep coming from the primary space (CR1 = kernel).
    // A program check on the load resumes at label 3, which restores home
    // mode too.
    unsafe {
        asm!(
            "sacf 256",
            "2: lg {v},0({a})",
            "3: sacf 768",
            ex_table_entry!("2b", "3b", "3b"),
            a = in(reg_addr) va,
            v = inout(reg) 0u64 => v,
            inout("r0") 0u64 => r0,
            inout("r1") 0u64 => r1,
            options(nostack, readonly),
        );
    }
    extable::decode(r0, r1).map(|()| v)
}

/// Store a doubleword to `va` in the secondary space (CR7).
///
/// # Safety
/// Whatever frame `va` maps to must be the caller's to write.
pub unsafe fn secondary_store_u64(va: u64, val: u64) -> Result<(), ProgramCheck> {
    let (r0, r1): (u64, u64);
    // SAFETY: as `secondary_load_u64`; the target frame is the caller's.
    unsafe {
        asm!(
            "sacf 256",
            "2: stg {v},0({a})",
            "3: sacf 768",
            ex_table_entry!("2b", "3b", "3b"),
            a = in(reg_addr) va,
            v = in(reg) val,
            inout("r0") 0u64 => r0,
            inout("r1") 0u64 => r1,
            options(nostack),
        );
    }
    extable::decode(r0, r1)
}

/// LRAG of `va` in the secondary space: (condition code, r1).
pub fn secondary_lrag(va: u64) -> (u32, u64) {
    let cc: u32;
    let r: u64;
    // SAFETY: LRAG only translates; SACF switches to secondary mode for it
    // and back. LRAG reports translation problems in the cc, not by
    // interruption (except addressing and specification, which the
    // exception table catches: r0 then says so and cc is meaningless).
    unsafe {
        asm!(
            "sacf 256",
            "2: lrag {r},0({a})",
            "ipm {cc}",
            "3: sacf 768",
            ex_table_entry!("2b", "3b", "3b"),
            a = in(reg_addr) va,
            r = inout(reg) 0u64 => r,
            cc = inout(reg) 0u32 => cc,
            inout("r0") 0u64 => _,
            inout("r1") 0u64 => _,
            options(nostack, readonly),
        );
    }
    (cc >> 28, r)
}
