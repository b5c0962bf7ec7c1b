//! In-kernel benchmarks (`python3 x.py bench`, command-line flag `bench`).
//!
//! x.py runs QEMU with `-icount shift=0`: virtual time advances 1 ns per
//! guest instruction, and the TOD clock follows virtual time, so a TOD
//! delta is an instruction count (4096 TOD units per microsecond). Each
//! benchmark prints `BENCH <name> ops=<n> tod=<delta>`; x.py turns that
//! into instructions per operation and compares against the peers measured
//! in the same run.

use crate::arch::s390x::tod::stck;
use crate::kprintln;
use crate::mm::{self, addr::PAGE_SIZE, AllocFlags};

/// Operations per timed loop.
const OPS: u64 = 20_000;

fn report(name: &str, ops: u64, tod: u64) {
    kprintln!("BENCH {} ops={} tod={}", name, ops, tod);
}

/// Warm-up calls before the timed ones.
const WARMUP: u64 = 64;

/// Time `ops` calls of `f` after `WARMUP` untimed ones. One loop, so `f`
/// has a single call site and is inlined into it: what is timed is the
/// operation, not a call into a closure. Every benchmark (ours, the peers,
/// the empty baseline) goes through this same loop.
#[inline(always)]
fn measure(name: &str, ops: u64, mut f: impl FnMut()) {
    let mut t0 = 0;
    for i in 0..WARMUP + ops {
        if i == WARMUP {
            t0 = stck();
        }
        f();
    }
    report(name, ops, stck() - t0);
}

/// The empty loop, so x.py can subtract the loop and STCK overhead.
fn baseline() {
    measure("baseline_empty_loop", OPS, || core::hint::black_box(()));
}

/// Allocate a block and free it. The handle goes through `black_box` (as
/// the peers' pointers do) so the compiler cannot see that the page it
/// frees is the one it just set up.
/// The order is a constant, as it is at nearly every alloc_pages call.
fn buddy_order<const ORDER: u32>(name: &str) {
    measure(name, OPS, || {
        if let Ok(p) = mm::alloc_pages(ORDER, AllocFlags::empty()) {
            let _ = mm::free_pages(core::hint::black_box(p));
        }
    });
}

/// Allocate every order-0 page there is, then free them all: cost per page.
fn alloc_all_then_free() {
    mm::drain_pcp();
    let t0 = stck();
    let mut head = u64::MAX;
    let mut n = 0u64;
    while let Ok(p) = mm::alloc_pages(0, AllocFlags::empty()) {
        let (pfn, _) = p.into_raw();
        let ptr = mm::memmap().frame_ptr(pfn) as *mut u64;
        // SAFETY: the page is allocated to this benchmark; word 0 chains it.
        unsafe { ptr.write_volatile(head) };
        head = pfn.0;
        n += 1;
    }
    while head != u64::MAX {
        let ptr = mm::memmap().frame_ptr(mm::addr::Pfn(head)) as *mut u64;
        // SAFETY: the chain link written above.
        let next = unsafe { ptr.read_volatile() };
        // SAFETY: the page came from alloc_pages(0) above; nothing refers to
        // it after this.
        let _ = unsafe { mm::free_pages_raw(mm::addr::Pfn(head), 0) };
        head = next;
    }
    report("alloc_all_then_free_per_page", n, stck() - t0);
}

fn memmap_init() {
    if let Some(l) = mm::layout() {
        report("memmap_init_per_frame", l.memory / PAGE_SIZE, l.init_tod);
    }
}

#[cfg(feature = "bench")]
mod peers {
    use core::alloc::Layout;

    use linked_list_allocator::Heap;

    use super::{measure, OPS};
    use crate::mm::{self, AllocFlags, MAX_ORDER};

