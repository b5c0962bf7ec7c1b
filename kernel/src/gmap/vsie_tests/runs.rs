//! A problem-state guest-2 running on shadow gmaps: lazily filled tables
//! of every ASCE type, guest-1 remapping between runs, the top table lost
//! and rebuilt, guest-2's own protection reflected, and a guest-2 store
//! into a page holding one of its tables.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::{world, G2Tables, LazyGuest1, World, G1_CODE, G1_DATA};
use crate::arch::pgm::{code, Teid, TeidAccess};
use crate::dat::entry::{Level, Prot, Pte, SegmentEntry, SEGMENT_SIZE};
use crate::dat::table::phys_to_virt;
use crate::gmap::guest::{guest_psw, Vcpu};
use crate::gmap::shadow::gmap_shadow;
use crate::gmap::vsie::{run_nested, NestedStats, NestedStop};
use crate::ktest::{KResult, Outcome};
use crate::mm::addr::PhysAddr;
use crate::mm::gtdesc::{self, GMAP_PTE_LEVEL};
use crate::{kassert, kassert_eq, kassert_matches, kfail};

// Guest-2: store r5 at 0(r2), load r4 from 0(r6), SVC 1.
core::arch::global_asm!(
    ".section .rodata.guest2_st,\"a\"",
    ".balign 8",
    ".globl zdat_guest2_st_start",
    "zdat_guest2_st_start:",
    "    stg %r5,0(%r2)",
    "    lg %r4,0(%r6)",
    "    svc 1",
    ".globl zdat_guest2_st_end",
    "zdat_guest2_st_end:",
);

extern "C" {
    static zdat_guest_sum_start: u8;
    static zdat_guest_sum_end: u8;
    static zdat_guest2_st_start: u8;
    static zdat_guest2_st_end: u8;
}

fn sum_code() -> &'static [u8] {
    // SAFETY: the two symbols bracket the guest program in .rodata
    // (gmap::ktests::guest_runs).
    unsafe {
        let s = core::ptr::addr_of!(zdat_guest_sum_start);
        let e = core::ptr::addr_of!(zdat_guest_sum_end);
        core::slice::from_raw_parts(s, e as usize - s as usize)
    }
}

fn st_code() -> &'static [u8] {
    // SAFETY: as above, for the store-then-load program.
    unsafe {
        let s = core::ptr::addr_of!(zdat_guest2_st_start);
        let e = core::ptr::addr_of!(zdat_guest2_st_end);
        core::slice::from_raw_parts(s, e as usize - s as usize)
    }
}

/// Guest-1 copies a guest-2 program into its page `G1_CODE`.
fn load_code(w: &World, code: &[u8]) -> KResult {
    for (i, c) in code.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        w.w(G1_CODE + i as u64 * 8, u64::from_be_bytes(b))?;
    }
    Ok(())
}

/// A nested run's outcome and what guest-1 saw.
struct Ran {
    r: Result<u16, NestedStop>,
    vcpu: Vcpu,
    stats: NestedStats,
    seen: Vec<(u16, u64)>,
}

fn run(
    w: &World,
    t: &mut G2Tables,
    pages: &BTreeMap<u64, (u64, Prot)>,
    entry: u64,
    regs: &[(usize, u64)],
) -> Result<Ran, Outcome> {
    let asce = t.asce();
    run_with(w, t, pages, entry, regs, asce, 0)
}

/// `run` with another ASCE or EDAT level than the tables' own.
fn run_with(
    w: &World,
    t: &mut G2Tables,
    pages: &BTreeMap<u64, (u64, Prot)>,
    entry: u64,
    regs: &[(usize, u64)],
    asce: crate::dat::entry::Asce,
    edat: u8,
) -> Result<Ran, Outcome> {
    let mut vcpu = Vcpu::new(&w.g, entry);
    vcpu.ctx.psw = guest_psw(entry);
    for &(r, v) in regs {
        vcpu.ctx.gprs[r] = v;
    }
    let mut g1 = LazyGuest1 {
        w,
        t,
        pages: pages.clone(),
        seen: Vec::new(),
        failed: false,
    };
    let mut stats = NestedStats::default();
    let r = run_nested(&mut vcpu, &w.g, asce, edat, &mut g1, 200, &mut stats);
    if g1.failed {
        return kfail!("guest-1's handler could not map a page");
    }
    Ok(Ran {
        r,
        vcpu,
        stats,
        seen: g1.seen,
    })
}

