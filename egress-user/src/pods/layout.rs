//! Where the kubelet puts pods on the cgroup2 tree, and which pod a cgroup belongs to.
//!
//! Two drivers, three QoS classes (design §10):
//! - systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<UID with _>.slice/`
//!   `cri-containerd-<ID>.scope` (or `crio-<ID>.scope`; `crio-conmon-<ID>.scope` is CRI-O's
//!   monitor, not the pod's), guaranteed pods directly below `kubepods.slice` as
//!   `kubepods-pod<UID>.slice`;
//! - cgroupfs: `kubepods/<qos>/pod<UID>/<ID>`, guaranteed pods as `kubepods/pod<UID>`.
//!
//! The pod-level directory is the identity anchor: every container of the pod (and the sandbox)
//! sits below it, so the kernel's deepest-anchor walk finds the pod from any of them.
use std::{
    fs,
    path::{Path, PathBuf},
};

/// The kubelet's pod roots, in the order they are looked for on the cgroup2 mount.
pub const POD_ROOTS: [&str; 2] = ["kubepods.slice", "kubepods"];
/// QoS classes that have their own level (guaranteed pods have none).
const QOS: [&str; 2] = ["burstable", "besteffort"];
/// How deep below a pod cgroup processes are looked for (containers, their sub-cgroups).
const MAX_DEPTH: usize = 6;
/// Processes looked at per pod before giving up (one is enough; the rest are bounded).
const MAX_PIDS: usize = 4096;

/// The kubelet's pod cgroup root below `mount` (`kubepods.slice` for the systemd driver,
/// `kubepods` for cgroupfs), if there is one.
pub fn pod_root(mount: &Path) -> Option<PathBuf> {
    POD_ROOTS
        .iter()
        .map(|name| mount.join(name))
        .find(|path| path.is_dir())
}

/// The pod UID a pod-level cgroup directory's name stands for, if it is one: systemd's
/// `kubepods[-<qos>]-pod<UID with _>.slice` or cgroupfs's `pod<UID>`.
pub fn pod_uid(dir_name: &str) -> Option<String> {
    let uid = if let Some(slice) = dir_name.strip_suffix(".slice") {
        let rest = slice.strip_prefix("kubepods-")?;
        let rest = QOS
            .iter()
            .find_map(|qos| rest.strip_prefix(qos)?.strip_prefix('-'))
            .unwrap_or(rest);
        // systemd escapes '-' in unit names; the kubelet writes the UID's dashes as '_'.
        rest.strip_prefix("pod")?.replace('_', "-")
    } else {
        dir_name.strip_prefix("pod")?.to_owned()
    };
    is_uid(&uid).then_some(uid)
}

/// A Kubernetes UID as the kubelet names cgroups after it: hex digits and dashes.
fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// The directories below `root` that hold pod cgroups: `root` itself (guaranteed pods) and
/// each QoS level, in either driver's naming.
fn pod_parents(root: &Path) -> Vec<PathBuf> {
    let mut parents = vec![root.to_owned()];
    for qos in QOS {
        for name in [format!("kubepods-{qos}.slice"), qos.to_owned()] {
            let dir = root.join(name);
            if dir.is_dir() {
                parents.push(dir);
            }
        }
    }
    parents
}

/// Every pod cgroup below the pod root: (UID, pod-level directory).
pub fn pods(root: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for parent in pod_parents(root) {
        for entry in fs::read_dir(&parent).into_iter().flatten().flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if let Some(uid) = entry.file_name().to_str().and_then(pod_uid) {
                found.push((uid, entry.path()));
            }
        }
    }
    found
}

/// The pod-level cgroup of pod `uid` below the pod root, if the kubelet made it.
pub fn find_pod(root: &Path, uid: &str) -> Option<PathBuf> {
    pods(root)
        .into_iter()
        .find(|(found, _)| found == uid)
        .map(|(_, path)| path)
}

/// The pod a cgroup path belongs to: the UID of the pod-level directory on its way down from
/// `root`, if any.
pub fn pod_of(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    rel.components()
        .take(2)
        .find_map(|c| c.as_os_str().to_str().and_then(pod_uid))
}

/// Whether a cgroup directory below a pod is the pod's (CRI-O's `crio-conmon-*` monitor is not:
/// it runs in the host's network namespace).
fn belongs_to_pod(dir_name: &str) -> bool {
    !dir_name.starts_with("crio-conmon-")
}

