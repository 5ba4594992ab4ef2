//! Rule semantics edge by edge: ztunnel's `rbac.rs` cases, attachment, ordering, AUDIT,
//! CUSTOM, and the matching rules of each field.
use super::*;
use crate::config::{Action, Condition, ConditionKey, Operation, Rule};
use crate::policy::{IgnoreReason, PolicyRef};

/// An ALLOW policy with one rule whose only source has `field: [values]`.
fn allow_from(field: &str, values: &str) -> PolicySet {
    policy_set(&ap(
        "p",
        &format!("rules: [{{from: [{{source: {{{field}: {values}}}}}]}}]"),
    ))
}

// istio/ztunnel src/rbac.rs `rbac_test!` for every source field, against a plaintext peer
// (no identity), `foo/account` and `ns-alt/sa-alt` (ztunnel's tls_conn and tls_conn_alt).
#[test]
fn source_fields_like_ztunnel() {
    let plaintext = || tcp("", 8080).source("127.0.0.1").destination("127.0.0.2");
    let account = || {
        tcp("foo/account", 8080)
            .source("127.0.0.1")
            .destination("127.0.0.2")
    };
    let alt = || {
        tcp("ns-alt/sa-alt", 9090)
            .source("127.0.0.3")
            .destination("127.0.0.4")
    };
    // (field, values, plaintext, account, alt)
    let cases = [
        ("namespaces", "[foo]", false, true, false),
        ("notNamespaces", "[foo]", true, false, true),
        ("serviceAccounts", "[foo/account]", false, true, false),
        ("notServiceAccounts", "[foo/account]", true, false, true),
        // A bare service account is in the policy's namespace.
        ("serviceAccounts", "[account]", false, true, false),
        (
            "principals",
            "[cluster.local/ns/foo/sa/account]",
            false,
            true,
            false,
        ),
        (
            "notPrincipals",
            "[cluster.local/ns/foo/sa/account]",
            true,
            false,
            true,
        ),
        ("ipBlocks", "[127.0.0.1]", true, true, false),
        ("notIpBlocks", "[127.0.0.1]", false, false, true),
        // `cidr_range`.
        ("ipBlocks", "[127.0.0.1/24]", true, true, true),
        // egress/Istio: presence needs an identity; its negation holds for plaintext only.
        ("principals", "[\"*\"]", false, true, true),
        ("notPrincipals", "[\"*\"]", true, false, false),
        ("namespaces", "[\"*\"]", false, true, true),
        // Prefix against an empty identity: no match (ztunnel `prefix empty mismatch`).
        ("principals", "[\"cluster.local/*\"]", false, true, true),
        ("trustDomains", "[cluster.local]", false, true, true),
        ("notTrustDomains", "[\"cluster.*\"]", true, false, false),
    ];
    for (field, values, want_plain, want_account, want_alt) in cases {
        let set = allow_from(field, values);
        for (name, req, want) in [
            ("plaintext", plaintext(), want_plain),
            ("account", account(), want_account),
            ("alt", alt(), want_alt),
        ] {
            assert_eq!(
                decide(&set, &req).allowed,
                want,
                "{field}: {values} for {name}"
            );
        }
    }
    // `destination_ports` / `not_destination_ports` (ztunnel: 8080 vs 9090).
    let ports = policy_set(&ap(
        "p",
        "rules: [{to: [{operation: {ports: [\"8080\"]}}]}]",
    ));
    authz_table!(ports, plaintext() => true, account() => true, alt() => false);
    let not_ports = policy_set(&ap(
        "p",
        "rules: [{to: [{operation: {notPorts: [\"8080\"]}}]}]",
    ));
    authz_table!(not_ports, plaintext() => false, account() => false, alt() => true);
}

// ztunnel rbac.rs `rbac_empty_policy`: no rules never matches; one empty rule always does. An
// empty match (`source: {}`) cannot be written (config tests, Istio "source-empty").
#[test]
fn empty_rules_like_ztunnel() {
    authz_table!(policy_set(&ap("p", "rules: []")),
        http("", "GET", "/") => false,
        http("foo/a", "GET", "/") => false,
    );
    authz_table!(policy_set(&ap("p", "rules: [{}]")),
        http("", "GET", "/") => true,
        tcp("", 1) => true,
    );
}

