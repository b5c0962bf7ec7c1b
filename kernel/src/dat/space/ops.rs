//! The operations on a space: map, unmap, protect and remap pages and
//! ranges, allocating tables on the way down and undoing them on failure,
//! and handing emptied tables to the mmu_gather (Linux's mm/memory.c
//! map/zap paths and arch/s390/mm/pgtable.c's ptep_* for the PTEs).

use core::sync::atomic::Ordering;

use super::super::dat_bug;
use super::super::entry::{
    pte_index, Level, Prot, Pte, RegionEntry, SegmentEntry, PTRS_PER_PTE, SEGMENT_SIZE,
};
use super::super::frag::PteTable;
use super::super::gather::{tlb_gather_mmu, GatherError, GatheredTable, MmuGather};
use super::super::table::{self, entry, CrstTable};
use super::super::tlb;
use super::{AddressSpace, SpaceError, UnmapStats};
use crate::mm::addr::{PhysAddr, PAGE_SIZE};
use crate::mm::ptdesc;

/// A table allocated by the current operation, to undo on failure.
#[derive(Clone, Copy)]
struct NewTable {
    parent: PhysAddr,
    parent_level: Level,
    va: u64,
    child: PhysAddr,
}

impl AddressSpace {
    /// Walk to the page table for `va`, allocating what is missing; each
    /// table allocated is recorded in `new` so a failure can undo it.
    fn walk_alloc(&mut self, va: u64, new: &mut NewTables) -> Result<PhysAddr, SpaceError> {
        let table = self.walk_alloc_crst(va, new)?;
        let ea = PhysAddr(table.0 + Level::Segment.index(va) as u64 * 8);
        // SAFETY: an entry of a live segment table of this space.
        let slot = unsafe { entry(ea) };
        let s = SegmentEntry::from_raw(slot.load(Ordering::Acquire));
        if !s.is_invalid() {
            return Ok(s.page_table());
        }
        let t = self.frags.page_table_alloc()?;
        self.link_pte_table(table, va, t, new)
    }

    /// Link the fresh PTE table `t` into the (invalid) segment entry for
    /// `va` of segment table `table`, recording it in `new`.
    fn link_pte_table(
        &mut self,
        table: PhysAddr,
        va: u64,
        t: PteTable,
        new: &mut NewTables,
    ) -> Result<PhysAddr, SpaceError> {
        let ea = PhysAddr(table.0 + Level::Segment.index(va) as u64 * 8);
        // SAFETY: an entry of a live segment table of this space.
        let slot = unsafe { entry(ea) };
        let linked = match SegmentEntry::table(t.phys(), false) {
            Ok(e) => e,
            Err(e) => {
                // Cannot happen (2 KiB aligned); the table goes back.
                self.frags.page_table_free(t);
                return Err(e.into());
            }
        };
        let pto = t.into_raw();
        new.push(NewTable {
            parent: table,
            parent_level: Level::Segment,
            va,
            child: pto,
        });
        // Invalid → valid needs no invalidation.
        slot.store(linked.raw(), Ordering::Release);
        Ok(pto)
    }

    /// Walk to the segment table for `va`, allocating the region and
    /// segment tables that are missing (recorded in `new`).
    fn walk_alloc_crst(&mut self, va: u64, new: &mut NewTables) -> Result<PhysAddr, SpaceError> {
        self.upgrade_for(va)?;
        let mut l = self.asce.level();
        let mut table = self.asce.origin();
        while let Some(lower) = l.lower() {
            let ea = PhysAddr(table.0 + l.index(va) as u64 * 8);
            // SAFETY: an entry of a live table of this space.
            let slot = unsafe { entry(ea) };
            let e = RegionEntry::from_raw(slot.load(Ordering::Acquire));
            let next = if e.is_invalid() {
                let t = table::crst_alloc(lower)?;
                // Cannot fail (16 KiB aligned); the table goes back if so.
                let linked = RegionEntry::table(l, t.phys())?;
                // The entry owns the table from here; `new` remembers it.
                let child = t.into_raw();
                new.push(NewTable {
                    parent: table,
                    parent_level: l,
                    va,
                    child,
                });
                // Invalid → valid needs no invalidation.
                slot.store(linked.raw(), Ordering::Release);
                child
            } else {
                e.next_origin()
            };
            table = next;
            l = lower;
        }
        Ok(table)
    }

