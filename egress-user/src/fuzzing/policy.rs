//! The policy engine's fuzz property: policies and requests built with `arbitrary` from small
//! vocabularies (so that rules do match), written as YAML and loaded like any config, then
//! evaluated.
use std::{net::IpAddr, path::Path};

use arbitrary::{Arbitrary, Unstructured};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::{
    config::{self, Action, AuthorizationPolicy, ConfigSet},
    identity::Principal,
    policy::{Attributes, Decision, HttpAttributes, PolicySet, Target, normalize_path},
};

const ROOT_NAMESPACE: &str = "istio-system";
const TARGET: Target<'static> = Target {
    namespace: "foo",
    service_entry: "svc",
};

/// Policies and two requests to `foo/svc` from the same peer on the same port, differing in
/// everything else.
///
/// Properties: no panic; evaluation is deterministic; a DENY (or CUSTOM) that denies the request
/// on its own denies it among all the policies, whatever they ALLOW; an ALLOW that allows it on
/// its own allows it when no DENY matches; dry-run and AUDIT policies never change the verdict;
/// a verdict said to be L4-decidable is the same for the second request.
pub fn policy(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let Ok(case) = Case::arbitrary(&mut input) else {
        return;
    };
    let yaml = case.yaml();
    let Ok(set) = config::parse_str(Path::new("fuzz.yaml"), &yaml) else {
        return;
    };
    let policies = set.authorization_policies;
    let all = PolicySet::new(&policies, ROOT_NAMESPACE);
    for request in [&case.request, &case.other] {
        let decision = decide(&all, request, &case);
        assert_eq!(decision, decide(&all, request, &case), "not deterministic");
        let rebuilt = PolicySet::new(&policies, ROOT_NAMESPACE);
        assert_eq!(
            decision,
            decide(&rebuilt, request, &case),
            "not deterministic"
        );

        let mut denied_alone = false;
        let mut allowed_alone = false;
        for policy in policies.iter().filter(|p| !p.dry_run) {
            let alone = decide(
                &PolicySet::new(std::slice::from_ref(policy), ROOT_NAMESPACE),
                request,
                &case,
            );
            match policy.action {
                Action::Deny | Action::Custom => denied_alone |= !alone.allowed,
                Action::Allow => allowed_alone |= alone.allowed && alone.policy.is_some(),
                Action::Audit => assert!(alone.allowed, "an AUDIT policy denied"),
            }
        }
        if denied_alone {
            assert!(
                !decision.allowed,
                "a matching DENY did not win: {decision:?}"
            );
        } else if allowed_alone {
            assert!(
                decision.allowed,
                "a matching ALLOW lost to nothing: {decision:?}"
            );
        }

        let enforced: Vec<AuthorizationPolicy> = policies
            .iter()
            .filter(|p| !p.dry_run && p.action != Action::Audit)
            .cloned()
            .collect();
        let without = decide(&PolicySet::new(&enforced, ROOT_NAMESPACE), request, &case);
        assert_eq!(
            without.allowed, decision.allowed,
            "dry-run or AUDIT policies changed the verdict"
        );
    }
    let first = decide(&all, &case.request, &case);
    if first.l4_decidable && case.request.http.is_some() == case.other.http.is_some() {
        let second = decide(&all, &case.other, &case);
        assert_eq!(
            first.allowed, second.allowed,
            "an L4-decidable verdict changed with L7 attributes"
        );
    }
}

/// Each service entry's verdict for a plain request, for what the config target loaded.
pub(super) fn evaluate_loaded(set: &ConfigSet) {
    let policies = PolicySet::new(&set.authorization_policies, ROOT_NAMESPACE);
    let principal = Principal::new("cluster.local", "default", "sleep");
    let headers = HeaderMap::new();
    for entry in &set.service_entries {
        let target = Target {
            namespace: &entry.namespace,
            service_entry: &entry.name,
        };
        for port in &entry.ports {
            let http = port.protocol.is_http().then_some(HttpAttributes {
                method: "GET",
                host: entry.hosts.first().map_or("", String::as_str),
                path: "/get",
                headers: &headers,
            });
            let attrs = Attributes {
                principal: Some(&principal),
                source_ip: None,
                destination_ip: None,
                destination_port: port.number,
                sni: None,
                http,
            };
            let _ = policies.evaluate(&target, &attrs);
        }
    }
}

