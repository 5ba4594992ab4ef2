//! Host mode: a cgroup's identity is where it sits under the captured cgroup.
//! `<captured>/ns/<NS>/sa/<SA>[/...]` is principal `<trust-domain>/ns/<NS>/sa/<SA>`; that is
//! where `egress exec --namespace NS --service-account SA` puts a command. Creating cgroups
//! there needs write access to cgroupfs (root), so a workload cannot claim an identity by itself.
use std::{
    collections::HashMap,
    fs,
    path::{Component, Path, PathBuf},
    sync::RwLock,
};

use super::Principal;
use super::{Anchor, IdentitySource};
use crate::cgroup;

/// How deep below the captured cgroup a scan looks.
const MAX_DEPTH: usize = 12;

pub struct CgroupIdentities {
    root: PathBuf,
    trust_domain: String,
    /// Declared mappings (WorkloadIdentity): absolute cgroup path -> principal. The longest
    /// matching path wins, before the `ns/<NS>/sa/<SA>` convention.
    mappings: RwLock<Vec<(PathBuf, Principal)>>,
    /// Kubernetes mode: pod-level cgroup -> the pod's principal (the pod manager keeps these).
    /// A pod's cgroup is one identity anchor for all its containers.
    pods: RwLock<HashMap<PathBuf, Principal>>,
    /// cgroup id -> principal. Ids are never reused while the host is up, so a cached answer
    /// (including "no identity") stays true.
    cache: RwLock<HashMap<u64, Option<Principal>>>,
}

/// The cgroup `egress exec` uses for a namespace and service account, below `root`.
pub fn exec_cgroup(root: &Path, namespace: &str, service_account: &str) -> PathBuf {
    root.join("ns")
        .join(namespace)
        .join("sa")
        .join(service_account)
}

/// The principal a cgroup path below `root` stands for, if any.
pub fn principal_for_path(root: &Path, path: &Path, trust_domain: &str) -> Option<Principal> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Vec<&str> = rel
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        ["ns", ns, "sa", sa, ..] => Some(Principal::new(trust_domain, ns, sa)),
        _ => None,
    }
}

impl CgroupIdentities {
    pub fn new(root: &Path, trust_domain: &str) -> Self {
        Self {
            root: root.to_owned(),
            trust_domain: trust_domain.to_owned(),
            mappings: RwLock::new(Vec::new()),
            pods: RwLock::new(HashMap::new()),
            cache: RwLock::new(HashMap::new()),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Replaces the declared mappings (on config load) and forgets every cached answer.
    pub fn set_mappings(&self, mut mappings: Vec<(PathBuf, Principal)>) {
        // Longest path first, so the most specific mapping wins.
        mappings.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        *self.mappings.write().unwrap_or_else(|e| e.into_inner()) = mappings;
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Kubernetes mode: the pod whose cgroup is `pod` has `principal` from now on (its
    /// containers and every cgroup below it too).
    pub fn set_pod(&self, pod: &Path, principal: Principal) {
        let changed = self
            .pods
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pod.to_owned(), principal.clone())
            != Some(principal);
        if changed {
            self.forget_cached();
        }
    }

    /// Kubernetes mode: the pod whose cgroup is `pod` is no longer served.
    pub fn remove_pod(&self, pod: &Path) {
        let removed = self
            .pods
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pod)
            .is_some();
        if removed {
            self.forget_cached();
        }
    }

    /// The pod cgroups known now, with their principals.
    pub fn pods(&self) -> Vec<(PathBuf, Principal)> {
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        pods.iter().map(|(p, pr)| (p.clone(), pr.clone())).collect()
    }

    fn forget_cached(&self) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The identity-defining directory a cgroup directory belongs to, and its principal: the
    /// deepest of the declared mappings and the exec convention's `ns/<NS>/sa/<SA>` directory
    /// that contain it. The kernel picks the same one (the deepest registered anchor), so both
    /// sides agree on who a cgroup is.
    fn defining(&self, path: &Path) -> Option<(PathBuf, Principal)> {
        // A pod's identity is the API server's word; nothing below a pod cgroup redefines it.
        if let Some(pod) = self
            .pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(pod, _)| path.starts_with(pod))
        {
            return Some((pod.0.clone(), pod.1.clone()));
        }
        let mappings = self.mappings.read().unwrap_or_else(|e| e.into_inner());
        let mapped = mappings
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
            .map(|(p, principal)| (p.clone(), principal.clone()));
        let convention = principal_for_path(&self.root, path, &self.trust_domain)
            .map(|p| (exec_cgroup(&self.root, &p.namespace, &p.service_account), p));
        match (mapped, convention) {
            (Some(m), Some(c)) => Some(if m.0.components().count() >= c.0.components().count() {
                m
            } else {
                c
            }),
            (m, c) => m.or(c),
        }
    }

    fn principal_of(&self, path: &Path) -> Option<Principal> {
        self.defining(path).map(|(_, principal)| principal)
    }

    /// Every identity anchor that exists now: the captured cgroup itself (no identity), each
    /// declared mapping, and each `ns/<NS>/sa/<SA>` directory. The kernel caches verdicts per
    /// anchor.
    pub fn anchors(&self) -> Vec<Anchor> {
        let mut anchors = Vec::new();
        if let Ok(id) = cgroup::id(&self.root) {
            anchors.push(Anchor {
                cgroup_id: id,
                principal: None,
            });
        }
        let mappings = self
            .mappings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (path, principal) in mappings {
            if let Ok(id) = cgroup::id(&path) {
                anchors.push(Anchor {
                    cgroup_id: id,
                    principal: Some(principal),
                });
            }
        }
        for (path, principal) in self.pods() {
            if let Ok(id) = cgroup::id(&path) {
                anchors.push(Anchor {
                    cgroup_id: id,
                    principal: Some(principal),
                });
            }
        }
        let subdirs = |dir: &Path| -> Vec<PathBuf> {
            fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        };
        for ns in subdirs(&self.root.join("ns")) {
            for sa in subdirs(&ns.join("sa")) {
                if let (Ok(id), Some(principal)) = (
                    cgroup::id(&sa),
                    principal_for_path(&self.root, &sa, &self.trust_domain),
                ) && self.principal_of(&sa).as_ref() == Some(&principal)
                {
                    anchors.push(Anchor {
                        cgroup_id: id,
                        principal: Some(principal),
                    });
                }
            }
        }
        anchors
    }

    /// Directories to scan: the captured tree and every declared mapping's tree.
    fn scan_all(&self, found: &mut HashMap<u64, Option<Principal>>) {
        let mut roots = vec![self.root.clone()];
        roots.extend(
            self.mappings
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(p, _)| !p.starts_with(&self.root))
                .map(|(p, _)| p.clone()),
        );
        for root in roots {
            if let Ok(id) = cgroup::id(&root) {
                found.insert(id, self.principal_of(&root));
            }
            self.scan(&root, 0, found);
        }
    }

