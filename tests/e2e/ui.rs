//! The dashboard's handlers through the real app: login (failure, lockout, logout), every page
//! by role (anonymous, headquarters, dealer IT), CSRF refusal, dealer scoping on search, detail
//! and bulk actions, replay with preview, approvals, bulk retry through UI and API, audit log.

use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{ADMIN, Backend, IT_D0001, TestConfig, TestHub, sample};

/// A browser-like client: keeps the session cookie (and the login form's pre-session cookie) by
/// hand and never follows redirects, so tests see the 303s the dashboard answers with.
pub struct UiClient {
    pub base: String,
    client: reqwest::Client,
    /// `synchub_session=<id>` once signed in.
    pub cookie: Option<String>,
    pub csrf: String,
    /// `synchub_login=<token>` from the last login page.
    pub login_cookie: Option<String>,
    /// The CSRF token in the last login page's form.
    pub login_token: String,
}

pub struct Page {
    pub status: u16,
    pub location: String,
    pub body: String,
}

impl UiClient {
    pub fn anonymous(hub: &TestHub) -> UiClient {
        UiClient {
            base: hub.base.clone(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: None,
            csrf: String::new(),
            login_cookie: None,
            login_token: String::new(),
        }
    }

    pub async fn login(hub: &TestHub, user: &str, password: &str) -> UiClient {
        let mut c = UiClient::anonymous(hub);
        let p = c.try_login(user, password).await;
        assert_eq!(p.status, 303, "login of {user} failed: {}", p.body);
        let home = c.get("/ui/").await;
        assert_eq!(home.status, 200, "{}", home.body);
        c.csrf = csrf_of(&home.body);
        c
    }

    /// Opens the login page, as a browser does before signing in (sending the pre-session
    /// cookie it holds): keeps the page's pre-session cookie and form token.
    pub async fn login_form(&mut self) -> Page {
        let mut req = self.client.get(format!("{}/ui/login", self.base));
        if let Some(c) = &self.login_cookie {
            req = req.header("Cookie", c);
        }
        let r = req.send().await.expect("login form request");
        self.keep_cookies(&r);
        let p = page(r).await;
        assert_eq!(p.status, 200, "{}", p.body);
        self.login_token = csrf_of(&p.body);
        p
    }

    /// Signs in through the login page: GET the form, POST it with its token and cookie.
    pub async fn try_login(&mut self, user: &str, password: &str) -> Page {
        self.login_form().await;
        let (cookie, token) = (self.login_cookie.clone(), self.login_token.clone());
        self.post_login(
            &[
                ("username", user),
                ("password", password),
                ("next", "/ui/"),
                ("csrf", &token),
            ],
            cookie.as_deref(),
        )
        .await
    }

    /// Posts the login form as given, with `cookie` as the request's only cookie.
    pub async fn post_login(&mut self, form: &[(&str, &str)], cookie: Option<&str>) -> Page {
        let mut req = self
            .client
            .post(format!("{}/ui/login", self.base))
            .header("Content-Type", FORM)
            .body(form_body(form));
        if let Some(c) = cookie {
            req = req.header("Cookie", c);
        }
        let r = req.send().await.expect("login request");
        self.keep_cookies(&r);
        page(r).await
    }

    /// Keeps what the response's `Set-Cookie`s set, checking the flags every dashboard cookie has.
    fn keep_cookies(&mut self, r: &reqwest::Response) {
        for c in r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            assert!(c.contains("HttpOnly"), "{c}");
            assert!(c.contains("SameSite=Strict"), "{c}");
            assert!(c.contains("Path=/ui"), "{c}");
            let pair = c.split(';').next().unwrap_or_default().to_string();
            let (name, value) = pair.split_once('=').unwrap_or((&pair, ""));
            let kept = (!value.is_empty()).then(|| pair.clone());
            match name {
                "synchub_session" => self.cookie = kept,
                "synchub_login" => self.login_cookie = kept,
                other => panic!("unexpected cookie {other}: {c}"),
            }
        }
    }

    pub async fn get(&self, path: &str) -> Page {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", c);
        }
        page(req.send().await.expect("request")).await
    }

    /// Posts a form with this session's CSRF token added.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        fields.push(("csrf", &self.csrf));
        self.post_raw(path, &fields).await
    }

    pub async fn post_raw(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("Content-Type", FORM)
            .body(form_body(form));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", c);
        }
        page(req.send().await.expect("request")).await
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

