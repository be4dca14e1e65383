//! The dispatcher against a fake REST partner (wiremock): retries with backoff and Retry-After,
//! parking after max attempts, operator retry and park, per-key lanes, replay through a newer
//! mapping version.

use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{ADMIN, Backend, TestConfig, TestHub, sample};

async fn hub_with_partner(partner: &MockServer, backend: Backend) -> TestHub {
    let cfg = TestConfig::shipped().with_partner(&partner.uri());
    cfg.write(
        "routes/leads_to_partner.toml",
        "from = \"partners_rest_in\"\nrecord_type = \"lead\"\nvalidate = \"lead\"\nmapping = \"rest_lead_to_crm\"\n\
         mapping_version = 1\nto = [\"partner_out\"]\nlane_key = \"mobile\"\n\
         [retry]\nmax_attempts = 3\nbackoff_ms = 20\nmax_backoff_ms = 100\n",
    );
    TestHub::spawn_with(backend, cfg, &[]).await
}

fn lead(source_ref: &str, mobile: &str) -> Value {
    let mut l = sample("rest/lead.request.json");
    l["source_ref"] = json!(source_ref);
    l["mobile"] = json!(mobile);
    l
}

async fn partner_delivery(hub: &TestHub, source_ref: &str) -> Value {
    let (_, found) = hub
        .get(
            &format!("/api/v1/messages?key={source_ref}&status=accepted"),
            ADMIN,
        )
        .await;
    let id = found["messages"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no message for {source_ref}: {found}"))
        .to_string();
    let (_, detail) = hub.get(&format!("/api/v1/messages/{id}"), ADMIN).await;
    detail["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["target"] == "partner_out")
        .cloned()
        .unwrap_or_else(|| panic!("no partner delivery: {detail}"))
}

async fn retries_then_delivers(backend: Backend) {
    let partner = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .mount(&partner)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("database locked"))
        .up_to_n_times(1)
        .mount(&partner)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&partner)
        .await;
    let hub = hub_with_partner(&partner, backend).await;
    let (s, _) = hub
        .post_records(
            "/api/v1/leads",
            "demo-website",
            &lead("WEB-R-1", "13700000001"),
        )
        .await;
    assert_eq!(s, 202);
    hub.settle(30).await;
    let d = partner_delivery(&hub, "WEB-R-1").await;
    assert_eq!(d["status"], "delivered", "{d}");
    let log = d["attempt_log"].as_array().unwrap();
    let outcomes: Vec<&str> = log.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["retry", "retry", "delivered"], "{d}");
    assert!(log[1]["reason"].as_str().unwrap().contains("500"), "{d}");
    assert_eq!(d["mapping_version"], 1);
    assert_eq!(d["mapped"]["entity"], "lead", "what was sent is kept: {d}");
    assert_eq!(d["attempt_log"][2]["mapping_version"], 1);
    // Retry-After: 1 was honoured over the 20 ms backoff.
    let t0 = chrono::DateTime::parse_from_rfc3339(log[0]["started_at"].as_str().unwrap()).unwrap();
    let t1 = chrono::DateTime::parse_from_rfc3339(log[1]["started_at"].as_str().unwrap()).unwrap();
    assert!(
        (t1 - t0).num_milliseconds() >= 900,
        "second attempt came too early: {t0} -> {t1}"
    );
    // The partner got the mapped body and the idempotency key.
    let reqs = partner.received_requests().await.unwrap();
    let last = reqs
        .iter()
        .rev()
        .find(|r| r.method.as_str() == "POST")
        .unwrap();
    let body: Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(body["entity"], "lead");
    assert_eq!(body["source_ref"], "WEB-R-1");
    assert!(last.headers.get("idempotency-key").is_some());
    hub.stop().await;
}

#[tokio::test]
async fn retries_then_delivers_sqlite() {
    retries_then_delivers(Backend::Sqlite).await;
}

#[tokio::test]
async fn retries_then_delivers_postgres() {
    retries_then_delivers(Backend::Postgres).await;
}

