//! In-kernel tests of physical memory on the real memory QEMU gives us.

use alloc::vec::Vec;

use super::addr::{Pfn, PhysAddr, PAGE_SIZE};
use super::buddy::{FreeError, MAX_ORDER};
use super::page::PageType;
use super::{alloc_pages, free_pages, free_pages_raw, heap, memmap, AllocError, AllocFlags, Pages};
use crate::ktest::{KResult, Rng};
use crate::{kassert, kassert_eq, kfail, kskip, ktest_suite, machine};

/// Words of each page the pattern tests write (every 512 bytes).
const PATTERN_STRIDE: usize = 512;

fn pattern(pfn: u64, word: usize) -> u64 {
    (pfn.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (word as u64) << 48) | 1
}

/// A pointer to the frame memory of an allocated block.
fn frame(pfn: Pfn) -> *mut u64 {
    memmap().frame_ptr(pfn) as *mut u64
}

/// Allocate every block of `order` there is, write a pattern into its
/// pages, verify them all, free them all. The blocks are chained through
/// their first word, so the test needs no memory of its own.
///
/// Order 0 writes every page of memory. A larger order writes three pages
/// of each block: the first and the last (its extent) and one inside it,
/// at an offset that moves from block to block, so that across the blocks
/// every offset is written and a stray write into allocated memory (a
/// descriptor or list write one frame off, say) is still likely to show.
/// `mm::check` (after each order) verifies the struct pages of every
/// block. Writing every page again at every order cost 11 of the 4G
/// boot's 28 seconds.
/// Blocks chained through word 0 of their first page (the test cannot
/// hold a `Pages` per block: it allocates all of memory). Dropping it
/// frees what is still chained, so a failed assertion leaks nothing.
struct Chain {
    head: u64,
    order: u32,
}

impl Chain {
    fn push(&mut self, pfn: Pfn) {
        // SAFETY: word 0 of the block's first page holds the chain link.
        unsafe { frame(pfn).write_volatile(self.head) };
        self.head = pfn.0;
    }

    /// Take the first block off the chain (the caller frees it).
    fn pop(&mut self) -> Option<Pfn> {
        (self.head != u64::MAX).then(|| {
            let pfn = Pfn(self.head);
            // SAFETY: the link written by `push`.
            self.head = unsafe { frame(pfn).read_volatile() };
            pfn
        })
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        while let Some(pfn) = self.pop() {
            // SAFETY: every chained block came from alloc_pages(order) and
            // nothing else refers to it.
            let _ = unsafe { free_pages_raw(pfn, self.order) };
        }
    }
}

/// The pages of the block at `pfn` that `exhaust` writes: the page at
/// order 0; else the first, the last and, from order 2, the inner page at
/// the block's number modulo its size (skipped where that is the first or
/// the last).
fn patterned(pfn: Pfn, order: u32) -> impl Iterator<Item = u64> {
    let size = 1u64 << order;
    let last = pfn.0 + size - 1;
    let inner = pfn.0 + ((pfn.0 >> order) & (size - 1));
    core::iter::once(pfn.0)
        .chain((order > 0).then_some(last))
        .chain((inner != pfn.0 && inner != last).then_some(inner))
}

