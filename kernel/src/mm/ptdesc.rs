//! `struct ptdesc`: the page-table view of a `struct page`, for *process*
//! page tables (region, segment and PTE tables of an address space), with
//! Linux's field names and accessors (include/linux/mm.h, mm_types.h).
//! Gmap tables are not ptdescs: they get their own descriptor type
//! (`gtdesc`, the point of the seed discussion).
//!
//! Ownership: `pagetable_alloc` gives `Pages`; a ctor consumes them and
//! gives a `Frame<PtDesc>` (the page is typed PageTable from then on); the
//! dtor consumes that and gives the `Pages` back; dropping the frame does
//! both and frees. A ctor or dtor on the wrong kind of page is refused, so
//! NR_PAGETABLE counts each table page exactly once. The descriptor's
//! fields are private; what outside code may change (the fragment count,
//! the list link) is crate-internal, and only the lock is public.

#[cfg(not(feature = "memdesc"))]
use core::mem::ManuallyDrop;
use core::mem::{offset_of, size_of};
#[cfg(not(feature = "memdesc"))]
use core::sync::atomic::AtomicU32;
use core::sync::atomic::{AtomicU64, Ordering};

use super::addr::{PhysAddr, VirtAddr, PAGE_SIZE};
use super::frame::{sealed, Frame};
use super::page::{self, ListLinks, Page, PageType};
use super::{AllocError, AllocFlags, Pages};

/// A page-table lock embedded in the descriptor (Linux without
/// ALLOC_SPLIT_PTLOCKS: `spinlock_t ptl`). A whole word, not Linux's four
/// bytes: every access to a word of `struct page` has one size (the
/// union's words are 64-bit), as Rust's memory model, and Miri, require.
///
/// A ticket lock (as s390 Linux's queued spinlocks are fair): the high
/// half of the word is the next ticket, the low half the ticket served.
/// A waiter spins briefly, then sleeps until the CPU that passes the lock
/// on kicks it (`smp::lock_sleep`/`lock_kick`): a vCPU waiting under QEMU
/// TCG gives its host core back to the holder.
#[repr(C)]
pub struct PtLock {
    locked: crate::sync::TicketLock,
}

impl PtLock {
    /// Wait for our turn. SMP: interruptions are disabled in all code
    /// that takes it (a sleeping waiter opens only the external subclass,
    /// whose handlers take no page-table lock). Crate-internal: a lock
    /// reached through a raw table address could outlive its table, and a
    /// guard left over would unlock the next table's.
    pub(crate) fn lock(&self) -> PtLockGuard<'_> {
        self.locked.acquire();
        PtLockGuard { lock: self }
    }

    pub fn is_locked(&self) -> bool {
        self.locked.is_locked()
    }

    /// Linux `spin_is_contended`: a CPU other than the holder has taken a
    /// ticket and waits.
    pub fn is_contended(&self) -> bool {
        self.locked.is_contended()
    }

    /// Reset to unlocked (`ptlock_init`, the ctor's job only).
    fn init(&self) {
        // SAFETY: the ctor's table is new to the caller: nobody can hold
        // or wait for its lock yet.
        unsafe { self.locked.reset() };
    }
}

pub struct PtLockGuard<'a> {
    lock: &'a PtLock,
}

impl Drop for PtLockGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: the guard was made by `lock`, which acquired it.
        unsafe { self.lock.locked.release() };
    }
}

/// `pt_list` or the two words it overlays (`_pt_pad_1`, `pmd_huge_pte`).
#[cfg(not(feature = "memdesc"))]
#[repr(C)]
union PtListOrPad {
    pt_list: ManuallyDrop<ListLinks>,
    pad: ManuallyDrop<PtPad>,
}

#[cfg(not(feature = "memdesc"))]
#[repr(C)]
struct PtPad {
    /// Aliases `compound_head`: bit 0 must stay clear.
    _pt_pad_1: AtomicU64,
    pmd_huge_pte: AtomicU64,
}

/// `pt_index`, `pt_mm` or `pt_frag_refcount`. Linux's `pt_frag_refcount`
/// is an `atomic_t` in the first four bytes of the word; zdat's uses the
/// whole word, so that every access to it has one size (see `PtLock`).
#[cfg(not(feature = "memdesc"))]
#[repr(C)]
union PtIndex {
    pt_index: ManuallyDrop<AtomicU64>,
    pt_mm: ManuallyDrop<AtomicU64>,
    pt_frag_refcount: ManuallyDrop<AtomicU64>,
}

