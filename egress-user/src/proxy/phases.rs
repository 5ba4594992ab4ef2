//! The phases of one HTTP request at the waypoint, in the order they run (the shape of
//! pingora's proxy trait):
//!
//! 1. **request filter** — the framing gate ran before hyper ([`super::framing`]); here: the
//!    authority ([`authority`]), `CONNECT` and `Upgrade` ([`upgrade_request`]), one normalized
//!    target ([`request_target`]), header hygiene ([`clean_headers`]);
//! 2. **route** — which ServiceEntry, of the table current now ([`route`]); for a DYNAMIC_DNS
//!    one, which concrete name ([`dynamic_name`]);
//! 3. **authorize** — the engine's verdict on what will be forwarded ([`authorize`]);
//! 4. **upstream peer** — endpoint and TLS server name ([`server_name`] and
//!    [`Service::upstream_addr`]);
//! 5. **forward** and 6. **log** — `http.rs` (`forward`, `Exchange`) and `upgrade.rs`.
//!
//! Everything here is pure: `egress explain` runs the same route and authorize code (and the
//! same target normalization and header hygiene) as the waypoint, so the two cannot disagree.
use std::{net::IpAddr, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue, Version, header};
use rustls::pki_types::ServerName;

use super::reply::VIA;
use crate::{
    config::Protocol,
    identity::Principal,
    model::{Service, ServiceTable},
    policy::{
        Attributes, Decision, HttpAttributes, NormalizeError, NormalizedTarget, PathParameters,
        PolicySet, Target, normalize_request_target, strip_internal_headers,
    },
    tls::UpstreamTls,
};

/// Whether the upstream of a port of this protocol speaks HTTP/2 (Istio: `HTTP2`, `GRPC`).
pub(crate) fn speaks_h2(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Http2 | Protocol::Grpc)
}

/// Istio's `request_protocol` of a request: `grpc` for HTTP/2 carrying
/// `content-type: application/grpc…` (gRPC over HTTP/2, as Envoy's gRPC check sees it), `http`
/// for anything else.
pub(crate) fn request_protocol(version: Version, headers: &HeaderMap) -> RequestProtocol {
    let grpc_content = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if version == Version::HTTP_2 && grpc_content {
        RequestProtocol::Grpc
    } else {
        RequestProtocol::Http
    }
}

/// The `request_protocol` label of a request's metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestProtocol {
    Http,
    Grpc,
}

impl RequestProtocol {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// Why a request target was refused.
#[derive(Debug)]
pub(crate) enum TargetRefused {
    /// It cannot be normalized safely (Envoy: `path_normalization_failed`).
    Normalization(NormalizeError),
    /// A `;` path parameter the configuration refuses.
    PathParameter(NormalizeError),
}

/// Request filter: the one path matched and forwarded (design §8.3). Absolute-form targets
/// contribute their path and query; the authority goes to `Host`.
pub(crate) fn request_target(
    raw: &str,
    path_parameters: PathParameters,
) -> Result<NormalizedTarget, TargetRefused> {
    let mut target = normalize_request_target(raw).map_err(TargetRefused::Normalization)?;
    target
        .apply_path_parameters(path_parameters)
        .map_err(TargetRefused::PathParameter)?;
    Ok(target)
}

/// Request filter: what is left of the headers once the hop-by-hop ones and the ones only a
/// trusted proxy sets are gone. Authorization sees exactly these, and they are forwarded.
pub(crate) fn clean_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    strip_internal_headers(headers);
}

/// What an `Upgrade` request asks for (RFC 9110 §7.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpgradeRequest {
    /// `Upgrade: websocket` (RFC 6455): authorized as any request, then tunnelled once the
    /// upstream answers 101.
    WebSocket,
    /// `Upgrade: h2c` (RFC 7540 §3.2, removed by RFC 9113): refused with 400, the connection
    /// closed. Envoy's HTTP/1 codec does the same unless h2c upgrades are configured; an app
    /// that speaks HTTP/2 in clear text uses prior knowledge instead.
    H2c,
    /// Any other protocol: refused with 400 (nothing but WebSocket is tunnelled).
    Other,
}

