//! gmap: guest address spaces whose segments share PTE tables with a host
//! address space (s390 KVM before 2025). A gmap has its own region and
//! segment tables (gmap tables, their own descriptor type); linking a guest
//! segment copies the host's segment entry, so the gmap segment points at
//! the host's PTE table and one PTE change is seen by host and guests.
//! Names follow Linux's arch/s390/mm/gmap.c where the concept is the same.
//!
//! Host aliasing is refused, not modelled: within one gmap a host segment
//! backs at most one guest segment (`gmap_map_segment` refuses a host range
//! overlapping one it maps already, `gmap_link` a host segment linked to
//! another guest segment; both `HostAliased`). Linux's `__gmap_link` refuses
//! the same (-EEXIST when the host_to_guest radix tree has the slot), and it
//! keeps `host_to_guest` single-valued, so when the host frees a PTE table
//! `gmap_unlink` finds the one guest segment pointing at it and nothing is
//! left pointing at freed memory. A multi-valued reverse map would allow
//! aliases, at the cost of a list per host segment to keep exact. Other
//! gmaps of the same host may map the same host segment: each has its own
//! reverse map.

pub mod host;
pub mod notify;
pub mod table;

#[cfg(target_arch = "s390x")]
pub mod guest;
#[cfg(target_os = "none")]
mod ktests;

use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use crate::dat::entry::{Asce, Level, RegionEntry, SegmentEntry, SEGMENT_SIZE};
// Lock order: a host's lock (HostMm), then the GMAPS registry, then a gmap's
// own lock. The host's hooks (unlink, notify, alias purge, segment change)
// run under the host lock, the PTE ones also under a ptlock, and take the
// registry and gmap locks after it (host, ptlock, gmap), while
// gmap_protect_range takes host, gmap, then a ptlock (through populate).
// The two orders of gmap lock and ptlock never meet because both hold the
// host lock first. The hooks allocate (the list of gmaps) under the
// ptlock: allowed, since the allocator takes no page-table lock.
use crate::dat::space::{self, SpaceHooks};
use crate::dat::table::entry;
use crate::dat::tlb;
use crate::mm::addr::PhysAddr;
pub use host::HostMm;
use table::{gmap_alloc_table, gmap_free_table};

/// Errors of gmap operations; the gmap (and its host) is unchanged when one
/// is returned (except `FreeRefused`, which names what a teardown left).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GmapError {
    NoMemory,
    /// Not aligned to a segment (1 MiB; a page for `gmap_protect_range`),
    /// or a zero length.
    Misaligned,
    /// Beyond the gmap's limit (or the host's).
    OutOfRange,
    /// The guest range is mapped already.
    AlreadyMapped,
    /// No guest-to-host mapping (or the host has no page table there).
    NotMapped,
    /// The host range is mapped or linked already by another guest segment
    /// of this gmap (Linux `__gmap_link`: -EEXIST).
    HostAliased,
    /// `gmap_link`: the guest segment is mapped, but not to that host
    /// segment.
    HostMismatch,
    /// The gmap's host no longer holds the address space the gmap was
    /// created over (its `HostMm` was swapped with another): refused.
    HostReplaced,
    /// `gmap_remove`: this many gmap tables could not be freed (the
    /// allocator refused them and printed a `BUG: Bad page state` line for
    /// each); they stay allocated. Everything else was torn down.
    FreeRefused(u64),
}

/// What a guest access wants (for `gmap_fault`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

static NEXT_GMAP: AtomicU64 = AtomicU64::new(1);

/// The entry pointing at a gmap table: (parent table, its level, a guest
/// address the entry covers).
type ParentEntry = (PhysAddr, Level, u64);

/// One of a gmap's tables: the owned table, its level, and the entry
/// pointing at it (none for the top table).
struct GmapTableRec {
    table: table::GmapTable,
    level: Level,
    parent: Option<ParentEntry>,
}

impl GmapTableRec {
    fn pa(&self) -> PhysAddr {
        self.table.phys()
    }
}

pub(crate) struct GmapInner {
    id: u64,
    asce: Asce,
    /// Highest guest address (Linux asce_end semantics: `limit` itself is
    /// the last valid address).
    limit: u64,
    parent: Arc<Mutex<HostMm>>,
    parent_id: u64,
    /// The host space's limit (fixed at its creation).
    host_limit: u128,
    /// Guest segment → host segment (1 MiB units, by address).
    guest_to_host: BTreeMap<u64, u64>,
    /// Host segment → guest segment, for linked segments.
    host_to_guest: BTreeMap<u64, u64>,
    /// Every gmap table (real addresses), the top first, each with the
    /// entry that points at it (parent table, its level, a guest address it
    /// covers); the top has none.
    tables: Vec<GmapTableRec>,
    /// Counters: links made, unlinks done.
    links: u64,
    unlinks: u64,
}

