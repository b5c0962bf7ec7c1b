//! Running a guest on a gmap, like KVM's exit loop: enter the guest (problem
//! state, the gmap's ASCE as primary space), and on every translation
//! exception resolve it with `gmap_fault` and re-enter; an SVC ends the
//! run; anything else stops it with a reason. No kernel crash either way.
//!
//! Linux: the SIE entry and exit loop of arch/s390/kvm/kvm-s390.c (vcpu_run), without SIE.

use crate::arch::pgm::{code, Teid, TeidAccess};
use crate::arch::psw::{mask, Psw};
use crate::arch::s390x::guest::{run_guest, Exit, GuestCtx};

use super::{Access, Gmap, GmapError};

/// Why a guest run ended other than by its SVC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestStop {
    /// The guest touched `gaddr`, beyond the gmap's limit.
    BeyondLimit(u64),
    /// The guest touched `gaddr`, which no gmap_map_segment covers.
    NotMapped(u64),
    /// Resolving a fault ran out of memory.
    NoMemory(u64),
    /// A program check that is not a translation fault (code, guest PSW).
    Program(u16, u64),
    /// Some other interruption.
    Other,
    /// More exits than allowed.
    TooManyExits,
    /// The guest PSW (its mask) is not one a guest may run with: problem
    /// state, DAT on, primary-space mode, not a wait state, interruptions
    /// disabled (an interruption taken in the guest is an exit: the
    /// kernel's handler would never see it). Refused before anything runs.
    BadPsw(u64),
}

/// A guest CPU: its registers, PSW and counters.
pub struct Vcpu {
    pub ctx: GuestCtx,
    pub exits: u64,
    pub faults: u64,
}

/// A 64-bit problem-state PSW with DAT on in primary-space mode, no
/// interruptions enabled.
pub fn guest_psw(addr: u64) -> Psw {
    Psw::new(
        mask::BASE | mask::DAT | mask::PROBLEM | mask::ASC_PRIMARY,
        addr,
    )
}

impl Vcpu {
    pub fn new(gmap: &Gmap, entry: u64) -> Self {
        Vcpu {
            ctx: GuestCtx::new(guest_psw(entry), gmap.asce().raw()),
            exits: 0,
            faults: 0,
        }
    }

    /// Run until the guest's SVC (returns its code) or a stop.
    pub fn run(&mut self, gmap: &Gmap, max_exits: u64) -> Result<u16, GuestStop> {
        let space = gmap.asce_ref();
        self.ctx.asce = space.asce().raw();
        // Attached for the whole run, before the first entry loads the
        // gmap's ASCE (CR1, CR7): invalidations of the gmap, and of its
        // host's PTE tables, reach this CPU from here. Between entries the
        // CPU is attached without having it loaded, which only keeps it in
        // the masks longer.
        let _attached = space.attach();
        loop {
            check_psw(self.ctx.psw.mask)?;
            if self.exits >= max_exits {
                return Err(GuestStop::TooManyExits);
            }
            // SAFETY: the gmap (and through it the host) is borrowed for the
            // whole run, so its tables stay live; the PSW is problem state.
            let exit = unsafe { run_guest(&mut self.ctx) };
            self.exits += 1;
            match exit {
                Exit::Svc(c) => return Ok(c),
                Exit::Program(pc) => {
                    let c = pc.exception();
                    // A protection exception is a store to a page a shadow
                    // protected (the host lifts that, notifying the
                    // shadows) or one the host made read-only (refused).
                    if !is_translation(c) && c != code::PROTECTION {
                        return Err(GuestStop::Program(pc.code, self.ctx.psw.addr));
                    }
                    let t = Teid(pc.teid);
                    let gaddr = t.address();
                    let access = if c == code::PROTECTION || t.access() == TeidAccess::Store {
                        Access::Write
                    } else {
                        Access::Read
                    };
                    if c == code::PROTECTION {
                        // Only a shadow's protection can be lifted; a page
                        // that is writable already, or one the host made
                        // read-only, ends the run.
                        if gmap.gmap_fault_protection(gaddr) != Ok(true) {
                            return Err(GuestStop::Program(pc.code, self.ctx.psw.addr));
                        }
                        // Suppressing: back to the store, to run it again.
                        self.ctx.psw.addr = self.ctx.psw.addr.wrapping_sub(pc.ilc as u64);
                        self.faults += 1;
                        continue;
                    }
                    let mut r = gmap.gmap_fault(gaddr, access);
                    if r == Err(GmapError::Protected) && c != code::PROTECTION {
                        // A store's translation exception on a page the
                        // host made read-only: resolve the translation;
                        // the store, run again, takes the protection
                        // exception, which ends the run below.
                        r = gmap.gmap_fault(gaddr, Access::Read);
                    }
                    match r {
                        // Translation exceptions nullify: the guest PSW still
                        // points at the instruction, which runs again.
                        Ok(_) => self.faults += 1,
                        Err(GmapError::OutOfRange) => return Err(GuestStop::BeyondLimit(gaddr)),
                        Err(GmapError::NoMemory) => return Err(GuestStop::NoMemory(gaddr)),
                        Err(GmapError::Protected) => {
                            return Err(GuestStop::Program(pc.code, self.ctx.psw.addr))
                        }
                        Err(_) => return Err(GuestStop::NotMapped(gaddr)),
                    }
                }
                Exit::External(_) | Exit::Other(_) => return Err(GuestStop::Other),
            }
        }
    }
}

/// What `run_guest`'s contract needs of a guest PSW, checked on every entry
/// (`ctx` is public: a guest in supervisor state, or in home or secondary
/// space mode, would reach the kernel's memory).
pub(crate) fn check_psw(m: u64) -> Result<(), GuestStop> {
    if m & mask::PROBLEM == 0
        || m & mask::DAT == 0
        || m & mask::ASC != mask::ASC_PRIMARY
        || m & (mask::WAIT | mask::EXT | mask::IO | mask::MCHECK | mask::PER) != 0
    {
        return Err(GuestStop::BadPsw(m));
    }
    Ok(())
}

/// The program-interruption codes of DAT translation exceptions.
pub(crate) fn is_translation(c: u16) -> bool {
    matches!(
        c,
        code::SEGMENT_TRANSLATION
            | code::PAGE_TRANSLATION
            | code::ASCE_TYPE
            | code::REGION_FIRST_TRANSLATION
            | code::REGION_SECOND_TRANSLATION
            | code::REGION_THIRD_TRANSLATION
    )
}