/// `struct ptdesc` (include/linux/mm_types.h), overlay layout: a view of
/// the page's own 64 bytes. Fields private: reached through the accessors
/// below.
#[cfg(not(feature = "memdesc"))]
#[repr(C)]
pub struct PtDesc {
    __page_flags: AtomicU64,
    pt_list_or_pad: PtListOrPad,
    /// Linux's `__page_mapping`; the seed patch's `_pt_s390_gaddr` for
    /// gmap tables, which zdat gives their own descriptor instead. Always
    /// 0 for a process page table.
    __page_mapping: AtomicU64,
    pt_index: PtIndex,
    ptl: PtLock,
    __page_type: AtomicU32,
    __page_refcount: AtomicU32,
    pt_memcg_data: AtomicU64,
}

// TABLE_MATCH: every field where `struct page` has it.
#[cfg(not(feature = "memdesc"))]
const _: () = {
    assert!(offset_of!(PtDesc, __page_flags) == page::FLAGS_OFFSET);
    assert!(offset_of!(PtDesc, pt_list_or_pad) == page::LRU_OFFSET);
    assert!(offset_of!(PtDesc, __page_mapping) == page::MAPPING_OFFSET);
    assert!(offset_of!(PtDesc, pt_index) == page::INDEX_OFFSET);
    assert!(offset_of!(PtDesc, ptl) == page::PRIVATE_OFFSET);
    assert!(offset_of!(PtDesc, __page_type) == page::PAGE_TYPE_OFFSET);
    assert!(offset_of!(PtDesc, __page_refcount) == page::REFCOUNT_OFFSET);
    assert!(offset_of!(PtDesc, pt_memcg_data) == page::SPARE_OFFSET);
    assert!(size_of::<PtDesc>() <= size_of::<Page>());
};

/// `struct ptdesc`, memdesc layout: allocated on its own from the
/// descriptor allocator (`desc::PTDESC_CACHE`, 16-byte aligned), pointed
/// to by the page's memdesc word. What Linux keeps in `struct page` for a
/// page table and zdat uses: `pt_list`, `pt_index`/`pt_frag_refcount`,
/// `ptl`; the memdesc head carries the back-pointer, order and refcount.
#[cfg(feature = "memdesc")]
#[repr(C, align(16))]
pub struct PtDesc {
    md: page::MemdescHead,
    pt_list: ListLinks,
    /// `pt_index`, or `pt_frag_refcount` for a PTE page (one word, as in
    /// the overlay).
    pt_index: AtomicU64,
    ptl: PtLock,
}

#[cfg(feature = "memdesc")]
const _: () = {
    assert!(size_of::<PtDesc>() == 48);
    assert!(core::mem::align_of::<PtDesc>() == super::desc::DESC_ALIGN);
    assert!(offset_of!(PtDesc, md) == 0);
};

/// Why a descriptor cast, ctor or dtor was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtDescError {
    /// The page is not a process page table (its type tag says what it is).
    NotPageTable(Option<PageType>),
    /// The address is not in the memmap.
    NotInMemmap,
    /// A ctor on a block that is not a plain allocated block (its type),
    /// or that another reference or a `mapping` still holds.
    NotAllocated(Option<PageType>),
    /// A ctor on a block of the wrong order for the table (its order).
    WrongOrder(u32),
    /// memdesc: no descriptor could be allocated (the ctor changed nothing).
    NoDescriptor,
    /// memdesc: the page's descriptor does not name the page back.
    BadDescriptor,
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
/// type says it is a process page table. Overlay: a cast. memdesc: the
/// word's pointer, followed once its type is checked, and refused unless
/// the descriptor names this page back (`BadDescriptor`).
pub fn page_ptdesc(page: &Page) -> Result<&PtDesc, PtDescError> {
    if !page.has_type(PageType::PageTable) {
        return Err(PtDescError::NotPageTable(page.page_type()));
    }
    #[cfg(not(feature = "memdesc"))]
    return Ok(page_ptdesc_unchecked(page));
    #[cfg(feature = "memdesc")]
    {
        let pt = page_ptdesc_unchecked(page).ok_or(PtDescError::BadDescriptor)?;
        if pt.md.page_addr() != core::ptr::from_ref(page).addr() as u64 {
            return Err(PtDescError::BadDescriptor);
        }
        Ok(pt)
    }
}

