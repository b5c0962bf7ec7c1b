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
//!
//! This file owns the gmap's state, creation and teardown; `walk` its
//! table walk and linking, `ops` the operations KVM calls, `hooks` what the
//! host space tells it, `check` its checker, `table` its tables.

mod check;
mod hooks;
pub mod host;
pub mod notify;
mod ops;
pub mod shadow;
pub mod table;
mod walk;

#[cfg(target_arch = "s390x")]
pub mod guest;
#[cfg(target_os = "none")]
mod ktests;
#[cfg(target_arch = "s390x")]
pub mod vsie;
#[cfg(target_os = "none")]
pub(crate) mod vsie_tests;

use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::sync::Mutex;

use crate::dat::context::MmContext;
use crate::dat::entry::{Asce, Level, RegionEntry, SEGMENT_SIZE};
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
pub use check::GmapCheckError;
pub(crate) use hooks::guests_of;
pub use hooks::segment_gaddr_of_entry;
use hooks::{gmap_pte_alias_purge, gmap_segment_change, gmap_unlink};
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
    /// A write to a guest page its host made read-only.
    Protected,
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
    /// Which CPUs have the gmap loaded (a guest runs on it, or a test
    /// reaches it as the secondary space) and which may hold TLB entries of
    /// it: the gmap's own invalidations, and the host's alias IPTEs at its
    /// guest addresses, reach those.
    context: Arc<MmContext>,
    /// The host space's context: a CPU attaching the gmap attaches it too.
    host_context: Arc<MmContext>,
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
    /// vSIE: the shadow gmaps made for guest-2s of this gmap (Linux's
    /// `children`); removed ones are pruned by the next `gmap_shadow`.
    shadows: Vec<Arc<Mutex<shadow::ShadowInner>>>,
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
fn lock_host(parent: &Arc<Mutex<HostMm>>) -> crate::sync::MutexGuard<'_, HostMm> {
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
        space::SpaceError::Protected => GmapError::Protected,
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
    let (parent_id, host_limit, host_context) = {
        let h = lock_host(parent);
        (
            h.space().id(),
            h.space().max_limit(),
            h.space().context().clone(),
        )
    };
    let inner = Arc::new(Mutex::new(GmapInner {
        id,
        asce,
        context: Arc::new(MmContext::new()),
        host_context,
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
        shadows: Vec::new(),
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
                unsafe { tlb::idte(&self.context, ptbl, plevel, gaddr) };
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
        shadow::remove_all(&mut self.shadows);
        let tables = core::mem::take(&mut self.tables);
        self.host_to_guest.clear();
        self.guest_to_host.clear();
        if tables.is_empty() {
            return 0;
        }
        // Purge what any TLB may still hold of the ASCE before its tables
        // go back.
        tlb::flush_tlb_mm(&self.context, self.asce);
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
    // Host first (the lock order; its shadows' faults and checks run
    // under it).
    let host = g.parent();
    let refused = {
        let _h = lock_host(&host);
        g.inner.lock().teardown()
    };
    drop(g);
    match refused {
        0 => Ok(()),
        n => Err(GmapError::FreeRefused(n)),
    }
}

impl Drop for Gmap {
    fn drop(&mut self) {
        let host = self.inner.lock().parent.clone();
        let h = lock_host(&host);
        let mut inner = self.inner.lock();
        let refused = inner.teardown();
        let id = inner.id;
        drop(inner);
        drop(h);
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
