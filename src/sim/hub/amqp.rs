//! The AMQP 1.0 side of the emulator: fe2o3's acceptor over TLS (direct, as Event Hubs does on
//! 5671) or plain TCP, SASL, the `$cbs` and `$management` nodes, and sender links to the hub.
//!
//! One task per connection (accepting sessions), one per session (accepting links), one per
//! link; all tracked and all ended by the connection's cut token or by the peer.
//!
//! Invariants:
//! - A link to `HUB` or `HUB/Partitions/N` only receives while a token put on this
//!   connection's `$cbs` covers it; without one it is closed with `amqp:unauthorized-access`,
//!   and when the token expires (and was not renewed) the open link is closed the same way.
//! - A transfer is accepted only after its events are recorded (see `store`); throttled
//!   transfers are rejected with `com.microsoft:server-busy` and record nothing.
//! - Transfers larger than the link's max-message-size end the link with
//!   `amqp:link:message-size-exceeded` (fe2o3 enforces the size it advertised at attach).
//! - `$cbs` and `$management` answer on the sender link the client attached with the node as
//!   source, matched by `correlation-id` = the request's `message-id`. Requests that arrive
//!   before that link is attached wait in a bounded queue.
//!
//! What Microsoft's Python SDK (azure-eventhub 5.15, its own `pyamqp`) needs beyond the spec,
//! found the hard way:
//! - it indexes every field of Open, Begin, Attach and Transfer, while fe2o3 leaves trailing
//!   default fields out: Open/Begin/Attach carry properties (the last field), Begin carries a
//!   handle-max other than fe2o3's default, and management replies are sent batchable;
//! - its sender ignores dispositions that are not settled, so links settle in mode first even
//!   when the client asks for second (as the service does);
//! - over TLS, frames must be flushed as they are written (see `io`);
//! - with `logging_enable=True` it formats every frame and fails on fe2o3's short Disposition;
//!   that only affects its debug tracing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fe2o3_amqp::acceptor::sasl_acceptor::{SaslAcceptor, SaslServerFrame};
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SessionAcceptor,
    SupportedReceiverSettleModes,
};
use fe2o3_amqp::link::RecvError;
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, ReceiverSettleMode, Role};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::message::__private::Deserializable;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageAnnotations, MessageId, Properties,
    Target,
};
use fe2o3_amqp::types::primitives::{Array, OrderedMap, Symbol, Timestamp, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use fe2o3_amqp::{Receiver, Sendable, Sender};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::auth::{self, ConnAuth};
use super::io::HubStream;
use super::store::{lock, Counters, ReceivedEvent};
use super::Shared;

/// Event Hubs' batch message format (the SDKs' `0x80013700`).
pub const BATCH_MESSAGE_FORMAT: u32 = 0x8001_3700;
/// The annotation carrying the partition key.
const PARTITION_KEY: &str = "x-opt-partition-key";
/// Event Hubs' throttling condition.
pub const SERVER_BUSY: &str = "com.microsoft:server-busy";
/// How often an open link re-checks that its token is still valid.
const TOKEN_CHECK: Duration = Duration::from_millis(200);
/// Time allowed for TLS and the AMQP/SASL handshakes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for polite closes (detach, end, close) before giving up.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Links per session (Begin's handle-max).
const SESSION_HANDLE_MAX: u32 = 65_535;
/// Management responses queued per node before the request link waits.
const REPLY_QUEUE: usize = 64;

/// Accepts connections until shutdown; `tls` = None serves plain AMQP.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    accept_connections(listener, shared, "AMQP", move |tcp, peer, ctx| {
        let tls = tls.clone();
        async move {
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(HubStream::new(stream, ctx.cut.clone()), &ctx).await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(message = "TLS handshake failed.", peer = %peer, %error)
                        }
                        Err(_) => {
                            tracing::debug!(message = "TLS handshake timed out.", peer = %peer)
                        }
                    }
                }
                None => serve_connection(HubStream::new(tcp, ctx.cut.clone()), &ctx).await,
            }
        }
    })
    .await
}

