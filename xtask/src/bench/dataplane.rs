//! One `egress run` under test and what it was given; Drop tears it all down.
//!
//! Each dataplane gets its own cgroup under the cgroup2 mount, pin directory under /sys/fs/bpf,
//! free loopback ports and config in a temporary directory, and runs in its own process group
//! so Ctrl-C reaches xtask, which then kills it by pid, runs `egress run --cleanup` (detach,
//! unpin) and removes the pin directory and cgroups bottom-up.
use std::{
    fs,
    io::Read as _,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    BPFFS, Env, LOAD_CPU, check_interrupted, free_ports, http_get, remove_cgroup_tree,
    remove_dir_all,
};
use crate::cmd;

/// How long `egress run` may take to answer `/healthz/ready` (10k ServiceEntry addresses
/// included).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `egress run --cleanup` may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How connections reach the waypoint.
pub enum Capture {
    /// E: the kernel programs redirect connects from the captured cgroup.
    Ebpf,
    /// I: iptables REDIRECT (installed by the caller); every connection is `NS/SA`.
    Iptables { identity: String },
    /// P: `egress run --kubernetes`, the DaemonSet agent of node `node_name`: the kernel
    /// programs at the node's pod cgroup root (`pod_root`, the caller's, left in place), a
    /// listener in each enrolled pod's network namespace.
    Kubernetes {
        kubeconfig: PathBuf,
        node_name: String,
        pod_root: PathBuf,
    },
}

pub struct DataplaneOptions<'a> {
    /// Names the cgroup, pin and temporary directories: `egress-bench-<pid>-<name>`.
    pub name: &'a str,
    /// The Istio YAML it loads.
    pub config: String,
    pub capture: Capture,
    pub verdict_cache: bool,
    /// `--workers` (when this egress has it).
    pub workers: Option<u32>,
    /// taskset CPU list for `egress run`.
    pub cpus: Option<&'a str>,
    /// `--sockmap` (the app↔waypoint short-cut; egress's default is on).
    pub sockmap: bool,
}

pub struct Dataplane {
    egress: PathBuf,
    cgroup_root: PathBuf,
    pub cgroup: PathBuf,
    pub pins: PathBuf,
    pub files: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// `--dns-listen`, when this egress has the DNS proxy.
    pub dns: Option<SocketAddr>,
    process: Option<Child>,
    /// Whether `cgroup` is this dataplane's to remove (not a node's pod cgroup root).
    owns_cgroup: bool,
    /// P: the configuration comes from the API server (the caller applied it), not files.
    kubernetes: bool,
}

impl Dataplane {
    pub fn start(env: &Env, opts: &DataplaneOptions) -> anyhow::Result<Self> {
        Self::start_wrapped(env, opts, &[])
    }

