//! The runtime view shared by the kernel maps and the waypoint: one [`Service`] per
//! (ServiceEntry, port), numbered by the service id the kernel carries in each origin.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::{
    config::{IpNet, Protocol},
    policy::PolicySet,
    tls::UpstreamTls,
};

/// Where the waypoint sends traffic for a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// `resolution: NONE`: the address the application dialled, on the upstream port.
    OriginalDst,
    /// `resolution: STATIC` endpoints or the addresses DNS returned (ports already applied).
    /// Empty when DNS has not answered (yet): the waypoint answers 503.
    Endpoints(Vec<SocketAddr>),
    /// `resolution: DYNAMIC_DNS`: the name each request carries (`Host`, SNI) is checked
    /// against the wildcard hosts and resolved when it arrives; never the address dialled.
    DynamicDns,
}

/// One port of one ServiceEntry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub id: u32,
    pub namespace: String,
    /// ServiceEntry `metadata.name`.
    pub name: String,
    pub hosts: Vec<String>,
    /// Addresses captured in the kernel for this port (configured and resolved).
    pub addresses: Vec<IpNet>,
    /// The port the application dials.
    pub port: u16,
    pub port_name: String,
    pub protocol: Protocol,
    /// `targetPort`, or `port` when unset; endpoint port overrides are already in `upstream`.
    pub upstream_port: u16,
    pub upstream: Upstream,
}

impl Service {
    /// Istio's cluster name for this service: `outbound|PORT||HOST`.
    pub fn cluster_name(&self) -> String {
        format!(
            "outbound|{}||{}",
            self.port,
            self.hosts.first().map(String::as_str).unwrap_or("")
        )
    }

    /// The address to forward a connection to, given where the application was headed.
    /// `pick` chooses among several endpoints (round-robin by the caller).
    pub fn upstream_addr(&self, origin_dst: IpAddr, pick: usize) -> Option<SocketAddr> {
        match &self.upstream {
            Upstream::OriginalDst => Some(SocketAddr::new(origin_dst, self.upstream_port)),
            Upstream::Endpoints(eps) if eps.is_empty() => None,
            // The name is resolved by the waypoint first (`proxy::dynamic_dns`).
            Upstream::DynamicDns => None,
            Upstream::Endpoints(eps) => Some(eps[pick % eps.len()]),
        }
    }
}

/// One configuration generation: all services, indexed by id, and the authorization policies
/// that apply to them. Replaced whole (never mutated) when config or DNS changes, so a request
/// sees services and policies of the same generation.
#[derive(Clone, Debug, Default)]
pub struct ServiceTable {
    services: Vec<Arc<Service>>,
    /// The DestinationRule TLS each service's upstream connections use, indexed by id (`None`:
    /// plain TCP). Beside the services rather than in them so a service stays plain data.
    tls: Vec<Option<UpstreamTls>>,
    /// Service id -> why the TLS its DestinationRule asks for cannot be set up: its requests
    /// are refused (503), never sent in plain text.
    tls_unavailable: std::collections::HashMap<u32, String>,
    /// Service id -> every service (itself included) claiming one of its addresses on its port,
    /// for the ids whose address is shared.
    siblings: std::collections::HashMap<u32, Vec<u32>>,
    /// Where connections arriving without a kernel origin record (iptables capture) find their
    /// service: the same (address, port) → service routes the kernel's LPM trie holds.
    routes: Routes,
    /// AuthorizationPolicies of this generation.
    pub policies: Arc<PolicySet>,
    /// Bumped on every change of config or identity; the kernel verdict cache keys on it.
    pub generation: u64,
    /// What the DNS proxy answers for ServiceEntry hosts (VIPs, `addresses`).
    pub dns_names: Arc<crate::dnsproxy::DnsNames>,
}

impl ServiceTable {
    /// Builds a table without policies; `services[i].id` must equal `i`.
    pub fn new(services: Vec<Service>) -> Self {
        debug_assert!(services.iter().enumerate().all(|(i, s)| s.id as usize == i));
        Self {
            tls: vec![None; services.len()],
            tls_unavailable: std::collections::HashMap::new(),
            routes: Routes::new(&services),
            services: services.into_iter().map(Arc::new).collect(),
            siblings: std::collections::HashMap::new(),
            policies: Arc::default(),
            generation: 0,
            dns_names: Arc::default(),
        }
    }

