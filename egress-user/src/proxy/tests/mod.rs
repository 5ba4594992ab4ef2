//! In-process tests of the waypoint: a real upstream, a real waypoint on 127.0.0.1, and a client
//! whose socket address is registered as "redirected by the kernel" before it connects.
mod authz;
mod framing;
mod http;
mod netns;
mod splice;
mod tls;
mod tls_pki;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{SocketAddr, SocketAddrV4},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use egress_common::{FAMILY_INET, Origin};
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    client::conn::http1::{SendRequest, handshake},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    time::{sleep, timeout},
};

use super::{Waypoint, WaypointConfig};
use crate::{
    config::{Protocol, parse_str},
    identity::Principal,
    model::{IdentitySource, OriginSource, Service, ServiceTable, Upstream},
    policy::PolicySet,
    telemetry::{AccessLog, AccessLogFormat, MemoryLog},
};

/// A cgroup with identity `cluster.local/ns/app/sa/web`.
const CGROUP_WEB: u64 = 42;
/// The seed's low-privilege app: `cluster.local/ns/default/sa/sleep`.
const CGROUP_SLEEP: u64 = 43;
/// The seed's admin: `cluster.local/ns/default/sa/admin`.
const CGROUP_ADMIN: u64 = 44;
/// A cgroup without identity.
const CGROUP_ANONYMOUS: u64 = 7;
/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// Origins the "kernel" recorded, keyed by network namespace cookie and client address.
#[derive(Default)]
struct Origins(Mutex<HashMap<(u64, SocketAddr), Origin>>);

impl OriginSource for Origins {
    fn origin(&self, netns_cookie: u64, peer: SocketAddr) -> Option<Origin> {
        self.0
            .lock()
            .expect("origins lock")
            .get(&(netns_cookie, peer))
            .copied()
    }
}

struct Identities;

impl IdentitySource for Identities {
    fn principal(&self, cgroup_id: u64) -> Option<Principal> {
        let (namespace, account) = match cgroup_id {
            CGROUP_WEB => ("app", "web"),
            CGROUP_SLEEP => ("default", "sleep"),
            CGROUP_ADMIN => ("default", "admin"),
            _ => return None,
        };
        Some(Principal::new("cluster.local", namespace, account))
    }
}

/// An upstream server, the number of connections it accepted and (HTTP echo only) the
/// request lines it received.
struct TestUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TestUpstream {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// `METHOD target` of every request received so far.
    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests lock").clone()
    }
}

async fn listen() -> (TcpListener, SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    (listener, addr, Arc::new(AtomicUsize::new(0)))
}

/// An HTTP/1.1 server that answers with what it received: request line, headers, body. It
/// answers `/status/NNN` with that status, and adds hop-by-hop headers and a `via` of its own
/// to every response so the tests can see the waypoint drop and extend them.
async fn echo_upstream() -> TestUpstream {
    let (listener, addr, connections) = listen().await;
    let accepted = connections.clone();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            let service = service_fn(move |req| echo(seen.clone(), req));
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    TestUpstream {
        addr,
        connections,
        requests,
    }
}

async fn echo(
    seen: Arc<Mutex<Vec<String>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    seen.lock()
        .expect("requests lock")
        .push(format!("{} {}", req.method(), req.uri()));
    let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (name, value) in req.headers() {
        text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
    }
    let status = req
        .uri()
        .path()
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    let body = req
        .into_body()
        .collect()
        .await
        .expect("request body")
        .to_bytes();
    text.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
    let response = Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("connection", "x-upstream-hop")
        .header("x-upstream-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("via", "1.0 upstream-cache")
        .body(Full::new(Bytes::from(text)))
        .expect("echo response");
    Ok(response)
}

/// A TCP server that echoes bytes until the client closes its side.
async fn tcp_echo_upstream() -> TestUpstream {
    let (listener, addr, connections) = listen().await;
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    TestUpstream {
        addr,
        connections,
        requests: Arc::default(),
    }
}

/// A server that reads a request, writes `reply` (possibly nothing, possibly a partial
/// response), then closes the connection or, with `hold`, keeps it open and silent.
async fn scripted_upstream(reply: &'static [u8], hold: bool) -> TestUpstream {
    let (listener, addr, connections) = listen().await;
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(reply).await;
                if hold {
                    sleep(Duration::from_secs(60)).await;
                }
            });
        }
    });
    TestUpstream {
        addr,
        connections,
        requests: Arc::default(),
    }
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

fn service(host: &str, protocol: Protocol, upstream: Upstream, upstream_port: u16) -> Service {
    Service {
        id: 0,
        namespace: "egress".into(),
        name: "httpbin".into(),
        hosts: vec![host.into()],
        addresses: vec![],
        port: 80,
        port_name: "http".into(),
        protocol,
        upstream_port,
        upstream,
    }
}

/// An HTTP service whose one endpoint is `upstream`.
fn http_service(host: &str, upstream: SocketAddr) -> Service {
    service(
        host,
        Protocol::Http,
        Upstream::Endpoints(vec![upstream]),
        upstream.port(),
    )
}

