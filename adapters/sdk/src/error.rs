//! Typed errors at the adapter boundary: what the runtime and adapters branch on.

use serde::{Deserialize, Serialize};

/// One problem with one field of one record, as partners see it in a response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why the journal could not take a submission. The adapter must not acknowledge the partner.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The store is down, full or shutting down: transient, the partner should resend
    /// (HTTP 503, AMQP no-ack, SFTP file left in place).
    #[error("journal unavailable: {0}")]
    Unavailable(String),
}

/// Failures of an adapter's own machinery (connect, bind, protocol), not of a single message.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("not connected: {0}")]
    NotConnected(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Walks an error's `source()` chain into one line per cause, outermost first, so operators see
/// *why* (the dashboard shows it per attempt) without access to logs.
pub fn cause_chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let line = s.to_string();
        // Some libraries repeat the inner message in the outer one; keep the chain readable.
        if out
            .last()
            .is_none_or(|l| !l.ends_with(&line) || line.is_empty())
        {
            out.push(line);
        }
        cur = s.source();
    }
    out
}