fn exhaust(order: u32) -> KResult {
    super::drain_pcp();
    let start = super::nr_free_pages_and_desc_slabs();
    let mut chain = Chain {
        head: u64::MAX,
        order,
    };
    let mut blocks = 0u64;
    let mut patterned_pages = 0u64;
    loop {
        let p = match alloc_pages(order, AllocFlags::empty()) {
            Ok(p) => p,
            Err(e) => {
                kassert_eq!(e, AllocError::NoMemory);
                break;
            }
        };
        let (pfn, _) = p.into_raw();
        chain.push(pfn);
        blocks += 1;
        kassert!(
            pfn.is_aligned_to_order(order),
            "{:?} not aligned to order {}",
            pfn,
            order
        );
        for pg in patterned(pfn, order) {
            patterned_pages += 1;
            let base = frame(Pfn(pg));
            for w in (PATTERN_STRIDE / 8..512).step_by(PATTERN_STRIDE / 8) {
                // SAFETY: the block is allocated to this test; w < 512 words.
                unsafe { base.add(w).write_volatile(pattern(pg, w)) };
            }
        }
    }
    // Exhausted: no block of this order or larger is left anywhere (an
    // injected failure is not exhaustion: this fails, and the chain goes
    // back when dropped).
    let per_order = super::nr_free_per_order();
    for (o, n) in per_order.iter().enumerate().skip(order as usize) {
        kassert_eq!((o, *n), (o, 0));
    }
    kassert!(blocks > 0);
    // Verify the patterned pages (memory written by anyone else since
    // shows), then free. A block handed out twice would be chained twice,
    // and the chain would not come back as `blocks` links.
    let mut seen = 0u64;
    while let Some(pfn) = chain.pop() {
        let mut bad = None;
        for pg in patterned(pfn, order) {
            let base = frame(Pfn(pg));
            for w in (PATTERN_STRIDE / 8..512).step_by(PATTERN_STRIDE / 8) {
                // SAFETY: still allocated to this test.
                let v = unsafe { base.add(w).read_volatile() };
                if v != pattern(pg, w) && bad.is_none() {
                    bad = Some((pg, w, v));
                }
            }
        }
        // SAFETY: the block came from alloc_pages(order) above and nothing
        // refers to it after this.
        let r = unsafe { free_pages_raw(pfn, order) };
        kassert_eq!(r, Ok(()));
        if let Some((pg, w, v)) = bad {
            return kfail!(
                "pfn {pg:#x} word {w}: {v:#x}, expected {:#x}",
                pattern(pg, w)
            );
        }
        seen += 1;
    }
    kassert_eq!(seen, blocks);
    super::drain_pcp();
    kassert_eq!(super::nr_free_pages_and_desc_slabs(), start);
    kassert!(super::check().is_ok(), "{:?}", super::check());
    crate::ktest::diag(format_args!(
        "order {}: {} blocks ({} pages) allocated, {} pages patterned and checked, freed",
        order,
        blocks,
        blocks << order,
        patterned_pages
    ));
    Ok(())
}

macro_rules! exhaust_cases {
    ($($name:ident = $order:expr),* $(,)?) => {
        $(fn $name() -> KResult { exhaust($order) })*
    };
}

exhaust_cases!(
    alloc_all_order0 = 0,
    alloc_all_order1 = 1,
    alloc_all_order2 = 2,
    alloc_all_order3 = 3,
    alloc_all_order4 = 4,
    alloc_all_order5 = 5,
    alloc_all_order6 = 6,
    alloc_all_order7 = 7,
    alloc_all_order8 = 8,
    alloc_all_order9 = 9,
    alloc_all_order10 = 10,
);

fn zero_flag_zeroes_a_dirty_page() -> KResult {
    for order in [0u32, 3] {
        let mut p =
            alloc_pages(order, AllocFlags::empty()).map_err(|_| crate::ktest::Outcome::Fail)?;
        p.as_mut_slice().fill(0xa5);
        let dirty = p.pfn();
        kassert_eq!(free_pages(p).map_err(|(_, e)| e), Ok(()));
        let mut q =
            alloc_pages(order, AllocFlags::ZERO).map_err(|_| crate::ktest::Outcome::Fail)?;
        if order == 0 {
            // The per-CPU list is LIFO: the dirty page comes straight back.
            kassert_eq!(q.pfn(), dirty);
        }
        let zero = q.as_mut_slice().iter().all(|&b| b == 0);
        kassert_eq!(free_pages(q).map_err(|(_, e)| e), Ok(()));
        kassert!(zero, "order {} block not zeroed", order);
    }
    Ok(())
}

const STORM_OPS: u32 = 100_000;

