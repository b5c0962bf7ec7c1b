//! The vsie differential check: 10,000 random guest-2 addresses over
//! randomly built guest-2 tables (a region-first ASCE, invalid, protected,
//! malformed and out-of-memory entries at every level), each accessed
//! through the shadow by the CPU's DAT (a load, LRAG, and for every
//! eighth a store), faults resolved by `shadow_fault` until it maps the
//! page or reflects; the outcome must equal a two-stage software walk:
//! guest-2's tables in guest-1 memory (`dat::walk`), then guest-1's gmap,
//! then the host's PTE. And, so that the exceptions are not software
//! judging software (the shadow's reflections come from `dat::walk` too),
//! the CPU's own walk of an eager copy of guest-2's tables with host real
//! origins must give the same outcome at every EDAT-0 address.

use alloc::vec::Vec;

use super::{world, G2Tables, World, G1_DATA, G1_SIZE};
use crate::arch::pgm::{code, stores_teid, ProgramCheck, Teid, TeidAccess};
use crate::arch::s390x::dat as hw;
use crate::dat::context::AsceRef;
use crate::dat::entry::{Level, Prot, Pte, RegionEntry};
use crate::dat::kernel::with_secondary_lctlg;
use crate::dat::walk::{self, Facilities, TableReader};
use crate::gmap::shadow::{gmap_shadow, ShadowFault, ShadowGmap};
use crate::gmap::vsie::reflected_teid;
use crate::ktest::{KResult, Outcome, Rng};
use crate::mm::addr::PhysAddr;
use crate::{kassert, kassert_eq, kfail};

const N: u64 = 10_000;
const R1: [u64; 3] = [0, 1, 5];
const R2: [u64; 2] = [0, 3];
const R3: [u64; 2] = [0, 7];
const SX: [u64; 4] = [0, 1, 100, 600];

/// Guest-2's tables as guest-1 reads them (its loads; the same memory the
/// shadow fault reads).
struct G1Mem<'a>(&'a World);

impl TableReader for G1Mem<'_> {
    fn read_entry(&self, pa: PhysAddr) -> Option<u64> {
        if pa.0 >= G1_SIZE {
            return None;
        }
        self.0.g.guest_read_u64(pa.0).ok()
    }
}

/// What an access came to: a real address, or an exception (code, and
/// the TEID when the code stores one). The CPU's sides keep the TEID's
/// defined bits (`TEID_DEFINED`); the software walk knows only the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Ok(u64),
    Fault(u16, Option<u64>),
}

/// The TEID bits the architecture defines for DAT exceptions: the
/// address (bits 0-51), fetch/store (52-53), bit 61 (the address is
/// valid, for protection) and the address-space bits (62-63). Bits 54-60
/// are left out: their meaning depends on facilities guest-1 is not
/// told about here.
const TEID_DEFINED: u64 = !0xfff | 0xc00 | 0x7;

impl Verdict {
    /// The verdict as the software walk can state it: a TEID reduced to
    /// its page.
    fn page_only(self) -> Verdict {
        match self {
            Verdict::Fault(c, Some(t)) if stores_teid(c) => Verdict::Fault(c, Some(t & !0xfff)),
            v => v,
        }
    }
}

fn g2_addr(r: &mut Rng) -> u64 {
    let x = r.next_u64();
    if x.is_multiple_of(10) {
        return r.next_u64() & !7;
    }
    // A pool index mostly, any index one time in 16 (an entry no table
    // has: invalid at that level).
    let pick = |a: &[u64], v: u64| {
        if (v >> 4).is_multiple_of(16) {
            (v >> 8) % 2048
        } else {
            a[(v % a.len() as u64) as usize]
        }
    };
    let y = r.next_u64();
    let z = r.next_u64();
    (pick(&R1, y) << 53)
        | (pick(&R2, y >> 20) << 42)
        | (pick(&R3, y >> 40) << 31)
        | (pick(&SX, z) << 20)
        | (((z >> 20) % 256) << 12)
        | ((z >> 40) & 0xff8)
}

