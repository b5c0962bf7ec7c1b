//! Host tests of the owned handles over the global allocator (simulated
//! memory): a dropped `Pages` or `Frame` gives its block back, the ctors
//! and dtors keep NR_PAGETABLE and the gmap-table count exact and refuse
//! the wrong kind of block, `from_raw` checks the type tag. Miri runs
//! these (`x.py test --miri`).

use super::addr::PhysAddr;
use super::frame::{Frame, FrameError};
use super::gtdesc::{self, GmapTableDesc, GtDescError};
use super::page::PageType;
use super::ptdesc::{self, PtDesc, PtDescError};
use super::{
    alloc_pages, drain_pcp, free_pages, host_test_serial, nr_free_pages_and_desc_slabs, AllocFlags,
};

fn free_now() -> u64 {
    drain_pcp();
    nr_free_pages_and_desc_slabs()
}

#[test]
fn a_dropped_pages_handle_frees_its_block() {
    let _s = host_test_serial();
    let before = free_now();
    {
        let _a = alloc_pages(0, AllocFlags::empty()).unwrap();
        let _b = alloc_pages(3, AllocFlags::empty()).unwrap();
        assert_eq!(free_now(), before - 9);
    }
    assert_eq!(free_now(), before);
    // An early return drops it the same way.
    let f = || -> Result<(), ()> {
        let _p = alloc_pages(2, AllocFlags::empty()).map_err(|_| ())?;
        Err(())
    };
    assert_eq!(f(), Err(()));
    assert_eq!(free_now(), before);
}

#[test]
fn a_refused_free_hands_the_block_back() {
    let _s = host_test_serial();
    let before = free_now();
    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    p.page().page_ref_inc();
    let (p, e) = free_pages(p).unwrap_err();
    assert_eq!(e, super::FreeError::BadRefcount(2));
    p.page().page_ref_dec();
    assert!(free_pages(p).is_ok());
    assert_eq!(free_now(), before);
}

#[test]
fn ctor_and_dtor_keep_the_page_table_count() {
    let _s = host_test_serial();
    let (before, t0) = (free_now(), ptdesc::nr_pagetable());
    let pt = ptdesc::pagetable_pte_ctor(ptdesc::pagetable_alloc(0).unwrap()).unwrap();
    let crst = ptdesc::pagetable_pmd_ctor(ptdesc::pagetable_alloc(2).unwrap()).unwrap();
    assert_eq!(ptdesc::nr_pagetable(), t0 + 5);
    assert_eq!(crst.pt_index(), ptdesc::CRST_SEGMENT);
    assert_eq!((pt.order(), crst.order()), (0, 2));
    // The dtor gives the pages back as Pages; dropping a frame does both.
    let p = ptdesc::pagetable_dtor(pt).unwrap();
    assert_eq!(p.page().page_type(), Some(PageType::Allocated));
    assert!(ptdesc::pagetable_free(p).is_ok());
    drop(crst);
    assert_eq!(ptdesc::nr_pagetable(), t0);
    assert_eq!(free_now(), before);
}

#[test]
fn ctors_refuse_the_wrong_block_and_hand_it_back() {
    let _s = host_test_serial();
    let (before, t0) = (free_now(), ptdesc::nr_pagetable());
    let big = ptdesc::pagetable_alloc(2).unwrap();
    let (big, e) = ptdesc::pagetable_pte_ctor(big).unwrap_err();
    assert_eq!(e, PtDescError::WrongOrder(2));
    let small = ptdesc::pagetable_alloc(0).unwrap();
    let (small, e) = ptdesc::pagetable_pmd_ctor(small).unwrap_err();
    assert_eq!(e, PtDescError::WrongOrder(0));
    let (small, e) = gtdesc::gmap_table_ctor(small, 1, 0, 0).unwrap_err();
    assert_eq!(e, GtDescError::WrongOrder(0));
    // A page someone else holds a reference to.
    small.page().page_ref_inc();
    let (small, e) = ptdesc::pagetable_pte_ctor(small).unwrap_err();
    assert_eq!(e, PtDescError::NotAllocated(Some(PageType::Allocated)));
    small.page().page_ref_dec();
    let (big, e) = ptdesc::pagetable_crst_ctor(big, 7).unwrap_err();
    assert_eq!(e, PtDescError::NotAllocated(Some(PageType::Allocated)));
    assert_eq!(ptdesc::nr_pagetable(), t0);
    drop((big, small));
    assert_eq!(free_now(), before);
}

