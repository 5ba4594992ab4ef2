//! [`PolicySet`]: which policies attach to a ServiceEntry, and the verdict for one request.
use std::{borrow::Cow, collections::HashMap, fmt, net::IpAddr};

use http::{HeaderMap, HeaderName};

use super::{
    Attributes, Decision, DryRunMatch, PolicyRef, RuleRef, Target,
    compile::{Clause, CompiledPolicy, CompiledRule, Leaf, Pred, compile},
};
use crate::config::{Action, AuthorizationPolicy, IpNet};

/// The GatewayClass of Istio waypoints (`constants.WaypointGatewayClassName`).
const WAYPOINT_GATEWAY_CLASS: &str = "istio-waypoint";

/// The policies of one config generation, compiled once and evaluated per request.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
    /// namespace -> ServiceEntry name -> indexes into `policies`.
    by_service: HashMap<String, HashMap<String, Vec<usize>>>,
    /// Root-namespace policies targeting the waypoint GatewayClass: they apply everywhere.
    global: Vec<usize>,
    ignored: Vec<IgnoredPolicy>,
}

/// A policy that attaches to nothing egress serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoredPolicy {
    pub policy: PolicyRef,
    pub reason: IgnoreReason,
}

/// Why a policy does not apply at the waypoint (`ShouldAttachPolicy` for a waypoint proxy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgnoreReason {
    /// `selector` policies select workloads (sidecars); a waypoint never uses them.
    Selector,
    /// Neither `selector` nor `targetRefs`: namespace-wide for sidecars and ztunnel, nothing
    /// for a waypoint.
    NoTargetRefs,
    /// Only Gateways, Services, or a GatewayClass outside the root namespace.
    OtherTargets,
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IgnoreReason::Selector => "uses `selector`, which a waypoint ignores; use targetRefs",
            IgnoreReason::NoTargetRefs => {
                "has no targetRefs, so it applies to sidecars and ztunnel, not to a waypoint"
            }
            IgnoreReason::OtherTargets => {
                "targets no ServiceEntry (and no GatewayClass istio-waypoint in the root namespace)"
            }
        })
    }
}

impl PolicySet {
    /// Compiles `policies` and attaches them: a `targetRefs` entry of kind ServiceEntry (group
    /// `networking.istio.io`) attaches to the ServiceEntry of that name in the policy's
    /// namespace; one of kind GatewayClass `istio-waypoint` (group `gateway.networking.k8s.io`)
    /// in `root_namespace` attaches to every ServiceEntry. Nothing else attaches.
    pub fn new(policies: &[AuthorizationPolicy], root_namespace: &str) -> Self {
        let mut set = PolicySet::default();
        for policy in policies {
            let index = set.policies.len();
            let compiled = compile(policy);
            let mut global = false;
            let mut services: Vec<&str> = Vec::new();
            if policy.selector.is_none() {
                for target in &policy.target_refs {
                    let group = if target.group.is_empty() {
                        "core"
                    } else {
                        target.group.as_str()
                    };
                    match (group, target.kind.as_str()) {
                        ("networking.istio.io", "ServiceEntry") => services.push(&target.name),
                        ("gateway.networking.k8s.io", "GatewayClass") => {
                            global |= policy.namespace == root_namespace
                                && target.name == WAYPOINT_GATEWAY_CLASS;
                        }
                        _ => {}
                    }
                }
            }
            if global {
                set.global.push(index);
            } else if !services.is_empty() {
                let by_name = set.by_service.entry(policy.namespace.clone()).or_default();
                services.sort_unstable();
                services.dedup();
                for name in services {
                    by_name.entry(name.to_owned()).or_default().push(index);
                }
            } else {
                let reason = if policy.selector.is_some() {
                    IgnoreReason::Selector
                } else if policy.target_refs.is_empty() {
                    IgnoreReason::NoTargetRefs
                } else {
                    IgnoreReason::OtherTargets
                };
                set.ignored.push(IgnoredPolicy {
                    policy: compiled.policy.clone(),
                    reason,
                });
            }
            set.policies.push(compiled);
        }
        set
    }

