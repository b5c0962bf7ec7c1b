//! The memdesc layout of `struct page` (feature `memdesc`): one 8-byte
//! word per frame, `memdesc`, with the page's type in bits 0-3. What the
//! other 60 bits hold depends on the type:
//!
//! ```text
//!  63                36 35                8 7     4 3    0
//! +--------------------+-------------------+-------+------+
//! | prev pfn (28)      | next pfn (28)     | order | 1    |  Buddy head
//! +--------------------+-------------------+-------+------+
//! | next entry address >> 3 (56, 0: end)   | order | 2    |  Pcp head
//! +--------------------+----+--------------+-------+------+
//! | refcount (32)      |    | flags (16)   | order | 3..9 |  Allocated, Tail,
//! +--------------------+----+--------------+-------+------+  Reserved, Heap, DescSlab
//! | descriptor address (16-byte aligned)           | 6, 7 |  PageTable, GmapTable
//! +------------------------------------------------+------+
//! | 0                                              | 0    |  Free (inside a block)
//! +------------------------------------------------+------+
//! ```
//!
//! The buddy allocator's state (order and both list links, as 28-bit
//! frame numbers) fits the word, so freeing never allocates and a free
//! frame's memory is never written (page poisoning stays possible). The
//! price: at most 2^28 - 1 frames (1 TiB) and a read-modify-write of the
//! word per list update. A descriptor begins with `MemdescHead`: the
//! back-pointer to its page, the block order and the refcount, so a
//! descriptor page answers `head_order` and `refcount` like any other.
//! Pointers kept in the word are exposed (`expose_provenance`) and read
//! back with `with_exposed_provenance`.

use core::sync::atomic::{AtomicU64, Ordering};

use super::{PageFlags, PageType, ORDER_MASK, ORDER_SHIFT};

const TYPE_MASK: u64 = 0xf;
const FREE: u64 = PageType::Free as u64;
const BUDDY: u64 = PageType::Buddy as u64;
const PCP: u64 = PageType::Pcp as u64;
const ALLOCATED: u64 = PageType::Allocated as u64;
const PAGE_TABLE: u64 = PageType::PageTable as u64;
const GMAP_TABLE: u64 = PageType::GmapTable as u64;
const HEAP: u64 = PageType::Heap as u64;
const DESC_SLAB: u64 = PageType::DescSlab as u64;
const ORDER_BITS_SHIFT: u32 = 4;
const ORDER_BITS: u64 = 0xf << ORDER_BITS_SHIFT;
const FLAGS_BITS_SHIFT: u32 = 8;
const FLAGS_BITS: u64 = 0xffff << FLAGS_BITS_SHIFT;
const REF_SHIFT: u32 = 32;
const REF_ONE: u64 = 1 << REF_SHIFT;
const LINK_BITS: u32 = 28;
const LINK_MASK: u64 = (1 << LINK_BITS) - 1;
const NEXT_SHIFT: u32 = 8;
const PREV_SHIFT: u32 = 8 + LINK_BITS;
/// A list link of all ones: no page.
const LINK_NIL: u64 = LINK_MASK;
/// Frames the memdesc layout can describe (a buddy link is 28 bits and
/// all ones means none).
pub const MEMDESC_MAX_PAGES: u64 = LINK_NIL;
/// Pcp heads keep the next entry's address shifted into bits 8-63.
const PCP_ADDR_SHIFT: u32 = 5;

/// The first 16 bytes of every descriptor a memdesc word points to.
#[repr(C, align(16))]
pub struct MemdescHead {
    /// The page (the block's head) this descriptor describes: exposed
    /// address of its memmap entry.
    page: AtomicU64,
    /// Bits 0-7 the block's order, 8-23 its flags, 32-63 its refcount.
    info: AtomicU64,
}

const _: () = assert!(core::mem::size_of::<MemdescHead>() == 16);

impl MemdescHead {
    /// A head for the block headed by `page` (inline state): its order,
    /// flags and refcount move here while the word points at the
    /// descriptor (the dtor moves them back).
    pub(in crate::mm) fn init(&self, page: &Page) {
        let (order, flags, refs) = (page.head_order(), page.flags(), page.refcount());
        self.page.store(
            core::ptr::from_ref(page).expose_provenance() as u64,
            Ordering::Relaxed,
        );
        self.info.store(
            order as u64 | ((flags.bits() << 8) & 0xff_ff00) | ((refs as u64) << REF_SHIFT),
            Ordering::Relaxed,
        );
    }

