//! The `egress` binary's library: everything but argument parsing lives here.
pub mod bpf;
pub mod cgroup;
pub mod config;
pub mod dns;
pub mod dnsproxy;
pub mod drain;
pub mod exec;
pub mod explain;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod handover;
pub mod identity;
#[cfg(feature = "agent")]
pub mod kube;
pub mod model;
#[cfg(test)]
mod module_graph_tests;
pub mod netns;
pub mod output;
pub mod pods;
pub mod policy;
pub mod proxy;
#[cfg(feature = "agent")]
pub mod reload;
#[cfg(feature = "agent")]
pub mod run;
pub mod telemetry;
pub mod tls;
pub mod verdicts;
