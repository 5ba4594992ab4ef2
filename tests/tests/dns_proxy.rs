//! DNS capture and the DNS proxy (design §11), host mode: the seed's host-only ServiceEntry
//! (`hosts: [httpbin.org]`, `resolution: DNS`, no addresses) resolves to a 240.240.x.y VIP in
//! the captured cgroup, so every connect to the name is captured, whatever the resolver says.
//!
//! Real parts: dnsmasq on a loopback address as the upstream resolver, the stand-in for
//! httpbin.org on port 80 of another loopback address, curl through glibc, `dig`, Python's
//! getaddrinfo. Each client runs in its own mount namespace whose /etc/resolv.conf names the
//! test's resolver (`unshare -m` + a bind mount), so nothing on the machine is changed.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
};

use egress_tests::*;

/// Addresses of this file only (loopback): resolvers at port 53, stand-ins at port 80. Tests
/// run in parallel, so each test has its own (two binding one address:port collide).
const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 63, 1);
const ROTATING_RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 63, 2);
const REGISTRY_RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 63, 5);
const TRUNCATING_RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 63, 6);
const ROTATING_A: Ipv4Addr = Ipv4Addr::new(127, 0, 66, 1);
const ROTATING_B: Ipv4Addr = Ipv4Addr::new(127, 0, 66, 2);
const REGISTRY_STAND_IN: Ipv4Addr = Ipv4Addr::new(127, 0, 67, 1);
const REGISTRY_OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 67, 9);
const SILENT_RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 63, 3);
const STAND_IN: Ipv4Addr = Ipv4Addr::new(127, 0, 64, 1);
const OTHER_NAME_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 64, 9);

const SEED_SERVICE_ENTRY: &str = include_str!("../../examples/httpbin.yaml");
const SEED_POLICY: &str = include_str!("../../examples/httpbin-authz.yaml");

/// `PROGRAM ARGS...` as `workload` would run it, inside a new mount namespace where
/// /etc/resolv.conf is `resolv_conf`.
fn with_resolv_conf(workload: Command, resolv_conf: &Path) -> Command {
    let mut command = Command::new("unshare");
    command
        .args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
        .arg(resolv_conf)
        .arg(workload.get_program())
        .args(workload.get_args());
    if let Some(dir) = workload.get_current_dir() {
        command.current_dir(dir);
    }
    command
}

fn run_in(dp: &Dataplane, resolv_conf: &Path, program: &str, args: &[&str]) -> Output {
    let workload = dp.exec("default", "sleep").command(program, args);
    run_bounded(
        &mut with_resolv_conf(workload, resolv_conf),
        std::time::Duration::from_secs(30),
    )
}

fn curl_in(dp: &Dataplane, resolv_conf: &Path, args: &[&str]) -> Output {
    let mut all = vec!["-sS", "-i", "--connect-timeout", "5", "--max-time", "20"];
    all.extend_from_slice(args);
    run_in(dp, resolv_conf, "curl", &all)
}

/// `dig +short`-like: the A records of the answer and the server line.
fn dig_in(dp: &Dataplane, resolv_conf: &Path, args: &[&str]) -> Output {
    let mut all = vec!["+time=8", "+tries=1"];
    all.extend_from_slice(args);
    run_in(dp, resolv_conf, "dig", &all)
}

fn seed_dataplane(resolver: &Resolver) -> Dataplane {
    Dataplane::builder()
        .service_entry(SEED_SERVICE_ENTRY)
        .config(SEED_POLICY)
        .args(&["--resolv-conf", &resolver.resolv_conf().to_string_lossy()])
        .start()
}

fn is_vip(ip: &str) -> bool {
    ip.starts_with("240.240.")
}

