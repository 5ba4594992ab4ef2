//! [`AuthorizationPolicy`] -> predicates, once per config generation, in the two forms Envoy
//! would build: one for HTTP filter chains, one for TCP filter chains.
//!
//! Re-expressed from istio/istio `pilot/pkg/security/authz/model/model.go` (`New`, `Generate`,
//! `checkError`) and `generator.go`:
//! - a rule matches when any `from` AND any `to` AND every `when` match (`when` conditions are
//!   folded into every source and operation there; that is the same thing);
//! - each field becomes an OR of its values, each `notX` a NOT of the OR of its values;
//! - on a TCP chain, HTTP-only fields (`hosts`, `methods`, `paths`, their `not` forms and
//!   `request.headers` conditions) cannot be evaluated. In an ALLOW policy the *whole rule* is
//!   dropped — it can never allow (`checkError` returns the error, `Generate` skips the rule).
//!   In a DENY or AUDIT policy only that *field* is dropped, so the rule matches more (the
//!   error is ignored and the field contributes nothing). The authz-tcp task shows both;
//! - a value the generator cannot use (a bad port or IP; the loader refuses these, but policies
//!   may be built in code) follows the same rule: ALLOW drops the rule, DENY/AUDIT the value.
use std::sync::Arc;

use http::HeaderName;

use super::{
    PolicyRef,
    matcher::{PathMatch, StrMatch},
};
use crate::config::{
    Action, AuthorizationPolicy, Condition, ConditionKey, IpNet, Operation, Peer, Rule,
    parse_ip_net,
};

/// One attribute test. `negate` is the `notX` form.
#[derive(Clone, Debug)]
pub(crate) struct Pred {
    pub leaf: Leaf,
    pub negate: bool,
}

/// What a predicate looks at, and the values it accepts (any of them).
#[derive(Clone, Debug)]
pub(crate) enum Leaf {
    /// `<td>/ns/<ns>/sa/<sa>`, matched as Istio matches `spiffe://` + value.
    Principal(Vec<StrMatch>),
    Namespace(Vec<StrMatch>),
    /// `(namespace, service account)`.
    ServiceAccount(Vec<(String, String)>),
    TrustDomain(Vec<StrMatch>),
    SourceIp(Vec<IpNet>),
    DestinationIp(Vec<IpNet>),
    DestinationPort(Vec<u16>),
    Sni(Vec<StrMatch>),
    Host(Vec<StrMatch>),
    Method(Vec<StrMatch>),
    Path(Vec<PathMatch>),
    /// A header by name; `:authority` and `:method` are read from the request line.
    Header(HeaderName, Vec<StrMatch>),
    Authority(Vec<StrMatch>),
}

impl Leaf {
    /// Only an HTTP request has it.
    pub(crate) fn http_only(&self) -> bool {
        matches!(
            self,
            Leaf::Host(_) | Leaf::Method(_) | Leaf::Path(_) | Leaf::Header(..) | Leaf::Authority(_)
        )
    }
}

/// A rule's predicates: `any(from) && any(to) && all(when)`; an empty `from`/`to` matches.
#[derive(Clone, Debug, Default)]
pub(crate) struct Clause {
    pub from: Vec<Vec<Pred>>,
    pub to: Vec<Vec<Pred>>,
    pub when: Vec<Pred>,
}

#[derive(Clone, Debug)]
pub(crate) struct CompiledRule {
    /// Index in `spec.rules`.
    pub index: usize,
    /// Envoy's policy name, `ns[NS]-policy[NAME]-rule[N]`. Envoy keeps the policies of one
    /// filter in a sorted map and reports the first that matches, so this orders them.
    pub id: String,
    /// Used for HTTP requests; `None` never matches.
    pub http: Option<Clause>,
    /// Used for TLS/TCP connections; `None` never matches.
    pub tcp: Option<Clause>,
}

