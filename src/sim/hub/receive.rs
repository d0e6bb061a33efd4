//! Consumers: receive links on `HUB/ConsumerGroups/$Default/Partitions/N`, as Microsoft's SDKs
//! open them (`EventHubConsumerClient`), served from the partition logs ([`super::partitions`]).
//!
//! - The start position is the link source's `apache.org:selector-filter:string` filter
//!   (`amqp.annotation.x-opt-offset > '-1'`, by offset, sequence number or enqueued time,
//!   `>` or `>=`); without one the link starts at the oldest retained event, as the service
//!   does. A filter the emulator does not understand closes the link with
//!   `amqp:invalid-field` and says why.
//! - Each event goes out as the sender stored it (properties, application properties, body
//!   as it arrived: a gzip body stays gzip) plus the message annotations the service adds:
//!   `x-opt-sequence-number` (long), `x-opt-offset` (string), `x-opt-enqueued-time`
//!   (timestamp) and `x-opt-partition-key` (string, when there is one).
//! - Flow control is the client's link credit (the SDK's prefetch): the link waits for credit,
//!   and up to `MAX_UNSETTLED` deliveries wait for their settlement.
//! - Like the event links, the link lives while a token put on `$cbs` covers it, and ends on a
//!   cut (faults, shutdown) or when the client detaches.
//! - Only the `$Default` consumer group exists, as on a Basic namespace; several readers per
//!   partition are allowed (no epoch enforcement).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fe2o3_amqp::types::definitions::{self, AmqpError};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Data, Message, MessageAnnotations, Properties,
};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};
use fe2o3_amqp::{Sendable, Sender};
use futures::stream::{FuturesUnordered, StreamExt as _};

use super::context::{ConnCtx, CLOSE_TIMEOUT};
use super::partitions::{parse_selector, StartAt, StoredEvent};
use super::store::Counters;

/// The selector filter's key (and descriptor) on a link source.
pub const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";
/// The one consumer group (lower case, as entity paths are compared).
pub const DEFAULT_CONSUMER_GROUP: &str = "$default";
/// Deliveries sent and not yet settled by the client, at most.
const MAX_UNSETTLED: usize = 512;
/// Events read from the log per step.
const READ_CHUNK: usize = 64;
/// How often an open link re-checks that its token is still valid.
const TOKEN_CHECK: Duration = Duration::from_millis(200);

/// The partition of a consumer address `HUB/ConsumerGroups/GROUP/Partitions/N` (`path` lower
/// case, as `auth::entity_path` gives it): `Some(Ok(n))` for `$Default` and an existing
/// partition, `Some(Err(why))` for a consumer address that names nothing, `None` when `path`
/// is not a consumer address at all.
pub(crate) fn consumer_partition(
    path: &str,
    hub: &str,
    partitions: u32,
) -> Option<Result<u32, String>> {
    let mut parts = path.split('/');
    if parts.next() != Some(hub) || parts.next() != Some("consumergroups") {
        return None;
    }
    let group = parts.next().unwrap_or_default();
    if group != DEFAULT_CONSUMER_GROUP {
        return Some(Err(format!(
            "The consumer group '{group}' does not exist; this emulator has '$Default'."
        )));
    }
    match (parts.next(), parts.next(), parts.next()) {
        (Some("partitions"), Some(n), None) => Some(match n.parse::<u32>() {
            Ok(n) if n < partitions => Ok(n),
            _ => Err(format!(
                "Partition '{n}' does not exist; the hub has {partitions} (0 to {}).",
                partitions.saturating_sub(1)
            )),
        }),
        _ => Some(Err(
            "Receive from HUB/ConsumerGroups/$Default/Partitions/N.".to_string(),
        )),
    }
}

