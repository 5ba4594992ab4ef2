//! The kernel verdict cache (design §6), userspace half. A decision that depends on nothing above
//! L4 — identity, ServiceEntry and port alone decide it — is a *deny the kernel may enforce*:
//! written to the verdict map, the next `connect()` of that identity to that service is refused
//! with EPERM before a packet is sent. Entries carry the policy generation; a config or identity
//! change bumps it, so stale entries are ignored at once and then evicted. Only denies are cached
//! (an allow still goes through the waypoint, which authorizes every request), and never an
//! L7-conditional one. Correctness never depends on the cache: a missing entry costs a trip to
//! the waypoint, which decides again.
use std::sync::Arc;

use http::HeaderMap;

// The sink is kernel-facing and the anchor an identity; both are found here too.
pub use crate::{bpf::VerdictSink, identity::Anchor};
use crate::{
    model::ServiceTable,
    policy::{Attributes, HttpAttributes, Target},
};

/// A deny to cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedDeny {
    pub identity_id: u64,
    pub service_id: u32,
    pub port: u16,
}

/// Every L4-decidable deny of `table`'s policies for the known anchors: what is written at load
/// time. Anchors without a principal are never cached (a new, not yet registered identity below
/// them would inherit the deny).
pub fn precompute(table: &ServiceTable, anchors: &[Anchor]) -> Vec<CachedDeny> {
    let headers = HeaderMap::new();
    let mut denies = Vec::new();
    for anchor in anchors {
        let Some(principal) = &anchor.principal else {
            continue;
        };
        // A shared address cannot be attributed to one ServiceEntry at L4.
        for service in table.iter().filter(|s| !table.is_shared(s.id)) {
            // With the HTTP part unknown, an L4-decidable verdict is the same for every request:
            // any request stands for all of them.
            let http = service.protocol.is_http().then_some(HttpAttributes {
                method: "GET",
                host: service.hosts.first().map_or("", String::as_str),
                path: "/",
                headers: &headers,
            });
            let decision = table.policies.evaluate(
                &Target {
                    namespace: &service.namespace,
                    service_entry: &service.name,
                },
                &Attributes {
                    principal: Some(principal),
                    source_ip: None,
                    destination_ip: None,
                    destination_port: service.port,
                    sni: None,
                    http,
                },
            );
            if !decision.allowed && decision.l4_decidable {
                denies.push(CachedDeny {
                    identity_id: anchor.cgroup_id,
                    service_id: service.id,
                    port: service.port,
                });
            }
        }
    }
    denies
}

/// What the waypoint needs to learn a deny at runtime for one accepted connection.
#[derive(Clone)]
pub struct Learner {
    pub sink: Arc<dyn VerdictSink>,
    /// The anchor the kernel saw at connect(), when its identity is the connection's.
    pub identity_id: u64,
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use super::*;
    use crate::{config::parse_str, identity::Principal, model, policy::PolicySet};

    const CONFIG: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.test]
  addresses: [127.77.0.2]
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-evil, namespace: default}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin}]
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/evil]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sleep-get, namespace: default}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin}]
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    to: [{operation: {methods: [GET]}}]
  - from: [{source: {principals: [cluster.local/ns/default/sa/evil]}}]
";

    fn anchor(id: u64, sa: Option<&str>) -> Anchor {
        Anchor {
            cgroup_id: id,
            principal: sa.map(|sa| Principal::new("cluster.local", "default", sa)),
        }
    }

    #[test]
    fn only_l4_decidable_denies_of_identities_are_cached() {
        let config = parse_str(Path::new("t.yaml"), CONFIG).expect("valid");
        let built = model::build(&config, &model::DnsAnswers::new());
        let table = built.table.with_policies(
            Arc::new(PolicySet::new(
                &config.authorization_policies,
                "istio-system",
            )),
            7,
        );
        let denies = precompute(
            &table,
            &[
                anchor(1, Some("evil")),
                anchor(2, Some("sleep")),
                anchor(3, Some("other")),
                anchor(4, None),
            ],
        );
        // evil: a DENY on principal alone. other: no ALLOW rule can match it on any request.
        // sleep: GET allowed, POST denied -> depends on the method, never cached. No identity:
        // never cached.
        assert_eq!(
            denies,
            vec![
                CachedDeny {
                    identity_id: 1,
                    service_id: 0,
                    port: 80
                },
                CachedDeny {
                    identity_id: 3,
                    service_id: 0,
                    port: 80
                },
            ]
        );
    }
}
