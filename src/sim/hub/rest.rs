//! The emulator's HTTPS side (hyper over rustls, HTTP/1.1):
//!
//! - `POST /{hub}/messages` (also `/{hub}/partitions/{n}/messages`) as the Event Hubs REST API:
//!   `Authorization: SharedAccessSignature …` (or `Bearer <jwt>`); one event per request (body
//!   as is, partition key and message id from the `BrokerProperties` JSON header), or a batch
//!   when `Content-Type: application/vnd.microsoft.servicebus.json`: a JSON array of
//!   `{"Body": "...", "UserProperties": {...}, "BrokerProperties": {"PartitionKey": ...}}`.
//!   201 Created; 401 without a valid token; 413 over the max message size; 400 for a
//!   malformed batch; 503 while down or throttled.
//! - `POST /{tenant}/oauth2/v2.0/token`: the OAuth 2.0 client-credentials grant for the
//!   configured `entra_clients`, answering a JWT that `$cbs` accepts as type `jwt`.
//!
//! Invariant: events are recorded before 201 is sent, as on the AMQP side.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use chrono::Utc;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::auth;
use super::store::{Counters, ReceivedEvent};
use super::Shared;

/// The batch content type of the Event Hubs REST API.
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.servicebus.json";
/// Lifetime of the token endpoint's JWTs (seconds), as Entra's are about an hour.
const JWT_LIFETIME_S: i64 = 3599;
/// The largest token request read.
const MAX_FORM: usize = 64 * 1024;

/// Serves HTTPS until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(message = "Hub emulator HTTPS accept failed.", %error);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Shutdown: stop accepting.
            _ = shared.root.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let shared2 = shared.clone();
        shared.tracker.spawn(async move {
            let idle = shared2.idle_timeout;
            let stream = tokio::select! {
                // A silent or slow handshake is given up: idle sockets must not pile up.
                s = tokio::time::timeout(idle, tls.accept(tcp)) => match s {
                    Ok(Ok(s)) => s,
                    Ok(Err(_)) | Err(_) => return,
                },
                // Shutdown during the handshake.
                _ = shared2.root.cancelled() => return,
            };
            let shared3 = shared2.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared3.clone();
                async move { Ok::<_, Infallible>(route(req, &shared).await) }
            });
            // Headers (of the first request and of each next one on a kept-alive socket) must
            // arrive within the idle timeout.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(idle)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                // Shutdown: drop the connection.
                _ = shared2.root.cancelled() => {}
            }
        });
    }
}

/// Bodies over the limit are read to their end (up to [`DRAIN_LIMIT`]) and discarded, so the
/// client, still uploading, receives the 413 instead of a reset connection.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// The body if it fits in `limit` bytes; `Err` (after draining) if it does not.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, ()> {
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return Err(()) };
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen <= limit {
                kept.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                return Err(());
            }
        }
    }
    if seen > limit {
        Err(())
    } else {
        Ok(Bytes::from(kept))
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// The service's XML error body.
fn error(status: StatusCode, detail: &str) -> Response<Full<Bytes>> {
    let detail = detail
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    respond(
        status,
        "application/xml; charset=utf-8",
        format!(
            "<Error><Code>{}</Code><Detail>{detail}</Detail></Error>",
            status.as_u16()
        ),
    )
}

async fn route(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_matches('/').to_string();
    let parts: Vec<&str> = path.split('/').collect();
    if req.method() != hyper::Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "Only POST is served.");
    }
    match parts.as_slice() {
        [tenant, "oauth2", "v2.0", "token"] => token(req, shared, tenant).await,
        [hub, "messages"] if hub.eq_ignore_ascii_case(&shared.hub) => {
            send(req, shared, hub.to_ascii_lowercase(), None).await
        }
        [hub, p, n, "messages"]
            if hub.eq_ignore_ascii_case(&shared.hub) && p.eq_ignore_ascii_case("partitions") =>
        {
            match n.parse::<u32>() {
                Ok(n) if n < shared.partitions => {
                    let entity = format!("{}/partitions/{n}", hub.to_ascii_lowercase());
                    send(req, shared, entity, Some(n)).await
                }
                _ => error(
                    StatusCode::NOT_FOUND,
                    &format!("Partition '{n}' does not exist."),
                ),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            &format!(
                "No such endpoint '/{path}'. Try POST /{}/messages.",
                shared.hub
            ),
        ),
    }
}

