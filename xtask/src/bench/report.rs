//! Every number the bench measured, per configuration, figure and round; medians and spread;
//! the markdown tables (ratios against D and V, targets beside them, never failing) and the
//! JSON.
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use serde_json::{Value, json};

use super::{
    Env, LOAD_CPU, SERVER_CPU,
    http::{Config, WORKERS, metric},
    load::{Cpu, LoadRun, Steal},
};

mod tables;

/// Targets of issue 5 and 6, shown next to the figures.
pub const TARGET_E_OVER_D: f64 = 0.6;
pub const TARGET_E_OVER_V: f64 = 1.25;
pub const TARGET_CPU_E_OVER_V: f64 = 0.7;
pub const TARGET_RSS_MIB: f64 = 26.0;
pub const TARGET_KERNEL_P99_US: f64 = 10.0;
pub const TARGET_DENY_SPEEDUP: f64 = 10.0;
/// Issue 11: a pod in its own network namespace stays within 10% of host mode.
pub const TARGET_P_OVER_E: f64 = 0.9;
/// Issue 15: the proxy's CPU per request at most this multiple of nginx's.
pub const TARGET_CPU_E_OVER_NGINX: f64 = 1.2;

/// Median and range of one figure over the rounds.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    fn json(&self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max, "n": self.n})
    }
}

pub struct Report {
    profile: String,
    machine: Value,
    versions: Value,
    plan: Value,
    rates: [u32; 2],
    /// (configuration, metric) → round → value.
    samples: BTreeMap<(String, String), BTreeMap<usize, f64>>,
    raw: Vec<Value>,
    pub errors: Vec<String>,
    pub elapsed: Duration,
    /// The sweep sizes that were measured.
    pub sweep_sizes: Vec<usize>,
    pub deny_count: usize,
    pub dns_count: usize,
    /// Steal time of every measured phase: (phase, steal).
    steal: Vec<(String, Steal)>,
    /// Why syscalls per request were not measured: configuration → round → reason.
    syscall_notes: BTreeMap<String, BTreeMap<usize, String>>,
}

impl Report {
    pub fn new(env: &Env, profile: &str, machine: Value) -> Report {
        let plan = &env.plan;
        Report {
            profile: profile.to_owned(),
            machine,
            versions: env.tools.versions.clone(),
            plan: json!({
                "quick": plan.quick,
                "rounds": plan.rounds,
                "run_seconds": plan.run_seconds,
                "rates": plan.rates,
                "sweep": plan.sweep,
                "deny_count": plan.deny_count,
                "workers": WORKERS,
                "server_cpu": SERVER_CPU,
                "load_cpu": LOAD_CPU,
                "egress_has_workers": env.egress_workers,
            }),
            rates: plan.rates,
            samples: BTreeMap::new(),
            raw: Vec::new(),
            errors: Vec::new(),
            elapsed: Duration::ZERO,
            sweep_sizes: Vec::new(),
            deny_count: plan.deny_count,
            dns_count: plan.dns_count,
            steal: Vec::new(),
            syscall_notes: BTreeMap::new(),
        }
    }

    /// The steal time of one measured phase.
    pub fn steal(&mut self, phase: String, steal: Steal) {
        self.steal.push((phase, steal));
    }

    /// Syscalls per request of `config` could not be counted in `round`, because `why`.
    pub fn syscall_note(&mut self, config: &str, round: usize, why: &str) {
        self.syscall_notes
            .entry(config.to_owned())
            .or_default()
            .insert(round, why.to_owned());
    }

