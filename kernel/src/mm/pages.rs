//! The `Pages` handle and the page allocator's entry points: Linux's
//! `alloc_pages` and `__free_pages` (mm/page_alloc.c), with the per-CPU
//! fast paths inlined into callers and everything else out of line, and
//! the `BUG: Bad page state` report of a refused free.

use core::ptr::NonNull;

use super::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE};
use super::memmap::MemMap;
use super::page::Page;
use super::pcp::PCP_MAX_ORDER;
use super::percpu::{drain_pcp_batch, with_pcp};
use super::{
    clear_frames, fail, memmap, pfn_to_page, zone, AllocError, AllocFlags, FreeError, MAX_ORDER,
};

/// An owned block of 2^order frames from `alloc_pages`: like Linux's
/// `struct page *`, a reference to the head page's entry, so the handle is
/// one word. The order is in the entry address's low bits in the overlay
/// layout (entries are 64-byte aligned); the memdesc layout's 8-byte
/// entries have no room there, so it keeps the order in the address's top
/// four bits (entry addresses are far below 2^60). Converting to a frame number is arithmetic, done
/// only when asked. Not `Clone`: the handle is the ownership. Give it back
/// with `free_pages` (which can refuse and say why); dropping it frees it
/// too (a refusal is then reported and the block stays allocated, owned by
/// nobody), so no early return leaks it.
#[must_use = "an unused handle frees its frames at once"]
pub struct Pages {
    tagged: NonNull<Page>,
}

/// Where `Pages::tagged` keeps the order: the low bits the overlay's
/// 64-byte alignment leaves clear, or memdesc's top four bits.
#[cfg(not(feature = "memdesc"))]
const ORDER_SHIFT: u32 = 0;
#[cfg(feature = "memdesc")]
const ORDER_SHIFT: u32 = usize::BITS - 4;
#[cfg(not(feature = "memdesc"))]
const ORDER_TAG: usize = core::mem::align_of::<Page>() - 1;
#[cfg(feature = "memdesc")]
const ORDER_TAG: usize = 0xf << ORDER_SHIFT;
const _: () = assert!(MAX_ORDER as usize <= ORDER_TAG >> ORDER_SHIFT);

// SAFETY: a `Pages` is a `&'static Page` (Page is all atomics, so Sync)
// plus an order; the frames it owns may be handed to another CPU.
unsafe impl Send for Pages {}
// SAFETY: as above; `&Pages` only reads the entry.
unsafe impl Sync for Pages {}

impl PartialEq for Pages {
    fn eq(&self, other: &Self) -> bool {
        self.tagged == other.tagged
    }
}

impl Eq for Pages {}

impl core::fmt::Debug for Pages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pages")
            .field("pfn", &self.pfn())
            .field("order", &self.order())
            .finish()
    }
}

impl Pages {
    #[inline(always)]
    fn new(page: &'static Page, order: u32) -> Self {
        debug_assert!(order <= MAX_ORDER);
        let p = NonNull::from(page);
        debug_assert!(
            p.addr().get() & ORDER_TAG == 0,
            "a memmap entry with tag bits set"
        );
        Self {
            tagged: p.map_addr(|a| a | (((order as usize) << ORDER_SHIFT) & ORDER_TAG)),
        }
    }

    pub fn pfn(&self) -> Pfn {
        // A handle's page is always an entry of the memmap.
        memmap().page_to_pfn(self.page()).unwrap_or(Pfn(u64::MAX))
    }

    #[inline(always)]
    pub fn order(&self) -> u32 {
        ((self.tagged.addr().get() & ORDER_TAG) >> ORDER_SHIFT) as u32
    }

    pub fn nr_pages(&self) -> u64 {
        1 << self.order()
    }

    pub fn phys(&self) -> PhysAddr {
        PhysAddr(self.pfn().0 * PAGE_SIZE)
    }

    pub fn virt(&self) -> VirtAddr {
        memmap().pfn_to_virt(self.pfn())
    }

    /// The head page's metadata, borrowed from the handle.
    #[inline(always)]
    pub fn page(&self) -> &Page {
        self.head()
    }

