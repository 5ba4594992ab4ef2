//! The syntax of AuthorizationPolicy values: wildcards, principals, service accounts, trust
//! domains, paths and path templates, IPs, ports and `when` keys.
//!
//! Re-expressed from istio/istio `pkg/config/security/security.go` (`ValidateAttribute`,
//! `CheckEmptyValues`, `CheckWildcardValues`, `CheckServiceAccount`, `CheckTrustDomainValues`,
//! `CheckValidPathTemplate`, `ValidateIPs`, `ValidatePorts`) and
//! `pilot/pkg/security/authz/model/util.go` (`extractNameInBrackets`). Where egress refuses more,
//! the function says why.
use super::{ConditionKey, IpNet, error::Issues, names::parse_ip_net};

pub(crate) const JWT: &str = "JWT is not supported: egress has no RequestAuthentication, so \
     request principals can never be known";
pub(crate) const REMOTE_IP: &str =
    "is not supported (no proxy protocol / XFF trust): egress sees the peer address only";
const MAX_SERVICE_ACCOUNT_LEN: usize = 320;

/// The condition keys of `ValidateAttribute`, with egress' refusals.
pub(crate) fn condition_key(key: &str) -> Result<ConditionKey, String> {
    let simple = match key {
        "source.ip" => Some(ConditionKey::SourceIp),
        "source.namespace" => Some(ConditionKey::SourceNamespace),
        "source.principal" => Some(ConditionKey::SourcePrincipal),
        "source.serviceAccount" => Some(ConditionKey::SourceServiceAccount),
        "source.trustDomain" => Some(ConditionKey::SourceTrustDomain),
        "destination.ip" => Some(ConditionKey::DestinationIp),
        "destination.port" => Some(ConditionKey::DestinationPort),
        "connection.sni" => Some(ConditionKey::ConnectionSni),
        _ => None,
    };
    if let Some(simple) = simple {
        return Ok(simple);
    }
    if key.starts_with("request.headers") {
        let name = bracketed(key, "request.headers")?;
        return header_name(name).map(ConditionKey::RequestHeader);
    }
    if key.starts_with("request.auth.") {
        return Err(format!("{key}: {JWT}"));
    }
    if key == "remote.ip" {
        return Err(format!("remote.ip {REMOTE_IP}"));
    }
    if key.starts_with("experimental.envoy.filters.") {
        return Err(format!(
            "{key} is not supported: it matches Envoy filter metadata, which egress does not have"
        ));
    }
    Err(match key {
        "destination.namespace" => format!("attribute {key} is replaced by the metadata.namespace"),
        k if k.starts_with("destination.labels") => {
            format!("attribute {key} is replaced by the workload selector")
        }
        "destination.name" | "destination.user" => {
            format!("deprecated attribute {key}: only supported in v1alpha1")
        }
        _ => format!("unknown attribute: {key}"),
    })
}

/// `prefix[NAME]` -> `NAME` (`validateMapKey` and `extractNameInBrackets`).
fn bracketed<'a>(key: &'a str, prefix: &str) -> Result<&'a str, String> {
    key.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('['))
        .and_then(|rest| rest.strip_suffix(']'))
        .filter(|name| !name.is_empty())
        .ok_or_else(|| format!("bad key ({key}): should have format {prefix}[NAME]"))
}

/// A header name for `request.headers[...]`, lower-cased. Of the pseudo-headers only
/// `:authority` and `:method` are kept: `:path` in Envoy includes the query, which egress
/// never matches on, so a policy naming it would not mean what it says.
fn header_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(':') {
        return match lower.as_str() {
            ":authority" | ":method" => Ok(lower),
            _ => Err(format!(
                "request.headers[{name}] is not supported: use `paths`/`hosts`/`methods`, or \
                 :authority and :method"
            )),
        };
    }
    http::HeaderName::from_bytes(lower.as_bytes())
        .map(|_| lower.clone())
        .map_err(|_| format!("bad key (request.headers[{name}]): {name:?} is not a header name"))
}

/// Keeps the values that pass `check`, reporting the others at their paths.
pub(crate) fn checked(
    values: Vec<(String, String)>,
    check: impl Fn(&str) -> Result<(), String>,
    issues: &mut Issues,
) -> Vec<String> {
    values
        .into_iter()
        .filter_map(|(path, value)| {
            let result = if value.is_empty() {
                Err("empty value not allowed".to_owned())
            } else {
                check(&value)
            };
            match result {
                Ok(()) => Some(value),
                Err(message) => {
                    issues.at(&path, message);
                    None
                }
            }
        })
        .collect()
}

