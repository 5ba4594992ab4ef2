//! D/E/I/V side by side: the same nginx, the same load, four ways to reach it (and E and V
//! again with TLS origination), interleaved over several rounds.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{
    Env, SERVER_CPU, check_interrupted,
    dataplane::{Capture, Dataplane, DataplaneOptions},
    envoy::{Envoy, EnvoyMode, EnvoyOptions, UpstreamTls},
    free_ports,
    iptables::Redirect,
    load::{self, Client, Meter, NAMESPACE, SERVICE_ACCOUNT, Target},
    nginx::{BODY_BYTES, Nginx, TLS_HOST},
    pod::{ControlPlane, Node, Pod},
    remove_dir_all,
    report::Report,
    run_logged, syscalls,
};
use crate::cmd::step;

/// The ServiceEntry address the load dials (E: captured by the kernel programs; I and V:
/// redirected by iptables), and the one whose port 80 is originated as TLS.
pub const VIP: Ipv4Addr = Ipv4Addr::new(127, 89, 0, 1);
pub const VIP_TLS: Ipv4Addr = Ipv4Addr::new(127, 89, 0, 2);
/// The ServiceEntry host of [`VIP`] (the Host header of every request).
pub const HOST: &str = "bench.test";
/// Worker threads of every proxy ("same worker counts").
pub const WORKERS: u32 = 1;

/// One way to reach nginx.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Config {
    /// Straight to nginx: the limit.
    D,
    /// egress, eBPF capture, the seed policy loaded.
    E,
    /// egress behind iptables REDIRECT (SO_ORIGINAL_DST): what eBPF capture buys.
    I,
    /// Envoy behind iptables REDIRECT, RBAC equivalent to the seed policy.
    V,
    /// E with `--sockmap off`: the app↔waypoint hop over TCP, to show what the short-cut buys.
    ENoSockmap,
    /// E with TLS origination to nginx's TLS port (DestinationRule SIMPLE).
    ETls,
    /// V with TLS origination.
    VTls,
    /// E's policy and upstream, served by `egress run --kubernetes` (the DaemonSet agent) to a
    /// pod in its own network namespace: the load runs in the pod (issue 11).
    P,
}

impl Config {
    pub const ALL: [Config; 8] = [
        Config::D,
        Config::E,
        Config::I,
        Config::V,
        Config::ENoSockmap,
        Config::ETls,
        Config::VTls,
        Config::P,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Config::D => "D",
            Config::E => "E",
            Config::I => "I",
            Config::V => "V",
            Config::ENoSockmap => "E-nosockmap",
            Config::ETls => "E+TLS",
            Config::VTls => "V+TLS",
            Config::P => "P",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Config::ETls | Config::VTls)
    }
}

/// The figures, as metric names in the report.
pub mod metric {
    pub const KA16: &str = "keepalive_c16_rps";
    pub const KA64: &str = "keepalive_c64_rps";
    pub const CPR: &str = "conn_per_request_rps";
    /// `rate{i}_p50_us` / `rate{i}_p99_us` for rate index i.
    pub fn rate(i: usize, p: &str) -> String {
        format!("rate{i}_{p}_us")
    }
    pub const CPU_PROXY: &str = "cpu_proxy_s_per_10k";
    pub const CPU_NGINX: &str = "cpu_nginx_s_per_10k";
    pub const CPU_SYSTEM: &str = "cpu_system_s_per_10k";
    pub const RSS: &str = "peak_rss_mib";
    /// Proxy CPU per request ÷ nginx CPU per request, both over the same requests (the run at
    /// the highest fixed rate), per round.
    pub const CPU_PROXY_OVER_NGINX: &str = "cpu_proxy_over_nginx";
    pub const CPU_PROXY_US: &str = "cpu_proxy_us_per_request";
    pub const CPU_NGINX_US: &str = "cpu_nginx_us_per_request";
    /// Syscalls of the proxy per request (strace, a separate traced phase).
    pub const SYSCALLS: &str = "syscalls_per_request";
}

/// What P needs for all its rounds: one control plane and one node.
pub struct Cluster {
    // Field order is drop order: the node's cgroups go before the API server stops.
    node: Node,
    control_plane: ControlPlane,
}

