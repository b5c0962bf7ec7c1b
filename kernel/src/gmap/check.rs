//! The gmap's consistency checker: every table reached is one of its own
//! gmap tables with a descriptor naming it, its level and guest address;
//! every linked segment is mapped, recorded in the reverse map and points
//! at the host's current PTE table.

use core::sync::atomic::Ordering;

use super::{lock_host, table, Gmap, GmapInner, HostMm};
use crate::dat::entry::{Level, RegionEntry, SegmentEntry};
use crate::dat::table::entry;
use crate::mm::addr::PhysAddr;

/// Inconsistencies `Gmap::check` finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GmapCheckError {
    /// A table that is not one of this gmap's gmap tables.
    Table(PhysAddr),
    /// A linked guest segment without a guest-to-host mapping.
    GuestToHost(u64),
    /// A linked guest segment the host-to-guest map does not name.
    HostToGuest(u64),
    /// A linked guest segment not pointing at the host's current PTE table.
    HostTable(u64),
    /// The host-to-guest map names more segments than are linked.
    Count { linked: u64, recorded: u64 },
    /// The host holds another space than the one the gmap was made over.
    HostReplaced,
}

impl Gmap {
    /// Check the gmap's maps against its tables: every table reached is one
    /// of its gmap tables, its descriptor naming this gmap, the level and
    /// the guest address it is reached at; every linked segment (guest address from the
    /// table descriptor) is mapped guest-to-host, recorded host-to-guest,
    /// and points at the host's PTE table for that segment. Returns the
    /// number of linked segments.
    pub fn check(&self) -> Result<u64, GmapCheckError> {
        // Host first, then gmap: the lock order of the whole subsystem.
        let parent = self.parent();
        let host = lock_host(&parent);
        let g = self.inner.lock();
        if host.space().id() != g.parent_id {
            return Err(GmapCheckError::HostReplaced);
        }
        let mut linked = 0;
        g.check_level(g.asce.origin(), g.asce.level(), 0, &host, &mut linked)?;
        let recorded = g.host_to_guest.len() as u64;
        if recorded != linked {
            return Err(GmapCheckError::Count { linked, recorded });
        }
        Ok(linked)
    }
}

impl GmapInner {
    fn check_level(
        &self,
        tbl: PhysAddr,
        level: Level,
        base: u64,
        host: &HostMm,
        linked: &mut u64,
    ) -> Result<(), GmapCheckError> {
        let t = table::gmap_table_at(tbl).map_err(|_| GmapCheckError::Table(tbl))?;
        if t.owner() != self.id
            || table::table_level(t) != Some(level)
            || t.gaddr() != base
            || !self
                .tables
                .iter()
                .any(|t| t.pa() == tbl && t.level == level)
        {
            return Err(GmapCheckError::Table(tbl));
        }
        for i in 0..crate::dat::entry::CRST_ENTRIES as u64 {
            let ea = PhysAddr(tbl.0 + i * 8);
            // SAFETY: an entry of a live gmap table.
            let raw = unsafe { entry(ea) }.load(Ordering::Acquire);
            match level.lower() {
                Some(lower) => {
                    let e = RegionEntry::from_raw(raw);
                    if !e.is_invalid() {
                        let child = base + (i << level.shift());
                        self.check_level(e.next_origin(), lower, child, host, linked)?;
                    }
                }
                None => {
                    let s = SegmentEntry::from_raw(raw);
                    if s.is_invalid() {
                        continue;
                    }
                    let gaddr = table::gmap_segment_gaddr(crate::dat::table::phys_to_virt(ea))
                        .map_err(|_| GmapCheckError::Table(tbl))?;
                    let vm = *self
                        .guest_to_host
                        .get(&gaddr)
                        .ok_or(GmapCheckError::GuestToHost(gaddr))?;
                    if self.host_to_guest.get(&vm) != Some(&gaddr) {
                        return Err(GmapCheckError::HostToGuest(gaddr));
                    }
                    let hs = host.space().segment_entry(vm);
                    if hs.is_invalid() || hs.page_table() != s.page_table() {
                        return Err(GmapCheckError::HostTable(gaddr));
                    }
                    *linked += 1;
                }
            }
        }
        Ok(())
    }
}
