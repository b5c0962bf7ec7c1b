//! Table memory: CRST tables (region and segment tables, 2048 entries,
//! 16 KiB, order 2) as owned `CrstTable` handles, made through the ptdesc
//! ctors so the page-table count stays right, and raw access to table
//! entries by real address (`unsafe`: for tables linked into a space,
//! which their entries own). PTE tables are `frag`'s. Models the table
//! halves of arch/s390/mm/pgalloc.c.

use core::sync::atomic::{AtomicU64, Ordering};

use super::entry::{Level, Pte, RegionEntry, SegmentEntry, CRST_ENTRIES, PTRS_PER_PTE};
use super::walk::TableReader;
use crate::mm::addr::{PhysAddr, VirtAddr, PAGE_SIZE};
use crate::mm::frame::{Frame, FrameError};
use crate::mm::ptdesc::{self, PtDesc};
use crate::mm::{self, AllocError};

/// Order of a CRST table allocation.
pub const CRST_ORDER: u32 = 2;
/// Bytes of one PTE table.
pub const PTE_TABLE_SIZE: u64 = (PTRS_PER_PTE * 8) as u64;

/// The kernel address of real address `pa` (identity in the kernel, the
/// simulated RAM on the host).
#[inline]
pub fn phys_to_virt(pa: PhysAddr) -> VirtAddr {
    let base = mm::memmap().frame_ptr(pa.pfn()) as u64;
    VirtAddr(base + pa.page_offset())
}

#[inline]
fn entry_ptr(pa: PhysAddr) -> *mut u64 {
    mm::memmap()
        .frame_ptr(pa.pfn())
        .wrapping_add(pa.page_offset() as usize) as *mut u64
}

/// The table entry at real address `pa`.
///
/// # Safety
/// `pa` is an 8-aligned entry of a table that stays allocated while the
/// reference is used.
#[inline]
pub unsafe fn entry<'a>(pa: PhysAddr) -> &'a AtomicU64 {
    // SAFETY: forwarded to the caller; the memmap covers the table's frame.
    unsafe { AtomicU64::from_ptr(entry_ptr(pa)) }
}

/// `n` consecutive table entries from real address `pa` (within one
/// frame): one address conversion for a loop over a table.
///
/// # Safety
/// As for `entry`, for each of the `n` entries.
#[inline]
pub(crate) unsafe fn entries_at<'a>(pa: PhysAddr, n: usize) -> &'a [AtomicU64] {
    debug_assert!(pa.page_offset() as usize + n * 8 <= PAGE_SIZE as usize);
    // SAFETY: forwarded to the caller; the memmap covers the frame, and
    // the entries lie inside it.
    unsafe { core::slice::from_raw_parts(entry_ptr(pa).cast::<AtomicU64>(), n) }
}

/// Reads tables in the memmap's memory, for the software walker.
/// Crate-internal: it reads any frame, which safe code outside must not
/// (a frame lent as `&mut [u8]` may be one).
pub(crate) struct PhysReader;

impl TableReader for PhysReader {
    #[inline]
    fn read_entry(&self, pa: PhysAddr) -> Option<u64> {
        let map = mm::memmap();
        if pa.pfn().0 >= map.nr_pages() || !pa.is_aligned(8) {
            return None;
        }
        let ptr = map
            .frame_ptr(pa.pfn())
            .wrapping_add(pa.page_offset() as usize) as *mut u64;
        // SAFETY: inside the memmap's memory and aligned; a walker may read
        // any table word (racing writers only make the result stale).
        Some(unsafe { AtomicU64::from_ptr(ptr) }.load(Ordering::Acquire))
    }
}

/// The region or segment table (16 KiB aligned) holding the entry at real
/// address `ea`.
pub fn table_of_entry(ea: PhysAddr) -> PhysAddr {
    PhysAddr(ea.0 & !(CRST_ENTRIES as u64 * 8 - 1))
}

/// The descriptor of the table page holding real address `pa`.
pub fn table_ptdesc(pa: PhysAddr) -> Option<&'static PtDesc> {
    ptdesc::virt_to_ptdesc(phys_to_virt(pa.align_down(PAGE_SIZE))).ok()
}

/// An owned region or segment table of a process address space: a
/// `Frame<PtDesc>` of order 2 whose descriptor records its level. Not
/// `Copy`; `crst_free` (or dropping it) poisons it in debug builds, runs
/// the dtor and frees it. Linked into an entry with `into_raw`, taken back
/// with `from_raw` once the entry is gone.
pub struct CrstTable {
    frame: Frame<PtDesc>,
}

