//! The kernel's own address space: an identity mapping of all memory, built
//! with `AddressSpace` like any other, loaded as the home space (CR13) and
//! as the primary space (CR1, where instructions come from while a test or
//! gmap space is in CR7). The kernel runs with DAT on in home-space mode
//! from then on.

use spin::{Mutex, Once};

use super::context::AsceRef;
use super::entry::{Asce, Level, Prot};
use super::space::{AddressSpace, SpaceError};
use crate::arch::s390x::dat as hw;
use crate::mm::addr::PhysAddr;

static KERNEL: Once<Mutex<AddressSpace>> = Once::new();
static KERNEL_ASCE: Once<AsceRef> = Once::new();

/// Map `[0, memory)` at its real address, except the stacks' guard pages,
/// and turn DAT on.
pub(crate) fn init(memory: u64, guards: &[u64]) -> Result<Asce, SpaceError> {
    let mut s = AddressSpace::new(memory as u128, Level::Region3.limit(), false)?;
    // Loaded on every CPU for good (CR1, CR7, CR13; secondaries copy the
    // boot CPU's): its invalidations are always global.
    s.set_loaded_everywhere();
    s.map_range(0, PhysAddr(0), memory, Prot::ReadWrite)?;
    for &g in guards {
        // A stack that runs past its bottom now takes a translation
        // exception instead of overwriting whatever lies below.
        s.unmap(g)?;
    }
    let asce = s.asce();
    let asce_ref = s.asce_ref();
    KERNEL.call_once(|| Mutex::new(s));
    KERNEL_ASCE.call_once(|| asce_ref);
    // SAFETY: the space maps all of memory (code, data, stacks, lowcore,
    // the memmap and the tables themselves) at its real address.
    unsafe { hw::enable_dat_home(asce.raw()) };
    Ok(asce)
}

/// Guard pages of stacks allocated after boot (secondary CPUs).
static MORE_GUARDS: Mutex<[u64; 64]> = Mutex::new([0; 64]);

/// Unmap the page at `va` from the kernel's space: the guard page of a
/// stack allocated at run time.
pub(crate) fn unmap_guard(va: u64) -> Result<(), SpaceError> {
    let k = KERNEL.get().ok_or(SpaceError::NotMapped)?;
    k.lock().unmap(va)?;
    if let Some(slot) = MORE_GUARDS.lock().iter_mut().find(|g| **g == 0) {
        *slot = va;
    }
    Ok(())
}

/// Whether `va` lies in a stack guard page (for the crash dump).
pub fn is_stack_guard(va: u64) -> bool {
    let hit = |g: u64| g != 0 && va >= g && va < g + 4096;
    crate::machine::get().is_some_and(|m| m.boot.stack_guards.iter().any(|&g| hit(g)))
        || MORE_GUARDS.lock().iter().any(|&g| hit(g))
}

/// Run the consistency checker on the kernel's own space.
pub fn check() -> Option<Result<super::space::SpaceCheck, super::space::SpaceCheckError>> {
    KERNEL.get().map(|s| s.lock().check())
}

pub fn asce() -> Option<Asce> {
    KERNEL_ASCE.get().map(AsceRef::asce)
}

/// The kernel's ASCE with its context, for `with_secondary_lctlg`.
pub fn asce_ref() -> Option<&'static AsceRef> {
    KERNEL_ASCE.get()
}

/// Run `f` with `space` as the secondary space (CR7), then put the
/// kernel's back; this CPU is attached to the space's context meanwhile
/// (`dat::context`). The name says LCTLG because QEMU purges its whole TLB
/// on each one: what `f` sees right after this call proves nothing about
/// invalidation (use `warm_secondary` for that). Secondary-space probes
/// (`arch::s390x::dat::secondary_*`) then reach the space's addresses.
///
/// # Safety
/// `space`'s ASCE must designate live tables for the duration of `f`.
pub unsafe fn with_secondary_lctlg<R>(space: &AsceRef, f: impl FnOnce() -> R) -> R {
    let saved = hw::secondary_asce();
    // Attached before the load: from here invalidations reach this CPU.
    let attached = space.attach();
    // SAFETY: forwarded to the caller.
    unsafe { hw::set_secondary_asce(space.asce().raw()) };
    let r = f();
    // SAFETY: the previous CR7 (the kernel's ASCE) is always valid.
    unsafe { hw::set_secondary_asce(saved) };
    drop(attached);
    r
}

/// Accesses through the secondary space inside a warm window (see
/// `warm_secondary`): none of them loads a control register.
pub struct Warm(());

impl Warm {
    pub fn load(&self, va: u64) -> Result<u64, crate::arch::pgm::ProgramCheck> {
        hw::secondary_load_u64(va)
    }

    /// # Safety
    /// Whatever frame `va` maps to must be the caller's to write.
    pub unsafe fn store(&self, va: u64, v: u64) -> Result<(), crate::arch::pgm::ProgramCheck> {
        // SAFETY: forwarded to the caller.
        unsafe { hw::secondary_store_u64(va, v) }
    }

    pub fn lrag(&self, va: u64) -> (u32, u64) {
        hw::secondary_lrag(va)
    }
}

/// A warm window was cooled: `f` (or something it called, the console for
/// one) loaded control registers this many times, and QEMU purged its TLB
/// on each, so what `f` saw proves nothing about invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cooled(pub u64);

/// Load `space` as the secondary space once, run `f` (which accesses it
/// through `Warm` and changes it through the public API, so the TLB keeps
/// what the accesses put there), then put the kernel's back; this CPU is
/// attached to the space's context meanwhile (`dat::context`). Returns
/// `Err(Cooled)` if any control register was loaded on this CPU while `f`
/// ran: a test must not print or otherwise reload CRs inside the window.
///
/// # Safety
/// `space`'s ASCE must designate live tables for the duration of `f`,
/// except where `f` tests what happens after they are freed, and the purge
/// discipline makes the access fault or see the new tables.
pub unsafe fn warm_secondary<R>(space: &AsceRef, f: impl FnOnce(&Warm) -> R) -> Result<R, Cooled> {
    let saved = hw::secondary_asce();
    // Attached before the load: from here invalidations reach this CPU.
    let attached = space.attach();
    // SAFETY: forwarded to the caller.
    unsafe { hw::set_secondary_asce(space.asce().raw()) };
    let before = crate::arch::s390x::cr::lctl_count();
    let r = f(&Warm(()));
    let loads = crate::arch::s390x::cr::lctl_count() - before;
    // SAFETY: the previous CR7 (the kernel's ASCE) is always valid.
    unsafe { hw::set_secondary_asce(saved) };
    drop(attached);
    if loads != 0 {
        return Err(Cooled(loads));
    }
    Ok(r)
}
