//! Fixtures the in-kernel suites share: frames with a recognisable
//! pattern, given back with the allocator's verdict checked.

use super::{KResult, Outcome};
use crate::kfail;
use crate::mm::{self, AllocFlags, Pages};

/// A frame whose doublewords read `tag << 32 | offset`, so a load through
/// any mapping says which frame and offset it reached.
pub fn tagged_frame(tag: u64) -> Result<Pages, Outcome> {
    let mut p = mm::alloc_pages(0, AllocFlags::empty()).or_else(|e| kfail!("alloc: {e:?}"))?;
    for (i, w) in p.as_mut_slice().chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&((tag << 32) | (i as u64 * 8)).to_be_bytes());
    }
    Ok(p)
}

/// Give a frame back; a refused free fails the case.
pub fn free_frame(p: Pages) -> KResult {
    match mm::free_pages(p) {
        Ok(()) => Ok(()),
        Err((_, e)) => kfail!("free_pages: {e:?}"),
    }
}
