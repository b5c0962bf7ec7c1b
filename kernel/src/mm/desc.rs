//! The descriptor allocator of the memdesc layout: a small slab allocator
//! of 16-byte aligned objects, one cache per descriptor type (`ptdesc`,
//! the gmap table descriptor), as the memdesc plan asks ("allocated from a
//! slab which has its alignment set to 16 bytes"). Linux: mm/slub.c's
//! kmem_cache, reduced to fixed-size objects in order-0 slabs.
//!
//! A slab is one page from the buddy allocator, typed `DescSlab` in its
//! memdesc word (it needs no descriptor itself, so allocating one never
//! recurses). The page starts with a `SlabHeader` (a bitmap of the objects
//! in use); objects follow at `SLAB_HEADER` + k * size.
//!
//! **Type-stable.** A slab page, once a cache has it, stays that cache's
//! for good (Linux gets the same from SLAB_TYPESAFE_BY_RCU, which the
//! memdesc plan requires "as some page walkers will attempt to look up the
//! memdesc from the page" without a reference). `page_ptdesc` and the other
//! raw lookups hand out `&'static` descriptor views, as the overlay does
//! for its never-freed memmap: a view kept past its table's dtor reads a
//! freed or reused descriptor of the same type, stale but memory-safe (all
//! atomics; its back-pointer always names a memmap entry: freeing never
//! overwrites an object, and allocation does not zero it, the ctor writes
//! every field). The cost: descriptor memory never shrinks below its peak
//! (at most the "memory full of page tables" figure of `x.py bench`). The
//! pages count with the free pages for leak checks
//! (`nr_free_pages_and_desc_slabs`): a cache of pages the allocator keeps,
//! as the per-CPU lists are.
//!
//! A descriptor allocation counts as an allocation for fault injection
//! (`fail.alloc=N`): a ctor whose descriptor cannot be had fails cleanly.
//!
//! SMP: one lock per cache; taken with interruptions disabled like all
//! kernel code, never from an interruption handler, and it may take the
//! page allocator's locks inside it (never the reverse).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use super::addr::{Pfn, PAGE_SIZE};
use super::page::PageType;
use super::AllocFlags;

/// Bytes at the start of a slab page before its first object.
const SLAB_HEADER: usize = 64;
/// Object alignment (the memdesc word's 4 type bits).
pub const DESC_ALIGN: usize = 16;
/// Objects a slab's bitmap can track.
const MAX_PER_SLAB: usize = 128;

/// The start of a slab page.
#[repr(C)]
struct SlabHeader {
    /// The cache's id (`DescCache::id`): the checker and `free` match it.
    cache: AtomicU64,
    inuse: AtomicU64,
    /// Bit k set: object k is in use.
    map: [AtomicU64; 2],
    /// Partial-list links: pfn + 1 of the neighbour slab (0: none).
    next: AtomicU64,
    prev: AtomicU64,
}

const _: () = assert!(core::mem::size_of::<SlabHeader>() <= SLAB_HEADER);

struct CacheState {
    /// First slab with a free object (pfn + 1, 0: none).
    partial: u64,
}

/// A cache of descriptors of one type and size.
pub struct DescCache {
    pub name: &'static str,
    id: u64,
    size: usize,
    state: Mutex<CacheState>,
    /// Objects handed out and not freed.
    inuse: AtomicU64,
    /// Slab pages held (never given back: type-stable).
    slabs: AtomicU64,
}

/// Why a descriptor could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescError {
    /// No page for a new slab (or fault injection said no).
    NoMemory,
}

impl DescCache {
    pub const fn new(name: &'static str, id: u64, size: usize) -> Self {
        assert!(size.is_multiple_of(DESC_ALIGN) && size >= 16);
        assert!((PAGE_SIZE as usize - SLAB_HEADER) / size <= MAX_PER_SLAB);
        Self {
            name,
            id,
            size,
            state: Mutex::new(CacheState { partial: 0 }),
            inuse: AtomicU64::new(0),
            slabs: AtomicU64::new(0),
        }
    }

    /// Object size in bytes.
    pub const fn size(&self) -> usize {
        self.size
    }

    /// Objects per slab.
    pub const fn per_slab(&self) -> usize {
        (PAGE_SIZE as usize - SLAB_HEADER) / self.size
    }

    pub fn inuse(&self) -> u64 {
        self.inuse.load(Ordering::Relaxed)
    }

    pub fn slabs(&self) -> u64 {
        self.slabs.load(Ordering::Relaxed)
    }

