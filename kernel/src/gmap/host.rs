//! The host side of a gmap: a process-like address space (PTE tables with
//! PGSTEs, as Linux's has_pgste mm) and the frames it populated on demand,
//! like a VMM's memory. Its unmap, protect and remap go through the
//! address-space API, so attached gmaps hear of every change.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::sync::Mutex;

use crate::dat::entry::Prot;

use crate::dat::space::{AddressSpace, SpaceError};
use crate::mm::addr::{PhysAddr, PAGE_SIZE};
use crate::mm::{self, AllocFlags, Pages};

/// Errors of `HostMm` operations that free frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// The address space refused; nothing changed.
    Space(SpaceError),
    /// The range was unmapped (`unmapped` pages), but the allocator refused
    /// `frames` of its frames (it printed a `BUG: Bad page state` line for
    /// each); the host keeps them and tries again when it is dropped.
    FreeRefused { frames: u64, unmapped: u64 },
}

impl From<SpaceError> for HostError {
    fn from(e: SpaceError) -> Self {
        HostError::Space(e)
    }
}

pub struct HostMm {
    space: AddressSpace,
    /// Frames populated by faults, by host address.
    frames: BTreeMap<u64, Pages>,
    /// Frames unmapped whose free the allocator refused: kept, freed again
    /// when the host is dropped.
    refused: Vec<Pages>,
    /// Pages the host itself made read-only (`protect`): what Linux's VMA
    /// says. Any other read-only PTE was protected for a shadow gmap
    /// (`AddressSpace::force_prot_vsie`), and a write fault lifts that.
    readonly: BTreeSet<u64>,
}

impl HostMm {
    /// A host space covering `[0, limit)`: `limit` a non-zero multiple of
    /// the page size (`OutOfRange` for 0, `Misaligned` otherwise).
    pub fn new(limit: u64) -> Result<Arc<Mutex<HostMm>>, SpaceError> {
        if limit == 0 {
            return Err(SpaceError::OutOfRange);
        }
        if limit & (PAGE_SIZE - 1) != 0 {
            return Err(SpaceError::Misaligned);
        }
        let space = AddressSpace::new(limit as u128, limit as u128, true)?;
        Ok(Arc::new(Mutex::new(HostMm {
            space,
            frames: BTreeMap::new(),
            refused: Vec::new(),
            readonly: BTreeSet::new(),
        })))
    }

    /// The space: crate-internal, like `space_mut` (`AddressSpace::remap`
    /// and `map_existing` take `&self`: through a shared view a caller
    /// could point the host's pages, which its gmaps' guests see, at any
    /// frame).
    pub(crate) fn space(&self) -> &AddressSpace {
        &self.space
    }

    /// The space, to change: crate-internal (the gmap code and tests),
    /// since a caller outside could map frames the host does not own or
    /// swap the space out from under its gmaps.
    pub(crate) fn space_mut(&mut self) -> &mut AddressSpace {
        &mut self.space
    }

    /// The page address `vmaddr` must be: page aligned and below the limit.
    fn check_page(&self, vmaddr: u64) -> Result<u64, SpaceError> {
        if vmaddr & (PAGE_SIZE - 1) != 0 {
            return Err(SpaceError::Misaligned);
        }
        if vmaddr as u128 >= self.space.max_limit() {
            return Err(SpaceError::OutOfRange);
        }
        Ok(vmaddr)
    }

    /// Make sure the page at `vmaddr` (page aligned) is mapped: a new
    /// zeroed frame if not. For a `write`, a page that is read-only only
    /// because a shadow gmap protected it is made writable again (the
    /// change notifies the shadows first, as Linux's write fault on a
    /// `ptep_force_prot` page does); a page the host made read-only stays
    /// so (`Protected`). Returns the frame.
    pub fn populate(&mut self, vmaddr: u64, write: bool) -> Result<PhysAddr, SpaceError> {
        let va = self.check_page(vmaddr)?;
        if let Some((pa, _)) = self.space.lookup(va) {
            if write {
                self.make_writable(va)?;
            }
            return Ok(pa);
        }
        let p = mm::alloc_pages(0, AllocFlags::ZERO)?;
        let pa = p.phys();
        if let Err(e) = self.space.map(va, pa, Prot::ReadWrite) {
            self.free_frame(p);
            return Err(e);
        }
        if let Some(old) = self.frames.insert(va, p) {
            // The space had no page here, yet the host kept a frame for it
            // (someone unmapped it through `space_mut`): nothing maps the
            // old frame, so it goes back, loudly.
            super::report_bug(format_args!(
                "host page {va:#x} had a frame the space did not map"
            ));
            self.free_frame(old);
        }
        Ok(pa)
    }

