//! `egress`: parse arguments, initialise tracing, run, map errors to exit codes.
use std::{
    ffi::OsString,
    net::{SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use egress::{
    bpf, cgroup,
    config::{self, IpNet},
    dns::{self, DnsOptions},
    exec, explain,
    identity::{DEFAULT_TRUST_DOMAIN, Principal},
    kube::{Binding, KubeOptions},
    policy::PathParameters,
    proxy::{
        CaptureMode,
        limits::{self, Limits},
    },
    run::{AccessLogTarget, RunOptions},
};

mod cli_values;

use cli_values::*;

/// eBPF-accelerated egress dataplane: connects from a captured cgroup to Istio ServiceEntry
/// addresses are redirected in the kernel into a local waypoint that proxies and logs them.
#[derive(Parser)]
#[command(name = "egress", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach capture to a cgroup and run the waypoint.
    ///
    /// Example: egress run --config examples/ --cgroup /sys/fs/cgroup/unified/egress
    Run(Box<RunArgs>),
    /// Run a command as a workload identity, inside the captured cgroup.
    ///
    /// The command runs in <cgroup>/ns/NS/sa/SA/exec-<pid>, which `egress run` attributes to
    /// principal cluster.local/ns/NS/sa/SA.
    ///
    /// Example: egress exec --namespace default --service-account sleep -- curl -s http://httpbin.org/get
    Exec(ExecArgs),
    /// Validate Istio YAML; prints FILE:DOC:FIELD: message for every error and exits 1.
    Check {
        /// Files or directories of Istio YAML (repeatable).
        #[arg(long = "config", short = 'c', value_name = "PATH", required = true)]
        configs: Vec<PathBuf>,
    },
    /// Say what the waypoint would decide for one request, and why (no root, nothing runs).
    ///
    /// Exit code: 0 allowed, 1 denied, 2 bad input.
    ///
    /// Example: egress explain -c examples/ --namespace default --service-account sleep --url http://httpbin.org/get
    Explain(ExplainArgs),
    /// Print Istio's CRDs (ServiceEntry, DestinationRule, AuthorizationPolicy; apiextensions
    /// v1 YAML) for clusters without Istio, generated from the types `egress run --kubernetes`
    /// reads.
    ///
    /// Example: egress crds | kubectl apply -f -
    Crds,
    /// Show pinned links, loaded programs, map entry counts and kernel counters.
    Status {
        /// Pin directory of the dataplane to inspect.
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/egress")]
        bpffs: PathBuf,
        /// Admin endpoint of the running agent; in Kubernetes mode its enrolled pods (principal,
        /// netns cookie, listener) are shown too.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
    },
    /// Internal: load the kernel object and pin maps and links (what `egress run` runs in a
    /// short-lived child so that the loader's memory never stays in the waypoint).
    #[command(name = "__install", hide = true)]
    Install(InstallArgs),
    /// Internal: write the kernel object this binary loads to PATH (for tools that inspect it,
    /// such as the libbpf cross-check test).
    #[command(name = "__object", hide = true)]
    Object {
        #[arg(long, value_name = "PATH")]
        output: PathBuf,
    },
    /// Detach capture, remove every pin, and remove the cgroups egress made (the captured
    /// cgroup's egress-waypoint and ns/… directories, then the captured cgroup itself when it
    /// is empty). Same as `egress run --cleanup`.
    Uninstall {
        /// Pin directory to remove.
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/egress")]
        bpffs: PathBuf,
        /// The captured cgroup. Default: <cgroup2 mount>/egress.
        #[arg(long, value_name = "DIR")]
        cgroup: Option<PathBuf>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Files or directories of Istio YAML: ServiceEntry (other kinds are read and reported).
    #[arg(
        long = "config",
        short = 'c',
        value_name = "PATH",
        required_unless_present_any = ["cleanup", "kubernetes"],
        conflicts_with = "kubernetes"
    )]
    configs: Vec<PathBuf>,
    /// Read ServiceEntries, DestinationRules, AuthorizationPolicies, Namespaces, the `istio`
    /// ConfigMap (in --root-namespace) and DestinationRule credentialName Secrets from the
    /// Kubernetes API instead of --config files, and follow their changes (the DaemonSet
    /// agent). The client comes from --kubeconfig, else KUBECONFIG, ~/.kube/config, or the
    /// pod's service account.
    ///
    /// Pods: capture attaches once at the kubelet's pod cgroup root (--cgroup, default
    /// <cgroup2 mount>/kubepods.slice or kubepods), and only this node's enrolled pods are
    /// captured: pod or namespace label istio.io/dataplane-mode=<--dataplane-mode>, a pod label
    /// of another value (none) opts out, hostNetwork pods never. Each enrolled pod gets the
    /// waypoint listener (--listen) inside its own network namespace and the principal
    /// <trust-domain>/ns/<namespace>/sa/<serviceAccountName>.
    #[arg(long)]
    kubernetes: bool,
    /// With --kubernetes: the kubeconfig to use.
    #[arg(long, value_name = "PATH", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// With --kubernetes: the name of this node (a DaemonSet gives it from the downward API,
    /// spec.nodeName). Required in Kubernetes mode.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: Option<String>,
    /// With --kubernetes: which ServiceEntries are captured. bound: those bound to a waypoint
    /// as Istio binds them, by the label istio.io/use-waypoint on the ServiceEntry or on its
    /// namespace (value `none` on the ServiceEntry opts it out). all: every ServiceEntry.
    #[arg(long, value_name = "MODE", value_enum, default_value = "bound")]
    service_entries: ServiceEntries,
    /// cgroup v2 directory whose processes are captured (created if missing).
    /// Default: <cgroup2 mount>/egress.
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// Waypoint listener; captured connects are rewritten to it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15001")]
    listen: SocketAddrV4,
    /// Admin endpoint: /healthz/ready, /stats/prometheus, /config_dump.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Where maps and links are pinned (bpffs is mounted at /sys/fs/bpf if missing).
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/egress")]
    bpffs: PathBuf,
    /// Access log file, or - for stdout.
    #[arg(long, value_name = "PATH|-", default_value = "-")]
    access_log: String,
    /// Access log format: Istio's default text line, or JSON lines.
    #[arg(long, value_name = "FORMAT", value_enum, default_value = "text")]
    access_log_format: LogFormat,
    /// Trust domain of workload principals.
    #[arg(long, value_name = "DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Istio's root namespace: AuthorizationPolicies there that target GatewayClass
    /// istio-waypoint apply to every ServiceEntry.
    #[arg(long, value_name = "NS", default_value = "istio-system")]
    root_namespace: String,
    /// Istio's outboundTrafficPolicy.mode. registry-only refuses, in the kernel (EPERM), connects
    /// from the captured cgroup to anything that is no ServiceEntry address, except --allow-cidr.
    /// Default: what the mesh config says (an `istio` ConfigMap among the --config files, key
    /// data.mesh), else allow-any.
    #[arg(long, value_name = "MODE", value_enum)]
    outbound_policy: Option<OutboundPolicy>,
    /// A CIDR that registry-only still lets through (repeatable). Default: 127.0.0.0/8 and the
    /// IPv4 nameservers of /etc/resolv.conf.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    allow_cidr: Vec<IpNet>,
    /// Cache L4-decidable denies in the kernel, so the next connect of a denied identity is
    /// refused with EPERM before it reaches the waypoint. `off` sends every connect to the
    /// waypoint (for comparison).
    #[arg(long, value_name = "on|off", value_enum, default_value = "on")]
    verdict_cache: Switch,
    /// Entries of the kernel verdict cache (an LRU: eviction only costs speed).
    #[arg(long, value_name = "N", default_value_t = egress_common::VERDICTS_MAX)]
    verdict_cache_size: u32,
    /// How connections reach the waypoint. ebpf: the kernel programs redirect the captured
    /// cgroup's connects and attest who made each one. iptables: nothing is attached; you add
    /// nat OUTPUT rules that REDIRECT ServiceEntry addresses to --listen (exempting this
    /// process's cgroup <cgroup>/egress-waypoint), the destination comes from SO_ORIGINAL_DST and
    /// the identity from --capture-identity (for comparisons: `cargo xtask bench` uses it).
    #[arg(long, value_name = "MODE", value_enum, default_value = "ebpf")]
    capture: Capture,
    /// With --capture iptables: the identity of every connection, NAMESPACE/SERVICE_ACCOUNT
    /// (as a sidecar has one). Default: callers without identity.
    #[arg(long, value_name = "NS/SA", value_parser = parse_identity)]
    capture_identity: Option<(String, String)>,
    /// Threads serving the waypoint (Envoy's --concurrency). 1 runs everything on one event
    /// loop. Default: one per CPU.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Hand messages between a captured application and the waypoint (HTTP ports) straight to
    /// the peer socket (sockhash + sk_msg), skipping the loopback TCP/IP stack. `off`: every
    /// byte takes the TCP path (for comparison, or a kernel that misbehaves).
    #[arg(long, value_name = "on|off", value_enum, default_value = "on")]
    sockmap: Switch,
    /// Path parameters (`;` or `%3B` in a path segment, e.g. `/admin;x`). Tomcat, Jetty and
    /// Spring drop them and read `..;` as `..`, so a path an AuthorizationPolicy denied could
    /// be served. reject: such a request gets 400 and is never forwarded. allow: it is
    /// forwarded as written, and authorization matches the path with every segment's
    /// parameters removed (`/admin;x` is matched as `/admin`); `.;` and `..;` segments are
    /// refused in both modes.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = PathParameters::Reject)]
    path_parameters: PathParameters,
    /// The resolver configuration ServiceEntry hosts (resolution DNS, or no addresses) are
    /// resolved with: nameservers, search, options (resolv.conf(5); nameservers on port 53).
    #[arg(long, value_name = "PATH", default_value = dns::RESOLV_CONF)]
    resolv_conf: PathBuf,
    /// A resolved host is asked again when its answer's TTL runs out, but never sooner than
    /// this after the last answer (Envoy's dns_min_refresh_rate) and never later than 300s.
    /// Seconds, or with a unit: 5, 5s, 1500ms. At least 1s.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_min_refresh)]
    dns_min_refresh: Duration,
    /// Connections the waypoint serves at once. One more is accepted and closed at once
    /// (counted in egress_waypoint_connections_rejected_total; Envoy's downstream_cx_overflow),
    /// never queued. Each connection may hold two file descriptors (client and upstream) and
    /// about 130 KiB of buffered request head (60 KiB heads): size it to the memory and
    /// `ulimit -n` you give the waypoint (its soft open-file limit is raised to the hard one at
    /// start).
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Time a client has to send a complete request head, and to start the next one on a
    /// keep-alive connection; then it gets 408 (a partial head) or is closed (nothing sent).
    /// This is what frees the slot a slowloris client holds. Envoy has none by default
    /// (request_headers_timeout 0); 10s is ample for any client that is not stalling on purpose.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = limits::parse_duration)]
    header_read_timeout: std::time::Duration,
    /// An exchange (or spliced TCP connection) with no byte moving either way for this long is
    /// ended. Envoy's stream_idle_timeout (5m); a body that trickles is not idle.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = limits::parse_duration)]
    idle_timeout: std::time::Duration,
    /// How long SIGTERM/SIGINT (or a newer `egress run` taking the listeners over) lets
    /// connections finish: new connections stop at once, HTTP responses say `connection:
    /// close`, idle keep-alive connections close after 1 s, and what is still open at the
    /// timeout is cut off (and logged). Units ms, s, m, h: 500ms, 20s, 1m30s.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_drain_timeout)]
    drain_timeout: Duration,
    /// Log each kernel decision (redirected, refused and why, exempt, passed) into this
    /// process's log at info, target egress::kernel (RUST_LOG=egress::kernel=info). For
    /// debugging: every connect from the captured cgroup writes a line. Off, the log code is
    /// removed by the verifier when the programs load and costs nothing.
    #[arg(long)]
    kernel_log: bool,
    /// Where the DNS proxy listens (UDP and TCP): captured DNS (port 53) is rewritten to it.
    /// ServiceEntry hosts are answered with their VIPs (240.240.0.0/16, or status.addresses);
    /// every other name is forwarded to the resolver the application asked, unchanged. With
    /// --kubernetes (pods on) the address is bound in each enrolled pod's network namespace,
    /// and forwarded queries leave from there.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:15053")]
    dns_listen: SocketAddrV4,
    /// Capture DNS from the captured cgroup (Kubernetes mode: from the enrolled pods) (UDP and
    /// TCP to port 53) into the DNS proxy. `off`:
    /// DNS is left alone, and a host-only ServiceEntry is captured only at the addresses the
    /// dataplane itself resolves (an application that gets other answers goes direct).
    #[arg(long, value_name = "on|off", value_enum, default_value = "on")]
    dns_capture: Switch,
    /// Detach capture and remove the pins under --bpffs, then exit.
    #[arg(long)]
    cleanup: bool,
    /// With --kubernetes: `on` serves this node's enrolled pods (above). `off` captures
    /// --cgroup as in host mode (workloads through `egress exec`), with the configuration from
    /// the API server: for nodes without kubelet pods, and for tests.
    #[arg(long, value_name = "on|off", value_enum, default_value = "on")]
    pods: Switch,
    /// With --kubernetes: the host's /proc, where a pod's network namespace is found through
    /// a process of its cgroup (/proc/<pid>/ns/net). The DaemonSet mounts it at /host/proc.
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    proc: PathBuf,
    /// With --kubernetes: the istio.io/dataplane-mode value that enrolls a pod or namespace
    /// (another value than Istio's ambient lets the agent run beside ztunnel).
    #[arg(long, value_name = "VALUE", default_value = egress::pods::DEFAULT_DATAPLANE_MODE)]
    dataplane_mode: String,
}