#[test]
fn the_seed_host_only_service_entry_resolves_to_a_vip_and_is_proxied() {
    if !require_privileges() || !require_tools(&["dnsmasq", "dig", "unshare"]) {
        return;
    }
    let upstream = Upstream::http_at(SocketAddr::from((STAND_IN, 80)));
    let resolver = Resolver::dnsmasq(
        RESOLVER,
        &[("httpbin.org", STAND_IN), ("other.test", OTHER_NAME_IP)],
    );
    let dp = seed_dataplane(&resolver);
    let conf = resolver.resolv_conf();

    // dig sees a VIP, from the resolver it asked, authoritative, TTL 30.
    let out = dig_in(&dp, &conf, &["httpbin.org", "A"]).expect_success("dig httpbin.org");
    let text = out.stdout.clone();
    assert!(text.contains("status: NOERROR"), "{text}");
    assert!(text.contains(&format!("SERVER: {RESOLVER}#53")), "{text}");
    let answer = text
        .lines()
        .find(|l| l.starts_with("httpbin.org.") && l.contains("\tA\t"))
        .unwrap_or_else(|| panic!("an A record for httpbin.org: {text}"));
    let vip = answer.split_whitespace().last().expect("an address");
    assert!(is_vip(vip), "{answer}");
    assert!(answer.contains("\t30\t"), "TTL 30: {answer}");
    // AAAA: NOERROR without records (never a real address that would go direct).
    let out = dig_in(&dp, &conf, &["httpbin.org", "AAAA"]).expect_success("dig AAAA");
    assert!(out.stdout.contains("status: NOERROR"), "{out:?}");
    assert!(out.stdout.contains("ANSWER: 0"), "{out:?}");

    // A name that is no ServiceEntry host resolves as without the dataplane, over UDP and TCP.
    for transport in ["+notcp", "+tcp"] {
        let out = dig_in(&dp, &conf, &[transport, "+short", "other.test"])
            .expect_success("dig other.test");
        assert_eq!(out.stdout.trim(), OTHER_NAME_IP.to_string(), "{transport}");
    }
    let out = dig_in(&dp, &conf, &["+tcp", "+short", "httpbin.org"]).expect_success("dig +tcp");
    assert_eq!(out.stdout.trim(), vip, "TCP answers the same VIP");
    // A search-list expansion of the host is not hijacked.
    let out = dig_in(&dp, &conf, &["httpbin.org.default.svc.cluster.local"])
        .expect_success("dig an expansion");
    assert!(!out.stdout.contains("240.240."), "{out:?}");

    // curl through glibc: the VIP is captured and proxied to what the resolver names.
    let out = curl_in(&dp, &conf, &["http://httpbin.org/get"]);
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    assert_eq!(out.header("via").as_deref(), Some("1.1 egress-waypoint"));
    let out = curl_in(&dp, &conf, &["-X", "POST", "http://httpbin.org/post"]);
    assert_eq!(out.http_status(), Some(403), "{out:?}");
    assert_eq!(
        upstream.hits().len(),
        1,
        "only the allowed GET went upstream"
    );
    let line = dp.access_log_line("/get");
    assert!(line.contains(&format!("\"{STAND_IN}:80\"")), "{line}");

    // Python's getaddrinfo sees the VIP too.
    let out = run_in(
        &dp,
        &conf,
        "python3",
        &[
            "-c",
            "import socket; print(socket.getaddrinfo('httpbin.org', 80, socket.AF_INET)[0][4][0])",
        ],
    )
    .expect_success("getaddrinfo");
    assert!(is_vip(out.stdout.trim()), "{out:?}");

    assert!(dp.bpf_counter("dns_redirected") > 0);
    assert!(dp.bpf_counter("dns_reply_restored") > 0);
    assert!(
        dp.metrics()
            .contains("egress_dns_requests_total{type=\"A\",rcode=\"NOERROR\"}"),
        "{}",
        dp.metrics()
    );

    // Outside the captured cgroup, DNS is untouched: the real answer from the resolver.
    let out = run_bounded(
        Command::new("dig").args([
            "+time=3",
            "+tries=1",
            "+short",
            &format!("@{RESOLVER}"),
            "httpbin.org",
        ]),
        std::time::Duration::from_secs(10),
    );
    assert_eq!(out.stdout.trim(), STAND_IN.to_string(), "{out:?}");
}