    fn header(pfn: u64) -> &'static SlabHeader {
        let p = super::memmap().frame_ptr(Pfn(pfn)).cast::<SlabHeader>();
        // SAFETY: `pfn` is a slab page of this allocator (typed DescSlab,
        // a cache's for good), whose first bytes are the header (atomics).
        unsafe { &*p }
    }

    fn offset(&self, k: u64) -> u64 {
        SLAB_HEADER as u64 + k * self.size as u64
    }

    /// A new slab: a page, typed DescSlab, every object free.
    fn grow(&self) -> Result<u64, DescError> {
        let p = super::alloc_pages(0, AllocFlags::ZERO).map_err(|_| DescError::NoMemory)?;
        let (pfn, _) = p.into_raw();
        if let Some(page) = super::pfn_to_page(pfn) {
            page.set_page_type(PageType::DescSlab);
        }
        Self::header(pfn.0).cache.store(self.id, Ordering::Relaxed);
        self.slabs.fetch_add(1, Ordering::Relaxed);
        Ok(pfn.0)
    }

    fn list_add(st: &mut CacheState, pfn: u64) {
        let h = Self::header(pfn);
        h.next.store(st.partial, Ordering::Relaxed);
        h.prev.store(0, Ordering::Relaxed);
        if st.partial != 0 {
            Self::header(st.partial - 1)
                .prev
                .store(pfn + 1, Ordering::Relaxed);
        }
        st.partial = pfn + 1;
    }

    fn list_del(st: &mut CacheState, pfn: u64) {
        let h = Self::header(pfn);
        let (next, prev) = (
            h.next.load(Ordering::Relaxed),
            h.prev.load(Ordering::Relaxed),
        );
        if prev == 0 {
            st.partial = next;
        } else {
            Self::header(prev - 1).next.store(next, Ordering::Relaxed);
        }
        if next != 0 {
            Self::header(next - 1).prev.store(prev, Ordering::Relaxed);
        }
        h.next.store(0, Ordering::Relaxed);
        h.prev.store(0, Ordering::Relaxed);
    }

    /// The lowest free object of a slab (`None`: full).
    fn first_free(&self, h: &SlabHeader) -> Option<u64> {
        let n = self.per_slab() as u64;
        (0..2).find_map(|w| {
            let free = !h.map[w].load(Ordering::Relaxed);
            let k = w as u64 * 64 + free.trailing_zeros() as u64;
            (free != 0 && k < n).then_some(k)
        })
    }

    /// An object, 16-byte aligned, *not* zeroed (a stale view may be
    /// reading it: the ctor writes every field).
    pub fn alloc(&self) -> Result<NonNull<u8>, DescError> {
        if super::fail::should_fail() {
            return Err(DescError::NoMemory);
        }
        let mut st = self.state.lock();
        if st.partial == 0 {
            let pfn = self.grow()?;
            Self::list_add(&mut st, pfn);
        }
        let pfn = st.partial - 1;
        let h = Self::header(pfn);
        let Some(k) = self.first_free(h) else {
            // A full slab on the partial list: the list is corrupt.
            drop(st);
            crate::bug::report(
                "mm",
                format_args!(
                    "desc: full slab {pfn:#x} on the partial list of {}",
                    self.name
                ),
            );
            return Err(DescError::NoMemory);
        };
        h.map[(k / 64) as usize].fetch_or(1 << (k % 64), Ordering::Relaxed);
        h.inuse.fetch_add(1, Ordering::Relaxed);
        if self.first_free(h).is_none() {
            Self::list_del(&mut st, pfn);
        }
        drop(st);
        self.inuse.fetch_add(1, Ordering::Relaxed);
        let ptr = super::memmap()
            .frame_ptr(Pfn(pfn))
            .wrapping_add(self.offset(k) as usize);
        NonNull::new(ptr).ok_or(DescError::NoMemory)
    }

    /// The slab pfn and object index of `addr`, if it is an object of this
    /// cache's slabs (address arithmetic and the slab's header only).
    pub fn locate(&self, addr: u64) -> Option<(u64, u64)> {
        let map = super::memmap();
        let base = map.frame_ptr(Pfn(0)) as u64;
        let pfn = addr.checked_sub(base)? / PAGE_SIZE;
        let off = (addr - base) % PAGE_SIZE;
        let page = map.pfn_to_page(Pfn(pfn))?;
        if !page.has_type(PageType::DescSlab)
            || Self::header(pfn).cache.load(Ordering::Relaxed) != self.id
        {
            return None;
        }
        let rel = off.checked_sub(SLAB_HEADER as u64)?;
        let k = rel / self.size as u64;
        (rel.is_multiple_of(self.size as u64) && k < self.per_slab() as u64).then_some((pfn, k))
    }

    /// Whether the object at `addr` is allocated now.
    pub fn is_allocated(&self, addr: u64) -> bool {
        self.locate(addr).is_some_and(|(pfn, k)| {
            Self::header(pfn).map[(k / 64) as usize].load(Ordering::Relaxed) & (1 << (k % 64)) != 0
        })
    }

    /// Give an object back. Its memory is left as it is (stale views may
    /// read it); a pointer that is not an allocated object of this cache is
    /// reported (a BUG line) and changes nothing.
    ///
    /// # Safety
    /// `ptr` came from `alloc` of this cache and is not used after this by
    /// anything but stale read-only views.
    pub unsafe fn free(&self, ptr: NonNull<u8>) {
        let addr = ptr.as_ptr() as u64;
        let Some((pfn, k)) = self.locate(addr).filter(|_| self.is_allocated(addr)) else {
            crate::bug::report(
                "mm",
                format_args!(
                    "desc: {:p} is not an allocated object of cache {}",
                    ptr, self.name
                ),
            );
            return;
        };
        let mut st = self.state.lock();
        let h = Self::header(pfn);
        let was_full = self.first_free(h).is_none();
        h.map[(k / 64) as usize].fetch_and(!(1 << (k % 64)), Ordering::Relaxed);
        h.inuse.fetch_sub(1, Ordering::Relaxed);
        if was_full {
            Self::list_add(&mut st, pfn);
        }
        drop(st);
        self.inuse.fetch_sub(1, Ordering::Relaxed);
    }

    /// (slab pages, objects marked in use) of this cache, counted from the
    /// memmap and the slabs' bitmaps (the checker's count).
    pub fn count_in_slabs(&self) -> (u64, u64) {
        let map = super::memmap();
        let (mut slabs, mut objs) = (0, 0);
        for (pfn, page) in map.pages().iter().enumerate() {
            if page.has_type(PageType::DescSlab)
                && Self::header(pfn as u64).cache.load(Ordering::Relaxed) == self.id
            {
                slabs += 1;
                let h = Self::header(pfn as u64);
                objs += h
                    .map
                    .iter()
                    .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
                    .sum::<u64>();
            }
        }
        (slabs, objs)
    }
}

