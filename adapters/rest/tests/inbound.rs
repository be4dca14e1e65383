//! Inbound REST against the SDK's `FakeInbox`: every status path of INTERFACES §1, the 202 shape,
//! refusal journaling, and the SDK inbound conformance suite. Driven with `Router::oneshot`, plus
//! one test over a real socket for what only a connection shows (peer address, early 413).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use synchub_adapter_rest::inbound::{
    PATH_DMS_CAMPAIGN_RESULTS, PATH_DMS_CUSTOMERS, PATH_DMS_LEAD_RESULTS, PATH_LEADS,
};
use synchub_adapter_rest::{InboundConfig, router};
use synchub_adapter_sdk::testkit::{self, FakeInbox, InboundHarness, PATIENCE, PartnerView};
use synchub_adapter_sdk::{ContentType, Principal};
use tower::ServiceExt;

const KEY_DMS1: &str = "demo-dms-D0001";
const KEY_OSM: &str = "demo-osm";
const KEY_CALLCENTER: &str = "demo-callcenter";
const JSON: &str = "application/json";

fn principal(system: &str, dealer: Option<&str>) -> Principal {
    Principal {
        system: system.into(),
        dealer_code: dealer.map(str::to_owned),
    }
}

fn config() -> InboundConfig {
    InboundConfig::new("partners_rest_in")
        .with_key(KEY_DMS1, principal("dms", Some("D0001")))
        .with_key(KEY_OSM, principal("osm", None))
        .with_key(KEY_CALLCENTER, principal("callcenter", None))
}

struct App {
    inbox: Arc<FakeInbox>,
    router: Router,
}

impl App {
    fn new() -> App {
        App::with(config())
    }

    fn with(cfg: InboundConfig) -> App {
        let inbox = Arc::new(FakeInbox::new());
        App {
            router: router(cfg, inbox.clone()),
            inbox,
        }
    }

