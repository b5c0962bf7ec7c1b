//! Per-CPU page lists (Linux's `per_cpu_pages`): allocations and frees of
//! orders 0 to 3 (`PCP_MAX_ORDER`, Linux's PAGE_ALLOC_COSTLY_ORDER, which
//! covers s390's 16 KiB region and segment tables) go to short LIFO lists
//! of the CPU, one per order, without the zone lock, splitting or merging.
//! The lists refill from and drain to the buddy allocator in batches. Only
//! a free that passes every check takes the fast path: anything unusual
//! goes to the buddy allocator's `free`, which reports exactly what is
//! wrong.
//!
//! A block on a list keeps the layout of an allocated block (its order in
//! the head's flags, the other pages Tail); only the head's type (Pcp) and
//! refcount (0) differ. The lists are linked through `PcpArm::next` by
//! entry address, so the fast paths never convert between frame numbers
//! and entries: an allocation is a pop plus the head's new state, a free is
//! three checks (plus the tails for orders above 0) and a push.
//!
//! Exclusion: whoever holds the list's lock (`percpu`: the owning CPU
//! with a try-lock, or `mm::check` holding every CPU's) touches the heads,
//! with external and I/O interruptions masked (all of zdat's kernel code
//! runs disabled; interruptions arrive only in enabled waits, which the
//! allocator never does). That is Linux's `local_irq_save` around the pcp,
//! paid for once at boot instead of on every call. Other CPUs only read
//! `count` without it.

use core::cell::Cell;
use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crate::sync::Mutex;

use super::addr::Pfn;
use super::buddy::{AllocError, BuddyAllocator, FreeError};
use super::memmap::MemMap;
use super::page::{Page, PageType};

/// Linux: pcp->high and pcp->batch, in pages.
pub const PCP_HIGH: u64 = 96;
pub const PCP_BATCH: u64 = 32;
/// Highest order kept on the lists (Linux: PAGE_ALLOC_COSTLY_ORDER).
pub const PCP_MAX_ORDER: u32 = 3;
pub const NR_PCP_LISTS: usize = PCP_MAX_ORDER as usize + 1;

/// One CPU's lists of blocks of a memmap that lives for `'a` (`'static`
/// in the kernel, a simulated memmap in host tests).
///
/// Not `Sync`: push and pop are plain load-then-store sequences, right only
/// for the one CPU that owns the lists. Sharing them takes an explicit
/// promise (`mm`'s per-CPU array). Aligned to s390x's 256-byte cache line so
/// CPUs' lists never share one.
#[derive(Debug)]
#[repr(C, align(256))]
pub struct PcpList<'a> {
    /// First head of each order (null: empty). Owner CPU only.
    heads: [AtomicPtr<Page>; NR_PCP_LISTS],
    /// Pages on all the lists. Written by the owner, read by anyone.
    count: AtomicU64,
    _memmap: PhantomData<&'a Page>,
    _owner_only: PhantomData<Cell<()>>,
}