/// The accept loop every listener of the emulator shares: until shutdown, refuse everything
/// while the hub is down, register each connection (so faults can cut it), run `serve` for it
/// as a tracked task, and unregister it when `serve` returns.
pub(crate) async fn accept_connections<F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    what: &'static str,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr, Arc<ConnCtx>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(message = "Hub emulator accept failed.", listener = what, %error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Shutdown: stop accepting.
            _ = shared.root.cancelled() => return,
        };
        if shared.faults.is_down() {
            // Down: close at once, as an unreachable hub would.
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let (id, ctx) = shared.open_connection(peer.to_string());
        let served = serve(tcp, peer, ctx);
        let shared2 = shared.clone();
        shared.tracker.spawn(async move {
            served.await;
            shared2.close_connection(id);
        });
    }
}

/// What every task of one connection shares.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    /// Cancelled to cut the connection (faults, shutdown).
    pub cut: CancellationToken,
    pub auth: Arc<ConnAuth>,
    pub peer: String,
    replies: Replies,
}

impl ConnCtx {
    pub(crate) fn new(
        shared: Arc<Shared>,
        cut: CancellationToken,
        auth: Arc<ConnAuth>,
        peer: String,
    ) -> Arc<ConnCtx> {
        Arc::new(ConnCtx {
            shared,
            cut,
            auth,
            peer,
            replies: Replies::default(),
        })
    }
}

/// SASL as Event Hubs offers it: MSSBCBS (what .NET and uAMQP send) and ANONYMOUS (what the
/// Python SDK and fe2o3 send); either way authorisation happens later, on `$cbs`.
#[derive(Debug, Clone)]
struct HubSasl;

const MSSBCBS: &str = "MSSBCBS";
const ANONYMOUS: &str = "ANONYMOUS";

impl SaslAcceptor for HubSasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![Symbol::from(MSSBCBS), Symbol::from(ANONYMOUS)])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let code = match init.mechanism.as_str() {
            MSSBCBS | ANONYMOUS => SaslCode::Ok,
            _ => SaslCode::Auth,
        };
        SaslServerFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        })
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // Neither mechanism has a challenge, so a response is a protocol error.
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Sys,
            additional_data: None,
        })
    }
}

/// Properties sent in Open, Begin and Attach. Microsoft's Python SDK indexes every field of
/// those performatives, so the last field (properties) must be present for fe2o3 to encode
/// the list in full.
fn peer_properties() -> definitions::Fields {
    let mut fields = definitions::Fields::new();
    fields.insert(
        Symbol::from("product"),
        Value::String("tagbridge hub emulator".into()),
    );
    fields
}

pub(crate) async fn serve_connection<Io>(io: Io, ctx: &Arc<ConnCtx>)
where
    Io: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let acceptor = ConnectionAcceptor::builder()
        .container_id("tagbridge-hub-emulator")
        .properties(peer_properties())
        .sasl_acceptor(HubSasl)
        .build();
    // Frame headers are checked before fe2o3's decoder sees them (a size of 4 made it panic).
    let io = crate::sink::eventhub::frame_guard::FrameGuard::new(io);
    let mut connection = tokio::select! {
        opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)) => match opened {
            Ok(Ok(c)) => c,
            Ok(Err(error)) => {
                tracing::debug!(message = "AMQP open failed.", peer = %ctx.peer, %error);
                return;
            }
            Err(_) => return,
        },
        // Cut during the handshake.
        _ = ctx.cut.cancelled() => return,
    };
    let counters = &ctx.shared.counters;
    Counters::inc(&counters.connections);
    Counters::inc(&counters.connections_total);
    loop {
        let incoming = tokio::select! {
            s = connection.next_incoming_session() => match s {
                Some(s) => s,
                // The peer closed the connection.
                None => break,
            },
            // Cut by a fault or shutdown.
            _ = ctx.cut.cancelled() => break,
        };
        match SessionAcceptor::builder()
            .properties(peer_properties())
            // Not fe2o3's default (u32::MAX), which it leaves out of Begin; the Python SDK
            // then reads None and fails comparing handle counts against it.
            .handle_max(SESSION_HANDLE_MAX)
            .build()
            .accept_incoming_session(incoming, &mut connection)
            .await
        {
            Ok(session) => {
                let ctx2 = ctx.clone();
                ctx.shared
                    .tracker
                    .spawn(async move { serve_session(session, ctx2).await });
            }
            Err(error) => {
                tracing::debug!(message = "Session refused.", peer = %ctx.peer, %error);
                break;
            }
        }
    }
    Counters::dec(&counters.connections);
    if !ctx.cut.is_cancelled() {
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
        tracing::debug!(message = "Connection ended.", peer = %ctx.peer, close = ?closed);
    }
}

