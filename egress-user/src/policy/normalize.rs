//! Request paths as Istio normalizes them before authorization — and, as there, the normalized
//! path is also what is forwarded (design §8.3: authorization sees exactly what is forwarded).
//!
//! egress applies Istio's strongest option, `DECODE_AND_MERGE_SLASHES` (istio.io
//! `docs/reference/config/security/normalization`; Istio's default is `BASE`, which leaves
//! `%2F` and `//` alone and so lets `/a%2F..%2Fadmin` and `//admin` past a rule for `/admin`).
//! In Envoy's order (`ConnectionManagerUtility::maybeNormalizePath`):
//! 1. decode `%2F %2f %5C %5c` (`PathWithEscapedSlashesAction::UNESCAPE_AND_FORWARD`);
//! 2. RFC 3986 normalization as Envoy's `normalize_path` does it (Chromium's URL
//!    canonicalizer): decode percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`),
//!    once — no double decoding; backslash to slash; resolve `.` and `..` segments, including
//!    their `%2e` forms; a `%00` is refused;
//! 3. merge repeated slashes.
//!
//! Other escapes are kept as written (`%ab` stays `%ab`). A `%` that starts no escape (not
//! followed by two hex digits) is refused: decoding once would make one of it — `/%%32e%%32e/x`
//! becomes `/%2e%2e/x`, which authorization matches as written and an upstream that decodes
//! reads as `/x` — so the normalized path would not be normalized (Chromium keeps such a `%`). The query is kept for forwarding but
//! never matched; the fragment is dropped (Envoy refuses a `#` by default; design §5 strips it).
//! Bytes that cannot appear in an HTTP/1.1 request target (controls, space, non-ASCII) are
//! refused rather than re-escaped as Chromium would: the caller answers 400.
//!
//! Path parameters (`;` in a segment, RFC 3986 §3.3) are where Istio's normalization and many
//! upstreams part ways: Envoy matches `/admin;x` as written, while Tomcat, Jetty and Spring drop
//! `;…` from each segment and read `..;` as `..`, so they serve `/admin` to a request that a
//! `DENY paths: [/admin]` let through. [`NormalizedTarget::apply_path_parameters`] closes that:
//! by default a `;` (or `%3B`) anywhere in the path is refused; with
//! [`PathParameters::Allow`] matrix parameters are forwarded, but authorization matches the
//! path as those upstreams read it (every segment without its parameters), and a `.` or `..`
//! segment with parameters is still refused.

/// Why a request target cannot be normalized safely; the caller answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("empty request target")]
    Empty,
    #[error("request target must start with '/' (origin form), got {0:?}")]
    NotOriginForm(String),
    #[error("%00 is not allowed in a path")]
    EncodedNul,
    #[error("'%' at offset {offset} starts no escape (two hex digits must follow)")]
    StrayPercent { offset: usize },
    #[error("byte 0x{byte:02x} at offset {offset} is not allowed in a request target")]
    InvalidByte { byte: u8, offset: usize },
    #[error(
        "path parameter in segment {segment:?}: ';' (or %3B) is refused, since upstreams such as \
         Tomcat and Spring drop it and would serve another path than the one authorized \
         (`egress run --path-parameters allow` forwards them)"
    )]
    PathParameter { segment: String },
    #[error("dot segment with a path parameter {segment:?}: upstreams read it as {dots:?}")]
    DotSegmentParameter { segment: String, dots: &'static str },
}

/// What the waypoint does with path parameters (`;` in a path segment, and its `%3B` form).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PathParameters {
    /// Refuse a request whose path has any (400): what an upstream strips cannot bypass a rule.
    #[default]
    Reject,
    /// Forward them, and match the path with every segment's parameters removed (as Tomcat,
    /// Jetty and Spring read it); `.;…` and `..;…` segments are still refused.
    Allow,
}

/// A normalized request target: the path to match and forward, and the query to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedTarget {
    /// Normalized; starts with `/`; no query, no fragment.
    pub path: String,
    /// What followed the first `?` (without it), untouched.
    pub query: Option<String>,
    /// The path authorization matches when it differs from `path`: `path` without its
    /// parameters, under [`PathParameters::Allow`].
    pub matched: Option<String>,
}

