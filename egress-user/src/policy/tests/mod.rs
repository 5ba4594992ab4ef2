//! Table tests of the engine. Each case names its source: an istio.io task, an istio/istio
//! test, istio/ztunnel `src/rbac.rs`, or "egress:" where egress chose (the code says why).
//!
//! Policies are written as YAML and loaded by the config loader, so every case also proves the
//! policy is accepted. They attach with `targetRefs` to the ServiceEntry `svc` in namespace
//! `foo`: the Istio originals use `selector`, which a waypoint ignores.
mod decidable;
mod istio;
mod semantics;

use std::{net::IpAddr, path::Path};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Attributes, Decision, HttpAttributes, PolicySet, Target, normalize_path};
use crate::{
    config::{AuthorizationPolicy, parse_str},
    identity::Principal,
};

/// The ServiceEntry every test policy targets.
const SVC: Target<'static> = Target {
    namespace: "foo",
    service_entry: "svc",
};

/// An AuthorizationPolicy document `name` in `foo` targeting `svc`; `spec` is the rest of the
/// spec, unindented.
fn ap(name: &str, spec: &str) -> String {
    ap_with(name, "", spec)
}

/// As [`ap`], with extra `metadata` lines (indented by two).
fn ap_with(name: &str, metadata: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|line| format!("  {line}\n")).collect();
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata:\n  name: {name}\n  namespace: foo\n{metadata}spec:\n\
         \x20 targetRefs: [{{kind: ServiceEntry, group: networking.istio.io, name: svc}}]\n{spec}---\n"
    )
}

fn policies(yaml: &str) -> Vec<AuthorizationPolicy> {
    match parse_str(Path::new("test.yaml"), yaml) {
        Ok(set) => set.authorization_policies,
        Err(errors) => panic!("test policies must be valid:\n{errors}"),
    }
}

fn policy_set(yaml: &str) -> PolicySet {
    PolicySet::new(&policies(yaml), "istio-system")
}

/// A request or connection, owned; see [`decide`].
#[derive(Clone, Debug)]
struct Req {
    principal: Option<Principal>,
    source_ip: Option<IpAddr>,
    destination_ip: Option<IpAddr>,
    port: u16,
    sni: Option<String>,
    http: Option<HttpReq>,
}

#[derive(Clone, Debug)]
struct HttpReq {
    method: String,
    host: String,
    /// Raw, normalized by [`decide`].
    target: String,
    headers: HeaderMap,
}

/// `ns/sa` in `cluster.local`, or no identity for `""`.
fn who(id: &str) -> Option<Principal> {
    let (ns, sa) = id.split_once('/')?;
    Some(Principal::new("cluster.local", ns, sa))
}

/// An HTTP request on port 80 from `id` (`ns/sa`, or `""` for no identity).
fn http(id: &str, method: &str, target: &str) -> Req {
    Req {
        principal: who(id),
        source_ip: Some("10.0.0.1".parse().expect("ip")),
        destination_ip: Some("192.0.2.10".parse().expect("ip")),
        port: 80,
        sni: None,
        http: Some(HttpReq {
            method: method.into(),
            host: "svc.example.com".into(),
            target: target.into(),
            headers: HeaderMap::new(),
        }),
    }
}

/// A TCP connection to `port` from `id`.
fn tcp(id: &str, port: u16) -> Req {
    Req {
        port,
        http: None,
        ..http(id, "", "/")
    }
}

impl Req {
    fn header(mut self, name: &str, value: &str) -> Self {
        let h = self.http.as_mut().expect("an HTTP request");
        h.headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
        self
    }

    fn host(mut self, host: &str) -> Self {
        self.http.as_mut().expect("an HTTP request").host = host.into();
        self
    }

    fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    fn source(mut self, ip: &str) -> Self {
        self.source_ip = Some(ip.parse().expect("ip"));
        self
    }

    fn destination(mut self, ip: &str) -> Self {
        self.destination_ip = Some(ip.parse().expect("ip"));
        self
    }

    fn sni(mut self, sni: &str) -> Self {
        self.sni = Some(sni.into());
        self
    }

    fn principal(mut self, principal: Principal) -> Self {
        self.principal = Some(principal);
        self
    }
}

/// Normalizes the path as the waypoint does, then asks the engine.
fn decide_for(set: &PolicySet, target: Target<'_>, req: &Req) -> Decision {
    let path = req
        .http
        .as_ref()
        .map(|h| normalize_path(&h.target).unwrap_or_else(|e| panic!("{}: {e}", h.target)));
    let http = req.http.as_ref().map(|h| HttpAttributes {
        method: &h.method,
        host: &h.host,
        path: path.as_deref().unwrap_or("/"),
        headers: &h.headers,
    });
    let attrs = Attributes {
        principal: req.principal.as_ref(),
        source_ip: req.source_ip,
        destination_ip: req.destination_ip,
        destination_port: req.port,
        sni: req.sni.as_deref(),
        http,
    };
    set.evaluate(&target, &attrs)
}

fn decide(set: &PolicySet, req: &Req) -> Decision {
    decide_for(set, SVC, req)
}

/// Checks `request => allowed` rows against one policy set, reporting every mismatch.
macro_rules! authz_table {
    ($set:expr, $( $req:expr => $allowed:expr ),+ $(,)?) => {{
        let set = &$set;
        let mut failures: Vec<String> = Vec::new();
        $(
            let req = $req;
            let decision = decide(set, &req);
            if decision.allowed != $allowed {
                failures.push(format!(
                    "{} should be {}: {:?}",
                    stringify!($req),
                    if $allowed { "allowed" } else { "denied" },
                    decision
                ));
            }
        )+
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }};
}
use authz_table;
