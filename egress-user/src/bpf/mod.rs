//! The only module that talks to aya: load the kernel object, pin maps, attach and pin links,
//! and typed handles on the maps for the rest of the binary.
mod attached;
mod kernel_log;
mod loader;
mod maps;
mod status;

pub use attached::{Attachment, attachment};
pub use kernel_log::spawn_reader as spawn_kernel_log_reader;
pub use loader::{AnchorFlags, Capture, cleanup, install_pinned, write_object};
pub use maps::{ServiceRoute, register_anchor};
pub use status::{Status, status};

use std::{io, net::SocketAddr, path::PathBuf};

use egress_common::Origin;
use thiserror::Error;

use crate::cgroup::CgroupError;

/// Where the waypoint learns what the kernel recorded for a redirected connection.
pub trait OriginSource: Send + Sync + 'static {
    /// The origin of the connection whose client end is `peer` (as seen on accept), in the
    /// network namespace with cookie `netns_cookie` (the accepting listener's: see
    /// [`crate::netns::netns_cookie`]).
    fn origin(&self, netns_cookie: u64, peer: SocketAddr) -> Option<Origin>;
}

/// Where cached verdicts go (the kernel map; a no-op in tests without one). See
/// [`crate::verdicts`], which decides what is cached.
pub trait VerdictSink: Send + Sync + 'static {
    /// Caches an L4-decidable deny of `generation` for (identity anchor, service, port).
    fn deny(&self, identity_id: u64, service_id: u32, port: u16, generation: u64);
}

#[derive(Debug, Error)]
pub enum BpfError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("loading the kernel programs (maps pinned under {pin_dir})")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {name} is missing from the kernel object")]
    MissingProgram { name: &'static str },
    #[error("map {name} is missing from the kernel object")]
    MissingMap { name: &'static str },
    #[error("loading program {name} into the kernel (the verifier log is below)")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching program {name} to cgroup {cgroup}")]
    Attach {
        name: &'static str,
        cgroup: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {name} did not produce a bpf_link (kernel >= 5.7 needed)")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {what} at {path}")]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening pinned {what} at {path}")]
    OpenPinned {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening cgroup {path}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "capture links of an earlier run are pinned under {0}: they would redirect connects to a waypoint that no longer expects them; run `egress uninstall --bpffs {0}` first"
    )]
    LinksPinned(PathBuf),
    #[error("starting the kernel-object installer (`egress __install`)")]
    Installer(#[source] io::Error),
    #[error("the kernel-object installer (`egress __install`) failed ({status}):\n{output}")]
    InstallerFailed { status: String, output: String },
    #[error("attaching to the kernel log of program {program_id} (aya-log's AYA_LOGS map)")]
    KernelLog {
        program_id: u32,
        #[source]
        source: aya_log::Error,
    },
    #[error("polling the kernel log of program {program_id}")]
    KernelLogPoll {
        program_id: u32,
        #[source]
        source: io::Error,
    },
    #[error("writing the kernel object to {path}")]
    WriteObject {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing pins under {path}")]
    Cleanup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BpfError {
    fn map(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| Self::Map { name, source }
    }
}
