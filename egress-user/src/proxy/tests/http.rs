//! HTTP ports through the waypoint.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use tokio::{io::AsyncReadExt, net::TcpListener, time::timeout};

use super::*;
use crate::{
    model::ServiceTable,
    telemetry::{AdminState, serve_admin},
};

#[tokio::test]
async fn get_is_forwarded_with_via_and_logged() {
    let upstream = echo_upstream().await;
    // resolution NONE: the endpoint is the address the application dialled, on targetPort.
    let mut dataplane = Dataplane::start(service(
        "httpbin.org",
        Protocol::Http,
        Upstream::OriginalDst,
        upstream.addr.port(),
    ))
    .await;
    dataplane.dst = "127.0.0.1:80".parse().expect("dst");
    let mut client = dataplane.client(CGROUP_WEB).await;
    let req = Request::get("/anything?x=1")
        .header("host", "httpbin.org")
        .header("user-agent", "curl/8.5.0")
        .header("x-request-id", "req-1")
        .body(Full::new(Bytes::new()))
        .expect("request");

    let (head, body) = send(&mut client, req).await;

    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.headers["via"],
        "1.0 upstream-cache, 1.1 egress-waypoint"
    );
    assert!(body.starts_with("GET /anything?x=1 HTTP/1.1\n"), "{body}");
    assert!(body.contains("\nhost: httpbin.org\n"), "{body}");
    assert!(body.contains("\nvia: 1.1 egress-waypoint\n"), "{body}");
    let lines = dataplane.log_lines(1).await;
    let line = &lines[0];
    let expected = format!(
        "\"GET /anything?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 0 {} ",
        body.len()
    );
    assert!(line.contains(&expected), "{line}");
    let expected = format!(
        "\"-\" \"curl/8.5.0\" \"req-1\" \"httpbin.org\" \"{}\" outbound|80||httpbin.org 127.0.0.1:",
        upstream.addr
    );
    assert!(line.contains(&expected), "{line}");
    assert!(
        line.contains(" 127.0.0.1:80 127.0.0.1:"),
        "original destination: {line}"
    );
    assert!(
        line.ends_with(" - - spiffe://cluster.local/ns/app/sa/web"),
        "{line}"
    );
    assert!(
        line.starts_with('[') && line[1..25].ends_with('Z'),
        "{line}"
    );
}

#[tokio::test]
async fn two_requests_share_one_client_and_one_upstream_connection() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::start(http_service("httpbin.org", upstream.addr)).await;
    let mut client = dataplane.client(CGROUP_ANONYMOUS).await;

    let (first, _) = send(&mut client, get("/status/201", "httpbin.org")).await;
    let (second, body) = send(&mut client, get("/two", "httpbin.org")).await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::OK);
    assert!(body.starts_with("GET /two "), "{body}");
    assert_eq!(
        upstream.connections(),
        1,
        "the upstream connection is pooled"
    );
    let lines = dataplane.log_lines(2).await;
    assert!(
        lines[0].contains("\"GET /status/201 HTTP/1.1\" 201 "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("\"GET /two HTTP/1.1\" 200 "),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].ends_with(" -"),
        "no identity is logged as -: {}",
        lines[1]
    );
    assert!(lines[1].contains(" 10.9.8.7:80 127.0.0.1:"), "{}", lines[1]);
}

/// Waits until the waypoint's stash of idle upstream connections holds `n`.
async fn stashed(dataplane: &Dataplane, n: usize) {
    for _ in 0..200 {
        if dataplane.waypoint.client.stashed() == n {
            return;
        }
        sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {n} stashed upstream connections, got {}",
        dataplane.waypoint.client.stashed()
    );
}

#[tokio::test]
async fn a_client_that_opens_a_connection_per_request_still_reuses_the_upstream_connection() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::start(http_service("httpbin.org", upstream.addr)).await;

    for round in 0..3 {
        let mut client = dataplane.client(CGROUP_ANONYMOUS).await;
        let (head, body) = send(&mut client, get(&format!("/r{round}"), "httpbin.org")).await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(body.starts_with(&format!("GET /r{round} ")), "{body}");
        drop(client);
        // The downstream connection ended: its upstream connection waits for the next one.
        stashed(&dataplane, 1).await;
    }
    assert_eq!(
        upstream.connections(),
        1,
        "one upstream connection for all three"
    );
    assert_eq!(dataplane.log_lines(3).await.len(), 3);
}

