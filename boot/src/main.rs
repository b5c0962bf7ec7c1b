//! zdat kernel binary: the head QEMU enters, the lowcore presets, the
//! interrupt entry stubs and the panic handler. Everything else is the
//! `kernel` library.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod entry;
#[cfg(target_os = "none")]
mod head;

/// The kernel heap (linked_list_allocator regions fed by the buddy
/// allocator).
#[cfg(target_os = "none")]
#[global_allocator]
static HEAP: kernel::mm::heap::KernelHeap = kernel::mm::heap::KernelHeap;

/// On the host this crate has nothing to run; x.py builds it for s390x.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("zdat is an s390x kernel: build and boot it with `python3 x.py run`");
}
