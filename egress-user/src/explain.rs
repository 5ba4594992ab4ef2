//! `egress explain`: what the waypoint would decide for one request, without running anything.
//! The same engine, the same config loader, the same normalization as the running waypoint.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use thiserror::Error;

use crate::{
    config::ConfigSet,
    identity::Principal,
    model::{self, DnsAnswers, Service, ServiceTable},
    policy::{Decision, NormalizeError, PathParameters, PolicySet, is_miscased_method},
    proxy::phases::{self, Caller, TargetRefused},
};

#[derive(Debug, Error)]
pub enum ExplainError {
    #[error("invalid --url {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("invalid header {header:?}: expected 'Name: value'")]
    Header { header: String },
    #[error(
        "method {method:?} is a registered method in another case; the waypoint refuses it with \
         400 (methods are case-sensitive, and upstreams that fold case would run it)"
    )]
    MiscasedMethod { method: String },
    #[error("the path of {url:?} cannot be normalized safely ({source}); the waypoint answers 400")]
    Path {
        url: String,
        #[source]
        source: NormalizeError,
    },
    #[error(
        "no ServiceEntry port matches {host}:{port}; the request would not be captured by the waypoint (it goes direct, or is refused in REGISTRY_ONLY mode)"
    )]
    NoService { host: String, port: u16 },
    #[error(
        "ServiceEntry {service} has resolution DYNAMIC_DNS and {why}: the waypoint answers 404 \
         route_not_found"
    )]
    RouteNotFound { service: String, why: String },
}

/// What the waypoint would do.
pub struct Explanation {
    /// When the URL names a host: the configured host it matched and the addresses the DNS
    /// proxy answers for it (a VIP, or `addresses`).
    pub name: Option<crate::dnsproxy::NameMatch>,
    pub service: Arc<Service>,
    /// DYNAMIC_DNS: the name the waypoint resolves and connects to.
    pub dynamic_name: Option<String>,
    pub principal: Option<Principal>,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub decision: Decision,
}

/// The request to explain, as given on the command line.
pub struct Request<'a> {
    pub url: &'a str,
    pub method: &'a str,
    pub headers: &'a [String],
    pub principal: Option<Principal>,
    pub path_parameters: PathParameters,
}

/// The destination an application that dials `host` connects to, as the kernel then routes
/// it: an IP literal is that address; a name is what the DNS proxy answers for it in the
/// captured cgroup (a VIP or the ServiceEntry's `addresses`; an exact host before the longest
/// wildcard), else the first configured address of the ServiceEntry that has it as a host
/// (exact before wildcard). `Dialled::Service` when that ServiceEntry has no configured address
/// (its addresses come from DNS, unknown here): the kernel would have routed the resolved
/// address to that ServiceEntry itself.
fn destination(
    table: &ServiceTable,
    host: &str,
    port: u16,
) -> Result<(Dialled, Option<crate::dnsproxy::NameMatch>), ()> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((Dialled::Address(SocketAddr::new(ip, port)), None));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if let Some(found) = table.dns_names.lookup(&host)
        && let Some(addr) = found.addrs.first()
    {
        let dst = SocketAddr::new(IpAddr::V4(*addr), port);
        return Ok((Dialled::Address(dst), Some(found)));
    }
    let by_name = |exact: bool| {
        table.iter().find(|s| {
            s.port == port
                && s.hosts.iter().any(|h| {
                    let h = h.trim_end_matches('.');
                    h.starts_with('*') != exact && phases::host_matches(h, &host)
                })
        })
    };
    let service = by_name(true).or_else(|| by_name(false)).ok_or(())?;
    Ok((
        match service.addresses.first() {
            Some(net) => Dialled::Address(SocketAddr::new(net.addr, port)),
            None => Dialled::Service(service.clone()),
        },
        None,
    ))
}

enum Dialled {
    Address(SocketAddr),
    /// A ServiceEntry whose addresses only DNS knows.
    Service(Arc<Service>),
}

