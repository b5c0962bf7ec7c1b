// The fair-play versions of the compile-fail cases compile: each case
// there fails because of the one misuse it names, not because the API is
// used wrongly around it. Only compiled and started: `main` never calls
// `case` (there is no memmap outside the kernel's own unit tests).
use core::sync::atomic::Ordering;

use kernel::dat::entry::Level;
use kernel::dat::gather::GatheredTable;
use kernel::dat::table::{crst_alloc, crst_free};
use kernel::gmap::table::{gmap_alloc_table, gmap_free_table, table_entries, GmapTableDesc};
use kernel::mm::gtdesc::{gmap_table_page, page_gmap_table};
use kernel::mm::ptdesc::{
    page_ptdesc, pagetable_alloc, pagetable_dtor, pagetable_dtor_free, pagetable_free,
    pagetable_pte_ctor, ptdesc_page, PtDesc,
};
use kernel::mm::{alloc_pages, free_pages, AllocFlags};

fn main() {
    let _ = case as fn();
}

fn case() {
    // A process page table: ctor, its descriptor, dtor, free.
    let pt = pagetable_pte_ctor(pagetable_alloc(0).unwrap()).unwrap();
    let d: &PtDesc = &pt;
    let _ = page_ptdesc(ptdesc_page(d)).map(PtDesc::order);
    let _ = page_gmap_table(ptdesc_page(d)); // compiles; refused at run time
    let p = pagetable_dtor(pt).map_err(|(f, _)| f).unwrap();
    let _ = pagetable_free(p);
    pagetable_dtor_free(pagetable_pte_ctor(pagetable_alloc(0).unwrap()).unwrap());

    // A CRST table: write its entries, stop, then free it.
    let t = crst_alloc(Level::Segment).unwrap();
    t.entries()[0].store(0, Ordering::Relaxed);
    let _ = t.ptdesc().order();
    let moved = t;
    crst_free(moved);
    let _ = GatheredTable::Crst(crst_alloc(Level::Segment).unwrap());

    // A gmap table: its descriptor, its entries, then the free.
    let g = gmap_alloc_table(1, Level::Segment, 0).unwrap();
    let gd: &GmapTableDesc = &g;
    let _ = gd.gaddr();
    let _ = page_ptdesc(gmap_table_page(gd)); // compiles; refused at run time
    table_entries(&g)[0].store(0, Ordering::Relaxed);
    let _ = gmap_free_table(g, 1, Level::Segment);

    // A block.
    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    let _ = p.page().page_type();
    let _ = free_pages(p);
}
