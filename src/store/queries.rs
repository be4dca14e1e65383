//! Journal reads for the ops API and the dashboard: search by business key, message detail with
//! deliveries and attempts, per-route flow figures. Reads go to the pool, never the writer.

use serde_json::{Value, json};
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::AnyRow;
use synchub_adapter_sdk::Principal;
use uuid::Uuid;

use super::{StoreError, now_ms};

/// Filters of a message search; `dealer` restricts to one dealer's messages (dealer IT users).
#[derive(Debug, Default, Clone)]
pub struct Search {
    pub key: Option<String>,
    pub status: Option<String>,
    pub endpoint: Option<String>,
    pub route: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: i64,
    pub dealer: Option<String>,
}

const MESSAGE_COLS: &str = "m.id, m.parent_id, m.kind, m.endpoint, m.record_type, m.routes, m.received_at, \
    m.correlation_id, m.partner, m.dealer_code, m.source_ref, m.status, m.reason, m.entity_id, m.content_type";

fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn opt_ms(ms: Option<i64>) -> Value {
    ms.map(|m| Value::String(ms_to_rfc3339(m)))
        .unwrap_or(Value::Null)
}

fn reason_value(s: Option<String>) -> Value {
    match s {
        Some(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        None => Value::Null,
    }
}

fn message_summary(r: &AnyRow) -> Result<Value, StoreError> {
    Ok(json!({
        "id": r.try_get::<String, _>(0)?,
        "parent_id": r.try_get::<Option<String>, _>(1)?,
        "kind": r.try_get::<String, _>(2)?,
        "endpoint": r.try_get::<String, _>(3)?,
        "record_type": r.try_get::<Option<String>, _>(4)?,
        "routes": r.try_get::<Option<String>, _>(5)?.map(|s| s.split(',').map(str::to_string).collect::<Vec<_>>()).unwrap_or_default(),
        "received_at": ms_to_rfc3339(r.try_get(6)?),
        "correlation_id": r.try_get::<Option<String>, _>(7)?,
        "partner": r.try_get::<Option<String>, _>(8)?,
        "dealer_code": r.try_get::<Option<String>, _>(9)?,
        "source_ref": r.try_get::<Option<String>, _>(10)?,
        "status": r.try_get::<String, _>(11)?,
        "reason": reason_value(r.try_get(12)?),
        "entity_id": r.try_get::<Option<String>, _>(13)?,
        "content_type": r.try_get::<String, _>(14)?,
    }))
}

/// Messages touching a business key (or all, newest first), with filters.
pub async fn search_messages(pool: &AnyPool, s: &Search) -> Result<Vec<Value>, StoreError> {
    let mut sql = format!("SELECT {MESSAGE_COLS} FROM messages m WHERE 1=1");
    let mut binds: Vec<Bind> = Vec::new();
    let mut n = 0;
    let mut p = |binds: &mut Vec<Bind>, b: Bind| {
        binds.push(b);
        n += 1;
        format!("${n}")
    };
    if let Some(key) = &s.key {
        let k = key.trim().to_string();
        let a = p(&mut binds, Bind::Text(k.clone()));
        // Every way a key can name a message is an indexed lookup of its own, and their union
        // is a handful of ids; an OR over the columns let the planner scan the whole journal.
        // The id the hub gave a record is one of its keys (see `journal::commit_staged`).
        let unfiltered = s.status.is_none()
            && s.endpoint.is_none()
            && s.route.is_none()
            && s.since_ms.is_none()
            && s.dealer.is_none();
        // A dealer code or a busy mobile names tens of thousands of messages; without other
        // filters only the newest `limit` are shown. Message ids are UUIDv7 (time-ordered text),
        // so the newest are the greatest ids, picked from the index without reading the rest.
        let newest = if unfiltered {
            let l = p(&mut binds, Bind::Int(s.limit.clamp(1, 1000)));
            format!(" ORDER BY id DESC LIMIT {l}")
        } else {
            String::new()
        };
        // A row of a file applied in a batch is found by its batch's line span (one key per
        // batch, see `journal::span_key`): the span with the greatest first line not after the
        // row's, if its last line is not before it. Equality and digit-only comparisons decide,
        // so the answer does not depend on how the database's collation orders punctuation.
        let span = match super::journal::line_ref(&k) {
            Some((prefix, line)) => {
                let base = super::journal::span_base(prefix);
                let lo = p(&mut binds, Bind::Text(base.clone()));
                let hi = p(
                    &mut binds,
                    Bind::Text(format!("{base}{line:012}-999999999999")),
                );
                // A literal: PostgreSQL has no substr(text, bigint, bigint) for a bound integer.
                let len = base.len();
                let at = p(&mut binds, Bind::Text(format!("{line:012}")));
                format!(
                    " UNION ALL SELECT message_id AS id FROM message_keys WHERE kind = '{kind}' \
                     AND value = (SELECT value FROM message_keys WHERE value >= {lo} \
                     AND value <= {hi} AND kind = '{kind}' AND substr(value, 1, {len}) = {lo} \
                     ORDER BY value DESC LIMIT 1) AND substr(value, length(value) - 11) >= {at}",
                    kind = super::journal::SPAN_KIND
                )
            }
            None => String::new(),
        };
        // A record applied in a batch has no key of its own: its change history names the
        // messages that wrote it. The history's index leads with the entity: all are named.
        let entities: Vec<String> = crate::extract::ENTITIES
            .iter()
            .map(|e| format!("'{}'", e.store))
            .collect();
        let entities = entities.join(",");
        sql.push_str(&format!(
            " AND m.id IN (SELECT id FROM (SELECT DISTINCT message_id AS id FROM message_keys \
             WHERE value = {a}{newest}) AS k \
             UNION ALL SELECT id FROM (SELECT DISTINCT message_id AS id FROM change_history \
             WHERE entity IN ({entities}) AND entity_id = {a} AND message_id IS NOT NULL{newest}) AS h \
             UNION ALL SELECT id FROM messages WHERE id = {a} \
             UNION ALL SELECT id FROM (SELECT id FROM messages WHERE parent_id = {a}{newest}) AS c{span})"
        ));
    }
    if let Some(v) = &s.status {
        let a = p(&mut binds, Bind::Text(v.clone()));
        sql.push_str(&format!(" AND m.status = {a}"));
    }
    if let Some(v) = &s.endpoint {
        let a = p(&mut binds, Bind::Text(v.clone()));
        sql.push_str(&format!(" AND m.endpoint = {a}"));
    }
    if let Some(v) = &s.route {
        let a = p(&mut binds, Bind::Text(v.clone()));
        sql.push_str(&format!(
            " AND (',' || m.routes || ',') LIKE ('%,' || {a} || ',%')"
        ));
    }
    if let Some(v) = s.since_ms {
        let a = p(&mut binds, Bind::Int(v));
        sql.push_str(&format!(" AND m.received_at >= {a}"));
    }
    if let Some(d) = &s.dealer {
        let a = p(&mut binds, Bind::Text(d.clone()));
        sql.push_str(&format!(" AND m.dealer_code = {a}"));
    }
    let a = p(&mut binds, Bind::Int(s.limit.clamp(1, 1000)));
    sql.push_str(&format!(
        " ORDER BY m.received_at DESC, m.id DESC LIMIT {a}"
    ));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in binds {
        q = match b {
            Bind::Text(t) => q.bind(t),
            Bind::Int(i) => q.bind(i),
        };
    }
    let rows = q.fetch_all(pool).await?;
    rows.iter().map(message_summary).collect()
}

enum Bind {
    Text(String),
    Int(i64),
}

/// Full detail of one message: envelope, raw body, keys, children, deliveries with mapped body
/// and every attempt. `None` when absent or outside the caller's dealer scope.
pub async fn message_detail(
    pool: &AnyPool,
    id: &str,
    dealer: Option<&str>,
) -> Result<Option<Value>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLS}, m.headers, m.body FROM messages m WHERE m.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut msg = message_summary(&row)?;
    if let Some(d) = dealer
        && msg["dealer_code"].as_str() != Some(d)
    {
        return Ok(None);
    }
    let headers: String = row.try_get(15)?;
    let body: Vec<u8> = row.try_get(16)?;
    msg["headers"] = serde_json::from_str(&headers).unwrap_or(Value::Null);
    msg["body"] = body_value(&body);
    let keys = sqlx::query(
        "SELECT kind, value FROM message_keys WHERE message_id = $1 ORDER BY kind, value",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    msg["keys"] = keys
        .iter()
        .map(|r| {
            Ok(json!({"kind": r.try_get::<String, _>(0)?, "value": r.try_get::<String, _>(1)?}))
        })
        .collect::<Result<Vec<_>, StoreError>>()?
        .into();
    let children = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLS} FROM messages m WHERE m.parent_id = $1 ORDER BY m.id LIMIT 2000"
    )))
    .bind(id)
    .fetch_all(pool)
    .await?;
    msg["children"] = children
        .iter()
        .map(message_summary)
        .collect::<Result<Vec<_>, _>>()?
        .into();
    msg["deliveries"] = deliveries_of(pool, id).await?.into();
    Ok(Some(msg))
}

