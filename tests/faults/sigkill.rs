//! The hub SIGKILLed at random moments under a mixed load over all four inbound protocols —
//! REST leads, SOAP vehicle syncs, AMQP lead results and an SFTP vehicle file — restarted on the
//! same store each time and drained: every record a partner got an acknowledgement for is in
//! the CRM store (or journaled) exactly once, and the file is imported whole, once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sqlx::Row;
use synchub_adapter_sftp::testkit::SshdFixture;
use tokio::sync::Mutex;

use crate::fixture::{self, Hub, Tree};

#[path = "../support/vin.rs"]
mod vin;
use vin::vin_check;

const VEHICLES_EP: &str = "osm_vehicles_sftp_in";
pub(crate) const VEHICLE_HEADER: &str = "vin,brand,model,model_year,color,plate_no,engine_no,dealer_code,sales_date,owner_name,owner_mobile,owner_id_no";

/// VIN `n` of source `src` (one letter keeps SOAP and SFTP vehicles apart).
pub(crate) fn vin(src: char, n: usize) -> String {
    let mut v: [u8; 17] = format!("LHGCV3CK0S{src}{n:06}")
        .as_bytes()
        .try_into()
        .expect("17 characters");
    v[8] = vin_check(&v);
    String::from_utf8(v.to_vec()).expect("ascii")
}

