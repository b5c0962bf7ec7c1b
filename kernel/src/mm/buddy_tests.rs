//! Host tests of the buddy allocator on simulated memory: a model-based
//! property test and one unit test per misuse case. They also run under
//! Miri (`python3 x.py test --miri`), with smaller memory and fewer cases.

#[cfg(not(feature = "memdesc"))]
use core::sync::atomic::Ordering;

use proptest::prelude::*;

use super::addr::{Pfn, PAGE_SIZE};
use super::buddy::{AllocError, AllocFlags, BuddyAllocator, FreeError, MAX_ORDER};
use super::memmap::MemMap;
use super::page::{Page, PageType};
use super::pcp::{PcpList, PCP_HIGH, PCP_MAX_ORDER};
use crate::sync::Mutex;

#[repr(C, align(4096))]
struct Frame([u8; PAGE_SIZE as usize]);

/// Simulated RAM and its memmap.
struct Sim {
    _ram: Vec<Frame>,
    pages: Vec<Page>,
    ram_base: *mut u8,
}

#[cfg(not(miri))]
const FRAMES: u64 = 4000;
#[cfg(miri)]
const FRAMES: u64 = 160;

/// Reserved like a boot would: the lowcore, an "image" in the middle, and
/// the end (a firmware area), so blocks meet odd boundaries.
fn reserved() -> [(u64, u64); 3] {
    let image = FRAMES / 4 + 3;
    [
        (0, 2),
        (image, image + FRAMES / 15),
        (FRAMES - FRAMES / 16 - 5, FRAMES),
    ]
}

impl Sim {
    fn new(frames: u64) -> Self {
        let mut ram: Vec<Frame> = (0..frames)
            .map(|_| Frame([0; PAGE_SIZE as usize]))
            .collect();
        let ram_base = ram.as_mut_ptr() as *mut u8;
        let pages = (0..frames).map(|_| Page::new()).collect();
        Sim {
            _ram: ram,
            pages,
            ram_base,
        }
    }

    fn map(&self) -> MemMap<'_> {
        // SAFETY: `_ram` is `frames` 4 KiB frames owned by the Sim, which
        // outlives every MemMap made from it.
        unsafe { MemMap::new(&self.pages, self.ram_base) }
    }
}

fn boot<'a>(map: &'a MemMap<'a>) -> BuddyAllocator<'a> {
    let mut b = BuddyAllocator::new(map);
    let mut next = 0;
    for (s, e) in reserved() {
        b.reserve_range(Pfn(s), Pfn(e));
        if next < s {
            b.add_free_range(Pfn(next), Pfn(s));
        }
        next = e;
    }
    if next < map.nr_pages() {
        b.add_free_range(Pfn(next), map.end_pfn());
    }
    b
}

/// Every free block, from the memmap: (pfn, order) of each Buddy head.
fn free_blocks(map: &MemMap<'_>) -> Vec<(u64, u64)> {
    map.pages()
        .iter()
        .enumerate()
        .filter(|(_, p)| p.has_type(PageType::Buddy))
        .map(|(i, p)| (i as u64, p.buddy_order() as u64))
        .collect()
}

fn reserved_count() -> u64 {
    reserved().iter().map(|(s, e)| e - s).sum()
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(u32),
    Free(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..=3).prop_map(Op::Alloc),
        2 => (4u32..=MAX_ORDER).prop_map(Op::Alloc),
        7 => any::<usize>().prop_map(Op::Free),
    ]
}

