//! `egress run --kernel-log`: the kernel programs log each decision through aya-log, and the
//! waypoint writes them into its own log (target `egress::kernel`) with their reason. Off by
//! default: then no kernel line appears.
use std::net::{IpAddr, Ipv4Addr};

use egress_tests::*;

/// The ServiceEntry address the captured curl dials.
const SE_IP: Ipv4Addr = Ipv4Addr::new(127, 77, 20, 1);
/// Target of every kernel line in the egress log.
const KERNEL_TARGET: &str = "egress::kernel";

/// A dataplane in REGISTRY_ONLY mode (only 127.0.0.1 allowed) with one ServiceEntry, plus a
/// destination that is no ServiceEntry address.
fn setup(se_ip: Ipv4Addr, other_ip: Ipv4Addr, extra: &[&str]) -> (Upstream, Upstream, Dataplane) {
    let upstream = Upstream::http();
    let other = Upstream::http_on(IpAddr::V4(other_ip));
    let mut args = vec![
        "--outbound-policy",
        "registry-only",
        "--allow-cidr",
        "127.0.0.1/32",
    ];
    args.extend_from_slice(extra);
    let dp = Dataplane::builder()
        .service_entry(&yaml::static_service_entry(
            "httpbin",
            "httpbin.test",
            IpAddr::V4(se_ip),
            80,
            upstream.addr(),
        ))
        .args(&args)
        .start();
    (upstream, other, dp)
}

/// A captured curl through the ServiceEntry (200), then one to `other` (refused in connect()).
fn redirect_and_refuse(dp: &Dataplane, se_ip: Ipv4Addr, other: &Upstream) {
    let resolve = format!("httpbin.test:80:{se_ip}");
    let se =
        dp.exec("default", "sleep")
            .http_code(&["--resolve", &resolve, "http://httpbin.test/get"]);
    assert_eq!(se.stdout, "200", "ServiceEntry traffic works: {se:?}");
    let refused = dp
        .exec("default", "sleep")
        .curl(&["-sS", &other.url("/not-registered")]);
    assert_eq!(refused.code, Some(7), "refused in connect(): {refused:?}");
}

#[test]
fn kernel_log_shows_a_redirect_and_a_registry_only_refusal_with_their_reason() {
    if !require_privileges() {
        return;
    }
    let other_ip = Ipv4Addr::new(127, 0, 0, 20);
    let (_upstream, other, dp) = setup(SE_IP, other_ip, &["--kernel-log"]);
    redirect_and_refuse(&dp, SE_IP, &other);

    // e.g. `INFO egress::kernel: redirected dst=127.77.20.1:80 cgroup=1234 identity=… service=0`
    dp.wait_for_log(&format!("redirected dst={SE_IP}:80 cgroup="), 1);
    dp.wait_for_log(
        &format!(
            "refused reason=registry_only dst={other_ip}:{} cgroup=",
            other.port()
        ),
        1,
    );
    assert!(
        dp.log_count(KERNEL_TARGET) >= 2,
        "the lines carry target {KERNEL_TARGET}"
    );
    // The waypoint's own upstream connect to the (allowed) upstream is exempt or passed, and
    // logged as such; never redirected.
    assert_eq!(dp.log_count("redirected dst=127.0.0.1:"), 0);
}

#[test]
fn without_kernel_log_no_kernel_line_appears() {
    if !require_privileges() {
        return;
    }
    let se_ip = Ipv4Addr::new(127, 77, 20, 2);
    let other_ip = Ipv4Addr::new(127, 0, 0, 21);
    let (_upstream, other, dp) = setup(se_ip, other_ip, &[]);
    redirect_and_refuse(&dp, se_ip, &other);
    // The access-log line shows the request went through the waypoint, so any kernel line
    // would have been written by now.
    dp.access_log_line("httpbin.test");
    assert!(dp.bpf_counter("refused_registry_only") >= 1);
    assert_eq!(
        dp.log_count(KERNEL_TARGET),
        0,
        "no kernel log without the flag"
    );
    assert_eq!(dp.log_count("reason=registry_only"), 0);
}
