//! TLS for end-to-end tests: a test CA made with rcgen (files in a temporary directory), a real
//! rustls HTTPS upstream that records the SNI and TLS version of every handshake, and the real
//! `httpbin` application behind gunicorn (installed by `cargo xtask prereqs`).
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use rcgen::{
    CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair, date_time_ymd,
};
use rustls::{
    ServerConfig, ServerConnection, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::WebPkiClientVerifier,
};
use tempfile::TempDir;

static NEXT_CA: AtomicUsize = AtomicUsize::new(0);

/// What a server certificate is like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cert {
    Valid,
    Expired,
    /// Valid, for `someone-else.test` only.
    WrongSan,
    /// Signed by nobody but itself.
    SelfSigned,
}

/// A certificate authority and the PEM files made with it, in a temporary directory.
pub struct TestCa {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let n = NEXT_CA.fetch_add(1, Ordering::Relaxed);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("egress e2e CA {}-{n}", std::process::id()),
        );
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let dir = tempfile::tempdir().expect("a temporary directory for test certificates");
        fs::write(dir.path().join("ca.pem"), ca.pem()).expect("writing ca.pem");
        Self { dir, ca }
    }

    /// The CA certificate (PEM), for `caCertificates` and `curl --cacert`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `names` of kind `cert`: (chain, key).
    pub fn server_cert(
        &self,
        names: &[&str],
        cert: Cert,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let sans: Vec<String> = match cert {
            Cert::WrongSan => vec!["someone-else.test".into()],
            _ => names.iter().map(|n| (*n).to_owned()).collect(),
        };
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if cert == Cert::Expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let signed = if cert == Cert::SelfSigned {
            params.self_signed(&key)
        } else {
            params.signed_by(&key, &self.ca)
        }
        .expect("leaf certificate");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![signed.der().clone()], der)
    }

    /// A server certificate and key as PEM files named `<stem>.pem` and `<stem>-key.pem`.
    pub fn server_files(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.files(stem, params)
    }

    /// A client certificate and key as PEM files: (certificate, key).
    pub fn client_files(&self, stem: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec!["client.test".to_owned()]).expect("params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.files(stem, params)
    }

    fn files(&self, stem: &str, params: CertificateParams) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("certificate");
        let cert_path = self.dir.path().join(format!("{stem}.pem"));
        let key_path = self.dir.path().join(format!("{stem}-key.pem"));
        fs::write(&cert_path, cert.pem()).expect("writing a certificate");
        fs::write(&key_path, key.serialize_pem()).expect("writing a key");
        (cert_path, key_path)
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }
}

/// One TLS handshake an upstream accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub sni: Option<String>,
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: String,
}

/// An HTTPS server on 127.0.0.1 that answers every request `200` with `sni=<SNI>` and records
/// each handshake. With a client CA it requires a client certificate.
pub struct TlsUpstream {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    stop: Arc<AtomicBool>,
}

impl TlsUpstream {
    pub fn start(ca: &TestCa, names: &[&str], cert: Cert, require_client_cert: bool) -> Self {
        let (chain, key) = ca.server_cert(names, cert);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.ca_der()).expect("client CA");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = Arc::new(builder.with_single_cert(chain, key).expect("server cert"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the TLS upstream");
        let addr = listener.local_addr().expect("TLS upstream address");
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, accept_stop) = (handshakes.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (config, seen) = (config.clone(), seen.clone());
                thread::spawn(move || serve_tls(stream, config, &seen));
            }
        });
        Self {
            addr,
            handshakes,
            stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().expect("handshakes lock").clone()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve_tls(tcp: TcpStream, config: Arc<ServerConfig>, seen: &Mutex<Vec<Handshake>>) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        if stream.conn.complete_io(&mut stream.sock).is_err() {
            return;
        }
    }
    let sni = stream.conn.server_name().map(str::to_owned);
    let version = stream
        .conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    seen.lock().expect("handshakes lock").push(Handshake {
        sni: sni.clone(),
        version,
    });
    let mut reader = BufReader::new(stream);
    loop {
        // One request head; bodies are not expected.
        let mut lines = 0;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => lines += 1,
            }
            if lines > 100 {
                return;
            }
        }
        let body = format!("sni={}\n", sni.as_deref().unwrap_or("-"));
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if reader.get_mut().write_all(response.as_bytes()).is_err() {
            return;
        }
        let _ = reader.get_mut().flush();
    }
}

/// The real `httpbin` app (PyPI) served over TLS by gunicorn on 127.0.0.1, with a certificate
/// from `ca` for `httpbin.test`. Stopped (by pid) when dropped.
pub struct Httpbin {
    addr: SocketAddr,
    child: Child,
}

impl Httpbin {
    /// The gunicorn that `cargo xtask prereqs` installs, or `None` (with why) when missing.
    pub fn gunicorn() -> Result<PathBuf, String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let venv = std::env::var_os("EGRESS_HTTPBIN_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/httpbin-venv"));
        let gunicorn = venv.join("bin/gunicorn");
        if gunicorn.is_file() {
            Ok(gunicorn)
        } else {
            Err(format!(
                "{} is missing: run `cargo xtask prereqs` (it installs httpbin and gunicorn)",
                gunicorn.display()
            ))
        }
    }

    pub fn start(ca: &TestCa) -> Self {
        let gunicorn = Self::gunicorn().unwrap_or_else(|why| panic!("{why}"));
        let (cert, key) = ca.server_files("httpbin", &["httpbin.test"]);
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = fs::File::create(ca.dir().join("gunicorn.log")).expect("gunicorn log");
        let child = Command::new(gunicorn)
            .args(["--bind", &addr.to_string(), "--workers", "1"])
            .arg("--certfile")
            .arg(&cert)
            .arg("--keyfile")
            .arg(&key)
            .args(["--log-level", "warning", "httpbin:app"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting gunicorn");
        let mut httpbin = Self { addr, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = httpbin.child.try_wait() {
                panic!(
                    "gunicorn exited ({status}): {}",
                    fs::read_to_string(ca.dir().join("gunicorn.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gunicorn did not listen on {addr} within 30s"
            );
            thread::sleep(Duration::from_millis(100));
        }
        httpbin
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Httpbin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