#[tokio::test]
async fn an_upstream_connection_the_upstream_closed_is_replaced_not_reused() {
    // Answers keep-alive, then closes: the waypoint must not send the next request there.
    let upstream =
        scripted_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
    let dataplane = Dataplane::start(http_service("closing.example", upstream.addr)).await;
    let mut client = dataplane.client(CGROUP_WEB).await;

    for round in 1..=3 {
        let (head, body) = send(&mut client, get("/", "closing.example")).await;
        assert_eq!(head.status, StatusCode::OK, "round {round}");
        assert_eq!(body, "ok");
        assert_eq!(upstream.connections(), round);
        // Time for the upstream's FIN to arrive.
        sleep(Duration::from_millis(100)).await;
    }
    let lines = dataplane.log_lines(3).await;
    assert!(
        lines.iter().all(|l| l.contains(" 200 - via_upstream ")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_cross_the_waypoint() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::start(http_service("httpbin.org", upstream.addr)).await;
    let mut stream = dataplane.connect(CGROUP_WEB).await;

    let response = raw_exchange(
        &mut stream,
        b"POST /post HTTP/1.1\r\nHost: httpbin.org\r\nConnection: close, x-secret\r\n\
          X-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\n\
          Transfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;

    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        !head.contains("x-upstream-hop"),
        "named by the upstream's Connection: {head}"
    );
    assert!(!head.contains("keep-alive: timeout=5"), "{head}");
    assert!(
        head.contains("via: 1.0 upstream-cache, 1.1 egress-waypoint"),
        "{head}"
    );
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "\nte:",
        "connection:",
    ] {
        assert!(!body.contains(gone), "{gone} reached the upstream: {body}");
    }
    assert!(body.contains("x-kept: yes"), "{body}");
    assert!(
        body.contains("body: hello"),
        "the chunked body is forwarded: {body}"
    );
}

#[tokio::test]
async fn absolute_form_is_forwarded_in_origin_form_with_its_authority() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::start(http_service("httpbin.org", upstream.addr)).await;
    let mut stream = dataplane.connect(CGROUP_WEB).await;

    let response = raw_exchange(
        &mut stream,
        b"GET http://httpbin.org/get?a=b HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n",
    )
    .await;

    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("\r\n\r\nGET /get?a=b HTTP/1.1\n"),
        "{response}"
    );
    assert!(response.contains("\nhost: httpbin.org\n"), "{response}");
}

#[tokio::test]
async fn duplicate_host_is_rejected_without_an_upstream_connection() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::start(http_service("httpbin.org", upstream.addr)).await;
    let mut stream = dataplane.connect(CGROUP_WEB).await;

    let response = raw_exchange(
        &mut stream,
        b"GET / HTTP/1.1\r\nHost: httpbin.org\r\nHost: evil.example\r\n\r\n",
    )
    .await;

    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request"),
        "{response}"
    );
    assert!(response.contains("via: 1.1 egress-waypoint"), "{response}");
    assert_eq!(upstream.connections(), 0);
    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains(" 400 DPE duplicate_host_header "),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn upstream_down_is_503_uf_with_via() {
    let down = closed_port().await;
    let dataplane = Dataplane::start(http_service("down.example", down)).await;
    let mut client = dataplane.client(CGROUP_WEB).await;

    let (head, body) = send(&mut client, get("/", "down.example")).await;

    assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(head.headers["via"], "1.1 egress-waypoint");
    assert_eq!(
        body,
        "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
    );
    let lines = dataplane.log_lines(1).await;
    let expected = format!(
        "\"GET / HTTP/1.1\" 503 UF upstream_reset_before_response_started{{connection_failure}} - \"{}\" 0 {} ",
        std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
        body.len()
    );
    assert!(lines[0].contains(&expected), "{}", lines[0]);
    assert!(
        lines[0].contains(&format!("\"{down}\" outbound|80||down.example - ")),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn upstream_reset_before_headers_is_503_uc() {
    let upstream = scripted_upstream(b"", false).await;
    let dataplane = Dataplane::start(http_service("reset.example", upstream.addr)).await;
    let mut client = dataplane.client(CGROUP_WEB).await;

    let (head, body) = send(&mut client, get("/", "reset.example")).await;

    assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(head.headers["via"], "1.1 egress-waypoint");
    assert!(
        body.ends_with("reset reason: connection termination"),
        "{body}"
    );
    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0]
            .contains(" 503 UC upstream_reset_before_response_started{connection_termination} "),
        "{}",
        lines[0]
    );
}

