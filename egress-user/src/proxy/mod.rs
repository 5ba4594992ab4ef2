//! The waypoint: accepts connections the kernel redirected, finds out where each was headed and
//! who opened it, and proxies it — HTTP/1.1 request by request, anything else as a byte splice.
//!
//! Phases of one connection: accept (bounded) → origin lookup (a connection the kernel did not
//! redirect is closed, never proxied) → service → principal → [`http`] or [`splice`].
mod authz;
mod body;
mod dynamic_dns;
mod framing;
mod http;
pub mod limits;
pub(crate) mod phases;
mod reply;
mod splice;
mod upstream;

#[cfg(test)]
mod tests;

/// The framing gate's fuzz property, for `crate::fuzzing`.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use framing::fuzz::check as check_framing;

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use egress_common::Origin;
use thiserror::Error;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    time::Instant,
};
use tracing::{Instrument, debug, field, info, info_span, warn};

use self::phases::RequestProtocol;
use crate::{
    drain::{self, Drain, DrainPhase, DrainPlan, Gate},
    identity::Principal,
    model::{IdentitySource, OriginSource, Service, ServiceTable},
    policy::PathParameters,
    telemetry::{
        self, AccessLog, AccessLogEntry, Metrics,
        metrics::{
            ConnectionLabels, Labels, RequestSeries, SourceWorkload, TCP_CLOSED_TOTAL,
            TCP_OPENED_TOTAL,
        },
    },
    verdicts::{Learner, VerdictSink},
};

/// Limits of the waypoint. The defaults follow Envoy's where Envoy has one.
#[derive(Clone, Debug)]
pub struct WaypointConfig {
    /// Largest request head (request line and headers); more is answered 431. Envoy: 60 KiB.
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head. hyper also applies it to the wait
    /// for the next request on a keep-alive connection, which bounds idle HTTP connections.
    pub header_read_timeout: Duration,
    /// A stream (an HTTP exchange or a spliced connection) with no bytes moving in either
    /// direction for this long is ended (Envoy's `stream_idle_timeout`, TCP proxy `idle_timeout`).
    pub idle_timeout: Duration,
    /// Connections served at once; more are closed on accept ([`limits`]).
    pub max_connections: usize,
    /// Time allowed to connect to an upstream endpoint.
    pub upstream_connect_timeout: Duration,
    /// How connections reach the waypoint, and so where their destination and identity come
    /// from.
    pub capture: CaptureMode,
    /// What a `;` in a request path gets: refused (default) or forwarded and matched without.
    pub path_parameters: PathParameters,
    /// The resolver configuration DYNAMIC_DNS names are resolved with (`--resolv-conf`, the
    /// one `resolution: DNS` uses too).
    pub resolv_conf: std::path::PathBuf,
}

/// How connections reach the waypoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CaptureMode {
    /// The kernel programs redirect them and record, per connection, the destination the
    /// application dialled and the cgroup that dialled it (kernel-attested identity).
    #[default]
    Ebpf,
    /// iptables `REDIRECT` (nat OUTPUT) sends them: the destination comes from
    /// `SO_ORIGINAL_DST`, and every connection is `principal`'s (the sidecar model: one
    /// identity per proxy; nothing in the kernel says which process connected). `None`: callers
    /// without identity.
    Iptables { principal: Option<Principal> },
}

impl Default for WaypointConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 60 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            upstream_connect_timeout: Duration::from_secs(5),
            capture: CaptureMode::Ebpf,
            path_parameters: PathParameters::Reject,
            resolv_conf: crate::dns::RESOLV_CONF.into(),
        }
    }
}

/// Why a proxied message body ended early (the error the client or upstream connection sees).
#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("reading a message body")]
    Body {
        #[source]
        source: hyper::Error,
    },
    #[error("no bytes moved in either direction for {idle:?}")]
    StreamIdle { idle: Duration },
}

