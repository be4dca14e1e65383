//! SftpOutbound against a real sshd (behind a counting proxy): the SDK conformance suite, the
//! CSV written, idempotent redelivery, permanent refusals, timeouts and the health check.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use synchub_adapter_sdk::testkit::{self, OutboundHarness, PartnerAnswer, sample_delivery};
use synchub_adapter_sdk::{AdapterError, Delivery, Outbound, Outcome};
use synchub_adapter_sftp::testkit::{ProxyMode, SshdFixture, TcpProxy};
use synchub_adapter_sftp::{SftpOutbound, SftpOutboundConfig};

struct Partner {
    fx: SshdFixture,
    proxy: TcpProxy,
}

impl Partner {
    async fn start() -> Partner {
        let fx = SshdFixture::start();
        let proxy = TcpProxy::start(fx.port).await;
        Partner { fx, proxy }
    }

    fn config(&self) -> SftpOutboundConfig {
        let mut c = self.fx.outbound_config("in", "leads");
        c.port = self.proxy.port;
        c.known_hosts_file = self.fx.known_hosts_for(self.proxy.port);
        c.timeout_ms = 2000;
        c
    }

    fn file(&self, d: &Delivery) -> std::path::PathBuf {
        self.fx.path(&format!("in/leads_{}.csv", d.message_id))
    }
}

fn delivery(body: &str) -> Delivery {
    let mut d = sample_delivery(1);
    d.body = Bytes::from(body.to_owned());
    d
}

fn reason(o: &Outcome) -> &str {
    match o {
        Outcome::Retry { reason, .. } | Outcome::Reject { reason, .. } => reason,
        other => panic!("expected Retry or Reject, got {other:?}"),
    }
}

#[tokio::test]
async fn a_json_array_becomes_one_csv_file_and_a_redelivery_is_idempotent() {
    let p = Partner::start().await;
    let out = SftpOutbound::new(p.config());
    let d = delivery(
        r#"[{"lead_id":"L1","name":"张三","mobile":"13760001234"},{"lead_id":"L2","note":"a,b","mobile":null}]"#,
    );
    let o = out.deliver(&d).await;
    let path = p.fx.remote(&format!("in/leads_{}.csv", d.message_id));
    assert_eq!(
        o,
        Outcome::Delivered {
            remote_ref: Some(path.clone())
        }
    );
    assert_eq!(
        std::fs::read_to_string(p.file(&d)).unwrap(),
        "lead_id,name,mobile,note\nL1,张三,13760001234,\nL2,,,\"a,b\"\n"
    );
    // A crash between upload and recording the attempt: the dispatcher tries again.
    assert_eq!(
        out.deliver(&d).await,
        Outcome::Delivered {
            remote_ref: Some(path)
        }
    );
    assert_eq!(p.proxy.connections(), 2);
}

#[tokio::test]
async fn a_different_file_under_the_name_and_non_object_bodies_are_rejected() {
    let p = Partner::start().await;
    let out = SftpOutbound::new(p.config());
    let d = delivery(r#"{"lead_id":"L1"}"#);
    std::fs::write(p.file(&d), "someone else's\n").unwrap();
    let o = out.deliver(&d).await;
    assert_eq!(o.label(), "reject", "{o:?}");
    assert!(
        reason(&o).contains(&format!("leads_{}.csv", d.message_id)),
        "{o:?}"
    );
    assert_eq!(
        std::fs::read_to_string(p.file(&d)).unwrap(),
        "someone else's\n"
    );

    let before = p.proxy.connections();
    for body in ["[1,2]", "\"text\"", "not json", "[]"] {
        let o = out.deliver(&delivery(body)).await;
        assert_eq!(o.label(), "reject", "{body}: {o:?}");
    }
    assert_eq!(
        p.proxy.connections(),
        before,
        "bad bodies are refused without connecting"
    );
}

#[tokio::test]
async fn manifest_follows_the_data_file_when_configured() {
    let p = Partner::start().await;
    let mut cfg = p.config();
    cfg.manifest = true;
    let out = SftpOutbound::new(cfg);
    let mut d = delivery(r#"[{"vin":"V1"},{"vin":"V2"},{"vin":"V3"}]"#);
    d.headers.insert("entity".into(), "vehicles".into());
    d.headers.insert("to_cursor".into(), "c-42".into());
    assert_eq!(out.deliver(&d).await.label(), "delivered");
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.fx.path(&format!("in/leads_{}.manifest.json", d.message_id))).unwrap(),
    )
    .unwrap();
    assert_eq!(m["entity"], "vehicles");
    assert_eq!(m["rows"], 3);
    assert_eq!(m["to_cursor"], "c-42");
    assert!(m["from_cursor"].is_null());
    // Redelivery with the manifest already there is still delivered.
    assert_eq!(out.deliver(&d).await.label(), "delivered");
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_retry_within_the_timeout() {
    let p = Partner::start().await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut cfg = p.config();
    cfg.port = port;
    cfg.timeout_ms = 300;
    let started = Instant::now();
    let o = SftpOutbound::new(cfg)
        .deliver(&delivery(r#"{"a":1}"#))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(o.label(), "retry", "{o:?}");
    assert!(reason(&o).contains("timed out"), "{o:?}");
    hold.abort();
}

#[tokio::test]
async fn healthcheck_connects_and_stats_the_directory() {
    let mut p = Partner::start().await;
    let out = SftpOutbound::new(p.config());
    out.healthcheck().await.unwrap();
    assert!(
        std::fs::read_dir(p.fx.path("in")).unwrap().next().is_none(),
        "the health check writes nothing"
    );

    let mut cfg = p.config();
    cfg.dir = p.fx.remote("missing");
    assert!(matches!(
        SftpOutbound::new(cfg).healthcheck().await,
        Err(AdapterError::Config(m)) if m.contains("missing")
    ));

    p.fx.stop();
    assert!(matches!(
        out.healthcheck().await,
        Err(AdapterError::NotConnected(_))
    ));
}

// ------------------------------------------------------------------------------------------
// SDK outbound conformance. The proxy counts connections = attempts the partner saw.
// Transient = the server drops every connection; Permanent = a different file already holds
// the delivery's name (a refusal the partner's side makes, so the attempt reaches it).
// ------------------------------------------------------------------------------------------

struct Harness {
    p: Partner,
    out: SftpOutbound,
    answer: PartnerAnswer,
}

#[async_trait]
impl OutboundHarness for Harness {
    fn outbound(&self) -> &dyn Outbound {
        &self.out
    }

    async fn partner_will(&mut self, answer: PartnerAnswer) {
        self.answer = answer;
        self.p.proxy.set_mode(match answer {
            PartnerAnswer::Transient => ProxyMode::Drop,
            PartnerAnswer::Ok | PartnerAnswer::Permanent => ProxyMode::Forward,
        });
    }

    async fn received(&self) -> usize {
        self.p.proxy.connections()
    }

    fn delivery(&self, attempt: u32) -> Delivery {
        let d = sample_delivery(attempt);
        if self.answer == PartnerAnswer::Permanent {
            std::fs::write(self.p.file(&d), "a different file\n").unwrap();
        }
        d
    }
}

#[tokio::test]
async fn conformance_outbound_classifies_transient_and_permanent() {
    let p = Partner::start().await;
    let out = SftpOutbound::new(p.config());
    let mut h = Harness {
        p,
        out,
        answer: PartnerAnswer::Ok,
    };
    testkit::outbound_classifies_transient_and_permanent(&mut h).await;
}
