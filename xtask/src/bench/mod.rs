//! `cargo xtask bench`: the figures of issue 6, see docs/benchmarks.md.
//!
//! - throughput and cost of four configurations against one nginx on loopback: D (direct), E
//!   (egress, eBPF capture), I (egress behind iptables REDIRECT), V (Envoy behind iptables
//!   REDIRECT), and E and V again with TLS origination to the upstream ([`http`]);
//! - a ServiceEntry scale sweep, E against I ([`sweep`]);
//! - connect→deny latency: kernel verdict cache, waypoint, Envoy ([`deny`]);
//! - DNS query latency through the DNS proxy against the resolver asked direct ([`dns`]);
//! - per configuration, syscalls per request of the proxy in a separate traced phase
//!   ([`syscalls`]); the machine and its steal time; SVG charts beside summary.md ([`charts`]).
//!
//! Every process the bench starts is its own guard: Drop kills it by pid and removes what it
//! made (cgroups, pins, iptables chains, temporary directories). SIGINT/SIGTERM only set a flag
//! that every wait loop checks, so Ctrl-C unwinds through those guards.
mod charts;
mod dataplane;
mod deny;
mod dns;
mod envoy;
mod http;
mod iptables;
mod link_order;
mod load;
mod nginx;
mod pod;
mod report;
mod sweep;
mod syscalls;
mod tools;

use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
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
pub use link_order::{LinkOrderOptions, link_order};

/// Where pin directories go; `egress run` mounts bpffs here when it is missing.
const BPFFS: &str = "/sys/fs/bpf";
/// The CPU of the servers (nginx and the proxy under test) and the CPU of the load generator.
pub const SERVER_CPU: &str = "0";
pub const LOAD_CPU: &str = "1";

/// Set by SIGINT/SIGTERM; every wait loop checks it and returns an error, so the guards' Drop
/// cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Which figures to measure.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Figure {
    /// D/E/I/V (and TLS origination): requests/s, latency at fixed rates, CPU, RSS.
    Http,
    /// E against I with 1, 100, 1000, 10000 ServiceEntry addresses.
    Sweep,
    /// connect→deny latency: kernel verdict cache, waypoint, Envoy.
    Deny,
    /// DNS query latency: through the DNS proxy against the resolver asked direct.
    Dns,
}

impl Figure {
    pub const ALL: [Figure; 4] = [Figure::Http, Figure::Sweep, Figure::Deny, Figure::Dns];
}

/// What `--only` names: a set of figures, or one configuration of the http figures (which
/// then run with only the configurations named).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Only {
    Figure(Figure),
    Config(http::Config),
}

/// `--only`'s parser: `http`, `sweep`, `deny`, `dns`, or a configuration key (`D`, `E`, `I`, `V`,
/// `E-nosockmap`, `E+TLS`, `V+TLS`, `P`), any case.
pub fn parse_only(value: &str) -> Result<Only, String> {
    use clap::ValueEnum as _;
    let value = value.trim();
    if let Ok(figure) = Figure::from_str(value, true) {
        return Ok(Only::Figure(figure));
    }
    if let Some(config) = http::Config::ALL
        .into_iter()
        .find(|c| c.key().eq_ignore_ascii_case(value))
    {
        return Ok(Only::Config(config));
    }
    let configs: Vec<&str> = http::Config::ALL.iter().map(|c| c.key()).collect();
    Err(format!(
        "`{value}` is neither a figure (http, sweep, deny, dns) nor a configuration ({})",
        configs.join(", ")
    ))
}

