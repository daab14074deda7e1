//! TLS towards the collectors (rustls with the ring provider): `https://` collector URLs are
//! verified against `--ca` (PEM) or, without it, the system's trusted roots; `--tls-cert` and
//! `--tls-key` present a client certificate to collectors that require one (with `--ca`).

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} from {}: {cause}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        cause: rustls_pki_types::pem::Error,
    },
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot load the system's trusted roots: {0}")]
    Roots(std::io::Error),
    #[error("a client certificate (--tls-cert) needs --ca, the collectors' CA")]
    ClientCertNeedsCa,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|cause| TlsError::Pem {
            what: "certificates",
            path: path.to_owned(),
            cause,
        })
}

/// An HTTP connector that also speaks HTTPS as configured.
pub fn connector(
    cfg: &TlsConfig,
    https_needed: bool,
    http: HttpConnector,
) -> Result<HttpsConnector<HttpConnector>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_auth = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => Some((
            certs(cert)?,
            PrivateKeyDer::from_pem_file(key).map_err(|cause| TlsError::Pem {
                what: "the private key",
                path: key.clone(),
                cause,
            })?,
        )),
        _ => None,
    };
    let builder = match &cfg.ca {
        // Plain http:// collectors only: no trust store to load (the system's roots cost the
        // agent several hundred KiB of memory for nothing).
        None if !https_needed && client_auth.is_none() => {
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            return Ok(HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http));
        }
        None if client_auth.is_none() => {
            return Ok(HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)
                .map_err(TlsError::Roots)?
                .https_or_http()
                .enable_http1()
                .wrap_connector(http));
        }
        None => return Err(TlsError::ClientCertNeedsCa),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c)?;
            }
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
        }
    };
    let config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}
