//! ServiceEntries (+ DNS answers) -> the service table and the kernel's address map.
//!
//! One [`Service`] per (ServiceEntry, port); for `resolution: DNS` without `addresses`, one per
//! (ServiceEntry, port, host) so that each host's resolved addresses lead to that host's own
//! upstream, as Istio gives each such host its own cluster.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use egress_common::{SERVICE_F_HTTP, SERVICE_F_SHARED, ServiceValue};

use super::{Service, ServiceTable, Upstream};
use crate::{
    bpf::ServiceRoute,
    config::{ConfigSet, IpNet, Resolution, ServiceEntry, ServicePort},
};

/// Host name -> the addresses DNS returned for it (most recent good answer).
pub type DnsAnswers = HashMap<String, Vec<IpAddr>>;

/// What `build` produces.
#[derive(Debug, Default)]
pub struct Built {
    pub table: ServiceTable,
    pub routes: Vec<ServiceRoute>,
    /// Things an operator should know (an address claimed twice, a host not resolved yet).
    pub warnings: Vec<String>,
}

/// Host names that need DNS: hosts of entries without `addresses` (capture) and of DNS
/// resolution (upstream), and hostnames among DNS endpoints. Wildcards are never resolved.
pub fn dns_hosts(config: &ConfigSet) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for se in &config.service_entries {
        let dns = matches!(se.resolution, Resolution::Dns | Resolution::DnsRoundRobin);
        if se.addresses.is_empty() || (dns && se.endpoints.is_empty()) {
            hosts.extend(se.hosts.iter().filter(|h| !h.contains('*')).cloned());
        }
        if dns {
            for ep in &se.endpoints {
                if ep.address.parse::<IpAddr>().is_err() {
                    hosts.insert(ep.address.clone());
                }
            }
        }
    }
    hosts
}

fn full(addr: IpAddr) -> IpNet {
    IpNet {
        addr,
        prefix_len: if addr.is_ipv4() { 32 } else { 128 },
    }
}

/// An endpoint's own port for this service port, else `targetPort`, else the port number.
fn endpoint_port(port: &ServicePort, ep_ports: &BTreeMap<String, u16>) -> u16 {
    ep_ports
        .get(&port.name)
        .copied()
        .unwrap_or(port.target_port.unwrap_or(port.number))
}

/// Upstream endpoints for a STATIC or DNS entry (for one host group).
fn upstream(se: &ServiceEntry, port: &ServicePort, hosts: &[String], dns: &DnsAnswers) -> Upstream {
    let upstream_port = port.target_port.unwrap_or(port.number);
    match se.resolution {
        Resolution::None => Upstream::OriginalDst,
        Resolution::DynamicDns => Upstream::DynamicDns,
        Resolution::Static => Upstream::Endpoints(
            se.endpoints
                .iter()
                .filter_map(|ep| {
                    let ip: IpAddr = ep.address.parse().ok()?;
                    Some(SocketAddr::new(ip, endpoint_port(port, &ep.ports)))
                })
                .collect(),
        ),
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let mut eps = Vec::new();
            if se.endpoints.is_empty() {
                for host in hosts {
                    for ip in dns.get(host).into_iter().flatten() {
                        eps.push(SocketAddr::new(*ip, upstream_port));
                    }
                }
            } else {
                for ep in &se.endpoints {
                    let p = endpoint_port(port, &ep.ports);
                    match ep.address.parse::<IpAddr>() {
                        Ok(ip) => eps.push(SocketAddr::new(ip, p)),
                        Err(_) => eps.extend(
                            dns.get(&ep.address)
                                .into_iter()
                                .flatten()
                                .map(|ip| SocketAddr::new(*ip, p)),
                        ),
                    }
                }
            }
            // Capture refuses IPv6 for now, and many nodes have no IPv6 route: use a host's IPv6
            // addresses only when it has no IPv4 one.
            if eps.iter().any(SocketAddr::is_ipv4) {
                eps.retain(SocketAddr::is_ipv4);
            }
            Upstream::Endpoints(eps)
        }
    }
}

