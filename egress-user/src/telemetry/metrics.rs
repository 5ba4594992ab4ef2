//! Istio's standard metrics as the waypoint reports them, rendered in the Prometheus text
//! exposition format (0.0.4).
//!
//! A process-wide registry (like Prometheus' default registry): the proxy records, the admin
//! endpoint renders, and neither has to carry a handle through the other's API.
//!
//! Labels are Istio's standard set (istio.io "Istio Standard Metrics"), valued as Istio's
//! waypoint (an Envoy `reporter="waypoint"`, server-side) values them; see [`ConnectionLabels`].
//! The label text of a connection is rendered once, when the connection is accepted
//! ([`Labels`]); a request only adds its code and flags, so recording one costs one lock and one
//! map lookup.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

/// `istio_requests_total{<standard labels>}`: one per HTTP request answered.
pub const REQUESTS_TOTAL: &str = "istio_requests_total";
/// `istio_request_duration_milliseconds{...}`: histogram, the labels of `istio_requests_total`.
pub const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";
/// `istio_request_bytes{...}`: histogram of request body sizes (bytes the client sent in the
/// body, as the access log's `BYTES_RECEIVED`).
pub const REQUEST_BYTES: &str = "istio_request_bytes";
/// `istio_response_bytes{...}`: histogram of response body sizes (`BYTES_SENT`).
pub const RESPONSE_BYTES: &str = "istio_response_bytes";
/// `istio_tcp_connections_opened_total{<standard labels without the HTTP ones>}`.
pub const TCP_OPENED_TOTAL: &str = "istio_tcp_connections_opened_total";
/// `istio_tcp_connections_closed_total{...}`.
pub const TCP_CLOSED_TOTAL: &str = "istio_tcp_connections_closed_total";
/// `istio_tcp_received_bytes_total{...}`: bytes from the downstream on spliced connections.
pub const TCP_RECEIVED_BYTES_TOTAL: &str = "istio_tcp_received_bytes_total";
/// `istio_tcp_sent_bytes_total{...}`: bytes to the downstream on spliced connections.
pub const TCP_SENT_BYTES_TOTAL: &str = "istio_tcp_sent_bytes_total";

/// Envoy's default histogram buckets, which Istio keeps for all four request histograms
/// (durations in milliseconds, sizes in bytes).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The `reporter` label value for everything the waypoint reports.
pub const REPORTER: &str = "waypoint";
/// Istio's value for a label it cannot know.
pub const UNKNOWN: &str = "unknown";

/// A label set rendered once as Prometheus label text: `k="v",k="v"` with values escaped.
/// Cloning is a reference-count increment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Arc<str>);

impl Labels {
    /// Renders `pairs` in the order given (the order is part of the series' identity).
    pub fn new(pairs: &[(&str, &str)]) -> Self {
        let mut text = String::with_capacity(pairs.len() * 32);
        for (key, value) in pairs {
            if !text.is_empty() {
                text.push(',');
            }
            let _ = write!(text, "{key}=\"");
            escape_label(value, &mut text);
            text.push('"');
        }
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value of `key`, unescaped (for tests and the query in [`Metrics::get`]).
    pub fn get(&self, key: &str) -> Option<String> {
        label_value(&self.0, key)
    }
}

/// Who called, as far as the waypoint knows it.
#[derive(Clone, Copy, Debug)]
pub struct SourceWorkload<'a> {
    /// The workload's namespace (from its principal).
    pub namespace: &'a str,
    /// The workload's name.
    pub workload: &'a str,
    /// `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub principal: &'a str,
}

/// Istio's connection-level standard labels: everything but `response_code`,
/// `grpc_response_status` and (on requests) `response_flags`, which each request adds.
///
/// Values follow Istio's waypoint, a server-side reporter, for a ServiceEntry destination:
/// - `source_*` from the caller's identity; a caller without identity is `unknown` throughout,
///   as Istio reports a peer without metadata. There are no pod labels in host mode, so
///   `source_app`, `source_version` and `source_cluster` are `unknown`;
///   `source_canonical_service` defaults to the workload name and `source_canonical_revision` to
///   `latest`, as istiod defaults them.
/// - `destination_service` is the ServiceEntry host, and so is `destination_service_name`
///   (istiod names the service it builds from a ServiceEntry after the host);
///   `destination_service_namespace` is the ServiceEntry's namespace.
/// - `destination_workload*`, `destination_principal`, `destination_app`, `destination_version`,
///   `destination_canonical_*`, `destination_cluster`: `unknown` — an external host has no
///   workload, and no SPIFFE identity even when the waypoint originates TLS to it.
/// - `connection_security_policy`: `none`. A server-side reporter knows whether its peer spoke
///   mutual TLS and says `mutual_tls` or `none`; only client-side reporters, which cannot know,
///   say `unknown`. The application reaches the waypoint in plaintext.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLabels<'a> {
    pub source: Option<SourceWorkload<'a>>,
    /// The ServiceEntry host the traffic is for.
    pub service_host: &'a str,
    /// The ServiceEntry's namespace.
    pub service_namespace: &'a str,
    /// `http` for requests on HTTP ports, `tcp` for connections.
    pub request_protocol: &'a str,
}

