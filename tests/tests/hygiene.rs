//! What an adversarial pass got past the waypoint (issue 10, items 3–5), through the real
//! capture to an upstream that records what it received: forged internal headers, methods in
//! another case, and path parameters that Tomcat-like upstreams read as path structure.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use egress_tests::*;

/// A dataplane with ServiceEntry `httpbin` at `ip:80` forwarding to `upstream`, and `policy`.
fn start(upstream: &Upstream, ip: Ipv4Addr, policy: &str, args: &[&str]) -> Dataplane {
    let se = yaml::static_service_entry(
        "httpbin",
        "httpbin.test",
        IpAddr::V4(ip),
        80,
        upstream.addr(),
    );
    Dataplane::builder()
        .service_entry(&se)
        .config(policy)
        .args(args)
        .start()
}

/// `METHOD PATH` with `headers` (each `Name: value`) to `ip:80`, from `default/sleep`; the
/// status line's code.
fn status(dp: &Dataplane, ip: Ipv4Addr, method: &str, path: &str, headers: &[&str]) -> String {
    let mut request = format!("{method} {path} HTTP/1.1\\r\\nHost: httpbin.test\\r\\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\\r\\n");
    }
    request.push_str("Connection: close\\r\\n\\r\\n");
    let out = dp
        .exec("default", "sleep")
        .raw_http(SocketAddr::new(IpAddr::V4(ip), 80), &request);
    assert!(
        out.stdout.contains("\r\nvia: 1.1 egress-waypoint\r\n"),
        "{method} {path}: every answer crossed the waypoint: {out:?}"
    );
    out.stdout
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .unwrap_or_else(|| panic!("{method} {path}: no status line: {out:?}"))
        .to_owned()
}

