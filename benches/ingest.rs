//! Durable REST ingest benchmark: the real hub (SQLite store, dispatcher running) takes lead
//! batches from concurrent HTTP clients, each 202 only after commit; in the same run, the raw
//! batched SQLite insert rate on the same disk as the baseline, and the ratio of the two; then
//! the latency distribution at a fixed offered load. `cargo bench --bench ingest` prints all;
//! `-- --smoke` runs a few seconds only (CI); `-- --ingest-only` stops after the first phase;
//! `-- --latency-only` runs only the fixed-load latency phase (on an empty journal).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{ConnectOptions, Connection, Executor};

#[path = "../tests/support/bench_hub.rs"]
mod bench_hub;
#[path = "../tests/support/tree.rs"]
mod tree;

use bench_hub::BenchHub;

// The same allocator as the binary, so the figures are the binary's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 100;

/// One request body of `BATCH` leads, written as text: the load generator shares the two cores
/// with the hub, so it must cost as little as a real partner's pre-serialised batch.
fn batch(seq: usize) -> String {
    let mut body = String::with_capacity(BATCH * 200);
    body.push('[');
    for i in 0..BATCH {
        let k = seq * BATCH + i;
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"source_ref":"BENCH-{k}","name":"张三","mobile":"1{:010}","province":"广东","city":"广州","interested_model":"雅阁","remark":"周末想试驾"}}"#,
            k % 10_000_000_000
        ));
    }
    body.push(']');
    body
}

