//! Non-HTTP ports through the waypoint.
use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::timeout,
};

use super::*;

fn tcp_service(host: &str, upstream: SocketAddr) -> Service {
    service(
        host,
        Protocol::Tcp,
        Upstream::Endpoints(vec![upstream]),
        upstream.port(),
    )
}

#[tokio::test]
async fn tcp_is_spliced_and_logged_once() {
    let upstream = tcp_echo_upstream().await;
    let dataplane = Dataplane::start(tcp_service("db.example", upstream.addr)).await;
    let mut stream = dataplane.connect(CGROUP_WEB).await;

    stream.write_all(b"hello").await.expect("write");
    let mut echoed = [0u8; 5];
    timeout(WAIT, stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"hello");
    stream.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("clean close");
    assert!(rest.is_empty());

    let lines = dataplane.log_lines(1).await;
    let line = &lines[0];
    assert!(line.contains("\"- - -\" 0 - - - \"-\" 5 5 "), "{line}");
    let expected = format!(
        "\"-\" \"-\" \"-\" \"-\" \"{}\" outbound|80||db.example 127.0.0.1:",
        upstream.addr
    );
    assert!(line.contains(&expected), "{line}");
    assert!(line.contains(" 10.9.8.7:80 127.0.0.1:"), "{line}");
    assert!(
        line.ends_with(" - - spiffe://cluster.local/ns/app/sa/web"),
        "{line}"
    );
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn tcp_upstream_down_closes_with_uf() {
    let down = closed_port().await;
    let dataplane = Dataplane::start(tcp_service("db.example", down)).await;
    let mut stream = dataplane.connect(CGROUP_ANONYMOUS).await;

    let mut buf = Vec::new();
    let read = timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    assert!(read.is_err() || buf.is_empty(), "closed without data");

    let lines = dataplane.log_lines(1).await;
    assert!(lines[0].contains("\"- - -\" 0 UF - - \""), "{}", lines[0]);
    assert!(lines[0].ends_with(" -"), "{}", lines[0]);
}

#[tokio::test]
async fn tcp_idle_connections_are_closed() {
    let upstream = tcp_echo_upstream().await;
    let config = WaypointConfig {
        idle_timeout: Duration::from_millis(500),
        ..WaypointConfig::default()
    };
    let dataplane = Dataplane::with(
        tcp_service("db.example", upstream.addr),
        config,
        AccessLogFormat::Text,
    )
    .await;
    let mut stream = dataplane.connect(CGROUP_WEB).await;
    stream.write_all(b"ping").await.expect("write");

    let mut buf = Vec::new();
    let read = timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    assert!(read.is_ok(), "{read:?}");
    assert_eq!(buf, b"ping");
    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains("\"- - -\" 0 - - - \"-\" 4 4 "),
        "{}",
        lines[0]
    );
}

/// istiod refuses a TCP port on a DYNAMIC_DNS ServiceEntry; a table that has one anyway (built
/// by hand here) still never connects: plain TCP names no destination, and the address the
/// client dialled is never one.
#[tokio::test]
async fn raw_tcp_to_a_dynamic_dns_service_is_refused_and_logged() {
    let dataplane = Dataplane::start(service(
        "*.wild.test",
        Protocol::Tcp,
        Upstream::DynamicDns,
        80,
    ))
    .await;
    let mut stream = dataplane.connect(CGROUP_WEB).await;
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a.wild.test\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let read = timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        read.is_err() || buf.is_empty(),
        "closed without data: {buf:?}"
    );
    let lines = dataplane.log_lines(1).await;
    assert!(
        lines[0].contains("\"- - -\" 0 NR filter_chain_not_found - \"-\" 0 0 "),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(" \"-\" outbound|80||*.wild.test "),
        "no upstream host: {}",
        lines[0]
    );
}
