//! Three hub instances on one PostgreSQL database and one RabbitMQ share the load behind a
//! round-robin "load balancer": no delivery is sent twice while all live, and when one is
//! SIGKILLed mid-load the others take over its claimed deliveries once its lease runs out;
//! nothing is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::fixture::{self, Hub, Tree};

const BATCH: usize = 25;
const CLIENTS: usize = 6;
const LEASE_SECS: u64 = 5;

/// Delivered DMS messages this instance counted on its /metrics.
async fn delivered_by(hub: &Hub) -> f64 {
    let text = hub
        .client
        .get(format!("{}/metrics", hub.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("hub_deliveries_total{")
                && l.contains("target=\"dms_amqp_out\"")
                && l.contains("outcome=\"delivered\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_open_zero(pool: &sqlx::AnyPool, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'in_flight')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{open} deliveries still open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Posts `batches` batches through the instances in turn (a round-robin load balancer that
/// moves on when one does not answer); returns source_ref -> id of every accepted record.
async fn load(
    bases: Vec<String>,
    tag: &'static str,
    batches: usize,
    sent: Arc<AtomicUsize>,
) -> HashMap<String, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let accepted: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, bases, next, sent, accepted) = (
            client.clone(),
            bases.clone(),
            next.clone(),
            sent.clone(),
            accepted.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut turn = c;
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= batches {
                    return;
                }
                // Each part its own people, so the CRM count below is exact.
                let mobiles = if tag.ends_with('A') { 137 } else { 136 };
                let body = fixture::dms_customers(tag, mobiles, n * BATCH, BATCH);
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    turn += 1;
                    let base = &bases[turn % bases.len()];
                    match client
                        .post(format!("{base}/api/v1/dms/customers"))
                        .header("X-Api-Key", "demo-dms-D0001")
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 202 => {
                            fixture::record_accepted(&r.json().await.unwrap(), &accepted).await;
                            sent.fetch_add(BATCH, Ordering::SeqCst);
                            break;
                        }
                        Ok(r) if r.status() == 503 => {}
                        Ok(r) => panic!("unexpected {}", r.status()),
                        Err(_) => {}
                    }
                    assert!(Instant::now() < deadline, "no instance accepted a batch");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    accepted.lock().await.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_load_and_survive_losing_one() {
    let _serial = fixture::serial().await;
    let records = if fixture::soak() { 60_000 } else { 6_000 };
    let db = fixture::PgDb::create().await;
    let prefix = fixture::amqp_prefix();
    let conn = Connection::connect(&fixture::shared_amqp_url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is required on {}: {e}",
                fixture::shared_amqp_url()
            )
        });
    let ch = conn.create_channel().await.expect("channel");
    let queue = fixture::dms_queue(&ch, &prefix).await;
    let tree = Tree::shipped();
    tree.write(
        "routes/fault_customers_to_dms.toml",
        fixture::CUSTOMERS_TO_DMS_ROUTE,
    );
    let mut hubs: Vec<Hub> = (0..3)
        .map(|i| {
            let mut env = vec![
                ("SYNCHUB__STORE__URL".to_owned(), db.url.clone()),
                (
                    "SYNCHUB__DISPATCH__LEASE_SECS".to_owned(),
                    LEASE_SECS.to_string(),
                ),
            ];
            env.extend(fixture::amqp_env(&prefix, None));
            Hub::new(&format!("hub{i}"), &tree.path().join("config"), &env)
        })
        .collect();
    for h in &mut hubs {
        h.start();
    }
    for h in &mut hubs {
        h.wait_ready(180).await;
    }
    let bases: Vec<String> = hubs.iter().map(|h| h.base.clone()).collect();
    let pool = fixture::any_pool(&db.url).await;

    // Part 1: all three live. Every record reaches the DMS exactly once, and every instance
    // did part of the delivering.
    let first = records / 3;
    let sent = Arc::new(AtomicUsize::new(0));
    let accepted = load(bases.clone(), "SCALE-A", first / BATCH, sent).await;
    assert_eq!(accepted.len(), first);
    wait_open_zero(&pool, 300).await;
    let mut ids = HashMap::new();
    let copies = fixture::drain_dms(&ch, &queue, &mut ids).await;
    assert_eq!(
        copies, first,
        "with every instance alive no delivery is sent twice"
    );
    assert_eq!(ids.len(), first, "every accepted record reached the DMS");
    for h in &hubs {
        assert!(
            delivered_by(h).await > 0.0,
            "{} delivered nothing: the instances did not share the work",
            h.name
        );
    }

    // Part 2: one instance is SIGKILLed mid-load; its claims expire and the others take over.
    let rest = records - first;
    let sent = Arc::new(AtomicUsize::new(0));
    let loader = tokio::spawn(load(bases.clone(), "SCALE-B", rest / BATCH, sent.clone()));
    while sent.load(Ordering::SeqCst) < rest / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    hubs[1].kill9();
    let killed_at = Instant::now();
    let accepted = loader.await.expect("loader");
    assert_eq!(
        accepted.len(),
        rest,
        "the surviving instances took the load"
    );
    wait_open_zero(&pool, 300).await;
    let mut ids = HashMap::new();
    let copies = fixture::drain_dms(&ch, &queue, &mut ids).await;
    let missing = accepted.keys().filter(|sr| !ids.contains_key(*sr)).count();
    assert_eq!(missing, 0, "accepted records lost with the killed instance");
    assert_eq!(ids.len(), rest);
    let split = ids.values().filter(|s| s.len() != 1).count();
    assert_eq!(split, 0, "a taken-over delivery keeps its message id");
    // Whether the dead instance held claims at the moment of the kill depends on timing (it
    // may have just finished a batch): when it did, a survivor released them after the lease.
    let took_over = [&hubs[0], &hubs[2]]
        .iter()
        .any(|h| h.log_contains("Released deliveries whose lease expired"));
    // Only what the killed instance had in flight may go out again.
    // The shipped `dispatch.workers`: the most deliveries one instance has in flight.
    let workers = synchub::settings::DispatchSettings::default().workers;
    assert!(
        copies - rest <= workers,
        "{} copies beyond one per record: more than the killed instance had in flight",
        copies - rest
    );
    eprintln!(
        "scale-out: {first} + {rest} records over 3 instances, one killed; claims taken over: {took_over}; {} re-sent after its lease ({LEASE_SECS}s) ran out; drained {:?} after the kill",
        copies - rest,
        killed_at.elapsed()
    );
    // The CRM side: every customer stored once across instances.
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM crm_records WHERE entity = 'customer'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored as usize, records, "each customer is in the CRM once");
}

