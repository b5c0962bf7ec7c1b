//! DAT on the CPU's own translation (QEMU's emulation): test spaces are
//! loaded as the secondary space (CR7) and probed with secondary-space
//! loads, stores and LRAG while the kernel runs in home-space mode. The
//! software walker is checked against what the hardware does.

use alloc::vec::Vec;

use super::entry::{Level, Prot, Pte, SegmentEntry, SEGMENT_SIZE};
use super::kernel::with_secondary_lctlg;
use super::space::{AddressSpace, SpaceError};
use super::walk::Facilities;
use super::{table, tlb};
use crate::arch::pgm::{code, ProgramCheck, Teid, TeidAccess};
use crate::arch::psw::mask;
use crate::arch::s390x::{dat as hw, facility, insn};
use crate::ktest::{KResult, Outcome, Rng};
use crate::mm::addr::{PhysAddr, PAGE_SIZE};
use crate::mm::{self, ptdesc, AllocFlags, Pages};
use crate::{kassert, kassert_eq, kassert_matches, kfail, kskip, ktest_suite};

const NONE: Facilities = Facilities {
    edat1: false,
    edat2: false,
};
const R1_LIMIT: u128 = 1 << 64;

fn space(limit: u128, max: u128) -> Result<AddressSpace, Outcome> {
    AddressSpace::new(limit, max, false).or_else(|e| kfail!("AddressSpace::new: {e:?}"))
}

use crate::ktest::fixtures::tagged_frame as frame;

fn give_back(p: Pages) {
    let _ = mm::free_pages(p);
}

/// Run `f` with `s` as the secondary space.
fn in_space_lctlg<R>(s: &AddressSpace, f: impl FnOnce() -> R) -> R {
    // SAFETY: `s` is borrowed for the whole call, so its tables stay live.
    unsafe { with_secondary_lctlg(s.asce(), f) }
}

fn load_lctlg(s: &AddressSpace, va: u64) -> Result<u64, ProgramCheck> {
    in_space_lctlg(s, || hw::secondary_load_u64(va))
}

/// Store `v` at `va` of `s`; the frames tests map are their own.
fn store_lctlg(s: &AddressSpace, va: u64, v: u64) -> Result<(), ProgramCheck> {
    // SAFETY: every frame the tests map writable is a page they allocated.
    in_space_lctlg(s, || unsafe { hw::secondary_store_u64(va, v) })
}

fn kernel_runs_with_dat_in_home_space() -> KResult {
    let m = insn::psw_mask();
    kassert!(m & mask::DAT != 0, "PSW mask {:#x}", m);
    kassert_eq!(m & mask::ASC, mask::ASC_HOME);
    let asce = super::kernel::asce().map(|a| a.raw());
    kassert_eq!(Some(crate::arch::s390x::cr::stctg::<13>()), asce);
    // The kernel's own space answers the same through the secondary path.
    let x: u64 = 0x1234_5678_9abc_def0;
    let va = core::ptr::addr_of!(x) as u64;
    kassert_eq!(hw::secondary_load_u64(va), Ok(x));
    let (cc, r) = hw::secondary_lrag(va);
    kassert_eq!((cc, r), (0, va));
    Ok(())
}

/// One frame at several addresses of a space of the given type: a store
/// through one is seen through the others, and through the kernel's own
/// identity mapping of the frame.
fn alias_in(limit: u128, vas: &[u64], level: Level) -> KResult {
    let mut s = space(limit, limit.max(1 << 31))?;
    kassert_eq!(s.asce().level(), level);
    let mut f = frame(0xa1)?;
    for &va in vas {
        kassert_eq!(s.map(va, f.phys(), Prot::ReadWrite), Ok(()));
    }
    for (i, &va) in vas.iter().enumerate() {
        let v = 0x5500 + i as u64;
        kassert_eq!(store_lctlg(&s, va + 0x80, v), Ok(()));
        for &other in vas {
            kassert_eq!(load_lctlg(&s, other + 0x80), Ok(v));
        }
        kassert_eq!(
            u64::from_be_bytes(f.as_mut_slice()[0x80..0x88].try_into().unwrap_or_default()),
            v
        );
        let (cc, r) = in_space_lctlg(&s, || hw::secondary_lrag(va + 0x80));
        kassert_eq!((cc, r), (0, f.phys().0 + 0x80));
    }
    drop(s);
    give_back(f);
    Ok(())
}

fn alias_segment_space() -> KResult {
    alias_in(
        1 << 31,
        &[0x10_0000, 0x10_1000, 0x7fff_f000],
        Level::Segment,
    )
}

fn alias_region3_space() -> KResult {
    alias_in(
        1 << 42,
        &[0x1000, 0x8000_0000, 0x3ff_ffff_f000],
        Level::Region3,
    )
}