/// Request filter: whether the request asks to switch protocols. `Upgrade` counts only with
/// `Connection: upgrade` (RFC 9110 §7.8), on HTTP/1.1 — the framing gate's test too, which
/// holds back what the client sends after such a request until it is answered.
pub(crate) fn upgrade_request(version: Version, headers: &HeaderMap) -> Option<UpgradeRequest> {
    if version != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let first = upgrades.next()?;
    if !connection_upgrade {
        return None;
    }
    let protocols: Vec<String> = std::iter::once(first)
        .chain(upgrades)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_ascii_lowercase())
        .collect();
    Some(match protocols.as_slice() {
        [p] if p == "websocket" => UpgradeRequest::WebSocket,
        _ if protocols.iter().any(|p| p == "h2c") => UpgradeRequest::H2c,
        _ => UpgradeRequest::Other,
    })
}

/// The route phase's answer.
#[derive(Debug)]
pub(crate) struct Route {
    /// The ServiceEntry port the request is for.
    pub service: Arc<Service>,
    /// Another ServiceEntry than the kernel's, chosen by `Host` on a shared address.
    pub by_host: bool,
}

/// Route: the service a request is for, in `table` (the one current now). `kernel` is the
/// service the connection was redirected for (its id is what the kernel's service map
/// answered); a table replaced since (DNS refresh, reload) is followed only to the *same*
/// service — an id that now names another one is not (`None`: cluster not found). On an
/// address several ServiceEntries share, `authority` picks among them (as Envoy picks a virtual
/// host); one that names none of them stays with the kernel's.
pub(crate) fn route(
    table: &ServiceTable,
    kernel: &Service,
    authority: Option<&str>,
) -> Option<Route> {
    let current = table.get(kernel.id).filter(|s| same_service(s, kernel))?;
    if let Some(host) = authority
        && table.is_shared(current.id)
        && let Some(sibling) = table.by_host(current.id, host)
    {
        return Some(Route {
            by_host: sibling.id != current.id,
            service: sibling.clone(),
        });
    }
    Some(Route {
        service: current.clone(),
        by_host: false,
    })
}

/// Route, for a connection to `dst` as the kernel decides it: the longest matching address or
/// CIDR on that port (the kernel's LPM trie), then [`route`] by `authority`.
pub(crate) fn route_destination(
    table: &ServiceTable,
    dst: std::net::SocketAddr,
    authority: Option<&str>,
) -> Option<Route> {
    let kernel = table.get(table.route(dst)?)?;
    route(table, kernel, authority)
}

/// Why a connection to a DYNAMIC_DNS ServiceEntry has no destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NoDynamicName {
    /// Nothing names the destination: no `Host`, no SNI — or a port that carries neither (raw
    /// TCP), which istiod refuses in config and the waypoint refuses on the wire.
    Missing,
    /// The name matches none of the ServiceEntry's wildcard hosts, or is no DNS name.
    NotMatching(String),
}

impl std::fmt::Display for NoDynamicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoDynamicName::Missing => f.write_str("no Host or SNI names the destination"),
            NoDynamicName::NotMatching(name) => {
                write!(f, "{name:?} matches no wildcard host of the ServiceEntry")
            }
        }
    }
}

/// Route, on a `resolution: DYNAMIC_DNS` ServiceEntry: the concrete name to resolve and
/// connect to — the request's authority (HTTP) or server name (TLS), without port or trailing
/// dot, lower case — when it is a DNS name matching one of the wildcard hosts. The address the
/// client dialled (a VIP) plays no part: the destination is only ever what this name resolves
/// to.
pub(crate) fn dynamic_name(service: &Service, name: Option<&str>) -> Result<String, NoDynamicName> {
    let name = name.ok_or(NoDynamicName::Missing)?;
    let host = match name.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => name,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let matches = service
        .hosts
        .iter()
        .any(|pattern| pattern.starts_with('*') && host_matches(pattern, &host));
    if !matches || crate::config::check_fqdn(&host).is_err() {
        return Err(NoDynamicName::NotMatching(name.to_owned()));
    }
    Ok(host)
}

