//! Page-table pages (the pte_fragments and ptdesc suites): two PTE tables
//! share one page, mapping and unmapping 1 GiB leaves no table behind, and
//! the ptdesc accessors round-trip between page, descriptor and address.

use super::{give_back, load_lctlg, space};
use crate::dat::entry::{Prot, SEGMENT_SIZE};
use crate::dat::table;
use crate::ktest::fixtures::tagged_frame as frame;
use crate::ktest::{KResult, Outcome};
use crate::mm::addr::{PhysAddr, PAGE_SIZE};
use crate::mm::{self, ptdesc, AllocFlags};
use crate::{kassert, kassert_eq, kassert_matches, kfail};

pub(super) fn two_pte_tables_share_one_page() -> KResult {
    let t0 = ptdesc::nr_pagetable();
    let mut s = space(1 << 31, 1 << 31)?;
    let f = frame(0x77)?;
    kassert_eq!(s.map(0x10_0000, f.phys(), Prot::ReadWrite), Ok(()));
    kassert_eq!(s.map(0x20_0000, f.phys(), Prot::ReadWrite), Ok(()));
    let (a, b) = (s.pte_table(0x10_0000), s.pte_table(0x20_0000));
    kassert!(a.is_some() && b.is_some());
    let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
    kassert_eq!(a.align_down(PAGE_SIZE), b.align_down(PAGE_SIZE));
    let pt = table::table_ptdesc(a);
    kassert!(pt.is_some());
    let pt = pt.ok_or(Outcome::Fail)?;
    kassert_eq!(pt.frag_count(), 2);
    kassert_eq!(ptdesc::nr_pagetable() - t0, 5);
    kassert_eq!(s.unmap(0x10_0000), Ok(f.phys()));
    kassert_eq!(pt.frag_count(), 1);
    kassert_eq!(ptdesc::nr_pagetable() - t0, 5);
    kassert_eq!(load_lctlg(&s, 0x20_0000), Ok(0x77 << 32));
    kassert_eq!(s.unmap(0x20_0000), Ok(f.phys()));
    kassert_eq!(ptdesc::nr_pagetable() - t0, 4);
    drop(s);
    kassert_eq!(ptdesc::nr_pagetable(), t0);
    give_back(f);
    Ok(())
}

pub(super) fn map_and_unmap_1gib_leaves_no_table() -> KResult {
    let t0 = ptdesc::nr_pagetable();
    let mut s = space(1 << 31, 1 << 31)?;
    let t1 = ptdesc::nr_pagetable();
    // 1 GiB of kernel memory (frames from 0), read-only.
    let mem = crate::machine::get().map_or(0, |m| m.memory);
    let len = (1u64 << 30).min(mem);
    kassert_eq!(
        s.map_range(0x4000_0000, PhysAddr(0), len, Prot::ReadOnly),
        Ok(())
    );
    // One 2 KiB PTE table per segment (SCLP reports memory in whole MiB),
    // two per page: an odd number of segments leaves the last page half
    // used, with its free half on the space's fragment list.
    let segs = len / SEGMENT_SIZE;
    kassert_eq!(ptdesc::nr_pagetable() - t1, segs.div_ceil(2));
    kassert_eq!(s.frag_list_len() as u64, segs % 2);
    kassert_eq!(
        load_lctlg(&s, 0x4000_0000 + len - 8),
        Ok(crate::arch::s390x::probe::load_u64(len - 8).unwrap_or(1))
    );
    let st = s.unmap_range(0x4000_0000, len);
    kassert_eq!(
        st.map(|st| (st.pages, st.flushes, st.tables_freed)),
        Ok((len / PAGE_SIZE, segs, segs))
    );
    kassert_eq!(ptdesc::nr_pagetable(), t1);
    kassert_eq!(s.frag_list_len(), 0);
    drop(s);
    kassert_eq!(ptdesc::nr_pagetable(), t0);
    Ok(())
}

