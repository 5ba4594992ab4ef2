//! `egress run --capture iptables`: the waypoint behind iptables REDIRECT (the comparison mode
//! `cargo xtask bench` measures as I), with real iptables rules, real curl and a real upstream.
//! The destination comes from SO_ORIGINAL_DST, the identity from --capture-identity.
use std::net::{IpAddr, Ipv4Addr};

use egress_tests::*;

/// One address per test: the tests run in parallel, and each one's REDIRECT rule must only
/// catch its own connects.
fn resolve(vip: Ipv4Addr) -> String {
    format!("httpbin.test:80:{vip}")
}

fn start(vip: Ipv4Addr, upstream: &Upstream, extra: &[&str]) -> (Dataplane, iptables::Redirect) {
    let se = yaml::static_service_entry(
        "httpbin",
        "httpbin.test",
        IpAddr::V4(vip),
        80,
        upstream.addr(),
    );
    let mut args = vec!["--capture", "iptables", "--workers", "1"];
    args.extend_from_slice(extra);
    let dp = Dataplane::builder()
        .service_entry(&se)
        .config(&yaml::sleep_only_policy())
        .args(&args)
        .start();
    let root = cgroup2_mount().expect("cgroup2 mount");
    let redirect = iptables::Redirect::install(
        vip,
        80,
        dp.listen_addr(),
        &root,
        &dp.cgroup().join("egress-waypoint"),
    );
    (dp, redirect)
}

#[test]
fn redirected_connections_are_authorized_as_the_configured_identity() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let vip = Ipv4Addr::new(127, 78, 0, 2);
    let (dp, _redirect) = start(vip, &upstream, &["--capture-identity", "default/sleep"]);

    // The test process is in no captured cgroup: only iptables brings it to the waypoint.
    let get = curl(&[
        "-sS",
        "-i",
        "--resolve",
        &resolve(vip),
        "http://httpbin.test/get",
    ])
    .expect_success("GET /get through the REDIRECT");
    assert_eq!(get.http_status(), Some(200), "{get:?}");
    assert_eq!(get.header("via").as_deref(), Some("1.1 egress-waypoint"));
    assert_eq!(
        upstream.hits().len(),
        1,
        "the upstream saw the allowed request"
    );

    let post = curl(&[
        "-sS",
        "-i",
        "-X",
        "POST",
        "--resolve",
        &resolve(vip),
        "http://httpbin.test/get",
    ])
    .expect_success("POST /get through the REDIRECT");
    assert_eq!(post.http_status(), Some(403), "{post:?}");
    assert_eq!(post.body(), "RBAC: access denied");
    assert_eq!(
        upstream.hits().len(),
        1,
        "the denied request never reached the upstream"
    );

    let line = dp.access_log_line("\"POST /get");
    assert!(
        line.contains("spiffe://cluster.local/ns/default/sa/sleep"),
        "the configured identity is logged: {line}"
    );
    assert!(
        line.contains(&format!("{vip}:80")),
        "the original destination is logged: {line}"
    );

    // Nothing was attached: the kernel redirected nothing.
    assert_eq!(dp.bpf_counter("redirected_ipv4"), 0);
    let links = std::fs::read_dir(dp.pin_dir().join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(links, 0, "no link is pinned under iptables capture");
}

#[test]
fn a_direct_connection_to_the_listener_is_closed_unproxied() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let vip = Ipv4Addr::new(127, 78, 0, 3);
    let (dp, _redirect) = start(vip, &upstream, &["--capture-identity", "default/sleep"]);
    let url = format!("http://{}/get", dp.listen_addr());
    let direct = curl(&["-sS", "-i", "-H", "Host: httpbin.test", &url]);
    // Closed without an answer: curl reports an empty reply (52) or, as the request was
    // unread, a reset (56).
    assert!(matches!(direct.code, Some(52 | 56)), "{direct:?}");
    assert_eq!(direct.http_status(), None, "{direct:?}");
    assert!(upstream.hits().is_empty(), "nothing was proxied");
    dp.wait_for_log("a direct connection to the listener", 1);
}

#[test]
fn without_an_identity_the_policy_denies() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let vip = Ipv4Addr::new(127, 78, 0, 4);
    let (dp, _redirect) = start(vip, &upstream, &[]);
    let get = curl(&[
        "-sS",
        "-i",
        "--resolve",
        &resolve(vip),
        "http://httpbin.test/get",
    ])
    .expect_success("GET /get through the REDIRECT");
    assert_eq!(get.http_status(), Some(403), "{get:?}");
    assert!(upstream.hits().is_empty());
    let line = dp.access_log_line("\"GET /get");
    assert!(line.contains(" 403 "), "{line}");
}
