//! The CRM store sink: upserts canonical records with version and change history, matches
//! customers by mobile and ID number, holds key-field changes from dealers for approval, and
//! returns the change events routes fan out. Runs inside the dispatcher's transaction, so a
//! record is applied exactly once together with its delivery status.

pub mod reads;

use serde_json::{Map, Value, json};
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::store::journal::{Claimed, parse_uuid};
use crate::store::rows::insert_rows;
use crate::store::{StoreError, now_ms};

/// Customer fields whose change from a DMS needs headquarters' approval.
pub const KEY_FIELDS: [&str; 3] = ["name", "mobile", "id_no"];

/// Why a record could not be applied.
#[derive(Debug)]
pub enum CrmFailure {
    /// Something it depends on is missing now but may arrive (e.g. its lead): retry later.
    Retry(String),
    /// The record can never apply (unknown lead, wrong dealer, bad shape).
    Reject(String),
    Store(StoreError),
}

impl From<StoreError> for CrmFailure {
    fn from(e: StoreError) -> Self {
        CrmFailure::Store(e)
    }
}

impl From<sqlx::Error> for CrmFailure {
    fn from(e: sqlx::Error) -> Self {
        CrmFailure::Store(e.into())
    }
}

/// A change event for routes to fan out (record type `customer_event`, ...).
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub record_type: &'static str,
    pub body: Value,
    pub dealer_code: Option<String>,
}

/// What applying one record did, for the attempt's reason and the events it emits.
#[derive(Debug, Default)]
pub struct Applied {
    pub summary: String,
    pub events: Vec<ChangeEvent>,
}

/// Who made a change, recorded in history and used to avoid echoing a change back to its origin.
#[derive(Debug, Clone)]
pub struct ChangeSource {
    pub system: String,
    pub message_id: Option<Uuid>,
    /// Key-field changes from this source go to the approval queue.
    pub needs_approval: bool,
}

/// Result of one upsert.
#[derive(Debug, Default)]
pub struct Upserted {
    pub created: bool,
    pub stale: bool,
    pub version: i64,
    pub changed: Vec<String>,
    pub held: Vec<String>,
    pub data: Map<String, Value>,
}

