//! s390 dynamic address translation: entry formats, tables, the software
//! walker, TLB invalidation, mmu_gather and address spaces.

pub mod entry;
pub mod gather;
pub mod space;
pub mod table;
pub mod tlb;
pub mod walk;

#[cfg(test)]
mod space_tests;
