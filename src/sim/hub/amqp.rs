//! The AMQP 1.0 side of the emulator, connections and sessions: fe2o3's acceptor over TLS
//! (direct, as Event Hubs does on 5671), plain TCP or WebSockets, SASL, sessions, and each
//! attached link handed to its node: the hub's event links ([`super::events`]) or `$cbs` and
//! `$management` ([`super::nodes`]).
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

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fe2o3_amqp::acceptor::sasl_acceptor::{SaslAcceptor, SaslServerFrame};
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SessionAcceptor,
    SupportedReceiverSettleModes,
};
use fe2o3_amqp::types::definitions::{self, AmqpError, ReceiverSettleMode, Role};
use fe2o3_amqp::types::messaging::Target;
use fe2o3_amqp::types::primitives::{Array, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use super::io::HubStream;
use super::store::Counters;
use super::Shared;

use super::context::{ConnCtx, CLOSE_TIMEOUT};
use super::events::{close_receiver, events, unauthorized};
use super::nodes::{classify, replies, requests, Node, CBS_NODE, MANAGEMENT_NODE};
use super::partitions::StartAt;
use super::receive;

pub use super::events::{BATCH_MESSAGE_FORMAT, SERVER_BUSY};

/// Time allowed for TLS and the AMQP/SASL handshakes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Links per session (Begin's handle-max).
const SESSION_HANDLE_MAX: u32 = 65_535;

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

/// Serves one AMQP session: attaches links to the hub, `$cbs` and `$management` as they come.
/// Long on purpose: one `select!` over the session's events, each arm a call into
/// `events.rs` or `nodes.rs`.
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
        // A consumer's start position, read before the attach is handed over.
        let start = matches!(node, Node::Consumer { .. }).then(|| receive::start_position(&attach));
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
                let why = "Consumers receive from HUB/ConsumerGroups/$Default/Partitions/N.";
                tracker.spawn(receive::refuse(s, AmqpError::NotFound, why.to_string()));
            }
            (LinkEndpoint::Sender(s), Node::Consumer { path, partition }) => {
                match (partition, start) {
                    (Err(why), _) => {
                        tracker.spawn(receive::refuse(s, AmqpError::NotFound, why));
                    }
                    (Ok(_), Some(Err(why))) => {
                        tracker.spawn(receive::refuse(s, AmqpError::InvalidField, why));
                    }
                    (Ok(partition), start) => {
                        if ctx.auth.covers(&path, Utc::now().timestamp_millis()) {
                            let start = start.and_then(Result::ok).unwrap_or(StartAt::Earliest);
                            tracker.spawn(receive::serve(s, ctx2, path, partition, start));
                        } else {
                            Counters::inc(&ctx.shared.counters.auth_failures);
                            let why = format!("Unauthorized access to '{path}': no valid token was put on $cbs for it.");
                            tracker.spawn(receive::refuse(s, AmqpError::UnauthorizedAccess, why));
                        }
                    }
                }
            }
            (LinkEndpoint::Receiver(r), Node::Consumer { path, .. }) => {
                let error = definitions::Error::new(
                    AmqpError::NotAllowed,
                    format!("'{path}' is a consumer group's partition: send to the hub or to HUB/Partitions/N."),
                    None,
                );
                tracker.spawn(close_receiver(r, error));
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

/// The emulator's opening of one connection over `io` (frame guard, SASL, AMQP open), given
/// `within`; for the fuzz targets of the emulator's listeners.
pub(crate) async fn open_for_fuzzing<Io>(io: Io, within: Duration)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug + 'static,
{
    let acceptor = ConnectionAcceptor::builder()
        .container_id("tagbridge-hub-fuzz")
        .sasl_acceptor(HubSasl)
        .build();
    let guarded = crate::sink::eventhub::frame_guard::FrameGuard::new(io);
    let _ = tokio::time::timeout(within, acceptor.accept(guarded)).await;
}

/// Fuzz target (`cargo run --example fuzz -- --target hub_amqp`): the emulator's opening of a
/// connection (frame guard, SASL, AMQP open) on an in-memory stream carrying a mutation of a
/// valid SASL opening (seeded by `data`'s first 8 bytes) followed by `data`. Panics only on a bug.
pub fn fuzz_opening(data: &[u8]) {
    use rand::SeedableRng;
    use tokio::io::AsyncWriteExt;
    let seed = data
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut opening = b"AMQP\x03\x01\x00\x00".to_vec();
    opening.extend_from_slice(&[
        0, 0, 0, 0x19, 2, 1, 0, 0, 0x00, 0x53, 0x41, 0xc0, 12, 1, 0xa3, 9,
    ]);
    opening.extend_from_slice(b"ANONYMOUS");
    let mut input = crate::sink::eventhub::frame_guard::mutate(&opening, &mut rng);
    input.extend_from_slice(data);
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&input).await;
            // Dropping the client ends the stream: the acceptor sees EOF, never waits.
        });
        let acceptor = ConnectionAcceptor::builder()
            .container_id("tagbridge-hub-fuzz")
            .sasl_acceptor(HubSasl)
            .build();
        let guarded = crate::sink::eventhub::frame_guard::FrameGuard::new(server);
        let _ = tokio::time::timeout(Duration::from_secs(2), acceptor.accept(guarded)).await;
        writer.abort();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_fuzz_target_survives_generated_openings() {
        for n in 0u64..200 {
            let mut data = n.to_le_bytes().to_vec();
            data.extend((0..(n % 17)).map(|i| (i * 31 + n) as u8));
            fuzz_opening(&data);
        }
    }
}