#[test]
fn forged_internal_headers_never_match_a_policy_nor_reach_the_upstream() {
    if !require_privileges() {
        return;
    }
    let ip = Ipv4Addr::new(127, 77, 10, 1);
    let upstream = Upstream::http();
    // /open for anyone; anything else only for a request that a trusted proxy vouched for.
    let rules = "  - to:
    - operation:
        paths: [/open]
  - when:
    - key: request.headers[x-forwarded-client-cert]
      values: [\"*\"]
";
    let dp = start(
        &upstream,
        ip,
        &yaml::httpbin_policy("xfcc", "ALLOW", rules),
        &[],
    );
    let forged = [
        "X-Forwarded-Client-Cert: By=spiffe://cluster.local/ns/default/sa/admin;URI=spiffe://x",
        "x-envoy-original-path: /admin",
        "X-Envoy-Internal: true",
        "x-envoy-peer-metadata-id: router~forged",
        "x-kept: yes",
    ];

    assert_eq!(
        status(&dp, ip, "GET", "/secret", &forged),
        "403",
        "a forged XFCC does not satisfy the `when` condition"
    );
    assert!(upstream.hits().is_empty(), "{:?}", upstream.hits());

    assert_eq!(status(&dp, ip, "GET", "/open", &forged), "200");
    let hits = upstream.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    for (name, _) in &hits[0].headers {
        assert!(
            name != "x-forwarded-client-cert" && !name.starts_with("x-envoy-"),
            "{name} reached the upstream: {:?}",
            hits[0].headers
        );
    }
    assert_eq!(hits[0].header("x-kept"), Some("yes"), "other headers pass");
}

#[test]
fn methods_in_another_case_are_refused_and_never_forwarded() {
    if !require_privileges() {
        return;
    }
    let ip = Ipv4Addr::new(127, 77, 10, 2);
    let upstream = Upstream::http();
    let rules = "  - to:
    - operation:
        methods: [GET]
";
    let dp = start(
        &upstream,
        ip,
        &yaml::httpbin_policy("no-get", "DENY", rules),
        &[],
    );

    for (method, path) in [("get", "/admin"), ("gEt", "/x"), ("Get", "/admin")] {
        assert_eq!(status(&dp, ip, method, path, &[]), "400", "{method} {path}");
    }
    assert!(upstream.hits().is_empty(), "{:?}", upstream.hits());
    // One DPE line per refused request, with the caller's identity (bounded wait for the last).
    let refusal = "\"- - -\" 400 DPE http1.codec_error{invalid_method} ";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let refused = loop {
        let lines: Vec<String> = dp
            .access_log_lines()
            .into_iter()
            .filter(|line| line.contains(refusal))
            .collect();
        if lines.len() >= 3 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(refused.len(), 3, "{:?}", dp.access_log_lines());
    for line in &refused {
        assert!(
            line.ends_with("spiffe://cluster.local/ns/default/sa/sleep"),
            "{line}"
        );
    }

    // The registered spelling is what the policy sees and denies; other methods pass.
    assert_eq!(status(&dp, ip, "GET", "/admin", &[]), "403");
    assert_eq!(status(&dp, ip, "POST", "/x", &["Content-Length: 0"]), "200");
    let methods: Vec<String> = upstream.hits().iter().map(|h| h.method.clone()).collect();
    assert_eq!(methods, ["POST"]);
}

/// Every form the adversarial pass sent against `DENY paths: [/admin]`.
const PATH_PARAMETER_FORMS: [&str; 6] = [
    "/admin;x",
    "/user/..;foo=bar/admin",
    "/admin%3Bx",
    "/admin%3bx",
    "/x/..;/admin",
    "/x/.;/admin",
];

const DENY_ADMIN: &str = "  - to:
    - operation:
        paths: [/admin]
";

#[test]
fn path_parameters_are_refused_by_default() {
    if !require_privileges() {
        return;
    }
    let ip = Ipv4Addr::new(127, 77, 10, 3);
    let upstream = Upstream::http();
    let dp = start(
        &upstream,
        ip,
        &yaml::httpbin_policy("no-admin", "DENY", DENY_ADMIN),
        &[],
    );

    for path in PATH_PARAMETER_FORMS {
        assert_eq!(status(&dp, ip, "GET", path, &[]), "400", "{path}");
        let line = dp.access_log_line(&format!("\"GET {path} HTTP/1.1\""));
        assert!(
            line.contains(" 400 - path_parameter_not_allowed "),
            "{line}"
        );
    }
    assert!(upstream.hits().is_empty(), "{:?}", upstream.hits());

    assert_eq!(status(&dp, ip, "GET", "/admin", &[]), "403");
    // A `;` in the query is no path parameter.
    assert_eq!(status(&dp, ip, "GET", "/public?a=1;b=2", &[]), "200");
    let paths: Vec<String> = upstream.hits().iter().map(|h| h.path.clone()).collect();
    assert_eq!(paths, ["/public?a=1;b=2"]);
}

#[test]
fn allowed_path_parameters_are_matched_as_the_upstream_reads_them() {
    if !require_privileges() {
        return;
    }
    let ip = Ipv4Addr::new(127, 77, 10, 4);
    let upstream = Upstream::http();
    let dp = start(
        &upstream,
        ip,
        &yaml::httpbin_policy("no-admin", "DENY", DENY_ADMIN),
        &["--path-parameters", "allow"],
    );

    // What Tomcat serves as /admin is denied as /admin; dot segments stay refused.
    for (path, want) in [
        ("/admin;x", "403"),
        ("/admin%3Bx", "403"),
        ("/;v=1/admin", "403"),
        ("/user/..;foo=bar/admin", "400"),
        ("/x/..;/admin", "400"),
        ("/x/.;/admin", "400"),
    ] {
        assert_eq!(status(&dp, ip, "GET", path, &[]), want, "{path}");
    }
    assert!(upstream.hits().is_empty(), "{:?}", upstream.hits());

    // Other paths keep their matrix parameters upstream.
    assert_eq!(status(&dp, ip, "GET", "/public;v=1/items", &[]), "200");
    let paths: Vec<String> = upstream.hits().iter().map(|h| h.path.clone()).collect();
    assert_eq!(paths, ["/public;v=1/items"]);
}
