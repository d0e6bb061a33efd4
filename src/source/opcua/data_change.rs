//! Decoding of DataChangeNotifications, the bulk of what a subscription receives, ahead of
//! async-opcua's generated decoder.
//!
//! The generated decoder turns each timestamp (two per value) into a date through the calendar:
//! it builds 1601-01-01 from year, month and day, adds the ticks as a duration and subtracts
//! the client clock offset, each step a checked chrono operation. At 100 000 values a second
//! that was about 15 % of the gateway's CPU. [`DataChangeLoader`] reads the same bytes into the
//! same [`DataChangeNotification`] and converts ticks to Unix seconds with integer arithmetic;
//! everything else (variants, status codes, diagnostics, the decoding limits) goes through
//! async-opcua's own decoders.
//!
//! Invariant: for any input, the result equals the generated decoder's (both `Ok` and equal,
//! or both `Err`); the tests below check that on notifications written by hand with any
//! encoding mask, on every truncation of them and on random bytes.

use std::io::Read;
use std::sync::Arc;

use chrono::TimeDelta;
use opcua::types::{
    BinaryDecodable, Context, DataChangeNotification, DataValue, DateTime, DiagnosticInfo,
    DynEncodable, EncodingResult, Error, MonitoredItemNotification, NodeId, ObjectId, StatusCode,
    TypeLoader, TypeLoaderCollection, TypeLoaderPriority, Variant,
};

/// Makes a session's publish responses decode their DataChangeNotifications here: puts
/// [`DataChangeLoader`] ahead of the loaders in `loaders` (a session's encoding context).
///
/// `TypeLoaderCollection::add` puts a loader after those of the same priority, and
/// async-opcua's loader of its generated types already has the first one (`Core`), so the
/// collection is rebuilt with ours in front and the others after it in their order.
pub fn put_first(loaders: &mut TypeLoaderCollection) {
    let mut first = TypeLoaderCollection::new_empty();
    first.add(Arc::new(DataChangeLoader));
    for loader in loaders.iter() {
        first.add(loader.clone());
    }
    *loaders = first;
}

/// The [`TypeLoader`] that decodes DataChangeNotifications; it declines every other type.
#[derive(Debug, Default)]
pub struct DataChangeLoader;

impl TypeLoader for DataChangeLoader {
    fn load_from_binary(
        &self,
        node_id: &NodeId,
        stream: &mut dyn Read,
        ctx: &Context<'_>,
        _length: Option<usize>,
    ) -> Option<EncodingResult<Box<dyn DynEncodable>>> {
        let binary = ObjectId::DataChangeNotification_Encoding_DefaultBinary as u32;
        if node_id.namespace != 0 || node_id.as_u32() != Some(binary) {
            return None;
        }
        Some(decode(stream, ctx).map(|n| Box::new(n) as Box<dyn DynEncodable>))
    }

    /// The generated loader's, which handles the same type; [`put_first`] orders them.
    fn priority(&self) -> TypeLoaderPriority {
        TypeLoaderPriority::Core
    }
}

/// One DataChangeNotification's body (Part 4, 7.25.2): its monitored item notifications, then
/// its diagnostic infos.
fn decode(stream: &mut dyn Read, ctx: &Context<'_>) -> EncodingResult<DataChangeNotification> {
    let monitored_items = match array_length(stream, ctx)? {
        None => None,
        Some(len) => {
            let mut items = Vec::with_capacity(len);
            let mut recent = Recent::default();
            for _ in 0..len {
                items.push(MonitoredItemNotification {
                    client_handle: u32::decode(stream, ctx)?,
                    value: data_value(stream, ctx, &mut recent)?,
                });
            }
            Some(items)
        }
    };
    let diagnostic_infos = Option::<Vec<DiagnosticInfo>>::decode(stream, ctx)?;
    Ok(DataChangeNotification {
        monitored_items,
        diagnostic_infos,
    })
}

/// An array's length: `None` for a null array (-1), an error below that or past the decoding
/// options' `max_array_length`.
fn array_length(stream: &mut dyn Read, ctx: &Context<'_>) -> EncodingResult<Option<usize>> {
    let len = i32::decode(stream, ctx)?;
    match usize::try_from(len) {
        Err(_) if len == -1 => Ok(None),
        Err(_) => Err(Error::decoding(
            "Array length is negative value and invalid",
        )),
        Ok(len) if len > ctx.options().max_array_length => Err(Error::decoding(format!(
            "Array length {len} exceeds decoding limit {}",
            ctx.options().max_array_length
        ))),
        Ok(len) => Ok(Some(len)),
    }
}

