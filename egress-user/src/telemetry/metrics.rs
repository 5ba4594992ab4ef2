//! Istio's standard metrics as the waypoint reports them, on `prometheus-client`: counters and
//! histograms in label-keyed [`Family`]s of one process-wide [`Registry`], rendered in the
//! Prometheus text exposition format (0.0.4, [`CONTENT_TYPE`]) by the client's own encoder.
//!
//! A process-wide registry (like Prometheus' default registry): the proxy records, the admin
//! endpoint renders, and neither has to carry a handle through the other's API.
//!
//! Labels are Istio's standard set (istio.io "Istio Standard Metrics"), valued as Istio's
//! waypoint (an Envoy `reporter="waypoint"`, server-side) values them; see [`ConnectionLabels`].
//!
//! What recording costs. A connection's label set ([`Labels`]) is built once, when the
//! connection is accepted, and shared by reference count from then on. Its requests go through a
//! [`RequestSeries`], which keeps the metric handles (Arc-backed: a counter and three
//! histograms) of each outcome — `response_code`, `grpc_response_status`, `response_flags` —
//! the connection has seen, up to [`MAX_CACHED_OUTCOMES`]. A request with an outcome seen
//! before costs one uncontended per-connection lock, a scan of at most eight small keys, one
//! atomic add and three histogram observations (each a per-series lock and a search of 20
//! bounds): no allocation, no hashing, no map lookup. The first request of an outcome
//! allocates its key and looks the series up in the four families (a hash of the label set
//! and a read lock each; a write lock the first time the series exists anywhere). (The
//! hand-written registry this replaced took one process-wide lock, a map lookup comparing label
//! text, and an allocation on every request.) Counters recorded with [`Metrics::add`] (TCP
//! connections and bytes, DNS, rejected objects) cost one family lookup each.
use std::{
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

mod labels;

pub use labels::{ConnectionLabels, Labels, REPORTER, SourceWorkload, UNKNOWN};
use prometheus_client::{
    encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder, prometheus_text},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// The `Content-Type` of what [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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
/// `egress_dns_requests_total{type,rcode}`: queries the DNS proxy answered.
pub const DNS_REQUESTS_TOTAL: &str = "egress_dns_requests_total";
/// `egress_config_rejected_objects_total{kind}`: Kubernetes objects rejected by validation.
pub const CONFIG_REJECTED_OBJECTS_TOTAL: &str = "egress_config_rejected_objects_total";
/// `egress_waypoint_connections_rejected_total{reason}`: connections closed on accept.
pub const CONNECTIONS_REJECTED_TOTAL: &str = "egress_waypoint_connections_rejected_total";

/// Every counter [`Metrics::add`] knows, with its help text, in the order rendered.
const COUNTERS: [(&str, &str); 7] = [
    (
        CONFIG_REJECTED_OBJECTS_TOTAL,
        "Kubernetes objects rejected by validation, by kind",
    ),
    (
        DNS_REQUESTS_TOTAL,
        "DNS queries answered, by type and rcode",
    ),
    (
        CONNECTIONS_REJECTED_TOTAL,
        "Waypoint connections closed on accept, by reason",
    ),
    (TCP_CLOSED_TOTAL, "TCP connections closed"),
    (TCP_OPENED_TOTAL, "TCP connections opened"),
    (
        TCP_RECEIVED_BYTES_TOTAL,
        "Bytes received from the downstream on spliced connections",
    ),
    (
        TCP_SENT_BYTES_TOTAL,
        "Bytes sent to the downstream on spliced connections",
    ),
];

/// Envoy's default histogram buckets, which Istio keeps for all four request histograms
/// (durations in milliseconds, sizes in bytes).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// How many outcomes a [`RequestSeries`] keeps handles for; further ones are looked up in the
/// families on every request (a connection sees a handful: 200, 404, a denial...).
pub const MAX_CACHED_OUTCOMES: usize = 8;

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

/// The request series key: the connection's labels, then `response_code`,
/// `grpc_response_status` (empty: no gRPC, as Istio reports plain HTTP) and `response_flags`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RequestLabels {
    connection: Labels,
    code: u16,
    grpc_status: Option<u32>,
    flags: Box<str>,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.connection.encode(encoder)?;
        ("response_code", self.code).encode(encoder.encode_label())?;
        ("grpc_response_status", self.grpc_status).encode(encoder.encode_label())?;
        ("response_flags", &*self.flags).encode(encoder.encode_label())
    }
}

