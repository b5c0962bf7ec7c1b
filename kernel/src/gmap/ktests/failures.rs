//! Failures and teardown: frees the allocator refuses (`gmap_remove` names
//! them, a gmap drop reports them, `HostMm::unmap_range` keeps them),
//! `gmap_protect_range` under every allocation failure and at the top of
//! the address space, and a teardown that gives every page back.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::sync::Mutex;

use super::{gmap, host, kassert_ok, snapshot, VM_BASE};
use crate::dat::entry::{Level, SEGMENT_SIZE};
use crate::gmap::table;
use crate::gmap::{gmap_remove, Access, Gmap, GmapError, HostMm};
use crate::ktest::{KResult, Outcome};
use crate::mm::addr::PhysAddr;
use crate::mm::{self, ptdesc};
use crate::{kassert, kassert_eq, kfail};

/// A gmap region-first gmap with one linked segment (four tables), and the
/// page of its segment table with a reference taken, so the allocator
/// refuses to free it. Returns the table's real address.
fn gmap_with_a_pinned_table(h: &Arc<Mutex<HostMm>>) -> Result<(Gmap, PhysAddr), Outcome> {
    let g = gmap(h, u64::MAX)?;
    let ga = 0x7ff0_0000_0000_0000u64;
    kassert_ok(g.gmap_map_segment(VM_BASE, ga, SEGMENT_SIZE))?;
    kassert_ok(g.gmap_fault(ga, Access::Write).map(|_| ()))?;
    kassert_eq!(g.table_pages(), 16);
    let ea = g.entry_addr(ga, Level::Segment).ok_or(Outcome::Fail)?;
    let pa = PhysAddr(ea.0 & !0x3fff);
    let t = table::gmap_table_at(pa).map_err(|_| Outcome::Fail)?;
    mm::testing::get_page(table::gmap_table_page(t));
    Ok((g, pa))
}

/// The refused table, given up by its gmap, unpinned and freed by hand.
fn free_pinned_table(pa: PhysAddr, id: u64) -> KResult {
    let t = table::gmap_table_at(pa).map_err(|_| Outcome::Fail)?;
    mm::testing::put_page(table::gmap_table_page(t));
    // SAFETY: the gmap that owned the table is gone and gave it up (its
    // refused free); nothing points at it.
    let t = unsafe { table::GmapTable::from_raw(pa) }.or_else(|e| kfail!("{pa:?}: {e:?}"))?;
    match table::gmap_free_table(t, id, Level::Segment) {
        Ok(()) => Ok(()),
        Err((t, e)) => {
            let _ = t.into_raw();
            kfail!("free after unpinning: {e:?}")
        }
    }
}

/// `gmap_remove` tears down itself and names what it could not free: the
/// other tables go back, the refused one stays a gmap table (freed by hand
/// once the reference is dropped).
pub(super) fn gmap_remove_names_the_tables_it_could_not_free() -> KResult {
    // Frees below are refused on purpose.
    crate::mm::expect_refusals(true);
    mm::drain_pcp();
    let (free, gt) = (
        mm::nr_free_pages_and_desc_slabs(),
        table::nr_gmap_table_pages(),
    );
    let h = host()?;
    let (g, pa) = gmap_with_a_pinned_table(&h)?;
    let id = g.id();
    let bugs = crate::bug::nr_reports();
    kassert_eq!(gmap_remove(g), Err(GmapError::FreeRefused(1)));
    kassert_eq!(table::nr_gmap_table_pages(), gt + 4);
    kassert_eq!(crate::bug::nr_reports(), bugs);
    kassert!(table::gmap_table_at(pa).is_ok());
    free_pinned_table(pa, id)?;
    kassert_eq!(table::nr_gmap_table_pages(), gt);
    drop(h);
    mm::drain_pcp();
    kassert_eq!(mm::nr_free_pages_and_desc_slabs(), free);
    Ok(())
}

/// Dropping a gmap whose table the allocator refuses has no caller to
/// tell: it prints a BUG line and counts it (the runner fails the suite on
/// an unexpected one; this test expects it).
pub(super) fn gmap_drop_reports_a_refused_free_loudly() -> KResult {
    // Frees below are refused on purpose.
    crate::mm::expect_refusals(true);
    let h = host()?;
    let gt = table::nr_gmap_table_pages();
    let (g, pa) = gmap_with_a_pinned_table(&h)?;
    let id = g.id();
    let bugs = crate::bug::nr_reports();
    kassert_eq!(crate::bug::expect_reports(1), 0);
    drop(g);
    let still_expected = crate::bug::expect_reports(0);
    kassert!(still_expected == 0, "Drop did not report the refused free");
    kassert_eq!(crate::bug::nr_reports(), bugs);
    kassert_eq!(table::nr_gmap_table_pages(), gt + 4);
    free_pinned_table(pa, id)?;
    kassert_eq!(table::nr_gmap_table_pages(), gt);
    drop(h);
    Ok(())
}

