//! The hub's event links: a link to `HUB` or `HUB/Partitions/N` receives while a token put on
//! its connection's `$cbs` covers it; each transfer (single or batch message) is decoded into
//! events, throttled or recorded, then settled. Application properties keep their AMQP types.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::RecvError;
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::message::__private::Deserializable;
use fe2o3_amqp::types::messaging::{AmqpValue, Body, Message, MessageAnnotations, MessageId};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::Receiver;
use tokio::task::JoinHandle;

use super::context::{ConnCtx, CLOSE_TIMEOUT};
use super::decode::decode_body;
use super::store::{Counters, ReceivedEvent};
use super::Shared;

/// Event Hubs' batch message format (the SDKs' `0x80013700`).
pub const BATCH_MESSAGE_FORMAT: u32 = 0x8001_3700;
/// The annotation carrying the partition key.
const PARTITION_KEY: &str = "x-opt-partition-key";
/// Event Hubs' throttling condition.
pub const SERVER_BUSY: &str = "com.microsoft:server-busy";
/// How often an open link re-checks that its token is still valid.
const TOKEN_CHECK: Duration = Duration::from_millis(200);

pub(crate) fn unauthorized(shared: &Shared, path: &str, why: &str) -> definitions::Error {
    definitions::Error::new(
        AmqpError::UnauthorizedAccess,
        format!(
            "Unauthorized access. 'Send' claim(s) are required to perform this operation. Resource: 'sb://localhost/{path}' on hub '{}': {why}.",
            shared.hub
        ),
        None,
    )
}

pub(crate) async fn close_receiver(receiver: Receiver, error: definitions::Error) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, receiver.close_with_error(error)).await;
}

/// Receives events on one link until the peer detaches, the token lapses or the connection is
/// cut.
///
/// Transfers are read as they come: each is stamped with its arrival and decoded on a blocking
/// thread while the next is read, as the service takes in a batch while it stores the one before
/// (decoding thousands of events inline made every transfer queued behind one look late).
/// Settlement stays in order of arrival.
pub(crate) async fn events(
    mut receiver: Receiver,
    ctx: Arc<ConnCtx>,
    path: String,
    partition: Option<u32>,
) {
    let shared = &ctx.shared;
    Counters::inc(&shared.counters.senders);
    let mut check = tokio::time::interval(TOKEN_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut close_with = None;
    let mut decoding: VecDeque<Decoding> = VecDeque::new();
    loop {
        tokio::select! {
            biased;
            // Cut by a fault or shutdown: no polite close.
            _ = ctx.cut.cancelled() => break,
            // The token may have expired.
            _ = check.tick() => {
                if !ctx.auth.covers(&path, Utc::now().timestamp_millis()) {
                    Counters::inc(&shared.counters.auth_failures);
                    close_with = Some(unauthorized(shared, &path, "ExpiredToken: the token expired and was not renewed"));
                    break;
                }
            }
            (info, decoded) = next_decoded(&mut decoding), if !decoding.is_empty() => {
                settle(&receiver, info, decoded, &ctx).await;
            }
            delivery = receiver.recv::<Body<Value>>(), if decoding.len() < DECODE_AHEAD => match delivery {
                Ok(delivery) => decoding.push_back(start_decoding(delivery, &ctx, partition)),
                Err(RecvError::MessageSizeExceeded(e)) => {
                    // fe2o3 has detached the link with amqp:link:message-size-exceeded.
                    Counters::inc(&shared.counters.oversize);
                    tracing::info!(message = "Transfer over the max message size refused.", size = e.size, max = e.max_size);
                    break;
                }
                Err(error) => {
                    tracing::debug!(message = "Event link ended.", peer = %ctx.peer, %error);
                    break;
                }
            },
        }
    }
    // Transfers still being decoded stay unsettled, as with a real outage: the sender resends.
    Counters::dec(&shared.counters.senders);
    if let Some(error) = close_with {
        close_receiver(receiver, error).await;
    } else if !ctx.cut.is_cancelled() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, receiver.close()).await;
    }
}

/// Transfers read ahead of the one being settled, at most.
const DECODE_AHEAD: usize = 4;

/// A transfer decoded: its events and their output lines ([`super::store::Store::lines`]).
type Decoded = (Vec<ReceivedEvent>, Option<Vec<String>>);
/// A transfer being decoded: its delivery (to settle) and its events.
type Decoding = (DeliveryInfo, JoinHandle<Result<Decoded, String>>);