    /// The block's flags (kept here while the page is a descriptor page).
    pub fn flags(&self) -> PageFlags {
        PageFlags::from_bits_retain((self.info.load(Ordering::Relaxed) >> 8) & 0xffff)
    }

    /// A head describing nothing (host tests' stand-in descriptor).
    #[cfg(test)]
    pub(in crate::mm) fn zeroed_for_tests() -> Self {
        Self {
            page: AtomicU64::new(0),
            info: AtomicU64::new(0),
        }
    }

    /// The memmap entry this descriptor says it describes (address only).
    pub fn page_addr(&self) -> u64 {
        self.page.load(Ordering::Relaxed)
    }

    pub fn order(&self) -> u32 {
        (self.info.load(Ordering::Relaxed) & 0xff) as u32
    }

    pub fn refcount(&self) -> u32 {
        (self.info.load(Ordering::Relaxed) >> REF_SHIFT) as u32
    }
}

/// `struct page` in the memdesc layout: one word.
#[repr(C, align(8))]
pub struct Page {
    memdesc: AtomicU64,
}

const _: () = assert!(core::mem::size_of::<Page>() == 8);
const _: () = assert!(core::mem::align_of::<Page>() == 8);
// Every type fits the 4-bit field.
const _: () = assert!((PageType::DescSlab as u64) <= TYPE_MASK);

/// What `alloc_pages` of `order` leaves in the head's word.
#[inline(always)]
const fn allocated_word(order: u32) -> u64 {
    let head = if order > 0 { PageFlags::HEAD.bits() } else { 0 };
    PageType::Allocated as u64
        | ((order as u64) << ORDER_BITS_SHIFT)
        | (head << FLAGS_BITS_SHIFT)
        | REF_ONE
}

#[allow(clippy::new_without_default)]
impl Page {
    /// A zeroed entry: a free page inside a buddy block.
    pub const fn new() -> Self {
        Self {
            memdesc: AtomicU64::new(0),
        }
    }

    #[inline(always)]
    fn load(&self) -> u64 {
        self.memdesc.load(Ordering::Relaxed)
    }

    /// The word, ordered after the ctor's writes to the descriptor it may
    /// point to (`set_desc` stores with Release).
    #[inline(always)]
    fn load_acquire(&self) -> u64 {
        self.memdesc.load(Ordering::Acquire)
    }

    #[inline(always)]
    fn store(&self, w: u64) {
        self.memdesc.store(w, Ordering::Relaxed);
    }

    /// The raw memdesc word (dumps, checks).
    pub fn memdesc(&self) -> u64 {
        self.load()
    }

    fn has_desc(w: u64) -> bool {
        matches!(w & TYPE_MASK, PAGE_TABLE | GMAP_TABLE)
    }

    /// The descriptor this page's word points to, if its type has one.
    pub(in crate::mm) fn desc_head(&self) -> Option<&MemdescHead> {
        let w = self.load_acquire();
        if !Self::has_desc(w) {
            return None;
        }
        let p: *const MemdescHead = core::ptr::with_exposed_provenance((w & !TYPE_MASK) as usize);
        // SAFETY: only a ctor stores a descriptor type, with the address of
        // a live descriptor from `desc`, which stays allocated until the
        // dtor retypes the page; descriptors are atomics only.
        Some(unsafe { &*p })
    }

    /// The descriptor address in the word, for a page of type `t` (mm's
    /// `page_ptdesc` and `page_gmap_table`), or `None` for another type.
    pub(in crate::mm) fn desc_ptr(&self, t: PageType) -> Option<*const u8> {
        let w = self.load_acquire();
        (w & TYPE_MASK == t as u64 && Self::has_desc(w))
            .then(|| core::ptr::with_exposed_provenance((w & !TYPE_MASK) as usize))
    }

    /// Point the word at descriptor `d` (16-byte aligned) of type `t`.
    pub(in crate::mm) fn set_desc(&self, t: PageType, d: *const u8) {
        let a = d.expose_provenance() as u64;
        debug_assert!(a & TYPE_MASK == 0 && matches!(t, PageType::PageTable | PageType::GmapTable));
        // Release: a reader that follows the pointer (Acquire) sees the
        // descriptor as the ctor wrote it.
        self.memdesc.store(a | t as u64, Ordering::Release);
    }