    /// The same page-sized allocations through linked_list_allocator
    /// (Layout 4096/4096) on a 4 MiB region.
    pub fn linked_list() {
        let Ok(region) = mm::alloc_pages(MAX_ORDER, AllocFlags::empty()) else {
            crate::kprintln!("BENCH-NOTE a peer is not measured: no free 4 MiB block");
            return;
        };
        let mut heap = Heap::empty();
        let bottom = mm::memmap().frame_ptr(region.pfn());
        // SAFETY: the region is allocated to this benchmark until freed below.
        unsafe { heap.init(bottom, (region.nr_pages() * mm::addr::PAGE_SIZE) as usize) };
        let layout = Layout::from_size_align(4096, 4096).unwrap_or(Layout::new::<u8>());
        measure("peer_linked_list_allocator_page", OPS, || {
            if let Ok(p) = heap.allocate_first_fit(layout) {
                // SAFETY: `p` was just allocated from `heap` with `layout`.
                unsafe { heap.deallocate(core::hint::black_box(p), layout) };
            }
        });
        // `heap` (no Drop) is not used past this point: its region goes.
        let _ = mm::free_pages(region);
    }

    /// buddy_system_allocator's FrameAllocator over the same 1024 frames.
    pub fn buddy_system() {
        let Ok(region) = mm::alloc_pages(MAX_ORDER, AllocFlags::empty()) else {
            crate::kprintln!("BENCH-NOTE a peer is not measured: no free 4 MiB block");
            return;
        };
        let start = region.pfn().0 as usize;
        let mut fa = buddy_system_allocator::FrameAllocator::<32>::new();
        fa.add_frame(start, start + region.nr_pages() as usize);
        measure("peer_buddy_system_allocator_frame", OPS, || {
            if let Some(f) = fa.alloc(1) {
                fa.dealloc(core::hint::black_box(f), 1);
            }
        });
        drop(fa);
        let _ = mm::free_pages(region);
    }
}

/// A figure that is not a time: printed as `BENCHV <name> <value> <unit>`.
fn value(name: &str, v: u64, unit: &str) {
    kprintln!("BENCHV {} {} {}", name, v, unit);
}

mod dat {
    use super::{report, stck, value};
    use crate::dat::entry::{Prot, SEGMENT_SIZE};
    use crate::dat::space::AddressSpace;
    use crate::dat::tlb;
    use crate::dat::walk::Facilities;
    use crate::mm::addr::{PhysAddr, PAGE_SIZE};
    use crate::mm::ptdesc::nr_pagetable;

    const BASE: u64 = 0x4000_0000;

    fn space(pgste: bool) -> Option<AddressSpace> {
        AddressSpace::new(1 << 31, 1 << 31, pgste).ok()
    }

    /// Map then unmap `len` bytes, timed per 4 KiB page.
    fn map_unmap(name: &str, len: u64, rounds: u64) {
        let Some(mut s) = space(false) else { return };
        let t0 = stck();
        for _ in 0..rounds {
            let _ = s.map_range(BASE, PhysAddr(0), len, Prot::ReadOnly);
            let _ = s.unmap_range(BASE, len);
        }
        report(name, rounds * (len / PAGE_SIZE), stck() - t0);
    }

    /// `map_range` alone over `len` bytes of a fresh space (tables
    /// included), per 4 KiB page: what building an identity map costs.
    fn map_only(name: &str, len: u64, rounds: u64) {
        let Some(mut s) = space(false) else { return };
        let mut tod = 0;
        for _ in 0..rounds {
            let t0 = stck();
            let _ = s.map_range(BASE, PhysAddr(0), len, Prot::ReadWrite);
            tod += stck() - t0;
            let _ = s.unmap_range(BASE, len);
        }
        report(name, rounds * (len / PAGE_SIZE), tod);
    }

