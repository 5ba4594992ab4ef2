//! P: E's load from inside a pod, as the DaemonSet agent (`egress run --kubernetes`) serves it
//! (issue 11). A real control plane (etcd and kube-apiserver on loopback, [`ControlPlane`]), a
//! node's kubelet cgroup root ([`Node`]), and per round a pod ([`Pod`]): a Pod object scheduled
//! to the node (nothing runs its image), its own network namespace with only `lo`, a cgroup in
//! the kubelet's systemd layout named by the Pod's server-assigned UID, and a sandbox process
//! in both, so the agent finds the pod's namespace through its cgroup. The load generator runs
//! in that namespace and cgroup; the upstream (nginx) stays in the host's namespace, which the
//! agent connects from, so the pod needs no route.
//!
//! Every guard's Drop stops its processes by pid and removes what it made (Pod object, network
//! namespace, cgroups, temporary directory), also when a measurement failed.
use std::{
    fs,
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    LOAD_CPU, check_interrupted, free_ports, http_get, nginx, remove_cgroup_tree, remove_dir_all,
    run_cleanup, stop_child, wait_bounded,
};
use crate::cmd;

/// How long etcd plus kube-apiserver 1.20 may take to answer `/readyz` (about 10 s idle).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one kubectl, ip or openssl command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to serve a new pod (it retries in short steps).
const SERVED_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a sandbox process may take to be in its cgroup.
const SANDBOX_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's CRDs (the agent may watch them; the bench's policy still comes from its file).
const ISTIO_CRDS: &str = include_str!("../../../deploy/crds/istio.yaml");
/// The label that enrolls a namespace's pods, with Istio's default value.
pub const ENROLL_LABEL: &str = "istio.io/dataplane-mode";
pub const ENROLL_VALUE: &str = "ambient";

/// etcd and kube-apiserver on free loopback ports with their own data, certificates, static
/// admin token and kubeconfig in a temporary directory.
pub struct ControlPlane {
    dir: PathBuf,
    kubectl: PathBuf,
    pub kubeconfig: PathBuf,
    /// Field order is drop order: the API server stops before etcd.
    apiserver: Option<Child>,
    etcd: Option<Child>,
    /// From spawning etcd until `/readyz` answered ok.
    pub startup: Duration,
}

