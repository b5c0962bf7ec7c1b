// Freeing consumes the handle: a table (or block) cannot be used after it
// was freed.
use kernel::dat::entry::Level;
use kernel::dat::table::{crst_alloc, crst_free};
use kernel::mm::{alloc_pages, free_pages, AllocFlags};

fn main() {}

pub fn case() {
    let t = crst_alloc(Level::Segment).unwrap();
    crst_free(t);
    let _ = t.phys();

    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    let _ = free_pages(p);
    let _ = p.phys();
}