fn same_service(a: &Service, b: &Service) -> bool {
    a.namespace == b.namespace && a.name == b.name && a.port == b.port && a.protocol == b.protocol
}

/// Who is asking, as authorization sees it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Caller<'a> {
    /// Kernel-attested identity; `None` for a caller without one.
    pub principal: Option<&'a Principal>,
    /// The client socket as accepted.
    pub source_ip: Option<IpAddr>,
    /// The address the application dialled (the kernel's origin record).
    pub destination_ip: Option<IpAddr>,
}

/// The request as it will be forwarded: `method` as sent, `host` the authority forwarded in
/// `Host`, `path` normalized without its query, `headers` after [`clean_headers`].
pub(crate) struct HttpRequest<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// Authorize: the verdict of `policies` for `caller` to `service` — with `http` for a request
/// on an HTTP port, `sni` for a TLS connection, neither for TCP. The port is the
/// ServiceEntry's, which is what a `ports` rule names.
pub(crate) fn authorize(
    policies: &PolicySet,
    service: &Service,
    caller: &Caller<'_>,
    http: Option<&HttpRequest<'_>>,
    sni: Option<&str>,
) -> Decision {
    let attributes = Attributes {
        principal: caller.principal,
        source_ip: caller.source_ip,
        destination_ip: caller.destination_ip,
        destination_port: service.port,
        sni,
        http: http.map(|r| HttpAttributes {
            method: r.method,
            host: r.host,
            path: r.path,
            headers: r.headers,
        }),
    };
    policies.evaluate(
        &Target {
            namespace: &service.namespace,
            service_entry: &service.name,
        },
        &attributes,
    )
}

