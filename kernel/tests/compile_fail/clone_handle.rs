// Handles are not `Clone` either: no method makes a second owner.
use kernel::dat::entry::Level;
use kernel::dat::table::crst_alloc;
use kernel::gmap::table::gmap_alloc_table;
use kernel::mm::ptdesc::{pagetable_alloc, pagetable_pte_ctor};
use kernel::mm::{alloc_pages, AllocFlags};

fn main() {}

pub fn case() {
    let t = crst_alloc(Level::Segment).unwrap();
    let _ = t.clone();

    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    let _ = p.clone();

    let g = gmap_alloc_table(1, Level::Segment, 0).unwrap();
    let _ = g.clone();

    let pt = pagetable_pte_ctor(pagetable_alloc(0).unwrap()).unwrap();
    let _ = pt.clone();
}
