//! Only enrolled cgroups and only ServiceEntry destinations are captured.
use egress_tests::*;

#[test]
fn traffic_from_outside_the_cgroup_is_untouched() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let dp = Dataplane::builder()
        .service_entry(&yaml::service_entry(
            "httpbin",
            "httpbin.test",
            upstream.addr(),
        ))
        .start();

    // The test process itself is in no captured cgroup.
    let direct = curl(&["-sS", "-i", &upstream.url("/direct")]).expect_success("direct curl");
    assert_eq!(direct.http_status(), Some(200), "{direct:?}");
    assert_eq!(direct.header("via"), None, "{direct:?}");

    // A captured request afterwards is logged; the direct one before it never was.
    dp.exec("default", "sleep")
        .curl(&["-sS", "-o", "/dev/null", &upstream.url("/captured")])
        .expect_success("captured curl");
    dp.access_log_line("\"GET /captured HTTP/1.1\"");
    let lines = dp.access_log_lines();
    assert!(
        !lines.iter().any(|line| line.contains("/direct")),
        "the direct request was logged: {lines:?}"
    );
}

#[test]
fn other_destinations_from_inside_the_cgroup_are_untouched() {
    if !require_privileges() {
        return;
    }
    let service = Upstream::http();
    let elsewhere = Upstream::http();
    let dp = Dataplane::builder()
        .service_entry(&yaml::service_entry(
            "httpbin",
            "httpbin.test",
            service.addr(),
        ))
        .start();

    let out = dp
        .exec("default", "sleep")
        .curl(&["-sS", "-i", &elsewhere.url("/elsewhere")])
        .expect_success("curl to a destination that is no ServiceEntry");

    assert_eq!(out.http_status(), Some(200), "{out:?}");
    assert_eq!(out.header("via"), None, "{out:?}");
    assert_eq!(elsewhere.hits().len(), 1);
    assert_eq!(service.hits().len(), 0);
}
