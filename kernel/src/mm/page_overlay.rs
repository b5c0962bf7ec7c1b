//! The overlay layout of `struct page` (the default): 64 bytes, exactly
//! Linux's, with the 40 bytes after `flags` a `union` of per-use arms.
//! Reading an arm is never undefined behaviour (all arms are atomics over
//! the same words); *which* arm means something is the type tag's job, and
//! the accessors check it in debug builds.

use core::mem::{offset_of, size_of, ManuallyDrop};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use super::{ListLinks, PageFlags, PageType, ORDER_MASK, ORDER_SHIFT};

/// Generic use: an allocated page belongs to its owner.
#[repr(C)]
pub struct GenericArm {
    pub lru: ListLinks,
    pub mapping: AtomicU64,
    pub index: AtomicU64,
    pub private: AtomicU64,
}

/// A free page in the buddy allocator (Linux: `buddy_list`, order in
/// `private`).
#[repr(C)]
pub struct BuddyArm {
    pub buddy_list: ListLinks,
    /// Aliases `mapping`: always 0 while free.
    pub _mapping: AtomicU64,
    pub _index: AtomicU64,
    pub order: AtomicU64,
}

/// A free block's head parked in a per-CPU list (type `Pcp`): singly
/// linked by the address of the next page's entry, so the allocator's fast
/// path never converts between frame numbers and entries. Only `next` and
/// the `mapping` alias (0, checked on free) mean anything; the other words
/// keep whatever the last owner left. `alloc_pages` clears `next` (which is
/// `lru.next`) and `private`, as Linux's post_alloc_hook clears private.
#[repr(C)]
pub struct PcpArm {
    /// Aliases `lru.next`; null ends the list.
    pub(in crate::mm) next: AtomicPtr<Page>,
    pub _prev: AtomicU64,
    /// Aliases `mapping`: 0 while on the list.
    pub _mapping: AtomicU64,
    pub _index: AtomicU64,
    pub _private: AtomicU64,
}

/// The per-use words of `struct page`.
#[repr(C)]
pub union PageUnion {
    pub generic: ManuallyDrop<GenericArm>,
    pub buddy: ManuallyDrop<BuddyArm>,
    pub pcp: ManuallyDrop<PcpArm>,
    pub words: ManuallyDrop<[AtomicU64; 5]>,
}

/// `struct page`. Its fields are private: outside mm a page is read-only
/// (type, flags, refcount, words), and changes go through the handle that
/// owns it. Aligned to its size, so an entry's address has six
/// clear low bits (a `Pages` handle keeps the block's order there).
#[repr(C, align(64))]
pub struct Page {
    flags: AtomicU64,
    u: PageUnion,
    page_type: AtomicU32,
    refcount: AtomicU32,
    /// Linux's `memcg_data`; unused here.
    _spare: AtomicU64,
}

// Layout: exactly Linux's 64 bytes, with the union's words where Linux has
// them.
const _: () = assert!(size_of::<Page>() == 64);
const _: () = assert!(core::mem::align_of::<Page>() == 64);
const _: () = assert!(size_of::<PageUnion>() == 40);
const _: () = assert!(offset_of!(Page, flags) == 0);
const _: () = assert!(offset_of!(Page, u) == 8);
const _: () = assert!(offset_of!(Page, page_type) == 48);
const _: () = assert!(offset_of!(Page, refcount) == 52);
const _: () = assert!(offset_of!(Page, _spare) == 56);
/// Offsets in `struct page` that overlay types match (Linux TABLE_MATCH).
pub const FLAGS_OFFSET: usize = 0;
pub const LRU_OFFSET: usize = 8;
pub const MAPPING_OFFSET: usize = 24;
pub const INDEX_OFFSET: usize = 32;
pub const PRIVATE_OFFSET: usize = 40;
pub const PAGE_TYPE_OFFSET: usize = 48;
pub const REFCOUNT_OFFSET: usize = 52;
pub const SPARE_OFFSET: usize = 56;
const _: () = assert!(offset_of!(Page, page_type) == PAGE_TYPE_OFFSET);
const _: () = assert!(offset_of!(Page, refcount) == REFCOUNT_OFFSET);
const _: () = assert!(offset_of!(Page, _spare) == SPARE_OFFSET);
const _: () = assert!(8 + offset_of!(GenericArm, lru) == LRU_OFFSET);
const _: () = assert!(8 + offset_of!(GenericArm, mapping) == MAPPING_OFFSET);
const _: () = assert!(8 + offset_of!(GenericArm, index) == 32);
const _: () = assert!(8 + offset_of!(GenericArm, private) == 40);
const _: () = assert!(8 + offset_of!(BuddyArm, _mapping) == MAPPING_OFFSET);
const _: () = assert!(8 + offset_of!(BuddyArm, order) == 40);
const _: () = assert!(size_of::<BuddyArm>() == 40 && size_of::<GenericArm>() == 40);
const _: () = assert!(size_of::<PcpArm>() == 40);
const _: () = assert!(8 + offset_of!(PcpArm, next) == LRU_OFFSET);
const _: () = assert!(8 + offset_of!(PcpArm, _mapping) == MAPPING_OFFSET);
const _: () = assert!(size_of::<AtomicPtr<Page>>() == size_of::<AtomicU64>());

