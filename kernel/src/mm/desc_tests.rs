//! Host tests of the memdesc descriptor allocator (`desc`) and of the
//! checker that verifies every descriptor pointer, on the global simulated
//! memory (Miri runs them too).

use super::desc::{self, DescCheckError, DESC_ALIGN, GTDESC_CACHE, PTDESC_CACHE};
use super::page::{PageFlags, PageType};
use super::ptdesc::{self, PtDescError};
use super::{
    alloc_pages, fail, gtdesc, host_test_serial, nr_free_pages_and_desc_slabs, AllocFlags,
};

fn free_now() -> u64 {
    super::drain_pcp();
    nr_free_pages_and_desc_slabs()
}

fn pte_table() -> crate::mm::frame::Frame<ptdesc::PtDesc> {
    ptdesc::pagetable_pte_ctor(alloc_pages(0, AllocFlags::empty()).unwrap()).unwrap()
}

#[test]
fn objects_are_aligned_distinct_and_slabs_are_kept() {
    let _s = host_test_serial();
    let (free, inuse, slabs) = (free_now(), PTDESC_CACHE.inuse(), PTDESC_CACHE.slabs());
    let n = PTDESC_CACHE.per_slab() + 3;
    let objs: Vec<_> = (0..n).map(|_| PTDESC_CACHE.alloc().unwrap()).collect();
    assert_eq!(PTDESC_CACHE.inuse(), inuse + n as u64);
    assert!(PTDESC_CACHE.slabs() > slabs);
    let grown = PTDESC_CACHE.slabs();
    let mut addrs: Vec<usize> = objs.iter().map(|p| p.as_ptr().addr()).collect();
    assert!(addrs.iter().all(|a| a % DESC_ALIGN == 0));
    assert!(addrs.iter().all(|&a| PTDESC_CACHE.is_allocated(a as u64)));
    // Not objects of the other cache.
    assert!(addrs
        .iter()
        .all(|&a| GTDESC_CACHE.locate(a as u64).is_none()));
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), n);
    for p in &objs {
        // SAFETY: each came from this cache's alloc and is freed once.
        unsafe { PTDESC_CACHE.free(*p) };
    }
    assert_eq!(PTDESC_CACHE.inuse(), inuse);
    assert!(objs
        .iter()
        .all(|p| !PTDESC_CACHE.is_allocated(p.as_ptr() as u64)));
    // Type-stable: the slabs stay the cache's (and count as free pages
    // for leak checks), and the next allocations reuse them.
    assert_eq!(PTDESC_CACHE.slabs(), grown);
    assert_eq!(free_now(), free);
    let again: Vec<_> = (0..n).map(|_| PTDESC_CACHE.alloc().unwrap()).collect();
    assert_eq!(PTDESC_CACHE.slabs(), grown);
    for p in again {
        // SAFETY: from this cache, freed once.
        unsafe { PTDESC_CACHE.free(p) };
    }
}

#[test]
fn a_free_of_a_non_object_is_refused() {
    let _s = host_test_serial();
    let bugs = crate::bug::nr_reports();
    let p = PTDESC_CACHE.alloc().unwrap();
    // SAFETY: from this cache, freed once...
    unsafe { PTDESC_CACHE.free(p) };
    // ...and a second free, and a free into the wrong cache, are refused
    // and reported, and change nothing.
    let inuse = PTDESC_CACHE.inuse();
    // SAFETY: refused: the object is not allocated (no memory is touched).
    unsafe { PTDESC_CACHE.free(p) };
    let q = PTDESC_CACHE.alloc().unwrap();
    // SAFETY: refused: not an object of GTDESC_CACHE.
    unsafe { GTDESC_CACHE.free(q) };
    assert_eq!(crate::bug::nr_reports(), bugs + 2);
    assert_eq!(PTDESC_CACHE.inuse(), inuse + 1);
    // SAFETY: from this cache, freed once.
    unsafe { PTDESC_CACHE.free(q) };
}