/// An urlencoded form body (reqwest's `form` feature is not enabled in this workspace).
pub fn form_body(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn page(r: reqwest::Response) -> Page {
    Page {
        status: r.status().as_u16(),
        location: r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: r.text().await.unwrap_or_default(),
    }
}

pub fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in page: {html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

pub fn soap_sample() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/samples/soap/SyncVehicles.request.xml"),
    )
    .expect("sample SOAP request")
}

pub async fn post_soap(hub: &TestHub, body: String) {
    let r = hub
        .client
        .post(format!("{}/soap/osm/VehicleService", hub.base))
        .header("Content-Type", "text/xml; charset=utf-8")
        .header("SOAPAction", "\"urn:synchub:osm:vehicle:v1#SyncVehicles\"")
        .body(body)
        .send()
        .await
        .expect("SOAP request");
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
}

/// The record message of a business key, found through the ops API.
pub async fn record_id(hub: &TestHub, key: &str) -> String {
    let (_, found) = hub
        .get(
            &format!("/api/v1/messages?key={key}&status=accepted"),
            ADMIN,
        )
        .await;
    found["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["kind"] == "record"))
        .and_then(|m| m["id"].as_str())
        .unwrap_or_else(|| panic!("no record for {key}: {found}"))
        .to_string()
}

const VIN_D0001: &str = "LHG0LVF20VB714970";
/// The sample's second vehicle (D0002) has a bad check digit; tests fix it to have one of each.
const VIN_D0002: &str = "LHGHL1LV6VD172367";

pub fn soap_sample_two_dealers() -> String {
    soap_sample().replace("LHGHL1LV0VD172367", VIN_D0002)
}

/// A hub whose DMS customers also go to a failing partner (no lane key, two attempts), so
/// every dealer's customer ends up with a parked delivery.
async fn hub_with_parking_partner(partner: &MockServer) -> TestHub {
    hub_with_parking_partner_on(partner, Backend::Sqlite).await
}

async fn hub_with_parking_partner_on(partner: &MockServer, backend: Backend) -> TestHub {
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("partner down"))
        .mount(partner)
        .await;
    let cfg = TestConfig::shipped().with_partner(&partner.uri());
    cfg.write(
        "routes/dms_customers_to_partner.toml",
        "from = \"partners_rest_in\"\nrecord_type = \"dms_customer\"\nvalidate = \"dms_customer\"\n\
         to = [\"partner_out\"]\n[retry]\nmax_attempts = 2\nbackoff_ms = 10\nmax_backoff_ms = 20\n",
    );
    TestHub::spawn_with(backend, cfg, &[]).await
}

fn dms_customer(dealer: &str, n: u32) -> Value {
    let mut c = sample("rest/dms-customers.request.json")[0].clone();
    c["source_ref"] = json!(format!("DMS-{dealer}-UI-{n}"));
    c["dealer_code"] = json!(dealer);
    c["mobile"] = json!(format!("1370000{dealer_n}{n:02}", dealer_n = &dealer[3..]));
    c["id_no"] = Value::Null;
    c
}

