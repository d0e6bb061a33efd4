//! Compressed array events (`events: {array: N, encoding: gzip}`), end to end: the simulated
//! PLC, the gateway, the hub emulator (which gunzips bodies for its own checks and keeps the
//! compressed bytes for consumers), across an outage and `kill -9`; and Microsoft's
//! `EventHubConsumerClient` reading the compressed events back from the emulator.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tagbridge::sim::hub::ReceivedEvent;
use tagbridge::sink::eventhub::encoding::{BodyEncoding, GZIP_APPLICATION_PROPERTIES};

use crate::support::chain::ChainOptions;
use crate::support::chain::{self, assert_counter_complete, produced_counter_readings};
use crate::support::python;

const DEADLINE: Duration = Duration::from_secs(60);

/// The message id prefix the gateway uses (`HOSTNAME`, as `tagbridge run` does).
fn id_prefix() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "tagbridge".into())
}

/// `<prefix>-<first>-<last>` or `<prefix>-<seq>` → (first, last).
fn id_range(id: &str, prefix: &str) -> Option<(u64, u64)> {
    let rest = id.strip_prefix(prefix)?.strip_prefix('-')?;
    match rest.split_once('-') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => rest.parse().ok().map(|n| (n, n)),
    }
}

/// Checks what marks a gzip event, and that its array holds exactly the readings its message
/// id names; returns the readings.
fn check_gzip_event(e: &ReceivedEvent, prefix: &str) -> Result<Vec<serde_json::Value>, String> {
    if e.content_encoding.as_deref() != Some("gzip") {
        return Err(format!("content-encoding {:?}", e.content_encoding));
    }
    if e.decode_error.is_some() || e.encoded.is_none() {
        return Err(format!("not decoded: {:?}", e.decode_error));
    }
    if e.wire_body().get(..2) != Some(&[0x1f, 0x8b][..]) {
        return Err("the stored body is not gzip".into());
    }
    for (key, value) in GZIP_APPLICATION_PROPERTIES {
        if e.properties.get(key).and_then(|v| v.as_str()) != Some(value) {
            return Err(format!("property {key} = {:?}", e.properties.get(key)));
        }
    }
    let id = e.message_id.as_deref().unwrap_or_default();
    let (first, last) = id_range(id, prefix).ok_or_else(|| format!("message id {id}"))?;
    let body: serde_json::Value =
        serde_json::from_slice(&e.body).map_err(|err| format!("{id}: not JSON: {err}"))?;
    let array = body
        .as_array()
        .ok_or_else(|| format!("{id}: not an array"))?;
    if array.len() as u64 != last - first + 1 {
        return Err(format!("{id} holds {} readings", array.len()));
    }
    Ok(array.clone())
}

mod chained {
    use super::*;

    /// Gzip arrays through a five-second outage: after dropping repeated message ids (the
    /// consumer-side rule within one run) every counter value arrives exactly once and equals
    /// what the PLC held. Then Microsoft's consumer reads every partition from the start,
    /// gunzips, and finds every reading the hub stored, with the service's numbering.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gzip_arrays_survive_an_outage_and_microsofts_consumer_reads_them() {
        let mut options = ChainOptions::default();
        options.sink.readings_per_event = 50;
        options.sink.encoding = BodyEncoding::Gzip;
        let chain = chain::start(options).await;
        assert!(chain.wait_for_counter_steps(2, DEADLINE).await);
        chain.hub.faults().down_for(Duration::from_secs(5));
        assert!(
            crate::support::wait_until(DEADLINE, || chain.journal.depth() >= 5).await,
            "readings did not queue up during the outage"
        );
        assert!(chain.wait_for_counter_steps(25, DEADLINE).await);
        let (summary, events, plc, hub) = chain.stop().await;

