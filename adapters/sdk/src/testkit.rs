//! Test kit (feature `testkit`): an in-memory `Inbox` fake and the conformance suite every adapter's
//! tests run, so "acks only after commit" and "one attempt, classified" are proven per adapter.
//!
//! The suite is deliberately small. Each check fails for a concrete adapter bug: answering the
//! partner before `accept` returned, swallowing an `accept` failure, retrying inside `deliver`, or
//! calling a permanent refusal transient (or the reverse).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;
use uuid::Uuid;

use crate::envelope::{ContentType, Envelope};
use crate::error::AcceptError;
use crate::inbound::{Inbox, Receipt, RecordVerdict, Submission};
use crate::outbound::{Delivery, Outbound, Outcome};

/// How long the suite waits for something that should happen (an adapter calling `accept`, a
/// partner getting its answer) before it fails the test instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A transport unit the fake journal refused as a whole (`Inbox::reject`).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub envelope: Envelope,
    pub code: String,
    pub reason: String,
}

/// In-memory `Inbox` with the verdict and idempotency semantics of the real journal, plus knobs
/// for failure injection (`fail_next`) and for holding `accept` open (`close_gate`).
///
/// Verdicts: a record whose body is `Ok` is accepted with id `ID{index}`; a record whose body is
/// `Err` is rejected with those errors. An accepted `source_ref` seen before in the same principal
/// scope (`Principal::scope`, `""` without a principal) is answered `duplicate: true` with the
/// first id and first message id, and is not counted as new.
pub struct FakeInbox {
    // std Mutex: never held across an .await (the gate wait happens before locking).
    state: Mutex<State>,
    /// `true` = open. `accept` waits on it before committing, so a test can observe the adapter
    /// while the journal "has not committed yet".
    gate: watch::Sender<bool>,
    /// Number of `accept` calls that have started (including ones still waiting at the gate).
    entered: watch::Sender<usize>,
}

#[derive(Default)]
struct State {
    submissions: Vec<Submission>,
    refusals: Vec<Refusal>,
    fail_next: usize,
    accept_calls: usize,
    reject_calls: usize,
    /// (scope, source_ref) → (message id, business id) of the first acceptance.
    seen: HashMap<(String, String), (Uuid, Option<String>)>,
}

impl Default for FakeInbox {
    fn default() -> Self {
        FakeInbox::new()
    }
}