/// A body as JSON when it is JSON, else text when it is UTF-8, else base64-free hex preview.
fn body_value(body: &[u8]) -> Value {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return v;
    }
    match std::str::from_utf8(body) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => {
            json!({"binary_bytes": body.len(), "lossy": String::from_utf8_lossy(&body[..body.len().min(65536)])})
        }
    }
}

async fn deliveries_of(pool: &AnyPool, message_id: &str) -> Result<Vec<Value>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, route, target, lane, status, attempts, max_attempts, next_attempt_at, mapping, mapping_version, \
         body, last_reason, remote_ref, created_at, updated_at, mapped_body FROM deliveries WHERE message_id = $1 ORDER BY id",
    )
    .bind(message_id)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let id: i64 = r.try_get(0)?;
        let attempts = sqlx::query(
            "SELECT attempt_no, started_at, duration_ms, outcome, reason, cause_chain, mapping_version, remote_ref \
             FROM attempts WHERE delivery_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|a| {
            Ok(json!({
                "attempt": a.try_get::<i64, _>(0)?,
                "started_at": ms_to_rfc3339(a.try_get(1)?),
                "duration_ms": a.try_get::<i64, _>(2)?,
                "outcome": a.try_get::<String, _>(3)?,
                "reason": a.try_get::<Option<String>, _>(4)?,
                "cause_chain": serde_json::from_str::<Value>(&a.try_get::<String, _>(5)?).unwrap_or(Value::Null),
                "mapping_version": a.try_get::<Option<i64>, _>(6)?,
                "remote_ref": a.try_get::<Option<String>, _>(7)?,
            }))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let body: Vec<u8> = r.try_get(10)?;
        let mapped: Option<Vec<u8>> = r.try_get(15)?;
        let status: String = r.try_get(4)?;
        out.push(json!({
            "id": id,
            "route": r.try_get::<String, _>(1)?,
            "target": r.try_get::<String, _>(2)?,
            "lane": r.try_get::<Option<String>, _>(3)?,
            "status": status,
            "attempts": r.try_get::<i64, _>(5)?,
            "max_attempts": r.try_get::<i64, _>(6)?,
            "next_attempt_at": if status == "pending" { opt_ms(Some(r.try_get(7)?)) } else { Value::Null },
            "mapping": r.try_get::<Option<String>, _>(8)?,
            "mapping_version": r.try_get::<Option<i64>, _>(9)?,
            "body": body_value(&body),
            "mapped": mapped.as_deref().map(body_value),
            "last_reason": r.try_get::<Option<String>, _>(11)?,
            "remote_ref": r.try_get::<Option<String>, _>(12)?,
            "created_at": ms_to_rfc3339(r.try_get(13)?),
            "updated_at": ms_to_rfc3339(r.try_get(14)?),
            "attempt_log": attempts,
        }));
    }
    Ok(out)
}

