//! Cases from Istio's own documentation and tests, and the seed walkthrough.
use super::*;

/// The seed: `default/sa/sleep` may only GET /get on httpbin.org, `default/sa/admin` anything.
const SEED: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: default}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin.org}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    to: [{operation: {methods: [GET], paths: [/get]}}]
  - from: [{source: {principals: [cluster.local/ns/default/sa/admin]}}]
";

const HTTPBIN: Target<'static> = Target {
    namespace: "default",
    service_entry: "httpbin.org",
};

// Seed walkthrough (issue 3): sleep GET /get 200, sleep POST /post 403 with
// `rbac_access_denied_matched_policy[none]`, admin POST /post 200.
#[test]
fn seed() {
    let set = policy_set(SEED);
    let get = decide_for(&set, HTTPBIN, &http("default/sleep", "GET", "/get"));
    assert!(get.allowed);
    assert_eq!(get.matched_policy(), "ns[default]-policy[httpbin]-rule[0]");
    assert!(!get.l4_decidable, "another method or path is denied");

    let post = decide_for(&set, HTTPBIN, &http("default/sleep", "POST", "/post"));
    assert!(!post.allowed);
    assert_eq!((post.policy.as_ref(), post.rule), (None, None));
    assert_eq!(
        post.denied_details().as_deref(),
        Some("rbac_access_denied_matched_policy[none]")
    );

    let admin = decide_for(&set, HTTPBIN, &http("default/admin", "POST", "/post"));
    assert!(admin.allowed);
    assert_eq!(
        admin.matched_policy(),
        "ns[default]-policy[httpbin]-rule[1]"
    );
    assert!(admin.l4_decidable, "admin is allowed whatever the request");

    // Nobody else gets in, whatever they send: a deny the kernel may cache.
    for req in [
        http("default/other", "GET", "/get"),
        http("", "GET", "/get"),
    ] {
        let d = decide_for(&set, HTTPBIN, &req);
        assert!(!d.allowed && d.l4_decidable, "{req:?}: {d:?}");
    }
    // The policy targets httpbin.org only.
    let other = Target {
        namespace: "default",
        service_entry: "example.com",
    };
    assert!(decide_for(&set, other, &http("default/other", "POST", "/")).allowed);
}

// istio.io docs/tasks/security/authorization/authz-tcp, "Configure ALLOW authorization policy
// for a TCP workload": ports 9000 and 9001 allowed, 9002 denied.
#[test]
fn authz_tcp_allow_ports() {
    let set = policy_set(&ap(
        "tcp-policy",
        "action: ALLOW\nrules: [{to: [{operation: {ports: [\"9000\", \"9001\"]}}]}]",
    ));
    authz_table!(set,
        tcp("foo/sleep", 9000) => true,
        tcp("foo/sleep", 9001) => true,
        tcp("foo/sleep", 9002) => false,
    );
}

// authz-tcp: "add an HTTP-only field named `methods` for port 9000": Istio ignores the ALLOW
// rule on TCP, so 9000 and 9001 are both denied. On an HTTP port the same rule still works.
#[test]
fn authz_tcp_allow_with_methods() {
    let set = policy_set(&ap(
        "tcp-policy",
        "action: ALLOW\nrules: [{to: [{operation: {methods: [GET], ports: [\"9000\"]}}]}]",
    ));
    authz_table!(set,
        tcp("foo/sleep", 9000) => false,
        tcp("foo/sleep", 9001) => false,
        http("foo/sleep", "GET", "/").port(9000) => true,
        http("foo/sleep", "POST", "/").port(9000) => false,
    );
}

// authz-tcp, "Configure DENY authorization policy for a TCP workload": a DENY of `methods`
// alone denies all TCP traffic (the field is dropped, the rule widens); with `ports: [9000]`
// only 9000 is denied.
#[test]
fn authz_tcp_deny_with_methods() {
    let set = policy_set(&ap(
        "tcp-policy",
        "action: DENY\nrules: [{to: [{operation: {methods: [GET]}}]}]",
    ));
    authz_table!(set,
        tcp("foo/sleep", 9000) => false,
        tcp("foo/sleep", 9001) => false,
        http("foo/sleep", "POST", "/").port(9000) => true,
    );
    let set = policy_set(&ap(
        "tcp-policy",
        "action: DENY\nrules: [{to: [{operation: {methods: [GET], ports: [\"9000\"]}}]}]",
    ));
    authz_table!(set,
        tcp("foo/sleep", 9000) => false,
        tcp("foo/sleep", 9001) => true,
    );
}