async fn serve_session(mut session: ListenerSessionHandle, ctx: Arc<ConnCtx>) {
    loop {
        let attach = tokio::select! {
            a = session.next_incoming_attach() => match a {
                Some(a) => a,
                // The session ended.
                None => break,
            },
            // Cut by a fault or shutdown.
            _ = ctx.cut.cancelled() => return,
        };
        let name = attach.name.clone();
        let address = match attach.role {
            Role::Sender => attach
                .target
                .as_ref()
                .and_then(|t| Target::try_from((**t).clone()).ok())
                .and_then(|t| t.address)
                .unwrap_or_default(),
            Role::Receiver => attach
                .source
                .as_ref()
                .and_then(|s| s.address.clone())
                .unwrap_or_default(),
        };
        let node = classify(&address, &ctx.shared);
        let acceptor = match node {
            Node::Hub { .. } => LinkAcceptor::builder()
                .max_message_size(ctx.shared.max_message_size as u64)
                .properties(peer_properties())
                // Event Hubs settles at once (mode first) even when the client asks for mode
                // second, as Microsoft's Python SDK does; that SDK ignores unsettled
                // dispositions and would wait for ever.
                .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
                .fallback_receiver_settle_mode(ReceiverSettleMode::First)
                .build(),
            _ => LinkAcceptor::builder()
                .properties(peer_properties())
                .build(),
        };
        let link = match acceptor.accept_incoming_attach(attach, &mut session).await {
            Ok(link) => link,
            Err(error) => {
                tracing::debug!(message = "Link attach failed.", link = %name, %error);
                continue;
            }
        };
        let ctx2 = ctx.clone();
        let tracker = &ctx.shared.tracker;
        match (link, node) {
            (LinkEndpoint::Receiver(r), Node::Cbs) => {
                tracker.spawn(requests(r, ctx2, Node::Cbs));
            }
            (LinkEndpoint::Receiver(r), Node::Management) => {
                tracker.spawn(requests(r, ctx2, Node::Management));
            }
            (LinkEndpoint::Sender(s), Node::Cbs) => {
                let rx = ctx.replies.take_receiver(CBS_NODE);
                tracker.spawn(replies(s, rx, ctx2));
            }
            (LinkEndpoint::Sender(s), Node::Management) => {
                let rx = ctx.replies.take_receiver(MANAGEMENT_NODE);
                tracker.spawn(replies(s, rx, ctx2));
            }
            (LinkEndpoint::Receiver(r), Node::Hub { path, partition }) => {
                if ctx.auth.covers(&path, Utc::now().timestamp_millis()) {
                    tracker.spawn(events(r, ctx2, path, partition));
                } else {
                    Counters::inc(&ctx.shared.counters.auth_failures);
                    let error =
                        unauthorized(&ctx.shared, &path, "no valid token was put on $cbs for it");
                    tracker.spawn(close_receiver(r, error));
                }
            }
            (LinkEndpoint::Sender(s), Node::Hub { .. }) => {
                let error = definitions::Error::new(
                    AmqpError::NotImplemented,
                    "The emulator accepts events; it does not serve consumers.".to_string(),
                    None,
                );
                tracker.spawn(async move {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, s.close_with_error(error)).await;
                });
            }
            (link, Node::Unknown) => {
                let error = definitions::Error::new(
                    AmqpError::NotFound,
                    format!(
                        "The messaging entity '{address}' could not be found. This hub is '{}'.",
                        ctx.shared.hub
                    ),
                    None,
                );
                tracker.spawn(async move {
                    let _ = match link {
                        LinkEndpoint::Receiver(r) => {
                            tokio::time::timeout(CLOSE_TIMEOUT, r.close_with_error(error))
                                .await
                                .ok()
                                .map(|r| r.is_ok())
                        }
                        LinkEndpoint::Sender(s) => {
                            tokio::time::timeout(CLOSE_TIMEOUT, s.close_with_error(error))
                                .await
                                .ok()
                                .map(|r| r.is_ok())
                        }
                    };
                });
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.end()).await;
}

const CBS_NODE: &str = "$cbs";
const MANAGEMENT_NODE: &str = "$management";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Cbs,
    Management,
    Hub {
        /// Lower-case entity path, e.g. `telemetry/partitions/1`.
        path: String,
        partition: Option<u32>,
    },
    Unknown,
}