fn alias_region2_space() -> KResult {
    alias_in(
        1 << 53,
        &[0x2000, 0x400_0000_0000, 0x1f_ffff_ffff_f000],
        Level::Region2,
    )
}

fn alias_region1_space() -> KResult {
    alias_in(
        R1_LIMIT,
        &[0x3000, 0x20_0000_0000_0000, 0xffff_ffff_ffff_f000],
        Level::Region1,
    )
}

/// Check a translation exception: code, TEID page address, access type and
/// the secondary-space indication.
fn expect_fault(r: Result<u64, ProgramCheck>, want: u16, va: u64, access: TeidAccess) -> KResult {
    kassert_matches!(r, Err(pc) if pc.code == want);
    let Err(pc) = r else {
        return Err(Outcome::Fail);
    };
    let t = Teid(pc.teid);
    kassert_eq!(t.address(), va & !0xfff);
    kassert_eq!(t.access(), access);
    kassert_eq!(t.space(), 2);
    Ok(())
}

fn translation_exceptions_with_code_and_teid() -> KResult {
    let mut s = space(R1_LIMIT, R1_LIMIT)?;
    let f = frame(0xb2)?;
    let va = 0x20_0000_1230_0000u64;
    kassert_eq!(s.map(va, f.phys(), Prot::ReadWrite), Ok(()));
    kassert_eq!(load_lctlg(&s, va), Ok(0xb2 << 32));
    // Same page table, next page: page translation.
    expect_fault(
        load_lctlg(&s, va + 0x1000),
        code::PAGE_TRANSLATION,
        va + 0x1000,
        TeidAccess::Fetch,
    )?;
    let st = store_lctlg(&s, va + 0x2008, 1).map(|()| 0);
    expect_fault(st, code::PAGE_TRANSLATION, va + 0x2008, TeidAccess::Store)?;
    // Same segment table, next segment: segment translation.
    expect_fault(
        load_lctlg(&s, va + SEGMENT_SIZE),
        code::SEGMENT_TRANSLATION,
        va + SEGMENT_SIZE,
        TeidAccess::Fetch,
    )?;
    // Next region-third entry, next region-second entry, next region-first.
    let r3 = va + (1 << 31);
    expect_fault(
        load_lctlg(&s, r3),
        code::REGION_THIRD_TRANSLATION,
        r3,
        TeidAccess::Fetch,
    )?;
    let r2 = va + (1 << 42);
    expect_fault(
        load_lctlg(&s, r2),
        code::REGION_SECOND_TRANSLATION,
        r2,
        TeidAccess::Fetch,
    )?;
    let r1 = va + (1 << 53);
    expect_fault(
        load_lctlg(&s, r1),
        code::REGION_FIRST_TRANSLATION,
        r1,
        TeidAccess::Fetch,
    )?;
    // The software walker names the same exceptions.
    for (a, c) in [
        (va + 0x1000, code::PAGE_TRANSLATION),
        (va + SEGMENT_SIZE, code::SEGMENT_TRANSLATION),
        (r3, code::REGION_THIRD_TRANSLATION),
        (r2, code::REGION_SECOND_TRANSLATION),
        (r1, code::REGION_FIRST_TRANSLATION),
    ] {
        kassert_eq!(s.translate(a, NONE, false).map(|t| t.real), Err(c));
    }
    drop(s);
    give_back(f);
    Ok(())
}

fn asce_type_exception() -> KResult {
    let mut s = space(1 << 31, 1 << 31)?;
    let f = frame(0xc3)?;
    kassert_eq!(s.map(0x7fff_f000, f.phys(), Prot::ReadWrite), Ok(()));
    kassert_eq!(load_lctlg(&s, 0x7fff_f000), Ok(0xc3 << 32));
    // A segment-table ASCE covers 2 GiB: one byte further is ASCE-type.
    expect_fault(
        load_lctlg(&s, 0x8000_0000),
        code::ASCE_TYPE,
        0x8000_0000,
        TeidAccess::Fetch,
    )?;
    kassert_eq!(
        s.translate(0x8000_0000, NONE, false).map(|t| t.real),
        Err(code::ASCE_TYPE)
    );
    drop(s);
    give_back(f);
    Ok(())
}

