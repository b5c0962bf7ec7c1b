//! mmu_gather, as Linux's tlb_gather_mmu / tlb_remove_table /
//! tlb_finish_mmu: an unmap collects the page tables it empties and frees
//! them only after the invalidation that makes them unreachable, so the
//! hardware can never walk a freed table. The gather issues that
//! invalidation itself (`invalidate_entry`) and takes a table only if its
//! entry was invalidated by it and no longer points at it; the calls that
//! name tables by address are `unsafe` and crate-internal. It takes
//! process page tables (`PtDesc`) only: a gmap table descriptor is another
//! type and cannot be passed in.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::entry::{Level, RegionEntry, SegmentEntry};
use super::{dat_bug, table, tlb};
use crate::mm::addr::PhysAddr;
use crate::mm::ptdesc::PtDesc;

/// A table waiting to be freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatheredTable {
    /// A 2 KiB PTE table (fragment): its real address says which half.
    Pte(PhysAddr),
    /// A whole-page PTE table with PGSTEs.
    PtePgste(PhysAddr),
    /// A region or segment table.
    Crst(PhysAddr, Level),
}

/// Why a table was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatherError {
    /// The address is not a process page table (a gmap table, say).
    NotPageTable,
    /// The entry that pointed at the table still does.
    StillLinked,
    /// The entry that pointed at the table was not invalidated (IDTE) for
    /// this gather: a TLB may still hold translations through it.
    NotInvalidated,
    /// The table is gathered already.
    Duplicate,
}

pub struct MmuGather {
    /// The space whose tables these are (`AddressSpace::id`).
    space: u64,
    /// Each table with the entry that pointed at it.
    tables: Vec<(GatheredTable, PhysAddr)>,
    /// Entries this gather invalidated (IDTE), by real address.
    invalidated: Vec<PhysAddr>,
    /// Invalidations issued for this gather (IPTE and IDTE, each a
    /// broadcast purge).
    pub flushes: u64,
}

/// `tlb_gather_mmu` for the space with id `space`.
pub fn tlb_gather_mmu(space: u64) -> MmuGather {
    MmuGather {
        space,
        tables: Vec::new(),
        invalidated: Vec::new(),
        flushes: 0,
    }
}

fn table_of(t: GatheredTable) -> PhysAddr {
    match t {
        GatheredTable::Pte(pa) | GatheredTable::PtePgste(pa) | GatheredTable::Crst(pa, _) => pa,
    }
}

/// Whether the entry at `parent` is valid and points at table `t`.
///
/// # Safety
/// `parent` is the real address of an entry of a live table.
unsafe fn links(parent: PhysAddr, t: GatheredTable) -> bool {
    // SAFETY: forwarded to the caller.
    let raw = unsafe { table::entry(parent) }.load(Ordering::Acquire);
    match t {
        GatheredTable::Crst(pa, _) => {
            let e = RegionEntry::from_raw(raw);
            !e.is_invalid() && e.next_origin() == pa
        }
        GatheredTable::Pte(pa) | GatheredTable::PtePgste(pa) => {
            let e = SegmentEntry::from_raw(raw);
            !e.is_invalid() && e.page_table() == pa
        }
    }
}

impl MmuGather {
    /// `tlb_remove_table`: free `t` once the TLB cannot reach it. The page
    /// must be a process page table (its `PtDesc` is the ticket), and
    /// `parent` the entry that pointed at it, which must no longer point at
    /// it and must have been invalidated by this gather
    /// (`invalidate_entry`). Nothing is gathered on a refusal.
    ///
    /// # Safety
    /// `parent` is the real address of the entry of a live table of this
    /// gather's space that pointed at `t`, and the caller holds that space
    /// exclusively.
    pub(crate) unsafe fn tlb_remove_table(
        &mut self,
        pt: &PtDesc,
        t: GatheredTable,
        parent: PhysAddr,
    ) -> Result<(), GatherError> {
        let pa = table_of(t);
        // The descriptor given must be the one of the table's page.
        if !core::ptr::eq(
            pt,
            table::table_ptdesc(pa).ok_or(GatherError::NotPageTable)?,
        ) {
            return Err(GatherError::NotPageTable);
        }
        if self.tables.iter().any(|(g, _)| table_of(*g) == pa) {
            return Err(GatherError::Duplicate);
        }
        // SAFETY: forwarded to the caller.
        if unsafe { links(parent, t) } {
            return Err(GatherError::StillLinked);
        }
        if !self.invalidated.contains(&parent) {
            return Err(GatherError::NotInvalidated);
        }
        self.tables.push((t, parent));
        Ok(())
    }

