//! The memmap: one `Page` per 4 KiB frame, indexed by pfn, and the address
//! conversions Linux calls pfn_to_page, page_to_pfn, virt_to_page and
//! page_address.

use super::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SHIFT, PAGE_SIZE};
use super::page::Page;

/// The memmap of one contiguous range of frames starting at pfn 0.
pub struct MemMap<'a> {
    pages: &'a [Page],
    /// Kernel virtual address of frame 0: address 0 for the identity-mapped
    /// kernel, the simulated RAM buffer in host tests. A pointer, so frame
    /// pointers derived from it keep its provenance (Miri checks that).
    virt_base: *mut u8,
}

// SAFETY: `virt_base` is only a base for address arithmetic; who may touch
// a frame is decided by the allocator that owns it, not by the memmap.
unsafe impl Sync for MemMap<'_> {}
// SAFETY: as above.
unsafe impl Send for MemMap<'_> {}

impl<'a> MemMap<'a> {
    /// # Safety
    /// `virt_base .. virt_base + pages.len() * 4096` must be memory this
    /// memmap describes, usable as frames for as long as `'a`: the
    /// allocator hands out pointers into it.
    pub unsafe fn new(pages: &'a [Page], virt_base: *mut u8) -> Self {
        Self { pages, virt_base }
    }

    pub fn nr_pages(&self) -> u64 {
        self.pages.len() as u64
    }

    pub fn end_pfn(&self) -> Pfn {
        Pfn(self.pages.len() as u64)
    }

    pub fn pages(&self) -> &'a [Page] {
        self.pages
    }

    pub fn pfn_to_page(&self, pfn: Pfn) -> Option<&'a Page> {
        self.pages.get(usize::try_from(pfn.0).ok()?)
    }

    /// The pfn of a page of this memmap; `None` for a page of another.
    pub fn page_to_pfn(&self, page: &Page) -> Option<Pfn> {
        self.entry_to_pfn(page)
    }

    /// The pfn of the entry at `entry`, by address alone (nothing is read):
    /// `None` unless it is exactly an entry of this memmap.
    pub fn entry_to_pfn(&self, entry: *const Page) -> Option<Pfn> {
        let base = self.pages.as_ptr() as usize;
        let off = (entry as usize).checked_sub(base)?;
        let idx = off / core::mem::size_of::<Page>();
        (off % core::mem::size_of::<Page>() == 0 && idx < self.pages.len())
            .then_some(Pfn(idx as u64))
    }

    /// Kernel virtual address of the frame.
    pub fn pfn_to_virt(&self, pfn: Pfn) -> VirtAddr {
        VirtAddr(self.virt_base as u64 + (pfn.0 << PAGE_SHIFT))
    }

    pub fn page_address(&self, page: &Page) -> Option<VirtAddr> {
        self.page_to_pfn(page).map(|pfn| self.pfn_to_virt(pfn))
    }

    pub fn virt_to_pfn(&self, va: VirtAddr) -> Option<Pfn> {
        let off = va.0.checked_sub(self.virt_base as u64)?;
        let pfn = Pfn(off >> PAGE_SHIFT);
        (pfn.0 < self.nr_pages()).then_some(pfn)
    }

    pub fn virt_to_page(&self, va: VirtAddr) -> Option<&'a Page> {
        self.virt_to_pfn(va).and_then(|pfn| self.pfn_to_page(pfn))
    }

    /// Real address of a kernel virtual address of this memmap's memory.
    pub fn virt_to_phys(&self, va: VirtAddr) -> Option<PhysAddr> {
        let off = va.0.checked_sub(self.virt_base as u64)?;
        (off < self.nr_pages() * PAGE_SIZE).then_some(PhysAddr(off))
    }

    pub fn frame_ptr(&self, pfn: Pfn) -> *mut u8 {
        self.virt_base.wrapping_add((pfn.0 << PAGE_SHIFT) as usize)
    }
}
