//! The `layout` suite: what each memory-descriptor layout promises, tested
//! on the kernel's real memmap. The same cases run in both builds; each
//! asserts what its layout does (a ctor allocates a descriptor in memdesc
//! and nothing in the overlay), and the two that only mean something with
//! separate descriptors say `# SKIP` in the overlay.

use super::addr::PAGE_SIZE;
use super::page::{Page, PageType};
use super::ptdesc::{self, PtDescError};
use super::{alloc_pages, fail, gtdesc, memmap, AllocFlags};
use crate::fault_tests::skip_while_cmdline_armed;
use crate::ktest::KResult;
use crate::{kassert, kassert_eq, kfail, ktest_suite};

#[cfg(not(feature = "memdesc"))]
const OVERLAY_SKIP: &str =
    "overlay layout: a descriptor is its page's own 64 bytes (run x.py test --memdesc)";

/// The memmap is one `struct page` per frame of the size the layout says,
/// and the boot summary's share of memory is that size over 4 KiB.
fn memmap_is_one_entry_per_frame() -> KResult {
    let want = if cfg!(feature = "memdesc") { 8 } else { 64 };
    kassert_eq!(core::mem::size_of::<Page>(), want);
    let l = super::layout().ok_or(crate::ktest::Outcome::Fail)?;
    kassert_eq!(l.memmap_bytes, memmap().nr_pages() * want as u64);
    kassert_eq!(memmap().nr_pages(), l.memory / PAGE_SIZE);
    Ok(())
}

/// `page_ptdesc` of a page table gives a descriptor that names the page
/// back (`ptdesc_page`), and of any other page an error saying what it is.
fn page_ptdesc_round_trips_and_refuses_other_types() -> KResult {
    let p = alloc_pages(0, AllocFlags::empty()).or_else(|e| kfail!("alloc: {e:?}"))?;
    kassert_eq!(
        ptdesc::page_ptdesc(p.page()).map(|_| ()),
        Err(PtDescError::NotPageTable(Some(PageType::Allocated)))
    );
    let pt = ptdesc::pagetable_pte_ctor(p).or_else(|(_, e)| kfail!("ctor: {e:?}"))?;
    let page = super::pfn_to_page(pt.phys().pfn()).ok_or(crate::ktest::Outcome::Fail)?;
    let d = ptdesc::page_ptdesc(page).or_else(|e| kfail!("page_ptdesc: {e:?}"))?;
    kassert!(core::ptr::eq(ptdesc::ptdesc_page(d), page));
    // Overlay: the descriptor is the page; memdesc: a separate object.
    let same = core::ptr::from_ref(d).addr() == core::ptr::from_ref(page).addr();
    kassert_eq!(same, !cfg!(feature = "memdesc"));
    // A gmap table is not a ptdesc, in either layout.
    let g = alloc_pages(gtdesc::GMAP_TABLE_ORDER, AllocFlags::empty())
        .or_else(|e| kfail!("alloc: {e:?}"))?;
    let gt = gtdesc::gmap_table_ctor(g, 9, 0, 0x8000_0000).or_else(|(_, e)| kfail!("{e:?}"))?;
    let gpage = super::pfn_to_page(gt.phys().pfn()).ok_or(crate::ktest::Outcome::Fail)?;
    kassert_eq!(
        ptdesc::page_ptdesc(gpage).map(|_| ()),
        Err(PtDescError::NotPageTable(Some(PageType::GmapTable)))
    );
    kassert_eq!(gt.gaddr(), 0x8000_0000);
    kassert!(core::ptr::eq(gtdesc::gmap_table_page(&gt), gpage));
    Ok(())
}

/// With the next allocation armed to fail, a ctor fails cleanly in
/// memdesc (its descriptor is that allocation): `NoDescriptor`, the block
/// handed back as it was, nothing counted. In the overlay a ctor allocates
/// nothing, so the same ctor succeeds and the failure stays armed.
fn ctor_under_a_failing_descriptor_allocation() -> KResult {
    skip_while_cmdline_armed()?;
    let counts = || {
        #[cfg(feature = "memdesc")]
        let d = super::desc::nr_desc();
        #[cfg(not(feature = "memdesc"))]
        let d = 0;
        (ptdesc::nr_pagetable(), gtdesc::nr_gmap_table_pages(), d)
    };
    let p = alloc_pages(0, AllocFlags::empty()).or_else(|e| kfail!("alloc: {e:?}"))?;
    let before = counts();
    fail::fail_alloc_nth(1);
    let r = ptdesc::pagetable_pte_ctor(p);
    let still_armed = fail::pending();
    fail::fail_alloc_off();
    #[cfg(feature = "memdesc")]
    {
        let (p, e) = match r {
            Err(back) => back,
            Ok(_) => return kfail!("the ctor succeeded with its descriptor allocation failing"),
        };
        kassert_eq!(e, PtDescError::NoDescriptor);
        kassert!(!still_armed, "the failure did not fire in the ctor");
        kassert!(
            p.page().is_fresh_allocated(0),
            "the block came back changed"
        );
        kassert_eq!(counts(), before);
        // The same for a gmap table.
        let g = alloc_pages(gtdesc::GMAP_TABLE_ORDER, AllocFlags::empty())
            .or_else(|e| kfail!("alloc: {e:?}"))?;
        fail::fail_alloc_nth(1);
        let r = gtdesc::gmap_table_ctor(g, 9, 0, 0);
        fail::fail_alloc_off();
        match r {
            Err((g, gtdesc::GtDescError::NoDescriptor)) => {
                kassert!(g.page().is_fresh_allocated(gtdesc::GMAP_TABLE_ORDER))
            }
            Err((_, e)) => return kfail!("gmap table ctor: {e:?}, want NoDescriptor"),
            Ok(_) => return kfail!("the gmap table ctor succeeded without a descriptor"),
        }
        kassert_eq!(counts(), before);
        drop(p);
    }
    #[cfg(not(feature = "memdesc"))]
    {
        let pt = r.or_else(|(_, e)| kfail!("ctor allocated and failed: {e:?}"))?;
        kassert!(still_armed, "an overlay ctor allocated something");
        kassert_eq!(counts().0, before.0 + 1);
        drop(pt);
        kassert_eq!(counts(), before);
    }
    Ok(())
}

