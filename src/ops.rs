//! Operator actions shared by the ops API and the dashboard: replay (with a preview of the
//! re-mapped output), retry, park, bulk retry/replay by filter and approval decisions. Each one
//! checks the operator's dealer scope and writes the audit log, so both surfaces behave alike.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::crm;
use crate::http::AppState;
use crate::http::auth::Operator;
use crate::http::error::ApiError;
use crate::store::audit::{self, AuditEntry};
use crate::store::deliveries::{self, DeliveryFilter};
use crate::store::{StoreError, journal, queries};

/// Where an operator acted, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Ui,
    Api,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Channel::Ui => "ui",
            Channel::Api => "api",
        }
    }
}

fn entry(op: &Operator, ch: Channel, action: &'static str, target: String) -> AuditEntry {
    AuditEntry {
        user: op.user.clone(),
        dealer_code: op.dealer_code.clone().filter(|_| !op.is_admin()),
        action,
        target: Some(target),
        channel: ch.as_str(),
        ..Default::default()
    }
}

/// Writes one audit entry on its own (for actions without a transaction of their own).
pub async fn audit_only(st: &AppState, e: AuditEntry) -> Result<(), ApiError> {
    st.store
        .write(move |c| Box::pin(async move { audit::insert(c, &e).await }))
        .await?;
    Ok(())
}

/// Login, logout and failed logins on the dashboard.
pub async fn audit_session(
    st: &AppState,
    user: &str,
    dealer: Option<String>,
    action: &'static str,
    detail: Option<String>,
) {
    let e = AuditEntry {
        user: user.to_string(),
        dealer_code: dealer,
        action,
        detail,
        channel: Channel::Ui.as_str(),
        ..Default::default()
    };
    if let Err(e) = audit_only(st, e).await {
        tracing::warn!(user = %user, error = %e.message, "Could not write a session audit entry.");
    }
}

pub async fn check_message_scope(st: &AppState, op: &Operator, id: &str) -> Result<(), ApiError> {
    match queries::message_dealer(st.store.pool(), id).await? {
        Some(d) if op.may_see(d.as_deref()) => Ok(()),
        _ => Err(ApiError::not_found(format!("message {id}"))),
    }
}

pub async fn check_delivery_scope(st: &AppState, op: &Operator, id: i64) -> Result<(), ApiError> {
    match queries::delivery_dealer(st.store.pool(), id).await? {
        Some(d) if op.may_see(d.as_deref()) => Ok(()),
        _ => Err(ApiError::not_found(format!("delivery {id}"))),
    }
}

/// Replays a message (optionally through a given mapping version): fresh deliveries from the
/// kept record; the old ones stay as history.
pub async fn replay(
    st: &AppState,
    op: &Operator,
    ch: Channel,
    id: &str,
    version: Option<u32>,
) -> Result<Vec<Uuid>, ApiError> {
    let uuid = Uuid::parse_str(id).map_err(|_| ApiError::not_found(format!("message {id}")))?;
    check_message_scope(st, op, id).await?;
    let replayed = st.pipeline.replay(uuid, version).await?;
    let mut e = entry(op, ch, "replay", id.to_string());
    e.after = Some(json!({
        "replayed_records": replayed.iter().map(Uuid::to_string).collect::<Vec<_>>(),
        "mapping_version": version,
    }));
    e.detail = version.map(|v| format!("mapping version {v}"));
    audit_only(st, e).await?;
    tracing::info!(operator = %op.user, message = %id, "Message replayed.");
    Ok(replayed)
}

