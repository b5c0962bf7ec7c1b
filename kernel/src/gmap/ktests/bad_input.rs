//! Bad input changes nothing: every public gmap, gmap-table and host
//! operation, given input it must refuse, returns its error and leaves
//! the state snapshot as it was.

use super::{gmap, host, snapshot, HOST_LIMIT, VM_BASE};
use crate::dat::entry::{Level, Prot, SEGMENT_SIZE};
use crate::gmap::table::{self, GmapTableError};
use crate::gmap::{gmap_remove, Access, GmapError, HostMm};
use crate::kassert_eq;
use crate::ktest::{KResult, Outcome};
use crate::mm;
use crate::mm::addr::PhysAddr;

/// A refused call's error, whatever its subsystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    Gmap(GmapError),
    Host(crate::gmap::host::HostError),
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
pub(super) fn bad_input_changes_nothing() -> KResult {
    use crate::dat::space::SpaceError;
    use crate::dat::table::phys_to_virt;
    use crate::gmap::host::HostError;
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
    let g_top = table::gmap_table_at(g.asce().origin()).map_err(|_| Outcome::Fail)?;
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