/// Rows per second of plain batched inserts on the same disk: WAL, synchronous=FULL, 1,000 rows
/// per transaction, 100 rows per multi-row INSERT (the cheapest way to put rows into SQLite
/// through sqlx), each row the size of a journaled lead. This is the ceiling the journal's
/// several tables per record are compared with.
async fn raw_sqlite_rate(dir: &std::path::Path, seconds: f64) -> f64 {
    let opts: sqlx::sqlite::SqliteConnectOptions =
        format!("sqlite://{}/raw.db?mode=rwc", dir.display())
            .parse()
            .unwrap();
    let mut conn = opts.disable_statement_logging().connect().await.unwrap();
    conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE t (id TEXT PRIMARY KEY, k TEXT, body BLOB)")
        .await
        .unwrap();
    let one: Value = serde_json::from_str(&batch(0)).unwrap();
    let body = serde_json::to_vec(&one[0]).unwrap();
    // Anonymous `?` binds: SQLite looks named ones up by scanning, which is quadratic.
    let values: Vec<&str> = (0..100).map(|_| "(?,?,?)").collect();
    let sql = format!("INSERT INTO t (id, k, body) VALUES {}", values.join(","));
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed().as_secs_f64() < seconds {
        let mut tx = conn.begin().await.unwrap();
        for _ in 0..10 {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            for _ in 0..100 {
                q = q
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(format!("k{n}"))
                    .bind(body.clone());
                n += 1;
            }
            q.execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn start_hub(root: &std::path::Path, dispatch: bool) -> BenchHub {
    BenchHub::start(
        root,
        &[(
            "SYNCHUB__DISPATCH__ENABLED".to_string(),
            dispatch.to_string(),
        )],
    )
    .await
}

/// CRM store deliveries not yet finished.
async fn open_deliveries(hub: &BenchHub) -> i64 {
    sqlx::query_scalar::<_, i64>(
        // The CRM store's work only: the few lead.assigned events the distribution sends to
        // dealers' DMS queues wait for a broker the benchmark does not bind.
        "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending','in_flight') AND target = 'crm_store'",
    )
    .fetch_one(hub.store.pool())
    .await
    .unwrap()
}

/// Posts one batch and insists on the 202 (sent only after commit).
async fn post_batch(client: &reqwest::Client, base: &str, n: usize) {
    let r = client
        .post(format!("{base}/api/v1/leads"))
        .header("X-Api-Key", "demo-website")
        .header("Content-Type", "application/json")
        .body(batch(n))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 202);
    let _ = r.bytes().await;
}

/// Closed loop: `clients` clients posting batches of 100 leads for `secs`; records/s.
async fn closed_loop(
    client: &reqwest::Client,
    base: &str,
    seq: &Arc<AtomicUsize>,
    clients: usize,
    secs: f64,
) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, base, seq, done) =
            (client.clone(), base.to_string(), seq.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed().as_secs_f64() < secs {
                post_batch(&client, &base, seq.fetch_add(1, Ordering::Relaxed)).await;
                done.fetch_add(BATCH, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Waits until the dispatcher has delivered everything; seconds taken.
async fn drain(hub: &BenchHub) -> f64 {
    let t = Instant::now();
    // Once a second: the count walks the open deliveries' index (hundreds of thousands of
    // entries at the start), and ten of them a second took 40 % of the two cores from the hub.
    while open_deliveries(hub).await > 0 && t.elapsed().as_secs() < 900 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let smoke = std::env::args().any(|a| a == "--smoke");
    let (secs, clients, lat_secs) = if smoke {
        (2.0, 8, 2.0)
    } else {
        (20.0, 32, 15.0)
    };
    // `BENCH_CLIENTS` changes the closed loop's client count (to tell a latency-bound path from
    // a saturated one).
    let clients = std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(clients);
    let dir =
        tempfile::tempdir_in(std::env::var("SYNCHUB_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
    tree::copy_shipped_config(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), dir.path());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let seq = Arc::new(AtomicUsize::new(0));

    let latency_only = std::env::args().any(|a| a == "--latency-only");
    if latency_only {
        let hub = start_hub(dir.path(), true).await;
        let (lat, lat_backlog) = fixed_load(&client, &hub, &seq, lat_secs).await;
        hub.shutdown().await;
        print_latency(&lat, lat_backlog);
        return;
    }
    // 1. Durable ingest alone: the journal commit path (validate, map, route, journal, 202), with
    //    deliveries paused (dispatch.enabled = false) so the figure is the ingest path's own.
    let hub = start_hub(dir.path(), false).await;
    let ingest_rate = closed_loop(&client, &hub.base, &seq, clients, secs).await;
    let backlog = open_deliveries(&hub).await;
    hub.shutdown().await;
    if std::env::args().any(|a| a == "--ingest-only") {
        // For profiling the ingest path alone.
        println!("durable REST ingest: {ingest_rate:.0} records/s");
        return;
    }

    // 2. The dispatcher applies that backlog to the CRM store (same SQLite writer).
    let hub = start_hub(dir.path(), true).await;
    let drain_secs = drain(&hub).await;
    let crm_rate = backlog as f64 / drain_secs;

    // 3. Ingest while the dispatcher runs (they share the one writer).
    let mixed_rate = closed_loop(&client, &hub.base, &seq, clients, secs / 2.0).await;
    let mixed_backlog = open_deliveries(&hub).await;
    drain(&hub).await;

    // 4. Latency at a fixed offered load of 5,000 records/s, dispatcher running.
    let (lat, lat_backlog) = fixed_load(&client, &hub, &seq, lat_secs).await;
    hub.shutdown().await;

    // 5. Baseline on the same disk, measured in the same run.
    let raw = raw_sqlite_rate(dir.path(), if smoke { 1.0 } else { 5.0 }).await;

    println!(
        "synchub ingest benchmark ({})",
        if smoke { "smoke" } else { "full" }
    );
    println!(
        "  durable REST ingest ({clients} clients, {BATCH} records/request, 202 after commit): {ingest_rate:.0} records/s"
    );
    println!(
        "  raw batched SQLite insert (same disk, WAL, synchronous=FULL, 1000 rows/txn):   {raw:.0} rows/s"
    );
    println!("  ratio ingest / raw: {:.3}", ingest_rate / raw);
    println!(
        "  CRM store apply (dispatcher draining {backlog} deliveries): {crm_rate:.0} records/s"
    );
    println!(
        "  ingest with the dispatcher running: {mixed_rate:.0} records/s (backlog {mixed_backlog} when the clients stopped)"
    );
    print_latency(&lat, lat_backlog);
}

/// Offers 5,000 records/s (50 requests/s of 100 records, open loop) for `secs`; the sorted
/// request latencies in ms and the open deliveries left when the load stopped.
async fn fixed_load(
    client: &reqwest::Client,
    hub: &BenchHub,
    seq: &Arc<AtomicUsize>,
    secs: f64,
) -> (Vec<f64>, i64) {
    let mut lat = Vec::new();
    let mut handles = Vec::new();
    let interval = Duration::from_millis(20);
    let t0 = Instant::now();
    let mut k = 0u32;
    while t0.elapsed().as_secs_f64() < secs {
        tokio::time::sleep_until((t0 + interval * k).into()).await;
        k += 1;
        let (client, base) = (client.clone(), hub.base.clone());
        let n = seq.fetch_add(1, Ordering::Relaxed);
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            post_batch(&client, &base, n).await;
            t.elapsed().as_secs_f64() * 1000.0
        }));
    }
    for h in handles {
        lat.push(h.await.unwrap());
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let backlog = open_deliveries(hub).await;
    (lat, backlog)
}

fn print_latency(lat: &[f64], backlog: i64) {
    println!(
        "  latency at 5,000 records/s offered, dispatcher running ({} requests): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; backlog after: {backlog}",
        lat.len(),
        percentile(lat, 0.50),
        percentile(lat, 0.99),
        percentile(lat, 1.0)
    );
}
