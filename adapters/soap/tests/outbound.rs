//! Outbound `PublishCampaignTask` against a wiremock DCS: the request XML sent (namespace,
//! elements, WS-Security header, SOAPAction), every classification row end to end, the health
//! check, and the SDK outbound conformance suite.

mod support;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use support::{Leaf, leaves};
use synchub_adapter_sdk::testkit::{self, OutboundHarness, PartnerAnswer, sample_delivery};
use synchub_adapter_sdk::{AdapterError, Delivery, Outbound, Outcome};
use synchub_adapter_soap::soap::{Fault, NS_SOAP11, SoapVersion, envelope};
use synchub_adapter_soap::wssec::{NS_WSSE, PASSWORD_TEXT};
use synchub_adapter_soap::{SoapOutbound, SoapOutboundConfig};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

const NS_DCS: &str = "urn:synchub:dcs:task:v1";

fn task_delivery(attempt: u32) -> Delivery {
    let mut d = sample_delivery(attempt);
    d.target = "dcs_tasks_soap_out".into();
    d.body = Bytes::from(
        serde_json::json!({
            "campaign_code": "C2026-12-WINTERCARE", "name": "冬季关怀免费检测 <&>",
            "dealer_code": "D0002", "start_date": "2026-12-01", "end_date": "2026-12-31",
            "target_count": 350
        })
        .to_string(),
    );
    d
}

fn adapter(url: &str) -> SoapOutbound {
    SoapOutbound::new(SoapOutboundConfig::new(
        format!("{url}/ws/TaskService"),
        "synchub",
        "dcs-s3cret",
    ))
    .unwrap()
}

async fn partner(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

async fn deliver_to(template: ResponseTemplate) -> (Outcome, MockServer) {
    let server = partner(template).await;
    let o = adapter(&server.uri()).deliver(&task_delivery(1)).await;
    (o, server)
}

fn soap(status: u16, body: String) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body, "text/xml; charset=utf-8")
}

fn ok_answer(task_id: &str) -> String {
    envelope(
        SoapVersion::V11,
        "",
        &format!(
            "<r:PublishCampaignTaskResponse xmlns:r=\"{NS_DCS}\"><r:taskId>{task_id}</r:taskId></r:PublishCampaignTaskResponse>"
        ),
    )
}

fn reason(o: &Outcome) -> &str {
    match o {
        Outcome::Retry { reason, .. } | Outcome::Reject { reason, .. } => reason,
        other => panic!("expected Retry or Reject, got {other:?}"),
    }
}

async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn the_request_has_the_contract_namespace_elements_and_security_header() {
    let (o, server) = deliver_to(soap(200, ok_answer("DCS-T-1"))).await;
    assert_eq!(
        o,
        Outcome::Delivered {
            remote_ref: Some("DCS-T-1".into())
        }
    );
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    let h = |n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(r.method.as_str(), "POST");
    assert_eq!(r.url.path(), "/ws/TaskService");
    assert_eq!(
        h("content-type").as_deref(),
        Some("text/xml; charset=utf-8")
    );
    assert_eq!(
        h("soapaction").as_deref(),
        Some("\"urn:synchub:dcs:task:v1#PublishCampaignTask\"")
    );
    let d = task_delivery(1);
    assert_eq!(h("x-correlation-id"), d.correlation_id);
    assert!(h("idempotency-key").is_some());

    let body = String::from_utf8(r.body.clone()).unwrap();
    let got: Vec<Leaf> = leaves(&body);
    let by_path = |p: &str| -> &Leaf {
        got.iter()
            .find(|l| l.path.join("/") == p)
            .unwrap_or_else(|| panic!("no {p} in {body}"))
    };
    // Security header: wsse namespace, PasswordText, our credentials.
    let user = by_path("Envelope/Header/Security/UsernameToken/Username");
    assert_eq!(user.text, "synchub");
    assert_eq!(user.ns[0].as_deref(), Some(NS_SOAP11));
    assert!(user.ns[2..].iter().all(|n| n.as_deref() == Some(NS_WSSE)));
    assert_eq!(
        by_path("Envelope/Header/Security/UsernameToken/Password").text,
        "dcs-s3cret"
    );
    assert!(
        body.contains(&format!("Type=\"{PASSWORD_TEXT}\"")),
        "{body}"
    );
    // The operation, in the DCS namespace, with exactly the contract's children in order.
    let op: Vec<&Leaf> = got
        .iter()
        .filter(|l| {
            l.path.starts_with(&[
                "Envelope".into(),
                "Body".into(),
                "PublishCampaignTask".into(),
            ])
        })
        .collect();
    let names: Vec<&str> = op.iter().map(|l| l.path[3].as_str()).collect();
    assert_eq!(
        names,
        [
            "campaignCode",
            "name",
            "dealerCode",
            "startDate",
            "endDate",
            "targetCount"
        ]
    );
    assert!(
        op.iter()
            .all(|l| l.ns[2].as_deref() == Some(NS_DCS) && l.ns[3].as_deref() == Some(NS_DCS))
    );
    let texts: Vec<&str> = op.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "C2026-12-WINTERCARE",
            "冬季关怀免费检测 <&>",
            "D0002",
            "2026-12-01",
            "2026-12-31",
            "350"
        ]
    );
}