#[derive(Clone, Debug)]
pub(crate) struct CompiledPolicy {
    pub policy: PolicyRef,
    /// CUSTOM is compiled as DENY: what Istio does when a CUSTOM provider cannot be used
    /// (`getBadCustomDenyRules`). The loader refuses CUSTOM, so only code-built sets have one.
    pub action: Action,
    pub dry_run: bool,
    /// Empty for a policy without rules: it applies, and never matches (Istio's
    /// `rbacPolicyMatchNever`). An ALLOW policy like that denies everything.
    pub rules: Vec<CompiledRule>,
}

pub(crate) fn compile(policy: &AuthorizationPolicy) -> CompiledPolicy {
    let reference = PolicyRef {
        namespace: Arc::from(policy.namespace.as_str()),
        name: Arc::from(policy.name.as_str()),
    };
    let action = match policy.action {
        Action::Custom => Action::Deny,
        other => other,
    };
    let rules = policy
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let id = format!("{reference}-rule[{index}]");
            let (clause, lossy) = compile_rule(rule, &policy.namespace);
            let http = (!(lossy && action == Action::Allow)).then_some(clause);
            let tcp = http.as_ref().and_then(|clause| tcp_form(clause, action));
            CompiledRule {
                index,
                id,
                http,
                tcp,
            }
        })
        .collect();
    CompiledPolicy {
        policy: reference,
        action,
        dry_run: policy.dry_run,
        rules,
    }
}

/// The clause Envoy's TCP filter would get.
fn tcp_form(clause: &Clause, action: Action) -> Option<Clause> {
    let has_http = |preds: &[Pred]| preds.iter().any(|p| p.leaf.http_only());
    if action == Action::Allow {
        let any_http = clause.from.iter().any(|alt| has_http(alt))
            || clause.to.iter().any(|alt| has_http(alt))
            || has_http(&clause.when);
        return (!any_http).then(|| clause.clone());
    }
    let keep = |preds: &[Pred]| -> Vec<Pred> {
        preds
            .iter()
            .filter(|p| !p.leaf.http_only())
            .cloned()
            .collect()
    };
    Some(Clause {
        from: clause.from.iter().map(|alt| keep(alt)).collect(),
        to: clause.to.iter().map(|alt| keep(alt)).collect(),
        when: keep(&clause.when),
    })
}

/// Predicates built while remembering whether any value had to be left out.
#[derive(Default)]
struct Builder {
    preds: Vec<Pred>,
    lossy: bool,
}

impl Builder {
    /// `values` as one predicate, `not_values` as a negated one; empty lists add nothing.
    fn field<T>(
        &mut self,
        values: &[String],
        not_values: &[String],
        parse: impl Fn(&str) -> Option<T>,
        leaf: impl Fn(Vec<T>) -> Leaf,
    ) {
        for (list, negate) in [(values, false), (not_values, true)] {
            if list.is_empty() {
                continue;
            }
            let parsed: Vec<T> = list.iter().filter_map(|v| parse(v)).collect();
            self.lossy |= parsed.len() != list.len();
            if !parsed.is_empty() {
                self.preds.push(Pred {
                    leaf: leaf(parsed),
                    negate,
                });
            }
        }
    }

    /// Values already typed by the loader.
    fn typed<T: Clone>(&mut self, values: &[T], not_values: &[T], leaf: impl Fn(Vec<T>) -> Leaf) {
        for (list, negate) in [(values, false), (not_values, true)] {
            if !list.is_empty() {
                self.preds.push(Pred {
                    leaf: leaf(list.to_vec()),
                    negate,
                });
            }
        }
    }
}

fn strings(value: &str) -> Option<StrMatch> {
    Some(StrMatch::parse(value))
}

/// `sa` in the policy's namespace, or `ns/sa` (`serviceAccountRegex`).
fn service_account(namespace: &str) -> impl Fn(&str) -> Option<(String, String)> + '_ {
    move |value| match value.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
            Some((ns.to_owned(), sa.to_owned()))
        }
        Some(_) => None,
        None => Some((namespace.to_owned(), value.to_owned())),
    }
}

