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
#[cfg(not(feature = "memdesc"))]
use core::sync::atomic::AtomicU32;
use core::sync::atomic::{AtomicU64, Ordering};

use super::frame::{sealed, Frame};
use super::page::{self, Page, PageType};
use super::{FreeError, Pages};

/// `struct gmap_table` (zdat's answer to "a distinct type for shadow and
/// auxiliary tables"), overlay layout: a view of the page's 64 bytes.
/// Fields private: read through the accessors; only the ctor writes them.
#[cfg(not(feature = "memdesc"))]
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
    /// `GT_SHADOW`, `GT_FAKE` (aliases the spare word).
    gt_flags: AtomicU64,
}

// TABLE_MATCH against struct page, like PtDesc's.
#[cfg(not(feature = "memdesc"))]
const _: () = {
    assert!(offset_of!(GmapTableDesc, __page_flags) == page::FLAGS_OFFSET);
    assert!(offset_of!(GmapTableDesc, _gt_pad_1) == page::LRU_OFFSET);
    assert!(offset_of!(GmapTableDesc, _gt_s390_gaddr) == page::MAPPING_OFFSET);
    assert!(offset_of!(GmapTableDesc, gt_gmap) == page::INDEX_OFFSET);
    assert!(offset_of!(GmapTableDesc, gt_level) == page::PRIVATE_OFFSET);
    assert!(offset_of!(GmapTableDesc, __page_type) == page::PAGE_TYPE_OFFSET);
    assert!(offset_of!(GmapTableDesc, __page_refcount) == page::REFCOUNT_OFFSET);
    assert!(offset_of!(GmapTableDesc, gt_flags) == page::SPARE_OFFSET);
    assert!(size_of::<GmapTableDesc>() == size_of::<Page>());
};

/// The gmap table descriptor, memdesc layout: its own 48-byte object from
/// `desc::GTDESC_CACHE`, pointed to by the page's word. `_gt_s390_gaddr`
/// aliases nothing here: a free that skips the dtor is refused because the
/// page still says GmapTable, not because of a stale `mapping`.
#[cfg(feature = "memdesc")]
#[repr(C, align(16))]
pub struct GmapTableDesc {
    md: page::MemdescHead,
    /// Guest address the table starts at (`_pt_s390_gaddr`).
    _gt_s390_gaddr: AtomicU64,
    /// The owning gmap's id.
    gt_gmap: AtomicU64,
    /// The table's level (raw: `gmap::table` knows the encoding).
    gt_level: AtomicU64,
    /// `GT_SHADOW`, `GT_FAKE`.
    gt_flags: AtomicU64,
}

#[cfg(feature = "memdesc")]
const _: () = {
    assert!(core::mem::align_of::<GmapTableDesc>() == super::desc::DESC_ALIGN);
    assert!(offset_of!(GmapTableDesc, md) == 0);
    assert!(size_of::<GmapTableDesc>() == 48);
};

/// Order of a gmap table block (16 KiB, a CRST table).
pub const GMAP_TABLE_ORDER: u32 = 2;

/// The raw level of a shadow page table (vSIE): a 2 KiB PTE table in an
/// order-0 block, as Linux's `gmap_shadow_pgt` takes a 4 KiB page (PTEs
/// and PGSTEs) from `page_table_alloc_pgste`. CRST levels are 0..=3.
pub const GMAP_PTE_LEVEL: u64 = 4;

/// Flag: a table of a shadow gmap (vSIE); its gaddr is the guest-1
/// address of the guest-2 table it shadows (`_pt_s390_gaddr`'s role).
pub const GT_SHADOW: u64 = 1;
/// Flag: a shadow table that shadows no guest-2 table (a real-space ASCE,
/// or a large guest-2 frame split into pages): its gaddr is the guest-1
/// address it starts mapping (Linux `GMAP_SHADOW_FAKE_TABLE`).
pub const GT_FAKE: u64 = 2;

/// The block order of a gmap table of raw level `level`.
pub const fn gmap_table_order(level: u64) -> u32 {
    if level == GMAP_PTE_LEVEL {
        0
    } else {
        GMAP_TABLE_ORDER
    }
}

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
    /// A ctor on a block whose order is not its level's (2 for a CRST
    /// table, 0 for a shadow page table): its order. Also a level or flags
    /// value no table has.
    WrongOrder(u32),
    /// The allocator refused the free (it printed why).
    Free(FreeError),
    /// memdesc: no descriptor could be allocated (the ctor changed nothing).
    NoDescriptor,
    /// memdesc: the page's descriptor does not name the page back.
    BadDescriptor,
}

/// The gmap-table view of a page, refused unless it is tagged GmapTable (a
/// process page table is refused too).
pub fn page_gmap_table(page: &Page) -> Result<&GmapTableDesc, GtDescError> {
    if !page.has_type(PageType::GmapTable) {
        return Err(GtDescError::NotGmapTable(page.page_type()));
    }
    let t = desc_of(page).ok_or(GtDescError::BadDescriptor)?;
    #[cfg(feature = "memdesc")]
    if t.md.page_addr() != core::ptr::from_ref(page).addr() as u64 {
        return Err(GtDescError::BadDescriptor);
    }
    Ok(t)
}

