//! The Event Hub emulator against independent clients: Microsoft's azure-eventhub Python SDK
//! (SAS over TLS, batches, wrong keys, $management), REST with urllib, fe2o3 (single, batch,
//! partitions, JWTs from the token endpoint), and each fault mode.

use std::collections::BTreeMap;
use std::time::Duration;

use tagbridge::sim::hub::auth::{JWT_TOKEN_TYPE, SAS_TOKEN_TYPE};
use tagbridge::sim::hub::client::{ClientError, OutEvent, TestClient, TokenSpec};
use tagbridge::sim::hub::{
    Hub, HubConfig, HubHandle, ReceivedEvent, DEFAULT_KEY, DEFAULT_KEY_NAME,
};
use tagbridge::sink::eventhub::sas;

use super::support::python;

const WAIT: Duration = Duration::from_secs(20);

async fn start(config: HubConfig) -> HubHandle {
    Hub::start(config).await.expect("emulator starts")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A SAS token for the hub signed with the default key.
fn sas_for(hub: &HubHandle, lifetime_s: i64) -> (String, String) {
    let audience = format!("sb://localhost:{}/{}", hub.amqps_addr().port(), hub.hub());
    let token = sas::sign(&audience, DEFAULT_KEY_NAME, DEFAULT_KEY, now() + lifetime_s).token;
    (audience, token)
}

async fn client(hub: &HubHandle, entity: &str) -> Result<TestClient, ClientError> {
    let (audience, token) = sas_for(hub, 3600);
    TestClient::connect(
        hub.amqps_addr(),
        Some(hub.ca_cert_path()),
        TokenSpec {
            kind: SAS_TOKEN_TYPE,
            value: &token,
            audience: &audience,
        },
        entity,
    )
    .await
}

fn describe(events: &[ReceivedEvent]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "  p{} key={:?} id={:?} props={:?} body={:?}\n",
                e.partition,
                e.partition_key,
                e.message_id,
                e.properties,
                String::from_utf8_lossy(&e.body)
            )
        })
        .collect()
}

/// fe2o3 over TLS: a single event with everything set, then a batch, arrive intact; the link
/// advertises the configured max message size.
#[tokio::test]
async fn fe2o3_single_and_batch_round_trip() {
    let hub = start(HubConfig {
        max_message_size: 256 * 1024,
        ..Default::default()
    })
    .await;
    let mut c = client(&hub, hub.hub()).await.expect("connect");
    assert_eq!(c.max_message_size(), Some(256 * 1024));
    let single = OutEvent {
        body: b"{\"v\":1}".to_vec(),
        message_id: Some("m-1".into()),
        partition_key: Some("line-3".into()),
        properties: BTreeMap::from([("unit".into(), "degC".into())]),
        content_type: Some("application/json".into()),
    };
    let outcome = c.send(&single).await.expect("send");
    assert!(outcome.is_accepted(), "{outcome:?}");
    let batch: Vec<OutEvent> = (0..100)
        .map(|i| OutEvent {
            body: format!("event-{i}").into_bytes(),
            message_id: Some(format!("b-{i}")),
            partition_key: Some("batch".into()),
            ..Default::default()
        })
        .collect();
    let outcome = c.send_batch(&batch).await.expect("send batch").await;
    assert!(
        matches!(outcome, Ok(ref o) if o.is_accepted()),
        "{outcome:?}"
    );
    let events = hub.wait_for_events(101, WAIT).await.expect("101 events");
    let first = &events[0];
    assert_eq!(first.body, b"{\"v\":1}");
    assert_eq!(first.message_id.as_deref(), Some("m-1"));
    assert_eq!(first.partition_key.as_deref(), Some("line-3"));
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        first.properties.get("unit").and_then(|v| v.as_str()),
        Some("degC")
    );
    for (i, e) in events[1..].iter().enumerate() {
        assert_eq!(
            e.body,
            format!("event-{i}").into_bytes(),
            "{}",
            describe(&events)
        );
        assert_eq!(e.message_id.as_deref(), Some(format!("b-{i}").as_str()));
        assert_eq!(e.partition_key.as_deref(), Some("batch"));
    }
    // One key, one partition.
    assert!(events[1..]
        .iter()
        .all(|e| e.partition == events[1].partition));
    let stats = hub.stats();
    assert_eq!((stats.events, stats.batches), (101, 2), "{stats:?}");
    c.close().await;
    hub.shutdown().await;
}