    /// A write fault on the present page at `vmaddr`: lift a shadow's
    /// protection (the change notifies the shadows first). `Ok(true)` if it
    /// did, `Ok(false)` if the page was writable already (nothing to fix),
    /// `Protected` if the host made the page or its segment read-only.
    pub fn make_writable(&mut self, vmaddr: u64) -> Result<bool, SpaceError> {
        let va = self.check_page(vmaddr)?;
        let (_, prot) = self.space.lookup(va).ok_or(SpaceError::NotMapped)?;
        if self.space.segment_entry(va).is_protected() || self.readonly.contains(&va) {
            return Err(SpaceError::Protected);
        }
        if prot == Prot::ReadWrite {
            return Ok(false);
        }
        self.space.protect(va, Prot::ReadWrite)?;
        Ok(true)
    }

    /// Give back a frame nothing maps; if the allocator refuses (it prints
    /// a `BUG: Bad page state` line), keep it for a retry at drop. Returns
    /// whether it was freed.
    fn free_frame(&mut self, p: Pages) -> bool {
        match mm::free_pages(p) {
            Ok(()) => true,
            Err((p, _)) => {
                self.refused.push(p);
                false
            }
        }
    }

    /// Undo a `populate` of the page at `vmaddr`: unmap it (the page table
    /// goes too if that was its last page) and free its frame. A page this
    /// host did not populate is refused (`NotMapped`).
    pub fn unpopulate(&mut self, vmaddr: u64) -> Result<(), HostError> {
        let va = self.check_page(vmaddr)?;
        if !self.frames.contains_key(&va) {
            return Err(HostError::Space(SpaceError::NotMapped));
        }
        self.unmap_range(va, PAGE_SIZE).map(|_| ())
    }

    /// Clear the PGSTE notify bit of the page at `vmaddr` (undoing a
    /// `pgste_set_notify`). Returns whether it was set.
    pub fn pgste_clear_notify(&mut self, vmaddr: u64) -> bool {
        self.space.pgste_clear_notify(vmaddr)
    }

    /// Populate `[vmaddr, vmaddr + len)`. Refused with nothing changed:
    /// an unaligned address or length, or a zero length (`Misaligned`), a
    /// range that overflows or passes the limit (`OutOfRange`). If memory
    /// runs out, the pages populated by this call are given back.
    pub fn populate_range(&mut self, vmaddr: u64, len: u64) -> Result<(), SpaceError> {
        if len == 0 || vmaddr & (PAGE_SIZE - 1) != 0 || len & (PAGE_SIZE - 1) != 0 {
            return Err(SpaceError::Misaligned);
        }
        let end = vmaddr.checked_add(len).ok_or(SpaceError::OutOfRange)?;
        if end as u128 > self.space.max_limit() {
            return Err(SpaceError::OutOfRange);
        }
        // A bit per page: populated by this call.
        let npages = (len / PAGE_SIZE) as usize;
        let mut mine: Vec<u64> = Vec::new();
        mine.try_reserve_exact(npages.div_ceil(64))
            .map_err(|_| SpaceError::NoMemory)?;
        mine.resize(npages.div_ceil(64), 0);
        for i in 0..npages {
            let a = vmaddr + i as u64 * PAGE_SIZE;
            if self.space.lookup(a).is_some() {
                continue;
            }
            if let Err(e) = self.populate(a, true) {
                for j in (0..i).filter(|j| mine[j / 64] & (1 << (j % 64)) != 0) {
                    let va = vmaddr + j as u64 * PAGE_SIZE;
                    if let Err(ue) = self.unpopulate(va) {
                        super::report_bug(format_args!(
                            "populate_range undo: host page {va:#x} not given back: {ue:?}"
                        ));
                    }
                }
                return Err(e);
            }
            mine[i / 64] |= 1 << (i % 64);
        }
        Ok(())
    }

    /// The frame populated at `vmaddr` (read-only: the host owns it while
    /// it is mapped).
    pub fn frame(&self, vmaddr: u64) -> Option<&Pages> {
        self.frames.get(&(vmaddr & !(PAGE_SIZE - 1)))
    }

    /// The bytes of the frame populated at `vmaddr`, to fill it. Handing
    /// them out is a store to the page, so the page is made writable first,
    /// as for a guest-1 store (`make_writable`): a shadow's protection is
    /// lifted, which tells the shadows built from the page before anything
    /// can change it. A page the host itself made read-only (or its
    /// segment) is refused with `Protected`, one it did not populate with
    /// `NotMapped`; nothing changed then.
    pub fn frame_bytes(&mut self, vmaddr: u64) -> Result<&mut [u8], SpaceError> {
        let va = vmaddr & !(PAGE_SIZE - 1);
        if !self.frames.contains_key(&va) {
            return Err(SpaceError::NotMapped);
        }
        self.make_writable(va)?;
        self.frames
            .get_mut(&va)
            .map(Pages::as_mut_slice)
            .ok_or(SpaceError::NotMapped)
    }