    /// Undo the tables a failed operation allocated, newest first.
    fn undo(&mut self, new: &mut NewTables) {
        while let Some(t) = new.pop() {
            let ea = PhysAddr(t.parent.0 + t.parent_level.index(t.va) as u64 * 8);
            // SAFETY: the parent is live; its entry points at `t.child`.
            unsafe { tlb::idte(&self.context, t.parent, t.parent_level, t.va) };
            let empty = match t.parent_level {
                Level::Segment => SegmentEntry::empty().raw(),
                l => RegionEntry::empty(l).raw(),
            };
            // SAFETY: as above; the entry is invalid now.
            unsafe { entry(ea) }.store(empty, Ordering::Release);
            let r = match t.parent_level {
                // SAFETY: the entry that owned the table is gone (IDTE
                // above), and the failed operation made no other link to it.
                Level::Segment => unsafe { PteTable::from_raw(t.child, self.pgste) }
                    .map(|p| self.frags.page_table_free(p))
                    .map_err(|_| ()),
                // SAFETY: as above.
                _ => unsafe { CrstTable::from_raw(t.child) }
                    .map(table::crst_free)
                    .map_err(|_| ()),
            };
            if r.is_err() {
                dat_bug(format_args!("undo: table {:?} is not ours", t.child));
            }
        }
    }

    /// Map the page at `va` to the frame at `pa`.
    pub fn map(&mut self, va: u64, pa: PhysAddr, prot: Prot) -> Result<(), SpaceError> {
        self.check_page(va)?;
        let pte = Pte::new(pa, prot)?;
        if self.pte(va).is_present() {
            return Err(SpaceError::AlreadyMapped);
        }
        let mut new = NewTables::new();
        let old_asce = self.asce;
        let pto = match self.walk_alloc(va, &mut new) {
            Ok(p) => p,
            Err(e) => {
                self.undo(&mut new);
                self.downgrade_to(old_asce);
                return Err(e);
            }
        };
        let _ptl = table::table_ptdesc(pto).map(|pt| ptdesc::ptlock_ptr(pt).lock());
        // SAFETY: the PTE of a live table of this space, under its lock;
        // it is invalid, so no invalidation is needed before writing it.
        unsafe { entry(PhysAddr(pto.0 + pte_index(va) as u64 * 8)) }
            .store(pte.raw(), Ordering::Release);
        Ok(())
    }

    /// Map the page at `va` into its existing page table, under that
    /// table's lock; `NotMapped` if the segment has no page table yet (the
    /// caller then takes the exclusive path, `map`).
    pub fn map_existing(&self, va: u64, pa: PhysAddr, prot: Prot) -> Result<(), SpaceError> {
        self.check_page(va)?;
        let pte = Pte::new(pa, prot)?;
        let Some(pto) = self.pte_table(va) else {
            return Err(SpaceError::NotMapped);
        };
        let _ptl = table::table_ptdesc(pto).map(|pt| ptdesc::ptlock_ptr(pt).lock());
        // SAFETY: the PTE of a live table of this space, under its lock.
        let slot = unsafe { entry(PhysAddr(pto.0 + pte_index(va) as u64 * 8)) };
        if Pte::from_raw(slot.load(Ordering::Acquire)).is_present() {
            return Err(SpaceError::AlreadyMapped);
        }
        // Invalid → valid: no invalidation needed.
        slot.store(pte.raw(), Ordering::Release);
        Ok(())
    }

