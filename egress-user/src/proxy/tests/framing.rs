//! Ambiguous framing is refused, never forwarded (design §8, invariant 3): raw bytes in, the
//! waypoint's answer and access log out, and an upstream that records every byte it receives.
use std::sync::{Arc, Mutex};

use super::*;

/// An upstream that records every byte each connection sends. With `answer`, it answers each
/// read with a 200 (the requests these tests send arrive in one read).
struct Recorder {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    async fn start(answer: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let connections = received.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let connections = connections.clone();
                let index = {
                    let mut all = connections.lock().expect("recorder lock");
                    all.push(Vec::new());
                    all.len() - 1
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 65536];
                    while let Ok(Ok(n @ 1..)) = timeout(WAIT, stream.read(&mut buf)).await {
                        connections.lock().expect("recorder lock")[index]
                            .extend_from_slice(&buf[..n]);
                        if answer {
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(ok).await.is_err() {
                                break;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, received }
    }

    /// What each connection received so far, as text.
    fn received(&self) -> Vec<String> {
        self.received
            .lock()
            .expect("recorder lock")
            .iter()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .collect()
    }
}

/// Sends `request` as one write and returns the waypoint's whole answer (it must close).
async fn exchange(dataplane: &Dataplane, request: &[u8]) -> String {
    let mut stream = dataplane.connect(CGROUP_WEB).await;
    raw_exchange(&mut stream, request).await
}

/// Asserts that `request` is answered `status` by the waypoint itself (with `via`, closing the
/// connection), logged as a downstream protocol error with `details`, and never reaches the
/// upstream.
async fn assert_refused(request: &[u8], status: &str, details: &str) {
    let upstream = Recorder::start(true).await;
    let dataplane = Dataplane::start(http_service("h", upstream.addr)).await;

    let response = exchange(&dataplane, request).await;

    let case = String::from_utf8_lossy(request);
    assert!(
        response.starts_with(&format!("HTTP/1.1 {status} ")),
        "{case:?} → {response}"
    );
    let head = response.to_ascii_lowercase();
    assert!(head.contains("\r\nvia: 1.1 egress-waypoint\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains(&format!("\"- - -\" {status} DPE {details} ")),
        "{case:?} → {}",
        lines[0]
    );
    assert_eq!(upstream.received(), Vec::<String>::new(), "{case:?}");
}

#[tokio::test]
async fn content_length_with_chunked_is_400_either_order() {
    for request in [
        &b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        assert_refused(
            request,
            "400",
            "http1.content_length_and_chunked_not_allowed",
        )
        .await;
    }
}

#[tokio::test]
async fn repeated_or_malformed_content_length_is_400() {
    for (length, details) in [
        (
            "Content-Length: 5\r\nContent-Length: 5",
            "http1.codec_error{duplicate_content_length}",
        ),
        (
            "Content-Length: 5\r\nContent-Length: 3",
            "http1.codec_error{duplicate_content_length}",
        ),
        (
            "Content-Length: 5, 5",
            "http1.codec_error{invalid_content_length}",
        ),
        (
            "Content-Length: +5",
            "http1.codec_error{invalid_content_length}",
        ),
        (
            "Content-Length: -1",
            "http1.codec_error{invalid_content_length}",
        ),
        (
            "Content-Length: 99999999999999999999",
            "http1.codec_error{invalid_content_length}",
        ),
    ] {
        let request = format!("POST / HTTP/1.1\r\nHost: h\r\n{length}\r\n\r\nhello");
        assert_refused(request.as_bytes(), "400", details).await;
    }
}

#[tokio::test]
async fn transfer_encoding_other_than_one_chunked_is_501() {
    for coding in [
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, gzip",
        "Transfer-Encoding: identity",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
    ] {
        let request =
            format!("POST / HTTP/1.1\r\nHost: h\r\n{coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        assert_refused(request.as_bytes(), "501", "http1.invalid_transfer_encoding").await;
    }
}

#[tokio::test]
async fn transfer_encoding_in_http10_is_400() {
    assert_refused(
        b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "400",
        "http1.invalid_transfer_encoding{http/1.0}",
    )
    .await;
}

#[tokio::test]
async fn duplicate_host_is_400() {
    assert_refused(
        b"GET / HTTP/1.1\r\nHost: h\r\nHost: evil.example\r\n\r\n",
        "400",
        "duplicate_host_header",
    )
    .await;
}

#[tokio::test]
async fn bad_chunk_framing_is_400_before_the_head_goes_upstream() {
    for (chunk, details) in [
        (
            "zz\r\nhello\r\n0\r\n\r\n",
            "http1.codec_error{invalid_chunk_size}",
        ),
        (
            "-5\r\nhello\r\n0\r\n\r\n",
            "http1.codec_error{invalid_chunk_size}",
        ),
        (
            "0x5\r\nhello\r\n0\r\n\r\n",
            "http1.codec_error{invalid_chunk_size}",
        ),
        (
            "1ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            "http1.codec_error{invalid_chunk_size}",
        ),
        (
            "00000000000000005\r\nhello\r\n0\r\n\r\n",
            "http1.codec_error{invalid_chunk_size}",
        ),
        (
            "5\nhello\r\n0\r\n\r\n",
            "http1.codec_error{invalid_chunk_size}",
        ),
        (
            "5\r\nhelloXX0\r\n\r\n",
            "http1.codec_error{invalid_chunk_end}",
        ),
        (
            "5;a\nb\r\nhello\r\n0\r\n\r\n",
            "http1.codec_error{invalid_chunk_extension}",
        ),
        (
            "5;a\0b\r\nhello\r\n0\r\n\r\n",
            "http1.codec_error{invalid_chunk_extension}",
        ),
        (
            "5\r\nhello\r\n0\r\nx-t: a\nb\r\n\r\n",
            "http1.codec_error{invalid_trailer}",
        ),
        (
            "5\r\nhello\r\n0\r\nx-t: a\r\n b\r\n\r\n",
            "http1.codec_error{obs_fold}",
        ),
    ] {
        let request =
            format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}");
        assert_refused(request.as_bytes(), "400", details).await;
    }
    let abuse = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;{}\r\na\r\n0\r\n\r\n",
        "x".repeat(5000)
    );
    assert_refused(
        abuse.as_bytes(),
        "400",
        "http1.codec_error{chunk_extensions_too_large}",
    )
    .await;
}

