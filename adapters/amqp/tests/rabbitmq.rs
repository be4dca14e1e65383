//! The AMQP adapter against the real RabbitMQ on 127.0.0.1:5672: the SDK inbound conformance
//! suite, poison messages, publisher confirms and their failure modes, and reconnecting after
//! the broker closes the hub's connection. Each test uses exchange and queue names of its own
//! (expiring) so tests run in parallel on the shared broker.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use synchub_adapter_amqp::{
    AmqpConfig, AmqpInbound, AmqpOutbound, Binding, Link, LinkEvent, QueueType,
};
use synchub_adapter_sdk::testkit::{
    self, FakeInbox, InboundHarness, PATIENCE, PartnerView, sample_delivery,
};
use synchub_adapter_sdk::{Inbox, Outbound, Outcome};
use tokio::sync::watch;

fn broker_url() -> String {
    std::env::var("SYNCHUB_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A plain client connection, as a DMS would have; fails loudly when the broker is missing.
async fn client() -> (Connection, Channel) {
    let conn = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is required on {} for this test and is not reachable: {e}",
                broker_url()
            )
        });
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// Names of this test's own; queues expire when idle so the shared broker stays clean.
fn test_config(endpoint_hint: &str) -> AmqpConfig {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let p = format!("t{}.", &id[20..]);
    let mut cfg = AmqpConfig::new(format!("{endpoint_hint}_{}", &id[20..]), broker_url());
    cfg.dealer_exchange = format!("{p}synchub.dealer");
    cfg.inbound_exchange = format!("{p}synchub.inbound");
    cfg.dead_letter_exchange = format!("{p}synchub.dead-letter");
    cfg.dead_letter_queue = format!("{p}synchub.dead-letter");
    cfg.queue_type = QueueType::Classic;
    cfg.queue_expires = Some(Duration::from_secs(300));
    cfg.bindings = vec![Binding {
        queue: format!("{p}synchub.dms.lead-results"),
        routing_key: "dms.lead-result".into(),
        record_type: "lead_result".into(),
    }];
    cfg.reconnect_min = Duration::from_millis(100);
    cfg.reconnect_max = Duration::from_millis(500);
    cfg
}

/// `(ready, unacknowledged)` of a queue, as the broker sees it.
fn queue_counts(queue: &str) -> (u64, u64) {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
        .expect("rabbitmqctl runs (it comes with rabbitmq-server)");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 3 && f[0] == queue {
            return (f[1].parse().unwrap_or(0), f[2].parse().unwrap_or(0));
        }
    }
    panic!("queue {queue} not found on the broker: {text}");
}

/// Force-closes every broker connection whose name contains `needle`, as an operator (or a
/// broker restart) would; other connections on the shared broker are left alone.
fn close_connections(needle: &str) -> usize {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let mut n = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.contains(needle)
            && let Some(pid) = line.split_whitespace().next()
        {
            let st = Command::new("rabbitmqctl")
                .args(["close_connection", pid, "closed by the synchub test"])
                .status()
                .expect("rabbitmqctl runs");
            assert!(st.success(), "close_connection {pid} failed");
            n += 1;
        }
    }
    n
}

/// Link events seen so far.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<LinkEvent>>>);

impl Events {
    fn observer(&self) -> synchub_adapter_amqp::Observer {
        let me = self.clone();
        Arc::new(move |_, ev| me.0.lock().unwrap().push(ev))
    }

    fn ups(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| **e == LinkEvent::Up)
            .count()
    }

    fn downs(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, LinkEvent::Down { .. }))
            .count()
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A consumer wired to a FakeInbox, running until dropped.
struct Consumer {
    inbox: Arc<FakeInbox>,
    cfg: AmqpConfig,
    events: Events,
    publisher: Channel,
    _conn: Connection,
    stop: watch::Sender<bool>,
}

impl Consumer {
    async fn start(cfg: AmqpConfig) -> Consumer {
        let inbox = Arc::new(FakeInbox::new());
        let events = Events::default();
        let link = Link::new(cfg.clone(), Some(events.observer()));
        let (stop, rx) = watch::channel(false);
        tokio::spawn(link.clone().run(rx.clone()));
        let dyn_inbox: Arc<dyn Inbox> = inbox.clone();
        tokio::spawn(Arc::new(AmqpInbound::new(link, dyn_inbox)).run(rx));
        wait_for("the link to come up", || events.ups() >= 1).await;
        let (conn, publisher) = client().await;
        Consumer {
            inbox,
            cfg,
            events,
            publisher,
            _conn: conn,
            stop,
        }
    }

