//! The `egress` binary's argument value types and parsers (a module of `main.rs`, not of the
//! library): the on/off and mode enums clap offers as possible values, and the parsers of
//! durations, identities and CIDRs.
use std::time::Duration;

use clap::ValueEnum;
use egress::{config::IpNet, dns};

// The value enums below keep plain comments on their variants: a doc comment would become the
// value's help and change how `--help` lists the possible values.

/// A feature flag spelt `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Switch {
    On,
    Off,
}

impl Switch {
    pub(crate) fn is_on(self) -> bool {
        self == Self::On
    }
}

/// `--service-entries`: which ServiceEntries Kubernetes mode captures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServiceEntries {
    Bound,
    All,
}

/// `--access-log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// `--outbound-policy`: Istio's outboundTrafficPolicy.mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutboundPolicy {
    AllowAny,
    RegistryOnly,
}

/// `--capture`: how connections reach the waypoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Capture {
    Ebpf,
    Iptables,
}

/// `__install --programs`: attach the programs, or only pin maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Programs {
    Attach,
    None,
}

/// `--drain-timeout`: a duration as `egress::drain` reads it.
pub(crate) fn parse_drain_timeout(s: &str) -> Result<Duration, String> {
    egress::drain::parse_duration(s).map_err(|e| e.to_string())
}

/// `NAMESPACE/SERVICE_ACCOUNT`.
pub(crate) fn parse_identity(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
            Ok((ns.to_owned(), sa.to_owned()))
        }
        _ => Err(format!(
            "{s:?} is not NAMESPACE/SERVICE_ACCOUNT (e.g. default/sleep)"
        )),
    }
}

/// A refresh floor: seconds (`5`, `5s`) or milliseconds (`1500ms`), within
/// [`dns::MIN_REFRESH_FLOOR`, `dns::MAX_REFRESH`].
pub(crate) fn parse_min_refresh(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.strip_suffix("ms") {
        Some(ms) => (ms, Duration::from_millis(1)),
        None => (s.strip_suffix('s').unwrap_or(s), Duration::from_secs(1)),
    };
    let n: u32 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 5, 5s, 1500ms)"))?;
    let d = unit * n;
    if !(dns::MIN_REFRESH_FLOOR..=dns::MAX_REFRESH).contains(&d) {
        return Err(format!(
            "{s:?}: the refresh floor must be between {:?} and {:?}",
            dns::MIN_REFRESH_FLOOR,
            dns::MAX_REFRESH
        ));
    }
    Ok(d)
}

/// `a.b.c.d/len` or an address (a single host).
pub(crate) fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let (addr, len) = s.split_once('/').unwrap_or((s, ""));
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|e| format!("{s:?} is not an IP address or CIDR: {e}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = if len.is_empty() {
        max
    } else {
        len.parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0-{max}"))?
    };
    Ok(IpNet { addr, prefix_len })
}
