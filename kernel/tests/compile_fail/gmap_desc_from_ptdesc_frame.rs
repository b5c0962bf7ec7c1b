// The reverse: a process page table (`Frame<PtDesc>`) is not a gmap table,
// so no `&GmapTableDesc` can be formed from it, neither by dereferencing
// the handle nor through `page_gmap_table`.
use kernel::gmap::table::GmapTableDesc;
use kernel::mm::gtdesc::page_gmap_table;
use kernel::mm::ptdesc::{pagetable_alloc, pagetable_pmd_ctor};

fn main() {}

pub fn case() {
    let pt = pagetable_pmd_ctor(pagetable_alloc(2).unwrap()).unwrap();
    let _: &GmapTableDesc = &*pt;
    let _ = page_gmap_table(&pt);
}