    async fn call(&self, req: Request<Body>) -> Answer {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, path: &str, key: Option<&str>, body: impl Into<Body>) -> Answer {
        self.call(request(path, key, Some(JSON), body)).await
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

fn request(
    path: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Request<Body> {
    let mut b = Request::post(path);
    if let Some(k) = key {
        b = b.header("X-Api-Key", k);
    }
    if let Some(ct) = content_type {
        b = b.header("Content-Type", ct);
    }
    b.body(body.into()).unwrap()
}

fn dms_customers() -> Value {
    json!([
        {"source_ref": "DMS-D0001-C000123", "dealer_code": "D0001", "name": "王小明", "mobile": "+86 139 1234 5678"},
        {"source_ref": "DMS-D0001-C000124", "dealer_code": "D0001", "name": "李四", "mobile": "12345"}
    ])
}

fn lead() -> Value {
    json!({"source_ref": "WEB-20261125-000981", "name": "周杰", "mobile": "13760001234"})
}

// --- 401 -----------------------------------------------------------------------------------

#[tokio::test]
async fn missing_key_is_401_and_journaled() {
    let app = App::new();
    let body = lead().to_string();
    let a = app.post(PATH_LEADS, None, body.clone()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.code(), "unauthorized");
    assert_eq!(a.body["error"]["message"], "missing X-Api-Key header");
    assert_eq!(a.body["error"]["details"], json!([]));

    let r = app.inbox.last_refusal();
    assert_eq!(r.code, "unauthorized");
    assert_eq!(r.envelope.body, Bytes::from(body));
    assert_eq!(r.envelope.principal, None);
    assert_eq!(r.envelope.endpoint, "partners_rest_in");
    assert_eq!(r.envelope.headers["rest.path"], PATH_LEADS);
    assert_eq!(r.envelope.headers["rest.method"], "POST");
    assert_eq!(app.inbox.accept_calls(), 0);
}

#[tokio::test]
async fn unknown_key_is_401_and_the_key_is_not_journaled() {
    let app = App::new();
    let a = app
        .post(PATH_LEADS, Some("guessed-key-123"), lead().to_string())
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.body["error"]["message"], "unknown API key");
    let r = app.inbox.last_refusal();
    assert_eq!(r.code, "unauthorized");
    let journaled = format!("{:?} {}", r.envelope.headers, r.reason);
    assert!(!journaled.contains("guessed-key-123"), "{journaled}");
}

#[tokio::test]
async fn unauthenticated_bodies_are_journaled_only_in_part() {
    let app = App::new();
    let body = vec![b'x'; 200 * 1024];
    let a = app.post(PATH_LEADS, None, body).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let r = app.inbox.last_refusal();
    assert_eq!(
        r.envelope.body.len(),
        synchub_adapter_rest::inbound::UNAUTHENTICATED_BODY_BYTES
    );
    assert_eq!(r.envelope.headers["rest.truncated"], "true");
}

// --- 403 -----------------------------------------------------------------------------------

#[tokio::test]
async fn dealer_mismatch_is_403_for_the_whole_request_with_the_documented_body() {
    let app = App::new();
    let mut records = dms_customers();
    records[0]["dealer_code"] = json!("D0002");
    let a = app
        .post(PATH_DMS_CUSTOMERS, Some(KEY_DMS1), records.to_string())
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // Exactly samples/rest/dms-customers.response-403.json.
    assert_eq!(
        a.body,
        json!({"error": {"code": "dealer_mismatch",
            "message": "key for dealer D0001 may not write records of dealer D0002",
            "details": [{"index": 0, "field": "dealer_code"}]}})
    );
    assert_eq!(
        app.inbox.accept_calls(),
        0,
        "no record of a mismatching request may be accepted"
    );
    let r = app.inbox.last_refusal();
    assert_eq!(r.code, "dealer_mismatch");
    assert_eq!(r.envelope.principal, Some(principal("dms", Some("D0001"))));
    assert!(r.reason.contains("D0002"), "{}", r.reason);
}

#[tokio::test]
async fn dealer_codes_are_compared_after_trim_and_upper_case() {
    let app = App::new();
    let mut records = dms_customers();
    records[0]["dealer_code"] = json!(" d0001 ");
    let a = app
        .post(PATH_DMS_CUSTOMERS, Some(KEY_DMS1), records.to_string())
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
}

#[tokio::test]
async fn key_without_dealer_on_a_dms_path_is_403_forbidden() {
    let app = App::new();
    for path in [
        PATH_DMS_CUSTOMERS,
        PATH_DMS_LEAD_RESULTS,
        PATH_DMS_CAMPAIGN_RESULTS,
    ] {
        let a = app
            .post(path, Some(KEY_OSM), dms_customers().to_string())
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(a.code(), "forbidden");
        let r = app.inbox.last_refusal();
        assert_eq!(r.code, "forbidden");
        assert_eq!(r.envelope.principal, Some(principal("osm", None)));
    }
    // The same key may post leads.
    let a = app
        .post(PATH_LEADS, Some(KEY_OSM), lead().to_string())
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(app.inbox.refusals().len(), 3);
}

// --- 415 / 413 / 400 -----------------------------------------------------------------------

#[tokio::test]
async fn wrong_content_type_is_415_and_journaled() {
    let app = App::new();
    for ct in [
        Some("text/plain"),
        Some("application/json; charset=gbk"),
        None,
    ] {
        let a = app
            .call(request(PATH_LEADS, Some(KEY_CALLCENTER), ct, "<lead/>"))
            .await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert_eq!(a.code(), "unsupported_media_type");
        let r = app.inbox.last_refusal();
        assert_eq!(r.code, "unsupported_media_type");
        assert_eq!(r.envelope.body, Bytes::from_static(b"<lead/>"));
        assert_eq!(r.envelope.principal, Some(principal("callcenter", None)));
    }
    assert_eq!(
        app.inbox.last_refusal().envelope.content_type,
        ContentType::Bytes
    );
    assert_eq!(
        app.inbox.refusals()[0].envelope.content_type,
        ContentType::Text
    );
    assert_eq!(
        app.inbox.refusals()[0].envelope.headers["rest.content_type"],
        "text/plain"
    );
}

#[tokio::test]
async fn oversize_body_is_413_with_its_first_part_journaled() {
    let mut cfg = config();
    cfg.max_body_bytes = 100;
    let app = App::with(cfg);
    let body = format!("[{}]", vec![lead().to_string(); 3].join(","));
    assert!(body.len() > 100);
    let a = app
        .post(PATH_LEADS, Some(KEY_CALLCENTER), body.clone())
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.code(), "payload_too_large");
    let r = app.inbox.last_refusal();
    assert_eq!(r.code, "payload_too_large");
    assert_eq!(
        r.envelope.body,
        Bytes::copy_from_slice(&body.as_bytes()[..100])
    );
    assert_eq!(r.envelope.headers["rest.truncated"], "true");

    // Exactly at the limit is fine.
    let exact = format!(
        "{{\"source_ref\":\"x\",\"pad\":\"{}\"}}",
        "p".repeat(100 - 27)
    );
    assert_eq!(exact.len(), 100);
    let a = app.post(PATH_LEADS, Some(KEY_CALLCENTER), exact).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
}

#[tokio::test]
async fn invalid_json_is_400_with_line_and_column_and_journaled() {
    let app = App::new();
    let body = "{\"source_ref\": \"a\",\n \"name\": }";
    let a = app.post(PATH_LEADS, Some(KEY_CALLCENTER), body).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "invalid_json");
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("line 2 column 10"), "{msg}");
    let r = app.inbox.last_refusal();
    assert_eq!(r.code, "invalid_json");
    assert_eq!(r.reason, msg);
    assert_eq!(r.envelope.body, Bytes::from_static(body.as_bytes()));
    assert!(!r.envelope.headers.contains_key("rest.truncated"));
}