#[test]
fn a_resolver_that_rotates_its_answers_never_lets_a_connect_go_direct() {
    if !require_privileges() || !require_tools(&["dnsmasq", "dig", "unshare"]) {
        return;
    }
    let first = Upstream::http_at(SocketAddr::from((ROTATING_A, 80)));
    let second = Upstream::http_at(SocketAddr::from((ROTATING_B, 80)));
    let resolver = Resolver::dnsmasq(ROTATING_RESOLVER, &[("httpbin.org", ROTATING_A)]);
    let dp = seed_dataplane(&resolver);
    let conf = resolver.resolv_conf();
    for i in 0..4 {
        let ip = if i % 2 == 0 { ROTATING_A } else { ROTATING_B };
        resolver.set_hosts(&[("httpbin.org", ip)]);
        let out = curl_in(&dp, &conf, &["http://httpbin.org/get"]);
        assert_eq!(out.http_status(), Some(200), "curl {i}: {out:?}");
        assert_eq!(
            out.header("via").as_deref(),
            Some("1.1 egress-waypoint"),
            "curl {i} was captured: {out:?}"
        );
    }
    let hits: Vec<_> = first.hits().into_iter().chain(second.hits()).collect();
    assert_eq!(hits.len(), 4, "every curl reached a stand-in");
    assert_eq!(
        dp.access_log_lines_at_least(4).len(),
        4,
        "all four went through the waypoint"
    );
}

#[test]
fn a_resolver_failure_reaches_the_client_as_servfail() {
    if !require_privileges() || !require_tools(&["dig", "unshare"]) {
        return;
    }
    let silent = SilentResolver::on(SILENT_RESOLVER);
    let dp = Dataplane::builder()
        .service_entry(SEED_SERVICE_ENTRY)
        .args(&["--resolv-conf", &silent.resolv_conf().to_string_lossy()])
        .start();
    let out = dig_in(&dp, &silent.resolv_conf(), &["name.test"]);
    assert!(out.stdout.contains("status: SERVFAIL"), "{out:?}");
    // The ServiceEntry host is still answered: the dataplane needs no resolver for it.
    let out = dig_in(&dp, &silent.resolv_conf(), &["+short", "httpbin.org"])
        .expect_success("dig httpbin.org");
    assert!(is_vip(out.stdout.trim()), "{out:?}");
}

#[test]
fn with_registry_only_names_resolve_and_only_service_entry_traffic_leaves() {
    if !require_privileges() || !require_tools(&["dnsmasq", "dig", "unshare"]) {
        return;
    }
    let upstream = Upstream::http_at(SocketAddr::from((REGISTRY_STAND_IN, 80)));
    let other = Upstream::http_at(SocketAddr::from((REGISTRY_OTHER, 80)));
    let resolver = Resolver::dnsmasq(
        REGISTRY_RESOLVER,
        &[
            ("httpbin.org", REGISTRY_STAND_IN),
            ("other.test", REGISTRY_OTHER),
        ],
    );
    // Loopback is allowed by default; allow only the resolver so the other stand-in is not.
    let dp = Dataplane::builder()
        .service_entry(SEED_SERVICE_ENTRY)
        .config(SEED_POLICY)
        .args(&[
            "--resolv-conf",
            &resolver.resolv_conf().to_string_lossy(),
            "--outbound-policy",
            "registry-only",
            "--allow-cidr",
            &format!("{REGISTRY_RESOLVER}/32"),
        ])
        .start();
    let conf = resolver.resolv_conf();
    let out = dig_in(&dp, &conf, &["+short", "other.test"]).expect_success("dig other.test");
    assert_eq!(out.stdout.trim(), REGISTRY_OTHER.to_string());
    let out = curl_in(&dp, &conf, &["http://httpbin.org/get"]);
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    let out = curl_in(&dp, &conf, &["http://other.test/"]);
    assert_ne!(out.http_status(), Some(200), "{out:?}");
    assert!(
        other.hits().is_empty(),
        "nothing reached the non-ServiceEntry name"
    );
    assert_eq!(upstream.hits().len(), 1);
}

#[test]
fn a_truncated_udp_answer_is_retried_over_tcp_and_arrives_whole() {
    if !require_privileges() || !require_tools(&["dnsmasq", "dig", "unshare"]) {
        return;
    }
    // Sixty A records do not fit a 512-byte UDP answer: dnsmasq sets TC, dig asks again over
    // TCP, and both exchanges go through the proxy.
    let ips: Vec<Ipv4Addr> = (1..=60).map(|i| Ipv4Addr::new(127, 0, 70, i)).collect();
    let hosts: Vec<(&str, Ipv4Addr)> = ips.iter().map(|ip| ("big.test", *ip)).collect();
    let resolver = Resolver::dnsmasq(TRUNCATING_RESOLVER, &hosts);
    let dp = seed_dataplane(&resolver);
    let out = dig_in(&dp, &resolver.resolv_conf(), &["+noedns", "big.test"])
        .expect_success("dig big.test");
    assert!(
        out.stdout.contains("Truncated, retrying in TCP mode"),
        "{out:?}"
    );
    assert!(out.stdout.contains("status: NOERROR"), "{out:?}");
    assert!(out.stdout.contains("ANSWER: 60"), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("SERVER: {TRUNCATING_RESOLVER}#53(")),
        "{out:?}"
    );
    assert!(
        dp.metrics()
            .contains("egress_dns_requests_total{type=\"A\",rcode=\"NOERROR\"} 2"),
        "one UDP and one TCP exchange: {}",
        dp.metrics()
    );
}