impl FakeInbox {
    pub fn new() -> FakeInbox {
        FakeInbox {
            state: Mutex::new(State::default()),
            gate: watch::Sender::new(true),
            entered: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the assertions that follow.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `n` calls (`accept` or `reject`) fail with `AcceptError::Unavailable` and record
    /// nothing, as a store outage would.
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// From now on `accept` blocks (before committing) until `open_gate`.
    pub fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    /// Lets every blocked and future `accept` proceed.
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Waits until `n` `accept` calls in total have started (they may be blocked at the gate).
    /// Returns false after `timeout`.
    pub async fn wait_accept_entered(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.entered.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|e| *e >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Every committed submission, in commit order.
    pub fn submissions(&self) -> Vec<Submission> {
        self.lock().submissions.clone()
    }

    /// Every committed whole-unit refusal, in commit order.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.lock().refusals.clone()
    }

    /// The last committed refusal. Panics when there is none.
    pub fn last_refusal(&self) -> Refusal {
        self.lock()
            .refusals
            .last()
            .cloned()
            .expect("no refusal was journaled")
    }

    /// `accept` calls so far, including failed and still-blocked ones.
    pub fn accept_calls(&self) -> usize {
        self.lock().accept_calls
    }

    /// `reject` calls so far, including failed ones.
    pub fn reject_calls(&self) -> usize {
        self.lock().reject_calls
    }

    /// Consumes one injected failure, if any is left.
    fn take_failure(state: &mut State) -> bool {
        if state.fail_next > 0 {
            state.fail_next -= 1;
            true
        } else {
            false
        }
    }
}

#[async_trait]
impl Inbox for FakeInbox {
    async fn accept(&self, submission: Submission) -> Result<Receipt, AcceptError> {
        self.lock().accept_calls += 1;
        self.entered.send_modify(|n| *n += 1);
        // The gate sits before the "commit", so an adapter that answers its partner now is caught.
        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;

        let mut st = self.lock();
        if FakeInbox::take_failure(&mut st) {
            return Err(AcceptError::Unavailable("injected by FakeInbox".into()));
        }
        let scope = submission
            .envelope
            .principal
            .as_ref()
            .map(|p| p.scope())
            .unwrap_or_default();
        let mut verdicts = Vec::with_capacity(submission.records.len());
        for rec in &submission.records {
            let verdict = match &rec.body {
                Err(errors) => RecordVerdict::Rejected {
                    message_id: Uuid::now_v7(),
                    errors: errors.clone(),
                },
                Ok(_) => {
                    let fresh = (Uuid::now_v7(), Some(format!("ID{}", rec.index)));
                    match &rec.source_ref {
                        Some(sr) => match st.seen.get(&(scope.clone(), sr.clone())) {
                            Some((message_id, id)) => RecordVerdict::Accepted {
                                message_id: *message_id,
                                id: id.clone(),
                                duplicate: true,
                            },
                            None => {
                                st.seen.insert((scope.clone(), sr.clone()), fresh.clone());
                                RecordVerdict::Accepted {
                                    message_id: fresh.0,
                                    id: fresh.1,
                                    duplicate: false,
                                }
                            }
                        },
                        None => RecordVerdict::Accepted {
                            message_id: fresh.0,
                            id: fresh.1,
                            duplicate: false,
                        },
                    }
                }
            };
            verdicts.push(verdict);
        }
        let receipt = Receipt {
            message_id: submission.envelope.id,
            records: verdicts,
        };
        st.submissions.push(submission);
        Ok(receipt)
    }

    async fn reject(
        &self,
        envelope: Envelope,
        code: &str,
        reason: &str,
    ) -> Result<Uuid, AcceptError> {
        let mut st = self.lock();
        st.reject_calls += 1;
        if FakeInbox::take_failure(&mut st) {
            return Err(AcceptError::Unavailable("injected by FakeInbox".into()));
        }
        let id = envelope.id;
        st.refusals.push(Refusal {
            envelope,
            code: code.to_owned(),
            reason: reason.to_owned(),
        });
        Ok(id)
    }
}

// ---------------------------------------------------------------------------------------------
// Inbound conformance
// ---------------------------------------------------------------------------------------------

/// What the partner has been told about one transport unit so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartnerView {
    /// No answer yet (HTTP response pending, AMQP message unacked, SFTP file still in place
    /// and not yet given up on).
    NoAnswerYet,
    /// Positively acknowledged: HTTP 2xx, SOAP response, `basic.ack`, file archived.
    Acked,
    /// Told to send again, or left so that it will be redelivered: HTTP 503, AMQP
    /// nack/requeue or channel close, SFTP file left in place after a failed cycle.
    TryAgain,
    /// Refused as a whole (HTTP 4xx, SOAP client fault, AMQP ack+reject journal); the text is
    /// adapter-specific detail for assertion messages.
    Refused(String),
}

/// What an adapter's test implements so the inbound conformance suite can drive it as a partner.
///
/// The harness owns the adapter instance wired to a fresh [`FakeInbox`].
#[async_trait]
pub trait InboundHarness: Send {
    /// Whatever the harness needs to follow one transport unit (a join handle, a message id,
    /// a file name).
    type Sent: Send;

    /// The fake journal the adapter under test writes to.
    fn inbox(&self) -> &FakeInbox;

    /// Sends one transport unit with `records` valid records, each with a distinct
    /// `source_ref`, as the partner would. Must return without waiting for the answer.
    async fn send(&mut self, records: usize) -> Self::Sent;

    /// What the partner has been told so far, without waiting.
    async fn peek(&mut self, sent: &mut Self::Sent) -> PartnerView;

    /// Waits (bounded by [`PATIENCE`]) until the partner has a final answer and returns it.
    async fn outcome(&mut self, sent: &mut Self::Sent) -> PartnerView;

    /// What happens after a `TryAgain`: the partner resends the same unit (REST, SOAP), or the
    /// broker redelivers / the poller retries on its own (AMQP, SFTP), in which case the harness
    /// just returns something to follow that redelivery.
    async fn redeliver(&mut self, sent: &Self::Sent) -> Self::Sent;

