//! The dispatcher: claims due deliveries (lane heads only), makes exactly one attempt each through
//! the target's outbound adapter (or the CRM store sink, inside the same transaction as the
//! delivery's status), records the attempt, and schedules the retry with jittered exponential
//! backoff, honouring the partner's Retry-After, until the route's max attempts park it.
//! This is the only place in synchub that decides about retries.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use synchub_adapter_sdk::{ContentType, Delivery, Outbound, Outcome};
use tokio::sync::{Notify, Semaphore, watch};

use crate::crm::{self, CrmFailure};
use crate::pipeline::Pipeline;
use crate::settings::DispatchSettings;
use crate::status::EndpointStates;
use crate::store::batch::{Limits, WriteQueue};
use crate::store::journal::{self, AttemptRecord, Claimed, Targets};
use crate::store::{BoxFuture, Store, StoreError, now_ms};
use crate::telemetry::metrics_names as m;

/// Most CRM-store deliveries applied in one write transaction.
const CRM_BATCH: i64 = 16;
/// CRM batches applied at once.
const CRM_WORKERS: usize = 2;

pub struct Dispatcher {
    store: Store,
    pipeline: Arc<Pipeline>,
    outbounds: HashMap<String, Arc<dyn Outbound>>,
    /// CRM store endpoints by id → whether key-field changes from dealers need approval.
    crm: HashMap<String, bool>,
    cfg: DispatchSettings,
    /// Woken by the pipeline when new deliveries are journaled, so idle polling stays rare.
    wake: Arc<Notify>,
    status: Arc<EndpointStates>,
    /// The CRM store endpoints, as a claim filter.
    crm_targets: Targets,
    /// The other targets, claimed one by one (see `journal::claim`).
    partner_targets: Targets,
    /// Lead scoring and distribution rules the CRM sink applies to new leads.
    lead_rules: Option<Arc<crate::rules::LeadRules>>,
    /// Records partner attempts' outcomes in batches; started on first use.
    outcomes: OnceLock<OutcomeQueue>,
}

/// Partner attempts finish one by one, each on its own worker; their outcomes are written
/// together (one UPDATE and one INSERT for all that are waiting), since a commit per outcome
/// would make the store's writer, not the partners, the limit of delivery throughput.
type OutcomeQueue = WriteQueue<(Claimed, AttemptRecord), bool>;

/// Most outcomes written in one statement set.
const OUTCOME_LIMITS: Limits = Limits {
    items: 512,
    weight: 512,
};

fn record_outcomes(
    conn: &mut dyn crate::store::exec::Exec,
    items: Vec<(Claimed, AttemptRecord)>,
) -> BoxFuture<'_, Result<Vec<bool>, StoreError>> {
    Box::pin(async move { journal::complete_each(conn, &items).await })
}

/// When the next attempt should happen: the partner's wish if it gave one, else exponential
/// backoff with jitter (50–100 % of the step) so a recovering partner is not hit by a thundering herd.
pub fn next_delay(
    attempts: i64,
    backoff_ms: i64,
    max_backoff_ms: i64,
    after: Option<Duration>,
) -> i64 {
    if let Some(after) = after {
        return (after.as_millis() as i64).clamp(0, 24 * 3_600_000);
    }
    let exp = (attempts - 1).clamp(0, 30) as u32;
    let step = backoff_ms
        .saturating_mul(1i64 << exp)
        .min(max_backoff_ms)
        .max(1);
    let jitter = rand::rng().random_range(0.5..=1.0);
    (step as f64 * jitter) as i64
}

/// Turns one attempt's outcome into the delivery's next state.
pub fn plan(c: &Claimed, outcome: &Outcome, started_at: i64, duration_ms: i64) -> AttemptRecord {
    let base = AttemptRecord {
        started_at,
        duration_ms,
        outcome: outcome.label(),
        reason: None,
        cause_chain: Vec::new(),
        remote_ref: None,
        status: "delivered",
        next_attempt_at: now_ms(),
    };
    match outcome {
        Outcome::Delivered { remote_ref } => AttemptRecord {
            remote_ref: remote_ref.clone(),
            ..base
        },
        Outcome::Reject {
            reason,
            cause_chain,
        } => AttemptRecord {
            status: "rejected",
            reason: Some(reason.clone()),
            cause_chain: cause_chain.clone(),
            ..base
        },
        Outcome::Retry {
            reason,
            after,
            cause_chain,
        } => {
            if c.attempts >= c.max_attempts {
                AttemptRecord {
                    status: "parked",
                    outcome: "parked",
                    reason: Some(format!("gave up after {} attempts: {reason}", c.attempts)),
                    cause_chain: cause_chain.clone(),
                    ..base
                }
            } else {
                AttemptRecord {
                    status: "pending",
                    reason: Some(reason.clone()),
                    cause_chain: cause_chain.clone(),
                    next_attempt_at: now_ms()
                        + next_delay(c.attempts, c.backoff_ms, c.max_backoff_ms, *after),
                    ..base
                }
            }
        }
    }
}

