//! Connecting: the gateway's application certificate, endpoint selection by security policy
//! and mode, the server certificate trust check, and the user identity.
//!
//! Invariants:
//! - The gateway's certificate and key live in `<pki>/own/cert.der` and
//!   `<pki>/private/private.pem`; they are created on first start and reused afterwards.
//! - A server certificate is trusted only when its file is in `<pki>/trusted/` (the file name
//!   is async-opcua's: `<common name> [<thumbprint>].der`). An unknown certificate is written
//!   to `<pki>/rejected/` and the connection fails with [`OpcUaError::Untrusted`], whose text
//!   says which file to move where and which command does it. `trust_on_first_use: true`
//!   (off by default) trusts an unknown certificate instead.
//! - Security `none` is only used when the tag map names it: the plan's default is
//!   Basic256Sha256 + SignAndEncrypt.
//! - Passwords are read when connecting (env or file, trailing newline removed), never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use opcua::client::transport::TcpConnector;
use opcua::client::{Client, ClientBuilder, IdentityToken, Password, Session, SessionEventLoop};
use opcua::crypto::{CertificateStore, SecurityPolicy as UaPolicy, X509};
use opcua::types::{EndpointDescription, MessageSecurityMode, StatusCode, UserTokenType};

use super::{data_change, own_certificate, OpcUaError, UntrustedServer};
use crate::config::tagmap::{SecurityMode, SecurityPolicy};
use crate::mapping::plan::{SecretSource, UserPlan};
use crate::mapping::OpcUaPlan;

/// Client limits lifted so that 100 000 monitored items fit (DEPENDENCIES.md).
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
const MAX_ARRAY_LENGTH: usize = 1_000_000;
/// How long GetEndpoints may take before the server counts as unreachable.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the PKI directory is when the tag map does not say: `$TAGBRIDGE_PKI_DIR`, else
/// `$STATE_DIRECTORY/opcua-pki` (systemd), else `./opcua-pki`.
pub fn pki_dir(plan: &OpcUaPlan) -> PathBuf {
    if let Some(dir) = &plan.pki_dir {
        return dir.clone();
    }
    default_pki_dir()
}

/// Where the PKI directory is when nothing names one: `$TAGBRIDGE_PKI_DIR`, else
/// `$STATE_DIRECTORY/opcua-pki` (systemd), else `./opcua-pki`.
pub fn default_pki_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TAGBRIDGE_PKI_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may list several directories separated by colons; take the first.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return PathBuf::from(first).join("opcua-pki");
        }
    }
    PathBuf::from("opcua-pki")
}

/// How long async-opcua waits before its first reconnect of a session (doubling to 30 s).
pub const SESSION_RETRY: Duration = Duration::from_millis(500);

/// The async-opcua client for `plan`: the gateway's certificate made on first use
/// ([`own_certificate::ensure`]), limits lifted, endless reconnects with backoff (the source
/// decides when to stop).
pub fn client(plan: &OpcUaPlan, chunk: usize) -> Result<Client, OpcUaError> {
    client_with(plan, chunk, SESSION_RETRY)
}

