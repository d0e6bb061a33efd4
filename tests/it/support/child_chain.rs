//! The chain with `tagbridge run` as a child process, for the tests that kill it (`kill -9`,
//! SIGTERM) and start it again over the same spool: a simulated Modbus PLC whose holding
//! registers `0..sensors` count up, the hub emulator, and a directory with gateway.yaml, the tag
//! map (sensors `c0`, `c1`, …), the spool and the gateway's JSON log.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tagbridge::sim::hub::{Hub, HubConfig, HubHandle, DEFAULT_KEY_NAME};
use tagbridge::sim::plc::{Plc, PlcConfig, PlcHandle};
use tagbridge::sim::signal::Signal;
use tagbridge::spool::{inspect, SpoolStatus};

/// The counters step this often; the gateway polls four times as often.
pub const UPDATE_MS: u64 = 400;
pub const POLL_MS: u64 = 100;
/// The gateway runs with `HOSTNAME` set to this, so its message ids are `gw-…`.
pub const HOSTNAME: &str = "gw";

/// What differs between the tests that use the rig.
#[derive(Debug, Clone, Copy)]
pub struct RigOptions<'a> {
    /// How many counter registers, and tags.
    pub sensors: usize,
    /// Lines added to gateway.yaml's `sink.eventhub` map (indented by four spaces).
    pub eventhub_extra: &'a str,
    /// Lines added to gateway.yaml's `spool` map (indented by two spaces).
    pub spool_extra: &'a str,
}

pub struct Rig {
    pub plc: PlcHandle,
    pub hub: HubHandle,
    /// Holds gateway.yaml, the tag map, the spool and the gateway's log.
    pub dir: tempfile::TempDir,
    signals: Vec<Signal>,
}

impl Rig {
    /// PLC and hub up, the tag map and gateway.yaml written; no gateway runs yet.
    pub async fn start(options: RigOptions<'_>) -> Rig {
        let RigOptions {
            sensors,
            eventhub_extra,
            spool_extra,
        } = options;
        let points: String = (0..sensors)
            .map(|i| {
                format!(
                    "    - {{table: holding_register, address: {i}, type: uint16, signal: {{counter: {{start: {}, step: 1, wrap: 65536, update: {UPDATE_MS}ms}}}}}}\n",
                    i * 100
                )
            })
            .collect();
        let yaml = format!("modbus:\n  listen: 127.0.0.1:0\n  points:\n{points}");
        let parsed = tagbridge::config::parse_str::<PlcConfig>(&yaml);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let config = parsed.value.expect("PLC config");
        let signals = config
            .modbus
            .as_ref()
            .expect("modbus")
            .points
            .iter()
            .map(|p| p.signal.clone())
            .collect();
        let plc = Plc::start(config).await.expect("PLC starts");
        let hub = Hub::start(HubConfig::default()).await.expect("hub starts");
        let dir = tempfile::tempdir().unwrap();
        let tags: String = (0..sensors)
            .map(|i| {
                format!("  - {{sensor_id: c{i}, table: holding_register, address: {i}, type: uint16}}\n")
            })
            .collect();
        std::fs::write(
            dir.path().join("plc.yaml"),
            format!(
                "source:\n  modbus:\n    tcp: {}\n    unit: 1\n    timeout: 1s\ndefaults:\n  interval: {POLL_MS}ms\ntags:\n{tags}",
                plc.modbus_addr().expect("modbus address")
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("gateway.yaml"),
            format!(
                "tag_maps: plc.yaml\nsink:\n  eventhub:\n    connection_string_env: TB_IT_HUB\n    ca_file: {}\n    linger: 20ms\n{eventhub_extra}spool:\n  dir: spool\n  fsync: 100ms\n{spool_extra}telemetry:\n  metrics: \"off\"\n  log_level: info\n  log_format: json\n",
                hub.ca_cert_path().display()
            ),
        )
        .unwrap();
        Rig {
            plc,
            hub,
            dir,
            signals,
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    /// `tagbridge run`, its log appended to gateway.log.
    pub fn gateway(&self) -> Child {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        super::tagbridge()
            .args(["run", "-c"])
            .arg(self.dir.path().join("gateway.yaml"))
            .env("TB_IT_HUB", self.hub.connection_string(DEFAULT_KEY_NAME))
            .env("HOSTNAME", HOSTNAME)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("gateway starts")
    }

    pub fn status(&self) -> SpoolStatus {
        inspect(&self.spool_dir()).unwrap_or_default()
    }

    /// The last lines of the gateway's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The first sequence number of every run that opened the spool, from the log.
    pub fn run_starts(&self) -> Vec<u64> {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Spool opened"))
            })
            .filter_map(|v| v["next_seq"].as_u64())
            .collect()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub async fn stop(&self, mut child: Child) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let exited = super::wait_until(Duration::from_secs(60), || {
            matches!(child.try_wait(), Ok(Some(_)))
        })
        .await;
        if !exited {
            let _ = child.kill();
        }
        let status = child.wait().expect("reaped");
        assert!(
            exited && status.success(),
            "gateway did not stop cleanly ({status:?}):\n{}",
            self.log_tail()
        );
    }

    /// What counter `sensor` held for a reading stamped `at`. Timestamps are cut to the
    /// millisecond: the response came up to 1 ms later.
    pub fn held(&self, sensor: usize, at: DateTime<Utc>) -> i64 {
        let t = self.plc.t_at(at + chrono::Duration::milliseconds(1));
        self.signals[sensor].value_at(t).as_i64()
    }
}
