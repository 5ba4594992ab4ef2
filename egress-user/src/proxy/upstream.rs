//! The pooled upstream HTTP client, and how its failures map to Envoy's answers.
use std::{error::Error as _, io, time::Duration};

use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, Error as ClientError, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::{WaypointConfig, body::Metered};

/// Idle upstream connections are closed after this long (hyper-util's default, and close to
/// Envoy's one hour in spirit while returning sockets sooner).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub(super) type UpstreamClient = Client<HttpConnector, Metered<Incoming>>;

/// One client per waypoint: its pool is keyed by scheme and authority, and the waypoint always
/// puts the chosen endpoint's socket address in the authority, so connections are reused per
/// endpoint and never across services that happen to share a Host.
pub(super) fn client(config: &WaypointConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.upstream_connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
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

    /// `%RESPONSE_CODE_DETAILS%`.
    pub(super) fn details(&self) -> String {
        format!(
            "upstream_reset_before_response_started{{{}}}",
            self.reset_reason
        )
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
        let io_error = io_source(error);
        if error.is_connect() {
            let fallback = io::Error::other(root_cause(error));
            return Self::connect(io_error.unwrap_or(&fallback));
        }
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flag: "UC",
            reset_reason: "connection_termination",
            transport_failure: None,
        }
    }
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
