//! The sockmap short-cut of the app↔waypoint hop (`--sockmap`, on by default): sockops puts both
//! ends of an HTTP connection into a sockhash and sk_msg hands each message to the peer socket.
//! What must hold: every byte arrives, in order, in both directions, over keep-alive, with large
//! bodies; only HTTP ports are accelerated; `--sockmap off` takes the TCP path.
use std::fs;

use egress_tests::*;

/// 3 MiB of varied bytes: many messages per body in both directions.
fn payload() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..3 << 20)
        .map(|_| {
            // xorshift: not random, but no two neighbouring KiB are alike.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Two POSTs of `payload` to /echo-body on one keep-alive connection, through the waypoint;
/// checks what came back and what the upstream received.
fn echo_twice(dp: &Dataplane, upstream: &Upstream) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let input = dir.path().join("payload");
    let body = payload();
    fs::write(&input, &body).expect("writing the payload");
    let data = format!("@{}", input.display());
    let url = upstream.url("/echo-body");
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let (first_s, second_s) = (first.display().to_string(), second.display().to_string());
    #[rustfmt::skip]
    let out = dp.exec("default", "sleep").curl(&[
        "-sS", "-H", "content-type: application/octet-stream",
        "--data-binary", &data, "-o", &first_s, &url,
        "--next", "-sS", "-H", "content-type: application/octet-stream",
        "--data-binary", &data, "-o", &second_s, &url,
    ]);
    out.expect_success("two 3 MiB POSTs through the waypoint");
    for (name, path) in [("first", &first), ("second", &second)] {
        let echoed = fs::read(path).expect("curl wrote the response");
        assert_eq!(echoed.len(), body.len(), "{name} response length");
        assert!(
            echoed == body,
            "{name} response: the bytes came back unchanged and in order"
        );
    }
    let hits = upstream.hits();
    assert_eq!(hits.len(), 2, "both requests reached the upstream");
    for hit in &hits {
        assert!(
            hit.body == body,
            "the upstream received the bytes unchanged and in order"
        );
    }
    let peers: Vec<_> = hits.iter().map(|h| h.peer).collect();
    assert_eq!(
        peers[0], peers[1],
        "one upstream connection: keep-alive held"
    );
}

#[test]
fn large_bodies_cross_the_short_cut_intact_in_both_directions() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let dp = Dataplane::builder()
        .service_entry(&yaml::service_entry("echo", "echo.test", upstream.addr()))
        .start();
    echo_twice(&dp, &upstream);
    // Both ends of the one app↔waypoint connection were put into the sockhash, and messages
    // went through sk_msg (bodies are split into many).
    assert_eq!(dp.bpf_counter("sockmap_inserted"), 2);
    assert!(
        dp.bpf_counter("sockmap_redirected") >= 4,
        "requests and responses took the short-cut"
    );
}

#[test]
fn with_sockmap_off_every_byte_takes_the_tcp_path() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let dp = Dataplane::builder()
        .service_entry(&yaml::service_entry("echo", "echo.test", upstream.addr()))
        .args(&["--sockmap", "off"])
        .start();
    echo_twice(&dp, &upstream);
    assert_eq!(dp.bpf_counter("sockmap_inserted"), 0);
    assert_eq!(dp.bpf_counter("sockmap_redirected"), 0);
}

#[test]
fn tcp_ports_are_not_short_cut() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let se = yaml::as_tcp(&yaml::service_entry(
        "opaque",
        "opaque.test",
        upstream.addr(),
    ));
    let dp = Dataplane::builder().service_entry(&se).start();
    let out = dp
        .exec("default", "sleep")
        .http_code(&[&upstream.url("/spliced")])
        .expect_success("curl over a spliced TCP port");
    assert_eq!(out.stdout, "200");
    // Spliced connections are read with the TCP receive path only: never in the sockhash.
    assert_eq!(dp.bpf_counter("sockmap_inserted"), 0);
    assert_eq!(dp.bpf_counter("sockmap_redirected"), 0);
}
