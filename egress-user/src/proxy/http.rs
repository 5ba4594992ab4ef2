//! HTTP/1.1 ports: a hyper server towards the application, and for each request a forward to the
//! service's endpoint over the waypoint's pooled client. Bodies stream; hop-by-hop headers are
//! dropped both ways (RFC 9110 §7.6.1); every response carries `via` (RFC 9110 §7.6.3).
use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use http_body_util::{Either, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    client::legacy::connect::HttpInfo,
    rt::{TokioIo, TokioTimer},
};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, timeout},
};
use tracing::{debug, info};

use super::{
    Inbound, Waypoint, authz,
    body::{Activity, BodyEnd, Metered},
    framing::{Framed, FramingSignal, Violation},
    reply::{
        CLUSTER_NOT_FOUND, CONNECT_NOT_SUPPORTED, LocalReply, NO_HEALTHY_UPSTREAM, NO_SERVER_NAME,
        PATH_NORMALIZATION_FAILED, PATH_PARAMETER_REFUSED, REQUEST_HEADER_TIMEOUT,
        STREAM_IDLE_TIMEOUT, TLS_CREDENTIAL_UNAVAILABLE, UPSTREAM_RESPONSE_TIMEOUT,
    },
    upstream::{UpstreamFailure, tls_connect::UpstreamLocal},
};
use crate::{
    drain::{DrainPhase, DrainSignal},
    model::Service,
    policy::{normalize_request_target, strip_internal_headers},
    telemetry::{
        AccessLog, AccessLogEntry, Metrics,
        metrics::{Labels, RequestOutcome},
    },
    tls::UpstreamTls,
};

/// What the waypoint adds to `via` (RFC 9110 §7.6.3: protocol version and a pseudonym).
pub(super) const VIA: &str = "1.1 egress-waypoint";

/// hyper refuses a read buffer smaller than this.
const MIN_BUF_SIZE: usize = 8192;

pub(super) type ResponseBody = Either<Metered<Incoming>, Full<Bytes>>;

