//! ClientHello parsing against the bytes a real rustls client sends.
use std::sync::Arc;

use rustls::{ClientConfig, ClientConnection, RootCertStore, pki_types::ServerName};

use super::*;

fn client_hello(sni: &str) -> Vec<u8> {
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
    let name = ServerName::try_from(sni.to_owned()).expect("name");
    let mut conn = ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("ClientHello");
    out
}

#[test]
fn reads_the_sni_of_a_real_client_hello_at_any_split() {
    let hello = client_hello("httpbin.test");
    for cut in [0, 3, 5, 40, hello.len() - 1] {
        assert_eq!(
            parse_client_hello(&hello[..cut]),
            Parsed::Incomplete,
            "cut at {cut}"
        );
    }
    assert_eq!(
        parse_client_hello(&hello),
        Parsed::Done(Some("httpbin.test".into()))
    );
}

#[test]
fn a_client_hello_split_over_two_records_is_reassembled() {
    let hello = client_hello("a.example.com");
    let body = &hello[5..];
    let (first, second) = body.split_at(30);
    let mut split = Vec::new();
    for part in [first, second] {
        split.extend_from_slice(&[22, 3, 1]);
        split.extend_from_slice(&(part.len() as u16).to_be_bytes());
        split.extend_from_slice(part);
    }
    assert_eq!(
        parse_client_hello(&split),
        Parsed::Done(Some("a.example.com".into()))
    );
}

#[test]
fn plain_text_and_garbage_are_not_tls() {
    assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Parsed::Invalid);
    assert_eq!(
        parse_client_hello(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
        Parsed::Invalid
    );
}
