//! Host tests of the PTE table and CRST table handles: two 2 KiB tables
//! share a page and the page goes back when the last lets go, whatever the
//! order; a PGSTE table is a whole page; a handle dropped without its
//! allocator still gives its memory back; `from_raw` refuses a half not in
//! use.

use super::entry::Level;
use super::frag::{FragAlloc, FragError, PteTable};
use super::table::{self, CrstTable, PTE_TABLE_SIZE};
use crate::mm::{self, ptdesc};

fn counts() -> (u64, u64) {
    mm::drain_pcp();
    (mm::nr_free_pages_and_desc_slabs(), ptdesc::nr_pagetable())
}

#[test]
fn two_fragments_share_a_page_freed_with_the_last() {
    let _s = mm::host_test_serial();
    let before = counts();
    for second_first in [false, true] {
        let mut fa = FragAlloc::new(false);
        let a = fa.page_table_alloc().unwrap();
        assert_eq!(fa.list_len(), 1);
        let b = fa.page_table_alloc().unwrap();
        assert_eq!(b.phys().0, a.phys().0 + PTE_TABLE_SIZE);
        assert_eq!(fa.list_len(), 0);
        assert_eq!(counts().1, before.1 + 1);
        assert!(a
            .entries()
            .iter()
            .all(|e| e.load(core::sync::atomic::Ordering::Relaxed)
                == super::entry::Pte::empty().raw()));
        let (first, last) = if second_first { (b, a) } else { (a, b) };
        fa.page_table_free(first);
        assert_eq!(fa.list_len(), 1);
        fa.page_table_free(last);
        assert_eq!(fa.list_len(), 0);
        assert_eq!(counts(), before);
    }
}

#[test]
fn a_freed_half_is_reused_before_a_new_page() {
    let _s = mm::host_test_serial();
    let before = counts();
    let mut fa = FragAlloc::new(false);
    let a = fa.page_table_alloc().unwrap();
    let b = fa.page_table_alloc().unwrap();
    let pa = a.phys();
    fa.page_table_free(a);
    let c = fa.page_table_alloc().unwrap();
    assert_eq!(c.phys(), pa);
    assert_eq!(counts().1, before.1 + 1);
    fa.page_table_free(b);
    fa.page_table_free(c);
    assert_eq!(counts(), before);
}

#[test]
fn pgste_tables_are_whole_pages() {
    let _s = mm::host_test_serial();
    let before = counts();
    let mut fa = FragAlloc::new(true);
    let a = fa.page_table_alloc().unwrap();
    let b = fa.page_table_alloc().unwrap();
    assert_eq!(a.phys().0 % 4096, 0);
    assert_ne!(a.phys().0 & !0xfff, b.phys().0 & !0xfff);
    assert_eq!(a.pgstes().len(), 256);
    assert_eq!(fa.list_len(), 0);
    // A PGSTE table freed into a fragment allocator is refused (a BUG
    // report) and kept, not freed as a half.
    let mut other = FragAlloc::new(false);
    let pa = a.phys();
    let bugs = crate::bug::nr_reports();
    other.page_table_free(a);
    assert_eq!(crate::bug::nr_reports(), bugs + 1);
    // SAFETY: refused and given up just above; nothing links it.
    let a = unsafe { PteTable::from_raw(pa, true) }.unwrap();
    fa.page_table_free(a);
    drop(b);
    assert_eq!(counts(), before);
}

#[test]
fn a_dropped_table_gives_its_memory_back() {
    let _s = mm::host_test_serial();
    let before = counts();
    {
        let mut fa = FragAlloc::new(false);
        let a = fa.page_table_alloc().unwrap();
        let b = fa.page_table_alloc().unwrap();
        drop(a);
        drop(b);
        // Both halves went without the allocator: the page went too.
        assert_eq!(counts(), before);
        // One half in use, the other free on the list, then the user drops
        // it: the page stays on the list until the allocator reuses or
        // releases it.
        let c = fa.page_table_alloc().unwrap();
        drop(c);
        assert_eq!(fa.list_len(), 1);
        let d = fa.page_table_alloc().unwrap();
        fa.page_table_free(d);
        assert_eq!(counts(), before);
        let e = fa.page_table_alloc().unwrap();
        drop(e);
        fa.release_unused();
        assert_eq!(fa.list_len(), 0);
    }
    assert_eq!(counts(), before);
}

#[test]
fn from_raw_refuses_a_half_not_in_use() {
    let _s = mm::host_test_serial();
    let before = counts();
    let mut fa = FragAlloc::new(false);
    let a = fa.page_table_alloc().unwrap();
    let pa = a.into_raw();
    let other_half = crate::mm::addr::PhysAddr(pa.0 + PTE_TABLE_SIZE);
    // SAFETY: the table was given up just above and nothing links
    // it; the refused calls make no handle.
    unsafe {
        assert_eq!(
            PteTable::from_raw(other_half, false).unwrap_err(),
            FragError::NotInUse
        );
        assert_eq!(
            PteTable::from_raw(crate::mm::addr::PhysAddr(pa.0 + 8), false).unwrap_err(),
            FragError::Misaligned
        );
        let a = PteTable::from_raw(pa, false).unwrap();
        fa.page_table_free(a);
    }
    assert_eq!(counts(), before);
}

#[test]
fn crst_tables_carry_their_level_and_free_on_drop() {
    let _s = mm::host_test_serial();
    let before = counts();
    for level in [
        Level::Segment,
        Level::Region3,
        Level::Region2,
        Level::Region1,
    ] {
        let t = table::crst_alloc(level).unwrap();
        assert_eq!(t.level(), Some(level));
        assert_eq!(t.entries().len(), 2048);
        assert_eq!(counts().1, before.1 + 4);
        let pa = t.into_raw();
        // SAFETY: given up just above; nothing links it.
        let t = unsafe { CrstTable::from_raw(pa) }.unwrap();
        table::crst_free(t);
        assert_eq!(counts(), before);
    }
    // A PTE page is no CRST table.
    let mut fa = FragAlloc::new(true);
    let p = fa.page_table_alloc().unwrap();
    // SAFETY: the refused call makes no handle.
    assert!(unsafe { CrstTable::from_raw(p.phys()) }.is_err());
    fa.page_table_free(p);
    assert_eq!(counts(), before);
}

#[test]
fn a_dropped_allocator_lets_its_listed_pages_go() {
    let _s = mm::host_test_serial();
    let before = counts();
    let mut fa = FragAlloc::new(false);
    let a = fa.page_table_alloc().unwrap();
    assert_eq!(fa.list_len(), 1);
    // The allocator goes first (its page still listed, half in use), then
    // the table: the page must go back with it.
    drop(fa);
    drop(a);
    assert_eq!(counts(), before);
}