impl Default for PcpList<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> PcpList<'a> {
    pub const fn new() -> Self {
        Self {
            heads: [const { AtomicPtr::new(ptr::null_mut()) }; NR_PCP_LISTS],
            count: AtomicU64::new(0),
            _memmap: PhantomData,
            _owner_only: PhantomData,
        }
    }

    /// Pages on the lists.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Owner-only update of the count: a plain load and store (no
    /// interlocked update), atomic only so other CPUs may read it.
    #[inline(always)]
    fn add_count(&self, d: i64) {
        self.count.store(
            self.count.load(Ordering::Relaxed).wrapping_add_signed(d),
            Ordering::Relaxed,
        );
    }

    #[inline(always)]
    fn push(&self, page: &'a Page, order: u32) {
        let head = &self.heads[order as usize];
        page.set_pcp_next(order, head.load(Ordering::Relaxed));
        head.store(ptr::from_ref(page).cast_mut(), Ordering::Relaxed);
        self.add_count(1 << order);
    }

    #[inline(always)]
    fn pop(&self, order: u32) -> Option<&'a Page> {
        let head = &self.heads[order as usize];
        // SAFETY: the list holds only entries pushed as `&'a Page`.
        let page: &'a Page = unsafe { head.load(Ordering::Relaxed).as_ref()? };
        head.store(page.pcp_next(), Ordering::Relaxed);
        self.add_count(-(1 << order));
        Some(page)
    }

    /// Take a block of `order` (at most `PCP_MAX_ORDER`): head Allocated,
    /// refcount 1, `mapping` (checked on free), `lru.next` and `private`
    /// clear, as Linux's prep_new_page leaves a page; flags and tails are
    /// already those of an allocated block. `None` when the list is empty:
    /// the caller refills it.
    #[inline(always)]
    pub fn alloc(&self, order: u32) -> Option<&'a Page> {
        let page = self.pop(order)?;
        page.pcp_to_allocated(order);
        Some(page)
    }

    /// Free an order-0 page if it is exactly what the buddy allocator's
    /// checks want: an Allocated page with flags 0 (so order 0, no head),
    /// refcount 1 and mapping clear. `false` leaves it untouched for
    /// `BuddyAllocator::free`, which names what is wrong. The caller drains
    /// when `over_high` says so.
    #[inline(always)]
    pub fn free(&self, page: &'a Page) -> bool {
        if !page.is_fresh_allocated(0) {
            return false;
        }
        page.allocated_to_pcp();
        self.push(page, 0);
        true
    }

    /// Free the block of `order` (1 to `PCP_MAX_ORDER`) headed by frame
    /// `pfn` of `map` if it passes every check `BuddyAllocator::free` makes:
    /// `pfn` aligned to the order, the head's flags exactly those of an
    /// allocated block of this order, refcount 1, mapping clear, every other
    /// page Tail. `false` leaves it untouched.
    pub fn free_order(&self, map: &MemMap<'a>, pfn: Pfn, order: u32) -> bool {
        debug_assert!(order > 0 && order <= PCP_MAX_ORDER);
        if !pfn.is_aligned_to_order(order) {
            return false;
        }
        let pages = map.pages();
        let Some(block) = pages.get(pfn.0 as usize..(pfn.0 + (1 << order)) as usize) else {
            return false;
        };
        let page = &block[0];
        if !(page.is_fresh_allocated(order)
            && block[1..].iter().all(|t| t.has_type(PageType::Tail)))
        {
            return false;
        }
        page.allocated_to_pcp();
        self.push(page, order);
        true
    }

    /// Whether a free left more than `PCP_HIGH` pages here.
    #[inline(always)]
    pub fn over_high(&self) -> bool {
        self.count() > PCP_HIGH
    }

    /// Fill the empty list of `order` from the zone: a batch of
    /// `PCP_BATCH` pages, less if that would take the lists above
    /// `PCP_HIGH`, and at least one block.
    #[inline(never)]
    pub fn refill(
        &self,
        map: &MemMap<'a>,
        zone: &Mutex<BuddyAllocator<'_>>,
        order: u32,
    ) -> Result<(), AllocError> {
        // One copy per order, each with its order a constant.
        const _: () = assert!(PCP_MAX_ORDER == 3);
        match order {
            0 => self.refill_order(map, zone, 0),
            1 => self.refill_order(map, zone, 1),
            2 => self.refill_order(map, zone, 2),
            _ => self.refill_order(map, zone, PCP_MAX_ORDER),
        }
    }

    #[inline(always)]
    fn refill_order(
        &self,
        map: &MemMap<'a>,
        zone: &Mutex<BuddyAllocator<'_>>,
        order: u32,
    ) -> Result<(), AllocError> {
        let room = PCP_HIGH.saturating_sub(self.count()).min(PCP_BATCH);
        let blocks = (room >> order).max(1);
        let mut z = zone.lock();
        let n = z.take_for_pcp(order, blocks, |pfn| {
            self.push(&map.pages()[pfn as usize], order);
        });
        if n == 0 {
            return Err(AllocError::NoMemory);
        }
        Ok(())
    }

    /// The slow half of an allocation of `order` (at most `PCP_MAX_ORDER`):
    /// take a block, refilling the list from the zone when it is empty.
    pub fn alloc_or_refill(
        &self,
        map: &MemMap<'a>,
        zone: &Mutex<BuddyAllocator<'_>>,
        order: u32,
    ) -> Result<&'a Page, AllocError> {
        if let Some(page) = self.alloc(order) {
            return Ok(page);
        }
        self.refill(map, zone, order)?;
        self.alloc(order).ok_or(AllocError::NoMemory)
    }

    /// A whole free of `order` (at most `PCP_MAX_ORDER`) by frame number:
    /// the fast path and a drain past `PCP_HIGH`, or the buddy allocator's
    /// checked free (which refuses misuse and says why).
    pub fn free_or_fallback(
        &self,
        map: &MemMap<'a>,
        zone: &Mutex<BuddyAllocator<'_>>,
        pfn: Pfn,
        order: u32,
    ) -> Result<(), FreeError> {
        let freed = match order {
            0 => map.pfn_to_page(pfn).is_some_and(|page| self.free(page)),
            _ => self.free_order(map, pfn, order),
        };
        if !freed {
            return zone.lock().free(pfn, order);
        }
        if self.over_high() {
            self.drain_to_high(map, zone);
        }
        Ok(())
    }

    /// Give batches back to the buddy allocator until the lists hold at
    /// most `PCP_HIGH` pages (Linux free_pcppages_bulk).
    #[inline(never)]
    pub fn drain_to_high(&self, map: &MemMap<'_>, zone: &Mutex<BuddyAllocator<'_>>) {
        while self.over_high() {
            self.drain(map, zone, PCP_BATCH);
        }
    }

    /// Give at least `n` pages (or all there are) back to the buddy
    /// allocator, lowest order first: those are the blocks the lists are
    /// quickest to get back.
    #[inline(never)]
    pub fn drain(&self, map: &MemMap<'_>, zone: &Mutex<BuddyAllocator<'_>>, n: u64) {
        const _: () = assert!(PCP_MAX_ORDER == 3);
        let mut z = zone.lock();
        let mut done = 0;
        // One loop per order, each with its order a constant.
        done += self.drain_order(map, &mut z, 0, n);
        done += self.drain_order(map, &mut z, 1, n.saturating_sub(done));
        done += self.drain_order(map, &mut z, 2, n.saturating_sub(done));
        self.drain_order(map, &mut z, 3, n.saturating_sub(done));
    }

    /// Give blocks of `order` back until `n` pages are or the list is
    /// empty; returns the pages given.
    #[inline(always)]
    fn drain_order(&self, map: &MemMap<'_>, z: &mut BuddyAllocator<'_>, order: u32, n: u64) -> u64 {
        let mut done = 0;
        while done < n {
            let Some(page) = self.pop(order) else {
                break;
            };
            // Every entry is a memmap entry: `free` takes a `Pages` handle's
            // page, `free_order` and `refill` index the memmap.
            match map.page_to_pfn(page) {
                Some(pfn) => z.give_from_pcp(pfn.0, order),
                None => debug_assert!(false, "per-CPU list entry outside the memmap"),
            }
            done += 1 << order;
        }
        done
    }

    /// Walk the lists: every entry the Pcp head of a block of the list's
    /// order in the memmap; the count right. Returns the pages counted, or
    /// the list order and the bad entry (`Pfn(u64::MAX)` for a wrong count).
    pub fn check(&self, map: &MemMap<'_>) -> Result<u64, (u32, Pfn)> {
        let mut pages = 0;
        for (order, head) in self.heads.iter().enumerate() {
            let mut n = 0;
            let mut cur = head.load(Ordering::Relaxed);
            while !cur.is_null() {
                // Nothing is read through `cur` before it is known to be an
                // entry of the memmap.
                let Some(pfn) = map.entry_to_pfn(cur) else {
                    return Err((order as u32, Pfn(cur as u64)));
                };
                let page = &map.pages()[pfn.0 as usize];
                if !page.has_type(PageType::Pcp)
                    || page.head_order() != order as u32
                    || n >= map.nr_pages()
                {
                    return Err((order as u32, pfn));
                }
                n += 1;
                cur = page.pcp_next();
            }
            pages += n << order;
        }
        if pages != self.count() {
            return Err((0, Pfn(u64::MAX)));
        }
        Ok(pages)
    }
}