    /// Map `len` bytes at `va` to the frames from `pa` on. Nothing is
    /// changed if any page is already mapped or memory runs out.
    pub fn map_range(
        &mut self,
        va: u64,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), SpaceError> {
        let end = self.check_range(va, len)?;
        if pa.0 & (PAGE_SIZE - 1) != 0 || pa.0.checked_add(len).is_none() {
            return Err(SpaceError::Misaligned);
        }
        // Nothing in the range may be mapped: one segment walk per
        // segment, then its PTEs in a row (a missing table skips it whole).
        let seg_end = |a: u64| (a | (SEGMENT_SIZE - 1)).saturating_add(1).min(end);
        let mut a = va;
        while a < end {
            let next = seg_end(a);
            if let Some(pto) = self.pte_table(a) {
                if self
                    .ptes(pto, a, next)
                    .iter()
                    .any(|p| Pte::from_raw(p.load(Ordering::Acquire)).is_present())
                {
                    return Err(SpaceError::AlreadyMapped);
                }
            }
            a = next;
        }
        // Fails only for a frame beyond the PTE's field: checked for the
        // last frame before anything changes, so the loops below need not.
        Pte::new(PhysAddr(pa.0 + (end - va) - PAGE_SIZE), prot)?;
        let old_asce = self.asce;
        let mut a = va;
        while a < end {
            // A segment with a PTE table: its pages straight into it, a
            // store and an add each, under its lock. Without one: the
            // table is allocated already filled, then linked (the tables
            // above it allocated on the way as `map` would).
            let next = seg_end(a);
            let frame = PhysAddr(pa.0 + (a - va));
            let r = match self.pte_table(a) {
                Some(pto) => {
                    self.fill_ptes(pto, a, next, frame, prot);
                    Ok(())
                }
                None => self.map_segment_filled(a, next, frame, prot),
            };
            if let Err(e) = r {
                // Undo the pages mapped so far (freeing the tables they
                // needed), then any growth of the top they made.
                if a > va {
                    let keep = Some(old_asce.origin());
                    if let Err(ue) = self.unmap_range_keeping(va, a - va, keep) {
                        dat_bug(format_args!("map_range undo: unmap_range: {ue:?}"));
                    }
                }
                self.downgrade_to(old_asce);
                return Err(e);
            }
            a = next;
        }
        Ok(())
    }

    /// The PTEs for `[va, end)` (one segment) in page table `pto`.
    fn ptes(&self, pto: PhysAddr, va: u64, end: u64) -> &[core::sync::atomic::AtomicU64] {
        let first = PhysAddr(pto.0 + pte_index(va) as u64 * 8);
        // SAFETY: PTEs of a live page table of this space, borrowed no
        // longer than the space.
        unsafe { table::entries_at(first, ((end - va) / PAGE_SIZE) as usize) }
    }

    /// Map `[va, end)` (within one segment whose page table `pto` exists,
    /// every PTE of it empty) to consecutive frames from `pa`: one lock,
    /// one entry computed, then a store and an add per page. Invalid →
    /// valid needs no invalidation.
    fn fill_ptes(&self, pto: PhysAddr, va: u64, end: u64, pa: PhysAddr, prot: Prot) {
        // map_range checked the range's last frame fits a PTE.
        let Ok(pte) = Pte::new(pa, prot) else {
            dat_bug(format_args!(
                "fill_ptes {va:#x}: frame {pa:?} does not fit a PTE"
            ));
            return;
        };
        let mut raw = pte.raw();
        let _ptl = table::table_ptdesc(pto).map(|pt| ptdesc::ptlock_ptr(pt).lock());
        for p in self.ptes(pto, va, end) {
            p.store(raw, Ordering::Release);
            raw += PAGE_SIZE;
        }
    }

    /// Map `[va, end)` (one segment, no PTE table yet) to frames from
    /// `pa`: the tables above allocated as needed, the PTE table filled
    /// before its segment entry is written ("segment entries written as
    /// their tables complete"). A failure undoes this segment's tables and
    /// changes nothing else.
    fn map_segment_filled(
        &mut self,
        va: u64,
        end: u64,
        pa: PhysAddr,
        prot: Prot,
    ) -> Result<(), SpaceError> {
        let raw0 = Pte::new(pa, prot)?.raw();
        let mut new = NewTables::new();
        let r = self.walk_alloc_crst(va, &mut new).and_then(|table| {
            let n = ((end - va) / PAGE_SIZE) as usize;
            let t = self.frags.page_table_alloc_filled(pte_index(va), n, raw0)?;
            self.link_pte_table(table, va, t, &mut new)
        });
        if let Err(e) = r {
            self.undo(&mut new);
            return Err(e);
        }
        Ok(())
    }