    /// How long the suite lets the adapter run while the journal is held open, to catch an
    /// early ack that is merely a little late.
    fn settle(&self) -> Duration {
        Duration::from_millis(100)
    }
}

/// The partner is not told "accepted" while the journal has not committed; once it commits,
/// the partner is acked and the journal holds exactly the unit that was sent.
pub async fn acks_only_after_commit<H: InboundHarness>(h: &mut H) {
    assert_fresh(h.inbox());
    h.inbox().close_gate();
    let mut sent = h.send(2).await;
    assert!(
        h.inbox().wait_accept_entered(1, PATIENCE).await,
        "the adapter never called Inbox::accept"
    );
    tokio::time::sleep(h.settle()).await;
    let early = h.peek(&mut sent).await;
    // Open before asserting, so a failing adapter does not leave a blocked task behind.
    h.inbox().open_gate();
    assert_eq!(
        early,
        PartnerView::NoAnswerYet,
        "the partner was answered while Inbox::accept had not returned (ack before commit)"
    );
    assert_eq!(
        h.outcome(&mut sent).await,
        PartnerView::Acked,
        "not acked after commit"
    );
    let subs = h.inbox().submissions();
    assert_eq!(subs.len(), 1, "exactly one submission expected");
    assert_eq!(subs[0].records.len(), 2, "both records must be submitted");
    assert!(
        subs[0].records.iter().all(|r| r.body.is_ok()),
        "valid records must reach the journal as Ok bodies"
    );
}

/// When `accept` fails, the partner is not acked but told (or left) to try again, nothing is
/// journaled, and the next attempt goes through.
pub async fn redelivers_when_accept_fails<H: InboundHarness>(h: &mut H) {
    assert_fresh(h.inbox());
    h.inbox().fail_next(1);
    let mut first = h.send(1).await;
    assert_eq!(
        h.outcome(&mut first).await,
        PartnerView::TryAgain,
        "a failed accept must leave the partner with a retryable answer"
    );
    assert_eq!(
        h.inbox().accept_calls(),
        1,
        "the adapter must have tried Inbox::accept before giving a retryable answer"
    );
    assert!(
        h.inbox().submissions().is_empty(),
        "nothing may be recorded when accept failed"
    );

    let mut second = h.redeliver(&first).await;
    assert_eq!(
        h.outcome(&mut second).await,
        PartnerView::Acked,
        "the redelivery must be acked"
    );
    assert_eq!(h.inbox().accept_calls(), 2);
    let subs = h.inbox().submissions();
    assert_eq!(subs.len(), 1, "exactly the redelivered unit is recorded");
    assert_eq!(subs[0].records.len(), 1);
}

fn assert_fresh(inbox: &FakeInbox) {
    assert!(
        inbox.accept_calls() == 0 && inbox.reject_calls() == 0,
        "each conformance check needs a harness with a fresh FakeInbox"
    );
}

// ---------------------------------------------------------------------------------------------
// Outbound conformance
// ---------------------------------------------------------------------------------------------

/// How the fake partner should answer the next delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartnerAnswer {
    /// Takes the message (HTTP 200, publisher confirm ack, upload done).
    Ok,
    /// A failure that will pass (HTTP 503, broker nack, connection dropped).
    Transient,
    /// A refusal that will never pass for this body (HTTP 422, SOAP client fault, unroutable).
    Permanent,
}

/// What an adapter's test implements so the outbound conformance suite can drive it.
#[async_trait]
pub trait OutboundHarness: Send {
    /// The adapter under test, pointed at the fake partner.
    fn outbound(&self) -> &dyn Outbound;

    /// Makes the fake partner answer every following delivery this way.
    async fn partner_will(&mut self, answer: PartnerAnswer);

    /// How many delivery attempts the fake partner has seen so far.
    async fn received(&self) -> usize;

    /// The delivery the suite sends; override when the adapter needs particular hints.
    fn delivery(&self, attempt: u32) -> Delivery {
        sample_delivery(attempt)
    }
}

