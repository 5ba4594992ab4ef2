//! End-to-end tests of `load`/`parse_str`: files, documents, dispatch and the error format.
use std::{fs, path::Path};

use super::*;

fn parse(text: &str) -> Result<ConfigSet, ConfigErrors> {
    parse_str(Path::new("t.yaml"), text)
}

fn error_lines(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(set) => panic!("expected errors, got {set:?}"),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

/// The ServiceEntry of istio.io's egress task ("Accessing External Services").
const HTTPBIN: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.org
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
";

#[test]
fn istio_docs_httpbin_service_entry() {
    let set = parse(HTTPBIN).expect("httpbin ServiceEntry is valid");
    assert_eq!(
        set.service_entries,
        vec![ServiceEntry {
            source: Source::file("t.yaml", 1),
            name: "httpbin-ext".into(),
            namespace: "default".into(),
            hosts: vec!["httpbin.org".into()],
            addresses: vec![],
            ports: vec![ServicePort {
                number: 80,
                name: "http".into(),
                protocol: Protocol::Http,
                target_port: None,
            }],
            resolution: Resolution::Dns,
            location: Location::MeshExternal,
            endpoints: vec![],
            export_to: vec![],
            auto_allocate: true,
            status_addresses: vec![],
        }]
    );
    assert!(set.skipped.is_empty());
}

#[test]
fn every_service_entry_api_version_and_unknown_fields() {
    for version in ["v1", "v1beta1", "v1alpha3"] {
        let text = HTTPBIN.replace(
            "networking.istio.io/v1",
            &format!("networking.istio.io/{version}"),
        ) + "  futureField: {a: 1}\nstatus:\n  conditions: []\n";
        let text = text.replace(
            "  name: httpbin-ext\n",
            "  name: httpbin-ext\n  namespace: egress\n  uid: x\n",
        );
        let set = parse(&text).expect(version);
        assert_eq!(set.service_entries.len(), 1, "{version}");
        assert_eq!(set.service_entries[0].namespace, "egress");
    }
}

#[test]
fn multi_document_file_keeps_service_entries_and_skips_the_rest() {
    let text = format!(
        "\
# a comment before anything
apiVersion: apps/v1
kind: Deployment
metadata:
  name: sleep
spec:
  replicas: 1
---
{HTTPBIN}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-get
  namespace: default
spec:
  targetRefs:
  - {{kind: ServiceEntry, group: networking.istio.io, name: httpbin-ext}}
  rules: [{{}}]
---
# trailing empty document
"
    );
    let set = parse(&text).expect("valid");
    assert_eq!(set.service_entries.len(), 1);
    assert_eq!(set.service_entries[0].source.document(), Some(2));
    assert_eq!(set.authorization_policies.len(), 1);
    assert_eq!(set.authorization_policies[0].source.document(), Some(3));
    let skipped: Vec<_> = set
        .skipped
        .iter()
        .map(|s| {
            (
                s.source.document(),
                s.api_version.as_str(),
                s.kind.as_str(),
                s.name.as_str(),
            )
        })
        .collect();
    assert_eq!(skipped, vec![(Some(1), "apps/v1", "Deployment", "sleep")]);
}

#[test]
fn errors_in_documents_two_and_three_are_all_reported() {
    let text = format!(
        "{HTTPBIN}---\n{}---\n{}",
        HTTPBIN
            .replace("httpbin-ext", "bad-port")
            .replace("number: 80", "number: 0"),
        HTTPBIN
            .replace("httpbin-ext", "bad-host")
            .replace("- httpbin.org", "- \"*\"")
            .replace("protocol: HTTP", "protocol: UDP"),
    );
    assert_eq!(
        error_lines(&text),
        vec![
            "t.yaml:2:spec.ports[0].number: must be between 1 and 65535, got 0".to_owned(),
            "t.yaml:3:spec.hosts[0]: invalid host \"*\": a ServiceEntry cannot match every host"
                .to_owned(),
            "t.yaml:3:spec.ports[0].protocol: protocol UDP is not supported: Istio accepts the \
             name but its proxies carry no UDP, and neither does egress"
                .to_owned(),
        ]
    );
}

#[test]
fn dispatch_errors() {
    let cases = [
        (
            "kind: ServiceEntry\nmetadata: {name: a}\n",
            vec!["t.yaml:1:apiVersion: is required"],
        ),
        (
            "apiVersion: networking.istio.io/v1\nmetadata: {name: a}\n",
            vec!["t.yaml:1:kind: is required"],
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntyr\nmetadata: {name: a}\n",
            vec![
                "t.yaml:1:kind: unknown kind \"ServiceEntyr\" for networking.istio.io; expected \
                 one of DestinationRule, EnvoyFilter, Gateway, ProxyConfig, ServiceEntry, \
                 Sidecar, VirtualService, WorkloadEntry, WorkloadGroup",
            ],
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorisationPolicy\nmetadata: {name: a}\n",
            vec![
                "t.yaml:1:kind: unknown kind \"AuthorisationPolicy\" for security.istio.io; \
                 expected one of AuthorizationPolicy, PeerAuthentication, RequestAuthentication",
            ],
        ),
        (
            "apiVersion: networking.istio.io/v2\nkind: DestinationRule\nmetadata: {name: a}\n",
            vec![
                "t.yaml:1:apiVersion: unknown version \"v2\" for networking.istio.io; expected \
                 one of v1, v1beta1, v1alpha3",
            ],
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n",
            vec!["t.yaml:1:metadata: is required (with a name)"],
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: Bad_Name, namespace: 3}\n",
            vec![
                "t.yaml:1:metadata.name: must be a lower-case RFC 1123 subdomain (a-z, 0-9, '-' \
                 and '.', at most 253 characters), got \"Bad_Name\"",
                "t.yaml:1:metadata.namespace: must be a string, got an integer (3)",
            ],
        ),
        (
            "- just\n- a list\n",
            vec![
                "t.yaml:1: document must be a Kubernetes object (a mapping with apiVersion and \
                 kind), got a list",
            ],
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\n",
            vec!["t.yaml:1:spec: is required"],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(error_lines(text), want, "{text}");
    }
}

#[test]
fn other_istio_and_foreign_kinds_are_skipped() {
    let text = "\
apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata: {name: dr}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: vs}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t}
---
apiVersion: v1
kind: ConfigMap
";
    let set = parse(text).expect("valid");
    let kinds: Vec<_> = set
        .skipped
        .iter()
        .map(|s| (s.kind.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("Sidecar", "dr"),
            ("VirtualService", "vs"),
            ("Telemetry", "t"),
            ("ConfigMap", "")
        ]
    );
}

#[test]
fn kubectl_list_output_is_expanded() {
    let se = HTTPBIN.replace('\n', "\n    ");
    let text = format!(
        "apiVersion: v1\nkind: List\nitems:\n  - {}\n",
        se.trim_end()
    );
    let set = parse(&text).expect("valid list");
    assert_eq!(set.service_entries.len(), 1);

    let bad = format!(
        "apiVersion: v1\nkind: List\nitems:\n  - {}\n",
        se.replace("number: 80", "number: 99999").trim_end()
    );
    assert_eq!(
        error_lines(&bad),
        vec!["t.yaml:1:items[0].spec.ports[0].number: must be between 1 and 65535, got 99999"]
    );
}

#[test]
fn duplicate_service_entries_are_reported() {
    let text = format!("{HTTPBIN}---\n{HTTPBIN}");
    assert_eq!(
        error_lines(&text),
        vec![
            "t.yaml:2:metadata.name: ServiceEntry default/httpbin-ext is already defined at t.yaml:1"
        ]
    );
}

#[test]
fn yaml_syntax_error_names_file_document_and_line() {
    let text = format!("{HTTPBIN}---\napiVersion: v1\nkind: [unclosed\n---\n{HTTPBIN}");
    let errors = parse(&text).expect_err("document 2 is broken").0;
    // The third document is still read: its duplicate name is reported too.
    assert_eq!(errors.len(), 2, "{errors:?}");
    let line = errors[0].to_string();
    assert!(line.starts_with("t.yaml:2: YAML syntax error: "), "{line}");
    // Counted in the file, not in the document (`kind: [unclosed` is line 16).
    assert!(line.contains("at line 16"), "{line}");
    assert_eq!(errors[1].document(), Some(3));
}

#[test]
fn json_file() {
    let json = r#"{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "j"},
        "spec": {"hosts": ["httpbin.org"], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}]}}"#;
    let set = parse_str(Path::new("se.json"), json).expect("valid JSON");
    assert_eq!(set.service_entries[0].ports[0].protocol, Protocol::Tls);
    let errors = parse_str(Path::new("se.json"), "{")
        .expect_err("bad JSON")
        .0;
    assert_eq!(errors[0].document(), Some(1));
    assert!(
        errors[0].message.starts_with("JSON syntax error: "),
        "{}",
        errors[0]
    );
}

