//! The access log: one line per HTTP request or per TCP connection, in Istio's default TEXT
//! format (or Envoy's JSON keys).
//!
//! Lines to a file or to standard output are gathered in a buffer and written together (group
//! commit): when the runtime runs out of work and is about to wait ([`flush_buffered`], called
//! from tokio's `on_thread_park`), when 64 KiB have gathered, or by the first line logged 50 ms
//! after the oldest unwritten one. At saturation that is one `write` per event-loop pass instead
//! of one per request; when the waypoint is idle a line is written microseconds after its
//! response, as before. On SIGTERM the drain ends idle, so nothing is lost; a SIGKILL loses at
//! most what was logged since the runtime last went idle: at most 64 KiB, and never a line older
//! than 50 ms unless no line came after it and the runtime never went idle.
use std::{
    fmt::Write as _,
    fs::{File, OpenOptions},
    io::{self, Write},
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tracing::warn;

/// How lines are rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// Istio's default TEXT format plus one field of ours (see [`AccessLogEntry::write_text`]).
    Text,
    /// One JSON object per line with Istio's default JSON keys plus `downstream_peer_principal`.
    Json,
}

/// What one access-log line says. `None`, empty strings and zero durations where Envoy has no
/// value print as `-` (TEXT) or `null` (JSON).
#[derive(Clone, Debug)]
pub struct AccessLogEntry {
    /// `%START_TIME%`: when the request (or connection) started.
    pub start_time: SystemTime,
    /// `%REQ(:METHOD)%`.
    pub method: Option<String>,
    /// `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`: path and query as received.
    pub path: Option<String>,
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/1.0`; `None` for TCP.
    pub protocol: Option<&'static str>,
    /// `%RESPONSE_CODE%`: 0 when there was no HTTP response (TCP, downstream gone).
    pub response_code: u16,
    /// `%RESPONSE_FLAGS%`: Envoy's short flags (`UF`, `UH`, `UC`, ...), comma separated.
    pub response_flags: Option<String>,
    /// `%RESPONSE_CODE_DETAILS%`: `via_upstream`, `upstream_reset_before_response_started{...}`, ...
    pub response_code_details: Option<String>,
    /// `%CONNECTION_TERMINATION_DETAILS%`.
    pub connection_termination_details: Option<String>,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub upstream_transport_failure_reason: Option<String>,
    /// `%BYTES_RECEIVED%`: body bytes (HTTP) or stream bytes (TCP) from the downstream.
    pub bytes_received: u64,
    /// `%BYTES_SENT%`: body bytes (HTTP) or stream bytes (TCP) to the downstream.
    pub bytes_sent: u64,
    /// `%DURATION%`, printed in milliseconds.
    pub duration: Duration,
    /// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`: time from sending the request upstream to its
    /// response headers, printed in milliseconds. We measure it; we do not send the header.
    pub upstream_service_time: Option<Duration>,
    /// `%REQ(X-FORWARDED-FOR)%`.
    pub x_forwarded_for: Option<String>,
    /// `%REQ(USER-AGENT)%`.
    pub user_agent: Option<String>,
    /// `%REQ(X-REQUEST-ID)%`.
    pub request_id: Option<String>,
    /// `%REQ(:AUTHORITY)%`.
    pub authority: Option<String>,
    /// `%UPSTREAM_HOST%`.
    pub upstream_host: Option<SocketAddr>,
    /// `%UPSTREAM_CLUSTER_RAW%`: `outbound|PORT||HOST`.
    pub upstream_cluster: Option<String>,
    /// `%UPSTREAM_LOCAL_ADDRESS%`.
    pub upstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`: the address the application dialled (from the kernel's
    /// origin), not the waypoint listener.
    pub downstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`.
    pub downstream_remote_address: Option<SocketAddr>,
    /// `%REQUESTED_SERVER_NAME%` (SNI).
    pub requested_server_name: Option<String>,
    /// `%ROUTE_NAME%`.
    pub route_name: Option<String>,
    /// Ours: the caller's identity as a SPIFFE URI (`spiffe://<principal>`), attested by the
    /// kernel's cgroup id; `None` for a cgroup without identity.
    pub downstream_peer_principal: Option<String>,
}