    /// The same table with the names the DNS proxy answers (from `build`).
    pub fn with_dns_names(mut self, names: crate::dnsproxy::DnsNames) -> Self {
        self.dns_names = Arc::new(names);
        self
    }

    /// The same table with the services that share addresses (from `build`).
    pub fn with_siblings(mut self, siblings: std::collections::HashMap<u32, Vec<u32>>) -> Self {
        self.siblings = siblings;
        self
    }

    /// Whether service `id` shares an address and port with another ServiceEntry: the kernel's
    /// service id then does not say which one a connection is for.
    pub fn is_shared(&self, id: u32) -> bool {
        self.siblings.contains_key(&id)
    }

    /// Among the services sharing service `id`'s address, the one whose hosts include `host`
    /// (case-insensitive; port and trailing dot ignored).
    pub fn by_host(&self, id: u32, host: &str) -> Option<&Arc<Service>> {
        let host = match host.strip_prefix('[') {
            // An IPv6 literal: `[addr]` or `[addr]:port`.
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => match host.rsplit_once(':') {
                Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                    h
                }
                _ => host,
            },
        };
        let host = host.trim_end_matches('.');
        self.siblings.get(&id)?.iter().find_map(|sibling| {
            let service = self.get(*sibling)?;
            service
                .hosts
                .iter()
                .any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(host))
                .then_some(service)
        })
    }

    /// The same table with these policies and generation.
    pub fn with_policies(mut self, policies: Arc<PolicySet>, generation: u64) -> Self {
        self.policies = policies;
        self.generation = generation;
        self
    }

    /// The same table with `tls[i]` for service `i` (from [`select_tls`]).
    pub fn with_tls(mut self, tls: Vec<Option<Result<UpstreamTls, String>>>) -> Self {
        debug_assert_eq!(tls.len(), self.services.len());
        self.tls_unavailable.clear();
        self.tls = tls
            .into_iter()
            .enumerate()
            .map(|(id, tls)| match tls? {
                Ok(tls) => Some(tls),
                Err(reason) => {
                    self.tls_unavailable.insert(id as u32, reason);
                    None
                }
            })
            .collect();
        self
    }

    /// Why service `id`'s DestinationRule TLS cannot be originated, when it cannot.
    pub fn tls_unavailable(&self, id: u32) -> Option<&str> {
        self.tls_unavailable.get(&id).map(String::as_str)
    }

    /// The TLS to originate towards service `id`'s endpoints, if any.
    pub fn tls(&self, id: u32) -> Option<&UpstreamTls> {
        self.tls.get(id as usize).and_then(Option::as_ref)
    }

    /// The service a connection to `dst` is for, as the kernel's service map would answer:
    /// the longest matching address or CIDR on that port, the first ServiceEntry claiming it
    /// when several do. IPv4-mapped IPv6 destinations match as IPv4.
    pub fn route(&self, dst: SocketAddr) -> Option<u32> {
        self.routes.lookup(dst)
    }

    pub fn get(&self, id: u32) -> Option<&Arc<Service>> {
        self.services.get(id as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter()
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// (address, port) → service id, for userspace lookups of a destination.
#[derive(Clone, Debug, Default)]
struct Routes {
    /// Single addresses (/32, /128): one hash lookup, whatever the number of ServiceEntries.
    hosts: std::collections::HashMap<(IpAddr, u16), u32>,
    /// Shorter prefixes, longest first.
    nets: Vec<(IpNet, u16, u32)>,
}

impl Routes {
    fn new(services: &[Service]) -> Self {
        let mut routes = Self::default();
        for service in services {
            for net in &service.addresses {
                let full = if net.addr.is_ipv4() { 32 } else { 128 };
                if net.prefix_len >= full {
                    routes
                        .hosts
                        .entry((net.addr, service.port))
                        .or_insert(service.id);
                } else if !routes
                    .nets
                    .iter()
                    .any(|(n, port, _)| n == net && *port == service.port)
                {
                    routes.nets.push((*net, service.port, service.id));
                }
            }
        }
        // Stable: among equal prefixes the first claimant stays first.
        routes
            .nets
            .sort_by_key(|(net, _, _)| std::cmp::Reverse(net.prefix_len));
        routes
    }

    fn lookup(&self, dst: SocketAddr) -> Option<u32> {
        let ip = match dst.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if let Some(id) = self.hosts.get(&(ip, dst.port())) {
            return Some(*id);
        }
        self.nets
            .iter()
            .find(|(net, port, _)| *port == dst.port() && contains(net, ip))
            .map(|(_, _, id)| *id)
    }
}

fn contains(net: &IpNet, ip: IpAddr) -> bool {
    fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
        let (bytes, bits) = (usize::from(len / 8), len % 8);
        a[..bytes] == b[..bytes]
            && (bits == 0 || {
                let mask = 0xffu8 << (8 - bits);
                a[bytes] & mask == b[bytes] & mask
            })
    }
    match (net.addr, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), net.prefix_len),
        (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), net.prefix_len),
        _ => false,
    }
}

