// A page-table lock reached through a raw table address (`virt_to_ptdesc`
// gives `&'static`) could outlive its table, and a guard left over would
// unlock the next table's lock: only the page-table code takes ptlocks.
// The fragment allocator is a space's own: a table freed into another
// allocator's list would later free a frame someone else owns.
use kernel::dat::frag::FragAlloc;
use kernel::mm::addr::VirtAddr;
use kernel::mm::ptdesc::{ptlock_ptr, virt_to_ptdesc};

fn main() {}

pub fn case() {
    let pt = virt_to_ptdesc(VirtAddr(0x10_0000)).unwrap();
    let _guard = ptlock_ptr(pt).lock();
    let _a = FragAlloc::new(false);
}