/// `HostMm::unmap_range` finishes the unmap and frees every frame it can,
/// then reports the ones the allocator refused; the host keeps those and
/// frees them when dropped. A drop that is still refused prints a BUG line.
pub(super) fn host_unmap_range_reports_a_refused_free() -> KResult {
    // Frees below are refused on purpose.
    crate::mm::expect_refusals(true);
    mm::drain_pcp();
    let free = mm::nr_free_pages_and_desc_slabs();
    let h = host()?;
    kassert_eq!(h.lock().populate_range(VM_BASE, 3 * 0x1000), Ok(()));
    let pinned = h.lock().frame(VM_BASE + 0x1000).map(|p| p.pfn());
    let pinned = pinned.and_then(mm::pfn_to_page).ok_or(Outcome::Fail)?;
    mm::testing::get_page(pinned);
    kassert_eq!(
        h.lock().unmap_range(VM_BASE, 3 * 0x1000),
        Err(crate::gmap::host::HostError::FreeRefused {
            frames: 1,
            unmapped: 3
        })
    );
    {
        let hm = h.lock();
        kassert_eq!(hm.space().check().map(|c| c.mapped_pages), Ok(0));
        kassert_eq!((hm.nr_frames(), hm.nr_refused_frames()), (0, 1));
    }
    mm::testing::put_page(pinned);
    drop(h);
    mm::drain_pcp();
    kassert_eq!(mm::nr_free_pages_and_desc_slabs(), free);
    // Still refused when the host goes: a BUG line, counted unless expected.
    let h = host()?;
    kassert_eq!(h.lock().populate(VM_BASE, true).map(|_| ()), Ok(()));
    let pfn = h
        .lock()
        .frame(VM_BASE)
        .map(|p| p.pfn())
        .ok_or(Outcome::Fail)?;
    let page = mm::pfn_to_page(pfn).ok_or(Outcome::Fail)?;
    mm::testing::get_page(page);
    let bugs = crate::bug::nr_reports();
    kassert_eq!(crate::bug::expect_reports(1), 0);
    drop(h);
    let still_expected = crate::bug::expect_reports(0);
    kassert!(still_expected == 0, "HostMm::drop did not report");
    kassert_eq!(crate::bug::nr_reports(), bugs);
    mm::testing::put_page(page);
    // SAFETY: the frame the dropped host could not free; nothing maps it.
    let p = unsafe { mm::Pages::from_raw(pfn, 0) };
    kassert!(mm::free_pages(p).is_ok());
    mm::drain_pcp();
    kassert_eq!(mm::nr_free_pages_and_desc_slabs(), free);
    Ok(())
}

