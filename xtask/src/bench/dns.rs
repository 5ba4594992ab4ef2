//! DNS query latency (issue 12): a query from the captured cgroup to the resolver, rewritten by
//! the kernel programs to `egress`'s DNS listener and answered there, against the same query
//! asked of the same resolver directly, in the same round.
//!
//! The resolver is Debian's dnsmasq on a loopback address, as the DNS e2e tests run it
//! (tests/src/resolver.rs), pinned to the servers' CPU. It knows `fwd.bench.test` (no
//! ServiceEntry: the proxy forwards it to dnsmasq and returns the answer unchanged) and
//! `bench.test` (the bench's ServiceEntry host with `addresses: [127.89.0.1]`: the proxy
//! answers it itself with that address, dnsmasq with another, so the answer shows which path
//! it took). The client is `dns-probe` (xtask/src/bin/dns-probe.rs): sequential A queries over
//! a connected UDP socket, a timeout each, a bounded count.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    str::FromStr as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, RecordType},
};
use serde_json::{Value, json};

use super::{
    Env, SERVER_CPU, check_interrupted,
    dataplane::{Capture, Dataplane, DataplaneOptions},
    http::{HOST, VIP, WORKERS, seed_config},
    load::{Client, StealMeter},
    nginx::Nginx,
    remove_dir_all,
    report::Report,
};
use crate::cmd::{self, step};

/// The upstream resolver's address (port 53), on loopback, apart from the tests' 127.0.63.x.
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 91, 0, 53);
/// A name no ServiceEntry has: forwarded by the proxy.
pub const FORWARDED: &str = "fwd.bench.test";
/// What dnsmasq answers for [`FORWARDED`] and for the ServiceEntry host [`HOST`].
pub const FORWARDED_IP: Ipv4Addr = Ipv4Addr::new(127, 91, 1, 1);
pub const HOST_REAL_IP: Ipv4Addr = Ipv4Addr::new(127, 91, 1, 2);
/// Per-query timeout of the probe, and the probe's own bound.
const QUERY_TIMEOUT_MS: u64 = 1000;
const PROBE_MAX_SECONDS: u64 = 120;
/// Queries before each measured probe, not recorded (the proxy's upstream socket, caches).
const WARMUP: usize = 50;

/// One of the four measured paths.
#[derive(Clone, Copy)]
struct Path {
    key: &'static str,
    proxied: bool,
    name: &'static str,
    expect: Ipv4Addr,
}

const PATHS: [Path; 4] = [
    Path {
        key: "dns-direct-fwd",
        proxied: false,
        name: FORWARDED,
        expect: FORWARDED_IP,
    },
    Path {
        key: "dns-proxy-fwd",
        proxied: true,
        name: FORWARDED,
        expect: FORWARDED_IP,
    },
    Path {
        key: "dns-direct-se",
        proxied: false,
        name: HOST,
        expect: HOST_REAL_IP,
    },
    Path {
        key: "dns-proxy-se",
        proxied: true,
        name: HOST,
        expect: VIP,
    },
];

pub fn run(env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let plan = &env.plan;
    step(&format!(
        "DNS: {} round(s) × direct / through the DNS proxy × forwarded name / ServiceEntry \
         host, {} queries each",
        plan.rounds, plan.dns_count
    ));
    if !env.egress_dns {
        bail!("this egress has no DNS proxy (`run --dns-listen`)");
    }
    let resolver = Dnsmasq::start()?;
    // The upstream of the ServiceEntries in the seed config; nothing here connects to it.
    let nginx = Nginx::start(
        &env.tools.nginx,
        env.tools.versions["nginx"].as_str().unwrap_or("nginx"),
    )?;
    for round in 0..plan.rounds {
        check_interrupted()?;
        step(&format!("round {}/{}: DNS", round + 1, plan.rounds));
        if let Err(error) = measure(env, report, &nginx, round) {
            check_interrupted()?;
            let message = format!("round {} DNS: {error:#}", round + 1);
            eprintln!("    FAILED {message}");
            report.errors.push(message);
        }
    }
    resolver.keep_log(&env.out.join("logs"));
    Ok(())
}