/// What a replay would send, per target, without journaling anything: the mapping is run on
/// the kept record exactly as the dispatcher will run it.
pub async fn preview_replay(
    st: &AppState,
    op: &Operator,
    id: &str,
    version: Option<u32>,
) -> Result<Vec<Value>, ApiError> {
    let uuid = Uuid::parse_str(id).map_err(|_| ApiError::not_found(format!("message {id}")))?;
    check_message_scope(st, op, id).await?;
    let prepared = st.pipeline.prepare_replay(uuid, version).await?;
    let mut out = Vec::new();
    for (record, _entity, deliveries) in prepared {
        for d in deliveries {
            let input: Value = serde_json::from_slice(&d.body).unwrap_or(Value::Null);
            let (used, mapped) = match &d.mapping {
                Some(m) => {
                    let pinned = d.mapping_version.and_then(|v| u32::try_from(v).ok());
                    match st.pipeline.mappings().apply(m, pinned, &input) {
                        Ok((v, out)) => (Some(v), Ok(out)),
                        Err(e) => (pinned, Err(e.to_string())),
                    }
                }
                None => (None, Ok(input)),
            };
            out.push(json!({
                "record_id": record.to_string(),
                "route": d.route,
                "target": d.target,
                "mapping": d.mapping,
                "mapping_version": used,
                "mapped": mapped.as_ref().ok(),
                "error": mapped.as_ref().err(),
            }));
        }
    }
    Ok(out)
}

/// Puts a parked, rejected or waiting delivery back in line now ("unpark" of a parked one).
pub async fn retry(st: &AppState, op: &Operator, ch: Channel, id: i64) -> Result<(), ApiError> {
    check_delivery_scope(st, op, id).await?;
    let before = deliveries::state(st.store.pool(), id).await?;
    let mut e = entry(op, ch, "retry", format!("delivery:{id}"));
    e.before = before;
    e.after = Some(json!({"status": "pending"}));
    let who = op.user.clone();
    st.store
        .write(move |c| {
            Box::pin(async move {
                journal::retry_delivery(c, id, &who).await?;
                audit::insert(c, &e).await
            })
        })
        .await?;
    tracing::info!(operator = %op.user, delivery = id, "Delivery retry requested.");
    Ok(())
}

/// Stops a delivery from being attempted; it holds its lane until retried.
pub async fn park(st: &AppState, op: &Operator, ch: Channel, id: i64) -> Result<(), ApiError> {
    check_delivery_scope(st, op, id).await?;
    let before = deliveries::state(st.store.pool(), id).await?;
    let mut e = entry(op, ch, "park", format!("delivery:{id}"));
    e.before = before;
    e.after = Some(json!({"status": "parked"}));
    let who = op.user.clone();
    st.store
        .write(move |c| {
            Box::pin(async move {
                journal::park_delivery(c, id, &who).await?;
                audit::insert(c, &e).await
            })
        })
        .await?;
    tracing::info!(operator = %op.user, delivery = id, "Delivery parked by operator.");
    Ok(())
}

/// Confines a filter to the operator's dealer; a dealer IT user naming another dealer gets 404,
/// as for any other record of another dealer.
fn scoped(op: &Operator, mut f: DeliveryFilter) -> Result<DeliveryFilter, ApiError> {
    if let Some(scope) = op.dealer_scope() {
        if f.dealer.as_deref().is_some_and(|d| d != scope) {
            return Err(ApiError::not_found(format!(
                "dealer {}",
                f.dealer.unwrap_or_default()
            )));
        }
        f.scope = Some(scope.to_string());
    }
    Ok(f)
}

fn require_status(f: &DeliveryFilter) -> Result<(), ApiError> {
    match f.status.as_deref() {
        Some("parked" | "rejected" | "pending") => Ok(()),
        Some(other) => Err(ApiError::bad_request(
            "invalid_status",
            format!("status must be parked, rejected or pending, not '{other}'"),
        )),
        None => Err(ApiError::bad_request(
            "missing_status",
            "a bulk action needs a status filter (parked, rejected or pending)",
        )),
    }
}

/// Retries every delivery matching the filter in one transaction; returns the ids retried.
pub async fn bulk_retry(
    st: &AppState,
    op: &Operator,
    ch: Channel,
    filter: DeliveryFilter,
) -> Result<Vec<i64>, ApiError> {
    require_status(&filter)?;
    let f = scoped(op, filter)?;
    let mut e = entry(op, ch, "bulk_retry", f.describe().to_string());
    e.before = Some(f.describe());
    let who = op.user.clone();
    let ids = st
        .store
        .write(move |c| {
            Box::pin(async move {
                let ids = deliveries::retry_matching(c, &f, &who).await?;
                e.after = Some(json!({"retried": ids.len(), "delivery_ids": ids}));
                audit::insert(c, &e).await?;
                Ok(ids)
            })
        })
        .await?;
    tracing::info!(operator = %op.user, deliveries = ids.len(), "Bulk retry requested.");
    Ok(ids)
}

