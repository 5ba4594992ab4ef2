//! `networking.istio.io` DestinationRule -> [`DestinationRule`]: the TLS the waypoint originates
//! towards a host's endpoints.
//!
//! Re-expressed from istio/api `networking/v1alpha3/destination_rule.proto` (`ClientTLSSettings`,
//! `TrafficPolicy.portLevelSettings`) and istio/istio `pkg/config/validation/validation.go`
//! (`ValidateDestinationRule`, `validateTLS`, `validateExportTo`). Certificates, keys, CA bundles
//! and CRLs are read and checked here, at load, so a bad file is an error naming its field and
//! path, and a reload with one keeps the previous configuration.
//!
//! What egress refuses rather than ignores, because the upstream would silently not get the TLS
//! the user asked for: `ISTIO_MUTUAL` (no mesh CA in host mode), `credentialName` (no Kubernetes
//! secrets in host mode), `workloadSelector` (a waypoint has no workloads), URI
//! `subjectAltNames` (rustls checks DNS and IP names). Other traffic-policy fields (load
//! balancing, connection pools, outlier detection) and `subsets` (used only by VirtualService
//! routes, which egress has not) are accepted and not acted on.
use std::path::PathBuf;

use super::{
    ClientTlsSettings, DestinationRule, Source, TlsMode,
    error::Issues,
    names::{check_wildcard_domain, is_dns1123_label},
    node::Node,
    object::Metadata,
};
use crate::tls::TlsClient;

const TLS_FIELDS: [&str; 9] = [
    "mode",
    "clientCertificate",
    "privateKey",
    "caCertificates",
    "credentialName",
    "subjectAltNames",
    "sni",
    "insecureSkipVerify",
    "caCrl",
];

/// Parses and validates the DestinationRule in `root`. Problems go to `issues`; the returned
/// value is only meaningful when none were added.
pub(crate) fn parse(
    root: &Node<'_>,
    metadata: Metadata,
    source: Source,
    issues: &mut Issues,
) -> DestinationRule {
    let mut rule = DestinationRule {
        source,
        name: metadata.name,
        namespace: metadata.namespace,
        host: String::new(),
        export_to: Vec::new(),
        tls: None,
        port_tls: Vec::new(),
    };
    let Some(spec) = root.get("spec") else {
        issues.at(&root.key_path("spec"), "is required");
        return rule;
    };
    if spec.object(issues).is_none() {
        return rule;
    }
    match spec.get("host") {
        None => issues.at(&spec.key_path("host"), "host is required"),
        Some(node) => {
            if let Some(host) = node.str(issues) {
                if let Err(message) = check_wildcard_domain(host) {
                    issues.at(&node.path, message);
                }
                rule.host = host.to_ascii_lowercase();
            }
        }
    }
    if let Some(selector) = spec.get("workloadSelector") {
        issues.at(
            &selector.path,
            "is not supported: a waypoint has no workloads to select; a DestinationRule \
             applies to the host's traffic through the waypoint",
        );
    }
    if let Some(node) = spec.get("exportTo") {
        rule.export_to = export_to(&node, issues);
    }
    if let Some(policy) = spec.get("trafficPolicy") {
        if policy.object(issues).is_none() {
            return rule;
        }
        let kubernetes = matches!(rule.source, Source::Object(_));
        if let Some(tls) = policy.get("tls") {
            rule.tls = client_tls(&tls, kubernetes, issues);
        }
        if let Some(ports) = policy.get("portLevelSettings") {
            for item in ports.items(issues) {
                if item.object(issues).is_none() {
                    continue;
                }
                let number = match item.get("port").and_then(|p| p.get("number")) {
                    None => {
                        issues.at(
                            &item.key_path("port"),
                            "port.number is required in portLevelSettings",
                        );
                        None
                    }
                    Some(node) => node.port(issues),
                };
                if let Some(number) = number
                    && rule.port_tls.iter().any(|(n, _)| *n == number)
                {
                    issues.at(
                        &item.key_path("port"),
                        format!("port {number} has settings already"),
                    );
                    continue;
                }
                let tls = item
                    .get("tls")
                    .and_then(|tls| client_tls(&tls, kubernetes, issues));
                if let (Some(number), Some(tls)) = (number, tls) {
                    rule.port_tls.push((number, tls));
                }
            }
        }
    }
    rule
}

