//! `networking.istio.io` ServiceEntry -> [`ServiceEntry`], validated as Istio validates it.
//!
//! The rules are re-expressed from istio/istio `pkg/config/validation/validation.go`
//! (`ValidateServiceEntry`, `validateExportTo`, `ValidatePortName`,
//! `ValidateProtocol`) and the CRD schema in `manifests/charts/base/files/crd-all.gen.yaml`
//! (required fields, enums, list sizes). Where we are stricter than Istio the code says why:
//! Istio only *warns* about some things that would silently do the wrong thing here.
use std::collections::HashSet;

use super::{
    Location, Protocol, Resolution, ServiceEntry, ServicePort, Source,
    endpoint::parse_endpoints,
    error::Issues,
    names::{
        check_fqdn, check_wildcard_domain, is_dns1123_label, is_partial_wildcard, parse_ip_net,
    },
    node::Node,
    object::Metadata,
};

// List sizes from the CRD schema.
const MAX_HOSTS: usize = 256;
const MAX_ADDRESSES: usize = 256;
const MAX_ADDRESS_LEN: usize = 64;
const MAX_PORTS: usize = 256;

const PROTOCOLS: &str = "HTTP, HTTP2, HTTPS, GRPC, GRPC-Web, TLS, TCP, MONGO, MYSQL, REDIS";

/// Parses and validates the ServiceEntry in `root` (a whole object). Problems go to `issues`;
/// the returned value is only meaningful when none were added.
pub(crate) fn parse(
    root: &Node<'_>,
    metadata: Metadata,
    source: Source,
    issues: &mut Issues,
) -> ServiceEntry {
    let mut entry = ServiceEntry {
        source,
        name: metadata.name,
        namespace: metadata.namespace,
        hosts: Vec::new(),
        addresses: Vec::new(),
        ports: Vec::new(),
        resolution: Resolution::default(),
        location: Location::default(),
        endpoints: Vec::new(),
        export_to: Vec::new(),
        auto_allocate: true,
        status_addresses: Vec::new(),
    };
    // Istio's VIP eligibility label and istiod's allocations (files may carry status too).
    // Lenient: these are not ours to validate, only to honour.
    entry.auto_allocate = root
        .value
        .pointer("/metadata/labels/networking.istio.io~1enable-autoallocate-ip")
        .and_then(|v| v.as_str())
        != Some("false");
    entry.status_addresses = root
        .value
        .pointer("/status/addresses")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("value")?.as_str()?.parse().ok())
        .collect();
    let Some(spec) = root.get("spec") else {
        issues.at(&root.key_path("spec"), "is required");
        return entry;
    };
    if spec.object(issues).is_none() {
        return entry;
    }

    if let Some(selector) = spec.get("workloadSelector") {
        issues.at(
            &selector.path,
            "is not supported: egress runs in host mode and has no workloads to select; \
             list the destinations under endpoints instead",
        );
    }
    // `None` when the value is invalid (already reported): resolution-dependent rules are then
    // skipped rather than piling up consequences of one mistake.
    let resolution = match spec.get("resolution") {
        None => Some(Resolution::None),
        Some(node) => parse_resolution(&node, issues),
    };
    entry.resolution = resolution.unwrap_or_default();
    if let Some(node) = spec.get("location") {
        entry.location = parse_location(&node, issues).unwrap_or_default();
    }

    let hosts = parse_hosts(&spec, resolution, issues);
    entry.hosts = hosts.iter().map(|(_, host)| host.clone()).collect();
    entry.addresses = parse_addresses(&spec, resolution, issues);
    entry.ports = parse_ports(&spec, issues);

    let endpoints = spec.get("endpoints");
    let endpoint_count = endpoints
        .as_ref()
        .map_or(0, |n| n.value.as_array().map_or(1, Vec::len));
    if let Some(node) = &endpoints {
        // Port names as written, valid or not: a port already reported for its number should
        // not also make every endpoint that names it wrong.
        let declared = spec
            .get("ports")
            .and_then(|ports| ports.value.as_array())
            .into_iter()
            .flatten()
            .filter_map(|port| port.get("name")?.as_str())
            .collect();
        entry.endpoints = parse_endpoints(node, resolution, &declared, issues);
    }

    if let Some(r @ (Resolution::Dns | Resolution::DnsRoundRobin)) = resolution
        && endpoint_count == 0
    {
        // Without endpoints the hosts themselves are resolved, so each must be a name.
        for (path, host) in &hosts {
            if check_fqdn(host).is_err() {
                issues.at(
                    path,
                    format!(
                        "wildcard host {host:?} needs endpoints with resolution {r}: \
                         hosts must be FQDNs when no endpoints are provided"
                    ),
                );
            }
        }
    }

    if resolution == Some(Resolution::DynamicDns) {
        check_dynamic_dns(root, &spec, &entry, &hosts, endpoint_count, issues);
    }

    // Plain TCP carries no name (no Host header, no SNI), so with more than one host a
    // resolving ServiceEntry could not tell which host a connection is for.
    if let Some(r) = resolution
        && r != Resolution::None
        && hosts.len() > 1
        && let Some(port) = entry.ports.iter().find(|p| !is_http_or_tls(p.protocol))
    {
        issues.at(
            &spec.key_path("hosts"),
            format!(
                "multiple hosts provided with non-HTTP, non-TLS port {:?} ({}); \
                 with resolution {r} they cannot be told apart",
                port.name, port.protocol
            ),
        );
    }

    if let Some(node) = spec.get("exportTo") {
        entry.export_to = parse_export_to(&node, &entry.namespace, issues);
    }
    entry
}

