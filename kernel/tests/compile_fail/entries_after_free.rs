// And a freed table's entries cannot be reached afresh: `entries` needs the
// handle, which the free consumed.
use core::sync::atomic::Ordering;

use kernel::dat::entry::Level;
use kernel::dat::table::{crst_alloc, crst_free};

fn main() {}

pub fn case() {
    let t = crst_alloc(Level::Segment).unwrap();
    crst_free(t);
    t.entries()[0].store(0, Ordering::Relaxed);
}
