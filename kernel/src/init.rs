//! start_kernel: from the boot crate's hand-over to the end of the run.

use crate::arch::s390x::{extable, facility};
use crate::fmtbuf::FixedBuf;
use crate::machine::{self, BootInfo, Machine};
use crate::mm::addr::PhysAddr;
use crate::panic::{exit, ExitStatus};
use crate::{ktest, log, mm, pr_info, sclp};

pub fn start_kernel(boot: BootInfo) -> ! {
    // Before anything can allocate: this CPU's per-CPU page lists.
    mm::init_boot_cpu_pcp();
    log::init();
    facility::detect();
    sclp::init();
    if sclp::console::init().is_err() {
        // Nothing can be printed; the exit address still says why.
        exit(ExitStatus::BadConfig);
    }
    pr_info!("zdat: booting; command line \"{}\"", boot.cmdline);
    let info = match sclp::read_info() {
        Ok(info) => info,
        Err(e) => {
            pr_info!("zdat: SCLP Read SCP Info failed: {:?}", e);
            exit(ExitStatus::BadConfig);
        }
    };
    facility::set_esop1(info.esop1);
    machine::set(Machine {
        boot,
        memory: info.memory,
        cpus: info.cpus,
    });
    pr_info!(
        "zdat: memory {} MiB, {} CPU{}",
        info.memory >> 20,
        info.cpus,
        if info.cpus == 1 { "" } else { "s" }
    );
    log_facilities();
    let image = (PhysAddr(boot.image_start), PhysAddr(boot.image_end));
    if let Err(e) = mm::init(info.memory, image.0, image.1) {
        pr_info!("mm: cannot set up memory: {:?}", e);
        exit(ExitStatus::BadConfig);
    }
    if let Err(e) = mm::heap::init() {
        pr_info!("mm: cannot create the heap: {:?}", e);
        exit(ExitStatus::BadConfig);
    }
    match crate::dat::kernel::init(info.memory, &boot.stack_guards) {
        Ok(asce) => pr_info!(
            "dat: kernel runs with DAT on in home-space mode, identity map {:?}, {} page-table pages",
            asce,
            mm::ptdesc::nr_pagetable()
        ),
        Err(e) => {
            pr_info!("dat: cannot build the kernel address space: {:?}", e);
            exit(ExitStatus::BadConfig);
        }
    }
    mm::log_summary();
    let bringup_us = machine::cmdline()
        .size("smp.bringup_us")
        .ok()
        .flatten()
        .unwrap_or(5_000_000);
    let late_us = machine::cmdline()
        .size("smp.late_hello_us")
        .ok()
        .flatten()
        .unwrap_or(0);
    crate::smp::init(&info, bringup_us, late_us);
    let suites = ktest::suites();
    pr_info!(
        "zdat: image {:#x}-{:#x}, {} exception-table entries, {} test suites ({} run by default, {} only when named)",
        boot.image_start,
        boot.image_end,
        extable::count(),
        suites.len(),
        suites.iter().filter(|s| !s.explicit).count(),
        suites.iter().filter(|s| s.explicit).count()
    );

    let cmd = machine::cmdline();
    // Input that does nothing is reported, not ignored: x.py fails a run
    // that printed such a warning.
    for p in cmd.problems() {
        match p {
            crate::cmdline::Problem::Unknown(k) => {
                pr_info!("zdat: WARNING: unknown kernel parameter `{}` (ignored)", k)
            }
            crate::cmdline::Problem::Invalid(k, v, want) => pr_info!(
                "zdat: WARNING: cannot parse `{}={}`: {} wants {} (ignored)",
                k,
                v,
                k,
                want
            ),
        }
    }
    match cmd.size("fail.alloc") {
        Ok(Some(0)) => pr_info!(
            "zdat: WARNING: `fail.alloc=0` does nothing: allocations count from 1 (ignored)"
        ),
        Ok(Some(n)) => {
            pr_info!(
                "mm: fault injection: page allocation {} from now fails (for the whole run)",
                n
            );
            mm::fail::fail_alloc_cmdline(n);
        }
        _ => {}
    }
    if cmd.flag("mm.dump") {
        mm::dump(image);
    }
    if cmd.get("dat.local_clearing").is_some() && !cmd.flag("dat.local_clearing") {
        crate::dat::tlb::set_local_clearing(false);
        pr_info!("dat: local TLB clearing off: every invalidation clears all CPUs' TLBs");
    }
    if let Some(arg) = cmd.get("dat.walk") {
        match crate::dat::view::dat_walk(arg) {
            Ok(()) => exit(ExitStatus::Success),
            Err(e) => {
                pr_info!(
                    "zdat: WARNING: cannot parse `dat.walk={}`: wants ADDR, ADDR,kernel or ADDR,demo ({:?})",
                    arg,
                    e
                );
                exit(ExitStatus::TestsFailed);
            }
        }
    }
    let filter = ktest::Filter::new(cmd.get("ktest.filter"));
    if let Some(g) = filter.unmatched(suites) {
        pr_info!(
            "ktest: ERROR: `{}` in ktest.filter matches no test case (ktest.list, or x.py test --list, shows them)",
            g
        );
        exit(ExitStatus::TestsFailed);
    }
    if cmd.flag("bench") {
        crate::bench::run(cmd.flag("bench.boot"), cmd.flag("bench.locks"));
        exit(ExitStatus::Success);
    }
    if cmd.flag("ktest.list") {
        let n = ktest::list(suites, &filter);
        pr_info!("zdat: {} test cases", n);
        exit(ExitStatus::Success);
    }
    let checks = cmd.flag("mm.check");
    if checks && !run_checks("at boot") {
        exit(ExitStatus::TestsFailed);
    }
    let summary = ktest::run(suites, &filter);
    report_fail_alloc();
    if checks && !run_checks("after the tests") {
        exit(ExitStatus::TestsFailed);
    }
    exit(if summary.ok() {
        ExitStatus::Success
    } else {
        ExitStatus::TestsFailed
    })
}

