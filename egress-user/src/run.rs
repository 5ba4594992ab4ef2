//! `egress run`: load config, attach capture, serve the waypoint and the admin endpoint.
use std::{
    net::{SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use thiserror::Error;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{info, warn};

use crate::{
    bpf::{BpfError, Capture},
    cgroup::{self, CgroupError},
    config::{self, ConfigErrors, ConfigSet, IpNet},
    dns::{DnsError, DnsOptions},
    drain::Gate,
    handover::{self, HandoverError, Inherited, Offer, Outcome},
    identity::CgroupIdentities,
    kube::{KubeError, KubeOptions, KubeSource},
    model::OriginSource,
    pods::{self, PodsError},
    policy::PathParameters,
    proxy::{CaptureMode, Waypoint, WaypointConfig, limits::Limits},
    reload::{ConfigSource, FileSource, Outbound, Reconciler, Snapshot},
    telemetry::{AccessLog, AdminState, serve_admin},
};

/// The waypoint's own cgroup, below the captured one. Its connects are exempt by cgroup id.
pub const WAYPOINT_CGROUP: &str = "egress-waypoint";

/// Access-log destination and format.
#[derive(Clone, Debug)]
pub struct AccessLogTarget {
    /// `None` = stdout.
    pub path: Option<PathBuf>,
    pub json: bool,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Config files and directories (file mode).
    pub configs: Vec<PathBuf>,
    /// Kubernetes mode: the configuration comes from the API server instead of `configs`.
    pub kubernetes: Option<KubeOptions>,
    pub cgroup: PathBuf,
    pub listen: SocketAddrV4,
    pub admin: SocketAddr,
    pub bpffs: PathBuf,
    pub access_log: AccessLogTarget,
    pub trust_domain: String,
    /// Istio's root namespace: its policies targeting GatewayClass istio-waypoint apply to all.
    pub root_namespace: String,
    /// REGISTRY_ONLY: refuse non-ServiceEntry destinations in the kernel. `None`: as the mesh
    /// config (the `istio` ConfigMap) says, else ALLOW_ANY.
    pub registry_only: Option<bool>,
    /// What REGISTRY_ONLY still lets through; `None` = the defaults ([`default_allowed`]).
    pub allowed_cidrs: Option<Vec<IpNet>>,
    /// Cache L4-decidable denies in the kernel (design §6). Off: every connect reaches the
    /// waypoint (for comparison and debugging).
    pub verdict_cache: bool,
    /// Entries of the kernel verdict cache (LRU); `None` = the built-in size.
    pub verdict_cache_size: Option<u32>,
    /// How connections reach the waypoint. With iptables capture no program is attached and
    /// the kernel verdict cache and REGISTRY_ONLY have no effect.
    pub capture: CaptureMode,
    /// Short-cut app↔waypoint HTTP messages past the TCP/IP stack (sockhash + sk_msg).
    pub sockmap: bool,
    /// What the waypoint does with `;` path parameters.
    pub path_parameters: PathParameters,
    /// The resolver ServiceEntry hosts are resolved with, and the floor on refreshes.
    pub dns: DnsOptions,
    /// Connection count, header-read and idle timeouts of the waypoint.
    pub limits: Limits,
    /// How long a drain (SIGTERM, or a successor taking over) lets connections finish.
    pub drain_timeout: Duration,
    /// The kernel programs log each decision, read into this process's log (target
    /// `egress::kernel`).
    pub kernel_log: bool,
    /// Kubernetes mode's pods: `cgroup` is the kubelet's pod root, and only the enrolled pods of
    /// this node are captured, each served in its own network namespace. `None`: the whole
    /// `cgroup` is captured (host mode, or `--kubernetes --pods off`).
    pub pods: Option<pods::KubernetesOptions>,
    /// The DNS proxy's UDP and TCP address (`--dns-listen`).
    pub dns_listen: SocketAddrV4,
    /// Rewrite captured DNS (port 53) to the DNS proxy (`--dns-capture`).
    pub dns_capture: bool,
}

/// REGISTRY_ONLY's default allow list: loopback (127.0.0.0/8: node-local services, including
/// the waypoint itself) and the IPv4 nameservers of /etc/resolv.conf, so name resolution works.
pub fn default_allowed() -> Vec<IpNet> {
    let mut allowed = vec![IpNet {
        addr: std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
        prefix_len: 8,
    }];
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for line in resolv.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver")
            && let Some(Ok(std::net::IpAddr::V4(ip))) = words.next().map(str::parse)
        {
            allowed.push(IpNet {
                addr: std::net::IpAddr::V4(ip),
                prefix_len: 32,
            });
        }
    }
    allowed
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// Boxed: it would make every `RunError` as large as the largest kernel or DNS error again.
    #[error(transparent)]
    Reload(Box<crate::reload::ReloadError>),
    #[error(
        "the waypoint listener must be a specific IPv4 address (the kernel rewrites connects to it), got {0}"
    )]
    ListenAddress(SocketAddrV4),
    #[error("binding the {what} listener on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the access log {path}")]
    AccessLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Handover(#[from] HandoverError),
    #[error("taking over the {what} listener")]
    Inherit {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pods(#[from] PodsError),
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    #[error(
        "reading the network namespace cookie of the waypoint listener on {addr} (SO_NETNS_COOKIE, Linux >= 5.14)"
    )]
    NetnsCookie {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("the waypoint stopped accepting connections")]
    Serve(#[source] std::io::Error),
}

impl From<crate::reload::ReloadError> for RunError {
    fn from(error: crate::reload::ReloadError) -> Self {
        Self::Reload(Box::new(error))
    }
}

/// Binds the DNS proxy's UDP socket and TCP listener on `--dns-listen`, serves them, and
/// tells the kernel (DNS capture on or off). Not handed over on restart: a successor binds
/// after this one has stopped (queries in between are retried by the client).
///
/// Kubernetes mode with pods: nothing is bound here; each enrolled pod gets its own DNS
/// listener at `--dns-listen` inside its network namespace (the pod manager opens it with the
/// waypoint's), and what those need is returned. Until a pod's listener is up its lookups are
/// refused (the port is closed), never answered by anyone else.
async fn start_dns_proxy(
    opts: &RunOptions,
    capture: &Arc<Capture>,
    services: &Arc<arc_swap::ArcSwap<crate::model::ServiceTable>>,
    netns_cookie: u64,
) -> Result<Option<pods::PodDns>, RunError> {
    use crate::dnsproxy::{DnsLimits, DnsNames, DnsProxy};
    if !opts.dns_capture {
        capture.set_dns(opts.dns_listen, false)?;
        info!("DNS capture off");
        return Ok(None);
    }
    let table = services.clone();
    let names: Arc<dyn Fn() -> Arc<DnsNames> + Send + Sync> =
        Arc::new(move || table.load().dns_names.clone());
    if opts.pods.is_some() {
        capture.set_dns(opts.dns_listen, true)?;
        info!(
            listen = %opts.dns_listen,
            "DNS capture on for enrolled pods: a DNS listener in each pod's network namespace"
        );
        return Ok(Some(pods::PodDns {
            listen: opts.dns_listen,
            names,
            resolvers: capture.clone(),
            limits: DnsLimits::default(),
        }));
    }
    let addr = SocketAddr::V4(opts.dns_listen);
    let udp = bind_reuseport(addr, socket2::Type::DGRAM)
        .and_then(|s| tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(s)))
        .map_err(|source| RunError::Bind {
            what: "DNS (udp)",
            addr,
            source,
        })?;
    let tcp = bind_reuseport(addr, socket2::Type::STREAM)
        .and_then(|s| s.listen(1024).map(|()| s))
        .and_then(|s| TcpListener::from_std(std::net::TcpListener::from(s)))
        .map_err(|source| RunError::Bind {
            what: "DNS (tcp)",
            addr,
            source,
        })?;
    let proxy = DnsProxy::new(names, capture.clone(), DnsLimits::default());
    tokio::spawn(async move {
        if let Err(error) = proxy.serve(udp, tcp, netns_cookie).await {
            warn!(%error, "the DNS proxy stopped");
        }
    });
    capture.set_dns(opts.dns_listen, true)?;
    info!(listen = %opts.dns_listen, "DNS capture on");
    Ok(None)
}

