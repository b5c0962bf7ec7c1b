// Nor can code outside mm write any other word of a `struct page`: the
// refcount, the flags, the union words and the per-CPU list link are mm's.
// (A planted `pcp.next` would be dereferenced by the allocator's pop.)
use kernel::mm::page::PageFlags;
use kernel::mm::{alloc_pages, AllocFlags};

fn main() {}

pub fn case() {
    let p = alloc_pages(0, AllocFlags::empty()).unwrap();
    let page = p.page();
    page.set_refcount(2);
    page.set_flags(PageFlags::RESERVED);
    page.set_head(3);
    page.clear_union();
    let _ = page.words();
    let _ = page.pcp();
    let _ = page.buddy();
}
