//! Journal writes: accepting submissions (messages, keys, idempotency, deliveries in one
//! transaction), claiming due deliveries, recording attempts, and the operator actions
//! replay / retry / park. Every function takes the connection of a transaction the backend owns.

use serde_json::json;
use sqlx::{AnyConnection, Row};
use synchub_adapter_sdk::{FieldError, RecordVerdict};
use uuid::Uuid;

use super::{Dialect, StoreError, now_ms};

/// The transport unit as journaled.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub kind: &'static str,
    pub endpoint: String,
    pub record_type: Option<String>,
    pub routes: Vec<String>,
    pub received_at: i64,
    pub correlation_id: Option<String>,
    pub partner: Option<String>,
    pub dealer_code: Option<String>,
    pub source_ref: Option<String>,
    pub status: &'static str,
    pub reason: Option<String>,
    pub entity_id: Option<String>,
    pub content_type: &'static str,
    pub headers: String,
    pub body: Vec<u8>,
}

/// How the hub names the business record a message creates, decided in the accept transaction
/// so the partner gets the id in its 202.
#[derive(Debug, Clone)]
pub enum IdRule {
    /// Match an existing customer by mobile, then ID number; otherwise mint `C000000001`.
    Customer {
        mobile: Option<String>,
        id_no: Option<String>,
    },
    /// `L<yyyymmdd><5 digits>`, counted per day.
    Lead,
    /// A prefix and a global counter (`LR`, `CR`).
    Counter(&'static str),
    /// The record carries its own identity (VIN, dealer code, campaign code).
    Natural(String),
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub route: String,
    pub target: String,
    pub lane: Option<String>,
    pub dealer_code: Option<String>,
    pub max_attempts: i64,
    pub backoff_ms: i64,
    pub max_backoff_ms: i64,
    pub mapping: Option<String>,
    pub mapping_version: Option<i64>,
    pub content_type: &'static str,
    pub headers: String,
    pub body: Vec<u8>,
}

/// One record, validated and mapped outside the transaction (pure CPU work stays off the writer).
#[derive(Debug, Clone)]
pub struct PreparedRecord {
    pub message: NewMessage,
    /// Rejected records carry their errors and nothing below is used.
    pub errors: Option<Vec<FieldError>>,
    pub keys: Vec<(&'static str, String)>,
    pub idempotency: Option<(String, String)>,
    pub id_rule: Option<IdRule>,
    pub deliveries: Vec<NewDelivery>,
}

pub async fn insert_message(conn: &mut AnyConnection, m: &NewMessage) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO messages (id, parent_id, kind, endpoint, record_type, routes, received_at, correlation_id, \
         partner, dealer_code, source_ref, status, reason, entity_id, content_type, headers, body) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17)",
    )
    .bind(m.id.to_string())
    .bind(m.parent_id.map(|p| p.to_string()))
    .bind(m.kind)
    .bind(&m.endpoint)
    .bind(m.record_type.as_deref())
    .bind((!m.routes.is_empty()).then(|| m.routes.join(",")))
    .bind(m.received_at)
    .bind(m.correlation_id.as_deref())
    .bind(m.partner.as_deref())
    .bind(m.dealer_code.as_deref())
    .bind(m.source_ref.as_deref())
    .bind(m.status)
    .bind(m.reason.as_deref())
    .bind(m.entity_id.as_deref())
    .bind(m.content_type)
    .bind(&m.headers)
    .bind(m.body.as_slice())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn insert_keys(
    conn: &mut AnyConnection,
    message_id: Uuid,
    keys: &[(&'static str, String)],
) -> Result<(), StoreError> {
    let id = message_id.to_string();
    for (kind, value) in keys {
        if value.is_empty() {
            continue;
        }
        sqlx::query("INSERT INTO message_keys (value, kind, message_id) VALUES ($1,$2,$3) ON CONFLICT DO NOTHING")
            .bind(value.as_str())
            .bind(*kind)
            .bind(id.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub async fn insert_delivery(
    conn: &mut AnyConnection,
    message_id: Uuid,
    d: &NewDelivery,
) -> Result<(), StoreError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO deliveries (message_id, route, target, lane, dealer_code, status, attempts, max_attempts, \
         backoff_ms, max_backoff_ms, next_attempt_at, mapping, mapping_version, content_type, headers, body, \
         created_at, updated_at) VALUES ($1,$2,$3,$4,$5,'pending',0,$6,$7,$8,$9,$10,$11,$12,$13,$14,$9,$9)",
    )
    .bind(message_id.to_string())
    .bind(&d.route)
    .bind(&d.target)
    .bind(d.lane.as_deref())
    .bind(d.dealer_code.as_deref())
    .bind(d.max_attempts)
    .bind(d.backoff_ms)
    .bind(d.max_backoff_ms)
    .bind(now)
    .bind(d.mapping.as_deref())
    .bind(d.mapping_version)
    .bind(d.content_type)
    .bind(&d.headers)
    .bind(d.body.as_slice())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn next_counter(conn: &mut AnyConnection, name: &str) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "INSERT INTO counters (name, value) VALUES ($1, 1) \
         ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get::<i64, _>(0)?)
}

pub async fn assign_id(conn: &mut AnyConnection, rule: &IdRule) -> Result<String, StoreError> {
    match rule {
        IdRule::Natural(id) => Ok(id.clone()),
        IdRule::Customer { mobile, id_no } => {
            for (col, value) in [("mobile", mobile), ("id_no", id_no)] {
                if let Some(v) = value {
                    let sql = format!(
                        "SELECT id FROM crm_records WHERE entity = 'customer' AND {col} = $1 LIMIT 1"
                    );
                    if let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(v.as_str())
                        .fetch_optional(&mut *conn)
                        .await?
                    {
                        return Ok(row.try_get::<String, _>(0)?);
                    }
                }
            }
            Ok(format!("C{:09}", next_counter(conn, "customer").await?))
        }
        IdRule::Lead => {
            let day = chrono::Utc::now()
                .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset"))
                .format("%Y%m%d")
                .to_string();
            let n = next_counter(conn, &format!("lead:{day}")).await?;
            Ok(format!("L{day}{n:05}"))
        }
        IdRule::Counter(prefix) => Ok(format!("{prefix}{:010}", next_counter(conn, prefix).await?)),
    }
}

/// Journals a prepared event or replayed record (message, keys, deliveries) without the
/// idempotency ledger: events are minted by the hub itself.
pub async fn insert_prepared(
    conn: &mut AnyConnection,
    rec: &PreparedRecord,
) -> Result<(), StoreError> {
    insert_message(conn, &rec.message).await?;
    insert_keys(conn, rec.message.id, &rec.keys).await?;
    for d in &rec.deliveries {
        insert_delivery(conn, rec.message.id, d).await?;
    }
    Ok(())
}

/// Journals one transport unit and its records; the heart of "accept = durable".
pub async fn accept(
    conn: &mut AnyConnection,
    transport: &NewMessage,
    transport_keys: &[(&'static str, String)],
    records: Vec<PreparedRecord>,
) -> Result<Vec<RecordVerdict>, StoreError> {
    insert_message(conn, transport).await?;
    insert_keys(conn, transport.id, transport_keys).await?;
    let mut verdicts = Vec::with_capacity(records.len());
    for mut rec in records {
        if let Some(errors) = rec.errors.take() {
            insert_message(conn, &rec.message).await?;
            insert_keys(conn, rec.message.id, &rec.keys).await?;
            verdicts.push(RecordVerdict::Rejected {
                message_id: rec.message.id,
                errors,
            });
            continue;
        }
        let entity_id = match &rec.id_rule {
            Some(rule) => Some(assign_id(conn, rule).await?),
            None => None,
        };
        if let Some((scope, key)) = &rec.idempotency {
            let inserted = sqlx::query(
                "INSERT INTO idempotency (scope, idem_key, message_id, entity_id, created_at) \
                 VALUES ($1,$2,$3,$4,$5) ON CONFLICT DO NOTHING",
            )
            .bind(scope.as_str())
            .bind(key.as_str())
            .bind(rec.message.id.to_string())
            .bind(entity_id.as_deref())
            .bind(now_ms())
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if inserted == 0 {
                let row = sqlx::query("SELECT message_id, entity_id FROM idempotency WHERE scope = $1 AND idem_key = $2")
                    .bind(scope.as_str())
                    .bind(key.as_str())
                    .fetch_one(&mut *conn)
                    .await?;
                let first: String = row.try_get(0)?;
                let first_entity: Option<String> = row.try_get(1)?;
                rec.message.status = "duplicate";
                rec.message.reason =
                    Some(format!("duplicate of message {first}: no second effect"));
                rec.message.entity_id = first_entity.clone();
                rec.message.routes.clear();
                insert_message(conn, &rec.message).await?;
                insert_keys(conn, rec.message.id, &rec.keys).await?;
                verdicts.push(RecordVerdict::Accepted {
                    message_id: rec.message.id,
                    id: first_entity,
                    duplicate: true,
                });
                continue;
            }
        }
        rec.message.entity_id = entity_id.clone();
        if let Some(id) = &entity_id {
            rec.keys.push((
                entity_key_kind(rec.message.record_type.as_deref()),
                id.clone(),
            ));
        }
        insert_message(conn, &rec.message).await?;
        insert_keys(conn, rec.message.id, &rec.keys).await?;
        for d in &rec.deliveries {
            insert_delivery(conn, rec.message.id, d).await?;
        }
        verdicts.push(RecordVerdict::Accepted {
            message_id: rec.message.id,
            id: entity_id,
            duplicate: false,
        });
    }
    Ok(verdicts)
}

/// Which business-key kind the hub-assigned id of a record type is searched by.
fn entity_key_kind(record_type: Option<&str>) -> &'static str {
    match record_type {
        Some("lead") => "lead_id",
        Some("dms_customer") | Some("customer") => "customer_id",
        Some("vehicle") => "vin",
        Some("dealer") => "dealer_code",
        Some("campaign") => "campaign_code",
        _ => "record_id",
    }
}

/// A delivery claimed by this instance until `lease_until`.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub message_id: Uuid,
    pub route: String,
    pub target: String,
    pub lane: Option<String>,
    pub dealer_code: Option<String>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub backoff_ms: i64,
    pub max_backoff_ms: i64,
    pub mapping_version: Option<i64>,
    pub content_type: String,
    pub headers: String,
    pub body: Vec<u8>,
    pub correlation_id: Option<String>,
    pub lease_until: i64,
}

/// Claims up to `limit` due deliveries whose lane is free (no earlier unfinished delivery with
/// the same lane key to the same target). On PostgreSQL, `SKIP LOCKED` lets several instances
/// claim concurrently without ever taking the same row.
pub async fn claim(
    conn: &mut AnyConnection,
    dialect: Dialect,
    limit: i64,
    lease_ms: i64,
) -> Result<Vec<Claimed>, StoreError> {
    let now = now_ms();
    let lease_until = now + lease_ms;
    let lock = match dialect {
        Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let sql = format!(
        "UPDATE deliveries SET status = 'in_flight', lease_until = $1, attempts = attempts + 1, updated_at = $2 \
         WHERE id IN (SELECT d.id FROM deliveries d WHERE d.status = 'pending' AND d.next_attempt_at <= $2 \
           AND (d.lane IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.target = d.target AND p.lane = d.lane \
                AND p.id < d.id AND p.status IN ('pending','in_flight','parked'))) \
           ORDER BY d.next_attempt_at, d.id LIMIT $3 {lock}) \
         RETURNING id, message_id, route, target, lane, dealer_code, attempts, max_attempts, backoff_ms, \
           max_backoff_ms, mapping_version, content_type, headers, body, \
           (SELECT correlation_id FROM messages m WHERE m.id = deliveries.message_id)"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(Claimed {
            id: r.try_get(0)?,
            message_id: parse_uuid(&r.try_get::<String, _>(1)?)?,
            route: r.try_get(2)?,
            target: r.try_get(3)?,
            lane: r.try_get(4)?,
            dealer_code: r.try_get(5)?,
            attempts: r.try_get(6)?,
            max_attempts: r.try_get(7)?,
            backoff_ms: r.try_get(8)?,
            max_backoff_ms: r.try_get(9)?,
            mapping_version: r.try_get(10)?,
            content_type: r.try_get(11)?,
            headers: r.try_get(12)?,
            body: r.try_get(13)?,
            correlation_id: r.try_get(14)?,
            lease_until,
        });
    }
    out.sort_by_key(|c| c.id);
    Ok(out)
}

/// Puts deliveries whose lease ran out (their instance died mid-attempt) back in line.
pub async fn release_expired_leases(conn: &mut AnyConnection) -> Result<u64, StoreError> {
    let now = now_ms();
    let n = sqlx::query(
        "UPDATE deliveries SET status = 'pending', lease_until = NULL, next_attempt_at = $1, updated_at = $1, \
         last_reason = 'lease expired: the instance working on it stopped' \
         WHERE status = 'in_flight' AND lease_until < $1",
    )
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n)
}

/// The result of one attempt, ready to record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at: i64,
    pub duration_ms: i64,
    /// delivered | retry | reject | parked
    pub outcome: &'static str,
    pub reason: Option<String>,
    pub cause_chain: Vec<String>,
    pub remote_ref: Option<String>,
    /// New delivery status: delivered | pending | rejected | parked
    pub status: &'static str,
    pub next_attempt_at: i64,
}

/// Records the attempt and moves the delivery on, if this instance still holds its lease.
/// Returns false when the lease was lost (another instance took over): the caller's transaction
/// must then roll back any side effects.
pub async fn complete(
    conn: &mut AnyConnection,
    c: &Claimed,
    a: &AttemptRecord,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let n = sqlx::query(
        "UPDATE deliveries SET status = $1, next_attempt_at = $2, lease_until = NULL, last_reason = $3, \
         remote_ref = COALESCE($4, remote_ref), updated_at = $5 \
         WHERE id = $6 AND status = 'in_flight' AND lease_until = $7",
    )
    .bind(a.status)
    .bind(a.next_attempt_at)
    .bind(a.reason.as_deref())
    .bind(a.remote_ref.as_deref())
    .bind(now)
    .bind(c.id)
    .bind(c.lease_until)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, outcome, reason, cause_chain, \
         mapping_version, remote_ref) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
    )
    .bind(c.id)
    .bind(c.attempts)
    .bind(a.started_at)
    .bind(a.duration_ms)
    .bind(a.outcome)
    .bind(a.reason.as_deref())
    .bind(json!(a.cause_chain).to_string())
    .bind(c.mapping_version)
    .bind(a.remote_ref.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Operator action: put a parked (or rejected, or pending) delivery back in line now.
pub async fn retry_delivery(
    conn: &mut AnyConnection,
    id: i64,
    who: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    let n = sqlx::query(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, updated_at = $1, \
         max_attempts = CASE WHEN attempts >= max_attempts THEN attempts + max_attempts ELSE max_attempts END, \
         last_reason = $2 WHERE id = $3 AND status IN ('parked','rejected','pending')",
    )
    .bind(now)
    .bind(format!("retry requested by {who}"))
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "delivery {id} is not parked, rejected or pending (in flight or already delivered)"
        )));
    }
    Ok(())
}

/// Operator action: stop a delivery from being attempted; it holds its lane until retried.
pub async fn park_delivery(conn: &mut AnyConnection, id: i64, who: &str) -> Result<(), StoreError> {
    let now = now_ms();
    let n = sqlx::query(
        "UPDATE deliveries SET status = 'parked', updated_at = $1, last_reason = $2 \
         WHERE id = $3 AND status IN ('pending','in_flight')",
    )
    .bind(now)
    .bind(format!("parked by {who}"))
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "delivery {id} is not pending or in flight (already delivered, rejected or parked)"
        )));
    }
    Ok(())
}

pub fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Query(format!("bad uuid '{s}' in store: {e}")))
}
