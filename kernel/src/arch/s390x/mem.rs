//! Bulk memory primitives that the compiler's memset would do a doubleword
//! at a time: XC clears 256 bytes per instruction.

use core::arch::asm;

/// Zero `len` bytes at `addr` (real or identity-mapped). A multiple of 256
/// is cleared with XC; a remainder byte by byte.
///
/// # Safety
/// The caller owns `[addr, addr + len)`.
pub unsafe fn clear(addr: u64, len: u64) {
    let blocks = len / 256;
    if blocks > 0 {
        // SAFETY: XC of a range with itself writes zeros to exactly
        // `blocks * 256` bytes the caller owns.
        unsafe {
            asm!(
                "2: xc 0(256,{a}),0({a})",
                "la {a},256({a})",
                "brctg {n},2b",
                a = inout(reg_addr) addr => _,
                n = inout(reg) blocks => _,
                options(nostack),
            );
        }
    }
    let rest = len % 256;
    if rest > 0 {
        // SAFETY: the tail of the caller's range.
        unsafe { core::ptr::write_bytes((addr + blocks * 256) as *mut u8, 0, rest as usize) };
    }
}