#[test]
fn directory_load_walks_nested_dirs_and_skips_dot_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let write = |rel: &str, text: &str| {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    };
    let se = |name: &str| HTTPBIN.replace("httpbin-ext", name);
    write("b.yaml", &se("b"));
    write("a.yml", &se("a"));
    write("nested/deeper/c.json", &serde_json::to_string(&serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "c"},
        "spec": {"hosts": ["c.example.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}
    })).expect("json"));
    write("nested/README.md", "not config");
    write("notes.txt", "kind: [not yaml");
    write(".hidden.yaml", "kind: [not yaml");
    // A ConfigMap mount: the real files live in `..2024_01_01/`, reached through `..data`
    // and per-key symlinks at the top.
    write("..2024_01_01/d.yaml", &se("d"));
    std::os::unix::fs::symlink("..2024_01_01", root.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/d.yaml", root.join("d.yaml")).expect("symlink");

    let set = load(&[root]).expect("valid directory");
    let names: Vec<_> = set
        .service_entries
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b", "d", "c"]);

    // Naming a file and its directory reads it once; explicit files are read whatever their name.
    write("extra.conf", &se("e"));
    let set = load(&[
        root.to_path_buf(),
        root.join("a.yml"),
        root.join("extra.conf"),
    ])
    .expect("valid");
    assert_eq!(set.service_entries.len(), 5);
}

#[test]
fn missing_and_unreadable_paths_are_errors_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.yaml");
    let bad = dir.path().join("bad.yaml");
    fs::write(&bad, HTTPBIN.replace("number: 80", "number: \"80\"")).expect("write");
    let binary = dir.path().join("binary.yaml");
    fs::write(&binary, [0xff, 0xfe, 0x00, 0x80]).expect("write");

    let errors = load(&[&missing, &bad, &binary]).expect_err("errors").0;
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!("{}: cannot read: ", missing.display())),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1],
        format!(
            "{}:1:spec.ports[0].number: must be an integer, got a string (\"80\")",
            bad.display()
        )
    );
    assert!(
        lines[2].starts_with(&format!("{}: cannot read: ", binary.display())),
        "{}",
        lines[2]
    );
}

#[test]
fn empty_inputs_are_empty_sets() {
    for text in ["", "# nothing\n", "---\n---\n", "~\n"] {
        assert_eq!(parse(text).expect(text), ConfigSet::default(), "{text:?}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        load(&[dir.path()]).expect("empty dir"),
        ConfigSet::default()
    );
}
