//! mmu_gather, as Linux's tlb_gather_mmu / tlb_remove_table /
//! tlb_remove_page_ptdesc / tlb_finish_mmu: an unmap collects the page
//! tables it empties and frees them only after the flush that makes them
//! unreachable, so the hardware can never walk a freed table. It takes
//! process page tables (`PtDesc`) only: a gmap table descriptor is another
//! type and cannot be passed in.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::entry::{Level, RegionEntry, SegmentEntry};
use super::table;
use crate::mm::addr::PhysAddr;
use crate::mm::ptdesc::{self, PtDesc};

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

/// Report a bug the page-table code found in itself: a counted `BUG:`
/// line (`crate::bug`), never silently ignored.
pub fn dat_bug(what: core::fmt::Arguments<'_>) {
    crate::bug::report("dat", what);
}

pub struct MmuGather {
    /// Each table with the entry that pointed at it.
    tables: Vec<(GatheredTable, PhysAddr)>,
    /// Entries this gather invalidated (IDTE), by real address.
    invalidated: Vec<PhysAddr>,
    /// Invalidations issued for this gather (IPTE and IDTE, each a
    /// broadcast purge).
    pub flushes: u64,
}

/// `tlb_gather_mmu`.
pub fn tlb_gather_mmu() -> MmuGather {
    MmuGather {
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
fn links(parent: PhysAddr, t: GatheredTable) -> bool {
    // SAFETY: `parent` is an entry of a live table of the caller's space
    // (the gather is used under the space's exclusive lock).
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
    /// it and must have been invalidated for this gather (`note_invalidated`).
    /// Nothing is gathered on a refusal.
    pub fn tlb_remove_table(
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
        if links(parent, t) {
            return Err(GatherError::StillLinked);
        }
        if !self.invalidated.contains(&parent) {
            return Err(GatherError::NotInvalidated);
        }
        self.tables.push((t, parent));
        Ok(())
    }

    /// `tlb_remove_page_ptdesc`: a whole table page.
    pub fn tlb_remove_page_ptdesc(
        &mut self,
        pt: &PtDesc,
        level: Level,
        parent: PhysAddr,
    ) -> Result<(), GatherError> {
        let pa = ptdesc::ptdesc_phys(pt);
        self.tlb_remove_table(pt, GatheredTable::Crst(pa, level), parent)
    }

    /// Tables waiting for the flush.
    pub fn pending(&self) -> usize {
        self.tables.len()
    }

    /// Count an IPTE issued on behalf of this gather.
    pub fn note_flush(&mut self) {
        self.flushes += 1;
    }

    /// Record that the region or segment entry at `entry` was invalidated
    /// (IDTE or CSPG, which purge every TLB entry formed through it on
    /// every CPU before they complete): tables it pointed at may be freed.
    pub fn note_invalidated(&mut self, entry: PhysAddr) {
        self.flushes += 1;
        self.invalidated.push(entry);
    }

    /// `tlb_finish_mmu`: every gathered table's entry was invalidated when
    /// it was gathered (zdat's IDTE/CSPG complete their purge on all CPUs
    /// before returning, so there is no batched flush left to issue); check
    /// once more that none is linked again, then free them. Returns the
    /// invalidations issued; a table that cannot be freed is a `dat_bug`.
    pub fn tlb_finish_mmu(mut self, space: &mut super::space::AddressSpace) -> u64 {
        for (t, parent) in core::mem::take(&mut self.tables) {
            if links(parent, t) {
                dat_bug(format_args!(
                    "gathered table {:?} linked again: not freed",
                    t
                ));
                continue;
            }
            match t {
                GatheredTable::Pte(pa) | GatheredTable::PtePgste(pa) => space.pte_free_now(pa),
                GatheredTable::Crst(pa, _) => table::crst_free(pa),
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