/// A gmap failure no caller can be told about: a counted `BUG:` line
/// (`crate::bug`).
pub(crate) fn report_bug(what: core::fmt::Arguments<'_>) {
    crate::bug::report("gmap", what);
}

/// Every live gmap, so the parent's hooks can find the ones it has.
static GMAPS: Mutex<Vec<Weak<Mutex<GmapInner>>>> = Mutex::new(Vec::new());

/// A guest address space attached to a host.
pub struct Gmap {
    inner: Arc<Mutex<GmapInner>>,
}

fn install_hooks() {
    space::set_hooks(SpaceHooks {
        table_unlink: gmap_unlink,
        pte_notify: notify::ptep_notify,
        pte_alias_purge: gmap_pte_alias_purge,
        segment_change: gmap_segment_change,
    });
}

/// The level of the top table for a gmap whose last address is `limit`
/// (Linux gmap_alloc: limit < 2 GiB segment, < 4 TiB region-third,
/// < 8 PiB region-second, else region-first).
pub fn gmap_level(limit: u64) -> Level {
    if limit < 1 << 31 {
        Level::Segment
    } else if limit < 1 << 42 {
        Level::Region3
    } else if limit < 1 << 53 {
        Level::Region2
    } else {
        Level::Region1
    }
}

/// Lock a gmap's host (the first lock of the lock order; never from a
/// space hook, which runs with the host locked already).
fn lock_host(parent: &Arc<Mutex<HostMm>>) -> spin::MutexGuard<'_, HostMm> {
    debug_assert!(
        !space::in_space_hook(),
        "BUG: gmap takes a host lock inside a space hook"
    );
    parent.lock()
}

/// A host error as the gmap reports it.
fn space_error(e: space::SpaceError) -> GmapError {
    match e {
        space::SpaceError::NoMemory => GmapError::NoMemory,
        space::SpaceError::Misaligned => GmapError::Misaligned,
        space::SpaceError::OutOfRange => GmapError::OutOfRange,
        space::SpaceError::AlreadyMapped => GmapError::AlreadyMapped,
        space::SpaceError::NotMapped => GmapError::NotMapped,
    }
}

/// `gmap_create`: a gmap for guest addresses `0..=limit` over `parent`.
pub fn gmap_create(parent: &Arc<Mutex<HostMm>>, limit: u64) -> Result<Gmap, GmapError> {
    install_hooks();
    let id = NEXT_GMAP.fetch_add(1, Ordering::Relaxed);
    let level = gmap_level(limit);
    let top = gmap_alloc_table(id, level, 0).map_err(|_| GmapError::NoMemory)?;
    // Cannot fail (a CRST is 16 KiB aligned); `top` goes back if it does.
    let asce = Asce::new(top.phys(), level).map_err(|_| GmapError::NoMemory)?;
    let (parent_id, host_limit) = {
        let h = lock_host(parent);
        (h.space().id(), h.space().max_limit())
    };
    let inner = Arc::new(Mutex::new(GmapInner {
        id,
        asce,
        limit,
        parent: parent.clone(),
        parent_id,
        host_limit,
        guest_to_host: BTreeMap::new(),
        host_to_guest: BTreeMap::new(),
        tables: alloc::vec![GmapTableRec {
            table: top,
            level,
            parent: None,
        }],
        links: 0,
        unlinks: 0,
    }));
    let mut all = GMAPS.lock();
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(&inner));
    Ok(Gmap { inner })
}

fn seg(a: u64) -> u64 {
    a & !(SEGMENT_SIZE - 1)
}

impl GmapInner {
    fn check_segments(&self, gaddr: u64, len: u64) -> Result<(), GmapError> {
        if len == 0 || !gaddr.is_multiple_of(SEGMENT_SIZE) || !len.is_multiple_of(SEGMENT_SIZE) {
            return Err(GmapError::Misaligned);
        }
        let last = gaddr.checked_add(len - 1).ok_or(GmapError::OutOfRange)?;
        if last > self.limit {
            return Err(GmapError::OutOfRange);
        }
        Ok(())
    }

    /// The real address of the gmap segment entry for `gaddr`, allocating
    /// missing gmap region/segment tables if `alloc`.
    fn segment_entry(&mut self, gaddr: u64, alloc: bool) -> Result<Option<PhysAddr>, GmapError> {
        self.entry_at(gaddr, Level::Segment, alloc)
    }

