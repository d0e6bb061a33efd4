//! The Modbus source against a hostile device: a hand-written Modbus TCP server on loopback that
//! answers with wrong transaction ids, lying byte counts, truncated frames, one byte at a time,
//! over-long coil replies, data beyond the byte count, exception 0xFF, accept-and-close and
//! silence. `tagbridge run` (the
//! real binary, readings on stdout) reads it next to a healthy device. Whatever the hostile
//! device does: no panic, no bogus value delivered, the healthy device keeps flowing, the
//! hostile one is read again once it behaves, and a failure streak is logged once with its cause
//! and its end once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A value a well-formed answer never carries (good answers count up from 0 and stay below it).
const BOGUS: u16 = 0xDEAD;

/// What the server does with each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Good,
    AcceptAndClose,
    Silence,
    WrongTransactionId,
    LyingByteCount,
    Truncated,
    ByteAtATime,
    LongCoilReply,
    ExceptionFf,
    /// The byte count matches the read, the frame carries more data than it announces.
    TrailingData,
}

impl Mode {
    const ALL: [Mode; 10] = [
        Mode::Good,
        Mode::AcceptAndClose,
        Mode::Silence,
        Mode::WrongTransactionId,
        Mode::LyingByteCount,
        Mode::Truncated,
        Mode::ByteAtATime,
        Mode::LongCoilReply,
        Mode::ExceptionFf,
        Mode::TrailingData,
    ];
}

/// A Modbus TCP server whose behaviour can be switched while it runs.
struct Device {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
}

impl Device {
    async fn start() -> Device {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(Mode::Good as u8));
        let counter = Arc::new(AtomicU16::new(0));
        let shared = Arc::clone(&mode);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&shared), Arc::clone(&counter)));
            }
        });
        Device { addr, mode }
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

fn mode_of(m: &AtomicU8) -> Mode {
    let v = m.load(Ordering::SeqCst);
    Mode::ALL
        .into_iter()
        .find(|m| *m as u8 == v)
        .unwrap_or(Mode::Good)
}

/// Modbus Application Protocol V1.1b3 over TCP: MBAP header (transaction id, protocol 0, length,
/// unit) then the PDU. Reads of coils (0x01) and holding registers (0x03) only.
async fn serve(mut stream: TcpStream, mode: Arc<AtomicU8>, counter: Arc<AtomicU16>) {
    loop {
        let mut header = [0u8; 7];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let mut pdu = vec![0u8; len.saturating_sub(1)];
        if stream.read_exact(&mut pdu).await.is_err() || pdu.len() < 5 {
            return;
        }
        let (tid, unit, function) = ([header[0], header[1]], header[6], pdu[0]);
        let count = u16::from_be_bytes([pdu[3], pdu[4]]);
        let mode = mode_of(&mode);
        let good_value = counter.fetch_add(1, Ordering::SeqCst) % 1000;
        // A malformed answer carries values no well-formed one does, so a reading taken from it
        // shows: registers 0xDEAD, coils 1.
        let malformed = matches!(
            mode,
            Mode::WrongTransactionId
                | Mode::LyingByteCount
                | Mode::Truncated
                | Mode::LongCoilReply
                | Mode::TrailingData
        );
        let mut body = vec![function];
        match (function, mode) {
            (_, Mode::AcceptAndClose) => return,
            (_, Mode::Silence) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            (_, Mode::ExceptionFf) => body = vec![function | 0x80, 0xFF],
            (0x01, _) => {
                let bytes = usize::from(count).div_ceil(8);
                let extra = usize::from(mode == Mode::LongCoilReply);
                let claimed = bytes + extra + usize::from(mode == Mode::LyingByteCount);
                body.push(claimed as u8);
                let bits = if malformed { 0xFF } else { 0x00 };
                body.extend(std::iter::repeat_n(bits, bytes + extra));
                if mode == Mode::TrailingData {
                    body.push(0xFF);
                }
            }
            (0x03, _) => {
                let value = if malformed && mode != Mode::LongCoilReply {
                    BOGUS
                } else {
                    good_value
                };
                let bytes = usize::from(count) * 2;
                let claimed = bytes + 2 * usize::from(mode == Mode::LyingByteCount);
                body.push(claimed as u8);
                for _ in 0..count {
                    body.extend_from_slice(&value.to_be_bytes());
                }
                if mode == Mode::TrailingData {
                    body.extend_from_slice(&BOGUS.to_be_bytes());
                }
            }
            _ => body = vec![function | 0x80, 0x01],
        }
        let tid = if mode == Mode::WrongTransactionId {
            u16::from_be_bytes(tid).wrapping_add(1).to_be_bytes()
        } else {
            tid
        };
        let mut frame = Vec::new();
        frame.extend_from_slice(&tid);
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&((body.len() + 1) as u16).to_be_bytes());
        frame.push(unit);
        frame.extend_from_slice(&body);
        let written = match mode {
            Mode::Truncated => {
                let _ = stream.write_all(&frame[..frame.len() / 2]).await;
                return;
            }
            Mode::ByteAtATime => {
                let mut ok = true;
                for b in &frame {
                    ok &= stream.write_all(&[*b]).await.is_ok();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                ok
            }
            _ => stream.write_all(&frame).await.is_ok(),
        };
        if !written {
            return;
        }
    }
}

