//! Nothing accepted is lost: the real binary ingests leads from concurrent REST clients, is
//! killed with SIGKILL mid-stream, restarted on the same store, and every record that got a 202
//! must end up in the CRM store exactly once (clients resend what got no answer, as partners do).

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::Mutex;

#[path = "support/tree.rs"]
mod tree;

const CLIENTS: usize = 8;
const BATCH: usize = 50;
const RECORDS: usize = 20_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(root: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_synchub"))
        .args(["run", "--config"])
        .arg(root.join("config"))
        .env(
            "SYNCHUB__STORE__URL",
            format!("sqlite://{}/data/hub.db", root.display()),
        )
        .env("SYNCHUB__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start synchub")
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/health/ready")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "hub did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn batch(n: usize) -> Value {
    let recs: Vec<Value> = (0..BATCH)
        .map(|i| {
            let k = n * BATCH + i;
            json!({"source_ref": format!("CRASH-{k}"), "name": "测试", "mobile": format!("139{k:08}"), "city": "广州"})
        })
        .collect();
    Value::Array(recs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_and_duplicates_nothing() {
    let root = tempfile::tempdir().unwrap();
    tree::copy_shipped_config(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        root.path(),
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut child = start(root.path(), port);
    wait_ready(&client, &base).await;

    let batches = RECORDS / BATCH;
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    // source_ref -> lead id from every 202.
    let accepted: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, base, next, sent, accepted) = (
            client.clone(),
            base.clone(),
            next.clone(),
            sent.clone(),
            accepted.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= batches {
                    return;
                }
                let body = batch(n);
                // A partner resends until it gets an answer: that is what makes a crash between
                // commit and response harmless, and what the idempotency key is for.
                loop {
                    match client
                        .post(format!("{base}/api/v1/leads"))
                        .header("X-Api-Key", "demo-website")
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 202 => {
                            let v: Value = r.json().await.unwrap();
                            let mut acc = accepted.lock().await;
                            for a in v["accepted"].as_array().unwrap() {
                                let sr = a["source_ref"].as_str().unwrap().to_string();
                                let id = a["id"].as_str().unwrap().to_string();
                                if let Some(prev) = acc.insert(sr.clone(), id.clone()) {
                                    assert_eq!(
                                        prev, id,
                                        "a resent record got a different id: {sr}"
                                    );
                                }
                            }
                            assert!(v["rejected"].as_array().unwrap().is_empty(), "{v}");
                            sent.fetch_add(BATCH, Ordering::SeqCst);
                            break;
                        }
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        }));
    }
    // Kill mid-stream.
    while sent.load(Ordering::SeqCst) < RECORDS * 2 / 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let at_kill = sent.load(Ordering::SeqCst);
    assert!(at_kill < RECORDS, "the kill must happen mid-stream");
    let mut child = start(root.path(), port);
    wait_ready(&client, &base).await;
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = accepted.lock().await.clone();
    assert_eq!(
        accepted.len(),
        RECORDS,
        "every record was eventually accepted"
    );

    // Wait for the dispatcher to put everything into the CRM store.
    let db = format!("sqlite://{}/data/hub.db?mode=ro", root.path().display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending','in_flight')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} deliveries still open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = sqlx::query("SELECT id, data FROM crm_records WHERE entity = 'lead'")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut by_ref: HashMap<String, Vec<String>> = HashMap::new();
    for r in &rows {
        let id: String = r.get(0);
        let data: Value = serde_json::from_str(&r.get::<String, _>(1)).unwrap();
        by_ref
            .entry(data["source_ref"].as_str().unwrap().to_string())
            .or_default()
            .push(id);
    }
    for (sr, id) in &accepted {
        let ids = by_ref
            .get(sr)
            .unwrap_or_else(|| panic!("accepted record {sr} ({id}) is missing from the CRM store"));
        assert_eq!(
            ids,
            &vec![id.clone()],
            "record {sr} must be in the CRM store exactly once, as {id}"
        );
    }
    assert_eq!(rows.len(), RECORDS, "no extra leads");
    let ids: HashSet<&String> = accepted.values().collect();
    assert_eq!(ids.len(), RECORDS, "lead ids are unique");
    let parked: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status <> 'delivered'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(parked, 0, "every delivery delivered");
    eprintln!(
        "crash test: killed after {at_kill} of {RECORDS} records; all {RECORDS} in the CRM store once"
    );
    pool.close().await;
    let _ = child.kill();
    let _ = child.wait();
}
