//! One running `egress run` with its own cgroup, pin directory, ports and files, and everything a
//! test does with it. Dropping it removes all of that, also when the test panicked.
use std::{
    fs,
    io::ErrorKind,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Once,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{
    environment::{cgroup2_mount, egress_bin},
    http,
    process::{COMMAND_TIMEOUT, Output, bounded_curl_args, describe, run_bounded},
};

/// How long `egress run` may take to answer `/healthz/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an access-log line may take to appear after the response.
const ACCESS_LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// Where pin directories go; `egress run` mounts bpffs here when it is missing.
const BPFFS: &str = "/sys/fs/bpf";
/// Prefix of every cgroup and pin directory a test makes: `egress-test-<pid>-<n>`.
const PREFIX: &str = "egress-test-";

/// Distinguishes dataplanes of one test process.
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Leftovers of test processes that were killed before they could clean up are removed once.
static SWEEP: Once = Once::new();

/// Collects the configuration, then starts a dataplane.
#[derive(Default)]
pub struct Builder {
    documents: Vec<String>,
    extra_args: Vec<String>,
    kubeconfig: Option<PathBuf>,
    /// Kubernetes mode as a node's agent: the node's name and kubepods root (captured instead
    /// of the dataplane's own cgroup).
    node: Option<(String, PathBuf)>,
}

impl Builder {
    /// Adds a ServiceEntry (any Istio YAML document, in fact; see [`crate::yaml`]).
    pub fn service_entry(self, yaml: &str) -> Self {
        self.config(yaml)
    }

    /// Adds one Istio YAML document (ServiceEntry, DestinationRule, AuthorizationPolicy).
    pub fn config(mut self, yaml: &str) -> Self {
        self.documents.push(yaml.to_owned());
        self
    }

    /// Kubernetes mode: `egress run --kubernetes --kubeconfig PATH --node-name node-1 --pods
    /// off` reads its configuration from that API server instead of files, and captures its own
    /// cgroup as in host mode (workloads through [`Dataplane::exec`]).
    pub fn kubernetes(mut self, kubeconfig: &Path) -> Self {
        self.kubeconfig = Some(kubeconfig.to_owned());
        self
    }

    /// Adds arguments to `egress run` (e.g. `--outbound-policy registry-only`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Kubernetes mode as `node`'s agent: `--kubernetes --kubeconfig <the admin's> --node-name
    /// <node> --cgroup <node's kubepods root>`; its enrolled pods ([`crate::Pod`]) are captured.
    pub fn node_agent(mut self, node: &crate::Node<'_>) -> Self {
        self.kubeconfig = Some(node.cluster().kubeconfig());
        self.node = Some((node.name().to_owned(), node.pod_root().to_owned()));
        self
    }

    /// Writes the config, starts `egress run` and waits until it is ready (bounded).
    pub fn start(self) -> Dataplane {
        let cgroup_root = cgroup2_mount().expect("a cgroup2 mount (require_privileges checks)");
        SWEEP.call_once(|| sweep_stale(&cgroup_root));
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let files = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .expect("creating the dataplane's temporary directory");
        let config_dir = files.path().join("config");
        fs::create_dir(&config_dir).expect("creating the config directory");
        fs::write(config_dir.join("test.yaml"), self.documents.join("\n---\n"))
            .expect("writing the test config");
        let [listen, admin] = free_ports();
        let dns = free_ports()[0];
        let mut dataplane = Dataplane {
            captured: self
                .node
                .as_ref()
                .map_or_else(|| cgroup_root.join(&name), |(_, root)| root.clone()),
            node_name: self.node.map(|(name, _)| name),
            own_cgroup: cgroup_root.join(&name),
            cgroup_root,
            pins: Path::new(BPFFS).join(&name),
            name,
            listen,
            admin,
            dns,
            files,
            process: None,
            draining: None,
            extra_args: self.extra_args,
            kubeconfig: self.kubeconfig,
        };
        // The ports were free when picked, but a parallel test may take one before egress binds
        // it: pick again a bounded number of times.
        for attempt in 1..=3 {
            match dataplane.spawn_and_wait() {
                Ok(()) => return dataplane,
                Err(not_ready) if not_ready.port_taken && attempt < 3 => {
                    [dataplane.listen, dataplane.admin] = free_ports();
                    dataplane.dns = free_ports()[0];
                }
                Err(not_ready) => panic!("{}", not_ready.message),
            }
        }
        unreachable!("the last attempt returns or panics")
    }
}

/// A running `egress run` (or one that a test killed) and the resources it was given.
pub struct Dataplane {
    name: String,
    /// Its own cgroup (removed on drop); captured, too, unless `captured` says otherwise.
    own_cgroup: PathBuf,
    /// `--cgroup`: the captured cgroup (a node's kubepods root in Kubernetes mode).
    captured: PathBuf,
    cgroup_root: PathBuf,
    pins: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    /// The DNS proxy (`--dns-listen`, UDP and TCP).
    dns: SocketAddr,
    files: TempDir,
    process: Option<Child>,
    /// The `egress run` a [`Dataplane::replace`] is replacing, while it drains.
    draining: Option<Child>,
    /// Extra `egress run` arguments from the builder.
    extra_args: Vec<String>,
    /// Kubernetes mode's kubeconfig, instead of the config directory.
    kubeconfig: Option<PathBuf>,
    /// Kubernetes mode as a node's agent (pods captured): the node's name.
    node_name: Option<String>,
}

impl Dataplane {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The captured cgroup (`--cgroup`).
    pub fn cgroup(&self) -> &Path {
        &self.captured
    }

    /// The admin server's `/pods` page (Kubernetes mode's enrolled pods), as JSON text.
    #[track_caller]
    pub fn pods(&self) -> String {
        let (status, body) = http::get(self.admin, "/pods", Duration::from_secs(5))
            .expect("the admin server answers /pods");
        assert_eq!(status, 200, "/pods answered {status}: {body}");
        body
    }

    /// The pin directory (`--bpffs`).
    pub fn pin_dir(&self) -> &Path {
        &self.pins
    }

    /// The waypoint listener (`--listen`).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The DNS proxy (`--dns-listen`).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns
    }

    /// The admin server (`--admin`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// A workload in this dataplane's cgroup, attributed to `namespace`/`service_account`.
    pub fn exec<'a>(&'a self, namespace: &'a str, service_account: &'a str) -> Workload<'a> {
        Workload {
            dataplane: self,
            namespace,
            service_account,
        }
    }

    /// The pid of the running `egress run` (to read its /proc entries).
    #[track_caller]
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("egress run is running").id()
    }

    /// The access log so far, one entry per line.
    pub fn access_log_lines(&self) -> Vec<String> {
        match fs::read_to_string(self.access_log()) {
            Ok(log) => log.lines().map(str::to_owned).collect(),
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("reading the access log: {e}"),
        }
    }

    /// Waits (bounded) until the access log has at least `count` lines and returns them all. A
    /// line is written when its request or connection is done, which can be just after the
    /// client saw the end of it.
    #[track_caller]
    pub fn access_log_lines_at_least(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + ACCESS_LOG_TIMEOUT;
        loop {
            let lines = self.access_log_lines();
            if lines.len() >= count || Instant::now() >= deadline {
                return lines;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for an access-log line containing `needle` and returns it.
    #[track_caller]
    pub fn access_log_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + ACCESS_LOG_TIMEOUT;
        loop {
            let lines = self.access_log_lines();
            if let Some(line) = lines.iter().find(|line| line.contains(needle)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line containing {needle:?} within {ACCESS_LOG_TIMEOUT:?}; \
                 the log has:\n{}",
                lines.join("\n")
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the `egress run` process (pinned links stay: capture now fails closed).
    pub fn kill(&mut self) {
        for mut process in [self.process.take(), self.draining.take()]
            .into_iter()
            .flatten()
        {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Sends SIGTERM to the running `egress run` and does not wait: it drains. See
    /// [`Dataplane::wait_exit`].
    pub fn sigterm(&self) {
        signal(self.pid(), libc::SIGTERM);
    }

    /// Waits (bounded by `timeout`) for the running `egress run` to exit, and returns how it
    /// exited; `None` if it was still running at the deadline (it is then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut process = self.process.take().expect("egress run is running");
        let status = wait_bounded(&mut process, timeout);
        if status.is_none() {
            let _ = process.kill();
            let _ = process.wait();
        }
        status
    }

    /// A zero-downtime upgrade, as a DaemonSet with `maxSurge` does it: starts a second
    /// `egress run` with the same arguments while this one runs, waits until the new one is
    /// ready, then SIGTERMs the old one and waits (bounded by `drain`) for it to drain and exit
    /// 0. Panics if the new one never gets ready or the old one fails to exit cleanly.
    #[track_caller]
    pub fn replace(&mut self, drain: Duration) {
        let old = self.process.take().expect("egress run is running");
        let old_pid = old.id();
        self.draining = Some(old);
        let readies = self.log_count(READY_LINE);
        if let Err(not_ready) = self.spawn_and_wait() {
            panic!("the replacement did not start: {}", not_ready.message);
        }
        // /healthz/ready may have been the old process answering: wait for the new one to say
        // so itself (or to exit).
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.log_count(READY_LINE) <= readies {
            let new = self.process.as_mut().expect("the new egress run");
            if let Some(status) = new.try_wait().expect("polling egress run") {
                self.process = None;
                panic!(
                    "the replacement exited ({status}) before it was ready; log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the replacement was not ready within {READY_TIMEOUT:?}; log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
        signal(old_pid, libc::SIGTERM);
        let mut old = self.draining.take().expect("the old egress run");
        let status = wait_bounded(&mut old, drain + Duration::from_secs(10));
        match status {
            Some(status) => assert!(
                status.success(),
                "the old egress run ({old_pid}) exited {status} after SIGTERM; log:\n{}",
                self.log_text()
            ),
            None => {
                let _ = old.kill();
                let _ = old.wait();
                panic!(
                    "the old egress run ({old_pid}) had not exited {drain:?} (+10s) after \
                     SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
        }
    }

    /// Starts `egress run` again with the same cgroup, pins, ports and config, and waits until
    /// it is ready. Kills the running one first, if any.
    #[track_caller]
    pub fn restart(&mut self) {
        self.kill();
        if let Err(not_ready) = self.spawn_and_wait() {
            panic!("{}", not_ready.message);
        }
    }

    /// Starts `egress run` and waits (bounded) for `/healthz/ready`.
    fn spawn_and_wait(&mut self) -> Result<(), NotReady> {
        let log_start = fs::metadata(self.egress_log()).map_or(0, |m| m.len() as usize);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.egress_log())
            .expect("opening the egress log");
        let mut command = self.egress_command();
        command
            .arg("run")
            .args(self.run_args())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log);
        let line = describe(&command);
        let process = command
            .spawn()
            .unwrap_or_else(|e| panic!("could not start `{line}`: {e}"));
        self.process = Some(process);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let process = self.process.as_mut().expect("a started process");
            if let Some(status) = process.try_wait().expect("polling egress run") {
                self.process = None;
                let log = self.log_text();
                let this_run = log.get(log_start..).unwrap_or(&log);
                return Err(NotReady {
                    port_taken: this_run.contains("in use"),
                    message: format!(
                        "`{line}` exited ({status}) before it was ready; its log:\n{log}"
                    ),
                });
            }
            if let Some((200, _)) = http::get(self.admin, "/healthz/ready", Duration::from_secs(1))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NotReady {
                    port_taken: false,
                    message: format!(
                        "`{line}` was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                        self.log_text()
                    ),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the whole config atomically (a hidden temporary file renamed over the old one, as
    /// a Kubernetes ConfigMap update swaps files), for `egress run` to pick up.
    pub fn write_config(&self, documents: &[&str]) {
        let dir = self.files.path().join("config");
        let tmp = dir.join(".test.yaml.next");
        fs::write(&tmp, documents.join("\n---\n")).expect("writing the new config");
        fs::rename(&tmp, dir.join("test.yaml")).expect("replacing the config");
    }

    /// Sends SIGHUP to `egress run`: reload the config now.
    pub fn sighup(&self) {
        signal(self.pid(), libc::SIGHUP);
    }

    /// How many times `needle` appears in the egress log (stderr and stdout of `egress run`).
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text().matches(needle).count()
    }

    /// Waits (bounded) until `needle` appears at least `count` times in the egress log.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.log_count(needle) < count {
            assert!(
                Instant::now() < deadline,
                "{needle:?} did not appear {count} times in the egress log within 15s:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `egress status --bpffs <pins>`.
    pub fn status(&self) -> Output {
        self.egress(&["status", "--bpffs", &self.pins.to_string_lossy()])
    }

    /// `egress ARGS...`, bounded.
    pub fn egress(&self, args: &[&str]) -> Output {
        run_bounded(self.egress_command().args(args), COMMAND_TIMEOUT)
    }

    /// `bpftool ARGS...`, bounded.
    pub fn bpftool(&self, args: &[&str]) -> Output {
        run_bounded(Command::new("bpftool").args(args), COMMAND_TIMEOUT)
    }

    /// The admin server's `/stats/prometheus` page.
    #[track_caller]
    pub fn metrics(&self) -> String {
        let (status, body) = http::get(self.admin, "/stats/prometheus", Duration::from_secs(5))
            .expect("the admin server answers /stats/prometheus");
        assert_eq!(status, 200, "/stats/prometheus answered {status}: {body}");
        body
    }

    /// A kernel counter as exported on `/stats/prometheus`: `egress_bpf_<reason>_total`.
    #[track_caller]
    pub fn bpf_counter(&self, reason: &str) -> u64 {
        let metric = format!("egress_bpf_{reason}_total");
        let metrics = self.metrics();
        metrics
            .lines()
            .filter(|line| !line.starts_with('#'))
            .find(|line| {
                line.strip_prefix(&metric)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .and_then(|line| line.split_whitespace().last())
            .and_then(|value| value.parse::<f64>().ok())
            .map(|value| value as u64)
            .unwrap_or_else(|| panic!("no {metric} in /stats/prometheus:\n{metrics}"))
    }

    fn access_log(&self) -> PathBuf {
        self.files.path().join("access.log")
    }

    fn egress_log(&self) -> PathBuf {
        self.files.path().join("egress.log")
    }

    fn egress_command(&self) -> Command {
        let mut command = Command::new(egress_bin());
        command.current_dir(self.files.path());
        command
    }

    fn run_args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let source: Vec<String> = match &self.kubeconfig {
            None => vec!["--config".into(), path(&self.files.path().join("config"))],
            Some(kubeconfig) => {
                let mut args: Vec<String> = vec![
                    "--kubernetes".into(),
                    "--kubeconfig".into(),
                    path(kubeconfig),
                    "--node-name".into(),
                    self.node_name.clone().unwrap_or_else(|| "node-1".into()),
                ];
                if self.node_name.is_none() {
                    args.extend(["--pods".into(), "off".into()]);
                }
                args
            }
        };
        source
            .into_iter()
            .chain([
                "--cgroup".into(),
                path(&self.captured),
                "--listen".into(),
                self.listen.to_string(),
                "--admin".into(),
                self.admin.to_string(),
                "--dns-listen".into(),
                self.dns.to_string(),
                "--bpffs".into(),
                path(&self.pins),
                "--access-log".into(),
                path(&self.access_log()),
            ])
            .chain(self.extra_args.iter().cloned())
            .collect()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.egress_log()).unwrap_or_else(|e| format!("<no log: {e}>"))
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- egress log of {} ---\n{}\n--- access log ---\n{}\n--- end ---",
                self.name,
                self.log_text(),
                self.access_log_lines().join("\n")
            );
        }
        self.kill();
        let mut cleanup = self.egress_command();
        cleanup.arg("run").args(self.run_args()).arg("--cleanup");
        let out = run_bounded(&mut cleanup, COMMAND_TIMEOUT);
        if !out.success() {
            eprintln!("cleanup of {} failed: {out:?}", self.name);
        }
        remove_pins(&self.pins);
        remove_cgroup_tree(&self.own_cgroup, &self.cgroup_root);
    }
}

/// What `egress run` logs once it serves.
const READY_LINE: &str = "waypoint ready";

/// Sends `signal` to a child process this dataplane started and has not reaped.
#[track_caller]
fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child's.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "sending signal {signal} to egress run ({pid})");
}

/// Waits for `process` to exit, at most `timeout`.
fn wait_bounded(process: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.try_wait().expect("polling egress run") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Why `egress run` did not become ready.
struct NotReady {
    /// It exited saying an address was in use: another test took a port we picked.
    port_taken: bool,
    message: String,
}

/// A process started in the dataplane's cgroup through `egress exec`.
pub struct Workload<'a> {
    dataplane: &'a Dataplane,
    namespace: &'a str,
    service_account: &'a str,
}

impl Workload<'_> {
    /// `curl ARGS...` in the workload's cgroup (with connect and total time bounds).
    pub fn curl(&self, args: &[&str]) -> Output {
        let args: Vec<&str> = bounded_curl_args(args).collect();
        self.run("curl", &args)
    }

    /// `curl -sS -o /dev/null -w %{http_code} ARGS...`: stdout is the status code (`000` when
    /// no response came, e.g. a connect refused in the kernel).
    pub fn http_code(&self, args: &[&str]) -> Output {
        let mut all = vec!["-sS", "-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        self.curl(&all)
    }

    /// Writes `request` (Python escapes such as `\r\n` decoded, so any byte can be sent) to
    /// `addr` in one write, and returns in stdout everything the peer sent until it closed:
    /// requests no HTTP client would send, from the workload's cgroup.
    pub fn raw_http(&self, addr: SocketAddr, request: &str) -> Output {
        self.run(
            "python3",
            &[
                "-c",
                RAW_CLIENT,
                &addr.ip().to_string(),
                &addr.port().to_string(),
                request,
            ],
        )
        .expect_success("the raw HTTP client")
    }

    /// `PROGRAM ARGS...` in the workload's cgroup: `egress exec ... -- PROGRAM ARGS...`.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        run_bounded(&mut self.command(program, args), COMMAND_TIMEOUT)
    }

    /// The command [`Workload::run`] runs, to run it elsewhere (e.g. on a thread, with
    /// [`crate::run_bounded`], while the test restarts the dataplane).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let dp = self.dataplane;
        let mut command = dp.egress_command();
        command
            .arg("exec")
            .arg("--cgroup")
            .arg(&dp.captured)
            .arg("--bpffs")
            .arg(&dp.pins)
            .args(["--namespace", self.namespace])
            .args(["--service-account", self.service_account])
            .arg("--")
            .arg(program)
            .args(args);
        command
    }
}

/// The client of [`Workload::raw_http`]: `python3 -c RAW_CLIENT IP PORT REQUEST`.
const RAW_CLIENT: &str = r#"
import socket, sys
request = sys.argv[3].encode().decode("unicode_escape").encode("latin-1")
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
conn.sendall(request)
answer = b""
while True:
    data = conn.recv(65536)
    if not data:
        break
    answer += data
sys.stdout.write(answer.decode("latin-1"))
"#;

/// Two distinct loopback ports that were free a moment ago.
fn free_ports() -> [SocketAddr; 2] {
    let a = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    [
        a.local_addr().expect("a free port"),
        b.local_addr().expect("a free port"),
    ]
}

/// Removes a pin directory. Unpinning a link detaches its program.
fn remove_pins(pins: &Path) {
    match fs::remove_dir_all(pins) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => eprintln!("removing {}: {e}", pins.display()),
    }
}

/// Removes a cgroup and its descendants, bottom-up. Processes still in them (only ones this test
/// started through `egress exec` can be) are moved to the root cgroup, since a cgroup with
/// processes cannot be removed, and then killed by pid so nothing outlives the test.
fn remove_cgroup_tree(dir: &Path, root: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path(), root);
        }
    }
    // A process that just exited can keep a cgroup busy for a moment.
    for attempt in 1..=100 {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = fs::write(root.join("cgroup.procs"), pid);
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    // SAFETY: kill has no memory-safety preconditions.
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

/// Removes cgroups and pin directories left by test processes that no longer exist.
fn sweep_stale(cgroup_root: &Path) {
    let stale = |dir: &Path| -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name();
                let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                    return false;
                };
                let pid = rest.split('-').next().unwrap_or_default();
                !pid.is_empty() && !Path::new("/proc").join(pid).exists()
            })
            .map(|entry| entry.path())
            .collect()
    };
    for pins in stale(Path::new(BPFFS)) {
        eprintln!("removing stale pins {}", pins.display());
        remove_pins(&pins);
    }
    for cgroup in stale(cgroup_root) {
        eprintln!("removing stale cgroup {}", cgroup.display());
        remove_cgroup_tree(&cgroup, cgroup_root);
    }
}
