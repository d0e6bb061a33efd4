//! One connection to an event hub, whatever carries it: AMQP over TCP/TLS, AMQP over
//! WebSockets (443), or HTTPS REST. The sink task sees only this type.
//!
//! Every transport hands back a [`Delivery`]: a future that resolves once the hub settled the
//! batch. Several may be outstanding; the sink awaits them oldest first, so acknowledgements stay
//! in order whatever the transport.

use crate::config::gateway::Transport;

use super::amqp::HubLink;
use super::auth::Credential;
use super::event::{encode_event, encode_rest_event, Batch};
use super::rest::RestLink;
pub use super::transport::{Delivery, LinkError, Settled, Target};

/// A connected, authorised link.
pub enum Link {
    // Boxed: fe2o3's handles make an AMQP link ~2 KB, the REST one is small.
    Amqp(Box<HubLink>),
    Rest(RestLink),
}

impl Link {
    pub async fn open(
        target: &Target,
        credential: &Credential,
        now: i64,
    ) -> Result<Link, LinkError> {
        match target.transport {
            Transport::Https => Ok(Link::Rest(RestLink::open(target, credential, now).await?)),
            Transport::Amqp | Transport::AmqpWs => Ok(Link::Amqp(Box::new(
                HubLink::open(target, credential, now).await?,
            ))),
        }
    }

    /// The largest batch the link takes, in encoded bytes.
    pub fn max_message_size(&self) -> usize {
        match self {
            Link::Amqp(l) => l.max_message_size,
            Link::Rest(l) => l.max_message_size,
        }
    }

    /// The hub refused a batch as too large: take at most `max` from now on.
    pub fn limit_message_size(&mut self, max: usize) {
        match self {
            Link::Amqp(l) => l.max_message_size = l.max_message_size.min(max),
            Link::Rest(l) => l.max_message_size = l.max_message_size.min(max),
        }
    }

    /// Whether opening the link already proved the credential (AMQP: the token was put on
    /// `$cbs`); an HTTPS link learns it only from its first request.
    pub fn verified(&self) -> bool {
        matches!(self, Link::Amqp(_))
    }

    /// When the current token expires (Unix seconds).
    pub fn token_expires_at(&self) -> i64 {
        match self {
            Link::Amqp(l) => l.token_expires_at,
            Link::Rest(l) => l.token_expires_at,
        }
    }

    pub async fn renew(
        &mut self,
        target: &Target,
        credential: &Credential,
        now: i64,
    ) -> Result<(), LinkError> {
        match self {
            Link::Amqp(l) => l.renew(target, credential, now).await,
            Link::Rest(l) => l.renew(target, credential, now).await,
        }
    }

    pub async fn send(&mut self, batch: Batch) -> Result<Delivery, LinkError> {
        match self {
            Link::Amqp(l) => l.send(batch).await,
            Link::Rest(l) => Ok(l.send(batch)),
        }
    }

    pub async fn close(self) {
        match self {
            Link::Amqp(l) => l.close().await,
            Link::Rest(_) => {}
        }
    }
}

/// How events are encoded for a transport: AMQP messages, or REST JSON entries.
pub fn encoder(transport: Transport) -> fn(&mut Vec<u8>, &str, Option<&str>, &[u8]) {
    match transport {
        Transport::Https => encode_rest_event,
        Transport::Amqp | Transport::AmqpWs => encode_event,
    }
}