fn protection_exceptions() -> KResult {
    let mut s = space(1 << 31, 1 << 31)?;
    let f = frame(0xd4)?;
    let va = 0x30_0000;
    kassert_eq!(s.map(va, f.phys(), Prot::ReadOnly), Ok(()));
    // Reads work, stores are refused with a protection exception whose
    // TEID names the page, the store and (ESOP) DAT protection.
    kassert_eq!(load_lctlg(&s, va + 8), Ok((0xd4 << 32) | 8));
    let r = store_lctlg(&s, va + 8, 7);
    kassert_matches!(r, Err(pc) if pc.code == code::PROTECTION);
    let Err(pc) = r else {
        return Err(Outcome::Fail);
    };
    kassert_eq!(Teid(pc.teid).address(), va);
    if facility::has_esop1() {
        kassert_eq!(Teid(pc.teid).access(), TeidAccess::Store);
        kassert_eq!(pc.teid & 0xc, 0x4);
    }
    kassert_eq!(load_lctlg(&s, va + 8), Ok((0xd4 << 32) | 8));
    // Writable again through the API (IPTE, then the new entry).
    kassert_eq!(s.protect(va, Prot::ReadWrite), Ok(()));
    kassert_eq!(store_lctlg(&s, va + 8, 7), Ok(()));
    kassert_eq!(load_lctlg(&s, va + 8), Ok(7));
    // Segment protection covers every page of the segment.
    kassert_eq!(s.protect_segment(va, true), Ok(()));
    kassert_matches!(store_lctlg(&s, va + 8, 9), Err(pc) if pc.code == code::PROTECTION);
    kassert_eq!(
        s.translate(va, NONE, true).map(|t| t.real),
        Err(code::PROTECTION)
    );
    kassert_eq!(load_lctlg(&s, va + 8), Ok(7));
    kassert_eq!(s.protect_segment(va, false), Ok(()));
    kassert_eq!(store_lctlg(&s, va + 8, 9), Ok(()));
    drop(s);
    give_back(f);
    Ok(())
}

fn translation_specification_exception() -> KResult {
    let mut s = space(1 << 31, 1 << 31)?;
    let f = frame(0xe5)?;
    let va = 0x40_0000;
    kassert_eq!(s.map(va, f.phys(), Prot::ReadWrite), Ok(()));
    let bad = Pte::new(f.phys(), Prot::ReadWrite)
        .map(|p| p.with_bit52())
        .unwrap_or(Pte::empty());
    // SAFETY: the entry still names the test's own frame.
    let r = unsafe { s.replace_pte(va, bad) };
    kassert_eq!(r, Ok(()));
    kassert_matches!(load_lctlg(&s, va), Err(pc) if pc.code == code::TRANSLATION_SPECIFICATION);
    kassert_eq!(
        s.translate(va, NONE, false).map(|t| t.real),
        Err(code::TRANSLATION_SPECIFICATION)
    );
    // SAFETY: back to a well-formed entry for the same frame.
    let r = unsafe {
        s.replace_pte(
            va,
            Pte::new(f.phys(), Prot::ReadWrite).unwrap_or(Pte::empty()),
        )
    };
    kassert_eq!(r, Ok(()));
    kassert_eq!(load_lctlg(&s, va), Ok(0xe5 << 32));
    drop(s);
    give_back(f);
    Ok(())
}

/// A page mapped past the end of memory: DAT translates it, the access
/// is an addressing exception.
fn addressing_beyond_memory() -> KResult {
    let end = crate::machine::get().map_or(0, |m| m.memory);
    kassert!(end > 0);
    // A page mapped to a frame past the end of memory: translation works,
    // the access itself is an addressing exception, for loads and stores.
    let space = AddressSpace::new(1 << 31, 1 << 31, false);
    kassert!(space.is_ok());
    let Ok(mut space) = space else {
        return Err(crate::ktest::Outcome::Fail);
    };
    for (i, frame) in [end, end + 0x1000, end + (1 << 30)].into_iter().enumerate() {
        let va = 0x10_0000 + i as u64 * 0x1000;
        kassert_eq!(space.map(va, PhysAddr(frame), Prot::ReadWrite), Ok(()));
        // SAFETY: the space is live for the closure; the store targets a
        // frame beyond memory, so nothing is written.
        let (r, w) = unsafe {
            with_secondary_lctlg(space.asce(), || {
                (
                    hw::secondary_load_u64(va),
                    hw::secondary_store_u64(va, 0x5a5a),
                )
            })
        };
        kassert_matches!(r, Err(pc) if pc.code == code::ADDRESSING && pc.ilc == 6);
        kassert_matches!(w, Err(pc) if pc.code == code::ADDRESSING);
    }
    // The kernel's own identity map ends with memory: past it is a
    // translation exception, not an access to nowhere.
    let r = crate::arch::s390x::probe::load_u64(end);
    kassert_matches!(r, Err(pc) if matches!(pc.code, code::SEGMENT_TRANSLATION | code::PAGE_TRANSLATION | code::REGION_THIRD_TRANSLATION | code::ASCE_TYPE));
    drop(space);
    Ok(())
}

ktest_suite!(
    DAT,
    "dat",
    [
        kernel_runs_with_dat_in_home_space,
        alias_segment_space,
        alias_region3_space,
        alias_region2_space,
        alias_region1_space,
        translation_exceptions_with_code_and_teid,
        asce_type_exception,
        protection_exceptions,
        translation_specification_exception,
        addressing_beyond_memory,
    ]
);

