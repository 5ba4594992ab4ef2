//! The kernel verdict cache (design §6): an L4-decidable deny learnt at the waypoint refuses the
//! identity's next connect() in the kernel (EPERM: no SYN, no waypoint), per identity, service
//! and port; a policy change makes it stale at once; an L7-conditional deny is never cached.
use std::net::{IpAddr, Ipv4Addr};

use egress_tests::*;

const SE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 4));
const RESOLVE: &str = "httpbin.test:80:127.77.0.4";
const URL: &str = "http://httpbin.test/get";

const DENY_EVIL: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-evil, namespace: default}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin}]
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/evil]}}]}]
";

const SLEEP_GET_ONLY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sleep-get, namespace: default}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin}]
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    to: [{operation: {methods: [GET]}}]
";

fn curl_twice() -> String {
    let one = format!(
        "curl -sS -o /dev/null -w '%{{http_code}}\\n' --connect-timeout 5 --max-time 10 --resolve {RESOLVE} {URL}; echo \"exit=$?\""
    );
    format!("{one}; {one}")
}

#[test]
fn an_l4_decidable_deny_is_refused_in_the_kernel_from_the_second_connect() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let se = yaml::static_service_entry("httpbin", "httpbin.test", SE_IP, 80, upstream.addr());
    let dp = Dataplane::builder()
        .service_entry(&se)
        .config(DENY_EVIL)
        .start();

    let out = dp
        .exec("default", "evil")
        .run("sh", &["-c", &curl_twice()])
        .expect_success("two curls as default/evil");
    let lines: Vec<&str> = out.stdout.lines().collect();
    // The first connect may already be refused (the deny is precomputed for known identities);
    // the second one must be.
    assert_eq!(lines.len(), 4, "{out:?}");
    assert!(
        lines[..2] == ["403", "exit=0"] || lines[..2] == ["000", "exit=7"],
        "first attempt: 403 from the waypoint or refused by the kernel: {out:?}"
    );
    assert_eq!(
        &lines[2..],
        ["000", "exit=7"],
        "second attempt refused in connect(): {out:?}"
    );
    assert!(
        out.stderr.contains("Operation not permitted") || out.stderr.contains("Couldn't connect"),
        "{out:?}"
    );
    let refused = dp.bpf_counter("refused_verdict_cache");
    assert!(refused >= 1, "the kernel counted the cached refusal");
    assert!(upstream.hits().is_empty(), "nothing reached the upstream");

    // A new process of the same identity (a new exec cgroup under the same service account):
    // refused at once, and the waypoint never sees it.
    let redirected = dp.bpf_counter("redirected_ipv4");
    let log_lines = dp.access_log_lines().len();
    let again = dp
        .exec("default", "evil")
        .curl(&["-sS", "--resolve", RESOLVE, URL]);
    assert_eq!(again.code, Some(7), "{again:?}");
    assert_eq!(dp.bpf_counter("refused_verdict_cache"), refused + 1);
    assert_eq!(
        dp.bpf_counter("redirected_ipv4"),
        redirected,
        "not redirected: no SYN sent"
    );
    assert_eq!(
        dp.access_log_lines().len(),
        log_lines,
        "the waypoint accepted nothing"
    );

    let status = dp.status().expect_success("egress status");
    assert!(
        status.stdout.contains("DENY") && status.stdout.contains("(current)"),
        "egress status decodes the cached deny: {status:?}"
    );

    // Other identities are not affected.
    let sleep = dp
        .exec("default", "sleep")
        .http_code(&["--resolve", RESOLVE, URL]);
    assert_eq!(sleep.stdout, "200", "{sleep:?}");

    // A policy change that allows it: the next connect succeeds at once.
    let hangups = dp.log_count("reason=\"SIGHUP\"");
    dp.write_config(&[&se]);
    dp.sighup();
    dp.wait_for_log("reason=\"SIGHUP\"", hangups + 1);
    let allowed = dp
        .exec("default", "evil")
        .http_code(&["--resolve", RESOLVE, URL]);
    assert_eq!(
        allowed.stdout, "200",
        "stale verdict ignored after the policy change: {allowed:?}"
    );
}

#[test]
fn a_deny_that_depends_on_the_method_is_never_cached() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let se = yaml::static_service_entry("httpbin", "httpbin.test", SE_IP, 80, upstream.addr());
    let dp = Dataplane::builder()
        .service_entry(&se)
        .config(SLEEP_GET_ONLY)
        .start();
    for _ in 0..2 {
        let post =
            dp.exec("default", "sleep")
                .http_code(&["-X", "POST", "--resolve", RESOLVE, URL]);
        assert_eq!(post.stdout, "403", "{post:?}");
        let get = dp
            .exec("default", "sleep")
            .http_code(&["--resolve", RESOLVE, URL]);
        assert_eq!(get.stdout, "200", "the identity still connects: {get:?}");
    }
    assert_eq!(dp.bpf_counter("refused_verdict_cache"), 0);
    assert_eq!(upstream.hits().len(), 2, "both GETs forwarded");
}

