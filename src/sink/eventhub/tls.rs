//! TLS for the uplink: the operating system's trust store (where plants put the CA of their
//! TLS-inspecting proxy), Mozilla's roots when the system has none, and an optional extra CA
//! file (PEM) such as the local emulator's.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {path}: {source}")]
    ReadCa {
        path: String,
        source: std::io::Error,
    },
    #[error("CA file {path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("CA file {path} has a certificate rustls refuses: {source}")]
    BadCertificate { path: String, source: rustls::Error },
    #[error("TLS setup: {0}")]
    Config(#[from] rustls::Error),
}

/// A client configuration trusting the system roots plus `extra_ca` (if any).
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = extra_ca {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa {
            path: shown.clone(),
            source,
        })?;
        let mut found = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|source| TlsError::ReadCa {
                path: shown.clone(),
                source,
            })?;
            roots.add(cert).map_err(|source| TlsError::BadCertificate {
                path: shown.clone(),
                source,
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(TlsError::NoCertificate { path: shown });
        }
    }
    // One provider, chosen explicitly: with both ring and aws-lc-rs in the tree the default
    // builder would panic.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