/// Stamps a transfer's arrival and decodes it on a blocking thread.
fn start_decoding(
    delivery: fe2o3_amqp::link::delivery::Delivery<Body<Value>>,
    ctx: &Arc<ConnCtx>,
    partition: Option<u32>,
) -> Decoding {
    // One enqueued time for the whole transfer, as Event Hubs gives a batch: taken when the
    // transfer is in, not as each of its thousands of events is decoded after it.
    let arrived = Utc::now();
    let format = delivery.message_format().unwrap_or(0);
    let (info, message) = delivery.into_parts();
    let shared = ctx.shared.clone();
    let decoding = tokio::task::spawn_blocking(move || {
        let mut events = decode_events(message, format, partition, &shared, arrived)?;
        events.iter_mut().for_each(decode_body);
        let lines = shared.store.lines(&events);
        Ok((events, lines))
    });
    (info, decoding)
}

/// The oldest transfer being decoded, once it is.
async fn next_decoded(
    decoding: &mut VecDeque<Decoding>,
) -> (DeliveryInfo, Result<Decoded, String>) {
    let Some((_, handle)) = decoding.front_mut() else {
        return std::future::pending().await;
    };
    let decoded = match handle.await {
        Ok(decoded) => decoded,
        Err(error) => Err(format!("the transfer could not be decoded: {error}")),
    };
    match decoding.pop_front() {
        Some((info, _)) => (info, decoded),
        None => std::future::pending().await,
    }
}

/// Throttles or records a decoded transfer, then settles it.
async fn settle(
    receiver: &Receiver,
    info: DeliveryInfo,
    decoded: Result<Decoded, String>,
    ctx: &Arc<ConnCtx>,
) {
    let shared = &ctx.shared;
    let (events, lines) = match decoded {
        Ok(decoded) => decoded,
        Err(why) => {
            let error = definitions::Error::new(AmqpError::DecodeError, why, None);
            let _ = receiver.reject(info, error).await;
            return;
        }
    };
    let bytes: usize = events.iter().map(|e| e.wire_body().len()).sum();
    if !shared.faults.admit(events.len() as u64, bytes as u64) {
        Counters::inc(&shared.counters.throttled);
        let error = definitions::Error::new(
            ErrorCondition::Custom(Symbol::from(SERVER_BUSY)),
            "The request was terminated because the entity is being throttled by the emulator (throttle_above). Please wait and retry."
                .to_string(),
            None,
        );
        let _ = receiver.reject(info, error).await;
        return;
    }
    shared.accept_decoded(events, lines).await;
    let (delay, released) = shared.faults.disposition_delay();
    if delay.is_zero() {
        let _ = receiver.accept(info).await;
    } else {
        let disposer = receiver.disposer();
        let cut = ctx.cut.clone();
        shared.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => { let _ = disposer.accept(info).await; }
                // The fault was cleared: settle now.
                _ = released.cancelled() => { let _ = disposer.accept(info).await; }
                // Cut meanwhile: the delivery stays unsettled, as with a real outage.
                _ = cut.cancelled() => {}
            }
        });
    }
}

/// One AMQP message (single or batch) as events, all enqueued at `arrived`.
pub(crate) fn decode_events(
    message: Message<Body<Value>>,
    format: u32,
    partition: Option<u32>,
    shared: &Shared,
    arrived: DateTime<Utc>,
) -> Result<Vec<ReceivedEvent>, String> {
    let outer_key = partition_key(&message.message_annotations);
    if format != BATCH_MESSAGE_FORMAT {
        return Ok(vec![to_event(message, None, partition, shared, arrived)]);
    }
    let Body::Data(sections) = message.body else {
        return Err("a batch message (format 0x80013700) must have data sections".into());
    };
    let mut events = Vec::with_capacity(sections.len());
    for (i, section) in sections.into_iter().enumerate() {
        let inner: Deserializable<Message<Body<Value>>> = serde_amqp::from_slice(&section.0)
            .map_err(|e| format!("data section {i} of the batch is not an AMQP message: {e}"))?;
        events.push(to_event(
            inner.0,
            outer_key.clone(),
            partition,
            shared,
            arrived,
        ));
    }
    Ok(events)
}

fn partition_key(annotations: &Option<MessageAnnotations>) -> Option<String> {
    annotations.as_ref().and_then(|a| {
        a.0.iter().find_map(|(k, v)| match k {
            OwnedKey::Symbol(s) if s.as_str() == PARTITION_KEY => Some(value_text(v)),
            _ => None,
        })
    })
}