#[tokio::test]
async fn too_many_or_no_records_is_400() {
    let mut cfg = config();
    cfg.max_records = 2;
    let app = App::with(cfg);
    let a = app
        .post(
            PATH_LEADS,
            Some(KEY_CALLCENTER),
            json!([lead(), lead(), lead()]).to_string(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "too_many_records");
    assert_eq!(app.inbox.last_refusal().code, "too_many_records");
    let a = app.post(PATH_LEADS, Some(KEY_CALLCENTER), "[]").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "no_records");
    let a = app
        .post(
            PATH_LEADS,
            Some(KEY_CALLCENTER),
            json!([lead(), lead()]).to_string(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(app.inbox.accept_calls(), 1);
}

// --- 202 -----------------------------------------------------------------------------------

#[tokio::test]
async fn array_is_accepted_with_accepted_and_rejected_records() {
    let app = App::new();
    let mut records = dms_customers();
    records.as_array_mut().unwrap().push(json!("not an object"));
    let raw = records.to_string();
    let req = Request::post(PATH_DMS_CUSTOMERS)
        .header("X-Api-Key", KEY_DMS1)
        .header("Content-Type", "application/json; charset=utf-8")
        .header("X-Correlation-Id", "corr-42")
        .body(Body::from(raw.clone()))
        .unwrap();
    let a = app.call(req).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    assert_eq!(a.headers["x-correlation-id"], "corr-42");

    let subs = app.inbox.submissions();
    assert_eq!(subs.len(), 1);
    let sub = &subs[0];
    assert_eq!(
        a.body,
        json!({
            "message_id": sub.envelope.id.to_string(),
            "accepted": [
                {"index": 0, "source_ref": "DMS-D0001-C000123", "id": "ID0"},
                {"index": 1, "source_ref": "DMS-D0001-C000124", "id": "ID1"}
            ],
            "rejected": [
                {"index": 2, "source_ref": null, "errors": [{"field": "", "reason": "record must be a JSON object"}]}
            ]
        })
    );
    let env = &sub.envelope;
    assert_eq!(
        env.body,
        Bytes::from(raw),
        "the envelope keeps the exact bytes"
    );
    assert_eq!(env.endpoint, "partners_rest_in");
    assert_eq!(env.content_type, ContentType::Json);
    assert_eq!(env.correlation_id.as_deref(), Some("corr-42"));
    assert_eq!(env.principal, Some(principal("dms", Some("D0001"))));
    assert_eq!(env.headers["rest.path"], PATH_DMS_CUSTOMERS);
    assert_eq!(env.headers["rest.method"], "POST");
    assert_eq!(
        env.headers["rest.content_type"],
        "application/json; charset=utf-8"
    );
    assert!(!env.headers.contains_key("rest.truncated"));
    let r = &sub.records;
    assert_eq!(r.len(), 3);
    assert!(r.iter().all(|r| r.record_type == "dms_customer"));
    assert_eq!(r[1].index, 1);
    assert_eq!(r[1].source_ref.as_deref(), Some("DMS-D0001-C000124"));
    assert_eq!(r[1].body.as_ref().unwrap(), &dms_customers()[1]);
    assert!(r[2].body.is_err());
    assert!(app.inbox.refusals().is_empty());
}

#[tokio::test]
async fn single_object_is_one_record_and_carries_the_key_as_principal() {
    let app = App::new();
    let a = app
        .post(PATH_LEADS, Some(KEY_CALLCENTER), lead().to_string())
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(
        a.body["accepted"],
        json!([{"index": 0, "source_ref": "WEB-20261125-000981", "id": "ID0"}])
    );
    assert_eq!(a.body["rejected"], json!([]));
    let sub = &app.inbox.submissions()[0];
    assert_eq!(sub.records.len(), 1);
    assert_eq!(sub.records[0].record_type, "lead");
    // The runtime turns the key's system into the lead's `source`.
    assert_eq!(sub.envelope.principal, Some(principal("callcenter", None)));
}

#[tokio::test]
async fn each_path_carries_its_record_type() {
    let app = App::new();
    let cases = [
        (PATH_DMS_CUSTOMERS, "dms_customer"),
        (PATH_LEADS, "lead"),
        (PATH_DMS_LEAD_RESULTS, "lead_result"),
        (PATH_DMS_CAMPAIGN_RESULTS, "campaign_result"),
    ];
    for (i, (path, _)) in cases.iter().enumerate() {
        let record = json!({"source_ref": format!("R{i}"), "dealer_code": "D0001"});
        let a = app.post(path, Some(KEY_DMS1), record.to_string()).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{path}");
    }
    let types: Vec<String> = app
        .inbox
        .submissions()
        .iter()
        .map(|s| s.records[0].record_type.clone())
        .collect();
    assert_eq!(types, cases.map(|c| c.1.to_owned()));
}

#[tokio::test]
async fn resending_the_same_source_ref_returns_the_same_id() {
    let app = App::new();
    let first = app
        .post(
            PATH_LEADS,
            Some(KEY_CALLCENTER),
            json!([{"source_ref": "other"}, lead()]).to_string(),
        )
        .await;
    let again = app
        .post(PATH_LEADS, Some(KEY_CALLCENTER), lead().to_string())
        .await;
    assert_eq!(first.body["accepted"][1]["id"], "ID1");
    assert_eq!(
        again.body["accepted"][0]["id"], "ID1",
        "the journal's duplicate id is passed through"
    );
}

// --- correlation id, 503, peer address --------------------------------------------------------

#[tokio::test]
async fn correlation_id_is_echoed_on_every_answer_and_minted_when_absent() {
    let app = App::new();
    let mut req = request(PATH_LEADS, None, Some(JSON), "{}");
    req.headers_mut()
        .insert("x-correlation-id", "corr-401".parse().unwrap());
    let a = app.call(req).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.headers["x-correlation-id"], "corr-401");
    assert_eq!(
        app.inbox.last_refusal().envelope.correlation_id.as_deref(),
        Some("corr-401")
    );

    let a = app
        .post(PATH_LEADS, Some(KEY_CALLCENTER), lead().to_string())
        .await;
    let minted = a.headers["x-correlation-id"].to_str().unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&minted).unwrap().get_version_num(), 7);
    assert_eq!(
        app.inbox.submissions()[0]
            .envelope
            .correlation_id
            .as_deref(),
        Some(minted.as_str())
    );
}