/// The processes in a pod's cgroups (the pod level and every container below it, CRI-O's
/// monitor left out), at most [`MAX_PIDS`].
pub fn pod_processes(pod: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    collect_pids(pod, 0, &mut pids);
    pids
}

fn collect_pids(dir: &Path, depth: usize, pids: &mut Vec<u32>) {
    if depth > MAX_DEPTH || pids.len() >= MAX_PIDS {
        return;
    }
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(
            procs
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .take(MAX_PIDS - pids.len()),
        );
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let keep = entry.file_type().is_ok_and(|t| t.is_dir())
            && entry.file_name().to_str().is_some_and(belongs_to_pod);
        if keep {
            collect_pids(&entry.path(), depth + 1, pids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f1c2a9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b";

    #[test]
    fn pod_directory_names_of_both_drivers_and_all_qos_classes() {
        let underscored = UID.replace('-', "_");
        for name in [
            format!("kubepods-burstable-pod{underscored}.slice"),
            format!("kubepods-besteffort-pod{underscored}.slice"),
            format!("kubepods-pod{underscored}.slice"),
            format!("pod{UID}"),
        ] {
            assert_eq!(pod_uid(&name).as_deref(), Some(UID), "{name}");
        }
        for name in [
            "kubepods-burstable.slice",
            "kubepods-besteffort.slice",
            "burstable",
            "besteffort",
            "cri-containerd-0123abcd.scope",
            "crio-0123abcd.scope",
            "0123abcdef",
            "kubepods-burstable-podnot/a/uid.slice",
            "pod",
            "system.slice",
        ] {
            assert_eq!(pod_uid(name), None, "{name}");
        }
    }

    #[test]
    fn finds_pods_in_a_kubepods_layout_and_the_pod_of_a_container_cgroup() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(pod_root(tmp.path()), None);
        let root = tmp.path().join("kubepods.slice");
        let u = |uid: &str| uid.replace('-', "_");
        let burstable = root
            .join("kubepods-burstable.slice")
            .join(format!("kubepods-burstable-pod{}.slice", u(UID)));
        let guaranteed_uid = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
        let guaranteed = root.join(format!("kubepods-pod{}.slice", u(guaranteed_uid)));
        let container = burstable.join("cri-containerd-0123abcd.scope");
        for dir in [&container, &guaranteed] {
            fs::create_dir_all(dir).expect("mkdir");
        }
        assert_eq!(pod_root(tmp.path()), Some(root.clone()));
        let mut all = pods(&root);
        all.sort();
        assert_eq!(
            all,
            vec![
                (UID.to_owned(), burstable.clone()),
                (guaranteed_uid.to_owned(), guaranteed.clone()),
            ]
        );
        assert_eq!(find_pod(&root, UID), Some(burstable.clone()));
        assert_eq!(find_pod(&root, "0000"), None);
        assert_eq!(pod_of(&root, &container).as_deref(), Some(UID));
        assert_eq!(pod_of(&root, &guaranteed).as_deref(), Some(guaranteed_uid));
        assert_eq!(pod_of(&root, &root.join("kubepods-burstable.slice")), None);
        assert_eq!(pod_of(&root, Path::new("/elsewhere")), None);
    }

    #[test]
    fn cgroupfs_layout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("kubepods");
        let pod = root.join("besteffort").join(format!("pod{UID}"));
        fs::create_dir_all(pod.join("0123abcdef")).expect("mkdir");
        assert_eq!(pod_root(tmp.path()), Some(root.clone()));
        assert_eq!(find_pod(&root, UID), Some(pod.clone()));
        assert_eq!(pod_of(&root, &pod.join("0123abcdef")).as_deref(), Some(UID));
    }

    #[test]
    fn processes_of_a_pod_leave_out_crio_conmon() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pod = tmp.path().join("pod");
        let app = pod.join("crio-0123.scope");
        let conmon = pod.join("crio-conmon-0123.scope");
        for (dir, procs) in [(&pod, ""), (&app, "42\n43\n"), (&conmon, "7\n")] {
            fs::create_dir_all(dir).expect("mkdir");
            fs::write(dir.join("cgroup.procs"), procs).expect("procs");
        }
        let mut pids = pod_processes(&pod);
        pids.sort();
        assert_eq!(pids, vec![42, 43]);
    }
}