/// Replays the messages of every delivery matching the filter (each message once).
pub async fn bulk_replay(
    st: &AppState,
    op: &Operator,
    ch: Channel,
    filter: DeliveryFilter,
    version: Option<u32>,
) -> Result<Value, ApiError> {
    require_status(&filter)?;
    let f = scoped(op, filter)?;
    let describe = f.describe();
    let ids = st
        .store
        .write(move |c| Box::pin(async move { deliveries::matching_ids(c, &f).await }))
        .await?;
    if ids.len() as i64 > deliveries::BULK_MAX {
        return Err(ApiError::from(StoreError::Conflict(format!(
            "more than {} deliveries match; narrow the filter",
            deliveries::BULK_MAX
        ))));
    }
    let mut messages: Vec<String> = ids.into_iter().map(|(_, m)| m).collect();
    messages.sort();
    messages.dedup();
    let mut replayed = Vec::new();
    let mut failed = Vec::new();
    for m in &messages {
        let Ok(uuid) = Uuid::parse_str(m) else {
            continue;
        };
        match st.pipeline.replay(uuid, version).await {
            Ok(r) => replayed.extend(r.into_iter().map(|u| u.to_string())),
            Err(err) => failed.push(json!({"message_id": m, "reason": err.to_string()})),
        }
    }
    let result = json!({"messages": messages.len(), "replayed_records": replayed, "failed": failed, "mapping_version": version});
    let mut e = entry(op, ch, "bulk_replay", describe.to_string());
    e.before = Some(describe);
    e.after = Some(result.clone());
    audit_only(st, e).await?;
    tracing::info!(operator = %op.user, messages = messages.len(), "Bulk replay requested.");
    Ok(result)
}

/// Headquarters approves or rejects a pending key-field change (with an optional comment).
pub async fn decide_approval(
    st: &AppState,
    op: &Operator,
    ch: Channel,
    id: i64,
    approve: bool,
    comment: Option<String>,
) -> Result<(), ApiError> {
    if !op.is_admin() {
        return Err(ApiError::forbidden(
            "only headquarters decides key-field changes",
        ));
    }
    let who = op.user.clone();
    let pipeline = st.pipeline.clone();
    let mut e = entry(
        op,
        ch,
        if approve { "approve" } else { "reject" },
        format!("approval:{id}"),
    );
    e.before = Some(json!({"status": "pending"}));
    e.after = Some(json!({"status": if approve { "approved" } else { "rejected" }}));
    e.detail = comment.clone();
    st.store
        .write(move |c| {
            Box::pin(async move {
                let ev =
                    crm::decide_approval(c, id, approve, &who, comment.as_deref(), None).await?;
                if let Some(ev) = ev {
                    journal::insert_prepared(
                        c,
                        &pipeline.prepare_event(Uuid::now_v7(), None, "crm_store", &ev),
                    )
                    .await?;
                }
                audit::insert(c, &e).await
            })
        })
        .await?;
    Ok(())
}

/// Records a headquarters customer edit (the edit itself is the CRM API's).
/// The audit row of a customer merge or erasure; the caller writes it in the removal's own
/// transaction, so a removal is never left unaudited.
pub fn customer_removal(
    op: &Operator,
    action: &'static str,
    id: &str,
    before: Value,
    after: Value,
) -> AuditEntry {
    let mut e = entry(op, Channel::Api, action, format!("customer:{id}"));
    e.before = Some(before);
    e.after = Some(after);
    e
}

pub async fn audit_customer_edit(
    st: &AppState,
    op: &Operator,
    id: &str,
    before: Option<Value>,
    after: Value,
) -> Result<(), ApiError> {
    let mut e = entry(op, Channel::Api, "put_customer", format!("customer:{id}"));
    e.before = before;
    e.after = Some(after);
    audit_only(st, e).await
}
