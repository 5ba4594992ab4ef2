//! A real Kubernetes control plane for a test: etcd and kube-apiserver on loopback, as the
//! DaemonSet agent will meet them (design §10, §12).
//!
//! ```no_run
//! use egress_tests::*;
//!
//! if !require_control_plane() {
//!     return;
//! }
//! let cluster = Cluster::start();
//! cluster.install_istio_crds();
//! cluster.apply(&std::fs::read_to_string("examples/httpbin.yaml").unwrap());
//! let uid = cluster.get("serviceentry", "default", "httpbin.org", "{.metadata.uid}");
//! ```
//!
//! The binaries come from `KUBEBUILDER_ASSETS` (a directory with `kube-apiserver`, `etcd` and
//! `kubectl`; `cargo xtask test` sets it), else from the cache `cargo xtask prereqs` builds. Each
//! cluster has its own ports, etcd data, certificates and kubeconfig in a temporary directory;
//! dropping it kills both processes by pid and removes the directory, also when the test
//! panicked (then it prints both logs first).
use std::{
    fmt::Write as _,
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{
    TestCa,
    process::{COMMAND_TIMEOUT, Output, curl, run_bounded_with_input},
};

/// Where `cargo xtask prereqs` caches the kube-apiserver it builds from Debian's source, as root.
pub const CACHED_ASSETS: &str = "/var/cache/egress/kube-apiserver-1.20.2";
/// The Service ClusterIP range: TEST-NET-ish space routed nowhere (design §12), never RFC 1918.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "198.18.0.0/20";
/// How long etcd plus kube-apiserver may take to be ready (1.20 needs ~10 s on an idle machine;
/// the budget is for a loaded one).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Istio's CRDs for the tests, as `egress crds` generates them.
const ISTIO_CRDS: &str = include_str!("../../deploy/crds/istio.yaml");
const ISTIO_CRD_NAMES: [&str; 3] = [
    "serviceentries.networking.istio.io",
    "destinationrules.networking.istio.io",
    "authorizationpolicies.security.istio.io",
];

static NEXT_CLUSTER: AtomicUsize = AtomicUsize::new(0);

/// The directory holding `kube-apiserver`, `etcd` and `kubectl`, or why there is none.
pub fn control_plane_assets() -> Result<PathBuf, String> {
    let (dir, origin) = match std::env::var_os("KUBEBUILDER_ASSETS") {
        Some(dir) => (PathBuf::from(dir), "KUBEBUILDER_ASSETS"),
        None => (
            PathBuf::from(CACHED_ASSETS),
            "the cache of `cargo xtask prereqs`",
        ),
    };
    let missing: Vec<&str> = ["kube-apiserver", "etcd", "kubectl"]
        .into_iter()
        .filter(|binary| !dir.join(binary).is_file())
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(format!(
            "no control plane: {} ({origin}) lacks {} (`cargo xtask prereqs` builds it, or set \
             KUBEBUILDER_ASSETS)",
            dir.display(),
            missing.join(", ")
        ))
    }
}

/// Who a cluster lets in besides its admin: static bearer tokens (`--token-auth-file`).
#[derive(Default)]
pub struct ClusterBuilder {
    /// (user name, groups)
    users: Vec<(String, Vec<String>)>,
}

impl ClusterBuilder {
    /// A user `name` with no groups but `system:authenticated`, and so no rights until RBAC
    /// grants some.
    pub fn user(mut self, name: &str) -> Self {
        self.users.push((name.to_owned(), Vec::new()));
        self
    }

    /// A user authenticated as ServiceAccount `namespace/name` (user
    /// `system:serviceaccount:NS:NAME`, groups `system:serviceaccounts[:NS]`), as a pod's token
    /// would be. The ServiceAccount object need not exist.
    pub fn service_account(mut self, namespace: &str, name: &str) -> Self {
        self.users.push((
            service_account_user(namespace, name),
            vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
            ],
        ));
        self
    }

    pub fn start(self) -> Cluster {
        Cluster::launch(self.users)
    }
}

