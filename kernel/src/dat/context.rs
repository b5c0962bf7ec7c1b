//! Which CPUs may hold TLB entries for an address space: the TLB part of
//! Linux's `mm_context_t` (arch/s390/include/asm/mmu.h), kept for every
//! `AddressSpace` and every gmap, so that an invalidation clears only this
//! CPU's TLB when no other CPU can hold an entry it purges (`tlb::ipte`,
//! `tlb::idte`, `tlb::flush_tlb_mm`).
//!
//! Two masks, as Linux has them:
//! - `cpu_attach_mask`: the CPUs that have the ASCE loaded in a control
//!   register now (Linux sets it in `switch_mm`);
//! - `mm_cpumask`: the CPUs whose TLB may hold entries formed through it,
//!   always a superset of `cpu_attach_mask`.
//!
//! A CPU attaches (`AsceRef::attach`) before it loads the ASCE, which sets
//! its bit in both, and detaches after it loaded something else, which
//! clears its bit in `cpu_attach_mask` only: the Principles of Operation
//! let TLB entries outlive the control-register load that made them (they
//! are tagged with their ASCE and used again when it comes back), so the CPU
//! stays in `mm_cpumask`. Only a purge of the ASCE on every CPU proves that
//! a detached CPU holds nothing of it any more; then `mm_cpumask` is reset
//! to `cpu_attach_mask` (Linux's `__tlb_flush_mm`). Attaching and that
//! reset hold the context's lock, so no CPU attaches between the purge and
//! the reset. A CPU's bit is never cleared while it has the ASCE loaded.
//!
//! QEMU purges its whole TLB on every control-register load, so a mask that
//! forgot a detached CPU could not be caught there; the smp suite checks
//! the masks themselves for that (`smp.attach_mask_*`).

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use spin::{Mutex, MutexGuard};

use super::entry::Asce;
use crate::sclp::info::MAX_CPUS;

/// This CPU's number.
pub(crate) fn this_cpu() -> usize {
    #[cfg(target_arch = "s390x")]
    {
        crate::smp::cpu_nr() % MAX_CPUS
    }
    #[cfg(not(target_arch = "s390x"))]
    {
        0
    }
}

/// This CPU's bit in a mask.
pub(crate) fn this_cpu_bit() -> u64 {
    1 << this_cpu()
}

const _: () = assert!(MAX_CPUS <= 64, "a CPU mask is one doubleword");

/// `attached_asce` once attaches have loaded more than one ASCE.
const MIXED: u64 = u64::MAX;

/// The CPUs that have an address space loaded, and those whose TLB may
/// hold entries of it.
pub struct MmContext {
    /// Loaded on every CPU for the whole run (the kernel's own space): both
    /// masks are full, never reset, and every flush is global.
    everywhere: bool,
    /// Linux `mm->context.cpu_attach_mask`.
    cpu_attach_mask: AtomicU64,
    /// Linux `mm_cpumask(mm)`.
    cpumask: AtomicU64,
    /// How deeply each CPU's attaches nest (a gmap's attach also attaches
    /// its host's context); only that CPU changes its slot.
    depth: [AtomicU8; MAX_CPUS],
    /// The ASCE every attach so far has loaded (0: none yet; `MIXED`: more
    /// than one, e.g. the old and new top of a space that grew, or a gmap's
    /// ASCE in its host's context). A purge of one ASCE proves nothing about
    /// entries tagged with another, so only this one's purge resets.
    attached_asce: AtomicU64,
    /// Held by attach and by the purge-and-reset.
    lock: Mutex<()>,
}

/// Proof that the caller holds a context's attach lock: no CPU attaches
/// while it lives.
pub struct AttachLock<'a>(#[allow(dead_code)] MutexGuard<'a, ()>);

impl Default for MmContext {
    fn default() -> Self {
        Self::new()
    }
}

impl MmContext {
    /// A context no CPU has attached.
    pub fn new() -> Self {
        MmContext {
            everywhere: false,
            cpu_attach_mask: AtomicU64::new(0),
            cpumask: AtomicU64::new(0),
            depth: [const { AtomicU8::new(0) }; MAX_CPUS],
            attached_asce: AtomicU64::new(0),
            lock: Mutex::new(()),
        }
    }

