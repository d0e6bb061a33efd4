//! The operations endpoint on loopback: `GET /metrics` (Prometheus text), `GET /healthz` (the
//! process is up) and `GET /readyz` (200 when ready, 503 otherwise, with a JSON body saying
//! what is not). With the live view on: `GET /` (the page) and `GET /api/live` (JSON, see
//! [`super::live`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::live::{LiveView, Query};
use super::metrics::Metrics;

/// Answers `/readyz`: ready or not, and a JSON object describing each part.
pub type ReadinessFn = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

/// A client must send a whole request header within this, or its connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause after a failed accept; it doubles up to [`ACCEPT_PAUSE_MAX`].
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(50);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// Accept failures are logged at most once per this interval.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    readiness: ReadinessFn,
    live: Option<Arc<LiveView>>,
    shutdown: CancellationToken,
) {
    let mut pause = ACCEPT_PAUSE_MIN;
    let mut last_log: Option<std::time::Instant> = None;
    let mut failures = 0u64;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    pause = ACCEPT_PAUSE_MIN;
                    a
                }
                Err(error) => {
                    // Out of file handles (EMFILE) and the like: retrying at once spins. Pause,
                    // longer while it lasts, and log once per interval with the count.
                    failures += 1;
                    if last_log.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                        tracing::warn!(
                            message = "Metrics endpoint accept failed; pausing.",
                            %error,
                            failures,
                            pause_ms = pause.as_millis() as u64
                        );
                        last_log = Some(std::time::Instant::now());
                        failures = 0;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        let live = live.clone();
        let conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                let readiness = readiness.clone();
                let live = live.clone();
                async move { Ok::<_, Infallible>(route(&req, &metrics, &readiness, live.as_deref())) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = conn_shutdown.cancelled() => {}
            }
        });
    }
}

fn route(
    req: &Request<Incoming>,
    metrics: &Metrics,
    readiness: &ReadinessFn,
    live: Option<&LiveView>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/api/live") if live.is_some() => (
            StatusCode::OK,
            "application/json",
            live.map(|l| l.snapshot_json(&Query::parse(req.uri().query())))
                .unwrap_or_default(),
        ),
        ("GET", "/") if live.is_some() => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            super::live::PAGE.to_string(),
        ),
        ("GET", "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => {
            let (ready, detail) = readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (
                status,
                "application/json",
                format!(
                    "{}\n",
                    serde_json::json!({"ready": ready, "detail": detail})
                ),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /, /api/live, /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_client_holding_half_sent_headers_is_disconnected() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let readiness: ReadinessFn = Arc::new(|| (true, serde_json::Value::Null));
        let server = tokio::spawn(serve(
            listener,
            Metrics::default(),
            readiness,
            None,
            shutdown.clone(),
        ));
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        // The server closes (or answers 408 and closes) once the header timeout passes.
        let closed = tokio::time::timeout(HEADER_TIMEOUT * 4, async {
            loop {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a half-sent header held the connection open"
        );
        shutdown.cancel();
        server.await.unwrap();
    }
}
