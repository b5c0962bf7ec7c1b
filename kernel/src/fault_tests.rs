//! Fault-injection sweeps: for every allocation an operation makes, make
//! exactly that one fail, and check the operation returns an error, leaks
//! no frame or table, and leaves a structure its checker accepts.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::sync::Mutex;

use crate::dat::entry::{Level, Prot};
use crate::dat::space::AddressSpace;
use crate::gmap::{self, Access, Gmap, HostMm};
use crate::ktest::{KResult, Outcome};
use crate::mm::addr::PhysAddr;
use crate::mm::{self, fail, heap, ptdesc};
use crate::{kassert, kassert_eq, ktest_suite};

/// Why these cases (and `gmap.protect_range_failure_changes_nothing`)
/// skip under `fail.alloc=N` from the command line.
pub const SKIP_CMDLINE_ARMED: &str = "fail.alloc=N from the command line is pending: this case injects its own failures and counts them, which it cannot while another is armed (the command line's countdown is left untouched)";

/// Skip the case while `fail.alloc=N` from the command line is pending.
pub fn skip_while_cmdline_armed() -> KResult {
    if fail::cmdline_pending() {
        return Err(Outcome::Skip(SKIP_CMDLINE_ARMED));
    }
    Ok(())
}

/// Free pages, page-table pages, gmap-table pages and (memdesc) the
/// descriptors in use: what a failed operation must leave as it found.
fn counts() -> (u64, u64, u64, u64) {
    mm::drain_pcp();
    #[cfg(feature = "memdesc")]
    let descs = mm::desc::nr_desc();
    #[cfg(not(feature = "memdesc"))]
    let descs = 0;
    (
        mm::nr_free_pages_and_desc_slabs(),
        ptdesc::nr_pagetable(),
        gmap::table::nr_gmap_table_pages(),
        descs,
    )
}

/// Run `op` on a fresh state for n = 1, 2, ... with the n-th allocation
/// failing, until `op` makes fewer than n allocations. Returns how many
/// failures were injected (and survived).
fn sweep<S>(
    mut setup: impl FnMut() -> Result<S, Outcome>,
    mut op: impl FnMut(&mut S) -> bool,
    mut verify_failed: impl FnMut(&S) -> KResult,
) -> Result<u64, Outcome> {
    for n in 1..10_000u64 {
        let before = counts();
        let mut st = setup()?;
        fail::fail_alloc_nth(n);
        let ok = op(&mut st);
        let untouched = fail::pending();
        fail::fail_alloc_off();
        if untouched {
            // The operation made fewer than n allocations: all points swept.
            kassert!(
                ok,
                "operation failed without an injected failure (n = {})",
                n
            );
            drop(st);
            kassert_eq!(counts(), before);
            // Allocations 1..n-1 each failed once in an earlier round.
            return Ok(n - 1);
        }
        kassert!(
            !ok,
            "allocation {} failed but the operation reported success",
            n
        );
        verify_failed(&st)?;
        drop(st);
        kassert_eq!(counts(), before);
    }
    crate::ktest::report_failure(file!(), line!(), format_args!("sweep did not end"));
    Err(Outcome::Fail)
}