/// Build guest-2's tables: every pool segment, each page at random
/// valid (read-write or read-only), beyond guest-1 memory, malformed or
/// invalid; then spoil some upper entries.
fn build(w: &World, r: &mut Rng) -> Result<G2Tables, Outcome> {
    let mut t = G2Tables::new(w, Level::Region1)?;
    for &a in &R1 {
        for &b in &R2 {
            for &c in &R3 {
                for &d in &SX {
                    let seg = (a << 53) | (b << 42) | (c << 31) | (d << 20);
                    for p in 0..256u64 {
                        let x = r.next_u64() % 100;
                        let g1 = G1_DATA + (r.next_u64() % 256) * 0x1000;
                        let raw = match x {
                            0..=39 => Pte::new(PhysAddr(g1), Prot::ReadWrite),
                            40..=54 => Pte::new(PhysAddr(g1), Prot::ReadOnly),
                            55..=59 => Pte::new(PhysAddr(G1_SIZE + g1), Prot::ReadWrite),
                            60..=62 => Pte::new(PhysAddr(g1), Prot::ReadWrite).map(Pte::with_bit52),
                            _ => Ok(Pte::empty()),
                        }
                        .or_else(|e| kfail!("{e:?}"))?;
                        t.set(w, seg | (p << 12), None, raw.raw())?;
                    }
                }
            }
        }
    }
    // Spoil: a region-second entry invalid, a region-third entry of the
    // wrong type, a region-third entry of length 0 (segments >= 512 out),
    // a region-second entry pointing beyond guest-1 memory, a protected
    // segment.
    let r2 = |a: u64, b: u64| (a << 53) | (b << 42);
    let r3 = |a: u64, b: u64, c: u64| r2(a, b) | (c << 31);
    t.set(
        w,
        r2(5, 3),
        Some(Level::Region2),
        RegionEntry::empty(Level::Region2).raw(),
    )?;
    let Some(e) = t.entry_g1(w, r3(1, 0, 7), Some(Level::Region3), false)? else {
        return kfail!("no entry");
    };
    let o = RegionEntry::from_raw(w.r(e)?).next_origin();
    let wrong = RegionEntry::table(Level::Region1, o).or_else(|e| kfail!("{e:?}"))?;
    w.w(e, wrong.raw())?;
    let Some(e) = t.entry_g1(w, r3(0, 3, 0), Some(Level::Region3), false)? else {
        return kfail!("no entry");
    };
    w.w(e, w.r(e)? & !0x3)?;
    let far = RegionEntry::table(Level::Region2, PhysAddr(G1_SIZE + 0x40_0000))
        .or_else(|e| kfail!("{e:?}"))?;
    t.set(w, r2(1, 3), Some(Level::Region2), far.raw())?;
    let Some(e) = t.entry_g1(w, r3(0, 0, 7) | (1 << 20), Some(Level::Segment), false)? else {
        return kfail!("no entry");
    };
    w.w(e, w.r(e)? | 0x200)?;
    // A large segment (EDAT-1 reads a 1 MiB frame, EDAT-0 a page table at
    // the same origin) and a protected region-third entry (EDAT-1 only).
    let large = crate::dat::entry::SegmentEntry::large(PhysAddr(G1_DATA), false)
        .or_else(|e| kfail!("{e:?}"))?;
    t.set(
        w,
        r3(0, 0, 7) | (100 << 20),
        Some(Level::Segment),
        large.raw(),
    )?;
    let Some(e) = t.entry_g1(w, r3(5, 0, 0), Some(Level::Region3), false)? else {
        return kfail!("no entry");
    };
    w.w(e, w.r(e)? | 0x200)?;
    Ok(t)
}

/// The software verdict: guest-2's walk, then guest-1's gmap and the
/// host (whose page the hardware side populated by then).
fn software(w: &World, t: &G2Tables, a: u64, store: bool, edat1: bool) -> Verdict {
    let fac = Facilities {
        edat1,
        edat2: false,
    };
    // The load first (as both hardware sides do), then the store.
    match walk::translate(&G1Mem(w), t.asce(), a, fac, false) {
        Err(c) => Verdict::Fault(c, stores_teid(c).then_some(a & !0xfff)),
        Ok(tr) => {
            let Ok(vm) = w.g.gmap_translate(tr.real.0) else {
                return Verdict::Fault(code::ADDRESSING, None);
            };
            if store && tr.protected {
                return Verdict::Fault(code::PROTECTION, Some(a & !0xfff));
            }
            match w.h.lock().space().lookup(vm & !0xfff) {
                Some((f, _)) => Verdict::Ok(f.0 | (a & 0xfff)),
                None => Verdict::Fault(0xffff, None),
            }
        }
    }
}

