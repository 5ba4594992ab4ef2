//! Istio's custom resources as Rust types (`#[derive(CustomResource)]`): the CRDs `egress crds`
//! prints for clusters without Istio, and the API resources the agent watches.
//!
//! Names, groups, versions, kinds, short names and categories follow Istio's own CRDs, so Istio
//! YAML applies unchanged and Istio's CRDs can replace these. `spec` and `status` are kept as
//! JSON (`x-kubernetes-preserve-unknown-fields`): the agent validates each object itself with
//! the parser files use, so one bad object is reported and skipped and never breaks a list, and
//! no CEL is needed (Kubernetes 1.20 has none).
use std::borrow::Cow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, core::crd::merge_crds};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A `spec` or `status` as the API server holds it: any JSON object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Opaque(pub serde_json::Value);

impl JsonSchema for Opaque {
    fn schema_name() -> Cow<'static, str> {
        "Opaque".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

/// One served version of an Istio kind: a module holding its `Spec` and the derived root type.
macro_rules! istio_version {
    ($module:ident, $group:literal, $version:literal, $kind:literal, $plural:literal,
     [$($short:literal),*], [$($category:literal),*]) => {
        pub mod $module {
            use super::Opaque;
            use kube::CustomResource;
            use schemars::JsonSchema;
            use serde::{Deserialize, Serialize};

            #[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
            #[kube(
                group = $group,
                version = $version,
                kind = $kind,
                plural = $plural,
                namespaced,
                status = "Opaque",
                $(shortname = $short,)*
                $(category = $category,)*
                crates(
                    kube_core = "::kube::core",
                    k8s_openapi = "::k8s_openapi",
                    schemars = "::schemars",
                    serde = "::serde",
                    serde_json = "::serde_json"
                )
            )]
            pub struct Spec(pub Opaque);
        }
    };
}

istio_version!(
    service_entry_v1,
    "networking.istio.io",
    "v1",
    "ServiceEntry",
    "serviceentries",
    ["se"],
    ["istio-io", "networking-istio-io"]
);
istio_version!(
    service_entry_v1beta1,
    "networking.istio.io",
    "v1beta1",
    "ServiceEntry",
    "serviceentries",
    ["se"],
    ["istio-io", "networking-istio-io"]
);
istio_version!(
    service_entry_v1alpha3,
    "networking.istio.io",
    "v1alpha3",
    "ServiceEntry",
    "serviceentries",
    ["se"],
    ["istio-io", "networking-istio-io"]
);
istio_version!(
    destination_rule_v1,
    "networking.istio.io",
    "v1",
    "DestinationRule",
    "destinationrules",
    ["dr"],
    ["istio-io", "networking-istio-io"]
);
istio_version!(
    destination_rule_v1beta1,
    "networking.istio.io",
    "v1beta1",
    "DestinationRule",
    "destinationrules",
    ["dr"],
    ["istio-io", "networking-istio-io"]
);
istio_version!(
    destination_rule_v1alpha3,
    "networking.istio.io",
    "v1alpha3",
    "DestinationRule",
    "destinationrules",
    ["dr"],
    ["istio-io", "networking-istio-io"]
);
istio_version!(
    authorization_policy_v1,
    "security.istio.io",
    "v1",
    "AuthorizationPolicy",
    "authorizationpolicies",
    ["ap"],
    ["istio-io", "security-istio-io"]
);
istio_version!(
    authorization_policy_v1beta1,
    "security.istio.io",
    "v1beta1",
    "AuthorizationPolicy",
    "authorizationpolicies",
    ["ap"],
    ["istio-io", "security-istio-io"]
);

/// The three CRDs, every version served and `v1` stored (no conversion: the versions share one
/// schema).
pub fn crds() -> Vec<CustomResourceDefinition> {
    let merge = |crds: Vec<CustomResourceDefinition>| {
        let mut crd = merge_crds(crds, "v1").expect("the versions of one kind merge");
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                // As Istio's CRDs: an object without spec is accepted (and judged by the
                // agent), and no generated prose.
                schema.required = None;
                schema.description = None;
            }
        }
        crd.metadata.labels = Some(
            [("app.kubernetes.io/part-of".to_owned(), "egress".to_owned())]
                .into_iter()
                .collect(),
        );
        crd
    };
    vec![
        merge(vec![
            service_entry_v1::ServiceEntry::crd(),
            service_entry_v1beta1::ServiceEntry::crd(),
            service_entry_v1alpha3::ServiceEntry::crd(),
        ]),
        merge(vec![
            destination_rule_v1::DestinationRule::crd(),
            destination_rule_v1beta1::DestinationRule::crd(),
            destination_rule_v1alpha3::DestinationRule::crd(),
        ]),
        merge(vec![
            authorization_policy_v1::AuthorizationPolicy::crd(),
            authorization_policy_v1beta1::AuthorizationPolicy::crd(),
        ]),
    ]
}

/// What `egress crds` prints: the CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    let mut out = String::from(
        "# Generated by `egress crds` from the Rust types (egress-user/src/kube/crd.rs); do not edit.\n\
         # Istio-compatible CustomResourceDefinitions for clusters without Istio: specs preserve\n\
         # unknown fields and carry no CEL, so they load on Kubernetes 1.20 and current releases.\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        let value = serde_json::to_value(&crd).expect("a CRD serializes");
        out.push_str(&serde_saphyr::to_string(&value).expect("a CRD renders as YAML"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crds_are_what_egress_crds_prints() {
        let committed = include_str!("../../../deploy/crds/istio.yaml");
        assert!(
            committed == crds_yaml(),
            "deploy/crds/istio.yaml is stale: regenerate it with \
             `cargo run -p egress-user -- crds > deploy/crds/istio.yaml`"
        );
    }

    #[test]
    fn every_version_is_served_and_v1_is_stored() {
        for crd in crds() {
            let versions: Vec<(&str, bool, bool)> = crd
                .spec
                .versions
                .iter()
                .map(|v| (v.name.as_str(), v.served, v.storage))
                .collect();
            assert!(
                versions.iter().all(|(_, served, _)| *served),
                "{versions:?}"
            );
            assert_eq!(
                versions.iter().filter(|(_, _, stored)| *stored).count(),
                1,
                "{versions:?}"
            );
            assert!(versions.contains(&("v1", true, true)), "{versions:?}");
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
            assert_eq!(
                schema["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-preserve-unknown-fields"],
                true,
                "{schema}"
            );
        }
    }
}
