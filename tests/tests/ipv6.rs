//! IPv6 must not be a bypass: a connect to an IPv6 ServiceEntry address is refused in the kernel
//! (until IPv6 upstreams are supported), while the same address stays reachable from outside.
use std::net::{IpAddr, Ipv6Addr};

use egress_tests::*;

#[test]
fn ipv6_service_entry_addresses_are_refused_not_bypassed() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http_on(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let dp = Dataplane::builder()
        .service_entry(&yaml::service_entry("v6", "v6.test", upstream.addr()))
        .start();

    let inside = dp
        .exec("default", "sleep")
        .curl(&["-sS", "-g", &upstream.url("/from-inside")]);
    assert_eq!(
        inside.code,
        Some(7),
        "curl could not connect (refused in the kernel): {inside:?}"
    );
    assert!(
        upstream.hits().is_empty(),
        "the IPv6 ServiceEntry address was reached directly: {:?}",
        upstream.hits()
    );
    assert!(
        dp.bpf_counter("refused_ipv6") > 0,
        "the kernel counted the refusal"
    );

    let outside = curl(&["-sS", "-g", "-i", &upstream.url("/from-outside")])
        .expect_success("curl from outside the captured cgroup");
    assert_eq!(outside.http_status(), Some(200), "{outside:?}");
    assert_eq!(outside.header("via"), None, "not through the waypoint");
}
