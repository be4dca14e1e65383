//! `synchub demo`: the hub on the embedded store with built-in partner simulators, so a
//! newcomer sees every flow moving within a minute. The simulators are ordinary clients of the
//! hub's real interfaces — REST for the website, call centre and dealer DMS, SOAP for OSM,
//! RabbitMQ for the DMS side of the dealer exchange (REST when no broker answers) — and send
//! realistic Chinese names, valid VINs, ID numbers and mobiles, plus a share of bad records.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};
use synchub_transform::cleanse;
use tokio::sync::watch;

use crate::app::Application;
use crate::settings::{EndpointConfig, Settings};

/// Demo dealers (seeded by the local profile) and the cities they serve.
const DEALERS: [(&str, &str, &str); 3] = [
    ("D0001", "广东", "广州"),
    ("D0002", "广东", "深圳"),
    ("D0003", "北京", "北京"),
];
/// Cities leads come from: the dealers' and some no dealer serves (call-centre fallback).
const CITIES: [(&str, &str); 6] = [
    ("广东", "广州"),
    ("广东", "深圳"),
    ("北京", "北京"),
    ("广东", "佛山"),
    ("上海", "上海"),
    ("四川", "成都"),
];
const SURNAMES: [&str; 16] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
];
const GIVEN: [&str; 16] = [
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明",
];
const MODELS: [&str; 5] = [
    "雅阁 Accord",
    "思域 Civic",
    "CR-V",
    "飞度 Fit",
    "型格 Integra",
];
/// World manufacturer identifiers and model codes the generated VINs start with.
const VIN_STEMS: [&str; 3] = ["LHGCV3CK", "LHGLVCWJ", "LHGHL1LV"];

/// Share of records a simulator deliberately spoils (bad mobile, wrong check digit, another
/// dealer's lead), so the rejected views have something to show.
const BAD_SHARE: f64 = 0.05;

/// `synchub demo` options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
}

/// What the simulators did, for the periodic summary line.
#[derive(Default)]
struct Tally {
    leads: AtomicU64,
    customers: AtomicU64,
    vehicles: AtomicU64,
    results: AtomicU64,
    campaign_results: AtomicU64,
    dms_received: AtomicU64,
    bad: AtomicU64,
    errors: AtomicU64,
}

struct Sim {
    http: reqwest::Client,
    base: String,
    tally: Tally,
    seq: AtomicU64,
}

fn name(rng: &mut impl Rng) -> String {
    let given: String = (0..rng.random_range(1..=2))
        .map(|_| *GIVEN.choose(rng).expect("not empty"))
        .collect();
    format!("{}{given}", SURNAMES.choose(rng).expect("not empty"))
}

fn mobile(rng: &mut impl Rng) -> String {
    format!(
        "1{}{:09}",
        rng.random_range(3..=9),
        rng.random_range(0..1_000_000_000u64)
    )
}

/// A VIN with a correct ISO 3779 check digit (found by trying the eleven candidates).
pub fn vin(rng: &mut impl Rng) -> String {
    const TAIL: &[u8] = b"ABCDEFGHJKLMNPRSTUVWXYZ0123456789";
    let stem = VIN_STEMS.choose(rng).expect("not empty");
    let tail: String = (0..8)
        .map(|i| {
            if i >= 3 {
                char::from(b'0' + rng.random_range(0..10u8))
            } else {
                char::from(TAIL[rng.random_range(0..TAIL.len())])
            }
        })
        .collect();
    for check in "0123456789X".chars() {
        let candidate = format!("{stem}{check}{tail}");
        if cleanse::normalize_vin(&candidate).is_ok() {
            return candidate;
        }
    }
    unreachable!("one of the eleven check characters is right")
}

/// A GB 11643 ID number with a correct check character.
pub fn id_no(rng: &mut impl Rng) -> String {
    let stem = format!(
        "440104{}{:02}{:02}{:03}",
        rng.random_range(1960..2004),
        rng.random_range(1..=12),
        rng.random_range(1..=28),
        rng.random_range(0..1000)
    );
    for check in "0123456789X".chars() {
        let candidate = format!("{stem}{check}");
        if cleanse::normalize_id_no(&candidate).is_ok() {
            return candidate;
        }
    }
    unreachable!("one of the eleven check characters is right")
}

