//! Outbound side of the contract: one attempt, one classified outcome. Retry policy (backoff,
//! max attempts, parking) lives only in the dispatcher; adapters never sleep-and-retry.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

use crate::envelope::ContentType;
use crate::error::AdapterError;

/// One delivery of one mapped message to one target, as handed to the outbound adapter.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub delivery_id: i64,
    pub message_id: Uuid,
    /// The target endpoint id.
    pub target: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// Stable across attempts and replays of the same message to the same target: partners can
    /// use it to drop duplicates (e.g. AMQP `message_id`, HTTP `Idempotency-Key`).
    pub idempotency_key: String,
    pub correlation_id: Option<String>,
    /// Hints from the route or mapping (`dealer_code`, `kind`) the adapter may use for addressing.
    pub headers: BTreeMap<String, String>,
    pub content_type: ContentType,
    /// The mapped body.
    pub body: Bytes,
}

/// What one attempt achieved.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered {
        /// The partner's id for what we sent, when it gives one.
        remote_ref: Option<String>,
    },
    /// Transient: try again later. `after` is the partner's own wish (`Retry-After`), which the
    /// dispatcher honours over its backoff.
    Retry {
        reason: String,
        after: Option<Duration>,
        cause_chain: Vec<String>,
    },
    /// Permanent: this body will never be accepted by this partner. Not retried.
    Reject {
        reason: String,
        cause_chain: Vec<String>,
    },
}

impl Outcome {
    pub fn retry(reason: impl Into<String>) -> Outcome {
        Outcome::Retry {
            reason: reason.into(),
            after: None,
            cause_chain: Vec::new(),
        }
    }

    pub fn reject(reason: impl Into<String>) -> Outcome {
        Outcome::Reject {
            reason: reason.into(),
            cause_chain: Vec::new(),
        }
    }

    /// The outcome's name as recorded on attempts and in metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::Reject { .. } => "reject",
        }
    }
}

/// An outbound adapter instance (one per configured endpoint).
#[async_trait]
pub trait Outbound: Send + Sync {
    /// Exactly one attempt. Must not retry internally and must not panic on partner garbage.
    async fn deliver(&self, delivery: &Delivery) -> Outcome;

    /// For adapters that hold a connection (AMQP): whether it is up right now. Such adapters
    /// report their connection state themselves, so a `Retry` of one delivery (an unroutable
    /// message) does not mark a connected partner down. `None`: request/response adapters.
    fn is_connected(&self) -> Option<bool> {
        None
    }

    /// Mimics the real operation without side effects; feeds the endpoint's state on the dashboard.
    async fn healthcheck(&self) -> Result<(), AdapterError> {
        Ok(())
    }
}
