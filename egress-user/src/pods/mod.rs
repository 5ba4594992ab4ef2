//! Kubernetes mode's pods (design §10): where the kubelet puts them on the cgroup tree
//! ([`layout`]), which ones this agent serves ([`enrollment`]), and their lifecycle — anchor,
//! verdicts, a waypoint listener and (DNS capture on) a DNS listener in each pod's network
//! namespace ([`manager`]), fed by the API server ([`watch`]).
pub mod enrollment;
pub mod layout;
pub mod manager;
pub mod status;
#[cfg(feature = "agent")]
pub mod watch;

use std::{net::SocketAddrV4, path::PathBuf};

use serde::Serialize;

pub use enrollment::{DATAPLANE_MODE_LABEL, DEFAULT_DATAPLANE_MODE};
pub use manager::{ClusterView, PodDns, PodInfo, PodManager};

/// What the pod manager needs to know about the node.
#[derive(Clone, Debug)]
pub struct PodOptions {
    /// The kubelet's pod cgroup root (`kubepods.slice` or `kubepods` on the cgroup2 mount).
    pub pod_root: PathBuf,
    /// The host's /proc (the DaemonSet mounts it at /host/proc).
    pub proc: PathBuf,
    /// The waypoint address opened in each pod's network namespace.
    pub listen: SocketAddrV4,
    /// The `istio.io/dataplane-mode` value this agent serves.
    pub dataplane_mode: String,
    pub trust_domain: String,
}

/// One enrolled pod, as `egress status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub principal: String,
    /// The pod cgroup (identity anchor), once found.
    pub cgroup: Option<PathBuf>,
    /// The network namespace cookie of its listener, once open.
    pub netns_cookie: Option<u64>,
    pub listener: Option<SocketAddrV4>,
    /// Its DNS listener (UDP and TCP), while one serves (DNS capture on). Absent in the JSON
    /// of agents from before DNS capture for pods.
    #[serde(default)]
    pub dns_listener: Option<SocketAddrV4>,
    /// What serving it still waits for.
    pub waiting_for: Option<String>,
}

/// Kubernetes mode's settings (`egress run --kubernetes`).
#[derive(Clone, Debug)]
pub struct KubernetesOptions {
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, or in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// This node (`spec.nodeName` of the pods served).
    pub node_name: String,
    /// The host's /proc.
    pub proc: PathBuf,
    /// The `istio.io/dataplane-mode` value served.
    pub dataplane_mode: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[cfg(feature = "agent")]
    #[error(transparent)]
    Kube(#[from] crate::kube::KubeError),
    #[error("--node-name is empty (set it, or NODE_NAME from the downward API)")]
    NoNodeName,
}

/// How long start-up waits for the first complete list of pods and namespaces; after that the
/// agent serves and adopts pods as the list arrives.
#[cfg(feature = "agent")]
const FIRST_LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The pods side of a Kubernetes-mode run, between start-up and serving.
#[cfg(feature = "agent")]
pub struct Pods {
    options: PodOptions,
    view: tokio::sync::watch::Receiver<ClusterView>,
}

#[cfg(feature = "agent")]
impl Pods {
    /// Starts the watchers, waits (bounded) for the first complete list, and registers the
    /// identities of the enrolled pods already there.
    pub async fn start(
        k: &KubernetesOptions,
        run: &crate::run::RunOptions,
        identities: &crate::identity::CgroupIdentities,
    ) -> Result<Self, PodsError> {
        if k.node_name.is_empty() {
            return Err(PodsError::NoNodeName);
        }
        let client = crate::kube::client(k.kubeconfig.as_deref()).await?;
        let (tx, mut view) = tokio::sync::watch::channel(ClusterView::default());
        tokio::spawn(watch::watch_cluster(client, k.node_name.clone(), tx));
        let options = PodOptions {
            pod_root: run.cgroup.clone(),
            proc: k.proc.clone(),
            listen: run.listen,
            dataplane_mode: k.dataplane_mode.clone(),
            trust_domain: run.trust_domain.clone(),
        };
        let listed = tokio::time::timeout(FIRST_LIST_TIMEOUT, view.wait_for(|v| v.synced))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|current| current.clone());
        match listed {
            Some(current) => {
                manager::preregister(&options, identities, &current);
                tracing::info!(
                    node = %k.node_name,
                    pods = current.pods.len(),
                    enrolled = current.enrolled(&options.dataplane_mode, &options.trust_domain).len(),
                    "pods on this node listed"
                );
            }
            _ => tracing::warn!(
                node = %k.node_name,
                "pods and namespaces not listed within {FIRST_LIST_TIMEOUT:?}; serving, and \
                 adopting pods as the list arrives"
            ),
        }
        Ok(Self { options, view })
    }

    /// Runs the pod manager (`dns`: DNS capture on, a DNS listener in each pod too); returns
    /// what `egress status` shows of it.
    pub fn serve(
        self,
        identities: std::sync::Arc<crate::identity::CgroupIdentities>,
        rescans: tokio::sync::mpsc::Sender<crate::identity::rescan::Rescan>,
        waypoint: std::sync::Arc<crate::proxy::Waypoint>,
        gate: tokio::sync::watch::Receiver<crate::drain::Gate>,
        capture: Option<std::sync::Arc<crate::bpf::Capture>>,
        dns: Option<PodDns>,
    ) -> std::sync::Arc<std::sync::RwLock<Vec<PodStatus>>> {
        let manager = PodManager::new(
            self.options,
            identities,
            rescans,
            waypoint,
            gate,
            capture,
            dns,
        );
        let status = manager.status();
        tokio::spawn(manager.run(self.view));
        status
    }
}
