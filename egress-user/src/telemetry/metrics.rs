//! Counters kept by the waypoint, rendered in the Prometheus text exposition format.
//!
//! A process-wide registry (like Prometheus' default registry): the proxy increments, the admin
//! endpoint renders, and neither has to carry a handle through the other's API. A later change
//! replaces this with prometheus-client and histograms.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{LazyLock, Mutex},
};

/// `istio_requests_total{reporter, source_principal, destination_service, response_code, response_flags}`.
pub const REQUESTS_TOTAL: &str = "istio_requests_total";
/// `istio_tcp_connections_opened_total{reporter, source_principal, destination_service}`.
pub const TCP_OPENED_TOTAL: &str = "istio_tcp_connections_opened_total";
/// `istio_tcp_connections_closed_total{reporter, source_principal, destination_service}`.
pub const TCP_CLOSED_TOTAL: &str = "istio_tcp_connections_closed_total";
/// `istio_tcp_received_bytes_total{...}`: bytes from the downstream on spliced connections.
pub const TCP_RECEIVED_BYTES_TOTAL: &str = "istio_tcp_received_bytes_total";
/// `istio_tcp_sent_bytes_total{...}`: bytes to the downstream on spliced connections.
pub const TCP_SENT_BYTES_TOTAL: &str = "istio_tcp_sent_bytes_total";

/// `istio_request_duration_milliseconds{...}`: a histogram with the labels of
/// `istio_requests_total`, over Istio's default buckets.
pub const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";

/// Istio's default buckets for request durations, in milliseconds.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The `reporter` label value for everything the waypoint reports.
pub const REPORTER: &str = "waypoint";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
}

/// One histogram series: per-bucket counts (not cumulative), sum and count.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; DURATION_BUCKETS_MS.len()],
    sum: f64,
    count: u64,
}

/// Monotonic counters and histograms keyed by name and label set.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Series, u64>>,
    histograms: Mutex<BTreeMap<Series, Histogram>>,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::default);

impl Metrics {
    /// The process-wide registry.
    pub fn global() -> &'static Metrics {
        &GLOBAL
    }

    /// Adds `by` to the counter `name{labels}`. Label order is part of the series' identity:
    /// callers use one order per metric.
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], by: u64) {
        let series = Series {
            name,
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        };
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *counters.entry(series).or_default() += by;
    }

    /// Records one observation of `value` (milliseconds) in the histogram `name{labels}`.
    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        let series = Series {
            name,
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        };
        let mut histograms = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        let h = histograms.entry(series).or_default();
        if let Some(i) = DURATION_BUCKETS_MS.iter().position(|b| value <= *b) {
            h.buckets[i] += 1;
        }
        h.sum += value;
        h.count += 1;
    }

    /// The current value of one series (0 when it was never incremented).
    pub fn get(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        let series = Series {
            name,
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        };
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters.get(&series).copied().unwrap_or(0)
    }

    /// Appends every counter, grouped by name under one `# TYPE` line each.
    pub fn render(&self, out: &mut String) {
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut current = "";
        for (series, value) in counters.iter() {
            if series.name != current {
                current = series.name;
                let _ = writeln!(out, "# TYPE {current} counter");
            }
            out.push_str(series.name);
            if !series.labels.is_empty() {
                out.push('{');
                for (i, (key, value)) in series.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{key}=\"");
                    escape_label(value, out);
                    out.push('"');
                }
                out.push('}');
            }
            let _ = writeln!(out, " {value}");
        }
        drop(counters);
        let histograms = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        let mut current = "";
        for (series, h) in histograms.iter() {
            if series.name != current {
                current = series.name;
                let _ = writeln!(out, "# TYPE {current} histogram");
            }
            let mut cumulative = 0;
            for (bound, n) in DURATION_BUCKETS_MS.iter().zip(h.buckets) {
                cumulative += n;
                let le = bound.to_string();
                write_series(out, series.name, "_bucket", &series.labels, Some(&le));
                let _ = writeln!(out, " {cumulative}");
            }
            write_series(out, series.name, "_bucket", &series.labels, Some("+Inf"));
            let _ = writeln!(out, " {}", h.count);
            write_series(out, series.name, "_sum", &series.labels, None);
            let _ = writeln!(out, " {}", h.sum);
            write_series(out, series.name, "_count", &series.labels, None);
            let _ = writeln!(out, " {}", h.count);
        }
    }
}

/// `name<suffix>{labels[,le="..."]}`.
fn write_series(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&'static str, String)],
    le: Option<&str>,
) {
    out.push_str(name);
    out.push_str(suffix);
    out.push('{');
    for (i, (key, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{key}=\"");
        escape_label(value, out);
        out.push('"');
    }
    if let Some(le) = le {
        if !labels.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "le=\"{le}\"");
    }
    out.push('}');
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let metrics = Metrics::default();
        let labels = [("reporter", "waypoint")];
        metrics.observe(REQUEST_DURATION, &labels, 0.3);
        metrics.observe(REQUEST_DURATION, &labels, 7.0);
        metrics.observe(REQUEST_DURATION, &labels, 9_999_999.0);
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(
            out.contains("# TYPE istio_request_duration_milliseconds histogram\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "istio_request_duration_milliseconds_bucket{reporter=\"waypoint\",le=\"0.5\"} 1\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "istio_request_duration_milliseconds_bucket{reporter=\"waypoint\",le=\"10\"} 2\n"
            ),
            "{out}"
        );
        assert!(out.contains("istio_request_duration_milliseconds_bucket{reporter=\"waypoint\",le=\"3600000\"} 2\n"), "{out}");
        assert!(
            out.contains(
                "istio_request_duration_milliseconds_bucket{reporter=\"waypoint\",le=\"+Inf\"} 3\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("istio_request_duration_milliseconds_count{reporter=\"waypoint\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "istio_request_duration_milliseconds_sum{reporter=\"waypoint\"} 10000006.3\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn renders_grouped_and_escaped() {
        let metrics = Metrics::default();
        metrics.add(
            REQUESTS_TOTAL,
            &[("reporter", "waypoint"), ("response_code", "200")],
            1,
        );
        metrics.add(
            REQUESTS_TOTAL,
            &[("reporter", "waypoint"), ("response_code", "200")],
            2,
        );
        metrics.add(
            REQUESTS_TOTAL,
            &[("reporter", "waypoint"), ("response_code", "503")],
            1,
        );
        metrics.add(TCP_OPENED_TOTAL, &[("source_principal", "a\"b\\c")], 1);
        let mut out = String::new();
        metrics.render(&mut out);
        assert_eq!(
            out,
            "# TYPE istio_requests_total counter\n\
             istio_requests_total{reporter=\"waypoint\",response_code=\"200\"} 3\n\
             istio_requests_total{reporter=\"waypoint\",response_code=\"503\"} 1\n\
             # TYPE istio_tcp_connections_opened_total counter\n\
             istio_tcp_connections_opened_total{source_principal=\"a\\\"b\\\\c\"} 1\n"
        );
        assert_eq!(
            metrics.get(
                REQUESTS_TOTAL,
                &[("reporter", "waypoint"), ("response_code", "200")]
            ),
            3
        );
    }
}