/// A waypoint serving one service, with its registry of origins and its access log.
struct Dataplane {
    addr: SocketAddr,
    /// The namespace cookie of the listener at `addr` (the test's own namespace).
    netns_cookie: u64,
    waypoint: Arc<Waypoint>,
    origins: Arc<Origins>,
    log: MemoryLog,
    /// The table the waypoint serves; storing a new one is a config reload.
    services: Arc<ArcSwap<ServiceTable>>,
    /// What the redirected applications dialled.
    dst: SocketAddrV4,
}

impl Dataplane {
    async fn start(service: Service) -> Self {
        Self::with(service, WaypointConfig::default(), AccessLogFormat::Text).await
    }

    async fn with(service: Service, config: WaypointConfig, format: AccessLogFormat) -> Self {
        Self::with_table(ServiceTable::new(vec![service]), config, format).await
    }

    /// A waypoint serving one service under the AuthorizationPolicies in `yaml`.
    async fn guarded(service: Service, yaml: &str) -> Self {
        Self::with_table(
            ServiceTable::new(vec![service]).with_policies(policies(yaml), 1),
            WaypointConfig::default(),
            AccessLogFormat::Text,
        )
        .await
    }

    async fn with_table(
        table: ServiceTable,
        config: WaypointConfig,
        format: AccessLogFormat,
    ) -> Self {
        let origins = Arc::new(Origins::default());
        let (access_log, log) = AccessLog::memory(format);
        let services = Arc::new(ArcSwap::from_pointee(table));
        let waypoint = Waypoint::new(
            services.clone(),
            origins.clone(),
            Arc::new(Identities),
            access_log,
            config,
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind waypoint");
        let addr = listener.local_addr().expect("waypoint addr");
        let netns_cookie = crate::netns::netns_cookie(&listener).expect("SO_NETNS_COOKIE");
        tokio::spawn(
            waypoint
                .clone()
                .serve(listener, crate::drain::always_open()),
        );
        Self {
            addr,
            netns_cookie,
            waypoint,
            origins,
            log,
            services,
            dst: "10.9.8.7:80".parse().expect("dst"),
        }
    }

    /// Connects as an application in `cgroup_id` whose connect() the kernel redirected.
    async fn connect(&self, cgroup_id: u64) -> TcpStream {
        self.connect_in(self.netns_cookie, self.addr, cgroup_id)
            .await
    }

    /// Connects to the waypoint listener at `listener` as an application in `cgroup_id` whose
    /// connect() the kernel redirected and recorded in the namespace `netns_cookie`.
    async fn connect_in(
        &self,
        netns_cookie: u64,
        listener: SocketAddr,
        cgroup_id: u64,
    ) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("client socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind client");
        let local = socket.local_addr().expect("client addr");
        let origin = Origin {
            cgroup_id,
            identity_id: 0,
            dst_addr: self.dst.ip().octets(),
            dst_port: self.dst.port(),
            family: FAMILY_INET,
            service_id: 0,
            pid: 4242,
            uid: 1000,
            gid: 1000,
        };
        self.origins
            .0
            .lock()
            .expect("origins lock")
            .insert((netns_cookie, local), origin);
        socket.connect(listener).await.expect("connect to waypoint")
    }

    /// A keep-alive HTTP/1.1 client connection as an application in `cgroup_id`.
    async fn client(&self, cgroup_id: u64) -> SendRequest<Full<Bytes>> {
        let stream = self.connect(cgroup_id).await;
        let (sender, conn) = handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        sender
    }

    /// Waits until the access log has `n` lines and returns them.
    async fn log_lines(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            let lines = self.log.lines();
            if lines.len() >= n {
                return lines;
            }
            sleep(Duration::from_millis(25)).await;
        }
        panic!("expected {n} access-log lines, got {:?}", self.log.lines());
    }
}

/// AuthorizationPolicies from YAML, compiled with `istio-system` as the root namespace.
fn policies(yaml: &str) -> Arc<PolicySet> {
    let set = match parse_str(Path::new("t.yaml"), yaml) {
        Ok(set) => set,
        Err(errors) => panic!("test policies must be valid:\n{errors}"),
    };
    Arc::new(PolicySet::new(&set.authorization_policies, "istio-system"))
}

/// Sends a request and returns the response head and its body as text.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (::http::response::Parts, String) {
    let response = timeout(WAIT, sender.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = timeout(WAIT, body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (parts, String::from_utf8_lossy(&body).into_owned())
}

fn get(uri: &str, host: &str) -> Request<Full<Bytes>> {
    Request::get(uri)
        .header("host", host)
        .header("user-agent", "waypoint-test/1")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// Writes raw bytes and reads until the waypoint closes the connection.
async fn raw_exchange(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.expect("write request");
    let mut response = Vec::new();
    let _ = timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("waypoint closes the connection");
    String::from_utf8_lossy(&response).into_owned()
}
