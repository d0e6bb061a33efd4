//! A minimal Event Hubs sender on fe2o3, for the emulator's own tests and its throughput
//! example: TCP with TCP_NODELAY, TLS trusting one CA file (or plain), SASL ANONYMOUS, a token
//! on `$cbs`, one sender link. It is deliberately not the gateway's sink (which adds retries,
//! ordering and acks): this one only proves the wire protocol and measures the emulator.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Data, Message, MessageAnnotations, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, Symbol};
use fe2o3_amqp::{Connection, Sendable, Sender, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use tokio::net::TcpStream;

use super::amqp::BATCH_MESSAGE_FORMAT;

/// Why the test client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("the hub refused the token: {0}")]
    Token(String),
    #[error("attach: {0}")]
    Attach(String),
    #[error("send: {0}")]
    Send(String),
}

/// One event to send.
#[derive(Debug, Clone, Default)]
pub struct OutEvent {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub partition_key: Option<String>,
    pub properties: BTreeMap<String, String>,
    pub content_type: Option<String>,
}

impl OutEvent {
    pub fn text(body: &str) -> Self {
        OutEvent {
            body: body.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn message(&self) -> Message<Data> {
        let mut builder = Message::builder();
        if let Some(key) = &self.partition_key {
            builder = builder.message_annotations(
                MessageAnnotations::builder()
                    .insert(Symbol::from("x-opt-partition-key"), key.clone())
                    .build(),
            );
        }
        let properties = Properties {
            message_id: self.message_id.clone().map(Into::into),
            content_type: self.content_type.clone().map(Symbol::from),
            ..Default::default()
        };
        let mut app = ApplicationProperties::builder();
        for (k, v) in &self.properties {
            app = app.insert(k.clone(), v.clone());
        }
        builder
            .properties(properties)
            .application_properties(app.build())
            .data(Binary::from(self.body.clone()))
            .build()
    }
}

/// A connected, authorised sender.
pub struct TestClient {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    cbs: CbsClient,
    sender: Sender,
}

/// A token to put on `$cbs`: (type, value).
pub struct TokenSpec<'a> {
    pub kind: &'a str,
    pub value: &'a str,
    /// The audience named in the put-token request.
    pub audience: &'a str,
}

impl TestClient {
    /// Connects to `addr` (TLS trusting `ca` when given, with server name `localhost`), puts
    /// `token` and attaches a sender to `entity` (`HUB` or `HUB/Partitions/N`).
    pub async fn connect(
        addr: SocketAddr,
        ca: Option<&Path>,
        token: TokenSpec<'_>,
        entity: &str,
    ) -> Result<TestClient, ClientError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let builder = Connection::builder()
            .container_id(format!("hub-test-{:08x}", rand::random::<u32>()))
            .hostname("localhost")
            .sasl_profile(SaslProfile::Anonymous);
        let mut connection = match ca {
            Some(ca) => {
                let config = crate::sink::eventhub::tls::client_config(Some(ca))
                    .map_err(|e| ClientError::Connect(e.to_string()))?;
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(|e| ClientError::Connect(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ClientError::Connect(e.to_string()))?;
                builder.open_with_stream(tls).await
            }
            None => builder.open_with_stream(tcp).await,
        }
        .map_err(|e| ClientError::Connect(e.to_string()))?;
        let mut session = Session::begin(&mut connection)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let mut cbs = CbsClient::attach(&mut session)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        cbs.put_token(token.audience, CbsToken::new(token.value, token.kind, None))
            .await
            .map_err(|e| ClientError::Token(format!("{e:?}")))?;
        let sender = Sender::attach(&mut session, "hub-test-sender", entity)
            .await
            .map_err(|e| ClientError::Attach(e.to_string()))?;
        Ok(TestClient {
            connection,
            session,
            cbs,
            sender,
        })
    }

    /// The link's max message size as the hub advertised it.
    pub fn max_message_size(&self) -> Option<u64> {
        self.sender.max_message_size()
    }

    /// Puts another token on the open `$cbs` link (a renewal).
    pub async fn renew(&mut self, token: TokenSpec<'_>) -> Result<(), ClientError> {
        self.cbs
            .put_token(token.audience, CbsToken::new(token.value, token.kind, None))
            .await
            .map_err(|e| ClientError::Token(format!("{e:?}")))
    }

    /// Sends one event and waits for the hub's outcome.
    pub async fn send(&mut self, event: &OutEvent) -> Result<Outcome, ClientError> {
        self.sender
            .send(event.message())
            .await
            .map_err(|e| ClientError::Send(e.to_string()))
    }

    /// Starts sending one event as a plain message; the future resolves with the outcome.
    pub async fn start_send(
        &mut self,
        event: &OutEvent,
    ) -> Result<DeliveryFut<Result<Outcome, SendError>>, ClientError> {
        self.sender
            .send_batchable(event.message())
            .await
            .map_err(|e| ClientError::Send(e.to_string()))
    }

    /// Starts sending a batch message (format 0x80013700); the future resolves with the outcome.
    pub async fn send_batch(
        &mut self,
        events: &[OutEvent],
    ) -> Result<DeliveryFut<Result<Outcome, SendError>>, ClientError> {
        let mut sections = Vec::with_capacity(events.len());
        for e in events {
            let bytes = serde_amqp::to_vec(&Serializable(e.message()))
                .map_err(|e| ClientError::Send(e.to_string()))?;
            sections.push(Data(Binary::from(bytes)));
        }
        let mut outer = Message::builder();
        if let Some(key) = events.first().and_then(|e| e.partition_key.clone()) {
            outer = outer.message_annotations(
                MessageAnnotations::builder()
                    .insert(Symbol::from("x-opt-partition-key"), key)
                    .build(),
            );
        }
        let sendable = Sendable::builder()
            .message(outer.data_batch(sections).build())
            .message_format(BATCH_MESSAGE_FORMAT)
            .build();
        self.sender
            .send_batchable(sendable)
            .await
            .map_err(|e| ClientError::Send(e.to_string()))
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.sender.close().await;
        let _ = self.cbs.close().await;
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}
