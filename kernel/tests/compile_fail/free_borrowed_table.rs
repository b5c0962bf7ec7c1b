// A descriptor view lives no longer than the handle: a table cannot be
// freed while its descriptor is borrowed, and a view cannot be kept as
// `&'static`.
use kernel::dat::entry::Level;
use kernel::dat::table::{crst_alloc, crst_free};
use kernel::gmap::table::{gmap_alloc_table, gmap_free_table, GmapTableDesc};
use kernel::mm::ptdesc::PtDesc;

fn main() {}

pub fn case() {
    let t = crst_alloc(Level::Segment).unwrap();
    let d: &PtDesc = t.ptdesc();
    crst_free(t);
    let _ = d.order();

    let g = gmap_alloc_table(1, Level::Segment, 0).unwrap();
    let gd: &GmapTableDesc = &g;
    let _ = gmap_free_table(g, 1, Level::Segment);
    let _ = gd.gaddr();
}

pub fn keep() -> &'static PtDesc {
    let t = crst_alloc(Level::Segment).unwrap();
    t.ptdesc()
}
