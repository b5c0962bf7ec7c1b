//! Program-interruption codes and translation-exception identification.

use core::fmt;

/// Program-interruption codes (Principles of Operation, chapter 6).
pub mod code {
    pub const OPERATION: u16 = 0x01;
    pub const PRIVILEGED_OPERATION: u16 = 0x02;
    pub const EXECUTE: u16 = 0x03;
    pub const PROTECTION: u16 = 0x04;
    pub const ADDRESSING: u16 = 0x05;
    pub const SPECIFICATION: u16 = 0x06;
    pub const DATA: u16 = 0x07;
    pub const SEGMENT_TRANSLATION: u16 = 0x10;
    pub const PAGE_TRANSLATION: u16 = 0x11;
    pub const TRANSLATION_SPECIFICATION: u16 = 0x12;
    pub const SPECIAL_OPERATION: u16 = 0x13;
    pub const ASCE_TYPE: u16 = 0x38;
    pub const REGION_FIRST_TRANSLATION: u16 = 0x39;
    pub const REGION_SECOND_TRANSLATION: u16 = 0x3a;
    pub const REGION_THIRD_TRANSLATION: u16 = 0x3b;
    pub const MONITOR_EVENT: u16 = 0x40;
    /// Flag added to the code when a PER event is reported with it.
    pub const PER_EVENT: u16 = 0x80;
}

/// Name of an exception code, for dumps and test diagnostics.
pub fn code_name(code: u16) -> &'static str {
    match code & 0x7f {
        code::OPERATION => "operation",
        code::PRIVILEGED_OPERATION => "privileged-operation",
        code::EXECUTE => "execute",
        code::PROTECTION => "protection",
        code::ADDRESSING => "addressing",
        code::SPECIFICATION => "specification",
        code::DATA => "data",
        0x08 => "fixed-point-overflow",
        0x09 => "fixed-point-divide",
        code::SEGMENT_TRANSLATION => "segment-translation",
        code::PAGE_TRANSLATION => "page-translation",
        code::TRANSLATION_SPECIFICATION => "translation-specification",
        code::SPECIAL_OPERATION => "special-operation",
        code::ASCE_TYPE => "ASCE-type",
        code::REGION_FIRST_TRANSLATION => "region-first-translation",
        code::REGION_SECOND_TRANSLATION => "region-second-translation",
        code::REGION_THIRD_TRANSLATION => "region-third-translation",
        code::MONITOR_EVENT => "monitor-event",
        _ => "unknown",
    }
}

/// Whether the CPU stores a translation-exception identification at 0xa8
/// for this code. For any other code 0xa8 still holds a stale value
/// (shared/PLATFORM.md), so it must not be read.
pub fn stores_teid(code: u16) -> bool {
    matches!(
        code & 0x7f,
        code::PROTECTION
            | code::SEGMENT_TRANSLATION
            | code::PAGE_TRANSLATION
            | code::ASCE_TYPE
            | code::REGION_FIRST_TRANSLATION
            | code::REGION_SECOND_TRANSLATION
            | code::REGION_THIRD_TRANSLATION
    )
}

/// A program check as a probe reports it: what the CPU stored in the lowcore.
/// Its `Debug` form is hex with the code's name (what a test diagnostic
/// shows), `ProgramCheck { code: 0x11 (page-translation), ilc: 4, teid: 0x... }`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProgramCheck {
    /// Program-interruption code (0x8e), PER flag included.
    pub code: u16,
    /// Instruction length in bytes (2, 4 or 6), from the ILC at 0x8c.
    pub ilc: u8,
    /// Translation-exception identification (0xa8); 0 when `code` stores none.
    pub teid: u64,
}

impl ProgramCheck {
    /// The exception code without the PER flag.
    pub fn exception(&self) -> u16 {
        self.code & 0x7f
    }

    pub fn teid(&self) -> Teid {
        Teid(self.teid)
    }
}

impl fmt::Debug for ProgramCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ProgramCheck {{ code: {:#04x} ({}), ilc: {}, teid: {:#x} }}",
            self.code,
            code_name(self.code),
            self.ilc,
            self.teid
        )
    }
}

impl fmt::Display for ProgramCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "program check {:#04x} ({}), ilc {}",
            self.code,
            code_name(self.code),
            self.ilc
        )?;
        if stores_teid(self.code) {
            write!(f, ", teid {:#018x}", self.teid)?;
        }
        Ok(())
    }
}

/// ILC halfword at 0x8c → instruction length in bytes (bits 13-14 hold the
/// length in halfwords).
pub const fn ilc_bytes(ilc_halfword: u16) -> u8 {
    (((ilc_halfword >> 1) & 3) * 2) as u8
}

/// Translation-exception identification, as z/Architecture defines it for
/// DAT exceptions: bits 0-51 the failing page, bits 52-53 fetch/store,
/// bits 62-63 the address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Teid(pub u64);

/// Access type reported in TEID bits 52-53 (ESOP: for protection, also
/// whether the fields are valid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeidAccess {
    Unknown,
    Fetch,
    Store,
    Reserved,
}

impl Teid {
    /// The page address of the access that failed.
    pub const fn address(&self) -> u64 {
        self.0 & !0xfff
    }

    pub const fn access(&self) -> TeidAccess {
        match (self.0 >> 10) & 3 {
            0 => TeidAccess::Unknown,
            1 => TeidAccess::Store,
            2 => TeidAccess::Fetch,
            _ => TeidAccess::Reserved,
        }
    }

    /// Address-space indication: 0 primary, 1 AR, 2 secondary, 3 home.
    pub const fn space(&self) -> u64 {
        self.0 & 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_hex_with_the_code_name() {
        let pc = ProgramCheck {
            code: 0x11,
            ilc: 4,
            teid: 0x1000_2400,
        };
        assert_eq!(
            alloc::format!("{pc:?}"),
            "ProgramCheck { code: 0x11 (page-translation), ilc: 4, teid: 0x10002400 }"
        );
    }

    #[test]
    fn ilc_decodes_lengths() {
        assert_eq!(ilc_bytes(0x0002), 2);
        assert_eq!(ilc_bytes(0x0004), 4);
        assert_eq!(ilc_bytes(0x0006), 6);
    }

    #[test]
    fn teid_examples_from_qemu() {
        // Values observed under QEMU TCG (shared/PLATFORM.md).
        let t = Teid(0x1000_2400);
        assert_eq!(t.address(), 0x1000_2000);
        assert_eq!(t.access(), TeidAccess::Store);
        assert_eq!(t.space(), 0);
        let t = Teid(0x1010_0800);
        assert_eq!(t.access(), TeidAccess::Fetch);
        let t = Teid(0x1000_4404);
        assert_eq!(t.access(), TeidAccess::Store);
        assert_eq!(t.address(), 0x1000_4000);
    }

    #[test]
    fn teid_only_for_dat_codes() {
        assert!(stores_teid(code::PAGE_TRANSLATION));
        assert!(stores_teid(code::PROTECTION | code::PER_EVENT));
        assert!(!stores_teid(code::OPERATION));
        assert!(!stores_teid(code::ADDRESSING));
    }
}
