//! Host tests of address spaces on simulated memory: map/unmap/protect
//! against a model, fragments, table freeing, growth and bad input.

use std::collections::HashMap;

use proptest::prelude::*;

use super::entry::{Level, Prot, SEGMENT_SIZE};
use super::space::{AddressSpace, SpaceError};
use super::table;
use super::walk::Facilities;
use crate::arch::pgm::code;
use crate::mm::addr::{PhysAddr, PAGE_SIZE};
use crate::mm::{self, ptdesc};

/// Tests that compare global counts (page tables, free pages) take turns
/// with every other user of the global allocator.
fn setup() -> std::sync::MutexGuard<'static, ()> {
    mm::host_test_serial()
}

const NONE: Facilities = Facilities {
    edat1: false,
    edat2: false,
};
const R1_LIMIT: u128 = 1 << 64;

/// Virtual pages spread over every level: low, below 2 GiB, above 2 GiB,
/// above 4 TiB, above 8 PiB.
const BASES: [u64; 5] = [
    0x10_0000,
    0x7ff0_0000,
    0x1_2340_0000,
    0x123_4560_0000,
    0x0040_0000_1230_0000,
];

fn va_strategy() -> impl Strategy<Value = u64> {
    (0..BASES.len(), 0u64..600).prop_map(|(b, p)| BASES[b] + p * PAGE_SIZE)
}

#[derive(Clone, Debug)]
enum Op {
    Map(u64, u64, bool),
    Unmap(u64),
    Protect(u64, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (va_strategy(), 0u64..4096, any::<bool>()).prop_map(|(v, f, w)| Op::Map(v, f, w)),
        3 => va_strategy().prop_map(Op::Unmap),
        1 => (va_strategy(), any::<bool>()).prop_map(|(v, w)| Op::Protect(v, w)),
    ]
}

fn prot(w: bool) -> Prot {
    if w {
        Prot::ReadWrite
    } else {
        Prot::ReadOnly
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random map/unmap/protect against a map from virtual page to (frame,
    /// protection): lookup and the walker agree with the model after every
    /// step; tearing down returns every page-table page.
    #[test]
    fn space_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        let _g = setup();
        let tables0 = ptdesc::nr_pagetable();
        let free0 = mm::nr_free_pages_and_desc_slabs();
        {
            let mut s = AddressSpace::new(1 << 31, R1_LIMIT, false).unwrap();
            let mut model: HashMap<u64, (u64, Prot)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Map(va, frame, w) => {
                        let r = s.map(va, PhysAddr(frame * PAGE_SIZE), prot(w));
                        match model.entry(va) {
                            std::collections::hash_map::Entry::Occupied(_) => {
                                prop_assert_eq!(r, Err(SpaceError::AlreadyMapped));
                            }
                            std::collections::hash_map::Entry::Vacant(v) => {
                                prop_assert_eq!(r, Ok(()));
                                v.insert((frame * PAGE_SIZE, prot(w)));
                            }
                        }
                    }
                    Op::Unmap(va) => {
                        let r = s.unmap(va);
                        match model.remove(&va) {
                            Some((pa, _)) => prop_assert_eq!(r, Ok(PhysAddr(pa))),
                            None => prop_assert_eq!(r, Err(SpaceError::NotMapped)),
                        }
                    }
                    Op::Protect(va, w) => {
                        let r = s.protect(va, prot(w));
                        match model.get_mut(&va) {
                            Some(e) => { prop_assert_eq!(r, Ok(())); e.1 = prot(w); }
                            None => prop_assert_eq!(r, Err(SpaceError::NotMapped)),
                        }
                    }
                }
                for b in BASES {
                    for p in [0u64, 1, 255, 256, 599] {
                        let va = b + p * PAGE_SIZE;
                        let want = model.get(&va).copied();
                        prop_assert_eq!(s.lookup(va).map(|(pa, pr)| (pa.0, pr)), want);
                        let t = s.translate(va + 8, NONE, false);
                        match want {
                            Some((pa, pr)) => {
                                prop_assert_eq!(t.map(|t| t.real.0), Ok(pa + 8));
                                let st = s.translate(va, NONE, true);
                                if pr == Prot::ReadOnly {
                                    prop_assert_eq!(st.map(|t| t.real), Err(code::PROTECTION));
                                } else {
                                    prop_assert!(st.is_ok());
                                }
                            }
                            None => prop_assert!(t.is_err()),
                        }
                    }
                }
            }
            // Unmapping everything frees every table below the top.
            for va in model.keys().copied().collect::<Vec<_>>() {
                prop_assert!(s.unmap(va).is_ok());
            }
            // No PTE table is left, only CRST tables (4 pages each): the top
            // and the old tops an upgrade kept as its entry 0 (an upgrade
            // never frees the old top, which another CPU may have loaded),
            // one per level at most.
            let c = s.check().unwrap();
            prop_assert_eq!((c.pte_tables, c.mapped_pages), (0, 0));
            prop_assert!(c.crst_tables >= 1 && c.crst_tables <= 4);
            prop_assert_eq!(ptdesc::nr_pagetable() - tables0, 4 * c.crst_tables);
        }
        prop_assert_eq!(ptdesc::nr_pagetable(), tables0);
        mm::drain_pcp();
        prop_assert_eq!(mm::nr_free_pages_and_desc_slabs(), free0);
    }
}