    /// Steal over all measured phases (percent of CPU time), and the phase with the most.
    fn steal_summary(&self) -> Option<(f64, f64, &str)> {
        let (steal, total) = self.steal.iter().fold((0u64, 0u64), |(s, t), (_, x)| {
            (s + x.steal_ticks, t + x.total_ticks)
        });
        if total == 0 {
            return None;
        }
        let (phase, worst) = self
            .steal
            .iter()
            .filter_map(|(phase, x)| Some((phase.as_str(), x.percent()?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        Some((steal as f64 * 100.0 / total as f64, worst, phase))
    }

    pub fn sample(&mut self, config: &str, metric: &str, round: usize, value: f64) {
        self.samples
            .entry((config.to_owned(), metric.to_owned()))
            .or_default()
            .insert(round, value);
    }

    /// One load run as measured, for the JSON.
    pub fn raw(
        &mut self,
        config: &str,
        round: usize,
        figure: &str,
        run: &LoadRun,
        cpu: Option<Cpu>,
    ) {
        self.steal(format!("{config} round {} {figure}", round + 1), run.steal);
        self.raw.push(json!({
            "config": config,
            "round": round + 1,
            "figure": figure,
            "requests": run.requests,
            "seconds": run.seconds,
            "rps": run.rps(),
            "errors": run.errors,
            "p50_us": run.p50_us,
            "p99_us": run.p99_us,
            "cpu": cpu.map(|c| json!({
                "proxy_s": c.proxy_s, "nginx_s": c.nginx_s, "system_s": c.system_s,
            })),
            "tool": run.raw,
            "steal": run.steal.json(),
        }));
    }

    /// Anything else worth keeping (sweep start-up times, probe outputs).
    pub fn raw_value(&mut self, value: Value) {
        self.raw.push(value);
    }

    fn values(&self, config: &str, metric: &str) -> Vec<f64> {
        self.samples
            .get(&(config.to_owned(), metric.to_owned()))
            .map(|rounds| rounds.values().copied().collect())
            .unwrap_or_default()
    }

    pub fn stat(&self, config: &str, metric: &str) -> Option<Stat> {
        Stat::of(&self.values(config, metric))
    }

    /// `config` minus `base` in the same round (latency added by the proxy), over the rounds
    /// both were measured in.
    fn added(&self, config: &str, base: &str, metric: &str) -> Option<Stat> {
        let key = |c: &str| (c.to_owned(), metric.to_owned());
        let (a, b) = (
            self.samples.get(&key(config))?,
            self.samples.get(&key(base))?,
        );
        let diffs: Vec<f64> = a
            .iter()
            .filter_map(|(round, v)| Some(v - b.get(round)?))
            .collect();
        Stat::of(&diffs)
    }

    fn ratio(&self, a: &str, b: &str, metric: &str) -> Option<f64> {
        let (a, b) = (self.stat(a, metric)?, self.stat(b, metric)?);
        (b.median != 0.0).then(|| a.median / b.median)
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "egress {} build; {}; {} round(s), {} s per load run; nginx 1 worker, every proxy \
             {WORKERS} worker; load generator on CPU {LOAD_CPU}, nginx and proxy on CPU \
             {SERVER_CPU}; {:.0} s in all. Cells: median (min–max) over the rounds.\n",
            self.profile,
            self.machine["summary"].as_str().unwrap_or("?"),
            self.plan["rounds"],
            self.plan["run_seconds"],
            self.elapsed.as_secs_f64()
        );
        self.machine_section(&mut md);
        self.cost_table(&mut md);
        self.http_table(&mut md);
        self.tls_table(&mut md);
        self.sockmap_table(&mut md);
        self.pod_table(&mut md);
        self.sweep_table(&mut md);
        self.deny_table(&mut md);
        self.dns_table(&mut md);
        self.targets_table(&mut md);
        if !self.errors.is_empty() {
            md.push_str("\n**Failed measurements** (left out of the tables):\n\n");
            for e in &self.errors {
                let _ = writeln!(md, "- {e}");
            }
        }
        md
    }

    /// Rows: (label, metric, kind).
    fn rows(&self) -> Vec<(String, String, Kind)> {
        let mut rows = vec![
            (
                "keep-alive req/s, 16 connections".to_owned(),
                metric::KA16.to_owned(),
                Kind::Rate,
            ),
            (
                "keep-alive req/s, 64 connections".to_owned(),
                metric::KA64.to_owned(),
                Kind::Rate,
            ),
            (
                "connection-per-request req/s, 16 connections".to_owned(),
                metric::CPR.to_owned(),
                Kind::Rate,
            ),
        ];
        for (i, rate) in self.rates.iter().enumerate() {
            for p in ["p50", "p99"] {
                rows.push((
                    format!("{p} µs at {rate} req/s (D: absolute; others: added to D)"),
                    metric::rate(i, p),
                    Kind::Added,
                ));
            }
        }
        rows.extend([
            (
                format!("CPU-s per 10k requests at {} req/s, proxy", self.rates[1]),
                metric::CPU_PROXY.to_owned(),
                Kind::Cost,
            ),
            (
                format!("CPU-s per 10k requests at {} req/s, nginx", self.rates[1]),
                metric::CPU_NGINX.to_owned(),
                Kind::Cost,
            ),
            (
                format!(
                    "CPU-s per 10k requests at {} req/s, whole system",
                    self.rates[1]
                ),
                metric::CPU_SYSTEM.to_owned(),
                Kind::Cost,
            ),
            (
                format!(
                    "proxy CPU per request ÷ nginx's, same requests (at {} req/s)",
                    self.rates[1]
                ),
                metric::CPU_PROXY_OVER_NGINX.to_owned(),
                Kind::Cost,
            ),
            (
                "peak RSS of the proxy, MiB".to_owned(),
                metric::RSS.to_owned(),
                Kind::Cost,
            ),
            (
                "syscalls of the proxy per request (strace, separate phase)".to_owned(),
                metric::SYSCALLS.to_owned(),
                Kind::Cost,
            ),
        ]);
        rows
    }

    fn cell(&self, config: &str, metric: &str, kind: Kind) -> String {
        let stat = match kind {
            Kind::Added if config != "D" => self.added(config, "D", metric),
            _ => self.stat(config, metric),
        };
        stat.map_or("—".to_owned(), |s| {
            if s.n > 1 {
                format!("{} ({}–{})", num(s.median), num(s.min), num(s.max))
            } else {
                num(s.median)
            }
        })
    }

    /// a ÷ b of the medians (for added latency: of the added parts).
    fn ratio_cell(&self, a: &str, b: &str, metric: &str, kind: Kind) -> String {
        let r = match kind {
            Kind::Added if b == "D" => None,
            Kind::Added => {
                let (x, y) = (self.added(a, "D", metric), self.added(b, "D", metric));
                x.zip(y)
                    .and_then(|(x, y)| (y.median > 0.0).then(|| x.median / y.median))
            }
            _ => self.ratio(a, b, metric),
        };
        r.map_or("—".to_owned(), |r| format!("{r:.2}×"))
    }

    pub fn has_any(&self, configs: &[&str]) -> bool {
        self.samples
            .keys()
            .any(|(c, _)| configs.contains(&c.as_str()))
    }

    pub fn json(&self) -> Value {
        let mut summary = serde_json::Map::new();
        for (config, metric) in self.samples.keys() {
            if let Some(stat) = self.stat(config, metric) {
                summary
                    .entry(config.clone())
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("an object")
                    .insert(metric.clone(), stat.json());
            }
        }
        let mut rounds = serde_json::Map::new();
        for ((config, metric), values) in &self.samples {
            rounds
                .entry(config.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("an object")
                .insert(
                    metric.clone(),
                    values.iter().map(|(r, v)| json!([r + 1, v])).collect(),
                );
        }
        json!({
            "egress_profile": self.profile,
            "machine": self.machine,
            "versions": self.versions,
            "plan": self.plan,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "summary": summary,
            "rounds": rounds,
            "runs": self.raw,
            "errors": self.errors,
            "steal": {
                "overall_pct": self.steal_summary().map(|s| s.0),
                "max_phase_pct": self.steal_summary().map(|s| s.1),
                "max_phase": self.steal_summary().map(|s| s.2),
                "phases": self.steal.iter().map(|(phase, x)| {
                    let mut v = x.json();
                    v["phase"] = json!(phase);
                    v
                }).collect::<Vec<_>>(),
            },
            "syscalls_not_measured": self.syscall_notes.iter().map(|(config, rounds)| {
                (config.clone(), rounds.iter().map(|(r, why)| json!([r + 1, why])).collect::<Vec<_>>())
            }).collect::<BTreeMap<_, _>>(),
            "targets": {
                "cpu_e_over_nginx_max": TARGET_CPU_E_OVER_NGINX,
                "e_over_d_min": TARGET_E_OVER_D,
                "e_over_v_min": TARGET_E_OVER_V,
                "cpu_e_over_v_max": TARGET_CPU_E_OVER_V,
                "rss_mib_max": TARGET_RSS_MIB,
                "kernel_deny_p99_us_max": TARGET_KERNEL_P99_US,
                "deny_speedup_min": TARGET_DENY_SPEEDUP,
                "p_over_e_min": TARGET_P_OVER_E,
            },
        })
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// Requests per second: more is better.
    Rate,
    /// Latency: D absolute, others added to D in the same round.
    Added,
    /// CPU, memory, plain latency: less is better.
    Cost,
}

/// A number with as many digits as it deserves.
fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Stat::of(&[4.0, 1.0, f64::NAN, 2.0, 3.0]).expect("values");
        assert_eq!((s.median, s.n), (2.5, 4));
        assert!(Stat::of(&[]).is_none());
    }

    pub fn empty() -> Report {
        Report {
            profile: "release".to_owned(),
            machine: json!({"summary": "test"}),
            versions: json!({}),
            plan: json!({"rounds": 1, "run_seconds": 2}),
            rates: [1000, 5000],
            samples: BTreeMap::new(),
            raw: Vec::new(),
            errors: Vec::new(),
            elapsed: Duration::ZERO,
            sweep_sizes: Vec::new(),
            deny_count: 0,
            dns_count: 0,
            steal: Vec::new(),
            syscall_notes: BTreeMap::new(),
        }
    }

    #[test]
    fn pod_netns_is_compared_with_host_mode() {
        let mut report = empty();
        report.sample("E", metric::KA16, 0, 10_000.0);
        report.sample("P", metric::KA16, 0, 9_500.0);
        report.sample("E", metric::CPR, 0, 5_000.0);
        report.sample("P", metric::CPR, 0, 4_000.0);
        report.sample("P", "control_plane_startup_s", 0, 9.5);
        let md = report.markdown();
        assert!(md.contains("| figure | E | P | P÷E |"), "{md}");
        assert!(
            md.contains("| keep-alive req/s, 16 connections | 10000 | 9500 | 0.95× |"),
            "{md}"
        );
        assert!(md.contains("| 9.50 |"), "{md}");
        let target = |label: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| P {label} ≥ 0.9× E")))
                .unwrap_or_else(|| panic!("no P target row for {label}:\n{md}"))
                .to_owned()
        };
        assert!(target("keep-alive req/s, 16 connections").ends_with("| 0.95× | met |"));
        assert!(target("connection-per-request req/s").ends_with("| 0.80× | not met |"));
        assert!(target("keep-alive req/s, 64 connections").ends_with("| — | not measured |"));
        // Without P no pod table.
        let mut report = empty();
        report.sample("E", metric::KA16, 0, 10_000.0);
        assert!(!report.markdown().contains("P÷E"));
    }

    #[test]
    fn cost_per_request_machine_and_steal_are_first_class() {
        let mut report = empty();
        report.machine = json!({
            "cpu_model": "AMD EPYC", "nproc": 2, "kernel": "6.18.44", "mem_gib": 23.5,
            "loadavg_at_start": "0.10 0.20 0.30", "summary": "test",
        });
        report.sample("E", metric::CPU_PROXY_US, 0, 33.0);
        report.sample("E", metric::CPU_NGINX_US, 0, 14.0);
        report.sample("E", metric::CPU_PROXY_OVER_NGINX, 0, 33.0 / 14.0);
        report.sample("E", metric::SYSCALLS, 0, 6.5);
        report.sample("V", metric::CPU_PROXY_US, 0, 60.0);
        report.sample("V", metric::CPU_NGINX_US, 0, 15.0);
        report.sample("V", metric::CPU_PROXY_OVER_NGINX, 0, 4.0);
        report.syscall_note("V", 0, "strace is not installed");
        report.steal(
            "E round 1 keepalive_c16".into(),
            Steal {
                steal_ticks: 1,
                total_ticks: 400,
            },
        );
        report.steal(
            "V round 1 keepalive_c16".into(),
            Steal {
                steal_ticks: 9,
                total_ticks: 400,
            },
        );
        let md = report.markdown();
        assert!(
            md.contains("CPU: AMD EPYC; `nproc` 2; Linux 6.18.44; memory 23.5 GiB"),
            "{md}"
        );
        assert!(
            md.contains("during the 2 measured phases: **1.25%**"),
            "{md}"
        );
        assert!(md.contains("2.25% (V round 1 keepalive_c16)"), "{md}");
        assert!(md.contains("| E | 33.0 | 14.0 | 2.36× | 6.50 |"), "{md}");
        assert!(
            md.contains("| V | 60.0 | 15.0 | 4.00× | not measured: strace is not installed |"),
            "{md}"
        );
        let target = md
            .lines()
            .find(|l| l.starts_with("| E proxy CPU per request ≤ 1.2× nginx's"))
            .unwrap_or_else(|| panic!("no issue 15 target row:\n{md}"));
        assert!(target.ends_with("| 2.36× | not met |"), "{target}");
        let json = report.json();
        assert_eq!(json["steal"]["overall_pct"], json!(1.25));
        assert_eq!(
            json["syscalls_not_measured"]["V"],
            json!([[1, "strace is not installed"]])
        );
    }

    #[test]
    fn dns_latency_direct_against_the_proxy() {
        let mut report = empty();
        report.dns_count = 2000;
        for (key, p50, p99) in [
            ("dns-direct-fwd", 40.0, 80.0),
            ("dns-proxy-fwd", 100.0, 240.0),
            ("dns-direct-se", 40.0, 90.0),
            ("dns-proxy-se", 30.0, 60.0),
        ] {
            report.sample(key, "p50_us", 0, p50);
            report.sample(key, "p99_us", 0, p99);
        }
        let md = report.markdown();
        assert!(md.contains("2000 sequential A queries"), "{md}");
        assert!(
            md.contains(
                "| forwarded (no ServiceEntry) | 40.0 | 80.0 | 100 | 240 | 2.50× | 3.00× |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| ServiceEntry host (answered by egress) | 40.0 | 90.0 | 30.0 | 60.0 | 0.75× | 0.67× |"
            ),
            "{md}"
        );
        // Without DNS samples, no DNS table.
        assert!(!empty().markdown().contains("DNS query latency"));
    }

    #[test]
    fn numbers_keep_their_digits() {
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(42.06), "42.1");
        assert_eq!(num(0.01234), "0.012");
    }
}