/// Each answer maps to the right `Outcome`, and each `deliver` is exactly one attempt (a
/// transient failure is handed back to the dispatcher, not retried inside the adapter).
pub async fn outbound_classifies_transient_and_permanent<H: OutboundHarness>(h: &mut H) {
    let cases = [
        (PartnerAnswer::Ok, "delivered"),
        (PartnerAnswer::Transient, "retry"),
        (PartnerAnswer::Permanent, "reject"),
    ];
    for (attempt, (answer, expected)) in (1u32..).zip(cases) {
        h.partner_will(answer).await;
        let before = h.received().await;
        let delivery = h.delivery(attempt);
        let outcome = tokio::time::timeout(PATIENCE, h.outbound().deliver(&delivery))
            .await
            .unwrap_or_else(|_| panic!("deliver did not return for {answer:?}"));
        assert_eq!(
            outcome.label(),
            expected,
            "partner answered {answer:?}, adapter said {outcome:?}"
        );
        match &outcome {
            Outcome::Retry { reason, .. } | Outcome::Reject { reason, .. } => {
                assert!(
                    !reason.trim().is_empty(),
                    "{expected} needs a reason for operators"
                );
            }
            Outcome::Delivered { .. } => {}
        }
        assert_eq!(
            h.received().await - before,
            1,
            "partner answered {answer:?}: one deliver must be exactly one attempt"
        );
    }
}

