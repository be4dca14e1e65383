//! Leads end to end (issue 7 §3, §4) through the running hub, the real RabbitMQ and both
//! stores: scoring and grading by the shipped rules, distribution by city/province with
//! capacity and the call-centre fallback, duplicate protection, the exact `lead.assigned` body
//! on the dealer's queue, results only from the assigned dealer (REST and AMQP), and
//! escalation of unanswered leads with optional reassignment, raised once even when two
//! instances run the job at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use serde_json::{Value, json};
use synchub::crm::escalation::EscalationJob;
use synchub::settings::{Profile, Settings};

use crate::helpers::*;

/// The dealers whose DMS queues a test binds.
const DEALERS: [&str; 3] = ["D0001", "D0002", "D0003"];

struct Dms {
    _conn: lapin::Connection,
    ch: lapin::Channel,
    queues: Vec<(String, String)>,
}

impl Dms {
    /// Binds `dms.<code>` to `dealer.<code>.#` for each code, as each DMS does.
    async fn bind(hub: &TestHub, codes: &[&str]) -> Dms {
        let (conn, ch) = amqp_client().await;
        let mut queues = Vec::new();
        for c in codes {
            let q = dms_queue(
                &ch,
                &hub.amqp_prefix,
                &format!("dms.{c}"),
                &format!("dealer.{c}.#"),
            )
            .await;
            queues.push((c.to_string(), q));
        }
        Dms {
            _conn: conn,
            ch,
            queues,
        }
    }

    fn queue(&self, code: &str) -> &str {
        &self
            .queues
            .iter()
            .find(|(c, _)| c == code)
            .expect("queue bound")
            .1
    }

    /// Everything waiting in the dealer's queue now.
    async fn take(&self, code: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        while let Some(m) = self
            .ch
            .basic_get(self.queue(code).into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            out.push((
                m.delivery.routing_key.to_string(),
                serde_json::from_slice(&m.delivery.data).expect("JSON body"),
            ));
        }
        out
    }

