//! gmap tables and their descriptors: a gmap table is told apart from a
//! process page table by its page type, its gaddr is cleared before the
//! free, `gmap_free_table` checks owner and level, and the guest address of
//! an entry comes from its table's descriptor at every level of each ASCE
//! type.

use alloc::vec::Vec;

use super::{g_store_lctlg, gmap, h_load_lctlg, host, VM_BASE};
use crate::dat::entry::{Level, SEGMENT_SIZE};
use crate::gmap::table::{self, GmapTableError};
use crate::gmap::{gmap_remove, Access};
use crate::ktest::{KResult, Outcome, Rng};
use crate::mm::{self, ptdesc};
use crate::{kassert, kassert_eq, kassert_matches, kfail};

pub(super) fn descriptor_is_distinct_and_gaddr_cleared_before_free() -> KResult {
    // Frees below are refused on purpose.
    crate::mm::expect_refusals(true);
    let t = table::gmap_alloc_table(77, Level::Segment, 0x8000_0000).map_err(|_| Outcome::Fail)?;
    // Through the raw page (what a table entry leads to), the run-time tag
    // check: a gmap table is not a process page table, and the other way
    // round. (From a handle the cast does not compile.)
    let page = table::gmap_table_page(&t);
    kassert!(table::page_gmap_table(page).is_ok());
    kassert_matches!(
        ptdesc::page_ptdesc(page),
        Err(ptdesc::PtDescError::NotPageTable(Some(
            mm::page::PageType::GmapTable
        )))
    );
    let p = ptdesc::pagetable_alloc(0).map_err(|_| Outcome::Fail)?;
    let pt = ptdesc::pagetable_pte_ctor(p).map_err(|_| Outcome::Fail)?;
    kassert_matches!(
        table::page_gmap_table(ptdesc::ptdesc_page(&pt)),
        Err(mm::gtdesc::GtDescError::NotGmapTable(Some(
            mm::page::PageType::PageTable
        )))
    );
    ptdesc::pagetable_dtor_free(pt);
    // The gaddr aliases `mapping`: freed without clearing it, the buddy
    // allocator's non-NULL-mapping check refuses the table...
    let t = match table::free_table_as_is(t, 77, Level::Segment) {
        Err((t, e)) => {
            // Overlay: the gaddr aliases `mapping`, which the allocator
            // finds set. memdesc: the gaddr is in the descriptor, and the
            // page, still typed GmapTable, is refused as in use.
            #[cfg(not(feature = "memdesc"))]
            let want = GmapTableError::Free(mm::FreeError::NonNullMapping(0x8000_0000));
            #[cfg(feature = "memdesc")]
            let want = GmapTableError::Free(mm::FreeError::InUse(mm::page::PageType::GmapTable));
            kassert_eq!(e, want);
            t
        }
        Ok(()) => return kfail!("a table with its gaddr set was freed"),
    };
    kassert_eq!(t.gaddr(), 0x8000_0000);
    // ...and gmap_free_table, which clears it first, succeeds.
    kassert!(table::gmap_free_table(t, 77, Level::Segment).is_ok());
    Ok(())
}

