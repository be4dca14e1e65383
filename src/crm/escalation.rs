//! Escalation (issue 7 §4): a periodic job finds leads a dealer was given but answered with no
//! result by `respond_by`, records one escalation per (lead, dealer) — the table's unique key
//! holds even when two hub instances run the job at once — counts it, and, when the rules say
//! so, reassigns the lead to the next qualifying dealer with a new `lead.assigned`. A result
//! from the lead's dealer resolves its open escalations (see `leads::on_result`). Campaign
//! tasks escalate the same way: a campaign assigned to a dealer that reported no result for it
//! within `campaign_respond_within` raises one escalation of kind `campaign` per (campaign,
//! dealer), recorded with how the `campaign.assigned` deliveries fared; the dealer's first
//! result resolves it (see `campaigns::resolve_escalation`).

use std::sync::Arc;

use serde_json::{Map, Value, json};
use sqlx::{AnyConnection, AnyPool, Row};
use tokio::sync::watch;
use uuid::Uuid;

use super::leads::{self, Assignment};
use super::{ChangeSource, Columns, upsert};
use crate::pipeline::Pipeline;
use crate::rules::distribution::{Ask, Decision};
use crate::rules::{LeadRules, Level};
use crate::store::{Store, StoreError, journal, now_ms};
use crate::telemetry::metrics_names as m;

/// Most overdue assignments handled per run (the next run takes the rest).
const PER_RUN: i64 = 500;

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub raised: usize,
    pub reassigned: usize,
    /// Campaign tasks escalated.
    pub campaign_tasks: usize,
}

/// The periodic job; `run` until shutdown, or `run_once` (tests, and each tick).
pub struct EscalationJob {
    store: Store,
    pipeline: Arc<Pipeline>,
    rules: Arc<LeadRules>,
}

impl EscalationJob {
    pub fn new(store: Store, pipeline: Arc<Pipeline>, rules: Arc<LeadRules>) -> EscalationJob {
        EscalationJob {
            store,
            pipeline,
            rules,
        }
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let every = (self.rules.distribution.escalation.interval.0.as_millis() as i64).max(1_000);
        loop {
            // Ticks on multiples of the interval, the same on every instance, so the one that
            // claims a tick runs it and the others skip it.
            let now = now_ms();
            let tick = (now / every + 1) * every;
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis((tick - now) as u64)) => {}
                _ = shutdown.changed() => return,
            }
            if !crate::schedule::ours(&self.store, "escalation", tick).await {
                continue;
            }
            match self.run_once().await {
                Ok(r) if r.raised > 0 => tracing::warn!(
                    raised = r.raised,
                    reassigned = r.reassigned,
                    "Leads escalated: dealers gave no result in time."
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Escalation run failed; it runs again at the next interval.")
                }
            }
        }
    }

    /// One pass over the overdue assignments, in one transaction.
    pub async fn run_once(&self) -> Result<Report, StoreError> {
        let rules = self.rules.clone();
        let pipeline = self.pipeline.clone();
        let report = self
            .store
            .write(move |c| {
                Box::pin(async move {
                    let now = now_ms();
                    let mut report = escalate(c, &rules, &pipeline, now).await?;
                    let within = rules.distribution.escalation.campaign_respond_within.0;
                    report.campaign_tasks =
                        escalate_campaigns(c, within.as_millis() as i64, now).await?;
                    Ok(report)
                })
            })
            .await?;
        for (kind, raised) in [("lead", report.raised), ("campaign", report.campaign_tasks)] {
            if raised > 0 {
                metrics::counter!(m::ESCALATIONS, "kind" => kind).increment(raised as u64);
            }
            let open: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM escalations WHERE kind = $1 AND status = 'open'",
            )
            .bind(kind)
            .fetch_one(self.store.pool())
            .await?;
            metrics::gauge!(m::ESCALATIONS_OPEN, "kind" => kind).set(open as f64);
        }
        Ok(report)
    }
}

struct Due {
    lead_id: String,
    dealer: String,
    respond_by: i64,
    level: Option<String>,
    score: Option<i64>,
}