/// Sum of `metric` samples (all label sets) on an instance's /metrics.
async fn metric_sum(hub: &Hub, metric: &str) -> f64 {
    let text = hub
        .client
        .get(format!("{}/metrics", hub.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_jobs_run_once_per_tick_across_instances() {
    let _serial = fixture::serial().await;
    let fx = synchub_adapter_sftp::testkit::SshdFixture::start();
    let dir = "outbound/dealers";
    std::fs::create_dir_all(fx.path(dir)).unwrap();
    let db = fixture::PgDb::create().await;
    let prefix = fixture::amqp_prefix();
    let tree = Tree::shipped();
    // Escalation every 2 s, so several of its ticks pass while the test waits for a poll.
    let rules = tree.path().join("config/rules/lead_distribution.toml");
    let text = std::fs::read_to_string(&rules).unwrap();
    assert!(
        text.contains("interval = \"1m\""),
        "shipped escalation interval"
    );
    std::fs::write(
        &rules,
        text.replace("interval = \"1m\"", "interval = \"2s\""),
    )
    .unwrap();
    let mut env = vec![("SYNCHUB__STORE__URL".to_owned(), db.url.clone())];
    // Every minute: the smallest cron step; the test waits for one or two ticks.
    env.extend(fixture::sftp_endpoint_env(
        &fx,
        "osm_dealers_sftp_in",
        dir,
        &[("STABLE_SECS", "0"), ("SCHEDULE", "* * * * *")],
    ));
    env.extend(fixture::amqp_env(&prefix, None));
    let sample = fixture::repo().join("tests/fixtures/samples/sftp");
    for f in ["DEALER_20261125.csv", "DEALER_20261125.csv.ok"] {
        std::fs::copy(sample.join(f), fx.path(&format!("{dir}/{f}"))).unwrap();
    }
    let mut hubs: Vec<Hub> = (0..3)
        .map(|i| Hub::new(&format!("hub{i}"), &tree.path().join("config"), &env))
        .collect();
    for h in &mut hubs {
        h.start();
    }
    for h in &mut hubs {
        h.wait_ready(180).await;
    }
    let pool = fixture::any_pool(&db.url).await;
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let ticks: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM schedule_ticks WHERE job = 'sftp_poll:osm_dealers_sftp_in'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if ticks >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no scheduled poll in 150 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the poll finish and a few escalation ticks pass.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let ticks: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM schedule_ticks WHERE job = 'sftp_poll:osm_dealers_sftp_in'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut polls = 0.0;
    for h in &hubs {
        polls += metric_sum(h, "hub_sftp_polls_total").await;
    }
    assert_eq!(
        polls, ticks as f64,
        "one poll per schedule tick across the three instances"
    );
    let files: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sftp_files WHERE endpoint = 'osm_dealers_sftp_in' AND status = 'archived'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(files, 1, "the dealer file was taken once");
    let esc: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT tick, COUNT(*) FROM schedule_ticks WHERE job = 'escalation' GROUP BY tick",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(esc.len() >= 3, "escalation ticks passed: {esc:?}");
    assert!(esc.iter().all(|(_, n)| *n == 1));
    let owners: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT owner) FROM schedule_ticks WHERE job = 'escalation'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(owners >= 1);
}
