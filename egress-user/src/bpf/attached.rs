//! Is capture attached to a cgroup? `egress exec` asks before it runs anything, so that a
//! command never runs uncaptured while its user believes policy applies (after `egress
//! uninstall`, or with a `--cgroup` that no `egress run` captures).
//!
//! The answer comes from the kernel, not from the pins alone: the program of the pinned
//! `eg_connect4` link must be among the connect4 programs in effect for the cgroup
//! (`BPF_PROG_QUERY` with `BPF_F_QUERY_EFFECTIVE`, which includes what an ancestor attached).
use std::{fs::File, io, os::fd::AsRawFd as _, path::Path};

use aya::programs::links::{FdLink, PinnedLink};
use egress_common::names;

use super::{BpfError, loader::LINKS_DIR};

/// `BPF_PROG_QUERY` (include/uapi/linux/bpf.h `enum bpf_cmd`).
const BPF_PROG_QUERY: libc::c_long = 16;
/// `BPF_CGROUP_INET4_CONNECT` (`enum bpf_attach_type`).
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
/// `BPF_F_QUERY_EFFECTIVE`: the programs that run for the cgroup, inherited ones included.
const BPF_F_QUERY_EFFECTIVE: u32 = 1;
/// Effective programs of one attach type a cgroup can have (the kernel allows 64 per level).
const MAX_PROGRAMS: usize = 256;

/// The `query` member of `union bpf_attr`, padded to the size the kernel reads.
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// How capture stands for one cgroup.
#[derive(Debug, PartialEq, Eq)]
pub enum Attachment {
    /// The pinned connect4 program runs for this cgroup.
    Attached,
    /// No capture link is pinned under the pin directory.
    NotPinned,
    /// Capture is pinned, but for another cgroup: this one is not below it.
    OtherCgroup,
}

/// Whether the capture pinned under `pin_dir` applies to processes in `cgroup`.
pub fn attachment(pin_dir: &Path, cgroup: &Path) -> Result<Attachment, BpfError> {
    let link_path = pin_dir.join(LINKS_DIR).join(names::PROG_CONNECT4);
    if !link_path.exists() {
        return Ok(Attachment::NotPinned);
    }
    let link = PinnedLink::from_pin(&link_path).map_err(|source| BpfError::Link {
        name: names::PROG_CONNECT4,
        source,
    })?;
    let program = FdLink::from(link)
        .info()
        .map_err(|source| BpfError::Link {
            name: names::PROG_CONNECT4,
            source,
        })?
        .program_id();
    let effective = effective_connect4(cgroup).map_err(|source| BpfError::OpenCgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    Ok(if effective.contains(&program) {
        Attachment::Attached
    } else {
        Attachment::OtherCgroup
    })
}

/// The ids of the connect4 programs in effect for `cgroup`.
fn effective_connect4(cgroup: &Path) -> io::Result<Vec<u32>> {
    let dir = File::open(cgroup)?;
    let mut ids = vec![0u32; MAX_PROGRAMS];
    let mut query = ProgQuery {
        target_fd: dir.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_INET4_CONNECT,
        query_flags: BPF_F_QUERY_EFFECTIVE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: MAX_PROGRAMS as u32,
        ..ProgQuery::default()
    };
    // SAFETY: `query` is a valid, zero-padded bpf_attr prefix of the size passed; `prog_ids`
    // points at `prog_cnt` writable u32s that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut query as *mut ProgQuery,
            size_of::<ProgQuery>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    ids.truncate((query.prog_cnt as usize).min(MAX_PROGRAMS));
    Ok(ids)
}
