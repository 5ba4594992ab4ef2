//! `egress run --kubernetes`: the configuration comes from a real kube-apiserver + etcd, and
//! `kubectl` changes it while the agent runs. Capture is host mode for now (a host cgroup in the
//! host netns; the pods side is another part), with real curl in the captured cgroup, the real
//! kernel programs and real TLS upstreams.
use std::{
    thread,
    time::{Duration, Instant},
};

use egress_tests::*;

/// The address the bound ServiceEntry claims, and another one for an unbound ServiceEntry.
const BOUND_IP: &str = "127.77.3.1";
const UNBOUND_IP: &str = "127.77.3.2";

/// A namespace bound to the waypoint (as `istioctl waypoint apply --enroll-namespace` labels
/// it) and one that is not.
const NAMESPACES: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: istio-egress
  labels: {istio.io/use-waypoint: waypoint}
---
apiVersion: v1
kind: Namespace
metadata: {name: elsewhere}
";

/// A ServiceEntry for `httpbin.test` at `address:80`, forwarded to `endpoint_port` on 127.0.0.1.
fn service_entry(namespace: &str, address: &str, endpoint_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: {namespace}}}
spec:
  hosts: [httpbin.test]
  addresses: [{address}]
  ports:
  - number: 80
    name: http
    protocol: HTTP
    targetPort: {endpoint_port}
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
"
    )
}

/// The seed's policy shape: `default/sleep` may only use `methods`.
fn policy(methods: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: httpbin, namespace: istio-egress}}
spec:
  targetRefs:
  - {{kind: ServiceEntry, group: networking.istio.io, name: httpbin}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/sleep]
    to:
    - operation:
        methods: [{methods}]
"
    )
}

fn call(dp: &Dataplane, method: &str, address: &str, path: &str) -> Output {
    let resolve = format!("httpbin.test:80:{address}");
    dp.exec("default", "sleep").curl(&[
        "-sS",
        "-i",
        "--max-time",
        "5",
        "-X",
        method,
        "--resolve",
        &resolve,
        &format!("http://httpbin.test{path}"),
    ])
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `limit`. Returns how long
/// it took.
#[track_caller]
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

#[test]
fn kube_service_entries_and_policies_from_the_api_server_are_enforced_and_follow_kubectl() {
    if !require_privileges() || !require_control_plane() {
        return;
    }
    let cluster = Cluster::start();
    cluster.install_istio_crds();
    let upstream = Upstream::http();
    cluster.apply(NAMESPACES);
    cluster.apply(&service_entry("istio-egress", BOUND_IP, upstream.port()));
    // The same host in a namespace without the binding label: not this waypoint's.
    cluster.apply(&service_entry("elsewhere", UNBOUND_IP, upstream.port()));
    cluster.apply(&policy("GET"));
    let dp = Dataplane::builder()
        .kubernetes(&cluster.kubeconfig())
        .start();

    let out = call(&dp, "GET", BOUND_IP, "/get");
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    assert_eq!(out.header("via").as_deref(), Some("1.1 egress-waypoint"));
    let out = call(&dp, "POST", BOUND_IP, "/post");
    assert_eq!(out.http_status(), Some(403), "{out:?}");
    assert_eq!(out.body(), "RBAC: access denied");
    let line = dp.access_log_line("\"POST /post HTTP/1.1\" 403");
    assert!(
        line.ends_with(" spiffe://cluster.local/ns/default/sa/sleep"),
        "{line}"
    );
    // Not bound: untouched by the kernel, so the connect goes direct to an address where
    // nothing listens.
    let out = call(&dp, "GET", UNBOUND_IP, "/unbound");
    assert!(
        out.code == Some(7),
        "an unbound ServiceEntry is not captured: {out:?}"
    );

    // kubectl apply of a changed policy: POST allowed within 2 s.
    cluster.apply(&policy("GET, POST"));
    let took = within(Duration::from_secs(2), "the changed policy applies", || {
        call(&dp, "POST", BOUND_IP, "/post").http_status() == Some(200)
    });
    eprintln!("the changed AuthorizationPolicy applied after {took:?}");

    // An invalid object is reported, counted and skipped; the rest keeps serving.
    cluster.apply(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: broken, namespace: istio-egress}
spec:
  hosts: [broken.test]
  addresses: [127.77.3.3]
  ports: [{number: 0, name: http, protocol: HTTP}]
",
    );
    dp.wait_for_log(
        "ServiceEntry istio-egress/broken: spec.ports[0].number: must be between 1 and 65535, got 0",
        1,
    );
    within(Duration::from_secs(5), "the rejection is counted", || {
        dp.metrics()
            .contains("egress_config_rejected_objects_total{kind=\"ServiceEntry\"} 1")
    });
    let out = call(&dp, "GET", BOUND_IP, "/still");
    assert_eq!(out.http_status(), Some(200), "{out:?}");

    // The binding label on the namespace removed: the ServiceEntry is no longer captured.
    cluster
        .kubectl(&[
            "label",
            "namespace",
            "istio-egress",
            "istio.io/use-waypoint-",
        ])
        .ok();
    within(
        Duration::from_secs(5),
        "the unbound ServiceEntry is released",
        || {
            let out = call(&dp, "GET", BOUND_IP, "/released");
            out.code == Some(7)
        },
    );
}