#[cfg(not(miri))]
const CASES: u32 = 64;
#[cfg(miri)]
const CASES: u32 = 1;
#[cfg(not(miri))]
const MAX_OPS: usize = 300;
#[cfg(miri)]
const MAX_OPS: usize = 24;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random alloc/free sequences against a model of which frames are
    /// live. After every step: blocks never overlap, each frame is free,
    /// allocated or reserved exactly once, and the checker agrees. Freeing
    /// everything restores the initial free-block set.
    #[test]
    fn buddy_matches_model(ops in proptest::collection::vec(op(), 1..MAX_OPS)) {
        let sim = Sim::new(FRAMES);
        let map = sim.map();
        let zone = Mutex::new(boot(&map));
        let pcp = PcpList::new();
        let initial_blocks = free_blocks(&map);
        let initial_free = zone.lock().nr_free_pages();
        prop_assert_eq!(initial_free + reserved_count(), FRAMES);
        let mut owner = vec![false; FRAMES as usize];
        let mut live: Vec<(Pfn, u32)> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc(order) => match if order <= PCP_MAX_ORDER {
                    pcp.alloc_or_refill(&map, &zone, order).map(|p| map.page_to_pfn(p).expect("memmap entry"))
                } else {
                    zone.lock().alloc(order, AllocFlags::empty())
                } {
                    Ok(pfn) => {
                        prop_assert!(pfn.is_aligned_to_order(order), "{:?} order {}", pfn, order);
                        for f in pfn.0..pfn.0 + (1 << order) {
                            prop_assert!(!owner[f as usize], "frame {:#x} handed out twice", f);
                            prop_assert!(!reserved().iter().any(|(s, e)| f >= *s && f < *e));
                            owner[f as usize] = true;
                        }
                        live.push((pfn, order));
                    }
                    Err(e) => {
                        prop_assert_eq!(e, AllocError::NoMemory);
                        // Only refused when no free run of that size is left.
                        prop_assert!(zone.lock().nr_free_pages() < FRAMES);
                    }
                },
                Op::Free(i) if !live.is_empty() => {
                    let (pfn, order) = live.swap_remove(i % live.len());
                    let r = if order <= PCP_MAX_ORDER { pcp.free_or_fallback(&map, &zone, pfn, order) } else { zone.lock().free(pfn, order) };
                    prop_assert_eq!(r, Ok(()));
                    for f in pfn.0..pfn.0 + (1 << order) {
                        owner[f as usize] = false;
                    }
                }
                Op::Free(_) => {}
            }
            let stats = zone.lock().check().map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(pcp.check(&map), Ok(stats.pcp));
            prop_assert!(stats.pcp <= PCP_HIGH);
            let allocated = owner.iter().filter(|o| **o).count() as u64;
            prop_assert_eq!(stats.allocated, allocated);
            prop_assert_eq!(stats.reserved, reserved_count());
            prop_assert_eq!(stats.free + stats.pcp + stats.allocated + stats.reserved, FRAMES);
            prop_assert_eq!(zone.lock().nr_free_pages() + pcp.count(), initial_free - allocated);
        }
        for (pfn, order) in live.drain(..) {
            let r = if order <= PCP_MAX_ORDER { pcp.free_or_fallback(&map, &zone, pfn, order) } else { zone.lock().free(pfn, order) };
            prop_assert_eq!(r, Ok(()));
        }
        pcp.drain(&map, &zone, u64::MAX);
        prop_assert!(zone.lock().check().is_ok());
        prop_assert_eq!(zone.lock().nr_free_pages(), initial_free);
        prop_assert_eq!(free_blocks(&map), initial_blocks);
    }
}

