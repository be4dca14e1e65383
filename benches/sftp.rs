//! SFTP batch benchmark (issue 6): OSM's vehicle file of 100,000 and of 1,000,000 rows (about
//! 150 MB) taken by the real hub from a real sshd on loopback, each into a fresh SQLite store:
//! rows/s until the file is journaled and archived, rows/s until the CRM store holds every
//! vehicle (end to end), and the hub's peak RSS while the file is read and journaled and until
//! the end, so memory that grows with the file shows as the difference between the two sizes. `cargo bench --bench sftp`; `-- --smoke`
//! runs 5,000 rows; `BENCH_SFTP_ROWS=100000,1000000` (the default) sets the sizes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use synchub_adapter_sftp::testkit::SshdFixture;

#[path = "../tests/support/bench_hub.rs"]
mod bench_hub;
#[path = "../tests/support/osm_files.rs"]
mod osm_files;
#[path = "../tests/support/sftp.rs"]
mod sftp;
#[path = "../tests/support/tree.rs"]
mod tree;
#[path = "../tests/support/vin.rs"]
mod vin;

use bench_hub::BenchHub;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEALERS: usize = 50;
const CITIES: [(&str, &str); 2] = [("广东", "广州"), ("广东", "深圳")];

/// This process's resident set (the hub runs in it), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn scalar(pool: &sqlx::AnyPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn poll(client: &reqwest::Client, base: &str, endpoint: &str) {
    let r = client
        .post(format!("{base}/api/v1/endpoints/{endpoint}/poll"))
        .header("Authorization", "Bearer demo-admin")
        .send()
        .await
        .expect("poll request");
    assert!(r.status().is_success(), "poll {endpoint}: {}", r.status());
}

/// Waits until `sql` counts at least `want`, failing after `limit`.
async fn wait_for(pool: &sqlx::AnyPool, sql: &str, want: i64, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while scalar(pool, sql).await < want {
        assert!(Instant::now() < deadline, "{what}: not done in {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Figures {
    rows: usize,
    file_mib: f64,
    journal_secs: f64,
    applied_secs: f64,
    rss_before_mib: f64,
    rss_peak_mib: f64,
    journal_peak_mib: f64,
}

/// One size: a fresh hub and store, the dealers first (vehicles refer to them), then the vehicle
/// file, polled by hand and followed to the CRM store.
async fn run(rows: usize) -> Figures {
    let dir =
        tempfile::tempdir_in(std::env::var("SYNCHUB_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
    tree::copy_shipped_config(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), dir.path());
    let fx = SshdFixture::start();
    let mut env = Vec::new();
    for (ep, d) in [
        ("osm_dealers_sftp_in", "outbound/dealers"),
        ("osm_vehicles_sftp_in", "outbound/vehicles"),
    ] {
        env.extend(sftp::sftp_endpoint_env(
            &fx,
            ep,
            d,
            &sftp::POLLED_ON_REQUEST,
        ));
    }
    let hub = BenchHub::start(dir.path(), &env).await;
    let pool = hub.store.pool().clone();
    let client = reqwest::Client::new();

    osm_files::write_dealers(
        &fx.path("outbound/dealers/DEALER_20261201.csv"),
        DEALERS,
        &CITIES,
    );
    poll(&client, &hub.base, "osm_dealers_sftp_in").await;
    wait_for(
        &pool,
        "SELECT COUNT(*) FROM crm_records WHERE entity = 'dealer'",
        DEALERS as i64,
        Duration::from_secs(60),
        "dealer file",
    )
    .await;

    let file = fx.path("outbound/vehicles/VEHICLE_20261201.csv");
    osm_files::write_vehicles(&file, rows, DEALERS);
    let file_mib = std::fs::metadata(&file).expect("file").len() as f64 / 1048576.0;

    let rss_before = rss_kib();
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let start = Instant::now();
    {
        let (client, base) = (client.clone(), hub.base.clone());
        tokio::spawn(async move { poll(&client, &base, "osm_vehicles_sftp_in").await });
    }
    let limit = Duration::from_secs(3600);
    wait_for(
        &pool,
        "SELECT COUNT(*) FROM sftp_files WHERE endpoint = 'osm_vehicles_sftp_in' AND status = 'archived'",
        1,
        limit,
        "vehicle file journaled and archived",
    )
    .await;
    let journal_secs = start.elapsed().as_secs_f64();
    let journal_peak = peak.load(Ordering::Relaxed);
    let accepted = scalar(
        &pool,
        "SELECT rows_accepted FROM sftp_files WHERE endpoint = 'osm_vehicles_sftp_in'",
    )
    .await;
    assert_eq!(accepted, rows as i64, "rows accepted from the file");
    wait_for(
        &pool,
        "SELECT COUNT(*) FROM crm_records WHERE entity = 'vehicle'",
        rows as i64,
        limit,
        "vehicles in the CRM store",
    )
    .await;
    let applied_secs = start.elapsed().as_secs_f64();
    sampler.abort();
    // Every delivery parked or refused, with one of its reasons, before the verdict: a failed
    // run must say what went wrong (the store goes with the temporary directory).
    let stuck: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT target, status, COUNT(*), MIN(last_reason) FROM deliveries \
         WHERE status IN ('parked','rejected') GROUP BY target, status ORDER BY target, status",
    )
    .fetch_all(&pool)
    .await
    .expect("parked deliveries");
    for (target, status, n, reason) in &stuck {
        println!(
            "  ({rows} rows: {n} deliveries to {target} {status}, e.g. {})",
            reason.as_deref().unwrap_or("no reason recorded")
        );
    }
    assert!(stuck.is_empty(), "deliveries parked or refused");
    hub.shutdown().await;
    Figures {
        rows,
        file_mib,
        journal_secs,
        applied_secs,
        rss_before_mib: rss_before as f64 / 1024.0,
        rss_peak_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
        journal_peak_mib: journal_peak as f64 / 1024.0,
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let smoke = std::env::args().any(|a| a == "--smoke");
    let sizes: Vec<usize> = if smoke {
        vec![5_000]
    } else {
        std::env::var("BENCH_SFTP_ROWS")
            .unwrap_or_else(|_| "100000,1000000".into())
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("BENCH_SFTP_ROWS: comma-separated row counts")
            })
            .collect()
    };
    println!(
        "synchub SFTP benchmark ({}): OSM vehicle file over loopback sshd into the CRM store",
        if smoke { "smoke" } else { "full" }
    );
    println!(
        "  {:>9} | {:>8} | {:>25} | {:>26} | {:>14} | {:>12} | {:>19}",
        "rows",
        "file MiB",
        "journaled + archived",
        "in the CRM store (e2e)",
        "RSS before MiB",
        "RSS peak MiB",
        "peak journaling MiB"
    );
    for rows in sizes {
        let f = run(rows).await;
        println!(
            "  {:>9} | {:>8.1} | {:>8.0} rows/s ({:>7.1} s) | {:>9.0} rows/s ({:>7.1} s) | {:>14.0} | {:>12.0} | {:>19.0}",
            f.rows,
            f.file_mib,
            f.rows as f64 / f.journal_secs,
            f.journal_secs,
            f.rows as f64 / f.applied_secs,
            f.applied_secs,
            f.rss_before_mib,
            f.rss_peak_mib,
            f.journal_peak_mib
        );
    }
}
