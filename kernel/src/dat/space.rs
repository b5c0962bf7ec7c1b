//! An address space (Linux's mm as far as page tables go): an ASCE whose
//! type follows the limit, grown when a mapping needs it
//! (`crst_table_upgrade`); map, unmap, protect and look up pages and
//! ranges; lower tables allocated on demand and freed when they become
//! empty. A valid entry is never changed in place: IPTE (PTE) or IDTE
//! (region/segment) first. PTE tables are 2 KiB fragments, two per page,
//! or whole pages with PGSTEs for spaces a gmap shares.

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;

use super::dat_bug;
use super::entry::{
    pte_index, Asce, EntryError, Level, Prot, Pte, RegionEntry, SegmentEntry, PTRS_PER_PTE,
};
use super::gather::{tlb_gather_mmu, GatheredTable, MmuGather};
use super::table::{self, entry, PhysReader, PTE_TABLE_SIZE};
use super::tlb;
use super::walk::{self, Facilities, Fault, Translation};
use crate::mm::addr::{PhysAddr, PAGE_SIZE};
use crate::mm::ptdesc;
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

/// A table allocated by the current operation, to undo on failure.
#[derive(Clone, Copy)]
struct NewTable {
    parent: PhysAddr,
    parent_level: Level,
    va: u64,
    child: PhysAddr,
}

/// What a gmap needs to hear from its parent space (Linux calls
/// gmap_unlink and ptep_notify from the mm's page-table code). Installed
/// once by the gmap subsystem; only spaces with PGSTEs call them.
#[derive(Clone, Copy)]
pub struct SpaceHooks {
    /// The PTE table for the segment at `vmaddr` is about to be unlinked
    /// from space `space` and freed: entries pointing at it must go first.
    pub table_unlink: fn(space: u64, vmaddr: u64, pte_table: PhysAddr),
    /// The PTE for `vmaddr` of space `space`, which had its PGSTE notify
    /// bit set, is about to change.
    pub pte_notify: fn(space: u64, vmaddr: u64),
    /// The PTE for `vmaddr` in the shared page table at `pto` was just
    /// invalidated with IPTE at the host address; purge what the TLBs hold
    /// of it under every guest address that reaches it (see
    /// `tlb::ipte_guest_alias`: QEMU's IPTE purges only its operand's
    /// address).
    pub pte_alias_purge: fn(space: u64, vmaddr: u64, pto: PhysAddr),
    /// The segment entry for `vmaddr` of space `space` changed to `new`
    /// (protection, say) and still points at the same PTE table: every gmap
    /// segment linked to it must be changed the same way (IDTE first).
    pub segment_change: fn(space: u64, vmaddr: u64, new: SegmentEntry),
}

/// What a hook may do. Hooks run with the space's owner lock held (the
/// `HostMm` mutex) and, for `pte_notify` and `pte_alias_purge`, the page
/// table's ptlock: they may take the gmap registry and gmap locks (the lock
/// order is host, registry, gmap), issue invalidations and change gmap
/// tables; they must not take a host lock, change the host's tables, wait
/// for another CPU or allocate page tables. Debug builds check the first
/// rule: while a hook runs on a CPU, `in_space_hook()` is true there, and
/// the gmap code asserts it is false wherever it takes a host lock.
static HOOK_DEPTH: [AtomicU64; crate::sclp::info::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::sclp::info::MAX_CPUS];

fn this_cpu() -> usize {
    #[cfg(target_arch = "s390x")]
    {
        crate::smp::cpu_nr() % crate::sclp::info::MAX_CPUS
    }
    #[cfg(not(target_arch = "s390x"))]
    {
        0
    }
}

/// Whether this CPU is running a space hook (see `SpaceHooks`).
pub fn in_space_hook() -> bool {
    HOOK_DEPTH[this_cpu()].load(Ordering::Relaxed) != 0
}

struct HookScope(usize);

impl HookScope {
    fn enter() -> Self {
        let cpu = this_cpu();
        HOOK_DEPTH[cpu].fetch_add(1, Ordering::Relaxed);
        HookScope(cpu)
    }
}

impl Drop for HookScope {
    fn drop(&mut self) {
        HOOK_DEPTH[self.0].fetch_sub(1, Ordering::Relaxed);
    }
}

static HOOKS: Once<SpaceHooks> = Once::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub fn set_hooks(h: SpaceHooks) {
    HOOKS.call_once(|| h);
}

