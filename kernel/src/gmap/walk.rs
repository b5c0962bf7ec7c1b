//! A gmap's own walk: finding (and allocating) the entry for a guest
//! address in its gmap tables, the guest-to-host translation, and linking
//! a guest segment to the host's PTE table (`__gmap_link`) or unlinking it
//! (arch/s390/mm/gmap.c: `gmap_table_walk`, `__gmap_translate`,
//! `__gmap_link`, `__gmap_unlink_by_vmaddr`).

use core::sync::atomic::Ordering;

use super::table::gmap_alloc_table;
use super::{seg, GmapError, GmapInner, GmapTableRec, HostMm};
use crate::dat::entry::{Level, RegionEntry, SegmentEntry, SEGMENT_SIZE};
use crate::dat::table::entry;
use crate::dat::tlb;
use crate::mm::addr::PhysAddr;

impl GmapInner {
    pub(super) fn check_segments(&self, gaddr: u64, len: u64) -> Result<(), GmapError> {
        if len == 0 || !gaddr.is_multiple_of(SEGMENT_SIZE) || !len.is_multiple_of(SEGMENT_SIZE) {
            return Err(GmapError::Misaligned);
        }
        let last = gaddr.checked_add(len - 1).ok_or(GmapError::OutOfRange)?;
        if last > self.limit {
            return Err(GmapError::OutOfRange);
        }
        Ok(())
    }

    /// The real address of the gmap segment entry for `gaddr`, allocating
    /// missing gmap region/segment tables if `alloc`.
    pub(super) fn segment_entry(
        &mut self,
        gaddr: u64,
        alloc: bool,
    ) -> Result<Option<PhysAddr>, GmapError> {
        self.entry_at(gaddr, Level::Segment, alloc)
    }

    /// The real address of the entry for `gaddr` in the gmap table of
    /// `level` (`None` if `level` is above the top, or a table above it is
    /// missing and not `alloc`), allocating missing gmap tables if `alloc`.
    pub(super) fn entry_at(
        &mut self,
        gaddr: u64,
        stop: Level,
        alloc: bool,
    ) -> Result<Option<PhysAddr>, GmapError> {
        if gaddr > self.limit {
            return Err(GmapError::OutOfRange);
        }
        let mut level = self.asce.level();
        if stop > level {
            return Ok(None);
        }
        let mut tbl = self.asce.origin();
        while level != stop {
            let Some(lower) = level.lower() else {
                return Ok(None);
            };
            let ea = PhysAddr(tbl.0 + level.index(gaddr) as u64 * 8);
            // SAFETY: an entry of a live gmap table.
            let slot = unsafe { entry(ea) };
            let e = RegionEntry::from_raw(slot.load(Ordering::Acquire));
            tbl = if e.is_invalid() {
                if !alloc {
                    return Ok(None);
                }
                let cover = 1u64 << (lower.shift() + 11);
                let t = gmap_alloc_table(self.id, lower, gaddr & !cover.wrapping_sub(1))
                    .map_err(|_| GmapError::NoMemory)?;
                let pa = t.phys();
                // Cannot fail (a CRST is 16 KiB aligned); `t` goes back if
                // it does.
                let e = RegionEntry::table(level, pa).map_err(|_| GmapError::NoMemory)?;
                // The list owns the table from here; the entry only points
                // at it. Invalid → valid needs no invalidation.
                self.tables.push(GmapTableRec {
                    table: t,
                    level: lower,
                    parent: Some((tbl, level, gaddr)),
                });
                slot.store(e.raw(), Ordering::Release);
                pa
            } else {
                e.next_origin()
            };
            level = lower;
        }
        Ok(Some(PhysAddr(tbl.0 + stop.index(gaddr) as u64 * 8)))
    }

    pub(super) fn translate(&self, gaddr: u64) -> Result<u64, GmapError> {
        if gaddr > self.limit {
            return Err(GmapError::OutOfRange);
        }
        self.guest_to_host
            .get(&seg(gaddr))
            .map(|h| h + (gaddr - seg(gaddr)))
            .ok_or(GmapError::NotMapped)
    }