fn decide(set: &PolicySet, request: &Request, case: &Case) -> Decision {
    let principal = request.principal.as_ref().map(|(td, ns, sa)| {
        Principal::new(
            pick(TRUST_DOMAINS, *td),
            pick(NAMESPACES, *ns),
            pick(SERVICE_ACCOUNTS, *sa),
        )
    });
    let ip = |i: &Option<u8>| i.map(|i| pick(IPS, i).parse::<IpAddr>().expect("listed IPs parse"));
    let mut headers = HeaderMap::new();
    let mut path = String::from("/");
    let mut method = "GET";
    let mut host = "";
    if let Some(http) = &request.http {
        for (name, value) in &http.headers {
            let name = HeaderName::from_static(pick(HEADER_NAMES, *name));
            if let Ok(value) = HeaderValue::from_str(&value.text(VALUES)) {
                headers.append(name, value);
            }
        }
        path = normalize_path(&http.path.text(PATHS)).unwrap_or_else(|_| "/".to_owned());
        method = pick(METHODS, http.method);
        host = pick(HOSTS, http.host);
    }
    let attrs = Attributes {
        principal: principal.as_ref(),
        source_ip: ip(&request.source_ip),
        destination_ip: ip(&request.destination_ip),
        destination_port: case.port(),
        sni: request.sni.map(|s| pick(HOSTS, s)),
        http: request.http.as_ref().map(|_| HttpAttributes {
            method,
            host,
            path: &path,
            headers: &headers,
        }),
    };
    set.evaluate(&TARGET, &attrs)
}

