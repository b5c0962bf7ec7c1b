//! Physical and virtual addresses and page frame numbers. Pages are 4 KiB.
//!
//! Linux: the pfn/phys/virt helpers of include/linux/pfn.h and arch/s390/include/asm/page.h.

use core::fmt;

pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
pub const PAGE_MASK: u64 = !(PAGE_SIZE - 1);

/// A real (physical) address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(pub u64);

/// A virtual address in the kernel's address space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct VirtAddr(pub u64);

/// A page frame number: physical address >> 12.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Pfn(pub u64);

/// Conversion errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrError {
    /// Not aligned to what the conversion needs.
    Misaligned,
    /// The result does not fit.
    Overflow,
}

macro_rules! addr_common {
    ($t:ident) => {
        impl $t {
            pub const fn new(v: u64) -> Self {
                Self(v)
            }
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
            pub const fn is_page_aligned(self) -> bool {
                self.is_aligned(PAGE_SIZE)
            }
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }
            /// Round up to `align` (a power of two); `None` on overflow.
            pub const fn align_up(self, align: u64) -> Option<Self> {
                match self.0.checked_add(align - 1) {
                    Some(v) => Some(Self(v & !(align - 1))),
                    None => None,
                }
            }
            pub const fn checked_add(self, n: u64) -> Option<Self> {
                match self.0.checked_add(n) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE - 1)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($t), "({:#x})"), self.0)
            }
        }
        impl fmt::LowerHex for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

addr_common!(PhysAddr);
addr_common!(VirtAddr);

impl PhysAddr {
    /// The frame containing this address.
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }

    /// The frame starting exactly here; an error if not page aligned.
    pub const fn to_pfn_exact(self) -> Result<Pfn, AddrError> {
        if self.is_page_aligned() {
            Ok(Pfn(self.0 >> PAGE_SHIFT))
        } else {
            Err(AddrError::Misaligned)
        }
    }
}

impl Pfn {
    pub const fn new(v: u64) -> Self {
        Self(v)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub const fn as_usize(self) -> usize {
        self.0 as usize
    }

    /// The frame's physical address; an error if it does not fit 64 bits.
    pub const fn phys(self) -> Result<PhysAddr, AddrError> {
        if self.0 > (u64::MAX >> PAGE_SHIFT) {
            Err(AddrError::Overflow)
        } else {
            Ok(PhysAddr(self.0 << PAGE_SHIFT))
        }
    }

    pub const fn checked_add(self, n: u64) -> Option<Self> {
        match self.0.checked_add(n) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    pub const fn is_aligned_to_order(self, order: u32) -> bool {
        self.0 & ((1u64 << order) - 1) == 0
    }
}

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pfn({:#x})", self.0)
    }
}

impl fmt::LowerHex for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(PhysAddr(0x12345).pfn(), Pfn(0x12));
        assert_eq!(PhysAddr(0x12000).to_pfn_exact(), Ok(Pfn(0x12)));
        assert_eq!(PhysAddr(0x12001).to_pfn_exact(), Err(AddrError::Misaligned));
        assert_eq!(Pfn(0x12).phys(), Ok(PhysAddr(0x12000)));
        assert_eq!(Pfn(u64::MAX).phys(), Err(AddrError::Overflow));
        assert_eq!(Pfn(1 << 52).phys(), Err(AddrError::Overflow));
        assert_eq!(Pfn((1 << 52) - 1).phys(), Ok(PhysAddr(PAGE_MASK)));
    }

    #[test]
    fn alignment() {
        assert_eq!(VirtAddr(0x1001).align_up(PAGE_SIZE), Some(VirtAddr(0x2000)));
        assert_eq!(VirtAddr(0x1000).align_up(PAGE_SIZE), Some(VirtAddr(0x1000)));
        assert_eq!(VirtAddr(u64::MAX).align_up(PAGE_SIZE), None);
        assert_eq!(PhysAddr(0x1fff).align_down(PAGE_SIZE), PhysAddr(0x1000));
        assert!(Pfn(8).is_aligned_to_order(3));
        assert!(!Pfn(12).is_aligned_to_order(3));
        assert_eq!(PhysAddr(0x1234).page_offset(), 0x234);
    }
}
