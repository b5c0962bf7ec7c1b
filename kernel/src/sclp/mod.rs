//! Service-call logical processor (SCLP): Read SCP Info and the ASCII
//! console. One 4 KiB SCCB below 2 GiB serves every command; a command is
//! started with SERVC and completes with a service-signal external
//! interruption, which the caller waits for in an enabled wait.

pub mod info;

#[cfg(target_arch = "s390x")]
pub mod console;

#[cfg(target_arch = "s390x")]
mod hw;

#[cfg(target_arch = "s390x")]
pub use hw::{init, read_info, service_call};

#[cfg(target_os = "none")]
mod ktests;

/// SCLP command words.
pub mod cmd {
    pub const READ_SCP_INFO: u32 = 0x0002_0001;
    pub const READ_SCP_INFO_FORCED: u32 = 0x0012_0001;
    pub const WRITE_EVENT_DATA: u32 = 0x0076_0005;
    pub const WRITE_EVENT_MASK: u32 = 0x0078_0005;
}

/// SCCB response codes.
pub mod response {
    pub const NORMAL_COMPLETION: u16 = 0x0010;
    pub const NORMAL_WRITE: u16 = 0x0020;
    pub const INVALID_COMMAND: u16 = 0x01f0;
    pub const INSUFFICIENT_LENGTH: u16 = 0x0300;
}

pub const SCCB_SIZE: usize = 4096;

/// Errors of SCLP commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SclpError {
    /// SERVC returned condition code 2 or 3.
    NotOperational(u32),
    /// The SCCB came back with this response code.
    Response(u16),
}