pub fn explain(
    config: &ConfigSet,
    root_namespace: &str,
    request: &Request<'_>,
) -> Result<Explanation, ExplainError> {
    let url_err = |why: &str| ExplainError::Url {
        url: request.url.to_owned(),
        why: why.to_owned(),
    };
    let uri: Uri = request
        .url
        .parse()
        .map_err(|e: http::uri::InvalidUri| url_err(&e.to_string()))?;
    let host = uri.host().ok_or_else(|| url_err("no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = match (uri.port_u16(), uri.scheme_str()) {
        (Some(p), _) => p,
        (None, Some("https")) => 443,
        (None, Some("http") | None) => 80,
        (None, Some(_)) => return Err(url_err("scheme must be http or https")),
    };
    let mut headers = HeaderMap::new();
    for h in request.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| ExplainError::Header { header: h.clone() })?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| ExplainError::Header { header: h.clone() })?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| ExplainError::Header { header: h.clone() })?;
        headers.append(name, value);
    }
    let authority = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    // What the waypoint drops before it authorizes is dropped here too.
    phases::clean_headers(&mut headers);

    // Route as the kernel and the waypoint do: the longest prefix on the port, then the Host
    // among ServiceEntries sharing the address.
    let built = model::build(config, &DnsAnswers::new());
    let table = built.table;
    let no_service = || ExplainError::NoService {
        host: host.to_owned(),
        port,
    };
    let (dialled, name) = destination(&table, host, port).map_err(|()| no_service())?;
    let (route, destination_ip) = match dialled {
        Dialled::Address(dst) => (
            phases::route_destination(&table, dst, Some(&authority)),
            Some(dst.ip()),
        ),
        Dialled::Service(service) => (phases::route(&table, &service, Some(&authority)), None),
    };
    let service = route.ok_or_else(no_service)?.service;
    let dynamic_name = match service.upstream {
        model::Upstream::DynamicDns => {
            let named = (!authority.is_empty()).then_some(authority.as_str());
            let name = phases::dynamic_name(&service, named).map_err(|why| {
                ExplainError::RouteNotFound {
                    service: format!("{}/{}", service.namespace, service.name),
                    why: why.to_string(),
                }
            })?;
            Some(name)
        }
        _ => None,
    };

    if service.protocol.is_http() && is_miscased_method(request.method.as_bytes()) {
        return Err(ExplainError::MiscasedMethod {
            method: request.method.to_owned(),
        });
    }
    let raw_target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let normalized =
        phases::request_target(raw_target, request.path_parameters).map_err(|refused| {
            ExplainError::Path {
                url: request.url.to_owned(),
                source: match refused {
                    TargetRefused::Normalization(e) | TargetRefused::PathParameter(e) => e,
                },
            }
        })?;

    let policies = PolicySet::new(&config.authorization_policies, root_namespace);
    let http = phases::HttpRequest {
        method: request.method,
        host: &authority,
        path: normalized.matched_path(),
        headers: &headers,
    };
    let caller = Caller {
        principal: request.principal.as_ref(),
        source_ip: None,
        destination_ip,
    };
    let decision = phases::authorize(
        &policies,
        &service,
        &caller,
        service.protocol.is_http().then_some(&http),
        None,
    );
    Ok(Explanation {
        name,
        service,
        dynamic_name,
        principal: request.principal.clone(),
        method: request.method.to_owned(),
        authority,
        path: normalized.matched_path().to_owned(),
        decision,
    })
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.service;
        let d = &self.decision;
        if let Some(name) = &self.name {
            let addrs: Vec<String> = name.addrs.iter().map(ToString::to_string).collect();
            writeln!(
                f,
                "name:         answered {} by the DNS proxy ({} ServiceEntry host {})",
                addrs.join(", "),
                if name.wildcard { "wildcard" } else { "exact" },
                name.host
            )?;
        }
        writeln!(
            f,
            "service:      ServiceEntry {}/{} port {} ({}), cluster {}",
            s.namespace,
            s.name,
            s.port,
            s.protocol,
            s.cluster_name()
        )?;
        if let Some(name) = &self.dynamic_name {
            writeln!(
                f,
                "upstream:     what {name} resolves to, port {} (DYNAMIC_DNS; never the address dialled)",
                s.upstream_port
            )?;
        }
        match &self.principal {
            Some(p) => writeln!(f, "principal:    {p}")?,
            None => writeln!(f, "principal:    none (a peer without identity)")?,
        }
        if s.protocol.is_http() {
            writeln!(
                f,
                "request:      {} {} (authority {:?})",
                self.method, self.path, self.authority
            )?;
        } else {
            writeln!(
                f,
                "connection:   {} port: authorized at L4 (HTTP rules do not apply)",
                s.protocol
            )?;
        }
        if d.allowed {
            writeln!(f, "verdict:      ALLOW")?;
        } else {
            writeln!(f, "verdict:      DENY (403 RBAC: access denied)")?;
        }
        let why = match (&d.policy, d.allowed) {
            (Some(_), _) => d.matched_policy(),
            (None, true) => {
                "no ALLOW policy applies to this ServiceEntry (allowed by default)".into()
            }
            (None, false) => "no ALLOW rule matched (none)".into(),
        };
        writeln!(f, "decided by:   {why}")?;
        if let Some(details) = d.denied_details() {
            writeln!(f, "log details:  {details}")?;
        }
        writeln!(
            f,
            "l4-decidable: {}",
            if d.l4_decidable {
                "yes (identity, ServiceEntry and port alone decide it)"
            } else {
                "no (HTTP attributes or addresses can change it)"
            }
        )?;
        if let Some(audit) = &d.audit {
            writeln!(f, "audit:        {audit}")?;
        }
        for m in &d.dry_run_matches {
            writeln!(
                f,
                "dry-run:      {} would match ({:?})",
                m.matched, m.action
            )?;
        }
        if let Some(allowed) = d.dry_run_allowed {
            writeln!(
                f,
                "dry-run verdict: {}",
                if allowed { "ALLOW" } else { "DENY" }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const SEED: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin.org, namespace: default}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: default}