fn fault_of(pc: &ProgramCheck) -> Verdict {
    let c = pc.exception();
    Verdict::Fault(c, stores_teid(c).then_some(pc.teid & TEID_DEFINED))
}

/// The hardware verdict: access through the shadow, resolving its faults
/// until the access works or the fault is guest-2's (reflected).
fn hardware(s: &ShadowGmap, a: u64, store: bool, stuck: &mut u64) -> Verdict {
    for _ in 0..8 {
        let r = if store {
            hw::secondary_load_u64(a).and_then(|v| {
                // SAFETY: guest-1 data memory the case owns; the value
                // stored is the one there.
                unsafe { hw::secondary_store_u64(a, v) }
            })
        } else {
            hw::secondary_load_u64(a).map(|_| ())
        };
        let pc = match r {
            Ok(()) => {
                let (cc, real) = hw::secondary_lrag(a);
                if cc != 0 {
                    return Verdict::Fault(0xfffe, Some(cc as u64));
                }
                return Verdict::Ok(real);
            }
            Err(pc) => pc,
        };
        // A store only if the store failed (the load goes first).
        let write =
            pc.exception() == code::PROTECTION || Teid(pc.teid).access() == TeidAccess::Store;
        match s.shadow_fault(a, write) {
            Ok(()) => continue,
            Err(ShadowFault::Reflect(c)) => {
                // Guest-2's code, with the TEID guest-1 is given for it.
                let teid = reflected_teid(c, pc.exception(), pc.teid);
                return Verdict::Fault(c, stores_teid(c).then_some(teid & TEID_DEFINED));
            }
            Err(_) => return Verdict::Fault(0xfffd, None),
        }
    }
    *stuck += 1;
    Verdict::Fault(0xfffc, None)
}

/// What one pass over `n` random addresses found.
#[derive(Default)]
struct Pass {
    /// (address, store, the shadow's verdict, the other side's).
    bad: Vec<(u64, bool, Verdict, Verdict)>,
    /// Where the CPU's own walk of an eager copy disagreed.
    bad_eager: Vec<(u64, bool, Verdict, Verdict)>,
    seen: Vec<(u16, u64)>,
    ok: u64,
    stuck: u64,
    /// Faults whose whole TEID the eager copy's CPU judged.
    teids: u64,
}

fn pass(
    w: &World,
    t: &G2Tables,
    s: &ShadowGmap,
    edat1: bool,
    n: u64,
    r: &mut Rng,
    eager: Option<&AsceRef>,
) -> Pass {
    let mut p = Pass::default();
    let asce = s.asce_ref();
    let addrs: Vec<(u64, bool)> = (0..n).map(|i| (g2_addr(r), i % 8 == 0)).collect();
    // Each side in one load of its ASCE (every LCTLG purges QEMU's whole
    // TLB): the shadow side keeps a warm TLB across the shadow faults of
    // the pass, as a guest-2 that runs on would. (No unshadow happens
    // here: the stores write back what they read, into data pages that
    // hold no guest-2 table; the warm cases cover unshadowing.)
    // SAFETY: the shadow lives across the call; it maps guest-1 data
    // memory of this case (stores write back what they read).
    let hvs: Vec<Verdict> = unsafe {
        with_secondary_lctlg(&asce, || {
            let mut stuck = 0;
            let v = addrs
                .iter()
                .map(|&(a, store)| hardware(s, a, store, &mut stuck))
                .collect();
            p.stuck += stuck;
            v
        })
    };
    // SAFETY: the eager copy's tables live across the call; it maps the
    // same guest-1 data memory (stores write back).
    let evs: Option<Vec<Verdict>> = eager.map(|e| unsafe {
        with_secondary_lctlg(e, || {
            addrs.iter().map(|&(a, store)| direct(a, store)).collect()
        })
    });
    for (i, &(a, store)) in addrs.iter().enumerate() {
        let hv = hvs[i];
        let sv = software(w, t, a, store, edat1);
        if hv.page_only() != sv && p.bad.len() < 8 {
            p.bad.push((a, store, hv, sv));
        }
        if let Some(ev) = evs.as_ref().map(|v| v[i]) {
            if ev != hv && p.bad_eager.len() < 8 {
                p.bad_eager.push((a, store, hv, ev));
            }
            if matches!(ev, Verdict::Fault(_, Some(_))) {
                p.teids += 1;
            }
        }
        match sv {
            Verdict::Ok(_) => p.ok += 1,
            Verdict::Fault(c, _) => match p.seen.iter_mut().find(|x| x.0 == c) {
                Some(x) => x.1 += 1,
                None => p.seen.push((c, 1)),
            },
        }
    }
    p
}

