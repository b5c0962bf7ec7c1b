//! gmap on QEMU's DAT: gmap ASCEs loaded as the secondary space, accesses
//! through guest addresses compared with the host's frames.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use super::table::{self, GmapTableError};
use super::{gmap_create, gmap_remove, Access, Gmap, GmapCheckError, GmapError, HostMm};
use crate::arch::pgm::{code, ProgramCheck};
use crate::arch::s390x::dat as hw;
use crate::dat::entry::{Level, Prot, SEGMENT_SIZE};
use crate::dat::kernel::with_secondary_lctlg;
use crate::dat::space::{SpaceCheck, SpaceCheckError};
use crate::ktest::{KResult, Outcome, Rng};
use crate::mm::addr::PhysAddr;
use crate::mm::{self, ptdesc};
use crate::{kassert, kassert_eq, kassert_matches, kfail, ktest_suite};

const HOST_LIMIT: u64 = 1 << 31;
const VM_BASE: u64 = 0x1000_0000;

fn host() -> Result<Arc<Mutex<HostMm>>, Outcome> {
    HostMm::new(HOST_LIMIT).or_else(|e| kfail!("HostMm::new: {e:?}"))
}

fn gmap(h: &Arc<Mutex<HostMm>>, limit: u64) -> Result<Gmap, Outcome> {
    gmap_create(h, limit).or_else(|e| kfail!("gmap_create: {e:?}"))
}

fn g_load_lctlg(g: &Gmap, gaddr: u64) -> Result<u64, ProgramCheck> {
    // SAFETY: the gmap (and its host) outlive the call.
    unsafe { with_secondary_lctlg(g.asce(), || hw::secondary_load_u64(gaddr)) }
}

fn g_store_lctlg(g: &Gmap, gaddr: u64, v: u64) -> Result<(), ProgramCheck> {
    // SAFETY: guest memory is host frames the test populated.
    unsafe { with_secondary_lctlg(g.asce(), || hw::secondary_store_u64(gaddr, v)) }
}

/// The host's view of `vmaddr` (through the host space in CR7).
fn h_load_lctlg(h: &Arc<Mutex<HostMm>>, vmaddr: u64) -> Result<u64, ProgramCheck> {
    let asce = h.lock().space().asce();
    // SAFETY: the host outlives the call.
    unsafe { with_secondary_lctlg(asce, || hw::secondary_load_u64(vmaddr)) }
}

fn h_store_lctlg(h: &Arc<Mutex<HostMm>>, vmaddr: u64, v: u64) -> Result<(), ProgramCheck> {
    let asce = h.lock().space().asce();
    // SAFETY: the host's frames are the test's.
    unsafe { with_secondary_lctlg(asce, || hw::secondary_store_u64(vmaddr, v)) }
}

/// Everything a refused (or undone) operation must leave as it was: free
/// pages, page-table and gmap-table pages, the gmap's own check, link
/// counters and table pages, the host's check (mapped pages, tables) and
/// frames, and for each watched guest segment its gmap segment entry, its
/// translation and the PGSTE notify bits of its 256 host pages.
#[derive(Debug, PartialEq, Eq)]
struct State {
    free: u64,
    pagetables: u64,
    gmap_tables: u64,
    table_pages: u64,
    check: Result<u64, GmapCheckError>,
    links: (u64, u64),
    host: Result<SpaceCheck, SpaceCheckError>,
    frames: usize,
    /// (segment entry, translation, notify bits) per watched segment.
    segs: Vec<(u64, Result<u64, GmapError>, [u64; 4])>,
}

fn snapshot(h: &Arc<Mutex<HostMm>>, g: &Gmap, watch: &[u64]) -> State {
    let mut segs = Vec::with_capacity(watch.len());
    for &ga in watch {
        let tr = g.gmap_translate(ga);
        let mut bits = [0u64; 4];
        if let Ok(vm) = tr {
            let hm = h.lock();
            for p in 0..256u64 {
                if hm.space().pgste_notify(vm + p * 0x1000) {
                    bits[p as usize / 64] |= 1 << (p % 64);
                }
            }
        }
        segs.push((g.segment_entry_value(ga).raw(), tr, bits));
    }
    mm::drain_pcp();
    let hm = h.lock();
    let (host, frames) = (hm.space().check(), hm.nr_frames());
    drop(hm);
    State {
        free: mm::nr_free_pages(),
        pagetables: ptdesc::nr_pagetable(),
        gmap_tables: table::nr_gmap_table_pages(),
        table_pages: g.table_pages(),
        check: g.check(),
        links: g.link_counts(),
        host,
        frames,
        segs,
    }
}

fn descriptor_is_distinct_and_gaddr_cleared_before_free() -> KResult {
    // Frees below are refused on purpose.
    crate::mm::expect_refusals(true);
    let t = table::gmap_alloc_table(77, Level::Segment, 0x8000_0000).map_err(|_| Outcome::Fail)?;
    let page = table::gmap_table_page(t);
    kassert!(table::page_gmap_table(page).is_ok());
    // A gmap table is not a process page table, and the other way round.
    kassert_matches!(
        ptdesc::page_ptdesc(page),
        Err(ptdesc::PtDescError::NotPageTable(Some(
            mm::page::PageType::GmapTable
        )))
    );
    let pt = ptdesc::pagetable_alloc(0).map_err(|_| Outcome::Fail)?;
    ptdesc::pagetable_pte_ctor(pt);
    kassert_matches!(
        table::page_gmap_table(ptdesc::ptdesc_page(pt)),
        Err(GmapTableError::NotGmapTable(Some(
            mm::page::PageType::PageTable
        )))
    );
    ptdesc::pagetable_pte_dtor(pt);
    kassert_eq!(ptdesc::pagetable_free(pt), Ok(()));
    // The gaddr aliases `mapping`: freed without clearing it, the buddy
    // allocator's non-NULL-mapping check refuses the table...
    kassert_eq!(
        table::free_table_as_is(t, 77, Level::Segment),
        Err(GmapTableError::Free(mm::FreeError::NonNullMapping(
            0x8000_0000
        )))
    );
    kassert_eq!(t.gaddr(), 0x8000_0000);
    // ...and gmap_free_table, which clears it first, succeeds.
    kassert_eq!(table::gmap_free_table(t, 77, Level::Segment), Ok(()));
    Ok(())
}

