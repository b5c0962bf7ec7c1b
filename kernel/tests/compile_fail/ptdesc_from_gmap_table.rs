// A gmap table handle is not a process page table: its descriptor is a
// `GmapTableDesc`, so no `&PtDesc` can be formed from it, neither by
// dereferencing the handle nor through `page_ptdesc` (which takes a
// `&Page`, and a handle is not one).
use kernel::dat::entry::Level;
use kernel::gmap::table::gmap_alloc_table;
use kernel::mm::ptdesc::{page_ptdesc, PtDesc};

fn main() {}

pub fn case() {
    let t = gmap_alloc_table(1, Level::Segment, 0).unwrap();
    let _: &PtDesc = &*t;
    let _ = page_ptdesc(&t);
}
