//! IPv6 is no bypass: a v4-mapped address (`::ffff:a.b.c.d`) is captured like the IPv4 one.
use egress_tests::*;

#[test]
fn v4_mapped_destination_is_captured() {
    if !require_privileges() {
        return;
    }
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        panic!("IPv6 is disabled in this kernel: the v4-mapped path cannot be tested");
    }
    let upstream = Upstream::http();
    let dp = Dataplane::builder()
        .service_entry(&yaml::service_entry(
            "httpbin",
            "httpbin.test",
            upstream.addr(),
        ))
        .start();

    let url = format!("http://[::ffff:127.0.0.1]:{}/mapped", upstream.port());
    let out = dp
        .exec("default", "sleep")
        .curl(&["-sS", "-g", "-i", &url])
        .expect_success("curl to a v4-mapped ServiceEntry address");

    assert_eq!(out.http_status(), Some(200), "{out:?}");
    assert_eq!(
        out.header("via").as_deref(),
        Some("1.1 egress-waypoint"),
        "{out:?}"
    );
    assert_eq!(upstream.hits().len(), 1);
    dp.access_log_line("\"GET /mapped HTTP/1.1\" 200");
}