/// Guest-1 fills `n` doublewords at guest-1 `g1` with `f(i)`.
fn fill(w: &World, g1: u64, n: u64, f: impl Fn(u64) -> u64) -> KResult {
    for i in 0..n {
        w.w(g1 + i * 8, f(i))?;
    }
    Ok(())
}

/// `gmap_shadow` hands back the shadow while it is valid (same ASCE, same
/// EDAT level), another for another ASCE or level, refuses what is not
/// modelled; the shadow's tables are gmap tables marked shadow whose
/// gaddr is the guest-1 address of the guest-2 table each shadows.
pub(super) fn shadow_is_reused_while_valid_and_its_tables_say_what_they_shadow() -> KResult {
    let w = world()?;
    let mut t = G2Tables::new(&w, Level::Region3)?;
    let asce = t.asce();
    let s1 = w.shadow(asce)?;
    let s2 = w.shadow(asce)?;
    kassert_eq!(s1.id(), s2.id());
    let e1 = gmap_shadow(&w.g, asce, 1).or_else(|e| kfail!("{e:?}"))?;
    kassert_ne_ids(s1.id(), e1.id())?;
    let tl = gmap_shadow(&w.g, asce.with_tl(1), 0).or_else(|e| kfail!("{e:?}"))?;
    kassert_ne_ids(s1.id(), tl.id())?;
    kassert_eq!(
        gmap_shadow(&w.g, asce, 2).map(|s| s.id()),
        Err(crate::gmap::shadow::ShadowError::Unsupported)
    );
    // The top: a shadow gmap table of guest-2's top level naming guest-2's
    // top table.
    let top = crate::gmap::table::gmap_table_at(s1.asce().origin()).or_else(|e| kfail!("{e:?}"))?;
    kassert!(top.is_shadow());
    kassert_eq!(top.owner(), s1.id());
    kassert_eq!(top.raw_level(), Level::Region3 as u64);
    kassert_eq!(top.gaddr(), t.top_g1);
    // One page shadowed: each level's shadow table names its guest table.
    let g2 = (3u64 << 31) | (5 << 20) | 0x7000;
    t.map(&w, g2, G1_DATA, Prot::ReadWrite)?;
    kassert_eq!(s1.shadow_fault(g2, false), Ok(()));
    let sgt_g1 = crate::dat::entry::RegionEntry::from_raw(
        w.r(t
            .entry_g1(&w, g2, Some(Level::Region3), false)?
            .unwrap_or(0))?,
    )
    .next_origin()
    .0;
    let pt_g1 = SegmentEntry::from_raw(
        w.r(t
            .entry_g1(&w, g2, Some(Level::Segment), false)?
            .unwrap_or(0))?,
    )
    .page_table()
    .0;
    // SAFETY: entries of the shadow's live tables (the handle keeps them).
    let r3e = crate::dat::entry::RegionEntry::from_raw(
        unsafe {
            crate::dat::table::entry(PhysAddr(
                s1.asce().origin().0 + Level::Region3.index(g2) as u64 * 8,
            ))
        }
        .load(core::sync::atomic::Ordering::Acquire),
    );
    kassert!(!r3e.is_invalid());
    let sgt = crate::gmap::table::gmap_table_at(r3e.next_origin()).or_else(|e| kfail!("{e:?}"))?;
    kassert!(sgt.is_shadow());
    kassert_eq!(
        (sgt.raw_level(), sgt.gaddr()),
        (Level::Segment as u64, sgt_g1)
    );
    // SAFETY: as above.
    let ste = SegmentEntry::from_raw(
        unsafe {
            crate::dat::table::entry(PhysAddr(
                r3e.next_origin().0 + Level::Segment.index(g2) as u64 * 8,
            ))
        }
        .load(core::sync::atomic::Ordering::Acquire),
    );
    kassert!(!ste.is_invalid());
    let page = crate::mm::virt_to_page(phys_to_virt(ste.page_table())).ok_or(Outcome::Fail)?;
    let pgt = gtdesc::page_gmap_table(page).or_else(|e| kfail!("{e:?}"))?;
    kassert!(pgt.is_shadow());
    kassert_eq!((pgt.raw_level(), pgt.gaddr()), (GMAP_PTE_LEVEL, pt_g1));
    kassert_eq!(gtdesc::gmap_table_page(pgt).head_order(), 0);
    // The shadow PTE maps the host frame of guest-1 page G1_DATA.
    let frame = w.h.lock().space().lookup(w.vm(G1_DATA)).map(|(f, _)| f);
    kassert_eq!(Some(s1.pte(g2).frame()), frame);
    kassert_eq!(s1.check(), Ok(1));
    kassert_eq!(s1.table_counts(), (3, 4 + 4 + 1));
    Ok(())
}

