//! The upstream HTTP clients, and how their failures map to Envoy's answers.
//!
//! An HTTP/1.1 request from a downstream HTTP/1.1 connection goes over that connection's own
//! upstream connection ([`bound`]), plain or TLS. HTTP/2 upstreams and HTTP/2 downstreams use
//! the pools below.
//!
//! Plain connections share one pool keyed by endpoint. TLS-originating connections (a
//! DestinationRule's SIMPLE or MUTUAL) get a pool per settings set and server name, each keyed
//! by endpoint inside: a connection is never reused across SNI or settings, and a settings set
//! retired by a reload takes its pool with it (its entry is dropped once the set is gone).
#[path = "bound.rs"]
pub(super) mod bound;
#[path = "tls_connect.rs"]
pub(super) mod tls_connect;

use std::{
    collections::HashMap,
    error::Error as _,
    io,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::{
    client::legacy::{Client, Error as ClientError, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use rustls::pki_types::ServerName;

use self::{
    bound::{Bound, BoundBody, BoundError, Dial, Route, Stash},
    tls_connect::{ConnectError, TlsAlert, TlsConnector, tls_reason},
};
use super::{WaypointConfig, body::Metered};
use crate::tls::{TlsClient, WeakTlsClient};

/// Idle upstream connections are closed after this long (hyper-util's default, and close to
/// Envoy's one hour in spirit while returning sockets sooner).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type PlainClient = Client<HttpConnector, Metered<Incoming>>;
type TlsPool = Client<TlsConnector, Metered<Incoming>>;

/// A TLS pool's settings set id, server name, and whether it speaks HTTP/2 (ALPN `h2`).
type TlsPoolKey = (usize, String, bool);

/// The waypoint's upstream pools.
pub(super) struct UpstreamClient {
    plain: PlainClient,
    /// HTTP/2 with prior knowledge (h2c), for `HTTP2` and `GRPC` ports.
    plain_h2: PlainClient,
    /// (settings set, server name, HTTP/2) -> its pool; the weak handle tells a retired set.
    tls: Mutex<HashMap<TlsPoolKey, (WeakTlsClient, TlsPool)>>,
    connect_timeout: Duration,
    /// Idle bound connections whose downstream connection ended.
    stash: Arc<Stash>,
}

/// A response body from upstream: from a pool, or from a bound connection (which it drives).
#[expect(
    clippy::large_enum_variant,
    reason = "moved a few times per request; boxing the bound connection would allocate per request"
)]
pub(in crate::proxy) enum UpstreamBody {
    Pooled(Incoming),
    Bound(BoundBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Pooled(body) => std::pin::Pin::new(body).poll_frame(cx),
            Self::Bound(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Pooled(body) => body.is_end_stream(),
            Self::Bound(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Pooled(body) => body.size_hint(),
            Self::Bound(body) => body.size_hint(),
        }
    }
}

/// Why an upstream request got no response.
#[derive(Debug)]
pub(super) enum SendError {
    Pooled(ClientError),
    Bound(BoundError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let error: &(dyn std::error::Error + 'static) = match self {
            Self::Pooled(error) => error,
            Self::Bound(BoundError::Connect(error)) => error,
            Self::Bound(BoundError::Tls(error)) => error,
            Self::Bound(BoundError::Connection(error, _)) => error,
        };
        // The whole chain: hyper's own messages say little without their causes.
        write!(f, "{error}")?;
        let mut source = error.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl SendError {
    /// What the waypoint answers, in Envoy's words.
    pub(super) fn failure(&self) -> UpstreamFailure {
        match self {
            Self::Pooled(error) => UpstreamFailure::from_client(error),
            Self::Bound(BoundError::Connect(error)) => UpstreamFailure::connect(error),
            Self::Bound(BoundError::Tls(error)) => UpstreamFailure::tls_connect(error),
            Self::Bound(BoundError::Connection(error, alert)) => UpstreamFailure {
                // As `from_client`: the TLS failure the error or the connection names.
                transport_failure: io_source(error)
                    .and_then(tls_reason)
                    .or_else(|| alert.clone()),
                ..UpstreamFailure::terminated()
            },
        }
    }
}

/// One client per waypoint: pools are keyed by scheme and authority, and the waypoint always
/// puts the chosen endpoint's socket address in the authority, so connections are reused per
/// endpoint and never across services that happen to share a Host.
pub(super) fn client(config: &WaypointConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.upstream_connect_timeout));
    connector.enforce_http(true);
    UpstreamClient {
        plain_h2: h2_builder().build(connector.clone()),
        plain: builder().build(connector),
        tls: Mutex::new(HashMap::new()),
        connect_timeout: config.upstream_connect_timeout,
        stash: Arc::default(),
    }
}

fn builder() -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    builder
}

/// HTTP/2 only: every request is a stream of one pooled connection per endpoint.
fn h2_builder() -> hyper_util::client::legacy::Builder {
    let mut builder = builder();
    builder
        .http2_only(true)
        .http2_max_concurrent_reset_streams(100);
    builder
}

impl UpstreamClient {
    /// The upstream connection of a new downstream HTTP/1.1 connection (none yet: made by its
    /// first plain-text HTTP/1.1 request).
    pub(super) fn bound(&self) -> Arc<Bound> {
        Bound::new(self.stash.clone(), self.connect_timeout)
    }

    /// How many idle bound connections wait in the stash.
    #[cfg(test)]
    pub(super) fn stashed(&self) -> usize {
        self.stash.len()
    }

    /// Sends `req` (its URI's authority is the endpoint) in plain text, or with `tls` as
    /// `server_name`. HTTP/1.1 goes over `bound` when the downstream connection has one.
    pub(super) async fn send(
        &self,
        req: Request<Metered<Incoming>>,
        tls: Option<(&TlsClient, ServerName<'static>)>,
        h2: bool,
        bound: Option<&Arc<Bound>>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        if let (Some(bound), Some(addr), false) = (bound, endpoint(&req), h2) {
            let (route, dial) = match tls {
                None => (Route::plain(addr), Dial::Plain),
                Some((client, name)) => (Route::tls(addr, client, name), Dial::Tls(client)),
            };
            return bound
                .send(route, dial, req)
                .await
                .map(|response| response.map(UpstreamBody::Bound))
                .map_err(SendError::Bound);
        }
        let pooled = match tls {
            None if h2 => self.plain_h2.request(req).await,
            None => self.plain.request(req).await,
            Some((client, name)) => self.pool(client, name, h2).request(req).await,
        };
        pooled
            .map(|response| response.map(UpstreamBody::Pooled))
            .map_err(SendError::Pooled)
    }

    fn pool(&self, client: &TlsClient, name: ServerName<'static>, h2: bool) -> TlsPool {
        let key = (client.id(), name.to_str().into_owned(), h2);
        let mut pools = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((alive, pool)) = pools.get(&key)
            && alive.is_alive()
        {
            return pool.clone();
        }
        // A retired settings set's pools (and idle connections) go; its address may be reused.
        pools.retain(|_, (alive, _)| alive.is_alive());
        let config = if h2 {
            // ALPN `h2`: the server must agree to HTTP/2 before a request is sent.
            let mut config = (*client.config()).clone();
            config.alpn_protocols = vec![b"h2".to_vec()];
            std::sync::Arc::new(config)
        } else {
            client.config()
        };
        let connector = TlsConnector::new(config, name, self.connect_timeout, self.connect_timeout);
        let pool = if h2 { h2_builder() } else { builder() }.build(connector);
        pools.insert(key, (client.downgrade(), pool.clone()));
        pool
    }
}

/// The endpoint a request's URI names (the waypoint always puts the socket address there).
fn endpoint<B>(req: &Request<B>) -> Option<std::net::SocketAddr> {
    req.uri().authority()?.as_str().parse().ok()
}

/// Why no upstream response came back, in Envoy's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct UpstreamFailure {
    pub status: StatusCode,
    /// `%RESPONSE_FLAGS%`.
    pub flag: &'static str,
    /// Envoy's stream reset reason, snake case (`connection_failure`, `connection_termination`,
    /// `connection_timeout`).
    pub reset_reason: &'static str,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub transport_failure: Option<String>,
}

impl UpstreamFailure {
    /// Envoy's local reply body for a reset before response headers.
    pub(super) fn body(&self) -> String {
        format!(
            "upstream connect error or disconnect/reset before headers. reset reason: {}",
            self.reset_reason.replace('_', " ")
        )
    }

    /// The waypoint's answer for this failure.
    pub(super) fn reply(&self) -> super::reply::LocalReply {
        super::reply::LocalReply {
            status: self.status,
            body: self.body().into(),
            flag: Some(self.flag),
            details: self.details().into(),
            close: false,
        }
    }

    /// `%RESPONSE_CODE_DETAILS%`.
    pub(super) fn details(&self) -> String {
        format!(
            "upstream_reset_before_response_started{{{}}}",
            self.reset_reason
        )
    }

    /// A TLS connection (TCP connect and handshake) that could not be made: `UF`, 503.
    pub(super) fn tls_connect(error: &ConnectError) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flag: "UF",
            reset_reason: if error.timed_out() {
                "connection_timeout"
            } else {
                "connection_failure"
            },
            transport_failure: Some(error.transport_failure()),
        }
    }

    /// The upstream connection ended before response headers: `UC`, 503.
    pub(super) fn terminated() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flag: "UC",
            reset_reason: "connection_termination",
            transport_failure: None,
        }
    }

    /// No response headers in time: `UT`, 504.
    pub(super) fn response_timeout() -> Self {
        Self {
            status: StatusCode::GATEWAY_TIMEOUT,
            flag: "UT",
            reset_reason: "upstream_response_timeout",
            transport_failure: None,
        }
    }

    /// A failed connect: `UF`, 503. A connect that timed out is a `connection_timeout` reset.
    pub(super) fn connect(error: &io::Error) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flag: "UF",
            reset_reason: if error.kind() == io::ErrorKind::TimedOut {
                "connection_timeout"
            } else {
                "connection_failure"
            },
            transport_failure: Some(error.to_string()),
        }
    }

    /// Classifies a client error. Connect errors are `UF`; anything else after the connection
    /// was made (reset, closed, truncated or malformed response) is `UC`, as Envoy reports an
    /// upstream connection termination before response headers.
    pub(super) fn from_client(error: &ClientError) -> Self {
        if let Some(tls) = find::<ConnectError>(error) {
            return Self::tls_connect(tls);
        }
        let io_error = io_source(error);
        if error.is_connect() {
            let fallback = io::Error::other(root_cause(error));
            return Self::connect(io_error.unwrap_or(&fallback));
        }
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flag: "UC",
            reset_reason: "connection_termination",
            // A TLS 1.3 server refuses a client certificate after the handshake: the alert
            // arrives with the response, and says why. If hyper reports the request only as
            // canceled, the connection kept the alert.
            transport_failure: io_error
                .and_then(tls_reason)
                .or_else(|| connection_alert(error)),
        }
    }
}

/// The TLS failure the request's connection recorded, if it is a TLS connection that had one.
fn connection_alert(error: &ClientError) -> Option<String> {
    let mut extensions = http::Extensions::new();
    error.connect_info()?.get_extras(&mut extensions);
    extensions
        .get::<TlsAlert>()
        .and_then(TlsAlert::reason)
        .map(str::to_owned)
}

/// The first `E` in the source chain.
fn find<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The first `io::Error` in the source chain: what the socket said.
fn io_source<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

fn root_cause(error: &ClientError) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        text = e.to_string();
        current = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_read_like_envoy() {
        let refused = UpstreamFailure::connect(&io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(refused.flag, "UF");
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            refused.body(),
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
        );
        assert_eq!(
            refused.details(),
            "upstream_reset_before_response_started{connection_failure}"
        );
        let timeout = UpstreamFailure::connect(&io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(timeout.reset_reason, "connection_timeout");
    }
}
