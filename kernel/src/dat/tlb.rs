//! TLB invalidation as the architecture requires it: a valid entry is never
//! rewritten in place. IPTE invalidates a PTE, IDTE a region or segment
//! entry (CSPG where IDTE for regions is missing); both purge the TLB
//! entries formed through them, on every CPU, or only on this one when the
//! space's `MmContext` says no other CPU can hold any (local clearing,
//! facility 51: Linux's ptep_flush_direct with IPTE_LOCAL / IPTE_GLOBAL).
//! QEMU turns every global purge into a rendezvous of all vCPUs
//! (`tlb_flush_*_all_cpus_synced`), a local one flushes this vCPU only.
//! Counters say how many of each happened, for tests and benchmarks. On the
//! host, stand-ins set the invalid bit in software.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::context::MmContext;
#[cfg(not(target_arch = "s390x"))]
use super::entry::pte_index;
use super::entry::{Asce, Level};
use crate::mm::addr::PhysAddr;

#[cfg(target_arch = "s390x")]
use crate::arch::s390x::dat::Clearing;

static IPTES: AtomicU64 = AtomicU64::new(0);
static IDTES: AtomicU64 = AtomicU64::new(0);
static PURGES: AtomicU64 = AtomicU64::new(0);
static IPTES_LOCAL: AtomicU64 = AtomicU64::new(0);
static IDTES_LOCAL: AtomicU64 = AtomicU64::new(0);
static PURGES_LOCAL: AtomicU64 = AtomicU64::new(0);

/// Flushes since boot: (IPTE, IDTE/CSPG, purges of a whole space), local
/// and global together.
pub fn flush_counts() -> (u64, u64, u64) {
    let c = flush_stats();
    (
        c.ipte_global + c.ipte_local,
        c.idte_global + c.idte_local,
        c.purge_global + c.purge_local,
    )
}

/// Flushes since boot by where they cleared: `_global` on every CPU (a
/// broadcast), `_local` on the CPU that issued them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    pub ipte_global: u64,
    pub ipte_local: u64,
    /// IDTE of an entry, and CSPG (always global).
    pub idte_global: u64,
    pub idte_local: u64,
    /// Clearing by ASCE (or PTLB where IDTE is missing).
    pub purge_global: u64,
    pub purge_local: u64,
}

impl FlushStats {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: FlushStats) -> FlushStats {
        FlushStats {
            ipte_global: self.ipte_global - earlier.ipte_global,
            ipte_local: self.ipte_local - earlier.ipte_local,
            idte_global: self.idte_global - earlier.idte_global,
            idte_local: self.idte_local - earlier.idte_local,
            purge_global: self.purge_global - earlier.purge_global,
            purge_local: self.purge_local - earlier.purge_local,
        }
    }
}

pub fn flush_stats() -> FlushStats {
    FlushStats {
        ipte_global: IPTES.load(Ordering::Relaxed),
        ipte_local: IPTES_LOCAL.load(Ordering::Relaxed),
        idte_global: IDTES.load(Ordering::Relaxed),
        idte_local: IDTES_LOCAL.load(Ordering::Relaxed),
        purge_global: PURGES.load(Ordering::Relaxed),
        purge_local: PURGES_LOCAL.load(Ordering::Relaxed),
    }
}

/// All flushes since boot.
pub fn total_flushes() -> u64 {
    let (a, b, c) = flush_counts();
    a + b + c
}

/// `dat.local_clearing=0` (or a benchmark) turns local clearing off: every
/// invalidation is then global, as on a machine without facility 51.
static NO_LOCAL_CLEARING: AtomicBool = AtomicBool::new(false);

pub fn set_local_clearing(on: bool) {
    NO_LOCAL_CLEARING.store(!on, Ordering::Relaxed);
}

/// Whether IPTE and IDTE may clear only this CPU's TLB: the
/// local-TLB-clearing facility is installed (without it the control is
/// ignored) and not turned off.
pub fn local_clearing() -> bool {
    #[cfg(target_arch = "s390x")]
    {
        use crate::arch::s390x::facility;
        facility::has_facility(facility::LOCAL_TLB_CLEARING)
            && !NO_LOCAL_CLEARING.load(Ordering::Relaxed)
    }
    #[cfg(not(target_arch = "s390x"))]
    {
        false
    }
}

/// Whether an invalidation for `mm` may clear locally now.
fn may_clear_locally(mm: &MmContext) -> bool {
    local_clearing() && mm.only_this_cpu()
}

/// After a local clearing: whether a CPU attached `mm` since the check that
/// chose it. Such a CPU may have formed a TLB entry from the entry before
/// it was invalidated (its walk can precede the invalidation), so the
/// caller purges again, globally. A CPU that attaches after this look
/// walks the tables after the invalid bit was stored (the fence orders the
/// store before the load, as `MmContext::attach` orders its mask update
/// before its walk), and finds it.
#[cfg(target_arch = "s390x")]
fn attached_meanwhile(mm: &MmContext) -> bool {
    core::sync::atomic::fence(Ordering::SeqCst);
    !mm.only_this_cpu()
}

