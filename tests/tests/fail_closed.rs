//! Capture outlives the waypoint: while it is down, ServiceEntry destinations are refused, never
//! reached directly; a restart picks up the pinned links without attaching twice.
use egress_tests::*;

#[test]
fn killed_waypoint_fails_closed_and_a_restart_recovers() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let mut dp = Dataplane::builder()
        .service_entry(&yaml::service_entry(
            "httpbin",
            "httpbin.test",
            upstream.addr(),
        ))
        .start();
    let sleep = |dp: &Dataplane, path: &str| {
        dp.exec("default", "sleep")
            .curl(&["-sS", "-i", &upstream.url(path)])
    };

    dp.kill();
    let refused = sleep(&dp, "/while-down");
    assert_eq!(
        refused.code,
        Some(7),
        "curl could not connect (exit 7), it was not let through: {refused:?}"
    );
    assert!(
        upstream.hits().is_empty(),
        "the upstream was reached directly while the waypoint was down: {:?}",
        upstream.hits()
    );

    dp.restart();
    let out = sleep(&dp, "/after-restart").expect_success("curl after the restart");
    assert_eq!(
        out.header("via").as_deref(),
        Some("1.1 egress-waypoint"),
        "{out:?}"
    );
    let paths: Vec<String> = upstream.hits().into_iter().map(|hit| hit.path).collect();
    assert_eq!(paths, ["/after-restart"]);

    let cgroup = dp.cgroup().to_string_lossy().into_owned();
    let attached = dp
        .bpftool(&["cgroup", "show", &cgroup])
        .expect_success("bpftool cgroup show");
    for program in [
        "eg_connect4",
        "eg_connect6",
        "eg_sendmsg4",
        "eg_sendmsg6",
        "eg_sockops",
        "eg_getpeername4",
        "eg_getpeername6",
    ] {
        let count = attached
            .stdout
            .lines()
            .filter(|line| line.split_whitespace().last() == Some(program))
            .count();
        assert_eq!(count, 1, "{program} attached once:\n{}", attached.stdout);
    }
}
