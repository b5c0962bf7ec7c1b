//! Per-CPU order-0 page lists (Linux's `per_cpu_pages`): order-0 frees and
//! allocations go to a short LIFO list of the CPU, without the zone lock,
//! splitting or merging; the list refills from and drains to the buddy
//! allocator in batches. Only a free that passes every check takes the
//! fast path: anything unusual goes to the buddy allocator's `free`, which
//! reports exactly what is wrong.

use core::sync::atomic::Ordering;

use spin::Mutex;

use super::addr::Pfn;
use super::buddy::{AllocError, BuddyAllocator, FreeError};
use super::memmap::MemMap;
use super::page::{PageType, NIL};

/// Linux: pcp->high and pcp->batch.
pub const PCP_HIGH: u64 = 96;
pub const PCP_BATCH: u64 = 32;

/// One CPU's list, linked through the pages' buddy-arm `next` word.
#[derive(Debug)]
pub struct PcpList {
    head: u64,
    count: u64,
}

impl Default for PcpList {
    fn default() -> Self {
        Self::new()
    }
}

impl PcpList {
    pub const fn new() -> Self {
        Self {
            head: NIL,
            count: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn push(&mut self, map: &MemMap<'_>, pfn: u64) {
        map.pages()[pfn as usize]
            .buddy()
            .buddy_list
            .next
            .store(self.head, Ordering::Relaxed);
        self.head = pfn;
        self.count += 1;
    }

    /// Take an order-0 page: Allocated, refcount 1, union words clear.
    #[inline]
    pub fn alloc<'z, 'b: 'z>(
        &mut self,
        map: &MemMap<'_>,
        zone: impl FnOnce() -> &'z Mutex<BuddyAllocator<'b>>,
    ) -> Result<Pfn, AllocError> {
        if self.head == NIL {
            self.refill(map, zone())?;
        }
        let pfn = self.head;
        let page = &map.pages()[pfn as usize];
        let link = &page.buddy().buddy_list.next;
        self.head = link.load(Ordering::Relaxed);
        self.count -= 1;
        // The other union words were cleared when the page was freed here
        // (or taken from the buddy lists); flags are 0 for any Pcp page.
        link.store(0, Ordering::Relaxed);
        page.set_refcount(1);
        page.set_page_type(PageType::Allocated);
        Ok(Pfn(pfn))
    }

    #[inline(never)]
    fn refill(
        &mut self,
        map: &MemMap<'_>,
        zone: &Mutex<BuddyAllocator<'_>>,
    ) -> Result<(), AllocError> {
        {
            let mut z = zone.lock();
            let mut got = NIL;
            let n = z.take_for_pcp(PCP_BATCH, |pfn| {
                map.pages()[pfn as usize]
                    .buddy()
                    .buddy_list
                    .next
                    .store(got, Ordering::Relaxed);
                got = pfn;
            });
            if n == 0 {
                return Err(AllocError::NoMemory);
            }
            self.head = got;
            self.count = n;
        }
        Ok(())
    }

    /// Free an order-0 page. The fast path needs exactly what the buddy
    /// allocator's checks want (an Allocated order-0 head, refcount 1,
    /// mapping clear); anything else goes to `BuddyAllocator::free`.
    #[inline]
    pub fn free<'z, 'b: 'z>(
        &mut self,
        map: &MemMap<'_>,
        zone: impl FnOnce() -> &'z Mutex<BuddyAllocator<'b>>,
        pfn: Pfn,
    ) -> Result<(), FreeError> {
        let Some(page) = map.pfn_to_page(pfn) else {
            return zone().lock().free(pfn, 0);
        };
        if !(page.has_type(PageType::Allocated)
            && page.raw_flags() == 0
            && page.refcount() == 1
            && page.mapping() == 0)
        {
            return zone().lock().free(pfn, 0);
        }
        page.set_refcount(0);
        page.set_page_type(PageType::Pcp);
        let w = page.words();
        w[1].store(0, Ordering::Relaxed);
        w[3].store(0, Ordering::Relaxed);
        w[4].store(0, Ordering::Relaxed);
        self.push(map, pfn.0);
        if self.count > PCP_HIGH {
            self.drain(map, zone(), PCP_BATCH);
        }
        Ok(())
    }

    /// Give up to `n` pages back to the buddy allocator.
    pub fn drain(&mut self, map: &MemMap<'_>, zone: &Mutex<BuddyAllocator<'_>>, n: u64) {
        let mut z = zone.lock();
        for _ in 0..n {
            if self.head == NIL {
                break;
            }
            let pfn = self.head;
            self.head = map.pages()[pfn as usize]
                .buddy()
                .buddy_list
                .next
                .load(Ordering::Relaxed);
            self.count -= 1;
            z.give_from_pcp(pfn);
        }
    }

    /// Walk the list: every entry a Pcp page; the count right.
    pub fn check(&self, map: &MemMap<'_>) -> Result<u64, Pfn> {
        let mut n = 0;
        let mut pfn = self.head;
        while pfn != NIL {
            match map.pfn_to_page(Pfn(pfn)) {
                Some(p) if p.has_type(PageType::Pcp) && n < map.nr_pages() => {}
                _ => return Err(Pfn(pfn)),
            }
            n += 1;
            pfn = map.pages()[pfn as usize]
                .buddy()
                .buddy_list
                .next
                .load(Ordering::Relaxed);
        }
        if n != self.count {
            return Err(Pfn(NIL));
        }
        Ok(n)
    }
}