impl ControlPlane {
    /// Starts both and waits for `/readyz`, then installs Istio's CRDs and labels namespace
    /// `default` for enrollment.
    pub fn start() -> anyhow::Result<ControlPlane> {
        let assets = crate::kube::control_plane()?;
        let dir = std::env::temp_dir().join(format!("egress-bench-{}-cluster", std::process::id()));
        remove_dir_all(&dir);
        fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.join("logs").display()))?;
        let mut cp = ControlPlane {
            kubectl: assets.join("kubectl"),
            kubeconfig: dir.join("kubeconfig"),
            dir: dir.clone(),
            apiserver: None,
            etcd: None,
            startup: Duration::ZERO,
        };
        let path = |file: &str| dir.join(file).to_string_lossy().into_owned();
        // A serving certificate for 127.0.0.1 from a throw-away CA, and the service-account
        // signing key 1.20 insists on.
        nginx::certificates(&dir, "kube-apiserver", "IP:127.0.0.1,DNS:localhost")?;
        cp.tool(
            Command::new("openssl").args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &path("sa-key.pem"),
            ]),
            "openssl-sa",
        )?;
        cp.tool(
            Command::new("openssl").args([
                "pkey",
                "-in",
                &path("sa-key.pem"),
                "-pubout",
                "-out",
                &path("sa-pub.pem"),
            ]),
            "openssl-sa-pub",
        )?;
        let token = random_token()?;
        fs::write(
            dir.join("tokens.csv"),
            format!("{token},admin,admin,\"system:masters\"\n"),
        )
        .context("writing the token file")?;
        let [client, peer, secure] = free_ports()?;
        let url = format!("https://127.0.0.1:{}", secure.port());
        fs::write(
            &cp.kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters:\n- name: bench\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\n\
                 users:\n- name: admin\n  user:\n    token: {token}\n\
                 contexts:\n- name: bench\n  context:\n    cluster: bench\n    user: admin\n\
                 current-context: bench\n",
                ca = path("ca.pem"),
            ),
        )
        .context("writing the kubeconfig")?;

        let started = Instant::now();
        let (client, peer) = (client.port(), peer.port());
        let mut etcd = Command::new(assets.join("etcd"));
        etcd.arg("--name=bench")
            .arg(format!("--data-dir={}", path("etcd")))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=bench=http://127.0.0.1:{peer}"));
        cp.etcd = Some(spawn(&mut etcd, &dir.join("logs/etcd.log"))?);
        let mut apiserver = Command::new(assets.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers=http://127.0.0.1:{client}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", secure.port()))
            .arg(format!("--tls-cert-file={}", path("server.pem")))
            .arg(format!("--tls-private-key-file={}", path("server-key.pem")))
            .arg(format!("--cert-dir={}", path("certs")))
            .arg(format!("--token-auth-file={}", path("tokens.csv")))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-key-file={}", path("sa-pub.pem")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                path("sa-key.pem")
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            // TEST-NET space routed nowhere.
            .arg("--service-cluster-ip-range=198.18.0.0/20")
            // ServiceAccount admission waits for a token controller that is not running.
            .arg("--disable-admission-plugins=ServiceAccount");
        cp.apiserver = Some(spawn(&mut apiserver, &dir.join("logs/apiserver.log"))?);
        cp.wait_ready(&url, &token)?;
        cp.startup = started.elapsed();

        cp.kubectl_in(&["apply", "-f", "-"], ISTIO_CRDS)?;
        cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/serviceentries.networking.istio.io",
            "crd/destinationrules.networking.istio.io",
            "crd/authorizationpolicies.security.istio.io",
        ])?;
        cp.kubectl_in(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels:\n    \
                 {ENROLL_LABEL}: {ENROLL_VALUE}\n"
            ),
        )?;
        Ok(cp)
    }

    fn wait_ready(&mut self, url: &str, token: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let ca = self.dir.join("ca.pem");
        loop {
            check_interrupted()?;
            for (what, child, log) in [
                ("etcd", &mut self.etcd, "etcd.log"),
                ("kube-apiserver", &mut self.apiserver, "apiserver.log"),
            ] {
                if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    *child = None;
                    bail!(
                        "{what} exited ({status}) before the control plane was ready; the end \
                         of its log:\n{}",
                        tail(&self.dir.join("logs").join(log), 40)
                    );
                }
            }
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "2", "--cacert"])
                .arg(&ca)
                .args(["-H", &format!("Authorization: Bearer {token}")])
                .arg(format!("{url}/readyz"))
                .stdin(Stdio::null())
                .output()
                .context("could not run curl")?;
            let body = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && body.trim() == "ok" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let last = format!("{body}{}", String::from_utf8_lossy(&out.stderr));
                bail!(
                    "kube-apiserver at {url} was not ready within {READY_TIMEOUT:?}; last \
                     /readyz: {}; the end of its log:\n{}",
                    last.trim(),
                    tail(&self.dir.join("logs/apiserver.log"), 40)
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// `kubectl --kubeconfig K ARGS...` (bounded); its stdout when it succeeds.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_run(args, None)
    }

    /// As [`ControlPlane::kubectl`], with `input` on stdin (`apply -f -`).
    pub fn kubectl_in(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        self.kubectl_run(args, Some(input))
    }

    fn kubectl_run(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        let mut command = Command::new(&self.kubectl);
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        let line = cmd::display(&command);
        let out = self.dir.join("logs/kubectl.out");
        let err = self.dir.join("logs/kubectl.err");
        let mut child = command
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(fs::File::create(&out)?)
            .stderr(fs::File::create(&err)?)
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(input.as_bytes())
                .with_context(|| format!("writing to `{line}`"))?;
        }
        let status = wait_bounded(&mut child, COMMAND_TIMEOUT, &line)?;
        let stdout = fs::read_to_string(&out).unwrap_or_default();
        if !status.success() {
            bail!(
                "`{line}` failed ({status}): {}{}",
                stdout.trim(),
                fs::read_to_string(&err).unwrap_or_default().trim()
            );
        }
        Ok(stdout)
    }

    /// A short helper command (openssl, ip), bounded, its output in `logs/<name>.log`.
    fn tool(&self, command: &mut Command, name: &str) -> anyhow::Result<()> {
        run_quiet(command, &self.dir.join(format!("logs/{name}.log")))
    }

    /// Keeps the control plane's logs next to the results.
    pub fn keep_logs(&self, dir: &Path) {
        for log in ["etcd.log", "apiserver.log"] {
            let _ = fs::copy(
                self.dir.join("logs").join(log),
                dir.join(format!("cluster-{log}")),
            );
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            if let Some(mut child) = child.take() {
                stop_child(&mut child, Duration::from_secs(5));
            }
        }
        remove_dir_all(&self.dir);
    }
}

