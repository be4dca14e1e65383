//! `POST /api/v1/campaigns` (headquarters creates a campaign) and `GET /api/v1/campaigns/<code>`
//! (per-dealer targets, result counts and delivery status). A campaign goes through the same
//! journal as partner input: validated here with per-field details, journaled (rejections too)
//! and answered 202 only after the commit; the CRM store then assigns it to its dealers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sqlx::Row;
use synchub_adapter_sdk::{
    ContentType, Envelope, FieldError, Inbox, Principal, RecordIn, RecordVerdict, Submission,
};
use synchub_transform::cleanse;
use synchub_transform::validate::{RecordSchema, validate};

use super::AppState;
use super::auth::Operator;
use super::error::ApiError;
use crate::crm::campaigns::{self, is_customer_id};

/// The endpoint campaigns are journaled under: the hub's REST surface. The route
/// `hq_campaigns_to_crm` takes `campaign` records from it to the CRM store.
pub const ENDPOINT: &str = "partners_rest_in";
/// Who campaigns come from: headquarters, whichever operator posts them, so a campaign code
/// is one campaign (the idempotency scope is `hq/campaign`).
pub const SYSTEM: &str = "hq";

fn field_errors(errors: &[FieldError]) -> Vec<Value> {
    errors
        .iter()
        .map(|e| json!({"field": e.field, "reason": e.reason}))
        .collect()
}

/// Largest campaign body: room for about half a million target mobiles.
pub const MAX_BODY_BYTES: usize = 10 << 20;

/// The fields of a campaign (INTERFACES §5); anything else is a mistake worth naming.
const FIELDS: [&str; 6] = [
    "campaign_code",
    "name",
    "start_date",
    "end_date",
    "dealer_codes",
    "target_customers",
];

/// Checks the schema cannot make: no unknown fields, targets given and each a mobile or a known
/// customer id, dealers known to the CRM store. Indexes name positions in the request.
async fn store_checks(st: &AppState, input: &Value, errors: &mut Vec<FieldError>) {
    let pool = st.store.pool();
    if let Some(m) = input.as_object() {
        for k in m.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
            errors.push(FieldError::new(
                k.clone(),
                format!("unknown field; a campaign has {}", FIELDS.join(", ")),
            ));
        }
    }
    let exists = |entity: &'static str, id: String| async move {
        sqlx::query("SELECT 1 FROM crm_records WHERE entity = $1 AND id = $2")
            .bind(entity)
            .bind(id)
            .fetch_optional(pool)
            .await
            .map(|r| r.is_some())
    };
    if let Some(items) = input.get("dealer_codes").and_then(Value::as_array) {
        for (i, item) in items.iter().enumerate() {
            let Some(code) = item.as_str().map(|s| cleanse::clean_text(s).to_uppercase()) else {
                continue;
            };
            if code.is_empty() {
                continue;
            }
            match exists("dealer", code.clone()).await {
                Ok(true) => {}
                Ok(false) => errors.push(FieldError::new(
                    format!("dealer_codes[{i}]"),
                    format!("unknown dealer {code}"),
                )),
                Err(e) => errors.push(FieldError::new(
                    format!("dealer_codes[{i}]"),
                    format!("could not be checked: {e}"),
                )),
            }
        }
    }
    match input.get("target_customers") {
        None | Some(Value::Null) => errors.push(FieldError::new(
            "target_customers",
            "required: customer ids or mobile numbers",
        )),
        Some(Value::Array(items)) if items.is_empty() => errors.push(FieldError::new(
            "target_customers",
            "must contain at least one customer id or mobile number",
        )),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let Some(t) = item.as_str().map(cleanse::clean_text) else {
                    continue;
                };
                if t.is_empty() || cleanse::normalize_mobile(&t).is_ok() {
                    continue;
                }
                let at = format!("target_customers[{i}]");
                if !is_customer_id(&t) {
                    errors.push(FieldError::new(
                        at,
                        format!("'{t}' is neither a mobile number nor a customer id (C + digits)"),
                    ));
                    continue;
                }
                match exists("customer", t.clone()).await {
                    Ok(true) => {}
                    Ok(false) => errors.push(FieldError::new(at, format!("unknown customer {t}"))),
                    Err(e) => {
                        errors.push(FieldError::new(at, format!("could not be checked: {e}")))
                    }
                }
            }
        }
        // The schema reports a wrong type.
        Some(_) => {}
    }
}

/// The campaign journaled earlier under this code, as the CRM store received it.
async fn journaled(st: &AppState, code: &str) -> Result<Option<Value>, ApiError> {
    let row = sqlx::query(
        "SELECT d.body FROM idempotency i JOIN deliveries d ON d.message_id = i.message_id \
         WHERE i.scope = $1 AND i.idem_key = $2 ORDER BY d.id LIMIT 1",
    )
    .bind(format!("{SYSTEM}/campaign"))
    .bind(code)
    .fetch_optional(st.store.pool())
    .await
    .map_err(crate::store::StoreError::from)?;
    Ok(match row {
        Some(r) => serde_json::from_slice(&r.try_get::<Vec<u8>, _>(0).unwrap_or_default()).ok(),
        None => None,
    })
}

