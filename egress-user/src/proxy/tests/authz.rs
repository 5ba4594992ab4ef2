//! AuthorizationPolicy enforced by the waypoint: every request on every keep-alive connection
//! (HTTP ports), every connection before it is connected upstream (TCP ports).
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use tokio::{io::AsyncReadExt, time::timeout};

use super::*;
use crate::telemetry::{
    Metrics,
    metrics::{REPORTER, REQUESTS_TOTAL, TCP_CLOSED_TOTAL, TCP_OPENED_TOTAL},
};

/// The seed: `default/sa/sleep` may only GET /get on httpbin.org, `default/sa/admin` anything.
const SEED: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: default}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin.org}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    to: [{operation: {methods: [GET], paths: [/get]}}]
  - from: [{source: {principals: [cluster.local/ns/default/sa/admin]}}]
";

/// The seed's ServiceEntry `default/httpbin.org` (port 80, HTTP), served by `upstream`.
fn seed_service(host: &str, upstream: SocketAddr) -> Service {
    Service {
        namespace: "default".into(),
        name: "httpbin.org".into(),
        ..http_service(host, upstream)
    }
}

/// One AuthorizationPolicy on the test services' ServiceEntry `egress/httpbin`.
fn policy(name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|line| format!("  {line}\n")).collect();
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: egress}}\nspec:\n\
         \x20 targetRefs: [{{kind: ServiceEntry, group: networking.istio.io, name: httpbin}}]\n{spec}"
    )
}

fn post(uri: &str, host: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(uri)
        .header("host", host)
        .header("user-agent", "waypoint-test/1")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request")
}

/// Asserts Envoy's RBAC answer: 403, `RBAC: access denied`, text/plain, `via`.
fn assert_denied(head: &::http::response::Parts, body: &str) {
    assert_eq!(head.status, StatusCode::FORBIDDEN);
    assert_eq!(body, "RBAC: access denied");
    assert_eq!(head.headers["content-type"], "text/plain");
    assert_eq!(head.headers["via"], "1.1 egress-waypoint");
    assert!(
        head.headers.get("connection").is_none(),
        "the connection stays open: {head:?}"
    );
}

