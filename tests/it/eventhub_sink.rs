//! The Event Hub sink: tokens and (as it lands) delivery through the emulator.

use std::io::Write;
use std::process::{Command, Stdio};

use tagbridge::sink::eventhub::sas;

/// Tokens for many audiences, key names, keys and expiries are byte-identical to what
/// Microsoft's azure-eventhub SDK builds.
#[test]
fn sas_tokens_match_microsofts_sdk() {
    let audiences = [
        "sb://plant-a.servicebus.windows.net/telemetry",
        "sb://localhost/hub",
        "sb://ns.servicebus.chinacloudapi.cn/hub-with-dash_and.dot",
        "sb://ns.servicebus.windows.net/hub/Partitions/3",
        "sb://ns/ü space+plus&amp=eq",
    ];
    let keys = ["c2VjcmV0LWtleS1ub3QtcmVhbA==", "k/e+y=", "plain", "äöü€"];
    let mut cases = Vec::new();
    for (i, audience) in audiences.iter().enumerate() {
        for (j, key) in keys.iter().enumerate() {
            let key_name = ["RootManageSharedAccessKey", "send-only", "a.b_c"][(i + j) % 3];
            let expiry = 1_700_000_000 + (i * 7919 + j * 104_729) as i64;
            cases.push((
                audience.to_string(),
                key_name.to_string(),
                key.to_string(),
                expiry,
            ));
        }
    }
    let input: String = cases
        .iter()
        .map(|(a, n, k, e)| {
            serde_json::json!({"audience": a, "key_name": n, "key": k, "expiry": e}).to_string()
                + "\n"
        })
        .collect();
    let mut child = Command::new(super::support::python::python())
        .arg(super::support::repo().join("tests/python/sas_tokens.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    super::support::python::assert_success("sas_tokens.py", &out);
    let expected: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(expected.len(), cases.len());
    for ((audience, key_name, key, expiry), sdk) in cases.iter().zip(expected) {
        assert_eq!(
            sas::sign(audience, key_name, key, *expiry).token,
            sdk,
            "audience {audience}, key {key}"
        );
    }
}

mod delivery {
    //! Simulated PLC → tag map → gateway → emulator over AMQP+TLS, with the failures the hub
    //! can throw at a gateway. Loss is judged against the PLC's counter, which steps by one
    //! every 400 ms: every value between the first and the last the hub saw must be there.

    use std::time::Duration;

    use tagbridge::config::gateway::Transport;
    use tagbridge::sim::hub::HubConfig;
    use tagbridge::sink::eventhub::sink::SinkState;

    use crate::support::chain::{
        self, assert_counter_complete, produced_counter_readings, ChainOptions,
    };

    const DEADLINE: Duration = Duration::from_secs(60);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_reading_arrives_exactly_once_when_nothing_fails() {
        let chain = chain::start(ChainOptions::default()).await;
        assert!(
            chain.wait_for_counter_steps(6, DEADLINE).await,
            "counter did not advance at the hub"
        );
        let (summary, events, plc, hub) = chain.stop().await;
        assert_counter_complete(&events, produced_counter_readings(&summary), true, &plc);
        assert_eq!(
            summary.mapping.readings,
            events.len() as u64,
            "the hub holds a different number of events than the gateway produced"
        );
        // The events are the seed format with a stable message id and content type.
        let first = &events[0];
        assert_eq!(first.content_type.as_deref(), Some("application/json"));
        assert!(first
            .message_id
            .as_deref()
            .is_some_and(|id| id.starts_with("tagbridge-")));
        let body: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
        for key in ["sensor_id", "timestamp", "value"] {
            assert!(body.get(key).is_some(), "event lacks {key}: {body}");
        }
        hub.shutdown().await;
        plc.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entra_id_service_principal_tokens_are_accepted() {
        let options = ChainOptions {
            hub: HubConfig {
                entra_clients: vec![("gateway-app".into(), "app-secret".into())],
                ..Default::default()
            },
            entra: Some((
                "contoso-tenant".into(),
                "gateway-app".into(),
                "app-secret".into(),
            )),
            ..Default::default()
        };
        let chain = chain::start(options).await;
        assert!(
            chain.wait_for_counter_steps(3, DEADLINE).await,
            "nothing arrived with an Entra token"
        );
        let (summary, events, plc, hub) = chain.stop().await;
        assert_counter_complete(&events, produced_counter_readings(&summary), true, &plc);
        hub.shutdown().await;
        plc.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_are_renewed_on_the_live_link_without_loss() {
        let options = ChainOptions {
            // The hub closes a link whose token expired: only renewal keeps this one open.
            token_lifetime: Duration::from_secs(3),
            ..Default::default()
        };
        let chain = chain::start(options).await;
        assert!(chain.wait_for_counter_steps(20, DEADLINE).await);
        let renewals = chain
            .stats
            .token_renewals
            .load(std::sync::atomic::Ordering::Relaxed);
        let reconnects = chain
            .stats
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed);
        let (summary, events, plc, hub) = chain.stop().await;
        assert!(
            renewals >= 2,
            "expected renewals during an 8 s run with 3 s tokens, got {renewals}"
        );
        assert_eq!(reconnects, 0, "the link should have stayed open");
        assert_counter_complete(&events, produced_counter_readings(&summary), true, &plc);
        hub.shutdown().await;
        plc.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throttling_loses_nothing() {
        let chain = chain::start(ChainOptions::default()).await;
        assert!(chain.wait_for_counter_steps(2, DEADLINE).await);
        chain.hub.faults().throttle_above(1);
        let throttled = crate::support::wait_until(DEADLINE, || {
            chain
                .stats
                .throttled
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        })
        .await;
        chain.hub.faults().clear();
        assert!(throttled, "the hub never throttled the gateway");
        assert!(chain.wait_for_counter_steps(16, DEADLINE).await);
        let (summary, events, plc, hub) = chain.stop().await;
        assert_counter_complete(&events, produced_counter_readings(&summary), false, &plc);
        hub.shutdown().await;
        plc.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_connections_lose_nothing() {
        let chain = chain::start(ChainOptions::default()).await;
        assert!(chain.wait_for_counter_steps(2, DEADLINE).await);
        chain.hub.faults().drop_connections();
        assert!(chain.wait_for_counter_steps(5, DEADLINE).await);
        chain.hub.faults().drop_connections();
        assert!(chain.wait_for_counter_steps(9, DEADLINE).await);
        let reconnects = chain
            .stats
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            + chain.hub.stats().connections_total;
        let (summary, events, plc, hub) = chain.stop().await;
        assert!(reconnects >= 3, "the gateway did not reconnect");
        assert_counter_complete(&events, produced_counter_readings(&summary), false, &plc);
        hub.shutdown().await;
        plc.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_five_second_hub_outage_loses_nothing() {
        let chain = chain::start(ChainOptions::default()).await;
        assert!(chain.wait_for_counter_steps(2, DEADLINE).await);
        let before = chain::counter_values(&chain.hub.events()).len();
        chain.hub.faults().down_for(Duration::from_secs(5));
        // While the hub is down, readings wait in the journal.
        assert!(
            crate::support::wait_until(DEADLINE, || chain.journal.depth() >= 5).await,
            "readings did not queue up during the outage"
        );
        // After it, the backlog drains and live readings follow.
        assert!(chain.wait_for_counter_steps(25, DEADLINE).await);
        let (summary, events, plc, hub) = chain.stop().await;
        assert!(chain::counter_values(&events).len() > before + 12);
        assert_counter_complete(&events, produced_counter_readings(&summary), false, &plc);
        hub.shutdown().await;
        plc.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_key_is_reported_by_name_and_the_readings_are_kept() {
        let options = ChainOptions {
            key_override: Some("d3Jvbmcta2V5LW5vdC10aGUtaHVicw==".into()),
            ..Default::default()
        };
        let chain = chain::start(options).await;
        let mut state = chain.state.clone();
        let refused = tokio::time::timeout(
            DEADLINE,
            state.wait_for(|s| matches!(s, SinkState::Unauthorized(_))),
        )
        .await
        .expect("the sink reports the refusal")
        .expect("sink state")
        .clone();
        let SinkState::Unauthorized(message) = refused else {
            unreachable!()
        };
        assert!(
            message.contains("shared access key `RootManageSharedAccessKey`"),
            "the error does not say which key: {message}"
        );
        assert!(
            message.contains("sb://localhost"),
            "the error does not say which namespace: {message}"
        );
        assert!(
            crate::support::wait_until(DEADLINE, || chain.journal.depth() >= 3).await,
            "readings are not kept while the hub refuses the key"
        );
        assert_eq!(chain.hub.stats().events, 0);
        let (_, events, plc, hub) = chain.stop().await;
        assert!(events.is_empty());
        hub.shutdown().await;
        plc.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn amqp_over_websockets_delivers_every_reading() {
        let options = ChainOptions {
            transport: Transport::AmqpWs,
            ..Default::default()
        };
        let chain = chain::start(options).await;
        assert!(
            chain.wait_for_counter_steps(5, DEADLINE).await,
            "nothing arrived over WebSockets"
        );
        // The link stays up across a dropped connection too.
        chain.hub.faults().drop_connections();
        assert!(chain.wait_for_counter_steps(9, DEADLINE).await);
        let (summary, events, plc, hub) = chain.stop().await;
        assert_counter_complete(&events, produced_counter_readings(&summary), false, &plc);
        hub.shutdown().await;
        plc.shutdown().await;
    }

    /// A minimal HTTP CONNECT proxy on loopback that records the targets it tunnelled to.
    async fn connect_proxy() -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        match client.read_u8().await {
                            Ok(b) => head.push(b),
                            Err(_) => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let target = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    log.lock().unwrap().push(target.clone());
                    let upstream = target.replace("localhost", "127.0.0.1");
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_ok()
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn amqp_over_websockets_passes_an_http_connect_proxy() {
        let (proxy_addr, seen) = connect_proxy().await;
        let proxy = tagbridge::sink::eventhub::proxy::Proxy::parse(
            &format!("http://{proxy_addr}"),
            "",
            "localhost",
        );
        assert!(proxy.is_some());
        let options = ChainOptions {
            transport: Transport::AmqpWs,
            proxy,
            ..Default::default()
        };
        let chain = chain::start(options).await;
        assert!(
            chain.wait_for_counter_steps(4, DEADLINE).await,
            "nothing arrived through the proxy"
        );
        let wss_port = chain.hub.wss_addr().port();
        let (summary, events, plc, hub) = chain.stop().await;
        assert_counter_complete(&events, produced_counter_readings(&summary), true, &plc);
        let tunnels = seen.lock().unwrap().clone();
        assert!(
            tunnels.contains(&format!("localhost:{wss_port}")),
            "the proxy saw {tunnels:?}"
        );
        hub.shutdown().await;
        plc.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn array_events_carry_several_readings_and_lose_none() {
        let mut options = ChainOptions::default();
        options.sink.readings_per_event = 10;
        let chain = chain::start(options).await;
        assert!(chain.wait_for_counter_steps(2, DEADLINE).await);
        // A backlog after an outage is read in chunks: several readings per array event.
        chain.hub.faults().down_for(Duration::from_secs(3));
        assert!(chain.wait_for_counter_steps(14, DEADLINE).await);
        let (summary, events, plc, hub) = chain.stop().await;
        // Every event body is a JSON array of readings; expand them to check the readings.
        let mut readings = Vec::new();
        let mut largest = 0;
        for event in &events {
            let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
            let array = body.as_array().expect("an array event");
            assert!((1..=10).contains(&array.len()), "{body}");
            largest = largest.max(array.len());
            assert!(event
                .message_id
                .as_deref()
                .is_some_and(|id| id.starts_with("tagbridge-")));
            for reading in array {
                let mut one = event.clone();
                one.body = serde_json::to_vec(reading).unwrap();
                readings.push(one);
            }
        }
        assert!(largest > 1, "no event carried more than one reading");
        assert_eq!(readings.len() as u64, summary.mapping.readings);
        assert_counter_complete(&readings, produced_counter_readings(&summary), true, &plc);
        hub.shutdown().await;
        plc.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_https_fallback_delivers_every_reading() {
        let options = ChainOptions {
            transport: Transport::Https,
            ..Default::default()
        };
        let chain = chain::start(options).await;
        assert!(
            chain.wait_for_counter_steps(5, DEADLINE).await,
            "nothing arrived over HTTPS"
        );
        let (summary, events, plc, hub) = chain.stop().await;
        assert_counter_complete(&events, produced_counter_readings(&summary), true, &plc);
        assert_eq!(summary.mapping.readings, events.len() as u64);
        let body: serde_json::Value = serde_json::from_slice(&events[0].body).unwrap();
        assert!(
            body.get("sensor_id").is_some(),
            "REST body is not the reading: {body}"
        );
        hub.shutdown().await;
        plc.shutdown().await;
    }
}

mod pressure {
    //! The sink alone against the emulator, on every transport, fed a backlog of numbered
    //! events: throttling, refused and rotated keys. Judged by message ids: every sequence number
    //! arrives exactly once.

    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tagbridge::config::gateway::{EventHubSpec, Transport};
    use tagbridge::sim::hub::{Hub, HubConfig, HubHandle};
    use tagbridge::sink::eventhub::setup::{self, CredentialSource};
    use tagbridge::sink::eventhub::sink::{
        EventHubSink, Outgoing, SinkOptions, SinkState, SinkStats,
    };
    use tokio::sync::{mpsc, watch, Notify};
    use tokio_util::sync::CancellationToken;

    const DEADLINE: Duration = Duration::from_secs(60);
    const KEY: &str = "c2VuZC1rZXktb25lLWZvci10aGUtZW11bGF0b3I=";
    const OTHER_KEY: &str = "c2Vjb25kYXJ5LWtleS1mb3ItdGhlLWVtdWxhdG9y";
    const WRONG_KEY: &str = "d3Jvbmcta2V5LXJldm9rZWQtbG9uZy1hZ28tLS0=";
    const TRANSPORTS: [Transport; 3] = [Transport::Amqp, Transport::AmqpWs, Transport::Https];

    struct Rig {
        hub: HubHandle,
        /// The connection-string file the sink reads (and re-reads).
        cs_file: PathBuf,
        _dir: TempDir,
        transport: Transport,
        input: Option<mpsc::Sender<Vec<Outgoing>>>,
        acked: watch::Receiver<u64>,
        stats: Arc<SinkStats>,
        state: watch::Receiver<SinkState>,
        reread: Arc<Notify>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<Option<u64>>,
    }

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn connection_string(hub: &HubHandle, transport: Transport, name: &str, key: &str) -> String {
        let port = match transport {
            Transport::Amqp => hub.amqps_addr().port(),
            Transport::AmqpWs => hub.wss_addr().port(),
            Transport::Https => hub.https_addr().port(),
        };
        format!(
            "Endpoint=sb://localhost:{port}/;SharedAccessKeyName={name};SharedAccessKey={key};EntityPath={}",
            hub.hub()
        )
    }

    /// A hub with keys `send` (KEY) and `send2` (OTHER_KEY) and small messages (many batches),
    /// and a sink reading `send`/`key` from a file.
    async fn rig(transport: Transport, key: &str, options: SinkOptions) -> Rig {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let hub = Hub::start(HubConfig {
            keys: vec![
                ("send".into(), KEY.into()),
                ("send2".into(), OTHER_KEY.into()),
            ],
            max_message_size: 8 * 1024,
            ..Default::default()
        })
        .await
        .expect("emulator starts");
        let dir = std::env::temp_dir().join(format!(
            "tagbridge-pressure-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cs_file = dir.join("hub.secret");
        std::fs::write(&cs_file, connection_string(&hub, transport, "send", key)).unwrap();
        let spec: EventHubSpec = serde_json::from_value(serde_json::json!({
            "connection_string_file": "hub.secret",
            "ca_file": hub.ca_cert_path(),
            "transport": match transport {
                Transport::Amqp => "amqp",
                Transport::AmqpWs => "amqp_ws",
                Transport::Https => "https",
            },
        }))
        .unwrap();
        let (target, credential) = setup::build(&spec, &dir).expect("sink setup");
        let sink = EventHubSink::new(target, credential, options)
            .with_credential_source(CredentialSource::new(&spec, &dir));
        let (stats, state, reread) = (
            sink.stats.clone(),
            sink.state.subscribe(),
            sink.reread.clone(),
        );
        let (input, rx) = mpsc::channel(16);
        let (ack_tx, mut ack_rx) = mpsc::channel::<u64>(1024);
        let (acked_tx, acked) = watch::channel(0u64);
        tokio::spawn(async move {
            while let Some(seq) = ack_rx.recv().await {
                acked_tx.send_modify(|a| {
                    assert!(seq > *a, "acks must increase: {seq} after {a}");
                    *a = seq;
                });
            }
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(sink.run(rx, ack_tx, cancel.clone()));
        Rig {
            hub,
            cs_file,
            _dir: TempDir(dir),
            transport,
            input: Some(input),
            acked,
            stats,
            state,
            reread,
            cancel,
            task,
        }
    }

    impl Rig {
        /// Queues events `from..=to` (a backlog: as fast as the sink takes them).
        async fn feed(&self, from: u64, to: u64) {
            let input = self.input.as_ref().expect("input open");
            let mut seq = from;
            while seq <= to {
                let chunk: Vec<Outgoing> = (seq..=to.min(seq + 99))
                    .map(|s| Outgoing {
                        seq: s,
                        body: format!(r#"{{"sensor_id":"line-1/counter","value":{s}}}"#)
                            .into_bytes(),
                        partition_key: None,
                        received: None,
                    })
                    .collect();
                seq += chunk.len() as u64;
                input.send(chunk).await.expect("sink takes input");
            }
        }

        async fn wait_acked(&self, n: u64, deadline: Duration) -> bool {
            let mut acked = self.acked.clone();
            tokio::time::timeout(deadline, acked.wait_for(|a| *a >= n))
                .await
                .is_ok_and(|r| r.is_ok())
        }

        /// Every sequence number 1..=n arrived exactly once.
        fn assert_exactly_once(&self, n: u64) {
            let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
            for e in self.hub.events() {
                let id = e.message_id.clone().unwrap_or_default();
                let seq: u64 = id
                    .rsplit('-')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("odd message id {id:?}"));
                *seen.entry(seq).or_default() += 1;
            }
            let duplicates: Vec<(u64, usize)> = seen
                .iter()
                .filter(|(_, c)| **c > 1)
                .map(|(s, c)| (*s, *c))
                .collect();
            let missing: Vec<u64> = (1..=n).filter(|s| !seen.contains_key(s)).collect();
            assert!(
                duplicates.is_empty() && missing.is_empty(),
                "{:?}: {} duplicated (first: {:?}), {} missing (first: {:?}); hub stats {:?}",
                self.transport,
                duplicates.len(),
                duplicates.iter().take(5).collect::<Vec<_>>(),
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>(),
                self.hub.stats()
            );
        }

        async fn stop(mut self) -> HubHandle {
            self.input.take();
            self.cancel.cancel();
            let _ = tokio::time::timeout(DEADLINE, self.task).await;
            self.hub
        }
    }

    fn options() -> SinkOptions {
        SinkOptions {
            max_in_flight: 8,
            linger: Duration::from_millis(5),
            ..Default::default()
        }
    }

    /// The hub refuses the batch at the front of a full window and accepts the ones behind it:
    /// only that batch is sent again, after the pause, on every transport.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_front_batch_is_the_only_one_resent() {
        let runs = TRANSPORTS.map(|transport| async move {
            let rig = rig(transport, KEY, options()).await;
            rig.hub.faults().refuse_next(1);
            let started = Instant::now();
            rig.feed(1, 1500).await;
            assert!(
                rig.wait_acked(1500, DEADLINE).await,
                "{transport:?}: not all acknowledged"
            );
            assert!(
                started.elapsed() >= Duration::from_secs(4),
                "{transport:?}: the refused batch was resent without the pause"
            );
            assert!(
                rig.hub.stats().throttled >= 1,
                "{transport:?}: nothing was refused"
            );
            rig.assert_exactly_once(1500);
            assert_eq!(rig.stats.throttled.load(Ordering::Relaxed), 1);
            rig.stop().await.shutdown().await;
        });
        futures::future::join_all(runs).await;
    }

    /// Every 5th transfer refused while a backlog drains: nothing lost, nothing twice, and the
    /// window shrinks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throttling_during_a_backlog_drain_gives_no_duplicates() {
        let runs = TRANSPORTS.map(|transport| async move {
            let rig = rig(transport, KEY, options()).await;
            rig.hub.faults().refuse_every(5);
            rig.feed(1, 1200).await;
            assert!(
                rig.wait_acked(1200, Duration::from_secs(120)).await,
                "{transport:?}: not all acknowledged; hub {:?}",
                rig.hub.stats()
            );
            assert!(
                rig.hub.stats().throttled >= 2,
                "{transport:?}: too little throttling to judge"
            );
            rig.assert_exactly_once(1200);
            rig.stop().await.shutdown().await;
        });
        futures::future::join_all(runs).await;
    }

    /// A wrong key: attempts back off (doubling towards a minute), the state never reads
    /// connected, and nothing is lost; fixing the key in the file resumes delivery without a
    /// restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_key_backs_off_and_a_fixed_file_resumes_delivery() {
        let runs = TRANSPORTS.map(|transport| async move {
            let rig = rig(transport, WRONG_KEY, options()).await;
            rig.feed(1, 200).await;
            let watch_from = Instant::now();
            let mut state = rig.state.clone();
            let mut refusals_seen = 0;
            while watch_from.elapsed() < Duration::from_secs(9) {
                let s = state.borrow_and_update().clone();
                assert!(
                    !matches!(s, SinkState::Connected),
                    "{transport:?}: reported connected while the key is refused"
                );
                if matches!(s, SinkState::Unauthorized(_)) {
                    refusals_seen += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                refusals_seen > 0,
                "{transport:?}: never reported unauthorized"
            );
            let attempts = rig.stats.auth_failures.load(Ordering::Relaxed);
            // 0.4-0.5, 0.8-1, 1.6-2, 3.2-4 s…: at most 5 attempts in 9 s (it was 300+).
            assert!(
                (2..=6).contains(&attempts),
                "{transport:?}: {attempts} refused attempts in 9 s; expected a doubling backoff"
            );
            assert_eq!(rig.hub.stats().events, 0);
            // The key is fixed in the file: picked up at the next attempt, no restart.
            std::fs::write(
                &rig.cs_file,
                connection_string(&rig.hub, transport, "send2", OTHER_KEY),
            )
            .unwrap();
            assert!(
                rig.wait_acked(200, DEADLINE).await,
                "{transport:?}: delivery did not resume"
            );
            rig.assert_exactly_once(200);
            assert_eq!(*rig.state.borrow(), SinkState::Connected);
            rig.stop().await.shutdown().await;
        });
        futures::future::join_all(runs).await;
    }

    /// A key rotated while the sink waits out a long backoff: SIGHUP (here its in-process twin)
    /// makes it read the file and try at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reread_request_uses_a_rotated_key_at_once() {
        let rig = rig(Transport::Amqp, WRONG_KEY, options()).await;
        rig.feed(1, 100).await;
        // Five refusals: the next wait is 6.4-8 s.
        assert!(
            crate::support::wait_until(DEADLINE, || rig
                .stats
                .auth_failures
                .load(Ordering::Relaxed)
                >= 5)
            .await,
            "the wrong key was not refused five times"
        );
        std::fs::write(
            &rig.cs_file,
            connection_string(&rig.hub, Transport::Amqp, "send2", OTHER_KEY),
        )
        .unwrap();
        let asked = Instant::now();
        rig.reread.notify_one();
        assert!(
            rig.wait_acked(100, DEADLINE).await,
            "delivery did not resume"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "the rotated key waited for the backoff: {:?}",
            asked.elapsed()
        );
        rig.assert_exactly_once(100);
        rig.stop().await.shutdown().await;
    }

    /// Every reconnect is counted, and shutdown with the hub down ends at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconnects_are_counted_and_shutdown_with_the_hub_down_is_prompt() {
        let rig = rig(Transport::Amqp, KEY, options()).await;
        rig.feed(1, 100).await;
        assert!(rig.wait_acked(100, DEADLINE).await);
        rig.hub.faults().drop_connections();
        rig.feed(101, 200).await;
        assert!(rig.wait_acked(200, DEADLINE).await);
        assert_eq!(rig.stats.reconnects.load(Ordering::Relaxed), 1);
        rig.hub.faults().down_for(Duration::from_secs(600));
        rig.feed(201, 300).await;
        assert!(
            crate::support::wait_until(DEADLINE, || !matches!(
                *rig.state.borrow(),
                SinkState::Connected
            ))
            .await
        );
        let stopping = Instant::now();
        let Rig {
            cancel,
            task,
            hub,
            input,
            ..
        } = rig;
        cancel.cancel();
        let last = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("sink stops")
            .unwrap();
        assert!(
            stopping.elapsed() < Duration::from_secs(3),
            "stopping took {:?}",
            stopping.elapsed()
        );
        assert_eq!(
            last,
            Some(200),
            "only what the hub accepted is acknowledged"
        );
        drop(input);
        hub.shutdown().await;
    }
}

/// The real binary: a rotated key in the secret file is picked up on SIGHUP, without a restart
/// and without waiting out the backoff; SIGTERM with the hub down ends within the grace period
/// and says how many readings stay in the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_uses_a_rotated_key_and_sigterm_with_the_hub_down_is_prompt() {
    use std::time::{Duration, Instant};
    use tagbridge::sim::hub::{Hub, HubConfig};
    const KEY: &str = "cm90YXRlZC1rZXktZm9yLXRoZS1zaWdodXAtdGVzdA==";
    let (plc, modbus) = super::support::chain::modbus_plc().await;
    let hub = Hub::start(HubConfig {
        keys: vec![("send".into(), KEY.into())],
        ..Default::default()
    })
    .await
    .expect("emulator starts");
    let dir = tempfile::tempdir().unwrap();
    let maps = dir.path().join("maps");
    std::fs::create_dir(&maps).unwrap();
    std::fs::write(
        maps.join("line.yaml"),
        format!(
            "source:\n  modbus: {{tcp: \"{modbus}\", unit: 1}}\ndefaults: {{interval: 50ms}}\n\
             tags:\n  - {{sensor_id: line:counter, table: holding_register, address: 0, type: uint32}}\n"
        ),
    )
    .unwrap();
    let secret = dir.path().join("hub.secret");
    let cs = |key: &str| {
        format!(
            "Endpoint=sb://localhost:{}/;SharedAccessKeyName=send;SharedAccessKey={key};EntityPath={}",
            hub.amqps_addr().port(),
            hub.hub()
        )
    };
    std::fs::write(&secret, cs("d3Jvbmcta2V5LXJldm9rZWQtbG9uZy1hZ28tLS0=")).unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "tag_maps: maps\nsink:\n  eventhub:\n    connection_string_file: hub.secret\n    ca_file: {}\ntelemetry:\n  metrics: \"off\"\n",
            hub.ca_cert_path().display()
        ),
    )
    .unwrap();
    let log = dir.path().join("gateway.log");
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["run", "-c"])
        .arg(dir.path().join("gateway.yaml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start tagbridge run");
    let pid = gateway.id().expect("pid").to_string();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // Five refusals: the next attempt is 6 s or more away.
    assert!(
        super::support::wait_until(Duration::from_secs(40), || hub.stats().auth_failures >= 5)
            .await,
        "the wrong key was not refused five times:\n{}",
        read_log()
    );
    assert_eq!(hub.stats().events, 0);
    std::fs::write(&secret, cs(KEY)).unwrap();
    let asked = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status();
    assert!(
        super::support::wait_until(Duration::from_secs(20), || hub.stats().events >= 3).await,
        "nothing delivered after SIGHUP:\n{}",
        read_log()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the rotated key waited {:?}",
        asked.elapsed()
    );
    let text = read_log();
    assert!(
        text.contains("A new event hub credential is in use."),
        "{text}"
    );
    assert!(
        !text.contains(KEY) && !text.contains(&KEY[..12]),
        "the key is in the log"
    );
    assert!(
        gateway.try_wait().unwrap().is_none(),
        "the gateway restarted or died"
    );
    // The hub goes down; SIGTERM: the gateway ends within its grace period (10 s) and says what
    // stays spooled.
    hub.faults().down_for(Duration::from_secs(600));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let status = tokio::time::timeout(Duration::from_secs(30), gateway.wait())
        .await
        .expect("the gateway stops")
        .unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(13),
        "SIGTERM with the hub down took {:?}:\n{}",
        stopping.elapsed(),
        read_log()
    );
    assert!(status.success(), "{status:?}\n{}", read_log());
    assert!(read_log().contains("left_in_spool="), "{}", read_log());
    hub.shutdown().await;
    plc.shutdown().await;
}