    /// The context of a space every CPU has loaded from its start to the
    /// end of the run (the kernel's: CR1, CR7 and CR13 of every CPU).
    pub fn everywhere() -> Self {
        MmContext {
            everywhere: true,
            cpu_attach_mask: AtomicU64::new(u64::MAX),
            cpumask: AtomicU64::new(u64::MAX),
            ..Self::new()
        }
    }

    /// CPUs that have the ASCE loaded now.
    pub fn cpu_attach_mask(&self) -> u64 {
        self.cpu_attach_mask.load(Ordering::SeqCst)
    }

    /// CPUs whose TLB may hold entries of the space.
    pub fn mm_cpumask(&self) -> u64 {
        self.cpumask.load(Ordering::SeqCst)
    }

    /// Whether no CPU but this one can hold TLB entries of the space, so
    /// clearing this CPU's TLB is enough (Linux ptep_flush_direct:
    /// `cpumask_equal(mm_cpumask(mm), cpumask_of(smp_processor_id()))`;
    /// a mask without this CPU qualifies too). A CPU may attach right
    /// after this returns: `tlb::ipte` and `tlb::idte` look again after
    /// their local clearing.
    pub fn only_this_cpu(&self) -> bool {
        !self.everywhere && self.mm_cpumask() & !this_cpu_bit() == 0
    }

    /// This CPU is about to load `asce`, one of the space's ASCEs.
    fn attach(&self, asce: Asce) {
        if self.everywhere {
            return;
        }
        let cpu = this_cpu();
        let _held = self.lock.lock();
        let raw = asce.raw();
        match self.attached_asce.load(Ordering::Relaxed) {
            0 => self.attached_asce.store(raw, Ordering::Relaxed),
            a if a == raw || a == MIXED => {}
            _ => self.attached_asce.store(MIXED, Ordering::Relaxed),
        }
        // Nesting beyond 255 would be a bug; saturating keeps the CPU
        // attached (the safe direction) rather than wrapping to 0.
        let d = self.depth[cpu].load(Ordering::Relaxed);
        self.depth[cpu].store(d.saturating_add(1), Ordering::Relaxed);
        // Both before the control-register load, and before any table
        // walk under the ASCE: an invalidation that reads the mask after
        // this sees the CPU (SeqCst, against the fence in `tlb::ipte`).
        self.cpu_attach_mask.fetch_or(1 << cpu, Ordering::SeqCst);
        self.cpumask.fetch_or(1 << cpu, Ordering::SeqCst);
    }

    /// This CPU loaded something else instead of the space's ASCE: it no
    /// longer has it loaded, but its TLB may still hold entries of it, so
    /// it stays in `mm_cpumask`.
    fn detach(&self) {
        if self.everywhere {
            return;
        }
        let cpu = this_cpu();
        let d = self.depth[cpu].load(Ordering::Relaxed);
        if d == 1 {
            self.cpu_attach_mask
                .fetch_and(!(1 << cpu), Ordering::SeqCst);
        }
        self.depth[cpu].store(d.saturating_sub(1), Ordering::Relaxed);
    }

    /// Hold off attaches (for a purge and the reset after it).
    pub(crate) fn lock_attach(&self) -> AttachLock<'_> {
        AttachLock(self.lock.lock())
    }

    /// Every CPU's TLB was just purged of `purged` while `held` kept any
    /// CPU from attaching: a CPU that is not attached now was not attached
    /// during the purge, so it holds no entry of the space (if every attach
    /// loaded that one ASCE) and leaves `mm_cpumask` (Linux
    /// `__tlb_flush_mm`: `cpumask_copy(mm_cpumask(mm),
    /// &mm->context.cpu_attach_mask)`).
    pub(crate) fn reset_cpumask(&self, held: &AttachLock<'_>, purged: Asce) {
        let _ = held;
        if self.everywhere {
            return;
        }
        let a = self.attached_asce.load(Ordering::Relaxed);
        if a != 0 && a != purged.raw() {
            return;
        }
        self.cpumask
            .fetch_and(self.cpu_attach_mask(), Ordering::SeqCst);
    }
}

