//! Non-HTTP ports: connect to the upstream and copy bytes both ways until both sides are done
//! or the connection has been idle too long. One access-log line per connection.
//!
//! TLS and HTTPS ports are passed through, not terminated: the ClientHello is peeked (not
//! consumed), its server name must be one of the ServiceEntry's hosts, and authorization sees
//! it as `connection.sni`. A connection without a matching SNI is closed, as Envoy closes one
//! that matches no filter chain.
#[path = "tls_peek.rs"]
mod tls_peek;
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::SystemTime,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, timeout},
};
use tracing::{debug, info};

use super::{
    Inbound, Waypoint, authz,
    body::Activity,
    phases::{self, host_matches},
    upstream::UpstreamFailure,
};
use crate::{
    config::Protocol,
    drain::DrainPhase,
    model::{ServiceTable, Upstream},
    telemetry::{
        Metrics,
        metrics::{TCP_RECEIVED_BYTES_TOTAL, TCP_SENT_BYTES_TOTAL},
    },
};

/// Authorizes the connection against `table` (the generation its service came from), then
/// splices it. A denied connection is closed before anything is connected upstream.
pub(super) async fn serve(
    waypoint: &Waypoint,
    downstream: TcpStream,
    inbound: &Inbound,
    table: Arc<ServiceTable>,
) {
    let started = Instant::now();
    let mut entry = inbound.entry(SystemTime::now());
    let log = |mut entry: crate::telemetry::AccessLogEntry| {
        entry.duration = started.elapsed();
        waypoint.access_log.log(&entry);
    };

    let tls = matches!(inbound.service.protocol, Protocol::Tls | Protocol::Https);
    let dynamic = inbound.service.upstream == Upstream::DynamicDns;
    if dynamic && !tls {
        // istiod refuses such a port in config; a table built otherwise still never connects
        // a connection somewhere its client chose. Envoy: no filter chain matches.
        info!(
            protocol = %inbound.service.protocol,
            "raw TCP to a DYNAMIC_DNS ServiceEntry is refused: only a Host header or a TLS SNI \
             names its destination, and plain TCP carries neither; closing"
        );
        entry.response_flags = Some("NR".into());
        entry.response_code_details = Some("filter_chain_not_found".into());
        log(entry);
        return;
    }
    let sni = if tls {
        match tls_peek::peek_sni(&downstream, tls_peek::CLIENT_HELLO_TIMEOUT).await {
            Ok(Some(sni))
                if inbound
                    .service
                    .hosts
                    .iter()
                    .any(|host| host_matches(host, &sni)) =>
            {
                Some(sni)
            }
            Ok(sni) => {
                info!(?sni, "the SNI names no host of the ServiceEntry; closing");
                entry.requested_server_name = sni;
                entry.response_flags = Some("NR".into());
                entry.response_code_details = Some("filter_chain_not_found".into());
                log(entry);
                return;
            }
            Err(error) if dynamic => {
                info!(
                    %error,
                    "raw TCP to a DYNAMIC_DNS ServiceEntry's TLS port is refused: without a TLS \
                     ClientHello naming a server, nothing names the destination; closing"
                );
                entry.response_flags = Some("NR".into());
                entry.response_code_details = Some(error.details().into());
                log(entry);
                return;
            }
            Err(error) => {
                info!(%error, "no server name from the client; closing");
                entry.response_flags = Some("NR".into());
                entry.response_code_details = Some(error.details().into());
                log(entry);
                return;
            }
        }
    } else {
        None
    };
    entry.requested_server_name = sni.clone();
    let decision = authz::authorize_connection(
        &table.policies,
        table.generation,
        inbound,
        &inbound.service,
        sni.as_deref(),
    );
    // Policies change by replacing the table; a long spliced connection must not hold an old
    // generation alive.
    drop(table);
    if let Some(details) = decision.denied_details() {
        // Envoy's network RBAC filter: no response flag, the details in
        // %CONNECTION_TERMINATION_DETAILS%, the connection closed without flushing.
        info!(policy = %decision.matched_policy(), "connection denied by policy; closing");
        entry.connection_termination_details = Some(details);
        log(entry);
        return;
    }

    let upstream_addr = if dynamic {
        // The SNI matched a host above; it must also be a wildcard match and a DNS name.
        let name = match phases::dynamic_name(&inbound.service, sni.as_deref()) {
            Ok(name) => name,
            Err(why) => {
                info!(%why, "no destination on a DYNAMIC_DNS ServiceEntry; closing");
                entry.response_flags = Some("NR".into());
                entry.response_code_details = Some("filter_chain_not_found".into());
                log(entry);
                return;
            }
        };
        match waypoint.dynamic.resolve(&name).await {
            Ok(addrs) => SocketAddr::new(
                addrs[waypoint.pick() % addrs.len()],
                inbound.service.upstream_port,
            ),
            Err(error) => {
                info!(%name, error = %error.chain(), "a DYNAMIC_DNS name did not resolve; closing");
                entry.response_flags = Some("UH".into());
                entry.response_code_details = Some("dns_resolution_failure".into());
                log(entry);
                return;
            }
        }
    } else {
        let Some(upstream_addr) = inbound
            .service
            .upstream_addr(inbound.original_dst.ip(), waypoint.pick())
        else {
            info!("no healthy upstream; closing");
            entry.response_flags = Some("UH".into());
            log(entry);
            return;
        };
        upstream_addr
    };
    entry.upstream_host = Some(upstream_addr);

    let connect = timeout(
        waypoint.config.upstream_connect_timeout,
        TcpStream::connect(upstream_addr),
    )
    .await
    .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)));
    let upstream = match connect {
        Ok(upstream) => upstream,
        Err(error) => {
            info!(%upstream_addr, %error, "upstream connect failed; closing");
            let failure = UpstreamFailure::connect(&error);
            entry.response_flags = Some(failure.flag.into());
            entry.upstream_transport_failure_reason = failure.transport_failure;
            log(entry);
            return;
        }
    };
    if let Err(error) = upstream.set_nodelay(true) {
        debug!(%error, "setting TCP_NODELAY on the upstream connection failed");
    }
    entry.upstream_local_address = upstream.local_addr().ok();
    debug!(%upstream_addr, "splicing");

    let activity = Activity::new();
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut downstream = Counted {
        inner: downstream,
        read: received.clone(),
        written: sent.clone(),
        activity: activity.clone(),
    };
    let mut upstream = upstream;
    let idle = waypoint.config.idle_timeout;
    let cut = waypoint.drain.signal();
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {
            match copied {
                Ok(_) => debug!("both sides closed"),
                Err(error) => debug!(%error, "connection ended"),
            }
        }
        () = activity.idle(idle) => debug!(?idle, "idle timeout; closing"),
        () = cut.reached(DrainPhase::Cut) => {
            info!("cut off at the drain timeout");
            entry.response_flags = Some("DC".into());
            entry.connection_termination_details = Some("drain_timeout".into());
        }
    }

    entry.bytes_received = received.load(Ordering::Relaxed);
    entry.bytes_sent = sent.load(Ordering::Relaxed);
    let labels = inbound.tcp_labels();
    Metrics::global().add(TCP_RECEIVED_BYTES_TOTAL, &labels, entry.bytes_received);
    Metrics::global().add(TCP_SENT_BYTES_TOTAL, &labels, entry.bytes_sent);
    log(entry);
}

/// Counts the bytes read from and written to the client, and marks the connection active.
pub(super) struct Counted<T> {
    pub(super) inner: T,
    pub(super) read: Arc<AtomicU64>,
    pub(super) written: Arc<AtomicU64>,
    pub(super) activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.fetch_add(n as u64, Ordering::Relaxed);
            this.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.written.fetch_add(n as u64, Ordering::Relaxed);
            this.activity.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