async fn escalate(
    conn: &mut AnyConnection,
    rules: &LeadRules,
    pipeline: &Pipeline,
    now: i64,
) -> Result<Report, StoreError> {
    leads::lock_distribution(conn).await?;
    let rows = sqlx::query(
        "SELECT a.lead_id, a.dealer_code, a.respond_by, a.level, a.score FROM lead_assignments a \
         WHERE a.state = 'active' AND a.respond_by <= $1 AND NOT EXISTS (SELECT 1 FROM escalations e \
         WHERE e.kind = 'lead' AND e.entity_id = a.lead_id AND e.dealer_code = a.dealer_code) \
         ORDER BY a.respond_by, a.id LIMIT $2",
    )
    .bind(now)
    .bind(PER_RUN)
    .fetch_all(&mut *conn)
    .await?;
    let mut due = Vec::with_capacity(rows.len());
    for r in rows {
        due.push(Due {
            lead_id: r.try_get(0)?,
            dealer: r.try_get(1)?,
            respond_by: r.try_get(2)?,
            level: r.try_get(3)?,
            score: r.try_get(4)?,
        });
    }
    let mut report = Report::default();
    if due.is_empty() {
        return Ok(report);
    }
    let reassign = rules.distribution.escalation.reassign_on_escalation;
    let dealers = if reassign {
        leads::dealers(conn).await?
    } else {
        Vec::new()
    };
    let tz = rules
        .distribution
        .offset()
        .unwrap_or_else(|| chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset"));
    for d in due {
        let delivery = delivery_state(conn, &d.lead_id, &d.dealer).await?;
        // The unique key decides who raises it; a second instance's insert does nothing.
        let inserted = sqlx::query(
            "INSERT INTO escalations (kind, entity_id, dealer_code, due_at, raised_at, status, action) \
             VALUES ('lead', $1, $2, $3, $4, 'open', $5) ON CONFLICT (kind, entity_id, dealer_code) DO NOTHING",
        )
        .bind(&d.lead_id)
        .bind(&d.dealer)
        .bind(d.respond_by)
        .bind(now)
        .bind(format!("recorded ({delivery})"))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            continue;
        }
        report.raised += 1;
        let lead: Map<String, Value> = sqlx::query_scalar::<_, String>(
            "SELECT data FROM crm_records WHERE entity = 'lead' AND id = $1",
        )
        .bind(&d.lead_id)
        .fetch_optional(&mut *conn)
        .await?
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
        let missed = format!(
            "no result from {} by {}",
            d.dealer,
            leads::local_time(d.respond_by, tz)
        );
        let src = ChangeSource {
            system: "hub:escalation".into(),
            message_id: None,
            needs_approval: false,
        };
        let level = d
            .level
            .as_deref()
            .and_then(|l| serde_json::from_value::<Level>(json!(l)).ok())
            .unwrap_or(Level::B);
        let decision = if reassign {
            let had: Vec<String> =
                sqlx::query_scalar("SELECT dealer_code FROM lead_assignments WHERE lead_id = $1")
                    .bind(&d.lead_id)
                    .fetch_all(&mut *conn)
                    .await?;
            let customer = lead
                .get("customer")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let s = |k: &str| customer.get(k).and_then(Value::as_str).map(str::to_string);
            let ask = Ask {
                level: Some(level),
                city: s("city"),
                province: s("province"),
                exclude: had,
            };
            Some(leads::decide(conn, rules, &dealers, &ask, now).await?)
        } else {
            None
        };
        let mut change = Map::new();
        change.insert("escalated_at".into(), json!(leads::local_time(now, tz)));
        let action = match decision {
            Some(Decision::Dealer { code, reason, .. }) => {
                sqlx::query(
                    "UPDATE lead_assignments SET state = 'reassigned' WHERE lead_id = $1 AND dealer_code = $2",
                )
                .bind(&d.lead_id)
                .bind(&d.dealer)
                .execute(&mut *conn)
                .await?;
                let a = Assignment {
                    dealer: code.clone(),
                    level,
                    score: d.score.unwrap_or_default(),
                    assigned_at: now,
                    respond_by: now + rules.distribution.respond_within(level).as_millis(),
                    reason: format!("escalated: {missed}; {reason}"),
                };
                leads::insert_assignment(conn, rules, &d.lead_id, &a).await?;
                change.extend(leads::assignment_fields(&a, rules));
                let mut from: Vec<Value> = lead
                    .get("reassigned_from")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                from.push(json!(d.dealer));
                change.insert("reassigned_from".into(), Value::Array(from));
                change.insert(
                    "escalation".into(),
                    json!(format!("{missed}; reassigned to {code}")),
                );
                let cols = Columns {
                    dealer_code: Some(code.clone()),
                    ..Default::default()
                };
                let up = upsert(conn, "lead", &d.lead_id, &change, &cols, &src).await?;
                let ev = leads::assigned_event(&d.lead_id, &up.data, rules, &a);
                journal::insert_prepared(
                    conn,
                    &pipeline.prepare_event(Uuid::now_v7(), None, "crm_store", &ev),
                )
                .await?;
                report.reassigned += 1;
                format!("reassigned to {code}: {reason} ({delivery})")
            }
            other => {
                let why = match other {
                    Some(Decision::Fallback { reason }) => {
                        format!(
                            "no other dealer qualifies ({reason}); left with {}",
                            d.dealer
                        )
                    }
                    _ => format!("left with {} (reassign_on_escalation = false)", d.dealer),
                };
                change.insert("escalation".into(), json!(format!("{missed}; {why}")));
                upsert(conn, "lead", &d.lead_id, &change, &Columns::default(), &src).await?;
                format!("{why} ({delivery})")
            }
        };
        sqlx::query(
            "UPDATE escalations SET action = $1 WHERE kind = 'lead' AND entity_id = $2 AND dealer_code = $3",
        )
        .bind(action)
        .bind(&d.lead_id)
        .bind(&d.dealer)
        .execute(&mut *conn)
        .await?;
    }
    Ok(report)
}