    /// Policies that apply nowhere at the waypoint, for the caller to warn about once.
    pub fn ignored(&self) -> &[IgnoredPolicy] {
        &self.ignored
    }

    /// The policies attached to `target`, with their action and dry-run flag.
    pub fn attached(&self, target: &Target<'_>) -> Vec<(&PolicyRef, Action, bool)> {
        self.applicable(target)
            .map(|p| (&p.policy, p.action, p.dry_run))
            .collect()
    }

    fn applicable<'s>(&'s self, target: &Target<'_>) -> impl Iterator<Item = &'s CompiledPolicy> {
        let local = self
            .by_service
            .get(target.namespace)
            .and_then(|by_name| by_name.get(target.service_entry))
            .map_or(&[][..], Vec::as_slice);
        self.global
            .iter()
            .chain(local)
            .map(|&index| &self.policies[index])
    }

    /// The verdict for one request (HTTP) or connection (TLS/TCP) to `target`.
    ///
    /// DENY first: any matching DENY denies. Then, when no ALLOW policy applies, allow; when
    /// one of them matches, allow; otherwise deny. AUDIT and dry-run policies are evaluated and
    /// reported but never change the verdict. When several rules match, the one reported is
    /// the one Envoy reports: the first in the order of its policy names.
    pub fn evaluate(&self, target: &Target<'_>, attrs: &Attributes<'_>) -> Decision {
        let principal = attrs.principal.map(crate::identity::Principal::render);
        let concrete = Evaluator {
            attrs,
            principal: principal.as_deref(),
            l4_only: false,
        };
        let l4 = Evaluator {
            l4_only: true,
            ..concrete
        };
        let mut state = State::default();
        for policy in self.applicable(target) {
            match (policy.action, policy.dry_run) {
                (Action::Audit, _) => {
                    if let Some(m) = first_match(policy, &concrete) {
                        consider(&mut state.audit, m);
                    }
                }
                (action, true) => {
                    state.has_dry_allow |= action == Action::Allow;
                    state.any_dry = true;
                    if let Some(m) = first_match(policy, &concrete) {
                        match action {
                            Action::Allow => state.dry_allow = true,
                            _ => state.dry_deny = true,
                        }
                        state.dry_run.push((m.id, action, rule_ref(&m)));
                    }
                }
                (Action::Allow, false) => {
                    state.has_allow = true;
                    if let Some(m) = first_match(policy, &concrete) {
                        consider(&mut state.allow, m);
                    }
                    state.allow_l4 = state.allow_l4.or(any_rule(policy, &l4));
                }
                (_, false) => {
                    if let Some(m) = first_match(policy, &concrete) {
                        consider(&mut state.deny, m);
                    }
                    state.deny_l4 = state.deny_l4.or(any_rule(policy, &l4));
                }
            }
        }
        state.decide()
    }
}

/// A matching rule.
struct Match<'p> {
    id: &'p str,
    policy: &'p PolicyRef,
    rule: usize,
}

fn rule_ref(m: &Match<'_>) -> RuleRef {
    RuleRef {
        policy: m.policy.clone(),
        rule: m.rule,
    }
}

fn consider<'p>(best: &mut Option<Match<'p>>, candidate: Match<'p>) {
    if best.as_ref().is_none_or(|b| candidate.id < b.id) {
        *best = Some(candidate);
    }
}

/// The first rule of `policy`, in Envoy's order, that matches.
fn first_match<'p>(policy: &'p CompiledPolicy, eval: &Evaluator<'_>) -> Option<Match<'p>> {
    let mut best = None;
    for rule in &policy.rules {
        if eval.rule(rule) == Tri::True {
            consider(
                &mut best,
                Match {
                    id: &rule.id,
                    policy: &policy.policy,
                    rule: rule.index,
                },
            );
        }
    }
    best
}

fn any_rule(policy: &CompiledPolicy, eval: &Evaluator<'_>) -> Tri {
    any(policy.rules.iter().map(|rule| eval.rule(rule)))
}

