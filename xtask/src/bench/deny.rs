//! connect→deny latency: what a workload waits for when the policy denies it a destination.
//! K: the kernel verdict cache refuses `connect()` (EPERM); W: our waypoint decides every
//! connect (`--verdict-cache off`) and closes; Envoy: iptables REDIRECT to Envoy, whose RBAC
//! network filter closes. One round runs K, W, Envoy, each freshly started.
use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Env, LOAD_CPU, check_interrupted,
    dataplane::{Capture, Dataplane, DataplaneOptions},
    envoy::EnvoyMode,
    free_ports,
    http::{EnvoyRun, WORKERS},
    iptables::Redirect,
    load::{self, Steal, StealMeter},
    report::Report,
    run_logged, sleep_checked,
};
use crate::cmd::step;

/// How long the kernel may take to hold the deny after the warm-up connect.
const CACHE_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of one probe run (connect-probe stops itself at `--max-seconds`).
const PROBE_MAX_SECONDS: u64 = 120;
/// Per-connect timeout of the probe.
const CONNECT_TIMEOUT_MS: u64 = 1000;
/// The ServiceEntry address and port the workload dials; denied connects never get further.
const SE_ADDR: Ipv4Addr = Ipv4Addr::new(127, 88, 0, 1);
/// Envoy's denied destination (a separate address, so nothing of K or W can touch it).
const ENVOY_ADDR: Ipv4Addr = Ipv4Addr::new(127, 88, 0, 2);
const SE_PORT: u16 = 9000;
const SE_NAME: &str = "bench-denied";
/// The identity the policy denies.
const NAMESPACE: &str = "default";
const SERVICE_ACCOUNT: &str = "bench";

#[derive(Clone, Copy)]
enum Scenario {
    Kernel,
    Waypoint,
    Envoy,
}

impl Scenario {
    fn key(self) -> &'static str {
        match self {
            Scenario::Kernel => "deny-K",
            Scenario::Waypoint => "deny-W",
            Scenario::Envoy => "deny-V",
        }
    }
}

pub fn run(env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let plan = &env.plan;
    step(&format!(
        "connect→deny: {} round(s) × K, W, Envoy, {} connects each",
        plan.rounds, plan.deny_count
    ));
    for round in 0..plan.rounds {
        for scenario in [Scenario::Kernel, Scenario::Waypoint, Scenario::Envoy] {
            check_interrupted()?;
            let name = format!("{}-r{}", scenario.key(), round + 1);
            step(&format!("round {}/{}: {name}", round + 1, plan.rounds));
            match measure(env, scenario, &name) {
                Ok(result) => {
                    println!("    {result}");
                    let ticks = |k: &str| result["steal"][k].as_u64().unwrap_or(0);
                    report.steal(
                        format!("{name} connect→deny"),
                        Steal {
                            steal_ticks: ticks("steal_ticks"),
                            total_ticks: ticks("total_ticks"),
                        },
                    );
                    // min, p90 and max: the distribution chart (charts.rs), not the table.
                    for field in [
                        "deny_min_us",
                        "deny_p50_us",
                        "deny_p90_us",
                        "deny_p99_us",
                        "deny_max_us",
                        "full_p50_us",
                        "full_p99_us",
                    ] {
                        if let Some(v) = result[field].as_f64() {
                            report.sample(scenario.key(), field, round, v);
                        }
                    }
                    report.raw_value(json!({
                        "config": scenario.key(), "round": round + 1, "figure": "connect-deny",
                        "probe": result,
                    }));
                }
                Err(error) => {
                    check_interrupted()?;
                    let message = format!("round {} {}: {error:#}", round + 1, scenario.key());
                    eprintln!("    FAILED {message}");
                    report.errors.push(message);
                }
            }
        }
    }
    Ok(())
}

