//! Interruption entry stubs. Each saves r0-r15 into its lowcore save area,
//! picks a stack (the interrupted one, or the kernel stack when the CPU was
//! in problem state), copies registers, old PSW and the lowcore interruption
//! fields into an `InterruptFrame`, calls `zdat_interrupt`, then restores
//! the registers and resumes with the (possibly changed) PSW from the frame.

use kernel::arch::lowcore::{self, IntClass};
use kernel::arch::s390x::interrupt::{FRAME_GPRS, FRAME_LC, FRAME_PSW, FRAME_SIZE, LC_COPY_START};

/// The s390x ABI register save area every callee may use above its caller's r15.
const ABI_SAVE: usize = 160;

core::arch::global_asm!(
    ".macro INT_ENTRY name, class, save, old, ret",
    ".section .text.entry,\"ax\"",
    ".globl \\name",
    ".balign 8",
    "\\name:",
    "    stmg %r0,%r15,\\save",
    "    lg %r14,\\old",
    "    tmhh %r14,1",
    "    jz 3f",
    "    lg %r15,{kstack}",
    "    j 1f",
    // Supervisor state: a stack pointer in (or just above) the guard page
    // means the stack overflowed; take the panic stack.
    "3:  clg %r15,{glow}",
    "    jl 1f",
    "    clg %r15,{ghigh}",
    "    jnl 1f",
    "    lg %r15,{panic}",
    "1:  aghi %r15,-{alloc}",
    "    mvc {gprs}(128,%r15),\\save",
    "    mvc {psw}(16,%r15),\\old",
    "    mvc {lc}(128,%r15),{lc_start}",
    "    xc 0(8,%r15),0(%r15)",
    "    la %r2,{frame}(%r15)",
    "    lghi %r3,\\class",
    "    brasl %r14,zdat_interrupt",
    "    mvc \\ret(16,%r0),{psw}(%r15)",
    "    lmg %r0,%r15,{gprs}(%r15)",
    "    lpswe \\ret",
    ".endm",
    "INT_ENTRY zdat_entry_restart, 0, {s0}, {o0}, {r0}",
    "INT_ENTRY zdat_entry_ext, 1, {s1}, {o1}, {r1}",
    "INT_ENTRY zdat_entry_svc, 2, {s2}, {o2}, {r2}",
    "INT_ENTRY zdat_entry_pgm, 3, {s3}, {o3}, {r3}",
    "INT_ENTRY zdat_entry_mcck, 4, {s4}, {o4}, {r4}",
    "INT_ENTRY zdat_entry_io, 5, {s5}, {o5}, {r5}",
    kstack = const lowcore::KERNEL_STACK,
    glow = const lowcore::STACK_GUARD_LOW,
    ghigh = const lowcore::STACK_GUARD_HIGH,
    panic = const lowcore::PANIC_STACK,
    alloc = const ABI_SAVE + FRAME_SIZE,
    frame = const ABI_SAVE,
    gprs = const ABI_SAVE + FRAME_GPRS,
    psw = const ABI_SAVE + FRAME_PSW,
    lc = const ABI_SAVE + FRAME_LC,
    lc_start = const LC_COPY_START,
    s0 = const lowcore::save_area(0),
    s1 = const lowcore::save_area(1),
    s2 = const lowcore::save_area(2),
    s3 = const lowcore::save_area(3),
    s4 = const lowcore::save_area(4),
    s5 = const lowcore::save_area(5),
    o0 = const lowcore::OLD_PSW[0],
    o1 = const lowcore::OLD_PSW[1],
    o2 = const lowcore::OLD_PSW[2],
    o3 = const lowcore::OLD_PSW[3],
    o4 = const lowcore::OLD_PSW[4],
    o5 = const lowcore::OLD_PSW[5],
    r0 = const lowcore::return_psw(0),
    r1 = const lowcore::return_psw(1),
    r2 = const lowcore::return_psw(2),
    r3 = const lowcore::return_psw(3),
    r4 = const lowcore::return_psw(4),
    r5 = const lowcore::return_psw(5),
);

extern "C" {
    fn zdat_entry_restart();
    fn zdat_entry_ext();
    fn zdat_entry_svc();
    fn zdat_entry_pgm();
    fn zdat_entry_mcck();
    fn zdat_entry_io();
}

/// Address of the entry stub for `class`.
pub fn stub(class: IntClass) -> u64 {
    let f: unsafe extern "C" fn() = match class {
        IntClass::Restart => zdat_entry_restart,
        IntClass::External => zdat_entry_ext,
        IntClass::Svc => zdat_entry_svc,
        IntClass::Program => zdat_entry_pgm,
        IntClass::MachineCheck => zdat_entry_mcck,
        IntClass::Io => zdat_entry_io,
    };
    f as usize as u64
}