#[derive(Default)]
struct State<'p> {
    deny: Option<Match<'p>>,
    allow: Option<Match<'p>>,
    audit: Option<Match<'p>>,
    has_allow: bool,
    /// Whether any DENY / ALLOW rule matches when only L4 attributes are known.
    deny_l4: Tri,
    allow_l4: Tri,
    any_dry: bool,
    has_dry_allow: bool,
    dry_allow: bool,
    dry_deny: bool,
    dry_run: Vec<(&'p str, Action, RuleRef)>,
}

impl State<'_> {
    fn decide(mut self) -> Decision {
        // Had the dry-run policies been enforced alongside the others.
        let dry_run_allowed = self.any_dry.then(|| {
            let deny_matched = self.deny.is_some() || self.dry_deny;
            let allow_applies = self.has_allow || self.has_dry_allow;
            let allow_matched = self.allow.is_some() || self.dry_allow;
            !deny_matched && (!allow_applies || allow_matched)
        });
        let (allowed, decider) = match (self.deny.take(), self.has_allow, self.allow.take()) {
            (Some(deny), _, _) => (false, Some(deny)),
            (None, false, _) => (true, None),
            (None, true, allow @ Some(_)) => (true, allow),
            (None, true, None) => (false, None),
        };
        // Decidable when the DENY outcome is known, and then the ALLOW outcome if it matters.
        let l4_decidable = match self.deny_l4 {
            Tri::True => true,
            Tri::Unknown => false,
            Tri::False => !self.has_allow || self.allow_l4 != Tri::Unknown,
        };
        self.dry_run.sort_by(|a, b| a.0.cmp(b.0));
        Decision {
            allowed,
            policy: decider.as_ref().map(|m| m.policy.clone()),
            rule: decider.as_ref().map(|m| m.rule),
            l4_decidable,
            dry_run_matches: self
                .dry_run
                .into_iter()
                .map(|(_, action, matched)| DryRunMatch { action, matched })
                .collect(),
            dry_run_allowed,
            audit: self.audit.as_ref().map(rule_ref),
        }
    }
}

/// Kleene's three-valued logic: `Unknown` when the answer depends on what is not known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Tri {
    #[default]
    False,
    Unknown,
    True,
}

impl Tri {
    fn of(b: bool) -> Tri {
        if b { Tri::True } else { Tri::False }
    }

    fn not(self) -> Tri {
        match self {
            Tri::False => Tri::True,
            Tri::Unknown => Tri::Unknown,
            Tri::True => Tri::False,
        }
    }

    fn or(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::True, _) | (_, Tri::True) => Tri::True,
            (Tri::False, Tri::False) => Tri::False,
            _ => Tri::Unknown,
        }
    }
}

fn all(items: impl Iterator<Item = Tri>) -> Tri {
    let mut result = Tri::True;
    for t in items {
        match t {
            Tri::False => return Tri::False,
            Tri::Unknown => result = Tri::Unknown,
            Tri::True => {}
        }
    }
    result
}

fn any(items: impl Iterator<Item = Tri>) -> Tri {
    let mut result = Tri::False;
    for t in items {
        match t {
            Tri::True => return Tri::True,
            Tri::Unknown => result = Tri::Unknown,
            Tri::False => {}
        }
    }
    result
}

/// Evaluates rules against one request. With `l4_only`, every attribute outside the verdict
/// cache key (principal, ServiceEntry, destination port) is `Unknown`: HTTP attributes, the
/// source and destination addresses and the SNI.
#[derive(Clone, Copy)]
struct Evaluator<'a> {
    attrs: &'a Attributes<'a>,
    /// `<td>/ns/<ns>/sa/<sa>`.
    principal: Option<&'a str>,
    l4_only: bool,
}