fn parse_resolution(node: &Node<'_>, issues: &mut Issues) -> Option<Resolution> {
    let resolution = match node.str(issues)? {
        "NONE" => Resolution::None,
        "STATIC" => Resolution::Static,
        "DNS" => Resolution::Dns,
        "DNS_ROUND_ROBIN" => Resolution::DnsRoundRobin,
        "DYNAMIC_DNS" => Resolution::DynamicDns,
        other => {
            issues.at(
                &node.path,
                format!(
                    "unknown resolution {other:?}; expected one of NONE, STATIC, DNS, \
                     DNS_ROUND_ROBIN, DYNAMIC_DNS"
                ),
            );
            return None;
        }
    };
    Some(resolution)
}

/// istiod's rules for `resolution: DYNAMIC_DNS` (`ValidateServiceEntry`): every host a
/// wildcard, no `addresses`, no `endpoints` (the destination is what each request's name
/// resolves to), ports HTTP, HTTP2, GRPC or TLS only (a name is needed: `Host` or SNI), and
/// `MESH_INTERNAL` not with a waypoint (`istio.io/use-waypoint` other than `none`).
fn check_dynamic_dns(
    root: &Node<'_>,
    spec: &Node<'_>,
    entry: &ServiceEntry,
    hosts: &[(String, String)],
    endpoint_count: usize,
    issues: &mut Issues,
) {
    const R: &str = "DYNAMIC_DNS";
    for (path, host) in hosts {
        if !host.starts_with('*') {
            issues.at(
                path,
                format!("host {host:?} must be wildcarded for resolution mode {R}"),
            );
        }
    }
    if let Some(node) = spec.get("addresses")
        && node.value.as_array().is_some_and(|a| !a.is_empty())
    {
        issues.at(
            &node.path,
            format!(
                "addresses cannot be set for resolution type {R}: HTTP route domains are only \
                 generated from the hosts field values"
            ),
        );
    }
    if endpoint_count != 0
        && let Some(node) = spec.get("endpoints")
    {
        issues.at(
            &node.path,
            format!(
                "endpoints cannot be set for resolution type {R}: the destination address is \
                 determined from the hosts field values"
            ),
        );
    }
    // Istio parses the protocol text: `GRPC-Web` and `HTTPS` are not among the four, though
    // `GRPC-Web` is carried as GRPC here.
    for (i, port) in spec
        .get("ports")
        .and_then(|p| p.value.as_array().cloned())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = port.get("protocol").and_then(|p| p.as_str()).unwrap_or("");
        if !["http", "http2", "grpc", "tls"].contains(&text.to_ascii_lowercase().as_str()) {
            issues.at(
                &format!("{}.ports[{i}].protocol", spec.path),
                format!(
                    "protocol {text:?}: only HTTP, TLS, GRPC, and HTTP2 protocols are supported \
                     for resolution type {R} (the name to resolve comes from Host or SNI)"
                ),
            );
        }
    }
    let waypoint = root
        .value
        .pointer("/metadata/labels/istio.io~1use-waypoint")
        .and_then(|v| v.as_str())
        .is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("none"));
    if entry.location == Location::MeshInternal && waypoint {
        issues.at(
            &spec.key_path("location"),
            format!("location MESH_INTERNAL with resolution type {R} is not supported when using waypoints"),
        );
    }
}