fn ip(value: &str) -> Option<IpNet> {
    parse_ip_net(value).ok()
}

fn port(value: &str) -> Option<u16> {
    value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse::<u16>().ok())
        .flatten()
}

/// The clause, and whether some value could not be used.
fn compile_rule(rule: &Rule, namespace: &str) -> (Clause, bool) {
    let mut lossy = false;
    let mut clause = Clause::default();
    for peer in &rule.from {
        let b = peer_preds(peer, namespace);
        lossy |= b.lossy;
        clause.from.push(b.preds);
    }
    for operation in &rule.to {
        let b = operation_preds(operation);
        lossy |= b.lossy;
        clause.to.push(b.preds);
    }
    let mut when = Builder::default();
    for condition in &rule.when {
        condition_preds(condition, namespace, &mut when);
    }
    lossy |= when.lossy;
    clause.when = when.preds;
    (clause, lossy)
}

fn peer_preds(peer: &Peer, namespace: &str) -> Builder {
    let mut b = Builder::default();
    b.typed(&peer.ip_blocks, &peer.not_ip_blocks, Leaf::SourceIp);
    b.field(
        &peer.namespaces,
        &peer.not_namespaces,
        strings,
        Leaf::Namespace,
    );
    b.field(
        &peer.trust_domains,
        &peer.not_trust_domains,
        strings,
        Leaf::TrustDomain,
    );
    b.field(
        &peer.service_accounts,
        &peer.not_service_accounts,
        service_account(namespace),
        Leaf::ServiceAccount,
    );
    b.field(
        &peer.principals,
        &peer.not_principals,
        strings,
        Leaf::Principal,
    );
    b
}

fn operation_preds(op: &Operation) -> Builder {
    let mut b = Builder::default();
    b.typed(&op.ports, &op.not_ports, Leaf::DestinationPort);
    b.field(
        &op.paths,
        &op.not_paths,
        |v| PathMatch::parse(v).ok(),
        Leaf::Path,
    );
    b.field(&op.methods, &op.not_methods, strings, Leaf::Method);
    b.field(&op.hosts, &op.not_hosts, strings, Leaf::Host);
    b
}

fn condition_preds(c: &Condition, namespace: &str, b: &mut Builder) {
    let (values, not_values) = (&c.values, &c.not_values);
    match &c.key {
        ConditionKey::RequestHeader(name) => match name.as_str() {
            ":authority" => b.field(values, not_values, strings, Leaf::Authority),
            ":method" => b.field(values, not_values, strings, Leaf::Method),
            other => match HeaderName::from_bytes(other.as_bytes()) {
                Ok(header) => b.field(values, not_values, strings, |m| {
                    Leaf::Header(header.clone(), m)
                }),
                // Istio's generator error for a bad key: the whole condition is unusable.
                Err(_) => b.lossy = true,
            },
        },
        ConditionKey::SourceIp => b.field(values, not_values, ip, Leaf::SourceIp),
        ConditionKey::SourceNamespace => b.field(values, not_values, strings, Leaf::Namespace),
        ConditionKey::SourcePrincipal => b.field(values, not_values, strings, Leaf::Principal),
        ConditionKey::SourceServiceAccount => b.field(
            values,
            not_values,
            service_account(namespace),
            Leaf::ServiceAccount,
        ),
        ConditionKey::SourceTrustDomain => b.field(values, not_values, strings, Leaf::TrustDomain),
        ConditionKey::DestinationIp => b.field(values, not_values, ip, Leaf::DestinationIp),
        ConditionKey::DestinationPort => b.field(values, not_values, port, Leaf::DestinationPort),
        ConditionKey::ConnectionSni => b.field(values, not_values, strings, Leaf::Sni),
    }
}
