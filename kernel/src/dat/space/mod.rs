//! An address space (Linux's mm as far as page tables go): an ASCE whose
//! type follows the limit, grown when a mapping needs it
//! (`crst_table_upgrade`); map, unmap, protect and look up pages and
//! ranges; lower tables allocated on demand and freed when they become
//! empty. A valid entry is never changed in place: IPTE (PTE) or IDTE
//! (region/segment) first. PTE tables are 2 KiB fragments, two per page,
//! or whole pages with PGSTEs for spaces a gmap shares (`dat::frag`).
//! Models the page-table side of Linux's mm (mm/memory.c, and
//! arch/s390/mm/pgalloc.c, pgtable.c).
//!
//! The space owns its tables through its entries: a table is an owned
//! handle (`CrstTable`, `PteTable`) until it is linked, and becomes one
//! again only when its entry is gone (`from_raw`, `unsafe`), to go to the
//! mmu_gather or the allocator. Split by concern: this file (the space,
//! walking, teardown), `upgrade` (growing and shrinking the top), `hooks`
//! (PGSTEs and what gmaps hear), `ops` (map, unmap, protect), `check`
//! (the consistency checker), `testing` (hooks for tests only).

mod check;
mod hooks;
mod ops;
#[cfg(target_os = "none")]
mod testing;
mod upgrade;

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

pub use check::{SpaceCheck, SpaceCheckError};
pub(crate) use hooks::set_hooks;
pub use hooks::{in_space_hook, SpaceHooks, PGSTE_IN_BIT, PGSTE_VSIE_BIT};

use super::context::{AsceRef, MmContext};
use super::dat_bug;
use super::entry::{pte_index, Asce, EntryError, Level, Prot, Pte, RegionEntry, SegmentEntry};
use super::frag::{FragAlloc, PteTable};
use super::table::{self, entry, CrstTable, PhysReader};
use super::tlb;
use super::walk::{self, Facilities, Fault, Translation};
use crate::mm::addr::{PhysAddr, PAGE_SIZE};
use crate::mm::AllocError;

/// Errors of address-space operations. Whatever the error, the space is as
/// it was before the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceError {
    NoMemory,
    /// An address or length not page aligned (or zero length).
    Misaligned,
    /// Beyond the space's maximum limit.
    OutOfRange,
    AlreadyMapped,
    NotMapped,
    /// A write to a page its owner made read-only (`HostMm::populate`).
    Protected,
}

impl From<AllocError> for SpaceError {
    fn from(_: AllocError) -> Self {
        SpaceError::NoMemory
    }
}

impl From<EntryError> for SpaceError {
    fn from(_: EntryError) -> Self {
        SpaceError::Misaligned
    }
}

/// What an unmap did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmapStats {
    pub pages: u64,
    /// Invalidations issued (IPTE + IDTE).
    pub flushes: u64,
    /// Tables freed after the flush.
    pub tables_freed: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct AddressSpace {
    id: u64,
    asce: Asce,
    /// Addresses at or above this are refused (the space never grows past).
    max_limit: u128,
    /// PTE tables are whole pages with PGSTEs in the upper half.
    pgste: bool,
    /// The PTE table allocator (Linux mm->context.pgtable_list).
    frags: FragAlloc,
    /// Which CPUs have the space loaded, and which may hold TLB entries
    /// of it (Linux mm->context.cpu_attach_mask, mm_cpumask(mm)).
    context: Arc<MmContext>,
}

impl AddressSpace {
    /// A space whose ASCE type covers `limit` (segment below 2 GiB,
    /// region-third below 4 TiB, region-second below 8 PiB, else
    /// region-first) and that grows up to `max_limit` on demand.
    pub fn new(limit: u128, max_limit: u128, pgste: bool) -> Result<Self, SpaceError> {
        if limit == 0 || max_limit < limit || max_limit > Level::Region1.limit() {
            return Err(SpaceError::OutOfRange);
        }
        let level = Level::for_limit(limit);
        let top = table::crst_alloc(level)?;
        let asce = Asce::new(top.phys(), level)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // The ASCE owns the top table from here (Drop frees it).
        let _ = top.into_raw();
        Ok(AddressSpace {
            id,
            asce,
            max_limit,
            pgste,
            frags: FragAlloc::new(pgste),
            context: Arc::new(MmContext::new()),
        })
    }

