//! The inbound consumer: one consumer per configured queue, up to `prefetch` messages journaled
//! concurrently (so the store's group commit batches them), acknowledged in delivery order with
//! `multiple = true` only after their journal commit. A message that can never be processed
//! (not JSON, not records) is journaled as rejected and acked: never requeued in a hot loop, never
//! dropped. When the journal itself is unavailable the message is nacked for redelivery after a
//! pause. A redelivery after a crash between commit and ack is a duplicate by `source_ref`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use synchub_adapter_sdk::{
    ContentType, Envelope, FieldError, Inbox, Principal, RecordIn, Submission,
};
use tokio::sync::watch;

use crate::config::Binding;
use crate::link::{Link, Session};

/// Most records one message may carry (as a REST request).
pub const MAX_RECORDS: usize = 1000;

/// How much of a message refused as too large is journaled: enough for an operator to see what
/// it was and who sent it.
pub const REFUSED_BODY_BYTES: usize = 64 * 1024;

pub struct AmqpInbound {
    link: Arc<Link>,
    inbox: Arc<dyn Inbox>,
}

/// One burst of messages journaled together: each delivery tag with its result, in order.
type Journaled<'a> = Pin<Box<dyn Future<Output = Vec<(u64, Result<(), String>)>> + Send + 'a>>;

/// Most messages journaled in one store write.
const BURST: usize = 512;

/// What a message turned out to be before it reaches the journal.
enum Parsed {
    Records(Vec<RecordIn>),
    Refused { code: &'static str, reason: String },
}

impl AmqpInbound {
    pub fn new(link: Arc<Link>, inbox: Arc<dyn Inbox>) -> AmqpInbound {
        AmqpInbound { link, inbox }
    }

