//! HTTP/1.1 ports: a hyper server towards the application, and for each request a forward to the
//! service's endpoint over the waypoint's pooled client. Bodies stream; hop-by-hop headers are
//! dropped both ways (RFC 9110 §7.6.1); every response carries `via` (RFC 9110 §7.6.3).
use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use std::net::SocketAddr;

use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{Either, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, upgrade::OnUpgrade};
use hyper_util::{
    client::legacy::connect::HttpInfo,
    rt::{TokioIo, TokioTimer},
};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    time::{Instant, timeout},
};
use tracing::{debug, info};

use self::upgrade::{SharedIo, Tunnels};
use super::{
    Inbound, Waypoint, authz,
    body::{self, Activity, BodyEnd, Metered},
    framing::{Framed, FramingSignal, Violation},
    phases::{self, RequestProtocol, TargetRefused, UpgradeRequest},
    reply::{
        CLUSTER_NOT_FOUND, CONNECT_NOT_SUPPORTED, DNS_RESOLUTION_FAILURE, LocalReply,
        NO_HEALTHY_UPSTREAM, NO_SERVER_NAME, PATH_NORMALIZATION_FAILED, PATH_PARAMETER_REFUSED,
        REQUEST_HEADER_TIMEOUT, ROUTE_NOT_FOUND, STREAM_IDLE_TIMEOUT, TLS_CREDENTIAL_UNAVAILABLE,
        UPGRADE_FAILED, UPSTREAM_RESPONSE_TIMEOUT,
    },
    upstream::{UpstreamBody, bound::Bound, tls_connect::UpstreamLocal},
};
use crate::{
    drain::{DrainPhase, DrainSignal},
    model::{Service, Upstream},
    policy::NormalizedTarget,
    telemetry::{
        AccessLog, AccessLogEntry,
        metrics::{RequestOutcome, RequestSeries},
    },
    tls::{TlsClient, UpstreamTls},
};

/// hyper refuses a read buffer smaller than this.
const MIN_BUF_SIZE: usize = 8192;

#[path = "exchange.rs"]
mod exchange;
#[path = "h2_server.rs"]
mod h2_server;
#[path = "upgrade.rs"]
mod upgrade;

use self::exchange::Exchange;

pub(super) type ResponseBody = Either<Metered<UpstreamBody>, Full<Bytes>>;

fn empty_body() -> ResponseBody {
    Either::Right(Full::new(Bytes::new()))
}