/// The start position a receiver asked for in its attach (see the module doc).
pub(crate) fn start_position(attach: &Attach) -> Result<StartAt, String> {
    let Some(filter) = attach.source.as_ref().and_then(|s| s.filter.as_ref()) else {
        return Ok(StartAt::Earliest);
    };
    let Some(value) = filter
        .iter()
        .find_map(|(k, v)| (k.as_str() == SELECTOR_FILTER).then_some(v))
    else {
        return Ok(StartAt::Earliest);
    };
    let text = match value {
        Value::Described(d) => match &d.value {
            Value::String(s) => s.clone(),
            other => return Err(format!("the selector filter is not a string: {other:?}")),
        },
        Value::String(s) => s.clone(),
        other => return Err(format!("the selector filter is not a string: {other:?}")),
    };
    parse_selector(&text)
}

/// A stored event as the message a consumer receives.
pub fn to_message(event: &StoredEvent) -> Message<Data> {
    let mut annotations = MessageAnnotations::builder()
        .insert(
            Symbol::from("x-opt-sequence-number"),
            Value::Long(event.sequence_number),
        )
        .insert(
            Symbol::from("x-opt-offset"),
            Value::String(event.offset.to_string()),
        )
        .insert(
            Symbol::from("x-opt-enqueued-time"),
            Value::Timestamp(Timestamp::from_milliseconds(event.enqueued_ms)),
        );
    if let Some(key) = &event.partition_key {
        annotations = annotations.insert(
            Symbol::from("x-opt-partition-key"),
            Value::String(key.clone()),
        );
    }
    let properties = Properties {
        message_id: event.message_id.clone().map(Into::into),
        content_type: event.content_type.clone().map(Symbol::from),
        content_encoding: event.content_encoding.clone().map(Symbol::from),
        ..Default::default()
    };
    let mut application = ApplicationProperties::builder();
    for (key, value) in &event.properties {
        application = application.insert(key.clone(), simple_value(value));
    }
    let application: ApplicationProperties = application.build();
    let mut builder = Message::builder()
        .message_annotations(annotations.build())
        .properties(properties);
    if !application.0.is_empty() {
        builder = builder.application_properties(application);
    }
    builder.data(Binary::from(event.body.clone())).build()
}

/// An application property back in an AMQP type (the store keeps them as JSON).
fn simple_value(v: &serde_json::Value) -> SimpleValue {
    match v {
        serde_json::Value::Null => SimpleValue::Null,
        serde_json::Value::Bool(b) => SimpleValue::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => SimpleValue::Long(i),
            (_, Some(u), _) => SimpleValue::Ulong(u),
            (_, _, Some(f)) => SimpleValue::Double(f.into()),
            _ => SimpleValue::String(n.to_string()),
        },
        serde_json::Value::String(s) => SimpleValue::String(s.clone()),
        other => SimpleValue::String(other.to_string()),
    }
}

/// Serves one consumer link until the client detaches, its token lapses or the connection is
/// cut. Long on purpose: one loop over the log with its `select!` arms.
pub(crate) async fn serve(
    mut sender: Sender,
    ctx: Arc<ConnCtx>,
    path: String,
    partition: u32,
    start: StartAt,
) {
    let shared = ctx.shared.clone();
    let Some(mut appended) = shared.logs.subscribe(partition) else {
        return;
    };
    Counters::inc(&shared.counters.receivers);
    let mut next = shared.logs.resolve(partition, start);
    let mut unsettled = FuturesUnordered::new();
    let mut check = tokio::time::interval(TOKEN_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut close_with = None;
    'serve: loop {
        let events = shared.logs.read(partition, next, READ_CHUNK);
        if events.is_empty() {
            tokio::select! {
                // Cut by a fault or shutdown: no polite close.
                _ = ctx.cut.cancelled() => break 'serve,
                // New events (or the log's sender is gone at shutdown).
                changed = appended.changed() => if changed.is_err() { break 'serve },
                // Settlements coming back.
                Some(_) = unsettled.next(), if !unsettled.is_empty() => {}
                // The token may have expired.
                _ = check.tick() => {
                    if !ctx.auth.covers(&path, Utc::now().timestamp_millis()) {
                        close_with = Some(expired(&path));
                        break 'serve;
                    }
                }
            }
            continue;
        }
        for event in events {
            while unsettled.len() >= MAX_UNSETTLED {
                if unsettled.next().await.is_none() {
                    break;
                }
            }
            let sendable = Sendable::builder().message(to_message(&event)).build();
            let sent = tokio::select! {
                _ = ctx.cut.cancelled() => break 'serve,
                // Waits for the client's credit.
                sent = sender.send_batchable(sendable) => sent,
            };
            match sent {
                Ok(outcome) => unsettled.push(outcome),
                Err(error) => {
                    tracing::debug!(message = "Consumer link ended.", peer = %ctx.peer, %error);
                    break 'serve;
                }
            }
            next = event.sequence_number + 1;
        }
        if !ctx.auth.covers(&path, Utc::now().timestamp_millis()) {
            close_with = Some(expired(&path));
            break 'serve;
        }
    }
    Counters::dec(&shared.counters.receivers);
    if ctx.cut.is_cancelled() {
        return;
    }
    match close_with {
        Some(error) => {
            Counters::inc(&shared.counters.auth_failures);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sender.close_with_error(error)).await;
        }
        None => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sender.close()).await;
        }
    }
}

