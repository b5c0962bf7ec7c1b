//! The PTE notifier (Linux gmap_register_pte_notifier / ptep_notify): a
//! host PTE whose PGSTE has the notify bit tells every registered callback
//! the guest range it backs, once, before the change is made.

use alloc::vec::Vec;

use spin::Mutex;

/// Called with (gmap id, guest start, guest end) of the affected page; `end`
/// is exclusive, `start + 4 KiB`, except for the last page of a
/// region-first gmap, where it saturates at `u64::MAX` (2^64 does not fit).
pub type PteNotifier = fn(gmap: u64, start: u64, end: u64);

static NOTIFIERS: Mutex<Vec<PteNotifier>> = Mutex::new(Vec::new());

pub fn gmap_register_pte_notifier(f: PteNotifier) {
    let mut n = NOTIFIERS.lock();
    if !n.iter().any(|g| *g as usize == f as usize) {
        n.push(f);
    }
}

pub fn gmap_unregister_pte_notifier(f: PteNotifier) {
    NOTIFIERS.lock().retain(|g| *g as usize != f as usize);
}

/// `ptep_notify`: the host PTE for `vmaddr` of space `space` is about to
/// change (called by the space before its IPTE), and its PGSTE had `bits`:
/// the VSIE bit tells the shadows first (`gmap_shadow_notify`), the IN bit
/// the registered notifiers of every gmap linked to it.
pub(crate) fn ptep_notify(space: u64, vmaddr: u64, bits: u64) {
    if bits & crate::dat::space::PGSTE_VSIE_BIT != 0 {
        super::shadow::shadow_notify(space, vmaddr);
    }
    if bits & crate::dat::space::PGSTE_IN_BIT == 0 {
        return;
    }
    let guests = super::guests_of(space, vmaddr);
    let cbs: Vec<PteNotifier> = NOTIFIERS.lock().clone();
    for (gmap, gaddr) in guests {
        for cb in &cbs {
            cb(gmap, gaddr, gaddr.saturating_add(0x1000));
        }
    }
}
