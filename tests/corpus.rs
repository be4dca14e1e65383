//! Hostile-input corpus (issue 10): every case in `tests/corpus/<interface>/cases.toml` is sent to
//! that inbound interface of the real hub (REST, SOAP, AMQP on the running RabbitMQ, SFTP from a
//! private sshd). Each case must get a clear error naming what was wrong, leave the hub serving,
//! and be findable in the journal with its reason, as an operator would look for it.

// Test helpers are `pub` for the e2e binary's modules; here only some are used.
#![allow(unreachable_pub)]

#[allow(dead_code)]
#[path = "e2e/helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use helpers::{ADMIN, Backend, TestConfig, TestHub};

fn corpus_dir(interface: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(interface)
}

fn manifest<T: for<'de> Deserialize<'de>>(interface: &str) -> Vec<T> {
    #[derive(Deserialize)]
    struct File<T> {
        case: Vec<T>,
    }
    let p = corpus_dir(interface).join("cases.toml");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let f: File<T> = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(!f.case.is_empty(), "{} holds no case", p.display());
    f.case
}

fn read_case_file(interface: &str, file: &str) -> Vec<u8> {
    let p = corpus_dir(interface).join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("corpus file {}: {e}", p.display()))
}

/// `kind:<n>` of a `generate` field.
fn generator(spec: &str) -> (&str, usize) {
    let (kind, n) = spec
        .split_once(':')
        .unwrap_or_else(|| panic!("generate {spec:?}: kind:<n> expected"));
    (kind, n.parse().expect("generate size"))
}

