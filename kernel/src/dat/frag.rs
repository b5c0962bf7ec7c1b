//! PTE tables and the 2 KiB fragment allocator (Linux's `page_table_alloc`
//! and `page_table_free` in arch/s390/mm/pgalloc.c before 6.9, with
//! `mm->context.pgtable_list`): a PTE table is 256 entries, 2 KiB, so a
//! page holds two, tracked in the page's `pt_frag_refcount`; a space keeps
//! the pages with a free half on a list linked through `pt_list`. A space
//! whose PTE tables gmaps share uses whole pages: PTEs in the lower half,
//! PGSTEs in the upper.
//!
//! A `PteTable` is an owned fragment (or whole PGSTE page). The page
//! itself is owned jointly by its fragments in use and, while a half is
//! free, by the space's list: it is freed when the last of them lets go.
//! Dropping a `PteTable` without its allocator gives the half back too,
//! without the list: the page is freed if nothing else holds it, and a
//! page still on the list with no half in use stays there until the list
//! reuses or frees it.

use core::sync::atomic::{AtomicU64, Ordering};

use super::entry::{Pte, PTRS_PER_PTE};
use super::table::{self, PTE_TABLE_SIZE};
use crate::mm::addr::{PhysAddr, PAGE_SIZE};
use crate::mm::frame::Frame;
use crate::mm::ptdesc::{self, PtDesc};
use crate::mm::{self, AllocError};

/// Why `PteTable::from_raw` refused an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragError {
    /// Not 2 KiB aligned, or the upper half of a PGSTE page.
    Misaligned,
    /// The page is not a process page table of order 0.
    NotPteTable,
    /// The half is not in use (freed already).
    NotInUse,
}

/// An owned PTE table: a 2 KiB half of a page, or a whole page with PGSTEs.
pub struct PteTable {
    pa: PhysAddr,
    pgste: bool,
    /// The `FragAlloc` it came from (0: taken back with `from_raw`, whose
    /// caller vouches for where it goes).
    owner: u64,
}

impl PteTable {
    /// Real address of the table (of its PTEs; PGSTEs follow at +2 KiB).
    pub fn phys(&self) -> PhysAddr {
        self.pa
    }

    /// The descriptor of the page holding the table (`None` only if the
    /// memmap was corrupted under the handle).
    pub fn ptdesc(&self) -> Option<&PtDesc> {
        table::table_ptdesc(self.pa)
    }

    /// The table's 256 PTEs, borrowed from the handle.
    pub fn entries(&self) -> &[AtomicU64] {
        let ptr = mm::memmap()
            .frame_ptr(self.pa.pfn())
            .wrapping_add(self.pa.page_offset() as usize) as *const AtomicU64;
        // SAFETY: the handle owns these 2 KiB (256 8-aligned words) for as
        // long as it is borrowed.
        unsafe { core::slice::from_raw_parts(ptr, PTRS_PER_PTE) }
    }

    /// The PGSTEs of a whole-page table (empty otherwise).
    pub fn pgstes(&self) -> &[AtomicU64] {
        if !self.pgste {
            return &[];
        }
        let ptr = mm::memmap()
            .frame_ptr(self.pa.pfn())
            .wrapping_add(PTE_TABLE_SIZE as usize) as *const AtomicU64;
        // SAFETY: the upper half of the page this handle owns whole.
        unsafe { core::slice::from_raw_parts(ptr, PTRS_PER_PTE) }
    }

    /// Give up the handle: the table is being linked into a segment entry,
    /// which owns it from now on.
    pub fn into_raw(self) -> PhysAddr {
        let pa = self.pa;
        core::mem::forget(self);
        pa
    }

    /// Take back the PTE table at `pa`, checking that its page is a page
    /// table of order 0 with that half in use (both, for a PGSTE table).
    ///
    /// # Safety
    /// No segment entry the hardware may use points at it any more, no
    /// other handle for it exists, and it goes back only to the space (the
    /// fragment allocator) it came from: the handle does not know which
    /// that is, so the allocator cannot check.
    pub unsafe fn from_raw(pa: PhysAddr, pgste: bool) -> Result<Self, FragError> {
        let half_ok = if pgste {
            pa.is_aligned(PAGE_SIZE)
        } else {
            pa.is_aligned(PTE_TABLE_SIZE)
        };
        if !half_ok {
            return Err(FragError::Misaligned);
        }
        let pt = table::table_ptdesc(pa).ok_or(FragError::NotPteTable)?;
        if pt.order() != 0 {
            return Err(FragError::NotPteTable);
        }
        let want = if pgste { 3 } else { 1 << half_of(pa) };
        if pt.frag_halves() & want != want {
            return Err(FragError::NotInUse);
        }
        Ok(Self {
            pa,
            pgste,
            owner: 0,
        })
    }

    fn page(&self) -> PhysAddr {
        self.pa.align_down(PAGE_SIZE)
    }
}