    pub fn run(memory: u64) {
        map_only("dat_map_range_per_page_64mib", 64 * SEGMENT_SIZE, 4);
        map_unmap("dat_map_unmap_per_page_1page", PAGE_SIZE, 2000);
        map_unmap("dat_map_unmap_per_page_1mib", SEGMENT_SIZE, 20);
        if memory >= 1 << 30 {
            map_unmap("dat_map_unmap_per_page_1gib", 1 << 30, 1);
        }
        // Software translation of mapped addresses.
        if let Some(mut s) = space(false) {
            let len = 16 * SEGMENT_SIZE;
            let _ = s.map_range(BASE, PhysAddr(0), len, Prot::ReadOnly);
            let n = 20_000u64;
            let t0 = stck();
            for i in 0..n {
                let va = BASE + (i * 7919 * PAGE_SIZE) % len;
                let _ = core::hint::black_box(s.translate(va, Facilities::default(), false));
            }
            report("dat_software_translate", n, stck() - t0);
        }
        // TLB flushes per unmapped MiB: a range unmap through mmu_gather
        // against unmapping the same pages one by one.
        if let Some(mut s) = space(false) {
            let mib = 8;
            let len = mib * SEGMENT_SIZE;
            let _ = s.map_range(BASE, PhysAddr(0), len, Prot::ReadOnly);
            let f0 = tlb::total_flushes();
            let _ = s.unmap_range(BASE, len);
            value(
                "dat_flushes_per_mib_gather",
                (tlb::total_flushes() - f0) / mib,
                "flushes",
            );
            let _ = s.map_range(BASE, PhysAddr(0), len, Prot::ReadOnly);
            let f0 = tlb::total_flushes();
            let mut va = BASE;
            while va < BASE + len {
                let _ = s.unmap(va);
                va += PAGE_SIZE;
            }
            value(
                "dat_flushes_per_mib_page_by_page",
                (tlb::total_flushes() - f0) / mib,
                "flushes",
            );
        }
        // Page-table memory for 1 GiB: contiguous, and scattered 4 KiB pages
        // 1 MiB apart, with 2 KiB fragments and with whole-page tables.
        let gib = 1u64 << 30;
        for (layout, step, len) in [
            ("contiguous", PAGE_SIZE, gib),
            ("scattered", SEGMENT_SIZE, PAGE_SIZE),
        ] {
            let mut pte_pages = [0u64; 2];
            for (i, pgste) in [false, true].into_iter().enumerate() {
                let Some(mut s) = space(pgste) else { continue };
                let t0 = nr_pagetable();
                let mut va = BASE;
                while va < BASE + gib {
                    let _ = s.map_range(va, PhysAddr(0), len, Prot::ReadOnly);
                    va += if step == PAGE_SIZE { len } else { step };
                }
                // Only the PTE tables: the segment table (4 pages) is common.
                pte_pages[i] = nr_pagetable() - t0;
                let kind = if pgste { "whole_page" } else { "fragments" };
                let mut name = crate::fmtbuf::FixedBuf::<64>::new();
                let _ = core::fmt::Write::write_fmt(
                    &mut name,
                    format_args!("dat_pte_table_kib_1gib_{layout}_{kind}"),
                );
                value(name.as_str(), pte_pages[i] * 4, "KiB");
            }
            if let Some(ratio) = (pte_pages[0] * 1000).checked_div(pte_pages[1]) {
                let mut name = crate::fmtbuf::FixedBuf::<64>::new();
                let _ = core::fmt::Write::write_fmt(
                    &mut name,
                    format_args!("dat_fragment_ratio_x1000_{layout}"),
                );
                value(name.as_str(), ratio, "permille");
            }
        }
    }
}

/// TOD units to guest instructions under `-icount shift=0`.
fn tod_to_instructions(tod: u64) -> u64 {
    tod * 1000 / 4096
}

/// Parts per million of memory.
fn ppm(bytes: u64, memory: u64) -> u64 {
    bytes * 1_000_000 / memory.max(1)
}

/// Descriptor memory now: slab pages in memdesc, none in the overlay
/// (its descriptors are the memmap's own entries).
fn desc_bytes() -> u64 {
    #[cfg(feature = "memdesc")]
    return mm::desc::desc_bytes();
    #[cfg(not(feature = "memdesc"))]
    return 0;
}

