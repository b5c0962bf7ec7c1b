//! Physical memory: the memmap of `struct page` (and the descriptors that
//! overlay it: `ptdesc`, `gtdesc`, owned through `frame`), the buddy
//! allocator and the kernel heap. This file owns the global state (memmap,
//! zone, layout), boot-time setup and the counters; `pages` the `Pages`
//! handle and the allocator's entry points, `percpu` the per-CPU lists'
//! glue, `dump` what `mm.dump` prints. Models mm/page_alloc.c and
//! mm/mm_init.c.
//!
//! SMP: one lock per allocator (the zone lock here, the heap lock in
//! `heap`); blocks of orders 0 to 3 go through per-CPU lists, each with a
//! lock that only `check` ever contends (`percpu`). Places that assume one
//! CPU say so with an `SMP:` comment.

pub mod addr;
pub(crate) mod buddy;
#[cfg(feature = "memdesc")]
pub mod desc;
mod dump;
pub mod fail;
pub mod frame;
pub mod gtdesc;
pub mod heap;
pub mod memmap;
pub mod page;
mod pages;
pub(crate) mod pcp;
mod percpu;
pub mod ptdesc;

#[cfg(test)]
mod buddy_tests;
#[cfg(all(test, feature = "memdesc"))]
mod desc_tests;
#[cfg(test)]
mod frame_tests;
#[cfg(target_os = "none")]
mod ktests;
#[cfg(target_os = "none")]
mod layout_ktests;

use spin::Once;

use crate::sync::Mutex;

#[cfg(any(test, target_arch = "s390x"))]
use addr::PAGE_SIZE;
use addr::{Pfn, PhysAddr, VirtAddr};
pub use buddy::{AllocError, AllocFlags, FreeError, MAX_ORDER};
use buddy::{BuddyAllocator, CheckError, CheckStats};
pub use dump::{dump, log_summary};
use memmap::MemMap;
use page::Page;
pub use pages::{
    alloc_pages, alloc_pages_below, expect_refusals, free_pages, free_pages_raw, Pages,
};
pub use percpu::{drain_pcp, nr_pcp_pages};
#[cfg(target_arch = "s390x")]
pub(crate) use percpu::{init_boot_cpu_pcp, pcp_slot_value};

static MEMMAP: Once<MemMap<'static>> = Once::new();
/// The zone lock. SMP: taken by every CPU for refills, drains and blocks
/// above order 3; the per-CPU lists take the rest without it.
static ZONE: Once<Mutex<BuddyAllocator<'static>>> = Once::new();

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
    /// memdesc: more frames than a 28-bit buddy link can name (1 TiB).
    TooLarge,
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
pub(crate) fn init(
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
    #[cfg(feature = "memdesc")]
    if nr_pages > page::MEMDESC_MAX_PAGES {
        return Err(InitError::TooLarge);
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
        // Miri interprets every access: a smaller simulated RAM there.
        const FRAMES: u64 = if cfg!(miri) { 2 * 1024 } else { 16 * 1024 };
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

#[inline]
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

/// Allocate `n` contiguous MAX_ORDER blocks; free each with MAX_ORDER.
pub(crate) fn alloc_contig_blocks(n: u64) -> Result<Pfn, AllocError> {
    if fail::should_fail() {
        return Err(AllocError::NoMemory);
    }
    drain_pcp();
    zone().lock().alloc_contig(n)
}

/// Free pages in the allocator (buddy lists and the per-CPU lists).
pub fn nr_free_pages() -> u64 {
    zone().lock().nr_free_pages() + nr_pcp_pages()
}

/// Free pages, plus (memdesc) the pages the descriptor caches keep for
/// good (type-stable slabs, see `desc`): what a leak check compares, as
/// per-CPU list pages count as free.
pub fn nr_free_pages_and_desc_slabs() -> u64 {
    #[cfg(feature = "memdesc")]
    return nr_free_pages() + desc::slab_pages();
    #[cfg(not(feature = "memdesc"))]
    return nr_free_pages();
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

/// Run the allocator's consistency check, per-CPU lists included: with
/// every CPU's lists held (`with_all_pcp`) and the zone locked, each list
/// is walked entry by entry, and the pages on them must be the per-CPU
/// pages the memmap shows. Other CPUs may go on allocating meanwhile (from
/// the zone, once the check is over).
pub fn check() -> Result<CheckStats, CheckError> {
    let map = memmap();
    percpu::with_all_pcp(|lists| {
        let zone = zone().lock();
        let stats = zone.check()?;
        let mut counted = 0;
        for pcp in lists {
            counted += pcp
                .check(map)
                .map_err(|(order, pfn)| CheckError::ListEntry { order, pfn })?;
        }
        drop(zone);
        if counted != stats.pcp {
            return Err(CheckError::PcpCount {
                counted,
                recorded: stats.pcp,
            });
        }
        Ok(stats)
    })
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