fn kassert_ne_ids(a: u64, b: u64) -> KResult {
    kassert!(a != b, "one shadow ({a}) for two different keys");
    Ok(())
}

/// Guest-2 addresses for each ASCE type: code, and a 3-page array whose
/// second page starts a segment.
fn layout(top: Level) -> (u64, u64) {
    let hi = match top {
        Level::Segment => 0x4000_0000,
        Level::Region3 => 0x300_0000_0000,
        Level::Region2 => 0x3_0000_0000_0000,
        Level::Region1 => 0x3000_0000_0000_0000,
    };
    (hi + 0x1_0000, hi + 0x300_0000 - 0x1000)
}

fn sum_pages(code: u64, data: u64) -> BTreeMap<u64, (u64, Prot)> {
    let mut m = BTreeMap::new();
    m.insert(code, (G1_CODE, Prot::ReadOnly));
    for i in 0..3 {
        m.insert(data + i * 0x1000, (G1_DATA + i * 0x1000, Prot::ReadWrite));
    }
    m
}

/// Guest-2 sums 1536 doublewords over tables guest-1 fills only when a
/// reflected translation exception asks, for a segment-table ASCE and each
/// region type: the sum is right, every page was reflected (at least
/// once: guest-1 maps it then), and the shadow's checker passes.
pub(super) fn guest2_sums_an_array_over_tables_guest1_fills_lazily() -> KResult {
    for top in [
        Level::Segment,
        Level::Region3,
        Level::Region2,
        Level::Region1,
    ] {
        let w = world()?;
        load_code(&w, sum_code())?;
        fill(&w, G1_DATA, 1536, |i| i + 1)?;
        let mut t = G2Tables::new(&w, top)?;
        let (code, data) = layout(top);
        let pages = sum_pages(code, data);
        let ran = run(&w, &mut t, &pages, code, &[(2, data), (3, 1536)])?;
        kassert_eq!(ran.r, Ok(1), "{top:?}: {:?}", ran.seen);
        kassert_eq!(ran.vcpu.ctx.gprs[4], 1536 * 1537 / 2, "{top:?}");
        // Each of the four pages: its tables were missing once.
        let pages_seen: Vec<u64> = ran.seen.iter().map(|s| s.1).collect();
        for p in pages.keys() {
            kassert!(pages_seen.contains(p), "{top:?}: {p:#x} never reflected");
        }
        kassert!(ran.stats.shadow_faults >= 4, "{top:?}: {:?}", ran.stats);
        if top == Level::Segment {
            // Guest-1's handler stores each new segment entry into the top
            // table, whose page the running shadow protected: the shadow
            // was removed under the run, which took a new one (Linux's
            // -EAGAIN from vsie's acquire_gmap_shadow).
            kassert!(ran.stats.reshadowed >= 1, "{:?}", ran.stats);
        }
        // Guest-1's stores into guest-2's page tables dropped the shadow
        // PTEs made before them; shadowed again, all four are there.
        let s = w.shadow(t.asce())?;
        for &p in pages.keys() {
            kassert_eq!(s.shadow_fault(p, false), Ok(()), "{top:?} {p:#x}");
        }
        kassert_eq!(s.check(), Ok(4), "{top:?}");
        kassert_matches!(w.g.check(), Ok(_));
        kassert_matches!(w.h.lock().space().check(), Ok(_));
    }
    Ok(())
}