/// The last source and server timestamps decoded in a notification, as ticks and as the
/// DateTimes made of them. The values of one notification mostly share them (a PLC's scan, a
/// server's sampling pass), and async-opcua's DateTime costs more to build (its constructor
/// rounds through chrono's calendar) than the rest of a value to decode.
#[derive(Default)]
struct Recent {
    source: Option<(i64, DateTime)>,
    server: Option<(i64, DateTime)>,
}

/// A DataValue (Part 6, 5.2.2.17): an encoding mask, then the fields it names. Picoseconds
/// without their timestamp are dropped, as async-opcua does.
fn data_value(
    stream: &mut dyn Read,
    ctx: &Context<'_>,
    recent: &mut Recent,
) -> EncodingResult<DataValue> {
    const VALUE: u8 = 0x01;
    const STATUS: u8 = 0x02;
    const SOURCE_TIMESTAMP: u8 = 0x04;
    const SERVER_TIMESTAMP: u8 = 0x08;
    const SOURCE_PICOSECONDS: u8 = 0x10;
    const SERVER_PICOSECONDS: u8 = 0x20;
    let mask = u8::decode(stream, ctx)?;
    let has = |bit: u8| mask & bit != 0;
    let value = has(VALUE)
        .then(|| Variant::decode(stream, ctx))
        .transpose()?;
    let status = has(STATUS)
        .then(|| u32::decode(stream, ctx).map(StatusCode::from))
        .transpose()?;
    // A source timestamp is never corrected for the client's clock offset.
    let source_timestamp = has(SOURCE_TIMESTAMP)
        .then(|| date_time(stream, ctx, TimeDelta::zero(), &mut recent.source))
        .transpose()?;
    let source_picoseconds = has(SOURCE_PICOSECONDS)
        .then(|| u16::decode(stream, ctx))
        .transpose()?;
    let server_timestamp = has(SERVER_TIMESTAMP)
        .then(|| date_time(stream, ctx, ctx.options().client_offset, &mut recent.server))
        .transpose()?;
    let server_picoseconds = has(SERVER_PICOSECONDS)
        .then(|| u16::decode(stream, ctx))
        .transpose()?;
    Ok(DataValue {
        value,
        status,
        source_picoseconds: source_picoseconds.filter(|_| source_timestamp.is_some()),
        source_timestamp,
        server_picoseconds: server_picoseconds.filter(|_| server_timestamp.is_some()),
        server_timestamp,
    })
}

/// A DateTime: 100 ns ticks since 1601-01-01, less `offset`; `last` is the field's previous
/// one in this notification (the same `offset`), reused when the ticks are the same.
fn date_time(
    stream: &mut dyn Read,
    ctx: &Context<'_>,
    offset: TimeDelta,
    last: &mut Option<(i64, DateTime)>,
) -> EncodingResult<DateTime> {
    let ticks = i64::decode(stream, ctx)?;
    if let Some((seen, at)) = *last {
        if seen == ticks {
            return Ok(at);
        }
    }
    let at = from_ticks(ticks);
    let at = if offset.is_zero() { at } else { at - offset };
    *last = Some((ticks, at));
    Ok(at)
}

