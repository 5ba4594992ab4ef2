//! End-to-end tests for the egress dataplane: the real `egress` binary, real `curl`, real cgroups
//! and BPF programs. They need root, a cgroup2 mount and `EGRESS_BIN` (`cargo xtask test` provides
//! all three); see [`require_privileges`].
//!
//! A test reads like what it checks:
//!
//! ```no_run
//! use egress_tests::*;
//!
//! if !require_privileges() {
//!     return;
//! }
//! let upstream = Upstream::http();
//! let dp = Dataplane::builder()
//!     .service_entry(&yaml::service_entry("httpbin", "httpbin.test", upstream.addr()))
//!     .start();
//! let out = dp.exec("default", "sleep").curl(&["-sS", "-i", &upstream.url("/x")]);
//! assert_eq!(out.header("via").as_deref(), Some("1.1 egress-waypoint"));
//! ```
//!
//! Every test gets its own cgroup, pin directory, ports and temporary files, so tests run in
//! parallel; dropping a [`Dataplane`] removes all of them, also when the test panicked.

mod cluster;
mod dataplane;
mod environment;
mod helm;
mod http;
pub mod iptables;
mod pod;
mod process;
mod resolver;
mod tls;
mod upstream;
pub mod yaml;

pub use cluster::{
    CACHED_ASSETS, Cluster, ClusterBuilder, Kubectl, SERVICE_CLUSTER_IP_RANGE,
    control_plane_assets, service_account_user,
};
pub use dataplane::{Builder, Dataplane, Workload};
pub use environment::{
    cgroup2_mount, egress_bin, find_tool, require_binary, require_control_plane, require_helm,
    require_kubernetes_validate, require_privileges, require_tools,
};
pub use helm::{
    CACHED_HELM, CACHED_KUBERNETES_VALIDATE, Chart, NAMESPACE, RELEASE, documents, helm_bin,
    kinds_and_names, kubernetes_validate, kubernetes_validate_bin, workspace_root,
};
pub use pod::{Node, Pod, PodBuilder};
pub use process::{Output, curl, run_bounded, run_bounded_with_input};
pub use resolver::{RESOLVER_TTL, Resolver, SilentResolver, query_a};
pub use tls::{Cert, Handshake, Httpbin, TestCa, TlsUpstream};
pub use upstream::{Hit, Upstream, counter_bytes};
