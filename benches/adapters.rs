//! Adapter benchmarks against the real services, each hub figure beside its raw baseline measured
//! in the same run on the same machine:
//! - AMQP (issue 5): raw lapin publish-with-confirms and consume-with-ack rates against the local
//!   RabbitMQ, then the hub's consume → journal → CRM store → ack and journal → publish-with-
//!   confirms rates, and the ratios.
//! - SOAP (issue 4): `SyncVehicles` requests/s with 1 vehicle and vehicles/s with 500 per request
//!   through the running hub, with peak RSS.
//!
//! `cargo bench --bench adapters` runs everything; `-- --smoke` runs small counts (CI);
//! `-- amqp` or `-- soap` runs one part.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

// Only the endpoint overrides: this bench declares its own (quorum) queues.
#[allow(dead_code)]
#[path = "../tests/support/amqp.rs"]
mod amqp;
#[path = "../tests/support/bench_hub.rs"]
mod bench_hub;
#[path = "../tests/support/tree.rs"]
mod tree;

use bench_hub::BenchHub;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Publishes in flight at once, for the raw baseline (CRATES hazard 10: a window, not a loop).
const WINDOW: usize = 256;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 is required for this benchmark");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

fn quorum_args() -> FieldTable {
    let mut a = FieldTable::default();
    a.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    a.insert("x-expires".into(), AMQPValue::LongLongInt(600_000));
    a
}

