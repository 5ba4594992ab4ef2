//! The typed model of the Istio objects we act on. It says nothing of where the objects came from
//! (files now, the Kubernetes API later) beyond a [`Source`] for error messages.
use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf};

/// Where an object was read: a file and the 1-based index of the YAML document in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub document: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.document)
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
    /// The waypoint terminates HTTP/1.1 on this port and authorizes each request. Everything
    /// else (including HTTP2/GRPC for now) is spliced as opaque bytes after L4 checks.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http)
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
}

impl Resolution {
    /// The name Istio's YAML uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::None => "NONE",
            Resolution::Static => "STATIC",
            Resolution::Dns => "DNS",
            Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
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
}

/// A document that was read but is not acted on (yet): kept so `check` and logs can say so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub source: Source,
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// Everything read from the configured paths, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigSet {
    pub service_entries: Vec<ServiceEntry>,
    pub skipped: Vec<Skipped>,
}
