//! The markdown tables of the summary, one per figure, in the order [`Report::markdown`]
//! writes them.
use std::fmt::Write as _;

use super::*;

impl Report {
    pub(super) fn http_table(&self, md: &mut String) {
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

    pub(super) fn tls_table(&self, md: &mut String) {
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

    pub(super) fn sockmap_table(&self, md: &mut String) {
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

    pub(super) fn pod_table(&self, md: &mut String) {
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

    pub(super) fn sweep_table(&self, md: &mut String) {
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

    pub(super) fn deny_table(&self, md: &mut String) {
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

    pub(super) fn targets_table(&self, md: &mut String) {
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
        let over_nginx = self
            .stat("E", metric::CPU_PROXY_OVER_NGINX)
            .map(|s| s.median);
        http_rows.push((
            format!("E proxy CPU per request ≤ {TARGET_CPU_E_OVER_NGINX}× nginx's (same run)"),
            fmt(over_nginx),
            over_nginx.map(|r| r <= TARGET_CPU_E_OVER_NGINX),
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
        if rows.is_empty() {
            return;
        }
        md.push_str("#### Targets (issues 5, 6, 11 and 15; shown, never enforced)\n\n| target | measured | |\n|---|---:|---|\n");
        for (target, measured, met) in rows {
            let verdict = match met {
                Some(true) => "met",
                Some(false) => "not met",
                None => "not measured",
            };
            let _ = writeln!(md, "| {target} | {measured} | {verdict} |");
        }
    }

    /// What the figures ran on: CPU, nproc, kernel, memory, and the steal time while they ran.
    pub(super) fn machine_section(&self, md: &mut String) {
        let m = &self.machine;
        let text = |k: &str| {
            m[k].as_str()
                .map_or_else(|| m[k].to_string(), str::to_owned)
        };
        let _ = writeln!(
            md,
            "**Machine.** CPU: {}; `nproc` {}; Linux {}; memory {} GiB; load average at the \
             start {}.\n",
            text("cpu_model"),
            text("nproc"),
            text("kernel"),
            text("mem_gib"),
            text("loadavg_at_start"),
        );
        match self.steal_summary() {
            Some((overall, worst, phase)) => {
                let most = if worst > 0.0 {
                    format!("the most in one phase {worst:.2}% ({phase})")
                } else {
                    "none in any phase".to_owned()
                };
                let _ = writeln!(
                    md,
                    "**Steal time** (`/proc/stat`, time the hypervisor ran something else while \
                     this machine's CPUs wanted to run) during the {} measured phases: \
                     **{overall:.2}%** of CPU time; {most}. Figures from two machines, or two \
                     runs, are only comparable when both are near zero.\n",
                    self.steal.len()
                );
            }
            None => md.push_str("**Steal time**: not measured (no phase ran).\n\n"),
        }
    }

    /// CPU and syscalls per request of each proxy, as multiples of nginx's in the same run.
    pub(super) fn cost_table(&self, md: &mut String) {
        let configs: Vec<Config> = Config::ALL
            .into_iter()
            .filter(|c| {
                self.stat(c.key(), metric::CPU_PROXY_US).is_some()
                    || self.stat(c.key(), metric::SYSCALLS).is_some()
                    || self.syscall_notes.contains_key(c.key())
            })
            .collect();
        if configs.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "#### Cost per request against the limit: proxy CPU and syscalls, nginx in the same run\n\n\
             CPU over the {} req/s run (utime + stime of every thread, `/proc/PID/stat`) ÷ its \
             requests; nginx's over the same requests. Syscalls: `strace -c -f -p PROXY` over a \
             separate keep-alive run (16 connections) after the measured ones, ÷ the requests \
             wrk completed in it.\n\n\
             | configuration | proxy CPU µs/request | nginx CPU µs/request | proxy ÷ nginx | \
             syscalls/request |\n|---|---:|---:|---:|---:|",
            self.rates[1]
        );
        for config in configs {
            let key = config.key();
            let syscalls = match (
                self.stat(key, metric::SYSCALLS),
                self.syscall_notes.get(key),
            ) {
                (Some(_), _) => self.cell(key, metric::SYSCALLS, Kind::Cost),
                (None, Some(notes)) => format!(
                    "not measured: {}",
                    notes
                        .values()
                        .next()
                        .map_or("", String::as_str)
                        .replace('|', "/")
                ),
                (None, None) => "—".to_owned(),
            };
            let ratio =
                self.stat(key, metric::CPU_PROXY_OVER_NGINX)
                    .map_or("—".to_owned(), |s| {
                        if s.n > 1 {
                            format!("{:.2}× ({:.2}–{:.2})", s.median, s.min, s.max)
                        } else {
                            format!("{:.2}×", s.median)
                        }
                    });
            let _ = writeln!(
                md,
                "| {key} | {} | {} | {ratio} | {syscalls} |",
                self.cell(key, metric::CPU_PROXY_US, Kind::Cost),
                self.cell(key, metric::CPU_NGINX_US, Kind::Cost),
            );
        }
        md.push('\n');
    }

    pub(super) fn dns_table(&self, md: &mut String) {
        if !self.has_any(&[
            "dns-direct-fwd",
            "dns-proxy-fwd",
            "dns-direct-se",
            "dns-proxy-se",
        ]) {
            return;
        }
        let _ = write!(
            md,
            "#### DNS query latency: through the DNS proxy against the resolver asked direct\n\n\
             {} sequential A queries per path and round (UDP, one connected socket, 1 s timeout \
             each) to dnsmasq on loopback: direct from outside the captured cgroup, and from \
             inside it, where the kernel rewrites them to egress's DNS listener. A forwarded \
             name is sent on to dnsmasq and its answer returned; the ServiceEntry host is \
             answered by egress itself.\n\n\
             | name | direct p50 µs | direct p99 µs | through egress p50 µs | through egress p99 µs | p50 ÷ direct | p99 ÷ direct |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
            self.dns_count
        );
        for (label, direct, proxy) in [
            (
                "forwarded (no ServiceEntry)",
                "dns-direct-fwd",
                "dns-proxy-fwd",
            ),
            (
                "ServiceEntry host (answered by egress)",
                "dns-direct-se",
                "dns-proxy-se",
            ),
        ] {
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {} |",
                self.cell(direct, "p50_us", Kind::Cost),
                self.cell(direct, "p99_us", Kind::Cost),
                self.cell(proxy, "p50_us", Kind::Cost),
                self.cell(proxy, "p99_us", Kind::Cost),
                self.ratio_cell(proxy, direct, "p50_us", Kind::Cost),
                self.ratio_cell(proxy, direct, "p99_us", Kind::Cost),
            );
        }
        md.push('\n');
    }
}
