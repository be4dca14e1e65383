//! Campaigns in the CRM store: a campaign from headquarters is stored with one assignment per
//! dealer (its target customers resolved to canonical customers) and one `campaign_event` per
//! new assignment, which routes send to the dealer's DMS and to DCS; dealers' results are
//! accepted only for campaigns assigned to them; the per-dealer view counts each customer once
//! per result kind and shows how each assignment's deliveries went.
//!
//! Which targets a dealer gets: a target customer whose serving dealer is one of the campaign's
//! dealers goes to that dealer only; a target the store cannot place (a mobile with no customer
//! yet, a customer without a serving dealer or served by a dealer outside the campaign) goes to
//! every dealer of the campaign, so nobody targeted is left out.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value, json};
use sqlx::{AnyPool, Row};

use super::{Applied, ChangeEvent, ChangeSource, Columns, CrmFailure, Unit, str_field};
use crate::args;
use crate::store::StoreError;
use crate::store::exec::Exec;

/// Entity of a campaign's per-dealer assignment rows (id `<campaign_code>:<dealer_code>`).
pub const ASSIGNMENT: &str = "campaign_assignment";
/// Record type of the change event emitted per new assignment.
pub const EVENT: &str = "campaign_event";
/// The result kinds counted per dealer (INTERFACES §1).
pub const RESULT_KINDS: [&str; 4] = ["contacted", "attended", "purchased", "declined"];

/// Whether a target is a hub customer id (`C` + digits) rather than a mobile number.
pub fn is_customer_id(t: &str) -> bool {
    t.len() > 1 && t.starts_with('C') && t[1..].bytes().all(|b| b.is_ascii_digit())
}

