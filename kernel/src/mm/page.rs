//! `struct page`: the metadata of one 4 KiB frame, in one of two layouts
//! chosen at build time.
//!
//! - **Overlay** (default, `page_overlay.rs`): 64 bytes laid out like
//!   Linux's include/linux/mm_types.h today. The 40 bytes after `flags` are
//!   a Rust `union` of per-use layouts, `page_type` says which one is live,
//!   and descriptors (`ptdesc`, `gtdesc`) are views of the same 64 bytes
//!   (TABLE_MATCH).
//! - **memdesc** (feature `memdesc`, `page_memdesc.rs`): one 8-byte word,
//!   Matthew Wilcox's memdesc (kernelnewbies.org/MatthewWilcox/Memdescs):
//!   the type in the low 4 bits, the rest either a pointer to a separately
//!   allocated, 16-byte aligned descriptor (page tables, gmap tables: see
//!   `desc`) or, for types that need none, the state itself (order, flags,
//!   refcount; a free block's list links).
//!
//! Both layouts give mm the same methods: the readers (`page_type`,
//! `flags`, `head_order`, `refcount`, `mapping`) and the state changes the
//! allocator makes (`make_free`, `make_buddy`, `make_allocated`, ...), so
//! the buddy allocator, the per-CPU lists and everything above mm are one
//! code base. Every word is an atomic: the memmap is shared, any CPU may
//! read any entry (a misuse report reads a page it does not own).

use bitflags::bitflags;

bitflags! {
    /// Page flags (the low bits of Linux's `page->flags`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PageFlags: u64 {
        const LOCKED = 1 << 0;
        const DIRTY = 1 << 4;
        /// First page of a multi-page allocation (PG_head); its order is in
        /// the order field.
        const HEAD = 1 << 6;
        /// Never given to the allocator (PG_reserved).
        const RESERVED = 1 << 10;
        const _ = !0;
    }
}

/// Where `raw_flags` shows the allocation order of a block's head page
/// (Linux keeps section/node/zone bits up there). The overlay stores it
/// there; memdesc keeps the order in its word and shows it in the same place.
pub(in crate::mm) const ORDER_SHIFT: u32 = 56;
pub(in crate::mm) const ORDER_MASK: u64 = 0xf << ORDER_SHIFT;

/// What a page is (Linux's page_type, extended with the uses zdat tracks
/// explicitly). In the overlay it says which union arm is live; in memdesc
/// it is the word's 4-bit type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum PageType {
    /// In the buddy allocator, inside a free block but not its head. A
    /// zero-filled memmap entry is this.
    Free = 0,
    /// Head of a free buddy block; the order is with the list links.
    Buddy = 1,
    /// Head of a free block parked in a per-CPU list (orders 0 to 3); the
    /// other pages are Tail.
    Pcp = 2,
    /// Head of a block handed out by `alloc_pages`.
    Allocated = 3,
    /// Any other page of an allocated block (or of a free block parked on a
    /// per-CPU list, whose head is `Pcp`).
    Tail = 4,
    /// Never allocatable: lowcore, image, memmap, firmware.
    Reserved = 5,
    /// A process page table (`ptdesc`).
    PageTable = 6,
    /// A gmap region or segment table (`gtdesc`).
    GmapTable = 7,
    /// Head of a block backing the kernel heap.
    Heap = 8,
    /// A page of the descriptor allocator (memdesc layout only): it holds
    /// descriptors, and needs none itself.
    DescSlab = 9,
}

impl PageType {
    pub const fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Free,
            1 => Self::Buddy,
            2 => Self::Pcp,
            3 => Self::Allocated,
            4 => Self::Tail,
            5 => Self::Reserved,
            6 => Self::PageTable,
            7 => Self::GmapTable,
            8 => Self::Heap,
            9 => Self::DescSlab,
            _ => return None,
        })
    }

    /// Free in any form (buddy head, buddy tail, per-CPU list).
    pub const fn is_free(self) -> bool {
        matches!(self, Self::Free | Self::Buddy | Self::Pcp)
    }
}

/// Links of a doubly linked list (page frame numbers or real addresses).
#[repr(C)]
pub struct ListLinks {
    pub next: core::sync::atomic::AtomicU64,
    pub prev: core::sync::atomic::AtomicU64,
}

/// "No page" in a buddy list link.
pub const NIL: u64 = u64::MAX;

#[cfg(not(feature = "memdesc"))]
#[path = "page_overlay.rs"]
mod layout;
#[cfg(feature = "memdesc")]
#[path = "page_memdesc.rs"]
mod layout;

pub use layout::*;
