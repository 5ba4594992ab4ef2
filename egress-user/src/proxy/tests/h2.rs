//! HTTP/2 and gRPC ports through the in-process waypoint: h2c with prior knowledge from the
//! client, per-request authorization, an HTTP/2 upstream, gRPC statuses for local replies and
//! in the metrics, and a rapid-reset flood cut off with GOAWAY.
use std::time::Instant;

use http_body_util::Empty;
use hyper::{body::Frame, client::conn::http2 as client_h2, server::conn::http2 as server_h2};
use hyper_util::rt::TokioExecutor;

use super::*;
use crate::telemetry::{Metrics, metrics::REQUESTS_TOTAL};

/// An HTTP/2-only upstream that answers every request like a gRPC server: 200, the request's
/// version and path in the body, `grpc-status: 0` in the trailers.
async fn grpc_upstream() -> TestUpstream {
    let (listener, addr, connections) = listen().await;
    let accepted = connections.clone();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    seen.lock().expect("requests").push(format!(
                        "{:?} {} {}",
                        req.version(),
                        req.method(),
                        req.uri().path()
                    ));
                    let mut trailers = ::http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().expect("value"));
                    let frames = vec![
                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .expect("response"),
                    )
                }
            });
            tokio::spawn(
                server_h2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    TestUpstream {
        addr,
        connections,
        requests,
    }
}

fn grpc_service(host: &str, upstream: SocketAddr) -> Service {
    Service {
        protocol: Protocol::Grpc,
        port_name: "grpc".into(),
        ..http_service(host, upstream)
    }
}

/// An h2c prior-knowledge client connection as an application in `cgroup_id`.
async fn h2_client(dp: &Dataplane, cgroup_id: u64) -> client_h2::SendRequest<Empty<Bytes>> {
    let stream = dp.connect(cgroup_id).await;
    let (sender, conn) = client_h2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

fn grpc_call(host: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::post(format!("http://{host}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::new())
        .expect("request")
}

#[tokio::test]
async fn grpc_calls_are_authorized_one_by_one_and_forwarded_over_http2() {
    let upstream = grpc_upstream().await;
    let dp = Dataplane::guarded(
        grpc_service("grpc.test", upstream.addr),
        "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: egress}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin.Admin/*]}}]}]
",
    )
    .await;
    let mut client = h2_client(&dp, CGROUP_WEB).await;

    let response = timeout(
        WAIT,
        client.send_request(grpc_call("grpc.test", "/echo.Echo/Say")),
    )
    .await
    .expect("in time")
    .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), ::http::Version::HTTP_2);
    let collected = timeout(WAIT, response.into_body().collect())
        .await
        .expect("in time")
        .expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");

    // On the same connection: a denied method is PERMISSION_DENIED, as Envoy answers gRPC.
    let denied = timeout(
        WAIT,
        client.send_request(grpc_call("grpc.test", "/admin.Admin/Drop")),
    )
    .await
    .expect("in time")
    .expect("response");
    assert_eq!(denied.status(), StatusCode::OK);
    assert_eq!(denied.headers()["grpc-status"], "7");
    assert_eq!(denied.headers()["grpc-message"], "RBAC: access denied");

    assert_eq!(upstream.requests(), ["HTTP/2.0 POST /echo.Echo/Say"]);
    let lines = dp.log_lines(2).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"POST /echo.Echo/Say HTTP/2\" 200 - via_upstream")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("\"POST /admin.Admin/Drop HTTP/2\" 200 - rbac_access_denied_matched_policy[ns[egress]-policy[no-admin]-rule[0]]")),
        "{lines:?}"
    );
    let count = |protocol: &str, status: &str| {
        Metrics::global().get(
            REQUESTS_TOTAL,
            &[
                ("destination_service", "grpc.test"),
                ("request_protocol", protocol),
                ("grpc_response_status", status),
            ],
        )
    };
    // Istio labels gRPC calls `request_protocol="grpc"`, never `http`.
    assert_eq!(count("grpc", "0"), 1);
    assert_eq!(count("grpc", "7"), 1);
    assert_eq!(count("http", "0") + count("http", "7"), 0);
}

