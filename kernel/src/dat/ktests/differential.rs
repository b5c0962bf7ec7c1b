//! The dat_differential suite: the hardware and the software walker agree
//! on 10,000 random addresses of a space spanning every level.

use alloc::vec::Vec;

use super::{give_back, space, NONE, R1_LIMIT};
use crate::arch::pgm::{code, ProgramCheck, Teid};
use crate::arch::s390x::dat as hw;
use crate::dat::entry::{Prot, SEGMENT_SIZE};
use crate::dat::kernel::with_secondary_lctlg;
use crate::dat::space::SpaceError;
use crate::ktest::fixtures::tagged_frame as frame;
use crate::ktest::{KResult, Rng};
use crate::mm::addr::PAGE_SIZE;
use crate::{kassert, kassert_eq, kfail};

const DIFF_ADDRESSES: u32 = 10_000;

/// The first disagreement: address, software result, hardware result.
type Mismatch = (u64, Result<u64, u16>, Result<u64, ProgramCheck>);

/// Hardware and the software walker agree on 10,000 random addresses of a
/// space spanning every level (mapped, unmapped, protected).
pub(super) fn hardware_matches_software_walker() -> KResult {
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
    let asce = s.asce_ref();
    let sref = &s;
    let mut mismatch: Option<Mismatch> = None;
    // SAFETY: the space lives across the closure; writable frames are ours
    // and stores write back the value just read.
    unsafe {
        with_secondary_lctlg(&asce, || {
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
