//! Request framing, checked before hyper sees a byte (design §8, invariant 3: ambiguous framing
//! is rejected, not forwarded).
//!
//! hyper resolves some ambiguous framing instead of refusing it — with both `Content-Length` and
//! `Transfer-Encoding: chunked` chunked wins and the length is dropped; equal duplicate lengths
//! are merged; `gzip, chunked` is read as chunked and the gzip coding silently lost; a bare LF
//! ends a line — and what it does refuse it answers itself, before any of our code runs and
//! without `via`. A proxy that forwards what its parser guessed is how requests get smuggled, so
//! every byte from the client passes through [`Framed`] first.
//!
//! What we chose, and why: a thin IO wrapper in front of hyper rather than an HTTP/1 server of
//! our own. It scans each request head once (one linear pass: line ends, characters, and the
//! four headers that decide framing: `Host`, `Content-Length`, `Transfer-Encoding`,
//! `Connection`), then hands the same bytes to hyper, which parses them again — a second pass of
//! httparse over a few hundred bytes, no second header map. To find the next head on a
//! keep-alive connection it follows each body's framing: `Content-Length` bodies are counted,
//! chunked bodies have their size lines checked and their data skipped, never copied out.
//!
//! A violation found before any byte of its request went to hyper — which covers every bad head
//! and a bad chunk that arrived with it — means hyper never sees the request: nothing reaches an
//! upstream, and the waypoint answers (status, `via`, `connection: close`), logs, and closes.
//! Requests before it on the connection are answered first ([`FramingSignal`] asks hyper to shut
//! down gracefully). A bad chunk that arrives later, once the head has gone upstream, fails the
//! body with an IO error: the upstream request is aborted before its last chunk, so no upstream
//! receives a complete request built from bad framing.
//!
//! Every rule is at least as strict as hyper's own, so hyper and this scanner always agree on
//! where a message ends.
use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    task::{Context, Poll, Waker, ready},
};

mod chunked;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;

use chunked::{ChunkAt, Chunked};
use http::StatusCode;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
};

use crate::policy::is_miscased_method;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;
/// Header fields in one request head; more is 431 (Envoy's and hyper's default, 100).
pub(super) const MAX_HEADERS: usize = 100;
/// Chunk-extension bytes in one body (hyper allows 16 KiB; extensions carry nothing we use).
const MAX_CHUNK_EXTENSION_BYTES: usize = 4 * 1024;
/// Trailer-section bytes in one body.
const MAX_TRAILER_BYTES: usize = 8 * 1024;
/// Hex digits of one chunk size (a `u64`); leading zeros past this are refused too.
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

/// Why a request was refused: the status it is answered with and Envoy's
/// `%RESPONSE_CODE_DETAILS%` for it (our reason in braces where Envoy only says `codec_error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Violation {
    pub(super) status: StatusCode,
    pub(super) details: &'static str,
}

impl Violation {
    const fn bad_request(details: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            details,
        }
    }

    pub(super) const HEADERS_TOO_LARGE: Self = Self {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        details: "http1.headers_too_large",
    };
    const TOO_MANY_HEADERS: Self = Self {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        details: "http1.too_many_headers",
    };
    /// Envoy's answer when `allow_chunked_length` is off (its default).
    const CONTENT_LENGTH_AND_CHUNKED: Self =
        Self::bad_request("http1.content_length_and_chunked_not_allowed");
    /// Anything but one `Transfer-Encoding: chunked`: Envoy answers 501 (RFC 9112 §6.1).
    const INVALID_TRANSFER_ENCODING: Self = Self {
        status: StatusCode::NOT_IMPLEMENTED,
        details: "http1.invalid_transfer_encoding",
    };
    /// HTTP/1.0 has no chunked coding: its framing is faulty (RFC 9112 §6.1).
    const TRANSFER_ENCODING_IN_HTTP10: Self =
        Self::bad_request("http1.invalid_transfer_encoding{http/1.0}");
    /// NUL, bare CR, other control characters and DEL in the request line or a field.
    const INVALID_CHARACTERS: Self = Self::bad_request("http1.invalid_characters");
    const INVALID_URL: Self = Self::bad_request("http1.invalid_url");
    const DUPLICATE_HOST: Self = Self::bad_request("duplicate_host_header");
    const BARE_LF: Self = Self::bad_request("http1.codec_error{bare_lf}");
    const OBS_FOLD: Self = Self::bad_request("http1.codec_error{obs_fold}");
    const INVALID_REQUEST_LINE: Self = Self::bad_request("http1.codec_error{invalid_request_line}");
    /// `get`, `Post`: a registered method in another case (see `policy::is_miscased_method`).
    const MISCASED_METHOD: Self = Self::bad_request("http1.codec_error{invalid_method}");
    const INVALID_HEADER_NAME: Self = Self::bad_request("http1.codec_error{invalid_header_name}");
    const INVALID_CONTENT_LENGTH: Self =
        Self::bad_request("http1.codec_error{invalid_content_length}");
    const DUPLICATE_CONTENT_LENGTH: Self =
        Self::bad_request("http1.codec_error{duplicate_content_length}");
    const INVALID_CHUNK_SIZE: Self = Self::bad_request("http1.codec_error{invalid_chunk_size}");
    const INVALID_CHUNK_EXTENSION: Self =
        Self::bad_request("http1.codec_error{invalid_chunk_extension}");
    const CHUNK_EXTENSIONS_TOO_LARGE: Self =
        Self::bad_request("http1.codec_error{chunk_extensions_too_large}");
    const INVALID_CHUNK_END: Self = Self::bad_request("http1.codec_error{invalid_chunk_end}");
    const INVALID_TRAILER: Self = Self::bad_request("http1.codec_error{invalid_trailer}");
    const TRAILERS_TOO_LARGE: Self = Self {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        details: "http1.headers_too_large{trailers}",
    };
}