    /// Change the present PTE for `va` to `f(old)`, under its table's lock:
    /// notify, IPTE (the TLB may hold the old entry), then the new entry.
    /// Only the PTE changes: `&self` is enough while nobody frees tables
    /// (see `SharedSpace`). Returns the old entry; nothing changes if `f`
    /// refuses.
    fn change_pte(
        &self,
        va: u64,
        f: impl FnOnce(Pte) -> Result<Pte, SpaceError>,
    ) -> Result<Pte, SpaceError> {
        self.check_page(va)?;
        let (Some(pto), Some(pea)) = (self.pte_table(va), self.pte_addr(va)) else {
            return Err(SpaceError::NotMapped);
        };
        let _ptl = table::table_ptdesc(pto).map(|pt| ptdesc::ptlock_ptr(pt).lock());
        // SAFETY: a PTE of a live table, under its lock.
        let slot = unsafe { entry(pea) };
        let old = Pte::from_raw(slot.load(Ordering::Acquire));
        if !old.is_present() {
            return Err(SpaceError::NotMapped);
        }
        let new = f(old)?;
        self.notify_before_change(va, pea);
        // SAFETY: `pto` is this live page table.
        unsafe { self.ipte(pto, va) };
        slot.store(new.raw(), Ordering::Release);
        Ok(old)
    }

    /// Linux `ptep_force_prot(PROT_READ, PGSTE_VSIE_BIT)`: make the present
    /// page at `va` read-only (notify and IPTE first if it was writable)
    /// and set its PGSTE VSIE bit: a shadow gmap protects the page that
    /// holds a guest-2 table, so that a change of it (a store makes the
    /// host lift the protection, which notifies) reaches the shadow.
    pub(crate) fn force_prot_vsie(&self, va: u64) -> Result<(), SpaceError> {
        self.check_page(va)?;
        let (Some(pto), Some(pea)) = (self.pte_table(va), self.pte_addr(va)) else {
            return Err(SpaceError::NotMapped);
        };
        let _ptl = table::table_ptdesc(pto).map(|pt| ptdesc::ptlock_ptr(pt).lock());
        // SAFETY: a PTE of a live table, under its lock.
        let slot = unsafe { entry(pea) };
        let old = Pte::from_raw(slot.load(Ordering::Acquire));
        if !old.is_present() || old.is_invalid() {
            return Err(SpaceError::NotMapped);
        }
        if !old.is_protected() {
            // Tightening is a change: shadow PTEs that map the page
            // writable (its VSIE bit) must go first, or guest-2 could
            // change the guest-2 table in it behind its shadow's back.
            // Linux's ptep_force_prot does not notify; zdat does.
            self.notify_before_change(va, pea);
            // SAFETY: `pto` is this live page table.
            unsafe { self.ipte(pto, va) };
            slot.store(old.with_prot(Prot::ReadOnly).raw(), Ordering::Release);
        }
        self.pgste_set_bits(va, super::PGSTE_VSIE_BIT)
    }

    /// Change the protection of the page at `va`.
    pub fn protect(&self, va: u64, prot: Prot) -> Result<(), SpaceError> {
        self.change_pte(va, |old| Ok(old.validated().with_prot(prot)))
            .map(|_| ())
    }

    /// Point the page at `va` at the frame at `pa`, keeping its protection
    /// (a VMM replacing guest memory, say). No table is allocated or freed,
    /// so this cannot fail half-way. Returns the frame it mapped before.
    pub fn remap(&self, va: u64, pa: PhysAddr) -> Result<PhysAddr, SpaceError> {
        self.change_pte(va, |old| Ok(Pte::new(pa, old.prot())?))
            .map(|old| old.frame())
    }

    /// Set or clear the DAT-protection bit of the segment entry covering
    /// `va` (the whole MiB): IDTE first, then the new entry.
    pub fn protect_segment(&mut self, va: u64, protect: bool) -> Result<(), SpaceError> {
        let Some(ea) = self.segment_entry_addr(va) else {
            return Err(SpaceError::NotMapped);
        };
        // SAFETY: an entry of a live segment table of this space.
        let slot = unsafe { entry(ea) };
        let old = SegmentEntry::from_raw(slot.load(Ordering::Acquire));
        if old.is_invalid() {
            return Err(SpaceError::NotMapped);
        }
        let table = table::table_of_entry(ea);
        let new = SegmentEntry::table(old.page_table(), protect)?;
        // Every page of the segment changes: the PGSTE notifications
        // first (shadow PTEs copied the segment's protection), as for a
        // change of each PTE.
        if self.pgste {
            let base = va & !(super::super::entry::SEGMENT_SIZE - 1);
            for i in 0..PTRS_PER_PTE as u64 {
                self.notify_before_change(
                    base + i * PAGE_SIZE,
                    PhysAddr(old.page_table().0 + i * 8),
                );
            }
        }
        // SAFETY: `table` is the live segment table holding the entry.
        unsafe { tlb::idte(&self.context, table, Level::Segment, va) };
        slot.store(new.raw(), Ordering::Release);
        // Linked gmap segments copied the old entry's bits: they change too.
        self.segment_changed(va, new);
        Ok(())
    }