async fn declare_queue(ch: &Channel, exchange: &str, queue: &str, key: &str) {
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        quorum_args(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Publishes `bodies` with confirms, `WINDOW` in flight; returns messages/s.
async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, bodies: &[Vec<u8>]) -> f64 {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let start = Instant::now();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for body in bodies {
        if pending.len() >= WINDOW {
            let c: lapin::Confirmation = pending.next().await.unwrap();
            assert!(c.is_ack());
        }
        let ch = ch.clone();
        let (exchange, key) = (exchange.to_string(), key.to_string());
        pending.push(async move {
            ch.basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap()
        });
    }
    while let Some(c) = pending.next().await {
        assert!(c.is_ack());
    }
    bodies.len() as f64 / start.elapsed().as_secs_f64()
}

/// Consumes `n` messages, acking with `multiple` once per burst; returns messages/s.
async fn consume_acked(ch: &Channel, queue: &str, n: usize) -> f64 {
    ch.basic_qos(256, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "raw-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let start = Instant::now();
    let mut got = 0;
    while got < n {
        let d = consumer.next().await.unwrap().unwrap();
        got += 1;
        let mut last = d.delivery_tag;
        while let Some(Some(Ok(d))) = futures_util::FutureExt::now_or_never(consumer.next()) {
            got += 1;
            last = d.delivery_tag;
        }
        ch.basic_ack(last, BasicAckOptions { multiple: true })
            .await
            .unwrap();
    }
    got as f64 / start.elapsed().as_secs_f64()
}

async fn start_hub(root: &std::path::Path, prefix: &str, extra: &[(&str, &str)]) -> BenchHub {
    let mut env = amqp::amqp_env(prefix, None);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    BenchHub::start(root, &env).await
}

async fn count(hub: &BenchHub, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(hub.store.pool())
        .await
        .unwrap()
}

async fn wait_count(hub: &BenchHub, sql: &'static str, n: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while count(hub, sql).await < n {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {sql} = {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn campaign_result(i: usize) -> Vec<u8> {
    format!(
        r#"{{"source_ref":"BENCH-CR-{i}","campaign_code":"C2026-12-WINTERCARE","dealer_code":"D0001","customer_mobile":"139{:08}","customer_name":"林小红","result":"attended","result_date":"2026-12-06","remark":"到店检测，客户对保养套餐感兴趣，约好下周再来。"}}"#,
        i % 100_000_000
    )
    .into_bytes()
}

/// The campaign the benchmark's results report on, stored before the hub starts: results
/// count only for a campaign assigned to the reporting dealer.
async fn seed_campaign(root: &std::path::Path) {
    let store = synchub::store::Store::open(&format!("sqlite://{}/data/hub.db", root.display()))
        .await
        .expect("store");
    let data = serde_json::json!({"campaign_code": "C2026-12-WINTERCARE", "name": "冬季关怀免费检测",
        "start_date": "2026-12-01", "end_date": "2026-12-31", "dealer_codes": ["D0001"],
        "target_customers": ["13900000000"]});
    let src = synchub::crm::ChangeSource {
        system: "bench".into(),
        message_id: None,
        needs_approval: false,
    };
    store
        .write(move |c| {
            Box::pin(async move {
                synchub::crm::upsert(
                    c,
                    "campaign",
                    "C2026-12-WINTERCARE",
                    data.as_object().expect("object"),
                    &synchub::crm::Columns::default(),
                    &src,
                )
                .await
                .map(drop)
            })
        })
        .await
        .expect("seed campaign");
    store.close().await;
}

async fn amqp(n: usize) {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("bench{}.", &id[20..]);
    let (_conn, ch) = channel().await;

    // Raw baseline on a quorum queue, as the hub declares its own.
    let raw_exchange = format!("{prefix}raw");
    let raw_queue = format!("{prefix}raw.q");
    declare_queue(&ch, &raw_exchange, &raw_queue, "#").await;
    let bodies: Vec<Vec<u8>> = (0..n).map(campaign_result).collect();
    let raw_pub = publish_confirmed(&ch, &raw_exchange, "raw", &bodies).await;
    let (_c2, ch2) = channel().await;
    let raw_con = consume_acked(&ch2, &raw_queue, n).await;

    // Hub consume → journal → CRM store → ack: the results wait in the hub's queue first.
    let dir = tempfile::tempdir().unwrap();
    tree::copy_shipped_config(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), dir.path());
    let inbound = format!("{prefix}synchub.inbound");
    let queue = format!("{prefix}synchub.dms.campaign-results");
    {
        // Declared as the hub declares it (quorum, dead-letter exchange, delivery limit).
        let mut cfg = synchub_adapter_amqp::AmqpConfig::new("bench", URL);
        cfg.inbound_exchange = inbound.clone();
        cfg.dealer_exchange = format!("{prefix}synchub.dealer");
        cfg.dead_letter_exchange = format!("{prefix}synchub.dead-letter");
        cfg.dead_letter_queue = format!("{prefix}synchub.dead-letter");
        cfg.queue_expires = Some(Duration::from_secs(600));
        cfg.bindings = vec![synchub_adapter_amqp::Binding {
            queue: queue.clone(),
            routing_key: "dms.campaign-result".into(),
            record_type: "campaign_result".into(),
        }];
        let (_c, tch) = channel().await;
        synchub_adapter_amqp::link::declare_topology(&tch, &cfg)
            .await
            .unwrap();
    }
    seed_campaign(dir.path()).await;
    let (_c3, ch3) = channel().await;
    publish_confirmed(&ch3, &inbound, "dms.campaign-result", &bodies).await;
    let hub = start_hub(dir.path(), &prefix, &[]).await;
    let start = Instant::now();
    wait_count(
        &hub,
        "SELECT COUNT(*) FROM messages WHERE kind = 'record'",
        n as i64,
        Duration::from_secs(600),
    )
    .await;
    let hub_journal = n as f64 / start.elapsed().as_secs_f64();
    wait_count(
        &hub,
        "SELECT COUNT(*) FROM crm_records WHERE entity = 'campaign_result'",
        n as i64,
        Duration::from_secs(600),
    )
    .await;
    let hub_con = n as f64 / start.elapsed().as_secs_f64();
    hub.shutdown().await;

    // Hub journal → publish with confirms: deliveries journaled with dispatch off, then a hub
    // with dispatch on drains them to a DMS queue.
    let dir = tempfile::tempdir().unwrap();
    tree::copy_shipped_config(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), dir.path());
    std::fs::write(
        dir.path().join("routes/bench_customers_to_dms.toml"),
        "from = \"partners_rest_in\"\nrecord_type = \"dms_customer\"\nvalidate = \"dms_customer\"\n\
         to = [\"dms_amqp_out\"]\nheaders = { kind = \"customer\" }\n",
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("routes/dms_customers_to_crm.toml")).unwrap();
    let dms_queue = format!("{prefix}dms.D0001");
    declare_queue(
        &ch,
        &format!("{prefix}synchub.dealer"),
        &dms_queue,
        "dealer.D0001.#",
    )
    .await;
    let hub = start_hub(
        dir.path(),
        &prefix,
        &[("SYNCHUB__DISPATCH__ENABLED", "false")],
    )
    .await;
    let client = reqwest::Client::new();
    for b in 0..n.div_ceil(500) {
        let recs: Vec<String> = (b * 500..((b + 1) * 500).min(n))
            .map(|i| {
                format!(
                    r#"{{"source_ref":"BENCH-C-{i}","dealer_code":"D0001","name":"王小明","mobile":"138{:08}","province":"广东","city":"广州","address":"天河区体育西路101号"}}"#,
                    i % 100_000_000
                )
            })
            .collect();
        let r = client
            .post(format!("{}/api/v1/dms/customers", hub.base))
            .header("X-Api-Key", "demo-dms-D0001")
            .header("Content-Type", "application/json")
            .body(format!("[{}]", recs.join(",")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    hub.shutdown().await;
    // The same journal drained twice: with the default 32 dispatch workers (32 publishes awaiting
    // their confirms at once) and with 256.
    let data = dir.path().join("data");
    let files = ["hub.db", "hub.db-wal", "hub.db-shm"];
    for f in files {
        let _ = std::fs::copy(data.join(f), data.join(format!("snapshot.{f}")));
    }
    let mut hub_pub = Vec::new();
    for workers in ["32", "256"] {
        for f in files {
            let _ = std::fs::remove_file(data.join(f));
            let _ = std::fs::copy(data.join(format!("snapshot.{f}")), data.join(f));
        }
        let hub = start_hub(
            dir.path(),
            &prefix,
            &[("SYNCHUB__DISPATCH__WORKERS", workers)],
        )
        .await;
        let start = Instant::now();
        wait_count(
            &hub,
            "SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'",
            n as i64,
            Duration::from_secs(600),
        )
        .await;
        hub_pub.push((workers, n as f64 / start.elapsed().as_secs_f64()));
        hub.shutdown().await;
    }

    println!("AMQP, {n} messages of about 300 bytes, persistent, quorum queues, local RabbitMQ:");
    println!("  raw lapin publish with confirms (window {WINDOW}): {raw_pub:>9.0} msg/s");
    println!("  raw lapin consume with batched acks:              {raw_con:>9.0} msg/s");
    println!("  hub consume -> journal -> ack (acked once journaled): {hub_journal:>6.0} msg/s");
    println!(
        "  hub consume -> journal -> CRM store -> ack:       {hub_con:>9.0} msg/s  ratio {:.2} (target >= 0.50)",
        hub_con / raw_con
    );
    for (workers, rate) in hub_pub {
        println!(
            "  hub journal -> publish with confirms, {workers:>3} workers: {rate:>6.0} msg/s  ratio {:.2} (target >= 0.50)",
            rate / raw_pub
        );
    }
}

fn vehicle(i: usize) -> String {
    // VINs with a valid check digit: the bench measures accepted traffic.
    let vin = valid_vin(i);
    format!(
        "<v:vehicle><v:vin>{vin}</v:vin><v:brand>Honda</v:brand><v:model>雅阁 Accord</v:model><v:modelYear>2026</v:modelYear><v:color>珍珠白</v:color><v:dealerCode>D0001</v:dealerCode><v:salesDate>2026-11-20</v:salesDate><v:owner><v:name>陈大文</v:name><v:mobile>138{:08}</v:mobile></v:owner></v:vehicle>",
        i % 100_000_000
    )
}

fn valid_vin(i: usize) -> String {
    const W: [u32; 17] = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2];
    let value = |c: char| -> u32 {
        match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='H' => c as u32 - 'A' as u32 + 1,
            'J'..='N' => c as u32 - 'J' as u32 + 1,
            'P' => 7,
            'R' => 9,
            'S'..='Z' => c as u32 - 'S' as u32 + 2,
            _ => 0,
        }
    };
    let mut v: Vec<char> = format!("LHG0LVF20VB{:06}", i % 1_000_000).chars().collect();
    let sum: u32 = v.iter().zip(W).map(|(c, w)| value(*c) * w).sum();
    let d = sum % 11;
    v[8] = if d == 10 {
        'X'
    } else {
        char::from_digit(d, 10).unwrap()
    };
    v.into_iter().collect()
}

fn envelope(vehicles: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:v="urn:synchub:osm:vehicle:v1"><soapenv:Header><wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"><wsse:UsernameToken><wsse:Username>osm</wsse:Username><wsse:Password>demo-osm</wsse:Password></wsse:UsernameToken></wsse:Security></soapenv:Header><soapenv:Body><v:SyncVehicles>{vehicles}</v:SyncVehicles></soapenv:Body></soapenv:Envelope>"#
    )
}

