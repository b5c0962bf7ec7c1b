//! vSIE shadow gmaps: a guest-1 hypervisor runs a guest-2 whose DAT tables
//! live in guest-1 memory. The CPU cannot use those tables (they hold
//! guest-1 addresses), so a shadow gmap translates guest-2 addresses
//! straight to host frames, built on guest-2's faults and dropped, in part
//! or whole, whenever guest-1 memory it was built from changes.
//!
//! Linux: arch/s390/mm/gmap.c up to 6.x (`gmap_shadow`, `gmap_shadow_r2t`
//! .. `gmap_shadow_pgt`, `gmap_shadow_page`, `gmap_protect_rmap`,
//! `gmap_shadow_notify`, `gmap_unshadow*`) and KVM's
//! `kvm_s390_shadow_fault` (arch/s390/kvm/gaccess.c). Shadow tables are
//! gmap tables (`GmapTableDesc`, flag `GT_SHADOW`) whose gaddr is the
//! guest-1 address of the guest-2 table each shadows (the seed's
//! `_pt_s390_gaddr` role); shadow page tables are order-0 gmap tables.
//!
//! The one rule everything here keeps: a shadow entry becomes valid only
//! after the guest-1 page holding the guest-2 entry it copies is
//! write-protected in the host with its PGSTE VSIE bit set and a reverse
//! map (rmap) names the shadow table the entry is in; a shadow PTE only
//! after the host PTE of the frame it maps has the VSIE bit and an rmap
//! names the shadow page. A change of either host PTE notifies the shadow
//! first (`shadow_notify`), which drops what was built from it.
//!
//! Where zdat differs from Linux, on purpose:
//! - Source pages are protected one at a time, when an entry from that
//!   page is first shadowed, not the whole guest-2 table when its shadow
//!   is made: a page of a guest-2 table beyond guest-1 memory is then not
//!   an error (its entries reflect addressing exceptions), and a table
//!   whose pages are never used costs no protection.
//! - Every shadow operation runs under the host lock (the `HostMm`
//!   mutex), which also serializes every notification, so a fault's walk
//!   of the guest-2 tables and its installation cannot interleave with an
//!   unshadow. Linux's -EAGAIN races reduce to two, both retried: the
//!   whole shadow removed between the guest-2 exit and its fault handling
//!   (`ShadowFault::Again`: get the shadow again), and the fault's own
//!   host change (a write lifting a protection) unshadowing the tables it
//!   was installing into (retried inside the fault).
//! - The top table is protected like any other (an rmap naming it); a
//!   change of its page drops the whole shadow, as Linux's address check
//!   in `gmap_shadow_notify` does.

use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::sync::Mutex;

use super::table::{gmap_free_table, GmapTable};
use super::{lock_host, report_bug, GmapError, GmapInner, HostMm};
use crate::arch::pgm::code;
use crate::dat::context::{AsceRef, MmContext};
use crate::dat::entry::{
    pte_index, Asce, Level, Prot, Pte, RegionEntry, SegmentEntry, CRST_ENTRIES, SEGMENT_SIZE,
};
use crate::dat::space::PGSTE_VSIE_BIT;
use crate::dat::table::entry;
use crate::dat::tlb;
use crate::dat::walk::{self, Facilities, TableReader};
use crate::mm::addr::{PhysAddr, PAGE_SIZE};
use crate::mm::gtdesc::{self, GMAP_PTE_LEVEL, GT_FAKE, GT_SHADOW};
use crate::mm::{self, AllocFlags};

/// PTEs in a page table.
const PTRS_PER_PTE: usize = 256;

/// Why a shadow fault did not make the access work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowFault {
    /// Guest-2's own tables refuse the access: reflect this program
    /// interruption code to guest-1 (with the exit's TEID).
    Reflect(u16),
    /// The shadow was removed (a change of its top table, or its parent
    /// went), or guest-2's entries kept moving under a load's walk: get
    /// the shadow again with `gmap_shadow` and retry.
    Again,
    NoMemory,
    /// The host refused (a write to a page the host made read-only).
    Host(GmapError),
    /// A store to a page that holds a guest-2 table on the store's own
    /// translation path: making it writable unshadows that path every time
    /// (see `shadow_fault`). Not resolvable without emulating the store.
    SelfMapped,
}

/// Why `gmap_shadow` made no shadow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowError {
    NoMemory,
    /// An EDAT level above 1: not modelled (EDAT-2's region-third
    /// large pages have no shadow form here).
    Unsupported,
}

/// Which shadow structure an rmap names: `kind` 0 a shadow PTE (`base`
/// the guest-2 page), 1 a shadow page table (`base` its guest-2 segment),
/// 2 + level a region or segment table (`base` aligned to what it covers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShadowKey {
    pub kind: u8,
    pub base: u64,
}

const KIND_PAGE: u8 = 0;
const KIND_PGT: u8 = 1;

fn crst_kind(level: Level) -> u8 {
    level as u8 + 2
}

/// Bytes a table of `kind` covers (saturating at 2^64 - 1 for a
/// region-first table: 2^64 does not fit).
fn kind_cover(kind: u8) -> u64 {
    match kind {
        KIND_PAGE => PAGE_SIZE,
        KIND_PGT => SEGMENT_SIZE,
        k => {
            let shift = (k as u32 - 2) * 11 + 31;
            if shift >= 64 {
                u64::MAX
            } else {
                1 << shift
            }
        }
    }
}

fn key_for(kind: u8, g2: u64) -> ShadowKey {
    let cover = kind_cover(kind);
    let base = if cover == u64::MAX {
        0
    } else {
        g2 & !(cover - 1)
    };
    ShadowKey { kind, base }
}

struct ShadowTable {
    table: GmapTable,
    /// The entry pointing at it (none for the top) and that entry's level.
    parent: Option<(PhysAddr, Level)>,
}

/// Counters of a shadow's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Shadow faults that made an access work.
    pub faults: u64,
    /// Faults reflected to guest-1.
    pub reflected: u64,
    /// Shadow tables made (top excluded) and PTEs installed.
    pub tables_made: u64,
    pub ptes_made: u64,
    /// Structures dropped by notification: tables and PTEs.
    pub tables_dropped: u64,
    pub ptes_dropped: u64,
    /// Retries inside a fault after its own host change unshadowed its
    /// path (Linux's -EAGAIN).
    pub retries: u64,
}

