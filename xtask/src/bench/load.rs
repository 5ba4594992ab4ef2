//! The load generators (wrk for closed-loop requests/s, oha for fixed rates with latency
//! correction) and what the bench reads from /proc around them: CPU time of the proxy, of nginx
//! and of the whole system, and peak RSS.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{Env, LOAD_CPU, dataplane::Dataplane, pod::Pod, run_logged};

/// Extra time a load generator gets beyond its run length before it is killed.
const SLACK: Duration = Duration::from_secs(30);
/// The identity E's load runs as (the seed policy lets it GET /get).
pub const NAMESPACE: &str = "default";
pub const SERVICE_ACCOUNT: &str = "sleep";

/// Prints one JSON line with wrk's own counts when a run ends.
const WRK_SCRIPT: &str = r#"-- cargo xtask bench: wrk's counts as one JSON line at the end of a run.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"#;

/// How the load generator reaches the target.
pub enum Client<'a> {
    /// Straight from xtask's cgroup (D, and I and V, whose capture is iptables), on LOAD_CPU.
    Plain,
    /// Inside `egress exec` as default/sleep, so the eBPF capture takes it (E).
    Captured(&'a Dataplane),
    /// Inside a pod's network namespace and cgroup (P), as that pod.
    Pod(&'a Pod<'a>),
}

impl Client<'_> {
    pub fn command(&self, program: &Path) -> Command {
        match self {
            Client::Plain => {
                let mut command = Command::new("taskset");
                command.args(["-c", LOAD_CPU]).arg(program);
                command
            }
            Client::Captured(dp) => dp.exec(NAMESPACE, SERVICE_ACCOUNT, program),
            Client::Pod(pod) => pod.load_command(program),
        }
    }
}

/// What the target is: URL and Host header.
pub struct Target {
    pub url: String,
    pub host: String,
}

/// One load-generator run.
#[derive(Clone, Debug)]
pub struct LoadRun {
    pub requests: u64,
    pub seconds: f64,
    /// Socket errors and timeouts, and responses other than 2xx.
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub raw: Value,
    /// Steal time of the whole machine while it ran.
    pub steal: Steal,
}

impl LoadRun {
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// More than 1% of requests failed (or nothing succeeded): the figure measures a broken
    /// path, not a slow one.
    pub fn check(&self, what: &str) -> anyhow::Result<()> {
        if self.requests == 0 || self.errors * 100 > self.requests {
            bail!(
                "{what}: {} errors for {} requests: {}",
                self.errors,
                self.requests,
                self.raw
            );
        }
        Ok(())
    }
}

/// wrk, one thread, closed loop: `connections` connections, keep-alive unless `close`.
pub fn wrk(
    env: &Env,
    client: &Client,
    target: &Target,
    connections: u32,
    close: bool,
    seconds: u64,
    log: &Path,
) -> anyhow::Result<LoadRun> {
    let script = env.out.join("wrk-report.lua");
    if !script.is_file() {
        fs::write(&script, WRK_SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    }
    let mut command = client.command(&env.tools.wrk);
    command
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["--timeout", "5s", "-s"])
        .arg(&script)
        .args(["-H", &format!("Host: {}", target.host)]);
    if close {
        command.args(["-H", "Connection: close"]);
    }
    command.arg(&target.url);
    let steal = StealMeter::start();
    let output = run_logged(&mut command, log, Duration::from_secs(seconds) + SLACK)?;
    let steal = steal.stop();
    let line = output
        .lines()
        .find_map(|line| line.strip_prefix("WRK_JSON "))
        .with_context(|| format!("wrk printed no WRK_JSON line: {output}"))?;
    let raw: Value =
        serde_json::from_str(line).with_context(|| format!("wrk's JSON line: {line}"))?;
    let n = |key: &str| raw[key].as_u64().unwrap_or(0);
    Ok(LoadRun {
        requests: n("requests"),
        seconds: n("duration_us") as f64 / 1e6,
        errors: n("connect_errors")
            + n("read_errors")
            + n("write_errors")
            + n("status_errors")
            + n("timeouts"),
        p50_us: n("p50_us") as f64,
        p99_us: n("p99_us") as f64,
        raw,
        steal,
    })
}

