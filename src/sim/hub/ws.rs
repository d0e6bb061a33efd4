//! AMQP over WebSockets, as Event Hubs serves it on 443: TLS, then an HTTP upgrade on
//! `/$servicebus/websocket` with subprotocol `AMQPWSB10`, then the same AMQP byte stream carried
//! in binary WebSocket messages (AMQP WebSocket Binding 1.0).
//!
//! [`WsBytes`] turns the message stream back into a byte stream (`AsyncRead + AsyncWrite`) so
//! the same acceptor serves it; message boundaries carry no meaning in the binding.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Sink, Stream};
use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::amqp;
use super::io::HubStream;
use super::Shared;

/// The path Event Hubs serves AMQP over WebSockets on.
pub const WS_PATH: &str = "/$servicebus/websocket";
/// AMQP WebSocket Binding 1.0 subprotocol.
pub const WS_SUBPROTOCOL: &str = "AMQPWSB10";
/// Time allowed for TLS and the upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts WebSocket connections until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(message = "Hub emulator WebSocket accept failed.", %error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Shutdown: stop accepting.
            _ = shared.root.cancelled() => return,
        };
        if shared.faults.is_down() {
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let shared2 = shared.clone();
        shared.tracker.spawn(async move {
            let (id, ctx) = shared2.open_connection(peer.to_string());
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
            shared2.close_connection(id);
        });
    }
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