impl ConnectionLabels<'_> {
    /// The label set, in the order Istio's proxies emit it. `extra` (e.g. `response_flags` of a
    /// TCP connection) goes before `connection_security_policy`.
    pub fn render(&self, extra: &[(&str, &str)]) -> Labels {
        let (workload, namespace, principal, revision) = match self.source {
            Some(s) => (s.workload, s.namespace, s.principal, "latest"),
            None => (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN),
        };
        let mut pairs = vec![
            ("reporter", REPORTER),
            ("source_workload", workload),
            ("source_canonical_service", workload),
            ("source_canonical_revision", revision),
            ("source_workload_namespace", namespace),
            ("source_principal", principal),
            ("source_app", UNKNOWN),
            ("source_version", UNKNOWN),
            ("source_cluster", UNKNOWN),
            ("destination_workload", UNKNOWN),
            ("destination_workload_namespace", UNKNOWN),
            ("destination_principal", UNKNOWN),
            ("destination_app", UNKNOWN),
            ("destination_version", UNKNOWN),
            ("destination_service", self.service_host),
            ("destination_canonical_service", UNKNOWN),
            ("destination_canonical_revision", UNKNOWN),
            ("destination_service_name", self.service_host),
            ("destination_service_namespace", self.service_namespace),
            ("destination_cluster", UNKNOWN),
            ("request_protocol", self.request_protocol),
        ];
        pairs.extend_from_slice(extra);
        pairs.push(("connection_security_policy", "none"));
        Labels::new(&pairs)
    }
}

/// How one HTTP request ended.
#[derive(Clone, Copy, Debug)]
pub struct RequestOutcome<'a> {
    pub code: u16,
    /// `grpc-status` of a gRPC response (its headers or trailers); `None` for plain HTTP.
    pub grpc_status: Option<u32>,
    /// Envoy's response flags (`-` for none).
    pub flags: &'a str,
    pub duration: Duration,
    /// Request body bytes received from the client.
    pub request_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
}

/// One histogram series: per-bucket counts (not cumulative), sum and count.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| value <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }
}

/// The request series key: the connection's labels plus the per-request ones.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RequestKey {
    labels: Labels,
    code: u16,
    grpc_status: Option<u32>,
    flags: Box<str>,
}

impl RequestKey {
    /// The full label text: connection labels, then `response_code`, `grpc_response_status`
    /// (empty: no gRPC, as Istio reports plain HTTP) and `response_flags`.
    fn label_text(&self) -> String {
        let mut text = String::with_capacity(self.labels.as_str().len() + 80);
        text.push_str(self.labels.as_str());
        let _ = write!(
            text,
            ",response_code=\"{}\",grpc_response_status=\"",
            self.code
        );
        if let Some(status) = self.grpc_status {
            let _ = write!(text, "{status}");
        }
        text.push_str("\",response_flags=\"");
        escape_label(&self.flags, &mut text);
        text.push('"');
        text
    }
}

/// Everything recorded for one request series.
#[derive(Debug, Default)]
struct RequestStats {
    count: u64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// Counters and request series keyed by name and label set.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    requests: Mutex<BTreeMap<RequestKey, RequestStats>>,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::default);

impl Metrics {
    /// The process-wide registry.
    pub fn global() -> &'static Metrics {
        &GLOBAL
    }

    /// Adds `by` to the counter `name{labels}`.
    pub fn add(&self, name: &'static str, labels: &Labels, by: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *counters.entry((name, labels.clone())).or_default() += by;
    }

    /// Records one request: `istio_requests_total`, its duration, request and response sizes.
    pub fn record_request(&self, labels: &Labels, outcome: &RequestOutcome<'_>) {
        let key = RequestKey {
            labels: labels.clone(),
            code: outcome.code,
            grpc_status: outcome.grpc_status,
            flags: outcome.flags.into(),
        };
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let stats = requests.entry(key).or_default();
        stats.count += 1;
        stats
            .duration
            .observe(outcome.duration.as_secs_f64() * 1000.0);
        stats.request_bytes.observe(outcome.request_bytes as f64);
        stats.response_bytes.observe(outcome.response_bytes as f64);
    }

