//! Istio's standard label set of a connection ([`ConnectionLabels`]) and the shared,
//! pre-hashed [`Labels`] it renders to.
use std::{
    hash::{Hash, Hasher},
    sync::Arc,
};

use prometheus_client::encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder};

/// The `reporter` label value for everything the waypoint reports.
pub const REPORTER: &str = "waypoint";
/// Istio's value for a label it cannot know.
pub const UNKNOWN: &str = "unknown";

/// A label set, built once and shared: cloning is a reference-count increment. Values are
/// escaped when rendered (by the encoder), not here.
///
/// Its hash is computed once, when it is built: a family lookup (a connection's TCP counters,
/// the first request of each outcome) hashes one number instead of the 23 pairs' text, which
/// was the waypoint's hottest function on short connections. Equality still compares the text
/// (after the hash and a pointer check), so a collision costs a comparison, never a wrong series.
#[derive(Clone, Debug)]
pub struct Labels {
    pairs: Arc<[(Box<str>, Box<str>)]>,
    hash: u64,
}

impl Labels {
    /// The pairs in the order given (the order is part of how the series renders).
    pub fn new(pairs: &[(&str, &str)]) -> Self {
        let pairs: Arc<[(Box<str>, Box<str>)]> = pairs
            .iter()
            .map(|(key, value)| (Box::from(*key), Box::from(*value)))
            .collect();
        // A fixed-key hasher: equal label sets hash alike in every family; the families' maps
        // still hash this number with their own random keys.
        let mut hasher = std::hash::DefaultHasher::new();
        pairs.hash(&mut hasher);
        Self {
            hash: hasher.finish(),
            pairs,
        }
    }

    /// The pairs, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(key, value)| (&**key, &**value))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs()
            .find(|(k, _)| *k == key)
            .map(|(_, value)| value)
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && (Arc::ptr_eq(&self.pairs, &other.pairs) || self.pairs == other.pairs)
    }
}

impl Eq for Labels {}

impl Hash for Labels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        for pair in self.pairs() {
            pair.encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Who called, as far as the waypoint knows it.
#[derive(Clone, Copy, Debug)]
pub struct SourceWorkload<'a> {
    /// The workload's namespace (from its principal).
    pub namespace: &'a str,
    /// The workload's name.
    pub workload: &'a str,
    /// `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub principal: &'a str,
}

/// Istio's connection-level standard labels: everything but `response_code`,
/// `grpc_response_status` and (on requests) `response_flags`, which each request adds.
///
/// Values follow Istio's waypoint, a server-side reporter, for a ServiceEntry destination:
/// - `source_*` from the caller's identity; a caller without identity is `unknown` throughout,
///   as Istio reports a peer without metadata. There are no pod labels in host mode, so
///   `source_app`, `source_version` and `source_cluster` are `unknown`;
///   `source_canonical_service` defaults to the workload name and `source_canonical_revision` to
///   `latest`, as istiod defaults them.
/// - `destination_service` is the ServiceEntry host, and so is `destination_service_name`
///   (istiod names the service it builds from a ServiceEntry after the host);
///   `destination_service_namespace` is the ServiceEntry's namespace.
/// - `destination_workload*`, `destination_principal`, `destination_app`, `destination_version`,
///   `destination_canonical_*`, `destination_cluster`: `unknown` — an external host has no
///   workload, and no SPIFFE identity even when the waypoint originates TLS to it.
/// - `connection_security_policy`: `none`. A server-side reporter knows whether its peer spoke
///   mutual TLS and says `mutual_tls` or `none`; only client-side reporters, which cannot know,
///   say `unknown`. The application reaches the waypoint in plaintext.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLabels<'a> {
    pub source: Option<SourceWorkload<'a>>,
    /// The ServiceEntry host the traffic is for.
    pub service_host: &'a str,
    /// The ServiceEntry's namespace.
    pub service_namespace: &'a str,
    /// `http` for requests on HTTP ports, `tcp` for connections.
    pub request_protocol: &'a str,
}

impl ConnectionLabels<'_> {
    /// The label set, in the order Istio's proxies emit it. `extra` (e.g. `response_flags` of a
    /// TCP connection) goes before `connection_security_policy`.
    pub fn render(&self, extra: &[(&str, &str)]) -> Labels {
        let (workload, namespace, principal, revision) = match self.source {
            Some(s) => (s.workload, s.namespace, s.principal, "latest"),
            None => (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN),
        };
        let mut pairs = vec![
            ("reporter", REPORTER),
            ("source_workload", workload),
            ("source_canonical_service", workload),
            ("source_canonical_revision", revision),
            ("source_workload_namespace", namespace),
            ("source_principal", principal),
            ("source_app", UNKNOWN),
            ("source_version", UNKNOWN),
            ("source_cluster", UNKNOWN),
            ("destination_workload", UNKNOWN),
            ("destination_workload_namespace", UNKNOWN),
            ("destination_principal", UNKNOWN),
            ("destination_app", UNKNOWN),
            ("destination_version", UNKNOWN),
            ("destination_service", self.service_host),
            ("destination_canonical_service", UNKNOWN),
            ("destination_canonical_revision", UNKNOWN),
            ("destination_service_name", self.service_host),
            ("destination_service_namespace", self.service_namespace),
            ("destination_cluster", UNKNOWN),
            ("request_protocol", self.request_protocol),
        ];
        pairs.extend_from_slice(extra);
        pairs.push(("connection_security_policy", "none"));
        Labels::new(&pairs)
    }
}
