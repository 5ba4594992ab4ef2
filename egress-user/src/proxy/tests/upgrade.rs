//! WebSocket and other upgrades through the in-process waypoint: the handshake is authorized
//! like any request, the tunnel is made only after the upstream's 101, and nothing the client
//! sends early reaches an upstream that did not switch protocols.
use super::*;

const HANDSHAKE: &str = "GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A WebSocket-ish upstream: reads the handshake head, records it and any bytes that came
/// before its 101, answers 101, then echoes.
struct SwitchingUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    early: Arc<Mutex<Vec<u8>>>,
}

async fn switching_upstream() -> SwitchingUpstream {
    let (listener, addr, _) = listen().await;
    let heads = Arc::new(Mutex::new(Vec::new()));
    let early = Arc::new(Mutex::new(Vec::new()));
    let (seen_heads, seen_early) = (heads.clone(), early.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (heads, early) = (seen_heads.clone(), seen_early.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                heads
                    .lock()
                    .expect("heads")
                    .push(String::from_utf8_lossy(&buf[..end]).into());
                // Give early bytes, if any were forwarded, the time to arrive before the 101.
                sleep(Duration::from_millis(100)).await;
                if let Ok(Ok(n)) = timeout(Duration::from_millis(1), stream.read(&mut chunk)).await
                {
                    buf.extend_from_slice(&chunk[..n]);
                }
                early.lock().expect("early").extend_from_slice(&buf[end..]);
                let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                    Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    SwitchingUpstream { addr, heads, early }
}

/// Reads from `stream` until `needle` has arrived (bounded).
async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = timeout(WAIT, async {
        while !String::from_utf8_lossy(&got).contains(needle) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn an_allowed_websocket_is_tunnelled_after_the_upstreams_101_and_logged_once() {
    let upstream = switching_upstream().await;
    let dp = Dataplane::start(http_service("ws.test", upstream.addr)).await;
    let mut stream = dp.connect(CGROUP_WEB).await;
    // The handshake and a frame's worth of bytes in one write, before any answer.
    let mut first = HANDSHAKE.as_bytes().to_vec();
    first.extend_from_slice(b"EARLY");
    stream.write_all(&first).await.expect("write");
    let answer = read_until(&mut stream, "EARLY").await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("upgrade: websocket"),
        "{answer}"
    );
    assert!(answer.contains("via: 1.1 egress-waypoint"), "{answer}");
    assert!(
        answer.ends_with("EARLY"),
        "the early bytes arrive after the 101: {answer}"
    );
    assert!(
        upstream.early.lock().expect("early").is_empty(),
        "no client byte reached the upstream before its 101"
    );
    let heads = upstream.heads.lock().expect("heads").clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_ascii_lowercase();
    assert!(
        head.contains("upgrade: websocket") && head.contains("connection: upgrade"),
        "{head}"
    );
    assert!(
        head.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{head}"
    );

    stream.write_all(b"both ways").await.expect("write");
    assert!(
        read_until(&mut stream, "both ways")
            .await
            .ends_with("both ways")
    );
    assert!(
        dp.log.lines().is_empty(),
        "logged when the tunnel ends, not before"
    );
    drop(stream);
    let lines = dp.log_lines(1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    // "EARLY" and "both ways" each way.
    assert!(
        lines[0].contains("\"GET /ws HTTP/1.1\" 101 - via_upstream - \"-\" 14 14 "),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn early_data_never_reaches_an_upstream_that_does_not_switch() {
    let upstream = echo_upstream().await;
    let dp = Dataplane::start(http_service("ws.test", upstream.addr)).await;
    let mut stream = dp.connect(CGROUP_WEB).await;
    let smuggled = format!("{HANDSHAKE}GET /smuggled HTTP/1.1\r\nHost: ws.test\r\n\r\n");
    let answer = raw_exchange(&mut stream, smuggled.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "one answer: {answer}"
    );
    assert_eq!(upstream.requests(), ["GET /ws"]);
}

#[tokio::test]
async fn a_denied_upgrade_is_403_and_nothing_reaches_the_upstream() {
    let upstream = switching_upstream().await;
    let dp = Dataplane::guarded(
        http_service("ws.test", upstream.addr),
        "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-ws, namespace: egress}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin}]
  action: DENY
  rules: [{to: [{operation: {paths: [/ws]}}]}]
",
    )
    .await;
    let mut stream = dp.connect(CGROUP_WEB).await;
    let answer = raw_exchange(&mut stream, format!("{HANDSHAKE}EARLY").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(answer.ends_with("RBAC: access denied"), "{answer}");
    assert!(upstream.heads.lock().expect("heads").is_empty());
    let lines = dp.log_lines(1).await;
    assert!(
        lines[0].contains(
            " 403 - rbac_access_denied_matched_policy[ns[egress]-policy[no-ws]-rule[0]] "
        ),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn h2c_upgrades_are_served_as_http1_and_others_refused() {
    let upstream = echo_upstream().await;
    let dp = Dataplane::start(http_service("ws.test", upstream.addr)).await;
    let mut stream = dp.connect(CGROUP_WEB).await;
    let h2c = "GET /h2c HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
        Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let answer = raw_exchange(&mut stream, h2c.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let echoed = answer.to_ascii_lowercase();
    assert!(
        !echoed.contains("\nupgrade:") && !echoed.contains("http2-settings"),
        "{answer}"
    );

    let mut stream = dp.connect(CGROUP_WEB).await;
    let other =
        "GET /tls HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: TLS/1.2\r\n\r\n";
    let answer = raw_exchange(&mut stream, other.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert_eq!(upstream.requests(), ["GET /h2c"]);
    let lines = dp.log_lines(2).await;
    assert!(lines[1].contains(" 403 - upgrade_failed "), "{}", lines[1]);
}
