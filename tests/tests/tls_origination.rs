//! DestinationRule TLS origination end to end: the application speaks plain HTTP to port 80, the
//! waypoint speaks TLS to the endpoint's `targetPort` (the seed walkthrough's last step). Real
//! curl in a captured cgroup, the real kernel programs, real TLS servers with test-CA
//! certificates — among them the real httpbin behind gunicorn.
use std::net::{IpAddr, Ipv4Addr};

use egress_tests::*;

const SE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 77, 1, 1));
const RESOLVE: &str = "httpbin.test:80:127.77.1.1";

/// The seed's ServiceEntry: port 80 (HTTP) with `targetPort` the TLS port of the endpoint.
fn service_entry(hosts: &[&str], target_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [{hosts}]
  addresses: [{SE_IP}]
  ports:
  - number: 80
    name: http
    protocol: HTTP
    targetPort: {target_port}
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
",
        hosts = hosts.join(", ")
    )
}

fn destination_rule(host: &str, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin, namespace: default}}
spec:
  host: \"{host}\"
  trafficPolicy:
    tls:
{tls}"
    )
}

fn simple(ca: &TestCa) -> String {
    format!(
        "      mode: SIMPLE\n      caCertificates: {}\n",
        ca.ca_file().display()
    )
}

fn get(dp: &Dataplane, host: &str, path: &str) -> Output {
    let resolve = format!("{host}:80:{SE_IP}");
    dp.exec("default", "sleep")
        .curl(&[
            "-sS",
            "-i",
            "--resolve",
            &resolve,
            &format!("http://{host}{path}"),
        ])
        .expect_success("curl through the waypoint")
}

#[test]
fn the_seed_origination_reaches_real_httpbin_over_tls() {
    if !require_privileges() {
        return;
    }
    if let Err(why) = Httpbin::gunicorn() {
        panic!("{why}");
    }
    let ca = TestCa::new();
    let httpbin = Httpbin::start(&ca);
    let dp = Dataplane::builder()
        .service_entry(&service_entry(&["httpbin.test"], httpbin.addr().port()))
        .config(&destination_rule("httpbin.test", &simple(&ca)))
        .start();

    let out = dp
        .exec("default", "sleep")
        .curl(&["-sS", "-i", "--resolve", RESOLVE, "http://httpbin.test/get"])
        .expect_success("curl http://httpbin.test/get");
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    assert!(
        out.body().contains("\"url\": \"https://httpbin.test/get\""),
        "httpbin saw an https request: {out:?}"
    );
    let line = dp.access_log_line("\"GET /get HTTP/1.1\"");
    assert!(line.contains(" 200 - via_upstream "), "{line}");
}

#[test]
fn the_upstream_sees_tls13_with_the_host_as_sni() {
    if !require_privileges() {
        return;
    }
    let ca = TestCa::new();
    let upstream = TlsUpstream::start(&ca, &["httpbin.test"], Cert::Valid, false);
    let dp = Dataplane::builder()
        .service_entry(&service_entry(&["httpbin.test"], upstream.addr().port()))
        .config(&destination_rule("httpbin.test", &simple(&ca)))
        .start();

    let out = get(&dp, "httpbin.test", "/get");
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    assert_eq!(out.body(), "sni=httpbin.test\n");
    let handshakes = upstream.handshakes();
    assert_eq!(handshakes.len(), 1, "{handshakes:?}");
    assert_eq!(handshakes[0].sni.as_deref(), Some("httpbin.test"));
    assert_eq!(handshakes[0].version, "TLSv1_3");
}

