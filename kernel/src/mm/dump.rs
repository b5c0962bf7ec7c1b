//! What the boot log and `mm.dump` show: the one-line summary, the
//! physical memory map from the memmap, free blocks per order (as
//! /proc/buddyinfo) and the counters.
//!
//! Linux: /proc/buddyinfo (mm/vmstat.c) and the boot-time memory summary of mm/mm_init.c.

use super::addr::{Pfn, PhysAddr, PAGE_SIZE};
use super::{
    heap, layout, memmap, nr_free_pages, nr_free_per_order, nr_managed_pages, nr_pcp_pages,
    nr_reserved_pages, page, pfn_to_page, Layout,
};

/// The one-line summary every boot log has.
pub fn log_summary() {
    let Some(l) = layout() else { return };
    let pct_x100 = l.memmap_bytes * 10_000 / l.memory;
    crate::pr_info!(
        "mm: memmap {} KiB at {:#x} ({}.{:02}% of memory), {} pages free, {} reserved, heap {} KiB",
        l.memmap_bytes >> 10,
        l.memmap_start.0,
        pct_x100 / 100,
        pct_x100 % 100,
        nr_free_pages(),
        nr_reserved_pages(),
        heap::size() >> 10
    );
    #[cfg(feature = "memdesc")]
    crate::pr_info!(
        "mm: memdesc layout: {}-byte struct page; {} descriptors in {} KiB of slabs",
        core::mem::size_of::<page::Page>(),
        super::desc::nr_desc(),
        super::desc::desc_bytes() >> 10
    );
}

/// `mm.dump`: free blocks per order, reserved pages, memmap size and
/// overhead.
/// What a page of the physical memory map is, for `dump`.
fn region_kind(
    pfn: u64,
    image: (PhysAddr, PhysAddr),
    l: &Layout,
    prev: &'static str,
) -> &'static str {
    let pa = pfn * PAGE_SIZE;
    if pa < 0x2000 {
        return "lowcore (prefix area)";
    }
    if pa >= image.0 .0 && pa < image.1 .0 {
        return "kernel image";
    }
    if pa >= l.memmap_start.0 && pa < l.memmap_start.0 + l.memmap_bytes {
        return "memmap (struct page array)";
    }
    if pa >= l.firmware.0 .0 && pa < l.firmware.1 .0 {
        return "firmware (s390-ccw BIOS)";
    }
    use page::PageType;
    match pfn_to_page(Pfn(pfn)).and_then(|p| p.page_type()) {
        Some(PageType::Free | PageType::Buddy) => "free",
        Some(PageType::Pcp) => "free (per-CPU lists)",
        Some(PageType::Allocated) => "allocated",
        Some(PageType::PageTable) => "page tables",
        Some(PageType::GmapTable) => "gmap tables",
        Some(PageType::Heap) => "heap",
        Some(PageType::DescSlab) => "descriptors (memdesc)",
        Some(PageType::Reserved) => "reserved",
        // The other pages of a block belong to its head's kind.
        Some(PageType::Tail) => prev,
        None => "unknown page type",
    }
}

/// `mm.dump`: the physical memory map (regions of one kind, from the
/// memmap), then free blocks per order as /proc/buddyinfo shows them, and
/// the counters.
pub fn dump(image: (PhysAddr, PhysAddr)) {
    use core::fmt::Write;
    let Some(l) = layout() else { return };
    crate::pr_info!("mm: physical memory map ({} MiB):", l.memory >> 20);
    let n = memmap().nr_pages();
    let (mut start, mut kind) = (0u64, region_kind(0, image, l, "free"));
    let mut shown = 0;
    let mut more = 0;
    for pfn in 1..=n {
        let k = if pfn < n {
            region_kind(pfn, image, l, kind)
        } else {
            ""
        };
        if k == kind {
            continue;
        }
        if shown < 48 {
            crate::pr_info!(
                "mm:   {:#012x}-{:#012x} {:>9} KiB  {}",
                start * PAGE_SIZE,
                pfn * PAGE_SIZE - 1,
                ((pfn - start) * PAGE_SIZE) >> 10,
                kind
            );
            shown += 1;
        } else {
            more += 1;
        }
        (start, kind) = (pfn, k);
    }
    if more > 0 {
        crate::pr_info!("mm:   ... {} more regions", more);
    }
    let per_order = nr_free_per_order();
    let mut line = crate::fmtbuf::FixedBuf::<256>::new();
    for (o, n) in per_order.iter().enumerate() {
        let _ = write!(line, " {o}:{n}");
    }
    crate::pr_info!("mm: free blocks per order:{}", line.as_str());
    crate::pr_info!(
        "mm: {} pages free ({} MiB), {} reserved, {} managed, {} per-CPU",
        nr_free_pages(),
        (nr_free_pages() * PAGE_SIZE) >> 20,
        nr_reserved_pages(),
        nr_managed_pages(),
        nr_pcp_pages()
    );
    let pct_x1000 = l.memmap_bytes * 100_000 / l.memory;
    crate::pr_info!(
        "mm: memmap {:#x}-{:#x}: {} bytes for {} frames, overhead {}.{:03}%",
        l.memmap_start.0,
        l.memmap_start.0 + l.memmap_bytes,
        l.memmap_bytes,
        l.memory / PAGE_SIZE,
        pct_x1000 / 1000,
        pct_x1000 % 1000
    );
    crate::pr_info!(
        "mm: firmware area {:#x}-{:#x} reserved; heap {} KiB in {} regions",
        l.firmware.0 .0,
        l.firmware.1 .0,
        heap::size() >> 10,
        heap::regions()
    );
}