/// The page-table view without the type check (callers checked it).
#[cfg(not(feature = "memdesc"))]
fn page_ptdesc_unchecked(page: &Page) -> &PtDesc {
    // SAFETY: PtDesc is a repr(C) overlay of Page's 64 bytes made only of
    // atomics (TABLE_MATCH asserts above): every bit pattern is valid.
    unsafe { &*(page as *const Page as *const PtDesc) }
}

/// The descriptor the page's word points to (its type was checked).
#[cfg(feature = "memdesc")]
fn page_ptdesc_unchecked(page: &Page) -> Option<&PtDesc> {
    let p = page.desc_ptr(PageType::PageTable)?;
    // SAFETY: a PageTable word points at a live PtDesc from PTDESC_CACHE
    // (only the ctor stores it; the dtor retypes the page before freeing
    // the descriptor), and PtDesc is atomics only.
    Some(unsafe { &*p.cast::<PtDesc>() })
}

/// `ptdesc_page`.
#[cfg(not(feature = "memdesc"))]
pub fn ptdesc_page(pt: &PtDesc) -> &Page {
    // SAFETY: the inverse overlay; every PtDesc is a Page of the memmap.
    unsafe { &*(pt as *const PtDesc as *const Page) }
}

/// `ptdesc_page`: the descriptor's back-pointer.
#[cfg(feature = "memdesc")]
pub fn ptdesc_page(pt: &PtDesc) -> &Page {
    let p: *const Page = core::ptr::with_exposed_provenance(pt.md.page_addr() as usize);
    // SAFETY: the ctor set the back-pointer to the memmap entry of the
    // table's head page (exposed), and a PtDesc exists only while that
    // page is a page table: fields private, made only by the ctor.
    unsafe { &*p }
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
            ptdesc_page(self).raw_page_type()
        )
    }
}

impl PtDesc {
    /// The ctor's order (0 for PTE tables, 2 for CRST tables).
    pub fn order(&self) -> u32 {
        ptdesc_page(self).head_order()
    }

    /// `pt_index` as the ctor left it: a `CRST_*` level tag for a CRST
    /// table (PTE tables use the word as `pt_frag_refcount`).
    pub fn pt_index(&self) -> u64 {
        self.index_word().load(Ordering::Relaxed)
    }

    pub fn pt_frag_refcount(&self) -> u32 {
        self.frag_word().load(Ordering::Acquire) as u32
    }

    /// The `pt_index` word.
    #[cfg(not(feature = "memdesc"))]
    fn index_word(&self) -> &AtomicU64 {
        // SAFETY: atomics-only union: any member is valid to read.
        unsafe { &self.pt_index.pt_index }
    }

    #[cfg(feature = "memdesc")]
    fn index_word(&self) -> &AtomicU64 {
        &self.pt_index
    }

    /// 2 KiB PTE tables in use in this page (0..=2).
    pub fn frag_count(&self) -> u32 {
        self.pt_frag_refcount() & FRAG_COUNT_MASK
    }

    /// Which halves are in use: bit 0 the lower, bit 1 the upper.
    pub fn frag_halves(&self) -> u32 {
        (self.pt_frag_refcount() >> FRAG_HALF_SHIFT) & 3
    }

    /// Whether the page is on a space's list of pages with a free half.
    pub fn frag_listed(&self) -> bool {
        self.pt_frag_refcount() & FRAG_LISTED != 0
    }

    #[cfg(not(feature = "memdesc"))]
    fn frag_word(&self) -> &AtomicU64 {
        // SAFETY: atomics-only union.
        unsafe { &self.pt_index.pt_frag_refcount }
    }

    #[cfg(feature = "memdesc")]
    fn frag_word(&self) -> &AtomicU64 {
        &self.pt_index
    }