/// Guest-1 points guest-2's first data page at another guest-1 page
/// between two runs: the second run sums the new values, resolved by the
/// shadow alone (guest-2's tables are complete: nothing is reflected).
pub(super) fn guest2_sees_guest1_remap_its_page_between_runs() -> KResult {
    let w = world()?;
    load_code(&w, sum_code())?;
    fill(&w, G1_DATA, 1536, |i| i + 1)?;
    let other = G1_DATA + 0x10_0000;
    fill(&w, other, 512, |_| 1000)?;
    let mut t = G2Tables::new(&w, Level::Region3)?;
    let (code, data) = layout(Level::Region3);
    let pages = sum_pages(code, data);
    let ran = run(&w, &mut t, &pages, code, &[(2, data), (3, 1536)])?;
    kassert_eq!(ran.r, Ok(1));
    kassert_eq!(ran.vcpu.ctx.gprs[4], 1536 * 1537 / 2);
    t.map(&w, data, other, Prot::ReadWrite)?;
    let ran = run(&w, &mut t, &pages, code, &[(2, data), (3, 1536)])?;
    kassert_eq!(ran.r, Ok(1));
    let want = 512 * 1000 + (513..=1536).sum::<u64>();
    kassert_eq!(ran.vcpu.ctx.gprs[4], want);
    kassert_eq!(ran.stats.reflected, 0, "{:?}", ran.seen);
    kassert!(ran.stats.shadow_faults >= 1);
    kassert_matches!(w.shadow(t.asce())?.check(), Ok(_));
    Ok(())
}

/// The host loses the page holding guest-2's top table (unmapped): the
/// whole shadow is dropped (removed); guest-1 rebuilds the table in place
/// and the next run makes a new shadow and sums right.
pub(super) fn top_table_page_lost_drops_the_shadow_and_it_is_rebuilt() -> KResult {
    let w = world()?;
    load_code(&w, sum_code())?;
    fill(&w, G1_DATA, 1536, |i| i + 1)?;
    let mut t = G2Tables::new(&w, Level::Region2)?;
    let (code, data) = layout(Level::Region2);
    let pages = sum_pages(code, data);
    let ran = run(&w, &mut t, &pages, code, &[(2, data), (3, 1536)])?;
    kassert_eq!(ran.r, Ok(1));
    let old = w.shadow(t.asce())?;
    kassert!(!old.is_removed());
    let un = w.h.lock().unmap_range(w.vm(t.top_g1), 0x1000);
    kassert_eq!(un, Ok(1));
    kassert!(
        old.is_removed(),
        "the top table's page changed, the shadow stayed"
    );
    kassert_eq!(old.check(), Ok(0));
    kassert_eq!(old.table_counts().0, 1);
    t.clear_top(&w)?;
    let ran = run(&w, &mut t, &pages, code, &[(2, data), (3, 1536)])?;
    kassert_eq!(ran.r, Ok(1));
    kassert_eq!(ran.vcpu.ctx.gprs[4], 1536 * 1537 / 2);
    let new = w.shadow(t.asce())?;
    kassert!(new.id() != old.id());
    for &p in pages.keys() {
        kassert_eq!(new.shadow_fault(p, false), Ok(()));
    }
    kassert_eq!(new.check(), Ok(4));
    Ok(())
}

