//! `resolution: DYNAMIC_DNS` at the waypoint: the concrete name a request carries (checked by
//! [`super::phases::dynamic_name`]) is resolved with the dataplane's resolver — the one
//! `resolution: DNS` uses ([`crate::dns::Dns`], `--resolv-conf`) — and the connection goes to
//! what it resolves to. Answers are cached per name for their TTL, in a bounded cache.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::Mutex,
    time::Duration,
};

use thiserror::Error;
use tokio::{sync::OnceCell, time::Instant};
use tracing::debug;

use crate::dns::{Dns, DnsError, MAX_REFRESH};

/// Names cached at most; past it, expired entries go first, then the soonest to expire.
pub(crate) const MAX_NAMES: usize = 4096;
/// An answer is kept at least this long, whatever its TTL (a TTL of 0 would mean a lookup per
/// request).
const MIN_TTL: Duration = Duration::from_secs(1);

/// Why a DYNAMIC_DNS name has no address to connect to.
#[derive(Debug, Error)]
pub(crate) enum DynamicDnsError {
    #[error("the resolver configuration cannot be used")]
    Resolver(#[source] DnsError),
    #[error(transparent)]
    Lookup(DnsError),
    #[error("{name} resolved to no usable address")]
    NoAddress { name: String },
}

impl DynamicDnsError {
    /// The error and its sources, `: `-separated, for one log line.
    pub(crate) fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(error) = source {
            text.push_str(": ");
            text.push_str(&error.to_string());
            source = error.source();
        }
        text
    }
}

/// One name's answer.
#[derive(Clone, Debug)]
struct Cached {
    addrs: Vec<IpAddr>,
    until: Instant,
}

/// Per-name answers with their expiry, at most [`MAX_NAMES`]. Pure bookkeeping (the caller
/// passes the time), so its bounds are unit-tested.
#[derive(Debug)]
pub(crate) struct NameCache {
    names: HashMap<String, Cached>,
    max: usize,
}

