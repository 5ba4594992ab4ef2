//! A request to a ServiceEntry address from an enrolled cgroup crosses the waypoint, is logged
//! with the workload's principal, and the application never notices the detour.
use std::net::{IpAddr, Ipv4Addr};

use egress_tests::*;

const PRINCIPAL: &str = "spiffe://cluster.local/ns/default/sa/sleep";

#[test]
fn request_to_a_service_entry_crosses_the_waypoint() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let dp = Dataplane::builder()
        .service_entry(&yaml::service_entry(
            "httpbin",
            "httpbin.test",
            upstream.addr(),
        ))
        .start();

    let out = dp
        .exec("default", "sleep")
        .curl(&["-sS", "-i", &upstream.url("/x")])
        .expect_success("curl through the waypoint");

    assert_eq!(out.http_status(), Some(200), "{out:?}");
    assert_eq!(
        out.header("via").as_deref(),
        Some("1.1 egress-waypoint"),
        "{out:?}"
    );
    let hits = upstream.hits();
    assert_eq!(
        hits.len(),
        1,
        "the upstream saw exactly one request: {hits:?}"
    );
    assert_eq!(
        (hits[0].method.as_str(), hits[0].path.as_str()),
        ("GET", "/x")
    );
    assert_eq!(hits[0].host.as_deref(), Some(&*upstream.addr().to_string()));

    let line = dp.access_log_line("\"GET /x HTTP/1.1\"");
    let authority = upstream.addr().to_string();
    assert!(line.contains("\"GET /x HTTP/1.1\" 200 "), "status: {line}");
    assert!(
        line.contains(&format!("\"{authority}\" \"{authority}\"")),
        "authority and upstream host {authority}: {line}"
    );
    assert!(
        line.contains(&format!("outbound|{}||httpbin.test", upstream.port())),
        "cluster: {line}"
    );
    assert!(line.ends_with(PRINCIPAL), "principal last: {line}");
}

#[test]
fn application_sees_the_address_it_dialled() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let service_ip = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 1));
    let dp = Dataplane::builder()
        .service_entry(&yaml::static_service_entry(
            "static",
            "static.test",
            service_ip,
            80,
            upstream.addr(),
        ))
        .start();

    let out = dp
        .exec("default", "sleep")
        .curl(&[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{remote_ip} %{remote_port} %{http_code}",
            "http://127.77.0.1/dialled",
        ])
        .expect_success("curl to a STATIC ServiceEntry address");

    // getpeername() on the redirected socket answers with the ServiceEntry address, not the
    // waypoint listener.
    assert_eq!(out.stdout, "127.77.0.1 80 200", "{out:?}");
    let hits = upstream.hits();
    assert_eq!(hits.len(), 1, "the endpoint saw one request: {hits:?}");
    assert_eq!(hits[0].path, "/dialled");
    dp.access_log_line("\"GET /dialled HTTP/1.1\" 200");
}