/// A guest-2 store to a page guest-2 maps read-only (in its PTE, then in
/// its segment entry) is reflected to guest-1 as a protection exception
/// with guest-2's TEID; the guest-1 page is unchanged.
pub(super) fn guest2_protection_is_reflected_to_guest1() -> KResult {
    let w = world()?;
    load_code(&w, st_code())?;
    w.w(G1_DATA, 0x1234)?;
    let mut t = G2Tables::new(&w, Level::Segment)?;
    let (code, data) = layout(Level::Segment);
    let mut pages = BTreeMap::new();
    pages.insert(code, (G1_CODE, Prot::ReadOnly));
    pages.insert(data, (G1_DATA, Prot::ReadOnly));
    let regs = [(2, data), (5, 0x5555), (6, data)];
    let ran = run(&w, &mut t, &pages, code, &regs)?;
    let Err(NestedStop::Reflected(c, teid)) = ran.r else {
        return kfail!("expected a reflected protection exception: {:?}", ran.r);
    };
    kassert_eq!(c, code::PROTECTION);
    kassert_eq!(Teid(teid).address(), data);
    // The DAT-protection TEID format (bit 61: the address is valid), not
    // the translation exit's, though the exit was a translation exception.
    kassert_eq!(teid & 0x4, 0x4, "{teid:#x}");
    if crate::arch::s390x::facility::has_esop1() {
        kassert_eq!(Teid(teid).access(), TeidAccess::Store);
    }
    // Rewound to the store, as a resumed guest-2 would run it again.
    kassert_eq!(ran.vcpu.ctx.psw.addr, code);
    kassert_eq!(w.r(G1_DATA)?, 0x1234);
    // The same through guest-2's segment protection (PTE writable now).
    t.map(&w, data, G1_DATA, Prot::ReadWrite)?;
    let Some(pt) = t.entry_g1(&w, data, Some(Level::Segment), false)? else {
        return kfail!("no segment entry");
    };
    let ste = SegmentEntry::from_raw(w.r(pt)?);
    let prot = SegmentEntry::table(ste.page_table(), true).or_else(|e| kfail!("{e:?}"))?;
    w.w(pt, prot.raw())?;
    let ran = run(&w, &mut t, &pages, code, &regs)?;
    kassert_matches!(ran.r, Err(NestedStop::Reflected(code::PROTECTION, _)));
    kassert_eq!(w.r(G1_DATA)?, 0x1234);
    Ok(())
}

/// Guest-2 maps the guest-1 page holding the PTE table of another of its
/// segments writable and stores into it (an unused entry): the store
/// lifts the host protection (the shadow of that table goes), then a load
/// through that segment shadows it again, which protects the page again
/// and takes away the writable shadow PTE of the store's page.
pub(super) fn guest2_store_to_its_own_table_page_lifts_the_protection() -> KResult {
    let w = world()?;
    load_code(&w, st_code())?;
    let mut t = G2Tables::new(&w, Level::Segment)?;
    let (code, _) = layout(Level::Segment);
    // Segment B's page (its PTE table is the one stored into); V maps
    // that PTE table's page.
    let b = 0x2000_0000u64 + 0x3000;
    w.w(G1_DATA + 0x3000, 0xb0b)?;
    t.map(&w, b, G1_DATA + 0x3000, Prot::ReadWrite)?;
    let Some(b_pte) = t.entry_g1(&w, b, None, false)? else {
        return kfail!("no PTE for B");
    };
    let pt_page = b_pte & !0xfff;
    // The code's and V's page tables in other pages: a store whose own
    // instruction fetch goes through the page it stores into would lift
    // and restore that page's protection forever (guest-2 self-mapping
    // its own translation path; Linux's vSIE would loop the same way).
    t.next_pt = (t.next_pt | 0xfff) + 1;
    let v = 0x3000_0000u64;
    // The last entry of B's table: not B's, stays empty.
    let target = (b_pte & !0x7ff) + 255 * 8;
    let mut pages = BTreeMap::new();
    pages.insert(code, (G1_CODE, Prot::ReadOnly));
    pages.insert(v, (pt_page, Prot::ReadWrite));
    // Shadow B first: its PTE table's page becomes protected.
    let s = w.shadow(t.asce())?;
    kassert_eq!(s.shadow_fault(b, false), Ok(()));
    let vm = w.vm(pt_page);
    kassert_eq!(
        w.h.lock().space().lookup(vm).map(|x| x.1),
        Some(Prot::ReadOnly)
    );
    let regs = [(2, v + (target & 0xfff)), (5, Pte::empty().raw()), (6, b)];
    let ran = run(&w, &mut t, &pages, code, &regs)?;
    kassert_eq!(ran.r, Ok(1), "{:?}", ran.seen);
    kassert_eq!(ran.vcpu.ctx.gprs[4], 0xb0b);
    kassert_eq!(w.r(target)?, Pte::empty().raw());
    // B's table is shadowed again (the load), so its page is read-only
    // again and V's shadow PTE cannot be writable. (The shadow made
    // before the run went when guest-1 stored V's segment entry into
    // guest-2's top table: the run used a new one.)
    kassert!(s.is_removed());
    let s = w.shadow(t.asce())?;
    kassert!(!s.pte(b).is_invalid());
    kassert_eq!(
        w.h.lock().space().lookup(vm).map(|x| x.1),
        Some(Prot::ReadOnly)
    );
    let vp = s.pte(v);
    kassert!(
        vp.is_invalid() || vp.is_protected(),
        "V stays writable: {vp:?}"
    );
    kassert_matches!(s.check(), Ok(_));
    let _ = SEGMENT_SIZE;
    Ok(())
}