impl Default for AccessLogEntry {
    fn default() -> Self {
        Self {
            start_time: UNIX_EPOCH,
            method: None,
            path: None,
            protocol: None,
            response_code: 0,
            response_flags: None,
            response_code_details: None,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            upstream_service_time: None,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            downstream_local_address: None,
            downstream_remote_address: None,
            requested_server_name: None,
            route_name: None,
            downstream_peer_principal: None,
        }
    }
}

/// `-` for a missing or empty text value, as Envoy prints it.
fn push_text(out: &mut String, value: Option<&str>) {
    match value {
        Some(text) if !text.is_empty() => out.push_str(text),
        _ => out.push('-'),
    }
}

/// A number in decimal, without `core::fmt` (the access log writes a dozen per line).
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits: always UTF-8.
    out.push_str(std::str::from_utf8(&digits[start..]).unwrap_or_default());
}

/// `n` in decimal, zero-padded to `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut len = 1;
    let mut rest = n / 10;
    while rest > 0 {
        len += 1;
        rest /= 10;
    }
    for _ in len..width {
        out.push('0');
    }
    push_decimal(out, n);
}

/// `ip:port`, `[ip]:port` for IPv6 (as `SocketAddr`'s `Display`), or `-`.
fn push_addr(out: &mut String, addr: Option<SocketAddr>) {
    match addr {
        Some(SocketAddr::V4(v4)) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, octet.into());
            }
            out.push(':');
            push_decimal(out, v4.port().into());
        }
        Some(v6) => {
            let _ = write!(out, "{v6}");
        }
        None => out.push('-'),
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

impl AccessLogEntry {
    /// Istio's default TEXT format:
    ///
    /// ```text
    /// [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
    /// %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
    /// "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    /// %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    /// "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW%
    /// %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
    /// %REQUESTED_SERVER_NAME% %ROUTE_NAME%
    /// ```
    ///
    /// (one line), followed by ONE field of ours: the downstream principal as
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, or `-` for a caller without identity. It is last
    /// so that parsers written for Istio's format keep working.
    ///
    /// Written field by field, without `core::fmt`: with `write!` this line was an eighth of the
    /// waypoint's instructions per keep-alive request.
    pub fn write_text(&self, out: &mut String) {
        let millis = |d: Duration| u64::try_from(millis(d)).unwrap_or(u64::MAX);
        out.push('[');
        push_rfc3339_millis(out, self.start_time);
        out.push_str("] \"");
        push_text(out, self.method.as_deref());
        out.push(' ');
        push_text(out, self.path.as_deref());
        out.push(' ');
        push_text(out, self.protocol);
        out.push_str("\" ");
        push_decimal(out, self.response_code.into());
        for value in [
            &self.response_flags,
            &self.response_code_details,
            &self.connection_termination_details,
        ] {
            out.push(' ');
            push_text(out, value.as_deref());
        }
        out.push_str(" \"");
        push_text(out, self.upstream_transport_failure_reason.as_deref());
        out.push_str("\" ");
        push_decimal(out, self.bytes_received);
        out.push(' ');
        push_decimal(out, self.bytes_sent);
        out.push(' ');
        push_decimal(out, millis(self.duration));
        out.push(' ');
        match self.upstream_service_time {
            Some(time) => push_decimal(out, millis(time)),
            None => out.push('-'),
        }
        for value in [
            &self.x_forwarded_for,
            &self.user_agent,
            &self.request_id,
            &self.authority,
        ] {
            out.push_str(" \"");
            push_text(out, value.as_deref());
            out.push('"');
        }
        out.push_str(" \"");
        push_addr(out, self.upstream_host);
        out.push_str("\" ");
        push_text(out, self.upstream_cluster.as_deref());
        for addr in [
            self.upstream_local_address,
            self.downstream_local_address,
            self.downstream_remote_address,
        ] {
            out.push(' ');
            push_addr(out, addr);
        }
        for value in [
            &self.requested_server_name,
            &self.route_name,
            &self.downstream_peer_principal,
        ] {
            out.push(' ');
            push_text(out, value.as_deref());
        }
    }

