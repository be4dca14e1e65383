//! Outbound REST against a wiremock partner (and raw sockets for what wiremock cannot do):
//! every classification row end to end, the headers sent, bounded answers, the health check,
//! and the SDK outbound conformance suite.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use synchub_adapter_rest::{HttpMethod, RestOutbound, RestOutboundConfig};
use synchub_adapter_sdk::testkit::{self, OutboundHarness, PartnerAnswer, sample_delivery};
use synchub_adapter_sdk::{AdapterError, Outbound, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{any, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn partner(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

fn adapter(url: &str) -> RestOutbound {
    RestOutbound::new(RestOutboundConfig::new(format!("{url}/in"))).unwrap()
}

async fn deliver_to(template: ResponseTemplate) -> (Outcome, MockServer) {
    let server = partner(template).await;
    let outcome = adapter(&server.uri()).deliver(&sample_delivery(1)).await;
    (outcome, server)
}

fn reason(o: &Outcome) -> &str {
    match o {
        Outcome::Retry { reason, .. } | Outcome::Reject { reason, .. } => reason,
        other => panic!("expected Retry or Reject, got {other:?}"),
    }
}

fn retry_after(o: &Outcome) -> Option<Duration> {
    match o {
        Outcome::Retry { after, .. } => *after,
        other => panic!("expected Retry, got {other:?}"),
    }
}

/// A port nothing listens on: bind, note the port, close.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn ok_answers_are_delivered_with_the_partners_reference() {
    let (o, _s) =
        deliver_to(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "P-981"})))
            .await;
    assert_eq!(
        o,
        Outcome::Delivered {
            remote_ref: Some("P-981".into())
        }
    );
    let (o, _s) =
        deliver_to(ResponseTemplate::new(201).insert_header("Location", "/leads/77")).await;
    assert_eq!(
        o,
        Outcome::Delivered {
            remote_ref: Some("/leads/77".into())
        }
    );
    let (o, _s) = deliver_to(ResponseTemplate::new(204)).await;
    assert_eq!(o, Outcome::Delivered { remote_ref: None });
}

#[tokio::test]
async fn server_errors_and_throttling_are_retried_after_the_partners_wish() {
    for (status, after) in [(500, "3"), (503, "120"), (429, "7")] {
        let (o, _s) = deliver_to(
            ResponseTemplate::new(status)
                .insert_header("Retry-After", after)
                .set_body_string("busy"),
        )
        .await;
        assert_eq!(o.label(), "retry", "{status}");
        assert_eq!(
            retry_after(&o),
            Some(Duration::from_secs(after.parse().unwrap())),
            "{status}"
        );
        assert!(reason(&o).starts_with(&format!("HTTP {status} ")), "{o:?}");
        assert!(reason(&o).ends_with(": busy"), "{o:?}");
    }
    let date = (chrono::Utc::now() + chrono::Duration::seconds(60))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let (o, _s) =
        deliver_to(ResponseTemplate::new(503).insert_header("Retry-After", date.as_str())).await;
    let after = retry_after(&o).unwrap();
    assert!(
        (Duration::from_secs(55)..=Duration::from_secs(60)).contains(&after),
        "{after:?}"
    );
    let (o, _s) = deliver_to(ResponseTemplate::new(502)).await;
    assert_eq!(retry_after(&o), None);
}

#[tokio::test]
async fn request_timeout_status_is_retried() {
    let (o, _s) = deliver_to(ResponseTemplate::new(408)).await;
    assert_eq!(o.label(), "retry");
}

#[tokio::test]
async fn client_errors_are_rejected_with_the_partners_words() {
    for status in [400, 404, 422] {
        let (o, _s) = deliver_to(
            ResponseTemplate::new(status)
                .set_body_string(r#"{"error":"mobile: 11 digits expected"}"#),
        )
        .await;
        assert_eq!(o.label(), "reject", "{status}");
        assert!(reason(&o).starts_with(&format!("HTTP {status} ")), "{o:?}");
        assert!(reason(&o).contains("mobile: 11 digits expected"), "{o:?}");
    }
}

#[tokio::test]
async fn reasons_hold_at_most_500_bytes_of_huge_or_garbage_answers() {
    let mut garbage = vec![0xffu8; 10];
    garbage.extend(vec![b'a'; 2 * 1024 * 1024]);
    let (o, _s) = deliver_to(ResponseTemplate::new(422).set_body_bytes(garbage)).await;
    assert_eq!(o.label(), "reject");
    let r = reason(&o);
    assert!(r.len() < 600, "{} bytes", r.len());
    assert!(r.contains('\u{fffd}'));
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = MockServer::start().await;
    Mock::given(path("/in"))
        .respond_with(ResponseTemplate::new(302).insert_header("Location", "/elsewhere"))
        .mount(&server)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let o = adapter(&server.uri()).deliver(&sample_delivery(1)).await;
    assert_eq!(o.label(), "reject");
    assert!(reason(&o).contains("/elsewhere"), "{o:?}");
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "no GET to the new location"
    );
}

#[tokio::test]
async fn connection_refused_is_retried_with_its_cause_chain() {
    let port = closed_port().await;
    let o = adapter(&format!("http://127.0.0.1:{port}"))
        .deliver(&sample_delivery(1))
        .await;
    match &o {
        Outcome::Retry {
            reason,
            after: None,
            cause_chain,
        } => {
            assert!(reason.starts_with("could not connect"), "{reason}");
            assert!(cause_chain.len() >= 2, "{cause_chain:?}");
        }
        other => panic!("expected Retry, got {other:?}"),
    }
}

