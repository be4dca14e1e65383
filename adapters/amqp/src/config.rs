//! What an AMQP endpoint is configured with: broker URL, topology names, queue kind, prefetch,
//! and the routing-key template for publishing. The runtime fills it from `endpoints/<id>.toml`.

use std::time::Duration;

/// Queue kind for the queues the hub declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Replicated, and much faster with batched acks (CRATES hazard 10); the default.
    #[default]
    Quorum,
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// One inbound queue: declared by the hub, bound to the inbound exchange with `routing_key`,
/// and every message on it carries records of `record_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub queue: String,
    pub routing_key: String,
    pub record_type: String,
}

/// Default [`AmqpConfig::max_body_bytes`]: 10 MiB, the REST API's limit (INTERFACES §1).
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// The endpoint id (journal rows, status, connection name).
    pub endpoint: String,
    /// `amqp://user:pass@host:port/vhost` (`amqps://` for TLS).
    pub url: String,
    /// Topic exchange the hub publishes dealer messages to.
    pub dealer_exchange: String,
    /// Topic exchange DMS systems publish results to.
    pub inbound_exchange: String,
    /// Exchange (fanout) and queue that take what the broker itself gives up on.
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub queue_type: QueueType,
    /// Quorum queues dead-letter a message redelivered more often than this (a poison message
    /// that crashes the consumer every time cannot loop forever).
    pub delivery_limit: u32,
    /// `x-expires` for declared queues, for short-lived environments (tests); `None` keeps them.
    pub queue_expires: Option<Duration>,
    /// Inbound: the queues to consume (empty for a publish-only endpoint).
    pub bindings: Vec<Binding>,
    /// Inbound: unacknowledged messages the broker may hand over at once (QoS prefetch).
    pub prefetch: u16,
    /// Inbound: the largest message body journaled and parsed (as the REST API's body limit).
    /// A larger one is journaled as refused with its first [`crate::inbound::REFUSED_BODY_BYTES`]
    /// and acked: with `prefetch` messages in flight, unbounded bodies would let one DMS
    /// exhaust the hub's memory and fill the journal.
    pub max_body_bytes: usize,
    /// Inbound: first pause of consuming after the journal refused a message (doubles while it
    /// keeps refusing, up to a minute).
    pub journal_pause: Duration,
    /// Outbound: routing key template; `{name}` is replaced by the delivery header `name`
    /// (`dealer_code`, `kind`, `record_type`, ...).
    pub routing_key: String,
    /// Outbound: how long to wait for the broker's confirm before calling the attempt failed.
    pub confirm_timeout: Duration,
    /// Timeout for connecting and declaring the topology.
    pub connect_timeout: Duration,
    /// Reconnect backoff bounds (jittered, doubling).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// The `system` of the principal inbound messages are journaled under (`dms`).
    pub system: String,
    /// Shown by `rabbitmqctl list_connections` and the management UI, so a broker operator
    /// can tell which hub endpoint a connection belongs to.
    pub connection_name: String,
}

impl AmqpConfig {
    /// The reference deployment's names (INTERFACES §3) for `url`.
    pub fn new(endpoint: impl Into<String>, url: impl Into<String>) -> AmqpConfig {
        let endpoint = endpoint.into();
        AmqpConfig {
            connection_name: format!("synchub:{endpoint}"),
            endpoint,
            url: url.into(),
            dealer_exchange: "synchub.dealer".into(),
            inbound_exchange: "synchub.inbound".into(),
            dead_letter_exchange: "synchub.dead-letter".into(),
            dead_letter_queue: "synchub.dead-letter".into(),
            queue_type: QueueType::Quorum,
            delivery_limit: 20,
            queue_expires: None,
            bindings: Vec::new(),
            prefetch: 256,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            journal_pause: Duration::from_millis(500),
            routing_key: "dealer.{dealer_code}.{kind}".into(),
            confirm_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            system: "dms".into(),
        }
    }

    /// The reference deployment's inbound queues (INTERFACES §3).
    pub fn reference_bindings() -> Vec<Binding> {
        vec![
            Binding {
                queue: "synchub.dms.lead-results".into(),
                routing_key: "dms.lead-result".into(),
                record_type: "lead_result".into(),
            },
            Binding {
                queue: "synchub.dms.campaign-results".into(),
                routing_key: "dms.campaign-result".into(),
                record_type: "campaign_result".into(),
            },
        ]
    }

    /// The URL with its password masked, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