// Seed walkthrough (issue 3): sleep GET /get 200, sleep POST /post 403 with
// `rbac_access_denied_matched_policy[none]`, admin POST /post 200.
#[tokio::test]
async fn the_seed_sleep_may_get_and_admin_may_post() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::guarded(seed_service("seed.example", upstream.addr), SEED).await;
    let mut sleep = dataplane.client(CGROUP_SLEEP).await;
    let mut admin = dataplane.client(CGROUP_ADMIN).await;

    let (head, body) = send(&mut sleep, get("/get", "seed.example")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(body.starts_with("GET /get HTTP/1.1\n"), "{body}");

    let (head, body) = send(&mut sleep, post("/post", "seed.example", "a=1")).await;
    assert_denied(&head, &body);
    assert_eq!(
        upstream.requests(),
        ["GET /get"],
        "the upstream saw no POST"
    );

    let (head, body) = send(&mut admin, post("/post", "seed.example", "a=1")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(body.starts_with("POST /post HTTP/1.1\n"), "{body}");
    assert!(body.ends_with("body: a=1\n"), "{body}");

    let lines = dataplane.log_lines(3).await;
    let denied = &lines[1];
    assert!(
        denied.contains(
            "\"POST /post HTTP/1.1\" 403 - rbac_access_denied_matched_policy[none] - \"-\" 0 19 "
        ),
        "{denied}"
    );
    assert!(
        denied.contains(
            "\"-\" \"waypoint-test/1\" \"-\" \"seed.example\" \"-\" outbound|80||seed.example - \
             10.9.8.7:80 127.0.0.1:"
        ),
        "no upstream host: {denied}"
    );
    assert!(
        denied.ends_with(" - - spiffe://cluster.local/ns/default/sa/sleep"),
        "{denied}"
    );
    assert!(lines[0].contains(" 200 - via_upstream "), "{}", lines[0]);
    assert!(lines[2].contains(" 200 - via_upstream "), "{}", lines[2]);

    let labels = |principal, code| {
        Metrics::global().get(
            REQUESTS_TOTAL,
            &[
                ("reporter", REPORTER),
                ("source_principal", principal),
                ("destination_service", "seed.example"),
                ("response_code", code),
                ("response_flags", "-"),
            ],
        )
    };
    assert_eq!(
        labels("spiffe://cluster.local/ns/default/sa/sleep", "403"),
        1
    );
    assert_eq!(
        labels("spiffe://cluster.local/ns/default/sa/sleep", "200"),
        1
    );
    assert_eq!(
        labels("spiffe://cluster.local/ns/default/sa/admin", "200"),
        1
    );
}

// Issue 3, done when: an allowed then a denied request on one keep-alive connection — the
// second gets 403, and the connection still carries a third.
#[tokio::test]
async fn every_request_on_a_keep_alive_connection_is_authorized() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::guarded(seed_service("httpbin.org", upstream.addr), SEED).await;
    let mut sleep = dataplane.client(CGROUP_SLEEP).await;

    let (first, _) = send(&mut sleep, get("/get", "httpbin.org")).await;
    let (second, body) = send(&mut sleep, post("/post", "httpbin.org", "unread body")).await;
    let (third, _) = send(&mut sleep, get("/get", "httpbin.org")).await;
    let (fourth, body4) = send(&mut sleep, get("/headers", "httpbin.org")).await;

    assert_eq!(first.status, StatusCode::OK);
    assert_denied(&second, &body);
    assert_eq!(third.status, StatusCode::OK);
    assert_denied(&fourth, &body4);
    assert_eq!(upstream.requests(), ["GET /get", "GET /get"]);
    assert_eq!(upstream.connections(), 1);
    let lines = dataplane.log_lines(4).await;
    assert!(
        lines[3]
            .contains("\"GET /headers HTTP/1.1\" 403 - rbac_access_denied_matched_policy[none] ")
    );
}

// Policies are per request, not per connection: a reload applies to the next request on a
// connection that is already open.
#[tokio::test]
async fn a_reload_applies_to_the_next_request_on_an_open_connection() {
    let upstream = echo_upstream().await;
    let service = http_service("httpbin.org", upstream.addr);
    let dataplane = Dataplane::start(service.clone()).await;
    let mut web = dataplane.client(CGROUP_WEB).await;

    let (before, _) = send(&mut web, get("/get", "httpbin.org")).await;
    // An ALLOW policy without rules denies everything (istio.io authorization-policy reference).
    let deny_all = policy("deny-all", "action: ALLOW");
    dataplane.services.store(Arc::new(
        ServiceTable::new(vec![service]).with_policies(policies(&deny_all), 2),
    ));
    let (after, body) = send(&mut web, get("/get", "httpbin.org")).await;

    assert_eq!(before.status, StatusCode::OK);
    assert_denied(&after, &body);
    assert_eq!(upstream.requests(), ["GET /get"]);
}

