//! An address space shared by CPUs, locked as Linux does it: operations
//! that only change PTEs of existing tables (map into an existing table,
//! protect, look up) hold the space lock shared and the page table's own
//! lock (`ptlock_ptr`), so CPUs working in different tables, or on
//! different PTEs of one, run in parallel; operations that allocate or free
//! tables (a map that needs a table, unmap) hold the space lock exclusive,
//! so no table goes away under a shared holder.

use crate::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::context::AsceRef;
use super::entry::{Asce, Prot};
use super::space::{AddressSpace, SpaceCheck, SpaceCheckError, SpaceError, UnmapStats};
use crate::mm::addr::PhysAddr;

/// The lock serves readers and writers in arrival order and its waiters
/// sleep (`sync::RwLock`): a steady stream of readers cannot starve an
/// unmap, and a vCPU waiting gives its host core back.
pub struct SharedSpace {
    inner: RwLock<AddressSpace>,
}

impl SharedSpace {
    /// Share `space`. Its top is fixed from now on (`AddressSpace::fix_top`):
    /// other CPUs may load its ASCE, so it never changes.
    pub fn new(mut space: AddressSpace) -> Self {
        space.fix_top();
        SharedSpace {
            inner: RwLock::new(space),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, AddressSpace> {
        self.inner.read()
    }

    fn write(&self) -> RwLockWriteGuard<'_, AddressSpace> {
        self.inner.write()
    }

    /// The ASCE (fixed: a shared space never grows its top).
    pub fn asce(&self) -> Asce {
        self.read().asce()
    }

    /// The ASCE with the space's context, for a CPU to load it.
    pub fn asce_ref(&self) -> AsceRef {
        self.read().asce_ref()
    }

    /// `AddressSpace::flush_tlb_mm`.
    pub fn flush_tlb_mm(&self) {
        self.read().flush_tlb_mm()
    }

    /// Map a page: under the shared lock when its page table exists, else
    /// exclusively (allocating tables).
    pub fn map(&self, va: u64, pa: PhysAddr, prot: Prot) -> Result<(), SpaceError> {
        match self.read().map_existing(va, pa, prot) {
            Err(SpaceError::NotMapped) => {}
            r => return r,
        }
        self.write().map(va, pa, prot)
    }

    pub fn protect(&self, va: u64, prot: Prot) -> Result<(), SpaceError> {
        self.read().protect(va, prot)
    }

    /// Point a mapped page at another frame (shared lock + ptlock).
    pub fn remap(&self, va: u64, pa: PhysAddr) -> Result<PhysAddr, SpaceError> {
        self.read().remap(va, pa)
    }

    pub fn lookup(&self, va: u64) -> Option<(PhysAddr, Prot)> {
        self.read().lookup(va)
    }

    /// Unmapping may free tables: exclusive.
    pub fn unmap(&self, va: u64) -> Result<PhysAddr, SpaceError> {
        self.write().unmap(va)
    }

    pub fn unmap_range(&self, va: u64, len: u64) -> Result<UnmapStats, SpaceError> {
        self.write().unmap_range(va, len)
    }

    pub fn check(&self) -> Result<SpaceCheck, SpaceCheckError> {
        self.read().check()
    }

    pub fn into_inner(self) -> AddressSpace {
        self.inner.into_inner()
    }
}