/// A histogram family with Envoy's buckets.
type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn envoy_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The four request families (cloning shares them).
#[derive(Clone, Debug)]
struct RequestFamilies {
    count: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
}

impl RequestFamilies {
    /// The handles of one series, created if new.
    fn handles(&self, labels: &RequestLabels) -> RequestHandles {
        RequestHandles {
            count: self.count.get_or_create_owned(labels),
            duration: self.duration.get_or_create_owned(labels),
            request_bytes: self.request_bytes.get_or_create_owned(labels),
            response_bytes: self.response_bytes.get_or_create_owned(labels),
        }
    }
}

/// One request series' metrics, shared with the registry.
#[derive(Debug)]
struct RequestHandles {
    count: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl RequestHandles {
    fn record(&self, outcome: &RequestOutcome<'_>) {
        self.count.inc();
        self.duration
            .observe(outcome.duration.as_secs_f64() * 1000.0);
        self.request_bytes.observe(outcome.request_bytes as f64);
        self.response_bytes.observe(outcome.response_bytes as f64);
    }
}

/// The outcome part of a request series key.
#[derive(Debug)]
struct OutcomeKey {
    code: u16,
    grpc_status: Option<u32>,
    flags: Box<str>,
}

impl OutcomeKey {
    fn is(&self, outcome: &RequestOutcome<'_>) -> bool {
        self.code == outcome.code
            && self.grpc_status == outcome.grpc_status
            && *self.flags == *outcome.flags
    }
}

/// The request metrics of one connection's label set: records each request into the series of
/// its outcome, keeping the handles of the outcomes seen (see the module doc for the cost).
/// Cloning shares it.
#[derive(Clone, Debug)]
pub struct RequestSeries(Arc<RequestSeriesInner>);

#[derive(Debug)]
struct RequestSeriesInner {
    labels: Labels,
    families: RequestFamilies,
    outcomes: Mutex<Vec<(OutcomeKey, RequestHandles)>>,
}

impl RequestSeries {
    /// The connection's labels.
    pub fn labels(&self) -> &Labels {
        &self.0.labels
    }

    /// Records one request: `istio_requests_total`, its duration, request and response sizes.
    pub fn record(&self, outcome: &RequestOutcome<'_>) {
        let mut outcomes = self.0.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, handles)) = outcomes.iter().find(|(key, _)| key.is(outcome)) {
            handles.record(outcome);
            return;
        }
        let handles = self.0.families.handles(&RequestLabels {
            connection: self.0.labels.clone(),
            code: outcome.code,
            grpc_status: outcome.grpc_status,
            flags: outcome.flags.into(),
        });
        handles.record(outcome);
        if outcomes.len() < MAX_CACHED_OUTCOMES {
            let key = OutcomeKey {
                code: outcome.code,
                grpc_status: outcome.grpc_status,
                flags: outcome.flags.into(),
            };
            outcomes.push((key, handles));
        }
    }
}