impl NormalizedTarget {
    /// The path that authorization matches.
    pub fn matched_path(&self) -> &str {
        self.matched.as_deref().unwrap_or(&self.path)
    }

    /// Applies the path-parameter rule (see the module documentation) to a normalized target.
    pub fn apply_path_parameters(&mut self, mode: PathParameters) -> Result<(), NormalizeError> {
        if !self.path.contains(';') && find_encoded_semicolon(&self.path).is_none() {
            return Ok(());
        }
        let mut matched = String::with_capacity(self.path.len());
        for segment in self.path[1..].split('/') {
            let name = match (segment.find(';'), find_encoded_semicolon(segment)) {
                (Some(a), Some(b)) => &segment[..a.min(b)],
                (Some(at), None) | (None, Some(at)) => &segment[..at],
                (None, None) => {
                    matched.push('/');
                    matched.push_str(segment);
                    continue;
                }
            };
            let dots = match name {
                "." => Some("."),
                ".." => Some(".."),
                _ => None,
            };
            if let Some(dots) = dots {
                return Err(NormalizeError::DotSegmentParameter {
                    segment: segment.to_owned(),
                    dots,
                });
            }
            if mode == PathParameters::Reject {
                return Err(NormalizeError::PathParameter {
                    segment: segment.to_owned(),
                });
            }
            matched.push('/');
            matched.push_str(name);
        }
        // `/a;x//b` and `/;x/b` leave empty segments behind: merged as the path was.
        self.matched = Some(merge_slashes(&matched));
        Ok(())
    }

    /// The request target to send upstream: `path[?query]`.
    pub fn to_forward(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

/// The path to match, from a raw origin-form request target (`/a/../b?x=1#f` -> `/b`).
pub fn normalize_path(raw_path_and_query: &str) -> Result<String, NormalizeError> {
    normalize_request_target(raw_path_and_query).map(|target| target.path)
}

/// Splits and normalizes a raw origin-form request target.
pub fn normalize_request_target(raw: &str) -> Result<NormalizedTarget, NormalizeError> {
    if raw.is_empty() {
        return Err(NormalizeError::Empty);
    }
    let without_fragment = raw.split_once('#').map_or(raw, |(before, _)| before);
    let (path, query) = match without_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (without_fragment, None),
    };
    if !path.starts_with('/') {
        return Err(NormalizeError::NotOriginForm(raw.to_owned()));
    }
    if let Some(offset) = raw[..without_fragment.len()]
        .bytes()
        .position(|b| b <= b' ' || b >= 0x7f)
    {
        let byte = raw.as_bytes()[offset];
        return Err(NormalizeError::InvalidByte { byte, offset });
    }
    let decoded = decode(path)?;
    Ok(NormalizedTarget {
        path: merge_slashes(&remove_dot_segments(&decoded)),
        query: query.map(str::to_owned),
        matched: None,
    })
}

/// Where `%3B`/`%3b` (an encoded `;`, which decoding keeps as written) starts in `text`.
fn find_encoded_semicolon(text: &str) -> Option<usize> {
    text.as_bytes()
        .windows(3)
        .position(|w| w[0] == b'%' && w[1] == b'3' && w[2].eq_ignore_ascii_case(&b'b'))
}

/// Request headers that only a trusted proxy may set, removed from every request before it is
/// authorized and forwarded. A workload behind the waypoint is never trusted to set them:
/// - `x-forwarded-client-cert` (XFCC) carries the identity of a client certificate a proxy
///   verified; Envoy's `forward_client_cert_details` default, `SANITIZE`, removes it from
///   requests of untrusted clients (a forged one satisfied a `when: request.headers[...]`
///   condition, CVE-2023-27487 class).
/// - every `x-envoy-*` header: Envoy's internal headers (`x-envoy-original-path`,
///   `x-envoy-internal`, `x-envoy-peer-metadata`, retry and timeout controls, …), which Envoy
///   strips from external requests (CVE-2024-45806 class); an upstream Envoy would trust them.
pub fn strip_internal_headers(headers: &mut http::HeaderMap) {
    let internal: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| is_internal_header(name.as_str()))
        .cloned()
        .collect();
    for name in internal {
        headers.remove(name);
    }
}

