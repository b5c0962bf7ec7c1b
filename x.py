#!/usr/bin/env python3
"""zdat driver: build, run, test, debug the kernel. Python standard library only.

    python3 x.py run            boot zdat in QEMU, stream the console
    python3 x.py test           host unit tests + in-kernel KTAP suites in QEMU
    python3 x.py gdb            QEMU halted at reset, gdb attached
    python3 x.py walk ADDR      the DAT translation of ADDR, level by level
    python3 x.py bench          benchmarks, in guest instructions under -icount
    python3 x.py lint           cargo fmt --check, clippy and doc, warnings denied
    python3 x.py mutants        mutation check: does a test fail when a piece of
                                the TLB-invalidation discipline is removed?
    python3 x.py build | clean

Two struct page layouts, chosen at build time: the overlay (default) and
memdesc (cargo feature `memdesc`, built in its own target dir, target/memdesc,
so both ELFs exist side by side). `--memdesc` makes run, test, bench, walk,
gdb and build use the memdesc kernel (test and bench: only it). Without it,
test boots both kernels (only the overlay's when --memory or --smp is given)
and runs the host tests and Miri in both layouts, bench compares the two
layouts in one report, and lint checks both.

Every subcommand installs what it needs: the pinned toolchain (rustup), and
QEMU / gdb-multiarch (apt-get, when running as root).
"""

import argparse
import os
import fnmatch
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TARGET = "s390x-unknown-none-softfloat"
BUILD_DIR = ROOT / "build"
QEMU = "qemu-system-s390x"
GDB = "gdb-multiarch"
# Odd sizes too: x.py test must pass at any -m from 64M to 16G in MiB steps
# (65M and 333M give odd numbers of 1 MiB segments and of memmap pages).
DEFAULT_TEST_MEMORY = ["64M", "65M", "128M", "333M", "1G", "4G"]
# x.py test --full adds these (and 16G): a sweep from 64M to 16G, with odd MiB
# counts and sizes just below and above powers of two.
FULL_SWEEP_MEMORY = ["97M", "255M", "257M", "777M", "1023M", "1025M", "2047M", "2049M",
                     "3071M", "4097M", "8191M", "12345M", "16383M", "16G"]
# x.py test also boots these with 2 and 4 CPUs (the SMP stress suite).
DEFAULT_SMP = [2, 4]
SMP_MEMORY = ["128M"]
# x.py test (no --memory, --smp or --memdesc) also boots the memdesc layout's
# kernel: at these sizes on 1 CPU (an odd number of 1 MiB segments, and a
# memmap of many pages), then with these CPU counts at MEMDESC_SMP_MEMORY.
MEMDESC_TEST_MEMORY = ["65M", "1G"]
MEMDESC_SMP = [2]
MEMDESC_SMP_MEMORY = ["128M"]
DEFAULT_TIMEOUT = 600
EXIT_MARKER = re.compile(r"^EXIT: STATUS=(\d+)")

# ---------------------------------------------------------------------------
# MUTANTS: `python3 x.py mutants` applies each of these to a copy of the tree,
# one at a time, and checks that the QEMU suites then fail ("killed"). Each
# removes one piece of the TLB-invalidation discipline. To add one, append a
# dict:
#   name     short id (for --only)
#   why      one line: what discipline it removes
#   file     path relative to the repo root
#   find     exact text that must occur exactly once in that file (else the
#            mutant is reported STALE: keep it in step with the code)
#   replace  its replacement (it must still compile)
#   smp      CPUs (default 1)             memory  QEMU -m (default "128M")
#   filter   ktest.filter glob(s), a string or a list (default: whole suite)
#   append   extra kernel command line (default none)
#   expect   glob(s) of suite.case names of which one must fail for the
#            mutant to count as killed (else WRONG KILL: it was caught,
#            but not by the case meant to catch it)

MUTANTS = [
    {
        "name": "guest-keeps-kernel-cr7",
        "why": "a guest runs with the kernel's identity map as its secondary space (CR7)",
        "file": "kernel/src/arch/s390x/guest.rs",
        "find": """    "    lctlg 7,7,{asce}(%r2)",""",
        "replace": """    // (mutant: CR7 stays the kernel's)""",
        "expect": ["gmap_guest.guest_cannot_reach_kernel_memory_by_changing_space"],
    },
    {
        "name": "ipte-store",
        "why": "IPTE becomes a plain store of the PTE's invalid bit: no TLB purge",
        "file": "kernel/src/arch/s390x/dat.rs",
        "find": """\
        match clearing {
            Clearing::Local => asm!(".insn rrf,0xb2210000,{pto},{va},%r0,1",
                pto = in(reg_addr) pto, va = in(reg_addr) va, options(nostack)),
            Clearing::Global => asm!(".insn rre,0xb2210000,{pto},{va}",
                pto = in(reg_addr) pto, va = in(reg_addr) va, options(nostack)),
        }""",
        "replace": """\
        let _ = clearing;
        let pte = (pto + ((va >> 12) & 0xff) * 8) as *mut u64;
        core::ptr::write_volatile(pte, core::ptr::read_volatile(pte) | 0x400);""",
        "expect": ["tlb_warm.protect_faults_next_store"],
    },
    {
        "name": "idte-store",
        "why": "IDTE becomes a plain OR of the region/segment invalid bit: no TLB purge",
        "file": "kernel/src/arch/s390x/dat.rs",
        "find": """\
        match clearing {
            Clearing::Local => asm!(".insn rrf,0xb98e0000,{d},{a},%r0,1",
                d = in(reg_addr) designation, a = in(reg_addr) r2, options(nostack)),
            Clearing::Global => asm!(".insn rre,0xb98e0000,{d},{a}",
                d = in(reg_addr) designation, a = in(reg_addr) r2, options(nostack)),
        }""",
        "replace": """\
        let _ = clearing;
        let index = match (designation >> 2) & 3 {
            3 => (r2 >> 53) & 0x7ff,
            2 => (r2 >> 42) & 0x7ff,
            1 => (r2 >> 31) & 0x7ff,
            _ => (r2 >> 20) & 0x7ff,
        };
        let entry = ((designation & !0xfff) + index * 8) as *mut u64;
        core::ptr::write_volatile(entry, core::ptr::read_volatile(entry) | 0x20);""",
        "expect": ["tlb_warm.unmap_segment_faults_next_load"],
    },
    {
        "name": "no-clear-by-asce",
        "why": "IDTE clearing-by-ASCE does nothing: TLB entries of a dropped space or gmap stay",
        "file": "kernel/src/arch/s390x/dat.rs",
        "find": """\
        asm!(".insn rre,0xb98e0000,{d},{a}", d = in(reg_addr) asce, a = in(reg_addr) r2,
             options(nostack));""",
        "replace": """\
        let _ = (asce, r2);""",
        # On one CPU a space loaded nowhere else is purged locally: turn
        # local clearing off so the drop takes this, the global, path.
        "append": "dat.local_clearing=0",
        "expect": ["tlb_warm.dropped_space_leaves_no_translation", "tlb_warm.removed_gmap_leaves_no_translation"],
    },
    {
        "name": "no-ipte-guest-alias",
        "why": "the QEMU workaround: no second IPTE at linked guest addresses",
        "file": "kernel/src/dat/tlb.rs",
        "find": "pub const IPTE_GUEST_ALIAS: bool = true;",
        "replace": "pub const IPTE_GUEST_ALIAS: bool = false;",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.host_protect_seen_by_loaded_gmap"],
    },
    {
        "name": "change-pte-no-ipte",
        "why": "protect and remap rewrite a present PTE without invalidating it",
        "file": "kernel/src/dat/space/ops.rs",
        "find": """\
        // SAFETY: `pto` is this live page table.
        unsafe { self.ipte(pto, va) };
        slot.store(new.raw(), Ordering::Release);
        Ok(old)""",
        "replace": """\
        slot.store(new.raw(), Ordering::Release);
        Ok(old)""",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.protect_faults_next_store", "tlb_warm.remap_serves_new_frame"],
    },
    {
        "name": "unmap-page-no-ipte",
        "why": "a partial unmap clears PTEs without IPTE",
        "file": "kernel/src/dat/space/ops.rs",
        "find": "                                unsafe { self.ipte(pto, p) };",
        "replace": "",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.unmap_page_faults_next_load"],
    },
    {
        "name": "segment-protect-not-propagated",
        "why": "host segment protection does not reach linked gmap segments",
        "file": "kernel/src/dat/space/ops.rs",
        "find": "        self.segment_changed(va, new);\n",
        "replace": "",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.host_segment_protection_reaches_loaded_gmap"],
    },
    {
        "name": "no-gmap-unlink",
        "why": "the host frees a PTE table without unlinking the gmap segments pointing at it",
        "file": "kernel/src/dat/space/hooks.rs",
        "find": "(h.table_unlink)(self.id, va & !(super::super::entry::SEGMENT_SIZE - 1), pto);",
        "replace": "let _ = (h, pto);",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.host_unmap_segment_unlinks_loaded_gmap"],
    },
    {
        "name": "notify-after-change",
        "why": "the PTE notifier is called after the host PTE changed, not before",
        "file": "kernel/src/dat/space/ops.rs",
        "find": """\
        self.notify_before_change(va, pea);
        // SAFETY: `pto` is this live page table.
        unsafe { self.ipte(pto, va) };
        slot.store(new.raw(), Ordering::Release);""",
        "replace": """\
        // SAFETY: `pto` is this live page table.
        unsafe { self.ipte(pto, va) };
        slot.store(new.raw(), Ordering::Release);
        self.notify_before_change(va, pea);""",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.notifier_runs_before_the_change"],
    },
    {
        "name": "no-pte-notify",
        "why": "a host PTE with the PGSTE notify bit changes without calling the notifiers",
        "file": "kernel/src/dat/space/hooks.rs",
        "find": "(h.pte_notify)(self.id, va & !(PAGE_SIZE - 1), old & PGSTE_NOTIFY_BITS);",
        "replace": "let _ = h;",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.notifier_runs_before_the_change"],
    },
    {
        "name": "space-drop-no-purge",
        "why": "a dropped address space frees its tables without clearing by ASCE",
        "file": "kernel/src/dat/space/mod.rs",
        "find": """\
        tlb::flush_tlb_mm(&self.context, self.asce);
        let (top, level) = (self.asce.origin(), self.asce.level());""",
        "replace": """\
        let (top, level) = (self.asce.origin(), self.asce.level());""",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.dropped_space_leaves_no_translation"],
    },
    {
        "name": "region-cspg-store",
        "why": "a region entry is invalidated by a plain store instead of CSPG",
        "file": "kernel/src/dat/tlb.rs",
        "find": "crate::arch::s390x::dat::cspg(entry, old, old | super::entry::CRST_INVALID_BIT);",
        "replace": "core::ptr::write_volatile(entry, old | super::entry::CRST_INVALID_BIT);",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.region_entry_invalidation_faults_next_load"],
    },
    {
        "name": "gather-takes-linked-table",
        "why": "mmu_gather accepts a table its entry still points at",
        "file": "kernel/src/dat/gather.rs",
        "find": """\
        if unsafe { links(parent, &t) } {
            return Err((t, GatherError::StillLinked));
        }""",
        "replace": "",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.mmu_gather_refuses_what_the_tlb_may_reach"],
    },
    {
        "name": "map-range-keeps-growth",
        "why": "a failed map_range keeps the top level an earlier page added",
        "file": "kernel/src/dat/space/ops.rs",
        "find": """\
                self.downgrade_to(old_asce);
                return Err(e);
            }
            a = next;""",
        "replace": """\
                let _ = old_asce;
                return Err(e);
            }
            a = next;""",
        "filter": "fault_injection",
        "expect": ["fault_injection.space_map_survives_every_failed_allocation"],
    },
    {
        "name": "ipte-local-only",
        "why": "the broadcast IPTE gets the local-clearing control: other CPUs keep their TLB entries",
        "file": "kernel/src/arch/s390x/dat.rs",
        "find": """\
            Clearing::Global => asm!(".insn rre,0xb2210000,{pto},{va}",""",
        "replace": """\
            Clearing::Global => asm!(".insn rrf,0xb2210000,{pto},{va},%r0,1",""",
        "smp": 2,
        "filter": "smp",
        "expect": ["smp.cpus_race_map_protect_unmap_of_one_address"],
    },
    {
        "name": "change-pte-no-ptlock",
        "why": "protect and remap change a PTE without its table's lock",
        "file": "kernel/src/dat/space/ops.rs",
        "find": """\
        let _ptl = table::table_ptdesc(pto).map(|pt| ptdesc::ptlock_ptr(pt).lock());
        // SAFETY: a PTE of a live table, under its lock.
        let slot = unsafe { entry(pea) };
        let old = Pte::from_raw(slot.load(Ordering::Acquire));
        if !old.is_present() {
            return Err(SpaceError::NotMapped);
        }
        let new = f(old)?;""",
        "replace": """\
        // SAFETY: a PTE of a live table, under its lock.
        let slot = unsafe { entry(pea) };
        let old = Pte::from_raw(slot.load(Ordering::Acquire));
        if !old.is_present() {
            return Err(SpaceError::NotMapped);
        }
        let new = f(old)?;""",
        "smp": 2,
        "filter": "smp",
        "expect": [
            "smp.pte_writers_wait_for_a_held_page_table_lock",
            "smp.remap_and_protect_of_one_pte_lose_nothing",
        ],
    },
    {
        "name": "change-pte-reads-before-ptlock",
        "why": "protect and remap read the PTE before they take its table's lock",
        "file": "kernel/src/dat/space/ops.rs",
        "find": """\
        let _ptl = table::table_ptdesc(pto).map(|pt| ptdesc::ptlock_ptr(pt).lock());
        // SAFETY: a PTE of a live table, under its lock.
        let slot = unsafe { entry(pea) };
        let old = Pte::from_raw(slot.load(Ordering::Acquire));
        if !old.is_present() {
            return Err(SpaceError::NotMapped);
        }
        let new = f(old)?;""",
        "replace": """\
        // SAFETY: a PTE of a live table, under its lock.
        let slot = unsafe { entry(pea) };
        let old = Pte::from_raw(slot.load(Ordering::Acquire));
        if !old.is_present() {
            return Err(SpaceError::NotMapped);
        }
        let new = f(old)?;
        let _ptl = table::table_ptdesc(pto).map(|pt| ptdesc::ptlock_ptr(pt).lock());""",
        "smp": 2,
        "filter": "smp.pte_writers_wait_for_a_held_page_table_lock",
        "expect": ["smp.pte_writers_wait_for_a_held_page_table_lock"],
    },
    {
        "name": "map-existing-no-ptlock",
        "why": "a map into an existing page table checks and writes the PTE without its lock",
        "file": "kernel/src/dat/space/ops.rs",
        "find": """\
        let _ptl = table::table_ptdesc(pto).map(|pt| ptdesc::ptlock_ptr(pt).lock());
        // SAFETY: the PTE of a live table of this space, under its lock.
        let slot""",
        "replace": """\
        // SAFETY: the PTE of a live table of this space, under its lock.
        let slot""",
        "smp": 2,
        "filter": "smp",
        "expect": [
            "smp.pte_writers_wait_for_a_held_page_table_lock",
            "smp.cpus_race_map_protect_unmap_of_one_address",
        ],
    },
    {
        "name": "no-ipte-guest-alias-smp",
        "why": "the QEMU workaround removed, as a guest running on another CPU meets it",
        "file": "kernel/src/dat/tlb.rs",
        "find": "pub const IPTE_GUEST_ALIAS: bool = true;",
        "replace": "pub const IPTE_GUEST_ALIAS: bool = false;",
        "smp": 2,
        "filter": "smp.guest_*",
        "expect": ["smp.guest_store_faults_after_a_host_protect_on_another_cpu"],
    },
    {
        "name": "gather-invalidate-no-idte",
        "why": "unmap makes region and segment entries invalid without IDTE/CSPG",
        "file": "kernel/src/dat/gather.rs",
        "find": """\
        // SAFETY: forwarded to the caller.
        unsafe { tlb::idte(&self.mm, tbl, level, va) };""",
        "replace": "",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.unmap_segment_faults_next_load"],
    },
    {
        "name": "pte-table-freed-before-idte-smp",
        "why": "a whole segment's PTE table freed before its IDTE, instead of through mmu_gather",
        "file": "kernel/src/dat/space/ops.rs",
        "find": """\
                        unsafe { g.invalidate_entry(tbl, Level::Segment, va) };
                        for i in 0..PTRS_PER_PTE as u64 {""",
        "replace": """\
                        if let Ok(t) = unsafe { PteTable::from_raw(pto, self.pgste) } {
                            self.frags.page_table_free(t);
                        }
                        unsafe { g.invalidate_entry(tbl, Level::Segment, va) };
                        a = next;
                        continue;
                        for i in 0..PTRS_PER_PTE as u64 {""",
        "smp": 2,
        "filter": "smp.map_unmap_while_another_cpu_reads",
        "expect": ["smp.map_unmap_while_another_cpu_reads"],
    },
    {
        "name": "upgrade-drops-old-range",
        "why": "an ASCE upgrade does not make the old top entry 0 of the new one",
        "file": "kernel/src/dat/space/upgrade.rs",
        "find": "            top.entries()[0].store(entry0.raw(), Ordering::Release);",
        "replace": "            let _ = entry0;",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.upgrade_keeps_the_loaded_top"],
    },
    {
        "name": "flush-always-local",
        "why": "every IPTE and IDTE clears locally, whichever CPUs have the space loaded",
        "file": "kernel/src/dat/context.rs",
        "find": "        !self.everywhere && self.mm_cpumask() & !this_cpu_bit() == 0\n",
        "replace": "        true\n",
        "smp": 2,
        "filter": ["smp.remote_*", "smp.attach_*"],
        "expect": ["smp.remote_cpu_with_the_space_loaded_sees_the_change"],
    },
    {
        "name": "attach-sets-no-tlb-bit",
        "why": "a CPU that loads a space is not added to its mm_cpumask",
        "file": "kernel/src/dat/context.rs",
        "find": "        self.cpumask.fetch_or(1 << cpu, Ordering::SeqCst);\n",
        "replace": "",
        "smp": 2,
        "filter": ["smp.remote_*", "smp.attach_*"],
        "expect": ["smp.remote_cpu_with_the_space_loaded_sees_the_change"],
    },
    {
        "name": "detach-clears-tlb-bit",
        "why": "a CPU leaves mm_cpumask when it unloads the space, though its TLB may keep entries",
        "file": "kernel/src/dat/context.rs",
        "find": """\
            self.cpu_attach_mask
                .fetch_and(!(1 << cpu), Ordering::SeqCst);""",
        "replace": """\
            self.cpu_attach_mask
                .fetch_and(!(1 << cpu), Ordering::SeqCst);
            self.cpumask.fetch_and(!(1 << cpu), Ordering::SeqCst);""",
        "smp": 2,
        "filter": ["smp.remote_*", "smp.attach_*"],
        "expect": ["smp.attach_mask_follows_loads_and_purges"],
    },
    {
        "name": "tlb-mask-never-cleared",
        "why": "a purge on every CPU does not drop the CPUs that unloaded the space from mm_cpumask",
        "file": "kernel/src/dat/context.rs",
        "find": """\
        self.cpumask
            .fetch_and(self.cpu_attach_mask(), Ordering::SeqCst);""",
        "replace": """\
        let _ = self.cpu_attach_mask();""",
        "smp": 2,
        "filter": ["smp.remote_*", "smp.attach_*"],
        "expect": ["smp.attach_mask_follows_loads_and_purges"],
    },
    {
        "name": "reset-drops-attached-cpus",
        "why": "a purge clears mm_cpumask whole, also the bits of CPUs that have the space loaded",
        "file": "kernel/src/dat/context.rs",
        "find": """\
        self.cpumask
            .fetch_and(self.cpu_attach_mask(), Ordering::SeqCst);""",
        "replace": """\
        self.cpumask.store(0, Ordering::SeqCst);""",
        "smp": 2,
        "filter": ["smp.remote_*", "smp.attach_*"],
        "expect": ["smp.attach_mask_follows_loads_and_purges"],
    },
    {
        "name": "gmap-alias-ipte-local",
        "why": "the alias IPTE at a gmap's guest address ignores which CPUs have the gmap loaded",
        "file": "kernel/src/gmap/hooks.rs",
        "find": "unsafe { tlb::ipte(&g.context, pto, gaddr) };",
        "replace": "unsafe { tlb::ipte(&crate::dat::context::MmContext::new(), pto, gaddr) };",
        "smp": 2,
        "filter": "smp.guest_*",
        "expect": ["smp.guest_store_faults_after_a_host_protect_on_another_cpu"],
    },
    {
        "name": "gmap-attach-skips-host",
        "why": "a CPU running a guest is not attached to the host space whose PTE tables it uses",
        "file": "kernel/src/dat/context.rs",
        "find": """\
        if let Some(h) = &self.host {
            h.attach(self.asce);
        }""",
        "replace": "",
        "smp": 2,
        "filter": "smp.guest_*",
        "expect": ["smp.guest_store_faults_after_a_host_protect_on_another_cpu"],
    },
    {
        "name": "no-clear-by-asce-local",
        "why": "the local clearing by ASCE does nothing: a dropped space loaded here only stays in the TLB",
        "file": "kernel/src/arch/s390x/dat.rs",
        "find": """\
        asm!(".insn rrf,0xb98e0000,{d},{a},%r0,1", d = in(reg_addr) asce, a = in(reg_addr) r2,
             options(nostack));""",
        "replace": """\
        let _ = (asce, r2);""",
        "filter": "tlb_warm",
        "expect": ["tlb_warm.dropped_space_leaves_no_translation", "tlb_warm.removed_gmap_leaves_no_translation"],
    },
    {
        "name": "shadow-skips-protect",
        "why": "a shadow entry is made valid without protecting the guest-1 page it was copied from",
        "file": "kernel/src/gmap/shadow.rs",
        "find": """\
        h.space()
            .force_prot_vsie(vm)
            .map_err(|e| Retry::Fault(ShadowFault::Host(super::space_error(e))))?;""",
        "replace": "",
        "filter": "vsie.*",
        "expect": ["vsie.guest1_changing_a_guest2_pte_is_seen_by_the_next_access",
                   "vsie.guest1_changing_a_guest2_segment_entry_is_seen"],
    },
    {
        "name": "shadow-skips-unshadow",
        "why": "gmap_shadow_notify drops nothing: a changed guest-1 page leaves its shadows as they were",
        "file": "kernel/src/gmap/shadow.rs",
        "find": "let Some(keys) = self.rmap.get(&vm).cloned() else {",
        "replace": "let Some(keys) = None::<Vec<ShadowKey>> else {",
        "filter": "vsie.*",
        "expect": ["vsie.guest1_changing_a_guest2_pte_is_seen_by_the_next_access",
                   "vsie.host_remap_of_a_guest2_page_invalidates_its_shadow_pte",
                   "vsie.host_losing_the_top_table_page_drops_the_whole_shadow"],
    },
    {
        "name": "shadow-pte-ignores-host-protection",
        "why": "a shadow PTE takes guest-2's protection only, not the host's",
        "file": "kernel/src/gmap/shadow.rs",
        "find": "let ro = g2_protected || hprot == Prot::ReadOnly;",
        "replace": "let ro = g2_protected && hprot == Prot::ReadOnly;",
        "filter": "vsie.*",
        "expect": ["vsie.host_protect_of_a_guest2_page_is_seen_and_refused"],
    },
    {
        "name": "shadow-tighten-keeps-writable-shadow-ptes",
        "why": "protecting a page for a shadow leaves the writable shadow PTEs that map it",
        "file": "kernel/src/dat/space/ops.rs",
        "find": """\
            self.notify_before_change(va, pea);
            // SAFETY: `pto` is this live page table.
            unsafe { self.ipte(pto, va) };
            slot.store(old.with_prot(Prot::ReadOnly).raw(), Ordering::Release);""",
        "replace": """\
            // SAFETY: `pto` is this live page table.
            unsafe { self.ipte(pto, va) };
            slot.store(old.with_prot(Prot::ReadOnly).raw(), Ordering::Release);""",
        "filter": "vsie.*",
        "expect": ["vsie.guest2_store_to_its_own_table_page_lifts_the_protection"],
    },
    {
        "name": "shadow-drop-skips-flush",
        "why": "a whole shadow is dropped (its top emptied) without purging the TLBs",
        "file": "kernel/src/gmap/shadow.rs",
        "find": """\
        // refilled its TLB from the old entries until here; after it, no
        // TLB holds anything below the top, and the tables can go.
        tlb::flush_tlb_mm(&self.context, self.asce);""",
        "replace": """\
        // (mutant: no purge)""",
        "filter": "vsie.*",
        "expect": ["vsie.host_losing_the_top_table_page_drops_the_whole_shadow"],
    },
    {
        "name": "shadow-unshadow-idte-local",
        "why": "an unshadow's IDTE ignores which CPUs have the shadow loaded",
        "file": "kernel/src/gmap/shadow.rs",
        "find": "unsafe { tlb::idte(&self.context, ptbl, plevel, key.base) };",
        "replace": "unsafe { tlb::idte(&crate::dat::context::MmContext::new(), ptbl, plevel, key.base) };",
        "smp": 2,
        "filter": "vsie_smp.*",
        "expect": ["vsie_smp.unshadow_while_another_cpu_uses_the_shadow_leaves_nothing_stale",
                   "vsie_smp.guest2_on_another_cpu_sees_guest1_change_its_mapping"],
    },
    {
        "name": "shadow-ignores-segment-protection",
        "why": "a shadow PTE takes the host PTE's protection, not its segment entry's",
        "file": "kernel/src/gmap/shadow.rs",
        "find": """\
        let hprot = if h.space().segment_entry(vm).is_protected() {
            Prot::ReadOnly
        } else {
            pprot
        };""",
        "replace": "        let hprot = pprot;",
        "filter": "vsie.*",
        "expect": ["vsie.host_segment_protection_reaches_the_shadow"],
    },
    {
        "name": "protect-segment-skips-notify",
        "why": "a host segment protection change notifies no PGSTE (shadow PTEs keep their write access)",
        "file": "kernel/src/dat/space/ops.rs",
        "find": """\
        if self.pgste {
            let base = va & !(super::super::entry::SEGMENT_SIZE - 1);
            for i in 0..PTRS_PER_PTE as u64 {
                self.notify_before_change(
                    base + i * PAGE_SIZE,
                    PhysAddr(old.page_table().0 + i * 8),
                );
            }
        }""",
        "replace": "",
        "filter": "vsie.*",
        "expect": ["vsie.host_segment_protection_reaches_the_shadow"],
    },
    {
        "name": "unmap-segment-keeps-shadows",
        "why": "the parent unmapping a guest-1 segment leaves the shadows built from its memory",
        "file": "kernel/src/gmap/ops.rs",
        "find": "super::shadow::shadow_notify_range(&g.shadows, hs, hs + (SEGMENT_SIZE - 1));",
        "replace": "let _ = hs;",
        "filter": "vsie.*",
        "expect": ["vsie.parent_unmapping_the_guest1_segment_drops_the_shadow_part"],
    },
    {
        "name": "frame-bytes-skips-notify",
        "why": "the host hands out a guest-1 frame's bytes without lifting a shadow's protection: nobody hears of the store",
        "file": "kernel/src/gmap/host.rs",
        "find": "self.make_writable(va)?;\n        self.frames\n            .get_mut(&va)",
        "replace": "self.frames\n            .get_mut(&va)",
        "filter": "vsie.*",
        "expect": ["vsie.host_store_through_frame_bytes_unshadows_first"],
    },
    {
        "name": "unshadow-keeps-subtree",
        "why": "unshadowing a table makes the entry above invalid but keeps the tables below it",
        "file": "kernel/src/gmap/shadow.rs",
        "find": "unsafe { entry(pe) }.store(empty, Ordering::Release);\n        }\n        self.drop_below(key);",
        "replace": "unsafe { entry(pe) }.store(empty, Ordering::Release);\n        }\n        let _ = key;",
        "filter": "vsie.*",
        "expect": ["vsie.*"],
    },
    {
        "name": "reflected-teid-page-only",
        "why": "guest-1 is given only the page of guest-2's TEID: no fetch/store or address-space bits",
        "file": "kernel/src/gmap/vsie.rs",
        "find": "    } else {\n        exit_teid\n    }",
        "replace": "    } else {\n        exit_teid & !0xfff\n    }",
        "filter": "vsie.*",
        "expect": ["vsie.random_guest2_addresses_agree_with_a_two_stage_walk"],
    },
    {
        "name": "shadow-page-skips-vsie-bit",
        "why": "a shadow PTE is made without the VSIE bit on the host PTE of its frame",
        "file": "kernel/src/gmap/shadow.rs",
        "find": """\
        h.space()
            .pgste_set_bits(vm, PGSTE_VSIE_BIT)
            .map_err(|_| Retry::Again)?;""",
        "replace": "",
        "filter": "vsie.*",
        "expect": ["vsie.host_remap_of_a_guest2_page_invalidates_its_shadow_pte",
                   "vsie.host_protect_of_a_guest2_page_is_seen_and_refused"],
    },
    # Append new mutants here.
]