fn change_without_invalidation_is_stale() -> KResult {
    let mut s = space(1 << 31, 1 << 31)?;
    let (a, b) = (frame(0xaa)?, frame(0xbb)?);
    let va = 0x50_0000;
    kassert_eq!(s.map(va, a.phys(), Prot::ReadWrite), Ok(()));
    let pb = Pte::new(b.phys(), Prot::ReadWrite).unwrap_or(Pte::empty());
    // One CR7 load for the whole sequence: QEMU flushes its TLB on LCTLG.
    let sp = &mut s;
    let asce = sp.asce();
    // SAFETY: the space lives across the closure; both frames are ours.
    let (before, stale, r) = unsafe {
        with_secondary_lctlg(asce, || {
            let before = hw::secondary_load_u64(va);
            let r = sp.set_pte_without_invalidation(va, pb);
            let stale = hw::secondary_load_u64(va);
            (before, stale, r)
        })
    };
    kassert_eq!(r, Ok(()));
    kassert_eq!(before, Ok(0xaa << 32));
    // The TLB still holds the old translation: the change is invisible.
    kassert_eq!(stale, Ok(0xaa << 32));
    crate::ktest::diag(format_args!(
        "a PTE rewritten without IPTE kept translating to the old frame"
    ));
    drop(s);
    give_back(a);
    give_back(b);
    Ok(())
}

fn changes_through_the_api_are_never_stale() -> KResult {
    let mut s = space(1 << 31, 1 << 31)?;
    let (a, b) = (frame(0xaa)?, frame(0xbb)?);
    let va = 0x60_0000;
    kassert_eq!(s.map(va, a.phys(), Prot::ReadWrite), Ok(()));
    let asce = s.asce();
    let sp = &mut s;
    let (pa, pb) = (a.phys(), b.phys());
    // SAFETY: the space lives across the closure; both frames are ours.
    let r = unsafe {
        with_secondary_lctlg(asce, || {
            let mut seen = Vec::new();
            for round in 0..4 {
                seen.push(hw::secondary_load_u64(va));
                let _ = sp.unmap(va);
                // After the unmap returned, the next access faults.
                seen.push(hw::secondary_load_u64(va));
                let _ = sp.map(va, if round % 2 == 0 { pb } else { pa }, Prot::ReadWrite);
            }
            seen.push(hw::secondary_load_u64(va));
            seen
        })
    };
    let want_frames = [0xaau64, 0xbb, 0xaa, 0xbb, 0xaa];
    for (i, v) in r.iter().enumerate() {
        if i % 2 == 1 {
            kassert_matches!(v, Err(pc) if pc.code == code::SEGMENT_TRANSLATION || pc.code == code::PAGE_TRANSLATION);
        } else {
            kassert_eq!(*v, Ok(want_frames[i / 2] << 32));
        }
    }
    drop(s);
    give_back(a);
    give_back(b);
    Ok(())
}

ktest_suite!(
    TLB,
    "tlb",
    [
        change_without_invalidation_is_stale,
        changes_through_the_api_are_never_stale
    ]
);

const DIFF_ADDRESSES: u32 = 10_000;

/// The first disagreement: address, software result, hardware result.
type Mismatch = (u64, Result<u64, u16>, Result<u64, ProgramCheck>);