/// A JSON delivery with every field set, for outbound tests.
pub fn sample_delivery(attempt: u32) -> Delivery {
    let message_id = Uuid::now_v7();
    Delivery {
        delivery_id: 1,
        message_id,
        target: "test_out".into(),
        attempt,
        idempotency_key: format!("{message_id}:test_out"),
        correlation_id: Some("corr-test-1".into()),
        headers: BTreeMap::from([
            ("dealer_code".to_owned(), "D0001".to_owned()),
            ("kind".to_owned(), "lead".to_owned()),
        ]),
        content_type: ContentType::Json,
        body: Bytes::from_static(br#"{"event":"lead.assigned","lead_id":"L1"}"#),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Principal;
    use crate::error::FieldError;
    use crate::inbound::RecordIn;

    fn submission(
        principal: Option<Principal>,
        refs: &[Option<&str>],
        bad: &[usize],
    ) -> Submission {
        let mut env = Envelope::new("ep", ContentType::Json, Bytes::from_static(b"[]"));
        env.principal = principal;
        Submission {
            envelope: env,
            records: refs
                .iter()
                .enumerate()
                .map(|(index, r)| RecordIn {
                    index,
                    record_type: "lead".into(),
                    source_ref: r.map(str::to_owned),
                    body: if bad.contains(&index) {
                        Err(vec![FieldError::new("mobile", "bad")])
                    } else {
                        Ok(serde_json::json!({"i": index}))
                    },
                })
                .collect(),
        }
    }

    fn dms(d: &str) -> Option<Principal> {
        Some(Principal {
            system: "dms".into(),
            dealer_code: Some(d.into()),
        })
    }

    #[tokio::test]
    async fn accepts_ok_bodies_and_rejects_err_bodies() {
        let inbox = FakeInbox::new();
        let r = inbox
            .accept(submission(dms("D1"), &[Some("a"), Some("b")], &[1]))
            .await
            .unwrap();
        assert!(
            matches!(&r.records[0], RecordVerdict::Accepted { id: Some(id), duplicate: false, .. } if id == "ID0")
        );
        assert!(
            matches!(&r.records[1], RecordVerdict::Rejected { errors, .. } if errors[0].field == "mobile")
        );
        assert_eq!(inbox.submissions().len(), 1);
    }

    #[tokio::test]
    async fn repeated_source_ref_is_duplicate_within_scope_only() {
        let inbox = FakeInbox::new();
        let first = inbox
            .accept(submission(dms("D1"), &[Some("a")], &[]))
            .await
            .unwrap();
        // Same ref at another index: still the first id.
        let again = inbox
            .accept(submission(dms("D1"), &[None, Some("a")], &[]))
            .await
            .unwrap();
        let other_scope = inbox
            .accept(submission(dms("D2"), &[Some("a")], &[]))
            .await
            .unwrap();
        let RecordVerdict::Accepted { message_id: m1, .. } = &first.records[0] else {
            panic!()
        };
        assert_eq!(
            again.records[1],
            RecordVerdict::Accepted {
                message_id: *m1,
                id: Some("ID0".into()),
                duplicate: true
            }
        );
        assert!(matches!(
            &again.records[0],
            RecordVerdict::Accepted {
                duplicate: false,
                ..
            }
        ));
        assert!(matches!(
            &other_scope.records[0],
            RecordVerdict::Accepted {
                duplicate: false,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn injected_failures_record_nothing_then_stop() {
        let inbox = FakeInbox::new();
        inbox.fail_next(2);
        assert!(inbox.accept(submission(None, &[None], &[])).await.is_err());
        let env = Envelope::new("ep", ContentType::Json, Bytes::new());
        assert!(inbox.reject(env.clone(), "c", "r").await.is_err());
        assert!(inbox.submissions().is_empty() && inbox.refusals().is_empty());
        assert!(inbox.accept(submission(None, &[None], &[])).await.is_ok());
        assert_eq!(inbox.reject(env.clone(), "c", "r").await.unwrap(), env.id);
        assert_eq!(inbox.last_refusal().code, "c");
        assert_eq!((inbox.accept_calls(), inbox.reject_calls()), (2, 2));
    }

    #[tokio::test]
    async fn gate_holds_accept_until_opened() {
        let inbox = std::sync::Arc::new(FakeInbox::new());
        inbox.close_gate();
        let task = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.accept(submission(None, &[None], &[])).await.is_ok() }
        });
        assert!(inbox.wait_accept_entered(1, PATIENCE).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        assert!(inbox.submissions().is_empty());
        inbox.open_gate();
        assert!(task.await.unwrap());
        assert_eq!(inbox.submissions().len(), 1);
    }

    #[tokio::test]
    async fn wait_accept_entered_times_out() {
        let inbox = FakeInbox::new();
        assert!(
            !inbox
                .wait_accept_entered(1, Duration::from_millis(20))
                .await
        );
    }

    /// A deliberately wrong "adapter" that acks before accept returns: the suite must catch it.
    struct EagerAcker {
        inbox: std::sync::Arc<FakeInbox>,
    }

    #[async_trait]
    impl InboundHarness for EagerAcker {
        type Sent = tokio::task::JoinHandle<()>;
        fn inbox(&self) -> &FakeInbox {
            &self.inbox
        }
        async fn send(&mut self, records: usize) -> Self::Sent {
            let inbox = self.inbox.clone();
            let refs: Vec<Option<&str>> = vec![Some("x"); records];
            let sub = submission(None, &refs, &[]);
            // Bug under test: the "ack" (task completion) does not wait for accept.
            tokio::spawn(async move {
                tokio::spawn(async move {
                    let _ = inbox.accept(sub).await;
                });
            })
        }
        async fn peek(&mut self, sent: &mut Self::Sent) -> PartnerView {
            if sent.is_finished() {
                PartnerView::Acked
            } else {
                PartnerView::NoAnswerYet
            }
        }
        async fn outcome(&mut self, sent: &mut Self::Sent) -> PartnerView {
            sent.await.unwrap();
            PartnerView::Acked
        }
        async fn redeliver(&mut self, _sent: &Self::Sent) -> Self::Sent {
            self.send(1).await
        }
    }

    #[tokio::test]
    #[should_panic(expected = "ack before commit")]
    async fn suite_catches_an_early_ack() {
        let mut h = EagerAcker {
            inbox: Default::default(),
        };
        acks_only_after_commit(&mut h).await;
    }

    /// A deliberately wrong outbound adapter that retries inside `deliver`.
    struct Retrier {
        answer: PartnerAnswer,
        seen: std::sync::Arc<Mutex<usize>>,
    }

    #[async_trait]
    impl Outbound for Retrier {
        async fn deliver(&self, _d: &Delivery) -> Outcome {
            let tries = if self.answer == PartnerAnswer::Transient {
                2
            } else {
                1
            };
            *self.seen.lock().unwrap() += tries;
            match self.answer {
                PartnerAnswer::Ok => Outcome::Delivered { remote_ref: None },
                PartnerAnswer::Transient => Outcome::retry("503"),
                PartnerAnswer::Permanent => Outcome::reject("422"),
            }
        }
    }

    struct RetrierHarness(Retrier);

    #[async_trait]
    impl OutboundHarness for RetrierHarness {
        fn outbound(&self) -> &dyn Outbound {
            &self.0
        }
        async fn partner_will(&mut self, answer: PartnerAnswer) {
            self.0.answer = answer;
        }
        async fn received(&self) -> usize {
            *self.0.seen.lock().unwrap()
        }
    }

    #[tokio::test]
    #[should_panic(expected = "exactly one attempt")]
    async fn suite_catches_internal_retry() {
        let mut h = RetrierHarness(Retrier {
            answer: PartnerAnswer::Ok,
            seen: Default::default(),
        });
        outbound_classifies_transient_and_permanent(&mut h).await;
    }
}