    /// The real address of the entry for `gaddr` in the gmap table of
    /// `level` (`None` if `level` is above the top, or a table above it is
    /// missing and not `alloc`), allocating missing gmap tables if `alloc`.
    fn entry_at(
        &mut self,
        gaddr: u64,
        stop: Level,
        alloc: bool,
    ) -> Result<Option<PhysAddr>, GmapError> {
        if gaddr > self.limit {
            return Err(GmapError::OutOfRange);
        }
        let mut level = self.asce.level();
        if stop > level {
            return Ok(None);
        }
        let mut tbl = self.asce.origin();
        while level != stop {
            let Some(lower) = level.lower() else {
                return Ok(None);
            };
            let ea = PhysAddr(tbl.0 + level.index(gaddr) as u64 * 8);
            // SAFETY: an entry of a live gmap table.
            let slot = unsafe { entry(ea) };
            let e = RegionEntry::from_raw(slot.load(Ordering::Acquire));
            tbl = if e.is_invalid() {
                if !alloc {
                    return Ok(None);
                }
                let cover = 1u64 << (lower.shift() + 11);
                let t = gmap_alloc_table(self.id, lower, gaddr & !cover.wrapping_sub(1))
                    .map_err(|_| GmapError::NoMemory)?;
                let pa = t.phys();
                // Cannot fail (a CRST is 16 KiB aligned); `t` goes back if
                // it does.
                let e = RegionEntry::table(level, pa).map_err(|_| GmapError::NoMemory)?;
                // The list owns the table from here; the entry only points
                // at it. Invalid → valid needs no invalidation.
                self.tables.push(GmapTableRec {
                    table: t,
                    level: lower,
                    parent: Some((tbl, level, gaddr)),
                });
                slot.store(e.raw(), Ordering::Release);
                pa
            } else {
                e.next_origin()
            };
            level = lower;
        }
        Ok(Some(PhysAddr(tbl.0 + stop.index(gaddr) as u64 * 8)))
    }

    fn translate(&self, gaddr: u64) -> Result<u64, GmapError> {
        if gaddr > self.limit {
            return Err(GmapError::OutOfRange);
        }
        self.guest_to_host
            .get(&seg(gaddr))
            .map(|h| h + (gaddr - seg(gaddr)))
            .ok_or(GmapError::NotMapped)
    }

    /// `__gmap_link` under the host lock (`host`) and the gmap lock: see
    /// `Gmap::gmap_link`. Returns whether it linked the segment (false: it
    /// was linked already, nothing changed).
    fn link(&mut self, host: &HostMm, gaddr: u64, vmaddr: u64) -> Result<bool, GmapError> {
        if host.space().id() != self.parent_id {
            return Err(GmapError::HostReplaced);
        }
        if gaddr > self.limit || vmaddr as u128 >= self.host_limit {
            return Err(GmapError::OutOfRange);
        }
        if self
            .host_to_guest
            .get(&seg(vmaddr))
            .is_some_and(|&other| other != seg(gaddr))
        {
            return Err(GmapError::HostAliased);
        }
        match self.guest_to_host.get(&seg(gaddr)) {
            None => return Err(GmapError::NotMapped),
            Some(&h) if h != seg(vmaddr) => return Err(GmapError::HostMismatch),
            Some(_) => {}
        }
        let host_seg = host.space().segment_entry(vmaddr);
        if host_seg.is_invalid() {
            return Err(GmapError::NotMapped);
        }
        let tables_before = self.tables.len();
        let ea = match self.segment_entry(gaddr, true) {
            Ok(Some(ea)) => ea,
            Ok(None) => return Err(GmapError::NotMapped),
            Err(e) => {
                self.free_tables_from(tables_before);
                return Err(e);
            }
        };
        // SAFETY: an entry of a live gmap segment table.
        let slot = unsafe { entry(ea) };
        let cur = SegmentEntry::from_raw(slot.load(Ordering::Acquire));
        let new = SegmentEntry::from_raw(host_seg.hardware_bits());
        if !cur.is_invalid() && cur.page_table() == new.page_table() {
            return Ok(false);
        }
        if !cur.is_invalid() {
            // Linked to another host table: relink (IDTE first).
            self.unlink_gaddr(gaddr);
        }
        // Invalid → valid needs no invalidation.
        slot.store(new.raw(), Ordering::Release);
        self.host_to_guest.insert(seg(vmaddr), seg(gaddr));
        self.links += 1;
        Ok(true)
    }