#[tokio::test]
async fn http1_still_works_on_a_grpc_port() {
    let upstream = echo_upstream().await;
    let dp = Dataplane::start(grpc_service("grpc1.test", upstream.addr)).await;
    let mut stream = dp.connect(CGROUP_WEB).await;
    let answer = raw_exchange(
        &mut stream,
        b"GET /plain HTTP/1.1\r\nHost: grpc1.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    // The upstream speaks HTTP/1 only: the waypoint's HTTP/2 upstream fails, answered 503.
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
}

/// A frame header: length, type, flags, stream id.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test]
async fn a_rapid_reset_flood_gets_goaway() {
    let upstream = grpc_upstream().await;
    let dp = Dataplane::start(grpc_service("flood.test", upstream.addr)).await;
    let mut stream = dp.connect(CGROUP_WEB).await;
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    // GET / on authority "x": static-table indexes and one literal.
    let headers = [0x82, 0x86, 0x84, 0x41, 0x01, b'x'];
    for n in 0..2000u32 {
        let id = 2 * n + 1;
        flood.extend(frame(0x1, 0x4, id, &headers)); // HEADERS, END_HEADERS
        flood.extend(frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let _ = stream.write_all(&flood).await;
    let mut got = Vec::new();
    let _ = timeout(WAIT, stream.read_to_end(&mut got)).await;
    // ENHANCE_YOUR_CALM.
    assert_eq!(
        goaway_code(&got),
        Some(0xb),
        "{} bytes from the server",
        got.len()
    );
    assert!(upstream.requests().len() < 2000, "the flood was cut short");
}

/// The error code of the first GOAWAY among the server's frames, after its preface SETTINGS.
fn goaway_code(got: &[u8]) -> Option<u32> {
    let mut at = 0;
    let mut goaway = None;
    while at + 9 <= got.len() {
        let len = (usize::from(got[at]) << 16)
            | (usize::from(got[at + 1]) << 8)
            | usize::from(got[at + 2]);
        if got[at + 3] == 0x7 && at + 9 + 8 <= got.len() {
            goaway = Some(u32::from_be_bytes(
                got[at + 13..at + 17].try_into().expect("4 bytes"),
            ));
        }
        at += 9 + len;
        if goaway.is_some() {
            break;
        }
    }
    goaway
}

#[tokio::test]
async fn a_connection_that_never_completes_its_headers_is_closed_at_the_header_read_timeout() {
    let upstream = grpc_upstream().await;
    let config = WaypointConfig {
        header_read_timeout: Duration::from_millis(300),
        ..WaypointConfig::default()
    };
    let dp = Dataplane::with(
        grpc_service("slow.test", upstream.addr),
        config,
        AccessLogFormat::Text,
    )
    .await;
    // GET / on authority "x", as in the flood above, without END_HEADERS: a CONTINUATION
    // that never comes.
    let partial = frame(0x1, 0x0, 1, &[0x82, 0x86, 0x84, 0x41, 0x01, b'x']);
    for opening in [Vec::new(), partial] {
        let mut stream = dp.connect(CGROUP_WEB).await;
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        hello.extend(&opening);
        stream.write_all(&hello).await.expect("preface");
        let mut got = Vec::new();
        let started = Instant::now();
        timeout(WAIT, stream.read_to_end(&mut got))
            .await
            .expect("closed before the wait ran out")
            .expect("read");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "closed only at the timeout"
        );
        // NO_ERROR: a graceful GOAWAY, as for an idle HTTP/1 connection's close.
        assert_eq!(
            goaway_code(&got),
            Some(0),
            "{} bytes from the server",
            got.len()
        );
    }
    assert!(upstream.requests().is_empty());
}