fn measure(env: &Env, scenario: Scenario, name: &str) -> anyhow::Result<Value> {
    let count = env.plan.deny_count;
    match scenario {
        Scenario::Kernel | Scenario::Waypoint => {
            let kernel = matches!(scenario, Scenario::Kernel);
            let dp = Dataplane::start(
                env,
                &DataplaneOptions {
                    name,
                    sockmap: true,
                    config: config(free_ports::<1>()?[0]),
                    capture: Capture::Ebpf,
                    verdict_cache: kernel,
                    workers: Some(WORKERS),
                    cpus: Some(super::SERVER_CPU),
                },
            )?;
            let target = format!("{SE_ADDR}:{SE_PORT}");
            let probe = |count: usize, mode: &str, tag: &str| {
                let mut command = dp.exec(NAMESPACE, SERVICE_ACCOUNT, &env.probe);
                probe_args(&mut command, &target, count, mode, !kernel);
                run_probe(env, command, &format!("{name}-{tag}"))
            };
            // One connect first, so neither measures a cold start. W: it crosses the waypoint,
            // which decides. K: `egress exec` has the dataplane write a new identity's
            // L4-decidable denies before the command runs, so it is already refused in the
            // kernel (EPERM); a dataplane that learns it at the waypoint instead answers it
            // there and writes the deny.
            let warm = probe(1, "waypoint", "warmup")?;
            let refused_in_kernel = kernel
                && warm["error_kinds"]
                    .as_object()
                    .is_some_and(|kinds| kinds.keys().any(|k| k.contains("os error 1)")));
            if warm["denied"] != json!(1) && !refused_in_kernel {
                bail!(
                    "the warm-up connect was neither denied by the waypoint nor refused in the kernel: {warm}"
                );
            }
            if kernel {
                let deadline = Instant::now() + CACHE_TIMEOUT;
                while dp.counter("verdict_cache_entries")? < 1.0 {
                    if Instant::now() >= deadline {
                        bail!(
                            "the kernel verdict cache holds no entry {CACHE_TIMEOUT:?} after the \
                             warm-up connect; the egress log is {}",
                            dp.log().display()
                        );
                    }
                    sleep_checked(Duration::from_millis(50))?;
                }
            }
            let refused_before = dp.counter("refused_verdict_cache")?;
            let mode = if kernel { "kernel" } else { "waypoint" };
            let steal = StealMeter::start();
            let mut result = probe(count, mode, "probe")?;
            result["steal"] = steal.stop().json();
            check_denied(&result, count)?;
            let refused = dp.counter("refused_verdict_cache")? - refused_before;
            result["kernel_refusals"] = json!(refused as u64);
            dp.keep_log(&env.out.join("logs"), name);
            Ok(result)
        }
        Scenario::Envoy => {
            // Nothing listens on the upstream: a denied connection never gets there.
            let upstream = free_ports::<1>()?[0];
            let (run, listen) = EnvoyRun::start(env, name, EnvoyMode::TcpDenyAll, upstream, None)?;
            let _redirect = Redirect::install(&[(ENVOY_ADDR, SE_PORT)], listen.port())?;
            let target = format!("{ENVOY_ADDR}:{SE_PORT}");
            let probe = |count: usize, tag: &str| {
                let mut command = Command::new("taskset");
                command.args(["-c", LOAD_CPU]).arg(&env.probe);
                probe_args(&mut command, &target, count, "waypoint", true);
                run_probe(env, command, &format!("{name}-{tag}"))
            };
            let warm = probe(1, "warmup")?;
            if warm["denied"] != json!(1) {
                bail!("the warm-up connect was not closed by Envoy: {warm}");
            }
            let steal = StealMeter::start();
            let mut result = probe(count, "probe")?;
            result["steal"] = steal.stop().json();
            check_denied(&result, count)?;
            run.keep_log(&env.out.join("logs"), name);
            Ok(result)
        }
    }
}

/// More than 1% of the connects not denied as expected: the figure would time something else.
fn check_denied(result: &Value, count: usize) -> anyhow::Result<()> {
    let denied = result["denied"].as_u64().unwrap_or(0) as usize;
    if denied * 100 < count * 99 {
        bail!("only {denied} of {count} connects were denied as expected: {result}");
    }
    Ok(())
}

fn probe_args(command: &mut Command, target: &str, count: usize, mode: &str, send: bool) {
    command
        .args(["--addr", target])
        .args(["--count", &count.to_string()])
        .args(["--mode", mode])
        .args(["--cpu", LOAD_CPU])
        .args(["--timeout-ms", &CONNECT_TIMEOUT_MS.to_string()])
        .args(["--max-seconds", &PROBE_MAX_SECONDS.to_string()]);
    if send {
        command.arg("--send");
    }
}

/// Runs the connect probe (bounded) and parses the JSON line it prints.
fn run_probe(env: &Env, command: Command, name: &str) -> anyhow::Result<Value> {
    run_json_probe(env, command, name, "connect-probe", PROBE_MAX_SECONDS)
}

/// Runs a probe binary that prints one JSON line (`connect-probe`, `dns-probe`), bounded by
/// its own `--max-seconds` plus a margin, its output logged as `name`; returns that line.
pub(super) fn run_json_probe(
    env: &Env,
    mut command: Command,
    name: &str,
    probe: &str,
    max_seconds: u64,
) -> anyhow::Result<Value> {
    let log = load::log_path(env, name)?;
    let output = run_logged(&mut command, &log, Duration::from_secs(max_seconds + 30))?;
    let line = output
        .lines()
        .find(|line| line.starts_with('{'))
        .with_context(|| format!("{probe} printed no JSON: {output:?}"))?;
    serde_json::from_str(line).with_context(|| format!("{probe} printed {line:?}"))
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
