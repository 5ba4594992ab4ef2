//! Ambiguous HTTP framing through the real capture (design §8, invariant 3): a workload in a
//! captured cgroup writes raw requests to a ServiceEntry address; the kernel redirects them to
//! the waypoint, which refuses them itself — never forwarded, answered with `via`, logged `DPE`.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use egress_tests::*;

const SE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 77, 2, 1));

fn raw(dp: &Dataplane, request: &str) -> Output {
    dp.exec("default", "sleep")
        .raw_http(SocketAddr::new(SE_IP, 80), request)
}

#[test]
fn ambiguous_requests_are_refused_by_the_waypoint_and_never_reach_the_upstream() {
    if !require_privileges() {
        return;
    }
    let upstream = Upstream::http();
    let se = yaml::static_service_entry("httpbin", "httpbin.test", SE_IP, 80, upstream.addr());
    let dp = Dataplane::builder().service_entry(&se).start();

    for (request, status, details) in [
        // The classic CL.TE smuggle: a front end that trusts Content-Length would forward the
        // "0" chunk and a second request hidden in the body.
        (
            r"POST /post HTTP/1.1\r\nHost: httpbin.test\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: httpbin.test\r\n\r\n",
            "400",
            "http1.content_length_and_chunked_not_allowed",
        ),
        (
            r"POST /post HTTP/1.1\r\nHost: httpbin.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "501",
            "http1.invalid_transfer_encoding",
        ),
        (
            r"GET /get HTTP/1.1\r\nHost: httpbin.test\r\nHost: evil.example\r\n\r\n",
            "400",
            "duplicate_host_header",
        ),
        (
            r"POST /post HTTP/1.1\r\nHost: httpbin.test\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
            "400",
            "http1.codec_error{invalid_chunk_size}",
        ),
        (
            r"GET /get HTTP/1.1\r\nHost: httpbin.test\r\nX-A: a\x00b\r\n\r\n",
            "400",
            "http1.invalid_characters",
        ),
        (
            r"GET /get HTTP/1.1\r\nHost: httpbin.test\r\nX-A: a\nTransfer-Encoding: chunked\r\n\r\n",
            "400",
            "http1.codec_error{bare_lf}",
        ),
    ] {
        let out = raw(&dp, request);
        assert!(
            out.stdout.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request} → {out:?}"
        );
        assert!(
            out.stdout.contains("\r\nvia: 1.1 egress-waypoint\r\n"),
            "{out:?}"
        );
        assert!(out.stdout.contains("\r\nconnection: close\r\n"), "{out:?}");
        let line = dp.access_log_line(details);
        assert!(
            line.contains(&format!("\"- - -\" {status} DPE {details} "))
                && line.ends_with("spiffe://cluster.local/ns/default/sa/sleep"),
            "{line}"
        );
    }
    assert!(
        upstream.hits().is_empty(),
        "nothing reached the upstream: {:?}",
        upstream.hits()
    );

    // The same path carries a well-framed request.
    let out = raw(
        &dp,
        r"POST /post HTTP/1.1\r\nHost: httpbin.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(out.stdout.starts_with("HTTP/1.1 "), "{out:?}");
    assert!(!out.stdout.contains("DPE"), "{out:?}");
    let paths: Vec<String> = upstream.hits().iter().map(|h| h.path.clone()).collect();
    assert_eq!(paths, ["/post"], "only the well-framed request arrived");
}