#[tokio::test]
async fn control_characters_bare_line_ends_and_folding_in_the_head_are_400() {
    for (request, details) in [
        (
            &b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n"[..],
            "http1.invalid_characters",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
            "http1.invalid_characters",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n\r\n",
            "http1.invalid_characters",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x7fb\r\n\r\n",
            "http1.invalid_characters",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX\0A: a\r\n\r\n",
            "http1.invalid_characters",
        ),
        (
            b"GET /a\0b HTTP/1.1\r\nHost: h\r\n\r\n",
            "http1.invalid_characters",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nX-B: b\r\n\r\n",
            "http1.codec_error{bare_lf}",
        ),
        (b"GET / HTTP/1.1\nHost: h\n\n", "http1.codec_error{bare_lf}"),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
            "http1.codec_error{obs_fold}",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A : a\r\n\r\n",
            "http1.codec_error{invalid_header_name}",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A\r\n\r\n",
            "http1.codec_error{invalid_header_name}",
        ),
        (
            b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
            "http1.codec_error{invalid_request_line}",
        ),
        (
            b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
            "http1.codec_error{invalid_request_line}",
        ),
        (
            b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
            "http1.codec_error{invalid_request_line}",
        ),
        // A registered method in another case: an upstream that folds case would run `GET`.
        (
            b"get /admin HTTP/1.1\r\nHost: h\r\n\r\n",
            "http1.codec_error{invalid_method}",
        ),
        (
            b"gEt /x HTTP/1.1\r\nHost: h\r\n\r\n",
            "http1.codec_error{invalid_method}",
        ),
        (
            b"Delete /x HTTP/1.1\r\nHost: h\r\n\r\n",
            "http1.codec_error{invalid_method}",
        ),
        (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", "http1.invalid_url"),
        (b"GET /<x> HTTP/1.1\r\nHost: h\r\n\r\n", "http1.invalid_url"),
        (
            b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n",
            "http1.invalid_url",
        ),
    ] {
        assert_refused(request, "400", details).await;
    }
}

#[tokio::test]
async fn an_oversized_head_or_too_many_fields_is_431() {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(61 * 1024)
    );
    assert_refused(big.as_bytes(), "431", "http1.headers_too_large").await;
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n");
    assert_refused(many.as_bytes(), "431", "http1.too_many_headers").await;
}

