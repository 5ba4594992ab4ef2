//! Which DestinationRule applies to a service, as Istio chooses: rules visible to the service's
//! namespace (`exportTo`), those of the service's own namespace first (in ambient the waypoint
//! of a ServiceEntry lives in its namespace, and Istio looks in the proxy's namespace first),
//! then the most specific host (exact, then the longest wildcard), then the oldest (file order).
//! Port-level TLS settings win over the rule's `tls` for their port.
use super::Service;
use crate::{
    config::{ClientTlsSettings, DestinationRule, TlsMode},
    tls::UpstreamTls,
};

/// The TLS each service's upstream connections use, indexed like `services`: `Err` with the
/// reason when the rule asks for TLS that cannot be set up (its Secret missing or invalid).
pub fn select_tls(
    services: &[Service],
    rules: &[DestinationRule],
) -> Vec<Option<Result<UpstreamTls, String>>> {
    services
        .iter()
        .map(|service| {
            let rule = service
                .hosts
                .iter()
                .find_map(|host| select_destination_rule(&service.namespace, host, rules))?;
            let settings = port_settings(rule, service.port)?;
            if settings.mode == TlsMode::Disable {
                return None;
            }
            let Some(client) = settings.client.clone() else {
                let reason = settings.unavailable.clone().unwrap_or_else(|| {
                    format!(
                        "DestinationRule {}/{}: no TLS client",
                        rule.namespace, rule.name
                    )
                });
                return Some(Err(reason));
            };
            // Without `sni`, the host the request is for: known here when the service has one
            // concrete host, else taken from the request's authority.
            let sni = settings
                .sni
                .clone()
                .or_else(|| match service.hosts.as_slice() {
                    [host] if !host.contains('*') => Some(host.clone()),
                    _ => None,
                });
            Some(Ok(UpstreamTls { client, sni }))
        })
        .collect()
}

/// The settings for `port`: its own, else the rule's.
fn port_settings(rule: &DestinationRule, port: u16) -> Option<&ClientTlsSettings> {
    rule.port_tls
        .iter()
        .find(|(number, _)| *number == port)
        .map(|(_, settings)| settings)
        .or(rule.tls.as_ref())
}

/// The DestinationRule for `host` of a ServiceEntry in `namespace`, if one applies.
pub fn select_destination_rule<'a>(
    namespace: &str,
    host: &str,
    rules: &'a [DestinationRule],
) -> Option<&'a DestinationRule> {
    rules
        .iter()
        .enumerate()
        .filter(|(_, rule)| visible(rule, namespace))
        .filter_map(|(order, rule)| {
            let specificity = host_match(&rule.host, host)?;
            let other_namespace = rule.namespace != namespace;
            Some((
                (other_namespace, std::cmp::Reverse(specificity), order),
                rule,
            ))
        })
        .min_by_key(|(key, _)| *key)
        .map(|(_, rule)| rule)
}

/// Whether `rule` is exported to `namespace`. No `exportTo` means everywhere.
fn visible(rule: &DestinationRule, namespace: &str) -> bool {
    rule.export_to.is_empty()
        || rule.export_to.iter().any(|entry| match entry.as_str() {
            "*" => true,
            "." => rule.namespace == namespace,
            "~" => false,
            ns => ns == namespace,
        })
}

/// How specifically `pattern` (a rule's host) matches `host` (a ServiceEntry host): `None` for
/// no match; an exact match beats any wildcard, a longer wildcard a shorter one.
fn host_match(pattern: &str, host: &str) -> Option<usize> {
    if pattern.eq_ignore_ascii_case(host) {
        return Some(usize::MAX);
    }
    let suffix = pattern.strip_prefix('*')?;
    let host = host.to_ascii_lowercase();
    // A wildcard ServiceEntry host matches a rule only as wide or wider.
    let concrete = host.strip_prefix('*').unwrap_or(&host);
    (concrete.ends_with(suffix) && concrete.len() > suffix.len() || suffix.is_empty())
        .then_some(suffix.len())
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::Source;

    fn rule(name: &str, namespace: &str, host: &str, export_to: &[&str]) -> DestinationRule {
        DestinationRule {
            source: Source::file("t.yaml", 1),
            name: name.into(),
            namespace: namespace.into(),
            host: host.into(),
            export_to: export_to.iter().map(|s| (*s).to_owned()).collect(),
            tls: None,
            port_tls: vec![],
        }
    }

    fn chosen<'a>(ns: &str, host: &str, rules: &'a [DestinationRule]) -> Option<&'a str> {
        select_destination_rule(ns, host, rules).map(|r| r.name.as_str())
    }

    #[test]
    fn own_namespace_then_most_specific_host_then_first() {
        let rules = [
            rule("wide", "default", "*.test", &[]),
            rule("other-ns-exact", "other", "httpbin.test", &[]),
            rule("exact", "default", "httpbin.test", &[]),
            rule("exact-later", "default", "httpbin.test", &[]),
        ];
        assert_eq!(chosen("default", "httpbin.test", &rules), Some("exact"));
        assert_eq!(chosen("default", "a.test", &rules), Some("wide"));
        // From another namespace, its own rule wins over the exported ones.
        assert_eq!(
            chosen("other", "httpbin.test", &rules),
            Some("other-ns-exact")
        );
        assert_eq!(chosen("default", "httpbin.org", &rules), None);
    }

    #[test]
    fn export_to_limits_who_sees_a_rule() {
        let rules = [
            rule("private", "other", "a.test", &["."]),
            rule("hidden", "other", "b.test", &["~"]),
            rule("to-default", "other", "c.test", &["default"]),
        ];
        assert_eq!(chosen("default", "a.test", &rules), None);
        assert_eq!(chosen("other", "a.test", &rules), Some("private"));
        assert_eq!(chosen("other", "b.test", &rules), None);
        assert_eq!(chosen("default", "c.test", &rules), Some("to-default"));
    }

    #[test]
    fn wildcards_match_by_suffix() {
        assert_eq!(host_match("*.example.com", "a.b.example.com"), Some(12));
        assert_eq!(host_match("*.example.com", "example.com"), None);
        assert_eq!(host_match("*", "anything.test"), Some(0));
        assert_eq!(host_match("*.com", "*.example.com"), Some(4));
        assert_eq!(host_match("HTTPBIN.test", "httpbin.TEST"), Some(usize::MAX));
    }
}
