//! Syntax of the names Istio and Kubernetes accept: DNS labels, hosts, label keys, IP addresses.
//!
//! Istio's rules are re-expressed from istio/istio `pkg/config/validation/agent/validation.go`
//! (`ValidateFQDN`, `ValidateWildcardDomain`, `ValidatePartialWildCard`, `ValidateIPSubnet`)
//! and `pkg/config/labels/instance.go` (`IsDNS1123Label`, `IsWildcardDNS1123Label`,
//! `Instance.Validate`). Kubernetes object names follow apimachinery's `IsDNS1123Subdomain`.
use std::net::IpAddr;

use super::IpNet;

const DNS1123_LABEL_MAX: usize = 63;

/// Istio's DNS-1123 label: `[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?`, at most 63 bytes. Istio
/// accepts upper case here (port names, hosts); Kubernetes object names do not.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS1123_LABEL_MAX
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
}

/// Kubernetes' DNS-1123 label (namespaces): as [`is_dns1123_label`], lower case only.
pub(crate) fn is_k8s_label(s: &str) -> bool {
    is_dns1123_label(s) && !s.bytes().any(|c| c.is_ascii_uppercase())
}

/// Kubernetes' DNS-1123 subdomain (most object names): lower-case labels joined by dots, at most
/// 253 bytes.
pub(crate) fn is_k8s_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_k8s_label)
}

fn check_domain_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

/// Istio's `ValidateDNS1123Labels`: dot-separated DNS-1123 labels, the top-level one not all
/// digits, a trailing dot allowed.
fn check_dns1123_labels(domain: &str) -> Result<(), String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let top = labels[labels.len() - 1];
    if !top.is_empty() && top.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {top:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        if i == labels.len() - 1 && label.is_empty() {
            break;
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// A fully-qualified domain name (no wildcard). Like Istio, a single label (`foo`) passes.
pub(crate) fn check_fqdn(name: &str) -> Result<(), String> {
    check_domain_preconditions(name)?;
    check_dns1123_labels(name)
}

/// Istio's wildcard label: `*`, or a DNS-1123 label optionally prefixed by `*` or `*-`.
fn is_wildcard_label(label: &str) -> bool {
    if label == "*" {
        return true;
    }
    let rest = label
        .strip_prefix("*-")
        .or_else(|| label.strip_prefix('*'))
        .unwrap_or(label);
    label.len() <= DNS1123_LABEL_MAX && is_dns1123_label(rest)
}

/// A host that may carry a wildcard in its first label (`*.example.com`).
pub(crate) fn check_wildcard_domain(name: &str) -> Result<(), String> {
    check_domain_preconditions(name)?;
    let (first, rest) = match name.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    if !is_wildcard_label(first) {
        return Err(format!(
            "domain name {name:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(rest) => check_dns1123_labels(rest),
        None => Ok(()),
    }
}

/// A wildcard other than a whole `*.` first label (`*foo.example.com`). Istio only warns about
/// these; we match hosts on `*.` prefixes only, so callers reject them.
pub(crate) fn is_partial_wildcard(host: &str) -> bool {
    host.contains('*') && host.len() != 1 && !host.starts_with("*.")
}

/// An IP address, or a CIDR block when the text has exactly one `/` (Istio's
/// `ValidateIPSubnet`). Host bits of a CIDR are cleared so that equal networks compare equal.
pub(crate) fn parse_ip_net(s: &str) -> Result<IpNet, String> {
    if s.matches('/').count() != 1 {
        return s
            .parse::<IpAddr>()
            .map(|addr| IpNet {
                addr,
                prefix_len: full_prefix(addr),
            })
            .map_err(|_| format!("{s:?} is not a valid IP"));
    }
    let bad = || format!("{s:?} is not a valid CIDR block");
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    // Like Go's netip.ParsePrefix: decimal digits, no sign, no leading zero.
    if len.is_empty()
        || !len.bytes().all(|c| c.is_ascii_digit())
        || (len.len() > 1 && len.starts_with('0'))
    {
        return Err(bad());
    }
    let prefix_len: u8 = len.parse().map_err(|_| bad())?;
    if prefix_len > full_prefix(addr) {
        return Err(bad());
    }
    Ok(IpNet {
        addr: mask(addr, prefix_len),
        prefix_len,
    })
}

fn full_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a)
                & u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
            IpAddr::V4(bits.into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a)
                & u128::MAX
                    .checked_shl(128 - u32::from(prefix_len))
                    .unwrap_or(0);
            IpAddr::V6(bits.into())
        }
    }
}

