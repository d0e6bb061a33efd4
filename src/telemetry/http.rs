//! The operations endpoint on loopback: `GET /metrics` (Prometheus text), `GET /healthz` (the
//! process is up) and `GET /readyz` (200 when ready, 503 otherwise, with a JSON body saying
//! what is not). With the live view on: `GET /` (the page) and `GET /api/live` (JSON, see
//! [`super::live`]).

use std::convert::Infallible;
use std::sync::Arc;

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

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    readiness: ReadinessFn,
    live: Option<Arc<LiveView>>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(message = "Metrics endpoint accept failed.", %error);
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