    /// Istio's default JSON keys (Envoy's JSON formatter: numbers for codes, bytes and
    /// durations, `null` for missing values), plus `downstream_peer_principal`.
    pub fn write_json(&self, out: &mut String) {
        fn opt(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|s| !s.is_empty())
        }
        let line = JsonLine {
            start_time: rfc3339_millis(self.start_time),
            method: opt(&self.method),
            path: opt(&self.path),
            protocol: self.protocol,
            response_code: self.response_code,
            response_flags: opt(&self.response_flags),
            response_code_details: opt(&self.response_code_details),
            connection_termination_details: opt(&self.connection_termination_details),
            upstream_transport_failure_reason: opt(&self.upstream_transport_failure_reason),
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            duration: millis(self.duration) as u64,
            upstream_service_time: self.upstream_service_time.map(|d| millis(d).to_string()),
            x_forwarded_for: opt(&self.x_forwarded_for),
            user_agent: opt(&self.user_agent),
            request_id: opt(&self.request_id),
            authority: opt(&self.authority),
            upstream_host: self.upstream_host.map(|a| a.to_string()),
            upstream_cluster: opt(&self.upstream_cluster),
            upstream_local_address: self.upstream_local_address.map(|a| a.to_string()),
            downstream_local_address: self.downstream_local_address.map(|a| a.to_string()),
            downstream_remote_address: self.downstream_remote_address.map(|a| a.to_string()),
            requested_server_name: opt(&self.requested_server_name),
            route_name: opt(&self.route_name),
            downstream_peer_principal: opt(&self.downstream_peer_principal),
        };
        // Serializing plain strings and numbers into a String cannot fail.
        if let Ok(json) = serde_json::to_string(&line) {
            out.push_str(&json);
        }
    }
}

/// Field order follows Istio's default JSON format.
#[derive(Serialize)]
struct JsonLine<'a> {
    start_time: String,
    method: Option<&'a str>,
    path: Option<&'a str>,
    protocol: Option<&'static str>,
    response_code: u16,
    response_flags: Option<&'a str>,
    response_code_details: Option<&'a str>,
    connection_termination_details: Option<&'a str>,
    upstream_transport_failure_reason: Option<&'a str>,
    bytes_received: u64,
    bytes_sent: u64,
    duration: u64,
    upstream_service_time: Option<String>,
    x_forwarded_for: Option<&'a str>,
    user_agent: Option<&'a str>,
    request_id: Option<&'a str>,
    authority: Option<&'a str>,
    upstream_host: Option<String>,
    upstream_cluster: Option<&'a str>,
    upstream_local_address: Option<String>,
    downstream_local_address: Option<String>,
    downstream_remote_address: Option<String>,
    requested_server_name: Option<&'a str>,
    route_name: Option<&'a str>,
    downstream_peer_principal: Option<&'a str>,
}

/// `2026-11-27T10:00:00.123Z`: RFC 3339, UTC, milliseconds, as Envoy's `%START_TIME%`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let mut out = String::with_capacity(24);
    push_rfc3339_millis(&mut out, t);
    out
}

/// [`rfc3339_millis`], appended to `out`.
fn push_rfc3339_millis(out: &mut String, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    // Before 1970 cannot happen (`unwrap_or_default` above); years past 9999 print in full.
    push_padded(out, year.max(0) as u64, 4);
    for (separator, value, width) in [
        ('-', u64::from(month), 2),
        ('-', u64::from(day), 2),
        ('T', rem / 3600, 2),
        (':', rem % 3600 / 60, 2),
        (':', rem % 60, 2),
        ('.', u64::from(since.subsec_millis()), 3),
    ] {
        out.push(separator);
        push_padded(out, value, width);
    }
    out.push('Z');
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day): Howard Hinnant's
/// `civil_from_days`, which counts in 400-year eras starting on March 1st.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Written out once this much has gathered.
const FLUSH_BYTES: usize = 64 * 1024;
/// Written out by the first line logged this long after the oldest unwritten one.
const FLUSH_AGE: Duration = Duration::from_millis(50);