async fn send(
    req: Request<Incoming>,
    shared: &Shared,
    entity: String,
    partition: Option<u32>,
) -> Response<Full<Bytes>> {
    if shared.faults.is_down() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The emulator is down (fault).",
        );
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let authorization = header("authorization").unwrap_or_default();
    let checked = if authorization.starts_with("SharedAccessSignature") {
        shared.check_token(auth::SAS_TOKEN_TYPE, &authorization, &entity)
    } else if let Some(jwt) = authorization.strip_prefix("Bearer ") {
        shared.check_token(auth::JWT_TOKEN_TYPE, jwt, &entity)
    } else {
        Err(auth::TokenError::Malformed)
    };
    if let Err(e) = checked {
        Counters::inc(&shared.counters.auth_failures);
        return error(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    let content_type = header("content-type");
    let broker = header("brokerproperties");
    let limit = shared.max_message_size;
    let body = match read_body(req.into_body(), limit).await {
        Ok(b) => b,
        Err(()) => {
            Counters::inc(&shared.counters.oversize);
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("The request body exceeds the maximum message size of {limit} bytes."),
            );
        }
    };
    let is_batch = content_type
        .as_deref()
        .is_some_and(|c| c.starts_with(BATCH_CONTENT_TYPE));
    let events = if is_batch {
        match batch_events(&body, partition, shared) {
            Ok(e) => e,
            Err(why) => return error(StatusCode::BAD_REQUEST, &why),
        }
    } else {
        let broker: serde_json::Value = broker
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default();
        vec![event(
            body.to_vec(),
            &broker,
            BTreeMap::new(),
            content_type,
            partition,
            shared,
        )]
    };
    let bytes: usize = events.iter().map(|e| e.body.len()).sum();
    if !shared.faults.admit(events.len() as u64, bytes as u64) {
        Counters::inc(&shared.counters.throttled);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServerBusy: the request was terminated because the entity is being throttled.",
        );
    }
    shared.accept_events(events).await;
    respond(StatusCode::CREATED, "text/plain", String::new())
}

fn event(
    body: Vec<u8>,
    broker: &serde_json::Value,
    properties: BTreeMap<String, serde_json::Value>,
    content_type: Option<String>,
    partition: Option<u32>,
    shared: &Shared,
) -> ReceivedEvent {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    };
    let partition_key = text(&broker["PartitionKey"]);
    let partition =
        partition.unwrap_or_else(|| shared.store.assign_partition(partition_key.as_deref()));
    ReceivedEvent {
        body,
        partition_key,
        message_id: text(&broker["MessageId"]),
        properties,
        content_type,
        content_encoding: None,
        encoded: None,
        decode_error: None,
        partition,
        arrived: Utc::now(),
    }
}

fn batch_events(
    body: &[u8],
    partition: Option<u32>,
    shared: &Shared,
) -> Result<Vec<ReceivedEvent>, String> {
    let items: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| format!("The batch is not a JSON array of events: {e}"))?;
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            return Err(format!("Batch item {i} is not an object."));
        };
        let body = match obj.get("Body") {
            Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
            Some(other) => other.to_string().into_bytes(),
            None => return Err(format!("Batch item {i} has no Body.")),
        };
        let properties = obj
            .get("UserProperties")
            .and_then(|p| p.as_object())
            .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let broker = obj
            .get("BrokerProperties")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        events.push(event(body, &broker, properties, None, partition, shared));
    }
    Ok(events)
}

async fn token(req: Request<Incoming>, shared: &Shared, tenant: &str) -> Response<Full<Bytes>> {
    let oauth_error = |status: StatusCode, code: &str, description: &str| {
        respond(
            status,
            "application/json",
            serde_json::json!({"error": code, "error_description": description}).to_string(),
        )
    };
    let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The request body is too large.",
            )
        }
    };
    let form: BTreeMap<String, String> = String::from_utf8_lossy(&body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (auth::unquote_plus(k), auth::unquote_plus(v)))
        .collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("grant_type") != "client_credentials" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: the emulator supports only client_credentials.",
        );
    }
    let client_id = field("client_id");
    let Some((_, secret)) = shared.entra_clients.iter().find(|(id, _)| id == client_id) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!("AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
        );
    };
    if secret != field("client_secret") {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    let issuer = format!("{}/{tenant}/v2.0", shared.token_issuer);
    let jwt = auth::issue_jwt(
        &shared.jwt_secret,
        &issuer,
        tenant,
        client_id,
        Utc::now().timestamp(),
        JWT_LIFETIME_S,
    );
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::json!({
            "token_type": "Bearer",
            "expires_in": JWT_LIFETIME_S,
            "ext_expires_in": JWT_LIFETIME_S,
            "access_token": jwt,
        })
        .to_string(),
    )
}