fn measure(env: &Env, report: &mut Report, nginx: &Nginx, round: usize) -> anyhow::Result<()> {
    let name = format!("dns-r{}", round + 1);
    let dp = Dataplane::start(
        env,
        &DataplaneOptions {
            name: &name,
            sockmap: true,
            config: seed_config(nginx),
            capture: Capture::Ebpf,
            verdict_cache: true,
            workers: Some(WORKERS),
            cpus: Some(SERVER_CPU),
        },
    )?;
    // Alternate the order per round, so neither path always runs first.
    let mut order = PATHS.to_vec();
    if round % 2 == 1 {
        order.reverse();
    }
    for path in order {
        check_interrupted()?;
        let client = if path.proxied {
            Client::Captured(&dp)
        } else {
            Client::Plain
        };
        let redirected_before = dp.counter("dns_redirected").unwrap_or(0.0);
        probe(
            env,
            &client,
            path,
            WARMUP,
            &format!("{name}-{}-warmup", path.key),
        )?;
        let steal = StealMeter::start();
        let result = probe(
            env,
            &client,
            path,
            env.plan.dns_count,
            &format!("{name}-{}", path.key),
        )?;
        report.steal(format!("{} round {}", path.key, round + 1), steal.stop());
        let redirected = dp.counter("dns_redirected").unwrap_or(0.0) - redirected_before;
        // Through the proxy, every query was rewritten in the kernel (a connected UDP socket:
        // one redirect per socket at least); direct, none of them.
        if path.proxied && redirected < 1.0 {
            bail!(
                "{}: the kernel counted no DNS redirect: the queries did not reach the proxy",
                path.key
            );
        }
        println!("    {result}");
        for field in ["p50_us", "p90_us", "p99_us", "min_us", "max_us"] {
            if let Some(v) = result[field].as_f64() {
                report.sample(path.key, field, round, v);
            }
        }
        report.raw_value(json!({
            "config": path.key, "round": round + 1, "figure": "dns", "probe": result,
            "kernel_dns_redirects": redirected,
        }));
    }
    dp.keep_log(&env.out.join("logs"), &name);
    Ok(())
}

/// Runs `dns-probe` for `count` queries; fails when more than 1% got no good answer.
fn probe(
    env: &Env,
    client: &Client,
    path: Path,
    count: usize,
    log_name: &str,
) -> anyhow::Result<Value> {
    let mut command = client.command(&env.dns_probe);
    command
        .args(["--server", &SocketAddr::from((RESOLVER, 53)).to_string()])
        .args(["--name", path.name])
        .args(["--count", &count.to_string()])
        .args(["--expect", &path.expect.to_string()])
        .args(["--timeout-ms", &QUERY_TIMEOUT_MS.to_string()])
        .args(["--max-seconds", &PROBE_MAX_SECONDS.to_string()]);
    let result =
        super::deny::run_json_probe(env, command, log_name, "dns-probe", PROBE_MAX_SECONDS)?;
    let answered = result["answered"].as_u64().unwrap_or(0) as usize;
    if answered * 100 < count * 99 {
        bail!(
            "{}: only {answered} of {count} queries for {} got the expected answer ({}): {result}",
            path.key,
            path.name,
            path.expect
        );
    }
    Ok(result)
}

/// dnsmasq on [`RESOLVER`]:53, authoritative for `.test` with the bench's names; Drop kills it
/// by pid and removes its directory.
struct Dnsmasq {
    process: Child,
    dir: PathBuf,
}

impl Dnsmasq {
    fn start() -> anyhow::Result<Dnsmasq> {
        if !cmd::on_path("dnsmasq") {
            bail!("dnsmasq is not installed (Debian package dnsmasq-base)");
        }
        let dir = std::env::temp_dir().join(format!("egress-bench-{}-dnsmasq", std::process::id()));
        remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let hosts = dir.join("hosts");
        fs::write(
            &hosts,
            format!("{FORWARDED_IP} {FORWARDED}\n{HOST_REAL_IP} {HOST}\n"),
        )
        .with_context(|| format!("writing {}", hosts.display()))?;
        let log = fs::File::create(dir.join("dnsmasq.log")).context("creating dnsmasq's log")?;
        let mut command = Command::new("taskset");
        command
            .args(["-c", SERVER_CPU, "dnsmasq"])
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--local=/test/",
                "--bind-interfaces",
                "--port=53",
                "--user=root",
                "--group=root",
                "--pid-file=",
                "--log-facility=-",
                // No per-query log: its writes would be part of the figure.
                "--cache-size=1000",
            ])
            .arg(format!("--listen-address={RESOLVER}"))
            .arg("--local-ttl=60")
            .arg(format!("--addn-hosts={}", hosts.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        println!("    $ {}", cmd::display(&command));
        let process = command.spawn().context("starting dnsmasq")?;
        let mut dnsmasq = Dnsmasq { process, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            check_interrupted()?;
            if let Some(status) = dnsmasq.process.try_wait()? {
                bail!(
                    "dnsmasq exited ({status}) before it answered: {}",
                    dnsmasq.log()
                );
            }
            if query_a(SocketAddr::from((RESOLVER, 53)), FORWARDED)
                .is_some_and(|ips| ips == [FORWARDED_IP])
            {
                return Ok(dnsmasq);
            }
            if Instant::now() >= deadline {
                bail!(
                    "dnsmasq on {RESOLVER}:53 did not answer {FORWARDED} with {FORWARDED_IP} within 10 s: {}",
                    dnsmasq.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    fn keep_log(&self, dir: &std::path::Path) {
        let _ = fs::copy(self.dir.join("dnsmasq.log"), dir.join("dnsmasq.log"));
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        remove_dir_all(&self.dir);
    }
}

/// One A query over UDP (half a second): the answer's addresses, `None` without an answer.
fn query_a(server: SocketAddr, name: &str) -> Option<Vec<Ipv4Addr>> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut query = Message::new(0x4567, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        Name::from_str(&format!("{name}.")).ok()?,
        RecordType::A,
    ));
    socket.send_to(&query.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 1024];
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    let reply = Message::from_vec(&buf[..len]).ok()?;
    Some(
        reply
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
    )
}