/// PGSTE bit Linux calls PGSTE_IN_BIT: notify before this PTE changes.
pub const PGSTE_IN_BIT: u64 = 0x0000_4000_0000_0000;

pub struct AddressSpace {
    id: u64,
    asce: Asce,
    /// Addresses at or above this are refused (the space never grows past).
    max_limit: u128,
    /// PTE tables are whole pages with PGSTEs in the upper half.
    pgste: bool,
    /// Pages with one free 2 KiB half (Linux mm->context.pgtable_list),
    /// linked through the ptdesc's pt_list by real address; 0 = end.
    frag_list: u64,
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
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(AddressSpace {
            id,
            asce: Asce::new(top, level)?,
            max_limit,
            pgste,
            frag_list: 0,
        })
    }

    /// A number naming this space (for the gmaps attached to it).
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn asce(&self) -> Asce {
        self.asce
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

    // -- growing the top ------------------------------------------------------

    /// `crst_table_upgrade`: add levels on top until `va` is covered. The old
    /// top becomes entry 0 of the new one, so existing mappings stay, and
    /// the old ASCE stays usable on a CPU that still has it loaded (its
    /// tables are all still there: the old top is never freed here, even
    /// when empty; Linux's `crst_table_upgrade` keeps it the same way and
    /// then switches every CPU attached to the mm).
    fn upgrade_for(&mut self, va: u64) -> Result<(), SpaceError> {
        if va as u128 >= self.max_limit {
            return Err(SpaceError::OutOfRange);
        }
        while va as u128 >= self.limit() {
            let old = self.asce;
            let Some(up) = old.level().upper() else {
                return Err(SpaceError::OutOfRange);
            };
            let entry0 = RegionEntry::table(up, old.origin())?;
            let top = table::crst_alloc(up)?;
            // SAFETY: the new table is ours; entry 0 covers the old range.
            unsafe { entry(top) }.store(entry0.raw(), Ordering::Release);
            self.asce = Asce::new(top, up)?;
        }
        Ok(())
    }

    /// Undo upgrades of a failed operation: drop added top tables until the
    /// ASCE is `old` again. Each added top may only have entry 0, pointing
    /// down (the failed operation's tables below were undone already); a
    /// top with more is a bug, reported, and kept.
    fn downgrade_to(&mut self, old: Asce) {
        while self.asce != old && self.asce.level() > old.level() {
            let top = self.asce.origin();
            let Some(lower) = self.asce.level().lower() else {
                return;
            };
            // SAFETY: entry 0 of the live top table.
            let e0 = RegionEntry::from_raw(unsafe { entry(top) }.load(Ordering::Acquire));
            let level = self.asce.level();
            let rest_empty = (1..super::entry::CRST_ENTRIES as u64).all(|i| {
                // SAFETY: entries of the live top table.
                unsafe { entry(PhysAddr(top.0 + i * 8)) }.load(Ordering::Acquire)
                    == RegionEntry::empty(level).raw()
            });
            let Ok(a) = Asce::new(e0.next_origin(), lower) else {
                dat_bug(format_args!("downgrade: entry 0 of {top:?} is no table"));
                return;
            };
            if e0.is_invalid() || !rest_empty {
                dat_bug(format_args!(
                    "downgrade: top {top:?} holds more than the old top"
                ));
                return;
            }
            let dropped = self.asce;
            self.asce = a;
            // Nothing below changed, but the dropped top must not be
            // reachable through any TLB once it is free.
            tlb::flush_asce(dropped);
            table::crst_free(top);
        }
    }

    // -- PTE tables and fragments ----------------------------------------------

    fn frag_link(pa: u64) -> Option<&'static ptdesc::PtDesc> {
        table::table_ptdesc(PhysAddr(pa))
    }

    fn frag_list_add(&mut self, page: PhysAddr) {
        let Some(pt) = Self::frag_link(page.0) else {
            return;
        };
        // SAFETY: atomics-only union; pt_list is this page's list link.
        let l = unsafe { &pt.pt_list_or_pad.pt_list };
        l.next.store(self.frag_list, Ordering::Relaxed);
        l.prev.store(0, Ordering::Relaxed);
        if let Some(n) = Self::frag_link(self.frag_list).filter(|_| self.frag_list != 0) {
            // SAFETY: as above.
            unsafe {
                n.pt_list_or_pad
                    .pt_list
                    .prev
                    .store(page.0, Ordering::Relaxed)
            };
        }
        self.frag_list = page.0;
    }

    fn frag_list_del(&mut self, page: PhysAddr) {
        let Some(pt) = Self::frag_link(page.0) else {
            return;
        };
        // SAFETY: atomics-only union.
        let l = unsafe { &pt.pt_list_or_pad.pt_list };
        let (next, prev) = (
            l.next.load(Ordering::Relaxed),
            l.prev.load(Ordering::Relaxed),
        );
        if prev == 0 {
            self.frag_list = next;
        } else if let Some(p) = Self::frag_link(prev) {
            // SAFETY: as above.
            unsafe { p.pt_list_or_pad.pt_list.next.store(next, Ordering::Relaxed) };
        }
        if next != 0 {
            if let Some(n) = Self::frag_link(next) {
                // SAFETY: as above.
                unsafe { n.pt_list_or_pad.pt_list.prev.store(prev, Ordering::Relaxed) };
            }
        }
        l.next.store(0, Ordering::Relaxed);
        l.prev.store(0, Ordering::Relaxed);
    }

    /// Pages on the list of pages with a free half.
    pub fn frag_list_len(&self) -> usize {
        let mut n = 0;
        let mut pa = self.frag_list;
        while pa != 0 {
            n += 1;
            // SAFETY: atomics-only union.
            pa = Self::frag_link(pa).map_or(0, |p| unsafe {
                p.pt_list_or_pad.pt_list.next.load(Ordering::Relaxed)
            });
        }
        n
    }

    /// A fresh, empty PTE table: the free half of a page on the list, or a
    /// new page (whole, with PGSTEs, for a pgste space).
    fn pte_alloc(&mut self) -> Result<PhysAddr, SpaceError> {
        if !self.pgste && self.frag_list != 0 {
            let page = PhysAddr(self.frag_list);
            let pt = Self::frag_link(page.0).ok_or(SpaceError::NoMemory)?;
            let half = if pt.frag_halves() & 1 == 0 { 0 } else { 1 };
            if !pt.frag_get(half) {
                return Err(SpaceError::NoMemory);
            }
            self.frag_list_del(page);
            let pa = PhysAddr(page.0 + half as u64 * PTE_TABLE_SIZE);
            table::pte_table_init(pa, false);
            return Ok(pa);
        }
        let pt = ptdesc::pagetable_alloc(0)?;
        ptdesc::pagetable_pte_ctor(pt);
        let page = ptdesc::ptdesc_phys(pt);
        if self.pgste {
            // A whole page: both halves are this table (PTEs, then PGSTEs).
            pt.frag_get(0);
            pt.frag_get(1);
            table::pte_table_init(page, true);
        } else {
            pt.frag_get(0);
            table::pte_table_init(page, false);
            self.frag_list_add(page);
        }
        Ok(page)
    }

    /// Free a PTE table now (only once no TLB can reach it: through
    /// mmu_gather or after the segment entry was invalidated).
    pub(super) fn pte_free_now(&mut self, pa: PhysAddr) {
        let page = pa.align_down(PAGE_SIZE);
        let Some(pt) = Self::frag_link(page.0) else {
            dat_bug(format_args!(
                "PTE table {pa:?} freed, but its page is no page table"
            ));
            return;
        };
        if self.pgste {
            // A whole-page table holds both halves: both must be in use.
            let (lo, hi) = (pt.frag_put(0), pt.frag_put(1));
            if lo != Some(1) || hi != Some(0) {
                dat_bug(format_args!(
                    "PTE table {pa:?} freed twice ({lo:?}, {hi:?})"
                ));
                return;
            }
            table::poison_pte_table(page);
        } else {
            let half = ((pa.0 >> 11) & 1) as u32;
            let left = pt.frag_put(half);
            if matches!(left, Some(0 | 1)) {
                table::poison_pte_table(pa);
            }
            match left {
                Some(1) => {
                    // The other half is still used: the page has room again.
                    self.frag_list_add(page);
                    return;
                }
                Some(0) => self.frag_list_del(page),
                r => {
                    dat_bug(format_args!("PTE table {pa:?} freed twice ({r:?})"));
                    return;
                }
            }
        }
        ptdesc::pagetable_pte_dtor(pt);
        if let Err(e) = ptdesc::pagetable_free(pt) {
            dat_bug(format_args!(
                "PTE table page {page:?} refused by the allocator: {e:?}"
            ));
        }
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

    /// The real address of the entry of `level` covering `va` (tests).
    pub fn entry_addr_for_test(&self, va: u64, level: Level) -> Option<PhysAddr> {
        self.entry_addr(va, level)
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

    /// Walk to the page table for `va`, allocating what is missing; each
    /// table allocated is recorded in `new` so a failure can undo it.
    fn walk_alloc(
        &mut self,
        va: u64,
        new: &mut heapless_new::NewTables,
    ) -> Result<PhysAddr, SpaceError> {
        self.upgrade_for(va)?;
        let mut l = self.asce.level();
        let mut table = self.asce.origin();
        while let Some(lower) = l.lower() {
            let ea = PhysAddr(table.0 + l.index(va) as u64 * 8);
            // SAFETY: an entry of a live table of this space.
            let slot = unsafe { entry(ea) };
            let e = RegionEntry::from_raw(slot.load(Ordering::Acquire));
            let next = if e.is_invalid() {
                let child = table::crst_alloc(lower)?;
                new.push(NewTable {
                    parent: table,
                    parent_level: l,
                    va,
                    child,
                });
                // Invalid → valid needs no invalidation.
                slot.store(RegionEntry::table(l, child)?.raw(), Ordering::Release);
                child
            } else {
                e.next_origin()
            };
            table = next;
            l = lower;
        }
        let ea = PhysAddr(table.0 + Level::Segment.index(va) as u64 * 8);
        // SAFETY: an entry of a live segment table of this space.
        let slot = unsafe { entry(ea) };
        let s = SegmentEntry::from_raw(slot.load(Ordering::Acquire));
        if !s.is_invalid() {
            return Ok(s.page_table());
        }
        let pto = self.pte_alloc()?;
        new.push(NewTable {
            parent: table,
            parent_level: Level::Segment,
            va,
            child: pto,
        });
        slot.store(SegmentEntry::table(pto, false)?.raw(), Ordering::Release);
        Ok(pto)
    }

    /// Undo the tables a failed operation allocated, newest first.
    fn undo(&mut self, new: &mut heapless_new::NewTables) {
        while let Some(t) = new.pop() {
            let ea = PhysAddr(t.parent.0 + t.parent_level.index(t.va) as u64 * 8);
            // SAFETY: the parent is live; its entry points at `t.child`.
            unsafe { tlb::idte(t.parent, t.parent_level, t.va) };
            let empty = match t.parent_level {
                Level::Segment => SegmentEntry::empty().raw(),
                l => RegionEntry::empty(l).raw(),
            };
            // SAFETY: as above; the entry is invalid now.
            unsafe { entry(ea) }.store(empty, Ordering::Release);
            match t.parent_level {
                Level::Segment => self.pte_free_now(t.child),
                _ => table::crst_free(t.child),
            }
        }
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

    // -- PGSTEs -----------------------------------------------------------------

    fn pgste_addr(&self, pte: PhysAddr) -> Option<PhysAddr> {
        self.pgste.then(|| PhysAddr(pte.0 + PTE_TABLE_SIZE))
    }

    /// Set the notify bit of the PGSTE of the PTE for `va` (which must
    /// exist): the next change of that PTE calls the pte_notify hook first.
    pub fn pgste_set_notify(&mut self, va: u64) -> Result<(), SpaceError> {
        let pte = self.pte_addr(va).ok_or(SpaceError::NotMapped)?;
        let pg = self.pgste_addr(pte).ok_or(SpaceError::NotMapped)?;
        // SAFETY: the PGSTE of a live whole-page table of this space.
        unsafe { entry(pg) }.fetch_or(PGSTE_IN_BIT, Ordering::AcqRel);
        Ok(())
    }

    /// Clear the notify bit of the PGSTE of the PTE for `va` (undoing
    /// `pgste_set_notify`); returns whether it was set.
    pub fn pgste_clear_notify(&mut self, va: u64) -> bool {
        let Some(pg) = self.pte_addr(va).and_then(|p| self.pgste_addr(p)) else {
            return false;
        };
        // SAFETY: the PGSTE of a live whole-page table of this space.
        unsafe { entry(pg) }.fetch_and(!PGSTE_IN_BIT, Ordering::AcqRel) & PGSTE_IN_BIT != 0
    }

    pub fn pgste_notify(&self, va: u64) -> bool {
        let Some(pg) = self.pte_addr(va).and_then(|p| self.pgste_addr(p)) else {
            return false;
        };
        // SAFETY: as above.
        unsafe { entry(pg) }.load(Ordering::Acquire) & PGSTE_IN_BIT != 0
    }

    /// Before the PTE at `pte` (for `va`) changes: if its PGSTE asks for it,
    /// clear the request and tell the gmaps (Linux ptep_notify).
    fn notify_before_change(&self, va: u64, pte: PhysAddr) {
        let Some(pg) = self.pgste_addr(pte) else {
            return;
        };
        // SAFETY: the PGSTE of a live whole-page table of this space.
        let old = unsafe { entry(pg) }.fetch_and(!PGSTE_IN_BIT, Ordering::AcqRel);
        if old & PGSTE_IN_BIT != 0 {
            if let Some(h) = HOOKS.get() {
                let _scope = HookScope::enter();
                (h.pte_notify)(self.id, va & !(PAGE_SIZE - 1));
            }
        }
    }

    /// Before the segment's PTE table is unlinked (and later freed).
    fn unlink_before_free(&self, va: u64, pto: PhysAddr) {
        if self.pgste {
            if let Some(h) = HOOKS.get() {
                let _scope = HookScope::enter();
                (h.table_unlink)(self.id, va & !(super::entry::SEGMENT_SIZE - 1), pto);
            }
        }
    }

    /// IPTE of the PTE for `va` in this space's page table `pto`, and, in
    /// a space whose page tables gmaps share, the same purge under every
    /// linked guest address (`tlb::ipte_guest_alias`).
    ///
    /// # Safety
    /// `pto` is this space's live page table for `va`, and the caller may
    /// change its entry for `va`.
    unsafe fn ipte(&self, pto: PhysAddr, va: u64) {
        // SAFETY: forwarded to the caller.
        unsafe { tlb::ipte(pto, va) };
        if self.pgste && tlb::IPTE_GUEST_ALIAS {
            if let Some(h) = HOOKS.get() {
                let _scope = HookScope::enter();
                (h.pte_alias_purge)(self.id, va & !(PAGE_SIZE - 1), pto);
            }
        }
    }

    /// Tell the gmaps that the segment entry for `va` is now `new`.
    fn segment_changed(&self, va: u64, new: SegmentEntry) {
        if self.pgste {
            if let Some(h) = HOOKS.get() {
                let _scope = HookScope::enter();
                (h.segment_change)(self.id, va & !(super::entry::SEGMENT_SIZE - 1), new);
            }
        }
    }

    // -- the operations -------------------------------------------------------

    /// Map the page at `va` to the frame at `pa`.
    pub fn map(&mut self, va: u64, pa: PhysAddr, prot: Prot) -> Result<(), SpaceError> {
        self.check_page(va)?;
        let pte = Pte::new(pa, prot)?;
        if self.pte(va).is_present() {
            return Err(SpaceError::AlreadyMapped);
        }
        let mut new = heapless_new::NewTables::new();
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
        let mut a = va;
        while a < end {
            if self.pte(a).is_present() {
                return Err(SpaceError::AlreadyMapped);
            }
            // Skip a whole missing page table at once.
            a = if self.pte_table(a).is_none() {
                (a | (super::entry::SEGMENT_SIZE - 1)).saturating_add(1)
            } else {
                a + PAGE_SIZE
            };
        }
        let old_asce = self.asce;
        let mut a = va;
        while a < end {
            if let Err(e) = self.map(a, PhysAddr(pa.0 + (a - va)), prot) {
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
            a += PAGE_SIZE;
        }
        Ok(())
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
        // SAFETY: `table` is the live segment table holding the entry.
        unsafe { tlb::idte(table, Level::Segment, va) };
        slot.store(new.raw(), Ordering::Release);
        // Linked gmap segments copied the old entry's bits: they change too.
        self.segment_changed(va, new);
        Ok(())
    }

    /// Replace the PTE for `va` with any value, invalidating the old one
    /// first (IPTE). For tests that need entries the API never builds
    /// (bit 52 set, say).
    ///
    /// # Safety
    /// The new entry may map any frame: the caller must not store through it
    /// into memory it does not own.
    pub unsafe fn replace_pte(&mut self, va: u64, pte: Pte) -> Result<(), SpaceError> {
        let (Some(pto), Some(pea)) = (self.pte_table(va), self.pte_addr(va)) else {
            return Err(SpaceError::NotMapped);
        };
        // SAFETY: `pto` is the live page table for `va`.
        unsafe { tlb::ipte(pto, va) };
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
    pub unsafe fn set_pte_without_invalidation(
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
    pub unsafe fn replace_segment_entry(
        &mut self,
        va: u64,
        e: SegmentEntry,
    ) -> Result<(), SpaceError> {
        let Some(ea) = self.segment_entry_addr(va) else {
            return Err(SpaceError::NotMapped);
        };
        let table = table::table_of_entry(ea);
        // SAFETY: `table` is the live segment table holding the entry.
        unsafe { tlb::idte(table, Level::Segment, va) };
        // SAFETY: an entry of a live table of this space.
        unsafe { entry(ea) }.store(e.raw(), Ordering::Release);
        Ok(())
    }

    /// Overwrite the region entry of `level` covering `va` (after IDTE),
    /// e.g. with an EDAT-2 large region-third entry.
    ///
    /// # Safety
    /// As `replace_segment_entry`.
    pub unsafe fn replace_region_entry(
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
        unsafe { tlb::idte(table, level, va) };
        // SAFETY: an entry of a live table of this space.
        unsafe { entry(ea) }.store(e.raw(), Ordering::Release);
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
        let mut g = tlb_gather_mmu(self.id);
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
                        if keep != Some(child) && table::crst_is_empty(child, lower) {
                            // SAFETY: `tbl` is this space's live table of `level`,
                            // held exclusively (`&mut self`).
                            let ea = unsafe { g.invalidate_entry(tbl, level, va) };
                            gather(g, child, GatheredTable::Crst(child, lower), ea);
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
                        if !table::pte_table_is_empty(pto) {
                            a = next;
                            continue;
                        }
                        self.unlink_before_free(va, pto);
                        // SAFETY: as above.
                        unsafe { g.invalidate_entry(tbl, Level::Segment, va) };
                    }
                    let kind = if self.pgste {
                        GatheredTable::PtePgste(pto)
                    } else {
                        GatheredTable::Pte(pto)
                    };
                    gather(g, pto, kind, ea);
                }
            }
            a = next;
        }
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
                        self.pte_free_now(s.page_table());
                    }
                }
            }
        }
        table::crst_free(tbl);
    }
}

