//! The hub's HTTP surface: health and metrics, the ops API (messages, deliveries, flows,
//! endpoints), the CRM store API, and the REST adapter's partner paths merged in.

pub mod auth;
pub mod campaigns;
pub mod error;
pub mod escalations;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use self::auth::{Operator, Operators};
use self::error::ApiError;
use crate::crm;
use crate::ops::Channel;
use crate::pipeline::Pipeline;
use crate::status::{EndpointState, EndpointStates};
use crate::store::{Store, journal, queries};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub pipeline: Arc<Pipeline>,
    pub operators: Arc<Operators>,
    pub prometheus: PrometheusHandle,
    /// Route ids in file order, for the flows view.
    pub route_ids: Arc<Vec<String>>,
    /// Endpoint id → kind, for the endpoints view.
    pub endpoints: Arc<Vec<(String, String)>>,
    pub endpoint_state: Arc<EndpointStates>,
    /// SFTP endpoints: last poll, "poll now", which are disabled.
    pub sftp: Arc<crate::sftp::SftpEndpoints>,
    /// `[ui]`: dashboard settings.
    pub ui: Arc<crate::ui::UiSettings>,
}

pub fn router(state: AppState, partner_routes: Router) -> Router {
    let ui_state = state.clone();
    let api = Router::new()
        .route("/api/v1/messages", get(search_messages))
        .route("/api/v1/messages/{id}", get(message_detail))
        .route("/api/v1/messages/{id}/replay", post(replay_message))
        .route("/api/v1/deliveries/{id}/retry", post(retry_delivery))
        .route("/api/v1/deliveries/{id}/park", post(park_delivery))
        .merge(crate::ui::api::routes())
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/endpoints", get(endpoints))
        .route("/api/v1/endpoints/{id}/poll", post(poll_endpoint))
        .route("/api/v1/customers", get(customers_by_mobile))
        .route(
            "/api/v1/customers/{id}",
            get(get_customer).put(put_customer).delete(delete_customer),
        )
        .route("/api/v1/customers/{id}/merge", post(merge_customer))
        .route("/api/v1/customers/{id}/history", get(customer_history))
        .route("/api/v1/vehicles/{vin}", get(get_vehicle))
        .route("/api/v1/dealers/{code}", get(get_dealer))
        .route("/api/v1/leads/{id}", get(get_lead))
        .route(
            "/api/v1/campaigns",
            post(campaigns::post_campaign).layer(axum::extract::DefaultBodyLimit::max(
                campaigns::MAX_BODY_BYTES,
            )),
        )
        .route("/api/v1/campaigns/{code}", get(campaigns::get_campaign))
        .route("/api/v1/approvals", get(list_approvals))
        .route("/api/v1/approvals/{id}/{decision}", post(decide_approval))
        .route(
            "/health/live",
            get(|| async { Json(json!({"status": "live"})) }),
        )
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(escalations::routes())
        .with_state(state);
    api.merge(partner_routes).merge(crate::ui::router(ui_state))
}

/// Seconds readiness waits for the store. Load balancers probe with short timeouts (often 2 s);
/// a store that is down makes the pool retry connecting for its whole acquire timeout, and a
/// probe that times out says less than a 503 naming the reason.
const READY_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

async fn ready(State(st): State<AppState>) -> Response {
    let reason = match tokio::time::timeout(READY_STORE_TIMEOUT, st.store.ping()).await {
        Ok(Ok(())) => return Json(json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!(
            "store unavailable: no answer within {} ms",
            READY_STORE_TIMEOUT.as_millis()
        ),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "not ready", "reason": reason})),
    )
        .into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        st.prometheus.render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct SearchParams {
    key: Option<String>,
    status: Option<String>,
    endpoint: Option<String>,
    route: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
}

