//! The descriptor allocator of the memdesc layout: a small slab allocator
//! of 16-byte aligned objects, one cache per descriptor type (`ptdesc`,
//! the gmap table descriptor), as the memdesc plan asks ("allocated from a
//! slab which has its alignment set to 16 bytes"). Linux: mm/slub.c's
//! kmem_cache, reduced to fixed-size objects in order-0 slabs.
//!
//! A slab is one page from the buddy allocator, typed `DescSlab` in its
//! memdesc word (it needs no descriptor itself, so allocating one never
//! recurses). The page starts with a `SlabHeader`; objects follow at
//! `SLAB_HEADER` + k * size. Free objects are linked through their first
//! word (which in a live descriptor is the back-pointer to its page, so a
//! freed descriptor can never pass the checker's back-pointer test).
//! Slabs with a free object are on the cache's partial list; a slab whose
//! last object is freed goes back to the buddy allocator at once, so a
//! test case that allocates and frees descriptors leaves the free-page
//! count as it found it.
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
use super::{AllocFlags, Pages};

/// Bytes at the start of a slab page before its first object.
const SLAB_HEADER: usize = 64;
/// Object alignment (the memdesc word's 4 type bits).
pub const DESC_ALIGN: usize = 16;

/// The start of a slab page.
#[repr(C)]
struct SlabHeader {
    /// The cache's id (`DescCache::id`): the checker and `free` match it.
    cache: AtomicU64,
    /// Offset of the first free object in the page (0: none).
    free: AtomicU64,
    inuse: AtomicU64,
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
    /// Slab pages held.
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
        // owned by the cache while it is), whose first bytes are the header
        // (all atomics).
        unsafe { &*p }
    }

    fn obj_word(pfn: u64, off: u64) -> &'static AtomicU64 {
        let p = super::memmap()
            .frame_ptr(Pfn(pfn))
            .wrapping_add(off as usize)
            .cast::<AtomicU64>();
        // SAFETY: `off` is an object offset inside the slab page; a free
        // object's first word is its free-list link.
        unsafe { &*p }
    }

    /// A new slab: a page, typed DescSlab, every object on its free list.
    fn grow(&self) -> Result<u64, DescError> {
        let p = super::alloc_pages(0, AllocFlags::ZERO).map_err(|_| DescError::NoMemory)?;
        let (pfn, _) = p.into_raw();
        if let Some(page) = super::pfn_to_page(pfn) {
            page.set_page_type(PageType::DescSlab);
        }
        let h = Self::header(pfn.0);
        h.cache.store(self.id, Ordering::Relaxed);
        let n = self.per_slab() as u64;
        let first = SLAB_HEADER as u64;
        for k in 0..n {
            let off = first + k * self.size as u64;
            let next = if k + 1 < n { off + self.size as u64 } else { 0 };
            Self::obj_word(pfn.0, off).store(next, Ordering::Relaxed);
        }
        h.free.store(first, Ordering::Relaxed);
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

    /// A zeroed object, 16-byte aligned.
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
        let off = h.free.load(Ordering::Relaxed);
        debug_assert!(off != 0, "a partial slab with no free object");
        let next = Self::obj_word(pfn, off).load(Ordering::Relaxed);
        h.free.store(next, Ordering::Relaxed);
        h.inuse.fetch_add(1, Ordering::Relaxed);
        if next == 0 {
            Self::list_del(&mut st, pfn);
        }
        drop(st);
        self.inuse.fetch_add(1, Ordering::Relaxed);
        let ptr = super::memmap()
            .frame_ptr(Pfn(pfn))
            .wrapping_add(off as usize);
        // SAFETY: the object is ours alone now (off the free list), `size`
        // bytes inside the slab page.
        unsafe { core::ptr::write_bytes(ptr, 0, self.size) };
        NonNull::new(ptr).ok_or(DescError::NoMemory)
    }

    /// The slab pfn and object offset of `ptr`, if it is an object of this
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
        (rel.is_multiple_of(self.size as u64) && rel / (self.size as u64) < self.per_slab() as u64)
            .then_some((pfn, off))
    }

    /// Give an object back.
    ///
    /// # Safety
    /// `ptr` came from `alloc` of this cache, is not used after this, and
    /// is not freed twice.
    pub unsafe fn free(&self, ptr: NonNull<u8>) {
        let Some((pfn, off)) = self.locate(ptr.as_ptr() as u64) else {
            crate::bug::report(
                "mm",
                format_args!("desc: {:p} is not an object of cache {}", ptr, self.name),
            );
            return;
        };
        let mut st = self.state.lock();
        let h = Self::header(pfn);
        let head = h.free.load(Ordering::Relaxed);
        Self::obj_word(pfn, off).store(head, Ordering::Relaxed);
        h.free.store(off, Ordering::Relaxed);
        let left = h.inuse.fetch_sub(1, Ordering::Relaxed) - 1;
        if head == 0 {
            // It was full: it has a free object now.
            Self::list_add(&mut st, pfn);
        }
        let empty = left == 0;
        if empty {
            Self::list_del(&mut st, pfn);
            h.cache.store(0, Ordering::Relaxed);
        }
        drop(st);
        self.inuse.fetch_sub(1, Ordering::Relaxed);
        if empty {
            if let Some(page) = super::pfn_to_page(Pfn(pfn)) {
                page.set_page_type(PageType::Allocated);
            }
            self.slabs.fetch_sub(1, Ordering::Relaxed);
            // SAFETY: the slab was allocated as order 0 by `grow` and has
            // no object in use; nothing reaches it any more.
            let p = unsafe { Pages::from_raw(Pfn(pfn), 0) };
            if let Err((p, _)) = super::free_pages(p) {
                // Reported by free_pages; keep the page out of circulation.
                let _ = p.into_raw();
            }
        }
    }

    /// Objects marked in use in the slabs' headers, counted by walking
    /// the memmap for this cache's slab pages (the checker's count).
    pub fn count_inuse_in_slabs(&self) -> (u64, u64) {
        let map = super::memmap();
        let (mut slabs, mut objs) = (0, 0);
        for (pfn, page) in map.pages().iter().enumerate() {
            if page.has_type(PageType::DescSlab)
                && Self::header(pfn as u64).cache.load(Ordering::Relaxed) == self.id
            {
                slabs += 1;
                objs += Self::header(pfn as u64).inuse.load(Ordering::Relaxed);
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

/// Bytes of slab pages holding descriptors now.
pub fn desc_bytes() -> u64 {
    (PTDESC_CACHE.slabs() + GTDESC_CACHE.slabs()) * PAGE_SIZE
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
    /// The page's descriptor pointer is not an object of its type's cache.
    NotAnObject { pfn: Pfn, addr: u64 },
    /// The descriptor does not name this page back (freed, or shared by
    /// two pages).
    BackPointer { pfn: Pfn, names: u64 },
    /// A descriptor's order is not a table's (its order).
    Order { pfn: Pfn, order: u32 },
    /// A slab's free list and in-use count do not add up to its objects.
    Slab { pfn: Pfn, free: u64, inuse: u64 },
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
            Some(PageType::GmapTable) => (&GTDESC_CACHE, &mut st.gtdescs, &[2]),
            Some(PageType::DescSlab) => {
                let h = DescCache::header(pfn.0);
                let size = match h.cache.load(Ordering::Relaxed) {
                    1 => PTDESC_CACHE.size,
                    2 => GTDESC_CACHE.size,
                    _ => 0,
                };
                let per = (PAGE_SIZE as usize - SLAB_HEADER)
                    .checked_div(size)
                    .unwrap_or(0) as u64;
                let mut free = 0;
                let mut off = h.free.load(Ordering::Relaxed);
                while off != 0 && free <= per {
                    free += 1;
                    off = DescCache::obj_word(pfn.0, off % PAGE_SIZE).load(Ordering::Relaxed);
                }
                let inuse = h.inuse.load(Ordering::Relaxed);
                if size == 0 || free + inuse != per {
                    return Err(DescCheckError::Slab { pfn, free, inuse });
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
        if cache.locate(addr).is_none() {
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
        let (_, in_slabs) = cache.count_inuse_in_slabs();
        if pointed != in_slabs || pointed != cache.inuse() {
            return Err(DescCheckError::Count {
                cache: cache.name,
                pointed,
                in_slabs,
                recorded: cache.inuse(),
            });
        }
    }
    Ok(st)
}