impl core::fmt::Debug for PteTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PteTable({:#x}, pgste {})", self.pa.0, self.pgste)
    }
}

fn half_of(pa: PhysAddr) -> u32 {
    ((pa.0 >> 11) & 1) as u32
}

/// Give the page at `page` (whose halves are all free and which is on no
/// list) back: dtor and allocator.
fn free_page(page: PhysAddr) {
    // SAFETY: no half is in use and no list holds the page: nothing else
    // owns it, and no entry points at either half.
    match unsafe { Frame::<PtDesc>::from_raw(page) } {
        Ok(f) => ptdesc::pagetable_dtor_free(f),
        Err(e) => super::dat_bug(format_args!("PTE page {page:?} not freed: {e:?}")),
    }
}

impl PteTable {
    /// The table's part of giving it back, with or without its allocator:
    /// poison it and mark its half (both, for a PGSTE table) free in its
    /// page. Returns the page's descriptor and the halves still in use
    /// (`None`: the half was free already), or `None` (reported) if the
    /// page is no page table.
    fn put(&self) -> Option<(&'static PtDesc, Option<u32>)> {
        // SAFETY: the handle owns the table and nothing reaches it.
        unsafe { table::poison_pte_table(self.pa) };
        let Some(pt) = table::table_ptdesc(self.pa) else {
            super::dat_bug(format_args!(
                "{self:?} given back: its page is no page table"
            ));
            return None;
        };
        let left = if self.pgste {
            pt.frag_put(1).and(pt.frag_put(0))
        } else {
            pt.frag_put(half_of(self.pa))
        };
        Some((pt, left))
    }
}

impl Drop for PteTable {
    /// Without the allocator: give the half back; free the page if nothing
    /// else holds it (see the module comment).
    fn drop(&mut self) {
        let Some((pt, left)) = self.put() else {
            return;
        };
        match left {
            Some(0) if !pt.frag_listed() => free_page(self.page()),
            Some(_) => {}
            None => super::dat_bug(format_args!("{self:?} dropped, but it was free already")),
        }
    }
}

/// A space's PTE table allocator: the list of pages with a free half.
/// Crate-internal: each space has its own, and a table goes back only to
/// the allocator it came from.
pub(crate) struct FragAlloc {
    id: u64,
    /// Pages with a free half, by real address; 0 ends the list.
    list: u64,
    /// Whole pages with PGSTEs (no fragments, no list).
    pgste: bool,
}

static NEXT_ALLOC: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

impl FragAlloc {
    pub fn new(pgste: bool) -> Self {
        Self {
            id: NEXT_ALLOC.fetch_add(1, Ordering::Relaxed),
            list: 0,
            pgste,
        }
    }

