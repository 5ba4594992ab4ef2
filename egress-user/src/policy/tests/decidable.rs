//! `Decision::l4_decidable`: true only when principal, ServiceEntry and destination port alone
//! fix the verdict (design §6: only such verdicts go to the kernel cache).
use super::*;

/// `(request, allowed, l4_decidable)` rows against one policy set.
fn check_rows(yaml: &str, rows: &[(&str, Req, bool, bool)]) {
    let set = policy_set(yaml);
    let mut failures = Vec::new();
    for (name, req, allowed, decidable) in rows {
        let d = decide(&set, req);
        if (d.allowed, d.l4_decidable) != (*allowed, *decidable) {
            failures.push(format!(
                "{name}: want allowed={allowed} decidable={decidable}, got {d:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn no_policy_is_a_decidable_allow() {
    check_rows("", &[("anything", http("foo/a", "GET", "/"), true, true)]);
}

// A DENY that matches on the principal alone: a decidable deny for that principal, a decidable
// allow for the others.
#[test]
fn deny_on_principal() {
    let yaml = ap(
        "deny-bad",
        "action: DENY\nrules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/bad]}}]}]",
    );
    check_rows(
        &yaml,
        &[
            ("bad, HTTP", http("foo/bad", "GET", "/"), false, true),
            ("bad, TCP", tcp("foo/bad", 5432), false, true),
            ("good", http("foo/good", "GET", "/"), true, true),
            ("no identity", http("", "GET", "/"), true, true),
        ],
    );
}

// A DENY that also needs an HTTP attribute is never a cached deny on an HTTP port (an
// L7-conditional deny, design §6); on a TCP port the field is dropped and the deny is L4.
#[test]
fn deny_with_http_fields() {
    let yaml = ap(
        "deny-post",
        "action: DENY\nrules: [{from: [{source: {namespaces: [foo]}}], to: [{operation: {methods: [POST]}}]}]",
    );
    check_rows(
        &yaml,
        &[
            ("POST", http("foo/a", "POST", "/"), false, false),
            ("GET", http("foo/a", "GET", "/"), true, false),
            ("other namespace", http("bar/a", "POST", "/"), true, true),
            ("TCP", tcp("foo/a", 5432), false, true),
            ("TCP, other namespace", tcp("bar/a", 5432), true, true),
        ],
    );
}

// An ALLOW set where some rule needs `methods`: not decidable for the principal it names,
// decidable deny for everyone else; a decidable allow wins over an undecided rule.
#[test]
fn allow_with_http_fields() {
    let yaml = ap(
        "p",
        "rules:\n- from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]\n\
         \x20 to: [{operation: {methods: [GET]}}]\n\
         - from: [{source: {principals: [cluster.local/ns/foo/sa/admin]}}]",
    );
    check_rows(
        &yaml,
        &[
            ("sleep GET", http("foo/sleep", "GET", "/"), true, false),
            ("sleep POST", http("foo/sleep", "POST", "/"), false, false),
            ("admin", http("foo/admin", "POST", "/"), true, true),
            ("other", http("foo/other", "GET", "/"), false, true),
            // On TCP the sleep rule is dropped: a decidable deny.
            ("sleep TCP", tcp("foo/sleep", 5432), false, true),
        ],
    );
}

// Source and destination addresses and the SNI are not part of the cache key.
#[test]
fn addresses_and_sni_are_not_in_the_key() {
    for (name, rule) in [
        ("source.ip", "{key: source.ip, values: [10.0.0.0/8]}"),
        (
            "destination.ip",
            "{key: destination.ip, values: [192.0.2.10]}",
        ),
        ("connection.sni", "{key: connection.sni, values: [\"*\"]}"),
    ] {
        let yaml = ap("p", &format!("action: DENY\nrules: [{{when: [{rule}]}}]"));
        let set = policy_set(&yaml);
        let d = decide(&set, &tcp("foo/a", 443).sni("x.example"));
        assert!(!d.allowed && !d.l4_decidable, "{name}: {d:?}");
    }
}

// A port in the rule is part of the key; `notX` of a known attribute is known too.
#[test]
fn ports_and_negations() {
    let yaml = ap(
        "p",
        "action: DENY\nrules: [{from: [{source: {notNamespaces: [foo]}}], to: [{operation: {ports: [\"8080\"]}}]}]",
    );
    check_rows(
        &yaml,
        &[
            ("outsider on 8080", tcp("bar/a", 8080), false, true),
            ("outsider on 80", tcp("bar/a", 80), true, true),
            ("insider", tcp("foo/a", 8080), true, true),
            ("no identity", tcp("", 8080), false, true),
        ],
    );
}

// A definite DENY decides even when an ALLOW would need HTTP attributes.
#[test]
fn definite_deny_beats_undecided_allow() {
    let yaml = ap(
        "deny-all-bad",
        "action: DENY\nrules: [{from: [{source: {namespaces: [bad]}}]}]",
    ) + &ap(
        "allow-get",
        "rules: [{to: [{operation: {methods: [GET]}}]}]",
    );
    check_rows(
        &yaml,
        &[
            ("bad", http("bad/a", "GET", "/"), false, true),
            ("good GET", http("good/a", "GET", "/"), true, false),
        ],
    );
}

// Dry-run and AUDIT policies never change decidability either.
#[test]
fn dry_run_and_audit_do_not_count() {
    let yaml = ap_with(
        "dry",
        "  annotations: {istio.io/dry-run: \"true\"}\n",
        "action: DENY\nrules: [{to: [{operation: {methods: [GET]}}]}]",
    ) + &ap(
        "audit",
        "action: AUDIT\nrules: [{to: [{operation: {methods: [GET]}}]}]",
    );
    check_rows(&yaml, &[("GET", http("foo/a", "GET", "/"), true, true)]);
}
