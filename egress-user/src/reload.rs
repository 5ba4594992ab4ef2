//! Keeping the running configuration current. A [`ConfigSource`] yields complete, validated
//! configurations ([`Snapshot`]): [`FileSource`] when config files change on disk (polled) or on
//! SIGHUP, the Kubernetes source ([`crate::kube`]) when watched objects change; the
//! [`Reconciler`] does not know which it has. DNS answers come from a background task
//! ([`crate::dns`]) that refreshes each host when its TTL runs out. Each change builds a complete
//! new service table and swaps it in atomically; an invalid new set is logged by its source and
//! the previous one keeps serving. A reload never waits on DNS: it publishes at once with the
//! last known answers, and hosts it adds are published when they answer.
use std::{
    fs,
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::{signal::unix::Signal, sync::watch};
use tracing::{error, info, warn};

use crate::{
    bpf::{AnchorFlags, BpfError, Capture, ServiceRoute},
    cgroup,
    config::{self, ConfigErrors, ConfigSet, IpNet},
    dns::{self, Dns, DnsOptions, LOOKUP_TIMEOUT, Resolution},
    identity::{CgroupIdentities, Principal},
    model::{self, DnsAnswers, ServiceTable},
    policy::PolicySet,
    verdicts::{self, Anchor},
};

/// What failed while a configuration was applied to the kernel and the resolver. Its own
/// error (not `run`'s), so that `run` depends on `reload` and not the reverse.
#[derive(Debug, Error)]
pub enum ReloadError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
}

/// How often the config paths are checked for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// What the config paths look like on disk: every file's path, size and modification time.
/// Symlinks are followed, so a Kubernetes ConfigMap update (an atomic `..data` swap) shows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

impl Fingerprint {
    pub fn of(paths: &[PathBuf]) -> Self {
        let mut files = Vec::new();
        for path in paths {
            walk(path, 0, &mut files);
        }
        files.sort();
        Self(files)
    }
}

fn walk(path: &Path, depth: usize, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
    let Ok(meta) = fs::metadata(path) else {
        // A path that vanished is a change too.
        out.push((path.to_owned(), u64::MAX, None));
        return;
    };
    if meta.is_dir() {
        if depth > 16 {
            return;
        }
        let Ok(entries) = fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            walk(&entry.path(), depth + 1, out);
        }
    } else {
        out.push((path.to_owned(), meta.len(), meta.modified().ok()));
    }
}

/// REGISTRY_ONLY settings from the command line.
#[derive(Clone, Debug)]
pub struct Outbound {
    /// `Some` when `--outbound-policy` was given: it wins over the mesh config.
    pub registry_only: Option<bool>,
    pub allowed: Vec<crate::config::IpNet>,
}

/// One complete, validated configuration from a [`ConfigSource`], and why it was read.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub config: ConfigSet,
    /// For the log: `config files changed`, `SIGHUP`, `Kubernetes objects changed`.
    pub reason: String,
}

/// Where configurations come from: files, or the Kubernetes API. A source validates what it
/// reads, reports what it rejects itself, and yields only complete configurations.
pub trait ConfigSource: Send + 'static {
    /// The next configuration. Cancel-safe (the reconciler also waits on other things); `None`
    /// when the source has ended, after which the last configuration keeps serving.
    fn next(&mut self) -> impl Future<Output = Option<Snapshot>> + Send;
}

/// Config files and directories: polled for changes every [`POLL`], and reloaded on SIGHUP. An
/// invalid set is logged (`FILE:DOC:FIELD: message`) and not yielded.
pub struct FileSource {
    paths: Vec<PathBuf>,
    fingerprint: Fingerprint,
    hangup: Signal,
    poll: tokio::time::Interval,
}

impl FileSource {
    pub fn new(paths: Vec<PathBuf>, hangup: Signal) -> Self {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            fingerprint: Fingerprint::of(&paths),
            paths,
            hangup,
            poll,
        }
    }

    /// Reads the files now (start-up: errors stop it).
    pub fn load(&mut self) -> Result<ConfigSet, ConfigErrors> {
        self.fingerprint = Fingerprint::of(&self.paths);
        config::load(&self.paths)
    }

    fn reload(&mut self, why: &str) -> Option<Snapshot> {
        match self.load() {
            Err(errors) => {
                error!(
                    reason = why,
                    errors = errors.0.len(),
                    "configuration rejected; the previous one keeps serving"
                );
                for e in &errors.0 {
                    error!("{e}");
                }
                None
            }
            Ok(config) => Some(Snapshot {
                config,
                reason: why.to_owned(),
            }),
        }
    }
}

