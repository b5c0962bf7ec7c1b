//! The SCLP ASCII console (event type 0x1a): Write Event Mask once, then
//! Write Event Data per chunk of output.

use core::sync::atomic::{AtomicBool, Ordering};

use super::hw::{self, Sccb};
use super::{cmd, response, SclpError, SCCB_SIZE};

const EVENT_ASCII_CONSOLE: u8 = 0x1a;
/// The event mask bit of type 0x1a in a 4-byte mask.
const MASK_ASCII: u32 = 1 << (32 - EVENT_ASCII_CONSOLE as u32);
const SCCB_HDR: usize = 8;
const EVBUF_HDR: usize = 6;
/// Bytes of text per Write Event Data.
pub const CHUNK: usize = SCCB_SIZE - SCCB_HDR - EVBUF_HDR;

static READY: AtomicBool = AtomicBool::new(false);

/// Tell the SCLP we send (and could receive) ASCII console events.
pub fn init() -> Result<(), SclpError> {
    let rc = hw::with_sccb(|sccb: &mut Sccb| {
        let len = SCCB_HDR + 4 + 4 * 4;
        sccb.0.fill(0);
        sccb.0[0..2].copy_from_slice(&(len as u16).to_be_bytes());
        // mask_length at 10, then cp_receive, cp_send, sclp_receive, sclp_send.
        sccb.0[10..12].copy_from_slice(&4u16.to_be_bytes());
        sccb.0[12..16].copy_from_slice(&MASK_ASCII.to_be_bytes());
        sccb.0[16..20].copy_from_slice(&MASK_ASCII.to_be_bytes());
        hw::service_call(cmd::WRITE_EVENT_MASK, sccb)
    })?;
    if rc != response::NORMAL_WRITE {
        return Err(SclpError::Response(rc));
    }
    READY.store(true, Ordering::Release);
    Ok(())
}

pub fn ready() -> bool {
    READY.load(Ordering::Acquire)
}

/// Write bytes to the console. Output before `init` is dropped.
pub fn write(mut bytes: &[u8]) {
    if !ready() {
        return;
    }
    while !bytes.is_empty() {
        let n = bytes.len().min(CHUNK);
        let (chunk, rest) = bytes.split_at(n);
        hw::with_sccb(|sccb: &mut Sccb| {
            let total = SCCB_HDR + EVBUF_HDR + n;
            sccb.0[..SCCB_HDR + EVBUF_HDR].fill(0);
            sccb.0[0..2].copy_from_slice(&(total as u16).to_be_bytes());
            sccb.0[8..10].copy_from_slice(&((EVBUF_HDR + n) as u16).to_be_bytes());
            sccb.0[10] = EVENT_ASCII_CONSOLE;
            sccb.0[SCCB_HDR + EVBUF_HDR..total].copy_from_slice(chunk);
            // A console that fails has nowhere to report it: drop the chunk.
            let _ = hw::service_call(cmd::WRITE_EVENT_DATA, sccb);
        });
        bytes = rest;
    }
}

/// Make the console usable from the crash path even if the crash
/// interrupted a write.
///
/// # Safety
/// Only the crash path, which never returns, may call this.
pub unsafe fn force_unlock() {
    // SAFETY: forwarded to the caller.
    unsafe { hw::force_unlock() }
}