/// The dealer a delivery belongs to, for scope checks before operator actions.
pub async fn delivery_dealer(
    pool: &AnyPool,
    id: i64,
) -> Result<Option<Option<String>>, StoreError> {
    let r = sqlx::query("SELECT dealer_code FROM deliveries WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(match r {
        Some(r) => Some(r.try_get(0)?),
        None => None,
    })
}

/// Per-route figures for the last hour and day (from the per-minute flow figures, see
/// `stats`), backlog age and last success.
pub async fn flows(
    pool: &AnyPool,
    route_ids: &[String],
    dealer: Option<&str>,
) -> Result<Vec<Value>, StoreError> {
    let now = now_ms();
    let hour = super::stats::figures_since(pool, now - 3_600_000, dealer).await?;
    let day = super::stats::figures_since(pool, now - 86_400_000, dealer).await?;
    let none = json!({"received": 0, "rejected_records": 0, "delivered": 0, "rejected": 0});
    let mut out = Vec::new();
    for route in route_ids {
        let mut figures = serde_json::Map::new();
        figures.insert(
            "last_hour".into(),
            hour.get(route).cloned().unwrap_or_else(|| none.clone()),
        );
        figures.insert(
            "last_day".into(),
            day.get(route).cloned().unwrap_or_else(|| none.clone()),
        );
        let backlog = sqlx::query(
            "SELECT MIN(created_at), COUNT(*), SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END) FROM deliveries \
             WHERE route = $1 AND status IN ('pending','in_flight') AND ($2 = '' OR dealer_code = $2)",
        )
        .bind(route.as_str())
        .bind(dealer.unwrap_or(""))
        .fetch_one(pool)
        .await?;
        let oldest: Option<i64> = backlog.try_get(0)?;
        let backlog_n: i64 = backlog.try_get(1)?;
        let retrying: Option<i64> = backlog.try_get(2)?;
        let parked = sqlx::query("SELECT COUNT(*) FROM deliveries WHERE route = $1 AND status = 'parked' AND ($2 = '' OR dealer_code = $2)")
            .bind(route.as_str())
            .bind(dealer.unwrap_or(""))
            .fetch_one(pool)
            .await?
            .try_get::<i64, _>(0)?;
        let last_ok = sqlx::query(
            "SELECT MAX(updated_at) FROM deliveries WHERE route = $1 AND status = 'delivered' AND ($2 = '' OR dealer_code = $2)",
        )
        .bind(route.as_str())
        .bind(dealer.unwrap_or(""))
        .fetch_one(pool)
        .await?
        .try_get::<Option<i64>, _>(0)?;
        let status = if parked > 0 {
            "red"
        } else if retrying.unwrap_or(0) > 0 {
            "amber"
        } else {
            "green"
        };
        out.push(json!({
            "route": route,
            "status": status,
            "last_hour": figures["last_hour"],
            "last_day": figures["last_day"],
            "backlog": backlog_n,
            "retrying": retrying.unwrap_or(0),
            "parked": parked,
            "oldest_backlog_age_secs": oldest.map(|o| (now - o) / 1000),
            "last_success": opt_ms(last_ok),
        }));
    }
    Ok(out)
}

