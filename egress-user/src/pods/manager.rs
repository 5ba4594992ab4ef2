//! Pod lifecycle on this node (design §10): a pod the API server says is enrolled gets its
//! identity anchor (its pod cgroup, with the principal of its namespace and service account), the
//! L4-decidable denies of that principal precomputed in the kernel, a waypoint listener inside
//! its network namespace and, with DNS capture on, a DNS listener (UDP and TCP) there too, whose
//! forwarded queries leave from the pod's namespace. A pod that goes (deleted, un-enrolled,
//! finished) loses its listeners — connections and queries already accepted may finish — and
//! its anchor and cached verdicts; a drain closes the listeners too. A pod whose cgroup or
//! first process is not there yet is retried, soon.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddrV4,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{
    PodOptions, PodStatus,
    enrollment::{PodFacts, enrollment},
    layout,
};
use crate::{
    bpf::Capture,
    cgroup,
    dnsproxy::{DnsLimits, DnsNames, DnsProxy, Forwarding, ResolverSource},
    drain::Gate,
    identity::{CgroupIdentities, Principal, rescan::Rescan},
    netns::{self, NetnsSockets},
    proxy::Waypoint,
};

/// The service account a pod without `spec.serviceAccountName` runs as.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// How long the kernel side (anchors, verdicts) may take to answer one sync.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// What the agent knows of one pod on its node, from the API server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `spec.serviceAccountName`.
    pub service_account: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub host_network: bool,
    /// `status.phase`.
    pub phase: Option<String>,
}

/// The API server's view the manager works from: this node's pods and every namespace's
/// labels. `synced` once both lists are complete, so a partial view never releases a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// By UID.
    pub pods: BTreeMap<String, PodInfo>,
    /// Namespace name -> its labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub synced: bool,
}

/// A pod that should be served, and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub namespace: String,
    pub name: String,
    pub principal: Principal,
}

impl ClusterView {
    /// The enrolled pods, by UID, with their principals.
    pub fn enrolled(&self, mode: &str, trust_domain: &str) -> BTreeMap<String, Wanted> {
        self.pods
            .iter()
            .filter(|(_, pod)| {
                let facts = PodFacts {
                    labels: Some(&pod.labels),
                    namespace_labels: self.namespaces.get(&pod.namespace),
                    host_network: pod.host_network,
                    phase: pod.phase.as_deref(),
                };
                enrollment(&facts, mode).enrolled()
            })
            .map(|(uid, pod)| {
                let sa = pod
                    .service_account
                    .as_deref()
                    .filter(|sa| !sa.is_empty())
                    .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
                let wanted = Wanted {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    principal: Principal::new(trust_domain, &pod.namespace, sa),
                };
                (uid.clone(), wanted)
            })
            .collect()
    }
}

/// Registers the identities of the pods already enrolled (start-up, before the reconciler
/// first syncs the kernel's anchors, so a restart never drops the anchor of a pod that is still
/// there).
pub fn preregister(opts: &PodOptions, identities: &CgroupIdentities, view: &ClusterView) {
    for (uid, wanted) in view.enrolled(&opts.dataplane_mode, &opts.trust_domain) {
        if let Some(cgroup) = layout::find_pod(&opts.pod_root, &uid) {
            identities.set_pod(&cgroup, wanted.principal);
        }
    }
}

/// Retry delays for a pod not ready to adopt: short first (a pod's cgroup and sandbox appear
/// within milliseconds of each other), then at most one a second.
pub fn retry_delay(attempt: u32) -> Duration {
    if attempt < 6 {
        Duration::from_millis((25u64 << attempt).min(250))
    } else {
        Duration::from_millis((250u64 << (attempt - 5).min(2)).min(1000))
    }
}

/// DNS capture for pods: each enrolled pod gets a DNS listener at `listen` in its network
/// namespace, answering as the host-mode proxy does.
#[derive(Clone)]
pub struct PodDns {
    /// The DNS listener's address in each pod (`--dns-listen`), UDP and TCP.
    pub listen: SocketAddrV4,
    /// The ServiceEntry names answered here (the current configuration's).
    pub names: Arc<dyn Fn() -> Arc<DnsNames> + Send + Sync>,
    /// Where a client's resolver is looked up (the kernel maps).
    pub resolvers: Arc<dyn ResolverSource>,
    pub limits: DnsLimits,
}

/// One pod being served (or on its way to).
struct Adopted {
    wanted: Wanted,
    /// The pod cgroup (the anchor) and its id, once the kubelet made it.
    cgroup: Option<(PathBuf, u64)>,
    serving: Option<Serving>,
    attempts: u32,
    next_try: Instant,
    /// Why the last attempt did not finish (for status and the log).
    waiting: String,
}

