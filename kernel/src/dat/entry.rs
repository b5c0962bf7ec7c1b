//! DAT entry formats: the ASCE, region-first/second/third-table entries,
//! segment-table entries and page-table entries, with z/Architecture's bit
//! layout (masks as Linux's arch/s390/include/asm/pgtable.h, IBM bit 63 =
//! 0x1). All bit arithmetic on raw entries lives here.

use core::fmt;

use bitflags::bitflags;

use crate::mm::addr::PhysAddr;

/// Region and segment tables: 2048 entries, 16 KiB.
pub const CRST_ENTRIES: usize = 2048;
/// Page tables: 256 entries, 2 KiB.
pub const PTRS_PER_PTE: usize = 256;

pub const PAGE_SHIFT: u32 = 12;
pub const SEGMENT_SHIFT: u32 = 20;
pub const REGION3_SHIFT: u32 = 31;
pub const REGION2_SHIFT: u32 = 42;
pub const REGION1_SHIFT: u32 = 53;
pub const SEGMENT_SIZE: u64 = 1 << SEGMENT_SHIFT;
pub const REGION3_SIZE: u64 = 1 << REGION3_SHIFT;
pub const REGION2_SIZE: u64 = 1 << REGION2_SHIFT;
pub const REGION1_SIZE: u64 = 1 << REGION1_SHIFT;

/// The level of a table (and of the entries in it), from the top.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Segment = 0,
    Region3 = 1,
    Region2 = 2,
    Region1 = 3,
}

impl Level {
    /// Shift of the virtual-address index into a table of this level.
    pub const fn shift(self) -> u32 {
        match self {
            Level::Segment => SEGMENT_SHIFT,
            Level::Region3 => REGION3_SHIFT,
            Level::Region2 => REGION2_SHIFT,
            Level::Region1 => REGION1_SHIFT,
        }
    }

    /// Index of `va` into a table of this level (11 bits).
    pub const fn index(self, va: u64) -> usize {
        ((va >> self.shift()) & 0x7ff) as usize
    }

    /// The level below (`None` under the segment table: page tables).
    pub const fn lower(self) -> Option<Level> {
        match self {
            Level::Segment => None,
            Level::Region3 => Some(Level::Segment),
            Level::Region2 => Some(Level::Region3),
            Level::Region1 => Some(Level::Region2),
        }
    }

    pub const fn upper(self) -> Option<Level> {
        match self {
            Level::Segment => Some(Level::Region3),
            Level::Region3 => Some(Level::Region2),
            Level::Region2 => Some(Level::Region1),
            Level::Region1 => None,
        }
    }

    /// Addresses below this are covered by an ASCE whose top table is of
    /// this level (Linux's asce_limit: 2 GiB, 4 TiB, 8 PiB, 16 EiB).
    pub const fn limit(self) -> u128 {
        1u128 << (self.shift() + 11)
    }

    /// The table-type bits (0x0c) of entries of this level and the
    /// designation type of an ASCE whose top table is of this level.
    const fn tt_bits(self) -> u64 {
        (self as u64) << 2
    }

    const fn from_tt(bits: u64) -> Level {
        match (bits >> 2) & 3 {
            0 => Level::Segment,
            1 => Level::Region3,
            2 => Level::Region2,
            _ => Level::Region1,
        }
    }

    /// The smallest top level that covers `[0, limit)`, as Linux's
    /// gmap_alloc and mm's asce_limit choose.
    pub const fn for_limit(limit: u128) -> Level {
        if limit <= Level::Segment.limit() {
            Level::Segment
        } else if limit <= Level::Region3.limit() {
            Level::Region3
        } else if limit <= Level::Region2.limit() {
            Level::Region2
        } else {
            Level::Region1
        }
    }
}

/// Errors building an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryError {
    /// The table or frame origin is not aligned as the format needs.
    Misaligned,
}

// -- ASCE ----------------------------------------------------------------

const ASCE_ORIGIN: u64 = !0xfff;
const ASCE_PRIVATE: u64 = 0x100;
const ASCE_SPACE_SWITCH: u64 = 0x40;
const ASCE_REAL: u64 = 0x20;
const ASCE_TYPE: u64 = 0x0c;
const ASCE_TL: u64 = 0x03;

/// Address-space-control element (CR1 primary, CR7 secondary, CR13 home).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Asce(u64);

