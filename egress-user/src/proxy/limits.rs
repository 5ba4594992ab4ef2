//! What bounds the waypoint under load (design §8, invariant 7): how many connections it serves
//! at once, what happens to one past that, and the open-file limit those connections need.
//!
//! Past `max_connections` a new connection is accepted and closed at once, as Envoy's listener
//! connection limit does (`downstream_cx_overflow`): the client learns within a round trip, the
//! accept backlog keeps draining, and the waypoint's file descriptors stay flat however many
//! connects arrive. Nothing waits in a queue for a slot.
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tracing::{debug, warn};

use super::WaypointConfig;
use crate::telemetry::{Metrics, metrics::Labels};

/// `egress_waypoint_connections_rejected_total{reason="max_connections"}`: connections closed on
/// accept because `--max-connections` were being served (Envoy's `downstream_cx_overflow`).
pub const CONNECTIONS_REJECTED_TOTAL: &str = crate::telemetry::metrics::CONNECTIONS_REJECTED_TOTAL;

/// File descriptors beyond two per connection: listeners, the admin server, bpffs maps, the
/// access log, the runtime's own.
const FD_RESERVE: u64 = 256;

/// At most one warning per this long about connections closed at the limit, so that a flood
/// does not also become a flood of log lines.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The limits `egress run` takes from its flags.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let d = WaypointConfig::default();
        Self {
            max_connections: d.max_connections,
            header_read_timeout: d.header_read_timeout,
            idle_timeout: d.idle_timeout,
        }
    }
}

impl WaypointConfig {
    /// This config with `limits` in place of its own.
    pub fn with_limits(self, limits: Limits) -> Self {
        Self {
            max_connections: limits.max_connections,
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            ..self
        }
    }
}

/// Counts (and now and then logs) a connection closed on accept because `limit` connections
/// were being served. The caller drops the stream.
pub(super) fn rejected(peer: SocketAddr, limit: usize) {
    static LAST_WARNING: AtomicU64 = AtomicU64::new(0);
    static SINCE_WARNING: AtomicU64 = AtomicU64::new(0);
    Metrics::global().add(
        CONNECTIONS_REJECTED_TOTAL,
        &Labels::new(&[("reason", "max_connections")]),
        1,
    );
    let closed = SINCE_WARNING.fetch_add(1, Ordering::Relaxed) + 1;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now >= last + WARN_EVERY.as_secs()
        && LAST_WARNING
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        SINCE_WARNING.fetch_sub(closed, Ordering::Relaxed);
        warn!(
            %peer,
            limit,
            closed,
            "connection limit reached; closing new connections at once"
        );
    } else {
        debug!(%peer, limit, "connection limit reached; closed the new connection");
    }
}

/// What [`raise_open_files`] found and did.
#[derive(Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft `RLIMIT_NOFILE` now in force.
    pub limit: u64,
    /// What `max_connections` may need: two per connection (client and upstream) plus a reserve.
    pub needed: u64,
}

impl OpenFiles {
    /// The limit is below what `max_connections` may need: past it accept fails with `EMFILE`
    /// and connections wait in the kernel's backlog instead of being served or closed.
    pub fn is_short(&self) -> bool {
        self.limit < self.needed
    }
}

/// Raises the soft open-file limit to the hard one (as Go's runtime does at start): systemd and
/// most shells leave the soft limit at 1024, too few for the default 10 000 connections.
pub fn raise_open_files(max_connections: usize) -> std::io::Result<OpenFiles> {
    let mut rlimit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rlimit` is a valid, writable rlimit for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlimit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if rlimit.rlim_cur < rlimit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: rlimit.rlim_max,
            rlim_max: rlimit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; lowering nothing, raising the soft limit only.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        rlimit = raised;
    }
    Ok(OpenFiles {
        limit: rlimit.rlim_cur,
        needed: fds_needed(max_connections),
    })
}

/// A duration as flags take it: `500ms`, `10s`, `5m`, `1h`, or bare seconds (`10`). Zero is
/// refused: a limit of nothing would close every connection.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 10s, 5m, 1h)"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{text:?}: the unit must be ms, s, m or h")),
    };
    if duration.is_zero() {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(duration)
}

/// Two descriptors per connection and the reserve.
fn fds_needed(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(FD_RESERVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_replace_only_the_limits() {
        let limits = Limits {
            max_connections: 7,
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
        };
        let config = WaypointConfig {
            max_header_bytes: 1234,
            ..WaypointConfig::default()
        }
        .with_limits(limits);
        assert_eq!(config.max_connections, 7);
        assert_eq!(config.header_read_timeout, Duration::from_secs(2));
        assert_eq!(config.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.max_header_bytes, 1234);
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let files = raise_open_files(10).expect("getrlimit/setrlimit");
        let mut rlimit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlimit) },
            0
        );
        assert_eq!(rlimit.rlim_cur, rlimit.rlim_max);
        assert_eq!(files.limit, rlimit.rlim_cur);
        assert_eq!(files.needed, 20 + FD_RESERVE);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "0s", "1.5s", "10x", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ten_thousand_connections_need_more_than_a_default_soft_limit() {
        let files = OpenFiles {
            limit: 1024,
            needed: fds_needed(10_000),
        };
        assert!(files.is_short());
    }
}
