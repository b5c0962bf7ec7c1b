//! Physical memory: the memmap of `struct page`, the buddy allocator and the
//! kernel heap.
//!
//! SMP: one lock per allocator (the zone lock here, the heap lock in
//! `heap`); blocks of orders 0 to 3 go through per-CPU lists that need no
//! lock (`pcp`). Places that assume one CPU say so with an `SMP:` comment.

pub mod addr;
pub(crate) mod buddy;
pub mod fail;
pub mod frame;
pub mod gtdesc;
pub mod heap;
pub mod memmap;
pub mod page;
pub(crate) mod pcp;
pub mod ptdesc;

#[cfg(test)]
mod buddy_tests;
#[cfg(test)]
mod frame_tests;
#[cfg(target_os = "none")]
mod ktests;

use core::ptr::NonNull;
#[cfg(not(target_arch = "s390x"))]
use core::sync::atomic::{AtomicU32, Ordering};

use spin::{Mutex, Once};

use addr::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE};
pub use buddy::{AllocError, AllocFlags, FreeError, MAX_ORDER};
use buddy::{BuddyAllocator, CheckError, CheckStats};
use memmap::MemMap;
use page::Page;
use pcp::{PcpList, PCP_MAX_ORDER};

static MEMMAP: Once<MemMap<'static>> = Once::new();
/// The zone lock. SMP: taken by every CPU for refills, drains and blocks
/// above order 3; the per-CPU lists take the rest without it.
static ZONE: Once<Mutex<BuddyAllocator<'static>>> = Once::new();

const MAX_PCP: usize = crate::sclp::info::MAX_CPUS;

