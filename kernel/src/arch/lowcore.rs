//! Lowcore (prefix area) layout: the architected fields the CPU stores on an
//! interruption, and the software slots zdat keeps there for its entry code.
//! Offsets as Linux's arch/s390/include/asm/lowcore.h.

/// External interruption parameter (the SCCB address for service signals).
pub const EXT_PARAMS: usize = 0x80;
pub const EXT_CPU_ADDR: usize = 0x84;
pub const EXT_INT_CODE: usize = 0x86;
pub const SVC_ILC: usize = 0x88;
pub const SVC_CODE: usize = 0x8a;
pub const PGM_ILC: usize = 0x8c;
pub const PGM_CODE: usize = 0x8e;
/// Translation-exception identification.
pub const TRANS_EXC_CODE: usize = 0xa8;
pub const SUBCHANNEL_ID: usize = 0xb8;
pub const IO_INT_PARM: usize = 0xbc;
pub const IO_INT_WORD: usize = 0xc0;
pub const MCCK_CODE: usize = 0xe8;

/// Old PSWs, in interruption-class order (restart, external, SVC, program,
/// machine check, I/O).
pub const OLD_PSW: [usize; 6] = [0x120, 0x130, 0x140, 0x150, 0x160, 0x170];
/// New PSWs, same order.
pub const NEW_PSW: [usize; 6] = [0x1a0, 0x1b0, 0x1c0, 0x1d0, 0x1e0, 0x1f0];

/// The interruption classes; the value is the index into `OLD_PSW`/`NEW_PSW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum IntClass {
    Restart = 0,
    External = 1,
    Svc = 2,
    Program = 3,
    MachineCheck = 4,
    Io = 5,
}

impl IntClass {
    pub const ALL: [IntClass; 6] = [
        IntClass::Restart,
        IntClass::External,
        IntClass::Svc,
        IntClass::Program,
        IntClass::MachineCheck,
        IntClass::Io,
    ];

    pub fn from_raw(v: u64) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    pub const fn name(self) -> &'static str {
        match self {
            IntClass::Restart => "restart",
            IntClass::External => "external",
            IntClass::Svc => "svc",
            IntClass::Program => "program",
            IntClass::MachineCheck => "machine-check",
            IntClass::Io => "i/o",
        }
    }
}

// Software slots in the free part of the lowcore (0x200..0xfff). They are
// addressed with base register 0 by the entry code, so they must stay below
// 4 KiB (12-bit displacements) and be per CPU (the prefix makes them so).

/// GPR save area per class: the entry stub's first instruction stores
/// r0..r15 here before it has a stack.
pub const SAVE_AREA: usize = 0x200;
pub const SAVE_AREA_SIZE: usize = 0x80;
/// Per-class slot the exit path loads the resumed PSW from (LPSWE needs a
/// memory operand and no register is free after restoring all of them).
pub const RETURN_PSW: usize = 0x500;
/// Stack used when an interruption arrives in problem state.
pub const KERNEL_STACK: usize = 0x580;
/// Scratch PSW for code that switches state with LPSWE (probes, waits).
pub const SCRATCH_PSW: usize = 0x590;
/// The guest context of the guest running on this CPU (0: none): an
/// interruption in problem state with this set is a guest exit.
pub const GUEST_CTX: usize = 0x5a0;
/// Stack the entry code switches to when r15 is in [STACK_GUARD_LOW,
/// STACK_GUARD_HIGH): the kernel stack ran into its guard page, and the
/// handler must not push its frame there.
pub const PANIC_STACK: usize = 0x5a8;
pub const STACK_GUARD_LOW: usize = 0x5b0;
pub const STACK_GUARD_HIGH: usize = 0x5b8;
/// This CPU's number (0 = the boot CPU), for per-CPU data.
pub const CPU_NR: usize = 0x5c0;
/// Stack a secondary CPU starts on.
pub const SECONDARY_STACK: usize = 0x5c8;
/// PSW a secondary CPU switches to once its control registers are loaded.
pub const SECONDARY_PSW: usize = 0x5d0;
/// This CPU's per-CPU page lists (`mm::pcp`), like Linux s390's lowcore
/// percpu_offset: one load finds them.
pub const PCP: usize = 0x5e0;
/// LCTLGs this CPU made through `cr::lctlg` (QEMU purges its whole TLB on
/// each: warm-TLB tests check that none happened inside their window).
pub const LCTL_COUNT: usize = 0x5e8;
/// Control registers 0-15 a secondary CPU starts with (128 bytes).
pub const CR_SAVE: usize = 0x600;

pub const fn save_area(class: usize) -> usize {
    SAVE_AREA + class * SAVE_AREA_SIZE
}

pub const fn return_psw(class: usize) -> usize {
    RETURN_PSW + class * 16
}

const _: () = assert!(save_area(5) + SAVE_AREA_SIZE <= RETURN_PSW);
const _: () = assert!(return_psw(5) + 16 <= KERNEL_STACK);
const _: () = assert!(
    SCRATCH_PSW + 16 <= GUEST_CTX
        && SECONDARY_PSW + 16 <= PCP
        && PCP + 8 <= LCTL_COUNT
        && LCTL_COUNT + 8 <= CR_SAVE
        && CR_SAVE + 128 <= 0x1000
);
