// Descriptors cannot be made by hand (their fields are private), and only
// mm's ctors make a typed frame from a page (`Frame::from_head` is mm's),
// so a handle's type is always its page's type tag.
use kernel::gmap::table::GmapTableDesc;
use kernel::mm::frame::Frame;
use kernel::mm::ptdesc::PtDesc;
use kernel::mm::{alloc_pages, AllocFlags};

fn main() {}

pub fn case() {
    let _ = PtDesc {};
    let _ = GmapTableDesc {};
    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    let _ = Frame::<GmapTableDesc>::from_head(p.page());
    let _ = Frame::<PtDesc>::from_head(p.page());
}
