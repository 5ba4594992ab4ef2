//! Istio objects for tests, as the YAML a user would write.
use std::net::{IpAddr, SocketAddr};

/// A ServiceEntry for `host` at `addr` (address and HTTP port) with `resolution: NONE`: the
/// waypoint forwards to the address the application dialled.
pub fn service_entry(name: &str, host: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: default
spec:
  hosts: [{host}]
  addresses: [{ip}]
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  location: MESH_EXTERNAL
  resolution: NONE
",
        ip = addr.ip(),
        port = addr.port(),
    )
}

/// A ServiceEntry for `host` at `address:port` with `resolution: STATIC`: the waypoint forwards
/// to `endpoint` whatever the application dialled.
pub fn static_service_entry(
    name: &str,
    host: &str,
    address: IpAddr,
    port: u16,
    endpoint: SocketAddr,
) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: default
spec:
  hosts: [{host}]
  addresses: [{address}]
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: {endpoint_ip}
    ports:
      http: {endpoint_port}
",
        endpoint_ip = endpoint.ip(),
        endpoint_port = endpoint.port(),
    )
}

/// The seed walkthrough's AuthorizationPolicy (Istio ambient egress), on ServiceEntry `httpbin`
/// in `default`: `default/sa/sleep` may GET /get, `default/sa/admin` anything.
pub const SEED_POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: default
spec:
  targetRefs:
  - kind: ServiceEntry
    group: networking.istio.io
    name: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/default/sa/sleep\"]
    to:
    - operation:
        methods: [\"GET\"]
        paths: [\"/get\"]
  - from:
    - source:
        principals: [\"cluster.local/ns/default/sa/admin\"]
";

/// An AuthorizationPolicy `name` in `default` on ServiceEntry `httpbin` with `action` and
/// `rules` (YAML list items, indented by two spaces, as under `rules:`).
pub fn httpbin_policy(name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: default
spec:
  targetRefs:
  - kind: ServiceEntry
    group: networking.istio.io
    name: httpbin
  action: {action}
  rules:
{rules}"
    )
}

/// The seed policy without the admin rule.
pub fn sleep_only_policy() -> String {
    let admin_rule = SEED_POLICY
        .find(
            "  - from:\n    - source:\n        principals: [\"cluster.local/ns/default/sa/admin\"]",
        )
        .expect("the admin rule is in the seed policy");
    SEED_POLICY[..admin_rule].to_owned()
}

/// `se` (a ServiceEntry from [`service_entry`]) with its port's protocol TCP instead of HTTP:
/// bytes are passed through, not proxied per request.
pub fn as_tcp(se: &str) -> String {
    let tcp = se.replace(
        "name: http\n    protocol: HTTP",
        "name: tcp\n    protocol: TCP",
    );
    assert!(tcp.contains("protocol: TCP"), "{se}");
    tcp
}
