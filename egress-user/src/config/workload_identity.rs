//! `egress.dev/v1alpha1` WorkloadIdentity: host mode's declarative cgroup -> identity mapping,
//! e.g. a systemd unit's cgroup to a namespace and service account. Our own kind, so unknown
//! fields are errors (a typo must not silently drop an identity).
//!
//! ```yaml
//! apiVersion: egress.dev/v1alpha1
//! kind: WorkloadIdentity
//! metadata: {name: billing}
//! spec:
//!   cgroup: system.slice/billing.service   # relative to the cgroup2 mount, or absolute
//!   namespace: payments
//!   serviceAccount: billing
//! ```
use std::path::{Component, PathBuf};

use super::{
    Source, WorkloadIdentity,
    error::Issues,
    names::{is_k8s_label, is_k8s_subdomain},
    node::Node,
    object::Metadata,
};

const FIELDS: [&str; 3] = ["cgroup", "namespace", "serviceAccount"];

pub(crate) fn parse(
    root: &Node<'_>,
    metadata: Metadata,
    source: Source,
    issues: &mut Issues,
) -> WorkloadIdentity {
    let mut identity = WorkloadIdentity {
        source,
        name: metadata.name,
        cgroup: PathBuf::new(),
        namespace: String::new(),
        service_account: String::new(),
    };
    let Some(spec) = root.get("spec") else {
        issues.at(&root.key_path("spec"), "is required");
        return identity;
    };
    let Some(fields) = spec.object(issues) else {
        return identity;
    };
    for key in fields.keys() {
        if !FIELDS.contains(&key.as_str()) {
            issues.at(
                &spec.key_path(key),
                format!("unknown field; expected one of {}", FIELDS.join(", ")),
            );
        }
    }
    let mut required = |key: &str| -> Option<(String, String)> {
        match spec.get(key) {
            None => {
                issues.at(&spec.key_path(key), "is required");
                None
            }
            Some(node) => node.str(issues).map(|s| (s.to_owned(), node.path.clone())),
        }
    };
    let cgroup = required("cgroup");
    let namespace = required("namespace");
    let service_account = required("serviceAccount");

    if let Some((cgroup, path)) = cgroup {
        let p = PathBuf::from(&cgroup);
        if cgroup.is_empty()
            || p.components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            issues.at(
                &path,
                format!("must be a cgroup path without '.' or '..' components, got {cgroup:?}"),
            );
        }
        identity.cgroup = p;
    }
    if let Some((ns, path)) = namespace {
        if !is_k8s_label(&ns) {
            issues.at(
                &path,
                format!("must be a lower-case RFC 1123 label, got {ns:?}"),
            );
        }
        identity.namespace = ns;
    }
    if let Some((sa, path)) = service_account {
        if !is_k8s_subdomain(&sa) {
            issues.at(
                &path,
                format!("must be a lower-case RFC 1123 subdomain, got {sa:?}"),
            );
        }
        identity.service_account = sa;
    }
    identity
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse_str;

    #[test]
    fn maps_a_systemd_unit() {
        let set = parse_str(
            Path::new("ids.yaml"),
            "apiVersion: egress.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: billing}
spec: {cgroup: system.slice/billing.service, namespace: payments, serviceAccount: billing}
",
        )
        .expect("valid");
        let id = &set.workload_identities[0];
        assert_eq!(id.cgroup, Path::new("system.slice/billing.service"));
        assert_eq!(
            (id.namespace.as_str(), id.service_account.as_str()),
            ("payments", "billing")
        );
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let errors = parse_str(
            Path::new("ids.yaml"),
            "apiVersion: egress.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: x}
spec: {cgroup: ../etc, namespace: Pay, serviceAcount: billing}
",
        )
        .expect_err("invalid")
        .to_string();
        assert!(
            errors.contains("ids.yaml:1:spec.serviceAcount: unknown field"),
            "{errors}"
        );
        assert!(
            errors.contains("ids.yaml:1:spec.serviceAccount: is required"),
            "{errors}"
        );
        assert!(
            errors.contains("ids.yaml:1:spec.cgroup: must be a cgroup path"),
            "{errors}"
        );
        assert!(
            errors.contains("ids.yaml:1:spec.namespace: must be"),
            "{errors}"
        );
    }
}
