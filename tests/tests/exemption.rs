//! The waypoint's own upstream connects are exempt by cgroup id: with `resolution: NONE` the
//! upstream is the ServiceEntry address itself, so without the exemption the waypoint would dial
//! itself.
use egress_tests::*;

#[test]
fn waypoint_upstream_connects_are_exempt() {
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
        .curl(&["-sS", "-i", &upstream.url("/exempt")])
        .expect_success("curl through the waypoint");
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    assert_eq!(upstream.hits().len(), 1, "forwarded once, no loop");

    assert!(
        dp.bpf_counter("exempt_waypoint") > 0,
        "the kernel counted the waypoint's exempt connect"
    );
    assert!(dp.bpf_counter("redirected_ipv4") > 0);
    let metrics = dp.metrics();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("istio_requests_total{reporter=\"waypoint\",")
                && l.contains(",source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\",")
        ) && metrics.contains("istio_request_duration_milliseconds_count{reporter=\"waypoint\","),
        "Istio's request metrics: {metrics}"
    );
    let status = dp.status().expect_success("egress status");
    let exempt = status.stdout.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("exempt_waypoint")).then(|| words.next()?.parse::<u64>().ok())?
    });
    assert!(
        exempt.is_some_and(|n| n > 0),
        "egress status counts the exempt connect: {status:?}"
    );
}