/// `*` alone, at the start or at the end, once (`CheckWildcardValues`). Istio applies this to
/// trust domains only; elsewhere Envoy would take a misplaced `*` literally (or, for
/// namespaces, as a regex glob), so egress refuses it everywhere rather than guess.
pub(crate) fn check_wildcard(value: &str) -> Result<(), String> {
    match value.matches('*').count() {
        0 => Ok(()),
        1 if value == "*" || value.starts_with('*') || value.ends_with('*') => Ok(()),
        1 => Err(format!(
            "wildcard is only allowed at the start or end, found {value:?}"
        )),
        _ => Err(format!("at most one wildcard is allowed, found {value:?}")),
    }
}

/// Principals are written without `spiffe://`: Istio prepends it, so a value that already has
/// it can never match. egress refuses it instead of keeping a rule that silently never fires.
pub(crate) fn check_principal(value: &str) -> Result<(), String> {
    check_wildcard(value)?;
    if value.starts_with("spiffe://") {
        return Err(format!(
            "write principals without the spiffe:// prefix (Istio adds it, so {value:?} would \
             never match)"
        ));
    }
    Ok(())
}

pub(crate) fn check_trust_domain(value: &str) -> Result<(), String> {
    check_wildcard(value)?;
    if value.contains('/') {
        return Err(format!(
            "trust domain must not contain '/', found {value:?}"
        ));
    }
    Ok(())
}

/// `serviceaccount` or `namespace/serviceaccount`, no wildcard (`CheckServiceAccount`).
pub(crate) fn check_service_account(value: &str) -> Result<(), String> {
    if value.contains('*') {
        return Err(format!("wildcard not allowed, found {value:?}"));
    }
    if value.len() > MAX_SERVICE_ACCOUNT_LEN {
        return Err(format!(
            "value cannot exceed {MAX_SERVICE_ACCOUNT_LEN} characters"
        ));
    }
    let format = "expected format 'serviceAccount' or 'namespace/serviceAccount'";
    match value.split_once('/') {
        Some((_, sa)) if sa.contains('/') => Err(format!("{format}, found {value:?}")),
        Some(("", _)) => Err(format!("{format}, found empty namespace {value:?}")),
        Some((_, "")) => Err(format!("{format}, found empty serviceAccount {value:?}")),
        _ => Ok(()),
    }
}

/// A path: `*` rules for plain paths, `{*}`/`{**}` rules for templates (`CheckValidPathTemplate`).
pub(crate) fn check_path(value: &str) -> Result<(), String> {
    let template = value.contains("{*}") || value.contains("{**}");
    let mut seen_any = false;
    for glob in value.trim_matches('/').split('/') {
        match glob {
            "{*}" | "{**}" if seen_any => {
                return Err(format!(
                    "invalid or unsupported path {value:?}: {{**}} is not the last operator"
                ));
            }
            "{*}" => continue,
            "{**}" => {
                seen_any = true;
                continue;
            }
            _ => {}
        }
        if glob.contains(['{', '}']) {
            return Err(format!(
                "invalid or unsupported path {value:?}: contains '{{' or '}}' beyond a \
                 supported path template"
            ));
        }
        if template && !is_template_literal(glob) {
            return Err(format!(
                "invalid or unsupported path {value:?}: contains segment {glob:?} with invalid \
                 string literal"
            ));
        }
    }
    if template {
        // Envoy's uri_template parser needs the leading '/'; Istio's check trims it first and
        // would pass a template Envoy then rejects.
        if !value.starts_with('/') {
            return Err(format!(
                "a path template must start with '/', found {value:?}"
            ));
        }
        Ok(())
    } else {
        check_wildcard(value)
    }
}

/// An RFC 3986 `pchar` literal (`IsValidLiteral`).
fn is_template_literal(glob: &str) -> bool {
    !glob.is_empty()
        && glob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b))
}

pub(crate) fn bad_ip(value: &str) -> String {
    if value.contains('/') {
        format!("bad CIDR range ({value})")
    } else {
        format!("bad IP address ({value})")
    }
}

pub(crate) fn ip_list(values: Vec<(String, String)>, issues: &mut Issues) -> Vec<IpNet> {
    values
        .into_iter()
        .filter_map(|(path, value)| match parse_ip_net(&value) {
            Ok(net) => Some(net),
            Err(_) => {
                issues.at(&path, bad_ip(&value));
                None
            }
        })
        .collect()
}

/// A port written as a string, as Istio writes them: decimal digits only. Istio accepts 0, which
/// can never match; egress refuses it as the typo it is.
pub(crate) fn parse_port(value: &str) -> Result<u16, String> {
    let bad = || format!("bad port ({value}): must be a number between 1 and 65535");
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match value.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(bad()),
    }
}

pub(crate) fn port_list(values: Vec<(String, String)>, issues: &mut Issues) -> Vec<u16> {
    values
        .into_iter()
        .filter_map(|(path, value)| match parse_port(&value) {
            Ok(port) => Some(port),
            Err(message) => {
                issues.at(&path, message);
                None
            }
        })
        .collect()
}
