//! `resolution: DNS` without `addresses`: the kernel captures what the host resolves to, and the
//! waypoint forwards to the resolved address. `localhost` resolves offline (from /etc/hosts) to
//! 127.0.0.1 and ::1; IPv4 is preferred upstream and ::1 is refused in the kernel.
//!
//! Re-resolution runs against a real resolver (Debian `dnsmasq` on a loopback address, named by
//! `egress run --resolv-conf`): a host whose answer changes is captured at its new address and
//! released at its old one within its TTL plus the refresh floor; and a resolver that never
//! answers delays no policy change.
use std::{
    net::{Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use egress_tests::*;

fn dns_service_entry(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: local
  namespace: default
spec:
  hosts: [localhost]
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  resolution: DNS
"
    )
}

#[test]
fn dns_resolved_host_addresses_are_captured_and_used_upstream() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let dp = Dataplane::builder()
        .service_entry(&dns_service_entry(upstream.port()))
        .start();

    for i in 0..3 {
        let url = format!("http://localhost:{}/dns-{i}", upstream.port());
        let out = dp
            .exec("default", "sleep")
            .curl(&["-sS", "-i", "-4", &url])
            .expect_success("curl to a DNS ServiceEntry");
        assert_eq!(out.http_status(), Some(200), "{out:?}");
        assert_eq!(
            out.header("via").as_deref(),
            Some("1.1 egress-waypoint"),
            "{out:?}"
        );
    }
    assert_eq!(
        upstream.hits().len(),
        3,
        "every request reached the IPv4 upstream"
    );
    let line = dp.access_log_line("/dns-2");
    assert!(
        line.contains(&format!("\"127.0.0.1:{}\"", upstream.port())),
        "upstream host is the resolved IPv4 address: {line}"
    );
    assert!(
        line.contains(&format!("outbound|{}||localhost", upstream.port())),
        "{line}"
    );
}

/// Test addresses of this file, on loopback and used by no other test: the resolvers at port 53,
/// the hosts they name.
const MOVING_RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 53, 1);
const SILENT_RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 53, 2);
const OLD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 54, 1);
const NEW_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 54, 2);
const POLICY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 54, 3);
/// The refresh floor the tests run egress with (`--dns-min-refresh`).
const MIN_REFRESH: Duration = Duration::from_secs(1);

fn named_dns_service_entry(name: &str, host: &str, port: u16) -> String {
    dns_service_entry(port)
        .replace("name: local", &format!("name: {name}"))
        .replace("hosts: [localhost]", &format!("hosts: [{host}]"))
}

/// `curl -i http://moved.test:PORT/PATH` dialling `ip` from the captured cgroup: whether the
/// waypoint answered (its `via` header), and the response.
fn through_waypoint(dp: &Dataplane, ip: Ipv4Addr, port: u16, path: &str) -> (bool, Output) {
    let resolve = format!("moved.test:{port}:{ip}");
    let url = format!("http://moved.test:{port}{path}");
    let out = dp
        .exec("default", "sleep")
        .curl(&["-sS", "-i", "--resolve", &resolve, &url])
        .expect_success("curl to moved.test");
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    let via = out.header("via").as_deref() == Some("1.1 egress-waypoint");
    (via, out)
}

