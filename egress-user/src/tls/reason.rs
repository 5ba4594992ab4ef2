//! `%UPSTREAM_TRANSPORT_FAILURE_REASON%` for a TLS failure: Envoy prints BoringSSL's error
//! (`TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED`); we print the
//! same shape with rustls' reason, one token, so the access log says why at a glance:
//! `TLS_error:|CERTIFICATE_VERIFY_FAILED:certificate_expired`.
use rustls::{CertificateError, Error};

/// The reason for a rustls error.
pub fn failure_reason(error: &Error) -> String {
    match error {
        Error::InvalidCertificate(e) => {
            format!("TLS_error:|CERTIFICATE_VERIFY_FAILED:{}", certificate(e))
        }
        Error::AlertReceived(alert) => {
            format!("TLS_error:|ALERT_RECEIVED:{}", snake(&format!("{alert:?}")))
        }
        Error::NoCertificatesPresented => "TLS_error:|PEER_DID_NOT_RETURN_A_CERTIFICATE".into(),
        Error::PeerIncompatible(e) => {
            format!("TLS_error:|HANDSHAKE_FAILURE:{}", snake(&format!("{e:?}")))
        }
        Error::PeerMisbehaved(e) => {
            format!("TLS_error:|PEER_MISBEHAVED:{}", snake(&format!("{e:?}")))
        }
        other => format!("TLS_error:|{}", snake(&other.to_string())),
    }
}

fn certificate(error: &CertificateError) -> String {
    match error {
        CertificateError::UnknownIssuer => "unknown_issuer".into(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate_expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate_not_yet_valid".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "subject_alt_name_mismatch".into()
        }
        // The certificate is not for TLS servers: a wrong (or missing serverAuth) EKU.
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "invalid_purpose".into()
        }
        CertificateError::Revoked => "certificate_revoked".into(),
        CertificateError::BadSignature => "bad_signature".into(),
        CertificateError::BadEncoding => "bad_encoding".into(),
        other => snake(&format!("{other:?}")),
    }
}

/// `UnknownIssuer` / `a b c` -> `unknown_issuer` / `a_b_c`, without braces or quotes so the
/// value stays one token inside the access log's quotes.
fn snake(text: &str) -> String {
    let head = text.split(['(', '{']).next().unwrap_or(text).trim();
    let mut out = String::with_capacity(head.len() + 4);
    let mut prev_lower = false;
    for c in head.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
            prev_lower = true;
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
            prev_lower = false;
        }
    }
    out.trim_end_matches('_').to_owned()
}

#[cfg(test)]
mod tests {
    use rustls::AlertDescription;

    use super::*;

    #[test]
    fn reasons_are_one_token_and_say_why() {
        let cases = [
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "TLS_error:|CERTIFICATE_VERIFY_FAILED:unknown_issuer",
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                "TLS_error:|CERTIFICATE_VERIFY_FAILED:certificate_expired",
            ),
            (
                Error::InvalidCertificate(CertificateError::NotValidForName),
                "TLS_error:|CERTIFICATE_VERIFY_FAILED:subject_alt_name_mismatch",
            ),
            (
                Error::InvalidCertificate(CertificateError::InvalidPurpose),
                "TLS_error:|CERTIFICATE_VERIFY_FAILED:invalid_purpose",
            ),
            (
                Error::AlertReceived(AlertDescription::CertificateRequired),
                "TLS_error:|ALERT_RECEIVED:certificate_required",
            ),
        ];
        for (error, want) in cases {
            assert_eq!(failure_reason(&error), want);
        }
    }
}