async fn search_messages(
    op: Operator,
    State(st): State<AppState>,
    Query(p): Query<SearchParams>,
) -> Result<Json<Value>, ApiError> {
    let since_ms = match p.since.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| {
                    ApiError::bad_request("invalid_since", format!("since must be RFC 3339: {e}"))
                })?
                .timestamp_millis(),
        ),
        None => None,
    };
    let s = queries::Search {
        key: p.key.filter(|k| !k.trim().is_empty()),
        status: p.status.filter(|s| !s.is_empty()),
        endpoint: p.endpoint.filter(|s| !s.is_empty()),
        route: p.route.filter(|s| !s.is_empty()),
        since_ms,
        limit: p.limit.unwrap_or(100),
        dealer: op.dealer_scope().map(str::to_string),
    };
    let items = queries::search_messages(st.store.pool(), &s).await?;
    Ok(Json(json!({"count": items.len(), "messages": items})))
}

async fn message_detail(
    op: Operator,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    queries::message_detail(st.store.pool(), &id, op.dealer_scope())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("message {id}")))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    mapping_version: Option<u32>,
}

async fn replay_message(
    op: Operator,
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Option<Json<ReplayBody>>,
) -> Result<Response, ApiError> {
    let version = body.and_then(|b| b.0.mapping_version);
    let replayed = crate::ops::replay(&st, &op, Channel::Api, &id, version).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"message_id": id, "replayed_records": replayed.iter().map(Uuid::to_string).collect::<Vec<_>>(), "mapping_version": version})),
    )
        .into_response())
}

async fn retry_delivery(
    op: Operator,
    State(st): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    crate::ops::retry(&st, &op, Channel::Api, id).await?;
    Ok(Json(json!({"delivery_id": id, "status": "pending"})))
}

async fn park_delivery(
    op: Operator,
    State(st): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    crate::ops::park(&st, &op, Channel::Api, id).await?;
    Ok(Json(json!({"delivery_id": id, "status": "parked"})))
}

async fn flows(op: Operator, State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let f = queries::flows(st.store.pool(), &st.route_ids, op.dealer_scope()).await?;
    Ok(Json(json!({"flows": f})))
}

async fn endpoints(_op: Operator, State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"endpoints": endpoint_views(&st).await?})))
}

/// Every endpoint with kind, state, last contact and last error (the API's and the dashboard's).
pub(crate) async fn endpoint_views(st: &AppState) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    for (id, kind) in st.endpoints.iter() {
        // Nothing heard from it yet (no traffic, no connection, no health check): "up" would
        // tell the operator, and a script waiting for a broker link, more than is known.
        let mut s = st.endpoint_state.get(id).unwrap_or(EndpointState {
            state: "unknown",
            ..Default::default()
        });
        if st.sftp.is_disabled(id) {
            s.state = "disabled";
        }
        let mut e = json!({
            "id": id,
            "kind": kind,
            "state": s.state,
            "last_contact": s.last_contact_ms.and_then(chrono::DateTime::from_timestamp_millis).map(|t| t.to_rfc3339()),
            "last_error": s.last_error,
        });
        if let Some(ep) = st.sftp.inbound(id) {
            let mut last = ep.last_poll_json();
            last["ledger"] = crate::sftp::recent_files(&st.store, id).await?.into();
            e["last_poll"] = last;
        }
        out.push(e);
    }
    Ok(out)
}

/// Polls an inbound SFTP endpoint now and answers with the poll's report. Headquarters only:
/// a poll moves partner files.
async fn poll_endpoint(
    op: Operator,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !op.is_admin() {
        return Err(ApiError::forbidden("only headquarters may poll endpoints"));
    }
    if st.sftp.is_disabled(&id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "endpoint_disabled",
            format!("endpoint {id} is disabled (enabled = false)"),
        ));
    }
    let ep = st
        .sftp
        .inbound(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("inbound SFTP endpoint {id}")))?;
    tracing::info!(operator = %op.user, endpoint = %id, "Poll requested.");
    match ep.poll_now().await {
        Ok(report) => Ok(Json(serde_json::to_value(report).unwrap_or_default())),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "poll_failed",
            e.to_string(),
        )),
    }
}

