//! Host tests of the entry formats: encodings, field accessors and the
//! refusals of malformed input.

use super::entry::*;
use crate::mm::addr::PhysAddr;

#[test]
fn asce_encoding() {
    let a = Asce::new(PhysAddr(0x12_3000), Level::Region3).unwrap();
    assert_eq!(a.raw(), 0x12_3000 | 0x04 | 0x03);
    assert_eq!(a.level(), Level::Region3);
    assert_eq!(a.origin(), PhysAddr(0x12_3000));
    assert_eq!(a.tl(), 3);
    assert!(!a.is_private());
    assert!(a.with_private(true).is_private());
    assert_eq!(a.idte_designation(), 0x12_3004);
    assert_eq!(
        Asce::new(PhysAddr(0x12_3800), Level::Segment),
        Err(EntryError::Misaligned)
    );
    for (l, dt) in [
        (Level::Segment, 0),
        (Level::Region3, 4),
        (Level::Region2, 8),
        (Level::Region1, 0xc),
    ] {
        assert_eq!(Asce::new(PhysAddr(0x4000), l).unwrap().raw() & 0xc, dt);
    }
}

#[test]
fn limits_choose_the_asce_type_like_linux() {
    assert_eq!(Level::for_limit(1 << 31), Level::Segment);
    assert_eq!(Level::for_limit((1 << 31) + 1), Level::Region3);
    assert_eq!(Level::for_limit(1 << 42), Level::Region3);
    assert_eq!(Level::for_limit(1 << 53), Level::Region2);
    assert_eq!(Level::for_limit((1 << 53) + 1), Level::Region1);
    assert_eq!(Level::Region1.limit(), 1 << 64);
}

#[test]
fn region_and_segment_entries() {
    let e = RegionEntry::empty(Level::Region2);
    assert!(e.is_invalid());
    assert_eq!(e.level(), Level::Region2);
    assert_eq!(e.raw(), 0x20 | 0x08 | 0x03);
    let t = RegionEntry::table(Level::Region1, PhysAddr(0x8000)).unwrap();
    assert!(!t.is_invalid());
    assert_eq!(t.next_origin(), PhysAddr(0x8000));
    assert_eq!((t.tf(), t.tl()), (0, 3));
    assert!(t.invalidated().is_invalid());
    let l = RegionEntry::large(PhysAddr(0x8000_0000), true).unwrap();
    assert!(l.is_large() && l.is_protected());
    assert_eq!(l.large_frame(), PhysAddr(0x8000_0000));
    assert_eq!(
        RegionEntry::large(PhysAddr(0x10_0000), false),
        Err(EntryError::Misaligned)
    );

    let s = SegmentEntry::table(PhysAddr(0x1800), false).unwrap();
    assert_eq!(s.page_table(), PhysAddr(0x1800));
    assert!(!s.is_invalid() && !s.is_protected() && !s.is_large());
    assert!(s.with_protect(true).is_protected());
    assert_eq!(
        SegmentEntry::table(PhysAddr(0x1400), false),
        Err(EntryError::Misaligned)
    );
    assert_eq!(SegmentEntry::empty().raw(), 0x20);
    let l = SegmentEntry::large(PhysAddr(0x30_0000), false).unwrap();
    assert!(l.is_large());
    assert_eq!(l.large_frame(), PhysAddr(0x30_0000));
}

#[test]
fn ptes() {
    let p = Pte::new(PhysAddr(0x5000), Prot::ReadWrite).unwrap();
    assert!(!p.is_invalid() && !p.is_protected() && p.is_present());
    assert_eq!(p.frame(), PhysAddr(0x5000));
    let r = p.with_prot(Prot::ReadOnly);
    assert!(r.is_protected());
    assert_eq!(r.prot(), Prot::ReadOnly);
    assert_eq!(r.with_prot(Prot::ReadWrite), p);
    assert!(p.invalidated().is_invalid() && p.invalidated().is_present());
    assert!(Pte::empty().is_invalid() && !Pte::empty().is_present());
    assert!(p.with_bit52().is_malformed());
    assert_eq!(
        Pte::new(PhysAddr(0x5001), Prot::ReadOnly),
        Err(EntryError::Misaligned)
    );
}

#[test]
fn indexes() {
    let va = 0x0012_3456_789a_bcdeu64;
    assert_eq!(Level::Region1.index(va), ((va >> 53) & 0x7ff) as usize);
    assert_eq!(Level::Region2.index(va), ((va >> 42) & 0x7ff) as usize);
    assert_eq!(Level::Region3.index(va), ((va >> 31) & 0x7ff) as usize);
    assert_eq!(Level::Segment.index(va), ((va >> 20) & 0x7ff) as usize);
    assert_eq!(pte_index(va), ((va >> 12) & 0xff) as usize);
}