    /// If the gmap segment entry at `ea` (for `gaddr`) is valid, invalidate
    /// it (IDTE: the TLBs may hold translations through it) and store
    /// `new`. Returns whether it was valid.
    fn replace_segment_entry(ea: PhysAddr, gaddr: u64, new: SegmentEntry) -> bool {
        // SAFETY: an entry of a live gmap segment table (callers found it
        // by walking this gmap's tables under its lock).
        let slot = unsafe { entry(ea) };
        if SegmentEntry::from_raw(slot.load(Ordering::Acquire)).is_invalid() {
            return false;
        }
        let table = crate::dat::table::table_of_entry(ea);
        // SAFETY: the live gmap segment table holding the entry.
        unsafe { tlb::idte(table, Level::Segment, gaddr) };
        slot.store(new.raw(), Ordering::Release);
        true
    }

    /// Undo a link `link` just made (a failed operation): the entry goes
    /// (IDTE first), and so do its reverse mapping and its count.
    fn undo_link(&mut self, gseg: u64, hseg: u64) {
        if let Ok(Some(ea)) = self.segment_entry(gseg, false) {
            Self::replace_segment_entry(ea, gseg, SegmentEntry::empty());
        }
        self.host_to_guest.remove(&hseg);
        self.links -= 1;
    }

    /// Invalidate the gmap segment entry for `gaddr` if valid (IDTE) and
    /// forget its host link.
    fn unlink_gaddr(&mut self, gaddr: u64) {
        let Ok(Some(ea)) = self.segment_entry(gaddr, false) else {
            return;
        };
        if Self::replace_segment_entry(ea, gaddr, SegmentEntry::empty()) {
            self.unlinks += 1;
        }
        self.host_to_guest.retain(|_, g| *g != seg(gaddr));
    }
}

impl Gmap {
    pub fn id(&self) -> u64 {
        self.inner.lock().id
    }

    pub fn asce(&self) -> Asce {
        self.inner.lock().asce
    }

    pub fn limit(&self) -> u64 {
        self.inner.lock().limit
    }

    pub fn parent(&self) -> Arc<Mutex<HostMm>> {
        self.inner.lock().parent.clone()
    }

    /// (links made, unlinks done) over the gmap's life.
    pub fn link_counts(&self) -> (u64, u64) {
        let g = self.inner.lock();
        (g.links, g.unlinks)
    }

    /// Gmap table pages this gmap holds.
    pub fn table_pages(&self) -> u64 {
        self.inner.lock().tables.len() as u64 * 4
    }

    /// `gmap_map_segment`: guest `[to, to+len)` is host `[from, from+len)`,
    /// in 1 MiB segments. Refused (nothing changed) if unaligned, empty,
    /// beyond either limit, or overlapping a guest range mapped already.
    pub fn gmap_map_segment(&self, from: u64, to: u64, len: u64) -> Result<(), GmapError> {
        let mut g = self.inner.lock();
        g.check_segments(to, len)?;
        if !from.is_multiple_of(SEGMENT_SIZE) {
            return Err(GmapError::Misaligned);
        }
        let host_end = from.checked_add(len).ok_or(GmapError::OutOfRange)?;
        if host_end as u128 > g.host_limit {
            return Err(GmapError::OutOfRange);
        }
        // `to + len` may be 2^64 (a range ending at the top of a region-first
        // gmap): the range is inclusive.
        if g.guest_to_host.range(to..=to + (len - 1)).next().is_some() {
            return Err(GmapError::AlreadyMapped);
        }
        // One host segment backs at most one guest segment of a gmap.
        if g.guest_to_host.values().any(|&h| h >= from && h < host_end) {
            return Err(GmapError::HostAliased);
        }
        let mut off = 0;
        while off < len {
            g.guest_to_host.insert(to + off, from + off);
            off += SEGMENT_SIZE;
        }
        Ok(())
    }

    /// `gmap_unmap_segment`: drop guest `[to, to+len)`, unlinking what is
    /// linked. Every segment must be mapped.
    pub fn gmap_unmap_segment(&self, to: u64, len: u64) -> Result<(), GmapError> {
        let mut g = self.inner.lock();
        g.check_segments(to, len)?;
        let mut off = 0;
        while off < len {
            if !g.guest_to_host.contains_key(&(to + off)) {
                return Err(GmapError::NotMapped);
            }
            off += SEGMENT_SIZE;
        }
        let mut off = 0;
        while off < len {
            g.guest_to_host.remove(&(to + off));
            g.unlink_gaddr(to + off);
            off += SEGMENT_SIZE;
        }
        Ok(())
    }

    /// `gmap_translate`: the host address of guest address `gaddr`.
    pub fn gmap_translate(&self, gaddr: u64) -> Result<u64, GmapError> {
        self.inner.lock().translate(gaddr)
    }

