//! Resolving ServiceEntry hosts (`resolution: DNS`, and hosts without `addresses`), refreshed
//! when the answer's TTL runs out. A failed refresh keeps the last good answer.
use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use hickory_resolver::TokioResolver;
use thiserror::Error;
use tracing::{debug, warn};

use crate::model::DnsAnswers;

/// Bounds on how soon and how late an answer is asked again, whatever its TTL says.
const MIN_REFRESH: Duration = Duration::from_secs(5);
const MAX_REFRESH: Duration = Duration::from_secs(300);
/// After a failure, ask again this soon.
const RETRY: Duration = Duration::from_secs(5);
/// One lookup may take this long.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("reading the system resolver configuration (/etc/resolv.conf)")]
    SystemConfig(#[source] hickory_resolver::net::NetError),
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
    pub fn from_system() -> Result<Self, DnsError> {
        let resolver = TokioResolver::builder_tokio()
            .and_then(|b| b.build())
            .map_err(DnsError::SystemConfig)?;
        Ok(Self { resolver })
    }

    /// The addresses of `host` and how long they may be used.
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
            .saturating_duration_since(Instant::now())
            .clamp(MIN_REFRESH, MAX_REFRESH);
        Ok((ips, ttl))
    }

    /// Resolves every host, keeping `previous` answers for hosts that fail now. Returns the
    /// answers and when to ask again.
    pub async fn refresh(
        &self,
        hosts: &BTreeSet<String>,
        previous: &DnsAnswers,
    ) -> (DnsAnswers, Duration) {
        let mut lookups = tokio::task::JoinSet::new();
        for host in hosts {
            let (dns, host) = (self.clone(), host.clone());
            lookups.spawn(async move {
                let result = dns.resolve(&host).await;
                (host, result)
            });
        }
        let results = lookups.join_all().await;
        let mut answers = DnsAnswers::new();
        let mut next = MAX_REFRESH;
        for (host, result) in results {
            match result {
                Ok((ips, ttl)) => {
                    debug!(%host, addresses = ?ips, ?ttl, "resolved");
                    next = next.min(ttl);
                    answers.insert(host, ips);
                }
                Err(error) => {
                    let kept = previous.get(&host).cloned().unwrap_or_default();
                    warn!(%error, kept = kept.len(), "DNS lookup failed; keeping the last answer");
                    next = next.min(RETRY);
                    if !kept.is_empty() {
                        answers.insert(host, kept);
                    }
                }
            }
        }
        (answers, next)
    }
}