/// [`client`], with the session's first reconnect after `retry` (tests make it long, so that
/// only a first answer can pass them).
pub fn client_with(plan: &OpcUaPlan, chunk: usize, retry: Duration) -> Result<Client, OpcUaError> {
    let pki = pki_dir(plan);
    // Two tag maps starting together on a fresh PKI directory would both write the gateway's
    // certificate. One at a time.
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = CREATING.lock().unwrap_or_else(|p| p.into_inner());
    let own = own_certificate::ensure(&pki, &plan.certificate)?;
    // The URI the certificate carries: a server that compares the two accepts it even while
    // gateway.yaml asks for another one (ensure has said so).
    let application_uri = own
        .application_uri
        .unwrap_or_else(|| plan.certificate.application_uri.clone());
    ClientBuilder::new()
        .application_name("tagbridge")
        .application_uri(application_uri)
        .product_uri("urn:tagbridge")
        .session_name("tagbridge")
        .create_sample_keypair(false)
        .certificate_path(own_certificate::CERT_FILE)
        .private_key_path(own_certificate::KEY_FILE)
        .pki_dir(pki)
        .trust_server_certs(plan.trust_on_first_use)
        .verify_server_certs(true)
        // Negative: retry forever; the source's cancellation token ends the session.
        .session_retry_limit(-1)
        .session_retry_initial(retry)
        .session_retry_max(retry.max(Duration::from_secs(30)))
        .keep_alive_interval(Duration::from_secs(5))
        .max_failed_keep_alive_count(3)
        .request_timeout(Duration::from_secs(30))
        .session_timeout(120_000)
        .max_message_size(MAX_MESSAGE_SIZE)
        .max_chunk_count(0)
        .max_array_length(MAX_ARRAY_LENGTH)
        .recreate_monitored_items_chunk(chunk.max(1))
        .client()
        .map_err(|e| OpcUaError::Client(e.join("; ")))
}

/// Fetches the server's endpoints and picks the one with the plan's policy and mode, checking
/// that it accepts the plan's kind of user token.
pub async fn select_endpoint(
    client: &Client,
    plan: &OpcUaPlan,
) -> Result<EndpointDescription, OpcUaError> {
    let endpoint = matching_endpoint(client, plan).await?;
    check_user_token(plan, &endpoint)?;
    Ok(endpoint)
}

/// Opens a TCP connection to the endpoint's host and port, so that a refused or unresolvable
/// address is reported at once (async-opcua would retry it until the discovery timeout).
async fn probe_tcp(plan: &OpcUaPlan) -> Result<(), OpcUaError> {
    let unreachable = |reason: String| OpcUaError::Unreachable {
        endpoint: plan.endpoint.clone(),
        reason,
    };
    let rest = plan
        .endpoint
        .strip_prefix("opc.tcp://")
        .unwrap_or(&plan.endpoint);
    let authority = rest.split('/').next().unwrap_or(rest);
    // opc.tcp's default port is 4840 (OPC UA Part 6, 7.2).
    let address = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:4840")
    };
    match tokio::time::timeout(DISCOVERY_TIMEOUT, tokio::net::TcpStream::connect(&address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(unreachable(format!(
                "connection refused at {address}: is the server running, and is the port right?"
            )))
        }
        Ok(Err(e)) => Err(unreachable(format!("{address}: {e}"))),
        Err(_) => Err(unreachable(format!(
            "no answer from {address} within {} s (a firewall, or the wrong address?)",
            DISCOVERY_TIMEOUT.as_secs()
        ))),
    }
}

/// Fetches the server's endpoints (GetEndpoints: no login needed) and picks the one with the
/// plan's policy and mode.
pub async fn matching_endpoint(
    client: &Client,
    plan: &OpcUaPlan,
) -> Result<EndpointDescription, OpcUaError> {
    probe_tcp(plan).await?;
    // async-opcua retries the discovery connection by the session retry policy (forever):
    // bound it, so a down server is reported and retried by the caller's backoff.
    let endpoints = tokio::time::timeout(
        DISCOVERY_TIMEOUT,
        client.get_server_endpoints_from_url(plan.endpoint.as_str()),
    )
    .await
    .map_err(|_| OpcUaError::Unreachable {
        endpoint: plan.endpoint.clone(),
        reason: format!("no answer within {} s", DISCOVERY_TIMEOUT.as_secs()),
    })?
    .map_err(|e| OpcUaError::Unreachable {
        endpoint: plan.endpoint.clone(),
        reason: e.to_string(),
    })?;
    let policy = ua_policy(plan.security_policy);
    let mode = ua_mode(plan.security_mode);
    let Some(endpoint) = Client::find_matching_endpoint(&endpoints, &plan.endpoint, policy, mode)
    else {
        let offered: Vec<String> = endpoints
            .iter()
            .map(|e| {
                format!(
                    "{} + {:?}",
                    UaPolicy::from_uri(e.security_policy_uri.as_ref()),
                    e.security_mode
                )
            })
            .collect();
        return Err(OpcUaError::NoEndpoint {
            endpoint: plan.endpoint.clone(),
            wanted: format!("{policy} + {mode:?}"),
            offered: offered.join(", "),
            advice: ADVICE_TAG_MAP,
        });
    };
    Ok(endpoint)
}

