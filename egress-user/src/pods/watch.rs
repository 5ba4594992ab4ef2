//! This node's pods and every namespace's labels, from the API server: kube-runtime watchers
//! (Pods with the field selector `spec.nodeName=<node>`), folded into one [`ClusterView`]. A
//! watch that breaks resumes with backoff (kube-runtime re-lists); a re-list replaces what it
//! lists atomically, so a pod deleted while the watch was down is seen gone.
use std::collections::BTreeMap;

use futures_util::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client, ResourceExt as _,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{ClusterView, PodInfo};

/// What the manager needs of a Pod object (`None`: it has no UID yet, which a stored object
/// always has).
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let spec = pod.spec.as_ref();
    Some(PodInfo {
        uid: pod.metadata.uid.clone()?,
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        service_account: spec.and_then(|s| s.service_account_name.clone()),
        labels: pod.labels().clone(),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        phase: pod.status.as_ref().and_then(|s| s.phase.clone()),
    })
}

enum Change {
    Pod(watcher::Event<Pod>),
    Namespace(watcher::Event<Namespace>),
}

/// Watches until the task is dropped, publishing every change of the view.
pub async fn watch_cluster(client: Client, node_name: String, view: watch::Sender<ClusterView>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client);
    let selector = format!("spec.nodeName={node_name}");
    let pod_events = watcher(pods, watcher::Config::default().fields(&selector))
        .default_backoff()
        .map(|e| e.map(Change::Pod))
        .boxed();
    let ns_events = watcher(namespaces, watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(Change::Namespace))
        .boxed();
    let mut events = stream::select(pod_events, ns_events);
    let mut state = Folded::default();
    while let Some(event) = events.next().await {
        match event {
            Err(error) => {
                warn!(%error, "watching pods or namespaces failed; resuming");
                continue;
            }
            Ok(change) => {
                if state.apply(change) {
                    view.send_replace(state.view());
                }
            }
        }
    }
}

/// The two watch streams folded; re-lists are buffered until complete.
#[derive(Default)]
struct Folded {
    pods: BTreeMap<String, PodInfo>,
    pods_pending: Option<BTreeMap<String, PodInfo>>,
    pods_synced: bool,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    namespaces_pending: Option<BTreeMap<String, BTreeMap<String, String>>>,
    namespaces_synced: bool,
}

impl Folded {
    /// Returns whether the published view changes.
    fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Pod(event) => match event {
                watcher::Event::Init => self.pods_pending = Some(BTreeMap::new()),
                watcher::Event::InitApply(pod) => {
                    if let (Some(pending), Some(info)) = (&mut self.pods_pending, pod_info(&pod)) {
                        pending.insert(info.uid.clone(), info);
                    }
                }
                watcher::Event::InitDone => {
                    self.pods = self.pods_pending.take().unwrap_or_default();
                    self.pods_synced = true;
                    debug!(pods = self.pods.len(), "pods on this node listed");
                    return true;
                }
                watcher::Event::Apply(pod) => {
                    let Some(info) = pod_info(&pod) else {
                        return false;
                    };
                    return self.pods.insert(info.uid.clone(), info.clone()) != Some(info);
                }
                watcher::Event::Delete(pod) => {
                    return pod
                        .metadata
                        .uid
                        .as_ref()
                        .is_some_and(|uid| self.pods.remove(uid).is_some());
                }
            },
            Change::Namespace(event) => match event {
                watcher::Event::Init => self.namespaces_pending = Some(BTreeMap::new()),
                watcher::Event::InitApply(ns) => {
                    if let Some(pending) = &mut self.namespaces_pending {
                        pending.insert(ns.name_any(), ns.labels().clone());
                    }
                }
                watcher::Event::InitDone => {
                    self.namespaces = self.namespaces_pending.take().unwrap_or_default();
                    self.namespaces_synced = true;
                    return true;
                }
                watcher::Event::Apply(ns) => {
                    let labels = ns.labels().clone();
                    return self.namespaces.insert(ns.name_any(), labels.clone()) != Some(labels);
                }
                watcher::Event::Delete(ns) => {
                    return self.namespaces.remove(&ns.name_any()).is_some();
                }
            },
        }
        false
    }

    fn view(&self) -> ClusterView {
        ClusterView {
            pods: self.pods.clone(),
            namespaces: self.namespaces.clone(),
            synced: self.pods_synced && self.namespaces_synced,
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(uid: &str, name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn a_relist_replaces_the_pods_it_lists_and_sync_needs_both_lists() {
        let mut folded = Folded::default();
        assert!(!folded.apply(Change::Pod(watcher::Event::Init)));
        folded.apply(Change::Pod(watcher::Event::InitApply(pod("1", "a"))));
        assert!(folded.apply(Change::Pod(watcher::Event::InitDone)));
        assert!(!folded.view().synced, "namespaces not listed yet");
        folded.apply(Change::Namespace(watcher::Event::Init));
        assert!(folded.apply(Change::Namespace(watcher::Event::InitDone)));
        assert!(folded.view().synced);
        assert!(folded.apply(Change::Pod(watcher::Event::Apply(pod("2", "b")))));
        assert!(
            !folded.apply(Change::Pod(watcher::Event::Apply(pod("2", "b")))),
            "unchanged"
        );
        // The watch broke; pod 1 was deleted meanwhile: the re-list drops it.
        folded.apply(Change::Pod(watcher::Event::Init));
        folded.apply(Change::Pod(watcher::Event::InitApply(pod("2", "b"))));
        assert_eq!(
            folded.view().pods.len(),
            2,
            "the old view stands until the list is complete"
        );
        folded.apply(Change::Pod(watcher::Event::InitDone));
        let view = folded.view();
        assert_eq!(view.pods.keys().collect::<Vec<_>>(), vec!["2"]);
        assert!(folded.apply(Change::Pod(watcher::Event::Delete(pod("2", "b")))));
        assert!(folded.view().pods.is_empty());
    }
}