fn space_map_survives_every_failed_allocation() -> KResult {
    skip_while_cmdline_armed()?;
    // A segment-table space mapping an address that needs three more
    // levels on top and every table below.
    let n = sweep(
        || AddressSpace::new(1 << 31, 1 << 64, false).map_err(|_| Outcome::Fail),
        |s| {
            s.map(0x0123_4567_8900_0000, PhysAddr(0x1000), Prot::ReadWrite)
                .is_ok()
        },
        |s| {
            kassert_eq!(s.asce().level(), Level::Segment);
            kassert_eq!(s.lookup(0x0123_4567_8900_0000), None);
            kassert!(s.check().is_ok(), "{:?}", s.check());
            Ok(())
        },
    )?;
    // A range over three segments of an existing space.
    let m = sweep(
        || AddressSpace::new(1 << 31, 1 << 31, false).map_err(|_| Outcome::Fail),
        |s| {
            s.map_range(0x1000_0000, PhysAddr(0), 3 << 20, Prot::ReadOnly)
                .is_ok()
        },
        |s| {
            kassert_eq!(s.lookup(0x1000_0000), None);
            kassert_eq!(s.check().map(|c| c.pte_tables), Ok(0));
            Ok(())
        },
    )?;
    // A range whose later pages need the top grown (it crosses 2 GiB): a
    // failure after the growth must undo it too, not only the pages.
    let k = sweep(
        || AddressSpace::new(1 << 31, 1 << 42, false).map_err(|_| Outcome::Fail),
        |s| {
            s.map_range(0x7ff0_0000, PhysAddr(0), 3 << 20, Prot::ReadOnly)
                .is_ok()
        },
        |s| {
            kassert_eq!(s.asce().level(), Level::Segment);
            kassert_eq!(s.lookup(0x7ff0_0000), None);
            kassert_eq!(s.check().map(|c| (c.crst_tables, c.pte_tables)), Ok((1, 0)));
            Ok(())
        },
    )?;
    crate::ktest::diag(format_args!(
        "address-space map: {} + {} + {} injected failures survived",
        n, m, k
    ));
    kassert!(n >= 4 && m >= 2 && k >= 3);
    TOTAL.lock().0 += n + m + k;
    Ok(())
}

type Host = Arc<Mutex<HostMm>>;

fn host() -> Result<Host, Outcome> {
    HostMm::new(1 << 31).map_err(|_| Outcome::Fail)
}

fn gmap_create_survives_every_failed_allocation() -> KResult {
    skip_while_cmdline_armed()?;
    let n = sweep(
        || Ok((host()?, None::<Gmap>)),
        |(h, g)| match gmap::gmap_create(h, u64::MAX) {
            Ok(x) => {
                *g = Some(x);
                true
            }
            Err(_) => false,
        },
        |(_, g)| {
            kassert!(g.is_none());
            Ok(())
        },
    )?;
    crate::ktest::diag(format_args!(
        "gmap_create: {} injected failures survived",
        n
    ));
    kassert!(n >= 1);
    TOTAL.lock().0 += n;
    Ok(())
}

fn gmap_fault_survives_every_failed_allocation() -> KResult {
    skip_while_cmdline_armed()?;
    let gaddr = 0xfff0_0000_0010_0000u64;
    let n = sweep(
        || {
            let h = host()?;
            let g = gmap::gmap_create(&h, u64::MAX).map_err(|_| Outcome::Fail)?;
            g.gmap_map_segment(0x1000_0000, gaddr & !0xfffff, 1 << 20)
                .map_err(|_| Outcome::Fail)?;
            Ok((g, h))
        },
        |(g, _)| g.gmap_fault(gaddr + 0x3000, Access::Write).is_ok(),
        |(g, h)| {
            kassert!(g.segment_entry_value(gaddr).is_invalid());
            kassert_eq!(g.check(), Ok(0));
            kassert!(h.lock().space().check().is_ok());
            Ok(())
        },
    )?;
    crate::ktest::diag(format_args!(
        "gmap_fault/gmap_link: {} injected failures survived",
        n
    ));
    kassert!(n >= 4);
    TOTAL.lock().0 += n;
    Ok(())
}

fn heap_growth_survives_a_failed_allocation() -> KResult {
    skip_while_cmdline_armed()?;
    let n = sweep(
        || Ok((heap::size(), Vec::<u8>::new())),
        |(_, v)| v.try_reserve_exact(6 << 20).is_ok(),
        |(size, v)| {
            kassert_eq!(v.capacity(), 0);
            kassert_eq!(heap::size(), *size);
            Ok(())
        },
    )?;
    crate::ktest::diag(format_args!(
        "heap growth: {} injected failures survived",
        n
    ));
    kassert!(n >= 1);
    TOTAL.lock().0 += n;
    kassert!(mm::check().is_ok());
    crate::ktest::diag(format_args!(
        "{} injected failures survived in all",
        TOTAL.lock().0
    ));
    Ok(())
}

/// (injected failures survived across the suite,)
static TOTAL: Mutex<(u64,)> = Mutex::new((0,));

ktest_suite!(
    FAULT_INJECTION,
    "fault_injection",
    [
        space_map_survives_every_failed_allocation,
        gmap_create_survives_every_failed_allocation,
        gmap_fault_survives_every_failed_allocation,
        heap_growth_survives_a_failed_allocation,
    ]
);