pub(crate) struct ShadowInner {
    id: u64,
    parent: Weak<Mutex<GmapInner>>,
    host: Arc<Mutex<HostMm>>,
    /// Guest-2's ASCE (its top table at a guest-1 address) and EDAT level.
    orig_asce: Asce,
    edat_level: u8,
    /// The shadow's ASCE: the same type and length, the shadow top table.
    asce: Asce,
    context: Arc<MmContext>,
    host_context: Arc<MmContext>,
    /// Every shadow table by what it shadows; the top is the key of the
    /// ASCE's level at base 0.
    tables: BTreeMap<ShadowKey, ShadowTable>,
    /// Host page (vmaddr) → the structures built from it.
    rmap: BTreeMap<u64, Vec<ShadowKey>>,
    /// Structure → the host pages it was built from (the inverse of rmap).
    sources: BTreeMap<ShadowKey, Vec<u64>>,
    removed: bool,
    stats: ShadowStats,
}

static NEXT_SHADOW: AtomicU64 = AtomicU64::new(1 << 32);

/// A shadow gmap (a handle; clones share it, like Linux's gmap_get).
#[derive(Clone)]
pub struct ShadowGmap {
    inner: Arc<Mutex<ShadowInner>>,
}

fn facilities(edat_level: u8) -> Facilities {
    Facilities {
        edat1: edat_level >= 1,
        edat2: edat_level >= 2,
    }
}

/// Reads guest-2 table entries at guest-1 addresses: through the parent
/// gmap's guest-to-host map and the host's frames, as guest-1's DAT-off
/// fetches would. A page the host never populated reads as zeros (what
/// populating it would give); a guest-1 address no segment maps is
/// outside guest-1 memory (an addressing exception).
struct G1Reader<'a> {
    /// Guest-1 address → host address (the parent gmap's translation).
    tr: &'a dyn Fn(u64) -> Option<u64>,
    host: &'a HostMm,
}

impl<'a> G1Reader<'a> {
    fn vmaddr(&self, g1: u64) -> Option<u64> {
        (self.tr)(g1)
    }

    fn read(&self, g1: u64) -> Option<u64> {
        self.read_entry(PhysAddr(g1))
    }
}

/// The parent's translation, locking it for each lookup (the fault path
/// holds no gmap lock between its steps).
fn tr_locked(parent: &Mutex<GmapInner>) -> impl Fn(u64) -> Option<u64> + '_ {
    move |g1| parent.lock().translate(g1).ok()
}

impl TableReader for G1Reader<'_> {
    fn read_entry(&self, pa: PhysAddr) -> Option<u64> {
        let vm = self.vmaddr(pa.0)?;
        match self.host.space().lookup(vm & !(PAGE_SIZE - 1)) {
            Some((frame, _)) => {
                // SAFETY: a frame the host populated and keeps while its
                // lock is held (the caller holds it); 8-aligned (table
                // entries are).
                let w = unsafe { entry(PhysAddr(frame.0 | (vm & 0xff8))) };
                Some(w.load(Ordering::Acquire))
            }
            None => Some(0),
        }
    }
}

/// `gmap_shadow`: the shadow of `parent` for guest-2 ASCE `asce` at EDAT
/// level `edat_level`: an existing one if it is still valid
/// (`gmap_shadow_valid`: same ASCE, same EDAT level, not removed), else a
/// new one with an empty top table.
pub fn gmap_shadow(
    parent: &super::Gmap,
    asce: Asce,
    edat_level: u8,
) -> Result<ShadowGmap, ShadowError> {
    if edat_level > 1 {
        return Err(ShadowError::Unsupported);
    }
    let real = asce.is_real_space();
    let host = parent.parent();
    let _h = lock_host(&host);
    let mut p = parent.inner.lock();
    p.shadows.retain(|s| !s.lock().removed);
    // A real-space ASCE designates no table: every such ASCE is the same
    // space (guest-2 addresses are guest-1 addresses), so there is at most
    // one shadow of that kind per EDAT level.
    if let Some(s) = p.shadows.iter().find(|s| {
        let s = s.lock();
        // (EDAT means nothing without tables: one real-space shadow.)
        if real {
            s.orig_asce.is_real_space()
        } else {
            s.orig_asce.raw() == asce.raw() && s.edat_level == edat_level
        }
    }) {
        return Ok(ShadowGmap { inner: s.clone() });
    }
    let id = NEXT_SHADOW.fetch_add(1, Ordering::Relaxed);
    // Real space: a fake region-first table at the top (Linux makes the
    // same choice in kvm_s390_shadow_tables), covering every address.
    let (level, tl, gaddr, flags) = if real {
        (Level::Region1, 3, 0, GT_SHADOW | GT_FAKE)
    } else {
        (asce.level(), asce.tl(), asce.origin().0, GT_SHADOW)
    };
    let top = alloc_table(id, level as u64, gaddr, flags).ok_or(ShadowError::NoMemory)?;
    let sasce = Asce::new(top.phys(), level)
        .map_err(|_| ShadowError::NoMemory)?
        .with_tl(tl);
    let mut tables = BTreeMap::new();
    tables.insert(
        key_for(crst_kind(level), 0),
        ShadowTable {
            table: top,
            parent: None,
        },
    );
    let inner = Arc::new(Mutex::new(ShadowInner {
        id,
        parent: Arc::downgrade(&parent.inner),
        host: host.clone(),
        orig_asce: asce,
        edat_level,
        asce: sasce,
        context: Arc::new(MmContext::new()),
        host_context: p.host_context.clone(),
        tables,
        rmap: BTreeMap::new(),
        sources: BTreeMap::new(),
        removed: false,
        stats: ShadowStats::default(),
    }));
    if p.shadows.try_reserve(1).is_err() {
        return Err(ShadowError::NoMemory);
    }
    p.shadows.push(inner.clone());
    Ok(ShadowGmap { inner })
}

/// A shadow table of raw level `raw_level` (0..=3 CRST, 4 a page table),
/// every entry empty.
fn alloc_table(owner: u64, raw_level: u64, gaddr: u64, flags: u64) -> Option<GmapTable> {
    let order = gtdesc::gmap_table_order(raw_level);
    let p = mm::alloc_pages(order, AllocFlags::empty()).ok()?;
    let t = gtdesc::gmap_table_ctor_flags(p, owner, raw_level, gaddr, flags).ok()?;
    let empty = match raw_level {
        GMAP_PTE_LEVEL => Pte::empty().raw(),
        0 => SegmentEntry::empty().raw(),
        l => RegionEntry::empty(level_of(l)).raw(),
    };
    let n = if raw_level == GMAP_PTE_LEVEL {
        PTRS_PER_PTE
    } else {
        CRST_ENTRIES
    };
    let ptr = mm::memmap().frame_ptr(t.phys().pfn()) as *const AtomicU64;
    // SAFETY: the handle owns the block (`n` words fit its order: 2048
    // for 16 KiB, 256 of a 4 KiB page table's block), 8-aligned; nothing
    // else reaches it yet.
    let words = unsafe { core::slice::from_raw_parts(ptr, n) };
    for w in words {
        w.store(empty, Ordering::Relaxed);
    }
    Some(t)
}