/// A guest-2 in real space (its ASCE designates no table: guest-2
/// addresses are guest-1 addresses) runs on fake shadow tables: nothing is
/// reflected, the sum is right, every real-space ASCE gets the one shadow,
/// and an address beyond guest-1 memory is an addressing exception.
pub(super) fn real_space_guest2_runs_on_fake_tables_of_one_shadow() -> KResult {
    let w = world()?;
    load_code(&w, sum_code())?;
    fill(&w, G1_DATA, 1536, |i| 2 * i)?;
    let mut t = G2Tables::new(&w, Level::Segment)?;
    let real = crate::dat::entry::Asce::from_raw(0x20 | 0x3);
    kassert!(real.is_real_space());
    let other = crate::dat::entry::Asce::from_raw(0x20 | 0x7000_0000 | 0xc);
    let s = w.shadow(real)?;
    kassert_eq!(w.shadow(other)?.id(), s.id());
    kassert!(w.shadow(t.asce())?.id() != s.id());
    let ran = run_with(
        &w,
        &mut t,
        &BTreeMap::new(),
        G1_CODE,
        &[(2, G1_DATA), (3, 1536)],
        real,
        0,
    )?;
    kassert_eq!(ran.r, Ok(1), "{:?}", ran.seen);
    kassert_eq!(ran.vcpu.ctx.gprs[4], 1536 * 1535);
    kassert_eq!(ran.stats.reflected, 0);
    kassert_eq!(s.check(), Ok(4));
    // Fake tables: shadow, fake, their gaddr the guest-1 address they map.
    let top = crate::gmap::table::gmap_table_at(s.asce().origin()).or_else(|e| kfail!("{e:?}"))?;
    kassert_eq!(top.flags(), gtdesc::GT_SHADOW | gtdesc::GT_FAKE);
    kassert_eq!(s.asce().level(), Level::Region1);
    kassert_eq!(
        s.shadow_fault(super::G1_SIZE + 0x1000, false),
        Err(crate::gmap::shadow::ShadowFault::Reflect(code::ADDRESSING))
    );
    Ok(())
}