#[test]
fn two_pte_tables_share_a_page() {
    let _g = setup();
    let tables0 = ptdesc::nr_pagetable();
    let mut s = AddressSpace::new(1 << 31, 1 << 31, false).unwrap();
    s.map(0x10_0000, PhysAddr(0x5000), Prot::ReadWrite).unwrap();
    s.map(0x20_0000, PhysAddr(0x6000), Prot::ReadWrite).unwrap();
    let (a, b) = (
        s.pte_table(0x10_0000).unwrap(),
        s.pte_table(0x20_0000).unwrap(),
    );
    assert_eq!(a.align_down(PAGE_SIZE), b.align_down(PAGE_SIZE));
    assert_ne!(a, b);
    let pt = table::table_ptdesc(a).unwrap();
    assert_eq!(pt.frag_count(), 2);
    assert_eq!(pt.frag_halves(), 3);
    // Segment table (4 pages) + one page of two PTE tables.
    assert_eq!(ptdesc::nr_pagetable() - tables0, 5);
    s.unmap(0x10_0000).unwrap();
    assert_eq!(pt.frag_count(), 1);
    assert_eq!(s.frag_list_len(), 1);
    assert_eq!(ptdesc::nr_pagetable() - tables0, 5);
    s.unmap(0x20_0000).unwrap();
    assert_eq!(ptdesc::nr_pagetable() - tables0, 4);
    assert_eq!(s.frag_list_len(), 0);
    drop(s);
    assert_eq!(ptdesc::nr_pagetable(), tables0);
}

#[test]
fn pgste_spaces_use_whole_pages() {
    let _g = setup();
    let tables0 = ptdesc::nr_pagetable();
    let mut s = AddressSpace::new(1 << 31, 1 << 31, true).unwrap();
    s.map(0x10_0000, PhysAddr(0x5000), Prot::ReadWrite).unwrap();
    s.map(0x20_0000, PhysAddr(0x6000), Prot::ReadWrite).unwrap();
    let (a, b) = (
        s.pte_table(0x10_0000).unwrap(),
        s.pte_table(0x20_0000).unwrap(),
    );
    assert!(a.is_page_aligned() && b.is_page_aligned());
    assert_ne!(a, b);
    assert_eq!(ptdesc::nr_pagetable() - tables0, 6);
    drop(s);
    assert_eq!(ptdesc::nr_pagetable(), tables0);
}

#[test]
fn growth_follows_the_address() {
    let _g = setup();
    let mut s = AddressSpace::new(1 << 31, R1_LIMIT, false).unwrap();
    assert_eq!(s.asce().level(), Level::Segment);
    s.map(0x1000, PhysAddr(0x9000), Prot::ReadWrite).unwrap();
    for (va, l) in [
        (1u64 << 31, Level::Region3),
        (1 << 42, Level::Region2),
        (1 << 53, Level::Region1),
    ] {
        s.map(va, PhysAddr(0xa000), Prot::ReadOnly).unwrap();
        assert_eq!(s.asce().level(), l);
        // What was mapped before is still there.
        assert_eq!(s.lookup(0x1000), Some((PhysAddr(0x9000), Prot::ReadWrite)));
        assert_eq!(
            s.translate(va, NONE, false).map(|t| t.real),
            Ok(PhysAddr(0xa000))
        );
    }
}