fn level_of(raw: u64) -> Level {
    match raw {
        1 => Level::Region3,
        2 => Level::Region2,
        3 => Level::Region1,
        _ => Level::Segment,
    }
}

/// What a level's entry in a shadow walk is.
enum Found {
    /// The entry's real address, in the table at the given address.
    Entry(PhysAddr, PhysAddr),
    /// The walk stopped above: an invalid shadow entry on the way.
    Missing,
}

impl ShadowInner {
    /// The shadow entry for `g2` in the shadow table of `level` (`None`:
    /// the page table), following valid shadow entries from the top.
    fn find(&self, g2: u64, level: Option<Level>) -> Found {
        let top = self.asce.level();
        let mut l = top;
        let mut tbl = self.asce.origin();
        loop {
            let ea = PhysAddr(tbl.0 + l.index(g2) as u64 * 8);
            if level == Some(l) {
                return Found::Entry(ea, tbl);
            }
            // SAFETY: an entry of a live shadow table.
            let raw = unsafe { entry(ea) }.load(Ordering::Acquire);
            match l.lower() {
                Some(lower) => {
                    let e = RegionEntry::from_raw(raw);
                    if e.is_invalid() {
                        return Found::Missing;
                    }
                    tbl = e.next_origin();
                    l = lower;
                }
                None => {
                    let s = SegmentEntry::from_raw(raw);
                    if s.is_invalid() {
                        return Found::Missing;
                    }
                    let pto = s.page_table();
                    return Found::Entry(PhysAddr(pto.0 + pte_index(g2) as u64 * 8), pto);
                }
            }
        }
    }

    fn is_top(&self, key: ShadowKey) -> bool {
        key == key_for(crst_kind(self.asce.level()), 0)
    }

    fn add_rmap(&mut self, vm: u64, key: ShadowKey) -> Result<(), ShadowFault> {
        // Both vectors reserved before either changes: a refusal leaves
        // the two maps agreeing.
        self.rmap
            .entry(vm)
            .or_default()
            .try_reserve(1)
            .map_err(|_| ShadowFault::NoMemory)?;
        self.sources
            .entry(key)
            .or_default()
            .try_reserve(1)
            .map_err(|_| ShadowFault::NoMemory)?;
        let r = self.rmap.entry(vm).or_default();
        if !r.contains(&key) {
            r.push(key);
        }
        let s = self.sources.entry(key).or_default();
        if !s.contains(&vm) {
            s.push(vm);
        }
        Ok(())
    }

    fn forget_key(&mut self, key: ShadowKey) {
        for vm in self.sources.remove(&key).unwrap_or_default() {
            if let Some(r) = self.rmap.get_mut(&vm) {
                r.retain(|k| *k != key);
                if r.is_empty() {
                    self.rmap.remove(&vm);
                }
            }
        }
    }

    /// Invalidate the shadow PTE for guest-2 page `g2` if valid (IPTE).
    fn unshadow_page(&mut self, g2: u64) {
        self.forget_key(key_for(KIND_PAGE, g2));
        let Found::Entry(ea, pto) = self.find(g2, None) else {
            return;
        };
        // SAFETY: a PTE of a live shadow page table, under the shadow lock.
        let slot = unsafe { entry(ea) };
        if Pte::from_raw(slot.load(Ordering::Acquire)).is_invalid() {
            return;
        }
        // SAFETY: `pto` is that live shadow page table, whose entry for
        // `g2` we may change.
        unsafe { tlb::ipte(&self.context, pto, g2) };
        slot.store(Pte::empty().raw(), Ordering::Release);
        self.stats.ptes_dropped += 1;
    }

    /// Drop the shadow table `key` (not the top) and everything below it:
    /// the entry pointing at it first (IDTE), then the tables, then their
    /// rmaps (`gmap_unshadow_r2t` .. `gmap_unshadow_pgt`).
    fn unshadow_table(&mut self, key: ShadowKey) {
        let Some(t) = self.tables.get(&key) else {
            self.forget_key(key);
            return;
        };
        if let Some((pe, plevel)) = t.parent {
            let ptbl = crate::dat::table::table_of_entry(pe);
            // SAFETY: the live shadow table holding the entry that points
            // at `key`'s table, under the shadow lock.
            unsafe { tlb::idte(&self.context, ptbl, plevel, key.base) };
            let empty = match plevel {
                Level::Segment => SegmentEntry::empty().raw(),
                l => RegionEntry::empty(l).raw(),
            };
            // SAFETY: that entry, invalid now.
            unsafe { entry(pe) }.store(empty, Ordering::Release);
        }
        self.drop_below(key);
    }

