//! What every transport shares, below all of them: where to connect ([`Target`]), why a
//! connection could not be used ([`LinkError`]), and how the hub settled one batch
//! ([`Settled`], awaited through a [`Delivery`]). AMQP, WebSockets, the proxy and HTTPS REST
//! import these; nothing here imports a transport.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::auth::AuthError;
use crate::config::gateway::Transport;

/// Where to connect.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// `None` connects in plain AMQP (only the emulator's development mode).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub hub: String,
    /// The token audience, `sb://<host>/<hub>`.
    pub audience: String,
    /// AMQP over TCP, AMQP over WebSockets, or HTTPS.
    pub transport: Transport,
    /// How long the SAS tokens the gateway signs are valid (renewed at 80 %).
    pub token_lifetime: std::time::Duration,
    /// An HTTP CONNECT proxy for AMQP over WebSockets (from `HTTPS_PROXY`).
    pub proxy: Option<super::proxy::Proxy>,
}

impl Target {
    /// The target a connection string names, reached on `port` over `transport` (`tls` None:
    /// plain AMQP, the emulator's development mode). Tokens live
    /// [`SAS_TOKEN_LIFETIME`](super::auth::SAS_TOKEN_LIFETIME); no proxy.
    pub fn for_connection_string(
        cs: &super::ConnectionString,
        tls: Option<Arc<rustls::ClientConfig>>,
        port: u16,
        transport: Transport,
    ) -> Target {
        Target {
            audience: cs.audience(),
            host: cs.host.clone(),
            port,
            tls,
            hub: cs.hub.clone(),
            transport,
            token_lifetime: super::auth::SAS_TOKEN_LIFETIME,
            proxy: None,
        }
    }
}

/// Why a connection could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("`{host}` is not a valid TLS server name")]
    ServerName { host: String },
    #[error("AMQP connection to {host} refused: {reason}")]
    Open { host: String, reason: String },
    #[error("AMQP session failed: {0}")]
    Session(String),
    #[error("the hub refused {credential} for {audience}: {status}")]
    Unauthorized {
        credential: String,
        audience: String,
        status: String,
    },
    #[error("cannot attach to hub `{hub}`: {reason}")]
    Attach { hub: String, reason: String },
    #[error("send failed: {0}")]
    Send(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl LinkError {
    /// Credentials are wrong: retrying soon will not help, only a backoff and a clear message.
    pub fn is_auth(&self) -> bool {
        matches!(self, LinkError::Unauthorized { .. } | LinkError::Auth(_))
            || matches!(self, LinkError::Attach { reason, .. } if reason.contains("unauthorized"))
    }
}

/// How the hub settled one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Accepted,
    /// Throttled (`com.microsoft:server-busy`, HTTP 503/429): resend after a pause.
    Busy(String),
    /// The credentials were refused (HTTPS answers per request): back off as for auth failures.
    Unauthorized(String),
    /// Too large for the hub (HTTP 413): the batch is split and resent on the same link.
    TooLarge(String),
    /// Anything else: the link is treated as failed and the batch resent on a new one.
    Failed(String),
}

/// The hub's answer to one batch, once it comes.
pub type Delivery = Pin<Box<dyn Future<Output = Settled> + Send>>;
