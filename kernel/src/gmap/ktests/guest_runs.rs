//! The gmap_guest suite: a guest program runs on a Vcpu over the gmap,
//! summing an array across lazily linked segments, and is stopped cleanly
//! past its limit, at an unmapped address and on an invalid instruction.

use alloc::sync::Arc;

use crate::sync::Mutex;

use super::{gmap, host, kassert_ok, VM_BASE};
use crate::arch::pgm::code;
use crate::dat::entry::SEGMENT_SIZE;
use crate::gmap::{gmap_remove, Gmap, HostMm};
use crate::ktest::{KResult, Outcome};
use crate::{kassert, kassert_eq, kassert_matches, kfail};

// The guest program: sum r3 doublewords from r2 into r4, then SVC 1.
// Position-independent (relative branch only), copied into guest memory.
core::arch::global_asm!(
    ".section .rodata.guest_sum,\"a\"",
    ".balign 8",
    ".globl zdat_guest_sum_start",
    "zdat_guest_sum_start:",
    "    lghi %r4,0",
    "2:  ag %r4,0(%r2)",
    "    la %r2,8(%r2)",
    "    brctg %r3,2b",
    "    svc 1",
    "    .short 0x0000",
    ".globl zdat_guest_sum_end",
    "zdat_guest_sum_end:",
);

// A guest that switches its address-space mode (SACF to the mode in r6:
// 256 secondary, 768 home), loads r4 from and stores r5 to the address in
// r2, switches back and ends with SVC 1.
core::arch::global_asm!(
    ".section .rodata.guest_sacf,\"a\"",
    ".balign 8",
    ".globl zdat_guest_sacf_start",
    "zdat_guest_sacf_start:",
    "    sacf 0(%r6)",
    "    lg %r4,0(%r2)",
    "    stg %r5,0(%r2)",
    "    sacf 0",
    "    svc 1",
    ".globl zdat_guest_sacf_end",
    "zdat_guest_sacf_end:",
);

extern "C" {
    static zdat_guest_sum_start: u8;
    static zdat_guest_sum_end: u8;
    static zdat_guest_sacf_start: u8;
    static zdat_guest_sacf_end: u8;
}

/// What the SACF guest targets: a kernel static at its identity-mapped
/// address. The guest must neither read nor change it.
static KERNEL_SECRET: core::sync::atomic::AtomicU64 =
    core::sync::atomic::AtomicU64::new(0x5ec2_e700_0000_c0de);

/// A problem-state guest that switches to secondary-space or home-space
/// mode reaches only its own space (secondary: the run loads CR7 with the
/// gmap's ASCE too) or is refused (home space is not available in problem
/// state; a guest PSW left in another mode is refused on re-entry): the
/// kernel's memory stays out of reach.
pub(super) fn guest_cannot_reach_kernel_memory_by_changing_space() -> KResult {
    use crate::gmap::guest::{GuestStop, Vcpu};
    use core::sync::atomic::Ordering;
    // SAFETY: the two symbols bracket the guest program in .rodata.
    let code = unsafe {
        let s = core::ptr::addr_of!(zdat_guest_sacf_start);
        let e = core::ptr::addr_of!(zdat_guest_sacf_end);
        core::slice::from_raw_parts(s, e as usize - s as usize)
    };
    let secret = 0x5ec2_e700_0000_c0deu64;
    let target = core::ptr::addr_of!(KERNEL_SECRET) as u64;
    let h = host()?;
    let g = gmap(&h, (1 << 31) - 1)?;
    kassert_ok(g.gmap_map_segment(VM_BASE, 0, 64 * SEGMENT_SIZE))?;
    {
        let mut hm = h.lock();
        kassert_ok(hm.populate(VM_BASE + CODE_GADDR, true).map(|_| ()))?;
        let f = hm
            .frame_bytes(VM_BASE + CODE_GADDR)
            .or_else(|e| kfail!("frame_bytes: {e:?}"))?;
        f[..code.len()].copy_from_slice(code);
    }
    for mode in [256u64, 768] {
        let mut cpu = Vcpu::new(&g, CODE_GADDR);
        cpu.ctx.gprs[2] = target;
        cpu.ctx.gprs[5] = 0xdead_beef_0bad_f00d;
        cpu.ctx.gprs[6] = mode;
        let r = cpu.run(&g, 100);
        kassert_eq!(
            KERNEL_SECRET.load(Ordering::SeqCst),
            secret,
            "SACF {}: the guest wrote the kernel's memory ({:?})",
            mode,
            r
        );
        kassert!(
            !(r == Ok(1) && cpu.ctx.gprs[4] == secret),
            "SACF {}: the guest read the kernel's memory",
            mode
        );
        let refused = matches!(
            r,
            Err(GuestStop::BadPsw(_)) | Err(GuestStop::Program(..)) | Ok(1)
        );
        kassert!(refused, "SACF {}: {:?}", mode, r);
        crate::ktest::diag(format_args!("guest SACF {mode}: {r:?}"));
    }
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

fn guest_code() -> &'static [u8] {
    // SAFETY: the two symbols bracket the guest program in .rodata.
    unsafe {
        let s = core::ptr::addr_of!(zdat_guest_sum_start);
        let e = core::ptr::addr_of!(zdat_guest_sum_end);
        core::slice::from_raw_parts(s, e as usize - s as usize)
    }
}