    /// Forget and free every structure within `key`'s range at its kind
    /// or below (the entry above is invalid already, or the whole shadow
    /// was flushed).
    fn drop_below(&mut self, key: ShadowKey) {
        let last = key.base.saturating_add(kind_cover(key.kind) - 1);
        for kind in 0..=key.kind {
            let keys: Vec<ShadowKey> = self
                .sources
                .range(
                    ShadowKey {
                        kind,
                        base: key.base,
                    }..=ShadowKey { kind, base: last },
                )
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                self.forget_key(k);
            }
            let tables: Vec<ShadowKey> = self
                .tables
                .range(
                    ShadowKey {
                        kind,
                        base: key.base,
                    }..=ShadowKey { kind, base: last },
                )
                .map(|(k, _)| *k)
                .collect();
            for k in tables {
                if let Some(t) = self.tables.remove(&k) {
                    self.free(t);
                    self.stats.tables_dropped += 1;
                }
            }
        }
    }

    fn free(&self, t: ShadowTable) {
        let pa = t.table.phys();
        let (owner, level) = (t.table.owner(), t.table.raw_level());
        let r = if level == GMAP_PTE_LEVEL {
            gtdesc::gmap_table_free(t.table).map_err(|(t, e)| (t, e.into()))
        } else {
            gmap_free_table(t.table, owner, level_of(level))
        };
        if let Err((t, e)) = r {
            let _ = t.into_raw();
            report_bug(format_args!(
                "shadow {}: table {:#x} not freed: {e:?}; it stays allocated",
                self.id, pa.0
            ));
        }
    }

    /// `gmap_unshadow`: the whole shadow goes (its top table was changed,
    /// or its parent is going). The top table stays, empty, until the last
    /// handle is dropped: a CPU still running on the ASCE faults.
    fn unshadow_all(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        let top_key = key_for(crst_kind(self.asce.level()), 0);
        let top = self.asce.origin();
        let empty = match self.asce.level() {
            Level::Segment => SegmentEntry::empty().raw(),
            l => RegionEntry::empty(l).raw(),
        };
        let ptr = mm::memmap().frame_ptr(top.pfn()) as *const AtomicU64;
        // SAFETY: the live top table (16 KiB, CRST_ENTRIES words), which
        // the shadow owns; nothing can use what it pointed at any more
        // (flushed, and every CPU's next walk finds these empty entries).
        let words = unsafe { core::slice::from_raw_parts(ptr, CRST_ENTRIES) };
        for w in words {
            w.store(empty, Ordering::Release);
        }
        // Then the purge: a CPU walking the shadow meanwhile may have
        // refilled its TLB from the old entries until here; after it, no
        // TLB holds anything below the top, and the tables can go.
        tlb::flush_tlb_mm(&self.context, self.asce);
        let keys: Vec<ShadowKey> = self.tables.keys().copied().collect();
        for k in keys {
            if k == top_key {
                continue;
            }
            if let Some(t) = self.tables.remove(&k) {
                self.free(t);
                self.stats.tables_dropped += 1;
            }
        }
        self.rmap.clear();
        self.sources.clear();
    }

    /// `gmap_shadow_notify` for the host page `vm`: drop everything built
    /// from it.
    fn notify(&mut self, vm: u64) {
        if self.removed {
            return;
        }
        let Some(keys) = self.rmap.get(&vm).cloned() else {
            return;
        };
        for k in keys {
            if self.removed {
                return;
            }
            if self.is_top(k) {
                self.unshadow_all();
            } else if k.kind == KIND_PAGE {
                self.unshadow_page(k.base);
            } else {
                self.unshadow_table(k);
            }
        }
        self.rmap.remove(&vm);
    }
}

impl ShadowInner {
    /// Is the host page holding guest-1 address `g1` protected for `key`?
    fn source_ok(&self, rd: &G1Reader<'_>, g1: u64, key: ShadowKey) -> bool {
        let Some(vm) = rd.vmaddr(g1) else {
            return false;
        };
        let vm = vm & !(PAGE_SIZE - 1);
        let h = rd.host;
        h.space()
            .lookup(vm)
            .is_some_and(|(_, p)| p == Prot::ReadOnly)
            && h.space().pgste_bits(vm) & PGSTE_VSIE_BIT != 0
            && self.sources.get(&key).is_some_and(|v| v.contains(&vm))
            && self.rmap.get(&vm).is_some_and(|r| r.contains(&key))
    }

    /// `check` for the table at `tbl` of `kind` covering from `base`.
    fn check_table(
        &self,
        rd: &G1Reader<'_>,
        tbl: PhysAddr,
        kind: u8,
        base: u64,
        ptes: &mut u64,
        reached: &mut usize,
    ) -> Result<(), ShadowCheckError> {
        let key = ShadowKey { kind, base };
        let rec = self.tables.get(&key).ok_or(ShadowCheckError::Table(tbl))?;
        *reached += 1;
        let t = &rec.table;
        let raw_level = if kind == KIND_PGT {
            GMAP_PTE_LEVEL
        } else {
            (kind - 2) as u64
        };
        if t.phys() != tbl || !t.is_shadow() || t.owner() != self.id || t.raw_level() != raw_level {
            return Err(ShadowCheckError::Table(tbl));
        }
        let fake = t.flags() & GT_FAKE != 0;
        if kind == KIND_PGT {
            for i in 0..PTRS_PER_PTE as u64 {
                // SAFETY: an entry of a live shadow page table.
                let p = Pte::from_raw(
                    unsafe { entry(PhysAddr(tbl.0 + i * 8)) }.load(Ordering::Acquire),
                );
                if p.is_invalid() {
                    continue;
                }
                let g2 = base + i * PAGE_SIZE;
                let h = rd.host;
                // The guest-1 page guest-2 maps there now: from its PTE,
                // or the frame a fake table splits.
                let g1page = if fake {
                    Some(t.gaddr() + i * PAGE_SIZE)
                } else {
                    if !self.source_ok(rd, t.gaddr() + i * 8, key) {
                        return Err(ShadowCheckError::Unprotected { kind, g2 });
                    }
                    rd.read(t.gaddr() + i * 8)
                        .map(Pte::from_raw)
                        .and_then(|gp| {
                            (!gp.is_invalid()
                                && !gp.is_malformed()
                                && (!gp.is_protected() || p.is_protected()))
                            .then_some(gp.frame().0)
                        })
                };
                let Some(vm) = g1page.and_then(|g| rd.vmaddr(g)) else {
                    return Err(ShadowCheckError::Stale { kind, g2 });
                };
                // The frame guest-2 maps now, or the shadow PTE is stale.
                let vm = vm & !(PAGE_SIZE - 1);
                if h.space().lookup(vm).map(|x| x.0) != Some(p.frame()) {
                    return Err(ShadowCheckError::Stale { kind, g2 });
                }
                let pk = key_for(KIND_PAGE, g2);
                if !self.sources.get(&pk).is_some_and(|v| v.contains(&vm)) {
                    return Err(ShadowCheckError::Page(g2));
                }
                let seg_ro = h.space().segment_entry(vm).is_protected();
                let frame_ok = h.space().lookup(vm).is_some_and(|(f, prot)| {
                    f == p.frame() && ((prot == Prot::ReadWrite && !seg_ro) || p.is_protected())
                });
                if !frame_ok || h.space().pgste_bits(vm) & PGSTE_VSIE_BIT == 0 {
                    return Err(ShadowCheckError::Page(g2));
                }
                *ptes += 1;
            }
            return Ok(());
        }
        let level = level_of(raw_level);
        for i in 0..CRST_ENTRIES as u64 {
            // SAFETY: an entry of a live shadow table.
            let raw = unsafe { entry(PhysAddr(tbl.0 + i * 8)) }.load(Ordering::Acquire);
            let g2 = base.wrapping_add(i << level.shift());
            let (valid, child, child_kind) = match level.lower() {
                Some(lower) => {
                    let e = RegionEntry::from_raw(raw);
                    (!e.is_invalid(), e.next_origin(), crst_kind(lower))
                }
                None => {
                    let e = SegmentEntry::from_raw(raw);
                    (!e.is_invalid(), e.page_table(), KIND_PGT)
                }
            };
            if !valid {
                continue;
            }
            if !fake {
                if !self.source_ok(rd, t.gaddr() + i * 8, key) {
                    return Err(ShadowCheckError::Unprotected { kind, g2 });
                }
                // The copy against guest-2's entry as it is now: the same
                // type, offset, length (and protection) bits, and the
                // child shadowing the table (or frame) it names.
                let Some(graw) = rd.read(t.gaddr() + i * 8) else {
                    return Err(ShadowCheckError::Stale { kind, g2 });
                };
                if !self.copy_matches(level, raw, graw, child) {
                    return Err(ShadowCheckError::Stale { kind, g2 });
                }
            }
            self.check_table(rd, child, child_kind, g2, ptes, reached)?;
        }
        Ok(())
    }
}