impl Cluster {
    fn start(env: &Env) -> anyhow::Result<Cluster> {
        if !env.egress_kubernetes {
            bail!("this egress has no `run --kubernetes` (needed for P)");
        }
        let started = std::time::Instant::now();
        let control_plane = ControlPlane::start()?;
        let node = Node::new(&env.cgroup_root)?;
        println!(
            "    control plane ready in {:.1} s (CRDs and namespace label: {:.1} s in all)",
            control_plane.startup.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        Ok(Cluster {
            node,
            control_plane,
        })
    }
}

pub fn run(env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let plan = &env.plan;
    let mut configs = plan.configs.clone();
    step(&format!(
        "{}: {} round(s) × {} configurations, {} s per load run",
        configs
            .iter()
            .map(|c| c.key())
            .collect::<Vec<_>>()
            .join("/"),
        plan.rounds,
        configs.len(),
        plan.run_seconds
    ));
    let nginx = Nginx::start(
        &env.tools.nginx,
        env.tools.versions["nginx"].as_str().unwrap_or("nginx"),
    )?;
    // P's control plane starts once, for all rounds.
    let cluster = if configs.contains(&Config::P) {
        step("P: a control plane (etcd, kube-apiserver) and a node for the pod");
        let started = std::time::Instant::now();
        match Cluster::start(env) {
            Ok(cluster) => {
                report.sample(
                    Config::P.key(),
                    "control_plane_startup_s",
                    0,
                    started.elapsed().as_secs_f64(),
                );
                Some(cluster)
            }
            Err(error) => {
                check_interrupted()?;
                let message = format!("P: {error:#}");
                eprintln!("    FAILED {message}");
                report.errors.push(message);
                configs.retain(|c| *c != Config::P);
                None
            }
        }
    } else {
        None
    };
    for round in 0..plan.rounds {
        // Each round starts one configuration later, so none always runs first or last.
        let mut order = configs.clone();
        let shift = round % order.len();
        order.rotate_left(shift);
        for config in order {
            check_interrupted()?;
            step(&format!(
                "round {}/{}: {}",
                round + 1,
                plan.rounds,
                config.key()
            ));
            if let Err(error) = measure(env, report, &nginx, cluster.as_ref(), config, round) {
                check_interrupted()?;
                let message = format!("round {} {}: {error:#}", round + 1, config.key());
                eprintln!("    FAILED {message}");
                report.errors.push(message);
            }
        }
    }
    if let Some(cluster) = &cluster {
        cluster.control_plane.keep_logs(&env.out.join("logs"));
    }
    Ok(())
}

/// The proxy under test, whichever it is; Drop stops it (and removes Envoy's directory).
enum Proxy {
    None,
    Egress(Dataplane),
    Envoy(EnvoyRun),
}

pub struct EnvoyRun {
    // Field order is drop order: Envoy stops before its directory goes.
    pub envoy: Envoy,
    dir: PathBuf,
}

impl Drop for EnvoyRun {
    fn drop(&mut self) {
        remove_dir_all(&self.dir);
    }
}

impl EnvoyRun {
    /// Keeps Envoy's log next to the results.
    pub fn keep_log(&self, dir: &Path, name: &str) {
        let _ = std::fs::copy(self.envoy.log(), dir.join(format!("envoy-{name}.log")));
    }

