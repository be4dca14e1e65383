//! A small Chrome DevTools Protocol client for the browser tests: launches headless Chromium
//! (`/usr/bin/chromium`, or `SYNCHUB_TEST_CHROMIUM`), attaches to its page over a loopback
//! WebSocket and offers navigate / evaluate / wait-for / screenshot. A CDP crate would pull in
//! hundreds of generated protocol types for the six commands these tests use.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Browser {
    child: Child,
    ws: Ws,
    next_id: u64,
    _profile: tempfile::TempDir,
}

fn chromium() -> String {
    std::env::var("SYNCHUB_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Where screenshots go: `<target dir>/ui-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("create screenshot dir");
    dir
}

impl Browser {
    /// Starts headless Chromium at 1280×800; fails the test loudly when it is missing.
    pub async fn launch() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1280,800",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "Chromium is required for the browser tests ({}): {e}. Install it with \
                     `apt-get install -y chromium`.",
                    chromium()
                )
            });
        // Chromium prints its DevTools endpoint on stderr.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let browser_ws = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("Chromium did not print its DevTools endpoint within 30 s");
        let port = browser_ws
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .and_then(|h| h.rsplit(':').next())
            .expect("port in DevTools url")
            .to_string();
        let list: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .expect("DevTools target list")
            .json()
            .await
            .expect("target list JSON");
        let page_ws = list
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target: {list}"))
            .to_string();
        let (ws, _) = tokio_tungstenite::connect_async(page_ws.as_str())
            .await
            .expect("connect to the page's DevTools socket");
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        };
        b.call("Page.enable", json!({})).await;
        b.call("Runtime.enable", json!({})).await;
        b.viewport(1280, 800, false).await;
        b
    }

    /// One CDP command; events that arrive meanwhile are dropped.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::Text(msg.into()))
            .await
            .expect("send CDP command");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"))
                .expect("DevTools socket closed")
                .expect("DevTools socket error");
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).expect("CDP JSON");
                if v["id"] == id {
                    if !v["error"].is_null() {
                        panic!("{method} failed: {}", v["error"]);
                    }
                    return v["result"].clone();
                }
            }
        }
    }

    pub async fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": if mobile { 2 } else { 1 }, "mobile": mobile}),
        )
        .await;
    }

    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for("document.readyState === 'complete'").await;
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("script failed: {expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until the expression is truthy (navigation and htmx swaps are asynchronous).
    pub async fn wait_for(&mut self, expr: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let guarded =
            format!("(() => {{ try {{ return !!({expr}); }} catch (e) {{ return false; }} }})()");
        loop {
            if self.eval(&guarded).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let url = self.eval("location.href").await;
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!("timed out waiting for `{expr}` on {url}: {text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for a page load started by a click or submit: the marker set before it is gone.
    pub async fn click_and_wait(&mut self, selector: &str) {
        self.eval("window.__synchubMarker = 1").await;
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) throw new Error('no ' + {sel}); e.click(); }})()"
        ))
        .await;
        self.wait_for("window.__synchubMarker === undefined && document.readyState === 'complete'")
            .await;
    }

    pub async fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves a PNG of the viewport (or the whole page) under [`screenshot_dir`].
    pub async fn screenshot(&mut self, name: &str, full_page: bool) -> PathBuf {
        if full_page {
            // A sticky header would be painted mid-page in a full-page capture.
            self.eval(
                "document.querySelectorAll('header.top').forEach(h => h.style.position = 'static')",
            )
            .await;
        }
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": full_page}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG image");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