fn classify(address: &str, shared: &Shared) -> Node {
    let path = auth::entity_path(address);
    match path.as_str() {
        "$cbs" => return Node::Cbs,
        "$management" => return Node::Management,
        _ => {}
    }
    let hub = shared.hub.to_ascii_lowercase();
    let mut parts = path.split('/');
    if parts.next() != Some(hub.as_str()) {
        return Node::Unknown;
    }
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => Node::Hub {
            path,
            partition: None,
        },
        (Some("partitions"), Some(n), None) => match n.parse::<u32>() {
            Ok(n) if n < shared.partitions => Node::Hub {
                path,
                partition: Some(n),
            },
            _ => Node::Unknown,
        },
        _ => Node::Unknown,
    }
}

fn unauthorized(shared: &Shared, path: &str, why: &str) -> definitions::Error {
    definitions::Error::new(
        AmqpError::UnauthorizedAccess,
        format!(
            "Unauthorized access. 'Send' claim(s) are required to perform this operation. Resource: 'sb://localhost/{path}' on hub '{}': {why}.",
            shared.hub
        ),
        None,
    )
}

async fn close_receiver(receiver: Receiver, error: definitions::Error) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, receiver.close_with_error(error)).await;
}

/// Receives events on one link until the peer detaches, the token lapses or the connection is
/// cut.
async fn events(mut receiver: Receiver, ctx: Arc<ConnCtx>, path: String, partition: Option<u32>) {
    let shared = &ctx.shared;
    Counters::inc(&shared.counters.senders);
    let mut check = tokio::time::interval(TOKEN_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut close_with = None;
    loop {
        tokio::select! {
            // Cut by a fault or shutdown: no polite close.
            _ = ctx.cut.cancelled() => break,
            // The token may have expired.
            _ = check.tick() => {
                if !ctx.auth.covers(&path, Utc::now().timestamp_millis()) {
                    Counters::inc(&shared.counters.auth_failures);
                    close_with = Some(unauthorized(shared, &path, "ExpiredToken: the token expired and was not renewed"));
                    break;
                }
            }
            delivery = receiver.recv::<Body<Value>>() => match delivery {
                Ok(delivery) => on_delivery(&receiver, delivery, &ctx, partition).await,
                Err(RecvError::MessageSizeExceeded(e)) => {
                    // fe2o3 has detached the link with amqp:link:message-size-exceeded.
                    Counters::inc(&shared.counters.oversize);
                    tracing::info!(message = "Transfer over the max message size refused.", size = e.size, max = e.max_size);
                    break;
                }
                Err(error) => {
                    tracing::debug!(message = "Event link ended.", peer = %ctx.peer, %error);
                    break;
                }
            },
        }
    }
    Counters::dec(&shared.counters.senders);
    if let Some(error) = close_with {
        close_receiver(receiver, error).await;
    } else if !ctx.cut.is_cancelled() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, receiver.close()).await;
    }
}

