//! Ports whose protocol is not HTTP are spliced through unchanged: the bytes reach the upstream
//! as sent (no `via` added), and the access log has one line per connection with byte counts.
use egress_tests::*;

#[test]
fn tcp_ports_are_spliced_with_one_log_line_per_connection() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let se = yaml::as_tcp(&yaml::service_entry(
        "opaque",
        "opaque.test",
        upstream.addr(),
    ));
    let dp = Dataplane::builder().service_entry(&se).start();

    let out = dp
        .exec("default", "sleep")
        .curl(&["-sS", "-i", &upstream.url("/spliced")])
        .expect_success("curl over a spliced TCP port");
    assert_eq!(out.http_status(), Some(200), "{out:?}");
    assert_eq!(out.header("via"), None, "bytes pass unchanged: {out:?}");
    assert_eq!(upstream.hits().len(), 1);
    assert_eq!(
        upstream.hits()[0].header("via"),
        None,
        "the request reached the upstream unchanged"
    );

    let lines = dp.access_log_lines_at_least(1);
    assert_eq!(lines.len(), 1, "one line per connection: {lines:?}");
    let line = &lines[0];
    assert!(line.contains("\"- - -\" 0 "), "a TCP line: {line}");
    assert!(
        line.contains(&format!("outbound|{}||opaque.test", upstream.port())),
        "{line}"
    );
    assert!(
        line.ends_with("spiffe://cluster.local/ns/default/sa/sleep"),
        "{line}"
    );
}
