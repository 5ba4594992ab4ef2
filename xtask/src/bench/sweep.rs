//! The ServiceEntry scale sweep: E (kernel LPM-trie lookup per connect) against I (one iptables
//! REDIRECT rule per address, walked in order, as kube-proxy's iptables mode does) with 1, 100,
//! 1000 and 10000 addresses (in ServiceEntries of 250); connection-per-request rate to the last
//! address, the one iptables reaches last.
use std::{net::Ipv4Addr, time::Instant};

use serde_json::json;

use super::{
    Env, SERVER_CPU, check_interrupted,
    dataplane::{Capture, Dataplane, DataplaneOptions},
    http::{WORKERS, metric, seed_policy},
    iptables::Redirect,
    load::{self, Client, NAMESPACE, SERVICE_ACCOUNT, Target},
    nginx::Nginx,
    report::Report,
};
use crate::cmd::step;

const SE_NAME: &str = "bench-sweep";
/// Host of ServiceEntry i: `sweep-<i>.bench.test`.
fn host(i: usize) -> String {
    format!("sweep-{i}.bench.test")
}
/// Addresses per ServiceEntry: those of one 127.90.x.0/24.
const ADDRESSES_PER_SE: usize = 250;

pub fn run(env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let plan = &env.plan;
    step(&format!(
        "ServiceEntry sweep: {} round(s) × {:?} addresses × E, I; {} s connection-per-request runs",
        plan.rounds, plan.sweep, plan.run_seconds
    ));
    let nginx = Nginx::start(
        &env.tools.nginx,
        env.tools.versions["nginx"].as_str().unwrap_or("nginx"),
    )?;
    report.sweep_sizes = plan.sweep.clone();
    for round in 0..plan.rounds {
        for &n in &plan.sweep {
            // Alternate which goes first.
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for ebpf in order {
                check_interrupted()?;
                let key = format!("sweep-{}-{n}", if ebpf { "E" } else { "I" });
                step(&format!("round {}/{}: {key}", round + 1, plan.rounds));
                if let Err(error) = measure(env, report, &nginx, ebpf, n, round, &key) {
                    check_interrupted()?;
                    let message = format!("round {} {key}: {error:#}", round + 1);
                    eprintln!("    FAILED {message}");
                    report.errors.push(message);
                }
            }
        }
    }
    Ok(())
}

fn measure(
    env: &Env,
    report: &mut Report,
    nginx: &Nginx,
    ebpf: bool,
    n: usize,
    round: usize,
    key: &str,
) -> anyhow::Result<()> {
    let addresses = addresses(n);
    let last = *addresses.last().expect("at least one address");
    let name = format!("{}-r{}", key.to_lowercase(), round + 1);
    let started = Instant::now();
    let dp = Dataplane::start(
        env,
        &DataplaneOptions {
            sockmap: true,
            name: &name,
            config: config(nginx, &addresses),
            capture: if ebpf {
                Capture::Ebpf
            } else {
                Capture::Iptables {
                    identity: format!("{NAMESPACE}/{SERVICE_ACCOUNT}"),
                }
            },
            verdict_cache: true,
            workers: Some(WORKERS),
            cpus: Some(SERVER_CPU),
        },
    )?;
    let _redirect = if ebpf {
        None
    } else {
        let targets: Vec<(Ipv4Addr, u16)> = addresses.iter().map(|a| (*a, 80)).collect();
        Some(Redirect::install(&targets, dp.listen.port())?)
    };
    let startup = started.elapsed().as_secs_f64();
    let client = if ebpf {
        Client::Captured(&dp)
    } else {
        Client::Plain
    };
    let target = Target {
        url: format!("http://{last}/get"),
        host: host((n - 1) / ADDRESSES_PER_SE),
    };
    let log = |figure: &str| load::log_path(env, &format!("{name}-{figure}"));
    load::wrk(env, &client, &target, 16, false, 1, &log("warmup")?)?.check("warm-up")?;
    let cpr = load::wrk(
        env,
        &client,
        &target,
        16,
        true,
        env.plan.run_seconds,
        &log("cpr")?,
    )?;
    cpr.check("connection per request")?;
    report.sample(key, metric::CPR, round, cpr.rps());
    report.sample(key, "startup_s", round, startup);
    report.raw(key, round, "conn_per_request", &cpr, None);
    report.raw_value(json!({"config": key, "round": round + 1, "figure": "startup", "seconds": startup, "addresses": n}));
    Ok(())
}

/// `n` loopback addresses 127.90.x.y (y from 1 to 250).
fn addresses(n: usize) -> Vec<Ipv4Addr> {
    (0..n)
        .map(|i| Ipv4Addr::new(127, 90, (i / 250) as u8, (i % 250 + 1) as u8))
        .collect()
}

/// The addresses in ServiceEntries of at most [`ADDRESSES_PER_SE`] (egress's per-entry limit
/// is 256), one per `127.90.x.0/24`, endpoint nginx, each with the seed policy.
fn config(nginx: &Nginx, addresses: &[Ipv4Addr]) -> String {
    let mut yaml = String::new();
    for (i, chunk) in addresses.chunks(ADDRESSES_PER_SE).enumerate() {
        let list: Vec<String> = chunk.iter().map(Ipv4Addr::to_string).collect();
        let name = format!("{SE_NAME}-{i}");
        yaml.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  hosts: [{}]
  addresses: [{}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {}, ports: {{http: {}}}}}]
{}",
            host(i),
            list.join(", "),
            nginx.plain.ip(),
            nginx.plain.port(),
            seed_policy(&name)
        ));
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_loopback() {
        let a = addresses(10_000);
        assert_eq!(a[0], Ipv4Addr::new(127, 90, 0, 1));
        assert_eq!(a[249], Ipv4Addr::new(127, 90, 0, 250));
        assert_eq!(a[250], Ipv4Addr::new(127, 90, 1, 1));
        assert_eq!(a[9_999], Ipv4Addr::new(127, 90, 39, 250));
        let unique: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(unique.len(), 10_000);
    }
}