async fn get_entity(
    st: &AppState,
    op: &Operator,
    entity: &str,
    id: &str,
) -> Result<Json<Value>, ApiError> {
    crm::reads::get(st.store.pool(), entity, id, op.dealer_scope())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("{entity} {id}")))
}

async fn get_customer(
    op: Operator,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    get_entity(&st, &op, "customer", &id).await
}

async fn get_vehicle(
    op: Operator,
    State(st): State<AppState>,
    Path(vin): Path<String>,
) -> Result<Json<Value>, ApiError> {
    get_entity(&st, &op, "vehicle", &vin.to_ascii_uppercase()).await
}

async fn get_dealer(
    op: Operator,
    State(st): State<AppState>,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
    get_entity(&st, &op, "dealer", &code.to_ascii_uppercase()).await
}

async fn get_lead(
    op: Operator,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Json(mut lead) = get_entity(&st, &op, "lead", &id).await?;
    lead["timeline"] = crm::reads::history(st.store.pool(), "lead", &id)
        .await?
        .into();
    Ok(Json(lead))
}

async fn customer_history(
    op: Operator,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let _exists = get_entity(&st, &op, "customer", &id).await?;
    let h = crm::reads::history(st.store.pool(), "customer", &id).await?;
    Ok(Json(json!({"customer_id": id, "history": h})))
}

#[derive(Debug, Deserialize)]
struct MobileQuery {
    mobile: Option<String>,
}

async fn customers_by_mobile(
    op: Operator,
    State(st): State<AppState>,
    Query(q): Query<MobileQuery>,
) -> Result<Json<Value>, ApiError> {
    let raw = q.mobile.ok_or_else(|| {
        ApiError::bad_request("missing_mobile", "query parameter mobile is required")
    })?;
    let mobile = synchub_transform::cleanse::normalize_mobile(&raw)
        .map_err(|r| ApiError::bad_request("invalid_mobile", r))?;
    let found =
        crm::reads::customers_by_mobile(st.store.pool(), &mobile, op.dealer_scope()).await?;
    Ok(Json(json!({"customers": found})))
}

/// Fields headquarters may edit; ids and bookkeeping are the hub's.
const EDITABLE: &[&str] = &[
    "name",
    "mobile",
    "id_no",
    "gender",
    "birth_date",
    "province",
    "city",
    "address",
    "email",
    "dealer_code",
];

async fn put_customer(
    op: Operator,
    State(st): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    if !op.is_admin() {
        return Err(ApiError::forbidden("only headquarters may edit customers"));
    }
    let Value::Object(input) = body else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "body must be a JSON object of customer fields",
        ));
    };
    let mut fields = Map::new();
    let mut details = Vec::new();
    for (k, v) in input {
        if !EDITABLE.contains(&k.as_str()) {
            details.push(json!({"field": k, "reason": "not an editable customer field"}));
            continue;
        }
        let cleaned = match (k.as_str(), v.as_str()) {
            ("mobile", Some(s)) => {
                synchub_transform::cleanse::normalize_mobile(s).map(Value::String)
            }
            ("id_no", Some(s)) => synchub_transform::cleanse::normalize_id_no(s).map(Value::String),
            (_, Some(s)) => Ok(Value::String(synchub_transform::cleanse::clean_text(s))),
            (_, None) if v.is_null() => Ok(Value::Null),
            _ => Err("expected a string".to_string()),
        };
        match cleaned {
            Ok(v) => {
                fields.insert(k, v);
            }
            Err(reason) => details.push(json!({"field": k, "reason": reason})),
        }
    }
    if !details.is_empty() {
        return Err(
            ApiError::bad_request("invalid_fields", "some fields were not accepted")
                .with_details(details),
        );
    }
    let before = crm::reads::get(st.store.pool(), "customer", &id, None).await?;
    let pipeline = st.pipeline.clone();
    let who = op.user.clone();
    let cid = id.clone();
    let (version, changed) = st
        .store
        .write(move |c| {
            Box::pin(async move {
                let (up, ev) = crm::edit_customer(c, &cid, &fields, &who).await?;
                if let Some(ev) = ev {
                    journal::insert_prepared(
                        c,
                        &pipeline.prepare_event(Uuid::now_v7(), None, "crm_store", &ev),
                    )
                    .await?;
                }
                Ok((up.version, up.changed))
            })
        })
        .await?;
    let after = json!({"customer_id": id, "version": version, "changed_fields": changed});
    crate::ops::audit_customer_edit(&st, &op, &id, before, after.clone()).await?;
    Ok(Json(after))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeBody {
    into: String,
}

