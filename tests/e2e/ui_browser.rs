//! The dashboard in headless Chromium, as an operator uses it: sign in, read the overview (and
//! see it refresh without a reload), find a VIN sent through SOAP and open its detail, replay a
//! parked delivery through a fixed mapping after previewing it, approve a key-field change, and
//! as dealer IT fail to see another dealer's message. Screenshots go to
//! `<target>/ui-screenshots/`.

use serde_json::json;
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::cdp::Browser;
use crate::helpers::{ADMIN, Backend, TestConfig, TestHub, sample};
use crate::ui::{post_soap, record_id, soap_sample};

const VIN_D0001: &str = "LHG0LVF20VB714970";
const VIN_D0002: &str = "LHGHL1LV6VD172367";

/// Leads go to a partner through mapping v1, which emits a field the partner refuses with 500
/// (so the delivery parks); v2 is the fix.
async fn hub(partner: &MockServer) -> TestHub {
    Mock::given(method("POST"))
        .and(body_string_contains("legacy_code"))
        .respond_with(ResponseTemplate::new(500).set_body_string("unknown field legacy_code"))
        .mount(partner)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(partner)
        .await;
    let cfg = TestConfig::shipped().with_partner(&partner.uri());
    cfg.write(
        "mappings/lead_to_partner/v1.jq",
        "# v1: sends a field the partner dropped.\n{partner_ref: .source_ref, name: .name, legacy_code: 1}\n",
    );
    cfg.write(
        "mappings/lead_to_partner/v2.jq",
        "# v2: the fix.\n{partner_ref: .source_ref, name: .name}\n",
    );
    cfg.write(
        "routes/leads_to_partner.toml",
        "from = \"partners_rest_in\"\nrecord_type = \"lead\"\nvalidate = \"lead\"\nmapping = \"lead_to_partner\"\n\
         mapping_version = 1\nto = [\"partner_out\"]\n[retry]\nmax_attempts = 2\nbackoff_ms = 10\nmax_backoff_ms = 20\n",
    );
    TestHub::spawn_with(Backend::Sqlite, cfg, &[]).await
}

async fn login(b: &mut Browser, base: &str, user: &str, password: &str) {
    b.goto(&format!("{base}/ui/")).await;
    b.wait_for("location.pathname === '/ui/login'").await;
    let (u, p) = (json!(user), json!(password));
    b.eval(&format!(
        "document.querySelector('input[name=username]').value = {u}; \
         document.querySelector('input[name=password]').value = {p};"
    ))
    .await;
    b.click_and_wait("form.login-form button[type=submit]")
        .await;
    b.wait_for("document.querySelector('table.flows') !== null")
        .await;
}

async fn logout(b: &mut Browser) {
    b.click_and_wait("form.logout button").await;
    b.wait_for("location.pathname === '/ui/login'").await;
}