fn china_now() -> chrono::DateTime<chrono::FixedOffset> {
    chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("valid"))
}

impl Sim {
    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn post_json(&self, path: &str, key: &str, body: &Value) -> Option<Value> {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .header("X-Api-Key", key)
            .json(body)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            Ok(_) => None,
            Err(_) => {
                self.tally.errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Website and call centre: a lead every second or so; some with a broken mobile.
    async fn lead(&self) {
        let (body, key) = {
            let mut rng = rand::rng();
            let (province, city) = *CITIES.choose(&mut rng).expect("not empty");
            let website = rng.random_bool(0.6);
            let bad = rng.random_bool(BAD_SHARE);
            let n = self.next();
            let mut body = json!({
                "source_ref": format!("{}-{}-{n:06}", if website { "WEB" } else { "CC" }, china_now().format("%Y%m%d")),
                "name": name(&mut rng),
                "mobile": if bad { "12345".to_string() } else { mobile(&mut rng) },
                "province": province,
                "city": city,
                "interested_model": MODELS.choose(&mut rng),
            });
            if rng.random_bool(0.3) {
                body["campaign_code"] = json!("CMP-2026-WINTER");
            }
            if bad {
                self.tally.bad.fetch_add(1, Ordering::Relaxed);
            }
            (
                body,
                if website {
                    "demo-website"
                } else {
                    "demo-callcenter"
                },
            )
        };
        if self.post_json("/api/v1/leads", key, &body).await.is_some() {
            self.tally.leads.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A dealer's DMS sends a customer it registered at the showroom.
    async fn customer(&self) {
        let (body, key) = {
            let mut rng = rand::rng();
            let (dealer, province, city) = *DEALERS.choose(&mut rng).expect("not empty");
            let bad = rng.random_bool(BAD_SHARE);
            if bad {
                self.tally.bad.fetch_add(1, Ordering::Relaxed);
            }
            let body = json!({
                "source_ref": format!("DMS-{dealer}-C{:06}", self.next()),
                "dealer_code": dealer,
                "name": name(&mut rng),
                // Some DMS send +86 and spaces: the hub cleanses them.
                "mobile": if bad { "139-1234".to_string() } else if rng.random_bool(0.3) {
                    let m = mobile(&mut rng);
                    format!("+86 {} {} {}", &m[..3], &m[3..7], &m[7..])
                } else { mobile(&mut rng) },
                "id_no": id_no(&mut rng),
                "gender": if rng.random_bool(0.5) { "M" } else { "F" },
                "province": province,
                "city": city,
                "updated_at": china_now().to_rfc3339(),
            });
            (body, format!("demo-dms-{dealer}"))
        };
        if self
            .post_json("/api/v1/dms/customers", &key, &body)
            .await
            .is_some()
        {
            self.tally.customers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// OSM synchronises the vehicles it sold, over SOAP with WS-Security.
    async fn vehicles(&self) {
        let xml = {
            let mut rng = rand::rng();
            let mut vehicles = String::new();
            for _ in 0..rng.random_range(1..=3) {
                let (dealer, _, _) = *DEALERS.choose(&mut rng).expect("not empty");
                let mut v = vin(&mut rng);
                if rng.random_bool(BAD_SHARE) {
                    // A typo in the check digit: OSM gets it back in `rejected`.
                    let wrong = if &v[8..9] == "1" { "2" } else { "1" };
                    v.replace_range(8..9, wrong);
                    self.tally.bad.fetch_add(1, Ordering::Relaxed);
                }
                vehicles.push_str(&format!(
                    "<v:vehicle><v:vin>{v}</v:vin><v:brand>Honda</v:brand><v:model>{}</v:model>\
                     <v:modelYear>2026</v:modelYear><v:color>珍珠白</v:color><v:dealerCode>{dealer}</v:dealerCode>\
                     <v:salesDate>{}</v:salesDate><v:owner><v:name>{}</v:name><v:mobile>{}</v:mobile>\
                     <v:idNo>{}</v:idNo></v:owner></v:vehicle>",
                    MODELS.choose(&mut rng).expect("not empty"),
                    china_now().format("%Y-%m-%d"),
                    name(&mut rng),
                    mobile(&mut rng),
                    id_no(&mut rng),
                ));
            }
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                 <soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:v=\"urn:synchub:osm:vehicle:v1\">\
                 <soapenv:Header><wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\">\
                 <wsse:UsernameToken><wsse:Username>osm</wsse:Username>\
                 <wsse:Password Type=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText\">demo-osm</wsse:Password>\
                 </wsse:UsernameToken></wsse:Security></soapenv:Header>\
                 <soapenv:Body><v:SyncVehicles>{vehicles}</v:SyncVehicles></soapenv:Body></soapenv:Envelope>"
            )
        };
        let res = self
            .http
            .post(format!("{}/soap/osm/VehicleService", self.base))
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "\"urn:synchub:osm:vehicle:v1#SyncVehicles\"")
            .body(xml)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => {
                self.tally.vehicles.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.tally.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The DMS answer to a message on the dealer exchange: a lead result after the salesman
    /// called (or a campaign result), sometimes a bad one.
    fn answer(&self, dealer: &str, msg: &Value) -> Option<(&'static str, Value)> {
        let mut rng = rand::rng();
        match msg.get("event").and_then(Value::as_str)? {
            "lead.assigned" => {
                let lead = msg.get("lead_id").and_then(Value::as_str)?;
                let status = *[
                    "contacted",
                    "test_drive",
                    "ordered",
                    "won",
                    "lost",
                    "invalid",
                ]
                .choose(&mut rng)
                .expect("not empty");
                let bad = rng.random_bool(BAD_SHARE);
                if bad {
                    self.tally.bad.fetch_add(1, Ordering::Relaxed);
                }
                let mut body = json!({
                    "source_ref": format!("DMS-{dealer}-R{:06}", self.next()),
                    "lead_id": lead,
                    // A bad one claims another dealer's lead: the hub refuses it.
                    "dealer_code": if bad { "D0009" } else { dealer },
                    "status": status,
                    "occurred_at": china_now().to_rfc3339(),
                });
                if matches!(status, "lost" | "invalid") {
                    body["reason"] = json!(if status == "lost" {
                        "买了别的品牌"
                    } else {
                        "空号"
                    });
                }
                Some(("lead_result", body))
            }
            "campaign.assigned" => {
                let code = msg.get("campaign_code").and_then(Value::as_str)?;
                let target = msg.get("target_customers")?.as_array()?.first()?;
                let mobile = target
                    .get("mobile")
                    .and_then(Value::as_str)
                    .or_else(|| target.as_str())?;
                Some((
                    "campaign_result",
                    json!({
                        "source_ref": format!("DMS-{dealer}-CR{:06}", self.next()),
                        "campaign_code": code,
                        "dealer_code": dealer,
                        "customer_mobile": mobile,
                        "result": *["contacted", "attended", "purchased", "declined"].choose(&mut rng).expect("not empty"),
                        "result_date": china_now().format("%Y-%m-%d").to_string(),
                    }),
                ))
            }
            _ => None,
        }
    }

    fn count_answer(&self, kind: &str) {
        match kind {
            "lead_result" => self.tally.results.fetch_add(1, Ordering::Relaxed),
            _ => self.tally.campaign_results.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The same answer over REST, for when no broker is reachable.
    async fn answer_by_rest(&self, dealer: &str, kind: &str, body: &Value) {
        let path = if kind == "lead_result" {
            "/api/v1/dms/lead-results"
        } else {
            "/api/v1/dms/campaign-results"
        };
        if self
            .post_json(path, &format!("demo-dms-{dealer}"), body)
            .await
            .is_some()
        {
            self.count_answer(kind);
        }
    }
}

/// Runs `f` every `every` (± 50 %) until stopped.
async fn every<F, Fut>(every: Duration, mut stop: watch::Receiver<bool>, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let jitter = rand::rng().random_range(0.5..1.5);
        tokio::select! {
            _ = tokio::time::sleep(every.mul_f64(jitter)) => f().await,
            _ = stop.changed() => return,
        }
    }
}

/// The DMS of every demo dealer on RabbitMQ: a queue bound to its dealer's routing keys,
/// results published to the inbound exchange after a salesman-like delay.
async fn dms_over_amqp(
    sim: Arc<Sim>,
    url: String,
    dealer_exchange: String,
    inbound_exchange: String,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Generous: a broker on a busy machine can take seconds to answer.
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    .context("no answer from the broker")??;
    let conn = Arc::new(conn);
    for (dealer, _, _) in DEALERS {
        let ch = conn.create_channel().await?;
        let queue = format!("dms.{dealer}");
        let mut args = FieldTable::default();
        // The demo's queues go away when the demo has been gone for an hour.
        args.insert("x-expires".into(), AMQPValue::LongUInt(3_600_000));
        ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), args)
            .await?;
        ch.queue_bind(
            queue.as_str().into(),
            dealer_exchange.as_str().into(),
            format!("dealer.{dealer}.#").as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                format!("synchub-demo-{dealer}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (sim, ch, inbound, mut stop) = (
            sim.clone(),
            ch.clone(),
            inbound_exchange.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    d = consumer.next() => d,
                    _ = stop.changed() => return,
                };
                let Some(Ok(d)) = delivery else { return };
                sim.tally.dms_received.fetch_add(1, Ordering::Relaxed);
                let msg: Value = serde_json::from_slice(&d.data).unwrap_or_default();
                let _ = d.ack(BasicAckOptions::default()).await;
                let Some((kind, body)) = sim.answer(dealer, &msg) else {
                    continue;
                };
                let (sim, ch, inbound) = (sim.clone(), ch.clone(), inbound.clone());
                tokio::spawn(async move {
                    let delay = rand::rng().random_range(2_000..8_000);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let key = if kind == "lead_result" {
                        "dms.lead-result"
                    } else {
                        "dms.campaign-result"
                    };
                    let published = ch
                        .basic_publish(
                            inbound.as_str().into(),
                            key.into(),
                            BasicPublishOptions::default(),
                            body.to_string().as_bytes(),
                            BasicProperties::default()
                                .with_content_type("application/json".into())
                                .with_delivery_mode(2),
                        )
                        .await;
                    if published.is_ok() {
                        sim.count_answer(kind);
                    } else {
                        sim.answer_by_rest(dealer, kind, &body).await;
                    }
                });
            }
        });
    }
    let mut stop = stop;
    let _ = stop.changed().await;
    let _ = conn.close(200, "demo stopped".into()).await;
    Ok(())
}

/// Without a broker the DMS learn of their leads the way a DMS without AMQP would poll: by
/// asking the hub for the events addressed to their dealer, then answering over REST.
async fn dms_over_rest(sim: Arc<Sim>, stop: watch::Receiver<bool>) {
    let seen = tokio::sync::Mutex::new(std::collections::HashSet::<String>::new());
    every(Duration::from_secs(5), stop, || async {
        for (dealer, _, _) in DEALERS {
            let url = format!(
                "{}/api/v1/messages?key={dealer}&endpoint=crm_store&limit=50",
                sim.base
            );
            let Ok(r) = sim.http.get(url).bearer_auth("demo-admin").send().await else {
                continue;
            };
            let Ok(found) = r.json::<Value>().await else {
                continue;
            };
            for m in found["messages"].as_array().cloned().unwrap_or_default() {
                let id = m["id"].as_str().unwrap_or_default().to_string();
                if !seen.lock().await.insert(id.clone()) {
                    continue;
                }
                let detail = sim
                    .http
                    .get(format!("{}/api/v1/messages/{id}", sim.base))
                    .bearer_auth("demo-admin")
                    .send()
                    .await;
                let Ok(detail) = detail else { continue };
                let Ok(detail) = detail.json::<Value>().await else {
                    continue;
                };
                let body: Value = match &detail["body"] {
                    Value::String(s) => serde_json::from_str(s).unwrap_or_default(),
                    other => other.clone(),
                };
                if let Some((kind, answer)) = sim.answer(dealer, &body) {
                    sim.tally.dms_received.fetch_add(1, Ordering::Relaxed);
                    sim.answer_by_rest(dealer, kind, &answer).await;
                }
            }
        }
    })
    .await;
}

/// Broker URL and exchange names of the shipped AMQP endpoints, when configured.
fn amqp_names(settings: &Settings) -> Option<(String, String, String)> {
    let mut url = None;
    let (mut dealer, mut inbound) = (None, None);
    for (id, e) in &settings.endpoints {
        if let EndpointConfig::Amqp(a) = e
            && let Ok(cfg) = crate::app::amqp_config(id, a)
        {
            url.get_or_insert(cfg.url.clone());
            match a.direction {
                crate::settings::Direction::Out => dealer = Some(cfg.dealer_exchange),
                crate::settings::Direction::In => inbound = Some(cfg.inbound_exchange),
            }
        }
    }
    Some((url?, dealer?, inbound?))
}

/// Serves the hub with the simulators until `shutdown` resolves or the duration is over.
pub async fn run(
    settings: Settings,
    opts: DemoOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let amqp = amqp_names(&settings);
    let app = Application::build(settings)
        .await
        .context("Failed to start the hub for the demo")?;
    let base = format!("http://{}", app.local_addr());
    let sim = Arc::new(Sim {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        base: base.clone(),
        tally: Tally::default(),
        seq: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    println!("synchub demo: the hub is serving on {base}");
    println!("  dashboard: {base}/ui/  (user admin, password demo-admin)");
    println!("  ops API:   curl -H 'Authorization: Bearer demo-admin' {base}/api/v1/flows");
    println!(
        "  simulators: website + call centre leads, DMS D0001-D0003 customers and results, OSM vehicles (SOAP)"
    );

    let s = sim.clone();
    tokio::spawn(every(
        Duration::from_millis(1000),
        stop_rx.clone(),
        move || {
            let s = s.clone();
            async move { s.lead().await }
        },
    ));
    let s = sim.clone();
    tokio::spawn(every(
        Duration::from_millis(2500),
        stop_rx.clone(),
        move || {
            let s = s.clone();
            async move { s.customer().await }
        },
    ));
    let s = sim.clone();
    tokio::spawn(every(
        Duration::from_millis(4000),
        stop_rx.clone(),
        move || {
            let s = s.clone();
            async move { s.vehicles().await }
        },
    ));
    let (s, rx) = (sim.clone(), stop_rx.clone());
    tokio::spawn(async move {
        let over_amqp = match amqp {
            Some((url, dealer, inbound)) => {
                match dms_over_amqp(s.clone(), url, dealer, inbound, rx.clone()).await {
                    Ok(()) => true,
                    Err(e) => {
                        println!(
                            "  no RabbitMQ ({e:#}): the DMS simulators answer over REST instead"
                        );
                        false
                    }
                }
            }
            None => false,
        };
        if !over_amqp {
            dms_over_rest(s, rx).await;
        }
    });
    let s = sim.clone();
    tokio::spawn(every(Duration::from_secs(10), stop_rx.clone(), move || {
        let s = s.clone();
        async move {
            let t = &s.tally;
            println!(
                "demo: sent {} leads, {} DMS customers, {} OSM vehicle calls, {} lead results, {} campaign results ({} deliberately bad); DMS received {}; {} transport errors",
                t.leads.load(Ordering::Relaxed),
                t.customers.load(Ordering::Relaxed),
                t.vehicles.load(Ordering::Relaxed),
                t.results.load(Ordering::Relaxed),
                t.campaign_results.load(Ordering::Relaxed),
                t.bad.load(Ordering::Relaxed),
                t.dms_received.load(Ordering::Relaxed),
                t.errors.load(Ordering::Relaxed),
            );
        }
    }));
    let duration = opts.duration;
    let stop = async move {
        match duration {
            Some(d) => {
                tokio::select! {
                    _ = shutdown => {}
                    _ = tokio::time::sleep(d) => {}
                }
            }
            None => shutdown.await,
        }
        let _ = stop_tx.send(true);
    };
    app.run_until_stopped(stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identifiers_pass_the_hubs_own_checks() {
        let mut rng = rand::rng();
        for _ in 0..200 {
            assert!(cleanse::normalize_vin(&vin(&mut rng)).is_ok());
            assert!(cleanse::normalize_id_no(&id_no(&mut rng)).is_ok());
            assert!(cleanse::normalize_mobile(&mobile(&mut rng)).is_ok());
            let n = name(&mut rng);
            assert!((2..=3).contains(&n.chars().count()), "{n}");
        }
    }
}