fn random_storm() -> KResult {
    super::drain_pcp();
    let start_free = super::nr_free_pages_and_desc_slabs();
    let start_max = super::nr_free_per_order()[MAX_ORDER as usize];
    let mut rng = Rng(0x5eed_2a7d_1234_5678);
    let mut live: Vec<Pages> = Vec::with_capacity(1024);
    let (mut allocs, mut frees, mut refused) = (0u32, 0u32, 0u32);
    for _ in 0..STORM_OPS {
        let r = rng.next_u64();
        if live.len() < 1000 && (live.is_empty() || r % 8 < 5) {
            // Mostly small orders, now and then a big one.
            let order = match (r >> 8) % 16 {
                0..=7 => 0,
                8..=10 => 1,
                11..=12 => 2,
                13 => 3,
                14 => 5,
                _ => ((r >> 16) % (MAX_ORDER as u64 + 1)) as u32,
            };
            match alloc_pages(order, AllocFlags::empty()) {
                Ok(mut p) => {
                    let tag = p.pfn().0 ^ 0xfeed;
                    p.as_mut_slice()[..8].copy_from_slice(&tag.to_be_bytes());
                    live.push(p);
                    allocs += 1;
                }
                Err(_) => refused += 1,
            }
        } else {
            let i = (r >> 20) as usize % live.len();
            let mut p = live.swap_remove(i);
            let tag = u64::from_be_bytes(p.as_mut_slice()[..8].try_into().unwrap_or_default());
            kassert_eq!(tag, p.pfn().0 ^ 0xfeed);
            kassert!(free_pages(p).is_ok());
            frees += 1;
        }
    }
    for p in live.drain(..) {
        kassert!(free_pages(p).is_ok());
    }
    drop(live);
    super::drain_pcp();
    kassert!(super::check().is_ok(), "{:?}", super::check());
    kassert_eq!(super::nr_free_pages_and_desc_slabs(), start_free);
    kassert_eq!(super::nr_free_per_order()[MAX_ORDER as usize], start_max);
    crate::ktest::diag(format_args!(
        "{} operations: {} allocations, {} frees, {} refused for lack of memory",
        STORM_OPS, allocs, frees, refused
    ));
    Ok(())
}

/// A misuse must be refused with its reason, change nothing, and leave
/// the allocator consistent.
fn refused(pfn: Pfn, order: u32, want: FreeError) -> KResult {
    let before = super::nr_free_pages_and_desc_slabs();
    let per_order = super::nr_free_per_order();
    // SAFETY: every call passes a misuse the allocator must refuse; were it
    // accepted, the test fails and the frames were ours anyway.
    let r = unsafe { free_pages_raw(pfn, order) };
    kassert_eq!(r, Err(want));
    kassert_eq!(super::nr_free_pages_and_desc_slabs(), before);
    kassert_eq!(super::nr_free_per_order(), per_order);
    kassert!(super::check().is_ok(), "{:?}", super::check());
    Ok(())
}