/// The egress waypoint. Build one with [`Waypoint::new`], run it with [`Waypoint::serve`].
pub struct Waypoint {
    services: Arc<ArcSwap<ServiceTable>>,
    origins: Arc<dyn OriginSource>,
    identities: Arc<dyn IdentitySource>,
    access_log: AccessLog,
    config: WaypointConfig,
    client: upstream::UpstreamClient,
    connections: Arc<Semaphore>,
    /// Round-robin position over a service's endpoints.
    next_endpoint: AtomicUsize,
    /// Where L4-decidable denies are cached (the kernel), if anywhere.
    verdicts: Option<Arc<dyn VerdictSink>>,
    /// Tells every connection how far a drain has got.
    drain: Drain,
    /// Resolves the names of DYNAMIC_DNS requests.
    dynamic: dynamic_dns::DynamicResolver,
}

/// How a drain ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open at the drain timeout, cut off.
    pub cut: usize,
}

/// What is known about an accepted connection once its origin is resolved.
struct Inbound {
    peer: SocketAddr,
    /// What the application dialled, from the kernel's origin record.
    original_dst: SocketAddr,
    service: Arc<Service>,
    /// Who opened the connection (by its cgroup), or `None` for a caller without identity.
    principal: Option<Principal>,
    /// `spiffe://<principal>`, or `None` for a caller without identity.
    spiffe: Option<String>,
    cluster: String,
    /// Set when a deny of this connection may be cached for its identity anchor.
    learner: Option<Learner>,
    /// Istio's standard labels of the connection's TCP metrics, rendered once at accept.
    tcp_labels: Labels,
    /// The metrics of its requests (HTTP ports only), labelled once at accept.
    request_labels: Option<RequestSeries>,
    /// The metrics of its gRPC requests (`HTTP2` and `GRPC` ports only), labelled once at accept.
    grpc_labels: Option<RequestSeries>,
}

impl Inbound {
    fn new(
        peer: SocketAddr,
        original_dst: SocketAddr,
        service: Arc<Service>,
        principal: Option<Principal>,
    ) -> Self {
        let spiffe = principal.as_ref().map(|p| format!("spiffe://{p}"));
        // Labels are rendered here, once per connection, so that recording a request or a
        // connection on the hot path only clones them.
        let source = Self::source_workload(principal.as_ref(), spiffe.as_deref());
        let tcp_labels = Self::standard_labels(source, &service, "tcp");
        let request_labels = service.protocol.is_http().then(|| {
            Metrics::global().request_series(Self::standard_labels(source, &service, "http"))
        });
        let grpc_labels = phases::speaks_h2(service.protocol).then(|| {
            Metrics::global().request_series(Self::standard_labels(source, &service, "grpc"))
        });
        Self {
            peer,
            original_dst,
            cluster: service.cluster_name(),
            service,
            spiffe,
            principal,
            learner: None,
            tcp_labels,
            request_labels,
            grpc_labels,
        }
    }

    /// An access-log entry with what the connection already says.
    fn entry(&self, start_time: SystemTime) -> AccessLogEntry {
        AccessLogEntry {
            start_time,
            upstream_cluster: Some(self.cluster.clone()),
            downstream_local_address: Some(self.original_dst),
            downstream_remote_address: Some(self.peer),
            downstream_peer_principal: self.spiffe.clone(),
            ..AccessLogEntry::default()
        }
    }

    /// Istio's standard labels for the connection's TCP metrics (`request_protocol="tcp"`,
    /// also on HTTP ports, as ztunnel reports every connection).
    fn tcp_labels(&self) -> Labels {
        self.tcp_labels.clone()
    }