    /// `__gmap_link` under the host lock (`host`) and the gmap lock: see
    /// `Gmap::gmap_link`. Returns whether it linked the segment (false: it
    /// was linked already, nothing changed).
    pub(super) fn link(
        &mut self,
        host: &HostMm,
        gaddr: u64,
        vmaddr: u64,
    ) -> Result<bool, GmapError> {
        if host.space().id() != self.parent_id {
            return Err(GmapError::HostReplaced);
        }
        if gaddr > self.limit || vmaddr as u128 >= self.host_limit {
            return Err(GmapError::OutOfRange);
        }
        if self
            .host_to_guest
            .get(&seg(vmaddr))
            .is_some_and(|&other| other != seg(gaddr))
        {
            return Err(GmapError::HostAliased);
        }
        match self.guest_to_host.get(&seg(gaddr)) {
            None => return Err(GmapError::NotMapped),
            Some(&h) if h != seg(vmaddr) => return Err(GmapError::HostMismatch),
            Some(_) => {}
        }
        let host_seg = host.space().segment_entry(vmaddr);
        if host_seg.is_invalid() {
            return Err(GmapError::NotMapped);
        }
        let tables_before = self.tables.len();
        let ea = match self.segment_entry(gaddr, true) {
            Ok(Some(ea)) => ea,
            Ok(None) => return Err(GmapError::NotMapped),
            Err(e) => {
                self.free_tables_from(tables_before);
                return Err(e);
            }
        };
        // SAFETY: an entry of a live gmap segment table.
        let slot = unsafe { entry(ea) };
        let cur = SegmentEntry::from_raw(slot.load(Ordering::Acquire));
        let new = SegmentEntry::from_raw(host_seg.hardware_bits());
        if !cur.is_invalid() && cur.page_table() == new.page_table() {
            return Ok(false);
        }
        if !cur.is_invalid() {
            // Linked to another host table: relink (IDTE first).
            self.unlink_gaddr(gaddr);
        }
        // Invalid → valid needs no invalidation.
        slot.store(new.raw(), Ordering::Release);
        self.host_to_guest.insert(seg(vmaddr), seg(gaddr));
        self.links += 1;
        Ok(true)
    }

    /// If the gmap segment entry at `ea` (for `gaddr`) is valid, invalidate
    /// it (IDTE: the TLBs may hold translations through it) and store
    /// `new`. Returns whether it was valid.
    pub(super) fn replace_segment_entry(
        &self,
        ea: PhysAddr,
        gaddr: u64,
        new: SegmentEntry,
    ) -> bool {
        // SAFETY: an entry of a live gmap segment table (callers found it
        // by walking this gmap's tables under its lock).
        let slot = unsafe { entry(ea) };
        if SegmentEntry::from_raw(slot.load(Ordering::Acquire)).is_invalid() {
            return false;
        }
        let table = crate::dat::table::table_of_entry(ea);
        // SAFETY: the live gmap segment table holding the entry.
        unsafe { tlb::idte(&self.context, table, Level::Segment, gaddr) };
        slot.store(new.raw(), Ordering::Release);
        true
    }

    /// Undo a link `link` just made (a failed operation): the entry goes
    /// (IDTE first), and so do its reverse mapping and its count.
    pub(super) fn undo_link(&mut self, gseg: u64, hseg: u64) {
        if let Ok(Some(ea)) = self.segment_entry(gseg, false) {
            self.replace_segment_entry(ea, gseg, SegmentEntry::empty());
        }
        self.host_to_guest.remove(&hseg);
        self.links -= 1;
    }

    /// Invalidate the gmap segment entry for `gaddr` if valid (IDTE) and
    /// forget its host link.
    pub(super) fn unlink_gaddr(&mut self, gaddr: u64) {
        let Ok(Some(ea)) = self.segment_entry(gaddr, false) else {
            return;
        };
        if self.replace_segment_entry(ea, gaddr, SegmentEntry::empty()) {
            self.unlinks += 1;
        }
        self.host_to_guest.retain(|_, g| *g != seg(gaddr));
    }
}