spec:
  targetRefs:
  - {kind: ServiceEntry, group: networking.istio.io, name: httpbin.org}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    to: [{operation: {methods: [GET], paths: [/get]}}]
  - from: [{source: {principals: [cluster.local/ns/default/sa/admin]}}]
";

    fn run(sa: &str, method: &str, url: &str) -> Explanation {
        let config = crate::config::parse_str(Path::new("seed.yaml"), SEED).expect("seed parses");
        explain(
            &config,
            "istio-system",
            &Request {
                url,
                method,
                headers: &[],
                principal: Some(Principal::new("cluster.local", "default", sa)),
                path_parameters: PathParameters::Reject,
            },
        )
        .expect("explained")
    }

    #[test]
    fn the_seed_walkthrough() {
        let get = run("sleep", "GET", "http://httpbin.org/get");
        assert!(get.decision.allowed);
        assert_eq!(
            get.decision.matched_policy(),
            "ns[default]-policy[httpbin]-rule[0]"
        );
        let post = run("sleep", "POST", "http://httpbin.org/post");
        assert!(!post.decision.allowed);
        assert!(
            post.to_string()
                .contains("rbac_access_denied_matched_policy[none]")
        );
        assert!(!post.decision.l4_decidable, "methods decide it");
        let admin = run("admin", "POST", "http://httpbin.org/post");
        assert!(admin.decision.allowed);
        assert!(admin.decision.l4_decidable);
    }

    #[test]
    fn unknown_hosts_and_bad_urls_are_named() {
        let config = crate::config::parse_str(Path::new("seed.yaml"), SEED).expect("seed parses");
        let req = |url| Request {
            url,
            method: "GET",
            headers: &[],
            principal: None,
            path_parameters: PathParameters::Reject,
        };
        let err = explain(&config, "istio-system", &req("http://example.com/")).err();
        assert!(matches!(err, Some(ExplainError::NoService { .. })));
        let err = explain(&config, "istio-system", &req("ftp://httpbin.org/")).err();
        assert!(matches!(err, Some(ExplainError::Url { .. })));
    }

    /// The adversarial pass's bypasses are refused here as the waypoint refuses them.
    #[test]
    fn miscased_methods_and_path_parameters_are_refused_as_the_waypoint_does() {
        let config = crate::config::parse_str(Path::new("seed.yaml"), SEED).expect("seed parses");
        let principal = Some(Principal::new("cluster.local", "default", "sleep"));
        let ask = |method, url, path_parameters| {
            explain(
                &config,
                "istio-system",
                &Request {
                    url,
                    method,
                    headers: &[],
                    principal: principal.clone(),
                    path_parameters,
                },
            )
        };
        let err = ask("get", "http://httpbin.org/get", PathParameters::Reject).err();
        assert!(matches!(err, Some(ExplainError::MiscasedMethod { .. })));
        let err = ask("GET", "http://httpbin.org/get;x", PathParameters::Reject).err();
        assert!(matches!(err, Some(ExplainError::Path { .. })), "{err:?}");
        // Allowed, the parameter is not part of what is matched: /get;x is /get.
        let allowed = ask("GET", "http://httpbin.org/get;x", PathParameters::Allow).expect("ok");
        assert!(allowed.decision.allowed);
        assert_eq!(allowed.path, "/get");
    }

    const WILD: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: default}