    /// The dtor's half of `set_desc`: a page of type `t` becomes a plain
    /// allocated block again, its order, flags and refcount moved back from
    /// the descriptor into the word. Returns the descriptor, for the
    /// caller to free (or to point the page at again); `None` (nothing
    /// changed) if the page is not of type `t`.
    pub(in crate::mm) fn detach_desc(&self, t: PageType) -> Option<*const u8> {
        let d = self.desc_ptr(t)?;
        let (order, refs, flags) = (self.head_order(), self.refcount(), self.flags());
        self.make_allocated(order);
        self.set_flags(flags);
        self.set_refcount(refs);
        Some(d)
    }

    pub fn flags(&self) -> PageFlags {
        PageFlags::from_bits_retain(self.raw_flags() & !ORDER_MASK)
    }

    /// Set the flags of an inline-state page (a free page has none: a
    /// no-op there; a descriptor page keeps them in its descriptor).
    pub(in crate::mm) fn set_flags(&self, f: PageFlags) {
        let w = self.load();
        if let Some(d) = self.desc_head() {
            let i = d.info.load(Ordering::Relaxed) & !0xff_ff00;
            d.info
                .store(i | ((f.bits() << 8) & 0xff_ff00), Ordering::Relaxed);
            return;
        }
        if matches!(w & TYPE_MASK, FREE | BUDDY | PCP) {
            debug_assert!(false, "set_flags on a free page");
            return;
        }
        self.store((w & !FLAGS_BITS) | ((f.bits() << FLAGS_BITS_SHIFT) & FLAGS_BITS));
    }

    /// Flags with the order field where the overlay keeps it, so both
    /// layouts compare the same values.
    pub fn raw_flags(&self) -> u64 {
        let w = self.load();
        match w & TYPE_MASK {
            FREE | BUDDY => 0,
            PCP => Self::head_flags(((w & ORDER_BITS) >> ORDER_BITS_SHIFT) as u32),
            PAGE_TABLE | GMAP_TABLE => self.desc_head().map_or(0, |d| {
                d.flags().bits() | ((d.order() as u64) << ORDER_SHIFT)
            }),
            _ => {
                ((w & FLAGS_BITS) >> FLAGS_BITS_SHIFT)
                    | (((w & ORDER_BITS) >> ORDER_BITS_SHIFT) << ORDER_SHIFT)
            }
        }
    }

    /// Order of the allocated block this page heads (0 for a free page:
    /// a Buddy head's order is `buddy_order`).
    pub fn head_order(&self) -> u32 {
        let w = self.load();
        match w & TYPE_MASK {
            FREE | BUDDY => 0,
            PAGE_TABLE | GMAP_TABLE => self.desc_head().map_or(0, MemdescHead::order),
            _ => ((w & ORDER_BITS) >> ORDER_BITS_SHIFT) as u32,
        }
    }

    /// The flags of a freshly allocated head of `order`, as `raw_flags`
    /// shows them.
    #[inline(always)]
    pub const fn head_flags(order: u32) -> u64 {
        let f = if order > 0 { PageFlags::HEAD.bits() } else { 0 };
        f | ((order as u64) << ORDER_SHIFT)
    }

    pub fn raw_page_type(&self) -> u32 {
        (self.load() & TYPE_MASK) as u32
    }

    pub fn page_type(&self) -> Option<PageType> {
        PageType::from_raw(self.raw_page_type())
    }

    #[inline(always)]
    pub fn has_type(&self, t: PageType) -> bool {
        self.load() & TYPE_MASK == t as u64
    }

    /// Retype a page between the types that share the inline layout
    /// (Allocated, Heap, DescSlab): the order, flags and refcount stay.
    pub(in crate::mm) fn set_page_type(&self, t: PageType) {
        let w = self.load();
        debug_assert!(
            matches!(w & TYPE_MASK, ALLOCATED | HEAP | DESC_SLAB)
                && matches!(t, PageType::Allocated | PageType::Heap | PageType::DescSlab),
            "set_page_type {:?} on a page of type {}",
            t,
            w & TYPE_MASK
        );
        self.store((w & !TYPE_MASK) | t as u64);
    }

    pub fn refcount(&self) -> u32 {
        let w = self.load();
        match w & TYPE_MASK {
            FREE | BUDDY | PCP => 0,
            PAGE_TABLE | GMAP_TABLE => self.desc_head().map_or(0, MemdescHead::refcount),
            _ => (w >> REF_SHIFT) as u32,
        }
    }

    /// Set the refcount (a descriptor page's is in its descriptor; a free
    /// page has none: a no-op there, whose words hold list links).
    pub(in crate::mm) fn set_refcount(&self, v: u32) {
        if let Some(d) = self.desc_head() {
            let i = d.info.load(Ordering::Relaxed) & (REF_ONE - 1);
            d.info
                .store(i | ((v as u64) << REF_SHIFT), Ordering::Relaxed);
            return;
        }
        let w = self.load();
        if matches!(w & TYPE_MASK, FREE | BUDDY | PCP) {
            debug_assert!(v == 0, "refcount {v} on a free page");
            return;
        }
        self.store((w & (REF_ONE - 1)) | ((v as u64) << REF_SHIFT));
    }

