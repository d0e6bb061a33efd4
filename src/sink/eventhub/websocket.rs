//! AMQP over WebSockets, for plants whose firewall opens only 443: TLS to the namespace on
//! 443, an HTTP upgrade at `/$servicebus/websocket` with subprotocol `AMQPWSB10` (what
//! Microsoft's SDKs send), then AMQP as usual inside binary WebSocket messages (AMQP WebSocket
//! Binding 1.0).
//!
//! TLS is ours (same rustls configuration and TCP_NODELAY as plain AMQP); tokio-tungstenite does
//! the upgrade and the framing, and [`WsBytes`] turns the message stream back into the byte
//! stream fe2o3 reads and writes. The emulator's WebSocket listener uses the same adapter.
//!
//! Invariants (both sides, [`config`]):
//! - A WebSocket frame or message longer than [`MAX_MESSAGE`] is refused from its header,
//!   before anything is allocated for it, with an error naming its size and the limit
//!   (tungstenite's defaults would reserve up to 16 MiB per frame header and assemble 64 MiB
//!   messages). AMQP needs far less: fe2o3's frames are at most 256 KiB here, and
//!   [`WsBytes`] writes at most [`MAX_WRITE`] bytes per message.
//! - AMQP travels in binary messages (AMQP WebSocket Binding 1.0, 2.1): a text message is an
//!   error, not data.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Sink, Stream};
use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::transport::LinkError;

/// The path Event Hubs serves AMQP WebSockets on.
pub const PATH: &str = "/$servicebus/websocket";
/// The WebSocket subprotocol of AMQP, as Event Hubs and Microsoft's SDKs name it.
pub const SUBPROTOCOL: &str = "AMQPWSB10";
/// Event Hubs' WebSocket port.
pub const PORT: u16 = 443;
/// The largest WebSocket frame or message either side accepts: four times the largest AMQP
/// frame fe2o3 sends by default (256 KiB), so an independent peer's framing fits.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// The most [`WsBytes`] puts into one message.
pub const MAX_WRITE: usize = 256 * 1024;

/// The WebSocket settings of both the sink and the emulator: frames and messages bounded by
/// [`MAX_MESSAGE`].
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_frame_size(Some(MAX_MESSAGE))
        .max_message_size(Some(MAX_MESSAGE))
}

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
    let (ws, response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config()))
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
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the peer sent a WebSocket frame or message of {size} bytes, more than the {max_size} \
                 AMQP over WebSockets needs: refused before reading it"
            ),
        ),
        Error::Protocol(p) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer broke the WebSocket protocol: {p}"),
        ),
        other => io::Error::other(other),
    }
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
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the peer sent a WebSocket text message ({} bytes); AMQP travels in binary messages",
                            t.len()
                        ),
                    )))
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
        // A partial write is fine: message boundaries carry no meaning in the binding.
        let part = &buf[..buf.len().min(MAX_WRITE)];
        match Pin::new(&mut this.ws).start_send(Message::Binary(Bytes::copy_from_slice(part))) {
            Ok(()) => Poll::Ready(Ok(part.len())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    /// A hub's answer to the upgrade: it agrees to AMQPWSB10.
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    fn agree(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        Ok(response)
    }

    /// A hostile hub: completes the upgrade (agreeing to AMQPWSB10), then writes `raw`
    /// (unmasked server frames) and keeps the connection open. Returns what the sink's side
    /// reads: its first bytes, or its error.
    async fn sink_reads_from_hub(raw: Vec<u8>) -> Result<Vec<u8>, String> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let hub = tokio::spawn(async move {
            let mut ws = tokio_tungstenite::accept_hdr_async(server, agree)
                .await
                .expect("upgrade");
            ws.get_mut().write_all(&raw).await.expect("write");
            // Hold the connection: a refusal must come from the header, not from an EOF.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let mut sink = upgrade(client, "hub.test", PORT)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), sink.read(&mut buf)).await;
        hub.abort();
        match read {
            Err(_) => Err("no answer within 5 s: the sink is waiting for the frame".into()),
            Ok(Ok(n)) => Ok(buf[..n].to_vec()),
            Ok(Err(e)) => Err(e.to_string()),
        }
    }

    /// A binary frame header (FIN, opcode 2, no mask) declaring `len` bytes, with 64-bit length.
    fn header(len: u64) -> Vec<u8> {
        let mut h = vec![0x82, 127];
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    use std::time::Duration;

    #[tokio::test]
    async fn a_hub_announcing_an_oversize_frame_is_refused_from_the_header() {
        for len in [MAX_MESSAGE as u64 + 1, 16 << 20, 1 << 40, u64::MAX >> 1] {
            let mut raw = header(len);
            raw.extend_from_slice(b"AMQP");
            let error = sink_reads_from_hub(raw).await.unwrap_err();
            assert!(
                error.contains(&format!(
                    "WebSocket frame or message of {len} bytes, more than the {MAX_MESSAGE}"
                )),
                "{len}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn a_message_assembled_past_the_limit_is_refused() {
        // Fragments of 512 KiB each: no frame is too long, the message is.
        let piece = vec![0u8; 512 * 1024];
        let mut raw = Vec::new();
        for (i, opcode) in [0x02u8, 0x00, 0x00].iter().enumerate() {
            let fin = if i == 2 { 0x80 } else { 0 };
            raw.push(fin | opcode);
            raw.push(127);
            raw.extend_from_slice(&(piece.len() as u64).to_be_bytes());
            raw.extend_from_slice(&piece);
        }
        let error = sink_reads_from_hub(raw).await.unwrap_err();
        assert!(error.contains("more than the 1048576"), "{error}");
    }

    #[tokio::test]
    async fn text_and_broken_frames_are_errors_and_binary_is_data() {
        assert_eq!(
            sink_reads_from_hub(vec![0x82, 4, b'A', b'M', b'Q', b'P']).await,
            Ok(b"AMQP".to_vec())
        );
        let text = sink_reads_from_hub(vec![0x81, 4, b'A', b'M', b'Q', b'P'])
            .await
            .unwrap_err();
        assert!(text.contains("text message"), "{text}");
        // A masked frame from a server, a fragmented ping, a reserved opcode.
        for raw in [
            vec![0x82, 0x84, 1, 2, 3, 4, 0, 0, 0, 0],
            vec![0x09, 1, 0],
            vec![0x83, 0],
        ] {
            let error = sink_reads_from_hub(raw.clone()).await.unwrap_err();
            assert!(
                error.contains("broke the WebSocket protocol"),
                "{raw:?}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn long_writes_are_split_into_bounded_messages() {
        let (client, server) = tokio::io::duplex(4 * 1024 * 1024);
        let hub = tokio::spawn(async move {
            let ws = tokio_tungstenite::accept_hdr_async_with_config(server, agree, Some(config()))
                .await
                .expect("upgrade");
            let mut bytes = WsBytes::new(ws);
            let mut all = Vec::new();
            bytes.read_to_end(&mut all).await.map(|_| all)
        });
        let mut sink = upgrade(client, "hub.test", PORT).await.unwrap();
        let data: Vec<u8> = (0..3 * MAX_MESSAGE).map(|i| (i % 251) as u8).collect();
        sink.write_all(&data).await.unwrap();
        sink.shutdown().await.unwrap();
        let got = hub.await.unwrap().expect("the hub reads every message");
        assert_eq!(got, data);
    }
}
