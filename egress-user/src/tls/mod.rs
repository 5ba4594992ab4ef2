//! DestinationRule TLS settings -> rustls client configurations (TLS origination).
//!
//! [`TlsClient::build`] reads and checks every file a [`ClientTlsSettings`] names (certificates,
//! key, CA bundle, CRL) when the configuration is loaded, so a broken file is a config error that
//! names its field and path, and a reload with a bad certificate keeps the previous config. One
//! `TlsClient` is one settings set: its `ClientConfig` holds the TLS session cache, so sessions
//! are resumed only within the settings that made them.
//!
//! Verification follows Envoy as Istio configures it: the chain against `caCertificates` or the
//! system roots (with `caCrl` when given), the name against `subjectAltNames` when given and
//! otherwise against the SNI, the server-auth EKU always. `insecureSkipVerify` skips all of it.
mod reason;
mod settings;
mod verify;

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use rustls::{
    ClientConfig, RootCertStore,
    client::WebPkiServerVerifier,
    crypto::ring,
    pki_types::{
        CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName,
        pem::{self, PemObject},
    },
};
use thiserror::Error;

pub use reason::failure_reason;
pub use settings::{ClientTlsSettings, TlsMode};

/// Why a settings set could not be turned into a client configuration. `field` is the YAML name
/// of the setting to blame (`caCertificates`, `privateKey`, ...).
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid PEM file: {source}", path.display())]
    Pem {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{} holds no {what}", path.display())]
    Empty {
        field: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{}: {source}", path.display())]
    Rejected {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no system root certificates could be loaded ({0}); set caCertificates")]
    NoSystemRoots(String),
    #[error("{name:?} is not a DNS name or IP address")]
    BadName { field: &'static str, name: String },
    #[error("building the verifier: {0}")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    #[error("building the client configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("Secret {secret} has no key {key}")]
    SecretKey {
        field: &'static str,
        secret: String,
        key: &'static str,
    },
}

impl TlsError {
    /// The YAML field to blame, when one is.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            TlsError::Read { field, .. }
            | TlsError::Pem { field, .. }
            | TlsError::Empty { field, .. }
            | TlsError::Rejected { field, .. }
            | TlsError::BadName { field, .. }
            | TlsError::SecretKey { field, .. } => Some(field),
            TlsError::NoSystemRoots(_) => Some("caCertificates"),
            TlsError::Verifier(_) => Some("caCrl"),
            TlsError::Config(_) => None,
        }
    }
}

/// One settings set, ready to connect with. Cheap to clone; clones share the session cache.
/// Two are equal when built from the same settings and file contents, so a reload that changes
/// nothing keeps the pools of the running configuration.
#[derive(Clone)]
pub struct TlsClient(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    config: Arc<ClientConfig>,
    /// The contents of every file read, to tell a rotated certificate from an unchanged one.
    files: Vec<Vec<u8>>,
    mode: TlsMode,
}

impl TlsClient {
    /// Reads the files `settings` names and builds its client configuration.
    pub fn build(settings: &ClientTlsSettings) -> Result<Self, TlsError> {
        Self::build_with(settings, None)
    }

    /// Builds the client configuration of `settings` (a DestinationRule's `credentialName`)
    /// with the certificates, key and CA of a Kubernetes Secret instead of files.
    pub fn build_from_secret(
        settings: &ClientTlsSettings,
        secret: &SecretPem,
    ) -> Result<Self, TlsError> {
        Self::build_with(settings, Some(secret))
    }

    fn build_with(
        settings: &ClientTlsSettings,
        secret: Option<&SecretPem>,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let mut files = Vec::new();
        let ca = material(
            "caCertificates",
            settings.ca_certificates.as_deref(),
            secret,
            &mut files,
        )?;
        let roots = match &ca {
            Some((path, text)) => {
                let mut roots = RootCertStore::empty();
                for der in certificates("caCertificates", path, text)? {
                    roots.add(der).map_err(|source| TlsError::Rejected {
                        field: "caCertificates",
                        path: path.clone(),
                        source,
                    })?;
                }
                Arc::new(roots)
            }
            None => system_roots()?,
        };
        let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = if settings
            .insecure_skip_verify
        {
            Arc::new(verify::SkipVerification::new(provider.clone()))
        } else {
            let mut builder = WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
            if let Some((path, text)) =
                material("caCrl", settings.ca_crl.as_deref(), secret, &mut files)?
            {
                let path = &path;
                let crls = CertificateRevocationListDer::pem_slice_iter(&text)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| pem_error("caCrl", path, source))?;
                if crls.is_empty() {
                    return Err(empty("caCrl", path, "X509 CRL"));
                }
                builder = builder.with_crls(crls);
            }
            let webpki = builder.build().map_err(TlsError::Verifier)?;
            if settings.subject_alt_names.is_empty() {
                webpki
            } else {
                let names = settings
                    .subject_alt_names
                    .iter()
                    .map(|name| {
                        ServerName::try_from(name.clone()).map_err(|_| TlsError::BadName {
                            field: "subjectAltNames",
                            name: name.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(verify::SubjectAltNames::new(webpki, names))
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match settings.mode {
            TlsMode::Mutual => {
                let cert = material(
                    "clientCertificate",
                    settings.client_certificate.as_deref(),
                    secret,
                    &mut files,
                )?;
                let key = material(
                    "privateKey",
                    settings.private_key.as_deref(),
                    secret,
                    &mut files,
                )?;
                let (Some((cert_path, cert)), Some((key_path, key))) = (cert, key) else {
                    // The parser requires both for MUTUAL (a Secret must hold both).
                    return Err(match secret {
                        Some(secret) => TlsError::SecretKey {
                            field: "credentialName",
                            secret: secret.name.clone(),
                            key: "tls.crt and tls.key",
                        },
                        None => TlsError::Empty {
                            field: "clientCertificate",
                            path: PathBuf::new(),
                            what: "client certificate",
                        },
                    });
                };
                let key_path = &key_path;
                let chain = certificates("clientCertificate", &cert_path, &cert)?;
                let key = PrivateKeyDer::from_pem_slice(&key).map_err(|source| match source {
                    pem::Error::NoItemsFound => empty("privateKey", key_path, "private key"),
                    source => pem_error("privateKey", key_path, source),
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| TlsError::Rejected {
                        field: "privateKey",
                        path: key_path.clone(),
                        source,
                    })?
            }
            TlsMode::Simple | TlsMode::Disable => builder.with_no_client_auth(),
        };
        Ok(Self(Arc::new(Inner {
            config: Arc::new(config),
            files,
            mode: settings.mode,
        })))
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.0.config.clone()
    }

    pub fn mode(&self) -> TlsMode {
        self.0.mode
    }

    /// Identifies this settings set while it is alive (pool keys).
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// A handle that does not keep the settings set (and so its pools) alive.
    pub fn downgrade(&self) -> WeakTlsClient {
        WeakTlsClient(Arc::downgrade(&self.0))
    }
}

/// A [`TlsClient`] that may have been retired (its configuration replaced).
#[derive(Clone, Debug)]
pub struct WeakTlsClient(std::sync::Weak<Inner>);

impl WeakTlsClient {
    pub fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.files == other.0.files)
    }
}

impl Eq for TlsClient {}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("mode", &self.0.mode)
            .field("files", &self.0.files.len())
            .finish()
    }
}

/// The TLS a service's upstream connections use: the settings set, and the server name to send
/// (`None`: the host of the request's authority, for a wildcard ServiceEntry host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    pub client: TlsClient,
    pub sni: Option<String>,
}

impl UpstreamTls {
    /// The server name for a request whose authority host is `authority_host`.
    pub fn server_name(&self, authority_host: &str) -> Option<ServerName<'static>> {
        let name = self.sni.as_deref().unwrap_or(authority_host);
        ServerName::try_from(name.to_owned()).ok()
    }
}

/// The PEM data of a Kubernetes Secret named by a DestinationRule's `credentialName`, as Istio
/// reads it: `tls.crt` (client certificate chain), `tls.key`, `ca.crt` (the roots the upstream
/// is verified with; the system roots when absent) and `ca.crl`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretPem {
    /// `namespace/name`, for messages.
    pub name: String,
    pub cert: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    pub ca: Option<Vec<u8>>,
    pub crl: Option<Vec<u8>>,
}