#[derive(Args)]
struct InstallArgs {
    #[arg(long, value_name = "DIR")]
    cgroup: PathBuf,
    #[arg(long, value_name = "DIR")]
    bpffs: PathBuf,
    #[arg(long, value_name = "N")]
    verdict_cache_size: Option<u32>,
    #[arg(long, value_enum)]
    programs: Programs,
    #[arg(long, value_enum)]
    sockmap: Switch,
    #[arg(long, value_enum, default_value = "off")]
    kernel_log: Switch,
}

#[derive(Args)]
struct ExplainArgs {
    /// Files or directories of Istio YAML (repeatable).
    #[arg(long = "config", short = 'c', value_name = "PATH", required = true)]
    configs: Vec<PathBuf>,
    /// Namespace of the calling workload (omit both identity flags for a peer without identity).
    #[arg(long, short = 'n', value_name = "NS", requires = "service_account")]
    namespace: Option<String>,
    /// Service account of the calling workload.
    #[arg(long, value_name = "SA", requires = "namespace")]
    service_account: Option<String>,
    /// The URL the application requests, e.g. http://httpbin.org/get.
    #[arg(long, value_name = "URL")]
    url: String,
    /// HTTP method (case-sensitive, as Istio matches it).
    #[arg(long, short = 'X', value_name = "METHOD", default_value = "GET")]
    method: String,
    /// A request header, 'Name: value' (repeatable).
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    headers: Vec<String>,
    /// Trust domain of the caller's principal.
    #[arg(long, value_name = "DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Istio's root namespace (see `egress run --help`).
    #[arg(long, value_name = "NS", default_value = "istio-system")]
    root_namespace: String,
    /// As `egress run --path-parameters`.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = PathParameters::Reject)]
    path_parameters: PathParameters,
}