    /// The sum of every counter `name` whose labels include all of `labels` (0 when none
    /// does). For [`REQUESTS_TOTAL`], `response_code` and `response_flags` can be matched too.
    pub fn get(&self, name: &'static str, labels: &[(&str, &str)]) -> u64 {
        let matches = |text: &str| {
            labels
                .iter()
                .all(|(k, v)| label_value(text, k).as_deref() == Some(*v))
        };
        if name == REQUESTS_TOTAL {
            let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            return requests
                .iter()
                .filter(|(key, _)| matches(&key.label_text()))
                .map(|(_, stats)| stats.count)
                .sum();
        }
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters
            .iter()
            .filter(|((n, l), _)| *n == name && matches(l.as_str()))
            .map(|(_, value)| *value)
            .sum()
    }

    /// Appends every series, grouped by name under one `# TYPE` line each.
    pub fn render(&self, out: &mut String) {
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut current = "";
        for ((name, labels), value) in counters.iter() {
            if *name != current {
                current = name;
                let _ = writeln!(out, "# TYPE {current} counter");
            }
            let _ = writeln!(out, "{name}{{{}}} {value}", labels.as_str());
        }
        drop(counters);

        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let series: Vec<(String, &RequestStats)> = requests
            .iter()
            .map(|(key, stats)| (key.label_text(), stats))
            .collect();
        if series.is_empty() {
            return;
        }
        let _ = writeln!(out, "# TYPE {REQUESTS_TOTAL} counter");
        for (labels, stats) in &series {
            let _ = writeln!(out, "{REQUESTS_TOTAL}{{{labels}}} {}", stats.count);
        }
        for name in [REQUEST_DURATION, REQUEST_BYTES, RESPONSE_BYTES] {
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (labels, stats) in &series {
                let histogram = match name {
                    REQUEST_DURATION => &stats.duration,
                    REQUEST_BYTES => &stats.request_bytes,
                    _ => &stats.response_bytes,
                };
                render_histogram(out, name, labels, histogram);
            }
        }
    }
}

fn render_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cumulative = 0;
    for (bound, n) in BUCKETS.iter().zip(h.buckets) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// Label values escape backslash, double quote and newline (text format 0.0.4).