impl ShadowInner {
    /// Is the shadow entry `raw` (of a table of `level`, pointing at the
    /// shadow table `child`) a copy of guest-2's entry `graw`?
    fn copy_matches(&self, level: Level, raw: u64, graw: u64, child: PhysAddr) -> bool {
        let edat1 = facilities(self.edat_level).edat1;
        let child_gaddr = |pa: PhysAddr| {
            mm::virt_to_page(crate::dat::table::phys_to_virt(pa))
                .and_then(|pg| gtdesc::page_gmap_table(pg).ok())
                .map(|d| d.gaddr())
        };
        match level {
            Level::Segment => {
                let (se, ge) = (SegmentEntry::from_raw(raw), SegmentEntry::from_raw(graw));
                let target = if edat1 && ge.is_large() {
                    ge.large_frame()
                } else {
                    ge.page_table()
                };
                !ge.is_invalid()
                    && ge.tt() == 0
                    && se.is_protected() == ge.is_protected()
                    && child_gaddr(child) == Some(target.0)
            }
            l => {
                let (se, ge) = (RegionEntry::from_raw(raw), RegionEntry::from_raw(graw));
                let same_bits = (se.tf(), se.tl(), se.level()) == (ge.tf(), ge.tl(), ge.level())
                    && (!edat1 || se.is_protected() == ge.is_protected());
                !ge.is_invalid()
                    && ge.level() == l
                    && same_bits
                    && child_gaddr(child) == Some(ge.next_origin().0)
            }
        }
    }
}

impl Drop for ShadowInner {
    fn drop(&mut self) {
        // The last handle: nothing runs on the ASCE any more (a CPU
        // running guest-2 holds a handle).
        tlb::flush_tlb_mm(&self.context, self.asce);
        let tables = core::mem::take(&mut self.tables);
        for (_, t) in tables {
            self.free(t);
        }
    }
}

/// `ptep_notify`'s vSIE part: the host PTE for `vm` of space `space_id`
/// had its VSIE bit set and is about to change.
pub(super) fn shadow_notify(space_id: u64, vm: u64) {
    for s in shadows_of(space_id) {
        s.lock().notify(vm);
    }
}

/// Every shadow structure built from a host page in `[start, end]` goes
/// (the parent unmapped the guest segment, or the host changed the
/// segment's protection).
pub(super) fn shadow_notify_range(shadows: &[Arc<Mutex<ShadowInner>>], start: u64, end: u64) {
    for s in shadows {
        let mut s = s.lock();
        let vms: Vec<u64> = s.rmap.range(start..=end).map(|(v, _)| *v).collect();
        for vm in vms {
            s.notify(vm);
        }
    }
}

/// The live shadows of every gmap of host space `space_id`.
pub(super) fn shadows_of(space_id: u64) -> Vec<Arc<Mutex<ShadowInner>>> {
    let mut v = Vec::new();
    for g in super::hooks::gmaps_of(space_id) {
        let g = g.lock();
        v.extend(g.shadows.iter().cloned());
    }
    v
}

/// Drop every shadow of a gmap that is going (under its lock).
pub(super) fn remove_all(shadows: &mut Vec<Arc<Mutex<ShadowInner>>>) {
    for s in shadows.drain(..) {
        s.lock().unshadow_all();
    }
}

/// Inconsistencies `ShadowGmap::check` finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowCheckError {
    /// A table reached that is not one of the shadow's (its address), or
    /// whose descriptor does not say shadow, this owner, its level.
    Table(PhysAddr),
    /// A valid shadow entry (its guest-2 address, the level's kind) whose
    /// source page is not protected: not read-only, no VSIE bit, or no
    /// rmap names its table.
    Unprotected { kind: u8, g2: u64 },
    /// A valid shadow PTE (guest-2 address) whose host page has no VSIE
    /// bit or no rmap, or maps another frame than the host's.
    Page(u64),
    /// An rmap naming a structure that does not exist (a freed table, an
    /// invalid PTE), or rmap and its inverse disagreeing.
    Rmap(ShadowKey),
    /// A removed shadow that still holds tables below its top, or rmaps.
    Removed,
    /// Tables the shadow keeps that no valid entry below its top reaches
    /// (how many).
    Unreachable { tables: usize },
    /// A valid shadow entry (guest-2 address, kind) that is not a copy of
    /// guest-2's entry as it is now (another origin, other bits, an
    /// invalid entry, a page no longer guest-2's there).
    Stale { kind: u8, g2: u64 },
}

/// What a step of the guest-2 walk found, as the fault installs it.
struct G2Step {
    /// The level of the guest table the entry is in (`None`: page table).
    level: Option<Level>,
    /// Guest-1 address of the entry.
    g1: u64,
    raw: u64,
}

impl ShadowGmap {
    pub fn id(&self) -> u64 {
        self.inner.lock().id
    }

    /// The shadow's ASCE (the CPU's primary space while guest-2 runs).
    pub fn asce(&self) -> Asce {
        self.inner.lock().asce
    }

    /// Guest-2's ASCE, the one shadowed.
    pub fn orig_asce(&self) -> Asce {
        self.inner.lock().orig_asce
    }

