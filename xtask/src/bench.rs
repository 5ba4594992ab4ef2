//! `cargo xtask bench`: the benchmark figures of issue 6. So far one: connect→deny latency with
//! the kernel verdict cache (K, `--verdict-cache on`) against the waypoint deciding every connect
//! (W, `--verdict-cache off`). See docs/benchmarks.md.
//!
//! Each scenario gets its own `egress run` (own cgroup under the cgroup2 mount, pin directory
//! under /sys/fs/bpf, free loopback ports, config in a temporary directory), started in its own
//! process group so Ctrl-C reaches xtask, which then tears everything down: the process is
//! killed by pid, `egress run --cleanup` detaches and unpins, the pin directory and cgroups are
//! removed bottom-up.
use std::{
    fmt::Write as _,
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    Workspace,
    cmd::{self, step},
    tasks,
};

/// How long `egress run` may take to answer `/healthz/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the kernel may take to hold the deny after the warm-up connect.
const CACHE_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of one probe run (connect-probe stops itself at `--max-seconds`).
const PROBE_MAX_SECONDS: u64 = 300;
/// How long `egress run --cleanup` may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Where pin directories go; `egress run` mounts bpffs here when it is missing.
const BPFFS: &str = "/sys/fs/bpf";
/// The ServiceEntry address and port the workload dials; denied connects never get further.
const SE_ADDR: &str = "127.88.0.1";
const SE_PORT: u16 = 9000;
const SE_NAME: &str = "bench-denied";
/// The identity the policy denies.
const NAMESPACE: &str = "default";
const SERVICE_ACCOUNT: &str = "bench";
/// Per-connect timeout of the probe.
const CONNECT_TIMEOUT_MS: u64 = 1000;

/// Targets shown next to the figures (issue 6); nothing fails when they are missed.
const TARGET_KERNEL_P99_US: f64 = 10.0;
const TARGET_SPEEDUP: f64 = 10.0;

/// Set by SIGINT/SIGTERM; every wait loop checks it and returns an error, so the dataplane
/// guards' Drop cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub struct BenchOptions {
    pub quick: bool,
    pub out: PathBuf,
    pub release: bool,
}

pub fn bench(ws: &Workspace, opts: &BenchOptions) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!(
            "`cargo xtask bench` starts `egress run`, which attaches BPF programs to cgroups, \
             and needs root: run `sudo -E cargo xtask bench` (or as root)"
        );
    }
    let cgroup_root = cgroup2_mount().context("no cgroup2 filesystem in /proc/mounts")?;
    install_signal_handlers();
    let out = if opts.out.is_absolute() {
        opts.out.clone()
    } else {
        ws.root.join(&opts.out)
    };
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let egress = tasks::build(ws, opts.release)?;
    step("building connect-probe");
    cmd::run(Command::new("cargo").current_dir(&ws.root).args([
        "build",
        "-p",
        "xtask",
        "--bin",
        "connect-probe",
    ]))?;
    let probe = ws.target_dir().join("debug/connect-probe");
    if !probe.is_file() {
        bail!("the build succeeded but {} is not there", probe.display());
    }

    // A Ctrl-C during the builds stops here, before anything is attached.
    check_interrupted()?;
    let count = if opts.quick { 2_000 } else { 20_000 };
    let env = Env {
        egress,
        probe,
        cgroup_root,
        out: out.clone(),
    };
    let kernel = env.scenario(Scenario::Kernel, count)?;
    let waypoint = env.scenario(Scenario::Waypoint, count)?;

    let profile = if opts.release { "release" } else { "debug" };
    let report = Report {
        kernel,
        waypoint,
        count,
        profile,
        machine: machine(),
    };
    let table = report.markdown();
    println!();
    println!("{table}");
    let json_path = out.join("connect-deny.json");
    let summary_path = out.join("summary.md");
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&report.json())? + "\n",
    )
    .with_context(|| format!("writing {}", json_path.display()))?;
    fs::write(&summary_path, format!("# cargo xtask bench\n\n{table}"))
        .with_context(|| format!("writing {}", summary_path.display()))?;
    step(&format!(
        "wrote {} and {}",
        json_path.display(),
        summary_path.display()
    ));
    Ok(())
}

#[derive(Clone, Copy)]
enum Scenario {
    /// K: `--verdict-cache on`, the deny comes from the kernel (EPERM).
    Kernel,
    /// W: `--verdict-cache off`, the waypoint accepts and closes every connection.
    Waypoint,
}

impl Scenario {
    fn suffix(self) -> &'static str {
        match self {
            Scenario::Kernel => "cache",
            Scenario::Waypoint => "nocache",
        }
    }
    fn mode(self) -> &'static str {
        match self {
            Scenario::Kernel => "kernel",
            Scenario::Waypoint => "waypoint",
        }
    }
    fn verdict_cache(self) -> &'static str {
        match self {
            Scenario::Kernel => "on",
            Scenario::Waypoint => "off",
        }
    }
}

