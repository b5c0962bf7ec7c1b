// The ways back from a raw address to a handle, or to table memory, are
// `unsafe`: safe code cannot make a second handle to a table that an entry
// (or another handle) owns, nor write a word at any real address.
use kernel::dat::frag::PteTable;
use kernel::dat::table::{entry, CrstTable};
use kernel::mm::addr::{Pfn, PhysAddr};
use kernel::mm::frame::Frame;
use kernel::mm::ptdesc::PtDesc;
use kernel::mm::{free_pages_raw, Pages};

fn main() {}

pub fn case(pa: PhysAddr) {
    let _ = Frame::<PtDesc>::from_raw(pa);
    let _ = CrstTable::from_raw(pa);
    let _ = PteTable::from_raw(pa, false);
    let _ = Pages::from_raw(Pfn(1), 0);
    let _ = free_pages_raw(Pfn(1), 0);
    entry(pa).store(0, core::sync::atomic::Ordering::Relaxed);
}
