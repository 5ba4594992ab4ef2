//! Kubernetes pods for a test, as the node agent meets them: a Pod object in a real API server
//! (scheduled to the test's node; nothing runs its image), a network namespace of its own, and a
//! cgroup in the kubelet's systemd layout named by the Pod's server-assigned UID, with a
//! "sandbox" process in both so the agent can find the pod's namespace through the cgroup.
//!
//! ```no_run
//! use egress_tests::*;
//!
//! let cluster = Cluster::start();
//! let node = Node::new(&cluster);
//! let sleep = node.pod("default", "sleep").service_account("sleep").start();
//! let out = sleep.curl(&["-sS", "http://httpbin.test/get"]);
//! ```
//!
//! Dropping a pod kills its processes, deletes the Pod object, removes its cgroups and network
//! namespace, also when the test panicked; dropping the node removes its cgroup root.
use std::{
    fs,
    io::ErrorKind,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::{
    Cluster, Resolver, Upstream,
    environment::cgroup2_mount,
    process::{COMMAND_TIMEOUT, Output, bounded_curl_args, run_bounded},
};

static NEXT: AtomicUsize = AtomicUsize::new(0);
/// How long a pod's sandbox process may take to be in its cgroup.
const SANDBOX_TIMEOUT: Duration = Duration::from_secs(10);

/// A node of the cluster: its name (pods are scheduled to it with `spec.nodeName`) and its
/// kubelet pod cgroup root, `<cgroup2>/egress-test-<pid>-node<n>/kubepods.slice`.
pub struct Node<'c> {
    cluster: &'c Cluster,
    name: String,
    /// The test cgroup the layout sits in.
    top: PathBuf,
    pod_root: PathBuf,
}

impl<'c> Node<'c> {
    pub fn new(cluster: &'c Cluster) -> Self {
        let mount = cgroup2_mount().expect("a cgroup2 mount (require_privileges checks)");
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("egress-test-{}-node{n}", std::process::id());
        let top = mount.join(&name);
        let pod_root = top.join("kubepods.slice");
        for qos in ["", "kubepods-besteffort.slice", "kubepods-burstable.slice"] {
            fs::create_dir_all(pod_root.join(qos)).expect("creating the kubepods layout");
        }
        Node {
            cluster,
            name,
            top,
            pod_root,
        }
    }

    /// The node's name (`--node-name` of its agent).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kubelet's pod cgroup root (`--cgroup` of its agent).
    pub fn pod_root(&self) -> &Path {
        &self.pod_root
    }

    pub fn cluster(&self) -> &'c Cluster {
        self.cluster
    }

    /// A pod to start on this node: `node.pod("default", "sleep").service_account("sleep").start()`.
    pub fn pod<'n>(&'n self, namespace: &str, name: &str) -> PodBuilder<'n, 'c> {
        PodBuilder {
            node: self,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            service_account: None,
            labels: Vec::new(),
            host_network: false,
        }
    }
}

impl Drop for Node<'_> {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.top);
    }
}

/// A pod being described; [`PodBuilder::start`] makes it.
pub struct PodBuilder<'n, 'c> {
    node: &'n Node<'c>,
    namespace: String,
    name: String,
    service_account: Option<String>,
    labels: Vec<(String, String)>,
    host_network: bool,
}

impl<'n, 'c> PodBuilder<'n, 'c> {
    /// `spec.serviceAccountName` (default: none, which Kubernetes reads as `default`).
    pub fn service_account(mut self, name: &str) -> Self {
        self.service_account = Some(name.to_owned());
        self
    }

