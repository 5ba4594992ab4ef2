//! `security.istio.io` AuthorizationPolicy -> [`AuthorizationPolicy`], validated as Istio
//! validates it, plus the refusals egress needs.
//!
//! The rules are re-expressed from istio/istio `pkg/config/validation/validation.go`
//! (`ValidateAuthorizationPolicy`, `validateOneOfSelectorType`, `validateWorkloadSelector`,
//! `validatePolicyTargetReference`, `checkDryRunAnnotation`), `pkg/config/security/security.go`
//! (`ValidateAttribute`, `CheckEmptyValues`, `CheckWildcardValues`, `CheckServiceAccount`,
//! `CheckTrustDomainValues`, `CheckValidPathTemplate`, `ValidateIPs`, `ValidatePorts`) and the
//! CRD schema of istio/api (list sizes, `only one of targetRefs or selector`).
//!
//! Where egress is stricter the code says why. The common reason: a policy field egress cannot
//! evaluate (JWT, `remoteIpBlocks`, Envoy metadata) or does not know (a field from a newer Istio, a
//! typo) must be refused, never ignored — an ignored field silently widens an ALLOW or narrows a
//! DENY. So unlike other objects, unknown fields inside `spec` are errors here.
use super::{
    Action, AuthorizationPolicy, Condition, ConditionKey, Operation, Peer, Rule, Source, TargetRef,
    WorkloadSelector,
    error::Issues,
    names::parse_ip_net,
    node::Node,
    object::Metadata,
    policy_values::{
        JWT, REMOTE_IP, bad_ip, check_path, check_principal, check_service_account,
        check_trust_domain, check_wildcard, checked, condition_key, ip_list, parse_port, port_list,
    },
};

/// The annotation that turns a policy into a dry run.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

// List sizes from the CRD schema (istio/api `kubernetes/customresourcedefinitions.gen.yaml`).
const MAX_TARGET_REFS: usize = 16;
const MAX_RULES: usize = 512;
const MAX_FROM: usize = 512;
const MAX_SERVICE_ACCOUNTS: usize = 16;

const UNKNOWN_FIELD: &str = "unknown field: egress will not ignore part of an authorization \
     policy it does not understand (a typo, or a field from a newer Istio)";

/// `(group, kind)` a target reference may name (`allowedTargetRefs`; `""` is the core group).
const TARGET_KINDS: [(&str, &str); 4] = [
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

/// Parses and validates the AuthorizationPolicy in `root` (a whole object). Problems go to
/// `issues`; the returned value is only meaningful when none were added.
pub(crate) fn parse(
    root: &Node<'_>,
    metadata: Metadata,
    source: Source,
    issues: &mut Issues,
) -> AuthorizationPolicy {
    let mut policy = AuthorizationPolicy {
        source,
        name: metadata.name,
        namespace: metadata.namespace,
        action: Action::Allow,
        dry_run: false,
        selector: None,
        target_refs: Vec::new(),
        rules: Vec::new(),
    };
    let dry_run = dry_run_annotation(root, issues);

    // A missing `spec` is an empty one, as the API server would store it: an ALLOW that
    // matches nothing.
    let Some(spec) = root.get("spec") else {
        policy.dry_run = dry_run.is_some_and(|(_, value)| value);
        return policy;
    };
    if spec.object(issues).is_none() {
        return policy;
    }
    check_keys(
        &spec,
        &[
            "selector",
            "targetRef",
            "targetRefs",
            "rules",
            "action",
            "provider",
        ],
        issues,
    );

    if let Some(action) = spec.get("action") {
        policy.action = parse_action(&action, issues).unwrap_or_default();
    }
    if let Some((path, value)) = dry_run {
        policy.dry_run = value;
        if !matches!(policy.action, Action::Allow | Action::Deny) {
            issues.at(
                &path,
                format!(
                    "the annotation {DRY_RUN_ANNOTATION} currently only supports action \
                     ALLOW/DENY, found action {}",
                    policy.action
                ),
            );
        }
    }
    if let Some(provider) = spec.get("provider")
        && policy.action != Action::Custom
    {
        issues.at(
            &provider.path,
            format!(
                "`provider` must not be with non CUSTOM action, found {}",
                policy.action
            ),
        );
    }

    let selector = spec.get("selector");
    let target_ref = spec.get("targetRef");
    let target_refs = spec.get("targetRefs");
    let set = [&selector, &target_ref, &target_refs]
        .iter()
        .filter(|n| n.is_some())
        .count();
    if set > 1 {
        issues.at(
            &spec.path,
            "only one of targetRefs, targetRef or selector can be set",
        );
    }
    if let Some(selector) = selector {
        policy.selector = parse_selector(&selector, issues);
    }
    if let Some(list) = &target_refs {
        let items = list.items(issues);
        if items.len() > MAX_TARGET_REFS {
            issues.at(
                &list.path,
                format!("at most {MAX_TARGET_REFS} target references are allowed"),
            );
        }
        policy.target_refs = items
            .iter()
            .filter_map(|item| parse_target_ref(item, issues))
            .collect();
    }
    if policy.target_refs.is_empty()
        && let Some(single) = target_ref
    {
        // `GetTargetRefs`: the deprecated single reference counts when the list is empty.
        policy.target_refs.extend(parse_target_ref(&single, issues));
    }

    let rules = spec.get("rules");
    if let Some(rules) = &rules {
        let items = rules.items(issues);
        if items.len() > MAX_RULES {
            issues.at(
                &rules.path,
                format!("at most {MAX_RULES} rules are allowed"),
            );
        }
        policy.rules = items
            .iter()
            .filter_map(|rule| parse_rule(rule, issues))
            .collect();
    }
    match policy.action {
        Action::Custom => {
            let at = spec
                .get("action")
                .map_or(spec.key_path("action"), |a| a.path);
            issues.at(
                &at,
                "CUSTOM (ext_authz) is not supported yet: egress has no extension providers; \
                 use ALLOW or DENY",
            );
        }
        // `rules: []` decodes like an absent list in protobuf, so Istio refuses both.
        Action::Deny
            if rules
                .as_ref()
                .is_none_or(|r| r.value.as_array().is_some_and(Vec::is_empty)) =>
        {
            let at = rules.map_or(spec.key_path("rules"), |r| r.path);
            issues.at(
                &at,
                "DENY action without `rules` is meaningless as it will never be triggered, \
                 add an empty rule `{}` if you want it be triggered for every request",
            );
        }
        _ => {}
    }
    policy
}

/// `(field path, value)` of the dry-run annotation, when present.
fn dry_run_annotation(root: &Node<'_>, issues: &mut Issues) -> Option<(String, bool)> {
    let annotations = root.get("metadata")?.get("annotations")?;
    let value = annotations.get(DRY_RUN_ANNOTATION)?;
    let text = value.str(issues)?;
    // Go's strconv.ParseBool, which Istio uses.
    let parsed = match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    };
    match parsed {
        Some(b) => Some((value.path, b)),
        None => {
            issues.at(
                &value.path,
                format!("invalid value {text:?}: must be true or false"),
            );
            None
        }
    }
}