// ztunnel rbac.rs `rbac_nesting`: any source AND any operation.
#[test]
fn nesting_like_ztunnel() {
    let set = policy_set(&ap(
        "nested",
        "rules: [{from: [{source: {namespaces: [a]}}, {source: {namespaces: [b]}}], \
         to: [{operation: {ports: [\"80\"]}}]}]",
    ));
    authz_table!(set,
        tcp("a/account", 80) => true,
        tcp("b/account", 80) => true,
        tcp("bad/account", 80) => false,
        tcp("b/account", 12345) => false,
    );
}

// ztunnel rbac.rs `rbac_multi_rule`: any rule.
#[test]
fn multi_rule_like_ztunnel() {
    let set = policy_set(&ap(
        "multi",
        "rules: [{from: [{source: {namespaces: [a]}}]}, {from: [{source: {namespaces: [b]}}]}]",
    ));
    authz_table!(set,
        tcp("a/account", 80) => true,
        tcp("b/account", 80) => true,
        tcp("bad/account", 80) => false,
    );
}

// authorization_policy.proto: "Fields in the source are ANDed together"; values OR; `when`
// conditions all hold.
#[test]
fn fields_and_values_and_conditions() {
    let set = policy_set(&ap(
        "p",
        "rules:\n- from: [{source: {principals: [cluster.local/ns/foo/sa/admin, cluster.local/ns/foo/sa/dev], \
         namespaces: [foo, test], notIpBlocks: [203.0.113.4]}}]\n\
         \x20 when:\n  - {key: \"request.headers[x-a]\", values: [\"1\"]}\n  - {key: source.ip, values: [10.0.0.0/8]}",
    ));
    authz_table!(set,
        http("foo/admin", "GET", "/").header("x-a", "1") => true,
        http("foo/dev", "GET", "/").header("x-a", "1") => true,
        http("foo/other", "GET", "/").header("x-a", "1") => false,
        http("foo/admin", "GET", "/").header("x-a", "1").source("203.0.113.4") => false,
        http("foo/admin", "GET", "/").header("x-a", "2") => false,
        http("foo/admin", "GET", "/").header("x-a", "1").source("192.168.0.1") => false,
    );
}

// Operation fields: hosts case-insensitive (and egress ignores port and trailing dot), methods
// case-sensitive, `notX` = none of X, paths exact/prefix/suffix/presence.
#[test]
fn operation_fields() {
    let set = policy_set(&ap(
        "p",
        "rules: [{to: [{operation: {hosts: [\"*.example.com\", httpbin.org], methods: [GET, \"PO*\"], \
         notPaths: [\"/admin*\", \"*.secret\"]}}]}]",
    ));
    authz_table!(set,
        http("foo/a", "GET", "/x").host("HTTPBIN.org") => true,
        http("foo/a", "GET", "/x").host("httpbin.org:80") => true,
        http("foo/a", "GET", "/x").host("httpbin.org.") => true,
        http("foo/a", "POST", "/x").host("api.example.com") => true,
        http("foo/a", "GET", "/x").host("evil.org") => false,
        http("foo/a", "get", "/x").host("httpbin.org") => false,
        http("foo/a", "GET", "/admin/x").host("httpbin.org") => false,
        http("foo/a", "GET", "/a/b.secret").host("httpbin.org") => false,
        http("foo/a", "GET", "/").host("") => false,
    );
}

// Envoy HeaderMatcher: names case-insensitive, repeated headers joined with `,`
// (normalization page, "Duplicate headers"); `*` is presence; `:authority` and `:method`.
#[test]
fn header_conditions() {
    let set = policy_set(&ap(
        "p",
        "rules:\n- when: [{key: \"request.headers[X-Foo]\", values: [\"foo,bar\"]}]\n\
         - when: [{key: \"request.headers[x-present]\", values: [\"*\"]}]\n\
         - when: [{key: \"request.headers[:authority]\", values: [\"api.*\"]}, \
         {key: \"request.headers[:method]\", values: [PUT]}]",
    ));
    authz_table!(set,
        http("foo/a", "GET", "/").header("x-foo", "foo").header("x-foo", "bar") => true,
        http("foo/a", "GET", "/").header("x-foo", "foo") => false,
        http("foo/a", "GET", "/").header("x-present", "") => true,
        http("foo/a", "PUT", "/").host("api.example.com") => true,
        http("foo/a", "GET", "/").host("api.example.com") => false,
    );
}