#[tokio::test]
async fn journal_outage_is_503_with_retry_after_and_nothing_recorded() {
    let app = App::new();
    app.inbox.fail_next(1);
    let a = app
        .post(PATH_LEADS, Some(KEY_CALLCENTER), lead().to_string())
        .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.headers["retry-after"], "1");
    assert_eq!(a.code(), "unavailable");
    assert!(a.headers.contains_key("x-correlation-id"));
    assert!(app.inbox.submissions().is_empty());

    // A refusal that cannot be journaled is not answered as a refusal either.
    app.inbox.fail_next(1);
    let a = app.post(PATH_LEADS, None, lead().to_string()).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.headers["retry-after"], "1");
    assert!(app.inbox.refusals().is_empty());
}

#[tokio::test]
async fn peer_address_is_recorded_when_the_server_provides_it() {
    let app = App::new();
    let mut req = request(
        PATH_LEADS,
        Some(KEY_CALLCENTER),
        Some(JSON),
        lead().to_string(),
    );
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([10, 1, 2, 3], 45678))));
    let a = app.call(req).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(
        app.inbox.submissions()[0].envelope.headers["rest.remote_addr"],
        "10.1.2.3:45678"
    );
}

/// Serves `app` on a free loopback port, with the peer address the hub records.
async fn serve(app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (addr, server)
}