    fn queue(&self) -> String {
        self.cfg.bindings[0].queue.clone()
    }

    async fn publish_raw(&self, body: &[u8], headers: FieldTable) {
        self.publisher
            .basic_publish(
                self.cfg.inbound_exchange.as_str().into(),
                "dms.lead-result".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await
            .expect("publish")
            .await
            .expect("published");
    }

    async fn publish(&self, body: &Value) {
        self.publish_raw(&serde_json::to_vec(body).unwrap(), FieldTable::default())
            .await;
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn lead_result(n: usize, dealer: &str) -> Value {
    json!({"source_ref": format!("LR-{n}"), "lead_id": "L1", "dealer_code": dealer, "status": "contacted"})
}

struct Harness {
    c: Consumer,
    sent: usize,
}

#[async_trait]
impl InboundHarness for Harness {
    /// Whether this is the broker's redelivery of an earlier unit (it waits in the queue while
    /// the consumer pauses, so only its ack is a final answer).
    type Sent = bool;

    fn inbox(&self) -> &FakeInbox {
        &self.c.inbox
    }

    async fn send(&mut self, records: usize) -> bool {
        let body: Vec<Value> = (0..records)
            .map(|i| lead_result(self.sent * 100 + i, "D0001"))
            .collect();
        self.sent += 1;
        self.c.publish(&Value::Array(body)).await;
        false
    }

    async fn peek(&mut self, _sent: &mut bool) -> PartnerView {
        let q = self.c.queue();
        let (ready, unacked) = tokio::task::spawn_blocking(move || queue_counts(&q))
            .await
            .unwrap();
        match (ready, unacked) {
            (0, 0) => PartnerView::Acked,
            (_, 0) => PartnerView::TryAgain,
            _ => PartnerView::NoAnswerYet,
        }
    }

    async fn outcome(&mut self, sent: &mut bool) -> PartnerView {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let v = self.peek(sent).await;
            let waiting = v == PartnerView::NoAnswerYet || (*sent && v == PartnerView::TryAgain);
            if !waiting || tokio::time::Instant::now() > deadline {
                return v;
            }
        }
    }

    async fn redeliver(&mut self, _sent: &bool) -> bool {
        true
    }

    fn settle(&self) -> Duration {
        Duration::from_millis(300)
    }
}

async fn harness() -> Harness {
    let mut cfg = test_config("conformance");
    // Long enough for rabbitmqctl (about a second per look) to see the message back in the queue.
    cfg.journal_pause = Duration::from_secs(2);
    Harness {
        c: Consumer::start(cfg).await,
        sent: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_acks_only_after_commit() {
    testkit::acks_only_after_commit(&mut harness().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_redelivers_when_accept_fails() {
    testkit::redelivers_when_accept_fails(&mut harness().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_are_journaled_as_rejected_acked_and_do_not_block_the_queue() {
    let c = Consumer::start(test_config("poison")).await;
    c.publish_raw(b"{\"lead_id\": \"L1\", oops", FieldTable::default())
        .await;
    c.publish_raw(b"42", FieldTable::default()).await;
    c.publish(&json!([lead_result(1, "D0002"), lead_result(2, "D0003")]))
        .await;
    c.publish(&lead_result(3, "D0002")).await;
    wait_for("all four messages journaled", || {
        c.inbox.refusals().len() == 2 && c.inbox.submissions().len() == 2
    })
    .await;
    let refusals = c.inbox.refusals();
    assert_eq!(refusals[0].code, "invalid_json");
    assert!(
        refusals[0].reason.contains("not valid JSON"),
        "{}",
        refusals[0].reason
    );
    assert_eq!(
        &refusals[0].envelope.body[..],
        b"{\"lead_id\": \"L1\", oops",
        "the raw bytes are kept"
    );
    assert_eq!(refusals[1].code, "invalid_body");
    // A record of another dealer inside a dealer's message is rejected on its own.
    let mixed = &c.inbox.submissions()[0];
    assert_eq!(
        mixed.envelope.principal.as_ref().unwrap().scope(),
        "dms:D0002"
    );
    assert!(mixed.records[0].body.is_ok());
    let err = mixed.records[1].body.as_ref().unwrap_err();
    assert!(
        err[0]
            .reason
            .contains("D0003 does not match the message's dealer D0002"),
        "{err:?}"
    );
    assert_eq!(
        mixed.envelope.headers["amqp.routing_key"],
        "dms.lead-result"
    );
    let q = c.queue();
    let counts = tokio::task::spawn_blocking(move || queue_counts(&q))
        .await
        .unwrap();
    assert_eq!(counts, (0, 0), "every message acked, none requeued");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dealer_header_names_the_sender_when_given() {
    let c = Consumer::start(test_config("dealerhdr")).await;
    let mut h = FieldTable::default();
    h.insert("dealer_code".into(), AMQPValue::LongString("D0001".into()));
    c.publish_raw(&serde_json::to_vec(&lead_result(1, "D0002")).unwrap(), h)
        .await;
    wait_for("the message journaled", || c.inbox.submissions().len() == 1).await;
    let s = &c.inbox.submissions()[0];
    assert_eq!(s.envelope.principal.as_ref().unwrap().scope(), "dms:D0001");
    assert!(
        s.records[0].body.is_err(),
        "a D0002 record in D0001's message is refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_resumes_after_the_broker_closes_its_connection() {
    let c = Consumer::start(test_config("reconnect")).await;
    c.publish(&lead_result(1, "D0001")).await;
    wait_for("the first message", || c.inbox.submissions().len() == 1).await;
    let name = c.cfg.endpoint.clone();
    let closed = tokio::task::spawn_blocking(move || close_connections(&name))
        .await
        .unwrap();
    assert_eq!(closed, 1, "the hub's one connection was found and closed");
    wait_for("the link to go down and up again", || {
        c.events.downs() >= 1 && c.events.ups() >= 2
    })
    .await;
    c.publish(&lead_result(2, "D0001")).await;
    wait_for("the message after the reconnect", || {
        c.inbox.submissions().len() == 2
    })
    .await;
}

/// A publisher link plus a DMS queue bound for dealer D0001, and a spy for what was published.
struct Publisher {
    out: AmqpOutbound,
    cfg: AmqpConfig,
    ch: Channel,
    _conn: Connection,
    _stop: watch::Sender<bool>,
}

impl Publisher {
    async fn start(cfg: AmqpConfig) -> Publisher {
        let events = Events::default();
        let link = Link::new(cfg.clone(), Some(events.observer()));
        let (stop, rx) = watch::channel(false);
        tokio::spawn(link.clone().run(rx));
        wait_for("the link to come up", || events.ups() >= 1).await;
        let (conn, ch) = client().await;
        Publisher {
            out: AmqpOutbound::new(link),
            cfg,
            ch,
            _conn: conn,
            _stop: stop,
        }
    }

    /// Declares a DMS queue bound with `key`, with extra queue arguments.
    async fn dms_queue(&self, name: &str, key: &str, args: FieldTable) -> String {
        let q = format!("{}{name}", self.cfg.dealer_exchange);
        let mut args = args;
        args.insert("x-expires".into(), AMQPValue::LongLongInt(300_000));
        self.ch
            .queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args)
            .await
            .expect("declare DMS queue");
        self.ch
            .queue_bind(
                q.as_str().into(),
                self.cfg.dealer_exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind DMS queue");
        q
    }
}

fn delivery_for(dealer: &str, kind: &str) -> synchub_adapter_sdk::Delivery {
    let mut d = sample_delivery(1);
    d.headers = BTreeMap::from([
        ("dealer_code".to_string(), dealer.to_string()),
        ("kind".to_string(), kind.to_string()),
    ]);
    d.body = serde_json::to_vec(&json!({"event": "customer.updated", "customer_id": "C1"}))
        .unwrap()
        .into();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_persistent_confirmed_messages_to_the_dealer_routing_key() {
    let p = Publisher::start(test_config("publish")).await;
    let q = p
        .dms_queue(".dms.D0001", "dealer.D0001.#", FieldTable::default())
        .await;
    let d = delivery_for("D0001", "customer");
    assert_eq!(
        p.out.deliver(&d).await,
        Outcome::Delivered { remote_ref: None }
    );
    let got =
        p.ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .expect("the DMS queue holds the message");
    assert_eq!(got.delivery.routing_key.as_str(), "dealer.D0001.customer");
    assert_eq!(&got.delivery.data[..], &d.body[..]);
    let props = &got.delivery.properties;
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some(d.idempotency_key.as_str()),
        "message_id lets the DMS drop a redelivered duplicate"
    );
    assert_eq!(
        props.correlation_id().as_ref().map(|s| s.as_str()),
        Some("corr-test-1")
    );
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unroutable_nacked_unaddressable_and_disconnected_are_classified() {
    let p = Publisher::start(test_config("classify")).await;
    // No queue bound for D0009: the broker returns it (mandatory) — retried, never "delivered".
    match p.out.deliver(&delivery_for("D0009", "customer")).await {
        Outcome::Retry {
            reason,
            cause_chain,
            ..
        } => {
            assert!(reason.contains("unroutable"), "{reason}");
            assert!(reason.contains("dealer.D0009.customer"), "{reason}");
            assert!(cause_chain[0].contains("312"), "{cause_chain:?}");
        }
        other => panic!("unroutable must be retried, got {other:?}"),
    }
    // A full queue that rejects publishes: the broker nacks, which is a retry.
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongInt(0));
    full.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    p.dms_queue(".dms.D0005", "dealer.D0005.#", full).await;
    match p.out.deliver(&delivery_for("D0005", "lead")).await {
        Outcome::Retry { reason, .. } => assert!(reason.contains("nack"), "{reason}"),
        other => panic!("a nack must be retried, got {other:?}"),
    }
    // A dealer code that would widen the routing key is refused outright.
    match p.out.deliver(&delivery_for("D0001.#", "lead")).await {
        Outcome::Reject { reason, .. } => {
            assert!(reason.contains("not a valid routing-key word"), "{reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let mut no_dealer = delivery_for("D0001", "lead");
    no_dealer.headers.remove("dealer_code");
    assert_eq!(p.out.deliver(&no_dealer).await.label(), "reject");
    assert_eq!(p.out.is_connected(), Some(true));

    // A broker that is not there: retried with the reason, and the adapter says it is down.
    let mut cfg = test_config("nobroker");
    cfg.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let link = Link::new(cfg, None);
    let (_stop, rx) = watch::channel(false);
    tokio::spawn(link.clone().run(rx));
    let out = AmqpOutbound::new(link);
    tokio::time::sleep(Duration::from_millis(300)).await;
    match out.deliver(&delivery_for("D0001", "lead")).await {
        Outcome::Retry { reason, .. } => {
            assert!(reason.contains("not connected"), "{reason}");
            assert!(reason.contains("127.0.0.1:1"), "names the broker: {reason}");
            assert!(!reason.contains("guest:guest"), "no password: {reason}");
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    assert_eq!(out.is_connected(), Some(false));
}

#[tokio::test(flavor = "multi_thread")]
async fn publisher_recovers_after_the_broker_closes_its_connection() {
    let p = Publisher::start(test_config("pubreconnect")).await;
    let q = p
        .dms_queue(".dms.D0001", "dealer.D0001.#", FieldTable::default())
        .await;
    assert_eq!(
        p.out.deliver(&delivery_for("D0001", "lead")).await.label(),
        "delivered"
    );
    let name = p.cfg.endpoint.clone();
    let closed = tokio::task::spawn_blocking(move || close_connections(&name))
        .await
        .unwrap();
    assert_eq!(closed, 1);
    // Attempts during the outage are retries; once the link is back they are delivered.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match p.out.deliver(&delivery_for("D0001", "lead")).await {
            Outcome::Delivered { .. } => break,
            Outcome::Retry { .. } => {}
            other => panic!("an outage must never reject: {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publisher never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ch = p.ch.clone();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .ok();
    let mut n = 0;
    while ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .is_some()
    {
        n += 1;
    }
    assert_eq!(n, 2, "one before, one after the reconnect");
}