spec:
  hosts: ['*.wild.test']
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: tls, protocol: TLS}]
  resolution: DYNAMIC_DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: exact, namespace: default}
spec:
  hosts: [exact.wild.test]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-a, namespace: default}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: wild}]
  action: ALLOW
  rules: [{to: [{operation: {hosts: [a.wild.test]}}]}]
";

    #[test]
    fn a_host_name_says_its_vip_and_service_entry_exact_or_by_wildcard() {
        let config = crate::config::parse_str(Path::new("wild.yaml"), WILD).expect("parses");
        let ask = |url, headers: &[String]| {
            explain(
                &config,
                "istio-system",
                &Request {
                    url,
                    method: "GET",
                    headers,
                    principal: None,
                    path_parameters: PathParameters::Reject,
                },
            )
        };
        let vip_of = |name: &str| {
            let built = model::build(&config, &DnsAnswers::new());
            built.table.dns_names.lookup(name).expect("answered").addrs
        };
        let a = ask("http://a.wild.test/", &[]).expect("explained");
        assert_eq!(a.service.name, "wild");
        let name = a.name.as_ref().expect("a name");
        assert!(name.wildcard);
        assert_eq!(name.host, "*.wild.test");
        assert_eq!(
            name.addrs,
            vip_of("x.y.wild.test"),
            "one VIP per wildcard host"
        );
        assert!(name.addrs[0].octets()[..2] == [240, 240]);
        assert_eq!(a.dynamic_name.as_deref(), Some("a.wild.test"));
        assert!(a.decision.allowed);
        let text = a.to_string();
        assert!(
            text.contains(&format!(
                "name:         answered {} by the DNS proxy (wildcard ServiceEntry host *.wild.test)",
                name.addrs[0]
            )),
            "{text}"
        );
        assert!(
            text.contains("upstream:     what a.wild.test resolves to, port 80"),
            "{text}"
        );

        // Authorization sees the concrete name: b is not allowed.
        let b = ask("b.wild.test", &[]).expect("a bare host name is accepted");
        assert_eq!(b.service.name, "wild");
        assert!(!b.decision.allowed);
        // Host a.wild.test on b's name: the same VIP, and a's name is what is resolved.
        let on_b = ask("http://b.wild.test/", &["Host: a.wild.test".into()]).expect("ok");
        assert_eq!(on_b.dynamic_name.as_deref(), Some("a.wild.test"));
        assert!(on_b.decision.allowed);

        // The exact host beats the wildcard and has its own VIP.
        let exact = ask("http://exact.wild.test/", &[]).expect("explained");
        assert_eq!(exact.service.name, "exact");
        let name = exact.name.as_ref().expect("a name");
        assert!(!name.wildcard);
        assert_ne!(name.addrs, vip_of("a.wild.test"));
        assert!(
            exact
                .to_string()
                .contains("(exact ServiceEntry host exact.wild.test)")
        );

        // A Host under none of the wildcards: no route.
        let err = ask("http://a.wild.test/", &["Host: evil.test".into()]).err();
        assert!(
            matches!(err, Some(ExplainError::RouteNotFound { .. })),
            "{:?}",
            err.map(|e| e.to_string())
        );
        // The TLS port: the server name is the URL's host.
        let tls = ask("https://a.wild.test:443/", &[]).expect("explained");
        assert_eq!(tls.service.port, 443);
        assert_eq!(tls.dynamic_name.as_deref(), Some("a.wild.test"));
        // Names outside every ServiceEntry are still not captured.
        let err = ask("http://wild.test/", &[]).err();
        assert!(matches!(err, Some(ExplainError::NoService { .. })));
    }
}
