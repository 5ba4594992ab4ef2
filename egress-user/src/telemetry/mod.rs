//! Access log, metrics and the admin endpoint.
mod access_log;
mod admin;
pub mod metrics;

use std::io;

pub use access_log::{
    AccessLog, AccessLogEntry, AccessLogFormat, MemoryLog, flush_buffered, rfc3339_millis,
};
pub use admin::{AdminState, serve_admin};
pub use metrics::Metrics;

/// Accept errors that say nothing about the listener itself (the peer gave up, or the process
/// is out of descriptors or memory for a moment): retry after a pause instead of stopping.
pub(crate) fn is_transient_accept_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::OutOfMemory
    ) || matches!(
        error.raw_os_error(),
        Some(
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EPROTO | libc::EPERM
        )
    )
}
