//! The `$cbs` and `$management` nodes: requests arrive on a receiver link, responses go out on
//! the sender link the client attached with the node as source, matched by `correlation-id`.
//! `$cbs` put-token checks SAS tokens and JWTs; `$management` READ describes the hub and its
//! partitions.

use std::sync::Arc;

use chrono::Utc;
use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp::types::primitives::{Array, OrderedMap, Timestamp, Value};
use fe2o3_amqp::{Receiver, Sendable, Sender};
use tokio::sync::mpsc;

use super::auth::{self};
use super::context::{ConnCtx, CLOSE_TIMEOUT};
use super::events::value_text;
use super::store::Counters;
use super::Shared;

pub(crate) const CBS_NODE: &str = "$cbs";
pub(crate) const MANAGEMENT_NODE: &str = "$management";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Cbs,
    Management,
    Hub {
        /// Lower-case entity path, e.g. `telemetry/partitions/1`.
        path: String,
        partition: Option<u32>,
    },
    /// `HUB/ConsumerGroups/GROUP/Partitions/N`: the partition, or why it names nothing.
    Consumer {
        path: String,
        partition: Result<u32, String>,
    },
    Unknown,
}

pub(crate) fn classify(address: &str, shared: &Shared) -> Node {
    let path = auth::entity_path(address);
    match path.as_str() {
        "$cbs" => return Node::Cbs,
        "$management" => return Node::Management,
        _ => {}
    }
    let hub = shared.hub.to_ascii_lowercase();
    if let Some(partition) = super::receive::consumer_partition(&path, &hub, shared.partitions) {
        return Node::Consumer { path, partition };
    }
    let mut parts = path.split('/');
    if parts.next() != Some(hub.as_str()) {
        return Node::Unknown;
    }
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => Node::Hub {
            path,
            partition: None,
        },
        (Some("partitions"), Some(n), None) => match n.parse::<u32>() {
            Ok(n) if n < shared.partitions => Node::Hub {
                path,
                partition: Some(n),
            },
            _ => Node::Unknown,
        },
        _ => Node::Unknown,
    }
}

/// Sends queued responses on a reply link, pre-settled (clients do not settle responses).
pub(crate) async fn replies(
    mut sender: Sender,
    mut rx: mpsc::Receiver<Message<AmqpValue<Value>>>,
    ctx: Arc<ConnCtx>,
) {
    loop {
        let message = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                // Replaced by a newer reply link.
                None => break,
            },
            // Cut by a fault or shutdown.
            _ = ctx.cut.cancelled() => return,
        };
        let sendable = Sendable::builder().message(message).settled(true).build();
        // Batchable, because Microsoft's Python SDK indexes all 11 fields of a transfer and
        // fe2o3 leaves out trailing fields at their defaults (batchable = false).
        match sender.send_batchable(sendable).await {
            // Pre-settled: the outcome resolves at once.
            Ok(outcome) => drop(outcome.await),
            Err(error) => {
                tracing::debug!(message = "Management reply not sent.", %error);
                break;
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sender.close()).await;
}

/// Serves requests to `$cbs` or `$management` arriving on one link.
pub(crate) async fn requests(mut receiver: Receiver, ctx: Arc<ConnCtx>, node: Node) {
    let node_name = if node == Node::Cbs {
        CBS_NODE
    } else {
        MANAGEMENT_NODE
    };
    let reply_tx = ctx.replies.sender(node_name);
    loop {
        let delivery = tokio::select! {
            d = receiver.recv::<Body<Value>>() => match d {
                Ok(d) => d,
                Err(_) => break,
            },
            // Cut by a fault or shutdown.
            _ = ctx.cut.cancelled() => return,
        };
        let (info, request) = delivery.into_parts();
        let _ = receiver.accept(info).await;
        let response = if node == Node::Cbs {
            put_token(&request, &ctx)
        } else {
            management(&request, &ctx)
        };
        let correlation = request
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        let to = request.properties.as_ref().and_then(|p| p.reply_to.clone());
        let (status, description, body) = response;
        let message = Message::builder()
            .properties(Properties {
                correlation_id: correlation,
                to,
                ..Default::default()
            })
            .application_properties(
                ApplicationProperties::builder()
                    .insert("status-code", status)
                    .insert("status-description", description)
                    .build(),
            )
            .value(body)
            .build();
        // Bounded: if the client never attaches its reply link, this request link waits.
        if reply_tx.send(message).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, receiver.close()).await;
}

fn app_property(message: &Message<Body<Value>>, name: &str) -> Option<String> {
    message
        .application_properties
        .as_ref()
        .and_then(|ap| ap.0.get(name))
        .map(|v| value_text(&Value::from(v.clone())))
}

fn body_text(message: &Message<Body<Value>>) -> Option<String> {
    match &message.body {
        Body::Value(AmqpValue(Value::String(s))) => Some(s.clone()),
        Body::Value(AmqpValue(Value::Binary(b))) => Some(String::from_utf8_lossy(b).into_owned()),
        Body::Data(sections) => Some(
            sections
                .iter()
                .map(|d| String::from_utf8_lossy(&d.0).into_owned())
                .collect(),
        ),
        _ => None,
    }
}

