//! PGSTE notification and what a gmap hears from its host space (Linux
//! calls gmap_unlink and ptep_notify from the mm's page-table code; this
//! is the registry of those calls and the space's side of them).

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;

use super::super::entry::SegmentEntry;
use super::super::table::{entry, PTE_TABLE_SIZE};
use super::super::tlb;
use super::{AddressSpace, SpaceError};
use crate::mm::addr::{PhysAddr, PAGE_SIZE};

/// What a gmap needs to hear from its parent space (Linux calls
/// gmap_unlink and ptep_notify from the mm's page-table code). Installed
/// once by the gmap subsystem; only spaces with PGSTEs call them.
#[derive(Clone, Copy)]
pub struct SpaceHooks {
    /// The PTE table for the segment at `vmaddr` is about to be unlinked
    /// from space `space` and freed: entries pointing at it must go first.
    pub table_unlink: fn(space: u64, vmaddr: u64, pte_table: PhysAddr),
    /// The PTE for `vmaddr` of space `space`, which had PGSTE notify bits
    /// set (`bits`: `PGSTE_IN_BIT`, `PGSTE_VSIE_BIT`), is about to change.
    pub pte_notify: fn(space: u64, vmaddr: u64, bits: u64),
    /// The PTE for `vmaddr` in the shared page table at `pto` was just
    /// invalidated with IPTE at the host address; purge what the TLBs hold
    /// of it under every guest address that reaches it (see
    /// `tlb::ipte_guest_alias`: QEMU's IPTE purges only its operand's
    /// address).
    pub pte_alias_purge: fn(space: u64, vmaddr: u64, pto: PhysAddr),
    /// The segment entry for `vmaddr` of space `space` changed to `new`
    /// (protection, say) and still points at the same PTE table: every gmap
    /// segment linked to it must be changed the same way (IDTE first).
    pub segment_change: fn(space: u64, vmaddr: u64, new: SegmentEntry),
}

/// What a hook may do. Hooks run with the space's owner lock held (the
/// `HostMm` mutex) and, for `pte_notify` and `pte_alias_purge`, the page
/// table's ptlock: they may take the gmap registry and gmap locks (the lock
/// order is host, registry, gmap), issue invalidations and change gmap
/// tables; they must not take a host lock, change the host's tables, wait
/// for another CPU or allocate page tables. Debug builds check the first
/// rule: while a hook runs on a CPU, `in_space_hook()` is true there, and
/// the gmap code asserts it is false wherever it takes a host lock.
static HOOK_DEPTH: [AtomicU64; crate::sclp::info::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::sclp::info::MAX_CPUS];

fn this_cpu() -> usize {
    #[cfg(target_arch = "s390x")]
    {
        crate::smp::cpu_nr() % crate::sclp::info::MAX_CPUS
    }
    #[cfg(not(target_arch = "s390x"))]
    {
        0
    }
}

/// Whether this CPU is running a space hook (see `SpaceHooks`).
pub fn in_space_hook() -> bool {
    HOOK_DEPTH[this_cpu()].load(Ordering::Relaxed) != 0
}

struct HookScope(usize);

impl HookScope {
    fn enter() -> Self {
        let cpu = this_cpu();
        HOOK_DEPTH[cpu].fetch_add(1, Ordering::Relaxed);
        HookScope(cpu)
    }
}

impl Drop for HookScope {
    fn drop(&mut self) {
        HOOK_DEPTH[self.0].fetch_sub(1, Ordering::Relaxed);
    }
}

static HOOKS: Once<SpaceHooks> = Once::new();

/// Install the hooks (the gmap subsystem, once). Crate-internal: whoever
/// installs them first decides what every PGSTE space tells its gmaps.
pub(crate) fn set_hooks(h: SpaceHooks) {
    HOOKS.call_once(|| h);
}

/// PGSTE bit Linux calls PGSTE_IN_BIT: notify before this PTE changes.
pub const PGSTE_IN_BIT: u64 = 0x0000_4000_0000_0000;
/// PGSTE bit Linux calls PGSTE_VSIE_BIT: a shadow gmap depends on this PTE
/// (the page holds a guest-2 table it shadows, or a shadow PTE maps the
/// frame); tell the shadows before this PTE changes.
pub const PGSTE_VSIE_BIT: u64 = 0x0000_2000_0000_0000;
const PGSTE_NOTIFY_BITS: u64 = PGSTE_IN_BIT | PGSTE_VSIE_BIT;

impl AddressSpace {
    pub(super) fn pgste_addr(&self, pte: PhysAddr) -> Option<PhysAddr> {
        self.pgste.then(|| PhysAddr(pte.0 + PTE_TABLE_SIZE))
    }

    /// Set the notify bit of the PGSTE of the PTE for `va` (which must
    /// exist): the next change of that PTE calls the pte_notify hook first.
    pub fn pgste_set_notify(&mut self, va: u64) -> Result<(), SpaceError> {
        self.pgste_set_bits(va, PGSTE_IN_BIT)
    }