fn misuse_is_refused() -> KResult {
    // Frees below are refused on purpose.
    crate::mm::expect_refusals(true);
    // Double free, of a per-CPU page and of a merged block.
    let p = alloc_pages(0, AllocFlags::empty()).map_err(|_| crate::ktest::Outcome::Fail)?;
    let pfn = p.pfn();
    kassert!(free_pages(p).is_ok());
    refused(pfn, 0, FreeError::AlreadyFree)?;
    let p = alloc_pages(4, AllocFlags::empty()).map_err(|_| crate::ktest::Outcome::Fail)?;
    let pfn = p.pfn();
    kassert!(free_pages(p).is_ok());
    refused(pfn, 4, FreeError::AlreadyFree)?;
    refused(Pfn(pfn.0 + 3), 0, FreeError::AlreadyFree)?;
    // Reserved: lowcore and the kernel image.
    refused(Pfn(0), 0, FreeError::Reserved)?;
    let image = machine::get().map_or(0x10000, |m| m.boot.image_start);
    refused(PhysAddr(image).pfn(), 0, FreeError::Reserved)?;
    // Never allocated: a free page (inside a free buddy block), found from
    // the top of memory down.
    let never = (0..memmap().nr_pages())
        .rev()
        .map(Pfn)
        .find(|&p| super::pfn_to_page(p).is_some_and(|pg| pg.has_type(PageType::Free)));
    kassert!(never.is_some());
    refused(never.unwrap_or(Pfn(0)), 0, FreeError::AlreadyFree)?;
    // Beyond memory.
    refused(Pfn(memmap().nr_pages()), 0, FreeError::OutOfRange)?;
    // Wrong order, tail page, order beyond MAX_ORDER.
    let p = alloc_pages(2, AllocFlags::empty()).map_err(|_| crate::ktest::Outcome::Fail)?;
    refused(p.pfn(), 1, FreeError::WrongOrder { allocated: 2 })?;
    refused(p.pfn(), 3, FreeError::WrongOrder { allocated: 2 })?;
    refused(Pfn(p.pfn().0 + 2), 0, FreeError::NotHead)?;
    refused(p.pfn(), MAX_ORDER + 1, FreeError::BadOrder)?;
    // A reference still held.
    p.page().page_ref_inc();
    refused(p.pfn(), 2, FreeError::BadRefcount(2))?;
    p.page().page_ref_dec();
    // A mapping (or the gaddr aliasing it) not cleared. Overlay only: the
    // memdesc word has no mapping.
    #[cfg(not(feature = "memdesc"))]
    {
        let m = &p.page().generic().mapping;
        m.store(0x1234_5000, core::sync::atomic::Ordering::Relaxed);
        let r = refused(p.pfn(), 2, FreeError::NonNullMapping(0x1234_5000));
        m.store(0, core::sync::atomic::Ordering::Relaxed);
        r?;
    }
    // Through the owned handle: refused and handed back.
    p.page().page_ref_inc();
    let (p, e) = match free_pages(p) {
        Ok(()) => {
            crate::ktest::report_failure(
                file!(),
                line!(),
                format_args!("free with an extra reference accepted"),
            );
            return Err(crate::ktest::Outcome::Fail);
        }
        Err(back) => back,
    };
    kassert_eq!(e, FreeError::BadRefcount(2));
    p.page().page_ref_dec();
    // Still a page table: its destructor has not run.
    let pt =
        super::ptdesc::pagetable_pmd_ctor(p).or_else(|(_, e)| crate::kfail!("pmd ctor: {e:?}"))?;
    refused(pt.phys().pfn(), 2, FreeError::InUse(PageType::PageTable))?;
    let p = super::ptdesc::pagetable_dtor(pt).or_else(|(_, e)| crate::kfail!("dtor: {e:?}"))?;
    kassert!(free_pages(p).is_ok());
    Ok(())
}

fn memmap_conversions_round_trip() -> KResult {
    let map = memmap();
    let last = Pfn(map.nr_pages() - 1);
    for pfn in [Pfn(0), Pfn(1), Pfn(0x10), last] {
        let page = super::pfn_to_page(pfn);
        kassert!(page.is_some());
        let page = page.unwrap();
        kassert_eq!(super::page_to_pfn(page), Some(pfn));
        let va = super::page_address(page);
        // Identity mapping: a frame's address is its real address.
        kassert_eq!(va.map(|v| v.0), Some(pfn.0 * PAGE_SIZE));
        kassert!(va
            .and_then(super::virt_to_page)
            .is_some_and(|p| core::ptr::eq(p, page)));
    }
    kassert!(super::pfn_to_page(Pfn(map.nr_pages())).is_none());
    let p = alloc_pages(0, AllocFlags::empty()).map_err(|_| crate::ktest::Outcome::Fail)?;
    kassert_eq!(p.virt().0, p.phys().0);
    kassert!(core::ptr::eq(
        super::virt_to_page(p.virt()).unwrap(),
        p.page()
    ));
    kassert!(free_pages(p).is_ok());
    Ok(())
}

fn reserved_regions_are_marked() -> KResult {
    let m = machine::get().ok_or(crate::ktest::Outcome::Fail)?;
    let l = super::layout().ok_or(crate::ktest::Outcome::Fail)?;
    let is_reserved = |pa: u64| {
        super::pfn_to_page(PhysAddr(pa).pfn()).is_some_and(|p| p.has_type(PageType::Reserved))
    };
    kassert!(is_reserved(0) && is_reserved(0x1000), "lowcore");
    kassert!(
        is_reserved(m.boot.image_start) && is_reserved(m.boot.image_end - 1),
        "image"
    );
    kassert!(
        is_reserved(l.memmap_start.0) && is_reserved(l.memmap_start.0 + l.memmap_bytes - 1),
        "memmap"
    );
    kassert!(
        is_reserved(l.firmware.0 .0) && is_reserved(l.firmware.1 .0 - 1),
        "firmware"
    );
    let stats = super::check();
    kassert!(stats.is_ok(), "{:?}", stats);
    let stats = stats.unwrap_or_default();
    kassert_eq!(stats.reserved, super::nr_reserved_pages());
    kassert_eq!(
        stats.free + stats.pcp + stats.allocated + stats.reserved + stats.other,
        memmap().nr_pages()
    );
    Ok(())
}