impl CrstTable {
    pub fn phys(&self) -> PhysAddr {
        self.frame.phys()
    }

    /// The level the ctor recorded (`None`: corrupt descriptor).
    pub fn level(&self) -> Option<Level> {
        crst_level(&self.frame)
    }

    /// The descriptor (borrowed for as long as the handle lives).
    pub fn ptdesc(&self) -> &PtDesc {
        &self.frame
    }

    /// The table's entries, borrowed from the handle: a view cannot
    /// outlive the table.
    pub fn entries(&self) -> &[AtomicU64] {
        let ptr = mm::memmap().frame_ptr(self.phys().pfn()) as *const AtomicU64;
        // SAFETY: the handle owns the 16 KiB block (CRST_ENTRIES 8-aligned
        // words) for as long as `self` is borrowed.
        unsafe { core::slice::from_raw_parts(ptr, CRST_ENTRIES) }
    }

    /// Give up the handle: the table is being linked into an entry (or is
    /// a space's top table), which owns it from now on.
    pub fn into_raw(self) -> PhysAddr {
        let pa = self.phys();
        core::mem::forget(self);
        pa
    }

    /// Take back the CRST table at `pa`, checking its descriptor (a
    /// process page table of order 2 with a level tag).
    ///
    /// # Safety
    /// As `Frame::from_raw`: no entry the hardware may use points at it any
    /// more, and no other handle for it exists.
    pub unsafe fn from_raw(pa: PhysAddr) -> Result<Self, FrameError> {
        // SAFETY: forwarded to the caller.
        let frame = unsafe { Frame::<PtDesc>::from_raw(pa) }?;
        if frame.order() != CRST_ORDER || crst_level(&frame).is_none() {
            let o = frame.order();
            // Not ours to free: give it up again.
            let _ = frame.into_raw();
            return Err(FrameError::WrongOrder(o));
        }
        Ok(Self { frame })
    }
}

impl Drop for CrstTable {
    fn drop(&mut self) {
        // What a walk through a table freed too early would read.
        if let Some(level) = self.level() {
            poison_crst(self.phys(), level);
        }
        // The frame's own drop runs the dtor and frees (a refusal is
        // reported there, loudly).
    }
}

impl core::fmt::Debug for CrstTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "CrstTable({:#x}, {:?})", self.phys().0, self.level())
    }
}

/// Allocate a CRST table of `level`, every entry empty.
pub fn crst_alloc(level: Level) -> Result<CrstTable, AllocError> {
    let p = ptdesc::pagetable_alloc(CRST_ORDER)?;
    let ctor = match level {
        Level::Segment => ptdesc::pagetable_pmd_ctor(p),
        Level::Region3 => ptdesc::pagetable_crst_ctor(p, ptdesc::CRST_REGION3),
        Level::Region2 => ptdesc::pagetable_crst_ctor(p, ptdesc::CRST_REGION2),
        Level::Region1 => ptdesc::pagetable_crst_ctor(p, ptdesc::CRST_REGION1),
    };
    // A fresh block always passes the ctor's checks; the pages go back if not.
    let t = CrstTable {
        frame: ctor.map_err(|_| AllocError::NoMemory)?,
    };
    let empty = match level {
        Level::Segment => SegmentEntry::empty().raw(),
        l => RegionEntry::empty(l).raw(),
    };
    for e in t.entries() {
        e.store(empty, Ordering::Relaxed);
    }
    Ok(t)
}

/// Free a CRST table: poison (debug builds), dtor, allocator. Taking the
/// handle is the proof no entry points at it.
pub fn crst_free(t: CrstTable) {
    drop(t);
}

/// What a load through a freed page table reads in debug builds: freed
/// tables are poisoned so that a walk of one (a table freed before the
/// entry pointing at it was invalidated, seen from another CPU, say) maps
/// a frame of this value, read-only, instead of whatever the table held.
pub const POISON: u64 = 0x6b6b_6b6b_6b6b_6b6b;

/// Debug builds on the machine: the poison frame, and a PTE table whose
/// every entry maps it read-only (what poisoned segment entries point at).
#[cfg(all(target_os = "none", debug_assertions))]
mod poison {
    use core::sync::atomic::{AtomicU64, Ordering};