#[test]
fn a_stale_view_stays_memory_safe() {
    // page_ptdesc hands out a &'static view, as the overlay does; kept past
    // the dtor it reads a freed descriptor of the same type (type-stable
    // slabs), whose back-pointer still names a memmap entry.
    let _s = host_test_serial();
    let f = pte_table();
    let page = super::pfn_to_page(f.phys().pfn()).unwrap();
    let d: &'static ptdesc::PtDesc = ptdesc::page_ptdesc(page).unwrap();
    drop(f);
    assert!(core::ptr::eq(ptdesc::ptdesc_page(d), page));
    assert_eq!(d.order(), 0);
    assert!(
        ptdesc::page_ptdesc(page).is_err(),
        "the page is no page table now"
    );
    let _ = d.pt_frag_refcount();
}

#[test]
fn a_failed_descriptor_allocation_fails_the_ctor_and_changes_nothing() {
    let _s = host_test_serial();
    let free = free_now();
    let (nr, descs) = (ptdesc::nr_pagetable(), desc::nr_desc());
    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    fail::fail_alloc_nth(1);
    let (p, e) = ptdesc::pagetable_pte_ctor(p).unwrap_err();
    fail::fail_alloc_off();
    assert_eq!(e, PtDescError::NoDescriptor);
    assert!(p.page().is_fresh_allocated(0));
    assert_eq!((ptdesc::nr_pagetable(), desc::nr_desc()), (nr, descs));
    let g = alloc_pages(2, AllocFlags::empty()).unwrap();
    fail::fail_alloc_nth(1);
    let (g, e) = gtdesc::gmap_table_ctor(g, 1, 0, 0).unwrap_err();
    fail::fail_alloc_off();
    assert_eq!(e, gtdesc::GtDescError::NoDescriptor);
    assert!(g.page().is_fresh_allocated(2));
    drop((p, g));
    assert_eq!(free_now(), free);
}

#[test]
fn a_failed_slab_page_allocation_fails_the_ctor_and_changes_nothing() {
    // Fill the partial slabs so the next descriptor needs a new slab page,
    // then fail that page (the second allocation the ctor makes).
    let _s = host_test_serial();
    let mut fill = Vec::new();
    while PTDESC_CACHE.inuse() < PTDESC_CACHE.slabs() * PTDESC_CACHE.per_slab() as u64 {
        fill.push(PTDESC_CACHE.alloc().unwrap());
    }
    let (free, slabs, descs) = (free_now(), PTDESC_CACHE.slabs(), desc::nr_desc());
    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    fail::fail_alloc_nth(2);
    let (p, e) = ptdesc::pagetable_pte_ctor(p).unwrap_err();
    let fired = !fail::pending();
    fail::fail_alloc_off();
    assert!(
        fired,
        "the slab page allocation was not the second allocation"
    );
    assert_eq!(e, PtDescError::NoDescriptor);
    assert!(p.page().is_fresh_allocated(0));
    assert_eq!((PTDESC_CACHE.slabs(), desc::nr_desc()), (slabs, descs));
    drop(p);
    assert_eq!(free_now(), free);
    for o in fill {
        // SAFETY: from this cache, freed once.
        unsafe { PTDESC_CACHE.free(o) };
    }
}

#[test]
fn ctor_and_dtor_move_order_flags_and_refcount_between_word_and_descriptor() {
    let _s = host_test_serial();
    let descs = desc::nr_desc();
    let p = alloc_pages(2, AllocFlags::empty()).unwrap();
    p.page().set_flags(PageFlags::HEAD | PageFlags::DIRTY);
    let page = p.page() as *const super::page::Page;
    let t = ptdesc::pagetable_pmd_ctor(p).unwrap();
    // SAFETY: a memmap entry: it lives for the process.
    let page = unsafe { &*page };
    assert!(page.has_type(PageType::PageTable));
    assert_eq!((page.head_order(), page.refcount()), (2, 1));
    assert!(page.flags().contains(PageFlags::DIRTY));
    assert_eq!(
        page.memdesc() & !0xf,
        core::ptr::from_ref::<ptdesc::PtDesc>(&t).addr() as u64
    );
    assert_eq!(desc::nr_desc(), descs + 1);
    assert!(desc::check().is_ok(), "{:?}", desc::check());
    let p = ptdesc::pagetable_dtor(t).unwrap();
    assert_eq!((p.page().head_order(), p.page().refcount()), (2, 1));
    assert!(p
        .page()
        .flags()
        .contains(PageFlags::DIRTY | PageFlags::HEAD));
    p.page().set_flags(PageFlags::HEAD);
    assert!(p.page().is_fresh_allocated(2));
    assert_eq!(desc::nr_desc(), descs);
    drop(p);
}