fn parse_location(node: &Node<'_>, issues: &mut Issues) -> Option<Location> {
    match node.str(issues)? {
        "MESH_EXTERNAL" => Some(Location::MeshExternal),
        "MESH_INTERNAL" => Some(Location::MeshInternal),
        other => {
            issues.at(
                &node.path,
                format!("unknown location {other:?}; expected MESH_EXTERNAL or MESH_INTERNAL"),
            );
            None
        }
    }
}

/// The hosts with their paths. Invalid hosts are reported and left out.
fn parse_hosts(
    spec: &Node<'_>,
    resolution: Option<Resolution>,
    issues: &mut Issues,
) -> Vec<(String, String)> {
    let Some(node) = spec.get("hosts") else {
        issues.at(&spec.key_path("hosts"), "at least one host is required");
        return Vec::new();
    };
    let hosts = node.strings(issues);
    if node.value.as_array().is_some_and(Vec::is_empty) {
        issues.at(&node.path, "at least one host is required");
    }
    if hosts.len() > MAX_HOSTS {
        issues.at(
            &node.path,
            format!("at most {MAX_HOSTS} hosts are allowed, got {}", hosts.len()),
        );
    }
    let mut valid = Vec::new();
    for (path, host) in hosts {
        if host == "*" {
            issues.at(
                &path,
                "invalid host \"*\": a ServiceEntry cannot match every host",
            );
        } else if let Err(message) = check_wildcard_domain(host) {
            issues.at(&path, message);
        } else if is_partial_wildcard(host) && resolution != Some(Resolution::DynamicDns) {
            // Istio warns; we would have to guess what `*foo.com` matches, so we refuse. With
            // DYNAMIC_DNS Istio accepts it without a warning: the name is matched as Envoy
            // matches a suffix wildcard domain (any non-empty prefix), see `DnsNames`.
            issues.at(
                &path,
                format!(
                    "partial wildcard {host:?} not allowed; only a whole first label \
                     may be a wildcard (*.example.com)"
                ),
            );
        } else {
            valid.push((path, host.to_owned()));
        }
    }
    valid
}

fn parse_addresses(
    spec: &Node<'_>,
    resolution: Option<Resolution>,
    issues: &mut Issues,
) -> Vec<super::IpNet> {
    let Some(node) = spec.get("addresses") else {
        return Vec::new();
    };
    let addresses = node.strings(issues);
    if addresses.len() > MAX_ADDRESSES {
        issues.at(
            &node.path,
            format!(
                "at most {MAX_ADDRESSES} addresses are allowed, got {}",
                addresses.len()
            ),
        );
    }
    let mut nets = Vec::new();
    for (path, text) in addresses {
        if text.len() > MAX_ADDRESS_LEN {
            issues.at(
                &path,
                format!("must be at most {MAX_ADDRESS_LEN} characters"),
            );
            continue;
        }
        match parse_ip_net(text) {
            Ok(net) => nets.push(net),
            Err(message) => {
                issues.at(&path, message);
                continue;
            }
        }
        if text.contains('/')
            && let Some(r @ (Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns)) =
                resolution
        {
            issues.at(
                &path,
                format!(
                    "CIDR addresses are allowed only for NONE/STATIC resolution types, \
                     got {text:?} with resolution {r}"
                ),
            );
        }
    }
    nets
}

fn parse_ports(spec: &Node<'_>, issues: &mut Issues) -> Vec<ServicePort> {
    // Istio accepts a ServiceEntry without ports; egress captures per port, so there would be
    // nothing to capture.
    let Some(node) = spec.get("ports") else {
        issues.at(
            &spec.key_path("ports"),
            "at least one port is required (egress captures traffic per port)",
        );
        return Vec::new();
    };
    let items = node.items(issues);
    if items.is_empty() && node.value.is_array() {
        issues.at(
            &node.path,
            "at least one port is required (egress captures traffic per port)",
        );
    }
    if items.len() > MAX_PORTS {
        issues.at(
            &node.path,
            format!("at most {MAX_PORTS} ports are allowed, got {}", items.len()),
        );
    }
    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    let mut ports = Vec::new();
    for item in items {
        if item.object(issues).is_none() {
            continue;
        }
        let name = match item.get("name") {
            None => {
                issues.at(&item.key_path("name"), "is required");
                None
            }
            Some(node) => node.str(issues).filter(|name| {
                let valid = is_dns1123_label(name);
                if !valid {
                    issues.at(
                        &node.path,
                        format!(
                            "invalid port name {name:?}: must be a DNS-1123 label \
                             (letters, digits and '-', at most 63 characters)"
                        ),
                    );
                } else if !names.insert(name.to_owned()) {
                    issues.at(&node.path, format!("port name {name:?} already defined"));
                }
                valid
            }),
        };
        let number = match item.get("number") {
            None => {
                issues.at(&item.key_path("number"), "is required");
                None
            }
            Some(node) => node.port(issues).inspect(|number| {
                if !numbers.insert(*number) {
                    issues.at(&node.path, format!("port {number} already defined"));
                }
            }),
        };
        let protocol = parse_protocol(&item, issues);
        // 0 is proto3's "unset", as in Istio.
        let target_port = match item.get("targetPort") {
            None => Some(None),
            Some(node) if node.value.as_u64() == Some(0) => Some(None),
            Some(node) => node.port(issues).map(Some),
        };
        if let (Some(name), Some(number), Some(protocol), Some(target_port)) =
            (name, number, protocol, target_port)
        {
            ports.push(ServicePort {
                number,
                name: name.to_owned(),
                protocol,
                target_port,
            });
        }
    }
    ports
}