/// What the connection's other half (the HTTP server and its requests) learns from [`Framed`].
#[derive(Debug, Default)]
pub(super) struct FramingSignal {
    violation: OnceLock<Violation>,
    /// Notified once a refused request's predecessors have all been handed to hyper: time for
    /// hyper to finish what it has and stop.
    refused: Notify,
    /// The answer to an upgrade request: `Some(true)` once it is tunnelled (after the
    /// upstream's 101), `Some(false)` when it was answered otherwise; and the gate waiting for
    /// it.
    upgrade: Mutex<(Option<bool>, Option<Waker>)>,
}

impl FramingSignal {
    /// The server's answer to the held upgrade request: `tunnel` once the upstream said 101
    /// (what follows is the upgraded protocol, passed unchecked), else the connection ends
    /// after the response and whatever the client sent after the request is discarded.
    pub(super) fn decide_upgrade(&self, tunnel: bool) {
        let mut state = self.upgrade.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = Some(tunnel);
        if let Some(waker) = state.1.take() {
            waker.wake();
        }
    }

    fn poll_upgrade(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut state = self.upgrade.lock().unwrap_or_else(PoisonError::into_inner);
        match state.0 {
            Some(tunnel) => Poll::Ready(tunnel),
            None => {
                state.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// The violation that ended this connection, if one did.
    pub(super) fn violation(&self) -> Option<Violation> {
        self.violation.get().copied()
    }

    pub(super) async fn refused(&self) {
        self.refused.notified().await;
    }
}

/// A refused request, as the connection's server must answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Rejection {
    pub(super) violation: Violation,
    /// Its head had already gone to hyper (a bad chunk that arrived later): hyper and the
    /// request's own handler saw the request fail, and may have answered it.
    pub(super) head_sent: bool,
}

/// The client socket as hyper sees it: only requests whose framing was checked get through.
pub(super) struct Framed<S> {
    io: S,
    buf: Vec<u8>,
    /// `buf[pos..checked]`: checked, not yet handed to hyper.
    pos: usize,
    checked: usize,
    /// `buf[checked..end]`: read, not yet checked.
    end: usize,
    /// Where the message being checked starts in `buf`, while none of it has gone to hyper.
    msg_start: Option<usize>,
    state: State,
    /// The message being checked asks to upgrade: nothing after it goes to hyper until the
    /// server has answered it.
    hold_after: bool,
    max_head: usize,
    eof: bool,
    rejection: Option<Rejection>,
    signal: Arc<FramingSignal>,
    /// Writes hyper made; and how many it had made when the current message's head went to it.
    writes: u64,
    writes_at_head: u64,
}

#[derive(Debug)]
enum State {
    Head(HeadScan),
    /// A `Content-Length` body: bytes still to come.
    Length {
        left: u64,
        close: bool,
    },
    Chunked(Chunked),
    /// After a request that closes the connection: what follows is never a request.
    Drain,
    /// After a request that asks to upgrade (`Upgrade` with `Connection: upgrade`): bytes the
    /// client sends before the answer are neither checked nor handed to hyper — if the
    /// upstream does not switch protocols they are discarded, so "early data" can never reach
    /// an upstream as a request of its own (the CVE-2025-64763 class).
    Hold,
    /// The upgrade was taken: the rest of the connection is the upgraded protocol.
    Tunnel,
    Rejected,
}

/// What the scan of one request head has found so far.
#[derive(Debug, Default)]
struct HeadScan {
    /// Offset (from the message start) of the next byte to scan, and of the line it is in.
    at: usize,
    line_start: usize,
    seen_request_line: bool,
    http10: bool,
    fields: usize,
    hosts: usize,
    content_length: Option<u64>,
    transfer_encodings: usize,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    /// An `Upgrade` field, and an `upgrade` token in `Connection`.
    upgrade: bool,
    connection_upgrade: bool,
}

/// How the message whose head was just scanned is framed.
struct Framing {
    body: Body,
    /// The connection ends after this message (`Connection: close`, or HTTP/1.0 without
    /// `keep-alive`).
    close: bool,
    /// It asks to switch protocols (HTTP/1.1 `Upgrade` with `Connection: upgrade`; the same
    /// test as `phases::upgrade_request`).
    upgrade: bool,
}

enum Body {
    None,
    Length(u64),
    Chunked,
}

impl<S> Framed<S> {
    pub(super) fn new(io: S, max_head: usize) -> Self {
        Self {
            io,
            buf: vec![0; READ_CHUNK],
            pos: 0,
            checked: 0,
            end: 0,
            msg_start: Some(0),
            state: State::Head(HeadScan::default()),
            hold_after: false,
            max_head,
            eof: false,
            rejection: None,
            signal: Arc::default(),
            writes: 0,
            writes_at_head: 0,
        }
    }

    /// The client socket, for the waypoint's own last words once hyper has stopped.
    pub(super) fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    pub(super) fn signal(&self) -> Arc<FramingSignal> {
        self.signal.clone()
    }

    /// The request this connection refused, if any.
    pub(super) fn rejection(&self) -> Option<Rejection> {
        self.rejection
    }

    /// Part of a request head has arrived and its end has not (what a header-read timeout cut).
    pub(super) fn partial_head(&self) -> bool {
        matches!(self.state, State::Head(_))
            && self.msg_start.is_some_and(|start| {
                self.buf[start..self.end]
                    .iter()
                    .any(|&b| b != b'\r' && b != b'\n')
            })
    }

    /// hyper wrote nothing since the refused request's head went to it: the client has no
    /// answer to that request yet.
    pub(super) fn unanswered_since_head(&self) -> bool {
        self.writes == self.writes_at_head
    }

    /// Checks what has been read and not yet checked. `Ok(true)` when something moved.
    fn check(&mut self) -> Result<bool, Violation> {
        match &mut self.state {
            State::Head(_) => self.check_head(),
            State::Length { left, close } => {
                let n = (*left).min((self.end - self.checked) as u64);
                *left -= n;
                self.checked += n as usize;
                if *left == 0 {
                    let close = *close;
                    self.next_message(close);
                }
                Ok(n > 0)
            }
            State::Chunked(_) => self.check_chunked(),
            State::Drain => {
                self.end = self.checked;
                Ok(false)
            }
            State::Tunnel => {
                let moved = self.end > self.checked;
                self.checked = self.end;
                Ok(moved)
            }
            State::Hold | State::Rejected => Ok(false),
        }
    }

    fn check_head(&mut self) -> Result<bool, Violation> {
        let (State::Head(scan), Some(start)) = (&mut self.state, self.msg_start) else {
            return Ok(false);
        };
        let bytes = &self.buf[start..self.end];
        let mut framing = None;
        while let Some(nl) = bytes[scan.at..].iter().position(|&b| b == b'\n') {
            let line_end = scan.at + nl;
            // The size first: a head too large is 431 whatever its lines hold, as when its end
            // has not arrived yet — the verdict must not depend on how the bytes were split.
            if line_end + 1 > self.max_head {
                return Err(Violation::HEADERS_TOO_LARGE);
            }
            let Some(content) = bytes[scan.line_start..line_end].strip_suffix(b"\r") else {
                return Err(Violation::BARE_LF);
            };
            scan.at = line_end + 1;
            scan.line_start = scan.at;
            if scan.line(content)? {
                framing = Some((scan.framing()?, scan.at));
                break;
            }
        }
        let Some((framing, head_len)) = framing else {
            scan.at = bytes.len();
            if bytes.len() > self.max_head {
                return Err(Violation::HEADERS_TOO_LARGE);
            }
            return Ok(false);
        };
        self.checked = start + head_len;
        self.hold_after = framing.upgrade;
        // The head stays unsent while the body that came with it is checked: a bad first
        // chunk refuses the whole request.
        match framing.body {
            Body::None => self.next_message(framing.close),
            Body::Length(left) => {
                self.state = State::Length {
                    left,
                    close: framing.close,
                }
            }
            Body::Chunked => self.state = State::Chunked(Chunked::new(framing.close)),
        }
        Ok(true)
    }

    fn check_chunked(&mut self) -> Result<bool, Violation> {
        let State::Chunked(chunked) = &mut self.state else {
            return Ok(false);
        };
        let start = self.checked;
        let mut i = start;
        while i < self.end {
            if let ChunkAt::Data { left } = chunked.at {
                let n = left.min((self.end - i) as u64);
                i += n as usize;
                chunked.at = if n == left {
                    ChunkAt::DataCr
                } else {
                    ChunkAt::Data { left: left - n }
                };
                continue;
            }
            let done = chunked.step(self.buf[i])?;
            i += 1;
            if done {
                let close = chunked.close;
                self.checked = i;
                self.next_message(close);
                return Ok(true);
            }
        }
        self.checked = i;
        Ok(i > start)
    }

    /// The message being checked is complete; the next one starts at `checked`.
    fn next_message(&mut self, close: bool) {
        self.msg_start = Some(self.checked);
        self.state = if std::mem::take(&mut self.hold_after) {
            State::Hold
        } else if close {
            State::Drain
        } else {
            State::Head(HeadScan::default())
        };
    }

    fn reject(&mut self, violation: Violation) {
        let head_sent = self.msg_start.is_none();
        if let Some(start) = self.msg_start {
            // Nothing of this request has gone to hyper: none of it will.
            self.checked = start;
        }
        self.state = State::Rejected;
        self.rejection = Some(Rejection {
            violation,
            head_sent,
        });
        let _ = self.signal.violation.set(violation);
    }

    /// Room at `buf[end..]` for the next read: moves unconsumed bytes to the front, and grows
    /// the buffer only as far as a head of the largest allowed size needs.
    fn make_room(&mut self) {
        if self.end < self.buf.len() {
            return;
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.checked -= self.pos;
            self.end -= self.pos;
            self.msg_start = self.msg_start.map(|start| start - self.pos);
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            let limit = self.max_head + READ_CHUNK;
            let grown = (self.buf.len() * 2).min(limit).max(self.buf.len() + 1);
            self.buf.resize(grown, 0);
        }
    }
}

impl HeadScan {
    /// Checks one line (without its CRLF). `Ok(true)` at the empty line that ends the head.
    fn line(&mut self, line: &[u8]) -> Result<bool, Violation> {
        if !self.seen_request_line {
            // RFC 9112 §2.2: empty lines before the request line are ignored (httparse too).
            if !line.is_empty() {
                self.request_line(line)?;
                self.seen_request_line = true;
            }
            return Ok(false);
        }
        if line.is_empty() {
            return Ok(true);
        }
        self.field(line)?;
        Ok(false)
    }

    fn request_line(&mut self, line: &[u8]) -> Result<(), Violation> {
        if line.iter().any(|&b| is_control(b)) {
            return Err(Violation::INVALID_CHARACTERS);
        }
        let mut parts = line.splitn(3, |&b| b == b' ');
        let (Some(method), Some(target), Some(version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Violation::INVALID_REQUEST_LINE);
        };
        if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
            return Err(Violation::INVALID_REQUEST_LINE);
        }
        if is_miscased_method(method) {
            return Err(Violation::MISCASED_METHOD);
        }
        // hyper refuses what `http::Uri` cannot parse, with an answer of its own: check it here.
        // The usual origin-form target is plain enough to skip the parse (and its copy).
        // Non-ASCII bytes and tabs: `http::Uri` lets them through after a `#`, httparse (and
        // so hyper) refuses them anywhere. A request-target is visible ASCII only.
        if !target.iter().all(|&b| b.is_ascii_graphic()) {
            return Err(Violation::INVALID_URL);
        }
        let plain =
            target.first() == Some(&b'/') && target.iter().all(|&b| is_plain_target_byte(b));
        if !plain && http::Uri::try_from(target).is_err() {
            return Err(Violation::INVALID_URL);
        }
        self.http10 = match version {
            b"HTTP/1.1" => false,
            b"HTTP/1.0" => true,
            _ => return Err(Violation::INVALID_REQUEST_LINE),
        };
        Ok(())
    }

    fn field(&mut self, line: &[u8]) -> Result<(), Violation> {
        if matches!(line[0], b' ' | b'\t') {
            // RFC 9112 §5.2: a server must reject obs-fold or replace it; a proxy that
            // unfolds differently from the next hop is a smuggling vector.
            return Err(Violation::OBS_FOLD);
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(if line.iter().any(|&b| is_control(b)) {
                Violation::INVALID_CHARACTERS
            } else {
                Violation::INVALID_HEADER_NAME
            });
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(if name.iter().any(|&b| is_control(b)) {
                Violation::INVALID_CHARACTERS
            } else {
                Violation::INVALID_HEADER_NAME
            });
        }
        if !value.iter().all(|&b| is_field_byte(b)) {
            return Err(Violation::INVALID_CHARACTERS);
        }
        self.fields += 1;
        if self.fields > MAX_HEADERS {
            return Err(Violation::TOO_MANY_HEADERS);
        }
        let value = trim_ows(value);
        if name.eq_ignore_ascii_case(b"host") {
            self.hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if self.content_length.is_some() {
                // Even equal values: hyper merges them, Envoy refuses; a list or a repeat is
                // what a smuggler sends.
                return Err(Violation::DUPLICATE_CONTENT_LENGTH);
            }
            self.content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encodings += 1;
            self.chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim_ows) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    self.connection_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
        Ok(())
    }

    /// The framing the complete head declares, or why it is ambiguous.
    fn framing(&self) -> Result<Framing, Violation> {
        if self.transfer_encodings > 0 {
            if self.content_length.is_some() {
                return Err(Violation::CONTENT_LENGTH_AND_CHUNKED);
            }
            if self.http10 {
                return Err(Violation::TRANSFER_ENCODING_IN_HTTP10);
            }
            if self.transfer_encodings > 1 || !self.chunked {
                return Err(Violation::INVALID_TRANSFER_ENCODING);
            }
        }
        if self.hosts > 1 {
            return Err(Violation::DUPLICATE_HOST);
        }
        let body = match (self.transfer_encodings, self.content_length) {
            (0, None | Some(0)) => Body::None,
            (0, Some(n)) => Body::Length(n),
            _ => Body::Chunked,
        };
        Ok(Framing {
            body,
            close: self.close || (self.http10 && !self.keep_alive),
            upgrade: !self.http10 && self.upgrade && self.connection_upgrade,
        })
    }
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), no sign, no list, fits a `u64`.
fn parse_content_length(value: &[u8]) -> Result<u64, Violation> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(Violation::INVALID_CONTENT_LENGTH);
    }
    Ok(value
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// Control characters (NUL, CR, LF and the rest below SP, and DEL); HTAB is not one here.
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// A byte allowed in a field value: HTAB, SP, visible ASCII, obs-text (RFC 9110 §5.5).
fn is_field_byte(b: u8) -> bool {
    !is_control(b)
}

/// Unreserved, sub-delims, `:@/?%` (RFC 3986): a target of these alone always parses.
fn is_plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// `tchar` (RFC 9110 §5.6.2): what a method or a field name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl<S: AsyncRead + Unpin> AsyncRead for Framed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Everything read is checked before any of it is handed over, so a bad chunk that
            // came with its head refuses the request before hyper sees the head.
            while this.rejection.is_none() && this.end > this.checked {
                match this.check() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(violation) => this.reject(violation),
                }
            }
            if this.checked > this.pos {
                let n = (this.checked - this.pos).min(out.remaining());
                out.put_slice(&this.buf[this.pos..this.pos + n]);
                this.pos += n;
                if this.msg_start.is_some_and(|start| this.pos > start) {
                    this.msg_start = None;
                    this.writes_at_head = this.writes;
                }
                if this.pos == this.end {
                    (this.pos, this.checked, this.end) = (0, 0, 0);
                    this.msg_start = this.msg_start.map(|_| 0);
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(rejection) = this.rejection {
                if rejection.head_sent {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        rejection.violation.details,
                    )));
                }
                // Everything before the refused request is with hyper now.
                this.signal.refused.notify_one();
                return Poll::Pending;
            }
            if matches!(this.state, State::Hold) {
                // Not even read from the socket: the answer decides what those bytes are.
                let tunnel = ready!(this.signal.poll_upgrade(cx));
                this.state = if tunnel {
                    this.msg_start = None;
                    State::Tunnel
                } else {
                    State::Drain
                };
                continue;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            this.make_room();
            let end = this.end;
            let mut read = ReadBuf::new(&mut this.buf[end..]);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                this.eof = true;
            }
            this.end += n;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Framed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.writes += 1;
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        this.writes += 1;
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rejection.is_some() {
            // The waypoint still has an answer to write; it closes the connection after it.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