/// Point page `pa` (a page table) at `d` for `f`, then restore its word.
fn with_word<R>(pa: &super::page::Page, t: PageType, d: *const u8, f: impl FnOnce() -> R) -> R {
    let w = pa.memdesc();
    pa.set_desc(t, d);
    let r = f();
    pa.set_desc(
        PageType::PageTable,
        core::ptr::with_exposed_provenance((w & !0xf) as usize),
    );
    r
}

#[test]
fn the_checker_names_a_shared_descriptor() {
    let _s = host_test_serial();
    let (a, b) = (pte_table(), pte_table());
    let pa = super::pfn_to_page(a.phys().pfn()).unwrap();
    let (checked, refused) = with_word(
        pa,
        PageType::PageTable,
        core::ptr::from_ref::<ptdesc::PtDesc>(&b).cast(),
        || (desc::check(), ptdesc::page_ptdesc(pa).map(|_| ())),
    );
    assert!(
        matches!(checked, Err(DescCheckError::BackPointer { .. })),
        "{checked:?}"
    );
    assert_eq!(refused, Err(PtDescError::BadDescriptor));
    assert!(desc::check().is_ok());
}

#[test]
fn the_checker_names_a_pointer_to_no_allocated_object() {
    let _s = host_test_serial();
    let a = pte_table();
    let pa = super::pfn_to_page(a.phys().pfn()).unwrap();
    // A freed object of the right cache, and an object of the wrong one.
    let o = PTDESC_CACHE.alloc().unwrap();
    // SAFETY: from this cache, freed once; only its address is used.
    unsafe { PTDESC_CACHE.free(o) };
    let checked = with_word(pa, PageType::PageTable, o.as_ptr(), desc::check);
    assert!(
        matches!(checked, Err(DescCheckError::NotAnObject { .. })),
        "{checked:?}"
    );
    let g = GTDESC_CACHE.alloc().unwrap();
    let checked = with_word(pa, PageType::PageTable, g.as_ptr(), desc::check);
    assert!(
        matches!(checked, Err(DescCheckError::NotAnObject { .. })),
        "{checked:?}"
    );
    // SAFETY: from this cache, freed once.
    unsafe { GTDESC_CACHE.free(g) };
    assert!(desc::check().is_ok());
}

#[test]
fn the_checker_names_a_leaked_descriptor_and_a_wrong_order() {
    let _s = host_test_serial();
    // An object in use that no page points to: a leak.
    let o = PTDESC_CACHE.alloc().unwrap();
    let checked = desc::check();
    // SAFETY: from this cache, freed once.
    unsafe { PTDESC_CACHE.free(o) };
    assert!(
        matches!(checked, Err(DescCheckError::Count { .. })),
        "{checked:?}"
    );
    // A page-table descriptor that says order 1 (no table has it): a
    // forged table page whose descriptor names it back.
    let p = alloc_pages(1, AllocFlags::empty()).unwrap();
    let pg = p.page() as *const super::page::Page;
    // SAFETY: a memmap entry: it lives for the process.
    let pg = unsafe { &*pg };
    let o = PTDESC_CACHE.alloc().unwrap();
    // SAFETY: the object is ours; it begins with a MemdescHead (atomics).
    let md = unsafe { &*o.as_ptr().cast::<super::page::MemdescHead>() };
    md.init(pg);
    pg.set_desc(PageType::PageTable, o.as_ptr());
    let checked = desc::check();
    pg.make_allocated(1);
    // SAFETY: from this cache, freed once.
    unsafe { PTDESC_CACHE.free(o) };
    assert!(
        matches!(checked, Err(DescCheckError::Order { order: 1, .. })),
        "{checked:?}"
    );
    drop(p);
    assert!(desc::check().is_ok(), "{:?}", desc::check());
}