/// What each memory-descriptor layout costs in memory: the memmap and the
/// descriptors right after boot, and with every page the allocator will
/// give made a PTE-table page (the most descriptors memory can need).
fn layout_figures(boot_tod: u64) {
    value(
        "boot_instructions",
        tod_to_instructions(boot_tod),
        "instructions",
    );
    let Some(l) = mm::layout() else { return };
    value(
        "struct_page_bytes",
        core::mem::size_of::<mm::page::Page>() as u64,
        "bytes",
    );
    value("memmap_ppm", ppm(l.memmap_bytes, l.memory), "ppm");
    value("desc_bytes_boot", desc_bytes(), "bytes");
    value("desc_ppm_boot", ppm(desc_bytes(), l.memory), "ppm");
    // Page-table memory at boot (the identity map, mostly).
    value(
        "pagetable_ppm_boot",
        ppm(mm::ptdesc::nr_pagetable() * PAGE_SIZE, l.memory),
        "ppm",
    );
}

/// Memory full of page tables: every page the allocator gives made a PTE
/// page, then all freed. Last, because memdesc's descriptor slabs stay
/// (type-stable, see `mm::desc`): the free 4 MiB blocks before and after
/// show what that costs in large blocks.
fn full_of_page_tables() {
    let Some(l) = mm::layout() else { return };
    mm::drain_pcp();
    let big = |v: [u64; mm::buddy::NR_ORDERS]| v[mm::MAX_ORDER as usize];
    let before = big(mm::nr_free_per_order());
    let mut tables = alloc::vec::Vec::new();
    if tables.try_reserve((l.memory / PAGE_SIZE) as usize).is_err() {
        kprintln!("BENCH-NOTE no heap for the page-table handles: full figures not measured");
        return;
    }
    while let Ok(p) = mm::ptdesc::pagetable_alloc(0) {
        match mm::ptdesc::pagetable_pte_ctor(p) {
            Ok(t) => tables.push(t),
            Err(_) => break,
        }
    }
    let pages = tables.len() as u64;
    let full = desc_bytes();
    drop(tables);
    value("full_pagetable_pages", pages, "pages");
    value("desc_ppm_full", ppm(full, l.memory), "ppm");
    value(
        "memmap_desc_ppm_full",
        ppm(l.memmap_bytes + full, l.memory),
        "ppm",
    );
    mm::drain_pcp();
    value("max_order_blocks_before_full", before, "blocks");
    value(
        "max_order_blocks_after_full",
        big(mm::nr_free_per_order()),
        "blocks",
    );
}

/// What sharing PTE tables with gmaps costs: a `gmap_fault` that links a
/// segment, an unlink, a host PTE change that 1, 4 and 16 linked gmaps
/// must see, and the notifier call a protected page adds to it.
mod gmaps {
    use super::{report, stck};
    use crate::dat::entry::{Prot, SEGMENT_SIZE};
    use crate::gmap::{gmap_create, gmap_remove, Access, HostMm};
    use crate::mm::addr::PAGE_SIZE;
    use alloc::vec::Vec;

    /// Host segments used.
    const SEGS: u64 = 32;
    const LIMIT: u64 = 1 << 31;

