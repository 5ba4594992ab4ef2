//! `ServiceEntry.endpoints[]` (WorkloadEntry specs) -> [`Endpoint`]s, validated as Istio's
//! `validateWorkloadEntry` and the endpoint rules of `ValidateServiceEntry` in istio/istio
//! `pkg/config/validation/validation.go`, for the resolution of the ServiceEntry they belong to.
use std::collections::{BTreeMap, BTreeSet};

use super::{
    Endpoint, Resolution,
    error::Issues,
    names::{check_fqdn, check_label_key, check_label_value},
    node::Node,
};

// Sizes from the CRD schema (`manifests/charts/base/files/crd-all.gen.yaml`).
const MAX_ENDPOINTS: usize = 4096;
const MAX_ENDPOINT_ADDRESS_LEN: usize = 256;

pub(crate) fn parse_endpoints(
    node: &Node<'_>,
    resolution: Option<Resolution>,
    declared: &BTreeSet<&str>,
    issues: &mut Issues,
) -> Vec<Endpoint> {
    let items = node.items(issues);
    if items.len() > MAX_ENDPOINTS {
        issues.at(
            &node.path,
            format!(
                "at most {MAX_ENDPOINTS} endpoints are allowed, got {}",
                items.len()
            ),
        );
    }
    match resolution {
        Some(Resolution::None) if !items.is_empty() => {
            issues.at(
                &node.path,
                "no endpoints should be provided for resolution NONE \
                 (connections go to the address the application dialled)",
            );
            return Vec::new();
        }
        Some(r @ Resolution::DnsRoundRobin) if items.len() > 1 => issues.at(
            &node.path,
            format!(
                "there must be at most 1 endpoint for resolution {r}, got {}",
                items.len()
            ),
        ),
        _ => {}
    }
    items
        .iter()
        .filter_map(|item| parse_endpoint(item, resolution, declared, issues))
        .collect()
}

fn parse_endpoint(
    item: &Node<'_>,
    resolution: Option<Resolution>,
    declared: &BTreeSet<&str>,
    issues: &mut Issues,
) -> Option<Endpoint> {
    item.object(issues)?;
    let address = match item.get("address") {
        None => {
            issues.at(&item.key_path("address"), "is required");
            None
        }
        Some(node) => node
            .str(issues)
            .filter(|address| check_endpoint_address(&node, address, resolution, issues)),
    };

    let mut ports = BTreeMap::new();
    if let Some(node) = item.get("ports") {
        for (name, port) in node.entries(issues) {
            if !declared.contains(name) {
                let declared: Vec<&str> = declared.iter().copied().collect();
                issues.at(
                    &port.path,
                    format!(
                        "endpoint port {name:?} is not defined by the service entry; \
                         declared ports: {}",
                        declared.join(", ")
                    ),
                );
            }
            if let Some(number) = port.port(issues) {
                ports.insert(name.to_owned(), number);
            }
        }
    }

    let mut labels = BTreeMap::new();
    if let Some(node) = item.get("labels") {
        for (key, path, value) in node.string_map(issues) {
            if let Err(message) = check_label_key(key).and_then(|()| check_label_value(value)) {
                issues.at(&path, message);
            }
            labels.insert(key.to_owned(), value.to_owned());
        }
    }

    let weight = match item.get("weight") {
        None => None,
        Some(node) => match node.integer(issues).map(u32::try_from) {
            Some(Ok(0)) | None => None,
            Some(Ok(weight)) => Some(weight),
            Some(Err(_)) => {
                issues.at(&node.path, "must be between 0 and 4294967295");
                None
            }
        },
    };

    Some(Endpoint {
        address: address?.to_owned(),
        ports,
        labels,
        weight,
    })
}

/// Reports a bad endpoint address; true when it is good.
fn check_endpoint_address(
    node: &Node<'_>,
    address: &str,
    resolution: Option<Resolution>,
    issues: &mut Issues,
) -> bool {
    let problem = if address.is_empty() {
        Some("is required".to_owned())
    } else if address.len() > MAX_ENDPOINT_ADDRESS_LEN {
        Some(format!(
            "must be at most {MAX_ENDPOINT_ADDRESS_LEN} characters"
        ))
    } else if address.starts_with("unix://") {
        Some(format!(
            "unix domain socket endpoint {address:?} is not supported by egress"
        ))
    } else if address.parse::<std::net::IpAddr>().is_ok() {
        None
    } else {
        match resolution {
            Some(Resolution::Static) => Some(format!(
                "endpoint address {address:?} is not a valid IP address \
                 (resolution STATIC needs IP addresses)"
            )),
            Some(Resolution::Dns | Resolution::DnsRoundRobin) if check_fqdn(address).is_err() => {
                Some(format!(
                    "endpoint address {address:?} is not a valid FQDN or an IP address"
                ))
            }
            _ => None,
        }
    };
    match problem {
        Some(message) => {
            issues.at(&node.path, message);
            false
        }
        None => true,
    }
}