/// `gmap_free_table` frees a table only for the owner and level its
/// descriptor names, whatever its guest address (every top table has
/// gaddr 0, so the allocator's non-NULL-mapping check cannot tell); a
/// refused free changes nothing, not even the gaddr it cleared, and hands
/// the table back. (A second free does not compile: the first consumed
/// the handle.)
pub(super) fn table_free_checks_owner_and_level() -> KResult {
    // Frees below are refused on purpose.
    crate::mm::expect_refusals(true);
    let gt = table::nr_gmap_table_pages();
    let state = |t: &table::GmapTable| (t.owner(), table::table_level(t), t.gaddr());
    for (level, other, gaddr) in [
        (Level::Segment, Level::Region3, 0u64),
        (Level::Segment, Level::Region1, 0x8000_0000),
        (Level::Region3, Level::Segment, 0),
        (Level::Region2, Level::Region3, 1 << 53),
        (Level::Region1, Level::Region2, 0),
    ] {
        let mut t = table::gmap_alloc_table(77, level, gaddr).map_err(|_| Outcome::Fail)?;
        kassert_eq!(state(&t), (77, Some(level), gaddr));
        for (owner, lvl, want) in [
            (78, level, GmapTableError::WrongOwner(77)),
            (0, level, GmapTableError::WrongOwner(77)),
            (78, other, GmapTableError::WrongOwner(77)),
            (77, other, GmapTableError::WrongLevel(Some(level))),
        ] {
            for as_is in [false, true] {
                let r = if as_is {
                    table::free_table_as_is(t, owner, lvl)
                } else {
                    table::gmap_free_table(t, owner, lvl)
                };
                t = match r {
                    Err((t, e)) => {
                        kassert_eq!(e, want);
                        t
                    }
                    Ok(()) => return kfail!("freed for owner {owner}, {lvl:?}"),
                };
                kassert!(table::page_gmap_table(table::gmap_table_page(&t)).is_ok());
                kassert_eq!(state(&t), (77, Some(level), gaddr));
                kassert_eq!(table::nr_gmap_table_pages(), gt + 4);
            }
        }
        kassert!(table::gmap_free_table(t, 77, level).is_ok());
        kassert_eq!(table::nr_gmap_table_pages(), gt);
    }
    // The allocator refuses (a reference is held): the table comes back
    // as it was, gaddr included.
    let t = table::gmap_alloc_table(77, Level::Segment, 0x8000_0000).map_err(|_| Outcome::Fail)?;
    mm::testing::get_page(table::gmap_table_page(&t));
    let t = match table::gmap_free_table(t, 77, Level::Segment) {
        Err((t, e)) => {
            kassert_eq!(e, GmapTableError::Free(mm::FreeError::BadRefcount(2)));
            t
        }
        Ok(()) => return kfail!("a pinned table was freed"),
    };
    kassert_eq!((t.owner(), t.gaddr()), (77, 0x8000_0000));
    kassert!(table::page_gmap_table(table::gmap_table_page(&t)).is_ok());
    kassert_eq!(table::nr_gmap_table_pages(), gt + 4);
    mm::testing::put_page(table::gmap_table_page(&t));
    kassert!(table::gmap_free_table(t, 77, Level::Segment).is_ok());
    kassert_eq!(table::nr_gmap_table_pages(), gt);
    Ok(())
}

pub(super) fn segment_gaddr_comes_from_the_gmap_table_descriptor() -> KResult {
    let h = host()?;
    let mut rng = Rng(0x6a0d_d12e_5500_1234);
    let mut checked = 0;
    for limit in [(1u64 << 31) - 1, (1 << 42) - 1, u64::MAX] {
        let g = gmap(&h, limit)?;
        let mut used = Vec::new();
        for i in 0..8u64 {
            let gaddr = (rng.next_u64() % (limit / SEGMENT_SIZE).max(1)) * SEGMENT_SIZE;
            if used.contains(&gaddr) {
                continue;
            }
            let vm = VM_BASE + i * SEGMENT_SIZE;
            kassert_eq!(g.gmap_map_segment(vm, gaddr, SEGMENT_SIZE), Ok(()));
            kassert!(g.gmap_fault(gaddr + 0x1000, Access::Read).is_ok());
            used.push(gaddr);
            let ea = g.segment_entry_addr(gaddr).ok_or(Outcome::Fail)?;
            let va = crate::dat::table::phys_to_virt(ea);
            kassert_eq!(crate::gmap::segment_gaddr_of_entry(va), Ok(gaddr));
            // The table page is not a process page table: a PtDesc cannot
            // even be formed for it.
            kassert!(ptdesc::pmd_ptdesc(va).is_err());
            checked += 1;
        }
        kassert_eq!(gmap_remove(g), Ok(()));
    }
    crate::ktest::diag(format_args!(
        "{} linked segments: gaddr from the gmap table descriptor",
        checked
    ));
    drop(h);
    Ok(())
}