/// `protocol`, case-insensitive as Istio's `protocol.Parse`.
fn parse_protocol(port: &Node<'_>, issues: &mut Issues) -> Option<Protocol> {
    let Some(node) = port.get("protocol") else {
        return Some(unset_protocol(port));
    };
    let text = node.str(issues)?;
    let protocol = match text.to_ascii_lowercase().as_str() {
        "" => unset_protocol(port),
        "http" => Protocol::Http,
        "http2" => Protocol::Http2,
        "https" => Protocol::Https,
        // gRPC-Web is carried like gRPC: as an opaque stream after L4 checks.
        "grpc" | "grpc-web" => Protocol::Grpc,
        "tls" => Protocol::Tls,
        "tcp" => Protocol::Tcp,
        "mongo" => Protocol::Mongo,
        "mysql" => Protocol::Mysql,
        "redis" => Protocol::Redis,
        "udp" => {
            issues.at(
                &node.path,
                "protocol UDP is not supported: Istio accepts the name but its proxies \
                 carry no UDP, and neither does egress",
            );
            return None;
        }
        "http_proxy" => {
            issues.at(
                &node.path,
                "protocol HTTP_PROXY is not supported: it only configures sidecar \
                 egress listeners",
            );
            return None;
        }
        _ => {
            issues.at(
                &node.path,
                format!("unsupported protocol {text:?}; expected one of {PROTOCOLS}"),
            );
            return None;
        }
    };
    Some(protocol)
}

/// Istio sniffs the protocol of a port without one; egress does not sniff, so such a port is
/// carried as opaque TCP ("the default protocol for a service port" in Istio's
/// `pkg/config/protocol`). HTTP rules of AuthorizationPolicy then cannot match it.
fn unset_protocol(port: &Node<'_>) -> Protocol {
    tracing::warn!(
        field = %port.path,
        "port has no protocol; carrying it as TCP (egress does not sniff protocols)"
    );
    Protocol::Tcp
}

fn is_http_or_tls(protocol: Protocol) -> bool {
    matches!(
        protocol,
        Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::Https | Protocol::Tls
    )
}

/// `exportTo` as Istio's `validateExportTo` for a ServiceEntry: `.`, `*`, `~` or namespaces,
/// no duplicates (`.` counts as the object's own namespace), `*` and `~` alone.
fn parse_export_to(node: &Node<'_>, namespace: &str, issues: &mut Issues) -> Vec<String> {
    let entries = node.strings(issues);
    let mut seen = HashSet::new();
    for (path, entry) in &entries {
        let key = if *entry == "." { namespace } else { entry };
        if seen.contains(key) {
            if key != *entry {
                issues.at(
                    path,
                    format!("duplicate entries in exportTo: . and current namespace {namespace}"),
                );
            } else {
                issues.at(
                    path,
                    format!("duplicate entries in exportTo for entry {entry}"),
                );
            }
        } else if matches!(*entry, "." | "*" | "~") || is_dns1123_label(entry) {
            seen.insert(key);
        } else {
            issues.at(
                path,
                format!(
                    "only ., *, ~ or a namespace name (a DNS-1123 label) is allowed \
                     as an exportTo entry, got {entry:?}"
                ),
            );
        }
    }
    if seen.contains("*") && entries.len() > 1 {
        issues.at(
            &node.path,
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if seen.contains("~") && entries.len() > 1 {
        issues.at(
            &node.path,
            "cannot export service entry to no one (~) and someone",
        );
    }
    entries.into_iter().map(|(_, e)| e.to_owned()).collect()
}

#[cfg(test)]
#[path = "service_entry_tests.rs"]
mod tests;