fn expired(path: &str) -> definitions::Error {
    definitions::Error::new(
        AmqpError::UnauthorizedAccess,
        format!(
            "Unauthorized access to '{path}': ExpiredToken: the token expired and was not renewed."
        ),
        None,
    )
}

/// Closes a consumer link the emulator cannot serve.
pub(crate) async fn refuse(sender: Sender, condition: AmqpError, why: String) {
    let error = definitions::Error::new(condition, why, None);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sender.close_with_error(error)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};
    use fe2o3_amqp::types::messaging::{Body, MessageId};

    #[test]
    fn consumer_addresses() {
        let p = |path: &str| consumer_partition(path, "telemetry", 4);
        assert_eq!(
            p("telemetry/consumergroups/$default/partitions/3"),
            Some(Ok(3))
        );
        assert!(matches!(
            p("telemetry/consumergroups/$default/partitions/4"),
            Some(Err(_))
        ));
        assert!(matches!(
            p("telemetry/consumergroups/other/partitions/0"),
            Some(Err(_))
        ));
        assert!(matches!(
            p("telemetry/consumergroups/$default"),
            Some(Err(_))
        ));
        assert_eq!(p("telemetry/partitions/0"), None);
        assert_eq!(p("telemetry"), None);
        assert_eq!(p("other/consumergroups/$default/partitions/0"), None);
    }

    #[test]
    fn a_consumer_message_carries_what_the_service_adds() {
        let event = StoredEvent {
            partition: 1,
            sequence_number: 41,
            offset: 9000,
            enqueued_ms: 1_700_000_000_123,
            partition_key: Some("line1".into()),
            message_id: Some("gw-1-9".into()),
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            properties: [("Compression".to_string(), serde_json::json!("GZip"))].into(),
            body: vec![0x1f, 0x8b, 1, 2],
        };
        let bytes = serde_amqp::to_vec(&Serializable(to_message(&event))).unwrap();
        let Deserializable(m): Deserializable<Message<Body<Value>>> =
            serde_amqp::from_slice(&bytes).unwrap();
        let annotations = m.message_annotations.unwrap();
        let get = |k: &str| {
            annotations
                .0
                .iter()
                .find(|(key, _)| format!("{key:?}").contains(k))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("x-opt-sequence-number"), Some(Value::Long(41)));
        assert_eq!(get("x-opt-offset"), Some(Value::String("9000".into())));
        assert_eq!(
            get("x-opt-enqueued-time"),
            Some(Value::Timestamp(Timestamp::from_milliseconds(
                1_700_000_000_123
            )))
        );
        assert_eq!(
            get("x-opt-partition-key"),
            Some(Value::String("line1".into()))
        );
        let props = m.properties.unwrap();
        assert_eq!(props.message_id, Some(MessageId::String("gw-1-9".into())));
        assert_eq!(props.content_encoding.map(|s| s.0), Some("gzip".into()));
        assert_eq!(
            m.application_properties.unwrap().0.get("Compression"),
            Some(&SimpleValue::String("GZip".into()))
        );
        let Body::Data(data) = m.body else { panic!() };
        assert_eq!(data[0].0.to_vec(), event.body);
    }
}