/// A node: its name (`spec.nodeName` of its pods, `--node-name` of its agent) and its kubelet
/// pod cgroup root, `<cgroup2>/egress-bench-<pid>-node/kubepods.slice` (`--cgroup` of the
/// agent), with the besteffort QoS level below it.
pub struct Node {
    pub name: String,
    top: PathBuf,
    cgroup_root: PathBuf,
    pub pod_root: PathBuf,
}

impl Node {
    pub fn new(cgroup_root: &Path) -> anyhow::Result<Node> {
        let name = format!("egress-bench-{}-node", std::process::id());
        let top = cgroup_root.join(&name);
        // Leftovers of an earlier run with the same pid.
        remove_cgroup_tree(&top, cgroup_root);
        let node = Node {
            pod_root: top.join("kubepods.slice"),
            name,
            top,
            cgroup_root: cgroup_root.to_owned(),
        };
        let qos = node.pod_root.join("kubepods-besteffort.slice");
        fs::create_dir_all(&qos).with_context(|| format!("creating {}", qos.display()))?;
        Ok(node)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.top, &self.cgroup_root);
    }
}

/// A pod on a [`Node`]: Pod object, network namespace, kubepods-layout cgroup, sandbox.
pub struct Pod<'a> {
    cluster: &'a ControlPlane,
    node: &'a Node,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The `ip netns` name: `/run/netns/<netns>`.
    netns: Option<String>,
    /// The pod-level cgroup (`kubepods-besteffort-pod<UID>.slice`).
    cgroup: PathBuf,
    /// The container's cgroup below it, where the sandbox and the load run.
    container: PathBuf,
    sandbox: Option<Child>,
    object: bool,
}

