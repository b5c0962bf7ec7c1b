//! Read SCP Info: the machine's memory size and CPUs. Pure decoding of the
//! SCCB, so it is unit-tested on the host with handmade SCCBs.

/// Offsets in the Read SCP Info SCCB (QEMU include/hw/s390x/sclp.h,
/// Linux arch/s390/include/asm/sclp.h).
mod off {
    pub const RNMAX: usize = 8;
    pub const RNSIZE: usize = 10;
    pub const ENTRIES_CPU: usize = 16;
    pub const OFFSET_CPU: usize = 18;
    /// Byte 85 of the configuration characteristics: 0x02 is ESOP-1.
    pub const FAC85: usize = 85;
    pub const RNSIZE2: usize = 100;
    pub const RNMAX2: usize = 104;
}

/// CPUs zdat records addresses for.
pub const MAX_CPUS: usize = 64;

/// What zdat needs from Read SCP Info.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SclpInfo {
    /// CPU addresses of the configured CPUs (the first `cpus`, at most
    /// MAX_CPUS).
    pub cpu_addrs: [u16; MAX_CPUS],
    /// Bytes of memory: (rnmax or rnmax2) × (rnsize or rnsize2) MiB.
    pub memory: u64,
    /// Configured CPUs.
    pub cpus: u16,
    /// Enhanced-suppression-on-protection 1.
    pub esop1: bool,
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn be64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(a)
}

/// Decode a completed Read SCP Info SCCB. The extended fields (rnmax2,
/// rnsize2) are used when the short ones are 0, which is how the SCLP
/// reports memory that does not fit them (-m 16G and beyond).
pub fn parse(sccb: &[u8]) -> SclpInfo {
    let rnmax = match be16(sccb, off::RNMAX) {
        0 => be64(sccb, off::RNMAX2),
        n => n as u64,
    };
    let rnsize = match sccb[off::RNSIZE] {
        0 => be32(sccb, off::RNSIZE2) as u64,
        n => n as u64,
    };
    let cpus = be16(sccb, off::ENTRIES_CPU);
    let offset = be16(sccb, off::OFFSET_CPU) as usize;
    let mut cpu_addrs = [0u16; MAX_CPUS];
    for (i, a) in cpu_addrs.iter_mut().enumerate().take(cpus as usize) {
        // A CPU entry is 16 bytes; its first byte is the CPU (core) address.
        *a = sccb.get(offset + i * 16).copied().unwrap_or(0) as u16;
    }
    SclpInfo {
        cpu_addrs,
        memory: rnmax.saturating_mul(rnsize << 20),
        cpus,
        esop1: sccb[off::FAC85] & 0x02 != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sccb() -> Vec<u8> {
        vec![0u8; 4096]
    }

    #[test]
    fn short_fields() {
        let mut b = sccb();
        b[off::RNMAX..off::RNMAX + 2].copy_from_slice(&128u16.to_be_bytes());
        b[off::RNSIZE] = 1;
        b[off::ENTRIES_CPU + 1] = 2;
        b[off::OFFSET_CPU + 1] = 128;
        b[128] = 0;
        b[144] = 5;
        let i = parse(&b);
        assert_eq!(i.memory, 128 << 20);
        assert_eq!(i.cpus, 2);
        assert_eq!(&i.cpu_addrs[..3], &[0, 5, 0]);
        assert!(!i.esop1);
    }

    #[test]
    fn extended_fields_for_large_memory() {
        // 16 GiB in 1 MiB increments is 16384 increments: fits rnmax, but a
        // machine may still report it in rnmax2 with rnmax = 0.
        let mut b = sccb();
        b[off::RNSIZE] = 0;
        b[off::RNSIZE2..off::RNSIZE2 + 4].copy_from_slice(&256u32.to_be_bytes());
        b[off::RNMAX2..off::RNMAX2 + 8].copy_from_slice(&64u64.to_be_bytes());
        b[off::FAC85] = 0x02;
        let i = parse(&b);
        assert_eq!(i.memory, 16 << 30);
        assert!(i.esop1);
    }
}
