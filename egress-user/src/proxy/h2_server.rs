//! HTTP2 and GRPC ports: an application that speaks HTTP/2 in clear text with prior knowledge
//! (RFC 9113 §3.3; what gRPC clients do for `http://`) is served by hyper's HTTP/2 server, and
//! every request goes through the same phases as on HTTP/1 (request filter, route, authorize,
//! upstream peer, forward, log) — to an HTTP/2 upstream (`h2c`, or TLS with ALPN `h2`).
//!
//! Bounded as Envoy bounds it, against the known floods: concurrent streams per connection,
//! the header list size, streams the client resets before we accept them (rapid reset,
//! CVE-2023-44487) and streams we reset for its errors; hyper's h2 caps CONTINUATION frames
//! by the header list size (RUSTSEC-2024-0332). A connection over a limit gets GOAWAY.
use std::{convert::Infallible, sync::Arc, time::Duration};

use http::header;
use hyper::{server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, sync::mpsc, time::timeout};
use tracing::{debug, info};

use super::forward;
use crate::{
    drain::DrainPhase,
    proxy::{Inbound, Waypoint, framing::FramingSignal},
};

/// The client connection preface (RFC 9113 §3.4).
pub(in crate::proxy) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams open at once on one client connection (Envoy's overload guidance for edge
/// proxies: 100).
pub(in crate::proxy) const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams the client may reset before the server accepted them (hyper's default is 20): a
/// rapid-reset flood past it gets GOAWAY.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset for the client's protocol errors before GOAWAY.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 100;

/// Whether the client opened with the HTTP/2 preface, waiting at most `limit` for its first
/// bytes. Nothing is consumed.
pub(in crate::proxy) async fn opens_with_preface(stream: &TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; PREFACE.len()];
    let peeked = timeout(limit, async {
        loop {
            match stream.peek(&mut buf).await {
                Ok(n) if n >= PREFACE.len() || n == 0 || buf[..n] != PREFACE[..n] => return n,
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(_) => return 0,
            }
        }
    })
    .await;
    matches!(peeked, Ok(n) if n == PREFACE.len() && buf == PREFACE)
}

pub(in crate::proxy) async fn serve(
    waypoint: Arc<Waypoint>,
    stream: TcpStream,
    inbound: Arc<Inbound>,
) {
    let config = &waypoint.config;
    // No framing gate on HTTP/2 (its framing is binary and hyper's h2 checks it), and no
    // upgrades: the signal and the tunnel list stay unused.
    let framing = Arc::new(FramingSignal::default());
    let (tunnels, _) = mpsc::channel::<()>(1);
    let service = {
        let waypoint = waypoint.clone();
        service_fn(move |req| {
            let waypoint = waypoint.clone();
            let inbound = inbound.clone();
            let framing = framing.clone();
            let tunnels = tunnels.clone();
            async move {
                let mut response = forward(&waypoint, inbound, &framing, req, &tunnels).await;
                // HTTP/2 has no `connection` header (hyper would drop it with a warning).
                response.headers_mut().remove(header::CONNECTION);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        // A silent peer is found out: PING every idle timeout, closed when it does not answer.
        .keep_alive_interval(config.idle_timeout)
        .keep_alive_timeout(config.header_read_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let drain = waypoint.drain.signal();
    let close = drain.reached(DrainPhase::Close);
    let cut = drain.reached(DrainPhase::Cut);
    tokio::pin!(close, cut);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                match served {
                    Ok(()) => debug!("HTTP/2 connection closed"),
                    Err(error) => info!(%error, "HTTP/2 connection ended"),
                }
                return;
            }
            // Draining: GOAWAY, the streams in flight finish.
            () = &mut close, if !shutting_down => {
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            () = &mut cut => {
                info!("HTTP/2 connection cut off at the drain timeout");
                return;
            }
        }
    }
}