/// Raises an escalation for every campaign assignment older than `within_ms` whose dealer has
/// reported no result for it; returns how many were raised.
async fn escalate_campaigns(
    conn: &mut AnyConnection,
    within_ms: i64,
    now: i64,
) -> Result<usize, StoreError> {
    let rows = sqlx::query(
        "SELECT a.ref, a.dealer_code, a.created_at FROM crm_records a \
         WHERE a.entity = $1 AND a.created_at <= $2 AND a.ref IS NOT NULL AND a.dealer_code IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM escalations e WHERE e.kind = 'campaign' \
             AND e.entity_id = a.ref AND e.dealer_code = a.dealer_code) \
         AND NOT EXISTS (SELECT 1 FROM crm_records r WHERE r.entity = 'campaign_result' \
             AND r.ref = a.ref AND r.dealer_code = a.dealer_code) \
         ORDER BY a.created_at, a.id LIMIT $3",
    )
    .bind(super::campaigns::ASSIGNMENT)
    .bind(now - within_ms)
    .bind(PER_RUN)
    .fetch_all(&mut *conn)
    .await?;
    let mut raised = 0;
    for r in rows {
        let code: String = r.try_get(0)?;
        let dealer: String = r.try_get(1)?;
        let assigned_at: i64 = r.try_get(2)?;
        let fared = campaign_delivery_state(conn, &code, &dealer).await?;
        let action = format!(
            "recorded: no result from {dealer} for campaign {code} within {} h of its assignment ({fared})",
            within_ms / 3_600_000
        );
        raised += sqlx::query(
            "INSERT INTO escalations (kind, entity_id, dealer_code, due_at, raised_at, status, action) \
             VALUES ('campaign', $1, $2, $3, $4, 'open', $5) ON CONFLICT (kind, entity_id, dealer_code) DO NOTHING",
        )
        .bind(&code)
        .bind(&dealer)
        .bind(assigned_at + within_ms)
        .bind(now)
        .bind(action)
        .execute(&mut *conn)
        .await?
        .rows_affected() as usize;
    }
    Ok(raised)
}

