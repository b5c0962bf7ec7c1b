//! Owned, typed handles to frames that carry a descriptor: `Frame<PtDesc>`
//! for a process page table, `Frame<GmapTableDesc>` for a gmap table (the
//! idea of Asterinas OSTD's `Frame<M>`; Linux has only `struct page *`
//! and its casts). A handle owns its block: it is not `Copy` or `Clone`,
//! giving it back consumes it, and dropping it gives the block back too
//! (the descriptor's dtor, then the allocator), so an early return cannot
//! leak a table. Borrowed views (`desc`, `Deref`) live no longer than the
//! handle. Only mm makes one (the ctors in `ptdesc` and `gtdesc`), so the
//! type of a handle is the type tag of its page: `page_ptdesc` on a gmap
//! table handle does not compile.
//!
//! A table linked into a space is reached through a raw table entry, not a
//! handle: `into_raw` gives the handle up when the table is linked, and
//! `from_raw` (unsafe: the caller vouches the entry is gone) takes it back,
//! checking the page's type tag at run time.

use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::NonNull;

use super::addr::{PhysAddr, VirtAddr, PAGE_SIZE};
use super::page::{Page, PageType};

pub(in crate::mm) mod sealed {
    use super::super::page::{Page, PageType};

    /// What mm knows about a descriptor type; not nameable outside mm, so
    /// no other code can add a descriptor or call `release`.
    ///
    /// # Safety
    /// `of_page` of a page typed `TYPE` returns its descriptor: in the
    /// overlay a `repr(C)` view of `Page`'s 64 bytes made only of atomics
    /// (TABLE_MATCH), in memdesc the live descriptor its word points to.
    pub unsafe trait Desc: Sized + 'static {
        /// The page type of a page this descriptor describes.
        const TYPE: PageType;
        /// The block order every frame of this descriptor has, if fixed.
        const ORDER: Option<u32>;
        /// The descriptor of a page of type `TYPE` (overlay: the page
        /// itself; memdesc: what its word points to).
        fn of_page(page: &Page) -> &Self;
        /// Give the block headed by `page` (of type `TYPE`) back: the dtor,
        /// then the allocator. A refusal is reported and the block stays
        /// allocated, owned by nobody.
        fn release(page: &'static Page);
    }
}

/// A descriptor type a `Frame` can carry (sealed: `PtDesc` and
/// `GmapTableDesc`).
pub trait FrameDesc: sealed::Desc {}
impl<D: sealed::Desc> FrameDesc for D {}

/// Why `Frame::from_raw` refused an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not the start of a block of the descriptor's order in the memmap.
    NotInMemmap,
    Misaligned,
    /// The page's type tag says it is something else.
    WrongType(Option<PageType>),
    /// The block's order is not the descriptor's.
    WrongOrder(u32),
}

/// An owned block whose head page is typed `D::TYPE`.
pub struct Frame<D: FrameDesc> {
    head: NonNull<Page>,
    _desc: PhantomData<D>,
}

// SAFETY: a Frame is a `&'static Page` (all atomics, Sync) owning its
// block; the block may be handed to another CPU, and `&Frame` only reads.
unsafe impl<D: FrameDesc> Send for Frame<D> {}
// SAFETY: as above.
unsafe impl<D: FrameDesc> Sync for Frame<D> {}

impl<D: FrameDesc> Frame<D> {
    /// Wrap a head page mm just typed `D::TYPE` (the ctors).
    pub(in crate::mm) fn from_head(page: &'static Page) -> Self {
        debug_assert!(page.has_type(D::TYPE));
        Self {
            head: NonNull::from(page),
            _desc: PhantomData,
        }
    }

    /// The head page (mm only: outside mm a handle is its descriptor, so a
    /// handle cannot be turned into a page of another type).
    pub(in crate::mm) fn head(&self) -> &'static Page {
        // SAFETY: `head` came from a `&'static Page` of the memmap.
        unsafe { self.head.as_ref() }
    }

    /// Give up the handle without freeing (mm's dtors).
    pub(in crate::mm) fn into_head(self) -> &'static Page {
        let page = self.head();
        core::mem::forget(self);
        page
    }

    /// The descriptor, borrowed for as long as the handle lives.
    pub fn desc(&self) -> &D {
        // The head is typed D::TYPE while the handle exists (the `Desc`
        // contract makes `of_page` right for it).
        D::of_page(self.head())
    }

    /// Block order (0 for a PTE page, 2 for a CRST table).
    pub fn order(&self) -> u32 {
        self.head().head_order()
    }

    pub fn phys(&self) -> PhysAddr {
        super::page_to_pfn(self.head()).map_or(PhysAddr(0), |p| PhysAddr(p.0 * PAGE_SIZE))
    }

    pub fn virt(&self) -> VirtAddr {
        super::page_address(self.head()).unwrap_or_default()
    }

    /// Give up the handle, keeping the block (the table is being linked
    /// into an entry: the entry owns it now). Returns its real address.
    pub fn into_raw(self) -> PhysAddr {
        let pa = self.phys();
        core::mem::forget(self);
        pa
    }

    /// Take back the block `into_raw` gave up, checking at run time that
    /// the page at `pa` is the head of a `D` block.
    ///
    /// # Safety
    /// No other handle for the block exists, and nothing reaches it any
    /// more through a table entry the hardware may use (the entry was
    /// invalidated, or the handle is only inspected and given up again
    /// with `into_raw`).
    pub unsafe fn from_raw(pa: PhysAddr) -> Result<Self, FrameError> {
        let order = D::ORDER.unwrap_or(0);
        if !pa.0.is_multiple_of(PAGE_SIZE << order) {
            return Err(FrameError::Misaligned);
        }
        let page = super::pfn_to_page(pa.pfn()).ok_or(FrameError::NotInMemmap)?;
        if !page.has_type(D::TYPE) {
            return Err(FrameError::WrongType(page.page_type()));
        }
        if D::ORDER.is_some_and(|o| o != page.head_order()) {
            return Err(FrameError::WrongOrder(page.head_order()));
        }
        Ok(Self::from_head(page))
    }
}

impl<D: FrameDesc> Deref for Frame<D> {
    type Target = D;
    fn deref(&self) -> &D {
        self.desc()
    }
}

impl<D: FrameDesc> Drop for Frame<D> {
    fn drop(&mut self) {
        D::release(self.head());
    }
}

impl<D: FrameDesc> core::fmt::Debug for Frame<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Frame<{:?}>({:#x}, order {})",
            D::TYPE,
            self.phys().0,
            self.order()
        )
    }
}
