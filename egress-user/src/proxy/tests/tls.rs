//! DestinationRule TLS origination and TLS passthrough through the in-process waypoint, against
//! real rustls servers with certificates from a test CA.
use std::path::Path;

use rustls::pki_types::ServerName;

use super::{
    tls_pki::{Leaf, Pki, TlsUpstream},
    *,
};
use crate::model::select_tls;

fn destination_rule(host: &str, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dr, namespace: egress}}
spec:
  host: \"{host}\"
  trafficPolicy:
    tls:
{tls}"
    )
}

fn simple(pki: &Pki) -> String {
    format!(
        "      mode: SIMPLE\n      caCertificates: {}\n",
        pki.ca_file().display()
    )
}

/// One table: `services` (ids in order) with the TLS the DestinationRules in `yaml` select.
fn table(services: Vec<Service>, yaml: &str) -> ServiceTable {
    let set = match parse_str(Path::new("dr.yaml"), yaml) {
        Ok(set) => set,
        Err(errors) => panic!("test DestinationRule must be valid:\n{errors}"),
    };
    let tls = select_tls(&services, &set.destination_rules);
    ServiceTable::new(services).with_tls(tls)
}

/// httpbin.test served by `upstream`, with a DestinationRule whose `tls` section is `tls`.
fn originating_table(upstream: &TlsUpstream, tls: &str) -> ServiceTable {
    let service = http_service("httpbin.test", upstream.addr);
    table(vec![service], &destination_rule("httpbin.test", tls))
}

async fn originating(upstream: &TlsUpstream, tls: &str) -> Dataplane {
    let table = originating_table(upstream, tls);
    Dataplane::with_table(table, WaypointConfig::default(), AccessLogFormat::Text).await
}