/// An ASCE with the contexts a CPU attaches before it loads it: what
/// `warm_secondary`, `with_secondary_lctlg` and a guest run take. For a
/// gmap both its own context and its host's: a CPU running the guest forms
/// TLB entries through the host's PTE tables, which the gmap shares, so
/// the host's invalidations must reach it too (in Linux the vCPU thread
/// runs in the host mm, and mm_cpumask covers it).
#[derive(Clone)]
pub struct AsceRef {
    asce: Asce,
    mm: Arc<MmContext>,
    host: Option<Arc<MmContext>>,
}

impl AsceRef {
    pub fn new(asce: Asce, mm: Arc<MmContext>) -> Self {
        AsceRef {
            asce,
            mm,
            host: None,
        }
    }

    /// A gmap's ASCE: `mm` its context, `host` its host space's.
    pub fn with_host(asce: Asce, mm: Arc<MmContext>, host: Arc<MmContext>) -> Self {
        AsceRef {
            asce,
            mm,
            host: Some(host),
        }
    }

    pub fn asce(&self) -> Asce {
        self.asce
    }

    pub fn context(&self) -> &MmContext {
        &self.mm
    }

    /// Attach this CPU before it loads the ASCE; the guard detaches it
    /// when dropped, which must come after the ASCE was replaced in every
    /// control register.
    #[must_use = "the CPU detaches when the guard is dropped"]
    pub fn attach(&self) -> Attached<'_> {
        self.mm.attach(self.asce);
        if let Some(h) = &self.host {
            h.attach(self.asce);
        }
        Attached(self)
    }
}

/// This CPU is attached to an `AsceRef`'s contexts until this is dropped.
pub struct Attached<'a>(&'a AsceRef);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if let Some(h) = &self.0.host {
            h.detach();
        }
        self.0.mm.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asce(origin: u64) -> Asce {
        Asce::from_raw(origin)
    }

    #[test]
    fn attach_sets_both_detach_keeps_the_tlb_bit() {
        let r = AsceRef::new(asce(0x10_0000), Arc::new(MmContext::new()));
        assert!(r.context().only_this_cpu());
        {
            let _a = r.attach();
            assert_eq!(r.context().cpu_attach_mask(), 1);
            assert_eq!(r.context().mm_cpumask(), 1);
            let _nested = r.attach();
        }
        assert_eq!(r.context().cpu_attach_mask(), 0);
        assert_eq!(r.context().mm_cpumask(), 1);
    }

    #[test]
    fn reset_keeps_attached_cpus_and_needs_the_attached_asce() {
        let mm = Arc::new(MmContext::new());
        let a = asce(0x10_0000);
        let r = AsceRef::new(a, mm.clone());
        // Another CPU's stale bit, as if CPU 3 attached and detached.
        mm.cpumask.fetch_or(1 << 3, Ordering::SeqCst);
        let _held = r.attach();
        {
            let l = mm.lock_attach();
            mm.reset_cpumask(&l, asce(0x20_0000));
        }
        // A purge of another ASCE proves nothing.
        assert_eq!(mm.mm_cpumask(), 1 | 1 << 3);
        {
            let l = mm.lock_attach();
            mm.reset_cpumask(&l, a);
        }
        assert_eq!(mm.mm_cpumask(), 1);
    }

    #[test]
    fn a_gmap_attach_marks_its_host_and_blocks_the_hosts_reset() {
        let (g, h) = (Arc::new(MmContext::new()), Arc::new(MmContext::new()));
        let host_asce = asce(0x30_0000);
        let r = AsceRef::with_host(asce(0x40_0000), g.clone(), h.clone());
        drop(r.attach());
        assert_eq!((g.mm_cpumask(), h.mm_cpumask()), (1, 1));
        let l = h.lock_attach();
        h.reset_cpumask(&l, host_asce);
        // The CPU's entries are tagged with the gmap's ASCE: a purge of the
        // host's does not reach them.
        assert_eq!(h.mm_cpumask(), 1);
    }

    #[test]
    fn everywhere_is_never_local() {
        let mm = MmContext::everywhere();
        assert!(!mm.only_this_cpu());
        let l = mm.lock_attach();
        mm.reset_cpumask(&l, asce(0x10_0000));
        assert_eq!(mm.mm_cpumask(), u64::MAX);
    }
}
