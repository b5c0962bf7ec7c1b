//! The buddy page-frame allocator: orders 0..=MAX_ORDER, free lists linked
//! through the `Page` union (as pfns), the buddy of a block found by pfn
//! arithmetic, split on allocation and merged on free. Order-0 traffic
//! normally goes through the per-CPU lists in `pcp`, which take pages from
//! here in batches.
//!
//! The allocator is plain data behind the caller's lock; it works on any
//! `MemMap`, so host tests run it on simulated memory.

use core::fmt;

use super::addr::Pfn;
use super::memmap::MemMap;
use super::page::{Page, PageType, NIL};

/// Largest order: 2^10 pages = 4 MiB blocks.
pub const MAX_ORDER: u32 = 10;
pub const NR_ORDERS: usize = MAX_ORDER as usize + 1;
pub const MAX_ORDER_PAGES: u64 = 1 << MAX_ORDER;

bitflags::bitflags! {
    /// Allocation flags (gfp_t).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct AllocFlags: u32 {
        /// Zero the memory (__GFP_ZERO).
        const ZERO = 1 << 0;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// No free block of the order (or any larger one).
    NoMemory,
    /// Order above MAX_ORDER.
    BadOrder,
}

/// Why a free was refused. Nothing was changed when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The pfn is not in the memmap.
    OutOfRange,
    /// Order above MAX_ORDER, or the pfn is not aligned to it.
    BadOrder,
    /// The page is free: a double free, or a page never allocated.
    AlreadyFree,
    /// The page is reserved (lowcore, image, memmap, firmware).
    Reserved,
    /// The page is part of an allocated block but not its head.
    NotHead,
    /// The block was allocated with another order.
    WrongOrder { allocated: u32 },
    /// Someone still holds a reference (refcount is not 1).
    BadRefcount(u32),
    /// `mapping` (or a field aliasing it: `_pt_s390_gaddr`) is not cleared.
    NonNullMapping(u64),
    /// The page is in use as something else (a page table, gmap table,
    /// heap): its destructor has not run.
    InUse(PageType),
    /// The page's type tag is not a valid value: the memmap is corrupt.
    BadType(u32),
    /// A page inside the block is not a tail of it.
    BadTail(Pfn),
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeError::OutOfRange => write!(f, "pfn beyond the memmap"),
            FreeError::BadOrder => write!(f, "order too large or pfn not aligned to it"),
            FreeError::AlreadyFree => {
                write!(f, "page is already free (double free, or never allocated)")
            }
            FreeError::Reserved => write!(f, "page is reserved"),
            FreeError::NotHead => write!(f, "page is a tail of an allocated block"),
            FreeError::WrongOrder { allocated } => {
                write!(f, "block was allocated at order {allocated}")
            }
            FreeError::BadRefcount(r) => write!(f, "refcount {r}, expected 1"),
            FreeError::NonNullMapping(m) => write!(f, "non-NULL mapping {m:#x}"),
            FreeError::InUse(t) => write!(f, "page still in use as {t:?}"),
            FreeError::BadType(t) => write!(f, "invalid page type {t:#x}"),
            FreeError::BadTail(p) => write!(f, "pfn {:#x} inside the block is not its tail", p.0),
        }
    }
}

/// Inconsistencies found by `check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// A free-list entry is not a Buddy head of that order.
    ListEntry { order: u32, pfn: Pfn },
    /// A list's back link does not point to the previous entry.
    ListLink { order: u32, pfn: Pfn },
    /// A free block is not aligned to its order or runs past the end.
    Misaligned { order: u32, pfn: Pfn },
    /// `nr_free` of an order differs from the list length.
    Count {
        order: u32,
        counted: u64,
        recorded: u64,
    },
    /// A page of a block has the wrong type.
    Inside { head: Pfn, pfn: Pfn, found: u32 },
    /// The per-CPU lists' counts add up to `counted` pages, the memmap
    /// shows `recorded` pages in listed blocks.
    PcpCount { counted: u64, recorded: u64 },
    /// A page is free but not covered by any free block or the pcp list.
    Orphan { pfn: Pfn, found: u32 },
    /// The free-page total does not add up.
    Total { counted: u64, recorded: u64 },
    /// A list is longer than memory: it loops.
    Loop { order: u32 },
}

/// What `check` counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    pub free: u64,
    pub allocated: u64,
    pub reserved: u64,
    /// Pages in blocks parked in per-CPU lists (head typed Pcp).
    pub pcp: u64,
    pub other: u64,
}

