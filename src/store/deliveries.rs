//! Delivery queues by filter (the parked and rejected views and their bulk retry/replay, shared by
//! the dashboard and `POST /api/v1/deliveries/retry`), per-dealer freshness, and the causal chain
//! of a message. Reads go to the pool; bulk writes run inside the caller's transaction.

use serde_json::{Value, json};
use sqlx::{AnyConnection, AnyPool, Row};

use super::{StoreError, journal};

/// Most deliveries one bulk action touches; a larger selection must be narrowed first.
pub const BULK_MAX: i64 = 10_000;

/// Which deliveries a queue view or bulk action covers. `dealer` is the filter the operator
/// chose; `scope` is the dealer an operator is confined to (both apply).
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// `parked`, `rejected`, `pending`, ... (required for bulk actions).
    pub status: Option<String>,
    pub route: Option<String>,
    pub target: Option<String>,
    pub dealer: Option<String>,
    pub since_ms: Option<i64>,
    pub scope: Option<String>,
    pub limit: i64,
}

impl DeliveryFilter {
    /// The filter as JSON, for the audit log and API answers.
    pub fn describe(&self) -> Value {
        json!({
            "status": self.status, "route": self.route, "target": self.target,
            "dealer_code": self.dealer,
            "since": self.since_ms.and_then(chrono::DateTime::from_timestamp_millis).map(|t| t.to_rfc3339()),
        })
    }

    fn sql(&self) -> (String, Vec<Bind>) {
        let mut sql = String::from("WHERE 1=1");
        let mut binds = Vec::new();
        let mut add = |sql: &mut String, col: &str, b: Bind| {
            binds.push(b);
            sql.push_str(&format!(" AND {col} ${}", binds.len()));
        };
        if let Some(v) = &self.status {
            add(&mut sql, "d.status =", Bind::Text(v.clone()));
        }
        if let Some(v) = &self.route {
            add(&mut sql, "d.route =", Bind::Text(v.clone()));
        }
        if let Some(v) = &self.target {
            add(&mut sql, "d.target =", Bind::Text(v.clone()));
        }
        if let Some(v) = &self.dealer {
            add(&mut sql, "d.dealer_code =", Bind::Text(v.clone()));
        }
        if let Some(v) = &self.scope {
            add(&mut sql, "d.dealer_code =", Bind::Text(v.clone()));
        }
        if let Some(v) = self.since_ms {
            add(&mut sql, "d.updated_at >=", Bind::Int(v));
        }
        (sql, binds)
    }
}

enum Bind {
    Text(String),
    Int(i64),
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for b in binds {
        q = match b {
            Bind::Text(t) => q.bind(t),
            Bind::Int(i) => q.bind(i),
        };
    }
    q
}

fn ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Matching deliveries, most recently changed first, with their message's business context.
pub async fn list(pool: &AnyPool, f: &DeliveryFilter) -> Result<Vec<Value>, StoreError> {
    let (filter, binds) = f.sql();
    let sql = format!(
        "SELECT d.id, d.message_id, d.route, d.target, d.dealer_code, d.status, d.attempts, d.last_reason, \
         d.updated_at, d.mapping, d.mapping_version, m.source_ref, m.record_type, m.entity_id \
         FROM deliveries d LEFT JOIN messages m ON m.id = d.message_id {filter} \
         ORDER BY d.updated_at DESC, d.id DESC LIMIT {}",
        f.limit.clamp(1, 1000)
    );
    let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), binds)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(json!({
                "id": r.try_get::<i64, _>(0)?,
                "message_id": r.try_get::<String, _>(1)?,
                "route": r.try_get::<String, _>(2)?,
                "target": r.try_get::<String, _>(3)?,
                "dealer_code": r.try_get::<Option<String>, _>(4)?,
                "status": r.try_get::<String, _>(5)?,
                "attempts": r.try_get::<i64, _>(6)?,
                "last_reason": r.try_get::<Option<String>, _>(7)?,
                "updated_at": ms(r.try_get(8)?),
                "mapping": r.try_get::<Option<String>, _>(9)?,
                "mapping_version": r.try_get::<Option<i64>, _>(10)?,
                "source_ref": r.try_get::<Option<String>, _>(11)?,
                "record_type": r.try_get::<Option<String>, _>(12)?,
                "entity_id": r.try_get::<Option<String>, _>(13)?,
            }))
        })
        .collect()
}

/// Ids of every matching delivery (at most [`BULK_MAX`] + 1, so callers can refuse too large a
/// selection), oldest first so a retried lane keeps its order.
pub async fn matching_ids(
    conn: &mut AnyConnection,
    f: &DeliveryFilter,
) -> Result<Vec<(i64, String)>, StoreError> {
    let (filter, binds) = f.sql();
    let sql = format!(
        "SELECT d.id, d.message_id FROM deliveries d {filter} ORDER BY d.id LIMIT {}",
        BULK_MAX + 1
    );
    let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), binds)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Puts every matching delivery back in line (the bulk form of [`journal::retry_delivery`]).