#[test]
fn bad_input_changes_nothing() {
    let _g = setup();
    let tables0 = ptdesc::nr_pagetable();
    let mut s = AddressSpace::new(1 << 31, 1 << 40, false).unwrap();
    let t = ptdesc::nr_pagetable();
    assert_eq!(
        s.map(0x1001, PhysAddr(0x5000), Prot::ReadWrite),
        Err(SpaceError::Misaligned)
    );
    assert_eq!(
        s.map(0x1000, PhysAddr(0x5001), Prot::ReadWrite),
        Err(SpaceError::Misaligned)
    );
    assert_eq!(
        s.map(1 << 40, PhysAddr(0x5000), Prot::ReadWrite),
        Err(SpaceError::OutOfRange)
    );
    assert_eq!(s.unmap(0x1000), Err(SpaceError::NotMapped));
    assert_eq!(
        s.protect(0x1000, Prot::ReadOnly),
        Err(SpaceError::NotMapped)
    );
    assert_eq!(
        s.remap(0x1000, PhysAddr(0x5000)),
        Err(SpaceError::NotMapped)
    );
    assert_eq!(
        s.remap(0x1008, PhysAddr(0x5000)),
        Err(SpaceError::Misaligned)
    );
    assert_eq!(s.protect_segment(0x1000, true), Err(SpaceError::NotMapped));
    assert_eq!(s.unmap_range(0x1000, 0x1001), Err(SpaceError::Misaligned));
    assert_eq!(
        s.map_range(0x1000, PhysAddr(0x5000), 0, Prot::ReadWrite),
        Err(SpaceError::Misaligned)
    );
    assert_eq!(
        s.map_range(u64::MAX - 0xfff, PhysAddr(0), 0x2000, Prot::ReadWrite),
        Err(SpaceError::OutOfRange)
    );
    assert_eq!(ptdesc::nr_pagetable(), t);
    assert_eq!(s.asce().level(), Level::Segment);
    // A range overlapping one mapped page maps nothing.
    s.map(0x3000, PhysAddr(0x5000), Prot::ReadWrite).unwrap();
    assert_eq!(
        s.map_range(0x1000, PhysAddr(0x8000), 0x4000, Prot::ReadWrite),
        Err(SpaceError::AlreadyMapped)
    );
    assert_eq!(s.lookup(0x1000), None);
    assert_eq!(s.lookup(0x3000), Some((PhysAddr(0x5000), Prot::ReadWrite)));
    // A remap to a frame a PTE cannot hold changes nothing.
    assert_eq!(
        s.remap(0x3000, PhysAddr(0x5008)),
        Err(SpaceError::Misaligned)
    );
    assert_eq!(s.lookup(0x3000), Some((PhysAddr(0x5000), Prot::ReadWrite)));
    drop(s);
    assert_eq!(ptdesc::nr_pagetable(), tables0);
}

#[test]
fn range_unmap_of_whole_segments_uses_one_idte_each() {
    let _g = setup();
    let mut s = AddressSpace::new(1 << 31, 1 << 31, false).unwrap();
    let len = 4 * SEGMENT_SIZE;
    s.map_range(0x400_0000, PhysAddr(0x10_0000), len, Prot::ReadWrite)
        .unwrap();
    assert_eq!(
        s.lookup(0x400_0000 + len - PAGE_SIZE),
        Some((PhysAddr(0x10_0000 + len - PAGE_SIZE), Prot::ReadWrite))
    );
    let st = s.unmap_range(0x400_0000, len).unwrap();
    assert_eq!(st.pages, 4 * 256);
    assert_eq!(st.flushes, 4);
    assert_eq!(st.tables_freed, 4);
    // A partial segment: an IPTE per page, then the IDTE for the emptied table.
    s.map_range(
        0x400_0000,
        PhysAddr(0x10_0000),
        16 * PAGE_SIZE,
        Prot::ReadWrite,
    )
    .unwrap();
    let st = s.unmap_range(0x400_0000, 16 * PAGE_SIZE).unwrap();
    assert_eq!((st.pages, st.flushes, st.tables_freed), (16, 17, 1));
}

#[test]
fn descriptor_casts_check_the_type() {
    let _g = setup();
    let s = AddressSpace::new(1 << 31, 1 << 31, false).unwrap();
    let top = table::phys_to_virt(s.asce().origin());
    let pt = ptdesc::virt_to_ptdesc(top).unwrap();
    assert_eq!(ptdesc::ptdesc_address(pt), top);
    assert!(core::ptr::eq(
        ptdesc::page_ptdesc(ptdesc::ptdesc_page(pt)).unwrap(),
        pt
    ));
    // Any segment-entry address gives the segment table's first page.
    for i in [0u64, 1, 511, 512, 2047] {
        let pmd = crate::mm::addr::VirtAddr(top.0 + i * 8);
        assert!(core::ptr::eq(ptdesc::pmd_ptdesc(pmd).unwrap(), pt));
    }
    let p = mm::alloc_pages(0, mm::AllocFlags::empty()).unwrap();
    assert!(matches!(
        ptdesc::page_ptdesc(p.page()),
        Err(ptdesc::PtDescError::NotPageTable(_))
    ));
    mm::free_pages(p).unwrap();
}
