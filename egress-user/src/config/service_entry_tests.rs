//! Table tests for ServiceEntry validation. Cases marked "Istio:" are re-expressed from
//! istio/istio `pkg/config/validation/validation_test.go` (`TestValidateServiceEntries`), with
//! the verdict Istio gives; cases marked "egress:" are where egress is deliberately stricter.
use std::path::Path;

use crate::config::{
    ConfigSet, Endpoint, IpNet, Location, Protocol, Resolution, ServicePort, parse_str,
};

/// A ServiceEntry document named `t` in namespace `default` with the given `spec` lines.
fn service_entry(spec: &str) -> String {
    let spec: String = spec.lines().map(|line| format!("  {line}\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: t}}\nspec:\n{spec}"
    )
}

/// `field: message` of each error, in order.
fn check(spec: &str) -> Result<ConfigSet, Vec<String>> {
    parse_str(Path::new("t.yaml"), &service_entry(spec)).map_err(|errors| {
        errors
            .0
            .into_iter()
            .map(|e| format!("{}: {}", e.field.unwrap_or_default(), e.message))
            .collect()
    })
}

const HTTP_PORTS: &str = "ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]";

#[test]
fn service_entry_rules() {
    // (name, spec, expected error prefixes `field: message`; empty = valid)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "Istio: discovery type DNS",
            format!(
                "hosts: ['*.google.com']\n{HTTP_PORTS}\nendpoints:\n\
                 - {{address: lon.google.com, ports: {{http-valid1: 8080}}}}\n\
                 - {{address: in.google.com, ports: {{http-valid2: 9080}}}}\nresolution: DNS"
            ),
            vec![],
        ),
        (
            "Istio: discovery type DNS Round Robin",
            format!(
                "hosts: ['*.istio.io']\n{HTTP_PORTS}\n\
                 endpoints: [{{address: api-v1.istio.io, ports: {{http-valid1: 8080}}}}]\n\
                 resolution: DNS_ROUND_ROBIN"
            ),
            vec![],
        ),
        (
            "Istio: discovery type DNS, label tlsMode: istio",
            format!(
                "hosts: ['*.google.com']\n{HTTP_PORTS}\nendpoints:\n\
                 - {{address: lon.google.com, labels: {{security.istio.io/tlsMode: istio}}}}\n\
                 resolution: DNS"
            ),
            vec![],
        ),
        (
            "Istio: DNS, multi hosts set with IP address and https port (a warning only)",
            "hosts: [httpbin.org, wikipedia.org]\naddresses: [10.10.10.10]\n\
             ports: [{number: 80, protocol: http, name: http}, {number: 443, protocol: https, name: https}]\n\
             resolution: DNS"
                .into(),
            vec![],
        ),
        (
            "Istio: discovery type DNS, IP in endpoints",
            format!(
                "hosts: ['*.google.com']\n{HTTP_PORTS}\n\
                 endpoints: [{{address: 1.1.1.1}}, {{address: in.google.com}}]\nresolution: DNS"
            ),
            vec![],
        ),
        (
            "Istio: discovery type DYNAMIC_DNS",
            format!("hosts: ['*.google.com']\n{HTTP_PORTS}\nresolution: DYNAMIC_DNS"),
            vec![],
        ),
        (
            "Istio: discovery type DYNAMIC_DNS, unsupported TCP protocol",
            "hosts: ['*.google.com']\naddresses: []\n\
             ports: [{number: 80, protocol: http, name: http-valid1}, {number: 81, protocol: TCP, name: tcp-valid1}]\n\
             resolution: DYNAMIC_DNS"
                .into(),
            vec![
                "spec.ports[1].protocol: protocol \"TCP\": only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type DYNAMIC_DNS",
            ],
        ),
        (
            "Istio: discovery type DYNAMIC_DNS, GRPC protocol",
            "hosts: ['*.svc.cluster.local']\naddresses: []\n\
             ports: [{number: 9090, protocol: GRPC, name: grpc}]\nresolution: DYNAMIC_DNS"
                .into(),
            vec![],
        ),
        (
            "Istio: DYNAMIC_DNS accepts TLS and HTTP2, not HTTPS, GRPC-Web or an unset protocol",
            "hosts: ['*.example.com']\n\
             ports: [{number: 443, protocol: TLS, name: tls}, {number: 8443, protocol: HTTPS, name: https}, \
             {number: 81, protocol: HTTP2, name: h2}, {number: 82, protocol: GRPC-Web, name: web}, \
             {number: 83, name: unset}]\nresolution: DYNAMIC_DNS"
                .into(),
            vec![
                "spec.ports[1].protocol: protocol \"HTTPS\": only HTTP, TLS, GRPC, and HTTP2",
                "spec.ports[3].protocol: protocol \"GRPC-Web\": only HTTP, TLS, GRPC, and HTTP2",
                "spec.ports[4].protocol: protocol \"\": only HTTP, TLS, GRPC, and HTTP2",
            ],
        ),
        (
            "Istio: discovery type DYNAMIC_DNS, FQDN host",
            "hosts: [google.com]\naddresses: []\nports: [{number: 80, protocol: http, name: http-valid}]\n\
             resolution: DYNAMIC_DNS"
                .into(),
            vec![
                "spec.hosts[0]: host \"google.com\" must be wildcarded for resolution mode DYNAMIC_DNS",
            ],
        ),
        (
            "Istio: discovery type DYNAMIC_DNS, endpoints set",
            "hosts: ['*.google.com']\naddresses: []\nports: [{number: 80, protocol: http, name: http-valid1}]\n\
             endpoints: [{address: in.google.com, ports: {http-valid1: 9080}}]\nresolution: DYNAMIC_DNS"
                .into(),
            vec!["spec.endpoints: endpoints cannot be set for resolution type DYNAMIC_DNS"],
        ),
        (
            "Istio: discovery type DYNAMIC_DNS, IP address set",
            format!(
                "hosts: ['*.google.com']\naddresses: [10.10.10.10]\n{HTTP_PORTS}\nresolution: DYNAMIC_DNS"
            ),
            vec!["spec.addresses: addresses cannot be set for resolution type DYNAMIC_DNS"],
        ),
        (
            "Istio: DYNAMIC_DNS with a CIDR address: both of Istio's errors",
            format!(
                "hosts: ['*.google.com']\naddresses: [10.10.0.0/16]\n{HTTP_PORTS}\nresolution: DYNAMIC_DNS"
            ),
            vec![
                "spec.addresses[0]: CIDR addresses are allowed only for NONE/STATIC resolution types",
                "spec.addresses: addresses cannot be set for resolution type DYNAMIC_DNS",
            ],
        ),
        (
            "Istio: discovery type DYNAMIC_DNS, empty hosts",
            "hosts: []\nports: [{number: 80, protocol: http, name: http-valid1}]\nresolution: DYNAMIC_DNS"
                .into(),
            vec!["spec.hosts: at least one host is required"],
        ),
        (
            "Istio: discovery type DYNAMIC_DNS, multiple wildcarded hosts",
            "hosts: ['*.google.com', '*.amazon.com']\nports: [{number: 80, protocol: http, name: http-valid1}]\n\
             resolution: DYNAMIC_DNS"
                .into(),
            vec![],
        ),
        (
            "Istio: DYNAMIC_DNS accepts a partial wildcard (no warning, unlike other resolutions)",
            "hosts: ['*-api.example.com']\nports: [{number: 80, protocol: http, name: http}]\n\
             resolution: DYNAMIC_DNS"
                .into(),
            vec![],
        ),
        (
            "Istio: discovery type DYNAMIC_DNS, internal mesh location",
            "hosts: ['*.google.com']\nports: [{number: 80, protocol: http, name: http-valid1}]\n\
             resolution: DYNAMIC_DNS\nlocation: MESH_INTERNAL"
                .into(),
            vec![],
        ),
        (
            "Istio: empty hosts",
            format!("hosts: []\n{HTTP_PORTS}"),
            vec!["spec.hosts: at least one host is required"],
        ),
        (
            "Istio: missing hosts (CRD: required)",
            HTTP_PORTS.into(),
            vec!["spec.hosts: at least one host is required"],
        ),
        (
            "Istio: bad hosts",
            format!("hosts: ['-']\n{HTTP_PORTS}"),
            vec!["spec.hosts[0]: domain name \"-\" invalid (label \"-\" invalid)"],
        ),
        (
            "Istio: full wildcard host",
            format!("hosts: [foo.com, '*']\n{HTTP_PORTS}"),
            vec!["spec.hosts[1]: invalid host \"*\""],
        ),
        (
            "Istio: short name host",
            format!(
                "hosts: [foo, bar.com]\n{HTTP_PORTS}\nendpoints: [{{address: in.google.com}}]\n\
                 resolution: DNS"
            ),
            vec![],
        ),
        (
            "Istio: undefined endpoint port (and a repeated port number)",
            "hosts: [google.com]\n\
             ports: [{number: 80, protocol: http, name: http-valid1}, {number: 80, protocol: http, name: http-valid2}]\n\
             endpoints:\n- {address: lon.google.com, ports: {http-valid1: 8080}}\n\
             - {address: in.google.com, ports: {http-dne: 9080}}\nresolution: DNS"
                .into(),
            vec![
                "spec.ports[1].number: port 80 already defined",
                "spec.endpoints[1].ports.http-dne: endpoint port \"http-dne\" is not defined by \
                 the service entry; declared ports: http-valid1, http-valid2",
            ],
        ),
        (
            "Istio: discovery type DNS, non-FQDN endpoint",
            format!(
                "hosts: ['*.google.com']\n{HTTP_PORTS}\n\
                 endpoints: [{{address: '*.lon.google.com'}}]\nresolution: DNS"
            ),
            vec![
                "spec.endpoints[0].address: endpoint address \"*.lon.google.com\" is not a valid \
                 FQDN or an IP address",
            ],
        ),
        (
            "Istio: discovery type DNS, non-FQDN host and no endpoints",
            format!("hosts: ['*.google.com']\n{HTTP_PORTS}\nresolution: DNS"),
            vec!["spec.hosts[0]: wildcard host \"*.google.com\" needs endpoints with resolution DNS"],
        ),
        (
            "Istio: discovery type DNS_ROUND_ROBIN, wildcard host and empty endpoints",
            format!("hosts: ['*.google.com']\n{HTTP_PORTS}\nendpoints: []\nresolution: DNS_ROUND_ROBIN"),
            vec!["spec.hosts[0]: wildcard host \"*.google.com\" needs endpoints with resolution DNS_ROUND_ROBIN"],
        ),
        (
            "Istio: discovery type DNS, no endpoints",
            format!("hosts: [google.com]\n{HTTP_PORTS}\nresolution: DNS"),
            vec![],
        ),
        (
            "Istio: discovery type DNS, unix endpoint",
            format!(
                "hosts: ['*.google.com']\n{HTTP_PORTS}\n\
                 endpoints: [{{address: 'unix:///lon/google/com'}}]\nresolution: DNS"
            ),
            vec!["spec.endpoints[0].address: unix domain socket endpoint \"unix:///lon/google/com\" is not supported"],
        ),
        (
            "Istio: discovery type none",
            format!("hosts: [google.com]\n{HTTP_PORTS}\nresolution: NONE"),
            vec![],
        ),
        (
            "Istio: discovery type none, endpoints provided",
            format!(
                "hosts: [google.com]\n{HTTP_PORTS}\nendpoints: [{{address: lon.google.com}}]\n\
                 resolution: NONE"
            ),
            vec!["spec.endpoints: no endpoints should be provided for resolution NONE"],
        ),
        (
            "Istio: discovery type none (the default), endpoints provided",
            format!("hosts: [google.com]\n{HTTP_PORTS}\nendpoints: [{{address: 1.1.1.1}}]"),
            vec!["spec.endpoints: no endpoints should be provided for resolution NONE"],
        ),
        (
            "Istio: discovery type none, cidr addresses",
            format!("hosts: [google.com]\naddresses: [172.1.2.16/16]\n{HTTP_PORTS}\nresolution: NONE"),
            vec![],
        ),
        (
            "Istio: discovery type static, cidr addresses with endpoints",
            format!(
                "hosts: [google.com]\naddresses: [172.1.2.16/16]\n{HTTP_PORTS}\n\
                 endpoints: [{{address: 1.1.1.1, ports: {{http-valid1: 8080}}}}, {{address: 2.2.2.2}}]\n\
                 resolution: STATIC"
            ),
            vec![],
        ),
        (
            "Istio: CIDR addresses with DNS resolution (CRD rule)",
            format!("hosts: [google.com]\naddresses: [172.1.2.16/16, 10.0.0.1]\n{HTTP_PORTS}\nresolution: DNS"),
            vec!["spec.addresses[0]: CIDR addresses are allowed only for NONE/STATIC resolution types"],
        ),
        (
            "Istio: invalid addresses",
            format!("hosts: [google.com]\naddresses: [1.2.3, 1.2.3.4/33, '::1/129', 2001:db8::/32]\n{HTTP_PORTS}"),
            vec![
                "spec.addresses[0]: \"1.2.3\" is not a valid IP",
                "spec.addresses[1]: \"1.2.3.4/33\" is not a valid CIDR block",
                "spec.addresses[2]: \"::1/129\" is not a valid CIDR block",
            ],
        ),
        (
            "Istio: discovery type static, FQDN in endpoints",
            format!(
                "hosts: [google.com]\naddresses: [172.1.2.16]\n{HTTP_PORTS}\n\
                 endpoints: [{{address: google.com}}, {{address: 2.2.2.2}}]\nresolution: STATIC"
            ),
            vec!["spec.endpoints[0].address: endpoint address \"google.com\" is not a valid IP address"],
        ),
        (
            "Istio: discovery type static, missing endpoints",
            format!("hosts: [google.com]\naddresses: [172.1.2.16]\n{HTTP_PORTS}\nresolution: STATIC"),
            vec![],
        ),
        (
            "Istio: discovery type static, bad endpoint port name",
            format!(
                "hosts: [google.com]\n{HTTP_PORTS}\n\
                 endpoints: [{{address: 2.2.2.2, ports: {{http-dne: 9080}}}}]\nresolution: STATIC"
            ),
            vec!["spec.endpoints[0].ports.http-dne: endpoint port \"http-dne\" is not defined"],
        ),
        (
            "Istio: conflicting port names",
            "hosts: [google.com]\n\
             ports: [{number: 80, protocol: http, name: http-conflict}, {number: 8080, protocol: http, name: http-conflict}]"
                .into(),
            vec!["spec.ports[1].name: port name \"http-conflict\" already defined"],
        ),
        (
            "egress: unix socket endpoints are not supported (Istio: valid)",
            "hosts: [uds.cluster.local]\nports: [{number: 6553, protocol: grpc, name: grpc-service1}]\n\
             endpoints: [{address: 'unix:///path/to/socket'}]\nresolution: STATIC"
                .into(),
            vec!["spec.endpoints[0].address: unix domain socket endpoint \"unix:///path/to/socket\" is not supported by egress"],
        ),
        (
            "Istio: empty protocol is valid (egress carries it as TCP)",
            "hosts: [google.com]\naddresses: [172.1.2.16/16]\n\
             ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, name: http-valid2}]"
                .into(),
            vec![],
        ),
        (
            "egress: workloadSelector is not supported (Istio: valid)",
            format!("hosts: [google.com]\nworkloadSelector: {{labels: {{foo: bar}}}}\n{HTTP_PORTS}"),
            vec!["spec.workloadSelector: is not supported: egress runs in host mode"],
        ),
        (
            "Istio: repeat target port",
            "hosts: [google.com]\nresolution: DNS\n\
             ports: [{number: 80, protocol: http, name: a, targetPort: 80}, {number: 81, protocol: http, name: b, targetPort: 80}]"
                .into(),
            vec![],
        ),
        (
            "Istio: invalid target port",
            "hosts: [google.com]\nresolution: DNS\n\
             ports: [{number: 80, protocol: http, name: http-valid1, targetPort: 65536}]"
                .into(),
            vec!["spec.ports[0].targetPort: must be between 1 and 65535, got 65536"],
        ),
        (
            "Istio: invalid endpoint port",
            "hosts: [google.com]\nports: [{number: 80, protocol: http, name: http-valid1, targetPort: 81}]\n\
             endpoints: [{address: 1.1.1.1, ports: {http-valid1: 65536}}]\nresolution: STATIC"
                .into(),
            vec!["spec.endpoints[0].ports.http-valid1: must be between 1 and 65535, got 65536"],
        ),
        (
            "Istio: dns round robin with more than one endpoint",
            "hosts: [google.com]\nports: [{number: 8081, protocol: http, name: http-valid1}]\n\
             endpoints: [{address: api-v1.istio.io}, {address: 1.1.1.2}]\nresolution: DNS_ROUND_ROBIN"
                .into(),
            vec!["spec.endpoints: there must be at most 1 endpoint for resolution DNS_ROUND_ROBIN, got 2"],
        ),
        (
            "egress: partial wildcard hosts (Istio: a warning)",
            "hosts: ['*.nytimes.com', '*washingtonpost.com']\n\
             ports: [{number: 443, protocol: HTTPS, name: https-nytimes}]"
                .into(),
            vec!["spec.hosts[1]: partial wildcard \"*washingtonpost.com\" not allowed"],
        ),
        (
            "egress: network set with no address on endpoint (Istio: a warning)",
            format!("hosts: [google.com]\n{HTTP_PORTS}\nendpoints: [{{network: n1}}]\nresolution: STATIC"),
            vec!["spec.endpoints[0].address: is required"],
        ),
        (
            "Istio: multiple hosts with a TCP port and DNS resolution",
            "hosts: [a.example.com, b.example.com]\nresolution: DNS\n\
             ports: [{number: 80, protocol: HTTP, name: http}, {number: 5432, protocol: TCP, name: pg}]"
                .into(),
            vec!["spec.hosts: multiple hosts provided with non-HTTP, non-TLS port \"pg\" (TCP)"],
        ),
        (
            "Istio: multiple hosts with a TCP port and resolution NONE",
            "hosts: [a.example.com, b.example.com]\nports: [{number: 5432, protocol: TCP, name: pg}]"
                .into(),
            vec![],
        ),
        (
            "Istio: port name and number are required, name is a DNS-1123 label",
            "hosts: [google.com]\nports: [{protocol: HTTP}, {number: 81, name: http_1}]".into(),
            vec![
                "spec.ports[0].name: is required",
                "spec.ports[0].number: is required",
                "spec.ports[1].name: invalid port name \"http_1\"",
            ],
        ),
        (
            "egress: ports are required",
            "hosts: [google.com]".into(),
            vec!["spec.ports: at least one port is required"],
        ),
        (
            "Istio: protocols are case-insensitive; UDP, HTTP_PROXY and unknown ones refused",
            "hosts: [google.com]\nports:\n\
             - {number: 1, name: a, protocol: Http}\n- {number: 2, name: b, protocol: GRPC-Web}\n\
             - {number: 3, name: c, protocol: udp}\n- {number: 4, name: d, protocol: HTTP_PROXY}\n\
             - {number: 5, name: e, protocol: QUIC}"
                .into(),
            vec![
                "spec.ports[2].protocol: protocol UDP is not supported",
                "spec.ports[3].protocol: protocol HTTP_PROXY is not supported",
                "spec.ports[4].protocol: unsupported protocol \"QUIC\"; expected one of HTTP,",
            ],
        ),
        (
            "Istio (CRD enums): resolution and location are case-sensitive",
            format!("hosts: [google.com]\n{HTTP_PORTS}\nresolution: dns\nlocation: EXTERNAL"),
            vec![
                "spec.resolution: unknown resolution \"dns\"; expected one of NONE, STATIC, DNS, DNS_ROUND_ROBIN",
                "spec.location: unknown location \"EXTERNAL\"; expected MESH_EXTERNAL or MESH_INTERNAL",
            ],
        ),
        (
            "Istio: endpoint labels are Kubernetes labels",
            format!(
                "hosts: [google.com]\n{HTTP_PORTS}\n\
                 endpoints: [{{address: 1.1.1.1, labels: {{'a b': x, ok: '-bad'}}}}]\nresolution: STATIC"
            ),
            vec![
                "spec.endpoints[0].labels[\"a b\"]: invalid label key \"a b\"",
                "spec.endpoints[0].labels.ok: invalid label value \"-bad\"",
            ],
        ),
        (
            "Istio: exportTo duplicates, * and ~ alone, namespace names",
            format!("hosts: [google.com]\n{HTTP_PORTS}\nexportTo: [default, '.', '*', bad_ns]"),
            vec![
                "spec.exportTo[1]: duplicate entries in exportTo: . and current namespace default",
                "spec.exportTo[3]: only ., *, ~ or a namespace name",
                "spec.exportTo: cannot have both public (*) and non-public exportTo values",
            ],
        ),
        (
            "Istio: exportTo ~ with someone",
            format!("hosts: [google.com]\n{HTTP_PORTS}\nexportTo: ['~', other]"),
            vec!["spec.exportTo: cannot export service entry to no one (~) and someone"],
        ),
        (
            "type errors name their field",
            "hosts: httpbin.org\nports: [{number: '80', name: http, protocol: 80}]\nresolution: [DNS]".into(),
            vec![
                "spec.resolution: must be a string, got a list",
                "spec.hosts: must be a list, got a string (\"httpbin.org\")",
                "spec.ports[0].number: must be an integer, got a string (\"80\")",
                "spec.ports[0].protocol: must be a string, got an integer (80)",
            ],
        ),
        (
            "one mistake, one error: a bad port does not make endpoints naming it wrong",
            "hosts: [80]\nports: [{number: 0, name: http, protocol: HTTP}]\n\
             endpoints: [{address: 1.1.1.1, ports: {http: 8080}}]\nresolution: STATIC"
                .into(),
            vec![
                "spec.hosts[0]: must be a string, got an integer (80)",
                "spec.ports[0].number: must be between 1 and 65535, got 0",
            ],
        ),
    ];
    for (name, spec, want) in cases {
        match check(&spec) {
            Ok(_) => assert!(want.is_empty(), "{name}: valid, expected {want:#?}"),
            Err(got) => {
                let matches =
                    got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| g.starts_with(w));
                assert!(matches, "{name}:\n got {got:#?}\nwant {want:#?}");
            }
        }
    }
}

