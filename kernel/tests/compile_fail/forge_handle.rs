// Nor can a handle be assembled from its parts: `Frame`, `Pages` and
// `CrstTable` have private fields (`PteTable`: forge_pte_table), so safe code cannot
// point a second handle at a page another one owns.
use core::marker::PhantomData;
use core::ptr::NonNull;

use kernel::dat::table::CrstTable;
use kernel::mm::frame::Frame;
use kernel::mm::ptdesc::{pagetable_alloc, pagetable_pte_ctor, PtDesc};
use kernel::mm::{alloc_pages, AllocFlags, Pages};

fn main() {}

pub fn case() {
    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    let _ = Frame::<PtDesc> {
        head: NonNull::from(p.page()),
        _desc: PhantomData,
    };
    let _ = Pages {
        tagged: NonNull::from(p.page()),
    };
    let _ = CrstTable {
        frame: pagetable_pte_ctor(pagetable_alloc(0).unwrap()).unwrap(),
    };
}
