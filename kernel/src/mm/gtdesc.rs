//! The gmap table descriptor: a `struct page` overlay of its own for gmap
//! region and segment tables, distinct from `PtDesc` (process page tables),
//! as the seed discussion (`_pt_s390_gaddr`) concluded. It records the
//! guest address the table starts at (the seed's `_pt_s390_gaddr`,
//! aliasing `mapping`), the owning gmap and the table's level. mm owns the
//! type change (ctor and dtor here); what the entries mean is
//! `gmap::table`'s business.
//!
//! Linux: the ptdesc overlay of include/linux/mm_types.h, for the tables of arch/s390/mm/gmap.c.

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::frame::{sealed, Frame};
use super::page::{self, Page, PageType};
use super::{FreeError, Pages};

/// `struct gmap_table` (zdat's answer to "a distinct type for shadow and
/// auxiliary tables"). Fields private: read through the accessors; only
/// the ctor writes them.
#[repr(C)]
pub struct GmapTableDesc {
    __page_flags: AtomicU64,
    /// Aliases `compound_head`: bit 0 must stay clear.
    _gt_pad_1: AtomicU64,
    _gt_pad_2: AtomicU64,
    /// Guest address the table starts at; aliases `mapping`, so the dtor
    /// clears it before the table is freed ("ensure it's set to NULL").
    _gt_s390_gaddr: AtomicU64,
    /// The owning gmap's id.
    gt_gmap: AtomicU64,
    /// The table's level (raw: `gmap::table` knows the encoding).
    gt_level: AtomicU64,
    __page_type: AtomicU32,
    __page_refcount: AtomicU32,
    _gt_spare: AtomicU64,
}

// TABLE_MATCH against struct page, like PtDesc's.
const _: () = assert!(offset_of!(GmapTableDesc, __page_flags) == page::FLAGS_OFFSET);
const _: () = assert!(offset_of!(GmapTableDesc, _gt_pad_1) == page::LRU_OFFSET);
const _: () = assert!(offset_of!(GmapTableDesc, _gt_s390_gaddr) == page::MAPPING_OFFSET);
const _: () = assert!(offset_of!(GmapTableDesc, gt_gmap) == page::INDEX_OFFSET);
const _: () = assert!(offset_of!(GmapTableDesc, gt_level) == page::PRIVATE_OFFSET);
const _: () = assert!(offset_of!(GmapTableDesc, __page_type) == page::PAGE_TYPE_OFFSET);
const _: () = assert!(offset_of!(GmapTableDesc, __page_refcount) == page::REFCOUNT_OFFSET);
const _: () = assert!(offset_of!(GmapTableDesc, _gt_spare) == page::SPARE_OFFSET);
const _: () = assert!(size_of::<GmapTableDesc>() == size_of::<Page>());

/// Order of a gmap table block (16 KiB, a CRST table).
pub const GMAP_TABLE_ORDER: u32 = 2;

static NR_GMAP_TABLES: AtomicU64 = AtomicU64::new(0);

/// Gmap table pages in use.
pub fn nr_gmap_table_pages() -> u64 {
    NR_GMAP_TABLES.load(Ordering::Relaxed)
}

/// Why a gmap descriptor cast, ctor or dtor was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GtDescError {
    /// The page is not a gmap table (its type tag says what it is).
    NotGmapTable(Option<PageType>),
    /// A ctor on a block that is not a plain allocated block (its type),
    /// or that another reference or a `mapping` still holds.
    NotAllocated(Option<PageType>),
    /// A ctor on a block that is not order 2 (its order).
    WrongOrder(u32),
    /// The allocator refused the free (it printed why).
    Free(FreeError),
}

/// The gmap-table view of a page, refused unless it is tagged GmapTable (a
/// process page table is refused too).
pub fn page_gmap_table(page: &Page) -> Result<&GmapTableDesc, GtDescError> {
    if !page.has_type(PageType::GmapTable) {
        return Err(GtDescError::NotGmapTable(page.page_type()));
    }
    // SAFETY: a repr(C) overlay of Page made only of atomics (asserted
    // above); the type was checked.
    Ok(unsafe { &*(page as *const Page as *const GmapTableDesc) })
}

/// The page a gmap table descriptor overlays.
pub fn gmap_table_page(t: &GmapTableDesc) -> &Page {
    // SAFETY: the inverse overlay; a GmapTableDesc exists only as a view
    // of a memmap page (its fields are private).
    unsafe { &*(t as *const GmapTableDesc as *const Page) }
}

impl GmapTableDesc {
    /// The guest address the table starts at (`_pt_s390_gaddr`).
    pub fn gaddr(&self) -> u64 {
        self._gt_s390_gaddr.load(Ordering::Relaxed)
    }

    /// The owning gmap's id.
    pub fn owner(&self) -> u64 {
        self.gt_gmap.load(Ordering::Relaxed)
    }

    /// The level as the ctor recorded it (raw).
    pub fn raw_level(&self) -> u64 {
        self.gt_level.load(Ordering::Relaxed)
    }

    pub fn phys(&self) -> super::addr::PhysAddr {
        let page = gmap_table_page(self);
        super::page_to_pfn(page).map_or(super::addr::PhysAddr(0), |pfn| {
            super::addr::PhysAddr(pfn.0 * super::addr::PAGE_SIZE)
        })
    }
}

