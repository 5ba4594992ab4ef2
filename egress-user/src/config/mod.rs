//! Istio YAML -> typed model, with validation errors that name file, document and field.
//!
//! [`load`] reads files and directories; [`parse_str`] one file's text. Both return every
//! problem found as [`ConfigErrors`], displayed one per line as `FILE:DOC:FIELD: MESSAGE`
//! (the format `egress check` prints).
//!
//! Documents are dispatched on `apiVersion` + `kind`: `networking.istio.io` ServiceEntry
//! (`v1`, `v1beta1`, `v1alpha3`) and `security.istio.io` AuthorizationPolicy (`v1`, `v1beta1`)
//! are parsed and validated as Istio validates them; our own `egress.dev/v1alpha1`
//! WorkloadIdentity (host mode's cgroup -> identity mapping) is validated strictly; other Istio
//! kinds and non-Istio objects are recorded in [`ConfigSet::skipped`]; an unknown kind in an
//! Istio group is an error (a typo would otherwise silently drop policy).
mod authorization_policy;
mod destination_rule;
mod documents;
mod endpoint;
mod error;
mod load;
mod mesh;
mod names;
mod node;
mod object;
mod policy_values;
mod service_entry;
mod types;
mod workload_identity;

pub use authorization_policy::DRY_RUN_ANNOTATION;
pub use error::{ConfigError, ConfigErrors, Origin};
pub use load::{load, parse_object, parse_str};
pub use types::*;
// Defined with the TLS client they build (config depends on tls, not the reverse).
pub use crate::tls::{ClientTlsSettings, TlsMode};

pub(crate) use names::{check_fqdn, parse_ip_net};

#[cfg(test)]
mod tests;