impl NameCache {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            names: HashMap::new(),
            max: max.max(1),
        }
    }

    /// The answer for `name`, if one is cached and not expired at `now`.
    pub(crate) fn get(&self, name: &str, now: Instant) -> Option<Vec<IpAddr>> {
        self.names
            .get(name)
            .filter(|c| c.until > now)
            .map(|c| c.addrs.clone())
    }

    /// Caches `addrs` for `name` for `ttl` (within [`MIN_TTL`], [`MAX_REFRESH`]). When full,
    /// expired entries are dropped first, then the one expiring soonest.
    pub(crate) fn insert(&mut self, name: &str, addrs: Vec<IpAddr>, ttl: Duration, now: Instant) {
        if !self.names.contains_key(name) && self.names.len() >= self.max {
            self.names.retain(|_, c| c.until > now);
            if self.names.len() >= self.max
                && let Some(soonest) = self
                    .names
                    .iter()
                    .min_by_key(|(_, c)| c.until)
                    .map(|(n, _)| n.clone())
            {
                self.names.remove(&soonest);
            }
        }
        let until = now + ttl.clamp(MIN_TTL, MAX_REFRESH);
        self.names.insert(name.to_owned(), Cached { addrs, until });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

/// The waypoint's resolver for DYNAMIC_DNS names. The resolver itself is built on first use,
/// so a configuration without DYNAMIC_DNS never reads the resolver configuration.
pub(crate) struct DynamicResolver {
    resolv_conf: PathBuf,
    /// Built on first use; a configuration that cannot be read is tried again next time.
    dns: OnceCell<Dns>,
    cache: Mutex<NameCache>,
}

impl DynamicResolver {
    pub(crate) fn new(resolv_conf: PathBuf) -> Self {
        Self {
            resolv_conf,
            dns: OnceCell::new(),
            cache: Mutex::new(NameCache::new(MAX_NAMES)),
        }
    }

    /// The addresses to connect to for `name` (IPv4 ones when there are any, as for
    /// `resolution: DNS`; never a VIP of ours), from the cache or a fresh lookup.
    pub(crate) async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, DynamicDnsError> {
        if let Some(addrs) = self.lock().get(name, Instant::now()) {
            return Ok(addrs);
        }
        let dns = self
            .dns
            .get_or_try_init(|| async {
                Dns::from_resolv_conf(&self.resolv_conf).map_err(DynamicDnsError::Resolver)
            })
            .await?;
        let (mut addrs, ttl) = dns.resolve(name).await.map_err(DynamicDnsError::Lookup)?;
        // A VIP names a ServiceEntry, not a destination: connecting to one would go nowhere
        // (the waypoint is not captured) or, worse, somewhere the client chose.
        addrs.retain(|ip| !is_vip(*ip));
        if addrs.iter().any(IpAddr::is_ipv4) {
            addrs.retain(IpAddr::is_ipv4);
        }
        if addrs.is_empty() {
            return Err(DynamicDnsError::NoAddress {
                name: name.to_owned(),
            });
        }
        debug!(%name, addresses = ?addrs, ?ttl, "resolved a DYNAMIC_DNS name");
        self.lock().insert(name, addrs.clone(), ttl, Instant::now());
        Ok(addrs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NameCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Our VIP range, 240.240.0.0/16 (see `dnsproxy::vip`).
fn is_vip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..2] == [240, 240],
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .is_some_and(|v4: Ipv4Addr| v4.octets()[..2] == [240, 240]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn answers_live_for_their_ttl_and_the_cache_stays_bounded() {
        let now = Instant::now();
        let mut cache = NameCache::new(2);
        cache.insert(
            "a.test",
            vec![ip("127.0.0.1")],
            Duration::from_secs(30),
            now,
        );
        assert_eq!(cache.get("a.test", now), Some(vec![ip("127.0.0.1")]));
        assert_eq!(
            cache
                .get("a.test", now + Duration::from_secs(29))
                .map(|a| a.len()),
            Some(1)
        );
        assert_eq!(
            cache.get("a.test", now + Duration::from_secs(30)),
            None,
            "expired"
        );
        // A TTL of 0 still caches for a moment; a huge one is capped.
        cache.insert("b.test", vec![ip("127.0.0.2")], Duration::ZERO, now);
        assert!(cache.get("b.test", now).is_some());
        assert!(cache.get("b.test", now + MIN_TTL).is_none());
        // Full: the entry expiring soonest (b) makes room.
        cache.insert(
            "c.test",
            vec![ip("127.0.0.3")],
            Duration::from_secs(3600),
            now,
        );
        assert_eq!(cache.len(), 2);
        assert!(cache.get("b.test", now).is_none());
        assert!(cache.get("a.test", now).is_some());
        assert!(
            cache.get("c.test", now + MAX_REFRESH).is_none(),
            "capped at MAX_REFRESH"
        );
        // Expired entries go before live ones.
        let later = now + Duration::from_secs(60);
        cache.insert(
            "d.test",
            vec![ip("127.0.0.4")],
            Duration::from_secs(30),
            later,
        );
        assert_eq!(cache.len(), 2);
        assert!(cache.get("c.test", later).is_some());
        assert!(cache.get("d.test", later).is_some());
        // Many names never grow it past its bound.
        let mut big = NameCache::new(MAX_NAMES);
        for i in 0..(MAX_NAMES + 100) {
            big.insert(&format!("n{i}.test"), vec![], Duration::from_secs(30), now);
        }
        assert_eq!(big.len(), MAX_NAMES);
    }

    #[test]
    fn vips_are_never_a_destination() {
        assert!(is_vip(ip("240.240.3.4")));
        assert!(is_vip(ip("::ffff:240.240.3.4")));
        assert!(!is_vip(ip("240.241.0.1")));
        assert!(!is_vip(ip("127.0.0.1")));
    }

    #[tokio::test]
    async fn an_unreadable_resolver_configuration_is_named_and_tried_again() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("resolv.conf");
        let resolver = DynamicResolver::new(path.clone());
        let error = resolver.resolve("a.wild.test").await.expect_err("no file");
        assert!(matches!(error, DynamicDnsError::Resolver(_)), "{error:?}");
        assert!(
            error.chain().contains(&path.display().to_string()),
            "{}",
            error.chain()
        );
        // Written since: the next request reads it (a lookup against a loopback address that
        // nothing listens on then fails as a lookup, not as configuration).
        std::fs::write(
            &path,
            "nameserver 127.0.63.250\noptions timeout:1 attempts:1\n",
        )
        .expect("writing resolv.conf");
        let error = resolver
            .resolve("a.wild.test")
            .await
            .expect_err("nothing answers");
        assert!(!matches!(error, DynamicDnsError::Resolver(_)), "{error:?}");
    }
}