fn tag_map(addr: SocketAddr, prefix: &str) -> String {
    format!(
        "source:\n  modbus:\n    tcp: {addr}\n    unit: 1\n    timeout: 300ms\n\
         defaults:\n  interval: 100ms\n\
         tags:\n\
         \x20 - {{sensor_id: {prefix}:hr, table: holding_register, address: 0, type: uint16}}\n\
         \x20 - {{sensor_id: {prefix}:coil, table: coil, address: 0}}\n"
    )
}

/// Readings printed by the gateway so far, as (sensor_id, value).
type Seen = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_device_never_delivers_a_bogus_value_nor_stalls_a_healthy_one() {
    let hostile = Device::start().await;
    let healthy = Device::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    std::fs::write(
        dir.path().join("maps/hostile.yaml"),
        tag_map(hostile.addr, "hostile"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("maps/healthy.yaml"),
        tag_map(healthy.addr, "healthy"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "tag_maps: maps\nsink:\n  stdout: {}\ntelemetry:\n  metrics: off\n",
    )
    .unwrap();
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["run", "-c"])
        .arg(dir.path().join("gateway.yaml"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tagbridge run");
    let seen: Seen = Arc::default();
    let mut lines = BufReader::new(gateway.stdout.take().expect("stdout")).lines();
    let collector = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let id = v["sensor_id"].as_str().unwrap_or_default().to_string();
                    seen.lock().unwrap().push((id, v["value"].clone()));
                }
            }
        })
    };
    let count = |sensor: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| id == sensor)
            .count()
    };

    // Each misbehaviour for a while, then good answers again; the healthy device must keep
    // flowing through all of it, and the hostile one must come back after each.
    let mut stalls = Vec::new();
    for mode in Mode::ALL.into_iter().skip(1) {
        let healthy_before = count("healthy:hr");
        hostile.set(mode);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if count("healthy:hr") < healthy_before + 3 {
            stalls.push(format!("healthy device stalled during {mode:?}"));
        }
        hostile.set(Mode::Good);
        let hostile_before = count("hostile:hr");
        // A refused tag is quarantined and retried alone after 30 s; a failed link reconnects
        // with a backoff of a few seconds at most after 1.5 s of failures.
        let patience = if mode == Mode::ExceptionFf { 45 } else { 20 };
        let back = crate::support::wait_until(Duration::from_secs(patience), || {
            count("hostile:hr") >= hostile_before + 2
        })
        .await;
        if !back {
            stalls.push(format!("hostile device not read again after {mode:?}"));
        }
    }
    gateway.start_kill().expect("stop the gateway");
    let output = gateway.wait_with_output().await.expect("gateway output");
    let _ = collector.await;
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    let seen = seen.lock().unwrap().clone();

    let bogus: Vec<&(String, serde_json::Value)> = seen
        .iter()
        .filter(|(id, v)| {
            (id == "hostile:hr" && v.as_u64().is_none_or(|v| v >= 1000))
                || (id == "hostile:coil" && v.as_u64() != Some(0))
        })
        .collect();
    let tail: String = log
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        bogus.is_empty() && stalls.is_empty(),
        "bogus readings {bogus:?}; stalls {stalls:?}; log tail:\n{tail}"
    );
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    // Exception 0xFF is named by its number, not as `Custom`.
    assert!(
        log.contains("0xFF") || log.contains("0xff"),
        "exception 0xFF not named in the log:\n{tail}"
    );
    // One warning when a streak starts and one line when it ends: not a line per reconnect.
    let open_again = log.matches("Modbus connection open again").count();
    let answers_again = log.matches("Modbus device answers again").count();
    let streaks = Mode::ALL.len() - 1;
    assert!(
        open_again == 0 && answers_again <= streaks,
        "{open_again} 'open again' and {answers_again} 'answers again' lines for {streaks} failure streaks:\n{log}"
    );
}
