//! `resolution: DNS` without `addresses`: the kernel captures what the host resolves to, and the
//! waypoint forwards to the resolved address. `localhost` resolves offline (from /etc/hosts) to
//! 127.0.0.1 and ::1; IPv4 is preferred upstream and ::1 is refused in the kernel.
use egress_tests::*;

fn dns_service_entry(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: local
  namespace: default
spec:
  hosts: [localhost]
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  resolution: DNS
"
    )
}

#[test]
fn resolved_host_addresses_are_captured_and_used_upstream() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let dp = Dataplane::builder()
        .service_entry(&dns_service_entry(upstream.port()))
        .start();

    for i in 0..3 {
        let url = format!("http://localhost:{}/dns-{i}", upstream.port());
        let out = dp
            .exec("default", "sleep")
            .curl(&["-sS", "-i", "-4", &url])
            .expect_success("curl to a DNS ServiceEntry");
        assert_eq!(out.http_status(), Some(200), "{out:?}");
        assert_eq!(
            out.header("via").as_deref(),
            Some("1.1 egress-waypoint"),
            "{out:?}"
        );
    }
    assert_eq!(
        upstream.hits().len(),
        3,
        "every request reached the IPv4 upstream"
    );
    let line = dp.access_log_line("/dns-2");
    assert!(
        line.contains(&format!("\"127.0.0.1:{}\"", upstream.port())),
        "upstream host is the resolved IPv4 address: {line}"
    );
    assert!(
        line.contains(&format!("outbound|{}||localhost", upstream.port())),
        "{line}"
    );
}
