//! The program-status word (z/Architecture, 128-bit form).

/// A 16-byte PSW as LPSWE loads it and the CPU stores old PSWs.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Psw {
    pub mask: u64,
    pub addr: u64,
}

const _: () = assert!(core::mem::size_of::<Psw>() == 16);

pub mod mask {
    //! PSW mask bits (IBM bit n of the doubleword = 1 << (63 - n)).
    pub const PER: u64 = 1 << (63 - 1);
    pub const DAT: u64 = 1 << (63 - 5);
    pub const IO: u64 = 1 << (63 - 6);
    pub const EXT: u64 = 1 << (63 - 7);
    pub const KEY: u64 = 0xf << (63 - 11);
    pub const MCHECK: u64 = 1 << (63 - 13);
    pub const WAIT: u64 = 1 << (63 - 14);
    pub const PROBLEM: u64 = 1 << (63 - 15);
    pub const ASC: u64 = 3 << (63 - 17);
    pub const ASC_PRIMARY: u64 = 0;
    pub const ASC_SECONDARY: u64 = 2 << (63 - 17);
    pub const ASC_HOME: u64 = 3 << (63 - 17);
    pub const CC: u64 = 3 << (63 - 19);
    pub const EA: u64 = 1 << (63 - 31);
    pub const BA: u64 = 1 << (63 - 32);
    /// 64-bit addressing mode, everything else off.
    pub const BASE: u64 = EA | BA;
}

impl Psw {
    pub const fn new(mask: u64, addr: u64) -> Self {
        Self { mask, addr }
    }

    /// A disabled wait: QEMU ends the run; the address tells it how (0xfff is
    /// a clean shutdown, anything else a guest crash under
    /// `-action panic=exit-failure`).
    pub const fn disabled_wait(addr: u64) -> Self {
        Self::new(mask::BASE | mask::WAIT, addr)
    }

    pub const fn is_problem_state(&self) -> bool {
        self.mask & mask::PROBLEM != 0
    }

    pub const fn is_wait(&self) -> bool {
        self.mask & mask::WAIT != 0
    }

    pub const fn asc(&self) -> u64 {
        (self.mask & mask::ASC) >> (63 - 17)
    }

    pub const fn cc(&self) -> u64 {
        (self.mask & mask::CC) >> (63 - 19)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_bits_match_linux() {
        // arch/s390/include/asm/ptrace.h values.
        assert_eq!(mask::DAT, 0x0400_0000_0000_0000);
        assert_eq!(mask::IO, 0x0200_0000_0000_0000);
        assert_eq!(mask::EXT, 0x0100_0000_0000_0000);
        assert_eq!(mask::MCHECK, 0x0004_0000_0000_0000);
        assert_eq!(mask::WAIT, 0x0002_0000_0000_0000);
        assert_eq!(mask::PROBLEM, 0x0001_0000_0000_0000);
        assert_eq!(mask::ASC_HOME, 0x0000_c000_0000_0000);
        assert_eq!(mask::BASE, 0x0000_0001_8000_0000);
    }

    #[test]
    fn decoders() {
        let p = Psw::new(mask::BASE | mask::ASC_HOME | (2 << (63 - 19)), 0x1234);
        assert_eq!(p.asc(), 3);
        assert_eq!(p.cc(), 2);
        assert!(!p.is_problem_state());
        assert!(Psw::disabled_wait(0xfff).is_wait());
    }
}