fn escape_label(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The unescaped value of `key` in rendered label text, if present.
fn label_value(text: &str, key: &str) -> Option<String> {
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return None,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        if name == key {
            return Some(value);
        }
        rest = after[end + 1..].strip_prefix(',').unwrap_or("");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleep() -> SourceWorkload<'static> {
        SourceWorkload {
            namespace: "default",
            workload: "sleep",
            principal: "spiffe://cluster.local/ns/default/sa/sleep",
        }
    }

    #[test]
    fn connection_labels_are_istios_standard_set() {
        let labels = ConnectionLabels {
            source: Some(sleep()),
            service_host: "httpbin.org",
            service_namespace: "egress",
            request_protocol: "http",
        }
        .render(&[]);
        assert_eq!(
            labels.as_str(),
            "reporter=\"waypoint\",source_workload=\"sleep\",\
             source_canonical_service=\"sleep\",source_canonical_revision=\"latest\",\
             source_workload_namespace=\"default\",\
             source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\",\
             source_app=\"unknown\",source_version=\"unknown\",source_cluster=\"unknown\",\
             destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",\
             destination_principal=\"unknown\",destination_app=\"unknown\",\
             destination_version=\"unknown\",destination_service=\"httpbin.org\",\
             destination_canonical_service=\"unknown\",destination_canonical_revision=\"unknown\",\
             destination_service_name=\"httpbin.org\",destination_service_namespace=\"egress\",\
             destination_cluster=\"unknown\",request_protocol=\"http\",\
             connection_security_policy=\"none\""
        );
    }

    #[test]
    fn a_caller_without_identity_is_unknown_and_tcp_carries_response_flags() {
        let labels = ConnectionLabels {
            source: None,
            service_host: "db.example",
            service_namespace: "ns",
            request_protocol: "tcp",
        }
        .render(&[("response_flags", "-")]);
        for key in [
            "source_workload",
            "source_canonical_service",
            "source_canonical_revision",
            "source_workload_namespace",
            "source_principal",
        ] {
            assert_eq!(labels.get(key).as_deref(), Some(UNKNOWN), "{key}");
        }
        assert_eq!(labels.get("request_protocol").as_deref(), Some("tcp"));
        assert!(
            labels.as_str().ends_with(
                ",request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"none\""
            ),
            "{}",
            labels.as_str()
        );
    }

    #[test]
    fn request_series_render_a_counter_and_three_histograms() {
        let metrics = Metrics::default();
        let labels = Labels::new(&[("reporter", "waypoint")]);
        let outcome = |ms: u64, code: u16, bytes: u64| RequestOutcome {
            code,
            grpc_status: None,
            flags: "-",
            duration: Duration::from_micros(ms),
            request_bytes: bytes,
            response_bytes: 2 * bytes,
        };
        metrics.record_request(&labels, &outcome(300, 200, 0));
        metrics.record_request(&labels, &outcome(7_000, 200, 3));
        metrics.record_request(&labels, &outcome(9_999_999_000, 200, 1_000));
        metrics.record_request(
            &labels,
            &RequestOutcome {
                flags: "DPE",
                ..outcome(0, 400, 0)
            },
        );
        let mut out = String::new();
        metrics.render(&mut out);
        let ok = "reporter=\"waypoint\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\"";
        for line in [
            "# TYPE istio_requests_total counter".to_owned(),
            format!("istio_requests_total{{{ok}}} 3"),
            "istio_requests_total{reporter=\"waypoint\",response_code=\"400\",grpc_response_status=\"\",response_flags=\"DPE\"} 1".to_owned(),
            "# TYPE istio_request_duration_milliseconds histogram".to_owned(),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"0.5\"}} 1"),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"10\"}} 2"),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"3600000\"}} 2"),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"+Inf\"}} 3"),
            format!("istio_request_duration_milliseconds_count{{{ok}}} 3"),
            format!("istio_request_duration_milliseconds_sum{{{ok}}} 10000006.3"),
            "# TYPE istio_request_bytes histogram".to_owned(),
            format!("istio_request_bytes_bucket{{{ok},le=\"0.5\"}} 1"),
            format!("istio_request_bytes_bucket{{{ok},le=\"5\"}} 2"),
            format!("istio_request_bytes_sum{{{ok}}} 1003"),
            "# TYPE istio_response_bytes histogram".to_owned(),
            format!("istio_response_bytes_bucket{{{ok},le=\"5\"}} 1"),
            format!("istio_response_bytes_bucket{{{ok},le=\"10\"}} 2"),
            format!("istio_response_bytes_sum{{{ok}}} 2006"),
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
        }
        assert_eq!(metrics.get(REQUESTS_TOTAL, &[("response_code", "200")]), 3);
        assert_eq!(metrics.get(REQUESTS_TOTAL, &[("response_flags", "DPE")]), 1);
        assert_eq!(metrics.get(REQUESTS_TOTAL, &[("reporter", "waypoint")]), 4);
    }

    #[test]
    fn counters_render_grouped_and_escaped_and_match_by_subset() {
        let metrics = Metrics::default();
        let a = Labels::new(&[("reporter", "waypoint"), ("source_principal", "a\"b\\c\nd")]);
        let b = Labels::new(&[("reporter", "waypoint"), ("source_principal", "x,y=\"z\"")]);
        metrics.add(TCP_OPENED_TOTAL, &a, 1);
        metrics.add(TCP_OPENED_TOTAL, &a, 2);
        metrics.add(TCP_OPENED_TOTAL, &b, 1);
        metrics.add(TCP_CLOSED_TOTAL, &b, 1);
        let mut out = String::new();
        metrics.render(&mut out);
        assert_eq!(
            out,
            "# TYPE istio_tcp_connections_closed_total counter\n\
             istio_tcp_connections_closed_total{reporter=\"waypoint\",source_principal=\"x,y=\\\"z\\\"\"} 1\n\
             # TYPE istio_tcp_connections_opened_total counter\n\
             istio_tcp_connections_opened_total{reporter=\"waypoint\",source_principal=\"a\\\"b\\\\c\\nd\"} 3\n\
             istio_tcp_connections_opened_total{reporter=\"waypoint\",source_principal=\"x,y=\\\"z\\\"\"} 1\n"
        );
        assert_eq!(
            metrics.get(TCP_OPENED_TOTAL, &[("source_principal", "a\"b\\c\nd")]),
            3
        );
        assert_eq!(
            metrics.get(TCP_OPENED_TOTAL, &[("source_principal", "x,y=\"z\"")]),
            1
        );
        assert_eq!(
            metrics.get(TCP_OPENED_TOTAL, &[("reporter", "waypoint")]),
            4
        );
        assert_eq!(metrics.get(TCP_OPENED_TOTAL, &[("reporter", "source")]), 0);
        assert_eq!(a.get("missing"), None);
    }
}
