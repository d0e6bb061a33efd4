//! The Event Hub emulator against independent clients: Microsoft's azure-eventhub Python SDK
//! (SAS over TLS, batches, wrong keys, $management), REST with urllib, fe2o3 (single, batch,
//! partitions, JWTs from the token endpoint), and each fault mode.

use std::collections::BTreeMap;
use std::time::Duration;

use tagbridge::sim::hub::auth::SAS_TOKEN_TYPE;
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
        first.properties.get("unit").map(String::as_str),
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
        assert_eq!(found.properties.get("kind").map(String::as_str), Some(kind));
    }
    let batched: Vec<_> = events
        .iter()
        .filter(|e| e.properties.get("kind").map(String::as_str) == Some("batched"))
        .collect();
    assert_eq!(batched[3].message_id.as_deref(), Some("batch-3"));
    let hub_stats = hub.stats();
    hub.shutdown().await;
    let lines = std::fs::read_to_string(&output).unwrap();
    assert_eq!(lines.lines().count(), 13, "{lines}\n{hub_stats:?}");
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

/// The SDK's $management READ gets the hub's name and partition ids.
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
    hub.shutdown().await;
}
