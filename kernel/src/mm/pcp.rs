//! Per-CPU order-0 page lists (Linux's `per_cpu_pages`): order-0 frees and
//! allocations go to a short LIFO list of the CPU, without the zone lock,
//! splitting or merging; the list refills from and drains to the buddy
//! allocator in batches. Only a free that passes every check takes the
//! fast path: anything unusual goes to the buddy allocator's `free`, which
//! reports exactly what is wrong.
//!
//! The list is linked through the pages' `PcpArm::next` by entry address,
//! so the fast paths never convert between frame numbers and entries: an
//! allocation is a pop plus the page's new state, a free is three checks
//! plus a push.
//!
//! Exclusion: only the owning CPU touches `head`, and it does so with
//! external and I/O interruptions masked (all of zdat's kernel code runs
//! disabled; interruptions arrive only in enabled waits, which the
//! allocator never does). That is Linux's `local_irq_save` around the pcp,
//! paid for once at boot instead of on every call. Other CPUs only read
//! `count`.

use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use spin::Mutex;

use super::addr::Pfn;
use super::buddy::{AllocError, BuddyAllocator, FreeError};
use super::memmap::MemMap;
use super::page::{Page, PageType};

/// Linux: pcp->high and pcp->batch.
pub const PCP_HIGH: u64 = 96;
pub const PCP_BATCH: u64 = 32;

/// One CPU's list of entries of a memmap that lives for `'a` (`'static`
/// in the kernel, a simulated memmap in host tests).
#[derive(Debug)]
#[repr(C)]
pub struct PcpList<'a> {
    /// First page's entry (null: empty). Owner CPU only.
    head: AtomicPtr<Page>,
    /// Pages on the list. Written by the owner, read by anyone.
    count: AtomicU64,
    _memmap: PhantomData<&'a Page>,
}

impl Default for PcpList<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> PcpList<'a> {
    pub const fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
            count: AtomicU64::new(0),
            _memmap: PhantomData,
        }
    }

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
    fn push(&self, page: &'a Page) {
        page.pcp()
            .next
            .store(self.head.load(Ordering::Relaxed), Ordering::Relaxed);
        self.head
            .store(ptr::from_ref(page).cast_mut(), Ordering::Relaxed);
        self.add_count(1);
    }

    #[inline(always)]
    fn pop(&self) -> Option<&'a Page> {
        let head = self.head.load(Ordering::Relaxed);
        // SAFETY: the list holds only entries pushed as `&'a Page`.
        let page: &'a Page = unsafe { head.as_ref()? };
        self.head
            .store(page.pcp().next.load(Ordering::Relaxed), Ordering::Relaxed);
        self.add_count(-1);
        Some(page)
    }

    /// Take an order-0 page: Allocated, refcount 1, flags and union words
    /// clear (Linux's prep_new_page). `None` when the list is empty: the
    /// caller refills it.
    #[inline(always)]
    pub fn alloc(&self) -> Option<&'a Page> {
        let page = self.pop()?;
        // Flags are 0 on every Pcp page (checked on free, cleared by the
        // buddy allocator); the union words keep the last owner's values
        // until here.
        page.clear_union();
        page.set_refcount(1);
        page.set_page_type(PageType::Allocated);
        Some(page)
    }

    /// Free an order-0 page if it is exactly what the buddy allocator's
    /// checks want: an Allocated page with flags 0 (so order 0, no head),
    /// refcount 1 and mapping clear. `false` leaves it untouched for
    /// `BuddyAllocator::free`, which names what is wrong. Returns `true`
    /// with the list above `PCP_HIGH` handled by the caller (`over_high`).
    #[inline(always)]
    pub fn free(&self, page: &'a Page) -> bool {
        // Flags and mapping both 0: one test of the two words or-ed.
        if !(page.has_type(PageType::Allocated)
            && page.refcount() == 1
            && (page.raw_flags() | page.mapping()) == 0)
        {
            return false;
        }
        page.set_refcount(0);
        page.set_page_type(PageType::Pcp);
        self.push(page);
        true
    }

    /// Whether a free left more than `PCP_HIGH` pages here.
    #[inline(always)]
    pub fn over_high(&self) -> bool {
        self.count() > PCP_HIGH
    }

    /// Fill an empty list with up to `PCP_BATCH` pages from the zone.
    #[inline(never)]
    pub fn refill(
        &self,
        map: &MemMap<'a>,
        zone: &Mutex<BuddyAllocator<'_>>,
    ) -> Result<(), AllocError> {
        let mut z = zone.lock();
        let n = z.take_for_pcp(PCP_BATCH, |pfn| {
            self.push(&map.pages()[pfn as usize]);
        });
        if n == 0 {
            return Err(AllocError::NoMemory);
        }
        Ok(())
    }

    /// The slow half of an order-0 allocation: take a page, refilling the
    /// list from the zone when it is empty.
    pub fn alloc_or_refill(
        &self,
        map: &MemMap<'a>,
        zone: &Mutex<BuddyAllocator<'_>>,
    ) -> Result<&'a Page, AllocError> {
        if let Some(page) = self.alloc() {
            return Ok(page);
        }
        self.refill(map, zone)?;
        self.alloc().ok_or(AllocError::NoMemory)
    }

    /// A whole order-0 free by frame number: the fast path, a batch drain
    /// past `PCP_HIGH`, or the buddy allocator's checked free (which
    /// refuses misuse and says why).
    pub fn free_or_fallback(
        &self,
        map: &MemMap<'a>,
        zone: &Mutex<BuddyAllocator<'_>>,
        pfn: Pfn,
    ) -> Result<(), FreeError> {
        match map.pfn_to_page(pfn) {
            Some(page) if self.free(page) => {
                if self.over_high() {
                    self.drain(map, zone, PCP_BATCH);
                }
                Ok(())
            }
            _ => zone.lock().free(pfn, 0),
        }
    }

    /// Give up to `n` pages back to the buddy allocator.
    #[inline(never)]
    pub fn drain(&self, map: &MemMap<'_>, zone: &Mutex<BuddyAllocator<'_>>, n: u64) {
        let mut z = zone.lock();
        for _ in 0..n {
            let Some(page) = self.pop() else { break };
            // Every entry came from the memmap (`free` takes a `Pages`
            // handle's page, `refill` memmap entries); `check` reports it
            // if that ever breaks.
            if let Some(pfn) = map.page_to_pfn(page) {
                z.give_from_pcp(pfn.0);
            }
        }
    }

    /// Walk the list: every entry a Pcp page of the memmap; the count right.
    pub fn check(&self, map: &MemMap<'_>) -> Result<u64, Pfn> {
        let mut n = 0;
        let mut cur = self.head.load(Ordering::Relaxed);
        while !cur.is_null() {
            // Nothing is read through `cur` before it is known to be an
            // entry of the memmap.
            let Some(pfn) = map.entry_to_pfn(cur) else {
                return Err(Pfn(cur as u64));
            };
            let page = &map.pages()[pfn.0 as usize];
            if !page.has_type(PageType::Pcp) || n >= map.nr_pages() {
                return Err(pfn);
            }
            n += 1;
            cur = page.pcp().next.load(Ordering::Relaxed);
        }
        if n != self.count() {
            return Err(Pfn(u64::MAX));
        }
        Ok(n)
    }
}