/// Hardware and the software walker agree on 10,000 random addresses of a
/// space spanning every level (mapped, unmapped, protected).
fn hardware_matches_software_walker() -> KResult {
    let mut rng = Rng(0xd1ff_5eed_0bad_cafe);
    let mut s = space(R1_LIMIT, R1_LIMIT)?;
    let mut frames = Vec::new();
    for i in 0..8u64 {
        frames.push(frame(0x100 + i)?);
    }
    // Clusters in each level's range, so tables at every level have both
    // valid and invalid entries.
    let zones = [
        0x10_0000u64,
        0x1_2340_0000,
        0x123_4500_0000,
        0x0040_0000_0000_0000,
        0xfff0_0000_0000_0000,
    ];
    let mut mapped = Vec::new();
    for _ in 0..160 {
        let z = zones[(rng.next_u64() % zones.len() as u64) as usize];
        let va = z + (rng.next_u64() % 3) * SEGMENT_SIZE + (rng.next_u64() % 256) * PAGE_SIZE;
        let f = &frames[(rng.next_u64() % frames.len() as u64) as usize];
        let prot = if rng.next_u64().is_multiple_of(4) {
            Prot::ReadOnly
        } else {
            Prot::ReadWrite
        };
        match s.map(va, f.phys(), prot) {
            Ok(()) => mapped.push(va),
            Err(SpaceError::AlreadyMapped) => {}
            Err(e) => return kfail!("map {va:#x}: {e:?}"),
        }
    }
    let (mut ok, mut faults, mut lra_qemu, mut lra_pop, mut stores) =
        (0u32, 0u32, 0u32, 0u32, 0u32);
    let asce = s.asce();
    let sref = &s;
    let mut mismatch: Option<Mismatch> = None;
    // SAFETY: the space lives across the closure; writable frames are ours
    // and stores write back the value just read.
    unsafe {
        with_secondary_lctlg(asce, || {
            for _ in 0..DIFF_ADDRESSES {
                let r = rng.next_u64();
                let va = match r % 8 {
                    0..=2 => mapped[(r >> 8) as usize % mapped.len()] + ((r >> 32) % 512) * 8,
                    3..=4 => {
                        (mapped[(r >> 8) as usize % mapped.len()] & !(SEGMENT_SIZE - 1))
                            + ((r >> 32) % 256) * PAGE_SIZE
                    }
                    5 => {
                        (mapped[(r >> 8) as usize % mapped.len()] & !((1 << 31) - 1))
                            + ((r >> 24) % 2048) * SEGMENT_SIZE
                    }
                    _ => rng.next_u64() & !7,
                };
                let sw = sref.translate(va, NONE, false);
                let hw_r = hw::secondary_load_u64(va);
                let expect: Result<u64, u16> = match sw {
                    Ok(t) => Ok(core::ptr::read_volatile(t.real.0 as *const u64)),
                    Err(c) => Err(c),
                };
                let agree = match (&expect, &hw_r) {
                    (Ok(a), Ok(b)) => a == b,
                    (Err(c), Err(pc)) => *c == pc.code && Teid(pc.teid).address() == va & !0xfff,
                    _ => false,
                };
                if !agree && mismatch.is_none() {
                    mismatch = Some((va, expect, hw_r));
                }
                match sw {
                    Ok(t) => {
                        ok += 1;
                        let (cc, real) = hw::secondary_lrag(va);
                        if (cc, real) != (0, t.real.0) && mismatch.is_none() {
                            mismatch = Some((
                                va,
                                Ok(t.real.0),
                                Err(ProgramCheck {
                                    code: 0xffff,
                                    ilc: cc as u8,
                                    teid: real,
                                }),
                            ));
                        }
                        if let Ok(v) = hw_r {
                            let st = hw::secondary_store_u64(va, v);
                            let want_prot = t.protected;
                            let got_prot = matches!(st, Err(pc) if pc.code == code::PROTECTION);
                            if want_prot != got_prot && mismatch.is_none() {
                                mismatch = Some((va, Err(code::PROTECTION), st.map(|()| v)));
                            }
                            stores += 1;
                        }
                    }
                    Err(c) => {
                        faults += 1;
                        let (cc, r1) = hw::secondary_lrag(va);
                        // QEMU: cc 3 with 0x80000000 | code for every
                        // exception; the Principles of Operation: cc 1 (STE
                        // invalid) or 2 (PTE invalid) with the entry address.
                        if cc == 3 && r1 == 0x8000_0000 | c as u64 {
                            lra_qemu += 1;
                        } else if (cc == 1 && c == code::SEGMENT_TRANSLATION)
                            || (cc == 2 && c == code::PAGE_TRANSLATION)
                        {
                            lra_pop += 1;
                        } else if mismatch.is_none() {
                            mismatch = Some((
                                va,
                                Err(c),
                                Err(ProgramCheck {
                                    code: 0xfffe,
                                    ilc: cc as u8,
                                    teid: r1,
                                }),
                            ));
                        }
                    }
                }
            }
        })
    };
    if let Some((va, sw, hwr)) = mismatch {
        return kfail!("va {va:#x}: software {sw:x?}, hardware {hwr:x?}");
    }
    kassert_eq!(ok + faults, DIFF_ADDRESSES);
    kassert!(
        ok > 1000 && faults > 1000,
        "{} translated, {} faulted",
        ok,
        faults
    );
    crate::ktest::diag(format_args!(
        "{} addresses: {} translated ({} stores checked), {} exceptions; LRAG: {} QEMU-style (cc 3, 0x80000000|code), {} POP-style",
        DIFF_ADDRESSES, ok, stores, faults, lra_qemu, lra_pop
    ));
    drop(s);
    for f in frames {
        give_back(f);
    }
    Ok(())
}

ktest_suite!(
    DAT_DIFF,
    "dat_differential",
    [hardware_matches_software_walker]
);

