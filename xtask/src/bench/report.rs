//! Every number the bench measured, per configuration, figure and round; medians and spread;
//! the markdown tables (ratios against D and V, targets beside them, never failing) and the
//! JSON.
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use serde_json::{Value, json};

use super::{
    Env, LOAD_CPU, SERVER_CPU,
    http::{Config, WORKERS, metric},
    load::{Cpu, LoadRun},
};

/// Targets of issue 5 and 6, shown next to the figures.
pub const TARGET_E_OVER_D: f64 = 0.6;
pub const TARGET_E_OVER_V: f64 = 1.25;
pub const TARGET_CPU_E_OVER_V: f64 = 0.7;
pub const TARGET_RSS_MIB: f64 = 26.0;
pub const TARGET_KERNEL_P99_US: f64 = 10.0;
pub const TARGET_DENY_SPEEDUP: f64 = 10.0;
/// Issue 11: a pod in its own network namespace stays within 10% of host mode.
pub const TARGET_P_OVER_E: f64 = 0.9;

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
        }
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
        self.http_table(&mut md);
        self.tls_table(&mut md);
        self.sockmap_table(&mut md);
        self.pod_table(&mut md);
        self.sweep_table(&mut md);
        self.deny_table(&mut md);
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
                "peak RSS of the proxy, MiB".to_owned(),
                metric::RSS.to_owned(),
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

    fn http_table(&self, md: &mut String) {
        if !self.has_any(&["D", "E", "I", "V"]) {
            return;
        }
        md.push_str(
            "#### D/E/I/V: direct, egress (eBPF), egress (iptables), Envoy (iptables)\n\n\
             | figure | D | E | I | V | E÷D | E÷V | I÷D | I÷V |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for (label, metric, kind) in self.rows() {
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
                self.cell("D", &metric, kind),
                self.cell("E", &metric, kind),
                self.cell("I", &metric, kind),
                self.cell("V", &metric, kind),
                self.ratio_cell("E", "D", &metric, kind),
                self.ratio_cell("E", "V", &metric, kind),
                self.ratio_cell("I", "D", &metric, kind),
                self.ratio_cell("I", "V", &metric, kind),
            );
        }
        md.push('\n');
    }

    fn tls_table(&self, md: &mut String) {
        let (e, v) = (Config::ETls.key(), Config::VTls.key());
        if !self.has_any(&[e, v]) {
            return;
        }
        md.push_str(
            "#### TLS origination: the proxy speaks TLS to nginx (DestinationRule SIMPLE / Envoy \
             UpstreamTlsContext)\n\n\
             | figure | E+TLS | V+TLS | E+TLS÷V+TLS | E+TLS÷D |\n|---|---:|---:|---:|---:|\n",
        );
        for (label, metric, kind) in self.rows() {
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} |",
                self.cell(e, &metric, kind),
                self.cell(v, &metric, kind),
                self.ratio_cell(e, v, &metric, kind),
                self.ratio_cell(e, "D", &metric, kind),
            );
        }
        md.push('\n');
    }

    fn sockmap_table(&self, md: &mut String) {
        let (on, off) = (Config::E.key(), Config::ENoSockmap.key());
        if !self.has_any(&[off]) {
            return;
        }
        md.push_str(
            "#### The sockmap short-cut: E (default, `--sockmap on`) against E with `--sockmap off`\n\n\
             | figure | E | E, sockmap off | E÷(sockmap off) |\n|---|---:|---:|---:|\n",
        );
        for (label, metric, kind) in self.rows() {
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} |",
                self.cell(on, &metric, kind),
                self.cell(off, &metric, kind),
                self.ratio_cell(on, off, &metric, kind),
            );
        }
        md.push('\n');
    }

    fn pod_table(&self, md: &mut String) {
        let (host, pod) = (Config::E.key(), Config::P.key());
        if !self.has_any(&[pod]) {
            return;
        }
        md.push_str(
            "#### Pod network namespace: P (`egress run --kubernetes`, the load inside a pod's \
             netns) against E (host mode)\n\n\
             | figure | E | P | P÷E |\n|---|---:|---:|---:|\n",
        );
        for (label, metric, kind) in self.rows() {
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} |",
                self.cell(host, &metric, kind),
                self.cell(pod, &metric, kind),
                self.ratio_cell(pod, host, &metric, kind),
            );
        }
        let _ = writeln!(
            md,
            "| control plane start-up s (etcd + kube-apiserver until /readyz, CRDs) | | {} | |",
            self.cell(pod, "control_plane_startup_s", Kind::Cost)
        );
        let _ = writeln!(
            md,
            "| s from the new pod to its listener being served | | {} | |",
            self.cell(pod, "pod_served_s", Kind::Cost)
        );
        md.push('\n');
    }

    fn sweep_table(&self, md: &mut String) {
        if self.sweep_sizes.is_empty() {
            return;
        }
        md.push_str(
            "#### ServiceEntry scale sweep: connection-per-request req/s to the last of N \
             addresses\n\n\
             | addresses | E | I | E÷I | E start-up s | I start-up s (egress + iptables) |\n\
             |---:|---:|---:|---:|---:|---:|\n",
        );
        for n in &self.sweep_sizes {
            let (e, i) = (format!("sweep-E-{n}"), format!("sweep-I-{n}"));
            let _ = writeln!(
                md,
                "| {n} | {} | {} | {} | {} | {} |",
                self.cell(&e, metric::CPR, Kind::Rate),
                self.cell(&i, metric::CPR, Kind::Rate),
                self.ratio_cell(&e, &i, metric::CPR, Kind::Rate),
                self.cell(&e, "startup_s", Kind::Cost),
                self.cell(&i, "startup_s", Kind::Cost),
            );
        }
        md.push('\n');
    }

    fn deny_table(&self, md: &mut String) {
        if !self.has_any(&["deny-K", "deny-W", "deny-V"]) {
            return;
        }
        let _ = write!(
            md,
            "#### connect→deny: {} sequential connects per round to a denied destination\n\n\
             deny µs: K, `connect()` alone (EPERM); W and Envoy, from `connect()` until the \
             first `read()` sees the close. full µs: `socket()` to `close()`.\n\n\
             | scenario | deny p50 µs | deny p99 µs | full p50 µs | full p99 µs | p50 ÷ K | p99 ÷ K |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
            self.deny_count
        );
        for (key, label) in [
            ("deny-K", "K: kernel verdict cache (EPERM)"),
            ("deny-W", "W: egress waypoint (accept + close)"),
            ("deny-V", "Envoy, iptables REDIRECT, RBAC network filter"),
        ] {
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {} |",
                self.cell(key, "deny_p50_us", Kind::Cost),
                self.cell(key, "deny_p99_us", Kind::Cost),
                self.cell(key, "full_p50_us", Kind::Cost),
                self.cell(key, "full_p99_us", Kind::Cost),
                self.ratio_cell(key, "deny-K", "deny_p50_us", Kind::Cost),
                self.ratio_cell(key, "deny-K", "deny_p99_us", Kind::Cost),
            );
        }
        md.push('\n');
    }

    fn targets_table(&self, md: &mut String) {
        let mut rows: Vec<(String, String, Option<bool>)> = Vec::new();
        let ka = metric::KA16;
        let ratio = |a: &str, b: &str, m: &str| self.ratio(a, b, m);
        let fmt = |r: Option<f64>| r.map_or("—".to_owned(), |r| format!("{r:.2}×"));
        let http = self.has_any(&["D", "E", "I", "V", "E+TLS", "V+TLS", "E-nosockmap", "P"]);
        for (metric, label) in [(ka, "16"), (metric::KA64, "64")]
            .into_iter()
            .filter(|_| http)
        {
            let (ed, ev) = (ratio("E", "D", metric), ratio("E", "V", metric));
            rows.push((
                format!("E keep-alive req/s ({label} connections) ≥ {TARGET_E_OVER_D}× D"),
                fmt(ed),
                ed.map(|r| r >= TARGET_E_OVER_D),
            ));
            rows.push((
                format!("E keep-alive req/s ({label} connections) ≥ {TARGET_E_OVER_V}× V"),
                fmt(ev),
                ev.map(|r| r >= TARGET_E_OVER_V),
            ));
        }
        let cpu = ratio("E", "V", metric::CPU_PROXY);
        let mut http_rows = Vec::new();
        http_rows.push((
            format!("E CPU per 10k requests (proxy) ≤ {TARGET_CPU_E_OVER_V}× V"),
            fmt(cpu),
            cpu.map(|r| r <= TARGET_CPU_E_OVER_V),
        ));
        let cpu_sys = ratio("E", "V", metric::CPU_SYSTEM);
        http_rows.push((
            format!("E CPU per 10k requests (whole system) ≤ {TARGET_CPU_E_OVER_V}× V"),
            fmt(cpu_sys),
            cpu_sys.map(|r| r <= TARGET_CPU_E_OVER_V),
        ));
        let rss = [Config::E, Config::ETls]
            .iter()
            .filter_map(|c| self.stat(c.key(), metric::RSS).map(|s| s.max))
            .reduce(f64::max);
        http_rows.push((
            format!("E peak RSS ≤ {TARGET_RSS_MIB} MiB (largest of E and E+TLS)"),
            rss.map_or("—".to_owned(), |r| format!("{r:.1} MiB")),
            rss.map(|r| r <= TARGET_RSS_MIB),
        ));
        let sockmap = ratio("E", Config::ENoSockmap.key(), ka);
        http_rows.push((
            "sockmap kept on by default: E keep-alive req/s (16 connections) ≥ E with it off"
                .to_owned(),
            fmt(sockmap),
            sockmap.map(|r| r >= 1.0),
        ));
        for (metric, label) in [
            (ka, "keep-alive req/s, 16 connections"),
            (metric::KA64, "keep-alive req/s, 64 connections"),
            (metric::CPR, "connection-per-request req/s"),
        ] {
            let r = ratio(Config::P.key(), "E", metric);
            http_rows.push((
                format!("P {label} ≥ {TARGET_P_OVER_E}× E (pod netns within 10% of host mode)"),
                fmt(r),
                r.map(|r| r >= TARGET_P_OVER_E),
            ));
        }
        if http {
            rows.extend(http_rows);
        }
        if let Some(first) = self.sweep_sizes.first() {
            let r = |n: usize| {
                ratio(
                    &format!("sweep-E-{n}"),
                    &format!("sweep-I-{n}"),
                    metric::CPR,
                )
            };
            let r1 = r(*first);
            rows.push((
                format!("E ≥ I at {first} ServiceEntry address(es) (connection per request)"),
                fmt(r1),
                r1.map(|r| r >= 1.0),
            ));
            let ratios: Vec<Option<f64>> = self.sweep_sizes.iter().map(|n| r(*n)).collect();
            let growing = ratios.iter().all(Option::is_some)
                && ratios.windows(2).all(|w| w[1] >= w[0])
                && ratios.len() > 1;
            rows.push((
                "E÷I grows with the number of addresses".to_owned(),
                ratios
                    .iter()
                    .map(|r| fmt(*r))
                    .collect::<Vec<_>>()
                    .join(" → "),
                (ratios.len() > 1 && ratios.iter().all(Option::is_some)).then_some(growing),
            ));
        }
        let k99 = self.stat("deny-K", "deny_p99_us").map(|s| s.median);
        if k99.is_some() {
            rows.push((
                format!("kernel deny p99 ≤ {TARGET_KERNEL_P99_US} µs"),
                k99.map_or("—".to_owned(), |v| format!("{v:.1} µs")),
                k99.map(|v| v <= TARGET_KERNEL_P99_US),
            ));
            let (p50, p99) = (
                ratio("deny-W", "deny-K", "deny_p50_us"),
                ratio("deny-W", "deny-K", "deny_p99_us"),
            );
            rows.push((
                format!(
                    "kernel deny ≥ {TARGET_DENY_SPEEDUP}× faster than the waypoint (p50 / p99)"
                ),
                format!("{} / {}", fmt(p50), fmt(p99)),
                p50.zip(p99)
                    .map(|(a, b)| a >= TARGET_DENY_SPEEDUP && b >= TARGET_DENY_SPEEDUP),
            ));
        }
        md.push_str("#### Targets (issues 5, 6 and 11; shown, never enforced)\n\n| target | measured | |\n|---|---:|---|\n");
        for (target, measured, met) in rows {
            let verdict = match met {
                Some(true) => "met",
                Some(false) => "not met",
                None => "not measured",
            };
            let _ = writeln!(md, "| {target} | {measured} | {verdict} |");
        }
    }

    fn has_any(&self, configs: &[&str]) -> bool {
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
            "targets": {
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
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Stat::of(&[4.0, 1.0, f64::NAN, 2.0, 3.0]).expect("values");
        assert_eq!((s.median, s.n), (2.5, 4));
        assert!(Stat::of(&[]).is_none());
    }

    fn empty() -> Report {
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
    fn numbers_keep_their_digits() {
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(42.06), "42.1");
        assert_eq!(num(0.01234), "0.012");
    }
}
