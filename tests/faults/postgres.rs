//! PostgreSQL crashed mid-stream under a hub on the PostgreSQL store: readiness goes down and
//! back up, accepts are refused (503, never 202) while the database is gone, and every record
//! that got a 202 is in the CRM store exactly once after recovery.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::fixture::{self, Hub, Postgres, Tree};

const CLIENTS: usize = 4;
const BATCH: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_mid_stream_loses_nothing() {
    let _serial = fixture::serial().await;
    let records = if fixture::soak() { 100_000 } else { 6_000 };
    let pg = Postgres::start();
    let tree = Tree::shipped();
    let mut env = vec![("SYNCHUB__STORE__URL".to_owned(), pg.url())];
    env.extend(fixture::amqp_env(&fixture::amqp_prefix(), None));
    let mut hub = Hub::new("hub", &tree.path().join("config"), &env);
    hub.start();
    hub.wait_ready(120).await;

    let batches = records / BATCH;
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let accepted: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, base) = (hub.client.clone(), hub.base.clone());
        let (next, sent, accepted, refused) = (
            next.clone(),
            sent.clone(),
            accepted.clone(),
            refused.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= batches {
                    return;
                }
                let body = fixture::leads("PGCRASH", n * BATCH, BATCH);
                let v = fixture::post_until_accepted_counting(
                    &client,
                    &base,
                    "/api/v1/leads",
                    "demo-website",
                    &body,
                    Duration::from_secs(300),
                    &refused,
                )
                .await;
                fixture::record_accepted(&v, &accepted).await;
                sent.fetch_add(BATCH, Ordering::SeqCst);
            }
        }));
    }
    while sent.load(Ordering::SeqCst) < records / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pg.crash();
    let crashed_at = sent.load(Ordering::SeqCst);
    assert!(crashed_at < records, "the crash must come mid-stream");
    // Readiness must say what the load balancer needs to know.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if hub.readiness().await == Some(503) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness did not go down with the database"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = sent.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Nothing can be committed while the database is down, so nothing may be acknowledged.
    // (A batch whose commit finished just before the crash may still be answered.)
    assert!(
        sent.load(Ordering::SeqCst) <= during + CLIENTS * BATCH,
        "records were acknowledged while the database was down"
    );
    pg.up();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if hub.readiness().await == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness did not come back with the database:\n{}",
            hub.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in tasks {
        t.await.expect("client task");
    }
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "clients were never refused while the database was down: the crash came too late"
    );
    let accepted = accepted.lock().await.clone();
    assert_eq!(
        accepted.len(),
        records,
        "every record was eventually accepted"
    );

    let pool = fixture::any_pool(&pg.url()).await;
    fixture::wait_crm_drained(&pool, Duration::from_secs(300)).await;
    let by_ref = fixture::leads_by_ref(&pool).await;
    fixture::assert_exactly_once(&accepted, &by_ref);
    assert_eq!(
        by_ref.values().map(Vec::len).sum::<usize>(),
        records,
        "no extra leads"
    );
    assert!(hub.is_running(), "the hub survived the database crash");
}