async fn post_customer(hub: &TestHub, dealer: &str, n: u32) -> String {
    let (s, body) = hub
        .post_records(
            "/api/v1/dms/customers",
            &format!("demo-dms-{dealer}"),
            &dms_customer(dealer, n),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    body["accepted"][0]["id"].as_str().unwrap().to_string();
    record_id(hub, &format!("DMS-{dealer}-UI-{n}")).await
}

async fn parked_ids(hub: &TestHub) -> Vec<(i64, String)> {
    sqlx::query_as::<_, (i64, String)>(
        "SELECT id, dealer_code FROM deliveries WHERE target = 'partner_out' AND status = 'parked' ORDER BY id",
    )
    .fetch_all(hub.store.pool())
    .await
    .expect("parked deliveries")
}

async fn audit(hub: &TestHub, action: &str) -> Vec<Value> {
    let (s, a) = hub
        .get(&format!("/api/v1/audit?action={action}"), ADMIN)
        .await;
    assert_eq!(s, 200, "{a}");
    a["entries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn login_failure_lockout_and_logout() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    let mut c = UiClient::anonymous(&hub);
    let form = c.get("/ui/login").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("name=\"username\""), "{}", form.body);
    assert!(form.body.contains("type=\"password\""));

    let bad = c.try_login("admin", "wrong").await;
    assert_eq!(bad.status, 401);
    assert!(
        bad.body.contains("Wrong user name or password"),
        "{}",
        bad.body
    );
    assert!(c.cookie.is_none(), "no session for a failed login");
    // The token of another operator does not sign in as this one.
    assert_eq!(c.try_login("admin", IT_D0001).await.status, 401);
    for _ in 0..3 {
        c.try_login("admin", "wrong").await;
    }
    let locked = c.try_login("admin", "demo-admin").await;
    assert_eq!(locked.status, 429, "locked out after 5 failures");
    assert!(locked.body.contains("Too many failed sign-ins"));
    let failures = audit(&hub, "login_failed").await;
    assert_eq!(failures.len(), 6, "{failures:?}");
    assert_eq!(failures[0]["user"], "admin");

    // Another user is not locked out by admin's failures.
    let it = UiClient::login(&hub, "it-D0001", IT_D0001).await;
    assert_eq!(audit(&hub, "login").await[0]["user"], "it-D0001");
    let out = it.post("/ui/logout", &[]).await;
    assert_eq!(out.status, 303);
    assert_eq!(out.location, "/ui/login");
    let after = it.get("/ui/").await;
    assert_eq!(after.status, 303, "the session is gone after logout");
    assert!(after.location.starts_with("/ui/login"));
    assert_eq!(audit(&hub, "logout").await.len(), 1);
    hub.stop().await;
}

#[tokio::test]
async fn pages_answer_by_role() {
    let partner = MockServer::start().await;
    let hub = hub_with_parking_partner(&partner).await;
    let own = post_customer(&hub, "D0001", 1).await;
    let other = post_customer(&hub, "D0002", 1).await;
    hub.settle(30).await;
    let (own_delivery, _) = parked_ids(&hub)
        .await
        .into_iter()
        .find(|(_, d)| d == "D0001")
        .expect("a parked D0001 delivery");

    let anon = UiClient::anonymous(&hub);
    let admin = UiClient::login(&hub, "admin", ADMIN).await;
    let it = UiClient::login(&hub, "it-D0001", IT_D0001).await;
    // (path, admin, it-D0001); anonymous always gets the login redirect.
    let own_msg = format!("/ui/messages/{own}");
    let other_msg = format!("/ui/messages/{other}");
    let preview = format!("/ui/messages/{own}/preview");
    let other_preview = format!("/ui/messages/{other}/preview");
    let table: &[(&str, u16, u16)] = &[
        ("/ui/", 200, 200),
        ("/ui/fragments/overview", 200, 200),
        ("/ui/search?q=D0001", 200, 200),
        (&own_msg, 200, 200),
        (&other_msg, 200, 404),
        (&preview, 200, 200),
        (&other_preview, 200, 404),
        ("/ui/parked", 200, 200),
        ("/ui/parked?dealer=D0002", 200, 404),
        ("/ui/rejected", 200, 200),
        ("/ui/approvals", 200, 200),
        ("/ui/dealers/D0001", 200, 200),
        ("/ui/dealers/D0002", 200, 404),
        ("/ui/audit", 200, 404),
        (
            "/ui/messages/00000000-0000-0000-0000-000000000000",
            404,
            404,
        ),
    ];
    for (path, want_admin, want_it) in table {
        let a = anon.get(path).await;
        assert_eq!(a.status, 303, "anonymous {path}");
        assert!(
            a.location.starts_with("/ui/login?next="),
            "{path}: {}",
            a.location
        );
        assert_eq!(admin.get(path).await.status, *want_admin, "admin {path}");
        assert_eq!(it.get(path).await.status, *want_it, "it-D0001 {path}");
    }
    // Assets and the login form need no session.
    assert_eq!(anon.get("/ui/assets/htmx.min.js").await.status, 200);
    assert_eq!(anon.get("/ui/assets/app.css").await.status, 200);
    assert_eq!(anon.get("/ui/login").await.status, 200);

    // Every page has the one search box and UTF-8.
    for path in [
        "/ui/",
        "/ui/search",
        "/ui/parked",
        "/ui/approvals",
        &own_msg,
    ] {
        let p = admin.get(path).await;
        assert_eq!(p.body.matches("type=\"search\"").count(), 1, "{path}");
        assert!(p.body.contains("<meta charset=\"utf-8\">"), "{path}");
    }

    // Actions: anonymous is sent to login, a dealer IT user cannot touch another dealer's.
    let retry = format!("/ui/deliveries/{own_delivery}/retry");
    assert_eq!(anon.post_raw(&retry, &[]).await.status, 303);
    let other_delivery = parked_ids(&hub)
        .await
        .into_iter()
        .find(|(_, d)| d == "D0002")
        .unwrap()
        .0;
    assert_eq!(
        it.post(&format!("/ui/deliveries/{other_delivery}/retry"), &[])
            .await
            .status,
        404
    );
    assert_eq!(
        it.post(&format!("/ui/messages/{other}/replay"), &[])
            .await
            .status,
        404
    );
    let r = it.post(&retry, &[("back", &own_msg)]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.location.starts_with(&own_msg), "{}", r.location);
    hub.stop().await;
}

#[tokio::test]
async fn actions_without_the_csrf_token_are_refused() {
    let partner = MockServer::start().await;
    let hub = hub_with_parking_partner(&partner).await;
    let msg = post_customer(&hub, "D0001", 2).await;
    hub.settle(30).await;
    let (delivery, _) = parked_ids(&hub).await[0].clone();
    let admin = UiClient::login(&hub, "admin", ADMIN).await;
    let retry = format!("/ui/deliveries/{delivery}/retry");
    let replay = format!("/ui/messages/{msg}/replay");
    for (path, form) in [
        (retry.as_str(), vec![]),
        (retry.as_str(), vec![("csrf", "0".repeat(64))]),
        (replay.as_str(), vec![]),
        (
            "/ui/deliveries/bulk",
            vec![("action", "retry".to_string()), ("status", "parked".into())],
        ),
        ("/ui/approvals/1", vec![("decision", "approve".to_string())]),
        ("/ui/logout", vec![]),
    ] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let p = admin.post_raw(path, &form).await;
        assert_eq!(p.status, 403, "{path} without a valid token");
        assert!(p.body.contains("CSRF"), "{}", p.body);
    }
    // Nothing happened.
    assert_eq!(parked_ids(&hub).await.len(), 1);
    assert!(audit(&hub, "retry").await.is_empty());
    // The htmx header is accepted in place of the form field.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}{retry}", hub.base))
        .header("Cookie", admin.cookie.clone().unwrap())
        .header("X-CSRF-Token", &admin.csrf)
        .header("Content-Type", FORM)
        .body(form_body(&[("back", "/ui/parked")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(audit(&hub, "retry").await.len(), 1);
    hub.stop().await;
}

#[tokio::test]
async fn search_and_detail_show_a_soap_vehicle_with_its_chain_and_scope() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    post_soap(&hub, soap_sample_two_dealers()).await;
    hub.settle(30).await;
    let admin = UiClient::login(&hub, "admin", ADMIN).await;
    let it = UiClient::login(&hub, "it-D0001", IT_D0001).await;

    let found = admin.get(&format!("/ui/search?q={VIN_D0001}")).await;
    assert_eq!(found.status, 200);
    let id = record_id(&hub, VIN_D0001).await;
    assert!(
        found.body.contains(&format!("/ui/messages/{id}")),
        "{}",
        found.body
    );
    assert!(found.body.contains("osm_vehicles_soap_in"));
    // Lower case and surrounding blanks still find it (the API's search semantics).
    let (_, api) = hub
        .get(&format!("/api/v1/messages?key={VIN_D0001}"), ADMIN)
        .await;
    let api_ids: Vec<&str> = api["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for m in &api_ids {
        assert!(found.body.contains(m), "UI shows what the API shows: {m}");
    }

    let detail = admin.get(&format!("/ui/messages/{id}")).await;
    assert_eq!(detail.status, 200);
    let b = &detail.body;
    assert!(b.contains(VIN_D0001));
    assert!(b.contains("crm_store"), "the CRM delivery is listed");
    assert!(b.contains("badge delivered"), "{b}");
    assert!(b.contains("Causal chain"));
    // The transport (the SOAP request) is the parent: it links up and shows indented XML.
    let (_, d) = hub.get(&format!("/api/v1/messages/{id}"), ADMIN).await;
    let parent = d["parent_id"].as_str().unwrap();
    assert!(b.contains(&format!("/ui/messages/{parent}")), "parent link");
    let transport = admin.get(&format!("/ui/messages/{parent}")).await;
    assert!(
        transport.body.contains("\n  &#60;soapenv:Body&#62;"),
        "XML payload shown escaped and indented: {}",
        transport.body
    );
    assert!(
        transport.body.contains(&format!("/ui/messages/{id}")),
        "child link"
    );
    assert!(
        !transport.body.contains("demo-osm"),
        "the WS-Security password stays redacted"
    );

    // Dealer IT: sees its own vehicle, not D0002's, in search and detail.
    let own = it.get(&format!("/ui/search?q={VIN_D0001}")).await;
    assert!(own.body.contains(&format!("/ui/messages/{id}")));
    let other_id = record_id(&hub, VIN_D0002).await;
    let other = it.get(&format!("/ui/search?q={VIN_D0002}")).await;
    assert_eq!(other.status, 200);
    assert!(!other.body.contains(&other_id), "{}", other.body);
    assert!(other.body.contains("0 message(s)"), "{}", other.body);
    assert_eq!(
        it.get(&format!("/ui/messages/{other_id}")).await.status,
        404
    );
    hub.stop().await;
}

#[tokio::test]
async fn replay_with_preview_after_a_mapping_fix() {
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
        "# v2: the fix.\n{partner_ref: .source_ref, \"姓名\": .name}\n",
    );
    cfg.write(
        "routes/leads_to_partner.toml",
        "from = \"partners_rest_in\"\nrecord_type = \"lead\"\nvalidate = \"lead\"\nmapping = \"lead_to_partner\"\n\
         mapping_version = 1\nto = [\"partner_out\"]\n",
    );
    let hub = TestHub::spawn_with(Backend::Sqlite, cfg, &[]).await;
    let mut lead = sample("rest/lead.request.json");
    lead["source_ref"] = json!("WEB-UI-1");
    let (s, _) = hub
        .post_records("/api/v1/leads", "demo-website", &lead)
        .await;
    assert_eq!(s, 202);
    hub.settle(30).await;
    let id = record_id(&hub, "WEB-UI-1").await;
    let admin = UiClient::login(&hub, "admin", ADMIN).await;
    let detail = admin.get(&format!("/ui/messages/{id}")).await;
    assert!(
        detail.body.contains("no partner code for WEB-UI-1"),
        "{}",
        detail.body
    );
    assert!(detail.body.contains("<option value=\"2\">v2</option>"));

    let broken = admin.get(&format!("/ui/messages/{id}/preview")).await;
    assert!(broken.body.contains("Mapping fails"), "{}", broken.body);
    let p = admin
        .get(&format!("/ui/messages/{id}/preview?mapping_version=2"))
        .await;
    assert_eq!(p.status, 200);
    assert!(
        p.body.contains("partner_ref") && p.body.contains("WEB-UI-1"),
        "{}",
        p.body
    );
    assert!(p.body.contains("姓名"), "Chinese keys survive: {}", p.body);
    assert!(p.body.contains("nothing has been sent"));
    let posts = || async {
        partner
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.method.as_str() == "POST")
            .count()
    };
    assert_eq!(posts().await, 0, "a preview sends nothing");
    let unknown = admin
        .get(&format!("/ui/messages/{id}/preview?mapping_version=9"))
        .await;
    assert!(unknown.body.contains("no version 9"), "{}", unknown.body);

    let r = admin
        .post(
            &format!("/ui/messages/{id}/replay"),
            &[("mapping_version", "2")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    // The replay also re-sends the lead.assigned event over the broker: give it time.
    hub.settle(90).await;
    assert_eq!(posts().await, 1);
    let after = admin.get(&r.location).await;
    assert!(
        after
            .body
            .contains("Replayed 2 record(s) through mapping v2"),
        "{}",
        after.body
    );
    assert!(after.body.contains("lead_to_partner v2"));
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT status FROM deliveries WHERE message_id = $1 AND target = 'partner_out' ORDER BY id",
    )
    .bind(&id)
    .fetch_all(hub.store.pool())
    .await
    .unwrap();
    assert_eq!(
        statuses,
        ["superseded", "delivered"],
        "the replay closes the rejected delivery it replaces"
    );
    assert!(
        after.body.contains("superseded by replay"),
        "{}",
        after.body
    );
    let entries = audit(&hub, "replay").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["user"], "admin");
    assert_eq!(entries[0]["channel"], "ui");
    assert_eq!(entries[0]["target"], id);
    assert_eq!(entries[0]["after"]["mapping_version"], 2);
    hub.stop().await;
}

