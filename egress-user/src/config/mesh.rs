//! Istio's MeshConfig, as it travels in the `istio` ConfigMap (`data.mesh`, a YAML string).
//! Only what the dataplane acts on is read: `outboundTrafficPolicy.mode`.
//!
//! ```yaml
//! apiVersion: v1
//! kind: ConfigMap
//! metadata: {name: istio, namespace: istio-system}
//! data:
//!   mesh: |
//!     outboundTrafficPolicy:
//!       mode: REGISTRY_ONLY
//! ```
use super::{MeshConfig, Source, error::Issues};

pub(crate) fn parse(
    text: &str,
    field: &str,
    source: Source,
    issues: &mut Issues,
) -> Option<MeshConfig> {
    let value: serde_json::Value = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            issues.at(field, format!("is not valid MeshConfig YAML: {e}"));
            return None;
        }
    };
    let mode = value
        .get("outboundTrafficPolicy")
        .and_then(|p| p.get("mode"))
        .and_then(|m| m.as_str());
    let registry_only = match mode {
        None | Some("ALLOW_ANY") => false,
        Some("REGISTRY_ONLY") => true,
        Some(other) => {
            issues.at(
                &format!("{field}: outboundTrafficPolicy.mode"),
                format!("unknown mode {other:?}; expected ALLOW_ANY or REGISTRY_ONLY"),
            );
            return None;
        }
    };
    Some(MeshConfig {
        source,
        registry_only,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse_str;

    const MESH: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    accessLogFile: /dev/stdout
    outboundTrafficPolicy:
      mode: MODE
";

    #[test]
    fn reads_the_outbound_traffic_policy() {
        let set = parse_str(
            Path::new("mesh.yaml"),
            &MESH.replace("MODE", "REGISTRY_ONLY"),
        )
        .expect("valid");
        assert!(set.mesh.expect("mesh config").registry_only);
        let set =
            parse_str(Path::new("mesh.yaml"), &MESH.replace("MODE", "ALLOW_ANY")).expect("valid");
        assert!(!set.mesh.expect("mesh config").registry_only);
        let err = parse_str(Path::new("mesh.yaml"), &MESH.replace("MODE", "DENY_ALL"))
            .expect_err("unknown mode")
            .to_string();
        assert!(
            err.contains("mesh.yaml:1:data.mesh: outboundTrafficPolicy.mode: unknown mode"),
            "{err}"
        );
    }
}
