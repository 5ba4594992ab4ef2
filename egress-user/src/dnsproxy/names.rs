//! What the DNS proxy answers for itself: ServiceEntry hosts → their VIPs or `addresses`.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

/// ServiceEntry host names and the IPv4 addresses the DNS proxy answers for them. Names are
/// lower case without the trailing dot. A wildcard host `*.example.com` is kept by its suffix
/// (`example.com`) and matches any name below it (not the suffix itself), as Istio's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsNames {
    exact: HashMap<String, Vec<Ipv4Addr>>,
    wildcard: HashMap<String, Vec<Ipv4Addr>>,
}

/// The answer for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A ServiceEntry host: answered authoritatively with these addresses (A); AAAA gets no
    /// records.
    Host(Vec<Ipv4Addr>),
    /// Not ours: forwarded to the resolver the client asked.
    Forward,
}

impl DnsNames {
    /// Adds `host`'s addresses (IPv6 ones are dropped: AAAA answers nothing until IPv6
    /// upstreams exist).
    pub fn add(&mut self, host: &str, addrs: impl IntoIterator<Item = IpAddr>) {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let (map, name) = match host.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix.to_owned()),
            None => (&mut self.exact, host),
        };
        let list = map.entry(name).or_default();
        for addr in addrs {
            if let IpAddr::V4(v4) = addr
                && !list.contains(&v4)
            {
                list.push(v4);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// The answer for a query name (with or without the trailing dot, any case). Only the
    /// name itself counts: a search-list expansion (`httpbin.org.default.svc.cluster.local`)
    /// is another name and is forwarded.
    pub fn answer(&self, name: &str) -> Answer {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(addrs) = self.exact.get(&name) {
            return Answer::Host(addrs.clone());
        }
        // The longest wildcard suffix wins (Istio picks the most specific host).
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(addrs) = self.wildcard.get(parent) {
                return Answer::Host(addrs.clone());
            }
            rest = parent;
        }
        Answer::Forward
    }

    /// Every (host as configured, addresses), for `egress explain`.
    pub fn hosts(&self) -> impl Iterator<Item = (String, &Vec<Ipv4Addr>)> {
        self.exact
            .iter()
            .map(|(h, a)| (h.clone(), a))
            .chain(self.wildcard.iter().map(|(h, a)| (format!("*.{h}"), a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> DnsNames {
        let mut n = DnsNames::default();
        n.add("httpbin.org", ["240.240.1.2".parse().unwrap()]);
        n.add("*.wild.test", ["240.240.3.4".parse().unwrap()]);
        n.add("v6.test", ["2001:db8::1".parse().unwrap()]);
        n
    }

    #[test]
    fn hosts_answer_their_addresses_and_nothing_else_is_hijacked() {
        let n = names();
        let vip = |s: &str| Answer::Host(vec![s.parse().unwrap()]);
        assert_eq!(n.answer("httpbin.org."), vip("240.240.1.2"));
        assert_eq!(n.answer("HTTPBIN.org"), vip("240.240.1.2"));
        assert_eq!(
            n.answer("httpbin.org.default.svc.cluster.local."),
            Answer::Forward
        );
        assert_eq!(n.answer("www.httpbin.org"), Answer::Forward);
        assert_eq!(n.answer("a.wild.test"), vip("240.240.3.4"));
        assert_eq!(n.answer("x.y.wild.test"), vip("240.240.3.4"));
        assert_eq!(n.answer("wild.test"), Answer::Forward);
        assert_eq!(n.answer("a.wild.test.search.example"), Answer::Forward);
        assert_eq!(n.answer("v6.test"), Answer::Host(vec![]));
        assert_eq!(n.answer("example.com"), Answer::Forward);
    }
}