struct Env {
    egress: PathBuf,
    probe: PathBuf,
    cgroup_root: PathBuf,
    out: PathBuf,
}

impl Env {
    /// Starts a dataplane for `scenario`, warms it up with one denied connect, runs the probe
    /// and returns its JSON (plus the kernel's refusal count during the run).
    fn scenario(&self, scenario: Scenario, count: usize) -> anyhow::Result<Value> {
        let name = format!("egress-bench-{}-{}", std::process::id(), scenario.suffix());
        step(&format!(
            "scenario {} ({name}): egress run --verdict-cache {}, {count} connects",
            match scenario {
                Scenario::Kernel => "K",
                Scenario::Waypoint => "W",
            },
            scenario.verdict_cache()
        ));
        let dp = Dataplane::start(self, &name, scenario)?;
        let target = format!("{SE_ADDR}:{SE_PORT}");

        // The first connect of a new identity always crosses the waypoint, which decides and (K)
        // writes the deny into the kernel. Both scenarios get it, so neither measures a cold
        // waypoint.
        let warm = dp.probe(&self.probe, &target, 1, "waypoint")?;
        if warm["denied"] != json!(1) {
            bail!("the warm-up connect was not denied by the waypoint: {warm}");
        }
        if let Scenario::Kernel = scenario {
            let deadline = Instant::now() + CACHE_TIMEOUT;
            while dp.counter("verdict_cache_entries")? < 1.0 {
                if Instant::now() >= deadline {
                    bail!(
                        "the kernel verdict cache holds no entry {CACHE_TIMEOUT:?} after the \
                         warm-up connect; the egress log is {}",
                        dp.log().display()
                    );
                }
                check_interrupted()?;
                thread::sleep(Duration::from_millis(50));
            }
        }
        let refused_before = dp.counter("refused_verdict_cache")?;
        let mut result = dp.probe(&self.probe, &target, count, scenario.mode())?;
        let refused = dp.counter("refused_verdict_cache")? - refused_before;
        result["kernel_refusals"] = json!(refused as u64);
        println!("    {result}");
        let _ = fs::copy(
            dp.log(),
            self.out.join(format!("egress-{}.log", scenario.suffix())),
        );
        Ok(result)
    }
}

/// One `egress run` and what it was given; Drop tears it all down.
struct Dataplane {
    egress: PathBuf,
    cgroup_root: PathBuf,
    cgroup: PathBuf,
    pins: PathBuf,
    files: PathBuf,
    admin: SocketAddr,
    process: Option<Child>,
}

