//! Table tests for AuthorizationPolicy parsing and validation. Cases marked "Istio:" are
//! re-expressed from istio/istio `pkg/config/validation/validation_test.go`
//! (`TestValidateAuthorizationPolicy`, by its case name) with the verdict Istio gives; cases
//! marked "egress:" are where egress deliberately refuses more (the reason is in the message).
use std::path::Path;

use crate::config::{
    Action, AuthorizationPolicy, Condition, ConditionKey, IpNet, Operation, Peer, Rule, Source,
    TargetRef, WorkloadSelector, parse_str,
};

/// An AuthorizationPolicy document `t` in namespace `foo` with `metadata` extras and `spec`.
fn document(metadata: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|line| format!("  {line}\n")).collect();
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata:\n  name: t\n  namespace: foo\n{metadata}spec:\n{spec}"
    )
}

/// The policy, or `field: message` of each error.
fn check_with(metadata: &str, spec: &str) -> Result<AuthorizationPolicy, Vec<String>> {
    match parse_str(Path::new("t.yaml"), &document(metadata, spec)) {
        Ok(mut set) => {
            assert_eq!(set.authorization_policies.len(), 1, "{set:?}");
            Ok(set.authorization_policies.remove(0))
        }
        Err(errors) => Err(errors
            .0
            .into_iter()
            .map(|e| format!("{}: {}", e.field.unwrap_or_default(), e.message))
            .collect()),
    }
}

fn check(spec: &str) -> Result<AuthorizationPolicy, Vec<String>> {
    check_with("", spec)
}

const DRY_RUN: &str = "  annotations: {istio.io/dry-run: \"true\"}\n";