/// Lookup columns of a CRM row.
#[derive(Debug, Default, Clone)]
pub struct Columns {
    pub dealer_code: Option<String>,
    pub mobile: Option<String>,
    pub id_no: Option<String>,
    pub reference: Option<String>,
    pub src_updated_at: Option<i64>,
    /// Fields set only when the record is created (a new lead's `status`), so replaying a
    /// record never resets what happened to it since.
    pub on_create: Vec<(&'static str, Value)>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Inserts or updates `entity/id` with `incoming` fields, writing history for each changed
/// field. Key fields from a source that needs approval are queued instead of applied. An
/// update older (by the source's `updated_at`) than what is stored changes nothing.
pub async fn upsert(
    conn: &mut AnyConnection,
    entity: &str,
    id: &str,
    incoming: &Map<String, Value>,
    cols: &Columns,
    src: &ChangeSource,
) -> Result<Upserted, StoreError> {
    let now = now_ms();
    let existing = sqlx::query(
        "SELECT data, version, src_updated_at FROM crm_records WHERE entity = $1 AND id = $2",
    )
    .bind(entity)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let msg_id = src.message_id.map(|m| m.to_string());
    let Some(row) = existing else {
        let mut created = incoming.clone();
        for (k, v) in &cols.on_create {
            created.entry(k.to_string()).or_insert_with(|| v.clone());
        }
        let incoming = &created;
        sqlx::query(
            "INSERT INTO crm_records (entity, id, data, version, dealer_code, mobile, id_no, ref, source_system, \
             src_updated_at, created_at, updated_at) VALUES ($1,$2,$3,1,$4,$5,$6,$7,$8,$9,$10,$10)",
        )
        .bind(entity)
        .bind(id)
        .bind(Value::Object(incoming.clone()).to_string())
        .bind(cols.dealer_code.as_deref())
        .bind(cols.mobile.as_deref())
        .bind(cols.id_no.as_deref())
        .bind(cols.reference.as_deref())
        .bind(src.system.as_str())
        .bind(cols.src_updated_at)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        let rows: Vec<HistoryRow> = incoming
            .iter()
            .map(|(f, v)| (f.clone(), None, text(v)))
            .collect();
        history(conn, entity, id, rows, src, msg_id.as_deref(), now).await?;
        return Ok(Upserted {
            created: true,
            version: 1,
            changed: incoming.keys().cloned().collect(),
            data: incoming.clone(),
            ..Default::default()
        });
    };
    let data: String = row.try_get(0)?;
    let version: i64 = row.try_get(1)?;
    let stored_at: Option<i64> = row.try_get(2)?;
    let mut current: Map<String, Value> = serde_json::from_str(&data).unwrap_or_default();
    if let (Some(stored), Some(new)) = (stored_at, cols.src_updated_at)
        && new < stored
    {
        return Ok(Upserted {
            stale: true,
            version,
            data: current,
            ..Default::default()
        });
    }
    let mut out = Upserted {
        version,
        ..Default::default()
    };
    let mut changes: Vec<HistoryRow> = Vec::new();
    for (field, value) in incoming {
        let old = current.get(field);
        if old == Some(value) {
            continue;
        }
        if src.needs_approval && entity == "customer" && KEY_FIELDS.contains(&field.as_str()) {
            let pending = sqlx::query(
                "SELECT COUNT(*) FROM approvals WHERE customer_id = $1 AND field = $2 AND new_value = $3 AND status = 'pending'",
            )
            .bind(id)
            .bind(field.as_str())
            .bind(text(value))
            .fetch_one(&mut *conn)
            .await?
            .try_get::<i64, _>(0)?;
            if pending == 0 {
                sqlx::query(
                    "INSERT INTO approvals (customer_id, dealer_code, field, old_value, new_value, source_system, \
                     message_id, status, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,'pending',$8)",
                )
                .bind(id)
                .bind(cols.dealer_code.as_deref().or_else(|| current.get("dealer_code").and_then(Value::as_str)))
                .bind(field.as_str())
                .bind(old.and_then(text))
                .bind(text(value))
                .bind(src.system.as_str())
                .bind(msg_id.as_deref())
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
            out.held.push(field.clone());
            continue;
        }
        changes.push((field.clone(), old.and_then(text), text(value)));
        current.insert(field.clone(), value.clone());
        out.changed.push(field.clone());
    }
    if !out.changed.is_empty() {
        history(conn, entity, id, changes, src, msg_id.as_deref(), now).await?;
        out.version = version + 1;
        sqlx::query(
            "UPDATE crm_records SET data = $1, version = $2, dealer_code = COALESCE($3, dealer_code), \
             mobile = $4, id_no = $5, ref = COALESCE($6, ref), source_system = $7, \
             src_updated_at = COALESCE($8, src_updated_at), updated_at = $9 WHERE entity = $10 AND id = $11",
        )
        .bind(Value::Object(current.clone()).to_string())
        .bind(out.version)
        .bind(cols.dealer_code.as_deref())
        .bind(current.get("mobile").and_then(Value::as_str).map(str::to_string).or(cols.mobile.clone()))
        .bind(current.get("id_no").and_then(Value::as_str).map(str::to_string).or(cols.id_no.clone()))
        .bind(cols.reference.as_deref())
        .bind(src.system.as_str())
        .bind(cols.src_updated_at)
        .bind(now)
        .bind(entity)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    out.data = current;
    Ok(out)
}

/// One changed field: name, old value, new value.
type HistoryRow = (String, Option<String>, Option<String>);

/// Writes the change history of one record in one statement.
async fn history(
    conn: &mut AnyConnection,
    entity: &str,
    id: &str,
    changes: Vec<HistoryRow>,
    src: &ChangeSource,
    message_id: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let rows = changes
        .into_iter()
        .map(|(field, old, new)| {
            vec![
                entity.into(),
                id.into(),
                field.into(),
                old.into(),
                new.into(),
                src.system.as_str().into(),
                message_id.into(),
                now.into(),
            ]
        })
        .collect();
    insert_rows(
        conn,
        "change_history",
        &[
            "entity",
            "entity_id",
            "field",
            "old_value",
            "new_value",
            "source_system",
            "message_id",
            "changed_at",
        ],
        rows,
        "",
    )
    .await?;
    Ok(())
}

/// The customer change event routes send to the serving dealer's DMS (INTERFACES §3 `customer`).
pub fn customer_event(id: &str, up: &Upserted, src: &ChangeSource) -> ChangeEvent {
    let mut customer = Map::new();
    customer.insert("customer_id".into(), Value::String(id.to_string()));
    for (k, v) in &up.data {
        if k != "source_ref" && k != "source_system" {
            customer.insert(k.clone(), v.clone());
        }
    }
    let dealer_code = up
        .data
        .get("dealer_code")
        .and_then(Value::as_str)
        .map(str::to_string);
    ChangeEvent {
        record_type: "customer_event",
        dealer_code,
        body: json!({
            "event": if up.created { "customer.created" } else { "customer.updated" },
            "customer_id": id,
            "version": up.version,
            "changed_fields": up.changed.iter().filter(|f| *f != "source_ref").collect::<Vec<_>>(),
            "source_system": src.system,
            "customer": customer,
        }),
    }
}

async fn find_customer(
    conn: &mut AnyConnection,
    mobile: Option<&str>,
    id_no: Option<&str>,
) -> Result<Option<String>, StoreError> {
    for (col, v) in [("mobile", mobile), ("id_no", id_no)] {
        if let Some(v) = v {
            let sql = format!(
                "SELECT id FROM crm_records WHERE entity = 'customer' AND {col} = $1 ORDER BY created_at LIMIT 1"
            );
            if let Some(r) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(v)
                .fetch_optional(&mut *conn)
                .await?
            {
                return Ok(Some(r.try_get(0)?));
            }
        }
    }
    Ok(None)
}

fn str_field(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_string)
}

/// Applies one delivery to the CRM store. `key_field_approval` is the endpoint's setting.
pub async fn apply(
    conn: &mut AnyConnection,
    d: &Claimed,
    key_field_approval: bool,
) -> Result<Applied, CrmFailure> {
    let headers: Value = serde_json::from_str(&d.headers).unwrap_or(Value::Null);
    let record_type = headers
        .get("record_type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let body: Value = serde_json::from_slice(&d.body)
        .map_err(|e| CrmFailure::Reject(format!("body is not JSON: {e}")))?;
    let Value::Object(mut rec) = body else {
        return Err(CrmFailure::Reject("body is not a JSON object".into()));
    };
    let msg = sqlx::query("SELECT entity_id, partner FROM messages WHERE id = $1")
        .bind(d.message_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let (entity_id, partner): (Option<String>, Option<String>) = match msg {
        Some(r) => (r.try_get(0)?, r.try_get(1)?),
        None => (None, None),
    };
    let system = partner.unwrap_or_else(|| "hub".into());
    let from_dms = system.starts_with("dms");
    let src = ChangeSource {
        system: system.clone(),
        message_id: Some(d.message_id),
        needs_approval: from_dms && key_field_approval,
    };
    let need_id = || {
        entity_id
            .clone()
            .ok_or_else(|| CrmFailure::Reject("message has no hub id".into()))
    };
    match record_type.as_str() {
        "dms_customer" | "customer" => {
            let mobile = str_field(&rec, "mobile");
            let id_no = str_field(&rec, "id_no");
            // The id given at accept may have lost a race with another new record for the same
            // person; the existing customer wins so there is never a duplicate.
            let id = match find_customer(conn, mobile.as_deref(), id_no.as_deref()).await? {
                Some(existing) => existing,
                None => need_id()?,
            };
            let src_updated_at = rec
                .get("updated_at")
                .and_then(Value::as_str)
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_millis());
            rec.remove("source_ref");
            let cols = Columns {
                dealer_code: str_field(&rec, "dealer_code"),
                mobile,
                id_no,
                src_updated_at,
                ..Default::default()
            };
            let up = upsert(conn, "customer", &id, &rec, &cols, &src).await?;
            let summary = if up.stale {
                format!("customer {id}: stale update ignored (a newer version is stored)")
            } else if up.created {
                format!("customer {id} created")
            } else {
                format!(
                    "customer {id} v{}: changed {:?}{}",
                    up.version,
                    up.changed,
                    if up.held.is_empty() {
                        String::new()
                    } else {
                        format!(", held for approval {:?}", up.held)
                    }
                )
            };
            let events = if up.changed.is_empty() {
                vec![]
            } else {
                vec![customer_event(&id, &up, &src)]
            };
            Ok(Applied { summary, events })
        }
        "lead" => {
            let id = need_id()?;
            let customer = rec
                .get("customer")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_else(|| rec.clone());
            let mobile = str_field(&customer, "mobile");
            if let Some(cid) = find_customer(conn, mobile.as_deref(), None).await? {
                rec.insert("customer_id".into(), Value::String(cid));
            }
            rec.insert("lead_id".into(), Value::String(id.clone()));
            let cols = Columns {
                mobile,
                on_create: vec![("status", Value::String("new".into()))],
                ..Default::default()
            };
            let up = upsert(conn, "lead", &id, &rec, &cols, &src).await?;
            Ok(Applied {
                summary: format!(
                    "lead {id} {}",
                    if up.created { "created" } else { "updated" }
                ),
                events: vec![],
            })
        }
        "lead_result" => {
            let id = need_id()?;
            let lead_id = str_field(&rec, "lead_id").unwrap_or_default();
            let lead =
                sqlx::query("SELECT data FROM crm_records WHERE entity = 'lead' AND id = $1")
                    .bind(lead_id.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
            let Some(lead) = lead else {
                return Err(CrmFailure::Reject(format!("unknown lead {lead_id}")));
            };
            let lead_data: Map<String, Value> =
                serde_json::from_str(&lead.try_get::<String, _>(0)?).unwrap_or_default();
            let result_dealer = str_field(&rec, "dealer_code");
            if let Some(assigned) = lead_data.get("dealer_code").and_then(Value::as_str)
                && Some(assigned) != result_dealer.as_deref()
            {
                return Err(CrmFailure::Reject(format!(
                    "lead {lead_id} is assigned to dealer {assigned}, not {}",
                    result_dealer.unwrap_or_default()
                )));
            }
            let cols = Columns {
                dealer_code: result_dealer.clone(),
                reference: Some(lead_id.clone()),
                ..Default::default()
            };
            upsert(conn, "lead_result", &id, &rec, &cols, &src).await?;
            let mut change = Map::new();
            if let Some(s) = rec.get("status") {
                change.insert("status".into(), s.clone());
            }
            let lead_cols = Columns::default();
            upsert(conn, "lead", &lead_id, &change, &lead_cols, &src).await?;
            Ok(Applied {
                summary: format!("result {id} recorded on lead {lead_id}"),
                events: vec![],
            })
        }
        "campaign_result" => {
            let id = need_id()?;
            let mobile = str_field(&rec, "customer_mobile");
            if let Some(cid) = find_customer(conn, mobile.as_deref(), None).await? {
                rec.insert("customer_id".into(), Value::String(cid));
            }
            let cols = Columns {
                dealer_code: str_field(&rec, "dealer_code"),
                mobile,
                reference: str_field(&rec, "campaign_code"),
                ..Default::default()
            };
            upsert(conn, "campaign_result", &id, &rec, &cols, &src).await?;
            Ok(Applied {
                summary: format!("campaign result {id} recorded"),
                events: vec![],
            })
        }
        "vehicle" | "dealer" | "campaign" => {
            let id = need_id()?;
            let cols = Columns {
                dealer_code: str_field(&rec, "dealer_code"),
                ..Default::default()
            };
            let up = upsert(conn, &record_type, &id, &rec, &cols, &src).await?;
            Ok(Applied {
                summary: format!("{record_type} {id} v{}", up.version),
                events: vec![],
            })
        }
        other => Err(CrmFailure::Reject(format!(
            "the CRM store does not take '{other}' records"
        ))),
    }
}

/// Headquarters decides a pending key-field change. Approving applies it (history, version,
/// change event); rejecting only closes it. Returns the event to fan out, if any.
pub async fn decide_approval(
    conn: &mut AnyConnection,
    approval_id: i64,
    approve: bool,
    who: &str,
    comment: Option<&str>,
    dealer_scope: Option<&str>,
) -> Result<Option<ChangeEvent>, StoreError> {
    let row = sqlx::query(
        "SELECT customer_id, field, new_value, status, dealer_code FROM approvals WHERE id = $1",
    )
    .bind(approval_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("approval {approval_id}")))?;
    let customer_id: String = row.try_get(0)?;
    let field: String = row.try_get(1)?;
    let new_value: Option<String> = row.try_get(2)?;
    let status: String = row.try_get(3)?;
    let dealer: Option<String> = row.try_get(4)?;
    if let Some(scope) = dealer_scope
        && dealer.as_deref() != Some(scope)
    {
        return Err(StoreError::NotFound(format!("approval {approval_id}")));
    }
    if status != "pending" {
        return Err(StoreError::Conflict(format!(
            "approval {approval_id} is already {status}"
        )));
    }
    sqlx::query("UPDATE approvals SET status = $1, decided_by = $2, comment = $3, decided_at = $4 WHERE id = $5")
        .bind(if approve { "approved" } else { "rejected" })
        .bind(who)
        .bind(comment)
        .bind(now_ms())
        .bind(approval_id)
        .execute(&mut *conn)
        .await?;
    if !approve {
        return Ok(None);
    }
    let mut change = Map::new();
    change.insert(field, new_value.map(Value::String).unwrap_or(Value::Null));
    let src = ChangeSource {
        system: format!("crm:approval:{who}"),
        message_id: None,
        needs_approval: false,
    };
    let up = upsert(
        conn,
        "customer",
        &customer_id,
        &change,
        &Columns::default(),
        &src,
    )
    .await?;
    Ok((!up.changed.is_empty()).then(|| customer_event(&customer_id, &up, &src)))
}

/// Headquarters edits a customer directly (`PUT /api/v1/customers/<id>`).
pub async fn edit_customer(
    conn: &mut AnyConnection,
    id: &str,
    fields: &Map<String, Value>,
    who: &str,
) -> Result<(Upserted, Option<ChangeEvent>), StoreError> {
    let exists = sqlx::query("SELECT 1 FROM crm_records WHERE entity = 'customer' AND id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound(format!("customer {id}")));
    }
    let src = ChangeSource {
        system: format!("crm:hq:{who}"),
        message_id: None,
        needs_approval: false,
    };
    let up = upsert(conn, "customer", id, fields, &Columns::default(), &src).await?;
    let ev = (!up.changed.is_empty()).then(|| customer_event(id, &up, &src));
    Ok((up, ev))
}

/// The demo dealers of the local profile (INTERFACES §0), created once if absent, so a newcomer's
/// first DMS records have dealers to belong to.
pub async fn seed_demo_dealers(conn: &mut AnyConnection) -> Result<u32, StoreError> {
    let demo = [
        ("D0001", "广州示范经销店", "华南", "广东", "广州"),
        ("D0002", "深圳示范经销店", "华南", "广东", "深圳"),
        ("D0003", "北京示范经销店", "华北", "北京", "北京"),
    ];
    let src = ChangeSource {
        system: "seed:local".into(),
        message_id: None,
        needs_approval: false,
    };
    let mut created = 0;
    for (code, name, region, province, city) in demo {
        let exists = sqlx::query("SELECT 1 FROM crm_records WHERE entity = 'dealer' AND id = $1")
            .bind(code)
            .fetch_optional(&mut *conn)
            .await?;
        if exists.is_some() {
            continue;
        }
        let data = json!({"dealer_code": code, "dealer_name": name, "region": region, "province": province,
                          "city": city, "status": "active"});
        let cols = Columns {
            dealer_code: Some(code.to_string()),
            ..Default::default()
        };
        upsert(
            conn,
            "dealer",
            code,
            data.as_object().expect("object literal"),
            &cols,
            &src,
        )
        .await?;
        created += 1;
    }
    Ok(created)
}

/// The message id of a claimed delivery's record, parsed.
pub fn message_uuid(s: &str) -> Result<Uuid, StoreError> {
    parse_uuid(s)
}