async fn on_delivery(
    receiver: &Receiver,
    delivery: fe2o3_amqp::link::delivery::Delivery<Body<Value>>,
    ctx: &Arc<ConnCtx>,
    partition: Option<u32>,
) {
    let shared = &ctx.shared;
    let format = delivery.message_format().unwrap_or(0);
    let (info, message) = delivery.into_parts();
    let events = match decode_events(message, format, partition, shared) {
        Ok(events) => events,
        Err(why) => {
            let error = definitions::Error::new(AmqpError::DecodeError, why, None);
            let _ = receiver.reject(info, error).await;
            return;
        }
    };
    let bytes: usize = events.iter().map(|e| e.body.len()).sum();
    if !shared.faults.admit(events.len() as u64, bytes as u64) {
        Counters::inc(&shared.counters.throttled);
        let error = definitions::Error::new(
            ErrorCondition::Custom(Symbol::from(SERVER_BUSY)),
            "The request was terminated because the entity is being throttled by the emulator (throttle_above). Please wait and retry."
                .to_string(),
            None,
        );
        let _ = receiver.reject(info, error).await;
        return;
    }
    shared.accept_events(events).await;
    let (delay, released) = shared.faults.disposition_delay();
    if delay.is_zero() {
        let _ = receiver.accept(info).await;
    } else {
        let disposer = receiver.disposer();
        let cut = ctx.cut.clone();
        shared.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => { let _ = disposer.accept(info).await; }
                // The fault was cleared: settle now.
                _ = released.cancelled() => { let _ = disposer.accept(info).await; }
                // Cut meanwhile: the delivery stays unsettled, as with a real outage.
                _ = cut.cancelled() => {}
            }
        });
    }
}

/// One AMQP message (single or batch) as events.
pub(crate) fn decode_events(
    message: Message<Body<Value>>,
    format: u32,
    partition: Option<u32>,
    shared: &Shared,
) -> Result<Vec<ReceivedEvent>, String> {
    let outer_key = partition_key(&message.message_annotations);
    if format != BATCH_MESSAGE_FORMAT {
        return Ok(vec![to_event(message, None, partition, shared)]);
    }
    let Body::Data(sections) = message.body else {
        return Err("a batch message (format 0x80013700) must have data sections".into());
    };
    let mut events = Vec::with_capacity(sections.len());
    for (i, section) in sections.into_iter().enumerate() {
        let inner: Deserializable<Message<Body<Value>>> = serde_amqp::from_slice(&section.0)
            .map_err(|e| format!("data section {i} of the batch is not an AMQP message: {e}"))?;
        events.push(to_event(inner.0, outer_key.clone(), partition, shared));
    }
    Ok(events)
}

fn partition_key(annotations: &Option<MessageAnnotations>) -> Option<String> {
    annotations.as_ref().and_then(|a| {
        a.0.iter().find_map(|(k, v)| match k {
            OwnedKey::Symbol(s) if s.as_str() == PARTITION_KEY => Some(value_text(v)),
            _ => None,
        })
    })
}

fn to_event(
    message: Message<Body<Value>>,
    fallback_key: Option<String>,
    partition: Option<u32>,
    shared: &Shared,
) -> ReceivedEvent {
    let partition_key = partition_key(&message.message_annotations).or(fallback_key);
    let (message_id, content_type) = match &message.properties {
        Some(p) => (
            p.message_id.as_ref().map(message_id_text),
            p.content_type.as_ref().map(|c| c.as_str().to_string()),
        ),
        None => (None, None),
    };
    let properties: BTreeMap<String, serde_json::Value> = message
        .application_properties
        .map(|ap| {
            ap.0.into_iter()
                .map(|(k, v)| (k, value_json(&Value::from(v))))
                .collect()
        })
        .unwrap_or_default();
    let body = match message.body {
        Body::Data(sections) => sections.into_iter().flat_map(|d| d.0.into_vec()).collect(),
        Body::Value(AmqpValue(v)) => match v {
            Value::Binary(b) => b.into_vec(),
            other => value_text(&other).into_bytes(),
        },
        Body::Sequence(seq) => format!("{seq:?}").into_bytes(),
        Body::Empty => Vec::new(),
    };
    let partition =
        partition.unwrap_or_else(|| shared.store.assign_partition(partition_key.as_deref()));
    ReceivedEvent {
        body,
        partition_key,
        message_id,
        properties,
        content_type,
        partition,
        arrived: Utc::now(),
    }
}

