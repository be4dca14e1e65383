//! Ops API routes that came with the dashboard: bulk retry/replay by filter
//! (`POST /api/v1/deliveries/retry`, `POST /api/v1/deliveries/replay`), the replay preview
//! (`POST /api/v1/messages/<id>/preview`) and the audit log (`GET /api/v1/audit`, headquarters only).

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::auth::Operator;
use crate::http::error::ApiError;
use crate::ops::{self, Channel};
use crate::store::audit;
use crate::store::deliveries::{self, DeliveryFilter};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/deliveries/retry", post(bulk_retry))
        .route("/api/v1/deliveries/replay", post(bulk_replay))
        .route("/api/v1/messages/{id}/preview", post(preview))
        .route("/api/v1/audit", get(list_audit))
}

/// The filter body of a bulk action, e.g.
/// `{"status": "parked", "dealer_code": "D0042", "since": "2026-12-01T08:00:00+08:00"}`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    status: Option<String>,
    route: Option<String>,
    target: Option<String>,
    dealer_code: Option<String>,
    since: Option<String>,
    mapping_version: Option<u32>,
}

impl BulkBody {
    fn filter(&self) -> Result<DeliveryFilter, ApiError> {
        let since_ms = super::views::parse_since(self.since.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::bad_request("invalid_since", e))?;
        let clean = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
        Ok(DeliveryFilter {
            status: clean(&self.status),
            route: clean(&self.route),
            target: clean(&self.target),
            dealer: clean(&self.dealer_code).map(|d| d.to_ascii_uppercase()),
            since_ms,
            scope: None,
            limit: deliveries::BULK_MAX,
        })
    }
}

async fn bulk_retry(
    op: Operator,
    State(st): State<AppState>,
    Json(b): Json<BulkBody>,
) -> Result<Json<Value>, ApiError> {
    if b.mapping_version.is_some() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "mapping_version applies to replay, not retry",
        ));
    }
    let f = b.filter()?;
    let describe = f.describe();
    let ids = ops::bulk_retry(&st, &op, Channel::Api, f).await?;
    Ok(Json(
        json!({"filter": describe, "retried": ids.len(), "delivery_ids": ids}),
    ))
}

async fn bulk_replay(
    op: Operator,
    State(st): State<AppState>,
    Json(b): Json<BulkBody>,
) -> Result<Json<Value>, ApiError> {
    let f = b.filter()?;
    let describe = f.describe();
    let mut r = ops::bulk_replay(&st, &op, Channel::Api, f, b.mapping_version).await?;
    r["filter"] = describe;
    Ok(Json(r))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    mapping_version: Option<u32>,
}

async fn preview(
    op: Operator,
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Option<Json<PreviewBody>>,
) -> Result<Json<Value>, ApiError> {
    let version = body.and_then(|b| b.0.mapping_version);
    let items = ops::preview_replay(&st, &op, &id, version).await?;
    Ok(Json(
        json!({"message_id": id, "mapping_version": version, "deliveries": items}),
    ))
}

#[derive(Debug, Deserialize, Default)]
struct AuditParams {
    user: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
}

async fn list_audit(
    op: Operator,
    State(st): State<AppState>,
    Query(p): Query<AuditParams>,
) -> Result<Json<Value>, ApiError> {
    // Dealer IT users do not learn that the audit log exists.
    if !op.is_admin() {
        return Err(ApiError::not_found("/api/v1/audit"));
    }
    let since_ms = super::views::parse_since(p.since.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request("invalid_since", e))?;
    let entries = audit::list(
        st.store.pool(),
        &audit::AuditQuery {
            user: p.user,
            action: p.action,
            target: p.target,
            since_ms,
            limit: p.limit.unwrap_or(100),
        },
    )
    .await?;
    Ok(Json(json!({"count": entries.len(), "entries": entries})))
}
