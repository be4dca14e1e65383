//! Inbound side of the contract: an adapter turns what a partner sent into a `Submission`, hands
//! it to the `Inbox`, and acknowledges the partner only after `accept` returned (after COMMIT).

use async_trait::async_trait;
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::error::{AcceptError, FieldError};

/// One record inside a transport unit (an element of a JSON array, a CSV row, a SOAP `vehicle`).
#[derive(Debug, Clone)]
pub struct RecordIn {
    /// Position in the transport unit (array index, or line number for files), echoed to partners.
    pub index: usize,
    /// What kind of record the adapter found (`dms_customer`, `lead`, `lead_result`, ...): routes match on it.
    pub record_type: String,
    /// The partner's own reference; the idempotency key together with the principal's scope.
    /// `None` falls back to a hash of the record.
    pub source_ref: Option<String>,
    /// The record as JSON, or the reason the adapter could not even read it (the record is then
    /// journaled as rejected with that reason).
    pub body: Result<serde_json::Value, Vec<FieldError>>,
}

/// Everything one transport unit carried.
#[derive(Debug, Clone)]
pub struct Submission {
    pub envelope: Envelope,
    pub records: Vec<RecordIn>,
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordVerdict {
    Accepted {
        /// The record's own message id (searchable, replayable).
        message_id: Uuid,
        /// The business id the hub gave it (customer id, lead id, ...), when it has one.
        id: Option<String>,
        /// True when this `source_ref` was seen before: nothing new happened, the ids are the first ones.
        duplicate: bool,
    },
    Rejected {
        message_id: Uuid,
        errors: Vec<FieldError>,
    },
}

/// Proof that a submission is durably journaled.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The transport unit's message id.
    pub message_id: Uuid,
    /// One verdict per `RecordIn`, in the same order.
    pub records: Vec<RecordVerdict>,
}

/// The journal as adapters see it. Both methods return only after the store committed.
#[async_trait]
pub trait Inbox: Send + Sync {
    /// Journals the transport unit and every record (accepted ones routed, rejected ones with
    /// their reasons), atomically.
    async fn accept(&self, submission: Submission) -> Result<Receipt, AcceptError>;

    /// Journals several transport units at once (an AMQP consumer's burst of messages), in one
    /// store transaction where the journal can: per-commit and per-statement costs are paid once
    /// for all. Receipts come back in order. On `Err` none of them may be acked; some may have
    /// been journaled (the default does one `accept` after another), which their redelivery
    /// finds as duplicates.
    async fn accept_many(&self, submissions: Vec<Submission>) -> Result<Vec<Receipt>, AcceptError> {
        let mut out = Vec::with_capacity(submissions.len());
        for s in submissions {
            out.push(self.accept(s).await?);
        }
        Ok(out)
    }

    /// Journals a transport unit refused as a whole (bad credentials, unparseable body, too
    /// large, wrong content type) with the reason given to the partner, so operators can find it.
    async fn reject(
        &self,
        envelope: Envelope,
        code: &str,
        reason: &str,
    ) -> Result<Uuid, AcceptError>;
}