/// Each CPU's lists. A CPU reaches its own through the `PCP` slot of its
/// lowcore (Linux s390 finds per-CPU data through the lowcore too), so the
/// fast path costs one load to find them.
struct PerCpuLists([PcpList<'static>; MAX_PCP]);

// SAFETY: `PcpList` is not `Sync` because only its owner may push and pop.
// Element i is only changed by CPU i, which reaches it through its own
// lowcore slot with interruptions masked (`with_pcp`); host tests, whose
// threads all play CPU 0, take a flag first. Other CPUs only read
// `count()`, an atomic load.
unsafe impl Sync for PerCpuLists {}

static PCP: PerCpuLists = PerCpuLists([const { PcpList::new() }; MAX_PCP]);

/// What the `PCP` lowcore slot of CPU `cpu` holds: the address of its list.
/// `smp` writes it into each secondary's lowcore before starting it.
#[cfg(target_arch = "s390x")]
pub fn pcp_slot_value(cpu: usize) -> u64 {
    core::ptr::from_ref(&PCP.0[cpu % MAX_PCP]).expose_provenance() as u64
}

/// Set the boot CPU's `PCP` lowcore slot (first thing `start_kernel` does).
#[cfg(target_arch = "s390x")]
pub fn init_boot_cpu_pcp() {
    // SAFETY: PCP is zdat's software slot; nothing reads it before this.
    unsafe {
        crate::arch::s390x::insn::lowcore_write_u64(crate::arch::lowcore::PCP, pcp_slot_value(0))
    };
}

/// Run `f` on this CPU's list.
///
/// On s390x nothing else can be touching it: only this CPU uses it, and
/// kernel code runs with external and I/O interruptions masked, so nothing
/// can interrupt a list operation half-way (see `pcp`). Host tests run
/// threads that all play CPU 0, so there a flag admits one at a time and
/// the others fall back to the zone lock (`None`).
#[inline(always)]
fn with_pcp<R>(f: impl FnOnce(&PcpList<'static>) -> R) -> Option<R> {
    #[cfg(target_arch = "s390x")]
    {
        debug_assert!(
            crate::arch::s390x::insn::psw_mask()
                & (crate::arch::psw::mask::EXT | crate::arch::psw::mask::IO)
                == 0,
            "page allocator entered with interruptions enabled"
        );
        let slot = crate::arch::s390x::insn::lowcore_read_u64(crate::arch::lowcore::PCP);
        // SAFETY: the slot holds the address of an element of `PCP` (set by
        // `init_boot_cpu_pcp` or `smp` before the CPU runs any other code).
        Some(f(unsafe {
            &*core::ptr::with_exposed_provenance::<PcpList<'static>>(slot as usize)
        }))
    }
    #[cfg(not(target_arch = "s390x"))]
    {
        static BUSY: AtomicU32 = AtomicU32::new(0);
        if BUSY
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let r = f(&PCP.0[0]);
        BUSY.store(0, Ordering::Release);
        Some(r)
    }
}

/// Where memory management put things at boot.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub memory: u64,
    pub memmap_start: PhysAddr,
    pub memmap_bytes: u64,
    pub firmware: (PhysAddr, PhysAddr),
    /// TOD-clock units spent initialising the memmap and the allocator.
    pub init_tod: u64,
}

static LAYOUT: Once<Layout> = Once::new();

/// Errors of `init`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The memmap would not fit below the firmware area.
    NoRoomForMemmap,
    /// Too little memory to run at all.
    TooSmall,
}

/// The s390-ccw BIOS QEMU still loads at (min(memory, 2 GiB) - 2 MiB),
/// 64 KiB aligned (hw/s390x/ipl.c). It never runs with -kernel, but zdat
/// keeps its 2 MiB reserved rather than rely on that.
pub fn firmware_range(memory: u64) -> (PhysAddr, PhysAddr) {
    let top = memory.min(0x8000_0000);
    let start = top.saturating_sub(0x20_0000) & !0xffff;
    (PhysAddr(start), PhysAddr(top))
}

/// Zero `len` bytes of frames at `ptr` (page multiples).
///
/// # Safety
/// The memory must be owned by the caller (free or just allocated).
pub unsafe fn clear_frames(ptr: *mut u8, len: u64) {
    #[cfg(target_arch = "s390x")]
    // SAFETY: forwarded to the caller.
    unsafe {
        crate::arch::s390x::mem::clear(ptr as u64, len)
    };
    #[cfg(not(target_arch = "s390x"))]
    // SAFETY: forwarded to the caller.
    unsafe {
        core::ptr::write_bytes(ptr, 0, len as usize)
    };
}

/// Build the memmap right after the kernel image, reserve what is not
/// allocatable and give the rest to the buddy allocator. Identity mapping:
/// a frame's kernel address is its real address.
#[cfg(target_arch = "s390x")]
pub fn init(
    memory: u64,
    image_start: PhysAddr,
    image_end: PhysAddr,
) -> Result<&'static Layout, InitError> {
    use crate::arch::s390x::tod::stck;
    let t0 = stck();
    let nr_pages = memory / PAGE_SIZE;
    if nr_pages < 1024 {
        return Err(InitError::TooSmall);
    }
    let memmap_start = image_end
        .align_up(PAGE_SIZE)
        .ok_or(InitError::NoRoomForMemmap)?;
    let memmap_bytes = nr_pages * core::mem::size_of::<Page>() as u64;
    let memmap_end = PhysAddr(memmap_start.0 + memmap_bytes)
        .align_up(PAGE_SIZE)
        .ok_or(InitError::NoRoomForMemmap)?;
    let fw = firmware_range(memory);
    if memmap_end > fw.0 {
        return Err(InitError::NoRoomForMemmap);
    }
    // SAFETY: [memmap_start, memmap_end) lies between the image and the
    // firmware area, inside memory, and nothing uses it yet.
    unsafe { clear_frames(memmap_start.0 as *mut u8, memmap_end.0 - memmap_start.0) };
    // SAFETY: the range was just zeroed (a valid Page is all atomics, zero
    // is a valid value) and is used for nothing else from now on.
    let pages: &'static [Page] =
        unsafe { core::slice::from_raw_parts(memmap_start.0 as *const Page, nr_pages as usize) };
    // SAFETY: identity mapping: frame n is at address n * 4096, for all of
    // memory, and the memmap covers exactly that memory.
    let map = MEMMAP
        .call_once(|| unsafe { MemMap::new(pages, core::ptr::with_exposed_provenance_mut(0)) });
    let mut b = BuddyAllocator::new(map);
    // Lowcore (prefix area, 8 KiB).
    b.reserve_range(Pfn(0), Pfn(2));
    // Image and memmap.
    b.reserve_range(image_start.pfn(), memmap_end.pfn());
    b.reserve_range(fw.0.pfn(), fw.1.pfn());
    b.add_free_range(Pfn(2), image_start.pfn());
    b.add_free_range(memmap_end.pfn(), fw.0.pfn());
    b.add_free_range(fw.1.pfn(), Pfn(nr_pages));
    ZONE.call_once(|| Mutex::new(b));
    let layout = LAYOUT.call_once(|| Layout {
        memory,
        memmap_start,
        memmap_bytes,
        firmware: fw,
        init_tod: stck() - t0,
    });
    Ok(layout)
}