fn list(rec: &Map<String, Value>, key: &str) -> Vec<String> {
    rec.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// One target as the DMS sees it: `{customer_id, name, mobile}` (id and name null for a mobile
/// the store does not know yet), and the serving dealer it was placed by.
struct Target {
    view: Value,
    serving_dealer: Option<String>,
}

async fn resolve(conn: &mut dyn Exec, unit: &mut Unit, target: &str) -> Result<Target, StoreError> {
    let id = if is_customer_id(target) {
        Some(target.to_string())
    } else {
        unit.find_customer(conn, Some(target), None).await?
    };
    let data = match &id {
        Some(id) => unit.get(conn, "customer", id).await?.cloned(),
        None => None,
    };
    Ok(match data {
        Some(c) => Target {
            view: json!({
                "customer_id": id,
                "name": c.get("name").cloned().unwrap_or(Value::Null),
                "mobile": c.get("mobile").cloned().unwrap_or(Value::Null),
            }),
            serving_dealer: str_field(&c, "dealer_code"),
        },
        None if is_customer_id(target) => Target {
            // Validated at POST; a customer gone since is still listed by its id.
            view: json!({"customer_id": target, "name": null, "mobile": null}),
            serving_dealer: None,
        },
        None => Target {
            view: json!({"customer_id": null, "name": null, "mobile": target}),
            serving_dealer: None,
        },
    })
}

/// Applies a validated campaign: stores it, then per dealer its assignment and, when the
/// assignment is new, the `campaign.assigned` event. Applying the same campaign again (a
/// replay, a re-POST) assigns nothing twice.
pub(crate) async fn apply_campaign(
    conn: &mut dyn Exec,
    unit: &mut Unit,
    rec: &Map<String, Value>,
    src: &ChangeSource,
) -> Result<Applied, CrmFailure> {
    let code = str_field(rec, "campaign_code")
        .ok_or_else(|| CrmFailure::Reject("campaign has no campaign_code".into()))?;
    let dealers = list(rec, "dealer_codes");
    let wanted = list(rec, "target_customers");
    // Thousands of targets cost a few bulk reads, not a query each, inside the writer.
    let (ids, mobiles): (Vec<String>, Vec<String>) =
        wanted.iter().cloned().partition(|t| is_customer_id(t));
    unit.prefetch_customers(conn, &mobiles, &[]).await?;
    let mut keys: Vec<(String, String)> = dealers
        .iter()
        .map(|d| ("dealer".to_string(), d.clone()))
        .chain(ids.into_iter().map(|i| ("customer".to_string(), i)))
        .collect();
    for m in &mobiles {
        if let Some(id) = unit.find_customer(conn, Some(m), None).await? {
            keys.push(("customer".into(), id));
        }
    }
    unit.prefetch(conn, &keys).await?;
    for d in &dealers {
        if unit.get(conn, "dealer", d).await?.is_none() {
            return Err(CrmFailure::Reject(format!(
                "campaign {code}: dealer {d} is unknown"
            )));
        }
    }
    let up = unit
        .upsert(conn, "campaign", &code, rec, &Columns::default(), src)
        .await?;
    let mut targets = Vec::new();
    for t in &wanted {
        targets.push(resolve(conn, unit, t).await?);
    }
    let mut events = Vec::new();
    for d in &dealers {
        let mine: Vec<Value> = targets
            .iter()
            .filter(|t| match &t.serving_dealer {
                Some(s) if dealers.contains(s) => s == d,
                _ => true,
            })
            .map(|t| t.view.clone())
            .collect();
        let assignment_id = format!("{code}:{d}");
        let body = json!({
            "event": "campaign.assigned",
            "campaign_code": code,
            "name": rec.get("name"),
            "start_date": rec.get("start_date"),
            "end_date": rec.get("end_date"),
            "dealer_code": d,
            "target_customers": mine,
            "target_count": mine.len(),
        });
        let data = body.as_object().cloned().unwrap_or_default();
        let cols = Columns {
            dealer_code: Some(d.clone()),
            reference: Some(code.clone()),
            ..Default::default()
        };
        let a = unit
            .upsert(conn, ASSIGNMENT, &assignment_id, &data, &cols, src)
            .await?;
        if a.created {
            events.push(ChangeEvent {
                record_type: EVENT,
                body,
                dealer_code: Some(d.clone()),
            });
        }
    }
    let summary = if events.is_empty() {
        format!(
            "campaign {code} v{}: already assigned to {}",
            up.version,
            dealers.join(", ")
        )
    } else {
        format!(
            "campaign {code} v{}: assigned to {}",
            up.version,
            events
                .iter()
                .filter_map(|e| e.dealer_code.clone())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Ok(Applied { summary, events })
}

/// A result from the campaign's dealer resolves that dealer's open campaign-task escalation;
/// true when there was one.
pub(crate) async fn resolve_escalation(
    conn: &mut dyn Exec,
    rec: &Map<String, Value>,
    result_id: &str,
) -> Result<bool, CrmFailure> {
    let code = str_field(rec, "campaign_code").unwrap_or_default();
    let dealer = str_field(rec, "dealer_code").unwrap_or_default();
    let n = conn
        .exec(
            "UPDATE escalations SET status = 'resolved', resolved_at = $1, resolution = $2 \
             WHERE kind = 'campaign' AND entity_id = $3 AND dealer_code = $4 AND status = 'open'",
            args![
                crate::store::now_ms(),
                format!(
                    "result {result_id} ({}) from {dealer}",
                    str_field(rec, "result").unwrap_or_default()
                ),
                &code,
                &dealer,
            ],
        )
        .await
        .map_err(CrmFailure::Store)?;
    Ok(n > 0)
}

/// A dealer's result counts only for a campaign assigned to that dealer.
pub(crate) async fn check_result(
    conn: &mut dyn Exec,
    unit: &mut Unit,
    rec: &Map<String, Value>,
) -> Result<(), CrmFailure> {
    let code = str_field(rec, "campaign_code").unwrap_or_default();
    let dealer = str_field(rec, "dealer_code").unwrap_or_default();
    let Some(campaign) = unit.get(conn, "campaign", &code).await? else {
        return Err(CrmFailure::Reject(format!("unknown campaign {code}")));
    };
    if !list(campaign, "dealer_codes").contains(&dealer) {
        return Err(CrmFailure::Reject(format!(
            "campaign {code} is not assigned to dealer {dealer}"
        )));
    }
    Ok(())
}

/// The per-dealer view of a campaign (`GET /api/v1/campaigns/<code>`), or `None` when there is
/// no such campaign, or (for a dealer scope) it is not assigned to that dealer.
pub async fn view(
    pool: &AnyPool,
    code: &str,
    dealer_scope: Option<&str>,
) -> Result<Option<Value>, StoreError> {
    let Some(mut campaign) = super::reads::get(pool, "campaign", code, None).await? else {
        return Ok(None);
    };
    let scope = dealer_scope.unwrap_or("");
    let mut rows: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let assignments = sqlx::query(
        "SELECT dealer_code, data FROM crm_records WHERE entity = $1 AND ref = $2 \
         AND ($3 = '' OR dealer_code = $3)",
    )
    .bind(ASSIGNMENT)
    .bind(code)
    .bind(scope)
    .fetch_all(pool)
    .await?;
    for r in assignments {
        let dealer: String = r.try_get::<Option<String>, _>(0)?.unwrap_or_default();
        let data: Value = serde_json::from_str(&r.try_get::<String, _>(1)?).unwrap_or_default();
        let mut row = Map::new();
        row.insert("dealer_code".into(), json!(dealer));
        row.insert(
            "target_count".into(),
            data.get("target_count").cloned().unwrap_or(json!(0)),
        );
        for k in RESULT_KINDS {
            row.insert(k.into(), json!(0));
        }
        row.insert("deliveries".into(), json!({}));
        rows.insert(dealer, row);
    }
    if dealer_scope.is_some() && rows.is_empty() {
        return Ok(None);
    }

    // One customer counts once per result kind, however often (and under whichever
    // source_ref) the dealer reported it.
    let results = sqlx::query(
        "SELECT dealer_code, mobile, data FROM crm_records WHERE entity = 'campaign_result' \
         AND ref = $1 AND ($2 = '' OR dealer_code = $2)",
    )
    .bind(code)
    .bind(scope)
    .fetch_all(pool)
    .await?;
    let mut seen: HashSet<(String, String, String)> = HashSet::new();
    let mut counts: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for r in results {
        let dealer: String = r.try_get::<Option<String>, _>(0)?.unwrap_or_default();
        let mobile: Option<String> = r.try_get(1)?;
        let data: Value = serde_json::from_str(&r.try_get::<String, _>(2)?).unwrap_or_default();
        let result = data
            .get("result")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let who = data
            .get("customer_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or(mobile)
            .unwrap_or_default();
        if seen.insert((dealer.clone(), result.clone(), who)) {
            *counts.entry(dealer).or_default().entry(result).or_default() += 1;
        }
    }
    for (dealer, by_kind) in &counts {
        if let Some(row) = rows.get_mut(dealer) {
            for (kind, n) in by_kind {
                row.insert(kind.clone(), json!(n));
            }
        }
    }

    // The latest delivery of each assignment event per target: did the DMS and DCS get it?
    let deliveries = sqlx::query(
        "SELECT d.id, d.dealer_code, d.target, d.route, d.status, d.attempts, d.last_reason, \
         d.remote_ref, d.updated_at FROM deliveries d JOIN messages m ON m.id = d.message_id \
         JOIN message_keys k ON k.message_id = m.id AND k.kind = 'campaign_code' AND k.value = $1 \
         WHERE m.kind = 'event' AND m.record_type = $2 AND ($3 = '' OR d.dealer_code = $3) \
         ORDER BY d.id",
    )
    .bind(code)
    .bind(EVENT)
    .bind(scope)
    .fetch_all(pool)
    .await?;
    let mut latest: HashMap<(String, String), Value> = HashMap::new();
    for r in deliveries {
        let dealer: String = r.try_get::<Option<String>, _>(1)?.unwrap_or_default();
        let target: String = r.try_get(2)?;
        let updated: i64 = r.try_get(8)?;
        latest.insert(
            (dealer, target),
            json!({
                "delivery_id": r.try_get::<i64, _>(0)?,
                "route": r.try_get::<String, _>(3)?,
                "status": r.try_get::<String, _>(4)?,
                "attempts": r.try_get::<i64, _>(5)?,
                "last_reason": r.try_get::<Option<String>, _>(6)?,
                "remote_ref": r.try_get::<Option<String>, _>(7)?,
                "updated_at": chrono::DateTime::from_timestamp_millis(updated).map(|t| t.to_rfc3339()),
            }),
        );
    }
    for ((dealer, target), d) in latest {
        if let Some(row) = rows.get_mut(&dealer) {
            row["deliveries"][target.as_str()] = d;
        }
    }

    let mut by_dealer = Map::new();
    for (dealer, row) in &rows {
        let mut m = Map::new();
        for k in RESULT_KINDS {
            if let Some(n) = row.get(k).filter(|n| n.as_i64() != Some(0)) {
                m.insert(k.into(), n.clone());
            }
        }
        by_dealer.insert(dealer.clone(), Value::Object(m));
    }
    if dealer_scope.is_some()
        && let Value::Object(c) = &mut campaign
    {
        // The other dealers and their customers are not this dealer's business.
        c.remove("dealer_codes");
        c.remove("target_customers");
    }
    Ok(Some(json!({
        "campaign_code": code,
        "campaign": campaign,
        "dealers": rows.into_values().map(Value::Object).collect::<Vec<_>>(),
        "results_by_dealer": by_dealer,
    })))
}

/// Vehicles wait for their dealer: once it arrives, every delivery held for it is due now
/// instead of at its next backoff step.
pub(crate) async fn wake_held_for_dealer(
    conn: &mut dyn Exec,
    target: &str,
    dealer: &str,
) -> Result<(), StoreError> {
    conn.exec(
        "UPDATE deliveries SET next_attempt_at = $1 WHERE status = 'pending' AND target = $2 \
         AND dealer_code = $3 AND next_attempt_at > $1",
        args![crate::store::now_ms(), target, dealer],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_ids_are_told_from_mobiles() {
        for (t, id) in [
            ("C000000042", true),
            ("C1", true),
            ("13912345678", false),
            ("C", false),
            ("c000000042", false),
            ("CX00001", false),
        ] {
            assert_eq!(is_customer_id(t), id, "{t}");
        }
    }
}
