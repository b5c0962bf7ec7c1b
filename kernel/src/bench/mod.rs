//! In-kernel benchmarks (`python3 x.py bench`, command-line flag `bench`).
//!
//! x.py runs QEMU with `-icount shift=0`: virtual time advances 1 ns per
//! guest instruction, and the TOD clock follows virtual time, so a TOD
//! delta is an instruction count (4096 TOD units per microsecond). Each
//! benchmark prints `BENCH <name> ops=<n> tod=<delta>`; x.py turns that
//! into instructions per operation and compares against the peers measured
//! in the same run.

use crate::arch::s390x::tod::stck;
use crate::kprintln;
use crate::mm::{self, addr::PAGE_SIZE, AllocFlags};

/// Operations per timed loop.
const OPS: u64 = 20_000;

fn report(name: &str, ops: u64, tod: u64) {
    kprintln!("BENCH {} ops={} tod={}", name, ops, tod);
}

/// Time `ops` calls of `f` after a short warm-up.
fn measure(name: &str, ops: u64, mut f: impl FnMut()) {
    for _ in 0..64 {
        f();
    }
    let t0 = stck();
    for _ in 0..ops {
        f();
    }
    report(name, ops, stck() - t0);
}

/// The empty loop, so x.py can subtract the loop and STCK overhead.
fn baseline() {
    measure("baseline_empty_loop", OPS, || core::hint::black_box(()));
}

fn buddy_order(order: u32, name: &str) {
    measure(name, OPS, || {
        let p = mm::alloc_pages(order, AllocFlags::empty());
        if let Ok(p) = core::hint::black_box(p) {
            let _ = mm::free_pages(p);
        }
    });
}

/// Allocate every order-0 page there is, then free them all: cost per page.
fn alloc_all_then_free() {
    mm::drain_pcp();
    let t0 = stck();
    let mut head = u64::MAX;
    let mut n = 0u64;
    while let Ok(p) = mm::alloc_pages(0, AllocFlags::empty()) {
        let (pfn, _) = p.into_raw();
        let ptr = mm::memmap().frame_ptr(pfn) as *mut u64;
        // SAFETY: the page is allocated to this benchmark; word 0 chains it.
        unsafe { ptr.write_volatile(head) };
        head = pfn.0;
        n += 1;
    }
    while head != u64::MAX {
        let ptr = mm::memmap().frame_ptr(mm::addr::Pfn(head)) as *mut u64;
        // SAFETY: the chain link written above.
        let next = unsafe { ptr.read_volatile() };
        // SAFETY: the page came from alloc_pages(0) above; nothing refers to
        // it after this.
        let _ = unsafe { mm::free_pages_raw(mm::addr::Pfn(head), 0) };
        head = next;
    }
    report("alloc_all_then_free_per_page", n, stck() - t0);
}

fn memmap_init() {
    if let Some(l) = mm::layout() {
        report("memmap_init_per_frame", l.memory / PAGE_SIZE, l.init_tod);
    }
}

#[cfg(feature = "bench")]
mod peers {
    use core::alloc::Layout;

    use linked_list_allocator::Heap;

    use super::{measure, OPS};
    use crate::mm::{self, AllocFlags, MAX_ORDER};

    /// The same page-sized allocations through linked_list_allocator
    /// (Layout 4096/4096) on a 4 MiB region.
    pub fn linked_list() {
        let Ok(region) = mm::alloc_pages(MAX_ORDER, AllocFlags::empty()) else {
            return;
        };
        let mut heap = Heap::empty();
        let bottom = mm::memmap().frame_ptr(region.pfn());
        // SAFETY: the region is allocated to this benchmark until freed below.
        unsafe { heap.init(bottom, (region.nr_pages() * mm::addr::PAGE_SIZE) as usize) };
        let layout = Layout::from_size_align(4096, 4096).unwrap_or(Layout::new::<u8>());
        measure("peer_linked_list_allocator_page", OPS, || {
            if let Ok(p) = core::hint::black_box(heap.allocate_first_fit(layout)) {
                // SAFETY: `p` was just allocated from `heap` with `layout`.
                unsafe { heap.deallocate(p, layout) };
            }
        });
        drop(heap);
        let _ = mm::free_pages(region);
    }

    /// buddy_system_allocator's FrameAllocator over the same 1024 frames.
    pub fn buddy_system() {
        let Ok(region) = mm::alloc_pages(MAX_ORDER, AllocFlags::empty()) else {
            return;
        };
        let start = region.pfn().0 as usize;
        let mut fa = buddy_system_allocator::FrameAllocator::<32>::new();
        fa.add_frame(start, start + region.nr_pages() as usize);
        measure("peer_buddy_system_allocator_frame", OPS, || {
            if let Some(f) = core::hint::black_box(fa.alloc(1)) {
                fa.dealloc(f, 1);
            }
        });
        drop(fa);
        let _ = mm::free_pages(region);
    }
}

/// Run every benchmark; the kernel exits afterwards.
pub fn run() {
    kprintln!("BENCH-START");
    baseline();
    memmap_init();
    buddy_order(0, "buddy_order0_alloc_free");
    buddy_order(3, "buddy_order3_alloc_free");
    alloc_all_then_free();
    #[cfg(feature = "bench")]
    {
        peers::linked_list();
        peers::buddy_system();
    }
    #[cfg(not(feature = "bench"))]
    kprintln!("BENCH-NOTE peers not built (feature \"bench\")");
    kprintln!("BENCH-END");
}