    /// Unmap `[vmaddr, vmaddr + len)` and free the frames populated there;
    /// returns the pages unmapped. Refused like the space's unmap_range
    /// (`Space`, nothing changed). If the allocator refuses frames, the
    /// rest is still done and `FreeRefused` says how many (the host keeps
    /// them and tries again when dropped).
    pub fn unmap_range(&mut self, vmaddr: u64, len: u64) -> Result<u64, HostError> {
        let st = self.space.unmap_range(vmaddr, len)?;
        // A page mapped again later starts writable: forget the host's
        // read-only choices for the range.
        let ro: Vec<u64> = self
            .readonly
            .range(vmaddr..vmaddr.saturating_add(len))
            .copied()
            .collect();
        for va in ro {
            self.readonly.remove(&va);
        }
        // The space checked that vmaddr + len does not overflow.
        let keys: Vec<u64> = self
            .frames
            .range(vmaddr..vmaddr + len)
            .map(|(k, _)| *k)
            .collect();
        let mut refused = 0;
        for k in keys {
            if let Some(p) = self.frames.remove(&k) {
                refused += u64::from(!self.free_frame(p));
            }
        }
        match refused {
            0 => Ok(st.pages),
            frames => Err(HostError::FreeRefused {
                frames,
                unmapped: st.pages,
            }),
        }
    }

    /// Change the protection of the populated page at `vmaddr`; the host
    /// remembers a read-only page as its own choice (a write fault does
    /// not lift it).
    pub fn protect(&mut self, vmaddr: u64, prot: Prot) -> Result<(), SpaceError> {
        self.space.protect(vmaddr, prot)?;
        let va = vmaddr & !(PAGE_SIZE - 1);
        if prot == Prot::ReadOnly {
            self.readonly.insert(va);
        } else {
            self.readonly.remove(&va);
        }
        Ok(())
    }

    /// Replace the frame at `vmaddr` with a new zeroed one, in place (the
    /// page table stays, so linked gmaps stay linked and see the new frame
    /// on their next access). The new frame is allocated first: if that
    /// fails, nothing changed. Returns the new frame.
    pub fn remap(&mut self, vmaddr: u64) -> Result<PhysAddr, SpaceError> {
        let va = self.check_page(vmaddr)?;
        if !self.frames.contains_key(&va) {
            return Err(SpaceError::NotMapped);
        }
        let p = mm::alloc_pages(0, AllocFlags::ZERO)?;
        let pa = p.phys();
        if let Err(e) = self.space.remap(va, pa) {
            // A refused free is kept for the retry at drop, as elsewhere.
            self.free_frame(p);
            return Err(e);
        }
        if let Some(old) = self.frames.insert(va, p) {
            // Nothing maps the old frame any more.
            self.free_frame(old);
        }
        Ok(pa)
    }

    /// Pages populated.
    pub fn nr_frames(&self) -> usize {
        self.frames.len()
    }

    /// Frames unmapped whose free the allocator refused (kept until drop).
    pub fn nr_refused_frames(&self) -> usize {
        self.refused.len()
    }
}

impl Drop for HostMm {
    fn drop(&mut self) {
        // The space is dropped after this (it unlinks every gmap first);
        // the frames go back once nothing maps them. No caller to tell of a
        // failure: each is a BUG line (counted, see `report_bug`).
        let all = core::mem::take(&mut self.frames);
        let stuck = core::mem::take(&mut self.refused);
        let id = self.space.id();
        let len = self.space.max_limit().min(u64::MAX as u128) as u64 & !(PAGE_SIZE - 1);
        if let Err(e) = self.space.unmap_range(0, len) {
            super::report_bug(format_args!(
                "host space {id} dropped: unmap of [0, {len:#x}) refused: {e:?}"
            ));
        }
        let mut refused = 0;
        for p in all.into_values().chain(stuck) {
            if let Err((p, _)) = mm::free_pages(p) {
                // Leaked on purpose: the allocator will not take it back.
                let _leaked = p.into_raw();
                refused += 1;
            }
        }
        if refused != 0 {
            super::report_bug(format_args!(
                "host space {id} dropped: {refused} frames could not be freed; they stay allocated"
            ));
        }
    }
}
