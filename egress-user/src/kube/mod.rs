//! Kubernetes mode (`egress run --kubernetes`): the Istio objects users `kubectl apply` to an
//! ambient mesh, read from the API server instead of files (design §10).
//!
//! [`crd`] derives Istio's custom resources (and so the CRDs `egress crds` prints); [`source`]
//! watches them, with Namespaces, the mesh config and DestinationRule Secrets, and yields
//! validated configurations through the same [`crate::reload::ConfigSource`] seam as files.
pub mod crd;
mod source;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use source::{Binding, KubeOptions, KubeSource, USE_WAYPOINT_LABEL};

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("reading the kubeconfig {}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes client configuration (give --kubeconfig, set KUBECONFIG, or run in a pod)"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error(
        "the API server did not list {0} within {1:?}; is it reachable, and may this identity \
         list and watch them?"
    )]
    NotSynced(String, std::time::Duration),
}

/// A client from `kubeconfig` when given; else as kubectl finds one: `KUBECONFIG`,
/// `~/.kube/config`, or the pod's service account (in-cluster).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                KubeError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|source| KubeError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            })?
        }
        None => kube::Config::infer().await.map_err(KubeError::Infer)?,
    };
    kube::Client::try_from(config).map_err(KubeError::Client)
}
