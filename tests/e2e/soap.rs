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