/// A `$cbs` put-token: (status, description, body).
fn put_token(request: &Message<Body<Value>>, ctx: &ConnCtx) -> (i32, String, Value) {
    let shared = &ctx.shared;
    let operation = app_property(request, "operation").unwrap_or_default();
    if operation != "put-token" {
        return (
            400,
            format!("Unsupported $cbs operation '{operation}'."),
            Value::Null,
        );
    }
    let kind = app_property(request, "type").unwrap_or_default();
    let name = app_property(request, "name").unwrap_or_default();
    let Some(token) = body_text(request) else {
        return (
            400,
            "The put-token request has no token.".into(),
            Value::Null,
        );
    };
    match shared.check_token(&kind, &token, &name) {
        Ok(grant) => {
            ctx.auth.grant(grant);
            (202, "Accepted".into(), Value::Null)
        }
        Err(error) => {
            Counters::inc(&shared.counters.auth_failures);
            tracing::info!(message = "Token refused.", peer = %ctx.peer, audience = %name, %error);
            (401, error.to_string(), Value::Null)
        }
    }
}

/// A `$management` READ of the event hub or one partition.
///
/// Long on purpose: the checks the service makes (operation, name, token) and then the two
/// answers, each the property list Microsoft's SDKs read, written out as the service sends it.
fn management(request: &Message<Body<Value>>, ctx: &ConnCtx) -> (i32, String, Value) {
    let shared = &ctx.shared;
    let operation = app_property(request, "operation").unwrap_or_default();
    let kind = app_property(request, "type").unwrap_or_default();
    let name = app_property(request, "name").unwrap_or_default();
    if operation != "READ" {
        return (
            400,
            format!("Unsupported management operation '{operation}'."),
            Value::Null,
        );
    }
    if !name.eq_ignore_ascii_case(&shared.hub) {
        return (
            404,
            format!("The messaging entity '{name}' could not be found."),
            Value::Null,
        );
    }
    // The SDKs send their token with each request; the service checks it.
    let token_ok = match app_property(request, "security_token") {
        Some(token) => {
            let kind = if token.starts_with("SharedAccessSignature") {
                auth::SAS_TOKEN_TYPE
            } else {
                auth::JWT_TOKEN_TYPE
            };
            shared.check_token(kind, &token, &shared.hub).is_ok()
        }
        None => ctx.auth.covers(
            &shared.hub.to_ascii_lowercase(),
            Utc::now().timestamp_millis(),
        ),
    };
    if !token_ok {
        Counters::inc(&shared.counters.auth_failures);
        return (
            401,
            "Unauthorized: a valid security_token is required.".into(),
            Value::Null,
        );
    }
    let text = |s: &str| Value::String(s.to_string());
    let created = Value::Timestamp(Timestamp::from_milliseconds(
        shared.created_at.timestamp_millis(),
    ));
    let mut map = OrderedMap::new();
    map.insert(text("name"), text(&shared.hub));
    match kind.as_str() {
        "com.microsoft:eventhub" => {
            map.insert(text("type"), text(&kind));
            map.insert(text("created_at"), created);
            map.insert(
                text("partition_count"),
                Value::Int(shared.partitions as i32),
            );
            let ids = (0..shared.partitions)
                .map(|p| text(&p.to_string()))
                .collect();
            map.insert(text("partition_ids"), Value::Array(Array(ids)));
        }
        "com.microsoft:partition" => {
            let partition = app_property(request, "partition").unwrap_or_default();
            if partition
                .parse::<u32>()
                .map_or(true, |p| p >= shared.partitions)
            {
                return (
                    404,
                    format!("Partition '{partition}' does not exist."),
                    Value::Null,
                );
            }
            map.insert(text("type"), text(&kind));
            map.insert(text("partition"), text(&partition));
            let info = partition
                .parse::<u32>()
                .ok()
                .and_then(|p| shared.logs.info(p));
            if let Some(info) = info {
                let at = info.last_enqueued_ms.map_or(created, |ms| {
                    Value::Timestamp(Timestamp::from_milliseconds(ms))
                });
                map.insert(
                    text("begin_sequence_number"),
                    Value::Long(info.begin_sequence_number),
                );
                map.insert(
                    text("last_enqueued_sequence_number"),
                    Value::Long(info.last_sequence_number),
                );
                map.insert(
                    text("last_enqueued_offset"),
                    text(&info.last_offset.to_string()),
                );
                map.insert(text("last_enqueued_time_utc"), at);
                map.insert(text("is_partition_empty"), Value::Bool(info.is_empty));
            }
        }
        other => {
            return (
                400,
                format!("Unsupported management type '{other}'."),
                Value::Null,
            )
        }
    }
    (200, "OK".into(), Value::Map(map))
}
