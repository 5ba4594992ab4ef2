//! The AuthorizationPolicy engine: `(policies, request attributes) -> Decision`, with Istio's
//! semantics. Pure: no I/O, no clock, no kernel — the waypoint feeds it and acts on the answer.
//!
//! What decides what, and where it comes from:
//! - attachment (which policies apply to a ServiceEntry): istio/istio
//!   `pilot/pkg/model/policyattachment.go` (`ShouldAttachPolicy` for a waypoint);
//! - the order CUSTOM → DENY → ALLOW, AUDIT and dry-run never changing a verdict: istio/api
//!   `security/v1beta1/authorization_policy.proto` and istio/istio
//!   `pilot/pkg/security/authz/builder/builder.go` (one Envoy RBAC filter per action);
//! - rule shape, string matching and the TCP treatment of HTTP-only fields: istio/istio
//!   `pilot/pkg/security/authz/model/{model,generator}.go`, `matcher/{string,header}.go`;
//! - a peer without identity: istio/ztunnel `src/rbac.rs` (and Envoy's `authenticated`
//!   principal, which never matches a plaintext peer);
//! - path normalization: istio.io `docs/reference/config/security/normalization` and Envoy's
//!   `PathUtil`/`PathTransformer` (see [`normalize`]).
//!
//! [`Decision::l4_decidable`] says whether the verdict would be the same for every request with
//! this principal, ServiceEntry and destination port — the key of the kernel verdict cache
//! (design §6). It is computed by evaluating the rules again with every other attribute unknown.
mod compile;
mod engine;
mod matcher;
pub mod normalize;

use std::{fmt, net::IpAddr, sync::Arc};

pub use engine::{IgnoreReason, IgnoredPolicy, PolicySet};
pub use normalize::{
    NormalizeError, NormalizedTarget, PathParameters, is_miscased_method, normalize_path,
    normalize_request_target, strip_internal_headers,
};

use crate::{config::Action, identity::Principal};

/// The ServiceEntry a request or connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub namespace: &'a str,
    /// ServiceEntry `metadata.name`.
    pub service_entry: &'a str,
}

/// What is known about one request (HTTP) or connection (TLS/TCP).
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    /// `None`: a peer without identity (an unknown cgroup).
    pub principal: Option<&'a Principal>,
    pub source_ip: Option<IpAddr>,
    /// The address the application dialled.
    pub destination_ip: Option<IpAddr>,
    pub destination_port: u16,
    /// The ClientHello server name on TLS ports.
    pub sni: Option<&'a str>,
    /// `None` on TLS and TCP ports: the rules are then applied as Envoy applies them to a TCP
    /// filter chain (see `compile.rs`).
    pub http: Option<HttpAttributes<'a>>,
}

/// The HTTP part of [`Attributes`].
#[derive(Clone, Copy, Debug)]
pub struct HttpAttributes<'a> {
    pub method: &'a str,
    /// The `Host` header (`:authority`) as sent; empty when there was none.
    pub host: &'a str,
    /// Normalized by [`normalize_path`], query and fragment removed.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// A policy by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl fmt::Display for PolicyRef {
    /// Envoy's spelling, as in `rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[N]]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ns[{}]-policy[{}]", self.namespace, self.name)
    }
}

/// One rule of one policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub policy: PolicyRef,
    /// Index in `spec.rules`.
    pub rule: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-rule[{}]", self.policy, self.rule)
    }
}

/// A dry-run policy that matched: what it would have done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DryRunMatch {
    pub action: Action,
    pub matched: RuleRef,
}

/// The engine's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The policy that decided: the DENY that matched, or the ALLOW that matched. `None` when
    /// no ALLOW policy applies (allowed) or none matched (denied: Envoy's `[none]`).
    pub policy: Option<PolicyRef>,
    /// The rule of `policy` that matched.
    pub rule: Option<usize>,
    /// The verdict is the same for every request with this principal, ServiceEntry and
    /// destination port: no HTTP attribute, source or destination address or SNI could change
    /// it. Only such verdicts may be cached in the kernel.
    pub l4_decidable: bool,
    /// Every dry-run policy that matched (one entry per policy). They never change `allowed`.
    pub dry_run_matches: Vec<DryRunMatch>,
    /// The verdict had the dry-run policies been enforced too; `None` when none applies.
    pub dry_run_allowed: Option<bool>,
    /// The AUDIT policy rule that matched: the request should be audited.
    pub audit: Option<RuleRef>,
}

impl Decision {
    /// Envoy's name of the deciding rule, `ns[NS]-policy[NAME]-rule[N]`, or `none`.
    pub fn matched_policy(&self) -> String {
        match (&self.policy, self.rule) {
            (Some(policy), Some(rule)) => format!("{policy}-rule[{rule}]"),
            _ => "none".to_owned(),
        }
    }

    /// The access-log response details of a deny, as Envoy writes them:
    /// `rbac_access_denied_matched_policy[...]`. `None` when allowed.
    pub fn denied_details(&self) -> Option<String> {
        (!self.allowed).then(|| {
            format!(
                "rbac_access_denied_matched_policy[{}]",
                self.matched_policy()
            )
        })
    }
}

#[cfg(test)]
mod tests;