enum Sink {
    /// A file or standard output, through a buffer.
    Buffered(Mutex<Pending>),
    Memory(Arc<Mutex<Vec<String>>>),
}

enum Output {
    Stdout,
    File(File),
}

/// Rendered lines not written yet, and where they go.
struct Pending {
    out: Output,
    bytes: Vec<u8>,
    /// When the oldest of them was logged.
    since: Option<Instant>,
}

impl Pending {
    fn new(out: Output) -> Self {
        Self {
            out,
            bytes: Vec::with_capacity(FLUSH_BYTES),
            since: None,
        }
    }

    fn push(&mut self, line: &str) {
        if self.bytes.is_empty() {
            self.since = Some(Instant::now());
        }
        self.bytes.extend_from_slice(line.as_bytes());
        self.bytes.push(b'\n');
    }

    fn due(&self) -> bool {
        self.bytes.len() >= FLUSH_BYTES || self.since.is_some_and(|t| t.elapsed() >= FLUSH_AGE)
    }

    /// Writes out the gathered lines with one `write_all` (whole lines, in order). The buffer
    /// is emptied even when the write fails: a log that cannot be written must not grow without
    /// bound.
    fn write_out(&mut self) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        let result = match &mut self.out {
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&self.bytes).and_then(|()| out.flush())
            }
            Output::File(file) => file.write_all(&self.bytes),
        };
        self.bytes.clear();
        self.since = None;
        result
    }
}

struct Inner {
    sink: Sink,
    format: AccessLogFormat,
    /// Write failures are reported once, not per line.
    failed: AtomicBool,
}

/// The buffered logs of this process, for [`flush_buffered`].
static BUFFERED: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());
/// Some buffered log may hold lines not written yet.
static DIRTY: AtomicBool = AtomicBool::new(false);

/// Writes out every buffered log's gathered lines. Cheap when there are none (one atomic swap):
/// `egress run` calls it whenever a runtime thread is about to park, and once before exiting.
pub fn flush_buffered() {
    if !DIRTY.swap(false, Ordering::AcqRel) {
        return;
    }
    let logs: Vec<Arc<Inner>> = {
        let mut buffered = BUFFERED.lock().unwrap_or_else(PoisonError::into_inner);
        buffered.retain(|log| log.strong_count() > 0);
        buffered.iter().filter_map(Weak::upgrade).collect()
    };
    for log in logs {
        log.flush();
    }
}

impl Inner {
    /// Writes out what has gathered.
    fn flush(&self) {
        if let Sink::Buffered(pending) = &self.sink {
            let result = pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write_out();
            self.report(result);
        }
    }

    fn report(&self, result: io::Result<()>) {
        if let Err(error) = result
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            warn!(%error, "writing the access log failed; further failures are not reported");
        }
    }
}

impl Drop for Inner {
    /// The last handle went (a reload replaced the log, or the process ends): nothing is left
    /// behind in the buffer.
    fn drop(&mut self) {
        self.flush();
    }
}

/// Where access-log lines go. Cheap to clone; all clones write to the same place.
///
/// Each line is rendered first, then appended whole to the log's buffer under its lock, which
/// is written out as the module documentation says; lines never interleave.
#[derive(Clone)]
pub struct AccessLog {
    inner: Option<Arc<Inner>>,
}

/// The lines an [`AccessLog::memory`] log received, for tests and diagnostics.
#[derive(Clone, Default)]
pub struct MemoryLog {
    lines: Arc<Mutex<Vec<String>>>,
}