/// Microsoft's SDK over TLS with SAS: send_event and create_batch() events all arrive with their
/// partition keys and properties, and in the JSON-lines output.
#[tokio::test]
async fn microsofts_sdk_sends_single_and_batched_events() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("events.jsonl");
    let hub = start(HubConfig {
        output: Some(output.clone()),
        ..Default::default()
    })
    .await;
    let port = hub.amqps_addr().port().to_string();
    let ca = hub.ca_cert_path().to_string_lossy().to_string();
    let out = python::run_script_async(
        "hub_sdk_send.py",
        &["send", &hub.connection_string(DEFAULT_KEY_NAME), &port, &ca],
    )
    .await;
    python::assert_success("hub_sdk_send.py send", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sent: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sent.len(), 13, "{stdout}");
    let events = hub.wait_for_events(13, WAIT).await.expect("13 events");
    for s in &sent {
        let body = s["body"].as_str().unwrap();
        let found = events
            .iter()
            .find(|e| e.body == body.as_bytes())
            .unwrap_or_else(|| panic!("{body} missing; received:\n{}", describe(&events)));
        assert_eq!(
            found.partition_key.as_deref(),
            s["partition_key"].as_str(),
            "{}",
            describe(&events)
        );
        let kind = if body.starts_with("single") {
            "single"
        } else {
            "batched"
        };
        assert_eq!(
            found.properties.get("kind").and_then(|v| v.as_str()),
            Some(kind)
        );
    }
    let batched: Vec<_> = events
        .iter()
        .filter(|e| e.properties.get("kind").and_then(|v| v.as_str()) == Some("batched"))
        .collect();
    assert_eq!(batched[3].message_id.as_deref(), Some("batch-3"));
    // The SDK sends `n` as an AMQP integer: it stays a number, in memory and in the output.
    assert_eq!(batched[3].properties.get("n"), Some(&serde_json::json!(3)));
    let hub_stats = hub.stats();
    hub.shutdown().await;
    let lines = std::fs::read_to_string(&output).unwrap();
    assert_eq!(lines.lines().count(), 13, "{lines}\n{hub_stats:?}");
    assert!(
        lines.contains(r#""n":3"#) && !lines.contains(r#""n":"3""#),
        "application properties lost their types:\n{lines}"
    );
    let line: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(line["body"], "single-0");
    assert_eq!(line["partition_key"], "pk-0");
    assert_eq!(line["hub"], "telemetry");
}

/// A wrong key makes the SDK raise its AuthenticationError; nothing arrives.
#[tokio::test]
async fn microsofts_sdk_with_a_wrong_key_gets_an_authentication_error() {
    let hub = start(HubConfig::default()).await;
    let port = hub.amqps_addr().port().to_string();
    let ca = hub.ca_cert_path().to_string_lossy().to_string();
    let wrong = hub
        .connection_string(DEFAULT_KEY_NAME)
        .replace(DEFAULT_KEY, "d3Jvbmcta2V5");
    let out = python::run_script_async("hub_sdk_send.py", &["wrong-key", &wrong, &port, &ca]).await;
    python::assert_success("hub_sdk_send.py wrong-key", &out);
    assert!(hub.stats().auth_failures >= 1, "{:?}", hub.stats());
    assert!(hub.events().is_empty());
    hub.shutdown().await;
}

/// The SDK's $management READs get the hub's name, partition ids and a partition's properties.
#[tokio::test]
async fn microsofts_sdk_reads_hub_properties() {
    let hub = start(HubConfig {
        partitions: 3,
        ..Default::default()
    })
    .await;
    let port = hub.amqps_addr().port().to_string();
    let ca = hub.ca_cert_path().to_string_lossy().to_string();
    let out = python::run_script_async(
        "hub_sdk_send.py",
        &[
            "props",
            &hub.connection_string(DEFAULT_KEY_NAME),
            &port,
            &ca,
        ],
    )
    .await;
    python::assert_success("hub_sdk_send.py props", &out);
    let props: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(props["eventhub_name"], "telemetry");
    assert_eq!(props["partition_ids"], serde_json::json!(["0", "1", "2"]));
    assert_eq!(props["partition_0"]["id"], "0", "{props}");
    assert_eq!(props["partition_0"]["eventhub_name"], "telemetry");
    hub.shutdown().await;
}