/// `python3 -c RAW_TCP IP PORT`: sends a plain-text request, prints `closed N` with the bytes
/// the peer sent before it closed or reset the connection.
const RAW_TCP: &str = r#"
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
conn.sendall(b"GET / HTTP/1.1\r\nHost: b.wild.test\r\n\r\n")
got = b""
try:
    while True:
        data = conn.recv(65536)
        if not data:
            break
        got += data
except ConnectionResetError:
    pass
print("closed", len(got))
"#;

/// Addresses of the wildcard test: its resolver and the stand-ins for `a.wild.test` and
/// `b.wild.test` (port 80).
const WILD_RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 63, 4);
const WILD_A: Ipv4Addr = Ipv4Addr::new(127, 0, 65, 1);
const WILD_B: Ipv4Addr = Ipv4Addr::new(127, 0, 65, 2);

/// `*.wild.test` with `resolution: DYNAMIC_DNS` (HTTP, and TLS forwarded to `tls_port`) and a
/// policy that allows `hosts: [a.wild.test]` only on HTTP, and the TLS port.
fn wildcard_config(tls_port: u16) -> String {
    format!(
        "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: wild, namespace: default}}
spec:
  hosts: ['*.wild.test']
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: tls, protocol: TLS, targetPort: {tls_port}}}
  resolution: DYNAMIC_DNS
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: only-a, namespace: default}}
spec:
  targetRefs: [{{kind: ServiceEntry, group: networking.istio.io, name: wild}}]
  action: ALLOW
  rules:
  - to: [{{operation: {{hosts: [a.wild.test]}}}}]
  # The TLS port is allowed at L4 (`hosts` is HTTP-only, so the rule above never matches a
  # TLS connection): what refuses raw TCP there is the waypoint, not a policy.
  - to: [{{operation: {{ports: ['443']}}}}]
"
    )
}