    /// [`Dataplane::start`] with `egress run` run by `wrapper` (a program and its arguments,
    /// e.g. valgrind), under the same taskset.
    pub fn start_wrapped(
        env: &Env,
        opts: &DataplaneOptions,
        wrapper: &[String],
    ) -> anyhow::Result<Self> {
        let name = format!("egress-bench-{}-{}", std::process::id(), opts.name);
        let files = std::env::temp_dir().join(&name);
        let [listen, admin, dns] = free_ports()?;
        // `--dns-listen` (UDP and TCP) on a free port, so two dataplanes (or a test's) never
        // fight over the default 127.0.0.1:15053.
        let dns = env.egress_dns.then_some(dns);
        let pod_root = match &opts.capture {
            Capture::Kubernetes { pod_root, .. } => Some(pod_root.clone()),
            _ => None,
        };
        let mut dp = Dataplane {
            egress: env.egress.clone(),
            cgroup_root: env.cgroup_root.clone(),
            owns_cgroup: pod_root.is_none(),
            kubernetes: pod_root.is_some(),
            cgroup: pod_root.unwrap_or_else(|| env.cgroup_root.join(&name)),
            pins: Path::new(BPFFS).join(&name),
            files: files.clone(),
            listen,
            admin,
            dns,
            process: None,
        };
        // Leftovers of an earlier run with the same pid would confuse the figures.
        remove_dir_all(&files);
        fs::create_dir_all(files.join("config"))
            .with_context(|| format!("creating {}", files.display()))?;
        fs::write(files.join("config/bench.yaml"), &opts.config)
            .context("writing the bench config")?;
        let log = fs::File::create(dp.log()).context("creating the egress log")?;
        let mut program: Vec<std::ffi::OsString> = Vec::new();
        if let Some(cpus) = opts.cpus {
            program.extend(["taskset".into(), "-c".into(), cpus.into()]);
        }
        program.extend(wrapper.iter().map(Into::into));
        program.push(dp.egress.clone().into());
        let mut command = Command::new(&program[0]);
        command.args(&program[1..]);
        command
            .arg("run")
            .args(dp.run_args())
            .args(["--listen", &listen.to_string()])
            .args(["--admin", &admin.to_string()])
            .arg("--access-log")
            .arg(files.join("access.log"))
            .args([
                "--verdict-cache",
                if opts.verdict_cache { "on" } else { "off" },
            ]);
        if let Some(dns) = dns {
            command.args(["--dns-listen", &dns.to_string()]);
        }
        if !opts.sockmap {
            command.args(["--sockmap", "off"]);
        }
        if let (Some(workers), true) = (opts.workers, env.egress_workers) {
            command.args(["--workers", &workers.to_string()]);
        }
        if let Capture::Iptables { identity } = &opts.capture {
            if !env.egress_capture {
                bail!("this egress has no `run --capture iptables` (needed for I)");
            }
            command
                .args(["--capture", "iptables"])
                .args(["--capture-identity", identity]);
        }
        if let Capture::Kubernetes {
            kubeconfig,
            node_name,
            ..
        } = &opts.capture
        {
            command
                .arg("--kubernetes")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["--node-name", node_name]);
        }
        command
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
        // taskset (and valgrind) exec egress, so the child's pid is egress's.
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

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Child::id)
    }

    /// Stops `egress run` with SIGTERM (a graceful drain, then exit) and waits up to `grace`
    /// for it; Drop then cleans up. The exit status, or an error when it had to be killed.
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut process) = self.process.take() else {
            bail!("egress run is not running");
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(process.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = process.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = process.kill();
                let _ = process.wait();
                bail!("egress run did not exit within {grace:?} of SIGTERM (killed)");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> PathBuf {
        self.files.join("egress.log")
    }

    /// The arguments `egress run` and `egress run --cleanup` share.
    fn run_args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut args = Vec::new();
        if !self.kubernetes {
            args.extend(["--config".into(), path(&self.files.join("config"))]);
        }
        args.extend([
            "--cgroup".into(),
            path(&self.cgroup),
            "--bpffs".into(),
            path(&self.pins),
        ]);
        args
    }

    /// `taskset -c LOAD_CPU egress exec ... --namespace NS --service-account SA -- PROGRAM`: a
    /// command that runs `program` captured, as that identity, on the load generator's CPU.
    pub fn exec(&self, namespace: &str, service_account: &str, program: &Path) -> Command {
        let mut command = Command::new("taskset");
        command
            .args(["-c", LOAD_CPU])
            .arg(&self.egress)
            .arg("exec")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(&self.pins)
            .args(["--namespace", namespace])
            .args(["--service-account", service_account])
            .arg("--")
            .arg(program)
            .env("RUST_LOG", "warn");
        command
    }

    /// A kernel counter or gauge from `/stats/prometheus`: `egress_bpf_<name>[_total]`.
    pub fn counter(&self, name: &str) -> anyhow::Result<f64> {
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

    /// Keeps the egress log next to the results.
    pub fn keep_log(&self, dir: &Path, name: &str) {
        let _ = fs::copy(self.log(), dir.join(format!("egress-{name}.log")));
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
        if self.owns_cgroup {
            remove_cgroup_tree(&self.cgroup, &self.cgroup_root);
        }
        remove_dir_all(&self.files);
    }
}