/// REST with urllib and a token from the SDK's helper: single 201 (with BrokerProperties), JSON
/// batch 201, wrong key and no token 401, over-size 413.
#[tokio::test]
async fn rest_single_batch_and_refusals() {
    let hub = start(HubConfig::default()).await;
    let port = hub.https_addr().port().to_string();
    let ca = hub.ca_cert_path().to_string_lossy().to_string();
    let out = python::run_script_async(
        "hub_rest_send.py",
        &[&port, &ca, hub.hub(), DEFAULT_KEY_NAME, DEFAULT_KEY],
    )
    .await;
    python::assert_success("hub_rest_send.py", &out);
    let statuses: BTreeMap<String, u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["case"].as_str().unwrap().to_string(),
                v["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: BTreeMap<String, u64> = [
        ("single", 201),
        ("batch", 201),
        ("wrong-key", 401),
        ("no-token", 401),
        ("too-large", 413),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(statuses, expected);
    let events = hub.events();
    assert_eq!(events.len(), 6, "{}", describe(&events));
    assert_eq!(events[0].body, b"rest-single");
    assert_eq!(events[0].partition_key.as_deref(), Some("rest-key"));
    assert_eq!(events[0].message_id.as_deref(), Some("rest-1"));
    for (i, e) in events[1..].iter().enumerate() {
        assert_eq!(e.body, format!("rest-batch-{i}").into_bytes());
        assert_eq!(e.partition_key.as_deref(), Some("rb"));
        assert_eq!(e.properties.get("n"), Some(&serde_json::json!(i)));
    }
    let stats = hub.stats();
    assert_eq!((stats.auth_failures, stats.oversize), (2, 1), "{stats:?}");
    hub.shutdown().await;
}

/// A transfer over the max message size (the SDK's own check lifted) is refused with
/// amqp:link:message-size-exceeded and records nothing.
#[tokio::test]
async fn oversize_transfer_is_refused() {
    let hub = start(HubConfig {
        max_message_size: 64 * 1024,
        ..Default::default()
    })
    .await;
    let port = hub.amqps_addr().port().to_string();
    let ca = hub.ca_cert_path().to_string_lossy().to_string();
    let out = python::run_script_async(
        "hub_sdk_oversize.py",
        &[&hub.connection_string(DEFAULT_KEY_NAME), &port, &ca],
    )
    .await;
    python::assert_success("hub_sdk_oversize.py", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("message-size-exceeded"), "{stdout}");
    assert_eq!(hub.stats().oversize, 1);
    assert!(hub.events().is_empty());
    hub.shutdown().await;
}

/// A JWT from the token endpoint (fetched with the sink's own Entra client) is accepted on $cbs
/// as type `jwt`; a wrong secret is refused by the endpoint, a forged JWT by $cbs.
#[tokio::test]
async fn entra_tokens_from_the_token_endpoint() {
    use tagbridge::sink::eventhub::entra::EntraClient;
    let hub = start(HubConfig {
        entra_clients: vec![("app-1".into(), "s3cret".into())],
        ..Default::default()
    })
    .await;
    let tls = tagbridge::sink::eventhub::tls::client_config(Some(hub.ca_cert_path())).unwrap();
    let authority = hub.token_authority();
    let good =
        EntraClient::new(Some(&authority), "tenant-x", "app-1", "s3cret", tls.clone()).unwrap();
    let (jwt, lifetime) = good.token().await.expect("token");
    assert!(lifetime > Duration::from_secs(60));
    let audience = format!("amqps://localhost/{}", hub.hub());
    let mut c = TestClient::connect(
        hub.amqps_addr(),
        Some(hub.ca_cert_path()),
        TokenSpec {
            kind: JWT_TOKEN_TYPE,
            value: &jwt,
            audience: &audience,
        },
        hub.hub(),
    )
    .await
    .expect("connect with a JWT");
    assert!(c
        .send(&OutEvent::text("via entra"))
        .await
        .unwrap()
        .is_accepted());
    c.close().await;
    let bad = EntraClient::new(Some(&authority), "tenant-x", "app-1", "wrong", tls).unwrap();
    let error = bad.token().await.unwrap_err().to_string();
    assert!(error.contains("invalid_client"), "{error}");
    let forged = format!("{}x", &jwt[..jwt.len() - 1]);
    let refused = TestClient::connect(
        hub.amqps_addr(),
        Some(hub.ca_cert_path()),
        TokenSpec {
            kind: JWT_TOKEN_TYPE,
            value: &forged,
            audience: &audience,
        },
        hub.hub(),
    )
    .await;
    assert!(
        matches!(refused, Err(ClientError::Token(_))),
        "{:?}",
        refused.err()
    );
    assert_eq!(hub.events().len(), 1);
    hub.shutdown().await;
}

/// Without a token, or with one for another hub, a sender link is closed with
/// amqp:unauthorized-access and nothing is accepted.
#[tokio::test]
async fn links_without_a_covering_token_are_refused() {
    let hub = start(HubConfig::default()).await;
    let other = "sb://localhost/other-hub".to_string();
    let token = sas::sign(&other, DEFAULT_KEY_NAME, DEFAULT_KEY, now() + 600).token;
    let result = async {
        let mut c = TestClient::connect(
            hub.amqps_addr(),
            Some(hub.ca_cert_path()),
            TokenSpec {
                kind: SAS_TOKEN_TYPE,
                value: &token,
                audience: &other,
            },
            hub.hub(),
        )
        .await?;
        tokio::time::timeout(WAIT, c.send(&OutEvent::text("nope")))
            .await
            .map_err(|_| ClientError::Send("timed out".into()))?
    }
    .await;
    let error = format!("{result:?}");
    assert!(result.is_err(), "{error}");
    assert!(hub.stats().auth_failures >= 1, "{:?}", hub.stats());
    assert!(hub.events().is_empty());
    hub.shutdown().await;
}

/// Sends until a transfer is not accepted or `deadline` passes; returns the last outcome text.
async fn send_until_refused(c: &mut TestClient, deadline: Duration) -> Option<String> {
    let end = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < end {
        match tokio::time::timeout(Duration::from_secs(5), c.send(&OutEvent::text("probe"))).await {
            Ok(Ok(o)) if o.is_accepted() => {}
            Ok(Ok(o)) => return Some(format!("{o:?}")),
            Ok(Err(e)) => return Some(e.to_string()),
            Err(_) => return Some("send timed out".into()),
        }
    }
    None
}

/// Throttling (events/s, a fraction, bytes/s) rejects transfers with com.microsoft:server-busy;
/// clearing it lets them through.
#[tokio::test]
async fn fault_throttle_rejects_with_server_busy() {
    let hub = start(HubConfig::default()).await;
    let mut c = client(&hub, hub.hub()).await.expect("connect");
    hub.faults().throttle_above(1);
    let refusal = send_until_refused(&mut c, WAIT).await.expect("a refusal");
    assert!(refusal.contains("com.microsoft:server-busy"), "{refusal}");
    assert!(hub.stats().throttled >= 1);
    hub.faults().clear();
    assert!(c
        .send(&OutEvent::text("after"))
        .await
        .unwrap()
        .is_accepted());
    hub.faults().throttle_fraction(1.0);
    let refusal = send_until_refused(&mut c, WAIT).await.expect("a refusal");
    assert!(refusal.contains("com.microsoft:server-busy"), "{refusal}");
    hub.faults().clear();
    hub.faults().throttle_bytes_above(1);
    let refusal = send_until_refused(&mut c, WAIT).await.expect("a refusal");
    assert!(refusal.contains("com.microsoft:server-busy"), "{refusal}");
    c.close().await;
    hub.shutdown().await;
}

/// Dropping connections cuts open clients; new ones connect and send.
#[tokio::test]
async fn fault_drop_connections() {
    let hub = start(HubConfig::default()).await;
    let mut c = client(&hub, hub.hub()).await.expect("connect");
    assert!(c
        .send(&OutEvent::text("before"))
        .await
        .unwrap()
        .is_accepted());
    assert_eq!(hub.stats().connections, 1);
    hub.faults().drop_connections();
    assert!(
        super::support::wait_until(WAIT, || hub.stats().connections == 0).await,
        "{:?}",
        hub.stats()
    );
    assert!(send_until_refused(&mut c, WAIT).await.is_some());
    let mut again = client(&hub, hub.hub()).await.expect("reconnect");
    assert!(again
        .send(&OutEvent::text("after"))
        .await
        .unwrap()
        .is_accepted());
    again.close().await;
    hub.shutdown().await;
}

/// Down for a period: connections are cut and refused, then accepted again.
#[tokio::test]
async fn fault_down_for_a_period() {
    let hub = start(HubConfig::default()).await;
    let mut c = client(&hub, hub.hub()).await.expect("connect");
    hub.faults().down_for(Duration::from_secs(8));
    assert!(
        client(&hub, hub.hub()).await.is_err(),
        "connected while down"
    );
    assert!(send_until_refused(&mut c, WAIT).await.is_some());
    let end = std::time::Instant::now() + WAIT;
    let mut back = None;
    while back.is_none() && std::time::Instant::now() < end {
        back = client(&hub, hub.hub()).await.ok();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut back = back.expect("the hub came back");
    assert!(back
        .send(&OutEvent::text("back"))
        .await
        .unwrap()
        .is_accepted());
    back.close().await;
    hub.shutdown().await;
}

/// Delayed dispositions: the event is recorded but the client hears nothing until the delay
/// ends (here: until the fault is cleared).
#[tokio::test]
async fn fault_delay_dispositions() {
    let hub = start(HubConfig::default()).await;
    let mut c = client(&hub, hub.hub()).await.expect("connect");
    hub.faults().delay_dispositions(Duration::from_secs(3600));
    let mut outcome = c
        .send_batch(&[OutEvent::text("slow")])
        .await
        .expect("start sending");
    hub.wait_for_events(1, WAIT).await.expect("recorded");
    // Poll the settlement for a whole second: without the fault it arrives in milliseconds
    // (a single poll after a sleep could miss it either way and prove nothing).
    let early = tokio::time::timeout(Duration::from_secs(1), &mut outcome).await;
    assert!(early.is_err(), "settled despite the delay: {early:?}");
    hub.faults().clear();
    let outcome = tokio::time::timeout(WAIT, outcome).await.expect("settled");
    assert!(
        matches!(outcome, Ok(ref o) if o.is_accepted()),
        "{outcome:?}"
    );
    c.close().await;
    hub.shutdown().await;
}

/// Early token expiry closes open links with amqp:unauthorized-access; a renewed token keeps
/// a new link open.
#[tokio::test]
async fn fault_expire_tokens_closes_links_unless_renewed() {
    let hub = start(HubConfig::default()).await;
    let mut c = client(&hub, hub.hub()).await.expect("connect");
    hub.faults().expire_tokens_after(Duration::from_secs(1));
    let refusal = send_until_refused(&mut c, WAIT)
        .await
        .expect("the link closes");
    assert!(
        refusal.contains("unauthorized")
            || refusal.contains("Unauthorized")
            || refusal.contains("timed out"),
        "{refusal}"
    );
    assert!(hub.stats().auth_failures >= 1, "{:?}", hub.stats());
    // With the fault still on, a client that renews keeps sending well past the first expiry
    // (3 s lifetimes leave room for a slow machine between renewals).
    hub.faults().expire_tokens_after(Duration::from_secs(3));
    let mut renewing = client(&hub, hub.hub()).await.expect("connect");
    let end = std::time::Instant::now() + Duration::from_secs(7);
    while std::time::Instant::now() < end {
        let (audience, token) = sas_for(&hub, 3600);
        renewing
            .renew(TokenSpec {
                kind: SAS_TOKEN_TYPE,
                value: &token,
                audience: &audience,
            })
            .await
            .expect("renew");
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            renewing.send(&OutEvent::text("renewed")),
        )
        .await
        .expect("send completes")
        .expect("send");
        assert!(sent.is_accepted());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    renewing.close().await;
    hub.shutdown().await;
}

/// Microsoft's SDK over WebSockets (`TransportType.AmqpOverWebsocket`, wss on
/// /$servicebus/websocket with subprotocol AMQPWSB10): the same events arrive.
#[tokio::test]
async fn microsofts_sdk_sends_over_websockets() {
    let hub = start(HubConfig::default()).await;
    let port = hub.wss_addr().port().to_string();
    let ca = hub.ca_cert_path().to_string_lossy().to_string();
    let out = python::run_script_async(
        "hub_sdk_send.py",
        &[
            "send",
            &hub.connection_string(DEFAULT_KEY_NAME),
            &port,
            &ca,
            "websocket",
        ],
    )
    .await;
    python::assert_success("hub_sdk_send.py send over websocket", &out);
    let events = hub.wait_for_events(13, WAIT).await.expect("13 events");
    assert_eq!(events[0].body, b"single-0", "{}", describe(&events));
    assert_eq!(events[0].partition_key.as_deref(), Some("pk-0"));
    assert!(events[3..]
        .iter()
        .all(|e| e.partition_key.as_deref() == Some("batch-key")));
    hub.shutdown().await;
}

mod hostile {
    //! Hostile peers against every listener: malformed AMQP frames (plain, TLS, WebSocket),
    //! silent and half-sent HTTPS requests, and generated mutations of a valid opening. The
    //! emulator never panics (no connection left registered), never hangs, and keeps serving.

    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tagbridge::sim::hub::{Hub, HubConfig, HubHandle};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpStream;

    const WAIT: Duration = Duration::from_secs(20);
    /// SASL protocol header (AMQP 1.0 part 5, 5.3.2).
    const SASL_HEADER: &[u8] = b"AMQP\x03\x01\x00\x00";

    /// A SASL init frame choosing ANONYMOUS: the opening Microsoft's SDKs send.
    fn sasl_init() -> Vec<u8> {
        let mut body = vec![0x00, 0x53, 0x41, 0xc0, 12, 1, 0xa3, 9];
        body.extend_from_slice(b"ANONYMOUS");
        let size = 8 + body.len() as u32;
        let mut frame = size.to_be_bytes().to_vec();
        frame.extend_from_slice(&[2, 1, 0, 0]);
        frame.extend(body);
        frame
    }

    fn tls_connector(hub: &HubHandle) -> tokio_rustls::TlsConnector {
        let config = tagbridge::sink::eventhub::tls::client_config(Some(hub.ca_cert_path()))
            .expect("trust the emulator's CA");
        tokio_rustls::TlsConnector::from(Arc::clone(&config))
    }

    /// Writes `bytes` and reads until the emulator closes (or `limit` passes): whether it closed.
    async fn closes_after<S: AsyncRead + AsyncWrite + Unpin>(
        mut s: S,
        bytes: &[u8],
        limit: Duration,
    ) -> bool {
        let _ = s.write_all(bytes).await;
        let _ = s.flush().await;
        let mut sink = [0u8; 4096];
        tokio::time::timeout(limit, async {
            loop {
                match s.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    async fn tls(hub: &HubHandle, port: u16) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tls_connector(hub).connect(name, tcp).await.expect("TLS")
    }

    /// The emulator still works: a real client delivers an event.
    async fn still_serves(hub: &HubHandle) {
        assert!(
            crate::support::wait_until(WAIT, || hub.open_sockets() == 0).await,
            "{} connections left registered (a panicked task leaks its entry)",
            hub.open_sockets()
        );
        let before = hub.stats().events;
        let mut c = super::client(hub, hub.hub())
            .await
            .expect("a client connects");
        let outcome = c
            .send(&tagbridge::sim::hub::client::OutEvent::text(
                "after the storm",
            ))
            .await
            .expect("send");
        assert!(outcome.is_accepted(), "{outcome:?}");
        assert_eq!(hub.stats().events, before + 1);
    }

    /// A SASL frame whose size field is 4 (it panicked inside fe2o3's decoder), on the plain and
    /// TLS ports, and other impossible headers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn impossible_frame_headers_close_the_connection_and_leak_nothing() {
        let hub = Hub::start(HubConfig::default())
            .await
            .expect("emulator starts");
        let bad_headers: [[u8; 8]; 4] = [
            [0, 0, 0, 4, 2, 1, 0, 0],
            [0, 0, 0, 0, 2, 1, 0, 0],
            [0, 0, 0, 8, 0, 1, 0, 0],
            [0xff, 0xff, 0xff, 0xff, 2, 1, 0, 0],
        ];
        for header in bad_headers {
            let mut bytes = SASL_HEADER.to_vec();
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(&[0; 16]);
            let plain = TcpStream::connect(hub.amqp_addr()).await.unwrap();
            assert!(
                closes_after(plain, &bytes, WAIT).await,
                "plain {header:?}: not closed"
            );
            let tls = tls(&hub, hub.amqps_addr().port()).await;
            assert!(
                closes_after(tls, &bytes, WAIT).await,
                "TLS {header:?}: not closed"
            );
        }
        still_serves(&hub).await;
        hub.shutdown().await;
    }

    /// Silent sockets and half-sent headers on the HTTPS listener are closed after the idle
    /// timeout, in the handshake and after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_https_sockets_are_closed() {
        let hub = Hub::start(HubConfig {
            idle_timeout: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .expect("emulator starts");
        let port = hub.https_addr().port();
        let started = Instant::now();
        let mut silent = Vec::new();
        for _ in 0..20 {
            silent.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        for s in silent {
            assert!(
                closes_after(s, b"", Duration::from_secs(10)).await,
                "a silent socket stayed open"
            );
        }
        let half = tls(&hub, port).await;
        assert!(
            closes_after(
                half,
                b"POST /telemetry/messages HTTP/1.1\r\nHost: loc",
                Duration::from_secs(10)
            )
            .await,
            "half-sent headers held the socket"
        );
        assert!(started.elapsed() < Duration::from_secs(15));
        hub.shutdown().await;
    }

    /// Generated input: mutations of a valid SASL opening (bit flips, truncation, insertion,
    /// overwritten size fields, random tails) sent to the plain AMQP, TLS AMQP and HTTPS
    /// listeners. Runs ~3 s; `TAGBRIDGE_FUZZ_SECS=600` runs longer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mutated_openings_never_crash_or_stall_the_listeners() {
        use rand::{Rng, SeedableRng};
        let secs = std::env::var("TAGBRIDGE_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3u64);
        let seed = rand::random::<u64>();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let hub = Hub::start(HubConfig {
            idle_timeout: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .expect("emulator starts");
        let mut valid = SASL_HEADER.to_vec();
        valid.extend(sasl_init());
        let end = Instant::now() + Duration::from_secs(secs);
        let mut cases = 0u64;
        while Instant::now() < end {
            let input = tagbridge::sink::eventhub::frame_guard::mutate(&valid, &mut rng);
            let target = rng.gen_range(0..3);
            let closed = match target {
                0 => {
                    closes_after(
                        TcpStream::connect(hub.amqp_addr()).await.unwrap(),
                        &input,
                        Duration::from_millis(300),
                    )
                    .await
                }
                1 => {
                    closes_after(
                        tls(&hub, hub.amqps_addr().port()).await,
                        &input,
                        Duration::from_millis(300),
                    )
                    .await
                }
                _ => {
                    closes_after(
                        tls(&hub, hub.https_addr().port()).await,
                        &input,
                        Duration::from_millis(300),
                    )
                    .await
                }
            };
            // A mutation may be a valid opening that waits for more: that is not a hang; the
            // socket is dropped here and the emulator must let it go.
            let _ = closed;
            cases += 1;
        }
        eprintln!("fuzz: {cases} mutated openings, seed {seed}");
        still_serves(&hub).await;
        hub.shutdown().await;
    }
}