/// A waypoint whose stream idle timeout is short.
async fn impatient(upstream: SocketAddr) -> Dataplane {
    let config = WaypointConfig {
        idle_timeout: Duration::from_millis(500),
        ..WaypointConfig::default()
    };
    Dataplane::with(
        http_service("slow.example", upstream),
        config,
        AccessLogFormat::Text,
    )
    .await
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_504_ut() {
    let upstream = scripted_upstream(b"", true).await;
    let dataplane = impatient(upstream.addr).await;
    let mut client = dataplane.client(CGROUP_WEB).await;

    let (head, body) = send(&mut client, get("/", "slow.example")).await;

    assert_eq!(head.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(head.headers["via"], "1.1 egress-waypoint");
    assert_eq!(body, "upstream request timeout");
    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains(" 504 UT upstream_response_timeout "),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn a_body_cut_after_the_headers_is_logged_uc() {
    let upstream =
        scripted_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", false).await;
    let dataplane = impatient(upstream.addr).await;
    let mut client = dataplane.client(CGROUP_WEB).await;

    let response = timeout(WAIT, client.send_request(get("/", "slow.example")))
        .await
        .expect("response in time")
        .expect("response head");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["via"], "1.1 egress-waypoint");
    let body = timeout(WAIT, response.into_body().collect())
        .await
        .expect("body ends in time");
    assert!(body.is_err(), "the client sees the truncation");

    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains(
            " 200 UC upstream_reset_after_response_started{connection_termination} - \"-\" 0 5 "
        ),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn a_body_that_stalls_is_ended_by_the_idle_timeout() {
    let upstream =
        scripted_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", true).await;
    let dataplane = impatient(upstream.addr).await;
    let mut client = dataplane.client(CGROUP_WEB).await;

    let response = timeout(WAIT, client.send_request(get("/", "slow.example")))
        .await
        .expect("response in time")
        .expect("response head");
    let body = timeout(WAIT, response.into_body().collect())
        .await
        .expect("body ends in time");
    assert!(body.is_err(), "the client sees the truncation");

    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains(" 200 SI stream_idle_timeout - \"-\" 0 5 "),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn head_responses_are_logged_complete() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::start(http_service("httpbin.org", upstream.addr)).await;
    let mut client = dataplane.client(CGROUP_WEB).await;
    let req = Request::head("/get")
        .header("host", "httpbin.org")
        .body(Full::new(Bytes::new()))
        .expect("request");

    let (head, body) = send(&mut client, req).await;

    assert_eq!(head.status, StatusCode::OK);
    assert!(body.is_empty());
    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains("\"HEAD /get HTTP/1.1\" 200 - via_upstream "),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn no_healthy_upstream_is_503_uh() {
    let dataplane = Dataplane::start(service(
        "dns.example",
        Protocol::Http,
        Upstream::Endpoints(vec![]),
        80,
    ))
    .await;
    let mut client = dataplane.client(CGROUP_WEB).await;

    let (head, body) = send(&mut client, get("/", "dns.example")).await;

    assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(head.headers["via"], "1.1 egress-waypoint");
    assert_eq!(body, "no healthy upstream");
    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains(" 503 UH no_healthy_upstream "),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn a_connection_without_origin_is_closed_and_never_proxied() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::start(http_service("httpbin.org", upstream.addr)).await;
    // Connect straight to the waypoint: no origin was recorded for this client.
    let mut stream = tokio::net::TcpStream::connect(dataplane.addr)
        .await
        .expect("connect");

    let response = raw_exchange(&mut stream, b"GET / HTTP/1.1\r\nHost: httpbin.org\r\n\r\n").await;

    assert_eq!(response, "", "closed without an answer");
    assert_eq!(upstream.connections(), 0);
    assert!(dataplane.log.lines().is_empty());
}

#[tokio::test]
async fn oversized_headers_are_rejected_with_431() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::start(http_service("httpbin.org", upstream.addr)).await;
    let mut stream = dataplane.connect(CGROUP_WEB).await;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: httpbin.org\r\nX-Big: {}\r\n\r\n",
        "a".repeat(62 * 1024)
    );

    let response = raw_exchange(&mut stream, request.as_bytes()).await;

    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert_eq!(upstream.connections(), 0);
    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains("\"- - -\" 431 DPE http1.headers_too_large "),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn an_incomplete_request_head_times_out() {
    let upstream = echo_upstream().await;
    let config = WaypointConfig {
        header_read_timeout: Duration::from_millis(200),
        ..WaypointConfig::default()
    };
    let dataplane = Dataplane::with(
        http_service("httpbin.org", upstream.addr),
        config,
        AccessLogFormat::Text,
    )
    .await;
    let mut stream = dataplane.connect(CGROUP_WEB).await;

    let response = raw_exchange(&mut stream, b"GET / HTTP/1.1\r\nHost: htt").await;

    assert!(!response.contains("200 OK"), "{response}");
    assert_eq!(upstream.connections(), 0);
}

#[tokio::test]
async fn json_access_log_has_envoy_keys() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::with(
        http_service("json.example", upstream.addr),
        WaypointConfig::default(),
        AccessLogFormat::Json,
    )
    .await;
    let mut client = dataplane.client(CGROUP_WEB).await;
    let (head, _) = send(&mut client, get("/status/418", "json.example")).await;
    assert_eq!(head.status.as_u16(), 418);

    let lines = dataplane.log_lines(1).await;
    let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/status/418");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["response_code"], 418);
    assert_eq!(line["response_code_details"], "via_upstream");
    assert_eq!(line["authority"], "json.example");
    assert_eq!(line["upstream_host"], upstream.addr.to_string());
    assert_eq!(line["upstream_cluster"], "outbound|80||json.example");
    assert_eq!(line["downstream_local_address"], "10.9.8.7:80");
    assert_eq!(
        line["downstream_peer_principal"],
        "spiffe://cluster.local/ns/app/sa/web"
    );
    assert_eq!(line["request_id"], serde_json::Value::Null);
}

async fn admin_get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to admin");
    let (mut sender, conn) = handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let (head, body) = send(&mut sender, get(path, "admin")).await;
    (head.status, body)
}

#[tokio::test]
async fn admin_reports_readiness_and_request_counters() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::start(http_service("metrics.example", upstream.addr)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let admin = listener.local_addr().expect("admin addr");
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(serve_admin(
        listener,
        Arc::new(AdminState {
            ready: ready.clone(),
            services: Arc::new(ArcSwap::from_pointee(ServiceTable::default())),
            kernel_counters: Arc::new(|| vec![("peer_recorded", 3)]),
            pods: None,
        }),
        crate::drain::always_open(),
    ));

    assert_eq!(
        admin_get(admin, "/healthz/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    ready.store(true, Ordering::SeqCst);
    assert_eq!(admin_get(admin, "/healthz/ready").await.0, StatusCode::OK);

    let mut client = dataplane.client(CGROUP_WEB).await;
    send(&mut client, get("/", "metrics.example")).await;
    dataplane.log_lines(1).await;

    let (status, metrics) = admin_get(admin, "/stats/prometheus").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("egress_bpf_peer_recorded_total 3\n"),
        "{metrics}"
    );
    // Istio's standard labels, as its waypoint reports a ServiceEntry destination.
    let connection = "reporter=\"waypoint\",source_workload=\"web\",\
        source_canonical_service=\"web\",source_canonical_revision=\"latest\",\
        source_workload_namespace=\"app\",\
        source_principal=\"spiffe://cluster.local/ns/app/sa/web\",source_app=\"unknown\",\
        source_version=\"unknown\",source_cluster=\"unknown\",\
        destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",\
        destination_principal=\"unknown\",destination_app=\"unknown\",\
        destination_version=\"unknown\",destination_service=\"metrics.example\",\
        destination_canonical_service=\"unknown\",destination_canonical_revision=\"unknown\",\
        destination_service_name=\"metrics.example\",destination_service_namespace=\"egress\",\
        destination_cluster=\"unknown\"";
    let request = format!(
        "{connection},request_protocol=\"http\",connection_security_policy=\"none\",\
         response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\""
    );
    for line in [
        format!("istio_requests_total{{{request}}} 1"),
        format!("istio_request_duration_milliseconds_count{{{request}}} 1"),
        format!("istio_request_bytes_count{{{request}}} 1"),
        format!("istio_response_bytes_count{{{request}}} 1"),
        format!(
            "istio_tcp_connections_opened_total{{{connection},request_protocol=\"tcp\",\
             response_flags=\"-\",connection_security_policy=\"none\"}} 1"
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn the_connection_limit_closes_extra_connections() {
    let upstream = echo_upstream().await;
    let config = WaypointConfig {
        max_connections: 1,
        ..WaypointConfig::default()
    };
    let dataplane = Dataplane::with(
        http_service("httpbin.org", upstream.addr),
        config,
        AccessLogFormat::Text,
    )
    .await;
    let mut first = dataplane.client(CGROUP_WEB).await;
    send(&mut first, get("/", "httpbin.org")).await;
    let rejected = || {
        crate::telemetry::Metrics::global().get(
            super::super::limits::CONNECTIONS_REJECTED_TOTAL,
            &[("reason", "max_connections")],
        )
    };
    let before = rejected();

    let mut second = dataplane.connect(CGROUP_WEB).await;
    let mut buf = [0u8; 16];
    let read = timeout(WAIT, second.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the second connection is closed: {read:?}"
    );
    assert!(rejected() > before, "counted as rejected at the limit");

    send(&mut first, get("/", "httpbin.org")).await;
}