#[test]
fn the_model_holds_what_the_yaml_says() {
    let spec = "\
hosts: [api.example.com]
addresses: [10.1.2.3/8, 2001:db8::1]
ports:
- {number: 443, name: https, protocol: TLS, targetPort: 8443}
- {number: 80, name: http, protocol: HTTP, targetPort: 0}
resolution: STATIC
location: MESH_INTERNAL
endpoints:
- address: 192.0.2.10
  ports: {https: 9443}
  labels: {app.kubernetes.io/name: api}
  weight: 3
- {address: '2001:db8::10', weight: 0}
exportTo: ['.', other]";
    let set = check(spec).expect("valid");
    let entry = &set.service_entries[0];
    assert_eq!(
        entry.addresses,
        vec![
            IpNet {
                addr: "10.0.0.0".parse().expect("ip"),
                prefix_len: 8
            },
            IpNet {
                addr: "2001:db8::1".parse().expect("ip"),
                prefix_len: 128
            },
        ]
    );
    assert_eq!(
        entry.ports,
        vec![
            ServicePort {
                number: 443,
                name: "https".into(),
                protocol: Protocol::Tls,
                target_port: Some(8443)
            },
            ServicePort {
                number: 80,
                name: "http".into(),
                protocol: Protocol::Http,
                target_port: None
            },
        ]
    );
    assert_eq!(entry.resolution, Resolution::Static);
    assert_eq!(entry.location, Location::MeshInternal);
    assert_eq!(
        entry.endpoints,
        vec![
            Endpoint {
                address: "192.0.2.10".into(),
                ports: [("https".to_owned(), 9443)].into(),
                labels: [("app.kubernetes.io/name".to_owned(), "api".to_owned())].into(),
                weight: Some(3),
            },
            Endpoint {
                address: "2001:db8::10".into(),
                ..Endpoint::default()
            },
        ]
    );
    assert_eq!(entry.export_to, vec![".", "other"]);
}