/// What became of `fail.alloc=N`, in one line x.py parses:
/// `fail.alloc=N: injected in SUITE.CASE` or `fail.alloc=N: never reached,
/// the run made M page allocations`.
fn report_fail_alloc() {
    match mm::fail::cmdline_report() {
        None => {}
        Some((n, Ok(()))) => match ktest::fail_alloc_fired_in() {
            Some((suite, case)) => pr_info!("fail.alloc={}: injected in {}.{}", n, suite, case),
            None => pr_info!("fail.alloc={}: injected outside the test cases", n),
        },
        Some((n, Err(made))) => pr_info!(
            "fail.alloc={}: never reached, the run made {} page allocations (fewer than {})",
            n,
            made,
            n
        ),
    }
}

/// `mm.check`: the buddy allocator against the memmap, and the kernel's
/// page tables against their descriptors and fragment counts.
fn run_checks(when: &str) -> bool {
    let mut ok = true;
    match mm::check() {
        Ok(s) => pr_info!(
            "check {}: buddy ok: {} free, {} per-CPU, {} allocated, {} reserved, {} tables",
            when,
            s.free,
            s.pcp,
            s.allocated,
            s.reserved,
            s.other
        ),
        Err(e) => {
            pr_info!("check {}: buddy FAILED: {:?}", when, e);
            ok = false;
        }
    }
    #[cfg(feature = "memdesc")]
    match mm::desc::check() {
        Ok(s) => pr_info!(
            "check {}: descriptors ok: {} ptdescs, {} gmap-table descriptors, {} slab pages",
            when,
            s.ptdescs,
            s.gtdescs,
            s.slabs
        ),
        Err(e) => {
            pr_info!("check {}: descriptors FAILED: {:?}", when, e);
            ok = false;
        }
    }
    match crate::dat::kernel::check() {
        Some(Ok(s)) => pr_info!(
            "check {}: kernel space ok: {} CRST tables, {} PTE tables in {} pages, {} pages mapped",
            when,
            s.crst_tables,
            s.pte_tables,
            s.pte_pages,
            s.mapped_pages
        ),
        Some(Err(e)) => {
            pr_info!("check {}: kernel space FAILED: {:?}", when, e);
            ok = false;
        }
        None => {}
    }
    ok
}

fn log_facilities() {
    use core::fmt::Write;
    let mut have = FixedBuf::<160>::new();
    let mut lack = FixedBuf::<160>::new();
    for (nr, name) in facility::DAT_FACILITIES {
        let list = if facility::has_facility(nr) {
            &mut have
        } else {
            &mut lack
        };
        let _ = write!(list, " {name}");
    }
    let list = if facility::has_esop1() {
        &mut have
    } else {
        &mut lack
    };
    let _ = write!(list, " ESOP-1");
    pr_info!(
        "zdat: facilities:{}; absent:{}",
        have.as_str(),
        lack.as_str()
    );
}