// Attachment at a waypoint (istio/istio pilot/pkg/model/policyattachment.go): ServiceEntry
// targetRefs in the same namespace; GatewayClass istio-waypoint from the root namespace;
// never `selector` or untargeted policies.
#[test]
fn attachment() {
    let yaml = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: global, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/global-deny]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-root, namespace: foo}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: selector, namespace: foo}
spec:
  selector: {matchLabels: {app: svc}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: namespace-wide, namespace: foo}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gateway, namespace: foo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: svc}]
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-namespace, namespace: bar}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: svc}]
  action: DENY
  rules: [{}]
";
    let set = policy_set(yaml);
    authz_table!(set,
        http("foo/a", "GET", "/") => true,
        http("foo/a", "GET", "/global-deny") => false,
    );
    let elsewhere = Target {
        namespace: "baz",
        service_entry: "other",
    };
    assert!(!decide_for(&set, elsewhere, &http("foo/a", "GET", "/global-deny")).allowed);
    let ignored: Vec<(&str, IgnoreReason)> = set
        .ignored()
        .iter()
        .map(|i| (&*i.policy.name, i.reason))
        .collect();
    assert_eq!(
        ignored,
        [
            ("not-root", IgnoreReason::OtherTargets),
            ("selector", IgnoreReason::Selector),
            ("namespace-wide", IgnoreReason::NoTargetRefs),
            ("gateway", IgnoreReason::OtherTargets),
        ]
    );
    // `other-namespace` attaches to bar/svc only.
    let bar = Target {
        namespace: "bar",
        service_entry: "svc",
    };
    assert!(!decide_for(&set, bar, &http("foo/a", "GET", "/")).allowed);
    // The root namespace is configurable.
    let custom_root = PolicySet::new(&policies(yaml), "mesh-root");
    assert!(decide(&custom_root, &http("foo/a", "GET", "/global-deny")).allowed);
}

// Envoy reports the first matching policy of a filter in the order of its names
// (`ns[NS]-policy[NAME]-rule[N]`, a sorted map), so `rule[10]` comes before `rule[2]`.
#[test]
fn reported_rule_follows_envoy_order() {
    let rules: Vec<String> = (0..11)
        .map(|i| {
            format!(
                "- to: [{{operation: {{paths: [/{}]}}}}]",
                if i == 2 || i == 10 { "x" } else { "y" }
            )
        })
        .collect();
    let yaml = ap(
        "b-deny",
        &format!("action: DENY\nrules:\n{}", rules.join("\n")),
    ) + &ap("c-deny", "action: DENY\nrules: [{}]");
    let d = decide(&policy_set(&yaml), &http("foo/a", "GET", "/x"));
    assert_eq!(d.matched_policy(), "ns[foo]-policy[b-deny]-rule[10]");
    let yaml = yaml + &ap("a-deny", "action: DENY\nrules: [{}]");
    let d = decide(&policy_set(&yaml), &http("foo/a", "GET", "/x"));
    assert_eq!(d.matched_policy(), "ns[foo]-policy[a-deny]-rule[0]");
}

// authorization_policy.proto: AUDIT policies do not affect whether requests are allowed.
#[test]
fn audit_never_changes_the_verdict() {
    let yaml = ap(
        "audit",
        "action: AUDIT\nrules: [{to: [{operation: {methods: [GET]}}]}]",
    );
    let set = policy_set(&yaml);
    let d = decide(&set, &http("foo/a", "GET", "/"));
    assert!(d.allowed);
    assert_eq!(
        d.audit.map(|a| a.to_string()).as_deref(),
        Some("ns[foo]-policy[audit]-rule[0]")
    );
    assert_eq!(decide(&set, &http("foo/a", "POST", "/")).audit, None);
    let set = policy_set(&(yaml + &ap("allow-nothing", "")));
    let d = decide(&set, &http("foo/a", "GET", "/"));
    assert!(!d.allowed && d.audit.is_some());
}