/// A non-blocking socket bound with SO_REUSEPORT: during a restart the successor's DNS
/// listener binds beside the draining predecessor's, so DNS never lacks a listener.
fn bind_reuseport(addr: SocketAddr, kind: socket2::Type) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, kind, None)?;
    socket.set_reuse_port(true)?;
    if kind == socket2::Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { what, addr, source })
}

/// A listener received from the predecessor, for tokio.
fn inherit(what: &'static str, listener: std::net::TcpListener) -> Result<TcpListener, RunError> {
    listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
        .map_err(|source| RunError::Inherit { what, source })
}

fn open_access_log(target: &AccessLogTarget) -> Result<AccessLog, RunError> {
    match (&target.path, target.json) {
        (None, false) => Ok(AccessLog::stdout()),
        (None, true) => Ok(AccessLog::json_stdout()),
        (Some(path), json) => {
            let log = if json {
                AccessLog::json_file(path)
            } else {
                AccessLog::file(path)
            };
            log.map_err(|source| RunError::AccessLog {
                path: path.clone(),
                source,
            })
        }
    }
}

/// Where the running configuration comes from; chosen once, at start-up ([`start_source`]).
enum Sources {
    /// Files: the source is made once the SIGHUP handler is installed.
    Files(Vec<PathBuf>),
    Kubernetes(KubeSource),
}