#[tokio::test]
async fn the_request_body_matches_the_documented_sample() {
    let server = partner(soap(200, ok_answer("T"))).await;
    let mut d = task_delivery(1);
    d.body = Bytes::from(
        serde_json::json!({
            "campaign_code": "C2026-12-WINTERCARE", "name": "冬季关怀免费检测",
            "dealer_code": "D0002", "start_date": "2026-12-01", "end_date": "2026-12-31",
            "target_count": "350"
        })
        .to_string(),
    );
    adapter(&server.uri()).deliver(&d).await;
    let sent =
        String::from_utf8(server.received_requests().await.unwrap()[0].body.clone()).unwrap();
    let body_leaves = |src: &str| -> Vec<(String, Vec<Option<String>>, String)> {
        leaves(src)
            .into_iter()
            .filter(|l| l.path[1] == "Body")
            .map(|l| (l.path.join("/"), l.ns, l.text))
            .collect()
    };
    let sample = include_str!("fixtures/PublishCampaignTask.request.xml");
    assert_eq!(body_leaves(&sent), body_leaves(sample));
}

#[tokio::test]
async fn client_fault_is_rejected_with_the_faultstring() {
    let fault = Fault::client("invalid_dealer", "dealerCode D0002 is not a DCS dealer")
        .to_xml(SoapVersion::V11);
    let (o, _s) = deliver_to(soap(500, fault)).await;
    assert_eq!(o.label(), "reject");
    assert!(
        reason(&o).ends_with("soap:Client: dealerCode D0002 is not a DCS dealer"),
        "{o:?}"
    );
}

#[tokio::test]
async fn server_fault_is_retried() {
    let fault = Fault::server("db", "database unavailable").to_xml(SoapVersion::V11);
    let (o, _s) = deliver_to(soap(500, fault)).await;
    assert_eq!(o.label(), "retry");
    assert!(reason(&o).contains("database unavailable"), "{o:?}");
}

#[tokio::test]
async fn plain_500_is_retried() {
    let (o, _s) =
        deliver_to(ResponseTemplate::new(500).set_body_string("Internal Server Error")).await;
    assert_eq!(o.label(), "retry");
    assert_eq!(
        reason(&o),
        "HTTP 500 Internal Server Error: Internal Server Error"
    );
}