/// What to change when no endpoint matches: the tag map's settings.
pub const ADVICE_TAG_MAP: &str = "change security_policy / security_mode in the tag map";
/// What to change when no endpoint matches: the command's flags (`browse`, `opcua trust`).
pub const ADVICE_FLAGS: &str = "pass --security and --mode (e.g. --security none)";

/// Refuses an endpoint that does not accept the plan's kind of user token.
fn check_user_token(plan: &OpcUaPlan, endpoint: &EndpointDescription) -> Result<(), OpcUaError> {
    let wanted = match &plan.user {
        UserPlan::Anonymous => UserTokenType::Anonymous,
        UserPlan::Username { .. } => UserTokenType::UserName,
        UserPlan::Certificate { .. } => UserTokenType::Certificate,
    };
    let tokens = endpoint.user_identity_tokens.as_deref().unwrap_or_default();
    // No token list at all means anonymous only (OPC UA Part 4, 7.14).
    let ok = tokens.iter().any(|t| t.token_type == wanted)
        || (tokens.is_empty() && wanted == UserTokenType::Anonymous);
    if !ok {
        return Err(OpcUaError::UserTokenRefused {
            endpoint: plan.endpoint.clone(),
            wanted: format!("{wanted:?}"),
        });
    }
    Ok(())
}

/// Checks the server certificate of `endpoint` against `<pki>/trusted/` before the channel
/// is opened, so an untrusted server gets a message that says what to do.
pub fn check_trust(
    plan: &OpcUaPlan,
    tag_map: &Path,
    endpoint: &EndpointDescription,
) -> Result<(), OpcUaError> {
    if endpoint.security_mode == MessageSecurityMode::None {
        return Ok(());
    }
    let cert = X509::from_byte_string(&endpoint.server_certificate).map_err(|e| {
        OpcUaError::Certificate(format!("the server sent no usable certificate: {e}"))
    })?;
    let name = CertificateStore::cert_file_name(&cert);
    let pki = pki_dir(plan);
    let trusted_dir = pki.join("trusted");
    let trusted = trusted_dir.join(&name);
    if trusted.exists() {
        return Ok(());
    }
    if plan.trust_on_first_use {
        write_der(&trusted, &cert)?;
        tracing::warn!(
            message = "Trusted an unknown OPC UA server certificate on first use.",
            endpoint = %plan.endpoint,
            file = %trusted.display(),
            thumbprint = %cert.thumbprint().as_hex_string()
        );
        return Ok(());
    }
    let rejected = pki.join("rejected").join(&name);
    write_der(&rejected, &cert)?;
    Err(OpcUaError::Untrusted(Box::new(UntrustedServer {
        endpoint: plan.endpoint.clone(),
        subject: cert.subject_name(),
        thumbprint: cert.thumbprint().as_hex_string(),
        rejected,
        trusted_dir,
        tag_map: tag_map.to_path_buf(),
    })))
}

/// A server certificate put into `<pki>/trusted/`.
#[derive(Debug, Clone)]
pub struct Trusted {
    pub path: PathBuf,
    pub subject: String,
    pub thumbprint: String,
}