#[allow(clippy::new_without_default)]
impl Page {
    /// A zeroed entry: a free page inside a buddy block.
    pub const fn new() -> Self {
        // SAFETY: all fields are atomics, for which all-zero is valid.
        unsafe { core::mem::zeroed() }
    }

    fn union(&self) -> &PageUnion {
        &self.u
    }

    pub fn flags(&self) -> PageFlags {
        PageFlags::from_bits_retain(self.flags.load(Ordering::Relaxed) & !ORDER_MASK)
    }

    #[cfg_attr(not(any(test, target_arch = "s390x")), allow(dead_code))]
    pub(in crate::mm) fn set_flags(&self, f: PageFlags) {
        let order = self.flags.load(Ordering::Relaxed) & ORDER_MASK;
        self.flags
            .store((f.bits() & !ORDER_MASK) | order, Ordering::Relaxed);
    }

    pub fn raw_flags(&self) -> u64 {
        self.flags.load(Ordering::Relaxed)
    }

    /// Order of the allocated block this page heads (flags order field).
    pub fn head_order(&self) -> u32 {
        ((self.flags.load(Ordering::Relaxed) & ORDER_MASK) >> ORDER_SHIFT) as u32
    }

    /// The whole flags word of a freshly allocated head of `order`: what
    /// `set_head` stores, and what a free of that order expects to find.
    #[inline(always)]
    pub const fn head_flags(order: u32) -> u64 {
        let f = if order > 0 { PageFlags::HEAD.bits() } else { 0 };
        f | ((order as u64) << ORDER_SHIFT)
    }

    /// Mark this page the head of an allocated block of `order`.
    pub(in crate::mm) fn set_head(&self, order: u32) {
        self.flags.store(Self::head_flags(order), Ordering::Relaxed);
    }

    pub fn raw_page_type(&self) -> u32 {
        self.page_type.load(Ordering::Relaxed)
    }

    /// The live union arm; `None` for a value no code writes (corruption).
    pub fn page_type(&self) -> Option<PageType> {
        PageType::from_raw(self.raw_page_type())
    }

    /// Retag the page. Only mm's alloc, free, ctor and dtor paths do this:
    /// a page's type says which descriptor it is, so changing it is
    /// changing what the page *is*.
    pub(in crate::mm) fn set_page_type(&self, t: PageType) {
        self.page_type.store(t as u32, Ordering::Relaxed);
    }

    pub fn has_type(&self, t: PageType) -> bool {
        self.raw_page_type() == t as u32
    }

    pub fn refcount(&self) -> u32 {
        self.refcount.load(Ordering::Relaxed)
    }

    pub(in crate::mm) fn set_refcount(&self, v: u32) {
        self.refcount.store(v, Ordering::Relaxed);
    }

    #[cfg(any(test, target_os = "none"))]
    /// `get_page`: take a reference.
    pub(in crate::mm) fn page_ref_inc(&self) -> u32 {
        self.refcount.fetch_add(1, Ordering::AcqRel) + 1
    }

    #[cfg(any(test, target_os = "none"))]
    /// `put_page` without the free: drop a reference, return what is left.
    pub(in crate::mm) fn page_ref_dec(&self) -> u32 {
        self.refcount.fetch_sub(1, Ordering::AcqRel) - 1
    }

