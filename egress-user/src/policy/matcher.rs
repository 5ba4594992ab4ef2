//! Matching one value: Istio's string forms (exact, `prefix*`, `*suffix`, `*`), hosts, paths
//! and `{*}`/`{**}` path templates.
//!
//! Re-expressed from istio/istio `pilot/pkg/security/authz/matcher/{string,header,template}.go`
//! (which value form becomes which Envoy matcher) and Envoy's
//! `source/extensions/path/uri_template_lib/uri_template_internal.cc` (what a template matches).

/// An Istio string value (`StringMatcherWithPrefix`, `HeaderMatcher`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StrMatch {
    Exact(String),
    /// `abc*`: also matches `abc` itself.
    Prefix(String),
    /// `*abc`: also matches `abc` itself.
    Suffix(String),
    /// `*`: the value is present and not empty.
    Presence,
}

impl StrMatch {
    /// `*` first, so that `*` never becomes an empty prefix or suffix (as Istio checks it).
    pub(crate) fn parse(value: &str) -> Self {
        if value == "*" {
            StrMatch::Presence
        } else if let Some(suffix) = value.strip_prefix('*') {
            StrMatch::Suffix(suffix.to_owned())
        } else if let Some(prefix) = value.strip_suffix('*') {
            StrMatch::Prefix(prefix.to_owned())
        } else {
            StrMatch::Exact(value.to_owned())
        }
    }

    /// Case-sensitive, as Envoy's `StringMatcher` without `ignore_case`.
    pub(crate) fn matches(&self, value: &[u8]) -> bool {
        match self {
            StrMatch::Exact(exact) => value == exact.as_bytes(),
            StrMatch::Prefix(prefix) => value.starts_with(prefix.as_bytes()),
            StrMatch::Suffix(suffix) => value.ends_with(suffix.as_bytes()),
            StrMatch::Presence => !value.is_empty(),
        }
    }

    /// ASCII case-insensitive (`ignore_case: true`).
    pub(crate) fn matches_ignore_case(&self, value: &[u8]) -> bool {
        match self {
            StrMatch::Exact(exact) => value.eq_ignore_ascii_case(exact.as_bytes()),
            StrMatch::Prefix(prefix) => value
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes())),
            StrMatch::Suffix(suffix) => value
                .len()
                .checked_sub(suffix.len())
                .is_some_and(|at| value[at..].eq_ignore_ascii_case(suffix.as_bytes())),
            StrMatch::Presence => !value.is_empty(),
        }
    }

    /// A header value (`HeaderMatcher`): `*` is Envoy's `present_match`, true for a header that
    /// is present even with an empty value; an absent header matches nothing.
    pub(crate) fn matches_header(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (_, None) => false,
            (StrMatch::Presence, Some(_)) => true,
            (m, Some(v)) => m.matches(v),
        }
    }

    /// A host (`HostMatcher`): case-insensitive against `:authority`.
    ///
    /// egress also tries the authority without its port and trailing dot, so `example.com`
    /// matches `Example.COM:80` and `example.com.`. Istio matches the exact string only and
    /// tells users to write `["example.com", "example.com:*"]` (best practices, "Writing Host
    /// Match Policies"); that pair still works here. The difference makes a DENY of
    /// `example.com` hold whatever port or dot the client adds, and lets an ALLOW of
    /// `example.com` admit the same host with its port — the request goes to the same
    /// ServiceEntry either way.
    pub(crate) fn matches_host(&self, authority: &str) -> bool {
        if authority.is_empty() {
            return false;
        }
        if self.matches_ignore_case(authority.as_bytes()) {
            return true;
        }
        let bare = bare_host(authority);
        bare.len() != authority.len() && self.matches_ignore_case(bare.as_bytes())
    }
}

/// `authority` without `:port` and a trailing dot: `[::1]:80` -> `[::1]`, `a.b.:8080` -> `a.b`.
pub(crate) fn bare_host(authority: &str) -> &str {
    let host = if authority.starts_with('[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(host, _)| host)
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// A `paths` value: an Istio string form, or a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathMatch {
    Str(StrMatch),
    Template(Template),
}

impl PathMatch {
    /// `Err` for a template Envoy would refuse (Istio's generator error).
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        if value.contains("{*}") || value.contains("{**}") {
            Template::parse(value).map(PathMatch::Template)
        } else {
            Ok(PathMatch::Str(StrMatch::parse(value)))
        }
    }

    /// `path` is normalized and has no query (Envoy's `UrlPath` matcher removes it).
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(m) => m.matches(path.as_bytes()),
            PathMatch::Template(t) => t.matches(path),
        }
    }
}

/// An Envoy URI template as Istio writes it: `{*}` is one non-empty path segment, `{**}` zero or
/// more characters including `/` (so `/a/{**}` matches `/a/` but not `/a`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `{*}`: one or more segment characters.
    Segment,
    /// `{**}`: zero or more segment characters or `/`.
    Rest,
}

/// The characters Envoy's globs match (`kLiteral`: unreserved, `%`, sub-delims except `*` and
/// `=`, `:` and `@`).
fn is_glob_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@".contains(&b)
}

impl Template {
    fn parse(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("path template {pattern:?} must start with '/'"));
        }
        let mut tokens: Vec<Token> = Vec::new();
        let literal = |tokens: &mut Vec<Token>, text: &str| match tokens.last_mut() {
            Some(Token::Literal(last)) => last.push_str(text),
            _ => tokens.push(Token::Literal(text.to_owned())),
        };
        let mut seen_rest = false;
        for (i, segment) in pattern.split('/').enumerate() {
            if i > 0 {
                literal(&mut tokens, "/");
            }
            match segment {
                "{*}" | "{**}" if seen_rest => {
                    return Err(format!("{pattern:?}: {{**}} must be the last operator"));
                }
                "{*}" => tokens.push(Token::Segment),
                "{**}" => {
                    seen_rest = true;
                    tokens.push(Token::Rest);
                }
                text if text.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "{pattern:?}: segment {text:?} mixes an operator with other characters"
                    ));
                }
                text => literal(&mut tokens, text),
            }
        }
        Ok(Template { tokens })
    }

    fn matches(&self, path: &str) -> bool {
        match_tokens(&self.tokens, path.as_bytes())
    }
}