/// The figures and the http configurations an `--only` list selects (everything when empty),
/// configurations in [`http::Config::ALL`]'s order.
pub fn selection(only: &[Only]) -> (Vec<Figure>, Vec<http::Config>) {
    if only.is_empty() {
        return (Figure::ALL.to_vec(), http::Config::ALL.to_vec());
    }
    let named: Vec<http::Config> = only
        .iter()
        .filter_map(|o| match o {
            Only::Config(c) => Some(*c),
            Only::Figure(_) => None,
        })
        .collect();
    let mut figures = Vec::new();
    for figure in Figure::ALL {
        let wanted =
            only.contains(&Only::Figure(figure)) || (figure == Figure::Http && !named.is_empty());
        if wanted {
            figures.push(figure);
        }
    }
    // `--only http` alone is every configuration; with names, only those.
    let configs = if named.is_empty() {
        http::Config::ALL.to_vec()
    } else {
        http::Config::ALL
            .into_iter()
            .filter(|c| named.contains(c))
            .collect()
    };
    (figures, configs)
}

/// Build profile of egress and connect-probe.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Profile {
    Debug,
    Release,
}

pub struct BenchOptions {
    pub quick: bool,
    pub out: PathBuf,
    pub profile: Option<Profile>,
    pub rounds: Option<usize>,
    pub only: Vec<Only>,
}

/// Durations, rounds and sizes of one invocation.
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    /// Length of every load-generator run.
    pub run_seconds: u64,
    /// Fixed request rates for the latency figures (oha, latency-corrected).
    pub rates: [u32; 2],
    pub sweep: Vec<usize>,
    pub deny_count: usize,
    /// Sequential DNS queries per path and round.
    pub dns_count: usize,
    /// The configurations of the http figures, in the order of the first round.
    pub configs: Vec<http::Config>,
}

impl Plan {
    fn new(opts: &BenchOptions) -> Self {
        let (_, configs) = selection(&opts.only);
        if opts.quick {
            Plan {
                quick: true,
                rounds: opts.rounds.unwrap_or(1),
                run_seconds: 2,
                rates: [1000, 5000],
                sweep: vec![1, 100],
                deny_count: 2_000,
                dns_count: 2_000,
                configs,
            }
        } else {
            Plan {
                quick: false,
                rounds: opts.rounds.unwrap_or(3),
                run_seconds: 6,
                rates: [1000, 5000],
                sweep: vec![1, 100, 1_000, 10_000],
                deny_count: 20_000,
                dns_count: 10_000,
                configs,
            }
        }
    }
}

/// What every figure needs: binaries, tools, where results go.
pub struct Env {
    pub egress: PathBuf,
    pub probe: PathBuf,
    /// The DNS load generator (xtask/src/bin/dns-probe.rs).
    pub dns_probe: PathBuf,
    pub tools: tools::Tools,
    pub cgroup_root: PathBuf,
    pub out: PathBuf,
    pub plan: Plan,
    /// Whether `egress run` has `--workers` and `--capture` (older builds have neither).
    pub egress_workers: bool,
    pub egress_capture: bool,
    /// Whether `egress run` has `--kubernetes` (needed for P).
    pub egress_kubernetes: bool,
    /// Whether `egress run` has the DNS proxy (`--dns-listen`; needed for the DNS figure).
    pub egress_dns: bool,
}

