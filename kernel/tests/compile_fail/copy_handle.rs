// Handles are not `Copy`: assigning one moves it, so there are never two
// handles to one block or table.
use kernel::dat::entry::Level;
use kernel::dat::table::crst_alloc;
use kernel::gmap::table::gmap_alloc_table;
use kernel::mm::ptdesc::{pagetable_alloc, pagetable_pte_ctor};
use kernel::mm::{alloc_pages, AllocFlags};

fn main() {}

pub fn case() {
    let t = crst_alloc(Level::Segment).unwrap();
    let _a = t;
    let _b = t;

    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    let _c = p;
    let _d = p;

    let g = gmap_alloc_table(1, Level::Segment, 0).unwrap();
    let _e = g;
    let _f = g;

    let pt = pagetable_pte_ctor(pagetable_alloc(0).unwrap()).unwrap();
    let _g = pt;
    let _h = pt;
}
