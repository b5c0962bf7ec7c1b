//! Running a guest-2 on a shadow gmap, like KVM's vSIE loop
//! (arch/s390/kvm/vsie.c) without SIE: guest-2 runs in problem state with
//! the shadow's ASCE as primary space; a translation or protection
//! exception goes to `shadow_fault`, and what guest-2's own tables refuse
//! is reflected to guest-1 (here kernel code, a `Guest1` handler) with
//! guest-2's interruption code and TEID, as KVM injects it.

use crate::arch::pgm::{code, Teid, TeidAccess};
use crate::arch::s390x::guest::{run_guest, Exit};
use crate::dat::entry::Asce;

use super::guest::{check_psw, is_translation, GuestStop, Vcpu};
use super::shadow::{gmap_shadow, ShadowError, ShadowFault, ShadowGmap};
use super::Gmap;

/// The TEID guest-1 gets with a reflected exception `rc` (KVM's
/// `inject_fault` builds it the same way): the exit's when the exit was
/// that exception; for a protection exception found on a translation exit
/// (guest-2's own protection, on its first store), the DAT-protection
/// format QEMU stores: the page, store (bit 53) and bit 61, which says the
/// address is valid, with the exit's address-space bits.
pub fn reflected_teid(rc: u16, exit_code: u16, exit_teid: u64) -> u64 {
    if rc == code::PROTECTION && exit_code != code::PROTECTION {
        (exit_teid & !0xfff) | 0x400 | 0x4 | (exit_teid & 3)
    } else {
        exit_teid
    }
}

/// Guest-1's hypervisor: what it does with an interruption of guest-2
/// that is guest-1's to handle.
pub trait Guest1 {
    /// Guest-2 took program interruption `code` with `teid` (its guest-2
    /// address and access); its PSW in `vcpu` points at the instruction
    /// (a suppressed store is rewound). Return true to resume guest-2 (the handler
    /// fixed the cause, say by mapping the page in guest-2's tables),
    /// false to end the run with `NestedStop::Reflected`.
    fn program_interrupt(&mut self, vcpu: &mut Vcpu, code: u16, teid: u64) -> bool;
}

/// Why a nested run ended other than by guest-2's SVC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedStop {
    /// Guest-1 declined an interruption reflected to it (code, TEID).
    Reflected(u16, u64),
    /// No shadow could be made.
    Shadow(ShadowError),
    /// A shadow fault ran out of memory or the host refused the access.
    Fault(ShadowFault),
    /// What stops any guest run (bad PSW, too many exits, other
    /// interruptions).
    Guest(GuestStop),
}

/// Counters of a nested run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NestedStats {
    /// Exits resolved by the shadow (no guest-1 involvement).
    pub shadow_faults: u64,
    /// Interruptions reflected to guest-1.
    pub reflected: u64,
    /// Times the shadow had to be got again (it was removed).
    pub reshadowed: u64,
}

/// Run guest-2 (its PSW and registers in `vcpu`, its ASCE `asce` at EDAT
/// level `edat_level`) over `parent`, guest-1's gmap, until its SVC
/// (returned) or a stop. The shadow is got with `gmap_shadow` at the start
/// and again whenever it was removed.
pub fn run_nested(
    vcpu: &mut Vcpu,
    parent: &Gmap,
    asce: Asce,
    edat_level: u8,
    g1: &mut dyn Guest1,
    max_exits: u64,
    stats: &mut NestedStats,
) -> Result<u16, NestedStop> {
    let mut sg: Option<ShadowGmap> = None;
    loop {
        let s = match sg.take() {
            Some(s) if !s.is_removed() => s,
            old => {
                if old.is_some() {
                    stats.reshadowed += 1;
                }
                gmap_shadow(parent, asce, edat_level).map_err(NestedStop::Shadow)?
            }
        };
        check_psw(vcpu.ctx.psw.mask).map_err(NestedStop::Guest)?;
        if vcpu.exits >= max_exits {
            return Err(NestedStop::Guest(GuestStop::TooManyExits));
        }
        let space = s.asce_ref();
        vcpu.ctx.asce = space.asce().raw();
        let exit = {
            // Attached from before the entry loads the ASCE to after the
            // exit: the shadow's invalidations reach this CPU.
            let _attached = space.attach();
            // SAFETY: the shadow handle keeps its top table alive (a
            // removed shadow's top stays, empty, until the last handle
            // goes) and every table below is reachable only through
            // entries that are invalidated before it is freed; the PSW
            // is problem state in primary-space mode (checked above).
            unsafe { run_guest(&mut vcpu.ctx) }
        };
        vcpu.exits += 1;
        match exit {
            Exit::Svc(c) => return Ok(c),
            Exit::Program(pc) => {
                let c = pc.exception();
                if !is_translation(c) && c != code::PROTECTION {
                    return Err(NestedStop::Guest(GuestStop::Program(
                        pc.code,
                        vcpu.ctx.psw.addr,
                    )));
                }
                let t = Teid(pc.teid);
                let write = c == code::PROTECTION || t.access() == TeidAccess::Store;
                if c == code::PROTECTION {
                    // A protection exception through a writable shadow
                    // PTE is none DAT can explain (key or low-address
                    // protection): not the shadow's to resolve.
                    let p = s.pte(t.address());
                    if !p.is_invalid() && !p.is_protected() {
                        return Err(NestedStop::Guest(GuestStop::Program(
                            pc.code,
                            vcpu.ctx.psw.addr,
                        )));
                    }
                    // Suppressing: the PSW is past the store; back to it,
                    // so that resuming runs it again (Linux's
                    // do_protection_exception rewinds the same way).
                    vcpu.ctx.psw.addr = vcpu.ctx.psw.addr.wrapping_sub(pc.ilc as u64);
                }
                match s.shadow_fault(t.address(), write) {
                    Ok(()) => {
                        stats.shadow_faults += 1;
                        vcpu.faults += 1;
                    }
                    Err(ShadowFault::Reflect(rc)) => {
                        stats.reflected += 1;
                        let teid = reflected_teid(rc, c, pc.teid);
                        if !g1.program_interrupt(vcpu, rc, teid) {
                            return Err(NestedStop::Reflected(rc, teid));
                        }
                    }
                    Err(ShadowFault::Again) => {}
                    Err(f) => return Err(NestedStop::Fault(f)),
                }
            }
            Exit::External(_) | Exit::Other(_) => return Err(NestedStop::Guest(GuestStop::Other)),
        }
        sg = Some(s);
    }
}
