//! HTTP2 and GRPC ports: an application that speaks HTTP/2 in clear text with prior knowledge
//! (RFC 9113 §3.3; what gRPC clients do for `http://`) is served by hyper's HTTP/2 server, and
//! every request goes through the same phases as on HTTP/1 (request filter, route, authorize,
//! upstream peer, forward, log) — to an HTTP/2 upstream (`h2c`, or TLS with ALPN `h2`).
//!
//! Bounded as Envoy bounds it, against the known floods: concurrent streams per connection,
//! the header list size, streams the client resets before we accept them (rapid reset,
//! CVE-2023-44487) and streams we reset for its errors; hyper's h2 caps CONTINUATION frames
//! by the header list size (RUSTSEC-2024-0332). A connection over a limit gets GOAWAY.
//!
//! `--header-read-timeout` bounds a connection with no stream in flight as it bounds an HTTP/1
//! one: a client that opens, sends the preface (or a HEADERS frame it never completes) and then
//! nothing, gets GOAWAY and is closed when it expires — from the accept, and again each time its
//! last stream ends. hyper's h2 server has no such timer: its keep-alive PING only finds peers
//! that stopped answering, and a slowloris client answers.
use std::{convert::Infallible, sync::Arc, time::Duration};

use http::header;
use http_body_util::BodyExt;
use hyper::{server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    net::TcpStream,
    sync::{mpsc, watch},
    time::{Instant, sleep_until, timeout},
};
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
/// After the GOAWAY of a header read timeout, how long the client has to take it before the
/// connection is dropped (it may ignore it, or not read at all).
const GOAWAY_LINGER: Duration = Duration::from_secs(1);

/// Streams of one connection: how many are in flight — from the moment hyper hands us their
/// complete request headers until their response body is done or dropped — and how many have
/// started in all (so that a stream that came and went between two looks is not missed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Streams {
    in_flight: usize,
    started: u64,
}

/// Where the service counts the streams of one connection.
#[derive(Clone)]
struct InFlight(watch::Sender<Streams>);

impl InFlight {
    fn new() -> (Self, watch::Receiver<Streams>) {
        let (sender, receiver) = watch::channel(Streams::default());
        (Self(sender), receiver)
    }

    /// Counts one stream until the guard is dropped.
    fn enter(&self) -> StreamGuard {
        self.0.send_modify(|s| {
            s.in_flight += 1;
            s.started += 1;
        });
        StreamGuard(self.0.clone())
    }
}

/// One stream in flight (see [`InFlight`]).
struct StreamGuard(watch::Sender<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0
            .send_modify(|s| s.in_flight = s.in_flight.saturating_sub(1));
    }
}

/// When a connection whose streams are `now` (and were `before`) is closed unless a stream
/// starts: `None` while one is in flight; `timeout` after `at` once the last one ended or any
/// started since; else the deadline it had.
fn idle_deadline(
    before: Streams,
    now: Streams,
    deadline: Option<Instant>,
    at: Instant,
    timeout: Duration,
) -> Option<Instant> {
    if now.in_flight > 0 {
        None
    } else if deadline.is_none() || now.started != before.started {
        Some(at + timeout)
    } else {
        deadline
    }
}

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
    let (in_flight, mut streams) = InFlight::new();
    let service = {
        let waypoint = waypoint.clone();
        service_fn(move |req| {
            let stream = in_flight.enter();
            let waypoint = waypoint.clone();
            let inbound = inbound.clone();
            let framing = framing.clone();
            let tunnels = tunnels.clone();
            async move {
                let mut response = forward(&waypoint, inbound, &framing, req, &tunnels, None).await;
                // HTTP/2 has no `connection` header (hyper would drop it with a warning).
                response.headers_mut().remove(header::CONNECTION);
                // The stream stays in flight while hyper holds its body.
                let response = response.map(|body| {
                    body.map_frame(move |frame| {
                        let _in_flight = &stream;
                        frame
                    })
                });
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
    // While no stream is in flight: when the connection is closed unless one starts.
    let mut idle_until = Some(Instant::now() + config.header_read_timeout);
    let mut seen = Streams::default();
    let mut streams_open = true;
    loop {
        // (Evaluated even while its branch is disabled, then not polled.)
        let deadline = idle_until.unwrap_or_else(Instant::now);
        tokio::select! {
            served = connection.as_mut() => {
                match served {
                    Ok(()) => debug!("HTTP/2 connection closed"),
                    Err(error) => info!(%error, "HTTP/2 connection ended"),
                }
                return;
            }
            changed = streams.changed(), if streams_open => {
                if changed.is_err() {
                    // The service (and its sender) is gone: the connection is ending.
                    streams_open = false;
                    continue;
                }
                let now = *streams.borrow_and_update();
                idle_until = idle_deadline(
                    seen,
                    now,
                    idle_until,
                    Instant::now(),
                    config.header_read_timeout,
                );
                seen = now;
            }
            () = sleep_until(deadline), if idle_until.is_some() && !shutting_down => {
                info!(
                    timeout = ?config.header_read_timeout,
                    "no complete HTTP/2 request headers within the header read timeout; closing"
                );
                connection.as_mut().graceful_shutdown();
                if timeout(GOAWAY_LINGER, connection.as_mut()).await.is_err() {
                    debug!("the client did not take the GOAWAY; connection dropped");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_deadline_is_off_while_a_stream_is_in_flight_and_renewed_after() {
        let timeout = Duration::from_secs(10);
        let accepted = Instant::now();
        let at_accept = Some(accepted + timeout);
        let idle = Streams::default();
        let busy = Streams {
            in_flight: 1,
            started: 1,
        };
        let done = Streams {
            in_flight: 0,
            started: 1,
        };
        let later = accepted + Duration::from_secs(3);
        assert_eq!(idle_deadline(idle, busy, at_accept, later, timeout), None);
        let renewed = Some(later + timeout);
        assert_eq!(idle_deadline(busy, done, None, later, timeout), renewed);
        // A stream that started and ended between two looks renews it too.
        assert_eq!(
            idle_deadline(idle, done, at_accept, later, timeout),
            renewed
        );
        // Nothing started: the deadline stays.
        assert_eq!(
            idle_deadline(done, done, at_accept, later, timeout),
            at_accept
        );
    }
}