/// oha at a fixed `rate` over 16 keep-alive connections, with latency correction (a request's
/// latency counts from when it was due, not from when a connection was free).
pub fn oha(
    env: &Env,
    client: &Client,
    target: &Target,
    rate: u32,
    seconds: u64,
    log: &Path,
) -> anyhow::Result<LoadRun> {
    let json_path = log.with_extension("json");
    let mut command = client.command(&env.tools.oha);
    command
        .args([
            "-z",
            &format!("{seconds}s"),
            "-q",
            &rate.to_string(),
            "-c",
            "16",
        ])
        .args([
            "--latency-correction",
            "--no-tui",
            "--output-format",
            "json",
        ])
        .args(["-t", "5s", "-o"])
        .arg(&json_path)
        .args(["-H", &format!("Host: {}", target.host)])
        .arg(&target.url);
    let steal = StealMeter::start();
    run_logged(&mut command, log, Duration::from_secs(seconds) + SLACK)?;
    let steal = steal.stop();
    let text = fs::read_to_string(&json_path)
        .with_context(|| format!("reading oha's output {}", json_path.display()))?;
    let raw: Value = serde_json::from_str(&text)
        .with_context(|| format!("oha's output {} is no JSON", json_path.display()))?;
    let statuses = raw["statusCodeDistribution"]
        .as_object()
        .context("oha's JSON has no statusCodeDistribution")?;
    let ok: u64 = statuses
        .iter()
        .filter(|(code, _)| code.starts_with('2'))
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    let not_ok: u64 = statuses
        .iter()
        .filter(|(code, _)| !code.starts_with('2'))
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    let failed: u64 = raw["errorDistribution"]
        .as_object()
        .map_or(0, |errors| errors.values().filter_map(Value::as_u64).sum());
    let secs = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let summary = json!({
        "requests_ok": ok,
        "non_2xx": not_ok,
        "errors": raw["errorDistribution"],
        "rps": raw["summary"]["requestsPerSec"],
        "p50_us": secs(&raw["latencyPercentiles"]["p50"]) * 1e6,
        "p99_us": secs(&raw["latencyPercentiles"]["p99"]) * 1e6,
        "p99.9_us": secs(&raw["latencyPercentiles"]["p99.9"]) * 1e6,
        "total_s": raw["summary"]["total"],
    });
    Ok(LoadRun {
        requests: ok,
        seconds: secs(&raw["summary"]["total"]),
        errors: not_ok + failed,
        p50_us: secs(&raw["latencyPercentiles"]["p50"]) * 1e6,
        p99_us: secs(&raw["latencyPercentiles"]["p99"]) * 1e6,
        raw: summary,
        steal,
    })
}

/// CPU time consumed around a load run.
pub struct Meter {
    proxy: Option<u32>,
    nginx: Vec<u32>,
    start: Ticks,
}

struct Ticks {
    proxy: u64,
    nginx: u64,
    system: u64,
}

/// CPU-seconds spent during a run.
#[derive(Clone, Copy, Debug)]
pub struct Cpu {
    pub proxy_s: Option<f64>,
    pub nginx_s: f64,
    pub system_s: f64,
}

impl Meter {
    pub fn start(proxy: Option<u32>, nginx: Vec<u32>) -> Meter {
        let start = Ticks {
            proxy: proxy.and_then(process_ticks).unwrap_or(0),
            nginx: nginx.iter().filter_map(|&pid| process_ticks(pid)).sum(),
            system: system_busy_ticks(),
        };
        Meter {
            proxy,
            nginx,
            start,
        }
    }

