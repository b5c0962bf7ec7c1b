//! Test-only hooks: writes the space API never makes (entries it never
//! builds, a change without its invalidation), for tests that show what
//! the hardware does with them. Crate-internal and test builds only.

use core::sync::atomic::Ordering;

use super::super::entry::{Level, Pte, RegionEntry, SegmentEntry};
use super::super::table::{self, entry};
use super::super::tlb;
use super::{AddressSpace, SpaceError};
use crate::mm::addr::PhysAddr;

impl AddressSpace {
    /// The real address of the entry of `level` covering `va` (tests).
    pub(crate) fn entry_addr_for_test(&self, va: u64, level: Level) -> Option<PhysAddr> {
        self.entry_addr(va, level)
    }

    /// Replace the PTE for `va` with any value, invalidating the old one
    /// first (IPTE). For tests that need entries the API never builds
    /// (bit 52 set, say).
    ///
    /// # Safety
    /// The new entry may map any frame: the caller must not store through it
    /// into memory it does not own.
    pub(crate) unsafe fn replace_pte(&mut self, va: u64, pte: Pte) -> Result<(), SpaceError> {
        let (Some(pto), Some(pea)) = (self.pte_table(va), self.pte_addr(va)) else {
            return Err(SpaceError::NotMapped);
        };
        // SAFETY: `pto` is the live page table for `va`.
        unsafe { tlb::ipte(&self.context, pto, va) };
        // SAFETY: the PTE of a live table; invalid now.
        unsafe { entry(pea) }.store(pte.raw(), Ordering::Release);
        Ok(())
    }

    /// Overwrite the PTE for `va` *without* invalidating it: the TLB may go
    /// on serving the old translation. This is the bug the space API
    /// exists to prevent; tests use it to show the hardware (QEMU) really
    /// caches translations.
    ///
    /// # Safety
    /// As `replace_pte`; the old translation may stay in use afterwards.
    pub(crate) unsafe fn set_pte_without_invalidation(
        &mut self,
        va: u64,
        pte: Pte,
    ) -> Result<(), SpaceError> {
        let Some(pea) = self.pte_addr(va) else {
            return Err(SpaceError::NotMapped);
        };
        // SAFETY: the PTE of a live table of this space.
        unsafe { entry(pea) }.store(pte.raw(), Ordering::Release);
        Ok(())
    }

    /// Overwrite the segment entry covering `va` (after IDTE), e.g. with an
    /// EDAT-1 large entry.
    ///
    /// # Safety
    /// As `replace_pte`; a page table the old entry pointed at is not freed.
    pub(crate) unsafe fn replace_segment_entry(
        &mut self,
        va: u64,
        e: SegmentEntry,
    ) -> Result<(), SpaceError> {
        let Some(ea) = self.segment_entry_addr(va) else {
            return Err(SpaceError::NotMapped);
        };
        let table = table::table_of_entry(ea);
        // SAFETY: `table` is the live segment table holding the entry.
        unsafe { tlb::idte(&self.context, table, Level::Segment, va) };
        // SAFETY: an entry of a live table of this space.
        unsafe { entry(ea) }.store(e.raw(), Ordering::Release);
        Ok(())
    }

    /// Overwrite the region entry of `level` covering `va` (after IDTE),
    /// e.g. with an EDAT-2 large region-third entry.
    ///
    /// # Safety
    /// As `replace_segment_entry`.
    pub(crate) unsafe fn replace_region_entry(
        &mut self,
        va: u64,
        level: Level,
        e: RegionEntry,
    ) -> Result<(), SpaceError> {
        let Some(ea) = self.entry_addr(va, level) else {
            return Err(SpaceError::NotMapped);
        };
        let table = table::table_of_entry(ea);
        // SAFETY: `table` is the live table of `level` holding the entry.
        unsafe { tlb::idte(&self.context, table, level, va) };
        // SAFETY: an entry of a live table of this space.
        unsafe { entry(ea) }.store(e.raw(), Ordering::Release);
        Ok(())
    }
}