pub fn bench(ws: &Workspace, opts: &BenchOptions) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!(
            "`cargo xtask bench` attaches BPF programs to cgroups and installs iptables rules, \
             and needs root: run `sudo -E cargo xtask bench` (or as root)"
        );
    }
    let started = Instant::now();
    let cgroup_root = cgroup2_mount().context("no cgroup2 filesystem in /proc/mounts")?;
    install_signal_handlers();
    let out = if opts.out.is_absolute() {
        opts.out.clone()
    } else {
        ws.root.join(&opts.out)
    };
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        bail!(
            "the bench pins the load generator and the servers to separate CPUs ({LOAD_CPU} and \
             {SERVER_CPU}); this machine has {cpus}"
        );
    }

    let (figures, _) = selection(&opts.only);
    let tools = tools::ensure(ws, figures.contains(&Figure::Http))?;
    check_interrupted()?;
    let release = match opts.profile {
        Some(profile) => profile == Profile::Release,
        None => !opts.quick,
    };
    let egress = tasks::build(ws, release)?;
    step("building connect-probe and dns-probe");
    let profile_dir = if release { "release" } else { "debug" };
    let mut build = Command::new("cargo");
    build.current_dir(&ws.root).args([
        "build",
        "-p",
        "xtask",
        "--bin",
        "connect-probe",
        "--bin",
        "dns-probe",
    ]);
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    let probe = ws.target_dir().join(profile_dir).join("connect-probe");
    let dns_probe = ws.target_dir().join(profile_dir).join("dns-probe");
    for bin in [&probe, &dns_probe] {
        if !bin.is_file() {
            bail!("the build succeeded but {} is not there", bin.display());
        }
    }
    let help = cmd::probe(Command::new(&egress).args(["run", "--help"])).unwrap_or_default();
    let env = Env {
        egress,
        probe,
        dns_probe,
        tools,
        cgroup_root,
        out: out.clone(),
        plan: Plan::new(opts),
        egress_workers: help.contains("--workers"),
        egress_capture: help.contains("--capture"),
        egress_kubernetes: help.contains("--kubernetes"),
        egress_dns: help.contains("--dns-listen"),
    };
    if !env.egress_workers {
        println!("    note: this egress has no --workers; E runs with its default worker count");
    }
    // A Ctrl-C during the builds stops here, before anything is started.
    check_interrupted()?;

    let mut report = report::Report::new(&env, profile_dir, machine());
    if figures.contains(&Figure::Http) {
        http::run(&env, &mut report)?;
    }
    if figures.contains(&Figure::Sweep) {
        sweep::run(&env, &mut report)?;
    }
    if figures.contains(&Figure::Deny) {
        deny::run(&env, &mut report)?;
    }
    if figures.contains(&Figure::Dns)
        && let Err(error) = dns::run(&env, &mut report)
    {
        check_interrupted()?;
        let message = format!("DNS: {error:#}");
        eprintln!("    FAILED {message}");
        report.errors.push(message);
    }
    report.elapsed = started.elapsed();

    let table = report.markdown();
    println!();
    println!("{table}");
    let json_path = out.join("results.json");
    let summary_path = out.join("summary.md");
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&report.json())? + "\n",
    )
    .with_context(|| format!("writing {}", json_path.display()))?;
    let charts = charts::write(&report, &out);
    let mut summary = format!("# cargo xtask bench\n\n{table}");
    if !charts.is_empty() {
        summary.push_str("\n#### Charts\n\n");
        for (file, title) in &charts {
            summary.push_str(&format!("![{title}]({file})\n\n"));
        }
    }
    fs::write(&summary_path, summary)
        .with_context(|| format!("writing {}", summary_path.display()))?;
    step(&format!(
        "wrote {} and {} ({:.0} s)",
        json_path.display(),
        summary_path.display(),
        report.elapsed.as_secs_f64()
    ));
    if !report.errors.is_empty() {
        bail!(
            "{} measurement(s) failed (see above and the `errors` of {}): {}",
            report.errors.len(),
            json_path.display(),
            report.errors.join("; ")
        );
    }
    Ok(())
}

/// Kernel release, CPU model and count, for the record.
fn machine() -> Value {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let processors = fs::read_to_string("/proc/cpuinfo")
        .map(|info| info.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    // Whatever else runs on the machine when the bench starts (builds, other tests).
    let loadavg = fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned());
    json!({
        "kernel": kernel,
        "cpus": cpus,
        "nproc": cpus,
        "cpuinfo_processors": processors,
        "cpu_model": model,
        "mem_gib": (mem_gib * 10.0).round() / 10.0,
        "loadavg_at_start": loadavg,
        "summary": format!("Linux {kernel}, {cpus} × {model}, {mem_gib:.1} GiB"),
    })
}

/// A minimal HTTP/1.1 GET on loopback with short timeouts: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
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

