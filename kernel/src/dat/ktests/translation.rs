//! What the hardware translates (the dat and dat_edat suites): the kernel
//! runs with DAT in home space; one frame aliased at several addresses of a
//! space of each ASCE type; translation, ASCE-type, protection and
//! translation-specification exceptions with their codes and TEIDs; an
//! addressing exception past the end of memory; EDAT-1 large segments and
//! EDAT-2 large regions where the CPU has them.

use super::{give_back, in_space_lctlg, load_lctlg, space, store_lctlg, NONE, R1_LIMIT};
use crate::arch::pgm::{code, ProgramCheck, Teid, TeidAccess};
use crate::arch::psw::mask;
use crate::arch::s390x::{dat as hw, facility, insn};
use crate::dat::entry::{Level, Prot, Pte, SegmentEntry, SEGMENT_SIZE};
use crate::dat::kernel::with_secondary_lctlg;
use crate::dat::space::AddressSpace;
use crate::dat::table;
use crate::dat::walk::Facilities;
use crate::ktest::fixtures::tagged_frame as frame;
use crate::ktest::{KResult, Outcome};
use crate::mm::addr::PhysAddr;
use crate::{kassert, kassert_eq, kassert_matches, kskip};

pub(super) fn kernel_runs_with_dat_in_home_space() -> KResult {
    let m = insn::psw_mask();
    kassert!(m & mask::DAT != 0, "PSW mask {:#x}", m);
    kassert_eq!(m & mask::ASC, mask::ASC_HOME);
    let asce = crate::dat::kernel::asce().map(|a| a.raw());
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

pub(super) fn alias_segment_space() -> KResult {
    alias_in(
        1 << 31,
        &[0x10_0000, 0x10_1000, 0x7fff_f000],
        Level::Segment,
    )
}

pub(super) fn alias_region3_space() -> KResult {
    alias_in(
        1 << 42,
        &[0x1000, 0x8000_0000, 0x3ff_ffff_f000],
        Level::Region3,
    )
}

pub(super) fn alias_region2_space() -> KResult {
    alias_in(
        1 << 53,
        &[0x2000, 0x400_0000_0000, 0x1f_ffff_ffff_f000],
        Level::Region2,
    )
}

pub(super) fn alias_region1_space() -> KResult {
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

pub(super) fn translation_exceptions_with_code_and_teid() -> KResult {
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

pub(super) fn asce_type_exception() -> KResult {
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

pub(super) fn protection_exceptions() -> KResult {
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

pub(super) fn translation_specification_exception() -> KResult {
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
pub(super) fn addressing_beyond_memory() -> KResult {
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
            with_secondary_lctlg(&space.asce_ref(), || {
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

pub(super) fn edat1_large_segment() -> KResult {
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

pub(super) fn edat2_large_region() -> KResult {
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
    let old = crate::dat::entry::RegionEntry::from_raw(
        unsafe { table::entry(seg) }.load(core::sync::atomic::Ordering::Acquire),
    );
    let large = crate::dat::entry::RegionEntry::large(PhysAddr(0), true).unwrap_or(old);
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
