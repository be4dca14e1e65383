//! Day-in-the-life benchmark (issue 7): the real hub (SQLite store, real RabbitMQ, a real sshd,
//! a wiremock DCS) takes a mixed day of traffic at once — 50,000 leads from the website over REST,
//! their 50,000 results back from the dealers' DMS over AMQP as each `lead.assigned` arrives,
//! 20,000 DMS customer changes over REST, a 200,000-row OSM vehicle file over SFTP and 100
//! campaigns × 50 dealers — and runs until every delivery is finished. It prints the wall time,
//! each flow's throughput, and fails if anything was parked or refused that should not have been.
//! `cargo bench --bench day`; `-- --smoke` runs a hundredth of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};
use synchub_adapter_sftp::testkit::SshdFixture;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[path = "../tests/support/amqp.rs"]
mod amqp;
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
use osm_files::dealer;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEALERS: usize = 50;
/// Where the dealers are: dealer `i` serves `CITIES[i % CITIES.len()]`, and leads come from the
/// same cities, so each lead has dealers to go to.
const CITIES: [(&str, &str); 10] = [
    ("广东", "广州"),
    ("广东", "深圳"),
    ("广东", "佛山"),
    ("广东", "东莞"),
    ("福建", "厦门"),
    ("福建", "福州"),
    ("浙江", "杭州"),
    ("浙江", "宁波"),
    ("江苏", "南京"),
    ("江苏", "苏州"),
];
const DCS_OK: &str = "<?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><r:PublishCampaignTaskResponse xmlns:r=\"urn:synchub:dcs:task:v1\"><r:taskId>T-1</r:taskId></r:PublishCampaignTaskResponse></soap:Body></soap:Envelope>";

struct Load {
    leads: usize,
    customers: usize,
    vehicles: usize,
    campaigns: usize,
}

async fn post(client: &reqwest::Client, url: &str, auth: (&str, &str), body: String) {
    let r = client
        .post(url)
        .header(auth.0, auth.1)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(status.is_success(), "{url}: {status}: {text}");
}