#[tokio::test]
async fn operator_journey_in_chromium() {
    let partner = MockServer::start().await;
    let hub = hub(&partner).await;
    let base = hub.base.clone();
    // Traffic: SOAP vehicles of two dealers, a lead that parks, a key-field change to approve.
    post_soap(&hub, soap_sample().replace("LHGHL1LV0VD172367", VIN_D0002)).await;
    let mut lead = sample("rest/lead.request.json");
    lead["source_ref"] = json!("WEB-BROWSER-1");
    assert_eq!(
        hub.post_records("/api/v1/leads", "demo-website", &lead)
            .await
            .0,
        202
    );
    let mut c = sample("rest/dms-customers.request.json")[0].clone();
    hub.post_records("/api/v1/dms/customers", "demo-dms-D0001", &c)
        .await;
    hub.settle(30).await;
    c["source_ref"] = json!("DMS-D0001-C000123-v2");
    c["name"] = json!("王大明");
    c["updated_at"] = json!("2026-11-25T10:00:00+08:00");
    hub.post_records("/api/v1/dms/customers", "demo-dms-D0001", &c)
        .await;
    hub.settle(30).await;

    let mut b = Browser::launch().await;

    // Sign in: a wrong password first.
    b.goto(&format!("{base}/ui/")).await;
    b.wait_for("location.pathname === '/ui/login'").await;
    b.screenshot("01-login", false).await;
    b.eval(
        "document.querySelector('input[name=username]').value = 'admin'; \
         document.querySelector('input[name=password]').value = 'nope';",
    )
    .await;
    b.click_and_wait("form.login-form button[type=submit]")
        .await;
    assert!(b.text().await.contains("Wrong user name or password"));
    login(&mut b, &base, "admin", ADMIN).await;

    // Overview: the parked lead flow is red; endpoints are listed.
    let row = "document.querySelector('tr.flow[data-route=leads_to_partner]')";
    b.wait_for(&format!(
        "{row} && {row}.querySelector('.dot.red') !== null"
    ))
    .await;
    let text = b.text().await;
    assert!(text.contains("osm_vehicles_soap_to_crm"), "{text}");
    assert!(text.contains("partner_out"), "{text}");
    b.screenshot("02-overview", false).await;
    // The fragment refreshes every 5 s without a full reload.
    b.eval("window.__noReload = true; window.__stamp = document.querySelector('#overview p.muted').textContent")
        .await;
    b.wait_for(
        "window.__noReload === true && document.querySelector('#overview p.muted').textContent !== window.__stamp",
    )
    .await;

    // Search a VIN from the header box and open its record.
    b.eval(&format!(
        "document.querySelector('input[type=search]').value = '{VIN_D0001}'"
    ))
    .await;
    b.click_and_wait("form.search button").await;
    let record = record_id(&hub, VIN_D0001).await;
    b.wait_for(&format!(
        "document.querySelector('a[href=\"/ui/messages/{record}\"]') !== null"
    ))
    .await;
    b.screenshot("03-search-vin", false).await;
    b.click_and_wait(&format!("a[href=\"/ui/messages/{record}\"]"))
        .await;
    let text = b.text().await;
    assert!(
        text.contains(VIN_D0001) && text.contains("crm_store"),
        "{text}"
    );
    assert!(text.contains("Causal chain"));
    b.screenshot("04-message-detail", true).await;

    // Parked: open the parked lead, preview v2, replay.
    b.goto(&format!("{base}/ui/parked")).await;
    assert!(b.text().await.contains("unknown field legacy_code"));
    b.screenshot("05-parked", false).await;
    b.click_and_wait("table.deliveries td a").await;
    b.eval("document.querySelector('select[name=mapping_version]').value = '2'")
        .await;
    b.eval("document.querySelector('button[hx-get]').click()")
        .await;
    b.wait_for("document.querySelector('#preview pre') !== null")
        .await;
    let preview = b.eval("document.querySelector('#preview').innerText").await;
    let preview = preview.as_str().unwrap();
    assert!(
        preview.contains("partner_ref") && !preview.contains("legacy_code"),
        "{preview}"
    );
    b.screenshot("06-replay-preview", true).await;
    b.click_and_wait("#replay button[type=submit]").await;
    assert!(
        b.text()
            .await
            .contains("Replayed 2 record(s) through mapping v2")
    );
    hub.settle(30).await;
    let lead_id = record_id(&hub, "WEB-BROWSER-1").await;
    let (_, d) = hub.get(&format!("/api/v1/messages/{lead_id}"), ADMIN).await;
    let statuses: Vec<&str> = d["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["target"] == "partner_out")
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["superseded", "delivered"], "{d}");
    b.goto(&format!("{base}/ui/messages/{lead_id}")).await;
    b.screenshot("07-after-replay", true).await;

    // Approve the key-field change with a comment.
    b.goto(&format!("{base}/ui/approvals")).await;
    assert!(b.text().await.contains("王大明"));
    b.screenshot("08-approvals", false).await;
    // The SOAP owner with the same mobile proposed a name change too: pick the DMS one.
    b.eval(
        "const tr = [...document.querySelectorAll('tr.approval')].find(t => t.innerText.includes('王大明'));          tr.querySelector('input[name=comment]').value = '身份证已核对'; tr.dataset.pick = '1';",
    )
    .await;
    b.click_and_wait("tr.approval[data-pick='1'] button[value=approve]")
        .await;
    assert!(b.text().await.contains("approved"));
    let (_, a) = hub.get("/api/v1/approvals?status=approved", ADMIN).await;
    assert_eq!(a["approvals"][0]["new"], "王大明", "{a}");
    assert_eq!(a["approvals"][0]["comment"], "身份证已核对");
    let customer = a["approvals"][0]["customer_id"].as_str().unwrap();
    let (_, cust) = hub
        .get(&format!("/api/v1/customers/{customer}"), ADMIN)
        .await;
    assert_eq!(cust["name"], "王大明");

    b.goto(&format!("{base}/ui/audit")).await;
    let audit = b.text().await;
    assert!(audit.contains("replay") && audit.contains("approve") && audit.contains("login"));
    b.screenshot("09-audit", false).await;

    // A phone-sized overview.
    b.viewport(390, 844, true).await;
    b.goto(&format!("{base}/ui/")).await;
    b.screenshot("10-overview-phone", false).await;
    b.viewport(1280, 800, false).await;
    logout(&mut b).await;

    // Dealer IT of D0001: its own vehicle yes, D0002's no.
    login(&mut b, &base, "it-D0001", "demo-it-D0001").await;
    let other = record_id(&hub, VIN_D0002).await;
    b.goto(&format!("{base}/ui/messages/{other}")).await;
    let text = b.text().await;
    assert!(text.contains("404") && text.contains("not found"), "{text}");
    b.screenshot("11-dealer-it-other-dealer-404", false).await;
    b.goto(&format!("{base}/ui/search?q={VIN_D0002}")).await;
    assert!(b.text().await.contains("0 message(s)"));
    b.goto(&format!("{base}/ui/search?q={VIN_D0001}")).await;
    b.wait_for(&format!(
        "document.querySelector('a[href=\"/ui/messages/{record}\"]') !== null"
    ))
    .await;
    b.screenshot("12-dealer-it-search", false).await;
    hub.stop().await;
}