/// The caches: one per descriptor type.
pub static PTDESC_CACHE: DescCache =
    DescCache::new("ptdesc", 1, core::mem::size_of::<super::ptdesc::PtDesc>());
pub static GTDESC_CACHE: DescCache = DescCache::new(
    "gmap_table_desc",
    2,
    core::mem::size_of::<super::gtdesc::GmapTableDesc>(),
);

/// Bytes of slab pages the descriptor caches hold.
pub fn desc_bytes() -> u64 {
    slab_pages() * PAGE_SIZE
}

/// Slab pages the descriptor caches hold (all caches).
pub fn slab_pages() -> u64 {
    PTDESC_CACHE.slabs() + GTDESC_CACHE.slabs()
}

/// Descriptors in use now (all caches).
pub fn nr_desc() -> u64 {
    PTDESC_CACHE.inuse() + GTDESC_CACHE.inuse()
}

/// What `check` found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescStats {
    /// Pages whose word points at a ptdesc / a gmap table descriptor.
    pub ptdescs: u64,
    pub gtdescs: u64,
    /// Slab pages of both caches.
    pub slabs: u64,
}

/// An inconsistency `check` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescCheckError {
    /// The page's descriptor pointer is not an allocated object of its
    /// type's cache.
    NotAnObject { pfn: Pfn, addr: u64 },
    /// The descriptor does not name this page back (freed, or shared by
    /// two pages).
    BackPointer { pfn: Pfn, names: u64 },
    /// A descriptor's order is not a table's (its order).
    Order { pfn: Pfn, order: u32 },
    /// A slab's bitmap and in-use count disagree (or it names no cache).
    Slab { pfn: Pfn, free: u64, inuse: u64 },
    /// Slab pages of a cache in the memmap differ from its count: a slab
    /// page was lost or retyped.
    SlabCount {
        cache: &'static str,
        found: u64,
        recorded: u64,
    },
    /// Descriptors pointed to by pages, objects in use in the slabs, and
    /// the cache's count differ: a descriptor leaked (or was lost).
    Count {
        cache: &'static str,
        pointed: u64,
        in_slabs: u64,
        recorded: u64,
    },
}

