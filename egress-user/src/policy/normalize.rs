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
//! Other escapes are kept as written (`%ab` stays `%ab`). The query is kept for forwarding but
//! never matched; the fragment is dropped (Envoy refuses a `#` by default; design §5 strips it).
//! Bytes that cannot appear in an HTTP/1.1 request target (controls, space, non-ASCII) are
//! refused rather than re-escaped as Chromium would: the caller answers 400.

/// Why a request target cannot be normalized safely; the caller answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("empty request target")]
    Empty,
    #[error("request target must start with '/' (origin form), got {0:?}")]
    NotOriginForm(String),
    #[error("%00 is not allowed in a path")]
    EncodedNul,
    #[error("byte 0x{byte:02x} at offset {offset} is not allowed in a request target")]
    InvalidByte { byte: u8, offset: usize },
}

/// A normalized request target: the path to match and forward, and the query to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedTarget {
    /// Normalized; starts with `/`; no query, no fragment.
    pub path: String,
    /// What followed the first `?` (without it), untouched.
    pub query: Option<String>,
}

impl NormalizedTarget {
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
    })
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// One pass over the escapes: unreserved characters and slashes decoded, `%00` refused, the
/// rest kept verbatim; backslashes become slashes.
fn decode(path: &str) -> Result<String, NormalizeError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
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
