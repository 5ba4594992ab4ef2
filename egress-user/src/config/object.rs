//! One parsed document -> a typed object, a skipped object, or errors: dispatch on
//! `apiVersion` + `kind`, and the `metadata` every object shares.
use super::{
    ConfigSet, Skipped, Source, authorization_policy, destination_rule,
    error::Issues,
    names::{is_k8s_label, is_k8s_subdomain},
    node::{Node, describe},
    service_entry, workload_identity,
};

/// Istio API groups whose kinds we know. A kind not listed under its group is a typo to report,
/// not a foreign object to skip.
struct IstioGroup {
    name: &'static str,
    versions: &'static [&'static str],
    kinds: &'static [&'static str],
}

const NETWORKING: IstioGroup = IstioGroup {
    name: "networking.istio.io",
    versions: &["v1", "v1beta1", "v1alpha3"],
    kinds: &[
        "DestinationRule",
        "EnvoyFilter",
        "Gateway",
        "ProxyConfig",
        "ServiceEntry",
        "Sidecar",
        "VirtualService",
        "WorkloadEntry",
        "WorkloadGroup",
    ],
};

const SECURITY: IstioGroup = IstioGroup {
    name: "security.istio.io",
    versions: &["v1", "v1beta1"],
    kinds: &[
        "AuthorizationPolicy",
        "PeerAuthentication",
        "RequestAuthentication",
    ],
};

/// Our own kinds (host mode), validated strictly.
const EGRESS: IstioGroup = IstioGroup {
    name: "egress.dev",
    versions: &["v1alpha1"],
    kinds: &["WorkloadIdentity"],
};

/// `metadata` as far as we use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Metadata {
    pub name: String,
    /// `default` when absent, as `kubectl apply` would place it without `-n`.
    pub namespace: String,
}

/// Adds what the document `root` holds to `set`; problems go to `issues`. `source` names the
/// document; field paths start under `root.path` (empty, or `items[3]` inside a `List`).
pub(crate) fn add_object(
    root: &Node<'_>,
    source: &Source,
    set: &mut ConfigSet,
    issues: &mut Issues,
) {
    if !root.value.is_object() {
        let what = describe(root.value);
        let message =
            format!("must be a Kubernetes object (a mapping with apiVersion and kind), got {what}");
        if root.path.is_empty() {
            issues.document(format!("document {message}"));
        } else {
            issues.at(&root.path, message);
        }
        return;
    }
    let api_version = required_str(root, "apiVersion", issues);
    let kind = required_str(root, "kind", issues);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return;
    };

    // `kubectl get -o yaml` output: a `v1 List` (or `ServiceEntryList`) of objects.
    if let Some(items) = list_items(root, api_version, kind) {
        for item in items.items(issues) {
            add_object(&item, source, set, issues);
        }
        return;
    }

    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let Some(istio) = [NETWORKING, SECURITY, EGRESS]
        .into_iter()
        .find(|g| g.name == group)
    else {
        // Istio's mesh config: the `istio` ConfigMap whose `data.mesh` holds MeshConfig YAML.
        if api_version == "v1"
            && kind == "ConfigMap"
            && root
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.value.as_str())
                == Some("istio")
            && let Some(mesh) = root.get("data").and_then(|d| d.get("mesh"))
        {
            if let Some(text) = mesh.str(issues) {
                set.mesh = super::mesh::parse(text, &mesh.path, source.clone(), issues);
            }
            return;
        }
        // Not an Istio object we act on (a Deployment, a Telemetry, ...): note it and go on.
        let name = root
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.value.as_str())
            .unwrap_or_default();
        set.skipped.push(skipped(source, api_version, kind, name));
        return;
    };

    let mut known = true;
    if !istio.versions.contains(&version) {
        issues.at(
            &root.key_path("apiVersion"),
            format!(
                "unknown version {version:?} for {group}; expected one of {}",
                istio.versions.join(", ")
            ),
        );
        known = false;
    }
    if !istio.kinds.contains(&kind) {
        issues.at(
            &root.key_path("kind"),
            format!(
                "unknown kind {kind:?} for {group}; expected one of {}",
                istio.kinds.join(", ")
            ),
        );
        known = false;
    }
    let metadata = parse_metadata(root, issues);
    let (Some(metadata), true) = (metadata, known) else {
        return;
    };

    match kind {
        "ServiceEntry" => {
            let before = issues.len();
            let entry = service_entry::parse(root, metadata, source.clone(), issues);
            if issues.len() == before {
                set.service_entries.push(entry);
            }
        }
        "AuthorizationPolicy" => {
            let before = issues.len();
            let policy = authorization_policy::parse(root, metadata, source.clone(), issues);
            if issues.len() == before {
                set.authorization_policies.push(policy);
            }
        }
        "WorkloadIdentity" => {
            let before = issues.len();
            let identity = workload_identity::parse(root, metadata, source.clone(), issues);
            if issues.len() == before {
                set.workload_identities.push(identity);
            }
        }
        "DestinationRule" => {
            let before = issues.len();
            let rule = destination_rule::parse(root, metadata, source.clone(), issues);
            if issues.len() == before {
                set.destination_rules.push(rule);
            }
        }
        _ => set
            .skipped
            .push(skipped(source, api_version, kind, &metadata.name)),
    }
}

