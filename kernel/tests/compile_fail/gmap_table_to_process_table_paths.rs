// A gmap table cannot go where a process page table goes: the ptdesc dtor
// (`pagetable_dtor`, `pagetable_dtor_free`) and the mmu_gather take
// `Frame<PtDesc>` / `CrstTable` only, so the page-table count (NR_PAGETABLE)
// and the process-table free path never see a gmap table.
use kernel::dat::entry::Level;
use kernel::dat::gather::GatheredTable;
use kernel::gmap::table::gmap_alloc_table;
use kernel::mm::ptdesc::{pagetable_dtor, pagetable_dtor_free};

fn main() {}

pub fn case() {
    let a = gmap_alloc_table(1, Level::Segment, 0).unwrap();
    let b = gmap_alloc_table(1, Level::Segment, 0).unwrap();
    let c = gmap_alloc_table(1, Level::Segment, 0).unwrap();
    let _ = pagetable_dtor(a);
    pagetable_dtor_free(b);
    let _ = GatheredTable::Crst(c);
}