/// A Kubernetes qualified name: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label key: an optional DNS prefix (at most 253 bytes) and `/`, then a qualified name of at
/// most 63 bytes (`labels.Instance.Validate`).
pub(crate) fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns1123_label));
    if !prefix_ok || !is_qualified_name(name) {
        return Err(format!("invalid label key {key:?}"));
    }
    if name.len() > DNS1123_LABEL_MAX {
        return Err(format!("invalid label key {key:?} (name is too long)"));
    }
    Ok(())
}

/// A label value: empty, or a qualified name of at most 63 bytes.
pub(crate) fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= DNS1123_LABEL_MAX && is_qualified_name(value)) {
        Ok(())
    } else {
        Err(format!("invalid label value {value:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Cases from istio/istio pkg/config/validation/agent/validation_test.go
    // (TestValidateFQDN, TestValidateWildcardDomain) and labels/instance_test.go.
    #[test]
    fn wildcard_domains() {
        let cases = [
            ("istio.io", true),
            ("*.istio.io", true),
            ("*", true),
            ("*-foo.istio.io", true),
            ("*foo.istio.io", true),
            ("foo", true),
            ("istio.io.", true),
            ("", false),
            ("-", false),
            ("foo.*.istio.io", false),
            ("*..istio.io", false),
            ("istio.123", false),
            ("a_b.istio.io", false),
            (&"a".repeat(256), false),
            (&format!("{}.io", "a".repeat(64)), false),
        ];
        for (host, ok) in cases {
            assert_eq!(check_wildcard_domain(host).is_ok(), ok, "{host:?}");
        }
    }

    #[test]
    fn fqdns_have_no_wildcard() {
        for (host, ok) in [
            ("httpbin.org", true),
            ("foo", true),
            ("*.httpbin.org", false),
        ] {
            assert_eq!(check_fqdn(host).is_ok(), ok, "{host:?}");
        }
    }

    #[test]
    fn partial_wildcards() {
        for (host, partial) in [
            ("*", false),
            ("*.a.com", false),
            ("a.com", false),
            ("*a.com", true),
            ("a.*.com", true),
        ] {
            assert_eq!(is_partial_wildcard(host), partial, "{host:?}");
        }
    }

    #[test]
    fn ip_and_cidr() {
        let cases: [(&str, Option<&str>); 11] = [
            ("1.2.3.4", Some("1.2.3.4")),
            ("10.0.0.1/8", Some("10.0.0.0/8")),
            ("0.0.0.0/0", Some("0.0.0.0/0")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("2001:db8::1/32", Some("2001:db8::/32")),
            ("1.2.3.4/32", Some("1.2.3.4")),
            ("1.2.3.4/33", None),
            ("1.2.3.4/08", None),
            ("1.2.3/24", None),
            ("1.2.3.4/24/1", None),
            ("httpbin.org", None),
        ];
        for (text, want) in cases {
            let got = parse_ip_net(text).ok().map(|net| net.to_string());
            assert_eq!(got.as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn kubernetes_names() {
        assert!(is_k8s_subdomain("httpbin-ext.v1"));
        assert!(!is_k8s_subdomain("Httpbin"));
        assert!(!is_k8s_subdomain(""));
        assert!(is_k8s_label("default"));
        assert!(!is_k8s_label("a.b"));
        assert!(is_dns1123_label("HTTP-web"));
        assert!(!is_dns1123_label("http_web"));
    }

    #[test]
    fn labels() {
        for (key, ok) in [
            ("app", true),
            ("app.kubernetes.io/name", true),
            ("security.istio.io/tlsMode", true),
            ("", false),
            ("/app", false),
            ("a b", false),
        ] {
            assert_eq!(check_label_key(key).is_ok(), ok, "{key:?}");
        }
        for (value, ok) in [("", true), ("v1.2_3", true), ("-x", false), ("a b", false)] {
            assert_eq!(check_label_value(value).is_ok(), ok, "{value:?}");
        }
    }
}