impl MemoryLog {
    /// The lines so far, without their newlines.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl AccessLog {
    fn new(sink: Sink, format: AccessLogFormat) -> Self {
        let buffered = matches!(sink, Sink::Buffered(_));
        let inner = Arc::new(Inner {
            sink,
            format,
            failed: AtomicBool::new(false),
        });
        if buffered {
            BUFFERED
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::downgrade(&inner));
        }
        Self { inner: Some(inner) }
    }

    fn buffered(out: Output, format: AccessLogFormat) -> Self {
        Self::new(Sink::Buffered(Mutex::new(Pending::new(out))), format)
    }

    /// TEXT lines on standard output.
    pub fn stdout() -> Self {
        Self::buffered(Output::Stdout, AccessLogFormat::Text)
    }

    /// JSON lines on standard output.
    pub fn json_stdout() -> Self {
        Self::buffered(Output::Stdout, AccessLogFormat::Json)
    }

    /// TEXT lines appended to `path` (created if missing).
    pub fn file(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self::buffered(
            Output::File(open(path)?),
            AccessLogFormat::Text,
        ))
    }

    /// JSON lines appended to `path` (created if missing).
    pub fn json_file(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self::buffered(
            Output::File(open(path)?),
            AccessLogFormat::Json,
        ))
    }

    /// Writes out this log's gathered lines now.
    pub fn flush(&self) {
        if let Some(inner) = &self.inner {
            inner.flush();
        }
    }

    /// Lines kept in memory; the returned [`MemoryLog`] reads them.
    pub fn memory(format: AccessLogFormat) -> (Self, MemoryLog) {
        let memory = MemoryLog::default();
        (
            Self::new(Sink::Memory(memory.lines.clone()), format),
            memory,
        )
    }

    /// No access log.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Renders one line and gathers it; written out as the module documentation says.
    pub fn log(&self, entry: &AccessLogEntry) {
        let Some(inner) = &self.inner else { return };
        let mut line = String::with_capacity(512);
        match inner.format {
            AccessLogFormat::Text => entry.write_text(&mut line),
            AccessLogFormat::Json => entry.write_json(&mut line),
        }
        match &inner.sink {
            Sink::Memory(lines) => lines.lock().unwrap_or_else(|e| e.into_inner()).push(line),
            Sink::Buffered(pending) => {
                let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
                pending.push(&line);
                if pending.due() {
                    let result = pending.write_out();
                    drop(pending);
                    inner.report(result);
                } else {
                    DIRTY.store(true, Ordering::Release);
                }
            }
        }
    }
}

