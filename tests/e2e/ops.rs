//! Operations surface: health, readiness, Prometheus metrics after real traffic, and endpoint
//! state following a partner that goes down and comes back.

use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{ADMIN, Backend, TestConfig, TestHub, sample};

#[tokio::test]
async fn health_metrics_and_endpoint_state() {
    let partner = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&partner)
        .await;
    let cfg = TestConfig::shipped().with_partner(&partner.uri());
    cfg.write(
        "routes/leads_to_partner.toml",
        "from = \"partners_rest_in\"\nrecord_type = \"lead\"\nvalidate = \"lead\"\nto = [\"partner_out\"]\n\
         [retry]\nmax_attempts = 4\nbackoff_ms = 10\nmax_backoff_ms = 20\n",
    );
    // Flow gauges re-read every second, so the parked delivery shows before the assertions.
    let hub = TestHub::spawn_with(
        Backend::Sqlite,
        cfg,
        &[("SYNCHUB__HTTP__METRICS_REFRESH_SECS", "1")],
    )
    .await;
    let live = hub
        .client
        .get(format!("{}/health/live", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let ready = hub
        .client
        .get(format!("{}/health/ready", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    let (s, _) = hub
        .post_records(
            "/api/v1/leads",
            "demo-website",
            &sample("rest/lead.request.json"),
        )
        .await;
    assert_eq!(s, 202);
    let (s, _) = hub
        .post_records(
            "/api/v1/leads",
            "wrong-key",
            &sample("rest/lead.request.json"),
        )
        .await;
    assert_eq!(s, 401);
    hub.settle(30).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let (_, eps) = hub.get("/api/v1/endpoints", ADMIN).await;
    let find = |id: &str| {
        eps["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap()
    };
    let out = find("partner_out");
    assert_eq!(out["state"], "down", "four 503s in a row: {out}");
    assert!(out["last_error"].as_str().unwrap().contains("503"), "{out}");
    assert_eq!(out["kind"], "rest out");
    let inbound = find("partners_rest_in");
    assert_eq!(inbound["state"], "up");
    assert!(inbound["last_contact"].is_string(), "{inbound}");

    let metrics = hub
        .client
        .get(format!("{}/metrics", hub.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "hub_messages_received_total{endpoint=\"partners_rest_in\"}",
        "hub_records_total{endpoint=\"partners_rest_in\",outcome=\"accepted\"}",
        "hub_messages_refused_total{endpoint=\"partners_rest_in\",code=\"unauthorized\"}",
        "hub_delivery_attempts_total{target=\"partner_out\",route=\"leads_to_partner\",outcome=\"retry\"}",
        "hub_deliveries_total{target=\"partner_out\",route=\"leads_to_partner\",outcome=\"parked\"}",
        "hub_deliveries_total{target=\"crm_store\",route=\"leads_to_crm\",outcome=\"delivered\"}",
        // Counts are process-wide (other tests in this binary add to them): names and labels only.
        "hub_delivery_attempt_duration_seconds_bucket{target=\"partner_out\",outcome=\"retry\",le=\"30\"}",
        "hub_flow_parked{route=\"leads_to_partner\"}",
        "hub_flow_backlog{route=\"leads_to_crm\"}",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("hub_flow_freshness_seconds{route=\"leads_to_crm\"}"),
        "a route that delivered has a freshness:\n{metrics}"
    );
    assert!(
        !metrics.contains("13760001234"),
        "no business keys in metric labels"
    );

    // Operator park/retry on a delivery: park needs it pending; retry works on parked.
    let (_, found) = hub
        .get(
            "/api/v1/messages?key=WEB-20261125-000981&status=accepted",
            ADMIN,
        )
        .await;
    let id = found["messages"][0]["id"].as_str().unwrap().to_string();
    let (_, detail) = hub.get(&format!("/api/v1/messages/{id}"), ADMIN).await;
    let d = detail["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["target"] == "partner_out")
        .unwrap()
        .clone();
    assert_eq!(d["status"], "parked");
    let cause = &d["attempt_log"][0]["cause_chain"];
    assert!(cause.is_array(), "{d}");
    let did = d["id"].as_i64().unwrap();
    assert_eq!(
        hub.post(&format!("/api/v1/deliveries/{did}/park"), ADMIN, None)
            .await
            .0,
        409,
        "already parked"
    );
    assert_eq!(
        hub.post(
            &format!("/api/v1/deliveries/{did}/retry"),
            "demo-it-D0001",
            None
        )
        .await
        .0,
        404,
        "not the dealer's"
    );
    let (s, body) = hub
        .post(
            &format!("/api/v1/deliveries/{did}/retry"),
            ADMIN,
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    hub.stop().await;
}