/// Fetches the server certificate of `plan`'s endpoint and trusts it (`tagbridge opcua
/// trust`). With `thumbprint`, refuses a certificate whose SHA-1 thumbprint (hex, any case,
/// `:` allowed) differs. Removes the copy in `<pki>/rejected/`.
pub async fn trust_server(
    plan: &OpcUaPlan,
    thumbprint: Option<&str>,
) -> Result<Trusted, OpcUaError> {
    let client = client(plan, 1)?;
    // GetEndpoints needs no login: the user settings play no part here.
    let endpoint = matching_endpoint(&client, plan).await?;
    if endpoint.security_mode == MessageSecurityMode::None {
        return Err(OpcUaError::Certificate(
            "this tag map uses security none: there is no server certificate to trust".into(),
        ));
    }
    let cert = X509::from_byte_string(&endpoint.server_certificate).map_err(|e| {
        OpcUaError::Certificate(format!("the server sent no usable certificate: {e}"))
    })?;
    let actual = cert.thumbprint().as_hex_string();
    if let Some(wanted) = thumbprint {
        let wanted: String = wanted.chars().filter(|c| *c != ':').collect();
        if !wanted.eq_ignore_ascii_case(&actual) {
            return Err(OpcUaError::Certificate(format!(
                "the server's certificate has thumbprint {actual}, not {wanted}: not trusted"
            )));
        }
    }
    let name = CertificateStore::cert_file_name(&cert);
    let pki = pki_dir(plan);
    let path = pki.join("trusted").join(&name);
    write_der(&path, &cert)?;
    let _ = std::fs::remove_file(pki.join("rejected").join(&name));
    Ok(Trusted {
        path,
        subject: cert.subject_name(),
        thumbprint: actual,
    })
}

