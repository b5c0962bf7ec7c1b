//! `struct ptdesc`: the page-table view of a `struct page`, for *process*
//! page tables (region, segment and PTE tables of an address space), with
//! Linux's field names and accessors. Gmap tables are not ptdescs: they get
//! their own descriptor type (the point of the seed discussion), and a
//! cast of a page that is not a page table is refused.

use core::mem::{offset_of, size_of, ManuallyDrop};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::addr::{PhysAddr, VirtAddr, PAGE_SIZE};
use super::page::{self, ListLinks, Page, PageType, PtLock};
use super::{AllocError, AllocFlags, FreeError, Pages};

/// `pt_list` or the two words it overlays (`_pt_pad_1`, `pmd_huge_pte`).
#[repr(C)]
pub union PtListOrPad {
    pub pt_list: ManuallyDrop<ListLinks>,
    pub pad: ManuallyDrop<PtPad>,
}

#[repr(C)]
pub struct PtPad {
    /// Aliases `compound_head`: bit 0 must stay clear.
    pub _pt_pad_1: AtomicU64,
    pub pmd_huge_pte: AtomicU64,
}

/// `pt_index`, `pt_mm` or `pt_frag_refcount`.
#[repr(C)]
pub union PtIndex {
    pub pt_index: ManuallyDrop<AtomicU64>,
    pub pt_mm: ManuallyDrop<AtomicU64>,
    pub pt_frag_refcount: ManuallyDrop<AtomicU32>,
}

/// `struct ptdesc` (include/linux/mm_types.h).
#[repr(C)]
pub struct PtDesc {
    pub __page_flags: AtomicU64,
    pub pt_list_or_pad: PtListOrPad,
    pub __page_mapping: AtomicU64,
    pub pt_index: PtIndex,
    pub ptl: PtLock,
    pub __page_type: AtomicU32,
    pub __page_refcount: AtomicU32,
    pub pt_memcg_data: AtomicU64,
}

// TABLE_MATCH: every field where `struct page` has it.
const _: () = assert!(offset_of!(PtDesc, __page_flags) == page::FLAGS_OFFSET);
const _: () = assert!(offset_of!(PtDesc, pt_list_or_pad) == page::LRU_OFFSET);
const _: () = assert!(offset_of!(PtDesc, __page_mapping) == page::MAPPING_OFFSET);
const _: () = assert!(offset_of!(PtDesc, pt_index) == page::INDEX_OFFSET);
const _: () = assert!(offset_of!(PtDesc, ptl) == page::PRIVATE_OFFSET);
const _: () = assert!(offset_of!(PtDesc, __page_type) == page::PAGE_TYPE_OFFSET);
const _: () = assert!(offset_of!(PtDesc, __page_refcount) == page::REFCOUNT_OFFSET);
const _: () = assert!(offset_of!(PtDesc, pt_memcg_data) == page::SPARE_OFFSET);
const _: () = assert!(size_of::<PtDesc>() <= size_of::<Page>());

/// Why a descriptor cast or operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtDescError {
    /// The page is not a process page table (its type tag says what it is).
    NotPageTable(Option<PageType>),
    /// The address is not in the memmap.
    NotInMemmap,
}

/// NR_PAGETABLE: pages in use as process page tables, kept by the ctors and
/// dtors.
static NR_PAGETABLE: AtomicU64 = AtomicU64::new(0);

pub fn nr_pagetable() -> u64 {
    NR_PAGETABLE.load(Ordering::Relaxed)
}

/// Fragment accounting in `pt_frag_refcount`: the low byte counts the 2 KiB
/// PTE tables in use in the page, bits 8-9 say which halves they are.
const FRAG_COUNT_MASK: u32 = 0xff;
const FRAG_HALF_SHIFT: u32 = 8;

/// `page_ptdesc`: the page-table view of a page, refused unless the page's
/// type says it is a process page table.
pub fn page_ptdesc(page: &Page) -> Result<&PtDesc, PtDescError> {
    if !page.has_type(PageType::PageTable) {
        return Err(PtDescError::NotPageTable(page.page_type()));
    }
    // SAFETY: type checked just above.
    Ok(unsafe { page_ptdesc_unchecked(page) })
}

