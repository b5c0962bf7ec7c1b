//! The README's "Writing a test" example. It is compiled and run with the
//! other suites, and `x.py test --selftest` checks that the README shows
//! this file verbatim.

use crate::arch::pgm::code;
use crate::arch::s390x::dat as hw;
use crate::dat::entry::Prot;
use crate::dat::kernel::with_secondary_lctlg;
use crate::dat::space::AddressSpace;
use crate::ktest::fixtures::{free_frame, tagged_frame};
use crate::ktest::KResult;
use crate::{kassert_eq, kassert_matches, kfail, ktest_suite};

/// A page mapped in a test space reads its frame; the next segment, never
/// mapped, takes a segment-translation exception (the kernel runs with DAT
/// on, so an unmapped address is a translation fault, not an addressing one).
fn mapped_page_reads_its_frame_and_the_next_segment_faults() -> KResult {
    let mut s = AddressSpace::new(1 << 31, 1 << 31, false)
        .or_else(|e| kfail!("AddressSpace::new: {e:?}"))?;
    // Every doubleword of the frame reads 0x42 << 32 | its offset.
    let f = tagged_frame(0x42)?;
    kassert_eq!(s.map(0x10_0000, f.phys(), Prot::ReadOnly), Ok(()));
    // SAFETY: `s` lives across the call, so its tables stay valid while
    // they are loaded in CR7.
    let (mapped, beyond) = unsafe {
        with_secondary_lctlg(&s.asce_ref(), || {
            (
                hw::secondary_load_u64(0x10_0008),
                hw::secondary_load_u64(0x20_0000),
            )
        })
    };
    kassert_eq!(mapped, Ok((0x42 << 32) | 8), "the frame is {:?}", f.phys());
    kassert_matches!(beyond, Err(pc) if pc.code == code::SEGMENT_TRANSLATION);
    // The space gives its tables back; the frame goes back checked (a
    // refused free fails the case). Anything left over is a LEAK.
    drop(s);
    free_frame(f)
}

ktest_suite!(
    EXAMPLE,
    "example",
    [mapped_page_reads_its_frame_and_the_next_segment_faults]
);
