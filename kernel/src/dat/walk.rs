//! Software DAT: translate a virtual address through an ASCE exactly as the
//! CPU does, returning the real address or the program-interruption code
//! the architecture prescribes. Reads tables through `TableReader`, so it
//! runs on real memory in the kernel and on simulated memory on the host.

use super::entry::{pte_index, Asce, Level, Pte, RegionEntry, SegmentEntry};
use crate::arch::pgm::code;
use crate::mm::addr::PhysAddr;

/// How the walker reads table entries (8-byte reads at real addresses).
pub trait TableReader {
    /// `None` if the address is outside memory (addressing exception).
    fn read_entry(&self, pa: PhysAddr) -> Option<u64>;
}

/// Installed translation facilities that change the walk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facilities {
    /// EDAT-1: 1 MiB segment frames, region protection.
    pub edat1: bool,
    /// EDAT-2: 2 GiB region-third frames.
    pub edat2: bool,
}

/// What a successful walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub real: PhysAddr,
    /// Some level has its DAT-protection bit set: stores are refused.
    pub protected: bool,
    /// The size of the mapping: 4 KiB, 1 MiB (EDAT-1) or 2 GiB (EDAT-2).
    pub size: u64,
}

/// How the translation of `va` fails: the program-interruption code.
pub type Fault = u16;

/// Translate `va` through `asce` (Principles of Operation, "Translation
/// Process"). `store` turns protection into a protection exception.
pub fn translate(
    mem: &impl TableReader,
    asce: Asce,
    va: u64,
    fac: Facilities,
    store: bool,
) -> Result<Translation, Fault> {
    let t = walk(mem, asce, va, fac)?;
    if store && t.protected {
        return Err(code::PROTECTION);
    }
    Ok(t)
}

/// The exception for an invalid entry, or one that fails the next table's
/// offset/length check, at each region level.
const fn region_fault(level: Level) -> Fault {
    match level {
        Level::Region1 => code::REGION_FIRST_TRANSLATION,
        Level::Region2 => code::REGION_SECOND_TRANSLATION,
        Level::Region3 => code::REGION_THIRD_TRANSLATION,
        Level::Segment => code::SEGMENT_TRANSLATION,
    }
}

/// One table entry the walk read, for `walk_traced`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The table's kind: "region-first" ... "segment", or "page".
    pub table: &'static str,
    /// The table's real address.
    pub origin: PhysAddr,
    /// The index of the entry in it.
    pub index: usize,
    /// The entry's value.
    pub raw: u64,
}

/// The walk proper, without the store check.
pub fn walk(
    mem: &impl TableReader,
    asce: Asce,
    va: u64,
    fac: Facilities,
) -> Result<Translation, Fault> {
    walk_traced(mem, asce, va, fac, &mut |_| {})
}

fn table_name(level: Level) -> &'static str {
    match level {
        Level::Region1 => "region-first",
        Level::Region2 => "region-second",
        Level::Region3 => "region-third",
        Level::Segment => "segment",
    }
}

