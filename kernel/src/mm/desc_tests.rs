//! Host tests of the memdesc descriptor allocator (`desc`), on the global
//! simulated memory (Miri runs them too).

use super::desc::{self, DescCheckError, DESC_ALIGN, GTDESC_CACHE, PTDESC_CACHE};
use super::page::PageType;
use super::ptdesc::{self, PtDescError};
use super::{alloc_pages, fail, gtdesc, host_test_serial, nr_free_pages, AllocFlags};

fn free_now() -> u64 {
    super::drain_pcp();
    nr_free_pages()
}

#[test]
fn objects_are_aligned_distinct_and_slabs_go_back() {
    let _s = host_test_serial();
    let (free, inuse, slabs) = (free_now(), PTDESC_CACHE.inuse(), PTDESC_CACHE.slabs());
    let n = PTDESC_CACHE.per_slab() + 3;
    let objs: Vec<_> = (0..n).map(|_| PTDESC_CACHE.alloc().unwrap()).collect();
    assert_eq!(PTDESC_CACHE.inuse(), inuse + n as u64);
    assert!(PTDESC_CACHE.slabs() > slabs);
    let mut addrs: Vec<usize> = objs.iter().map(|p| p.as_ptr().addr()).collect();
    assert!(addrs.iter().all(|a| a % DESC_ALIGN == 0));
    assert!(addrs
        .iter()
        .all(|&a| PTDESC_CACHE.locate(a as u64).is_some()));
    // Not objects of the other cache.
    assert!(addrs
        .iter()
        .all(|&a| GTDESC_CACHE.locate(a as u64).is_none()));
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), n);
    for p in objs {
        // SAFETY: each came from this cache's alloc and is freed once.
        unsafe { PTDESC_CACHE.free(p) };
    }
    assert_eq!(PTDESC_CACHE.inuse(), inuse);
    assert_eq!(PTDESC_CACHE.slabs(), slabs);
    assert_eq!(free_now(), free, "an empty slab was kept");
}

#[test]
fn objects_come_zeroed_after_reuse() {
    let _s = host_test_serial();
    let p = PTDESC_CACHE.alloc().unwrap();
    // SAFETY: the object is ours and PTDESC_CACHE.size() bytes long.
    unsafe { core::ptr::write_bytes(p.as_ptr(), 0xa5, PTDESC_CACHE.size()) };
    let keep = PTDESC_CACHE.alloc().unwrap();
    // SAFETY: from this cache, freed once.
    unsafe { PTDESC_CACHE.free(p) };
    let q = PTDESC_CACHE.alloc().unwrap();
    // SAFETY: a fresh object of size() bytes.
    let bytes = unsafe { core::slice::from_raw_parts(q.as_ptr(), PTDESC_CACHE.size()) };
    assert!(bytes.iter().all(|&b| b == 0));
    // SAFETY: from this cache, freed once each.
    unsafe {
        PTDESC_CACHE.free(q);
        PTDESC_CACHE.free(keep);
    }
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
fn ctor_and_dtor_move_the_word_between_inline_and_pointer() {
    let _s = host_test_serial();
    let descs = desc::nr_desc();
    let p = alloc_pages(2, AllocFlags::empty()).unwrap();
    let page = p.page() as *const super::page::Page;
    let t = ptdesc::pagetable_pmd_ctor(p).unwrap();
    // SAFETY: a memmap entry: it lives for the process.
    let page = unsafe { &*page };
    assert!(page.has_type(PageType::PageTable));
    assert_eq!(page.head_order(), 2);
    assert_eq!(page.refcount(), 1);
    assert_eq!(
        page.memdesc() & !0xf,
        core::ptr::from_ref::<ptdesc::PtDesc>(&t).addr() as u64
    );
    assert_eq!(desc::nr_desc(), descs + 1);
    assert!(desc::check().is_ok(), "{:?}", desc::check());
    let p = ptdesc::pagetable_dtor(t).unwrap();
    assert!(p.page().is_fresh_allocated(2));
    assert_eq!(desc::nr_desc(), descs);
    drop(p);
}

#[test]
fn the_checker_names_a_shared_descriptor() {
    let _s = host_test_serial();
    let mk = || ptdesc::pagetable_pte_ctor(alloc_pages(0, AllocFlags::empty()).unwrap()).unwrap();
    let (a, b) = (mk(), mk());
    let pa = super::pfn_to_page(a.phys().pfn()).unwrap();
    let wa = pa.memdesc();
    pa.set_desc(
        PageType::PageTable,
        core::ptr::from_ref::<ptdesc::PtDesc>(&b).cast(),
    );
    let checked = desc::check();
    let refused = ptdesc::page_ptdesc(pa).map(|_| ());
    pa.set_desc(
        PageType::PageTable,
        core::ptr::with_exposed_provenance((wa & !0xf) as usize),
    );
    assert!(
        matches!(checked, Err(DescCheckError::BackPointer { .. })),
        "{checked:?}"
    );
    assert_eq!(refused, Err(PtDescError::BadDescriptor));
    assert!(desc::check().is_ok());
}
