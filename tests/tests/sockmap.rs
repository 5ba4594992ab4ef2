//! The sockmap short-cut of the app↔waypoint hop (`--sockmap`, on by default): sockops puts both
//! ends of an HTTP connection into a sockhash and sk_msg hands each message to the peer socket.
//! What must hold: every byte arrives, in order, in both directions, over keep-alive, with large
//! bodies, and over connections that reuse the last one's 4-tuple; only HTTP ports are
//! accelerated; `--sockmap off` takes the TCP path.
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

/// A client that reuses one local port for every connection, as busy clients reuse ephemeral
/// ports: for each round it binds `127.0.0.1:PORT` (SO_REUSEADDR), connects to the next of the
/// `HOST:PORT` targets in turn, sends `GET PATH` (`{round}` replaced by the round number), reads
/// the whole response (content-length framing) and closes; with MODE `alternate`, every other
/// request asks the waypoint to close first. A connect refused because the last connection's
/// TIME_WAIT cannot be reused yet is retried; it is no round. BODY is `echo` (the body must name
/// the path it answered) or `counter` (it must be the upstream's counter_bytes of the
/// content-length). Stops after ROUNDS rounds or SECONDS, and prints `rounds=N lost=M`; each
/// lost or wrong reply is described on stderr.
const REUSED_PORT_CLIENT: &str = r#"
import socket, struct, sys, time
port, rounds, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
mode, path, kind = sys.argv[4], sys.argv[5], sys.argv[6]
targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in sys.argv[7:]]
counter = b""
deadline = time.monotonic() + seconds
done = lost = 0
while done < rounds and time.monotonic() < deadline:
    host = targets[done % len(targets)]
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    conn.settimeout(3)
    conn.bind(("127.0.0.1", port))
    try:
        conn.connect(host)
    except OSError:
        conn.close()
        time.sleep(0.001)
        continue
    want = path.replace("{round}", str(done))
    close = "connection: close\r\n" if mode == "alternate" and done % 2 else ""
    conn.sendall(f"GET {want} HTTP/1.1\r\nhost: {host[0]}:{host[1]}\r\n{close}\r\n".encode())
    answer, length, head = bytearray(), None, 0
    try:
        while length is None or len(answer) < head + length:
            if length is None and b"\r\n\r\n" in answer:
                head = answer.index(b"\r\n\r\n") + 4
                fields = answer[:head].decode("latin-1").lower().split("\r\n")
                length = int([f for f in fields if f.startswith("content-length:")][0][15:])
                continue
            data = conn.recv(1 << 20)
            if not data:
                break
            answer += data
    except OSError as e:
        print(f"round {done}: {e}", file=sys.stderr)
    body = answer[head:]
    if kind == "counter" and length is not None and len(counter) != length:
        counter = b"".join(struct.pack("<Q", i) for i in range((length + 7) // 8))[:length]
    if length is None or len(body) != length:
        ok = False
    elif kind == "echo":
        ok = f"path={want}\n".encode() in body
    else:
        ok = body == counter
    if not ok:
        lost += 1
        print(f"round {done} to {host}: {len(answer)} bytes, length {length}: {answer[:80]!r}",
              file=sys.stderr)
    conn.close()
    done += 1
print(f"rounds={done} lost={lost}")
"#;

/// How many rounds the client completed and how many replies were lost (or wrong).
fn reused_port_rounds(out: &Output) -> (u64, u64) {
    let field = |name: &str| {
        out.stdout
            .split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the client's output: {out:?}"))
    };
    (field("rounds="), field("lost="))
}

/// Two HTTP ServiceEntries on two upstreams, the short-cut on.
fn two_services() -> (Upstream, Upstream, Dataplane) {
    let (a, b) = (Upstream::http(), Upstream::http());
    let dp = Dataplane::builder()
        .service_entry(&yaml::service_entry("one", "one.test", a.addr()))
        .service_entry(&yaml::service_entry("two", "two.test", b.addr()))
        .start();
    (a, b, dp)
}

/// A local port no one is using (the client binds it for every round).
fn free_local_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener
        .local_addr()
        .expect("a free port")
        .port()
        .to_string()
}

/// Runs the reused-port client in the captured cgroup and returns (rounds, lost).
fn reuse_one_port(
    dp: &Dataplane,
    limits: (&str, &str),
    mode: &str,
    path: &str,
    kind: &str,
    targets: [&Upstream; 2],
) -> (u64, u64) {
    let port = free_local_port();
    let (a, b) = (targets[0].addr().to_string(), targets[1].addr().to_string());
    let (rounds, seconds) = limits;
    let args = [
        "-c",
        REUSED_PORT_CLIENT,
        &port,
        rounds,
        seconds,
        mode,
        path,
        kind,
        &a,
        &b,
    ];
    let out = dp
        .exec("default", "sleep")
        .run("python3", &args)
        .expect_success("the reused-port client in the captured cgroup");
    eprintln!("reused-port client: {}{}", out.stdout.trim(), out.stderr);
    reused_port_rounds(&out)
}

/// Issue 10: a connection that reuses the 4-tuple of the last one (same local port, the
/// waypoint's old socket not yet closed) must get its reply. The old socket's sockhash entry
/// outlived its connection and took the new connection's messages.
#[test]
fn no_reply_is_lost_through_the_sockmap_when_a_local_port_is_reused() {
    if !require_privileges() {
        return;
    }
    let (a, b, dp) = two_services();
    // Bounded in rounds and time (the client's command is bounded at 30 s).
    let (rounds, lost) = reuse_one_port(
        &dp,
        ("3000", "20"),
        "keep-alive",
        "/round-{round}",
        "echo",
        [&a, &b],
    );
    assert_eq!(
        lost, 0,
        "every one of {rounds} replies arrived, to its request"
    );
    assert!(rounds >= 100, "the loop ran ({rounds} rounds)");
    assert!(
        dp.bpf_counter("sockmap_redirected") > 0,
        "messages took the short-cut"
    );
}

/// Several MiB per reply over connections that reuse one local port, half of them closed by
/// the waypoint right after the reply: every byte arrives, in order, or a partial loss shows.
#[test]
fn large_replies_cross_the_sockmap_whole_over_a_reused_local_port() {
    if !require_privileges() {
        return;
    }
    let (a, b, dp) = two_services();
    let path = format!("/counter/{}", 4 << 20);
    let (rounds, lost) =
        reuse_one_port(&dp, ("400", "20"), "alternate", &path, "counter", [&a, &b]);
    assert_eq!(lost, 0, "every one of {rounds} 4 MiB replies arrived whole");
    assert!(rounds >= 20, "the loop ran ({rounds} rounds)");
    assert!(
        dp.bpf_counter("sockmap_redirected") > 0,
        "replies took the short-cut"
    );
}
