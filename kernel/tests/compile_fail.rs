//! What the handle types rule out, proven by programs that must not
//! compile (`tests/compile_fail/`, one per case, each with its expected
//! compiler error pinned in a `.stderr` file next to it, so a case that
//! starts failing for another reason fails the test):
//!
//! - `ptdesc_from_gmap_table`: forming a `&PtDesc` from a gmap table handle (deref or `page_ptdesc`).
//! - `gmap_desc_from_ptdesc_frame`: forming a `&GmapTableDesc` from a `Frame<PtDesc>` (deref or `page_gmap_table`).
//! - `gmap_table_to_process_table_paths`: a gmap table to `pagetable_dtor`, `pagetable_dtor_free` or the mmu_gather.
//! - `free_frame_without_dtor`: a live `Frame<PtDesc>` to `pagetable_free` / `free_pages` without its dtor.
//! - `use_after_free`: using a table or block after it was freed (`crst_free(t); t.phys()`).
//! - `double_free_pages`: freeing a `Pages` twice.
//! - `double_free_table`: freeing a CRST table, a gmap table or a ptdesc frame twice.
//! - `copy_handle`: copying a handle (`let a = t; let b = t;`) of any kind.
//! - `clone_handle`: cloning a handle of any kind (no `Clone`).
//! - `set_page_type_outside_mm`: changing a page's type from outside mm (setter or field).
//! - `page_write_outside_mm`: writing a page's refcount, flags, union words or per-CPU link from outside mm.
//! - `write_through_freed_handle`: freeing a table while a view of its entries lives, then writing through it.
//! - `entries_after_free`: reaching a freed table's entries.
//! - `free_borrowed_table`: freeing a table while its descriptor is borrowed, or keeping a view as `&'static`.
//! - `forge_descriptor`: making a `PtDesc` or `GmapTableDesc` by hand, or a typed `Frame` from a page without a ctor.
//! - `forge_handle`: assembling a `Frame`, `Pages` or `CrstTable` from its fields.
//! - `forge_pte_table`: assembling a `PteTable` from its fields.
//! - `forge_descriptor_type`: adding a descriptor type outside mm (the `FrameDesc` trait is sealed).
//! - `raw_needs_unsafe`: a handle from a raw address (`from_raw`), a free by frame number or a raw entry without `unsafe`.
//! - `host_and_hooks_outside_gmap`: installing the space hooks, changing or replacing a host's space, or taking a mapped frame's handle from a `HostMm`.
//! - `locks_and_fragments_outside_dat`: taking a page-table lock from outside the crate, or making a fragment allocator.
//!
//! `tests/pass/correct_use.rs` is the fair-play version of the same calls,
//! which must compile. The cases only compile (host has no memmap outside
//! the kernel's own unit tests), and Miri never runs this file: it would
//! start rustc under the interpreter.
//!
//! trybuild rather than `compile_fail` doctests: a doctest passes for any
//! compiler error, including a typo, while trybuild pins the exact error
//! of each case. After a toolchain bump, regenerate with
//! `TRYBUILD=overwrite cargo test -p kernel --test compile_fail` and review
//! every `.stderr` diff by hand.

#![cfg(not(miri))]

#[test]
fn compile_fail() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
    t.pass("tests/pass/*.rs");
}