fn message_id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid_text(u.as_inner()),
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

fn uuid_text(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A property or annotation value as text: strings as they are, numbers in decimal,
/// timestamps in milliseconds, anything else in its debug form.
/// An application property as JSON, keeping its AMQP type where JSON has one.
pub(crate) fn value_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Ubyte(n) => J::from(*n),
        Value::Ushort(n) => J::from(*n),
        Value::Uint(n) => J::from(*n),
        Value::Ulong(n) => J::from(*n),
        Value::Byte(n) => J::from(*n),
        Value::Short(n) => J::from(*n),
        Value::Int(n) => J::from(*n),
        Value::Long(n) => J::from(*n),
        Value::Float(f) => serde_json::Number::from_f64(f64::from(f.into_inner()))
            .map_or_else(|| J::String(value_text(v)), J::Number),
        Value::Double(f) => serde_json::Number::from_f64(f.into_inner())
            .map_or_else(|| J::String(value_text(v)), J::Number),
        Value::Timestamp(t) => chrono::DateTime::from_timestamp_millis(t.milliseconds())
            .map_or_else(
                || J::String(value_text(v)),
                |at| J::String(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            ),
        other => J::String(value_text(other)),
    }
}

pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Symbol(s) => s.as_str().to_string(),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Ubyte(n) => n.to_string(),
        Value::Ushort(n) => n.to_string(),
        Value::Uint(n) => n.to_string(),
        Value::Ulong(n) => n.to_string(),
        Value::Byte(n) => n.to_string(),
        Value::Short(n) => n.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Long(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Double(f) => f.to_string(),
        Value::Char(c) => c.to_string(),
        Value::Timestamp(t) => t.milliseconds().to_string(),
        Value::Uuid(u) => uuid_text(u.as_inner()),
        Value::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

/// Per-connection queues of management responses, by node.
#[derive(Default)]
struct Replies {
    queues: std::sync::Mutex<HashMap<&'static str, ReplyQueue>>,
}

struct ReplyQueue {
    tx: mpsc::Sender<Message<AmqpValue<Value>>>,
    /// Taken by the reply link when it attaches.
    rx: Option<mpsc::Receiver<Message<AmqpValue<Value>>>>,
}

impl Replies {
    fn sender(&self, node: &'static str) -> mpsc::Sender<Message<AmqpValue<Value>>> {
        let mut queues = lock(&self.queues);
        queues
            .entry(node)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(REPLY_QUEUE);
                ReplyQueue { tx, rx: Some(rx) }
            })
            .tx
            .clone()
    }

    fn take_receiver(&self, node: &'static str) -> mpsc::Receiver<Message<AmqpValue<Value>>> {
        let mut queues = lock(&self.queues);
        if let Some(q) = queues.get_mut(node) {
            if let Some(rx) = q.rx.take() {
                return rx;
            }
        }
        // A second reply link for the node (the first was detached): start a new queue.
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        queues.insert(node, ReplyQueue { tx, rx: None });
        rx
    }
}

/// Sends queued responses on a reply link, pre-settled (clients do not settle responses).
async fn replies(
    mut sender: Sender,
    mut rx: mpsc::Receiver<Message<AmqpValue<Value>>>,
    ctx: Arc<ConnCtx>,
) {
    loop {
        let message = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                // Replaced by a newer reply link.
                None => break,
            },
            // Cut by a fault or shutdown.
            _ = ctx.cut.cancelled() => return,
        };
        let sendable = Sendable::builder().message(message).settled(true).build();
        // Batchable, because Microsoft's Python SDK indexes all 11 fields of a transfer and
        // fe2o3 leaves out trailing fields at their defaults (batchable = false).
        match sender.send_batchable(sendable).await {
            // Pre-settled: the outcome resolves at once.
            Ok(outcome) => drop(outcome.await),
            Err(error) => {
                tracing::debug!(message = "Management reply not sent.", %error);
                break;
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sender.close()).await;
}