/// Purge what the TLBs hold for `asce`, one of the ASCEs of the space
/// whose context is `mm` (before its tables go back, or to forget CPUs
/// that left it): this CPU's clearing by ASCE when no other CPU can hold
/// entries of the space, else `flush_asce` on every CPU. Then the CPUs
/// that are not attached leave `mm_cpumask`, if the purge reached every
/// CPU that may hold entries (Linux `__tlb_flush_mm`). Attaches wait
/// meanwhile.
pub fn flush_tlb_mm(mm: &MmContext, asce: Asce) {
    let held = mm.lock_attach();
    let everywhere = if may_clear_locally(mm) {
        // No CPU can attach while `held` lives: this stays the only one.
        PURGES_LOCAL.fetch_add(1, Ordering::Relaxed);
        #[cfg(target_arch = "s390x")]
        crate::arch::s390x::dat::idte_clear_asce_local(asce.raw());
        true
    } else {
        flush_asce(asce);
        flush_asce_reaches_every_cpu()
    };
    if everywhere {
        mm.reset_cpumask(&held, asce);
    }
}

/// Whether `flush_asce` purges every CPU's TLB: always with IDTE; its
/// PTLB fallback clears only this CPU's, which is every CPU only when no
/// other one runs.
fn flush_asce_reaches_every_cpu() -> bool {
    #[cfg(target_arch = "s390x")]
    {
        use crate::arch::s390x::facility;
        facility::has_facility(facility::IDTE_SEGMENT) || crate::smp::nr_online() <= 1
    }
    #[cfg(not(target_arch = "s390x"))]
    {
        true
    }
}

/// Invalidate the PTE for `va` in the page table at `pto` (sets its I bit)
/// and purge what the TLBs hold of it: this CPU's only when no other CPU
/// can hold entries of the space (`mm`), else every CPU's.
///
/// # Safety
/// `pto` is a live page table of the space whose context is `mm`, and the
/// caller may change its entry for `va`.
pub unsafe fn ipte(mm: &MmContext, pto: PhysAddr, va: u64) {
    #[cfg(target_arch = "s390x")]
    if may_clear_locally(mm) {
        IPTES_LOCAL.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded to the caller.
        unsafe { crate::arch::s390x::dat::ipte(pto.0, va, Clearing::Local) };
        if !attached_meanwhile(mm) {
            return;
        }
    }
    IPTES.fetch_add(1, Ordering::Relaxed);
    #[cfg(target_arch = "s390x")]
    // SAFETY: forwarded to the caller. IPTE of a PTE a local clearing above
    // already made invalid is allowed, and purges everywhere.
    unsafe {
        crate::arch::s390x::dat::ipte(pto.0, va, Clearing::Global)
    };
    #[cfg(not(target_arch = "s390x"))]
    // SAFETY: forwarded to the caller.
    unsafe {
        let _ = may_clear_locally(mm);
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
/// is linked; each is broadcast only if a CPU other than this one may hold
/// that gmap (its own `MmContext` decides). `x.py mutants` removes it (`no-ipte-guest-alias`).
pub const IPTE_GUEST_ALIAS: bool = true;

/// Invalidate the region or segment entry for `va` in the table of
/// `level` at `table` (sets its I bit) and purge what the TLBs hold
/// through it: this CPU's only when no other CPU can hold entries of the
/// space (`mm`), else every CPU's.
///
/// # Safety
/// `table` is a live table of `level` of the space whose context is `mm`,
/// and the caller may change its entry for `va`.
pub unsafe fn idte(mm: &MmContext, table: PhysAddr, level: Level, va: u64) {
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
    // machines take the CSPG path, which always purges every CPU.
    unsafe {
        use crate::arch::s390x::dat as hw;
        use crate::arch::s390x::facility;
        if level == Level::Segment || facility::has_facility(facility::IDTE_REGION) {
            if may_clear_locally(mm) {
                IDTES_LOCAL.fetch_add(1, Ordering::Relaxed);
                hw::idte(designation, va, Clearing::Local);
                if !attached_meanwhile(mm) {
                    return;
                }
            }
            IDTES.fetch_add(1, Ordering::Relaxed);
            // Of an entry a local clearing above made invalid: allowed.
            hw::idte(designation, va, Clearing::Global);
        } else {
            IDTES.fetch_add(1, Ordering::Relaxed);
            let entry = (table.0 + level.index(va) as u64 * 8) as *mut u64;
            let old = core::ptr::read_volatile(entry);
            crate::arch::s390x::dat::cspg(entry, old, old | super::entry::CRST_INVALID_BIT);
        }
    };
    #[cfg(not(target_arch = "s390x"))]
    // SAFETY: forwarded to the caller.
    unsafe {
        let _ = (designation, may_clear_locally(mm));
        IDTES.fetch_add(1, Ordering::Relaxed);
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
