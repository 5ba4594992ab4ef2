//! Keeping the running configuration current: config files changed on disk (polled) or SIGHUP
//! reload the whole set; DNS answers come from a background task ([`crate::dns`]) that refreshes
//! each host when its TTL runs out. Each change builds a complete new service table and swaps it
//! in atomically; an invalid new set is logged and the previous one keeps serving. A reload never
//! waits on DNS: it publishes at once with the last known answers, and hosts it adds are
//! published when they answer.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use tokio::{signal::unix::Signal, sync::watch};
use tracing::{error, info, warn};

use crate::{
    bpf::{AnchorFlags, Capture},
    cgroup,
    config::{self, ConfigSet},
    dns::{self, Dns, DnsOptions, LOOKUP_TIMEOUT, Resolution},
    identity::{CgroupIdentities, Principal},
    model::{self, DnsAnswers, ServiceTable},
    policy::PolicySet,
    run::RunError,
    verdicts::{self, Anchor},
};

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

/// Owns the current config and DNS answers, and publishes service tables built from them.
pub struct Reconciler {
    configs: Vec<PathBuf>,
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
    capture: Arc<Capture>,
    services: Arc<ArcSwap<ServiceTable>>,
    config: ConfigSet,
    fingerprint: Fingerprint,
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
        configs: Vec<PathBuf>,
        root_namespace: &str,
        config: ConfigSet,
        capture: Arc<Capture>,
        identities: Arc<CgroupIdentities>,
        verdict_cache: bool,
        outbound: Outbound,
        dns_options: DnsOptions,
    ) -> Result<Self, RunError> {
        let fingerprint = Fingerprint::of(&configs);
        let (answers_tx, answers_rx) = watch::channel(DnsAnswers::new());
        let mut this = Self {
            configs,
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
            fingerprint,
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
    fn update_hosts(&mut self) -> Result<(), RunError> {
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
    fn apply_outbound(&mut self) -> Result<(), RunError> {
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
    fn build(&mut self, policies: &Arc<PolicySet>) -> Result<ServiceTable, RunError> {
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
        let result = (|| -> Result<usize, RunError> {
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
            self.capture.sync_anchors_flagged(&registered)?;
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

    /// Reloads the config files; an invalid set is logged and ignored.
    pub fn reload(&mut self, why: &str) {
        self.fingerprint = Fingerprint::of(&self.configs);
        match config::load(&self.configs) {
            Err(errors) => {
                error!(
                    reason = why,
                    errors = errors.0.len(),
                    "configuration rejected; the previous one keeps serving"
                );
                for e in &errors.0 {
                    error!("{e}");
                }
            }
            Ok(config) => {
                if config == self.config {
                    info!(reason = why, "configuration unchanged");
                    return;
                }
                self.config = config;
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
        }
    }

    /// Runs until the task is dropped: config polling, SIGHUP, DNS answers that changed.
    pub async fn run(
        mut self,
        mut hangup: Signal,
        mut rescans: tokio::sync::mpsc::Receiver<crate::identity::rescan::Rescan>,
    ) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut answers = self.answers_rx.clone();
        let mut resolver_alive = true;
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    if Fingerprint::of(&self.configs) != self.fingerprint {
                        self.reload("config files changed");
                    }
                    // Identities that appeared since (a new service-account cgroup).
                    self.refresh_verdicts(false);
                }
                _ = hangup.recv() => self.reload("SIGHUP"),
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