    fn scan(&self, dir: &Path, depth: usize, found: &mut HashMap<u64, Option<Principal>>) {
        if depth > MAX_DEPTH {
            return;
        }
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            if let Ok(id) = cgroup::id(&path) {
                found.insert(id, self.principal_of(&path));
            }
            self.scan(&path, depth + 1, found);
        }
    }
}

impl IdentitySource for CgroupIdentities {
    fn principal(&self, cgroup_id: u64) -> Option<Principal> {
        if let Some(hit) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cgroup_id)
        {
            return hit.clone();
        }
        let mut found = HashMap::new();
        self.scan_all(&mut found);
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.extend(found);
        // Not below the captured cgroup (or already gone): no identity, and that will not change.
        cache.entry(cgroup_id).or_insert(None).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_mappings_win_over_the_exec_convention() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("captured");
        let unit = root.join("system.slice/billing.service");
        let exec = exec_cgroup(&root, "default", "sleep").join("exec-1");
        let nested = unit.join("worker");
        for dir in [&unit, &exec, &nested] {
            fs::create_dir_all(dir).expect("mkdir");
        }
        let ids = CgroupIdentities::new(&root, "cluster.local");
        let id = |p: &Path| cgroup::id(p).expect("inode");
        assert_eq!(ids.principal(id(&unit)), None, "no mapping yet");
        ids.set_mappings(vec![(
            unit.clone(),
            Principal::new("cluster.local", "payments", "billing"),
        )]);
        let billing = Some(Principal::new("cluster.local", "payments", "billing"));
        assert_eq!(ids.principal(id(&unit)), billing);
        assert_eq!(ids.principal(id(&nested)), billing, "descendants inherit");
        assert_eq!(
            ids.principal(id(&exec)),
            Some(Principal::new("cluster.local", "default", "sleep"))
        );
    }

    #[test]
    fn pod_cgroups_carry_their_pods_principal_and_are_anchors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("kubepods.slice");
        let pod = root.join("kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice");
        let container = pod.join("cri-containerd-abcd.scope");
        fs::create_dir_all(&container).expect("mkdir");
        let ids = CgroupIdentities::new(&root, "cluster.local");
        let id = |p: &Path| cgroup::id(p).expect("inode");
        assert_eq!(ids.principal(id(&container)), None, "not a pod of ours yet");
        let sleep = Principal::new("cluster.local", "default", "sleep");
        ids.set_pod(&pod, sleep.clone());
        assert_eq!(ids.principal(id(&container)), Some(sleep.clone()));
        assert!(ids.anchors().contains(&Anchor {
            cgroup_id: id(&pod),
            principal: Some(sleep),
        }));
        ids.remove_pod(&pod);
        assert_eq!(ids.principal(id(&container)), None, "forgotten at once");
        assert!(ids.anchors().iter().all(|a| a.cgroup_id != id(&pod)));
    }

    #[test]
    fn paths_map_to_principals() {
        let root = Path::new("/sys/fs/cgroup/unified/egress");
        let p = principal_for_path(
            root,
            &exec_cgroup(root, "default", "sleep").join("exec-42"),
            "cluster.local",
        )
        .expect("principal");
        assert_eq!(p.to_string(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(
            principal_for_path(root, &root.join("ns/default"), "cluster.local"),
            None
        );
        assert_eq!(
            principal_for_path(root, &root.join("egress-waypoint"), "cluster.local"),
            None
        );
        assert_eq!(
            principal_for_path(root, Path::new("/elsewhere/ns/a/sa/b"), "td"),
            None
        );
    }
}
