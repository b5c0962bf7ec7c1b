// Every table free consumes its handle: a CRST table, a gmap table or a
// ptdesc frame cannot be freed twice.
use kernel::dat::entry::Level;
use kernel::dat::table::{crst_alloc, crst_free};
use kernel::gmap::table::{gmap_alloc_table, gmap_free_table};
use kernel::mm::ptdesc::{pagetable_alloc, pagetable_dtor_free, pagetable_pte_ctor};

fn main() {}

pub fn case() {
    let t = crst_alloc(Level::Segment).unwrap();
    crst_free(t);
    crst_free(t);

    let g = gmap_alloc_table(1, Level::Segment, 0).unwrap();
    let _ = gmap_free_table(g, 1, Level::Segment);
    let _ = gmap_free_table(g, 1, Level::Segment);

    let pt = pagetable_pte_ctor(pagetable_alloc(0).unwrap()).unwrap();
    pagetable_dtor_free(pt);
    pagetable_dtor_free(pt);
}
