//! `/stats/prometheus` carries Istio's standard metrics with Istio's standard labels, valued as
//! Istio's waypoint values them, for an allowed and a denied request through the real kernel
//! programs and waypoint.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    thread,
    time::{Duration, Instant},
};

use egress_tests::*;

const SE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 11));
const RESOLVE: &str = "httpbin.test:80:127.77.0.11";

/// `default/sa/sleep` may GET /get and nothing else.
const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: egress
spec:
  targetRefs:
  - kind: ServiceEntry
    group: networking.istio.io
    name: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/default/sa/sleep\"]
    to:
    - operation:
        paths: [\"/get\"]
";

#[test]
fn allowed_and_denied_requests_carry_istios_standard_labels() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    // The ServiceEntry lives in another namespace than the caller, so the two cannot be mixed up.
    let se = yaml::static_service_entry("httpbin", "httpbin.test", SE_IP, 80, upstream.addr())
        .replace("namespace: default", "namespace: egress");
    let dp = Dataplane::builder()
        .service_entry(&se)
        .config(POLICY)
        .start();

    let sleep = dp.exec("default", "sleep");
    let allowed = sleep.http_code(&["--resolve", RESOLVE, "http://httpbin.test/get"]);
    assert_eq!(allowed.stdout, "200", "{allowed:?}");
    let denied = sleep.http_code(&["--resolve", RESOLVE, "http://httpbin.test/post"]);
    assert_eq!(denied.stdout, "403", "{denied:?}");
    dp.access_log_line("\"GET /post HTTP/1.1\" 403");

    // The request is counted when its access-log line is written; allow for the moment between.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = dp.metrics();
        let requests: f64 = samples(&text, "istio_requests_total")
            .iter()
            .map(|(_, n)| n)
            .sum();
        if requests >= 2.0 || Instant::now() > deadline {
            break text;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let expected_connection = [
        ("reporter", "waypoint"),
        ("source_workload", "sleep"),
        ("source_canonical_service", "sleep"),
        ("source_canonical_revision", "latest"),
        ("source_workload_namespace", "default"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/sleep",
        ),
        ("source_app", "unknown"),
        ("source_version", "unknown"),
        ("source_cluster", "unknown"),
        ("destination_workload", "unknown"),
        ("destination_workload_namespace", "unknown"),
        ("destination_principal", "unknown"),
        ("destination_app", "unknown"),
        ("destination_version", "unknown"),
        ("destination_service", "httpbin.test"),
        ("destination_canonical_service", "unknown"),
        ("destination_canonical_revision", "unknown"),
        ("destination_service_name", "httpbin.test"),
        ("destination_service_namespace", "egress"),
        ("destination_cluster", "unknown"),
        ("connection_security_policy", "none"),
    ];
    let request = |code: &str| {
        let mut labels: BTreeMap<String, String> = expected_connection
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in [
            ("request_protocol", "http"),
            ("response_code", code),
            ("grpc_response_status", ""),
            ("response_flags", "-"),
        ] {
            labels.insert(k.into(), v.into());
        }
        labels
    };
    for code in ["200", "403"] {
        let want = request(code);
        let found: Vec<_> = samples(&text, "istio_requests_total")
            .into_iter()
            .filter(|(labels, _)| labels.get("response_code").map(String::as_str) == Some(code))
            .collect();
        assert_eq!(
            found,
            vec![(want.clone(), 1.0)],
            "one {code} request with Istio's labels:\n{text}"
        );
        for histogram in [
            "istio_request_duration_milliseconds_count",
            "istio_request_bytes_count",
            "istio_response_bytes_count",
        ] {
            assert!(
                samples(&text, histogram).contains(&(want.clone(), 1.0)),
                "{histogram} counts the {code} request with the labels of istio_requests_total:\n{text}"
            );
        }
    }
    // The 403 body is "RBAC: access denied" (19 bytes).
    assert!(
        samples(&text, "istio_response_bytes_sum")
            .iter()
            .any(|(labels, value)| *labels == request("403") && *value == 19.0),
        "istio_response_bytes of the deny:\n{text}"
    );

    let mut tcp: BTreeMap<String, String> = expected_connection
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tcp.insert("request_protocol".into(), "tcp".into());
    tcp.insert("response_flags".into(), "-".into());
    let opened = samples(&text, "istio_tcp_connections_opened_total");
    assert_eq!(
        opened,
        vec![(tcp, 2.0)],
        "two connections (one per curl), TCP labels:\n{text}"
    );
    assert!(
        dp.bpf_counter("refused_verdict_cache") == 0,
        "an L7 deny is never cached"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("egress_bpf_verdict_cache_entries ")),
        "the verdict cache gauge:\n{text}"
    );
}

/// The samples of metric `name` (exactly; `name_bucket` is another metric): labels and value.
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter_map(|rest| {
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => parse_labels(rest)?,
                None => (BTreeMap::new(), rest.strip_prefix(' ')?),
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// Parses `k="v",...}` (values escaped as the text format says) and returns what follows `}`.
fn parse_labels(mut rest: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
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
        labels.insert(key.to_owned(), value);
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}