/// An address beyond the machine's memory (1 TiB): where the eager copy
/// points what lies beyond guest-1 memory, so the CPU's own fetch of it
/// is the addressing exception.
const BEYOND: u64 = 1 << 40;

/// The eager copy: guest-2's tables (as reachable from its ASCE) copied
/// into kernel frames with every table origin and page frame replaced by
/// the host real address guest-1's gmap and the host give it, nothing
/// else changed, so that the CPU's own DAT walks guest-2's entries:
/// invalid bits, table types, offsets and lengths, protection and
/// reserved bits are judged by QEMU, not by `dat::walk`. Independent of
/// `gmap::shadow`; built with plain guest-1 loads.
struct Eager {
    frames: Vec<crate::mm::Pages>,
    memo: alloc::collections::BTreeMap<(u64, u8), u64>,
}

impl Eager {
    /// The host frame of guest-1 page `g1`, or BEYOND outside guest-1
    /// memory.
    fn frame(w: &World, g1: u64) -> u64 {
        if w.g.guest_read_u64(g1 & !0xfff).is_err() {
            return BEYOND;
        }
        let Ok(vm) = w.g.gmap_translate(g1 & !0xfff) else {
            return BEYOND;
        };
        w.h.lock().space().lookup(vm).map_or(BEYOND, |(f, _)| f.0)
    }

    /// Copy the table at guest-1 `g1` of `level` (`None`: a page table);
    /// its real address.
    fn table(&mut self, w: &World, g1: u64, level: Option<Level>) -> Result<u64, Outcome> {
        let key = (g1, level.map_or(9, |l| l as u8));
        if let Some(&pa) = self.memo.get(&key) {
            return Ok(pa);
        }
        if g1 >= G1_SIZE {
            return Ok(BEYOND);
        }
        let (order, n) = if level.is_some() { (2, 2048) } else { (0, 256) };
        let p = crate::mm::alloc_pages(order, crate::mm::AllocFlags::ZERO)
            .or_else(|e| kfail!("eager copy: {e:?}"))?;
        let pa = p.phys().0;
        self.frames.push(p);
        self.memo.insert(key, pa);
        for i in 0..n {
            let graw = w.r(g1 + i * 8)?;
            let raw = match level {
                None => {
                    let e = Pte::from_raw(graw);
                    if e.is_invalid() {
                        graw
                    } else {
                        (graw & 0xfff) | Self::frame(w, e.frame().0)
                    }
                }
                Some(Level::Segment) => {
                    let e = crate::dat::entry::SegmentEntry::from_raw(graw);
                    if e.is_invalid() || e.tt() != 0 {
                        graw
                    } else {
                        let pt = self.table(w, e.page_table().0, None)?;
                        (graw & 0x7ff) | (pt + (e.page_table().0 & 0x7ff))
                    }
                }
                Some(l) => {
                    let e = RegionEntry::from_raw(graw);
                    if e.is_invalid() || e.level() != l {
                        graw
                    } else {
                        let c = self.table(w, e.next_origin().0, l.lower())?;
                        (graw & 0xfff) | c
                    }
                }
            };
            // SAFETY: the frame was just allocated to the copy.
            unsafe { crate::dat::table::entry(PhysAddr(pa + i * 8)) }
                .store(raw, core::sync::atomic::Ordering::Relaxed);
        }
        Ok(pa)
    }
}

