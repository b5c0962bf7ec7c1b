//! mmu_gather, as Linux's tlb_gather_mmu / tlb_remove_table /
//! tlb_finish_mmu: an unmap collects the page tables it empties and frees
//! them only after the invalidation that makes them unreachable, so the
//! hardware can never walk a freed table. The gather issues that
//! invalidation itself (`invalidate_entry`) and takes a table only if its
//! entry was invalidated by it and no longer points at it. It takes owned
//! process page tables only (`CrstTable`, `PteTable`: handles of
//! `PtDesc` pages); a gmap table is another type and cannot be passed in.
//! Models include/asm-generic/tlb.h and mm/mmu_gather.c.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::context::MmContext;
use super::entry::{Level, RegionEntry, SegmentEntry};
use super::frag::PteTable;
use super::table::CrstTable;
use super::{dat_bug, table, tlb};
use crate::mm::addr::PhysAddr;

/// A table waiting to be freed, owned by the gather.
#[derive(Debug)]
pub enum GatheredTable {
    /// A PTE table (a 2 KiB fragment, or a whole page with PGSTEs).
    Pte(PteTable),
    /// A region or segment table.
    Crst(CrstTable),
}

impl GatheredTable {
    pub fn phys(&self) -> PhysAddr {
        match self {
            GatheredTable::Pte(t) => t.phys(),
            GatheredTable::Crst(t) => t.phys(),
        }
    }

    /// Give the table up unfreed (it may still be reachable, or it is
    /// still linked): its address.
    pub fn into_raw(self) -> PhysAddr {
        match self {
            GatheredTable::Pte(t) => t.into_raw(),
            GatheredTable::Crst(t) => t.into_raw(),
        }
    }

    fn leak(self) {
        let _ = self.into_raw();
    }
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
    /// Its context: which CPUs the invalidations must reach.
    mm: Arc<MmContext>,
    /// Each table with the entry that pointed at it.
    tables: Vec<(GatheredTable, PhysAddr)>,
    /// Entries this gather invalidated (IDTE), by real address.
    invalidated: Vec<PhysAddr>,
    /// Invalidations issued for this gather (IPTE and IDTE).
    pub flushes: u64,
}

/// `tlb_gather_mmu` for the space with id `space` and context `mm`.
pub fn tlb_gather_mmu(space: u64, mm: Arc<MmContext>) -> MmuGather {
    MmuGather {
        space,
        mm,
        tables: Vec::new(),
        invalidated: Vec::new(),
        flushes: 0,
    }
}

/// Whether the entry at `parent` is valid and points at table `t`.
///
/// # Safety
/// `parent` is the real address of an entry of a live table.
unsafe fn links(parent: PhysAddr, t: &GatheredTable) -> bool {
    // SAFETY: forwarded to the caller.
    let raw = unsafe { table::entry(parent) }.load(Ordering::Acquire);
    match t {
        GatheredTable::Crst(c) => {
            let e = RegionEntry::from_raw(raw);
            !e.is_invalid() && e.next_origin() == c.phys()
        }
        GatheredTable::Pte(p) => {
            let e = SegmentEntry::from_raw(raw);
            !e.is_invalid() && e.page_table() == p.phys()
        }
    }
}

impl MmuGather {
    /// `tlb_remove_table`: free `t` once the TLB cannot reach it. The
    /// handle is the ticket (a process page table: its type says so), and
    /// `parent` the entry that pointed at it, which must no longer point at
    /// it and must have been invalidated by this gather
    /// (`invalidate_entry`). On a refusal nothing is gathered and the table
    /// comes back.
    ///
    /// # Safety
    /// `parent` is the real address of the entry of a live table of this
    /// gather's space that pointed at `t`, and the caller holds that space
    /// exclusively.
    pub(crate) unsafe fn tlb_remove_table(
        &mut self,
        t: GatheredTable,
        parent: PhysAddr,
    ) -> Result<(), (GatheredTable, GatherError)> {
        let pa = t.phys();
        if self.tables.iter().any(|(g, _)| g.phys() == pa) {
            return Err((t, GatherError::Duplicate));
        }
        // SAFETY: forwarded to the caller.
        if unsafe { links(parent, &t) } {
            return Err((t, GatherError::StillLinked));
        }
        if !self.invalidated.contains(&parent) {
            return Err((t, GatherError::NotInvalidated));
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
    /// which purge every TLB entry formed through it on every CPU that may
    /// hold one before they complete), then make it empty. Tables it pointed at may then be
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
        unsafe { tlb::idte(&self.mm, tbl, level, va) };
        // SAFETY: the entry of the caller's live table; invalid now.
        unsafe { table::entry(ea) }.store(empty, Ordering::Release);
        self.flushes += 1;
        self.invalidated.push(ea);
        ea
    }

    /// `tlb_finish_mmu`: every gathered table's entry was invalidated when
    /// it was gathered (zdat's IDTE/CSPG complete their purge on every CPU
    /// that may hold entries of the space before returning, so there is no
    /// batched flush left to issue); check
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
            for (t, _) in tables {
                t.leak();
            }
            return self.flushes;
        }
        for (t, parent) in tables {
            // SAFETY: `parent` was checked by tlb_remove_table to be an entry
            // of a live table of this space, which the caller still holds.
            if unsafe { links(parent, &t) } {
                dat_bug(format_args!("gathered table {t:?} linked again: not freed"));
                t.leak();
                continue;
            }
            match t {
                // page_table_free refuses (loudly) a table of the wrong kind.
                GatheredTable::Pte(p) => space.page_table_free(p),
                GatheredTable::Crst(c) => table::crst_free(c),
            }
        }
        self.flushes
    }
}

impl Drop for MmuGather {
    fn drop(&mut self) {
        // A gather dropped without tlb_finish_mmu cannot know the TLB is
        // clear of its tables: they are reported and kept, never freed.
        if !self.tables.is_empty() {
            dat_bug(format_args!(
                "mmu_gather dropped with {} tables",
                self.tables.len()
            ));
            for (t, _) in self.tables.drain(..) {
                t.leak();
            }
        }
    }
}
