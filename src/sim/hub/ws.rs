//! AMQP over WebSockets, as Event Hubs serves it on 443: TLS, then an HTTP upgrade on
//! `/$servicebus/websocket` with subprotocol `AMQPWSB10`, then the same AMQP byte stream carried
//! in binary WebSocket messages (AMQP WebSocket Binding 1.0).
//!
//! [`WsBytes`] (shared with the sink) turns the message stream back into a byte stream so the
//! same acceptor serves it; message boundaries carry no meaning in the binding. The listener
//! takes the sink's WebSocket settings ([`crate::sink::eventhub::websocket::config`]): frames
//! and messages over 1 MiB are refused from their header, text messages are errors.
//!
//! [`fuzz_websocket`] drives the upgrade, the framing and the AMQP opening with hostile input
//! (`cargo run --example fuzz -- --target hub_ws`).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use super::amqp;
use super::io::HubStream;
use super::Shared;
use crate::sink::eventhub::websocket::{config as ws_config, WsBytes};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

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
                accept(stream).await.map_err(|e| e.to_string())
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

/// The upgrade of an accepted (TLS) stream, with the sink's WebSocket settings.
async fn accept<S>(stream: S) -> Result<WebSocketStream<S>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio_tungstenite::accept_hdr_async_with_config(stream, check_upgrade, Some(ws_config())).await
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

