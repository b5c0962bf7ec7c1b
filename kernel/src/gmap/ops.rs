//! What a gmap offers its user (KVM's view): map and unmap guest
//! segments, translate, link, resolve faults, protect ranges with PGSTE
//! notification, and inspect entries (arch/s390/mm/gmap.c:
//! `gmap_map_segment`, `gmap_unmap_segment`, `gmap_translate`,
//! `gmap_link`, `gmap_fault`, `gmap_protect_range`).

use core::sync::atomic::Ordering;

use crate::sync::Mutex;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::{lock_host, report_bug, seg, space_error, Access, Gmap, GmapError, HostMm};
use crate::dat::context::{AsceRef, MmContext};
use crate::dat::entry::{Asce, Level, SegmentEntry, SEGMENT_SIZE};
use crate::dat::table::entry;
use crate::mm::addr::PhysAddr;

impl Gmap {
    pub fn id(&self) -> u64 {
        self.inner.lock().id
    }

    pub fn asce(&self) -> Asce {
        self.inner.lock().asce
    }

    /// The ASCE as a CPU loads it: with the gmap's context and its host's,
    /// which the CPU attaches first.
    pub fn asce_ref(&self) -> AsceRef {
        let g = self.inner.lock();
        AsceRef::with_host(g.asce, g.context.clone(), g.host_context.clone())
    }

    /// Which CPUs may hold TLB entries of the gmap.
    pub fn context(&self) -> Arc<MmContext> {
        self.inner.lock().context.clone()
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
        // The host lock first (the lock order): shadows built from the
        // guest segments' memory go too, and shadow faults run under it.
        let parent = self.parent();
        let _host = lock_host(&parent);
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
            if let Some(hs) = g.guest_to_host.remove(&(to + off)) {
                super::shadow::shadow_notify_range(&g.shadows, hs, hs + (SEGMENT_SIZE - 1));
            }
            g.unlink_gaddr(to + off);
            off += SEGMENT_SIZE;
        }
        Ok(())
    }

    /// Guest-1 reads its own memory at `gaddr` (8-aligned): through the
    /// guest-to-host map and the host's frame (populated if missing), as
    /// KVM's `read_guest_abs` does.
    pub fn guest_read_u64(&self, gaddr: u64) -> Result<u64, GmapError> {
        self.guest_access(gaddr, None)
    }

    /// Guest-1 stores to its own memory at `gaddr` (8-aligned), as a
    /// guest-1 store would: a page protected for a shadow is made writable
    /// first (the host notifies, and shadows built from it go), a page the
    /// host made read-only is refused (`Protected`).
    pub fn guest_write_u64(&self, gaddr: u64, v: u64) -> Result<(), GmapError> {
        self.guest_access(gaddr, Some(v)).map(|_| ())
    }

    fn guest_access(&self, gaddr: u64, store: Option<u64>) -> Result<u64, GmapError> {
        if !gaddr.is_multiple_of(8) {
            return Err(GmapError::Misaligned);
        }
        let parent = self.parent();
        let mut host = lock_host(&parent);
        let vm = self.inner.lock().translate(gaddr)?;
        let pa = host
            .populate(vm & !0xfff, store.is_some())
            .map_err(space_error)?;
        // SAFETY: the host's frame at `vm`, kept while its lock is held;
        // 8-aligned. Guest memory: no Rust object lives there.
        let w = unsafe { entry(PhysAddr(pa.0 | (vm & 0xfff))) };
        match store {
            Some(v) => {
                w.store(v, Ordering::Release);
                Ok(v)
            }
            None => Ok(w.load(Ordering::Acquire)),
        }
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

    /// A guest store to `gaddr` took a protection exception: lift a
    /// shadow's protection of its host page (`HostMm::make_writable`).
    /// `Ok(false)`: the page was writable, the protection is not one the
    /// host can lift; `Protected`: the host made it read-only.
    pub fn gmap_fault_protection(&self, gaddr: u64) -> Result<bool, GmapError> {
        let parent = self.parent();
        let mut host = lock_host(&parent);
        let vmaddr = self.inner.lock().translate(gaddr)?;
        host.make_writable(vmaddr & !0xfff).map_err(space_error)
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
