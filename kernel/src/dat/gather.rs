//! mmu_gather, as Linux's tlb_gather_mmu / tlb_remove_table /
//! tlb_remove_page_ptdesc / tlb_finish_mmu: an unmap collects the page
//! tables it empties and frees them only after the flush that makes them
//! unreachable, so the hardware can never walk a freed table. It takes
//! process page tables (`PtDesc`) only: a gmap table descriptor is another
//! type and cannot be passed in.

use alloc::vec::Vec;

use super::entry::Level;
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
}

pub struct MmuGather {
    tables: Vec<GatheredTable>,
    /// Invalidations issued for this gather (IPTE and IDTE, each a
    /// broadcast purge).
    pub flushes: u64,
    /// Whether the final flush ran (tables are freed only after it).
    flushed: bool,
}

/// `tlb_gather_mmu`.
pub fn tlb_gather_mmu() -> MmuGather {
    MmuGather {
        tables: Vec::new(),
        flushes: 0,
        flushed: false,
    }
}

impl MmuGather {
    /// `tlb_remove_table`: free `t` once the TLB cannot reach it. The page
    /// must be a process page table: its `PtDesc` is the ticket.
    pub fn tlb_remove_table(&mut self, pt: &PtDesc, t: GatheredTable) -> Result<(), GatherError> {
        let pa = match t {
            GatheredTable::Pte(pa) | GatheredTable::PtePgste(pa) | GatheredTable::Crst(pa, _) => pa,
        };
        // The descriptor given must be the one of the table's page.
        if !core::ptr::eq(
            pt,
            table::table_ptdesc(pa).ok_or(GatherError::NotPageTable)?,
        ) {
            return Err(GatherError::NotPageTable);
        }
        self.tables.push(t);
        self.flushed = false;
        Ok(())
    }

    /// `tlb_remove_page_ptdesc`: a whole table page.
    pub fn tlb_remove_page_ptdesc(&mut self, pt: &PtDesc, level: Level) -> Result<(), GatherError> {
        let pa = ptdesc::ptdesc_phys(pt);
        self.tlb_remove_table(pt, GatheredTable::Crst(pa, level))
    }

    /// Tables waiting for the flush.
    pub fn pending(&self) -> &[GatheredTable] {
        &self.tables
    }

    /// Count an invalidation issued on behalf of this gather.
    pub fn note_flush(&mut self) {
        self.flushes += 1;
    }

    /// The final flush. Every invalidation zdat issues (IPTE, IDTE, CSPG)
    /// already purges all CPUs' TLBs when it completes, so what is left is
    /// to record that the tables are unreachable now.
    pub fn flush(&mut self) {
        self.flushed = true;
    }

    /// `tlb_finish_mmu`: flush, then free every gathered table.
    pub fn tlb_finish_mmu(mut self, space: &mut super::space::AddressSpace) -> u64 {
        self.flush();
        debug_assert!(self.flushed);
        for t in self.tables.drain(..) {
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
        // A gather dropped without tlb_finish_mmu would leak its tables; that
        // is a bug in the caller, loud in debug builds.
        debug_assert!(
            self.tables.is_empty(),
            "mmu_gather dropped with {} tables",
            self.tables.len()
        );
    }
}