    pub fn edat_level(&self) -> u8 {
        self.inner.lock().edat_level
    }

    /// The ASCE as a CPU loads it, with the shadow's context.
    pub fn asce_ref(&self) -> AsceRef {
        let s = self.inner.lock();
        AsceRef::with_host(s.asce, s.context.clone(), s.host_context.clone())
    }

    pub fn context(&self) -> Arc<MmContext> {
        self.inner.lock().context.clone()
    }

    /// Removed (dropped whole): `gmap_shadow` makes a new one.
    pub fn is_removed(&self) -> bool {
        self.inner.lock().removed
    }

    pub fn stats(&self) -> ShadowStats {
        self.inner.lock().stats
    }

    /// Shadow tables held (the top included) and the pages they take.
    pub fn table_counts(&self) -> (u64, u64) {
        let s = self.inner.lock();
        let pages = s
            .tables
            .values()
            .map(|t| 1u64 << gtdesc::gmap_table_order(t.table.raw_level()))
            .sum();
        (s.tables.len() as u64, pages)
    }

    /// Host pages with an rmap.
    pub fn rmap_pages(&self) -> u64 {
        self.inner.lock().rmap.len() as u64
    }

    /// The shadow PTE for guest-2 address `g2` (empty if not shadowed).
    pub fn pte(&self, g2: u64) -> Pte {
        let s = self.inner.lock();
        match s.find(g2, None) {
            // SAFETY: a PTE of a live shadow page table.
            Found::Entry(ea, _) => Pte::from_raw(unsafe { entry(ea) }.load(Ordering::Acquire)),
            Found::Missing => Pte::empty(),
        }
    }

    /// `kvm_s390_shadow_fault`: guest-2's access to `g2` (a store if
    /// `write`) took a translation or protection exception on the shadow.
    /// Walk guest-2's tables in guest-1 memory; shadow every valid level
    /// (protecting its source first); then map the page, or say what to
    /// reflect to guest-1.
    pub fn shadow_fault(&self, g2: u64, write: bool) -> Result<(), ShadowFault> {
        let host = self.inner.lock().host.clone();
        let mut h = lock_host(&host);
        for _ in 0..4 {
            match self.try_fault(&mut h, g2, write) {
                Err(Retry::Again) => {
                    self.inner.lock().stats.retries += 1;
                    continue;
                }
                Err(Retry::Fault(f)) => {
                    if let ShadowFault::Reflect(_) = f {
                        self.inner.lock().stats.reflected += 1;
                    }
                    return Err(f);
                }
                Ok(()) => {
                    self.inner.lock().stats.faults += 1;
                    return Ok(());
                }
            }
        }
        // A load only retries when guest-2's entries kept moving under
        // the walk (stores by CPUs that hold no lock): let guest-2 run
        // again and fault anew, as Linux's -EAGAIN does.
        if !write {
            return Err(ShadowFault::Again);
        }
        // A store that keeps unshadowing its own path: guest-2 stores into
        // a page that holds a table on the store's own translation path,
        // so lifting the page's protection drops that table and shadowing
        // it again protects the page again. zdat refuses to leave a
        // writable shadow PTE of a protected page (which would end the
        // loop), and says so.
        Err(ShadowFault::SelfMapped)
    }

    /// Check the shadow against its host: every table reached from the
    /// top is one of its shadow tables (descriptor: shadow, owner, level);
    /// every valid entry's source page is read-only in the host with its
    /// VSIE bit and an rmap naming the entry's table; every valid shadow
    /// PTE maps the host's frame of a page with the VSIE bit and an rmap;
    /// every rmap names a live structure and agrees with its inverse.
    /// Returns the number of valid shadow PTEs.
    pub fn check(&self) -> Result<u64, ShadowCheckError> {
        let (host, parent) = {
            let s = self.inner.lock();
            (s.host.clone(), s.parent.upgrade())
        };
        // The lock order: host, gmap, shadow.
        let h = lock_host(&host);
        let pg = parent.as_ref().map(|p| p.lock());
        let s = self.inner.lock();
        if s.removed {
            return if s.tables.len() <= 1 && s.rmap.is_empty() && s.sources.is_empty() {
                Ok(0)
            } else {
                Err(ShadowCheckError::Removed)
            };
        }
        let Some(pg) = pg else {
            return Err(ShadowCheckError::Removed);
        };
        let tr = |g1: u64| pg.translate(g1).ok();
        let rd = G1Reader { tr: &tr, host: &h };
        let (mut ptes, mut reached) = (0, 0);
        let top = s.asce.level();
        s.check_table(
            &rd,
            s.asce.origin(),
            crst_kind(top),
            0,
            &mut ptes,
            &mut reached,
        )?;
        // Every table the shadow keeps hangs below its top (a table no
        // valid entry points at is leaked until the shadow goes).
        if reached != s.tables.len() {
            return Err(ShadowCheckError::Unreachable {
                tables: s.tables.len() - reached,
            });
        }
        // Every rmap names a live structure, both directions agree.
        for (k, vms) in &s.sources {
            let live = if k.kind == KIND_PAGE {
                matches!(s.find(k.base, None), Found::Entry(ea, _)
                    // SAFETY: a PTE of a live shadow page table.
                    if !Pte::from_raw(unsafe { entry(ea) }.load(Ordering::Acquire)).is_invalid())
            } else {
                s.tables.contains_key(k)
            };
            if !live
                || vms
                    .iter()
                    .any(|v| !s.rmap.get(v).is_some_and(|r| r.contains(k)))
            {
                return Err(ShadowCheckError::Rmap(*k));
            }
        }
        for (v, keys) in &s.rmap {
            if let Some(k) = keys
                .iter()
                .find(|k| !s.sources.get(k).is_some_and(|vs| vs.contains(v)))
            {
                return Err(ShadowCheckError::Rmap(*k));
            }
        }
        Ok(ptes)
    }

