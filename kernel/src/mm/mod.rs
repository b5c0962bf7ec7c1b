//! Physical memory: the memmap of `struct page`, the buddy allocator and the
//! kernel heap.
//!
//! SMP: one lock per allocator (the zone lock here, the heap lock in
//! `heap`), and the per-CPU order-0 list is a single list. Places that
//! assume one CPU say so with an `SMP:` comment.

pub mod addr;
pub mod buddy;
pub mod fail;
pub mod heap;
pub mod memmap;
pub mod page;
pub mod pcp;
pub mod ptdesc;

#[cfg(test)]
mod buddy_tests;
#[cfg(target_os = "none")]
mod ktests;

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use spin::{Mutex, Once};

use addr::{Pfn, PhysAddr, VirtAddr, PAGE_SIZE};
pub use buddy::{AllocError, AllocFlags, FreeError, MAX_ORDER};
use buddy::{BuddyAllocator, CheckError, CheckStats};
use memmap::MemMap;
use page::Page;
use pcp::PcpList;

static MEMMAP: Once<MemMap<'static>> = Once::new();
/// The zone lock. SMP: taken by every CPU for refills and merges; order-0
/// traffic would move to per-CPU lists that need no lock.
static ZONE: Once<Mutex<BuddyAllocator<'static>>> = Once::new();

/// Each CPU's order-0 list, indexed by the CPU number in the lowcore. A
/// CPU only ever uses its own (interruption handlers never allocate), so
/// the busy flag is uncontended; it still refuses nested use.
struct PcpCell {
    /// A word, not a bool: s390x compare-and-swap works on words, a byte
    /// flag costs a rotate-and-retry loop.
    busy: AtomicU32,
    list: UnsafeCell<PcpList>,
    /// The list's length, readable by other CPUs (free-page counts).
    count: AtomicU64,
}

// SAFETY: the list is only reached through `with_pcp`, whose busy flag
// admits one user at a time.
unsafe impl Sync for PcpCell {}

const MAX_PCP: usize = crate::sclp::info::MAX_CPUS;

static PCP: [PcpCell; MAX_PCP] = [const {
    PcpCell {
        busy: AtomicU32::new(0),
        list: UnsafeCell::new(PcpList::new()),
        count: AtomicU64::new(0),
    }
}; MAX_PCP];

fn this_cpu() -> usize {
    #[cfg(target_arch = "s390x")]
    {
        crate::smp::cpu_nr() % MAX_PCP
    }
    #[cfg(not(target_arch = "s390x"))]
    {
        0
    }
}

/// Run `f` on this CPU's list; `None` if it is in use (re-entered).
fn with_pcp<R>(f: impl FnOnce(&mut PcpList) -> R) -> Option<R> {
    let cell = &PCP[this_cpu()];
    if cell
        .busy
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return None;
    }
    // SAFETY: the busy flag was clear and is now ours: no other reference to
    // the list exists until it is cleared below.
    let list = unsafe { &mut *cell.list.get() };
    let r = f(list);
    cell.count.store(list.count(), Ordering::Relaxed);
    cell.busy.store(0, Ordering::Release);
    Some(r)
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
    crate::ktest::set_leak_counter("free pages", nr_free_pages);
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

/// An owned block of 2^order frames from `alloc_pages`. Not `Clone`: the
/// handle is the ownership. Give it back with `free_pages`.
#[must_use = "dropping the handle leaks the frames: give them back with free_pages"]
#[derive(Debug, PartialEq, Eq)]
pub struct Pages {
    pfn: Pfn,
    order: u32,
}

impl Pages {
    pub fn pfn(&self) -> Pfn {
        self.pfn
    }

    pub fn order(&self) -> u32 {
        self.order
    }

    pub fn nr_pages(&self) -> u64 {
        1 << self.order
    }

    pub fn phys(&self) -> PhysAddr {
        PhysAddr(self.pfn.0 * PAGE_SIZE)
    }

    pub fn virt(&self) -> VirtAddr {
        memmap().pfn_to_virt(self.pfn)
    }