#[tokio::test]
async fn parks_after_max_attempts_and_holds_only_its_lane() {
    let partner = MockServer::start().await;
    // Everything for source_ref WEB-P-1 fails; the rest succeeds.
    Mock::given(method("POST"))
        .and(body_string_contains("WEB-P-1"))
        .respond_with(ResponseTemplate::new(500).set_body_string("boom"))
        .mount(&partner)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&partner)
        .await;
    let hub = hub_with_partner(&partner, Backend::Sqlite).await;
    hub.post_records(
        "/api/v1/leads",
        "demo-website",
        &lead("WEB-P-1", "13700000002"),
    )
    .await;
    hub.settle(30).await;
    // Same mobile (same lane) after the failing one; another mobile in its own lane.
    hub.post_records(
        "/api/v1/leads",
        "demo-website",
        &lead("WEB-P-2", "13700000002"),
    )
    .await;
    hub.post_records(
        "/api/v1/leads",
        "demo-website",
        &lead("WEB-P-3", "13700000003"),
    )
    .await;
    hub.settle(30).await;

    let parked = partner_delivery(&hub, "WEB-P-1").await;
    assert_eq!(parked["status"], "parked", "{parked}");
    assert_eq!(parked["attempts"], 3);
    assert!(
        parked["last_reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{parked}"
    );
    let held = partner_delivery(&hub, "WEB-P-2").await;
    assert_eq!(
        held["status"], "pending",
        "held behind the parked head of its lane: {held}"
    );
    assert_eq!(held["attempts"], 0);
    assert_eq!(
        partner_delivery(&hub, "WEB-P-3").await["status"],
        "delivered",
        "other lanes flow"
    );

    let (_, flows) = hub.get("/api/v1/flows", ADMIN).await;
    let flow = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["route"] == "leads_to_partner")
        .unwrap()
        .clone();
    assert_eq!(flow["parked"], 1, "{flow}");
    assert_eq!(flow["status"], "red");

    // The operator fixes the partner and retries: the head goes, then its lane follows.
    partner.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&partner)
        .await;
    let id = parked["id"].as_i64().unwrap();
    let (s, r) = hub
        .post(&format!("/api/v1/deliveries/{id}/retry"), ADMIN, None)
        .await;
    assert_eq!(s, 200, "{r}");
    hub.settle(30).await;
    assert_eq!(
        partner_delivery(&hub, "WEB-P-1").await["status"],
        "delivered"
    );
    assert_eq!(
        partner_delivery(&hub, "WEB-P-2").await["status"],
        "delivered"
    );
    // Health checks (HEAD) may interleave; the deliveries are the POSTs.
    let order: Vec<String> = partner
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["source_ref"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(order, ["WEB-P-1", "WEB-P-2"], "lane order kept");
    hub.stop().await;
}

