//! AMQP over WebSockets, for plants whose firewall opens only 443: TLS to the namespace on
//! 443, an HTTP upgrade at `/$servicebus/websocket/` with subprotocol `amqp` (the AMQP
//! WebSocket binding), then AMQP as usual inside the WebSocket's binary messages.
//!
//! TLS is ours (same rustls configuration and TCP_NODELAY as plain AMQP); `fe2o3-amqp-ws` does
//! only the upgrade and the framing.

use tokio::io::{AsyncRead, AsyncWrite};

use super::amqp::LinkError;

/// The path Event Hubs serves AMQP WebSockets on.
pub const PATH: &str = "/$servicebus/websocket/";
/// Event Hubs' WebSocket port.
pub const PORT: u16 = 443;

/// Upgrades an established (TLS) stream to an AMQP WebSocket.
pub async fn upgrade<S>(
    stream: S,
    host: &str,
    port: u16,
) -> Result<fe2o3_amqp_ws::WebSocketStream<fe2o3_amqp_ws::native::TokioWebSocketStream<S>>, LinkError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let url = format!("wss://{host}:{port}{PATH}");
    fe2o3_amqp_ws::WebSocketStream::connect_with_stream(&url, stream)
        .await
        .map_err(|e| LinkError::Open {
            host: host.to_string(),
            reason: format!("WebSocket upgrade at {url} failed: {e}"),
        })
}