    /// Consumes every configured queue until `shutdown` turns true, riding out reconnects.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let tasks: Vec<_> = self
            .link
            .config()
            .bindings
            .iter()
            .cloned()
            .map(|b| tokio::spawn(self.clone().consume_forever(b, shutdown.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn consume_forever(self: Arc<Self>, b: Binding, mut shutdown: watch::Receiver<bool>) {
        let mut journal_failures = 0u32;
        loop {
            let Some(session) = self.link.wait_session(&mut shutdown).await else {
                return;
            };
            let pause = match self.consume(&session, &b, &mut shutdown).await {
                Stop::Shutdown => return,
                Stop::Link(e) => {
                    tracing::warn!(endpoint = %self.link.config().endpoint, queue = %b.queue, error = %e, "AMQP consumer stopped; resuming after reconnect.");
                    self.link.report_broken(session.generation, &e);
                    journal_failures = 0;
                    Duration::from_millis(200)
                }
                Stop::Journal(e) => {
                    // Stop consuming while the journal cannot take messages: they wait in the
                    // queue (visible to the broker's operators), not in a hot redelivery loop.
                    journal_failures += 1;
                    let pause = self
                        .link
                        .config()
                        .journal_pause
                        .saturating_mul(1 << journal_failures.min(6))
                        .min(Duration::from_secs(60));
                    tracing::warn!(endpoint = %self.link.config().endpoint, queue = %b.queue, error = %e, pause_ms = pause.as_millis() as u64, "Journal unavailable; messages stay in the queue and consuming pauses.");
                    pause
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn consume(
        &self,
        session: &Session,
        b: &Binding,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Stop {
        let cfg = self.link.config();
        let ch = match session.conn.create_channel().await {
            Ok(ch) => ch,
            Err(e) => return Stop::Link(format!("cannot open a channel: {e}")),
        };
        let stop = self.consume_on(&ch, session.generation, b, shutdown).await;
        // Closing the channel hands every unacknowledged message back to the queue.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            ch.close(
                200,
                format!("synchub consumer of {} stopping", cfg.endpoint).into(),
            ),
        )
        .await;
        stop
    }

    async fn consume_on(
        &self,
        ch: &Channel,
        generation: u64,
        b: &Binding,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Stop {
        let cfg = self.link.config();
        let superseded = self.link.superseded(generation);
        tokio::pin!(superseded);
        if let Err(e) = ch
            .basic_qos(cfg.prefetch.max(1), BasicQosOptions::default())
            .await
        {
            return Stop::Link(format!("basic.qos failed: {e}"));
        }
        let tag = format!("synchub:{}:{}", cfg.endpoint, uuid::Uuid::now_v7().simple());
        let mut consumer = match ch
            .basic_consume(
                b.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return Stop::Link(format!("cannot consume from queue {}: {e}", b.queue)),
        };
        let limit = usize::from(cfg.prefetch.max(1));
        let mut inflight: FuturesOrdered<Journaled<'_>> = FuturesOrdered::new();
        let mut acks = Acks::default();
        // Messages handed to the journal and not yet settled (the prefetch bounds it anyway).
        let mut pending = 0usize;
        loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    // Finish what is being journaled and ack it; the broker requeues the rest
                    // of the prefetch when the channel closes.
                    while let Some(done) = inflight.next().await {
                        done.into_iter().for_each(|x| acks.settle(x));
                    }
                    return match acks.flush(ch).await {
                        Ok(()) => Stop::Shutdown,
                        Err(e) => Stop::Link(e),
                    };
                }
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    pending -= done.len();
                    done.into_iter().for_each(|x| acks.settle(x));
                    // Everything else already journaled goes in the same ack: group commits
                    // finish many messages at once, and one `multiple` ack covers them all.
                    while let Some(Some(done)) = inflight.next().now_or_never() {
                        pending -= done.len();
                        done.into_iter().for_each(|x| acks.settle(x));
                    }
                    None
                }
                // What is being journaled is left to finish unacked: the broker hands it out
                // again, and the journal knows it by its source_ref.
                _ = &mut superseded => Some(Stop::Link(format!(
                    "the connection of the consumer on queue {} was replaced", b.queue
                ))),
                next = consumer.next(), if pending < limit => match next {
                    None => Some(Stop::Link(format!("the broker closed the consumer on queue {}", b.queue))),
                    Some(Err(e)) => Some(Stop::Link(format!("consumer on queue {} failed: {e}", b.queue))),
                    Some(Ok(d)) => {
                        // Whatever else the broker has already handed over goes into the same
                        // journal write: one commit and a few statements for the whole burst.
                        let mut burst = vec![d];
                        let mut stop = None;
                        while burst.len() < BURST && pending + burst.len() < limit {
                            match consumer.next().now_or_never() {
                                Some(Some(Ok(d))) => burst.push(d),
                                Some(Some(Err(e))) => {
                                    stop = Some(Stop::Link(format!("consumer on queue {} failed: {e}", b.queue)));
                                    break;
                                }
                                Some(None) => {
                                    stop = Some(Stop::Link(format!("the broker closed the consumer on queue {}", b.queue)));
                                    break;
                                }
                                None => break,
                            }
                        }
                        pending += burst.len();
                        inflight.push_back(Box::pin(self.journal(b, burst)));
                        stop
                    }
                },
            };
            if acks.failed.is_some() {
                // Let the rest finish (each acked on its own), then give the failed ones back.
                while let Some(done) = inflight.next().await {
                    pending -= done.len();
                    done.into_iter().for_each(|x| acks.settle(x));
                }
            }
            if let Err(e) = acks.flush(ch).await {
                return Stop::Link(e);
            }
            if let Some(e) = acks.failed.take() {
                return Stop::Journal(e);
            }
            if let Some(stop) = step {
                return stop;
            }
        }
    }

    /// Journals a burst of messages: their submissions in one `accept_many`, refused ones one
    /// by one. Every message of a failed `accept_many` is failed (none may be acked).
    async fn journal(&self, b: &Binding, burst: Vec<Delivery>) -> Vec<(u64, Result<(), String>)> {
        let cfg = self.link.config();
        let mut results: Vec<(u64, Result<(), String>)> = Vec::with_capacity(burst.len());
        let mut submissions = Vec::new();
        let mut at = Vec::new();
        for d in burst {
            let tag = d.delivery_tag;
            let (env, parsed) = envelope(&cfg.endpoint, &cfg.system, cfg.max_body_bytes, b, d);
            match parsed {
                Parsed::Records(records) => {
                    at.push(results.len());
                    results.push((tag, Ok(())));
                    submissions.push(Submission {
                        envelope: env,
                        records,
                    });
                }
                Parsed::Refused { code, reason } => {
                    tracing::info!(endpoint = %env.endpoint, code, reason = %reason, "AMQP message refused; journaled as rejected and acked.");
                    let r = self.inbox.reject(env, code, &reason).await;
                    results.push((tag, r.map(|_| ()).map_err(|e| e.to_string())));
                }
            }
        }
        if !submissions.is_empty()
            && let Err(e) = self.inbox.accept_many(submissions).await
        {
            let e = e.to_string();
            for i in at {
                results[i].1 = Err(e.clone());
            }
        }
        results
    }
}

/// Why a consumer stopped.
enum Stop {
    Shutdown,
    /// The channel or connection failed: reconnect.
    Link(String),
    /// The journal refused a message (store down or full): pause, then consume again.
    Journal(String),
}

/// Acks owed to the broker, in delivery order. Before the first journal failure they go out as
/// one `multiple` ack up to the last success; after it, one by one, so the failed message is
/// never acked by a `multiple` that covers it.
#[derive(Default)]
struct Acks {
    upto: Option<u64>,
    singles: Vec<u64>,
    failed: Option<String>,
}

impl Acks {
    fn settle(&mut self, (tag, result): (u64, Result<(), String>)) {
        match (result, &self.failed) {
            (Ok(()), None) => self.upto = Some(tag),
            (Ok(()), Some(_)) => self.singles.push(tag),
            (Err(e), None) => self.failed = Some(e),
            (Err(_), Some(_)) => {}
        }
    }

    async fn flush(&mut self, ch: &Channel) -> Result<(), String> {
        if let Some(tag) = self.upto.take() {
            ch.basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .map_err(|e| format!("basic.ack failed: {e}"))?;
        }
        for tag in self.singles.drain(..) {
            ch.basic_ack(tag, BasicAckOptions { multiple: false })
                .await
                .map_err(|e| format!("basic.ack failed: {e}"))?;
        }
        Ok(())
    }
}

fn header_text(headers: &Option<FieldTable>, name: &str) -> Option<String> {
    let v = headers.as_ref()?.inner().get(name)?;
    match v {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The envelope of one AMQP message, and its records or the reason it is refused as a whole.
fn envelope(
    endpoint: &str,
    system: &str,
    max_body_bytes: usize,
    b: &Binding,
    d: Delivery,
) -> (Envelope, Parsed) {
    let props = &d.properties;
    let size = d.data.len();
    let mut data = d.data;
    let too_large = size > max_body_bytes;
    if too_large {
        data.truncate(REFUSED_BODY_BYTES);
    }
    let mut env = Envelope::new(endpoint, ContentType::Json, Bytes::from(data));
    env.correlation_id = props
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str().to_string());
    env.headers.insert("amqp.queue".into(), b.queue.clone());
    env.headers
        .insert("amqp.exchange".into(), d.exchange.as_str().to_string());
    env.headers.insert(
        "amqp.routing_key".into(),
        d.routing_key.as_str().to_string(),
    );
    env.headers
        .insert("amqp.redelivered".into(), d.redelivered.to_string());
    if let Some(id) = props.message_id() {
        env.headers
            .insert("amqp.message_id".into(), id.as_str().to_string());
    }
    if let Some(app) = props.app_id() {
        env.headers
            .insert("amqp.app_id".into(), app.as_str().to_string());
    }
    if too_large {
        env.headers.insert("amqp.truncated".into(), "true".into());
        return (
            env,
            Parsed::Refused {
                code: "payload_too_large",
                reason: format!(
                    "message body of {size} bytes exceeds {max_body_bytes} bytes; the journal keeps its first {REFUSED_BODY_BYTES}"
                ),
            },
        );
    }
    let value: Value = match serde_json::from_slice(&env.body) {
        Ok(v) => v,
        Err(e) => {
            return (
                env,
                Parsed::Refused {
                    code: "invalid_json",
                    reason: format!("message body is not valid JSON: {e}"),
                },
            );
        }
    };
    let items = match value {
        Value::Array(items) => items,
        other @ Value::Object(_) => vec![other],
        _ => {
            return (
                env,
                Parsed::Refused {
                    code: "invalid_body",
                    reason: "message body must be a JSON object or an array of objects".into(),
                },
            );
        }
    };
    if items.is_empty() || items.len() > MAX_RECORDS {
        let n = items.len();
        return (
            env,
            Parsed::Refused {
                code: "invalid_body",
                reason: format!("a message carries 1 to {MAX_RECORDS} records, this one {n}"),
            },
        );
    }
    // The DMS says who it is by the `dealer_code` header, else by its first record; every
    // record must belong to that dealer, as a dealer's REST key allows only its own records.
    let dealer = header_text(props.headers(), "dealer_code").or_else(|| {
        items
            .first()
            .and_then(|i| i.get("dealer_code"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    env.principal = Some(Principal {
        system: system.to_string(),
        dealer_code: dealer.clone(),
    });
    let records = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let source_ref = item
                .get("source_ref")
                .and_then(Value::as_str)
                .map(str::to_string);
            let body = match (&item, &dealer) {
                (Value::Object(_), Some(d))
                    if item
                        .get("dealer_code")
                        .and_then(Value::as_str)
                        .is_some_and(|x| x != d) =>
                {
                    Err(vec![FieldError::new(
                        "dealer_code",
                        format!(
                            "{} does not match the message's dealer {d}",
                            item["dealer_code"].as_str().unwrap_or_default()
                        ),
                    )])
                }
                (Value::Object(_), _) => Ok(item),
                _ => Err(vec![FieldError::new("", "record is not a JSON object")]),
            };
            RecordIn {
                index,
                record_type: b.record_type.clone(),
                source_ref,
                body,
            }
        })
        .collect();
    (env, Parsed::Records(records))
}