#[tokio::test]
async fn simple_originates_tls13_with_the_host_as_sni_and_reuses_the_connection() {
    let pki = Pki::new();
    let (chain, key) = pki.leaf("httpbin.test", Leaf::Valid);
    let upstream = TlsUpstream::start(chain, key, None).await;
    let dataplane = originating(&upstream, &simple(&pki)).await;

    let mut client = dataplane.client(CGROUP_WEB).await;
    for _ in 0..2 {
        let (parts, body) = send(&mut client, get("/get", "httpbin.test")).await;
        assert_eq!(parts.status, StatusCode::OK, "{body}");
        assert!(body.starts_with("GET /get HTTP/1.1"), "{body}");
        assert!(body.contains("host: httpbin.test\n"), "{body}");
    }
    let handshakes = upstream.handshakes();
    assert_eq!(handshakes.len(), 1, "one pooled connection: {handshakes:?}");
    assert_eq!(handshakes[0].sni.as_deref(), Some("httpbin.test"));
    assert_eq!(
        handshakes[0].version,
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let lines = dataplane.log_lines(2).await;
    assert!(
        lines[0].contains("\"GET /get HTTP/1.1\" 200 - via_upstream"),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn a_reload_of_the_tls_settings_moves_an_open_connection_to_a_new_upstream_connection() {
    let pki = Pki::new();
    let (chain, key) = pki.leaf("httpbin.test", Leaf::Valid);
    let upstream = TlsUpstream::start(chain, key, None).await;
    let dataplane = originating(&upstream, &simple(&pki)).await;
    let mut client = dataplane.client(CGROUP_WEB).await;
    let (parts, body) = send(&mut client, get("/get", "httpbin.test")).await;
    assert_eq!(parts.status, StatusCode::OK, "{body}");

    // The same DestinationRule, reloaded: a new settings set (a renewed certificate would be
    // one). The downstream connection stays open; its upstream connection must not carry on
    // under the retired settings.
    dataplane
        .services
        .store(Arc::new(originating_table(&upstream, &simple(&pki))));
    let (parts, body) = send(&mut client, get("/get", "httpbin.test")).await;
    assert_eq!(parts.status, StatusCode::OK, "{body}");
    assert_eq!(
        upstream.handshakes().len(),
        2,
        "a new TLS connection for the new settings"
    );
}

#[tokio::test]
async fn every_verification_failure_is_a_503_that_says_why() {
    let pki = Pki::new();
    let other = Pki::new();
    let cases = [
        (
            pki.leaf("httpbin.test", Leaf::Expired),
            "certificate_expired",
        ),
        (
            pki.leaf("httpbin.test", Leaf::NotYetValid),
            "certificate_not_yet_valid",
        ),
        (
            pki.leaf("httpbin.test", Leaf::WrongSan),
            "subject_alt_name_mismatch",
        ),
        (
            pki.leaf("httpbin.test", Leaf::ClientOnly),
            "invalid_purpose",
        ),
        (other.leaf("httpbin.test", Leaf::Valid), "unknown_issuer"),
        (Pki::self_signed("httpbin.test"), "unknown_issuer"),
    ];
    for ((chain, key), reason) in cases {
        let upstream = TlsUpstream::start(chain, key, None).await;
        let dataplane = originating(&upstream, &simple(&pki)).await;
        let mut client = dataplane.client(CGROUP_WEB).await;
        let (parts, body) = send(&mut client, get("/get", "httpbin.test")).await;
        assert_eq!(
            parts.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{reason}: {body}"
        );
        let line = &dataplane.log_lines(1).await[0];
        let want = format!(
            " 503 UF upstream_reset_before_response_started{{connection_failure}} - \
             \"TLS_error:|CERTIFICATE_VERIFY_FAILED:{reason}\" "
        );
        assert!(line.contains(&want), "{reason}: {line}");
    }
}

#[tokio::test]
async fn subject_alt_names_replace_the_sni_check() {
    let pki = Pki::new();
    let (chain, key) = pki.leaf("httpbin.test", Leaf::WrongSan);
    let upstream = TlsUpstream::start(chain, key, None).await;
    let tls = format!(
        "{}      subjectAltNames: [someone-else.test]\n",
        simple(&pki)
    );
    let dataplane = originating(&upstream, &tls).await;
    let mut client = dataplane.client(CGROUP_WEB).await;
    let (parts, body) = send(&mut client, get("/get", "httpbin.test")).await;
    assert_eq!(parts.status, StatusCode::OK, "{body}");
    // The SNI is still the host.
    assert_eq!(
        upstream.handshakes()[0].sni.as_deref(),
        Some("httpbin.test")
    );
}

#[tokio::test]
async fn mutual_presents_the_client_certificate_and_fails_without_it() {
    let pki = Pki::new();
    let (chain, key) = pki.leaf("httpbin.test", Leaf::Valid);
    let upstream = TlsUpstream::start(chain, key, Some(pki.ca_der())).await;
    let (cert, key) = pki.client_files("sleep.default");
    let mutual = format!(
        "      mode: MUTUAL\n      caCertificates: {}\n      clientCertificate: {}\n      privateKey: {}\n",
        pki.ca_file().display(),
        cert.display(),
        key.display()
    );
    let dataplane = originating(&upstream, &mutual).await;
    let mut client = dataplane.client(CGROUP_WEB).await;
    let (parts, body) = send(&mut client, get("/get", "httpbin.test")).await;
    assert_eq!(parts.status, StatusCode::OK, "{body}");

    let dataplane = originating(&upstream, &simple(&pki)).await;
    let mut client = dataplane.client(CGROUP_WEB).await;
    let (parts, body) = send(&mut client, get("/get", "httpbin.test")).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let line = &dataplane.log_lines(1).await[0];
    assert!(
        line.contains("\"TLS_error:|ALERT_RECEIVED:certificate_required\""),
        "{line}"
    );
}

#[tokio::test]
async fn two_hosts_on_one_endpoint_never_share_a_connection() {
    let pki = Pki::new();
    // One certificate for both hosts, one address: only the SNI tells them apart.
    let (chain, key) = pki.leaf("a.test,b.test", Leaf::Valid);
    let upstream = TlsUpstream::start(chain, key, None).await;
    let mut a = http_service("a.test", upstream.addr);
    let mut b = http_service("b.test", upstream.addr);
    a.id = 0;
    b.id = 1;
    b.name = "b".into();
    let dr = destination_rule("*.test", &simple(&pki));
    let dataplane = Dataplane::with_table(
        table(vec![a, b], &dr),
        WaypointConfig::default(),
        AccessLogFormat::Text,
    )
    .await;
    // Both services on one client connection each; the second is service 1.
    let mut to_a = dataplane.client(CGROUP_WEB).await;
    let (parts, _) = send(&mut to_a, get("/a", "a.test")).await;
    assert_eq!(parts.status, StatusCode::OK);
    let stream = connect_to(&dataplane, CGROUP_WEB, 1).await;
    let (mut to_b, conn) = handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    for _ in 0..2 {
        let (parts, _) = send(&mut to_b, get("/b", "b.test")).await;
        assert_eq!(parts.status, StatusCode::OK);
    }
    let mut snis: Vec<_> = upstream
        .handshakes()
        .into_iter()
        .map(|h| h.sni.unwrap_or_default())
        .collect();
    snis.sort();
    assert_eq!(snis, ["a.test", "b.test"], "one connection per SNI");
}

#[tokio::test]
async fn a_silent_upstream_times_out_the_handshake() {
    let silent = scripted_upstream(b"", true).await;
    let pki = Pki::new();
    let service = http_service("httpbin.test", silent.addr);
    let config = WaypointConfig {
        upstream_connect_timeout: Duration::from_millis(300),
        ..WaypointConfig::default()
    };
    let table = table(
        vec![service],
        &destination_rule("httpbin.test", &simple(&pki)),
    );
    let dataplane = Dataplane::with_table(table, config, AccessLogFormat::Text).await;
    let mut client = dataplane.client(CGROUP_WEB).await;
    let (parts, _) = send(&mut client, get("/get", "httpbin.test")).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    let line = &dataplane.log_lines(1).await[0];
    assert!(
        line.contains("{connection_timeout} - \"TLS_error:|handshake_timeout\""),
        "{line}"
    );
}

/// A TLS port: the waypoint reads the SNI, authorizes it and splices the bytes unchanged.
#[tokio::test]
async fn passthrough_authorizes_the_sni_and_splices() {
    let pki = Pki::new();
    let (chain, key) = pki.leaf("allowed.test,denied.test", Leaf::Valid);
    let upstream = TlsUpstream::start(chain, key, None).await;
    let mut service = service(
        "*.test",
        Protocol::Tls,
        Upstream::Endpoints(vec![upstream.addr]),
        upstream.addr.port(),
    );
    service.port = 443;
    let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sni, namespace: egress}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin}]
  rules:
  - when:
    - key: connection.sni
      values: [allowed.test]
";
    let dataplane = Dataplane::guarded(service, policy).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der()).expect("CA");
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let connector = tokio_rustls::TlsConnector::from(config);

    let stream = dataplane.connect(CGROUP_WEB).await;
    let name = ServerName::try_from("allowed.test").expect("name");
    let tls = timeout(WAIT, connector.connect(name, stream))
        .await
        .expect("handshake in time")
        .expect("the allowed SNI is spliced to the upstream");
    let (mut sender, conn) = handshake(TokioIo::new(tls)).await.expect("http handshake");
    tokio::spawn(conn);
    let (parts, body) = send(&mut sender, get("/", "allowed.test")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(
        !body.contains("via: 1.1 egress-waypoint"),
        "not terminated: {body}"
    );
    drop(sender);
    let line = &dataplane.log_lines(1).await[0];
    assert!(
        line.contains(" allowed.test - spiffe://"),
        "SNI logged: {line}"
    );

    for (sni, why) in [
        ("denied.test", "rbac_access_denied"),
        ("other.example", "filter_chain_not_found"),
    ] {
        let stream = dataplane.connect(CGROUP_WEB).await;
        let name = ServerName::try_from(sni).expect("name");
        let refused = timeout(WAIT, connector.connect(name, stream))
            .await
            .expect("in time");
        assert!(refused.is_err(), "{sni} is refused");
        let lines = dataplane.log.lines();
        let line = lines
            .iter()
            .find(|l| l.contains(why))
            .unwrap_or_else(|| panic!("{why}: {lines:?}"));
        assert!(line.contains(&format!(" {sni} ")), "{line}");
    }
    assert_eq!(
        upstream.handshakes().len(),
        1,
        "refused connections never reach the upstream"
    );
}

/// As `Dataplane::connect`, for service `service_id`.
async fn connect_to(dataplane: &Dataplane, cgroup_id: u64, service_id: u32) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("client socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind client");
    let local = socket.local_addr().expect("client addr");
    let origin = Origin {
        cgroup_id,
        dst_addr: dataplane.dst.ip().octets(),
        dst_port: dataplane.dst.port(),
        family: FAMILY_INET,
        service_id,
        pid: 4242,
        uid: 1000,
        gid: 1000,
        ..Origin::default()
    };
    dataplane
        .origins
        .0
        .lock()
        .expect("origins lock")
        .insert((dataplane.netns_cookie, local), origin);
    socket
        .connect(dataplane.addr)
        .await
        .expect("connect to waypoint")
}

#[test]
fn pki_files_are_in_a_temporary_directory() {
    let pki = Pki::new();
    assert!(pki.ca_file().starts_with(pki.dir()));
}