fn two_pte_tables_share_one_page() -> KResult {
    let t0 = ptdesc::nr_pagetable();
    let mut s = space(1 << 31, 1 << 31)?;
    let f = frame(0x77)?;
    kassert_eq!(s.map(0x10_0000, f.phys(), Prot::ReadWrite), Ok(()));
    kassert_eq!(s.map(0x20_0000, f.phys(), Prot::ReadWrite), Ok(()));
    let (a, b) = (s.pte_table(0x10_0000), s.pte_table(0x20_0000));
    kassert!(a.is_some() && b.is_some());
    let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
    kassert_eq!(a.align_down(PAGE_SIZE), b.align_down(PAGE_SIZE));
    let pt = table::table_ptdesc(a);
    kassert!(pt.is_some());
    let pt = pt.ok_or(Outcome::Fail)?;
    kassert_eq!(pt.frag_count(), 2);
    kassert_eq!(ptdesc::nr_pagetable() - t0, 5);
    kassert_eq!(s.unmap(0x10_0000), Ok(f.phys()));
    kassert_eq!(pt.frag_count(), 1);
    kassert_eq!(ptdesc::nr_pagetable() - t0, 5);
    kassert_eq!(load_lctlg(&s, 0x20_0000), Ok(0x77 << 32));
    kassert_eq!(s.unmap(0x20_0000), Ok(f.phys()));
    kassert_eq!(ptdesc::nr_pagetable() - t0, 4);
    drop(s);
    kassert_eq!(ptdesc::nr_pagetable(), t0);
    give_back(f);
    Ok(())
}

fn map_and_unmap_1gib_leaves_no_table() -> KResult {
    let t0 = ptdesc::nr_pagetable();
    let mut s = space(1 << 31, 1 << 31)?;
    let t1 = ptdesc::nr_pagetable();
    // 1 GiB of kernel memory (frames from 0), read-only.
    let mem = crate::machine::get().map_or(0, |m| m.memory);
    let len = (1u64 << 30).min(mem);
    kassert_eq!(
        s.map_range(0x4000_0000, PhysAddr(0), len, Prot::ReadOnly),
        Ok(())
    );
    // One 2 KiB PTE table per segment (SCLP reports memory in whole MiB),
    // two per page: an odd number of segments leaves the last page half
    // used, with its free half on the space's fragment list.
    let segs = len / SEGMENT_SIZE;
    kassert_eq!(ptdesc::nr_pagetable() - t1, segs.div_ceil(2));
    kassert_eq!(s.frag_list_len() as u64, segs % 2);
    kassert_eq!(
        load_lctlg(&s, 0x4000_0000 + len - 8),
        Ok(crate::arch::s390x::probe::load_u64(len - 8).unwrap_or(1))
    );
    let st = s.unmap_range(0x4000_0000, len);
    kassert_eq!(
        st.map(|st| (st.pages, st.flushes, st.tables_freed)),
        Ok((len / PAGE_SIZE, segs, segs))
    );
    kassert_eq!(ptdesc::nr_pagetable(), t1);
    kassert_eq!(s.frag_list_len(), 0);
    drop(s);
    kassert_eq!(ptdesc::nr_pagetable(), t0);
    Ok(())
}

ktest_suite!(
    FRAGMENTS,
    "pte_fragments",
    [
        two_pte_tables_share_one_page,
        map_and_unmap_1gib_leaves_no_table
    ]
);

fn unmap_frees_tables_only_after_the_flush() -> KResult {
    let mut s = space(1 << 31, 1 << 31)?;
    let base = 0x1000_0000u64;
    let len = 64 << 20;
    kassert_eq!(s.map_range(base, PhysAddr(0), len, Prot::ReadOnly), Ok(()));
    let t_mapped = ptdesc::nr_pagetable();
    let (i0, d0, _) = tlb::flush_counts();
    let st = s.unmap_range(base, len);
    let (i1, d1, _) = tlb::flush_counts();
    kassert!(st.is_ok());
    let st = st.unwrap_or_default();
    // 64 whole segments: one IDTE each, no IPTE at all.
    kassert_eq!(
        (st.pages, st.flushes, st.tables_freed),
        (len / PAGE_SIZE, 64, 64)
    );
    kassert_eq!((i1 - i0, d1 - d0), (0, 64));
    kassert_eq!(t_mapped - ptdesc::nr_pagetable(), 32);
    // Reads through the old range fault now.
    for off in [0, len / 2, len - 8] {
        kassert_matches!(load_lctlg(&s, base + off), Err(pc) if pc.code == code::SEGMENT_TRANSLATION);
    }
    // The freed table pages come back from the allocator (per-CPU list is
    // LIFO); garbage that looks like valid PTEs must not matter.
    let g = frame(0x99)?;
    let fake = Pte::new(g.phys(), Prot::ReadWrite)
        .unwrap_or(Pte::empty())
        .raw();
    let mut reused = Vec::new();
    for _ in 0..64 {
        let Ok(mut p) = mm::alloc_pages(0, AllocFlags::empty()) else {
            break;
        };
        for w in p.as_mut_slice().chunks_exact_mut(8) {
            w.copy_from_slice(&fake.to_be_bytes());
        }
        reused.push(p);
    }
    for off in [0, 0x1000, len / 2, len - 8] {
        kassert_matches!(load_lctlg(&s, base + off), Err(pc) if pc.code == code::SEGMENT_TRANSLATION);
    }
    crate::ktest::diag(format_args!(
        "unmapping 64 MiB: {} flushes (IDTE per segment) instead of {} IPTEs; {} tables freed after them",
        st.flushes,
        len / PAGE_SIZE,
        st.tables_freed
    ));
    for p in reused {
        give_back(p);
    }
    give_back(g);
    drop(s);
    Ok(())
}