def log(msg):
    print(f"x.py: {msg}", flush=True)


def die(msg, code=2):
    print(f"x.py: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


# ---------------------------------------------------------------------------
# What the build needs


def toolchain():
    """(channel, components) from rust-toolchain.toml."""
    text = (ROOT / "rust-toolchain.toml").read_text()
    channel = re.search(r'^channel\s*=\s*"([^"]+)"', text, re.M)
    comps = re.search(r"^components\s*=\s*\[([^\]]*)\]", text, re.M)
    if not channel:
        die("rust-toolchain.toml names no channel")
    components = re.findall(r'"([^"]+)"', comps.group(1)) if comps else []
    return channel.group(1), components


def installed_components(channel):
    r = subprocess.run(
        ["rustup", "component", "list", "--installed", "--toolchain", channel],
        cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return {line.split()[0].rsplit("-x86_64", 1)[0].rsplit("-aarch64", 1)[0]
            for line in r.stdout.splitlines() if line.strip()}


def ensure_toolchain(extra=()):
    """Install the pinned toolchain (RUSTUP_AUTO_INSTALL=0 on these machines
    means cargo will not do it on first use)."""
    if not shutil.which("rustup"):
        die("rustup is missing: install it from https://rustup.rs, then rerun")
    channel, components = toolchain()
    wanted = list(components) + list(extra)
    have = installed_components(channel)
    missing = [c for c in wanted if have is None or c not in have]
    if have is None:
        log(f"installing Rust toolchain {channel} ({', '.join(wanted)})")
        cmd = ["rustup", "toolchain", "install", channel, "--profile", "minimal"]
        for c in wanted:
            cmd += ["-c", c]
        run_checked(cmd)
    elif missing:
        log(f"adding components to {channel}: {', '.join(missing)}")
        run_checked(["rustup", "component", "add", "--toolchain", channel] + missing)
    return channel


def ensure_apt(binary, package):
    if shutil.which(binary):
        return
    cmd = f"apt-get update && apt-get install -y --no-install-recommends {package}"
    if os.geteuid() != 0:
        die(f"{binary} is missing; install it with:\n    sudo sh -c '{cmd}'")
    log(f"{binary} is missing; installing Debian package {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_checked(["apt-get", "update", "-q"], env=env)
    # Without recommends: QEMU's pull in GTK, GStreamer, Mesa and
    # qemu-block-extra (191 MB in all); the s390x binary needs only
    # qemu-system-misc, -common and -data (the s390-ccw BIOS image).
    # --no-remove: apt-get aborts rather than remove an installed package
    # to make room (an earlier install took qemu-utils away); the user then
    # sees what conflicts and decides.
    r = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        "--no-remove", package], env=env)
    if r.returncode != 0:
        die(f"apt-get could not install {package} without removing a package (or failed);"
            f" nothing was removed. See what it wants with:\n"
            f"    apt-get install -s --no-install-recommends {package}", r.returncode)
    if not shutil.which(binary):
        die(f"{package} installed but {binary} is still not on PATH")


# rustc warns on every build that `+backchain` (needed for crash-dump stack
# traces) is an unstable target feature; the warning is expected and says
# nothing about the code, so x.py drops it (README, "Design in a page").
BACKCHAIN_NOISE = (
    re.compile(r"^warning: unstable feature specified for `-Ctarget-feature`: `backchain`"),
    re.compile(r"^warning: `(kernel|boot)` \((lib|bin \"zdat\")\) generated 1 warning( \(1 duplicate\))?$"),
)


# The smallest and largest guest memory x.py boots: the range the test
# matrix and `x.py test --full` cover (every size in MiB steps passes there).
MIN_MEMORY_MIB = 64
MAX_MEMORY_MIB = 16 << 10


def memory_size(text):
    """An argparse type: a QEMU -m size (`128M`, `4G`, a plain number of
    MiB), refused unless it is well formed and in the supported range."""
    m = re.fullmatch(r"(\d+)([MmGg]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory size (QEMU syntax: 128M, 4G, or a number of MiB)")
    mib = int(m.group(1)) << (10 if m.group(2) in "Gg" and m.group(2) else 0)
    if mib < MIN_MEMORY_MIB or mib > MAX_MEMORY_MIB:
        raise argparse.ArgumentTypeError(
            f"{text} is outside what zdat supports: {MIN_MEMORY_MIB}M to {MAX_MEMORY_MIB >> 10}G "
            f"(the range the test matrix covers; every size in MiB steps there passes "
            f"x.py test)")
    return f"{mib}M" if m.group(2) in "Mm" or not m.group(2) else f"{mib >> 10}G"


def memory_mib(size):
    """MiB of a size `memory_size` accepted (`128M`, `4G`)."""
    return int(size[:-1]) << (10 if size.endswith("G") else 0)


def memory_sizes(text):
    return [memory_size(t) for t in text.split(",") if t]


def run_cargo(cmd, cwd=ROOT, env=None, out=None):
    """Run cargo, passing its stderr through without the backchain warning
    (three lines and the "generated 1 warning" summaries). Returns the exit
    status. With `out`, everything goes there instead (unfiltered)."""
    if out is not None:
        return subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    skip = 0
    for line in p.stderr:
        if BACKCHAIN_NOISE[0].match(line):
            skip = 4  # the warning, "  |", "  = note: ...", and a blank line
        elif BACKCHAIN_NOISE[1].match(line.rstrip("\n")):
            continue
        if skip:
            skip -= 1
            continue
        sys.stderr.write(line)
    return p.wait()


def run_checked(cmd, **kw):
    r = subprocess.run(cmd, cwd=kw.pop("cwd", ROOT), **kw)
    if r.returncode != 0:
        die(f"command failed ({r.returncode}): {shlex.join(cmd)}", r.returncode or 1)
    return r


# ---------------------------------------------------------------------------
# Build

# The two struct page layouts, chosen at build time: the overlay (default: a
# 64-byte struct page with a union) and memdesc (cargo feature `memdesc`: an
# 8-byte struct page and separate descriptors). boot's `memdesc` feature
# turns on kernel/memdesc, and boot's own code if it ever needs it.
LAYOUTS = ("overlay", "memdesc")
MEMDESC_FEATURE = "memdesc"
# The memdesc ELF has a CARGO_TARGET_DIR of its own. Both layouts' ELFs must
# exist at once (x.py test boots both, x.py bench compares them); in one
# target dir the feature switch would make cargo rebuild the kernel and boot
# crates and overwrite the other layout's zdat every time.
MEMDESC_TARGET_DIR = ROOT / "target" / "memdesc"


def kernel_cargo_args(release, features=()):
    args = ["-p", "boot", "--target", TARGET,
            "-Zbuild-std=core,alloc", "-Zbuild-std-features=compiler-builtins-mem"]
    if release:
        args.append("--release")
    if features:
        args += ["--features", ",".join(features)]
    return args


def build(release=False, quiet=False, features=(), root=ROOT, target_dir=None,
          log_path=None):
    """Build the kernel ELF from the tree at `root` (into `target_dir`, default
    root/target). With `log_path`, cargo's output goes there and a failed
    build returns None instead of ending x.py."""
    ensure_toolchain()
    cmd = ["cargo", "build"] + kernel_cargo_args(release, features)
    if quiet:
        cmd.append("--quiet")
    env = None
    if target_dir is not None:
        env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
    if log_path is None:
        rc = run_cargo(cmd, cwd=root, env=env)
        if rc != 0:
            die(f"command failed ({rc}): {shlex.join(cmd)}", rc)
    else:
        with open(log_path, "w") as out:
            if run_cargo(cmd, cwd=root, env=env, out=out) != 0:
                return None
    elf = Path(target_dir or root / "target") / TARGET / ("release" if release else "debug") / "zdat"
    if not elf.exists():
        if log_path is not None:
            return None
        die(f"build produced no kernel at {elf}")
    return elf


def build_layout(layout, release=False, quiet=False, features=()):
    """Build the kernel ELF of one struct page layout (LAYOUTS): the overlay
    in target/, memdesc with its feature in MEMDESC_TARGET_DIR."""
    if layout == "memdesc":
        return build(release, quiet, features=list(features) + [MEMDESC_FEATURE],
                     target_dir=MEMDESC_TARGET_DIR)
    return build(release, quiet, features=features)


def layout_of(args):
    return "memdesc" if getattr(args, "memdesc", False) else "overlay"


# ---------------------------------------------------------------------------
# QEMU


def qemu_cmd(elf, memory, smp, append, extra=()):
    return [QEMU, "-machine", "s390-ccw-virtio", "-nodefaults", "-display", "none",
            "-no-reboot", "-action", "panic=exit-failure",
            "-m", memory, "-smp", str(smp),
            "-kernel", str(elf), "-append", append,
            "-chardev", "stdio,id=con0", "-device", "sclpconsole,chardev=con0",
            *extra]


class Run:
    """One QEMU run: its console lines, exit code and whether it timed out."""

    def __init__(self, lines, returncode, timed_out, seconds):
        self.lines = lines
        self.returncode = returncode
        self.timed_out = timed_out
        self.seconds = seconds


def boot(cmd, timeout, on_line=None, log_path=None):
    """Run QEMU, hand every console line to on_line, kill it at the timeout."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    lines = []
    logf = open(log_path, "w") if log_path else None

    def reader():
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if logf:
                logf.write(line + "\n")
                logf.flush()
            if on_line:
                on_line(line)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout if timeout and timeout > 0 else None)
    except subprocess.TimeoutExpired:
        timed_out = True
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    t.join(timeout=5)
    if logf:
        logf.close()
    return Run(lines, proc.returncode, timed_out, time.monotonic() - start)


# ---------------------------------------------------------------------------
# KTAP


class Ktap:
    """What a console log says about the KTAP run in it."""

    def __init__(self):
        self.cases = []          # (suite, case, status, reason) status: ok/fail/skip
        self.suites = []         # (suite, ok)
        self.errors = []         # structural problems: the log cannot be trusted
        self.status = None       # the kernel's EXIT: STATUS=n
        self.log_lines = 0       # non-KTAP lines inside suites


RESULT = re.compile(r"^(not ok|ok) (\d+) (\S+)(?: # (SKIP)(?: (.*))?)?$")
PLAN = re.compile(r"^1\.\.(\d+)$")


def parse_ktap(lines):
    """Check the log is complete KTAP version 1 as zdat (and KUnit) print it:
    a top-level plan, one indented subtest per suite with its own version,
    `# Subtest:` and plan, every planned result present and numbered in
    order, then the status marker."""
    k = Ktap()
    i = 0
    n = len(lines)
    while i < n and lines[i] != "KTAP version 1":
        i += 1
    if i == n:
        k.errors.append("no 'KTAP version 1' line")
    else:
        i += 1
        m = PLAN.match(lines[i]) if i < n else None
        if not m:
            k.errors.append("no top-level plan after 'KTAP version 1'")
        else:
            planned = int(m.group(1))
            i += 1
            for number in range(1, planned + 1):
                i = parse_suite(lines, i, number, k)
                if k.errors:
                    break
            else:
                while i < n and lines[i].startswith("#"):
                    i += 1
    for line in lines:
        m = EXIT_MARKER.match(line)
        if m:
            k.status = int(m.group(1))
    if k.status is None:
        k.errors.append("no 'EXIT: STATUS=n' marker: the run did not finish")
    return k


def parse_suite(lines, i, number, k):
    n = len(lines)
    ind = "    "
    # Tolerate unrelated lines between suites (none are expected).
    while i < n and lines[i].startswith("#"):
        i += 1
    if i >= n or lines[i] != ind + "KTAP version 1":
        k.errors.append(f"suite {number}: missing subtest 'KTAP version 1' (log ends or is garbled)")
        return i
    i += 1
    if i >= n or not lines[i].startswith(ind + "# Subtest: "):
        k.errors.append(f"suite {number}: missing '# Subtest:' line")
        return i
    suite = lines[i][len(ind + "# Subtest: "):]
    i += 1
    m = PLAN.match(lines[i][len(ind):]) if i < n and lines[i].startswith(ind) else None
    if not m:
        k.errors.append(f"suite {suite}: missing plan")
        return i
    planned = int(m.group(1))
    i += 1
    seen = 0
    while i < n and seen < planned:
        line = lines[i]
        if line.startswith(ind + "#"):
            i += 1
            continue
        m = RESULT.match(line[len(ind):]) if line.startswith(ind) else None
        if not m:
            # Kernel log lines (a "BUG: Bad page state" report, say) may sit
            # between results; KTAP lets parsers ignore unknown lines.
            k.log_lines += 1
            i += 1
            continue
        seen += 1
        if int(m.group(2)) != seen:
            k.errors.append(f"suite {suite}: result {m.group(2)} out of order (expected {seen})")
            return i
        if m.group(4) == "SKIP":
            status = "skip"
        else:
            status = "ok" if m.group(1) == "ok" else "fail"
        k.cases.append((suite, m.group(3), status, m.group(5) or ""))
        i += 1
    if seen < planned:
        k.errors.append(f"suite {suite}: {seen} of {planned} results before the log ended")
        return i
    while i < n and lines[i].startswith(ind + "#"):
        i += 1
    m = RESULT.match(lines[i]) if i < n else None
    if not m or m.group(3) != suite or int(m.group(2)) != number:
        k.errors.append(f"suite {suite}: missing its top-level result line 'ok {number} {suite}'")
        return i
    k.suites.append((suite, m.group(1) == "ok"))
    return i + 1


# ---------------------------------------------------------------------------
# Subcommands


def cmd_build(args):
    elf = build_layout(layout_of(args), args.release)
    log(f"kernel: {elf.relative_to(ROOT)}")


BENCH_LINE = re.compile(r"^BENCH (\S+) ops=(\d+) tod=(\d+)$")
BENCH_VALUE = re.compile(r"^BENCHV (\S+) (\d+) (\S+)$")
# (ours, peers, target instructions/op, minimum ratio to the best peer)
BENCH_TARGETS = {
    "buddy_order0_alloc_free": (["peer_linked_list_allocator_page",
                                 "peer_buddy_system_allocator_frame"], 150, 5.0),
    "memmap_init_per_frame": ([], 20, None),
    # Issue "Cost that grows no faster than the work": the identity map
    # (any map_range) at most 10 instructions per page, tables included.
    "dat_map_range_per_page_64mib": ([], 10, None),
}
# The peers, with a short column title, and our rows comparable to them.
BENCH_PEERS = {
    "peer_linked_list_allocator_page": "LLA",
    "peer_buddy_system_allocator_frame": "BSA",
}
BENCH_PEER_ROWS = ["buddy_order0_alloc_free"]
# Figures that are not times: (name, limit, what the limit means).
VALUE_TARGETS = {
    "dat_fragment_ratio_x1000_scattered": (505, "fragments at most halve PTE-table memory (ratio <= 0.5 + 1%)"),
}


# memdesc's goal against the overlay, in the same bench run: (the most
# memdesc's instructions/op may be, as a multiple of the overlay's, what).
MEMDESC_RATIO_TARGETS = {
    "buddy_order0_alloc_free": (1.25, "the 8-byte struct page costs at most 25% more per page"),
}
# Figures the memdesc layout alone must hold: (limit, what the limit means).
# The other targets above are absolute and hold for both layouts, but for the
# peer ratio, which is the overlay's.
MEMDESC_VALUE_TARGETS = {
    "memmap_ppm": (2000, "the memmap takes at most 0.2% of memory"),
}
# The kernel's memory figures (BENCHV lines), in both layouts where it has
# them (x.py prints whatever it gets; `-` where a layout has none):
#   memmap_ppm            memmap bytes per million bytes of memory
#   desc_bytes_boot       descriptor memory in use right after boot
#   desc_ppm_boot         the same per million bytes of memory
#   desc_ppm_full         descriptor memory per million bytes, memory full of page tables
#   memmap_desc_ppm_full  memmap + descriptors, the same condition
#   boot_instructions     guest instructions from kernel entry to the start of the bench run
#   max_order_blocks_*    free 4 MiB blocks before/after memory was full of page tables


def bench_parse(r):
    """(instructions/op by benchmark, {figure: (value, unit)}) from a bench
    run's console, or None when the run did not finish."""
    if "BENCH-END" not in r.lines or r.timed_out:
        return None
    results = {}
    values = {}
    for line in r.lines:
        v = BENCH_VALUE.match(line)
        if v:
            values[v.group(1)] = (int(v.group(2)), v.group(3))
        m = BENCH_LINE.match(line)
        if m:
            ops, tod = int(m.group(2)), int(m.group(3))
            # 4096 TOD units per microsecond, 1000 instructions per microsecond.
            results[m.group(1)] = tod * 1000 / 4096 / max(ops, 1)
    base = results.pop("baseline_empty_loop", 0.0)
    table = {}
    for name, v in results.items():
        # Loop overhead is subtracted from the timed loops (not from the
        # whole-run figures, which have no loop of their own to subtract).
        # dat_map_range times map_range alone, with no loop per page.
        looped = name.startswith(("buddy_order", "peer_", "dat_", "ptl_", "mutex_lock_",
                                  "rwlock_")) \
            and not name.startswith("dat_map_range")
        per_op = v - base if looped else v
        table[name] = round(per_op, 1)
    return table, values


def peer_ratios(table):
    """Ratios against each peer for the rows that do the peers' work (one
    page allocated and freed): how many times fewer instructions we take."""
    peers = [p for p in BENCH_PEERS if p in table]
    return {ours: {p: round(table[p] / table[ours], 1) for p in peers}
            for ours in BENCH_PEER_ROWS if ours in table and table[ours] > 0}


def wrap_command(cmd, width=112):
    """A command as shell lines of at most about `width` characters, each
    option with its value, `\\` at the end of all but the last."""
    words = [shlex.quote(w) for w in cmd]
    groups = []
    for w in words:
        if groups and groups[-1].startswith("-") and " " not in groups[-1] and not w.startswith("-"):
            groups[-1] += " " + w
        else:
            groups.append(w)
    lines = [groups[0]]
    for g in groups[1:]:
        if len(lines[-1]) + 1 + len(g) > width:
            lines.append("    " + g)
        else:
            lines[-1] += " " + g
    return " \\\n".join(lines)


SWEEP_MEMORY = ["128M", "512M", "1G", "4G", "16G"]
SWEEP_CPUS = [1, 2, 4, 8]
# The whole suite at 8 CPUs may take at most this many times its wall time at
# 2 CPUs, in one sweep (issue "Cost that grows no faster than the work").
SWEEP_SMP_RATIO = 4.0


def cmd_bench_sweep(args):
    """`x.py bench --sweep`: how boot cost, memory overhead and the suite's
    wall time grow with memory and CPUs. Boot figures come from the bench
    kernel booted with `bench bench.boot` under -icount (guest instructions
    from kernel entry to the first benchmark: all CPUs' together); the
    wall time from the release kernel running the whole default suite."""
    ensure_apt(QEMU, "qemu-system-misc")
    sizes = [m for m in args.sweep_memory.split(",") if m]
    for m in sizes:
        try:
            memory_size(m)
        except argparse.ArgumentTypeError as e:
            die(f"--sweep-memory: {e}")
    try:
        cpus = [int(c) for c in args.sweep_cpus.split(",") if c]
    except ValueError:
        die(f"--sweep-cpus: not a list of numbers: {args.sweep_cpus}")
    if not cpus or min(cpus) < 1 or max(cpus) > 248:
        die("--sweep-cpus: 1 to 248 CPUs")
    layout = layout_of(args)
    out = BUILD_DIR / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    # Both kernels built once and copied: the feature switch rebuilds the
    # kernel crate in a shared target dir.
    bench_elf = out / f"zdat-bench-{layout}"
    shutil.copyfile(build_layout(layout, release=True, quiet=True, features=["kernel/bench"]),
                    bench_elf)
    test_elf = out / f"zdat-test-{layout}"
    if not args.no_suite:
        shutil.copyfile(build_layout(layout, release=True, quiet=True), test_elf)
    icount = ["-icount", "shift=0,sleep=off", "-rtc", "base=2000-01-01T00:00:00"]
    rows = []
    for m in sizes:
        for n in cpus:
            r = boot(qemu_cmd(bench_elf, m, n, "bench bench.boot", icount), args.timeout)
            parsed = bench_parse(r)
            if parsed is None:
                die(f"the boot-figure run at {m} with {n} CPUs did not finish"
                    + (f" (killed after {args.timeout} s)" if r.timed_out else ""))
            values = parsed[1]
            row = {"memory": m, "cpus": n,
                   "boot_instructions": values.get("boot_instructions", (None,))[0],
                   "memmap_ppm": values.get("memmap_ppm", (None,))[0],
                   "pagetable_ppm": values.get("pagetable_ppm_boot", (None,))[0]}
            if not args.no_suite:
                log_path = out / f"suite-{layout}-{m}-smp{n}.log"
                t = boot(qemu_cmd(test_elf, m, n, ""), args.timeout, log_path=log_path)
                k = parse_ktap(t.lines)
                failed = sum(1 for c in k.cases if c[2] == "fail")
                row["suite_s"] = round(t.seconds, 2)
                row["suite_ok"] = not t.timed_out and not k.errors and failed == 0 \
                    and k.status == 0
                row["suite_cases"] = len(k.cases)
            rows.append(row)
            log(f"{m} x {n} CPUs: " + ", ".join(f"{k}={v}" for k, v in row.items()
                                                  if k not in ("memory", "cpus")))
    print()
    head = f"{'memory':>7} {'CPUs':>4} {'boot instr':>12} {'memmap ppm':>10} {'PT ppm':>7}"
    if not args.no_suite:
        head += f" {'suite s':>8} {'cases':>6}  result"
    print(head)
    for r in rows:
        line = (f"{r['memory']:>7} {r['cpus']:>4} {r['boot_instructions'] or '-':>12} "
                f"{r['memmap_ppm'] or '-':>10} {r['pagetable_ppm'] or '-':>7}")
        if not args.no_suite:
            line += (f" {r['suite_s']:>8.2f} {r['suite_cases']:>6}  "
                     + ("ok" if r["suite_ok"] else "FAILED (log in build/sweep/)"))
        print(line)
    # The issue's CPU goal, from this one run: the whole suite at 8 CPUs
    # within 4x its wall time at 2 CPUs (on this host's cores), per size.
    ratios = []
    if not args.no_suite and 2 in cpus and 8 in cpus:
        print()
        print("targets" + (" (--check: a MISSED one fails the command):" if args.check else ":"))
        parts = []
        for m in sizes:
            by = {r["cpus"]: r for r in rows if r["memory"] == m}
            ratio = by[8]["suite_s"] / max(by[2]["suite_s"], 0.01)
            met = ratio <= SWEEP_SMP_RATIO
            ratios.append({"memory": m, "smp8_over_smp2": round(ratio, 2), "met": met})
            parts.append(f"{m} {ratio:.1f}x {'met' if met else 'MISSED'}")
        print(f"  suite wall time at 8 CPUs <= {SWEEP_SMP_RATIO:g}x at 2 CPUs: " + "; ".join(parts))
    import json
    (BUILD_DIR / "bench-sweep.json").write_text(json.dumps(
        {"layout": layout, "rows": rows, "smp_ratios": ratios}, indent=1) + "\n")
    ratios_ok = not args.check or all(r["met"] for r in ratios)
    log("table written to build/bench-sweep.json")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot (pip install matplotlib for build/bench-sweep.png)")
        return 0 if all(r.get("suite_ok", True) for r in rows) and ratios_ok else 1
    panels = [("boot_instructions", "boot instructions"), ("pagetable_ppm", "page tables (ppm)")]
    if not args.no_suite:
        panels.append(("suite_s", "suite wall time (s)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    mem_bytes = {m: int(m[:-1]) << (30 if m[-1] in "Gg" else 20) for m in sizes}
    for ax, (key, title) in zip(axes, panels):
        for n in cpus:
            pts = [(mem_bytes[r["memory"]] / 2**20, r[key]) for r in rows
                   if r["cpus"] == n and r.get(key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{n} CPUs")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("memory (MiB)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(BUILD_DIR / "bench-sweep.png")
    log("plot written to build/bench-sweep.png")
    return 0 if all(r.get("suite_ok", True) for r in rows) and ratios_ok else 1


def cmd_bench(args):
    """Boot the benchmarks under -icount (1 ns of virtual time per guest
    instruction): TOD deltas are instruction counts, identical run to run.
    Both layouts (--memdesc: memdesc only), each from its own target dir,
    under the same QEMU command, compared in one report."""
    if args.sweep:
        return cmd_bench_sweep(args)
    ensure_apt(QEMU, "qemu-system-misc")
    layouts = ["memdesc"] if args.memdesc else list(LAYOUTS)
    elfs = {layout: build_layout(layout, release=True, quiet=True, features=["kernel/bench"])
            for layout in layouts}
    icount = ["-icount", "shift=0,sleep=off", "-rtc", "base=2000-01-01T00:00:00"]
    cmds = {layout: qemu_cmd(elf, args.memory, 1, "bench", icount) for layout, elf in elfs.items()}
    shown = qemu_cmd("ELF", args.memory, 1, "bench", icount)
    log("the bench command, ELF being each layout's kernel:\n" + wrap_command(shown))
    for layout, elf in elfs.items():
        log(f"  {layout + ' ELF:':13} {elf.relative_to(ROOT)}")
    # Both at once: under -icount with sleep=off the figures are guest
    # instruction counts, whatever else the host is doing.
    # The lock hand-off figures need a second CPU: a boot of their own
    # (`bench.locks`), so the other figures keep their one-CPU machine.
    lock_cmds = {layout: qemu_cmd(elf, args.memory, 2, "bench bench.locks", icount)
                 for layout, elf in elfs.items()}
    with ThreadPoolExecutor(max_workers=len(layouts)) as pool:
        runs = dict(zip(layouts, pool.map(lambda l: boot(cmds[l], args.timeout), layouts)))
        lock_runs = dict(zip(layouts, pool.map(lambda l: boot(lock_cmds[l], args.timeout),
                                               layouts)))
    got = {}
    for layout, r in runs.items():
        parsed = bench_parse(r)
        if parsed is None:
            print(f"---- [{layout}] console, last 30 lines ----")
            for line in r.lines[-30:]:
                print(line)
            die(f"the {layout} benchmark run did not finish"
                + (f" (killed after {args.timeout} s)" if r.timed_out else ""))
        got[layout] = parsed
        lr = lock_runs[layout]
        lparsed = bench_parse(lr)
        if lparsed is None:
            for line in lr.lines[-30:]:
                print(line)
            die(f"the {layout} lock benchmark run (2 CPUs) did not finish")
        if "mutex_handoff_contended_2cpus" not in lparsed[0]:
            for line in lr.lines[-30:]:
                print(line)
            die(f"the {layout} lock benchmark run (2 CPUs) did not measure the contended "
                "hand-off (its BENCH-NOTE says why)")
        parsed[0].update(lparsed[0])
        parsed[1].update(lparsed[1])
        for line in lr.lines:
            if line.startswith("BENCH-NOTE "):
                log(f"[{layout}] note: {line[len('BENCH-NOTE '):]}")
        # What the kernel could not measure, it says: shown, never dropped.
        for line in r.lines:
            if line.startswith("BENCH-NOTE "):
                log(f"[{layout}] note: {line[len('BENCH-NOTE '):]}")
    tables = {layout: t for layout, (t, _) in got.items()}
    values = {layout: v for layout, (_, v) in got.items()}
    ratios = {layout: peer_ratios(t) for layout, t in tables.items()}
    both = len(layouts) == 2
    # The peer columns: the overlay's ratios (memdesc's with --memdesc).
    first = layouts[0]
    peers = [p for p in BENCH_PEERS if p in tables[first]]
    md_vs_ov = {}
    if both:
        ov, md = tables["overlay"], tables["memdesc"]
        md_vs_ov = {n: round(md[n] / ov[n], 3) for n in ov if n in md and ov[n] > 0}
    names = list(dict.fromkeys(n for t in tables.values() for n in t))
    figures = list(dict.fromkeys(n for v in values.values() for n in v))
    w = max([40] + [len(n) + 1 for n in names + figures])

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    print()
    top = "".join(f" {layout:>10}" for layout in layouts) + (f" {'memdesc/':>9}" if both else "")
    sub = "".join(f" {'instr/op':>10}" for _ in layouts) + (f" {'overlay':>9}" if both else "")
    peer_top = "".join(f" {'x ' + BENCH_PEERS[p]:>10}" for p in peers)
    peer_sub = "".join(f" {'(' + first + ')':>10}" for _ in peers)
    print(f"{'':{w}}{top}{peer_top}")
    print(f"{'benchmark':{w}}{sub}{peer_sub}")
    for name in names:
        cols = "".join(f" {num(tables[l].get(name), '.1f'):>10}" for l in layouts)
        if both:
            r = md_vs_ov.get(name)
            cols += f" {'-' if r is None else f'{r:.2f}x':>9}"
        if name in ratios[first]:
            cols += "".join(f" {ratios[first][name][p]:9.1f}x" for p in peers)
        print(f"{name:{w}}{cols}")
    if figures:
        print()
        print(f"{'figure':{w}}" + "".join(f" {layout:>10}" for layout in layouts) + "  unit")
        for name in figures:
            unit = next(v[name][1] for v in values.values() if name in v)
            cols = "".join(f" {num(values[l][name][0] if name in values[l] else None, 'd'):>10}"
                           for l in layouts)
            print(f"{name:{w}}{cols}  {unit}")

    # The targets: one line each, every layout it applies to.
    print()
    print("targets" + (" (--check: a MISSED one fails the command):" if args.check else ":"))
    missed = []
    checked = []

    def target(heading, what, verdicts):
        """verdicts: [(layout, shown value, met or None when not checked[,
        the value for bench.json when `shown` is more than a number])]."""
        parts = []
        for layout, shown, ok, *value in verdicts:
            checked.append({"target": heading, "layout": layout, "met": ok,
                            "value": value[0] if value else (shown if ok is not None else None)})
            if ok is None:
                parts.append(f"{layout} {shown}")
                continue
            parts.append(f"{layout} {shown} {'met' if ok else 'MISSED'}")
            if not ok:
                missed.append(f"{layout} {heading}")
        print(f"  {heading}: " + "; ".join(parts))
        if what:
            print(f"    {what}")

    def value_verdicts(name, limit, among):
        out = []
        for layout in among:
            if name in values[layout]:
                v = values[layout][name][0]
                out.append((layout, v, v <= limit))
            else:
                # A goal whose figure is gone is missed, not skipped.
                out.append((layout, "not reported", False))
        return out

    for name, (limit, what) in VALUE_TARGETS.items():
        if any(name in values[l] for l in layouts):
            target(f"{name} <= {limit}", what, value_verdicts(name, limit, layouts))
    for ours, (peer_names, limit, ratio) in BENCH_TARGETS.items():
        if not any(ours in tables[l] for l in layouts):
            continue
        target(f"{ours} <= {limit} instructions/op", None,
               [(l, tables[l][ours], tables[l][ours] <= limit) if ours in tables[l]
                else (l, "not reported", False) for l in layouts])
        present = {p: tables["overlay"][p] for p in peer_names
                   if "overlay" in tables and p in tables["overlay"]}
        if ratio and present and ours in tables["overlay"]:
            best = min(present, key=present.get)
            v = tables["overlay"][ours]
            got_ratio = present[best] / v if v > 0 else float("inf")
            target(f"{ours} >= {ratio}x fewer instructions than the better peer", None,
                   [("overlay", f"{got_ratio:.1f}x ({BENCH_PEERS.get(best, best)} {present[best]:.1f})",
                     got_ratio >= ratio, round(got_ratio, 2))])
    if "memdesc" in layouts:
        for name, (limit, what) in MEMDESC_RATIO_TARGETS.items():
            heading = f"{name} <= {limit}x the overlay's instructions/op"
            if not both:
                target(heading, what, [("memdesc", "not checked (no overlay run)", None)])
            elif name in md_vs_ov:
                r = md_vs_ov[name]
                target(heading, what, [("memdesc", f"{r:.2f}x ({tables['memdesc'][name]:.1f} vs "
                                        f"{tables['overlay'][name]:.1f})", r <= limit, r)])
            else:
                target(heading, what, [("memdesc", "not reported", None)])
        for name, (limit, what) in MEMDESC_VALUE_TARGETS.items():
            target(f"{name} <= {limit}", what, value_verdicts(name, limit, ["memdesc"]))

    BUILD_DIR.mkdir(exist_ok=True)
    out = BUILD_DIR / "bench.json"
    import json
    report = {"unit": "guest instructions per operation", "memory": args.memory,
              "command": shlex.join(shown)}
    for layout in layouts:
        report[layout] = {"elf": str(elfs[layout].relative_to(ROOT)),
                          "results": tables[layout], "ratios_vs_peers": ratios[layout],
                          "figures": {k: {"value": v, "unit": u}
                                      for k, (v, u) in values[layout].items()}}
    report["ratios"] = {"memdesc_vs_overlay": md_vs_ov}
    report["targets"] = checked
    out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    log(f"figures written to {out.relative_to(ROOT)}"
        + (f"; {len(missed)} target(s) MISSED" if missed else ""))
    if missed and args.check:
        return 1
    return 0


def cmd_lint(args):
    """cargo fmt --check, clippy on the host library and on the s390x kernel,
    cargo doc of the library (private items too), warnings denied; clippy
    and doc once per struct page layout."""
    ensure_toolchain()
    memdesc = ["--features", MEMDESC_FEATURE]
    s390x = kernel_cargo_args(False)
    # (command, target dir): the memdesc kernel's clippy and doc go to its own
    # target dir, as its build does (target/doc stays the overlay's docs).
    steps = [
        (["cargo", "fmt", "--all", "--", "--check"], None),
        (["cargo", "clippy", "--workspace", "--exclude", "boot", "--all-targets",
          "--", "-D", "warnings"], None),
        (["cargo", "clippy", "-p", "kernel"] + memdesc + ["--all-targets", "--", "-D", "warnings"],
         None),
        (["cargo", "clippy"] + s390x[:2] + ["-p", "kernel"] + s390x[2:]
         + ["--", "-D", "warnings"], None),
        (["cargo", "clippy"] + s390x[:2] + ["-p", "kernel"] + s390x[2:] + memdesc
         + ["--", "-D", "warnings"], MEMDESC_TARGET_DIR),
        (["cargo", "doc", "-p", "kernel", "--no-deps", "--document-private-items"], None),
        (["cargo", "doc", "-p", "kernel", "--no-deps", "--document-private-items"] + memdesc,
         MEMDESC_TARGET_DIR),
    ]
    for cmd, target_dir in steps:
        env = dict(os.environ)
        shown = shlex.join(cmd)
        if target_dir is not None:
            env["CARGO_TARGET_DIR"] = str(target_dir)
            shown = f"CARGO_TARGET_DIR={target_dir.relative_to(ROOT)} {shown}"
        log(shown)
        if cmd[1] == "doc":
            env["RUSTDOCFLAGS"] = "-D warnings"
        rc = run_cargo(cmd, env=env)
        if rc != 0:
            die(f"command failed ({rc}): {shown}", rc)
    log("lint clean (both layouts)")


def cmd_clean(args):
    run_checked(["cargo", "clean"])
    shutil.rmtree(BUILD_DIR, ignore_errors=True)


def cmd_run(args):
    ensure_apt(QEMU, "qemu-system-misc")
    elf = build_layout(layout_of(args), args.release)
    # The sclp suite checks what SCLP reports against what QEMU was given.
    append = run_append(args.memory, args.smp, args.append or "")
    cmd = qemu_cmd(elf, args.memory, args.smp, append, args.qemu_args)
    log(shlex.join(cmd))
    crashed = []

    def show(line):
        # A crash dump's trace lines get their symbols as they stream.
        if TRACE_ADDR.search(line):
            line = symbolize([line], elf)[0]
            crashed.append(line)
        print(line, flush=True)

    r = boot(cmd, args.timeout, on_line=show)
    return finish_run(r, args.timeout)


def cmd_walk(args):
    """dat.walk=ADDR[,space]: the translation of ADDR, level by level, with
    the hardware's LRAG beside the software walker."""
    ensure_apt(QEMU, "qemu-system-misc")
    elf = build_layout(layout_of(args), args.release, quiet=True)
    r = boot(qemu_cmd(elf, args.memory, 1, f"dat.walk={args.addr},{args.space}"), 60)
    shown = False
    for line in r.lines:
        if line.startswith("dat.walk ") or (shown and line.startswith("  ")):
            shown = True
            print(line)
        elif "WARNING" in line:
            print(line.split("] ", 1)[-1])
    return 0 if shown and r.returncode == 0 else 1


def finish_run(r, timeout):
    if r.timed_out:
        log(f"QEMU killed after the {timeout} s timeout")
        return 124
    status = None
    for line in r.lines:
        m = EXIT_MARKER.match(line)
        if m:
            status = int(m.group(1))
    if status is None:
        log(f"QEMU exited {r.returncode} without a status marker")
        return r.returncode or 1
    log(f"kernel status {status}, QEMU exit {r.returncode}, {r.seconds:.2f} s")
    return status if status else r.returncode


def cargo_tests(cmd, stderr_tail=None, env=None):
    """Run a cargo test command, echo its output, and add up its `test
    result:` lines: (passed, failed, ignored). A build failure or crash
    counts as one failure."""
    log(shlex.join(cmd))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    sys.stdout.write(r.stdout)
    if stderr_tail is None or r.returncode != 0:
        sys.stderr.write(r.stderr if stderr_tail is None else r.stderr[-stderr_tail:])
    passed = failed = ignored = 0
    for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored",
                         r.stdout):
        passed += int(m.group(1))
        failed += int(m.group(2))
        ignored += int(m.group(3))
    if r.returncode != 0 and failed == 0:
        failed = 1
    return passed, failed, ignored


def host_test_cmd(layout, release):
    """The host cargo test command of one layout. memdesc runs the library's
    tests only: the trybuild compile-fail tests (tests/compile_fail.rs) pin
    the compiler's messages in .stderr files, and run in the default
    (overlay) layout only."""
    if layout == "memdesc":
        cmd = ["cargo", "test", "-p", "kernel", "--lib", "--features", "memdesc"]
    else:
        cmd = ["cargo", "test", "--workspace", "--exclude", "boot"]
    return cmd + (["--release"] if release else [])


def host_tests(release, filt=None, layouts=LAYOUTS):
    """cargo test on the host, for each layout: {layout: (passed, failed,
    ignored)}. With `filt` (the --filter globs), only the host tests whose
    `module::path::name` matches a glob, with `.` read as `::` and any
    position allowed (`buddy` runs mm::buddy_tests::...)."""
    ensure_toolchain()
    out = {}
    for layout in layouts:
        cmd = host_test_cmd(layout, release)
        if not filt:
            out[layout] = cargo_tests(cmd)
            continue
        r = subprocess.run(cmd + ["--", "--list", "--format", "terse"], cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode != 0:
            # A build that fails is a failure, not "no test matches".
            log(shlex.join(cmd + ["--", "--list"]))
            sys.stderr.write(r.stderr)
            out[layout] = (0, 1, 0)
            continue
        names = [l[:-len(": test")] for l in r.stdout.splitlines() if l.endswith(": test")]
        globs = ["*" + g.replace(".", "::") + "*" for g in filt.split(",") if g]
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]
        if not chosen:
            log(f"host ({layout}): no host test matches --filter {filt} ({len(names)} host tests; "
                "their names are module::path::name, e.g. dat::space_tests)")
            out[layout] = (0, 0, 0)
            continue
        out[layout] = cargo_tests(cmd + ["--", "--exact"] + chosen)
    return out


def miri_tests(layouts=LAYOUTS):
    """The struct page layout and buddy-allocator tests under Miri (smaller
    simulated memory and fewer proptest cases there, see buddy_tests.rs), in
    each layout: {layout: (passed, failed, ignored)}."""
    ensure_toolchain(extra=["miri"])
    run_checked(["cargo", "miri", "setup"], capture_output=True)
    out = {}
    for layout in layouts:
        features = ["--features", "memdesc"] if layout == "memdesc" else []
        # memdesc keeps pointers in the memdesc word as exposed integers
        # (expose_provenance / with_exposed_provenance): permitted, and
        # without this flag Miri warns about each such cast.
        env = dict(os.environ, MIRIFLAGS=(os.environ.get("MIRIFLAGS", "")
                                          + " -Zmiri-permissive-provenance").strip())
        out[layout] = cargo_tests(["cargo", "miri", "test", "-p", "kernel", "--lib"] + features
                                  + ["--", "mm::", "dat::frag_tests"], stderr_tail=4000,
                                  env=env)
    return out


def qemu_suite_run(elf, memory, smp, filt, timeout, label, extra_append="", quiet=False,
                   log_dir=BUILD_DIR):
    """Boot once with the KTAP suites; return (Ktap, Run, problems, log path)."""
    append = f"ktest.expect_mem={memory} ktest.expect_cpus={smp} mm.check"
    if filt:
        append += f" ktest.filter={filt}"
    if extra_append:
        append += " " + extra_append
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"test-{label}.log"
    cmd = qemu_cmd(elf, memory, smp, append)
    if not quiet:
        log(f"[{label}] {shlex.join(cmd)}")

    current = {"suite": "?"}

    def on_line(line):
        if line.startswith("    # Subtest: "):
            current["suite"] = line[len("    # Subtest: "):]
        m = RESULT.match(line[4:]) if line.startswith("    ") else None
        if m and not quiet:
            status = "SKIP" if m.group(4) else ("ok" if m.group(1) == "ok" else "FAIL")
            reason = f"  ({m.group(5)})" if m.group(4) and m.group(5) else ""
            print(f"  [{label}] {status:4} {current['suite']}.{m.group(3)}{reason}", flush=True)

    r = boot(cmd, timeout, on_line=on_line, log_path=log_path)
    k = parse_ktap(r.lines)
    problems = []
    if r.timed_out:
        problems.append(f"timed out after {timeout} s (QEMU killed)")
    # Input the kernel could not use is a failure, not a quiet pass: an
    # unknown or malformed parameter, a filter glob that selects nothing.
    for line in r.lines:
        for marker in ("zdat: WARNING: ", "ktest: ERROR: "):
            if marker in line:
                problems.append(line[line.index(marker):].strip())
        # A free the allocator refused that no test announced is a bug
        # somewhere (tests that refuse on purpose say so: mm::expect_refusals).
        if "BUG: Bad page state" in line and line.rstrip().endswith("(refused)"):
            problems.append("unexpected refusal: " + line.split("] ", 1)[-1].strip())
    if not any("ktest: ERROR: " in p for p in problems):
        problems += k.errors
    # The sclp case writes 21 numbered lines in one console write longer
    # than an SCCB: each must arrive, in order.
    if any(c[0] == "sclp" and c[1] == "console_writes_longer_than_one_sccb" and c[2] == "ok"
           for c in k.cases):
        got = [m.group(1) for l in r.lines for m in [LONG_WRITE_LINE.search(l)] if m]
        if got != [f"{i:02}" for i in range(1, 22)]:
            problems.append(f"the sclp long write arrived as lines {got} (want 01..21)")
    if not r.timed_out and r.returncode != 0:
        problems.append(f"QEMU exited {r.returncode}")
    if k.status not in (None, 0):
        problems.append(f"kernel status {k.status}")
    failed_cases = sum(1 for c in k.cases if c[2] == "fail")
    failed_suites = [s for s, ok in k.suites if not ok]
    if k.status == 0 and (failed_cases or failed_suites):
        problems.append("kernel reported success but KTAP has failures")
    if not k.errors and k.status == 0 and r.returncode == 0 and not k.cases and not filt:
        problems.append("no test case ran")
    return k, r, problems, log_path


def suite_level_failures(k):
    """Suites reported `not ok` although none of their cases failed (the leak
    check fails a suite this way)."""
    bad = []
    for suite, ok in k.suites:
        if not ok and not any(c[0] == suite and c[2] == "fail" for c in k.cases):
            bad.append(suite)
    return bad


TRACE_ADDR = re.compile(r"\[<([0-9a-f]{16})>\]")


def symbolize(lines, elf):
    """Append function and file:line to every `[<address>]` of a crash dump
    (llvm-symbolizer, or addr2line; left as is when neither is there)."""
    addrs = sorted({m.group(1) for l in lines for m in TRACE_ADDR.finditer(l)})
    if not addrs or not elf:
        return lines
    tool = shutil.which("llvm-symbolizer")
    names = {}
    try:
        if tool:
            r = subprocess.run([tool, "--obj", str(elf), "--functions=short", "--no-inlines",
                                "--relative-address"] + ["0x" + a for a in addrs],
                               capture_output=True, text=True, timeout=30)
            blocks = [b.strip().splitlines() for b in r.stdout.strip().split("\n\n")]
            for a, b in zip(addrs, blocks):
                if len(b) >= 2:
                    names[a] = f"{b[0]} {b[1].replace(str(ROOT) + '/', '')}"
        elif shutil.which("addr2line"):
            r = subprocess.run(["addr2line", "-f", "-C", "-e", str(elf)] + ["0x" + a for a in addrs],
                               capture_output=True, text=True, timeout=30)
            out = r.stdout.splitlines()
            for i, a in enumerate(addrs):
                if 2 * i + 1 < len(out):
                    names[a] = f"{out[2 * i]} {out[2 * i + 1]}"
    except (OSError, subprocess.SubprocessError):
        return lines
    def sub(line):
        m = TRACE_ADDR.search(line)
        if m and m.group(1) in names:
            return f"{line}  {names[m.group(1)]}"
        return line
    return [sub(l) for l in lines]


def print_problem_log(r, label, log_path, elf=None):
    tail = [l for l in r.lines if not l.startswith("    ok ") and not l.startswith("ok ")]
    print(f"---- [{label}] console (non-passing lines; full log {log_path.relative_to(ROOT)}) ----")
    for line in symbolize(tail[-60:], elf):
        print(line)
    print("----")


def test_list(args):
    """Boot once with ktest.list: every suite.case the selection runs (the
    suites that run only when named are marked)."""
    ensure_apt(QEMU, "qemu-system-misc")
    elf = build_layout(layout_of(args), args.release, quiet=True)
    append = "ktest.list" + (f" ktest.filter={args.filter}" if args.filter else "")
    r = boot(qemu_cmd(elf, "128M", 1, append), 60)
    cases = [l for l in r.lines if re.match(r"^[a-z0-9_]+\.[a-z0-9_]+( |$)", l)]
    for l in cases:
        print(l)
    errors = [l for l in r.lines if "ktest: ERROR: " in l or "zdat: WARNING: " in l]
    for l in errors:
        log(l.split("] ", 1)[-1])
    if errors or r.returncode != 0:
        return 1
    log(f"{sum(1 for l in cases if '(explicit' not in l)} cases selected"
        + (f" by {args.filter}" if args.filter else "")
        + (" (memdesc layout)" if args.memdesc else ""))
    return 0


LONG_WRITE_LINE = re.compile(r"^    # sclp long write (\d\d)/21 =+$")
DEVIATION_LINE = re.compile(r"#\s+(DEVIATION|DIFFERENCE) ([\w-]+):")


def deviations_named(lines):
    """The `# DEVIATION name:` / `# DIFFERENCE name:` diagnostics of a run,
    in order, each name once."""
    names = []
    for line in lines:
        m = DEVIATION_LINE.search(line)
        if m and m.group(2) not in names:
            names.append(m.group(2))
    return names


def test_plan(args):
    """The QEMU boots of x.py test: [(memory, cpus, layout)]. Every memory
    size on one CPU, then the SMP runs (unless --smp names one CPU count for
    all). --memdesc: that plan with the memdesc kernel only. With neither
    --memory, --smp nor --memdesc, the memdesc kernel's own boots follow."""
    layout = layout_of(args)
    memory = list(args.memory or DEFAULT_TEST_MEMORY)
    if args.full:
        memory += [m for m in FULL_SWEEP_MEMORY if m not in memory]
    if args.smp is None:
        plan = [(m, 1, layout) for m in memory] + [
            (m, n, layout) for n in DEFAULT_SMP for m in SMP_MEMORY]
    else:
        plan = [(m, args.smp, layout) for m in memory]
    if layout == "overlay" and args.memory is None and args.smp is None:
        plan += [(m, 1, "memdesc") for m in MEMDESC_TEST_MEMORY] + [
            (m, n, "memdesc") for n in MEMDESC_SMP for m in MEMDESC_SMP_MEMORY]
    return plan


def boot_label(memory, smp, layout):
    """`128M-smp2`, `memdesc-65M`: names the boot's log, build/test-LABEL.log."""
    return ("memdesc-" if layout == "memdesc" else "") + memory + (f"-smp{smp}" if smp != 1 else "")


def describe_plan(plan):
    """`64M, 128M with 2 CPUs; memdesc layout: 65M, 128M with 2 CPUs`."""
    parts = []
    for layout in LAYOUTS:
        boots = ", ".join(m + (f" with {n} CPUs" if n != 1 else "")
                          for m, n, lay in plan if lay == layout)
        if boots:
            parts.append(boots if layout == "overlay" else f"{layout} layout: {boots}")
    return "; ".join(parts)


def cmd_test(args):
    if args.selftest:
        return selftest(args)
    if args.fault_sweep:
        return fault_sweep(args)
    if args.list:
        return test_list(args)
    deviations_seen = []
    passed = failed = skipped = 0
    problems = []
    # Host tests and Miri in both layouts; --memdesc: the memdesc ones only.
    layouts = ["memdesc"] if args.memdesc else list(LAYOUTS)
    if not args.qemu_only:
        counts = host_tests(args.release, args.filter, layouts)
        for layout, (p, f, s) in counts.items():
            passed, failed, skipped = passed + p, failed + f, skipped + s
            if f:
                problems.append(f"host ({layout}): {f} failed")
        if len(counts) > 1:
            log("host: " + "; ".join(f"{layout} {p} passed, {f} failed, {s} ignored"
                                     for layout, (p, f, s) in counts.items()))
        if args.host_only and args.filter and not any(sum(c) for c in counts.values()):
            problems.append(f"--filter {args.filter} selects no host test")
    if args.miri:
        counts = miri_tests(layouts)
        for layout, (p, f, s) in counts.items():
            passed, failed, skipped = passed + p, failed + f, skipped + s
            if f:
                problems.append(f"miri ({layout}): {f} failed")
        log("miri: " + "; ".join(f"{layout} {p} passed, {f} failed, {s} ignored"
                                 for layout, (p, f, s) in counts.items()))
    if not args.host_only:
        ensure_apt(QEMU, "qemu-system-misc")
        plan = test_plan(args)
        # Both ELFs first: a layout that does not build stops x.py before
        # any boot, not halfway through the matrix.
        elfs = {layout: build_layout(layout, args.release, quiet=True)
                for layout in LAYOUTS if any(b[2] == layout for b in plan)}
        if len(plan) > 1:
            log(f"{len(plan)} boots: " + describe_plan(plan))
        timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
        jobs = max(1, min(args.jobs, len(plan)))

        def one(i):
            memory, smp, layout = plan[i]
            label = boot_label(memory, smp, layout)
            if len(plan) > 1:
                log(f"[boot {i + 1}/{len(plan)} {label}]")
            return qemu_suite_run(elfs[layout], memory, smp, args.filter, timeout, label)

        # Boots run `--jobs` at a time (default: two, this machine's cores),
        # the costliest first so the last ones to finish are short. Each
        # boot is its own QEMU with its own log; results are reported in
        # plan order once all are done.
        cost = [memory_mib(m) * (4 * n if n > 1 else 1) for m, n, _ in plan]
        order = sorted(range(len(plan)), key=lambda i: -cost[i])
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {i: pool.submit(one, i) for i in order}
            results = [futures[i].result() for i in range(len(plan))]
        wall = time.monotonic() - start
        times = []
        for i, (memory, smp, layout) in enumerate(plan):
            elf = elfs[layout]
            label = boot_label(memory, smp, layout)
            k, r, probs, log_path = results[i]
            p = sum(1 for c in k.cases if c[2] == "ok")
            f = sum(1 for c in k.cases if c[2] == "fail")
            s = sum(1 for c in k.cases if c[2] == "skip")
            extra = suite_level_failures(k)
            for suite in extra:
                probs.append(f"suite {suite} failed outside its cases (see its diagnostics)")
            f += len(extra)
            if probs and f == 0:
                f = 1  # a crash, hang or broken log is a failure even with no failed case
            passed, failed, skipped = passed + p, failed + f, skipped + s
            log(f"[{label}] {p} passed, {f} failed, {s} skipped in {r.seconds:.2f} s")
            times.append(f"{label} {r.seconds:.1f} s")
            named = deviations_named(r.lines)
            if named and named != deviations_seen:
                log(f"[{label}] QEMU deviations named (qemu_deviations suite): {', '.join(named)}")
                deviations_seen = named
            for prob in probs:
                problems.append(f"[{label}] {prob}")
            if probs or f:
                print_problem_log(r, label, log_path, elf)
        if len(plan) > 1:
            log(f"{len(plan)} boots, {jobs} at a time, in {wall:.1f} s: " + ", ".join(times))
    for prob in problems:
        log(f"FAILED: {prob}")
    print(f"{passed} passed, {failed} failed, {skipped} skipped", flush=True)
    return 1 if failed or problems else 0


# ---------------------------------------------------------------------------
# x.py test --fault-sweep: the suites under `fail.alloc=N` for a spread of N

FAULT_SWEEP_DIR = BUILD_DIR / "fault-sweep"
# Every N from 1 to this, whatever the calibration run says.
FAULT_SWEEP_FIRST = 64
# Per case: every one of its first DENSE allocations, then the ones DENSE,
# DENSE*2, DENSE*4, ... after its first, and its last one.
FAULT_SWEEP_DENSE = 8
FAULT_SWEEP_TIMEOUT = 120
# N far beyond any run: the calibration run, whose failure never fires.
FAULT_SWEEP_NEVER = 10 ** 12

FAIL_RANGE = re.compile(r"# fail\.alloc: allocations (\d+)-(\d+) in (\S+)$")
FAIL_FIRED = re.compile(r"\] fail\.alloc=(\d+): injected (?:in (\S+)|outside the test cases)")
FAIL_NEVER = re.compile(r"\] fail\.alloc=(\d+): never reached, the run made (\d+) page allocations")
FAIL_TRACE_START = re.compile(r"\] mm: fault injection: fail\.alloc=\d+: this page allocation fails")
LEAK_LINE = re.compile(r"^\s*# (\S+): LEAK: (.*)$")
LEAK_CASE = re.compile(r"^\s*# (\S+): (.*) changed by ([+-]\d+) during case (\S+)$")
BUG_EXPECTED = ("(expected by a test)", "(refused, as the test expects)")


def fault_sweep_spread(ranges, top, dense):
    """The N to boot with, from the calibration run's per-case allocation
    ranges [(first, last, case)] and its total: every N up to
    FAULT_SWEEP_FIRST; for each case (and each stretch of allocations made
    outside the cases) its first `dense` allocations, then the ones dense,
    dense*2, dense*4, ... after its first, and its last."""
    stretches = []
    prev = 0
    for a, b, _ in sorted(ranges):
        if a > prev + 1:
            stretches.append((prev + 1, a - 1))
        stretches.append((a, b))
        prev = max(prev, b)
    if top > prev:
        stretches.append((prev + 1, top))
    ns = set(range(1, min(FAULT_SWEEP_FIRST, top) + 1))
    for a, b in stretches:
        k = b - a + 1
        ns.update(a + i for i in range(min(k, max(dense, 1))))
        off = max(dense, 1)
        while off < k:
            ns.add(a + off)
            off *= 2
        ns.add(b)
    return sorted(ns)


def parse_n_list(text):
    """--fault-sweep-n: `N`, `A-B` or `A-B/STEP`, comma-separated."""
    out = set()
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?:/(\d+))?)?", part.strip())
        if not m or int(m.group(1)) == 0:
            raise argparse.ArgumentTypeError(f"{part!r}: want N, A-B or A-B/STEP with N >= 1")
        a = int(m.group(1))
        b = int(m.group(2) or a)
        out.update(range(a, b + 1, int(m.group(3) or 1)))
    return sorted(out)


class SweepRun:
    """What one `fail.alloc=N` boot showed."""

    def __init__(self, n):
        self.n = n
        self.fired_in = None      # suite.case the failure fired in ("outside" if none)
        self.never = None         # allocations the run made, if it never fired
        self.failed = []          # suite.case (or `suite`) that failed
        self.crash = []           # crash / hang / broken-log lines
        self.leaks = []           # LEAK lines, with the case that moved the counter
        self.bugs = []            # unexpected BUG lines
        self.checks = []          # mm.check problems
        self.other = []           # everything else x.py test would fail a run for
        self.trace = []           # return addresses of the failed allocation
        self.ranges = []          # (first, last, case) allocation ranges
        self.seconds = 0.0
        self.log_path = None
        self.lines = []

    def problems(self):
        return self.crash + self.leaks + self.bugs + self.checks + self.other


def fault_sweep_judge(n, k, r, probs, log_path, timeout, cal_ranges=()):
    """Judge a sweep boot: failed cases are allowed (the injected failure
    may fail the case that meets it); a crash, hang, broken log, LEAK,
    unexpected BUG line or mm.check problem is not."""
    s = SweepRun(n)
    s.seconds, s.log_path, s.lines = r.seconds, log_path, r.lines
    s.failed = [f"{c[0]}.{c[1]}" for c in k.cases if c[2] == "fail"]
    s.failed += [f"{x} (suite)" for x in suite_level_failures(k)]
    in_trace = False
    for i, line in enumerate(r.lines):
        text = line.split("] ", 1)[-1].strip() if line.startswith("[") else line.strip()
        if FAIL_TRACE_START.search(line):
            in_trace = True
            continue
        if in_trace:
            m = TRACE_ADDR.search(line)
            if m:
                s.trace.append(m.group(1))
                continue
            if "Call Trace:" not in line:
                in_trace = False
        m = FAIL_FIRED.search(line)
        if m:
            s.fired_in = m.group(2) or "outside the test cases"
        m = FAIL_NEVER.search(line)
        if m:
            s.never = int(m.group(2))
        m = FAIL_RANGE.search(line)
        if m:
            s.ranges.append((int(m.group(1)), int(m.group(2)), m.group(3)))
        m = LEAK_LINE.match(line)
        if m:
            s.leaks.append(f"LEAK: {m.group(1)}: {m.group(2)}")
        m = LEAK_CASE.match(line)
        if m:
            s.leaks.append(f"  {m.group(2)} changed by {m.group(3)} during "
                           f"{m.group(1)}.{m.group(4)}")
        if "BUG: " in line and not text.endswith(BUG_EXPECTED):
            s.bugs.append(text)
        if re.search(r"check (at boot|after the tests): .*FAILED", line):
            s.checks.append(text)
        if "KERNEL PANIC" in line or "interruption) on CPU" in line:
            # A panic's message is on the next line.
            after = r.lines[i + 1].strip() if i + 1 < len(r.lines) else ""
            s.crash.append(text.replace(str(Path.home()) + "/.rustup/toolchains/", "")
                           + (f" {after}" if after and "Call Trace" not in after else ""))
    if k.status in (0, 1):
        # A memdesc kernel (it says so at boot) checks its descriptors too.
        memdesc = any("mm: memdesc layout:" in l for l in r.lines)
        for what in ("buddy ok", "kernel space ok") + (("descriptors ok",) if memdesc else ()):
            if not any(f"check after the tests: {what}" in l for l in r.lines) and not s.checks:
                s.checks.append(f"no `check after the tests: {what}` line")
    if r.timed_out:
        s.crash.append(f"hang: killed after the {timeout}-s timeout")
    elif k.status is None:
        s.crash.append("no EXIT: STATUS marker: the run did not finish")
    elif k.status not in (0, 1):
        s.crash.append(f"kernel status {k.status}")
    if k.errors and not s.crash:
        s.crash += [f"broken KTAP: {e}" for e in k.errors]
    for p in probs:
        # Failed cases make the kernel's status 1 and QEMU exit non-zero:
        # allowed here. Refusals are BUG lines, judged above.
        if (p.startswith("QEMU exited") or p == "kernel status 1" or p.startswith("kernel status")
                or p.startswith("timed out") or p.startswith("unexpected refusal")
                or p in k.errors):
            continue
        s.other.append(p)
    if s.fired_in is None and s.never is None and s.trace:
        # It fired, but the case did not end to say where (a crash): the
        # calibration run's ranges say which case made allocation n.
        s.fired_in = next((f"{c} (by the calibration run)" for a, b, c in cal_ranges
                           if a <= n <= b), None)
    if not s.crash and s.fired_in is None and s.never is None:
        s.other.append("no `fail.alloc=N: injected ...` or `never reached` line at the end")
    return s


def n_ranges(ns):
    """[3, 4, 5, 9] -> `3-5, 9`."""
    out = []
    for n in sorted(ns):
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def fault_sweep_findings(runs):
    """Group the problems of the sweep's runs: {(kind, what): [runs]}, where
    `what` names the case (a LEAK: the cases that moved the counter and
    which counters) or the message with its numbers taken out."""
    groups = {}
    for s in runs:
        keys = set()
        moved = [l.strip() for l in s.leaks if l.startswith("  ")]
        leaks = [l for l in s.leaks if not l.startswith("  ")]
        counters, where = [], set()
        for l in leaks:
            counter = re.sub(r"^LEAK: \S+: (.*?) \d+ before.*$", r"\1", l)
            by = {re.sub(r"^.* during ", "", m) for m in moved
                  if m.startswith(counter + " changed")}
            if counter == "BUG reports":
                if not s.bugs:  # else the BUG lines themselves say more
                    keys.add(("BUG", f"BUG reports counted in {', '.join(sorted(by))}"))
                continue
            counters.append(counter)
            where |= by or {"suite " + l.split(":")[1].strip()}
        if counters:
            keys.add(("LEAK", f"{', '.join(counters)} in {', '.join(sorted(where))}"))
        for b in s.bugs:
            keys.add(("BUG", re.sub(r"0x[0-9a-f]+|\d+", "#", b)))
        if s.crash:
            what = re.sub(r"panicked at \S+:\d+:\d+: ", "panicked: ", s.crash[0])
            keys.add(("CRASH", re.sub(r"0x[0-9a-f]+|\d+", "#", what)[:160]))
        for c in s.checks:
            keys.add(("MM.CHECK", re.sub(r"0x[0-9a-f]+|\d+", "#", c)[:160]))
        for c in s.other:
            keys.add(("OTHER", c[:160]))
        for key in keys:
            groups.setdefault(key, []).append(s)
    return groups


def symbolize_chains(addrs, elf):
    """For return addresses of a trace: {addr: [(function, file:line), ...]},
    the inline chain innermost first (llvm-symbolizer), or {} without it."""
    tool = shutil.which("llvm-symbolizer")
    if not addrs or not tool:
        return {}
    # A return address is the instruction after the call: look up the call.
    r = subprocess.run([tool, "--obj", str(elf), "--functions=short", "--inlines",
                        "--relative-address"] + [f"0x{int(a, 16) - 1:x}" for a in addrs],
                       capture_output=True, text=True, timeout=120)
    out = {}
    for a, block in zip(addrs, r.stdout.strip().split("\n\n")):
        lines = block.strip().splitlines()
        frames = []
        for f, loc in zip(lines[0::2], lines[1::2]):
            loc = loc.replace(str(ROOT) + "/", "").rsplit(":", 1)[0]
            frames.append((f, loc))
        out[a] = frames
    return out


SITE_SKIP = ("kernel/src/mm/fail.rs", "kernel/src/mm/mod.rs", "kernel/src/panic.rs", "/rustlib/")


def allocation_site(trace, chains, depth=3):
    """The allocation the failure hit, as `fn file:line < caller < ...`:
    the trace without fault injection, alloc_pages and library frames:
    `depth` frames of it, then `...` and the case's own frame (the one
    run_suite called) with the frame it called, if they are further out."""
    frames = [f for a in trace for f in chains.get(a, [])
              if not any(x in f[1] for x in SITE_SKIP) and f[0] != "??"]
    shown = frames[:depth]
    runner = next((i for i, f in enumerate(frames) if f[1].startswith("kernel/src/ktest/runner.rs")),
                  None)
    if runner is not None and runner > depth + 2:
        # The case's frame and the one it called, where its handles live.
        shown = frames[:depth] + [("...", "")] + frames[runner - 2:runner]
    elif runner is not None:
        shown = frames[:runner]
    return " < ".join(f"{f} {loc}".strip() for f, loc in shown)


def fault_sweep(args):
    ensure_apt(QEMU, "qemu-system-misc")
    elf = build_layout(layout_of(args), args.release, quiet=True)
    memory = args.memory[0] if args.memory else "128M"
    smp = args.smp or 1
    timeout = FAULT_SWEEP_TIMEOUT if args.timeout is None else args.timeout
    jobs = max(1, args.jobs)
    if FAULT_SWEEP_DIR.exists():
        shutil.rmtree(FAULT_SWEEP_DIR)
    FAULT_SWEEP_DIR.mkdir(parents=True)
    start = time.monotonic()
    where = f"-m {memory}" + (f" --smp {smp}" if smp != 1 else "") + \
        (f" --filter {args.filter}" if args.filter else "") + (" release" if args.release else " debug") + \
        (", memdesc layout" if args.memdesc else "")

    cal_ranges = []

    def one(n):
        k, r, probs, log_path = qemu_suite_run(elf, memory, smp, args.filter, timeout,
                                               f"fail{n}", extra_append=f"fail.alloc={n}",
                                               quiet=True, log_dir=FAULT_SWEEP_DIR)
        return fault_sweep_judge(n, k, r, probs, log_path, timeout, cal_ranges)

    # The calibration run: a failure that never fires counts the run's page
    # allocations, case by case.
    cal = one(FAULT_SWEEP_NEVER)
    if cal.problems() or cal.failed or cal.never is None:
        for p in cal.problems():
            log(f"FAILED: [calibration] {p}")
        log(f"[calibration] failed cases: {', '.join(cal.failed) or 'none'}")
        print_problem_log(Run(cal.lines, 1, False, cal.seconds), "calibration", cal.log_path, elf)
        log(f"the calibration run (fail.alloc={FAULT_SWEEP_NEVER}, never reached) must be clean")
        return 1
    top = cal.never
    cal_ranges += cal.ranges
    if args.fault_sweep_n:
        ns = args.fault_sweep_n
        spread = "the N given by --fault-sweep-n"
    else:
        ns = fault_sweep_spread(cal.ranges, top, args.fault_sweep_dense)
        spread = (f"every N from 1 to {min(FAULT_SWEEP_FIRST, top)}; per case its first "
                  f"{args.fault_sweep_dense} allocations, then doubling steps into it, and its last")
    log(f"fault sweep ({where}): the calibration run made {top} page allocations in "
        f"{len(cal.ranges)} cases ({cal.seconds:.1f} s); {len(ns)} boot{'s' if len(ns) != 1 else ''} with fail.alloc=N, "
        f"{jobs} at a time: {spread}")
    results = [cal]
    done = 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for s in pool.map(one, ns):
            done += 1
            results.append(s)
            where_ = f"in {s.fired_in}" if s.fired_in else (
                f"never reached ({s.never} allocations)" if s.never is not None else "?")
            bad = s.problems()
            tag = "PROBLEM" if bad else "ok"
            print(f"  [{done}/{len(ns)}] fail.alloc={s.n:<7} {tag:7} {where_}: "
                  f"{len(s.failed)} failed" + (f" ({', '.join(s.failed[:3])}"
                                               + (", ..." if len(s.failed) > 3 else "") + ")"
                                               if s.failed else "")
                  + (f"; {bad[0]}" if bad else ""), flush=True)
    # Where each failure hit, from the trace the kernel printed.
    addrs = sorted({a for s in results for a in s.trace})
    chains = symbolize_chains(addrs, elf)
    sites = {}
    chains_hit = set()
    for s in results:
        s.site = allocation_site(s.trace, chains, 1).split(" < ")[0] if s.trace else ""
        if s.site:
            sites.setdefault(s.site, []).append(s.n)
            chains_hit.add(allocation_site(s.trace, chains, 99))
    swept = [s for s in results if s.n != FAULT_SWEEP_NEVER]
    bad = [s for s in results if s.problems()]
    failed_total = sum(len(s.failed) for s in swept)
    # One paragraph per kind of problem: which N, where the failure hit,
    # the lines of one run, and for a crash its console.
    order = {"CRASH": 0, "MM.CHECK": 1, "BUG": 2, "LEAK": 3, "OTHER": 4}
    for (kind, what), group in sorted(fault_sweep_findings(bad).items(),
                                      key=lambda kv: (order[kv[0][0]], kv[1][0].n)):
        first = group[0]
        print(f"---- {kind}: {what}: {len(group)} run{'s' if len(group) > 1 else ''}, "
              f"fail.alloc={n_ranges(s.n for s in group)} ----")
        if kind == "LEAK":
            by = {}
            for s in group:
                for l in s.leaks:
                    m = re.match(r"\s+(.*) changed by ([+-]\d+) during", l)
                    if m and m.group(1) != "BUG reports":
                        by.setdefault(m.group(1), []).append(int(m.group(2)))
            print("  " + "; ".join(f"{c} changed by {min(v, key=abs):+}"
                                   + (f" to {max(v, key=abs):+}" if len(set(v)) > 1 else "")
                                   for c, v in by.items()))
        hit = sorted({(s.fired_in or "?", allocation_site(s.trace, chains) or "?")
                      for s in group})
        for case, site in hit[:4]:
            print(f"  injected in {case} at {site}")
        if len(hit) > 4:
            print(f"  ... and {len(hit) - 4} more places")
        print(f"  e.g. fail.alloc={first.n} (log {first.log_path.relative_to(ROOT)}): "
              f"failed {', '.join(first.failed) or 'none'}")
        for p in first.problems():
            print(f"    {p}")
        if kind == "CRASH":
            print_problem_log(Run(first.lines, 1, False, first.seconds), f"fail{first.n}",
                              first.log_path, elf)
    fired = [s for s in swept if s.fired_in]
    print(f"fault sweep: {len(swept)} runs, N from {min(ns) if ns else 0} to "
          f"{max(ns) if ns else 0} of {top} page allocations, failure injected in "
          f"{len(fired)} runs at {len(sites)} allocating functions by "
          f"{len(chains_hit)} call chains, in "
          f"{len({s.fired_in for s in fired})} cases; {failed_total} failed cases in all; "
          f"{len(bad)} runs with problems "
          f"({sum(1 for s in bad if s.crash)} crashed, {sum(1 for s in bad if s.leaks)} leaked, "
          f"{sum(1 for s in bad if s.bugs)} BUG, {sum(1 for s in bad if s.checks)} mm.check, "
          f"{sum(1 for s in bad if s.other)} other); {time.monotonic() - start:.0f} s",
          flush=True)
    if bad:
        log("runs with problems: fail.alloc=" + ",".join(str(s.n) for s in bad))
    return 1 if bad else 0


def selftest(args):
    """Prove the failure paths: each of these runs must be reported as a
    failure, with the right reason."""
    ensure_apt(QEMU, "qemu-system-misc")
    # The crash check wants the trace symbolized.
    ensure_apt("llvm-symbolizer", "llvm")
    elf = build(args.release, quiet=True)
    checks = []

    def check(name, cond, detail=""):
        checks.append((name, bool(cond)))
        log(f"selftest {'PASS' if cond else 'FAIL'}: {name}{(' - ' + detail) if detail and not cond else ''}")

    # 0. The install path: apt-get without recommends and never removing a
    # package (issue 14), seen by running ensure_apt against a recorder.
    seen = []
    real_run, real_which, real_euid = subprocess.run, shutil.which, os.geteuid
    try:
        subprocess.run = lambda cmd, **kw: (seen.append(cmd),
                                            subprocess.CompletedProcess(cmd, 0))[1]
        shutil.which = lambda b: None if not seen else "/bin/true"
        os.geteuid = lambda: 0
        ensure_apt("zdat-selftest-binary", "zdat-selftest-package")
    except SystemExit:
        pass
    finally:
        subprocess.run, shutil.which, os.geteuid = real_run, real_which, real_euid
    install = [c for c in seen if "install" in c]
    check("QEMU/gdb installs use --no-install-recommends --no-remove",
          install and "--no-install-recommends" in install[0] and "--no-remove" in install[0],
          f"commands run: {seen}")
    # 1. A failing assertion: complete KTAP, one failure, non-zero status.
    k, r, probs, _ = qemu_suite_run(elf, "128M", 1, "selftest", 60, "selftest", quiet=True)
    counts = [sum(1 for c in k.cases if c[2] == s) for s in ("ok", "fail", "skip")]
    check("failing assertion is counted", counts == [2, 1, 1], f"pass/fail/skip {counts}")
    check("failing assertion gives a failing status", k.status == 1 and r.returncode != 0,
          f"status {k.status}, qemu {r.returncode}")
    check("the assertion prints file:line and both values",
          any("ASSERTION FAILED at kernel/src/ktest/selftest.rs:" in l for l in r.lines)
          and any("two + 1 == 3" in l for l in r.lines))
    check("x.py reports it", bool(probs))
    # 2. An unexpected program check: dump, failing status, truncated KTAP.
    k, r, probs, _ = qemu_suite_run(elf, "128M", 1, "selftest_crash", 60, "crash", quiet=True)
    check("unexpected program check dumps", any("unexpected program check" in l for l in r.lines)
          and any("Call Trace" in l for l in r.lines))
    sym = symbolize(r.lines, elf)
    check("the trace is symbolized", any("unexpected_program_check" in l for l in sym),
          "no symbol for the faulting function")
    check("crash exits non-zero", r.returncode != 0 and k.status == 3, f"qemu {r.returncode}, status {k.status}")
    check("crash leaves incomplete KTAP that x.py rejects", k.errors and probs)
    # 3. A panic.
    k, r, probs, _ = qemu_suite_run(elf, "128M", 1, "selftest_panic", 60, "panic", quiet=True)
    check("panic is reported", any("KERNEL PANIC" in l for l in r.lines) and r.returncode != 0
          and k.status == 2 and probs)
    # 4. A stack overflow: the guard page stops it, the dump says so.
    k, r, probs, _ = qemu_suite_run(elf, "128M", 1, "selftest_stack_overflow", 60, "stack", quiet=True)
    check("stack overflow hits the guard page and is reported",
          any("STACK OVERFLOW" in l for l in r.lines) and r.returncode != 0 and k.status == 3 and probs,
          f"qemu {r.returncode}, status {k.status}")
    # 5. A crash on a secondary CPU: dumped there, the others stopped.
    k, r, probs, _ = qemu_suite_run(elf, "128M", 2, "selftest_smp_crash", 60, "smpcrash", quiet=True)
    check("a crash on CPU 1 is dumped on CPU 1 and ends the run",
          any("on CPU 1" in l for l in r.lines) and r.returncode != 0 and k.status == 3 and probs,
          f"qemu {r.returncode}, status {k.status}, timed out {r.timed_out}")
    # 5b. Two CPUs end the run at the same moment: CPU 1 crashes, CPU 0
    # ends it as a pass, or panics. One of them ends it, promptly, with one
    # marker and one report; a pass must not hide the crash.
    for suite, how, statuses in (("selftest_smp_crash_and_exit", "ends the run as a pass", {3}),
                                 ("selftest_smp_crash_and_panic", "panics", {2, 3})):
        k, r, probs, _ = qemu_suite_run(elf, "128M", 2, suite, 60, suite, quiet=True)
        markers = [l for l in r.lines if EXIT_MARKER.match(l)]
        reports = [l for l in r.lines if "KERNEL PANIC" in l or "unexpected program check" in l]
        check(f"a crash on CPU 1 as CPU 0 {how} ends the run once, promptly, with one report",
              not r.timed_out and r.seconds < 30 and r.returncode != 0 and k.status in statuses
              and len(markers) == 1 and len(reports) == 1
              and any("Call Trace" in l for l in r.lines) and probs,
              f"qemu {r.returncode}, markers {markers}, reports {reports}, {r.seconds:.1f} s")
    # 5c. A crash while another CPU prints: the dump comes out whole, and
    # none of the other CPU's lines is repeated, or printed inside or after
    # it. Three boots: where CPU 0 is when CPU 1 crashes varies.
    CHATTER_LINE = re.compile(r"^\[ *[\d.]+\] selftest: chatter line (\d+) from CPU 0$")
    for n in range(3):
        k, r, probs, _ = qemu_suite_run(elf, "128M", 2, "selftest_smp_crash_while_printing", 60,
                                        "crashprint", quiet=True)
        start = next((i for i, l in enumerate(r.lines) if "unexpected program check" in l), None)
        end = next((i for i, l in enumerate(r.lines) if EXIT_MARKER.match(l)), None)
        dump = r.lines[start + 1:end] if start is not None and end and start < end else []
        chatter = [int(m.group(1)) for l in r.lines for m in [CHATTER_LINE.search(l)] if m]
        check(f"a crash dump is not mixed with another CPU's output (boot {n + 1} of 3)",
              dump and all(l.startswith("  ") for l in dump) and any("Call Trace" in l for l in dump)
              and sum(1 for l in dump if re.match(r"^  r\d", l)) == 4
              and chatter == list(range(len(chatter)))
              and not any("chatter" in l for l in r.lines[start:]) and k.status == 3 and probs,
              f"status {k.status}, chatter {chatter[-3:]}, dump {dump[:4]}")
        if not checks[-1][1]:
            break
    # 6. A hang: killed at the timeout.
    k, r, probs, _ = qemu_suite_run(elf, "128M", 1, "selftest_hang", 5, "hang", quiet=True)
    check("hang is killed at the timeout", r.timed_out and r.seconds < 30 and probs,
          f"timed_out {r.timed_out}, {r.seconds:.1f} s")
    # 7. A truncated log with QEMU exit 0 is a failure (KTAP parser alone).
    k, r, probs, _ = qemu_suite_run(elf, "128M", 1, "clock", 60, "truncate", quiet=True)
    full = parse_ktap(r.lines)
    check("a complete passing run parses clean", not full.errors and full.status == 0 and not probs,
          f"{full.errors} {probs}")
    cut = [l for l in r.lines if not l.startswith("ok ") and not EXIT_MARKER.match(l)]
    check("a truncated log is rejected", bool(parse_ktap(cut).errors))
    dropped = [l for l in r.lines if l != "    ok 2 stckf_between_stcks"]
    check("a missing result is rejected", bool(parse_ktap(dropped).errors))
    # 9. The README's test-writing example is the file the kernel builds.
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "kernel/src/example_tests.rs").read_text()
    m = re.search(r"<!-- begin kernel/src/example_tests.rs -->\n```rust\n(.*?)```\n<!-- end",
                  readme, re.S)
    check("the README's test example is kernel/src/example_tests.rs verbatim",
          m is not None and m.group(1) == example)
    # 10. The README's console sample matches a real run: every line of its
    # KTAP part (the boot lines carry build-specific addresses) occurs in
    # the console of a default boot, in order.
    m = re.search(r"`python3 x.py run` prints the boot log, then the test results:\n\n```\n(.*?)```",
                  readme, re.S)
    k, r, probs, _ = qemu_suite_run(elf, "128M", 1, None, 300, "readme", quiet=True)
    want = [l for l in (m.group(1).splitlines() if m else [])
            if l.strip() != "..." and not l.startswith("[")]
    got = iter(r.lines)
    missing = [l for l in want if not any(g == l for g in got)]
    check("the README's console sample is a real run's output", m and want and not missing,
          f"not in order in a real run: {missing[:3]}")
    # 11. The teaching view walks all five levels and LRAG agrees.
    r = boot(qemu_cmd(elf, "128M", 1, "dat.walk=0xfff0123456789abc,demo"), 60)
    levels = [l.split()[0] for l in r.lines if re.match(r"^  (region|segment|page)", l)]
    check("dat.walk shows every level of a region-first walk, and LRAG agrees",
          levels == ["region-first", "region-second", "region-third", "segment", "page"]
          and any(l.startswith("  LRAG:          cc 0") for l in r.lines)
          and not any("DISAGREES" in l for l in r.lines) and r.returncode == 0,
          f"levels {levels}")
    # 12. gdb scripts: batch mode stops at boot_main, the backtrace ends
    # cleanly at _start, lowcore fields have names, the run goes to its end.
    ensure_apt(GDB, "gdb-multiarch")
    g = subprocess.run([sys.executable, str(ROOT / "x.py"), "gdb", "--batch", "--port", "1237",
                        "--ex", "break boot_main", "--ex", "continue", "--ex", "bt",
                        "--ex", "x/2gx 0x1a0", "--ex", "delete", "--ex", "continue"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = g.stdout + g.stderr
    check("x.py gdb --batch stops at boot_main, bt ends at _start, runs to the end with status 0",
          "Breakpoint 1, zdat::head::boot_main" in out and " in _start ()" in out
          and "PC not saved" not in out and "Backtrace stopped" not in out
          and "<lc_restart_new_psw>" in out and g.returncode == 0,
          f"rc {g.returncode}: {out[-600:]}")
    # 13. mm.dump's physical memory map covers all memory, region by region.
    r = boot(qemu_cmd(elf, "128M", 1, "mm.dump ktest.filter=clock"), 60)
    regions = [m for l in r.lines
               for m in [re.search(r"mm:   0x([0-9a-f]+)-0x([0-9a-f]+) +(\d+) KiB  (.+)$", l)] if m]
    kinds = {m.group(4) for m in regions}
    contiguous = all(int(b.group(1), 16) == int(a.group(2), 16) + 1
                     for a, b in zip(regions, regions[1:]))
    check("mm.dump maps every byte of memory to a region (lowcore, image, memmap, firmware, free)",
          regions and contiguous and int(regions[0].group(1), 16) == 0
          and int(regions[-1].group(2), 16) == (128 << 20) - 1
          and {"lowcore (prefix area)", "kernel image", "memmap (struct page array)",
               "firmware (s390-ccw BIOS)", "free"} <= kinds,
          f"{len(regions)} regions, kinds {sorted(kinds)}")
    # 14. fail.alloc=N applies to the whole run: the fault_injection suite
    # skips rather than cancel it, the failure fires where the count says,
    # and the sweep's judge sees the leak it causes; a count the run never
    # reaches is reported as such.
    k, r, probs, log_path = qemu_suite_run(elf, "128M", 1, "fault_injection,dat", 60, "failalloc",
                                           quiet=True, extra_append="fail.alloc=10")
    s = fault_sweep_judge(10, k, r, probs, log_path, 60)
    check("fail.alloc=N outlives the fault_injection suite (its cases SKIP) and fires in the "
          "case that makes allocation N, which leaks nothing (it leaked its frame before the "
          "handles freed on drop)",
          [c[2] for c in k.cases if c[0] == "fault_injection"] == ["skip"] * 4
          and s.fired_in == "dat.alias_region3_space" and s.trace and not s.leaks and not s.crash
          and not s.other, f"fired in {s.fired_in}, cases {k.cases[:5]}, problems {s.problems()}")
    k, r, probs, log_path = qemu_suite_run(elf, "128M", 1, "clock", 60, "failnever",
                                           quiet=True, extra_append="fail.alloc=5")
    s = fault_sweep_judge(5, k, r, probs, log_path, 60)
    check("fail.alloc=N that the run never reaches says how many allocations it made",
          s.never is not None and s.never < 5 and not s.problems() and not s.failed and not probs,
          f"never {s.never}, problems {s.problems()} {probs}")
    # 15. A CPU whose bring-up timed out reports in later: the end of the
    # run must stop it too, or QEMU runs on until its timeout.
    # The late CPU says hello 2 s in, after the run's end: only a stop of
    # every started CPU ends QEMU before the 20 s timeout.
    k, r, probs, log_path = qemu_suite_run(elf, "128M", 2, "clock", 20, "latecpu", quiet=True,
                                           extra_append="smp.bringup_us=0 smp.late_hello_us=2000000")
    late = any("did not start: Timeout" in line for line in r.lines)
    check("a CPU that timed out at bring-up and reports in later is stopped at the end",
          late and not r.timed_out and k.status == 0,
          f"timed out at bring-up {late}, QEMU timed out {r.timed_out}, status {k.status}, "
          f"problems {probs}")
    # 16. Above 2 GiB every CPU still comes online: a secondary's lowcore
    # must be below 2 GiB (the prefix register holds 31 bits).
    k, r, probs, log_path = qemu_suite_run(elf, "4G", 2, "clock", 60, "smp4g", quiet=True)
    online = any("2 of 2 CPUs online" in line for line in r.lines)
    check("with 4 GiB of memory both CPUs come online (lowcores below 2 GiB)",
          online and not r.timed_out and k.status == 0,
          f"online {online}, timed out {r.timed_out}, status {k.status}, problems {probs}")
    # 8. Input that does nothing fails loudly.
    k, r, probs, _ = qemu_suite_run(elf, "128M", 1, "sclp,nosuch*", 60, "nomatch", quiet=True)
    check("a filter glob that matches no case fails the run and is named",
          r.returncode != 0 and any("`nosuch*`" in p and "matches no test case" in p for p in probs),
          f"qemu {r.returncode}, problems {probs}")
    k, r, probs, _ = qemu_suite_run(elf, "128M", 1, "sclp", 60, "badparam", quiet=True,
                                    extra_append="mm.dmup fail.alloc=notanumber")
    check("an unknown kernel parameter fails the run",
          any("unknown kernel parameter `mm.dmup`" in p for p in probs), f"{probs}")
    check("a malformed value fails the run",
          any("cannot parse `fail.alloc=notanumber`" in p for p in probs), f"{probs}")
    host = subprocess.run([sys.executable, str(ROOT / "x.py"), "test", "--host-only",
                           "--filter", "cmdline"], cwd=ROOT, capture_output=True, text=True)
    nohost = subprocess.run([sys.executable, str(ROOT / "x.py"), "test", "--host-only",
                             "--filter", "nosuch_host_test"], cwd=ROOT, capture_output=True,
                            text=True)
    m = re.search(r"^(\d+) passed, 0 failed", host.stdout, re.M)
    check("--filter narrows the host tests too, and one that selects none fails",
          host.returncode == 0 and m and 0 < int(m.group(1)) < 20 and nohost.returncode != 0,
          f"rc {host.returncode}/{nohost.returncode}: {host.stdout[-200:]}")
    bad = subprocess.run([sys.executable, str(ROOT / "x.py"), "test", "--qemu-only",
                          "--memory", "16M"], cwd=ROOT, capture_output=True, text=True)
    check("a memory size below the minimum is refused before QEMU starts",
          bad.returncode == 2 and "outside what zdat supports: 64M to 16G" in bad.stderr,
          f"rc {bad.returncode}: {bad.stderr[-200:]}")
    ok = all(c for _, c in checks)
    print(f"{sum(c for _, c in checks)} passed, {sum(not c for _, c in checks)} failed, 0 skipped")
    return 0 if ok else 1


MUTANTS_DIR = BUILD_DIR / "mutants"


def sync_tree(dst):
    """Make `dst` a copy of the working tree as it is now: tracked and
    untracked files, uncommitted edits included, not ignored ones (build/,
    target/). Files whose content is already there are left alone, and
    changed ones get a new mtime, so cargo rebuilds exactly what changed
    (a copy that kept the source's older mtime could hide a change from
    cargo, e.g. the file the previous run mutated last)."""
    r = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"],
                       cwd=ROOT, capture_output=True, check=True)
    wanted = set()
    for name in r.stdout.decode().split("\0"):
        src = ROOT / name
        if not name or not src.is_file():
            continue  # deleted in the working tree, or a submodule
        wanted.add(name)
        out = dst / name
        data = src.read_bytes()
        if out.is_file() and out.read_bytes() == data:
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        shutil.copymode(src, out)
    for path in sorted(dst.rglob("*"), reverse=True):
        rel = path.relative_to(dst).as_posix()
        if path.is_file() and rel not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def mutant_config(m):
    filt = m.get("filter")
    if isinstance(filt, (list, tuple)):
        filt = ",".join(filt)
    smp = m.get("smp", 1)
    return (m.get("memory", "128M"), smp, filt or None, m.get("append", ""),
            120 if smp > 1 else 60)


def mutant_run(elf, config, label):
    """Boot one configuration; return (passed, detail) where detail names
    what failed: the first two failed cases, or crash/timeout/..."""
    memory, smp, filt, append, timeout = config
    k, r, probs, log_path = qemu_suite_run(elf, memory, smp, filt, timeout, label,
                                           extra_append=append, quiet=True,
                                           log_dir=MUTANTS_DIR / "logs")
    failed = [f"{c[0]}.{c[1]}" for c in k.cases if c[2] == "fail"]
    failed += [f"suite {s}" for s in suite_level_failures(k)]
    if not failed and not probs:
        return True, "", log_path, failed
    if r.timed_out:
        detail = f"timeout after {timeout} s"
    elif failed:
        detail = "failed: " + ", ".join(failed[:2]) + (f" (+{len(failed) - 2} more)"
                                                       if len(failed) > 2 else "")
    elif k.status in (2, 3) or k.errors:
        detail = {2: "crash (panic)", 3: "crash (unexpected interruption)"}.get(k.status, "crash")
    else:
        detail = probs[0]
    return False, detail, log_path, failed


def cmd_mutants(args):
    """Mutation check of the TLB-invalidation discipline: each mutant must
    make the suites fail."""
    mutants = MUTANTS
    if args.list:
        for m in mutants:
            memory, smp, filt, append, _ = mutant_config(m)
            where = f"-m {memory} --smp {smp}" + (f" filter {filt}" if filt else "") \
                + (f" append {append!r}" if append else "")
            print(f"{m['name']:24} {m['file']}  [{where}]\n{'':24} {m['why']}")
        return 0
    if args.only:
        names = [n for n in args.only.split(",") if n]
        known = {m["name"] for m in mutants}
        unknown = [n for n in names if n not in known]
        if unknown:
            die(f"no such mutant: {', '.join(unknown)} (python3 x.py mutants --list)")
        mutants = [m for m in mutants if m["name"] in names]
    ensure_apt(QEMU, "qemu-system-misc")
    start = time.monotonic()
    src, target = MUTANTS_DIR / "src", MUTANTS_DIR / "target"
    (MUTANTS_DIR / "logs").mkdir(parents=True, exist_ok=True)
    log(f"copying the working tree to {src.relative_to(ROOT)}")
    sync_tree(src)
    # The unmutated tree must pass every configuration the mutants use,
    # or a "killed" would mean nothing.
    build_log = MUTANTS_DIR / "logs" / "build-unmutated.log"
    elf = build(quiet=True, root=src, target_dir=target, log_path=build_log)
    if elf is None:
        sys.stdout.write(build_log.read_text()[-4000:])
        die(f"the unmutated tree does not build (log {build_log.relative_to(ROOT)})")
    for i, config in enumerate(dict.fromkeys(mutant_config(m) for m in mutants)):
        memory, smp, filt, append, _ = config
        ok, detail, log_path, _ = mutant_run(elf, config, f"unmutated-{i}")
        where = f"-m {memory} --smp {smp}" + (f" filter {filt}" if filt else "")
        if not ok:
            die(f"the unmutated tree fails ({where}): {detail}; fix that first "
                f"(log {log_path.relative_to(ROOT)})")
        log(f"unmutated tree passes ({where})")
    killed = 0
    bad = 0
    for m in mutants:
        path = src / m["file"]
        why = f"({m['why']})"
        original = path.read_text() if path.is_file() else None
        count = original.count(m["find"]) if original is not None else 0
        if count != 1:
            what = "file missing" if original is None else f"`find` occurs {count} times"
            print(f"{'STALE':13}  {m['name']}  {why}  {what} in {m['file']}", flush=True)
            bad += 1
            continue
        try:
            path.write_text(original.replace(m["find"], m["replace"]))
            build_log = MUTANTS_DIR / "logs" / f"build-{m['name']}.log"
            elf = build(quiet=True, root=src, target_dir=target, log_path=build_log)
            if elf is None:
                print(f"{'did not build':13}  {m['name']}  {why}  "
                      f"log {build_log.relative_to(ROOT)}", flush=True)
                bad += 1
                continue
            ok, detail, log_path, failed = mutant_run(elf, mutant_config(m), m["name"])
        finally:
            path.write_text(original)
        expect = m.get("expect", [])
        if ok:
            print(f"{'SURVIVED':13}  {m['name']}  {why}", flush=True)
            bad += 1
        elif expect and not any(fnmatch.fnmatch(f, e) for f in failed for e in expect):
            # Killed, but not by the case meant to catch it: that case
            # proves nothing about this piece of the discipline.
            print(f"{'WRONG KILL':13}  {m['name']}  {why}  {detail}; expected "
                  f"{', '.join(expect)} to fail", flush=True)
            bad += 1
        else:
            print(f"{'killed':13}  {m['name']}  {why}  {detail}", flush=True)
            killed += 1
    print(f"killed {killed} of {len(mutants)} in {time.monotonic() - start:.0f} s", flush=True)
    return 1 if bad else 0


def run_append(memory, smp, extra=""):
    """The kernel command line `x.py run` (and `x.py gdb`) boots with."""
    return f"ktest.expect_mem={memory} ktest.expect_cpus={smp}" + (f" {extra}" if extra else "")


def cmd_gdb(args):
    ensure_apt(QEMU, "qemu-system-misc")
    ensure_apt(GDB, "gdb-multiarch")
    elf = build_layout(layout_of(args), args.release)
    BUILD_DIR.mkdir(exist_ok=True)
    console = BUILD_DIR / "gdb-console.log"
    cmd = qemu_cmd(elf, args.memory, args.smp, run_append(args.memory, args.smp, args.append or ""),
                   ["-S", "-gdb", f"tcp::{args.port}"])
    cmd[cmd.index("stdio,id=con0")] = f"file,id=con0,path={console}"
    log(shlex.join(cmd))
    log(f"console output goes to {console.relative_to(ROOT)} (tail -f it in another terminal)")
    qemu = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True)
    connect = [GDB, "-q"] + (["-batch"] if args.batch else []) + [
        str(elf), "-ex", "set architecture s390:64-bit",
        "-ex", f"target remote localhost:{args.port}"]
    user = []
    for f in args.x or []:
        user += ["-x", f]
    for c in args.ex or []:
        user += ["-ex", c]
    if user:
        gdb = connect + user
    elif args.batch:
        # Stop at boot_main, show where it came from, then run to the end.
        gdb = connect + ["-ex", "break boot_main", "-ex", "continue", "-ex", "bt",
                         "-ex", "info registers pswa", "-ex", "delete", "-ex", "continue"]
    else:
        gdb = connect + ["-ex", "break boot_main", "-ex", "break kernel::panic::panic",
                         "-ex", "continue"]
    log(shlex.join(gdb))
    try:
        rc = subprocess.call(gdb, cwd=ROOT)
        if args.batch:
            # The run's verdict is the kernel's: wait for QEMU to end it.
            try:
                qemu.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                log(f"QEMU still running after {args.timeout} s: killed")
                return 124
            text = console.read_text(errors="replace") if console.exists() else ""
            m = [EXIT_MARKER.match(l) for l in text.splitlines()]
            status = next((int(x.group(1)) for x in m if x), None)
            log(f"gdb exited {rc}; kernel status {status}, QEMU exit {qemu.returncode}")
            return 0 if status == 0 and qemu.returncode == 0 else 1
    finally:
        if qemu.poll() is None:
            os.killpg(qemu.pid, signal.SIGKILL)
        qemu.wait()
    return rc


def main():
    p = argparse.ArgumentParser(prog="x.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_memdesc(sp, what="build and boot the memdesc layout's kernel (cargo feature "
                    "memdesc, its own target dir target/memdesc) instead of the overlay's"):
        sp.add_argument("--memdesc", action="store_true", help=what)

    def add_common(sp, memory=True):
        sp.add_argument("--release", action="store_true", help="build with optimisations")
        add_memdesc(sp)
        if memory:
            sp.add_argument("-m", "--memory", type=memory_size, default="128M", metavar="SIZE",
                            help="guest memory, QEMU syntax (default 128M)")
        sp.add_argument("--smp", type=int, default=1, metavar="N", help="CPUs (default 1)")

    sp = sub.add_parser("build", help="build the kernel ELF")
    sp.add_argument("--release", action="store_true", help="build with optimisations")
    add_memdesc(sp, "build the memdesc layout's kernel (into target/memdesc)")
    sp.set_defaults(func=cmd_build)

    sp = sub.add_parser("bench", help="benchmarks under -icount: guest instructions per "
                        "operation, compared with peer allocators",
                        description="Build a release kernel with the `bench` feature "
                        "in each struct page layout (overlay in target/, memdesc in "
                        "target/memdesc) and boot both under the same "
                        "`-icount shift=0,sleep=off` command; print instructions per "
                        "operation side by side with the memdesc/overlay ratio and the "
                        "overlay's ratios against the peers, each layout's memory figures, "
                        "the targets met or MISSED, and write build/bench.json.")
    sp.add_argument("-m", "--memory", type=memory_size, default="256M", metavar="SIZE",
                    help="guest memory (default 256M)")
    sp.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, metavar="S",
                    help=f"kill QEMU after S seconds (default {DEFAULT_TIMEOUT})")
    sp.add_argument("--check", action="store_true",
                    help="exit non-zero when a target is missed")
    add_memdesc(sp, "benchmark the memdesc layout only (default: both layouts, compared)")
    sp.add_argument("--sweep", action="store_true",
                    help="growth curves instead: for each memory size and CPU count, boot "
                    "instructions, memmap and page-table overhead (under -icount) and the "
                    "whole suite's wall time; a table, build/bench-sweep.json, and "
                    "build/bench-sweep.png when matplotlib is installed")
    sp.add_argument("--sweep-memory", default=",".join(SWEEP_MEMORY), metavar="SIZES",
                    help=f"--sweep: memory sizes (default {','.join(SWEEP_MEMORY)})")
    sp.add_argument("--sweep-cpus", default=",".join(map(str, SWEEP_CPUS)), metavar="LIST",
                    help=f"--sweep: CPU counts (default {','.join(map(str, SWEEP_CPUS))})")
    sp.add_argument("--no-suite", action="store_true",
                    help="--sweep: skip the suite runs (boot figures only)")
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("lint", help="cargo fmt --check, clippy (host and s390x) and "
                        "cargo doc, in both layouts, warnings denied")
    sp.set_defaults(func=cmd_lint)

    sp = sub.add_parser("clean", help="remove build outputs")
    sp.set_defaults(func=cmd_clean)

    sp = sub.add_parser("run", help="build and boot zdat, streaming the console",
                        description="Build and boot zdat in QEMU; the console streams "
                        "to stdout and x.py exits with the kernel's status. Extra QEMU "
                        "arguments go after `--`.")
    add_common(sp)
    sp.add_argument("--append", metavar="ARGS", help="kernel command line, e.g. "
                    "'ktest.filter=clock ktest.list'")
    sp.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, metavar="S",
                    help=f"kill QEMU after S seconds, 0 = never (default {DEFAULT_TIMEOUT})")
    sp.add_argument("qemu_args", nargs="*", metavar="QEMU-ARGS",
                    help="passed to QEMU (after --)")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("test", help="host unit tests and in-kernel KTAP suites",
                        description="Run `cargo test` on the host, then boot the KTAP "
                        "suites in QEMU at each memory size; print every case and one "
                        "closing line `N passed, N failed, N skipped`. Both struct page "
                        "layouts are tested: the host tests (and Miri) run again with the "
                        "memdesc feature, and the memdesc kernel boots at "
                        + ", ".join(MEMDESC_TEST_MEMORY) + " and "
                        + ", ".join(f"{m} with {n} CPUs" for n in MEMDESC_SMP
                                    for m in MEMDESC_SMP_MEMORY)
                        + " after the overlay's boots (not when --memory or --smp is "
                        "given: those boot the overlay kernel only).")
    sp.add_argument("--release", action="store_true", help="build with optimisations")
    add_memdesc(sp, "test the memdesc layout only: its host tests (and Miri), and the "
                "whole boot plan (memory sizes, --smp) with the memdesc kernel; with "
                "--list or --fault-sweep, the memdesc kernel")
    sp.add_argument("--filter", metavar="GLOB", help="ktest.filter: suite or suite.case "
                    "globs, comma-separated; host tests run when their module::name "
                    "contains a glob (`.` read as `::`)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--host-only", action="store_true", help="only cargo test on the host")
    g.add_argument("--qemu-only", action="store_true", help="only the QEMU suites")
    sp.add_argument("--memory", type=memory_sizes, default=None,
                    metavar="SIZES", help="comma-separated memory sizes (default "
                    + ",".join(DEFAULT_TEST_MEMORY) + ", then the memdesc boots; given "
                    "without --memdesc, the overlay kernel only; --fault-sweep: the first "
                    "size, default 128M)")
    sp.add_argument("--smp", type=int, default=None, metavar="N",
                    help="CPUs for every boot (default: 1 at each memory size, then "
                    "128M with 2 and with 4, then the memdesc boots; given without --memdesc, "
                    "the overlay kernel only)")
    sp.add_argument("--timeout", type=int, default=None, metavar="S",
                    help=f"per-boot timeout in seconds (default {DEFAULT_TIMEOUT}; "
                    f"--fault-sweep: {FAULT_SWEEP_TIMEOUT})")
    sp.add_argument("--full", action="store_true",
                    help="also boot a sweep of sizes up to 16G: " + ",".join(FULL_SWEEP_MEMORY)
                    + " (slow: the exhaustion tests walk 4M pages at 16G)")
    sp.add_argument("--miri", action="store_true",
                    help="also run the struct page and buddy tests under Miri, in both "
                    "layouts (installs the miri component)")
    sp.add_argument("--list", action="store_true",
                    help="list every suite.case the selection would run (suites that run "
                    "only when named are marked), then exit")
    sp.add_argument("--selftest", action="store_true",
                    help="prove the failure paths: a failing assertion, an unexpected "
                    "program check, a panic, a stack overflow, a crash on CPU 1, a hang "
                    "and a truncated log must each be reported as failures")
    sp.add_argument("--fault-sweep", action="store_true",
                    help="boot the suites (128M, 1 CPU, no host tests) with fail.alloc=N for a "
                    "spread of N: a calibration run with a failure that never fires counts "
                    "the run's page allocations case by case; then every N from 1 to "
                    f"{FAULT_SWEEP_FIRST}, and for each case its first K=--fault-sweep-dense "
                    "allocations, then its (K+1)th, (2K+1)th, (4K+1)th, ..., and its last. "
                    "Failed cases are allowed and counted; a crash, hang, LEAK, unexpected "
                    "BUG line or mm.check problem fails the sweep. Logs: build/fault-sweep/")
    sp.add_argument("--fault-sweep-dense", type=int, default=FAULT_SWEEP_DENSE, metavar="K",
                    help=f"--fault-sweep: every allocation of each case up to its K-th, then "
                    f"doubling steps (default {FAULT_SWEEP_DENSE}; 0: only each case's first "
                    "and last and the doubling steps)")
    sp.add_argument("--fault-sweep-n", type=parse_n_list, default=None, metavar="LIST",
                    help="--fault-sweep: boot with exactly these N instead of the spread: "
                    "N, A-B or A-B/STEP, comma-separated (e.g. 1-1000/7)")
    sp.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), metavar="J",
                    help="boots at a time, for the matrix and --fault-sweep (default: 2, or 1 "
                         "on one core)")
    sp.set_defaults(func=cmd_test)

    sp = sub.add_parser("mutants", help="mutation check: remove each piece of the "
                        "TLB-invalidation discipline, the suites must fail",
                        description="Copy the working tree to build/mutants/src, check the "
                        "unmutated copy passes, then apply each entry of MUTANTS in x.py "
                        "in turn, rebuild (debug, shared target dir build/mutants/target) "
                        "and boot the suites. Each mutant is `killed` (some case failed, "
                        "or a crash, hang or bad log), `SURVIVED`, `did not build` or "
                        "`STALE` (its `find` text is not in the file exactly once). Exits "
                        "non-zero unless every mutant is killed. Logs go to "
                        "build/mutants/logs.")
    sp.add_argument("--only", metavar="NAME[,NAME]", help="run only these mutants")
    sp.add_argument("--list", action="store_true", help="list the mutants and stop")
    sp.set_defaults(func=cmd_mutants)

    sp = sub.add_parser("walk", help="the translation of an address, level by level",
                        description="Boot with dat.walk=ADDR,SPACE: print each table entry "
                        "the translation of ADDR reads (table, index, entry, its bits), the "
                        "software walker's result and the hardware's LRAG answer.")
    sp.add_argument("addr", metavar="ADDR", help="the address (0x123000, 128M, ...)")
    sp.add_argument("--space", choices=["kernel", "demo"], default="kernel",
                    help="kernel: the kernel's identity map (default); demo: a region-first "
                    "space with ADDR mapped, so the walk goes through all five levels")
    add_common(sp)
    sp.set_defaults(func=cmd_walk)

    sp = sub.add_parser("gdb", help="boot halted with gdb-multiarch attached",
                        description="Start QEMU halted (-S) with a gdb stub, attach "
                        "gdb-multiarch with the kernel's symbols and stop at boot_main. "
                        "The console goes to build/gdb-console.log.")
    add_common(sp)
    sp.add_argument("--append", metavar="ARGS", help="kernel command line")
    sp.add_argument("--port", type=int, default=1234, help="gdb stub port (default 1234)")
    sp.add_argument("--batch", action="store_true",
                    help="non-interactive: run the -x/--ex commands (default: stop at "
                    "boot_main, backtrace, run to the end) and exit with the kernel's status")
    sp.add_argument("-x", action="append", metavar="FILE",
                    help="gdb command file to run after connecting (repeatable)")
    sp.add_argument("--ex", action="append", metavar="CMD",
                    help="gdb command to run after connecting (repeatable)")
    sp.add_argument("--timeout", type=int, default=120, metavar="S",
                    help="--batch: how long QEMU may run after gdb is done (default 120)")
    sp.set_defaults(func=cmd_gdb)

    argv = sys.argv[1:]
    # `x.py run [opts] -- QEMU-ARGS`: everything after -- goes to QEMU.
    qemu_extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, qemu_extra = argv[:cut], argv[cut + 1:]
    args = p.parse_args(argv)
    if qemu_extra:
        if args.command != "run":
            p.error("extra QEMU arguments after -- are only for `run`")
        args.qemu_args = list(args.qemu_args) + qemu_extra
    rc = args.func(args)
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