/// Serves requests to `$cbs` or `$management` arriving on one link.
async fn requests(mut receiver: Receiver, ctx: Arc<ConnCtx>, node: Node) {
    let node_name = if node == Node::Cbs {
        CBS_NODE
    } else {
        MANAGEMENT_NODE
    };
    let reply_tx = ctx.replies.sender(node_name);
    loop {
        let delivery = tokio::select! {
            d = receiver.recv::<Body<Value>>() => match d {
                Ok(d) => d,
                Err(_) => break,
            },
            // Cut by a fault or shutdown.
            _ = ctx.cut.cancelled() => return,
        };
        let (info, request) = delivery.into_parts();
        let _ = receiver.accept(info).await;
        let response = if node == Node::Cbs {
            put_token(&request, &ctx)
        } else {
            management(&request, &ctx)
        };
        let correlation = request
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        let to = request.properties.as_ref().and_then(|p| p.reply_to.clone());
        let (status, description, body) = response;
        let message = Message::builder()
            .properties(Properties {
                correlation_id: correlation,
                to,
                ..Default::default()
            })
            .application_properties(
                ApplicationProperties::builder()
                    .insert("status-code", status)
                    .insert("status-description", description)
                    .build(),
            )
            .value(body)
            .build();
        // Bounded: if the client never attaches its reply link, this request link waits.
        if reply_tx.send(message).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, receiver.close()).await;
}

fn app_property(message: &Message<Body<Value>>, name: &str) -> Option<String> {
    message
        .application_properties
        .as_ref()
        .and_then(|ap| ap.0.get(name))
        .map(|v| value_text(&Value::from(v.clone())))
}

fn body_text(message: &Message<Body<Value>>) -> Option<String> {
    match &message.body {
        Body::Value(AmqpValue(Value::String(s))) => Some(s.clone()),
        Body::Value(AmqpValue(Value::Binary(b))) => Some(String::from_utf8_lossy(b).into_owned()),
        Body::Data(sections) => Some(
            sections
                .iter()
                .map(|d| String::from_utf8_lossy(&d.0).into_owned())
                .collect(),
        ),
        _ => None,
    }
}

/// A `$cbs` put-token: (status, description, body).
fn put_token(request: &Message<Body<Value>>, ctx: &ConnCtx) -> (i32, String, Value) {
    let shared = &ctx.shared;
    let operation = app_property(request, "operation").unwrap_or_default();
    if operation != "put-token" {
        return (
            400,
            format!("Unsupported $cbs operation '{operation}'."),
            Value::Null,
        );
    }
    let kind = app_property(request, "type").unwrap_or_default();
    let name = app_property(request, "name").unwrap_or_default();
    let Some(token) = body_text(request) else {
        return (
            400,
            "The put-token request has no token.".into(),
            Value::Null,
        );
    };
    match shared.check_token(&kind, &token, &name) {
        Ok(grant) => {
            ctx.auth.grant(grant);
            (202, "Accepted".into(), Value::Null)
        }
        Err(error) => {
            Counters::inc(&shared.counters.auth_failures);
            tracing::info!(message = "Token refused.", peer = %ctx.peer, audience = %name, %error);
            (401, error.to_string(), Value::Null)
        }
    }
}