    /// Change the protection of every mapped page in the range.
    pub fn protect_range(&mut self, va: u64, len: u64, prot: Prot) -> Result<u64, SpaceError> {
        let end = self.check_range(va, len)?;
        let mut n = 0;
        let mut a = va;
        while a < end {
            if self.pte(a).is_present() {
                self.protect(a, prot)?;
                n += 1;
            }
            a += PAGE_SIZE;
        }
        Ok(n)
    }

    /// Unmap the page at `va`; returns the frame it mapped. Empty tables
    /// below the top are freed.
    pub fn unmap(&mut self, va: u64) -> Result<PhysAddr, SpaceError> {
        self.check_page(va)?;
        let p = self.pte(va);
        if !p.is_present() {
            return Err(SpaceError::NotMapped);
        }
        self.unmap_range(va, PAGE_SIZE)?;
        Ok(p.frame())
    }

    /// Unmap every mapped page in the range; free tables that become empty
    /// after the flush (mmu_gather). A segment covered whole costs one IDTE
    /// instead of an IPTE per page.
    pub fn unmap_range(&mut self, va: u64, len: u64) -> Result<UnmapStats, SpaceError> {
        self.unmap_range_keeping(va, len, None)
    }

    /// `unmap_range`, but the CRST table `keep` stays even when it becomes
    /// empty (a failed map_range keeps the top it started with, so that
    /// undoing a growth of the top gives back the very same ASCE).
    fn unmap_range_keeping(
        &mut self,
        va: u64,
        len: u64,
        keep: Option<PhysAddr>,
    ) -> Result<UnmapStats, SpaceError> {
        let end = self.check_range(va, len)?;
        let mut g = tlb_gather_mmu(self.id, self.context.clone());
        let mut stats = UnmapStats::default();
        let end = (end as u128).min(self.limit()) as u64;
        if va < end {
            let top = self.asce.origin();
            self.unmap_level(top, self.asce.level(), va, end, keep, &mut g, &mut stats);
        }
        stats.flushes = g.flushes;
        stats.tables_freed = g.pending() as u64;
        g.tlb_finish_mmu(self);
        Ok(stats)
    }

