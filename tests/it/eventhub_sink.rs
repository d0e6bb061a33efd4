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