impl ConfigSource for FileSource {
    async fn next(&mut self) -> Option<Snapshot> {
        loop {
            let why = tokio::select! {
                _ = self.poll.tick() => {
                    if Fingerprint::of(&self.paths) == self.fingerprint {
                        continue;
                    }
                    "config files changed"
                }
                _ = self.hangup.recv() => "SIGHUP",
            };
            if let Some(snapshot) = self.reload(why) {
                return Some(snapshot);
            }
        }
    }
}

/// What the reconciler writes to the kernel (the real one is [`Capture`]; unit tests have a
/// fake).
pub trait Kernel: Send + Sync {
    /// The captured cgroup.
    fn cgroup(&self) -> &Path;
    fn set_outbound_policy(&self, registry_only: bool, allowed: &[IpNet]) -> Result<(), BpfError>;
    fn sync_services(&self, routes: &[ServiceRoute]) -> Result<(), BpfError>;
    fn set_generation(&self, generation: u64) -> Result<(), BpfError>;
    /// Makes the kernel's identity anchors exactly these, with their flags (pod anchors are
    /// enrolled in Kubernetes mode).
    fn sync_anchors(&self, anchors: &[(u64, AnchorFlags)]) -> Result<(), BpfError>;
    fn cache_deny(
        &self,
        identity_id: u64,
        service_id: u32,
        port: u16,
        generation: u64,
    ) -> Result<(), BpfError>;
    fn sweep_verdicts(&self, generation: u64) -> Result<usize, BpfError>;
}

impl Kernel for Capture {
    fn cgroup(&self) -> &Path {
        Capture::cgroup(self)
    }
    fn set_outbound_policy(&self, registry_only: bool, allowed: &[IpNet]) -> Result<(), BpfError> {
        Capture::set_outbound_policy(self, registry_only, allowed)
    }
    fn sync_services(&self, routes: &[ServiceRoute]) -> Result<(), BpfError> {
        Capture::sync_services(self, routes)
    }
    fn set_generation(&self, generation: u64) -> Result<(), BpfError> {
        Capture::set_generation(self, generation)
    }
    fn sync_anchors(&self, anchors: &[(u64, AnchorFlags)]) -> Result<(), BpfError> {
        Capture::sync_anchors_flagged(self, anchors)
    }
    fn cache_deny(
        &self,
        identity_id: u64,
        service_id: u32,
        port: u16,
        generation: u64,
    ) -> Result<(), BpfError> {
        Capture::cache_deny(self, identity_id, service_id, port, generation)
    }
    fn sweep_verdicts(&self, generation: u64) -> Result<usize, BpfError> {
        Capture::sweep_verdicts(self, generation)
    }
}

/// Owns the current config and DNS answers, and publishes service tables built from them.
pub struct Reconciler {
    /// Identity anchors registered in the kernel.
    anchors: Vec<Anchor>,
    /// Whether L4-decidable denies are written to the kernel at all.
    verdict_cache: bool,
    outbound: Outbound,
    /// REGISTRY_ONLY as last applied to the kernel.
    registry_only: Option<bool>,
    identities: Arc<CgroupIdentities>,
    root_namespace: String,
    generation: u64,
    capture: Arc<dyn Kernel>,
    services: Arc<ArcSwap<ServiceTable>>,
    config: ConfigSet,
    dns_options: DnsOptions,
    /// The background resolver, once some config needed one.
    resolution: Option<Resolution>,
    /// Where the background resolver sends answers (handed to it when it starts).
    answers_tx: Option<watch::Sender<DnsAnswers>>,
    answers_rx: watch::Receiver<DnsAnswers>,
    /// The answers the published table was built from.
    answers: DnsAnswers,
}

