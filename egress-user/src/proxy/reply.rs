//! The waypoint's own HTTP answers (Envoy's "local replies"): status, body, and what the access
//! log says about them.
use std::borrow::Cow;

use http::StatusCode;

/// What the waypoint adds to `via` (RFC 9110 §7.6.3: protocol version and a pseudonym).
pub(super) const VIA: &str = "1.1 egress-waypoint";

/// A response of the waypoint's own: what Envoy would answer, flag and details included.
pub(super) struct LocalReply {
    pub(super) status: StatusCode,
    pub(super) body: Cow<'static, str>,
    /// `%RESPONSE_FLAGS%`.
    pub(super) flag: Option<&'static str>,
    /// `%RESPONSE_CODE_DETAILS%`.
    pub(super) details: Cow<'static, str>,
    /// Close the connection after answering: after a malformed or timed-out request, what
    /// follows on the connection cannot be trusted to be framed as the client meant.
    pub(super) close: bool,
}

impl LocalReply {
    const fn fixed(
        status: StatusCode,
        body: &'static str,
        flag: Option<&'static str>,
        details: &'static str,
        close: bool,
    ) -> Self {
        Self {
            status,
            body: Cow::Borrowed(body),
            flag,
            details: Cow::Borrowed(details),
            close,
        }
    }

    /// A request refused for its framing before it reached our handler (Envoy's codec errors):
    /// `DPE`, the status's reason phrase as the body, the connection closed.
    pub(super) fn protocol_error(status: StatusCode, details: &'static str) -> Self {
        Self::fixed(
            status,
            match status.canonical_reason() {
                Some(reason) => reason,
                None => "Bad Request",
            },
            Some("DPE"),
            details,
            true,
        )
    }

    /// The answer as HTTP/1.1 bytes, for the waypoint to write itself once hyper has stopped
    /// (its head says `via` and `connection: close`, as [`Exchange::local`] would).
    ///
    /// [`Exchange::local`]: super::http
    pub(super) fn to_http1(&self) -> Vec<u8> {
        let reason = self.status.canonical_reason().unwrap_or("");
        let mut bytes = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
             connection: close\r\nvia: {}\r\n\r\n",
            self.status.as_u16(),
            self.body.len(),
            VIA,
        )
        .into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }

    /// A downstream protocol error (`DPE`), answered 400.
    pub(super) fn bad_request(details: impl Into<Cow<'static, str>>) -> Self {
        Self {
            details: details.into(),
            ..Self::fixed(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                Some("DPE"),
                "",
                true,
            )
        }
    }
}

/// Envoy's answer when path normalization fails (`path_normalization_failed`, no flag). The
/// framing was fine, so the connection stays open.
pub(super) const PATH_NORMALIZATION_FAILED: LocalReply = LocalReply::fixed(
    StatusCode::BAD_REQUEST,
    "Bad Request",
    None,
    "path_normalization_failed",
    false,
);
/// A `;` path parameter under `--path-parameters reject`, or a `.;`/`..;` segment.
pub(super) const PATH_PARAMETER_REFUSED: LocalReply = LocalReply::fixed(
    StatusCode::BAD_REQUEST,
    "Bad Request",
    None,
    "path_parameter_not_allowed",
    false,
);
pub(super) const NO_HEALTHY_UPSTREAM: LocalReply = LocalReply::fixed(
    StatusCode::SERVICE_UNAVAILABLE,
    "no healthy upstream",
    Some("UH"),
    "no_healthy_upstream",
    false,
);
/// A DestinationRule asks for TLS but the request names no host to send as SNI (a wildcard
/// ServiceEntry host and an authority outside it): refused, never sent in plain text.
pub(super) const NO_SERVER_NAME: LocalReply = LocalReply::fixed(
    StatusCode::SERVICE_UNAVAILABLE,
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
    Some("UF"),
    "upstream_reset_before_response_started{connection_failure,no_server_name}",
    false,
);
/// A DestinationRule asks for TLS whose credentials (a `credentialName` Secret) are missing or
/// invalid: refused, never sent in plain text. The reason is logged.
pub(super) const TLS_CREDENTIAL_UNAVAILABLE: LocalReply = LocalReply::fixed(
    StatusCode::SERVICE_UNAVAILABLE,
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
    Some("UF"),
    "upstream_reset_before_response_started{connection_failure,tls_credentials_unavailable}",
    false,
);
/// A request on a DYNAMIC_DNS ServiceEntry whose `Host` is no name its wildcard hosts match:
/// Envoy answers a request that matches no virtual host (and so no route) with 404, flag
/// `NR`, details `route_not_found`, and no body. Not 403: nothing was denied by a policy — the
/// name is simply not a destination of this ServiceEntry, so there is no route for it.
pub(super) const ROUTE_NOT_FOUND: LocalReply = LocalReply::fixed(
    StatusCode::NOT_FOUND,
    "",
    Some("NR"),
    "route_not_found",
    false,
);

/// The name a DYNAMIC_DNS request is for did not resolve (Envoy's dynamic forward proxy:
/// 503 `UH`, `dns_resolution_failure`).
pub(super) const DNS_RESOLUTION_FAILURE: LocalReply = LocalReply::fixed(
    StatusCode::SERVICE_UNAVAILABLE,
    "DNS resolution failure",
    Some("UH"),
    "dns_resolution_failure",
    false,
);

/// The service this connection was accepted for is no longer configured.
pub(super) const CLUSTER_NOT_FOUND: LocalReply = LocalReply::fixed(
    StatusCode::SERVICE_UNAVAILABLE,
    "cluster not found",
    Some("NC"),
    "cluster_not_found",
    true,
);
/// An `Upgrade` to anything but WebSocket: Envoy answers an upgrade its route does not accept
/// 403 `upgrade_failed`.
pub(super) const UPGRADE_FAILED: LocalReply = LocalReply::fixed(
    StatusCode::FORBIDDEN,
    "upgrade failed",
    None,
    "upgrade_failed",
    true,
);
pub(super) const CONNECT_NOT_SUPPORTED: LocalReply = LocalReply::fixed(
    StatusCode::METHOD_NOT_ALLOWED,
    "CONNECT is not supported",
    None,
    "method_not_allowed",
    false,
);
/// Envoy's `stream_idle_timeout` while the request was still arriving.
pub(super) const STREAM_IDLE_TIMEOUT: LocalReply = LocalReply::fixed(
    StatusCode::REQUEST_TIMEOUT,
    "stream timeout",
    Some("SI"),
    "stream_idle_timeout",
    true,
);
/// A request head started and did not end within the header read timeout (Envoy's
/// `request_headers_timeout`: 408, no flag).
pub(super) const REQUEST_HEADER_TIMEOUT: LocalReply = LocalReply::fixed(
    StatusCode::REQUEST_TIMEOUT,
    "request header timeout",
    None,
    "request_header_timeout",
    true,
);
/// The request went out whole and no response headers came back in time.
pub(super) const UPSTREAM_RESPONSE_TIMEOUT: LocalReply = LocalReply::fixed(
    StatusCode::GATEWAY_TIMEOUT,
    "upstream request timeout",
    Some("UT"),
    "upstream_response_timeout",
    false,
);
