//! `egress explain` and the waypoint agree on where a request goes: a table of routing cases
//! (shared addresses chosen by Host, nested CIDRs, ports, wildcard hosts), each asked of
//! `explain` and sent through a real in-process waypoint whose "kernel" routed the connection
//! as the kernel's service map does (longest prefix on the port).
use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use super::*;
use crate::{
    explain::{self, Explanation},
    model::{DnsAnswers, build},
    policy::PathParameters,
};

/// Every ServiceEntry is denied by a policy named after it, so the deny's details name the
/// ServiceEntry the request was routed to.
const CONFIG: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wide, namespace: default}
spec:
  hosts: [wide.test]
  addresses: [198.18.0.0/16]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: narrow, namespace: default}
spec:
  hosts: [narrow.test]
  addresses: [198.18.4.0/24]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 8080, name: alt, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: single, namespace: default}
spec:
  hosts: [single.test]
  addresses: [198.18.4.4]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shared-a, namespace: default}
spec:
  hosts: [a.shared.test]
  addresses: [198.19.0.10]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shared-b, namespace: default}
spec:
  hosts: [b.shared.test]
  addresses: [198.19.0.10]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: default}
spec:
  hosts: ['*.wild.test']
  addresses: [198.19.7.0/24]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dyn, namespace: default}
spec:
  hosts: ['*.dyn.test']
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DYNAMIC_DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: deep-dyn, namespace: default}
spec:
  hosts: ['*.deep.dyn.test']
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DYNAMIC_DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: exact-dyn, namespace: default}
spec:
  hosts: [exact.dyn.test]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
";

fn deny_policies() -> String {
    [
        "wide",
        "narrow",
        "single",
        "shared-a",
        "shared-b",
        "wild",
        "dyn",
        "deep-dyn",
        "exact-dyn",
    ]
    .iter()
    .map(|se| {
        format!(
            "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-{se}, namespace: default}}
spec:
  targetRefs: [{{kind: ServiceEntry, group: networking.istio.io, name: {se}}}]
  action: DENY
  rules: [{{}}]
"
        )
    })
    .collect()
}

/// A DYNAMIC_DNS request whose Host matches none of the wildcards: no route (404 NR).
const NO_ROUTE: &str = "404";

/// (url as the app dials it, Host header, the ServiceEntry it must reach, "" for none,
/// [`NO_ROUTE`] for a 404). A name resolves as the DNS proxy answers it in the captured cgroup.
const CASES: &[(&str, &str, &str)] = &[
    // Nested CIDRs: the longest prefix wins, whatever the order of the ServiceEntries.
    ("http://198.18.9.9/", "x.test", "wide"),
    ("http://198.18.4.9/", "x.test", "narrow"),
    ("http://198.18.4.4/", "x.test", "single"),
    // A CIDR matches only its own ports.
    ("http://198.18.4.9:8080/", "x.test", "narrow"),
    ("http://198.18.9.9:8080/", "x.test", ""),
    // A shared address: the Host says which ServiceEntry; one naming neither stays with the
    // kernel's (the first claimant).
    ("http://198.19.0.10/", "b.shared.test", "shared-b"),
    ("http://198.19.0.10/", "B.Shared.Test.:80", "shared-b"),
    ("http://198.19.0.10/", "a.shared.test", "shared-a"),
    ("http://198.19.0.10/", "other.test", "shared-a"),
    // By name: the app resolves the name to its ServiceEntry's address.
    ("http://b.shared.test/", "b.shared.test", "shared-b"),
    ("http://single.test/", "single.test", "single"),
    // A Host naming another ServiceEntry does not move a request off an unshared address.
    ("http://198.18.4.4/", "wide.test", "single"),
    // Wildcard hosts.
    ("http://198.19.7.1/", "api.wild.test", "wild"),
    ("http://api.wild.test/", "api.wild.test", "wild"),
    // DYNAMIC_DNS: any name below the wildcard, one label or more, answers its VIP; an exact
    // host beats the wildcard, the longer wildcard the shorter.
    ("http://a.dyn.test/", "a.dyn.test", "dyn"),
    ("http://x.y.dyn.test/", "x.y.dyn.test", "dyn"),
    ("http://a.deep.dyn.test/", "a.deep.dyn.test", "deep-dyn"),
    ("http://exact.dyn.test/", "exact.dyn.test", "exact-dyn"),
    // On the wildcard's VIP the Host names the destination: another name under it is the
    // same ServiceEntry, a name under none of its wildcards has no route.
    ("http://a.dyn.test/", "b.dyn.test", "dyn"),
    ("http://a.dyn.test/", "evil.test", NO_ROUTE),
    ("http://a.dyn.test/", "a.dyn.test.evil.test", NO_ROUTE),
    // The exact host's VIP is not the wildcard's: a Host under the wildcard stays there.
    ("http://exact.dyn.test/", "a.dyn.test", "exact-dyn"),
];