/// `POST /api/v1/customers/<id>/merge` `{"into": "<id>"}`: headquarters merges a duplicate into
/// the customer it duplicates; its vehicles move over and extracts get a `merge` tombstone.
async fn merge_customer(
    op: Operator,
    State(st): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<MergeBody>,
) -> Result<Json<Value>, ApiError> {
    if !op.is_admin() {
        return Err(ApiError::forbidden("only headquarters may merge customers"));
    }
    let into = body.into.trim().to_string();
    let who = op.user.clone();
    let op2 = op.clone();
    let result = st
        .store
        .write(move |c| {
            Box::pin(async move {
                let m = crm::removal::merge_customer(c, &id, &into, &who).await?;
                let after =
                    json!({"customer_id": id, "merged_into": into, "vehicles_moved": m.vehicles});
                let e = crate::ops::customer_removal(
                    &op2,
                    "merge_customer",
                    &id,
                    Value::Object(m.before),
                    after.clone(),
                );
                crate::store::audit::insert(c, &e).await?;
                Ok(after)
            })
        })
        .await?;
    Ok(Json(result))
}

/// `DELETE /api/v1/customers/<id>`: headquarters erases a customer; extracts get a `delete`
/// tombstone that names only the id.
async fn delete_customer(
    op: Operator,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !op.is_admin() {
        return Err(ApiError::forbidden(
            "only headquarters may delete customers",
        ));
    }
    let who = op.user.clone();
    let result = st
        .store
        .write(move |c| {
            Box::pin(async move {
                let before = crm::removal::erase_customer(c, &id, &who).await?;
                let after = json!({"customer_id": id, "deleted": true});
                // The audit names what was erased, not the personal data itself.
                let erased: Vec<&String> = before.keys().collect();
                let e = crate::ops::customer_removal(
                    &op,
                    "delete_customer",
                    &id,
                    json!({"customer_id": id, "fields": erased}),
                    after.clone(),
                );
                crate::store::audit::insert(c, &e).await?;
                Ok(after)
            })
        })
        .await?;
    Ok(Json(result))
}

#[derive(Debug, Deserialize)]
struct ApprovalsQuery {
    status: Option<String>,
}

async fn list_approvals(
    op: Operator,
    State(st): State<AppState>,
    Query(q): Query<ApprovalsQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = q.status.unwrap_or_else(|| "pending".into());
    let status = if status == "all" {
        String::new()
    } else {
        status
    };
    let items = crm::reads::approvals(st.store.pool(), &status, op.dealer_scope()).await?;
    Ok(Json(json!({"approvals": items})))
}

#[derive(Debug, Deserialize, Default)]
struct DecisionBody {
    comment: Option<String>,
}

async fn decide_approval(
    op: Operator,
    State(st): State<AppState>,
    Path((id, decision)): Path<(i64, String)>,
    body: Option<Json<DecisionBody>>,
) -> Result<Json<Value>, ApiError> {
    let approve = match decision.as_str() {
        "approve" => true,
        "reject" => false,
        other => return Err(ApiError::not_found(format!("action {other}"))),
    };
    let comment = body.and_then(|b| b.0.comment);
    crate::ops::decide_approval(&st, &op, Channel::Api, id, approve, comment).await?;
    Ok(Json(
        json!({"approval_id": id, "status": if approve { "approved" } else { "rejected" }}),
    ))
}