/// One order's free list (Linux `struct free_area`).
#[derive(Clone, Copy, Debug)]
struct FreeArea {
    head: u64,
    nr_free: u64,
}

pub struct BuddyAllocator<'a> {
    map: &'a MemMap<'a>,
    free_area: [FreeArea; NR_ORDERS],
    /// Free pages in the buddy lists (per-CPU lists not included).
    nr_free_pages: u64,
    nr_reserved: u64,
    /// Pages ever given to the allocator (free at init).
    nr_managed: u64,
}

impl<'a> BuddyAllocator<'a> {
    #[cfg(any(test, target_arch = "s390x"))]
    /// An allocator with no free memory yet: add ranges with
    /// `add_free_range`. Every page the memmap covers must be zeroed (Free)
    /// or reserved before it is added.
    pub fn new(map: &'a MemMap<'a>) -> Self {
        // memdesc: a buddy link is a 28-bit pfn (mm::init refuses more).
        #[cfg(feature = "memdesc")]
        debug_assert!(map.nr_pages() <= super::page::MEMDESC_MAX_PAGES);
        Self {
            map,
            free_area: [FreeArea {
                head: NIL,
                nr_free: 0,
            }; NR_ORDERS],
            nr_free_pages: 0,
            nr_reserved: 0,
            nr_managed: 0,
        }
    }

    #[cfg(test)]
    pub fn map(&self) -> &'a MemMap<'a> {
        self.map
    }