    /// `__gmap_link`: make the gmap segment for `gaddr` point at the host's
    /// PTE table for `vmaddr` (copying the host segment entry's hardware
    /// bits) and record host-to-guest. `vmaddr` must be in the host segment
    /// `gaddr` is mapped to (`gmap_translate`), that host segment must not
    /// be linked to another guest segment of this gmap (`HostAliased`, as
    /// Linux's -EEXIST), and the host must have a page table there. Linking
    /// a linked segment again changes nothing.
    pub fn gmap_link(&self, gaddr: u64, vmaddr: u64) -> Result<(), GmapError> {
        // Lock order: host, then gmap (the host's unlink and notify hooks
        // run with the host locked and take the gmap lock). Holding the
        // host lock also keeps its PTE table from being freed until the
        // gmap entry points at it.
        let parent = self.parent();
        let host = lock_host(&parent);
        let r = self.inner.lock().link(&host, gaddr, vmaddr);
        r.map(|_| ())
    }

    /// `gmap_fault`: resolve a guest access to `gaddr`: translate to the
    /// host address, populate the host page if missing, link the segment.
    /// Returns the host address. A host page populated stays populated if
    /// the link then fails (as a VMM's memory would).
    pub fn gmap_fault(&self, gaddr: u64, access: Access) -> Result<u64, GmapError> {
        let parent = self.parent();
        let mut host = lock_host(&parent);
        let vmaddr = self.inner.lock().translate(gaddr)?;
        host.populate(vmaddr & !0xfff, access == Access::Write)
            .map_err(space_error)?;
        let r = self.inner.lock().link(&host, gaddr, vmaddr);
        r.map(|_| vmaddr)
    }

    /// The real address of the gmap segment entry for `gaddr`, if the
    /// tables above it exist.
    pub fn segment_entry_addr(&self, gaddr: u64) -> Option<PhysAddr> {
        self.inner.lock().segment_entry(gaddr, false).ok().flatten()
    }

    /// The real address of the entry for `gaddr` in the gmap table of
    /// `level`, if that table exists (`None` beyond the limit or above the
    /// top table).
    pub fn entry_addr(&self, gaddr: u64, level: Level) -> Option<PhysAddr> {
        self.inner
            .lock()
            .entry_at(gaddr, level, false)
            .ok()
            .flatten()
    }

    pub fn segment_entry_value(&self, gaddr: u64) -> SegmentEntry {
        self.segment_entry_addr(gaddr)
            .map_or(SegmentEntry::empty(), |ea| {
                // SAFETY: an entry of a live gmap segment table.
                SegmentEntry::from_raw(unsafe { entry(ea) }.load(Ordering::Acquire))
            })
    }