    /// The `mapping` word, whatever arm is live (Linux's bad_page check reads
    /// it the same way).
    pub fn mapping(&self) -> u64 {
        self.word(2)
    }

    /// Union word `i` (0 to 4), whatever arm is live: for dumps and checks
    /// that look past the type. Read-only: writing goes through an arm,
    /// which only mm (or the owner of a handle) can reach.
    pub fn word(&self, i: usize) -> u64 {
        self.words()[i % 5].load(Ordering::Relaxed)
    }

    /// All five union words.
    pub(in crate::mm) fn words(&self) -> &[AtomicU64; 5] {
        // SAFETY: every arm is atomics over the same 40 bytes, so viewing them
        // as five words is valid whatever arm is live.
        unsafe { &self.union().words }
    }

    /// Zero the union words (a page changing owner starts clean). Atomic
    /// stores, like every write to `struct page`: any CPU may read any
    /// entry at any time (a misuse report reads a page it does not own).
    pub(in crate::mm) fn clear_union(&self) {
        for w in self.words() {
            w.store(0, Ordering::Relaxed);
        }
    }

    #[cfg(any(test, target_os = "none"))]
    /// The generic arm (an allocated page's owner words; the owner reaches
    /// it through its `Pages` handle).
    pub(in crate::mm) fn generic(&self) -> &GenericArm {
        debug_assert!(
            matches!(self.page_type(), Some(PageType::Allocated | PageType::Heap)),
            "generic arm of a {:?} page",
            self.page_type()
        );
        // SAFETY: see `words`: every arm is valid for any contents.
        unsafe { &self.union().generic }
    }

    /// The per-CPU list arm (type `Pcp`).
    pub(in crate::mm) fn pcp(&self) -> &PcpArm {
        debug_assert!(
            self.has_type(PageType::Pcp),
            "pcp arm of a {:?} page",
            self.page_type()
        );
        // SAFETY: see `words`: every arm is valid for any contents (a raw
        // pointer has no validity requirement).
        unsafe { &self.union().pcp }
    }

    /// The buddy arm (free pages).
    pub(in crate::mm) fn buddy(&self) -> &BuddyArm {
        debug_assert!(
            self.page_type().is_some_and(PageType::is_free),
            "buddy arm of a {:?} page",
            self.page_type()
        );
        // SAFETY: see `words`.
        unsafe { &self.union().buddy }
    }

    // -- the allocator's state changes (the same set in both layouts) ----

    /// A page inside a free block: all zero (a zeroed entry).
    #[inline(always)]
    pub(in crate::mm) fn make_free(&self) {
        self.flags.store(0, Ordering::Relaxed);
        self.clear_union();
        self.refcount.store(0, Ordering::Relaxed);
        self.set_page_type(PageType::Free);
    }

    /// The head of a free buddy block of `order`, on no list yet.
    #[inline(always)]
    pub(in crate::mm) fn make_buddy(&self, order: u32) {
        self.set_page_type(PageType::Buddy);
        self.flags.store(0, Ordering::Relaxed);
        self.set_refcount(0);
        self.clear_union();
        self.buddy().order.store(order as u64, Ordering::Relaxed);
    }

    /// The head of an allocated block of `order`: refcount 1, owner words
    /// clear.
    #[inline(always)]
    pub(in crate::mm) fn make_allocated(&self, order: u32) {
        self.clear_union();
        self.set_head(order);
        self.set_refcount(1);
        self.set_page_type(PageType::Allocated);
    }

    /// The head of a free block of `order` for a per-CPU list: laid out as
    /// an allocated block, refcount 0.
    #[inline(always)]
    pub(in crate::mm) fn make_pcp(&self, order: u32) {
        self.set_head(order);
        self.set_refcount(0);
        self.set_page_type(PageType::Pcp);
    }

    /// Any page of a block but its head.
    #[inline(always)]
    pub(in crate::mm) fn make_tail(&self) {
        self.set_page_type(PageType::Tail);
    }

    /// A page the allocator never hands out.
    #[cfg(any(test, target_arch = "s390x"))]
    pub(in crate::mm) fn make_reserved(&self) {
        self.set_page_type(PageType::Reserved);
        self.set_flags(PageFlags::RESERVED);
    }