    pub fn stop(&self) -> Cpu {
        let hz = clock_ticks_per_second();
        let proxy = self.proxy.and_then(process_ticks);
        let nginx: u64 = self
            .nginx
            .iter()
            .filter_map(|&pid| process_ticks(pid))
            .sum();
        Cpu {
            proxy_s: proxy.map(|t| t.saturating_sub(self.start.proxy) as f64 / hz),
            nginx_s: nginx.saturating_sub(self.start.nginx) as f64 / hz,
            system_s: system_busy_ticks().saturating_sub(self.start.system) as f64 / hz,
        }
    }
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy time of all CPUs (everything but idle and iowait), in clock ticks, from /proc/stat.
/// Kernel time (softirq, system) counts: that is where loopback TCP and the BPF programs run.
pub fn system_busy_ticks() -> u64 {
    let Ok(stat) = fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = stat.lines().find(|line| line.starts_with("cpu ")) else {
        return 0;
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already
    // inside user and nice.
    values
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum()
}

/// Steal time over one measured phase: ticks the hypervisor ran something else while this
/// machine's CPUs wanted to run, against all CPU ticks of the phase (`/proc/stat`'s `cpu` line).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Steal {
    pub steal_ticks: u64,
    pub total_ticks: u64,
}

impl Steal {
    /// Steal as a percentage of CPU time (`None` when no tick passed).
    pub fn percent(&self) -> Option<f64> {
        (self.total_ticks > 0).then(|| self.steal_ticks as f64 * 100.0 / self.total_ticks as f64)
    }

    pub fn json(&self) -> Value {
        json!({
            "steal_ticks": self.steal_ticks,
            "total_ticks": self.total_ticks,
            "steal_pct": self.percent(),
        })
    }
}

/// Reads `/proc/stat` at the start of a phase; [`StealMeter::stop`] gives the phase's [`Steal`].
pub struct StealMeter {
    start: Steal,
}

impl StealMeter {
    pub fn start() -> StealMeter {
        StealMeter { start: cpu_times() }
    }

    pub fn stop(&self) -> Steal {
        let now = cpu_times();
        Steal {
            steal_ticks: now.steal_ticks.saturating_sub(self.start.steal_ticks),
            total_ticks: now.total_ticks.saturating_sub(self.start.total_ticks),
        }
    }
}

/// Steal and total ticks of all CPUs since boot (zero when /proc/stat cannot be read).
fn cpu_times() -> Steal {
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| parse_cpu_times(&stat))
        .unwrap_or_default()
}

/// `/proc/stat`'s aggregate `cpu` line: user nice system idle iowait irq softirq steal [guest
/// guest_nice]; guest time is already inside user and nice, so the total is the first eight.
fn parse_cpu_times(stat: &str) -> Option<Steal> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    Some(Steal {
        steal_ticks: *values.get(7)?,
        total_ticks: values.iter().take(8).sum(),
    })
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Peak resident set size (VmHWM) of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// A log file for one run under the results directory: `logs/<name>.log`.
pub fn log_path(env: &Env, name: &str) -> anyhow::Result<PathBuf> {
    let dir = env.out.join("logs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join(format!("{name}.log")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_field_of_the_cpu_line() {
        let stat = "cpu  100 5 50 800 10 1 4 30 7 0\ncpu0 50 2 25 400 5 0 2 15 3 0\n";
        let times = parse_cpu_times(stat).expect("a cpu line");
        assert_eq!(times.steal_ticks, 30);
        // guest (7) is inside user already: not counted twice.
        assert_eq!(times.total_ticks, 1000);
        assert_eq!(times.percent(), Some(3.0));
        assert!(parse_cpu_times("cpu0 1 2 3\n").is_none());
        assert!(
            parse_cpu_times("cpu  1 2 3 4\n").is_none(),
            "no steal field"
        );
        assert_eq!(Steal::default().percent(), None);
    }
}
