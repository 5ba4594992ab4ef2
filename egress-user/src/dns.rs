//! Resolving ServiceEntry hosts (`resolution: DNS`, and hosts without `addresses`), refreshed
//! when the answer's TTL runs out. A failed refresh keeps the last good answer.
//!
//! The lookups run in their own task ([`spawn`]): the reconciler hands it the hosts the config
//! needs and gets the answers back whenever they change, so a reload never waits on DNS.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use hickory_resolver::{TokioResolver, net::runtime::TokioRuntimeProvider, system_conf};
use thiserror::Error;
use tokio::{
    sync::{oneshot, watch},
    task::{self, JoinSet},
    time::Instant,
};
use tracing::{debug, info, warn};

use crate::model::DnsAnswers;

/// The default floor on how soon an answer is asked again, whatever its TTL says: Envoy's
/// `dns_min_refresh_rate` default. A TTL of 0 or 1 s would otherwise mean a query per second
/// per host.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(5);
/// The lowest floor `--dns-min-refresh` accepts.
pub const MIN_REFRESH_FLOOR: Duration = Duration::from_secs(1);
/// However long the TTL, an answer is asked again after this long.
pub const MAX_REFRESH: Duration = Duration::from_secs(300);
/// After a failure, ask again this soon (not sooner than the floor).
const RETRY: Duration = Duration::from_secs(5);
/// One lookup may take this long.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The system resolver configuration (`--resolv-conf` default).
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("reading the resolver configuration {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the resolver configuration {path}")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: hickory_resolver::net::NetError,
    },
    #[error("building the resolver from {path}")]
    Build {
        path: PathBuf,
        #[source]
        source: hickory_resolver::net::NetError,
    },
    #[error("resolving {host}: {message}")]
    Lookup { host: String, message: String },
    #[error("resolving {host}: no answer within {LOOKUP_TIMEOUT:?}")]
    Timeout { host: String },
}

#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// A resolver configured by a resolv.conf file (nameservers, search, options).
    pub fn from_resolv_conf(path: &Path) -> Result<Self, DnsError> {
        let data = std::fs::read(path).map_err(|source| DnsError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        let (config, options) =
            system_conf::parse_resolv_conf(data).map_err(|source| DnsError::ParseConfig {
                path: path.to_owned(),
                source,
            })?;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|source| DnsError::Build {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self { resolver })
    }

    /// The addresses of `host` and the TTL of the answer.
    pub async fn resolve(&self, host: &str) -> Result<(Vec<IpAddr>, Duration), DnsError> {
        // A trailing dot makes the name absolute: no search domains.
        let name = if host.ends_with('.') {
            host.to_owned()
        } else {
            format!("{host}.")
        };
        let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, self.resolver.lookup_ip(name.as_str()))
            .await
            .map_err(|_| DnsError::Timeout {
                host: host.to_owned(),
            })?
            .map_err(|e| DnsError::Lookup {
                host: host.to_owned(),
                message: e.to_string(),
            })?;
        let mut ips: Vec<IpAddr> = lookup.iter().collect();
        ips.sort();
        ips.dedup();
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        Ok((ips, ttl))
    }
}

/// One host's last good answer and when to ask again.
#[derive(Debug)]
struct HostState {
    /// `None` until a lookup first succeeded.
    answer: Option<Vec<IpAddr>>,
    due: Instant,
    in_flight: bool,
}

/// When each host is asked again: a deadline per host, set from its answer's TTL (within
/// `[min_refresh, MAX_REFRESH]`), or `RETRY` after a failure. Pure bookkeeping, no I/O; the
/// deadlines are absolute, so however often the caller wakes up for other reasons, a host is
/// asked when its deadline passes.
#[derive(Debug)]
pub struct Schedule {
    hosts: BTreeMap<String, HostState>,
    min_refresh: Duration,
}

impl Schedule {
    pub fn new(min_refresh: Duration) -> Self {
        Self {
            hosts: BTreeMap::new(),
            min_refresh,
        }
    }

    /// The hosts the config needs now: new ones are due at once, dropped ones are forgotten.
    /// Returns whether the answers changed (a dropped host had one).
    pub fn set_hosts(&mut self, hosts: &BTreeSet<String>, now: Instant) -> bool {
        let mut changed = false;
        self.hosts.retain(|host, state| {
            let keep = hosts.contains(host);
            changed |= !keep && state.answer.as_ref().is_some_and(|ips| !ips.is_empty());
            keep
        });
        for host in hosts {
            self.hosts.entry(host.clone()).or_insert(HostState {
                answer: None,
                due: now,
                in_flight: false,
            });
        }
        changed
    }

