// A PTE table handle cannot be assembled from its parts either (its own
// file: rustc reports a struct literal that misses private fields before,
// and instead of, the private-field errors of the other handles).
use kernel::dat::frag::PteTable;
use kernel::mm::addr::PhysAddr;

fn main() {}

pub fn case() {
    let _ = PteTable {
        pa: PhysAddr(0),
        pgste: false,
    };
}
