//! What boot found out about the machine, available to everyone after
//! `start_kernel` filled it in.

use spin::Once;

use crate::cmdline::Cmdline;

/// Handed over by the boot crate.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// Kernel command line from the parm area (QEMU `-append`).
    pub cmdline: &'static str,
    /// First and one-past-last byte of the loaded image (page aligned).
    pub image_start: u64,
    pub image_end: u64,
    /// The guard page at the bottom of each kernel stack (boot, interrupt,
    /// panic), unmapped once DAT is on.
    pub stack_guards: [u64; 3],
}

#[derive(Clone, Copy, Debug)]
pub struct Machine {
    pub boot: BootInfo,
    /// Bytes of memory, from SCLP Read SCP Info.
    pub memory: u64,
    /// Configured CPUs, from SCLP.
    pub cpus: u16,
}

static MACHINE: Once<Machine> = Once::new();

pub fn set(m: Machine) {
    MACHINE.call_once(|| m);
}

/// The machine description; `None` before boot has read SCLP.
pub fn get() -> Option<&'static Machine> {
    MACHINE.get()
}

pub fn cmdline() -> Cmdline<'static> {
    Cmdline::new(get().map_or("", |m| m.boot.cmdline))
}