    fn page(&self, pfn: u64) -> &'a Page {
        &self.map.pages()[pfn as usize]
    }

    #[cfg(any(test, target_arch = "s390x"))]
    /// Mark `[start, end)` reserved: never allocated, never freed.
    pub fn reserve_range(&mut self, start: Pfn, end: Pfn) {
        let end = end.0.min(self.map.nr_pages());
        for pfn in start.0..end {
            let p = self.page(pfn);
            if !p.has_type(PageType::Reserved) {
                p.make_reserved();
                self.nr_reserved += 1;
            }
        }
    }

    #[cfg(any(test, target_arch = "s390x"))]
    /// Give `[start, end)` to the allocator as the largest aligned blocks
    /// that fit. The pages must be zeroed memmap entries (type Free).
    pub fn add_free_range(&mut self, start: Pfn, end: Pfn) {
        let end = end.0.min(self.map.nr_pages());
        let mut pfn = start.0;
        while pfn < end {
            let mut order = MAX_ORDER;
            while order > 0 && (pfn & ((1 << order) - 1) != 0 || pfn + (1 << order) > end) {
                order -= 1;
            }
            self.nr_managed += 1 << order;
            self.nr_free_pages += 1 << order;
            self.free_one_page(pfn, order);
            pfn += 1 << order;
        }
    }

    pub fn nr_free_pages(&self) -> u64 {
        self.nr_free_pages
    }

    pub fn nr_reserved(&self) -> u64 {
        self.nr_reserved
    }

    pub fn nr_managed(&self) -> u64 {
        self.nr_managed
    }

    /// Free blocks of `order` in the buddy lists.
    pub fn nr_free(&self, order: u32) -> u64 {
        self.free_area[order as usize].nr_free
    }

    // -- lists -----------------------------------------------------------

    fn list_add(&mut self, order: u32, pfn: u64) {
        let area = &mut self.free_area[order as usize];
        let p = &self.map.pages()[pfn as usize];
        p.set_buddy_next(area.head);
        p.set_buddy_prev(NIL);
        if area.head != NIL {
            self.map.pages()[area.head as usize].set_buddy_prev(pfn);
        }
        area.head = pfn;
        area.nr_free += 1;
    }

    fn list_del(&mut self, order: u32, pfn: u64) {
        let p = self.page(pfn);
        let (next, prev) = (p.buddy_next(), p.buddy_prev());
        if prev == NIL {
            self.free_area[order as usize].head = next;
        } else {
            self.page(prev).set_buddy_next(next);
        }
        if next != NIL {
            self.page(next).set_buddy_prev(prev);
        }
        self.free_area[order as usize].nr_free -= 1;
    }

    // -- core ------------------------------------------------------------

    /// Put a free block into the lists, merging it with its buddy as long as
    /// the buddy is a free block of the same order (Linux
    /// `__free_one_page`). The block's pages other than the head must be
    /// Free already.
    fn free_one_page(&mut self, mut pfn: u64, mut order: u32) {
        let end = self.map.nr_pages();
        while order < MAX_ORDER {
            let buddy = pfn ^ (1 << order);
            if buddy + (1 << order) > end {
                break;
            }
            let bp = self.page(buddy);
            if !bp.has_type(PageType::Buddy) || bp.buddy_order() != order {
                break;
            }
            self.list_del(order, buddy);
            // The buddy's head becomes a page inside the merged block.
            bp.make_free();
            pfn &= buddy;
            order += 1;
        }
        self.page(pfn).make_buddy(order);
        self.list_add(order, pfn);
    }

    /// Take a block of exactly `order` from the lists, splitting a larger
    /// one if needed (Linux `__rmqueue_smallest` + `expand`).
    fn rmqueue(&mut self, order: u32) -> Option<u64> {
        let mut o = order;
        while o <= MAX_ORDER && self.free_area[o as usize].head == NIL {
            o += 1;
        }
        if o > MAX_ORDER {
            return None;
        }
        let pfn = self.free_area[o as usize].head;
        self.take_split(o, pfn, order);
        Some(pfn)
    }

    /// Take the free block `pfn` of order `o` off its list and give back
    /// its upper halves until it is of `order` (Linux `expand`).
    fn take_split(&mut self, mut o: u32, pfn: u64, order: u32) {
        self.list_del(o, pfn);
        while o > order {
            o -= 1;
            let half = pfn + (1 << o);
            self.page(half).make_buddy(o);
            self.list_add(o, half);
        }
        self.page(pfn).make_free();
    }

    /// A block just taken off the lists becomes the caller's: allocated,
    /// counted, zeroed if asked.
    fn hand_out(&mut self, pfn: u64, order: u32, flags: AllocFlags) -> Pfn {
        self.prep_new_block(pfn, order);
        self.nr_free_pages -= 1 << order;
        if flags.contains(AllocFlags::ZERO) {
            let ptr = self.map.frame_ptr(Pfn(pfn));
            // SAFETY: the block was just taken off the free lists: nobody
            // else references its memory, which the memmap vouches for.
            unsafe { crate::mm::clear_frames(ptr, (1u64 << order) * super::addr::PAGE_SIZE) };
        }
        Pfn(pfn)
    }

    /// Make a block allocated: head Allocated with refcount 1 and its
    /// order, the other pages Tail.
    fn prep_new_block(&self, pfn: u64, order: u32) {
        self.page(pfn).make_allocated(order);
        for t in pfn + 1..pfn + (1 << order) {
            self.page(t).make_tail();
        }
    }

    /// Take up to `n` blocks of `order` for a per-CPU list: each laid out
    /// as an allocated block (head flags of its order, other pages Tail) but
    /// with the head typed Pcp and refcount 0; `push` gets each head pfn.
    /// Returns how many blocks there were.
    #[inline(always)]
    pub fn take_for_pcp(&mut self, order: u32, n: u64, mut push: impl FnMut(u64)) -> u64 {
        let mut got = 0;
        while got < n {
            let Some(pfn) = self.rmqueue(order) else {
                break;
            };
            self.page(pfn).make_pcp(order);
            for t in pfn + 1..pfn + (1 << order) {
                self.page(t).make_tail();
            }
            push(pfn);
            got += 1;
        }
        self.nr_free_pages -= got << order;
        got
    }

    /// Take back a block of `order` from a per-CPU list (head typed Pcp)
    /// and merge it. Inlined into the drain loops, where the order is a
    /// constant.
    #[inline(always)]
    pub fn give_from_pcp(&mut self, pfn: u64, order: u32) {
        let p = self.page(pfn);
        debug_assert!(p.has_type(PageType::Pcp) && p.head_order() == order);
        for t in pfn + 1..pfn + (1 << order) {
            self.page(t).make_free();
        }
        p.make_free();
        self.nr_free_pages += 1 << order;
        self.free_one_page(pfn, order);
    }

    /// Allocate 2^order contiguous, order-aligned frames. The head page is
    /// Allocated with refcount 1; `ZERO` clears the memory.
    pub fn alloc(&mut self, order: u32, flags: AllocFlags) -> Result<Pfn, AllocError> {
        if order > MAX_ORDER {
            return Err(AllocError::BadOrder);
        }
        let pfn = self.rmqueue(order).ok_or(AllocError::NoMemory)?;
        Ok(self.hand_out(pfn, order, flags))
    }

    /// `alloc`, but only a block that ends at or below frame `max_pfn` (as
    /// Linux's GFP_DMA takes ZONE_DMA, below 2 GiB on s390, for what a
    /// 31-bit address must reach: a CPU's prefix area). The free lists are
    /// searched from `order` up for the first block low enough, which is
    /// split like any other.
    pub fn alloc_below(
        &mut self,
        order: u32,
        max_pfn: u64,
        flags: AllocFlags,
    ) -> Result<Pfn, AllocError> {
        if order > MAX_ORDER {
            return Err(AllocError::BadOrder);
        }
        let mut found = None;
        'search: for o in order..=MAX_ORDER {
            let mut pfn = self.free_area[o as usize].head;
            while pfn != NIL {
                if pfn + (1 << o) <= max_pfn {
                    found = Some((o, pfn));
                    break 'search;
                }
                pfn = self.page(pfn).buddy_next();
            }
        }
        let (o, pfn) = found.ok_or(AllocError::NoMemory)?;
        self.take_split(o, pfn, order);
        Ok(self.hand_out(pfn, order, flags))
    }

    /// The checks Linux's free_pages_check/bad_page makes, without changing
    /// anything.
    pub fn free_check(&self, pfn: Pfn, order: u32) -> Result<(), FreeError> {
        let Some(head) = self.map.pfn_to_page(pfn) else {
            return Err(FreeError::OutOfRange);
        };
        match head.page_type() {
            None => return Err(FreeError::BadType(head.raw_page_type())),
            Some(t) if t.is_free() => return Err(FreeError::AlreadyFree),
            Some(PageType::Reserved) => return Err(FreeError::Reserved),
            Some(PageType::Tail) => return Err(self.tail_error(pfn)),
            Some(PageType::Allocated) => {}
            Some(t) => return Err(FreeError::InUse(t)),
        }
        if order > MAX_ORDER {
            return Err(FreeError::BadOrder);
        }
        // The order the block was allocated with says more than alignment:
        // check it first (a head of its own order is always aligned).
        if head.head_order() != order {
            return Err(FreeError::WrongOrder {
                allocated: head.head_order(),
            });
        }
        if !pfn.is_aligned_to_order(order) {
            return Err(FreeError::BadOrder);
        }
        if head.refcount() != 1 {
            return Err(FreeError::BadRefcount(head.refcount()));
        }
        if head.mapping() != 0 {
            return Err(FreeError::NonNullMapping(head.mapping()));
        }
        for t in pfn.0 + 1..pfn.0 + (1 << order) {
            if !self.page(t).has_type(PageType::Tail) {
                return Err(FreeError::BadTail(Pfn(t)));
            }
        }
        Ok(())
    }

    /// What freeing a Tail page is: part of a block parked on a per-CPU
    /// list (free already: `AlreadyFree`) or of an allocated block
    /// (`NotHead`). The head is the nearest aligned page above it whose
    /// block covers it.
    fn tail_error(&self, pfn: Pfn) -> FreeError {
        for order in 1..=MAX_ORDER {
            let head = pfn.0 & !((1u64 << order) - 1);
            let Some(h) = self.map.pfn_to_page(Pfn(head)) else {
                break;
            };
            match h.page_type() {
                Some(PageType::Tail) => continue,
                Some(PageType::Pcp) if h.head_order() >= order => return FreeError::AlreadyFree,
                _ => break,
            }
        }
        FreeError::NotHead
    }

    /// Free a block allocated by `alloc` with the same order. Misuse is
    /// refused with the reason and changes nothing.
    pub fn free(&mut self, pfn: Pfn, order: u32) -> Result<(), FreeError> {
        self.free_check(pfn, order)?;
        for t in pfn.0 + 1..pfn.0 + (1 << order) {
            self.page(t).make_free();
        }
        self.page(pfn.0).make_free();
        self.nr_free_pages += 1 << order;
        self.free_one_page(pfn.0, order);
        Ok(())
    }

    /// Allocate `n` physically contiguous MAX_ORDER blocks (Linux
    /// alloc_contig_pages, restricted to whole free blocks). Each block is
    /// allocated on its own: free them one by one with MAX_ORDER.
    pub fn alloc_contig(&mut self, n: u64) -> Result<Pfn, AllocError> {
        if n == 0 {
            return Err(AllocError::BadOrder);
        }
        let blocks = self.map.nr_pages() / MAX_ORDER_PAGES;
        let mut run_start = 0;
        let mut run = 0;
        for b in 0..blocks {
            let pfn = b * MAX_ORDER_PAGES;
            let p = self.page(pfn);
            let free = p.has_type(PageType::Buddy) && p.buddy_order() == MAX_ORDER;
            if !free {
                run = 0;
                continue;
            }
            if run == 0 {
                run_start = pfn;
            }
            run += 1;
            if run == n {
                for i in 0..n {
                    let pfn = run_start + i * MAX_ORDER_PAGES;
                    self.list_del(MAX_ORDER, pfn);
                    self.prep_new_block(pfn, MAX_ORDER);
                }
                self.nr_free_pages -= n * MAX_ORDER_PAGES;
                return Ok(Pfn(run_start));
            }
        }
        Err(AllocError::NoMemory)
    }

    /// Check the lists against the memmap: every list entry a Buddy head of
    /// its order, aligned, back links right, counts right; every page inside
    /// a free block Free, inside an allocated block Tail; the free total
    /// adds up. Per-CPU pages are counted in `pcp` for the caller to match
    /// against its lists. O(memory).
    pub fn check(&self) -> Result<CheckStats, CheckError> {
        let n = self.map.nr_pages();
        let mut free_in_lists = 0;
        for order in 0..=MAX_ORDER {
            let mut pfn = self.free_area[order as usize].head;
            let mut prev = NIL;
            let mut counted = 0;
            while pfn != NIL {
                if pfn >= n {
                    return Err(CheckError::ListEntry {
                        order,
                        pfn: Pfn(pfn),
                    });
                }
                let p = self.page(pfn);
                if !p.has_type(PageType::Buddy) || p.buddy_order() != order {
                    return Err(CheckError::ListEntry {
                        order,
                        pfn: Pfn(pfn),
                    });
                }
                if pfn & ((1 << order) - 1) != 0 || pfn + (1 << order) > n {
                    return Err(CheckError::Misaligned {
                        order,
                        pfn: Pfn(pfn),
                    });
                }
                if p.buddy_prev() != prev {
                    return Err(CheckError::ListLink {
                        order,
                        pfn: Pfn(pfn),
                    });
                }
                counted += 1;
                if counted > n {
                    return Err(CheckError::Loop { order });
                }
                prev = pfn;
                pfn = p.buddy_next();
            }
            let recorded = self.free_area[order as usize].nr_free;
            if counted != recorded {
                return Err(CheckError::Count {
                    order,
                    counted,
                    recorded,
                });
            }
            free_in_lists += counted << order;
        }
        // Walk the memmap block by block.
        let mut stats = CheckStats::default();
        let mut pfn = 0;
        while pfn < n {
            let p = self.page(pfn);
            let (span, inner) = match p.page_type() {
                Some(PageType::Buddy) => {
                    stats.free += 1 << p.buddy_order();
                    (1u64 << p.buddy_order(), PageType::Free)
                }
                Some(PageType::Pcp) => {
                    stats.pcp += 1 << p.head_order();
                    (1u64 << p.head_order(), PageType::Tail)
                }
                Some(PageType::Allocated) | Some(PageType::Heap) => {
                    stats.allocated += 1 << p.head_order();
                    (1u64 << p.head_order(), PageType::Tail)
                }
                Some(PageType::Reserved) => {
                    stats.reserved += 1;
                    (1, PageType::Reserved)
                }
                Some(PageType::DescSlab) => {
                    stats.other += 1;
                    (1, PageType::Tail)
                }
                Some(PageType::PageTable) | Some(PageType::GmapTable) => {
                    stats.other += 1 << p.head_order();
                    (1u64 << p.head_order(), PageType::Tail)
                }
                _ => {
                    return Err(CheckError::Orphan {
                        pfn: Pfn(pfn),
                        found: p.raw_page_type(),
                    })
                }
            };
            for t in pfn + 1..(pfn + span).min(n) {
                let tp = self.page(t);
                if !tp.has_type(inner) {
                    return Err(CheckError::Inside {
                        head: Pfn(pfn),
                        pfn: Pfn(t),
                        found: tp.raw_page_type(),
                    });
                }
            }
            pfn += span;
        }
        if stats.free != free_in_lists || stats.free != self.nr_free_pages {
            return Err(CheckError::Total {
                counted: stats.free,
                recorded: self.nr_free_pages,
            });
        }
        Ok(stats)
    }
}