    /// A number naming this space (for the gmaps attached to it).
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn asce(&self) -> Asce {
        self.asce
    }

    /// The ASCE as a CPU loads it: with the context it attaches first.
    pub fn asce_ref(&self) -> AsceRef {
        AsceRef::new(self.asce, self.context.clone())
    }

    /// Which CPUs may hold TLB entries of the space.
    pub fn context(&self) -> &Arc<MmContext> {
        &self.context
    }

    /// The space is loaded on every CPU from its start to the end of the
    /// run (the kernel's own): its invalidations are always global. Before
    /// any CPU attached it.
    pub fn set_loaded_everywhere(&mut self) {
        self.context = Arc::new(MmContext::everywhere());
    }

    /// Purge every CPU's TLB of the space and forget the CPUs that no
    /// longer have it loaded (Linux flush_tlb_mm): the next invalidations
    /// clear locally if no other CPU has it loaded now.
    pub fn flush_tlb_mm(&self) {
        tlb::flush_tlb_mm(&self.context, self.asce);
    }

    /// What the current top table covers.
    pub fn limit(&self) -> u128 {
        self.asce.level().limit()
    }

    pub fn max_limit(&self) -> u128 {
        self.max_limit
    }

    /// Never grow the top again: addresses beyond what it covers now are
    /// refused (`OutOfRange`). For spaces other CPUs may have loaded:
    /// growing gives the space a new ASCE, which every CPU that has the old
    /// one loaded would have to switch to first (Linux's
    /// `__crst_table_upgrade` on each CPU of the mm); zdat refuses growth
    /// there instead.
    pub fn fix_top(&mut self) {
        self.max_limit = self.limit();
    }

    pub fn has_pgste(&self) -> bool {
        self.pgste
    }

    /// Pages on the list of pages with a free half.
    pub fn frag_list_len(&self) -> usize {
        self.frags.list_len()
    }

    /// Give a PTE table back to this space's allocator (mmu_gather, once
    /// no TLB can reach it).
    pub(in crate::dat) fn page_table_free(&mut self, t: PteTable) {
        self.frags.page_table_free(t);
    }

    // -- walking ---------------------------------------------------------------

    /// The real address of the entry for `va` in the table of `level`,
    /// following valid entries from the top; `None` if the walk stops at an
    /// invalid entry above.
    fn entry_addr(&self, va: u64, level: Level) -> Option<PhysAddr> {
        if va as u128 >= self.limit() {
            return None;
        }
        let mut l = self.asce.level();
        let mut table = self.asce.origin();
        while l != level {
            // SAFETY: `table` is a live table of this space.
            let e = RegionEntry::from_raw(
                unsafe { entry(PhysAddr(table.0 + l.index(va) as u64 * 8)) }
                    .load(Ordering::Acquire),
            );
            if e.is_invalid() {
                return None;
            }
            table = e.next_origin();
            l = l.lower()?;
        }
        Some(PhysAddr(table.0 + level.index(va) as u64 * 8))
    }

    /// The region entry of `level` covering `va`, if the walk reaches its
    /// table.
    pub fn region_entry(&self, va: u64, level: Level) -> Option<RegionEntry> {
        if level == Level::Segment {
            return None;
        }
        self.entry_addr(va, level).map(|pa| {
            // SAFETY: an entry of a live region table of this space.
            RegionEntry::from_raw(unsafe { entry(pa) }.load(Ordering::Acquire))
        })
    }

    /// The real address of the segment entry covering `va`.
    pub fn segment_entry_addr(&self, va: u64) -> Option<PhysAddr> {
        self.entry_addr(va, Level::Segment)
    }

    /// The segment entry covering `va` (empty if the walk stops above).
    pub fn segment_entry(&self, va: u64) -> SegmentEntry {
        self.segment_entry_addr(va)
            .map_or(SegmentEntry::empty(), |pa| {
                // SAFETY: an entry of a live segment table of this space.
                SegmentEntry::from_raw(unsafe { entry(pa) }.load(Ordering::Acquire))
            })
    }