/// memdesc: descriptors are distinct, 16-byte aligned objects of their
/// cache, allocated by the ctor and freed by the dtor; slabs grow as
/// needed and stay the cache's (type-stable).
fn descriptors_come_from_their_slabs() -> KResult {
    #[cfg(not(feature = "memdesc"))]
    return Err(crate::ktest::Outcome::Skip(OVERLAY_SKIP));
    #[cfg(feature = "memdesc")]
    {
        use super::desc::{DESC_ALIGN, PTDESC_CACHE};
        use alloc::vec::Vec;
        let (inuse, slabs, free) = (
            PTDESC_CACHE.inuse(),
            PTDESC_CACHE.slabs(),
            super::nr_free_pages_and_desc_slabs(),
        );
        let n = PTDESC_CACHE.per_slab() * 3 + 1;
        let mut tables = Vec::new();
        if tables.try_reserve(n).is_err() {
            return kfail!("no heap for {n} handles");
        }
        for _ in 0..n {
            let p = alloc_pages(0, AllocFlags::empty()).or_else(|e| kfail!("alloc: {e:?}"))?;
            tables.push(ptdesc::pagetable_pte_ctor(p).or_else(|(_, e)| kfail!("ctor: {e:?}"))?);
        }
        kassert_eq!(PTDESC_CACHE.inuse(), inuse + n as u64);
        kassert!(
            PTDESC_CACHE.slabs() >= slabs + 3,
            "{} slabs",
            PTDESC_CACHE.slabs()
        );
        let mut addrs: Vec<usize> = Vec::new();
        if addrs.try_reserve(n).is_err() {
            return kfail!("no heap");
        }
        for t in &tables {
            let a = core::ptr::from_ref::<ptdesc::PtDesc>(t).addr();
            kassert_eq!(a % DESC_ALIGN, 0);
            kassert!(
                PTDESC_CACHE.is_allocated(a as u64),
                "{a:#x} is not a ptdesc object"
            );
            addrs.push(a);
        }
        addrs.sort_unstable();
        kassert!(
            addrs.windows(2).all(|w| w[0] != w[1]),
            "two tables share a descriptor"
        );
        kassert!(super::desc::check().is_ok(), "{:?}", super::desc::check());
        let grown = PTDESC_CACHE.slabs();
        drop(tables);
        kassert_eq!(PTDESC_CACHE.inuse(), inuse);
        // Type-stable: the slabs stay the cache's (see `desc`); they count
        // with the free pages, which are as they were.
        kassert_eq!(PTDESC_CACHE.slabs(), grown);
        super::drain_pcp();
        kassert_eq!(super::nr_free_pages_and_desc_slabs(), free);
        Ok(())
    }
}

/// memdesc: a page whose word points at another page's descriptor is
/// refused by `page_ptdesc` (`BadDescriptor`) and named by the checker;
/// put back, both are satisfied again.
fn a_foreign_descriptor_pointer_is_refused() -> KResult {
    #[cfg(not(feature = "memdesc"))]
    return Err(crate::ktest::Outcome::Skip(OVERLAY_SKIP));
    #[cfg(feature = "memdesc")]
    {
        let mk = || {
            let p = alloc_pages(0, AllocFlags::empty()).or_else(|e| kfail!("alloc: {e:?}"))?;
            ptdesc::pagetable_pte_ctor(p).or_else(|(_, e)| kfail!("ctor: {e:?}"))
        };
        let (a, b) = (mk()?, mk()?);
        let pa = super::pfn_to_page(a.phys().pfn()).ok_or(crate::ktest::Outcome::Fail)?;
        let pb = super::pfn_to_page(b.phys().pfn()).ok_or(crate::ktest::Outcome::Fail)?;
        let wa = pa.memdesc();
        // Page a now points at b's descriptor: a shared descriptor.
        pa.set_desc(
            PageType::PageTable,
            core::ptr::from_ref::<ptdesc::PtDesc>(&b).cast(),
        );
        let refused = ptdesc::page_ptdesc(pa).map(|_| ());
        let checked = super::desc::check();
        pa.set_desc(
            PageType::PageTable,
            core::ptr::with_exposed_provenance((wa & !0xf) as usize),
        );
        kassert_eq!(refused, Err(PtDescError::BadDescriptor));
        kassert!(
            matches!(
                checked,
                Err(super::desc::DescCheckError::BackPointer { .. })
            ),
            "{checked:?}"
        );
        kassert!(ptdesc::page_ptdesc(pa).is_ok() && ptdesc::page_ptdesc(pb).is_ok());
        kassert!(super::desc::check().is_ok(), "{:?}", super::desc::check());
        Ok(())
    }
}

ktest_suite!(
    LAYOUT,
    "layout",
    [
        memmap_is_one_entry_per_frame,
        page_ptdesc_round_trips_and_refuses_other_types,
        ctor_under_a_failing_descriptor_allocation,
        descriptors_come_from_their_slabs,
        a_foreign_descriptor_pointer_is_refused,
    ]
);
