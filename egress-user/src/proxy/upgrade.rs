//! WebSocket (`Upgrade: websocket`, RFC 6455) through the waypoint: the handshake request is
//! filtered, routed and authorized like any request; when allowed it goes to the endpoint on a
//! connection of its own (an upgraded connection is never pooled), and only when the upstream
//! answers 101 does the client get its 101 and the connection become a tunnel: bytes both
//! ways, bounded by the stream idle timeout and the drain, one access-log line when it ends
//! with its duration and bytes.
//!
//! No client byte reaches the upstream before the upstream's 101: the framing gate holds
//! whatever the client sends after the handshake (see `framing`, state `Hold`), and the tunnel
//! is only made from the two upgraded connections. An upstream that does not switch protocols
//! has its answer relayed and the client connection closed after it, the held bytes discarded.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Empty;
use hyper::{
    body::Body,
    rt::{Read, Write},
    upgrade::{OnUpgrade, Upgraded},
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::mpsc,
    time::{Instant, timeout},
};
use tracing::{debug, info};

use super::{Exchange, Filtered, Peer, ResponseBody, UpstreamBody, upstream_parts};
use crate::{
    drain::DrainPhase,
    proxy::{
        Waypoint,
        body::Activity,
        framing::Framed,
        phases,
        reply::LocalReply,
        upstream::{UpstreamFailure, tls_connect::TlsConnector},
    },
};

/// The client connection as hyper holds it: shared, so that the server can take it back once
/// hyper is done (to write an answer of its own and close), and an upgraded connection can
/// outlive hyper's.
#[derive(Clone)]
pub(in crate::proxy) struct SharedIo(Arc<Mutex<Option<Framed<TcpStream>>>>);

impl SharedIo {
    pub(in crate::proxy) fn new(framed: Framed<TcpStream>) -> Self {
        Self(Arc::new(Mutex::new(Some(framed))))
    }

    /// Takes the connection back once hyper is done with it.
    pub(in crate::proxy) fn take_back(&self) -> Option<Framed<TcpStream>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn poll<R>(
        &self,
        f: impl FnOnce(Pin<&mut Framed<TcpStream>>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_mut() {
            Some(framed) => f(Pin::new(framed)),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncRead for SharedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll(|framed| framed.poll_read(cx, buf))
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll(|framed| framed.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll(|framed| framed.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll(|framed| framed.poll_shutdown(cx))
    }
}

/// The tunnels of one client connection: its server waits for them before it counts the
/// connection closed.
pub(in crate::proxy) type Tunnels = mpsc::Sender<()>;

/// Phase 5 for a WebSocket handshake: to the upstream on a connection of its own; its 101
/// makes the tunnel, anything else is relayed.
pub(super) async fn forward(
    waypoint: &Waypoint,
    mut exchange: Exchange,
    mut request: Filtered,
    peer: Peer,
    client: OnUpgrade,
    tunnels: &Tunnels,
) -> Response<ResponseBody> {
    if !request.body.is_end_stream() {
        // A handshake has no body; one with a body is not a WebSocket handshake.
        return exchange.local(LocalReply::bad_request("upgrade_with_body"));
    }
    let mut parts = match upstream_parts(&mut request, &peer) {
        Ok(parts) => parts,
        Err(reply) => return exchange.local(reply),
    };
    // `clean_headers` dropped these as hop-by-hop; this hop asks for the upgrade itself.
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // A connection of our own speaks origin form (the pooled client rewrites it so itself).
    let endpoint = parts.uri.clone();
    if let Some(path) = endpoint.path_and_query() {
        parts.uri = http::Uri::from(path.clone());
    }
    let request = Request::from_parts(parts, Empty::<Bytes>::new());

    let connect_timeout = waypoint.config.upstream_connect_timeout;
    let sent_at = Instant::now();
    let response = match &peer.tls {
        None => {
            let connect = timeout(connect_timeout, TcpStream::connect(peer.addr)).await;
            match connect.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    exchange.entry.upstream_local_address = stream.local_addr().ok();
                    send(TokioIo::new(stream), request, waypoint).await
                }
                Err(error) => Err(UpstreamFailure::connect(&error)),
            }
        }
        Some((client_tls, name)) => {
            let mut connector = TlsConnector::new(
                client_tls.config(),
                name.clone(),
                connect_timeout,
                connect_timeout,
            );
            match tower_service::Service::call(&mut connector, endpoint).await {
                Ok(stream) => send(stream, request, waypoint).await,
                Err(error) => Err(UpstreamFailure::tls_connect(&error)),
            }
        }
    };
    let mut response = match response {
        Ok(response) => response,
        Err(failure) => {
            info!(upstream = %peer.addr, flag = failure.flag, "websocket upstream failed");
            exchange.entry.upstream_transport_failure_reason = failure.transport_failure.clone();
            return exchange.local(failure.reply());
        }
    };
    exchange.entry.upstream_service_time = Some(sent_at.elapsed());
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        debug!(status = %response.status(), "the upstream did not switch protocols");
        return exchange.upstream(
            response.map(UpstreamBody::Pooled),
            waypoint.config.idle_timeout,
        );
    }

    let upstream = hyper::upgrade::on(&mut response);
    let (mut head, _) = response.into_parts();
    head.extensions = http::Extensions::new();
    phases::append_via(&mut head.headers);
    exchange.entry.response_code = StatusCode::SWITCHING_PROTOCOLS.as_u16();
    exchange.entry.response_code_details = Some("via_upstream".into());
    let idle = waypoint.config.idle_timeout;
    let cut = waypoint.drain.signal();
    let done = tunnels.clone();
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                debug!(%error, "the upgrade did not complete");
                exchange.entry.response_flags = Some("DC".into());
                exchange.finish();
                return;
            }
        };
        tunnel(&mut exchange, client, upstream, idle, cut).await;
        exchange.finish();
        drop(done);
    });
    Response::from_parts(head, super::empty_body())
}

/// The handshake on a fresh connection; the connection task keeps running for the upgrade.
async fn send<T>(
    io: T,
    request: Request<Empty<Bytes>>,
    waypoint: &Waypoint,
) -> Result<Response<hyper::body::Incoming>, UpstreamFailure>
where
    T: Read + Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| UpstreamFailure::terminated())?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            debug!(%error, "websocket upstream connection ended");
        }
    });
    match timeout(waypoint.config.idle_timeout, sender.send_request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(_)) => Err(UpstreamFailure::terminated()),
        Err(_) => Err(UpstreamFailure::response_timeout()),
    }
}

/// Bytes both ways until both sides close, nothing moves for `idle`, or the drain cuts it.
async fn tunnel(
    exchange: &mut Exchange,
    client: Upgraded,
    upstream: Upgraded,
    idle: std::time::Duration,
    cut: crate::drain::DrainSignal,
) {
    let activity: Arc<Activity> = exchange.activity.clone();
    let received = exchange.received.clone();
    let sent = Arc::new(AtomicU64::new(0));
    let mut client = crate::proxy::splice::Counted {
        inner: TokioIo::new(client),
        read: received,
        written: sent.clone(),
        activity: activity.clone(),
    };
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(error) = copied {
                debug!(%error, "websocket tunnel ended");
            }
        }
        () = activity.idle(idle) => {
            debug!(?idle, "websocket tunnel idle; closing");
            exchange.entry.response_flags = Some("SI".into());
        }
        () = cut.reached(DrainPhase::Cut) => {
            info!("websocket tunnel cut off at the drain timeout");
            exchange.entry.response_flags = Some("DC".into());
        }
    }
    exchange.entry.bytes_sent = sent.load(Ordering::Relaxed);
}