    /// The word (or, for a descriptor page, the descriptor's info word)
    /// that holds the refcount; `None` for a free page, which has none
    /// (its words are list links).
    #[cfg(any(test, target_os = "none"))]
    fn ref_word(&self) -> Option<&AtomicU64> {
        match self.desc_head() {
            Some(d) => Some(&d.info),
            None if matches!(self.load() & TYPE_MASK, FREE | BUDDY | PCP) => None,
            None => Some(&self.memdesc),
        }
    }

    #[cfg(any(test, target_os = "none"))]
    /// `get_page`: take a reference (none on a free page: 0, unchanged).
    pub(in crate::mm) fn page_ref_inc(&self) -> u32 {
        self.ref_word().map_or(0, |r| {
            ((r.fetch_add(REF_ONE, Ordering::AcqRel) >> REF_SHIFT) + 1) as u32
        })
    }

    #[cfg(any(test, target_os = "none"))]
    /// `put_page` without the free: drop a reference, return what is left
    /// (0 on a free page, unchanged).
    pub(in crate::mm) fn page_ref_dec(&self) -> u32 {
        self.ref_word().map_or(0, |r| {
            ((r.fetch_sub(REF_ONE, Ordering::AcqRel) >> REF_SHIFT) as u32).wrapping_sub(1)
        })
    }

    /// Linux's `mapping`: there is none in one word (a gmap table's guest
    /// address lives in its descriptor), so always 0.
    pub fn mapping(&self) -> u64 {
        0
    }

    // -- the allocator's state changes (the same set in both layouts) ----

    #[inline(always)]
    pub(in crate::mm) fn make_free(&self) {
        self.store(0);
    }

    #[inline(always)]
    pub(in crate::mm) fn make_buddy(&self, order: u32) {
        self.store(
            PageType::Buddy as u64
                | ((order as u64) << ORDER_BITS_SHIFT)
                | (LINK_NIL << NEXT_SHIFT)
                | (LINK_NIL << PREV_SHIFT),
        );
    }

    #[inline(always)]
    pub(in crate::mm) fn make_allocated(&self, order: u32) {
        self.store(allocated_word(order));
    }

    #[inline(always)]
    pub(in crate::mm) fn make_pcp(&self, order: u32) {
        self.store(PageType::Pcp as u64 | ((order as u64) << ORDER_BITS_SHIFT));
    }

    #[inline(always)]
    pub(in crate::mm) fn make_tail(&self) {
        self.store(PageType::Tail as u64);
    }

    #[cfg(any(test, target_arch = "s390x"))]
    pub(in crate::mm) fn make_reserved(&self) {
        self.store(PageType::Reserved as u64 | (PageFlags::RESERVED.bits() << FLAGS_BITS_SHIFT));
    }

    #[inline(always)]
    /// `order` is the list's (a constant at the call): one store.
    pub(in crate::mm) fn pcp_to_allocated(&self, order: u32) {
        debug_assert_eq!(
            ((self.load() & ORDER_BITS) >> ORDER_BITS_SHIFT) as u32,
            order
        );
        self.store(allocated_word(order));
    }

    /// Nothing to do: `set_pcp_next` writes the whole Pcp word.
    #[inline(always)]
    pub(in crate::mm) fn allocated_to_pcp(&self) {}

    /// One comparison: the word is exactly what `alloc_pages` left.
    #[inline(always)]
    pub(in crate::mm) fn is_fresh_allocated(&self, order: u32) -> bool {
        self.load() == allocated_word(order)
    }

    // -- list links ------------------------------------------------------

    #[inline(always)]
    pub(in crate::mm) fn buddy_order(&self) -> u32 {
        ((self.load() & ORDER_BITS) >> ORDER_BITS_SHIFT) as u32
    }

    #[inline(always)]
    fn link(v: u64) -> u64 {
        if v == LINK_NIL {
            super::NIL
        } else {
            v
        }
    }

    #[inline(always)]
    pub(in crate::mm) fn buddy_next(&self) -> u64 {
        Self::link((self.load() >> NEXT_SHIFT) & LINK_MASK)
    }

    #[inline(always)]
    pub(in crate::mm) fn buddy_prev(&self) -> u64 {
        Self::link((self.load() >> PREV_SHIFT) & LINK_MASK)
    }