impl Dataplane {
    fn start(env: &Env, name: &str, scenario: Scenario) -> anyhow::Result<Self> {
        let files = std::env::temp_dir().join(name);
        let mut dp = Dataplane {
            egress: env.egress.clone(),
            cgroup_root: env.cgroup_root.clone(),
            cgroup: env.cgroup_root.join(name),
            pins: Path::new(BPFFS).join(name),
            files: files.clone(),
            admin: "127.0.0.1:0".parse().expect("a socket address"),
            process: None,
        };
        // Leftovers of an earlier run with the same pid would confuse the figures.
        remove_dir_all(&files);
        fs::create_dir_all(files.join("config"))
            .with_context(|| format!("creating {}", files.display()))?;
        let [listen, admin, endpoint] = free_ports()?;
        dp.admin = admin;
        fs::write(files.join("config/bench.yaml"), config(endpoint))
            .context("writing the bench config")?;
        let log = fs::File::create(dp.log()).context("creating the egress log")?;
        let mut command = Command::new(&dp.egress);
        command
            .arg("run")
            .args(dp.run_args())
            .args(["--listen", &listen.to_string()])
            .args(["--admin", &admin.to_string()])
            .arg("--access-log")
            .arg(files.join("access.log"))
            .args(["--verdict-cache", scenario.verdict_cache()])
            // Per-connection info lines would be part of the figure; the access log stays.
            .env("RUST_LOG", "warn")
            .current_dir(&files)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C goes to xtask, which stops it and cleans up.
            .process_group(0);
        let line = cmd::display(&command);
        println!("    $ {line}");
        dp.process = Some(
            command
                .spawn()
                .with_context(|| format!("could not start `{line}`"))?,
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            check_interrupted()?;
            if let Some(status) = dp.process.as_mut().expect("started").try_wait()? {
                dp.process = None;
                bail!(
                    "`{line}` exited ({status}) before it was ready; its log:\n{}",
                    fs::read_to_string(dp.log()).unwrap_or_default()
                );
            }
            if let Ok((200, _)) = http_get(admin, "/healthz/ready") {
                return Ok(dp);
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{line}` was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    fs::read_to_string(dp.log()).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> PathBuf {
        self.files.join("egress.log")
    }

    /// The arguments `egress run` and `egress run --cleanup` share.
    fn run_args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            "--config".into(),
            path(&self.files.join("config")),
            "--cgroup".into(),
            path(&self.cgroup),
            "--bpffs".into(),
            path(&self.pins),
        ]
    }

    /// `egress exec ... -- connect-probe ...` as `default/sa/bench`, bounded; its JSON.
    fn probe(&self, probe: &Path, target: &str, count: usize, mode: &str) -> anyhow::Result<Value> {
        let stdout = self.files.join(format!("probe-{mode}-{count}.json"));
        let mut command = Command::new(&self.egress);
        command
            .arg("exec")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(&self.pins)
            .args(["--namespace", NAMESPACE])
            .args(["--service-account", SERVICE_ACCOUNT])
            .arg("--")
            .arg(probe)
            .args(["--addr", target])
            .args(["--count", &count.to_string()])
            .args(["--mode", mode])
            .args(["--timeout-ms", &CONNECT_TIMEOUT_MS.to_string()])
            .args(["--max-seconds", &PROBE_MAX_SECONDS.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout)?);
        let line = cmd::display(&command);
        println!("    $ {line}");
        let mut child = command
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        let deadline = Instant::now() + Duration::from_secs(PROBE_MAX_SECONDS + 30);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if INTERRUPTED.load(Ordering::SeqCst) || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                check_interrupted()?;
                bail!("`{line}` did not finish in time");
            }
            thread::sleep(Duration::from_millis(10));
        };
        check_interrupted()?;
        let text = fs::read_to_string(&stdout)?;
        if !status.success() {
            bail!("`{line}` failed ({status}); it printed: {text}");
        }
        serde_json::from_str(text.trim())
            .with_context(|| format!("connect-probe printed no JSON: {text:?}"))
    }

    /// A kernel counter or gauge from `/stats/prometheus`: `egress_bpf_<name>[_total]`.
    fn counter(&self, name: &str) -> anyhow::Result<f64> {
        let (status, body) = http_get(self.admin, "/stats/prometheus")?;
        if status != 200 {
            bail!("/stats/prometheus answered {status}");
        }
        let wanted = [
            format!("egress_bpf_{name}_total"),
            format!("egress_bpf_{name}"),
        ];
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .find(|line| {
                wanted.iter().any(|metric| {
                    line.strip_prefix(metric.as_str())
                        .is_some_and(|rest| rest.starts_with([' ', '{']))
                })
            })
            .and_then(|line| line.split_whitespace().last())
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("no egress_bpf_{name} in /stats/prometheus"))
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
        let mut cleanup = Command::new(&self.egress);
        cleanup
            .arg("run")
            .args(self.run_args())
            .arg("--cleanup")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match cleanup.spawn() {
            Ok(mut child) => {
                let deadline = Instant::now() + CLEANUP_TIMEOUT;
                loop {
                    match child.try_wait() {
                        Ok(Some(status)) if status.success() => break,
                        Ok(Some(status)) => {
                            let mut err = String::new();
                            if let Some(mut stderr) = child.stderr.take() {
                                let _ = stderr.read_to_string(&mut err);
                            }
                            eprintln!("`{}` failed ({status}): {err}", cmd::display(&cleanup));
                            break;
                        }
                        Ok(None) if Instant::now() < deadline => {
                            thread::sleep(Duration::from_millis(20))
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            eprintln!("`{}` did not finish", cmd::display(&cleanup));
                            break;
                        }
                    }
                }
            }
            Err(e) => eprintln!("could not start `{}`: {e}", cmd::display(&cleanup)),
        }
        remove_dir_all(&self.pins);
        remove_cgroup_tree(&self.cgroup, &self.cgroup_root);
        remove_dir_all(&self.files);
    }
}

/// The ServiceEntry (an opaque TCP port on a loopback address, with an endpoint nothing listens
/// on: denied connects never reach it) and an L4-decidable DENY for `default/sa/bench`.
fn config(endpoint: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {SE_NAME}
  namespace: {NAMESPACE}
spec:
  hosts: [bench-denied.test]
  addresses: [{SE_ADDR}]
  ports:
  - number: {SE_PORT}
    name: tcp
    protocol: TCP
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: {ip}
    ports:
      tcp: {port}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bench-deny
  namespace: {NAMESPACE}
spec:
  targetRefs:
  - kind: ServiceEntry
    group: networking.istio.io
    name: {SE_NAME}
  action: DENY
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/{NAMESPACE}/sa/{SERVICE_ACCOUNT}\"]
",
        ip = endpoint.ip(),
        port = endpoint.port(),
    )
}

/// The figures of both scenarios, as a table and as JSON.
struct Report {
    kernel: Value,
    waypoint: Value,
    count: usize,
    profile: &'static str,
    machine: Value,
}

impl Report {
    fn ratio(&self, field: &str) -> Option<f64> {
        let k = self.kernel[field].as_f64()?;
        let w = self.waypoint[field].as_f64()?;
        (k > 0.0).then(|| w / k)
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "connect→deny latency, {} sequential TCP connects per scenario from `{NAMESPACE}/sa/\
             {SERVICE_ACCOUNT}` to a denied ServiceEntry ({SE_ADDR}:{SE_PORT}); egress {} build; \
             {}\n",
            self.count,
            self.profile,
            self.machine["summary"].as_str().unwrap_or("?")
        );
        md.push_str("| scenario | count | errors | p50 µs | p90 µs | p99 µs | max µs |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for (label, v) in [
            ("K: kernel verdict cache (EPERM)", &self.kernel),
            ("W: waypoint (accept + close)", &self.waypoint),
        ] {
            let n = |f: &str| v[f].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                v["count"],
                v["errors"],
                n("p50_us"),
                n("p90_us"),
                n("p99_us"),
                n("max_us")
            );
        }
        let fmt = |r: Option<f64>| r.map_or("n/a".to_owned(), |r| format!("{r:.1}×"));
        let (p50, p99) = (self.ratio("p50_us"), self.ratio("p99_us"));
        let _ = writeln!(
            md,
            "\nW p50 / K p50 = {}; W p99 / K p99 = {}\n",
            fmt(p50),
            fmt(p99)
        );
        let kernel_p99 = self.kernel["p99_us"].as_f64().unwrap_or(f64::NAN);
        let met = |ok: bool| if ok { "met" } else { "not met" };
        md.push_str("| target (issue 6) | measured | |\n|---|---:|---|\n");
        let _ = writeln!(
            md,
            "| kernel p99 ≤ {TARGET_KERNEL_P99_US} µs | {kernel_p99:.1} µs | {} |",
            met(kernel_p99 <= TARGET_KERNEL_P99_US)
        );
        let _ = writeln!(
            md,
            "| kernel ≥ {TARGET_SPEEDUP}× faster than the waypoint (p50 and p99) | {} / {} | {} |",
            fmt(p50),
            fmt(p99),
            met(p50.is_some_and(|r| r >= TARGET_SPEEDUP)
                && p99.is_some_and(|r| r >= TARGET_SPEEDUP))
        );
        let refusals = self.kernel["kernel_refusals"].as_u64().unwrap_or(0);
        let _ = writeln!(
            md,
            "\nKernel refusals counted during K (`egress_bpf_refused_verdict_cache_total`): \
             {refusals}; during W: {}.",
            self.waypoint["kernel_refusals"]
        );
        md
    }

    fn json(&self) -> Value {
        json!({
            "figure": "connect-deny",
            "count": self.count,
            "egress_profile": self.profile,
            "machine": self.machine,
            "target": format!("{SE_ADDR}:{SE_PORT}"),
            "identity": format!("cluster.local/ns/{NAMESPACE}/sa/{SERVICE_ACCOUNT}"),
            "kernel": self.kernel,
            "waypoint": self.waypoint,
            "ratio": { "p50": self.ratio("p50_us"), "p99": self.ratio("p99_us") },
            "targets": {
                "kernel_p99_us_max": TARGET_KERNEL_P99_US,
                "speedup_min": TARGET_SPEEDUP,
            },
        })
    }
}

/// Kernel release and CPU count, for the record.
fn machine() -> Value {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    json!({
        "kernel": kernel,
        "cpus": cpus,
        "summary": format!("Linux {kernel}, {cpus} CPUs"),
    })
}

/// A minimal HTTP/1.1 GET on loopback with short timeouts: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

/// Three distinct loopback ports that were free a moment ago.
fn free_ports() -> anyhow::Result<[SocketAddr; 3]> {
    let listeners = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    Ok([
        listeners[0].local_addr()?,
        listeners[1].local_addr()?,
        listeners[2].local_addr()?,
    ])
}

/// The cgroup2 mount point, from /proc/mounts.
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(target))
    })
}

fn remove_dir_all(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => eprintln!("removing {}: {e}", dir.display()),
    }
}

/// Removes a cgroup and its descendants, bottom-up. Processes still in them (only probes this
/// run started through `egress exec` can be) are moved to the root cgroup and killed by pid.
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

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set [`INTERRUPTED`] instead of killing xtask, so cleanup runs.
fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}