    /// `gmap_protect_range` for notification: every page of the guest
    /// range is faulted in and linked, and its host PTE gets the PGSTE
    /// notify bit: the next host change of it calls the notifiers first.
    ///
    /// The whole range is checked first, nothing changed on a refusal:
    /// page alignment and a non-zero length (`Misaligned`), `gaddr + len`
    /// overflowing or passing the limit (`OutOfRange`), a segment not mapped
    /// guest-to-host (`NotMapped`), a host segment linked to another guest
    /// segment (`HostAliased`). After that only memory can run out, while
    /// host pages are populated and segments linked; the notify bits are set
    /// last, when nothing can fail any more. On `NoMemory` everything done
    /// is undone: the segments it linked are unlinked (their link count
    /// taken back), gmap tables it allocated freed, host pages it populated
    /// unmapped and freed (with any host page table that held only them).
    /// (A segment linked to a stale host table, which `check` would report,
    /// is relinked and, on failure, left unlinked.) Protecting a protected
    /// page again is not an error.
    pub fn gmap_protect_range(&self, gaddr: u64, len: u64) -> Result<(), GmapError> {
        if len == 0 || gaddr & 0xfff != 0 || len & 0xfff != 0 {
            return Err(GmapError::Misaligned);
        }
        let last = gaddr.checked_add(len - 1).ok_or(GmapError::OutOfRange)?;
        let parent = self.parent();
        let mut host = lock_host(&parent);
        let mut g = self.inner.lock();
        if host.space().id() != g.parent_id {
            return Err(GmapError::HostReplaced);
        }
        if last > g.limit {
            return Err(GmapError::OutOfRange);
        }
        // Every segment mapped (the walk ends at the first that is not, so it
        // is as long as the map at most), none host-aliased.
        let mut gs = seg(gaddr);
        loop {
            let hs = *g.guest_to_host.get(&gs).ok_or(GmapError::NotMapped)?;
            if g.host_to_guest.get(&hs).is_some_and(|&o| o != gs) {
                return Err(GmapError::HostAliased);
            }
            if gs == seg(last) {
                break;
            }
            gs += SEGMENT_SIZE;
        }
        let nsegs = ((seg(last) - seg(gaddr)) / SEGMENT_SIZE + 1) as usize;
        let npages = ((last - gaddr) / 0x1000 + 1) as usize;
        // (guest segment, host segment, linked here), and a bit per page for
        // the pages populated and the notify bits set here.
        let mut segs: Vec<(u64, u64, bool)> = Vec::new();
        let mut populated: Vec<u64> = Vec::new();
        let mut notified: Vec<u64> = Vec::new();
        let words = npages.div_ceil(64);
        segs.try_reserve_exact(nsegs)
            .and_then(|()| populated.try_reserve_exact(words))
            .and_then(|()| notified.try_reserve_exact(words))
            .map_err(|_| GmapError::NoMemory)?;
        populated.resize(words, 0);
        notified.resize(words, 0);
        for k in 0..nsegs as u64 {
            let gs = seg(gaddr) + k * SEGMENT_SIZE;
            let hs = *g.guest_to_host.get(&gs).ok_or(GmapError::NotMapped)?;
            segs.push((gs, hs, false));
        }
        // The host address of the i-th page.
        let vm_of = |segs: &[(u64, u64, bool)], i: usize| {
            let a = gaddr + i as u64 * 0x1000;
            segs[((seg(a) - seg(gaddr)) / SEGMENT_SIZE) as usize].1 + (a - seg(a))
        };
        let tables_before = g.tables.len();
        // Populate, then link: only memory can fail here.
        let mut r = Ok(());
        for i in 0..npages {
            let vm = vm_of(&segs, i);
            if host.space().lookup(vm).is_none() {
                if let Err(e) = host.populate(vm, false) {
                    r = Err(space_error(e));
                    break;
                }
                populated[i / 64] |= 1 << (i % 64);
            }
        }
        if r.is_ok() {
            for sg in segs.iter_mut() {
                match g.link(&host, sg.0, sg.1) {
                    Ok(new) => sg.2 = new,
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                }
            }
        }
        // The notify bits last: every PTE exists now, under the host lock.
        if r.is_ok() {
            for i in 0..npages {
                let vm = vm_of(&segs, i);
                if host.space().pgste_notify(vm) {
                    continue;
                }
                if let Err(e) = host.space_mut().pgste_set_notify(vm) {
                    r = Err(space_error(e));
                    break;
                }
                notified[i / 64] |= 1 << (i % 64);
            }
        }
        let Err(e) = r else {
            return Ok(());
        };
        for i in (0..npages).filter(|i| notified[i / 64] & (1 << (i % 64)) != 0) {
            host.pgste_clear_notify(vm_of(&segs, i));
        }
        for &(gs, hs, new) in segs.iter().rev() {
            if new {
                g.undo_link(gs, hs);
            }
        }
        g.free_tables_from(tables_before);
        // Unmapping may free a host page table: the unlink hook takes the
        // gmap lock.
        drop(g);
        for i in (0..npages).filter(|i| populated[i / 64] & (1 << (i % 64)) != 0) {
            let vm = vm_of(&segs, i);
            if let Err(ue) = host.unpopulate(vm) {
                report_bug(format_args!(
                    "gmap_protect_range undo: host page {vm:#x} not given back: {ue:?}"
                ));
            }
        }
        Err(e)
    }
}

/// Inconsistencies `Gmap::check` finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GmapCheckError {
    /// A table that is not one of this gmap's gmap tables.
    Table(PhysAddr),
    /// A linked guest segment without a guest-to-host mapping.
    GuestToHost(u64),
    /// A linked guest segment the host-to-guest map does not name.
    HostToGuest(u64),
    /// A linked guest segment not pointing at the host's current PTE table.
    HostTable(u64),
    /// The host-to-guest map names more segments than are linked.
    Count { linked: u64, recorded: u64 },
    /// The host holds another space than the one the gmap was made over.
    HostReplaced,
}

impl Gmap {
    /// Check the gmap's maps against its tables: every table reached is one
    /// of its gmap tables, its descriptor naming this gmap, the level and
    /// the guest address it is reached at; every linked segment (guest address from the
    /// table descriptor) is mapped guest-to-host, recorded host-to-guest,
    /// and points at the host's PTE table for that segment. Returns the
    /// number of linked segments.
    pub fn check(&self) -> Result<u64, GmapCheckError> {
        // Host first, then gmap: the lock order of the whole subsystem.
        let parent = self.parent();
        let host = lock_host(&parent);
        let g = self.inner.lock();
        if host.space().id() != g.parent_id {
            return Err(GmapCheckError::HostReplaced);
        }
        let mut linked = 0;
        g.check_level(g.asce.origin(), g.asce.level(), 0, &host, &mut linked)?;
        let recorded = g.host_to_guest.len() as u64;
        if recorded != linked {
            return Err(GmapCheckError::Count { linked, recorded });
        }
        Ok(linked)
    }
}