#[tokio::test]
async fn a_head_that_does_not_end_in_time_is_408() {
    let upstream = Recorder::start(true).await;
    let config = WaypointConfig {
        header_read_timeout: Duration::from_millis(300),
        ..WaypointConfig::default()
    };
    let dataplane = Dataplane::with(
        http_service("h", upstream.addr),
        config,
        AccessLogFormat::Text,
    )
    .await;

    let response = exchange(&dataplane, b"GET / HTTP/1.1\r\nHost: h").await;

    assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
    assert!(
        response.contains("\r\nvia: 1.1 egress-waypoint\r\n"),
        "{response}"
    );
    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains("\"- - -\" 408 - request_header_timeout "),
        "{}",
        lines[0]
    );
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_without_an_answer() {
    let upstream = Recorder::start(true).await;
    let config = WaypointConfig {
        header_read_timeout: Duration::from_millis(300),
        ..WaypointConfig::default()
    };
    let dataplane = Dataplane::with(
        http_service("h", upstream.addr),
        config,
        AccessLogFormat::Text,
    )
    .await;

    let response = exchange(&dataplane, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;

    // The request is answered; the idle wait for the next one ends silently.
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert_eq!(response.matches("HTTP/1.1").count(), 1, "{response}");
    assert_eq!(dataplane.log_lines(1).await.len(), 1);
}

#[tokio::test]
async fn well_framed_requests_still_pass_including_chunk_extensions_and_trailers() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::start(http_service("h", upstream.addr)).await;

    let response = exchange(
        &dataplane,
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
          POST /b HTTP/1.1\r\nHost: h\r\ntransfer-encoding: Chunked\r\n\r\n\
          5;name=value\r\nhello\r\n6 \r\n world\r\n0\r\nx-checksum: 1\r\n\r\n\
          \r\nGET /c HTTP/1.1\r\nHost: h\r\nX-Obs-Text: caf\xc3\xa9\r\nConnection: close\r\n\r\n\
          this is not a request",
    )
    .await;

    assert_eq!(response.matches("HTTP/1.1 200 OK").count(), 3, "{response}");
    assert!(response.contains("body: hello\n"), "{response}");
    assert!(response.contains("body: hello world\n"), "{response}");
    assert!(
        !response.contains("400"),
        "what follows `close` is not read: {response}"
    );
    assert_eq!(upstream.requests(), ["POST /a", "POST /b", "GET /c"]);
}

#[tokio::test]
async fn requests_before_a_refused_one_are_answered_first() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::start(http_service("h", upstream.addr)).await;

    // Three pipelined requests in one write; the third is ambiguous.
    let response = exchange(
        &dataplane,
        b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
          POST /smuggle HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;

    let statuses: Vec<&str> = response
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &response[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "400"], "{response}");
    assert_eq!(upstream.requests(), ["GET /one", "POST /two"]);
    let lines = dataplane.log_lines(3).await;
    assert!(
        lines[2].contains("\"- - -\" 400 DPE http1.content_length_and_chunked_not_allowed "),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_bad_chunk_after_the_head_went_upstream_never_completes_the_request() {
    let upstream = Recorder::start(false).await;
    let dataplane = Dataplane::start(http_service("h", upstream.addr)).await;
    let mut stream = dataplane.connect(CGROUP_WEB).await;

    stream
        .write_all(
            b"POST /late HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .expect("write head and first chunk");
    for _ in 0..200 {
        if upstream
            .received()
            .first()
            .is_some_and(|r| r.contains("hello"))
        {
            break;
        }
        sleep(Duration::from_millis(25)).await;
    }
    let response = raw_exchange(&mut stream, b"zz\r\nsmuggled\r\n0\r\n\r\n").await;

    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    assert!(
        response.contains("\r\nvia: 1.1 egress-waypoint\r\n"),
        "{response}"
    );
    let received = upstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        received[0].starts_with("POST /late HTTP/1.1\r\n"),
        "{received:?}"
    );
    assert!(
        !received[0].contains("smuggled") && !received[0].ends_with("0\r\n\r\n"),
        "the upstream never gets the rest or a last chunk: {received:?}"
    );
    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains("\"POST /late HTTP/1.1\" 400 DPE http1.codec_error{invalid_chunk_size} "),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn absolute_form_authority_wins_over_host_for_matching_and_forwarding() {
    let upstream = Recorder::start(true).await;
    let dataplane = Dataplane::start(http_service("h", upstream.addr)).await;

    let response = exchange(
        &dataplane,
        b"GET http://h/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;

    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let received = upstream.received();
    assert!(
        received[0].starts_with("GET /x HTTP/1.1\r\nhost: h\r\n"),
        "RFC 9112 §3.2.2: Host is replaced by the target's authority: {received:?}"
    );
    assert!(!received[0].contains("evil"), "{received:?}");
}
