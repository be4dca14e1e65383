//! The OSM vehicle SOAP service through the running hub: vehicles validated at accept (a bad
//! VIN check digit answered in the response), upserted by VIN and linked to their owner
//! customer (created once, then matched), the new customer sent on to the selling dealer's DMS,
//! refused requests journaled, the WSDL served with the hub's address.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use serde_json::Value;

use crate::helpers::*;

fn sample_request() -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/samples/soap/SyncVehicles.request.xml");
    std::fs::read_to_string(p).expect("sample SOAP request")
}

async fn call(hub: &TestHub, body: String) -> (u16, String) {
    let r = hub
        .client
        .post(format!("{}/soap/osm/VehicleService", hub.base))
        .header("Content-Type", "text/xml; charset=utf-8")
        .header("SOAPAction", "\"urn:synchub:osm:vehicle:v1#SyncVehicles\"")
        .body(body)
        .send()
        .await
        .expect("request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn osm_vehicles_land_in_the_crm_linked_to_their_owner_and_dealer() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    let (status, xml) = call(&hub, sample_request()).await;
    assert_eq!(status, 200, "{xml}");
    assert!(xml.contains("<accepted>1</accepted>"), "{xml}");
    assert!(xml.contains("<vin>LHGHL1LV0VD172367</vin>"), "{xml}");
    assert!(
        xml.contains("check digit"),
        "the reason names the problem: {xml}"
    );
    hub.settle(20).await;

    let (s, v) = hub.get("/api/v1/vehicles/LHG0LVF20VB714970", ADMIN).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["dealer_code"], "D0001", "{v}");
    assert_eq!(v["model"], "雅阁 Accord", "{v}");
    let owner = v["owner_customer_id"]
        .as_str()
        .expect("linked owner")
        .to_string();
    let (_, found) = hub.get("/api/v1/customers?mobile=13800138000", ADMIN).await;
    let customers = found["customers"].as_array().unwrap();
    assert_eq!(customers.len(), 1, "{found}");
    assert_eq!(customers[0]["customer_id"], owner.as_str(), "{found}");
    assert_eq!(customers[0]["name"], "陈大文");
    assert_eq!(customers[0]["dealer_code"], "D0001");

    // The rejected vehicle is journaled and findable by its VIN.
    let (_, msgs) = hub
        .get("/api/v1/messages?key=LHGHL1LV0VD172367", ADMIN)
        .await;
    let m = &msgs["messages"][0];
    assert_eq!(m["status"], "rejected", "{msgs}");
    assert!(m["reason"].to_string().contains("check digit"), "{m}");

    // The same owner buys again (here: the same car resent with a new colour): matched, not
    // created twice; the vehicle gets a new version.
    let again = sample_request().replace("珍珠白", "星空蓝");
    let (status, xml) = call(&hub, again).await;
    assert_eq!(status, 200, "{xml}");
    hub.settle(20).await;
    let (_, v2) = hub.get("/api/v1/vehicles/LHG0LVF20VB714970", ADMIN).await;
    assert_eq!(v2["color"], "星空蓝");
    assert_eq!(v2["owner_customer_id"], owner.as_str());
    let (_, found) = hub.get("/api/v1/customers?mobile=13800138000", ADMIN).await;
    assert_eq!(found["customers"].as_array().unwrap().len(), 1, "{found}");

    // The new customer went on to the selling dealer's DMS: SOAP in → CRM → AMQP out.
    let (_conn, ch) = amqp_client().await;
    let queue = format!("{}dms.all", hub.amqp_prefix);
    let mut created = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
        if body["customer_id"] == owner.as_str() {
            assert_eq!(m.delivery.routing_key.as_str(), "dealer.D0001.customer");
            created.push(body["event"].as_str().unwrap_or_default().to_string());
        }
    }
    assert_eq!(created, ["customer.created"], "one event for the new owner");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_are_faults_and_journaled_and_the_wsdl_names_the_hub() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    let (status, xml) = call(&hub, sample_request().replace(">demo-osm<", ">wrong<")).await;
    assert_eq!(status, 500, "{xml}");
    assert!(xml.contains("Client"), "{xml}");
    assert!(xml.contains("authentication failed for user"), "{xml}");
    let (status, xml) = call(
        &hub,
        "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><x>&e;</x>"
            .into(),
    )
    .await;
    assert_eq!(status, 500, "{xml}");
    assert!(!xml.contains("root:"), "no entity expansion: {xml}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, msgs) = hub
        .get("/api/v1/messages?status=rejected&limit=50", ADMIN)
        .await;
    let refused = msgs["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["endpoint"] == "osm_vehicles_soap_in")
        .count();
    assert_eq!(refused, 2, "{msgs}");
    // A refused request is still findable by the VIN inside it.
    let (_, by_vin) = hub
        .get("/api/v1/messages?key=LHG0LVF20VB714970", ADMIN)
        .await;
    assert!(
        by_vin["count"].as_u64().unwrap_or(0) >= 1,
        "refused request findable by VIN: {by_vin}"
    );

    let wsdl = hub
        .client
        .get(format!("{}/soap/osm/VehicleService?wsdl", hub.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(wsdl.contains("urn:synchub:osm:vehicle:v1"), "{wsdl}");
    assert!(
        wsdl.contains(&format!("{}/soap/osm/VehicleService", hub.base)),
        "the address is the hub's: {wsdl}"
    );
    hub.stop().await;
}

/// What a partner's generated client does: zeep loads the WSDL the hub serves and calls
/// SyncVehicles; the vehicle it sends lands in the CRM store.
#[tokio::test(flavor = "multi_thread")]
async fn a_zeep_client_generated_from_the_served_wsdl_syncs_vehicles() {
    let has_zeep = std::process::Command::new("python3")
        .args(["-c", "import zeep"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_zeep,
        "python3 with zeep is required for this test (pip install zeep; .ci/run installs it)"
    );
    let hub = TestHub::spawn(Backend::Sqlite).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/adapters/soap/tests/zeep/call_sync_vehicles.py"
    );
    let out = tokio::process::Command::new("python3")
        .args([
            script,
            &format!("{}/soap/osm/VehicleService", hub.base),
            "digest",
        ])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "zeep failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(r["accepted"], 1, "{r}");
    assert_eq!(r["rejected"][0]["vin"], "LHGHL1LV0VD172367", "{r}");
    hub.settle(20).await;
    let (s, v) = hub.get("/api/v1/vehicles/LHG0LVF20VB714970", ADMIN).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["plate_no"], "粤A·D12345", "{v}");
    assert!(v["owner_customer_id"].is_string(), "{v}");
    hub.stop().await;
}

fn dcs_answer(inner: &str) -> wiremock::ResponseTemplate {
    wiremock::ResponseTemplate::new(if inner.contains("Fault") { 500 } else { 200 }).set_body_raw(
        format!(
            "<?xml version=\"1.0\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>{inner}</soap:Body></soap:Envelope>"
        ),
        "text/xml; charset=utf-8",
    )
}

/// Campaign tasks to DCS through the dispatcher: success is delivered with DCS's task id, a
/// client fault is rejected with its faultstring, a 503 is retried and finally parked.
#[tokio::test(flavor = "multi_thread")]
async fn dcs_tasks_are_delivered_rejected_or_retried_by_the_partners_answer() {
    use wiremock::matchers::{body_string_contains, method};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let dcs = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("<t:campaignCode>C-OK</t:campaignCode>"))
        .respond_with(dcs_answer(
            "<r:PublishCampaignTaskResponse xmlns:r=\"urn:synchub:dcs:task:v1\"><r:taskId>T-77</r:taskId></r:PublishCampaignTaskResponse>",
        ))
        .mount(&dcs)
        .await;
    Mock::given(method("POST"))
        .and(body_string_contains("<t:campaignCode>C-BAD</t:campaignCode>"))
        .respond_with(dcs_answer(
            "<soap:Fault><faultcode>soap:Client</faultcode><faultstring>dealerCode D0001 is not a DCS dealer</faultstring></soap:Fault>",
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
    config.write(
        "config/endpoints/dcs_tasks_soap_out.toml",
        &format!(
            "type = \"soap\"\ndirection = \"out\"\nurl = \"{}/dcs/TaskService\"\ntimeout_ms = 2000\n\
             username = \"synchub\"\npassword_env = \"TEST_DCS_PASSWORD\"\n",
            dcs.uri()
        ),
    );
    // Leads stand in for campaign assignments here: the mapping turns each into a DCS task.
    config.write(
        "mappings/test_lead_to_dcs_task/v1.jq",
        "{campaign_code: .campaign_code, name: .name, dealer_code: \"D0001\", \
         start_date: \"2026-12-01\", end_date: \"2026-12-31\", target_count: 1}\n",
    );
    config.write(
        "routes/test_leads_to_dcs.toml",
        "from = \"partners_rest_in\"\nrecord_type = \"lead\"\nvalidate = \"lead\"\n\
         mapping = \"test_lead_to_dcs_task\"\nto = [\"dcs_tasks_soap_out\"]\n\
         [retry]\nmax_attempts = 2\nbackoff_ms = 50\nmax_backoff_ms = 100\n",
    );
    let hub = TestHub::spawn_with(
        Backend::Sqlite,
        config,
        &[("TEST_DCS_PASSWORD", "dcs-secret")],
    )
    .await;
    let mut ids: Vec<String> = Vec::new();
    for (i, code) in ["C-OK", "C-BAD", "C-BUSY"].iter().enumerate() {
        let mut lead = sample("rest/lead.request.json");
        lead["source_ref"] = serde_json::json!(format!("DCS-TEST-{i}"));
        lead["campaign_code"] = serde_json::json!(code);
        let (s, r) = hub
            .post_records("/api/v1/leads", "demo-callcenter", &lead)
            .await;
        assert_eq!(s, 202, "{r}");
        assert_eq!(r["accepted"].as_array().map(Vec::len), Some(1), "{r}");
    }
    hub.settle(30).await;
    for i in 0..3 {
        let (_, found) = hub
            .get(&format!("/api/v1/messages?key=DCS-TEST-{i}"), ADMIN)
            .await;
        ids.push(found["messages"][0]["id"].as_str().unwrap().to_string());
    }
    let mut outcomes = Vec::new();
    for id in &ids {
        let (_, detail) = hub.get(&format!("/api/v1/messages/{id}"), ADMIN).await;
        let d = detail["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["target"] == "dcs_tasks_soap_out")
            .unwrap_or_else(|| panic!("no DCS delivery: {detail}"))
            .clone();
        outcomes.push(d);
    }
    assert_eq!(outcomes[0]["status"], "delivered", "{}", outcomes[0]);
    assert_eq!(outcomes[0]["remote_ref"], "T-77", "{}", outcomes[0]);
    assert_eq!(outcomes[1]["status"], "rejected", "{}", outcomes[1]);
    assert!(
        outcomes[1]["last_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("dealerCode D0001 is not a DCS dealer"),
        "{}",
        outcomes[1]
    );
    assert_eq!(outcomes[1]["attempts"], 1, "a client fault is not retried");
    assert_eq!(outcomes[2]["status"], "parked", "{}", outcomes[2]);
    assert_eq!(outcomes[2]["attempts"], 2, "retried, then parked");
    assert!(
        outcomes[2].to_string().contains("503"),
        "the reason names the answer: {}",
        outcomes[2]
    );
    // What DCS received carries the WS-Security token with the configured secret.
    let sent = dcs.received_requests().await.unwrap();
    let post = sent
        .iter()
        .find(|r| r.method.as_str() == "POST")
        .expect("DCS was called");
    let first = String::from_utf8_lossy(&post.body).into_owned();
    assert!(
        first.contains("<wsse:Username>synchub</wsse:Username>"),
        "{first}"
    );
    assert!(first.contains("dcs-secret"), "{first}");
    hub.stop().await;
}