/// EDAT-1 for guest-2: a large guest-2 segment (format control set) is
/// shadowed by a fake page table that maps its 1 MiB frame page by page,
/// and a protected region-third entry (EDAT-1 region protection) makes a
/// store through it a reflected protection exception. Without EDAT the
/// same segment entry names a page table.
pub(super) fn edat1_large_guest2_segment_and_region_protection() -> KResult {
    let w = world()?;
    load_code(&w, sum_code())?;
    fill(&w, G1_DATA, 1536, |i| i + 1)?;
    let mut t = G2Tables::new(&w, Level::Region3)?;
    let (code, _) = layout(Level::Region3);
    let big = (5u64 << 31) | (7 << 20);
    // Guest-2's segment at `big`: the 1 MiB guest-1 frame at G1_DATA.
    let large = SegmentEntry::large(PhysAddr(G1_DATA), false).or_else(|e| kfail!("{e:?}"))?;
    t.set(&w, big, Some(Level::Segment), large.raw())?;
    let mut pages = BTreeMap::new();
    pages.insert(code, (G1_CODE, Prot::ReadOnly));
    let asce = t.asce();
    let ran = run_with(
        &w,
        &mut t,
        &pages,
        code,
        &[(2, big + 0x1000), (3, 1024)],
        asce,
        1,
    )?;
    kassert_eq!(ran.r, Ok(1), "{:?}", ran.seen);
    kassert_eq!(ran.vcpu.ctx.gprs[4], (513..=1536).sum::<u64>());
    let s = gmap_shadow(&w.g, asce, 1).or_else(|e| kfail!("{e:?}"))?;
    kassert_matches!(s.check(), Ok(n) if n >= 2);
    let ste = s.pte(big + 0x1000);
    kassert_eq!(
        Some(ste.frame()),
        w.h.lock()
            .space()
            .lookup(w.vm(G1_DATA + 0x1000))
            .map(|x| x.0)
    );
    // The fake page table's gaddr: the guest-1 frame it splits.
    // (EDAT-0 reads the same entry as a page-table origin: another shadow,
    // another translation.)
    let s0 = w.shadow(asce)?;
    kassert!(s0.id() != s.id());
    // Region protection.
    let Some(e) = t.entry_g1(&w, big, Some(Level::Region3), false)? else {
        return kfail!("no entry");
    };
    w.w(e, w.r(e)? | 0x200)?;
    let s = gmap_shadow(&w.g, asce, 1).or_else(|e| kfail!("{e:?}"))?;
    kassert_eq!(
        s.shadow_fault(big + 0x2000, true),
        Err(crate::gmap::shadow::ShadowFault::Reflect(code::PROTECTION))
    );
    kassert_eq!(s.shadow_fault(big + 0x2000, false), Ok(()));
    kassert!(s.pte(big + 0x2000).is_protected());
    Ok(())
}

/// Guest-2 stores through a writable mapping of the page that holds its
/// own PTE for that mapping: lifting the page's protection drops the very
/// page table the store needs, and shadowing it again protects the page
/// again. zdat will not leave a writable shadow PTE of a protected page,
/// so the run stops with `SelfMapped` (bounded, not a silent loop), and
/// the shadow's checker still passes.
pub(super) fn guest2_store_through_its_own_page_table_stops_cleanly() -> KResult {
    let w = world()?;
    load_code(&w, st_code())?;
    let mut t = G2Tables::new(&w, Level::Segment)?;
    let (code, _) = layout(Level::Segment);
    let v = 0x3000_0000u64;
    // V's PTE table first, so its page is known; then V maps that page.
    t.map(&w, v, G1_DATA, Prot::ReadWrite)?;
    let Some(v_pte) = t.entry_g1(&w, v, None, false)? else {
        return kfail!("no PTE for V");
    };
    t.map(&w, v, v_pte & !0xfff, Prot::ReadWrite)?;
    t.next_pt = (t.next_pt | 0xfff) + 1;
    let mut pages = BTreeMap::new();
    pages.insert(code, (G1_CODE, Prot::ReadOnly));
    // Store V's own PTE value back into it: no change if it went through.
    let cur = w.r(v_pte)?;
    let regs = [(2, v + (v_pte & 0xfff)), (5, cur), (6, v)];
    let ran = run(&w, &mut t, &pages, code, &regs)?;
    kassert_eq!(
        ran.r,
        Err(NestedStop::Fault(
            crate::gmap::shadow::ShadowFault::SelfMapped
        )),
        "{:?}",
        ran.seen
    );
    kassert_matches!(w.shadow(t.asce())?.check(), Ok(_));
    Ok(())
}