impl<'a> Pod<'a> {
    /// Creates Pod `namespace/name` (service account `service_account`) on `node`, reads its
    /// UID, makes its network namespace (`lo` up, nothing else) and cgroup, and starts its
    /// sandbox (`sleep`) in both.
    pub fn start(
        cluster: &'a ControlPlane,
        node: &'a Node,
        namespace: &str,
        name: &str,
        service_account: &str,
    ) -> anyhow::Result<Pod<'a>> {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  \
             labels:\n    app: {name}\nspec:\n  nodeName: {node}\n  serviceAccountName: \
             {service_account}\n  containers:\n  - name: app\n    image: \
             egress-bench.invalid/nothing-runs-this:0\n",
            node = node.name,
        );
        let mut pod = Pod {
            cluster,
            node,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: String::new(),
            netns: None,
            cgroup: PathBuf::new(),
            container: PathBuf::new(),
            sandbox: None,
            object: false,
        };
        cluster.kubectl_in(&["apply", "-f", "-"], &yaml)?;
        pod.object = true;
        pod.uid = cluster
            .kubectl(&[
                "get",
                "pod",
                name,
                "-n",
                namespace,
                "-o",
                "jsonpath={.metadata.uid}",
            ])?
            .trim()
            .to_owned();
        if pod.uid.is_empty() || !pod.uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            bail!("pod {namespace}/{name} has no usable UID: {:?}", pod.uid);
        }

        let netns = format!("egress-bench-{}-{name}", std::process::id());
        let _ = run_quiet(
            Command::new("ip").args(["netns", "del", &netns]),
            &pod.log("ip-netns-del-stale"),
        );
        run_quiet(
            Command::new("ip").args(["netns", "add", &netns]),
            &pod.log("ip-netns-add"),
        )?;
        pod.netns = Some(netns.clone());
        run_quiet(
            Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]),
            &pod.log("ip-lo-up"),
        )?;

        pod.cgroup = node
            .pod_root
            .join("kubepods-besteffort.slice")
            .join(format!(
                "kubepods-besteffort-pod{}.slice",
                pod.uid.replace('-', "_")
            ));
        pod.container = pod.cgroup.join(format!(
            "cri-containerd-{:016x}.scope",
            u64::from(std::process::id())
        ));
        fs::create_dir_all(&pod.container)
            .with_context(|| format!("creating {}", pod.container.display()))?;
        // The sandbox enters the namespace first and the cgroup second: every process the
        // agent finds in the cgroup is already in the pod's namespace.
        let mut sandbox = pod.command(Path::new("sleep"));
        sandbox
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        pod.sandbox = Some(
            sandbox
                .spawn()
                .context("could not start the pod's sandbox process")?,
        );
        let deadline = Instant::now() + SANDBOX_TIMEOUT;
        while fs::read_to_string(pod.container.join("cgroup.procs"))
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            check_interrupted()?;
            if Instant::now() >= deadline {
                bail!(
                    "the sandbox of pod {namespace}/{name} was not in {} within \
                     {SANDBOX_TIMEOUT:?}",
                    pod.container.display()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(pod)
    }

    /// `nsenter --net=/run/netns/<netns> -- sh -c 'echo $$ > <container>/cgroup.procs && exec
    /// "$@"' ... PROGRAM`: runs `program` (arguments appended by the caller) in the pod's
    /// network namespace and container cgroup; it joins the cgroup before it execs, so every
    /// connect it makes is the pod's.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!(
                "--net=/run/netns/{}",
                self.netns.as_deref().unwrap_or("missing")
            ))
            .args(["--", "sh", "-c", r#"echo $$ > "$0" && exec "$@""#])
            .arg(self.container.join("cgroup.procs"))
            .arg(program);
        command
    }

    /// As [`Pod::command`], pinned to the load generator's CPU.
    pub fn load_command(&self, program: &Path) -> Command {
        let mut command = self.command(Path::new("taskset"));
        command.args(["-c", LOAD_CPU]).arg(program);
        command
    }

    /// Waits until the agent whose admin endpoint is `admin` lists this pod on `/pods` with a
    /// netns cookie (its listener is open inside the pod).
    pub fn wait_served(&self, admin: std::net::SocketAddr) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut last = String::new();
        loop {
            check_interrupted()?;
            if let Ok((200, body)) = http_get(admin, "/pods") {
                if served(&body, &self.uid) {
                    return Ok(started.elapsed());
                }
                last = body;
            }
            if started.elapsed() >= SERVED_TIMEOUT {
                bail!(
                    "pod {}/{} (uid {}) was not served by the agent within \
                     {SERVED_TIMEOUT:?}; /pods: {}",
                    self.namespace,
                    self.name,
                    self.uid,
                    last.trim()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.cluster
            .dir
            .join(format!("logs/{}-{name}.log", self.name))
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if let Some(mut sandbox) = self.sandbox.take() {
            let _ = sandbox.kill();
            let _ = sandbox.wait();
        }
        if self.object
            && let Err(e) = self.cluster.kubectl(&[
                "delete",
                "pod",
                &self.name,
                "-n",
                &self.namespace,
                // No kubelet confirms termination: without this the object stays (terminating)
                // and the next round's pod of the same name would be this one.
                "--grace-period=0",
                "--force",
                "--wait=false",
            ])
        {
            eprintln!("deleting pod {}/{}: {e:#}", self.namespace, self.name);
        }
        if !self.cgroup.as_os_str().is_empty() {
            remove_cgroup_tree(&self.cgroup, &self.node.cgroup_root);
        }
        // Also on Ctrl-C (run_quiet would stop at the interrupt and leave the netns behind).
        if let Some(netns) = self.netns.take()
            && let Err(e) = run_cleanup(
                Command::new("ip").args(["netns", "del", &netns]),
                &self.log("ip-netns-del"),
                COMMAND_TIMEOUT,
            )
        {
            eprintln!("removing network namespace {netns}: {e:#}");
        }
    }
}

/// Whether the agent's `/pods` JSON lists `uid` with a netns cookie.
pub fn served(pods_json: &str, uid: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(pods_json) else {
        return false;
    };
    value["pods"].as_array().is_some_and(|pods| {
        pods.iter()
            .any(|p| p["uid"] == uid && p["netns_cookie"].is_u64())
    })
}

fn spawn(command: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let line = cmd::display(command);
    println!("    $ {line}");
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        // Its own process group: Ctrl-C goes to xtask, which stops it by pid.
        .process_group(0)
        .spawn()
        .with_context(|| format!("could not start `{line}`"))
}

/// Runs `command` bounded, output to `log`; an error with that output when it fails.
fn run_quiet(command: &mut Command, log: &Path) -> anyhow::Result<()> {
    let line = cmd::display(command);
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let status = wait_bounded(&mut child, COMMAND_TIMEOUT, &line)?;
    if !status.success() {
        bail!(
            "`{line}` failed ({status}): {}",
            fs::read_to_string(log).unwrap_or_default().trim()
        );
    }
    Ok(())
}

/// 32 hex digits from /dev/urandom.
fn random_token() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_served_once_listed_with_a_netns_cookie() {
        let uid = "6f1c-22";
        assert!(served(
            r#"{"pods": [{"uid": "x"}, {"uid": "6f1c-22", "netns_cookie": 4097}]}"#,
            uid
        ));
        // Listed but no listener yet, another pod, or no JSON at all.
        assert!(!served(
            r#"{"pods": [{"uid": "6f1c-22", "netns_cookie": null}]}"#,
            uid
        ));
        assert!(!served(
            r#"{"pods": [{"uid": "7", "netns_cookie": 1}]}"#,
            uid
        ));
        assert!(!served("not json", uid));
    }

    /// The whole fixture for real: a control plane, a node, a pod whose commands run in its
    /// own network namespace (only `lo`) and container cgroup; after Drop the Pod object, the
    /// namespace and every cgroup are gone.
    #[test]
    #[ignore = "needs root and the control plane of `cargo xtask prereqs`; run with --ignored"]
    fn a_pod_runs_commands_in_its_netns_and_cgroup_and_drop_removes_it() {
        let mount = super::super::cgroup2_mount().expect("a cgroup2 mount");
        let cluster = ControlPlane::start().expect("the control plane starts");
        let label = cluster
            .kubectl(&[
                "get",
                "namespace",
                "default",
                "-o",
                "jsonpath={.metadata.labels}",
            ])
            .expect("kubectl get namespace");
        assert!(label.contains(ENROLL_LABEL), "{label}");
        let node = Node::new(&mount).expect("the node's cgroups");
        let pod_root = node.pod_root.clone();
        let (netns, cgroup) = {
            let pod = Pod::start(&cluster, &node, "default", "sleep", "sleep").expect("a pod");
            assert!(
                pod.cgroup
                    .to_string_lossy()
                    .contains(&pod.uid.replace('-', "_"))
            );
            let out = pod
                .command(Path::new("sh"))
                .args(["-c", "cat /proc/self/cgroup; ip -o link"])
                .output()
                .expect("running a command in the pod");
            let out = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.contains("cri-containerd-"), "{out}");
            assert!(out.contains(": lo:") && !out.contains("eth"), "{out}");
            let sa = cluster
                .kubectl(&[
                    "get",
                    "pod",
                    "sleep",
                    "-o",
                    "jsonpath={.spec.serviceAccountName}",
                ])
                .expect("kubectl get pod");
            assert_eq!(sa.trim(), "sleep");
            (pod.netns.clone().expect("a netns"), pod.cgroup.clone())
        };
        assert!(!Path::new("/run/netns").join(&netns).exists());
        assert!(!cgroup.exists());
        let pods = cluster
            .kubectl(&["get", "pods", "-o", "name"])
            .expect("kubectl get pods");
        // Deleted with --wait=false: gone, or going.
        if !pods.trim().is_empty() {
            let deleting = cluster
                .kubectl(&[
                    "get",
                    "pod",
                    "sleep",
                    "-o",
                    "jsonpath={.metadata.deletionTimestamp}",
                ])
                .unwrap_or_default();
            assert!(!deleting.trim().is_empty(), "pod sleep not deleted: {pods}");
        }
        drop(node);
        assert!(!pod_root.exists());
    }

    #[test]
    fn tokens_are_32_hex_digits_and_differ() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
