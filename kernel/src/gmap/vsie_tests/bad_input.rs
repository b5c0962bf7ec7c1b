//! vsie bad input: malformed guest-2 ASCEs and entries are reflected to
//! guest-1 as the architecture's exception and change no host table; the
//! shadow checker catches a broken protection; a parent removed under live
//! shadows gives every page back.

use super::{world, G2Tables, World, G1_DATA, G1_SIZE};
use crate::arch::pgm::code;
use crate::dat::entry::{Level, Prot, Pte, RegionEntry, CRST_INVALID_BIT};
use crate::dat::space::PGSTE_VSIE_BIT;
use crate::dat::table::entry;
use crate::gmap::shadow::{gmap_shadow, ShadowCheckError, ShadowError, ShadowFault, ShadowGmap};
use crate::ktest::{KResult, Outcome};
use crate::mm::addr::PhysAddr;
use crate::mm::fail;
use crate::{kassert, kassert_eq, kassert_matches, kfail};

/// What a refused shadow fault must leave as it was on the host side.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    host: Result<crate::dat::space::SpaceCheck, crate::dat::space::SpaceCheckError>,
    frames: usize,
    gmap: Result<u64, crate::gmap::GmapCheckError>,
}

fn host_state(w: &World) -> HostState {
    let h = w.h.lock();
    let (host, frames) = (h.space().check(), h.nr_frames());
    drop(h);
    HostState {
        host,
        frames,
        gmap: w.g.check(),
    }
}

/// One malformed guest-2 translation after another, each reflected with
/// the exception the architecture defines: a region entry of the wrong
/// table type, a segment entry with table-type bits, a PTE with bit 52
/// (translation specification), a table beyond guest-1 memory
/// (addressing), an address beyond what the ASCE's type covers (ASCE
/// type), beyond the ASCE's table length and beyond a region entry's
/// table length (the translation exception of the level). The host's
/// tables, frames and the gmap stay as they were; the shadow's checker
/// passes after each.
pub(super) fn malformed_guest2_tables_are_reflected_and_change_no_host_table() -> KResult {
    let w = world()?;
    w.w(G1_DATA, 0x77)?;
    let mut t = G2Tables::new(&w, Level::Region3)?;
    let s = w.shadow(t.asce())?;
    // (guest-2 address, what is wrong, the code) — each address its own
    // region-third entry so the cases do not meet.
    let r3 = |i: u64| (i << 31) | 0x10_0000;
    let mut cases: alloc::vec::Vec<(u64, u16)> = alloc::vec::Vec::new();
    // A region-third entry whose table type says region-second.
    t.map(&w, r3(1), G1_DATA, Prot::ReadWrite)?;
    let Some(e) = t.entry_g1(&w, r3(1), Some(Level::Region3), false)? else {
        return kfail!("no entry");
    };
    let good = RegionEntry::from_raw(w.r(e)?);
    let wrong =
        RegionEntry::table(Level::Region2, good.next_origin()).or_else(|e| kfail!("{e:?}"))?;
    w.w(e, wrong.raw())?;
    cases.push((r3(1), code::TRANSLATION_SPECIFICATION));
    // A segment entry with table-type bits set.
    t.map(&w, r3(2), G1_DATA, Prot::ReadWrite)?;
    let Some(e) = t.entry_g1(&w, r3(2), Some(Level::Segment), false)? else {
        return kfail!("no entry");
    };
    w.w(e, w.r(e)? | 0x4)?;
    cases.push((r3(2), code::TRANSLATION_SPECIFICATION));
    // A PTE with bit 52.
    let p = Pte::new(PhysAddr(G1_DATA), Prot::ReadWrite).or_else(|e| kfail!("{e:?}"))?;
    t.set(&w, r3(3), None, p.with_bit52().raw())?;
    cases.push((r3(3), code::TRANSLATION_SPECIFICATION));
    // A segment table beyond guest-1 memory.
    let far = RegionEntry::table(Level::Region3, PhysAddr(G1_SIZE + 0x10_0000))
        .or_else(|e| kfail!("{e:?}"))?;
    t.set(&w, r3(4), Some(Level::Region3), far.raw())?;
    cases.push((r3(4), code::ADDRESSING));
    // A page beyond guest-1 memory.
    t.map(&w, r3(5), G1_SIZE + 0x1000, Prot::ReadWrite)?;
    cases.push((r3(5), code::ADDRESSING));
    // A region-third entry of table length 0 (512 segments), an address
    // past it.
    t.map(&w, r3(6) + (600 << 20), G1_DATA, Prot::ReadWrite)?;
    let Some(e) = t.entry_g1(&w, r3(6), Some(Level::Region3), false)? else {
        return kfail!("no entry");
    };
    w.w(e, w.r(e)? & !0x3)?;
    cases.push((r3(6) + (600 << 20), code::SEGMENT_TRANSLATION));
    // An invalid PTE (valid tables above): guest-2's page translation.
    t.set(&w, r3(7), None, Pte::empty().raw())?;
    cases.push((r3(7), code::PAGE_TRANSLATION));
    let before = host_state(&w);
    for &(g2, want) in &cases {
        kassert_eq!(
            s.shadow_fault(g2, false),
            Err(ShadowFault::Reflect(want)),
            "{g2:#x}"
        );
        kassert_eq!(host_state(&w), before, "{g2:#x}");
        kassert_eq!(s.check(), Ok(0), "{g2:#x}");
    }
    // The ASCE's own limits, through shadows of other ASCEs.
    let seg = G2Tables::new(&w, Level::Segment)?;
    let ss = w.shadow(seg.asce())?;
    kassert_eq!(
        ss.shadow_fault(1 << 31, false),
        Err(ShadowFault::Reflect(code::ASCE_TYPE))
    );
    let short = w.shadow(t.asce().with_tl(0))?;
    kassert_eq!(
        short.shadow_fault(600 << 31, false),
        Err(ShadowFault::Reflect(code::REGION_THIRD_TRANSLATION))
    );
    // And what is well-formed still works next to it all. Mapping it
    // stores into guest-2's top table, whose page the shadow protected:
    // the whole shadow goes, and the next gmap_shadow makes a new one.
    t.map(&w, r3(8), G1_DATA, Prot::ReadWrite)?;
    kassert!(s.is_removed());
    kassert_eq!(s.shadow_fault(r3(8), false), Err(ShadowFault::Again));
    let s = w.shadow(t.asce())?;
    kassert_eq!(s.shadow_fault(r3(8), false), Ok(()));
    kassert_eq!(s.check(), Ok(1));
    Ok(())
}

