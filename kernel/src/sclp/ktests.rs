//! In-kernel tests of the SCLP: what it reports must be what QEMU was
//! given (x.py passes the expectation on the command line).

use crate::ktest::KResult;
use crate::{kassert, kassert_eq, kskip, ktest_suite, machine};

fn memory_size() -> KResult {
    let Ok(Some(expected)) = machine::cmdline().size("ktest.expect_mem") else {
        kskip!("no valid ktest.expect_mem= on the command line");
    };
    let m = machine::get().map(|m| m.memory);
    kassert_eq!(m, Some(expected));
    Ok(())
}

fn cpu_count() -> KResult {
    let Ok(Some(expected)) = machine::cmdline().size("ktest.expect_cpus") else {
        kskip!("no valid ktest.expect_cpus= on the command line");
    };
    let cpus = machine::get().map(|m| m.cpus as u64);
    kassert_eq!(cpus, Some(expected));
    Ok(())
}

fn read_info_is_stable() -> KResult {
    let a = super::read_info();
    kassert!(a.is_ok());
    let b = super::read_info();
    kassert_eq!(a, b);
    kassert_eq!(
        a.map(|i| i.memory),
        Ok(machine::get().map_or(0, |m| m.memory))
    );
    Ok(())
}

fn console_writes_longer_than_one_sccb() -> KResult {
    // One write longer than a Write Event Data chunk is split in two SCCBs;
    // both parts must arrive. The write is 21 diagnostic lines of 200
    // bytes (no line over a few hundred characters); x.py checks that all
    // 21 arrived, in order.
    const LINES: usize = 21;
    const LEN: usize = 200;
    kassert!(LINES * LEN > super::console::CHUNK);
    // Service signals, not all external interruptions: another CPU's
    // kick (a page-table lock's wake-up) may still be pending on this one.
    let before = super::hw::service_signals();
    let mut buf = [b'='; LINES * LEN];
    for (i, line) in buf.chunks_exact_mut(LEN).enumerate() {
        let head = b"    # sclp long write NN/21 ";
        line[..head.len()].copy_from_slice(head);
        line[22] = b'0' + (i + 1) as u8 / 10;
        line[23] = b'0' + (i + 1) as u8 % 10;
        line[LEN - 1] = b'\n';
    }
    super::console::write(&buf[..]);
    let after = super::hw::service_signals();
    // Two service calls, two service signals.
    kassert_eq!(after - before, 2);
    Ok(())
}

ktest_suite!(
    SCLP,
    "sclp",
    [
        memory_size,
        cpu_count,
        read_info_is_stable,
        console_writes_longer_than_one_sccb
    ]
);