    /// Mark half `half` (0 or 1) used; false if it was used already. The
    /// fragment allocator's (dat) alone: crate-internal.
    pub(crate) fn frag_get(&self, half: u32) -> bool {
        let bit = 1u64 << (FRAG_HALF_SHIFT + half);
        self.frag_word()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & bit == 0).then_some((v | bit) + 1)
            })
            .is_ok()
    }

    /// Mark half `half` free; returns the fragments still in use, or `None`
    /// if the half was not in use (a double free of a fragment).
    pub(crate) fn frag_put(&self, half: u32) -> Option<u32> {
        let bit = 1u64 << (FRAG_HALF_SHIFT + half);
        self.frag_word()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & bit != 0).then_some((v & !bit) - 1)
            })
            .ok()
            .map(|old| (old as u32 & FRAG_COUNT_MASK) - 1)
    }

    /// Record whether the page is on a free-half list.
    pub(crate) fn set_frag_listed(&self, on: bool) {
        if on {
            self.frag_word()
                .fetch_or(FRAG_LISTED.into(), Ordering::AcqRel);
        } else {
            self.frag_word()
                .fetch_and(!u64::from(FRAG_LISTED), Ordering::AcqRel);
        }
    }

    #[cfg(not(feature = "memdesc"))]
    fn pt_list(&self) -> &ListLinks {
        // SAFETY: atomics-only union; `pt_list` overlays the two pad words.
        unsafe { &self.pt_list_or_pad.pt_list }
    }

    #[cfg(feature = "memdesc")]
    fn pt_list(&self) -> &ListLinks {
        &self.pt_list
    }

    /// `pt_list` links (real addresses of pages, 0 = none).
    pub fn pt_list_next(&self) -> u64 {
        self.pt_list().next.load(Ordering::Relaxed)
    }

    pub fn pt_list_prev(&self) -> u64 {
        self.pt_list().prev.load(Ordering::Relaxed)
    }

    /// Set the `pt_list` links: the fragment allocator's list.
    pub(crate) fn set_pt_list(&self, next: u64, prev: u64) {
        self.pt_list().next.store(next, Ordering::Relaxed);
        self.pt_list().prev.store(prev, Ordering::Relaxed);
    }

    pub(crate) fn set_pt_list_next(&self, next: u64) {
        self.pt_list().next.store(next, Ordering::Relaxed);
    }

    pub(crate) fn set_pt_list_prev(&self, prev: u64) {
        self.pt_list().prev.store(prev, Ordering::Relaxed);
    }
}

/// `ptlock_ptr`: the split page-table lock of this table page.
pub fn ptlock_ptr(pt: &PtDesc) -> &PtLock {
    &pt.ptl
}

// SAFETY: overlay: PtDesc is a repr(C) atomics-only overlay of Page
// (TABLE_MATCH asserts above). memdesc: `of_page` follows the word of a
// page typed PageTable to its live descriptor.
unsafe impl sealed::Desc for PtDesc {
    const TYPE: PageType = PageType::PageTable;
    const ORDER: Option<u32> = None;
    fn of_page(page: &Page) -> &Self {
        #[cfg(not(feature = "memdesc"))]
        return page_ptdesc_unchecked(page);
        #[cfg(feature = "memdesc")]
        return page_ptdesc_unchecked(page)
            .unwrap_or_else(|| unreachable!("a PageTable frame without its descriptor"));
    }
    fn release(page: &'static Page) {
        // The frame's Drop: dtor, then the allocator.
        match pagetable_dtor(Frame::from_head(page)) {
            Ok(p) => drop(p),
            Err((f, e)) => {
                let _ = f.into_head();
                crate::bug::report(
                    "mm",
                    format_args!("page table {page:p} dropped, dtor refused: {e:?}"),
                );
            }
        }
    }
}

/// `pagetable_alloc`: pages for a page table; a ctor makes them one.
pub fn pagetable_alloc(order: u32) -> Result<Pages, AllocError> {
    super::alloc_pages(order, AllocFlags::empty())
}

/// `pagetable_free`: give the pages a dtor returned back.
pub fn pagetable_free(p: Pages) -> Result<(), (Pages, super::FreeError)> {
    super::free_pages(p)
}

/// `pagetable_dtor_free`: dtor and free in one (what dropping the frame
/// does too).
pub fn pagetable_dtor_free(pt: Frame<PtDesc>) {
    drop(pt);
}

/// Level tags in `pt_index` for CRST tables (PTE tables use the word as
/// `pt_frag_refcount`).
pub const CRST_SEGMENT: u64 = 0x100;
pub const CRST_REGION3: u64 = 0x101;
pub const CRST_REGION2: u64 = 0x102;
pub const CRST_REGION1: u64 = 0x103;

/// Bit of `pt_frag_refcount`: the page is on a free-half list.
const FRAG_LISTED: u32 = 1 << 10;