#[test]
fn mutual_presents_our_certificate_and_fails_without_it() {
    if !require_privileges() {
        return;
    }
    let ca = TestCa::new();
    let upstream = TlsUpstream::start(&ca, &["httpbin.test"], Cert::Valid, true);
    let (cert, key) = ca.client_files("client");
    let mutual = format!(
        "      mode: MUTUAL\n      caCertificates: {}\n      clientCertificate: {}\n      privateKey: {}\n",
        ca.ca_file().display(),
        cert.display(),
        key.display()
    );
    let se = service_entry(&["httpbin.test"], upstream.addr().port());
    let dp = Dataplane::builder()
        .service_entry(&se)
        .config(&destination_rule("httpbin.test", &mutual))
        .start();
    let out = get(&dp, "httpbin.test", "/with-cert");
    assert_eq!(out.http_status(), Some(200), "{out:?}");

    // The certificate removed from the DestinationRule: the upstream refuses us.
    let without = destination_rule("httpbin.test", &simple(&ca));
    dp.write_config(&[&se, &without]);
    dp.wait_for_log("configuration reloaded", 1);
    let out = get(&dp, "httpbin.test", "/without-cert");
    assert_eq!(out.http_status(), Some(503), "{out:?}");
    let line = dp.access_log_line("\"GET /without-cert HTTP/1.1\"");
    assert!(
        line.contains("\"TLS_error:|ALERT_RECEIVED:certificate_required\""),
        "{line}"
    );
}

#[test]
fn bad_upstream_certificates_are_503_with_the_reason_logged() {
    if !require_privileges() {
        return;
    }
    let ca = TestCa::new();
    let unknown_ca = TestCa::new();
    let cases = [
        (
            TlsUpstream::start(&ca, &["httpbin.test"], Cert::Expired, false),
            "certificate_expired",
        ),
        (
            TlsUpstream::start(&ca, &["httpbin.test"], Cert::WrongSan, false),
            "subject_alt_name_mismatch",
        ),
        (
            TlsUpstream::start(&unknown_ca, &["httpbin.test"], Cert::Valid, false),
            "unknown_issuer",
        ),
        (
            TlsUpstream::start(&ca, &["httpbin.test"], Cert::SelfSigned, false),
            "unknown_issuer",
        ),
    ];
    for (upstream, reason) in cases {
        let dp = Dataplane::builder()
            .service_entry(&service_entry(&["httpbin.test"], upstream.addr().port()))
            .config(&destination_rule("httpbin.test", &simple(&ca)))
            .start();
        let out = get(&dp, "httpbin.test", "/get");
        assert_eq!(out.http_status(), Some(503), "{reason}: {out:?}");
        let line = dp.access_log_line("\"GET /get HTTP/1.1\"");
        let want = format!(
            " 503 UF upstream_reset_before_response_started{{connection_failure}} - \"TLS_error:|CERTIFICATE_VERIFY_FAILED:{reason}\" "
        );
        assert!(line.contains(&want), "{reason}: {line}");
    }
}

#[test]
fn two_hosts_behind_one_address_never_share_a_connection() {
    if !require_privileges() {
        return;
    }
    let ca = TestCa::new();
    let upstream = TlsUpstream::start(&ca, &["a.test", "b.test"], Cert::Valid, false);
    let dp = Dataplane::builder()
        .service_entry(&service_entry(
            &["a.test", "b.test"],
            upstream.addr().port(),
        ))
        .config(&destination_rule("*.test", &simple(&ca)))
        .start();
    // One curl, keep-alive: four requests alternating hosts on one client connection.
    let resolve_a = format!("a.test:80:{SE_IP}");
    let resolve_b = format!("b.test:80:{SE_IP}");
    let out = dp
        .exec("default", "sleep")
        .curl(&[
            "-sS",
            "--resolve",
            &resolve_a,
            "--resolve",
            &resolve_b,
            "http://a.test/1",
            "http://b.test/2",
            "http://a.test/3",
            "http://b.test/4",
        ])
        .expect_success("curl to two hosts");
    assert_eq!(
        out.stdout, "sni=a.test\nsni=b.test\nsni=a.test\nsni=b.test\n",
        "{out:?}"
    );
    let mut snis: Vec<String> = upstream
        .handshakes()
        .into_iter()
        .filter_map(|h| h.sni)
        .collect();
    snis.sort();
    assert_eq!(snis, ["a.test", "b.test"], "one pooled connection per SNI");
}