/// The DateTime of `ticks`; `i64::MAX` is the end of time, as async-opcua reads it.
fn from_ticks(ticks: i64) -> DateTime {
    const TICKS_PER_SECOND: i64 = 10_000_000;
    /// 1601-01-01T00:00:00Z in Unix seconds.
    const EPOCH_UNIX: i64 = -11_644_473_600;
    if ticks == i64::MAX {
        return DateTime::endtimes();
    }
    // |ticks| / 10^7 is under 10^12 seconds, well inside what chrono represents (±262 000
    // years), so this does not overflow and the fallback is never taken.
    let secs = ticks.div_euclid(TICKS_PER_SECOND) + EPOCH_UNIX;
    let nanos = (ticks.rem_euclid(TICKS_PER_SECOND) * 100) as u32;
    match chrono::DateTime::from_timestamp(secs, nanos) {
        Some(at) => DateTime::from(at),
        None => DateTime::from(ticks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{BinaryEncodable, ContextOwned, DecodingOptions, NamespaceMap, UAString};
    use proptest::prelude::*;

    fn context(offset_ms: i64) -> ContextOwned {
        let options = DecodingOptions {
            client_offset: TimeDelta::milliseconds(offset_ms),
            ..DecodingOptions::default()
        };
        ContextOwned::new_default(NamespaceMap::new(), options)
    }

    /// The generated decoder's result and ours for the same bytes.
    fn both(
        bytes: &[u8],
        ctx: &ContextOwned,
    ) -> (
        EncodingResult<DataChangeNotification>,
        EncodingResult<DataChangeNotification>,
    ) {
        let ctx = ctx.context();
        let upstream = DataChangeNotification::decode(&mut &bytes[..], &ctx);
        let ours = decode(&mut &bytes[..], &ctx);
        (upstream, ours)
    }

    fn variant() -> impl Strategy<Value = Variant> {
        prop_oneof![
            any::<f64>().prop_map(Variant::Double),
            any::<i32>().prop_map(Variant::Int32),
            any::<bool>().prop_map(Variant::Boolean),
            ".{0,12}".prop_map(|s| Variant::String(UAString::from(s))),
            prop::collection::vec(any::<u16>(), 0..4).prop_map(Variant::from),
        ]
    }

    /// Ticks across the whole range, and the edges the conversion treats specially.
    fn ticks() -> impl Strategy<Value = i64> {
        prop_oneof![
            any::<i64>(),
            Just(i64::MAX),
            Just(i64::MIN),
            Just(0),
            Just(-1),
            Just(1),
            // 2025 and thereabouts, the common case.
            133_800_000_000_000_000i64..134_000_000_000_000_000,
            // Repeated, as in the values of one notification (and across the two fields).
            Just(133_900_000_000_000_000),
            Just(133_900_000_010_000_000),
        ]
    }

    /// One monitored item notification as bytes, written by hand so that any encoding mask
    /// occurs: picoseconds without their timestamp, bits no version of the spec defines.
    fn item() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<u32>(),
            any::<u8>(),
            variant(),
            any::<u32>(),
            ticks(),
            any::<u16>(),
            ticks(),
            any::<u16>(),
        )
            .prop_map(
                |(handle, mask, value, status, source, source_ps, server, server_ps)| {
                    let ctx = context(0);
                    let mut bytes = handle.to_le_bytes().to_vec();
                    bytes.push(mask);
                    if mask & 0x01 != 0 {
                        value
                            .encode(&mut bytes, &ctx.context())
                            .expect("a variant encodes");
                    }
                    if mask & 0x02 != 0 {
                        bytes.extend_from_slice(&status.to_le_bytes());
                    }
                    if mask & 0x04 != 0 {
                        bytes.extend_from_slice(&source.to_le_bytes());
                    }
                    if mask & 0x10 != 0 {
                        bytes.extend_from_slice(&source_ps.to_le_bytes());
                    }
                    if mask & 0x08 != 0 {
                        bytes.extend_from_slice(&server.to_le_bytes());
                    }
                    if mask & 0x20 != 0 {
                        bytes.extend_from_slice(&server_ps.to_le_bytes());
                    }
                    bytes
                },
            )
    }

    /// A DataChangeNotification's bytes: a null or short list of items, then a null or short
    /// list of diagnostic infos.
    fn notification() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::option::of(prop::collection::vec(item(), 0..6)),
            prop::option::of(prop::collection::vec(any::<i32>(), 0..2)),
        )
            .prop_map(|(items, infos)| {
                let mut bytes = Vec::new();
                match items {
                    None => bytes.extend_from_slice(&(-1i32).to_le_bytes()),
                    Some(items) => {
                        bytes.extend_from_slice(&(items.len() as i32).to_le_bytes());
                        items.iter().for_each(|i| bytes.extend_from_slice(i));
                    }
                }
                let infos = infos.map(|codes| {
                    codes
                        .into_iter()
                        .map(|code| DiagnosticInfo {
                            symbolic_id: Some(code),
                            ..DiagnosticInfo::default()
                        })
                        .collect::<Vec<_>>()
                });
                infos
                    .encode(&mut bytes, &context(0).context())
                    .expect("diagnostic infos encode");
                bytes
            })
    }

    proptest! {
        #[test]
        fn decodes_what_the_generated_decoder_decodes(
            bytes in notification(),
            offset_ms in prop_oneof![Just(0i64), -86_400_000i64..86_400_000],
        ) {
            let ctx = context(offset_ms);
            let (upstream, ours) = both(&bytes, &ctx);
            prop_assert!(upstream.is_ok(), "the generated decoder reads what was written");
            prop_assert_eq!(ours.ok(), upstream.ok());
            // Every truncation fails in both.
            for cut in 0..bytes.len() {
                let (upstream, ours) = both(&bytes[..cut], &ctx);
                prop_assert!(upstream.is_err() && ours.is_err(), "cut at {}", cut);
            }
        }

        #[test]
        fn random_bytes_fail_or_decode_alike(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
            let ctx = context(0);
            let (upstream, ours) = both(&bytes, &ctx);
            prop_assert_eq!(upstream.ok(), ours.ok());
        }

        #[test]
        fn ticks_convert_as_async_opcua_converts_them(ticks in ticks()) {
            prop_assert_eq!(from_ticks(ticks), DateTime::from(ticks));
        }
    }

    #[test]
    fn limits_and_null_arrays_are_read_as_async_opcua_reads_them() {
        let mut ctx = context(0);
        ctx.options_mut().max_array_length = 2;
        for len in [-2i32, -1, 0, 2, 3] {
            let mut bytes = len.to_le_bytes().to_vec();
            for _ in 0..len.max(0) {
                bytes.extend_from_slice(&7u32.to_le_bytes());
                bytes.push(0); // an empty DataValue
            }
            bytes.extend_from_slice(&(-1i32).to_le_bytes()); // no diagnostic infos
            let (upstream, ours) = both(&bytes, &ctx);
            assert_eq!(upstream.is_ok(), ours.is_ok(), "length {len}");
            assert_eq!(upstream.ok(), ours.ok(), "length {len}");
        }
    }

    #[test]
    fn put_first_puts_the_loader_ahead_of_async_opcuas_own() {
        let mut ctx = context(0);
        let before = ctx.loaders_mut().iter().count();
        put_first(ctx.loaders_mut());
        let loaders: Vec<_> = ctx.loaders_mut().iter().cloned().collect();
        assert_eq!(loaders.len(), before + 1);
        // Only ours declines an event notification list of the core namespace.
        let event = NodeId::from(ObjectId::EventNotificationList_Encoding_DefaultBinary);
        let mut bytes = Vec::new();
        opcua::types::EventNotificationList::default()
            .encode(&mut bytes, &ctx.context())
            .expect("an empty list encodes");
        let declines = |loader: &Arc<dyn TypeLoader>| {
            loader
                .load_from_binary(&event, &mut &bytes[..], &ctx.context(), None)
                .is_none()
        };
        assert!(declines(&loaders[0]));
        assert!(
            !declines(&loaders[1]),
            "async-opcua's own loader comes next"
        );
    }

    #[test]
    fn the_loader_takes_only_data_change_notifications() {
        let ctx = context(0);
        let ctx = ctx.context();
        let mut bytes = Vec::new();
        DataChangeNotification::default()
            .encode(&mut bytes, &ctx)
            .expect("an empty notification encodes");
        let data_change = NodeId::from(ObjectId::DataChangeNotification_Encoding_DefaultBinary);
        let event = NodeId::from(ObjectId::EventNotificationList_Encoding_DefaultBinary);
        let loaded = DataChangeLoader.load_from_binary(&data_change, &mut &bytes[..], &ctx, None);
        assert!(matches!(loaded, Some(Ok(_))));
        assert!(DataChangeLoader
            .load_from_binary(&event, &mut &bytes[..], &ctx, None)
            .is_none());
        let other_namespace = NodeId::new(
            2,
            ObjectId::DataChangeNotification_Encoding_DefaultBinary as u32,
        );
        assert!(DataChangeLoader
            .load_from_binary(&other_namespace, &mut &bytes[..], &ctx, None)
            .is_none());
    }
}