// Design §8.3: one normalized path for matching and forwarding. The access log keeps the path
// as sent (Envoy's `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`).
#[tokio::test]
async fn paths_are_matched_and_forwarded_normalized() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::guarded(seed_service("httpbin.org", upstream.addr), SEED).await;
    let mut sleep = dataplane.client(CGROUP_SLEEP).await;

    for target in [
        "/get/../get",
        "/anything%2F..%2Fget",
        "/%67et",
        "/a/.%2e/get?x=%2F..",
    ] {
        let (head, body) = send(&mut sleep, get(target, "httpbin.org")).await;
        assert_eq!(head.status, StatusCode::OK, "{target}: {body}");
    }
    // `%2F` is a slash to the matcher, so `/get%2F..%2Fpost` is `/post`: denied.
    let (head, body) = send(&mut sleep, get("/get%2F..%2Fpost", "httpbin.org")).await;
    assert_denied(&head, &body);

    assert_eq!(
        upstream.requests(),
        ["GET /get", "GET /get", "GET /get", "GET /get?x=%2F.."],
        "forwarded as matched, the query untouched"
    );
    let lines = dataplane.log_lines(5).await;
    assert!(
        lines[0].contains("\"GET /get/../get HTTP/1.1\" 200 "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("\"GET /anything%2F..%2Fget HTTP/1.1\" 200 "),
        "{}",
        lines[1]
    );
    assert!(
        lines[4].contains(
            "\"GET /get%2F..%2Fpost HTTP/1.1\" 403 - rbac_access_denied_matched_policy[none] "
        ),
        "{}",
        lines[4]
    );
}

// Issue 3: a path that cannot be normalized safely gets 400 (Envoy: `path_normalization_failed`,
// no response flag); the framing was fine, so the connection carries the next request.
#[tokio::test]
async fn a_path_that_cannot_be_normalized_is_400_and_not_forwarded() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::guarded(seed_service("httpbin.org", upstream.addr), SEED).await;
    let mut admin = dataplane.client(CGROUP_ADMIN).await;

    let (head, body) = send(&mut admin, get("/get%00", "httpbin.org")).await;
    assert_eq!(head.status, StatusCode::BAD_REQUEST);
    assert_eq!(body, "Bad Request");
    assert_eq!(head.headers["via"], "1.1 egress-waypoint");
    assert_eq!(upstream.connections(), 0);

    let (next, _) = send(&mut admin, get("/get", "httpbin.org")).await;
    assert_eq!(next.status, StatusCode::OK);
    let lines = dataplane.log_lines(2).await;
    assert!(
        lines[0].contains("\"GET /get%00 HTTP/1.1\" 400 - path_normalization_failed - "),
        "{}",
        lines[0]
    );
    assert_eq!(upstream.requests(), ["GET /get"]);
}

// ztunnel rbac.rs and Envoy's `authenticated` principal: a peer without identity matches no
// principal, so `notPrincipals` matches it.
#[tokio::test]
async fn a_caller_without_identity_matches_not_principals() {
    let upstream = echo_upstream().await;
    let yaml = policy(
        "only-web",
        "action: DENY\nrules:\n- from: [{source: {notPrincipals: [cluster.local/ns/app/sa/web]}}]",
    );
    let dataplane = Dataplane::guarded(http_service("httpbin.org", upstream.addr), &yaml).await;
    let mut anonymous = dataplane.client(CGROUP_ANONYMOUS).await;
    let mut web = dataplane.client(CGROUP_WEB).await;

    let (head, body) = send(&mut anonymous, get("/get", "httpbin.org")).await;
    assert_denied(&head, &body);
    let (head, _) = send(&mut web, get("/get", "httpbin.org")).await;
    assert_eq!(head.status, StatusCode::OK);

    let lines = dataplane.log_lines(2).await;
    assert!(
        lines[0].contains(
            " 403 - rbac_access_denied_matched_policy[ns[egress]-policy[only-web]-rule[0]] - "
        ),
        "{}",
        lines[0]
    );
    assert!(lines[0].ends_with(" - - -"), "no identity: {}", lines[0]);
}

/// A TCP service `egress/httpbin` on port 80 whose one endpoint is `upstream`.
fn tcp_service(host: &str, upstream: SocketAddr) -> Service {
    service(
        host,
        Protocol::Tcp,
        Upstream::Endpoints(vec![upstream]),
        upstream.port(),
    )
}

/// Connects as `cgroup_id` and waits for the waypoint to close the connection unanswered.
async fn closed_unanswered(dataplane: &Dataplane, cgroup_id: u64) {
    let mut stream = dataplane.connect(cgroup_id).await;
    let mut buf = Vec::new();
    let read = timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        read.is_err() || buf.is_empty(),
        "closed without data: {buf:?}"
    );
}