/// Set up the global memmap and allocator over simulated memory, once per
/// test process, so host tests can use everything built on `alloc_pages`
/// (page tables, address spaces).
#[cfg(all(test, not(target_arch = "s390x")))]
pub fn init_for_host_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        const FRAMES: u64 = 16 * 1024;
        // Aligned like the kernel's identity map (to the largest block), so
        // virtual-address alignment (pmd_pgtable_page) matches physical.
        let layout = std::alloc::Layout::from_size_align((FRAMES * PAGE_SIZE) as usize, 4 << 20)
            .expect("layout");
        // SAFETY: a non-zero size; the memory is leaked on purpose: it is
        // the simulated RAM for the rest of the process.
        let ram = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ram.is_null());
        let pages: &'static [Page] = Vec::leak((0..FRAMES).map(|_| Page::new()).collect());
        // SAFETY: `ram` is FRAMES frames owned by nothing else, forever.
        let map = MEMMAP.call_once(|| unsafe { MemMap::new(pages, ram) });
        let mut b = BuddyAllocator::new(map);
        b.reserve_range(Pfn(0), Pfn(2));
        b.add_free_range(Pfn(2), Pfn(FRAMES));
        ZONE.call_once(|| Mutex::new(b));
    });
}

/// The head page of a frame (host tests reach its refcount).
#[cfg(test)]
pub(crate) fn frame_page_for_tests<D: frame::FrameDesc>(f: &frame::Frame<D>) -> &'static Page {
    f.head()
}

/// Host tests that use the global allocator and compare its counts take
/// turns through this lock (it also sets the allocator up).
#[cfg(all(test, not(target_arch = "s390x")))]
pub fn host_test_serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    init_for_host_tests();
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn layout() -> Option<&'static Layout> {
    LAYOUT.get()
}

fn zone() -> &'static Mutex<BuddyAllocator<'static>> {
    ZONE.get().expect("mm::init has not run")
}

pub fn memmap() -> &'static MemMap<'static> {
    MEMMAP.get().expect("mm::init has not run")
}

pub fn pfn_to_page(pfn: Pfn) -> Option<&'static Page> {
    memmap().pfn_to_page(pfn)
}

pub fn page_to_pfn(page: &Page) -> Option<Pfn> {
    memmap().page_to_pfn(page)
}

pub fn virt_to_page(va: VirtAddr) -> Option<&'static Page> {
    memmap().virt_to_page(va)
}

pub fn page_address(page: &Page) -> Option<VirtAddr> {
    memmap().page_address(page)
}

/// An owned block of 2^order frames from `alloc_pages`: like Linux's
/// `struct page *`, a reference to the head page's entry, with the order in
/// the entry address's low bits (entries are 64-byte aligned), so the
/// handle is one word. Converting to a frame number is arithmetic, done
/// only when asked. Not `Clone`: the handle is the ownership. Give it back
/// with `free_pages` (which can refuse and say why); dropping it frees it
/// too (a refusal is then reported and the block stays allocated, owned by
/// nobody), so no early return leaks it.
#[must_use = "an unused handle frees its frames at once"]
pub struct Pages {
    tagged: NonNull<Page>,
}