/// A stored record that can be replayed.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub endpoint: String,
    pub record_type: String,
    pub partner: Option<String>,
    pub dealer_code: Option<String>,
    pub source_ref: Option<String>,
    pub correlation_id: Option<String>,
    pub entity_id: Option<String>,
    pub body: Vec<u8>,
}

impl StoredRecord {
    /// The principal the record came in with, rebuilt from its scope (`system` or `system:dealer`).
    pub fn principal(&self) -> Option<Principal> {
        let p = self.partner.as_deref()?;
        let (system, dealer) = match p.split_once(':') {
            Some((s, d)) => (s.to_string(), Some(d.to_string())),
            None => (p.to_string(), None),
        };
        Some(Principal {
            system,
            dealer_code: dealer,
        })
    }
}

/// The accepted records of a message: the message itself if it is a record, or its children.
pub async fn replayable_records(pool: &AnyPool, id: Uuid) -> Result<Vec<StoredRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, parent_id, endpoint, record_type, partner, dealer_code, source_ref, correlation_id, entity_id, body \
         FROM messages WHERE (id = $1 OR parent_id = $1) AND kind IN ('record','event') AND status = 'accepted' ORDER BY id",
    )
    .bind(id.to_string())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredRecord {
                id: super::journal::parse_uuid(&r.try_get::<String, _>(0)?)?,
                parent_id: r
                    .try_get::<Option<String>, _>(1)?
                    .and_then(|p| Uuid::parse_str(&p).ok()),
                endpoint: r.try_get(2)?,
                record_type: r.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                partner: r.try_get(4)?,
                dealer_code: r.try_get(5)?,
                source_ref: r.try_get(6)?,
                correlation_id: r.try_get(7)?,
                entity_id: r.try_get(8)?,
                body: r.try_get(9)?,
            })
        })
        .collect()
}

/// The dealer scope of a message, for permission checks on actions.
pub async fn message_dealer(
    pool: &AnyPool,
    id: &str,
) -> Result<Option<Option<String>>, StoreError> {
    let r = sqlx::query("SELECT dealer_code FROM messages WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(match r {
        Some(r) => Some(r.try_get(0)?),
        None => None,
    })
}