/// Sends `requests` prepared bodies from `clients` concurrent clients; returns requests/s.
async fn send_all(base: &str, bodies: Arc<Vec<String>>, clients: usize) -> f64 {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (bodies, next) = (bodies.clone(), next.clone());
            let url = format!("{base}/soap/osm/VehicleService");
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    let r = client
                        .post(&url)
                        .header("Content-Type", "text/xml; charset=utf-8")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    let status = r.status();
                    let text = r.text().await.unwrap();
                    assert!(status.is_success(), "{status}: {text}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    bodies.len() as f64 / start.elapsed().as_secs_f64()
}

async fn soap(requests: usize, batches: usize) {
    let dir = tempfile::tempdir().unwrap();
    tree::copy_shipped_config(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), dir.path());
    let id = uuid::Uuid::now_v7().simple().to_string();
    let hub = start_hub(dir.path(), &format!("bench{}.", &id[20..]), &[]).await;
    let singles: Vec<String> = (0..requests).map(|i| envelope(&vehicle(i))).collect();
    let single_rate = send_all(&hub.base, Arc::new(singles), 16).await;
    let rss_single = peak_rss_mib();
    let big: Vec<String> = (0..batches)
        .map(|b| {
            envelope(
                &(0..500)
                    .map(|j| vehicle(1_000_000 + b * 500 + j))
                    .collect::<String>(),
            )
        })
        .collect();
    let kib = big[0].len() / 1024;
    let batch_rate = send_all(&hub.base, Arc::new(big), 4).await;
    let rss_batch = peak_rss_mib();
    hub.shutdown().await;
    println!("SOAP SyncVehicles through the hub (SQLite journal, dispatcher running):");
    println!(
        "  1 vehicle per request:    {single_rate:>8.0} requests/s (target >= 2,000), peak RSS {rss_single:.0} MiB"
    );
    println!(
        "  500 vehicles per request: {:>8.0} vehicles/s (target >= 20,000), {kib} KiB per request, peak RSS {rss_batch:.0} MiB",
        batch_rate * 500.0
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let only = |part: &str| {
        !args.iter().any(|a| a == "amqp" || a == "soap") || args.iter().any(|a| a == part)
    };
    if only("amqp") {
        amqp(if smoke { 1_000 } else { 20_000 }).await;
    }
    if only("soap") {
        if smoke {
            soap(200, 2).await;
        } else {
            soap(10_000, 40).await;
        }
    }
}