    #[inline(always)]
    pub(in crate::mm) fn set_buddy_next(&self, pfn: u64) {
        debug_assert!(pfn == super::NIL || pfn < LINK_NIL);
        let w = self.load() & !(LINK_MASK << NEXT_SHIFT);
        self.store(w | ((pfn & LINK_MASK) << NEXT_SHIFT));
    }

    #[inline(always)]
    pub(in crate::mm) fn set_buddy_prev(&self, pfn: u64) {
        debug_assert!(pfn == super::NIL || pfn < LINK_NIL);
        let w = self.load() & !(LINK_MASK << PREV_SHIFT);
        self.store(w | ((pfn & LINK_MASK) << PREV_SHIFT));
    }

    #[inline(always)]
    pub(in crate::mm) fn pcp_next(&self) -> *mut Page {
        let a = (self.load() >> 8) << 3;
        core::ptr::with_exposed_provenance_mut(a as usize)
    }

    /// The whole Pcp word: type, `order`, and the next head's address.
    #[inline(always)]
    pub(in crate::mm) fn set_pcp_next(&self, order: u32, next: *mut Page) {
        let a = next.expose_provenance() as u64;
        debug_assert!(a >> (64 - PCP_ADDR_SHIFT) == 0 && a & 7 == 0);
        self.store(
            (a << PCP_ADDR_SHIFT) | ((order as u64) << ORDER_BITS_SHIFT) | PageType::Pcp as u64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buddy_links_round_trip() {
        let p = Page::new();
        p.make_buddy(7);
        assert_eq!(p.buddy_order(), 7);
        assert_eq!(
            (p.buddy_next(), p.buddy_prev()),
            (super::super::NIL, super::super::NIL)
        );
        p.set_buddy_next(0x0fff_fffe);
        p.set_buddy_prev(3);
        assert_eq!(
            (p.buddy_next(), p.buddy_prev(), p.buddy_order()),
            (0x0fff_fffe, 3, 7)
        );
        assert_eq!(p.page_type(), Some(PageType::Buddy));
        p.set_buddy_next(super::super::NIL);
        assert_eq!(p.buddy_next(), super::super::NIL);
        assert_eq!(p.refcount(), 0);
        assert_eq!(p.raw_flags(), 0);
    }

    #[test]
    fn allocated_word_holds_order_flags_refcount() {
        let p = Page::new();
        p.make_allocated(3);
        assert_eq!(p.head_order(), 3);
        assert_eq!(p.raw_flags(), Page::head_flags(3));
        assert!(p.flags().contains(PageFlags::HEAD));
        assert_eq!(p.refcount(), 1);
        assert!(p.is_fresh_allocated(3));
        assert_eq!(p.page_ref_inc(), 2);
        assert!(!p.is_fresh_allocated(3));
        assert_eq!(p.page_ref_dec(), 1);
        p.set_flags(PageFlags::HEAD | PageFlags::DIRTY);
        assert_eq!(p.head_order(), 3);
        assert_eq!(p.refcount(), 1);
        p.set_page_type(PageType::Heap);
        assert_eq!((p.head_order(), p.refcount()), (3, 1));
        assert!(p.flags().contains(PageFlags::DIRTY));
    }

    #[test]
    fn pcp_word_links_by_entry_address() {
        let pages = [Page::new(), Page::new()];
        pages[0].make_pcp(2);
        pages[0].set_pcp_next(2, core::ptr::from_ref(&pages[1]).cast_mut());
        assert_eq!(pages[0].head_order(), 2);
        assert_eq!(pages[0].raw_flags(), Page::head_flags(2));
        assert_eq!(
            pages[0].pcp_next().cast_const(),
            core::ptr::from_ref(&pages[1])
        );
        pages[0].pcp_to_allocated(2);
        assert!(pages[0].is_fresh_allocated(2));
        pages[1].set_pcp_next(0, core::ptr::null_mut());
        assert!(pages[1].pcp_next().is_null());
    }

    #[test]
    fn zero_is_free_and_types_decode() {
        let p = Page::new();
        assert_eq!(p.page_type(), Some(PageType::Free));
        p.make_reserved();
        assert_eq!(p.page_type(), Some(PageType::Reserved));
        assert!(p.flags().contains(PageFlags::RESERVED));
        p.memdesc.store(0xf, Ordering::Relaxed);
        assert_eq!(p.page_type(), None);
        p.make_free();
        assert_eq!(p.memdesc(), 0);
    }
}