struct Serving {
    cookie: u64,
    task: JoinHandle<()>,
    /// The pod's DNS listener (DNS capture on).
    dns: Option<JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        // Aborting drops the listeners (closed: new connects and queries in the pod are
        // refused); the connections and queries they accepted run in their own tasks and may
        // finish.
        self.task.abort();
        if let Some(dns) = &self.dns {
            dns.abort();
        }
    }
}

/// Keeps the served pods in line with the [`ClusterView`].
pub struct PodManager {
    opts: PodOptions,
    identities: Arc<CgroupIdentities>,
    /// The reconciler's identity rescan: registers anchors and writes their verdicts, then
    /// answers.
    rescans: mpsc::Sender<Rescan>,
    waypoint: Arc<Waypoint>,
    gate: watch::Receiver<Gate>,
    /// Where a released pod's anchor and cached verdicts are removed.
    capture: Option<Arc<Capture>>,
    /// DNS capture on: what each pod's DNS listener needs.
    dns: Option<PodDns>,
    adopted: HashMap<String, Adopted>,
    status: Arc<RwLock<Vec<PodStatus>>>,
}

impl PodManager {
    pub fn new(
        opts: PodOptions,
        identities: Arc<CgroupIdentities>,
        rescans: mpsc::Sender<Rescan>,
        waypoint: Arc<Waypoint>,
        gate: watch::Receiver<Gate>,
        capture: Option<Arc<Capture>>,
        dns: Option<PodDns>,
    ) -> Self {
        Self {
            opts,
            identities,
            rescans,
            waypoint,
            gate,
            capture,
            dns,
            adopted: HashMap::new(),
            status: Arc::new(RwLock::new(Vec::new())),
        }
    }

    /// What `egress status` shows: the enrolled pods and how far each got.
    pub fn status(&self) -> Arc<RwLock<Vec<PodStatus>>> {
        self.status.clone()
    }

    /// Runs until `view` closes (the watchers stopped) or the task is dropped.
    pub async fn run(mut self, mut view: watch::Receiver<ClusterView>) {
        loop {
            let current = view.borrow_and_update().clone();
            self.reconcile(&current).await;
            let next = self
                .adopted
                .values()
                .filter(|a| a.serving.is_none())
                .map(|a| a.next_try)
                .min();
            tokio::select! {
                changed = view.changed() => {
                    if changed.is_err() {
                        warn!("the pod watchers stopped; pods stay as they are");
                        return;
                    }
                }
                () = sleep_until(next) => {}
            }
        }
    }

    async fn reconcile(&mut self, view: &ClusterView) {
        let wanted = view.enrolled(&self.opts.dataplane_mode, &self.opts.trust_domain);
        let mut kernel_changed = false;

        // Gone, or now someone else (a changed service account is a new identity).
        if view.synced {
            let leaving: Vec<String> = self
                .adopted
                .iter()
                .filter(|(uid, a)| wanted.get(*uid) != Some(&a.wanted))
                .map(|(uid, _)| uid.clone())
                .collect();
            for uid in leaving {
                if let Some(adopted) = self.adopted.remove(&uid) {
                    kernel_changed |= self.release(&uid, adopted);
                }
            }
        }

        let now = Instant::now();
        for (uid, w) in &wanted {
            let adopted = self.adopted.entry(uid.clone()).or_insert_with(|| {
                info!(pod = %format!("{}/{}", w.namespace, w.name), %uid, principal = %w.principal, "pod enrolled");
                Adopted {
                    wanted: w.clone(),
                    cgroup: None,
                    serving: None,
                    attempts: 0,
                    next_try: now,
                    waiting: "its cgroup".into(),
                }
            });
            if adopted.cgroup.is_none()
                && adopted.next_try <= now
                && let Some(cgroup) = layout::find_pod(&self.opts.pod_root, uid)
                && let Ok(id) = cgroup::id(&cgroup)
            {
                self.identities.set_pod(&cgroup, w.principal.clone());
                adopted.cgroup = Some((cgroup, id));
                kernel_changed = true;
            }
        }

        // Anchors before listeners: once the kernel knows the pod, its ServiceEntry connects are
        // redirected (and refused until the listener is up), never direct.
        if kernel_changed {
            self.sync_kernel().await;
        }

        let now = Instant::now();
        let (opts, waypoint, gate, dns) = (&self.opts, &self.waypoint, &self.gate, &self.dns);
        for (uid, adopted) in &mut self.adopted {
            if adopted.serving.is_some() || adopted.next_try > now {
                continue;
            }
            let outcome = match &adopted.cgroup {
                None => Err("its cgroup".to_owned()),
                Some((cgroup, _)) => open_listeners(opts, dns.as_ref(), cgroup),
            };
            match outcome.and_then(|listeners| serve(waypoint, gate, dns.as_ref(), listeners)) {
                Ok(serving) => {
                    info!(
                        pod = %format!("{}/{}", adopted.wanted.namespace, adopted.wanted.name),
                        %uid,
                        netns_cookie = serving.cookie,
                        listen = %opts.listen,
                        dns_listen = ?dns.as_ref().map(|d| d.listen),
                        "waypoint listener open in the pod's network namespace"
                    );
                    adopted.serving = Some(serving);
                    adopted.waiting.clear();
                }
                Err(waiting) => adopted.waiting = waiting,
            }
            if adopted.serving.is_none() {
                adopted.attempts += 1;
                adopted.next_try = now + retry_delay(adopted.attempts);
                let pod = format!("{}/{}", adopted.wanted.namespace, adopted.wanted.name);
                if adopted.attempts == 20 {
                    warn!(%pod, %uid, waiting_for = %adopted.waiting, "pod not served yet; still retrying");
                } else {
                    debug!(%pod, %uid, waiting_for = %adopted.waiting, attempt = adopted.attempts, "pod not ready to serve yet");
                }
            }
        }
        self.publish_status();
    }