/// The page-table view without the type check.
///
/// # Safety
/// Only for the ctor (the page is about to become a page table) and code
/// that checked the type itself: the cast is memory-safe (both types are
/// atomics over the same 64 bytes) but meaningless for other pages.
pub unsafe fn page_ptdesc_unchecked(page: &Page) -> &PtDesc {
    // SAFETY: PtDesc is a repr(C) overlay of Page's 64 bytes made only of
    // atomics (TABLE_MATCH asserts above): every bit pattern is valid.
    unsafe { &*(page as *const Page as *const PtDesc) }
}

/// `ptdesc_page`.
pub fn ptdesc_page(pt: &PtDesc) -> &Page {
    // SAFETY: the inverse overlay; every PtDesc is a Page of the memmap.
    unsafe { &*(pt as *const PtDesc as *const Page) }
}

/// `virt_to_ptdesc`: the descriptor of the page holding kernel address `va`.
pub fn virt_to_ptdesc(va: VirtAddr) -> Result<&'static PtDesc, PtDescError> {
    let page = super::virt_to_page(va).ok_or(PtDescError::NotInMemmap)?;
    page_ptdesc(page)
}

/// `ptdesc_address`: kernel address of the table page.
pub fn ptdesc_address(pt: &PtDesc) -> VirtAddr {
    super::page_address(ptdesc_page(pt)).unwrap_or_default()
}

pub fn ptdesc_phys(pt: &PtDesc) -> PhysAddr {
    let va = ptdesc_address(pt);
    super::memmap().virt_to_phys(va).unwrap_or_default()
}

impl core::fmt::Debug for PtDesc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "PtDesc({:#x}, type {:#x})",
            ptdesc_phys(self).0,
            self.__page_type.load(Ordering::Relaxed)
        )
    }
}

impl PtDesc {
    /// The ctor's order (1 page for PTE tables, 4 for CRST tables).
    pub fn order(&self) -> u32 {
        ptdesc_page(self).head_order()
    }

    pub fn pt_frag_refcount(&self) -> u32 {
        // SAFETY: atomics-only union: any member is valid to read.
        unsafe { self.pt_index.pt_frag_refcount.load(Ordering::Acquire) }
    }

    /// 2 KiB PTE tables in use in this page (0..=2).
    pub fn frag_count(&self) -> u32 {
        self.pt_frag_refcount() & FRAG_COUNT_MASK
    }

    /// Which halves are in use: bit 0 the lower, bit 1 the upper.
    pub fn frag_halves(&self) -> u32 {
        (self.pt_frag_refcount() >> FRAG_HALF_SHIFT) & 3
    }

    /// Mark half `half` (0 or 1) used; false if it was used already.
    pub fn frag_get(&self, half: u32) -> bool {
        // SAFETY: atomics-only union.
        let f = unsafe { &self.pt_index.pt_frag_refcount };
        let bit = 1 << (FRAG_HALF_SHIFT + half);
        f.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v & bit == 0).then_some((v | bit) + 1)
        })
        .is_ok()
    }

    /// Mark half `half` free; returns the fragments still in use, or `None`
    /// if the half was not in use (a double free of a fragment).
    pub fn frag_put(&self, half: u32) -> Option<u32> {
        // SAFETY: atomics-only union.
        let f = unsafe { &self.pt_index.pt_frag_refcount };
        let bit = 1 << (FRAG_HALF_SHIFT + half);
        f.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v & bit != 0).then_some((v & !bit) - 1)
        })
        .ok()
        .map(|old| (old & FRAG_COUNT_MASK) - 1)
    }

    /// `pt_index` for CRST tables: which level the table is.
    pub fn crst_level(&self) -> u64 {
        // SAFETY: atomics-only union.
        unsafe { self.pt_index.pt_index.load(Ordering::Relaxed) }
    }
}

/// `ptlock_init`.
pub fn ptlock_init(pt: &PtDesc) {
    pt.ptl.init();
}

/// `ptlock_ptr`: the split page-table lock of this table page.
pub fn ptlock_ptr(pt: &PtDesc) -> &PtLock {
    &pt.ptl
}

/// `pagetable_alloc`: pages for a page table; the ctor makes them one.
pub fn pagetable_alloc(order: u32) -> Result<&'static PtDesc, AllocError> {
    let p = super::alloc_pages(order, AllocFlags::empty())?;
    let page = p.page();
    let _ = p.into_raw();
    // SAFETY: freshly allocated; the ctor tags it next.
    Ok(unsafe { page_ptdesc_unchecked(page) })
}

