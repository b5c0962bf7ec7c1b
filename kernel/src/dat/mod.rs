//! s390 dynamic address translation: entry formats, tables, the software
//! walker, TLB invalidation and which CPUs it must reach, mmu_gather and
//! address spaces.
//!
//! Linux: arch/s390/mm/ (pgalloc.c, pgtable.c, gmap.c's host side) and arch/s390/include/asm/pgtable.h, tlbflush.h, mmu.h.

/// Report a bug the page-table code found in itself: a counted `BUG: dat:`
/// line (`crate::bug`), never silently ignored.
pub(crate) fn dat_bug(what: core::fmt::Arguments<'_>) {
    crate::bug::report("dat", what);
}

pub mod context;
pub mod entry;
pub mod frag;
pub mod gather;
#[cfg(target_arch = "s390x")]
pub mod kernel;
pub mod shared;
pub mod space;
pub mod table;
pub mod tlb;
#[cfg(target_arch = "s390x")]
pub mod view;
pub mod walk;

#[cfg(test)]
mod entry_tests;
#[cfg(test)]
mod frag_tests;
#[cfg(target_os = "none")]
mod ktests;
#[cfg(test)]
mod space_tests;