    /// The request metrics, with Istio's standard labels, of a request of `protocol` on this
    /// connection to `service`: the connection's own service (labelled at accept), or — when the
    /// Host header picked another ServiceEntry on a shared address, or gRPC arrived on a port that
    /// was not expected to carry it — labelled now.
    fn request_labels(&self, service: &Service, protocol: RequestProtocol) -> RequestSeries {
        let rendered = match protocol {
            RequestProtocol::Http => &self.request_labels,
            RequestProtocol::Grpc => &self.grpc_labels,
        };
        match rendered {
            Some(labels) if service.id == self.service.id => labels.clone(),
            _ => {
                let source = Self::source_workload(self.principal.as_ref(), self.spiffe.as_deref());
                Metrics::global().request_series(Self::standard_labels(
                    source,
                    service,
                    protocol.as_str(),
                ))
            }
        }
    }

    /// The caller as Istio's `source_*` labels see it. In host mode a workload is known only by
    /// its principal: the workload name is its service account (the cgroup `ns/NS/sa/SA` is the
    /// workload), its namespace the principal's.
    fn source_workload<'a>(
        principal: Option<&'a Principal>,
        spiffe: Option<&'a str>,
    ) -> Option<SourceWorkload<'a>> {
        Some(SourceWorkload {
            namespace: &principal?.namespace,
            workload: &principal?.service_account,
            principal: spiffe?,
        })
    }

    /// Istio's connection labels for traffic to `service`: `destination_service` (and `_name`) is
    /// the ServiceEntry's first host — istiod builds one service per host and names it after the
    /// host — and `destination_service_namespace` the ServiceEntry's namespace.
    fn standard_labels(
        source: Option<SourceWorkload<'_>>,
        service: &Service,
        protocol: &str,
    ) -> Labels {
        let labels = ConnectionLabels {
            source,
            service_host: service.hosts.first().map_or("unknown", String::as_str),
            service_namespace: &service.namespace,
            request_protocol: protocol,
        };
        if protocol == "tcp" {
            // Envoy and ztunnel label TCP metrics with the flags known when the connection opened
            // (none), and keep that label set for its close and bytes.
            labels.render(&[("response_flags", "-")])
        } else {
            labels.render(&[])
        }
    }
}

impl Waypoint {
    pub fn new(
        services: Arc<ArcSwap<ServiceTable>>,
        origins: Arc<dyn OriginSource>,
        identities: Arc<dyn IdentitySource>,
        access_log: AccessLog,
        config: WaypointConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            services,
            origins,
            identities,
            access_log,
            client: upstream::client(&config),
            dynamic: dynamic_dns::DynamicResolver::new(config.resolv_conf.clone()),
            connections: Arc::new(Semaphore::new(
                config.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            config,
            next_endpoint: AtomicUsize::new(0),
            verdicts: None,
            drain: Drain::default(),
        })
    }

    /// As [`Waypoint::new`], and L4-decidable denies are handed to `verdicts` so the kernel
    /// refuses the next connect of that identity to that service.
    pub fn with_verdict_cache(
        services: Arc<ArcSwap<ServiceTable>>,
        origins: Arc<dyn OriginSource>,
        identities: Arc<dyn IdentitySource>,
        access_log: AccessLog,
        config: WaypointConfig,
        verdicts: Arc<dyn VerdictSink>,
    ) -> Arc<Self> {
        let mut waypoint = Self::new(services, origins, identities, access_log, config);
        if let Some(w) = Arc::get_mut(&mut waypoint) {
            w.verdicts = Some(verdicts);
        }
        waypoint
    }