pub(super) async fn serve(waypoint: Arc<Waypoint>, stream: TcpStream, inbound: Arc<Inbound>) {
    let config = &waypoint.config;
    if phases::speaks_h2(inbound.service.protocol)
        && h2_server::opens_with_preface(&stream, config.header_read_timeout).await
    {
        return h2_server::serve(waypoint, stream, inbound).await;
    }
    // hyper reads the client only through the framing check (see `framing`).
    let framed = Framed::new(stream, config.max_header_bytes);
    let framing = framed.signal();
    let io = SharedIo::new(framed);
    // Every WebSocket tunnel holds a sender; the connection is over when all are gone.
    let (tunnels, mut tunnels_done) = mpsc::channel::<()>(1);
    // This connection's own upstream connection, for plain-text HTTP/1.1 upstreams.
    let bound = waypoint.client.bound();
    let service = {
        let waypoint = waypoint.clone();
        let inbound = inbound.clone();
        let framing = framing.clone();
        service_fn(move |req| {
            let waypoint = waypoint.clone();
            let inbound = inbound.clone();
            let framing = framing.clone();
            let tunnels = tunnels.clone();
            let bound = bound.clone();
            async move {
                let asked_upgrade = phases::upgrade_request(req.version(), req.headers()).is_some();
                let mut response =
                    forward(&waypoint, inbound, &framing, req, &tunnels, Some(&bound)).await;
                if asked_upgrade {
                    // The framing gate holds what the client sent after the request until now.
                    let tunnel = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    framing.decide_upgrade(tunnel);
                    if !tunnel {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                if waypoint.drain.phase().closes_after_response() {
                    // Draining: the client learns from this response to reconnect (to whoever
                    // listens now), rather than from a close racing its next request.
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let drain = waypoint.drain.signal();
    let served = {
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(config.header_read_timeout)
            .max_header_size(config.max_header_bytes)
            // Room past the header limit, so that a head slightly over it is read whole and
            // answered 431 rather than cut off mid-read (which resets the connection before the
            // answer).
            .max_buf_size(config.max_header_bytes.saturating_add(MIN_BUF_SIZE))
            .serve_connection(TokioIo::new(io.clone()), service)
            .with_upgrades();
        tokio::pin!(connection);
        let refused = framing.refused();
        let close = drain.reached(DrainPhase::Close);
        let cut = drain.reached(DrainPhase::Cut);
        tokio::pin!(refused, close, cut);
        let mut shutting_down = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => break served,
                // A request was refused before hyper saw it: hyper answers the ones before it,
                // then stops, and the refusal is answered below.
                () = &mut refused, if !shutting_down => {
                    connection.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
                // Draining: an idle connection closes now, a busy one after its response.
                () = &mut close, if !shutting_down => {
                    connection.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
                // The drain timeout: a request still in flight is cut off (and logged as such
                // when its handler is dropped with the connection).
                () = &mut cut => {
                    info!("cut off at the drain timeout");
                    break Ok(());
                }
            }
        }
    };
    // hyper is done; a WebSocket tunnel may still be using the connection.
    while tunnels_done.recv().await.is_some() {}
    let Some(mut framed) = io.take_back() else {
        return;
    };
    let linger = config.header_read_timeout;
    if let Some(rejection) = framed.rejection() {
        let Violation { status, details } = rejection.violation;
        let reply = LocalReply::protocol_error(status, details);
        if rejection.head_sent {
            // Its handler saw the body fail and logged it; hyper stopped before answering.
            if framed.unanswered_since_head() {
                answer(&mut framed, &reply, linger).await;
            }
        } else {
            info!(%status, details, "refused a request for its framing; not forwarded");
            let sent = served.is_ok() && answer(&mut framed, &reply, linger).await;
            log_refusal(&waypoint, &inbound, &reply, sent);
        }
        close(framed.get_mut()).await;
        return;
    }
    let source = match served {
        Ok(()) => {
            debug!("connection closed");
            return;
        }
        Err(source) => source,
    };
    if source.is_timeout() && framed.partial_head() {
        info!("no complete request head within the header read timeout; answering 408");
        let sent = answer(&mut framed, &REQUEST_HEADER_TIMEOUT, linger).await;
        log_refusal(&waypoint, &inbound, &REQUEST_HEADER_TIMEOUT, sent);
        close(framed.get_mut()).await;
        return;
    }
    // hyper answered these itself (431 or 400) before any request reached us: the framing
    // check lets through nothing hyper refuses, so this is a backstop. Logged as Envoy logs a
    // downstream protocol error.
    let (code, details) = if source.is_parse_too_large() {
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "http1.headers_too_large",
        )
    } else if source.is_parse() && !source.is_parse_version_h2() {
        (StatusCode::BAD_REQUEST, "http1.codec_error")
    } else {
        if source.is_timeout() {
            debug!("no request within the header read timeout; closed");
        } else {
            debug!(error = %source, "connection ended");
        }
        return;
    };
    info!(error = %source, %code, "rejected a malformed request");
    log_refusal(
        &waypoint,
        &inbound,
        &LocalReply::protocol_error(code, details),
        false,
    );
}

/// Writes one of the waypoint's answers after hyper has stopped. `false` when the client did
/// not take it within `limit`.
async fn answer(framed: &mut Framed<TcpStream>, reply: &LocalReply, limit: Duration) -> bool {
    let bytes = reply.to_http1();
    let write = async {
        framed.write_all(&bytes).await?;
        framed.flush().await
    };
    matches!(timeout(limit, write).await, Ok(Ok(())))
}

/// Ends a connection the waypoint refused: our side first, then whatever the client still
/// sends is read and dropped for a moment, so that closing does not reset the connection
/// (which could discard the answer before the client reads it). Envoy's delayed close.
async fn close(stream: &mut TcpStream) {
    const LINGER: Duration = Duration::from_secs(1);
    const LINGER_BYTES: usize = 1 << 20;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let _ = timeout(LINGER, async {
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// The access-log line (and request metrics) of a request refused before it had a handler.
/// Envoy logs these `"- - -"`: no request was accepted.
fn log_refusal(waypoint: &Waypoint, inbound: &Inbound, reply: &LocalReply, sent: bool) {
    let mut entry = inbound.entry(SystemTime::now());
    entry.response_code = reply.status.as_u16();
    entry.response_flags = reply.flag.map(str::to_owned);
    entry.response_code_details = Some(reply.details.to_string());
    entry.bytes_sent = if sent { reply.body.len() as u64 } else { 0 };
    waypoint.access_log.log(&entry);
    inbound
        .request_labels(&inbound.service, RequestProtocol::Http)
        .record(&RequestOutcome {
            grpc_status: None,
            code: entry.response_code,
            flags: reply.flag.unwrap_or("-"),
            duration: Duration::ZERO,
            request_bytes: 0,
            response_bytes: entry.bytes_sent,
        });
}

/// One request, phase by phase (see [`phases`]). Never fails: every failure is an HTTP answer,
/// as Envoy's local replies, and every answer is logged once (the log phase, [`Exchange`]).
async fn forward(
    waypoint: &Waypoint,
    inbound: Arc<Inbound>,
    framing: &FramingSignal,
    req: Request<Incoming>,
    tunnels: &Tunnels,
    bound: Option<&Arc<Bound>>,
) -> Response<ResponseBody> {
    let mut exchange = Exchange::start(waypoint, inbound, &req);
    let request = match request_filter(waypoint, &mut exchange, req) {
        Ok(request) => request,
        Err(reply) => return exchange.local(reply),
    };
    let Routed { service, tls, name } = match route_and_authorize(waypoint, &mut exchange, &request)
    {
        Ok(routed) => routed,
        Err(reply) => return exchange.local(reply),
    };
    let peer = match upstream_peer(waypoint, &mut exchange, &service, tls, name.as_deref()).await {
        Ok(peer) => peer,
        Err(reply) => return exchange.local(reply),
    };
    let mut request = request;
    if let Some(client) = request.on_upgrade.take() {
        // Boxed: a WebSocket upgrade is rare, and its future is the largest of the request's;
        // inline, every plain request's future would be as large.
        return Box::pin(upgrade::forward(
            waypoint, exchange, request, peer, client, tunnels,
        ))
        .await;
    }
    proxy(waypoint, exchange, framing, request, peer, bound).await
}

/// A request that passed the request filter: what authorization sees is what is forwarded.
pub(super) struct Filtered {
    /// Headers cleaned ([`phases::clean_headers`]), `Host` set to [`Filtered::authority`].
    pub(super) parts: http::request::Parts,
    pub(super) body: Incoming,
    pub(super) target: NormalizedTarget,
    /// `Upgrade: websocket`: the client connection once it is upgraded; tunnelled when the
    /// upstream answers 101 (see `upgrade.rs`).
    pub(super) on_upgrade: Option<OnUpgrade>,
}

/// Where the request goes: the endpoint, and the TLS to originate to it.
pub(super) struct Peer {
    pub(super) addr: SocketAddr,
    pub(super) tls: Option<(TlsClient, ServerName<'static>)>,
    /// HTTP/2 (the ServiceEntry port is `HTTP2` or `GRPC`): h2c, or ALPN `h2` over TLS.
    pub(super) h2: bool,
}

impl Peer {
    pub(super) fn tls(&self) -> Option<(&TlsClient, ServerName<'static>)> {
        self.tls
            .as_ref()
            .map(|(client, name)| (client, name.clone()))
    }
}

/// Phase 1, request filter: the authority, `CONNECT` and `Upgrade`, one normalized target,
/// header hygiene. (The framing gate ran before hyper parsed the request.)
fn request_filter(
    waypoint: &Waypoint,
    exchange: &mut Exchange,
    mut req: Request<Incoming>,
) -> Result<Filtered, LocalReply> {
    let authority = phases::authority(
        req.uri(),
        req.version(),
        req.headers(),
        &exchange.inbound.service,
    )
    .map_err(LocalReply::bad_request)?;
    exchange.entry.authority = authority
        .as_ref()
        .and_then(|a| a.to_str().ok())
        .map(str::to_owned);
    if req.method() == Method::CONNECT {
        return Err(CONNECT_NOT_SUPPORTED);
    }
    let upgrade = phases::upgrade_request(req.version(), req.headers());
    let upgrade = match upgrade {
        // Envoy's HTTP/1 codec: an h2c upgrade is not taken; its headers are removed (by
        // `clean_headers` below) and the request is served as HTTP/1.1.
        Some(UpgradeRequest::H2c) => {
            debug!("an h2c upgrade request: served as HTTP/1.1, not upgraded");
            None
        }
        // Envoy answers an upgrade its route does not accept 403 `upgrade_failed`.
        Some(UpgradeRequest::Other) => {
            info!("refused an upgrade to a protocol other than websocket; answering 403");
            return Err(UPGRADE_FAILED);
        }
        upgrade => upgrade,
    };
    let raw_target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let target =
        phases::request_target(raw_target, waypoint.config.path_parameters).map_err(|refused| {
            match refused {
                TargetRefused::Normalization(error) => {
                    info!(%error, "the request path cannot be normalized; answering 400");
                    PATH_NORMALIZATION_FAILED
                }
                TargetRefused::PathParameter(error) => {
                    info!(%error, "refused a path parameter; answering 400");
                    PATH_PARAMETER_REFUSED
                }
            }
        })?;
    let on_upgrade = upgrade.map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    phases::clean_headers(&mut parts.headers);
    if let Some(authority) = &authority {
        parts.headers.insert(header::HOST, authority.clone());
    }
    Ok(Filtered {
        parts,
        body,
        target,
        on_upgrade,
    })
}

/// What the route and authorize phases chose.
struct Routed {
    service: Arc<Service>,
    /// The TLS its upstream wants.
    tls: Option<UpstreamTls>,
    /// On a DYNAMIC_DNS ServiceEntry: the concrete name to resolve and connect to.
    name: Option<String>,
}

/// Phases 2 and 3, route and authorize, against one table generation: the table may have been
/// replaced since accept (DNS refresh, config reload), and a request sees services and
/// policies of the same generation.
fn route_and_authorize(
    waypoint: &Waypoint,
    exchange: &mut Exchange,
    request: &Filtered,
) -> Result<Routed, LocalReply> {
    let table = waypoint.services.load();
    let route = phases::route(
        &table,
        &exchange.inbound.service,
        exchange.entry.authority.as_deref(),
    )
    .ok_or(CLUSTER_NOT_FOUND)?;
    if route.by_host {
        exchange.entry.upstream_cluster = Some(route.service.cluster_name());
        exchange.labels = exchange
            .inbound
            .request_labels(&route.service, exchange.protocol);
    }
    let name = match route.service.upstream {
        Upstream::DynamicDns => {
            match phases::dynamic_name(&route.service, exchange.entry.authority.as_deref()) {
                Ok(name) => Some(name),
                Err(why) => {
                    info!(%why, "no route on a DYNAMIC_DNS ServiceEntry; answering 404");
                    return Err(ROUTE_NOT_FOUND);
                }
            }
        }
        _ => None,
    };
    let http = phases::HttpRequest {
        method: request.parts.method.as_str(),
        host: exchange.entry.authority.as_deref().unwrap_or(""),
        path: request.target.matched_path(),
        headers: &request.parts.headers,
    };
    let decision = authz::authorize_request(
        &table.policies,
        table.generation,
        &exchange.inbound,
        &route.service,
        &http,
    );
    if !decision.allowed {
        // The body is never read: hyper drains it (or closes) before the next request.
        return Err(authz::denied(&decision));
    }
    if let Some(reason) = table.tls_unavailable(route.service.id) {
        tracing::warn!(
            service = %route.service.cluster_name(),
            %reason,
            "DestinationRule TLS cannot be originated; refused, never sent in plain text"
        );
        return Err(TLS_CREDENTIAL_UNAVAILABLE);
    }
    let tls = table.tls(route.service.id).cloned();
    Ok(Routed {
        service: route.service,
        tls,
        name,
    })
}

/// Phase 4, upstream peer: the endpoint (round-robin; for DYNAMIC_DNS, among what `name`
/// resolves to), and for DestinationRule TLS the server name, fixed before anything is sent; a
/// request that cannot have one is refused rather than sent in plain text.
async fn upstream_peer(
    waypoint: &Waypoint,
    exchange: &mut Exchange,
    service: &Service,
    tls: Option<UpstreamTls>,
    name: Option<&str>,
) -> Result<Peer, LocalReply> {
    let addr = match name {
        Some(name) => {
            let addrs = waypoint.dynamic.resolve(name).await.map_err(|error| {
                info!(%name, error = %error.chain(), "a DYNAMIC_DNS name did not resolve; answering 503");
                DNS_RESOLUTION_FAILURE
            })?;
            SocketAddr::new(addrs[waypoint.pick() % addrs.len()], service.upstream_port)
        }
        None => service
            .upstream_addr(exchange.inbound.original_dst.ip(), waypoint.pick())
            .ok_or(NO_HEALTHY_UPSTREAM)?,
    };
    exchange.entry.upstream_host = Some(addr);
    let tls = match tls {
        None => None,
        Some(tls) => {
            let name = phases::server_name(&tls, service, exchange.entry.authority.as_deref())
                .ok_or(NO_SERVER_NAME)?;
            Some((tls.client, name))
        }
    };
    Ok(Peer {
        addr,
        tls,
        h2: phases::speaks_h2(service.protocol),
    })
}

/// The request as it goes upstream: origin-form target on the endpoint's authority, HTTP/1.1,
/// our `via`.
pub(super) fn upstream_parts(
    request: &mut Filtered,
    peer: &Peer,
) -> Result<http::request::Parts, LocalReply> {
    let path = request.target.to_forward();
    let mut parts = std::mem::replace(&mut request.parts, Request::new(()).into_parts().0);
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(peer.addr.to_string())
        .path_and_query(path.as_str())
        .build()
        .map_err(|_| LocalReply::bad_request("invalid_path"))?;
    parts.version = if peer.h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    parts.extensions = http::Extensions::new();
    phases::append_via(&mut parts.headers);
    Ok(parts)
}

/// Phase 5, forward: the request over the downstream connection's bound upstream connection or
/// a pooled client, the response relayed as it streams.
async fn proxy(
    waypoint: &Waypoint,
    mut exchange: Exchange,
    framing: &FramingSignal,
    mut request: Filtered,
    peer: Peer,
    bound: Option<&Arc<Bound>>,
) -> Response<ResponseBody> {
    let parts = match upstream_parts(&mut request, &peer) {
        Ok(parts) => parts,
        Err(reply) => return exchange.local(reply),
    };
    let idle = waypoint.config.idle_timeout;
    let request_end = Arc::new(Mutex::new(None));
    let body = {
        let request_end = request_end.clone();
        Metered::new(
            request.body,
            exchange.received.clone(),
            exchange.activity.clone(),
            idle,
            Box::new(move |end| *request_end.lock().unwrap_or_else(|e| e.into_inner()) = Some(end)),
        )
    };
    let sent_at = Instant::now();
    let upstream_addr = peer.addr;
    debug!(method = %parts.method, path = %parts.uri.path(), %upstream_addr, "forwarding");
    let response = tokio::select! {
        response = waypoint.client.send(Request::from_parts(parts, body), peer.tls(), peer.h2, bound) => Some(response),
        () = exchange.activity.idle(idle) => None,
    };
    let request_end = *request_end.lock().unwrap_or_else(|e| e.into_inner());
    match (response, request_end) {
        (Some(Ok(response)), _) => {
            exchange.entry.upstream_service_time = Some(sent_at.elapsed());
            exchange.upstream(response, idle)
        }
        (_, Some(BodyEnd::IdleTimeout)) | (None, None) => {
            info!(?idle, "the request stream was idle; answering 408");
            exchange.local(STREAM_IDLE_TIMEOUT)
        }
        (None, Some(_)) => {
            info!(?idle, "no upstream response headers; answering 504");
            exchange.local(UPSTREAM_RESPONSE_TIMEOUT)
        }
        (Some(Err(_)), Some(BodyEnd::Failed)) => exchange.local(match framing.violation() {
            // The framing check cut the body (a bad chunk after the head had gone upstream).
            Some(Violation { status, details }) => LocalReply::protocol_error(status, details),
            None => LocalReply::bad_request("downstream_request_body_error"),
        }),
        (Some(Err(error)), _) => {
            let failure = error.failure();
            info!(%upstream_addr, %error, flag = failure.flag, "upstream request failed");
            exchange.entry.upstream_transport_failure_reason = failure.transport_failure.clone();
            exchange.local(failure.reply())
        }
    }
}
