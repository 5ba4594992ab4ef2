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