    /// Waits until the dealer's queue has yielded `n` messages in all.
    async fn expect(&self, code: &str, n: usize, secs: u64) -> Vec<(String, Value)> {
        // A loaded machine slows the broker: never wait less than a minute for a message.
        let deadline = Instant::now() + Duration::from_secs(secs.max(60));
        let mut got = Vec::new();
        loop {
            got.extend(self.take(code).await);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{code}'s DMS got {} of {n} messages: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until the hub's AMQP endpoints have connected (generously: the broker is shared and
/// a loaded machine makes a first connection slow).
async fn wait_amqp_up(hub: &TestHub) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, eps) = hub.get("/api/v1/endpoints", ADMIN).await;
        let up = eps["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["id"].as_str().is_some_and(|i| i.starts_with("dms_amqp_")))
            .filter(|e| e["state"] == "up" && !e["last_contact"].is_null())
            .count();
        if up == 2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "AMQP endpoints never came up: {eps}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The shipped configuration with lines of `config/rules/lead_distribution.toml` replaced.
fn with_distribution(edits: &[(&str, &str)]) -> TestConfig {
    let config = TestConfig::shipped();
    let file = config.config_dir().join("rules/lead_distribution.toml");
    let mut text = std::fs::read_to_string(&file).expect("shipped distribution rules");
    for (from, to) in edits {
        assert!(text.contains(from), "`{from}` not in the shipped rules");
        text = text.replace(from, to);
    }
    std::fs::write(&file, text).expect("write rules");
    config
}

fn lead(source_ref: &str, mobile: &str, city: &str, province: &str) -> Value {
    let mut l = sample("rest/lead.request.json");
    l["source_ref"] = json!(source_ref);
    l["mobile"] = json!(mobile);
    l["city"] = json!(city);
    l["province"] = json!(province);
    l
}

async fn post_lead(hub: &TestHub, key: &str, body: &Value) -> String {
    let (s, r) = hub.post_records("/api/v1/leads", key, body).await;
    assert_eq!(s, 202, "{r}");
    r["accepted"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no lead id: {r}"))
        .to_string()
}

/// The lead once the CRM has decided about it (status no longer `new`).
async fn decided(hub: &TestHub, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, l) = hub.get(&format!("/api/v1/leads/{id}"), ADMIN).await;
        if s == 200 && l["status"] != "new" {
            return l;
        }
        assert!(Instant::now() < deadline, "lead {id} never decided: {l}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the CRM store has applied everything sent to it (not the DMS side: tests of
/// distribution alone do not depend on the broker's pace).
async fn crm_settled(hub: &TestHub, leads: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = count(
            hub,
            "SELECT COUNT(*) FROM deliveries WHERE target = 'crm_store' AND status IN ('pending','in_flight')",
        )
        .await;
        let stored = count(
            hub,
            "SELECT COUNT(*) FROM crm_records WHERE entity = 'lead'",
        )
        .await;
        if open == 0 && stored >= leads {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "CRM store still busy: {open} open, {stored} of {leads} leads"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(hub: &TestHub, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(hub.store.pool())
        .await
        .expect("count")
}

fn ms_between(a: &Value, b: &Value) -> i64 {
    let t = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
            .expect("RFC 3339")
            .timestamp_millis()
    };
    t(b) - t(a)
}

async fn lead_is_scored_and_assigned_by_city(backend: Backend) {
    let hub = TestHub::spawn_with(backend, TestConfig::shipped(), &[(NO_DMS_QUEUES, "1")]).await;
    let dms = Dms::bind(&hub, &DEALERS).await;
    wait_amqp_up(&hub).await;
    let id = post_lead(&hub, "demo-website", &sample("rest/lead.request.json")).await;

    let got = dms.expect("D0002", 1, 20).await;
    assert_eq!(got.len(), 1, "one lead.assigned: {got:?}");
    let (key, body) = &got[0];
    assert_eq!(key, &"dealer.D0002.lead");
    // Exactly the INTERFACES §3 fields, nothing internal.
    let sample_body = sample("amqp/dealer.D0002.lead.json");
    let mut want: Vec<&String> = sample_body.as_object().unwrap().keys().collect();
    let mut have: Vec<&String> = body.as_object().unwrap().keys().collect();
    want.sort();
    have.sort();
    assert_eq!(have, want, "{body}");
    assert_eq!(body["event"], "lead.assigned");
    assert_eq!(body["lead_id"], id.as_str());
    assert_eq!(body["dealer_code"], "D0002");
    // website 20 + campaign 10 + DOUBLE11 5 + model 5 + 雅阁 5 + complete 13 + fresh 15
    assert_eq!(body["score"], 73, "{body}");
    assert_eq!(body["level"], "A", "{body}");
    assert_eq!(
        body["customer"],
        json!({"name": "周杰", "mobile": "13760001234", "province": "广东", "city": "深圳"})
    );
    assert_eq!(body["interested_model"], "雅阁 Accord");
    assert_eq!(body["campaign_code"], "C2026-11-DOUBLE11");
    assert_eq!(body["source"], "website");
    let assigned_at = body["assigned_at"].as_str().unwrap();
    assert!(
        assigned_at.ends_with("+08:00"),
        "business timezone: {assigned_at}"
    );
    assert_eq!(
        ms_between(&body["assigned_at"], &body["respond_by"]),
        8 * 3_600_000,
        "grade A answers within 8h: {body}"
    );
    assert!(dms.take("D0001").await.is_empty(), "nothing for D0001");

    // The lead shows the decision and its reason, and its timeline the steps.
    let l = decided(&hub, &id).await;
    assert_eq!(l["status"], "assigned", "{l}");
    assert_eq!(l["dealer_code"], "D0002");
    assert_eq!(l["assigned_to"], "D0002");
    assert_eq!(l["level"], "A");
    assert_eq!(l["score"], 73);
    assert_eq!(
        l["assignment_reason"], "city 深圳 → D0002 (least_loaded, 0/50 today)",
        "{l}"
    );
    assert_eq!(l["respond_by"], body["respond_by"]);
    assert!(
        l["score_detail"]
            .as_str()
            .unwrap()
            .contains("source website +20"),
        "{l}"
    );
    let fields: Vec<&str> = l["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields[0], "(created)", "{l}");
    for f in [
        "status",
        "dealer_code",
        "level",
        "score",
        "assignment_reason",
        "respond_by",
    ] {
        assert!(fields.contains(&f), "timeline lacks {f}: {fields:?}");
    }
    // Another dealer's IT does not see it; the assigned dealer's journal entry is searchable.
    let (s, _) = hub.get(&format!("/api/v1/leads/{id}"), IT_D0001).await;
    assert_eq!(s, 404);
    let (_, found) = hub
        .get(
            &format!("/api/v1/messages?key={id}&endpoint=crm_store"),
            ADMIN,
        )
        .await;
    assert!(
        found["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["record_type"] == "lead_event"),
        "the lead event is journaled: {found}"
    );

    // Replaying the lead never assigns it again. (A replay of a record also replays the events
    // it caused, so the dealer may get the very same lead.assigned once more, never a new one.)
    let (_, msgs) = hub
        .get(
            "/api/v1/messages?key=WEB-20261125-000981&endpoint=partners_rest_in",
            ADMIN,
        )
        .await;
    let record = msgs["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["record_type"] == "lead")
        .unwrap_or_else(|| panic!("lead record: {msgs}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = hub
        .post(&format!("/api/v1/messages/{record}/replay"), ADMIN, None)
        .await;
    assert_eq!(s, 202);
    hub.settle(60).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = dms.take("D0002").await;
    assert!(
        again.iter().all(|(_, b)| b == body),
        "a replay sends no new assignment: {again:?}"
    );
    let (_, after) = hub.get(&format!("/api/v1/leads/{id}"), ADMIN).await;
    assert_eq!(after["assigned_at"], l["assigned_at"], "{after}");
    assert_eq!(after["version"], l["version"], "{after}");
    assert_eq!(
        count(&hub, "SELECT COUNT(*) FROM lead_assignments").await,
        1,
        "a replay assigns nothing new"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leads_lead_is_scored_assigned_by_city_and_delivered_sqlite() {
    lead_is_scored_and_assigned_by_city(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leads_lead_is_scored_assigned_by_city_and_delivered_postgres() {
    lead_is_scored_and_assigned_by_city(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leads_duplicate_in_window_is_linked_not_sent_and_after_window_is_new() {
    let hub = TestHub::spawn_with(
        Backend::Sqlite,
        TestConfig::shipped(),
        &[(NO_DMS_QUEUES, "1")],
    )
    .await;
    let dms = Dms::bind(&hub, &DEALERS).await;
    wait_amqp_up(&hub).await;
    let first = post_lead(
        &hub,
        "demo-website",
        &lead("W-DUP-1", "13800000001", "深圳", "广东"),
    )
    .await;
    dms.expect("D0002", 1, 20).await;
    // Same person through the call centre, even with a +86 prefix: a duplicate.
    let second = post_lead(
        &hub,
        "demo-callcenter",
        &lead("CC-DUP-2", "+86 138-0000-0001", "广州", "广东"),
    )
    .await;
    let d = decided(&hub, &second).await;
    assert_eq!(d["status"], "duplicate", "{d}");
    assert_eq!(d["duplicate_of"], first.as_str(), "{d}");
    assert!(
        d["assignment_reason"]
            .as_str()
            .unwrap()
            .contains(&format!("duplicate of {first}")),
        "{d}"
    );
    assert!(
        d.get("dealer_code").is_none() || d["dealer_code"] != "D0001",
        "{d}"
    );
    hub.settle(60).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        dms.take("D0001").await.is_empty(),
        "no second dealer chases it"
    );
    assert!(
        dms.take("D0002").await.is_empty(),
        "and it is not sent again"
    );
    let (_, orig) = hub.get(&format!("/api/v1/leads/{first}"), ADMIN).await;
    assert_eq!(orig["duplicates"], json!([second]), "{orig}");
    assert!(
        orig["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["field"] == "duplicates"),
        "the link is on the original's timeline: {orig}"
    );
    // Results belong on the original: one on the duplicate is refused, naming it.
    let mut on_dup = sample("rest/lead-result.request.json");
    on_dup["lead_id"] = json!(second);
    on_dup["source_ref"] = json!("R-DUP-2");
    let (s, _) = hub
        .post_records("/api/v1/dms/lead-results", "demo-dms-D0002", &on_dup)
        .await;
    assert_eq!(s, 202);
    hub.settle(60).await;
    let (_, found) = hub.get("/api/v1/messages?key=R-DUP-2", ADMIN).await;
    let (_, detail) = hub
        .get(
            &format!(
                "/api/v1/messages/{}",
                found["messages"][0]["id"].as_str().unwrap()
            ),
            ADMIN,
        )
        .await;
    assert_eq!(detail["deliveries"][0]["status"], "rejected", "{detail}");
    assert_eq!(
        detail["deliveries"][0]["last_reason"],
        format!("lead {second} is a duplicate of {first}; report results on {first}")
    );
    // The duplicate is visible to the original's dealer, not to others.
    let (s, _) = hub.get(&format!("/api/v1/leads/{second}"), IT_D0001).await;
    assert_eq!(s, 404);

    // 31 days later the protection window has passed: a new lead is distributed again.
    hub.store
        .write(|c| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE crm_records SET created_at = created_at - $1 WHERE entity = 'lead'",
                )
                .bind(31_i64 * 86_400_000)
                .execute(&mut *c)
                .await?;
                Ok(())
            })
        })
        .await
        .expect("age the leads");
    let third = post_lead(
        &hub,
        "demo-website",
        &lead("W-DUP-3", "13800000001", "深圳", "广东"),
    )
    .await;
    let got = dms.expect("D0002", 1, 20).await;
    assert_eq!(got[0].1["lead_id"], third.as_str());
    let t = decided(&hub, &third).await;
    assert_eq!(t["status"], "assigned", "{t}");
    assert!(t.get("duplicate_of").is_none(), "{t}");

    // A closed lead no longer protects its mobile either.
    let lost = post_lead(
        &hub,
        "demo-website",
        &lead("W-DUP-4", "13800000004", "深圳", "广东"),
    )
    .await;
    dms.expect("D0002", 1, 20).await;
    let mut result = sample("rest/lead-result.request.json");
    result["lead_id"] = json!(lost);
    result["source_ref"] = json!("R-LOST-4");
    result["status"] = json!("lost");
    result["reason"] = json!("bought elsewhere");
    let (s, r) = hub
        .post_records("/api/v1/dms/lead-results", "demo-dms-D0002", &result)
        .await;
    assert_eq!(s, 202, "{r}");
    hub.settle(60).await;
    let again = post_lead(
        &hub,
        "demo-website",
        &lead("W-DUP-5", "13800000004", "深圳", "广东"),
    )
    .await;
    assert_eq!(decided(&hub, &again).await["status"], "assigned");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leads_capacity_spills_to_the_next_dealer_then_the_call_centre() {
    let hub = TestHub::spawn_with(
        Backend::Sqlite,
        with_distribution(&[("daily_capacity = 50", "daily_capacity = 1")]),
        &[(NO_DMS_QUEUES, "1")],
    )
    .await;
    let dms = Dms::bind(&hub, &DEALERS).await;
    wait_amqp_up(&hub).await;
    let a = post_lead(
        &hub,
        "demo-website",
        &lead("W-CAP-1", "13900000001", "深圳", "广东"),
    )
    .await;
    assert_eq!(decided(&hub, &a).await["dealer_code"], "D0002");
    let b = post_lead(
        &hub,
        "demo-website",
        &lead("W-CAP-2", "13900000002", "深圳", "广东"),
    )
    .await;
    let lb = decided(&hub, &b).await;
    assert_eq!(lb["dealer_code"], "D0001", "{lb}");
    assert_eq!(
        lb["assignment_reason"],
        "D0002 full (1/1); province 广东 → D0001 (least_loaded, 0/1 today)"
    );
    let c = post_lead(
        &hub,
        "demo-website",
        &lead("W-CAP-3", "13900000003", "深圳", "广东"),
    )
    .await;
    let lc = decided(&hub, &c).await;
    assert_eq!(lc["assigned_to"], "callcenter", "{lc}");
    assert!(lc.get("dealer_code").is_none(), "{lc}");
    assert_eq!(
        lc["assignment_reason"],
        "D0002 full (1/1), D0001 full (1/1); no active dealer with capacity for city 深圳 or province 广东 → callcenter"
    );
    // No dealer in the province at all.
    let d = post_lead(
        &hub,
        "demo-callcenter",
        &lead("CC-CAP-4", "13900000004", "成都", "四川"),
    )
    .await;
    let ld = decided(&hub, &d).await;
    assert_eq!(ld["assigned_to"], "callcenter");
    assert_eq!(
        ld["assignment_reason"],
        "no active dealer with capacity for city 成都 or province 四川 → callcenter"
    );
    // A grade below the dealer minimum: a bare website lead.
    let (s, r) = hub
        .post_records(
            "/api/v1/leads",
            "demo-website",
            &json!({"source_ref": "W-CAP-5", "name": "王芳", "mobile": "13900000005"}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let le = decided(&hub, r["accepted"][0]["id"].as_str().unwrap()).await;
    assert_eq!(le["level"], "C", "{le}");
    assert_eq!(
        le["assignment_reason"],
        "level C is below the dealer minimum B → callcenter"
    );

    hub.settle(60).await;
    let d2 = dms.expect("D0002", 1, 10).await;
    let d1 = dms.expect("D0001", 1, 10).await;
    assert_eq!((d2.len(), d1.len()), (1, 1), "{d2:?} {d1:?}");
    assert_eq!(d1[0].1["lead_id"], b.as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(dms.take("D0001").await.is_empty() && dms.take("D0002").await.is_empty());
    assert!(
        dms.take("D0003").await.is_empty(),
        "call-centre leads go to no DMS"
    );
    assert_eq!(
        count(
            &hub,
            "SELECT COUNT(*) FROM messages WHERE record_type = 'lead_event'"
        )
        .await,
        2
    );
    hub.stop().await;
}

/// Adds dealer D0004 in 深圳 to the CRM (as the OSM dealer file would).
async fn add_shenzhen_dealer(hub: &TestHub) {
    hub.store
        .write(|c| {
            Box::pin(async move {
                let data = json!({"dealer_code": "D0004", "dealer_name": "深圳二店", "province": "广东",
                                  "city": "深圳", "status": "active"});
                synchub::crm::upsert(
                    c,
                    "dealer",
                    "D0004",
                    data.as_object().unwrap(),
                    &synchub::crm::Columns {
                        dealer_code: Some("D0004".into()),
                        ..Default::default()
                    },
                    &synchub::crm::ChangeSource {
                        system: "test".into(),
                        message_id: None,
                        needs_approval: false,
                    },
                )
                .await
                .map(|_| ())
            })
        })
        .await
        .expect("add dealer");
}

#[tokio::test(flavor = "multi_thread")]
async fn leads_round_robin_takes_turns_between_city_dealers_postgres() {
    let hub = TestHub::spawn_with(
        Backend::Postgres,
        with_distribution(&[("strategy = \"least_loaded\"", "strategy = \"round_robin\"")]),
        &[],
    )
    .await;
    add_shenzhen_dealer(&hub).await;
    let mut got = Vec::new();
    for i in 0..4 {
        let id = post_lead(
            &hub,
            "demo-website",
            &lead(
                &format!("W-RR-{i}"),
                &format!("1370000010{i}"),
                "深圳",
                "广东",
            ),
        )
        .await;
        got.push(
            decided(&hub, &id).await["dealer_code"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(got, ["D0002", "D0004", "D0002", "D0004"]);
    hub.stop().await;
}

/// Publishes a lead result to the hub's inbound exchange, as a DMS does.
async fn publish_result(ch: &lapin::Channel, hub: &TestHub, body: &Value) {
    ch.basic_publish(
        format!("{}synchub.inbound", hub.amqp_prefix)
            .as_str()
            .into(),
        "dms.lead-result".into(),
        BasicPublishOptions::default(),
        &serde_json::to_vec(body).unwrap(),
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .expect("publish")
    .await
    .expect("confirmed");
}

fn result(lead_id: &str, dealer: &str, source_ref: &str, status: &str) -> Value {
    json!({"source_ref": source_ref, "lead_id": lead_id, "dealer_code": dealer, "status": status,
           "occurred_at": "2026-11-25T15:20:00+08:00"})
}

/// The CRM delivery of the result with this source_ref.
async fn result_delivery(hub: &TestHub, source_ref: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, found) = hub
            .get(&format!("/api/v1/messages?key={source_ref}"), ADMIN)
            .await;
        if let Some(m) = found["messages"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["record_type"] == "lead_result"))
        {
            let (_, detail) = hub
                .get(
                    &format!("/api/v1/messages/{}", m["id"].as_str().unwrap()),
                    ADMIN,
                )
                .await;
            let d = detail["deliveries"][0].clone();
            if d["status"] == "delivered" || d["status"] == "rejected" {
                return d;
            }
        }
        assert!(
            Instant::now() < deadline,
            "result {source_ref} never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leads_only_the_assigned_dealer_may_report_results_over_amqp_and_rest() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    wait_amqp_up(&hub).await;
    let id = post_lead(
        &hub,
        "demo-website",
        &lead("W-RES-1", "13600000001", "深圳", "广东"),
    )
    .await;
    assert_eq!(decided(&hub, &id).await["dealer_code"], "D0002");
    let (_conn, ch) = amqp_client().await;

    // REST from D0001: accepted for the journal, refused by the CRM with the reason.
    let (s, r) = hub
        .post_records(
            "/api/v1/dms/lead-results",
            "demo-dms-D0001",
            &result(&id, "D0001", "R-D1-1", "contacted"),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let d = result_delivery(&hub, "R-D1-1").await;
    assert_eq!(d["status"], "rejected", "{d}");
    assert_eq!(
        d["last_reason"],
        format!("lead {id} is assigned to dealer D0002, not D0001"),
        "{d}"
    );
    // AMQP from D0003: the same.
    publish_result(&ch, &hub, &result(&id, "D0003", "R-D3-1", "won")).await;
    let d = result_delivery(&hub, "R-D3-1").await;
    assert_eq!(d["status"], "rejected", "{d}");
    assert!(
        d["last_reason"].as_str().unwrap().contains("not D0003"),
        "{d}"
    );
    // The refusals are visible as rejected work of the results flows.
    let (_, rejected) = hub.get("/api/v1/messages?key=R-D3-1", ADMIN).await;
    assert!(!rejected["messages"].as_array().unwrap().is_empty());

    // The assigned dealer over AMQP, then over REST: the status moves each time.
    publish_result(&ch, &hub, &result(&id, "D0002", "R-D2-1", "contacted")).await;
    assert_eq!(result_delivery(&hub, "R-D2-1").await["status"], "delivered");
    let (_, l) = hub.get(&format!("/api/v1/leads/{id}"), ADMIN).await;
    assert_eq!(l["status"], "contacted", "{l}");
    let (s, _) = hub
        .post_records(
            "/api/v1/dms/lead-results",
            "demo-dms-D0002",
            &result(&id, "D0002", "R-D2-2", "test_drive"),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(result_delivery(&hub, "R-D2-2").await["status"], "delivered");
    let (_, l) = hub.get(&format!("/api/v1/leads/{id}"), ADMIN).await;
    assert_eq!(l["status"], "test_drive", "{l}");
    let statuses: Vec<&str> = l["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["field"] == "status")
        .map(|h| h["new"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["assigned", "contacted", "test_drive"], "{l}");
    assert_eq!(
        count(
            &hub,
            "SELECT COUNT(*) FROM crm_records WHERE entity = 'lead_result'"
        )
        .await,
        2,
        "refused results are not stored"
    );
    hub.stop().await;
}

/// Waits for the escalation of `lead` at `dealer` with `status`, as the ops API shows it.
async fn escalation(hub: &TestHub, lead: &str, dealer: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, list) = hub
            .get(&format!("/api/v1/escalations?status={status}"), ADMIN)
            .await;
        assert_eq!(s, 200, "{list}");
        if let Some(e) = list["escalations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["entity_id"] == lead && e["dealer_code"] == dealer)
        {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {status} escalation of {lead}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leads_unanswered_lead_escalates_and_a_late_result_resolves_it() {
    let hub = TestHub::spawn_with(
        Backend::Sqlite,
        with_distribution(&[
            ("respond_within = \"8h\"", "respond_within = \"2s\""),
            ("respond_within_by_level = { H = \"4h\" }", ""),
            ("interval = \"1m\"", "interval = \"1s\""),
        ]),
        &[],
    )
    .await;
    wait_amqp_up(&hub).await;
    let before = metric(&hub, "hub_escalations_total{kind=\"lead\"}").await;
    let id = post_lead(
        &hub,
        "demo-website",
        &lead("W-ESC-1", "13500000001", "深圳", "广东"),
    )
    .await;
    assert_eq!(decided(&hub, &id).await["dealer_code"], "D0002");
    let e = escalation(&hub, &id, "D0002", "open").await;
    assert_eq!(e["kind"], "lead");
    assert_eq!(e["dealer_code"], "D0002");
    assert!(
        e["action"]
            .as_str()
            .unwrap()
            .contains("left with D0002 (reassign_on_escalation = false)"),
        "{e}"
    );
    // It says how the lead.assigned delivery fared (delivered, or why not yet).
    assert!(e["action"].as_str().unwrap().contains("D0002's DMS"), "{e}");
    assert!(metric(&hub, "hub_escalations_total{kind=\"lead\"}").await >= before + 1.0);
    assert!(metric(&hub, "hub_escalations_open{kind=\"lead\"}").await >= 1.0);
    let (_, l) = hub.get(&format!("/api/v1/leads/{id}"), ADMIN).await;
    assert!(
        l["escalation"]
            .as_str()
            .unwrap()
            .starts_with("no result from D0002 by"),
        "{l}"
    );
    // Dealer scoping: D0001's IT sees none of D0002's, and may not ask for them.
    let (s, mine) = hub.get("/api/v1/escalations", IT_D0001).await;
    assert_eq!(s, 200);
    assert_eq!(mine["count"], 0, "{mine}");
    let (s, _) = hub.get("/api/v1/escalations?dealer=D0002", IT_D0001).await;
    assert_eq!(s, 404);
    let (s, _) = hub.get("/api/v1/escalations?status=bogus", ADMIN).await;
    assert_eq!(s, 400);
    // Running again raises nothing new for the same (lead, dealer).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        count(&hub, "SELECT COUNT(*) FROM escalations").await,
        1,
        "one escalation per lead and dealer"
    );

    // The late result is still the assigned dealer's: accepted, and it resolves the escalation.
    let (s, _) = hub
        .post_records(
            "/api/v1/dms/lead-results",
            "demo-dms-D0002",
            &result(&id, "D0002", "R-ESC-1", "contacted"),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(
        result_delivery(&hub, "R-ESC-1").await["status"],
        "delivered"
    );
    let e = escalation(&hub, &id, "D0002", "resolved").await;
    assert_eq!(e["resolution"], "result contacted from D0002", "{e}");
    assert!(e["resolved_at"].is_string());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leads_escalation_reassigns_to_the_next_dealer_and_refuses_the_first_postgres() {
    let hub = TestHub::spawn_with(
        Backend::Postgres,
        with_distribution(&[
            ("respond_within = \"8h\"", "respond_within = \"2s\""),
            ("respond_within_by_level = { H = \"4h\" }", ""),
            ("interval = \"1m\"", "interval = \"1s\""),
            (
                "reassign_on_escalation = false",
                "reassign_on_escalation = true",
            ),
        ]),
        &[(NO_DMS_QUEUES, "1")],
    )
    .await;
    let dms = Dms::bind(&hub, &DEALERS).await;
    wait_amqp_up(&hub).await;
    let id = post_lead(
        &hub,
        "demo-website",
        &lead("W-RE-1", "13500000002", "深圳", "广东"),
    )
    .await;
    let first = dms.expect("D0002", 1, 20).await;
    assert_eq!(first[0].1["lead_id"], id.as_str());
    // D0002 stays silent: the lead goes to D0001 (the next dealer of the province).
    let second = dms.expect("D0001", 1, 30).await;
    let body = &second[0].1;
    assert_eq!(second[0].0, "dealer.D0001.lead");
    assert_eq!(body["event"], "lead.assigned");
    assert_eq!(body["lead_id"], id.as_str());
    assert_eq!(body["dealer_code"], "D0001");
    assert_eq!(body["level"], "A");
    assert_eq!(ms_between(&body["assigned_at"], &body["respond_by"]), 2000);
    let e = escalation(&hub, &id, "D0002", "all").await;
    assert_eq!(e["dealer_code"], "D0002");
    assert!(
        e["action"]
            .as_str()
            .unwrap()
            .starts_with("reassigned to D0001: province 广东 → D0001"),
        "{e}"
    );
    let (_, l) = hub.get(&format!("/api/v1/leads/{id}"), ADMIN).await;
    assert_eq!(l["dealer_code"], "D0001", "{l}");
    assert_eq!(l["reassigned_from"], json!(["D0002"]), "{l}");
    assert!(
        l["assignment_reason"]
            .as_str()
            .unwrap()
            .starts_with("escalated: no result from D0002"),
        "{l}"
    );
    // D0001's IT now sees the lead.
    assert_eq!(
        hub.get(&format!("/api/v1/leads/{id}"), IT_D0001).await.0,
        200
    );

    // The first dealer's result is refused now, naming the reassignment.
    let (s, _) = hub
        .post_records(
            "/api/v1/dms/lead-results",
            "demo-dms-D0002",
            &result(&id, "D0002", "R-RE-1", "contacted"),
        )
        .await;
    assert_eq!(s, 202);
    let d = result_delivery(&hub, "R-RE-1").await;
    assert_eq!(d["status"], "rejected", "{d}");
    assert!(
        d["last_reason"]
            .as_str()
            .unwrap()
            .contains("was reassigned from dealer D0002 to D0001"),
        "{d}"
    );
    // The new dealer's result is taken and resolves what is open on the lead.
    let (s, _) = hub
        .post_records(
            "/api/v1/dms/lead-results",
            "demo-dms-D0001",
            &result(&id, "D0001", "R-RE-2", "contacted"),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(result_delivery(&hub, "R-RE-2").await["status"], "delivered");
    let e = escalation(&hub, &id, "D0002", "resolved").await;
    assert_eq!(e["dealer_code"], "D0002");
    let (_, open) = hub.get("/api/v1/escalations?status=open", ADMIN).await;
    assert_eq!(open["count"], 0, "{open}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leads_two_instances_escalating_at_once_raise_each_escalation_once_postgres() {
    let config = with_distribution(&[
        ("respond_within = \"8h\"", "respond_within = \"1s\""),
        ("respond_within_by_level = { H = \"4h\" }", ""),
        // The served hub's own job stays out of the way: the two instances below do the work.
        ("interval = \"1m\"", "interval = \"1h\""),
        (
            "reassign_on_escalation = false",
            "reassign_on_escalation = true",
        ),
    ]);
    let hub = TestHub::spawn_with(Backend::Postgres, config, &[]).await;
    let mut ids = Vec::new();
    for (i, city) in ["深圳", "广州", "深圳"].iter().enumerate() {
        let id = post_lead(
            &hub,
            "demo-website",
            &lead(
                &format!("W-2I-{i}"),
                &format!("1350000010{i}"),
                city,
                "广东",
            ),
        )
        .await;
        decided(&hub, &id).await;
        ids.push(id);
    }
    crm_settled(&hub, 3).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Two more hub instances on the same database, each with its own escalation job.
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let vars: Vec<(String, String)> = vec![
            ("SYNCHUB__STORE__URL".into(), hub.store_url.clone()),
            ("SYNCHUB__HTTP__LISTEN".into(), "127.0.0.1:0".into()),
        ];
        let settings = Settings::load(&hub.config_dir(), Profile::Local, &vars).expect("settings");
        let rules = Arc::new(settings.lead_rules.clone().expect("lead rules"));
        let a = synchub::app::Application::assemble(settings)
            .await
            .expect("second instance");
        jobs.push(EscalationJob::new(
            a.store.clone(),
            a.pipeline.clone(),
            rules,
        ));
    }
    let (r1, r2) = tokio::join!(jobs[0].run_once(), jobs[1].run_once());
    let (r1, r2) = (r1.expect("run 1"), r2.expect("run 2"));
    assert_eq!(r1.raised + r2.raised, 3, "{r1:?} {r2:?}");
    assert_eq!(r1.reassigned + r2.reassigned, 3, "{r1:?} {r2:?}");
    for id in &ids {
        let n = count(
            &hub,
            &format!("SELECT COUNT(*) FROM escalations WHERE entity_id = '{id}'"),
        )
        .await;
        assert_eq!(n, 1, "lead {id}");
        let active = count(
            &hub,
            &format!(
                "SELECT COUNT(*) FROM lead_assignments WHERE lead_id = '{id}' AND state = 'active'"
            ),
        )
        .await;
        assert_eq!(active, 1, "lead {id} has exactly one current dealer");
    }
    // Each reassignment was published once: one lead_event per assignment.
    assert_eq!(
        count(
            &hub,
            "SELECT COUNT(*) FROM messages WHERE record_type = 'lead_event'"
        )
        .await,
        6
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leads_an_undeliverable_dealer_is_visible_per_dealer() {
    let hub = TestHub::spawn_with(
        Backend::Sqlite,
        TestConfig::shipped(),
        &[(NO_DMS_QUEUES, "1")],
    )
    .await;
    // Only D0001 and D0002 are online; D0003's DMS has no queue.
    let _dms = Dms::bind(&hub, &["D0001", "D0002"]).await;
    wait_amqp_up(&hub).await;
    let id = post_lead(
        &hub,
        "demo-callcenter",
        &lead("CC-UND-1", "13400000001", "北京", "北京"),
    )
    .await;
    assert_eq!(decided(&hub, &id).await["dealer_code"], "D0003");
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let (s, v) = hub.get("/api/v1/dealers/D0003/deliveries", ADMIN).await;
        assert_eq!(s, 200, "{v}");
        if !v["undeliverable"].as_array().unwrap().is_empty() {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "D0003 never shown undeliverable: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let u = &view["undeliverable"][0];
    assert_eq!(u["target"], "dms_amqp_out", "{view}");
    assert_eq!(u["status"], "retrying", "{view}");
    assert!(
        u["last_reason"].as_str().unwrap().contains("unroutable"),
        "{view}"
    );
    let (_, ok) = hub.get("/api/v1/dealers/D0002/deliveries", ADMIN).await;
    assert!(ok["undeliverable"].as_array().unwrap().is_empty(), "{ok}");
    assert_eq!(
        hub.get("/api/v1/dealers/D0003/deliveries", IT_D0001)
            .await
            .0,
        404
    );
    assert_eq!(
        hub.get("/api/v1/dealers/D0001/deliveries", IT_D0001)
            .await
            .0,
        200
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leads_capacity_holds_under_concurrent_batches_postgres() {
    let hub = TestHub::spawn_with(
        Backend::Postgres,
        with_distribution(&[("daily_capacity = 50", "daily_capacity = 3")]),
        &[],
    )
    .await;
    // Five partners post four leads each at the same moment: the sink applies them in batches
    // on several connections, and every decision must see the others' counts.
    let posts = (0..5).map(|p| {
        let batch: Vec<Value> = (0..4)
            .map(|i| {
                lead(
                    &format!("W-CC-{p}-{i}"),
                    &format!("133000{p}{i:04}"),
                    "深圳",
                    "广东",
                )
            })
            .collect();
        let hub = &hub;
        async move {
            let (s, r) = hub
                .post_records("/api/v1/leads", "demo-website", &json!(batch))
                .await;
            assert_eq!(s, 202, "{r}");
        }
    });
    futures_util::future::join_all(posts).await;
    crm_settled(&hub, 20).await;
    let per_dealer = |code: &str| {
        format!("SELECT COUNT(*) FROM crm_records WHERE entity = 'lead' AND dealer_code = '{code}'")
    };
    assert_eq!(
        count(&hub, &per_dealer("D0002")).await,
        3,
        "D0002 is full, not over"
    );
    assert_eq!(
        count(&hub, &per_dealer("D0001")).await,
        3,
        "D0001 takes the spill"
    );
    assert_eq!(
        count(&hub, "SELECT COUNT(*) FROM lead_assignments").await,
        6,
        "capacity of both Guangdong dealers, no more"
    );
    let fallback: i64 = count(
        &hub,
        "SELECT COUNT(*) FROM crm_records WHERE entity = 'lead' AND dealer_code IS NULL",
    )
    .await;
    assert_eq!(fallback, 14, "the rest went to the call centre");
    hub.stop().await;
}
