//! A `GRPC` ServiceEntry port through the capture, with a real gRPC client and server (Python
//! `grpcio` from PyPI): every call is authorized on its own (a denied method is
//! PERMISSION_DENIED, as Envoy answers gRPC: HTTP 200, `grpc-status: 7`), the metrics carry
//! `grpc_response_status`; a bounded `h2load` run succeeds; a rapid-reset flood (Python `h2`)
//! is cut off with GOAWAY while the waypoint's RSS stays under [`RSS_BOUND_KIB`].
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use egress_tests::*;

/// The waypoint's resident set after the flood (a debug build idles at a few tens of MiB).
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// `echo.Echo/Say` answers what it got; `admin.Admin/Drop` answers "dropped". Raw bytes, no
/// generated stubs. Every call is logged (`call METHOD`).
const SERVER: &str = r#"
import sys, time
from concurrent import futures
import grpc
log = open(sys.argv[1], "a", buffering=1)
def say(request, context):
    log.write("call Say\n")
    return request
def drop(request, context):
    log.write("call Drop\n")
    return b"dropped"
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers([
    grpc.method_handlers_generic_handler("echo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}),
    grpc.method_handlers_generic_handler("admin.Admin", {"Drop": grpc.unary_unary_rpc_method_handler(drop)}),
])
server.add_insecure_port(f"{sys.argv[2]}:{sys.argv[3]}")
server.start()
server.wait_for_termination()
"#;

/// Calls each `/service/Method` given after the target; prints `ok REPLY` or `error CODE DETAILS`.
const CLIENT: &str = r#"
import sys
import grpc
channel = grpc.insecure_channel(sys.argv[1], options=[("grpc.enable_http_proxy", 0)])
for method in sys.argv[2:]:
    try:
        reply = channel.unary_unary(method)(b"hello", timeout=10)
        print("ok", reply.decode())
    except grpc.RpcError as error:
        print("error", error.code().name, error.details())
"#;

/// Opens HTTP/2 streams and resets each at once, as fast as it can, until the server closes;
/// prints `goaway CODE` when it said GOAWAY, then `closed`.
const RAPID_RESET: &str = r#"
import socket, sys
import h2.connection, h2.config, h2.events
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
headers = [(":method", "POST"), (":scheme", "http"), (":path", "/echo.Echo/Say"),
           (":authority", sys.argv[1]), ("content-type", "application/grpc")]
goaway = None
try:
    for batch in range(500):
        for _ in range(100):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, headers)
            conn.reset_stream(stream)
        sock.sendall(conn.data_to_send())
        sock.setblocking(False)
        try:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    goaway = event.error_code
        except BlockingIOError:
            pass
        sock.setblocking(True)
        if goaway is not None:
            break
except (OSError, h2.exceptions.ProtocolError):
    pass
sock.settimeout(5)
try:
    while goaway is None:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ConnectionTerminated):
                goaway = event.error_code
except (OSError, h2.exceptions.ProtocolError):
    pass
if goaway is not None:
    print("goaway", int(goaway))
print("closed")
"#;

/// Opens an HTTP/2 connection and then stalls: `preface` sends the preface and SETTINGS only,
/// and answers what the server sends (SETTINGS ack, PINGs), as a slowloris client would;
/// `partial` also acks the server's SETTINGS, then sends a HEADERS frame without END_HEADERS
/// (a CONTINUATION that never comes) and nothing more (any other frame would be a protocol
/// error). Reads until the server closes; prints `goaway CODE` if it said GOAWAY, then `closed
/// SECONDS` (since the stall began).
const STALL: &str = r#"
import socket, sys, time
import h2.connection, h2.config, h2.exceptions
import hpack
from hyperframe.frame import HeadersFrame
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
partial = sys.argv[3] == "partial"
got = b""
def receive(data):
    global got
    got += data
    try:
        conn.receive_data(data)
    except h2.exceptions.ProtocolError:
        pass
