//! Throughput of the Event Hub emulator over TLS: one fe2o3 connection sends 100-byte JSON
//! events, 1 or 100 per message (batch format 0x80013700), with 1 or 8 messages unsettled, and
//! the table shows events/s and messages/s as the emulator counted them.
//!
//! ```text
//! cargo run --release --example hub_throughput -- [SECONDS_PER_ROW]
//! ```
//! The emulator runs in the same process (its own runtime threads), memory-only, no output file.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tagbridge::sim::hub::auth::SAS_TOKEN_TYPE;
use tagbridge::sim::hub::client::{OutEvent, TestClient, TokenSpec};
use tagbridge::sim::hub::{Hub, HubConfig, DEFAULT_KEY, DEFAULT_KEY_NAME};
use tagbridge::sink::eventhub::sas;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let hub = Hub::start(HubConfig {
        retain_events: 0,
        ..Default::default()
    })
    .await?;
    let audience = format!("sb://localhost:{}/{}", hub.amqps_addr().port(), hub.hub());
    let expiry = chrono::Utc::now().timestamp() + 3600;
    let token = sas::sign(&audience, DEFAULT_KEY_NAME, DEFAULT_KEY, expiry).token;
    let body = format!(
        "{{\"sensor_id\":\"line1/press/temperature\",\"timestamp\":\"2026-01-01T00:00:00Z\",\"v\":{}}}",
        "1".repeat(26)
    );
    let event = OutEvent {
        body: body.into_bytes(),
        partition_key: Some("line1".into()),
        ..Default::default()
    };
    println!(
        "hub emulator over TLS, one connection, {}-byte events, {seconds} s per row",
        event.body.len()
    );
    println!("| events/message | in flight | events/s | messages/s | refused |");
    println!("|---:|---:|---:|---:|---:|");
    for (per_message, in_flight) in [(1usize, 1usize), (1, 8), (100, 1), (100, 8)] {
        let mut client = TestClient::connect(
            hub.amqps_addr(),
            Some(hub.ca_cert_path()),
            TokenSpec {
                kind: SAS_TOKEN_TYPE,
                value: &token,
                audience: &audience,
            },
            hub.hub(),
        )
        .await?;
        let batch = vec![event.clone(); per_message];
        let before = hub.stats();
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(seconds);
        let mut pending = VecDeque::with_capacity(in_flight);
        let mut refused = 0u64;
        while Instant::now() < deadline || !pending.is_empty() {
            if Instant::now() < deadline && pending.len() < in_flight {
                let delivery = if per_message == 1 {
                    client.start_send(&event).await?
                } else {
                    client.send_batch(&batch).await?
                };
                pending.push_back(delivery);
                continue;
            }
            if let Some(delivery) = pending.pop_front() {
                match delivery.await {
                    Ok(outcome) if outcome.is_accepted() => {}
                    _ => refused += 1,
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let after = hub.stats();
        client.close().await;
        println!(
            "| {per_message} | {in_flight} | {:.0} | {:.0} | {refused} |",
            (after.events - before.events) as f64 / elapsed,
            (after.batches - before.batches) as f64 / elapsed,
        );
    }
    hub.shutdown().await;
    Ok(())
}
