//! Building client configurations from settings and files.
use std::fs;

use rcgen::{CertificateParams, KeyPair};

use super::*;

fn write_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["client.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    fs::write(&cert_path, cert.pem()).expect("write cert");
    fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

#[test]
fn mutual_builds_and_equal_files_make_equal_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = write_pair(dir.path());
    let settings = ClientTlsSettings {
        mode: TlsMode::Mutual,
        client_certificate: Some(cert.clone()),
        private_key: Some(key),
        ca_certificates: Some(cert),
        ..ClientTlsSettings::default()
    };
    let a = TlsClient::build(&settings).expect("builds");
    let b = TlsClient::build(&settings).expect("builds");
    assert_eq!(a, b, "same files, same settings set");
    assert_ne!(a.id(), b.id(), "but separate pools and session caches");
    assert!(a.config().client_auth_cert_resolver.has_certs());
}

#[test]
fn a_key_that_is_not_a_key_names_private_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, _) = write_pair(dir.path());
    let settings = ClientTlsSettings {
        mode: TlsMode::Mutual,
        client_certificate: Some(cert.clone()),
        private_key: Some(cert.clone()),
        ca_certificates: Some(cert),
        ..ClientTlsSettings::default()
    };
    let error = TlsClient::build(&settings).expect_err("a certificate is not a key");
    assert_eq!(error.field(), Some("privateKey"));
    assert!(
        error.to_string().contains("holds no private key"),
        "{error}"
    );
}

#[test]
fn subject_alt_names_must_be_names() {
    let settings = ClientTlsSettings {
        mode: TlsMode::Simple,
        insecure_skip_verify: false,
        subject_alt_names: vec!["not a name".into()],
        ..ClientTlsSettings::default()
    };
    match TlsClient::build(&settings) {
        Err(error) => assert_eq!(error.field(), Some("subjectAltNames")),
        // No system roots on this machine: the roots are reported first.
        Ok(_) => panic!("an invalid name is refused"),
    }
}