    /// Hosts whose deadline has passed and that are not being asked already; they are marked
    /// as being asked.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        self.hosts
            .iter_mut()
            .filter(|(_, s)| !s.in_flight && s.due <= now)
            .map(|(host, s)| {
                s.in_flight = true;
                host.clone()
            })
            .collect()
    }

    /// The earliest deadline of a host not being asked; `None` when there is nothing to wait for.
    pub fn next_due(&self) -> Option<Instant> {
        self.hosts
            .values()
            .filter(|s| !s.in_flight)
            .map(|s| s.due)
            .min()
    }

    /// Records the outcome of asking `host`. A success replaces its answer and sets its next
    /// deadline from the TTL; a failure keeps the last good answer and retries soon. Returns
    /// whether the answers changed. A host dropped meanwhile is ignored.
    pub fn record(
        &mut self,
        host: &str,
        result: Result<(Vec<IpAddr>, Duration), DnsError>,
        now: Instant,
    ) -> bool {
        let Some(state) = self.hosts.get_mut(host) else {
            return false;
        };
        state.in_flight = false;
        match result {
            Ok((ips, ttl)) => {
                let refresh = ttl.clamp(self.min_refresh, MAX_REFRESH.max(self.min_refresh));
                state.due = now + refresh;
                let changed = state.answer.as_ref() != Some(&ips);
                if changed {
                    info!(%host, addresses = ?ips, ?ttl, next_in = ?refresh, "DNS answer changed");
                } else {
                    debug!(%host, addresses = ?ips, ?ttl, next_in = ?refresh, "resolved");
                }
                state.answer = Some(ips);
                changed
            }
            Err(error) => {
                let kept = state.answer.as_ref().map_or(0, Vec::len);
                warn!(%error, kept, "DNS lookup failed; keeping the last answer");
                state.due = now + RETRY.max(self.min_refresh);
                false
            }
        }
    }

    /// The last good answer of every host that has one.
    pub fn answers(&self) -> DnsAnswers {
        self.hosts
            .iter()
            .filter_map(|(host, s)| Some((host.clone(), s.answer.clone()?)))
            .filter(|(_, ips)| !ips.is_empty())
            .collect()
    }

    /// Whether a lookup is under way.
    pub fn asking(&self) -> bool {
        self.hosts.values().any(|s| s.in_flight)
    }
}

/// Where the resolver configuration comes from and how often answers may be refreshed.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// A resolv.conf file (`--resolv-conf`, default [`RESOLV_CONF`]).
    pub resolv_conf: PathBuf,
    /// The floor on refreshes (`--dns-min-refresh`, default [`DEFAULT_MIN_REFRESH`]).
    pub min_refresh: Duration,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            resolv_conf: PathBuf::from(RESOLV_CONF),
            min_refresh: DEFAULT_MIN_REFRESH,
        }
    }
}

/// The running background resolver: tell it the hosts through `hosts`; dropping it ends the
/// task.
pub struct Resolution {
    pub hosts: watch::Sender<BTreeSet<String>>,
    /// Fires once every host of the first set has been asked (answered or failed).
    pub first_round: oneshot::Receiver<()>,
}

/// Starts the task that keeps `hosts` resolved: each host is asked when its own deadline
/// passes, the lookups run concurrently, and the answers are sent on `answers` whenever they
/// change.
pub fn spawn(
    dns: Dns,
    hosts: BTreeSet<String>,
    answers: watch::Sender<DnsAnswers>,
    min_refresh: Duration,
) -> Resolution {
    let (hosts_tx, hosts_rx) = watch::channel(hosts);
    let (first_tx, first_rx) = oneshot::channel();
    tokio::spawn(refresh_loop(dns, hosts_rx, answers, first_tx, min_refresh));
    Resolution {
        hosts: hosts_tx,
        first_round: first_rx,
    }
}

