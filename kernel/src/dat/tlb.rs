//! TLB invalidation as the architecture requires it: a valid entry is never
//! rewritten in place. IPTE invalidates a PTE, IDTE a region or segment
//! entry (CSPG where IDTE for regions is missing); both purge the TLB
//! entries formed through them on every CPU. Counters say how many flushes
//! happened, for tests and benchmarks. On the host, stand-ins set the
//! invalid bit in software.

use core::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(target_arch = "s390x"))]
use super::entry::pte_index;
use super::entry::{Asce, Level};
use crate::mm::addr::PhysAddr;

static IPTES: AtomicU64 = AtomicU64::new(0);
static IDTES: AtomicU64 = AtomicU64::new(0);
static PURGES: AtomicU64 = AtomicU64::new(0);

/// Flushes since boot: (IPTE, IDTE/CSPG, purges of a whole space).
pub fn flush_counts() -> (u64, u64, u64) {
    (
        IPTES.load(Ordering::Relaxed),
        IDTES.load(Ordering::Relaxed),
        PURGES.load(Ordering::Relaxed),
    )
}

/// All flushes since boot.
pub fn total_flushes() -> u64 {
    let (a, b, c) = flush_counts();
    a + b + c
}

/// Invalidate the PTE for `va` in the page table at `pto` (sets its I bit).
///
/// # Safety
/// `pto` is a live page table whose entry for `va` the caller may change.
pub unsafe fn ipte(pto: PhysAddr, va: u64) {
    IPTES.fetch_add(1, Ordering::Relaxed);
    #[cfg(target_arch = "s390x")]
    // SAFETY: forwarded to the caller.
    unsafe {
        crate::arch::s390x::dat::ipte(pto.0, va)
    };
    #[cfg(not(target_arch = "s390x"))]
    // SAFETY: forwarded to the caller.
    unsafe {
        host::set_invalid(
            PhysAddr(pto.0 + pte_index(va) as u64 * 8),
            super::entry::PTE_INVALID_BIT,
        )
    };
}

/// A named decision, for QEMU: after every IPTE of a PTE in a page table
/// that gmaps share, issue one more IPTE of the same PTE at each guest
/// address that reaches it (found through the gmaps' host-to-guest maps).
///
/// The Principles of Operation say IPTE purges every TLB entry formed
/// through the PTE, whatever address or ASCE it was formed for, so on the
/// architecture the second IPTE is redundant (the PTE is already invalid;
/// IPTE of an invalid PTE is allowed). QEMU 7.2's IPTE purges only the
/// entries for the virtual address in its second operand, so a gmap kept
/// loaded would go on using the old translation of a page the host has
/// changed: `qemu_deviations.ipte_purges_only_its_operand_address` shows the
/// deviation and `tlb_warm.host_protect_seen_by_loaded_gmap` the guest store
/// that succeeds on a read-only page without this. It costs one more IPTE
/// per linked guest segment per host PTE change, and nothing where no gmap
/// is linked. `x.py mutants` removes it (`no-ipte-guest-alias`).
pub const IPTE_GUEST_ALIAS: bool = true;

/// Invalidate the region or segment entry for `va` in the table of
/// `level` at `table` (sets its I bit).
///
/// # Safety
/// `table` is a live table of `level` whose entry for `va` the caller may
/// change.
pub unsafe fn idte(table: PhysAddr, level: Level, va: u64) {
    IDTES.fetch_add(1, Ordering::Relaxed);
    // A table that cannot be designated (misaligned) is not a table: the
    // entry cannot be invalidated, and going on would leave a stale TLB
    // entry behind, so this is a bug that ends the run.
    let designation = match Asce::new(table, level) {
        Ok(a) => a.idte_designation(),
        Err(e) => {
            panic!("BUG: idte of a table that cannot be designated: {table:?} {level:?}: {e:?}")
        }
    };
    #[cfg(target_arch = "s390x")]
    // SAFETY: forwarded to the caller. QEMU's IDTE handles every table type;
    // the architecture has IDTE for regions only with facility 5, so other
    // machines take the CSPG path.
    unsafe {
        use crate::arch::s390x::facility;
        if level == Level::Segment || facility::has_facility(facility::IDTE_REGION) {
            crate::arch::s390x::dat::idte(designation, va);
        } else {
            let entry = (table.0 + level.index(va) as u64 * 8) as *mut u64;
            let old = core::ptr::read_volatile(entry);
            crate::arch::s390x::dat::cspg(entry, old, old | super::entry::CRST_INVALID_BIT);
        }
    };
    #[cfg(not(target_arch = "s390x"))]
    // SAFETY: forwarded to the caller.
    unsafe {
        let _ = designation;
        host::set_invalid(
            PhysAddr(table.0 + level.index(va) as u64 * 8),
            super::entry::CRST_INVALID_BIT,
        )
    };
}

/// Purge, on every CPU, what the TLBs hold for `asce` (before its tables
/// go back, or after its top changed): IDTE clearing-by-ASCE, or where the
/// IDTE facility is missing a purge of every CPU's whole TLB (Linux's
/// __tlb_flush_mm makes the same choice).
pub fn flush_asce(asce: Asce) {
    PURGES.fetch_add(1, Ordering::Relaxed);
    #[cfg(target_arch = "s390x")]
    {
        use crate::arch::s390x::facility;
        if facility::has_facility(facility::IDTE_SEGMENT) {
            crate::arch::s390x::dat::idte_clear_asce(asce.raw());
        } else {
            flush_asce_without_idte();
        }
    }
    #[cfg(not(target_arch = "s390x"))]
    let _ = asce;
}

/// What `flush_asce` does on a machine without the IDTE facility (tests
/// reach it on machines that have IDTE): CSP's purge of every CPU's TLB.
/// Not PTLB: that purges this CPU's TLB only, and the other CPUs, which
/// `smp` starts whatever the facilities, would go on using the tables.
#[cfg(target_arch = "s390x")]
pub(crate) fn flush_asce_without_idte() {
    crate::arch::s390x::dat::tlb_flush_global();
}

#[cfg(not(target_arch = "s390x"))]
mod host {
    use core::sync::atomic::{AtomicU64, Ordering};

    use crate::mm::addr::PhysAddr;

    /// # Safety
    /// `entry` is an entry of a live table in simulated memory.
    pub unsafe fn set_invalid(entry: PhysAddr, bit: u64) {
        let ptr = crate::mm::memmap()
            .frame_ptr(entry.pfn())
            .wrapping_add(entry.page_offset() as usize);
        // SAFETY: forwarded to the caller: an 8-aligned entry of a live table.
        let a = unsafe { AtomicU64::from_ptr(ptr as *mut u64) };
        a.fetch_or(bit, Ordering::AcqRel);
    }
}