fn check_keys(node: &Node<'_>, known: &[&str], issues: &mut Issues) {
    let Some(map) = node.value.as_object() else {
        return;
    };
    for key in map.keys() {
        if !known.contains(&key.as_str()) {
            issues.at(&node.key_path(key), UNKNOWN_FIELD);
        }
    }
}

/// A mapping that must be present: `null` is reported with `what`.
fn mapping<'a>(node: &Node<'a>, what: &str, issues: &mut Issues) -> Option<Node<'a>> {
    if node.value.is_null() {
        issues.at(&node.path, format!("{what} must not be null"));
        return None;
    }
    node.object(issues).map(|_| node.clone())
}

fn parse_action(node: &Node<'_>, issues: &mut Issues) -> Option<Action> {
    let action = match node.str(issues)? {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => Action::Custom,
        other => {
            issues.at(
                &node.path,
                format!("unknown action {other:?}; expected one of ALLOW, DENY, AUDIT, CUSTOM"),
            );
            return None;
        }
    };
    Some(action)
}

fn parse_selector(node: &Node<'_>, issues: &mut Issues) -> Option<WorkloadSelector> {
    node.object(issues)?;
    check_keys(node, &["matchLabels"], issues);
    let mut selector = WorkloadSelector::default();
    let Some(labels) = node.get("matchLabels") else {
        return Some(selector);
    };
    for (key, path, value) in labels.string_map(issues) {
        if key.is_empty() {
            issues.at(
                &path,
                format!("empty key is not supported in selector: \"={value}\""),
            );
        }
        if key.contains('*') || value.contains('*') {
            issues.at(
                &path,
                format!("wildcard is not supported in selector: \"{key}={value}\""),
            );
        }
        selector
            .match_labels
            .insert(key.to_owned(), value.to_owned());
    }
    Some(selector)
}

