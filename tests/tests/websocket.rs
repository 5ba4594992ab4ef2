//! WebSocket through the capture, with a real client and server (Python `websockets` from
//! PyPI): an allowed echo works and is logged once with its bytes; a denied upgrade gets 403 and
//! nothing reaches the server; bytes a client sends before the 101 never reach an upstream
//! that did not switch protocols (the CVE-2025-64763 class).
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use egress_tests::*;

/// An echo server that logs every handshake request it receives (`request PATH`) and every
/// message (`message TEXT`); `/reject` is answered 404 without switching.
const SERVER: &str = r#"
import asyncio, sys
from http import HTTPStatus
from websockets.asyncio.server import serve
log = open(sys.argv[1], "a", buffering=1)
def on_request(connection, request):
    log.write(f"request {request.path}\n")
    if request.path == "/reject":
        return connection.respond(HTTPStatus.NOT_FOUND, "no\n")
async def echo(ws):
    async for message in ws:
        log.write(f"message {message}\n")
        await ws.send(message)
async def main():
    async with serve(echo, sys.argv[2], int(sys.argv[3]), process_request=on_request):
        await asyncio.get_running_loop().create_future()
asyncio.run(main())
"#;

/// Connects to URL, sends each further argument and prints each echo; exits 3 printing
/// `status N` when the handshake is refused.
const CLIENT: &str = r#"
import sys
from websockets.sync.client import connect
from websockets.exceptions import InvalidStatus
try:
    with connect(sys.argv[1], open_timeout=10, close_timeout=2) as ws:
        for message in sys.argv[2:]:
            ws.send(message)
            print("echo", ws.recv(timeout=10))
except InvalidStatus as refused:
    print("status", refused.response.status_code)
    sys.exit(3)
"#;

const DENY_ADMIN: &str = "  - to:
    - operation:
        paths: [/admin]
";

fn start(ip: Ipv4Addr, upstream: SocketAddr) -> Dataplane {
    let se = yaml::static_service_entry("ws", "ws.test", IpAddr::V4(ip), 80, upstream);
    Dataplane::builder()
        .service_entry(&se)
        .config(&yaml::httpbin_policy("no-admin", "DENY", DENY_ADMIN).replace("httpbin", "ws"))
        .start()
}

/// Waits (bounded) until `check` holds for the server's log.
fn server_log_until(server: &PythonServer, check: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = server.log();
        if check(&log) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_allowed_websocket_echoes_and_is_logged_once_with_its_bytes() {
    if !require_privileges() || !require_python_modules(&["websockets"]) {
        return;
    }
    let ip = Ipv4Addr::new(127, 77, 30, 1);
    let server = PythonServer::start(SERVER);
    let dp = start(ip, server.addr());
    let out = dp.exec("default", "sleep").run(
        http_venv_python().to_str().expect("utf-8 path"),
        &["-c", CLIENT, &format!("ws://{ip}/echo"), "hello", "again"],
    );
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, "echo hello\necho again\n", "{out:?}");
    let log = server_log_until(&server, |l| l.len() >= 3);
    assert_eq!(log, ["request /echo", "message hello", "message again"]);

    let line = dp.access_log_line("\"GET /echo HTTP/1.1\" 101 ");
    assert!(line.contains(" 101 - via_upstream "), "{line}");
    // Bytes: what the client's frames took each way (masked frames are 4 bytes longer), and
    // the close handshake: never zero once messages went through.
    let fields: Vec<&str> = line.split(' ').collect();
    let at = fields
        .iter()
        .position(|f| *f == "\"-\"")
        .expect("the fields after the flags");
    let (received, sent): (u64, u64) = (
        fields[at + 1].parse().expect("bytes received"),
        fields[at + 2].parse().expect("bytes sent"),
    );
    assert!(received > sent && sent >= 14, "{line}");
    let lines = dp.access_log_lines();
    let tunnels = lines
        .iter()
        .filter(|l| l.contains("\"GET /echo HTTP/1.1\""));
    assert_eq!(tunnels.count(), 1, "one line per tunnel: {lines:?}");
}

#[test]
fn a_denied_upgrade_gets_403_and_nothing_reaches_the_server() {
    if !require_privileges() || !require_python_modules(&["websockets"]) {
        return;
    }
    let ip = Ipv4Addr::new(127, 77, 30, 2);
    let server = PythonServer::start(SERVER);
    let dp = start(ip, server.addr());
    let out = dp.exec("default", "sleep").run(
        http_venv_python().to_str().expect("utf-8 path"),
        &["-c", CLIENT, &format!("ws://{ip}/admin"), "hello"],
    );
    assert_eq!(out.stdout, "status 403\n", "{out:?}");
    let line = dp.access_log_line("\"GET /admin HTTP/1.1\"");
    assert!(
        line.contains(
            " 403 - rbac_access_denied_matched_policy[ns[default]-policy[no-admin]-rule[0]] "
        ),
        "{line}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.log().is_empty(), "{:?}", server.log());
}

/// A handshake and, in the same write, a request the upstream would serve if it ever saw it.
fn smuggling(ip: Ipv4Addr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\\r\\nHost: ws.test\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n\
         Sec-WebSocket-Version: 13\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n\
         GET /smuggled HTTP/1.1\\r\\nHost: {ip}\\r\\n\\r\\n"
    )
}

#[test]
fn early_data_before_the_101_never_reaches_the_server() {
    if !require_privileges() || !require_python_modules(&["websockets"]) {
        return;
    }
    // A keep-alive HTTP server that does not switch: it would serve the smuggled request if a
    // proxy forwarded the early bytes.
    let plain = Upstream::http();
    let ip = Ipv4Addr::new(127, 77, 30, 3);
    let dp = start(ip, plain.addr());
    let out = dp
        .exec("default", "sleep")
        .raw_http(SocketAddr::new(IpAddr::V4(ip), 80), &smuggling(ip, "/ws"));
    assert!(out.stdout.starts_with("HTTP/1.1 200 "), "{out:?}");
    assert_eq!(out.stdout.matches("HTTP/1.1 ").count(), 1, "{out:?}");
    let paths: Vec<String> = plain.hits().iter().map(|h| h.path.clone()).collect();
    assert_eq!(paths, ["/ws"]);

    // The WebSocket server refusing the handshake (404) sees no early byte either.
    let server = PythonServer::start(SERVER);
    let ip = Ipv4Addr::new(127, 77, 30, 4);
    let dp = start(ip, server.addr());
    let out = dp.exec("default", "sleep").raw_http(
        SocketAddr::new(IpAddr::V4(ip), 80),
        &smuggling(ip, "/reject"),
    );
    assert!(out.stdout.starts_with("HTTP/1.1 404 "), "{out:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.log(), ["request /reject"]);
}