        let prefix = id_prefix();
        let mut by_id: HashMap<String, &ReceivedEvent> = HashMap::new();
        let mut unique = Vec::new();
        let mut largest = 0;
        for e in &events {
            let readings = check_gzip_event(e, &prefix).unwrap_or_else(|why| panic!("{why}"));
            largest = largest.max(readings.len());
            let id = e.message_id.clone().unwrap_or_default();
            match by_id.get(&id) {
                // A resent batch: the same bytes under the same id.
                Some(seen) => {
                    assert_eq!(seen.wire_body(), e.wire_body(), "{id} resent differently")
                }
                None => {
                    by_id.insert(id, e);
                    for r in readings {
                        let mut one = e.clone();
                        one.body = serde_json::to_vec(&r).unwrap();
                        unique.push(one);
                    }
                }
            }
        }
        assert!(largest > 1, "no event carried more than one reading");
        assert_eq!(unique.len() as u64, summary.mapping.readings);
        assert_counter_complete(&unique, produced_counter_readings(&summary), true, &plc);
        let stats = hub.stats();
        let json_bytes: usize = events.iter().map(|e| e.body.len()).sum();
        assert!(
            (stats.bytes as usize) < json_bytes,
            "the hub counts wire bytes: {} vs {json_bytes} of JSON",
            stats.bytes
        );

