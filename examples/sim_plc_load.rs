//! Load benchmark for the simulated PLC: subscribes to every generated OPC UA variable of a
//! running `tagbridge sim plc --opcua-tags N` and prints how fast the items were created and how
//! many data changes arrive per second.
//!
//! ```text
//! tagbridge sim plc --opcua-tags 100000 &        # or: /usr/bin/time -v tagbridge sim plc ...
//! cargo run --release --example sim_plc_load -- opc.tcp://127.0.0.1:4840/ 100000 20
//! ```
//! Arguments: endpoint, N, seconds to count after all items exist. The client lifts the limits
//! DEPENDENCIES.md lists (message size, chunk count, array length) and uses queue size 2.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench_support::rss_mb;
use opcua::client::{ClientBuilder, DataChangeCallback, IdentityToken};
use opcua::types::{
    MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId,
    ReadValueId, StatusCode, TimestampsToReturn, UserTokenPolicy,
};
use tagbridge::sim::plc::generate::{load_path, NAMESPACE_INDEX};

/// Items per CreateMonitoredItems call (the server's default per-call limit is 1 000).
const BATCH: usize = 1000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args
        .get(1)
        .cloned()
        .unwrap_or("opc.tcp://127.0.0.1:4840/".into());
    let n: usize = args.get(2).map_or(Ok(100_000), |s| s.parse())?;
    let seconds: u64 = args.get(3).map_or(Ok(20), |s| s.parse())?;

    let pki = std::env::temp_dir().join(format!("tagbridge-load-pki-{}", std::process::id()));
    let mut client = ClientBuilder::new()
        .application_name("tagbridge sim load")
        .application_uri("urn:tagbridge:sim-load")
        .pki_dir(&pki)
        .create_sample_keypair(true)
        .trust_server_certs(true)
        .session_retry_limit(3)
        .max_message_size(64 * 1024 * 1024)
        .max_chunk_count(0)
        .max_array_length(1_000_000)
        .request_timeout(Duration::from_secs(60))
        .client()
        .map_err(|e| e.join("; "))?;
    let t0 = Instant::now();
    let (session, event_loop) = client
        .connect_to_matching_endpoint(
            (
                endpoint.as_str(),
                "http://opcfoundation.org/UA/SecurityPolicy#None",
                MessageSecurityMode::None,
                UserTokenPolicy::anonymous(),
            ),
            IdentityToken::Anonymous,
        )
        .await?;
    let _loop = event_loop.spawn();
    if !session.wait_for_connection().await {
        return Err("cannot connect".into());
    }
    let connected = t0.elapsed();

    let changes = Arc::new(AtomicU64::new(0));
    let seen: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let (c, s) = (Arc::clone(&changes), Arc::clone(&seen));
    let sub = session
        .create_subscription(
            Duration::from_secs(1),
            60,
            10,
            0,
            0,
            true,
            DataChangeCallback::new(move |_value, item| {
                c.fetch_add(1, Ordering::Relaxed);
                // Handles as the client library assigned them; only their number matters.
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(item.client_handle());
            }),
        )
        .await?;

    let t1 = Instant::now();
    let mut created = 0usize;
    let mut failed = 0usize;
    for start in (0..n).step_by(BATCH) {
        let items: Vec<MonitoredItemCreateRequest> = (start..(start + BATCH).min(n))
            .map(|i| {
                MonitoredItemCreateRequest::new(
                    ReadValueId::from(NodeId::new(NAMESPACE_INDEX, load_path(i))),
                    MonitoringMode::Reporting,
                    MonitoringParameters {
                        client_handle: i as u32 + 1, // 0 asks the library to pick one
                        sampling_interval: 0.0,
                        queue_size: 2,
                        discard_oldest: true,
                        filter: Default::default(),
                    },
                )
            })
            .collect();
        for r in session
            .create_monitored_items(sub, TimestampsToReturn::Both, items)
            .await?
        {
            if r.result.status_code == StatusCode::Good {
                created += 1;
            } else {
                failed += 1;
            }
        }
    }
    let create_time = t1.elapsed();

    // Let the initial values arrive, then count a clean window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let before = changes.load(Ordering::Relaxed);
    let t2 = Instant::now();
    let mut per_second = Vec::new();
    let mut last = before;
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = changes.load(Ordering::Relaxed);
        per_second.push(now - last);
        last = now;
    }
    let window = t2.elapsed().as_secs_f64();
    let total = last - before;
    let distinct = seen.lock().unwrap_or_else(|p| p.into_inner()).len();
    let min = per_second.iter().min().copied().unwrap_or(0);
    let max = per_second.iter().max().copied().unwrap_or(0);

    println!("| measure | value |");
    println!("|---|---|");
    println!("| endpoint | {endpoint} |");
    println!("| connect + session | {} ms |", connected.as_millis());
    println!("| monitored items created | {created} ok, {failed} failed, in {:.2} s ({BATCH} per call) |", create_time.as_secs_f64());
    println!(
        "| data changes in {window:.1} s | {total} ({:.0}/s; per second min {min}, max {max}) |",
        total as f64 / window
    );
    println!("| distinct items that changed in the window | {distinct} of {n} |");
    println!("| client RSS | {:.0} MB |", rss_mb());
    let _ = session.disconnect().await;
    let _ = std::fs::remove_dir_all(&pki);
    Ok(())
}