#[test]
fn an_overfilled_verdict_cache_only_costs_speed() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let se = yaml::static_service_entry("httpbin", "httpbin.test", SE_IP, 80, upstream.addr());
    let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-evil, namespace: default}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin}]
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/evil-0, cluster.local/ns/default/sa/evil-1, cluster.local/ns/default/sa/evil-2, cluster.local/ns/default/sa/evil-3]}}]
";
    // Room for two verdicts, four denied identities: entries are evicted all the time.
    let dp = Dataplane::builder()
        .service_entry(&se)
        .config(policy)
        .args(&["--verdict-cache-size", "2"])
        .start();
    for round in 0..3 {
        for i in 0..4 {
            let sa = format!("evil-{i}");
            let out = dp.exec("default", &sa).run("sh", &["-c", &curl_twice()]);
            for pair in out.stdout.lines().collect::<Vec<_>>().chunks(2) {
                assert!(
                    pair == ["403", "exit=0"] || pair == ["000", "exit=7"],
                    "round {round}, {sa}: denied by the waypoint or the kernel, never let through: {out:?}"
                );
            }
        }
        let sleep = dp
            .exec("default", "sleep")
            .http_code(&["--resolve", RESOLVE, URL]);
        assert_eq!(
            sleep.stdout, "200",
            "the allowed identity is never refused: {sleep:?}"
        );
    }
    assert_eq!(
        upstream.hits().len(),
        3,
        "only the allowed requests reached the upstream"
    );
    assert!(
        dp.bpf_counter("refused_verdict_cache") >= 1,
        "the cache still works"
    );
    assert!(
        dp.metrics().contains("egress_bpf_verdict_cache_entries "),
        "the entry count is exported"
    );
}

#[test]
fn two_service_entries_on_one_address_never_cache_a_deny_for_the_address() {
    if !require_privileges() {
        return;
    }
    let up_a = Upstream::http();
    let up_b = Upstream::http();
    let shared = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 6));
    let se_a = yaml::static_service_entry("a", "a.test", shared, 80, up_a.addr());
    let se_b = yaml::static_service_entry("b", "b.test", shared, 80, up_b.addr());
    // evil may not use a.test at all (an L4-decidable deny, were the address a's alone).
    let policy = DENY_EVIL.replace("name: httpbin", "name: a");
    let dp = Dataplane::builder()
        .service_entry(&se_a)
        .service_entry(&se_b)
        .config(&policy)
        .start();
    let get = |sa: &str, host: &str| {
        let resolve = format!("{host}:80:127.77.0.6");
        let url = format!("http://{host}/shared");
        dp.exec("default", sa)
            .http_code(&["--resolve", &resolve, &url])
            .stdout
    };
    for round in 0..3 {
        assert_eq!(
            get("evil", "a.test"),
            "403",
            "round {round}: a.test denies evil"
        );
        assert_eq!(
            get("evil", "b.test"),
            "200",
            "round {round}: b.test is never refused"
        );
        assert_eq!(get("sleep", "a.test"), "200", "round {round}");
    }
    assert_eq!(
        dp.bpf_counter("refused_verdict_cache"),
        0,
        "nothing refused in the kernel"
    );
    assert_eq!(
        up_a.hits().len(),
        3,
        "Host a.test went to a's endpoint (sleep only)"
    );
    assert_eq!(up_b.hits().len(), 3, "Host b.test went to b's endpoint");
}

/// `egress exec` of an identity the dataplane has never seen asks it to scan at once: the very
/// first connect() is already refused in the kernel, and the waypoint never sees it.
#[test]
fn a_new_exec_identity_is_refused_in_the_kernel_from_its_first_connect() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let se = yaml::static_service_entry("httpbin", "httpbin.test", SE_IP, 80, upstream.addr());
    let dp = Dataplane::builder()
        .service_entry(&se)
        .config(DENY_EVIL)
        .start();
    let redirected = dp.bpf_counter("redirected_ipv4");

    let first = dp
        .exec("default", "evil")
        .curl(&["-sS", "--resolve", RESOLVE, URL]);
    assert_eq!(first.code, Some(7), "refused in connect(): {first:?}");
    assert_eq!(dp.bpf_counter("refused_verdict_cache"), 1);
    assert_eq!(
        dp.bpf_counter("redirected_ipv4"),
        redirected,
        "not redirected: no SYN sent"
    );
    assert!(
        dp.access_log_lines().is_empty(),
        "the waypoint accepted nothing"
    );
    assert!(upstream.hits().is_empty());
}