/// `n` bytes of JSON-looking text: a string that never ends before the limit.
fn json_bytes(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    v.extend_from_slice(br#"[{"source_ref":"CORPUS-BIG","remark":""#);
    v.resize(n, b'x');
    v
}

fn nesting(n: usize) -> Vec<u8> {
    let mut v = vec![b'['; n];
    v.extend(std::iter::repeat_n(b']', n));
    v
}

/// Every message of `endpoint` journaled under `correlation` (a refused unit, or a transport
/// unit and its records), as the ops API lists them.
async fn journaled(hub: &TestHub, endpoint: &str, correlation: &str) -> Vec<Value> {
    let (s, r) = hub
        .get(
            &format!("/api/v1/messages?endpoint={endpoint}&limit=1000"),
            ADMIN,
        )
        .await;
    assert_eq!(s, 200, "{r}");
    r["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["correlation_id"] == correlation)
        .cloned()
        .collect()
}

/// `s` percent-encoded for a query string (every byte but the unreserved ones).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the dashboard's search box finds for `key`.
async fn search(hub: &TestHub, key: &str) -> Vec<Value> {
    let r = hub
        .client
        .get(format!(
            "{}/api/v1/messages?limit=1000&key={}",
            hub.base,
            url_encode(key)
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("search");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    v["messages"].as_array().cloned().unwrap_or_default()
}

/// The journal holds exactly one refused unit for `correlation`, with this code and message.
fn assert_refusal(case: &str, msgs: &[Value], code: &str, message: &str) {
    let refused: Vec<&Value> = msgs.iter().filter(|m| m["status"] == "rejected").collect();
    assert_eq!(
        refused.len(),
        1,
        "{case}: one journaled refusal expected: {msgs:#?}"
    );
    let reason = &refused[0]["reason"];
    assert_eq!(reason["code"], code, "{case}: journaled reason {reason}");
    assert!(
        reason["message"]
            .as_str()
            .is_some_and(|m| m.contains(message)),
        "{case}: journaled reason {reason} does not say {message:?}"
    );
}

/// The journal holds `accepted` accepted and `rejected` rejected records for `correlation`,
/// every rejected one with `message` in its reasons (and `field` named, if given).
fn assert_records(
    case: &str,
    msgs: &[Value],
    accepted: usize,
    rejected: usize,
    field: Option<&str>,
    message: Option<&str>,
) {
    let records: Vec<&Value> = msgs
        .iter()
        .filter(|m| !m["record_type"].is_null())
        .collect();
    let bad: Vec<&&Value> = records
        .iter()
        .filter(|m| m["status"] == "rejected")
        .collect();
    let good = records.iter().filter(|m| m["status"] == "accepted").count();
    assert_eq!(
        (good, bad.len()),
        (accepted, rejected),
        "{case}: journaled records {msgs:#?}"
    );
    for m in bad {
        let reason = m["reason"].to_string();
        if let Some(msg) = message {
            assert!(
                reason.contains(&msg.replace('"', "\\\"")),
                "{case}: journaled reason {reason} does not say {msg:?}"
            );
        }
        if let Some(f) = field {
            assert!(
                m["reason"]
                    .as_array()
                    .is_some_and(|errs| errs.iter().any(|e| e["field"] == f)),
                "{case}: journaled reason {reason} does not name field {f}"
            );
        }
    }
}

/// The operator's search by `key` finds this case's message.
async fn assert_findable(hub: &TestHub, case: &str, key: &str, correlation: &str) {
    let found = search(hub, key).await;
    assert!(
        found.iter().any(|m| m["correlation_id"] == correlation),
        "{case}: searching {key:?} does not find the case's message: {found:#?}"
    );
    // A key is bound as a value: quotes in it select nothing else.
    assert!(
        !key.contains('\'') || found.iter().all(|m| m["correlation_id"] == correlation),
        "{case}: searching {key:?} finds other messages too: {found:#?}"
    );
}

/// Columns of one CSV line as a spreadsheet would see them.
fn csv_cells(line: &str) -> Vec<String> {
    synchub_adapter_sftp::csv::split_fields(line, ',')
        .unwrap_or_else(|e| panic!("extract line {line:?}: {e}"))
}

/// The CSV extract of `entity`, every row with its cells.
async fn extract_csv(hub: &TestHub, entity: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let r = hub
        .client
        .get(format!("{}/api/v1/extracts/{entity}?format=csv", hub.base))
        .header("X-Api-Key", "demo-etl")
        .send()
        .await
        .expect("extract");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("csv");
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let header = csv_cells(lines.next().expect("header"));
    (header, lines.map(csv_cells).collect())
}

/// No cell of the extract would be run as a formula, and the partner's formula text is there,
/// neutralised with a leading `'`.
async fn assert_extract_neutralised(hub: &TestHub, entity: &str, column: &str, want: &[&str]) {
    let (header, rows) = extract_csv(hub, entity).await;
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            let numeric = cell.parse::<f64>().is_ok();
            assert!(
                numeric || !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{entity} extract column {}: cell {cell:?} would run as a formula",
                header[i]
            );
        }
    }
    let col = header
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("{entity} extract has no column {column}: {header:?}"));
    for w in want {
        let neutral = format!("'{w}");
        assert!(
            rows.iter().any(|r| r[col] == neutral),
            "{entity} extract: no {column} cell {neutral:?} in {rows:#?}"
        );
    }
}

/// Stops the hub and deletes its exchanges and queues on the shared broker. They would expire
/// after ten idle minutes anyway (the helper sets `x-expires`), but a corpus run spawns eight
/// hubs and pushes a 100 MB message through one of them: the broker keeps none of it.
async fn stop(hub: TestHub) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let prefix = hub.amqp_prefix.clone();
    hub.stop().await;
    let (_conn, ch) = helpers::amqp_client().await;
    for q in [
        "synchub.dms.lead-results",
        "synchub.dms.campaign-results",
        "synchub.dead-letter",
        "dms.all",
    ] {
        ch.queue_delete(
            format!("{prefix}{q}").as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("delete queue {prefix}{q}: {e}"));
    }
    // Exchanges never expire.
    for x in ["synchub.inbound", "synchub.dealer", "synchub.dead-letter"] {
        ch.exchange_delete(
            format!("{prefix}{x}").as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("delete exchange {prefix}{x}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------------
// REST (INTERFACES §1)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestCase {
    name: String,
    what: String,
    file: Option<String>,
    generate: Option<String>,
    path: Option<String>,
    key: Option<String>,
    content_type: Option<String>,
    status: u16,
    code: Option<String>,
    message: Option<String>,
    #[serde(default)]
    accepted: usize,
    #[serde(default)]
    rejected: usize,
    field: Option<String>,
    find_key: Option<String>,
}

fn rest_body(c: &RestCase) -> Vec<u8> {
    if let Some(f) = &c.file {
        return read_case_file("rest", f);
    }
    let spec = c.generate.as_deref().expect("file or generate");
    let lead = |source_ref: String, name: String| json!({"source_ref": source_ref, "name": name, "mobile": "13760001240"});
    match generator(spec) {
        ("bytes", n) => json_bytes(n),
        ("nesting", n) => nesting(n),
        ("long_name", n) => {
            serde_json::to_vec(&lead("WEB-CORPUS-LONG-NAME".into(), "名".repeat(n))).expect("json")
        }
        ("long_source_ref", n) => {
            serde_json::to_vec(&lead("R".repeat(n), "周杰".into())).expect("json")
        }
        ("records", n) => serde_json::to_vec(
            &(0..n)
                .map(|i| lead(format!("WEB-CORPUS-MANY-{i}"), "周杰".into()))
                .collect::<Vec<_>>(),
        )
        .expect("json"),
        (other, _) => panic!("unknown generator {other}"),
    }
}

/// A good lead still goes through: the hub is up and its journal writable.
async fn rest_still_serves(hub: &TestHub, after: &str) {
    let ref_ = format!("WEB-CORPUS-AFTER-{after}");
    let (s, r) = hub
        .post_records(
            "/api/v1/leads",
            "demo-website",
            &json!({"source_ref": ref_, "name": "周杰", "mobile": "13760001299"}),
        )
        .await;
    assert_eq!(s, 202, "after {after}: a good lead is refused: {r}");
    assert_eq!(r["accepted"].as_array().map(Vec::len), Some(1), "{r}");
}

async fn rest_corpus(backend: Backend) {
    let hub = TestHub::spawn(backend).await;
    let cases: Vec<RestCase> = manifest("rest");
    for c in &cases {
        let corr = format!("corpus-rest-{}", c.name);
        let path = c.path.as_deref().unwrap_or("/api/v1/leads");
        let mut req = hub
            .client
            .post(format!("{}{path}", hub.base))
            .header(
                "Content-Type",
                c.content_type.as_deref().unwrap_or("application/json"),
            )
            .header("X-Correlation-Id", &corr)
            .body(rest_body(c));
        let key = c.key.as_deref().unwrap_or("demo-website");
        if !key.is_empty() {
            req = req.header("X-Api-Key", key);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} ({}): no answer: {e}", c.name, c.what));
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, c.status, "{} ({}): {body}", c.name, c.what);
        let msgs = journaled(&hub, "partners_rest_in", &corr).await;
        if status == 202 {
            let acc = body["accepted"].as_array().map_or(0, Vec::len);
            let rej = body["rejected"].as_array().cloned().unwrap_or_default();
            assert_eq!(
                (acc, rej.len()),
                (c.accepted, c.rejected),
                "{}: {body}",
                c.name
            );
            for r in &rej {
                let errors = r["errors"].to_string();
                if let Some(m) = &c.message {
                    assert!(
                        errors.contains(m.as_str()),
                        "{}: {errors} lacks {m:?}",
                        c.name
                    );
                }
                if let Some(f) = &c.field {
                    assert!(
                        r["errors"]
                            .as_array()
                            .is_some_and(|e| e.iter().any(|e| e["field"] == f.as_str())),
                        "{}: {errors} does not name {f}",
                        c.name
                    );
                }
            }
            assert_records(
                &c.name,
                &msgs,
                c.accepted,
                c.rejected,
                c.field.as_deref(),
                c.message.as_deref(),
            );
        } else {
            let code = c.code.as_deref().expect("a refusal names its code");
            let message = c.message.as_deref().unwrap_or_default();
            assert_eq!(body["error"]["code"], code, "{}: {body}", c.name);
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(message)),
                "{}: the answer {body} does not say {message:?}",
                c.name
            );
            assert_refusal(&c.name, &msgs, code, message);
        }
        if let Some(k) = &c.find_key {
            assert_findable(&hub, &c.name, k, &corr).await;
        }
        rest_still_serves(&hub, &c.name).await;
    }

    // Data cases end up in the CRM store verbatim, and in the CSV extract neutralised.
    hub.settle(60).await;
    let (header, rows) = extract_csv(&hub, "leads").await;
    let col = |name: &str| header.iter().position(|h| h == name).expect("column");
    assert!(
        rows.iter().any(
            |r| r[col("customer_name")] == "Robert'); DROP TABLE messages;--"
                && r[col("remark")] == "1; DELETE FROM crm_records WHERE 1=1 --"
        ),
        "SQL text is stored as text: {rows:#?}"
    );
    assert_extract_neutralised(
        &hub,
        "leads",
        "customer_name",
        &["=cmd|' /C calc'!A0", "+SUM(1,2)", "@SUM(A1:A9)"],
    )
    .await;
    // Cleansing trims the tab: what is stored starts with `=`, and is neutralised as such.
    assert_extract_neutralised(&hub, "leads", "remark", &["-2+3", "=1+1"]).await;
    stop(hub).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_corpus_sqlite() {
    rest_corpus(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_corpus_postgres() {
    rest_corpus(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// SOAP (INTERFACES §2)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SoapCase {
    name: String,
    what: String,
    file: Option<String>,
    generate: Option<String>,
    content_type: Option<String>,
    #[serde(default)]
    replay: bool,
    #[serde(default)]
    stale: bool,
    status: u16,
    fault: Option<String>,
    code: Option<String>,
    message: Option<String>,
    #[serde(default)]
    accepted: usize,
    #[serde(default)]
    rejected: usize,
    find_key: Option<String>,
    secret: Option<String>,
}

fn soap_body(c: &SoapCase) -> Vec<u8> {
    if let Some(spec) = &c.generate {
        let (kind, n) = generator(spec);
        assert_eq!(kind, "bytes", "SOAP generators: bytes");
        let mut v = read_case_file("soap", "good.xml");
        // Whitespace after the envelope is allowed XML; the size limit must stop it first.
        v.resize(n, b' ');
        return v;
    }
    let file = c.file.as_deref().expect("file or generate");
    let raw = read_case_file("soap", file);
    if !file.ends_with(".tmpl") {
        return raw;
    }
    use base64::Engine;
    let mut text = String::from_utf8(raw).expect("templates are UTF-8");
    let created = chrono::Utc::now() - chrono::TimeDelta::hours(if c.stale { 1 } else { 0 });
    let created = created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let nonce: [u8; 16] = rand::random();
    let digest = synchub_adapter_soap::wssec::password_digest(&nonce, &created, "demo-osm");
    text = text
        .replace(
            "{{NONCE}}",
            &base64::engine::general_purpose::STANDARD.encode(nonce),
        )
        .replace("{{CREATED}}", &created)
        .replace("{{DIGEST}}", &digest)
        .replace("{{LONG}}", &"型".repeat(100_000));
    if text.contains("{{DEEP}}") {
        let deep = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
        text = text.replace("{{DEEP}}", &deep);
    }
    text.into_bytes()
}

async fn soap_call(hub: &TestHub, c: &SoapCase, corr: &str, body: Vec<u8>) -> (u16, String) {
    let r = hub
        .client
        .post(format!("{}/soap/osm/VehicleService", hub.base))
        .header(
            "Content-Type",
            c.content_type
                .as_deref()
                .unwrap_or("text/xml; charset=utf-8"),
        )
        .header("SOAPAction", "\"urn:synchub:osm:vehicle:v1#SyncVehicles\"")
        .header("X-Correlation-Id", corr)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} ({}): no answer: {e}", c.name, c.what));
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Text of the first `<tag>` (any prefix) in `xml`.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find("</")? + start;
    Some(xml[start..end].to_owned())
}

async fn soap_corpus(backend: Backend) {
    let hub = TestHub::spawn(backend).await;
    let cases: Vec<SoapCase> = manifest("soap");
    let good = read_case_file("soap", "good.xml");
    for c in &cases {
        let corr = format!("corpus-soap-{}", c.name);
        let body = soap_body(c);
        if c.replay {
            let (s, xml) = soap_call(&hub, c, &format!("{corr}-first"), body.clone()).await;
            assert_eq!(s, 200, "{}: the first call must succeed: {xml}", c.name);
        }
        let (status, xml) = soap_call(&hub, c, &corr, body).await;
        assert_eq!(status, c.status, "{} ({}): {xml}", c.name, c.what);
        if let Some(secret) = &c.secret {
            assert!(!xml.contains(secret.as_str()), "{}: leaked: {xml}", c.name);
        }
        let msgs = journaled(&hub, "osm_vehicles_soap_in", &corr).await;
        match &c.fault {
            Some(fault) => {
                let code = c.code.as_deref().expect("a fault names its code");
                let message = c.message.as_deref().unwrap_or_default();
                let faultcode = xml_text(&xml, "faultcode").unwrap_or_default();
                assert_eq!(faultcode, format!("soap:{fault}"), "{}: {xml}", c.name);
                assert_eq!(
                    xml_text(&xml, "code").as_deref(),
                    Some(code),
                    "{}: {xml}",
                    c.name
                );
                let faultstring = xml_text(&xml, "faultstring").unwrap_or_default();
                assert!(
                    faultstring.contains(&synchub_adapter_soap::xml::escape(message).into_owned()),
                    "{}: faultstring {faultstring:?} does not say {message:?}",
                    c.name
                );
                assert_refusal(&c.name, &msgs, code, message);
            }
            None => {
                assert!(
                    xml.contains(&format!("<accepted>{}</accepted>", c.accepted)),
                    "{}: {xml}",
                    c.name
                );
                assert_eq!(
                    xml.matches("<reason>").count(),
                    c.rejected,
                    "{}: rejected vehicles in {xml}",
                    c.name
                );
                if let Some(m) = &c.message {
                    assert!(xml.contains(m.as_str()), "{}: {xml} lacks {m:?}", c.name);
                }
                assert_records(
                    &c.name,
                    &msgs,
                    c.accepted,
                    c.rejected,
                    None,
                    c.message.as_deref(),
                );
            }
        }
        if let Some(k) = &c.find_key {
            let found = search(&hub, k).await;
            assert!(
                found.iter().any(|m| m["correlation_id"] == corr.as_str()),
                "{}: searching {k} does not find it: {found:#?}",
                c.name
            );
        }
        // Still serving: a good call is answered.
        let (s, xml) = soap_call(&hub, c, &format!("{corr}-after"), good.clone()).await;
        let s = if c.content_type.is_some() {
            // The case's own Content-Type may be the problem; call again as a partner would.
            let r = hub
                .client
                .post(format!("{}/soap/osm/VehicleService", hub.base))
                .header("Content-Type", "text/xml; charset=utf-8")
                .body(good.clone())
                .send()
                .await
                .expect("good call");
            r.status().as_u16()
        } else {
            s
        };
        assert_eq!(s, 200, "after {}: a good call fails: {xml}", c.name);
    }
    hub.settle(60).await;
    let (_, v) = hub.get("/api/v1/vehicles/LHGCV3CK9VA118682", ADMIN).await;
    assert_eq!(v["vin"], "LHGCV3CK9VA118682", "{v}");
    stop(hub).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn soap_corpus_sqlite() {
    soap_corpus(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn soap_corpus_postgres() {
    soap_corpus(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// AMQP (INTERFACES §3)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AmqpCase {
    name: String,
    what: String,
    file: Option<String>,
    generate: Option<String>,
    routing_key: Option<String>,
    dealer_header: Option<String>,
    code: Option<String>,
    message: Option<String>,
    #[serde(default)]
    accepted: usize,
    #[serde(default)]
    rejected: usize,
    field: Option<String>,
    find_key: Option<String>,
    /// The refused message is journaled cut to its first 64 KiB, marked `amqp.truncated`.
    #[serde(default)]
    truncated: bool,
}

fn amqp_body(c: &AmqpCase) -> Vec<u8> {
    if let Some(f) = &c.file {
        return read_case_file("amqp", f);
    }
    match generator(c.generate.as_deref().expect("file or generate")) {
        ("bytes", n) => json_bytes(n),
        ("nesting", n) => nesting(n),
        ("long_name", n) => serde_json::to_vec(&json!({
            "source_ref": "DMS-D0002-CORPUS-LONG", "campaign_code": "C2026-12-WINTERCARE",
            "dealer_code": "D0002", "customer_mobile": "13912345678",
            "customer_name": "林".repeat(n), "result": "attended"
        }))
        .expect("json"),
        (other, _) => panic!("unknown generator {other}"),
    }
}

async fn amqp_publish(
    ch: &lapin::Channel,
    hub: &TestHub,
    key: &str,
    corr: &str,
    dealer: Option<&str>,
    body: &[u8],
) {
    use lapin::options::BasicPublishOptions;
    use lapin::types::{AMQPValue, FieldTable};
    let mut props = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_correlation_id(corr.into());
    if let Some(d) = dealer {
        let mut h = FieldTable::default();
        h.insert("dealer_code".into(), AMQPValue::LongString(d.into()));
        props = props.with_headers(h);
    }
    let confirmation = ch
        .basic_publish(
            format!("{}synchub.inbound", hub.amqp_prefix)
                .as_str()
                .into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
    // Mandatory: a message no queue took comes back, and the case would wait for nothing.
    // (Not printed whole: the returned message would carry the body, up to 100 MB.)
    let refused = match confirmation {
        lapin::Confirmation::Ack(None) => None,
        lapin::Confirmation::Ack(Some(_)) => Some("returned: no queue bound for the routing key"),
        lapin::Confirmation::Nack(_) => Some("nacked"),
        lapin::Confirmation::NotRequested => Some("not confirmed"),
    };
    assert!(
        refused.is_none(),
        "{corr}: the broker did not queue the message: {refused:?}"
    );
}

/// Waits until the journal holds something for `corr` (the consumer is asynchronous).
async fn wait_journaled(hub: &TestHub, corr: &str, secs: u64) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let msgs = journaled(hub, "dms_amqp_in", corr).await;
        // A transport unit and its records are committed together; a refusal is one row.
        if !msgs.is_empty() {
            return msgs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{corr}: nothing journaled after {secs}s: the message was dropped or is stuck"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn queue_depth(ch: &lapin::Channel, queue: &str) -> u32 {
    use lapin::options::QueueDeclareOptions;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("queue {queue}: {e}"))
    .message_count()
}

async fn wait_amqp_in_up(hub: &TestHub) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, eps) = hub.get("/api/v1/endpoints", ADMIN).await;
        if eps["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            // An endpoint never heard from reads `up` too; `last_contact` says the link has
            // declared its queues and consumes.
            .any(|e| e["id"] == "dms_amqp_in" && e["state"] == "up" && !e["last_contact"].is_null())
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dms_amqp_in never came up: {eps}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates campaign `code` for `dealers` (a campaign result is stored only for a known campaign)
/// and parks its DCS task deliveries: no DCS answers in this test, and their retries would keep
/// `settle` waiting. As `create_campaign` of the e2e binary, whose module this one cannot share.
async fn create_campaign(hub: &TestHub, code: &str, dealers: &[&str]) {
    let mut c = helpers::sample("rest/campaign.request.json");
    c["campaign_code"] = json!(code);
    c["dealer_codes"] = json!(dealers);
    c["target_customers"] = json!(["13700000001"]);
    let (s, r) = hub.post("/api/v1/campaigns", ADMIN, Some(c)).await;
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

async fn amqp_corpus(backend: Backend) {
    // The helper gives this hub exchange and queue names of its own, which expire on the shared
    // broker (SYNCHUB__ENDPOINTS__DMS_AMQP_*__QUEUE_EXPIRES_MS); `stop` deletes them at the end.
    let hub = TestHub::spawn(backend).await;
    wait_amqp_in_up(&hub).await;
    create_campaign(&hub, "C2026-12-WINTERCARE", &["D0002"]).await;
    let (_conn, ch) = helpers::amqp_client().await;
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    let cases: Vec<AmqpCase> = manifest("amqp");
    for c in &cases {
        let corr = format!("corpus-amqp-{}", c.name);
        let key = c.routing_key.as_deref().unwrap_or("dms.campaign-result");
        amqp_publish(
            &ch,
            &hub,
            key,
            &corr,
            c.dealer_header.as_deref(),
            &amqp_body(c),
        )
        .await;
        let msgs = wait_journaled(&hub, &corr, 60).await;
        let case = format!("{} ({})", c.name, c.what);
        match &c.code {
            Some(code) => {
                assert_refusal(&case, &msgs, code, c.message.as_deref().unwrap_or_default())
            }
            None => assert_records(
                &case,
                &msgs,
                c.accepted,
                c.rejected,
                c.field.as_deref(),
                c.message.as_deref(),
            ),
        }
        if let Some(k) = &c.find_key {
            let found = search(&hub, k).await;
            assert!(
                found.iter().any(|m| m["correlation_id"] == corr.as_str()),
                "{case}: searching {k} does not find it: {found:#?}"
            );
        }
        if c.truncated {
            let id = msgs[0]["id"].as_str().expect("id");
            let (_, d) = hub.get(&format!("/api/v1/messages/{id}"), ADMIN).await;
            assert_eq!(d["headers"]["amqp.truncated"], "true", "{case}");
            let kept = d["body"].as_str().map(str::len);
            assert_eq!(
                kept,
                Some(64 * 1024),
                "{case}: the journal keeps the first 64 KiB of the body"
            );
        }
    }
    // Still consuming: a good result after the corpus is journaled and accepted.
    let good = read_case_file("amqp", "good_campaign_result.json");
    amqp_publish(
        &ch,
        &hub,
        "dms.campaign-result",
        "corpus-amqp-good",
        None,
        &good,
    )
    .await;
    let msgs = wait_journaled(&hub, "corpus-amqp-good", 30).await;
    assert_records("good after the corpus", &msgs, 1, 0, None, None);
    // Every message was acked: nothing waits or loops in the queues.
    for q in ["synchub.dms.lead-results", "synchub.dms.campaign-results"] {
        let q = format!("{}{q}", hub.amqp_prefix);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = queue_depth(&ch, &q).await;
            if n == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} messages still in {q}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    hub.settle(60).await;
    assert_extract_neutralised(
        &hub,
        "campaign_results",
        "customer_name",
        &["=cmd|' /C calc'!A0"],
    )
    .await;
    stop(hub).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn amqp_corpus_sqlite() {
    amqp_corpus(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn amqp_corpus_postgres() {
    amqp_corpus(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// SFTP (INTERFACES §4)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SftpCase {
    name: String,
    what: String,
    file: Option<String>,
    generate: Option<String>,
    outcome: String,
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    rejected: Vec<u64>,
    message: Option<String>,
    find_key: Option<String>,
}

const VEHICLE_HEADER: &str = "vin,brand,model,model_year,color,plate_no,engine_no,dealer_code,sales_date,owner_name,owner_mobile,owner_id_no\n";
const GOOD_ROW: &str =
    "LHGLVCWJ2RA215148,Honda,飞度 Fit,2026,白,,,D0001,2026-11-20,客户,13900000002,\n";

fn sftp_body(c: &SftpCase) -> Vec<u8> {
    if let Some(f) = &c.file {
        return read_case_file("sftp", f);
    }
    let mut v = VEHICLE_HEADER.as_bytes().to_vec();
    match generator(c.generate.as_deref().expect("file or generate")) {
        ("long_field", n) => v.extend_from_slice(
            format!(
                "LHGCV3CK9VA118682,Honda,{},2026,,,,D0001,2026-11-20,,,\n",
                "M".repeat(n)
            )
            .as_bytes(),
        ),
        ("long_line", n) => {
            v.extend_from_slice(b"LHGCV3CK9VA118682,Honda,");
            v.resize(v.len() + n, b'x');
            v.push(b'\n');
        }
        (other, _) => panic!("unknown generator {other}"),
    }
    v.extend_from_slice(GOOD_ROW.as_bytes());
    v
}

async fn sftp_corpus(backend: Backend) {
    use sha2::Digest;
    use synchub_adapter_sftp::testkit::SshdFixture;
    const EP: &str = "osm_vehicles_sftp_in";
    let fx = SshdFixture::start();
    let dir = "outbound/vehicles";
    // Polled only by the test's "poll now", one file at a time.
    let env = helpers::sftp_endpoint_env(&fx, EP, dir, &helpers::POLLED_ON_REQUEST);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let hub = TestHub::spawn_with(backend, TestConfig::shipped(), &env).await;
    let poll = || async {
        let (s, r) = hub
            .post(&format!("/api/v1/endpoints/{EP}/poll"), ADMIN, None)
            .await;
        assert_eq!(s, 200, "poll: {r}");
        r
    };
    let mut cases: Vec<SftpCase> = manifest("sftp");
    // Last: a good file, which must still go through after all the others.
    cases.push(SftpCase {
        name: "good_after_the_corpus".into(),
        what: "a good file".into(),
        file: Some("good.csv".into()),
        generate: None,
        outcome: "archived".into(),
        accepted: 2,
        rejected: Vec::new(),
        message: None,
        find_key: None,
    });
    for (i, c) in cases.iter().enumerate() {
        let name = format!("VEHICLE_2026{:04}.csv", 1201 + i);
        let bytes = sftp_body(c);
        let sha8 = hex::encode(sha2::Sha256::digest(&bytes))[..8].to_owned();
        std::fs::write(fx.path(&format!("{dir}/{name}")), &bytes).expect("upload");
        drop(bytes);
        let report = poll().await;
        let file = report["files"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == name.as_str()))
            .unwrap_or_else(|| panic!("{} ({}): {name} not taken: {report}", c.name, c.what))
            .clone();
        assert_eq!(
            file["outcome"]["status"], c.outcome,
            "{} ({}): {file}",
            c.name, c.what
        );
        let message = c.message.as_deref().unwrap_or_default();
        if c.outcome == "failed" {
            let reason = file["error"].as_str().unwrap_or_default();
            assert!(reason.contains(message), "{}: {file}", c.name);
            let txt = std::fs::read_to_string(fx.path(&format!("{dir}/error/{name}.reason.txt")))
                .unwrap_or_else(|e| panic!("{}: no reason file beside the file: {e}", c.name));
            assert!(txt.contains(message), "{}: {txt}", c.name);
            // Journaled as a refused file, with the reason the reason file gives.
            let (_, r) = hub
                .get(
                    &format!("/api/v1/messages?status=rejected&endpoint={EP}&limit=1000"),
                    ADMIN,
                )
                .await;
            let mut found = false;
            for m in r["messages"].as_array().into_iter().flatten() {
                if m["record_type"].is_null() && m["reason"]["code"] == "unreadable_file" {
                    let id = m["id"].as_str().expect("id");
                    let (_, d) = hub.get(&format!("/api/v1/messages/{id}"), ADMIN).await;
                    if d.to_string().contains(&format!("\"{name}\"")) {
                        assert!(
                            m["reason"]["message"]
                                .as_str()
                                .unwrap_or_default()
                                .contains(message)
                        );
                        found = true;
                    }
                }
            }
            assert!(found, "{}: refused file not journaled: {r}", c.name);
            continue;
        }
        assert_eq!(
            (&file["accepted"], &file["rejected"]),
            (&json!(c.accepted), &json!(c.rejected.len())),
            "{} ({}): {file}",
            c.name,
            c.what
        );
        for line in &c.rejected {
            let sref = format!("{name}@{sha8}:{line}");
            let found = search(&hub, &sref).await;
            let m = found
                .iter()
                .find(|m| m["status"] == "rejected" && m["source_ref"] == sref.as_str())
                .unwrap_or_else(|| {
                    panic!(
                        "{}: row {sref} not journaled as rejected: {found:#?}",
                        c.name
                    )
                });
            assert!(
                m["reason"].to_string().contains(message),
                "{}: row {sref}: reason {} does not say {message:?}",
                c.name,
                m["reason"]
            );
        }
        if let Some(key) = &c.find_key {
            let found = search(&hub, key).await;
            assert!(
                found.iter().any(|m| m["source_ref"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&name))),
                "{}: searching {key} does not find the row: {found:#?}",
                c.name
            );
        }
    }
    hub.settle(120).await;
    assert_extract_neutralised(
        &hub,
        "vehicles",
        "owner_name",
        &["=cmd|' /C calc'!A0", "@SUM(A1:A9)"],
    )
    .await;
    // Cleansing trims leading tab and CR; the `=` behind them is neutralised.
    assert_extract_neutralised(&hub, "vehicles", "color", &["+SUM(1)", "-2+3", "=2+2"]).await;
    assert_extract_neutralised(&hub, "vehicles", "model", &["=1+1"]).await;
    stop(hub).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sftp_corpus_sqlite() {
    sftp_corpus(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sftp_corpus_postgres() {
    sftp_corpus(Backend::Postgres).await;
}
