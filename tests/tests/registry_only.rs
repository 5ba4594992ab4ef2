//! REGISTRY_ONLY (Istio's `outboundTrafficPolicy.mode`, done in the kernel): from the captured
//! cgroup, a connect to anything that is no ServiceEntry address is refused with EPERM, except
//! the allowed CIDRs; ServiceEntry traffic works; processes outside the cgroup are unaffected.
use std::net::{IpAddr, Ipv4Addr};

use egress_tests::*;

#[test]
fn registry_only_refuses_non_service_entry_destinations_in_the_kernel() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    // Not a ServiceEntry address, and outside the allow list below.
    let other = Upstream::http_on(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let se_ip = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 5));
    let dp = Dataplane::builder()
        .service_entry(&yaml::static_service_entry(
            "httpbin",
            "httpbin.test",
            se_ip,
            80,
            upstream.addr(),
        ))
        // Only 127.0.0.1 stays reachable (the default would allow all of 127.0.0.0/8).
        .args(&[
            "--outbound-policy",
            "registry-only",
            "--allow-cidr",
            "127.0.0.1/32",
        ])
        .start();

    let refused = dp
        .exec("default", "sleep")
        .curl(&["-sS", &other.url("/not-registered")]);
    assert_eq!(refused.code, Some(7), "refused in connect(): {refused:?}");
    assert!(
        refused.stderr.contains("Operation not permitted")
            || refused.stderr.contains("Couldn't connect"),
        "{refused:?}"
    );
    assert!(
        other.hits().is_empty(),
        "nothing reached the unregistered destination"
    );
    assert!(dp.bpf_counter("refused_registry_only") >= 1);

    let se = dp.exec("default", "sleep").curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--resolve",
        "httpbin.test:80:127.77.0.5",
        "http://httpbin.test/get",
    ]);
    assert_eq!(se.stdout, "200", "ServiceEntry traffic works: {se:?}");

    let allowed = dp.exec("default", "sleep").curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &upstream.url("/allowed-cidr"),
    ]);
    assert_eq!(
        allowed.stdout, "200",
        "an allowed CIDR is reachable: {allowed:?}"
    );

    let outside = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &other.url("/from-outside"),
    ]);
    assert_eq!(
        outside.stdout, "200",
        "processes outside the cgroup are unaffected: {outside:?}"
    );
}