#[test]
fn gmap_table_ctor_records_and_the_dtor_clears() {
    let _s = host_test_serial();
    let (before, g0) = (free_now(), gtdesc::nr_gmap_table_pages());
    let p = alloc_pages(2, AllocFlags::empty()).unwrap();
    let t = gtdesc::gmap_table_ctor(p, 7, 1, 0x8000_0000).unwrap();
    assert_eq!((t.owner(), t.raw_level(), t.gaddr()), (7, 1, 0x8000_0000));
    assert_eq!(gtdesc::nr_gmap_table_pages(), g0 + 4);
    // The gaddr aliases `mapping`: the dtor clears it, so the free passes.
    let p = gtdesc::gmap_table_dtor(t).unwrap();
    assert_eq!(p.page().mapping(), 0);
    drop(p);
    // A refused free gives the table back as it was.
    let p = alloc_pages(2, AllocFlags::empty()).unwrap();
    let t = gtdesc::gmap_table_ctor(p, 7, 0, 1 << 31).unwrap();
    super::frame_page_for_tests(&t).page_ref_inc();
    let (t, e) = gtdesc::gmap_table_free(t).unwrap_err();
    assert_eq!(e, GtDescError::Free(super::FreeError::BadRefcount(2)));
    assert_eq!((t.owner(), t.raw_level(), t.gaddr()), (7, 0, 1 << 31));
    assert_eq!(gtdesc::nr_gmap_table_pages(), g0 + 4);
    super::frame_page_for_tests(&t).page_ref_dec();
    drop(t);
    assert_eq!(gtdesc::nr_gmap_table_pages(), g0);
    assert_eq!(free_now(), before);
}

#[test]
fn shadow_page_tables_are_order_0_gmap_tables_and_only_shadows_have_them() {
    let _s = host_test_serial();
    let (before, g0) = (free_now(), gtdesc::nr_gmap_table_pages());
    let lvl = gtdesc::GMAP_PTE_LEVEL;
    let flags = gtdesc::GT_SHADOW | gtdesc::GT_FAKE;
    // A shadow page table: order 0, flags kept, one page counted.
    let t = gtdesc::gmap_table_ctor_flags(
        alloc_pages(0, AllocFlags::empty()).unwrap(),
        3,
        lvl,
        0x5000,
        flags,
    )
    .unwrap();
    assert_eq!(
        (t.raw_level(), t.flags(), t.gaddr(), t.order()),
        (lvl, flags, 0x5000, 0)
    );
    assert!(t.is_shadow());
    assert_eq!(gtdesc::nr_gmap_table_pages(), g0 + 1);
    // Refused, block handed back: a page table that is not a shadow's, one
    // of order 2, a CRST table of order 0, an unknown flag or level.
    for (order, level, fl) in [
        (0, lvl, 0),
        (2, lvl, gtdesc::GT_SHADOW),
        (0, 0, gtdesc::GT_SHADOW),
        (2, 0, 8),
        (2, 5, gtdesc::GT_SHADOW),
        (2, 0, gtdesc::GT_FAKE),
    ] {
        let p = alloc_pages(order, AllocFlags::empty()).unwrap();
        let (p, e) = gtdesc::gmap_table_ctor_flags(p, 3, level, 0, fl).unwrap_err();
        assert_eq!(e, GtDescError::WrongOrder(order), "{order} {level} {fl}");
        assert_eq!(p.order(), order);
    }
    // A refused free gives it back with its flags.
    super::frame_page_for_tests(&t).page_ref_inc();
    let (t, e) = gtdesc::gmap_table_free(t).unwrap_err();
    assert_eq!(e, GtDescError::Free(super::FreeError::BadRefcount(2)));
    assert_eq!((t.raw_level(), t.flags(), t.gaddr()), (lvl, flags, 0x5000));
    assert_eq!(gtdesc::nr_gmap_table_pages(), g0 + 1);
    super::frame_page_for_tests(&t).page_ref_dec();
    // The dtor hands back an order-0 block.
    let p = gtdesc::gmap_table_dtor(t).unwrap();
    assert_eq!(p.order(), 0);
    drop(p);
    assert_eq!(gtdesc::nr_gmap_table_pages(), g0);
    assert_eq!(free_now(), before);
}