#[tokio::test]
async fn approvals_are_decided_from_the_page() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
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
    let admin = UiClient::login(&hub, "admin", ADMIN).await;
    let it = UiClient::login(&hub, "it-D0001", IT_D0001).await;
    let page = admin.get("/ui/approvals").await;
    assert!(page.body.contains("王大明"), "{}", page.body);
    let (_, a) = hub.get("/api/v1/approvals", ADMIN).await;
    let approval = a["approvals"][0]["id"].as_i64().unwrap();
    let customer = a["approvals"][0]["customer_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Dealer IT sees its dealer's pending change but may not decide it.
    let seen = it.get("/ui/approvals").await;
    assert!(seen.body.contains("王大明"));
    assert!(seen.body.contains("headquarters decides"));
    let refused = it
        .post(
            &format!("/ui/approvals/{approval}"),
            &[("decision", "approve")],
        )
        .await;
    assert_eq!(refused.status, 403);

    let r = admin
        .post(
            &format!("/ui/approvals/{approval}"),
            &[("decision", "approve"), ("comment", "身份证已核对")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let (_, cust) = hub
        .get(&format!("/api/v1/customers/{customer}"), ADMIN)
        .await;
    assert_eq!(cust["name"], "王大明");
    let (_, done) = hub.get("/api/v1/approvals?status=approved", ADMIN).await;
    assert_eq!(done["approvals"][0]["comment"], "身份证已核对");
    let after = admin.get(&r.location).await;
    assert!(after.body.contains("No pending approvals"));
    let e = &audit(&hub, "approve").await[0];
    assert_eq!(e["detail"], "身份证已核对");
    assert_eq!(e["target"], format!("approval:{approval}"));
    // Deciding again is a conflict, shown as a page.
    let again = admin
        .post(
            &format!("/ui/approvals/{approval}"),
            &[("decision", "reject")],
        )
        .await;
    assert_eq!(again.status, 409);
    assert!(again.body.contains("already approved"), "{}", again.body);
    hub.stop().await;
}

#[tokio::test]
async fn bulk_retry_by_dealer_and_since_through_ui_and_api_sqlite() {
    bulk_retry_by_dealer_and_since_through_ui_and_api(Backend::Sqlite).await;
}

#[tokio::test]
async fn bulk_retry_by_dealer_and_since_through_ui_and_api_postgres() {
    bulk_retry_by_dealer_and_since_through_ui_and_api(Backend::Postgres).await;
}

async fn bulk_retry_by_dealer_and_since_through_ui_and_api(backend: Backend) {
    let partner = MockServer::start().await;
    let hub = hub_with_parking_partner_on(&partner, backend).await;
    for n in 1..=2 {
        post_customer(&hub, "D0001", 10 + n).await;
    }
    post_customer(&hub, "D0002", 10).await;
    hub.settle(30).await;
    let parked = parked_ids(&hub).await;
    assert_eq!(parked.len(), 3, "{parked:?}");

    let admin = UiClient::login(&hub, "admin", ADMIN).await;
    let it = UiClient::login(&hub, "it-D0001", IT_D0001).await;
    let page = admin.get("/ui/parked?dealer=D0001&since=00:00").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("2 parked deliveries"), "{}", page.body);
    assert!(page.body.contains("partner down"));
    let it_page = it.get("/ui/parked").await;
    assert!(
        it_page.body.contains("2 parked deliveries"),
        "dealer IT sees only its own"
    );

    // The partner is fixed; retry everything parked for D0001 from the page.
    partner.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&partner)
        .await;
    let r = admin
        .post(
            "/ui/deliveries/bulk",
            &[
                ("action", "retry"),
                ("status", "parked"),
                ("dealer", "D0001"),
                ("since", "00:00"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.location.contains("2%20deliveries%20queued"),
        "{}",
        r.location
    );
    hub.settle(30).await;
    let left = parked_ids(&hub).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1, "D0002", "other dealers untouched");

    // A dealer IT user cannot reach another dealer through the bulk form or the API.
    let r = it
        .post(
            "/ui/deliveries/bulk",
            &[
                ("action", "retry"),
                ("status", "parked"),
                ("dealer", "D0002"),
            ],
        )
        .await;
    assert_eq!(r.status, 404);
    let (s, _) = hub
        .post(
            "/api/v1/deliveries/retry",
            IT_D0001,
            Some(json!({"status": "parked", "dealer_code": "D0002"})),
        )
        .await;
    assert_eq!(s, 404);
    // Without a dealer filter, dealer IT's bulk retry covers only its own dealer: nothing left.
    let (s, r) = hub
        .post(
            "/api/v1/deliveries/retry",
            IT_D0001,
            Some(json!({"status": "parked"})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["retried"], 0);
    // A status filter is required; bad input is named.
    let (s, e) = hub
        .post("/api/v1/deliveries/retry", ADMIN, Some(json!({})))
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["code"], "missing_status");
    let (s, e) = hub
        .post(
            "/api/v1/deliveries/retry",
            ADMIN,
            Some(json!({"status": "parked", "since": "yesterday"})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("yesterday")
    );
    // Headquarters through the API: the D0002 one goes.
    let (s, r) = hub
        .post(
            "/api/v1/deliveries/retry",
            ADMIN,
            Some(json!({"status": "parked", "dealer_code": "D0002", "target": "partner_out"})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["retried"], 1);
    hub.settle(30).await;
    assert!(parked_ids(&hub).await.is_empty());

    let bulk = audit(&hub, "bulk_retry").await;
    assert_eq!(bulk.len(), 3, "{bulk:?}");
    assert_eq!(bulk[2]["channel"], "ui");
    assert_eq!(bulk[2]["after"]["retried"], 2);
    assert_eq!(bulk[0]["channel"], "api");
    // The audit log is headquarters only.
    assert_eq!(hub.get("/api/v1/audit", IT_D0001).await.0, 404);
    let page = admin.get("/ui/audit?action=bulk_retry").await;
    assert_eq!(page.body.matches("class=\"audit-entry\"").count(), 3);
    hub.stop().await;
}

#[tokio::test]
async fn api_actions_are_audited_sqlite() {
    api_actions_are_audited(Backend::Sqlite).await;
}

#[tokio::test]
async fn api_actions_are_audited_postgres() {
    api_actions_are_audited(Backend::Postgres).await;
}

async fn api_actions_are_audited(backend: Backend) {
    let partner = MockServer::start().await;
    let hub = hub_with_parking_partner_on(&partner, backend).await;
    let msg = post_customer(&hub, "D0001", 30).await;
    hub.settle(30).await;
    let (delivery, _) = parked_ids(&hub).await[0].clone();
    assert_eq!(
        hub.post(&format!("/api/v1/deliveries/{delivery}/retry"), ADMIN, None)
            .await
            .0,
        200
    );
    assert_eq!(
        hub.post(&format!("/api/v1/messages/{msg}/replay"), IT_D0001, None)
            .await
            .0,
        202
    );
    let (_, d) = hub.get(&format!("/api/v1/messages/{msg}"), ADMIN).await;
    let customer = d["entity_id"].as_str().unwrap().to_string();
    let (s, _) = hub
        .put(
            &format!("/api/v1/customers/{customer}"),
            ADMIN,
            json!({"city": "佛山"}),
        )
        .await;
    assert_eq!(s, 200);
    let retry = &audit(&hub, "retry").await[0];
    assert_eq!(retry["before"]["status"], "parked");
    assert_eq!(retry["after"]["status"], "pending");
    assert_eq!(retry["channel"], "api");
    let replay = &audit(&hub, "replay").await[0];
    assert_eq!(replay["user"], "it-D0001");
    assert_eq!(replay["dealer_code"], "D0001");
    let put = &audit(&hub, "put_customer").await[0];
    assert_eq!(put["before"]["city"], "广州");
    assert_eq!(put["after"]["changed_fields"], json!(["city"]));
    // Preview through the API: what the replay would send, nothing journaled.
    let (s, p) = hub
        .post(&format!("/api/v1/messages/{msg}/preview"), ADMIN, None)
        .await;
    assert_eq!(s, 200, "{p}");
    let targets: Vec<&str> = p["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["target"].as_str().unwrap())
        .collect();
    assert!(targets.contains(&"partner_out"), "{p}");
    hub.stop().await;
}
