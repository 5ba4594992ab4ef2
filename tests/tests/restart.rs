//! Upgrades without a gap: a second `egress run` takes the listener over from the running one,
//! which drains on SIGTERM (in-flight requests finish within `--drain-timeout`, then it exits 0);
//! the kernel programs stay attached throughout, once each.
use std::{
    collections::HashMap,
    fs, thread,
    time::{Duration, Instant},
};

use egress_tests::*;

const VIA: &str = "1.1 egress-waypoint";

/// `default/sa/sleep` may GET anything on ServiceEntry `httpbin`; nobody else anything.
fn sleep_may_get() -> String {
    let rules = "  - from:
    - source:
        principals: [\"cluster.local/ns/default/sa/sleep\"]
    to:
    - operation:
        methods: [\"GET\"]
";
    yaml::httpbin_policy("httpbin", "ALLOW", rules)
}

/// A bounded load generator: `python3 -c LOAD HOST PORT STOP_FILE MAX_SECONDS`. Two threads
/// send requests over one keep-alive connection each (reconnecting only when a response says
/// `connection: close`, as a client must), two open a connection per request. It stops when
/// STOP_FILE exists or after MAX_SECONDS, and prints counts as JSON. Any error — refused,
/// reset, timeout, a status other than 200 — is a failure; nothing is retried.
const LOAD: &str = r#"
import http.client, json, os, sys, threading, time
host, port, stop_file, max_seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + max_seconds
lock = threading.Lock()
stats = {"keepalive_ok": 0, "per_request_ok": 0, "failed": 0, "no_via": 0,
         "keepalive_connections": 0, "errors": []}

def done():
    return time.monotonic() > deadline or os.path.exists(stop_file)

def count(key, error=None):
    with lock:
        stats[key] += 1
        if error is not None and len(stats["errors"]) < 20:
            stats["errors"].append(error)

def one(conn, path, close):
    conn.request("GET", path, headers={"Connection": "close"} if close else {})
    response = conn.getresponse()
    response.read()
    return response

def keepalive(worker):
    conn, n = None, 0
    while not done():
        n += 1
        path = "/ka/%d/%d" % (worker, n)
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            count("keepalive_connections")
        try:
            response = one(conn, path, False)
            if response.status != 200:
                count("failed", "%s: status %d" % (path, response.status))
            elif response.getheader("via") != "1.1 egress-waypoint":
                count("no_via", "%s: via %r" % (path, response.getheader("via")))
            else:
                count("keepalive_ok")
            if response.will_close:
                conn.close()
                conn = None
        except Exception as e:
            count("failed", "%s: %r" % (path, e))
            conn.close()
            conn = None
        time.sleep(0.005)

def per_request(worker):
    n = 0
    while not done():
        n += 1
        path = "/pr/%d/%d" % (worker, n)
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            response = one(conn, path, True)
            if response.status != 200:
                count("failed", "%s: status %d" % (path, response.status))
            elif response.getheader("via") != "1.1 egress-waypoint":
                count("no_via", "%s: via %r" % (path, response.getheader("via")))
            else:
                count("per_request_ok")
        except Exception as e:
            count("failed", "%s: %r" % (path, e))
        finally:
            conn.close()
        time.sleep(0.005)

threads = [threading.Thread(target=keepalive, args=(w,)) for w in range(2)]
threads += [threading.Thread(target=per_request, args=(w,)) for w in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(stats))
"#;

/// What the load generator printed.
#[derive(Debug)]
struct Load {
    keepalive_ok: u64,
    per_request_ok: u64,
    failed: u64,
    no_via: u64,
    keepalive_connections: u64,
    raw: String,
}

impl Load {
    fn parse(out: &Output) -> Self {
        let line = out.stdout.lines().last().unwrap_or_default();
        let field = |name: &str| -> u64 {
            let key = format!("\"{name}\": ");
            let at = line
                .find(&key)
                .unwrap_or_else(|| panic!("no {name} in the load generator's output: {out:?}"));
            line[at + key.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .expect("a count")
        };
        Load {
            keepalive_ok: field("keepalive_ok"),
            per_request_ok: field("per_request_ok"),
            failed: field("failed"),
            no_via: field("no_via"),
            keepalive_connections: field("keepalive_connections"),
            raw: line.to_owned(),
        }
    }
}

/// How many times each kernel program is attached to the dataplane's cgroup.
fn attachments(dp: &Dataplane) -> HashMap<String, usize> {
    let cgroup = dp.cgroup().to_string_lossy().into_owned();
    let shown = dp
        .bpftool(&["cgroup", "show", &cgroup])
        .expect_success("bpftool cgroup show");
    let mut counts = HashMap::new();
    for program in [
        "eg_connect4",
        "eg_connect6",
        "eg_sendmsg4",
        "eg_sendmsg6",
        "eg_sockops",
        "eg_getpeername4",
        "eg_getpeername6",
    ] {
        let n = shown
            .stdout
            .lines()
            .filter(|line| line.split_whitespace().last() == Some(program))
            .count();
        counts.insert(program.to_owned(), n);
    }
    counts
}

#[track_caller]
fn assert_attached_once(dp: &Dataplane) {
    let counts = attachments(dp);
    for (program, n) in &counts {
        assert_eq!(*n, 1, "{program} attached {n} times: {counts:?}");
    }
}

/// Waits (bounded) until the upstream has seen more than `count` requests.
#[track_caller]
/// A dataplane with `--drain-timeout drain` and a curl from `default/sleep` whose request the
/// upstream answers after `delay_ms`, in flight (the upstream has it) when this returns.
fn slow_request_in_flight(
    drain: &str,
    delay_ms: u64,
) -> (Upstream, Dataplane, thread::JoinHandle<Output>) {
    let upstream = Upstream::http();
    let dp = Dataplane::builder()
        .service_entry(&yaml::service_entry(
            "httpbin",
            "httpbin.test",
            upstream.addr(),
        ))
        .args(&["--drain-timeout", drain])
        .start();
    let mut slow = dp.exec("default", "sleep").command(
        "curl",
        &[
            "-sS",
            "-i",
            "--max-time",
            "20",
            &upstream.url(&format!("/delay/{delay_ms}")),
        ],
    );
    let slow = thread::spawn(move || run_bounded(&mut slow, Duration::from_secs(30)));
    wait_for_hits(&upstream, 0);
    (upstream, dp, slow)
}

fn wait_for_hits(upstream: &Upstream, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while upstream.hits().len() <= count {
        assert!(
            Instant::now() < deadline,
            "the upstream saw only {} requests within 20s (waiting for more than {count})",
            upstream.hits().len()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn replaced_twice_under_load_no_request_fails_or_goes_direct() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let drain = Duration::from_secs(10);
    let mut dp = Dataplane::builder()
        .service_entry(&yaml::service_entry(
            "httpbin",
            "httpbin.test",
            upstream.addr(),
        ))
        .config(&sleep_may_get())
        .args(&["--drain-timeout", "10s"])
        .start();
    assert_attached_once(&dp);

    let scratch = tempfile::tempdir().expect("a scratch directory");
    let stop = scratch.path().join("stop");
    let mut load = dp.exec("default", "sleep").command(
        "python3",
        &[
            "-c",
            LOAD,
            &upstream.addr().ip().to_string(),
            &upstream.port().to_string(),
            &stop.to_string_lossy(),
            "50",
        ],
    );
    let load = thread::spawn(move || run_bounded(&mut load, Duration::from_secs(60)));

    wait_for_hits(&upstream, 50);
    for _ in 0..2 {
        dp.replace(drain);
        // The new one serves (not only the old one's last responses).
        let seen = upstream.hits().len();
        wait_for_hits(&upstream, seen + 50);
    }
    fs::write(&stop, "").expect("writing the stop file");
    let out = load.join().expect("the load thread");
    let counts = Load::parse(&out.clone().expect_success("the load generator"));
    eprintln!("load: {}", counts.raw);

    assert_eq!(counts.failed, 0, "failed requests: {}", counts.raw);
    assert_eq!(counts.no_via, 0, "responses without via: {}", counts.raw);
    assert!(
        counts.keepalive_ok > 0 && counts.per_request_ok > 0,
        "both kinds of request ran: {}",
        counts.raw
    );
    assert!(
        counts.keepalive_connections > 2,
        "the keep-alive clients were told to reconnect (connection: close) when their \
         waypoint drained: {}",
        counts.raw
    );

    // Every request reached the upstream through the waypoint, none directly, and each has its
    // access-log line (none lost to a drain).
    let hits = upstream.hits();
    assert_eq!(
        hits.len() as u64,
        counts.keepalive_ok + counts.per_request_ok,
        "the upstream saw exactly the successful requests: {}",
        counts.raw
    );
    let direct: Vec<&Hit> = hits
        .iter()
        .filter(|hit| hit.header("via") != Some(VIA))
        .collect();
    assert!(direct.is_empty(), "requests that went direct: {direct:?}");
    let log = dp.access_log_lines();
    let logged: HashMap<&str, usize> = log.iter().fold(HashMap::new(), |mut seen, line| {
        if let Some(path) = line
            .split('"')
            .nth(1)
            .and_then(|request| request.split(' ').nth(1))
        {
            *seen.entry(path).or_default() += 1;
        }
        seen
    });
    for hit in &hits {
        assert_eq!(
            logged.get(hit.path.as_str()).copied(),
            Some(1),
            "one access-log line for {}",
            hit.path
        );
    }

    assert_attached_once(&dp);
    let status = dp.status().expect_success("egress status");
    assert!(status.stdout.contains("eg_connect4"), "{status:?}");
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_within_the_drain_timeout() {
    if !require_privileges() {
        return;
    }
    let (_upstream, mut dp, slow) = slow_request_in_flight("8s", 2000);

    let signalled = Instant::now();
    dp.sigterm();
    let status = dp.wait_exit(Duration::from_secs(8 + 5));
    let drained_in = signalled.elapsed();
    let out = slow.join().expect("the curl thread");
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "egress run exited 0 after draining"
    );
    let out = out.expect_success("the in-flight request");
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    assert_eq!(out.header("via").as_deref(), Some(VIA), "{out:?}");
    assert_eq!(
        out.header("connection").as_deref(),
        Some("close"),
        "a response during the drain closes its connection: {out:?}"
    );
    assert!(
        drained_in < Duration::from_secs(8),
        "exited once the request was done, not at the drain timeout ({drained_in:?})"
    );
    dp.access_log_line("\"GET /delay/2000 HTTP/1.1\" 200");
}

#[test]
fn a_request_past_the_drain_timeout_is_cut_off_and_the_process_exits() {
    if !require_privileges() {
        return;
    }
    let (_upstream, mut dp, slow) = slow_request_in_flight("1s", 15000);

    let signalled = Instant::now();
    dp.sigterm();
    let status = dp.wait_exit(Duration::from_secs(1 + 5));
    let exited_in = signalled.elapsed();
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "egress run exited 0 at the drain timeout"
    );
    assert!(
        exited_in < Duration::from_secs(5),
        "exited at the drain timeout, not when the request ended ({exited_in:?})"
    );
    let out = slow.join().expect("the curl thread");
    assert!(
        !out.success() && out.http_status().is_none(),
        "the request was cut off, no response: {out:?}"
    );
    dp.access_log_line("\"GET /delay/15000 HTTP/1.1\" 0 DC");
}
