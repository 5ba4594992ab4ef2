//! The connector of TLS-originating pools: TCP to the endpoint in the request URI, then a TLS
//! handshake with one settings set and one server name, both bounded in time. A failed handshake
//! is an error, never a plaintext connection.
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
use rustls::{ClientConfig, pki_types::ServerName};
use thiserror::Error;
use tokio::{net::TcpStream, time::timeout};
use tokio_rustls::client::TlsStream;

use crate::tls::failure_reason;

/// Why a TLS upstream connection could not be made.
#[derive(Debug, Error)]
pub(in crate::proxy) enum ConnectError {
    #[error("the upstream authority {0:?} is not a socket address")]
    Address(String),
    #[error("connecting to {addr}")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr} timed out after {after:?}")]
    TcpTimeout { addr: SocketAddr, after: Duration },
    #[error("TLS handshake with {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {addr} timed out after {after:?}")]
    HandshakeTimeout { addr: SocketAddr, after: Duration },
}

impl ConnectError {
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub(in crate::proxy) fn transport_failure(&self) -> String {
        match self {
            ConnectError::Address(_) => "invalid_upstream_address".into(),
            ConnectError::Tcp { source, .. } => source.to_string(),
            ConnectError::TcpTimeout { .. } => "connection timed out".into(),
            ConnectError::Handshake { source, .. } => tls_reason(source)
                .unwrap_or_else(|| format!("TLS_error:|{}", source.kind()).replace(' ', "_")),
            ConnectError::HandshakeTimeout { .. } => "TLS_error:|handshake_timeout".into(),
        }
    }

    pub(in crate::proxy) fn timed_out(&self) -> bool {
        matches!(
            self,
            ConnectError::TcpTimeout { .. } | ConnectError::HandshakeTimeout { .. }
        )
    }
}

/// The rustls error inside an I/O error (how tokio-rustls reports TLS failures), as a reason.
pub(in crate::proxy) fn tls_reason(error: &io::Error) -> Option<String> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(failure_reason)
}

/// Makes TLS connections for one pool: one settings set, one server name.
#[derive(Clone)]
pub(in crate::proxy) struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

impl TlsConnector {
    pub(in crate::proxy) fn new(
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            config,
            server_name,
            connect_timeout,
            handshake_timeout,
        }
    }

    /// A TCP connection to `uri`'s authority (a socket address) with the TLS handshake done.
    pub(in crate::proxy) async fn connect(self, uri: Uri) -> Result<TlsConnection, ConnectError> {
        let authority = uri.authority().map_or("", |a| a.as_str());
        let addr: SocketAddr = authority
            .parse()
            .map_err(|_| ConnectError::Address(authority.to_owned()))?;
        let tcp = timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::TcpTimeout {
                addr,
                after: self.connect_timeout,
            })?
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "setting TCP_NODELAY on the upstream connection failed");
        }
        let local = tcp.local_addr().ok();
        let connector = tokio_rustls::TlsConnector::from(self.config);
        let tls = timeout(
            self.handshake_timeout,
            connector.connect(self.server_name, tcp),
        )
        .await
        .map_err(|_| ConnectError::HandshakeTimeout {
            addr,
            after: self.handshake_timeout,
        })?
        .map_err(|source| ConnectError::Handshake { addr, source })?;
        let (_, session) = tls.get_ref();
        tracing::debug!(
            %addr,
            version = ?session.protocol_version(),
            resumed = ?session.handshake_kind(),
            "TLS upstream connection established"
        );
        Ok(TlsConnection {
            io: TokioIo::new(tls),
            local,
            alert: TlsAlert::default(),
        })
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TlsConnection;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsConnection, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// The local address of an upstream connection, put in each response's extensions (as
/// hyper-util's `HttpInfo` is for plain connections) for `%UPSTREAM_LOCAL_ADDRESS%`.
#[derive(Clone, Copy, Debug)]
pub(in crate::proxy) struct UpstreamLocal(pub SocketAddr);

/// The first TLS failure an established connection read or wrote, as a
/// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`. A TLS 1.3 server judges the client certificate after
/// the client's handshake is done, so its refusal (an alert) arrives on the connection later;
/// hyper may then fail the waiting request as merely canceled, and this slot, reached through
/// the error's connection info, still says why.
#[derive(Clone, Debug, Default)]
pub(in crate::proxy) struct TlsAlert(Arc<OnceLock<String>>);

impl TlsAlert {
    pub(in crate::proxy) fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    fn record<T>(&self, result: &Poll<io::Result<T>>) {
        if let Poll::Ready(Err(error)) = result
            && let Some(reason) = tls_reason(error)
        {
            let _ = self.0.set(reason);
        }
    }
}

/// One TLS connection to an upstream endpoint.
pub(in crate::proxy) struct TlsConnection {
    io: TokioIo<TlsStream<TcpStream>>,
    local: Option<SocketAddr>,
    alert: TlsAlert,
}

impl TlsConnection {
    /// The local address of the TCP connection under it.
    pub(in crate::proxy) fn local(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Where this connection keeps the first TLS failure it reads or writes.
    pub(in crate::proxy) fn alert(&self) -> TlsAlert {
        self.alert.clone()
    }
}

impl Connection for TlsConnection {
    fn connected(&self) -> Connected {
        let connected = Connected::new().extra(self.alert.clone());
        match self.local {
            Some(local) => connected.extra(UpstreamLocal(local)),
            None => connected,
        }
    }
}

impl Read for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        this.alert.record(&result);
        result
    }
}

impl Write for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.alert.record(&result);
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
