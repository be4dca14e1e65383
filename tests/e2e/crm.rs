//! The CRM store sink through the hub: customer matching, change history, key-field approval,
//! out-of-order updates, headquarters edits and the change events they emit.

use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, IT_D0001, TestHub, sample};

fn customer() -> Value {
    sample("rest/dms-customers.request.json")[0].clone()
}

async fn post_customer(hub: &TestHub, rec: &Value) -> String {
    let (s, body) = hub
        .post_records("/api/v1/dms/customers", "demo-dms-D0001", rec)
        .await;
    assert_eq!(s, 202, "{body}");
    assert!(body["rejected"].as_array().unwrap().is_empty(), "{body}");
    hub.settle(20).await;
    body["accepted"][0]["id"].as_str().unwrap().to_string()
}

async fn matching_history_and_approval(backend: Backend) {
    let hub = TestHub::spawn(backend).await;
    let id = post_customer(&hub, &customer()).await;

    // Same mobile, another DMS reference: the same customer, ordinary field applied at once,
    // key field (name) held for approval.
    let mut update = customer();
    update["source_ref"] = json!("DMS-D0001-C000123-v2");
    update["address"] = json!("天河区体育东路2号");
    update["name"] = json!("王大明");
    update["updated_at"] = json!("2026-11-25T10:00:00+08:00");
    assert_eq!(post_customer(&hub, &update).await, id, "matched by mobile");
    let (_, c) = hub.get(&format!("/api/v1/customers/{id}"), ADMIN).await;
    assert_eq!(c["address"], "天河区体育东路2号");
    assert_eq!(c["name"], "王小明", "key field not applied before approval");
    assert_eq!(c["version"], 2);

    let (_, h) = hub
        .get(&format!("/api/v1/customers/{id}/history"), ADMIN)
        .await;
    let addr = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["field"] == "address" && e["old"].is_string())
        .cloned()
        .expect("address change in history");
    assert_eq!(addr["old"], "天河区体育西路101号");
    assert_eq!(addr["new"], "天河区体育东路2号");
    assert_eq!(addr["source_system"], "dms:D0001");
    assert!(addr["message_id"].is_string());

    let (_, a) = hub.get("/api/v1/approvals", ADMIN).await;
    let pending = a["approvals"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{a}");
    assert_eq!(pending[0]["field"], "name");
    assert_eq!(pending[0]["new"], "王大明");
    let approval = pending[0]["id"].as_i64().unwrap();

    // Dealer IT may not decide; headquarters may.
    assert_eq!(
        hub.post(
            &format!("/api/v1/approvals/{approval}/approve"),
            IT_D0001,
            None
        )
        .await
        .0,
        403
    );
    let (s, _) = hub
        .post(
            &format!("/api/v1/approvals/{approval}/approve"),
            ADMIN,
            Some(json!({"comment": "ID checked"})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, c) = hub.get(&format!("/api/v1/customers/{id}"), ADMIN).await;
    assert_eq!(c["name"], "王大明");
    assert_eq!(c["version"], 3);
    assert_eq!(
        hub.post(
            &format!("/api/v1/approvals/{approval}/approve"),
            ADMIN,
            None
        )
        .await
        .0,
        409,
        "decided once"
    );

    // An older update (by updated_at) never overwrites a newer one.
    let mut stale = customer();
    stale["source_ref"] = json!("DMS-D0001-C000123-old");
    stale["address"] = json!("旧地址");
    stale["updated_at"] = json!("2026-01-01T00:00:00+08:00");
    post_customer(&hub, &stale).await;
    let (_, c) = hub.get(&format!("/api/v1/customers/{id}"), ADMIN).await;
    assert_eq!(c["address"], "天河区体育东路2号", "stale update ignored");

    // Headquarters edits: applied, versioned, and a customer.updated event is journaled.
    let (s, r) = hub
        .put(
            &format!("/api/v1/customers/{id}"),
            ADMIN,
            json!({"email": "new@example.com"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["changed_fields"], json!(["email"]));
    let (_, events) = hub
        .get(
            &format!("/api/v1/messages?key={id}&endpoint=crm_store"),
            ADMIN,
        )
        .await;
    let last = &events["messages"][0];
    assert_eq!(last["record_type"], "customer_event", "{events}");
    let (_, detail) = hub
        .get(
            &format!("/api/v1/messages/{}", last["id"].as_str().unwrap()),
            ADMIN,
        )
        .await;
    assert_eq!(detail["body"]["event"], "customer.updated");
    assert_eq!(detail["body"]["changed_fields"], json!(["email"]));
    assert_eq!(
        hub.put(
            &format!("/api/v1/customers/{id}"),
            IT_D0001,
            json!({"email": "x@y.z"})
        )
        .await
        .0,
        403
    );
    hub.stop().await;
}

#[tokio::test]
async fn matching_history_and_approval_sqlite() {
    matching_history_and_approval(Backend::Sqlite).await;
}

#[tokio::test]
async fn matching_history_and_approval_postgres() {
    matching_history_and_approval(Backend::Postgres).await;
}

#[tokio::test]
async fn vehicles_and_dealers_are_readable_and_dealer_scoped() {
    use synchub::crm::{ChangeSource, Columns, upsert};
    let hub = TestHub::spawn(Backend::Sqlite).await;
    hub.store
        .write(|c| {
            Box::pin(async move {
                let src = ChangeSource { system: "osm".into(), message_id: None, needs_approval: false };
                let vehicle = json!({"vin": "LHG0LVF20VB714970", "brand": "Honda", "model": "Accord", "dealer_code": "D0001"});
                let cols = Columns { dealer_code: Some("D0001".into()), ..Default::default() };
                upsert(c, "vehicle", "LHG0LVF20VB714970", vehicle.as_object().unwrap(), &cols, &src).await?;
                let dealer = json!({"dealer_code": "D0002", "dealer_name": "深圳店", "city": "深圳"});
                let cols = Columns { dealer_code: Some("D0002".into()), ..Default::default() };
                upsert(c, "dealer", "D0002", dealer.as_object().unwrap(), &cols, &src).await?;
                Ok(())
            })
        })
        .await
        .unwrap();
    let (s, v) = hub.get("/api/v1/vehicles/lhg0lvf20vb714970", ADMIN).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "Accord");
    assert_eq!(v["version"], 1);
    assert_eq!(
        hub.get("/api/v1/vehicles/LHG0LVF20VB714970", IT_D0001)
            .await
            .0,
        200,
        "own dealer's vehicle"
    );
    let (s, seeded) = hub.get("/api/v1/dealers/D0001", IT_D0001).await;
    assert_eq!(s, 200, "the local profile seeds the demo dealers: {seeded}");
    assert_eq!(seeded["city"], "广州");
    let (s, d) = hub.get("/api/v1/dealers/D0002", ADMIN).await;
    assert_eq!(s, 200);
    assert_eq!(d["dealer_name"], "深圳店");
    assert_eq!(
        hub.get("/api/v1/dealers/D0002", IT_D0001).await.0,
        404,
        "another dealer"
    );
    assert_eq!(
        hub.get("/api/v1/vehicles/LSVAA4182E2000000", ADMIN).await.0,
        404
    );
    hub.stop().await;
}