fn partial_unmap_counts_ipte_per_page() -> KResult {
    let mut s = space(1 << 31, 1 << 31)?;
    kassert_eq!(
        s.map_range(0x20_0000, PhysAddr(0), 3 * SEGMENT_SIZE, Prot::ReadOnly),
        Ok(())
    );
    // Half of the middle segment: one IPTE per page, the table stays.
    let st = s.unmap_range(0x30_0000, SEGMENT_SIZE / 2);
    kassert_eq!(
        st.map(|st| (st.pages, st.flushes, st.tables_freed)),
        Ok((128, 128, 0))
    );
    kassert_matches!(load_lctlg(&s, 0x30_0000), Err(pc) if pc.code == code::PAGE_TRANSLATION);
    kassert!(load_lctlg(&s, 0x38_0000).is_ok());
    drop(s);
    Ok(())
}

ktest_suite!(
    GATHER,
    "mmu_gather",
    [
        unmap_frees_tables_only_after_the_flush,
        partial_unmap_counts_ipte_per_page
    ]
);

fn accessors_round_trip() -> KResult {
    // Frees below are refused on purpose.
    crate::mm::expect_refusals(true);
    let mut s = space(1 << 42, 1 << 42)?;
    let f = frame(0x55)?;
    kassert_eq!(s.map(0x1_0000_0000, f.phys(), Prot::ReadWrite), Ok(()));
    // Top (region-third) table, segment table, PTE table: page ↔ ptdesc ↔ address.
    let seg = s.segment_entry_addr(0x1_0000_0000).ok_or(Outcome::Fail)?;
    let pto = s.pte_table(0x1_0000_0000).ok_or(Outcome::Fail)?;
    for pa in [
        s.asce().origin(),
        seg.align_down(16384),
        pto.align_down(PAGE_SIZE),
    ] {
        let va = table::phys_to_virt(pa);
        let pt = ptdesc::virt_to_ptdesc(va);
        kassert!(pt.is_ok(), "{:?}", pt.err());
        let pt = pt.map_err(|_| Outcome::Fail)?;
        kassert_eq!(ptdesc::ptdesc_address(pt), va);
        let page = ptdesc::ptdesc_page(pt);
        kassert!(ptdesc::page_ptdesc(page).is_ok_and(|p| core::ptr::eq(p, pt)));
        kassert!(mm::page_to_pfn(page).is_some_and(|pfn| pfn == pa.pfn()));
    }
    // pmd_pgtable_page: every segment-entry address of the table.
    let seg_table = seg.align_down(16384);
    let head = ptdesc::virt_to_ptdesc(table::phys_to_virt(seg_table)).map_err(|_| Outcome::Fail)?;
    for i in [0u64, 1, 511, 512, 1024, 2047] {
        let pmd = table::phys_to_virt(PhysAddr(seg_table.0 + i * 8));
        kassert!(
            ptdesc::pmd_ptdesc(pmd).is_ok_and(|p| core::ptr::eq(p, head)),
            "entry {}",
            i
        );
        kassert!(ptdesc::pmd_pgtable_page(pmd)
            .is_some_and(|p| core::ptr::eq(p, ptdesc::ptdesc_page(head))));
    }
    // pte_lockptr is the PTE table page's lock.
    let l = ptdesc::pte_lockptr(table::phys_to_virt(pto));
    kassert!(l.is_ok());
    // A page that is not a page table is refused.
    let p = mm::alloc_pages(0, AllocFlags::empty()).map_err(|_| Outcome::Fail)?;
    kassert_matches!(
        ptdesc::page_ptdesc(p.page()),
        Err(ptdesc::PtDescError::NotPageTable(Some(
            mm::page::PageType::Allocated
        )))
    );
    kassert_matches!(ptdesc::virt_to_ptdesc(p.virt()), Err(_));
    give_back(p);
    // A ctor on the wrong kind of block is refused and hands it back
    // unchanged: the wrong order, or a page someone else holds. (A table
    // whose dtor has not run cannot even be passed to `pagetable_free`:
    // it is a `Frame<PtDesc>`, not `Pages`.)
    let t0 = ptdesc::nr_pagetable();
    let p = ptdesc::pagetable_alloc(2).map_err(|_| Outcome::Fail)?;
    let p = match ptdesc::pagetable_pte_ctor(p) {
        Err((p, e)) => {
            kassert_eq!(e, ptdesc::PtDescError::WrongOrder(2));
            p
        }
        Ok(_) => return kfail!("a PTE ctor took an order-2 block"),
    };
    kassert_eq!(ptdesc::nr_pagetable(), t0);
    let p = match ptdesc::pagetable_pmd_ctor(p) {
        Ok(pt) => ptdesc::pagetable_dtor(pt).or_else(|(_, e)| kfail!("dtor: {e:?}"))?,
        Err((_, e)) => return kfail!("pmd ctor of an order-2 block: {e:?}"),
    };
    kassert_eq!(ptdesc::nr_pagetable(), t0);
    kassert!(ptdesc::pagetable_free(p).is_ok());
    let p = ptdesc::pagetable_alloc(0).map_err(|_| Outcome::Fail)?;
    mm::testing::get_page(p.page());
    let p = match ptdesc::pagetable_pte_ctor(p) {
        Err((p, e)) => {
            kassert_eq!(
                e,
                ptdesc::PtDescError::NotAllocated(Some(mm::page::PageType::Allocated))
            );
            p
        }
        Ok(_) => return kfail!("a PTE ctor took a page with two references"),
    };
    mm::testing::put_page(p.page());
    let pt = ptdesc::pagetable_pte_ctor(p).or_else(|(_, e)| kfail!("ctor: {e:?}"))?;
    kassert_eq!(ptdesc::nr_pagetable(), t0 + 1);
    ptdesc::pagetable_dtor_free(pt);
    kassert_eq!(ptdesc::nr_pagetable(), t0);
    drop(s);
    give_back(f);
    Ok(())
}