// istio.io docs/tasks/security/authorization/authz-deny ("Explicit Deny"), step by step.
#[test]
fn authz_deny_x_token() {
    let deny_get = ap(
        "deny-method-get",
        "action: DENY\nrules: [{to: [{operation: {methods: [GET]}}]}]",
    );
    authz_table!(policy_set(&deny_get),
        http("foo/sleep", "GET", "/get") => false,
        http("foo/sleep", "POST", "/post") => true,
    );

    let deny_get_unless_admin = ap(
        "deny-method-get",
        "action: DENY\nrules:\n- to: [{operation: {methods: [GET]}}]\n\
         \x20 when: [{key: \"request.headers[x-token]\", notValues: [admin]}]",
    );
    authz_table!(policy_set(&deny_get_unless_admin),
        http("foo/sleep", "GET", "/get").header("x-token", "admin") => true,
        http("foo/sleep", "GET", "/get").header("x-token", "guest") => false,
        // egress: no header is "not admin" too (Envoy: NOT(header matches) holds when absent).
        http("foo/sleep", "GET", "/get") => false,
    );

    let with_allow = deny_get_unless_admin
        + &ap(
            "allow-path-ip",
            "action: ALLOW\nrules: [{to: [{operation: {paths: [/ip]}}]}]",
        );
    let set = policy_set(&with_allow);
    authz_table!(set,
        // Deny policies take precedence over the allow policies.
        http("foo/sleep", "GET", "/ip").header("x-token", "guest") => false,
        http("foo/sleep", "GET", "/ip").header("x-token", "admin") => true,
        http("foo/sleep", "GET", "/get").header("x-token", "admin") => false,
    );
    let denied = decide(
        &set,
        &http("foo/sleep", "GET", "/ip").header("x-token", "guest"),
    );
    assert_eq!(
        denied.denied_details().as_deref(),
        Some("rbac_access_denied_matched_policy[ns[foo]-policy[deny-method-get]-rule[0]]")
    );
}

// istio/istio tests/integration/security/authz_test.go TestAuthz_PathPrecedence with
// testdata/authz/path-precedence.yaml.tmpl.
#[test]
fn path_precedence() {
    let set = policy_set(
        &(ap(
            "policy-deny",
            "action: DENY\nrules: [{to: [{operation: {paths: [/allow/admin]}}]}]",
        ) + &ap(
            "policy-allow",
            "action: ALLOW\nrules: [{to: [{operation: {paths: [\"/allow*\"]}}]}]",
        )),
    );
    authz_table!(set,
        http("foo/a", "GET", "/allow/admin") => false,
        http("foo/a", "GET", "/allow/admin?param=value") => false,
        http("foo/a", "GET", "/allow") => true,
        http("foo/a", "GET", "/allow?param=value") => true,
    );
}

// TestAuthz_PathTemplating with testdata/authz/path-templating.yaml.tmpl, after egress'
// normalization. Two rows differ from Istio's default (`BASE`, no slash merging) because egress
// merges slashes first: `/store//cart` becomes `/store/cart`, which the template does not match
// (the matcher itself matches the raw path as Istio does: matcher.rs `path_templates_like_istio`).
#[test]
fn path_templating() {
    let set = policy_set(&ap(
        "templates",
        "action: ALLOW\nrules: [{to: [{operation: {paths: \
         [\"/allow/admin/{**}\", \"/foo/{*}/bar/{**}\", \"/store/{**}/cart\"]}}]}]",
    ));
    authz_table!(set,
        http("foo/a", "GET", "/allow/admin/") => true,
        http("foo/a", "GET", "/allow/admin") => false,
        http("foo/a", "GET", "/allow/user/") => false,
        http("foo/a", "GET", "/allow/admin?param=value") => false,
        http("foo/a", "GET", "/allow") => false,
        http("foo/a", "GET", "/allow/admin/temp") => true,
        http("foo/a", "GET", "/allow/admin/temp.txt") => true,
        http("foo/a", "GET", "/allow/admin/foo/temp.txt") => true,
        http("foo/a", "GET", "/foo/buzz/bar/bat.txt") => true,
        http("foo/a", "GET", "/foo/buzz/bar/bat.temp.txt") => true,
        http("foo/a", "GET", "/foo/buzz/bar/bat/fuzz.txt") => true,
        http("foo/a", "GET", "/foo/bar/bat.txt") => false,
        http("foo/a", "GET", "/foo//bar/bat.txt") => false,
        http("foo/a", "GET", "/foo/buzz/bar/bat") => true,
        // Istio (BASE): allowed. egress merges `//` first.
        http("foo/a", "GET", "/store//cart") => false,
        http("foo/a", "GET", "/store/cart") => false,
        http("foo/a", "GET", "/store/foo/cart") => true,
        http("foo/a", "GET", "/store/foo/bar/cart") => true,
    );
}