#[test]
fn unset_protocol_is_tcp_and_grpc_web_is_grpc() {
    let set = check(
        "hosts: [a.com]\nports: [{number: 1, name: a}, {number: 2, name: b, protocol: grpc-web}]",
    )
    .expect("valid");
    let protocols: Vec<_> = set.service_entries[0]
        .ports
        .iter()
        .map(|p| p.protocol)
        .collect();
    assert_eq!(protocols, [Protocol::Tcp, Protocol::Grpc]);
}

#[test]
fn the_vip_label_and_status_addresses_are_read() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: t\n  labels: {networking.istio.io/enable-autoallocate-ip: 'false'}\nspec:\n  hosts: [a.test]\n  ports: [{number: 80, protocol: HTTP, name: http}]\n  resolution: DNS\nstatus:\n  addresses: [{value: 240.240.9.9}, {value: not-an-ip}]\n";
    let set = parse_str(Path::new("t.yaml"), yaml).expect("valid");
    let se = &set.service_entries[0];
    assert!(!se.auto_allocate);
    assert_eq!(
        se.status_addresses,
        vec!["240.240.9.9".parse::<std::net::IpAddr>().unwrap()]
    );
    let set = check(&format!("hosts: [a.test]\n{HTTP_PORTS}\nresolution: DNS")).expect("valid");
    assert!(set.service_entries[0].auto_allocate);
    assert!(set.service_entries[0].status_addresses.is_empty());
}

#[test]
fn dynamic_dns_mesh_internal_is_refused_with_a_waypoint_as_istio_does() {
    let yaml = |labels: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: t\n  \
             labels: {{{labels}}}\nspec:\n  hosts: ['*.google.com']\n  \
             ports: [{{number: 80, protocol: HTTP, name: http}}]\n  resolution: DYNAMIC_DNS\n  \
             location: MESH_INTERNAL\n"
        )
    };
    let errors = parse_str(
        Path::new("t.yaml"),
        &yaml("istio.io/use-waypoint: my-waypoint"),
    )
    .expect_err("MESH_INTERNAL with a waypoint");
    let got: Vec<String> = errors
        .0
        .iter()
        .map(|e| format!("{}: {}", e.field.clone().unwrap_or_default(), e.message))
        .collect();
    assert_eq!(
        got,
        [
            "spec.location: location MESH_INTERNAL with resolution type DYNAMIC_DNS is not supported when using waypoints"
        ]
    );
    for labels in ["istio.io/use-waypoint: none", "app: x"] {
        let set = parse_str(Path::new("t.yaml"), &yaml(labels)).expect(labels);
        assert_eq!(set.service_entries[0].resolution, Resolution::DynamicDns);
    }
}
