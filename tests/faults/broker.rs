//! RabbitMQ killed with SIGKILL and restarted mid-stream (a private node, never the shared
//! broker) while the hub publishes to a dealer's DMS queue and consumes lead results: every
//! accepted record reaches the DMS queue under one message id (a redelivery after the crash
//! carries the same id, so the DMS deduplicates it), and every result the DMS had confirmed is
//! journaled exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};
use sqlx::Row;
use tokio::sync::Mutex;

use crate::fixture::{self, Hub, Rabbit, Tree};

const BATCH: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_stream_loses_and_doubles_nothing() {
    let _serial = fixture::serial().await;
    let (records, results) = if fixture::soak() {
        (100_000, 20_000)
    } else {
        (4_000, 2_000)
    };
    let rabbit = Rabbit::start().await;
    let prefix = fixture::amqp_prefix();
    let queue = {
        let conn = Connection::connect(&rabbit.url(), ConnectionProperties::default())
            .await
            .expect("connect to the private broker");
        let ch = conn.create_channel().await.expect("channel");
        fixture::dms_queue(&ch, &prefix).await
    };
    let tree = Tree::shipped();
    tree.write(
        "routes/fault_customers_to_dms.toml",
        fixture::CUSTOMERS_TO_DMS_ROUTE,
    );
    let mut env = vec![("SYNCHUB__STORE__URL".to_owned(), tree.sqlite_url())];
    env.extend(fixture::amqp_env(&prefix, Some(&rabbit.url())));
    // Classic durable queues: a quorum queue declared moments before a SIGKILL of a single
    // node does not come back (seen here: its Ra member stays "leader not known" after the
    // restart, as the node had not yet saved the member's registration), while a production
    // queue has lived for days before any crash. Persistence of classic durable queues is what
    // this scenario proves; the quorum type is covered against the shared broker.
    for ep in ["DMS_AMQP_IN", "DMS_AMQP_OUT"] {
        env.push((
            format!("SYNCHUB__ENDPOINTS__{ep}__QUEUE_TYPE"),
            "classic".to_owned(),
        ));
    }
    let mut hub = Hub::new("hub", &tree.path().join("config"), &env);
    hub.start();
    hub.wait_ready(120).await;
    wait_amqp_up(&hub).await;

    let published = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn(fixture::publish_results(
        rabbit.url(),
        prefix.clone(),
        results,
        published.clone(),
        Duration::from_millis(20),
    ));
    let sent = Arc::new(AtomicUsize::new(0));
    let accepted: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let poster = {
        let (client, base, sent, accepted) = (
            hub.client.clone(),
            hub.base.clone(),
            sent.clone(),
            accepted.clone(),
        );
        tokio::spawn(async move {
            for b in 0..records / BATCH {
                let v = fixture::post_until_accepted(
                    &client,
                    &base,
                    "/api/v1/dms/customers",
                    "demo-dms-D0001",
                    &fixture::dms_customers("FLT-C", 138, b * BATCH, BATCH),
                    Duration::from_secs(120),
                )
                .await;
                fixture::record_accepted(&v, &accepted).await;
                sent.fetch_add(BATCH, Ordering::SeqCst);
            }
        })
    };
    // Crash once both streams are under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent.load(Ordering::SeqCst) < records / 4
        || published.load(Ordering::SeqCst) < results / 4
    {
        assert!(Instant::now() < deadline, "load did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rabbit.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbit.up().await;
    poster.await.expect("poster");
    publisher.await.expect("publisher");
    assert!(hub.is_running(), "the hub survived the broker crash");

    // Drain: every delivery to the DMS confirmed, every result journaled.
    let pool = fixture::any_pool(&tree.sqlite_url()).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE target = 'dms_amqp_out' \
             AND status IN ('pending', 'in_flight')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let journaled: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT source_ref) FROM messages WHERE endpoint = 'dms_amqp_in' \
             AND kind = 'record'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if open == 0 && journaled as usize >= results {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} DMS deliveries open, {journaled} of {results} results journaled:\n{}",
            hub.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let not_delivered: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM deliveries WHERE target = 'dms_amqp_out' AND status <> 'delivered'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        not_delivered, 0,
        "every DMS delivery was confirmed in the end"
    );

    // The DMS queue: every accepted customer, each under exactly one message id.
    let conn = Connection::connect(&rabbit.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut ids_by_ref: HashMap<String, HashSet<String>> = HashMap::new();
    let copies = fixture::drain_dms(&ch, &queue, &mut ids_by_ref).await;
    let accepted = accepted.lock().await.clone();
    assert_eq!(accepted.len(), records);
    let missing: Vec<&String> = accepted
        .keys()
        .filter(|sr| !ids_by_ref.contains_key(*sr))
        .collect();
    assert!(
        missing.is_empty(),
        "{} accepted customers never reached the DMS queue, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let split: Vec<_> = ids_by_ref
        .iter()
        .filter(|(_, ids)| ids.len() != 1)
        .collect();
    assert!(
        split.is_empty(),
        "a redelivery must carry the first copy's message id: {:?}",
        split.first()
    );
    assert_eq!(
        ids_by_ref.len(),
        records,
        "no customers the hub never accepted"
    );
    eprintln!(
        "broker crash: {records} customers published, {} copies in the DMS queue ({} redelivered after the crash)",
        copies,
        copies - records
    );

    // Every confirmed result journaled exactly once (a redelivery is recognised, not re-run).
    let rows = sqlx::query(
        "SELECT source_ref, COUNT(*) FROM messages WHERE endpoint = 'dms_amqp_in' \
         AND kind = 'record' AND status <> 'duplicate' GROUP BY source_ref",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut once = 0;
    for r in &rows {
        let sr: String = r.get(0);
        let n: i64 = r.get(1);
        assert_eq!(n, 1, "result {sr} journaled {n} times");
        once += 1;
    }
    assert_eq!(once, results, "every confirmed result is journaled");
}

/// Waits until both AMQP endpoints have connected and declared their topology.
pub(crate) async fn wait_amqp_up(hub: &Hub) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let eps = hub.admin_get("/api/v1/endpoints").await;
        let up = eps["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["id"].as_str().is_some_and(|i| i.starts_with("dms_amqp_")))
            // "up" alone is the state before the first connection too; a contact means the
            // link connected and declared its topology.
            .filter(|e| e["state"] == "up" && !e["last_contact"].is_null())
            .count();
        if up == 2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "AMQP endpoints never came up: {eps}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