    /// The head page (mm: the allocator's lists hold pages for as long as
    /// the memmap lives).
    #[inline(always)]
    pub(in crate::mm) fn head(&self) -> &'static Page {
        let p = self.tagged.as_ptr().map_addr(|a| a & !ORDER_TAG);
        // SAFETY: `tagged` is a `&'static Page` with the order or-ed into
        // bits the alignment leaves clear; masking them restores it.
        unsafe { &*p }
    }

    /// The frames' memory. The handle owns them, so this is exclusive.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let ptr = memmap().frame_ptr(self.pfn());
        // SAFETY: the block is allocated to this handle alone, identity
        // (or host-buffer) mapped, and 2^order pages long.
        unsafe { core::slice::from_raw_parts_mut(ptr, (self.nr_pages() * PAGE_SIZE) as usize) }
    }

    /// Give up the handle, keeping the frames allocated (for structures that
    /// track them by address, like CPU stacks).
    pub fn into_raw(self) -> (Pfn, u32) {
        let r = (self.pfn(), self.order());
        core::mem::forget(self);
        r
    }

    /// The head page, giving up the handle (mm's ctors, which turn the
    /// block into a typed frame).
    pub(in crate::mm) fn into_head(self) -> &'static Page {
        let page = self.head();
        core::mem::forget(self);
        page
    }

    /// A handle for the allocated block headed by `page` (mm's dtors).
    pub(in crate::mm) fn from_head(page: &'static Page, order: u32) -> Self {
        Self::new(page, order)
    }

    /// Rebuild a handle from `into_raw`.
    ///
    /// # Safety
    /// `(pfn, order)` must come from `into_raw` and no other handle to the
    /// block may exist.
    pub unsafe fn from_raw(pfn: Pfn, order: u32) -> Self {
        // A pfn outside the memmap or an impossible order is a broken
        // contract: stop rather than build a handle to the wrong block.
        assert!(order <= MAX_ORDER, "Pages::from_raw: order {order}");
        Self::new(&memmap().pages()[pfn.0 as usize], order)
    }
}

/// Allocate 2^order contiguous frames (Linux alloc_pages). The fast path
/// (an order this CPU keeps lists for, a block on its list, no injected
/// failure armed) is inlined into the caller; everything else is
/// `alloc_pages_slow`.
#[inline(always)]
pub fn alloc_pages(order: u32, flags: AllocFlags) -> Result<Pages, AllocError> {
    if order > MAX_ORDER {
        return Err(AllocError::BadOrder);
    }
    if order <= PCP_MAX_ORDER && !fail::armed() {
        if let Some(Some(page)) = with_pcp(|pcp| pcp.alloc(order)) {
            let p = Pages::new(page, order);
            if flags.contains(AllocFlags::ZERO) {
                zero_block(&p);
            }
            return Ok(p);
        }
    }
    // Returned in a register: the only error left is NoMemory.
    alloc_pages_slow(order, flags).ok_or(AllocError::NoMemory)
}

/// `alloc_pages` of a block that lies wholly below real address `limit`
/// (the zone directly: the per-CPU lists hold blocks from anywhere).
pub fn alloc_pages_below(order: u32, limit: u64, flags: AllocFlags) -> Result<Pages, AllocError> {
    if fail::should_fail() {
        return Err(AllocError::NoMemory);
    }
    let map = memmap();
    let pfn = zone().lock().alloc_below(order, limit / PAGE_SIZE, flags)?;
    Ok(Pages::new(&map.pages()[pfn.0 as usize], order))
}

#[cold]
#[inline(never)]
fn alloc_pages_slow(order: u32, flags: AllocFlags) -> Option<Pages> {
    if fail::should_fail() {
        return None;
    }
    let map = memmap();
    // Orders the per-CPU lists keep: refill this CPU's list. The zone
    // directly for larger orders, or when the list is busy (host tests).
    // SMP: the zone lock; interruption handlers never allocate, so it
    // cannot be taken recursively on one CPU.
    let listed = if order <= PCP_MAX_ORDER {
        with_pcp(|pcp| pcp.alloc_or_refill(map, zone(), order).ok())
    } else {
        None
    };
    let page = match listed {
        Some(page) => page?,
        None => {
            let pfn = zone().lock().alloc(order, AllocFlags::empty()).ok()?;
            &map.pages()[pfn.0 as usize]
        }
    };
    let p = Pages::new(page, order);
    if flags.contains(AllocFlags::ZERO) {
        zero_block(&p);
    }
    Some(p)
}

#[inline(never)]
fn zero_block(p: &Pages) {
    // SAFETY: the block was just allocated to `p`: nobody else uses it.
    unsafe { clear_frames(memmap().frame_ptr(p.pfn()), PAGE_SIZE << p.order()) };
}