    /// A per-CPU list head leaves the list allocated: `lru.next` held the
    /// link, `private` is the last owner's (Linux's post_alloc_hook clears
    /// it); flags already say the order.
    #[inline(always)]
    pub(in crate::mm) fn pcp_to_allocated(&self, _order: u32) {
        let arm = self.pcp();
        arm.next.store(core::ptr::null_mut(), Ordering::Relaxed);
        arm._private.store(0, Ordering::Relaxed);
        self.set_refcount(1);
        self.set_page_type(PageType::Allocated);
    }

    /// An allocated head whose free passed the checks goes on a per-CPU
    /// list (the caller links it with `set_pcp_next`).
    #[inline(always)]
    pub(in crate::mm) fn allocated_to_pcp(&self) {
        self.set_refcount(0);
        self.set_page_type(PageType::Pcp);
    }

    /// Whether this is exactly what `alloc_pages` of `order` leaves: an
    /// Allocated head with flags of its order, refcount 1, mapping clear
    /// (the free fast path's whole check).
    #[inline(always)]
    pub(in crate::mm) fn is_fresh_allocated(&self, order: u32) -> bool {
        self.has_type(PageType::Allocated)
            && self.refcount() == 1
            && ((self.raw_flags() ^ Self::head_flags(order)) | self.mapping()) == 0
    }

    // -- list links ------------------------------------------------------

    /// A Buddy head's order.
    #[inline(always)]
    pub(in crate::mm) fn buddy_order(&self) -> u32 {
        self.buddy().order.load(Ordering::Relaxed) as u32
    }

    #[inline(always)]
    pub(in crate::mm) fn buddy_next(&self) -> u64 {
        self.buddy().buddy_list.next.load(Ordering::Relaxed)
    }

    #[inline(always)]
    pub(in crate::mm) fn buddy_prev(&self) -> u64 {
        self.buddy().buddy_list.prev.load(Ordering::Relaxed)
    }

    #[inline(always)]
    pub(in crate::mm) fn set_buddy_next(&self, pfn: u64) {
        self.buddy().buddy_list.next.store(pfn, Ordering::Relaxed);
    }

    #[inline(always)]
    pub(in crate::mm) fn set_buddy_prev(&self, pfn: u64) {
        self.buddy().buddy_list.prev.store(pfn, Ordering::Relaxed);
    }

    /// The next head on a per-CPU list (null: the end).
    #[inline(always)]
    pub(in crate::mm) fn pcp_next(&self) -> *mut Page {
        self.pcp().next.load(Ordering::Relaxed)
    }

    /// Link a per-CPU list head of `order` to `next`.
    #[inline(always)]
    pub(in crate::mm) fn set_pcp_next(&self, _order: u32, next: *mut Page) {
        self.pcp().next.store(next, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_aliases_across_arms() {
        let p = Page::new();
        p.set_page_type(PageType::Allocated);
        p.generic().mapping.store(0x8000_0000, Ordering::Relaxed);
        assert_eq!(p.mapping(), 0x8000_0000);
        assert_eq!(p.word(2), 0x8000_0000);
        p.set_page_type(PageType::Free);
        assert_eq!(p.buddy()._mapping.load(Ordering::Relaxed), 0x8000_0000);
        p.clear_union();
        assert_eq!(p.mapping(), 0);
    }

    #[test]
    fn flags_keep_the_order_field() {
        let p = Page::new();
        p.set_head(10);
        assert_eq!(p.head_order(), 10);
        assert!(p.flags().contains(PageFlags::HEAD));
        p.set_flags(PageFlags::HEAD | PageFlags::DIRTY);
        assert_eq!(p.head_order(), 10);
        p.set_head(0);
        assert_eq!(p.head_order(), 0);
        assert!(!p.flags().contains(PageFlags::HEAD));
    }

    #[test]
    fn refcount_and_types() {
        let p = Page::new();
        assert_eq!(p.page_type(), Some(PageType::Free));
        p.set_refcount(1);
        assert_eq!(p.page_ref_inc(), 2);
        assert_eq!(p.page_ref_dec(), 1);
        p.page_type.store(99, Ordering::Relaxed);
        assert_eq!(p.page_type(), None);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "generic arm of a Some(PageTable) page")]
    fn wrong_arm_is_caught() {
        let p = Page::new();
        p.set_page_type(PageType::PageTable);
        let _ = p.generic();
    }
}