async fn counter_reaches(name: &'static str, host: &str, value: u64) {
    let labels = [
        ("reporter", REPORTER),
        ("source_principal", "spiffe://cluster.local/ns/app/sa/web"),
        ("destination_service", host),
    ];
    for _ in 0..200 {
        if Metrics::global().get(name, &labels) == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{name} for {host}: {} (expected {value})",
        Metrics::global().get(name, &labels)
    );
}

// istio.io authz-tcp task: a DENY rule with `methods` on a TCP port. Envoy's TCP filter drops
// the HTTP-only field, so the rule matches every connection.
#[tokio::test]
async fn a_tcp_deny_closes_the_connection_before_any_upstream_connect() {
    let upstream = tcp_echo_upstream().await;
    let yaml = policy(
        "deny-get",
        "action: DENY\nrules:\n- to: [{operation: {methods: [GET]}}]",
    );
    let dataplane = Dataplane::guarded(tcp_service("tcp-deny.example", upstream.addr), &yaml).await;

    closed_unanswered(&dataplane, CGROUP_WEB).await;

    assert_eq!(upstream.connections(), 0);
    let lines = dataplane.log_lines(1).await;
    let line = &lines[0];
    assert!(
        line.contains(
            "\"- - -\" 0 - - rbac_access_denied_matched_policy[ns[egress]-policy[deny-get]-rule[0]] \
             \"-\" 0 0 "
        ),
        "{line}"
    );
    assert!(
        line.contains("\"-\" outbound|80||tcp-deny.example - 10.9.8.7:80 127.0.0.1:"),
        "no upstream host: {line}"
    );
    counter_reaches(TCP_OPENED_TOTAL, "tcp-deny.example", 1).await;
    counter_reaches(TCP_CLOSED_TOTAL, "tcp-deny.example", 1).await;
}

// istio.io authz-tcp task: an ALLOW rule with `methods` on a TCP port is dropped whole by
// Envoy's TCP filter, so nothing is allowed; the same policy allows with `ports` only.
#[tokio::test]
async fn a_tcp_allow_with_methods_denies() {
    let upstream = tcp_echo_upstream().await;
    let yaml = policy(
        "allow-get",
        "action: ALLOW\nrules:\n- from: [{source: {principals: [cluster.local/ns/app/sa/web]}}]\n  \
         to: [{operation: {methods: [GET], ports: ['80']}}]",
    );
    let dataplane =
        Dataplane::guarded(tcp_service("tcp-allow.example", upstream.addr), &yaml).await;

    closed_unanswered(&dataplane, CGROUP_WEB).await;

    assert_eq!(upstream.connections(), 0);
    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains("\"- - -\" 0 - - rbac_access_denied_matched_policy[none] \"-\" 0 0 "),
        "{}",
        lines[0]
    );

    // Without `methods` the rule applies on TCP and the caller is let through.
    let yaml = policy(
        "allow-port",
        "action: ALLOW\nrules:\n- from: [{source: {principals: [cluster.local/ns/app/sa/web]}}]\n  \
         to: [{operation: {ports: ['80']}}]",
    );
    let service = tcp_service("tcp-allow.example", upstream.addr);
    dataplane.services.store(Arc::new(
        ServiceTable::new(vec![service]).with_policies(policies(&yaml), 2),
    ));
    let mut stream = dataplane.connect(CGROUP_WEB).await;
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"ping")
        .await
        .expect("write");
    let mut echoed = [0u8; 4];
    timeout(WAIT, stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping");
    assert_eq!(upstream.connections(), 1);
    // And someone else is still closed out.
    closed_unanswered(&dataplane, CGROUP_ANONYMOUS).await;
    assert_eq!(upstream.connections(), 1);
}