#[test]
fn validation_table() {
    // (name, metadata extras, spec, expected error prefixes `field: message`; empty = valid)
    let cases: Vec<(&str, &str, &str, Vec<&str>)> = vec![
        (
            "Istio: good",
            "",
            "selector: {matchLabels: {app: httpbin, version: v1}}\n\
             rules:\n\
             - from: [{source: {principals: [sa1]}}, {source: {principals: [sa2]}}]\n\
             \x20 to: [{operation: {methods: [GET]}}, {operation: {methods: [POST]}}]\n\
             \x20 when:\n\
             \x20 - {key: source.ip, values: [1.2.3.4, 5.6.7.0/24]}\n\
             \x20 - {key: \"request.headers[:authority]\", values: [v1, v2]}",
            vec![],
        ),
        (
            "Istio: good serviceAccounts",
            "",
            "rules:\n- from: [{source: {serviceAccounts: [ns1/sa1, ns2/sa2]}}, {source: {principals: [sa2]}}]",
            vec![],
        ),
        (
            "Istio: serviceAccounts and namespaces",
            "",
            "rules:\n- from: [{source: {serviceAccounts: [ns1/sa1], namespaces: [ns]}}]",
            vec![
                "spec.rules[0].from[0].source: cannot set serviceAccounts with namespaces or principals",
            ],
        ),
        (
            "egress: custom-good is refused (no ext_authz yet)",
            "",
            "action: CUSTOM\nprovider: {name: my-custom-authz}\nrules: [{}]",
            vec!["spec.action: CUSTOM (ext_authz) is not supported yet"],
        ),
        (
            "Istio: provider-wrong-action",
            "",
            "action: ALLOW\nprovider: {name: \"\"}\nrules: [{}]",
            vec!["spec.provider: `provider` must not be with non CUSTOM action, found ALLOW"],
        ),
        ("Istio: allow-rules-nil", "", "action: ALLOW", vec![]),
        (
            "Istio: dry-run-valid-allow",
            DRY_RUN,
            "action: ALLOW",
            vec![],
        ),
        (
            "Istio: dry-run-valid-deny",
            "  annotations: {istio.io/dry-run: \"false\"}\n",
            "action: DENY\nrules: [{}]",
            vec![],
        ),
        (
            "Istio: dry-run-invalid-value",
            "  annotations: {istio.io/dry-run: foo}\n",
            "action: ALLOW",
            vec![r#"metadata.annotations["istio.io/dry-run"]: invalid value "foo""#],
        ),
        (
            "Istio: dry-run-invalid-action-audit",
            DRY_RUN,
            "action: AUDIT\nrules: [{}]",
            vec![
                r#"metadata.annotations["istio.io/dry-run"]: the annotation istio.io/dry-run currently only supports action ALLOW/DENY"#,
            ],
        ),
        (
            "Istio: deny-rules-nil",
            "",
            "action: DENY",
            vec!["spec.rules: DENY action without `rules` is meaningless"],
        ),
        (
            // protobuf decodes `[]` as an absent list, so Istio refuses it the same way.
            "Istio: deny with rules: [] (same as nil)",
            "",
            "action: DENY\nrules: []",
            vec!["spec.rules: DENY action without `rules` is meaningless"],
        ),
        (
            "Istio: selector-empty-value",
            "",
            "selector: {matchLabels: {app: \"\", version: v1}}",
            vec![],
        ),
        (
            "Istio: selector-empty-key",
            "",
            "selector: {matchLabels: {\"\": httpbin}}",
            vec![r#"spec.selector.matchLabels[""]: empty key is not supported in selector"#],
        ),
        (
            "Istio: selector-empty-labels (a warning)",
            "",
            "selector: {}",
            vec![],
        ),
        (
            "Istio: selector-wildcard-value",
            "",
            "selector: {matchLabels: {app: \"httpbin-*\"}}",
            vec!["spec.selector.matchLabels.app: wildcard is not supported in selector"],
        ),
        (
            "Istio: target-ref-good",
            "",
            "action: DENY\ntargetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: foo}\n\
             rules: [{from: [{source: {principals: [temp]}}], to: [{operation: {ports: [\"8080\"], methods: [GET, DELETE]}}]}]",
            vec![],
        ),
        (
            "Istio: target-refs-good-service",
            "",
            "action: DENY\ntargetRefs: [{group: \"\", kind: Service, name: foo}]\nrules: [{}]",
            vec![],
        ),
        (
            "Istio: target-ref-non-empty-namespace",
            "",
            "targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: foo, namespace: bar}]",
            vec!["spec.targetRefs[0].namespace: targetRef namespace must not be set"],
        ),
        (
            "Istio: target-ref-empty-name",
            "",
            "targetRefs: [{group: networking.istio.io, kind: ServiceEntry}]",
            vec!["spec.targetRefs[0].name: targetRef name must be set"],
        ),
        (
            "Istio: target-ref-wrong-group",
            "",
            "targetRefs: [{group: wrong-group, kind: Gateway, name: foo}]",
            vec!["spec.targetRefs[0]: targetRef must be to one of"],
        ),
        (
            "Istio: target-ref-wrong-kind (ServiceEntry needs its group)",
            "",
            "targetRefs: [{kind: ServiceEntry, name: foo}]",
            vec!["spec.targetRefs[0]: targetRef must be to one of"],
        ),
        (
            "Istio: target-refs-and-selector-cannot-both-be-set",
            "",
            "selector: {matchLabels: {app: a}}\n\
             targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: foo}]",
            vec!["spec: only one of targetRefs, targetRef or selector can be set"],
        ),
        (
            "Istio: from-empty",
            "",
            "rules: [{from: []}]",
            vec!["spec.rules[0].from: `from` must not be empty"],
        ),
        (
            "Istio: source-nil",
            "",
            "rules: [{from: [{}]}]",
            vec!["spec.rules[0].from[0].source: `from.source` must not be null"],
        ),
        (
            // Also ztunnel rbac.rs `rbac_empty_policy`: an empty match never matches; Istio
            // never lets one be written.
            "Istio: source-empty",
            "",
            "rules: [{from: [{source: {}}]}]",
            vec!["spec.rules[0].from[0].source: `from.source` must not be empty"],
        ),
        (
            "Istio: to-empty",
            "",
            "rules: [{to: []}]",
            vec!["spec.rules[0].to: `to` must not be empty"],
        ),
        (
            "Istio: operation-nil",
            "",
            "rules: [{to: [{}]}]",
            vec!["spec.rules[0].to[0].operation: `to.operation` must not be null"],
        ),
        (
            "Istio: operation-empty",
            "",
            "rules: [{to: [{operation: {}}]}]",
            vec!["spec.rules[0].to[0].operation: `to.operation` must not be empty"],
        ),
        (
            "Istio: Principals-empty",
            "",
            "rules: [{from: [{source: {principals: [p1, \"\"]}}]}]",
            vec!["spec.rules[0].from[0].source.principals[1]: empty value not allowed"],
        ),
        (
            "Istio: NotNamespaces-empty",
            "",
            "rules: [{from: [{source: {notNamespaces: [\"\"]}}]}]",
            vec!["spec.rules[0].from[0].source.notNamespaces[0]: empty value not allowed"],
        ),
        (
            "Istio: ServiceAccounts-empty",
            "",
            "rules: [{from: [{source: {serviceAccounts: [\"\"]}}]}]",
            vec!["spec.rules[0].from[0].source.serviceAccounts[0]: empty value not allowed"],
        ),
        (
            "Istio: Hosts-empty, NotPaths-empty",
            "",
            "rules: [{to: [{operation: {hosts: [\"\"], notPaths: [\"\"]}}]}]",
            vec![
                "spec.rules[0].to[0].operation.hosts[0]: empty value not allowed",
                "spec.rules[0].to[0].operation.notPaths[0]: empty value not allowed",
            ],
        ),
        (
            "Istio: value-empty",
            "",
            "rules: [{when: [{key: \"request.headers[:authority]\", values: [v1, \"\"]}]}]",
            vec!["spec.rules[0].when[0].values[1]: empty value not allowed"],
        ),
        (
            "Istio: invalid ip and port in ipBlocks",
            "",
            "rules:\n- from: [{source: {ipBlocks: [1.2.3.4, ip1], notIpBlocks: [5.6.7.8, ip2]}}]\n\
             \x20 to: [{operation: {ports: [\"80\", port1], notPorts: [\"90\", port2]}}]",
            vec![
                "spec.rules[0].from[0].source.ipBlocks[1]: bad IP address (ip1)",
                "spec.rules[0].from[0].source.notIpBlocks[1]: bad IP address (ip2)",
                "spec.rules[0].to[0].operation.ports[1]: bad port (port1)",
                "spec.rules[0].to[0].operation.notPorts[1]: bad port (port2)",
            ],
        ),
        (
            "Istio: condition-key-missing",
            "",
            "rules: [{when: [{values: [v1, v2]}]}]",
            vec!["spec.rules[0].when[0].key: `key` must not be empty"],
        ),
        (
            "Istio: condition-value-missing",
            "",
            "rules: [{when: [{key: source.principal}]}]",
            vec![
                "spec.rules[0].when[0]: at least one of `values` or `notValues` must be set for key source.principal",
            ],
        ),
        (
            "Istio: condition-value-invalid",
            "",
            "rules: [{when: [{key: source.ip, values: [a.b.c.d]}]}]",
            vec!["spec.rules[0].when[0].values[0]: bad IP address (a.b.c.d)"],
        ),
        (
            "Istio: condition-notValue-invalid",
            "",
            "rules: [{when: [{key: destination.ip, notValues: [1.2.3.4/33]}]}]",
            vec!["spec.rules[0].when[0].notValues[0]: bad CIDR range (1.2.3.4/33)"],
        ),
        (
            "Istio: condition-unknown",
            "",
            "rules: [{when: [{key: key1, values: [v1]}]}]",
            vec!["spec.rules[0].when[0].key: unknown attribute: key1"],
        ),
        (
            "Istio: ValidateAttribute destination.namespace",
            "",
            "rules: [{when: [{key: destination.namespace, values: [v1]}]}]",
            vec![
                "spec.rules[0].when[0].key: attribute destination.namespace is replaced by the metadata.namespace",
            ],
        ),
        (
            "Istio: ValidateAttribute bad map key",
            "",
            "rules: [{when: [{key: \"request.headers[]\", values: [v1]}]}]",
            vec!["spec.rules[0].when[0].key: bad key (request.headers[])"],
        ),
        (
            "Istio: L7DenyWithTo (valid; Istio warns it denies all TCP traffic)",
            "",
            "action: DENY\nrules: [{to: [{operation: {methods: [GET, DELETE]}}]}]",
            vec![],
        ),
        (
            "Istio: L7DenyWithFromAndToWithPort",
            "",
            "action: DENY\nrules: [{from: [{source: {principals: [temp]}}], to: [{operation: {ports: [\"8080\"], methods: [GET, DELETE]}}]}]",
            vec![],
        ),
        (
            "egress: L7DenyWithFrom uses requestPrincipals (JWT)",
            "",
            "action: DENY\nrules: [{from: [{source: {requestPrincipals: [example.com/sub-1]}}]}]",
            vec!["spec.rules[0].from[0].source.requestPrincipals: JWT is not supported"],
        ),
        (
            "Istio: destination.port values",
            "",
            "rules: [{when: [{key: destination.port, values: [\"8080\", \"65536\"]}]}]",
            vec!["spec.rules[0].when[0].values[1]: bad port (65536)"],
        ),
        (
            "egress: port 0 can never match",
            "",
            "rules: [{to: [{operation: {ports: [\"0\"]}}]}]",
            vec!["spec.rules[0].to[0].operation.ports[0]: bad port (0)"],
        ),
        (
            "egress: ports are strings of digits (Go's ParseUint refuses a sign)",
            "",
            "rules: [{to: [{operation: {ports: [\"+80\", 80]}}]}]",
            vec![
                "spec.rules[0].to[0].operation.ports[1]: must be a string, got an integer (80)",
                "spec.rules[0].to[0].operation.ports[0]: bad port (+80)",
            ],
        ),
        (
            "egress: requestPrincipals need JWT",
            "",
            "rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]",
            vec!["spec.rules[0].from[0].source.requestPrincipals: JWT is not supported"],
        ),
        (
            "egress: notRequestPrincipals need JWT",
            "",
            "action: DENY\nrules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]",
            vec!["spec.rules[0].from[0].source.notRequestPrincipals: JWT is not supported"],
        ),
        (
            "egress: request.auth conditions need JWT",
            "",
            "rules: [{when: [{key: \"request.auth.claims[iss]\", values: [x]}]}]",
            vec!["spec.rules[0].when[0].key: request.auth.claims[iss]: JWT is not supported"],
        ),
        (
            "egress: remoteIpBlocks",
            "",
            "rules: [{from: [{source: {remoteIpBlocks: [1.2.3.4], notRemoteIpBlocks: [5.6.7.8]}}]}]",
            vec![
                "spec.rules[0].from[0].source.remoteIpBlocks: is not supported (no proxy protocol / XFF trust)",
                "spec.rules[0].from[0].source.notRemoteIpBlocks: is not supported (no proxy protocol / XFF trust)",
            ],
        ),
        (
            "egress: remote.ip",
            "",
            "rules: [{when: [{key: remote.ip, values: [1.2.3.4]}]}]",
            vec![
                "spec.rules[0].when[0].key: remote.ip is not supported (no proxy protocol / XFF trust)",
            ],
        ),
        (
            "egress: experimental.envoy.filters",
            "",
            "rules: [{when: [{key: \"experimental.envoy.filters.a.b[c]\", values: [x]}]}]",
            vec!["spec.rules[0].when[0].key: experimental.envoy.filters.a.b[c] is not supported"],
        ),
        (
            "egress: a misplaced wildcard (Envoy would take it literally)",
            "",
            "rules: [{from: [{source: {principals: [\"cluster.local/ns/*/sa/x\"], namespaces: [\"*a*\"]}}],\n\
             \x20 to: [{operation: {hosts: [\"a.*.com\"]}}]}]",
            vec![
                "spec.rules[0].from[0].source.principals[0]: wildcard is only allowed at the start or end",
                "spec.rules[0].from[0].source.namespaces[0]: at most one wildcard is allowed",
                "spec.rules[0].to[0].operation.hosts[0]: wildcard is only allowed at the start or end",
            ],
        ),
        (
            "egress: principals never carry spiffe:// (Istio adds it)",
            "",
            "rules: [{from: [{source: {principals: [\"spiffe://cluster.local/ns/default/sa/sleep\"]}}]}]",
            vec![
                "spec.rules[0].from[0].source.principals[0]: write principals without the spiffe:// prefix",
            ],
        ),
        (
            "Istio: CheckServiceAccount",
            "",
            "rules: [{from: [{source: {serviceAccounts: [\"a/b/c\", \"/sa\", \"ns/\", \"sa*\"]}}]}]",
            vec![
                "spec.rules[0].from[0].source.serviceAccounts[0]: expected format",
                "spec.rules[0].from[0].source.serviceAccounts[1]: expected format 'serviceAccount' or 'namespace/serviceAccount', found empty namespace",
                "spec.rules[0].from[0].source.serviceAccounts[2]: expected format 'serviceAccount' or 'namespace/serviceAccount', found empty serviceAccount",
                "spec.rules[0].from[0].source.serviceAccounts[3]: wildcard not allowed",
            ],
        ),
        (
            "Istio: CheckTrustDomainValues",
            "",
            "rules: [{from: [{source: {trustDomains: [\"a/b\", \"*.local\"]}}]}]",
            vec!["spec.rules[0].from[0].source.trustDomains[0]: trust domain must not contain '/'"],
        ),
        (
            // authorization_policy.proto Operation.paths examples.
            "Istio: CheckValidPathTemplate",
            "",
            "rules: [{to: [{operation: {paths: [\"/foo/{*}\", \"/foo/{**}/\", \"/*/baz/{*}\", \"/{**}/foo/{*}\", \"/foo/{*}.txt\", \"/a{b\"]}}]}]",
            vec![
                "spec.rules[0].to[0].operation.paths[2]: invalid or unsupported path \"/*/baz/{*}\": contains segment \"*\"",
                "spec.rules[0].to[0].operation.paths[3]: invalid or unsupported path \"/{**}/foo/{*}\": {**} is not the last operator",
                "spec.rules[0].to[0].operation.paths[4]: invalid or unsupported path \"/foo/{*}.txt\": contains '{' or '}'",
                "spec.rules[0].to[0].operation.paths[5]: invalid or unsupported path \"/a{b\": contains '{' or '}'",
            ],
        ),
        (
            "egress: a template must start with '/' (Envoy refuses it otherwise)",
            "",
            "rules: [{to: [{operation: {paths: [\"foo/{*}\"]}}]}]",
            vec!["spec.rules[0].to[0].operation.paths[0]: a path template must start with '/'"],
        ),
        (
            "egress: :path in a header condition",
            "",
            "rules: [{when: [{key: \"request.headers[:path]\", values: [/a]}]}]",
            vec!["spec.rules[0].when[0].key: request.headers[:path] is not supported"],
        ),
        (
            "egress: unknown fields in a policy are errors",
            "",
            "rules: [{to: [{operation: {methods: [GET], method: [POST]}}], form: []}]",
            vec![
                "spec.rules[0].form: unknown field",
                "spec.rules[0].to[0].operation.method: unknown field",
            ],
        ),
        (
            "CRD: action enum",
            "",
            "action: allow",
            vec!["spec.action: unknown action \"allow\""],
        ),
        (
            "CRD: rules[] must be objects",
            "",
            "rules: [~]",
            vec!["spec.rules[0]: `rule` must not be null"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, metadata, spec, want) in cases {
        let got = check_with(metadata, spec).err().unwrap_or_default();
        let same = got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| g.starts_with(w));
        if !same {
            failures.push(format!("{name}:\n  got  {got:#?}\n  want {want:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The seed policy: httpbin.org reachable by `sleep` for GET /get only, by `admin` for
/// anything.
const SEED: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: default
spec:
  targetRefs:
  - kind: ServiceEntry
    group: networking.istio.io
    name: httpbin.org
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/sleep]
    to:
    - operation:
        methods: [GET]
        paths: [/get]
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/admin]
";

#[test]
fn seed_policy_model() {
    let set = parse_str(Path::new("seed.yaml"), SEED).expect("seed policy is valid");
    let sleep = Peer {
        principals: vec!["cluster.local/ns/default/sa/sleep".into()],
        ..Peer::default()
    };
    let admin = Peer {
        principals: vec!["cluster.local/ns/default/sa/admin".into()],
        ..Peer::default()
    };
    assert_eq!(
        set.authorization_policies,
        vec![AuthorizationPolicy {
            source: Source::file("seed.yaml", 1),
            name: "httpbin".into(),
            namespace: "default".into(),
            action: Action::Allow,
            dry_run: false,
            selector: None,
            target_refs: vec![TargetRef {
                group: "networking.istio.io".into(),
                kind: "ServiceEntry".into(),
                name: "httpbin.org".into(),
            }],
            rules: vec![
                Rule {
                    from: vec![sleep],
                    to: vec![Operation {
                        methods: vec!["GET".into()],
                        paths: vec!["/get".into()],
                        ..Operation::default()
                    }],
                    when: vec![],
                },
                Rule {
                    from: vec![admin],
                    ..Rule::default()
                },
            ],
        }]
    );
}

/// istio/istio pilot/pkg/security/authz/builder/testdata/http/allow-full-rule-in.yaml, minus
/// what egress refuses (requestPrincipals, remoteIpBlocks, request.auth.*, remote.ip,
/// experimental.*), with `selector` swapped for `targetRefs`.
#[test]
fn every_supported_field() {
    let spec = "\
targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin}]
rules:
- from:
  - source:
      serviceAccounts: [my-ns/my-sa, sa-only]
      notServiceAccounts: [my-ns/my-sa-not, sa-not-only]
- from:
  - source:
      principals: [principal, principal-prefix-*, '*-suffix-principal', '*']
      namespaces: [ns, ns-prefix-*, '*-ns-suffix', '*']
      ipBlocks: [1.2.3.4, 5.6.0.0/16]
      notPrincipals: [not-principal]
      notNamespaces: [not-ns]
      notIpBlocks: [9.0.0.1, 9.2.0.0/16]
      trustDomains: [cluster.local]
      notTrustDomains: ['*.evil']
  to:
  - operation:
      methods: [method, method-prefix-*, '*-suffix-method', '*']
      hosts: [exact.com, '*.suffix.com', prefix.*, '*']
      ports: ['80', '90']
      paths: [/exact, /prefix/*, '*/suffix', '*', '/path/template/{*}', '/{**}/path/template']
      notMethods: [not-method]
      notHosts: [not-exact.com]
      notPorts: ['8000']
      notPaths: [/not-exact]
  when:
  - {key: 'request.headers[X-header]', values: [header, '*'], notValues: [not-header]}
  - {key: source.ip, values: [10.10.10.10, 192.168.10.0/24], notValues: [90.10.10.10]}
  - {key: source.namespace, values: [ns], notValues: [not-ns]}
  - {key: source.principal, values: [principal], notValues: [not-principal]}
  - {key: source.serviceAccount, values: [ns/sa]}
  - {key: source.trustDomain, values: [cluster.local]}
  - {key: destination.ip, values: [10.10.10.10], notValues: [90.10.10.10]}
  - {key: destination.port, values: ['91', '92'], notValues: ['9001']}
  - {key: connection.sni, values: [exact.com, '*.suffix.com'], notValues: [not-exact.com]}
";
    let policy = check(spec).expect("valid");
    assert_eq!(policy.rules.len(), 2);
    let from = &policy.rules[1].from[0];
    assert_eq!(
        from.ip_blocks,
        vec![
            IpNet {
                addr: "1.2.3.4".parse().expect("ip"),
                prefix_len: 32
            },
            IpNet {
                addr: "5.6.0.0".parse().expect("ip"),
                prefix_len: 16
            },
        ]
    );
    assert_eq!(policy.rules[1].to[0].ports, vec![80, 90]);
    let when = &policy.rules[1].when;
    assert_eq!(
        when[0],
        Condition {
            key: ConditionKey::RequestHeader("x-header".into()),
            values: vec!["header".into(), "*".into()],
            not_values: vec!["not-header".into()],
        }
    );
    let keys: Vec<String> = when.iter().map(|c| c.key.to_string()).collect();
    assert_eq!(
        keys,
        [
            "request.headers[x-header]",
            "source.ip",
            "source.namespace",
            "source.principal",
            "source.serviceAccount",
            "source.trustDomain",
            "destination.ip",
            "destination.port",
            "connection.sni",
        ]
    );
}

/// Absent `rules`, `rules: []` and `rules: [{}]` (istio/api authorization_policy.proto: "If not
/// set, the match will never occur"; "An empty rule is always matched").
#[test]
fn rules_absent_empty_and_one_empty_rule() {
    assert_eq!(check("{}").expect("valid").rules, vec![]);
    assert_eq!(check("rules: []").expect("valid").rules, vec![]);
    assert_eq!(
        check("rules: [{}]").expect("valid").rules,
        vec![Rule::default()]
    );
    // A document without `spec` is an empty spec, as the API server stores it.
    let text = "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n\
                metadata: {name: allow-nothing, namespace: foo}\n";
    let set = parse_str(Path::new("t.yaml"), text).expect("valid");
    assert_eq!(set.authorization_policies[0].action, Action::Allow);
    assert!(set.authorization_policies[0].rules.is_empty());
}

#[test]
fn dry_run_annotation_and_selector_are_kept() {
    let policy = check_with(
        "  annotations: {istio.io/dry-run: \"True\", other: x}\n",
        "selector: {matchLabels: {app: httpbin}}\naction: DENY\nrules: [{}]",
    )
    .expect("valid");
    assert!(policy.dry_run);
    assert_eq!(
        policy.selector,
        Some(WorkloadSelector {
            match_labels: [("app".to_owned(), "httpbin".to_owned())].into(),
        })
    );
}

/// The deprecated single `targetRef` counts when `targetRefs` is empty (`GetTargetRefs`).
#[test]
fn single_target_ref() {
    let policy = check(
        "targetRef: {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}",
    )
    .expect("valid");
    assert_eq!(policy.target_refs[0].kind, "GatewayClass");
}

/// Errors name file, document and field, and every document is checked.
#[test]
fn errors_name_file_document_and_field() {
    let text = format!(
        "{SEED}---\n{}",
        document(
            "",
            "action: DENY\nrules: [{to: [{operation: {ports: [\"99999\"]}}]}]"
        )
    );
    let errors = parse_str(Path::new("policies.yaml"), &text).expect_err("invalid");
    assert_eq!(
        errors.to_string(),
        "policies.yaml:2:spec.rules[0].to[0].operation.ports[0]: bad port (99999): must be a \
         number between 1 and 65535"
    );
}
