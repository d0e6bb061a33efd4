//! AMQP over WebSockets, as Event Hubs serves it on 443: TLS, then an HTTP upgrade on
//! `/$servicebus/websocket` with subprotocol `AMQPWSB10`, then the same AMQP byte stream carried
//! in binary WebSocket messages (AMQP WebSocket Binding 1.0).
//!
//! [`WsBytes`] (shared with the sink) turns the message stream back into a byte stream so the
//! same acceptor serves it; message boundaries carry no meaning in the binding.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use super::amqp;
use super::io::HubStream;
use super::Shared;
use crate::sink::eventhub::websocket::WsBytes;

/// The path and subprotocol are the ones the sink uses (one definition of the binding).
pub use crate::sink::eventhub::websocket::{PATH as WS_PATH, SUBPROTOCOL as WS_SUBPROTOCOL};
/// Time allowed for TLS and the upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts WebSocket connections until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    amqp::accept_connections(listener, shared, "WebSocket", move |tcp, peer, ctx| {
        let tls = tls.clone();
        async move {
            let upgraded = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let stream = tls.accept(tcp).await.map_err(|e| e.to_string())?;
                tokio_tungstenite::accept_hdr_async(stream, check_upgrade)
                    .await
                    .map_err(|e| e.to_string())
            });
            let upgraded = tokio::select! {
                u = upgraded => u,
                // Cut (shutdown, faults) during the handshake.
                _ = ctx.cut.cancelled() => Ok(Err("cut".to_string())),
            };
            match upgraded {
                Ok(Ok(ws)) => {
                    let stream = HubStream::new(WsBytes::new(ws), ctx.cut.clone());
                    amqp::serve_connection(stream, &ctx).await;
                }
                Ok(Err(error)) => {
                    tracing::debug!(message = "WebSocket upgrade failed.", peer = %peer, %error)
                }
                Err(_) => tracing::debug!(message = "WebSocket upgrade timed out.", peer = %peer),
            }
        }
    })
    .await
}

/// Accepts the upgrade only on [`WS_PATH`] with the AMQP subprotocol, and names it in the reply.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn check_upgrade(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: &str| {
        let mut r = ErrorResponse::new(Some(why.to_string()));
        *r.status_mut() = status;
        r
    };
    if request.uri().path() != WS_PATH {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "AMQP over WebSockets is served on /$servicebus/websocket",
        ));
    }
    let offers_amqp = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(WS_SUBPROTOCOL));
    if !offers_amqp {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the subprotocol AMQPWSB10 is required",
        ));
    }
    response.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(WS_SUBPROTOCOL),
    );
    Ok(response)
}
