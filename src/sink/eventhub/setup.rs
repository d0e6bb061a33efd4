//! From the `eventhub:` section of gateway.yaml to a [`Target`] and a [`Credential`]: reads the
//! secrets (environment or file), parses the connection string, builds TLS.

use std::path::{Path, PathBuf};

use crate::config::gateway::{EventHubSpec, Transport};

use super::auth::Credential;
use super::connection_string::{ConnectionString, ConnectionStringError};
use super::entra::{EntraClient, EntraError};
use super::tls::{client_config, TlsError};
use super::transport::Target;

/// AMQP over TLS, as Event Hubs serves it.
pub const AMQPS_PORT: u16 = 5671;
/// Plain AMQP (only the development emulator).
pub const AMQP_PORT: u16 = 5672;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the Event Hub sink needs exactly one of connection_string_env, connection_string_file or entra")]
    NoCredential,
    #[error(
        "environment variable {0} is not set (it should hold the connection string or secret)"
    )]
    MissingEnv(String),
    #[error("cannot read secret file {path}: {source}")]
    SecretFile {
        path: String,
        source: std::io::Error,
    },
    #[error("connection string from {from}: {source}")]
    ConnectionString {
        from: String,
        source: ConnectionStringError,
    },
    #[error("`entra` needs `namespace` (e.g. plant-a.servicebus.windows.net) and `hub`")]
    EntraNeedsNamespace,
    #[error("`entra` needs exactly one of client_secret_env or client_secret_file")]
    EntraSecret,
    #[error(transparent)]
    Entra(#[from] EntraError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Reads a secret from an environment variable or a file (trailing newline trimmed).
pub fn read_secret(
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<(String, String)>, SetupError> {
    match (env, file) {
        (Some(var), None) => std::env::var(var)
            .map(|v| Some((v, format!("${var}"))))
            .map_err(|_| SetupError::MissingEnv(var.to_string())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|v| Some((v.trim_end().to_string(), path.display().to_string())))
            .map_err(|source| SetupError::SecretFile {
                path: path.display().to_string(),
                source,
            }),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(SetupError::NoCredential),
    }
}

/// Builds the connection target and credential; relative paths are taken from `base`.
pub fn build(spec: &EventHubSpec, base: &Path) -> Result<(Target, Credential), SetupError> {
    build_fingerprinted(spec, base).map(|(target, credential, _)| (target, credential))
}

/// Where the sink's secret comes from (an environment variable or a file, holding a connection
/// string or an Entra client secret), read again on every refused credential and on SIGHUP, so
/// a fixed or rotated key is used without a restart.
#[derive(Clone)]
pub struct CredentialSource {
    spec: EventHubSpec,
    base: PathBuf,
    /// SHA-256 of the secret last read: tells a new secret from the same one, never shown.
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSource")
            .field("from", &self.describe())
            .finish_non_exhaustive()
    }
}

impl CredentialSource {
    /// The source `spec` names; the secret read now is the one in use.
    pub fn new(spec: &EventHubSpec, base: &Path) -> CredentialSource {
        let fingerprint = build_fingerprinted(spec, base).map_or([0; 32], |(_, _, f)| f);
        CredentialSource {
            spec: spec.clone(),
            base: base.to_path_buf(),
            fingerprint,
        }
    }

    /// Where the secret is read from (an environment variable's name or a path), for logs.
    pub fn describe(&self) -> String {
        let entra = self.spec.entra.as_ref();
        let env = self
            .spec
            .connection_string_env
            .as_deref()
            .or_else(|| entra.and_then(|e| e.client_secret_env.as_deref()));
        let file = self
            .spec
            .connection_string_file
            .as_deref()
            .or_else(|| entra.and_then(|e| e.client_secret_file.as_deref()));
        match (env, file) {
            (Some(var), _) => format!("${var}"),
            (None, Some(path)) => self.base.join(path).display().to_string(),
            (None, None) => "nowhere".into(),
        }
    }

    /// Reads the secret again: the new target and credential if it changed since the last read,
    /// `None` if it is the same.
    pub fn reread(&mut self) -> Result<Option<(Target, Credential)>, SetupError> {
        let (target, credential, fingerprint) = build_fingerprinted(&self.spec, &self.base)?;
        if fingerprint == self.fingerprint {
            return Ok(None);
        }
        self.fingerprint = fingerprint;
        Ok(Some((target, credential)))
    }
}

fn fingerprint(secret: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

fn build_fingerprinted(
    spec: &EventHubSpec,
    base: &Path,
) -> Result<(Target, Credential, [u8; 32]), SetupError> {
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let transport = spec.transport.unwrap_or(Transport::Amqp);
    // The port a connection string or namespace does not name: the transport's own.
    let default_port = |tls: bool| match (transport, tls) {
        (Transport::AmqpWs | Transport::Https, true) => super::websocket::PORT,
        (Transport::AmqpWs | Transport::Https, false) => 80,
        (Transport::Amqp, true) => AMQPS_PORT,
        (Transport::Amqp, false) => AMQP_PORT,
    };
    let tls = client_config(spec.ca_file.as_deref().map(resolve).as_deref())?;
    let file = spec.connection_string_file.as_deref().map(resolve);
    let connection_string = read_secret(spec.connection_string_env.as_deref(), file.as_deref())?;
    match (connection_string, &spec.entra) {
        (Some((text, from)), None) => {
            let print = fingerprint(&text);
            let cs = ConnectionString::parse(&text, spec.hub.as_deref())
                .map_err(|source| SetupError::ConnectionString { from, source })?;
            let (port, tls) = match (cs.port, cs.use_emulator) {
                (p, true) => (p.unwrap_or(default_port(false)), None),
                (p, false) => (p.unwrap_or(default_port(true)), Some(tls)),
            };
            let target = Target {
                proxy: super::proxy::Proxy::from_env(&cs.host),
                ..Target::for_connection_string(&cs, tls, port, transport)
            };
            Ok((target, Credential::Sas(cs.credential), print))
        }
        (None, Some(entra)) => {
            let (Some(namespace), Some(hub)) = (&spec.namespace, &spec.hub) else {
                return Err(SetupError::EntraNeedsNamespace);
            };
            let secret_file = entra.client_secret_file.as_deref().map(resolve);
            let (secret, _) =
                read_secret(entra.client_secret_env.as_deref(), secret_file.as_deref())?
                    .ok_or(SetupError::EntraSecret)?;
            let (host, port) = match namespace.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() => {
                    (h.to_string(), p.parse().unwrap_or(default_port(true)))
                }
                _ => (namespace.clone(), default_port(true)),
            };
            let client = EntraClient::new(
                entra.authority.as_deref(),
                &entra.tenant_id,
                &entra.client_id,
                &secret,
                tls.clone(),
            )?;
            let target = Target {
                audience: format!("sb://{host}/{hub}"),
                proxy: super::proxy::Proxy::from_env(&host),
                host,
                port,
                tls: Some(tls),
                hub: hub.clone(),
                transport,
                token_lifetime: super::auth::SAS_TOKEN_LIFETIME,
            };
            Ok((target, Credential::Entra(client), fingerprint(&secret)))
        }
        _ => Err(SetupError::NoCredential),
    }
}