/// `n` distinct loopback ports that were free a moment ago.
pub fn free_ports<const N: usize>() -> anyhow::Result<[SocketAddr; N]> {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("binding a free loopback port")?;
    let mut addrs = ["127.0.0.1:0".parse().expect("a socket address"); N];
    for (addr, listener) in addrs.iter_mut().zip(&listeners) {
        *addr = listener.local_addr()?;
    }
    Ok(addrs)
}

/// Waits for `child` at most `limit`; kills it (by pid) when it takes longer or on Ctrl-C.
pub fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if INTERRUPTED.load(Ordering::SeqCst) || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupted()?;
            bail!("`{what}` did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a cleanup `command` to its end, bounded by `limit` only: unlike [`wait_bounded`] it
/// is not cut short by Ctrl-C, which is when cleanup runs. Its output goes to `log`.
pub fn run_cleanup(command: &mut Command, log: &Path, limit: Duration) -> anyhow::Result<()> {
    let line = cmd::display(command);
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!(
                    "`{line}` failed ({status}): {}",
                    fs::read_to_string(log).unwrap_or_default().trim()
                );
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `command` (bounded by `limit`) with stdout and stderr to `log`; the output when it
/// succeeds.
pub fn run_logged(command: &mut Command, log: &Path, limit: Duration) -> anyhow::Result<String> {
    let line = cmd::display(command);
    println!("    $ {line}");
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let status = wait_bounded(&mut child, limit, &line)?;
    let output = fs::read_to_string(log).unwrap_or_default();
    if !status.success() {
        bail!("`{line}` failed ({status}): {}", output.trim());
    }
    Ok(output)
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

pub fn remove_dir_all(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => eprintln!("removing {}: {e}", dir.display()),
    }
}

/// Removes a cgroup and its descendants, bottom-up. Processes still in them (only load
/// generators this run started through `egress exec` can be) are moved to the root cgroup and
/// killed by pid.
pub fn remove_cgroup_tree(dir: &Path, root: &Path) {
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

pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// Sleeps `d` in small steps, returning early with an error on Ctrl-C.
pub fn sleep_checked(d: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        check_interrupted()?;
        thread::sleep(Duration::from_millis(20).min(deadline - Instant::now()));
    }
    Ok(())
}

/// Kills `pid` with SIGTERM, waits up to `grace`, then SIGKILL. For processes we started.
pub fn stop_child(child: &mut Child, grace: Duration) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Config;

    #[test]
    fn only_takes_figures_and_configurations_in_any_case() {
        assert_eq!(parse_only("sweep"), Ok(Only::Figure(Figure::Sweep)));
        assert_eq!(parse_only("p"), Ok(Only::Config(Config::P)));
        assert_eq!(parse_only("E+tls"), Ok(Only::Config(Config::ETls)));
        assert_eq!(
            parse_only("e-nosockmap"),
            Ok(Only::Config(Config::ENoSockmap))
        );
        let error = parse_only("X").unwrap_err();
        assert!(error.contains("`X`") && error.contains("P") && error.contains("sweep"));
        assert_eq!(parse_only("DNS"), Ok(Only::Figure(Figure::Dns)));
    }

    #[test]
    fn naming_configurations_runs_only_those_http_figures() {
        let (figures, configs) = selection(&[]);
        assert_eq!(
            figures,
            [Figure::Http, Figure::Sweep, Figure::Deny, Figure::Dns]
        );
        assert_eq!(configs, Config::ALL);
        let (figures, configs) = selection(&[Only::Config(Config::P), Only::Config(Config::E)]);
        assert_eq!(figures, [Figure::Http]);
        assert_eq!(configs, [Config::E, Config::P]);
        let (figures, configs) = selection(&[Only::Figure(Figure::Deny)]);
        assert_eq!(figures, [Figure::Deny]);
        assert_eq!(configs, Config::ALL);
        let (figures, configs) =
            selection(&[Only::Figure(Figure::Deny), Only::Config(Config::ENoSockmap)]);
        assert_eq!(figures, [Figure::Http, Figure::Deny]);
        assert_eq!(configs, [Config::ENoSockmap]);
    }
}