    fn desc(pa: u64) -> Option<&'static PtDesc> {
        (pa != 0)
            .then(|| table::table_ptdesc(PhysAddr(pa)))
            .flatten()
    }

    fn list_add(&mut self, page: PhysAddr) {
        let Some(pt) = Self::desc(page.0) else {
            return;
        };
        pt.set_pt_list(self.list, 0);
        if let Some(n) = Self::desc(self.list) {
            n.set_pt_list_prev(page.0);
        }
        pt.set_frag_listed(true);
        self.list = page.0;
    }

    fn list_del(&mut self, page: PhysAddr) {
        let Some(pt) = Self::desc(page.0).filter(|p| p.frag_listed()) else {
            return;
        };
        let (next, prev) = (pt.pt_list_next(), pt.pt_list_prev());
        if prev == 0 {
            self.list = next;
        } else if let Some(p) = Self::desc(prev) {
            p.set_pt_list_next(next);
        }
        if let Some(n) = Self::desc(next) {
            n.set_pt_list_prev(prev);
        }
        pt.set_pt_list(0, 0);
        pt.set_frag_listed(false);
    }

    /// The pages on the free-half list (real addresses), in list order.
    pub fn listed(&self) -> impl Iterator<Item = PhysAddr> + '_ {
        let mut pa = self.list;
        core::iter::from_fn(move || {
            let cur = pa;
            pa = Self::desc(cur)?.pt_list_next();
            Some(PhysAddr(cur))
        })
    }

    /// Pages on the list of pages with a free half.
    pub fn list_len(&self) -> usize {
        self.listed().count()
    }

    /// `page_table_alloc`: a fresh, empty PTE table: the free half of a
    /// page on the list, or a new page (whole, with PGSTEs, for a pgste
    /// space).
    pub fn page_table_alloc(&mut self) -> Result<PteTable, AllocError> {
        let t = self.page_table_alloc_uninit()?;
        init(&t);
        Ok(t)
    }

    /// A fresh PTE table already filled for a range (map_range's bulk
    /// path): PTEs `first..first + n` are `raw0`, `raw0 + 4096`, ... and
    /// every other entry is empty, written in one pass, so the table is
    /// complete before its segment entry is linked.
    pub(crate) fn page_table_alloc_filled(
        &mut self,
        first: usize,
        n: usize,
        raw0: u64,
    ) -> Result<PteTable, AllocError> {
        let t = self.page_table_alloc_uninit()?;
        let e = t.entries();
        let end = (first + n).min(e.len());
        let first = first.min(end);
        for p in &e[..first] {
            p.store(Pte::empty().raw(), Ordering::Relaxed);
        }
        let mut raw = raw0;
        for p in &e[first..end] {
            p.store(raw, Ordering::Relaxed);
            raw += mm::addr::PAGE_SIZE;
        }
        for p in &e[end..] {
            p.store(Pte::empty().raw(), Ordering::Relaxed);
        }
        for p in t.pgstes() {
            p.store(0, Ordering::Relaxed);
        }
        Ok(t)
    }

    /// A table whose entries the caller fills before anything sees it.
    fn page_table_alloc_uninit(&mut self) -> Result<PteTable, AllocError> {
        if !self.pgste && self.list != 0 {
            let page = PhysAddr(self.list);
            let pt = Self::desc(page.0).ok_or(AllocError::NoMemory)?;
            let half = if pt.frag_halves() & 1 == 0 { 0 } else { 1 };
            if !pt.frag_get(half) {
                return Err(AllocError::NoMemory);
            }
            if pt.frag_count() == 2 {
                self.list_del(page);
            }
            let t = PteTable {
                pa: PhysAddr(page.0 + half as u64 * PTE_TABLE_SIZE),
                pgste: false,
                owner: self.id,
            };
            return Ok(t);
        }
        let p = ptdesc::pagetable_alloc(0)?;
        // A fresh block always passes the ctor; the pages go back if not.
        let f = ptdesc::pagetable_pte_ctor(p).map_err(|_| AllocError::NoMemory)?;
        f.frag_get(0);
        if self.pgste {
            // A whole page: both halves are this table (PTEs, then PGSTEs).
            f.frag_get(1);
        }
        // The page is owned by its fragments (and the list) from here.
        let page = f.into_raw();
        let t = PteTable {
            pa: page,
            pgste: self.pgste,
            owner: self.id,
        };
        if !self.pgste {
            self.list_add(page);
        }
        Ok(t)
    }

    /// `page_table_free`: the table goes back; its page goes on the list
    /// when the other half is in use, and back to the allocator when not.
    /// Only once no TLB can reach the table (mmu_gather, or after the
    /// segment entry was invalidated): taking the handle is that proof.
    pub fn page_table_free(&mut self, t: PteTable) {
        if t.pgste != self.pgste || (t.owner != 0 && t.owner != self.id) {
            super::dat_bug(format_args!(
                "{t:?} of allocator {} freed into allocator {} (pgste {}): not freed",
                t.owner, self.id, self.pgste
            ));
            let _ = t.into_raw();
            return;
        }
        let page = t.page();
        let put = t.put();
        // Given back above (or kept, reported, if its page is no page
        // table): the handle's own Drop must not do it again.
        core::mem::forget(t);
        let Some((pt, left)) = put else {
            return;
        };
        match left {
            // The other half is still used: the page has room again.
            Some(1) if !self.pgste => {
                if !pt.frag_listed() {
                    self.list_add(page);
                }
            }
            Some(0) => {
                self.list_del(page);
                free_page(page);
            }
            r => super::dat_bug(format_args!("PTE table in {page:?} freed twice ({r:?})")),
        }
    }

    /// Teardown: free pages the list still holds with no half in use (left
    /// by a `PteTable` dropped without its allocator).
    pub fn release_unused(&mut self) {
        let mut pa = self.list;
        while let Some(pt) = Self::desc(pa) {
            let next = pt.pt_list_next();
            if pt.frag_count() == 0 {
                self.list_del(PhysAddr(pa));
                free_page(PhysAddr(pa));
            }
            pa = next;
        }
    }
}

impl Drop for FragAlloc {
    /// Pages still listed: taken off the list; one with no half in use goes
    /// back (one with a half in use goes back with that half's table).
    fn drop(&mut self) {
        while self.list != 0 {
            let page = PhysAddr(self.list);
            let Some(pt) = Self::desc(page.0).filter(|p| p.frag_listed()) else {
                super::dat_bug(format_args!("free-half list names {page:?}, not listed"));
                return;
            };
            self.list_del(page);
            if pt.frag_count() == 0 {
                free_page(page);
            }
        }
    }
}

/// Fill a fresh table with empty entries (and zero PGSTEs).
fn init(t: &PteTable) {
    for e in t.entries() {
        e.store(Pte::empty().raw(), Ordering::Relaxed);
    }
    for e in t.pgstes() {
        e.store(0, Ordering::Relaxed);
    }
}