/// Low bits of `Pages::tagged` holding the order.
const ORDER_TAG: usize = core::mem::align_of::<Page>() - 1;
const _: () = assert!(MAX_ORDER as usize <= ORDER_TAG);

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
        Self {
            tagged: NonNull::from(page).map_addr(|a| a | (order as usize & ORDER_TAG)),
        }
    }

    pub fn pfn(&self) -> Pfn {
        // A handle's page is always an entry of the memmap.
        memmap().page_to_pfn(self.page()).unwrap_or(Pfn(u64::MAX))
    }

    #[inline(always)]
    pub fn order(&self) -> u32 {
        (self.tagged.addr().get() & ORDER_TAG) as u32
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

    /// The head page's metadata.
    #[inline(always)]
    pub fn page(&self) -> &'static Page {
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
        let page = self.page();
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
        match with_pcp(|pcp| pcp.free(p.page()).then(|| pcp.over_high())) {
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

fn free_block(pfn: Pfn, order: u32) -> Result<(), FreeError> {
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

/// This CPU's lists went above `PCP_HIGH`: give batches back (Linux
/// free_pcppages_bulk).
#[cold]
#[inline(never)]
fn drain_pcp_batch() {
    let map = memmap();
    with_pcp(|pcp| pcp.drain_to_high(map, zone()));
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

/// Allocate `n` contiguous MAX_ORDER blocks; free each with MAX_ORDER.
pub fn alloc_contig_blocks(n: u64) -> Result<Pfn, AllocError> {
    if fail::should_fail() {
        return Err(AllocError::NoMemory);
    }
    drain_pcp();
    zone().lock().alloc_contig(n)
}

/// Pages on every CPU's lists.
pub fn nr_pcp_pages() -> u64 {
    PCP.0.iter().map(PcpList::count).sum()
}

/// Free pages in the allocator (buddy lists and the per-CPU lists).
pub fn nr_free_pages() -> u64 {
    zone().lock().nr_free_pages() + nr_pcp_pages()
}

/// Free blocks of each order in the buddy lists.
pub fn nr_free_per_order() -> [u64; buddy::NR_ORDERS] {
    let z = zone().lock();
    core::array::from_fn(|o| z.nr_free(o as u32))
}

pub fn nr_reserved_pages() -> u64 {
    zone().lock().nr_reserved()
}

pub fn nr_managed_pages() -> u64 {
    zone().lock().nr_managed()
}

/// Return this CPU's listed blocks to the buddy lists so they can merge.
pub fn drain_pcp() {
    let map = memmap();
    with_pcp(|pcp| pcp.drain(map, zone(), u64::MAX));
}

/// Run the allocator's consistency check, per-CPU lists included: this
/// CPU's are walked entry by entry (another CPU's may be changing under
/// us); every CPU's counts must add up to the listed pages the memmap
/// shows.
pub fn check() -> Result<CheckStats, CheckError> {
    let map = memmap();
    with_pcp(|pcp| {
        let stats = zone().lock().check()?;
        pcp.check(map)
            .map_err(|(order, pfn)| CheckError::ListEntry { order, pfn })?;
        let counted = nr_pcp_pages();
        if counted != stats.pcp {
            return Err(CheckError::PcpCount {
                counted,
                recorded: stats.pcp,
            });
        }
        Ok(stats)
    })
    .unwrap_or(Err(CheckError::Loop { order: 0 }))
}

/// The one-line summary every boot log has.
pub fn log_summary() {
    let Some(l) = layout() else { return };
    let pct_x100 = l.memmap_bytes * 10_000 / l.memory;
    crate::pr_info!(
        "mm: memmap {} KiB at {:#x} ({}.{:02}% of memory), {} pages free, {} reserved, heap {} KiB",
        l.memmap_bytes >> 10,
        l.memmap_start.0,
        pct_x100 / 100,
        pct_x100 % 100,
        nr_free_pages(),
        nr_reserved_pages(),
        heap::size() >> 10
    );
}

/// `mm.dump`: free blocks per order, reserved pages, memmap size and
/// overhead.
/// What a page of the physical memory map is, for `dump`.
fn region_kind(
    pfn: u64,
    image: (PhysAddr, PhysAddr),
    l: &Layout,
    prev: &'static str,
) -> &'static str {
    let pa = pfn * PAGE_SIZE;
    if pa < 0x2000 {
        return "lowcore (prefix area)";
    }
    if pa >= image.0 .0 && pa < image.1 .0 {
        return "kernel image";
    }
    if pa >= l.memmap_start.0 && pa < l.memmap_start.0 + l.memmap_bytes {
        return "memmap (struct page array)";
    }
    if pa >= l.firmware.0 .0 && pa < l.firmware.1 .0 {
        return "firmware (s390-ccw BIOS)";
    }
    use page::PageType;
    match pfn_to_page(Pfn(pfn)).and_then(|p| p.page_type()) {
        Some(PageType::Free | PageType::Buddy) => "free",
        Some(PageType::Pcp) => "free (per-CPU lists)",
        Some(PageType::Allocated) => "allocated",
        Some(PageType::PageTable) => "page tables",
        Some(PageType::GmapTable) => "gmap tables",
        Some(PageType::Heap) => "heap",
        Some(PageType::Reserved) => "reserved",
        // The other pages of a block belong to its head's kind.
        Some(PageType::Tail) => prev,
        None => "unknown page type",
    }
}

/// `mm.dump`: the physical memory map (regions of one kind, from the
/// memmap), then free blocks per order as /proc/buddyinfo shows them, and
/// the counters.
pub fn dump(image: (PhysAddr, PhysAddr)) {
    use core::fmt::Write;
    let Some(l) = layout() else { return };
    crate::pr_info!("mm: physical memory map ({} MiB):", l.memory >> 20);
    let n = memmap().nr_pages();
    let (mut start, mut kind) = (0u64, region_kind(0, image, l, "free"));
    let mut shown = 0;
    let mut more = 0;
    for pfn in 1..=n {
        let k = if pfn < n {
            region_kind(pfn, image, l, kind)
        } else {
            ""
        };
        if k == kind {
            continue;
        }
        if shown < 48 {
            crate::pr_info!(
                "mm:   {:#012x}-{:#012x} {:>9} KiB  {}",
                start * PAGE_SIZE,
                pfn * PAGE_SIZE - 1,
                ((pfn - start) * PAGE_SIZE) >> 10,
                kind
            );
            shown += 1;
        } else {
            more += 1;
        }
        (start, kind) = (pfn, k);
    }
    if more > 0 {
        crate::pr_info!("mm:   ... {} more regions", more);
    }
    let per_order = nr_free_per_order();
    let mut line = crate::fmtbuf::FixedBuf::<256>::new();
    for (o, n) in per_order.iter().enumerate() {
        let _ = write!(line, " {o}:{n}");
    }
    crate::pr_info!("mm: free blocks per order:{}", line.as_str());
    crate::pr_info!(
        "mm: {} pages free ({} MiB), {} reserved, {} managed, {} per-CPU",
        nr_free_pages(),
        (nr_free_pages() * PAGE_SIZE) >> 20,
        nr_reserved_pages(),
        nr_managed_pages(),
        nr_pcp_pages()
    );
    let pct_x1000 = l.memmap_bytes * 100_000 / l.memory;
    crate::pr_info!(
        "mm: memmap {:#x}-{:#x}: {} bytes for {} frames, overhead {}.{:03}%",
        l.memmap_start.0,
        l.memmap_start.0 + l.memmap_bytes,
        l.memmap_bytes,
        l.memory / PAGE_SIZE,
        pct_x1000 / 1000,
        pct_x1000 % 1000
    );
    crate::pr_info!(
        "mm: firmware area {:#x}-{:#x} reserved; heap {} KiB in {} regions",
        l.firmware.0 .0,
        l.firmware.1 .0,
        heap::size() >> 10,
        heap::regions()
    );
}

/// Test-only misuse the types otherwise rule out: an extra reference on a
/// page, so that its free is refused (as a pinned page's would be).
#[cfg(target_os = "none")]
pub(crate) mod testing {
    use super::page::Page;

    /// `get_page` on any page.
    pub(crate) fn get_page(p: &Page) -> u32 {
        p.page_ref_inc()
    }

    /// `put_page` without the free.
    pub(crate) fn put_page(p: &Page) -> u32 {
        p.page_ref_dec()
    }
}