    fn count_notify(_gmap: u64, _start: u64, _end: u64) {
        NOTIFIED.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
    static NOTIFIED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

    /// Protect and unprotect each page of host segment 0 `rounds` times:
    /// TOD per PTE change.
    fn host_changes(
        host: &alloc::sync::Arc<crate::sync::Mutex<HostMm>>,
        rounds: u64,
    ) -> (u64, u64) {
        let mut h = host.lock();
        let pages = SEGMENT_SIZE / PAGE_SIZE;
        let t0 = stck();
        for _ in 0..rounds {
            for i in 0..pages {
                let _ = h.protect(i * PAGE_SIZE, Prot::ReadOnly);
                let _ = h.protect(i * PAGE_SIZE, Prot::ReadWrite);
            }
        }
        (rounds * pages * 2, stck() - t0)
    }

    pub fn run() {
        let Ok(host) = HostMm::new(LIMIT) else { return };
        if host.lock().populate_range(0, SEGS * SEGMENT_SIZE).is_err() {
            return;
        }
        let Ok(g) = gmap_create(&host, LIMIT) else {
            return;
        };
        if g.gmap_map_segment(0, 0, SEGS * SEGMENT_SIZE).is_err() {
            return;
        }
        // First touch of each segment: translate, find the host page
        // present, link the host PTE table into the gmap (its tables
        // allocated on the first one).
        let t0 = stck();
        for i in 0..SEGS {
            let _ = g.gmap_fault(i * SEGMENT_SIZE, Access::Read);
        }
        report("gmap_fault_link_segment", SEGS, stck() - t0);
        let t0 = stck();
        for i in 0..SEGS {
            let _ = g.gmap_unmap_segment(i * SEGMENT_SIZE, SEGMENT_SIZE);
        }
        report("gmap_unlink_segment", SEGS, stck() - t0);
        let _ = gmap_remove(g);
        // A host PTE change with segment 0 linked into k gmaps.
        let (n, tod) = host_changes(&host, 2);
        report("gmap_host_pte_change_0_linked", n, tod);
        for k in [1u64, 4, 16] {
            let mut gs = Vec::new();
            for _ in 0..k {
                let Ok(g) = gmap_create(&host, LIMIT) else {
                    break;
                };
                let _ = g.gmap_map_segment(0, 0, SEGMENT_SIZE);
                let _ = g.gmap_fault(0, Access::Read);
                gs.push(g);
            }
            let (n, tod) = host_changes(&host, 2);
            let mut name = crate::fmtbuf::FixedBuf::<48>::new();
            let _ = core::fmt::Write::write_fmt(
                &mut name,
                format_args!("gmap_host_pte_change_{k}_linked"),
            );
            report(name.as_str(), n, tod);
            if k == 1 {
                // The same changes on pages a gmap protected (PGSTE notify
                // bit): each first change calls the notifier. Re-armed
                // before every change, so the difference to the row above
                // is the protect plus the notifier call.
                crate::gmap::notify::gmap_register_pte_notifier(count_notify);
                let pages = SEGMENT_SIZE / PAGE_SIZE;
                let mut tod = 0;
                for i in 0..pages {
                    let _ = gs[0].gmap_protect_range(i * PAGE_SIZE, PAGE_SIZE);
                    let t0 = stck();
                    let _ = host.lock().protect(i * PAGE_SIZE, Prot::ReadOnly);
                    tod += stck() - t0;
                    let _ = host.lock().protect(i * PAGE_SIZE, Prot::ReadWrite);
                }
                crate::gmap::notify::gmap_unregister_pte_notifier(count_notify);
                report("gmap_host_pte_change_notified", pages, tod);
                // The notifier ran once per change (else the row above
                // measured something else).
                super::value(
                    "gmap_notifier_calls_per_256_changes",
                    NOTIFIED.load(core::sync::atomic::Ordering::Relaxed),
                    "calls",
                );
            }
            for g in gs {
                let _ = gmap_remove(g);
            }
        }
    }
}

/// The smp suite's shared-table stress (`smp.cpus_update_ptes_of_shared_
/// tables_in_parallel`) as 8 CPUs would run it, their shares one after the
/// other on this CPU: how many IPTEs and IDTEs it issues, broadcast and
/// local, with local clearing and with it turned off (every invalidation
/// broadcast, as zdat did before it kept attach masks). No CPU has the
/// space loaded, so with local clearing none needs to be broadcast. Under
/// -icount the two take about the same guest instructions: what a
/// broadcast costs is the rendezvous of all vCPUs in QEMU, host time the
/// smp suite's diagnostics show.
mod shared_tables {
    use super::{report, stck, value};
    use crate::dat::tlb;

    const CPUS: usize = 8;

