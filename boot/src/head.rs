//! What QEMU loads and enters: lowcore presets, the head at 0x10000, the
//! parm area, `_start` (BSS, stack) and `boot_main`.

use core::cell::UnsafeCell;

use kernel::arch::lowcore::{self, IntClass};
use kernel::arch::psw::{mask, Psw};
use kernel::arch::s390x::insn;
use kernel::machine::BootInfo;

/// Size of the boot stack (the kernel's only stack on this CPU), of the
/// stack interruptions from problem state run on, and of the stack a stack
/// overflow is handled on. Each starts with a guard page that the kernel
/// unmaps once DAT is on.
const GUARD: usize = 4096;
const BOOT_STACK_SIZE: usize = 256 * 1024 + GUARD;
const IRQ_STACK_SIZE: usize = 64 * 1024 + GUARD;
const PANIC_STACK_SIZE: usize = 32 * 1024 + GUARD;
/// r15 values this close above the boot stack's guard page count as an
/// overflow too: the handler's frame (432 bytes) would not fit.
const GUARD_MARGIN: u64 = 1024;

#[repr(C, align(4096))]
struct Stack<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: a stack is only ever used through r15 by the one CPU it belongs to.
unsafe impl<const N: usize> Sync for Stack<N> {}

static BOOT_STACK: Stack<BOOT_STACK_SIZE> = Stack(UnsafeCell::new([0; BOOT_STACK_SIZE]));
static IRQ_STACK: Stack<IRQ_STACK_SIZE> = Stack(UnsafeCell::new([0; IRQ_STACK_SIZE]));
static PANIC_STACK: Stack<PANIC_STACK_SIZE> = Stack(UnsafeCell::new([0; PANIC_STACK_SIZE]));

/// Command-line area QEMU fills (Linux's parm area layout).
const COMMAND_LINE_OFFSET: usize = 0x80;
const COMMAND_LINE_SIZE: usize = 0xb80;

core::arch::global_asm!(
    // Lowcore: every new PSW a disabled wait whose address names the class
    // (0x0dead1a0 = restart ... 0x0dead1f0 = I/O), so an interruption before
    // boot_main installed the handlers ends the run with a failure that
    // `-d guest_errors` can explain.
    ".section .lowcore,\"aw\"",
    // Labels name the lowcore fields, so gdb's `x/4gx 0x1a0` says
    // <lc_restart_new_psw> instead of the nearest unrelated symbol.
    ".globl lc_ext_int_code, lc_svc_code, lc_pgm_ilc, lc_pgm_code, lc_teid",
    ".globl lc_restart_old_psw, lc_external_old_psw, lc_svc_old_psw",
    ".globl lc_program_old_psw, lc_mcck_old_psw, lc_io_old_psw",
    ".globl lc_restart_new_psw, lc_external_new_psw, lc_svc_new_psw",
    ".globl lc_program_new_psw, lc_mcck_new_psw, lc_io_new_psw",
    ".org 0x86",
    ".type lc_ext_int_code, @object",
    ".size lc_ext_int_code, 2",
    "lc_ext_int_code:",
    ".org 0x8a",
    ".type lc_svc_code, @object",
    ".size lc_svc_code, 2",
    "lc_svc_code:",
    ".org 0x8c",
    ".type lc_pgm_ilc, @object",
    ".size lc_pgm_ilc, 2",
    "lc_pgm_ilc:",
    ".org 0x8e",
    ".type lc_pgm_code, @object",
    ".size lc_pgm_code, 2",
    "lc_pgm_code:",
    ".org 0xa8",
    ".type lc_teid, @object",
    ".size lc_teid, 8",
    "lc_teid:",
    ".org 0x120",
    ".type lc_restart_old_psw, @object",
    ".size lc_restart_old_psw, 16",
    "lc_restart_old_psw:",
    ".org 0x130",
    ".type lc_external_old_psw, @object",
    ".size lc_external_old_psw, 16",
    "lc_external_old_psw:",
    ".org 0x140",
    ".type lc_svc_old_psw, @object",
    ".size lc_svc_old_psw, 16",
    "lc_svc_old_psw:",
    ".org 0x150",
    ".type lc_program_old_psw, @object",
    ".size lc_program_old_psw, 16",
    "lc_program_old_psw:",
    ".org 0x160",
    ".type lc_mcck_old_psw, @object",
    ".size lc_mcck_old_psw, 16",
    "lc_mcck_old_psw:",
    ".org 0x170",
    ".type lc_io_old_psw, @object",
    ".size lc_io_old_psw, 16",
    "lc_io_old_psw:",
    ".org 0x1a0",
    ".type lc_restart_new_psw, @object",
    ".size lc_restart_new_psw, 16",
    "lc_restart_new_psw:",
    ".quad 0x0002000180000000, 0x0dead1a0",
    ".type lc_external_new_psw, @object",
    ".size lc_external_new_psw, 16",
    "lc_external_new_psw:",
    ".quad 0x0002000180000000, 0x0dead1b0",
    ".type lc_svc_new_psw, @object",
    ".size lc_svc_new_psw, 16",
    "lc_svc_new_psw:",
    ".quad 0x0002000180000000, 0x0dead1c0",
    ".type lc_program_new_psw, @object",
    ".size lc_program_new_psw, 16",
    "lc_program_new_psw:",
    ".quad 0x0002000180000000, 0x0dead1d0",
    ".type lc_mcck_new_psw, @object",
    ".size lc_mcck_new_psw, 16",
    "lc_mcck_new_psw:",
    ".quad 0x0002000180000000, 0x0dead1e0",
    ".type lc_io_new_psw, @object",
    ".size lc_io_new_psw, 16",
    "lc_io_new_psw:",
    ".quad 0x0002000180000000, 0x0dead1f0",
    ".org 0x200",
    // Head: QEMU starts here (64-bit, DAT off, interruptions off).
    ".section .head,\"ax\"",
    ".globl _head",
    "_head:",
    "    jg _start",
    // Parm area at 0x10400: max command-line size at +0x30, the line at +0x80.
    ".section .parmarea,\"aw\"",
    ".globl __parm_area",
    "__parm_area:",
    ".org 0x30",
    ".quad {cmdline_size}",
    ".org 0x80",
    ".byte 0",
    // Entry: clear BSS (it holds the stacks), set the stack, call Rust.
    ".section .text.entry,\"ax\"",
    ".globl _start",
    ".type _start, @function",
    "_start:",
    // Call-frame information: _start is the outermost frame (no return
    // address), so gdb's `bt` ends here instead of "PC not saved".
    "    .cfi_startproc",
    "    .cfi_undefined %r14",
    "    larl %r2,__bss_start",
    "    larl %r3,__bss_end",
    "0:  clgr %r2,%r3",
    "    jhe 1f",
    "    xc 0(256,%r2),0(%r2)",
    "    aghi %r2,256",
    "    j 0b",
    "1:  larl %r15,{boot_stack}",
    "    agfi %r15,{boot_stack_size}-160",
    "    xc 0(8,%r15),0(%r15)",
    "    brasl %r14,boot_main",
    "    .short 0x0000",
    "    .cfi_endproc",
    ".size _start, . - _start",
    cmdline_size = const COMMAND_LINE_SIZE,
    boot_stack = sym BOOT_STACK,
    boot_stack_size = const BOOT_STACK_SIZE,
);