#[tokio::test]
async fn over_a_real_socket_oversize_bodies_still_get_their_413() {
    let mut cfg = config();
    cfg.max_body_bytes = 1000;
    let inbox = Arc::new(FakeInbox::new());
    let app = router(cfg, inbox.clone());
    let (addr, server) = serve(app).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}{PATH_LEADS}");
    let resp = client
        .post(&url)
        .header("X-Api-Key", KEY_CALLCENTER)
        .header("Content-Type", JSON)
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = inbox.last_refusal();
    assert_eq!(r.envelope.body.len(), 1000);
    assert!(r.envelope.headers["rest.remote_addr"].starts_with("127.0.0.1:"));

    let resp = client
        .post(&url)
        .header("X-Api-Key", KEY_CALLCENTER)
        .header("Content-Type", JSON)
        .body(lead().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    server.abort();
}

/// A client that sends its whole body before reading the answer (curl, most HTTP libraries on a
/// slow link) must still get the refusal, not a connection reset: the hub reads on and discards
/// what it refused instead of closing on unread bytes.
#[tokio::test]
async fn a_client_sending_a_refused_body_to_the_end_still_reads_the_refusal() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let inbox = Arc::new(FakeInbox::new());
    let app = router(config(), inbox.clone());
    let (addr, server) = serve(app).await;
    let body_len = 32 * 1024 * 1024;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {PATH_LEADS} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {JSON}\r\n\
         Content-Length: {body_len}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 1024 * 1024];
    for i in 0..body_len / chunk.len() {
        conn.write_all(&chunk)
            .await
            .unwrap_or_else(|e| panic!("the hub broke off after {i} MiB of the body: {e}"));
    }
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("the answer is readable");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("missing X-Api-Key header"), "{answer}");
    assert!(inbox.last_refusal().envelope.body.len() < body_len);
    server.abort();
}

// --- SDK conformance -------------------------------------------------------------------------

/// Drives the router as a partner would: each `send` is one POST in its own task, so the suite can
/// look at it while the fake journal holds `accept` open.
struct RestHarness {
    app: App,
}

struct Sent {
    body: String,
    task: Option<tokio::task::JoinHandle<(StatusCode, HeaderMap)>>,
    view: Option<PartnerView>,
}

impl RestHarness {
    fn new() -> RestHarness {
        RestHarness { app: App::new() }
    }

    fn spawn(&self, body: String) -> Sent {
        let router = self.app.router.clone();
        let req = request(PATH_LEADS, Some(KEY_CALLCENTER), Some(JSON), body.clone());
        let task = tokio::spawn(async move {
            let resp = router.oneshot(req).await.unwrap();
            (resp.status(), resp.headers().clone())
        });
        Sent {
            body,
            task: Some(task),
            view: None,
        }
    }

    async fn finish(sent: &mut Sent) -> PartnerView {
        if let Some(task) = sent.task.take() {
            let (status, headers) = tokio::time::timeout(PATIENCE, task)
                .await
                .expect("no answer within PATIENCE")
                .unwrap();
            sent.view = Some(match status {
                StatusCode::ACCEPTED => PartnerView::Acked,
                StatusCode::SERVICE_UNAVAILABLE if headers.contains_key("retry-after") => {
                    PartnerView::TryAgain
                }
                other => PartnerView::Refused(other.to_string()),
            });
        }
        sent.view.clone().expect("answer recorded")
    }
}

#[async_trait]
impl InboundHarness for RestHarness {
    type Sent = Sent;

    fn inbox(&self) -> &FakeInbox {
        &self.app.inbox
    }

    async fn send(&mut self, records: usize) -> Sent {
        let batch = uuid::Uuid::now_v7();
        let body: Vec<Value> = (0..records)
            .map(|i| json!({"source_ref": format!("CONF-{batch}-{i}"), "name": "测试", "mobile": "13760001234"}))
            .collect();
        self.spawn(Value::from(body).to_string())
    }

    async fn peek(&mut self, sent: &mut Sent) -> PartnerView {
        match &sent.task {
            Some(t) if !t.is_finished() => PartnerView::NoAnswerYet,
            _ => RestHarness::finish(sent).await,
        }
    }

    async fn outcome(&mut self, sent: &mut Sent) -> PartnerView {
        RestHarness::finish(sent).await
    }

    async fn redeliver(&mut self, sent: &Sent) -> Sent {
        // An HTTP partner resends the same body after a 503.
        self.spawn(sent.body.clone())
    }
}

#[tokio::test]
async fn conformance_acks_only_after_commit() {
    testkit::acks_only_after_commit(&mut RestHarness::new()).await;
}

#[tokio::test]
async fn conformance_redelivers_when_accept_fails() {
    testkit::redelivers_when_accept_fails(&mut RestHarness::new()).await;
}