/// `gmap_free_table` frees a table only for the owner and level its
/// descriptor names, whatever its guest address (every top table has
/// gaddr 0, so the allocator's non-NULL-mapping check cannot tell); a
/// refused free changes nothing, not even the gaddr it cleared; a second
/// free finds no gmap table.
fn table_free_checks_owner_and_level() -> KResult {
    // Frees below are refused on purpose.
    crate::mm::expect_refusals(true);
    let gt = table::nr_gmap_table_pages();
    for (level, other, gaddr) in [
        (Level::Segment, Level::Region3, 0u64),
        (Level::Segment, Level::Region1, 0x8000_0000),
        (Level::Region3, Level::Segment, 0),
        (Level::Region2, Level::Region3, 1 << 53),
        (Level::Region1, Level::Region2, 0),
    ] {
        let t = table::gmap_alloc_table(77, level, gaddr).map_err(|_| Outcome::Fail)?;
        kassert_eq!((t.owner(), t.level(), t.gaddr()), (77, Some(level), gaddr));
        for (owner, lvl, want) in [
            (78, level, GmapTableError::WrongOwner(77)),
            (0, level, GmapTableError::WrongOwner(77)),
            (78, other, GmapTableError::WrongOwner(77)),
            (77, other, GmapTableError::WrongLevel(Some(level))),
        ] {
            kassert_eq!(table::gmap_free_table(t, owner, lvl), Err(want));
            kassert_eq!(table::free_table_as_is(t, owner, lvl), Err(want));
            kassert!(table::page_gmap_table(table::gmap_table_page(t)).is_ok());
            kassert_eq!((t.owner(), t.level(), t.gaddr()), (77, Some(level), gaddr));
            kassert_eq!(table::nr_gmap_table_pages(), gt + 4);
        }
        kassert_eq!(table::gmap_free_table(t, 77, level), Ok(()));
        kassert_eq!(table::nr_gmap_table_pages(), gt);
        kassert_matches!(
            table::gmap_free_table(t, 77, level),
            Err(GmapTableError::NotGmapTable(_))
        );
        kassert_eq!(table::nr_gmap_table_pages(), gt);
    }
    // The allocator refuses (a reference is held): the table stays as it
    // was, gaddr included.
    let t = table::gmap_alloc_table(77, Level::Segment, 0x8000_0000).map_err(|_| Outcome::Fail)?;
    let page = table::gmap_table_page(t);
    page.page_ref_inc();
    kassert_eq!(
        table::gmap_free_table(t, 77, Level::Segment),
        Err(GmapTableError::Free(mm::FreeError::BadRefcount(2)))
    );
    kassert_eq!((t.owner(), t.gaddr()), (77, 0x8000_0000));
    kassert!(table::page_gmap_table(page).is_ok());
    page.page_ref_dec();
    kassert_eq!(table::gmap_free_table(t, 77, Level::Segment), Ok(()));
    kassert_eq!(table::nr_gmap_table_pages(), gt);
    Ok(())
}

/// Guest addresses read and write the host's frames, for a gmap of each
/// ASCE type.
fn hardware_translation_for_each_asce_type() -> KResult {
    let h = host()?;
    for (limit, gbase, level) in [
        ((1u64 << 31) - 1, 0x4000_0000u64, Level::Segment),
        ((1 << 42) - 1, 0x123_0000_0000, Level::Region3),
        ((1 << 53) - 1, 0x10_0000_0000_0000, Level::Region2),
        (u64::MAX, 0xfff0_0000_0000_0000, Level::Region1),
    ] {
        let g = gmap(&h, limit)?;
        kassert_eq!(g.asce().level(), level);
        kassert_eq!(g.gmap_map_segment(VM_BASE, gbase, 2 * SEGMENT_SIZE), Ok(()));
        for off in [0u64, 0x1000, SEGMENT_SIZE + 0x5000] {
            kassert_eq!(g.gmap_fault(gbase + off, Access::Write), Ok(VM_BASE + off));
            let v = 0x6000_0000 + off + level as u64;
            kassert_eq!(h_store_lctlg(&h, VM_BASE + off + 8, v), Ok(()));
            kassert_eq!(g_load_lctlg(&g, gbase + off + 8), Ok(v));
            kassert_eq!(g_store_lctlg(&g, gbase + off + 16, !v), Ok(()));
            kassert_eq!(h_load_lctlg(&h, VM_BASE + off + 16), Ok(!v));
        }
        kassert_eq!(gmap_remove(g), Ok(()));
    }
    drop(h);
    Ok(())
}

fn host_changes_are_seen_by_every_linked_gmap() -> KResult {
    let h = host()?;
    let (g1, g2) = (gmap(&h, (1 << 31) - 1)?, gmap(&h, (1 << 42) - 1)?);
    let (a1, a2) = (0x20_0000u64, 0x200_0000_0000u64);
    kassert_eq!(g1.gmap_map_segment(VM_BASE, a1, SEGMENT_SIZE), Ok(()));
    kassert_eq!(g2.gmap_map_segment(VM_BASE, a2, SEGMENT_SIZE), Ok(()));
    for p in 0..4u64 {
        kassert!(g1.gmap_fault(a1 + p * 0x1000, Access::Write).is_ok());
        kassert!(g2.gmap_fault(a2 + p * 0x1000, Access::Write).is_ok());
    }
    // Both gmap segments point at the host's one PTE table.
    let host_pt = h.lock().space().pte_table(VM_BASE);
    kassert_eq!(Some(g1.segment_entry_value(a1).page_table()), host_pt);
    kassert_eq!(Some(g2.segment_entry_value(a2).page_table()), host_pt);
    kassert_eq!(h_store_lctlg(&h, VM_BASE + 0x1000, 41), Ok(()));
    kassert_eq!(
        (
            g_load_lctlg(&g1, a1 + 0x1000),
            g_load_lctlg(&g2, a2 + 0x1000)
        ),
        (Ok(41), Ok(41))
    );
    // Protect in the host: both guests' stores are refused.
    kassert_eq!(h.lock().protect(VM_BASE + 0x1000, Prot::ReadOnly), Ok(()));
    kassert_matches!(g_store_lctlg(&g1, a1 + 0x1000, 1), Err(pc) if pc.code == code::PROTECTION);
    kassert_matches!(g_store_lctlg(&g2, a2 + 0x1000, 1), Err(pc) if pc.code == code::PROTECTION);
    kassert_eq!(h.lock().protect(VM_BASE + 0x1000, Prot::ReadWrite), Ok(()));
    kassert_eq!(g_store_lctlg(&g1, a1 + 0x1000, 42), Ok(()));
    kassert_eq!(g_load_lctlg(&g2, a2 + 0x1000), Ok(42));
    // Remap in the host (a new, zeroed frame): both guests see it at once.
    let r = h.lock().remap(VM_BASE + 0x2000);
    kassert!(r.is_ok());
    kassert_eq!(
        (
            g_load_lctlg(&g1, a1 + 0x2000),
            g_load_lctlg(&g2, a2 + 0x2000)
        ),
        (Ok(0), Ok(0))
    );
    // Unmap one page in the host (IPTE): both guests fault on it.
    kassert_eq!(h.lock().unmap_range(VM_BASE + 0x3000, 0x1000), Ok(1));
    kassert_matches!(g_load_lctlg(&g1, a1 + 0x3000), Err(pc) if pc.code == code::PAGE_TRANSLATION);
    kassert_matches!(g_load_lctlg(&g2, a2 + 0x3000), Err(pc) if pc.code == code::PAGE_TRANSLATION);
    kassert_eq!(gmap_remove(g1), Ok(()));
    kassert_eq!(gmap_remove(g2), Ok(()));
    drop(h);
    Ok(())
}