#[test]
fn dns_moved_host_is_captured_at_its_new_address_and_released_at_its_old_one() {
    if !require_privileges() || !require_tools(&["dnsmasq"]) {
        return;
    }
    // Both addresses serve on the same port; under allow-any an address that is not captured
    // is reached directly, without the waypoint.
    let new = Upstream::http_on(NEW_IP.into());
    let port = new.port();
    let old = Upstream::http_at(SocketAddr::from((OLD_IP, port)));
    let resolver = Resolver::dnsmasq(MOVING_RESOLVER, &[("moved.test", OLD_IP)]);
    let resolv_conf = resolver.resolv_conf();
    let dp = Dataplane::builder()
        .service_entry(&named_dns_service_entry("moved", "moved.test", port))
        .args(&[
            "--resolv-conf",
            &resolv_conf.to_string_lossy(),
            "--dns-min-refresh",
            "1s",
        ])
        .start();

    let (via, out) = through_waypoint(&dp, OLD_IP, port, "/before-old");
    assert!(via, "the resolved address is captured at start: {out:?}");
    let (via, out) = through_waypoint(&dp, NEW_IP, port, "/before-new");
    assert!(!via, "the other address is not captured yet: {out:?}");
    assert_eq!(new.hits().len(), 1, "reached directly");

    resolver.set_hosts(&[("moved.test", NEW_IP)]);
    let moved = Instant::now();
    // The old answer is asked again within its TTL (or the floor, when longer); the margin is
    // for a loaded machine. Before the fix the timer never fired between reloads.
    let bound = RESOLVER_TTL.max(MIN_REFRESH) + MIN_REFRESH + Duration::from_secs(6);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (via, out) = through_waypoint(&dp, NEW_IP, port, &format!("/after-{attempt}"));
        if via {
            break;
        }
        assert!(
            moved.elapsed() < bound,
            "the new address {NEW_IP} was not captured within {bound:?} of the move: {out:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let line = dp.access_log_line(&format!("/after-{attempt}"));
    assert!(
        line.contains(&format!("\"{NEW_IP}:{port}\"")),
        "the waypoint forwards to the new address: {line}"
    );

    // Published in the same table: the old address is released at once.
    let (via, out) = through_waypoint(&dp, OLD_IP, port, "/old-released");
    assert!(!via, "the old address is no longer captured: {out:?}");
    assert!(
        old.hits().iter().any(|h| h.path == "/old-released"),
        "reached the old address directly"
    );
    let dump = dp
        .bpftool(&[
            "map",
            "dump",
            "pinned",
            &dp.pin_dir().join("EG_SERVICES4_V1").to_string_lossy(),
        ])
        .expect_success("bpftool map dump");
    // The new address and the host's VIP (240.240.0.0/16, design §11), nothing else.
    assert_eq!(
        dump.stdout.matches("\"service_id\"").count(),
        2,
        "two captured addresses (the new one and the VIP) in the kernel: {dump:?}"
    );
}

/// An ALLOW policy on ServiceEntry `httpbin` for requests to `path` only.
fn policy_allowing(path: &str) -> String {
    let rules = format!("  - to:\n    - operation:\n        paths: [\"{path}\"]\n");
    yaml::httpbin_policy("httpbin", "ALLOW", &rules)
}

#[test]
fn dns_silent_resolver_delays_no_policy_change() {
    if !require_privileges() {
        return;
    }
    let silent = SilentResolver::on(SILENT_RESOLVER);
    let upstream = Upstream::http_on(POLICY_IP.into());
    let service = yaml::service_entry("httpbin", "httpbin.test", upstream.addr());
    let stuck = named_dns_service_entry("stuck", "stuck.test", upstream.port());
    let resolv_conf = silent.resolv_conf();
    let dp = Dataplane::builder()
        .service_entry(&service)
        .service_entry(&stuck)
        .config(&policy_allowing("/get"))
        .args(&[
            "--resolv-conf",
            &resolv_conf.to_string_lossy(),
            "--dns-min-refresh",
            "1s",
        ])
        .start();
    let code = || {
        dp.exec("default", "sleep")
            .http_code(&[&upstream.url("/get")])
            .stdout
    };
    assert_eq!(code(), "200", "the first policy allows /get");

    // Well under the 5 s a lookup may take: a reload that waited on DNS would miss it.
    let bound = Duration::from_secs(3);
    for swap in 1..=10 {
        let (path, want) = if swap % 2 == 1 {
            ("/other", "403")
        } else {
            ("/get", "200")
        };
        dp.write_config(&[&service, &stuck, &policy_allowing(path)]);
        dp.sighup();
        let sent = Instant::now();
        loop {
            let got = code();
            if got == want {
                break;
            }
            assert!(
                sent.elapsed() < bound,
                "policy swap {swap} (allow {path}) not applied within {bound:?}: got {got}, want {want}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}
