//! The live view against a running gateway on the simulated PLC: `/api/live`, the page at `/`
//! in a real headless Chromium (over WebDriver), and `tagbridge watch` in tmux.
//!
//! Each checks the same three things: the tags are shown, a value changes on screen within two
//! seconds of the PLC changing it, a tag whose device goes silent turns stale; and the filter.
//! The PLC's counter steps every [`COUNTER_UPDATE`] from 1000, so what it holds at any moment
//! is known from its clock.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::chain::{self, http_get, ChainOptions, COUNTER, COUNTER_UPDATE, LEVEL};
use crate::support::{wait_for, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);
/// How soon a PLC change must be on screen.
const ON_SCREEN: Duration = Duration::from_secs(2);

/// The counter's value on the PLC now.
fn plc_counter(chain: &chain::Chain) -> u64 {
    1000 + (chain.plc.elapsed().as_millis() / COUNTER_UPDATE.as_millis()) as u64
}

async fn live(addr: SocketAddr, query: &str) -> Value {
    let (status, body) = http_get(addr, &format!("/api/live{query}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn tag<'a>(data: &'a Value, sensor: &str) -> Option<&'a Value> {
    data["maps"]
        .as_array()?
        .iter()
        .flat_map(|m| m["tags"].as_array().into_iter().flatten())
        .find(|t| t["sensor_id"] == sensor)
}

/// Skips (returns false) when a tool is missing outside CI; fails under CI.
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg(if tool == "tmux" { "-V" } else { "--version" })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is required under CI (.ci/run installs it)"
        );
        eprintln!(
            "SKIPPED: {tool} is not installed (apt-get install chromium chromium-driver tmux)"
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_live_lists_every_tag_with_value_age_status_and_file_line() {
    let chain = chain::start(ChainOptions {
        metrics: true,
        ..Default::default()
    })
    .await;
    let addr = chain.metrics.expect("metrics served");
    assert!(
        wait_for(DEADLINE, || async {
            let data = live(addr, "").await;
            data["hub"] == "connected"
                && tag(&data, LEVEL).is_some_and(|t| t["value"] == 12.5 && t["suppressed"] != 0)
        })
        .await
    );
    let data = live(addr, "").await;
    let map = &data["maps"][0];
    assert_eq!(map["name"], "chain", "{data}");
    assert_eq!(map["protocol"], "modbus");
    assert_eq!(map["connected"], true);
    assert!(map["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("chain.yaml")));
    let level = tag(&data, LEVEL).expect("the level is listed");
    assert_eq!(level["status"], "good", "{data}");
    // The tag map's tags are on lines 9 and 10 of the file the chain writes.
    assert_eq!(level["line"], 10, "{data}");
    assert_eq!(tag(&data, COUNTER).map(|t| &t["line"]), Some(&json!(9)));
    assert!(
        level["suppressed"].as_u64().is_some_and(|n| n > 0),
        "{data}"
    );
    assert_eq!(level["sent"], 1, "{data}");
    assert!(level["age_s"].as_f64().is_some_and(|a| a < 2.0), "{data}");
    assert!(data["spool_depth"].is_u64());
    assert_eq!(data["hub"], "connected");
    // The value follows the PLC.
    for _ in 0..3 {
        let want = plc_counter(&chain);
        assert!(
            wait_for(ON_SCREEN, || async {
                tag(&live(addr, "").await, COUNTER)
                    .and_then(|t| t["value"].as_u64())
                    .is_some_and(|v| v >= want)
            })
            .await,
            "counter {want} not shown within {ON_SCREEN:?}: {}",
            live(addr, "").await
        );
    }
    // Filters.
    let only = live(addr, "?q=LEVEL").await;
    assert_eq!(only["tags_matched"], 1, "{only}");
    assert!(tag(&only, COUNTER).is_none());
    // A silent device: its tags turn stale.
    chain.plc.faults().go_silent(Duration::from_secs(60));
    assert!(
        wait_for(DEADLINE, || async {
            tag(&live(addr, "").await, LEVEL).is_some_and(|t| t["status"] == "stale")
        })
        .await,
        "{}",
        live(addr, "").await
    );
    assert_eq!(live(addr, "?status=stale").await["tags_matched"], 2);
    assert_eq!(live(addr, "?status=good").await["tags_matched"], 0);
    chain.plc.faults().end_silence();
    assert!(
        wait_for(DEADLINE, || async {
            tag(&live(addr, "").await, LEVEL).is_some_and(|t| t["status"] == "good")
        })
        .await
    );
    chain.stop().await;
}

/// A WebDriver session on a headless Chromium, ended (and chromedriver killed) on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let ready = wait_for(Duration::from_secs(20), || async {
            http.get(format!("{base}/status"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(ready, "chromedriver did not answer on {base}");
        let profile = tempfile::tempdir().expect("profile dir");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        }}});
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let answer = browser.call("POST", "/session", caps).await;
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let answer: Value = request
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("chromedriver answers JSON");
        answer["value"].clone()
    }

    async fn session(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    async fn open(&self, url: &str) {
        self.session("POST", "/url", json!({"url": url})).await;
    }

    /// The rows of the page's table: sensor_id -> (value cell, status class).
    async fn rows(&self) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            json!({"script": "return Array.from(document.querySelectorAll('#rows tr')).map(r => \
                ({sensor: r.dataset.sensor, value: r.querySelector('.value').textContent, \
                  status: r.className, age: r.querySelector('.age').textContent}))", "args": []}),
        )
        .await
    }

    async fn row(&self, sensor: &str) -> Option<Value> {
        self.rows()
            .await
            .as_array()?
            .iter()
            .find(|r| r["sensor"] == sensor)
            .cloned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self
            .session(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let id = element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {element}"))
            .to_string();
        self.session(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn screenshot(&self, to: &std::path::Path) {
        use base64::Engine;
        let png = self.session("GET", "/screenshot", Value::Null).await;
        if let Some(data) = png.as_str() {
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) {
                let _ = std::fs::write(to, bytes);
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_headless_chromium_shows_tags_live_stale_and_filtered() {
    if !have("chromedriver") || !have("chromium") {
        return;
    }
    let chain = chain::start(ChainOptions {
        metrics: true,
        ..Default::default()
    })
    .await;
    let addr = chain.metrics.expect("metrics served");
    let browser = Browser::start().await;
    browser.open(&format!("http://{addr}/")).await;
    // The page shows the tags.
    let shown = wait_for(DEADLINE, || async {
        browser
            .row(LEVEL)
            .await
            .is_some_and(|r| r["value"] == "12.5" && r["status"] == "good")
    })
    .await;
    assert!(shown, "rows: {}", browser.rows().await);
    // A PLC change is on screen within two seconds.
    for _ in 0..3 {
        let want = plc_counter(&chain);
        let on_screen = wait_for(ON_SCREEN, || async {
            browser
                .row(COUNTER)
                .await
                .and_then(|r| r["value"].as_str()?.parse::<u64>().ok())
                .is_some_and(|v| v >= want)
        })
        .await;
        assert!(
            on_screen,
            "counter {want} not on screen: {}",
            browser.rows().await
        );
    }
    // Ages tick between answers: the level is unchanged, its age cell text changes.
    let age = browser.row(LEVEL).await.map(|r| r["age"].clone());
    assert!(
        wait_for(Duration::from_secs(5), || async {
            browser.row(LEVEL).await.map(|r| r["age"].clone()) != age
        })
        .await
    );
    if let Ok(dir) = std::env::var("TAGBRIDGE_SCREENSHOT") {
        browser.screenshot(std::path::Path::new(&dir)).await;
    }
    // The filter: only the level is left.
    browser.type_into("#filter", "level").await;
    let filtered = wait_for(Duration::from_secs(10), || async {
        let rows = browser.rows().await;
        rows.as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["sensor"] == LEVEL)
    })
    .await;
    assert!(filtered, "rows: {}", browser.rows().await);
    // The device goes silent: the row turns stale.
    chain.plc.faults().go_silent(Duration::from_secs(60));
    let stale = wait_for(DEADLINE, || async {
        browser
            .row(LEVEL)
            .await
            .is_some_and(|r| r["status"] == "stale")
    })
    .await;
    assert!(stale, "rows: {}", browser.rows().await);
    browser.session("DELETE", "", Value::Null).await;
    drop(browser);
    chain.plc.faults().end_silence();
    chain.stop().await;
}

/// A tmux server of its own (a unique socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let socket = format!(
            "tagbridge-watch-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let ok = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "new-session",
                "-d",
                "-x",
                "200",
                "-y",
                "40",
                command,
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux starts `{command}`");
        Tmux { socket }
    }

    fn screen(&self) -> String {
        Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The screen line of `sensor`, split in columns.
    fn line(&self, sensor: &str) -> Option<Vec<String>> {
        self.screen()
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(sensor))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_in_tmux_shows_tags_live_stale_and_filtered() {
    if !have("tmux") {
        return;
    }
    let chain = chain::start(ChainOptions {
        metrics: true,
        ..Default::default()
    })
    .await;
    let addr = chain.metrics.expect("metrics served");
    let bin = env!("CARGO_BIN_EXE_tagbridge");
    let all = Tmux::start(&format!("{bin} watch --addr {addr} --every 0.5"));
    // Columns: tag map, sensor_id, value, age, status, sent, suppressed, file:line.
    assert!(
        wait_until(DEADLINE, || all
            .line(LEVEL)
            .is_some_and(|c| c[2] == "12.5" && c[4] == "good"))
        .await,
        "{}",
        all.screen()
    );
    assert!(all
        .line(LEVEL)
        .is_some_and(|c| c[7].ends_with("chain.yaml:10")));
    for _ in 0..3 {
        let want = plc_counter(&chain);
        assert!(
            wait_until(ON_SCREEN, || all
                .line(COUNTER)
                .and_then(|c| c[2].parse::<u64>().ok())
                .is_some_and(|v| v >= want))
            .await,
            "counter {want} not on screen:\n{}",
            all.screen()
        );
    }
    let filtered = Tmux::start(&format!("{bin} watch --addr {addr} --every 0.5 LEVEL"));
    assert!(
        wait_until(DEADLINE, || filtered.line(LEVEL).is_some()).await,
        "{}",
        filtered.screen()
    );
    assert!(filtered.line(COUNTER).is_none(), "{}", filtered.screen());
    chain.plc.faults().go_silent(Duration::from_secs(60));
    assert!(
        wait_until(DEADLINE, || all
            .line(LEVEL)
            .is_some_and(|c| c[4] == "stale"))
        .await,
        "{}",
        all.screen()
    );
    chain.plc.faults().end_silence();
    drop((all, filtered));
    chain.stop().await;
}

#[test]
fn watch_without_a_gateway_says_where_it_looked() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    // Nothing listens there once the listener is dropped.
    let out = crate::support::tagbridge()
        .args(["watch", "--once", "--addr", &port.to_string()])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("no answer at http://{port}")),
        "{err}"
    );
}