    pub fn start(
        env: &Env,
        name: &str,
        mode: EnvoyMode,
        upstream: SocketAddr,
        upstream_tls: Option<UpstreamTls>,
    ) -> anyhow::Result<(EnvoyRun, SocketAddrV4)> {
        let dir = std::env::temp_dir().join(format!("egress-bench-{}-{name}", std::process::id()));
        remove_dir_all(&dir);
        let [listen, admin] = free_ports()?;
        let v4 = |a: SocketAddr| match a {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("free_ports binds 127.0.0.1"),
        };
        let opts = EnvoyOptions {
            listen: v4(listen),
            admin: v4(admin),
            upstream,
            upstream_tls,
            mode,
            concurrency: WORKERS,
            access_log: Some(dir.join("access.log")),
            dir: dir.clone(),
            cpus: Some(SERVER_CPU.to_owned()),
        };
        let envoy = Envoy::start(&env.tools.envoy, &opts);
        match envoy {
            Ok(envoy) => Ok((EnvoyRun { envoy, dir }, v4(listen))),
            Err(e) => {
                remove_dir_all(&dir);
                Err(e)
            }
        }
    }
}

impl Proxy {
    fn pid(&self) -> Option<u32> {
        match self {
            Proxy::None => None,
            Proxy::Egress(dp) => Some(dp.pid()),
            Proxy::Envoy(run) => Some(run.envoy.pid()),
        }
    }
}

/// One configuration, one round: start it, check it serves and enforces the policy, then run
/// every load and read CPU and RSS.
fn measure(
    env: &Env,
    report: &mut Report,
    nginx: &Nginx,
    cluster: Option<&Cluster>,
    config: Config,
    round: usize,
) -> anyhow::Result<()> {
    let name = format!(
        "{}-r{}",
        config.key().replace('+', "-").to_lowercase(),
        round + 1
    );
    let (vip, host) = if config.tls() {
        (VIP_TLS, TLS_HOST)
    } else {
        (VIP, HOST)
    };
    let vip_target = Target {
        url: format!("http://{vip}/get"),
        host: host.to_owned(),
    };
    // Keep the Redirect and the pod after the proxy in this list of guards: they go first on
    // drop.
    let proxy;
    let _redirect;
    let mut pod = None;
    let target;
    match config {
        Config::D => {
            proxy = Proxy::None;
            _redirect = None;
            target = Target {
                url: format!("http://{}/get", nginx.plain),
                host: HOST.to_owned(),
            };
        }
        Config::E | Config::ETls | Config::ENoSockmap => {
            proxy = Proxy::Egress(Dataplane::start(
                env,
                &DataplaneOptions {
                    sockmap: config != Config::ENoSockmap,
                    name: &name,
                    config: seed_config(nginx),
                    capture: Capture::Ebpf,
                    verdict_cache: true,
                    workers: Some(WORKERS),
                    cpus: Some(SERVER_CPU),
                },
            )?);
            _redirect = None;
            target = vip_target;
        }
        Config::P => {
            let cluster = cluster.context("P needs the control plane, which did not start")?;
            // E's objects, from the API server as a DaemonSet agent reads them: the namespace
            // bound to the waypoint (Istio's `use-waypoint`), then the same YAML E loads.
            cluster.control_plane.kubectl(&[
                "label",
                "namespace",
                NAMESPACE,
                "istio.io/use-waypoint=waypoint",
                "--overwrite",
            ])?;
            cluster
                .control_plane
                .kubectl_in(&["apply", "-f", "-"], &seed_config(nginx))?;
            let dp = Dataplane::start(
                env,
                &DataplaneOptions {
                    sockmap: true,
                    name: &name,
                    config: seed_config(nginx),
                    capture: Capture::Kubernetes {
                        kubeconfig: cluster.control_plane.kubeconfig.clone(),
                        node_name: cluster.node.name.clone(),
                        pod_root: cluster.node.pod_root.clone(),
                    },
                    verdict_cache: true,
                    workers: Some(WORKERS),
                    cpus: Some(SERVER_CPU),
                },
            )?;
            // A fresh pod per round, as every configuration is started afresh.
            let started = Pod::start(
                &cluster.control_plane,
                &cluster.node,
                NAMESPACE,
                SERVICE_ACCOUNT,
                SERVICE_ACCOUNT,
            )?;
            let served = started.wait_served(dp.admin)?;
            println!(
                "    pod {NAMESPACE}/{SERVICE_ACCOUNT} (uid {}) served after {:.0} ms",
                started.uid,
                served.as_secs_f64() * 1e3
            );
            report.sample(config.key(), "pod_served_s", round, served.as_secs_f64());
            pod = Some(started);
            proxy = Proxy::Egress(dp);
            _redirect = None;
            target = vip_target;
        }
        Config::I => {
            let dp = Dataplane::start(
                env,
                &DataplaneOptions {
                    sockmap: true,
                    name: &name,
                    config: seed_config(nginx),
                    capture: Capture::Iptables {
                        identity: format!("{NAMESPACE}/{SERVICE_ACCOUNT}"),
                    },
                    verdict_cache: true,
                    workers: Some(WORKERS),
                    cpus: Some(SERVER_CPU),
                },
            )?;
            _redirect = Some(Redirect::install(&[(vip, 80)], dp.listen.port())?);
            proxy = Proxy::Egress(dp);
            target = vip_target;
        }
        Config::V | Config::VTls => {
            let (upstream, tls) = if config.tls() {
                (
                    nginx.tls,
                    Some(UpstreamTls {
                        ca_pem: nginx.ca.clone(),
                        sni: TLS_HOST.to_owned(),
                    }),
                )
            } else {
                (nginx.plain, None)
            };
            let (run, listen) =
                EnvoyRun::start(env, &name, EnvoyMode::HttpSeedPolicy, upstream, tls)?;
            _redirect = Some(Redirect::install(&[(vip, 80)], listen.port())?);
            proxy = Proxy::Envoy(run);
            target = vip_target;
        }
    }
    let client = match (&proxy, &pod) {
        (_, Some(pod)) => Client::Pod(pod),
        (Proxy::Egress(dp), None) if !matches!(config, Config::I) => Client::Captured(dp),
        _ => Client::Plain,
    };
    preflight(env, config, &client, &target, &name)?;

    let seconds = env.plan.run_seconds;
    let log = |figure: &str| load::log_path(env, &format!("{name}-{figure}"));
    // Warm-up: connection pools, caches, page faults; not recorded.
    load::wrk(env, &client, &target, 16, false, 1, &log("warmup")?)?;
    let nginx_pids = nginx.pids();
    let key = config.key();

    let meter = Meter::start(proxy.pid(), nginx_pids.clone());
    let ka16 = load::wrk(env, &client, &target, 16, false, seconds, &log("ka16")?)?;
    let cpu_ka16 = meter.stop();
    ka16.check("keep-alive, 16 connections")?;
    report.sample(key, metric::KA16, round, ka16.rps());
    report.raw(key, round, "keepalive_c16", &ka16, Some(cpu_ka16));

    let ka64 = load::wrk(env, &client, &target, 64, false, seconds, &log("ka64")?)?;
    ka64.check("keep-alive, 64 connections")?;
    report.sample(key, metric::KA64, round, ka64.rps());
    report.raw(key, round, "keepalive_c64", &ka64, None);

    let cpr = load::wrk(env, &client, &target, 16, true, seconds, &log("cpr")?)?;
    cpr.check("connection per request")?;
    report.sample(key, metric::CPR, round, cpr.rps());
    report.raw(key, round, "conn_per_request", &cpr, None);

    for (i, rate) in env.plan.rates.iter().enumerate() {
        let meter = Meter::start(proxy.pid(), nginx_pids.clone());
        let run = load::oha(
            env,
            &client,
            &target,
            *rate,
            seconds,
            &log(&format!("rate{rate}"))?,
        )?;
        let cpu = meter.stop();
        run.check(&format!("{rate} requests/s"))?;
        report.sample(key, &metric::rate(i, "p50"), round, run.p50_us);
        report.sample(key, &metric::rate(i, "p99"), round, run.p99_us);
        report.raw(key, round, &format!("rate_{rate}"), &run, Some(cpu));
        // CPU per request at the highest fixed rate: every configuration did the same work.
        if i + 1 == env.plan.rates.len() && run.requests > 0 {
            let per_10k = |s: f64| s / run.requests as f64 * 10_000.0;
            let per_request_us = |s: f64| s / run.requests as f64 * 1e6;
            if let Some(proxy_s) = cpu.proxy_s {
                report.sample(key, metric::CPU_PROXY, round, per_10k(proxy_s));
                report.sample(key, metric::CPU_PROXY_US, round, per_request_us(proxy_s));
                if cpu.nginx_s > 0.0 {
                    report.sample(
                        key,
                        metric::CPU_PROXY_OVER_NGINX,
                        round,
                        proxy_s / cpu.nginx_s,
                    );
                }
            }
            report.sample(
                key,
                metric::CPU_NGINX_US,
                round,
                per_request_us(cpu.nginx_s),
            );
            report.sample(key, metric::CPU_NGINX, round, per_10k(cpu.nginx_s));
            report.sample(key, metric::CPU_SYSTEM, round, per_10k(cpu.system_s));
        }
    }
    if let Some(rss) = proxy.pid().and_then(load::peak_rss_mib) {
        report.sample(key, metric::RSS, round, rss);
    }
    // Last, so tracing never slows a measured phase: syscalls per request under strace.
    if let Some(pid) = proxy.pid() {
        let traced = syscalls::count(pid, &env.out.join("logs"), &name, || {
            load::wrk(env, &client, &target, 16, false, seconds, &log("syscalls")?)
        })?;
        match traced {
            Ok(count) => {
                println!(
                    "    syscalls per request: {:.1} ({} calls, {} requests)",
                    count.per_request(),
                    count.calls,
                    count.requests
                );
                report.sample(key, metric::SYSCALLS, round, count.per_request());
                report.raw_value(serde_json::json!({
                    "config": key, "round": round + 1, "figure": "syscalls", "strace": count.json(),
                }));
            }
            Err(why) => {
                println!("    syscalls per request: not measured: {why}");
                report.syscall_note(key, round, &why);
            }
        }
    }
    match &proxy {
        Proxy::Egress(dp) => dp.keep_log(&env.out.join("logs"), &name),
        Proxy::Envoy(run) => run.keep_log(&env.out.join("logs"), &name),
        Proxy::None => {}
    }
    Ok(())
}

/// Before measuring: `/get` answers 200 with the 1 KiB body through the proxy (with its
/// signature header), and `/post` is refused with 403 (the policy is loaded).
fn preflight(
    env: &Env,
    config: Config,
    client: &Client,
    target: &Target,
    name: &str,
) -> anyhow::Result<()> {
    let curl = |path: &str| -> anyhow::Result<(u16, usize, String)> {
        let mut command: Command = client.command(Path::new("curl"));
        let url = target.url.replace("/get", path);
        command
            .args(["-sS", "--max-time", "5", "-D", "-", "-o", "/dev/null"])
            .args(["-w", "CURL_RESULT %{http_code} %{size_download}\\n"])
            .args(["-H", &format!("Host: {}", target.host)])
            .arg(&url);
        let log = load::log_path(env, &format!("{name}-preflight{}", path.replace('/', "-")))?;
        let output = run_logged(&mut command, &log, Duration::from_secs(10))?;
        let result = output
            .lines()
            .find_map(|line| line.strip_prefix("CURL_RESULT "))
            .with_context(|| format!("curl printed no result: {output}"))?;
        let mut fields = result.split_whitespace();
        let code = fields.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let size = fields.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((code, size, output.to_lowercase()))
    };
    let (code, size, head) = curl("/get")?;
    if code != 200 || size != BODY_BYTES {
        bail!(
            "GET {} answered {code} with {size} bytes, not 200 with {BODY_BYTES}: {head}",
            target.url
        );
    }
    let signature = match config {
        Config::D => None,
        Config::E | Config::I | Config::ETls | Config::ENoSockmap | Config::P => {
            Some("via: 1.1 egress-waypoint")
        }
        Config::V | Config::VTls => Some("x-envoy-upstream-service-time"),
    };
    if let Some(signature) = signature
        && !head.contains(signature)
    {
        bail!(
            "GET {} was answered without `{signature}`: the load would not cross the proxy \
             under test. Headers: {head}",
            target.url
        );
    }
    if config != Config::D {
        let (code, _, head) = curl("/post")?;
        if code != 403 {
            bail!("GET /post answered {code}, not 403: the seed policy is not enforced: {head}");
        }
    }
    Ok(())
}

/// The ServiceEntries of E and I (plain and TLS-originated), the DestinationRule of the TLS one
/// and the seed policy for both: `cluster.local/ns/default/sa/sleep` may GET /get.
pub fn seed_config(nginx: &Nginx) -> String {
    let ca = nginx.ca.display();
    let mut yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: bench, namespace: {NAMESPACE}}}
