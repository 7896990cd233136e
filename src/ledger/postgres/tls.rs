//! TLS to PostgreSQL, asked for in the URL with libpq's parameters, meaning what they mean to
//! `psql`:
//!
//! - `sslmode`: `disable`; `allow` and `prefer` (the default: TLS when the server offers it);
//!   `require` (TLS or no connection); `verify-ca` (and the server's certificate chains to a
//!   trusted root); `verify-full` (and names the host connected to).
//! - `sslrootcert`: a PEM file of the roots to trust, or `system` (the system's roots, with
//!   `verify-full` only, as in libpq). Given, the chain is verified in every mode, as in libpq.
//!   Without it `verify-full` trusts the system's roots (libpq would read
//!   `~/.postgresql/root.crt`, which a container does not have); `verify-ca` needs it.
//! - `sslcert` and `sslkey`: PEM files of a client certificate and its key, both or neither.
//!
//! tokio-postgres knows only three modes and none of the files, so [`split`] takes these out of
//! the URL before tokio-postgres parses the rest, and [`TlsParams::connector`] builds the
//! rustls configuration they ask for, on rustls' ring provider.

use std::path::PathBuf;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::ledger::LedgerError;

/// What the server's certificate is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Roots {
    File(PathBuf),
    System,
}

/// The TLS a ledger URL asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub(crate) mode: Mode,
    pub(crate) roots: Option<Roots>,
    /// The client certificate's and its key's files.
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
}

/// `url` without libpq's TLS parameters, and what they ask for. Reads no file.
pub(crate) fn split(url: &str) -> Result<(String, TlsParams), String> {
    // tokio-postgres reads the credentials up to the first `@`, so a `?` in a password is not
    // the start of the parameters.
    let after_credentials = url.find('@').map_or(0, |at| at + 1);
    // An `@` in a parameter's value, with no user before the host, would make the parameters
    // before it credentials, to tokio-postgres too: TLS asked for would be silently dropped.
    if let Some(question) = url[..after_credentials].find('?')
        && url[question..after_credentials]
            .split(['?', '&'])
            .any(|pair| {
                ["sslmode=", "sslrootcert=", "sslcert=", "sslkey="]
                    .iter()
                    .any(|k| pair.starts_with(k))
            })
    {
        return Err("an '@' after the TLS parameters: write it %40 in a parameter's value".into());
    }
    let Some(start) = url[after_credentials..]
        .find('?')
        .map(|q| after_credentials + q)
    else {
        return Ok((
            url.to_string(),
            TlsParams::from_values(None, None, None, None)?,
        ));
    };
    let (mut mode, mut root, mut cert, mut key) = (None, None, None, None);
    let mut kept = Vec::new();
    for pair in url[start + 1..].split('&') {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match decode(raw_key)?.as_str() {
            "sslmode" => &mut mode,
            "sslrootcert" => &mut root,
            "sslcert" => &mut cert,
            "sslkey" => &mut key,
            _ => {
                kept.push(pair);
                continue;
            }
        };
        *slot = Some(decode(raw_value)?);
    }
    let params = TlsParams::from_values(mode, root, cert, key)?;
    let mut rest = url[..start].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, params))
}

fn decode(raw: &str) -> Result<String, String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("'{raw}' is not percent-encoded UTF-8"))
}