    /// A label of the Pod object, e.g. `("istio.io/dataplane-mode", "none")`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `spec.hostNetwork: true`: the pod's processes stay in the host's network namespace.
    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }

    /// Creates the Pod object, reads its UID, makes its network namespace and cgroup, and
    /// starts its sandbox process in both.
    #[track_caller]
    pub fn start(self) -> Pod<'n, 'c> {
        let cluster = self.node.cluster;
        let labels: String = self
            .labels
            .iter()
            .map(|(k, v)| format!("\n    {k}: \"{v}\""))
            .collect();
        let sa = self
            .service_account
            .as_ref()
            .map(|sa| format!("\n  serviceAccountName: {sa}"))
            .unwrap_or_default();
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\
             \n    app: {name}{labels}\nspec:\n  nodeName: {node}{sa}\n  hostNetwork: {host}\
             \n  containers:\n  - name: app\n    image: egress-test.invalid/nothing-runs-this:0\n",
            name = self.name,
            ns = self.namespace,
            node = self.node.name,
            host = self.host_network,
        );
        cluster.apply(&yaml);
        let uid = cluster.get("pod", &self.namespace, &self.name, "{.metadata.uid}");
        assert!(
            !uid.is_empty(),
            "pod {}/{} has no UID",
            self.namespace,
            self.name
        );

        let netns = (!self.host_network).then(|| {
            let name = format!(
                "egress-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            );
            let _ = run_bounded(
                Command::new("ip").args(["netns", "del", &name]),
                COMMAND_TIMEOUT,
            );
            run_bounded(
                Command::new("ip").args(["netns", "add", &name]),
                COMMAND_TIMEOUT,
            )
            .expect_success("ip netns add");
            run_bounded(
                Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]),
                COMMAND_TIMEOUT,
            )
            .expect_success("ip link set lo up in the pod's netns");
            name
        });
        let pod_cgroup = self
            .node
            .pod_root
            .join("kubepods-besteffort.slice")
            .join(format!(
                "kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            ));
        let container = pod_cgroup.join(format!(
            "cri-containerd-{:016x}.scope",
            std::process::id() as usize * 1000 + NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&container).expect("creating the pod's cgroup");
        let mut pod = Pod {
            node: self.node,
            namespace: self.namespace,
            name: self.name,
            uid,
            netns,
            cgroup: pod_cgroup,
            container,
            sandbox: None,
            deleted: false,
            resolv_conf: None,
        };
        // The sandbox enters the namespace first and the cgroup second, so that every process
        // the agent finds in the cgroup is already in the pod's namespace.
        let sandbox = pod
            .command("sleep", &["600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the pod's sandbox process");
        pod.sandbox = Some(sandbox);
        let deadline = Instant::now() + SANDBOX_TIMEOUT;
        while fs::read_to_string(pod.container.join("cgroup.procs"))
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "the sandbox never entered its cgroup"
            );
            thread::sleep(Duration::from_millis(10));
        }
        pod
    }
}

/// A started pod; see [`PodBuilder::start`].
pub struct Pod<'n, 'c> {
    node: &'n Node<'c>,
    namespace: String,
    name: String,
    uid: String,
    /// `None` for a hostNetwork pod.
    netns: Option<String>,
    cgroup: PathBuf,
    container: PathBuf,
    sandbox: Option<Child>,
    deleted: bool,
    /// The /etc/resolv.conf its commands see (a bind mount in a mount namespace of their own);
    /// `None`: the machine's.
    resolv_conf: Option<PathBuf>,
}