/// Give frames back (Linux __free_pages). A block left in a bad state
/// (extra reference, mapping still set, a page-table type) is refused,
/// reported, and handed back unchanged so the caller can fix it. The
/// order-0 fast path is inlined into the caller; orders 1 to 3 go to the
/// per-CPU lists out of line.
#[inline(always)]
pub fn free_pages(p: Pages) -> Result<(), (Pages, FreeError)> {
    // The handle is consumed here; it is rebuilt only for a refusal.
    let p = core::mem::ManuallyDrop::new(p);
    if p.order() == 0 {
        match with_pcp(|pcp| pcp.free(p.head()).then(|| pcp.over_high())) {
            Some(Some(false)) => return Ok(()),
            Some(Some(true)) => {
                drain_pcp_batch();
                return Ok(());
            }
            _ => {}
        }
    }
    free_pages_slow(p.tagged)
}

/// Everything but the inlined order-0 fast path: orders 1 to 3 through the
/// per-CPU lists, larger ones and every refusal through the zone.
#[inline(never)]
fn free_pages_slow(tagged: NonNull<Page>) -> Result<(), (Pages, FreeError)> {
    let p = core::mem::ManuallyDrop::new(Pages { tagged });
    let map = memmap();
    // A handle's page is an entry of the memmap: its index is the pfn.
    let index = (p.page() as *const Page as usize - map.pages().as_ptr() as usize)
        / core::mem::size_of::<Page>();
    let pfn = Pfn(index as u64);
    match free_block_in(map, pfn, p.order()) {
        Ok(()) => Ok(()),
        Err(e) => {
            report_bad_page(pfn, e);
            Err((core::mem::ManuallyDrop::into_inner(p), e))
        }
    }
}

impl Drop for Pages {
    /// A handle going out of scope gives its frames back. A refusal was
    /// reported (`BUG: Bad page state`) by `free_pages`; the block stays
    /// allocated, owned by nobody, rather than freed in a bad state.
    fn drop(&mut self) {
        let p = Pages {
            tagged: self.tagged,
        };
        if let Err((p, _)) = free_pages(p) {
            core::mem::forget(p);
        }
    }
}

/// Free by frame number, as Linux's free_pages(addr, order) does: the path
/// misuse comes through (double free, wrong order, reserved pages).
///
/// # Safety
/// If the free succeeds, the frames are gone: the caller must not use them
/// afterwards, and no `Pages` handle for them may survive.
pub unsafe fn free_pages_raw(pfn: Pfn, order: u32) -> Result<(), FreeError> {
    let r = free_block(pfn, order);
    if let Err(e) = r {
        report_bad_page(pfn, e);
    }
    r
}

pub(super) fn free_block(pfn: Pfn, order: u32) -> Result<(), FreeError> {
    free_block_in(memmap(), pfn, order)
}

#[inline(always)]
fn free_block_in(map: &'static MemMap<'static>, pfn: Pfn, order: u32) -> Result<(), FreeError> {
    if order <= PCP_MAX_ORDER {
        if let Some(r) = with_pcp(|pcp| pcp.free_or_fallback(map, zone(), pfn, order)) {
            return r;
        }
    }
    zone().lock().free(pfn, order)
}

/// Set by a misuse test that makes frees refused on purpose: its refusals
/// are printed as expected. The test runner clears it after every case, so
/// it never hides a refusal of a later case.
static REFUSALS_EXPECTED: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Tests: the refusals the running case provokes are expected (`true`), or
/// no longer (`false`, which the runner sets after each case).
pub fn expect_refusals(on: bool) {
    REFUSALS_EXPECTED.store(on, core::sync::atomic::Ordering::Relaxed);
}

fn report_bad_page(pfn: Pfn, e: FreeError) {
    let note = if REFUSALS_EXPECTED.load(core::sync::atomic::Ordering::Relaxed) {
        " (refused, as the test expects)"
    } else {
        " (refused)"
    };
    let (t, refc, mapping, flags) = match pfn_to_page(pfn) {
        Some(p) => (p.raw_page_type(), p.refcount(), p.mapping(), p.raw_flags()),
        None => (0, 0, 0, 0),
    };
    crate::pr_info!(
        "BUG: Bad page state: pfn:{:#x} type:{:#x} refcount:{} mapping:{:#x} flags:{:#x}: {}{}",
        pfn.0,
        t,
        refc,
        mapping,
        flags,
        e,
        note
    );
}