#[test]
fn a_wildcard_service_entry_resolves_each_requests_own_name_and_only_that() {
    if !require_privileges() || !require_tools(&["dnsmasq", "dig", "unshare", "python3"]) {
        return;
    }
    let a = Upstream::http_at(SocketAddr::from((WILD_A, 80)));
    let b = Upstream::http_at(SocketAddr::from((WILD_B, 80)));
    let ca = TestCa::new();
    let tls = TlsUpstream::start(&ca, &["tls.wild.test"], Cert::Valid, false);
    let resolver = Resolver::dnsmasq(
        WILD_RESOLVER,
        &[
            ("a.wild.test", WILD_A),
            ("b.wild.test", WILD_B),
            ("tls.wild.test", Ipv4Addr::LOCALHOST),
        ],
    );
    let dp = Dataplane::builder()
        .config(&wildcard_config(tls.addr().port()))
        .args(&["--resolv-conf", &resolver.resolv_conf().to_string_lossy()])
        .start();
    let conf = resolver.resolv_conf();

    // Every name under the wildcard answers the ServiceEntry's one VIP, from the resolver the
    // client asked; the wildcard's own suffix is not one of its names.
    let vip_of = |name: &str| {
        let out = dig_in(&dp, &conf, &["+short", name]).expect_success("dig");
        out.stdout.trim().to_owned()
    };
    let vip = vip_of("a.wild.test");
    assert!(is_vip(&vip), "{vip}");
    assert_eq!(vip_of("b.wild.test"), vip);
    assert_eq!(vip_of("x.y.wild.test"), vip, "more than one label");
    assert!(
        !is_vip(&vip_of("wild.test")),
        "the suffix itself is forwarded"
    );
    let out = dig_in(&dp, &conf, &["a.wild.test.default.svc.cluster.local"])
        .expect_success("dig an expansion");
    assert!(!out.stdout.contains("240.240."), "{out:?}");

    // a: allowed, proxied to what the dataplane's resolver says a.wild.test is.
    let out = curl_in(&dp, &conf, &["http://a.wild.test/get"]);
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    assert_eq!(out.header("via").as_deref(), Some("1.1 egress-waypoint"));
    assert_eq!(a.hits().len(), 1);
    let line = dp.access_log_line("/get");
    assert!(line.contains(&format!("\"{WILD_A}:80\"")), "{line}");
    assert!(line.contains("\"a.wild.test\""), "{line}");

    // b: the same VIP, denied by the policy (hosts is the concrete name).
    let out = curl_in(&dp, &conf, &["http://b.wild.test/denied"]);
    assert_eq!(out.http_status(), Some(403), "{out:?}");
    assert_eq!(out.body(), "RBAC: access denied");

    // `Host: a.wild.test` on a connection to b's name (and VIP): the Host is the destination,
    // resolved by the dataplane — a's upstream, never b's.
    let out = curl_in(
        &dp,
        &conf,
        &["-H", "Host: a.wild.test", "http://b.wild.test/host-header"],
    );
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    let resolve = format!("b.wild.test:80:{vip}");
    let out = curl_in(
        &dp,
        &conf,
        &[
            "--resolve",
            &resolve,
            "-H",
            "Host: a.wild.test",
            "http://b.wild.test/resolve",
        ],
    );
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    let paths: Vec<String> = a.hits().into_iter().map(|h| h.path).collect();
    assert_eq!(paths, ["/get", "/host-header", "/resolve"], "all went to a");
    for path in ["/host-header", "/resolve"] {
        let line = dp.access_log_line(path);
        assert!(line.contains(&format!("\"{WILD_A}:80\"")), "{line}");
    }

    // A Host under none of the wildcards has no route (Envoy: 404 NR route_not_found).
    let out = curl_in(
        &dp,
        &conf,
        &[
            "-H",
            "Host: b.wild.test.evil.test",
            "http://a.wild.test/no-route",
        ],
    );
    assert_eq!(out.http_status(), Some(404), "{out:?}");
    let line = dp.access_log_line("/no-route");
    assert!(line.contains(" 404 NR route_not_found "), "{line}");

    // TLS passthrough: the SNI is the destination, resolved by the dataplane.
    let cacert = ca.ca_file();
    let out = curl_in(
        &dp,
        &conf,
        &[
            "--cacert",
            &cacert.to_string_lossy(),
            "https://tls.wild.test/",
        ],
    );
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    assert!(out.body().contains("sni=tls.wild.test"), "{out:?}");
    assert_eq!(
        tls.handshakes()
            .iter()
            .map(|h| h.sni.as_deref())
            .collect::<Vec<_>>(),
        [Some("tls.wild.test")]
    );
    let line = dp.access_log_line("tls.wild.test");
    assert!(line.contains(&format!("\"{}\"", tls.addr())), "{line}");
    // An SNI under none of the wildcards, sent to the VIP: closed, nothing connected.
    let resolve = format!("sni-evil.test:443:{vip}");
    let out = curl_in(
        &dp,
        &conf,
        &[
            "--cacert",
            &cacert.to_string_lossy(),
            "--resolve",
            &resolve,
            "https://sni-evil.test/",
        ],
    );
    assert_eq!(out.http_status(), None, "{out:?}");
    let line = dp.access_log_line("sni-evil.test");
    assert!(line.contains(" NR filter_chain_not_found "), "{line}");
    assert_eq!(tls.handshakes().len(), 1, "no second handshake upstream");

    // Raw TCP to the VIP (its TLS port, no ClientHello): nothing names a destination, so the
    // connection is closed unanswered, and the log says why.
    let vip_addr = SocketAddr::new(vip.parse().expect("a VIP"), 443);
    let out = dp
        .exec("default", "sleep")
        .run(
            "python3",
            &["-c", RAW_TCP, &vip_addr.ip().to_string(), "443"],
        )
        .expect_success("the raw TCP client");
    assert_eq!(out.stdout.trim(), "closed 0", "nothing answered: {out:?}");
    dp.wait_for_log(
        "raw TCP to a DYNAMIC_DNS ServiceEntry's TLS port is refused",
        1,
    );

    assert!(
        b.hits().is_empty(),
        "b's upstream received nothing: {:?}",
        b.hits()
    );
}