// TestAuthz_PathNormalization with testdata/authz/path-normalization.yaml.tmpl: every
// dot-segment spelling of `/private` is denied, `/public/../public` allowed.
#[test]
fn path_normalization() {
    let set = policy_set(&ap(
        "normalization",
        "rules: [{to: [{operation: {paths: [\"/public*\"], methods: [GET]}}]}]",
    ));
    authz_table!(set,
        http("foo/a", "GET", "/public") => true,
        http("foo/a", "GET", "/public/../public") => true,
        http("foo/a", "GET", "/private") => false,
        http("foo/a", "GET", "/public/../private") => false,
        http("foo/a", "GET", "/public/./../private") => false,
        http("foo/a", "GET", "/public/.././private") => false,
        http("foo/a", "GET", "/public/%2E%2E/private") => false,
        http("foo/a", "GET", "/public/%2e%2e/private") => false,
        http("foo/a", "GET", "/public/%2E/%2E%2E/private") => false,
        http("foo/a", "GET", "/public/%2e/%2e%2e/private") => false,
        http("foo/a", "GET", "/public/%2E%2E/%2E/private") => false,
        http("foo/a", "GET", "/public/%2e%2e/%2e/private") => false,
        // egress (DECODE_AND_MERGE_SLASHES): encoded slashes and backslashes too.
        http("foo/a", "GET", "/public%2F..%2Fprivate") => false,
        http("foo/a", "GET", r"/public\..\private") => false,
        http("foo/a", "GET", "/public%5C..%5Cprivate") => false,
    );
}

