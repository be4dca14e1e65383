//! Escalation views of the ops API: `GET /api/v1/escalations?status=&dealer=&kind=&limit=`
//! and, per dealer, `GET /api/v1/dealers/{code}/deliveries` (is the dealer's DMS reachable:
//! deliveries by status, the oldest open one, the latest failure). Dealer IT users see only
//! their own dealer.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::AppState;
use super::auth::Operator;
use super::error::ApiError;
use crate::crm::escalation;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/escalations", get(list))
        .route("/api/v1/dealers/{code}/deliveries", get(dealer_deliveries))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    dealer: Option<String>,
    kind: Option<String>,
    limit: Option<i64>,
}

async fn list(
    op: Operator,
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = q.status.filter(|s| !s.is_empty() && s != "all");
    if let Some(s) = &status
        && s != "open"
        && s != "resolved"
    {
        return Err(ApiError::bad_request(
            "invalid_status",
            format!("status must be open, resolved or all, got `{s}`"),
        ));
    }
    let wanted = q
        .dealer
        .filter(|d| !d.is_empty())
        .map(|d| d.to_ascii_uppercase());
    let dealer = match (op.dealer_scope(), wanted) {
        (None, w) => w,
        (Some(scope), Some(w)) if w != scope => {
            return Err(ApiError::not_found(format!("dealer {w}")));
        }
        (Some(scope), _) => Some(scope.to_string()),
    };
    let items = escalation::list(
        st.store.pool(),
        status.as_deref(),
        dealer.as_deref(),
        q.kind.as_deref().filter(|k| !k.is_empty()),
        q.limit.unwrap_or(100),
    )
    .await?;
    Ok(Json(json!({"count": items.len(), "escalations": items})))
}

async fn dealer_deliveries(
    op: Operator,
    State(st): State<AppState>,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let code = code.to_ascii_uppercase();
    if !op.may_see(Some(&code)) {
        return Err(ApiError::not_found(format!("dealer {code}")));
    }
    let pool = st.store.pool();
    let rows = sqlx::query(
        "SELECT target, status, COUNT(*), MIN(created_at) FROM deliveries WHERE dealer_code = $1 \
         GROUP BY target, status ORDER BY target, status",
    )
    .bind(&code)
    .fetch_all(pool)
    .await
    .map_err(crate::store::StoreError::from)?;
    let mut targets = serde_json::Map::new();
    for r in rows {
        let target: String = r.try_get(0).map_err(crate::store::StoreError::from)?;
        let status: String = r.try_get(1).map_err(crate::store::StoreError::from)?;
        let n: i64 = r.try_get(2).map_err(crate::store::StoreError::from)?;
        let e = targets
            .entry(target)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object");
        e.insert(status, json!(n));
    }
    let failing = sqlx::query(
        "SELECT id, target, status, attempts, last_reason, updated_at FROM deliveries \
         WHERE dealer_code = $1 AND (status = 'parked' OR (status = 'pending' AND attempts > 0)) \
         ORDER BY updated_at DESC LIMIT 20",
    )
    .bind(&code)
    .fetch_all(pool)
    .await
    .map_err(crate::store::StoreError::from)?;
    let mut problems = Vec::new();
    for r in failing {
        let status: String = r.try_get(2).map_err(crate::store::StoreError::from)?;
        problems.push(json!({
            "delivery_id": r.try_get::<i64, _>(0).map_err(crate::store::StoreError::from)?,
            "target": r.try_get::<String, _>(1).map_err(crate::store::StoreError::from)?,
            "status": if status == "pending" { "retrying".to_string() } else { status },
            "attempts": r.try_get::<i64, _>(3).map_err(crate::store::StoreError::from)?,
            "last_reason": r.try_get::<Option<String>, _>(4).map_err(crate::store::StoreError::from)?,
            "updated_at": chrono::DateTime::from_timestamp_millis(r.try_get(5).map_err(crate::store::StoreError::from)?)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        }));
    }
    let open_escalations: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM escalations WHERE dealer_code = $1 AND status = 'open'",
    )
    .bind(&code)
    .fetch_one(pool)
    .await
    .map_err(crate::store::StoreError::from)?;
    Ok(Json(json!({
        "dealer_code": code,
        "deliveries_by_target": targets,
        "undeliverable": problems,
        "open_escalations": open_escalations,
    })))
}