    /// Accepts while `gate` is open, waits while it is paused (the listener stays open:
    /// connects queue in its backlog), and returns, dropping the listener, once it is closed.
    /// Per-connection errors are logged, never fatal; a failing listener is returned.
    ///
    /// The listener's network namespace is read from it ([`crate::netns::netns_cookie`]); an
    /// error doing so is returned before anything is accepted. See [`Waypoint::serve_netns`].
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        gate: watch::Receiver<Gate>,
    ) -> io::Result<()> {
        let netns_cookie = crate::netns::netns_cookie(&listener)?;
        self.serve_netns(listener, netns_cookie, gate).await
    }

    /// As [`Waypoint::serve`], for a listener in the network namespace with cookie
    /// `netns_cookie` (the kernel records each redirected client by namespace, ip and port).
    /// One waypoint serves any number of listeners at once — one per Kubernetes pod namespace —
    /// each with its own cookie; they share the connection limit and [`Waypoint::drain`].
    pub async fn serve_netns(
        self: Arc<Self>,
        listener: TcpListener,
        netns_cookie: u64,
        mut gate: watch::Receiver<Gate>,
    ) -> io::Result<()> {
        while let Some(accepted) = drain::accept(&listener, &mut gate).await {
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) if telemetry::is_transient_accept_error(&error) => {
                    warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                limits::rejected(peer, self.config.max_connections);
                drop(stream);
                continue;
            };
            let waypoint = self.clone();
            tokio::spawn(async move {
                waypoint.handle(stream, netns_cookie, peer).await;
                drop(permit);
            });
        }
        Ok(())
    }

    /// Drains the connections this waypoint serves (stop accepting first, see [`Waypoint::serve`]):
    /// HTTP responses say `connection: close` at once, idle HTTP connections are closed after
    /// [`crate::drain::DRAIN_NOTICE`], and whatever is still open at `timeout` is cut off (each
    /// cut request or connection is logged). Returns as soon as no connection is left.
    pub async fn drain(&self, timeout: Duration) -> Drained {
        let plan = DrainPlan::new(timeout);
        let start = Instant::now();
        let all = u32::try_from(self.connections_limit()).unwrap_or(u32::MAX);
        self.drain.advance(DrainPhase::Notice);
        let mut all_closed = Box::pin(self.connections.acquire_many(all));
        tokio::select! {
            _ = &mut all_closed => return Drained::default(),
            () = tokio::time::sleep_until(start + plan.close_at) => {}
        }
        self.drain.advance(DrainPhase::Close);
        tokio::select! {
            _ = &mut all_closed => return Drained::default(),
            () = tokio::time::sleep_until(start + plan.cut_at) => {}
        }
        // Give back what the waiter holds, so that the count of open connections is right.
        drop(all_closed);
        let cut = self.connections_limit() - self.connections.available_permits();
        info!(
            cut,
            ?timeout,
            "drain timeout: cutting off the connections still open"
        );
        self.drain.advance(DrainPhase::Cut);
        // Cut connections log their lines as they end; that takes a moment, not more.
        let _ = tokio::time::timeout(CUT_GRACE, self.connections.acquire_many(all)).await;
        Drained { cut }
    }

    /// Permits of [`Waypoint::connections`]: the most connections served at once.
    fn connections_limit(&self) -> usize {
        self.config.max_connections.min(Semaphore::MAX_PERMITS)
    }

    /// A deny may be cached for the identity anchor the kernel saw only when that anchor stands
    /// for the same principal as the connection (an anchor registered before a deeper identity
    /// was would otherwise carry the wrong identity's deny).
    fn learner(&self, origin: &Origin, principal: Option<&Principal>) -> Option<Learner> {
        let sink = self.verdicts.as_ref()?;
        let principal = principal?;
        if origin.identity_id == 0
            || self.identities.principal(origin.identity_id).as_ref() != Some(principal)
        {
            return None;
        }
        Some(Learner {
            sink: sink.clone(),
            identity_id: origin.identity_id,
        })
    }

    /// The next endpoint index for round-robin selection.
    fn pick(&self) -> usize {
        self.next_endpoint.fetch_add(1, Ordering::Relaxed)
    }

    async fn handle(self: Arc<Self>, stream: TcpStream, netns_cookie: u64, peer: SocketAddr) {
        let span = info_span!(
            "inbound",
            peer = %peer,
            service = field::Empty,
            principal = field::Empty
        );
        self.proxy(stream, netns_cookie, peer)
            .instrument(span)
            .await
    }

    async fn proxy(self: Arc<Self>, stream: TcpStream, netns_cookie: u64, peer: SocketAddr) {
        // One generation for the service and, on TCP ports, the policies that authorize it.
        let table = self.services.load_full();
        let (origin, principal) = match &self.config.capture {
            CaptureMode::Ebpf => {
                let Some(origin) = self.origins.origin(netns_cookie, peer) else {
                    // A direct connection to the listener. Proxying it would hand any local
                    // process a path to the services without the identity and destination the
                    // kernel attests.
                    warn!("no origin recorded (not redirected by the kernel); closing");
                    return;
                };
                let principal = self.identities.principal(origin.cgroup_id);
                (origin, principal)
            }
            CaptureMode::Iptables { principal } => {
                let Some(origin) = original_dst_origin(&stream, &table) else {
                    return;
                };
                (origin, principal.clone())
            }
        };
        let Some(service) = table.get(origin.service_id).cloned() else {
            let service_id = origin.service_id;
            warn!(
                service_id,
                "no service with this id (configuration changed?); closing"
            );
            return;
        };
        let span = tracing::Span::current();
        let name = format!("{}/{}", service.namespace, service.name);
        span.record("service", name.as_str());
        match &principal {
            Some(p) => span.record("principal", field::display(p)),
            None => span.record("principal", "-"),
        };
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "setting TCP_NODELAY on the client connection failed");
        }
        let original_dst = SocketAddr::new(IpAddr::from(origin.dst_addr), origin.dst_port);
        let shared = table.is_shared(service.id);
        let mut inbound = Inbound::new(peer, original_dst, service, principal);
        // A deny for a shared address belongs to one of its ServiceEntries, not to the address.
        if !shared {
            inbound.learner = self.learner(&origin, inbound.principal.as_ref());
        }
        let inbound = Arc::new(inbound);
        debug!(
            %original_dst,
            netns_cookie,
            cgroup_id = origin.cgroup_id,
            pid = origin.pid,
            uid = origin.uid,
            protocol = %inbound.service.protocol,
            "accepted a redirected connection"
        );
        Metrics::global().add(TCP_OPENED_TOTAL, &inbound.tcp_labels(), 1);
        if inbound.service.protocol.is_http() {
            // Every request is authorized on its own, against the table current at the time.
            drop(table);
            http::serve(self.clone(), stream, inbound.clone()).await;
        } else {
            splice::serve(&self, stream, &inbound, table).await;
        }
        Metrics::global().add(TCP_CLOSED_TOTAL, &inbound.tcp_labels(), 1);
    }
}