/// Request filter: the authority to forward with. Absolute-form targets win over `Host` (RFC
/// 9112 §3.2.2); duplicate `Host` is ambiguous and an HTTP/1.1 request without one is invalid
/// (§3.2), both rejected, as is a `Host` that is not visible ASCII (Envoy:
/// `invalid_authority`). An HTTP/1.0 request without `Host` gets the ServiceEntry's host. The
/// error is Envoy's `%RESPONSE_CODE_DETAILS%`.
pub(crate) fn authority(
    uri: &http::Uri,
    version: Version,
    headers: &HeaderMap,
    service: &Service,
) -> Result<Option<HeaderValue>, &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err("duplicate_host_header");
    }
    if let Some(authority) = uri.authority() {
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| "invalid_authority");
    }
    match host {
        // Authorization matches the host as text: bytes it cannot read must not be forwarded.
        Some(host) if host.to_str().is_err() => Err("invalid_authority"),
        Some(host) => Ok(Some(host)),
        None if version == Version::HTTP_11 => Err("missing_host_header"),
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

/// Upstream peer: the server name to originate TLS with — the DestinationRule's `sni`, else
/// the ServiceEntry host the request is for (its authority's host when that is one of the
/// service's hosts, else the service's first concrete host). `None` when there is no name to
/// send.
pub(crate) fn server_name(
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
pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
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

/// Headers that never travel past this hop (RFC 9110 §7.6.1), plus any the `Connection` header
/// names. `Host` and `Content-Length` are kept even if named: dropping them would change where
/// or how much a message is, which a peer must not be able to ask a proxy to do. `TE:
/// trailers` is kept as `te: trailers`, as Envoy keeps it: gRPC servers require it, and it is
/// the one TE value HTTP/2 allows (RFC 9113 §8.2.2).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them (a request from curl or wrk, a response without
    // `Connection`): one look at each name instead of nine map lookups.
    const STANDARD: [HeaderName; 5] = [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ];
    let hop_by_hop = |name: &HeaderName| {
        STANDARD.contains(name)
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
    };
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        });
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
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Appends our entry to `via`, after whatever earlier hops wrote, as one field value.
pub(crate) fn append_via(headers: &mut HeaderMap) {
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
    fn a_dynamic_name_must_match_a_wildcard_and_be_a_dns_name() {
        let service = Service {
            id: 0,
            namespace: "default".into(),
            name: "wild".into(),
            hosts: vec!["*.wild.test".into(), "*-api.example.com".into()],
            addresses: vec![],
            port: 80,
            port_name: "http".into(),
            protocol: Protocol::Http,
            upstream_port: 80,
            upstream: crate::model::Upstream::DynamicDns,
        };
        let name = |n: Option<&str>| dynamic_name(&service, n);
        assert_eq!(name(Some("a.wild.test")).as_deref(), Ok("a.wild.test"));
        assert_eq!(
            name(Some("X.Y.Wild.Test.:8080")).as_deref(),
            Ok("x.y.wild.test")
        );
        assert_eq!(
            name(Some("pay-api.example.com")).as_deref(),
            Ok("pay-api.example.com")
        );
        assert_eq!(name(None), Err(NoDynamicName::Missing));
        for refused in [
            "wild.test",
            "a.wild.test.evil.test",
            "evil.test",
            "240.240.1.2",
            "a_b.wild.test",
            "a..wild.test",
            "[::1]:80",
            "example.com",
        ] {
            assert_eq!(
                name(Some(refused)),
                Err(NoDynamicName::NotMatching(refused.into())),
                "{refused}"
            );
        }
    }

    #[test]
    fn grpc_is_http2_with_a_grpc_content_type() {
        let with = |content_type: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(t) = content_type {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
            }
            headers
        };
        for (version, content_type, expected) in [
            (
                Version::HTTP_2,
                Some("application/grpc"),
                RequestProtocol::Grpc,
            ),
            (
                Version::HTTP_2,
                Some("application/grpc+proto"),
                RequestProtocol::Grpc,
            ),
            (
                Version::HTTP_2,
                Some("application/grpc-web"),
                RequestProtocol::Grpc,
            ),
            (
                Version::HTTP_2,
                Some("application/json"),
                RequestProtocol::Http,
            ),
            (Version::HTTP_2, None, RequestProtocol::Http),
            (
                Version::HTTP_11,
                Some("application/grpc"),
                RequestProtocol::Http,
            ),
            (Version::HTTP_10, None, RequestProtocol::Http),
        ] {
            assert_eq!(
                request_protocol(version, &with(content_type)),
                expected,
                "{version:?} {content_type:?}"
            );
        }
        assert_eq!(RequestProtocol::Grpc.as_str(), "grpc");
        assert_eq!(RequestProtocol::Http.as_str(), "http");
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret, host, content-length"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers, deflate"),
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
        assert_eq!(left, ["content-length", "host", "te", "x-kept"]);
        assert_eq!(headers[header::TE], "trailers");
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

    #[test]
    fn upgrades_are_told_apart() {
        let ask = |version, pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (k, v) in pairs {
                headers.append(*k, HeaderValue::from_static(v));
            }
            upgrade_request(version, &headers)
        };
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(ask(Version::HTTP_11, &ws), Some(UpgradeRequest::WebSocket));
        // HTTP/1.0 has no upgrade; Upgrade without `Connection: upgrade` is no request to switch.
        assert_eq!(ask(Version::HTTP_10, &ws), None);
        assert_eq!(ask(Version::HTTP_11, &[("upgrade", "websocket")]), None);
        assert_eq!(
            ask(
                Version::HTTP_11,
                &[
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", "h2c")
                ]
            ),
            Some(UpgradeRequest::H2c)
        );
        assert_eq!(
            ask(
                Version::HTTP_11,
                &[("connection", "upgrade"), ("upgrade", "websocket, h2c")]
            ),
            Some(UpgradeRequest::H2c)
        );
        assert_eq!(
            ask(
                Version::HTTP_11,
                &[("connection", "upgrade"), ("upgrade", "TLS/1.2")]
            ),
            Some(UpgradeRequest::Other)
        );
    }
}