    fn run_once(name: &str) {
        let Ok(space) = crate::smp_tests::shared_tables_space() else {
            return;
        };
        let f0 = tlb::flush_stats();
        let t0 = stck();
        let mut errors = 0;
        for cpu in 0..CPUS {
            errors += crate::smp_tests::shared_tables_work(&space, cpu);
        }
        let tod = stck() - t0;
        let f = tlb::flush_stats().since(f0);
        if errors != 0 {
            crate::kprintln!("BENCH-NOTE shared_tables {name}: {errors} operations failed");
        }
        let fig = |what: &str, v: u64| {
            let mut n = crate::fmtbuf::FixedBuf::<64>::new();
            let _ = core::fmt::Write::write_fmt(&mut n, format_args!("shared_tables_{name}{what}"));
            value(n.as_str(), v, "flushes");
        };
        fig("ipte_broadcast", f.ipte_global);
        fig("ipte_local", f.ipte_local);
        fig("idte_broadcast", f.idte_global);
        fig("idte_local", f.idte_local);
        let mut n = crate::fmtbuf::FixedBuf::<64>::new();
        let _ = core::fmt::Write::write_fmt(&mut n, format_args!("shared_tables_{name}per_ipte"));
        report(n.as_str(), f.ipte_global + f.ipte_local, tod);
    }

    pub fn run() {
        let was = tlb::local_clearing();
        run_once("");
        tlb::set_local_clearing(false);
        run_once("broadcast_only_");
        tlb::set_local_clearing(was);
    }
}

/// vSIE (issue "nested guests"): instructions per shadow fault with every
/// level below the top missing and with only the PTE missing, per
/// guest-1 store that unshadows a page table (and per store that
/// unshadows nothing, for the difference), per whole-shadow drop, and the
/// shadow-table memory that 1 GiB of guest-2 space takes.
mod vsie {
    use super::{report, stck, value};
    use crate::dat::entry::{Level, Prot, SEGMENT_SIZE};
    use crate::gmap::vsie_tests::{world, G2Tables, World, G1_DATA};

    const K: u64 = 64;

    fn note(what: &str) {
        crate::kprintln!("BENCH-NOTE vsie: {what} failed");
    }

    /// Guest-2 (region-second ASCE) maps K pages, one per region-third
    /// region: each first fault makes the region-third, segment and page
    /// tables.
    fn all_levels(w: &World) -> Option<()> {
        let mut t = G2Tables::new(w, Level::Region2).ok()?;
        let g2 = |i: u64| (i << 42) | (i << 31) | (i << 20) | 0x5000;
        for i in 0..K {
            t.map(w, g2(i), G1_DATA + i * 0x1000, Prot::ReadWrite)
                .ok()?;
        }
        let s = w.shadow(t.asce()).ok()?;
        let t0 = stck();
        for i in 0..K {
            s.shadow_fault(g2(i), false).ok()?;
        }
        report("vsie_shadow_fault_all_levels", K, stck() - t0);
        // The whole shadow dropped: a guest-1 store into guest-2's top
        // table, whose page the shadow protected.
        let top = t.asce().origin().0;
        let t0 = stck();
        w.w(top + 8 * 100, w.g.guest_read_u64(top + 8 * 100).ok()?)
            .ok()?;
        // 64 region-third, segment and page tables each: 192 below the top.
        report("vsie_full_shadow_drop_192_tables", 1, stck() - t0);
        s.is_removed().then_some(())
    }

    /// K pages of one guest-2 segment: after the first, each fault only
    /// makes the PTE. Then guest-1 stores into the page holding that page
    /// table (one unshadow of a 64-PTE table each round) against stores
    /// into a page no shadow uses.
    fn pte_only(w: &World) -> Option<()> {
        let mut t = G2Tables::new(w, Level::Region3).ok()?;
        let base = (3u64 << 31) | (5 << 20);
        for i in 0..K {
            t.map(w, base + i * 0x1000, G1_DATA + i * 0x1000, Prot::ReadWrite)
                .ok()?;
        }
        let s = w.shadow(t.asce()).ok()?;
        s.shadow_fault(base, false).ok()?;
        let t0 = stck();
        for i in 1..K {
            s.shadow_fault(base + i * 0x1000, false).ok()?;
        }
        report("vsie_shadow_fault_pte_only", K - 1, stck() - t0);
        let pte = G2Tables::pte_g1(&mut t, w, base)?;
        let (mut tod, mut plain) = (0, 0);
        let rounds = 16u64;
        for _ in 0..rounds {
            for i in 0..K {
                s.shadow_fault(base + i * 0x1000, false).ok()?;
            }
            let v = w.g.guest_read_u64(pte).ok()?;
            let t0 = stck();
            w.w(pte, v).ok()?;
            tod += stck() - t0;
            let t0 = stck();
            w.w(G1_DATA + 0x10_0000, v).ok()?;
            plain += stck() - t0;
        }
        report("vsie_guest1_store_unshadowing_pgt", rounds, tod);
        report("vsie_guest1_store_plain", rounds, plain);
        (s.stats().tables_dropped >= rounds).then_some(())
    }

