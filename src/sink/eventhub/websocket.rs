//! AMQP over WebSockets, for plants whose firewall opens only 443: TLS to the namespace on
//! 443, an HTTP upgrade at `/$servicebus/websocket` with subprotocol `AMQPWSB10` (what
//! Microsoft's SDKs send), then AMQP as usual inside binary WebSocket messages (AMQP WebSocket
//! Binding 1.0).
//!
//! TLS is ours (same rustls configuration and TCP_NODELAY as plain AMQP); tokio-tungstenite does
//! the upgrade and the framing, and [`WsBytes`] turns the message stream back into the byte
//! stream fe2o3 reads and writes. The emulator's WebSocket listener uses the same adapter.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Sink, Stream};
use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::transport::LinkError;

/// The path Event Hubs serves AMQP WebSockets on.
pub const PATH: &str = "/$servicebus/websocket";
/// The WebSocket subprotocol of AMQP, as Event Hubs and Microsoft's SDKs name it.
pub const SUBPROTOCOL: &str = "AMQPWSB10";
/// Event Hubs' WebSocket port.
pub const PORT: u16 = 443;

/// Upgrades an established (TLS) stream to an AMQP WebSocket.
pub async fn upgrade<S>(stream: S, host: &str, port: u16) -> Result<WsBytes<S>, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let url = format!("wss://{host}:{port}{PATH}");
    let failed = |reason: String| LinkError::Open {
        host: host.to_string(),
        reason: format!("WebSocket upgrade at {url} failed: {reason}"),
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| failed(e.to_string()))?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let agreed = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok());
    if agreed != Some(SUBPROTOCOL) {
        return Err(failed(format!(
            "the server did not agree to subprotocol {SUBPROTOCOL} (answered {agreed:?})"
        )));
    }
    Ok(WsBytes::new(ws))
}

/// A WebSocket carrying a byte stream in binary messages.
pub struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last message read.
    pending: Bytes,
}

impl<S> WsBytes<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsBytes {
            ws,
            pending: Bytes::new(),
        }
    }
}

impl<S> std::fmt::Debug for WsBytes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsBytes")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

fn io_error(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(Message::Binary(b)))) => this.pending = b,
                Poll::Ready(Some(Ok(Message::Text(t)))) => {
                    this.pending = Bytes::copy_from_slice(t.as_bytes())
                }
                // Pings are answered by tungstenite; pongs and raw frames carry no data.
                Poll::Ready(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                // A close message or the end of the stream: end of file.
                Poll::Ready(Some(Ok(Message::Close(_)))) | Poll::Ready(None) => {
                    return Poll::Ready(Ok(()))
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io_error(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.ws).poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(io_error(e))),
            Poll::Pending => return Poll::Pending,
        }
        match Pin::new(&mut this.ws).start_send(Message::Binary(Bytes::copy_from_slice(buf))) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_close(cx)
            .map_err(io_error)
    }
}