    /// Stops serving a pod. Returns whether the kernel's anchors need a sync.
    fn release(&mut self, uid: &str, adopted: Adopted) -> bool {
        let pod = format!("{}/{}", adopted.wanted.namespace, adopted.wanted.name);
        drop(adopted.serving);
        info!(%pod, %uid, "pod no longer served: listeners closed, anchor removed");
        let Some((cgroup, id)) = &adopted.cgroup else {
            return false;
        };
        self.identities.remove_pod(cgroup);
        if let Some(capture) = &self.capture {
            match capture.remove_anchor(*id) {
                Ok(verdicts) => debug!(%pod, verdicts, "anchor and its cached verdicts removed"),
                Err(error) => warn!(%pod, %error, "removing the pod's anchor failed"),
            }
        }
        true
    }

    /// Has the reconciler bring the kernel's anchors and verdicts in line with the identities.
    async fn sync_kernel(&self) {
        let (done, answered) = oneshot::channel();
        if self.rescans.send(done).await.is_err() {
            warn!("the reconciler is gone; pod anchors are not synced");
            return;
        }
        if tokio::time::timeout(SYNC_TIMEOUT, answered).await.is_err() {
            warn!("the kernel anchor sync did not answer in time");
        }
    }

    fn publish_status(&self) {
        let mut pods: Vec<PodStatus> = self
            .adopted
            .iter()
            .map(|(uid, a)| PodStatus {
                namespace: a.wanted.namespace.clone(),
                name: a.wanted.name.clone(),
                uid: uid.clone(),
                principal: a.wanted.principal.to_string(),
                cgroup: a.cgroup.as_ref().map(|(path, _)| path.clone()),
                netns_cookie: a.serving.as_ref().map(|s| s.cookie),
                listener: a.serving.as_ref().map(|_| self.opts.listen),
                dns_listener: a
                    .serving
                    .as_ref()
                    .and_then(|s| s.dns.as_ref())
                    .filter(|task| !task.is_finished())
                    .and(self.dns.as_ref().map(|d| d.listen)),
                waiting_for: (!a.waiting.is_empty()).then(|| a.waiting.clone()),
            })
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        *self.status.write().unwrap_or_else(|e| e.into_inner()) = pods;
    }
}

/// The listeners opened in a pod's network namespace.
struct PodListeners {
    waypoint: std::net::TcpListener,
    cookie: u64,
    /// DNS capture on: the DNS listener's UDP socket and TCP listener, and the pod's socket
    /// factory its forwarded queries use.
    dns: Option<(std::net::UdpSocket, std::net::TcpListener, NetnsSockets)>,
}

