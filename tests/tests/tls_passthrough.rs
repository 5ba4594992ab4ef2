//! TLS passthrough: `curl https://…` through the waypoint, which reads the SNI from the
//! ClientHello (without terminating TLS), authorizes it with `connection.sni` and splices.
use std::net::{IpAddr, Ipv4Addr};

use egress_tests::*;

const SE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 77, 1, 2));

#[test]
fn an_sni_policy_allows_one_host_and_refuses_another() {
    if !require_privileges() {
        return;
    }
    let ca = TestCa::new();
    let upstream = TlsUpstream::start(&ca, &["allowed.test", "denied.test"], Cert::Valid, false);
    let se = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tls, namespace: default}}
spec:
  hosts: [allowed.test, denied.test]
  addresses: [{SE_IP}]
  ports:
  - number: 443
    name: tls
    protocol: TLS
    targetPort: {port}
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
",
        port = upstream.addr().port()
    );
    let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sni, namespace: default}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: tls}]
  rules:
  - when:
    - key: connection.sni
      values: [allowed.test]
";
    let dp = Dataplane::builder()
        .service_entry(&se)
        .config(policy)
        .start();
    let cacert = ca.ca_file();
    let curl = |host: &str| {
        let resolve = format!("{host}:443:{SE_IP}");
        dp.exec("default", "sleep").curl(&[
            "-sS",
            "--cacert",
            &cacert.to_string_lossy(),
            "--resolve",
            &resolve,
            &format!("https://{host}/"),
        ])
    };

    let allowed = curl("allowed.test").expect_success("the allowed SNI");
    assert_eq!(allowed.stdout, "sni=allowed.test\n", "{allowed:?}");
    let line = dp.access_log_line(" allowed.test ");
    assert!(line.contains("\"- - -\" 0 "), "one TCP line: {line}");

    let denied = curl("denied.test");
    assert!(!denied.success(), "the denied SNI is refused: {denied:?}");
    let line = dp.access_log_line(" denied.test ");
    assert!(line.contains("rbac_access_denied"), "{line}");
    assert_eq!(
        upstream.handshakes().len(),
        1,
        "the refused connection never reached the upstream"
    );
}