/// TestAuthz_Conditions with testdata/authz/conditions.yaml.tmpl: `ns1/a` is allowed, `ns2/a`
/// denied; both call `svc`, whose address is 192.0.2.10 on port 80.
#[test]
fn conditions() {
    let rule = |path: &str, key: &str, values: &str, not_values: &str| {
        format!(
            "- to: [{{operation: {{paths: [\"{path}\"]}}}}]\n  when: [{{key: \"{key}\", values: {values}}}]\n\
             - to: [{{operation: {{paths: [\"{path}-notValues\"]}}}}]\n  when: [{{key: \"{key}\", notValues: {not_values}}}]\n"
        )
    };
    let mut yaml = String::new();
    for (name, rules) in [
        (
            "request-headers",
            rule("/request-headers", "request.headers[x-foo]", "[foo]", "[bar]"),
        ),
        (
            "source-ip",
            rule("/source-ip", "source.ip", "[10.0.1.1]", "[10.0.2.1]"),
        ),
        (
            "source-namespace",
            rule("/source-namespace", "source.namespace", "[ns1]", "[ns2]"),
        ),
        (
            "source-principal",
            rule(
                "/source-principal",
                "source.principal",
                "[cluster.local/ns/ns1/sa/a]",
                "[cluster.local/ns/ns2/sa/a]",
            ),
        ),
        (
            "source-trust-domain",
            rule(
                "/source-trust-domain",
                "source.trustDomain",
                "[cluster.local]",
                "[bad.example.com]",
            ),
        ),
        (
            "destination-ip",
            "- to: [{operation: {paths: [/destination-ip-good]}}]\n  when: [{key: destination.ip, values: [192.0.2.10]}]\n\
             - to: [{operation: {paths: [/destination-ip-bad]}}]\n  when: [{key: destination.ip, values: [1.2.3.4]}]\n\
             - to: [{operation: {paths: [/destination-ip-notValues]}}]\n  when: [{key: destination.ip, notValues: [192.0.2.10]}]\n"
                .to_owned(),
        ),
        (
            "destination-port",
            "- to: [{operation: {paths: [/destination-port-good]}}]\n  when: [{key: destination.port, values: [\"80\"]}]\n\
             - to: [{operation: {paths: [/destination-port-bad]}}]\n  when: [{key: destination.port, values: [\"1\"]}]\n\
             - to: [{operation: {paths: [/destination-port-notValues]}}]\n  when: [{key: destination.port, notValues: [\"80\"]}]\n"
                .to_owned(),
        ),
        (
            "connection-sni",
            "- to: [{operation: {paths: [/connection-sni-good]}}]\n  when: [{key: connection.sni, values: [\"*.svc.ns1.svc.cluster.local\"]}]\n\
             - to: [{operation: {paths: [/connection-sni-bad]}}]\n  when: [{key: connection.sni, values: [never-matched]}]\n\
             - to: [{operation: {paths: [/connection-sni-notValues]}}]\n  when: [{key: connection.sni, notValues: [\"*.svc.ns1.svc.cluster.local\"]}]\n"
                .to_owned(),
        ),
    ] {
        yaml += &ap(name, &format!("rules:\n{rules}"));
    }
    let set = policy_set(&yaml);
    // The mTLS SNI the Istio test sees between sidecars.
    let sni = "outbound_.80_._.svc.ns1.svc.cluster.local";
    for (from, ip, allow) in [("ns1/a", "10.0.1.1", true), ("ns2/a", "10.0.2.1", false)] {
        let get = |path: &str| http(from, "GET", path).source(ip).sni(sni);
        authz_table!(set,
            get("/request-headers").header("x-foo", "foo") => true,
            get("/request-headers").header("x-foo", "bar") => false,
            get("/request-headers") => false,
            get("/request-headers-notValues").header("x-foo", "foo") => true,
            get("/request-headers-notValues").header("x-foo", "bar") => false,
            get("/source-ip") => allow,
            get("/source-ip-notValues") => allow,
            get("/source-namespace") => allow,
            get("/source-namespace-notValues") => allow,
            get("/source-principal") => allow,
            get("/source-principal-notValues") => allow,
            get("/source-trust-domain") => true,
            get("/source-trust-domain-notValues") => true,
            get("/destination-ip-good") => true,
            get("/destination-ip-bad") => false,
            get("/destination-ip-notValues") => false,
            get("/destination-port-good") => true,
            get("/destination-port-bad") => false,
            get("/destination-port-notValues") => false,
            get("/connection-sni-good") => true,
            get("/connection-sni-bad") => false,
            get("/connection-sni-notValues") => false,
            get("/other") => false,
        );
    }
}

// istio/api authorization_policy.proto: "allow-nothing" (`spec: {}`) denies every request to
// what it applies to; "allow-all" (`rules: [{}]`) allows every request.
#[test]
fn allow_nothing_and_allow_all() {
    let nothing = policy_set(&ap("allow-nothing", ""));
    let all = policy_set(&ap("allow-all", "rules: [{}]"));
    for req in [
        http("foo/sleep", "GET", "/"),
        http("", "DELETE", "/admin"),
        tcp("foo/sleep", 9000),
        tcp("", 22),
    ] {
        let d = decide(&nothing, &req);
        assert!(!d.allowed && d.l4_decidable, "allow-nothing {req:?}: {d:?}");
        let d = decide(&all, &req);
        assert!(d.allowed && d.l4_decidable, "allow-all {req:?}: {d:?}");
    }
}

// istio.io docs/tasks/security/authorization/authz-dry-run: a dry-run DENY of `/headers`
// reports a shadow deny and changes nothing.
#[test]
fn dry_run_deny() {
    let set = policy_set(&ap_with(
        "deny-path-headers",
        "  annotations: {istio.io/dry-run: \"true\"}\n",
        "action: DENY\nrules: [{to: [{operation: {paths: [/headers]}}]}]",
    ));
    let d = decide(&set, &http("foo/sleep", "GET", "/headers"));
    assert!(d.allowed);
    assert_eq!(d.dry_run_allowed, Some(false));
    assert_eq!(d.dry_run_matches.len(), 1);
    assert_eq!(
        d.dry_run_matches[0].matched.to_string(),
        "ns[foo]-policy[deny-path-headers]-rule[0]"
    );
    let d = decide(&set, &http("foo/sleep", "GET", "/ip"));
    assert!(d.allowed && d.dry_run_matches.is_empty());
    assert_eq!(d.dry_run_allowed, Some(true));
}