/// Every descriptor pointer in the memmap against the caches: each points
/// at an object of its type's cache whose back-pointer names its page, and
/// the objects in use are exactly the ones pointed to. O(memory).
pub fn check() -> Result<DescStats, DescCheckError> {
    let map = super::memmap();
    let mut st = DescStats::default();
    for (pfn, page) in map.pages().iter().enumerate() {
        let pfn = Pfn(pfn as u64);
        let (cache, count, orders): (&DescCache, &mut u64, &[u32]) = match page.page_type() {
            Some(PageType::PageTable) => (&PTDESC_CACHE, &mut st.ptdescs, &[0, 2]),
            // Order 2: a CRST table; 0: a shadow page table.
            Some(PageType::GmapTable) => (&GTDESC_CACHE, &mut st.gtdescs, &[0, 2]),
            Some(PageType::DescSlab) => {
                let h = DescCache::header(pfn.0);
                let cache = match h.cache.load(Ordering::Relaxed) {
                    1 => &PTDESC_CACHE,
                    2 => &GTDESC_CACHE,
                    _ => {
                        return Err(DescCheckError::Slab {
                            pfn,
                            free: 0,
                            inuse: 0,
                        })
                    }
                };
                let per = cache.per_slab() as u64;
                let used: u64 = h
                    .map
                    .iter()
                    .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
                    .sum();
                // Bits past the last object must be clear.
                let spare = if per >= 128 {
                    0
                } else if per > 64 {
                    !((1u64 << (per - 64)) - 1)
                } else {
                    !0
                };
                let stray = h.map[1].load(Ordering::Relaxed) & spare != 0
                    || (per < 64 && h.map[0].load(Ordering::Relaxed) >> per != 0);
                let inuse = h.inuse.load(Ordering::Relaxed);
                if used != inuse || stray {
                    return Err(DescCheckError::Slab {
                        pfn,
                        free: per - used.min(per),
                        inuse,
                    });
                }
                st.slabs += 1;
                continue;
            }
            _ => continue,
        };
        let Some(head) = page.desc_head() else {
            return Err(DescCheckError::NotAnObject {
                pfn,
                addr: page.memdesc(),
            });
        };
        let addr = core::ptr::from_ref(head).addr() as u64;
        if !cache.is_allocated(addr) {
            return Err(DescCheckError::NotAnObject { pfn, addr });
        }
        if head.page_addr() != core::ptr::from_ref(page).addr() as u64 {
            return Err(DescCheckError::BackPointer {
                pfn,
                names: head.page_addr(),
            });
        }
        if !orders.contains(&head.order()) {
            return Err(DescCheckError::Order {
                pfn,
                order: head.order(),
            });
        }
        *count += 1;
    }
    for (cache, pointed) in [(&PTDESC_CACHE, st.ptdescs), (&GTDESC_CACHE, st.gtdescs)] {
        let (slabs, in_slabs) = cache.count_in_slabs();
        if pointed != in_slabs || pointed != cache.inuse() {
            return Err(DescCheckError::Count {
                cache: cache.name,
                pointed,
                in_slabs,
                recorded: cache.inuse(),
            });
        }
        if slabs != cache.slabs() {
            return Err(DescCheckError::SlabCount {
                cache: cache.name,
                found: slabs,
                recorded: cache.slabs(),
            });
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slab checks (private header): an in-use count that disagrees
    /// with the bitmap, and a cache whose slab count disagrees with the
    /// memmap, are each named.
    #[test]
    fn the_checker_names_a_bad_slab_and_a_lost_slab_page() {
        let _s = super::super::host_test_serial();
        let o = PTDESC_CACHE.alloc().unwrap();
        let (pfn, _) = PTDESC_CACHE.locate(o.as_ptr() as u64).unwrap();
        let h = DescCache::header(pfn);
        h.inuse.fetch_add(1, Ordering::Relaxed);
        let bad = check();
        h.inuse.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: from this cache, freed once.
        unsafe { PTDESC_CACHE.free(o) };
        assert!(matches!(bad, Err(DescCheckError::Slab { .. })), "{bad:?}");
        PTDESC_CACHE.slabs.fetch_add(1, Ordering::Relaxed);
        let lost = check();
        PTDESC_CACHE.slabs.fetch_sub(1, Ordering::Relaxed);
        assert!(
            matches!(lost, Err(DescCheckError::SlabCount { .. })),
            "{lost:?}"
        );
        assert!(check().is_ok(), "{:?}", check());
    }
}
