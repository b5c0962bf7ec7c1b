// A gmap trusts its host: the space hooks that tell it about unlinks are
// installed by the gmap subsystem alone, and the host's space cannot be
// reached (changed, replaced, or remapped through `&self`) from outside the crate (a `mem::replace` of it, or
// a page mapped to a frame the host does not own, would leave gmap
// entries pointing at freed or foreign memory). The host's frames are
// lent read-only (`frame`) or as bytes (`frame_bytes`), never as the
// `Pages` handle a `mem::replace` could take away while it is mapped.
use kernel::dat::space::AddressSpace;
use kernel::gmap::HostMm;
use kernel::mm::{alloc_pages, AllocFlags};

fn main() {}

pub fn case(h: &mut HostMm) {
    let _ = kernel::dat::space::set_hooks;
    let _ = core::mem::replace(h.space_mut(), AddressSpace::new(1 << 31, 1 << 31, true).unwrap());
    let taken = core::mem::replace(h.frame(0).unwrap(), alloc_pages(0, AllocFlags::empty()).unwrap());
    drop(taken);
    // Nor through a shared view: `remap` takes `&self`.
    let _ = h.space().remap(0, kernel::mm::addr::PhysAddr(0));
}