        // Microsoft's consumer, every partition from the start.
        let all: Vec<serde_json::Value> = chain::readings(&events);
        let port = hub.amqps_addr().port().to_string();
        let ca = hub.ca_cert_path().to_string_lossy().to_string();
        let wanted = all.len().to_string();
        let conn = hub.connection_string(tagbridge::sim::hub::DEFAULT_KEY_NAME);
        let out =
            python::run_script_async("hub_sdk_receive.py", &[&conn, &port, &ca, &wanted, "60"])
                .await;
        python::assert_success("hub_sdk_receive.py", &out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut received = Vec::new();
        let mut per_partition: BTreeMap<String, Vec<(i64, i64, i64)>> = BTreeMap::new();
        for line in lines.iter().filter_map(|l| l.get("event")) {
            assert_eq!(line["content_encoding"], "gzip", "{line}");
            assert_eq!(line["properties"]["Compression"], "GZip", "{line}");
            assert_eq!(line["properties"]["Format"], "MULTIJSON", "{line}");
            per_partition
                .entry(line["partition"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push((
                    line["sequence_number"].as_i64().unwrap(),
                    line["offset"].as_str().unwrap().parse::<i64>().unwrap(),
                    line["enqueued_ms"].as_i64().unwrap(),
                ));
            received.extend(line["readings"].as_array().unwrap().iter().cloned());
        }
        let text = |v: &[serde_json::Value]| {
            let mut t: Vec<String> = v.iter().map(|r| r.to_string()).collect();
            t.sort();
            t
        };
        assert_eq!(
            text(&received),
            text(&all),
            "the consumer's readings differ from the hub's\n{stdout}"
        );
        let props = lines
            .iter()
            .find_map(|l| l.get("partitions"))
            .expect("partition properties");
        for (partition, numbers) in &per_partition {
            // Sequence numbers from 0 with no gap, offsets growing, enqueued times in order.
            let seqs: Vec<i64> = numbers.iter().map(|n| n.0).collect();
            assert_eq!(
                seqs,
                (0..numbers.len() as i64).collect::<Vec<_>>(),
                "{partition}"
            );
            assert!(numbers
                .windows(2)
                .all(|w| w[0].1 < w[1].1 && w[0].2 <= w[1].2));
            let p = &props[partition];
            assert_eq!(
                p["last_enqueued_sequence_number"].as_i64(),
                Some(numbers.len() as i64 - 1),
                "{p}"
            );
            assert_eq!(p["beginning_sequence_number"].as_i64(), Some(0), "{p}");
            assert_eq!(p["is_empty"], false, "{p}");
        }
        hub.shutdown().await;
        plc.shutdown().await;
    }
}

/// `tagbridge run` with gzip arrays, killed with SIGKILL at random moments and restarted.
mod killed {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use rand::{Rng, SeedableRng};

    use super::check_gzip_event;
    use crate::support;
    use crate::support::child_chain::{Rig, RigOptions, HOSTNAME as PREFIX};

    const SENSORS: usize = 50;

    /// kill -9 at random moments, restart, four times, then a clean stop. Every reading the
    /// gateway spooled arrives (inside a gzip array whose id names its spool sequence numbers),
    /// true to the PLC; a reading arrives twice only if it was unacknowledged at a kill.
    #[tokio::test]
    async fn kill_9_and_restart_with_gzip_arrays_loses_no_spooled_reading() {
        let rig = Rig::start(RigOptions {
            sensors: SENSORS,
            eventhub_extra: "    events: {array: 20, encoding: gzip}\n",
            spool_extra: "",
        })
        .await;
        let seed: u64 = rand::thread_rng().gen();
        eprintln!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut kills = Vec::new();
        for round in 0..4 {
            let mut child = rig.gateway();
            let base = rig.hub.stats().events;
            let target = if round == 1 { 0 } else { rng.gen_range(1..60) };
            let reached = support::wait_until(Duration::from_secs(90), || {
                rig.hub.stats().events >= base + target
            })
            .await;
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            assert!(
                reached,
                "round {round}: no {target} events\n{}",
                rig.log_tail()
            );
            let st = rig.status();
            kills.push((st.acked, st.next_seq));
        }
        let child = rig.gateway();
        let drained = support::wait_until(Duration::from_secs(120), || {
            let st = rig.status();
            st.acked > kills.last().map_or(0, |k| k.1) && st.depth == 0
        })
        .await;
        rig.stop(child).await;
        assert!(drained, "backlog not drained\n{}", rig.log_tail());

        // Every reading by spool sequence number: (sensor, timestamp, value) and its count.
        let mut count: BTreeMap<u64, u32> = BTreeMap::new();
        let mut content: BTreeMap<u64, (String, String, i64)> = BTreeMap::new();
        let mut problems = Vec::new();
        for e in rig.hub.events() {
            let readings = match check_gzip_event(&e, PREFIX) {
                Ok(r) => r,
                Err(why) => {
                    problems.push(why);
                    continue;
                }
            };
            let id = e.message_id.clone().unwrap_or_default();
            let (first, _) = super::id_range(&id, PREFIX).unwrap_or_default();
            for (i, r) in readings.iter().enumerate() {
                let seq = first + i as u64;
                let sensor = r["sensor_id"].as_str().unwrap_or_default().to_string();
                let at = r["timestamp"].as_str().unwrap_or_default().to_string();
                let value = r["value"].as_i64().unwrap_or(-1);
                *count.entry(seq).or_insert(0) += 1;
                if let Some(prev) = content.get(&seq) {
                    if *prev != (sensor.clone(), at.clone(), value) {
                        problems.push(format!("seq {seq} delivered as {prev:?} and {r}"));
                    }
                    continue;
                }
                let index = sensor
                    .strip_prefix('c')
                    .and_then(|s| s.parse::<usize>().ok());
                let when = DateTime::parse_from_rfc3339(&at).map(|t| t.with_timezone(&Utc));
                match (index, when) {
                    (Some(index), Ok(when)) if index < SENSORS => {
                        let held = rig.held(index, when);
                        if !(held - 2..=held).contains(&value) {
                            problems.push(format!("seq {seq}: {r}, but the PLC held {held}"));
                        }
                    }
                    _ => problems.push(format!("seq {seq}: unexpected reading {r}")),
                }
                content.insert(seq, (sensor, at, value));
            }
        }
        assert!(
            problems.is_empty(),
            "{:?}",
            &problems[..problems.len().min(10)]
        );

        let last = rig.status();
        let starts = rig.run_starts();
        assert!(!starts.is_empty(), "{}", rig.log_tail());
        let mut lost = Vec::new();
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(last.next_seq);
            let end = kills
                .iter()
                .map(|k| k.1)
                .filter(|&n| n >= start && n <= end)
                .min()
                .unwrap_or(end);
            lost.extend((start..end).filter(|s| *s <= last.acked && !count.contains_key(s)));
        }
        assert!(
            lost.is_empty(),
            "{} spooled readings never arrived, e.g. {:?}; runs start at {starts:?}; kills (acked, next) {kills:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        let bad_dups: Vec<u64> = count
            .iter()
            .filter(|&(_, &n)| n > 1)
            .map(|(&s, _)| s)
            .filter(|&s| !kills.iter().any(|&(acked, next)| s > acked && s < next))
            .collect();
        assert!(
            bad_dups.is_empty(),
            "duplicated though acknowledged: {bad_dups:?}"
        );
        eprintln!(
            "{} readings in {} gzip events over {} runs, {} delivered twice after kills",
            content.len(),
            rig.hub.stats().events,
            starts.len(),
            count.values().filter(|&&n| n > 1).count()
        );
        rig.hub.shutdown().await;
        rig.plc.shutdown().await;
    }
}
