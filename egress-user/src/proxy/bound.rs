//! HTTP/1.1 upstreams without the pool: each downstream HTTP/1.1 connection owns at most one
//! upstream connection ([`Bound`]), plain or originating TLS, driven by the downstream
//! connection's own task.
//!
//! The pooled client (hyper-util's legacy `Client`) hands every request to the pool (checkout,
//! a oneshot back, return) and to a second task that owns the upstream connection, and the
//! response body comes back over a channel to that other task: two tasks woken per request
//! (issue 15's profile: about a tenth of the waypoint's CPU per request). Here the request is
//! written and the response read by polling the upstream connection from within the request's
//! own future, and then from within the response body as the server task relays it, so one task
//! does all of a request's work.
//!
//! What stays as the pool had it:
//! - a connection carries one request at a time, is reused only once hyper says it is ready
//!   (the previous response read to its end, the request body sent), and only for the same
//!   [`Route`]: endpoint, and for TLS the same settings set (still current: a set a reload
//!   retired is never reused) and server name;
//! - a request that was never written (the reused connection had closed meanwhile) is sent
//!   again once on a new connection, as the pool's `retry_canceled_requests`;
//! - when the downstream connection ends, its upstream connection goes to a small shared
//!   [`Stash`] per route (at most [`STASH_PER_ENDPOINT`], [`STASH_TOTAL`] in all, none older
//!   than [`IDLE_TIMEOUT`]), where the next downstream connection finds it: a client that opens
//!   a connection per request still reuses upstream connections.
//!
//! HTTP/2 upstreams (and HTTP/2 downstreams, whose streams run at once) keep the pooled clients.
use std::{
    collections::HashMap,
    future::{Future, poll_fn},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1,
};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::tls_connect::{ConnectError, TlsAlert, TlsConnector, UpstreamLocal};
use crate::{
    proxy::body::Metered,
    tls::{TlsClient, WeakTlsClient},
};

type RequestBody = Metered<Incoming>;
/// The connection future (plain or TLS: only polled, so its type is erased).
type Connection = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// What a connection may carry: requests to one endpoint, in plain text or under one TLS
/// settings set and server name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(in crate::proxy) struct Route {
    addr: SocketAddr,
    /// The settings set's id and the server name.
    tls: Option<(usize, ServerName<'static>)>,
}

/// How to make a connection for a route.
pub(in crate::proxy) enum Dial<'a> {
    Plain,
    Tls(&'a TlsClient),
}

impl Route {
    pub(in crate::proxy) fn plain(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }

    pub(in crate::proxy) fn tls(
        addr: SocketAddr,
        client: &TlsClient,
        name: ServerName<'static>,
    ) -> Self {
        Self {
            addr,
            tls: Some((client.id(), name)),
        }
    }
}

/// An idle upstream connection older than this is closed rather than reused (the pool's idle
/// timeout).
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint once their downstream connection ended.
pub(super) const STASH_PER_ENDPOINT: usize = 64;
/// Idle connections kept in all.
pub(super) const STASH_TOTAL: usize = 1024;

/// Why a request over a bound connection got no response.
#[derive(Debug)]
pub(in crate::proxy) enum BoundError {
    /// The TCP connect failed or timed out (`ErrorKind::TimedOut`).
    Connect(io::Error),
    /// The TCP connect or the TLS handshake failed or timed out.
    Tls(ConnectError),
    /// The connection failed or closed before the response head (or the head was malformed),
    /// with the first TLS failure the connection saw, if it is a TLS connection that had one
    /// (a TLS 1.3 server refuses a client certificate after the handshake).
    Connection(hyper::Error, Option<String>),
}

/// One upstream connection and the means to send on it.
struct Upstream {
    route: Route,
    local: Option<SocketAddr>,
    sender: http1::SendRequest<RequestBody>,
    connection: Connection,
    /// A TLS connection's settings set: once a reload retired it, the connection is not reused.
    settings: Option<WeakTlsClient>,
    alert: Option<TlsAlert>,
    /// The connection future finished: it is closed (or failed) and cannot be used again.
    done: bool,
    /// When it last became idle (for the stash).
    idle_since: Instant,
}