/// `gmap_protect_range` checks the whole range first (alignment, overflow,
/// limit, every segment mapped), so only memory can run out afterwards;
/// then it undoes what it did. Every allocation it makes is made to fail in
/// turn, on a range over three segments of a region-first gmap: the last two
/// pages of a linked segment (one page of it populated and notified
/// already), a whole segment whose host page table exists but which is not
/// linked, and the first pages of a segment neither side has, which needs a
/// new gmap segment table and a new host page table. After each failure the
/// state is the state before; without a failure every page has the notify
/// bit and every segment is linked.
pub(super) fn protect_range_failure_changes_nothing() -> KResult {
    use crate::mm::fail;
    crate::fault_tests::skip_while_cmdline_armed()?;
    let s = SEGMENT_SIZE;
    // Three segments around a 2 GiB boundary (a region-third entry each side).
    let a = 0x0123_4560_8000_0000u64 - s;
    let (b, c) = (a + s, a + 2 * s);
    let (start, end) = (a + s - 0x2000, c + 0x3000);
    let setup = || -> Result<(Arc<Mutex<HostMm>>, Gmap), Outcome> {
        let h = host()?;
        let g = gmap(&h, u64::MAX)?;
        kassert_ok(g.gmap_map_segment(VM_BASE, a, 3 * s))?;
        kassert_ok(g.gmap_fault(a, Access::Write).map(|_| ()))?;
        kassert_ok(g.gmap_fault(a + 0x1000, Access::Write).map(|_| ()))?;
        kassert_ok(g.gmap_protect_range(a + 0x1000, 0x1000))?;
        kassert_ok(h.lock().populate(VM_BASE + s + 0x5000, true).map(|_| ()))?;
        // Most of segment b is there already: the protect populates its
        // pages 0, 1, 128 and 255 only (and the tables and pages of a and
        // c), so each kind of allocation fails once, without 250 frame
        // allocations of one kind in between (each a whole setup again).
        kassert_ok(h.lock().populate_range(VM_BASE + s + 0x2000, 126 * 0x1000))?;
        kassert_ok(
            h.lock()
                .populate_range(VM_BASE + s + 0x8_1000, 126 * 0x1000),
        )?;
        Ok((h, g))
    };
    let mut n = 1u64;
    loop {
        let (h, g) = setup()?;
        let before = snapshot(&h, &g, &[a, b, c]);
        kassert_eq!(before.check, Ok(1));
        fail::fail_alloc_nth(n);
        let r = g.gmap_protect_range(start, end - start);
        let untouched = fail::pending();
        fail::fail_alloc_off();
        if untouched {
            kassert_eq!(r, Ok(()));
            let hm = h.lock();
            let mut va = VM_BASE + s - 0x2000;
            while va < VM_BASE + 2 * s + 0x3000 {
                kassert!(hm.space().pgste_notify(va), "no notify bit at {:#x}", va);
                va += 0x1000;
            }
            kassert!(hm.space().pgste_notify(VM_BASE + 0x1000));
            kassert!(!hm.space().pgste_notify(VM_BASE));
            drop(hm);
            kassert_eq!(g.check(), Ok(3));
            break;
        }
        kassert!(
            r == Err(GmapError::NoMemory),
            "allocation {} failed: {:?}",
            n,
            r
        );
        let after = snapshot(&h, &g, &[a, b, c]);
        kassert!(
            after == before,
            "allocation {} failed:\nbefore {:?}\nafter  {:?}",
            n,
            before,
            after
        );
        kassert_eq!(gmap_remove(g), Ok(()));
        drop(h);
        n += 1;
    }
    // 2 + 4 + 3 frames, a host page table and a gmap segment table.
    kassert!(n > 11, "only {} allocations", n - 1);
    crate::ktest::diag(format_args!(
        "gmap_protect_range: {} injected failures changed nothing",
        n - 1
    ));
    Ok(())
}

/// `gaddr + len` of a range ending at (or past) the top of a region-first
/// gmap: refused when it overflows, nothing changed; the last page itself
/// can be protected.
pub(super) fn protect_range_at_the_top_of_the_address_space() -> KResult {
    let h = host()?;
    let g = gmap(&h, u64::MAX)?;
    let top = 0u64.wrapping_sub(SEGMENT_SIZE);
    kassert_eq!(g.gmap_map_segment(VM_BASE, top, SEGMENT_SIZE), Ok(()));
    let page = 0u64.wrapping_sub(0x1000);
    let before = snapshot(&h, &g, &[top]);
    for (ga, len) in [
        (page, 0x2000u64),
        (top, 2 * SEGMENT_SIZE),
        (page, !0xfffu64),
    ] {
        kassert_eq!(g.gmap_protect_range(ga, len), Err(GmapError::OutOfRange));
    }
    kassert_eq!(snapshot(&h, &g, &[top]), before);
    kassert_eq!(g.gmap_protect_range(page, 0x1000), Ok(()));
    kassert!(h
        .lock()
        .space()
        .pgste_notify(VM_BASE + SEGMENT_SIZE - 0x1000));
    kassert_eq!(g.check(), Ok(1));
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

pub(super) fn teardown_returns_every_page() -> KResult {
    mm::drain_pcp();
    let (free, pt, gt) = (
        mm::nr_free_pages_and_desc_slabs(),
        ptdesc::nr_pagetable(),
        table::nr_gmap_table_pages(),
    );
    {
        let h = host()?;
        let gs: Vec<Gmap> = [(1u64 << 31) - 1, (1 << 42) - 1, u64::MAX]
            .iter()
            .filter_map(|l| gmap(&h, *l).ok())
            .collect();
        kassert_eq!(gs.len(), 3);
        for (i, g) in gs.iter().enumerate() {
            let ga = 0x4000_0000u64 - (i as u64 + 1) * 4 * SEGMENT_SIZE;
            kassert_eq!(g.gmap_map_segment(VM_BASE, ga, 4 * SEGMENT_SIZE), Ok(()));
            for p in 0..16u64 {
                kassert!(g.gmap_fault(ga + p * 0x4_1000, Access::Write).is_ok());
            }
        }
        kassert!(table::nr_gmap_table_pages() > gt);
        for g in gs {
            kassert_eq!(gmap_remove(g), Ok(()));
        }
        kassert_eq!(table::nr_gmap_table_pages(), gt);
        drop(h);
    }
    mm::drain_pcp();
    kassert_eq!(
        (
            mm::nr_free_pages_and_desc_slabs(),
            ptdesc::nr_pagetable(),
            table::nr_gmap_table_pages()
        ),
        (free, pt, gt)
    );
    Ok(())
}
