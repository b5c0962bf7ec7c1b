// A table's entries are borrowed from its handle: the table cannot be freed
// while a view of its entries lives, so nothing writes a freed table.
use core::sync::atomic::Ordering;

use kernel::dat::entry::Level;
use kernel::dat::table::{crst_alloc, crst_free};
use kernel::gmap::table::{gmap_alloc_table, gmap_free_table, table_entries};

fn main() {}

pub fn case() {
    let t = crst_alloc(Level::Segment).unwrap();
    let e = t.entries();
    crst_free(t);
    e[0].store(0, Ordering::Relaxed);

    let g = gmap_alloc_table(1, Level::Segment, 0).unwrap();
    let ge = table_entries(&g);
    let _ = gmap_free_table(g, 1, Level::Segment);
    ge[0].store(0, Ordering::Relaxed);
}