    /// The head page's metadata.
    pub fn page(&self) -> &'static Page {
        pfn_to_page(self.pfn).expect("Pages outside the memmap")
    }

    /// The frames' memory. The handle owns them, so this is exclusive.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let ptr = memmap().frame_ptr(self.pfn);
        // SAFETY: the block is allocated to this handle alone, identity
        // (or host-buffer) mapped, and 2^order pages long.
        unsafe { core::slice::from_raw_parts_mut(ptr, (self.nr_pages() * PAGE_SIZE) as usize) }
    }

    /// Give up the handle, keeping the frames allocated (for structures that
    /// track them by address, like page tables).
    pub fn into_raw(self) -> (Pfn, u32) {
        (self.pfn, self.order)
    }

    /// Rebuild a handle from `into_raw`.
    ///
    /// # Safety
    /// `(pfn, order)` must come from `into_raw` and no other handle to the
    /// block may exist.
    pub unsafe fn from_raw(pfn: Pfn, order: u32) -> Self {
        Self { pfn, order }
    }
}

/// Allocate 2^order contiguous frames (Linux alloc_pages).
pub fn alloc_pages(order: u32, flags: AllocFlags) -> Result<Pages, AllocError> {
    if fail::should_fail() {
        return Err(AllocError::NoMemory);
    }
    // SMP: the zone lock; interruption handlers never allocate, so it cannot
    // be taken recursively on one CPU.
    let pfn = if order == 0 {
        let map = memmap();
        match with_pcp(|pcp| pcp.alloc(map, zone)) {
            Some(r) => r?,
            None => zone().lock().alloc(0, AllocFlags::empty())?,
        }
    } else {
        zone().lock().alloc(order, AllocFlags::empty())?
    };
    if flags.contains(AllocFlags::ZERO) {
        // SAFETY: the block was just allocated: nobody else uses its memory.
        unsafe { clear_frames(memmap().frame_ptr(pfn), PAGE_SIZE << order) };
    }
    Ok(Pages { pfn, order })
}

/// Give frames back (Linux __free_pages). A block left in a bad state
/// (extra reference, mapping still set, a page-table type) is refused,
/// reported, and handed back unchanged so the caller can fix it.
pub fn free_pages(p: Pages) -> Result<(), (Pages, FreeError)> {
    match free_block(p.pfn, p.order) {
        Ok(()) => Ok(()),
        Err(e) => {
            report_bad_page(p.pfn, e);
            Err((p, e))
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
    if order == 0 {
        let map = memmap();
        if let Some(r) = with_pcp(|pcp| pcp.free(map, zone, pfn)) {
            return r;
        }
    }
    zone().lock().free(pfn, order)
}

fn report_bad_page(pfn: Pfn, e: FreeError) {
    let (t, refc, mapping, flags) = match pfn_to_page(pfn) {
        Some(p) => (p.raw_page_type(), p.refcount(), p.mapping(), p.raw_flags()),
        None => (0, 0, 0, 0),
    };
    crate::pr_info!(
        "BUG: Bad page state: pfn:{:#x} type:{:#x} refcount:{} mapping:{:#x} flags:{:#x}: {} (refused)",
        pfn.0,
        t,
        refc,
        mapping,
        flags,
        e
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

/// Pages in every CPU's order-0 list.
pub fn nr_pcp_pages() -> u64 {
    PCP.iter().map(|c| c.count.load(Ordering::Relaxed)).sum()
}

/// Free pages in the allocator (buddy lists and the per-CPU list).
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

/// Return per-CPU pages to the buddy lists so they can merge.
pub fn drain_pcp() {
    let map = memmap();
    with_pcp(|pcp| pcp.drain(map, zone(), u64::MAX));
}

/// Run the allocator's consistency check, per-CPU list included.
pub fn check() -> Result<CheckStats, CheckError> {
    let map = memmap();
    with_pcp(|pcp| {
        let stats = zone().lock().check()?;
        match pcp.check(map) {
            Ok(n) if n == stats.pcp => Ok(stats),
            Ok(n) => Err(CheckError::Count {
                order: 0,
                counted: n,
                recorded: stats.pcp,
            }),
            Err(pfn) => Err(CheckError::ListEntry { order: 0, pfn }),
        }
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
pub fn dump() {
    use core::fmt::Write;
    let Some(l) = layout() else { return };
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
