//! One AMQP 1.0 connection to an event hub: TCP with TCP_NODELAY, TLS (or plain, for the
//! emulator's development mode), SASL ANONYMOUS, a `$cbs` token, and a sender link to the hub.
//!
//! TCP_NODELAY matters: with Nagle's algorithm a CBS round trip takes ~134 ms instead of ~4 ms
//! and pipelined sends stall (DEPENDENCIES.md). fe2o3 does not set it, so the stream is opened
//! here and handed to `open_with_stream`.

use std::fmt::Debug;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{Message, MessageAnnotations, Outcome};
use fe2o3_amqp::types::primitives::Timestamp;
use fe2o3_amqp::{Connection, Sendable, Sender, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::auth::{Credential, Token};
use super::event::{Batch, BATCH_MESSAGE_FORMAT, PARTITION_KEY_ANNOTATION};
use super::transport::{Delivery, Settled};
pub use super::transport::{LinkError, Target};
use crate::config::gateway::Transport;

/// Event Hubs' maximum message size when the link does not say (Standard tier: 1 MB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// A connected, authorised sender.
pub struct HubLink {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    cbs: CbsClient,
    sender: Sender,
    /// The largest transfer the link accepts.
    pub max_message_size: usize,
    /// When the current token expires (Unix seconds).
    pub token_expires_at: i64,
}

impl HubLink {
    /// Connects and authorises; `now` is the current Unix time.
    pub async fn open(
        target: &Target,
        credential: &Credential,
        now: i64,
    ) -> Result<HubLink, LinkError> {
        let addr = format!("{}:{}", target.host, target.port);
        let tcp = match &target.proxy {
            Some(proxy) if target.transport == Transport::AmqpWs => proxy
                .connect(&target.host, target.port)
                .await
                .map_err(|source| LinkError::Connect {
                    addr: format!("{addr} through proxy {}", proxy.addr),
                    source,
                })?,
            _ => TcpStream::connect(&addr)
                .await
                .map_err(|source| LinkError::Connect {
                    addr: addr.clone(),
                    source,
                })?,
        };
        // Nagle off: see the module doc.
        let _ = tcp.set_nodelay(true);
        match &target.tls {
            Some(config) => {
                let name = ServerName::try_from(target.host.clone()).map_err(|_| {
                    LinkError::ServerName {
                        host: target.host.clone(),
                    }
                })?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|source| LinkError::Tls {
                        host: target.host.clone(),
                        source,
                    })?;
                if target.transport == Transport::AmqpWs {
                    let ws = super::websocket::upgrade(tls, &target.host, target.port).await?;
                    return Self::open_over(ws, target, credential, now).await;
                }
                Self::open_over(tls, target, credential, now).await
            }
            None if target.transport == Transport::AmqpWs => {
                let ws = super::websocket::upgrade(tcp, &target.host, target.port).await?;
                Self::open_over(ws, target, credential, now).await
            }
            None => Self::open_over(tcp, target, credential, now).await,
        }
    }

    async fn open_over<Io>(
        io: Io,
        target: &Target,
        credential: &Credential,
        now: i64,
    ) -> Result<HubLink, LinkError>
    where
        Io: AsyncRead + AsyncWrite + Debug + Send + Unpin + 'static,
    {
        let container_id = format!("tagbridge-{:016x}", rand::random::<u64>());
        let mut connection = Connection::builder()
            .container_id(container_id)
            .hostname(target.host.as_str())
            .sasl_profile(SaslProfile::Anonymous)
            // Frame headers are checked before fe2o3's decoder sees them.
            .open_with_stream(super::frame_guard::FrameGuard::new(io))
            .await
            .map_err(|e| LinkError::Open {
                host: target.host.clone(),
                reason: e.to_string(),
            })?;
        let mut session = Session::begin(&mut connection)
            .await
            .map_err(|e| LinkError::Session(e.to_string()))?;
        let mut cbs = CbsClient::attach(&mut session)
            .await
            .map_err(|e| LinkError::Session(format!("$cbs: {e}")))?;
        let token = credential
            .token(&target.audience, now, target.token_lifetime)
            .await?;
        put_token(&mut cbs, target, credential, &token).await?;
        let sender = Sender::attach(
            &mut session,
            format!("tagbridge-{}", target.hub),
            target.hub.as_str(),
        )
        .await
        .map_err(|e| LinkError::Attach {
            hub: target.hub.clone(),
            reason: e.to_string(),
        })?;
        let max_message_size = sender
            .max_message_size()
            .filter(|m| *m > 0)
            .map_or(DEFAULT_MAX_MESSAGE_SIZE, |m| {
                m.min(usize::MAX as u64) as usize
            });
        Ok(HubLink {
            connection,
            session,
            cbs,
            sender,
            max_message_size,
            token_expires_at: token.expires_at,
        })
    }

    /// Puts a fresh token on the existing `$cbs` link.
    pub async fn renew(
        &mut self,
        target: &Target,
        credential: &Credential,
        now: i64,
    ) -> Result<(), LinkError> {
        let token = credential
            .token(&target.audience, now, target.token_lifetime)
            .await?;
        put_token(&mut self.cbs, target, credential, &token).await?;
        self.token_expires_at = token.expires_at;
        Ok(())
    }

    /// Starts sending a batch; the returned future resolves with the hub's outcome. Several
    /// may be in flight at once.
    pub async fn send(&mut self, batch: Batch) -> Result<Delivery, LinkError> {
        let (partition_key, events) = batch.into_message_parts();
        let mut message = Message::builder();
        if let Some(key) = partition_key {
            message = message.message_annotations(
                MessageAnnotations::builder()
                    .insert(
                        fe2o3_amqp::types::primitives::Symbol::from(PARTITION_KEY_ANNOTATION),
                        key,
                    )
                    .build(),
            );
        }
        // The batch's own sections: serialized from where the window keeps them, not copied.
        let message = message.body(events).build();
        let sendable = Sendable::builder()
            .message(message)
            .message_format(BATCH_MESSAGE_FORMAT)
            .build();
        let delivery = self
            .sender
            .send_batchable(sendable)
            .await
            .map_err(|e| LinkError::Send(e.to_string()))?;
        Ok(Box::pin(async move {
            match delivery.await {
                Ok(Outcome::Accepted(_)) => Settled::Accepted,
                Ok(Outcome::Rejected(r)) => {
                    let text = r
                        .error
                        .map(|e| {
                            format!("{:?}: {}", e.condition, e.description.unwrap_or_default())
                        })
                        .unwrap_or_default();
                    if text.contains("server-busy") {
                        Settled::Busy(text)
                    } else if text.contains("unauthorized") {
                        Settled::Unauthorized(text)
                    } else {
                        Settled::Failed(format!("rejected: {text}"))
                    }
                }
                Ok(other) => Settled::Failed(format!("not accepted: {other:?}")),
                Err(e) => Settled::Failed(e.to_string()),
            }
        }))
    }

    /// Closes the link, session and connection politely (best effort).
    pub async fn close(mut self) {
        let _ = self.sender.close().await;
        let _ = self.cbs.close().await;
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

async fn put_token(
    cbs: &mut CbsClient,
    target: &Target,
    credential: &Credential,
    token: &Token,
) -> Result<(), LinkError> {
    let expires = Timestamp::from_milliseconds(token.expires_at.saturating_mul(1000));
    let cbs_token = CbsToken::new(token.value.as_str(), token.kind, Some(expires));
    cbs.put_token(target.audience.as_str(), cbs_token)
        .await
        .map_err(|e| LinkError::Unauthorized {
            credential: credential.describe(),
            audience: target.audience.clone(),
            status: describe_mgmt_error(&e),
        })
}

fn describe_mgmt_error(e: &fe2o3_amqp_management::error::Error) -> String {
    match e {
        fe2o3_amqp_management::error::Error::Status(s) => {
            format!(
                "status {} {}",
                s.code.0,
                s.description.clone().unwrap_or_default()
            )
        }
        other => other.to_string(),
    }
}