/// One guest-2 page (segment-table ASCE) mapped to `G1_DATA` and
/// shadowed: the shadow, the page's guest-2 address, and the guest-1
/// address of guest-2's PTE for it.
fn one_shadowed_page(w: &World) -> Result<(ShadowGmap, u64, u64), Outcome> {
    let mut t = G2Tables::new(w, Level::Segment)?;
    let g2 = 0x1234_5000;
    t.map(w, g2, G1_DATA, Prot::ReadWrite)?;
    let s = w.shadow(t.asce())?;
    kassert_eq!(s.shadow_fault(g2, false), Ok(()));
    kassert_eq!(s.check(), Ok(1));
    let Some(pte_g1) = t.entry_g1(w, g2, None, false)? else {
        return kfail!("no PTE");
    };
    Ok((s, g2, pte_g1))
}

/// The checker is not a tautology: a source page made writable behind
/// the shadow's back, or a shadowed page's VSIE bit lost, is reported.
pub(super) fn checker_catches_a_shadow_entry_whose_source_is_writable() -> KResult {
    let w = world()?;
    let (s, g2, pte_g1) = one_shadowed_page(&w)?;
    // The host PTE of the page holding guest-2's PTE table, made writable
    // without the space's API (so nobody is notified).
    let h = w.h.lock();
    let Some(hpte) = h.space().pte_addr(w.vm(pte_g1) & !0xfff) else {
        return kfail!("no host PTE");
    };
    // SAFETY: a live host PTE; the case puts it back below and nothing
    // else runs meanwhile (the host lock is held).
    let slot = unsafe { entry(hpte) };
    let old = slot.load(core::sync::atomic::Ordering::Acquire);
    slot.store(
        Pte::from_raw(old).with_prot(Prot::ReadWrite).raw(),
        core::sync::atomic::Ordering::Release,
    );
    drop(h);
    let broken = s.check();
    let h = w.h.lock();
    slot.store(old, core::sync::atomic::Ordering::Release);
    drop(h);
    kassert_matches!(broken, Err(ShadowCheckError::Unprotected { kind: 1, .. }));
    kassert_eq!(s.check(), Ok(1));
    // The data page's PGSTE VSIE bit lost.
    let h = w.h.lock();
    let Some(dpte) = h.space().pte_addr(w.vm(G1_DATA)) else {
        return kfail!("no host PTE");
    };
    // SAFETY: the PGSTE of a live host PTE (PGSTEs sit 2 KiB above in the
    // whole-page tables of a PGSTE space); put back below.
    let pg = unsafe { entry(PhysAddr(dpte.0 + 0x800)) };
    let old = pg.fetch_and(!PGSTE_VSIE_BIT, core::sync::atomic::Ordering::AcqRel);
    drop(h);
    let broken = s.check();
    pg.store(old, core::sync::atomic::Ordering::Release);
    kassert_eq!(broken, Err(ShadowCheckError::Page(g2 & !0xfff)));
    kassert_eq!(s.check(), Ok(1));
    // Guest-2's PTE changed behind the protection (a store into the host
    // frame, not through the host's PTE): the shadow PTE is stale, and the
    // checker says so.
    let h = w.h.lock();
    let Some((frame, _)) = h.space().lookup(w.vm(pte_g1) & !0xfff) else {
        return kfail!("no host frame");
    };
    drop(h);
    // SAFETY: the guest-1 frame holding guest-2's PTE, put back below.
    let gp = unsafe { entry(PhysAddr(frame.0 | (pte_g1 & 0xfff))) };
    let old = gp.load(core::sync::atomic::Ordering::Acquire);
    let moved =
        Pte::new(PhysAddr(G1_DATA + 0x5000), Prot::ReadWrite).or_else(|e| kfail!("{e:?}"))?;
    gp.store(moved.raw(), core::sync::atomic::Ordering::Release);
    let broken = s.check();
    gp.store(old, core::sync::atomic::Ordering::Release);
    kassert_eq!(
        broken,
        Err(ShadowCheckError::Stale {
            kind: 1,
            g2: g2 & !0xfff
        })
    );
    kassert_eq!(s.check(), Ok(1));
    // A shadow page table no valid entry reaches any more (its segment
    // entry made invalid without dropping the table below): the checker
    // counts it as unreachable.
    let se_addr = PhysAddr(s.asce().origin().0 + Level::Segment.index(g2) as u64 * 8);
    // SAFETY: an entry of the shadow's live top (segment) table; put back
    // below, and nothing runs guest-2 meanwhile.
    let se = unsafe { entry(se_addr) };
    let old = se.load(core::sync::atomic::Ordering::Acquire);
    kassert_eq!(old & CRST_INVALID_BIT, 0);
    se.store(
        old | CRST_INVALID_BIT,
        core::sync::atomic::Ordering::Release,
    );
    let broken = s.check();
    se.store(old, core::sync::atomic::Ordering::Release);
    kassert_eq!(broken, Err(ShadowCheckError::Unreachable { tables: 1 }));
    kassert_eq!(s.check(), Ok(1));
    Ok(())
}