const TRUST_DOMAINS: &[&str] = &["cluster.local", "other.domain"];
const NAMESPACES: &[&str] = &["foo", "default", "istio-system", "bar"];
const SERVICE_ACCOUNTS: &[&str] = &["sleep", "admin", "default"];
const IPS: &[&str] = &[
    "10.0.0.1",
    "10.0.1.7",
    "192.168.0.1",
    "127.0.0.10",
    "::1",
    "fd00::1",
];
const PREFIXES: &[u8] = &[32, 24, 16, 8, 0, 128, 64];
const PORTS: &[u16] = &[80, 443, 8080, 15001];
const HOSTS: &[&str] = &["httpbin.test", "svc.foo", "*.test", "evil.example"];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "CUSTOM"];
const PATHS: &[&str] = &[
    "/",
    "/get",
    "/admin",
    "/admin/x",
    "/api/v1/x",
    "/public/../admin",
    "/a%2Fadmin",
];
const PATH_PATTERNS: &[&str] = &["/get", "/admin", "/admin/*", "*", "/api/*", "*/x", "/"];
const HEADER_NAMES: &[&str] = &["x-user", "user-agent", "x-forwarded-client-cert", "x-token"];
const VALUES: &[&str] = &["alice", "bob", "curl/8", "", "*", "a*", "*b"];
const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/default/sa/sleep",
    "cluster.local/ns/default/sa/admin",
    "cluster.local/ns/foo/sa/*",
    "*/sa/sleep",
    "*",
    "other.domain/*",
];
const CONDITION_KEYS: &[&str] = &[
    "request.headers[x-user]",
    "request.headers[user-agent]",
    "source.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

fn pick<T: Copy>(list: &[T], i: u8) -> T {
    list[usize::from(i) % list.len()]
}

/// A word from a field's vocabulary, or now and then anything at all.
#[derive(Arbitrary, Debug)]
enum Word {
    Known(u8),
    Raw(String),
}

impl Word {
    fn text(&self, vocabulary: &[&str]) -> String {
        match self {
            Word::Known(i) => pick(vocabulary, *i).to_owned(),
            Word::Raw(text) => text.clone(),
        }
    }
}

fn words(list: &[Word], vocabulary: &[&str]) -> Value {
    Value::from(list.iter().map(|w| w.text(vocabulary)).collect::<Vec<_>>())
}

#[derive(Arbitrary, Debug)]
struct Case {
    policies: Vec<PolicyInput>,
    port: u8,
    request: Request,
    other: Request,
}

impl Case {
    fn port(&self) -> u16 {
        pick(PORTS, self.port)
    }

    /// The policies as YAML documents (JSON is YAML), at most eight of them.
    fn yaml(&self) -> String {
        let mut yaml = String::new();
        for (i, policy) in self.policies.iter().take(8).enumerate() {
            yaml.push_str(&policy.document(i).to_string());
            yaml.push_str("\n---\n");
        }
        yaml
    }
}

#[derive(Arbitrary, Debug)]
struct Request {
    /// Trust domain, namespace, service account; `None`: a peer without identity.
    principal: Option<(u8, u8, u8)>,
    source_ip: Option<u8>,
    destination_ip: Option<u8>,
    sni: Option<u8>,
    http: Option<HttpRequest>,
}

#[derive(Arbitrary, Debug)]
struct HttpRequest {
    method: u8,
    host: u8,
    path: Word,
    headers: Vec<(u8, Word)>,
}

#[derive(Arbitrary, Debug)]
enum ActionInput {
    Allow,
    Deny,
    Audit,
    Custom,
    Absent,
}

#[derive(Arbitrary, Debug)]
enum Attachment {
    /// `targetRefs` to a ServiceEntry: `svc`, or another.
    ServiceEntry(bool),
    /// The waypoint GatewayClass (attaches everywhere from the root namespace).
    WaypointClass,
    Selector,
    Nothing,
}

#[derive(Arbitrary, Debug)]
struct PolicyInput {
    namespace: u8,
    action: ActionInput,
    dry_run: bool,
    attachment: Attachment,
    /// `None`: no `rules` field.
    rules: Option<Vec<RuleInput>>,
}

impl PolicyInput {
    fn document(&self, index: usize) -> Value {
        let namespace = if matches!(self.attachment, Attachment::WaypointClass)
            && self.namespace.is_multiple_of(2)
        {
            ROOT_NAMESPACE
        } else {
            pick(NAMESPACES, self.namespace)
        };
        let mut metadata = json!({"name": format!("p{index}"), "namespace": namespace});
        if self.dry_run {
            metadata["annotations"] = json!({"istio.io/dry-run": "true"});
        }
        let mut spec = serde_json::Map::new();
        let action = match self.action {
            ActionInput::Allow => Some("ALLOW"),
            ActionInput::Deny => Some("DENY"),
            ActionInput::Audit => Some("AUDIT"),
            ActionInput::Custom => Some("CUSTOM"),
            ActionInput::Absent => None,
        };
        if let Some(action) = action {
            spec.insert("action".into(), action.into());
        }
        match self.attachment {
            Attachment::ServiceEntry(svc) => {
                let name = if svc { "svc" } else { "other" };
                spec.insert(
                    "targetRefs".into(),
                    json!([{"kind": "ServiceEntry", "group": "networking.istio.io", "name": name}]),
                );
            }
            Attachment::WaypointClass => {
                spec.insert(
                    "targetRefs".into(),
                    json!([{"kind": "GatewayClass", "group": "gateway.networking.k8s.io",
                            "name": "istio-waypoint"}]),
                );
            }
            Attachment::Selector => {
                spec.insert("selector".into(), json!({"matchLabels": {"app": "svc"}}));
            }
            Attachment::Nothing => {}
        }
        if let Some(rules) = &self.rules {
            let rules: Vec<Value> = rules.iter().take(4).map(RuleInput::to_value).collect();
            spec.insert("rules".into(), rules.into());
        }
        json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": metadata,
            "spec": spec,
        })
    }
}

#[derive(Arbitrary, Debug)]
struct RuleInput {
    from: Option<Vec<SourceInput>>,
    to: Option<Vec<OperationInput>>,
    when: Option<Vec<ConditionInput>>,
}

