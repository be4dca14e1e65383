//! The audit log of operator actions (migration 0006): written in the same transaction as the
//! action it records where there is one, read by the dashboard's audit page and `GET /api/v1/audit`.

use serde_json::{Value, json};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use super::{StoreError, now_ms};

/// One operator action to record.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    pub user: String,
    /// The operator's dealer scope (`None` for headquarters).
    pub dealer_code: Option<String>,
    pub action: &'static str,
    pub target: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub detail: Option<String>,
    /// `ui` or `api`: where the operator acted.
    pub channel: &'static str,
}

pub async fn insert(conn: &mut AnyConnection, e: &AuditEntry) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, username, dealer_code, action, target, before, after, detail, channel) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(now_ms())
    .bind(e.user.as_str())
    .bind(e.dealer_code.as_deref())
    .bind(e.action)
    .bind(e.target.as_deref())
    .bind(e.before.as_ref().map(Value::to_string))
    .bind(e.after.as_ref().map(Value::to_string))
    .bind(e.detail.as_deref())
    .bind(e.channel)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Filters of the audit view.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub user: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: i64,
}

/// Newest first.
pub async fn list(pool: &AnyPool, q: &AuditQuery) -> Result<Vec<Value>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, at, username, dealer_code, action, target, before, after, detail, channel FROM audit_log \
         WHERE ($1 = '' OR username = $1) AND ($2 = '' OR action = $2) AND ($3 = '' OR target = $3) AND at >= $4 \
         ORDER BY id DESC LIMIT $5",
    )
    .bind(q.user.clone().unwrap_or_default())
    .bind(q.action.clone().unwrap_or_default())
    .bind(q.target.clone().unwrap_or_default())
    .bind(q.since_ms.unwrap_or(0))
    .bind(q.limit.clamp(1, 1000))
    .fetch_all(pool)
    .await?;
    rows.iter().map(row).collect()
}

fn json_text(s: Option<String>) -> Value {
    s.map(|s| serde_json::from_str(&s).unwrap_or(Value::String(s)))
        .unwrap_or(Value::Null)
}

fn row(r: &AnyRow) -> Result<Value, StoreError> {
    let at: i64 = r.try_get(1)?;
    Ok(json!({
        "id": r.try_get::<i64, _>(0)?,
        "at": chrono::DateTime::from_timestamp_millis(at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "user": r.try_get::<String, _>(2)?,
        "dealer_code": r.try_get::<Option<String>, _>(3)?,
        "action": r.try_get::<String, _>(4)?,
        "target": r.try_get::<Option<String>, _>(5)?,
        "before": json_text(r.try_get(6)?),
        "after": json_text(r.try_get(7)?),
        "detail": r.try_get::<Option<String>, _>(8)?,
        "channel": r.try_get::<String, _>(9)?,
    }))
}
