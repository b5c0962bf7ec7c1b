// `pagetable_free` takes the `Pages` a dtor gave back: a live page table
// (`Frame<PtDesc>`) cannot skip its dtor on the way to the allocator, so
// NR_PAGETABLE and the page's type stay right.
use kernel::mm::free_pages;
use kernel::mm::ptdesc::{pagetable_alloc, pagetable_free, pagetable_pte_ctor};

fn main() {}

pub fn case() {
    let a = pagetable_pte_ctor(pagetable_alloc(0).unwrap()).unwrap();
    let _ = pagetable_free(a);
    let b = pagetable_pte_ctor(pagetable_alloc(0).unwrap()).unwrap();
    let _ = free_pages(b);
}