ktest_suite!(
    BUDDY,
    "buddy",
    [
        alloc_all_order0,
        alloc_all_order1,
        alloc_all_order2,
        alloc_all_order3,
        alloc_all_order4,
        alloc_all_order5,
        alloc_all_order6,
        alloc_all_order7,
        alloc_all_order8,
        alloc_all_order9,
        alloc_all_order10,
        zero_flag_zeroes_a_dirty_page,
        random_storm,
        misuse_is_refused,
        memmap_conversions_round_trip,
        reserved_regions_are_marked,
    ]
);

fn heap_grows_beyond_initial_size() -> KResult {
    let initial = heap::size();
    let grows = heap::grows();
    let n = 8 << 20;
    let mut v: Vec<u8> = Vec::new();
    kassert!(v.try_reserve_exact(n).is_ok());
    v.resize(n, 0);
    for i in (0..n).step_by(4096) {
        v[i] = (i >> 12) as u8;
    }
    kassert!(
        heap::size() > initial,
        "heap {} bytes, was {}",
        heap::size(),
        initial
    );
    kassert!(heap::grows() > grows);
    for i in (0..n).step_by(4096) {
        kassert_eq!(v[i], (i >> 12) as u8);
    }
    drop(v);
    // The grown region went back to the buddy allocator.
    kassert_eq!(heap::size(), initial);
    Ok(())
}

fn heap_64mib_vec() -> KResult {
    if machine::get().map_or(0, |m| m.memory) < 256 << 20 {
        kskip!("needs at least 256 MiB of memory");
    }
    let n = 64 << 20;
    let mut v: Vec<u64> = Vec::new();
    kassert!(v.try_reserve_exact(n / 8).is_ok());
    v.resize(n / 8, 0);
    for i in (0..v.len()).step_by(512) {
        v[i] = i as u64 * 3;
    }
    for i in (0..v.len()).step_by(512) {
        kassert_eq!(v[i], i as u64 * 3);
    }
    drop(v);
    Ok(())
}

fn heap_failure_is_an_error() -> KResult {
    let before = heap::size();
    let mut v: Vec<u8> = Vec::new();
    // More than the machine has: the alloc error path, not a hang.
    let r = v.try_reserve_exact(1 << 40);
    kassert!(r.is_err());
    kassert_eq!(heap::size(), before);
    // The heap still works.
    let b = alloc::boxed::Box::new(0x55u64);
    kassert_eq!(*b, 0x55);
    Ok(())
}

fn heap_many_small_objects() -> KResult {
    // Fallible throughout: the heap grows from the page allocator, which
    // may fail (fail.alloc=N), and an infallible Box or push would then
    // end the run instead of the case.
    let mut boxes: Vec<alloc::boxed::Box<[u64; 8]>> = Vec::new();
    for i in 0..20_000u64 {
        if boxes.try_reserve(1).is_err() {
            return kfail!("heap exhausted after {i} objects");
        }
        let layout = core::alloc::Layout::new::<[u64; 8]>();
        // SAFETY: a non-zero-sized layout.
        let p = unsafe { alloc::alloc::alloc(layout) } as *mut [u64; 8];
        if p.is_null() {
            return kfail!("heap exhausted after {i} objects");
        }
        // SAFETY: `p` is a fresh allocation of `[u64; 8]`'s layout, written
        // before the Box owns it.
        boxes.push(unsafe {
            p.write([i; 8]);
            alloc::boxed::Box::from_raw(p)
        });
    }
    for (i, b) in boxes.iter().enumerate() {
        kassert_eq!(b[7], i as u64);
    }
    Ok(())
}

ktest_suite!(
    HEAP,
    "heap",
    [
        heap_grows_beyond_initial_size,
        heap_64mib_vec,
        heap_failure_is_an_error,
        heap_many_small_objects
    ]
);