impl Reconciler {
    /// Loads and applies the initial configuration. Errors here stop start-up. Start-up waits
    /// (at most one lookup timeout) for the first answers, so that the addresses of hosts that
    /// resolve are captured before the waypoint reports ready; a host that does not answer is
    /// published when it does.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        root_namespace: &str,
        config: ConfigSet,
        capture: Arc<dyn Kernel>,
        identities: Arc<CgroupIdentities>,
        verdict_cache: bool,
        outbound: Outbound,
        dns_options: DnsOptions,
    ) -> Result<Self, ReloadError> {
        let (answers_tx, answers_rx) = watch::channel(DnsAnswers::new());
        let mut this = Self {
            anchors: Vec::new(),
            verdict_cache,
            outbound,
            registry_only: None,
            identities,
            root_namespace: root_namespace.to_owned(),
            // Unique across restarts: verdicts pinned by an earlier run are never current.
            generation: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_micros() as u64),
            capture,
            services: Arc::new(ArcSwap::from_pointee(ServiceTable::default())),
            config,
            dns_options,
            resolution: None,
            answers_tx: Some(answers_tx),
            answers_rx,
            answers: DnsAnswers::new(),
        };
        this.apply_outbound()?;
        this.update_hosts()?;
        if let Some(resolution) = &mut this.resolution {
            // Bounded twice: every lookup has its own timeout, and so has this wait.
            let first = &mut resolution.first_round;
            if tokio::time::timeout(LOOKUP_TIMEOUT + Duration::from_secs(1), first)
                .await
                .is_err()
            {
                warn!("DNS: not every host answered in time; they are captured once they do");
            }
            this.answers = this.answers_rx.borrow_and_update().clone();
        }
        this.apply_identities();
        let table = this.build(&this.policies())?;
        this.services.store(Arc::new(table));
        this.refresh_verdicts(true);
        Ok(this)
    }

    /// The table the waypoint and admin endpoint read.
    pub fn services(&self) -> Arc<ArcSwap<ServiceTable>> {
        self.services.clone()
    }

    /// Tells the background resolver which hosts the config needs, starting it when the
    /// first are configured. Never waits on a lookup.
    fn update_hosts(&mut self) -> Result<(), ReloadError> {
        let hosts = model::dns_hosts(&self.config);
        if let Some(resolution) = &self.resolution {
            resolution.hosts.send_if_modified(|current| {
                let changed = *current != hosts;
                *current = hosts;
                changed
            });
            return Ok(());
        }
        if hosts.is_empty() {
            return Ok(());
        }
        let dns = Dns::from_resolv_conf(&self.dns_options.resolv_conf)?;
        let Some(answers) = self.answers_tx.take() else {
            return Ok(());
        };
        info!(
            hosts = hosts.len(),
            resolv_conf = %self.dns_options.resolv_conf.display(),
            min_refresh = ?self.dns_options.min_refresh,
            "resolving ServiceEntry hosts in the background"
        );
        self.resolution = Some(dns::spawn(
            dns,
            hosts,
            answers,
            self.dns_options.min_refresh,
        ));
        Ok(())
    }

    /// REGISTRY_ONLY from the command line, else from the mesh config, else ALLOW_ANY.
    fn apply_outbound(&mut self) -> Result<(), ReloadError> {
        let registry_only = self
            .outbound
            .registry_only
            .or(self.config.mesh.as_ref().map(|m| m.registry_only))
            .unwrap_or(false);
        if self.registry_only == Some(registry_only) {
            return Ok(());
        }
        self.capture
            .set_outbound_policy(registry_only, &self.outbound.allowed)?;
        self.registry_only = Some(registry_only);
        if registry_only {
            let allowed: Vec<String> = self
                .outbound
                .allowed
                .iter()
                .map(ToString::to_string)
                .collect();
            info!(allowed = %allowed.join(","), "REGISTRY_ONLY: other destinations are refused in the kernel");
        } else {
            info!("ALLOW_ANY: destinations that are no ServiceEntry are not touched");
        }
        Ok(())
    }

    /// Hands the declared WorkloadIdentity mappings to the identity source.
    fn apply_identities(&self) {
        let mount = cgroup::cgroup2_mount().ok();
        let td = self.identities.trust_domain().to_owned();
        let mappings = self
            .config
            .workload_identities
            .iter()
            .filter_map(|id| {
                let path = if id.cgroup.is_absolute() {
                    id.cgroup.clone()
                } else {
                    mount.as_ref()?.join(&id.cgroup)
                };
                if !path.starts_with(self.capture.cgroup()) {
                    warn!(
                        identity = %id.name,
                        cgroup = %path.display(),
                        captured = %self.capture.cgroup().display(),
                        "WorkloadIdentity names a cgroup outside the captured one: its traffic is not captured"
                    );
                }
                Some((path, Principal::new(&td, &id.namespace, &id.service_account)))
            })
            .collect();
        self.identities.set_mappings(mappings);
    }

    /// The policies of the current config, warning once about those a waypoint ignores.
    fn policies(&self) -> Arc<PolicySet> {
        let policies = PolicySet::new(&self.config.authorization_policies, &self.root_namespace);
        for ignored in policies.ignored() {
            warn!(
                policy = %ignored.policy,
                reason = ?ignored.reason,
                "AuthorizationPolicy does not apply at a waypoint (it needs targetRefs to a ServiceEntry)"
            );
        }
        Arc::new(policies)
    }

    /// Builds the next generation's table (services + `policies`) and syncs the kernel.
    fn build(&mut self, policies: &Arc<PolicySet>) -> Result<ServiceTable, ReloadError> {
        self.generation += 1;
        let built = model::build(&self.config, &self.answers);
        for warning in &built.warnings {
            warn!("{warning}");
        }
        self.capture.sync_services(&built.routes)?;
        info!(
            services = built.table.len(),
            addresses = built.routes.len(),
            "ServiceEntry addresses captured"
        );
        Ok(built.table.with_policies(policies.clone(), self.generation))
    }

    /// Brings the kernel verdict cache in line with the published table. With `new_generation`
    /// (after a publish): the kernel's generation moves first, so every older verdict is ignored
    /// at once, then the L4-decidable denies of the known identities are written and the stale
    /// entries swept. Without: only identities that appeared since get theirs.
    fn refresh_verdicts(&mut self, new_generation: bool) {
        let table = self.services.load_full();
        let anchors = self.identities.anchors();
        if !new_generation && anchors == self.anchors {
            return;
        }
        let result = (|| -> Result<usize, ReloadError> {
            if new_generation {
                self.capture.set_generation(table.generation)?;
            }
            // Pod anchors (Kubernetes mode) are enrolled: only they are captured there.
            let pods: std::collections::HashSet<u64> = self
                .identities
                .pods()
                .iter()
                .filter_map(|(path, _)| cgroup::id(path).ok())
                .collect();
            let registered: Vec<(u64, AnchorFlags)> = anchors
                .iter()
                .map(|a| {
                    let flags = AnchorFlags {
                        cacheable: a.principal.is_some(),
                        enrolled: pods.contains(&a.cgroup_id),
                    };
                    (a.cgroup_id, flags)
                })
                .collect();
            self.capture.sync_anchors(&registered)?;
            let fresh: Vec<Anchor> = if new_generation {
                anchors.clone()
            } else {
                anchors
                    .iter()
                    .filter(|a| !self.anchors.contains(a))
                    .cloned()
                    .collect()
            };
            let denies = if self.verdict_cache {
                verdicts::precompute(&table, &fresh)
            } else {
                Vec::new()
            };
            for d in &denies {
                self.capture
                    .cache_deny(d.identity_id, d.service_id, d.port, table.generation)?;
            }
            if new_generation {
                self.capture.sweep_verdicts(table.generation)?;
            }
            Ok(denies.len())
        })();
        match result {
            Ok(written) => {
                info!(
                    generation = table.generation,
                    identities = anchors.len(),
                    cached_denies = written,
                    "kernel verdict cache updated"
                );
                self.anchors = anchors;
            }
            Err(error) => {
                warn!(%error, "updating the kernel verdict cache failed (only speed is lost)")
            }
        }
    }

    /// Swaps in a new generation. Policies are rebuilt only when the config changed.
    fn publish(&mut self, policies: &Arc<PolicySet>) {
        match self.build(policies) {
            Ok(table) => {
                self.services.store(Arc::new(table));
                self.refresh_verdicts(true);
            }
            Err(error) => {
                error!(%error, "applying the new configuration to the kernel failed; the previous table keeps serving")
            }
        }
    }

    /// Applies a configuration from the source, unless it is the running one.
    fn apply(&mut self, snapshot: Snapshot) {
        let why = snapshot.reason.as_str();
        if snapshot.config == self.config {
            info!(reason = why, "configuration unchanged");
            return;
        }
        self.config = snapshot.config;
        if let Err(error) = self.apply_outbound() {
            error!(%error, "applying the outbound traffic policy failed");
        }
        self.apply_identities();
        if let Err(error) = self.update_hosts() {
            error!(%error, "DNS setup for the new configuration failed");
        }
        let policies = self.policies();
        self.publish(&policies);
        info!(reason = why, "configuration reloaded");
    }

    /// Runs until the task is dropped: configurations from `source`, identities that appeared,
    /// DNS answers that changed.
    pub async fn run<S: ConfigSource>(
        mut self,
        mut source: S,
        mut rescans: tokio::sync::mpsc::Receiver<crate::identity::rescan::Rescan>,
    ) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut answers = self.answers_rx.clone();
        let mut resolver_alive = true;
        let mut source_alive = true;
        loop {
            tokio::select! {
                // Identities that appeared since (a new service-account cgroup).
                _ = poll.tick() => self.refresh_verdicts(false),
                snapshot = source.next(), if source_alive => match snapshot {
                    Some(snapshot) => self.apply(snapshot),
                    None => {
                        source_alive = false;
                        warn!("the configuration source stopped; the last configuration keeps serving");
                    }
                },
                // `egress exec` made an identity cgroup: its verdicts before its first connect.
                Some(done) = rescans.recv() => {
                    self.refresh_verdicts(false);
                    let _ = done.send(());
                }
                changed = answers.changed(), if resolver_alive => {
                    if changed.is_err() {
                        resolver_alive = false;
                        warn!("the DNS resolver task stopped; the last answers stay captured");
                        continue;
                    }
                    let fresh = answers.borrow_and_update().clone();
                    if fresh != self.answers {
                        self.answers = fresh;
                        let policies = self.services.load().policies.clone();
                        self.publish(&policies);
                        info!("DNS answers changed; captured addresses updated");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "reload_tests.rs"]
mod tests;