/// A full match of `tokens` against `s`. Globs are whole segments, so the next literal starts
/// with `/` and backtracking stays shallow.
fn match_tokens(tokens: &[Token], s: &[u8]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return s.is_empty();
    };
    match first {
        Token::Literal(text) => s
            .strip_prefix(text.as_bytes())
            .is_some_and(|tail| match_tokens(rest, tail)),
        Token::Segment => {
            let max = s.iter().take_while(|&&b| is_glob_char(b)).count();
            (1..=max).rev().any(|n| match_tokens(rest, &s[n..]))
        }
        Token::Rest => {
            let max = s
                .iter()
                .take_while(|&&b| b == b'/' || is_glob_char(b))
                .count();
            (0..=max).rev().any(|n| match_tokens(rest, &s[n..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // istio/ztunnel src/rbac.rs `string_match` cases (exact, prefix, suffix, presence, each
    // against a match, a mismatch and the empty string).
    #[test]
    fn string_forms_like_ztunnel() {
        let cases = [
            ("foo", "foo", true),
            ("foo", "not", false),
            ("foo", "", false),
            ("foo*", "foobar", true),
            ("foo*", "notfoo", false),
            ("foo*", "", false),
            ("*foo", "barfoo", true),
            ("*foo", "foonot", false),
            ("*foo", "", false),
            ("*", "foo", true),
            ("*", "", false),
            // Istio: `abc*` and `*abc` match `abc` itself (authorization_policy.proto, Rule).
            ("abc*", "abc", true),
            ("*abc", "abc", true),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(
                StrMatch::parse(pattern).matches(value.as_bytes()),
                want,
                "{pattern} vs {value:?}"
            );
        }
    }

    // Hosts: case-insensitive (authorization_policy.proto, Operation.hosts); egress also strips
    // port and trailing dot; Istio's recommended `host:*` form still matches.
    #[test]
    fn hosts() {
        let cases = [
            ("httpbin.org", "httpbin.org", true),
            ("httpbin.org", "HTTPBIN.org", true),
            ("httpbin.org", "httpbin.org:80", true),
            ("httpbin.org", "httpbin.org.", true),
            ("httpbin.org", "httpbin.org.:8080", true),
            ("httpbin.org:*", "httpbin.org:80", true),
            ("*.example.com", "API.Example.com:443", true),
            ("prefix.*", "prefix.example.com", true),
            ("httpbin.org", "evil.org", false),
            ("httpbin.org", "httpbin.org.evil", false),
            ("*", "", false),
            ("*", "x", true),
            ("[::1]", "[::1]:80", true),
        ];
        for (pattern, host, want) in cases {
            assert_eq!(
                StrMatch::parse(pattern).matches_host(host),
                want,
                "{pattern} vs {host}"
            );
        }
    }

    // Envoy HeaderMatcher: `*` is present_match (true for an empty value), absent matches nothing.
    #[test]
    fn headers() {
        assert!(StrMatch::parse("*").matches_header(Some(b"")));
        assert!(!StrMatch::parse("*").matches_header(None));
        assert!(!StrMatch::parse("admin").matches_header(None));
        assert!(StrMatch::parse("adm*").matches_header(Some(b"admin")));
        // Values are case-sensitive.
        assert!(!StrMatch::parse("admin").matches_header(Some(b"Admin")));
    }

    // istio/istio tests/integration/security/authz_test.go TestAuthz_PathTemplating, against
    // the raw paths of the test (Istio's default normalization does not merge slashes).
    #[test]
    fn path_templates_like_istio() {
        let patterns = ["/allow/admin/{**}", "/foo/{*}/bar/{**}", "/store/{**}/cart"];
        let matchers: Vec<_> = patterns
            .iter()
            .map(|p| PathMatch::parse(p).expect(p))
            .collect();
        let cases = [
            ("/allow/admin/", true),
            // `{**}` last: the path needs the trailing `/`.
            ("/allow/admin", false),
            ("/allow/user/", false),
            ("/allow", false),
            ("/allow/admin/temp", true),
            ("/allow/admin/temp.txt", true),
            ("/allow/admin/foo/temp.txt", true),
            ("/foo/buzz/bar/bat.txt", true),
            ("/foo/buzz/bar/bat.temp.txt", true),
            ("/foo/buzz/bar/bat/fuzz.txt", true),
            ("/foo/bar/bat.txt", false),
            ("/foo//bar/bat.txt", false),
            ("/foo/buzz/bar/bat", true),
            ("/store//cart", true),
            ("/store/cart", false),
            ("/store/foo/cart", true),
            ("/store/foo/bar/cart", true),
        ];
        for (path, want) in cases {
            assert_eq!(matchers.iter().any(|m| m.matches(path)), want, "{path}");
        }
    }

    // Envoy's glob class excludes `=`; `{*}` never spans a `/`.
    #[test]
    fn template_characters() {
        let one = PathMatch::parse("/a/{*}").expect("template");
        assert!(one.matches("/a/b~c%20d"));
        assert!(!one.matches("/a/b=c"));
        assert!(!one.matches("/a/b/c"));
        assert!(!one.matches("/a/"));
        assert!(PathMatch::parse("a/{*}").is_err());
        assert!(PathMatch::parse("/{**}/{*}").is_err());
    }
}