/// Runs `n` jobs from `clients` concurrent tasks; `job(i)` does the i-th.
async fn run_clients<F, Fut>(n: usize, clients: usize, job: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (job, next) = (job.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    job(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
}

async fn scalar(pool: &sqlx::AnyPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let smoke = std::env::args().any(|a| a == "--smoke");
    let load = if smoke {
        Load {
            leads: 500,
            customers: 200,
            vehicles: 2_000,
            campaigns: 2,
        }
    } else {
        Load {
            leads: 50_000,
            customers: 20_000,
            vehicles: 200_000,
            campaigns: 100,
        }
    };
    let dir =
        tempfile::tempdir_in(std::env::var("SYNCHUB_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
    tree::copy_shipped_config(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), dir.path());
    // A day's leads must go to dealers, not to the call centre for lack of capacity.
    let rules = dir.path().join("config/rules/lead_distribution.toml");
    let text = std::fs::read_to_string(&rules).expect("distribution rules");
    assert!(
        text.contains("daily_capacity = 50"),
        "shipped capacity changed"
    );
    std::fs::write(
        &rules,
        text.replace("daily_capacity = 50", "daily_capacity = 100000"),
    )
    .expect("write rules");

    let fx = SshdFixture::start();
    let dcs = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(DCS_OK, "text/xml; charset=utf-8"))
        .mount(&dcs)
        .await;
    let prefix = format!("day{}.", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let mut env: Vec<(String, String)> = vec![
        ("SYNCHUB_DCS_PASSWORD".into(), "dcs-secret".into()),
        (
            "SYNCHUB__ENDPOINTS__DCS_TASKS_SOAP_OUT__ENABLED".into(),
            "true".into(),
        ),
        (
            "SYNCHUB__ENDPOINTS__DCS_TASKS_SOAP_OUT__URL".into(),
            format!("{}/dcs/TaskService", dcs.uri()),
        ),
    ];
    env.extend(amqp::amqp_env(&prefix, None));
    // Polled by hand (the ops API), not by the clock.
    for (ep, dir) in [
        ("osm_dealers_sftp_in", "outbound/dealers"),
        ("osm_vehicles_sftp_in", "outbound/vehicles"),
    ] {
        env.extend(sftp::sftp_endpoint_env(
            &fx,
            ep,
            dir,
            &sftp::POLLED_ON_REQUEST,
        ));
    }

    // Every dealer's DMS is online: one queue for all of them, read by the simulated DMS below.
    let amqp_url = std::env::var("SYNCHUB_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 is required");
    let ch = conn.create_channel().await.expect("channel");
    let dms = amqp::dms_queue(&ch, &prefix, "dms.all", "dealer.#", false).await;

    let hub = BenchHub::start(dir.path(), &env).await;
    let base = hub.base.clone();
    let pool = hub.store.pool().clone();
    let client = reqwest::Client::new();
    let admin = ("Authorization", "Bearer demo-admin");

    // Master data first, as OSM's nightly dealer file (GB18030) brings it.
    osm_files::write_dealers(
        &fx.path("outbound/dealers/DEALER_20261201.csv"),
        DEALERS,
        &CITIES,
    );
    post(
        &client,
        &format!("{base}/api/v1/endpoints/osm_dealers_sftp_in/poll"),
        admin,
        String::new(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while scalar(
        &pool,
        "SELECT COUNT(*) FROM crm_records WHERE entity = 'dealer'",
    )
    .await
        < DEALERS as i64
    {
        assert!(Instant::now() < deadline, "the dealer file was not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let start = Instant::now();
    // The dealers' DMS: each lead.assigned is answered with a result over AMQP.
    let results_sent = Arc::new(AtomicUsize::new(0));
    let received: Arc<std::sync::Mutex<BTreeMap<String, usize>>> = Arc::default();
    let dms_task = {
        let (results_sent, received) = (results_sent.clone(), received.clone());
        let inbound = format!("{prefix}synchub.inbound");
        let conn = Connection::connect(&amqp_url, ConnectionProperties::default())
            .await
            .expect("AMQP");
        tokio::spawn(async move {
            let ch = conn.create_channel().await.expect("channel");
            ch.basic_qos(500, BasicQosOptions::default())
                .await
                .expect("qos");
            let out = conn.create_channel().await.expect("channel");
            let mut consumer = ch
                .basic_consume(
                    dms.as_str().into(),
                    "day-dms".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("consume");
            while let Some(Ok(d)) = consumer.next().await {
                let body: Value = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                let kind = d
                    .routing_key
                    .as_str()
                    .rsplit('.')
                    .next()
                    .unwrap_or("")
                    .to_string();
                *received.lock().unwrap().entry(kind).or_default() += 1;
                if body["event"] == "lead.assigned" {
                    let lead = body["lead_id"].as_str().unwrap_or_default();
                    let result = json!({
                        "source_ref": format!("R-{lead}"),
                        "lead_id": lead,
                        "dealer_code": body["dealer_code"],
                        "status": "contacted",
                        "occurred_at": "2026-12-01T15:20:00+08:00"
                    });
                    out.basic_publish(
                        inbound.as_str().into(),
                        "dms.lead-result".into(),
                        BasicPublishOptions::default(),
                        &serde_json::to_vec(&result).unwrap(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish result");
                    results_sent.fetch_add(1, Ordering::Relaxed);
                }
                d.acker.ack(BasicAckOptions::default()).await.expect("ack");
            }
        })
    };

    // OSM's vehicle file.
    let vehicles = {
        osm_files::write_vehicles(
            &fx.path("outbound/vehicles/VEHICLE_20261201.csv"),
            load.vehicles,
            DEALERS,
        );
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            post(
                &client,
                &format!("{base}/api/v1/endpoints/osm_vehicles_sftp_in/poll"),
                admin,
                String::new(),
            )
            .await;
        })
    };
    let leads = {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(run_clients(load.leads / 100, 8, move |b| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let batch: Vec<Value> = (0..100)
                    .map(|j| {
                        let i = b * 100 + j;
                        let (province, city) = CITIES[i % CITIES.len()];
                        json!({"source_ref": format!("WEB-{i}"), "name": "周杰", "mobile": format!("135{i:08}"),
                               "province": province, "city": city, "interested_model": "雅阁 Accord",
                               "remark": "周末想试驾"})
                    })
                    .collect();
                post(
                    &client,
                    &format!("{base}/api/v1/leads"),
                    ("X-Api-Key", "demo-website"),
                    serde_json::to_string(&batch).unwrap(),
                )
                .await;
            }
        }))
    };
    let customers = {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(run_clients(load.customers / 100, 4, move |b| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let d = format!("D000{}", 1 + b % 3);
                let batch: Vec<Value> = (0..100)
                    .map(|j| {
                        let i = b * 100 + j;
                        json!({"source_ref": format!("DMS-C-{i}"), "dealer_code": d, "name": format!("王{i}"),
                               "mobile": format!("138{i:08}"), "province": "广东", "city": "广州",
                               "address": format!("天河区体育西路{i}号")})
                    })
                    .collect();
                post(
                    &client,
                    &format!("{base}/api/v1/dms/customers"),
                    ("X-Api-Key", &format!("demo-dms-{d}")),
                    serde_json::to_string(&batch).unwrap(),
                )
                .await;
            }
        }))
    };
    let campaigns = {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(run_clients(load.campaigns, 2, move |c| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let body = json!({
                    "campaign_code": format!("C2026-12-DAY{c:03}"), "name": format!("冬季关怀{c}"),
                    "start_date": "2026-12-01", "end_date": "2026-12-31",
                    "dealer_codes": (0..DEALERS).map(dealer).collect::<Vec<_>>(),
                    "target_customers": (0..20).map(|t| format!("1370000{:04}", c * 20 + t)).collect::<Vec<_>>(),
                });
                post(
                    &client,
                    &format!("{base}/api/v1/campaigns"),
                    ("Authorization", "Bearer demo-admin"),
                    body.to_string(),
                )
                .await;
            }
        }))
    };
    for t in [vehicles, leads, customers, campaigns] {
        t.await.expect("load task");
    }
    let sent = start.elapsed();

    // Done when every lead has its result stored and nothing is left to deliver.
    let deadline = Instant::now() + Duration::from_secs(if smoke { 300 } else { 3600 });
    loop {
        let open = scalar(
            &pool,
            "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'in_flight')",
        )
        .await;
        let results = scalar(
            &pool,
            "SELECT COUNT(*) FROM crm_records WHERE entity = 'lead_result'",
        )
        .await;
        if open == 0 && results >= load.leads as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained: {open} deliveries open, {results} of {} lead results stored",
            load.leads
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let wall = start.elapsed();

    println!(
        "Day in the life: {} leads (+ their results over AMQP), {} customer changes, a {}-row vehicle file, {} campaigns x {DEALERS} dealers",
        load.leads, load.customers, load.vehicles, load.campaigns
    );
    println!(
        "  load sent in {:.1} s; everything delivered after {:.1} s (wall time)",
        sent.as_secs_f64(),
        wall.as_secs_f64()
    );
    let rows = sqlx::query(
        "SELECT route, status, COUNT(*), MIN(created_at), MAX(updated_at) FROM deliveries GROUP BY route, status ORDER BY route, status",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut unexpected = Vec::new();
    for r in rows {
        use sqlx::Row;
        let route: String = r.get(0);
        let status: String = r.get(1);
        let n: i64 = r.get(2);
        let first: i64 = r.get(3);
        let last: i64 = r.get(4);
        let secs = ((last - first) as f64 / 1000.0).max(0.001);
        println!(
            "  {route:<32} {status:<10} {n:>8}  {:>9.0} /s over {secs:.1} s",
            n as f64 / secs
        );
        if status != "delivered" {
            unexpected.push(format!("{route} {status} {n}"));
        }
    }
    let refused = scalar(
        &pool,
        "SELECT COUNT(*) FROM messages WHERE status = 'rejected'",
    )
    .await;
    let at_dms = received.lock().unwrap().clone();
    println!(
        "  DMS side received {at_dms:?}; {} lead results sent back; DCS received {} tasks; {refused} messages refused",
        results_sent.load(Ordering::Relaxed),
        dcs.received_requests().await.map(|r| r.len()).unwrap_or(0)
    );
    drop(pool);
    hub.shutdown().await;
    dms_task.abort();
    assert!(
        unexpected.is_empty() && refused == 0,
        "parked, refused or undelivered where nothing should be: {unexpected:?}, {refused} refused messages"
    );
}
