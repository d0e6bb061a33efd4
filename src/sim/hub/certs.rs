//! The emulator's TLS identity: a private CA and a server certificate it signed for
//! `localhost`, `127.0.0.1` and `::1` (plus the bind address), generated with rcgen on first
//! start and reused afterwards.
//!
//! Files in the certificate directory:
//! ```text
//! ca.pem          the CA certificate: give it to clients (connection_verify, --ca-file)
//! ca.key.pem      the CA's private key (only kept so the set is complete; never served)
//! server.pem      the server certificate, then the CA certificate (the chain served)
//! server.key.pem  the server's private key
//! ```
//! The four files are reused only when all of them exist; otherwise all are generated anew, so
//! a half-written directory never pairs a server certificate with the wrong CA.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::HubError;

/// Paths of the generated (or reused) files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub ca_cert: PathBuf,
    pub server_chain: PathBuf,
    pub server_key: PathBuf,
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key.pem";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key.pem";

/// Makes sure `dir` holds a CA and a server certificate; returns their paths.
pub fn ensure(dir: &Path, bind: IpAddr) -> Result<CertFiles, HubError> {
    let files = CertFiles {
        ca_cert: dir.join(CA_CERT),
        server_chain: dir.join(SERVER_CERT),
        server_key: dir.join(SERVER_KEY),
    };
    let complete = [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY]
        .iter()
        .all(|f| dir.join(f).is_file());
    if complete {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).map_err(|source| HubError::Io {
        what: format!("create certificate directory {}", dir.display()),
        source,
    })?;
    let generated = generate(bind)?;
    for (name, text) in [
        (CA_CERT, &generated.ca_pem),
        (CA_KEY, &generated.ca_key_pem),
        (SERVER_CERT, &generated.server_chain_pem),
        (SERVER_KEY, &generated.server_key_pem),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| HubError::Io {
            what: format!("write {}", path.display()),
            source,
        })?;
    }
    Ok(files)
}

struct Generated {
    ca_pem: String,
    ca_key_pem: String,
    server_chain_pem: String,
    server_key_pem: String,
}

fn generate(bind: IpAddr) -> Result<Generated, HubError> {
    let cert_err = |e: rcgen::Error| HubError::Certificate(e.to_string());
    let ca_key = KeyPair::generate().map_err(cert_err)?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "tagbridge hub emulator CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(cert_err)?;

    let server_key = KeyPair::generate().map_err(cert_err)?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !bind.is_unspecified() && !bind.is_loopback() {
        names.push(bind.to_string());
    }
    let mut server = CertificateParams::new(names).map_err(cert_err)?;
    server.distinguished_name = DistinguishedName::new();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    debug_assert!(server
        .subject_alt_names
        .iter()
        .any(|s| matches!(s, SanType::IpAddress(_))));
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .map_err(cert_err)?;
    Ok(Generated {
        ca_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        server_chain_pem: format!("{}{}", server_cert.pem(), ca_cert.pem()),
        server_key_pem: server_key.serialize_pem(),
    })
}

/// A rustls server configuration serving the chain in `files`, with the given ALPN protocols.
pub fn server_config(
    files: &CertFiles,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, HubError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| HubError::Io {
            what: format!("read {}", path.display()),
            source,
        })
    };
    let chain_pem = read(&files.server_chain)?;
    let key_pem = read(&files.server_key)?;
    let chain = rustls_pemfile::certs(&mut chain_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| HubError::Io {
            what: format!("parse {}", files.server_chain.display()),
            source,
        })?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| HubError::Io {
            what: format!("parse {}", files.server_key.display()),
            source,
        })?
        .ok_or_else(|| {
            HubError::Certificate(format!("{} holds no key", files.server_key.display()))
        })?;
    // One provider, chosen explicitly (see sink::eventhub::tls).
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HubError::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| HubError::Certificate(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure(dir.path(), "127.0.0.1".parse().unwrap()).unwrap();
        let first = std::fs::read_to_string(&files.ca_cert).unwrap();
        assert!(first.starts_with("-----BEGIN CERTIFICATE-----"));
        let again = ensure(dir.path(), "127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(&again.ca_cert).unwrap(), first);
        server_config(&again, &[]).unwrap();
        // A missing file regenerates the whole set.
        std::fs::remove_file(dir.path().join(SERVER_KEY)).unwrap();
        let third = ensure(dir.path(), "127.0.0.1".parse().unwrap()).unwrap();
        assert_ne!(std::fs::read_to_string(&third.ca_cert).unwrap(), first);
    }
}