/// Serves a pod's listeners — the waypoint's, and the DNS proxy's if any — until the returned
/// tasks are aborted (or a drain closes the gate).
fn serve(
    waypoint: &Arc<Waypoint>,
    gate: &watch::Receiver<Gate>,
    dns: Option<&PodDns>,
    listeners: PodListeners,
) -> Result<Serving, String> {
    let cookie = listeners.cookie;
    let registering = |e: std::io::Error| format!("registering a listener with the runtime: {e}");
    let listener = tokio::net::TcpListener::from_std(listeners.waypoint).map_err(registering)?;
    let dns_sockets = match (dns, listeners.dns) {
        (Some(dns), Some((udp, tcp, sockets))) => Some((
            dns,
            tokio::net::UdpSocket::from_std(udp).map_err(registering)?,
            tokio::net::TcpListener::from_std(tcp).map_err(registering)?,
            sockets,
        )),
        _ => None,
    };
    let dns_task = dns_sockets.map(|(dns, udp, tcp, sockets)| {
        let proxy = DnsProxy::with_forwarding(
            dns.names.clone(),
            dns.resolvers.clone(),
            dns.limits,
            Forwarding::Namespace(Arc::new(sockets)),
        );
        let mut gate = gate.clone();
        tokio::spawn(async move {
            let closed = async {
                if gate.wait_for(|g| *g == Gate::Closed).await.is_err() {
                    // Nobody can close it any more: serve on.
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                served = proxy.serve(udp, tcp, cookie) => {
                    if let Err(error) = served {
                        warn!(%error, "a pod's DNS listener failed");
                    }
                }
                () = closed => debug!(netns_cookie = cookie, "a pod's DNS listener closed for the drain"),
            }
        })
    });
    let waypoint = waypoint.clone();
    let gate = gate.clone();
    let task = tokio::spawn(async move {
        if let Err(error) = waypoint.serve_netns(listener, cookie, gate).await {
            warn!(%error, "a pod's waypoint listener failed");
        }
    });
    Ok(Serving {
        cookie,
        task,
        dns: dns_task,
    })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Opens the waypoint listener (and, with DNS capture on, the DNS listener) in the network
/// namespace of a process of the pod. `Err` says what is missing (retried).
fn open_listeners(
    opts: &PodOptions,
    dns: Option<&PodDns>,
    cgroup: &std::path::Path,
) -> Result<PodListeners, String> {
    let pids = layout::pod_processes(cgroup);
    if pids.is_empty() {
        return Err("a process in its cgroup".into());
    }
    let mut last = String::new();
    // A process may exit between the read and the open: try the next.
    for pid in pids.into_iter().take(8) {
        let path = netns::of_process(&opts.proc, pid);
        // Without DNS the factory is dropped at once (its thread exits); with it, it lives as
        // long as the pod's DNS listener, for the forwarded queries.
        let opened = NetnsSockets::enter(&path).and_then(|sockets| {
            let cookie = sockets.cookie();
            let waypoint = sockets.tcp_listener(opts.listen)?;
            let dns = match dns {
                Some(dns) => {
                    let udp = sockets.udp_socket(dns.listen)?;
                    let tcp = sockets.tcp_listener(dns.listen)?;
                    Some((udp, tcp, sockets))
                }
                None => None,
            };
            Ok(PodListeners {
                waypoint,
                cookie,
                dns,
            })
        });
        match opened {
            Ok(listeners) => return Ok(listeners),
            Err(error) => last = error_chain(&error),
        }
    }
    Err(last)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::enrollment::DATAPLANE_MODE_LABEL;

    fn pod(uid: &str, ns: &str, name: &str, sa: Option<&str>, label: Option<&str>) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            namespace: ns.into(),
            name: name.into(),
            service_account: sa.map(Into::into),
            labels: label
                .map(|v| BTreeMap::from([(DATAPLANE_MODE_LABEL.to_owned(), v.to_owned())]))
                .unwrap_or_default(),
            host_network: false,
            phase: Some("Running".into()),
        }
    }

    #[test]
    fn enrolled_pods_get_the_principal_of_their_service_account() {
        let mut view = ClusterView::default();
        view.namespaces.insert(
            "default".into(),
            BTreeMap::from([(DATAPLANE_MODE_LABEL.to_owned(), "ambient".to_owned())]),
        );
        view.namespaces.insert("other".into(), BTreeMap::new());
        for p in [
            pod("1", "default", "sleep", Some("sleep"), None),
            pod("2", "default", "nosa", None, None),
            pod("3", "default", "out", Some("x"), Some("none")),
            pod("4", "other", "plain", Some("y"), None),
            pod("5", "other", "labelled", Some("z"), Some("ambient")),
            PodInfo {
                host_network: true,
                ..pod("6", "default", "host", None, None)
            },
        ] {
            view.pods.insert(p.uid.clone(), p);
        }
        let enrolled = view.enrolled("ambient", "cluster.local");
        let principals: Vec<(&str, String)> = enrolled
            .iter()
            .map(|(uid, w)| (uid.as_str(), w.principal.to_string()))
            .collect();
        assert_eq!(
            principals,
            vec![
                ("1", "cluster.local/ns/default/sa/sleep".to_owned()),
                ("2", "cluster.local/ns/default/sa/default".to_owned()),
                ("5", "cluster.local/ns/other/sa/z".to_owned()),
            ]
        );
    }

    #[test]
    fn retries_start_short_and_stay_bounded() {
        let delays: Vec<u128> = (1..12).map(|a| retry_delay(a).as_millis()).collect();
        assert!(delays[..3].iter().all(|d| *d <= 250), "{delays:?}");
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= 1000), "{delays:?}");
    }
}
