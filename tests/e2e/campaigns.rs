//! Campaigns end to end: headquarters posts a campaign, each assigned dealer's DMS receives
//! exactly its `campaign.assigned` on the real broker and DCS (a wiremock fake) one
//! PublishCampaignTask per dealer; DCS faults reject, 503s retry; results come back over REST,
//! AMQP and an SFTP file and are counted per dealer, each customer once per result kind; and
//! vehicles whose dealer is not known yet are held until the dealer file brings it, or parked.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use serde_json::{Value, json};
use synchub_adapter_sftp::testkit::SshdFixture;
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

const DCS_OK: &str = "<r:PublishCampaignTaskResponse xmlns:r=\"urn:synchub:dcs:task:v1\"><r:taskId>T-77</r:taskId></r:PublishCampaignTaskResponse>";

fn dcs_answer(status: u16, inner: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(
        format!(
            "<?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>{inner}</soap:Body></soap:Envelope>"
        ),
        "text/xml; charset=utf-8",
    )
}

/// The shipped route file with a tiny retry policy, so retries and parking happen in seconds.
fn fast_retry(config: &TestConfig, route: &str, max_attempts: u32) {
    let file = format!("routes/{route}.toml");
    let shipped =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&file))
            .expect("shipped route");
    let head = &shipped[..shipped.find("[retry]").expect("route has a retry policy")];
    config.write(
        &file,
        &format!(
            "{head}[retry]\nmax_attempts = {max_attempts}\nbackoff_ms = 100\nmax_backoff_ms = 200\n"
        ),
    );
}

/// Overrides that enable DCS at `uri` with the secret its password_env names.
fn dcs_env(uri: &str) -> Vec<(String, String)> {
    vec![
        (
            "SYNCHUB__ENDPOINTS__DCS_TASKS_SOAP_OUT__ENABLED".into(),
            "true".into(),
        ),
        (
            "SYNCHUB__ENDPOINTS__DCS_TASKS_SOAP_OUT__URL".into(),
            format!("{uri}/dcs/TaskService"),
        ),
        (
            "SYNCHUB__ENDPOINTS__DCS_TASKS_SOAP_OUT__TIMEOUT_MS".into(),
            "2000".into(),
        ),
        ("SYNCHUB_DCS_PASSWORD".into(), "dcs-secret".into()),
    ]
}

fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

async fn drain(ch: &lapin::Channel, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(m);
    }
    out
}

async fn wait_amqp_up(hub: &TestHub) {
    // Generous: the broker is shared, and a slow first connect is retried by the hub.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
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
            std::time::Instant::now() < deadline,
            "AMQP endpoints never came up: {eps}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A customer created by a dealer's DMS; returns its hub id.
async fn dms_customer(hub: &TestHub, dealer: &str, name: &str, mobile: &str) -> String {
    let (s, r) = hub
        .post_records(
            "/api/v1/dms/customers",
            &format!("demo-dms-{dealer}"),
            &json!({"source_ref": format!("CUST-{mobile}"), "dealer_code": dealer, "name": name, "mobile": mobile}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    r["accepted"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("customer accepted: {r}"))
        .to_string()
}

fn campaign(code: &str, dealers: &[&str], targets: &[&str]) -> Value {
    let mut c = sample("rest/campaign.request.json");
    c["campaign_code"] = json!(code);
    c["dealer_codes"] = json!(dealers);
    c["target_customers"] = json!(targets);
    c
}

/// The deliveries of the campaign's assignments, by dealer then target endpoint.
fn delivery<'a>(view: &'a Value, dealer: &str, target: &str) -> &'a Value {
    let row = view["dealers"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["dealer_code"] == dealer))
        .unwrap_or_else(|| panic!("no row for {dealer}: {view}"));
    &row["deliveries"][target]
}

