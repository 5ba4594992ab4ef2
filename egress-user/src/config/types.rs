//! The typed model of the Istio objects we act on. It says nothing of where the objects came from
//! (files or the Kubernetes API) beyond a [`Source`] for error messages.
use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf};

use crate::tls::ClientTlsSettings;

/// Where an object was read: a document of a file (`FILE:DOC`, the index 1-based), or an object
/// of the Kubernetes API (`Kind ns/name`). Every error message starts with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File { file: PathBuf, document: usize },
    Object(ObjectRef),
}

/// A Kubernetes object by kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl Source {
    /// Document `document` (1-based) of `file`.
    pub fn file(file: impl Into<PathBuf>, document: usize) -> Self {
        Source::File {
            file: file.into(),
            document,
        }
    }

    /// The Kubernetes object `kind` `namespace/name`.
    pub fn object(kind: &str, namespace: &str, name: &str) -> Self {
        Source::Object(ObjectRef {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The document index, for an object read from a file.
    pub fn document(&self) -> Option<usize> {
        match self {
            Source::File { document, .. } => Some(*document),
            Source::Object(_) => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File { file, document } => write!(f, "{}:{document}", file.display()),
            Source::Object(object) => object.fmt(f),
        }
    }
}

/// An IP address or CIDR from `spec.addresses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix_len == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix_len)
        }
    }
}

/// `ServicePort.protocol`, as Istio spells it (case-insensitive on input).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
    Mongo,
    Mysql,
    Redis,
}

impl Protocol {
    /// The waypoint terminates HTTP on this port and authorizes each request (HTTP2 and GRPC
    /// ports take HTTP/1.1 or HTTP/2 with prior knowledge). Everything else is spliced as
    /// opaque bytes after L4 checks.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Mongo => "MONGO",
            Protocol::Mysql => "MYSQL",
            Protocol::Redis => "REDIS",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ServiceEntry.resolution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Resolution {
    /// Forward to the address the application dialled.
    #[default]
    None,
    /// Forward to `endpoints`.
    Static,
    /// Forward to the addresses `hosts` (or endpoint hostnames) resolve to.
    Dns,
    /// As `Dns`, using one address at a time.
    DnsRoundRobin,
    /// Wildcard hosts only: each request's own name (HTTP `Host`, TLS SNI) is resolved when it
    /// arrives and the connection goes there (Envoy's dynamic forward proxy).
    DynamicDns,
}

impl Resolution {
    /// The name Istio's YAML uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::None => "NONE",
            Resolution::Static => "STATIC",
            Resolution::Dns => "DNS",
            Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
            Resolution::DynamicDns => "DYNAMIC_DNS",
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ServiceEntry.location`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

impl Location {
    /// The name Istio's YAML uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Location::MeshExternal => "MESH_EXTERNAL",
            Location::MeshInternal => "MESH_INTERNAL",
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ServiceEntry.ports[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub number: u16,
    pub name: String,
    pub protocol: Protocol,
    /// Port on the endpoints; `None` means `number`.
    pub target_port: Option<u16>,
}

/// `ServiceEntry.endpoints[]` (a WorkloadEntry spec).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// IP address, or hostname for DNS resolution.
    pub address: String,
    /// Port name -> port on this endpoint, overriding `targetPort`/`number`.
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub weight: Option<u32>,
}

/// A `networking.istio.io` ServiceEntry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    pub source: Source,
    pub name: String,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    pub hosts: Vec<String>,
    pub addresses: Vec<IpNet>,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub location: Location,
    pub endpoints: Vec<Endpoint>,
    pub export_to: Vec<String>,
    /// Label `networking.istio.io/enable-autoallocate-ip` is not `"false"`: eligible for a VIP
    /// (with resolution other than NONE and no `addresses`).
    pub auto_allocate: bool,
    /// `status.addresses[].value`: the VIPs istiod allocated, used in preference to ours.
    pub status_addresses: Vec<std::net::IpAddr>,
}

/// A document that was read but is not acted on (yet): kept so `check` and logs can say so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub source: Source,
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// `egress.dev/v1alpha1` WorkloadIdentity: processes in `cgroup` (and below) are the workload
/// `namespace`/`service_account`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadIdentity {
    pub source: Source,
    pub name: String,
    /// As written: relative to the cgroup2 mount, or absolute.
    pub cgroup: PathBuf,
    pub namespace: String,
    pub service_account: String,
}

/// What the dataplane reads of Istio's MeshConfig (the `istio` ConfigMap's `data.mesh`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    pub source: Source,
    /// `outboundTrafficPolicy.mode: REGISTRY_ONLY`.
    pub registry_only: bool,
}

/// Everything read from the configured paths, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigSet {
    pub service_entries: Vec<ServiceEntry>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub workload_identities: Vec<WorkloadIdentity>,
    pub destination_rules: Vec<DestinationRule>,
    /// Istio's mesh config, when one of the files holds the `istio` ConfigMap.
    pub mesh: Option<MeshConfig>,
    pub skipped: Vec<Skipped>,
}

impl ConfigSet {
    /// Adds everything of `other` (a mesh config in `other` wins).
    pub fn merge(&mut self, other: ConfigSet) {
        self.service_entries.extend(other.service_entries);
        self.authorization_policies
            .extend(other.authorization_policies);
        self.workload_identities.extend(other.workload_identities);
        self.destination_rules.extend(other.destination_rules);
        if other.mesh.is_some() {
            self.mesh = other.mesh;
        }
        self.skipped.extend(other.skipped);
    }
}

/// A `networking.istio.io` DestinationRule, as far as egress acts on it: the TLS settings of
/// the connections the waypoint opens to the host's endpoints (see `config/destination_rule.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationRule {
    pub source: Source,
    pub name: String,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    /// `spec.host`: an FQDN or a wildcard (`*.example.com`).
    pub host: String,
    /// `spec.exportTo` as written; empty means every namespace.
    pub export_to: Vec<String>,
    /// `trafficPolicy.tls`.
    pub tls: Option<ClientTlsSettings>,
    /// `trafficPolicy.portLevelSettings[]` that carry `tls`: port number -> settings. A port's
    /// own settings win over `tls` for that port.
    pub port_tls: Vec<(u16, ClientTlsSettings)>,
}

/// A `security.istio.io` AuthorizationPolicy (`v1` or `v1beta1`), validated as Istio validates
/// it plus the refusals egress needs (see `config/authorization_policy.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub source: Source,
    pub name: String,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    pub action: Action,
    /// `metadata.annotations["istio.io/dry-run"]` parsed as Go's `strconv.ParseBool` (as Istio
    /// does): the policy is evaluated and reported but never changes a verdict.
    pub dry_run: bool,
    /// A workload `selector`. Such a policy never applies at a waypoint; it is kept so that
    /// `check` and the engine can say so.
    pub selector: Option<WorkloadSelector>,
    /// `targetRefs`, or the deprecated single `targetRef` when `targetRefs` is empty.
    pub target_refs: Vec<TargetRef>,
    /// `rules`. Protobuf cannot tell an absent list from `[]`, so neither can Istio: both mean
    /// "no rule", which an ALLOW policy never matches (it denies everything it applies to).
    /// `rules: [{}]` is one empty rule, which matches every request.
    pub rules: Vec<Rule>,
}

/// `AuthorizationPolicy.action`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    /// ext_authz. Rejected at load for now; the engine treats one it is handed as a DENY of what
    /// it matches (what Istio does when a CUSTOM provider cannot be used).
    Custom,
}