impl Upstream {
    async fn connect(
        route: &Route,
        dial: &Dial<'_>,
        timeout: Duration,
    ) -> Result<Self, BoundError> {
        let addr = route.addr;
        let handshake = |error| BoundError::Connection(error, None);
        let (local, sender, connection, settings, alert) = match (dial, &route.tls) {
            (Dial::Tls(client), Some((_, name))) => {
                let connector = TlsConnector::new(client.config(), name.clone(), timeout, timeout);
                let uri = Uri::builder()
                    .scheme("http")
                    .authority(addr.to_string())
                    .path_and_query("/")
                    .build()
                    .expect("a socket address is an authority");
                let tls = connector.connect(uri).await.map_err(BoundError::Tls)?;
                let (local, alert) = (tls.local(), tls.alert());
                let (sender, connection) = http1::Builder::new()
                    .handshake(tls)
                    .await
                    .map_err(handshake)?;
                let connection: Connection = Box::pin(connection);
                (
                    local,
                    sender,
                    connection,
                    Some(client.downgrade()),
                    Some(alert),
                )
            }
            _ => {
                let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => return Err(BoundError::Connect(error)),
                    Err(_) => {
                        return Err(BoundError::Connect(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connect timeout",
                        )));
                    }
                };
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().ok();
                let (sender, connection) = http1::Builder::new()
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(handshake)?;
                let connection: Connection = Box::pin(connection);
                (local, sender, connection, None, None)
            }
        };
        Ok(Self {
            route: route.clone(),
            local,
            sender,
            connection,
            settings,
            alert,
            done: false,
            idle_since: Instant::now(),
        })
    }

    /// The first TLS failure this connection saw.
    fn alert(&self) -> Option<String> {
        self.alert.as_ref()?.reason().map(str::to_owned)
    }

    /// Drives the connection (writes the request, reads the response into its body) as far as
    /// it goes without waiting.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.done && self.connection.as_mut().poll(cx).is_ready() {
            self.done = true;
        }
    }

    /// Ready for another request: the connection is open and idle.
    async fn usable(&mut self) -> bool {
        poll_fn(|cx| {
            self.drive(cx);
            Poll::Ready(())
        })
        .await;
        !self.done
            && self.sender.is_ready()
            && self.idle_since.elapsed() < IDLE_TIMEOUT
            && self.settings.as_ref().is_none_or(WeakTlsClient::is_alive)
    }
}

/// Idle upstream connections whose downstream connection ended, per route, newest last.
#[derive(Default)]
pub(in crate::proxy) struct Stash {
    idle: Mutex<StashInner>,
}

#[derive(Default)]
struct StashInner {
    by_endpoint: HashMap<Route, Vec<Upstream>>,
    total: usize,
}

impl Stash {
    fn put(&self, upstream: Upstream) {
        if upstream.done {
            return;
        }
        let route = upstream.route.clone();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let StashInner { by_endpoint, total } = &mut *idle;
        let list = by_endpoint.entry(route.clone()).or_default();
        let before = list.len();
        list.retain(|up| up.idle_since.elapsed() < IDLE_TIMEOUT);
        if list.len() >= STASH_PER_ENDPOINT {
            // The oldest goes (closed).
            list.remove(0);
        }
        *total -= before - list.len();
        if *total >= STASH_TOTAL {
            // Full with other endpoints' connections: this one is closed.
            if list.is_empty() {
                by_endpoint.remove(&route);
            }
            return;
        }
        list.push(upstream);
        *total += 1;
    }

    fn take(&self, route: &Route) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *idle;
        let list = inner.by_endpoint.get_mut(route)?;
        let upstream = list.pop();
        if upstream.is_some() {
            inner.total -= 1;
        }
        if list.is_empty() {
            inner.by_endpoint.remove(route);
        }
        upstream
    }

    /// How many idle connections it holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

/// The upstream connection of one downstream HTTP/1.1 connection. When it is dropped (the
/// downstream connection ended), an idle upstream connection goes to the stash.
pub(in crate::proxy) struct Bound {
    slot: Mutex<Option<Upstream>>,
    stash: Arc<Stash>,
    connect_timeout: Duration,
}

impl Drop for Bound {
    fn drop(&mut self) {
        let slot = self.slot.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(upstream) = slot.take() {
            self.stash.put(upstream);
        }
    }
}

impl Bound {
    pub(super) fn new(stash: Arc<Stash>, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new(None),
            stash,
            connect_timeout,
        })
    }

    /// A usable connection for `route`: this downstream connection's own, else a stashed one,
    /// else a new one. `true` with it when it was used before.
    async fn checkout(
        &self,
        route: &Route,
        dial: &Dial<'_>,
    ) -> Result<(Upstream, bool), BoundError> {
        let own = self
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Another route's connection is closed (dropped), not kept: one per downstream.
        if let Some(mut upstream) = own.filter(|up| up.route == *route)
            && upstream.usable().await
        {
            return Ok((upstream, true));
        }
        while let Some(mut upstream) = self.stash.take(route) {
            if upstream.usable().await {
                return Ok((upstream, true));
            }
        }
        Ok((self.connect(route, dial).await?, false))
    }

    /// A new upstream connection. Boxed: the connect (and a TLS handshake) happens once per
    /// upstream connection, and inline it would make every request's future, which hyper holds
    /// per downstream connection, larger.
    async fn connect(&self, route: &Route, dial: &Dial<'_>) -> Result<Upstream, BoundError> {
        Box::pin(Upstream::connect(route, dial, self.connect_timeout)).await
    }

    /// Sends `req` on `route` (its URI is made origin-form) and returns the response; its body
    /// drives the connection and gives it back when it ends.
    pub(super) async fn send(
        self: &Arc<Self>,
        route: Route,
        dial: Dial<'_>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<BoundBody>, BoundError> {
        *req.uri_mut() = origin_form(req.uri());
        let (mut upstream, mut reused) = self.checkout(&route, &dial).await?;
        loop {
            let sent = upstream.sender.try_send_request(req);
            tokio::pin!(sent);
            let result = poll_fn(|cx| {
                upstream.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(mut response) => {
                    if let Some(local) = upstream.local {
                        response.extensions_mut().insert(UpstreamLocal(local));
                    }
                    return Ok(response.map(|body| BoundBody {
                        body,
                        upstream: Some(upstream),
                        owner: self.clone(),
                        after_data: false,
                        failed: None,
                    }));
                }
                Err(mut error) => match error.take_message() {
                    // Never written: a reused connection had closed meanwhile. Once more, on a
                    // new connection.
                    Some(unsent) if reused => {
                        req = unsent;
                        upstream = self.connect(&route, &dial).await?;
                        reused = false;
                    }
                    _ => {
                        return Err(BoundError::Connection(error.into_error(), upstream.alert()));
                    }
                },
            }
        }
    }

    fn give_back(&self, mut upstream: Upstream) {
        upstream.idle_since = Instant::now();
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(upstream);
    }
}