fn soap_request(from: usize, n: usize) -> String {
    let vehicles: String = (from..from + n)
        .map(|i| {
            format!(
                "<v:vehicle><v:vin>{}</v:vin><v:brand>Honda</v:brand><v:model>雅阁 Accord</v:model>\
                 <v:modelYear>2026</v:modelYear><v:color>珍珠白</v:color><v:dealerCode>D0001</v:dealerCode>\
                 <v:salesDate>2026-11-20</v:salesDate></v:vehicle>",
                vin('S', i)
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:v=\"urn:synchub:osm:vehicle:v1\">\
         <soapenv:Header><wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\">\
         <wsse:UsernameToken><wsse:Username>osm</wsse:Username>\
         <wsse:Password Type=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText\">demo-osm</wsse:Password>\
         </wsse:UsernameToken></wsse:Security></soapenv:Header>\
         <soapenv:Body><v:SyncVehicles>{vehicles}</v:SyncVehicles></soapenv:Body></soapenv:Envelope>"
    )
}

/// Overrides that enable the SFTP vehicle endpoint on the fixture; polled only by "poll now".
pub(crate) fn sftp_env(fx: &SshdFixture, dir_rel: &str) -> Vec<(String, String)> {
    let [stable, schedule] = fixture::POLLED_ON_REQUEST;
    fixture::sftp_endpoint_env(
        fx,
        "osm_vehicles_sftp_in",
        dir_rel,
        &[stable, schedule, ("BATCH_SIZE", "200")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_under_mixed_load_loses_and_doubles_nothing() {
    let _serial = fixture::serial().await;
    // The streams run until the kills are over; soak mode kills more often over a longer
    // run and must move ≥ 100,000 messages over the four protocols.
    let (kills, wait_ms, results, file_rows) = if fixture::soak() {
        (8, 8_000..20_000, 20_000, 50_000)
    } else {
        (2, 1_500..4_000, 5_000, 8_000)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let seed: u64 = rand::rng().random();
    eprintln!("sigkill scenario seed {seed} (the kill moments)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let fx = SshdFixture::start();
    let dir = "outbound/vehicles";
    let tree = Tree::shipped();
    let prefix = fixture::amqp_prefix();
    let mut env = vec![("SYNCHUB__STORE__URL".to_owned(), tree.sqlite_url())];
    env.extend(fixture::amqp_env(&prefix, None));
    env.extend(sftp_env(&fx, dir));
    let mut text = format!("{VEHICLE_HEADER}\n");
    for i in 0..file_rows {
        text.push_str(&format!(
            "{},Honda,思域 Civic,2026,白,,,D0001,2026-11-20,,,\n",
            vin('F', i)
        ));
    }
    std::fs::write(fx.path(&format!("{dir}/VEHICLE_20261201.csv")), &text).unwrap();

    let mut hub = Hub::new("hub", &tree.path().join("config"), &env);
    hub.start();
    hub.wait_ready(120).await;
    crate::broker::wait_amqp_up(&hub).await;
    let (client, base) = (hub.client.clone(), hub.base.clone());

    // REST: leads in batches from four clients that resend what got no answer.
    let rest_accepted: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, base, next, acc, stop) = (
            client.clone(),
            base.clone(),
            next.clone(),
            rest_accepted.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let body = fixture::leads("MIX", n * 50, 50);
                let v = fixture::post_until_accepted(
                    &client,
                    &base,
                    "/api/v1/leads",
                    "demo-website",
                    &body,
                    Duration::from_secs(300),
                )
                .await;
                fixture::record_accepted(&v, &acc).await;
            }
        }));
    }
    // SOAP: vehicle syncs of 20, resent until OSM gets its response.
    let soap_done = Arc::new(AtomicUsize::new(0));
    tasks.push(tokio::spawn({
        let (client, base, done, stop) = (
            client.clone(),
            base.clone(),
            soap_done.clone(),
            stop.clone(),
        );
        async move {
            let mut b = 0;
            while !stop.load(Ordering::SeqCst) {
                let xml = soap_request(b * 20, 20);
                let deadline = Instant::now() + Duration::from_secs(300);
                loop {
                    let r = client
                        .post(format!("{base}/soap/osm/VehicleService"))
                        .header("Content-Type", "text/xml; charset=utf-8")
                        .header("SOAPAction", "\"urn:synchub:osm:vehicle:v1#SyncVehicles\"")
                        .body(xml.clone())
                        .send()
                        .await;
                    if let Ok(r) = r {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        if status == 200 {
                            assert!(
                                body.contains("<accepted>20</accepted>")
                                    || body.contains(":accepted>20<"),
                                "all 20 vehicles accepted: {body}"
                            );
                            break;
                        }
                        assert_eq!(status, 503, "a crash-free refusal is a 503: {body}");
                    }
                    assert!(Instant::now() < deadline, "SOAP batch {b} never answered");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                done.fetch_add(20, Ordering::SeqCst);
                b += 1;
                // OSM syncs in small, spaced calls.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }));
    // AMQP: a DMS publishes lead results with confirms (the broker stays up, the hub's
    // consumer dies with the hub).
    let published = Arc::new(AtomicUsize::new(0));
    tasks.push(tokio::spawn(fixture::publish_results(
        std::env::var("SYNCHUB_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        prefix.clone(),
        results,
        published.clone(),
        // Spread over the whole run, so both kills land while results flow.
        Duration::from_millis(if fixture::soak() { 100 } else { 80 }),
    )));
    // SFTP: headquarters presses "poll now" until the file is archived.
    let archived = Arc::new(AtomicBool::new(false));
    let sftp = tokio::spawn({
        let (client, base, archived) = (client.clone(), base.clone(), archived.clone());
        let archive = fx.path(&format!("{dir}/archive"));
        async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !(archive.exists() && std::fs::read_dir(&archive).unwrap().count() > 0) {
                let _ = client
                    .post(format!("{base}/api/v1/endpoints/{VEHICLES_EP}/poll"))
                    .bearer_auth("demo-admin")
                    .timeout(Duration::from_secs(600))
                    .send()
                    .await;
                assert!(
                    Instant::now() < deadline,
                    "the vehicle file was never archived"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            archived.store(true, Ordering::SeqCst);
        }
    });

    // Two kills at random moments while all four streams run.
    for k in 0..kills {
        let wait = rng.random_range(wait_ms.clone());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        eprintln!(
            "kill {k} after {wait} ms: {} leads, {} SOAP vehicles, {} results so far",
            rest_accepted.lock().await.len(),
            soap_done.load(Ordering::SeqCst),
            published.load(Ordering::SeqCst)
        );
        hub.kill9();
        hub.start();
        hub.wait_ready(120).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("load task");
    }
    sftp.await.expect("sftp poller");
    assert!(archived.load(Ordering::SeqCst));

    let pool = fixture::any_pool(&tree.sqlite_url()).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let journaled: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT source_ref) FROM messages WHERE endpoint = 'dms_amqp_in' \
             AND kind = 'record'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if journaled as usize >= results {
            break;
        }
        if Instant::now() >= deadline {
            let have: std::collections::HashSet<String> = sqlx::query(
                "SELECT DISTINCT source_ref FROM messages WHERE endpoint = 'dms_amqp_in' \
                 AND source_ref IS NOT NULL",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
            let missing: Vec<usize> = (0..results)
                .filter(|k| !have.contains(&format!("FLT-R-{k}")))
                .collect();
            // What the broker still holds for this hub, to tell "never consumed" from "lost".
            let queues = std::process::Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "list_queues",
                    "name",
                    "messages_ready",
                    "messages_unacknowledged",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            let queues: Vec<&str> = queues.lines().filter(|l| l.starts_with(&prefix)).collect();
            panic!(
                "{journaled} of {results} results journaled; missing {} (first {:?}, last {:?}); \
                 broker: {queues:?}\n{}",
                missing.len(),
                missing.first(),
                missing.last(),
                hub.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fixture::wait_crm_drained(&pool, Duration::from_secs(600)).await;

    // REST leads: each acknowledged lead once, under its acknowledged id.
    let accepted = rest_accepted.lock().await.clone();
    let soap_vehicles = soap_done.load(Ordering::SeqCst);
    let total = accepted.len() + soap_vehicles + results + file_rows;
    eprintln!(
        "sigkill: {} leads, {soap_vehicles} SOAP vehicles, {results} results, {file_rows} file rows ({total} in all) through {kills} kills",
        accepted.len()
    );
    if fixture::soak() {
        assert!(
            total >= 100_000,
            "soak mode moves at least 100,000 messages: {total}"
        );
    }
    fixture::assert_exactly_once(&accepted, &fixture::leads_by_ref(&pool).await);
    // Vehicles from SOAP and from the file: every one, once.
    let vins: Vec<String> = sqlx::query("SELECT id FROM crm_records WHERE entity = 'vehicle'")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
    let have: std::collections::HashSet<&str> = vins.iter().map(String::as_str).collect();
    for i in 0..soap_vehicles {
        assert!(
            have.contains(vin('S', i).as_str()),
            "SOAP vehicle {} missing",
            vin('S', i)
        );
    }
    for i in 0..file_rows {
        assert!(
            have.contains(vin('F', i).as_str()),
            "file vehicle {} missing",
            vin('F', i)
        );
    }
    assert_eq!(
        vins.len(),
        soap_vehicles + file_rows,
        "no vehicles from nowhere"
    );
    // The file: archived once, every row read once by the ledger's count.
    let (read, status): (i64, String) = {
        let r = sqlx::query("SELECT rows_read, status FROM sftp_files WHERE endpoint = $1")
            .bind(VEHICLES_EP)
            .fetch_one(&pool)
            .await
            .expect("ledger row");
        (r.get(0), r.get(1))
    };
    assert_eq!((read as usize, status.as_str()), (file_rows, "archived"));
    // AMQP results: each confirmed result journaled once (a redelivery is marked duplicate).
    let rows = sqlx::query(
        "SELECT source_ref, COUNT(*) FROM messages WHERE endpoint = 'dms_amqp_in' \
         AND kind = 'record' AND status <> 'duplicate' GROUP BY source_ref",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), results, "every confirmed result is journaled");
    for r in &rows {
        let n: i64 = r.get(1);
        assert_eq!(n, 1, "result {} journaled {n} times", r.get::<String, _>(0));
    }
}