mod build;
mod destination;
// Each trait lives with its implementation (the kernel maps, the cgroup tree), so neither
// module depends on this one; the waypoint finds both here.
pub use crate::{bpf::OriginSource, identity::IdentitySource};
pub use build::{Built, DnsAnswers, build, dns_hosts};
pub use destination::{select_destination_rule, select_tls};

#[cfg(test)]
mod tests {
    use super::*;

    fn service(id: u32, addresses: &[&str], port: u16) -> Service {
        Service {
            id,
            namespace: "default".into(),
            name: format!("se-{id}"),
            hosts: vec![format!("host-{id}.test")],
            addresses: addresses
                .iter()
                .map(|a| {
                    let (addr, len) = a.split_once('/').unwrap_or((a, ""));
                    let addr: IpAddr = addr.parse().unwrap();
                    let full = if addr.is_ipv4() { 32 } else { 128 };
                    IpNet {
                        addr,
                        prefix_len: len.parse().unwrap_or(full),
                    }
                })
                .collect(),
            port,
            port_name: "http".into(),
            protocol: Protocol::Http,
            upstream_port: port,
            upstream: Upstream::OriginalDst,
        }
    }

    fn dst(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn routes_answer_as_the_kernel_service_map() {
        let table = ServiceTable::new(vec![
            service(0, &["10.0.0.0/8"], 80),
            service(1, &["10.1.0.0/16", "192.0.2.7"], 80),
            service(2, &["192.0.2.7"], 80),
            service(3, &["192.0.2.7"], 443),
            service(4, &["2001:db8::1"], 80),
        ]);
        // Longest prefix wins; the port must match.
        assert_eq!(table.route(dst("10.1.2.3:80")), Some(1));
        assert_eq!(table.route(dst("10.2.2.3:80")), Some(0));
        assert_eq!(table.route(dst("10.2.2.3:81")), None);
        // The first ServiceEntry claiming a shared address owns its route, as in the kernel.
        assert_eq!(table.route(dst("192.0.2.7:80")), Some(1));
        assert_eq!(table.route(dst("192.0.2.7:443")), Some(3));
        assert_eq!(table.route(dst("192.0.2.8:80")), None);
        // IPv6, and v4-mapped destinations as IPv4.
        assert_eq!(table.route(dst("[2001:db8::1]:80")), Some(4));
        assert_eq!(table.route(dst("[::ffff:10.1.0.1]:80")), Some(1));
    }

    #[test]
    fn prefix_matching_respects_partial_bytes() {
        let net = |s: &str, len| IpNet {
            addr: s.parse().unwrap(),
            prefix_len: len,
        };
        assert!(contains(
            &net("10.0.0.0", 9),
            "10.127.255.255".parse().unwrap()
        ));
        assert!(!contains(
            &net("10.0.0.0", 9),
            "10.128.0.0".parse().unwrap()
        ));
        assert!(contains(&net("0.0.0.0", 0), "203.0.113.9".parse().unwrap()));
        assert!(!contains(
            &net("10.0.0.0", 8),
            "2001:db8::1".parse().unwrap()
        ));
    }
}
