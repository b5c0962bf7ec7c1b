//! Growing the top of a space (`crst_table_upgrade`) and undoing a growth
//! a failed operation made.

use core::sync::atomic::Ordering;

use super::super::dat_bug;
use super::super::entry::{Asce, RegionEntry, CRST_ENTRIES};
use super::super::table::{self, entry, CrstTable};
use super::super::tlb;
use super::{AddressSpace, SpaceError};
use crate::mm::addr::PhysAddr;

impl AddressSpace {
    /// `crst_table_upgrade`: add levels on top until `va` is covered. The old
    /// top becomes entry 0 of the new one, so existing mappings stay, and
    /// the old ASCE stays usable on a CPU that still has it loaded (its
    /// tables are all still there: the old top is never freed here, even
    /// when empty; Linux's `crst_table_upgrade` keeps it the same way and
    /// then switches every CPU attached to the mm).
    pub(super) fn upgrade_for(&mut self, va: u64) -> Result<(), SpaceError> {
        if va as u128 >= self.max_limit {
            return Err(SpaceError::OutOfRange);
        }
        while va as u128 >= self.limit() {
            let old = self.asce;
            let Some(up) = old.level().upper() else {
                return Err(SpaceError::OutOfRange);
            };
            let entry0 = RegionEntry::table(up, old.origin())?;
            let top = table::crst_alloc(up)?;
            let asce = Asce::new(top.phys(), up)?;
            // The new table is ours; entry 0 covers the old range.
            top.entries()[0].store(entry0.raw(), Ordering::Release);
            // The ASCE owns the new top from here.
            let _ = top.into_raw();
            self.asce = asce;
        }
        Ok(())
    }

    /// Undo upgrades of a failed operation: drop added top tables until the
    /// ASCE is `old` again. Each added top may only have entry 0, pointing
    /// down (the failed operation's tables below were undone already); a
    /// top with more is a bug, reported, and kept.
    pub(super) fn downgrade_to(&mut self, old: Asce) {
        while self.asce != old && self.asce.level() > old.level() {
            let top = self.asce.origin();
            let Some(lower) = self.asce.level().lower() else {
                return;
            };
            // SAFETY: entry 0 of the live top table.
            let e0 = RegionEntry::from_raw(unsafe { entry(top) }.load(Ordering::Acquire));
            let level = self.asce.level();
            let rest_empty = (1..CRST_ENTRIES as u64).all(|i| {
                // SAFETY: entries of the live top table.
                unsafe { entry(PhysAddr(top.0 + i * 8)) }.load(Ordering::Acquire)
                    == RegionEntry::empty(level).raw()
            });
            let Ok(a) = Asce::new(e0.next_origin(), lower) else {
                dat_bug(format_args!("downgrade: entry 0 of {top:?} is no table"));
                return;
            };
            if e0.is_invalid() || !rest_empty {
                dat_bug(format_args!(
                    "downgrade: top {top:?} holds more than the old top"
                ));
                return;
            }
            let dropped = self.asce;
            self.asce = a;
            // Nothing below changed, but the dropped top must not be
            // reachable through any TLB once it is free.
            tlb::flush_tlb_mm(&self.context, dropped);
            // SAFETY: the dropped top is unreachable: no ASCE names it and
            // every TLB was purged of it.
            match unsafe { CrstTable::from_raw(top) } {
                Ok(t) => table::crst_free(t),
                Err(e) => dat_bug(format_args!("downgrade: top {top:?}: {e:?}")),
            }
        }
    }
}
