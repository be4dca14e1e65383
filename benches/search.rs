//! Search and dashboard benchmark (issue 8): the real hub on SQLite holding about 1,000,000
//! journaled messages (SOAP vehicle batches and REST customer batches sent through the hub, then
//! most deliveries marked delivered with an attempt each, some parked, the rest pending); prints
//! p50/p99/max of search by VIN through the API (target p99 < 50 ms), the search and message
//! detail pages (< 200 ms), the overview page (< 200 ms), and search by mobile, by dealer code
//! and as a dealer IT user. `cargo bench --bench search` fills 1,000,000 messages; `-- --smoke`
//! about 20,000 (CI). `SYNCHUB_BENCH_DIR` chooses the disk; `SYNCHUB_BENCH_KEEP=1` keeps the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

#[path = "../tests/support/bench_hub.rs"]
mod bench_hub;
#[path = "../tests/support/tree.rs"]
mod tree;

use bench_hub::BenchHub;
#[path = "../tests/support/vin.rs"]
mod vin;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VEHICLES_PER_REQUEST: usize = 500;
const CUSTOMERS_PER_REQUEST: usize = 100;
/// Dealers the vehicles are spread over: a dealer-code search matches 1/20 of them.
const DEALERS: usize = 20;

fn vin_of(i: usize) -> String {
    let mut v: [u8; 17] = format!("LHG0LVF20VB{:06}", i % 1_000_000)
        .into_bytes()
        .try_into()
        .expect("17 characters");
    v[8] = vin::vin_check(&v);
    String::from_utf8(v.to_vec()).expect("ASCII")
}

fn vehicle_request(batch: usize) -> String {
    let mut vehicles = String::with_capacity(VEHICLES_PER_REQUEST * 400);
    for j in 0..VEHICLES_PER_REQUEST {
        let i = batch * VEHICLES_PER_REQUEST + j;
        vehicles.push_str(&format!(
            "<v:vehicle><v:vin>{}</v:vin><v:brand>Honda</v:brand><v:model>雅阁 Accord</v:model><v:modelYear>2026</v:modelYear><v:color>珍珠白</v:color><v:dealerCode>D{:04}</v:dealerCode><v:salesDate>2026-11-20</v:salesDate><v:owner><v:name>陈大文</v:name><v:mobile>137{i:08}</v:mobile></v:owner></v:vehicle>",
            vin_of(i),
            1 + i % DEALERS
        ));
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:v="urn:synchub:osm:vehicle:v1"><soapenv:Header><wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"><wsse:UsernameToken><wsse:Username>osm</wsse:Username><wsse:Password>demo-osm</wsse:Password></wsse:UsernameToken></wsse:Security></soapenv:Header><soapenv:Body><v:SyncVehicles>{vehicles}</v:SyncVehicles></soapenv:Body></soapenv:Envelope>"#
    )
}

fn customer_request(batch: usize) -> String {
    let mut body = String::from("[");
    for j in 0..CUSTOMERS_PER_REQUEST {
        let i = batch * CUSTOMERS_PER_REQUEST + j;
        if j > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"source_ref":"DMS-C-{i}","dealer_code":"D0001","name":"王小明","mobile":"138{i:08}","province":"广东","city":"广州","address":"天河区体育西路{i}号"}}"#
        ));
    }
    body.push(']');
    body
}