/// `pagetable_free`: give the pages back. A table whose dtor has not run is
/// still tagged PageTable and refused by the allocator (as is one whose
/// `mapping` alias was left set).
pub fn pagetable_free(pt: &PtDesc) -> Result<(), FreeError> {
    let page = ptdesc_page(pt);
    let pfn = super::page_to_pfn(page).ok_or(FreeError::OutOfRange)?;
    // SAFETY: a page-table page is owned by its address space, which is
    // giving it up here; no handle for it exists.
    let p = unsafe { Pages::from_raw(pfn, page.head_order()) };
    super::free_pages(p).map_err(|(p, e)| {
        let _ = p.into_raw();
        e
    })
}

fn ctor(pt: &PtDesc, level: u64) {
    let page = ptdesc_page(pt);
    page.set_page_type(PageType::PageTable);
    // SAFETY: the page is a page table from here on; resetting its words is
    // the ctor's job.
    let arm = unsafe { page.pt_unchecked() };
    arm._pt_pad_1.store(0, Ordering::Relaxed);
    arm.pmd_huge_pte.store(0, Ordering::Relaxed);
    arm._pt_s390_gaddr.store(0, Ordering::Relaxed);
    // SAFETY: atomics-only union.
    unsafe { pt.pt_index.pt_index.store(level, Ordering::Relaxed) };
    ptlock_init(pt);
    NR_PAGETABLE.fetch_add(1 << page.head_order(), Ordering::Relaxed);
}

fn dtor(pt: &PtDesc) {
    let page = ptdesc_page(pt);
    debug_assert!(page.has_type(PageType::PageTable));
    NR_PAGETABLE.fetch_sub(1 << page.head_order(), Ordering::Relaxed);
    page.clear_union();
    page.set_page_type(PageType::Allocated);
}

/// Level tags in `pt_index` for CRST tables (PTE tables use the word as
/// `pt_frag_refcount`).
pub const CRST_SEGMENT: u64 = 0x100;
pub const CRST_REGION3: u64 = 0x101;
pub const CRST_REGION2: u64 = 0x102;
pub const CRST_REGION1: u64 = 0x103;

/// `pagetable_pte_ctor`: a page of PTE tables (fragment count 0).
pub fn pagetable_pte_ctor(pt: &PtDesc) {
    ctor(pt, 0);
}

pub fn pagetable_pte_dtor(pt: &PtDesc) {
    dtor(pt);
}

/// `pagetable_pmd_ctor`: a segment table (16 KiB, order 2).
pub fn pagetable_pmd_ctor(pt: &PtDesc) {
    ctor(pt, CRST_SEGMENT);
}

pub fn pagetable_pmd_dtor(pt: &PtDesc) {
    dtor(pt);
}

/// Region-table ctor (Linux's pud/p4d/pgd ctors): `tag` is CRST_REGION*.
pub fn pagetable_crst_ctor(pt: &PtDesc, tag: u64) {
    ctor(pt, tag);
}

pub fn pagetable_crst_dtor(pt: &PtDesc) {
    dtor(pt);
}

/// Bytes of a segment table: the alignment `pmd_pgtable_page` rounds to.
const CRST_TABLE_SIZE: u64 = 4 * PAGE_SIZE;

/// `pmd_pgtable_page`: the first page of the segment table that holds the
/// segment entry at kernel address `pmd`.
pub fn pmd_pgtable_page(pmd: VirtAddr) -> Option<&'static Page> {
    super::virt_to_page(pmd.align_down(CRST_TABLE_SIZE))
}

/// `pmd_ptdesc`: the descriptor of the segment table holding `pmd`.
pub fn pmd_ptdesc(pmd: VirtAddr) -> Result<&'static PtDesc, PtDescError> {
    page_ptdesc(pmd_pgtable_page(pmd).ok_or(PtDescError::NotInMemmap)?)
}

/// `pte_lockptr`: the lock of the PTE table a segment entry points at
/// (`pte_table` is the entry's page-table origin).
pub fn pte_lockptr(pte_table: VirtAddr) -> Result<&'static PtLock, PtDescError> {
    Ok(ptlock_ptr(virt_to_ptdesc(pte_table)?))
}