    /// Tables waiting for the flush.
    pub fn pending(&self) -> usize {
        self.tables.len()
    }

    /// Count an IPTE issued on behalf of this gather.
    pub fn note_flush(&mut self) {
        self.flushes += 1;
    }

    /// Invalidate the entry for `va` in the region or segment table `tbl`
    /// of `level` (IDTE, or CSPG where IDTE for regions is missing, both of
    /// which purge every TLB entry formed through it on every CPU before
    /// they complete), then make it empty. Tables it pointed at may then be
    /// gathered. Returns the entry's real address.
    ///
    /// # Safety
    /// `tbl` is a live table of `level` of this gather's space, held
    /// exclusively by the caller.
    pub(crate) unsafe fn invalidate_entry(
        &mut self,
        tbl: PhysAddr,
        level: Level,
        va: u64,
    ) -> PhysAddr {
        let ea = PhysAddr(tbl.0 + level.index(va) as u64 * 8);
        let empty = match level {
            Level::Segment => SegmentEntry::empty().raw(),
            l => RegionEntry::empty(l).raw(),
        };
        // SAFETY: forwarded to the caller.
        unsafe { tlb::idte(tbl, level, va) };
        // SAFETY: the entry of the caller's live table; invalid now.
        unsafe { table::entry(ea) }.store(empty, Ordering::Release);
        self.flushes += 1;
        self.invalidated.push(ea);
        ea
    }

    /// `tlb_finish_mmu`: every gathered table's entry was invalidated when
    /// it was gathered (zdat's IDTE/CSPG complete their purge on all CPUs
    /// before returning, so there is no batched flush left to issue); check
    /// once more that none is linked again, then free them, as tables of
    /// `space`, which must be the gather's. Returns the invalidations
    /// issued; a table that cannot be freed is a `dat_bug` (kept, never
    /// freed while it may be reachable).
    pub(crate) fn tlb_finish_mmu(mut self, space: &mut super::space::AddressSpace) -> u64 {
        let tables = core::mem::take(&mut self.tables);
        if space.id() != self.space {
            dat_bug(format_args!(
                "mmu_gather of space {} finished on space {}: {} tables not freed",
                self.space,
                space.id(),
                tables.len()
            ));
            return self.flushes;
        }
        for (t, parent) in tables {
            // SAFETY: `parent` was checked by tlb_remove_table to be an entry
            // of a live table of this space, which the caller still holds.
            if unsafe { links(parent, t) } {
                dat_bug(format_args!("gathered table {t:?} linked again: not freed"));
                continue;
            }
            match t {
                GatheredTable::Pte(pa) | GatheredTable::PtePgste(pa)
                    if matches!(t, GatheredTable::PtePgste(_)) == space.has_pgste() =>
                {
                    space.pte_free_now(pa)
                }
                GatheredTable::Crst(pa, _) => table::crst_free(pa),
                _ => dat_bug(format_args!(
                    "{t:?} does not match its space's PTE tables: not freed"
                )),
            }
        }
        self.flushes
    }
}

impl Drop for MmuGather {
    fn drop(&mut self) {
        // A gather dropped without tlb_finish_mmu leaks its tables.
        if !self.tables.is_empty() {
            dat_bug(format_args!(
                "mmu_gather dropped with {} tables",
                self.tables.len()
            ));
        }
    }
}