if partial:
    receive(sock.recv(65536))
    sock.sendall(conn.data_to_send())
    frame = HeadersFrame(1)
    frame.data = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"),
        (":path", "/echo.Echo/Say"), (":authority", sys.argv[1])])
    sock.sendall(frame.serialize())
started = time.monotonic()
try:
    while True:
        data = sock.recv(65536)
        if not data:
            break
        receive(data)
        pending = conn.data_to_send()
        if pending and not partial:
            sock.sendall(pending)
except OSError:
    pass
# The server's frames as sent (the client's state machine never saw the raw HEADERS).
at = 0
while at + 9 <= len(got):
    length = int.from_bytes(got[at:at + 3], "big")
    if got[at + 3] == 0x7 and at + 17 <= len(got):
        print("goaway", int.from_bytes(got[at + 13:at + 17], "big"))
        break
    at += 9 + length
print("closed", round(time.monotonic() - started, 1))
"#;

const DENY_ADMIN: &str = "  - to:
    - operation:
        paths: [/admin.Admin/*]
";

fn start(ip: Ipv4Addr, upstream: SocketAddr) -> Dataplane {
    start_with(ip, upstream, &[])
}

fn start_with(ip: Ipv4Addr, upstream: SocketAddr, args: &[&str]) -> Dataplane {
    let se = yaml::static_service_entry("grpc", "grpc.test", IpAddr::V4(ip), 80, upstream)
        .replace("protocol: HTTP\n", "protocol: GRPC\n");
    Dataplane::builder()
        .service_entry(&se)
        .config(&yaml::httpbin_policy("no-admin", "DENY", DENY_ADMIN).replace("httpbin", "grpc"))
        .args(args)
        .start()
}

fn python(dp: &Dataplane, script: &str, args: &[&str]) -> Output {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    dp.exec("default", "sleep")
        .run(http_venv_python().to_str().expect("utf-8 path"), &all)
}

#[test]
fn an_allowed_method_works_and_a_denied_one_is_permission_denied() {
    if !require_privileges() || !require_python_modules(&["grpc"]) {
        return;
    }
    let ip = Ipv4Addr::new(127, 77, 40, 1);
    let server = PythonServer::start(SERVER);
    let dp = start(ip, server.addr());
    let out = python(
        &dp,
        CLIENT,
        &[&format!("{ip}:80"), "/echo.Echo/Say", "/admin.Admin/Drop"],
    );
    assert_eq!(
        out.stdout, "ok hello\nerror PERMISSION_DENIED RBAC: access denied\n",
        "{out:?}"
    );
    assert_eq!(
        server.log(),
        ["call Say"],
        "the denied call never reached the server"
    );

    let allowed = dp.access_log_line("\"POST /echo.Echo/Say HTTP/2\"");
    assert!(allowed.contains(" 200 - via_upstream "), "{allowed}");
    let denied = dp.access_log_line("\"POST /admin.Admin/Drop HTTP/2\"");
    assert!(
        denied.contains(
            " 200 - rbac_access_denied_matched_policy[ns[default]-policy[no-admin]-rule[0]] "
        ),
        "{denied}"
    );
    let metrics = dp.metrics();
    for status in ["0", "7"] {
        let series = metrics.lines().find(|line| {
            line.starts_with("istio_requests_total{")
                && line.contains("destination_service=\"grpc.test\"")
                && line.contains(",request_protocol=\"grpc\",")
                && line.contains(",response_code=\"200\",")
                && line.contains(&format!("grpc_response_status=\"{status}\""))
        });
        assert!(
            series.is_some_and(|line| line.ends_with(" 1")),
            "grpc_response_status {status}:\n{metrics}"
        );
    }
    assert!(
        !metrics
            .lines()
            .any(|line| line.starts_with("istio_requests_total{")
                && line.contains("destination_service=\"grpc.test\"")
                && line.contains(",request_protocol=\"http\",")),
        "a gRPC call labelled http:\n{metrics}"
    );
}

#[test]
fn a_bounded_h2load_run_succeeds() {
    if !require_privileges() || !require_python_modules(&["grpc"]) || !require_tools(&["h2load"]) {
        return;
    }
    let ip = Ipv4Addr::new(127, 77, 40, 2);
    let server = PythonServer::start(SERVER);
    let dp = start(ip, server.addr());
    // One unary call: an uncompressed gRPC message of 5 bytes.
    let body = tempfile::NamedTempFile::new().expect("a body file");
    std::fs::write(body.path(), b"\0\0\0\0\x05hello").expect("the body");
    let out = dp.exec("default", "sleep").run(
        "h2load",
        &[
            "-n",
            "1000",
            "-c",
            "4",
            "-m",
            "8",
            "-d",
            body.path().to_str().expect("utf-8 path"),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            &format!("http://{ip}/echo.Echo/Say"),
        ],
    );
    assert!(
        out.stdout
            .contains("1000 total, 1000 started, 1000 done, 1000 succeeded"),
        "{out:?}"
    );
    assert!(out.stdout.contains("1000 2xx"), "{out:?}");
    // A gRPC error is a 2xx too: every call must have reached the method.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.log().len() < 1000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.log().len(), 1000, "calls that reached echo.Echo/Say");
}

/// The waypoint's resident set, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_rapid_reset_flood_is_cut_off_with_goaway_and_bounded_memory() {
    if !require_privileges() || !require_python_modules(&["h2", "grpc"]) {
        return;
    }
    let ip = Ipv4Addr::new(127, 77, 40, 3);
    let server = PythonServer::start(SERVER);
    let dp = start(ip, server.addr());
    let started = Instant::now();
    let out = python(&dp, RAPID_RESET, &[&ip.to_string(), "80"]);
    assert!(out.success(), "{out:?}");
    // ENHANCE_YOUR_CALM (11): hyper's h2 refuses more resets of streams it had not accepted.
    assert_eq!(out.stdout, "goaway 11\nclosed\n", "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "cut off promptly"
    );
    let rss = rss_kib(dp.pid());
    eprintln!("waypoint RSS after the flood: {rss} KiB");
    assert!(
        rss < RSS_BOUND_KIB,
        "waypoint RSS {rss} KiB after the flood"
    );
    // The waypoint still serves the next client.
    let out = python(&dp, CLIENT, &[&format!("{ip}:80"), "/echo.Echo/Say"]);
    assert_eq!(out.stdout, "ok hello\n", "{out:?}");
}

#[test]
fn a_stalled_http2_connection_is_closed_at_the_header_read_timeout() {
    if !require_privileges() || !require_python_modules(&["h2", "grpc"]) {
        return;
    }
    let ip = Ipv4Addr::new(127, 77, 40, 4);
    let server = PythonServer::start(SERVER);
    let dp = start_with(ip, server.addr(), &["--header-read-timeout", "2s"]);
    for stall in ["preface", "partial"] {
        let out = python(&dp, STALL, &[&ip.to_string(), "80", stall]);
        assert!(out.success(), "{stall}: {out:?}");
        let mut lines = out.stdout.lines();
        // NO_ERROR: the server's graceful GOAWAY.
        assert_eq!(lines.next(), Some("goaway 0"), "{stall}: {out:?}");
        let seconds: f64 = lines
            .next()
            .and_then(|l| l.strip_prefix("closed "))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{stall}: no close in {out:?}"));
        // Not before the timeout; and long before the keep-alive PING (every --idle-timeout,
        // 5m) could have found the client out — it answers PINGs anyway.
        assert!(
            (1.5..20.0).contains(&seconds),
            "{stall}: closed after {seconds}s"
        );
    }
    dp.wait_for_log("no complete HTTP/2 request headers", 2);
    assert!(server.log().is_empty(), "nothing reached the server");
    // A client that completes its request in time is served on the same port.
    let out = python(&dp, CLIENT, &[&format!("{ip}:80"), "/echo.Echo/Say"]);
    assert_eq!(out.stdout, "ok hello\n", "{out:?}");
}