pub(super) async fn serve(waypoint: Arc<Waypoint>, stream: TcpStream, inbound: Arc<Inbound>) {
    let config = &waypoint.config;
    // hyper reads the client only through the framing check (see `framing`).
    let mut framed = Framed::new(stream, config.max_header_bytes);
    let framing = framed.signal();
    let service = {
        let waypoint = waypoint.clone();
        let inbound = inbound.clone();
        let framing = framing.clone();
        service_fn(move |req| {
            let waypoint = waypoint.clone();
            let inbound = inbound.clone();
            let framing = framing.clone();
            async move {
                let mut response = forward(&waypoint, inbound, &framing, req).await;
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
            .serve_connection(TokioIo::new(&mut framed), service);
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
    Metrics::global().record_request(
        &inbound.request_labels(&inbound.service),
        &RequestOutcome {
            code: entry.response_code,
            flags: reply.flag.unwrap_or("-"),
            duration: Duration::ZERO,
            request_bytes: 0,
            response_bytes: entry.bytes_sent,
        },
    );
}

/// One request: checks, authorization, endpoint choice, forward, response. Never fails: every
/// failure is an HTTP answer, as Envoy's local replies.
async fn forward(
    waypoint: &Waypoint,
    inbound: Arc<Inbound>,
    framing: &FramingSignal,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let mut exchange = Exchange::start(waypoint, inbound, &req);

    let authority = match authority(&req, &exchange.inbound.service) {
        Ok(authority) => authority,
        Err(details) => {
            return exchange.local(LocalReply::bad_request(details));
        }
    };
    exchange.entry.authority = authority
        .as_ref()
        .and_then(|a| a.to_str().ok())
        .map(str::to_owned);
    if req.method() == Method::CONNECT {
        return exchange.local(CONNECT_NOT_SUPPORTED);
    }
    // One path for matching and forwarding (design §8.3). Absolute-form targets contribute
    // their path and query; the authority went to `Host` above.
    let raw_target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut target = match normalize_request_target(raw_target) {
        Ok(target) => target,
        Err(error) => {
            info!(%error, "the request path cannot be normalized; answering 400");
            return exchange.local(PATH_NORMALIZATION_FAILED);
        }
    };
    if let Err(error) = target.apply_path_parameters(waypoint.config.path_parameters) {
        info!(%error, "refused a path parameter; answering 400");
        return exchange.local(PATH_PARAMETER_REFUSED);
    }

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Only a trusted proxy sets these; a workload's are dropped before they can match a policy
    // or reach the upstream.
    strip_internal_headers(&mut parts.headers);
    if let Some(authority) = &authority {
        parts.headers.insert(header::HOST, authority.clone());
    }

    // The table may have been replaced since accept (DNS refresh, config reload): use the fresh
    // endpoints of the *same* service, and the policies of that same generation. An id that now
    // names another service is not followed.
    let (service, decision, tls, tls_unavailable) = {
        let table = waypoint.services.load();
        let service = match table.get(exchange.inbound.service.id) {
            Some(current) if same_service(current, &exchange.inbound.service) => current.clone(),
            _ => return exchange.local(CLUSTER_NOT_FOUND),
        };
        // Several ServiceEntries on this address: the Host header says which one (as Envoy
        // picks a virtual host); one that names none of them stays with the kernel's.
        let service = match exchange.entry.authority.as_deref() {
            Some(host) if table.is_shared(service.id) => match table.by_host(service.id, host) {
                Some(sibling) => {
                    exchange.entry.upstream_cluster = Some(sibling.cluster_name());
                    exchange.labels = exchange.inbound.request_labels(sibling);
                    sibling.clone()
                }
                None => service,
            },
            _ => service,
        };
        // What is matched is what is forwarded: the normalized path, the authority sent as
        // `Host`, the headers left once the hop-by-hop ones are gone.
        let request = authz::HttpRequest {
            method: parts.method.as_str(),
            host: exchange.entry.authority.as_deref().unwrap_or(""),
            path: target.matched_path(),
            headers: &parts.headers,
        };
        let decision = authz::authorize_request(
            &table.policies,
            table.generation,
            &exchange.inbound,
            &service,
            &request,
        );
        let tls = table.tls(service.id).cloned();
        let tls_unavailable = table.tls_unavailable(service.id).map(str::to_owned);
        (service, decision, tls, tls_unavailable)
    };
    if !decision.allowed {
        // The body is never read: hyper drains it (or closes) before the next request.
        return exchange.local(authz::denied(&decision));
    }
    if let Some(reason) = tls_unavailable {
        tracing::warn!(
            service = %service.cluster_name(),
            %reason,
            "DestinationRule TLS cannot be originated; refused, never sent in plain text"
        );
        return exchange.local(TLS_CREDENTIAL_UNAVAILABLE);
    }

    let Some(upstream_addr) =
        service.upstream_addr(exchange.inbound.original_dst.ip(), waypoint.pick())
    else {
        return exchange.local(NO_HEALTHY_UPSTREAM);
    };
    exchange.entry.upstream_host = Some(upstream_addr);
    // DestinationRule TLS: the server name is fixed before anything is sent, and a request that
    // cannot have one is refused rather than sent in plain text.
    let tls = match &tls {
        None => None,
        Some(tls) => match server_name(tls, &service, exchange.entry.authority.as_deref()) {
            Some(name) => Some((&tls.client, name)),
            None => return exchange.local(NO_SERVER_NAME),
        },
    };

    let path = target.to_forward();
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(upstream_addr.to_string())
        .path_and_query(path.as_str())
        .build()
    {
        Ok(uri) => uri,
        Err(_) => {
            return exchange.local(LocalReply::bad_request("invalid_path"));
        }
    };
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    append_via(&mut parts.headers);

    let idle = waypoint.config.idle_timeout;
    let request_end = Arc::new(Mutex::new(None));
    let body = {
        let request_end = request_end.clone();
        Metered::new(
            body,
            exchange.received.clone(),
            exchange.activity.clone(),
            idle,
            Box::new(move |end| *request_end.lock().unwrap_or_else(|e| e.into_inner()) = Some(end)),
        )
    };
    let sent_at = Instant::now();
    debug!(method = %parts.method, %path, %upstream_addr, "forwarding");
    let response = tokio::select! {
        response = waypoint.client.send(Request::from_parts(parts, body), tls) => Some(response),
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
            let failure = UpstreamFailure::from_client(&error);
            info!(%upstream_addr, error = ?error, flag = failure.flag, "upstream request failed");
            exchange.entry.upstream_transport_failure_reason = failure.transport_failure.clone();
            exchange.local(LocalReply {
                status: failure.status,
                body: failure.body().into(),
                flag: Some(failure.flag),
                details: failure.details().into(),
                close: false,
            })
        }
    }
}

/// The state of one request while it is answered, and its access-log line.
struct Exchange {
    log: AccessLog,
    inbound: Arc<Inbound>,
    /// Istio's standard labels of this request's metrics.
    labels: Labels,
    entry: AccessLogEntry,
    started: Instant,
    activity: Arc<Activity>,
    received: Arc<AtomicU64>,
    /// Its line has been written.
    logged: bool,
    drain: DrainSignal,
}

impl Exchange {
    fn start<B>(waypoint: &Waypoint, inbound: Arc<Inbound>, req: &Request<B>) -> Self {
        let mut entry = inbound.entry(SystemTime::now());
        let headers = req.headers();
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        entry.method = Some(req.method().as_str().to_owned());
        entry.path = req.uri().path_and_query().map(|pq| pq.as_str().to_owned());
        entry.protocol = Some(protocol(req.version()));
        entry.x_forwarded_for = text("x-forwarded-for");
        entry.user_agent = text("user-agent");
        entry.request_id = text("x-request-id");
        Self {
            log: waypoint.access_log.clone(),
            drain: waypoint.drain.signal(),
            logged: false,
            labels: inbound.request_labels(&inbound.service),
            inbound,
            entry,
            started: Instant::now(),
            activity: Activity::new(),
            received: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A response of the waypoint's own (Envoy's "local reply"), logged at once.
    fn local(mut self, reply: LocalReply) -> Response<ResponseBody> {
        let body = Bytes::from(reply.body.into_owned());
        self.entry.response_code = reply.status.as_u16();
        self.entry.response_flags = reply.flag.map(str::to_owned);
        self.entry.response_code_details = Some(reply.details.into_owned());
        self.entry.bytes_sent = body.len() as u64;
        self.finish();

        let mut response = Response::new(Either::Right(Full::new(body)));
        *response.status_mut() = reply.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        if reply.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        append_via(headers);
        response
    }

    /// The upstream's response, relayed; the line is logged when its body ends.
    fn upstream(
        mut self,
        response: Response<Incoming>,
        idle: std::time::Duration,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = response.into_parts();
        self.entry.response_code = parts.status.as_u16();
        self.entry.response_code_details = Some("via_upstream".into());
        self.entry.upstream_local_address = parts
            .extensions
            .get::<HttpInfo>()
            .map(HttpInfo::local_addr)
            .or_else(|| parts.extensions.get::<UpstreamLocal>().map(|l| l.0));
        parts.extensions = http::Extensions::new();
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        append_via(&mut parts.headers);

        let sent = Arc::new(AtomicU64::new(0));
        let activity = self.activity.clone();
        let on_end = {
            let sent = sent.clone();
            Box::new(move |end: BodyEnd| {
                self.entry.bytes_sent = sent.load(Ordering::Relaxed);
                match end {
                    BodyEnd::Complete => {}
                    BodyEnd::Failed => {
                        self.entry.response_flags = Some("UC".into());
                        self.entry.response_code_details = Some(
                            "upstream_reset_after_response_started{connection_termination}".into(),
                        );
                    }
                    BodyEnd::IdleTimeout => {
                        self.entry.response_flags = Some("SI".into());
                        self.entry.response_code_details = Some("stream_idle_timeout".into());
                    }
                    BodyEnd::Dropped => self.entry.response_flags = Some("DC".into()),
                }
                self.finish();
            })
        };
        let body = Metered::new(body, sent, activity, idle, on_end);
        Response::from_parts(parts, Either::Left(body))
    }

    fn finish(mut self) {
        self.write();
    }

    fn write(&mut self) {
        self.logged = true;
        self.entry.duration = self.started.elapsed();
        self.entry.bytes_received = self.received.load(Ordering::Relaxed);
        self.log.log(&self.entry);
        Metrics::global().record_request(
            &self.labels,
            &RequestOutcome {
                code: self.entry.response_code,
                flags: self.entry.response_flags.as_deref().unwrap_or("-"),
                duration: self.entry.duration,
                request_bytes: self.entry.bytes_received,
                response_bytes: self.entry.bytes_sent,
            },
        );
    }
}

impl Drop for Exchange {
    /// A request whose handler is dropped before its line was written was cut off: by the
    /// drain timeout (logged, as Envoy logs a stream it resets), or by the client going away
    /// before the response (not logged, as before).
    fn drop(&mut self) {
        if !self.logged && self.drain.phase() == DrainPhase::Cut {
            self.entry.response_flags = Some("DC".into());
            self.entry.response_code_details =
                Some("downstream_local_disconnect(drain_timeout)".into());
            self.write();
        }
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The authority to forward with. Absolute-form targets win over `Host` (RFC 9112 §3.2.2);
/// duplicate `Host` is ambiguous and an HTTP/1.1 request without one is invalid (§3.2), both
/// rejected, as is a `Host` that is not visible ASCII (Envoy: `invalid_authority`). An HTTP/1.0
/// request without `Host` gets the ServiceEntry's host.
fn authority<B>(req: &Request<B>, service: &Service) -> Result<Option<HeaderValue>, String> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err("duplicate_host_header".into());
    }
    if let Some(authority) = req.uri().authority() {
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| "invalid_authority".into());
    }
    match host {
        // Authorization matches the host as text: bytes it cannot read must not be forwarded.
        Some(host) if host.to_str().is_err() => Err("invalid_authority".into()),
        Some(host) => Ok(Some(host)),
        None if req.version() == Version::HTTP_11 => Err("missing_host_header".into()),
        None => Ok(service
            .hosts
            .first()
            .filter(|h| !h.starts_with('*'))
            .and_then(|h| {
                let text = if service.port == 80 {
                    h.clone()
                } else {
                    format!("{h}:{}", service.port)
                };
                HeaderValue::from_str(&text).ok()
            })),
    }
}

/// The server name to originate TLS with: the DestinationRule's `sni`, else the ServiceEntry
/// host the request is for (its authority's host when that is one of the service's hosts, else
/// the service's first concrete host). `None` when there is no name to send.
fn server_name(
    tls: &UpstreamTls,
    service: &Service,
    authority: Option<&str>,
) -> Option<ServerName<'static>> {
    if tls.sni.is_some() {
        return tls.server_name("");
    }
    let requested = authority
        .map(|a| a.rsplit_once(':').map_or(a, |(host, _)| host))
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    let host = requested
        .filter(|h| service.hosts.iter().any(|pattern| host_matches(pattern, h)))
        .or_else(|| service.hosts.iter().find(|h| !h.contains('*')).cloned())?;
    tls.server_name(&host)
}

/// A ServiceEntry host (`*.example.com` wildcards included) matches `host`.
pub(super) fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host
                    .get(host.len() - suffix.len()..)
                    .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

fn same_service(a: &Service, b: &Service) -> bool {
    a.namespace == b.namespace && a.name == b.name && a.port == b.port && a.protocol == b.protocol
}

/// Headers that never travel past this hop (RFC 9110 §7.6.1), plus any the `Connection` header
/// names. `Host` and `Content-Length` are kept even if named: dropping them would change where
/// or how much a message is, which a peer must not be able to ask a proxy to do.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| *name != header::HOST && *name != header::CONTENT_LENGTH)
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Appends our entry to `via`, after whatever earlier hops wrote, as one field value.
pub(super) fn append_via(headers: &mut HeaderMap) {
    let mut value = Vec::new();
    for existing in headers.get_all(header::VIA) {
        value.extend_from_slice(existing.as_bytes());
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(VIA.as_bytes());
    match HeaderValue::from_bytes(&value) {
        Ok(value) => {
            headers.insert(header::VIA, value);
        }
        Err(_) => {
            headers.append(header::VIA, HeaderValue::from_static(VIA));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret, host, content-length"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("host", "httpbin.org"),
            ("content-length", "3"),
            ("x-kept", "yes"),
        ] {
            headers.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "host", "x-kept"]);
    }

    #[test]
    fn via_is_appended_after_earlier_hops() {
        let mut headers = HeaderMap::new();
        append_via(&mut headers);
        assert_eq!(headers[header::VIA], VIA);
        let mut headers = HeaderMap::new();
        headers.append(header::VIA, HeaderValue::from_static("1.0 fred"));
        headers.append(header::VIA, HeaderValue::from_static("1.1 p.example.net"));
        append_via(&mut headers);
        assert_eq!(
            headers.get_all(header::VIA).iter().collect::<Vec<_>>(),
            ["1.0 fred, 1.1 p.example.net, 1.1 egress-waypoint"]
        );
    }
}