/// The ctor: `p` must be a plain allocated block of `order` (one
/// reference, no mapping); it becomes a page table with `pt_index` =
/// `index`, its lock unlocked, and is counted in NR_PAGETABLE.
fn ctor(p: Pages, order: u32, index: u64) -> Result<Frame<PtDesc>, (Pages, PtDescError)> {
    let page = p.head();
    if !page.has_type(PageType::Allocated) || page.refcount() != 1 || page.mapping() != 0 {
        return Err((p, PtDescError::NotAllocated(page.page_type())));
    }
    if p.order() != order {
        let o = p.order();
        return Err((p, PtDescError::WrongOrder(o)));
    }
    #[cfg(not(feature = "memdesc"))]
    let f = {
        let page = p.into_head();
        page.clear_union();
        page.set_page_type(PageType::PageTable);
        Frame::<PtDesc>::from_head(page)
    };
    #[cfg(feature = "memdesc")]
    let f = {
        let Ok(d) = super::desc::PTDESC_CACHE.alloc() else {
            return Err((p, PtDescError::NoDescriptor));
        };
        let page = p.into_head();
        // SAFETY: a 16-byte aligned object of PtDesc's size from its
        // cache, allocated to us; PtDesc is atomics only, valid for any
        // contents (a stale view may read it; the back-pointer it follows is
        // written before the page points at it).
        let pt = unsafe { &*d.as_ptr().cast::<PtDesc>() };
        pt.md.init(page);
        pt.set_pt_list(0, 0);
        page.set_desc(PageType::PageTable, d.as_ptr());
        Frame::<PtDesc>::from_head(page)
    };
    f.index_word().store(index, Ordering::Relaxed);
    f.ptl.init();
    NR_PAGETABLE.fetch_add(1 << order, Ordering::Relaxed);
    Ok(f)
}

/// `pagetable_pte_ctor`: a page of PTE tables (order 0, fragment count 0).
pub fn pagetable_pte_ctor(p: Pages) -> Result<Frame<PtDesc>, (Pages, PtDescError)> {
    ctor(p, 0, 0)
}

/// `pagetable_pmd_ctor`: a segment table (16 KiB, order 2).
pub fn pagetable_pmd_ctor(p: Pages) -> Result<Frame<PtDesc>, (Pages, PtDescError)> {
    ctor(p, 2, CRST_SEGMENT)
}

/// Region-table ctor (Linux's pud/p4d/pgd ctors): `tag` is CRST_REGION*.
pub fn pagetable_crst_ctor(p: Pages, tag: u64) -> Result<Frame<PtDesc>, (Pages, PtDescError)> {
    if !(CRST_REGION3..=CRST_REGION1).contains(&tag) {
        return Err((p, PtDescError::NotAllocated(Some(PageType::Allocated))));
    }
    ctor(p, 2, tag)
}

/// `pagetable_dtor`: the page stops being a page table (its words are
/// reset, NR_PAGETABLE drops) and the pages come back for
/// `pagetable_free`. Refused if the page is not tagged PageTable any more
/// (memmap corruption): the frame comes back unchanged.
pub fn pagetable_dtor(pt: Frame<PtDesc>) -> Result<Pages, (Frame<PtDesc>, PtDescError)> {
    let page = pt.head();
    if !page.has_type(PageType::PageTable) {
        return Err((pt, PtDescError::NotPageTable(page.page_type())));
    }
    #[cfg(feature = "memdesc")]
    if page_ptdesc(page).is_err() {
        return Err((pt, PtDescError::BadDescriptor));
    }
    let page = pt.into_head();
    let order = page.head_order();
    NR_PAGETABLE.fetch_sub(1 << order, Ordering::Relaxed);
    #[cfg(not(feature = "memdesc"))]
    {
        page.clear_union();
        page.set_page_type(PageType::Allocated);
    }
    #[cfg(feature = "memdesc")]
    {
        let d = page.detach_desc(PageType::PageTable);
        if let Some(d) = d.and_then(|d| core::ptr::NonNull::new(d.cast_mut())) {
            // SAFETY: the descriptor came from PTDESC_CACHE in the ctor and
            // nothing reaches it now that the page is retyped.
            unsafe { super::desc::PTDESC_CACHE.free(d) };
        }
    }
    Ok(Pages::from_head(page, order))
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