fn row<'a>(view: &'a Value, dealer: &str) -> &'a Value {
    view["dealers"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["dealer_code"] == dealer))
        .unwrap_or_else(|| panic!("no row for {dealer}: {view}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_reaches_each_dealers_dms_and_dcs_once() {
    let dcs = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains(
            "<t:campaignCode>C-OK</t:campaignCode>",
        ))
        .respond_with(dcs_answer(200, DCS_OK))
        .mount(&dcs)
        .await;
    Mock::given(method("POST"))
        .and(body_string_contains("<t:campaignCode>C-BAD</t:campaignCode>"))
        .respond_with(dcs_answer(
            500,
            "<soap:Fault><faultcode>soap:Client</faultcode><faultstring>campaign C-BAD overlaps a running campaign</faultstring></soap:Fault>",
        ))
        .mount(&dcs)
        .await;
    Mock::given(method("POST"))
        .and(body_string_contains(
            "<t:campaignCode>C-BUSY</t:campaignCode>",
        ))
        .respond_with(ResponseTemplate::new(503).set_body_string("maintenance"))
        .mount(&dcs)
        .await;
    let config = TestConfig::shipped();
    fast_retry(&config, "crm_campaigns_to_dcs", 3);
    let mut env = dcs_env(&dcs.uri());
    env.push((NO_DMS_QUEUES.into(), "1".into()));
    let hub = TestHub::spawn_with(Backend::Sqlite, config, &refs(&env)).await;
    let (_conn, ch) = amqp_client().await;
    let q1 = dms_queue(&ch, &hub.amqp_prefix, "dms.D0001", "dealer.D0001.campaign").await;
    let q2 = dms_queue(&ch, &hub.amqp_prefix, "dms.D0002", "dealer.D0002.campaign").await;
    let q3 = dms_queue(&ch, &hub.amqp_prefix, "dms.D0003", "dealer.D0003.campaign").await;
    // Customer change events have no DMS queue here; only campaigns are bound.
    let _all = dms_queue(&ch, &hub.amqp_prefix, "dms.rest", "dealer.*.customer").await;
    wait_amqp_up(&hub).await;

    let wang = dms_customer(&hub, "D0001", "王小明", "13911110001").await;
    let _lin = dms_customer(&hub, "D0002", "林小红", "13912345678").await;
    let zhao = dms_customer(&hub, "D0003", "赵六", "13933330003").await;
    hub.settle(20).await;

    // Targets: a D0001 customer by id, a D0002 customer by (unnormalised) mobile, a mobile the
    // CRM does not know, and a D0003 customer (D0003 is not in the campaign).
    let body = campaign(
        "C-OK",
        &["D0001", "d0002"],
        &[&wang, "+86 139-1234-5678", "13700000009", &zhao],
    );
    let (s, r) = hub
        .post("/api/v1/campaigns", ADMIN, Some(body.clone()))
        .await;
    assert_eq!(s, 202, "{r}");
    assert_eq!(r["status"], "accepted", "{r}");
    let message_id = r["message_id"].as_str().unwrap().to_string();
    hub.settle(30).await;

    let expected = |dealer: &str, targets: Value| {
        json!({
            "event": "campaign.assigned",
            "campaign_code": "C-OK",
            "name": "冬季关怀免费检测",
            "start_date": "2026-12-01",
            "end_date": "2026-12-31",
            "dealer_code": dealer,
            "target_customers": targets,
        })
    };
    let unknown = json!({"customer_id": null, "name": null, "mobile": "13700000009"});
    let zhao_view = json!({"customer_id": zhao, "name": "赵六", "mobile": "13933330003"});
    let got1 = drain(&ch, &q1).await;
    assert_eq!(got1.len(), 1, "D0001 gets exactly its assignment");
    assert_eq!(
        got1[0].delivery.routing_key.as_str(),
        "dealer.D0001.campaign"
    );
    let b1: Value = serde_json::from_slice(&got1[0].delivery.data).unwrap();
    assert_eq!(
        b1,
        expected(
            "D0001",
            json!([{"customer_id": wang, "name": "王小明", "mobile": "13911110001"}, unknown, zhao_view])
        )
    );
    let got2 = drain(&ch, &q2).await;
    assert_eq!(got2.len(), 1, "D0002 gets exactly its assignment");
    let b2: Value = serde_json::from_slice(&got2[0].delivery.data).unwrap();
    assert_eq!(b2["dealer_code"], "D0002", "{b2}");
    let t2 = b2["target_customers"].as_array().unwrap();
    assert_eq!(t2.len(), 3, "{b2}");
    assert_eq!(t2[0]["mobile"], "13912345678", "{b2}");
    assert_eq!(t2[0]["name"], "林小红", "{b2}");
    assert!(t2[0]["customer_id"].is_string(), "{b2}");
    assert!(
        drain(&ch, &q3).await.is_empty(),
        "D0003 is not in the campaign"
    );

    // DCS: one PublishCampaignTask per dealer, with the dealer's target count.
    let tasks: Vec<String> = dcs
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(tasks.len(), 2, "{tasks:#?}");
    for dealer in ["D0001", "D0002"] {
        let xml = tasks
            .iter()
            .find(|x| x.contains(&format!("<t:dealerCode>{dealer}</t:dealerCode>")))
            .unwrap_or_else(|| panic!("no task for {dealer}: {tasks:#?}"));
        for part in [
            "<t:campaignCode>C-OK</t:campaignCode>",
            "<t:name>冬季关怀免费检测</t:name>",
            "<t:startDate>2026-12-01</t:startDate>",
            "<t:endDate>2026-12-31</t:endDate>",
            "<t:targetCount>3</t:targetCount>",
            "<wsse:Username>synchub</wsse:Username>",
        ] {
            assert!(xml.contains(part), "{part} missing in {xml}");
        }
    }

    // The campaign view shows both assignments delivered to DMS and DCS.
    let (s, v) = hub.get("/api/v1/campaigns/C-OK", ADMIN).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["dealers"].as_array().unwrap().len(), 2, "{v}");
    for dealer in ["D0001", "D0002"] {
        assert_eq!(row(&v, dealer)["target_count"], 3, "{v}");
        assert_eq!(
            delivery(&v, dealer, "dms_amqp_out")["status"],
            "delivered",
            "{v}"
        );
        let d = delivery(&v, dealer, "dcs_tasks_soap_out");
        assert_eq!(d["status"], "delivered", "{v}");
        assert_eq!(d["remote_ref"], "T-77", "{v}");
    }
    // The campaign is findable in the journal by its code.
    let (_, found) = hub.get("/api/v1/messages?key=C-OK", ADMIN).await;
    assert!(
        found["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == message_id.as_str() && m["status"] == "accepted"),
        "{found}"
    );

    // The same campaign again: the same message, nothing assigned or sent twice.
    let (s, again) = hub
        .post("/api/v1/campaigns", ADMIN, Some(body.clone()))
        .await;
    assert_eq!(s, 202, "{again}");
    assert_eq!(again["status"], "duplicate", "{again}");
    assert_eq!(again["duplicate_of"], message_id.as_str(), "{again}");
    // Other content under the same code is a conflict, journaled as rejected.
    let (s, conflict) = hub
        .post(
            "/api/v1/campaigns",
            ADMIN,
            Some(campaign("C-OK", &["D0001", "D0003"], &[&wang])),
        )
        .await;
    assert_eq!(s, 409, "{conflict}");
    assert_eq!(conflict["error"]["details"][0]["field"], "campaign_code");
    hub.settle(30).await;
    assert!(drain(&ch, &q1).await.is_empty(), "no second assignment");
    assert!(drain(&ch, &q2).await.is_empty(), "no second assignment");
    assert!(
        drain(&ch, &q3).await.is_empty(),
        "a conflict assigns nothing"
    );
    let posts = dcs
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count();
    assert_eq!(posts, 2, "no second DCS task");
    let (_, rejected) = hub
        .get("/api/v1/messages?key=C-OK&status=rejected", ADMIN)
        .await;
    assert_eq!(
        rejected["messages"].as_array().unwrap().len(),
        1,
        "{rejected}"
    );

    // DCS faults: a client fault rejects the task with the faultstring; a 503 is retried, then
    // parked by the route's policy. The DMS side is unaffected.
    for code in ["C-BAD", "C-BUSY"] {
        let (s, r) = hub
            .post(
                "/api/v1/campaigns",
                ADMIN,
                Some(campaign(code, &["D0001"], &["13700000009"])),
            )
            .await;
        assert_eq!(s, 202, "{r}");
    }
    hub.settle(30).await;
    let (_, bad) = hub.get("/api/v1/campaigns/C-BAD", ADMIN).await;
    let d = delivery(&bad, "D0001", "dcs_tasks_soap_out");
    assert_eq!(d["status"], "rejected", "{bad}");
    assert_eq!(d["attempts"], 1, "a client fault is not retried: {bad}");
    assert!(
        d["last_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("campaign C-BAD overlaps a running campaign"),
        "{bad}"
    );
    assert_eq!(
        delivery(&bad, "D0001", "dms_amqp_out")["status"],
        "delivered"
    );
    let (_, busy) = hub.get("/api/v1/campaigns/C-BUSY", ADMIN).await;
    let d = delivery(&busy, "D0001", "dcs_tasks_soap_out");
    assert_eq!(d["status"], "parked", "{busy}");
    assert_eq!(d["attempts"], 3, "retried, then parked: {busy}");
    assert!(
        d["last_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("503"),
        "{busy}"
    );
    assert_eq!(
        drain(&ch, &q1).await.len(),
        2,
        "C-BAD and C-BUSY reached D0001's DMS"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn campaigns_are_validated_field_by_field_and_only_headquarters_creates_them() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    let (s, r) = hub
        .post(
            "/api/v1/campaigns",
            IT_D0001,
            Some(campaign("C-IT", &["D0001"], &["13700000009"])),
        )
        .await;
    assert_eq!(s, 403, "{r}");

    let fields = |r: &Value| -> Vec<(String, String)> {
        r["error"]["details"]
            .as_array()
            .unwrap_or_else(|| panic!("details: {r}"))
            .iter()
            .map(|d| {
                (
                    d["field"].as_str().unwrap().to_string(),
                    d["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let mut bad = campaign(
        "C-V1",
        &["D0001", "D9999"],
        &["C000009999", "hello", "13700000009"],
    );
    bad["end_date"] = json!("2026-11-01");
    let (s, r) = hub.post("/api/v1/campaigns", ADMIN, Some(bad)).await;
    assert_eq!(s, 400, "{r}");
    assert_eq!(r["error"]["code"], "invalid_campaign", "{r}");
    let f = fields(&r);
    let has = |field: &str, text: &str| {
        assert!(
            f.iter().any(|(k, v)| k == field && v.contains(text)),
            "no {field} ~ {text}: {f:?}"
        )
    };
    has("end_date", "must not be before start_date");
    has("dealer_codes[1]", "unknown dealer D9999");
    has("target_customers[0]", "unknown customer C000009999");
    has(
        "target_customers[1]",
        "neither a mobile number nor a customer id",
    );
    assert_eq!(f.len(), 4, "{f:?}");

    let mut empty = campaign("C-V2", &[], &[]);
    empty["start_date"] = json!("2026-13-01");
    empty["dealer_code"] = json!("D0001");
    empty.as_object_mut().unwrap().remove("name");
    let (s, r) = hub.post("/api/v1/campaigns", ADMIN, Some(empty)).await;
    assert_eq!(s, 400, "{r}");
    let f = fields(&r);
    let has = |field: &str, text: &str| {
        assert!(
            f.iter().any(|(k, v)| k == field && v.contains(text)),
            "no {field} ~ {text}: {f:?}"
        )
    };
    has("name", "required");
    has("start_date", "");
    has("dealer_codes", "at least one");
    has("target_customers", "at least one");
    has("dealer_code", "unknown field");

    let resp = hub
        .client
        .post(format!("{}/api/v1/campaigns", hub.base))
        .bearer_auth(ADMIN)
        .header("Content-Type", "application/json")
        .body("{\"campaign_code\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["error"]["code"], "invalid_json", "{r}");

    // Every refusal is journaled, the bad campaigns findable by their codes.
    for key in ["C-V1", "C-V2"] {
        let (_, found) = hub.get(&format!("/api/v1/messages?key={key}"), ADMIN).await;
        let m = &found["messages"][0];
        assert_eq!(m["status"], "rejected", "{found}");
    }
    let (_, found) = hub
        .get(
            "/api/v1/messages?status=rejected&endpoint=partners_rest_in",
            ADMIN,
        )
        .await;
    assert!(
        found["messages"].as_array().unwrap().len() >= 3,
        "two bad campaigns and the unparseable body: {found}"
    );
    assert_eq!(hub.get("/api/v1/campaigns/C-V1", ADMIN).await.0, 404);
    hub.stop().await;
}

/// Overrides that enable SFTP endpoint `ep` against the fixture's `dir_rel`, polled only on
/// request.
fn sftp_env(fx: &SshdFixture, ep: &str, dir_rel: &str) -> Vec<(String, String)> {
    sftp_endpoint_env(fx, ep, dir_rel, &POLLED_ON_REQUEST)
}

async fn poll(hub: &TestHub, ep: &str) -> Value {
    let (s, r) = hub
        .post(&format!("/api/v1/endpoints/{ep}/poll"), ADMIN, None)
        .await;
    assert_eq!(s, 200, "poll {ep}: {r}");
    r
}

/// The CRM delivery of the record found by `key`.
async fn crm_delivery(hub: &TestHub, key: &str) -> Value {
    let (_, found) = hub.get(&format!("/api/v1/messages?key={key}"), ADMIN).await;
    let m = found["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["kind"] == "record"))
        .cloned()
        .unwrap_or_else(|| panic!("no record for {key}: {found}"));
    let id = m["id"].as_str().unwrap();
    let (_, detail) = hub.get(&format!("/api/v1/messages/{id}"), ADMIN).await;
    detail["deliveries"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["target"] == "crm_store"))
        .cloned()
        .unwrap_or_else(|| panic!("no CRM delivery for {key}: {detail}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn results_over_rest_amqp_and_sftp_are_counted_per_dealer_once_per_customer() {
    let fx = SshdFixture::start();
    let dir = "inbound/campaign-results";
    let env = sftp_env(&fx, "dms_campaign_results_sftp_in", dir);
    // DCS stays disabled as shipped: its tasks wait, here parked after the first attempt.
    let config = TestConfig::shipped();
    fast_retry(&config, "crm_campaigns_to_dcs", 1);
    let hub = TestHub::spawn_with(Backend::Postgres, config, &refs(&env)).await;
    wait_amqp_up(&hub).await;
    let code = "C2026-12-WINTERCARE";
    let (s, r) = hub
        .post(
            "/api/v1/campaigns",
            ADMIN,
            Some(sample("rest/campaign.request.json")),
        )
        .await;
    // The sample targets C000000042, which this fresh store does not hold.
    assert_eq!(s, 400, "{r}");
    let (s, r) = hub
        .post(
            "/api/v1/campaigns",
            ADMIN,
            Some(campaign(
                code,
                &["D0001", "D0002"],
                &["13912345678", "13700000001", "13800000003"],
            )),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    hub.settle(30).await;

    // REST: D0002 reports an attendance, then the same customer again under another reference
    // (counted once), and the first report resent (idempotent).
    let mut result = sample("rest/campaign-result.request.json");
    for sref in ["R-1", "R-2", "R-1"] {
        result["source_ref"] = json!(sref);
        let (s, r) = hub
            .post_records("/api/v1/dms/campaign-results", "demo-dms-D0002", &result)
            .await;
        assert_eq!(s, 202, "{r}");
    }
    // D0002 also reports a purchase by a customer counted as attended: one per kind.
    result["source_ref"] = json!("R-3");
    result["result"] = json!("purchased");
    hub.post_records("/api/v1/dms/campaign-results", "demo-dms-D0002", &result)
        .await;
    // D0003 was not assigned the campaign; nobody was assigned C-NOPE.
    let mut foreign = sample("rest/campaign-result.request.json");
    foreign["source_ref"] = json!("R-FOREIGN");
    foreign["dealer_code"] = json!("D0003");
    hub.post_records("/api/v1/dms/campaign-results", "demo-dms-D0003", &foreign)
        .await;
    let mut unknown = sample("rest/campaign-result.request.json");
    unknown["source_ref"] = json!("R-UNKNOWN");
    unknown["campaign_code"] = json!("C-NOPE");
    hub.post_records("/api/v1/dms/campaign-results", "demo-dms-D0002", &unknown)
        .await;

    // AMQP: D0001's DMS reports two contacts, one of them twice.
    let (_conn, ch) = amqp_client().await;
    for (sref, mobile) in [
        ("A-1", "13700000001"),
        ("A-2", "13800000003"),
        ("A-3", "13800000003"),
    ] {
        let body = json!({"source_ref": sref, "campaign_code": code, "dealer_code": "D0001",
                          "customer_mobile": mobile, "result": "contacted"});
        ch.basic_publish(
            format!("{}synchub.inbound", hub.amqp_prefix)
                .as_str()
                .into(),
            "dms.campaign-result".into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&body).unwrap(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
    }

    // SFTP (IF-08): the sample file from D0002: 13912345678 attended (already counted) and
    // 13700000001 declined.
    let name = "CAMPRES_D0002_20261206.csv";
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/samples/sftp")
            .join(name),
        fx.path(&format!("{dir}/{name}")),
    )
    .unwrap();
    let report = poll(&hub, "dms_campaign_results_sftp_in").await;
    assert_eq!(report["files"][0]["accepted"], 2, "{report}");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let view = loop {
        hub.settle(30).await;
        let (s, v) = hub.get(&format!("/api/v1/campaigns/{code}"), ADMIN).await;
        assert_eq!(s, 200, "{v}");
        if row(&v, "D0001")["contacted"] == 2 {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "AMQP results never counted: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let d1 = row(&view, "D0001");
    let d2 = row(&view, "D0002");
    assert_eq!(
        (
            &d1["contacted"],
            &d1["attended"],
            &d1["purchased"],
            &d1["declined"]
        ),
        (&json!(2), &json!(0), &json!(0), &json!(0)),
        "{view}"
    );
    assert_eq!(
        (
            &d2["contacted"],
            &d2["attended"],
            &d2["purchased"],
            &d2["declined"]
        ),
        (&json!(0), &json!(1), &json!(1), &json!(1)),
        "{view}"
    );
    assert_eq!(d1["target_count"], 3, "{view}");
    let (_, eps) = hub.get("/api/v1/endpoints", ADMIN).await;
    let dcs_ep = eps["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "dcs_tasks_soap_out")
        .cloned()
        .unwrap_or_else(|| panic!("{eps}"));
    assert_eq!(dcs_ep["state"], "disabled", "{dcs_ep}");
    assert_eq!(
        delivery(&view, "D0001", "dms_amqp_out")["status"],
        "delivered",
        "{view}"
    );
    let dcs = delivery(&view, "D0001", "dcs_tasks_soap_out");
    assert_eq!(dcs["status"], "parked", "{view}");
    assert!(
        dcs["last_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("is disabled"),
        "{view}"
    );
    assert_eq!(view["results_by_dealer"]["D0002"]["attended"], 1, "{view}");
    assert!(
        view["dealers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["dealer_code"] != "D0003")
    );

    // The results that do not belong are rejected with their reasons.
    let foreign = crm_delivery(&hub, "R-FOREIGN").await;
    assert_eq!(foreign["status"], "rejected", "{foreign}");
    assert!(
        foreign["last_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("is not assigned to dealer D0003"),
        "{foreign}"
    );
    let unknown = crm_delivery(&hub, "R-UNKNOWN").await;
    assert_eq!(unknown["status"], "rejected", "{unknown}");
    assert!(
        unknown["last_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown campaign C-NOPE"),
        "{unknown}"
    );

    // Dealer IT of D0001 sees its own row only, and not the other dealers' targets.
    let (s, mine) = hub
        .get(&format!("/api/v1/campaigns/{code}"), IT_D0001)
        .await;
    assert_eq!(s, 200, "{mine}");
    let rows = mine["dealers"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{mine}");
    assert_eq!(rows[0]["dealer_code"], "D0001");
    assert_eq!(rows[0]["contacted"], 2);
    assert!(mine["results_by_dealer"].get("D0002").is_none(), "{mine}");
    assert!(mine["campaign"].get("target_customers").is_none(), "{mine}");
    // A campaign not assigned to D0001 does not exist for its IT.
    let (s, r) = hub
        .post(
            "/api/v1/campaigns",
            ADMIN,
            Some(campaign("C-D2-ONLY", &["D0002"], &["13912345678"])),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    hub.settle(30).await;
    assert_eq!(hub.get("/api/v1/campaigns/C-D2-ONLY", ADMIN).await.0, 200);
    assert_eq!(
        hub.get("/api/v1/campaigns/C-D2-ONLY", IT_D0001).await.0,
        404
    );
    hub.stop().await;
}

fn vehicle_request(dealer: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/samples/soap/SyncVehicles.request.xml");
    std::fs::read_to_string(p)
        .expect("sample SOAP request")
        .replace(
            "<v:dealerCode>D0001</v:dealerCode>",
            &format!("<v:dealerCode>{dealer}</v:dealerCode>"),
        )
}

async fn send_vehicles(hub: &TestHub, body: String) {
    let r = hub
        .client
        .post(format!("{}/soap/osm/VehicleService", hub.base))
        .header("Content-Type", "text/xml; charset=utf-8")
        .header("SOAPAction", "\"urn:synchub:osm:vehicle:v1#SyncVehicles\"")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let xml = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{xml}");
    assert!(xml.contains("<accepted>1</accepted>"), "{xml}");
}

const VIN: &str = "LHG0LVF20VB714970";

#[tokio::test(flavor = "multi_thread")]
async fn a_vehicle_of_an_unknown_dealer_is_held_until_the_dealer_file_brings_it() {
    let fx = SshdFixture::start();
    let dir = "outbound/dealers";
    let env = sftp_env(&fx, "osm_dealers_sftp_in", dir);
    let config = TestConfig::shipped();
    fast_retry(&config, "osm_vehicles_soap_to_crm", 200);
    let hub = TestHub::spawn_with(Backend::Sqlite, config, &refs(&env)).await;
    send_vehicles(&hub, vehicle_request("D0009")).await;
    // Held: retried, not applied, not rejected.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = crm_delivery(&hub, VIN).await;
        if d["attempts"].as_i64().unwrap_or(0) >= 2 {
            // Pending between attempts, in flight during one: held either way, never applied,
            // rejected or parked.
            assert!(
                d["status"] == "pending" || d["status"] == "in_flight",
                "{d}"
            );
            assert!(
                d["last_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("dealer D0009 unknown"),
                "{d}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never retried: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        hub.get(&format!("/api/v1/vehicles/{VIN}"), ADMIN).await.0,
        404
    );
    let (_, owners) = hub.get("/api/v1/customers?mobile=13800138000", ADMIN).await;
    assert_eq!(
        owners["customers"],
        json!([]),
        "nothing applied without its dealer"
    );

    // Its next attempt pushed an hour out: only the dealer's arrival can make it due now.
    let held = crm_delivery(&hub, VIN).await["id"].as_i64().unwrap();
    loop {
        let moved = hub
            .store
            .write(move |c| {
                Box::pin(async move {
                    Ok(sqlx::query(
                        "UPDATE deliveries SET next_attempt_at = $1 WHERE id = $2 AND status = 'pending'",
                    )
                    .bind(synchub::store::now_ms() + 3_600_000)
                    .bind(held)
                    .execute(&mut *c)
                    .await?
                    .rows_affected())
                })
            })
            .await
            .unwrap();
        if moved == 1 {
            break;
        }
        // In flight right now: try again once the attempt is recorded.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // OSM's dealer file brings D0009 (ASCII is valid GB18030).
    std::fs::write(
        fx.path(&format!("{dir}/DEALER_20261201.csv")),
        "dealer_code,dealer_name,region,province,city,address,phone,status\n\
         D0009,Foshan Demo Dealer,South,Guangdong,Foshan,Road 9,0757-9,active\n",
    )
    .unwrap();
    let report = poll(&hub, "osm_dealers_sftp_in").await;
    assert_eq!(report["files"][0]["accepted"], 1, "{report}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let vehicle = loop {
        let (s, v) = hub.get(&format!("/api/v1/vehicles/{VIN}"), ADMIN).await;
        if s == 200 {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "vehicle never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(vehicle["dealer_code"], "D0009", "{vehicle}");
    assert!(vehicle["owner_customer_id"].is_string(), "{vehicle}");
    assert_eq!(crm_delivery(&hub, VIN).await["status"], "delivered");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vehicle_whose_dealer_never_arrives_is_parked_with_the_reason() {
    let config = TestConfig::shipped();
    fast_retry(&config, "osm_vehicles_soap_to_crm", 3);
    let hub = TestHub::spawn_with(Backend::Sqlite, config, &[]).await;
    send_vehicles(&hub, vehicle_request("D0404")).await;
    hub.settle(20).await;
    let d = crm_delivery(&hub, VIN).await;
    assert_eq!(d["status"], "parked", "{d}");
    assert_eq!(d["attempts"], 3, "{d}");
    let reason = d["last_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    assert!(reason.contains("dealer D0404 unknown"), "{reason}");
    assert_eq!(
        hub.get(&format!("/api/v1/vehicles/{VIN}"), ADMIN).await.0,
        404
    );
    hub.stop().await;
}

/// Creates campaign `code` for `dealers` (for tests of other flows that report results on it)
/// and waits until it is assigned. DCS is disabled in the shipped configuration: the waiting
/// DCS tasks are parked through the ops API, so `settle` does not wait for them.
pub async fn create_campaign(hub: &TestHub, code: &str, dealers: &[&str]) {
    let (s, r) = hub
        .post(
            "/api/v1/campaigns",
            ADMIN,
            Some(campaign(code, dealers, &["13700000001"])),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = hub.get(&format!("/api/v1/campaigns/{code}"), ADMIN).await;
        let ids: Vec<i64> = v["dealers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["deliveries"]["dcs_tasks_soap_out"]["delivery_id"].as_i64())
            .collect();
        if ids.len() == dealers.len() {
            for id in ids {
                let (s, r) = hub
                    .post(&format!("/api/v1/deliveries/{id}/park"), ADMIN, None)
                    .await;
                assert_eq!(s, 200, "{r}");
            }
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "campaign {code} never assigned: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The campaign-task escalations of `code`, as the ops API shows them: dealer → escalation.
async fn campaign_escalations(hub: &TestHub, code: &str) -> Vec<Value> {
    let (s, list) = hub.get("/api/v1/escalations?kind=campaign", ADMIN).await;
    assert_eq!(s, 200, "{list}");
    list["escalations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["entity_id"] == code)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_campaign_task_escalates_and_the_dealers_first_result_resolves_it() {
    let config = TestConfig::shipped();
    let rules = config.config_dir().join("rules/lead_distribution.toml");
    let text = std::fs::read_to_string(&rules).expect("shipped distribution rules");
    for from in ["campaign_respond_within = \"3d\"", "interval = \"1m\""] {
        assert!(text.contains(from), "`{from}` not in the shipped rules");
    }
    let text = text
        .replace(
            "campaign_respond_within = \"3d\"",
            "campaign_respond_within = \"2s\"",
        )
        .replace("interval = \"1m\"", "interval = \"1s\"");
    std::fs::write(&rules, text).expect("write rules");
    let hub = TestHub::spawn_with(Backend::Sqlite, config, &[]).await;
    let code = "C2026-12-ESCALATE";
    create_campaign(&hub, code, &["D0001", "D0002"]).await;

    // Neither dealer reports within 2 s: one escalation each, saying how the task was delivered.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let open = loop {
        let open = campaign_escalations(&hub, code).await;
        if open.len() == 2 {
            break open;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "campaign tasks never escalated: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for e in &open {
        assert_eq!(e["status"], "open", "{e}");
        let action = e["action"].as_str().unwrap();
        assert!(
            action.contains(&format!(
                "no result from {}",
                e["dealer_code"].as_str().unwrap()
            )),
            "{e}"
        );
        assert!(action.contains("campaign.assigned"), "{e}");
        assert!(action.contains("dms_amqp_out: delivered"), "{e}");
        assert!(action.contains("dcs_tasks_soap_out: parked"), "{e}");
    }
    assert!(
        metric(&hub, "hub_escalations_total{kind=\"campaign\"}").await >= 2.0,
        "escalations are counted"
    );

    // D0001 reports a result: its escalation is resolved, D0002's stays open.
    let mut result = sample("rest/campaign-result.request.json");
    result["source_ref"] = json!("R-ESC-1");
    result["campaign_code"] = json!(code);
    result["dealer_code"] = json!("D0001");
    let (s, r) = hub
        .post_records("/api/v1/dms/campaign-results", "demo-dms-D0001", &result)
        .await;
    assert_eq!(s, 202, "{r}");
    hub.settle(30).await;
    let now = campaign_escalations(&hub, code).await;
    let of = |d: &str| {
        now.iter()
            .find(|e| e["dealer_code"] == d)
            .cloned()
            .unwrap_or_else(|| panic!("no escalation for {d}: {now:?}"))
    };
    let d1 = of("D0001");
    assert_eq!(d1["status"], "resolved", "{d1}");
    assert!(
        d1["resolution"].as_str().unwrap().ends_with("from D0001"),
        "{d1}"
    );
    assert_eq!(of("D0002")["status"], "open");
    // Running again raises nothing new for the same (campaign, dealer).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(campaign_escalations(&hub, code).await.len(), 2);
    hub.stop().await;
}
