//! cgroup -> workload -> principal. Identity comes from the cgroup id the kernel recorded at
//! connect(), never from anything the workload sends.
mod cgroups;
pub mod rescan;

use std::fmt;

pub use cgroups::{CgroupIdentities, exec_cgroup, principal_for_path};

/// Where the waypoint learns who a cgroup is.
pub trait IdentitySource: Send + Sync + 'static {
    /// The principal of a cgroup, or `None` for a cgroup without identity.
    fn principal(&self, cgroup_id: u64) -> Option<Principal>;
}

/// One identity anchor: a cgroup that carries an identity (the kernel verdict cache keys on
/// it; see [`crate::verdicts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub cgroup_id: u64,
    pub principal: Option<Principal>,
}

/// The default SPIFFE trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload identity, `<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Principal {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// `<trust domain>/ns/<namespace>/sa/<service account>`, as `Display` writes it, in one
    /// allocation and without `core::fmt` (authorization renders it for every request).
    pub fn render(&self) -> String {
        let parts = [
            self.trust_domain.as_str(),
            "/ns/",
            &self.namespace,
            "/sa/",
            &self.service_account,
        ];
        let mut out = String::with_capacity(parts.iter().map(|part| part.len()).sum());
        for part in parts {
            out.push_str(part);
        }
        out
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_what_display_writes() {
        let principal = Principal::new("cluster.local", "default", "sleep");
        assert_eq!(principal.render(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(principal.render(), principal.to_string());
        assert_eq!(Principal::new("", "", "").render(), "/ns//sa/");
    }
}
