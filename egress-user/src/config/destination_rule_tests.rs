//! DestinationRule parsing: what is accepted, and errors that name the field and the file.
use std::{fs, path::Path};

use super::super::{ConfigErrors, ConfigSet, TlsMode, parse_str};

fn parse(text: &str) -> Result<ConfigSet, ConfigErrors> {
    parse_str(Path::new("dr.yaml"), text)
}

fn rule(tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin, namespace: egress}}
spec:
  host: httpbin.test
  trafficPolicy:
    tls:
{tls}"
    )
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn simple_with_system_roots_and_port_level_settings() {
    let text = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: egress}
spec:
  host: httpbin.test
  exportTo: [\".\"]
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 10}}
    tls: {mode: SIMPLE, sni: api.httpbin.test, insecureSkipVerify: true}
    portLevelSettings:
    - port: {number: 8080}
      tls: {mode: DISABLE}
";
    let set = parse(text).expect("valid");
    let dr = &set.destination_rules[0];
    assert_eq!(
        (dr.host.as_str(), dr.export_to.as_slice()),
        ("httpbin.test", &[".".to_owned()][..])
    );
    let tls = dr.tls.as_ref().expect("tls");
    assert_eq!(tls.mode, TlsMode::Simple);
    assert_eq!(tls.sni.as_deref(), Some("api.httpbin.test"));
    assert!(tls.client.is_some(), "built at load");
    assert_eq!(dr.port_tls[0].0, 8080);
    assert_eq!(dr.port_tls[0].1.mode, TlsMode::Disable);
}

#[test]
fn what_egress_cannot_honour_is_refused_with_its_field() {
    let cases = [
        (
            "      mode: ISTIO_MUTUAL\n",
            "dr.yaml:1:spec.trafficPolicy.tls.mode: ISTIO_MUTUAL is not supported",
        ),
        (
            "      mode: SIMPLE\n      credentialName: httpbin-secret\n",
            "dr.yaml:1:spec.trafficPolicy.tls.credentialName: credentialName is not supported",
        ),
        (
            "      mode: MUTUAL\n",
            "dr.yaml:1:spec.trafficPolicy.tls.clientCertificate: clientCertificate is required",
        ),
        (
            "      mode: SIMPLE\n      subjectAltNames: [spiffe://cluster.local/ns/a/sa/b]\n",
            "dr.yaml:1:spec.trafficPolicy.tls.subjectAltNames[0]: URI subject alt name",
        ),
        (
            "      mode: SIMPLE\n      caCertificate: /etc/ca.pem\n",
            "dr.yaml:1:spec.trafficPolicy.tls.caCertificate: unknown field",
        ),
    ];
    for (tls, want) in cases {
        let errors = errors(&rule(tls));
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "{want}: {errors:?}"
        );
    }
}

#[test]
fn unreadable_and_unparsable_files_name_field_and_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.pem");
    fs::write(&garbage, "not a certificate\n").expect("write");
    let missing = dir.path().join("missing.pem");
    let cases = [
        (
            format!(
                "      mode: SIMPLE\n      caCertificates: {}\n",
                missing.display()
            ),
            "caCertificates",
            "cannot read",
        ),
        (
            format!(
                "      mode: SIMPLE\n      caCertificates: {}\n",
                garbage.display()
            ),
            "caCertificates",
            "holds no CERTIFICATE",
        ),
        (
            format!("      mode: SIMPLE\n      caCrl: {}\n", garbage.display()),
            "caCrl",
            "holds no X509 CRL",
        ),
    ];
    for (tls, field, want) in cases {
        let errors = errors(&rule(&tls));
        let prefix = format!("dr.yaml:1:spec.trafficPolicy.tls.{field}: ");
        assert!(
            errors.iter().any(|e| e.starts_with(&prefix)
                && e.contains(want)
                && e.contains(dir.path().to_str().expect("utf-8"))),
            "{field}: {errors:?}"
        );
    }
}

/// A DestinationRule as the Kubernetes source hands it over: JSON, origin `Kind ns/name`.
fn from_api(tls: &str) -> Result<ConfigSet, ConfigErrors> {
    let text = rule(tls);
    let value: serde_json::Value = serde_saphyr::from_str(&text).expect("YAML");
    let source = super::super::Source::object("DestinationRule", "egress", "httpbin");
    super::super::parse_object(&value, &source)
}

#[test]
fn credential_name_is_read_from_kubernetes_objects_and_refused_in_files() {
    let tls = "      mode: MUTUAL\n      credentialName: httpbin-client\n";
    let set = from_api(tls).expect("credentialName is valid for a Kubernetes object");
    let settings = set.destination_rules[0].tls.as_ref().expect("tls");
    assert_eq!(settings.credential_name.as_deref(), Some("httpbin-client"));
    assert!(settings.client.is_none(), "built when the Secret is read");

    let errors = errors(&rule(tls));
    assert!(
        errors[0].starts_with(
            "dr.yaml:1:spec.trafficPolicy.tls.credentialName: credentialName is not supported"
        ),
        "{errors:?}"
    );

    // As Istio: the Secret replaces the files, so both at once is a mistake; errors name the
    // object.
    let both = "      mode: MUTUAL\n      credentialName: c\n      clientCertificate: /c.pem\n";
    let errors: Vec<String> = from_api(both)
        .expect_err("both")
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "DestinationRule egress/httpbin: spec.trafficPolicy.tls.clientCertificate: \
          clientCertificate cannot be set together with credentialName"
        ]
    );
}