/// Sends `requests` bodies made by `make` from `clients` concurrent clients.
async fn send_all(
    url: String,
    headers: &'static [(&'static str, &'static str)],
    requests: usize,
    clients: usize,
    make: fn(usize) -> String,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (next, url) = (next.clone(), url.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    let mut req = client.post(&url).body(make(i));
                    for (k, v) in headers {
                        req = req.header(*k, *v);
                    }
                    let r = req.send().await.expect("request");
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    assert!(status.is_success(), "{url}: {status}: {text}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
}

/// Signs in on the dashboard the way a browser does (the login page first: its cookies and
/// hidden fields go back with the form) and returns the `Cookie` header of the session.
async fn ui_login(client: &reqwest::Client, base: &str, user: &str, password: &str) -> String {
    let form = client
        .get(format!("{base}/ui/login"))
        .send()
        .await
        .expect("login page");
    let mut cookies: Vec<String> = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next().map(str::to_string))
        .collect();
    let page = form.text().await.unwrap_or_default();
    let mut fields: Vec<(String, String)> = vec![
        ("username".into(), user.into()),
        ("password".into(), password.into()),
        ("next".into(), "/ui/".into()),
    ];
    for input in page.split("<input").skip(1) {
        let tag = input.split('>').next().unwrap_or_default();
        let attr = |name: &str| {
            tag.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_string)
        };
        if attr("type").as_deref() == Some("hidden")
            && let (Some(n), Some(v)) = (attr("name"), attr("value"))
            && !fields.iter().any(|(k, _)| *k == n)
        {
            fields.push((n, v));
        }
    }
    let body = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let r = client
        .post(format!("{base}/ui/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Cookie", cookies.join("; "))
        .body(body)
        .send()
        .await
        .expect("login");
    assert!(
        r.status().is_redirection(),
        "login of {user} failed: {}",
        r.status()
    );
    cookies.extend(
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter(|c| c.starts_with("synchub_session="))
            .filter_map(|c| c.split(';').next().map(str::to_string)),
    );
    cookies.join("; ")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Latencies of GETs of `paths` (each checked for 200 and, when given, for containing `expect`).
async fn timed(
    client: &reqwest::Client,
    base: &str,
    auth: (&str, &str),
    paths: &[(String, Option<String>)],
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(paths.len());
    for (path, expect) in paths {
        let t = Instant::now();
        let r = client
            .get(format!("{base}{path}"))
            .header(auth.0, auth.1)
            .send()
            .await
            .expect("request");
        let status = r.status();
        let body = r.text().await.expect("body");
        out.push(t.elapsed());
        assert_eq!(status, 200, "{path}: {body}");
        if let Some(e) = expect {
            assert!(body.contains(e.as_str()), "{path} does not show {e}");
        }
    }
    out
}

fn report(what: &str, target_ms: f64, mut d: Vec<Duration>) {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(d[((d.len() as f64 * q).ceil() as usize).clamp(1, d.len()) - 1]);
    let target = if target_ms > 0.0 {
        format!("(target p99 < {target_ms:.0} ms)")
    } else {
        String::new()
    };
    println!(
        "  {what:<44} n={:<4} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  {target}",
        d.len(),
        at(0.50),
        at(0.99),
        ms(*d.last().expect("samples"))
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let smoke = std::env::args().any(|a| a == "--smoke");
    let (vehicle_requests, customer_requests, samples) = if smoke {
        (30, 40, 30)
    } else {
        (1_600, 2_000, 300)
    };
    let dir =
        tempfile::tempdir_in(std::env::var("SYNCHUB_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
    tree::copy_shipped_config(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), dir.path());
    // The journal is filled through the hub; what the deliveries became is set afterwards
    // (applying a million records to the CRM store is the ingest bench's figure).
    let hub = BenchHub::start(
        dir.path(),
        &[(
            "SYNCHUB__DISPATCH__ENABLED".to_string(),
            "false".to_string(),
        )],
    )
    .await;
    let (base, store) = (hub.base.clone(), hub.store.clone());

    let fill = Instant::now();
    send_all(
        format!("{base}/soap/osm/VehicleService"),
        &[("Content-Type", "text/xml; charset=utf-8")],
        vehicle_requests,
        4,
        vehicle_request,
    )
    .await;
    send_all(
        format!("{base}/api/v1/dms/customers"),
        &[
            ("Content-Type", "application/json"),
            ("X-Api-Key", "demo-dms-D0001"),
        ],
        customer_requests,
        8,
        customer_request,
    )
    .await;
    let journaled = fill.elapsed();
    // What a day of traffic leaves behind: nearly everything delivered with its attempt, one
    // in a hundred parked with a reason, one in a hundred still waiting for a retry.
    let now = synchub::store::now_ms();
    store
        .write(move |c| {
            Box::pin(async move {
                use sqlx::Executor;
                c.execute(sqlx::AssertSqlSafe(format!(
                    "UPDATE deliveries SET status = 'delivered', attempts = 1, next_attempt_at = {now}, updated_at = {now} WHERE id % 100 > 1"
                )))
                .await?;
                c.execute(sqlx::AssertSqlSafe(format!(
                    "UPDATE deliveries SET status = 'parked', attempts = 8, last_reason = 'dealer ' || dealer_code || ' is unknown to the CRM store', updated_at = {now} WHERE id % 100 = 0"
                )))
                .await?;
                c.execute(sqlx::AssertSqlSafe(format!(
                    "UPDATE deliveries SET attempts = 3, next_attempt_at = {}, last_reason = 'HTTP 503 from the partner', updated_at = {now} WHERE id % 100 = 1",
                    now + 600_000
                )))
                .await?;
                c.execute(
                    "INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, outcome, reason, cause_chain, mapping_version) \
                     SELECT id, 1, updated_at, 4, CASE status WHEN 'delivered' THEN 'delivered' ELSE 'retry' END, last_reason, '[]', 1 FROM deliveries",
                )
                .await?;
                Ok(())
            })
        })
        .await
        .expect("deliveries settled");
    let count = |sql: &'static str| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    let messages = count("SELECT COUNT(*) FROM messages").await;
    let keys = count("SELECT COUNT(*) FROM message_keys").await;
    let deliveries = count("SELECT COUNT(*) FROM deliveries").await;
    println!(
        "Search and dashboard with {messages} journaled messages ({keys} business keys, {deliveries} deliveries; filled through the hub in {:.0} s):",
        journaled.as_secs_f64()
    );

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let vehicles = vehicle_requests * VEHICLES_PER_REQUEST;
    let customers = customer_requests * CUSTOMERS_PER_REQUEST;
    let mut rng = rand::rng();
    let picks: Vec<usize> = (0..samples)
        .map(|_| rng.random_range(0..vehicles))
        .collect();
    let admin = ("Authorization", "Bearer demo-admin");

    let by_vin: Vec<(String, Option<String>)> = picks
        .iter()
        .map(|i| {
            let v = vin_of(*i);
            (format!("/api/v1/messages?key={v}"), Some(v))
        })
        .collect();
    report(
        "API search by VIN",
        50.0,
        timed(&client, &base, admin, &by_vin).await,
    );
    let by_mobile: Vec<(String, Option<String>)> = (0..samples)
        .map(|_| {
            let i = rng.random_range(0..customers);
            (
                format!("/api/v1/messages?key=138{i:08}"),
                Some(format!("DMS-C-{i}")),
            )
        })
        .collect();
    report(
        "API search by mobile",
        50.0,
        timed(&client, &base, admin, &by_mobile).await,
    );
    let by_dealer: Vec<(String, Option<String>)> = (0..samples.min(50))
        .map(|k| {
            let d = format!("D{:04}", 1 + k % DEALERS);
            (format!("/api/v1/messages?key={d}&limit=50"), Some(d))
        })
        .collect();
    report(
        "API search by dealer code (newest 50 of many)",
        50.0,
        timed(&client, &base, admin, &by_dealer).await,
    );
    let it_user = ("Authorization", "Bearer demo-it-D0001");
    let scoped: Vec<(String, Option<String>)> = picks
        .iter()
        .map(|i| {
            let i = i - i % DEALERS; // a vehicle of D0001
            let v = vin_of(i);
            (format!("/api/v1/messages?key={v}"), Some(v))
        })
        .collect();
    report(
        "API search by VIN as dealer IT (D0001)",
        50.0,
        timed(&client, &base, it_user, &scoped).await,
    );

    let cookie = ui_login(&client, &base, "admin", "demo-admin").await;
    let ui = ("Cookie", cookie.as_str());
    let pages: Vec<(String, Option<String>)> = picks
        .iter()
        .map(|i| {
            let v = vin_of(*i);
            (format!("/ui/search?q={v}"), Some(v))
        })
        .collect();
    report(
        "search page by VIN",
        200.0,
        timed(&client, &base, ui, &pages).await,
    );
    let dealer_pages: Vec<(String, Option<String>)> = (0..samples.min(50))
        .map(|k| {
            let d = format!("D{:04}", 1 + k % DEALERS);
            (format!("/ui/search?q={d}"), Some(d))
        })
        .collect();
    report(
        "search page by dealer code (newest 200)",
        200.0,
        timed(&client, &base, ui, &dealer_pages).await,
    );
    // The detail page of a vehicle record: raw body, keys, deliveries and attempts.
    let mut details = Vec::new();
    for i in picks.iter().take(samples.min(100)) {
        let v = vin_of(*i);
        let hits: serde_json::Value = client
            .get(format!("{base}/api/v1/messages?key={v}"))
            .header(admin.0, admin.1)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = hits["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["kind"] == "record"))
            .and_then(|m| m["id"].as_str())
            .unwrap_or_else(|| panic!("no record message for {v}: {hits}"))
            .to_string();
        details.push((format!("/ui/messages/{id}"), Some(v)));
    }
    report(
        "message detail page",
        200.0,
        timed(&client, &base, ui, &details).await,
    );
    let overview: Vec<(String, Option<String>)> = (0..samples.min(50))
        .map(|_| ("/ui/".to_string(), Some("osm_vehicles_soap_in".to_string())))
        .collect();
    report(
        "overview page",
        200.0,
        timed(&client, &base, ui, &overview).await,
    );
    let fragment: Vec<(String, Option<String>)> = (0..samples.min(50))
        .map(|_| ("/ui/fragments/overview".to_string(), None))
        .collect();
    report(
        "overview auto-refresh fragment",
        200.0,
        timed(&client, &base, ui, &fragment).await,
    );

    drop(store);
    hub.shutdown().await;
    if std::env::var_os("SYNCHUB_BENCH_KEEP").is_some() {
        // For looking at query plans afterwards (`sqlite3 <dir>/data/hub.db`).
        println!("store kept in {}", dir.keep().display());
    }
}
