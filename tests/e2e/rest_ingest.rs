//! Partner REST ingest (INTERFACES §1) through the whole hub: 202 after commit with per-record
//! verdicts, refusals journaled and findable, idempotency by source_ref, dealer scoping.

use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, IT_D0001, TestHub, sample};

async fn ingest_samples(backend: Backend) {
    let hub = TestHub::spawn(backend).await;
    let (status, body) = hub
        .post_records(
            "/api/v1/dms/customers",
            "demo-dms-D0001",
            &sample("rest/dms-customers.request.json"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"].as_array().unwrap().len(), 1, "{body}");
    let accepted = &body["accepted"][0];
    assert_eq!(accepted["source_ref"], "DMS-D0001-C000123");
    let customer_id = accepted["id"].as_str().expect("customer id").to_string();
    assert!(
        customer_id.starts_with('C') && customer_id.len() == 10,
        "{customer_id}"
    );
    let rejected = &body["rejected"][0];
    assert_eq!(rejected["index"], 1);
    assert_eq!(rejected["errors"][0]["field"], "mobile");
    assert!(
        rejected["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("12345")
    );

    hub.settle(20).await;
    let (s, c) = hub
        .get(&format!("/api/v1/customers/{customer_id}"), ADMIN)
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["mobile"], "13912345678", "cleansed +86 mobile: {c}");
    assert_eq!(
        c["address"], "天河区体育西路101号",
        "full-width digits half-width: {c}"
    );
    assert_eq!(c["dealer_code"], "D0001");

    // Findable by mobile, by the rejected record's source_ref, and by the customer id.
    for key in ["13912345678", "DMS-D0001-C000124", customer_id.as_str()] {
        let (s, found) = hub.get(&format!("/api/v1/messages?key={key}"), ADMIN).await;
        assert_eq!(s, 200);
        assert!(
            found["count"].as_u64().unwrap() >= 1,
            "nothing found for {key}: {found}"
        );
    }
    let (_, rej) = hub
        .get(
            "/api/v1/messages?key=DMS-D0001-C000124&status=rejected",
            ADMIN,
        )
        .await;
    assert_eq!(rej["messages"][0]["reason"][0]["field"], "mobile", "{rej}");

    // The same record again: same id, no second effect.
    let (status, again) = hub
        .post_records(
            "/api/v1/dms/customers",
            "demo-dms-D0001",
            &sample("rest/dms-customers.request.json"),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(again["accepted"][0]["id"], customer_id.as_str());
    hub.settle(20).await;
    let (_, h) = hub
        .get(&format!("/api/v1/customers/{customer_id}/history"), ADMIN)
        .await;
    let entries = h["history"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        1,
        "one creation entry, and the duplicate wrote nothing: {h}"
    );
    assert_eq!(entries[0]["field"], "(created)");
    let created: Value = serde_json::from_str(entries[0]["new"].as_str().unwrap()).unwrap();
    assert_eq!(created["mobile"], "13912345678", "{created}");
    assert_eq!(entries[0]["source_system"], "dms:D0001");
    hub.stop().await;
}

#[tokio::test]
async fn ingest_samples_sqlite() {
    ingest_samples(Backend::Sqlite).await;
}

#[tokio::test]
async fn ingest_samples_postgres() {
    ingest_samples(Backend::Postgres).await;
}

#[tokio::test]
async fn refusals_are_journaled_with_their_reason() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    let url = format!("{}/api/v1/leads", hub.base);
    // 401: unknown key
    let r = hub
        .client
        .post(&url)
        .header("X-Api-Key", "nope")
        .json(&sample("rest/lead.request.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // 415: wrong content type
    let r = hub
        .client
        .post(&url)
        .header("X-Api-Key", "demo-website")
        .header("Content-Type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // 400: broken JSON, with the position in the message
    let r = hub
        .client
        .post(&url)
        .header("X-Api-Key", "demo-website")
        .header("Content-Type", "application/json")
        .body(r#"{"source_ref": "WEB-BROKEN-1", "name": "#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json", "{body}");
    // 413: oversize body
    let big = format!(
        r#"{{"source_ref":"BIG","remark":"{}"}}"#,
        "x".repeat(11 * 1024 * 1024)
    );
    let r = hub
        .client
        .post(&url)
        .header("X-Api-Key", "demo-website")
        .header("Content-Type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // 403: a dealer writing another dealer's record
    let mut rec = sample("rest/dms-customers.request.json")[0].clone();
    rec["dealer_code"] = json!("D0002");
    rec["source_ref"] = json!("DMS-D0001-WRONG-DEALER");
    let (s, body) = hub
        .post_records("/api/v1/dms/customers", "demo-dms-D0001", &rec)
        .await;
    assert_eq!(s, 403);
    assert_eq!(body["error"]["code"], "dealer_mismatch");

    let (_, rejected) = hub
        .get("/api/v1/messages?status=rejected&limit=50", ADMIN)
        .await;
    let codes: Vec<String> = rejected["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["reason"]["code"].as_str().map(str::to_string))
        .collect();
    for code in [
        "unauthorized",
        "unsupported_media_type",
        "invalid_json",
        "payload_too_large",
        "dealer_mismatch",
    ] {
        assert!(
            codes.iter().any(|c| c == code),
            "no journaled refusal {code} in {codes:?}"
        );
    }
    // The refused record is findable by its source_ref.
    let (_, found) = hub
        .get("/api/v1/messages?key=DMS-D0001-WRONG-DEALER", ADMIN)
        .await;
    assert_eq!(found["count"], 1, "{found}");
    hub.stop().await;
}

#[tokio::test]
async fn dealer_it_sees_only_its_dealer() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    let mut rec = sample("rest/dms-customers.request.json")[0].clone();
    let (s, d1) = hub
        .post_records("/api/v1/dms/customers", "demo-dms-D0001", &rec)
        .await;
    assert_eq!(s, 202);
    rec["dealer_code"] = json!("D0002");
    rec["source_ref"] = json!("DMS-D0002-C9");
    rec["mobile"] = json!("13800138000");
    rec["id_no"] = Value::Null;
    let (s, d2) = hub
        .post_records("/api/v1/dms/customers", "demo-dms-D0002", &rec)
        .await;
    assert_eq!(s, 202, "{d2}");
    hub.settle(20).await;
    let own = d1["accepted"][0]["id"].as_str().unwrap();
    let other = d2["accepted"][0]["id"].as_str().unwrap();
    assert_eq!(
        hub.get(&format!("/api/v1/customers/{own}"), IT_D0001)
            .await
            .0,
        200
    );
    assert_eq!(
        hub.get(&format!("/api/v1/customers/{other}"), IT_D0001)
            .await
            .0,
        404
    );
    assert_eq!(
        hub.get(&format!("/api/v1/customers/{other}"), ADMIN)
            .await
            .0,
        200
    );
    let other_msg = d2["message_id"].as_str().unwrap();
    assert_eq!(
        hub.get(&format!("/api/v1/messages/{other_msg}"), IT_D0001)
            .await
            .0,
        404
    );
    let (_, mine) = hub.get("/api/v1/messages?limit=100", IT_D0001).await;
    assert!(
        mine["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["dealer_code"] == "D0001"),
        "{mine}"
    );
    assert_eq!(hub.get("/api/v1/messages", "wrong-token").await.0, 401);
    hub.stop().await;
}

#[tokio::test]
async fn leads_results_and_campaign_results_reach_the_crm() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    crate::campaigns::create_campaign(&hub, "C2026-12-WINTERCARE", &["D0002"]).await;
    let (s, lead) = hub
        .post_records(
            "/api/v1/leads",
            "demo-website",
            &sample("rest/lead.request.json"),
        )
        .await;
    assert_eq!(s, 202, "{lead}");
    let lead_id = lead["accepted"][0]["id"].as_str().unwrap().to_string();
    assert!(lead_id.starts_with('L') && lead_id.len() == 14, "{lead_id}");
    hub.settle(20).await;
    let (s, l) = hub.get(&format!("/api/v1/leads/{lead_id}"), ADMIN).await;
    assert_eq!(s, 200, "{l}");
    assert_eq!(l["source"], "website", "source comes from the key: {l}");

    let mut result = sample("rest/lead-result.request.json");
    result["lead_id"] = json!(lead_id);
    let (s, r) = hub
        .post_records("/api/v1/dms/lead-results", "demo-dms-D0002", &result)
        .await;
    assert_eq!(s, 202, "{r}");
    hub.settle(20).await;
    let (_, l) = hub.get(&format!("/api/v1/leads/{lead_id}"), ADMIN).await;
    assert_eq!(l["status"], "test_drive", "{l}");
    // Replaying the lead re-applies it without resetting what happened since.
    let (s, _) = hub
        .post(
            &format!(
                "/api/v1/messages/{}/replay",
                lead["message_id"].as_str().unwrap()
            ),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(s, 202);
    hub.settle(20).await;
    let (_, l) = hub.get(&format!("/api/v1/leads/{lead_id}"), ADMIN).await;
    assert_eq!(
        l["status"], "test_drive",
        "replay must not reset the status: {l}"
    );

    // A result for a lead that does not exist is rejected by the CRM with the reason.
    let mut unknown = sample("rest/lead-result.request.json");
    unknown["lead_id"] = json!("L2000010100001");
    unknown["source_ref"] = json!("DMS-D0002-R-UNKNOWN");
    let (s, _) = hub
        .post_records("/api/v1/dms/lead-results", "demo-dms-D0002", &unknown)
        .await;
    assert_eq!(s, 202);
    hub.settle(20).await;
    let (_, found) = hub
        .get("/api/v1/messages?key=DMS-D0002-R-UNKNOWN", ADMIN)
        .await;
    let id = found["messages"][0]["id"].as_str().unwrap();
    let (_, detail) = hub.get(&format!("/api/v1/messages/{id}"), ADMIN).await;
    assert_eq!(detail["deliveries"][0]["status"], "rejected", "{detail}");
    assert!(
        detail["deliveries"][0]["last_reason"]
            .as_str()
            .unwrap()
            .contains("unknown lead"),
        "{detail}"
    );

    let (s, _) = hub
        .post_records(
            "/api/v1/dms/campaign-results",
            "demo-dms-D0002",
            &sample("rest/campaign-result.request.json"),
        )
        .await;
    assert_eq!(s, 202);
    hub.settle(20).await;
    let (s, c) = hub
        .get("/api/v1/campaigns/C2026-12-WINTERCARE", ADMIN)
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["results_by_dealer"]["D0002"]["attended"], 1, "{c}");
    hub.stop().await;
}

/// Concurrent requests are merged into one store write (the accept queue); every partner must
/// still get exactly its own verdicts: its records' source_refs, its rejected indexes, and a
/// customer id of its own for each new person.
async fn concurrent_requests_each_get_their_own_verdicts(backend: Backend) {
    let hub = TestHub::spawn(backend).await;
    let base = sample("rest/dms-customers.request.json")[0].clone();
    let record = |i: usize, mobile: &str| {
        let mut r = base.clone();
        r["source_ref"] = json!(format!("DMS-D0001-CC{i:04}"));
        r["mobile"] = json!(mobile);
        r["id_no"] = Value::Null;
        r
    };
    let mut requests = Vec::new();
    for i in 0..48 {
        let mut batch = vec![record(i, &format!("1390000{i:04}"))];
        if i % 3 == 0 {
            // A bad mobile at index 1: rejected, the rest of the request goes through.
            batch.push(record(1000 + i, "12345"));
        }
        if i % 4 == 0 {
            batch.push(record(2000 + i, &format!("1370000{i:04}")));
        }
        requests.push(Value::Array(batch));
    }
    let answers = futures_util::future::join_all(
        requests
            .iter()
            .map(|body| hub.post_records("/api/v1/dms/customers", "demo-dms-D0001", body)),
    )
    .await;
    let mut ids = std::collections::HashSet::new();
    for (body, (status, answer)) in requests.iter().zip(&answers) {
        assert_eq!(*status, 202, "{answer}");
        let sent: Vec<&Value> = body.as_array().unwrap().iter().collect();
        let want_ok: Vec<&str> = sent
            .iter()
            .filter(|r| r["mobile"] != "12345")
            .map(|r| r["source_ref"].as_str().unwrap())
            .collect();
        let got_ok: Vec<&str> = answer["accepted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["source_ref"].as_str().unwrap())
            .collect();
        assert_eq!(got_ok, want_ok, "another request's verdicts: {answer}");
        let want_bad: Vec<usize> = sent
            .iter()
            .enumerate()
            .filter(|(_, r)| r["mobile"] == "12345")
            .map(|(i, _)| i)
            .collect();
        let got_bad: Vec<usize> = answer["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["index"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got_bad, want_bad, "{answer}");
        for a in answer["accepted"].as_array().unwrap() {
            assert!(
                ids.insert(a["id"].as_str().unwrap().to_string()),
                "a customer id given to two people: {answer}"
            );
        }
    }
    assert_eq!(ids.len(), 48 + 12, "every new person got an id");
    hub.stop().await;
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_verdicts_sqlite() {
    concurrent_requests_each_get_their_own_verdicts(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_verdicts_postgres() {
    concurrent_requests_each_get_their_own_verdicts(Backend::Postgres).await;
}