impl Action {
    /// The name Istio's YAML uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One of `spec.targetRefs`: the object a policy attaches to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetRef {
    /// As written; `""` is the core group.
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// `spec.selector`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
}

/// One of `spec.rules`: matches when any `from` AND any `to` AND every `when` match. An empty
/// list (the field absent) matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub from: Vec<Peer>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

/// `rules[].from[].source` (named `Peer` so it does not clash with [`Source`]). Fields AND,
/// values inside a field OR; `not_*` match when none of their values do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// `<trust-domain>/ns/<namespace>/sa/<service-account>` patterns.
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    /// `namespace/serviceaccount`, or `serviceaccount` in the policy's namespace (as written).
    pub service_accounts: Vec<String>,
    pub not_service_accounts: Vec<String>,
    pub trust_domains: Vec<String>,
    pub not_trust_domains: Vec<String>,
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
}

/// `rules[].to[].operation`. Fields AND, values inside a field OR.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

/// `rules[].when[]`: matches when the attribute matches any of `values` (if any are given) and
/// none of `not_values`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub key: ConditionKey,
    /// As written; IPs and ports were checked at load.
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

/// The Istio attributes a `when` condition may name, of those egress can evaluate. JWT
/// (`request.auth.*`), `remote.ip` and `experimental.*` are refused at load.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConditionKey {
    /// `request.headers[NAME]`; the name is stored in lower case.
    RequestHeader(String),
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    SourceServiceAccount,
    SourceTrustDomain,
    DestinationIp,
    DestinationPort,
    ConnectionSni,
}

impl fmt::Display for ConditionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConditionKey::RequestHeader(name) => write!(f, "request.headers[{name}]"),
            ConditionKey::SourceIp => f.write_str("source.ip"),
            ConditionKey::SourceNamespace => f.write_str("source.namespace"),
            ConditionKey::SourcePrincipal => f.write_str("source.principal"),
            ConditionKey::SourceServiceAccount => f.write_str("source.serviceAccount"),
            ConditionKey::SourceTrustDomain => f.write_str("source.trustDomain"),
            ConditionKey::DestinationIp => f.write_str("destination.ip"),
            ConditionKey::DestinationPort => f.write_str("destination.port"),
            ConditionKey::ConnectionSni => f.write_str("connection.sni"),
        }
    }
}