/// `name` (lower case, as `http` keeps it) is one [`strip_internal_headers`] removes.
pub fn is_internal_header(name: &str) -> bool {
    name == "x-forwarded-client-cert" || name.starts_with("x-envoy-")
}

/// Methods of the IANA HTTP method registry (RFC 9110, 5789, WebDAV and friends) in their
/// only spelling. Methods are case-sensitive (RFC 9110 §9.1), so `get` is not `GET` — but
/// upstreams that fold case run it as `GET`, past a policy that denies `GET`. Envoy's codec
/// refuses such requests; so do we.
const REGISTERED_METHODS: &[&str] = &[
    "ACL",
    "BASELINE-CONTROL",
    "BIND",
    "CHECKIN",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LABEL",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MKREDIRECTREF",
    "MKWORKSPACE",
    "MOVE",
    "OPTIONS",
    "ORDERPATCH",
    "PATCH",
    "POST",
    "PRI",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "QUERY",
    "REBIND",
    "REPORT",
    "SEARCH",
    "TRACE",
    "UNBIND",
    "UNCHECKOUT",
    "UNLINK",
    "UNLOCK",
    "UPDATE",
    "UPDATEREDIRECTREF",
    "VERSION-CONTROL",
];

/// `method` spells a registered method in another case (`get`, `Get`, `gEt`): such a request
/// is refused, never forwarded. The registered spelling and any other token pass.
pub fn is_miscased_method(method: &[u8]) -> bool {
    method.iter().any(u8::is_ascii_lowercase)
        && REGISTERED_METHODS
            .iter()
            .any(|known| known.as_bytes().eq_ignore_ascii_case(method))
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// One pass over the escapes: unreserved characters and slashes decoded, `%00` and a `%` that
/// starts no escape refused, the rest kept verbatim; backslashes become slashes.
fn decode(path: &str) -> Result<String, NormalizeError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(NormalizeError::StrayPercent { offset: i });
            };
            let c = hi << 4 | lo;
            match c {
                0 => return Err(NormalizeError::EncodedNul),
                b'/' | b'\\' => out.push('/'),
                c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                    out.push(c as char)
                }
                _ => out.push_str(&path[i..i + 3]),
            }
            i += 3;
            continue;
        }
        out.push(if b == b'\\' { '/' } else { b as char });
        i += 1;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on `/`-separated segments, keeping empty ones (`/a//../b` is `/a/b`, as in
/// Envoy, which resolves dots before it merges slashes). `..` at the root stays at the root.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            other => {
                out.push(other);
                continue;
            }
        }
        // A trailing `.` or `..` names a directory: `/a/b/..` is `/a/`.
        if i == last {
            out.push("");
        }
    }
    let mut result = String::with_capacity(path.len());
    for segment in out {
        result.push('/');
        result.push_str(segment);
    }
    if result.is_empty() {
        result.push('/');
    }
    result
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// istio/istio tests/integration/security/normalization_test.go, `DecodeAndMergeSlashes`
    /// and `NotNormalized` groups (input, what the backend must see).
    #[test]
    fn decode_and_merge_slashes_like_istio() {
        let cases = [
            ("/", "/"),
            ("/app#foo", "/app"),
            ("/app/", "/app/"),
            ("/app/../admin", "/admin"),
            ("/app", "/app"),
            ("/app//", "/app/"),
            ("/app/%2f", "/app/"),
            ("/app%2f/", "/app/"),
            ("/xyz%30..//abc", "/xyz0../abc"),
            ("/app/%2E./admin", "/admin"),
            (r"/app\admin", "/app/admin"),
            (r"/app/\/\/\admin", "/app/admin"),
            (r"/%2Fapp%5cadmin%5Cabc", "/app/admin/abc"),
            (r"/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\abc", "/app/admin/abc"),
            ("/app//../admin", "/app/admin"),
            ("/app//../../admin", "/admin"),
            ("/%c0%2e%c0%2e/admin", "/%c0.%c0./admin"),
            ("/%c0%2fadmin", "/%c0/admin"),
            // NotNormalized: look-alikes that must pass unchanged.
            ("/0x2e0x2e/admin", "/0x2e0x2e/admin"),
            ("/0x2e0x2e0x2fadmin", "/0x2e0x2e0x2fadmin"),
            ("/%25c0%25ae%25c1%259cadmin", "/%25c0%25ae%25c1%259cadmin"),
            ("/%252e%252e/admin", "/%252e%252e/admin"),
            ("/%252e%252e%252fadmin", "/%252e%252e%252fadmin"),
            ("/%c1%9cadmin", "/%c1%9cadmin"),
            ("/%c0%ae%c0%ae/admin", "/%c0%ae%c0%ae/admin"),
            ("/%c0%afadmin", "/%c0%afadmin"),
            ("/.../admin", "/.../admin"),
            ("/..../admin", "/..../admin"),
            ("/..;/admin", "/..;/admin"),
            ("/;/admin", "/;/admin"),
            ("/admin;a=b", "/admin;a=b"),
            ("/admin;a=b/xyz", "/admin;a=b/xyz"),
            ("/admin,a=b/xyz", "/admin,a=b/xyz"),
            ("/Admin", "/Admin"),
            ("/ADMIN", "/ADMIN"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input).as_deref(), Ok(want), "{input}");
        }
    }

    /// normalization_test.go `PercentEncoded`: `/admin%XX` for every byte but 0; unreserved
    /// characters, `/` and `\` (to `/`) decoded, everything else kept as written.
    #[test]
    fn every_percent_encoded_byte_like_istio() {
        for byte in 1..=0xffu8 {
            let input = format!("/admin%{byte:02x}");
            let decoded = byte.is_ascii_alphanumeric() || b"-._~/\\".contains(&byte);
            let want = match byte {
                b'/' | b'\\' => "/admin/".to_owned(),
                _ if decoded => format!("/admin{}", byte as char),
                _ => input.clone(),
            };
            assert_eq!(normalize_path(&input), Ok(want), "{input}");
        }
    }

    /// normalization_test.go `Invalid`: `%00` is a 400.
    #[test]
    fn encoded_nul_is_refused() {
        assert_eq!(normalize_path("/admin%00"), Err(NormalizeError::EncodedNul));
    }

    /// istio/istio authz_test.go TestAuthz_PathNormalization: the dot-segment variants all
    /// resolve to `/private`.
    #[test]
    fn dot_segment_variants() {
        for input in [
            "/public/../private",
            "/public/./../private",
            "/public/.././private",
            "/public/%2E%2E/private",
            "/public/%2e%2e/private",
            "/public/%2E/%2E%2E/private",
            "/public/%2e/%2e%2e/private",
            "/public/%2E%2E/%2E/private",
            "/public/%2e%2e/%2e/private",
        ] {
            assert_eq!(normalize_path(input).as_deref(), Ok("/private"), "{input}");
        }
        assert_eq!(
            normalize_path("/public/../public").as_deref(),
            Ok("/public")
        );
    }

    /// RFC 3986 §5.2.4 edge cases: above the root, trailing dots.
    #[test]
    fn rfc3986_edges() {
        let cases = [
            ("/..", "/"),
            ("/../a", "/a"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/./b", "/a/b"),
            ("/.%2e/.%2E/etc/passwd", "/etc/passwd"),
            ("//admin", "/admin"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn query_is_kept_for_forwarding_but_not_matched() {
        let target = normalize_request_target("/a/../get?x=%2F..&y#frag").expect("valid");
        assert_eq!(target.path, "/get");
        assert_eq!(target.query.as_deref(), Some("x=%2F..&y"));
        assert_eq!(target.to_forward(), "/get?x=%2F..&y");
        // TestAuthz_PathPrecedence: the query is not part of the path.
        assert_eq!(
            normalize_path("/allow/admin?param=value").as_deref(),
            Ok("/allow/admin")
        );
    }

    fn with_parameters(raw: &str, mode: PathParameters) -> Result<String, NormalizeError> {
        let mut target = normalize_request_target(raw)?;
        target.apply_path_parameters(mode)?;
        Ok(target.matched_path().to_owned())
    }

    /// The forms the adversarial pass used against `DENY paths: [/admin]`.
    #[test]
    fn path_parameters_are_refused_by_default() {
        for raw in [
            "/admin;x",
            "/user/..;foo=bar/admin",
            "/admin%3Bx",
            "/admin%3bx",
            "/x/..;/admin",
            "/x/.;/admin",
            "/;/admin",
            "/a/b;c=d/e?q=1",
        ] {
            assert!(
                matches!(
                    with_parameters(raw, PathParameters::Reject),
                    Err(NormalizeError::PathParameter { .. }
                        | NormalizeError::DotSegmentParameter { .. })
                ),
                "{raw}"
            );
        }
        // A `;` in the query is not a path parameter.
        assert_eq!(
            with_parameters("/get?a=1;b=2", PathParameters::Reject).as_deref(),
            Ok("/get")
        );
    }

    #[test]
    fn allowed_path_parameters_are_matched_without_them() {
        let cases = [
            ("/admin;x", "/admin"),
            ("/admin%3Bx", "/admin"),
            ("/a;v=1/b;w=2", "/a/b"),
            ("/;x/admin", "/admin"),
            ("/a;x//b", "/a/b"),
            ("/plain", "/plain"),
        ];
        for (raw, want) in cases {
            assert_eq!(
                with_parameters(raw, PathParameters::Allow).as_deref(),
                Ok(want),
                "{raw}"
            );
        }
        let mut target = normalize_request_target("/a;v=1/b?q").expect("valid");
        target
            .apply_path_parameters(PathParameters::Allow)
            .expect("allowed");
        assert_eq!(target.to_forward(), "/a;v=1/b?q", "forwarded as written");
        // Dot segments with parameters are what Tomcat reads as `..`: always refused.
        for raw in [
            "/user/..;foo=bar/admin",
            "/x/..;/admin",
            "/x/.;/admin",
            "/x/..%3B/a",
        ] {
            assert!(
                matches!(
                    with_parameters(raw, PathParameters::Allow),
                    Err(NormalizeError::DotSegmentParameter { .. })
                ),
                "{raw}"
            );
        }
    }

    #[test]
    fn internal_headers_are_stripped() {
        let mut headers = http::HeaderMap::new();
        for (k, v) in [
            (
                "x-forwarded-client-cert",
                "By=spiffe://cluster.local/ns/default/sa/admin",
            ),
            ("x-envoy-original-path", "/admin"),
            ("x-envoy-internal", "true"),
            ("X-Envoy-Peer-Metadata", "forged"),
            ("x-forwarded-for", "198.18.0.1"),
            ("x-envoyish", "kept"),
            ("user-agent", "curl"),
        ] {
            headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_static(v),
            );
        }
        strip_internal_headers(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(http::HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["user-agent", "x-envoyish", "x-forwarded-for"]);
    }

    #[test]
    fn miscased_registered_methods() {
        for method in ["get", "gEt", "Get", "post", "Delete", "propfind", "Patch"] {
            assert!(is_miscased_method(method.as_bytes()), "{method}");
        }
        for method in [
            "GET", "POST", "PROPFIND", "FOO", "foo", "Custom", "M-SEARCH",
        ] {
            assert!(!is_miscased_method(method.as_bytes()), "{method}");
        }
    }

    /// Found by the `normalize` fuzz target: decoding `%32` after a stray `%` made a new
    /// escape, so the "normalized" path still had `%2e%2e` for an upstream to decode.
    #[test]
    fn a_percent_that_starts_no_escape_is_refused() {
        for (raw, offset) in [
            ("/%%32e%%32e/admin", 1),
            ("/%%32f..%%32fadmin", 1),
            ("/100%", 4),
            ("/a%2", 2),
            ("/a%zz", 2),
        ] {
            assert_eq!(
                normalize_path(raw),
                Err(NormalizeError::StrayPercent { offset }),
                "{raw}"
            );
        }
        assert_eq!(
            normalize_path("/a?100%").as_deref(),
            Ok("/a"),
            "query untouched"
        );
    }

    #[test]
    fn unusable_targets_are_errors() {
        assert_eq!(normalize_path(""), Err(NormalizeError::Empty));
        assert!(matches!(
            normalize_path("*"),
            Err(NormalizeError::NotOriginForm(_))
        ));
        assert!(matches!(
            normalize_path("http://a/b"),
            Err(NormalizeError::NotOriginForm(_))
        ));
        assert_eq!(
            normalize_path("/a b"),
            Err(NormalizeError::InvalidByte {
                byte: b' ',
                offset: 2
            })
        );
        assert!(normalize_path("/a\u{e9}").is_err());
        assert!(normalize_path("/a?b\r\n").is_err());
    }
}
