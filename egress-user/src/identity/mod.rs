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