/// `ClientTLSSettings`, with its files read and its client configuration built. Objects of the
/// Kubernetes API (`kubernetes`) may name a Secret (`credentialName`) instead of files; its
/// configuration is built when the Secret is read.
fn client_tls(node: &Node<'_>, kubernetes: bool, issues: &mut Issues) -> Option<ClientTlsSettings> {
    let map = node.object(issues)?;
    let before = issues.len();
    for key in map.keys() {
        if !TLS_FIELDS.contains(&key.as_str()) {
            issues.at(
                &node.key_path(key),
                format!(
                    "unknown field: egress will not ignore a TLS setting it does not \
                     understand; expected one of {}",
                    TLS_FIELDS.join(", ")
                ),
            );
        }
    }
    let mut settings = ClientTlsSettings::default();
    if let Some(mode) = node.get("mode") {
        settings.mode = match mode.str(issues)? {
            "DISABLE" => TlsMode::Disable,
            "SIMPLE" => TlsMode::Simple,
            "MUTUAL" => TlsMode::Mutual,
            "ISTIO_MUTUAL" => {
                issues.at(
                    &mode.path,
                    "ISTIO_MUTUAL is not supported: egress has no mesh certificate authority in \
                     host mode; use MUTUAL with clientCertificate, privateKey and caCertificates",
                );
                return None;
            }
            other => {
                issues.at(
                    &mode.path,
                    format!(
                        "unknown TLS mode {other:?}; expected DISABLE, SIMPLE, MUTUAL \
                         or ISTIO_MUTUAL"
                    ),
                );
                return None;
            }
        };
    }
    if let Some(credential) = node.get("credentialName") {
        if !kubernetes {
            issues.at(
                &credential.path,
                "credentialName is not supported in host mode (there are no Kubernetes secrets to \
                 read); give clientCertificate, privateKey and caCertificates as file paths",
            );
        } else if let Some(name) = credential.str(issues)
            && !name.is_empty()
        {
            if !super::names::is_k8s_subdomain(name) {
                issues.at(
                    &credential.path,
                    format!("must name a Secret (a lower-case RFC 1123 subdomain), got {name:?}"),
                );
            }
            // As Istio validates it: the Secret replaces every file setting.
            for key in ["clientCertificate", "privateKey", "caCertificates", "caCrl"] {
                if node.get(key).is_some() {
                    issues.at(
                        &node.key_path(key),
                        format!("{key} cannot be set together with credentialName"),
                    );
                }
            }
            settings.credential_name = Some(name.to_owned());
        }
    }
    let path = |key: &str, issues: &mut Issues| -> Option<PathBuf> {
        let field = node.get(key)?;
        match field.str(issues)? {
            "" => None,
            text => Some(PathBuf::from(text)),
        }
    };
    settings.client_certificate = path("clientCertificate", issues);
    settings.private_key = path("privateKey", issues);
    settings.ca_certificates = path("caCertificates", issues);
    settings.ca_crl = path("caCrl", issues);
    if let Some(sni) = node.get("sni")
        && let Some(text) = sni.str(issues)
        && !text.is_empty()
    {
        if rustls::pki_types::ServerName::try_from(text).is_err() {
            issues.at(&sni.path, format!("{text:?} is not a valid server name"));
        }
        settings.sni = Some(text.to_owned());
    }
    if let Some(sans) = node.get("subjectAltNames") {
        for (path, san) in sans.strings(issues) {
            if san.contains("://") {
                issues.at(
                    &path,
                    format!(
                        "URI subject alt name {san:?} is not supported: egress checks DNS \
                         names and IP addresses"
                    ),
                );
            } else if rustls::pki_types::ServerName::try_from(san).is_err() {
                issues.at(&path, format!("{san:?} is not a DNS name or IP address"));
            } else {
                settings.subject_alt_names.push(san.to_owned());
            }
        }
    }
    if let Some(insecure) = node.get("insecureSkipVerify") {
        match insecure.value.as_bool() {
            Some(value) => settings.insecure_skip_verify = value,
            None => issues.at(&insecure.path, "must be a boolean"),
        }
    }
    if settings.mode == TlsMode::Mutual && settings.credential_name.is_none() {
        for (key, value) in [
            ("clientCertificate", &settings.client_certificate),
            ("privateKey", &settings.private_key),
        ] {
            if value.is_none() {
                issues.at(
                    &node.key_path(key),
                    format!("{key} is required for mode MUTUAL"),
                );
            }
        }
    } else if settings.mode == TlsMode::Simple {
        for key in ["clientCertificate", "privateKey"] {
            if node.get(key).is_some() {
                issues.at(
                    &node.key_path(key),
                    format!("{key} should not be set for mode SIMPLE; use MUTUAL"),
                );
            }
        }
    }
    if issues.len() != before {
        return None;
    }
    if settings.mode != TlsMode::Disable && settings.credential_name.is_none() {
        match TlsClient::build(&settings) {
            Ok(client) => settings.client = Some(client),
            Err(error) => {
                let field = error
                    .field()
                    .map_or_else(|| node.path.clone(), |f| node.key_path(f));
                issues.at(&field, error.to_string());
                return None;
            }
        }
    }
    Some(settings)
}

/// `exportTo`: `.`, `*`, `~` or namespace names.
fn export_to(node: &Node<'_>, issues: &mut Issues) -> Vec<String> {
    let mut out = Vec::new();
    for (path, entry) in node.strings(issues) {
        if matches!(entry, "." | "*" | "~") || is_dns1123_label(entry) {
            out.push(entry.to_owned());
        } else {
            issues.at(
                &path,
                format!(
                    "only ., *, ~ or a namespace name is allowed as an exportTo entry, \
                     got {entry:?}"
                ),
            );
        }
    }
    out
}

#[cfg(test)]
#[path = "destination_rule_tests.rs"]
mod tests;
