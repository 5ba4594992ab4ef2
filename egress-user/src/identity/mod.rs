//! cgroup -> workload -> principal. Identity comes from the cgroup id the kernel recorded at
//! connect(), never from anything the workload sends.
mod cgroups;
pub mod rescan;

use std::fmt;

pub use cgroups::{CgroupIdentities, exec_cgroup, principal_for_path};

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