impl Pod<'_, '_> {
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The pod-level cgroup (the agent's identity anchor for it).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The cgroup id of the pod-level cgroup (its inode), as the kernel's anchor map keys it.
    pub fn cgroup_id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&self.cgroup).expect("the pod cgroup").ino()
    }

    /// `/run/netns/<name>`, `None` for a hostNetwork pod.
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.netns.as_ref().map(|n| Path::new("/run/netns").join(n))
    }

    /// The command that runs `program args...` in the pod: in its network namespace and its
    /// container's cgroup (uncaptured until it is there: it joins the cgroup itself, then
    /// execs), with the pod's resolv.conf ([`Pod::use_resolver`]) if it has one.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let procs = self.container.join("cgroup.procs");
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{netns}")).arg("--");
                c
            }
            None => Command::new("env"),
        };
        match &self.resolv_conf {
            None => {
                command
                    .arg("sh")
                    .arg("-c")
                    .arg(r#"echo $$ > "$0" && exec "$@""#)
                    .arg(procs);
            }
            Some(resolv_conf) => {
                // A private mount namespace: the bind mount is this process's alone.
                command
                    .args(["unshare", "-m", "--propagation", "private", "--", "sh", "-c"])
                    .arg(
                        r#"mount --bind "$1" /etc/resolv.conf && shift && echo $$ > "$0" && exec "$@""#,
                    )
                    .arg(procs)
                    .arg(resolv_conf);
            }
        }
        command.arg(program).args(args);
        command
    }

    /// A dnsmasq on `ip:53` inside the pod's network namespace (what a cluster DNS service is
    /// to a pod: reachable from the pod, not from the node's loopback), started by the test in
    /// no cgroup of the pod. Panics for a hostNetwork pod.
    #[track_caller]
    pub fn resolver(
        &self,
        ip: std::net::Ipv4Addr,
        hosts: &[(&str, std::net::Ipv4Addr)],
    ) -> Resolver {
        let netns = self
            .netns_path()
            .expect("a resolver inside a pod needs the pod's own network namespace");
        Resolver::dnsmasq_in(&netns, ip, hosts)
    }

    /// From now on the pod's commands see `resolver`'s resolv.conf as /etc/resolv.conf.
    pub fn use_resolver(&mut self, resolver: &Resolver) {
        self.resolv_conf = Some(resolver.resolv_conf());
    }

    /// `program args...` in the pod, bounded.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        run_bounded(&mut self.command(program, args), COMMAND_TIMEOUT)
    }

    /// `curl ARGS...` in the pod (with connect and total time bounds).
    pub fn curl(&self, args: &[&str]) -> Output {
        let args: Vec<&str> = bounded_curl_args(args).collect();
        self.run("curl", &args)
    }

    /// An HTTP server on `addr` inside the pod's network namespace (the host's for a
    /// hostNetwork pod), started by the test in no cgroup of the pod: what a connect that is
    /// left alone reaches.
    pub fn upstream_at(&self, addr: SocketAddr) -> Upstream {
        let Some(netns) = self.netns_path() else {
            return Upstream::http_at(addr);
        };
        thread::scope(|s| {
            s.spawn(|| {
                let file = fs::File::open(&netns).expect("opening the pod's netns");
                // SAFETY: setns on an fd this thread holds; only this scoped thread changes
                // namespace, and it ends right after the bind.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns into {}", netns.display());
                Upstream::http_at(addr)
            })
            .join()
            .expect("binding an upstream in the pod's netns")
        })
    }

    /// `kubectl delete pod --grace-period=0 --force`: the object is gone at once, as when the
    /// kubelet (which the test cluster lacks) confirms a deletion. The sandbox keeps running
    /// until the pod is dropped.
    pub fn delete(&mut self) {
        self.node.cluster.delete(&[
            "pod",
            &self.name,
            "-n",
            &self.namespace,
            "--grace-period=0",
            "--force",
        ]);
        self.deleted = true;
    }
}

impl Drop for Pod<'_, '_> {
    fn drop(&mut self) {
        if let Some(mut sandbox) = self.sandbox.take() {
            let _ = sandbox.kill();
            let _ = sandbox.wait();
        }
        if !self.deleted {
            let out = self
                .node
                .cluster
                .kubectl(&[
                    "delete",
                    "pod",
                    &self.name,
                    "-n",
                    &self.namespace,
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                ])
                .run();
            if !out.success() {
                eprintln!("deleting pod {}: {out:?}", self.id());
            }
        }
        remove_cgroup_tree(&self.cgroup);
        if let Some(netns) = &self.netns {
            let out = run_bounded(
                Command::new("ip").args(["netns", "del", netns]),
                COMMAND_TIMEOUT,
            );
            if !out.success() {
                eprintln!("removing network namespace {netns}: {out:?}");
            }
        }
    }
}

/// Removes a cgroup tree bottom-up; processes still in it (only this test's) are killed by pid.
fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    for attempt in 1..=100 {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    // SAFETY: kill has no memory-safety preconditions; only this test's
                    // processes are in its cgroups.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            Err(e) if attempt == 100 => {
                eprintln!("removing cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}