    /// The page table for `va`, if its segment entry is valid.
    pub fn pte_table(&self, va: u64) -> Option<PhysAddr> {
        let s = self.segment_entry(va);
        (!s.is_invalid()).then(|| s.page_table())
    }

    /// Real address of the PTE for `va`, if a page table exists for it.
    pub fn pte_addr(&self, va: u64) -> Option<PhysAddr> {
        self.pte_table(va)
            .map(|t| PhysAddr(t.0 + pte_index(va) as u64 * 8))
    }

    fn pte(&self, va: u64) -> Pte {
        self.pte_addr(va).map_or(Pte::empty(), |pa| {
            // SAFETY: a PTE of a live page table of this space.
            Pte::from_raw(unsafe { entry(pa) }.load(Ordering::Acquire))
        })
    }

    fn check_page(&self, va: u64) -> Result<(), SpaceError> {
        if va & (PAGE_SIZE - 1) != 0 {
            return Err(SpaceError::Misaligned);
        }
        if va as u128 >= self.max_limit {
            return Err(SpaceError::OutOfRange);
        }
        Ok(())
    }

    fn check_range(&self, va: u64, len: u64) -> Result<u64, SpaceError> {
        if len == 0 || len & (PAGE_SIZE - 1) != 0 {
            return Err(SpaceError::Misaligned);
        }
        self.check_page(va)?;
        let end = va.checked_add(len).ok_or(SpaceError::OutOfRange)?;
        if end as u128 > self.max_limit {
            return Err(SpaceError::OutOfRange);
        }
        Ok(end)
    }

    /// What `va` maps to, per the tables (software lookup).
    pub fn lookup(&self, va: u64) -> Option<(PhysAddr, Prot)> {
        let p = self.pte(va & !(PAGE_SIZE - 1));
        (p.is_present() && !p.is_invalid())
            .then(|| (PhysAddr(p.frame().0 | (va & (PAGE_SIZE - 1))), p.prot()))
    }

    /// Translate with the software walker (as the hardware would).
    pub fn translate(&self, va: u64, fac: Facilities, store: bool) -> Result<Translation, Fault> {
        walk::translate(&PhysReader, self.asce, va, fac, store)
    }

    /// Every table of the space, for teardown: free them all (the ASCE
    /// must not be loaded anywhere any more).
    fn free_level(&mut self, tbl: PhysAddr, level: Level, base: u64) {
        for i in 0..super::entry::CRST_ENTRIES as u64 {
            // SAFETY: an entry of a live table of this space.
            let raw = unsafe { entry(PhysAddr(tbl.0 + i * 8)) }.load(Ordering::Acquire);
            match level.lower() {
                Some(lower) => {
                    let e = RegionEntry::from_raw(raw);
                    if !e.is_invalid() {
                        self.free_level(
                            e.next_origin(),
                            lower,
                            base.wrapping_add(i << level.shift()),
                        );
                    }
                }
                None => {
                    let s = SegmentEntry::from_raw(raw);
                    if !s.is_invalid() {
                        let va = base.wrapping_add(i << Level::Segment.shift());
                        self.unlink_before_free(va, s.page_table());
                        // SAFETY: teardown: the ASCE is loaded nowhere and
                        // was purged; the entry is the table's only owner.
                        match unsafe { PteTable::from_raw(s.page_table(), self.pgste) } {
                            Ok(t) => self.frags.page_table_free(t),
                            Err(e) => dat_bug(format_args!(
                                "teardown: PTE table {:?}: {e:?}",
                                s.page_table()
                            )),
                        }
                    }
                }
            }
        }
        // SAFETY: as above, for the table at `tbl`.
        match unsafe { CrstTable::from_raw(tbl) } {
            Ok(t) => table::crst_free(t),
            Err(e) => dat_bug(format_args!("teardown: CRST table {tbl:?}: {e:?}")),
        }
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        // Whoever loaded the ASCE has unloaded it; purge what any TLB may
        // still hold of it before its tables go back.
        tlb::flush_tlb_mm(&self.context, self.asce);
        let (top, level) = (self.asce.origin(), self.asce.level());
        self.free_level(top, level, 0);
        self.frags.release_unused();
    }
}