/// A store into a guest-1 page through the host's back door
/// (`HostMm::frame_bytes`, how a test or a device fills a frame) is a
/// store like any other: the shadows built from the page hear of it
/// before the bytes are handed out, so rewriting guest-2's PTE there
/// leaves no stale shadow PTE (before the fix, `check` said `Stale` and
/// guest-2 kept the old frame).
pub(super) fn host_store_through_frame_bytes_unshadows_first() -> KResult {
    let w = world()?;
    let (s, g2, pte_g1) = one_shadowed_page(&w)?;
    kassert!(!s.pte(g2).is_invalid());
    let moved =
        Pte::new(PhysAddr(G1_DATA + 0x5000), Prot::ReadWrite).or_else(|e| kfail!("{e:?}"))?;
    {
        let mut h = w.h.lock();
        let f = h
            .frame_bytes(w.vm(pte_g1))
            .or_else(|e| kfail!("frame_bytes: {e:?}"))?;
        let at = (pte_g1 & 0xfff) as usize;
        f[at..at + 8].copy_from_slice(&moved.raw().to_be_bytes());
    }
    // The shadow PTE went before the store, and the shadow is consistent
    // with guest-2's tables as they are now.
    kassert!(s.pte(g2).is_invalid());
    kassert_eq!(s.check(), Ok(0));
    // The next fault shadows the new frame.
    kassert_eq!(s.shadow_fault(g2, false), Ok(()));
    kassert_eq!(s.check(), Ok(1));
    let h = w.h.lock();
    let want = h.space().lookup(w.vm(G1_DATA + 0x5000)).map(|(f, _)| f);
    drop(h);
    kassert_eq!(Some(s.pte(g2).frame()), want);
    // A page the host itself made read-only is refused, unchanged.
    let mut h = w.h.lock();
    kassert_eq!(h.protect(w.vm(G1_DATA + 0x5000), Prot::ReadOnly), Ok(()));
    kassert_eq!(
        h.frame_bytes(w.vm(G1_DATA + 0x5000)).map(|_| ()),
        Err(crate::dat::space::SpaceError::Protected)
    );
    kassert_eq!(
        h.frame_bytes(w.vm(G1_SIZE + 0x1000)).map(|_| ()),
        Err(crate::dat::space::SpaceError::NotMapped)
    );
    Ok(())
}