impl Asce {
    /// An ASCE for a full-length (2048-entry) top table of `level`.
    pub fn new(origin: PhysAddr, level: Level) -> Result<Self, EntryError> {
        if origin.0 & !ASCE_ORIGIN != 0 {
            return Err(EntryError::Misaligned);
        }
        Ok(Asce(origin.0 | level.tt_bits() | ASCE_TL))
    }

    pub const fn from_raw(v: u64) -> Self {
        Asce(v)
    }

    pub const fn raw(self) -> u64 {
        self.0
    }

    pub const fn origin(self) -> PhysAddr {
        PhysAddr(self.0 & ASCE_ORIGIN)
    }

    /// The level of the top table (designation type).
    pub const fn level(self) -> Level {
        Level::from_tt(self.0 & ASCE_TYPE)
    }

    /// Table length: the top table has (tl + 1) * 512 entries.
    pub const fn tl(self) -> u64 {
        self.0 & ASCE_TL
    }

    pub const fn with_tl(self, tl: u64) -> Self {
        Asce((self.0 & !ASCE_TL) | (tl & ASCE_TL))
    }

    pub const fn is_private(self) -> bool {
        self.0 & ASCE_PRIVATE != 0
    }

    pub const fn with_private(self, on: bool) -> Self {
        Asce(if on {
            self.0 | ASCE_PRIVATE
        } else {
            self.0 & !ASCE_PRIVATE
        })
    }

    pub const fn is_real_space(self) -> bool {
        self.0 & ASCE_REAL != 0
    }

    pub const fn is_space_switch(self) -> bool {
        self.0 & ASCE_SPACE_SWITCH != 0
    }

    /// The designation IDTE takes for this ASCE's top table (origin | DT).
    pub const fn idte_designation(self) -> u64 {
        self.0 & (ASCE_ORIGIN | ASCE_TYPE)
    }
}

impl fmt::Debug for Asce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Asce({:#x} {:?} tl={})",
            self.origin().0,
            self.level(),
            self.tl()
        )
    }
}

// -- region and segment entries -------------------------------------------

const CRST_ORIGIN: u64 = !0xfff;
const REGION_PROTECT: u64 = 0x200;
const REGION_IEP: u64 = 0x100;
const REGION_TF: u64 = 0xc0;
const REGION_INVALID: u64 = 0x20;
const REGION_TT: u64 = 0x0c;
const REGION_TL: u64 = 0x03;
/// EDAT-2: a region-third entry maps a 2 GiB frame.
const REGION3_FC: u64 = 0x400;
const REGION3_FRAME: u64 = !(REGION3_SIZE - 1);

/// A region-first, -second or -third table entry (Linux p4d/pud/pgd).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct RegionEntry(u64);

impl RegionEntry {
    /// The empty entry of a region table of `level`: invalid, its type.
    pub const fn empty(level: Level) -> Self {
        RegionEntry(REGION_INVALID | level.tt_bits() | REGION_TL)
    }

    /// An entry of a `level` region table pointing at a full-length table
    /// of the level below at `origin`.
    pub fn table(level: Level, origin: PhysAddr) -> Result<Self, EntryError> {
        debug_assert!(level != Level::Segment);
        if origin.0 & !CRST_ORIGIN != 0 {
            return Err(EntryError::Misaligned);
        }
        Ok(RegionEntry(origin.0 | level.tt_bits() | REGION_TL))
    }

    /// EDAT-2 large region-third entry mapping the 2 GiB frame at `frame`.
    pub fn large(frame: PhysAddr, protect: bool) -> Result<Self, EntryError> {
        if frame.0 & !REGION3_FRAME != 0 {
            return Err(EntryError::Misaligned);
        }
        let p = if protect { REGION_PROTECT } else { 0 };
        Ok(RegionEntry(
            frame.0 | REGION3_FC | p | Level::Region3.tt_bits(),
        ))
    }

    pub const fn from_raw(v: u64) -> Self {
        RegionEntry(v)
    }

    pub const fn raw(self) -> u64 {
        self.0
    }

    pub const fn is_invalid(self) -> bool {
        self.0 & REGION_INVALID != 0
    }

    /// The table-type field: which level of table the entry claims to be in.
    pub const fn level(self) -> Level {
        Level::from_tt(self.0 & REGION_TT)
    }

    pub const fn next_origin(self) -> PhysAddr {
        PhysAddr(self.0 & CRST_ORIGIN)
    }

    /// Table offset and length of the next-lower table (in 512-entry units).
    pub const fn tf(self) -> u64 {
        (self.0 & REGION_TF) >> 6
    }

    pub const fn tl(self) -> u64 {
        self.0 & REGION_TL
    }