pub async fn post_campaign(
    op: Operator,
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !op.is_admin() {
        return Err(ApiError::forbidden(
            "only headquarters may create campaigns",
        ));
    }
    let mut env = Envelope::new(ENDPOINT, ContentType::Json, body.clone())
        .with_header("http.path", "/api/v1/campaigns")
        .with_header("operator", op.user.clone());
    env.principal = Some(Principal {
        system: SYSTEM.into(),
        dealer_code: None,
    });
    env.correlation_id = headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string);
    let input: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let reason = format!("body is not valid JSON: {e}");
            let id = st
                .pipeline
                .reject(env, "invalid_json", &reason)
                .await
                .map_err(unavailable)?;
            return Err(ApiError::bad_request(
                "invalid_json",
                format!("{reason} (journaled as message {id})"),
            ));
        }
    };
    let (canonical, mut errors) = match validate(RecordSchema::Campaign, &input) {
        Ok(c) => (Some(c), Vec::new()),
        Err(errors) => (None, errors),
    };
    if input.is_object() {
        store_checks(&st, &input, &mut errors).await;
    }
    let code = canonical
        .as_ref()
        .and_then(|c| c.get("campaign_code"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut conflict = false;
    if errors.is_empty()
        && let (Some(code), Some(c)) = (&code, &canonical)
        && let Some(before) = journaled(&st, code).await?
        && before != Value::Object(c.clone())
    {
        conflict = true;
        errors.push(FieldError::new(
            "campaign_code",
            format!(
                "campaign {code} already exists with other content; a campaign is not changed \
                 by posting it again (use a new campaign_code)"
            ),
        ));
    }
    // A rejected record keeps no body to find it by: its keys are taken from the request.
    let mut keys = Vec::new();
    if !errors.is_empty() {
        crate::pipeline::collect_keys(&input, &mut keys);
        keys.sort();
        keys.dedup();
    }
    let record = RecordIn {
        index: 0,
        record_type: "campaign".into(),
        source_ref: if errors.is_empty() {
            code.clone()
        } else {
            None
        },
        body: if errors.is_empty() {
            Ok(input)
        } else {
            Err(errors)
        },
    };
    let receipt = st
        .pipeline
        .accept(Submission {
            envelope: env,
            records: vec![record],
        })
        .await
        .map_err(unavailable)?;
    match receipt.records.into_iter().next() {
        Some(RecordVerdict::Accepted {
            message_id,
            duplicate,
            ..
        }) => {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM messages WHERE id = $1")
                    .bind(message_id.to_string())
                    .fetch_optional(st.store.pool())
                    .await
                    .map_err(crate::store::StoreError::from)?;
            if status.as_deref() == Some("unrouted") {
                tracing::error!(message = %message_id, "A campaign was journaled but no route takes it to the CRM store.");
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "unrouted",
                    format!(
                        "no route takes campaign records from {ENDPOINT} (routes/hq_campaigns_to_crm.toml); journaled as message {message_id}"
                    ),
                ));
            }
            tracing::info!(operator = %op.user, campaign = ?code, duplicate, "Campaign journaled.");
            let mut answer = json!({
                "message_id": message_id.to_string(),
                "campaign_code": code,
                "status": if duplicate { "duplicate" } else { "accepted" },
            });
            if duplicate && let Some(code) = &code {
                let first: Option<String> = sqlx::query_scalar(
                    "SELECT message_id FROM idempotency WHERE scope = $1 AND idem_key = $2",
                )
                .bind(format!("{SYSTEM}/campaign"))
                .bind(code)
                .fetch_optional(st.store.pool())
                .await
                .map_err(crate::store::StoreError::from)?;
                answer["duplicate_of"] = json!(first);
            }
            Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
        }
        Some(RecordVerdict::Rejected { message_id, errors }) => {
            if !keys.is_empty() {
                st.store
                    .write(move |c| {
                        Box::pin(async move {
                            crate::store::journal::insert_keys(c, message_id, &keys).await
                        })
                    })
                    .await?;
            }
            let (status, code) = if conflict {
                (StatusCode::CONFLICT, "conflict")
            } else {
                (StatusCode::BAD_REQUEST, "invalid_campaign")
            };
            Err(ApiError::new(
                status,
                code,
                format!("campaign rejected (journaled as message {message_id})"),
            )
            .with_details(field_errors(&errors)))
        }
        None => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the journal returned no verdict",
        )),
    }
}

fn unavailable(e: synchub_adapter_sdk::AcceptError) -> ApiError {
    tracing::warn!(error = %e, "Campaign not journaled.");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the journal is unavailable; nothing was stored, try again",
    )
}

pub async fn get_campaign(
    op: Operator,
    State(st): State<AppState>,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
    campaigns::view(st.store.pool(), &code, op.dealer_scope())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("campaign {code}")))
}