    fn try_fault(&self, h: &mut HostMm, g2: u64, write: bool) -> Result<(), Retry> {
        let (parent, orig, fac) = {
            let s = self.inner.lock();
            if s.removed {
                return Err(Retry::Fault(ShadowFault::Again));
            }
            let p = s.parent.upgrade().ok_or(Retry::Fault(ShadowFault::Again))?;
            (p, s.orig_asce, facilities(s.edat_level))
        };
        if orig.is_real_space() {
            // No guest-2 tables: fake tables down to the page, guest-2's
            // address is the guest-1 address. Beyond guest-1 memory first
            // (nothing is made for an address that cannot be mapped).
            if parent.lock().translate(g2).is_err() {
                return Err(Retry::Fault(ShadowFault::Reflect(code::ADDRESSING)));
            }
            let mut level = Level::Region1;
            loop {
                self.install_fake(g2, level)?;
                match level.lower() {
                    Some(l) => level = l,
                    None => break,
                }
            }
            return self.install_page(h, &parent, g2, g2 & !(PAGE_SIZE - 1), false, write);
        }
        // The walk: read-only, under the host lock.
        let mut steps: Vec<G2Step> = Vec::new();
        steps
            .try_reserve(5)
            .map_err(|_| Retry::Fault(ShadowFault::NoMemory))?;
        let tr = tr_locked(&parent);
        let r = {
            let rd = G1Reader { tr: &tr, host: h };
            let mut level = Some(orig.level());
            walk::walk_traced(&rd, orig, g2, fac, &mut |st| {
                if steps.len() < 5 {
                    steps.push(G2Step {
                        level,
                        g1: st.origin.0 + st.index as u64 * 8,
                        raw: st.raw,
                    });
                }
                level = level.and_then(Level::lower);
            })
        };
        // Shadow the valid prefix: every step but the last on a fault (the
        // entry that failed, or whose next table's length check failed).
        let n = match r {
            Ok(_) => steps.len(),
            Err(_) => steps.len().saturating_sub(1),
        };
        let mut pte_src = None;
        for st in steps.iter().take(n) {
            match st.level {
                Some(l) => self.install_crst(h, &parent, g2, l, st, fac)?,
                None => pte_src = Some((st.g1, st.raw)),
            }
        }
        let t = match r {
            Err(c) => return Err(Retry::Fault(ShadowFault::Reflect(c))),
            Ok(t) => t,
        };
        if write && t.protected {
            return Err(Retry::Fault(ShadowFault::Reflect(code::PROTECTION)));
        }
        // The guest-2 PTE's page is the shadow page table's source (none
        // for a fake table: a large guest-2 frame has no page table).
        if let Some((g1, raw)) = pte_src {
            self.protect_source(h, &parent, g1, key_for(KIND_PGT, g2))?;
            self.unchanged_since_walk(h, &parent, g1, raw)?;
        }
        self.install_page(
            h,
            &parent,
            g2,
            t.real.0 & !(PAGE_SIZE - 1),
            t.protected,
            write,
        )
    }

    /// The walk read guest-2's entry at `g1` before its page was
    /// protected: a store in between (guest-1 running on another CPU, or
    /// guest-2 through a writable shadow PTE of the page) notified nobody.
    /// Read it again now that a change must notify: if it moved, walk
    /// again.
    fn unchanged_since_walk(
        &self,
        h: &HostMm,
        parent: &Mutex<GmapInner>,
        g1: u64,
        raw: u64,
    ) -> Result<(), Retry> {
        let tr = tr_locked(parent);
        let rd = G1Reader { tr: &tr, host: h };
        if rd.read(g1) == Some(raw) {
            Ok(())
        } else {
            Err(Retry::Again)
        }
    }

    /// Protect the host page holding guest-1 address `g1` for `key`:
    /// read-only with the VSIE bit, and an rmap (`gmap_protect_rmap`).
    fn protect_source(
        &self,
        h: &mut HostMm,
        parent: &Mutex<GmapInner>,
        g1: u64,
        key: ShadowKey,
    ) -> Result<(), Retry> {
        let vm = parent
            .lock()
            .translate(g1)
            .map_err(|_| Retry::Fault(ShadowFault::Reflect(code::ADDRESSING)))?
            & !(PAGE_SIZE - 1);
        if self
            .inner
            .lock()
            .sources
            .get(&key)
            .is_some_and(|v| v.contains(&vm))
            && h.space().pgste_bits(vm) & PGSTE_VSIE_BIT != 0
        {
            return Ok(());
        }
        h.populate(vm, false).map_err(host_refused)?;
        h.space()
            .force_prot_vsie(vm)
            .map_err(|e| Retry::Fault(ShadowFault::Host(super::space_error(e))))?;
        let mut s = self.inner.lock();
        if s.removed {
            return Err(Retry::Fault(ShadowFault::Again));
        }
        s.add_rmap(vm, key).map_err(Retry::Fault)
    }

    /// `gmap_shadow_r2t` .. `gmap_shadow_pgt`: make the shadow entry for
    /// `g2` in the shadow table of `level` valid, a copy of guest-2's
    /// entry `st` pointing at a new shadow table of the level below.
    fn install_crst(
        &self,
        h: &mut HostMm,
        parent: &Mutex<GmapInner>,
        g2: u64,
        level: Level,
        st: &G2Step,
        fac: Facilities,
    ) -> Result<(), Retry> {
        let key = key_for(crst_kind(level), g2);
        {
            let s = self.inner.lock();
            match s.find(g2, Some(level)) {
                Found::Missing => return Err(Retry::Again),
                Found::Entry(ea, _) => {
                    // SAFETY: an entry of a live shadow table.
                    let raw = unsafe { entry(ea) }.load(Ordering::Acquire);
                    let valid = match level {
                        Level::Segment => !SegmentEntry::from_raw(raw).is_invalid(),
                        _ => !RegionEntry::from_raw(raw).is_invalid(),
                    };
                    if valid {
                        return Ok(());
                    }
                }
            }
        }
        // Source first: only then may the entry become valid; and the
        // entry as it is once protected.
        self.protect_source(h, parent, st.g1, key)?;
        self.unchanged_since_walk(h, parent, st.g1, st.raw)?;
        let mut s = self.inner.lock();
        if s.removed {
            return Err(Retry::Fault(ShadowFault::Again));
        }
        let Found::Entry(ea, _) = s.find(g2, Some(level)) else {
            return Err(Retry::Again);
        };
        let id = s.id;
        let (child, new_raw, child_key) = match level.lower() {
            Some(lower) => {
                let e = RegionEntry::from_raw(st.raw);
                let ck = key_for(crst_kind(lower), g2);
                let t = alloc_table(id, lower as u64, e.next_origin().0, GT_SHADOW)
                    .ok_or(Retry::Fault(ShadowFault::NoMemory))?;
                let raw = e
                    .shadow_of(t.phys(), fac.edat1)
                    .map_err(|_| Retry::Fault(ShadowFault::NoMemory))?
                    .raw();
                (t, raw, ck)
            }
            None => {
                let se = SegmentEntry::from_raw(st.raw);
                let ck = key_for(KIND_PGT, g2);
                // A large guest-2 segment (EDAT-1) has no guest page table:
                // a fake one maps its frame page by page.
                let (gaddr, flags) = if fac.edat1 && se.is_large() {
                    (se.large_frame().0, GT_SHADOW | GT_FAKE)
                } else {
                    (se.page_table().0, GT_SHADOW)
                };
                let t = alloc_table(id, GMAP_PTE_LEVEL, gaddr, flags)
                    .ok_or(Retry::Fault(ShadowFault::NoMemory))?;
                let raw = SegmentEntry::table(t.phys(), se.is_protected())
                    .map_err(|_| Retry::Fault(ShadowFault::NoMemory))?
                    .raw();
                (t, raw, ck)
            }
        };
        s.link_child(ea, level, child_key, child, new_raw);
        Ok(())
    }