    pub const fn is_protected(self) -> bool {
        self.0 & REGION_PROTECT != 0
    }

    pub const fn is_iep(self) -> bool {
        self.0 & REGION_IEP != 0
    }

    /// EDAT-2 format control (region-third entries only).
    pub const fn is_large(self) -> bool {
        self.0 & REGION3_FC != 0
    }

    pub const fn large_frame(self) -> PhysAddr {
        PhysAddr(self.0 & REGION3_FRAME)
    }

    pub const fn invalidated(self) -> Self {
        RegionEntry(self.0 | REGION_INVALID)
    }

    /// vSIE: the shadow of the valid guest entry `self`, pointing at the
    /// shadow table at `origin` instead: the guest's table type, offset and
    /// length (so the CPU makes the same length checks through the shadow)
    /// and, with EDAT-1, its protection; nothing else.
    pub fn shadow_of(self, origin: PhysAddr, edat1: bool) -> Result<Self, EntryError> {
        if origin.0 & !CRST_ORIGIN != 0 {
            return Err(EntryError::Misaligned);
        }
        let p = if edat1 { REGION_PROTECT } else { 0 };
        Ok(RegionEntry(
            origin.0 | (self.0 & (REGION_TF | REGION_TT | REGION_TL | p)),
        ))
    }
}

impl fmt::Debug for RegionEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegionEntry({:#x})", self.0)
    }
}

const SEGMENT_ORIGIN: u64 = !0x7ff;
const SEGMENT_FC: u64 = 0x400;
const SEGMENT_PROTECT: u64 = 0x200;
const SEGMENT_IEP: u64 = 0x100;
const SEGMENT_INVALID: u64 = 0x20;
const SEGMENT_COMMON: u64 = 0x10;
const SEGMENT_TT: u64 = 0x0c;
const SEGMENT_FRAME: u64 = !(SEGMENT_SIZE - 1);

/// A segment-table entry (Linux pmd).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct SegmentEntry(u64);

impl SegmentEntry {
    pub const fn empty() -> Self {
        SegmentEntry(SEGMENT_INVALID)
    }

    /// An entry pointing at the 2 KiB-aligned page table at `pto`.
    pub fn table(pto: PhysAddr, protect: bool) -> Result<Self, EntryError> {
        if pto.0 & !SEGMENT_ORIGIN != 0 {
            return Err(EntryError::Misaligned);
        }
        let p = if protect { SEGMENT_PROTECT } else { 0 };
        Ok(SegmentEntry(pto.0 | p))
    }

    /// EDAT-1 large entry mapping the 1 MiB frame at `frame`.
    pub fn large(frame: PhysAddr, protect: bool) -> Result<Self, EntryError> {
        if frame.0 & !SEGMENT_FRAME != 0 {
            return Err(EntryError::Misaligned);
        }
        let p = if protect { SEGMENT_PROTECT } else { 0 };
        Ok(SegmentEntry(frame.0 | SEGMENT_FC | p))
    }

    pub const fn from_raw(v: u64) -> Self {
        SegmentEntry(v)
    }

    pub const fn raw(self) -> u64 {
        self.0
    }

    pub const fn is_invalid(self) -> bool {
        self.0 & SEGMENT_INVALID != 0
    }

    /// Table type: must be 0 (segment) or the entry is a specification error.
    pub const fn tt(self) -> u64 {
        (self.0 & SEGMENT_TT) >> 2
    }

    pub const fn page_table(self) -> PhysAddr {
        PhysAddr(self.0 & SEGMENT_ORIGIN)
    }

    pub const fn is_protected(self) -> bool {
        self.0 & SEGMENT_PROTECT != 0
    }

    pub const fn is_iep(self) -> bool {
        self.0 & SEGMENT_IEP != 0
    }

    pub const fn is_common(self) -> bool {
        self.0 & SEGMENT_COMMON != 0
    }

    /// EDAT-1 format control.
    pub const fn is_large(self) -> bool {
        self.0 & SEGMENT_FC != 0
    }

    pub const fn large_frame(self) -> PhysAddr {
        PhysAddr(self.0 & SEGMENT_FRAME)
    }

    pub const fn with_protect(self, on: bool) -> Self {
        SegmentEntry(if on {
            self.0 | SEGMENT_PROTECT
        } else {
            self.0 & !SEGMENT_PROTECT
        })
    }

    pub const fn invalidated(self) -> Self {
        SegmentEntry(self.0 | SEGMENT_INVALID)
    }