async fn refresh_loop(
    dns: Dns,
    mut hosts: watch::Receiver<BTreeSet<String>>,
    answers: watch::Sender<DnsAnswers>,
    first_round: oneshot::Sender<()>,
    min_refresh: Duration,
) {
    let mut schedule = Schedule::new(min_refresh);
    schedule.set_hosts(&hosts.borrow_and_update(), Instant::now());
    let mut first_round = Some(first_round);
    let mut lookups = JoinSet::new();
    let mut asked: HashMap<task::Id, String> = HashMap::new();
    loop {
        for host in schedule.take_due(Instant::now()) {
            let dns = dns.clone();
            let name = host.clone();
            let handle = lookups.spawn(async move { dns.resolve(&name).await });
            asked.insert(handle.id(), host);
        }
        if !schedule.asking()
            && let Some(done) = first_round.take()
        {
            let _ = done.send(());
        }
        // An absolute deadline: recreating this sleep on every pass never pushes it back.
        let due = schedule.next_due();
        let sleep = tokio::time::sleep_until(due.unwrap_or_else(far_future));
        tokio::select! {
            changed = hosts.changed() => {
                if changed.is_err() {
                    // The reconciler is gone.
                    return;
                }
                let wanted = hosts.borrow_and_update().clone();
                if schedule.set_hosts(&wanted, Instant::now()) {
                    answers.send_replace(schedule.answers());
                }
            }
            Some(joined) = lookups.join_next_with_id() => {
                let (id, result) = match joined {
                    Ok((id, result)) => (id, result),
                    Err(error) => {
                        let host = asked.get(&error.id()).cloned().unwrap_or_default();
                        (error.id(), Err(DnsError::Lookup { host, message: error.to_string() }))
                    }
                };
                let Some(host) = asked.remove(&id) else { continue };
                if schedule.record(&host, result, Instant::now()) {
                    answers.send_replace(schedule.answers());
                }
            }
            () = sleep, if due.is_some() => {}
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn hosts(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 54, last))
    }

    fn timeout(host: &str) -> Result<(Vec<IpAddr>, Duration), DnsError> {
        Err(DnsError::Timeout {
            host: host.to_owned(),
        })
    }

    #[test]
    fn new_hosts_are_due_at_once_and_asked_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(SEC);
        s.set_hosts(&hosts(&["a.test", "b.test"]), t0);
        assert_eq!(s.take_due(t0), ["a.test", "b.test"]);
        assert!(s.take_due(t0).is_empty(), "in flight: not asked twice");
        assert_eq!(
            s.next_due(),
            None,
            "nothing to wait for while both are asked"
        );
    }

    #[test]
    fn the_ttl_sets_the_next_deadline_within_floor_and_ceiling() {
        for (ttl, floor, want) in [
            (30 * SEC, 5 * SEC, 30 * SEC),
            (SEC, 5 * SEC, 5 * SEC),
            (Duration::ZERO, SEC, SEC),
            (SEC, SEC, SEC),
            (86_400 * SEC, 5 * SEC, MAX_REFRESH),
        ] {
            let t0 = Instant::now();
            let mut s = Schedule::new(floor);
            s.set_hosts(&hosts(&["a.test"]), t0);
            s.take_due(t0);
            assert!(s.record("a.test", Ok((vec![ip(1)], ttl)), t0));
            assert_eq!(s.next_due(), Some(t0 + want), "ttl {ttl:?} floor {floor:?}");
            assert!(s.take_due(t0 + want - Duration::from_millis(1)).is_empty());
            assert_eq!(s.take_due(t0 + want), ["a.test"]);
        }
    }

    #[test]
    fn deadlines_are_per_host() {
        let t0 = Instant::now();
        let mut s = Schedule::new(SEC);
        s.set_hosts(&hosts(&["long.test", "short.test"]), t0);
        s.take_due(t0);
        s.record("long.test", Ok((vec![ip(1)], 60 * SEC)), t0);
        s.record("short.test", Ok((vec![ip(2)], 2 * SEC)), t0);
        assert_eq!(s.next_due(), Some(t0 + 2 * SEC));
        assert_eq!(s.take_due(t0 + 2 * SEC), ["short.test"]);
        assert_eq!(s.next_due(), Some(t0 + 60 * SEC), "the other keeps its own");
    }

    #[test]
    fn a_changed_answer_is_reported_and_an_unchanged_one_is_not() {
        let t0 = Instant::now();
        let mut s = Schedule::new(SEC);
        s.set_hosts(&hosts(&["moved.test"]), t0);
        s.take_due(t0);
        assert!(s.record("moved.test", Ok((vec![ip(1)], SEC)), t0));
        s.take_due(t0 + SEC);
        assert!(!s.record("moved.test", Ok((vec![ip(1)], SEC)), t0 + SEC));
        s.take_due(t0 + 2 * SEC);
        assert!(s.record("moved.test", Ok((vec![ip(2)], SEC)), t0 + 2 * SEC));
        assert_eq!(s.answers()["moved.test"], [ip(2)]);
    }

    #[test]
    fn a_failed_refresh_keeps_the_last_good_answer_and_retries() {
        let t0 = Instant::now();
        let mut s = Schedule::new(SEC);
        s.set_hosts(&hosts(&["a.test"]), t0);
        s.take_due(t0);
        s.record("a.test", Ok((vec![ip(1)], SEC)), t0);
        s.take_due(t0 + SEC);
        assert!(!s.record("a.test", timeout("a.test"), t0 + SEC));
        assert_eq!(s.answers()["a.test"], [ip(1)]);
        assert_eq!(s.next_due(), Some(t0 + SEC + RETRY));
    }

    #[test]
    fn a_host_that_never_answered_has_no_answer_and_is_retried() {
        let t0 = Instant::now();
        let mut s = Schedule::new(SEC);
        s.set_hosts(&hosts(&["silent.test"]), t0);
        s.take_due(t0);
        assert!(!s.record("silent.test", timeout("silent.test"), t0));
        assert!(s.answers().is_empty());
        assert_eq!(s.next_due(), Some(t0 + RETRY));
    }

    #[test]
    fn dropped_hosts_lose_their_answer_and_late_results_are_ignored() {
        let t0 = Instant::now();
        let mut s = Schedule::new(SEC);
        s.set_hosts(&hosts(&["a.test", "b.test"]), t0);
        s.take_due(t0);
        s.record("a.test", Ok((vec![ip(1)], SEC)), t0);
        assert!(
            s.set_hosts(&hosts(&["b.test", "c.test"]), t0),
            "a.test had an answer"
        );
        assert!(!s.record("a.test", Ok((vec![ip(1)], SEC)), t0));
        assert!(s.answers().is_empty());
        assert_eq!(s.take_due(t0), ["c.test"], "b.test is still in flight");
        assert!(
            !s.set_hosts(&hosts(&["b.test", "c.test"]), t0),
            "nothing changed"
        );
    }
}
