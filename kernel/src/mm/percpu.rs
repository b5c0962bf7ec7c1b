//! The per-CPU glue of the page allocator: each CPU's `PcpList`, found
//! through its lowcore, and the operations that run on "this CPU's lists"
//! (Linux's `this_cpu_ptr(zone->per_cpu_pageset)` and `pcp_spin_trylock`),
//! or on every CPU's at once (`mm::check`).
//!
//! SMP: the lists have a lock each, so that another CPU can hold them still
//! (Linux took the same step in 6.0 so that one CPU can drain another's).
//! It costs the owner a compare-and-swap and a store per operation (8 guest
//! instructions per order-0 alloc and free, `x.py bench`); without it
//! nothing can read another CPU's lists and the memmap consistently while
//! that CPU allocates.

use core::sync::atomic::{AtomicU32, Ordering};

use super::pcp::PcpList;
use super::{memmap, zone};

const MAX_PCP: usize = crate::sclp::info::MAX_CPUS;

/// One CPU's lists and their lock (Linux's `per_cpu_pages` and its
/// `lock`). The owner takes the lock with a try-lock around every list
/// operation and goes to the zone when it is taken; another CPU takes it
/// to reach the lists (`with_all_pcp`), as Linux's drain of another CPU
/// does.
struct PerCpuPages {
    list: PcpList<'static>,
    /// 1 while someone works on `list`.
    lock: AtomicU32,
}

impl PerCpuPages {
    /// Linux pcp_spin_trylock.
    #[inline(always)]
    fn trylock(&self) -> bool {
        self.lock
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    fn lock(&self) {
        while !self.trylock() {
            core::hint::spin_loop();
        }
    }

    #[inline(always)]
    fn unlock(&self) {
        self.lock.store(0, Ordering::Release);
    }
}

/// Each CPU's lists. A CPU reaches its own through the `PCP` slot of its
/// lowcore (Linux s390 finds per-CPU data through the lowcore too), so the
/// fast path costs one load to find them.
struct PerCpuLists([PerCpuPages; MAX_PCP]);

// SAFETY: `PcpList` is not `Sync` because its push and pop are plain
// load-then-store sequences. Element i's list is only used by whoever holds
// element i's lock: CPU i (through its own lowcore slot, `with_pcp`) or a
// CPU that takes every lock (`with_all_pcp`). Host tests, whose threads all
// play CPU 0, take the same lock. Without the lock only `count()`, an
// atomic load, is read.
unsafe impl Sync for PerCpuLists {}

static PCP: PerCpuLists = PerCpuLists(
    [const {
        PerCpuPages {
            list: PcpList::new(),
            lock: AtomicU32::new(0),
        }
    }; MAX_PCP],
);

/// What the `PCP` lowcore slot of CPU `cpu` holds: the address of its lists.
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

/// This CPU's element of `PCP`.
#[inline(always)]
fn this_cpu_pcp() -> &'static PerCpuPages {
    #[cfg(target_arch = "s390x")]
    {
        let slot = crate::arch::s390x::insn::lowcore_read_u64(crate::arch::lowcore::PCP);
        // SAFETY: the slot holds the address of an element of `PCP` (set by
        // `init_boot_cpu_pcp` or `smp` before the CPU runs any other code).
        unsafe { &*core::ptr::with_exposed_provenance::<PerCpuPages>(slot as usize) }
    }
    #[cfg(not(target_arch = "s390x"))]
    {
        &PCP.0[0]
    }
}

/// Run `f` on this CPU's list, or return `None` when its lock is taken:
/// the caller then goes to the zone (Linux's rmqueue_pcplist does the same
/// when pcp_spin_trylock fails).
///
/// On s390x only a CPU checking every list (`with_all_pcp`) takes another
/// CPU's lock; nothing else can interrupt a list operation half-way, since
/// kernel code runs with external and I/O interruptions masked (see
/// `pcp`). Host tests run threads that all play CPU 0, so there the lock
/// also admits one of them at a time.
#[inline(always)]
pub(super) fn with_pcp<R>(f: impl FnOnce(&PcpList<'static>) -> R) -> Option<R> {
    #[cfg(target_arch = "s390x")]
    debug_assert!(
        crate::arch::s390x::insn::psw_mask()
            & (crate::arch::psw::mask::EXT | crate::arch::psw::mask::IO)
            == 0,
        "page allocator entered with interruptions enabled"
    );
    let pcp = this_cpu_pcp();
    if !pcp.trylock() {
        return None;
    }
    let r = f(&pcp.list);
    pcp.unlock();
    Some(r)
}

/// Run `f` with every CPU's lists held: nothing can be pushed to or popped
/// from any of them until it returns, so the lists, their counts and the
/// memmap's per-CPU pages agree with each other. Owners meanwhile go to
/// the zone. Locks in CPU order, so two CPUs doing this at once cannot
/// deadlock, and before the zone lock, as the owners' refills and drains
/// take them.
pub(super) fn with_all_pcp<R>(
    f: impl FnOnce(&mut dyn Iterator<Item = &'static PcpList<'static>>) -> R,
) -> R {
    for pcp in &PCP.0 {
        pcp.lock();
    }
    let r = f(&mut PCP.0.iter().map(|pcp| &pcp.list));
    for pcp in &PCP.0 {
        pcp.unlock();
    }
    r
}

/// This CPU's lists went above `PCP_HIGH`: give batches back (Linux
/// free_pcppages_bulk).
#[cold]
#[inline(never)]
pub(super) fn drain_pcp_batch() {
    let map = memmap();
    with_pcp(|pcp| pcp.drain_to_high(map, zone()));
}

/// Pages on every CPU's lists (a snapshot: the owners may be changing
/// them; `with_all_pcp` for an exact figure).
pub fn nr_pcp_pages() -> u64 {
    PCP.0.iter().map(|pcp| pcp.list.count()).sum()
}

/// Return this CPU's listed blocks to the buddy lists so they can merge.
/// Waits for the lists if another CPU holds them (`with_all_pcp`): callers
/// count on the drain having happened.
pub fn drain_pcp() {
    let map = memmap();
    let pcp = this_cpu_pcp();
    pcp.lock();
    pcp.list.drain(map, zone(), u64::MAX);
    pcp.unlock();
}
