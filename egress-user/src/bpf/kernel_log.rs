//! `egress run --kernel-log`: the kernel programs' decisions, logged through aya-log, in this
//! process's `tracing` output (target `egress::kernel`).
//!
//! The programs are loaded by `egress __install`, so this process attaches to the already-loaded
//! programs' `AYA_LOGS` ring buffer by program id (found through a pinned link). Whether the
//! programs log at all is decided at load time: aya-log's `AYA_LOG_LEVEL` global, a read-only
//! value the verifier sees as a constant. With it 0 the log code is dead and removed, so logging
//! that is off costs the hot path nothing.
use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};
use aya_log::EbpfLogger;
use egress_common::names;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

use super::{BpfError, loader::LINKS_DIR};

/// The aya-log global that gates every log statement in the kernel programs.
pub(super) const LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

/// `AYA_LOG_LEVEL` for the kernel programs: info (decisions) or nothing.
pub(super) fn level(enabled: bool) -> u8 {
    if enabled {
        aya_log::Level::Info as u8
    } else {
        0
    }
}

/// Forwards aya-log records to `tracing`.
struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: "egress::kernel", "{}", record.args());
    }

    fn flush(&self) {}
}

/// Reads the kernel programs' log records (of the capture pinned under `pin_dir`) into
/// `tracing` for as long as the runtime runs.
pub fn spawn_reader(pin_dir: &Path) -> Result<(), BpfError> {
    // Every program of the object shares one AYA_LOGS map; connect4's link leads to it.
    let path = pin_dir.join(LINKS_DIR).join(names::PROG_CONNECT4);
    let open_err = |source: std::io::Error| BpfError::OpenPinned {
        what: format!("link {}", names::PROG_CONNECT4),
        path: path.clone(),
        source,
    };
    let link = PinnedLink::from_pin(&path).map_err(|e| open_err(std::io::Error::other(e)))?;
    let program_id = FdLink::from(link)
        .info()
        .map_err(|e| open_err(std::io::Error::other(e)))?
        .program_id();
    let logger = EbpfLogger::init_from_id_with_logger(program_id, TracingLog)
        .map_err(|source| BpfError::KernelLog { program_id, source })?;
    // SAFETY: the fd is the logger's ring buffer map, owned by the logger, which the AsyncFd
    // owns for as long as it lives.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| BpfError::KernelLogPoll {
            program_id,
            source: e.into_parts().1,
        })?;
    tokio::spawn(async move {
        loop {
            match logger.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(error) => {
                    warn!(%error, "reading the kernel log stopped");
                    return;
                }
            }
        }
    });
    Ok(())
}