#[test]
fn from_raw_checks_the_type_tag() {
    let _s = host_test_serial();
    let before = free_now();
    let pt = ptdesc::pagetable_pmd_ctor(ptdesc::pagetable_alloc(2).unwrap()).unwrap();
    let g = gtdesc::gmap_table_ctor(alloc_pages(2, AllocFlags::empty()).unwrap(), 1, 0, 0).unwrap();
    let plain = alloc_pages(0, AllocFlags::empty()).unwrap();
    let (pa_pt, pa_g, pa_plain) = (pt.into_raw(), g.into_raw(), plain.phys());
    // SAFETY: the blocks were given up above; each handle taken back
    // is the only one, and the refused ones make none.
    unsafe {
        assert_eq!(
            Frame::<GmapTableDesc>::from_raw(pa_pt).unwrap_err(),
            FrameError::WrongType(Some(PageType::PageTable))
        );
        assert_eq!(
            Frame::<PtDesc>::from_raw(pa_g).unwrap_err(),
            FrameError::WrongType(Some(PageType::GmapTable))
        );
        assert_eq!(
            Frame::<PtDesc>::from_raw(pa_plain).unwrap_err(),
            FrameError::WrongType(Some(PageType::Allocated))
        );
        // A gmap table has no fixed order (a shadow page table is order
        // 0), so a page inside a CRST table is refused by its type: a tail.
        assert_eq!(
            Frame::<GmapTableDesc>::from_raw(PhysAddr(pa_g.0 + 0x1000)).unwrap_err(),
            FrameError::WrongType(Some(PageType::Tail))
        );
        assert_eq!(
            Frame::<GmapTableDesc>::from_raw(PhysAddr(pa_g.0 + 0x800)).unwrap_err(),
            FrameError::Misaligned
        );
        drop(Frame::<PtDesc>::from_raw(pa_pt).unwrap());
        drop(Frame::<GmapTableDesc>::from_raw(pa_g).unwrap());
    }
    drop(plain);
    assert_eq!(free_now(), before);
}

#[test]
fn ctors_refuse_a_block_with_a_mapping_a_foreign_type_or_a_pin() {
    #[cfg(not(feature = "memdesc"))]
    use core::sync::atomic::Ordering;
    let _s = host_test_serial();
    let before = free_now();
    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    // A `mapping` left set (the seed's bug, from the other side; the
    // memdesc word has no mapping).
    #[cfg(not(feature = "memdesc"))]
    let p = {
        p.page().generic().mapping.store(0x1000, Ordering::Relaxed);
        let (p, e) = ptdesc::pagetable_pte_ctor(p).unwrap_err();
        assert_eq!(e, PtDescError::NotAllocated(Some(PageType::Allocated)));
        p.page().generic().mapping.store(0, Ordering::Relaxed);
        p
    };
    // A block typed as something else (a heap block, say).
    p.page().set_page_type(PageType::Heap);
    let (p, e) = ptdesc::pagetable_pte_ctor(p).unwrap_err();
    assert_eq!(e, PtDescError::NotAllocated(Some(PageType::Heap)));
    p.page().set_page_type(PageType::Allocated);
    drop(p);
    // The gmap table ctor makes the same checks.
    let p = alloc_pages(2, AllocFlags::empty()).unwrap();
    p.page().page_ref_inc();
    let (p, e) = gtdesc::gmap_table_ctor(p, 1, 0, 0).unwrap_err();
    assert_eq!(e, GtDescError::NotAllocated(Some(PageType::Allocated)));
    p.page().page_ref_dec();
    #[cfg(not(feature = "memdesc"))]
    let p = {
        p.page().generic().mapping.store(0x1000, Ordering::Relaxed);
        let (p, e) = gtdesc::gmap_table_ctor(p, 1, 0, 0).unwrap_err();
        assert_eq!(e, GtDescError::NotAllocated(Some(PageType::Allocated)));
        p.page().generic().mapping.store(0, Ordering::Relaxed);
        p
    };
    drop(p);
    assert_eq!(free_now(), before);
}