#[tokio::test]
async fn rejects_permanent_errors_and_replays_through_a_newer_mapping() {
    let partner = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(422).set_body_string("interested_model unknown"))
        .up_to_n_times(1)
        .mount(&partner)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&partner)
        .await;
    let hub = hub_with_partner(&partner, Backend::Sqlite).await;
    let (_, r) = hub
        .post_records(
            "/api/v1/leads",
            "demo-callcenter",
            &lead("CC-X-1", "13700000004"),
        )
        .await;
    hub.settle(30).await;
    let d = partner_delivery(&hub, "CC-X-1").await;
    assert_eq!(d["status"], "rejected", "{d}");
    assert_eq!(d["attempts"], 1, "permanent errors are not retried");
    assert!(
        d["last_reason"]
            .as_str()
            .unwrap()
            .contains("interested_model unknown"),
        "{d}"
    );

    let record_id = {
        let (_, found) = hub
            .get("/api/v1/messages?key=CC-X-1&status=accepted", ADMIN)
            .await;
        found["messages"][0]["id"].as_str().unwrap().to_string()
    };
    let _ = r;
    let (s, rep) = hub
        .post(
            &format!("/api/v1/messages/{record_id}/replay"),
            ADMIN,
            Some(json!({"mapping_version": 2})),
        )
        .await;
    assert_eq!(s, 202, "{rep}");
    hub.settle(30).await;
    let (_, detail) = hub
        .get(&format!("/api/v1/messages/{record_id}"), ADMIN)
        .await;
    let replayed = detail["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["target"] == "partner_out" && d["mapping_version"] == 2)
        .cloned()
        .unwrap_or_else(|| panic!("no v2 delivery: {detail}"));
    assert_eq!(replayed["status"], "delivered", "{replayed}");
    assert_eq!(
        replayed["mapped"]["channel"], "phone",
        "v2 mapping output: {replayed}"
    );
    assert!(
        replayed["body"]["channel"].is_null(),
        "the validated record itself is kept as it was"
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_failing_mapping_rejects_the_delivery_not_the_record_and_a_fix_replays_it() {
    let partner = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&partner)
        .await;
    let cfg = TestConfig::shipped().with_partner(&partner.uri());
    cfg.write(
        "mappings/lead_to_partner/v1.jq",
        "# v1: a bug.\nerror(\"no partner code for \" + .source_ref)\n",
    );
    cfg.write(
        "mappings/lead_to_partner/v2.jq",
        "# v2: the fix.\n{partner_ref: .source_ref}\n",
    );
    cfg.write(
        "routes/leads_to_partner.toml",
        "from = \"partners_rest_in\"\nrecord_type = \"lead\"\nvalidate = \"lead\"\nmapping = \"lead_to_partner\"\n\
         mapping_version = 1\nto = [\"partner_out\"]\n",
    );
    let hub = TestHub::spawn_with(Backend::Sqlite, cfg, &[]).await;
    let (s, body) = hub
        .post_records(
            "/api/v1/leads",
            "demo-website",
            &lead("WEB-M-1", "13700000009"),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(
        body["accepted"].as_array().unwrap().len(),
        1,
        "valid data is accepted: {body}"
    );
    hub.settle(30).await;
    let d = partner_delivery(&hub, "WEB-M-1").await;
    assert_eq!(d["status"], "rejected", "{d}");
    assert!(
        d["last_reason"]
            .as_str()
            .unwrap()
            .contains("no partner code for WEB-M-1"),
        "{d}"
    );
    let posts = |reqs: Vec<wiremock::Request>| {
        reqs.into_iter()
            .filter(|r| r.method.as_str() == "POST")
            .collect::<Vec<_>>()
    };
    assert!(
        posts(partner.received_requests().await.unwrap()).is_empty(),
        "nothing sent"
    );

    let (_, found) = hub
        .get("/api/v1/messages?key=WEB-M-1&status=accepted", ADMIN)
        .await;
    let id = found["messages"][0]["id"].as_str().unwrap().to_string();
    let (s, _) = hub
        .post(
            &format!("/api/v1/messages/{id}/replay"),
            ADMIN,
            Some(json!({"mapping_version": 2})),
        )
        .await;
    assert_eq!(s, 202);
    let (s, err) = hub
        .post(
            &format!("/api/v1/messages/{id}/replay"),
            ADMIN,
            Some(json!({"mapping_version": 7})),
        )
        .await;
    assert_eq!(s, 409, "an unknown mapping version is refused: {err}");
    hub.settle(30).await;
    let reqs = posts(partner.received_requests().await.unwrap());
    assert_eq!(reqs.len(), 1);
    let sent: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(sent, json!({"partner_ref": "WEB-M-1"}));
    hub.stop().await;
}

/// The overview's hour and day figures count what happened: messages received on the route,
/// deliveries that reached the partner and those it refused (per-minute flow figures).
async fn flow_figures_count_the_last_hour(backend: Backend) {
    let partner = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("WEB-F-3"))
        .respond_with(ResponseTemplate::new(422).set_body_string("mobile already taken"))
        .with_priority(1)
        .mount(&partner)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&partner)
        .await;
    let hub = hub_with_partner(&partner, backend).await;
    for (i, mobile) in [(1, "13700000011"), (2, "13700000012"), (3, "13700000013")] {
        let (s, r) = hub
            .post_records(
                "/api/v1/leads",
                "demo-website",
                &lead(&format!("WEB-F-{i}"), mobile),
            )
            .await;
        assert_eq!(s, 202, "{r}");
    }
    hub.settle(30).await;
    let (_, flows) = hub.get("/api/v1/flows", ADMIN).await;
    let flow = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["route"] == "leads_to_partner")
        .cloned()
        .unwrap_or_else(|| panic!("no leads_to_partner flow: {flows}"));
    for window in ["last_hour", "last_day"] {
        assert_eq!(
            flow[window],
            json!({"received": 3, "rejected_records": 0, "delivered": 2, "rejected": 1}),
            "{window}: {flow}"
        );
    }
    assert_eq!(flow["backlog"], 0, "{flow}");
    assert!(flow["last_success"].is_string(), "{flow}");
    hub.stop().await;
}

#[tokio::test]
async fn flow_figures_count_the_last_hour_sqlite() {
    flow_figures_count_the_last_hour(Backend::Sqlite).await;
}

#[tokio::test]
async fn flow_figures_count_the_last_hour_postgres() {
    flow_figures_count_the_last_hour(Backend::Postgres).await;
}