fn explained(
    config: &crate::config::ConfigSet,
    url: &str,
    host: &str,
) -> Result<Explanation, explain::ExplainError> {
    let headers = [format!("Host: {host}")];
    explain::explain(
        config,
        "istio-system",
        &explain::Request {
            url,
            method: "GET",
            headers: &headers,
            principal: Some(Principal::new("cluster.local", "default", "sleep")),
            path_parameters: PathParameters::Reject,
        },
    )
}

#[tokio::test]
async fn explain_and_the_waypoint_route_every_case_alike() {
    let yaml = format!("{CONFIG}{}", deny_policies());
    let config = parse_str(Path::new("routing.yaml"), &yaml).expect("config parses");
    let built = build(&config, &DnsAnswers::new());
    let table = built.table.with_policies(
        Arc::new(PolicySet::new(
            &config.authorization_policies,
            "istio-system",
        )),
        1,
    );
    let dp = Dataplane::with_table(
        table.clone(),
        WaypointConfig::default(),
        AccessLogFormat::Text,
    )
    .await;

    let mut sent = 0;
    for (url, host, expected) in CASES {
        let explanation = explained(&config, url, host);
        let explained_se = match &explanation {
            Ok(e) => e.service.name.as_str(),
            Err(explain::ExplainError::RouteNotFound { .. }) => NO_ROUTE,
            Err(_) => "",
        };
        assert_eq!(explained_se, *expected, "explain: {url} Host {host}");
        let explanation = explanation.ok();

        // The waypoint: the kernel routes by address (the app resolved a name to the
        // address `explain` chose), then the waypoint by Host.
        let uri: ::http::Uri = url.parse().expect("url");
        let port = uri.port_u16().unwrap_or(80);
        let ip: IpAddr = match uri.host().and_then(|h| h.parse().ok()) {
            Some(ip) => ip,
            None => table
                .dns_names
                .lookup(uri.host().expect("a host"))
                .and_then(|found| found.addrs.first().copied().map(IpAddr::V4))
                .or_else(|| {
                    explanation
                        .as_ref()
                        .and_then(|e| e.service.addresses.first())
                        .map(|net| net.addr)
                })
                .expect("a name case resolves to its ServiceEntry's address"),
        };
        let IpAddr::V4(v4) = ip else {
            panic!("IPv4 cases only")
        };
        let dst = SocketAddrV4::new(v4, port);
        let Some(kernel) = table.route(SocketAddr::V4(dst)) else {
            assert_eq!(*expected, "", "{url}: the kernel routes it nowhere");
            continue;
        };
        let mut stream = dp.connect_to(CGROUP_SLEEP, dst, kernel).await;
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let response = raw_exchange(&mut stream, request.as_bytes()).await;
        sent += 1;
        let lines = dp.log_lines(sent).await;
        let line = lines.last().expect("a line");
        if *expected == NO_ROUTE {
            assert!(response.starts_with("HTTP/1.1 404 "), "{url}: {response}");
            assert!(
                line.contains(" 404 NR route_not_found "),
                "{url} Host {host}: {line}"
            );
            continue;
        }
        assert!(response.starts_with("HTTP/1.1 403 "), "{url}: {response}");
        let details = explanation
            .expect("explained")
            .decision
            .denied_details()
            .expect("denied");
        assert_eq!(
            details,
            format!(
                "rbac_access_denied_matched_policy[ns[default]-policy[deny-{expected}]-rule[0]]"
            )
        );
        assert!(
            line.contains(&format!(" {details} ")),
            "{url} Host {host}: the waypoint routed elsewhere than explain: {line}"
        );
    }
}