    /// One page shadowed in each of the 1024 segments of 1 GiB: the shadow
    /// tables' memory for that GiB of guest-2 space, the top table
    /// included (a segment's page table is there once any of its pages
    /// is, so this is what the GiB takes shadowed whole).
    fn memory(w: &World) -> Option<()> {
        let mut t = G2Tables::new(w, Level::Region3).ok()?;
        let base = 1u64 << 31;
        let segs = 1024u64;
        for i in 0..segs {
            t.map(w, base + i * SEGMENT_SIZE, G1_DATA, Prot::ReadOnly)
                .ok()?;
        }
        let s = w.shadow(t.asce()).ok()?;
        for i in 0..segs {
            s.shadow_fault(base + i * SEGMENT_SIZE, false).ok()?;
        }
        let (_, pages) = s.table_counts();
        value("vsie_shadow_table_kib_per_gib", pages * 4, "KiB");
        Some(())
    }

    pub fn run() {
        for (name, f) in [
            ("all_levels", all_levels as fn(&World) -> Option<()>),
            ("pte_only", pte_only),
            ("memory", memory),
        ] {
            let Ok(w) = world() else {
                return note("world");
            };
            if f(&w).is_none() {
                note(name);
            }
        }
    }
}

/// A page-table lock taken and released with nobody waiting (the ticket
/// lock's fast path: one interlocked add, one compare-and-swap).
fn ptl_uncontended() {
    let Ok(p) = mm::ptdesc::pagetable_alloc(0) else {
        return;
    };
    let Ok(t) = mm::ptdesc::pagetable_pte_ctor(p) else {
        return;
    };
    let l = mm::ptdesc::ptlock_ptr(&t);
    measure("ptl_lock_unlock_uncontended", OPS, || {
        drop(core::hint::black_box(l.lock()));
    });
}

/// Lock hand-off (issue "cost that grows no faster than the work"): the
/// sleeping locks of `crate::sync` taken and released with nobody waiting,
/// and a `sync::Mutex` two CPUs take in turn as fast as they can, so
/// nearly every acquisition waits for the other CPU: it spins briefly,
/// sleeps, and is kicked by the releaser's external call. Under -icount
/// the vCPUs run one at a time and the TOD follows the instructions of
/// whichever runs, so the contended figure is both CPUs' instructions per
/// acquisition. x.py boots this with 2 CPUs (`bench bench.locks`).
mod locks {
    use core::sync::atomic::{AtomicU64, Ordering};

    use super::{measure, report, stck, value, OPS};
    use crate::smp;
    use crate::sync::{Mutex, RwLock};

    static M: Mutex<u64> = Mutex::new(0);
    static RW: RwLock<u64> = RwLock::new(0);
    const HANDOFFS: u64 = 2_000;
    static STARTED: AtomicU64 = AtomicU64::new(0);
    static FINISHED: AtomicU64 = AtomicU64::new(0);
    static T0: AtomicU64 = AtomicU64::new(0);
    static T1: AtomicU64 = AtomicU64::new(0);
    static N0: AtomicU64 = AtomicU64::new(0);
    static N1: AtomicU64 = AtomicU64::new(0);
    const WARM: u64 = 20;

    pub fn uncontended() {
        measure("mutex_lock_unlock_uncontended", OPS, || {
            *core::hint::black_box(&M).lock() += 1;
        });
        measure("rwlock_read_uncontended", OPS, || {
            core::hint::black_box(*core::hint::black_box(&RW).read());
        });
        measure("rwlock_write_uncontended", OPS, || {
            *core::hint::black_box(&RW).write() += 1;
        });
    }