/// How the `campaign.assigned` deliveries for this dealer fared (DMS and DCS), in words.
async fn campaign_delivery_state(
    conn: &mut AnyConnection,
    code: &str,
    dealer: &str,
) -> Result<String, StoreError> {
    let rows = sqlx::query(
        "SELECT d.target, d.status, d.last_reason FROM deliveries d \
         JOIN messages m ON m.id = d.message_id \
         JOIN message_keys k ON k.message_id = m.id AND k.kind = 'campaign_code' AND k.value = $1 \
         WHERE m.record_type = $2 AND d.dealer_code = $3 ORDER BY d.id",
    )
    .bind(code)
    .bind(super::campaigns::EVENT)
    .bind(dealer)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(format!(
            "no delivery of campaign.assigned to {dealer} found"
        ));
    }
    let mut parts = Vec::new();
    for r in rows {
        let target: String = r.try_get(0)?;
        let status: String = r.try_get(1)?;
        let reason: Option<String> = r.try_get(2)?;
        parts.push(match (status.as_str(), reason) {
            ("delivered", _) => format!("{target}: delivered"),
            (s, Some(why)) => format!("{target}: {s}: {why}"),
            (s, None) => format!("{target}: {s}"),
        });
    }
    Ok(format!("campaign.assigned {}", parts.join("; ")))
}

/// How the `lead.assigned` for this dealer fared, in words for the escalation.
async fn delivery_state(
    conn: &mut AnyConnection,
    lead_id: &str,
    dealer: &str,
) -> Result<String, StoreError> {
    let row = sqlx::query(
        "SELECT d.status, d.last_reason FROM deliveries d JOIN messages m ON m.id = d.message_id \
         WHERE d.lane = $1 AND d.dealer_code = $2 AND m.record_type = 'lead_event' \
         ORDER BY d.id DESC LIMIT 1",
    )
    .bind(lead_id)
    .bind(dealer)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        None => format!("no delivery to {dealer}'s DMS found"),
        Some(r) => {
            let status: String = r.try_get(0)?;
            let reason: Option<String> = r.try_get(1)?;
            match (status.as_str(), reason) {
                ("delivered", _) => format!("lead.assigned was delivered to {dealer}'s DMS"),
                (s, Some(why)) => format!("delivery to {dealer}'s DMS is {s}: {why}"),
                (s, None) => format!("delivery to {dealer}'s DMS is {s}"),
            }
        }
    })
}

/// Escalations for the API, newest first; `dealer` is the operator's scope or filter.
pub async fn list(
    pool: &AnyPool,
    status: Option<&str>,
    dealer: Option<&str>,
    kind: Option<&str>,
    limit: i64,
) -> Result<Vec<Value>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, kind, entity_id, dealer_code, due_at, raised_at, status, action, resolved_at, resolution \
         FROM escalations WHERE ($1 = '' OR status = $1) AND ($2 = '' OR dealer_code = $2) \
         AND ($3 = '' OR kind = $3) ORDER BY id DESC LIMIT $4",
    )
    .bind(status.unwrap_or(""))
    .bind(dealer.unwrap_or(""))
    .bind(kind.unwrap_or(""))
    .bind(limit.clamp(1, 1000))
    .fetch_all(pool)
    .await?;
    let t = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    rows.iter()
        .map(|r| {
            Ok(json!({
                "id": r.try_get::<i64, _>(0)?,
                "kind": r.try_get::<String, _>(1)?,
                "entity_id": r.try_get::<String, _>(2)?,
                "dealer_code": r.try_get::<String, _>(3)?,
                "due_at": t(Some(r.try_get(4)?)),
                "raised_at": t(Some(r.try_get(5)?)),
                "status": r.try_get::<String, _>(6)?,
                "action": r.try_get::<String, _>(7)?,
                "resolved_at": t(r.try_get(8)?),
                "resolution": r.try_get::<Option<String>, _>(9)?,
            }))
        })
        .collect()
}