    /// Set `bits` (`PGSTE_IN_BIT`, `PGSTE_VSIE_BIT`) in the PGSTE of the
    /// present PTE for `va` (Linux's `ptep_shadow_pte` sets the VSIE bit of
    /// the parent's PTE a shadow PTE copies).
    pub(crate) fn pgste_set_bits(&self, va: u64, bits: u64) -> Result<(), SpaceError> {
        let pte = self.pte_addr(va).ok_or(SpaceError::NotMapped)?;
        let pg = self.pgste_addr(pte).ok_or(SpaceError::NotMapped)?;
        // SAFETY: a PTE of a live table of this space.
        if !super::super::entry::Pte::from_raw(unsafe { entry(pte) }.load(Ordering::Acquire))
            .is_present()
        {
            return Err(SpaceError::NotMapped);
        }
        // SAFETY: the PGSTE of a live whole-page table of this space.
        unsafe { entry(pg) }.fetch_or(bits & PGSTE_NOTIFY_BITS, Ordering::AcqRel);
        Ok(())
    }

    /// The PGSTE notify bits of the PTE for `va` (0 without one).
    pub fn pgste_bits(&self, va: u64) -> u64 {
        let Some(pg) = self.pte_addr(va).and_then(|p| self.pgste_addr(p)) else {
            return 0;
        };
        // SAFETY: the PGSTE of a live whole-page table of this space.
        unsafe { entry(pg) }.load(Ordering::Acquire) & PGSTE_NOTIFY_BITS
    }

    /// Clear the notify bit of the PGSTE of the PTE for `va` (undoing
    /// `pgste_set_notify`); returns whether it was set.
    pub fn pgste_clear_notify(&mut self, va: u64) -> bool {
        let Some(pg) = self.pte_addr(va).and_then(|p| self.pgste_addr(p)) else {
            return false;
        };
        // SAFETY: the PGSTE of a live whole-page table of this space.
        unsafe { entry(pg) }.fetch_and(!PGSTE_IN_BIT, Ordering::AcqRel) & PGSTE_IN_BIT != 0
    }

    pub fn pgste_notify(&self, va: u64) -> bool {
        let Some(pg) = self.pte_addr(va).and_then(|p| self.pgste_addr(p)) else {
            return false;
        };
        // SAFETY: as above.
        unsafe { entry(pg) }.load(Ordering::Acquire) & PGSTE_IN_BIT != 0
    }

    /// Before the PTE at `pte` (for `va`) changes: if its PGSTE asks for it,
    /// clear the request and tell the gmaps (Linux ptep_notify).
    pub(super) fn notify_before_change(&self, va: u64, pte: PhysAddr) {
        let Some(pg) = self.pgste_addr(pte) else {
            return;
        };
        // SAFETY: the PGSTE of a live whole-page table of this space.
        let old = unsafe { entry(pg) }.fetch_and(!PGSTE_NOTIFY_BITS, Ordering::AcqRel);
        if old & PGSTE_NOTIFY_BITS != 0 {
            if let Some(h) = HOOKS.get() {
                let _scope = HookScope::enter();
                (h.pte_notify)(self.id, va & !(PAGE_SIZE - 1), old & PGSTE_NOTIFY_BITS);
            }
        }
    }

    /// Before the segment's PTE table is unlinked (and later freed).
    pub(super) fn unlink_before_free(&self, va: u64, pto: PhysAddr) {
        if self.pgste {
            if let Some(h) = HOOKS.get() {
                let _scope = HookScope::enter();
                (h.table_unlink)(self.id, va & !(super::super::entry::SEGMENT_SIZE - 1), pto);
            }
        }
    }

    /// IPTE of the PTE for `va` in this space's page table `pto`, and, in
    /// a space whose page tables gmaps share, the same purge under every
    /// linked guest address (`tlb::ipte_guest_alias`).
    ///
    /// # Safety
    /// `pto` is this space's live page table for `va`, and the caller may
    /// change its entry for `va`.
    pub(super) unsafe fn ipte(&self, pto: PhysAddr, va: u64) {
        // SAFETY: forwarded to the caller.
        unsafe { tlb::ipte(&self.context, pto, va) };
        if self.pgste && tlb::IPTE_GUEST_ALIAS {
            if let Some(h) = HOOKS.get() {
                let _scope = HookScope::enter();
                (h.pte_alias_purge)(self.id, va & !(PAGE_SIZE - 1), pto);
            }
        }
    }

    /// Tell the gmaps that the segment entry for `va` is now `new`.
    pub(super) fn segment_changed(&self, va: u64, new: SegmentEntry) {
        if self.pgste {
            if let Some(h) = HOOKS.get() {
                let _scope = HookScope::enter();
                (h.segment_change)(self.id, va & !(super::super::entry::SEGMENT_SIZE - 1), new);
            }
        }
    }
}
