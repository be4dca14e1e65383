//! Extract benchmark (issue 9): the real hub on SQLite streams N customer changes as NDJSON over
//! HTTP; prints rows/s and the process's peak RSS growth during the extract (target: 1,000,000
//! rows at >= 200,000 rows/s with RSS < 100 MB). The change log is filled with multi-row INSERTs
//! first (not through the CRM path: that is the ingest bench's figure). `cargo bench --bench
//! extract` runs 1,000,000 rows; `-- --smoke` runs 20,000 (CI). With `BENCH_SYNCHUB_BIN` set to
//! the release binary it then runs that binary on the same store and prints its own peak RSS.

use std::time::Instant;

use synchub::store::rows::{Arg, insert_rows};

#[path = "../tests/support/bench_hub.rs"]
mod bench_hub;
#[path = "../tests/support/tree.rs"]
mod tree;

use bench_hub::{BenchHub, hub_env};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `VmHWM` / `VmRSS` of this process in kB.
fn mem_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let smoke = std::env::args().any(|a| a == "--smoke");
    let rows: usize = if smoke { 20_000 } else { 1_000_000 };
    let dir =
        tempfile::tempdir_in(std::env::var("SYNCHUB_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
    tree::copy_shipped_config(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), dir.path());
    let extra = vec![(
        "SYNCHUB__DISPATCH__ENABLED".to_string(),
        "false".to_string(),
    )];
    let hub = BenchHub::start(dir.path(), &extra).await;
    let (base, store) = (hub.base.clone(), hub.store.clone());

    let fill = Instant::now();
    for start in (0..rows).step_by(10_000) {
        let end = (start + 10_000).min(rows);
        store
            .write(move |c| {
                Box::pin(async move {
                    let batch: Vec<Vec<Arg>> = (start..end)
                        .map(|i| {
                            let data = format!(
                                r#"{{"dealer_code":"D0001","name":"客户{i}","mobile":"139{i:08}","province":"广东","city":"广州","address":"天河区体育西路{i}号","updated_at":"2026-11-25T09:30:00+08:00"}}"#
                            );
                            vec![
                                "customer".into(),
                                format!("C{i:09}").into(),
                                1i64.into(),
                                "upsert".into(),
                                data.into(),
                                1_764_547_200_000i64.into(),
                            ]
                        })
                        .collect();
                    insert_rows(
                        c,
                        "crm_changes",
                        &["entity", "entity_id", "version", "op", "data", "changed_at"],
                        batch,
                        "",
                    )
                    .await?;
                    Ok(())
                })
            })
            .await
            .unwrap();
    }
    println!(
        "filled {rows} changes in {:.1}s",
        fill.elapsed().as_secs_f64()
    );

    // Reset the peak so it measures the extract alone (Linux: 5 > clear_refs).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = mem_kb("VmRSS:");
    let client = reqwest::Client::new();
    let t = Instant::now();
    let mut resp = client
        .get(format!("{base}/api/v1/extracts/customers?format=ndjson"))
        .header("X-Api-Key", "demo-etl")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (mut lines, mut bytes) = (0usize, 0usize);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    let secs = t.elapsed().as_secs_f64();
    let peak = mem_kb("VmHWM:");
    assert_eq!(lines, rows, "every row arrived");
    println!(
        "extract {} rows NDJSON over HTTP ({:.0} MB): {:.0} rows/s; RSS before {} MB, peak during {} MB (+{} MB)",
        rows,
        bytes as f64 / 1e6,
        rows as f64 / secs,
        rss_before / 1024,
        peak / 1024,
        peak.saturating_sub(rss_before) / 1024,
    );
    drop(store);
    hub.shutdown().await;

    // The hub as its own process, as deployed (`BENCH_SYNCHUB_BIN=target/release/synchub`): its
    // peak RSS while it streams the same store is the figure the target is about, without the
    // fill and the HTTP client of this process in it.
    let Some(bin) = std::env::var_os("BENCH_SYNCHUB_BIN") else {
        println!(
            "(set BENCH_SYNCHUB_BIN to the release binary to measure the hub as its own process)"
        );
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let mut child = std::process::Command::new(bin)
        .arg("--config")
        .arg(dir.path().join("config"))
        .arg("run")
        // The later `env` replaces the in-process hub's port 0.
        .envs(hub_env(dir.path(), &extra))
        .env("SYNCHUB__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the hub binary");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while !client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "the hub binary never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = format!("/proc/{}/status", child.id());
    let child_kb = move |field: &str| {
        std::fs::read_to_string(&status)
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let idle = child_kb("VmRSS:");
    let t = Instant::now();
    let mut resp = client
        .get(format!("{base}/api/v1/extracts/customers?format=ndjson"))
        .header("X-Api-Key", "demo-etl")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut lines = 0usize;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    let secs = t.elapsed().as_secs_f64();
    let peak = child_kb("VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines, rows, "every row arrived");
    println!(
        "hub as its own process: {:.0} rows/s; hub RSS idle {} MB, peak {} MB (target < 100 MB)",
        rows as f64 / secs,
        idle / 1024,
        peak / 1024
    );
}