impl GmapInner {
    fn check_level(
        &self,
        tbl: PhysAddr,
        level: Level,
        base: u64,
        host: &HostMm,
        linked: &mut u64,
    ) -> Result<(), GmapCheckError> {
        let t = table::gmap_table_at(tbl).map_err(|_| GmapCheckError::Table(tbl))?;
        if t.owner() != self.id
            || table::table_level(t) != Some(level)
            || t.gaddr() != base
            || !self
                .tables
                .iter()
                .any(|t| t.pa() == tbl && t.level == level)
        {
            return Err(GmapCheckError::Table(tbl));
        }
        for i in 0..crate::dat::entry::CRST_ENTRIES as u64 {
            let ea = PhysAddr(tbl.0 + i * 8);
            // SAFETY: an entry of a live gmap table.
            let raw = unsafe { entry(ea) }.load(Ordering::Acquire);
            match level.lower() {
                Some(lower) => {
                    let e = RegionEntry::from_raw(raw);
                    if !e.is_invalid() {
                        let child = base + (i << level.shift());
                        self.check_level(e.next_origin(), lower, child, host, linked)?;
                    }
                }
                None => {
                    let s = SegmentEntry::from_raw(raw);
                    if s.is_invalid() {
                        continue;
                    }
                    let gaddr = table::gmap_segment_gaddr(crate::dat::table::phys_to_virt(ea))
                        .map_err(|_| GmapCheckError::Table(tbl))?;
                    let vm = *self
                        .guest_to_host
                        .get(&gaddr)
                        .ok_or(GmapCheckError::GuestToHost(gaddr))?;
                    if self.host_to_guest.get(&vm) != Some(&gaddr) {
                        return Err(GmapCheckError::HostToGuest(gaddr));
                    }
                    let hs = host.space().segment_entry(vm);
                    if hs.is_invalid() || hs.page_table() != s.page_table() {
                        return Err(GmapCheckError::HostTable(gaddr));
                    }
                    *linked += 1;
                }
            }
        }
        Ok(())
    }

    fn free_tables_from(&mut self, n: usize) {
        // Tables added by a failed operation are empty: invalidate the entry
        // pointing at each (newest first), then free it.
        while self.tables.len() > n {
            let Some(GmapTableRec {
                table: t,
                level,
                parent,
            }) = self.tables.pop()
            else {
                break;
            };
            let pa = t.phys();
            if let Some((ptbl, plevel, gaddr)) = parent {
                // SAFETY: the parent is a live gmap table whose entry for
                // `gaddr` points at `pa`.
                unsafe { tlb::idte(ptbl, plevel, gaddr) };
                // SAFETY: that entry, invalid now.
                unsafe { entry(PhysAddr(ptbl.0 + plevel.index(gaddr) as u64 * 8)) }
                    .store(RegionEntry::empty(plevel).raw(), Ordering::Release);
            }
            // No caller to tell: the failed operation reports its own error.
            if let Err((t, e)) = gmap_free_table(t, self.id, level) {
                let _ = t.into_raw();
                report_bug(format_args!(
                    "gmap {}: undo could not free the {level:?} table at {:#x}: {e:?}; it stays allocated",
                    self.id, pa.0
                ));
            }
        }
    }

    /// Free every gmap table and forget every mapping (the ASCE must be
    /// loaded nowhere any more). Returns how many tables could not be freed
    /// (the allocator or the descriptor check refused them): they stay
    /// allocated, no longer this gmap's.
    fn teardown(&mut self) -> u64 {
        let tables = core::mem::take(&mut self.tables);
        self.host_to_guest.clear();
        self.guest_to_host.clear();
        if tables.is_empty() {
            return 0;
        }
        // Purge what any TLB may still hold of the ASCE before its tables
        // go back.
        tlb::flush_asce(self.asce);
        let mut refused = 0;
        for t in tables {
            if let Err((t, _)) = gmap_free_table(t.table, self.id, t.level) {
                // Refused (the allocator said why): allocated, owned by
                // nobody; the caller hears how many.
                let _ = t.into_raw();
                refused += 1;
            }
        }
        refused
    }
}

/// `gmap_remove`: free every gmap table. Host PTE tables the gmap pointed
/// at stay with the host. `FreeRefused(n)` if the allocator refused `n`
/// tables (they stay allocated; the rest is torn down). Dropping a `Gmap`
/// does the same teardown, but can only report a refusal as a BUG.
pub fn gmap_remove(g: Gmap) -> Result<(), GmapError> {
    let refused = g.inner.lock().teardown();
    drop(g);
    match refused {
        0 => Ok(()),
        n => Err(GmapError::FreeRefused(n)),
    }
}