    /// The hardware bits a gmap copies from a host segment entry.
    pub const fn hardware_bits(self) -> u64 {
        self.0
            & (SEGMENT_ORIGIN
                | SEGMENT_FC
                | SEGMENT_PROTECT
                | SEGMENT_IEP
                | SEGMENT_INVALID
                | SEGMENT_TT)
    }
}

impl fmt::Debug for SegmentEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SegmentEntry({:#x})", self.0)
    }
}

// -- page-table entries ---------------------------------------------------

const PTE_FRAME: u64 = !0xfff;
/// Bit 52: must be zero, else translation-specification exception.
const PTE_BIT52: u64 = 0x800;
const PTE_INVALID: u64 = 0x400;
const PTE_PROTECT: u64 = 0x200;
const PTE_IEP: u64 = 0x100;

bitflags! {
    /// Linux's software bits in the low byte of a PTE (where zdat uses them).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PteSw: u64 {
        const PRESENT = 0x001;
        const YOUNG = 0x004;
        const DIRTY = 0x008;
        const READ = 0x010;
        const WRITE = 0x020;
        const SPECIAL = 0x040;
    }
}

/// Protection of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prot {
    ReadOnly,
    ReadWrite,
}

/// A page-table entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Pte(u64);

impl Pte {
    /// The empty entry: invalid, nothing mapped.
    pub const fn empty() -> Self {
        Pte(PTE_INVALID)
    }

    /// A valid entry mapping `frame`.
    pub fn new(frame: PhysAddr, prot: Prot) -> Result<Self, EntryError> {
        if frame.0 & !PTE_FRAME != 0 {
            return Err(EntryError::Misaligned);
        }
        let (hw, sw) = match prot {
            Prot::ReadOnly => (PTE_PROTECT, PteSw::PRESENT | PteSw::READ),
            Prot::ReadWrite => (0, PteSw::PRESENT | PteSw::READ | PteSw::WRITE),
        };
        Ok(Pte(frame.0 | hw | sw.bits()))
    }

    pub const fn from_raw(v: u64) -> Self {
        Pte(v)
    }

    pub const fn raw(self) -> u64 {
        self.0
    }

    pub const fn is_invalid(self) -> bool {
        self.0 & PTE_INVALID != 0
    }

    /// Mapped (software view): the present bit; an invalidated entry of a
    /// present page is still present.
    pub const fn is_present(self) -> bool {
        self.0 & PteSw::PRESENT.bits() != 0
    }

    pub const fn frame(self) -> PhysAddr {
        PhysAddr(self.0 & PTE_FRAME)
    }

    pub const fn is_protected(self) -> bool {
        self.0 & PTE_PROTECT != 0
    }

    pub const fn is_iep(self) -> bool {
        self.0 & PTE_IEP != 0
    }

    /// Bit 52 set: a translation-specification exception when used.
    pub const fn is_malformed(self) -> bool {
        self.0 & PTE_BIT52 != 0
    }

    pub fn prot(self) -> Prot {
        if self.is_protected() {
            Prot::ReadOnly
        } else {
            Prot::ReadWrite
        }
    }

    pub fn with_prot(self, prot: Prot) -> Self {
        match prot {
            Prot::ReadOnly => Pte((self.0 | PTE_PROTECT) & !PteSw::WRITE.bits()),
            Prot::ReadWrite => Pte((self.0 & !PTE_PROTECT) | PteSw::WRITE.bits()),
        }
    }

    pub const fn invalidated(self) -> Self {
        Pte(self.0 | PTE_INVALID)
    }

    /// The entry with its invalid bit clear (IPTE sets it; the new entry
    /// written after IPTE is valid again).
    pub const fn validated(self) -> Self {
        Pte(self.0 & !PTE_INVALID)
    }

    /// For tests: the entry with bit 52 set.
    pub const fn with_bit52(self) -> Self {
        Pte(self.0 | PTE_BIT52)
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pte({:#x})", self.0)
    }
}

/// The invalid bit of a PTE and of a region/segment entry (what IPTE and
/// IDTE set), for the host stand-ins of those instructions.
pub const PTE_INVALID_BIT: u64 = PTE_INVALID;
pub const CRST_INVALID_BIT: u64 = REGION_INVALID;
const _: () = assert!(REGION_INVALID == SEGMENT_INVALID);

/// Index of `va` into a page table.
pub const fn pte_index(va: u64) -> usize {
    ((va >> PAGE_SHIFT) & 0xff) as usize
}