/// Refuses a selection of more than [`BULK_MAX`] deliveries as a whole.
pub async fn retry_matching(
    conn: &mut AnyConnection,
    f: &DeliveryFilter,
    who: &str,
) -> Result<Vec<i64>, StoreError> {
    let ids = matching_ids(conn, f).await?;
    if ids.len() as i64 > BULK_MAX {
        return Err(StoreError::Conflict(format!(
            "more than {BULK_MAX} deliveries match; narrow the filter"
        )));
    }
    let mut done = Vec::with_capacity(ids.len());
    for (id, _) in ids {
        match journal::retry_delivery(conn, id, who).await {
            Ok(()) => done.push(id),
            // Delivered or in flight since it was listed: nothing to retry.
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// One delivery's status and attempts, for the audit log's before/after.
pub async fn state(pool: &AnyPool, id: i64) -> Result<Option<Value>, StoreError> {
    let r = sqlx::query("SELECT status, attempts, last_reason FROM deliveries WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    r.map(|r| {
        Ok(json!({
            "status": r.try_get::<String, _>(0)?,
            "attempts": r.try_get::<i64, _>(1)?,
            "last_reason": r.try_get::<Option<String>, _>(2)?,
        }))
    })
    .transpose()
}

/// A message's place in its causal chain: `(id, parent_id, kind, endpoint, record_type,
/// status, dealer_code, received_at_ms)`.
pub type ChainNode = (
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    i64,
);

async fn node(pool: &AnyPool, id: &str) -> Result<Option<ChainNode>, StoreError> {
    let r = sqlx::query(
        "SELECT id, parent_id, kind, endpoint, record_type, status, dealer_code, received_at FROM messages WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    r.map(|r| to_node(&r)).transpose()
}

fn to_node(r: &sqlx::any::AnyRow) -> Result<ChainNode, StoreError> {
    Ok((
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(4)?,
        r.try_get(5)?,
        r.try_get(6)?,
        r.try_get(7)?,
    ))
}

/// The messages that led to `id`, root first (at most `depth` steps up).
pub async fn ancestors(
    pool: &AnyPool,
    id: &str,
    depth: usize,
) -> Result<Vec<ChainNode>, StoreError> {
    let mut out = Vec::new();
    let mut cur = node(pool, id).await?.and_then(|n| n.1);
    while let Some(p) = cur {
        if out.len() >= depth {
            break;
        }
        match node(pool, &p).await? {
            Some(n) => {
                cur = n.1.clone();
                out.push(n);
            }
            None => break,
        }
    }
    out.reverse();
    Ok(out)
}

/// The messages caused by `id`, depth first (parents before their children) with their depth
/// (1 = direct children), at most `max` nodes and `depth` levels: a SOAP batch of 5,000 vehicles
/// is shown in part, not hung on.
pub async fn descendants(
    pool: &AnyPool,
    id: &str,
    depth: usize,
    max: usize,
) -> Result<Vec<(usize, ChainNode)>, StoreError> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, ChainNode)> = Vec::new();
    let expand = |rows: Vec<sqlx::any::AnyRow>, d: usize, stack: &mut Vec<(usize, ChainNode)>| {
        let kids = rows.iter().map(to_node).collect::<Result<Vec<_>, _>>()?;
        stack.extend(kids.into_iter().rev().map(|n| (d, n)));
        Ok::<(), StoreError>(())
    };
    let children = |parent: String| async move {
        sqlx::query(
            "SELECT id, parent_id, kind, endpoint, record_type, status, dealer_code, received_at \
             FROM messages WHERE parent_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(parent)
        .bind(max as i64)
        .fetch_all(pool)
        .await
    };
    expand(children(id.to_string()).await?, 1, &mut stack)?;
    while let Some((d, n)) = stack.pop() {
        if out.len() >= max {
            break;
        }
        let nid = n.0.clone();
        out.push((d, n));
        if d < depth {
            expand(children(nid).await?, d + 1, &mut stack)?;
        }
    }
    Ok(out)
}

/// [`supersede`] with the newest delivery of `(message, route, target)`, right after a replay
/// inserted it in the same transaction.
pub async fn supersede_by_latest(
    conn: &mut AnyConnection,
    message_id: &str,
    route: &str,
    target: &str,
) -> Result<u64, StoreError> {
    let newest: Option<i64> = sqlx::query(
        "SELECT MAX(id) FROM deliveries WHERE message_id = $1 AND route = $2 AND target = $3",
    )
    .bind(message_id)
    .bind(route)
    .bind(target)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    match newest {
        Some(id) => supersede(conn, message_id, route, target, id).await,
        None => Ok(0),
    }
}

/// After a replay queued `new_id` for `(message, route, target)`, the older deliveries of that
/// triple that have not gone out (parked, rejected, waiting) are closed as `superseded`: the
/// parked one no longer holds its lane or shows red, and a waiting one is not sent twice.
pub async fn supersede(
    conn: &mut AnyConnection,
    message_id: &str,
    route: &str,
    target: &str,
    new_id: i64,
) -> Result<u64, StoreError> {
    let now = super::now_ms();
    let n = sqlx::query(
        "UPDATE deliveries SET status = 'superseded', updated_at = $1, last_reason = $2 \
         WHERE message_id = $3 AND route = $4 AND target = $5 AND id < $6 \
         AND status IN ('parked','rejected','pending')",
    )
    .bind(now)
    .bind(format!("superseded by replay (delivery {new_id})"))
    .bind(message_id)
    .bind(route)
    .bind(target)
    .bind(new_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n)
}