#[tokio::test]
async fn busy_503_is_retried_after_the_partners_wish() {
    let (o, _s) = deliver_to(ResponseTemplate::new(503).insert_header("Retry-After", "90")).await;
    match o {
        Outcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(90))),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn slow_partner_times_out_and_is_retried() {
    let server = partner(soap(200, ok_answer("late")).set_delay(Duration::from_secs(5))).await;
    let mut cfg = SoapOutboundConfig::new(server.uri(), "u", "p");
    cfg.timeout_ms = 200;
    let started = Instant::now();
    let o = SoapOutbound::new(cfg)
        .unwrap()
        .deliver(&task_delivery(1))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(o.label(), "retry");
    assert!(reason(&o).starts_with("timed out"), "{o:?}");
}

#[tokio::test]
async fn connection_refused_is_retried_with_its_cause_chain() {
    let port = closed_port().await;
    let o = adapter(&format!("http://127.0.0.1:{port}"))
        .deliver(&task_delivery(1))
        .await;
    match &o {
        Outcome::Retry {
            reason,
            cause_chain,
            ..
        } => {
            assert!(reason.starts_with("could not connect"), "{reason}");
            assert!(cause_chain.len() >= 2, "{cause_chain:?}");
        }
        other => panic!("expected Retry, got {other:?}"),
    }
}

#[tokio::test]
async fn incomplete_task_bodies_are_rejected_without_calling_dcs() {
    let server = partner(soap(200, ok_answer("x"))).await;
    let mut d = task_delivery(1);
    d.body = Bytes::from_static(
        br#"{"campaign_code":"C1","dealer_code":"D0001","start_date":"2026-12-01"}"#,
    );
    let o = adapter(&server.uri()).deliver(&d).await;
    assert_eq!(o.label(), "reject");
    let r = reason(&o);
    for field in ["name", "end_date", "target_count"] {
        assert!(r.contains(field), "{r}");
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn healthcheck_gets_the_wsdl_and_counts_any_answer() {
    let server = partner(ResponseTemplate::new(404)).await;
    adapter(&server.uri()).healthcheck().await.unwrap();
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs[0].method.as_str(), "GET", "no side effects");
    assert_eq!(reqs[0].url.query(), Some("wsdl"));
    let port = closed_port().await;
    let err = adapter(&format!("http://127.0.0.1:{port}"))
        .healthcheck()
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::Io { .. }), "{err:?}");
}

#[tokio::test]
async fn invalid_config_is_refused_and_debug_hides_the_password() {
    let err = SoapOutbound::new(SoapOutboundConfig::new("ftp://dcs", "u", "p")).unwrap_err();
    assert!(
        matches!(err, AdapterError::Config(ref m) if m.contains("scheme")),
        "{err}"
    );
    let shown = format!("{:?}", adapter("http://dcs.example"));
    assert!(!shown.contains("dcs-s3cret"), "{shown}");
}

// --- SDK conformance ----------------------------------------------------------------------------

struct DcsPartner {
    server: MockServer,
    adapter: SoapOutbound,
}

#[async_trait]
impl OutboundHarness for DcsPartner {
    fn outbound(&self) -> &dyn Outbound {
        &self.adapter
    }

    async fn partner_will(&mut self, answer: PartnerAnswer) {
        self.server.reset().await;
        let template = match answer {
            PartnerAnswer::Ok => soap(200, ok_answer("T-9")),
            PartnerAnswer::Transient => ResponseTemplate::new(503),
            PartnerAnswer::Permanent => soap(
                500,
                Fault::client("x", "campaignCode unknown").to_xml(SoapVersion::V11),
            ),
        };
        Mock::given(any())
            .respond_with(template)
            .mount(&self.server)
            .await;
    }

    async fn received(&self) -> usize {
        self.server.received_requests().await.unwrap().len()
    }

    fn delivery(&self, attempt: u32) -> Delivery {
        task_delivery(attempt)
    }
}

#[tokio::test]
async fn conformance_outbound_classifies_transient_and_permanent() {
    let server = MockServer::start().await;
    let adapter = adapter(&server.uri());
    testkit::outbound_classifies_transient_and_permanent(&mut DcsPartner { server, adapter }).await;
}