// A dry-run ALLOW is not an ALLOW policy for the verdict (builder.go: shadow rules only).
#[test]
fn dry_run_allow() {
    let set = policy_set(&ap_with(
        "only-get",
        "  annotations: {istio.io/dry-run: \"true\"}\n",
        "rules: [{to: [{operation: {methods: [GET]}}]}]",
    ));
    let post = decide(&set, &http("foo/a", "POST", "/"));
    assert!(post.allowed && post.l4_decidable);
    assert_eq!(
        (post.dry_run_allowed, post.dry_run_matches.len()),
        (Some(false), 0)
    );
    let get = decide(&set, &http("foo/a", "GET", "/"));
    assert_eq!(get.dry_run_allowed, Some(true));
    assert_eq!(get.dry_run_matches[0].action, Action::Allow);
}

/// A policy built in code, attached to `svc`.
fn coded(action: Action, rules: Vec<Rule>) -> PolicySet {
    let mut policy = policies(&ap("coded", "rules: [{}]")).remove(0);
    policy.action = action;
    policy.rules = rules;
    PolicySet::new(&[policy], "istio-system")
}

// Istio's `getBadCustomDenyRules`: a CUSTOM policy whose provider cannot be used denies what
// it matches. The loader refuses CUSTOM; a set built in code may still carry one.
#[test]
fn custom_is_enforced_as_deny() {
    let to_admin = Rule {
        to: vec![Operation {
            paths: vec!["/admin".into()],
            ..Operation::default()
        }],
        ..Rule::default()
    };
    let set = coded(Action::Custom, vec![to_admin]);
    authz_table!(set,
        http("foo/a", "GET", "/admin") => false,
        http("foo/a", "GET", "/") => true,
    );
}

// model.go `checkError`: a value the generator cannot use drops the whole rule of an ALLOW and
// only the value of a DENY (the loader refuses such values; code may not).
#[test]
fn unusable_values_narrow_allow_and_widen_deny() {
    let bad_port = || Rule {
        when: vec![Condition {
            key: ConditionKey::DestinationPort,
            values: vec!["eighty".into()],
            not_values: vec![],
        }],
        ..Rule::default()
    };
    assert!(
        !decide(
            &coded(Action::Allow, vec![bad_port()]),
            &http("foo/a", "GET", "/")
        )
        .allowed
    );
    assert!(
        !decide(
            &coded(Action::Deny, vec![bad_port()]),
            &http("foo/a", "GET", "/")
        )
        .allowed
    );
}

/// Principals are matched as Istio matches `spiffe://` + value against the peer's URI SAN.
#[test]
fn principal_forms() {
    let other_domain = Principal::new("example.org", "foo", "sleep");
    for (values, want_local, want_other) in [
        ("[\"*/ns/foo/sa/sleep\"]", true, true),
        ("[\"cluster.local/*\"]", true, false),
        ("[cluster.local/ns/foo/sa/sleep]", true, false),
        ("[\"*\"]", true, true),
    ] {
        let set = allow_from("principals", values);
        let local = http("foo/sleep", "GET", "/");
        let other = http("", "GET", "/").principal(other_domain.clone());
        assert_eq!(decide(&set, &local).allowed, want_local, "{values}");
        assert_eq!(decide(&set, &other).allowed, want_other, "{values}");
    }
}

// egress: the SNI is a DNS name; it is matched without regard to ASCII case.
#[test]
fn sni_ignores_case() {
    let set = policy_set(&ap(
        "p",
        "action: DENY\nrules: [{when: [{key: connection.sni, values: [\"*.evil.example\"]}]}]",
    ));
    authz_table!(set,
        tcp("foo/a", 443).sni("api.EVIL.example") => false,
        tcp("foo/a", 443).sni("api.good.example") => true,
        tcp("foo/a", 443) => true,
    );
}

#[test]
fn policy_ref_display() {
    let p = PolicyRef {
        namespace: "ns".into(),
        name: "n".into(),
    };
    assert_eq!(p.to_string(), "ns[ns]-policy[n]");
}
