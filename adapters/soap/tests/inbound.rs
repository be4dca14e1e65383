//! Inbound OSM vehicle service against the SDK's `FakeInbox` (and a validating Inbox of our
//! own): the sample request, namespaces and SOAP 1.2, WS-Security, hardening, faults and their
//! journaling, the response from verdicts, and the SDK inbound conformance suite.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::json;
use support::*;
use synchub_adapter_sdk::testkit::{self, FakeInbox, InboundHarness, PATIENCE, PartnerView};
use synchub_adapter_sdk::{
    AcceptError, ContentType, Envelope, FieldError, Inbox, Receipt, Submission,
};
use synchub_adapter_soap::soap::{NS_SOAP11, NS_SOAP12};
use synchub_adapter_soap::wssec::redact_passwords;
use uuid::Uuid;

fn now_rfc3339(offset_secs: i64) -> String {
    (chrono::Utc::now() + chrono::TimeDelta::seconds(offset_secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The two records the sample must produce, whatever the prefixes.
fn sample_records() -> [serde_json::Value; 2] {
    [
        json!({"vin": "LHG0LVF20VB714970", "brand": "Honda", "model": "雅阁 Accord",
               "model_year": "2026", "color": "珍珠白", "plate_no": "粤A·D12345",
               "engine_no": "L15B7714970", "dealer_code": "D0001", "sales_date": "2026-11-20",
               "owner": {"name": "陈大文", "mobile": "+86 138-0013-8000", "id_no": "440106198503021236"}}),
        json!({"vin": "LHGHL1LV0VD172367", "brand": "Honda", "model": "飞度 Fit",
               "model_year": "2026", "dealer_code": "D0002", "sales_date": "2026-11-21",
               "owner": {"name": "林小红", "mobile": "13912345678"}}),
    ]
}

fn assert_sample_accepted(app: &App, a: &Answer) {
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let subs = app.inbox.submissions();
    let sub = subs.last().expect("a submission");
    let bodies: Vec<serde_json::Value> = sub
        .records
        .iter()
        .map(|r| r.body.clone().expect("valid record"))
        .collect();
    assert_eq!(bodies, sample_records());
    assert_eq!(
        a.text("SyncVehiclesResponse/messageId"),
        sub.envelope.id.to_string()
    );
    assert_eq!(a.text("SyncVehiclesResponse/accepted"), "2");
    assert!(a.texts("rejected/vin").is_empty());
}

// --- the sample and its variants --------------------------------------------------------------

#[tokio::test]
async fn sample_request_is_accepted_and_journaled_as_sent() {
    let app = App::new();
    let mut req = post(TEXT_XML, Some(ACTION), SAMPLE);
    req.headers_mut()
        .insert("x-correlation-id", "corr-osm-1".parse().unwrap());
    let a = app.call(req).await;
    assert_sample_accepted(&app, &a);
    assert_eq!(a.content_type(), "text/xml; charset=utf-8");
    assert_eq!(a.envelope_ns(), NS_SOAP11);
    // The answer's elements are in the service namespace, as the WSDL says.
    let leaf = &a.leaves()[0];
    assert_eq!(
        leaf.path,
        ["Envelope", "Body", "SyncVehiclesResponse", "messageId"]
    );
    assert_eq!(leaf.ns[2].as_deref(), Some(NS_V));
    assert_eq!(leaf.ns[3].as_deref(), Some(NS_V));
    assert_eq!(a.headers["x-correlation-id"], "corr-osm-1");

    let sub = &app.inbox.submissions()[0];
    let env = &sub.envelope;
    assert_eq!(
        env.body,
        Bytes::from(SAMPLE.replace(">demo-osm<", ">***<")),
        "the bytes as sent, but for the password"
    );
    assert_eq!(env.headers["soap.redacted"], "password");
    assert_eq!(env.endpoint, "osm_vehicles_soap_in");
    assert_eq!(env.content_type, ContentType::Xml);
    assert_eq!(env.principal, Some(osm()));
    assert_eq!(env.correlation_id.as_deref(), Some("corr-osm-1"));
    assert_eq!(env.headers["soap.path"], PATH);
    assert_eq!(env.headers["soap.version"], "1.1");
    assert_eq!(env.headers["soap.action"], ACTION);
    assert_eq!(env.headers["soap.operation"], "SyncVehicles");
    assert!(sub.records.iter().all(|r| r.record_type == "vehicle"));
    assert!(sub.records.iter().all(|r| r.source_ref.is_none()));
    assert_eq!(sub.records[1].index, 1);
    assert!(app.inbox.refusals().is_empty());
}

#[tokio::test]
async fn any_prefixes_and_default_namespaces_mean_the_same() {
    let variants = [
        // Other prefixes everywhere, as JAX-WS and zeep write them.
        SAMPLE
            .replace("soapenv:", "S:")
            .replace("xmlns:soapenv", "xmlns:S")
            .replace("v:", "ns0:")
            .replace("xmlns:v", "xmlns:ns0")
            .replace("wsse:", "o:")
            .replace("xmlns:wsse", "xmlns:o"),
        // The service namespace as the default namespace, declared on the operation element.
        SAMPLE
            .replace(" xmlns:v=\"urn:synchub:osm:vehicle:v1\"", "")
            .replace("<v:SyncVehicles>", "<SyncVehicles xmlns=\"urn:synchub:osm:vehicle:v1\">")
            .replace("<v:", "<")
            .replace("</v:", "</"),
        // The envelope namespace as the default namespace too, declared on the root.
        SAMPLE
            .replace("xmlns:soapenv=", "xmlns=")
            .replace("soapenv:mustUnderstand", "mustUnderstand")
            .replace("soapenv:", ""),
        // xsi:type on fields, a redundant re-declaration, extra whitespace and comments.
        SAMPLE
            .replace(
                "<v:vehicle>",
                "<v:vehicle xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xs=\"http://www.w3.org/2001/XMLSchema\">\n   <!-- generated -->",
            )
            .replace("<v:modelYear>", "<v:modelYear xsi:type=\"xs:int\">")
            .replace("<v:owner>", "<v:owner xmlns:v=\"urn:synchub:osm:vehicle:v1\" >\n\n"),
    ];
    for (i, body) in variants.into_iter().enumerate() {
        let app = App::new();
        let a = app.post11(body.clone()).await;
        assert_eq!(a.status, StatusCode::OK, "variant {i}: {}\n{body}", a.body);
        assert_sample_accepted(&app, &a);
    }
}

#[tokio::test]
async fn the_same_names_in_another_namespace_are_not_our_operation() {
    let app = App::new();
    let body = SAMPLE.replace("urn:synchub:osm:vehicle:v1", "urn:synchub:osm:vehicle:v2");
    let a = app.post11(body).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    let (code, string, detail) = a.fault();
    assert_eq!(code, "soap:Client");
    assert_eq!(detail, "unknown_operation");
    assert!(
        string.contains("{urn:synchub:osm:vehicle:v2}SyncVehicles"),
        "{string}"
    );
    assert_eq!(app.inbox.last_refusal().code, "unknown_operation");
}

#[tokio::test]
async fn soap_12_is_answered_in_soap_12() {
    let app = App::new();
    let body = SAMPLE.replace(NS_SOAP11, NS_SOAP12);
    let ct = format!("application/soap+xml; charset=utf-8; action=\"{ACTION}\"");
    let a = app.call(post(&ct, None, body.clone())).await;
    assert_sample_accepted(&app, &a);
    assert_eq!(a.envelope_ns(), NS_SOAP12);
    assert!(
        a.content_type().starts_with("application/soap+xml"),
        "{}",
        a.content_type()
    );
    assert_eq!(
        app.inbox.submissions()[0].envelope.headers["soap.version"],
        "1.2"
    );

    // A 1.2 fault uses Sender, the 1.2 structure and the 1.2 media type.
    let bad = body.replace(">demo-osm<", ">wrong<");
    let a = app.call(post(&ct, None, bad)).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.envelope_ns(), NS_SOAP12);
    assert!(a.content_type().starts_with("application/soap+xml"));
    let (code, string, detail) = a.fault();
    assert_eq!(code, "soap:Sender");
    assert_eq!(string, "WS-Security: authentication failed for user 'osm'");
    assert_eq!(detail, "authentication_failed");

    // A 1.2 action naming another operation is refused like a SOAPAction mismatch.
    let ct = "application/soap+xml; charset=utf-8; action=\"urn:other#Delete\"";
    let a = app.call(post(ct, None, body)).await;
    assert_eq!(a.fault().2, "action_mismatch");
}

#[tokio::test]
async fn envelope_version_must_match_the_content_type() {
    let app = App::new();
    let a = app.call(post("application/soap+xml", None, SAMPLE)).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    let (code, _, detail) = a.fault();
    assert_eq!(code, "soap:VersionMismatch");
    assert_eq!(detail, "version_mismatch");
}

#[tokio::test]
async fn soap_action_is_checked_when_present() {
    let app = App::new();
    for action in [None, Some(""), Some(ACTION)] {
        let a = app.call(post(TEXT_XML, action, SAMPLE)).await;
        assert_eq!(a.status, StatusCode::OK, "{action:?}: {}", a.body);
    }
    let a = app
        .call(post(
            TEXT_XML,
            Some("urn:synchub:osm:vehicle:v1#DeleteVehicles"),
            SAMPLE,
        ))
        .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    let (code, string, detail) = a.fault();
    assert_eq!(code, "soap:Client");
    assert_eq!(detail, "action_mismatch");
    assert!(string.contains("DeleteVehicles"), "{string}");
    let r = app.inbox.last_refusal();
    assert_eq!(r.code, "action_mismatch");
    // The caller had authenticated: the refusal says who it was.
    assert_eq!(r.envelope.principal, Some(osm()));
    assert_eq!(app.inbox.submissions().len(), 3);
}

// --- WS-Security ------------------------------------------------------------------------------

async fn assert_auth_refused(app: &App, body: String, detail: &str, message_part: &str) {
    let before = app.inbox.refusals().len();
    let a = app.post11(body.clone()).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", a.body);
    let (code, string, d) = a.fault();
    assert_eq!(code, "soap:Client");
    assert_eq!(d, detail, "{string}");
    assert!(string.contains(message_part), "{string}");
    assert!(!a.body.contains("demo-osm"), "no credential echoed");
    let refusals = app.inbox.refusals();
    assert_eq!(
        refusals.len(),
        before + 1,
        "the refused request is journaled"
    );
    let r = refusals.last().unwrap();
    assert_eq!(r.code, detail);
    assert_eq!(r.envelope.principal, None);
    let journaled = String::from_utf8(r.envelope.body.to_vec()).unwrap();
    assert_eq!(
        journaled,
        redact_passwords(body.as_bytes()).map_or(body.clone(), |b| String::from_utf8(b).unwrap()),
        "refused body journaled as sent, but for the password"
    );
    assert!(
        !journaled.contains("demo-osm"),
        "no password attempt journaled"
    );
    // The fault quotes the journal id, so the partner can ask operators about it.
    assert_eq!(a.text("error/messageId"), r.envelope.id.to_string());
}

#[tokio::test]
async fn missing_security_header_is_a_client_fault() {
    let app = App::new();
    let body = request(
        false,
        "",
        &format!(
            "<v:SyncVehicles>{}</v:SyncVehicles>",
            vehicle("LHG0LVF20VB714970")
        ),
    );
    assert_auth_refused(
        &app,
        body,
        "missing_security_header",
        "missing wsse:Security",
    )
    .await;
    let no_header_at_all = SAMPLE.replace(
        &SAMPLE[SAMPLE.find("<soapenv:Header>").unwrap()..SAMPLE.find("<soapenv:Body>").unwrap()],
        "",
    );
    assert_auth_refused(&app, no_header_at_all, "missing_security_header", "missing").await;
    assert_eq!(app.inbox.accept_calls(), 0);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused_alike() {
    let app = App::new();
    let wrong = SAMPLE.replace(">demo-osm<", ">demo-osm2<");
    assert_auth_refused(
        &app,
        wrong,
        "authentication_failed",
        "authentication failed for user 'osm'",
    )
    .await;
    let unknown = SAMPLE.replace(">osm</wsse:Username>", ">root</wsse:Username>");
    assert_auth_refused(
        &app,
        unknown,
        "authentication_failed",
        "authentication failed for user 'root'",
    )
    .await;
    // The fault has the documented shape (samples/soap/Fault.authentication.xml).
    let a = app.post11(SAMPLE.replace(">demo-osm<", ">x<")).await;
    let sample_fault = include_str!("fixtures/Fault.authentication.xml");
    let expected = leaves(sample_fault);
    let got = a.leaves();
    let paths = |l: &[Leaf]| l.iter().map(|x| x.path.join("/")).collect::<Vec<_>>();
    assert_eq!(paths(&got), paths(&expected));
    assert_eq!(got[0].text, expected[0].text);
    assert_eq!(got[1].text, expected[1].text);
    assert_eq!(got[2].text, expected[2].text);
    assert_eq!(app.inbox.accept_calls(), 0);
}

#[tokio::test]
async fn password_digest_is_accepted_once() {
    let app = App::new();
    let created = now_rfc3339(0);
    let token = digest_token("osm", "demo-osm", b"nonce-0123456789", &created);
    let body = request(
        false,
        &token,
        &format!(
            "<v:SyncVehicles>{}</v:SyncVehicles>",
            vehicle("LHG0LVF20VB714970")
        ),
    );
    let a = app.post11(body.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.text("accepted"), "1");
    assert_eq!(app.inbox.submissions()[0].envelope.principal, Some(osm()));
    // The same message again: replayed nonce.
    assert_auth_refused(&app, body, "replayed_nonce", "already used").await;
    // A digest made with the wrong password.
    let token = digest_token("osm", "guess", b"nonce-other-0001", &created);
    let body = request(
        false,
        &token,
        &format!("<v:SyncVehicles>{}</v:SyncVehicles>", vehicle("X")),
    );
    assert_auth_refused(&app, body, "authentication_failed", "authentication failed").await;
}

#[tokio::test]
async fn stale_created_is_refused() {
    let app = App::new();
    for offset in [-6 * 60, 6 * 60] {
        let token = digest_token(
            "osm",
            "demo-osm",
            format!("n{offset}").as_bytes(),
            &now_rfc3339(offset),
        );
        let body = request(
            false,
            &token,
            &format!("<v:SyncVehicles>{}</v:SyncVehicles>", vehicle("X")),
        );
        assert_auth_refused(&app, body, "stale_timestamp", "5 minutes").await;
    }
    // Four minutes off is within the window.
    let token = digest_token("osm", "demo-osm", b"n-ok", &now_rfc3339(-4 * 60));
    let body = request(
        false,
        &token,
        &format!("<v:SyncVehicles>{}</v:SyncVehicles>", vehicle("X")),
    );
    assert_eq!(app.post11(body).await.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_must_understand_headers_are_refused_and_others_ignored() {
    let app = App::new();
    let extra = r#"<a:Action xmlns:a="http://www.w3.org/2005/08/addressing">x</a:Action>"#;
    let ok = SAMPLE.replace("<soapenv:Header>", &format!("<soapenv:Header>{extra}"));
    assert_eq!(app.post11(ok).await.status, StatusCode::OK);
    let must = r#"<t:Tx xmlns:t="urn:tx" soapenv:mustUnderstand="1">1</t:Tx>"#;
    let bad = SAMPLE.replace("<soapenv:Header>", &format!("<soapenv:Header>{must}"));
    let a = app.post11(bad).await;
    let (code, string, detail) = a.fault();
    assert_eq!(code, "soap:MustUnderstand");
    assert_eq!(detail, "must_understand");
    assert!(string.contains("{urn:tx}Tx"), "{string}");
}

// --- hardening --------------------------------------------------------------------------------

async fn assert_client_fault(app: &App, body: String, detail: &str) -> Answer {
    let before = app.inbox.refusals().len();
    let a = app.post11(body).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", a.body);
    let (code, _, d) = a.fault();
    assert_eq!(code, "soap:Client", "{}", a.body);
    assert_eq!(d, detail, "{}", a.body);
    assert_eq!(app.inbox.refusals().len(), before + 1);
    assert_eq!(app.inbox.last_refusal().code, detail);
    a
}

#[tokio::test]
async fn xxe_is_refused_without_reading_the_file() {
    let app = App::new();
    let body = format!(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE foo [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\n{}",
        SAMPLE
            .trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
            .replace("<v:brand>Honda</v:brand>", "<v:brand>&xxe;</v:brand>")
    );
    let a = assert_client_fault(&app, body, "dtd_not_allowed").await;
    assert!(a.fault().1.contains("DOCTYPE"), "{}", a.body);
    assert!(!a.body.contains("root:"), "file content leaked: {}", a.body);
    assert_eq!(app.inbox.accept_calls(), 0);
    // An entity used without any declaration is refused too, not left out silently.
    let body = SAMPLE.replace("<v:brand>Honda</v:brand>", "<v:brand>&xxe;</v:brand>");
    assert_client_fault(&app, body, "dtd_not_allowed").await;
}

#[tokio::test]
async fn billion_laughs_is_refused_fast_without_expansion() {
    let app = App::new();
    let mut dtd = String::from("<!ENTITY lol \"lol\">");
    for i in 1..=9 {
        let prev = if i == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", i - 1)
        };
        dtd.push_str(&format!(
            "<!ENTITY lol{i} \"{}\">",
            format!("&{prev};").repeat(10)
        ));
    }
    let body = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [{dtd}]>{}",
        sync(&vehicle("&lol9;")).trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
    );
    let started = Instant::now();
    let a = assert_client_fault(&app, body, "dtd_not_allowed").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(a.body.len() < 2000, "no expansion in the answer");
}

#[tokio::test]
async fn deep_nesting_is_refused() {
    let app = App::new();
    let deep = format!("{}{}", "<v:x>".repeat(100), "</v:x>".repeat(100));
    let body = sync(&format!(
        "<v:vehicle><v:vin>A</v:vin><v:brand>{deep}</v:brand></v:vehicle>"
    ));
    let a = assert_client_fault(&app, body, "too_deep").await;
    assert!(a.fault().1.contains("32 levels"), "{}", a.body);
    // Deep nesting in the header, before authentication, is refused just the same.
    let body = request(false, &deep, "<v:SyncVehicles/>");
    assert_client_fault(&app, body, "too_deep").await;
}

#[tokio::test]
async fn oversized_body_is_refused_with_its_first_part_journaled() {
    let mut cfg = config();
    cfg.max_body_bytes = 4096;
    let app = App::with(cfg);
    let body = sync(&vehicle("LHG0LVF20VB714970").repeat(40));
    assert!(body.len() > 4096);
    let a = app.post11(body.clone()).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let (code, string, detail) = a.fault();
    assert_eq!(
        (code.as_str(), detail.as_str()),
        ("soap:Client", "payload_too_large")
    );
    assert!(string.contains("4096"), "{string}");
    let r = app.inbox.last_refusal();
    assert_eq!(r.code, "payload_too_large");
    let first_part = &body[..4096];
    assert!(first_part.contains(">demo-osm<"));
    assert_eq!(
        r.envelope.body,
        Bytes::from(first_part.replace(">demo-osm<", ">***<"))
    );
    assert_eq!(r.envelope.headers["soap.truncated"], "true");
    assert_eq!(app.inbox.accept_calls(), 0);
}

#[tokio::test]
async fn unauthenticated_refusals_keep_at_most_one_mib() {
    let app = App::new();
    // 2 MiB of vehicles with a wrong password.
    let body = sync(&vehicle("LHG0LVF20VB714970").repeat(10_000)).replace(">demo-osm<", ">bad<");
    assert!(body.len() > 2 * 1024 * 1024);
    let a = app.post11(body.clone()).await;
    assert_eq!(a.fault().2, "authentication_failed");
    let r = app.inbox.last_refusal();
    assert_eq!(r.envelope.body.len(), 1024 * 1024);
    assert_eq!(r.envelope.headers["soap.truncated"], "true");
}

#[tokio::test]
async fn five_thousand_vehicles_are_accepted_and_counted() {
    let app = App::new();
    let vehicles: String = (0..5000)
        .map(|i| vehicle(&format!("LHGTEST{i:010}")))
        .collect();
    let body = sync(&vehicles);
    let started = Instant::now();
    let a = app.post11(body).await;
    let took = started.elapsed();
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        &a.body[..a.body.len().min(500)]
    );
    assert_eq!(a.text("accepted"), "5000");
    let sub = &app.inbox.submissions()[0];
    assert_eq!(sub.records.len(), 5000);
    assert_eq!(sub.records[4999].index, 4999);
    assert_eq!(
        sub.records[4999].body.as_ref().unwrap()["vin"],
        "LHGTEST0000004999"
    );
    // Generous even for a debug build on a busy 2-core machine; catches accidental quadratic work.
    assert!(took < Duration::from_secs(20), "{took:?}");

    let one_more = sync(&format!("{vehicles}{}", vehicle("LHGTEST9999999999")));
    let a = assert_client_fault(&app, one_more, "too_many_vehicles").await;
    assert!(a.fault().1.contains("5000"), "{}", a.body);
    assert_eq!(app.inbox.submissions().len(), 1);
}

#[tokio::test]
async fn empty_operation_is_refused() {
    let app = App::new();
    assert_client_fault(&app, sync(""), "no_vehicles").await;
}

#[tokio::test]
async fn wrong_content_type_is_a_fault_with_415() {
    let app = App::new();
    for (ct, says) in [
        ("application/json", "text/xml"),
        ("text/plain", "application/soap+xml"),
        ("text/xml; charset=gbk", "UTF-8"),
    ] {
        let a = app.call(post(ct, Some(ACTION), SAMPLE)).await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        let (code, string, detail) = a.fault();
        assert_eq!(
            (code.as_str(), detail.as_str()),
            ("soap:Client", "unsupported_media_type")
        );
        assert!(string.contains(says), "{string}");
        let r = app.inbox.last_refusal();
        assert_eq!(r.code, "unsupported_media_type");
        assert_eq!(r.envelope.headers["soap.content_type"], ct);
    }
    let no_ct = http::Request::post(PATH)
        .body(axum::body::Body::from(SAMPLE))
        .unwrap();
    assert_eq!(
        app.call(no_ct).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(app.inbox.refusals().len(), 4);
    assert_eq!(app.inbox.accept_calls(), 0);
}

#[tokio::test]
async fn unknown_operation_is_a_client_fault_naming_it() {
    let app = App::new();
    let body = request(
        false,
        &text_token("osm", "demo-osm"),
        "<v:DeleteVehicles><v:vin>X</v:vin></v:DeleteVehicles>",
    );
    let a = assert_client_fault(&app, body, "unknown_operation").await;
    assert!(
        a.fault()
            .1
            .contains("{urn:synchub:osm:vehicle:v1}DeleteVehicles"),
        "{}",
        a.body
    );
    assert_eq!(app.inbox.last_refusal().envelope.principal, Some(osm()));
}

#[tokio::test]
async fn malformed_xml_is_a_client_fault_with_line_and_column() {
    let app = App::new();
    // The first <v:color> is left unclosed: the parser finds out at the vehicle's end tag.
    let body = SAMPLE.replace("<v:color>珍珠白</v:color>", "<v:color>珍珠白");
    let end_line = body[..body.find("</v:vehicle>").unwrap()].lines().count();
    let a = assert_client_fault(&app, body, "malformed_xml").await;
    let msg = a.fault().1;
    assert!(msg.starts_with("malformed XML at line "), "{msg}");
    let line: usize = msg["malformed XML at line ".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(line, end_line, "{msg}");
    assert!(msg.contains("column"), "{msg}");
    let unclosed = format!("<s:Envelope xmlns:s=\"{NS_SOAP11}\"><s:Body></s:Envelope>");
    for junk in ["not xml at all", "", &unclosed, "\u{feff}<soapenv:Envelope"] {
        let a = app.post11(junk.to_owned()).await;
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{junk:?}");
        assert_eq!(a.fault().0, "soap:Client", "{junk:?}");
    }
    // A root that is no SOAP Envelope is a version mismatch, as SOAP specifies.
    let a = app.post11("<a><b/></a>".to_owned()).await;
    assert_eq!(a.fault().0, "soap:VersionMismatch");
    assert_eq!(a.fault().2, "version_mismatch");
    assert!(a.fault().1.contains("found a"), "{}", a.body);
    let a = app
        .call(post(
            TEXT_XML,
            None,
            Bytes::from_static(b"<x>\n\xff\xfe</x>"),
        ))
        .await;
    assert_eq!(a.fault().2, "malformed_xml");
    assert!(a.fault().1.contains("UTF-8"), "{}", a.body);
}

#[tokio::test]
async fn structurally_broken_vehicle_is_rejected_alone() {
    let app = App::new();
    let broken = "<v:vehicle><v:vin>LHGBROKEN00000001</v:vin><v:brand><v:junk>x</v:junk></v:brand><v:dealerCode>D1</v:dealerCode></v:vehicle>";
    let body = sync(&format!("{}{broken}", vehicle("LHG0LVF20VB714970")));
    let a = app.post11(body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.text("accepted"), "1");
    assert_eq!(a.texts("rejected/vin"), ["LHGBROKEN00000001"]);
    let reason = a.text("rejected/reason");
    assert!(reason.starts_with("brand: must be text"), "{reason}");
    let rec = &app.inbox.submissions()[0].records[1];
    assert_eq!(rec.body.as_ref().unwrap_err()[0].field, "brand");
}

// --- the response from verdicts -----------------------------------------------------------------

/// An Inbox that validates VIN check digits (ISO 3779) as the hub's pipeline does, to produce
/// `Rejected` verdicts for records whose body the adapter could read.
struct VinCheckingInbox {
    inner: FakeInbox,
}

fn vin_check_digit(vin: &str) -> Option<char> {
    const W: [u32; 17] = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2];
    if vin.len() != 17 {
        return None;
    }
    let mut sum = 0;
    for (c, w) in vin.chars().zip(W) {
        let v = match c {
            '0'..='9' => c.to_digit(10)?,
            'A'..='H' => c as u32 - 'A' as u32 + 1,
            'J'..='N' => c as u32 - 'J' as u32 + 1,
            'P' => 7,
            'R' => 9,
            'S'..='Z' => c as u32 - 'S' as u32 + 2,
            _ => return None,
        };
        sum += v * w;
    }
    Some(match sum % 11 {
        10 => 'X',
        d => char::from_digit(d, 10)?,
    })
}

#[async_trait]
impl Inbox for VinCheckingInbox {
    async fn accept(&self, mut s: Submission) -> Result<Receipt, AcceptError> {
        for r in &mut s.records {
            if let Ok(body) = &r.body {
                let vin = body["vin"].as_str().unwrap_or_default().to_owned();
                let expected = vin_check_digit(&vin);
                let got = vin.chars().nth(8);
                if expected != got {
                    r.body = Err(vec![FieldError::new(
                        "vin",
                        format!(
                            "check digit is '{}', expected '{}'",
                            got.unwrap_or('?'),
                            expected.unwrap_or('?')
                        ),
                    )]);
                }
            }
        }
        self.inner.accept(s).await
    }

    async fn reject(&self, e: Envelope, code: &str, reason: &str) -> Result<Uuid, AcceptError> {
        self.inner.reject(e, code, reason).await
    }
}

#[tokio::test]
async fn rejected_vehicles_are_listed_with_vin_and_reason() {
    let inbox = Arc::new(VinCheckingInbox {
        inner: FakeInbox::new(),
    });
    let router = use_inbox(config(), inbox.clone());
    let a = call(&router, post(TEXT_XML, Some(ACTION), SAMPLE)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // Exactly samples/soap/SyncVehicles.response.xml, apart from the message id.
    let expected = leaves(include_str!("fixtures/SyncVehicles.response.xml"));
    let got = a.leaves();
    let shape = |l: &[Leaf]| {
        l.iter()
            .map(|x| {
                (
                    x.path.join("/"),
                    x.ns.clone(),
                    if x.path.last().unwrap() == "messageId" {
                        String::new()
                    } else {
                        x.text.clone()
                    },
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&got), shape(&expected));
    assert_eq!(
        a.text("messageId"),
        inbox.inner.submissions()[0].envelope.id.to_string()
    );

    // Several rejections, and a reason joined from several field errors.
    let inbox = Arc::new(FakeInbox::new());
    let router = use_inbox(config(), inbox.clone());
    let body = sync(&format!(
        "{}{}{}",
        vehicle("LHG0LVF20VB714970"),
        "<v:vehicle><v:vin>BAD1</v:vin><v:colour>red</v:colour><v:brand><x/></v:brand></v:vehicle>",
        "<v:vehicle><v:brand>no vin</v:brand><v:brand>twice</v:brand></v:vehicle>"
    ));
    let a = call(&router, post(TEXT_XML, None, body)).await;
    assert_eq!(a.text("accepted"), "1");
    assert_eq!(a.texts("rejected/vin"), ["BAD1", ""]);
    let reasons = a.texts("rejected/reason");
    assert_eq!(
        reasons[0],
        "colour: unknown element {urn:synchub:osm:vehicle:v1}colour; brand: must be text, found element x"
    );
    assert_eq!(reasons[1], "brand: appears more than once");
}

// --- journal outages ----------------------------------------------------------------------------

#[tokio::test]
async fn journal_outage_is_a_server_fault_with_503() {
    let app = App::new();
    app.inbox.fail_next(1);
    let a = app.post11(SAMPLE).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.headers["retry-after"], "1");
    let (code, string, detail) = a.fault();
    assert_eq!(
        (code.as_str(), detail.as_str()),
        ("soap:Server", "unavailable")
    );
    assert!(string.contains("send the request again"), "{string}");
    assert!(app.inbox.submissions().is_empty());

    // In 1.2 the same answer says Receiver.
    app.inbox.fail_next(1);
    let a = app
        .call(post(
            "application/soap+xml",
            None,
            SAMPLE.replace(NS_SOAP11, NS_SOAP12),
        ))
        .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.fault().0, "soap:Receiver");

    // A refusal that cannot be journaled is not answered as a refusal either.
    app.inbox.fail_next(1);
    let a = app.post11(SAMPLE.replace(">demo-osm<", ">x<")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(app.inbox.refusals().is_empty());
}

// --- SDK conformance ------------------------------------------------------------------------------

struct SoapHarness {
    app: App,
}

struct Sent {
    body: String,
    task: Option<tokio::task::JoinHandle<(StatusCode, HeaderMap, String)>>,
    view: Option<PartnerView>,
}

impl SoapHarness {
    fn spawn(&self, body: String) -> Sent {
        let router = self.app.router.clone();
        let req = post(TEXT_XML, Some(ACTION), body.clone());
        let task = tokio::spawn(async move {
            let a = call(&router, req).await;
            (a.status, a.headers, a.body)
        });
        Sent {
            body,
            task: Some(task),
            view: None,
        }
    }

    async fn finish(sent: &mut Sent) -> PartnerView {
        if let Some(task) = sent.task.take() {
            let (status, headers, body) = tokio::time::timeout(PATIENCE, task)
                .await
                .expect("no answer within PATIENCE")
                .unwrap();
            sent.view = Some(match status {
                StatusCode::OK if body.contains("SyncVehiclesResponse") => PartnerView::Acked,
                StatusCode::SERVICE_UNAVAILABLE
                    if headers.contains_key("retry-after") && body.contains("soap:Server") =>
                {
                    PartnerView::TryAgain
                }
                other => PartnerView::Refused(format!("{other}: {body}")),
            });
        }
        sent.view.clone().expect("answer recorded")
    }
}

#[async_trait]
impl InboundHarness for SoapHarness {
    type Sent = Sent;

    fn inbox(&self) -> &FakeInbox {
        &self.app.inbox
    }

    async fn send(&mut self, records: usize) -> Sent {
        let vehicles: String = (0..records)
            .map(|i| vehicle(&format!("LHGCONF{i:010}")))
            .collect();
        self.spawn(sync(&vehicles))
    }

    async fn peek(&mut self, sent: &mut Sent) -> PartnerView {
        match &sent.task {
            Some(t) if !t.is_finished() => PartnerView::NoAnswerYet,
            _ => SoapHarness::finish(sent).await,
        }
    }

    async fn outcome(&mut self, sent: &mut Sent) -> PartnerView {
        SoapHarness::finish(sent).await
    }

    async fn redeliver(&mut self, sent: &Sent) -> Sent {
        // A SOAP client resends the same request after a Server fault.
        self.spawn(sent.body.clone())
    }
}

#[tokio::test]
async fn conformance_acks_only_after_commit() {
    testkit::acks_only_after_commit(&mut SoapHarness { app: App::new() }).await;
}

#[tokio::test]
async fn conformance_redelivers_when_accept_fails() {
    testkit::redelivers_when_accept_fails(&mut SoapHarness { app: App::new() }).await;
}
