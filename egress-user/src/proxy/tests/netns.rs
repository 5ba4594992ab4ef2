//! One waypoint serving several listeners, one per network namespace (Kubernetes mode: one per
//! pod): each looks origins up under its own namespace cookie.
use super::*;

/// A namespace cookie the kernel never hands out to the test's own namespace.
const OTHER_NETNS: u64 = u64::MAX;

/// Sends one GET on a fresh connection; `None` when the waypoint closed it without a response.
async fn get(stream: TcpStream) -> Option<StatusCode> {
    let (mut sender, conn) = handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let req = Request::get("/x")
        .header("host", "httpbin.org")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = timeout(WAIT, sender.send_request(req))
        .await
        .expect("an answer or a close in time");
    response.ok().map(|r| r.status())
}

#[tokio::test]
async fn each_listener_finds_origins_in_its_own_namespace_only() {
    let upstream = echo_upstream().await;
    let dataplane = Dataplane::start(http_service("httpbin.org", upstream.addr)).await;
    // The same waypoint on a second listener, as if bound in another pod's namespace.
    let second = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let second_addr = second.local_addr().expect("addr");
    tokio::spawn(dataplane.waypoint.clone().serve_netns(
        second,
        OTHER_NETNS,
        crate::drain::always_open(),
    ));

    // Recorded in the test's namespace, accepted by the other namespace's listener: the same
    // ip:port there is another client, so the connection is closed unproxied.
    let stream = dataplane
        .connect_in(dataplane.netns_cookie, second_addr, CGROUP_WEB)
        .await;
    assert_eq!(get(stream).await, None);
    assert!(upstream.requests().is_empty());

    // Recorded in the other namespace: served there.
    let stream = dataplane
        .connect_in(OTHER_NETNS, second_addr, CGROUP_WEB)
        .await;
    assert_eq!(get(stream).await, Some(StatusCode::OK));
    // And the first listener still serves its own namespace.
    let stream = dataplane.connect(CGROUP_WEB).await;
    assert_eq!(get(stream).await, Some(StatusCode::OK));
    assert_eq!(upstream.requests().len(), 2, "{:?}", upstream.requests());
}