/// Hand a table whose entry was just invalidated to the gather; a refusal
/// is a bug in this file (the table stays allocated, unreachable: leaked
/// rather than freed while a TLB might reach it), reported loudly.
fn gather(g: &mut MmuGather, table: PhysAddr, t: GatheredTable, parent: PhysAddr) {
    let r = match table::table_ptdesc(table) {
        // SAFETY: `parent` is the entry of this space's live table that
        // pointed at `table`, and the unmap holds the space exclusively.
        Some(pt) => unsafe { g.tlb_remove_table(pt, t, parent) },
        None => Err(super::gather::GatherError::NotPageTable),
    };
    if let Err(e) = r {
        super::dat_bug(format_args!("{t:?} refused by mmu_gather: {e:?}"));
    }
}

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
        let mut pa = self.frag_list;
        let mut n = 0;
        while pa != 0 {
            let pt = Self::frag_link(pa).ok_or(SpaceCheckError::FragList(PhysAddr(pa)))?;
            if pt.frag_count() != 1 || n > st.pte_pages {
                return Err(SpaceCheckError::FragList(PhysAddr(pa)));
            }
            n += 1;
            // SAFETY: atomics-only union.
            pa = unsafe { pt.pt_list_or_pad.pt_list.next.load(Ordering::Relaxed) };
        }
        if !self.pgste && n != with_one {
            return Err(SpaceCheckError::FragList(PhysAddr(self.frag_list)));
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
        for i in 0..super::entry::CRST_ENTRIES as u64 {
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

impl Drop for AddressSpace {
    fn drop(&mut self) {
        // Whoever loaded the ASCE has unloaded it; purge what any TLB may
        // still hold of it before its tables go back.
        tlb::flush_asce(self.asce);
        let (top, level) = (self.asce.origin(), self.asce.level());
        self.free_level(top, level, 0);
    }
}

/// A fixed-capacity list of tables allocated by one operation (at most one
/// per level), without the heap.
mod heapless_new {
    use super::NewTable;

    pub struct NewTables {
        items: [Option<NewTable>; 4],
        len: usize,
    }

    impl NewTables {
        pub fn new() -> Self {
            NewTables {
                items: [None; 4],
                len: 0,
            }
        }

        pub fn push(&mut self, t: NewTable) {
            if self.len < self.items.len() {
                self.items[self.len] = Some(t);
                self.len += 1;
            }
        }

        pub fn pop(&mut self) -> Option<NewTable> {
            if self.len == 0 {
                return None;
            }
            self.len -= 1;
            self.items[self.len].take()
        }
    }
}