/// `system:serviceaccount:NS:NAME`, the user name Kubernetes gives a ServiceAccount.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// etcd and kube-apiserver (secure port on 127.0.0.1, RBAC, static tokens, service-account
/// signing keys), ready, with an admin kubeconfig.
pub struct Cluster {
    name: String,
    dir: TempDir,
    assets: PathBuf,
    etcd: Child,
    apiserver: Child,
    url: String,
    /// user name → token
    tokens: Vec<(String, String)>,
}

impl Cluster {
    /// A cluster with only the admin user (group `system:masters`).
    pub fn start() -> Cluster {
        Cluster::builder().start()
    }

    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    fn launch(users: Vec<(String, Vec<String>)>) -> Cluster {
        let assets = control_plane_assets().unwrap_or_else(|why| panic!("{why}"));
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("egress-test-{}-{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .expect("a temporary directory for the cluster");
        let path = |file: &str| dir.path().join(file);

        // The serving certificate, from a test CA whose certificate goes into the kubeconfig.
        let ca = TestCa::new();
        let (cert, key) = ca.server_files("apiserver", &["127.0.0.1", "localhost"]);
        fs::copy(ca.ca_file(), path("ca.pem")).expect("copying the CA certificate");
        fs::copy(cert, path("apiserver.pem")).expect("copying the serving certificate");
        fs::copy(key, path("apiserver-key.pem")).expect("copying the serving key");
        // Service-account tokens are signed with this key and verified with its public half.
        let signing = rcgen::KeyPair::generate().expect("a service-account signing key");
        fs::write(path("sa-signing-key.pem"), signing.serialize_pem()).expect("writing the key");
        fs::write(path("sa-public-key.pem"), signing.public_key_pem()).expect("writing the key");

        let mut tokens = vec![("admin".to_owned(), random_token())];
        let mut token_file = format!("{},admin,admin,\"system:masters\"\n", tokens[0].1);
        for (user, groups) in users {
            let token = random_token();
            writeln!(token_file, "{token},{user},{user},\"{}\"", groups.join(",")).unwrap();
            tokens.push((user, token));
        }
        fs::write(path("tokens.csv"), token_file).expect("writing the token file");

        let [etcd_client, etcd_peer, secure] = free_ports();
        let etcd = spawn(
            Command::new(assets.join("etcd"))
                .arg("--name=default")
                .arg(format!("--data-dir={}", path("etcd").display()))
                .arg(format!(
                    "--listen-client-urls=http://127.0.0.1:{etcd_client}"
                ))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{etcd_client}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"
                ))
                .arg(format!(
                    "--initial-cluster=default=http://127.0.0.1:{etcd_peer}"
                )),
            &path("etcd.log"),
        );
        let apiserver = spawn(
            Command::new(assets.join("kube-apiserver"))
                .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_client}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg(format!("--secure-port={secure}"))
                .arg(format!(
                    "--tls-cert-file={}",
                    path("apiserver.pem").display()
                ))
                .arg(format!(
                    "--tls-private-key-file={}",
                    path("apiserver-key.pem").display()
                ))
                // Anything it would write (self-signed certificates) goes here, not /var/run.
                .arg(format!("--cert-dir={}", path("certs").display()))
                .arg(format!(
                    "--token-auth-file={}",
                    path("tokens.csv").display()
                ))
                .arg("--authorization-mode=RBAC")
                .arg(format!(
                    "--service-account-key-file={}",
                    path("sa-public-key.pem").display()
                ))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    path("sa-signing-key.pem").display()
                ))
                .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
                .arg(format!(
                    "--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"
                ))
                // ServiceAccount admission waits for a token controller that is not running.
                .arg("--disable-admission-plugins=ServiceAccount")
                // The agent's DaemonSet is privileged.
                .arg("--allow-privileged=true"),
            &path("apiserver.log"),
        );

        let mut cluster = Cluster {
            name,
            dir,
            assets,
            etcd,
            apiserver,
            url: format!("https://127.0.0.1:{secure}"),
            tokens,
        };
        for (user, _) in &cluster.tokens {
            cluster.write_kubeconfig(user);
        }
        cluster.wait_ready();
        cluster
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA certificate (PEM) the API server's serving certificate chains to.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The admin's kubeconfig (user `admin`, group `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig_of("admin")
    }

    /// The kubeconfig of a user given to the builder (`user`, or [`service_account_user`]).
    pub fn kubeconfig_of(&self, user: &str) -> PathBuf {
        assert!(
            self.tokens.iter().any(|(u, _)| u == user),
            "{user} is not a user of this cluster (ClusterBuilder::user or ::service_account)"
        );
        self.dir
            .path()
            .join(format!("kubeconfig-{}", user.replace(':', "_")))
    }

    /// `kubectl ARGS...` as the admin; `.stdin(yaml)`, `.user(name)`, then `.run()` or `.ok()`.
    pub fn kubectl<'a>(&'a self, args: &[&str]) -> Kubectl<'a> {
        Kubectl {
            cluster: self,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            stdin: None,
            user: "admin".to_owned(),
        }
    }

    /// `kubectl apply -f -` of `yaml`; panics when it fails. Returns what kubectl printed.
    #[track_caller]
    pub fn apply(&self, yaml: &str) -> String {
        self.kubectl(&["apply", "-f", "-"]).stdin(yaml).ok()
    }

    /// `kubectl delete ARGS... --wait=false`; panics when it fails.
    #[track_caller]
    pub fn delete(&self, args: &[&str]) -> String {
        let mut all = vec!["delete"];
        all.extend_from_slice(args);
        all.push("--wait=false");
        self.kubectl(&all).ok()
    }

    /// `kubectl get KIND NAME -n NAMESPACE -o jsonpath=JSONPATH` (namespace "" for cluster-scoped).
    #[track_caller]
    pub fn get(&self, kind: &str, namespace: &str, name: &str, jsonpath: &str) -> String {
        let jsonpath = format!("jsonpath={jsonpath}");
        let mut args = vec!["get", kind, name, "-o", &jsonpath];
        if !namespace.is_empty() {
            args.extend(["-n", namespace]);
        }
        self.kubectl(&args).ok()
    }

    /// Applies Istio's ServiceEntry, DestinationRule and AuthorizationPolicy CRDs
    /// (`deploy/crds/istio.yaml`) and waits until they are Established and served.
    pub fn install_istio_crds(&self) {
        self.apply(ISTIO_CRDS);
        let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        let crds: Vec<String> = ISTIO_CRD_NAMES.iter().map(|n| format!("crd/{n}")).collect();
        wait.extend(crds.iter().map(String::as_str));
        self.kubectl(&wait).ok();
        // Established is the CRD's condition; the new resources reach discovery a moment later.
        for resource in ISTIO_CRD_NAMES {
            self.eventually(&format!("{resource} is served"), || {
                self.kubectl(&["get", resource, "-A"]).run().success()
            });
        }
    }

    /// Polls `check` every 200 ms until it returns true; panics after 30 s.
    #[track_caller]
    pub fn eventually(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(Instant::now() < deadline, "{what}: not within 30 s");
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn write_kubeconfig(&self, user: &str) {
        let token = &self
            .tokens
            .iter()
            .find(|(u, _)| u == user)
            .expect("a user")
            .1;
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: {name}\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\n\
             users:\n- name: \"{user}\"\n  user:\n    token: {token}\n\
             contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: \"{user}\"\n\
             current-context: {name}\n",
            name = self.name,
            url = self.url,
            ca = self.ca_file().display(),
        );
        fs::write(self.kubeconfig_of(user), kubeconfig).expect("writing a kubeconfig");
    }

    /// Waits until `/readyz` answers ok (etcd up, RBAC bootstrap roles created, ...).
    fn wait_ready(&mut self) {
        let started = Instant::now();
        let token = format!("Authorization: Bearer {}", self.tokens[0].1);
        let ca = self.ca_file();
        let readyz = format!("{}/readyz", self.url);
        let mut last = String::new();
        while started.elapsed() < READY_TIMEOUT {
            for (what, child, log) in [
                ("etcd", &mut self.etcd, "etcd.log"),
                ("kube-apiserver", &mut self.apiserver, "apiserver.log"),
            ] {
                if let Ok(Some(status)) = child.try_wait() {
                    let tail = log_tail(self.dir.path(), log, 60);
                    panic!(
                        "{what} of {} exited ({status}) before the cluster was ready:\n{tail}",
                        self.name
                    );
                }
            }
            let out = curl(&[
                "-sS",
                "--max-time",
                "2",
                "--cacert",
                &ca.to_string_lossy(),
                "-H",
                &token,
                &readyz,
            ]);
            if out.success() && out.stdout.trim() == "ok" {
                return;
            }
            last = format!("{}{}", out.stdout, out.stderr);
            thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "{} not ready within {READY_TIMEOUT:?}; last /readyz: {last}\n--- apiserver log ---\n{}",
            self.name,
            self.log_tail("apiserver.log", 60)
        );
    }

    fn log_tail(&self, log: &str, lines: usize) -> String {
        log_tail(self.dir.path(), log, lines)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- kube-apiserver log of {} ---\n{}\n--- etcd log ---\n{}\n--- end ---",
                self.name,
                self.log_tail("apiserver.log", 80),
                self.log_tail("etcd.log", 30)
            );
        }
        // The API server first, so it does not spend its last moments on a vanished etcd.
        stop(&mut self.apiserver);
        stop(&mut self.etcd);
        // The TempDir (etcd data, keys, kubeconfigs, logs) goes when the fields drop.
    }
}

/// A `kubectl` invocation against one cluster; see [`Cluster::kubectl`].
pub struct Kubectl<'a> {
    cluster: &'a Cluster,
    args: Vec<String>,
    stdin: Option<String>,
    user: String,
}

impl Kubectl<'_> {
    /// What kubectl reads on stdin (for `-f -`).
    pub fn stdin(mut self, input: &str) -> Self {
        self.stdin = Some(input.to_owned());
        self
    }

    /// Run as another user of the cluster (its own token, not impersonation).
    pub fn user(mut self, user: &str) -> Self {
        self.user = user.to_owned();
        self
    }

    /// Runs it (bounded), whatever the outcome.
    pub fn run(self) -> Output {
        let mut kubectl = Command::new(self.cluster.assets.join("kubectl"));
        kubectl
            .arg(format!(
                "--kubeconfig={}",
                self.cluster.kubeconfig_of(&self.user).display()
            ))
            // Discovery cached per cluster, not in ~/.kube where a later cluster on the same
            // port would read it.
            .arg(format!(
                "--cache-dir={}",
                self.cluster.dir.path().join("kubectl-cache").display()
            ))
            .args(&self.args)
            .env_remove("KUBECONFIG");
        run_bounded_with_input(&mut kubectl, self.stdin.as_deref(), COMMAND_TIMEOUT)
    }

    /// Runs it and returns its stdout; panics with everything it printed unless it exited 0.
    #[track_caller]
    pub fn ok(self) -> String {
        let out = self.run();
        assert!(out.success(), "kubectl failed: {out:?}");
        out.stdout
    }
}

/// The last `lines` lines of `dir/log`.
fn log_tail(dir: &Path, log: &str, lines: usize) -> String {
    let text = fs::read_to_string(dir.join(log)).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn spawn(command: &mut Command, log: &Path) -> Child {
    let file = fs::File::create(log).expect("creating a log file");
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("cloning a log file handle"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {:?}: {e}", command.get_program()))
}

/// SIGTERM, up to 10 s to exit, then SIGKILL; always by this child's own pid.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) on the pid of our own unreaped child, which cannot be reused before wait.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Three distinct free loopback ports (held together while picking, so they differ).
fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a free port"))
        .collect();
    let port = |l: &TcpListener| l.local_addr().expect("a bound address").port();
    [
        port(&listeners[0]),
        port(&listeners[1]),
        port(&listeners[2]),
    ]
}

/// 32 hex digits from the kernel's random source.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(n, 16, "getrandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