/// The descriptor of a page typed GmapTable (type checked by the caller).
#[cfg(not(feature = "memdesc"))]
fn desc_of(page: &Page) -> Option<&GmapTableDesc> {
    // SAFETY: a repr(C) overlay of Page made only of atomics (asserted
    // above); the caller checked the type.
    Some(unsafe { &*(page as *const Page as *const GmapTableDesc) })
}

#[cfg(feature = "memdesc")]
fn desc_of(page: &Page) -> Option<&GmapTableDesc> {
    let p = page.desc_ptr(PageType::GmapTable)?;
    // SAFETY: a GmapTable word points at a live descriptor from
    // GTDESC_CACHE (stored by the ctor only; the dtor retypes the page
    // before freeing it); atomics only.
    Some(unsafe { &*p.cast::<GmapTableDesc>() })
}

/// The page a gmap table descriptor describes.
pub fn gmap_table_page(t: &GmapTableDesc) -> &Page {
    #[cfg(not(feature = "memdesc"))]
    // SAFETY: the inverse overlay; a GmapTableDesc exists only as a view
    // of a memmap page (its fields are private).
    return unsafe { &*(t as *const GmapTableDesc as *const Page) };
    #[cfg(feature = "memdesc")]
    {
        let p: *const Page = core::ptr::with_exposed_provenance(t.md.page_addr() as usize);
        // SAFETY: the back-pointer the ctor set (an exposed memmap entry);
        // the descriptor lives only while that page is a gmap table.
        unsafe { &*p }
    }
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

    /// `GT_SHADOW`, `GT_FAKE` as the ctor recorded them.
    pub fn flags(&self) -> u64 {
        self.gt_flags.load(Ordering::Relaxed)
    }

    /// A table of a shadow gmap.
    pub fn is_shadow(&self) -> bool {
        self.flags() & GT_SHADOW != 0
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

// SAFETY: overlay: a repr(C) atomics-only overlay of Page (TABLE_MATCH
// asserts above); memdesc: `of_page` follows a GmapTable word to its live
// descriptor.
unsafe impl sealed::Desc for GmapTableDesc {
    const TYPE: PageType = PageType::GmapTable;
    // Order 2 for a CRST table, 0 for a shadow page table.
    const ORDER: Option<u32> = None;
    fn of_page(page: &Page) -> &Self {
        desc_of(page).unwrap_or_else(|| unreachable!("a GmapTable frame without its descriptor"))
    }
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
    gmap_table_ctor_flags(p, owner, level, gaddr, 0)
}

/// `gmap_table_ctor` with flags (`GT_SHADOW`, `GT_FAKE`): a shadow gmap's
/// tables. Level `GMAP_PTE_LEVEL` (a shadow page table) takes an order-0
/// block and is for shadows only; CRST levels take order 2.
pub fn gmap_table_ctor_flags(
    p: Pages,
    owner: u64,
    level: u64,
    gaddr: u64,
    flags: u64,
) -> Result<Frame<GmapTableDesc>, (Pages, GtDescError)> {
    let page = p.head();
    if !page.has_type(PageType::Allocated) || page.refcount() != 1 || page.mapping() != 0 {
        return Err((p, GtDescError::NotAllocated(page.page_type())));
    }
    let bad_level = level > GMAP_PTE_LEVEL
        || flags & !(GT_SHADOW | GT_FAKE) != 0
        || (flags & GT_FAKE != 0 && flags & GT_SHADOW == 0)
        || (level == GMAP_PTE_LEVEL && flags & GT_SHADOW == 0);
    if bad_level || p.order() != gmap_table_order(level) {
        let o = p.order();
        return Err((p, GtDescError::WrongOrder(o)));
    }
    let order = p.order();
    let f = retype(p)?;
    f._gt_s390_gaddr.store(gaddr, Ordering::Relaxed);
    f.gt_gmap.store(owner, Ordering::Relaxed);
    f.gt_level.store(level, Ordering::Relaxed);
    f.gt_flags.store(flags, Ordering::Relaxed);
    NR_GMAP_TABLES.fetch_add(1 << order, Ordering::Relaxed);
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
    #[cfg(feature = "memdesc")]
    if page_gmap_table(page).is_err() {
        return Err((t, GtDescError::BadDescriptor));
    }
    let order = t.order();
    let page = t.into_head();
    NR_GMAP_TABLES.fetch_sub(1 << order, Ordering::Relaxed);
    #[cfg(not(feature = "memdesc"))]
    unretype(page);
    #[cfg(feature = "memdesc")]
    free_desc(unretype(page));
    Ok(Pages::from_head(page, order))
}

/// The ctor's retyping: the block becomes a gmap table (memdesc: with a
/// fresh descriptor; `NoDescriptor` hands the block back unchanged).
fn retype(p: Pages) -> Result<Frame<GmapTableDesc>, (Pages, GtDescError)> {
    #[cfg(not(feature = "memdesc"))]
    {
        let page = p.into_head();
        page.clear_union();
        page.set_page_type(PageType::GmapTable);
        Ok(Frame::from_head(page))
    }
    #[cfg(feature = "memdesc")]
    {
        let Ok(d) = super::desc::GTDESC_CACHE.alloc() else {
            return Err((p, GtDescError::NoDescriptor));
        };
        let page = p.into_head();
        // SAFETY: a 16-byte aligned object of the descriptor's size from
        // its cache, allocated to us; atomics only, valid for any contents
        // (a stale view may read it; the back-pointer is written before
        // the page points at it).
        let t = unsafe { &*d.as_ptr().cast::<GmapTableDesc>() };
        t.md.init(page);
        t.gt_flags.store(0, Ordering::Relaxed);
        page.set_desc(PageType::GmapTable, d.as_ptr());
        Ok(Frame::from_head(page))
    }
}

/// The dtor's retyping: the page is a plain allocated block again; the
/// descriptor (memdesc) is returned for the caller to free, or to put
/// back if the free is refused.
#[cfg(not(feature = "memdesc"))]
fn unretype(page: &Page) {
    page.clear_union();
    page.set_page_type(PageType::Allocated);
}

#[cfg(feature = "memdesc")]
fn unretype(page: &Page) -> *const u8 {
    // The callers checked the page is a gmap table with its descriptor.
    page.detach_desc(PageType::GmapTable).unwrap_or_default()
}

#[cfg(feature = "memdesc")]
fn free_desc(d: *const u8) {
    if let Some(d) = core::ptr::NonNull::new(d.cast_mut()) {
        // SAFETY: the descriptor came from GTDESC_CACHE in the ctor and the
        // page no longer points at it.
        unsafe { super::desc::GTDESC_CACHE.free(d) };
    }
}

/// The dtor, then the allocator. A refusal (the allocator's, which it
/// reports) gives the table back exactly as it was.
pub fn gmap_table_free(t: Frame<GmapTableDesc>) -> Result<(), (Frame<GmapTableDesc>, GtDescError)> {
    #[cfg(not(feature = "memdesc"))]
    {
        let saved = (t.gaddr(), t.owner(), t.raw_level(), t.flags());
        let p = gmap_table_dtor(t)?;
        let order = p.order();
        match super::free_pages(p) {
            Ok(()) => Ok(()),
            Err((p, e)) => {
                let page = p.into_head();
                page.set_page_type(PageType::GmapTable);
                NR_GMAP_TABLES.fetch_add(1 << order, Ordering::Relaxed);
                let f = Frame::<GmapTableDesc>::from_head(page);
                f._gt_s390_gaddr.store(saved.0, Ordering::Relaxed);
                f.gt_gmap.store(saved.1, Ordering::Relaxed);
                f.gt_level.store(saved.2, Ordering::Relaxed);
                f.gt_flags.store(saved.3, Ordering::Relaxed);
                Err((f, GtDescError::Free(e)))
            }
        }
    }
    #[cfg(feature = "memdesc")]
    {
        // The descriptor is kept until the free succeeds: a refusal puts
        // it back without allocating (a free path never allocates).
        let page = t.head();
        if !page.has_type(PageType::GmapTable) {
            return Err((t, GtDescError::NotGmapTable(page.page_type())));
        }
        if page_gmap_table(page).is_err() {
            return Err((t, GtDescError::BadDescriptor));
        }
        let order = t.order();
        let page = t.into_head();
        NR_GMAP_TABLES.fetch_sub(1 << order, Ordering::Relaxed);
        let d = unretype(page);
        match super::free_pages(Pages::from_head(page, order)) {
            Ok(()) => {
                free_desc(d);
                Ok(())
            }
            Err((p, e)) => {
                let page = p.into_head();
                page.set_desc(PageType::GmapTable, d);
                NR_GMAP_TABLES.fetch_add(1 << order, Ordering::Relaxed);
                Err((Frame::from_head(page), GtDescError::Free(e)))
            }
        }
    }
}

/// Free without clearing the gaddr first: what the seed patch warns about.
/// Overlay: the buddy allocator's non-NULL-mapping check refuses it
/// (unless the table starts at guest address 0); memdesc: the page still
/// says GmapTable and is refused as in use. The table comes back
/// unchanged. For the test that shows it.
#[cfg(target_os = "none")]
pub(crate) fn gmap_table_free_keeping_gaddr(
    t: Frame<GmapTableDesc>,
) -> Result<(), (Frame<GmapTableDesc>, GtDescError)> {
    let order = t.order();
    let page = t.into_head();
    // memdesc: the page keeps its GmapTable word (the descriptor holds the
    // gaddr), so the allocator refuses it as still in use.
    #[cfg(not(feature = "memdesc"))]
    page.set_page_type(PageType::Allocated);
    match super::free_pages(Pages::from_head(page, order)) {
        Ok(()) => {
            NR_GMAP_TABLES.fetch_sub(1 << order, Ordering::Relaxed);
            Ok(())
        }
        Err((p, e)) => {
            let page = p.into_head();
            #[cfg(not(feature = "memdesc"))]
            page.set_page_type(PageType::GmapTable);
            Err((Frame::from_head(page), GtDescError::Free(e)))
        }
    }
}
