//! Kernel text output: `kprint!`/`kprintln!` write raw text, `pr_info!` a
//! printk-style line with a TOD timestamp. On s390x the text goes to the
//! SCLP console; in host unit tests it is captured per thread so tests can
//! read what was printed.

use core::fmt::{self, Write};

use spin::Mutex;

/// Formatting buffer: a whole `kprint!` becomes one console write where it
/// fits, so lines from different places do not interleave mid-line.
struct LineBuf {
    buf: [u8; 1024],
    len: usize,
}

impl LineBuf {
    const fn new() -> Self {
        Self {
            buf: [0; 1024],
            len: 0,
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            sink(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

static CONSOLE: Mutex<LineBuf> = Mutex::new(LineBuf::new());

#[cfg(target_arch = "s390x")]
fn sink(bytes: &[u8]) {
    crate::sclp::console::write(bytes);
}

#[cfg(all(not(target_arch = "s390x"), test))]
fn sink(bytes: &[u8]) {
    capture::push(bytes);
}

/// A host build outside tests has no console.
#[cfg(all(not(target_arch = "s390x"), not(test)))]
fn sink(_bytes: &[u8]) {}

/// Print formatted text (the macros call this).
pub fn print_fmt(args: fmt::Arguments<'_>) {
    let mut c = CONSOLE.lock();
    let _ = c.write_fmt(args);
    c.flush();
}

/// Break the console lock before printing a crash dump, and drop what its
/// holder had buffered: it may be half a line, or a line already sent
/// (the buffer empties only after the write), so printing it could cut the
/// dump's first line or repeat the holder's last one.
///
/// # Safety
/// Only the end of the run, which never returns, may call this, with every
/// other CPU stopped: whoever held the lock never gets to use it again.
pub unsafe fn force_unlock() {
    // SAFETY: forwarded to the caller.
    unsafe {
        CONSOLE.force_unlock();
        #[cfg(target_arch = "s390x")]
        crate::sclp::console::force_unlock();
    }
    CONSOLE.lock().len = 0;
}

/// Host-test capture of console output (per test thread).
#[cfg(all(not(target_arch = "s390x"), test))]
pub mod capture {
    use std::cell::RefCell;

    thread_local! {
        static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    pub fn push(bytes: &[u8]) {
        OUT.with(|o| o.borrow_mut().extend_from_slice(bytes));
    }

    /// Everything printed on this thread since the last `take`.
    pub fn take() -> String {
        OUT.with(|o| String::from_utf8(core::mem::take(&mut *o.borrow_mut())).unwrap())
    }
}

#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! kprintln {
    () => { $crate::console::print_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// A printk-style line: `[    0.001234] message`.
#[macro_export]
macro_rules! pr_info {
    ($($arg:tt)*) => {{
        let us = $crate::log::uptime_us();
        $crate::console::print_fmt(format_args!(
            "[{:5}.{:06}] {}\n", us / 1_000_000, us % 1_000_000, format_args!($($arg)*)
        ))
    }};
}