/// A `$management` READ of the event hub or one partition.
fn management(request: &Message<Body<Value>>, ctx: &ConnCtx) -> (i32, String, Value) {
    let shared = &ctx.shared;
    let operation = app_property(request, "operation").unwrap_or_default();
    let kind = app_property(request, "type").unwrap_or_default();
    let name = app_property(request, "name").unwrap_or_default();
    if operation != "READ" {
        return (
            400,
            format!("Unsupported management operation '{operation}'."),
            Value::Null,
        );
    }
    if !name.eq_ignore_ascii_case(&shared.hub) {
        return (
            404,
            format!("The messaging entity '{name}' could not be found."),
            Value::Null,
        );
    }
    // The SDKs send their token with each request; the service checks it.
    let token_ok = match app_property(request, "security_token") {
        Some(token) => {
            let kind = if token.starts_with("SharedAccessSignature") {
                auth::SAS_TOKEN_TYPE
            } else {
                auth::JWT_TOKEN_TYPE
            };
            shared.check_token(kind, &token, &shared.hub).is_ok()
        }
        None => ctx.auth.covers(
            &shared.hub.to_ascii_lowercase(),
            Utc::now().timestamp_millis(),
        ),
    };
    if !token_ok {
        Counters::inc(&shared.counters.auth_failures);
        return (
            401,
            "Unauthorized: a valid security_token is required.".into(),
            Value::Null,
        );
    }
    let text = |s: &str| Value::String(s.to_string());
    let created = Value::Timestamp(Timestamp::from_milliseconds(
        shared.created_at.timestamp_millis(),
    ));
    let mut map = OrderedMap::new();
    map.insert(text("name"), text(&shared.hub));
    match kind.as_str() {
        "com.microsoft:eventhub" => {
            map.insert(text("type"), text(&kind));
            map.insert(text("created_at"), created);
            map.insert(
                text("partition_count"),
                Value::Int(shared.partitions as i32),
            );
            let ids = (0..shared.partitions)
                .map(|p| text(&p.to_string()))
                .collect();
            map.insert(text("partition_ids"), Value::Array(Array(ids)));
        }
        "com.microsoft:partition" => {
            let partition = app_property(request, "partition").unwrap_or_default();
            if partition
                .parse::<u32>()
                .map_or(true, |p| p >= shared.partitions)
            {
                return (
                    404,
                    format!("Partition '{partition}' does not exist."),
                    Value::Null,
                );
            }
            map.insert(text("type"), text(&kind));
            map.insert(text("partition"), text(&partition));
            map.insert(text("begin_sequence_number"), Value::Long(0));
            map.insert(text("last_enqueued_sequence_number"), Value::Long(-1));
            map.insert(text("last_enqueued_offset"), text("-1"));
            map.insert(text("last_enqueued_time_utc"), created);
            map.insert(text("is_partition_empty"), Value::Bool(true));
        }
        other => {
            return (
                400,
                format!("Unsupported management type '{other}'."),
                Value::Null,
            )
        }
    }
    (200, "OK".into(), Value::Map(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_in_canonical_form() {
        let b = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
            0x77, 0x88,
        ];
        assert_eq!(uuid_text(&b), "12345678-9abc-def0-1122-334455667788");
    }

    #[test]
    fn sasl_accepts_what_event_hubs_accepts() {
        let outcome = |mechanism: &str| {
            let init = SaslInit {
                mechanism: Symbol::from(mechanism),
                initial_response: None,
                hostname: None,
            };
            match HubSasl.on_init(init) {
                SaslServerFrame::Outcome(o) => o.code,
                SaslServerFrame::Challenge(_) => panic!("no challenge expected"),
            }
        };
        assert!(matches!(outcome("MSSBCBS"), SaslCode::Ok));
        assert!(matches!(outcome("ANONYMOUS"), SaslCode::Ok));
        assert!(matches!(outcome("PLAIN"), SaslCode::Auth));
        let offered: Vec<String> = HubSasl
            .mechanisms()
            .0
            .into_iter()
            .map(|s| s.as_str().to_string())
            .collect();
        assert_eq!(offered, ["MSSBCBS", "ANONYMOUS"]);
    }

    #[test]
    fn values_as_text() {
        assert_eq!(value_text(&Value::String("a".into())), "a");
        assert_eq!(value_text(&Value::Long(-3)), "-3");
        assert_eq!(value_text(&Value::Bool(true)), "true");
        assert_eq!(
            value_text(&Value::Timestamp(Timestamp::from_milliseconds(5))),
            "5"
        );
    }
}
