//! A test CA (rcgen) and TLS upstreams (tokio-rustls + hyper) that record what each handshake
//! said: the SNI and TLS version the waypoint sent.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::AtomicUsize},
};

use rcgen::{
    CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair, date_time_ymd,
};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::WebPkiClientVerifier,
};
use tempfile::TempDir;
use tokio_rustls::TlsAcceptor;

use super::*;

/// Each CA gets its own name: a CA with another's name would be an impostor, not an unknown CA.
static NEXT_CA: AtomicUsize = AtomicUsize::new(0);

/// What a server certificate is like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Leaf {
    Valid,
    Expired,
    NotYetValid,
    /// Valid, for another name.
    WrongSan,
    /// Valid, but for TLS clients only (EKU clientAuth).
    ClientOnly,
}

/// A CA and the files the tests write into a temporary directory.
pub(super) struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub(super) fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("egress test CA {}", NEXT_CA.fetch_add(1, Ordering::Relaxed)),
        );
        let key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("temporary directory");
        let pki = Self { dir, ca };
        pki.write("ca.pem", &pki.ca.pem());
        pki
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, text).expect("writing a test PEM file");
        path
    }

    /// A certificate for `name` (names separated by commas) of kind `leaf` signed by this CA:
    /// (chain, key).
    pub(super) fn leaf(
        &self,
        name: &str,
        leaf: Leaf,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let sans: Vec<String> = if leaf == Leaf::WrongSan {
            vec!["someone-else.test".to_owned()]
        } else {
            name.split(',').map(str::to_owned).collect()
        };
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.extended_key_usages = vec![if leaf == Leaf::ClientOnly {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        match leaf {
            Leaf::Expired => {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2021, 1, 1);
            }
            Leaf::NotYetValid => {
                params.not_before = date_time_ymd(2090, 1, 1);
                params.not_after = date_time_ymd(2091, 1, 1);
            }
            _ => {}
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], der)
    }

    /// A self-signed certificate for `name` (no CA vouches for it).
    pub(super) fn self_signed(
        name: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed certificate");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], der)
    }

    /// A client certificate and key written as PEM files: (certificate path, key path).
    pub(super) fn client_files(&self, name: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("client params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("client key");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("client certificate");
        (
            self.write("client.pem", &cert.pem()),
            self.write("client-key.pem", &key.serialize_pem()),
        )
    }

    pub(super) fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    pub(super) fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    pub(super) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// One accepted TLS connection: the SNI it asked for and the version negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Handshake {
    pub sni: Option<String>,
    pub version: Option<rustls::ProtocolVersion>,
}

/// A TLS HTTP/1.1 echo server; `client_ca` makes it require a client certificate.
pub(super) struct TlsUpstream {
    pub addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
}

impl TlsUpstream {
    pub(super) async fn start(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_ca: Option<CertificateDer<'static>>,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca).expect("client CA");
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let (_, session) = tls.get_ref();
                    seen.lock().expect("handshakes lock").push(Handshake {
                        sni: session.server_name().map(str::to_owned),
                        version: session.protocol_version(),
                    });
                    let requests = Arc::new(Mutex::new(Vec::new()));
                    let service = service_fn(move |req| echo(requests.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { addr, handshakes }
    }

    pub(super) fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().expect("handshakes lock").clone()
    }
}
