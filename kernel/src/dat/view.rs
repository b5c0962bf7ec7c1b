//! Teaching view: `dat.walk=ADDR[,space]` prints each level of the
//! translation of ADDR (table, index, entry with its bits decoded), the
//! software walker's result and the hardware's LRAG answer beside it. The
//! space is the kernel's identity map (`kernel`, the default) or `demo`: a
//! region-first space with ADDR mapped, so the walk goes through all five
//! levels.

use super::context::AsceRef;
use super::entry::{Prot, Pte, RegionEntry, SegmentEntry};
use super::kernel::with_secondary_lctlg;
use super::space::AddressSpace;
use super::table::PhysReader;
use super::walk::{walk_traced, Facilities, Step};
use crate::arch::pgm::{code, code_name};
use crate::arch::s390x::{dat as hw, facility};
use crate::cmdline::parse_size;
use crate::kprintln;
use crate::mm::{self, AllocFlags};

/// Why `dat.walk=` could not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkViewError {
    /// Not `ADDR` or `ADDR,kernel` or `ADDR,demo`.
    BadArgument,
    NoMemory,
}

/// Run the `dat.walk=` view for `arg`.
pub fn dat_walk(arg: &str) -> Result<(), WalkViewError> {
    let (addr, space) = match arg.split_once(',') {
        Some((a, s)) => (a, s),
        None => (arg, "kernel"),
    };
    let va = parse_size(addr).map_err(|_| WalkViewError::BadArgument)?;
    match space {
        "kernel" => {
            let asce = super::kernel::asce_ref().ok_or(WalkViewError::BadArgument)?;
            show(asce, va, "the kernel's identity map");
            Ok(())
        }
        "demo" => {
            let mut s =
                AddressSpace::new(1 << 64, 1 << 64, false).map_err(|_| WalkViewError::NoMemory)?;
            let f = mm::alloc_pages(0, AllocFlags::ZERO).map_err(|_| WalkViewError::NoMemory)?;
            let r = s.map(va & !0xfff, f.phys(), Prot::ReadOnly);
            if r.is_ok() {
                show(
                    &s.asce_ref(),
                    va,
                    "a demo region-first space, ADDR mapped read-only",
                );
            }
            drop(s);
            let freed = mm::free_pages(f).is_ok();
            match (r, freed) {
                (Ok(()), true) => Ok(()),
                (Err(_), _) => Err(WalkViewError::BadArgument),
                (_, false) => Err(WalkViewError::NoMemory),
            }
        }
        _ => Err(WalkViewError::BadArgument),
    }
}

/// An entry's fields, as the Principles of Operation name them.
fn decode(step: &Step) -> alloc::string::String {
    use alloc::format;
    let flag = |on: bool, name: &str| {
        if on {
            format!(" {name}")
        } else {
            alloc::string::String::new()
        }
    };
    match step.table {
        "page" => {
            let p = Pte::from_raw(step.raw);
            format!(
                "PTE: frame {:#x}{}{}{}",
                p.frame().0,
                flag(p.is_invalid(), "I(invalid)"),
                flag(p.is_protected(), "P(protect)"),
                flag(p.is_iep(), "IEP"),
            )
        }
        "segment" => {
            let e = SegmentEntry::from_raw(step.raw);
            format!(
                "STE: page table {:#x} TT {}{}{}{}",
                e.page_table().0,
                e.tt(),
                flag(e.is_invalid(), "I(invalid)"),
                flag(e.is_protected(), "P(protect)"),
                flag(e.is_large(), "FC(large, EDAT-1)"),
            )
        }
        _ => {
            let e = RegionEntry::from_raw(step.raw);
            format!(
                "RTE: next table {:#x} TT {:?} TF {} TL {}{}{}",
                e.next_origin().0,
                e.level(),
                e.tf(),
                e.tl(),
                flag(e.is_invalid(), "I(invalid)"),
                flag(e.is_protected(), "P(protect, EDAT-1)"),
            )
        }
    }
}

fn show(space: &AsceRef, va: u64, what: &str) {
    let asce = space.asce();
    kprintln!("dat.walk {:#x} in {}, {:?}:", va, what, asce);
    let fac = Facilities {
        edat1: facility::has_facility(facility::EDAT1),
        edat2: facility::has_facility(facility::EDAT2),
    };
    let mut steps = alloc::vec::Vec::new();
    let r = walk_traced(&PhysReader, asce, va, fac, &mut |s| steps.push(s));
    for s in &steps {
        kprintln!(
            "  {:13} table {:#012x} index {:4} entry {:#012x} = {:#018x}  {}",
            s.table,
            s.origin.0,
            s.index,
            s.origin.0 + s.index as u64 * 8,
            s.raw,
            decode(s)
        );
    }
    match r {
        Ok(t) => kprintln!(
            "  software walk: real address {:#x} ({} KiB frame{})",
            t.real.0,
            t.size >> 10,
            if t.protected { ", read-only" } else { "" }
        ),
        Err(c) => kprintln!("  software walk: {} exception ({:#04x})", code_name(c), c),
    }
    // SAFETY: the space's tables stay live across the call (the kernel's
    // always; the demo space is dropped only after `show` returns).
    let (cc, r1) = unsafe { with_secondary_lctlg(space, || hw::secondary_lrag(va)) };
    let note = match r {
        Ok(t) if cc == 0 && r1 == t.real.0 => "",
        // QEMU's form of an exception, where the PoP gives cc 1/2 and the
        // entry's address (qemu_deviations: lrag-cc3).
        Err(c)
            if cc == 3
                && r1 == 0x8000_0000 | c as u64
                && matches!(c, code::SEGMENT_TRANSLATION | code::PAGE_TRANSLATION) =>
        {
            "  (QEMU's form: lrag-cc3)"
        }
        Err(_) if cc != 0 => "",
        _ => "  (DISAGREES with the software walk)",
    };
    kprintln!("  LRAG:          cc {}, r1 {:#x}{}", cc, r1, note);
}