impl TlsParams {
    fn from_values(
        mode: Option<String>,
        root: Option<String>,
        cert: Option<String>,
        key: Option<String>,
    ) -> Result<Self, String> {
        let mode = match mode.as_deref() {
            None | Some("allow" | "prefer") => Mode::Prefer,
            Some("disable") => Mode::Disable,
            Some("require") => Mode::Require,
            Some("verify-ca") => Mode::VerifyCa,
            Some("verify-full") => Mode::VerifyFull,
            Some(other) => {
                return Err(format!(
                    "sslmode={other}: expected disable, allow, prefer, require, verify-ca or \
                     verify-full"
                ));
            }
        };
        let roots = match root.as_deref() {
            None | Some("") => None,
            Some("system") => Some(Roots::System),
            Some(path) => Some(Roots::File(PathBuf::from(path))),
        };
        if roots == Some(Roots::System) && mode != Mode::VerifyFull {
            return Err(
                "sslrootcert=system trusts any certificate a public CA issued for any name: \
                 it needs sslmode=verify-full"
                    .to_string(),
            );
        }
        // The system's roots without the name check would take any public certificate.
        if roots.is_none() && mode == Mode::VerifyCa {
            return Err(
                "sslmode=verify-ca needs sslrootcert=<file>: the system's roots would take a \
                 certificate a public CA issued for any name (use sslmode=verify-full)"
                    .to_string(),
            );
        }
        let identity = match (
            cert.filter(|c| !c.is_empty()),
            key.filter(|k| !k.is_empty()),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            _ => {
                return Err(
                    "sslcert and sslkey go together: a client certificate needs its key"
                        .to_string(),
                );
            }
        };
        if identity.is_some() && mode == Mode::Disable {
            return Err("sslcert with sslmode=disable: a client certificate needs TLS".to_string());
        }
        Ok(Self {
            mode,
            roots,
            identity,
        })
    }

    /// tokio-postgres' mode: whether TLS is tried, and whether it is required.
    pub(crate) fn ssl_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    /// The connector: reads the files named, and the system's roots when they are trusted.
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect, LedgerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = match (&self.roots, self.mode) {
            (_, Mode::Disable) | (None, Mode::Prefer | Mode::Require) => None,
            (roots, _) => {
                let roots = match roots {
                    Some(Roots::File(path)) => file_roots(path)?,
                    // `from_values` refuses the system's roots without the name check.
                    Some(Roots::System) | None => system_roots()?,
                };
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| tls_error(format!("the trusted roots: {e}")))?;
                Some(webpki)
            }
        };
        let verifier = Arc::new(Verifier {
            chain,
            names: self.mode == Mode::VerifyFull,
            provider: provider.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| file_error("sslcert", cert, e))?;
                if chain.is_empty() {
                    return Err(file_error("sslcert", cert, "no certificate in it"));
                }
                let key_der =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("sslkey", key, e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| tls_error(format!("sslcert and sslkey: {e}")))?
            }
        };
        let mut config = config;
        // PostgreSQL 17's sslnegotiation=direct requires it; earlier servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustlsConnect::new(config))
    }
}

fn tls_error(message: String) -> LedgerError {
    LedgerError::Tls(message)
}

fn file_error(setting: &str, path: &std::path::Path, e: impl std::fmt::Display) -> LedgerError {
    tls_error(format!("{setting}={}: {e}", path.display()))
}

fn file_roots(path: &std::path::Path) -> Result<RootCertStore, LedgerError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("sslrootcert", path, e))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(file_error(
            "sslrootcert",
            path,
            "no usable certificate in it",
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, LedgerError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(tls_error(format!(
            "no system roots to verify the server with ({}); name a file in sslrootcert",
            if errors.is_empty() {
                "none found".to_string()
            } else {
                errors.join("; ")
            }
        )));
    }
    Ok(roots)
}

