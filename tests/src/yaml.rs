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
