//! Kubernetes mode's pods (design §10): where the kubelet puts them on the cgroup tree
//! ([`layout`]), which ones this agent serves ([`enrollment`]), and their lifecycle — anchor,
//! verdicts, a waypoint listener in each pod's network namespace ([`manager`]), fed by the
//! API server ([`watch`]).
pub mod enrollment;
pub mod layout;
pub mod manager;
pub mod watch;

use std::{net::SocketAddrV4, path::PathBuf};

use serde::Serialize;

pub use enrollment::{DATAPLANE_MODE_LABEL, DEFAULT_DATAPLANE_MODE};
pub use manager::{ClusterView, PodInfo, PodManager};

/// What the pod manager needs to know about the node.
#[derive(Clone, Debug)]
pub struct PodOptions {
    /// The kubelet's pod cgroup root (`kubepods.slice` or `kubepods` on the cgroup2 mount).
    pub pod_root: PathBuf,
    /// The host's /proc (the DaemonSet mounts it at /host/proc).
    pub proc: PathBuf,
    /// The waypoint address opened in each pod's network namespace.
    pub listen: SocketAddrV4,
    /// The `istio.io/dataplane-mode` value this agent serves.
    pub dataplane_mode: String,
    pub trust_domain: String,
}

/// One enrolled pod, as `egress status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub principal: String,
    /// The pod cgroup (identity anchor), once found.
    pub cgroup: Option<PathBuf>,
    /// The network namespace cookie of its listener, once open.
    pub netns_cookie: Option<u64>,
    pub listener: Option<SocketAddrV4>,
    /// What serving it still waits for.
    pub waiting_for: Option<String>,
}