#[tokio::test]
async fn slow_partner_times_out_and_is_retried() {
    let server = partner(ResponseTemplate::new(200).set_delay(Duration::from_secs(5))).await;
    let mut cfg = RestOutboundConfig::new(server.uri());
    cfg.timeout_ms = 200;
    let started = Instant::now();
    let o = RestOutbound::new(cfg)
        .unwrap()
        .deliver(&sample_delivery(1))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(o.label(), "retry");
    assert!(reason(&o).starts_with("timed out"), "{o:?}");
}

#[tokio::test]
async fn answer_breaking_off_is_retried() {
    // A partner that promises 100 bytes, sends 10 and hangs up: wiremock cannot do this.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let _ = sock.read(&mut buf).await;
        sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        sock.shutdown().await.unwrap();
    });
    let o = adapter(&format!("http://{addr}"))
        .deliver(&sample_delivery(1))
        .await;
    server.await.unwrap();
    assert_eq!(o.label(), "retry", "{o:?}");
}

#[tokio::test]
async fn every_attempt_carries_the_documented_headers_and_the_body() {
    let server = partner(ResponseTemplate::new(200)).await;
    let mut cfg = RestOutboundConfig::new(format!("{}/in", server.uri()));
    cfg.method = HttpMethod::Put;
    cfg.bearer_token = Some("tok-123".into());
    cfg.headers.insert("X-Tenant".into(), "synchub".into());
    // Configured headers never override the adapter's own.
    cfg.headers
        .insert("Idempotency-Key".into(), "from-config".into());
    let d = sample_delivery(3);
    let o = RestOutbound::new(cfg).unwrap().deliver(&d).await;
    assert_eq!(o.label(), "delivered");

    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    let h = |name: &str| r.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(r.method.as_str(), "PUT");
    assert_eq!(r.url.path(), "/in");
    assert_eq!(r.body, d.body.to_vec());
    assert_eq!(h("content-type").as_deref(), Some("application/json"));
    assert_eq!(h("idempotency-key"), Some(d.idempotency_key.clone()));
    assert_eq!(h("x-correlation-id"), d.correlation_id.clone());
    assert_eq!(h("x-synchub-message-id"), Some(d.message_id.to_string()));
    assert_eq!(h("x-synchub-attempt").as_deref(), Some("3"));
    assert_eq!(h("authorization").as_deref(), Some("Bearer tok-123"));
    assert_eq!(h("x-tenant").as_deref(), Some("synchub"));
    assert_eq!(r.headers.get_all("idempotency-key").iter().count(), 1);
}

#[tokio::test]
async fn default_method_is_post() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let o = adapter(&server.uri()).deliver(&sample_delivery(1)).await;
    assert_eq!(o.label(), "delivered", "{o:?}");
}

#[tokio::test]
async fn invalid_config_is_refused_at_build_time() {
    let err = RestOutbound::new(RestOutboundConfig::new("ftp://partner")).unwrap_err();
    assert!(
        matches!(err, AdapterError::Config(ref m) if m.contains("scheme")),
        "{err}"
    );
}

#[tokio::test]
async fn healthcheck_counts_any_http_answer_as_reachable() {
    // 404 on HEAD is still a partner that answers.
    let server = partner(ResponseTemplate::new(404)).await;
    adapter(&server.uri()).healthcheck().await.unwrap();
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(
        reqs[0].method.as_str(),
        "HEAD",
        "the health check has no side effects"
    );

    let port = closed_port().await;
    let err = adapter(&format!("http://127.0.0.1:{port}"))
        .healthcheck()
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("HEAD http://127.0.0.1:"),
        "{err}"
    );
}

#[tokio::test]
async fn debug_output_does_not_show_the_token() {
    let mut cfg = RestOutboundConfig::new("https://user:pw@partner.example/in");
    cfg.bearer_token = Some("tok-123".into());
    let shown = format!("{:?}", RestOutbound::new(cfg).unwrap());
    assert!(
        !shown.contains("tok-123") && !shown.contains("pw@"),
        "{shown}"
    );
}

// --- SDK conformance -------------------------------------------------------------------------

struct WiremockPartner {
    server: MockServer,
    adapter: RestOutbound,
}

#[async_trait]
impl OutboundHarness for WiremockPartner {
    fn outbound(&self) -> &dyn Outbound {
        &self.adapter
    }

    async fn partner_will(&mut self, answer: PartnerAnswer) {
        // reset also clears the request log, so received() counts from here.
        self.server.reset().await;
        let template = match answer {
            PartnerAnswer::Ok => ResponseTemplate::new(200),
            PartnerAnswer::Transient => ResponseTemplate::new(503),
            PartnerAnswer::Permanent => {
                ResponseTemplate::new(422).set_body_string("mobile invalid")
            }
        };
        Mock::given(any())
            .respond_with(template)
            .mount(&self.server)
            .await;
    }

    async fn received(&self) -> usize {
        self.server.received_requests().await.unwrap().len()
    }
}

#[tokio::test]
async fn conformance_outbound_classifies_transient_and_permanent() {
    let server = MockServer::start().await;
    let adapter = adapter(&server.uri());
    testkit::outbound_classifies_transient_and_permanent(&mut WiremockPartner { server, adapter })
        .await;
}
