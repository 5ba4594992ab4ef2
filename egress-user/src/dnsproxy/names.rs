//! What the DNS proxy answers for itself: ServiceEntry hosts → their VIPs or `addresses`.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

/// ServiceEntry host names and the IPv4 addresses the DNS proxy answers for them. Names are
/// lower case without the trailing dot. A wildcard host `*.example.com` is kept by its suffix
/// (`example.com`) and matches any name below it, one label or more (not the suffix itself),
/// as Istio's host matching does. A partial wildcard (`*-api.example.com`, DYNAMIC_DNS only)
/// matches any name that ends with what follows the `*` and has something before it (Envoy's
/// suffix wildcard domains).
///
/// Precedence: an exact host beats every wildcard; among wildcards the longest suffix wins
/// (the most specific host, as Istio orders hosts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsNames {
    exact: HashMap<String, Vec<Ipv4Addr>>,
    wildcard: HashMap<String, Vec<Ipv4Addr>>,
    /// Partial wildcards: (the text after `*`, addresses), longest first.
    partial: Vec<(String, Vec<Ipv4Addr>)>,
}

/// Which configured host a name matched, and its addresses (for `egress explain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameMatch {
    /// The host as configured (`httpbin.org`, `*.wild.test`).
    pub host: String,
    pub wildcard: bool,
    pub addrs: Vec<Ipv4Addr>,
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
        let list = match (host.strip_prefix("*."), host.strip_prefix('*')) {
            (Some(suffix), _) => self.wildcard.entry(suffix.to_owned()).or_default(),
            (None, Some(rest)) => {
                let at = match self.partial.iter().position(|(s, _)| *s == rest) {
                    Some(at) => at,
                    None => {
                        // Longest first, so the first match is the most specific.
                        let at = self
                            .partial
                            .iter()
                            .position(|(s, _)| s.len() < rest.len())
                            .unwrap_or(self.partial.len());
                        self.partial.insert(at, (rest.to_owned(), Vec::new()));
                        at
                    }
                };
                &mut self.partial[at].1
            }
            (None, None) => self.exact.entry(host).or_default(),
        };
        for addr in addrs {
            if let IpAddr::V4(v4) = addr
                && !list.contains(&v4)
            {
                list.push(v4);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.partial.is_empty()
    }

    /// The answer for a query name (with or without the trailing dot, any case). Only the
    /// name itself counts: a search-list expansion (`httpbin.org.default.svc.cluster.local`)
    /// is another name and is forwarded.
    pub fn answer(&self, name: &str) -> Answer {
        match self.lookup(name) {
            Some(found) => Answer::Host(found.addrs),
            None => Answer::Forward,
        }
    }

    /// The configured host `name` matches, by the precedence above.
    pub fn lookup(&self, name: &str) -> Option<NameMatch> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(addrs) = self.exact.get(&name) {
            return Some(NameMatch {
                host: name,
                wildcard: false,
                addrs: addrs.clone(),
            });
        }
        // The longest `*.` suffix below the name: walk up from the name's parent.
        let mut best: Option<(usize, String, &Vec<Ipv4Addr>)> = None;
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(addrs) = self.wildcard.get(parent) {
                // `*.parent` matches with the suffix `.parent`.
                best = Some((parent.len() + 1, format!("*.{parent}"), addrs));
                break;
            }
            rest = parent;
        }
        // A partial wildcard is more specific when its suffix is longer.
        if let Some((suffix, addrs)) = self
            .partial
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            && best.as_ref().is_none_or(|(len, _, _)| suffix.len() > *len)
        {
            best = Some((suffix.len(), format!("*{suffix}"), addrs));
        }
        best.map(|(_, host, addrs)| NameMatch {
            host,
            wildcard: true,
            addrs: addrs.clone(),
        })
    }

    /// Every (host as configured, addresses), for `egress explain`.
    pub fn hosts(&self) -> impl Iterator<Item = (String, &Vec<Ipv4Addr>)> {
        self.exact
            .iter()
            .map(|(h, a)| (h.clone(), a))
            .chain(self.wildcard.iter().map(|(h, a)| (format!("*.{h}"), a)))
            .chain(self.partial.iter().map(|(h, a)| (format!("*{h}"), a)))
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

    #[test]
    fn exact_beats_wildcard_and_the_longest_wildcard_wins() {
        let mut n = DnsNames::default();
        let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
        n.add("*.wild.test", [ip("240.240.0.1")]);
        n.add("*.deep.wild.test", [ip("240.240.0.2")]);
        n.add("exact.deep.wild.test", [ip("240.240.0.3")]);
        n.add("*-api.wild.test", [ip("240.240.0.4")]);
        let host = |name: &str| n.lookup(name).map(|m| (m.host, m.wildcard));
        let wild = |h: &str| Some((h.to_owned(), true));
        assert_eq!(host("a.wild.test"), wild("*.wild.test"));
        assert_eq!(host("x.y.wild.test"), wild("*.wild.test"));
        assert_eq!(host("a.deep.wild.test"), wild("*.deep.wild.test"));
        assert_eq!(host("x.y.deep.wild.test"), wild("*.deep.wild.test"));
        assert_eq!(
            host("EXACT.deep.wild.test."),
            Some(("exact.deep.wild.test".to_owned(), false))
        );
        // The partial wildcard's suffix (`-api.wild.test`) is longer than `.wild.test`.
        assert_eq!(host("pay-api.wild.test"), wild("*-api.wild.test"));
        assert_eq!(
            host("-api.wild.test"),
            wild("*.wild.test"),
            "needs a prefix"
        );
        assert_eq!(host("deep.wild.test"), wild("*.wild.test"));
        assert_eq!(host("wild.test"), None);
        // Search-list expansions and look-alikes are not hijacked.
        assert_eq!(host("a.wild.test.default.svc.cluster.local"), None);
        assert_eq!(host("a.notwild.test"), None);
        assert_eq!(host("awild.test"), None);
    }
}