extern "C" {
    static __parm_area: [u8; 0xc00];
    static __image_start: u8;
    static __image_end: u8;
}

fn command_line() -> &'static str {
    // SAFETY: the parm area is part of the image, written by QEMU before the
    // CPU started and never written again.
    let area: &'static [u8; 0xc00] = unsafe { &*core::ptr::addr_of!(__parm_area) };
    let line = &area[COMMAND_LINE_OFFSET..COMMAND_LINE_OFFSET + COMMAND_LINE_SIZE];
    let len = line.iter().position(|&b| b == 0).unwrap_or(line.len());
    core::str::from_utf8(&line[..len]).unwrap_or("")
}

fn install_new_psws() {
    for class in IntClass::ALL {
        let psw = Psw::new(mask::BASE, crate::entry::stub(class));
        let slot = lowcore::NEW_PSW[class as usize];
        // SAFETY: the new-PSW slots are ours to set; each points at an entry
        // stub that saves state and calls the kernel's handler.
        unsafe {
            insn::lowcore_write_u64(slot, psw.mask);
            insn::lowcore_write_u64(slot + 8, psw.addr);
        }
    }
    let irq_top = IRQ_STACK.0.get() as u64 + IRQ_STACK_SIZE as u64 - 160;
    let panic_top = PANIC_STACK.0.get() as u64 + PANIC_STACK_SIZE as u64 - 160;
    let guard = BOOT_STACK.0.get() as u64;
    // SAFETY: software slots the entry stubs read: the stack for
    // interruptions from problem state, and the overflow window of the
    // boot stack with the stack to use then.
    unsafe {
        insn::lowcore_write_u64(lowcore::KERNEL_STACK, irq_top);
        insn::lowcore_write_u64(lowcore::PANIC_STACK, panic_top);
        insn::lowcore_write_u64(lowcore::STACK_GUARD_LOW, guard);
        insn::lowcore_write_u64(
            lowcore::STACK_GUARD_HIGH,
            guard + GUARD as u64 + GUARD_MARGIN,
        );
    }
}

/// The guard page at the bottom of each stack.
fn stack_guards() -> [u64; 3] {
    [
        BOOT_STACK.0.get() as u64,
        IRQ_STACK.0.get() as u64,
        PANIC_STACK.0.get() as u64,
    ]
}

#[no_mangle]
extern "C" fn boot_main() -> ! {
    install_new_psws();
    let image_start = core::ptr::addr_of!(__image_start) as u64;
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    kernel::start_kernel(BootInfo {
        cmdline: command_line(),
        image_start,
        image_end,
        stack_guards: stack_guards(),
    })
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    kernel::panic::panic(info)
}