fn parse_target_ref(node: &Node<'_>, issues: &mut Issues) -> Option<TargetRef> {
    node.object(issues)?;
    check_keys(node, &["group", "kind", "name", "namespace"], issues);
    let text = |key: &str, issues: &mut Issues| {
        node.get(key)
            .and_then(|n| n.str(issues).map(str::to_owned))
            .unwrap_or_default()
    };
    let target = TargetRef {
        group: text("group", issues),
        kind: text("kind", issues),
        name: text("name", issues),
    };
    if target.name.is_empty() {
        issues.at(&node.key_path("name"), "targetRef name must be set");
    }
    if target.kind.is_empty() {
        issues.at(&node.key_path("kind"), "targetRef kind must be set");
    }
    if !text("namespace", issues).is_empty() {
        issues.at(
            &node.key_path("namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    let group = if target.group.is_empty() {
        "core"
    } else {
        &target.group
    };
    if !target.kind.is_empty()
        && !TARGET_KINDS
            .iter()
            .any(|&(g, k)| g == group && k == target.kind)
    {
        issues.at(
            &node.path,
            format!(
                "targetRef must be to one of core/Service, networking.istio.io/ServiceEntry, \
                 gateway.networking.k8s.io/Gateway or gateway.networking.k8s.io/GatewayClass, \
                 but was {}/{}",
                target.group, target.kind
            ),
        );
    }
    Some(target)
}

fn parse_rule(node: &Node<'_>, issues: &mut Issues) -> Option<Rule> {
    let node = mapping(node, "`rule`", issues)?;
    check_keys(&node, &["from", "to", "when"], issues);
    let mut rule = Rule::default();
    if let Some(from) = node.get("from") {
        let items = from.items(issues);
        if from.value.is_array() && items.is_empty() {
            issues.at(&from.path, "`from` must not be empty");
        }
        if items.len() > MAX_FROM {
            issues.at(
                &from.path,
                format!("at most {MAX_FROM} sources are allowed"),
            );
        }
        for item in &items {
            rule.from.extend(parse_from(item, issues));
        }
    }
    if let Some(to) = node.get("to") {
        let items = to.items(issues);
        if to.value.is_array() && items.is_empty() {
            issues.at(&to.path, "`to` must not be empty");
        }
        for item in &items {
            rule.to.extend(parse_to(item, issues));
        }
    }
    if let Some(when) = node.get("when") {
        for item in &when.items(issues) {
            rule.when.extend(parse_condition(item, issues));
        }
    }
    Some(rule)
}

fn parse_from(node: &Node<'_>, issues: &mut Issues) -> Option<Peer> {
    let node = mapping(node, "`from`", issues)?;
    check_keys(&node, &["source"], issues);
    let Some(source) = node.get("source") else {
        issues.at(&node.key_path("source"), "`from.source` must not be null");
        return None;
    };
    source.object(issues)?;
    check_keys(
        &source,
        &[
            "principals",
            "notPrincipals",
            "requestPrincipals",
            "notRequestPrincipals",
            "namespaces",
            "notNamespaces",
            "serviceAccounts",
            "notServiceAccounts",
            "trustDomains",
            "notTrustDomains",
            "ipBlocks",
            "notIpBlocks",
            "remoteIpBlocks",
            "notRemoteIpBlocks",
        ],
        issues,
    );
    let mut any_field = false;
    let mut list = |key: &str, issues: &mut Issues| -> Vec<(String, String)> {
        let Some(field) = source.get(key) else {
            return Vec::new();
        };
        let values = field.strings(issues);
        any_field |= !values.is_empty();
        values
            .into_iter()
            .map(|(path, value)| (path, value.to_owned()))
            .collect()
    };
    let principals = list("principals", issues);
    let not_principals = list("notPrincipals", issues);
    let namespaces = list("namespaces", issues);
    let not_namespaces = list("notNamespaces", issues);
    let service_accounts = list("serviceAccounts", issues);
    let not_service_accounts = list("notServiceAccounts", issues);
    let trust_domains = list("trustDomains", issues);
    let not_trust_domains = list("notTrustDomains", issues);
    let ip_blocks = list("ipBlocks", issues);
    let not_ip_blocks = list("notIpBlocks", issues);
    for key in [
        "requestPrincipals",
        "notRequestPrincipals",
        "remoteIpBlocks",
        "notRemoteIpBlocks",
    ] {
        if list(key, issues).is_empty() {
            continue;
        }
        let message = match key {
            "requestPrincipals" | "notRequestPrincipals" => JWT,
            _ => REMOTE_IP,
        };
        issues.at(&source.key_path(key), message);
    }
    if !any_field {
        issues.at(&source.path, "`from.source` must not be empty");
    }
    let sets_service_accounts = !service_accounts.is_empty() || !not_service_accounts.is_empty();
    let sets_identities = !principals.is_empty()
        || !not_principals.is_empty()
        || !namespaces.is_empty()
        || !not_namespaces.is_empty();
    if sets_service_accounts && sets_identities {
        issues.at(
            &source.path,
            "cannot set serviceAccounts with namespaces or principals",
        );
    }
    for (key, values) in [
        ("serviceAccounts", &service_accounts),
        ("notServiceAccounts", &not_service_accounts),
    ] {
        if values.len() > MAX_SERVICE_ACCOUNTS {
            issues.at(
                &source.key_path(key),
                format!("may not have more than {MAX_SERVICE_ACCOUNTS} values"),
            );
        }
    }
    Some(Peer {
        principals: checked(principals, check_principal, issues),
        not_principals: checked(not_principals, check_principal, issues),
        namespaces: checked(namespaces, check_wildcard, issues),
        not_namespaces: checked(not_namespaces, check_wildcard, issues),
        service_accounts: checked(service_accounts, check_service_account, issues),
        not_service_accounts: checked(not_service_accounts, check_service_account, issues),
        trust_domains: checked(trust_domains, check_trust_domain, issues),
        not_trust_domains: checked(not_trust_domains, check_trust_domain, issues),
        ip_blocks: ip_list(ip_blocks, issues),
        not_ip_blocks: ip_list(not_ip_blocks, issues),
    })
}

fn parse_to(node: &Node<'_>, issues: &mut Issues) -> Option<Operation> {
    let node = mapping(node, "`to`", issues)?;
    check_keys(&node, &["operation"], issues);
    let Some(op) = node.get("operation") else {
        issues.at(
            &node.key_path("operation"),
            "`to.operation` must not be null",
        );
        return None;
    };
    op.object(issues)?;
    check_keys(
        &op,
        &[
            "hosts",
            "notHosts",
            "ports",
            "notPorts",
            "methods",
            "notMethods",
            "paths",
            "notPaths",
        ],
        issues,
    );
    let mut any_field = false;
    let mut list = |key: &str, issues: &mut Issues| -> Vec<(String, String)> {
        let Some(field) = op.get(key) else {
            return Vec::new();
        };
        let values = field.strings(issues);
        any_field |= !values.is_empty();
        values
            .into_iter()
            .map(|(path, value)| (path, value.to_owned()))
            .collect()
    };
    let operation = Operation {
        hosts: checked(list("hosts", issues), check_wildcard, issues),
        not_hosts: checked(list("notHosts", issues), check_wildcard, issues),
        ports: port_list(list("ports", issues), issues),
        not_ports: port_list(list("notPorts", issues), issues),
        methods: checked(list("methods", issues), check_wildcard, issues),
        not_methods: checked(list("notMethods", issues), check_wildcard, issues),
        paths: checked(list("paths", issues), check_path, issues),
        not_paths: checked(list("notPaths", issues), check_path, issues),
    };
    if !any_field {
        issues.at(&op.path, "`to.operation` must not be empty");
    }
    Some(operation)
}

fn parse_condition(node: &Node<'_>, issues: &mut Issues) -> Option<Condition> {
    let node = mapping(node, "`when`", issues)?;
    check_keys(&node, &["key", "values", "notValues"], issues);
    let key_path = node.key_path("key");
    let key = match node.get("key") {
        Some(key) => key.str(issues)?,
        None => "",
    };
    if key.is_empty() {
        issues.at(&key_path, "`key` must not be empty");
        return None;
    }
    let values = node.get("values").map(|v| v.strings(issues));
    let not_values = node.get("notValues").map(|v| v.strings(issues));
    let (values, not_values) = (values.unwrap_or_default(), not_values.unwrap_or_default());
    if values.is_empty() && not_values.is_empty() {
        issues.at(
            &node.path,
            format!("at least one of `values` or `notValues` must be set for key {key}"),
        );
        return None;
    }
    let key = match condition_key(key) {
        Ok(key) => key,
        Err(message) => {
            issues.at(&key_path, message);
            return None;
        }
    };
    let check: fn(&str) -> Result<(), String> = match key {
        ConditionKey::SourceIp | ConditionKey::DestinationIp => {
            |v| parse_ip_net(v).map(|_| ()).map_err(|_| bad_ip(v))
        }
        ConditionKey::DestinationPort => |v| parse_port(v).map(|_| ()),
        ConditionKey::SourcePrincipal => check_principal,
        ConditionKey::SourceServiceAccount => check_service_account,
        ConditionKey::SourceTrustDomain => check_trust_domain,
        ConditionKey::RequestHeader(_)
        | ConditionKey::SourceNamespace
        | ConditionKey::ConnectionSni => check_wildcard,
    };
    let own = |list: Vec<(String, &str)>| {
        list.into_iter()
            .map(|(path, value)| (path, value.to_owned()))
            .collect()
    };
    Some(Condition {
        key,
        values: checked(own(values), check, issues),
        not_values: checked(own(not_values), check, issues),
    })
}

#[cfg(test)]
#[path = "authorization_policy_tests.rs"]
mod tests;