pub(super) fn accessors_round_trip() -> KResult {
    let mut s = space(1 << 42, 1 << 42)?;
    let f = frame(0x55)?;
    kassert_eq!(s.map(0x1_0000_0000, f.phys(), Prot::ReadWrite), Ok(()));
    // Top (region-third) table, segment table, PTE table: page ↔ ptdesc ↔ address.
    let seg = s.segment_entry_addr(0x1_0000_0000).ok_or(Outcome::Fail)?;
    let pto = s.pte_table(0x1_0000_0000).ok_or(Outcome::Fail)?;
    for pa in [
        s.asce().origin(),
        seg.align_down(16384),
        pto.align_down(PAGE_SIZE),
    ] {
        let va = table::phys_to_virt(pa);
        let pt = ptdesc::virt_to_ptdesc(va);
        kassert!(pt.is_ok(), "{:?}", pt.err());
        let pt = pt.map_err(|_| Outcome::Fail)?;
        kassert_eq!(ptdesc::ptdesc_address(pt), va);
        let page = ptdesc::ptdesc_page(pt);
        kassert!(ptdesc::page_ptdesc(page).is_ok_and(|p| core::ptr::eq(p, pt)));
        kassert!(mm::page_to_pfn(page).is_some_and(|pfn| pfn == pa.pfn()));
    }
    // pmd_pgtable_page: every segment-entry address of the table.
    let seg_table = seg.align_down(16384);
    let head = ptdesc::virt_to_ptdesc(table::phys_to_virt(seg_table)).map_err(|_| Outcome::Fail)?;
    for i in [0u64, 1, 511, 512, 1024, 2047] {
        let pmd = table::phys_to_virt(PhysAddr(seg_table.0 + i * 8));
        kassert!(
            ptdesc::pmd_ptdesc(pmd).is_ok_and(|p| core::ptr::eq(p, head)),
            "entry {}",
            i
        );
        kassert!(ptdesc::pmd_pgtable_page(pmd)
            .is_some_and(|p| core::ptr::eq(p, ptdesc::ptdesc_page(head))));
    }
    // pte_lockptr is the PTE table page's lock.
    let l = ptdesc::pte_lockptr(table::phys_to_virt(pto));
    kassert!(l.is_ok());
    // A page that is not a page table is refused.
    let p = mm::alloc_pages(0, AllocFlags::empty()).map_err(|_| Outcome::Fail)?;
    kassert_matches!(
        ptdesc::page_ptdesc(p.page()),
        Err(ptdesc::PtDescError::NotPageTable(Some(
            mm::page::PageType::Allocated
        )))
    );
    kassert_matches!(ptdesc::virt_to_ptdesc(p.virt()), Err(_));
    give_back(p);
    // A ctor on the wrong kind of block is refused and hands it back
    // unchanged: the wrong order, or a page someone else holds. (A table
    // whose dtor has not run cannot even be passed to `pagetable_free`:
    // it is a `Frame<PtDesc>`, not `Pages`.)
    let t0 = ptdesc::nr_pagetable();
    let p = ptdesc::pagetable_alloc(2).map_err(|_| Outcome::Fail)?;
    let p = match ptdesc::pagetable_pte_ctor(p) {
        Err((p, e)) => {
            kassert_eq!(e, ptdesc::PtDescError::WrongOrder(2));
            p
        }
        Ok(_) => return kfail!("a PTE ctor took an order-2 block"),
    };
    kassert_eq!(ptdesc::nr_pagetable(), t0);
    let p = match ptdesc::pagetable_pmd_ctor(p) {
        Ok(pt) => ptdesc::pagetable_dtor(pt).or_else(|(_, e)| kfail!("dtor: {e:?}"))?,
        Err((_, e)) => return kfail!("pmd ctor of an order-2 block: {e:?}"),
    };
    kassert_eq!(ptdesc::nr_pagetable(), t0);
    kassert!(ptdesc::pagetable_free(p).is_ok());
    let p = ptdesc::pagetable_alloc(0).map_err(|_| Outcome::Fail)?;
    mm::testing::get_page(p.page());
    let p = match ptdesc::pagetable_pte_ctor(p) {
        Err((p, e)) => {
            kassert_eq!(
                e,
                ptdesc::PtDescError::NotAllocated(Some(mm::page::PageType::Allocated))
            );
            p
        }
        Ok(_) => return kfail!("a PTE ctor took a page with two references"),
    };
    mm::testing::put_page(p.page());
    let pt = ptdesc::pagetable_pte_ctor(p).or_else(|(_, e)| kfail!("ctor: {e:?}"))?;
    kassert_eq!(ptdesc::nr_pagetable(), t0 + 1);
    ptdesc::pagetable_dtor_free(pt);
    kassert_eq!(ptdesc::nr_pagetable(), t0);
    drop(s);
    give_back(f);
    Ok(())
}