#[derive(Args)]
struct ExecArgs {
    /// The captured cgroup `egress run` uses. Default: <cgroup2 mount>/egress.
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// Pin directory of the running dataplane (to register the identity with the kernel).
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/egress")]
    bpffs: PathBuf,
    /// Kubernetes namespace of the identity.
    #[arg(long, short = 'n', value_name = "NS")]
    namespace: String,
    /// Kubernetes service account of the identity.
    #[arg(long, value_name = "SA")]
    service_account: String,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Run(args) => run(*args),
        Command::Exec(args) => {
            let captured = match args.cgroup.map_or_else(cgroup::default_captured_cgroup, Ok) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            match exec::exec(
                &captured,
                &args.bpffs,
                &args.namespace,
                &args.service_account,
                &args.command,
            ) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => fail(&e),
            }
        }
        Command::Check { configs } => match config::load(&configs) {
            Ok(set) => {
                egress::outln!(
                    "ok: {} ServiceEntry, {} AuthorizationPolicy, {} WorkloadIdentity; {} other document(s) not acted on",
                    set.service_entries.len(),
                    set.authorization_policies.len(),
                    set.workload_identities.len(),
                    set.skipped.len(),
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for error in &errors.0 {
                    egress::errln!("{error}");
                }
                egress::errln!("{} error(s)", errors.0.len());
                ExitCode::FAILURE
            }
        },
        Command::Explain(args) => explain(args),
        Command::Crds => {
            egress::out!("{}", egress::kube::crd::crds_yaml());
            ExitCode::SUCCESS
        }
        Command::Status { bpffs, admin } => match bpf::status(&bpffs) {
            Ok(status) => {
                egress::out!("{status}");
                if let Some(pods) = egress::pods::status::fetch(admin) {
                    egress::out!("{}", egress::pods::status::render(&pods));
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Uninstall { bpffs, cgroup } => cleanup(&bpffs, cgroup),
        Command::Install(args) => match bpf::install_pinned(
            &args.cgroup,
            &args.bpffs,
            args.verdict_cache_size,
            args.programs == Programs::Attach,
            args.sockmap.is_on(),
            args.kernel_log.is_on(),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Object { output } => match bpf::write_object(&output) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
    }
}

fn explain(args: ExplainArgs) -> ExitCode {
    let config = match config::load(&args.configs) {
        Ok(config) => config,
        Err(errors) => {
            for error in &errors.0 {
                egress::errln!("{error}");
            }
            return ExitCode::from(2);
        }
    };
    let principal = match (&args.namespace, &args.service_account) {
        (Some(ns), Some(sa)) => Some(Principal::new(&args.trust_domain, ns, sa)),
        _ => None,
    };
    let request = explain::Request {
        url: &args.url,
        method: &args.method,
        headers: &args.headers,
        principal,
        path_parameters: args.path_parameters,
    };
    match explain::explain(&config, &args.root_namespace, &request) {
        Ok(explanation) => {
            egress::out!("{explanation}");
            if explanation.decision.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            fail(&e);
            ExitCode::from(2)
        }
    }
}

/// Pins first (capture detaches), then the cgroups egress made.
fn cleanup(bpffs: &std::path::Path, cgroup: Option<PathBuf>) -> ExitCode {
    match bpf::cleanup(bpffs) {
        Ok(n) => egress::outln!("removed {n} pins under {}", bpffs.display()),
        Err(e) => return fail(&e),
    }
    let captured = match cgroup.map_or_else(cgroup::default_captured_cgroup, Ok) {
        Ok(captured) => captured,
        Err(e) => return fail(&e),
    };
    let removal = cgroup::remove_captured(&captured, egress::run::WAYPOINT_CGROUP);
    egress::outln!(
        "removed {} cgroups under {}",
        removal.removed,
        captured.display()
    );
    for left in &removal.left {
        egress::errln!(
            "warning: left cgroup {} in place: processes (or cgroups egress did not make) are in it",
            left.display()
        );
    }
    ExitCode::SUCCESS
}

/// The kubelet's pod cgroup root on the cgroup2 mount (`kubepods.slice` or `kubepods`).
fn kubelet_pod_root() -> Result<PathBuf, cgroup::CgroupError> {
    let mount = cgroup::cgroup2_mount()?;
    egress::pods::layout::pod_root(&mount).ok_or(cgroup::CgroupError::NoPodRoot { mount })
}

fn run(args: RunArgs) -> ExitCode {
    if args.cleanup {
        return cleanup(&args.bpffs, args.cgroup);
    }
    let serve_pods = args.kubernetes && args.pods.is_on();
    let default_cgroup = if serve_pods {
        kubelet_pod_root
    } else {
        cgroup::default_captured_cgroup
    };
    let cgroup = match args.cgroup.map_or_else(default_cgroup, Ok) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let trust_domain = args.trust_domain;
    let mut pods = None;
    let kubernetes = if args.kubernetes {
        let Some(node_name) = args.node_name.filter(|n| !n.is_empty()) else {
            egress::errln!(
                "error: --kubernetes needs the name of this node: --node-name NAME, or NODE_NAME \
                 in the environment (a DaemonSet sets it from spec.nodeName)"
            );
            return ExitCode::from(2);
        };
        pods = serve_pods.then(|| egress::pods::KubernetesOptions {
            kubeconfig: args.kubeconfig.clone(),
            node_name: node_name.clone(),
            proc: args.proc,
            dataplane_mode: args.dataplane_mode,
        });
        Some(KubeOptions {
            kubeconfig: args.kubeconfig,
            node_name,
            service_entries: match args.service_entries {
                ServiceEntries::All => Binding::All,
                ServiceEntries::Bound => Binding::Bound,
            },
            root_namespace: args.root_namespace.clone(),
        })
    } else {
        None
    };
    let opts = RunOptions {
        configs: args.configs,
        kubernetes,
        cgroup,
        listen: args.listen,
        admin: args.admin,
        bpffs: args.bpffs,
        access_log: AccessLogTarget {
            path: (args.access_log != "-").then(|| PathBuf::from(&args.access_log)),
            json: args.access_log_format == LogFormat::Json,
        },
        trust_domain: trust_domain.clone(),
        root_namespace: args.root_namespace,
        registry_only: args
            .outbound_policy
            .map(|p| p == OutboundPolicy::RegistryOnly),
        allowed_cidrs: (!args.allow_cidr.is_empty()).then_some(args.allow_cidr),
        verdict_cache: args.verdict_cache.is_on(),
        verdict_cache_size: Some(args.verdict_cache_size),
        capture: match (args.capture, &args.capture_identity) {
            (Capture::Iptables, identity) => CaptureMode::Iptables {
                principal: identity
                    .as_ref()
                    .map(|(ns, sa)| Principal::new(&trust_domain, ns, sa)),
            },
            (_, Some(_)) => {
                egress::errln!("error: --capture-identity applies only to --capture iptables");
                return ExitCode::from(2);
            }
            _ => CaptureMode::Ebpf,
        },
        sockmap: args.sockmap.is_on(),
        path_parameters: args.path_parameters,
        dns: DnsOptions {
            resolv_conf: args.resolv_conf,
            min_refresh: args.dns_min_refresh,
        },
        limits: Limits {
            max_connections: args.max_connections as usize,
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
        },
        drain_timeout: args.drain_timeout,
        kernel_log: args.kernel_log,
        pods,
        dns_listen: args.dns_listen,
        dns_capture: args.dns_capture.is_on(),
    };
    match limits::raise_open_files(args.max_connections as usize) {
        Ok(files) if files.is_short() => tracing::warn!(
            limit = files.limit,
            needed = files.needed,
            "the open-file limit is below what --max-connections may need; past it accept fails \
             (EMFILE) and connections wait in the backlog: raise `ulimit -n` or lower \
             --max-connections"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not read or raise the open-file limit"),
    }
    // One worker: a current-thread runtime, as an Envoy worker is one event loop (measured:
    // about a fifth less CPU per request than a one-worker multi-thread runtime). Blocking work
    // still has its own threads.
    let mut runtime = match args.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(workers));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    // The access log's group commit: what gathered is written out when the runtime runs out of
    // work (see `telemetry::access_log`).
    runtime.on_thread_park(egress::telemetry::flush_buffered);
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let ran = runtime.block_on(egress::run::run(opts));
    egress::telemetry::flush_buffered();
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(egress::run::RunError::Config(errors)) => {
            for error in &errors.0 {
                egress::errln!("{error}");
            }
            ExitCode::from(2)
        }
        Err(e) => fail(&e),
    }
}

/// Prints an error with its whole chain of causes (the verifier log travels in there).
fn fail(error: &dyn std::error::Error) -> ExitCode {
    egress::errln!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        egress::errln!("  caused by: {cause}");
        source = cause.source();
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_mode_needs_no_config_and_refuses_one() {
        let Command::Run(args) =
            Cli::parse_from(["egress", "run", "--kubernetes", "--node-name", "n1"]).command
        else {
            panic!("egress run parses as Run");
        };
        assert!(args.kubernetes && args.configs.is_empty());
        assert_eq!(args.service_entries, ServiceEntries::Bound);
        let both = Cli::try_parse_from(["egress", "run", "--kubernetes", "-c", "x"]);
        assert!(both.is_err(), "--config conflicts with --kubernetes");
        let neither = Cli::try_parse_from(["egress", "run"]);
        assert!(neither.is_err(), "file mode still needs --config");
    }

    #[test]
    fn value_flags_parse_their_spellings_and_keep_their_defaults() {
        let Command::Run(args) = Cli::parse_from(["egress", "run", "-c", "x"]).command else {
            panic!("egress run parses as Run");
        };
        assert_eq!(args.verdict_cache, Switch::On);
        assert_eq!(args.sockmap, Switch::On);
        assert_eq!(args.dns_capture, Switch::On);
        assert_eq!(args.pods, Switch::On);
        assert_eq!(args.capture, Capture::Ebpf);
        assert_eq!(args.access_log_format, LogFormat::Text);
        assert_eq!(args.outbound_policy, None);
        let Command::Run(args) = Cli::parse_from([
            "egress",
            "run",
            "-c",
            "x",
            "--sockmap",
            "off",
            "--verdict-cache",
            "off",
            "--dns-capture",
            "off",
            "--capture",
            "iptables",
            "--access-log-format",
            "json",
            "--outbound-policy",
            "registry-only",
        ])
        .command
        else {
            panic!("egress run parses as Run");
        };
        assert!(!args.sockmap.is_on() && !args.verdict_cache.is_on() && !args.dns_capture.is_on());
        assert_eq!(args.capture, Capture::Iptables);
        assert_eq!(args.access_log_format, LogFormat::Json);
        assert_eq!(args.outbound_policy, Some(OutboundPolicy::RegistryOnly));
        let bad = Cli::try_parse_from(["egress", "run", "-c", "x", "--sockmap", "yes"])
            .err()
            .expect("--sockmap yes is refused")
            .to_string();
        assert!(
            bad.contains("invalid value 'yes' for '--sockmap <on|off>'")
                && bad.contains("[possible values: on, off]"),
            "{bad}"
        );
    }

    #[test]
    fn limit_flags_default_to_the_waypoints_defaults() {
        let Command::Run(args) = Cli::parse_from(["egress", "run", "-c", "x"]).command else {
            panic!("egress run parses as Run");
        };
        let defaults = Limits::default();
        assert_eq!(args.max_connections as usize, defaults.max_connections);
        assert_eq!(args.header_read_timeout, defaults.header_read_timeout);
        assert_eq!(args.idle_timeout, defaults.idle_timeout);
    }
}
