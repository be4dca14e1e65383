//! Read benchmark: generates N-row vehicle CSV files on a loopback sshd (the test kit's) and
//! polls them into a counting journal, printing rows/s and peak RSS for each size, so memory can
//! be seen not to grow with the file.
//!
//! `cargo run --release -p synchub-adapter-sftp --features testkit --example sftp_read_bench [rows...]`
//! (default: 100000 1000000).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use synchub_adapter_sdk::{AcceptError, Envelope, Inbox, Receipt, RecordVerdict, Submission};
use synchub_adapter_sftp::testkit::SshdFixture;
use synchub_adapter_sftp::{FileStatus, MemoryLedger, Poller};
use uuid::Uuid;

/// A journal that only counts: the benchmark measures the adapter, not a store.
#[derive(Default)]
struct CountingInbox {
    rows: AtomicU64,
    ok: AtomicU64,
    batches: AtomicU64,
}

#[async_trait]
impl Inbox for CountingInbox {
    async fn accept(&self, s: Submission) -> Result<Receipt, AcceptError> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.rows
            .fetch_add(s.records.len() as u64, Ordering::Relaxed);
        let ok = s.records.iter().filter(|r| r.body.is_ok()).count();
        self.ok.fetch_add(ok as u64, Ordering::Relaxed);
        let id = Uuid::now_v7();
        Ok(Receipt {
            message_id: s.envelope.id,
            records: s
                .records
                .iter()
                .map(|_| RecordVerdict::Accepted {
                    message_id: id,
                    id: None,
                    duplicate: false,
                })
                .collect(),
        })
    }

    async fn reject(&self, e: Envelope, _code: &str, _reason: &str) -> Result<Uuid, AcceptError> {
        Ok(e.id)
    }
}

/// Peak resident set size of this process so far, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// IF-02b shape: the vehicle fields flattened, about 150 bytes a row.
fn generate(path: &std::path::Path, rows: u64) -> u64 {
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    writeln!(
        w,
        "vin,model,model_year,color,dealer_code,sold_at,owner_name,owner_mobile,owner_id_no,status"
    )
    .unwrap();
    for i in 0..rows {
        writeln!(
            w,
            "LVGBE40K{i:09},Camry 2.5 Hybrid Premium,2026,Platinum White Pearl,D{:04},2026-11-{:02},车主{i},137{:08},44010619900101{:04},active",
            i % 3000,
            i % 28 + 1,
            i % 100_000_000,
            i % 10_000
        )
        .unwrap();
    }
    w.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

#[tokio::main]
async fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        sizes
    };
    let fx = SshdFixture::start();
    println!("rows       MB      seconds  rows/s     MB/s    peak RSS MiB");
    for rows in sizes {
        let dir = format!("bench_{rows}");
        let mut cfg = fx.config(&dir, "VEHICLE_*.csv");
        cfg.record_type = "osm_vehicle".into();
        cfg.timeout_ms = 30_000;
        let bytes = generate(&fx.path(&format!("{dir}/VEHICLE_20261125.csv")), rows);
        let inbox = Arc::new(CountingInbox::default());
        let poller = Poller::new(cfg, inbox.clone(), Arc::new(MemoryLedger::new()));
        let started = Instant::now();
        let report = poller.poll_once().await.expect("poll");
        let secs = started.elapsed().as_secs_f64();
        assert!(
            matches!(report.files[0].outcome, FileStatus::Archived { .. }),
            "{report:?}"
        );
        assert_eq!(inbox.ok.load(Ordering::Relaxed), rows);
        println!(
            "{rows:<10} {:<7.1} {secs:<8.2} {:<10.0} {:<7.1} {:.1}",
            bytes as f64 / 1e6,
            rows as f64 / secs,
            bytes as f64 / 1e6 / secs,
            peak_rss_mib()
        );
        std::fs::remove_dir_all(fx.path(&dir)).ok();
    }
}
