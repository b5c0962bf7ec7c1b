// `free_pages` consumes its `Pages`: a block cannot be freed twice.
use kernel::mm::{alloc_pages, free_pages, AllocFlags};

fn main() {}

pub fn case() {
    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    let _ = free_pages(p);
    let _ = free_pages(p);
}
