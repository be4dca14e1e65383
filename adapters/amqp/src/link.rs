//! The supervised broker connection: connects, declares the topology, hands the connection to
//! publishers and consumers, and when it fails (broker restart, force-closed connection, a
//! channel error a user reported) reconnects with jittered backoff, forever, re-declaring the
//! topology each time. Observers hear `Up`/`Down` for the endpoint's status.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use rand::Rng;
use tokio::sync::{Notify, watch};

use crate::config::{AmqpConfig, QueueType};

/// A change of the link's state, for the endpoint's status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Connected and the topology is declared.
    Up,
    /// The connection failed or could not be made; the link keeps trying.
    Down { error: String },
}

/// Told about every state change, with the endpoint id.
pub type Observer = Arc<dyn Fn(&str, LinkEvent) + Send + Sync>;

/// One established connection; `generation` tells a stale one from its successor.
#[derive(Clone)]
pub struct Session {
    pub conn: Arc<Connection>,
    pub generation: u64,
}

pub struct Link {
    cfg: AmqpConfig,
    session: watch::Sender<Option<Session>>,
    broken: Notify,
    /// Generation a user reported broken (only the live one triggers a reconnect).
    broken_generation: Mutex<u64>,
    observer: Option<Observer>,
    last_error: Mutex<Option<String>>,
}

impl Link {
    pub fn new(cfg: AmqpConfig, observer: Option<Observer>) -> Arc<Link> {
        Arc::new(Link {
            cfg,
            session: watch::Sender::new(None),
            broken: Notify::new(),
            broken_generation: Mutex::new(0),
            observer,
            last_error: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &AmqpConfig {
        &self.cfg
    }

    /// The live connection, if there is one right now.
    pub fn current(&self) -> Option<Session> {
        self.session.borrow().clone()
    }

    /// Waits until a connection is up (or `shutdown` turns true: `None`).
    pub async fn wait_session(&self, shutdown: &mut watch::Receiver<bool>) -> Option<Session> {
        let mut rx = self.session.subscribe();
        loop {
            if *shutdown.borrow() {
                return None;
            }
            if let Some(s) = rx.borrow_and_update().clone() {
                return Some(s);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return None },
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Resolves once the connection of `generation` is no longer the live one. A consumer whose
    /// channel went quiet without an error (the connection died under it) must not wait on it
    /// forever while the link has already reconnected.
    pub async fn superseded(&self, generation: u64) {
        let mut rx = self.session.subscribe();
        loop {
            if rx
                .borrow_and_update()
                .as_ref()
                .is_none_or(|s| s.generation != generation)
            {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Why the link is not up, for the reason of a failed attempt.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| "not connected yet".into())
    }

    /// A publisher or consumer saw the connection of `generation` fail: reconnect now rather
    /// than wait for the heartbeat to notice.
    pub fn report_broken(&self, generation: u64, error: &str) {
        if self.current().is_some_and(|s| s.generation == generation) {
            if let Ok(mut g) = self.broken_generation.lock() {
                *g = generation;
            }
            self.set_error(error.to_string());
            self.broken.notify_one();
        }
    }

    fn set_error(&self, e: String) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(e);
        }
    }

    fn tell(&self, ev: LinkEvent) {
        if let Some(o) = &self.observer {
            o(&self.cfg.endpoint, ev);
        }
    }

    /// Keeps the link up until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut delay = self.cfg.reconnect_min;
        let mut generation = 0u64;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let attempt = tokio::time::timeout(self.cfg.connect_timeout, self.connect()).await;
            let error = match attempt {
                Ok(Ok(conn)) => {
                    generation += 1;
                    delay = self.cfg.reconnect_min;
                    let conn = Arc::new(conn);
                    let mut events = conn.events_listener();
                    self.session.send_replace(Some(Session {
                        conn: conn.clone(),
                        generation,
                    }));
                    tracing::info!(endpoint = %self.cfg.endpoint, url = %self.cfg.redacted_url(), generation, "AMQP connection up; topology declared.");
                    self.tell(LinkEvent::Up);
                    let error = tokio::select! {
                        e = async {
                            while let Some(ev) = events.next().await {
                                if let lapin::Event::Error(e) = ev {
                                    return format!("connection lost: {e}");
                                }
                            }
                            "connection closed".to_string()
                        } => e,
                        _ = self.broken.notified() => self.last_error(),
                        _ = shutdown.changed() => {
                            self.session.send_replace(None);
                            let _ = tokio::time::timeout(
                                Duration::from_secs(2),
                                conn.close(200, "synchub shutting down".into()),
                            )
                            .await;
                            break;
                        }
                    };
                    self.session.send_replace(None);
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        conn.close(320, "synchub reconnecting".into()),
                    )
                    .await;
                    error
                }
                Ok(Err(e)) => e,
                Err(_) => format!(
                    "connecting to {} timed out after {} ms",
                    self.cfg.redacted_url(),
                    self.cfg.connect_timeout.as_millis()
                ),
            };
            tracing::warn!(endpoint = %self.cfg.endpoint, error = %error, retry_in_ms = delay.as_millis() as u64, "AMQP link down; reconnecting.");
            self.set_error(error.clone());
            self.tell(LinkEvent::Down { error });
            let jittered = delay.mul_f64(rand::rng().random_range(0.5..=1.0));
            tokio::select! {
                _ = tokio::time::sleep(jittered) => {}
                _ = shutdown.changed() => {}
            }
            delay = (delay * 2).min(self.cfg.reconnect_max);
        }
        self.session.send_replace(None);
    }

    async fn connect(&self) -> Result<Connection, String> {
        let props = ConnectionProperties::default()
            .with_connection_name(self.cfg.connection_name.as_str().into());
        let conn = Connection::connect(&self.cfg.url, props)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.cfg.redacted_url()))?;
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        declare_topology(&ch, &self.cfg).await?;
        let _ = ch.close(200, "topology declared".into()).await;
        Ok(conn)
    }
}