/// The origin-form target (`/path?query`) of an absolute URI: what a request line to an
/// origin server carries (RFC 9112 §3.2.1). The pooled client does the same.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

/// A response body from a bound connection: polling it drives the connection. The connection
/// goes back to its downstream connection once the body ended; a body dropped before its end
/// closes it (what is left of the response cannot be read past).
pub(in crate::proxy) struct BoundBody {
    body: Incoming,
    upstream: Option<Upstream>,
    owner: Arc<Bound>,
    /// The last poll gave data.
    after_data: bool,
    /// An error held back for one poll (see [`BoundBody::poll_frame`]).
    failed: Option<hyper::Error>,
}

impl Body for BoundBody {
    type Data = Bytes;
    type Error = hyper::Error;

    /// An error right after data is held back for one poll (the task wakes itself at once):
    /// the server writes out what it has before it sees the error, as it did when the error
    /// came from the pooled connection's other task. Without this, a response cut short is
    /// cut before its head leaves, where the client should see the head and the bytes that came.
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(error) = this.failed.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if let Some(upstream) = &mut this.upstream {
            upstream.drive(cx);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match frame {
            Poll::Ready(Some(Err(error))) if this.after_data => {
                this.after_data = false;
                this.failed = Some(error);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(_))) => this.after_data = true,
            Poll::Ready(None) => {
                if let Some(upstream) = this.upstream.take() {
                    this.owner.give_back(upstream);
                }
            }
            _ => this.after_data = false,
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for BoundBody {
    fn drop(&mut self) {
        // The server stops polling once `is_end_stream` says the last frame passed.
        if let Some(upstream) = self.upstream.take()
            && self.body.is_end_stream()
        {
            self.owner.give_back(upstream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_form_keeps_path_and_query_only() {
        let uri: Uri = "http://127.0.0.1:8080/a/b?x=1".parse().unwrap();
        assert_eq!(origin_form(&uri), "/a/b?x=1");
        let bare: Uri = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(origin_form(&bare), "/");
    }

    /// An idle upstream connection to `addr` (nothing is sent: the handshake writes nothing).
    async fn idle(addr: SocketAddr) -> Upstream {
        Upstream::connect(&Route::plain(addr), &Dial::Plain, Duration::from_secs(5))
            .await
            .expect("connect")
    }

    #[tokio::test]
    async fn the_stash_keeps_the_newest_per_endpoint_and_hands_them_out_newest_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stash = Stash::default();
        for _ in 0..STASH_PER_ENDPOINT + 3 {
            stash.put(idle(addr).await);
        }
        assert_eq!(
            stash.len(),
            STASH_PER_ENDPOINT,
            "at most this many per endpoint"
        );
        let newest = idle(addr).await;
        let newest_local = newest.local;
        stash.put(newest);
        assert_eq!(stash.len(), STASH_PER_ENDPOINT);
        let taken = stash.take(&Route::plain(addr)).expect("one stashed");
        assert_eq!(taken.local, newest_local, "the newest goes first");
        assert_eq!(stash.len(), STASH_PER_ENDPOINT - 1);

        let other = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        assert!(
            stash
                .take(&Route::plain(other.local_addr().expect("addr")))
                .is_none()
        );

        let mut stale = idle(addr).await;
        stale.done = true;
        stash.put(stale);
        assert_eq!(
            stash.len(),
            STASH_PER_ENDPOINT - 1,
            "a closed connection is not kept"
        );
        drop(listener);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_usable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut upstream = idle(addr).await;
        assert!(upstream.usable().await, "open and idle");
        let (accepted, _) = listener.accept().await.expect("accept");
        drop(accepted);
        let closed = async {
            while upstream.usable().await {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .expect("the close is seen");
    }
}