/// `walk`, telling `step` about every entry it reads, in order (the
/// `dat.walk=` teaching view).
pub fn walk_traced(
    mem: &impl TableReader,
    asce: Asce,
    va: u64,
    fac: Facilities,
    step: &mut dyn FnMut(Step),
) -> Result<Translation, Fault> {
    let mut read = |table: &'static str, origin: u64, index: usize| {
        let raw = mem
            .read_entry(PhysAddr(origin + index as u64 * 8))
            .ok_or(code::ADDRESSING)?;
        step(Step {
            table,
            origin: PhysAddr(origin),
            index,
            raw,
        });
        Ok::<u64, Fault>(raw)
    };
    let top = asce.level();
    // Bits of the address above what the designated table covers: ASCE-type.
    if (va as u128) >= top.limit() {
        return Err(code::ASCE_TYPE);
    }
    // The first index's two high bits against the ASCE's table length.
    if (top.index(va) >> 9) as u64 > asce.tl() {
        return Err(region_fault(top));
    }
    let mut level = top;
    let mut origin = asce.origin().0;
    let mut protected = false;
    // Region levels.
    while level != Level::Segment {
        let e = RegionEntry::from_raw(read(table_name(level), origin, level.index(va))?);
        if e.is_invalid() {
            return Err(region_fault(level));
        }
        if e.level() != level {
            return Err(code::TRANSLATION_SPECIFICATION);
        }
        if fac.edat1 && e.is_protected() {
            protected = true;
        }
        if level == Level::Region3 && fac.edat2 && e.is_large() {
            let off = va & (super::entry::REGION3_SIZE - 1);
            return Ok(Translation {
                real: PhysAddr(e.large_frame().0 | off),
                protected,
                size: super::entry::REGION3_SIZE,
            });
        }
        let lower = level.lower().unwrap_or(Level::Segment);
        let hi = (lower.index(va) >> 9) as u64;
        if hi < e.tf() || hi > e.tl() {
            return Err(region_fault(lower));
        }
        origin = e.next_origin().0;
        level = lower;
    }
    // Segment table.
    let s = SegmentEntry::from_raw(read("segment", origin, Level::Segment.index(va))?);
    if s.is_invalid() {
        return Err(code::SEGMENT_TRANSLATION);
    }
    if s.tt() != 0 {
        return Err(code::TRANSLATION_SPECIFICATION);
    }
    protected |= s.is_protected();
    if fac.edat1 && s.is_large() {
        let off = va & (super::entry::SEGMENT_SIZE - 1);
        return Ok(Translation {
            real: PhysAddr(s.large_frame().0 | off),
            protected,
            size: super::entry::SEGMENT_SIZE,
        });
    }
    // Page table.
    let p = Pte::from_raw(read("page", s.page_table().0, pte_index(va))?);
    if p.is_invalid() {
        return Err(code::PAGE_TRANSLATION);
    }
    if p.is_malformed() {
        return Err(code::TRANSLATION_SPECIFICATION);
    }
    protected |= p.is_protected();
    Ok(Translation {
        real: PhysAddr(p.frame().0 | (va & 0xfff)),
        protected,
        size: 4096,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::dat::entry::Prot;

    /// Sparse simulated memory of table entries.
    #[derive(Default)]
    struct Mem {
        words: HashMap<u64, u64>,
        limit: u64,
    }

    impl TableReader for Mem {
        fn read_entry(&self, pa: PhysAddr) -> Option<u64> {
            if pa.0 >= self.limit {
                return None;
            }
            Some(*self.words.get(&pa.0).unwrap_or(&0))
        }
    }

    impl Mem {
        fn new() -> Self {
            Mem {
                words: HashMap::new(),
                limit: 1 << 40,
            }
        }
        fn fill(&mut self, origin: u64, n: usize, v: u64) {
            for i in 0..n {
                self.words.insert(origin + 8 * i as u64, v);
            }
        }
        fn set(&mut self, pa: u64, v: u64) {
            self.words.insert(pa, v);
        }
    }

    const R1: u64 = 0x10_0000;
    const R2: u64 = 0x20_0000;
    const R3: u64 = 0x30_0000;
    const SEG: u64 = 0x40_0000;
    const PT: u64 = 0x50_0800;

    /// A four-level space mapping `va` → 0x7000 (read-write).
    fn four_level(va: u64) -> (Mem, Asce) {
        let mut m = Mem::new();
        m.fill(R1, 2048, RegionEntry::empty(Level::Region1).raw());
        m.fill(R2, 2048, RegionEntry::empty(Level::Region2).raw());
        m.fill(R3, 2048, RegionEntry::empty(Level::Region3).raw());
        m.fill(SEG, 2048, SegmentEntry::empty().raw());
        m.fill(PT, 256, Pte::empty().raw());
        m.set(
            R1 + Level::Region1.index(va) as u64 * 8,
            RegionEntry::table(Level::Region1, PhysAddr(R2))
                .unwrap()
                .raw(),
        );
        m.set(
            R2 + Level::Region2.index(va) as u64 * 8,
            RegionEntry::table(Level::Region2, PhysAddr(R3))
                .unwrap()
                .raw(),
        );
        m.set(
            R3 + Level::Region3.index(va) as u64 * 8,
            RegionEntry::table(Level::Region3, PhysAddr(SEG))
                .unwrap()
                .raw(),
        );
        m.set(
            SEG + Level::Segment.index(va) as u64 * 8,
            SegmentEntry::table(PhysAddr(PT), false).unwrap().raw(),
        );
        m.set(
            PT + pte_index(va) as u64 * 8,
            Pte::new(PhysAddr(0x7000), Prot::ReadWrite).unwrap().raw(),
        );
        (m, Asce::new(PhysAddr(R1), Level::Region1).unwrap())
    }

    const VA: u64 = (5 << 53) | (7 << 42) | (9 << 31) | (11 << 20) | (13 << 12) | 0x123;
    const NONE: Facilities = Facilities {
        edat1: false,
        edat2: false,
    };

    #[test]
    fn full_walk() {
        let (m, asce) = four_level(VA);
        let t = translate(&m, asce, VA, NONE, true).unwrap();
        assert_eq!(t.real, PhysAddr(0x7123));
        assert!(!t.protected);
        assert_eq!(t.size, 4096);
    }

    #[test]
    fn each_level_invalid_gives_its_code() {
        let (mut m, asce) = four_level(VA);
        m.set(PT + pte_index(VA) as u64 * 8, Pte::empty().raw());
        assert_eq!(walk(&m, asce, VA, NONE), Err(code::PAGE_TRANSLATION));
        m.set(
            SEG + Level::Segment.index(VA) as u64 * 8,
            SegmentEntry::empty().raw(),
        );
        assert_eq!(walk(&m, asce, VA, NONE), Err(code::SEGMENT_TRANSLATION));
        for (t, l, c) in [
            (R3, Level::Region3, code::REGION_THIRD_TRANSLATION),
            (R2, Level::Region2, code::REGION_SECOND_TRANSLATION),
            (R1, Level::Region1, code::REGION_FIRST_TRANSLATION),
        ] {
            m.set(t + l.index(VA) as u64 * 8, RegionEntry::empty(l).raw());
            assert_eq!(walk(&m, asce, VA, NONE), Err(c));
        }
    }

    #[test]
    fn asce_type_and_lengths() {
        let (m, _) = four_level(VA);
        // A segment-table ASCE covers 2 GiB, region-third 4 TiB, region-second 8 PiB.
        for (l, va) in [
            (Level::Segment, 1u64 << 31),
            (Level::Region3, 1 << 42),
            (Level::Region2, 1 << 53),
        ] {
            let a = Asce::new(PhysAddr(SEG), l).unwrap();
            assert_eq!(walk(&m, a, va, NONE), Err(code::ASCE_TYPE), "{l:?}");
        }
        // Table length 0: only the first 512 entries exist.
        let a = Asce::new(PhysAddr(SEG), Level::Segment).unwrap().with_tl(0);
        assert_eq!(walk(&m, a, 512 << 20, NONE), Err(code::SEGMENT_TRANSLATION));
        let a = Asce::new(PhysAddr(R1), Level::Region1).unwrap().with_tl(0);
        assert_eq!(
            walk(&m, a, VA | (1 << 62), NONE),
            Err(code::REGION_FIRST_TRANSLATION)
        );
    }

    #[test]
    fn specification_and_protection() {
        let (mut m, asce) = four_level(VA);
        // A region-second table entry that says it is region-third.
        let r2e = R2 + Level::Region2.index(VA) as u64 * 8;
        let good = m.words[&r2e];
        m.set(
            r2e,
            RegionEntry::table(Level::Region3, PhysAddr(R3))
                .unwrap()
                .raw(),
        );
        assert_eq!(
            walk(&m, asce, VA, NONE),
            Err(code::TRANSLATION_SPECIFICATION)
        );
        m.set(r2e, good);
        let pte = PT + pte_index(VA) as u64 * 8;
        let p = Pte::from_raw(m.words[&pte]);
        m.set(pte, p.with_bit52().raw());
        assert_eq!(
            walk(&m, asce, VA, NONE),
            Err(code::TRANSLATION_SPECIFICATION)
        );
        m.set(pte, p.with_prot(Prot::ReadOnly).raw());
        assert_eq!(
            translate(&m, asce, VA, NONE, false).map(|t| t.protected),
            Ok(true)
        );
        assert_eq!(translate(&m, asce, VA, NONE, true), Err(code::PROTECTION));
        m.set(pte, p.raw());
        let ste = SEG + Level::Segment.index(VA) as u64 * 8;
        let s = SegmentEntry::from_raw(m.words[&ste]);
        m.set(ste, s.with_protect(true).raw());
        assert_eq!(translate(&m, asce, VA, NONE, true), Err(code::PROTECTION));
    }

    #[test]
    fn tables_outside_memory_are_addressing_exceptions() {
        let (mut m, asce) = four_level(VA);
        m.limit = PT;
        assert_eq!(walk(&m, asce, VA, NONE), Err(code::ADDRESSING));
    }

    #[test]
    fn edat_large_frames() {
        let (mut m, asce) = four_level(VA);
        let ste = SEG + Level::Segment.index(VA) as u64 * 8;
        m.set(
            ste,
            SegmentEntry::large(PhysAddr(0x1230_0000), false)
                .unwrap()
                .raw(),
        );
        let t = walk(
            &m,
            asce,
            VA,
            Facilities {
                edat1: true,
                edat2: false,
            },
        )
        .unwrap();
        assert_eq!(t.real, PhysAddr(0x1230_0000 | (VA & 0xf_ffff)));
        assert_eq!(t.size, 1 << 20);
        // Without EDAT-1 the entry is a page-table origin (as QEMU does).
        assert_ne!(walk(&m, asce, VA, NONE).map(|t| t.size), Ok(1 << 20));
        let r3e = R3 + Level::Region3.index(VA) as u64 * 8;
        m.set(
            r3e,
            RegionEntry::large(PhysAddr(0x1_8000_0000), true)
                .unwrap()
                .raw(),
        );
        let f = Facilities {
            edat1: true,
            edat2: true,
        };
        let t = walk(&m, asce, VA, f).unwrap();
        assert_eq!(t.real, PhysAddr(0x1_8000_0000 | (VA & 0x7fff_ffff)));
        assert_eq!(t.size, 1 << 31);
        assert_eq!(translate(&m, asce, VA, f, true), Err(code::PROTECTION));
    }
}