/// Declares exchanges, the dead-letter pair and the inbound queues. Idempotent; a queue that
/// exists with other arguments fails with the broker's PRECONDITION_FAILED text, named here.
pub async fn declare_topology(ch: &Channel, cfg: &AmqpConfig) -> Result<(), String> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind) in [
        (&cfg.dealer_exchange, ExchangeKind::Topic),
        (&cfg.inbound_exchange, ExchangeKind::Topic),
        (&cfg.dead_letter_exchange, ExchangeKind::Fanout),
    ] {
        ch.exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
            .await
            .map_err(|e| format!("cannot declare exchange {name}: {e}"))?;
    }
    let queue_opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut dl_args = FieldTable::default();
    dl_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(cfg.queue_type.as_str().into()),
    );
    // Short-lived environments (tests) expire the dead-letter queue too: left behind, every
    // test run would add a durable queue the broker recovers at each start.
    if let Some(exp) = cfg.queue_expires {
        dl_args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(exp.as_millis() as i64),
        );
    }
    ch.queue_declare(cfg.dead_letter_queue.as_str().into(), queue_opts, dl_args)
        .await
        .map_err(|e| format!("cannot declare queue {}: {e}", cfg.dead_letter_queue))?;
    ch.queue_bind(
        cfg.dead_letter_queue.as_str().into(),
        cfg.dead_letter_exchange.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| format!("cannot bind queue {}: {e}", cfg.dead_letter_queue))?;
    for b in &cfg.bindings {
        ch.queue_declare(b.queue.as_str().into(), queue_opts, queue_args(cfg))
            .await
            .map_err(|e| format!("cannot declare queue {}: {e}", b.queue))?;
        ch.queue_bind(
            b.queue.as_str().into(),
            cfg.inbound_exchange.as_str().into(),
            b.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            format!(
                "cannot bind queue {} to {}: {e}",
                b.queue, cfg.inbound_exchange
            )
        })?;
    }
    Ok(())
}

fn queue_args(cfg: &AmqpConfig) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(cfg.queue_type.as_str().into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(cfg.dead_letter_exchange.as_str().into()),
    );
    if cfg.queue_type == QueueType::Quorum {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(cfg.delivery_limit.min(i32::MAX as u32) as i32),
        );
    }
    if let Some(exp) = cfg.queue_expires {
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(exp.as_millis() as i64),
        );
    }
    args
}