fn to_event(
    message: Message<Body<Value>>,
    fallback_key: Option<String>,
    partition: Option<u32>,
    shared: &Shared,
    arrived: DateTime<Utc>,
) -> ReceivedEvent {
    let partition_key = partition_key(&message.message_annotations).or(fallback_key);
    let (message_id, content_type, content_encoding) = match &message.properties {
        Some(p) => (
            p.message_id.as_ref().map(message_id_text),
            p.content_type.as_ref().map(|c| c.as_str().to_string()),
            p.content_encoding.as_ref().map(|c| c.as_str().to_string()),
        ),
        None => (None, None, None),
    };
    let properties: BTreeMap<String, serde_json::Value> = message
        .application_properties
        .map(|ap| {
            ap.0.into_iter()
                .map(|(k, v)| (k, value_json(&Value::from(v))))
                .collect()
        })
        .unwrap_or_default();
    let body = match message.body {
        Body::Data(sections) => sections.into_iter().flat_map(|d| d.0.into_vec()).collect(),
        Body::Value(AmqpValue(v)) => match v {
            Value::Binary(b) => b.into_vec(),
            other => value_text(&other).into_bytes(),
        },
        Body::Sequence(seq) => format!("{seq:?}").into_bytes(),
        Body::Empty => Vec::new(),
    };
    let partition =
        partition.unwrap_or_else(|| shared.store.assign_partition(partition_key.as_deref()));
    ReceivedEvent {
        body,
        partition_key,
        message_id,
        properties,
        content_type,
        content_encoding,
        encoded: None,
        decode_error: None,
        partition,
        arrived,
    }
}

fn message_id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid_text(u.as_inner()),
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

fn uuid_text(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A property or annotation value as text: strings as they are, numbers in decimal,
/// timestamps in milliseconds, anything else in its debug form.
/// An application property as JSON, keeping its AMQP type where JSON has one.
pub(crate) fn value_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Ubyte(n) => J::from(*n),
        Value::Ushort(n) => J::from(*n),
        Value::Uint(n) => J::from(*n),
        Value::Ulong(n) => J::from(*n),
        Value::Byte(n) => J::from(*n),
        Value::Short(n) => J::from(*n),
        Value::Int(n) => J::from(*n),
        Value::Long(n) => J::from(*n),
        Value::Float(f) => serde_json::Number::from_f64(f64::from(f.into_inner()))
            .map_or_else(|| J::String(value_text(v)), J::Number),
        Value::Double(f) => serde_json::Number::from_f64(f.into_inner())
            .map_or_else(|| J::String(value_text(v)), J::Number),
        Value::Timestamp(t) => chrono::DateTime::from_timestamp_millis(t.milliseconds())
            .map_or_else(
                || J::String(value_text(v)),
                |at| J::String(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            ),
        other => J::String(value_text(other)),
    }
}

pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Symbol(s) => s.as_str().to_string(),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Ubyte(n) => n.to_string(),
        Value::Ushort(n) => n.to_string(),
        Value::Uint(n) => n.to_string(),
        Value::Ulong(n) => n.to_string(),
        Value::Byte(n) => n.to_string(),
        Value::Short(n) => n.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Long(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Double(f) => f.to_string(),
        Value::Char(c) => c.to_string(),
        Value::Timestamp(t) => t.milliseconds().to_string(),
        Value::Uuid(u) => uuid_text(u.as_inner()),
        Value::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_in_canonical_form() {
        let b = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
            0x77, 0x88,
        ];
        assert_eq!(uuid_text(&b), "12345678-9abc-def0-1122-334455667788");
    }

    #[test]
    fn properties_keep_their_types() {
        use fe2o3_amqp::types::primitives::Timestamp;
        assert_eq!(value_json(&Value::Int(0)), serde_json::json!(0));
        assert_eq!(value_json(&Value::Long(-3)), serde_json::json!(-3));
        assert_eq!(value_json(&Value::Bool(true)), serde_json::json!(true));
        assert_eq!(
            value_json(&Value::Double(1.5.into())),
            serde_json::json!(1.5)
        );
        assert_eq!(
            value_json(&Value::Double(f64::NAN.into())),
            serde_json::json!("NaN")
        );
        assert_eq!(
            value_json(&Value::String("0".into())),
            serde_json::json!("0")
        );
        assert_eq!(
            value_json(&Value::Timestamp(Timestamp::from_milliseconds(5))),
            serde_json::json!("1970-01-01T00:00:00.005Z")
        );
    }

    #[test]
    fn values_as_text() {
        use fe2o3_amqp::types::primitives::Timestamp;
        assert_eq!(value_text(&Value::String("a".into())), "a");
        assert_eq!(value_text(&Value::Long(-3)), "-3");
        assert_eq!(value_text(&Value::Bool(true)), "true");
        assert_eq!(
            value_text(&Value::Timestamp(Timestamp::from_milliseconds(5))),
            "5"
        );
    }
}