const CODE_GADDR: u64 = 0x1000;
const ARRAY_GADDR: u64 = 0x10_0000;

/// A host and gmap with the guest program at CODE_GADDR and `segs`
/// segments of array at ARRAY_GADDR; the last segment is left unpopulated
/// (zero pages, each a page fault). Returns the expected sum.
fn guest_setup(
    segs: u64,
    limit: u64,
    map_segs: u64,
) -> Result<(Arc<Mutex<HostMm>>, Gmap, u64), Outcome> {
    let h = host()?;
    let g = gmap(&h, limit)?;
    kassert_ok(g.gmap_map_segment(VM_BASE, 0, map_segs * SEGMENT_SIZE))?;
    let mut hm = h.lock();
    kassert_ok(hm.populate(VM_BASE + CODE_GADDR, true).map(|_| ()))?;
    let code = guest_code();
    let f = hm
        .frame_bytes(VM_BASE + CODE_GADDR)
        .or_else(|e| kfail!("frame_bytes: {e:?}"))?;
    f[..code.len()].copy_from_slice(code);
    let mut sum = 0u64;
    for s in 0..segs - 1 {
        for p in 0..256u64 {
            let va = VM_BASE + ARRAY_GADDR + s * SEGMENT_SIZE + p * 0x1000;
            kassert_ok(hm.populate(va, true).map(|_| ()))?;
            {
                let f = hm
                    .frame_bytes(va)
                    .or_else(|e| kfail!("frame_bytes: {e:?}"))?;
                for (i, w) in f.chunks_exact_mut(8).enumerate() {
                    let v = s * 1_000_000 + p * 1000 + i as u64;
                    w.copy_from_slice(&v.to_be_bytes());
                    sum = sum.wrapping_add(v);
                }
            }
        }
    }
    drop(hm);
    Ok((h, g, sum))
}

pub(super) fn guest_sums_an_array_over_lazily_linked_segments() -> KResult {
    use crate::gmap::guest::Vcpu;
    let segs = 4u64;
    let (h, g, sum) = guest_setup(segs, (1 << 31) - 1, segs + 1)?;
    let mut cpu = Vcpu::new(&g, CODE_GADDR);
    cpu.ctx.gprs[2] = ARRAY_GADDR;
    cpu.ctx.gprs[3] = segs * SEGMENT_SIZE / 8;
    let r = cpu.run(&g, 10_000);
    kassert_eq!(r, Ok(1));
    kassert_eq!(cpu.ctx.gprs[4], sum);
    // One segment fault for the code, one per populated array segment, and
    // one per page of the segment the host had not populated (its first
    // fault also links the segment).
    kassert_eq!(cpu.faults, 1 + (segs - 1) + 256);
    kassert_eq!(cpu.exits, cpu.faults + 1);
    crate::ktest::diag(format_args!(
        "guest summed {} doublewords: {} exits, {} faults resolved by gmap_fault",
        segs * SEGMENT_SIZE / 8,
        cpu.exits,
        cpu.faults
    ));
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

pub(super) fn guest_past_its_limit_is_stopped_cleanly() -> KResult {
    use crate::gmap::guest::{GuestStop, Vcpu};
    // The gmap ends 1 MiB into the array: the guest's loop walks past it.
    let limit = ARRAY_GADDR + SEGMENT_SIZE - 1;
    let (h, g, _) = guest_setup(2, limit, 2)?;
    let mut cpu = Vcpu::new(&g, CODE_GADDR);
    cpu.ctx.gprs[2] = ARRAY_GADDR;
    cpu.ctx.gprs[3] = 2 * SEGMENT_SIZE / 8;
    kassert_eq!(
        cpu.run(&g, 10_000),
        Err(GuestStop::BeyondLimit(ARRAY_GADDR + SEGMENT_SIZE))
    );
    // A guest address no segment maps: a clear reason too.
    let mut cpu = Vcpu::new(&g, CODE_GADDR);
    cpu.ctx.gprs[2] = 0x80_0000 - 8;
    cpu.ctx.gprs[3] = 1;
    let r = cpu.run(&g, 10);
    kassert_matches!(
        r,
        Err(GuestStop::NotMapped(_)) | Err(GuestStop::BeyondLimit(_))
    );
    // A guest that executes an invalid instruction stops with its code.
    let mut cpu = Vcpu::new(&g, CODE_GADDR + guest_code().len() as u64 - 2);
    kassert_eq!(
        cpu.run(&g, 10),
        Err(GuestStop::Program(
            code::OPERATION,
            CODE_GADDR + guest_code().len() as u64
        ))
    );
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}