    fn worker(cpu: usize) {
        if cpu > 1 {
            return;
        }
        // Both start together: the first to arrive waits (asleep) for the
        // other.
        let key = core::ptr::from_ref(&STARTED).addr() as u64;
        if STARTED.fetch_add(1, Ordering::AcqRel) == 1 {
            smp::wake(key);
        } else {
            smp::wait_until(key, || STARTED.load(Ordering::Acquire) == 2);
        }
        // Each holder keeps the lock until the other CPU queued for it (or
        // is done), so every acquisition is a hand-off to a waiter. The
        // clock starts at CPU 0's WARM-th acquisition: the first rounds
        // wait out the vCPUs' time slices until both are in the loop.
        for i in 0..HANDOFFS {
            let mut g = M.lock();
            *g += 1;
            if cpu == 0 && i == WARM {
                T0.store(stck(), Ordering::Release);
                N0.store(*g, Ordering::Release);
            }
            while !M.is_contended() && FINISHED.load(Ordering::Acquire) == 0 {
                core::hint::spin_loop();
            }
            drop(g);
        }
        if FINISHED.fetch_add(1, Ordering::AcqRel) == 0 {
            T1.store(stck(), Ordering::Release);
            N1.store(*M.lock(), Ordering::Release);
        }
    }

    pub fn contended() {
        if smp::nr_online() < 2 {
            crate::kprintln!("BENCH-NOTE locks: one CPU, no contended hand-off (boot with 2)");
            return;
        }
        let before = *M.lock();
        STARTED.store(0, Ordering::Relaxed);
        FINISHED.store(0, Ordering::Relaxed);
        let (k0, w0) = smp::lock_wait_counts();
        smp::run_on_all(worker);
        let tod = T1.load(Ordering::Acquire) - T0.load(Ordering::Acquire);
        let (k1, w1) = smp::lock_wait_counts();
        let got = *M.lock() - before;
        if got != 2 * HANDOFFS {
            crate::kprintln!(
                "BENCH-NOTE locks: {got} increments, expected {}",
                2 * HANDOFFS
            );
            return;
        }
        // The hand-offs between the two clock readings (until the first
        // CPU was done, the other still waiting its turn each time).
        let n = N1.load(Ordering::Acquire) - N0.load(Ordering::Acquire);
        report("mutex_handoff_contended_2cpus", n, tod);
        value(
            "mutex_handoff_sleeps_per_1000",
            (w1 - w0) * 1000 / (2 * HANDOFFS),
            "waits",
        );
        value(
            "mutex_handoff_kicks_per_1000",
            (k1 - k0) * 1000 / (2 * HANDOFFS),
            "kicks",
        );
    }
}

/// Run every benchmark (only the boot figures with `boot_only`, for
/// `x.py bench --sweep`; only the lock figures with `locks_only`); the
/// kernel exits afterwards.
pub fn run(boot_only: bool, locks_only: bool) {
    let boot_tod = crate::log::uptime_tod();
    kprintln!("BENCH-START");
    if locks_only {
        baseline();
        locks::uncontended();
        locks::contended();
        kprintln!("BENCH-END");
        return;
    }
    layout_figures(boot_tod);
    if boot_only {
        kprintln!("BENCH-END");
        return;
    }
    baseline();
    memmap_init();
    buddy_order::<0>("buddy_order0_alloc_free");
    buddy_order::<3>("buddy_order3_alloc_free");
    alloc_all_then_free();
    ptl_uncontended();
    dat::run(mm::layout().map_or(0, |l| l.memory));
    gmaps::run();
    vsie::run();
    shared_tables::run();
    #[cfg(feature = "bench")]
    {
        peers::linked_list();
        peers::buddy_system();
    }
    #[cfg(not(feature = "bench"))]
    kprintln!("BENCH-NOTE peers not built (feature \"bench\")");
    full_of_page_tables();
    kprintln!("BENCH-END");
}