/// Writes `cert` as DER into `path`, creating the directory.
pub fn write_der(path: &Path, cert: &X509) -> Result<(), OpcUaError> {
    let io = |e: std::io::Error| OpcUaError::Certificate(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let der = cert
        .to_der()
        .map_err(|e| OpcUaError::Certificate(format!("cannot encode the certificate: {e}")))?;
    std::fs::write(path, der).map_err(io)
}

/// The user identity of `plan`, reading the password now.
pub fn identity(user: &UserPlan) -> Result<IdentityToken, OpcUaError> {
    Ok(match user {
        UserPlan::Anonymous => IdentityToken::new_anonymous(),
        UserPlan::Username { username, password } => {
            IdentityToken::new_user_name(username.clone(), Password::new(read_secret(password)?))
        }
        UserPlan::Certificate { cert, key } => {
            IdentityToken::new_x509_path(cert, key).map_err(|e| {
                OpcUaError::Certificate(format!(
                    "user certificate {} / key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
    })
}

fn read_secret(source: &SecretSource) -> Result<String, OpcUaError> {
    match source {
        SecretSource::Env(var) => std::env::var(var).map_err(|_| OpcUaError::Secret {
            what: format!("environment variable {var}"),
            reason: "not set (or not UTF-8)".into(),
        }),
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| OpcUaError::Secret {
                what: format!("file {}", path.display()),
                reason: e.to_string(),
            }),
    }
}

/// A session ready to run: its event loop must be polled by the caller.
pub struct Connection {
    pub session: Arc<Session>,
    pub event_loop: SessionEventLoop<TcpConnector>,
    /// The endpoint it was built for, with the server certificate it trusts.
    pub endpoint: EndpointDescription,
}

/// Connects: endpoint, trust, identity, then a session whose event loop the caller polls.
pub async fn connect(
    client: &Client,
    plan: &OpcUaPlan,
    tag_map: &Path,
) -> Result<Connection, OpcUaError> {
    let endpoint = select_endpoint(client, plan).await?;
    check_trust(plan, tag_map, &endpoint)?;
    let token = identity(&plan.user)?;
    let (session, event_loop) = client
        .session_builder()
        .connect_to_endpoint_directly(endpoint.clone())
        .and_then(|b| {
            b.user_identity_token(token)
                .build(client.certificate_store().clone())
        })
        .map_err(|e| OpcUaError::Client(e.to_string()))?;
    data_change::put_first(session.encoding_context().write().loaders_mut());
    Ok(Connection {
        session,
        event_loop,
        endpoint,
    })
}

/// Whether the server at `plan`'s endpoint now presents a different certificate than
/// `current` (renewed while the gateway ran). Errors count as "not known to have changed".
pub async fn certificate_changed(
    client: &Client,
    plan: &OpcUaPlan,
    current: &EndpointDescription,
) -> bool {
    if current.security_mode == MessageSecurityMode::None {
        return false;
    }
    match matching_endpoint(client, plan).await {
        Ok(now) => now.server_certificate != current.server_certificate,
        Err(_) => false,
    }
}

/// The gateway's own certificate, `<pki>/own/cert.der`: its path and SHA-1 thumbprint, for
/// the "trust the gateway on the server" step.
pub fn own_certificate(plan: &OpcUaPlan) -> (PathBuf, Option<String>) {
    let path = pki_dir(plan).join(own_certificate::CERT_FILE);
    let thumbprint = std::fs::read(&path)
        .ok()
        .and_then(|der| X509::from_der(&der).ok())
        .map(|c| c.thumbprint().as_hex_string());
    (path, thumbprint)
}

/// The error for a session the server refused: the gateway's certificate or the user.
pub fn refused(plan: &OpcUaPlan, status: StatusCode) -> Option<OpcUaError> {
    if is_user_refusal(status) {
        let user = match &plan.user {
            UserPlan::Anonymous => "anonymous".to_string(),
            UserPlan::Username { username, password } => {
                let from = match password {
                    SecretSource::Env(v) => format!("environment variable {v}"),
                    SecretSource::File(f) => format!("file {}", f.display()),
                };
                format!("user `{username}` (password from {from})")
            }
            UserPlan::Certificate { cert, .. } => {
                format!("the user certificate {}", cert.display())
            }
        };
        return Some(OpcUaError::LoginRefused {
            endpoint: plan.endpoint.clone(),
            status: status.to_string(),
            user,
        });
    }
    if is_certificate_refusal(status) {
        let (path, thumbprint) = own_certificate(plan);
        return Some(OpcUaError::ClientUntrusted {
            endpoint: plan.endpoint.clone(),
            status: status.to_string(),
            cert: path,
            thumbprint: thumbprint.unwrap_or_else(|| "unknown".into()),
        });
    }
    None
}

/// The server refused the user identity (Part 4, 5.6.3 ActivateSession).
pub fn is_user_refusal(status: StatusCode) -> bool {
    [
        StatusCode::BadUserAccessDenied,
        StatusCode::BadIdentityTokenInvalid,
        StatusCode::BadIdentityTokenRejected,
    ]
    .contains(&status)
}

/// The server refused the gateway's application certificate (Part 4, 5.5.2 / 5.6.2).
pub fn is_certificate_refusal(status: StatusCode) -> bool {
    [
        StatusCode::BadCertificateUntrusted,
        StatusCode::BadSecurityChecksFailed,
        StatusCode::BadCertificateInvalid,
        StatusCode::BadCertificateUriInvalid,
        StatusCode::BadCertificateUseNotAllowed,
        StatusCode::BadCertificateTimeInvalid,
        StatusCode::BadCertificateRevoked,
        StatusCode::BadCertificateIssuerRevocationUnknown,
        StatusCode::BadCertificateRevocationUnknown,
    ]
    .contains(&status)
}

pub fn ua_policy(p: SecurityPolicy) -> UaPolicy {
    match p {
        SecurityPolicy::None => UaPolicy::None,
        SecurityPolicy::Basic256Sha256 => UaPolicy::Basic256Sha256,
        SecurityPolicy::Aes128Sha256RsaOaep => UaPolicy::Aes128Sha256RsaOaep,
        SecurityPolicy::Aes256Sha256RsaPss => UaPolicy::Aes256Sha256RsaPss,
    }
}

pub fn ua_mode(m: SecurityMode) -> MessageSecurityMode {
    match m {
        SecurityMode::None => MessageSecurityMode::None,
        SecurityMode::Sign => MessageSecurityMode::Sign,
        SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_from_files_lose_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read_secret(&SecretSource::File(path)).unwrap(), "s3cret");
        let missing = read_secret(&SecretSource::Env("TAGBRIDGE_TEST_SURELY_UNSET".into()));
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("TAGBRIDGE_TEST_SURELY_UNSET"));
    }
}
