//! The kernel heap: `linked_list_allocator` heaps over regions taken from
//! the buddy allocator. When no region can satisfy a request, a new region
//! is added (a buddy block, or contiguous MAX_ORDER blocks for requests
//! beyond 4 MiB); a region that becomes empty goes back to the buddy
//! allocator, except the first. A request that cannot be met returns null,
//! which reaches Rust's `alloc` error path (`try_reserve` sees an error).
//!
//! Linux: stands in for the slab allocator (mm/slub.c) behind kmalloc.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::sync::Mutex;
use linked_list_allocator::Heap;

use super::addr::{Pfn, PAGE_SIZE};
use super::buddy::{MAX_ORDER, MAX_ORDER_PAGES};
use super::page::PageType;
use super::{AllocFlags, Pages};

/// Initial heap: 1 MiB.
pub const INITIAL_ORDER: u32 = 8;
/// Smallest growth step: 1 MiB.
const GROW_MIN_ORDER: u32 = 8;
const MAX_REGIONS: usize = 64;

/// Where a region's frames came from, to give them back.
#[derive(Clone, Copy)]
enum Backing {
    /// One buddy block.
    Block { pfn: Pfn, order: u32 },
    /// `n` contiguous MAX_ORDER blocks.
    Contig { pfn: Pfn, n: u64 },
}

struct Region {
    heap: Heap,
    backing: Backing,
}

impl Region {
    fn contains(&self, ptr: *mut u8) -> bool {
        let p = ptr as usize;
        p >= self.heap.bottom() as usize && p < self.heap.top() as usize
    }
}

struct HeapState {
    regions: [Option<Region>; MAX_REGIONS],
}

// SAFETY: the heaps hold raw pointers into frames owned by the heap; the
// state is only ever used under `HEAP`'s lock.
unsafe impl Send for HeapState {}

/// The heap lock. SMP: one lock for all CPUs; the allocator never takes it
/// from an interruption handler.
static HEAP: Mutex<HeapState> = Mutex::new(HeapState {
    regions: [const { None }; MAX_REGIONS],
});
static SIZE: AtomicU64 = AtomicU64::new(0);
static NR_REGIONS: AtomicU64 = AtomicU64::new(0);
static GROWS: AtomicU64 = AtomicU64::new(0);

/// Bytes of memory the heap holds now (all regions).
pub fn size() -> u64 {
    SIZE.load(Ordering::Relaxed)
}

pub fn regions() -> u64 {
    NR_REGIONS.load(Ordering::Relaxed)
}

/// How often the heap has grown since boot.
pub fn grows() -> u64 {
    GROWS.load(Ordering::Relaxed)
}

/// Errors of heap setup and growth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapError {
    NoMemory,
    TooManyRegions,
}

/// Create the first region. Call once, after `mm::init`.
#[cfg(target_arch = "s390x")]
pub(crate) fn init() -> Result<(), HeapError> {
    let mut st = HEAP.lock();
    add_region(&mut st, INITIAL_ORDER, 0)
}

fn retag(pfn: Pfn, t: PageType) {
    if let Some(p) = super::pfn_to_page(pfn) {
        p.set_page_type(t);
    }
}

/// Add a region big enough for `need` bytes (at least 2^min_order pages).
fn add_region(st: &mut HeapState, min_order: u32, need: u64) -> Result<(), HeapError> {
    let slot = st
        .regions
        .iter()
        .position(|r| r.is_none())
        .ok_or(HeapError::TooManyRegions)?;
    let pages = need.div_ceil(PAGE_SIZE);
    let backing = if pages <= MAX_ORDER_PAGES {
        let order = (pages.next_power_of_two().trailing_zeros())
            .max(min_order)
            .min(MAX_ORDER);
        let p = super::alloc_pages(order, AllocFlags::empty()).map_err(|_| HeapError::NoMemory)?;
        let (pfn, order) = p.into_raw();
        Backing::Block { pfn, order }
    } else {
        let n = pages.div_ceil(MAX_ORDER_PAGES);
        let pfn = super::alloc_contig_blocks(n).map_err(|_| HeapError::NoMemory)?;
        Backing::Contig { pfn, n }
    };
    let (pfn, bytes) = match backing {
        Backing::Block { pfn, order } => (pfn, (1u64 << order) * PAGE_SIZE),
        Backing::Contig { pfn, n } => (pfn, n * MAX_ORDER_PAGES * PAGE_SIZE),
    };
    retag(pfn, PageType::Heap);
    let mut heap = Heap::empty();
    let bottom = super::memmap().frame_ptr(pfn);
    // SAFETY: the frames were just allocated to the heap and stay allocated
    // until `remove_region` gives them back, after the region is gone.
    unsafe { heap.init(bottom, bytes as usize) };
    st.regions[slot] = Some(Region { heap, backing });
    SIZE.fetch_add(bytes, Ordering::Relaxed);
    NR_REGIONS.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn remove_region(st: &mut HeapState, idx: usize) {
    let Some(region) = st.regions[idx].take() else {
        return;
    };
    let bytes = region.heap.size() as u64;
    let give_back = |pfn: Pfn, order: u32| {
        retag(pfn, PageType::Allocated);
        // SAFETY: the block was allocated for this region with this order,
        // and the region (the only user of its memory) is gone.
        let p = unsafe { Pages::from_raw(pfn, order) };
        if let Err((p, _)) = super::free_pages(p) {
            // Reported by free_pages; keep the frames out of circulation.
            let _ = p.into_raw();
        }
    };
    match region.backing {
        Backing::Block { pfn, order } => give_back(pfn, order),
        Backing::Contig { pfn, n } => {
            for i in 0..n {
                give_back(Pfn(pfn.0 + i * MAX_ORDER_PAGES), MAX_ORDER);
            }
        }
    }
    SIZE.fetch_sub(bytes, Ordering::Relaxed);
    NR_REGIONS.fetch_sub(1, Ordering::Relaxed);
}

fn try_alloc(st: &mut HeapState, layout: Layout) -> Option<NonNull<u8>> {
    st.regions
        .iter_mut()
        .flatten()
        .find_map(|r| r.heap.allocate_first_fit(layout).ok())
}

/// The global allocator.
pub struct KernelHeap;

// SAFETY: allocations come from regions of frames the heap owns; every
// block is handed out once by linked_list_allocator and returned to the
// region that contains it.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut st = HEAP.lock();
        if let Some(p) = try_alloc(&mut st, layout) {
            return p.as_ptr();
        }
        // Room for the block, its alignment and the allocator's hole header.
        let need = layout.size() as u64 + layout.align() as u64 + 64;
        if add_region(&mut st, GROW_MIN_ORDER, need).is_err() {
            return core::ptr::null_mut();
        }
        GROWS.fetch_add(1, Ordering::Relaxed);
        try_alloc(&mut st, layout).map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let mut st = HEAP.lock();
        let Some(idx) = st
            .regions
            .iter()
            .position(|r| r.as_ref().is_some_and(|r| r.contains(ptr)))
        else {
            return;
        };
        let Some(region) = st.regions[idx].as_mut() else {
            return;
        };
        // SAFETY: the caller passes a block this allocator returned with the
        // same layout; it lies in this region.
        unsafe { region.heap.deallocate(NonNull::new_unchecked(ptr), layout) };
        // An emptied region other than the first goes back to the buddy
        // allocator, so heap use does not look like a page leak.
        let first = st.regions.iter().position(|r| r.is_some()) == Some(idx);
        if !first && st.regions[idx].as_ref().is_some_and(|r| r.heap.used() == 0) {
            remove_region(&mut st, idx);
        }
    }
}