impl Drop for Gmap {
    fn drop(&mut self) {
        let mut inner = self.inner.lock();
        let refused = inner.teardown();
        let id = inner.id;
        drop(inner);
        if refused != 0 {
            report_bug(format_args!(
                "gmap {id} dropped: {refused} of its tables could not be freed; they stay allocated"
            ));
        }
        let me = Arc::downgrade(&self.inner);
        GMAPS
            .lock()
            .retain(|w| w.strong_count() > 0 && !w.ptr_eq(&me));
    }
}

/// The gmaps of host space `space_id`.
fn gmaps_of(space_id: u64) -> Vec<Arc<Mutex<GmapInner>>> {
    GMAPS
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|g| g.lock().parent_id == space_id)
        .collect()
}

/// `gmap_unlink`: the host is about to free the PTE table of the segment
/// at `vmaddr`: every gmap segment entry pointing at it is invalidated.
fn gmap_unlink(space_id: u64, vmaddr: u64, pte_table: PhysAddr) {
    for g in gmaps_of(space_id) {
        let mut g = g.lock();
        let Some(gseg) = g.host_to_guest.get(&seg(vmaddr)).copied() else {
            continue;
        };
        if g.segment_entry(gseg, false)
            .ok()
            .flatten()
            .is_some_and(|ea| {
                // SAFETY: an entry of a live gmap segment table.
                SegmentEntry::from_raw(unsafe { entry(ea) }.load(Ordering::Acquire)).page_table()
                    == pte_table
            })
        {
            g.unlink_gaddr(gseg);
        }
        g.host_to_guest.remove(&seg(vmaddr));
    }
}

/// `tlb::IPTE_GUEST_ALIAS`: the host just invalidated its PTE for `vmaddr`
/// in the page table `pto` with IPTE at the host address; purge the same
/// PTE under every guest address of a gmap segment linked to that table.
fn gmap_pte_alias_purge(space_id: u64, vmaddr: u64, pto: PhysAddr) {
    for g in gmaps_of(space_id) {
        let g = g.lock();
        let Some(gseg) = g.host_to_guest.get(&seg(vmaddr)).copied() else {
            continue;
        };
        let gaddr = gseg + (vmaddr - seg(vmaddr));
        // SAFETY: `pto` is the host's live page table, which this gmap's
        // segment for `gseg` points at (host_to_guest says so, and the host
        // lock the caller holds keeps it linked); its PTE for `gaddr` is the
        // one the host just invalidated (same index: segments are 1 MiB
        // aligned in both spaces), so IPTE only purges TLB entries.
        unsafe { tlb::ipte(pto, gaddr) };
    }
}

/// The host changed the segment entry for `vmaddr` to `new` (same PTE
/// table, other bits, e.g. protection): every gmap segment entry linked to
/// it takes the new bits too, IDTE first (Linux keeps gmap segment entries
/// in step with the host's pmd in gmap_pmdp_*).
fn gmap_segment_change(space_id: u64, vmaddr: u64, new: SegmentEntry) {
    for g in gmaps_of(space_id) {
        let mut g = g.lock();
        let Some(gseg) = g.host_to_guest.get(&seg(vmaddr)).copied() else {
            continue;
        };
        let Ok(Some(ea)) = g.segment_entry(gseg, false) else {
            continue;
        };
        // SAFETY: an entry of a live gmap segment table.
        let cur = SegmentEntry::from_raw(unsafe { entry(ea) }.load(Ordering::Acquire));
        if cur.page_table() != new.page_table() {
            continue;
        }
        GmapInner::replace_segment_entry(ea, gseg, SegmentEntry::from_raw(new.hardware_bits()));
    }
}

/// The guest addresses of every gmap of `space_id` linked to the host
/// segment of `vmaddr`: (gmap id, guest address of the page).
pub(crate) fn guests_of(space_id: u64, vmaddr: u64) -> Vec<(u64, u64)> {
    gmaps_of(space_id)
        .iter()
        .filter_map(|g| {
            let g = g.lock();
            g.host_to_guest
                .get(&seg(vmaddr))
                .map(|gs| (g.id, gs + (vmaddr - seg(vmaddr))))
        })
        .collect()
}

/// For tests: the guest address of the gmap segment entry at kernel
/// address `entry_va`, through the gmap table descriptor.
pub fn segment_gaddr_of_entry(
    entry_va: crate::mm::addr::VirtAddr,
) -> Result<u64, table::GmapTableError> {
    table::gmap_segment_gaddr(entry_va)
}