fn open(path: impl AsRef<Path>) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn start_time_is_rfc3339_utc_with_millis() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(at(1_795_773_600, 123)),
            "2026-11-27T10:00:00.123Z"
        );
        // A leap day and the last millisecond of a century year that is a leap year.
        assert_eq!(
            rfc3339_millis(at(951_782_400, 0)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_millis(at(978_307_199, 999)),
            "2000-12-31T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_millis(at(4_107_542_400, 5)),
            "2100-03-01T00:00:00.005Z"
        );
    }

    fn sample() -> AccessLogEntry {
        AccessLogEntry {
            start_time: at(1_795_773_600, 123),
            method: Some("GET".into()),
            path: Some("/status/418?x=1".into()),
            protocol: Some("HTTP/1.1"),
            response_code: 418,
            response_code_details: Some("via_upstream".into()),
            bytes_received: 0,
            bytes_sent: 135,
            duration: Duration::from_millis(12),
            upstream_service_time: Some(Duration::from_millis(11)),
            user_agent: Some("curl/8.5.0".into()),
            authority: Some("httpbin.org".into()),
            upstream_host: Some("10.0.0.7:80".parse().unwrap()),
            upstream_cluster: Some("outbound|80||httpbin.org".into()),
            upstream_local_address: Some("10.0.0.1:40000".parse().unwrap()),
            downstream_local_address: Some("10.0.0.7:80".parse().unwrap()),
            downstream_remote_address: Some("10.1.0.2:51000".parse().unwrap()),
            downstream_peer_principal: Some("spiffe://cluster.local/ns/app/sa/web".into()),
            ..AccessLogEntry::default()
        }
    }

    #[test]
    fn text_line_is_istio_default_plus_principal() {
        let mut line = String::new();
        sample().write_text(&mut line);
        assert_eq!(
            line,
            "[2026-11-27T10:00:00.123Z] \"GET /status/418?x=1 HTTP/1.1\" 418 - via_upstream - \"-\" \
             0 135 12 11 \"-\" \"curl/8.5.0\" \"-\" \"httpbin.org\" \"10.0.0.7:80\" \
             outbound|80||httpbin.org 10.0.0.1:40000 10.0.0.7:80 10.1.0.2:51000 - - \
             spiffe://cluster.local/ns/app/sa/web"
        );
    }

    #[test]
    fn text_line_writes_dashes_for_missing_and_empty_values_and_brackets_ipv6() {
        let entry = AccessLogEntry {
            start_time: at(253_402_300_799, 7),
            method: Some(String::new()),
            response_code: 0,
            bytes_received: u64::MAX,
            upstream_host: Some("[2001:db8::1]:443".parse().unwrap()),
            downstream_remote_address: Some("198.18.0.10:0".parse().unwrap()),
            ..AccessLogEntry::default()
        };
        let mut line = String::new();
        entry.write_text(&mut line);
        assert_eq!(
            line,
            "[9999-12-31T23:59:59.007Z] \"- - -\" 0 - - - \"-\" 18446744073709551615 0 0 - \"-\" \
             \"-\" \"-\" \"-\" \"[2001:db8::1]:443\" - - - 198.18.0.10:0 - - -"
        );
    }

    #[test]
    fn json_line_has_envoy_keys_and_nulls() {
        let mut line = String::new();
        sample().write_json(&mut line);
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["start_time"], "2026-11-27T10:00:00.123Z");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["response_code"], 418);
        assert_eq!(v["response_flags"], serde_json::Value::Null);
        assert_eq!(v["duration"], 12);
        assert_eq!(v["upstream_service_time"], "11");
        assert_eq!(v["upstream_cluster"], "outbound|80||httpbin.org");
        assert_eq!(v["downstream_local_address"], "10.0.0.7:80");
        assert_eq!(
            v["downstream_peer_principal"],
            "spiffe://cluster.local/ns/app/sa/web"
        );
    }

    #[test]
    fn file_log_appends_whole_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        let log = AccessLog::file(&path).expect("open log");
        log.log(&sample());
        log.clone().log(&AccessLogEntry::default());
        flush_buffered();
        let text = std::fs::read_to_string(&path).expect("read log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("\"GET /status/418?x=1 HTTP/1.1\" 418"));
        assert!(lines[1].starts_with("[1970-01-01T00:00:00.000Z] \"- - -\" 0 - - - \"-\" 0 0 0 -"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_buffered_log_is_written_at_64_kib_after_50_ms_and_when_dropped() {
        // `Pending` itself: `flush_buffered`, which a parallel test may call, cannot reach it.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        let read = || std::fs::read_to_string(&path).expect("read log");
        let mut pending = Pending::new(Output::File(open(&path).expect("open log")));
        let mut line = String::new();
        sample().write_text(&mut line);
        let lines_below_limit = (FLUSH_BYTES - 1) / (line.len() + 1);
        for _ in 0..lines_below_limit {
            pending.push(&line);
        }
        assert!(!pending.due(), "below 64 KiB and younger than 50 ms");
        pending.push(&line);
        assert!(pending.due(), "64 KiB reached");
        pending.write_out().expect("write");
        assert_eq!(read().lines().count(), lines_below_limit + 1);
        assert!(!pending.due(), "nothing gathered");

        pending.push(&line);
        assert!(!pending.due());
        std::thread::sleep(FLUSH_AGE);
        assert!(pending.due(), "the oldest unwritten line is 50 ms old");

        // The last handle of a log writes out what it gathered.
        let log = AccessLog::file(&path).expect("open log");
        log.log(&sample());
        drop(log);
        assert_eq!(read().lines().count(), lines_below_limit + 2);
        assert!(read().ends_with('\n'));
    }
}