/// Fault injection over every allocation a shadow makes: `gmap_shadow`
/// and a first-touch fault through a region-first guest-2 ASCE (the top
/// table and the four shadow tables below it, each with its descriptor in
/// memdesc), failing allocation n for n = 1, 2, ... until one runs
/// untouched. Guest-1's pages are populated before, so every allocation
/// counted is the shadow's. Each failure is `NoMemory` and leaves a shadow
/// its checker accepts; the same fault then completes it; tearing the
/// world down gives back every page (counted here, per n, besides the
/// runner's leak check of the whole case).
pub(super) fn every_shadow_allocation_failure_leaves_a_clean_shadow() -> KResult {
    let g2 = (1u64 << 53) | (2 << 42) | (3 << 31) | (4 << 20) | 0x5000;
    let mut n = 1u64;
    loop {
        let free0 = crate::mm::nr_free_pages_and_desc_slabs();
        let w = world()?;
        w.w(G1_DATA, 5)?;
        let mut t = G2Tables::new(&w, Level::Region1)?;
        t.map(&w, g2, G1_DATA, Prot::ReadWrite)?;
        fail::fail_alloc_nth(n);
        let made = gmap_shadow(&w.g, t.asce(), 0);
        let r = made
            .as_ref()
            .map(|s| s.shadow_fault(g2, false))
            .map_err(|e| *e);
        let untouched = fail::pending();
        fail::fail_alloc_off();
        match (untouched, made) {
            (true, Ok(s)) => {
                kassert_eq!(r, Ok(Ok(())));
                kassert_eq!(s.check(), Ok(1));
                kassert_eq!(s.table_counts().0, 5);
                break;
            }
            (false, Err(e)) => kassert_eq!(e, ShadowError::NoMemory, "allocation {}", n),
            (false, Ok(s)) => {
                kassert_eq!(r, Ok(Err(ShadowFault::NoMemory)), "allocation {}", n);
                kassert!(s.check().is_ok(), "allocation {}: {:?}", n, s.check());
                kassert_eq!(s.shadow_fault(g2, false), Ok(()), "allocation {}", n);
                kassert_eq!(s.check(), Ok(1), "allocation {}", n);
            }
            (true, Err(e)) => return kfail!("gmap_shadow failed untouched: {e:?}"),
        }
        let World { h, g } = w;
        kassert_eq!(crate::gmap::gmap_remove(g), Ok(()));
        drop(h);
        kassert_eq!(
            crate::mm::nr_free_pages_and_desc_slabs(),
            free0,
            "allocation {}: pages not given back",
            n
        );
        n += 1;
    }
    // The top table and four below it, at least.
    kassert!(n > 5, "only {} allocations", n - 1);
    crate::ktest::diag(format_args!(
        "gmap_shadow + shadow_fault: {} injected failures, each clean",
        n - 1
    ));
    Ok(())
}

/// The parent gmap removed while shadow handles live: the shadows are
/// removed (their checker says so), and once the handles go every page is
/// back (the runner's leak check).
pub(super) fn teardown_with_live_shadows_returns_every_page() -> KResult {
    let w = world()?;
    w.w(G1_DATA, 5)?;
    let mut t = G2Tables::new(&w, Level::Region2)?;
    let mut handles = alloc::vec::Vec::new();
    for i in 0..3u64 {
        let g2 = (i << 42) | (i << 31) | 0x20_0000;
        t.map(&w, g2, G1_DATA + i * 0x1000, Prot::ReadWrite)?;
        let s = w.shadow(t.asce().with_tl(3 - i))?;
        kassert_eq!(s.shadow_fault(g2, false), Ok(()));
        kassert_eq!(s.check(), Ok(1));
        handles.push(s);
    }
    kassert!(crate::gmap::table::nr_gmap_table_pages() > 0);
    let World { h, g } = w;
    kassert_eq!(crate::gmap::gmap_remove(g), Ok(()));
    for s in &handles {
        kassert!(s.is_removed());
        kassert_eq!(s.check(), Ok(0));
        kassert_eq!(s.shadow_fault(0x20_0000, false), Err(ShadowFault::Again));
    }
    drop(handles);
    drop(h);
    Ok(())
}