/// How long cut-off connections get to log their lines and close.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// The origin of a connection that iptables `REDIRECT` sent here: where it was headed
/// (`SO_ORIGINAL_DST`) and the ServiceEntry route for that. `None` (logged) when the connection
/// was not redirected (its original destination is the listener itself) or is headed for no
/// ServiceEntry: such a connection is closed, never proxied.
fn original_dst_origin(stream: &TcpStream, table: &ServiceTable) -> Option<Origin> {
    let dst = match original_dst(stream) {
        Ok(dst) => dst,
        Err(error) => {
            warn!(%error, "SO_ORIGINAL_DST failed (not redirected by iptables?); closing");
            return None;
        }
    };
    if stream
        .local_addr()
        .is_ok_and(|local| local == SocketAddr::V4(dst))
    {
        warn!("a direct connection to the listener (not redirected); closing");
        return None;
    }
    let Some(service_id) = table.route(SocketAddr::V4(dst)) else {
        warn!(original_dst = %dst, "redirected to the waypoint but no ServiceEntry has this address and port; closing");
        return None;
    };
    Some(Origin {
        service_id,
        dst_addr: dst.ip().octets(),
        dst_port: dst.port(),
        family: egress_common::FAMILY_INET,
        ..Origin::default()
    })
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)`: the destination before netfilter's NAT rewrote it.
fn original_dst(stream: &TcpStream) -> io::Result<std::net::SocketAddrV4> {
    use std::os::fd::AsRawFd as _;
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is a writable sockaddr_in of `len` bytes; the fd is open for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}