/// Checks the server's certificate as far as the mode asks. `chain: None` (`prefer` or
/// `require` without roots, as in libpq): any certificate, the connection still encrypted and
/// the handshake's signatures checked. `names: false` (`verify-ca`): the chain, not the name;
/// webpki checks the name last, so a name error means everything before it passed.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    names: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(url: &str) -> TlsParams {
        split(url).expect("valid").1
    }

    #[test]
    fn libpq_parameters_are_taken_out_and_the_rest_kept_in_order() {
        let (rest, tls) = split(
            "postgres://u:p@db:5432/ledger?application_name=x&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca.pem&options=-csearch_path%3Dt&sslcert=/c.pem&sslkey=/k.pem",
        )
        .expect("valid");
        assert_eq!(
            rest,
            "postgres://u:p@db:5432/ledger?application_name=x&options=-csearch_path%3Dt"
        );
        assert_eq!(
            tls,
            TlsParams {
                mode: Mode::VerifyFull,
                roots: Some(Roots::File("/etc/ca.pem".into())),
                identity: Some(("/c.pem".into(), "/k.pem".into())),
            }
        );
        assert_eq!(tls.ssl_mode(), SslMode::Require);
        let (rest, tls) = split("postgres://db/ledger?sslmode=disable").expect("valid");
        assert_eq!(rest, "postgres://db/ledger");
        assert_eq!(tls.ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn the_default_is_libpqs_prefer_and_a_question_mark_in_a_password_is_no_parameter() {
        let url = "postgres://u:p?q=1@db/ledger";
        let (rest, tls) = split(url).expect("valid");
        assert_eq!(rest, url);
        assert_eq!(tls.mode, Mode::Prefer);
        assert_eq!(tls.ssl_mode(), SslMode::Prefer);
        assert_eq!(params("postgres://db/l?sslmode=allow").mode, Mode::Prefer);
        assert_eq!(
            params("postgres://db/l?sslmode=verify-ca&sslrootcert=/ca.pem").mode,
            Mode::VerifyCa
        );
        assert_eq!(
            params("postgres://db/l?sslmode=require").ssl_mode(),
            SslMode::Require
        );
    }

    #[test]
    fn what_cannot_be_meant_is_refused() {
        for (url, says) in [
            ("postgres://db/l?sslmode=verify", "sslmode=verify: expected"),
            (
                "postgres://db/l?sslrootcert=system",
                "needs sslmode=verify-full",
            ),
            (
                "postgres://db/l?sslmode=verify-ca&sslrootcert=system",
                "needs sslmode=verify-full",
            ),
            (
                "postgres://db/l?sslmode=verify-ca",
                "needs sslrootcert=<file>",
            ),
            ("postgres://db/l?sslcert=/c.pem", "go together"),
            ("postgres://db/l?sslkey=/k.pem", "go together"),
            (
                "postgres://db/l?sslmode=disable&sslcert=/c&sslkey=/k",
                "needs TLS",
            ),
            ("postgres://db/l?sslrootcert=%FF", "percent-encoded UTF-8"),
            (
                "postgres://db/l?sslmode=verify-full&user=svc@tenant",
                "write it %40",
            ),
        ] {
            let error = split(url).expect_err(url);
            assert!(error.contains(says), "{url}: {error}");
        }
        assert_eq!(
            params("postgres://db/l?sslmode=verify-full&sslrootcert=system").roots,
            Some(Roots::System)
        );
    }

    #[test]
    fn a_missing_or_empty_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let missing = dir.path().join("missing.pem");
        for (tls, names) in [
            (
                TlsParams {
                    mode: Mode::VerifyFull,
                    roots: Some(Roots::File(missing.clone())),
                    identity: None,
                },
                format!("sslrootcert={}", missing.display()),
            ),
            (
                TlsParams {
                    mode: Mode::Require,
                    roots: Some(Roots::File(empty.clone())),
                    identity: None,
                },
                format!("sslrootcert={}: no usable certificate", empty.display()),
            ),
            (
                TlsParams {
                    mode: Mode::Require,
                    roots: None,
                    identity: Some((empty.clone(), missing.clone())),
                },
                format!("sslcert={}: no certificate", empty.display()),
            ),
        ] {
            let error = tls.connector().err().expect("refused").to_string();
            assert!(error.contains(&names), "{error}");
        }
        let unverified = TlsParams {
            mode: Mode::Require,
            roots: None,
            identity: None,
        };
        assert!(unverified.connector().is_ok());
    }
}