/// What the reconciler reads, files or the Kubernetes API (it does not know which).
enum AnySource {
    Files(FileSource),
    Kubernetes(KubeSource),
}

impl ConfigSource for AnySource {
    async fn next(&mut self) -> Option<Snapshot> {
        match self {
            AnySource::Files(files) => files.next().await,
            AnySource::Kubernetes(kube) => kube.next().await,
        }
    }
}

/// Reads the initial configuration: the files, or (Kubernetes mode) everything the agent
/// watches, listed once. Errors stop start-up.
async fn start_source(opts: &RunOptions) -> Result<(ConfigSet, Sources), RunError> {
    match &opts.kubernetes {
        None => Ok((
            config::load(&opts.configs)?,
            Sources::Files(opts.configs.clone()),
        )),
        Some(kube) => {
            info!(
                node = %kube.node_name,
                service_entries = ?kube.service_entries,
                root_namespace = %kube.root_namespace,
                "Kubernetes mode: reading Istio objects from the API server"
            );
            let (source, config) = KubeSource::start(kube).await?;
            Ok((config, Sources::Kubernetes(source)))
        }
    }
}

pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let (config, sources) = start_source(&opts).await?;
    for skipped in &config.skipped {
        info!(source = %skipped.source, kind = %skipped.kind, name = %skipped.name, "not acted on (yet)");
    }
    if opts.listen.ip().is_unspecified() {
        return Err(RunError::ListenAddress(opts.listen));
    }

    // The waypoint leaves the caller's cgroup for its own, exempt one, before it makes any
    // connection of its own.
    cgroup::ensure_on_cgroup2(&opts.cgroup)?;
    cgroup::create(&opts.cgroup)?;
    let waypoint_cgroup = if opts.pods.is_some() {
        // The agent's own pod cgroup (the kubelet's to manage): exempt by id where it is.
        cgroup::own()?
    } else {
        let waypoint_cgroup = opts.cgroup.join(WAYPOINT_CGROUP);
        cgroup::create(&waypoint_cgroup)?;
        cgroup::enter(&waypoint_cgroup, std::process::id())?;
        waypoint_cgroup
    };
    let waypoint_cgroup_id = cgroup::id(&waypoint_cgroup)?;

    // An `egress run` already serving this address hands its listeners over (and stops
    // accepting until this one serves): the address never lacks a listener. Otherwise bind,
    // before attaching: a taken port fails here, with nothing changed in the kernel.
    let access_log = open_access_log(&opts.access_log)?;
    let (listener, admin, predecessor) =
        match handover::take_over(opts.listen, opts.admin, &opts.bpffs)? {
            Some(Inherited {
                waypoint,
                admin,
                predecessor,
            }) => {
                let admin = match admin {
                    Some(admin) => inherit("admin", admin)?,
                    None => bind("admin", opts.admin).await?,
                };
                (inherit("waypoint", waypoint)?, admin, Some(predecessor))
            }
            None => (
                bind("waypoint", SocketAddr::V4(opts.listen)).await?,
                bind("admin", opts.admin).await?,
                None,
            ),
        };

    // The kernel records each redirected client by its network namespace: this listener's
    // (read before anything changes in the kernel).
    let netns_cookie =
        crate::netns::netns_cookie(&listener).map_err(|source| RunError::NetnsCookie {
            addr: opts.listen,
            source,
        })?;

    let ebpf = opts.capture == CaptureMode::Ebpf;
    if !ebpf {
        if opts.registry_only == Some(true) {
            warn!(
                "iptables capture: REGISTRY_ONLY needs the kernel programs, which are not \
                 attached; only the REDIRECTed ServiceEntry addresses are controlled"
            );
        }
        info!(
            listen = %opts.listen,
            "iptables capture: connections REDIRECTed to the listener are proxied by their \
             SO_ORIGINAL_DST, every deny is decided by the waypoint (no kernel verdict cache); \
             exempt this process (cgroup {}) from the REDIRECT rules",
            waypoint_cgroup.display()
        );
    }
    let capture = Arc::new(Capture::install(
        &opts.cgroup,
        &opts.bpffs,
        opts.verdict_cache_size,
        ebpf,
        opts.sockmap && ebpf,
        opts.kernel_log && ebpf,
    )?);
    if opts.kernel_log {
        if ebpf {
            crate::bpf::spawn_kernel_log_reader(&opts.bpffs)?;
            info!("kernel decisions are logged (target egress::kernel)");
        } else {
            warn!("iptables capture: --kernel-log has no effect (no program is attached)");
        }
    }
    // Host mode captures the whole cgroup (an enrollment-only flag a Kubernetes-mode run
    // pinned would leave it uncaptured); Kubernetes mode only the enrolled pods.
    capture.set_enrolled_only(opts.pods.is_some())?;
    capture.set_waypoint(opts.listen, waypoint_cgroup_id)?;

    // SIGHUP reloads; install the handler before anything could send one.
    let hangup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let identities = Arc::new(CgroupIdentities::new(&opts.cgroup, &opts.trust_domain));
    // Kubernetes mode: this node's pods, listed before the reconciler first syncs the kernel's
    // anchors, so a restart keeps every enrolled pod's anchor (and its fail-closed capture).
    let pods = match &opts.pods {
        Some(k) => Some(pods::Pods::start(k, &opts, &identities).await?),
        None => None,
    };
    let source = match sources {
        Sources::Files(paths) => AnySource::Files(FileSource::new(paths, hangup)),
        Sources::Kubernetes(kube) => AnySource::Kubernetes(kube),
    };
    let reconciler = Reconciler::start(
        &opts.root_namespace,
        config,
        capture.clone(),
        identities.clone(),
        opts.verdict_cache,
        Outbound {
            registry_only: opts.registry_only,
            allowed: opts.allowed_cidrs.clone().unwrap_or_else(default_allowed),
        },
        opts.dns.clone(),
    )
    .await?;
    let services = reconciler.services();

    let origins: Arc<dyn OriginSource> = capture.clone();
    let waypoint_config = WaypointConfig {
        capture: opts.capture.clone(),
        path_parameters: opts.path_parameters,
        resolv_conf: opts.dns.resolv_conf.clone(),
        ..WaypointConfig::default().with_limits(opts.limits)
    };
    let waypoint = if opts.verdict_cache && ebpf {
        Waypoint::with_verdict_cache(
            services.clone(),
            origins,
            identities.clone(),
            access_log,
            waypoint_config,
            capture.clone(),
        )
    } else {
        Waypoint::new(
            services.clone(),
            origins,
            identities.clone(),
            access_log,
            waypoint_config,
        )
    };
    let pod_dns = if ebpf {
        start_dns_proxy(&opts, &capture, &services, netns_cookie).await?
    } else {
        None
    };
    let ready = Arc::new(AtomicBool::new(false));
    let counters_capture = capture.clone();
    let (gate, _) = watch::channel(Gate::Open);
    let (rescans, rescan_requests) = tokio::sync::mpsc::channel(crate::identity::rescan::QUEUE);
    let pod_status = pods.map(|pods| {
        pods.serve(
            identities.clone(),
            rescans.clone(),
            waypoint.clone(),
            gate.subscribe(),
            ebpf.then(|| capture.clone()),
            pod_dns,
        )
    });
    let admin_state = Arc::new(AdminState {
        pods: pod_status,
        ready: ready.clone(),
        services: services.clone(),
        kernel_counters: Arc::new(move || counters_capture.counters()),
    });
    let listener_fds = [listener.as_raw_fd(), admin.as_raw_fd()];
    let admin_gate = gate.subscribe();
    tokio::spawn(async move {
        if let Err(error) = serve_admin(admin, admin_state, admin_gate).await {
            warn!(%error, "admin endpoint stopped");
        }
    });
    let mut serving = tokio::spawn(waypoint.clone().serve_netns(
        listener,
        netns_cookie,
        gate.subscribe(),
    ));
    tokio::spawn({
        let pins = opts.bpffs.clone();
        async move { crate::identity::rescan::serve(&pins, rescans).await }
    });
    let reconciling = tokio::spawn(reconciler.run(source, rescan_requests));

    if let Some(predecessor) = predecessor {
        // It drains from here on; this process owns the kernel config now.
        predecessor.release();
    }
    ready.store(true, Ordering::SeqCst);
    info!(
        listen = %opts.listen,
        admin = %opts.admin,
        cgroup = %opts.cgroup.display(),
        services = services.load().len(),
        "waypoint ready"
    );

    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut offer = Offer::take(opts.listen, &opts.bpffs).await;
    let mut successor: Option<handover::Successor> = None;
    // Serve until a signal, or until a successor that took the listeners serves.
    let signalled = loop {
        tokio::select! {
            _ = term.recv() => break true,
            _ = int.recv() => break true,
            served = &mut serving => {
                return match served {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(RunError::Serve(e)),
                    Err(join) => Err(RunError::Serve(std::io::Error::other(join.to_string()))),
                };
            }
            taken = async {
                match offer.as_ref() {
                    Some(offer) => Some(offer.successor(&listener_fds).await),
                    None => None,
                }
            },
                if offer.is_some() && successor.is_none() =>
            {
                // Connects queue in the shared backlog until the successor accepts them.
                gate.send_replace(Gate::Paused);
                offer = None;
                successor = taken;
                info!("a new egress run took the listeners over; paused until it serves");
            }
            outcome = async {
                match successor.as_mut() {
                    Some(successor) => Some(successor.outcome().await),
                    None => None,
                }
            },
                if successor.is_some() =>
            {
                successor = None;
                match outcome {
                    Some(Outcome::Ready) => {
                        info!("the new egress run serves; draining");
                        break false;
                    }
                    _ => {
                        warn!("the new egress run went away before it served; accepting again");
                        gate.send_replace(Gate::Open);
                        offer = Offer::take(opts.listen, &opts.bpffs).await;
                    }
                }
            }
        }
    };

    // Stop accepting: the listeners close here unless a successor holds them too. This process
    // no longer writes the kernel config (a successor owns it; without one, nothing changes
    // until the next start). Capture stays attached.
    let handed_over = !signalled || successor.is_some();
    ready.store(false, Ordering::SeqCst);
    gate.send_replace(Gate::Closed);
    drop(offer);
    drop(successor);
    reconciling.abort();
    let timeout = opts.drain_timeout;
    info!(?timeout, "draining");
    let draining = tokio::spawn(async move {
        let drained = waypoint.drain(timeout).await;
        if drained.cut > 0 {
            warn!(
                cut = drained.cut,
                "drained; connections cut off at the drain timeout"
            );
        } else {
            info!("drained");
        }
    });
    if !signalled {
        // Drained or not, exit only when told to: a container that exits on its own is
        // restarted, and would take the listeners back.
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    if let Err(error) = draining.await {
        warn!(%error, "the drain failed");
    }
    if handed_over {
        info!("stopped; the new egress run serves");
    } else {
        info!(
            pins = %opts.bpffs.display(),
            "stopped; capture stays attached and refuses ServiceEntry connects until the next \
             start (`egress run --cleanup` removes it)"
        );
    }
    Ok(())
}