    /// The entry for `g2` in the fake table of `level` (real space): valid,
    /// pointing at a fake table of the level below that covers the guest-1
    /// addresses equal to its guest-2 ones. Nothing to protect: no guest-2
    /// table is copied.
    fn install_fake(&self, g2: u64, level: Level) -> Result<(), Retry> {
        let mut s = self.inner.lock();
        if s.removed {
            return Err(Retry::Fault(ShadowFault::Again));
        }
        let Found::Entry(ea, _) = s.find(g2, Some(level)) else {
            return Err(Retry::Again);
        };
        // SAFETY: an entry of a live shadow table, under the shadow lock.
        let slot = unsafe { entry(ea) };
        let raw = slot.load(Ordering::Acquire);
        let valid = match level {
            Level::Segment => !SegmentEntry::from_raw(raw).is_invalid(),
            _ => !RegionEntry::from_raw(raw).is_invalid(),
        };
        if valid {
            return Ok(());
        }
        let flags = GT_SHADOW | GT_FAKE;
        let nomem = Retry::Fault(ShadowFault::NoMemory);
        let (child, new_raw, child_key) = match level.lower() {
            Some(lower) => {
                let ck = key_for(crst_kind(lower), g2);
                let t = alloc_table(s.id, lower as u64, ck.base, flags).ok_or(nomem)?;
                let raw = RegionEntry::table(level, t.phys())
                    .map_err(|_| Retry::Fault(ShadowFault::NoMemory))?
                    .raw();
                (t, raw, ck)
            }
            None => {
                let ck = key_for(KIND_PGT, g2);
                let t = alloc_table(s.id, GMAP_PTE_LEVEL, ck.base, flags).ok_or(nomem)?;
                let raw = SegmentEntry::table(t.phys(), false)
                    .map_err(|_| Retry::Fault(ShadowFault::NoMemory))?
                    .raw();
                (t, raw, ck)
            }
        };
        s.link_child(ea, level, child_key, child, new_raw);
        Ok(())
    }

    /// `gmap_shadow_page`: map guest-2 page `g2` to the host frame of
    /// guest-1 page `g1page`, read-only if guest-2 protects it or the host
    /// PTE is read-only (a store lifts a shadow's protection of the host
    /// page first, which notifies).
    fn install_page(
        &self,
        h: &mut HostMm,
        parent: &Mutex<GmapInner>,
        g2: u64,
        g1page: u64,
        g2_protected: bool,
        write: bool,
    ) -> Result<(), Retry> {
        let g2 = g2 & !(PAGE_SIZE - 1);
        let vm = parent
            .lock()
            .translate(g1page)
            .map_err(|_| Retry::Fault(ShadowFault::Reflect(code::ADDRESSING)))?;
        h.populate(vm, write && !g2_protected)
            .map_err(host_refused)?;
        let (frame, pprot) = h.space().lookup(vm).ok_or(Retry::Again)?;
        // The host's protection is its PTE's and its segment entry's.
        let hprot = if h.space().segment_entry(vm).is_protected() {
            Prot::ReadOnly
        } else {
            pprot
        };
        h.space()
            .pgste_set_bits(vm, PGSTE_VSIE_BIT)
            .map_err(|_| Retry::Again)?;
        let mut s = self.inner.lock();
        if s.removed {
            return Err(Retry::Fault(ShadowFault::Again));
        }
        // The populate may have unshadowed the path (its page held a
        // guest-2 table): then walk and install again.
        let Found::Entry(ea, pto) = s.find(g2, None) else {
            return Err(Retry::Again);
        };
        let ro = g2_protected || hprot == Prot::ReadOnly;
        let new = Pte::new(frame, if ro { Prot::ReadOnly } else { Prot::ReadWrite })
            .map_err(|_| Retry::Fault(ShadowFault::NoMemory))?;
        s.add_rmap(vm, key_for(KIND_PAGE, g2))
            .map_err(Retry::Fault)?;
        // SAFETY: a PTE of a live shadow page table, under the shadow lock.
        let slot = unsafe { entry(ea) };
        let old = slot.load(Ordering::Acquire);
        if old == new.raw() {
            // Another CPU's fault made it already: an IPTE would only
            // make it invalid for a moment under CPUs using it.
            return Ok(());
        }
        if !Pte::from_raw(old).is_invalid() {
            // SAFETY: `pto` is that live shadow page table.
            unsafe { tlb::ipte(&s.context, pto, g2) };
        }
        slot.store(new.raw(), Ordering::Release);
        s.stats.ptes_made += 1;
        Ok(())
    }
}

enum Retry {
    Again,
    Fault(ShadowFault),
}

/// A host refusal as a fault's result.
fn host_refused(e: crate::dat::space::SpaceError) -> Retry {
    Retry::Fault(match e {
        crate::dat::space::SpaceError::NoMemory => ShadowFault::NoMemory,
        e => ShadowFault::Host(super::space_error(e)),
    })
}

impl ShadowInner {
    /// Own `child` (the shadow table `key`) and make the invalid entry at
    /// `ea`, in the shadow table of `level`, point at it (`raw`). Invalid
    /// to valid needs no invalidation.
    fn link_child(
        &mut self,
        ea: PhysAddr,
        level: Level,
        key: ShadowKey,
        child: GmapTable,
        raw: u64,
    ) {
        self.tables.insert(
            key,
            ShadowTable {
                table: child,
                parent: Some((ea, level)),
            },
        );
        // SAFETY: an entry of a live shadow table, under the shadow lock.
        unsafe { entry(ea) }.store(raw, Ordering::Release);
        self.stats.tables_made += 1;
    }
}
