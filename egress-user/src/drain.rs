//! Graceful drain: what `egress run` does between "stop taking new connections" (SIGTERM, or a
//! successor that took the listener over) and exit.
//!
//! Phases, in order (a [`tokio::sync::watch`] carries the current one to every connection):
//! - [`DrainPhase::Serving`]: normal operation.
//! - [`DrainPhase::Notice`]: no new connections; every HTTP response now says
//!   `connection: close`, so a keep-alive client that sends another request learns to reconnect
//!   (to the successor) from the response itself instead of racing a close.
//! - [`DrainPhase::Close`]: after [`DRAIN_NOTICE`]: idle HTTP connections are closed, busy ones
//!   after their current response (hyper's graceful shutdown); spliced connections run on.
//! - [`DrainPhase::Cut`]: the drain timeout: whatever is left is cut off (logged) and the
//!   process exits.
use std::{io, net::SocketAddr, time::Duration};

use thiserror::Error;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// `--drain-timeout`'s default. Kubernetes gives a terminating pod 30 s
/// (`terminationGracePeriodSeconds`) before SIGKILL: a drain that ends well within it exits on
/// its own, with its access log complete, instead of being killed mid-request.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// How long responses say `connection: close` before idle keep-alive connections are closed.
/// A client that is actively sending learns it from a response within this time; one idle
/// longer is closed while idle (a client must expect that of any keep-alive connection).
pub const DRAIN_NOTICE: Duration = Duration::from_secs(1);

/// Where a drain is. Ordered: each phase implies the earlier ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DrainPhase {
    Serving,
    Notice,
    Close,
    Cut,
}

impl DrainPhase {
    /// Responses carry `connection: close` from here on.
    pub fn closes_after_response(self) -> bool {
        self >= DrainPhase::Notice
    }
}

/// When the phases of a drain of `timeout` begin, counted from its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainPlan {
    /// Start of [`DrainPhase::Close`].
    pub close_at: Duration,
    /// Start of [`DrainPhase::Cut`].
    pub cut_at: Duration,
}

impl DrainPlan {
    pub fn new(timeout: Duration) -> Self {
        Self {
            // A short timeout leaves the notice half of it, so that a busy connection can still
            // finish after being told to close.
            close_at: DRAIN_NOTICE.min(timeout / 2),
            cut_at: timeout,
        }
    }
}

/// The sending side: the one place that moves the phase forward.
#[derive(Clone)]
pub struct Drain {
    phase: watch::Sender<DrainPhase>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(DrainPhase::Serving),
        }
    }
}

impl Drain {
    /// Moves to `phase` unless the drain is already there or further.
    pub fn advance(&self, phase: DrainPhase) {
        self.phase.send_if_modified(|current| {
            let later = phase > *current;
            if later {
                *current = phase;
            }
            later
        });
    }

    pub fn phase(&self) -> DrainPhase {
        *self.phase.borrow()
    }

    pub fn signal(&self) -> DrainSignal {
        DrainSignal {
            phase: self.phase.subscribe(),
        }
    }
}

/// The receiving side, one per connection.
#[derive(Clone)]
pub struct DrainSignal {
    phase: watch::Receiver<DrainPhase>,
}

impl DrainSignal {
    pub fn phase(&self) -> DrainPhase {
        *self.phase.borrow()
    }

    /// Resolves once the drain has reached `phase` (never, if the sender is gone first).
    pub async fn reached(&self, phase: DrainPhase) {
        let mut rx = self.phase.clone();
        if rx.wait_for(|current| *current >= phase).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Whether a listener is accepted on. `Paused` keeps it open (connects queue in its backlog)
/// while a successor that holds the same socket starts up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Open,
    Paused,
    Closed,
}

/// The next connection on `listener` while `gate` is open; waits while it is paused; `None`
/// once it is closed. A gate whose sender is gone stays as it was last set.
pub async fn accept(
    listener: &TcpListener,
    gate: &mut watch::Receiver<Gate>,
) -> Option<io::Result<(TcpStream, SocketAddr)>> {
    loop {
        let state = *gate.borrow_and_update();
        match state {
            Gate::Closed => return None,
            Gate::Paused => gate.changed().await.ok()?,
            Gate::Open => tokio::select! {
                biased;
                Ok(()) = gate.changed() => {}
                accepted = listener.accept() => return Some(accepted),
            },
        }
    }
}

/// A gate that stays open (for a listener nothing drains).
pub fn always_open() -> watch::Receiver<Gate> {
    watch::channel(Gate::Open).1
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("{0:?}: expected <number><unit> pieces with units ms, s, m, h (e.g. 30s, 1m30s)")]
    Malformed(String),
    #[error("{0:?}: too long")]
    Overflow(String),
}

/// Parses `30s`, `500ms`, `2m`, `1m30s`, `1h`. A bare number is refused: seconds or
/// milliseconds should never be guessed.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed(text.to_owned());
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(malformed)?;
        if digits == 0 {
            return Err(malformed());
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::Overflow(text.to_owned()))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let piece = match &rest[..unit_len] {
            "ms" => Some(Duration::from_millis(number)),
            "s" => Some(Duration::from_secs(number)),
            "m" => number.checked_mul(60).map(Duration::from_secs),
            "h" => number.checked_mul(3600).map(Duration::from_secs),
            _ => return Err(malformed()),
        };
        rest = &rest[unit_len..];
        total = piece
            .and_then(|piece| total.checked_add(piece))
            .ok_or_else(|| DurationError::Overflow(text.to_owned()))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        for (text, want) in [
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("0s", Duration::ZERO),
            (" 5s ", Duration::from_secs(5)),
            ("1s500ms", Duration::from_millis(1500)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn durations_without_a_known_unit_are_refused() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        for text in ["30", "s", "5 s", "1.5s", "-1s", "5sec", "10d", "m5", "1s2"] {
            assert!(
                matches!(parse_duration(text), Err(DurationError::Malformed(_))),
                "{text}: {:?}",
                parse_duration(text)
            );
        }
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("18446744073709551615h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn the_plan_gives_a_notice_then_closes_then_cuts() {
        assert_eq!(
            DrainPlan::new(Duration::from_secs(20)),
            DrainPlan {
                close_at: DRAIN_NOTICE,
                cut_at: Duration::from_secs(20)
            }
        );
        // A short drain keeps half of it for busy connections to finish after the notice.
        assert_eq!(
            DrainPlan::new(Duration::from_secs(1)),
            DrainPlan {
                close_at: Duration::from_millis(500),
                cut_at: Duration::from_secs(1)
            }
        );
        assert_eq!(DrainPlan::new(Duration::ZERO).close_at, Duration::ZERO);
    }

    #[test]
    fn phases_only_move_forward() {
        let drain = Drain::default();
        let signal = drain.signal();
        assert_eq!(signal.phase(), DrainPhase::Serving);
        assert!(!signal.phase().closes_after_response());
        drain.advance(DrainPhase::Close);
        drain.advance(DrainPhase::Notice);
        assert_eq!(signal.phase(), DrainPhase::Close);
        assert!(signal.phase().closes_after_response());
        drain.advance(DrainPhase::Cut);
        assert_eq!(drain.phase(), DrainPhase::Cut);
    }

    #[tokio::test]
    async fn a_signal_resolves_once_its_phase_is_reached() {
        let drain = Drain::default();
        let signal = drain.signal();
        let waiting = tokio::spawn(async move { signal.reached(DrainPhase::Close).await });
        drain.advance(DrainPhase::Notice);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drain.advance(DrainPhase::Cut);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("resolved")
            .expect("joined");
    }
}