/// A Secret of type kubernetes.io/tls with `ca.crt`, as `kubectl apply` gets it.
fn secret(
    name: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> String {
    let b64 = |path: &std::path::Path| {
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        base64(&bytes)
    };
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: istio-egress}}
type: Opaque
data:
  tls.crt: {}
  tls.key: {}
  ca.crt: {}
",
        b64(cert),
        b64(key),
        b64(ca)
    )
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn kube_mutual_tls_with_a_credential_name_secret_follows_the_secret() {
    if !require_privileges() || !require_control_plane() {
        return;
    }
    let cluster = Cluster::start();
    cluster.install_istio_crds();
    let ca = TestCa::new();
    let upstream = TlsUpstream::start(&ca, &["httpbin.test"], Cert::Valid, true);
    cluster.apply(NAMESPACES);
    cluster.apply(&service_entry(
        "istio-egress",
        BOUND_IP,
        upstream.addr().port(),
    ));
    cluster.apply(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: istio-egress}
spec:
  host: httpbin.test
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: httpbin-client}
",
    );
    let dp = Dataplane::builder()
        .kubernetes(&cluster.kubeconfig())
        .start();
    let pid = dp.pid();

    // No Secret yet: 503 with the reason in the log, never plain text.
    let out = call(&dp, "GET", BOUND_IP, "/no-secret");
    assert_eq!(out.http_status(), Some(503), "{out:?}");
    dp.wait_for_log("Secret istio-egress/httpbin-client not found", 1);
    assert!(
        upstream.handshakes().is_empty(),
        "nothing reached the upstream"
    );

    // The Secret appears: the upstream accepts the client certificate in it.
    let (cert, key) = ca.client_files("client");
    cluster.apply(&secret("httpbin-client", &cert, &key, &ca.ca_file()));
    within(Duration::from_secs(5), "the Secret is used", || {
        call(&dp, "GET", BOUND_IP, "/with-secret").http_status() == Some(200)
    });
    let out = call(&dp, "GET", BOUND_IP, "/with-secret");
    assert_eq!(out.body(), "sni=httpbin.test\n", "{out:?}");

    // Replaced by a certificate of a CA the upstream does not trust: applies without restart.
    let other = TestCa::new();
    let (cert, key) = other.client_files("other");
    cluster.apply(&secret("httpbin-client", &cert, &key, &ca.ca_file()));
    within(
        Duration::from_secs(5),
        "the replaced Secret is used",
        || call(&dp, "GET", BOUND_IP, "/replaced").http_status() == Some(503),
    );
    let line = dp.access_log_line("\"GET /replaced HTTP/1.1\" 503");
    assert!(
        line.contains("TLS_error"),
        "the upstream refused our new certificate: {line}"
    );
    assert_eq!(dp.pid(), pid, "no restart");

    // Deleted: 503 again, with the reason, and nothing sent.
    let logged = dp.log_count("DestinationRule TLS unavailable");
    cluster.delete(&["secret", "httpbin-client", "-n", "istio-egress"]);
    within(
        Duration::from_secs(5),
        "the deleted Secret is noticed",
        || dp.log_count("DestinationRule TLS unavailable") > logged,
    );
    let out = call(&dp, "GET", BOUND_IP, "/deleted");
    assert_eq!(out.http_status(), Some(503), "{out:?}");
    let line = dp.access_log_line("\"GET /deleted HTTP/1.1\" 503");
    assert!(line.contains("tls_credentials_unavailable"), "{line}");
}
