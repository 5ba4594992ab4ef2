//! The server name of a TLS connection, read from its ClientHello without consuming it: the
//! bytes stay in the socket and are spliced to the upstream unchanged. Bounded in bytes and time.
//!
//! Parsed per RFC 8446 §4.1.2 (ClientHello) and RFC 6066 §3 (server_name); a ClientHello
//! fragmented over several handshake records is reassembled.
use std::time::Duration;

use thiserror::Error;
use tokio::{
    net::TcpStream,
    time::{Instant, sleep_until},
};

/// Largest ClientHello read (Envoy's TLS inspector reads at most 64 KiB; real ones are < 2 KiB
/// without post-quantum key shares, a few KiB with them).
pub(in crate::proxy) const MAX_CLIENT_HELLO: usize = 16 * 1024;
/// Time a client has to send its ClientHello.
pub(in crate::proxy) const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

const RECORD_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// Why no server name could be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub(in crate::proxy) enum PeekError {
    #[error("not a TLS ClientHello")]
    NotTls,
    #[error("the ClientHello is larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("the client closed before its ClientHello was complete")]
    Closed,
    #[error("reading the ClientHello: {0}")]
    Io(String),
}

impl PeekError {
    /// `%CONNECTION_TERMINATION_DETAILS%`-style token.
    pub(in crate::proxy) fn details(&self) -> &'static str {
        match self {
            PeekError::NotTls => "tls_inspector_not_tls",
            PeekError::TooLarge => "tls_inspector_client_hello_too_large",
            PeekError::Timeout(_) => "tls_inspector_timeout",
            PeekError::Closed | PeekError::Io(_) => "tls_inspector_read_failed",
        }
    }
}

/// The SNI of the ClientHello waiting in `stream` (`None`: it has no server_name extension).
pub(in crate::proxy) async fn peek_sni(
    stream: &TcpStream,
    limit: Duration,
) -> Result<Option<String>, PeekError> {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; MAX_CLIENT_HELLO];
    let mut seen = 0;
    let mut backoff = Duration::from_millis(1);
    loop {
        let peeked = tokio::select! {
            peeked = stream.peek(&mut buf) => peeked.map_err(|e| PeekError::Io(e.to_string()))?,
            () = sleep_until(deadline) => return Err(PeekError::Timeout(limit)),
        };
        if peeked == 0 {
            return Err(PeekError::Closed);
        }
        match parse_client_hello(&buf[..peeked]) {
            Parsed::Done(sni) => return Ok(sni),
            Parsed::Invalid => return Err(PeekError::NotTls),
            Parsed::Incomplete if peeked == buf.len() => return Err(PeekError::TooLarge),
            Parsed::Incomplete => {}
        }
        // `peek` returns at once while data is waiting, even if it is what we saw last time:
        // wait a little, longer each time nothing new came, before looking again.
        if peeked == seen {
            backoff = (backoff * 2).min(Duration::from_millis(50));
        } else {
            backoff = Duration::from_millis(1);
            seen = peeked;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = sleep_until(deadline) => return Err(PeekError::Timeout(limit)),
        }
    }
}

/// The outcome of parsing what has arrived so far.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::proxy) enum Parsed {
    Incomplete,
    Invalid,
    Done(Option<String>),
}

/// Parses the handshake records at the start of `data` as a ClientHello.
pub(in crate::proxy) fn parse_client_hello(data: &[u8]) -> Parsed {
    if data.first().is_some_and(|&b| b != RECORD_HANDSHAKE) {
        return Parsed::Invalid;
    }
    // Reassemble the handshake bytes of as many records as have arrived.
    let mut handshake = Vec::new();
    let mut rest = data;
    while rest.len() >= 5 && handshake_complete(&handshake) != Some(true) {
        if rest[0] != RECORD_HANDSHAKE || rest[1] != 3 {
            return Parsed::Invalid;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16384 {
            return Parsed::Invalid;
        }
        let available = (rest.len() - 5).min(len);
        handshake.extend_from_slice(&rest[5..5 + available]);
        if available < len {
            break;
        }
        rest = &rest[5 + len..];
    }
    match handshake_complete(&handshake) {
        None | Some(false) => Parsed::Incomplete,
        Some(true) if handshake[0] != HANDSHAKE_CLIENT_HELLO => Parsed::Invalid,
        Some(true) => match server_name(&handshake[4..4 + message_len(&handshake)]) {
            Some(sni) => Parsed::Done(sni),
            None => Parsed::Invalid,
        },
    }
}

fn message_len(handshake: &[u8]) -> usize {
    usize::from(handshake[1]) << 16 | usize::from(handshake[2]) << 8 | usize::from(handshake[3])
}

/// `None` until the handshake header arrived; then whether the whole message has.
fn handshake_complete(handshake: &[u8]) -> Option<bool> {
    (handshake.len() >= 4).then(|| handshake.len() >= 4 + message_len(handshake))
}

/// A cursor over a ClientHello body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a `width`-byte length prefix.
    fn vec(&mut self, width: usize) -> Option<&'a [u8]> {
        let len = match width {
            1 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        self.take(len)
    }
}

/// `Some(None)`: a well-formed ClientHello without server_name; `None`: malformed.
fn server_name(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec(1)?; // legacy_session_id
    r.vec(2)?; // cipher_suites
    r.vec(1)?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(None); // no extensions at all
    }
    let mut extensions = Reader(r.vec(2)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec(2)?;
        if kind != EXTENSION_SERVER_NAME {
            continue;
        }
        let mut list = Reader(Reader(data).vec(2)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec(2)?;
            if name_type == NAME_TYPE_HOST {
                let name = std::str::from_utf8(name).ok()?;
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                return valid.then(|| Some(name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

#[cfg(test)]
#[path = "tests/tls_peek.rs"]
mod tests;