    #[allow(clippy::too_many_arguments)]
    fn unmap_level(
        &mut self,
        tbl: PhysAddr,
        level: Level,
        start: u64,
        end: u64,
        keep: Option<PhysAddr>,
        g: &mut MmuGather,
        st: &mut UnmapStats,
    ) {
        let size = 1u128 << level.shift();
        let mut a = start as u128;
        let end_u = end as u128;
        while a < end_u {
            let base = a & !(size - 1);
            let next = (base + size).min(end_u);
            let va = a as u64;
            let ea = PhysAddr(tbl.0 + level.index(va) as u64 * 8);
            // SAFETY: an entry of a live table of this space.
            let slot = unsafe { entry(ea) };
            match level.lower() {
                Some(lower) => {
                    let e = RegionEntry::from_raw(slot.load(Ordering::Acquire));
                    if !e.is_invalid() {
                        let child = e.next_origin();
                        self.unmap_level(child, lower, va, next as u64, keep, g, st);
                        // SAFETY: `child` is a live table of this space.
                        if keep != Some(child) && unsafe { table::crst_is_empty(child, lower) } {
                            // SAFETY: `tbl` is this space's live table of `level`,
                            // held exclusively (`&mut self`).
                            let ea = unsafe { g.invalidate_entry(tbl, level, va) };
                            // SAFETY: its entry is gone (just invalidated).
                            let t = unsafe { CrstTable::from_raw(child) }
                                .map(GatheredTable::Crst)
                                .map_err(|_| GatherError::NotPageTable);
                            gather(g, t, child, ea);
                        }
                    }
                }
                None => {
                    let s = SegmentEntry::from_raw(slot.load(Ordering::Acquire));
                    if s.is_invalid() {
                        a = next;
                        continue;
                    }
                    let pto = s.page_table();
                    let whole = a == base && next == base + size;
                    if whole {
                        if self.pgste {
                            for i in 0..PTRS_PER_PTE as u64 {
                                self.notify_before_change(
                                    base as u64 + i * PAGE_SIZE,
                                    PhysAddr(pto.0 + i * 8),
                                );
                            }
                        }
                        self.unlink_before_free(va, pto);
                        // One IDTE makes the whole page table unreachable; its
                        // PTEs can then be cleared without an IPTE each.
                        // SAFETY: `tbl` is this space's live segment table,
                        // held exclusively.
                        unsafe { g.invalidate_entry(tbl, Level::Segment, va) };
                        for i in 0..PTRS_PER_PTE as u64 {
                            // SAFETY: PTEs of the now unreachable page table.
                            let pe = unsafe { entry(PhysAddr(pto.0 + i * 8)) };
                            if Pte::from_raw(pe.load(Ordering::Relaxed)).is_present() {
                                st.pages += 1;
                            }
                            pe.store(Pte::empty().raw(), Ordering::Relaxed);
                        }
                    } else {
                        let _ptl = table::table_ptdesc(pto).map(|pt| ptdesc::ptlock_ptr(pt).lock());
                        let mut p = a as u64;
                        while (p as u128) < next {
                            // SAFETY: a PTE of the live page table, under its lock.
                            let pe = unsafe { entry(PhysAddr(pto.0 + pte_index(p) as u64 * 8)) };
                            if Pte::from_raw(pe.load(Ordering::Acquire)).is_present() {
                                self.notify_before_change(
                                    p,
                                    PhysAddr(pto.0 + pte_index(p) as u64 * 8),
                                );
                                // SAFETY: `pto` is this live page table.
                                unsafe { self.ipte(pto, p) };
                                g.note_flush();
                                pe.store(Pte::empty().raw(), Ordering::Release);
                                st.pages += 1;
                            }
                            p += PAGE_SIZE;
                        }
                        // SAFETY: `pto` is this space's live page table.
                        if !unsafe { table::pte_table_is_empty(pto) } {
                            a = next;
                            continue;
                        }
                        self.unlink_before_free(va, pto);
                        // SAFETY: as above.
                        unsafe { g.invalidate_entry(tbl, Level::Segment, va) };
                    }
                    // SAFETY: its segment entry is gone (invalidated above).
                    let t = unsafe { PteTable::from_raw(pto, self.pgste) }
                        .map(GatheredTable::Pte)
                        .map_err(|_| GatherError::NotPageTable);
                    gather(g, t, pto, ea);
                }
            }
            a = next;
        }
    }
}

/// Hand a table whose entry was just invalidated to the gather; a refusal
/// is a bug in this file (the table stays allocated, unreachable: leaked
/// rather than freed while a TLB might reach it), reported loudly.
fn gather(
    g: &mut MmuGather,
    t: Result<GatheredTable, GatherError>,
    table: PhysAddr,
    parent: PhysAddr,
) {
    let r = match t {
        // SAFETY: `parent` is the entry of this space's live table that
        // pointed at `table`, and the unmap holds the space exclusively.
        Ok(t) => unsafe { g.tlb_remove_table(t, parent) },
        Err(e) => {
            dat_bug(format_args!("table {table:?} is no table of ours: {e:?}"));
            return;
        }
    };
    if let Err((t, e)) = r {
        dat_bug(format_args!("{t:?} refused by mmu_gather: {e:?}"));
        // Possibly still reachable: kept, never freed.
        let _ = t.into_raw();
    }
}

/// A fixed-capacity list of tables allocated by one operation (at most one
/// per level), without the heap.
struct NewTables {
    items: [Option<NewTable>; 4],
    len: usize,
}

impl NewTables {
    fn new() -> Self {
        NewTables {
            items: [None; 4],
            len: 0,
        }
    }

    fn push(&mut self, t: NewTable) {
        if self.len < self.items.len() {
            self.items[self.len] = Some(t);
            self.len += 1;
        }
    }

    fn pop(&mut self) -> Option<NewTable> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        self.items[self.len].take()
    }
}