fn freeing_a_host_pte_table_unlinks_and_fault_relinks() -> KResult {
    let h = host()?;
    let g = gmap(&h, (1 << 31) - 1)?;
    let ga = 0x300_0000u64;
    kassert_eq!(g.gmap_map_segment(VM_BASE, ga, SEGMENT_SIZE), Ok(()));
    kassert!(g.gmap_fault(ga, Access::Write).is_ok());
    kassert_eq!(g_store_lctlg(&g, ga, 5), Ok(()));
    kassert!(!g.segment_entry_value(ga).is_invalid());
    let (links, unlinks) = g.link_counts();
    // The host unmaps the whole segment: its PTE table is freed, and the
    // gmap entry pointing at it is invalidated first.
    kassert_eq!(h.lock().unmap_range(VM_BASE, SEGMENT_SIZE), Ok(1));
    kassert!(g.segment_entry_value(ga).is_invalid());
    kassert_eq!(g.link_counts(), (links, unlinks + 1));
    kassert_matches!(g_load_lctlg(&g, ga), Err(pc) if pc.code == code::SEGMENT_TRANSLATION);
    // gmap_fault repopulates the host and relinks.
    kassert!(g.gmap_fault(ga, Access::Read).is_ok());
    kassert_eq!(g_load_lctlg(&g, ga), Ok(0));
    kassert_eq!(g.link_counts().0, links + 1);
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

/// One gmap never maps or links two guest segments to one host segment
/// (Linux __gmap_link: -EEXIST): host_to_guest is single-valued, so freeing
/// the host's PTE table could unlink only one of them and leave the other
/// pointing at the freed table. Other gmaps may share the host segment.
fn host_aliasing_within_a_gmap_is_refused() -> KResult {
    let h = host()?;
    let g = gmap(&h, (1 << 31) - 1)?;
    let s = SEGMENT_SIZE;
    let (ga, other) = (0x100_0000u64, 0x400_0000u64);
    kassert_eq!(g.gmap_map_segment(VM_BASE, ga, 2 * s), Ok(()));
    kassert_eq!(g.gmap_fault(ga, Access::Write), Ok(VM_BASE));
    let watch = [ga, ga + s, other, other + s, other + 2 * s, other + 3 * s];
    let before = snapshot(&h, &g, &watch);
    kassert_eq!(before.check, Ok(1));
    // The same host segment; host ranges overlapping the mapped one at its
    // start, its end, and around it.
    for (from, len) in [
        (VM_BASE, s),
        (VM_BASE + s, s),
        (VM_BASE - s, 2 * s),
        (VM_BASE + s, 2 * s),
        (VM_BASE - s, 4 * s),
    ] {
        let r = g.gmap_map_segment(from, other, len);
        kassert!(
            r == Err(GmapError::HostAliased),
            "host {:#x} + {:#x}: {:?}",
            from,
            len,
            r
        );
    }
    // Adjacent host ranges are not aliases.
    kassert_eq!(g.gmap_map_segment(VM_BASE + 2 * s, other, s), Ok(()));
    kassert_eq!(g.gmap_unmap_segment(other, s), Ok(()));
    // Linking the host segment linked already to `ga` to another guest
    // segment of this gmap, mapped to it or not.
    kassert_eq!(g.gmap_link(other, VM_BASE), Err(GmapError::HostAliased));
    kassert_eq!(
        g.gmap_link(other + 0x5000, VM_BASE + 0x5000),
        Err(GmapError::HostAliased)
    );
    kassert_eq!(snapshot(&h, &g, &watch), before);
    // A second gmap may map and link the same host segment.
    let g2 = gmap(&h, (1 << 31) - 1)?;
    kassert_eq!(g2.gmap_map_segment(VM_BASE, other, s), Ok(()));
    kassert_eq!(g2.gmap_fault(other, Access::Read), Ok(VM_BASE));
    // The host frees the PTE table: every link to it goes, in both gmaps.
    kassert_eq!(h.lock().unmap_range(VM_BASE, s), Ok(1));
    kassert_eq!((g.check(), g2.check()), (Ok(0), Ok(0)));
    kassert!(g.segment_entry_value(ga).is_invalid());
    kassert!(g2.segment_entry_value(other).is_invalid());
    kassert_eq!(gmap_remove(g2), Ok(()));
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

fn segment_gaddr_comes_from_the_gmap_table_descriptor() -> KResult {
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
            kassert_eq!(super::segment_gaddr_of_entry(va), Ok(gaddr));
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
fn entry_gaddr_at_every_level_of_each_asce_type() -> KResult {
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
                kassert_eq!(super::segment_gaddr_of_entry(va), Ok(ga));
            } else {
                kassert_eq!(
                    super::segment_gaddr_of_entry(va),
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
    let (free, gt) = (mm::nr_free_pages(), table::nr_gmap_table_pages());
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
        (mm::nr_free_pages(), table::nr_gmap_table_pages()),
        (free, gt)
    );
    Ok(())
}

/// A notifier call: (gmap, start, end, what the guest saw at that moment).
type Note = (u64, u64, u64, Result<u64, ProgramCheck>);

static NOTES: Mutex<Vec<Note>> = Mutex::new(Vec::new());
static WATCHED_ASCE: AtomicU64 = AtomicU64::new(0);

fn record(gmap: u64, start: u64, end: u64) {
    // Read the guest page now: the change must not be visible yet.
    let asce = crate::dat::entry::Asce::from_raw(WATCHED_ASCE.load(Ordering::Relaxed));
    // SAFETY: the test's gmap is live while its host changes.
    let v = unsafe { with_secondary_lctlg(asce, || hw::secondary_load_u64(start)) };
    NOTES.lock().push((gmap, start, end, v));
}

fn notifier_sees_exact_range_once_before_the_change() -> KResult {
    let h = host()?;
    let g = gmap(&h, (1 << 31) - 1)?;
    let ga = 0x500_0000u64;
    kassert_eq!(g.gmap_map_segment(VM_BASE, ga, SEGMENT_SIZE), Ok(()));
    for p in 0..3u64 {
        kassert!(g.gmap_fault(ga + p * 0x1000, Access::Write).is_ok());
        kassert_eq!(g_store_lctlg(&g, ga + p * 0x1000, 0x100 + p), Ok(()));
    }
    WATCHED_ASCE.store(g.asce().raw(), Ordering::Relaxed);
    NOTES.lock().clear();
    super::notify::gmap_register_pte_notifier(record);
    kassert_eq!(g.gmap_protect_range(ga + 0x1000, 0x1000), Ok(()));
    // Pages not covered change without a call.
    kassert_eq!(h.lock().protect(VM_BASE, Prot::ReadOnly), Ok(()));
    kassert_eq!(NOTES.lock().len(), 0);
    // The covered page: protect, then remap, then unmap.
    kassert_eq!(h.lock().protect(VM_BASE + 0x1000, Prot::ReadOnly), Ok(()));
    let notes = core::mem::take(&mut *NOTES.lock());
    kassert_eq!(notes.len(), 1);
    kassert_eq!(notes[0].0, g.id());
    kassert_eq!((notes[0].1, notes[0].2), (ga + 0x1000, ga + 0x2000));
    kassert_eq!(notes[0].3, Ok(0x101));
    // The notify bit is one-shot: the next change is silent.
    kassert_eq!(h.lock().protect(VM_BASE + 0x1000, Prot::ReadWrite), Ok(()));
    kassert_eq!(NOTES.lock().len(), 0);
    kassert_eq!(g.gmap_protect_range(ga + 0x1000, 0x1000), Ok(()));
    let r = h.lock().remap(VM_BASE + 0x1000);
    kassert!(r.is_ok());
    let notes = core::mem::take(&mut *NOTES.lock());
    kassert_eq!(notes.len(), 1);
    kassert_eq!((notes[0].1, notes[0].3), (ga + 0x1000, Ok(0x101)));
    kassert!(g.gmap_fault(ga + 0x1000, Access::Read).is_ok());
    kassert_eq!(g.gmap_protect_range(ga + 0x1000, 0x1000), Ok(()));
    kassert_eq!(h.lock().unmap_range(VM_BASE + 0x1000, 0x1000), Ok(1));
    let notes = core::mem::take(&mut *NOTES.lock());
    kassert_eq!(notes.len(), 1);
    kassert_eq!(
        (notes[0].1, notes[0].2, notes[0].3),
        (ga + 0x1000, ga + 0x2000, Ok(0))
    );
    super::notify::gmap_unregister_pte_notifier(record);
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

/// The notifier's exclusive end of the last page of a region-first gmap
/// does not fit in 64 bits: it saturates (it used to overflow).
fn notifier_at_the_top_of_the_address_space() -> KResult {
    let h = host()?;
    let g = gmap(&h, u64::MAX)?;
    let top = 0u64.wrapping_sub(SEGMENT_SIZE);
    let page = 0u64.wrapping_sub(0x1000);
    let vm = VM_BASE + SEGMENT_SIZE - 0x1000;
    kassert_eq!(g.gmap_map_segment(VM_BASE, top, SEGMENT_SIZE), Ok(()));
    kassert_eq!(g.gmap_fault(page, Access::Write), Ok(vm));
    kassert_eq!(g_store_lctlg(&g, page, 0x5151), Ok(()));
    kassert_eq!(g.gmap_protect_range(page, 0x1000), Ok(()));
    WATCHED_ASCE.store(g.asce().raw(), Ordering::Relaxed);
    NOTES.lock().clear();
    super::notify::gmap_register_pte_notifier(record);
    let r = h.lock().protect(vm, Prot::ReadOnly);
    super::notify::gmap_unregister_pte_notifier(record);
    kassert_eq!(r, Ok(()));
    let notes = core::mem::take(&mut *NOTES.lock());
    kassert_eq!(notes.len(), 1);
    kassert_eq!(notes[0], (g.id(), page, u64::MAX, Ok(0x5151)));
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

/// A refused call's error, whatever its subsystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    Gmap(GmapError),
    Host(super::host::HostError),
    Space(crate::dat::space::SpaceError),
    Table(GmapTableError),
    /// A lookup found nothing.
    Absent,
}

/// Every public gmap, gmap-table and host operation, given bad input
/// (unaligned, out of range, overflowing, overlapping, unmapped, twice):
/// each returns its error and changes nothing. Before and after each call:
/// free pages, page-table and gmap-table pages, both gmaps' checks, link
/// counts, table pages, watched segment entries, translations and notify
/// bits, the host's check and frames. Every row runs; each mismatch is
/// reported.
fn bad_input_changes_nothing() -> KResult {
    use super::host::HostError;
    use crate::dat::space::SpaceError;
    use crate::dat::table::phys_to_virt;
    use crate::mm::addr::VirtAddr;
    use GmapError::*;
    use Refused::{Gmap as G, Host as H, Space as S, Table as T};
    let s = SEGMENT_SIZE;
    let h = host()?;
    // g: a segment-table gmap; G1 (two segments) over VM_BASE, the first
    // linked; the host also has a page table at VM_BASE + 4 MiB, unlinked;
    // 0x600_0000 was mapped and unmapped once.
    let g = gmap(&h, (1 << 31) - 1)?;
    const G1: u64 = 0x100_0000;
    kassert_eq!(g.gmap_map_segment(VM_BASE, G1, 2 * s), Ok(()));
    kassert_eq!(g.gmap_fault(G1, Access::Write), Ok(VM_BASE));
    kassert_eq!(h.lock().populate(VM_BASE + 4 * s, true).map(|_| ()), Ok(()));
    kassert_eq!(g.gmap_map_segment(VM_BASE + 6 * s, 0x600_0000, s), Ok(()));
    kassert_eq!(g.gmap_unmap_segment(0x600_0000, s), Ok(()));
    // g1: a region-first gmap with the top segment of the 64-bit space.
    let g1 = gmap(&h, u64::MAX)?;
    let top = 0u64.wrapping_sub(s);
    kassert_eq!(g1.gmap_map_segment(VM_BASE + 8 * s, top, s), Ok(()));
    kassert_eq!(g1.gmap_fault(top, Access::Write), Ok(VM_BASE + 8 * s));
    // The host's top table: a process page table (CRST), no gmap table.
    let host_pt = h.lock().space().asce().origin();
    let g_top = super::top_table(&g).ok_or(Outcome::Fail)?;
    let g1_top_entry = phys_to_virt(g1.entry_addr(top, Level::Region1).ok_or(Outcome::Fail)?);
    let (gid, hl) = (g.id(), HOST_LIMIT);
    let watch = [G1, G1 + s, 0x200_0000, 0x600_0000];
    let gm = |r: Result<(), GmapError>| r.map_err(G);
    let sp = |r: Result<(), SpaceError>| r.map_err(S);
    let tb = |r: Result<(), GmapTableError>| r.map_err(T);
    let hs = |r: Result<(), HostError>| r.map_err(H);
    type Row<'a> = (&'static str, &'a dyn Fn() -> Result<(), Refused>, Refused);
    let rows: &[Row<'_>] = &[
        // gmap_map_segment(from, to, len)
        (
            "map: from unaligned",
            &|| gm(g.gmap_map_segment(VM_BASE + 0x1000, 0x200_0000, s)),
            G(Misaligned),
        ),
        (
            "map: to unaligned",
            &|| gm(g.gmap_map_segment(VM_BASE + 16 * s, 0x200_1000, s)),
            G(Misaligned),
        ),
        (
            "map: len unaligned",
            &|| gm(g.gmap_map_segment(VM_BASE + 16 * s, 0x200_0000, s + 0x1000)),
            G(Misaligned),
        ),
        (
            "map: len 0",
            &|| gm(g.gmap_map_segment(VM_BASE + 16 * s, 0x200_0000, 0)),
            G(Misaligned),
        ),
        (
            "map: past the guest limit",
            &|| gm(g.gmap_map_segment(VM_BASE + 16 * s, 0x7ff0_0000, 2 * s)),
            G(OutOfRange),
        ),
        (
            "map: to + len overflows",
            &|| gm(g1.gmap_map_segment(VM_BASE + 16 * s, top, 2 * s)),
            G(OutOfRange),
        ),
        (
            "map: past the host limit",
            &|| gm(g.gmap_map_segment(hl - s, 0x200_0000, 2 * s)),
            G(OutOfRange),
        ),
        (
            "map: from + len overflows",
            &|| gm(g.gmap_map_segment(top, 0x200_0000, 2 * s)),
            G(OutOfRange),
        ),
        (
            "map: guest overlap",
            &|| gm(g.gmap_map_segment(VM_BASE + 16 * s, G1 - s, 2 * s)),
            G(AlreadyMapped),
        ),
        (
            "map: twice",
            &|| gm(g.gmap_map_segment(VM_BASE, G1, 2 * s)),
            G(AlreadyMapped),
        ),
        (
            "map: host aliased",
            &|| gm(g.gmap_map_segment(VM_BASE + s, 0x300_0000, s)),
            G(HostAliased),
        ),
        // gmap_unmap_segment(to, len)
        (
            "unmap: unaligned",
            &|| gm(g.gmap_unmap_segment(G1 + 0x1000, s)),
            G(Misaligned),
        ),
        (
            "unmap: len 0",
            &|| gm(g.gmap_unmap_segment(G1, 0)),
            G(Misaligned),
        ),
        (
            "unmap: past the limit",
            &|| gm(g.gmap_unmap_segment(0x7ff0_0000, 2 * s)),
            G(OutOfRange),
        ),
        (
            "unmap: unmapped",
            &|| gm(g.gmap_unmap_segment(0x200_0000, s)),
            G(NotMapped),
        ),
        (
            "unmap: partly mapped",
            &|| gm(g.gmap_unmap_segment(G1, 3 * s)),
            G(NotMapped),
        ),
        (
            "unmap: twice",
            &|| gm(g.gmap_unmap_segment(0x600_0000, s)),
            G(NotMapped),
        ),
        // gmap_translate, gmap_fault
        (
            "translate: past the limit",
            &|| gm(g.gmap_translate(0x8000_0000).map(|_| ())),
            G(OutOfRange),
        ),
        (
            "translate: unmapped",
            &|| gm(g.gmap_translate(0x200_0000).map(|_| ())),
            G(NotMapped),
        ),
        (
            "fault: past the limit",
            &|| gm(g.gmap_fault(0x8000_0000, Access::Read).map(|_| ())),
            G(OutOfRange),
        ),
        (
            "fault: unmapped",
            &|| gm(g.gmap_fault(0x200_0000, Access::Write).map(|_| ())),
            G(NotMapped),
        ),
        // gmap_link(gaddr, vmaddr)
        (
            "link: gaddr past the limit",
            &|| gm(g.gmap_link(0x8000_0000, VM_BASE)),
            G(OutOfRange),
        ),
        (
            "link: vmaddr past the host limit",
            &|| gm(g.gmap_link(G1 + s, hl)),
            G(OutOfRange),
        ),
        (
            "link: gaddr unmapped",
            &|| gm(g.gmap_link(0x200_0000, VM_BASE + 4 * s)),
            G(NotMapped),
        ),
        (
            "link: another host segment",
            &|| gm(g.gmap_link(G1 + s, VM_BASE + 4 * s)),
            G(HostMismatch),
        ),
        (
            "link: host segment linked elsewhere",
            &|| gm(g.gmap_link(G1 + s, VM_BASE)),
            G(HostAliased),
        ),
        (
            "link: no host page table",
            &|| gm(g.gmap_link(G1 + s, VM_BASE + s)),
            G(NotMapped),
        ),
        // gmap_protect_range(gaddr, len)
        (
            "protect: unaligned",
            &|| gm(g.gmap_protect_range(G1 + 0x10, 0x1000)),
            G(Misaligned),
        ),
        (
            "protect: len unaligned",
            &|| gm(g.gmap_protect_range(G1, 0x1800)),
            G(Misaligned),
        ),
        (
            "protect: len 0",
            &|| gm(g.gmap_protect_range(G1, 0)),
            G(Misaligned),
        ),
        (
            "protect: past the limit",
            &|| gm(g.gmap_protect_range(0x7fff_f000, 0x2000)),
            G(OutOfRange),
        ),
        (
            "protect: gaddr + len overflows",
            &|| gm(g1.gmap_protect_range(top, 2 * s)),
            G(OutOfRange),
        ),
        (
            "protect: partly unmapped",
            &|| gm(g.gmap_protect_range(G1 + s, 2 * s)),
            G(NotMapped),
        ),
        (
            "protect: unmapped",
            &|| gm(g.gmap_protect_range(0x200_0000, 0x1000)),
            G(NotMapped),
        ),
        // entry lookups beyond the limit find nothing (the walk used to wrap)
        (
            "segment_entry_addr: past the limit",
            &|| {
                g.segment_entry_addr(G1 + (1 << 31))
                    .map_or(Err(Refused::Absent), |_| Ok(()))
            },
            Refused::Absent,
        ),
        (
            "entry_addr: level above the top",
            &|| {
                g.entry_addr(G1, Level::Region3)
                    .map_or(Err(Refused::Absent), |_| Ok(()))
            },
            Refused::Absent,
        ),
        // gmap tables
        (
            "alloc_table: gaddr unaligned",
            &|| tb(table::gmap_alloc_table(gid, Level::Segment, 1 << 20).map(|_| ())),
            T(GmapTableError::Misaligned),
        ),
        (
            "free_table: another owner",
            &|| tb(table::gmap_free_table(g_top, gid + 1000, Level::Segment)),
            T(GmapTableError::WrongOwner(gid)),
        ),
        (
            "free_table: another level",
            &|| tb(table::gmap_free_table(g_top, gid, Level::Region3)),
            T(GmapTableError::WrongLevel(Some(Level::Segment))),
        ),
        (
            "table_at: not a table's start",
            &|| tb(table::gmap_table_at(PhysAddr(g_top.phys().0 + 0x1000)).map(|_| ())),
            T(GmapTableError::Misaligned),
        ),
        (
            "table_at: a host page table",
            &|| tb(table::gmap_table_at(host_pt).map(|_| ())),
            T(GmapTableError::NotGmapTable(Some(
                mm::page::PageType::PageTable,
            ))),
        ),
        (
            "entry_gaddr: a host page table",
            &|| tb(table::gmap_table_entry_gaddr(phys_to_virt(host_pt)).map(|_| ())),
            T(GmapTableError::NotGmapTable(Some(
                mm::page::PageType::PageTable,
            ))),
        ),
        (
            "entry_gaddr: unaligned",
            &|| tb(table::gmap_table_entry_gaddr(VirtAddr(g1_top_entry.0 + 3)).map(|_| ())),
            T(GmapTableError::Misaligned),
        ),
        (
            "entry_gaddr: beyond memory",
            &|| tb(table::gmap_table_entry_gaddr(VirtAddr(1 << 50)).map(|_| ())),
            T(GmapTableError::NotInMemmap),
        ),
        (
            "segment_gaddr: a region-first entry",
            &|| tb(table::gmap_segment_gaddr(g1_top_entry).map(|_| ())),
            T(GmapTableError::NotSegmentTable(Level::Region1)),
        ),
        // the host
        (
            "host populate: past the limit",
            &|| sp(h.lock().populate(hl, true).map(|_| ())),
            S(SpaceError::OutOfRange),
        ),
        (
            "host populate_range: len unaligned",
            &|| sp(h.lock().populate_range(VM_BASE + 16 * s, 0x1800)),
            S(SpaceError::Misaligned),
        ),
        (
            "host populate_range: unaligned",
            &|| sp(h.lock().populate_range(VM_BASE + 16 * s + 0x800, 0x1000)),
            S(SpaceError::Misaligned),
        ),
        (
            "host populate_range: len 0",
            &|| sp(h.lock().populate_range(VM_BASE + 16 * s, 0)),
            S(SpaceError::Misaligned),
        ),
        (
            "host populate_range: partly past the limit",
            &|| sp(h.lock().populate_range(hl - 0x1000, 0x2000)),
            S(SpaceError::OutOfRange),
        ),
        (
            "host unmap_range: unaligned",
            &|| hs(h.lock().unmap_range(VM_BASE + 0x800, 0x1000).map(|_| ())),
            H(HostError::Space(SpaceError::Misaligned)),
        ),
        (
            "host unmap_range: len 0",
            &|| hs(h.lock().unmap_range(VM_BASE, 0).map(|_| ())),
            H(HostError::Space(SpaceError::Misaligned)),
        ),
        (
            "host unmap_range: past the limit",
            &|| hs(h.lock().unmap_range(hl - 0x1000, 0x2000).map(|_| ())),
            H(HostError::Space(SpaceError::OutOfRange)),
        ),
        (
            "host protect: unmapped page",
            &|| sp(h.lock().protect(VM_BASE + 0x1000, Prot::ReadOnly)),
            S(SpaceError::NotMapped),
        ),
        (
            "host protect: unaligned",
            &|| sp(h.lock().protect(VM_BASE + 0x10, Prot::ReadOnly)),
            S(SpaceError::Misaligned),
        ),
        (
            "host protect: past the limit",
            &|| sp(h.lock().protect(hl, Prot::ReadOnly)),
            S(SpaceError::OutOfRange),
        ),
        (
            "host unpopulate: not populated",
            &|| hs(h.lock().unpopulate(VM_BASE + 0x1000)),
            H(HostError::Space(SpaceError::NotMapped)),
        ),
        (
            "host unpopulate: unaligned",
            &|| hs(h.lock().unpopulate(VM_BASE + 0x10)),
            H(HostError::Space(SpaceError::Misaligned)),
        ),
        (
            "host unpopulate: past the limit",
            &|| hs(h.lock().unpopulate(hl)),
            H(HostError::Space(SpaceError::OutOfRange)),
        ),
        (
            "host remap: unaligned",
            &|| sp(h.lock().remap(VM_BASE + 0x10).map(|_| ())),
            S(SpaceError::Misaligned),
        ),
        (
            "host remap: not populated",
            &|| sp(h.lock().remap(VM_BASE + 0x1000).map(|_| ())),
            S(SpaceError::NotMapped),
        ),
        (
            "host remap: past the limit",
            &|| sp(h.lock().remap(hl).map(|_| ())),
            S(SpaceError::OutOfRange),
        ),
        (
            "host populate: unaligned",
            &|| sp(h.lock().populate(VM_BASE + 0x10, true).map(|_| ())),
            S(SpaceError::Misaligned),
        ),
        (
            "HostMm::new: limit 0",
            &|| sp(HostMm::new(0).map(|_| ())),
            S(SpaceError::OutOfRange),
        ),
        (
            "HostMm::new: limit not a page multiple",
            &|| sp(HostMm::new(0x1800).map(|_| ())),
            S(SpaceError::Misaligned),
        ),
        // last: before the fix it was an overflow panic
        (
            "host populate_range: vmaddr + len overflows",
            &|| sp(h.lock().populate_range(!0xfff, 0x2000)),
            S(SpaceError::OutOfRange),
        ),
    ];
    let mut bad = 0;
    for (name, call, want) in rows {
        let before = (snapshot(&h, &g, &watch), snapshot(&h, &g1, &[top]));
        let r = call();
        let after = (snapshot(&h, &g, &watch), snapshot(&h, &g1, &[top]));
        if r != Err(*want) {
            crate::ktest::report_failure(
                file!(),
                line!(),
                format_args!("{name}: expected Err({want:?}), got {r:?}"),
            );
            bad += 1;
        }
        if after != before {
            crate::ktest::report_failure(
                file!(),
                line!(),
                format_args!("{name}: changed the state\nbefore {before:?}\nafter  {after:?}"),
            );
            bad += 1;
        }
    }
    crate::ktest::diag(format_args!(
        "{} bad inputs refused, {} mismatches",
        rows.len(),
        bad
    ));
    kassert_eq!(bad, 0);
    // Not bad input, and not errors: linking a linked segment and
    // protecting a protected page again change nothing.
    let before = snapshot(&h, &g, &watch);
    kassert_eq!(g.gmap_link(G1, VM_BASE), Ok(()));
    kassert_eq!(snapshot(&h, &g, &watch), before);
    kassert_eq!(g.gmap_protect_range(G1, 0x1000), Ok(()));
    let before = snapshot(&h, &g, &watch);
    kassert_eq!(g.gmap_protect_range(G1, 0x1000), Ok(()));
    kassert_eq!(snapshot(&h, &g, &watch), before);
    kassert_eq!(gmap_remove(g1), Ok(()));
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

/// A gmap region-first gmap with one linked segment (four tables), and the
/// page of its segment table with a reference taken, so the allocator
/// refuses to free it.
fn gmap_with_a_pinned_table(
    h: &Arc<Mutex<HostMm>>,
) -> Result<(Gmap, &'static table::GmapTableDesc), Outcome> {
    let g = gmap(h, u64::MAX)?;
    let ga = 0x7ff0_0000_0000_0000u64;
    kassert_ok(g.gmap_map_segment(VM_BASE, ga, SEGMENT_SIZE))?;
    kassert_ok(g.gmap_fault(ga, Access::Write).map(|_| ()))?;
    kassert_eq!(g.table_pages(), 16);
    let ea = g.entry_addr(ga, Level::Segment).ok_or(Outcome::Fail)?;
    let t = table::gmap_table_at(PhysAddr(ea.0 & !0x3fff)).map_err(|_| Outcome::Fail)?;
    table::gmap_table_page(t).page_ref_inc();
    Ok((g, t))
}

/// `gmap_remove` tears down itself and names what it could not free: the
/// other tables go back, the refused one stays a gmap table (freed by hand
/// once the reference is dropped).
fn gmap_remove_names_the_tables_it_could_not_free() -> KResult {
    // Frees below are refused on purpose.
    crate::mm::expect_refusals(true);
    mm::drain_pcp();
    let (free, gt) = (mm::nr_free_pages(), table::nr_gmap_table_pages());
    let h = host()?;
    let (g, t) = gmap_with_a_pinned_table(&h)?;
    let id = g.id();
    let bugs = crate::bug::nr_reports();
    kassert_eq!(gmap_remove(g), Err(GmapError::FreeRefused(1)));
    kassert_eq!(table::nr_gmap_table_pages(), gt + 4);
    kassert_eq!(crate::bug::nr_reports(), bugs);
    let page = table::gmap_table_page(t);
    kassert!(table::page_gmap_table(page).is_ok());
    page.page_ref_dec();
    kassert_eq!(table::gmap_free_table(t, id, Level::Segment), Ok(()));
    kassert_eq!(table::nr_gmap_table_pages(), gt);
    drop(h);
    mm::drain_pcp();
    kassert_eq!(mm::nr_free_pages(), free);
    Ok(())
}

/// Dropping a gmap whose table the allocator refuses has no caller to
/// tell: it prints a BUG line and counts it (the runner fails the suite on
/// an unexpected one; this test expects it).
fn gmap_drop_reports_a_refused_free_loudly() -> KResult {
    // Frees below are refused on purpose.
    crate::mm::expect_refusals(true);
    let h = host()?;
    let gt = table::nr_gmap_table_pages();
    let (g, t) = gmap_with_a_pinned_table(&h)?;
    let id = g.id();
    let bugs = crate::bug::nr_reports();
    kassert_eq!(crate::bug::expect_reports(1), 0);
    drop(g);
    let still_expected = crate::bug::expect_reports(0);
    kassert!(still_expected == 0, "Drop did not report the refused free");
    kassert_eq!(crate::bug::nr_reports(), bugs);
    kassert_eq!(table::nr_gmap_table_pages(), gt + 4);
    table::gmap_table_page(t).page_ref_dec();
    kassert_eq!(table::gmap_free_table(t, id, Level::Segment), Ok(()));
    kassert_eq!(table::nr_gmap_table_pages(), gt);
    drop(h);
    Ok(())
}

/// `HostMm::unmap_range` finishes the unmap and frees every frame it can,
/// then reports the ones the allocator refused; the host keeps those and
/// frees them when dropped. A drop that is still refused prints a BUG line.
fn host_unmap_range_reports_a_refused_free() -> KResult {
    // Frees below are refused on purpose.
    crate::mm::expect_refusals(true);
    mm::drain_pcp();
    let free = mm::nr_free_pages();
    let h = host()?;
    kassert_eq!(h.lock().populate_range(VM_BASE, 3 * 0x1000), Ok(()));
    let pinned = h.lock().frame(VM_BASE + 0x1000).map(|p| p.page());
    let pinned = pinned.ok_or(Outcome::Fail)?;
    pinned.page_ref_inc();
    kassert_eq!(
        h.lock().unmap_range(VM_BASE, 3 * 0x1000),
        Err(super::host::HostError::FreeRefused {
            frames: 1,
            unmapped: 3
        })
    );
    {
        let hm = h.lock();
        kassert_eq!(hm.space().check().map(|c| c.mapped_pages), Ok(0));
        kassert_eq!((hm.nr_frames(), hm.nr_refused_frames()), (0, 1));
    }
    pinned.page_ref_dec();
    drop(h);
    mm::drain_pcp();
    kassert_eq!(mm::nr_free_pages(), free);
    // Still refused when the host goes: a BUG line, counted unless expected.
    let h = host()?;
    kassert_eq!(h.lock().populate(VM_BASE, true).map(|_| ()), Ok(()));
    let pfn = h
        .lock()
        .frame(VM_BASE)
        .map(|p| p.pfn())
        .ok_or(Outcome::Fail)?;
    let page = mm::pfn_to_page(pfn).ok_or(Outcome::Fail)?;
    page.page_ref_inc();
    let bugs = crate::bug::nr_reports();
    kassert_eq!(crate::bug::expect_reports(1), 0);
    drop(h);
    let still_expected = crate::bug::expect_reports(0);
    kassert!(still_expected == 0, "HostMm::drop did not report");
    kassert_eq!(crate::bug::nr_reports(), bugs);
    page.page_ref_dec();
    // SAFETY: the frame the dropped host could not free; nothing maps it.
    let p = unsafe { mm::Pages::from_raw(pfn, 0) };
    kassert!(mm::free_pages(p).is_ok());
    mm::drain_pcp();
    kassert_eq!(mm::nr_free_pages(), free);
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
fn protect_range_failure_changes_nothing() -> KResult {
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
    // 2 + 255 + 3 frames, a host page table, a gmap segment table.
    kassert!(n > 260, "only {} allocations", n - 1);
    crate::ktest::diag(format_args!(
        "gmap_protect_range: {} injected failures changed nothing",
        n - 1
    ));
    Ok(())
}

/// `gaddr + len` of a range ending at (or past) the top of a region-first
/// gmap: refused when it overflows, nothing changed; the last page itself
/// can be protected.
fn protect_range_at_the_top_of_the_address_space() -> KResult {
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

fn teardown_returns_every_page() -> KResult {
    mm::drain_pcp();
    let (free, pt, gt) = (
        mm::nr_free_pages(),
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
            mm::nr_free_pages(),
            ptdesc::nr_pagetable(),
            table::nr_gmap_table_pages()
        ),
        (free, pt, gt)
    );
    Ok(())
}

ktest_suite!(
    GMAP,
    "gmap",
    [
        descriptor_is_distinct_and_gaddr_cleared_before_free,
        table_free_checks_owner_and_level,
        hardware_translation_for_each_asce_type,
        host_changes_are_seen_by_every_linked_gmap,
        freeing_a_host_pte_table_unlinks_and_fault_relinks,
        host_aliasing_within_a_gmap_is_refused,
        segment_gaddr_comes_from_the_gmap_table_descriptor,
        entry_gaddr_at_every_level_of_each_asce_type,
        notifier_sees_exact_range_once_before_the_change,
        notifier_at_the_top_of_the_address_space,
        bad_input_changes_nothing,
        teardown_returns_every_page,
        gmap_remove_names_the_tables_it_could_not_free,
        gmap_drop_reports_a_refused_free_loudly,
        host_unmap_range_reports_a_refused_free,
        protect_range_failure_changes_nothing,
        protect_range_at_the_top_of_the_address_space,
    ]
);

// The guest program: sum r3 doublewords from r2 into r4, then SVC 1.
// Position-independent (relative branch only), copied into guest memory.
core::arch::global_asm!(
    ".section .rodata.guest_sum,\"a\"",
    ".balign 8",
    ".globl zdat_guest_sum_start",
    "zdat_guest_sum_start:",
    "    lghi %r4,0",
    "2:  ag %r4,0(%r2)",
    "    la %r2,8(%r2)",
    "    brctg %r3,2b",
    "    svc 1",
    "    .short 0x0000",
    ".globl zdat_guest_sum_end",
    "zdat_guest_sum_end:",
);

extern "C" {
    static zdat_guest_sum_start: u8;
    static zdat_guest_sum_end: u8;
}

fn guest_code() -> &'static [u8] {
    // SAFETY: the two symbols bracket the guest program in .rodata.
    unsafe {
        let s = core::ptr::addr_of!(zdat_guest_sum_start);
        let e = core::ptr::addr_of!(zdat_guest_sum_end);
        core::slice::from_raw_parts(s, e as usize - s as usize)
    }
}

const CODE_GADDR: u64 = 0x1000;
const ARRAY_GADDR: u64 = 0x10_0000;

/// A host and gmap with the guest program at CODE_GADDR and `segs`
/// segments of array at ARRAY_GADDR; the last segment is left unpopulated
/// (zero pages, each a page fault). Returns the expected sum.
fn guest_setup(
    segs: u64,
    limit: u64,
    map_segs: u64,
) -> Result<(Arc<Mutex<HostMm>>, Gmap, u64), Outcome> {
    let h = host()?;
    let g = gmap(&h, limit)?;
    kassert_ok(g.gmap_map_segment(VM_BASE, 0, map_segs * SEGMENT_SIZE))?;
    let mut hm = h.lock();
    kassert_ok(hm.populate(VM_BASE + CODE_GADDR, true).map(|_| ()))?;
    let code = guest_code();
    if let Some(f) = hm.frame(VM_BASE + CODE_GADDR) {
        f.as_mut_slice()[..code.len()].copy_from_slice(code);
    }
    let mut sum = 0u64;
    for s in 0..segs - 1 {
        for p in 0..256u64 {
            let va = VM_BASE + ARRAY_GADDR + s * SEGMENT_SIZE + p * 0x1000;
            kassert_ok(hm.populate(va, true).map(|_| ()))?;
            if let Some(f) = hm.frame(va) {
                for (i, w) in f.as_mut_slice().chunks_exact_mut(8).enumerate() {
                    let v = s * 1_000_000 + p * 1000 + i as u64;
                    w.copy_from_slice(&v.to_be_bytes());
                    sum = sum.wrapping_add(v);
                }
            }
        }
    }
    drop(hm);
    Ok((h, g, sum))
}

fn kassert_ok<E: core::fmt::Debug>(r: Result<(), E>) -> KResult {
    match r {
        Ok(()) => Ok(()),
        Err(e) => kfail!("{e:?}"),
    }
}

fn guest_sums_an_array_over_lazily_linked_segments() -> KResult {
    use super::guest::Vcpu;
    let segs = 4u64;
    let (h, g, sum) = guest_setup(segs, (1 << 31) - 1, segs + 1)?;
    let mut cpu = Vcpu::new(&g, CODE_GADDR);
    cpu.ctx.gprs[2] = ARRAY_GADDR;
    cpu.ctx.gprs[3] = segs * SEGMENT_SIZE / 8;
    let r = cpu.run(&g, 10_000);
    kassert_eq!(r, Ok(1));
    kassert_eq!(cpu.ctx.gprs[4], sum);
    // One segment fault for the code, one per populated array segment, and
    // one per page of the segment the host had not populated (its first
    // fault also links the segment).
    kassert_eq!(cpu.faults, 1 + (segs - 1) + 256);
    kassert_eq!(cpu.exits, cpu.faults + 1);
    crate::ktest::diag(format_args!(
        "guest summed {} doublewords: {} exits, {} faults resolved by gmap_fault",
        segs * SEGMENT_SIZE / 8,
        cpu.exits,
        cpu.faults
    ));
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

fn guest_past_its_limit_is_stopped_cleanly() -> KResult {
    use super::guest::{GuestStop, Vcpu};
    // The gmap ends 1 MiB into the array: the guest's loop walks past it.
    let limit = ARRAY_GADDR + SEGMENT_SIZE - 1;
    let (h, g, _) = guest_setup(2, limit, 2)?;
    let mut cpu = Vcpu::new(&g, CODE_GADDR);
    cpu.ctx.gprs[2] = ARRAY_GADDR;
    cpu.ctx.gprs[3] = 2 * SEGMENT_SIZE / 8;
    kassert_eq!(
        cpu.run(&g, 10_000),
        Err(GuestStop::BeyondLimit(ARRAY_GADDR + SEGMENT_SIZE))
    );
    // A guest address no segment maps: a clear reason too.
    let mut cpu = Vcpu::new(&g, CODE_GADDR);
    cpu.ctx.gprs[2] = 0x80_0000 - 8;
    cpu.ctx.gprs[3] = 1;
    let r = cpu.run(&g, 10);
    kassert_matches!(
        r,
        Err(GuestStop::NotMapped(_)) | Err(GuestStop::BeyondLimit(_))
    );
    // A guest that executes an invalid instruction stops with its code.
    let mut cpu = Vcpu::new(&g, CODE_GADDR + guest_code().len() as u64 - 2);
    kassert_eq!(
        cpu.run(&g, 10),
        Err(GuestStop::Program(
            code::OPERATION,
            CODE_GADDR + guest_code().len() as u64
        ))
    );
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

ktest_suite!(
    GUEST,
    "gmap_guest",
    [
        guest_sums_an_array_over_lazily_linked_segments,
        guest_past_its_limit_is_stopped_cleanly
    ]
);
