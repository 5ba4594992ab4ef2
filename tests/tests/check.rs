//! `egress check` validates config without root and names file, document and field.
use egress_tests::*;

const VALID: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: good
spec:
  hosts: [good.test]
  addresses: [127.77.0.1]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  resolution: NONE
";

/// The second document has port number 0.
const BROKEN: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: good
spec:
  hosts: [good.test]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: bad
spec:
  hosts: [bad.test]
  ports:
  - {number: 0, name: http, protocol: HTTP}
  resolution: NONE
";

fn check(file: &str, yaml: &str) -> Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(file);
    std::fs::write(&path, yaml).expect("writing the config");
    run_bounded(
        std::process::Command::new(egress_bin())
            .arg("check")
            .arg("--config")
            .arg(&path),
        std::time::Duration::from_secs(30),
    )
}

#[test]
fn check_names_file_document_and_field() {
    if !require_binary() {
        return;
    }
    let out = check("bad.yaml", BROKEN);

    assert_eq!(out.code, Some(1), "{out:?}");
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert!(
        printed.contains("bad.yaml:2:spec.ports[0].number"),
        "file:document:field: {out:?}"
    );
}

#[test]
fn check_accepts_a_valid_file() {
    if !require_binary() {
        return;
    }
    check("good.yaml", VALID).expect_success("egress check on a valid file");
}

/// A DYNAMIC_DNS ServiceEntry breaking istiod's rules: a concrete host, `addresses`, a TCP
/// port.
const DYNAMIC_DNS_BROKEN: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: wild
spec:
  hosts: ['*.wild.test', api.test]
  addresses: [127.77.0.9]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 5432, name: db, protocol: TCP}
  resolution: DYNAMIC_DNS
";

const DYNAMIC_DNS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: wild
spec:
  hosts: ['*.wild.test']
  ports:
  - {number: 80, name: http, protocol: HTTP}
  resolution: DYNAMIC_DNS
";

#[test]
fn check_reports_dynamic_dns_rules_by_field() {
    if !require_binary() {
        return;
    }
    check("wild.yaml", DYNAMIC_DNS).expect_success("a valid DYNAMIC_DNS ServiceEntry");
    let out = check("wild.yaml", DYNAMIC_DNS_BROKEN);
    assert_eq!(out.code, Some(1), "{out:?}");
    let printed = format!("{}{}", out.stdout, out.stderr);
    for field in [
        "wild.yaml:1:spec.hosts[1]",
        "wild.yaml:1:spec.addresses",
        "wild.yaml:1:spec.ports[1].protocol",
    ] {
        assert!(printed.contains(field), "{field}: {printed}");
    }
    assert!(
        printed.contains("must be wildcarded for resolution mode DYNAMIC_DNS"),
        "{printed}"
    );
}

#[test]
fn explain_says_which_vip_and_service_entry_a_host_name_maps_to() {
    if !require_binary() {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("wild.yaml");
    std::fs::write(&path, DYNAMIC_DNS).expect("writing the config");
    let explain = |url: &str| {
        run_bounded(
            std::process::Command::new(egress_bin())
                .arg("explain")
                .arg("--config")
                .arg(&path)
                .args(["--url", url]),
            std::time::Duration::from_secs(30),
        )
    };
    let out = explain("a.b.wild.test").expect_success("explain a host name");
    assert!(
        out.stdout.contains("answered 240.240.")
            && out
                .stdout
                .contains("(wildcard ServiceEntry host *.wild.test)"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("ServiceEntry default/wild port 80"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("what a.b.wild.test resolves to"),
        "{out:?}"
    );
    let out = explain("http://wild.test/");
    assert_eq!(out.code, Some(2), "not a name of the wildcard: {out:?}");
}