/// The CPU's own verdict through the eager copy (secondary space).
fn direct(a: u64, store: bool) -> Verdict {
    let r = hw::secondary_load_u64(a).and_then(|v| {
        if store {
            // SAFETY: guest-1 data memory of the case; the value stored
            // is the one there.
            unsafe { hw::secondary_store_u64(a, v) }
        } else {
            Ok(())
        }
    });
    match r {
        Ok(()) => match hw::secondary_lrag(a) {
            (0, real) => Verdict::Ok(real),
            (cc, _) => Verdict::Fault(0xfffe, Some(cc as u64)),
        },
        Err(pc) => fault_of(&pc),
    }
}

/// 10,000 random guest-2 addresses (and 2,000 more with EDAT-1 for
/// guest-2: a large segment, a protected region entry): the CPU through
/// the shadow, the two-stage software walk and (EDAT-0) the CPU through
/// an eager copy agree on each (real address, or the exception code and
/// TEID: its page against the software walk, its defined bits against
/// the CPU on the eager copy), and every outcome class occurs.
pub(super) fn random_guest2_addresses_agree_with_a_two_stage_walk() -> KResult {
    let w = world()?;
    let mut r = Rng(0x5eed_05ad_0000_0001);
    let t = build(&w, &mut r)?;
    // The CPU's own walk of an eager copy judges the EDAT-0 pass too
    // (this CPU has no EDAT-1: the EDAT-1 pass has the software walk only).
    let mut eager = Eager {
        frames: Vec::new(),
        memo: alloc::collections::BTreeMap::new(),
    };
    let top = eager.table(&w, t.asce().origin().0, Some(t.asce().level()))?;
    let easce = crate::dat::entry::Asce::new(PhysAddr(top), t.asce().level())
        .or_else(|e| kfail!("{e:?}"))?
        .with_tl(t.asce().tl());
    let eref = AsceRef::new(
        easce,
        alloc::sync::Arc::new(crate::dat::context::MmContext::new()),
    );
    for (edat, n) in [(0u8, N), (1, N / 5)] {
        let s = gmap_shadow(&w.g, t.asce(), edat).or_else(|e| kfail!("{e:?}"))?;
        let e = (edat == 0).then_some(&eref);
        let p = pass(&w, &t, &s, edat == 1, n, &mut r, e);
        for (a, st, hv, sv) in &p.bad {
            crate::ktest::diag(format_args!(
                "EDAT-{edat} {a:#018x} store {st}: hardware {hv:x?}, software {sv:x?}"
            ));
        }
        for (a, st, hv, ev) in &p.bad_eager {
            crate::ktest::diag(format_args!(
                "EDAT-{edat} {a:#018x} store {st}: shadow {hv:x?}, CPU on the eager copy {ev:x?}"
            ));
        }
        kassert!(
            p.bad_eager.is_empty(),
            "EDAT-{edat}: the eager copy disagrees on {} of {n}",
            p.bad_eager.len()
        );
        kassert!(
            p.bad.is_empty(),
            "EDAT-{edat}: {} of {n} disagree",
            p.bad.len()
        );
        kassert_eq!(p.stuck, 0);
        crate::ktest::diag(format_args!(
            "EDAT-{edat}: {} of {n} translated; faults by code: {:x?}; {} whole TEIDs judged by the CPU's walk",
            p.ok, p.seen, p.teids
        ));
        if edat == 0 {
            // Every TEID-storing fault had its whole TEID judged.
            let with_teid: u64 = p
                .seen
                .iter()
                .filter(|x| stores_teid(x.0))
                .map(|x| x.1)
                .sum();
            kassert_eq!(p.teids, with_teid);
        }
        for c in [
            code::PAGE_TRANSLATION,
            code::SEGMENT_TRANSLATION,
            code::REGION_THIRD_TRANSLATION,
            code::REGION_SECOND_TRANSLATION,
            code::REGION_FIRST_TRANSLATION,
            code::TRANSLATION_SPECIFICATION,
            code::ADDRESSING,
            code::PROTECTION,
        ] {
            kassert!(
                p.seen.iter().any(|x| x.0 == c),
                "EDAT-{edat}: no address took {c:#x}"
            );
        }
        kassert!(p.ok > n / 8, "EDAT-{edat}: only {} translated", p.ok);
        kassert!(s.check().is_ok(), "{:?}", s.check());
    }
    Ok(())
}