fn edat1_large_segment() -> KResult {
    if !facility::has_facility(facility::EDAT1) {
        kskip!("no EDAT-1 on this CPU (QEMU TCG cannot enable it)");
    }
    let mut s = space(1 << 31, 1 << 31)?;
    let f = frame(0x66)?;
    kassert_eq!(s.map(0x100_0000, f.phys(), Prot::ReadWrite), Ok(()));
    let large = SegmentEntry::large(PhysAddr(0), true).unwrap_or(SegmentEntry::empty());
    let pto = s.pte_table(0x100_0000).ok_or(Outcome::Fail)?;
    // SAFETY: maps the first MiB of memory read-only.
    let r = unsafe { s.replace_segment_entry(0x100_0000, large) };
    kassert_eq!(r, Ok(()));
    let fac = Facilities {
        edat1: true,
        edat2: facility::has_facility(facility::EDAT2),
    };
    kassert_eq!(s.translate(0x100_0008, fac, false).map(|t| t.real.0), Ok(8));
    kassert_eq!(
        load_lctlg(&s, 0x100_0008),
        Ok(crate::arch::s390x::probe::load_u64(8).unwrap_or(1))
    );
    // SAFETY: back to the page table.
    let r = unsafe {
        s.replace_segment_entry(
            0x100_0000,
            SegmentEntry::table(pto, false).unwrap_or(SegmentEntry::empty()),
        )
    };
    kassert_eq!(r, Ok(()));
    drop(s);
    give_back(f);
    Ok(())
}

fn edat2_large_region() -> KResult {
    if !facility::has_facility(facility::EDAT2) {
        kskip!("no EDAT-2 on this CPU (QEMU TCG cannot enable it)");
    }
    let mut s = space(1 << 42, 1 << 42)?;
    let f = frame(0x67)?;
    let va = 0x2_0000_0000u64;
    kassert_eq!(s.map(va, f.phys(), Prot::ReadWrite), Ok(()));
    let seg = s
        .entry_addr_for_test(va, Level::Region3)
        .ok_or(Outcome::Fail)?;
    // SAFETY: reads only: the entry is put back below.
    let old = super::entry::RegionEntry::from_raw(
        unsafe { table::entry(seg) }.load(core::sync::atomic::Ordering::Acquire),
    );
    let large = super::entry::RegionEntry::large(PhysAddr(0), true).unwrap_or(old);
    // SAFETY: maps the first 2 GiB of real storage read-only.
    let r = unsafe { s.replace_region_entry(va, Level::Region3, large) };
    kassert_eq!(r, Ok(()));
    let fac = Facilities {
        edat1: true,
        edat2: true,
    };
    kassert_eq!(s.translate(va + 8, fac, false).map(|t| t.real.0), Ok(8));
    kassert_eq!(
        load_lctlg(&s, va + 8),
        Ok(crate::arch::s390x::probe::load_u64(8).unwrap_or(1))
    );
    // SAFETY: the original entry.
    let r = unsafe { s.replace_region_entry(va, Level::Region3, old) };
    kassert_eq!(r, Ok(()));
    drop(s);
    give_back(f);
    Ok(())
}

ktest_suite!(PTDESC, "ptdesc", [accessors_round_trip]);
ktest_suite!(EDAT, "dat_edat", [edat1_large_segment, edat2_large_region]);