    use super::super::entry::{Prot, Pte, SegmentEntry, PTRS_PER_PTE};
    use super::POISON;
    use crate::mm::addr::PhysAddr;

    #[repr(C, align(4096))]
    struct Frame([u64; 512]);
    static FRAME: Frame = Frame([POISON; 512]);

    #[repr(C, align(2048))]
    struct Table([AtomicU64; PTRS_PER_PTE]);
    static TABLE: Table = Table([const { AtomicU64::new(0) }; PTRS_PER_PTE]);

    /// A PTE mapping the poison frame read-only. The kernel image is
    /// identity-mapped, so a static's address is its real address.
    pub fn pte() -> u64 {
        let pa = PhysAddr(core::ptr::addr_of!(FRAME) as u64);
        Pte::new(pa, Prot::ReadOnly).map_or(0, |p| p.raw())
    }

    /// A read-only segment entry pointing at the poison PTE table.
    pub fn segment_entry() -> u64 {
        let pte = pte();
        for e in &TABLE.0 {
            e.store(pte, Ordering::Relaxed);
        }
        let pa = PhysAddr(core::ptr::addr_of!(TABLE) as u64);
        SegmentEntry::table(pa, true).map_or(0, |e| e.raw())
    }
}

/// Debug builds: overwrite the PTE table at `pa`, about to be freed, with
/// entries mapping the poison frame read-only.
///
/// # Safety
/// The caller owns the PTE table at `pa`, and no entry reaches it.
pub(super) unsafe fn poison_pte_table(pa: PhysAddr) {
    #[cfg(all(target_os = "none", debug_assertions))]
    {
        let v = poison::pte();
        for i in 0..PTRS_PER_PTE as u64 {
            // SAFETY: the caller's table, unreachable and about to be freed.
            unsafe { entry(PhysAddr(pa.0 + i * 8)) }.store(v, Ordering::Relaxed);
        }
    }
    #[cfg(not(all(target_os = "none", debug_assertions)))]
    let _ = pa;
}

/// Debug builds: overwrite the CRST table at `pa`, about to be freed:
/// segment entries point at the poison PTE table, region entries are
/// invalid.
fn poison_crst(pa: PhysAddr, level: Level) {
    #[cfg(all(target_os = "none", debug_assertions))]
    {
        let v = match level {
            Level::Segment => poison::segment_entry(),
            l => RegionEntry::empty(l).raw(),
        };
        for i in 0..CRST_ENTRIES as u64 {
            // SAFETY: the caller's table, unreachable and about to be freed.
            unsafe { entry(PhysAddr(pa.0 + i * 8)) }.store(v, Ordering::Relaxed);
        }
    }
    #[cfg(not(all(target_os = "none", debug_assertions)))]
    let _ = (pa, level);
}

/// The level a CRST table was built for, from its descriptor (the ctor
/// records it in `pt_index`).
fn crst_level(pt: &PtDesc) -> Option<Level> {
    match pt.pt_index() {
        ptdesc::CRST_SEGMENT => Some(Level::Segment),
        ptdesc::CRST_REGION3 => Some(Level::Region3),
        ptdesc::CRST_REGION2 => Some(Level::Region2),
        ptdesc::CRST_REGION1 => Some(Level::Region1),
        _ => None,
    }
}

/// Whether every entry of the table is empty (invalid and not present).
///
/// # Safety
/// `pa` is a live CRST table of `level`.
pub unsafe fn crst_is_empty(pa: PhysAddr, level: Level) -> bool {
    let empty = match level {
        Level::Segment => SegmentEntry::empty().raw(),
        l => RegionEntry::empty(l).raw(),
    };
    (0..CRST_ENTRIES as u64).all(|i| {
        // SAFETY: the caller's live table.
        unsafe { entry(PhysAddr(pa.0 + i * 8)) }.load(Ordering::Relaxed) == empty
    })
}

/// Whether no PTE of the table at `pa` is present.
///
/// # Safety
/// `pa` is a live PTE table.
pub unsafe fn pte_table_is_empty(pa: PhysAddr) -> bool {
    (0..PTRS_PER_PTE as u64).all(|i| {
        // SAFETY: the caller's live table.
        let e = Pte::from_raw(unsafe { entry(PhysAddr(pa.0 + i * 8)) }.load(Ordering::Relaxed));
        !e.is_present()
    })
}