impl SecretPem {
    fn get(&self, field: &str) -> Option<(&'static str, &Vec<u8>)> {
        match field {
            "clientCertificate" => self.cert.as_ref().map(|b| ("tls.crt", b)),
            "privateKey" => self.key.as_ref().map(|b| ("tls.key", b)),
            "caCertificates" => self.ca.as_ref().map(|b| ("ca.crt", b)),
            "caCrl" => self.crl.as_ref().map(|b| ("ca.crl", b)),
            _ => None,
        }
    }
}

/// The bytes behind one setting, from the Secret when there is one, else from the file it
/// names; with the name errors use for it (`Secret ns/name tls.crt` or the path).
fn material(
    field: &'static str,
    path: Option<&Path>,
    secret: Option<&SecretPem>,
    files: &mut Vec<Vec<u8>>,
) -> Result<Option<(PathBuf, Vec<u8>)>, TlsError> {
    match (secret, path) {
        (Some(secret), _) => Ok(secret.get(field).map(|(key, bytes)| {
            files.push(bytes.clone());
            (
                PathBuf::from(format!("Secret {} {key}", secret.name)),
                bytes.clone(),
            )
        })),
        (None, Some(path)) => Ok(Some((path.to_path_buf(), read(field, path, files)?))),
        (None, None) => Ok(None),
    }
}

fn read(field: &'static str, path: &Path, files: &mut Vec<Vec<u8>>) -> Result<Vec<u8>, TlsError> {
    let bytes = fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.to_path_buf(),
        source,
    })?;
    files.push(bytes.clone());
    Ok(bytes)
}

fn certificates(
    field: &'static str,
    path: &Path,
    text: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(field, path, source))?;
    if certs.is_empty() {
        return Err(empty(field, path, "CERTIFICATE"));
    }
    Ok(certs)
}

fn pem_error(field: &'static str, path: &Path, source: pem::Error) -> TlsError {
    TlsError::Pem {
        field,
        path: path.to_path_buf(),
        source,
    }
}

fn empty(field: &'static str, path: &Path, what: &'static str) -> TlsError {
    TlsError::Empty {
        field,
        path: path.to_path_buf(),
        what,
    }
}

/// The system's trust store (`/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR`), read once.
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(why);
            }
            tracing::debug!(roots = added, "system root certificates loaded");
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(TlsError::NoSystemRoots)
}

#[cfg(test)]
mod tests;
