//! The per-CPU glue of the page allocator: each CPU's `PcpList`, found
//! through its lowcore, and the operations that run on "this CPU's lists"
//! (Linux's `this_cpu_ptr(zone->per_cpu_pageset)` and `local_lock`).

#[cfg(not(target_arch = "s390x"))]
use core::sync::atomic::{AtomicU32, Ordering};

use super::pcp::PcpList;
use super::{memmap, zone};

const MAX_PCP: usize = crate::sclp::info::MAX_CPUS;

/// Each CPU's lists. A CPU reaches its own through the `PCP` slot of its
/// lowcore (Linux s390 finds per-CPU data through the lowcore too), so the
/// fast path costs one load to find them.
struct PerCpuLists([PcpList<'static>; MAX_PCP]);

// SAFETY: `PcpList` is not `Sync` because only its owner may push and pop.
// Element i is only changed by CPU i, which reaches it through its own
// lowcore slot with interruptions masked (`with_pcp`); host tests, whose
// threads all play CPU 0, take a flag first. Other CPUs only read
// `count()`, an atomic load.
unsafe impl Sync for PerCpuLists {}

static PCP: PerCpuLists = PerCpuLists([const { PcpList::new() }; MAX_PCP]);

/// What the `PCP` lowcore slot of CPU `cpu` holds: the address of its list.
/// `smp` writes it into each secondary's lowcore before starting it.
#[cfg(target_arch = "s390x")]
pub(crate) fn pcp_slot_value(cpu: usize) -> u64 {
    core::ptr::from_ref(&PCP.0[cpu % MAX_PCP]).expose_provenance() as u64
}

/// Set the boot CPU's `PCP` lowcore slot (first thing `start_kernel` does).
#[cfg(target_arch = "s390x")]
pub(crate) fn init_boot_cpu_pcp() {
    // SAFETY: PCP is zdat's software slot; nothing reads it before this.
    unsafe {
        crate::arch::s390x::insn::lowcore_write_u64(crate::arch::lowcore::PCP, pcp_slot_value(0))
    };
}

/// Run `f` on this CPU's list.
///
/// On s390x nothing else can be touching it: only this CPU uses it, and
/// kernel code runs with external and I/O interruptions masked, so nothing
/// can interrupt a list operation half-way (see `pcp`). Host tests run
/// threads that all play CPU 0, so there a flag admits one at a time and
/// the others fall back to the zone lock (`None`).
#[inline(always)]
pub(super) fn with_pcp<R>(f: impl FnOnce(&PcpList<'static>) -> R) -> Option<R> {
    #[cfg(target_arch = "s390x")]
    {
        debug_assert!(
            crate::arch::s390x::insn::psw_mask()
                & (crate::arch::psw::mask::EXT | crate::arch::psw::mask::IO)
                == 0,
            "page allocator entered with interruptions enabled"
        );
        let slot = crate::arch::s390x::insn::lowcore_read_u64(crate::arch::lowcore::PCP);
        // SAFETY: the slot holds the address of an element of `PCP` (set by
        // `init_boot_cpu_pcp` or `smp` before the CPU runs any other code).
        Some(f(unsafe {
            &*core::ptr::with_exposed_provenance::<PcpList<'static>>(slot as usize)
        }))
    }
    #[cfg(not(target_arch = "s390x"))]
    {
        static BUSY: AtomicU32 = AtomicU32::new(0);
        if BUSY
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let r = f(&PCP.0[0]);
        BUSY.store(0, Ordering::Release);
        Some(r)
    }
}

/// This CPU's lists went above `PCP_HIGH`: give batches back (Linux
/// free_pcppages_bulk).
#[cold]
#[inline(never)]
pub(super) fn drain_pcp_batch() {
    let map = memmap();
    with_pcp(|pcp| pcp.drain_to_high(map, zone()));
}

/// Pages on every CPU's lists.
pub fn nr_pcp_pages() -> u64 {
    PCP.0.iter().map(PcpList::count).sum()
}

/// Return this CPU's listed blocks to the buddy lists so they can merge.
pub fn drain_pcp() {
    let map = memmap();
    with_pcp(|pcp| pcp.drain(map, zone(), u64::MAX));
}