impl Dispatcher {
    /// Health-checks every outbound endpoint every `every`, so an idle partner that went away
    /// shows as down before the next delivery finds out.
    pub async fn watch_endpoints(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let quiet = every.as_millis() as i64;
            for (id, out) in &self.outbounds {
                // Connection-holding adapters report their own state as it changes.
                if out.is_connected().is_some() {
                    continue;
                }
                let result = out
                    .healthcheck()
                    .await
                    .map_err(|e| format!("health check: {e}"));
                self.status.health(id, result, quiet);
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    pub fn new(
        store: Store,
        pipeline: Arc<Pipeline>,
        outbounds: HashMap<String, Arc<dyn Outbound>>,
        crm: HashMap<String, bool>,
        cfg: DispatchSettings,
        wake: Arc<Notify>,
        status: Arc<EndpointStates>,
    ) -> Dispatcher {
        let crm_targets = Targets::Only(crm.keys().cloned().collect());
        // Every target a delivery can have, named: claiming "everything but the CRM store"
        // would walk the CRM backlog on every claim. Targets without an adapter are included so
        // their deliveries are still tried (and parked with the reason).
        let mut partners: Vec<String> = pipeline
            .routes()
            .routes()
            .iter()
            .flat_map(|r| r.to.iter().cloned())
            .chain(outbounds.keys().cloned())
            .filter(|t| !crm.contains_key(t))
            .collect();
        partners.sort();
        partners.dedup();
        Dispatcher {
            partner_targets: Targets::Only(partners),
            crm_targets,
            store,
            pipeline,
            outbounds,
            crm,
            cfg,
            wake,
            status,
            lead_rules: None,
            outcomes: OnceLock::new(),
        }
    }

    /// Whether `target` is a CRM store endpoint (applied in the store, not sent to a partner).
    pub fn is_crm_target(&self, target: &str) -> bool {
        self.crm.contains_key(target)
    }

    /// The lead rules new leads are scored and distributed by.
    pub fn with_lead_rules(mut self, rules: Option<Arc<crate::rules::LeadRules>>) -> Dispatcher {
        self.lead_rules = rules;
        self
    }

    /// Runs until `shutdown` turns true; in-flight attempts finish (their leases protect the rest).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let workers = Arc::new(Semaphore::new(self.cfg.workers.max(1)));
        // CRM batches run inside the store's writer, so more than two at once gain nothing;
        // they have their own permits so partners hanging on every worker cannot hold them up.
        let crm_workers = Arc::new(Semaphore::new(CRM_WORKERS));
        let mut last_lease_check = Instant::now() - Duration::from_secs(3600);
        let idle = Duration::from_millis(self.cfg.idle_poll_ms.max(10));
        loop {
            if *shutdown.borrow() {
                break;
            }
            if last_lease_check.elapsed() > Duration::from_secs(5) {
                last_lease_check = Instant::now();
                match self
                    .store
                    .write(|c| Box::pin(journal::release_expired_leases(c)))
                    .await
                {
                    Ok(n) if n > 0 => {
                        tracing::warn!(count = n, "Released deliveries whose lease expired.")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "Could not release expired leases."),
                }
            }
            let lease = self.cfg.lease_secs.max(1) as i64 * 1000;
            let batch = self.cfg.claim_batch.max(1);
            let mut busy = false;
            // CRM-store deliveries are claimed in batches and applied inside the writer, one
            // transaction per batch: per-statement cost, not per-delivery work, is what limits
            // a single-writer store. Batches stay small enough that accepts queued behind one
            // wait milliseconds, not tens of them.
            if let Targets::Only(t) = &self.crm_targets
                && !t.is_empty()
            {
                // Claimed only with a CRM worker free: a claimed batch waiting for a worker
                // would sit on its lease (partner workers may all hang on a dead partner).
                let permit = crm_workers.clone().try_acquire_owned();
                let claimed = match &permit {
                    Ok(_) => {
                        self.claim(batch.min(CRM_BATCH), lease, self.crm_targets.clone())
                            .await
                    }
                    Err(_) => Ok(Vec::new()),
                };
                match claimed {
                    Ok(claimed) if !claimed.is_empty() => {
                        busy = true;
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.apply_crm_batch(claimed).await;
                            drop(permit);
                            // The loop may have skipped the CRM claim for want of this permit.
                            me.wake.notify_one();
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "Claiming CRM deliveries failed; will try again.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            // Partner deliveries: one worker each, never more claimed than workers are free, so
            // leases do not run out while claimed work waits for a worker.
            let free = workers.available_permits();
            if free > 0 && !self.outbounds.is_empty() {
                match self
                    .claim(
                        (free as i64).min(batch),
                        lease,
                        self.partner_targets.clone(),
                    )
                    .await
                {
                    Ok(claimed) => {
                        busy |= !claimed.is_empty();
                        for c in claimed {
                            let Ok(permit) = workers.clone().acquire_owned().await else {
                                break;
                            };
                            let me = self.clone();
                            tokio::spawn(async move {
                                me.attempt(c).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Claiming deliveries failed; will try again.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            } else if free == 0 {
                // Every worker busy: wait until a quarter of them are free (or a moment has
                // passed), so the next claim takes a batch; claiming each freed worker's one
                // delivery would cost a transaction per delivery.
                let quarter = (self.cfg.workers / 4).clamp(1, batch as usize) as u32;
                let _ = workers.acquire().await.map(drop);
                let _ =
                    tokio::time::timeout(Duration::from_millis(2), workers.acquire_many(quarter))
                        .await;
                continue;
            }
            if !busy {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(idle) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        // Let running attempts finish so their outcomes are recorded.
        let _ = workers.acquire_many(self.cfg.workers.max(1) as u32).await;
        let _ = crm_workers.acquire_many(CRM_WORKERS as u32).await;
    }

    /// Runs the delivery's mapping (the pinned version, else the latest) over the validated
    /// record. A mapping that fails is a permanent rejection naming the mapping: fix it, then
    /// replay the message.
    fn map(&self, c: &mut Claimed) -> Result<(), Outcome> {
        let Some(id) = c.mapping.clone() else {
            return Ok(());
        };
        let input: serde_json::Value = serde_json::from_slice(&c.body)
            .map_err(|e| Outcome::reject(format!("stored record is not JSON: {e}")))?;
        let pinned = c.mapping_version.and_then(|v| u32::try_from(v).ok());
        let (version, out) = self
            .pipeline
            .mappings()
            .apply(&id, pinned, &input)
            .map_err(|e| Outcome::reject(e.to_string()))?;
        c.mapping_version = Some(i64::from(version));
        c.mapped_body = Some(serde_json::to_vec(&out).unwrap_or_default());
        Ok(())
    }

    async fn claim(
        &self,
        limit: i64,
        lease: i64,
        targets: Targets,
    ) -> Result<Vec<Claimed>, StoreError> {
        let dialect = self.store.dialect();
        self.store
            .write_exec(move |c| {
                Box::pin(async move { journal::claim(c, dialect, limit, lease, &targets).await })
            })
            .await
    }

    /// Applies a batch of CRM-store deliveries in one write transaction. If the batch fails as a
    /// whole (a store error), each delivery is tried again on its own, so one bad record cannot
    /// hold the others back; a single delivery that fails so is recorded as a retry.
    fn apply_crm_batch(&self, batch: Vec<Claimed>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let started_at = now_ms();
            let t0 = Instant::now();
            let pipeline = self.pipeline.clone();
            let crm = self.crm.clone();
            let lead_rules = self.lead_rules.clone();
            // Mapping is CPU work: done here, outside the store's writer.
            let mut items = Vec::with_capacity(batch.len());
            let mut unmapped = Vec::new();
            for mut c in batch.clone() {
                match self.map(&mut c) {
                    Ok(()) => items.push(c),
                    Err(outcome) => unmapped.push((c, outcome)),
                }
            }
            let res = self
                .store
                .write_background(move |conn| {
                    Box::pin(async move {
                        let approval = move |target: &str| crm.get(target).copied().unwrap_or(true);
                        let results =
                            crm::apply_batch(conn, &items, &approval, lead_rules.as_deref())
                                .await?;
                        let elapsed = t0.elapsed().as_millis() as i64;
                        let mut done = Vec::with_capacity(items.len());
                        let mut events = Vec::new();
                        for (c, result) in items.into_iter().zip(results) {
                            let mut a = match result {
                                Ok(applied) => {
                                    events.extend(applied.events.iter().map(|ev| {
                                        pipeline.prepare_event(
                                            c.message_id,
                                            c.correlation_id.clone(),
                                            &c.target,
                                            ev,
                                        )
                                    }));
                                    let mut a = plan(
                                        &c,
                                        &Outcome::Delivered { remote_ref: None },
                                        started_at,
                                        0,
                                    );
                                    a.reason = Some(applied.summary);
                                    a
                                }
                                Err(CrmFailure::Reject(r)) => {
                                    plan(&c, &Outcome::reject(r), started_at, 0)
                                }
                                Err(CrmFailure::Retry(r)) => {
                                    plan(&c, &Outcome::retry(r), started_at, 0)
                                }
                                Err(CrmFailure::Store(e)) => return Err(e),
                            };
                            a.duration_ms = elapsed;
                            done.push((c, a));
                        }
                        for (c, outcome) in unmapped {
                            let mut a = plan(&c, &outcome, started_at, 0);
                            a.duration_ms = elapsed;
                            done.push((c, a));
                        }
                        // The batch's change events in one go: three statements, not three each.
                        journal::insert_prepared_many(conn, &events).await?;
                        journal::complete_many(conn, &done).await?;
                        Ok(done
                            .into_iter()
                            .map(|(c, a)| (c, a.status, a.duration_ms))
                            .collect::<Vec<_>>())
                    })
                })
                .await;
            match res {
                Ok(list) => {
                    for (c, status, duration_ms) in &list {
                        self.count(c, status, *duration_ms);
                    }
                    self.wake.notify_one();
                }
                Err(e) if batch.len() > 1 => {
                    tracing::warn!(error = %e, deliveries = batch.len(), "CRM batch failed; applying its deliveries one by one.");
                    for c in batch {
                        self.apply_crm_batch(vec![c]).await;
                    }
                }
                Err(e) => {
                    // The CRM write rolled back as a whole; record the failed attempt on its own.
                    let outcome = Outcome::Retry {
                        reason: format!("CRM store write failed: {e}"),
                        after: None,
                        cause_chain: vec![e.to_string()],
                    };
                    for c in batch {
                        self.record(&c, &outcome, started_at, t0).await;
                    }
                }
            }
        })
    }

    /// Attempts everything due now, sequentially, until nothing is due (tests and `replay`).
    pub async fn drain(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        let dialect = self.store.dialect();
        loop {
            let claimed = self
                .store
                .write_exec(move |c| {
                    Box::pin(
                        async move { journal::claim(c, dialect, 256, 60_000, &Targets::All).await },
                    )
                })
                .await?;
            if claimed.is_empty() {
                return Ok(n);
            }
            for c in claimed {
                n += 1;
                self.attempt(c).await;
            }
        }
    }

    /// One attempt of one claimed delivery, recorded whatever happens.
    pub async fn attempt(&self, c: Claimed) {
        let started_at = now_ms();
        let t0 = Instant::now();
        if self.crm.contains_key(&c.target) {
            self.apply_crm_batch(vec![c]).await;
            return;
        }
        let mut c = c;
        if let Err(outcome) = self.map(&mut c) {
            self.record(&c, &outcome, started_at, t0).await;
            return;
        }
        let outcome = match self.outbounds.get(&c.target) {
            Some(out) => {
                let headers: BTreeMap<String, String> =
                    serde_json::from_str::<serde_json::Value>(&c.headers)
                        .ok()
                        .and_then(|v| v.as_object().cloned())
                        .map(|m| {
                            m.into_iter()
                                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                                .collect()
                        })
                        .unwrap_or_default();
                let delivery = Delivery {
                    delivery_id: c.id,
                    message_id: c.message_id,
                    target: c.target.clone(),
                    attempt: c.attempts as u32,
                    idempotency_key: format!("{}:{}", c.message_id, c.target),
                    correlation_id: c.correlation_id.clone(),
                    headers,
                    content_type: ContentType::parse(&c.content_type),
                    body: c.payload().to_vec().into(),
                };
                let outcome = out.deliver(&delivery).await;
                match &outcome {
                    Outcome::Delivered { .. } => self.status.contact(&c.target, None),
                    Outcome::Reject { reason, .. } => {
                        self.status.contact(&c.target, Some(reason.clone()))
                    }
                    Outcome::Retry { reason, .. } => match out.is_connected() {
                        Some(true) => self.status.note_error(&c.target, reason.clone()),
                        Some(false) => {}
                        None => self.status.failure(&c.target, reason.clone()),
                    },
                }
                outcome
            }
            None => Outcome::reject(format!(
                "no outbound adapter is configured for target '{}'",
                c.target
            )),
        };
        self.record(&c, &outcome, started_at, t0).await;
    }

    async fn record(&self, c: &Claimed, outcome: &Outcome, started_at: i64, t0: Instant) {
        let a = plan(c, outcome, started_at, t0.elapsed().as_millis() as i64);
        let (status, duration_ms) = (a.status, a.duration_ms);
        let outcomes = self.outcomes.get_or_init(|| {
            OutcomeQueue::start(
                self.store.clone(),
                OUTCOME_LIMITS,
                |_| 1,
                record_outcomes,
                None,
            )
        });
        match outcomes.submit((c.clone(), a)).await {
            Ok(true) => self.count(c, status, duration_ms),
            Ok(false) => tracing::warn!(
                delivery = c.id,
                "Lease lost before the outcome was recorded; another instance owns it."
            ),
            Err(e) => {
                tracing::error!(delivery = c.id, error = %e, "Could not record a delivery attempt; the lease will expire and it will be retried.")
            }
        }
    }

    fn count(&self, c: &Claimed, status: &'static str, duration_ms: i64) {
        let outcome = match status {
            "pending" => "retry",
            other => other,
        };
        let (target, route) = (c.target.clone(), c.route.clone());
        metrics::counter!(m::ATTEMPTS, "target" => target.clone(), "route" => route.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(m::ATTEMPT_SECONDS, "target" => target.clone(), "outcome" => outcome)
            .record(duration_ms.max(0) as f64 / 1000.0);
        match status {
            "pending" => metrics::counter!(m::RETRIED, "target" => target, "route" => route).increment(1),
            "parked" => {
                tracing::error!(delivery = c.id, target = %c.target, route = %c.route, "Delivery parked after its last attempt; an operator must act.");
                metrics::counter!(m::DELIVERIES, "target" => target, "route" => route, "outcome" => "parked").increment(1)
            }
            s => metrics::counter!(m::DELIVERIES, "target" => target, "route" => route, "outcome" => s)
                .increment(1),
        }
        if status == "delivered" {
            // Lane successors may now be due.
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn claimed(attempts: i64, max_attempts: i64) -> Claimed {
        Claimed {
            id: 1,
            message_id: Uuid::now_v7(),
            route: "r".into(),
            target: "t".into(),
            lane: None,
            dealer_code: None,
            attempts,
            max_attempts,
            backoff_ms: 1000,
            max_backoff_ms: 60_000,
            mapping_version: None,
            content_type: "json".into(),
            headers: "{}".into(),
            body: Vec::new(),
            mapping: None,
            mapped_body: None,
            correlation_id: None,
            lease_until: 0,
        }
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        for _ in 0..200 {
            let first = next_delay(1, 1000, 60_000, None);
            assert!((500..=1000).contains(&first), "{first}");
            let fourth = next_delay(4, 1000, 60_000, None);
            assert!((4000..=8000).contains(&fourth), "{fourth}");
            let late = next_delay(30, 1000, 60_000, None);
            assert!((30_000..=60_000).contains(&late), "capped: {late}");
        }
    }

    #[test]
    fn retry_after_wins_over_backoff() {
        assert_eq!(
            next_delay(1, 1000, 60_000, Some(Duration::from_secs(120))),
            120_000
        );
    }

    #[test]
    fn outcomes_map_to_delivery_states() {
        let now = now_ms();
        let ok = plan(
            &claimed(1, 5),
            &Outcome::Delivered {
                remote_ref: Some("R1".into()),
            },
            now,
            3,
        );
        assert_eq!(
            (ok.status, ok.outcome, ok.remote_ref.as_deref()),
            ("delivered", "delivered", Some("R1"))
        );
        let rej = plan(&claimed(1, 5), &Outcome::reject("bad body"), now, 3);
        assert_eq!(
            (rej.status, rej.reason.as_deref()),
            ("rejected", Some("bad body"))
        );
        let retry = plan(&claimed(2, 5), &Outcome::retry("503"), now, 3);
        assert_eq!(retry.status, "pending");
        assert!(
            retry.next_attempt_at >= now + 1000,
            "second try waits at least one backoff step"
        );
        let parked = plan(&claimed(5, 5), &Outcome::retry("503"), now, 3);
        assert_eq!((parked.status, parked.outcome), ("parked", "parked"));
        assert!(
            parked
                .reason
                .unwrap()
                .contains("gave up after 5 attempts: 503")
        );
    }
}