/// Fuzz target (`cargo run --example fuzz -- --target hub_ws`): the emulator's WebSocket
/// listener behind TLS (upgrade, framing, [`WsBytes`], then the AMQP opening) on an in-memory
/// stream carrying a hostile upgrade request and hostile frames generated from `data`'s first
/// 8 bytes, followed by the rest of `data`. Panics only on a bug; every input ends within
/// seconds (the stream ends after the input).
pub fn fuzz_websocket(data: &[u8]) {
    use rand::SeedableRng;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let seed = data
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut input = hostile::upgrade(&mut rng);
    input.extend(hostile::frames(&mut rng));
    input.extend_from_slice(data.get(8..).unwrap_or_default());
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut from_hub, mut to_hub) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            let _ = to_hub.write_all(&input).await;
            // Dropping the writer ends the stream: the listener sees EOF, never waits.
        });
        // Whatever the emulator answers is read and dropped, so it never blocks on writing.
        let drain = tokio::spawn(async move {
            let mut sink = [0u8; 16 * 1024];
            while matches!(from_hub.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let serve = async {
            if let Ok(ws) = accept(server).await {
                super::amqp::open_for_fuzzing(WsBytes::new(ws), Duration::from_secs(2)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), serve).await;
        writer.abort();
        drain.abort();
    });
}

/// Hostile WebSocket input for [`fuzz_websocket`]: upgrade requests and client frames, each
/// valid or broken in one of the ways RFC 6455 forbids.
mod hostile {
    use rand::Rng;

    use crate::sink::eventhub::websocket::MAX_MESSAGE;

    /// An upgrade request: valid, or broken in its path, headers, size or syntax.
    pub fn upgrade(rng: &mut impl Rng) -> Vec<u8> {
        let path = match rng.gen_range(0..6) {
            0 => "/",
            1 => "/$servicebus/websocket?x=1",
            2 => "/%00",
            _ => super::WS_PATH,
        };
        let mut headers = vec![
            format!("GET {path} HTTP/1.1"),
            "Host: hub.test".to_string(),
            "Upgrade: websocket".to_string(),
            "Connection: Upgrade".to_string(),
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_string(),
            "Sec-WebSocket-Version: 13".to_string(),
            format!("Sec-WebSocket-Protocol: {}", super::WS_SUBPROTOCOL),
        ];
        match rng.gen_range(0..12) {
            0 => {
                headers.remove(rng.gen_range(1..headers.len()));
            }
            1 => headers[4] = "Sec-WebSocket-Key: not base64 at all".into(),
            2 => headers[5] = "Sec-WebSocket-Version: 8".into(),
            3 => headers[6] = "Sec-WebSocket-Protocol: amqp, mqtt".into(),
            4 => headers.push(format!("X-Long: {}", "a".repeat(rng.gen_range(1..100_000)))),
            5 => headers.extend((0..rng.gen_range(100..300)).map(|i| format!("X-{i}: v"))),
            6 => headers.push("Bad Header Without Colon".into()),
            7 => headers[0] = "GET /$servicebus/websocket HTTP/1.0".into(),
            8 => headers.push("Content-Length: 18446744073709551615".into()),
            _ => {}
        }
        let mut text = headers.join("\r\n").into_bytes();
        match rng.gen_range(0..10) {
            // Truncated: the header block never ends.
            0 => text.truncate(rng.gen_range(0..=text.len())),
            // A stray LF instead of CRLF, or a NUL in the middle.
            1 => text.extend_from_slice(b"\n\n"),
            2 => {
                let at = rng.gen_range(0..text.len());
                text.insert(at, 0);
                text.extend_from_slice(b"\r\n\r\n");
            }
            _ => text.extend_from_slice(b"\r\n\r\n"),
        }
        text
    }

    /// A client frame: `fin`, `rsv` bits, `opcode`, the payload masked or not, and the length
    /// field as declared (which may lie) in the chosen encoding.
    fn frame(
        rng: &mut impl Rng,
        fin: bool,
        opcode: u8,
        payload: &[u8],
        declared: Option<u64>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        let rsv = if rng.gen_ratio(1, 20) {
            rng.gen_range(1..8u8) << 4
        } else {
            0
        };
        out.push(u8::from(fin) << 7 | rsv | (opcode & 0x0f));
        let masked = !rng.gen_ratio(1, 15);
        let mask_bit = if masked { 0x80 } else { 0 };
        let len = declared.unwrap_or(payload.len() as u64);
        match (len, rng.gen_range(0..8)) {
            (0..=125, 0..=5) => out.push(mask_bit | len as u8),
            (0..=0xffff, 0..=6) => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        let key: [u8; 4] = rng.gen();
        if masked {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    /// The start of a valid AMQP connection: what the emulator's acceptor expects first.
    const SASL_HEADER: &[u8] = b"AMQP\x03\x01\x00\x00";

    /// A few frames, each valid or hostile.
    pub fn frames(rng: &mut impl Rng) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.gen_range(1..8) {
            let random: Vec<u8> = (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect();
            let part = match rng.gen_range(0..14) {
                0 | 1 => frame(rng, true, 2, SASL_HEADER, None),
                // A fragmented binary message, possibly interrupted by a ping or a close.
                2 => {
                    let mut f = frame(rng, false, 2, &SASL_HEADER[..4], None);
                    match rng.gen_range(0..3) {
                        0 => f.extend(frame(rng, true, 9, b"hi", None)),
                        1 => f.extend(frame(rng, true, 8, &[0x03, 0xe8], None)),
                        _ => {}
                    }
                    f.extend(frame(rng, true, 0, &SASL_HEADER[4..], None));
                    f
                }
                // Control frames: too long, fragmented, or a close with a broken body.
                3 => {
                    let long = vec![7u8; rng.gen_range(100..300)];
                    frame(rng, true, 9, &long, None)
                }
                4 => frame(rng, false, 9, b"ping", None),
                5 => {
                    let body: &[u8] = match rng.gen_range(0..5) {
                        0 => &[0x03],
                        1 => &[0x03, 0xed],
                        2 => &[0x03, 0xe8, 0xff, 0xfe],
                        3 => &[0x00, 0x00],
                        _ => &[],
                    };
                    frame(rng, true, 8, body, None)
                }
                // A continuation with nothing to continue; a text frame of invalid UTF-8.
                6 => frame(rng, true, 0, &random, None),
                7 => frame(rng, true, 1, &[0xc3, 0x28, 0xff], None),
                // Reserved opcodes.
                8 => {
                    let opcode = [3, 4, 5, 6, 7, 11, 15][rng.gen_range(0..7)];
                    frame(rng, true, opcode, &random, None)
                }
                // A length that lies: longer than what follows (truncated), or far too long.
                9 => {
                    let lie = random.len() as u64 + rng.gen_range(1..1000);
                    frame(rng, true, 2, &random, Some(lie))
                }
                10 => {
                    let huge =
                        [MAX_MESSAGE as u64 + 1, 16 << 20, 1 << 62, u64::MAX][rng.gen_range(0..4)];
                    frame(rng, true, 2, &random, Some(huge))
                }
                // A header cut short.
                11 => {
                    let f = frame(rng, true, 2, &random, None);
                    f[..rng.gen_range(1..f.len().min(14))].to_vec()
                }
                12 => random,
                _ => frame(rng, true, 2, &random, None),
            };
            out.extend(part);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_fuzz_target_survives_generated_input() {
        for n in 0u64..300 {
            let mut data = n.to_le_bytes().to_vec();
            data.extend((0..(n % 23)).map(|i| (i * 37 + n) as u8));
            fuzz_websocket(&data);
        }
    }

    /// A client that upgrades properly, then sends `raw`; returns what the emulator's side
    /// reads from the WebSocket: its first bytes, or its error.
    async fn emulator_reads(raw: Vec<u8>) -> Result<Vec<u8>, String> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let client = tokio::spawn(async move {
            let mut request =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    format!("ws://hub.test{WS_PATH}"),
                )
                .unwrap();
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(WS_SUBPROTOCOL),
            );
            let (mut ws, _) = tokio_tungstenite::client_async(request, client)
                .await
                .unwrap();
            ws.get_mut().write_all(&raw).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let ws = accept(server).await.map_err(|e| e.to_string())?;
        let mut bytes = WsBytes::new(ws);
        let mut buf = vec![0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), bytes.read(&mut buf)).await;
        client.abort();
        match read {
            Err(_) => Err("no answer within 5 s: the emulator waits for the frame".into()),
            Ok(Ok(n)) => Ok(buf[..n].to_vec()),
            Ok(Err(e)) => Err(e.to_string()),
        }
    }

    #[tokio::test]
    async fn an_oversize_client_frame_is_refused_from_its_header() {
        // Masked binary frame header declaring 2 MiB (under tungstenite's default 16 MiB, which
        // would reserve it and wait for the rest).
        let mut raw = vec![0x82, 0x80 | 127];
        raw.extend_from_slice(&(2u64 << 20).to_be_bytes());
        raw.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let error = emulator_reads(raw).await.unwrap_err();
        assert!(
            error.contains("of 2097152 bytes, more than the 1048576"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_masked_binary_frame_is_data_and_an_unmasked_one_an_error() {
        let masked = vec![
            0x82,
            0x84,
            1,
            2,
            3,
            4,
            b'A' ^ 1,
            b'M' ^ 2,
            b'Q' ^ 3,
            b'P' ^ 4,
        ];
        assert_eq!(emulator_reads(masked).await, Ok(b"AMQP".to_vec()));
        let error = emulator_reads(vec![0x82, 4, b'A', b'M', b'Q', b'P'])
            .await
            .unwrap_err();
        assert!(error.contains("broke the WebSocket protocol"), "{error}");
    }
}