spec:
  hosts: [{HOST}]
  addresses: [{VIP}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {ip}, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: bench-tls, namespace: {NAMESPACE}}}
spec:
  hosts: [{TLS_HOST}]
  addresses: [{VIP_TLS}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {tls_port}}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {tls_ip}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: bench-tls, namespace: {NAMESPACE}}}
spec:
  host: {TLS_HOST}
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}, sni: {TLS_HOST}}}
",
        ip = nginx.plain.ip(),
        port = nginx.plain.port(),
        tls_ip = nginx.tls.ip(),
        tls_port = nginx.tls.port(),
    );
    for se in ["bench", "bench-tls"] {
        yaml.push_str(&seed_policy(se));
    }
    yaml
}

/// examples/httpbin-authz.yaml's `httpbin-local` policy, attached to ServiceEntry `se`.
pub fn seed_policy(se: &str) -> String {
    format!(
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {se}, namespace: {NAMESPACE}}}
spec:
  targetRefs:
  - {{kind: ServiceEntry, group: networking.istio.io, name: {se}}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/{NAMESPACE}/sa/{SERVICE_ACCOUNT}\"]
    to:
    - operation:
        methods: [\"GET\"]
        paths: [\"/get\"]
  - from:
    - source:
        principals: [\"cluster.local/ns/{NAMESPACE}/sa/admin\"]
"
    )
}