pub fn build(config: &ConfigSet, dns: &DnsAnswers) -> Built {
    let mut services = Vec::new();
    let mut routes = Vec::new();
    let mut warnings = Vec::new();
    // (address, port) -> the services that claim it, in config order (the first is the one the
    // kernel names; HTTP requests then choose among them by Host).
    let mut claimed: HashMap<(IpNet, u16), Vec<u32>> = HashMap::new();
    // VIPs (design §11) and the names the DNS proxy answers.
    let vips = crate::dnsproxy::vip::allocate(config);
    let mut dns_names = crate::dnsproxy::DnsNames::default();

    for se in &config.service_entries {
        for host in &se.hosts {
            let key = (se.namespace.clone(), se.name.clone(), host.clone());
            if let Some(vip) = vips.get(&key) {
                dns_names.add(host, vip.iter().copied());
            } else if !se.addresses.is_empty() {
                // Names of ServiceEntries with `addresses` answer those (single addresses,
                // not CIDRs).
                dns_names.add(
                    host,
                    se.addresses
                        .iter()
                        .filter(|n| n.prefix_len == if n.addr.is_ipv4() { 32 } else { 128 })
                        .map(|n| n.addr),
                );
            }
        }
        let per_host = matches!(se.resolution, Resolution::Dns | Resolution::DnsRoundRobin)
            && se.addresses.is_empty()
            && se.endpoints.is_empty();
        let groups: Vec<Vec<String>> = if per_host {
            se.hosts.iter().map(|h| vec![h.clone()]).collect()
        } else {
            vec![se.hosts.clone()]
        };
        for port in &se.ports {
            for hosts in &groups {
                let addresses: Vec<IpNet> = if se.addresses.is_empty() {
                    let mut found: Vec<IpNet> = hosts
                        .iter()
                        .flat_map(|h| dns.get(h).into_iter().flatten())
                        .map(|ip| full(*ip))
                        .collect();
                    found.sort_by_key(|n| (n.addr, n.prefix_len));
                    found.dedup();
                    // A DYNAMIC_DNS entry is reached by its VIPs only (its names resolve when
                    // a request names them): without one (opted out of allocation) nothing
                    // captures it.
                    let dynamic = se.resolution == Resolution::DynamicDns;
                    let has_vip = hosts.iter().any(|h| {
                        vips.contains_key(&(se.namespace.clone(), se.name.clone(), h.clone()))
                    });
                    if found.is_empty() && dynamic && !has_vip {
                        warnings.push(format!(
                            "ServiceEntry {}/{}: resolution DYNAMIC_DNS without a VIP (auto-allocation is off): nothing captures {}",
                            se.namespace,
                            se.name,
                            hosts.join(", ")
                        ));
                    } else if found.is_empty() && !dynamic {
                        warnings.push(format!(
                            "ServiceEntry {}/{}: no address to capture for {} yet (no `addresses`, and DNS has not answered)",
                            se.namespace,
                            se.name,
                            hosts.join(", ")
                        ));
                    }
                    found
                } else {
                    se.addresses.clone()
                };
                // The hosts' VIPs are captured like `addresses`.
                let mut addresses = addresses;
                for host in hosts {
                    let key = (se.namespace.clone(), se.name.clone(), host.clone());
                    for vip in vips.get(&key).into_iter().flatten() {
                        let net = full(*vip);
                        if !addresses.contains(&net) {
                            addresses.push(net);
                        }
                    }
                }
                let id = services.len() as u32;
                let service = Service {
                    id,
                    namespace: se.namespace.clone(),
                    name: se.name.clone(),
                    hosts: hosts.clone(),
                    addresses: addresses.clone(),
                    port: port.number,
                    port_name: port.name.clone(),
                    protocol: port.protocol,
                    upstream_port: port.target_port.unwrap_or(port.number),
                    upstream: upstream(se, port, hosts, dns),
                };
                let value = ServiceValue {
                    service_id: id,
                    flags: if port.protocol.is_http() {
                        SERVICE_F_HTTP
                    } else {
                        0
                    },
                };
                for net in &addresses {
                    let owners = claimed.entry((*net, port.number)).or_default();
                    owners.push(id);
                    if owners.len() == 1 {
                        routes.push(ServiceRoute {
                            net: *net,
                            port: port.number,
                            value,
                        });
                    }
                }
                services.push(service);
            }
        }
    }
    // An address shared by several ServiceEntries: the kernel cannot tell them apart (only the
    // Host header can), so no verdict for it may be cached, and the route says so.
    let mut siblings: HashMap<u32, Vec<u32>> = HashMap::new();
    for ((net, port), owners) in &claimed {
        if owners.len() < 2 {
            continue;
        }
        for owner in owners {
            let list = siblings.entry(*owner).or_default();
            for other in owners {
                if !list.contains(other) {
                    list.push(*other);
                }
            }
        }
        let names: Vec<String> = owners
            .iter()
            .map(|id| {
                let s: &Service = &services[*id as usize];
                format!("{}/{}", s.namespace, s.name)
            })
            .collect();
        warnings.push(format!(
            "{net}:{port} is shared by ServiceEntries {}: HTTP requests choose by Host, other protocols go to {}, and no deny is cached in the kernel for it",
            names.join(", "),
            names[0]
        ));
        for route in routes
            .iter_mut()
            .filter(|r| r.net == *net && r.port == *port)
        {
            route.value.flags |= SERVICE_F_SHARED;
        }
    }
    for list in siblings.values_mut() {
        list.sort_unstable();
    }
    let tls = super::select_tls(&services, &config.destination_rules);
    Built {
        table: ServiceTable::new(services)
            .with_tls(tls)
            .with_siblings(siblings)
            .with_dns_names(dns_names),
        routes,
        warnings,
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::{Endpoint, Location, Protocol, Source};

    fn se(resolution: Resolution, addresses: &[&str], endpoints: Vec<Endpoint>) -> ServiceEntry {
        ServiceEntry {
            source: Source::file("t.yaml", 1),
            name: "httpbin".into(),
            namespace: "default".into(),
            hosts: vec!["httpbin.test".into(), "other.test".into()],
            addresses: addresses
                .iter()
                .map(|a| full(a.parse().expect("test address")))
                .collect(),
            ports: vec![ServicePort {
                number: 80,
                name: "http".into(),
                protocol: Protocol::Http,
                target_port: Some(8080),
            }],
            resolution,
            location: Location::MeshExternal,
            endpoints,
            export_to: vec![],
            auto_allocate: true,
            status_addresses: vec![],
        }
    }

    fn set(entries: Vec<ServiceEntry>) -> ConfigSet {
        ConfigSet {
            service_entries: entries,
            skipped: vec![],
            ..Default::default()
        }
    }

    #[test]
    fn static_endpoints_use_the_endpoint_port_then_target_port() {
        let mut named = BTreeMap::new();
        named.insert("http".to_string(), 9000);
        let built = build(
            &set(vec![se(
                Resolution::Static,
                &["127.9.0.1"],
                vec![
                    Endpoint {
                        address: "127.0.0.2".into(),
                        ports: named,
                        ..Default::default()
                    },
                    Endpoint {
                        address: "127.0.0.3".into(),
                        ..Default::default()
                    },
                ],
            )]),
            &DnsAnswers::new(),
        );
        let svc = built.table.get(0).expect("one service");
        assert_eq!(
            svc.upstream,
            Upstream::Endpoints(vec![
                "127.0.0.2:9000".parse().unwrap(),
                "127.0.0.3:8080".parse().unwrap()
            ])
        );
        assert_eq!(built.routes.len(), 1);
        assert_eq!(built.routes[0].port, 80);
    }

    #[test]
    fn dns_without_addresses_gives_one_service_per_host() {
        let mut dns = DnsAnswers::new();
        dns.insert(
            "httpbin.test".into(),
            vec!["127.1.0.1".parse().unwrap(), "::1".parse().unwrap()],
        );
        dns.insert("other.test".into(), vec!["127.1.0.2".parse().unwrap()]);
        let config = set(vec![se(Resolution::Dns, &[], vec![])]);
        assert_eq!(
            dns_hosts(&config).into_iter().collect::<Vec<_>>(),
            vec!["httpbin.test", "other.test"]
        );
        let built = build(&config, &dns);
        assert_eq!(built.table.len(), 2);
        let first = built.table.get(0).unwrap();
        assert_eq!(first.hosts, vec!["httpbin.test"]);
        assert_eq!(
            first.upstream,
            Upstream::Endpoints(vec!["127.1.0.1:8080".parse().unwrap()])
        );
        // ::1 is captured (and refused by the kernel), but IPv4 is preferred upstream; each
        // host's VIP is captured too.
        assert_eq!(built.routes.len(), 5);
        let vips: Vec<_> = built
            .routes
            .iter()
            .filter(|r| r.net.addr.to_string().starts_with("240.240."))
            .map(|r| r.value.service_id)
            .collect();
        assert_eq!(vips, vec![0, 1]);
        let upstream_is_never_the_vip = match &first.upstream {
            Upstream::Endpoints(eps) => eps.iter().all(|e| !e.ip().to_string().starts_with("240.")),
            Upstream::OriginalDst | Upstream::DynamicDns => false,
        };
        assert!(upstream_is_never_the_vip);
    }

    #[test]
    fn unresolved_hosts_warn_and_capture_only_their_vips() {
        let built = build(
            &set(vec![se(Resolution::Dns, &[], vec![])]),
            &DnsAnswers::new(),
        );
        assert_eq!(built.routes.len(), 2);
        assert!(
            built
                .routes
                .iter()
                .all(|r| r.net.addr.to_string().starts_with("240.240."))
        );
        assert_eq!(built.warnings.len(), 2);
    }

    #[test]
    fn vips_follow_istiods_eligibility_and_status_addresses() {
        use crate::dnsproxy::Answer;
        let mut opted_out = se(Resolution::Dns, &[], vec![]);
        opted_out.name = "opted-out".into();
        opted_out.hosts = vec!["out.test".into()];
        opted_out.auto_allocate = false;
        let mut allocated = se(Resolution::Dns, &[], vec![]);
        allocated.name = "allocated".into();
        allocated.hosts = vec!["istiod.test".into()];
        allocated.status_addresses = vec!["240.240.7.7".parse().unwrap()];
        let mut none = se(Resolution::None, &[], vec![]);
        none.name = "none".into();
        none.hosts = vec!["none.test".into()];
        let with_addresses = se(Resolution::None, &["127.9.0.1"], vec![]);
        let built = build(
            &set(vec![opted_out, allocated, none, with_addresses]),
            &DnsAnswers::new(),
        );
        let names = &built.table.dns_names;
        assert_eq!(names.answer("out.test"), Answer::Forward);
        assert_eq!(names.answer("none.test"), Answer::Forward);
        assert_eq!(
            names.answer("istiod.test"),
            Answer::Host(vec!["240.240.7.7".parse().unwrap()])
        );
        assert_eq!(
            names.answer("httpbin.test"),
            Answer::Host(vec!["127.9.0.1".parse().unwrap()])
        );
        // Deterministic: the same config gives the same VIPs.
        let again = build(
            &set(vec![se(Resolution::Dns, &[], vec![])]),
            &DnsAnswers::new(),
        );
        let twice = build(
            &set(vec![se(Resolution::Dns, &[], vec![])]),
            &DnsAnswers::new(),
        );
        assert_eq!(again.routes, twice.routes);
    }

    #[test]
    fn an_address_claimed_twice_is_shared_and_never_cached() {
        let mut second = se(Resolution::None, &["127.9.0.1"], vec![]);
        second.name = "second".into();
        second.hosts = vec!["second.test".into()];
        let built = build(
            &set(vec![se(Resolution::None, &["127.9.0.1"], vec![]), second]),
            &DnsAnswers::new(),
        );
        assert_eq!(built.routes.len(), 1);
        assert_eq!(built.routes[0].value.service_id, 0);
        assert_ne!(built.routes[0].value.flags & SERVICE_F_SHARED, 0);
        assert!(built.table.is_shared(0) && built.table.is_shared(1));
        assert_eq!(
            built.table.by_host(0, "SECOND.test:80").map(|s| s.id),
            Some(1),
            "Host picks the sibling"
        );
        assert_eq!(built.table.by_host(0, "unknown.test").map(|s| s.id), None);
        assert!(
            built.warnings[0].contains("shared by ServiceEntries default/httpbin, default/second")
        );
    }

    #[test]
    fn a_dynamic_dns_entry_is_captured_by_its_vip_and_resolves_per_request() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: wild}\n\
                    spec:\n  hosts: ['*.wild.test']\n  ports: [{number: 80, protocol: HTTP, name: http}]\n  \
                    resolution: DYNAMIC_DNS\n";
        let config = crate::config::parse_str(std::path::Path::new("w.yaml"), yaml).expect("valid");
        let built = build(&config, &DnsAnswers::new());
        assert!(built.warnings.is_empty(), "{:?}", built.warnings);
        let service = built.table.get(0).expect("one service");
        assert_eq!(service.upstream, Upstream::DynamicDns);
        assert_eq!(service.addresses.len(), 1);
        assert!(
            service.addresses[0]
                .addr
                .to_string()
                .starts_with("240.240.")
        );
        assert_eq!(
            built.routes.len(),
            1,
            "the VIP is in the kernel's service map"
        );
        assert!(
            !dns_hosts(&config).contains("*.wild.test"),
            "wildcards are never resolved"
        );

        let opted_out = yaml.replace(
            "metadata: {name: wild}",
            "metadata: {name: wild, labels: {networking.istio.io/enable-autoallocate-ip: 'false'}}",
        );
        let config =
            crate::config::parse_str(std::path::Path::new("w.yaml"), &opted_out).expect("valid");
        let built = build(&config, &DnsAnswers::new());
        assert!(built.routes.is_empty());
        assert!(
            built
                .warnings
                .iter()
                .any(|w| w.contains("DYNAMIC_DNS without a VIP")),
            "{:?}",
            built.warnings
        );
    }
}
