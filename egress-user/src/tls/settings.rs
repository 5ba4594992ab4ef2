//! Plain TLS settings as a DestinationRule states them (`ClientTLSSettings`), and the client
//! built from them. They live here rather than in `config` so that `config` (which builds
//! the client at load) depends on `tls`, never the reverse; `config` re-exports them.
use std::{fmt, path::PathBuf};

use super::TlsClient;

/// `ClientTLSSettings.mode`. `ISTIO_MUTUAL` is refused at load (no mesh CA in host mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TlsMode {
    #[default]
    Disable,
    Simple,
    Mutual,
}

impl TlsMode {
    /// The name Istio's YAML uses.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "DISABLE",
            TlsMode::Simple => "SIMPLE",
            TlsMode::Mutual => "MUTUAL",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ClientTLSSettings`: how the waypoint originates TLS to an upstream. File paths are read and
/// checked at load; `client` is the rustls configuration built from them (`None` for DISABLE),
/// one per settings set so that TLS sessions are resumed only within it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTlsSettings {
    pub mode: TlsMode,
    pub client_certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub ca_certificates: Option<PathBuf>,
    pub ca_crl: Option<PathBuf>,
    /// Server name to send; default: the ServiceEntry host the request is for.
    pub sni: Option<String>,
    /// Names the upstream certificate must carry, checked instead of the SNI.
    pub subject_alt_names: Vec<String>,
    pub insecure_skip_verify: bool,
    /// `credentialName` (Kubernetes mode only): a Secret in the rule's namespace holds the
    /// certificates instead of files. Its `client` is built when the Secret is read.
    pub credential_name: Option<String>,
    /// Why `client` could not be built (a Secret missing or invalid): the service's requests
    /// are refused with 503, never sent in plain text.
    pub unavailable: Option<String>,
    pub client: Option<TlsClient>,
}