impl Evaluator<'_> {
    fn rule(&self, rule: &CompiledRule) -> Tri {
        let form = if self.attrs.http.is_some() {
            rule.http.as_ref()
        } else {
            rule.tcp.as_ref()
        };
        form.map_or(Tri::False, |clause| self.clause(clause))
    }

    fn clause(&self, clause: &Clause) -> Tri {
        let list = |preds: &Vec<Pred>| all(preds.iter().map(|p| self.pred(p)));
        let alternatives = |alts: &Vec<Vec<Pred>>| {
            if alts.is_empty() {
                Tri::True
            } else {
                any(alts.iter().map(list))
            }
        };
        all([
            list(&clause.when),
            alternatives(&clause.from),
            alternatives(&clause.to),
        ]
        .into_iter())
    }

    fn pred(&self, pred: &Pred) -> Tri {
        let t = self.leaf(&pred.leaf);
        if pred.negate { t.not() } else { t }
    }

    fn leaf(&self, leaf: &Leaf) -> Tri {
        let attrs = self.attrs;
        let unknown_here = match leaf {
            Leaf::SourceIp(_) | Leaf::DestinationIp(_) | Leaf::Sni(_) => true,
            leaf => leaf.http_only(),
        };
        if self.l4_only && unknown_here {
            return Tri::Unknown;
        }
        let peer = attrs.principal;
        let http = attrs.http.as_ref();
        Tri::of(match leaf {
            // A peer without identity matches no positive identity value, so every `notX`
            // succeeds (ztunnel rbac.rs; Envoy's `authenticated` never matches plaintext).
            Leaf::Principal(ms) => self
                .principal
                .is_some_and(|p| ms.iter().any(|m| m.matches(p.as_bytes()))),
            Leaf::Namespace(ms) => {
                peer.is_some_and(|p| ms.iter().any(|m| m.matches(p.namespace.as_bytes())))
            }
            Leaf::ServiceAccount(accounts) => peer.is_some_and(|p| {
                accounts
                    .iter()
                    .any(|(ns, sa)| *ns == p.namespace && *sa == p.service_account)
            }),
            Leaf::TrustDomain(ms) => {
                peer.is_some_and(|p| ms.iter().any(|m| m.matches(p.trust_domain.as_bytes())))
            }
            Leaf::SourceIp(nets) => attrs
                .source_ip
                .is_some_and(|ip| nets.iter().any(|n| contains(n, ip))),
            Leaf::DestinationIp(nets) => attrs
                .destination_ip
                .is_some_and(|ip| nets.iter().any(|n| contains(n, ip))),
            Leaf::DestinationPort(ports) => ports.contains(&attrs.destination_port),
            // Istio matches the SNI case-sensitively; server names are DNS names, so a DENY
            // must not be sidestepped by `EVIL.example`: egress ignores ASCII case.
            Leaf::Sni(ms) => attrs
                .sni
                .is_some_and(|sni| ms.iter().any(|m| m.matches_ignore_case(sni.as_bytes()))),
            Leaf::Host(ms) => http.is_some_and(|h| ms.iter().any(|m| m.matches_host(h.host))),
            Leaf::Method(ms) => {
                http.is_some_and(|h| ms.iter().any(|m| m.matches(h.method.as_bytes())))
            }
            Leaf::Path(ms) => http.is_some_and(|h| ms.iter().any(|m| m.matches(h.path))),
            Leaf::Header(name, ms) => http.is_some_and(|h| {
                let value = header_value(h.headers, name);
                ms.iter().any(|m| m.matches_header(value.as_deref()))
            }),
            Leaf::Authority(ms) => http.is_some_and(|h| {
                let value = (!h.host.is_empty()).then_some(h.host.as_bytes());
                ms.iter().any(|m| m.matches_header(value))
            }),
        })
    }
}

/// A header's values joined with `,`, as Envoy's header matcher sees repeated headers
/// (normalization page: "Duplicate headers").
fn header_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<Cow<'h, [u8]>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first.as_bytes()));
    };
    let mut joined = first.as_bytes().to_vec();
    for value in std::iter::once(second).chain(values) {
        joined.push(b',');
        joined.extend_from_slice(value.as_bytes());
    }
    Some(Cow::Owned(joined))
}

/// Whether `net` contains `ip` (Envoy's `CidrRange`: families must agree).
fn contains(net: &IpNet, ip: IpAddr) -> bool {
    match (net.addr, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(net.prefix_len))
                .unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(net.prefix_len))
                .unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}