fn skipped(source: &Source, api_version: &str, kind: &str, name: &str) -> Skipped {
    tracing::debug!(%source, api_version, kind, name, "skipping object");
    Skipped {
        source: source.clone(),
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
    }
}

fn required_str<'a>(node: &Node<'a>, key: &str, issues: &mut Issues) -> Option<&'a str> {
    match node.get(key) {
        None => {
            issues.at(&node.key_path(key), "is required");
            None
        }
        Some(value) => match value.str(issues)? {
            "" => {
                issues.at(&value.path, "is required");
                None
            }
            s => Some(s),
        },
    }
}

/// The `items` of a list object, when `kind` names one.
fn list_items<'a>(root: &Node<'a>, api_version: &str, kind: &str) -> Option<Node<'a>> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let is_list = (kind == "List" && api_version == "v1")
        || [NETWORKING, SECURITY].iter().any(|g| {
            g.name == group
                && kind
                    .strip_suffix("List")
                    .is_some_and(|k| g.kinds.contains(&k))
        });
    if !is_list {
        return None;
    }
    // A list without items is an empty list.
    Some(
        root.get("items")
            .unwrap_or_else(|| Node::new(&EMPTY_LIST, root.key_path("items"))),
    )
}

static EMPTY_LIST: serde_json::Value = serde_json::Value::Array(Vec::new());

fn parse_metadata(root: &Node<'_>, issues: &mut Issues) -> Option<Metadata> {
    let Some(metadata) = root.get("metadata") else {
        issues.at(&root.key_path("metadata"), "is required (with a name)");
        return None;
    };
    metadata.object(issues)?;
    let name = required_str(&metadata, "name", issues);
    if let Some(name) = name
        && !is_k8s_subdomain(name)
    {
        issues.at(
            &metadata.key_path("name"),
            format!(
                "must be a lower-case RFC 1123 subdomain (a-z, 0-9, '-' and '.', \
                 at most 253 characters), got {name:?}"
            ),
        );
    }
    let namespace = match metadata.get("namespace") {
        None => Some("default"),
        Some(node) => {
            let ns = node.str(issues);
            if let Some(ns) = ns
                && !is_k8s_label(ns)
            {
                issues.at(
                    &node.path,
                    format!(
                        "must be a lower-case RFC 1123 label (a-z, 0-9 and '-', \
                         at most 63 characters), got {ns:?}"
                    ),
                );
            }
            ns
        }
    };
    Some(Metadata {
        name: name?.to_owned(),
        namespace: namespace?.to_owned(),
    })
}
