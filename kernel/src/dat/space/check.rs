//! The space's consistency checker: every table reached is a page table
//! by its descriptor, entries have their level's type, fragments are
//! accounted in their page, and the free-half list is exact.
//!
//! Linux has no counterpart (its page-table walkers in mm/debug_vm_pgtable.c come closest).

use core::sync::atomic::Ordering;

use super::super::entry::{Level, Pte, RegionEntry, SegmentEntry, CRST_ENTRIES, PTRS_PER_PTE};
use super::super::table::{self, entry};
use super::AddressSpace;
use crate::mm::addr::{PhysAddr, PAGE_SIZE};

/// What `AddressSpace::check` counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpaceCheck {
    pub crst_tables: u64,
    pub pte_tables: u64,
    /// Pages holding PTE tables (two tables share one with fragments).
    pub pte_pages: u64,
    pub mapped_pages: u64,
}

/// Inconsistencies `AddressSpace::check` finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceCheckError {
    /// A table page without a page-table descriptor (type tag).
    NotPageTable(PhysAddr),
    /// An entry whose table-type field does not match its table's level.
    WrongLevel(PhysAddr),
    /// A PTE table whose half is not marked used in its page's
    /// pt_frag_refcount, or a page whose count disagrees with its tables.
    Fragment(PhysAddr),
    /// A page on the free-half list without exactly one half in use.
    FragList(PhysAddr),
}

impl AddressSpace {
    /// Walk every table: each is a page table by its descriptor, entries
    /// have the right type, fragments are accounted in their page, and the
    /// free-half list holds exactly the pages with one half in use.
    pub fn check(&self) -> Result<SpaceCheck, SpaceCheckError> {
        let mut st = SpaceCheck::default();
        let mut pages: alloc::vec::Vec<(u64, u32)> = alloc::vec::Vec::new();
        self.check_level(self.asce.origin(), self.asce.level(), &mut st, &mut pages)?;
        pages.sort_unstable();
        // Count the tables each page holds and compare with its refcount.
        let mut i = 0;
        let mut with_one = 0;
        while i < pages.len() {
            let page = pages[i].0;
            let mut halves = 0u32;
            while i < pages.len() && pages[i].0 == page {
                halves |= 1 << pages[i].1;
                i += 1;
            }
            st.pte_pages += 1;
            with_one += u64::from(halves.count_ones() == 1);
            let pt = table::table_ptdesc(PhysAddr(page))
                .ok_or(SpaceCheckError::NotPageTable(PhysAddr(page)))?;
            let want = if self.pgste { 3 } else { halves };
            if pt.frag_halves() != want || pt.frag_count() != want.count_ones() {
                return Err(SpaceCheckError::Fragment(PhysAddr(page)));
            }
        }
        let mut n = 0;
        for pa in self.frags.listed() {
            let pt = table::table_ptdesc(pa).ok_or(SpaceCheckError::FragList(pa))?;
            if pt.frag_count() != 1 || !pt.frag_listed() || n > st.pte_pages {
                return Err(SpaceCheckError::FragList(pa));
            }
            n += 1;
        }
        if !self.pgste && n != with_one {
            return Err(SpaceCheckError::FragList(PhysAddr(n)));
        }
        Ok(st)
    }

    fn check_level(
        &self,
        tbl: PhysAddr,
        level: Level,
        st: &mut SpaceCheck,
        pages: &mut alloc::vec::Vec<(u64, u32)>,
    ) -> Result<(), SpaceCheckError> {
        let pt = table::table_ptdesc(tbl).ok_or(SpaceCheckError::NotPageTable(tbl))?;
        if pt.order() != table::CRST_ORDER {
            return Err(SpaceCheckError::NotPageTable(tbl));
        }
        st.crst_tables += 1;
        for i in 0..CRST_ENTRIES as u64 {
            let ea = PhysAddr(tbl.0 + i * 8);
            // SAFETY: an entry of a live table of this space.
            let raw = unsafe { entry(ea) }.load(Ordering::Acquire);
            match level.lower() {
                Some(lower) => {
                    let e = RegionEntry::from_raw(raw);
                    if e.level() != level {
                        return Err(SpaceCheckError::WrongLevel(ea));
                    }
                    if !e.is_invalid() {
                        self.check_level(e.next_origin(), lower, st, pages)?;
                    }
                }
                None => {
                    let s = SegmentEntry::from_raw(raw);
                    if s.tt() != 0 {
                        return Err(SpaceCheckError::WrongLevel(ea));
                    }
                    if s.is_invalid() {
                        continue;
                    }
                    let pto = s.page_table();
                    if table::table_ptdesc(pto).is_none() {
                        return Err(SpaceCheckError::NotPageTable(pto));
                    }
                    st.pte_tables += 1;
                    pages.push((pto.align_down(PAGE_SIZE).0, ((pto.0 >> 11) & 1) as u32));
                    for j in 0..PTRS_PER_PTE as u64 {
                        // SAFETY: a PTE of a live table of this space.
                        let raw = unsafe { entry(PhysAddr(pto.0 + j * 8)) }.load(Ordering::Relaxed);
                        if Pte::from_raw(raw).is_present() {
                            st.mapped_pages += 1;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