impl RuleInput {
    fn to_value(&self) -> Value {
        let mut rule = serde_json::Map::new();
        if let Some(from) = &self.from {
            let from: Vec<Value> = from
                .iter()
                .take(3)
                .map(|s| json!({"source": s.to_value()}))
                .collect();
            rule.insert("from".into(), from.into());
        }
        if let Some(to) = &self.to {
            let to: Vec<Value> = to
                .iter()
                .take(3)
                .map(|o| json!({"operation": o.to_value()}))
                .collect();
            rule.insert("to".into(), to.into());
        }
        if let Some(when) = &self.when {
            let when: Vec<Value> = when.iter().take(3).map(ConditionInput::to_value).collect();
            rule.insert("when".into(), when.into());
        }
        Value::Object(rule)
    }
}

/// Which fields a `source` or `operation` sets: a field and its `not` form, each a list.
#[derive(Arbitrary, Debug)]
struct Field {
    kind: u8,
    negated: bool,
    values: Vec<Word>,
}

#[derive(Arbitrary, Debug)]
struct SourceInput {
    fields: Vec<Field>,
    ip_blocks: Option<(bool, Vec<(u8, u8)>)>,
}

impl SourceInput {
    fn to_value(&self) -> Value {
        let mut source = serde_json::Map::new();
        for field in self.fields.iter().take(3) {
            let (name, vocabulary) = match field.kind % 4 {
                0 => ("principals", PRINCIPALS),
                1 => ("namespaces", NAMESPACES),
                2 => ("serviceAccounts", SERVICE_ACCOUNTS),
                _ => ("trustDomains", TRUST_DOMAINS),
            };
            source.insert(key(name, field.negated), words(&field.values, vocabulary));
        }
        if let Some((negated, blocks)) = &self.ip_blocks {
            let blocks: Vec<String> = blocks
                .iter()
                .map(|&(ip, prefix)| format!("{}/{}", pick(IPS, ip), pick(PREFIXES, prefix)))
                .collect();
            source.insert(key("ipBlocks", *negated), blocks.into());
        }
        Value::Object(source)
    }
}

#[derive(Arbitrary, Debug)]
struct OperationInput {
    fields: Vec<Field>,
}

impl OperationInput {
    fn to_value(&self) -> Value {
        let mut operation = serde_json::Map::new();
        for field in self.fields.iter().take(3) {
            let value = match field.kind % 4 {
                0 => ("hosts", words(&field.values, HOSTS)),
                1 => ("methods", words(&field.values, METHODS)),
                2 => ("paths", words(&field.values, PATH_PATTERNS)),
                _ => {
                    let ports: Vec<String> = field
                        .values
                        .iter()
                        .map(|w| match w {
                            Word::Known(i) => pick(PORTS, *i).to_string(),
                            Word::Raw(text) => text.clone(),
                        })
                        .collect();
                    ("ports", ports.into())
                }
            };
            operation.insert(key(value.0, field.negated), value.1);
        }
        Value::Object(operation)
    }
}

#[derive(Arbitrary, Debug)]
struct ConditionInput {
    key: u8,
    values: Option<Vec<Word>>,
    not_values: Option<Vec<Word>>,
}

impl ConditionInput {
    fn to_value(&self) -> Value {
        let key = pick(CONDITION_KEYS, self.key);
        let vocabulary: &[&str] = match key {
            "source.ip" | "destination.ip" => &["10.0.0.1", "10.0.0.0/8", "::1", "192.168.0.1"],
            "destination.port" => &["80", "443", "8080"],
            "source.namespace" => NAMESPACES,
            "source.principal" => PRINCIPALS,
            "source.serviceAccount" => &["default/sleep", "foo/admin", "sleep"],
            "connection.sni" => HOSTS,
            _ => VALUES,
        };
        let mut condition = json!({"key": key});
        if let Some(values) = &self.values {
            condition["values"] = words(values, vocabulary);
        }
        if let Some(values) = &self.not_values {
            condition["notValues"] = words(values, vocabulary);
        }
        condition
    }
}

fn key(name: &str, negated: bool) -> String {
    if negated {
        let mut chars = name.chars();
        let first = chars.next().map(|c| c.to_ascii_uppercase());
        format!(
            "not{}{}",
            first.map(String::from).unwrap_or_default(),
            chars.as_str()
        )
    } else {
        name.to_owned()
    }
}
