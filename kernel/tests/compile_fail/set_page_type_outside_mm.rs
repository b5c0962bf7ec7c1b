// Only mm changes a page's type: outside mm a `Page` is read-only, so a
// gmap table cannot be retagged `PageTable` (to be viewed as a PtDesc), nor
// any other page retagged, through the setter or through the field.
use core::sync::atomic::Ordering;

use kernel::dat::entry::Level;
use kernel::gmap::table::{gmap_alloc_table, gmap_table_page};
use kernel::mm::page::PageType;
use kernel::mm::ptdesc::{pagetable_alloc, pagetable_pte_ctor, ptdesc_page};
use kernel::mm::{alloc_pages, AllocFlags};

fn main() {}

pub fn case() {
    let g = gmap_alloc_table(1, Level::Segment, 0).unwrap();
    gmap_table_page(&g).set_page_type(PageType::PageTable);

    let pt = pagetable_pte_ctor(pagetable_alloc(0).unwrap()).unwrap();
    ptdesc_page(&pt).set_page_type(PageType::GmapTable);

    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    p.page().set_page_type(PageType::PageTable);
    p.page().page_type.store(6, Ordering::Relaxed);
}