/// The registry and its families.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The families of [`COUNTERS`], by name.
    counters: Vec<(&'static str, Family<Labels, Counter>)>,
    requests: RequestFamilies,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::default);

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let counters = COUNTERS
            .iter()
            .map(|(name, help)| {
                let family = Family::<Labels, Counter>::default();
                registry.register(unsuffixed(name), *help, family.clone());
                (*name, family)
            })
            .collect();
        let histograms = || HistogramFamily::new_with_constructor(envoy_histogram);
        let requests = RequestFamilies {
            count: Family::default(),
            duration: histograms(),
            request_bytes: histograms(),
            response_bytes: histograms(),
        };
        registry.register(
            unsuffixed(REQUESTS_TOTAL),
            "Requests answered",
            requests.count.clone(),
        );
        registry.register(
            REQUEST_DURATION,
            "Request durations in milliseconds",
            requests.duration.clone(),
        );
        registry.register(
            REQUEST_BYTES,
            "Request body sizes in bytes",
            requests.request_bytes.clone(),
        );
        registry.register(
            RESPONSE_BYTES,
            "Response body sizes in bytes",
            requests.response_bytes.clone(),
        );
        Self {
            registry,
            counters,
            requests,
        }
    }
}

/// A counter's registered name: the encoder adds `_total`.
fn unsuffixed(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

impl Metrics {
    /// The process-wide registry.
    pub fn global() -> &'static Metrics {
        &GLOBAL
    }

    /// Adds `by` to the counter `name{labels}`. `name` is one of this module's counter names;
    /// another is a bug, reported (and the count dropped) rather than a panic on the data path.
    pub fn add(&self, name: &'static str, labels: &Labels, by: u64) {
        match self.counters.iter().find(|(n, _)| *n == name) {
            Some((_, family)) => {
                family.get_or_create(labels).inc_by(by);
            }
            None => {
                debug_assert!(false, "no counter {name} is registered");
                tracing::error!(name, "no such counter is registered; not counted");
            }
        }
    }

    /// The request metrics of a connection with `labels`, recorded into this registry.
    pub fn request_series(&self, labels: Labels) -> RequestSeries {
        RequestSeries(Arc::new(RequestSeriesInner {
            labels,
            families: self.requests.clone(),
            outcomes: Mutex::new(Vec::with_capacity(2)),
        }))
    }

    /// The sum of every sample of `name` (a full sample name, as rendered: `..._total`,
    /// `..._count`) whose labels include all of `labels` (0 when none does). Reads the rendered
    /// exposition, as a scraper would.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut text = String::new();
        self.render(&mut text);
        text.lines()
            .filter_map(|line| parse_sample(line, name))
            .filter(|(pairs, _)| {
                labels
                    .iter()
                    .all(|(k, v)| pairs.iter().any(|(pk, pv)| pk == k && pv == v))
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// Appends every family in the text format, one `# HELP` and `# TYPE` each.
    pub fn render(&self, out: &mut String) {
        // Writing to a String does not fail.
        let _ = prometheus_text::encode(out, &self.registry);
    }
}

/// The labels and value of `line` if it is a sample of exactly `name`.
fn parse_sample(line: &str, name: &str) -> Option<(Vec<(String, String)>, u64)> {
    let rest = line.strip_prefix(name)?;
    let (pairs, value) = match rest.strip_prefix('{') {
        Some(rest) => parse_labels(rest)?,
        None => (Vec::new(), rest),
    };
    let value: f64 = value.strip_prefix(' ')?.trim().parse().ok()?;
    Some((pairs, value as u64))
}

/// Parses `k="v",...}` (values escaped as the text format says) and returns what follows `}`.
fn parse_labels(mut rest: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut pairs = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((pairs, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()? {
                    (_, 'n') => value.push('\n'),
                    (_, c) => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        pairs.push((key.to_owned(), value));
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
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

    fn rendered(metrics: &Metrics) -> String {
        let mut out = String::new();
        metrics.render(&mut out);
        out
    }

    /// The `# HELP`/`# TYPE` lines of family `name` (as rendered), then its samples sorted
    /// (a family's series are in no particular order).
    fn family<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
        let help = format!("# HELP {name} ");
        let mut lines = out.lines().skip_while(|l| !l.starts_with(&help));
        let mut block: Vec<&str> = lines.by_ref().take(2).collect();
        let mut samples: Vec<&str> = lines.take_while(|l| !l.starts_with('#')).collect();
        samples.sort_unstable();
        block.extend(samples);
        block
    }

    #[test]
    fn label_sets_built_apart_are_one_series_and_different_ones_are_not() {
        let a = Labels::new(&[("reporter", "waypoint"), ("destination_service", "a.test")]);
        let again = Labels::new(&[("reporter", "waypoint"), ("destination_service", "a.test")]);
        let b = Labels::new(&[("reporter", "waypoint"), ("destination_service", "b.test")]);
        // The order of the pairs is part of the set (it is how the series renders).
        let swapped = Labels::new(&[("destination_service", "a.test"), ("reporter", "waypoint")]);
        assert_eq!(a, again);
        assert_ne!(a, b);
        assert_ne!(a, swapped);
        let metrics = Metrics::default();
        for labels in [&a, &again, &b, &swapped] {
            metrics.add(TCP_OPENED_TOTAL, labels, 1);
        }
        let get = |service| metrics.get(TCP_OPENED_TOTAL, &[("destination_service", service)]);
        assert_eq!((get("a.test"), get("b.test")), (3, 1));
        let out = rendered(&metrics);
        assert_eq!(family(&out, TCP_OPENED_TOTAL).len(), 2 + 3, "{out}");
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
        let metrics = Metrics::default();
        metrics.add(TCP_OPENED_TOTAL, &labels, 1);
        assert_eq!(
            family(&rendered(&metrics), TCP_OPENED_TOTAL),
            [
                "# HELP istio_tcp_connections_opened_total TCP connections opened.",
                "# TYPE istio_tcp_connections_opened_total counter",
                "istio_tcp_connections_opened_total{reporter=\"waypoint\",source_workload=\"sleep\",\
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
                 connection_security_policy=\"none\"} 1",
            ]
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
            assert_eq!(labels.get(key), Some(UNKNOWN), "{key}");
        }
        let pairs: Vec<_> = labels.pairs().collect();
        assert_eq!(
            pairs[pairs.len() - 3..],
            [
                ("request_protocol", "tcp"),
                ("response_flags", "-"),
                ("connection_security_policy", "none"),
            ],
            "{pairs:?}"
        );
    }

    fn outcome(micros: u64, code: u16, bytes: u64) -> RequestOutcome<'static> {
        RequestOutcome {
            code,
            grpc_status: None,
            flags: "-",
            duration: Duration::from_micros(micros),
            request_bytes: bytes,
            response_bytes: 2 * bytes,
        }
    }

    #[test]
    fn request_series_render_a_counter_and_three_histograms() {
        let metrics = Metrics::default();
        let series = metrics.request_series(Labels::new(&[("reporter", "waypoint")]));
        series.record(&outcome(300, 200, 0));
        series.record(&outcome(7_000, 200, 3));
        series.record(&outcome(9_999_999_000, 200, 1_000));
        series.record(&RequestOutcome {
            flags: "DPE",
            ..outcome(0, 400, 0)
        });
        series.record(&RequestOutcome {
            grpc_status: Some(7),
            ..outcome(0, 200, 0)
        });
        let out = rendered(&metrics);
        let ok = "reporter=\"waypoint\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\"";
        assert_eq!(
            family(&out, REQUESTS_TOTAL),
            [
                "# HELP istio_requests_total Requests answered.".to_owned(),
                "# TYPE istio_requests_total counter".to_owned(),
                format!("istio_requests_total{{{ok}}} 3"),
                "istio_requests_total{reporter=\"waypoint\",response_code=\"200\",grpc_response_status=\"7\",response_flags=\"-\"} 1".to_owned(),
                "istio_requests_total{reporter=\"waypoint\",response_code=\"400\",grpc_response_status=\"\",response_flags=\"DPE\"} 1".to_owned(),
            ]
        );
        for line in [
            "# TYPE istio_request_duration_milliseconds histogram".to_owned(),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"0.5\"}} 1"),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"10\"}} 2"),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"3.6e+06\"}} 2"),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"+Inf\"}} 3"),
            format!("istio_request_duration_milliseconds_count{{{ok}}} 3"),
            format!("istio_request_duration_milliseconds_sum{{{ok}}} 10000006.3"),
            "# TYPE istio_request_bytes histogram".to_owned(),
            format!("istio_request_bytes_bucket{{{ok},le=\"0.5\"}} 1"),
            format!("istio_request_bytes_bucket{{{ok},le=\"5\"}} 2"),
            format!("istio_request_bytes_sum{{{ok}}} 1003.0"),
            "# TYPE istio_response_bytes histogram".to_owned(),
            format!("istio_response_bytes_bucket{{{ok},le=\"5\"}} 1"),
            format!("istio_response_bytes_bucket{{{ok},le=\"10\"}} 2"),
            format!("istio_response_bytes_sum{{{ok}}} 2006.0"),
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
        }
        // Envoy's 19 bounds and +Inf, per series.
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with(&format!("istio_request_bytes_bucket{{{ok},")))
                .count(),
            BUCKETS.len() + 1
        );
        assert_eq!(metrics.get(REQUESTS_TOTAL, &[("response_code", "200")]), 4);
        assert_eq!(metrics.get(REQUESTS_TOTAL, &[("response_flags", "DPE")]), 1);
        assert_eq!(
            metrics.get(REQUESTS_TOTAL, &[("grpc_response_status", "7")]),
            1
        );
        assert_eq!(metrics.get(REQUESTS_TOTAL, &[("reporter", "waypoint")]), 5);
        assert_eq!(
            metrics.get("istio_request_duration_milliseconds_count", &[]),
            5
        );
    }

    #[test]
    fn connections_with_one_label_set_share_series_and_outcomes_past_the_cache_count() {
        let metrics = Metrics::default();
        let labels = Labels::new(&[("reporter", "waypoint"), ("source_principal", "a")]);
        let first = metrics.request_series(labels.clone());
        let second = metrics.request_series(labels);
        let codes: Vec<u16> = (0..MAX_CACHED_OUTCOMES as u16 + 3)
            .map(|i| 200 + i)
            .collect();
        for _ in 0..2 {
            for &code in &codes {
                first.record(&outcome(1_000, code, 1));
                second.record(&outcome(1_000, code, 1));
            }
        }
        for &code in &codes {
            let code = code.to_string();
            assert_eq!(
                metrics.get(REQUESTS_TOTAL, &[("response_code", &code)]),
                4,
                "{code}"
            );
        }
        let out = rendered(&metrics);
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .count(),
            codes.len(),
            "one series per code:\n{out}"
        );
        assert_eq!(
            metrics.get("istio_response_bytes_sum", &[]),
            2 * 4 * codes.len() as u64
        );
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
        let out = rendered(&metrics);
        assert_eq!(
            family(&out, TCP_CLOSED_TOTAL),
            [
                "# HELP istio_tcp_connections_closed_total TCP connections closed.",
                "# TYPE istio_tcp_connections_closed_total counter",
                "istio_tcp_connections_closed_total{reporter=\"waypoint\",source_principal=\"x,y=\\\"z\\\"\"} 1",
            ]
        );
        assert_eq!(
            family(&out, TCP_OPENED_TOTAL),
            [
                "# HELP istio_tcp_connections_opened_total TCP connections opened.",
                "# TYPE istio_tcp_connections_opened_total counter",
                "istio_tcp_connections_opened_total{reporter=\"waypoint\",source_principal=\"a\\\"b\\\\c\\nd\"} 3",
                "istio_tcp_connections_opened_total{reporter=\"waypoint\",source_principal=\"x,y=\\\"z\\\"\"} 1",
            ]
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