/// The guest address of an entry of a gmap table comes from the table's
/// descriptor at every level: its gaddr plus the entry's index shifted by
/// the level its descriptor names (Region1 53, Region2 42, Region3 31,
/// Segment 20). `gmap_segment_gaddr` (Linux `__gmap_segment_gaddr`) takes
/// segment-table entries only and refuses a region table's. Real gmaps of
/// each ASCE type, with every index non-zero, the mapping used through DAT.
pub(super) fn entry_gaddr_at_every_level_of_each_asce_type() -> KResult {
    let h = host()?;
    let idx = |l: Level, i: u64| i << l.shift();
    let deep = idx(Level::Region1, 0x5a5)
        | idx(Level::Region2, 0x3c3)
        | idx(Level::Region3, 0x2d2)
        | idx(Level::Segment, 0x1e1);
    let mut checked = 0;
    for (limit, level) in [
        ((1u64 << 31) - 1, Level::Segment),
        ((1 << 42) - 1, Level::Region3),
        ((1 << 53) - 1, Level::Region2),
        (u64::MAX, Level::Region1),
    ] {
        let g = gmap(&h, limit)?;
        kassert_eq!(g.asce().level(), level);
        let ga = deep & limit;
        kassert_eq!(g.gmap_map_segment(VM_BASE, ga, SEGMENT_SIZE), Ok(()));
        kassert_eq!(
            g.gmap_fault(ga + 0x3000, Access::Write),
            Ok(VM_BASE + 0x3000)
        );
        kassert_eq!(g_store_lctlg(&g, ga + 0x3008, ga), Ok(()));
        kassert_eq!(h_load_lctlg(&h, VM_BASE + 0x3008), Ok(ga));
        let mut l = level;
        loop {
            let size = 1u64 << l.shift();
            let ea = g.entry_addr(ga, l).ok_or(Outcome::Fail)?;
            let va = crate::dat::table::phys_to_virt(ea);
            kassert_eq!(table::gmap_table_entry_gaddr(va), Ok((l, ga & !(size - 1))));
            // The next entry of the same table covers the next `size`.
            let next = mm::addr::VirtAddr(va.0 + 8);
            kassert_eq!(
                table::gmap_table_entry_gaddr(next),
                Ok((l, (ga & !(size - 1)) + size))
            );
            if l == Level::Segment {
                kassert_eq!(crate::gmap::segment_gaddr_of_entry(va), Ok(ga));
            } else {
                kassert_eq!(
                    crate::gmap::segment_gaddr_of_entry(va),
                    Err(GmapTableError::NotSegmentTable(l))
                );
            }
            kassert_eq!(
                table::gmap_table_entry_gaddr(mm::addr::VirtAddr(va.0 + 4)),
                Err(GmapTableError::Misaligned)
            );
            checked += 1;
            match l.lower() {
                Some(lower) => l = lower,
                None => break,
            }
        }
        kassert_eq!(g.check(), Ok(1));
        kassert_eq!(gmap_remove(g), Ok(()));
    }
    kassert_eq!(checked, 1 + 2 + 3 + 4);
    drop(h);
    // What makes the sum exact: a table's gaddr is aligned to what a table
    // of its level covers, so gmap_alloc_table refuses any other.
    let (free, gt) = (
        mm::nr_free_pages_and_desc_slabs(),
        table::nr_gmap_table_pages(),
    );
    for (level, gaddr) in [
        (Level::Segment, 1u64 << 20),
        (Level::Segment, 1 << 30),
        (Level::Region3, 1 << 31),
        (Level::Region2, 1 << 42),
        (Level::Region1, 1 << 53),
        (Level::Region1, !0xfffu64),
    ] {
        kassert_matches!(
            table::gmap_alloc_table(77, level, gaddr),
            Err(GmapTableError::Misaligned)
        );
    }
    kassert_eq!(
        (
            mm::nr_free_pages_and_desc_slabs(),
            table::nr_gmap_table_pages()
        ),
        (free, gt)
    );
    Ok(())
}