impl core::fmt::Debug for GmapTableDesc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "GmapTableDesc({:#x}, gaddr {:#x}, gmap {})",
            self.phys().0,
            self.gaddr(),
            self.owner()
        )
    }
}

// SAFETY: GmapTableDesc is a repr(C) atomics-only overlay of Page
// (TABLE_MATCH asserts above).
unsafe impl sealed::Desc for GmapTableDesc {
    const TYPE: PageType = PageType::GmapTable;
    const ORDER: Option<u32> = Some(GMAP_TABLE_ORDER);
    fn release(page: &'static Page) {
        // A refusal was reported (by the allocator or here); the table
        // stays allocated, owned by nobody.
        if let Err((f, e)) = gmap_table_free(Frame::from_head(page)) {
            let _ = f.into_head();
            if !matches!(e, GtDescError::Free(_)) {
                crate::bug::report(
                    "mm",
                    format_args!("gmap table {page:p} dropped, dtor refused: {e:?}"),
                );
            }
        }
    }
}

/// The gmap table ctor: `p` (order 2, plain allocated) becomes a gmap
/// table of gmap `owner`, level `level` (raw), starting at guest address
/// `gaddr`.
pub fn gmap_table_ctor(
    p: Pages,
    owner: u64,
    level: u64,
    gaddr: u64,
) -> Result<Frame<GmapTableDesc>, (Pages, GtDescError)> {
    let page = p.head();
    if !page.has_type(PageType::Allocated) || page.refcount() != 1 || page.mapping() != 0 {
        return Err((p, GtDescError::NotAllocated(page.page_type())));
    }
    if p.order() != GMAP_TABLE_ORDER {
        let o = p.order();
        return Err((p, GtDescError::WrongOrder(o)));
    }
    let page = p.into_head();
    page.clear_union();
    page.set_page_type(PageType::GmapTable);
    let f = Frame::<GmapTableDesc>::from_head(page);
    f._gt_s390_gaddr.store(gaddr, Ordering::Relaxed);
    f.gt_gmap.store(owner, Ordering::Relaxed);
    f.gt_level.store(level, Ordering::Relaxed);
    NR_GMAP_TABLES.fetch_add(1 << GMAP_TABLE_ORDER, Ordering::Relaxed);
    Ok(f)
}

/// The gmap table dtor: clear the gaddr (it aliases `mapping`), drop the
/// tag; the pages come back for `free_pages`. Refused (frame unchanged) if
/// the page is not tagged GmapTable any more.
pub fn gmap_table_dtor(
    t: Frame<GmapTableDesc>,
) -> Result<Pages, (Frame<GmapTableDesc>, GtDescError)> {
    let page = t.head();
    if !page.has_type(PageType::GmapTable) {
        return Err((t, GtDescError::NotGmapTable(page.page_type())));
    }
    let page = t.into_head();
    NR_GMAP_TABLES.fetch_sub(1 << GMAP_TABLE_ORDER, Ordering::Relaxed);
    page.clear_union();
    page.set_page_type(PageType::Allocated);
    Ok(Pages::from_head(page, GMAP_TABLE_ORDER))
}

/// The dtor, then the allocator. A refusal (the allocator's, which it
/// reports) gives the table back exactly as it was.
pub fn gmap_table_free(t: Frame<GmapTableDesc>) -> Result<(), (Frame<GmapTableDesc>, GtDescError)> {
    let saved = (t.gaddr(), t.owner(), t.raw_level());
    let p = gmap_table_dtor(t)?;
    match super::free_pages(p) {
        Ok(()) => Ok(()),
        Err((p, e)) => {
            let page = p.into_head();
            page.set_page_type(PageType::GmapTable);
            NR_GMAP_TABLES.fetch_add(1 << GMAP_TABLE_ORDER, Ordering::Relaxed);
            let f = Frame::<GmapTableDesc>::from_head(page);
            f._gt_s390_gaddr.store(saved.0, Ordering::Relaxed);
            f.gt_gmap.store(saved.1, Ordering::Relaxed);
            f.gt_level.store(saved.2, Ordering::Relaxed);
            Err((f, GtDescError::Free(e)))
        }
    }
}

/// Free without clearing the gaddr first: what the seed patch warns about.
/// The buddy allocator's non-NULL-mapping check refuses it (unless the
/// table starts at guest address 0), and the table comes back unchanged.
/// For the test that shows it.
#[cfg(target_os = "none")]
pub(crate) fn gmap_table_free_keeping_gaddr(
    t: Frame<GmapTableDesc>,
) -> Result<(), (Frame<GmapTableDesc>, GtDescError)> {
    let page = t.into_head();
    page.set_page_type(PageType::Allocated);
    match super::free_pages(Pages::from_head(page, GMAP_TABLE_ORDER)) {
        Ok(()) => {
            NR_GMAP_TABLES.fetch_sub(1 << GMAP_TABLE_ORDER, Ordering::Relaxed);
            Ok(())
        }
        Err((p, e)) => {
            let page = p.into_head();
            page.set_page_type(PageType::GmapTable);
            Err((Frame::from_head(page), GtDescError::Free(e)))
        }
    }
}