/// Set up, run `f`, check the allocator is intact and unchanged by a refused
/// free.
fn with_alloc(f: impl FnOnce(&mut BuddyAllocator<'_>)) {
    let sim = Sim::new(FRAMES);
    let map = sim.map();
    let mut b = boot(&map);
    f(&mut b);
    assert!(b.check().is_ok(), "{:?}", b.check());
}

fn refused(b: &mut BuddyAllocator<'_>, pfn: Pfn, order: u32, want: FreeError) {
    let before = b.nr_free_pages();
    let blocks = free_blocks(b.map());
    assert_eq!(b.free(pfn, order), Err(want));
    assert_eq!(
        b.nr_free_pages(),
        before,
        "a refused free changed the free count"
    );
    assert_eq!(
        free_blocks(b.map()),
        blocks,
        "a refused free changed the free lists"
    );
    assert!(b.check().is_ok(), "{:?}", b.check());
}

#[test]
fn double_free_is_refused() {
    with_alloc(|b| {
        let p = b.alloc(0, AllocFlags::empty()).unwrap();
        b.free(p, 0).unwrap();
        refused(b, p, 0, FreeError::AlreadyFree);
        let q = b.alloc(3, AllocFlags::empty()).unwrap();
        b.free(q, 3).unwrap();
        refused(b, q, 3, FreeError::AlreadyFree);
        // A page inside a merged free block, not its head.
        refused(b, Pfn(q.0 + 1), 0, FreeError::AlreadyFree);
    });
}

#[test]
fn never_allocated_page_is_refused() {
    with_alloc(|b| {
        // The page after the "image" is free memory nobody allocated.
        refused(b, Pfn(reserved()[1].1), 0, FreeError::AlreadyFree);
    });
}

#[test]
fn reserved_page_is_refused() {
    with_alloc(|b| {
        refused(b, Pfn(0), 0, FreeError::Reserved);
        refused(b, Pfn(reserved()[1].0 + 1), 0, FreeError::Reserved);
    });
}

#[test]
fn wrong_order_is_refused() {
    with_alloc(|b| {
        let p = b.alloc(2, AllocFlags::empty()).unwrap();
        refused(b, p, 1, FreeError::WrongOrder { allocated: 2 });
        refused(b, p, 0, FreeError::WrongOrder { allocated: 2 });
        refused(b, Pfn(p.0 + 1), 0, FreeError::NotHead);
        refused(b, p, MAX_ORDER + 1, FreeError::BadOrder);
        b.free(p, 2).unwrap();
    });
}

#[test]
fn extra_reference_is_refused() {
    with_alloc(|b| {
        let p = b.alloc(0, AllocFlags::empty()).unwrap();
        let page = b.map().pfn_to_page(p).unwrap();
        page.page_ref_inc();
        refused(b, p, 0, FreeError::BadRefcount(2));
        page.page_ref_dec();
        b.free(p, 0).unwrap();
    });
}

/// Overlay only: the memdesc word has no `mapping` (see
/// `gtdesc`: a gmap table's gaddr lives in its descriptor).
#[cfg(not(feature = "memdesc"))]
#[test]
fn non_null_mapping_is_refused() {
    with_alloc(|b| {
        let p = b.alloc(1, AllocFlags::empty()).unwrap();
        let page = b.map().pfn_to_page(p).unwrap();
        page.generic().mapping.store(0xdead_0000, Ordering::Relaxed);
        refused(b, p, 1, FreeError::NonNullMapping(0xdead_0000));
        // The seed's field aliases `mapping`: a gaddr left in a gmap table
        // page is the same bug.
        page.generic().mapping.store(0x10_0000, Ordering::Relaxed);
        page.set_page_type(PageType::GmapTable);
        let gt = super::gtdesc::page_gmap_table(page).unwrap();
        assert_eq!(gt.gaddr(), 0x10_0000);
        page.set_page_type(PageType::Allocated);
        refused(b, p, 1, FreeError::NonNullMapping(0x10_0000));
        page.generic().mapping.store(0, Ordering::Relaxed);
        b.free(p, 1).unwrap();
    });
}

#[test]
fn page_in_use_as_table_is_refused() {
    with_alloc(|b| {
        let p = b.alloc(0, AllocFlags::empty()).unwrap();
        let page = b.map().pfn_to_page(p).unwrap();
        #[cfg(not(feature = "memdesc"))]
        page.set_page_type(PageType::PageTable);
        // memdesc: the word points at a (stand-in) descriptor.
        #[cfg(feature = "memdesc")]
        let desc = super::page::MemdescHead::zeroed_for_tests();
        #[cfg(feature = "memdesc")]
        page.set_desc(PageType::PageTable, core::ptr::from_ref(&desc).cast());
        refused(b, p, 0, FreeError::InUse(PageType::PageTable));
        #[cfg(not(feature = "memdesc"))]
        page.set_page_type(PageType::Allocated);
        #[cfg(feature = "memdesc")]
        page.make_allocated(0);
        b.free(p, 0).unwrap();
    });
}

#[test]
fn out_of_range_and_misaligned_are_refused() {
    with_alloc(|b| {
        refused(b, Pfn(FRAMES), 0, FreeError::OutOfRange);
        refused(b, Pfn(u64::MAX), 0, FreeError::OutOfRange);
        let p = b.alloc(0, AllocFlags::empty()).unwrap();
        // Freed with a larger order than allocated: the allocated order is
        // the reason given, aligned or not.
        refused(b, p, 1, FreeError::WrongOrder { allocated: 0 });
        b.free(p, 0).unwrap();
    });
}

#[test]
fn zero_flag_zeroes() {
    with_alloc(|b| {
        let p = b.alloc(2, AllocFlags::empty()).unwrap();
        let ptr = b.map().frame_ptr(p);
        // SAFETY: the block is allocated to this test.
        unsafe { core::ptr::write_bytes(ptr, 0xa5, 4 * PAGE_SIZE as usize) };
        b.free(p, 2).unwrap();
        let q = b.alloc(2, AllocFlags::ZERO).unwrap();
        let ptr = b.map().frame_ptr(q);
        // SAFETY: allocated to this test, 4 pages long.
        let bytes = unsafe { core::slice::from_raw_parts(ptr, 4 * PAGE_SIZE as usize) };
        assert!(bytes.iter().all(|&x| x == 0));
        b.free(q, 2).unwrap();
    });
}

#[test]
fn exhaustion_then_recovery() {
    with_alloc(|b| {
        let start = b.nr_free_pages();
        let mut got = Vec::new();
        while let Ok(p) = b.alloc(0, AllocFlags::empty()) {
            got.push(p);
        }
        assert_eq!(got.len() as u64, start);
        assert_eq!(b.alloc(0, AllocFlags::empty()), Err(AllocError::NoMemory));
        assert_eq!(
            b.alloc(MAX_ORDER + 1, AllocFlags::empty()),
            Err(AllocError::BadOrder)
        );
        for p in got {
            b.free(p, 0).unwrap();
        }
        assert_eq!(b.nr_free_pages(), start);
    });
}

#[test]
#[cfg_attr(miri, ignore = "needs 32 MiB of simulated RAM, too slow under Miri")]
fn contiguous_blocks() {
    let frames = 8 * 1024;
    let sim = Sim::new(frames);
    let map = sim.map();
    let mut b = BuddyAllocator::new(&map);
    b.reserve_range(Pfn(0), Pfn(2));
    b.add_free_range(Pfn(2), map.end_pfn());
    // Blocks 1..8 are whole; block 0 is not (lowcore).
    let pfn = b.alloc_contig(7).unwrap();
    assert_eq!(pfn, Pfn(1024));
    assert_eq!(b.alloc_contig(1), Err(AllocError::NoMemory));
    assert!(b.check().is_ok());
    for i in 0..7 {
        b.free(Pfn(pfn.0 + i * 1024), MAX_ORDER).unwrap();
    }
    assert!(b.check().is_ok());
    assert_eq!(b.nr_free(MAX_ORDER), 7);
}

/// The per-CPU list: LIFO reuse, refill and drain in batches, and every
/// misuse routed to the buddy allocator's precise refusal.
#[test]
fn pcp_fast_path_and_misuse() {
    let sim = Sim::new(FRAMES);
    let map = sim.map();
    let zone = Mutex::new(boot(&map));
    let pcp = PcpList::new();
    let alloc = || {
        pcp.alloc_or_refill(&map, &zone, 0)
            .map(|p| map.page_to_pfn(p).expect("memmap entry"))
    };
    let free = |pfn| pcp.free_or_fallback(&map, &zone, pfn, 0);
    let start = zone.lock().nr_free_pages();
    let a = alloc().unwrap();
    assert_eq!(pcp.count(), super::pcp::PCP_BATCH - 1);
    // The owner leaves its words behind; the next allocation clears them.
    let page = map.pfn_to_page(a).unwrap();
    #[cfg(not(feature = "memdesc"))]
    {
        page.generic().index.store(0x1234, Ordering::Relaxed);
        page.generic().private.store(0x5678, Ordering::Relaxed);
        page.generic().lru.prev.store(0x9abc, Ordering::Relaxed);
    }
    assert_eq!(free(a), Ok(()));
    assert_eq!(pcp.count(), super::pcp::PCP_BATCH);
    // LIFO: the page just freed comes back first, as Linux's prep_new_page
    // leaves it: mapping, private and the list link clear; lru.prev and
    // index are the owner's business.
    assert_eq!(alloc(), Ok(a));
    assert_eq!(page.refcount(), 1);
    assert!(page.has_type(PageType::Allocated));
    #[cfg(not(feature = "memdesc"))]
    {
        assert_eq!(page.generic().lru.next.load(Ordering::Relaxed), 0);
        assert_eq!(page.generic().mapping.load(Ordering::Relaxed), 0);
        assert_eq!(page.generic().private.load(Ordering::Relaxed), 0);
    }
    // Misuse on the fast path gets the same answers as the zone gives.
    page.page_ref_inc();
    assert_eq!(free(a), Err(FreeError::BadRefcount(2)));
    page.page_ref_dec();
    #[cfg(not(feature = "memdesc"))]
    {
        page.generic().mapping.store(0x1000, Ordering::Relaxed);
        assert_eq!(free(a), Err(FreeError::NonNullMapping(0x1000)));
        page.generic().mapping.store(0, Ordering::Relaxed);
    }
    // A flag the owner set sends the page down the checked path, which
    // accepts it (flags are not misuse) and clears them.
    page.set_flags(super::page::PageFlags::DIRTY);
    let before = pcp.count();
    assert_eq!(free(a), Ok(()));
    assert_eq!(pcp.count(), before, "a flagged page went to the zone");
    assert_eq!(page.raw_flags(), 0);
    assert_eq!(free(a), Err(FreeError::AlreadyFree));
    let a = alloc().unwrap();
    assert_eq!(free(a), Ok(()));
    assert_eq!(free(a), Err(FreeError::AlreadyFree));
    let big = zone.lock().alloc(2, AllocFlags::empty()).unwrap();
    assert_eq!(free(big), Err(FreeError::WrongOrder { allocated: 2 }));
    assert_eq!(free(Pfn(FRAMES + 5)), Err(FreeError::OutOfRange));
    zone.lock().free(big, 2).unwrap();
    // Above the high mark the list drains a batch.
    let many: Vec<Pfn> = (0..PCP_HIGH + 10).map(|_| alloc().unwrap()).collect();
    for p in many {
        free(p).unwrap();
        assert!(pcp.count() <= PCP_HIGH);
    }
    let stats = zone.lock().check().unwrap();
    assert_eq!(pcp.check(&map), Ok(stats.pcp));
    pcp.drain(&map, &zone, u64::MAX);
    assert_eq!(pcp.count(), 0);
    assert_eq!(zone.lock().nr_free_pages(), start);
    assert!(zone.lock().check().is_ok());
}

/// Orders 1 to 3 on the per-CPU lists: blocks keep an allocated block's
/// layout, come back LIFO, and every misuse still gets the zone's answer.
#[test]
fn pcp_high_orders() {
    let sim = Sim::new(FRAMES);
    let map = sim.map();
    let zone = Mutex::new(boot(&map));
    let pcp = PcpList::new();
    let start = zone.lock().nr_free_pages();
    let alloc = |order| {
        pcp.alloc_or_refill(&map, &zone, order)
            .map(|p| map.page_to_pfn(p).expect("memmap entry"))
    };
    let free = |pfn, order| pcp.free_or_fallback(&map, &zone, pfn, order);
    for order in 1..=PCP_MAX_ORDER {
        let c0 = pcp.count();
        let a = alloc(order).unwrap();
        assert!(a.is_aligned_to_order(order));
        // A refill takes a batch of PCP_BATCH pages as blocks of `order`.
        assert_eq!(pcp.count(), c0 + super::pcp::PCP_BATCH - (1 << order));
        let head = map.pfn_to_page(a).unwrap();
        assert!(head.has_type(PageType::Allocated));
        assert_eq!(head.head_order(), order);
        assert_eq!(head.refcount(), 1);
        assert_eq!(free(a, order), Ok(()));
        assert!(head.has_type(PageType::Pcp));
        assert_eq!(alloc(order), Ok(a), "LIFO");
        // Misuse: the zone's refusals, and nothing changes.
        let before = pcp.count();
        assert_eq!(
            free(a, order - 1),
            Err(FreeError::WrongOrder { allocated: order })
        );
        assert_eq!(free(Pfn(a.0 + 1), order), Err(FreeError::NotHead));
        let tail = map.pfn_to_page(Pfn(a.0 + (1 << order) - 1)).unwrap();
        tail.make_allocated(0);
        assert_eq!(
            free(a, order),
            Err(FreeError::BadTail(Pfn(a.0 + (1 << order) - 1)))
        );
        tail.make_tail();
        head.page_ref_inc();
        assert_eq!(free(a, order), Err(FreeError::BadRefcount(2)));
        head.page_ref_dec();
        // A page inside the block made to look like an allocated head of a
        // smaller order: not aligned to that order, so refused.
        let inner = map.pfn_to_page(Pfn(a.0 + 1)).unwrap();
        inner.make_allocated(order - 1);
        if order > 1 {
            assert_eq!(free(Pfn(a.0 + 1), order - 1), Err(FreeError::BadOrder));
        }
        inner.make_tail();
        assert_eq!(pcp.count(), before);
        assert_eq!(free(a, order), Ok(()));
        assert_eq!(free(a, order), Err(FreeError::AlreadyFree));
        // A page inside a block parked on the list is free already too.
        assert_eq!(
            free(Pfn(a.0 + (1 << order) - 1), 0),
            Err(FreeError::AlreadyFree)
        );
        let stats = zone.lock().check().unwrap();
        assert_eq!(pcp.check(&map), Ok(stats.pcp));
    }
    // Past the high mark the lists drain back under it.
    let mut many: Vec<(Pfn, u32)> = Vec::new();
    let mut pages = 0;
    while pages <= PCP_HIGH + 8 {
        // Mixed orders; order 0 when memory (small under Miri) is too
        // fragmented for the larger ones.
        let order = many.len() as u32 % (PCP_MAX_ORDER + 1);
        let (pfn, order) = match alloc(order) {
            Ok(pfn) => (pfn, order),
            Err(_) => (alloc(0).unwrap(), 0),
        };
        many.push((pfn, order));
        pages += 1 << order;
    }
    for (p, order) in many {
        free(p, order).unwrap();
        assert!(pcp.count() <= PCP_HIGH);
    }
    let stats = zone.lock().check().unwrap();
    assert_eq!(pcp.check(&map), Ok(stats.pcp));
    pcp.drain(&map, &zone, u64::MAX);
    assert_eq!(pcp.count(), 0);
    assert_eq!(zone.lock().nr_free_pages(), start);
    assert!(zone.lock().check().is_ok());
}

#[test]
#[cfg_attr(miri, ignore = "needs 32 MiB of simulated RAM, too slow under Miri")]
fn alloc_below_takes_a_low_block_and_refuses_when_none_is_left() {
    let frames = 8 * 1024;
    let sim = Sim::new(frames);
    let map = sim.map();
    let mut b = BuddyAllocator::new(&map);
    b.reserve_range(Pfn(0), Pfn(2));
    b.add_free_range(Pfn(2), map.end_pfn());
    let free0 = b.nr_free_pages();
    // Below frame 2048: from block 1 at the most (block 0 starts reserved).
    let mut got = Vec::new();
    while let Ok(pfn) = b.alloc_below(1, 2048, AllocFlags::empty()) {
        assert!(pfn.0 + 2 <= 2048, "{pfn:?} ends above the limit");
        got.push(pfn);
    }
    // Everything below the limit but the 2 reserved frames, in pairs.
    assert_eq!(got.len() as u64, (2048 - 2) / 2);
    assert_eq!(
        b.alloc_below(1, 2048, AllocFlags::empty()),
        Err(AllocError::NoMemory)
    );
    // Above it, memory is left: a plain alloc still works.
    assert!(b.alloc(1, AllocFlags::empty()).is_ok_and(|p| p.0 >= 2048));
    assert!(b.check().is_ok());
    assert_eq!(
        b.alloc_below(11, 1 << 20, AllocFlags::empty()),
        Err(AllocError::BadOrder)
    );
    for p in got {
        b.free(p, 1).unwrap();
    }
    assert!(b.check().is_ok());
    assert_eq!(b.nr_free_pages(), free0 - 2);
}
